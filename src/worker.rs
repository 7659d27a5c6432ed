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

/// What one worker did last, as the console and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerInfo {
    /// What it says it is doing or last did.
    pub status: String,
    /// How its last round ended (`busy`, `idle`, `done`, `error`; empty before its first).
    pub last_result: &'static str,
    /// When its last round ended (ms since the epoch; 0: never).
    pub last_run_ms: u64,
    /// When a round last ended without error (ms since the epoch; 0: never).
    pub last_success_ms: u64,
    /// Its last error, if its last round failed.
    pub last_error: Option<String>,
    /// Rounds failed in a row.
    pub consecutive_errors: u32,
}

/// Every worker this process runs and what each did last: one table, shared by the runner
/// (which writes it) and the console (which shows it).
#[derive(Clone, Default)]
pub struct Workers(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, WorkerInfo>>>);

impl Workers {
    /// Each worker's row, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, WorkerInfo)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, i)| (*n, i.clone())).collect()
    }

    fn update(&self, name: &'static str, change: impl FnOnce(&mut WorkerInfo)) {
        change(self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_default());
    }
}

/// Runs workers: one table, one set of metrics, one clock, one shutdown signal.
#[derive(Clone)]
pub struct Runner {
    /// The metrics every worker's rounds count in.
    pub metrics: Arc<Metrics>,
    /// The table of workers.
    pub workers: Workers,
    /// The clock their times are read from.
    pub clock: crate::clock::SharedClock,
    /// Turns true at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Runner {
    /// Runs `worker` in a task of its own (see [`run`]).
    pub fn spawn(&self, worker: Box<dyn Worker>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(worker, self.clone()))
    }
}

/// Runs `worker` until it is done or `shutdown` turns true: work while busy, wait while idle,
/// back off (doubling, up to a minute) after errors; each round recorded in the table and the
/// metrics.
pub async fn run(mut worker: Box<dyn Worker>, runner: Runner) {
    let Runner { metrics, workers, clock, mut shutdown } = runner;
    let name = worker.name();
    workers.update(name, |i| i.status = worker.status());
    metrics.workers.consecutive_errors.with_label_values(&[name]).set(0);
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = tokio::select! {
            r = worker.work() => r,
            _ = shutdown.changed() => return,
        };
        let now = clock.now_ms();
        let status = worker.status();
        let wait = match result {
            Ok(state) => {
                metrics.workers.runs.with_label_values(&[name, state.as_str()]).inc();
                #[allow(clippy::cast_precision_loss)] // ms since the epoch are far below 2^52
                metrics.workers.last_success.with_label_values(&[name]).set(now as f64 / 1000.0);
                metrics.workers.consecutive_errors.with_label_values(&[name]).set(0);
                workers.update(name, |i| {
                    *i = WorkerInfo {
                        status,
                        last_result: state.as_str(),
                        last_run_ms: now,
                        last_success_ms: now,
                        last_error: None,
                        consecutive_errors: 0,
                    };
                });
                backoff = FIRST_BACKOFF;
                match state {
                    WorkerState::Busy => None,
                    WorkerState::Idle => Some(None),
                    WorkerState::Done => return,
                }
            }
            Err(e) => {
                metrics.workers.runs.with_label_values(&[name, "error"]).inc();
                tracing::warn!(worker = name, status = %status, error = %e, retry_in = ?backoff, "background work failed");
                let mut errors = 0;
                workers.update(name, |i| {
                    i.consecutive_errors = i.consecutive_errors.saturating_add(1);
                    errors = i.consecutive_errors;
                    i.status = status;
                    i.last_result = "error";
                    i.last_run_ms = now;
                    i.last_error = Some(e.to_string());
                });
                metrics.workers.consecutive_errors.with_label_values(&[name]).set(i64::from(errors));
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
        let clock = crate::clock::ManualClock::new();
        let workers = Workers::default();
        let runner =
            Runner { metrics: metrics.clone(), workers: workers.clone(), clock: Arc::new(clock.clone()), shutdown: rx };
        run(Box::new(Script { calls: calls.clone() }), runner).await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // The table says how it last ended: done, after two errors that no longer count.
        let rows = workers.snapshot();
        assert_eq!(rows.len(), 1);
        let (name, info) = &rows[0];
        assert_eq!(
            (*name, info.last_result, info.consecutive_errors, info.last_error.as_ref()),
            ("script", "done", 0, None)
        );
        assert_eq!(metrics.workers.consecutive_errors.with_label_values(&["script"]).get(), 0);
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
        let runner =
            Runner { metrics, workers: Workers::default(), clock: Arc::new(crate::clock::SystemClock), shutdown: rx };
        let task = runner.spawn(Box::new(Idle));
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
