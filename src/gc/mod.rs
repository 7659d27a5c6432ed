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
//! claim of [`crate::storage::uses`], and every writer touches a digest *before* it stores,
//! links or relies on it and checks it *after*. A claim and a touch are conditional writes on
//! the same record, so exactly one of them wins. If the touch wins, the claim is refused and
//! nothing is removed. If the claim wins, the writer waits for the collector to finish, then
//! finds the link or content gone: an upload or fill stores the content again, and a manifest
//! naming it is refused (`MANIFEST_BLOB_UNKNOWN`), never accepted. A link that existed when the
//! mark read its repository is in the filter, so the sweep keeps its content; a link made after
//! that was touched first, so its content cannot be claimed. A test races pushes sharing layers
//! against repeated collections with a short grace period on two replicas (`tests/it/gc.rs`).

mod bloom;
mod worker;

pub use worker::GcWorker;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::oci::{Digest, Manifest, RepositoryName};
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::uses::ContentUses;
use crate::storage::{self, keys, Key, Storage};
use bloom::Bloom;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long the collector's lease lasts between renewals.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// Content listed per page in the sweep.
const PAGE: usize = 1000;

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

        let names = self.repository_names().await?;
        let total = names.len() as u64;
        for (i, name) in names.iter().enumerate() {
            self.keep(&mut lease, &mut renewed).await?;
            self.mark_repository(name, dry_run, &mut lease, &mut live, &mut manifests, &mut report).await?;
            report.repositories = report.repositories.saturating_add(1);
            progress(Progress::Mark((i as u64).saturating_add(1), total));
        }

        let young = self.clock.now().checked_sub(self.uses.grace()).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut after: Option<String> = None;
        loop {
            self.keep(&mut lease, &mut renewed).await?;
            let page = self.storage.blob_list(after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.digest.to_string());
            for blob in page {
                report.objects_scanned = report.objects_scanned.saturating_add(1);
                let kind = if manifests.contains(&blob.digest) { "manifest" } else { "blob" };
                if live.contains(&blob.digest) {
                    report.stored.entry(kind.into()).or_default().add(blob.size);
                    continue;
                }
                let removable = blob.modified <= young
                    && match dry_run {
                        true => self.uses.unused(&blob.digest).await?,
                        false => self.remove_content(&blob.digest, &mut lease).await?,
                    };
                if removable {
                    report.objects_removed = report.objects_removed.saturating_add(1);
                    report.bytes_removed = report.bytes_removed.saturating_add(blob.size);
                } else {
                    report.kept_recent = report.kept_recent.saturating_add(1);
                    report.stored.entry(kind.into()).or_default().add(blob.size);
                }
            }
            progress(Progress::Sweep(report.objects_scanned));
        }

        report.finished_at = self.clock.now_ms() / 1000;
        report.seconds = started.elapsed().as_secs_f64();
        if !dry_run {
            let bytes = Bytes::from(serde_json::to_vec(&report).unwrap_or_default());
            self.storage.record_put(&Key::gc_usage(), bytes).await?;
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

    /// Marks one repository: its manifests and what they reference are live; its dangling
    /// blob links are removed once claimed; what stays linked goes into `live`.
    async fn mark_repository(
        &self,
        name: &RepositoryName,
        dry_run: bool,
        lease: &mut Option<&mut Lease>,
        live: &mut Bloom,
        manifests: &mut Bloom,
        report: &mut GcReport,
    ) -> Result<(), GcError> {
        let mut referenced: HashSet<Digest> = HashSet::new();
        // A manifest that cannot be read or parsed might reference any blob of the repository:
        // keep them all rather than guess.
        let mut unsure = false;
        let mut linked_bytes: u64 = 0;
        for hex in self.storage.record_list(&Key::manifest_links(name)).await? {
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else { continue };
            report.manifests_scanned = report.manifests_scanned.saturating_add(1);
            live.insert(&digest);
            manifests.insert(&digest);
            let link = self.storage.record_get(&Key::manifest_link(name, &digest)).await?;
            let Some(link) = link.and_then(|b| serde_json::from_slice::<LinkedManifest>(&b).ok()) else {
                unsure = true;
                continue;
            };
            linked_bytes = linked_bytes.saturating_add(link.size);
            let parsed = match self.storage.blob_read_small(&digest).await {
                Ok(bytes) => Manifest::parse(&bytes, Some(&link.media_type)).ok(),
                // A pull-through manifest whose content was never stored, or was lost.
                Err(storage::Error::NotFound) => None,
                Err(e @ storage::Error::Corrupt(_)) => {
                    tracing::warn!(repository = %name, %digest, error = %e, "gc: a manifest is corrupt; keeping its repository's blobs");
                    None
                }
                Err(e) => return Err(e.into()),
            };
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
        for hex in self.storage.record_list(&Key::blob_links(name)).await? {
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else { continue };
            report.links_scanned = report.links_scanned.saturating_add(1);
            let key = Key::blob_link(name, &digest);
            if unsure || referenced.contains(&digest) {
                live.insert(&digest);
                linked_bytes = linked_bytes.saturating_add(self.link_size(&key).await?);
                continue;
            }
            let removed = match dry_run {
                true => self.uses.unused(&digest).await?,
                false => self.remove_link(&key, &digest, lease).await?,
            };
            if removed {
                report.links_removed = report.links_removed.saturating_add(1);
            } else {
                live.insert(&digest);
                linked_bytes = linked_bytes.saturating_add(self.link_size(&key).await?);
            }
        }
        if let Some(rule) = self.rules.iter().find(|r| name.as_str().starts_with(&format!("{}/", r.prefix))) {
            let total = report.rules.entry(rule.label.clone()).or_default();
            *total = total.saturating_add(linked_bytes);
        }
        Ok(())
    }

    async fn link_size(&self, key: &Key) -> Result<u64, GcError> {
        let value = self.storage.record_get(key).await?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()).unwrap_or(0))
    }

    /// Removes a dangling blob link under a claim on its digest; false when it is in use.
    async fn remove_link(&self, key: &Key, digest: &Digest, lease: &mut Option<&mut Lease>) -> Result<bool, GcError> {
        let Some(claim) = self.uses.claim(digest).await? else { return Ok(false) };
        let removed = match claim.is_fresh() {
            true => match self.check(lease).await {
                Ok(()) => self.storage.record_delete(key).await.map(|_| true).map_err(GcError::from),
                Err(e) => Err(e),
            },
            false => Ok(false),
        };
        self.uses.release(claim, false).await?;
        removed
    }

    /// Removes content under a claim on its digest; false when it is in use.
    async fn remove_content(&self, digest: &Digest, lease: &mut Option<&mut Lease>) -> Result<bool, GcError> {
        let Some(claim) = self.uses.claim(digest).await? else { return Ok(false) };
        if !claim.is_fresh() {
            self.uses.release(claim, false).await?;
            return Ok(false);
        }
        if let Err(e) = self.check(lease).await {
            self.uses.release(claim, false).await?;
            return Err(e);
        }
        self.storage.blob_delete(digest).await?;
        self.uses.release(claim, true).await?;
        Ok(true)
    }
}
