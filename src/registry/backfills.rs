//! Replication backfills as ECR's API keeps them (`StartReplicationBackfill` and its siblings):
//! one record per backfill (`replication/backfills/<id>`), and one marker per destination
//! region (`replication/backfill-active/<region>`, created with a conditional write) so two
//! replicas starting a backfill to one region at once cannot both succeed. Knows records only;
//! the work is [`crate::replication::backfill`]'s.

use super::replication::{ReplicationDestination, ReplicationState};
use super::{Registry, Result};
use crate::oci::Digest;
use crate::storage::{Key, PutMode};
use serde::{Deserialize, Serialize};

/// At most this many backfills in progress in a registry (ECR's limit).
pub const MAX_IN_PROGRESS: usize = 10;
/// Terminal backfills are kept this long, then forgotten (as in ECR).
pub const RETAINED_FOR_MS: u64 = 90 * 24 * 3600 * 1000;

/// A backfill's status (ECR's `ReplicationBackfillStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BackfillStatus {
    /// Accepted; the images are not listed yet.
    Preparing,
    /// Its images are queued and being copied.
    InProgress,
    /// Every queued image finished.
    Complete,
    /// It could not run (the destination left the configuration).
    Failed,
    /// Asked to stop; queued copies are being withdrawn.
    Stopping,
    /// Stopped.
    Stopped,
}

impl BackfillStatus {
    /// Whether it has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Stopped)
    }
}

/// One image a backfill queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillTarget {
    /// The repository.
    pub repository: String,
    /// The image.
    pub digest: Digest,
    /// Its tags when queued.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// How one image ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillResult {
    /// The image.
    #[serde(flatten)]
    pub target: BackfillTarget,
    /// `COMPLETE` or `FAILED`.
    pub status: ReplicationState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
}

/// A backfill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backfill {
    /// Its id (a UUID).
    pub id: String,
    /// Where to.
    pub destination: ReplicationDestination,
    /// Where it stands.
    pub status: BackfillStatus,
    /// When it was started (ms since the epoch).
    pub started_at_ms: u64,
    /// When its images were queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_at_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    /// The images it queued (once prepared).
    #[serde(default)]
    pub targets: Vec<BackfillTarget>,
    /// How each ended (once terminal).
    #[serde(default)]
    pub results: Vec<BackfillResult>,
}

/// Why a backfill could not start or stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillRefusal {
    /// One is in progress for that region already (its id).
    InProgress(String),
    /// Ten are in progress.
    Limit,
    /// No such backfill.
    NotFound,
    /// It has ended already (its status).
    Ended(BackfillStatus),
}

impl Registry {
    /// Wakes this replica's replication worker to look at backfills at once.
    pub fn poke_backfills(&self) {
        self.backfill_poke.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_replication();
    }

    /// Whether backfills were poked since the last call.
    pub fn take_backfill_poke(&self) -> bool {
        self.backfill_poke.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// Every backfill kept, newest first.
    pub async fn backfills(&self) -> Result<Vec<Backfill>> {
        let mut out = Vec::new();
        for id in self.storage.record_list(&Key::replication_backfills()).await? {
            let Ok(id) = uuid::Uuid::try_parse(&id) else { continue };
            if let Some(b) = self.backfill(&id).await? {
                out.push(b);
            }
        }
        out.sort_by(|a, b| b.started_at_ms.cmp(&a.started_at_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One backfill.
    pub async fn backfill(&self, id: &uuid::Uuid) -> Result<Option<Backfill>> {
        match self.storage.record_get(&Key::replication_backfill(id)).await? {
            Some(bytes) => Ok(Some(super::manifests::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores a backfill's progress.
    pub async fn put_backfill(&self, backfill: &Backfill) -> Result<()> {
        let Ok(id) = uuid::Uuid::try_parse(&backfill.id) else { return Ok(()) };
        let bytes = super::manifests::encode(backfill)?;
        Ok(self.storage.record_put(&Key::replication_backfill(&id), bytes).await?)
    }

    /// Starts a backfill to `destination` (already checked against the configuration): at
    /// most one per destination region and ten in all.
    pub async fn start_backfill(
        &self,
        destination: ReplicationDestination,
    ) -> Result<std::result::Result<Backfill, BackfillRefusal>> {
        let active = self.backfills().await?.into_iter().filter(|b| !b.status.is_terminal()).collect::<Vec<_>>();
        if let Some(b) = active.iter().find(|b| b.destination.region == destination.region) {
            return Ok(Err(BackfillRefusal::InProgress(b.id.clone())));
        }
        if active.len() >= MAX_IN_PROGRESS {
            return Ok(Err(BackfillRefusal::Limit));
        }
        let id = uuid::Uuid::new_v4();
        let marker = Key::replication_backfill_active(&destination.region);
        // Exactly one of two replicas starting one at once gets the region.
        match self.storage.record_put_if(&marker, bytes::Bytes::from(id.to_string()), PutMode::Create).await {
            Ok(_) => {}
            Err(crate::storage::Error::Conflict) => {
                let holder = self.storage.record_get(&marker).await?.map(|b| String::from_utf8_lossy(&b).into_owned());
                return Ok(Err(BackfillRefusal::InProgress(holder.unwrap_or_default())));
            }
            Err(e) => return Err(e.into()),
        }
        let backfill = Backfill {
            id: id.to_string(),
            destination,
            status: BackfillStatus::Preparing,
            started_at_ms: self.clock.now_ms(),
            prepared_at_ms: None,
            ended_at_ms: None,
            failure_code: None,
            targets: Vec::new(),
            results: Vec::new(),
        };
        self.put_backfill(&backfill).await?;
        self.poke_backfills();
        Ok(Ok(backfill))
    }

    /// Asks a backfill to stop.
    pub async fn stop_backfill(&self, id: &uuid::Uuid) -> Result<std::result::Result<Backfill, BackfillRefusal>> {
        let Some(mut backfill) = self.backfill(id).await? else { return Ok(Err(BackfillRefusal::NotFound)) };
        if backfill.status.is_terminal() || backfill.status == BackfillStatus::Stopping {
            return Ok(Err(BackfillRefusal::Ended(backfill.status)));
        }
        backfill.status = BackfillStatus::Stopping;
        self.put_backfill(&backfill).await?;
        self.poke_backfills();
        Ok(Ok(backfill))
    }

    /// Ends a backfill: stores it terminal and frees its region.
    pub async fn end_backfill(&self, backfill: &mut Backfill, status: BackfillStatus) -> Result<()> {
        backfill.status = status;
        backfill.ended_at_ms = Some(self.clock.now_ms());
        self.put_backfill(backfill).await?;
        let marker = Key::replication_backfill_active(&backfill.destination.region);
        if self.storage.record_get(&marker).await?.is_some_and(|b| b.as_ref() == backfill.id.as_bytes()) {
            self.storage.record_delete(&marker).await?;
        }
        Ok(())
    }

    /// Forgets a terminal backfill kept past its retention.
    pub async fn forget_backfill(&self, backfill: &Backfill) -> Result<()> {
        if let Ok(id) = uuid::Uuid::try_parse(&backfill.id) {
            self.storage.record_delete(&Key::replication_backfill(&id)).await?;
        }
        Ok(())
    }
}
