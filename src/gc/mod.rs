//! The garbage collector: removes, online and on every backend, the links no image needs and
//! the content no repository links, while pushes, pulls and fills go on; one replica at a
//! time (the `leases/gc` lease). Owns the mark and sweep, the schedule, and the usage record
//! the runs leave (`gc/usage`); knows the storage layout and manifests, nothing of HTTP.
//!
//! **What is live.** Every manifest linked into a repository (tagged or not: untagged images
//! go by `DELETE` or a lifecycle policy, as in ECR), everything those manifests reference
//! (config, layers, index children), and every blob link someone used within the grace
//! period (a push uploads its layers before the manifest that names them).
//!
//! **One run.** *Mark:* for each repository, read its manifests and note what they reference;
//! a blob link nothing references is *dangling*, and is removed once claimed (below). Every
//! digest still linked goes into a Bloom filter (fixed size, so memory does not grow with the
//! number of blobs; a false positive keeps garbage, it never removes live content). *Sweep:*
//! list the stored content page by page; what the filter does not hold, older than the grace
//! period, is claimed and removed.
//!
//! **Why a racing push is safe.** Every removal, of a link or of content, happens under a
//! batch claim of [`crate::storage::uses`] on its digest's fan-out prefix, and every writer
//! touches a digest *before* it stores, links or relies on it and checks it *after*. Under the
//! claim the collector reads the digest's use record; a writer that writes that record reads
//! the claim afterwards (the module docs of `uses` walk through every order). If the touch is
//! seen, nothing is removed. If not, the writer waits for the collector to finish, then finds
//! the link or content gone: an upload or fill stores the content again, and a manifest
//! naming it is refused (`MANIFEST_BLOB_UNKNOWN`), never accepted. A link that existed when the
//! mark read its repository is in the filter, so the sweep keeps its content; a link made after
//! the run began was touched after it began (or found touched within a quarter of the grace
//! period before, by a writer that commits within a quarter of it), and a run claims nothing
//! used that late, however long it takes ([`ContentUses::cutoff_ms`]).
//!
//! **What a removal costs.** One claim record per batch of up to [`BATCH`] digests (written,
//! renewed every few seconds, deleted), then per object one read of its use record and its
//! delete (plus the use record's delete for content): a repository's dangling links are
//! removed right after its mark under the links claim, and the sweep removes each listed
//! page's garbage by fan-out prefix. A writer whose touch writes a use record while a batch
//! holds its digest waits for that batch (a fraction of a second). A unit test holds a manifest PUT between its checks and its
//! writes while a collection runs; an integration test races pushes sharing layers
//! against repeated collections with a short grace period on two replicas (`tests/it/gc.rs`).

mod bloom;
pub mod usage;
mod worker;

pub use worker::GcWorker;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::oci::{Digest, Manifest, RepositoryName};
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::uses::{BatchClaim, ContentUses};
use crate::storage::{self, keys, Key, Storage};
use bloom::Bloom;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use storage::StoredBlob;

/// How long the collector's lease lasts between renewals.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Content listed per page in the sweep.
const PAGE: usize = 1000;

/// Removals (each a read and a delete) in flight at once: they wait on storage (an fsync, an
/// S3 round trip), not on the CPU.
const REMOVALS_AT_ONCE: usize = 8;

/// Digests of one prefix removed under one batch claim at most (so a writer waiting on the
/// claim waits for a short batch, and the claim is renewed between chunks).
const BATCH: usize = 256;

/// Manifests (and link sizes) read at once in the mark.
const READS_AT_ONCE: usize = 16;

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The lease was lost (another replica took over): this run stops where it is.
    #[error("the gc lease: {0}")]
    Lease(#[from] LeaseError),
}

/// What a collection found and did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    /// Whether it only looked.
    pub dry_run: bool,
    /// Repositories marked.
    pub repositories: u64,
    /// Manifests read.
    pub manifests_scanned: u64,
    /// Blob links examined.
    pub links_scanned: u64,
    /// Dangling blob links removed (or that would be).
    pub links_removed: u64,
    /// Stored objects listed.
    pub objects_scanned: u64,
    /// Content removed (or that would be).
    pub objects_removed: u64,
    /// Its bytes.
    pub bytes_removed: u64,
    /// Unreferenced content kept because it was used within the grace period.
    pub kept_recent: u64,
    /// Content and bytes stored after the run, by kind (`blob`, `manifest`).
    pub stored: BTreeMap<String, Usage>,
    /// Bytes linked into each pull-through rule's repositories (shared content counted once
    /// per repository).
    pub rules: BTreeMap<String, u64>,
    /// When it finished (seconds since the epoch).
    pub finished_at: u64,
    /// How long it took (seconds).
    pub seconds: f64,
    /// S3 requests the run made, lease included (0 on the filesystem; counted by `ferry gc`).
    #[serde(default)]
    pub s3_requests: u64,
    /// Indexed manifest links whose index disagrees with the manifest the mark read (its
    /// subject): `ferry index check --repair` puts them right.
    #[serde(default)]
    pub index_mismatches: u64,
}

/// Objects and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// How many.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.objects = self.objects.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

/// Where a collection is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Marking: repositories done of all.
    Mark(u64, u64),
    /// Sweeping: objects listed so far.
    Sweep(u64),
}

/// A pull-through rule's label and the prefix of its repositories, for usage by rule.
#[derive(Debug, Clone)]
pub struct RulePrefix {
    /// The rule's label (metrics).
    pub label: String,
    /// Its local prefix.
    pub prefix: String,
}

/// The collector over one store.
pub struct Collector {
    storage: Arc<dyn Storage>,
    uses: ContentUses,
    clock: SharedClock,
    metrics: Option<Arc<Metrics>>,
    rules: Vec<RulePrefix>,
}

/// The part of a manifest link the collector reads.
#[derive(Deserialize)]
struct LinkedManifest {
    media_type: String,
    #[serde(default)]
    size: u64,
    /// The image index's fields (see `registry::index`): present once the link is indexed.
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    subject: Option<Digest>,
}

impl Collector {
    /// A collector; `uses` must share the store (and, in a server, be the registry's own).
    pub fn new(
        storage: Arc<dyn Storage>,
        uses: ContentUses,
        clock: SharedClock,
        metrics: Option<Arc<Metrics>>,
        rules: Vec<RulePrefix>,
    ) -> Self {
        Self { storage, uses, clock, metrics, rules }
    }

    /// What the last collection (on any replica) measured.
    pub async fn last_usage(&self) -> Result<Option<GcReport>, GcError> {
        Ok(self.storage.record_get(&Key::gc_usage()).await?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Sets the usage gauges from a report.
    pub fn publish(&self, report: &GcReport) {
        let Some(m) = &self.metrics else { return };
        for kind in ["blob", "manifest"] {
            let usage = report.stored.get(kind).copied().unwrap_or_default();
            m.gc.stored_bytes.with_label_values(&[kind]).set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
            m.gc.stored_objects.with_label_values(&[kind]).set(i64::try_from(usage.objects).unwrap_or(i64::MAX));
        }
        for (rule, bytes) in &report.rules {
            m.gc.rule_bytes.with_label_values(&[rule]).set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
    }

    /// One collection. With a lease, it is renewed as the run goes and checked before every
    /// removal; losing it stops the run.
    pub async fn collect(
        &self,
        dry_run: bool,
        mut lease: Option<&mut Lease>,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<GcReport, GcError> {
        let started = Instant::now();
        let mut report = GcReport { dry_run, ..GcReport::default() };
        let expected = self.last_usage().await?.map_or(0, |u| u.stored.values().map(|s| s.objects).sum::<u64>());
        let mut live = Bloom::for_items(expected);
        let mut manifests = Bloom::for_items(expected / 4);
        let mut renewed = Instant::now();
        // What was linked from here on was touched from here on: never claimed in this run.
        let since = self.clock.now_ms();

        let names = self.repository_names().await?;
        let total = names.len() as u64;
        for (i, name) in names.iter().enumerate() {
            self.keep(&mut lease, &mut renewed).await?;
            let dangling = self.mark_repository(name, &mut live, &mut manifests, &mut report).await?;
            // Removed right after the mark that found them, so the time between the mark's read
            // and the removal stays short (see `uses`: a writer that found a young use record
            // wrote nothing the removal could see).
            self.remove_links(dangling, since, dry_run, &mut lease, &mut live, &mut report).await?;
            report.repositories = report.repositories.saturating_add(1);
            progress(Progress::Mark((i as u64).saturating_add(1), total));
            if report.repositories.is_multiple_of(1000) {
                tracing::info!(
                    repositories = report.repositories,
                    of = total,
                    manifests = report.manifests_scanned,
                    links_removed = report.links_removed,
                    "gc: marking"
                );
            }
        }

        let young = self.clock.now().checked_sub(self.uses.grace()).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut after: Option<String> = None;
        loop {
            self.keep(&mut lease, &mut renewed).await?;
            let page = self.storage.blob_list(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.digest.to_string());
            let mut candidates: Vec<(StoredBlob, bool)> = Vec::new();
            for blob in page {
                report.objects_scanned = report.objects_scanned.saturating_add(1);
                let kind: &'static str = if manifests.contains(&blob.digest) { "manifest" } else { "blob" };
                if live.contains(&blob.digest) {
                    report.stored.entry(kind.into()).or_default().add(blob.size);
                } else if blob.modified > young {
                    report.kept_recent = report.kept_recent.saturating_add(1);
                    report.stored.entry(kind.into()).or_default().add(blob.size);
                } else {
                    candidates.push((blob, kind == "manifest"));
                }
            }
            // The lease is checked once per page, before its removals: each removal is
            // safe against writers by its own claim; the lease only keeps collectors apart.
            if !dry_run && !candidates.is_empty() {
                self.check(&mut lease).await?;
            }
            let targets = candidates
                .into_iter()
                .map(|(blob, is_manifest)| Target {
                    digest: blob.digest,
                    link: None,
                    size: blob.size,
                    is_manifest,
                    rule: None,
                })
                .collect();
            for (target, removed) in
                self.remove_batched(targets, self.uses.cutoff_ms(since), dry_run, Scope::Prefix).await?
            {
                let kind = if target.is_manifest { "manifest" } else { "blob" };
                if removed {
                    report.objects_removed = report.objects_removed.saturating_add(1);
                    report.bytes_removed = report.bytes_removed.saturating_add(target.size);
                } else {
                    report.kept_recent = report.kept_recent.saturating_add(1);
                    report.stored.entry(kind.into()).or_default().add(target.size);
                }
            }
            progress(Progress::Sweep(report.objects_scanned));
            if report.objects_scanned % 100_000 < PAGE as u64 {
                tracing::info!(scanned = report.objects_scanned, removed = report.objects_removed, "gc: sweeping");
            }
        }

        report.finished_at = self.clock.now_ms() / 1000;
        report.seconds = started.elapsed().as_secs_f64();
        if !dry_run {
            crate::storage::records::put(self.storage.as_ref(), &Key::gc_usage(), &report).await?;
            self.count(&report);
        }
        Ok(report)
    }

    fn count(&self, report: &GcReport) {
        let Some(m) = &self.metrics else { return };
        m.gc.scanned.with_label_values(&["manifest"]).inc_by(report.manifests_scanned);
        m.gc.scanned.with_label_values(&["link"]).inc_by(report.links_scanned);
        m.gc.scanned.with_label_values(&["content"]).inc_by(report.objects_scanned);
        m.gc.removed.with_label_values(&["link"]).inc_by(report.links_removed);
        m.gc.removed.with_label_values(&["content"]).inc_by(report.objects_removed);
        m.gc.removed_bytes.inc_by(report.bytes_removed);
        m.gc.duration.set(report.seconds);
        #[allow(clippy::cast_precision_loss)]
        m.gc.last_success.set(report.finished_at as f64);
        self.publish(report);
    }

    /// Renews the lease when a third of its time has passed.
    async fn keep(&self, lease: &mut Option<&mut Lease>, renewed: &mut Instant) -> Result<(), GcError> {
        if let Some(lease) = lease.as_deref_mut() {
            if renewed.elapsed() >= LEASE_TTL.checked_div(3).unwrap_or(LEASE_TTL) {
                lease.renew(self.storage.as_ref(), self.clock.as_ref()).await?;
                *renewed = Instant::now();
            }
        }
        Ok(())
    }

    /// Checks the lease before a removal.
    async fn check(&self, lease: &mut Option<&mut Lease>) -> Result<(), GcError> {
        if let Some(lease) = lease.as_deref() {
            lease.check(self.storage.as_ref(), self.clock.as_ref()).await?;
        }
        Ok(())
    }

    async fn repository_names(&self) -> Result<Vec<RepositoryName>, GcError> {
        let mut names: Vec<RepositoryName> = self
            .storage
            .record_list(&Key::catalog())
            .await?
            .iter()
            .filter_map(|e| keys::decode_catalog_entry(e))
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// Marks one repository: its manifests and what they reference are live, and what stays
    /// linked goes into `live`; returns its dangling blob links (for [`Self::remove_links`],
    /// which puts the ones it keeps into `live`).
    async fn mark_repository(
        &self,
        name: &RepositoryName,
        live: &mut Bloom,
        manifests: &mut Bloom,
        report: &mut GcReport,
    ) -> Result<Vec<Target>, GcError> {
        let mut referenced: HashSet<Digest> = HashSet::new();
        // A manifest that cannot be read or parsed might reference any blob of the repository:
        // keep them all rather than guess.
        let mut unsure = false;
        let mut linked_bytes: u64 = 0;
        let listed = storage::records::sha256_names(self.storage.as_ref(), &Key::manifest_links(name)).await?;
        // Read a few manifests at once (each a link and a small blob: waits on storage), and
        // fold each into the mark as it arrives.
        let mut reads = futures_util::stream::iter(listed)
            .map(|digest| async move {
                let read = self.read_manifest(name, &digest).await?;
                Ok::<_, GcError>((digest, read))
            })
            .buffer_unordered(READS_AT_ONCE);
        while let Some(read) = reads.next().await {
            let (digest, read) = read?;
            report.manifests_scanned = report.manifests_scanned.saturating_add(1);
            live.insert(&digest);
            manifests.insert(&digest);
            let Some((size, parsed, index_agrees)) = read else {
                unsure = true;
                continue;
            };
            if !index_agrees {
                report.index_mismatches = report.index_mismatches.saturating_add(1);
                tracing::warn!(repository = %name, %digest, "gc: the image index disagrees with the manifest; run `ferry index check --repair`");
            }
            linked_bytes = linked_bytes.saturating_add(size);
            match parsed {
                Some(m) => {
                    for d in m.blobs.into_iter().chain(m.children) {
                        live.insert(&d);
                        referenced.insert(d);
                    }
                }
                None => unsure = true,
            }
        }
        let (mut dangling, mut kept) = (Vec::new(), Vec::new());
        for hex in self.storage.record_list(&Key::blob_links(name)).await? {
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else { continue };
            report.links_scanned = report.links_scanned.saturating_add(1);
            let key = Key::blob_link(name, &digest);
            if unsure || referenced.contains(&digest) {
                live.insert(&digest);
                kept.push(key);
            } else {
                dangling.push((key, digest));
            }
        }
        // Linked bytes count only towards a pull-through rule's usage: other repositories'
        // links are not read for their sizes.
        let rule = self.rules.iter().find(|r| name.as_str().starts_with(&format!("{}/", r.prefix)));
        if rule.is_none() {
            kept.clear();
        }
        let mut sizes = futures_util::stream::iter(kept)
            .map(|key| async move { self.link_size(&key).await })
            .buffer_unordered(READS_AT_ONCE);
        while let Some(size) = sizes.next().await {
            linked_bytes = linked_bytes.saturating_add(size?);
        }
        drop(sizes);
        let dangling = dangling
            .into_iter()
            .map(|(key, digest)| Target {
                digest,
                link: Some(key),
                size: 0,
                is_manifest: false,
                rule: rule.map(|r| r.label.clone()),
            })
            .collect();
        if let Some(rule) = rule {
            let total = report.rules.entry(rule.label.clone()).or_default();
            *total = total.saturating_add(linked_bytes);
        }
        Ok(dangling)
    }

    /// A linked manifest's size and parsed content: `None` when its link is gone or does not
    /// decode; no content when its bytes are missing or corrupt (the caller keeps every blob
    /// of the repository then, rather than guess).
    async fn read_manifest(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<(u64, Option<Manifest>, bool)>, GcError> {
        let link = self.storage.record_get(&Key::manifest_link(name, digest)).await?;
        let Some(link) = link.and_then(|b| serde_json::from_slice::<LinkedManifest>(&b).ok()) else {
            return Ok(None);
        };
        let parsed = match self.storage.blob_read_small(digest).await {
            Ok(bytes) => Manifest::parse(&bytes, Some(&link.media_type)).ok(),
            // A pull-through manifest whose content was never stored, or was lost.
            Err(storage::Error::NotFound) => None,
            Err(e @ storage::Error::Corrupt(_)) => {
                tracing::warn!(repository = %name, %digest, error = %e, "gc: a manifest is corrupt; keeping its repository's blobs");
                None
            }
            Err(e) => return Err(e.into()),
        };
        // The mark verifies what it can of the index for free: the subject the link names.
        let index_agrees = match (&link.tags, &parsed) {
            (Some(_), Some(m)) => m.subject.as_ref().map(|s| &s.digest) == link.subject.as_ref(),
            _ => true,
        };
        Ok(Some((link.size, parsed, index_agrees)))
    }

    async fn link_size(&self, key: &Key) -> Result<u64, GcError> {
        let value = self.storage.record_get(key).await?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()).unwrap_or(0))
    }

    /// Removes the dangling links that are unused (in batches under the links claim, see
    /// [`Self::remove_batched`]); the rest go into `live`, and count towards their rule's usage.
    async fn remove_links(
        &self,
        held: Vec<Target>,
        since: u64,
        dry_run: bool,
        lease: &mut Option<&mut Lease>,
        live: &mut Bloom,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        if held.is_empty() {
            return Ok(());
        }
        if !dry_run {
            self.check(lease).await?;
        }
        for (target, removed) in self.remove_batched(held, self.uses.cutoff_ms(since), dry_run, Scope::Links).await? {
            if removed {
                report.links_removed = report.links_removed.saturating_add(1);
                continue;
            }
            live.insert(&target.digest);
            if let (Some(rule), Some(key)) = (&target.rule, &target.link) {
                let size = self.link_size(key).await?;
                let total = report.rules.entry(rule.clone()).or_default();
                *total = total.saturating_add(size);
            }
        }
        Ok(())
    }

    /// Removes what of `targets` has been unused since `cutoff` (dry: says what would be), in
    /// groups of at most [`BATCH`], each under one batch claim (by fan-out prefix, or the links
    /// claim); returns each target with whether it was (or would be) removed.
    async fn remove_batched(
        &self,
        mut targets: Vec<Target>,
        cutoff: u64,
        dry_run: bool,
        scope: Scope,
    ) -> Result<Vec<(Target, bool)>, GcError> {
        targets.sort_by(|a, b| a.digest.hex().cmp(b.digest.hex()));
        let mut out = Vec::with_capacity(targets.len());
        let mut rest = targets.into_iter().peekable();
        while let Some(first) = rest.next() {
            let prefix = keys::fanout(&first.digest).to_owned();
            let mut group = vec![first];
            while group.len() < BATCH {
                let same = |t: &Target| scope == Scope::Links || keys::fanout(&t.digest) == prefix;
                match rest.next_if(same) {
                    Some(t) => group.push(t),
                    None => break,
                }
            }
            if dry_run {
                for t in group {
                    let unused = self.uses.unused(&t.digest, cutoff).await?;
                    out.push((t, unused));
                }
                continue;
            }
            let claimed = match scope {
                Scope::Prefix => self.uses.claim_batch(&group[0].digest).await?,
                Scope::Links => self.uses.claim_links().await?,
            };
            let Some(mut claim) = claimed else {
                // Another collector holds the prefix: all kept, for the next run.
                out.extend(group.into_iter().map(|t| (t, false)));
                continue;
            };
            let mut failed = None;
            let mut group = group.into_iter();
            loop {
                let chunk: Vec<Target> = group.by_ref().take(REMOVALS_AT_ONCE.saturating_mul(8)).collect();
                if chunk.is_empty() {
                    break;
                }
                if failed.is_some() || !self.uses.keep_batch(&mut claim).await? {
                    out.extend(chunk.into_iter().map(|t| (t, false)));
                    continue;
                }
                let claim = &claim;
                let results: Vec<(Target, Result<bool, GcError>)> = futures_util::stream::iter(chunk)
                    .map(|t| async move {
                        let removed = self.remove_one(claim, &t, cutoff).await;
                        (t, removed)
                    })
                    .buffer_unordered(REMOVALS_AT_ONCE)
                    .collect()
                    .await;
                for (t, removed) in results {
                    match removed {
                        Ok(removed) => out.push((t, removed)),
                        Err(e) => {
                            out.push((t, false));
                            failed.get_or_insert(e);
                        }
                    }
                }
            }
            // Released before any error is returned, so writers of the prefix do not wait on it.
            self.uses.release_batch(claim).await?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Removes one link or content under a batch claim when it is unused; whether it was.
    async fn remove_one(&self, claim: &BatchClaim, target: &Target, cutoff: u64) -> Result<bool, GcError> {
        let Some(had_record) = self.uses.unused_under(claim, &target.digest, cutoff).await? else { return Ok(false) };
        if !claim.is_fresh() {
            return Ok(false);
        }
        match &target.link {
            Some(key) => {
                self.storage.record_delete(key).await?;
            }
            None => {
                self.storage.blob_delete(&target.digest).await?;
                if had_record {
                    self.uses.forget(&target.digest).await?;
                }
            }
        }
        Ok(true)
    }
}

/// What one batch claim holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Every digest of one fan-out prefix (content, in the sweep's order).
    Prefix,
    /// Every digest (one repository's dangling links).
    Links,
}

/// Something the collector may remove: a dangling link (`link`) or stored content.
#[derive(Debug)]
struct Target {
    digest: Digest,
    /// The link's key; `None` for the content itself.
    link: Option<Key>,
    /// The content's stored size (0 for a link).
    size: u64,
    /// Whether the content is a manifest's.
    is_manifest: bool,
    /// The pull-through rule the link's repository belongs to.
    rule: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::oci::{Reference, Tag};
    use crate::registry::testing::{self, body, image_manifest as manifest};
    use crate::storage::fs::FsStorage;
    use crate::storage::{ByteRange, ByteStream, OnWritten, PutMode, StoredBlob, UploadId, Version};
    use async_trait::async_trait;
    use bytes::Bytes;
    use tokio::sync::Notify;

    /// The filesystem store, except that storing a manifest's content stops until the test
    /// lets it go: the one interleaving of a push and a collection that no real client can
    /// hold open on purpose (a manifest PUT between its reference checks and its writes).
    struct PausingStorage {
        inner: Arc<dyn Storage>,
        paused: Notify,
        resume: Notify,
        pause_next_small_put: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Storage for PausingStorage {
        async fn blob_size(&self, d: &Digest) -> storage::Result<Option<u64>> {
            self.inner.blob_size(d).await
        }
        async fn blob_read(&self, d: &Digest, r: Option<ByteRange>, s: u64) -> storage::Result<ByteStream> {
            self.inner.blob_read(d, r, s).await
        }
        async fn blob_read_small_unverified(&self, d: &Digest) -> storage::Result<Bytes> {
            self.inner.blob_read_small_unverified(d).await
        }
        async fn blob_put_small(&self, d: &Digest, b: Bytes) -> storage::Result<()> {
            if self.pause_next_small_put.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.paused.notify_one();
                self.resume.notified().await;
            }
            self.inner.blob_put_small(d, b).await
        }
        async fn blob_list(&self, after: Option<&str>, limit: usize) -> storage::Result<Vec<StoredBlob>> {
            self.inner.blob_list(after, limit).await
        }
        async fn blob_delete(&self, d: &Digest) -> storage::Result<bool> {
            self.inner.blob_delete(d).await
        }
        async fn upload_create(&self, id: &UploadId, state: Bytes) -> storage::Result<()> {
            self.inner.upload_create(id, state).await
        }
        async fn upload_state(&self, id: &UploadId) -> storage::Result<Bytes> {
            self.inner.upload_state(id).await
        }
        async fn upload_seal(&self, id: &UploadId) -> storage::Result<()> {
            self.inner.upload_seal(id).await
        }
        async fn upload_append_observed(
            &self,
            id: &UploadId,
            body: ByteStream,
            on: OnWritten<'_>,
        ) -> storage::Result<u64> {
            self.inner.upload_append_observed(id, body, on).await
        }
        async fn upload_size(&self, id: &UploadId) -> storage::Result<u64> {
            self.inner.upload_size(id).await
        }
        async fn upload_read(&self, id: &UploadId, r: Option<ByteRange>) -> storage::Result<ByteStream> {
            self.inner.upload_read(id, r).await
        }
        async fn upload_commit(&self, id: &UploadId, d: &Digest, s: u64) -> storage::Result<()> {
            self.inner.upload_commit(id, d, s).await
        }
        async fn upload_delete(&self, id: &UploadId) -> storage::Result<()> {
            self.inner.upload_delete(id).await
        }
        async fn upload_list(&self) -> storage::Result<Vec<(UploadId, SystemTime)>> {
            self.inner.upload_list().await
        }
        async fn record_get(&self, k: &Key) -> storage::Result<Option<Bytes>> {
            self.inner.record_get(k).await
        }
        async fn record_put(&self, k: &Key, v: Bytes) -> storage::Result<()> {
            self.inner.record_put(k, v).await
        }
        async fn record_get_versioned(&self, k: &Key) -> storage::Result<Option<(Bytes, Version)>> {
            self.inner.record_get_versioned(k).await
        }
        async fn record_put_if(&self, k: &Key, v: Bytes, m: PutMode) -> storage::Result<Version> {
            self.inner.record_put_if(k, v, m).await
        }
        async fn record_delete(&self, k: &Key) -> storage::Result<bool> {
            self.inner.record_delete(k).await
        }
        async fn record_list(&self, k: &Key) -> storage::Result<Vec<String>> {
            self.inner.record_list(k).await
        }
        async fn record_list_page(
            &self,
            k: &Key,
            after: Option<&str>,
            limit: usize,
        ) -> storage::Result<storage::ListPage> {
            self.inner.record_list_page(k, after, limit).await
        }
    }

    /// A manifest PUT that checked its layer's link, and is about to store itself, while a
    /// collection runs: the layer's link was dangling and unused for longer than the grace
    /// period, yet the collection leaves it, because the PUT touched it first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_manifest_put_between_its_checks_and_its_writes_keeps_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
        let storage = Arc::new(PausingStorage {
            inner: fs,
            paused: Notify::new(),
            resume: Notify::new(),
            pause_next_small_put: false.into(),
        });
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let grace = Duration::from_secs(3600);
        let registry = Arc::new(testing::registry(storage.clone(), testing::settings(grace), shared.clone()));
        let collector = Collector::new(storage.clone(), registry.content_uses(), shared, None, vec![]);

        let name = RepositoryName::parse("team/app").unwrap();
        let (config, layer_digest) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"layer"));
        registry.upload_monolithic(&name, &config, body(b"{}")).await.unwrap();
        registry.upload_monolithic(&name, &layer_digest, body(b"layer")).await.unwrap();
        let tag = |t: &str| Reference::Tag(Tag::parse(t).unwrap());
        let first = registry
            .manifest_put(
                &name,
                &tag("v1"),
                None,
                manifest(&config, &layer_digest, 1),
                crate::registry::PushOrigin::Client,
            )
            .await
            .unwrap();
        registry.manifest_delete(&name, &Reference::Digest(first.digest)).await.unwrap();
        // The layer's link is now dangling, and nobody has used it for longer than the grace.
        clock.advance(grace * 2);

        storage.pause_next_small_put.store(true, std::sync::atomic::Ordering::SeqCst);
        let put = {
            let registry = registry.clone();
            let (name, config, layer_digest) = (name.clone(), config.clone(), layer_digest.clone());
            tokio::spawn(async move {
                registry
                    .manifest_put(
                        &name,
                        &tag("v2"),
                        None,
                        manifest(&config, &layer_digest, 2),
                        crate::registry::PushOrigin::Client,
                    )
                    .await
            })
        };
        storage.paused.notified().await;
        let report = collector.collect(false, None, &|_| {}).await.unwrap();
        storage.resume.notify_one();
        put.await.unwrap().expect("the manifest is accepted");
        assert_eq!(
            (report.links_removed, report.objects_removed),
            (0, 1),
            "only the deleted manifest goes: {report:?}"
        );
        assert!(storage.record_get(&Key::blob_link(&name, &layer_digest)).await.unwrap().is_some());
        assert!(storage.blob_size(&layer_digest).await.unwrap().is_some());
        // With the push done and its manifest live, a later collection keeps it all too.
        clock.advance(grace * 2);
        let report = collector.collect(false, None, &|_| {}).await.unwrap();
        assert_eq!((report.links_removed, report.objects_removed), (0, 0), "{report:?}");
        assert!(storage.blob_size(&layer_digest).await.unwrap().is_some());
    }

    /// Unreferenced content and its dangling links, all unused for longer than the grace
    /// period: each removal costs at most three storage requests (its use record read, its
    /// delete, and for content its use record's delete), claims and listings included.
    #[tokio::test]
    async fn removals_cost_at_most_three_requests_each() {
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let memory: Arc<dyn Storage> = Arc::new(crate::storage::memory::MemoryStorage::with_clock(shared.clone()));
        let storage = Arc::new(crate::storage::counting::CountingStorage::new(memory));
        let grace = Duration::from_secs(3600);
        let registry = testing::registry(storage.clone(), testing::settings(grace), shared.clone());
        let collector = Collector::new(storage.clone(), registry.content_uses(), shared, None, vec![]);
        let blobs = 2000usize;
        for i in 0..blobs {
            let name = RepositoryName::parse(&format!("team/app{}", i % 10)).unwrap();
            let bytes = format!("blob {i}").into_bytes();
            registry.upload_monolithic(&name, &Digest::sha256_of(&bytes), body(&bytes)).await.unwrap();
        }
        clock.advance(grace * 2);
        let (report, requests) = storage.count(collector.collect(false, None, &|_| {})).await;
        let report = report.unwrap();
        assert_eq!((report.links_removed, report.objects_removed), (blobs as u64, blobs as u64), "{report:?}");
        let removed = report.links_removed + report.objects_removed;
        #[allow(clippy::cast_precision_loss)]
        let per_removal = requests.total() as f64 / removed as f64;
        assert!(per_removal <= 3.0, "{per_removal:.2} requests per removal: {requests:?}");
        println!("gc: {per_removal:.2} storage requests per removal ({requests:?})");
        // Nothing is left behind: no links, no content, no use records, no claims.
        clock.advance(grace * 2);
        let again = collector.collect(false, None, &|_| {}).await.unwrap();
        assert_eq!((again.links_removed, again.objects_removed, again.objects_scanned), (0, 0, 0), "{again:?}");
        for i in 0..blobs {
            let digest = Digest::sha256_of(format!("blob {i}").as_bytes());
            assert_eq!(storage.record_get(&Key::content_use(&digest)).await.unwrap(), None, "a use record is left");
            assert_eq!(storage.record_get(&Key::batch_claim(&digest)).await.unwrap(), None, "a claim is left");
        }
    }

    /// The mark checks each indexed link's subject against the manifest it reads anyway, and
    /// counts what disagrees (no extra request).
    #[tokio::test]
    async fn the_mark_counts_links_whose_index_disagrees_with_their_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let registry = testing::registry(storage.clone(), testing::settings(Duration::from_secs(3600)), shared.clone());
        let collector = Collector::new(storage.clone(), registry.content_uses(), shared, None, vec![]);
        let name = RepositoryName::parse("team/app").unwrap();
        let (config, layer) = (Digest::sha256_of(b"{}"), Digest::sha256_of(b"layer"));
        registry.upload_monolithic(&name, &config, body(b"{}")).await.unwrap();
        registry.upload_monolithic(&name, &layer, body(b"layer")).await.unwrap();
        let tag = Reference::Tag(Tag::parse("v1").unwrap());
        let pushed = registry
            .manifest_put(&name, &tag, None, manifest(&config, &layer, 1), crate::registry::PushOrigin::Client)
            .await
            .unwrap();
        assert_eq!(collector.collect(true, None, &|_| {}).await.unwrap().index_mismatches, 0);
        // The link claims a subject its manifest does not have.
        let key = Key::manifest_link(&name, &pushed.digest);
        let mut link: serde_json::Value =
            serde_json::from_slice(&storage.record_get(&key).await.unwrap().unwrap()).unwrap();
        assert!(link["tags"].is_array(), "an indexed link: {link}");
        link["subject"] = serde_json::json!(Digest::sha256_of(b"elsewhere"));
        storage.record_put(&key, Bytes::from(serde_json::to_vec(&link).unwrap())).await.unwrap();
        let report = collector.collect(true, None, &|_| {}).await.unwrap();
        assert_eq!((report.index_mismatches, report.manifests_scanned), (1, 1), "{report:?}");
    }
}
