//! The collector on a schedule: every `[gc] interval` (plus up to a tenth of it at random, so
//! replicas spread out), on the one replica that takes the `leases/gc` lease; the others
//! refresh their usage gauges from the record the last run left.

use super::{Collector, LEASE_TTL};
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::Key;
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use std::time::Duration;

/// Collects every `interval` under the lease.
pub struct GcWorker {
    collector: Collector,
    interval: Duration,
    owner: String,
    started: bool,
    last: String,
}

impl GcWorker {
    /// A worker run by `owner` (this replica's id).
    pub fn new(collector: Collector, interval: Duration, owner: String) -> Self {
        Self { collector, interval, owner, started: false, last: "not run yet".into() }
    }
}

#[async_trait]
impl Worker for GcWorker {
    fn name(&self) -> &'static str {
        "gc"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // At start-up only the gauges: a restart must not start a collection.
        if !std::mem::replace(&mut self.started, true) {
            if let Some(report) = self.collector.last_usage().await? {
                self.collector.publish(&report);
            }
            return Ok(WorkerState::Idle);
        }
        let storage = self.collector.storage.clone();
        let clock = self.collector.clock.clone();
        let metrics = self.collector.metrics.clone();
        let mut lease =
            match Lease::acquire(storage.as_ref(), clock.as_ref(), Key::lease("gc"), &self.owner, LEASE_TTL).await {
                Ok(lease) => lease,
                Err(LeaseError::Held { owner, .. }) => {
                    self.last = format!("{owner} holds the gc lease");
                    if let Some(m) = &metrics {
                        m.gc.runs.with_label_values(&["skipped"]).inc();
                    }
                    if let Some(report) = self.collector.last_usage().await? {
                        self.collector.publish(&report);
                    }
                    return Ok(WorkerState::Idle);
                }
                Err(e) => return Err(e.into()),
            };
        let result = self.collector.collect(false, Some(&mut lease), &|_| {}).await;
        let released = lease.release(storage.as_ref()).await;
        let result_label = if result.is_ok() { "done" } else { "error" };
        if let Some(m) = &metrics {
            m.gc.runs.with_label_values(&[result_label]).inc();
        }
        let report = result?;
        released?;
        tracing::info!(
            removed = report.objects_removed,
            bytes = report.bytes_removed,
            links = report.links_removed,
            scanned = report.objects_scanned,
            seconds = report.seconds,
            "garbage collected"
        );
        self.last = format!("removed {} objects ({} bytes)", report.objects_removed, report.bytes_removed);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(crate::clock::retry::jittered(self.interval)).await;
    }
}
