//! `ferry replication backfill`: what ECR refuses to do, replicating images pushed before the
//! replication configuration existed. It queues an ordinary event for every image (a manifest
//! that is not a platform manifest of an index the repository also holds) whose status at a
//! destination is not `COMPLETE`, then works on them with a worker of its own beside the
//! servers' (the events' leases keep each copy to one worker) until none is left. An image
//! already `COMPLETE` at a destination is never queued again, so running it twice copies
//! nothing twice; one interrupted leaves its events for the servers' workers.

use super::{Destinations, Pace, ReplicationWorker};
use crate::metrics::Metrics;
use crate::registry::replication::{ReplicationDestination, ReplicationState};
use crate::registry::Registry;
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
}

/// Queues the images in `scope` and copies them; `progress(done, total)` after each pass.
pub async fn backfill(
    registry: Arc<Registry>,
    destinations: Arc<Destinations>,
    pace: Pace,
    metrics: Arc<Metrics>,
    scope: &BackfillScope,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<BackfillReport, BackfillError> {
    let config = registry.replication_configuration().await?;
    if config.rules.is_empty() {
        return Err(BackfillError::NotConfigured);
    }
    let mut report = BackfillReport::default();
    let mut queued: Vec<(crate::oci::RepositoryName, crate::oci::Digest, Vec<ReplicationDestination>, EventId)> =
        Vec::new();
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
        // Platform manifests travel with their index.
        let children: HashSet<_> = images.iter().flat_map(|i| i.children.iter().cloned()).collect();
        for image in images.iter().filter(|i| !children.contains(&i.digest)) {
            let done = registry.replication_status(&name, &image.digest).await?;
            let pending: Vec<ReplicationDestination> = wanted
                .iter()
                .filter(|d| {
                    !done.iter().any(|s| {
                        s.registry_id == d.registry_id && s.region == d.region && s.status == ReplicationState::Complete
                    })
                })
                .cloned()
                .collect();
            if pending.is_empty() {
                report.images_already_replicated = report.images_already_replicated.saturating_add(1);
                continue;
            }
            let id = registry.enqueue_replication(&name, &image.digest, image.tags.clone(), &pending).await?;
            queued.push((name.clone(), image.digest.clone(), pending, id));
        }
    }
    report.images_queued = queued.len();
    tracing::info!(images = queued.len(), already = report.images_already_replicated, "backfill queued");
    let worker = ReplicationWorker::new(
        registry.clone(),
        destinations,
        pace.clone(),
        format!("ferry-backfill-{}", uuid::Uuid::new_v4()),
        metrics,
    );
    let total = queued.len();
    loop {
        let mut left = 0usize;
        for (_, _, _, id) in &queued {
            if registry.replication_event(id).await?.is_some() {
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
        for s in registry.replication_status(name, digest).await? {
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
