//! Lifecycle policy previews: the protocol and its record (`repos/<name>/_lifecycle-preview`).
//! A preview runs the same planner a lifecycle run does, with no side effects, within the
//! request. Its record says `IN_PROGRESS` while it runs and is written conditionally, so at
//! most one preview per repository is in progress across replicas (ECR's
//! `LifecyclePolicyPreviewInProgressException`); one left by a replica that died during it
//! counts as `FAILED` after [`PREVIEW_STALE_MS`]. The API's wire shapes are `api/lifecycle.rs`'s.

use super::{plan, Expiry, LifecyclePolicy};
use crate::clock::SharedClock;
use crate::oci::RepositoryName;
use crate::registry::{self, Registry};
use crate::storage::{self, records, Key, PutMode, Storage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A preview still `IN_PROGRESS` after this long was abandoned.
pub const PREVIEW_STALE_MS: u64 = 10 * 60 * 1000;

/// Where a preview stands (ECR's `LifecyclePolicyPreviewStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PreviewStatus {
    /// Running (on some replica).
    InProgress,
    /// Done: the results are what a run would expire.
    Complete,
    /// The planner failed, or the replica running it died.
    Failed,
}

impl PreviewStatus {
    /// ECR's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Complete => "COMPLETE",
            Self::Failed => "FAILED",
        }
    }
}

/// A repository's last preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Where it stands.
    pub status: PreviewStatus,
    /// The policy text it previewed.
    pub policy: String,
    /// When it started (ms since the epoch).
    pub started_at_ms: u64,
    /// What a run would expire (once complete).
    #[serde(default)]
    pub results: Vec<Expiry>,
}

/// Why a preview did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another preview of the repository is running.
    #[error("a lifecycle policy preview of {0} is in progress")]
    InProgress(RepositoryName),
    /// Reading or writing the record failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

impl From<storage::Error> for StartError {
    fn from(e: storage::Error) -> Self {
        Self::Registry(e.into())
    }
}

/// The preview records.
pub struct Previews {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
}

impl Previews {
    /// The previews kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock) -> Self {
        Self { storage, clock }
    }

    /// Previews `policy` (whose text is `text`) on `name` within the call, and records the
    /// outcome; `InProgress` when a live preview of the repository is running anywhere.
    pub async fn run(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        text: String,
        policy: &LifecyclePolicy,
    ) -> Result<PreviewStatus, StartError> {
        let key = Key::lifecycle_preview(name);
        let now_ms = self.clock.now_ms();
        let mode = match records::get_versioned::<Preview>(self.storage.as_ref(), &key).await {
            Ok(Some((last, _))) if self.resolved(&last, now_ms) == PreviewStatus::InProgress => {
                return Err(StartError::InProgress(name.clone()))
            }
            Ok(Some((_, version))) => PutMode::Update(version),
            Ok(None) => PutMode::Create,
            // A record this version cannot read is replaced, not a reason to refuse forever.
            Err(storage::Error::Corrupt(_)) => match self.storage.record_get_versioned(&key).await? {
                Some((_, version)) => PutMode::Update(version),
                None => PutMode::Create,
            },
            Err(e) => return Err(e.into()),
        };
        let running =
            Preview { status: PreviewStatus::InProgress, policy: text, started_at_ms: now_ms, results: vec![] };
        let version = match records::put_if(self.storage.as_ref(), &key, &running, mode).await {
            Ok(v) => v,
            Err(storage::Error::Conflict { .. }) => return Err(StartError::InProgress(name.clone())),
            Err(e) => return Err(e.into()),
        };
        let done = match plan(registry, name, policy, now_ms).await {
            Ok(results) => Preview { status: PreviewStatus::Complete, results, ..running },
            Err(e) => {
                tracing::warn!(repository = %name, error = %e, "lifecycle preview failed");
                Preview { status: PreviewStatus::Failed, ..running }
            }
        };
        records::put_if(self.storage.as_ref(), &key, &done, PutMode::Update(version)).await?;
        Ok(done.status)
    }

    /// The repository's last preview, `IN_PROGRESS` past [`PREVIEW_STALE_MS`] shown as
    /// `FAILED`; `None` when there is none (or none this version can read).
    pub async fn last(&self, name: &RepositoryName) -> registry::Result<Option<Preview>> {
        match records::get::<Preview>(self.storage.as_ref(), &Key::lifecycle_preview(name)).await {
            Ok(Some(mut preview)) => {
                preview.status = self.resolved(&preview, self.clock.now_ms());
                Ok(Some(preview))
            }
            Ok(None) | Err(storage::Error::Corrupt(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn resolved(&self, preview: &Preview, now_ms: u64) -> PreviewStatus {
        match preview.status {
            PreviewStatus::InProgress if now_ms.saturating_sub(preview.started_at_ms) >= PREVIEW_STALE_MS => {
                PreviewStatus::Failed
            }
            status => status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::registry::testing;
    use crate::storage::memory::MemoryStorage;
    use std::time::Duration;

    fn policy() -> (String, LifecyclePolicy) {
        let text = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#;
        (text.to_owned(), super::super::policy::parse(text).unwrap())
    }

    #[tokio::test]
    async fn one_preview_runs_at_a_time_and_an_abandoned_one_fails_after_a_while() {
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::with_clock(shared.clone()));
        let registry = testing::registry(storage.clone(), testing::settings(Duration::from_secs(60)), shared.clone());
        let previews = Previews::new(storage.clone(), shared);
        let name = RepositoryName::parse("team/app").unwrap();
        let (text, parsed) = policy();

        assert_eq!(previews.last(&name).await.unwrap(), None);
        let status = previews.run(&registry, &name, text.clone(), &parsed).await.unwrap();
        assert_eq!(status, PreviewStatus::Complete);
        assert_eq!(previews.last(&name).await.unwrap().map(|p| (p.status, p.policy)), Some((status, text.clone())));

        // A replica that died mid-preview left its record in progress: a start is refused...
        let abandoned = Preview {
            status: PreviewStatus::InProgress,
            policy: text.clone(),
            started_at_ms: clock.now_ms(),
            results: vec![],
        };
        records::put(storage.as_ref(), &Key::lifecycle_preview(&name), &abandoned).await.unwrap();
        assert!(matches!(previews.run(&registry, &name, text.clone(), &parsed).await, Err(StartError::InProgress(_))));
        // ...until it is stale: then it reads as failed, and a new one may start.
        clock.advance(Duration::from_millis(PREVIEW_STALE_MS));
        assert_eq!(previews.last(&name).await.unwrap().map(|p| p.status), Some(PreviewStatus::Failed));
        assert_eq!(previews.run(&registry, &name, text, &parsed).await.unwrap(), PreviewStatus::Complete);
    }
}
