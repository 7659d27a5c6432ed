//! Background workers: the [`Worker`] trait every background job implements (the upload purge,
//! pull flushes, pull-through rule refreshes, garbage collection, lifecycle, replication and
//! webhook delivery) and the one runner that drives them, with backoff after errors, shutdown
//! and per-worker metrics. Jobs
//! that must run on one replica at a time take a [`crate::storage::lease::Lease`] in `work`.
//! Knows nothing of HTTP or of what the jobs do.

use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What a round of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is waiting: call `work` again at once.
    Busy,
    /// Nothing to do until `wait_for_work` returns.
    Idle,
    /// The worker has finished for good.
    Done,
}

impl WorkerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::Done => "done",
        }
    }
}

/// A failed round of work: logged, counted, and retried after a backoff.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// A background job.
#[async_trait]
pub trait Worker: Send + 'static {
    /// A stable name for logs and the `worker` metric label.
    fn name(&self) -> &'static str;
    /// What it is doing or last did, for logs.
    fn status(&self) -> String;
    /// Does one round of work. Dropped at shutdown, so it must leave storage consistent at
    /// any await point (every step idempotent, or committed in one write).
    async fn work(&mut self) -> Result<WorkerState, WorkerError>;
    /// Returns when there may be work again (after an interval, or on a signal).
    async fn wait_for_work(&mut self);
}

/// The first backoff after an error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait after repeated errors.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs `worker` until it is done or `shutdown` turns true: work while busy, wait while idle,
/// back off (doubling, up to a minute) after errors.
pub async fn run(mut worker: Box<dyn Worker>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let name = worker.name();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = tokio::select! {
            r = worker.work() => r,
            _ = shutdown.changed() => return,
        };
        let wait = match result {
            Ok(state) => {
                metrics.workers.runs.with_label_values(&[name, state.as_str()]).inc();
                metrics
                    .workers
                    .last_success
                    .with_label_values(&[name])
                    .set(crate::clock::millis_since_epoch(std::time::SystemTime::now()) as f64 / 1000.0);
                backoff = FIRST_BACKOFF;
                match state {
                    WorkerState::Busy => None,
                    WorkerState::Idle => Some(None),
                    WorkerState::Done => return,
                }
            }
            Err(e) => {
                metrics.workers.runs.with_label_values(&[name, "error"]).inc();
                tracing::warn!(worker = name, status = %worker.status(), error = %e, retry_in = ?backoff, "background work failed");
                let wait = backoff;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                Some(Some(wait))
            }
        };
        match wait {
            None => tokio::task::yield_now().await,
            Some(None) => tokio::select! {
                () = worker.wait_for_work() => {}
                _ = shutdown.changed() => return,
            },
            Some(Some(d)) => tokio::select! {
                () = tokio::time::sleep(d) => {}
                _ = shutdown.changed() => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails twice, then is busy once, idle once, and done.
    struct Script {
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl Worker for Script {
        fn name(&self) -> &'static str {
            "script"
        }
        fn status(&self) -> String {
            format!("call {}", self.calls.load(Ordering::SeqCst))
        }
        async fn work(&mut self) -> Result<WorkerState, WorkerError> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("not yet".into()),
                2 => Ok(WorkerState::Busy),
                3 => Ok(WorkerState::Idle),
                _ => Ok(WorkerState::Done),
            }
        }
        async fn wait_for_work(&mut self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_after_errors_and_stops_when_done() {
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let (_tx, rx) = watch::channel(false);
        let started = tokio::time::Instant::now();
        run(Box::new(Script { calls: calls.clone() }), metrics.clone(), rx).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Two backoffs: 200 ms, then 400 ms (virtual time).
        assert_eq!(started.elapsed(), Duration::from_millis(600));
        let runs = |r: &str| metrics.workers.runs.with_label_values(&["script", r]).get();
        assert_eq!((runs("error"), runs("busy"), runs("idle"), runs("done")), (2, 1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_shutdown_while_idle() {
        struct Idle;
        #[async_trait]
        impl Worker for Idle {
            fn name(&self) -> &'static str {
                "idle"
            }
            fn status(&self) -> String {
                String::new()
            }
            async fn work(&mut self) -> Result<WorkerState, WorkerError> {
                Ok(WorkerState::Idle)
            }
            async fn wait_for_work(&mut self) {
                tokio::time::sleep(Duration::from_secs(3600)).await
            }
        }
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(Box::new(Idle), metrics, rx));
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
