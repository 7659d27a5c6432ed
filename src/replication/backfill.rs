//! Backfills: `ferry replication backfill` from the command line, and the backfills ECR's API
//! starts (`StartReplicationBackfill`), moved on by the replication workers ([`advance`]).
//!
//! `ferry replication backfill`: what ECR long refused to do, replicating images pushed before the
//! replication configuration existed. It queues an ordinary event for every image (a manifest
//! that is not a platform manifest of an index the repository also holds) whose status at a
//! destination is not `COMPLETE`, then works on them with a worker of its own beside the
//! servers' (the events' leases keep each copy to one worker) until none is left. An image
//! already `COMPLETE` at a destination is never queued again, so running it twice copies
//! nothing twice; one interrupted leaves its events for the servers' workers.

use super::{Destinations, Pace, ReplicationWorker};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replication::store::ReplicationStore;
use crate::replication::store::{Backfill, BackfillResult, BackfillStatus, BackfillTarget, RETAINED_FOR_MS};
use crate::replication::store::{ReplicationDestination, ReplicationState};
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::EventId;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;

/// What a backfill did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BackfillReport {
    /// Images queued (each for the destinations where it was not yet complete).
    pub images_queued: usize,
    /// Images already complete everywhere they should be.
    pub images_already_replicated: usize,
    /// Destination copies that ended `COMPLETE`.
    pub complete: usize,
    /// Destination copies that ended `FAILED`.
    pub failed: usize,
}

/// Which images a backfill covers.
#[derive(Debug, Clone, Default)]
pub struct BackfillScope {
    /// Only repositories whose names start with this.
    pub repository_prefix: Option<String>,
    /// Only this destination: its registry id, or `<registry id>/<region>`.
    pub destination: Option<String>,
}

impl BackfillScope {
    fn wants(&self, d: &ReplicationDestination) -> bool {
        self.destination
            .as_deref()
            .is_none_or(|want| want == d.registry_id || want == format!("{}/{}", d.registry_id, d.region))
    }
}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// Nothing is configured to replicate.
    #[error("no replication configuration: put one with PutReplicationConfiguration first")]
    NotConfigured,
    /// Storage failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// Replication's records could not be read or written.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
}

/// An image a backfill should queue, and for which destinations.
pub struct PendingImage {
    /// Its repository.
    pub name: crate::oci::RepositoryName,
    /// The image.
    pub digest: crate::oci::Digest,
    /// Its tags now.
    pub tags: Vec<String>,
    /// The destinations it has not reached.
    pub destinations: Vec<ReplicationDestination>,
}

/// The images in `scope` not yet `COMPLETE` at a destination the rules name for them (platform
/// manifests travel with their index), and how many are complete everywhere already.
pub async fn pending_images(
    registry: &Registry,
    store: &ReplicationStore,
    config: &crate::replication::store::ReplicationConfiguration,
    scope: &BackfillScope,
) -> Result<(Vec<PendingImage>, usize), crate::registry::Error> {
    let mut out = Vec::new();
    let mut already = 0usize;
    for name in registry.repository_names().await? {
        if scope.repository_prefix.as_deref().is_some_and(|p| !name.as_str().starts_with(p)) {
            continue;
        }
        let wanted: Vec<ReplicationDestination> =
            config.destinations_for(&name).into_iter().filter(|d| scope.wants(d)).collect();
        if wanted.is_empty() {
            continue;
        }
        let images = registry.repository_images(&name).await?;
        let children: HashSet<_> = images.iter().flat_map(|i| i.children.iter().cloned()).collect();
        for image in images.iter().filter(|i| !children.contains(&i.digest)) {
            // Replicated only when the image and every tag it carries now arrived.
            let destinations = store.replication_pending(&name, &image.digest, &image.tags, &wanted).await?;
            if destinations.is_empty() {
                already = already.saturating_add(1);
                continue;
            }
            out.push(PendingImage {
                name: name.clone(),
                digest: image.digest.clone(),
                tags: image.tags.clone(),
                destinations,
            });
        }
    }
    Ok((out, already))
}

/// Queues the images in `scope` and copies them; `progress(done, total)` after each pass.
pub async fn backfill(
    registry: Arc<Registry>,
    store: Arc<ReplicationStore>,
    destinations: Arc<Destinations>,
    pace: Pace,
    metrics: Arc<Metrics>,
    scope: &BackfillScope,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BackfillReport, BackfillError> {
    let config = store.replication_configuration().await?;
    if config.rules.is_empty() {
        return Err(BackfillError::NotConfigured);
    }
    let mut report = BackfillReport::default();
    let (pending, already) = pending_images(&registry, &store, &config, scope).await?;
    report.images_already_replicated = already;
    let mut queued = Vec::new();
    for image in pending {
        let id = store
            .enqueue_replication(&image.name, &image.digest, image.tags.clone(), &image.destinations, None)
            .await?;
        queued.push((image.name, image.digest, image.destinations, id));
    }
    report.images_queued = queued.len();
    tracing::info!(images = queued.len(), already = report.images_already_replicated, "backfill queued");
    let worker = ReplicationWorker::new(
        registry.clone(),
        store.clone(),
        destinations,
        pace.clone(),
        format!("ferry-backfill-{}", uuid::Uuid::new_v4()),
        metrics,
    );
    let total = queued.len();
    loop {
        let mut left = 0usize;
        for (_, _, _, id) in &queued {
            if store.replication_event(id).await?.is_some() {
                left = left.saturating_add(1);
            }
        }
        let done = total.saturating_sub(left);
        progress(done, total);
        tracing::info!(done, total, "backfill progress");
        if left == 0 {
            break;
        }
        let (worked, _) = worker.pass().await?;
        if worked == 0 {
            // Waiting for a retry, or for another worker holding an event.
            tokio::time::sleep(pace.poll_interval).await;
        }
    }
    for (name, digest, pending, _) in &queued {
        for s in store.replication_status(name, digest).await? {
            if !pending.iter().any(|d| d.registry_id == s.registry_id && d.region == s.region) {
                continue;
            }
            match s.status {
                ReplicationState::Complete => report.complete = report.complete.saturating_add(1),
                ReplicationState::Failed => report.failed = report.failed.saturating_add(1),
                ReplicationState::InProgress => {}
            }
        }
    }
    Ok(report)
}

/// One round over the backfills started through the ECR API (`StartReplicationBackfill`),
/// under the `leases/replication-backfills` lease so one replica at a time moves them on:
/// a `PREPARING` one queues its images and turns `IN_PROGRESS`; an `IN_PROGRESS` one ends
/// `COMPLETE` once none of its events is left (judged from a view of the events that began
/// after it was prepared); a `STOPPING` one withdraws its queued events (copies under way
/// finish) and ends `STOPPED`. Terminal backfills are forgotten after 90 days.
/// Returns whether any backfill is still open.
pub async fn advance(worker: &ReplicationWorker) -> Result<bool, crate::worker::WorkerError> {
    let (registry, store) = (&worker.registry, &worker.store);
    let now = store.now_ms();
    let all = store.backfills().await?;
    for b in all.iter().filter(|b| b.ended_at_ms.is_some_and(|e| now.saturating_sub(e) > RETAINED_FOR_MS)) {
        store.forget_backfill(b).await?;
    }
    let open: Vec<Backfill> = all.into_iter().filter(|b| !b.status.is_terminal()).collect();
    if open.is_empty() {
        return Ok(false);
    }
    let storage = registry.storage_handle();
    let clock = registry.clock().clone();
    let key = crate::storage::Key::lease("replication-backfills");
    let lease = match Lease::acquire(storage.as_ref(), clock.as_ref(), key, &worker.owner, worker.pace.lease_ttl).await
    {
        Ok(l) => l,
        Err(LeaseError::Held { .. } | LeaseError::Lost) => return Ok(true),
        Err(LeaseError::Storage(e)) => return Err(e.into()),
    };
    for mut b in open {
        lease.check(storage.as_ref(), clock.as_ref()).await?;
        match b.status {
            BackfillStatus::Preparing => prepare(registry, store, &mut b).await?,
            BackfillStatus::InProgress => finish_if_done(worker, &mut b).await?,
            BackfillStatus::Stopping => stop(worker, &mut b).await?,
            _ => {}
        }
    }
    lease.release(storage.as_ref()).await?;
    Ok(true)
}

async fn prepare(
    registry: &Registry,
    store: &ReplicationStore,
    b: &mut Backfill,
) -> Result<(), crate::registry::Error> {
    let config = store.replication_configuration().await?;
    let configured = config.rules.iter().any(|r| r.destinations.contains(&b.destination));
    if !configured {
        b.failure_code = Some("DESTINATION_NOT_CONFIGURED: the replication configuration no longer names it".into());
        return Ok(store.end_backfill(b, BackfillStatus::Failed).await?);
    }
    let scope = BackfillScope {
        repository_prefix: None,
        destination: Some(format!("{}/{}", b.destination.registry_id, b.destination.region)),
    };
    let (pending, _) = pending_images(registry, store, &config, &scope).await?;
    for image in pending {
        store
            .enqueue_replication(&image.name, &image.digest, image.tags.clone(), &image.destinations, Some(&b.id))
            .await?;
        b.targets.push(BackfillTarget { repository: image.name.to_string(), digest: image.digest, tags: image.tags });
    }
    b.prepared_at_ms = Some(store.now_ms());
    if b.targets.is_empty() {
        return Ok(store.end_backfill(b, BackfillStatus::Complete).await?);
    }
    b.status = BackfillStatus::InProgress;
    store.put_backfill(b).await?;
    store.wake_replication();
    Ok(())
}

/// Its events still waiting, by this worker's view.
fn waiting(worker: &ReplicationWorker, id: &str) -> Vec<EventId> {
    let view = worker.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    view.iter().filter(|(_, seen)| seen.backfill.as_deref() == Some(id)).map(|(e, _)| e.clone()).collect()
}

async fn finish_if_done(worker: &ReplicationWorker, b: &mut Backfill) -> Result<(), crate::registry::Error> {
    let whole_since = worker.whole_view_since_ms.load(std::sync::atomic::Ordering::SeqCst);
    if b.prepared_at_ms.is_none_or(|at| whole_since <= at) || !waiting(worker, &b.id).is_empty() {
        return Ok(());
    }
    b.results = results(&worker.registry, &worker.store, b).await?;
    Ok(worker.store.end_backfill(b, BackfillStatus::Complete).await?)
}

async fn stop(worker: &ReplicationWorker, b: &mut Backfill) -> Result<(), crate::registry::Error> {
    let (registry, store) = (&worker.registry, &worker.store);
    for id in waiting(worker, &b.id) {
        if let Some((event, _)) = store.replication_event(&id).await? {
            if event.backfill.as_deref() == Some(b.id.as_str()) {
                store.delete_replication_event(&id).await?;
                // Withdrawn before it reached the destination: no longer in progress there.
                if let Ok(name) = crate::oci::RepositoryName::parse(&event.repository) {
                    let status = store.replication_status(&name, &event.digest).await?;
                    let withdrawn: Vec<_> = status
                        .into_iter()
                        .filter(|s| {
                            s.registry_id == b.destination.registry_id
                                && s.region == b.destination.region
                                && s.status == ReplicationState::InProgress
                        })
                        .map(|mut s| {
                            s.status = ReplicationState::Failed;
                            s.failure_code = Some(format!("BACKFILL_STOPPED: backfill {} was stopped", b.id));
                            s
                        })
                        .collect();
                    let tags: Vec<_> = event
                        .tags
                        .iter()
                        .flat_map(|t| {
                            withdrawn.iter().map(|s| crate::replication::store::TagStatusUpdate {
                                tag: t.clone(),
                                status: Some(s.clone()),
                            })
                        })
                        .collect();
                    store.set_replication_status(&name, &event.digest, &withdrawn, &tags).await?;
                }
            }
        }
    }
    b.results = results(registry, store, b).await?;
    Ok(store.end_backfill(b, BackfillStatus::Stopped).await?)
}

/// Each queued image's outcome at the backfill's destination (one per image and tag, as ECR
/// counts them; an untagged image once).
pub async fn results(
    registry: &Registry,
    store: &ReplicationStore,
    b: &Backfill,
) -> Result<Vec<BackfillResult>, crate::registry::Error> {
    let mut out = Vec::new();
    for t in &b.targets {
        let Ok(name) = crate::oci::RepositoryName::parse(&t.repository) else { continue };
        let status = store.replication_status(&name, &t.digest).await?;
        let Some(s) =
            status.into_iter().find(|s| s.registry_id == b.destination.registry_id && s.region == b.destination.region)
        else {
            continue;
        };
        if s.status == ReplicationState::InProgress {
            continue;
        }
        let tags: Vec<Option<String>> =
            if t.tags.is_empty() { vec![None] } else { t.tags.iter().cloned().map(Some).collect() };
        for tag in tags {
            // Each tag's own outcome where it has one (it may have failed where the image did not).
            let own = match &tag {
                Some(tag) => store
                    .replication_status_of(registry, &name, &t.digest, Some(tag))
                    .await?
                    .into_iter()
                    .find(|o| o.registry_id == b.destination.registry_id && o.region == b.destination.region),
                None => None,
            };
            let s = own.filter(|o| o.status != ReplicationState::InProgress).unwrap_or_else(|| s.clone());
            out.push(BackfillResult {
                target: BackfillTarget {
                    repository: t.repository.clone(),
                    digest: t.digest.clone(),
                    tags: tag.into_iter().collect(),
                },
                status: s.status,
                failure_code: s.failure_code.clone(),
            });
        }
    }
    Ok(out)
}
