//! Replication workers: every replica of the source runs one. It lists the push events in
//! storage (oldest first), claims each due one with a lease of its own (a conditional write),
//! copies the image to the event's pending destinations while renewing the lease, and commits
//! the outcome only while it still holds the lease: `COMPLETE`, `FAILED` with a failure code
//! (refusals: credentials, registry policy, invalid), or a retry time (unreachable, 5xx, 429
//! with `Retry-After`) with exponential backoff and jitter. A worker that dies mid-copy leaves
//! the lease to lapse and another replica takes the event over. Owns the events' progress and
//! its metrics; never changes an image at the source.

pub mod backfill;
pub mod copy;
pub mod destination;
pub mod store;

use crate::config::ReplicationConfig;
use crate::metrics::Metrics;
use crate::oci::RepositoryName;
use crate::registry::Registry;
use crate::replication::store::{
    DestinationStatus, EventDestination, ReplicationEvent, ReplicationState, UNCOMMITTED_EVENT_TTL_MS,
};
use crate::storage::lease::{Lease, LeaseError};
use crate::storage::{EventId, Key};
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use destination::{CopyError, Destination};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events a worker reads for the first time in one pass; the rest wait for the next.
const EVENTS_PER_ROUND: usize = 1000;
/// Event records read at once.
const READS_AT_ONCE: usize = 16;
/// First retry delay; doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How often a worker moves open API backfills on.
const BACKFILL_EVERY_MS: u64 = 1000;
/// How often a worker looks for API backfills when none was open.
const BACKFILL_IDLE_EVERY_MS: u64 = 10_000;
/// Longest delay between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The destinations of the config, by `(registry id, region)`.
pub type Destinations = HashMap<(String, String), Arc<Destination>>;

/// Builds the destination clients of `[replication]` for the source `registry_id`.
pub fn destinations(config: &ReplicationConfig, registry_id: &str) -> Result<Destinations, crate::config::ConfigError> {
    config
        .destinations
        .iter()
        .map(|t| Ok(((t.registry_id.clone(), t.region.clone()), Arc::new(Destination::new(t, registry_id)?))))
        .collect()
}

/// How a worker paces itself.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Images copied at once.
    pub images_at_once: usize,
    /// Blobs of one image at once.
    pub blobs_at_once: usize,
    /// How often to look for other replicas' events.
    pub poll_interval: Duration,
    /// When to stop retrying a destination.
    pub give_up_after: Duration,
    /// How long an event's lease lasts unless renewed.
    pub lease_ttl: Duration,
}

impl Pace {
    /// From `[replication]`.
    pub fn from_config(c: &ReplicationConfig) -> Self {
        Self {
            images_at_once: c.images_at_once,
            blobs_at_once: c.blobs_at_once,
            poll_interval: c.poll_interval.0,
            give_up_after: c.give_up_after.0,
            lease_ttl: c.lease_ttl.0,
        }
    }
}

/// The replication worker of one replica.
pub struct ReplicationWorker {
    registry: Arc<Registry>,
    store: Arc<store::ReplicationStore>,
    destinations: Arc<Destinations>,
    owner: String,
    pace: Pace,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    last: String,
    /// What this worker last read of each event.
    view: std::sync::Mutex<HashMap<EventId, SeenEvent>>,
    /// The view holds every event recorded before this time (ms since the epoch).
    whole_view_since_ms: std::sync::atomic::AtomicU64,
    /// When the soonest event in the view waiting for a retry is due (ms since the epoch; 0:
    /// none), so an idle worker sleeps until then rather than polling.
    next_due_ms: std::sync::atomic::AtomicU64,
    /// When API backfills were last moved on.
    backfills_advanced_at_ms: u64,
    /// Whether one was open then.
    backfills_open: bool,
}

/// What a worker remembers of an event between passes.
#[derive(Debug, Clone)]
struct SeenEvent {
    /// When its earliest waiting destination is due (`None`: nothing waits).
    due_at_ms: Option<u64>,
    /// The destinations still waiting (labels).
    pending: Vec<String>,
    /// The image it copies (`None`: a record naming no valid repository).
    image: Option<(RepositoryName, crate::oci::Digest)>,
    /// The API backfill that queued it.
    backfill: Option<String>,
}

/// What one event's round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimed {
    /// Another replica holds it, or nothing was due.
    Skipped,
    /// Worked on (copied, retried or finished).
    Worked,
}

/// Delay before attempt `attempts + 1`: doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`],
/// half of it random (so replicas retrying one destination spread out), and never sooner
/// than the destination's `Retry-After`.
fn backoff(attempts: u32, retry_after: Option<Duration>) -> Duration {
    crate::clock::retry::backoff(attempts, FIRST_BACKOFF, MAX_BACKOFF).max(retry_after.unwrap_or(Duration::ZERO))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ReplicationWorker {
    /// A worker for `registry`, known to other replicas as `owner`.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<store::ReplicationStore>,
        destinations: Arc<Destinations>,
        pace: Pace,
        owner: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let wake = store.replication_wake();
        Self {
            registry,
            store,
            destinations,
            owner,
            pace,
            metrics,
            wake,
            last: "not run yet".into(),
            view: Default::default(),
            whole_view_since_ms: Default::default(),
            next_due_ms: Default::default(),
            backfills_advanced_at_ms: 0,
            backfills_open: false,
        }
    }

    /// One pass: list the events, read the ones this worker has not seen (at most
    /// [`EVENTS_PER_ROUND`] a pass), count what is pending, and work on the due ones. What an
    /// event holds changes only when a worker commits it, and this worker re-reads an event
    /// before working on it, so the view it keeps is safe to act on: a stale entry can only
    /// make it look at an event early, or late by at most that event's own retry delay. So an
    /// idle pass costs one listing, however many events wait for a destination that is down.
    /// Returns how many events were worked on and how many exist.
    pub async fn pass(&self) -> Result<(usize, usize), crate::registry::Error> {
        let listing_started_ms = self.registry.clock().now_ms();
        let ids = self.store.replication_events().await?;
        let remaining = ids.len();
        let (unseen, whole): (Vec<EventId>, bool) = {
            let mut view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let listed: std::collections::HashSet<&EventId> = ids.iter().collect();
            view.retain(|id, _| listed.contains(id));
            let unseen: Vec<EventId> = ids.iter().filter(|id| !view.contains_key(*id)).cloned().collect();
            let whole = unseen.len() <= EVENTS_PER_ROUND;
            (unseen.into_iter().take(EVENTS_PER_ROUND).collect(), whole)
        };
        let store = self.store.clone();
        let read: Vec<(EventId, Option<ReplicationEvent>)> = futures_util::stream::iter(unseen)
            .map(|id| {
                let store = store.clone();
                async move { store.replication_event(&id).await.map(|e| (id, e.map(|(event, _)| event))) }
            })
            .buffered(READS_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for (id, event) in read {
            self.remember(&id, event.as_ref());
        }
        if whole {
            // The view now holds every event that existed when this listing began.
            self.whole_view_since_ms.store(listing_started_ms, std::sync::atomic::Ordering::SeqCst);
        }
        let now = self.registry.clock().now_ms();
        let due: Vec<EventId> = {
            let view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.count_pending(&view, now);
            let mut due: Vec<EventId> = view
                .iter()
                .filter(|(_, e)| e.due_at_ms.is_some_and(|at| at <= now))
                .map(|(id, _)| id.clone())
                .collect();
            due.sort_unstable();
            let next = view.values().filter_map(|e| e.due_at_ms).filter(|at| *at > now).min().unwrap_or(0);
            self.next_due_ms.store(next, std::sync::atomic::Ordering::SeqCst);
            due
        };
        let worked = futures_util::stream::iter(due)
            .map(|id| async move { self.claim(&id).await })
            .buffer_unordered(self.pace.images_at_once)
            .collect::<Vec<_>>()
            .await;
        let mut count = 0usize;
        for r in worked {
            match r {
                Ok(Claimed::Worked) => count = count.saturating_add(1),
                Ok(Claimed::Skipped) => {}
                Err(e) => tracing::warn!(error = %e, "a replication event could not be worked on"),
            }
        }
        Ok((count, remaining))
    }

    /// Notes what an event holds now (`None`: it is gone).
    fn remember(&self, id: &EventId, event: Option<&ReplicationEvent>) {
        let mut view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Some(e) => {
                let waiting: Vec<&EventDestination> =
                    e.destinations.iter().filter(|d| d.status.status == ReplicationState::InProgress).collect();
                let seen = SeenEvent {
                    due_at_ms: waiting.iter().map(|d| d.next_attempt_at_ms).min(),
                    pending: waiting.iter().map(|d| d.status.label()).collect(),
                    image: RepositoryName::parse(&e.repository).ok().map(|n| (n, e.digest.clone())),
                    backfill: e.backfill.clone(),
                };
                view.insert(id.clone(), seen);
            }
            None => {
                view.remove(id);
            }
        }
    }

    /// Not yet committed by its push, or held by another replica: look again after a while.
    fn look_again_later(&self, id: &EventId) {
        let later = self.registry.clock().now_ms().saturating_add(millis(self.pace.poll_interval));
        let mut view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(seen) = view.get_mut(id) {
            seen.due_at_ms = seen.due_at_ms.map(|at| at.max(later));
        }
    }

    fn count_pending(&self, view: &HashMap<EventId, SeenEvent>, now: u64) {
        let m = &self.metrics.replication;
        m.pending.reset();
        m.oldest_pending.reset();
        let mut oldest: HashMap<&str, u64> = HashMap::new();
        for (id, seen) in view {
            for label in &seen.pending {
                m.pending.with_label_values(&[label]).inc();
                let at = oldest.entry(label).or_insert(u64::MAX);
                *at = (*at).min(id.recorded_at_ms());
            }
        }
        for (label, at) in oldest {
            #[allow(clippy::cast_precision_loss)] // ages in ms are far below 2^52
            let age = now.saturating_sub(at) as f64 / 1000.0;
            m.oldest_pending.with_label_values(&[label]).set(age);
        }
    }

    /// Takes the lease of the event's image, works on the event, and gives the lease back.
    async fn claim(&self, id: &EventId) -> Result<Claimed, WorkerError> {
        let storage = self.registry.storage_handle();
        let clock = self.registry.clock().clone();
        let image = {
            let view = self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            view.get(id).and_then(|seen| seen.image.clone())
        };
        let Some((name, digest)) = image else {
            tracing::warn!(event = %id, "a replication event names no valid repository; dropped");
            self.store.delete_replication_event(id).await?;
            self.remember(id, None);
            return Ok(Claimed::Worked);
        };
        let key = Key::replication_lease(&name, &digest);
        let lease = match Lease::acquire(storage.as_ref(), clock.as_ref(), key, &self.owner, self.pace.lease_ttl).await
        {
            Ok(l) => l,
            Err(LeaseError::Held { .. } | LeaseError::Lost) => {
                self.look_again_later(id);
                return Ok(Claimed::Skipped);
            }
            Err(LeaseError::Storage(e)) => return Err(e.into()),
        };
        let result = self.work_on(id, &name, lease).await;
        let now = self.store.replication_event(id).await?.map(|(e, _)| e);
        self.remember(id, now.as_ref());
        if result.as_ref().is_ok_and(|c| *c == Claimed::Skipped) {
            self.look_again_later(id);
        }
        result
    }

    async fn work_on(&self, id: &EventId, name: &RepositoryName, mut lease: Lease) -> Result<Claimed, WorkerError> {
        let storage = self.registry.storage_handle();
        let clock = self.registry.clock().clone();
        let Some((mut event, version)) = self.store.replication_event(id).await? else {
            lease.release(storage.as_ref()).await?;
            return Ok(Claimed::Skipped);
        };
        let now = clock.now_ms();
        if !self.registry.holds_manifest(name, &event.digest).await? {
            // The push that recorded it has not committed (yet, or ever).
            if now.saturating_sub(id.recorded_at_ms()) > UNCOMMITTED_EVENT_TTL_MS {
                self.store.delete_replication_event(id).await?;
            }
            lease.release(storage.as_ref()).await?;
            return Ok(Claimed::Skipped);
        }
        let due: Vec<usize> = (0..event.destinations.len())
            .filter(|&i| {
                event
                    .destinations
                    .get(i)
                    .is_some_and(|d| d.status.status == ReplicationState::InProgress && d.next_attempt_at_ms <= now)
            })
            .collect();
        if due.is_empty() {
            // Another replica moved its retries on since this one last read it.
            lease.release(storage.as_ref()).await?;
            return Ok(Claimed::Skipped);
        }
        let copies = futures_util::future::join_all(due.iter().map(|&i| {
            let d = event.destinations.get(i).map(|d| d.status.clone());
            let event = &event;
            async move {
                match d {
                    Some(d) => self.copy_to(name, event, &d).await,
                    None => Ok(copy::CopiedTags::default()),
                }
            }
        }));
        let outcomes = hold(storage.as_ref(), clock.as_ref(), &mut lease, self.pace.lease_ttl, copies).await?;
        let now = clock.now_ms();
        let mut changed = Vec::new();
        let mut tags = Vec::new();
        for (&i, outcome) in due.iter().zip(outcomes) {
            let Some(d) = event.destinations.get_mut(i) else { continue };
            let copied = match &outcome {
                Ok(copied) => Some(copied.clone()),
                Err(_) => None,
            };
            self.settle(id, d, outcome.map(|_| ()), now);
            tags.extend(tag_statuses(&event.tags, &d.status, copied.as_ref()));
            changed.push(d.status.clone());
        }
        let replicated: Vec<String> =
            changed.iter().filter(|s| s.status == ReplicationState::Complete).map(DestinationStatus::label).collect();
        // Committed only by the lease's holder: one that lost it leaves the event to the taker.
        lease.check(storage.as_ref(), clock.as_ref()).await?;
        self.store.set_replication_status(name, &event.digest, &changed, &tags).await?;
        if event.destinations.iter().all(|d| d.status.status != ReplicationState::InProgress) {
            self.store.delete_replication_event(id).await?;
            // The image's lease has nothing left to guard (another event of it takes a new one).
            lease.remove(storage.as_ref()).await?;
        } else {
            if self.store.update_replication_event(id, &event, version).await?.is_none() {
                tracing::warn!(event = %id, "a replication event changed under its lease; left for the next round");
            }
            lease.release(storage.as_ref()).await?;
        }
        // Counted once committed: a copy whose holder lost the lease is redone by the taker.
        for label in replicated {
            self.metrics.replication.images.with_label_values(&[&label]).inc();
        }
        Ok(Claimed::Worked)
    }

    /// Copies the event's image to one destination, timing and counting it.
    async fn copy_to(
        &self,
        name: &RepositoryName,
        event: &ReplicationEvent,
        d: &DestinationStatus,
    ) -> Result<copy::CopiedTags, CopyError> {
        let Some(destination) = self.destinations.get(&(d.registry_id.clone(), d.region.clone())) else {
            return Err(CopyError::Permanent {
                code: "DESTINATION_NOT_CONFIGURED",
                message: format!(
                    "no [[replication.destinations]] entry for registry {} in {}",
                    d.registry_id, d.region
                ),
            });
        };
        let started = Instant::now();
        let copy = copy::ImageCopy {
            registry: &self.registry,
            destination,
            blobs_at_once: self.pace.blobs_at_once,
            metrics: &self.metrics.replication,
        };
        let result = copy.copy(name, &event.digest, &event.tags).await;
        let label = d.label();
        self.metrics.replication.copy_duration.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
        result
    }

    /// Applies one attempt's outcome to a destination's progress.
    fn settle(&self, id: &EventId, d: &mut EventDestination, outcome: Result<(), CopyError>, now: u64) {
        let label = d.status.label();
        let m = &self.metrics.replication;
        match outcome {
            Ok(()) => {
                d.status.status = ReplicationState::Complete;
                d.status.failure_code = None;
                tracing::info!(event = %id, destination = %label, "image replicated");
            }
            Err(e) => {
                m.failures.with_label_values(&[&label, e.code()]).inc();
                let gave_up = now.saturating_sub(id.recorded_at_ms()) >= millis(self.pace.give_up_after);
                match e {
                    CopyError::Retry { retry_after, .. } if !gave_up => {
                        let wait = backoff(d.attempts, retry_after);
                        d.attempts = d.attempts.saturating_add(1);
                        d.next_attempt_at_ms = now.saturating_add(millis(wait));
                        tracing::info!(event = %id, destination = %label, failure = %e.failure_code(), retry_in_ms = millis(wait), "replication will be retried");
                    }
                    e => {
                        d.status.status = ReplicationState::Failed;
                        d.status.failure_code = Some(e.failure_code());
                        tracing::warn!(event = %id, destination = %label, failure = %e.failure_code(), "replication failed");
                    }
                }
            }
        }
    }
}

/// Runs `work` while renewing `lease` every third of its ttl; an error when the lease is lost
/// (the work is dropped, and its outcome never committed).
async fn hold<F: std::future::Future>(
    storage: &dyn crate::storage::Storage,
    clock: &dyn crate::clock::Clock,
    lease: &mut Lease,
    ttl: Duration,
    work: F,
) -> Result<F::Output, LeaseError> {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(ttl.checked_div(3).unwrap_or(ttl).max(Duration::from_millis(10)));
    renew.tick().await;
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = renew.tick() => lease.renew(storage, clock).await?,
        }
    }
}

#[async_trait]
impl Worker for ReplicationWorker {
    fn name(&self) -> &'static str {
        "replication"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // API backfills move on every second while one is open, at once when this replica
        // starts or stops one, and otherwise are looked for every ten seconds (each look lists
        // their records: an idle registry should not pay for that every second).
        let now = self.registry.clock().now_ms();
        let every = if self.backfills_open { BACKFILL_EVERY_MS } else { BACKFILL_IDLE_EVERY_MS };
        if self.store.take_backfill_poke() || now.saturating_sub(self.backfills_advanced_at_ms) >= every {
            self.backfills_open = backfill::advance(self).await?;
            self.backfills_advanced_at_ms = now;
        }
        let (worked, remaining) = self.pass().await?;
        self.last = format!("worked on {worked} of {remaining} events");
        Ok(if worked > 0 { WorkerState::Busy } else { WorkerState::Idle })
    }

    async fn wait_for_work(&mut self) {
        // Until the poll (for what other replicas recorded or left), the soonest retry this
        // view knows of, or the next backfill step, whichever comes first.
        let mut wait = crate::clock::retry::jittered(self.pace.poll_interval);
        if self.backfills_open {
            wait = wait.min(Duration::from_millis(BACKFILL_EVERY_MS));
        }
        let next = self.next_due_ms.load(std::sync::atomic::Ordering::SeqCst);
        if next > 0 {
            let until = next.saturating_sub(self.registry.clock().now_ms());
            wait = wait.min(Duration::from_millis(until).max(Duration::from_millis(50)));
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.wake.notified() => {}
        }
    }
}

/// Each of an event's tags at one destination after an attempt: where the image went, its
/// tags went too, but for those the destination refused (failed, with why) and those a later
/// push took over at the source (dropped); a failure or a retry is every tag's.
fn tag_statuses(
    tags: &[String],
    status: &DestinationStatus,
    copied: Option<&copy::CopiedTags>,
) -> Vec<crate::replication::store::TagStatusUpdate> {
    use crate::replication::store::TagStatusUpdate;
    tags.iter()
        .map(|tag| {
            let status = match copied {
                Some(c) if c.moved.contains(tag) => None,
                Some(c) if c.refused.contains(tag) => Some(DestinationStatus {
                    status: ReplicationState::Failed,
                    failure_code: Some(format!(
                        "{}: the destination keeps tag {tag} on another image; the image arrived without it",
                        crate::replication::store::TAG_IMMUTABLE
                    )),
                    ..status.clone()
                }),
                _ => Some(status.clone()),
            };
            TagStatusUpdate { tag: tag.clone(), status }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        for attempts in 0..20 {
            let full = FIRST_BACKOFF.saturating_mul(1 << attempts.min(16)).min(MAX_BACKOFF);
            let b = backoff(attempts, None);
            assert!(b >= full / 2 && b <= full, "attempt {attempts}: {b:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert_eq!(backoff(0, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }
}
