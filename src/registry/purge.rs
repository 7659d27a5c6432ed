//! The upload purge as a background worker: every interval, on one replica at a time (the one
//! holding the `leases/upload-purge` lease), abandoned upload sessions are removed and the
//! image index's journal is replayed (tag moves a crash left unfinished). Owns the schedule and
//! the lease; the work itself is `Registry::purge_uploads` and `Registry::replay_index_journal`.

use super::Registry;
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::{Key, UploadId};
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Told which sessions still exist after each purge (the HTTP edge forgets the others).
pub type OnPurged = Box<dyn Fn(&HashSet<UploadId>) + Send + Sync>;

/// How long the purge lease lasts: a purge pass takes far less, and a replica that dies
/// during one keeps the others from purging for at most this long.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Purges abandoned upload sessions every `interval`, under a lease taken for each pass and
/// released after it, so no two replicas purge at once.
pub struct UploadPurge {
    registry: Arc<Registry>,
    interval: Duration,
    owner: String,
    on_purged: OnPurged,
    last: String,
}

impl UploadPurge {
    /// A purge run by `owner` (this replica's id) every `interval`.
    pub fn new(registry: Arc<Registry>, interval: Duration, owner: String, on_purged: OnPurged) -> Self {
        Self { registry, interval, owner, on_purged, last: "not run yet".into() }
    }

    /// One pass under the lease; `None` when another replica holds it.
    async fn pass(&self) -> Result<Option<(usize, u64)>, WorkerError> {
        let storage = self.registry.storage.as_ref();
        let clock = self.registry.clock.as_ref();
        let lease = match Lease::acquire(storage, clock, Key::lease("upload-purge"), &self.owner, LEASE_TTL).await {
            Ok(lease) => lease,
            Err(LeaseError::Held { .. } | LeaseError::Lost) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Checked before committing work: a holder that paused past its lease stops here.
        lease.check(storage, clock).await?;
        let purged = self.registry.purge_uploads().await;
        let replayed = self.registry.replay_index_journal().await;
        if let Ok(n @ 1..) = replayed {
            tracing::info!(moves = n, "finished the image index of tag moves a crash had left");
        }
        let generation = lease.generation();
        lease.release(storage).await?;
        replayed?;
        Ok(Some((purged?, generation)))
    }
}

#[async_trait]
impl Worker for UploadPurge {
    fn name(&self) -> &'static str {
        "upload_purge"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        self.last = match self.pass().await? {
            Some((purged, generation)) => {
                if purged > 0 {
                    tracing::info!(purged, "purged abandoned upload sessions");
                }
                format!("purged {purged} sessions under lease generation {generation}")
            }
            None => "another replica holds the purge lease".into(),
        };
        let open = self.registry.upload_ids().await?;
        (self.on_purged)(&open);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }
}
