//! Content in use: the one protocol that lets the garbage collector delete content and links
//! while pushes, mounts and pull-through fills go on, on every backend and across replicas.
//!
//! Each content digest D has a small *use record* (`uses/sha256/<2 hex>/<hex>`). Every writer that is
//! about to store D, link D into a repository, or accept a manifest that references D first
//! [`ContentUses::touch`]es D: it makes the record say "used now" unless it already says so
//! within a quarter of the grace period. The collector removes D (or a link to D) only after
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
//! a claim it is still using is never one a writer has taken over.
//!
//! **Claims in batches.** Removing much content one claim at a time costs two conditional
//! writes per object. A [`BatchClaim`] holds many digests with one record, written before and
//! deleted after a batch of removals: `gc/claims/<alg>/<2 hex>` every digest of one fan-out
//! prefix (the first two hex digits: content), `gc/claims/links` every digest (a batch of one
//! repository's dangling links, removed right after its mark, as single claims were). Under
//! it the collector *reads* each digest's use record and removes what has been unused since
//! the cutoff. A writer that *writes* a use record reads both claims that could hold its
//! digest afterwards, and while one is there waits for it to go, then touches again from the
//! start. Why nothing in use is removed, for a collector C (claim written at c1, use
//! record of D read at c2, D removed at c3, claim deleted at c4) and a writer W (use record of
//! D written at w1, batch claim read at w2):
//!
//! - w1 before c2: C reads W's fresh record and keeps D;
//! - w1 after c2: then w2 > c1, so W either finds the claim and waits until c4, or finds it
//!   gone (c4 < w2, so c3 < w2); either way W's check of D, made after its touch returns, runs
//!   after the removal and sees D gone (W stores it again, or refuses the manifest), and W's
//!   touch, repeated after the claim went, writes back any record C deleted with D.
//!
//! A writer that finds a young record writes nothing and reads no claim, exactly as with
//! single claims: C's read finds the same young record and keeps D. The batch claim expires
//! like a tombstone ([`TOMBSTONE_TTL`] for writers, [`CLAIM_LIMIT`] for its collector, which
//! stops acting on it sooner and renews it between removals), so a dead collector holds up a
//! prefix's writers for at most [`TOMBSTONE_TTL`]. Collectors of this version still honour
//! single-digest tombstones. This module knows records and digests, never repositories.

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

/// The collector's hold on every digest of one fan-out prefix, from
/// [`ContentUses::claim_batch`].
#[derive(Debug)]
pub struct BatchClaim {
    key: Key,
    version: Version,
    taken: Instant,
}

impl BatchClaim {
    /// Whether the collector may still act on it.
    pub fn is_fresh(&self) -> bool {
        self.taken.elapsed() < CLAIM_LIMIT
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
                            if held(Some(since), now)
                                && started.elapsed() < TOMBSTONE_TTL.saturating_add(Duration::from_secs(1)) =>
                        {
                            tokio::time::sleep(pause).await;
                            pause = pause.saturating_mul(2).min(Duration::from_millis(200));
                            continue;
                        }
                        Some(_) => PutMode::Update(version.clone()),
                        // Young enough that no run's cutoff reaches it while this writer works
                        // (see `cutoff_ms`): nothing to write.
                        None if now.saturating_sub(record.at_ms) < self.grace_ms() / 4 => {
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
                    // A collector holding the prefix may have read the record before this
                    // write: wait until it is done, then touch again (see the module docs).
                    if self.wait_for_batch(digest, started).await? {
                        continue;
                    }
                    self.remember(digest, now);
                    return Ok(());
                }
                // Another writer touched it, or a collector claimed it: look again.
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits while a fresh batch claim holds `digest` (its prefix's, or the links'); whether
    /// there was one.
    async fn wait_for_batch(&self, digest: &Digest, started: Instant) -> Result<bool> {
        let mut waited = false;
        for key in [Key::batch_claim(digest), Key::links_claim()] {
            let mut pause = Duration::from_millis(5);
            while let Some(bytes) = self.inner.storage.record_get(&key).await? {
                let fresh = held(UseRecord::decode(&bytes).deleting_ms, self.inner.clock.now_ms());
                if !fresh || started.elapsed() >= TOMBSTONE_TTL.saturating_add(Duration::from_secs(1)) {
                    break;
                }
                waited = true;
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2).min(Duration::from_millis(200));
            }
        }
        Ok(waited)
    }

    /// Claims every digest of `digest`'s fan-out prefix for a batch of removals (see the
    /// module docs): `None` when another collector holds it.
    pub async fn claim_batch(&self, digest: &Digest) -> Result<Option<BatchClaim>> {
        self.claim_key(Key::batch_claim(digest)).await
    }

    /// Claims every digest for a batch of link removals: `None` when another collector holds
    /// it.
    pub async fn claim_links(&self) -> Result<Option<BatchClaim>> {
        self.claim_key(Key::links_claim()).await
    }

    async fn claim_key(&self, key: Key) -> Result<Option<BatchClaim>> {
        let now = self.inner.clock.now_ms();
        let record = UseRecord { at_ms: 0, deleting_ms: Some(now) }.encode()?;
        // Usually nobody holds it: one conditional create, no read.
        match self.inner.storage.record_put_if(&key, record.clone(), PutMode::Create).await {
            Ok(version) => return Ok(Some(BatchClaim { key, version, taken: Instant::now() })),
            Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        let Some((bytes, version)) = self.inner.storage.record_get_versioned(&key).await? else { return Ok(None) };
        if held(UseRecord::decode(&bytes).deleting_ms, now) {
            return Ok(None);
        }
        // Its collector died: taken over.
        match self.inner.storage.record_put_if(&key, record, PutMode::Update(version)).await {
            Ok(version) => Ok(Some(BatchClaim { key, version, taken: Instant::now() })),
            Err(Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps a batch claim fresh (renewed once half of [`CLAIM_LIMIT`] has passed); false when
    /// it can no longer be acted on (too old, or taken over).
    pub async fn keep_batch(&self, claim: &mut BatchClaim) -> Result<bool> {
        if claim.taken.elapsed() < CLAIM_LIMIT.checked_div(2).unwrap_or(CLAIM_LIMIT) {
            return Ok(true);
        }
        if !claim.is_fresh() {
            return Ok(false);
        }
        let record = UseRecord { at_ms: 0, deleting_ms: Some(self.inner.clock.now_ms()) }.encode()?;
        match self.inner.storage.record_put_if(&claim.key, record, PutMode::Update(claim.version.clone())).await {
            Ok(version) => {
                claim.version = version;
                claim.taken = Instant::now();
                Ok(true)
            }
            Err(Error::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `digest`, under a batch claim on its prefix, has been unused since `cutoff_ms`
    /// (and no single claim holds it): `Some(had_record)` when it may be removed.
    pub async fn unused_under(&self, claim: &BatchClaim, digest: &Digest, cutoff_ms: u64) -> Result<Option<bool>> {
        let holds = claim.key == Key::links_claim() || claim.key == Key::batch_claim(digest);
        if !holds || !claim.is_fresh() {
            return Ok(None);
        }
        let now = self.inner.clock.now_ms();
        Ok(match self.inner.storage.record_get(&Key::content_use(digest)).await? {
            None => Some(false),
            Some(bytes) => {
                let record = UseRecord::decode(&bytes);
                let claimed_elsewhere = held(record.deleting_ms, now);
                (!claimed_elsewhere && record.at_ms < cutoff_ms).then_some(true)
            }
        })
    }

    /// Drops the use record of content a batch removed (a writer racing it writes it back).
    pub async fn forget(&self, digest: &Digest) -> Result<()> {
        self.inner.storage.record_delete(&Key::content_use(digest)).await?;
        Ok(())
    }

    /// Ends a batch claim.
    pub async fn release_batch(&self, claim: BatchClaim) -> Result<()> {
        // Only while it is still ours: an old one may have been taken over.
        if claim.taken.elapsed() < TOMBSTONE_TTL {
            self.inner.storage.record_delete(&claim.key).await?;
        }
        Ok(())
    }

    fn remember(&self, digest: &Digest, at_ms: u64) {
        if let Some(r) = &self.inner.recent {
            r.insert(digest.clone(), at_ms);
        }
    }

    /// The latest use (ms since the epoch) a claim made now accepts: none within the grace
    /// period, and none within half of it before `since` — the start of the caller's view of
    /// what links exist, so that content linked after that view was taken is never claimed,
    /// however long the caller has been running. Its writer either wrote the use record after
    /// `since`, or found it written within a quarter of the grace period before its touch;
    /// a writer that commits after `since` touched less than a quarter of the grace period
    /// before committing (a manifest PUT or an upload's finish takes seconds, the grace period
    /// is an hour), so that record is younger than `since` less half the grace period. (With
    /// the threshold at a half, a writer that touched just before a run began and committed
    /// just after the mark read its repository went unseen: rare, and only while the removal
    /// followed the mark closely.)
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
                !held(record.deleting_ms, now) && record.at_ms < cutoff_ms
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
                let claimed_elsewhere = held(record.deleting_ms, now);
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

/// Whether a claim taken at `deleting_ms` (a tombstone or a batch claim) still holds at
/// `now_ms`: younger than [`TOMBSTONE_TTL`], after which writers take it over.
fn held(deleting_ms: Option<u64>, now_ms: u64) -> bool {
    deleting_ms.is_some_and(|since| now_ms.saturating_sub(since) < ms(TOMBSTONE_TTL))
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_claim_and_a_touch_exclude_each_other() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::memory::MemoryStorage::new());
        let clock = ManualClock::new();
        let grace = Duration::from_secs(3600);
        let uses = ContentUses::new(storage.clone(), Arc::new(clock.clone()), grace);
        // Two digests of one prefix, both long unused.
        let (old, new) = (digest(0x11), Digest::parse(&format!("sha256:11{}", "ab".repeat(31))).unwrap());
        uses.touch(&old).await.unwrap();
        clock.advance(grace * 2);
        let cutoff = uses.cutoff_ms(clock.now_ms());
        let claim = uses.claim_batch(&old).await.unwrap().expect("nobody holds the prefix");
        assert!(uses.claim_batch(&new).await.unwrap().is_none(), "one collector per prefix");
        assert_eq!(uses.unused_under(&claim, &old, cutoff).await.unwrap(), Some(true), "unused, with a record");
        assert_eq!(uses.unused_under(&claim, &new, cutoff).await.unwrap(), Some(false), "never used, no record");
        // A writer touching a digest of the prefix writes its record, then waits for the batch.
        let writer = {
            let (uses, new) = (uses.clone(), new.clone());
            tokio::spawn(async move { uses.touch(&new).await })
        };
        while storage.record_get(&Key::content_use(&new)).await.unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished(), "the touch waits while the batch claim is held");
        assert_eq!(uses.unused_under(&claim, &new, cutoff).await.unwrap(), None, "the collector sees the touch");
        uses.release_batch(claim).await.unwrap();
        writer.await.unwrap().unwrap();
        assert!(storage.record_get(&Key::content_use(&new)).await.unwrap().is_some());
        // A collector that dies holding a prefix holds it up for TOMBSTONE_TTL at most.
        let _abandoned = uses.claim_batch(&old).await.unwrap().unwrap();
        clock.advance(TOMBSTONE_TTL + Duration::from_secs(1));
        uses.forget(&old).await.unwrap();
        uses.touch(&old).await.unwrap();
        assert!(uses.claim_batch(&old).await.unwrap().is_some(), "a stale claim is taken over");
    }
}
