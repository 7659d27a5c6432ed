//! Content in use: the one protocol that lets the garbage collector delete content and links
//! while pushes, mounts and pull-through fills go on, on every backend and across replicas.
//!
//! Each content digest D has a small *use record* (`uses/sha256/<2 hex>/<hex>`). Every writer that is
//! about to store D, link D into a repository, or accept a manifest that references D first
//! [`ContentUses::touch`]es D: it makes the record say "used now" unless it already says so
//! within half the grace period. The collector removes D (or a link to D) only after
//! [`ContentUses::claim`]ing it: a conditional write turning a record unused for the whole grace
//! period into a tombstone. Both are conditional writes on the same record, so of a writer and
//! the collector racing on D exactly one wins:
//!
//! - the writer's touch lands first: the record is young, the claim is refused, D stays;
//! - the claim lands first: the writer finds a tombstone and waits until the collector is done
//!   (the record is gone), then carries on and finds D or its link gone, so it stores D again
//!   (an upload, a fill) or refuses the manifest (`MANIFEST_BLOB_UNKNOWN`: the client uploads
//!   the blob again). No manifest is ever accepted while the content it names is being removed.
//!
//! A collector that dies holding a claim leaves a tombstone; writers take it over once it is
//! [`TOMBSTONE_TTL`] old, and a collector never acts on a claim older than [`CLAIM_LIMIT`], so
//! a claim it is still using is never one a writer has taken over. This module knows records
//! and digests, never repositories.

use super::{Error, Key, PutMode, Result, Storage, Version};
use crate::clock::SharedClock;
use crate::oci::Digest;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How old a tombstone must be before a writer overwrites it (its collector died).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// How long a collector may act on a claim: far below [`TOMBSTONE_TTL`].
pub const CLAIM_LIMIT: Duration = Duration::from_secs(10);

/// A use record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UseRecord {
    /// When the content was last used (milliseconds since the epoch, by the writer's clock).
    #[serde(default)]
    at_ms: u64,
    /// Set while a collector removes the content or a link to it (when it claimed it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleting_ms: Option<u64>,
}

impl UseRecord {
    fn decode(bytes: &[u8]) -> Self {
        // A record that does not parse says nothing recent: treat it as long unused.
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    fn encode(&self) -> crate::storage::Result<Bytes> {
        super::records::encode(self)
    }
}

/// The collector's hold on one digest, from [`ContentUses::claim`].
#[derive(Debug)]
pub struct Claim {
    digest: Digest,
    version: Version,
    previous: UseRecord,
    taken: Instant,
}

impl Claim {
    /// Whether the collector may still act on it (remove the content or a link).
    pub fn is_fresh(&self) -> bool {
        self.taken.elapsed() < CLAIM_LIMIT
    }

    /// The digest claimed.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// The use records of one store, with the digests this process touched recently.
#[derive(Clone)]
pub struct ContentUses {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    grace: Duration,
    /// Digests this process touched within a quarter of the grace period (by the clock, with
    /// the time it wrote): their records are young, so no collector can claim them, and
    /// touching again would only cost a read.
    recent: Option<moka::sync::Cache<Digest, u64>>,
}

impl ContentUses {
    /// Use records over `storage`; content unused for `grace` may be claimed.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock, grace: Duration) -> Self {
        let remember = grace.checked_div(4).unwrap_or_default();
        let recent = (!remember.is_zero())
            .then(|| moka::sync::Cache::builder().max_capacity(100_000).time_to_live(remember).build());
        Self { inner: Arc::new(Inner { storage, clock, grace, recent }) }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.inner.grace
    }

    fn grace_ms(&self) -> u64 {
        u64::try_from(self.inner.grace.as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks `digest` as used now, before storing it or linking it (see the module docs).
    /// Waits while a collector is removing it.
    pub async fn touch(&self, digest: &Digest) -> Result<()> {
        let inner = &self.inner;
        let quarter = self.grace_ms() / 4;
        let touched_at = inner.recent.as_ref().and_then(|r| r.get(digest));
        if touched_at.is_some_and(|at| inner.clock.now_ms().saturating_sub(at) < quarter) {
            return Ok(());
        }
        let key = Key::content_use(digest);
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let now = inner.clock.now_ms();
            let current = inner.storage.record_get_versioned(&key).await?;
            let mode = match &current {
                None => PutMode::Create,
                Some((bytes, version)) => {
                    let record = UseRecord::decode(bytes);
                    match record.deleting_ms {
                        // A collector is removing it: wait until it is done, unless it died.
                        Some(since)
                            if now.saturating_sub(since) < ms(TOMBSTONE_TTL)
                                && started.elapsed() < TOMBSTONE_TTL.saturating_add(Duration::from_secs(1)) =>
                        {
                            tokio::time::sleep(pause).await;
                            pause = pause.saturating_mul(2).min(Duration::from_millis(200));
                            continue;
                        }
                        Some(_) => PutMode::Update(version.clone()),
                        None if now.saturating_sub(record.at_ms) < self.grace_ms() / 2 => {
                            self.remember(digest, record.at_ms);
                            return Ok(());
                        }
                        None => PutMode::Update(version.clone()),
                    }
                }
            };
            let fresh = UseRecord { at_ms: now, deleting_ms: None }.encode()?;
            match inner.storage.record_put_if(&key, fresh, mode).await {
                Ok(_) => {
                    self.remember(digest, now);
                    return Ok(());
                }
                // Another writer touched it, or a collector claimed it: look again.
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn remember(&self, digest: &Digest, at_ms: u64) {
        if let Some(r) = &self.inner.recent {
            r.insert(digest.clone(), at_ms);
        }
    }

    /// The latest use (ms since the epoch) a claim made now accepts: none within the grace
    /// period, and none within half of it before `since` — the start of the caller's view of
    /// what links exist, so that content linked after that view was taken (its writer touched
    /// it then, or found it touched within half the grace period) is never claimed, however
    /// long the caller has been running.
    pub fn cutoff_ms(&self, since_ms: u64) -> u64 {
        let now = self.inner.clock.now_ms();
        now.saturating_sub(self.grace_ms()).min(since_ms.saturating_sub(self.grace_ms() / 2))
    }

    /// Whether [`ContentUses::claim`] would claim `digest` (for a dry run: nothing written).
    pub async fn unused(&self, digest: &Digest, cutoff_ms: u64) -> Result<bool> {
        let now = self.inner.clock.now_ms();
        Ok(match self.inner.storage.record_get(&Key::content_use(digest)).await? {
            None => true,
            Some(bytes) => {
                let record = UseRecord::decode(&bytes);
                record.deleting_ms.is_none_or(|d| now.saturating_sub(d) >= ms(TOMBSTONE_TTL))
                    && record.at_ms < cutoff_ms
            }
        })
    }

    /// Claims `digest` for removal when its last use is before `cutoff_ms` (from
    /// [`ContentUses::cutoff_ms`]; content with no record was last used when it was written,
    /// which the caller checks). `None` when it was used since, or another claim or touch got
    /// there first.
    pub async fn claim(&self, digest: &Digest, cutoff_ms: u64) -> Result<Option<Claim>> {
        let inner = &self.inner;
        let key = Key::content_use(digest);
        let now = inner.clock.now_ms();
        let (previous, mode) = match inner.storage.record_get_versioned(&key).await? {
            None => (UseRecord::default(), PutMode::Create),
            Some((bytes, version)) => {
                let record = UseRecord::decode(&bytes);
                let claimed_elsewhere = record.deleting_ms.is_some_and(|d| now.saturating_sub(d) < ms(TOMBSTONE_TTL));
                if claimed_elsewhere || record.at_ms >= cutoff_ms {
                    return Ok(None);
                }
                (record, PutMode::Update(version))
            }
        };
        let tombstone = UseRecord { at_ms: previous.at_ms, deleting_ms: Some(now) }.encode()?;
        match inner.storage.record_put_if(&key, tombstone, mode).await {
            Ok(version) => Ok(Some(Claim { digest: digest.clone(), version, previous, taken: Instant::now() })),
            Err(Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends a claim. `removed`: the content itself is gone, so its record goes too; otherwise
    /// (only a link was removed, or nothing) the record says again what it said before.
    pub async fn release(&self, claim: Claim, removed: bool) -> Result<()> {
        let key = Key::content_use(&claim.digest);
        // Still ours: no writer overwrites a tombstone this young. Gone content takes its
        // record with it; so does a claim on a digest that had no record (same meaning, one
        // write fewer).
        if claim.is_fresh() && (removed || claim.previous == UseRecord::default()) {
            self.inner.storage.record_delete(&key).await?;
            return Ok(());
        }
        match self.inner.storage.record_put_if(&key, claim.previous.encode()?, PutMode::Update(claim.version)).await {
            // A writer took an old tombstone over: the record is theirs now.
            Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::storage::fs::FsStorage;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    #[tokio::test]
    async fn touches_and_claims_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
        let clock = ManualClock::new();
        let grace = Duration::from_secs(3600);
        let uses = ContentUses::new(storage.clone(), Arc::new(clock.clone()), grace);
        // Never used: claimable (the caller checks the content's own age).
        let claim =
            uses.claim(&digest(1), uses.cutoff_ms(clock.now_ms())).await.unwrap().expect("unused content is claimable");
        assert!(claim.is_fresh());
        uses.release(claim, true).await.unwrap();
        // Touched: not claimable for the grace period, then claimable.
        uses.touch(&digest(2)).await.unwrap();
        assert!(uses.claim(&digest(2), uses.cutoff_ms(clock.now_ms())).await.unwrap().is_none());
        clock.advance(grace + Duration::from_secs(1));
        let claim =
            uses.claim(&digest(2), uses.cutoff_ms(clock.now_ms())).await.unwrap().expect("unused for the grace period");
        // Claimed: a second collector is refused; released without removal, it is as before.
        assert!(uses.claim(&digest(2), uses.cutoff_ms(clock.now_ms())).await.unwrap().is_none());
        uses.release(claim, false).await.unwrap();
        let again = uses.claim(&digest(2), uses.cutoff_ms(clock.now_ms())).await.unwrap().expect("still unused");
        uses.release(again, false).await.unwrap();
        // A tombstone whose collector died is taken over by a writer once it is old.
        let _abandoned = uses.claim(&digest(2), uses.cutoff_ms(clock.now_ms())).await.unwrap().unwrap();
        clock.advance(TOMBSTONE_TTL + Duration::from_secs(1));
        let other = ContentUses::new(storage, Arc::new(clock.clone()), grace);
        other.touch(&digest(2)).await.unwrap();
        assert!(
            other.claim(&digest(2), other.cutoff_ms(clock.now_ms())).await.unwrap().is_none(),
            "touched: in use again"
        );
    }
}
