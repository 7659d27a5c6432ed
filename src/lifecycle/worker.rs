//! Lifecycle rounds: every repository's policy, then every pull-through rule's limits, under
//! the `leases/lifecycle` lease (renewed between repositories, checked before each one, so a
//! holder that paused past its lease stops before it expires anything). The worker runs a
//! round every `[lifecycle] interval` (plus up to a tenth at random); `ferry lifecycle run`
//! runs one by hand.

use super::evict::{evict, CacheLimits, EvictionReport};
use super::{run_repository, RepositoryRun, LEASE_TTL};
use crate::oci::RepositoryName;
use crate::registry::Registry;
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::Key;
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a round did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleReport {
    /// Whether it only looked.
    pub dry_run: bool,
    /// Repositories whose policy ran, with what it expired.
    pub repositories: Vec<RepositoryRun>,
    /// Pull-through rules whose limits ran.
    pub caches: Vec<EvictionReport>,
}

impl LifecycleReport {
    /// Images expired or evicted in all.
    pub fn images(&self) -> usize {
        self.repositories.iter().map(|r| r.expired.len()).chain(self.caches.iter().map(|c| c.evicted.len())).sum()
    }
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The registry or storage failed.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// The lease was lost: the round stops where it is.
    #[error("the lifecycle lease: {0}")]
    Lease(#[from] LeaseError),
}

/// One round: the policy of `only` (or of every repository, then every rule's cache limits).
/// With a lease, it is kept alive and checked before each repository.
pub async fn run_round(
    registry: &Registry,
    audit: &crate::events::Audit,
    limits: &[CacheLimits],
    only: Option<&RepositoryName>,
    dry_run: bool,
    mut lease: Option<&mut Lease>,
) -> Result<LifecycleReport, LifecycleError> {
    // This replica's own recent pulls count.
    if !dry_run {
        registry.pull_times().flush(registry.clock().now_ms(), true).await.map_err(crate::registry::Error::from)?;
    }
    let names = match only {
        Some(n) => vec![n.clone()],
        None => registry.repository_names().await?,
    };
    let mut report = LifecycleReport { dry_run, ..Default::default() };
    let mut renewed = Instant::now();
    for name in &names {
        keep(registry, &mut lease, &mut renewed).await?;
        if let Some(run) = run_repository(registry, audit, name, dry_run).await? {
            report.repositories.push(run);
        }
    }
    if only.is_none() {
        let names = registry.repository_names().await?;
        for rule in limits.iter().filter(|l| l.any()) {
            keep(registry, &mut lease, &mut renewed).await?;
            report.caches.push(evict(registry, audit, rule, &names, dry_run).await?);
        }
    }
    Ok(report)
}

/// Renews the lease when a third of it has passed, and checks it is still held.
async fn keep(registry: &Registry, lease: &mut Option<&mut Lease>, renewed: &mut Instant) -> Result<(), LeaseError> {
    let Some(lease) = lease.as_deref_mut() else { return Ok(()) };
    let storage = registry.storage_handle();
    if renewed.elapsed().saturating_mul(3) > LEASE_TTL {
        lease.renew(storage.as_ref(), registry.clock().as_ref()).await?;
        *renewed = Instant::now();
    }
    lease.check(storage.as_ref(), registry.clock().as_ref()).await
}

/// Runs a round every `interval` under the lease.
pub struct LifecycleWorker {
    registry: Arc<Registry>,
    /// Where expiries are recorded, as done by `ferry:lifecycle`.
    audit: Arc<crate::events::Audit>,
    limits: Vec<CacheLimits>,
    interval: Duration,
    owner: String,
    started: bool,
    last: String,
}

impl LifecycleWorker {
    /// A worker run by `owner` (this replica's id).
    pub fn new(
        registry: Arc<Registry>,
        audit: Arc<crate::events::Audit>,
        limits: Vec<CacheLimits>,
        interval: Duration,
        owner: String,
    ) -> Self {
        Self { registry, audit, limits, interval, owner, started: false, last: "not run yet".into() }
    }
}

#[async_trait]
impl Worker for LifecycleWorker {
    fn name(&self) -> &'static str {
        "lifecycle"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // A restart must not start a round: the first comes one interval in.
        if !std::mem::replace(&mut self.started, true) {
            return Ok(WorkerState::Idle);
        }
        let registry = self.registry.clone();
        let storage = registry.storage_handle();
        let metrics = registry.metrics().clone();
        let clock = registry.clock().clone();
        let mut lease =
            match Lease::acquire(storage.as_ref(), clock.as_ref(), Key::lease("lifecycle"), &self.owner, LEASE_TTL)
                .await
            {
                Ok(lease) => lease,
                Err(LeaseError::Held { owner, .. }) => {
                    self.last = format!("{owner} holds the lifecycle lease");
                    metrics.lifecycle.runs.with_label_values(&["skipped"]).inc();
                    return Ok(WorkerState::Idle);
                }
                Err(e) => return Err(e.into()),
            };
        let result = run_round(&registry, &self.audit, &self.limits, None, false, Some(&mut lease)).await;
        let released = lease.release(storage.as_ref()).await;
        metrics.lifecycle.runs.with_label_values(&[if result.is_ok() { "done" } else { "error" }]).inc();
        let report = result?;
        released?;
        metrics.lifecycle.last_success.set(clock.now_ms() as f64 / 1000.0);
        self.last = format!("expired {} images", report.images());
        tracing::info!(images = report.images(), repositories = report.repositories.len(), "lifecycle round done");
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(crate::clock::retry::jittered(self.interval)).await;
    }
}
