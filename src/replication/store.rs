//! Replication's records, all in storage so every replica reads the same and none holds the
//! only copy: the configuration (ECR's `PutReplicationConfiguration` / `DescribeRegistry`,
//! `replication/config`), the registry policy (`replication/registry-policy`), the durable push
//! events the workers copy (`replication/events/<id>`), each image's status per destination
//! and per tag (`repos/<name>/_replication/<digest>`), and the backfills ECR's API keeps
//! (`replication/backfills/<id>`, with one `replication/backfill-active/<region>` marker made by
//! a conditional write so two replicas cannot start two to one region). The store is one of the
//! registry's [`ImageEvents`] consumers: a client's push matching a rule records its event
//! before the push is acknowledged. Copying is [`super`]'s; this module never talks to a
//! destination.

use crate::clock::SharedClock;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::registry::outbox::{ImageAction, ImageEvent, ImageEvents, PushOrigin};
use crate::registry::Registry;
use crate::storage::{self, records, EventId, Key, PutMode, Storage, Version};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

type Result<T> = storage::Result<T>;

/// Replication's records.
pub struct ReplicationStore {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    /// Woken when a push records an event, so this replica's workers start at once.
    wake: Arc<tokio::sync::Notify>,
    /// Set when this replica starts or stops a backfill, so its worker looks at backfills now.
    backfill_poke: std::sync::atomic::AtomicBool,
}

impl ReplicationStore {
    /// The records in `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock) -> Self {
        Self { storage, clock, wake: Arc::default(), backfill_poke: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Now, by the injected clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// One destination: a region and a registry (account) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationDestination {
    /// `[0-9a-z-]{2,25}`.
    pub region: String,
    /// 12 digits.
    pub registry_id: String,
}

/// A `PREFIX_MATCH` repository filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryFilter {
    /// The repository name prefix.
    pub filter: String,
    /// Always `PREFIX_MATCH`.
    pub filter_type: String,
}

/// One rule: where, and for which repositories (none: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRule {
    /// The destinations.
    pub destinations: Vec<ReplicationDestination>,
    /// The filters (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repository_filters: Vec<RepositoryFilter>,
}

/// The configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationConfiguration {
    /// Up to 10 rules.
    pub rules: Vec<ReplicationRule>,
}

impl ReplicationStore {
    /// The registry policy's text, if one is set.
    pub async fn registry_policy(&self) -> Result<Option<String>> {
        Ok(self.storage.record_get(&Key::registry_policy()).await?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The registry policy, parsed (what a replicating registry's pushes are decided by).
    pub async fn registry_policy_parsed(&self) -> Result<Option<Arc<crate::auth::policy::Policy>>> {
        let Some(text) = self.registry_policy().await? else { return Ok(None) };
        let policy = crate::auth::policy::Policy::parse(&text, crate::auth::policy::PolicyKind::Resource)
            .map_err(|e| storage::Error::Corrupt(format!("the registry policy no longer parses: {e}")))?;
        Ok(Some(Arc::new(policy)))
    }

    /// Sets (or, with `None`, removes) the registry policy (already validated).
    pub async fn put_registry_policy(&self, text: Option<&str>) -> Result<()> {
        match text {
            Some(t) => self.storage.record_put(&Key::registry_policy(), Bytes::from(t.to_owned())).await?,
            None => {
                self.storage.record_delete(&Key::registry_policy()).await?;
            }
        }
        Ok(())
    }

    /// The stored replication configuration (no rules when none was put).
    pub async fn replication_configuration(&self) -> Result<ReplicationConfiguration> {
        match self.storage.record_get(&Key::replication_configuration()).await? {
            Some(bytes) => records::decode(&bytes),
            None => Ok(ReplicationConfiguration::default()),
        }
    }

    /// Replaces the replication configuration (already validated).
    pub async fn put_replication_configuration(&self, config: &ReplicationConfiguration) -> Result<()> {
        let bytes = records::encode(config)?;
        self.storage.record_put(&Key::replication_configuration(), bytes).await
    }
}

impl ReplicationConfiguration {
    /// The destinations a push to `name` goes to: every rule without filters, and every rule
    /// with a filter `name` starts with; each destination once, in rule order.
    pub fn destinations_for(&self, name: &RepositoryName) -> Vec<ReplicationDestination> {
        let mut out: Vec<ReplicationDestination> = Vec::new();
        for rule in &self.rules {
            let matches = rule.repository_filters.is_empty()
                || rule.repository_filters.iter().any(|f| name.as_str().starts_with(f.filter.as_str()));
            if matches {
                for d in &rule.destinations {
                    if !out.contains(d) {
                        out.push(d.clone());
                    }
                }
            }
        }
        out
    }
}

/// Where an image stands at one destination (ECR's `ReplicationStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicationState {
    /// Recorded, being copied or waiting to be retried.
    InProgress,
    /// At the destination.
    Complete,
    /// Refused for good (`failureCode` says why).
    Failed,
}

impl ReplicationState {
    /// ECR's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Complete => "COMPLETE",
            Self::Failed => "FAILED",
        }
    }
}

/// An image's status at one destination, as `DescribeImageReplicationStatus` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    /// The destination's region.
    pub region: String,
    /// The destination's registry id.
    pub registry_id: String,
    /// Where the image stands there.
    pub status: ReplicationState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
}

impl DestinationStatus {
    /// `<registry id>/<region>`, as the config's destinations are labelled.
    pub fn label(&self) -> String {
        format!("{}/{}", self.registry_id, self.region)
    }
}

/// One destination's progress inside an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDestination {
    /// Where it stands.
    #[serde(flatten)]
    pub status: DestinationStatus,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before this (ms since the epoch).
    #[serde(default)]
    pub next_attempt_at_ms: u64,
}

/// A push to replicate: recorded before the push is acknowledged, removed once every
/// destination is `COMPLETE` or `FAILED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationEvent {
    /// The repository (the same name at every destination).
    pub repository: String,
    /// The manifest pushed.
    pub digest: Digest,
    /// The tags it was pushed (or, by a backfill, found) with.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Each destination's progress.
    pub destinations: Vec<EventDestination>,
    /// The backfill that queued it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<String>,
}

/// How long an event whose manifest never appeared is kept: the push that recorded it failed
/// after recording it (the client saw an error and may retry, recording a new one).
pub const UNCOMMITTED_EVENT_TTL_MS: u64 = 10 * 60 * 1000;

/// An image's replication status: the manifest's at each destination, and each tag's (a tag
/// may fail to arrive, or never be sent, while the manifest is there under another tag).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StatusRecord {
    destinations: Vec<DestinationStatus>,
    /// By tag; `None` in records written before tags were tracked (their tags are taken to be
    /// where the image is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<std::collections::BTreeMap<String, Vec<DestinationStatus>>>,
}

/// What one attempt did to one tag at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagStatusUpdate {
    /// The tag.
    pub tag: String,
    /// Where it stands there now; `None`: the tag no longer names this image at the source,
    /// so its status here is dropped.
    pub status: Option<DestinationStatus>,
}

/// The start of the failure code of a tag the destination refused because it keeps that tag
/// immutable on another image: the image arrived without it, as in ECR, and sending it again
/// would change nothing.
pub const TAG_IMMUTABLE: &str = "TAG_IMMUTABLE";

/// Whether a tag's status is final as the destination decided it: arrived, or refused there
/// as immutable.
fn tag_settled(s: &DestinationStatus) -> bool {
    s.status == ReplicationState::Complete
        || (s.status == ReplicationState::Failed
            && s.failure_code.as_deref().is_some_and(|c| c.starts_with(TAG_IMMUTABLE)))
}

/// Sets `update` in `list`, by destination.
fn upsert(list: &mut Vec<DestinationStatus>, update: &DestinationStatus) {
    match list.iter_mut().find(|d| d.registry_id == update.registry_id && d.region == update.region) {
        Some(d) => *d = update.clone(),
        None => list.push(update.clone()),
    }
}

/// Whether `a` is further from done than `b` (failed, then in progress, then complete).
fn worse(a: ReplicationState, b: ReplicationState) -> bool {
    let rank = |s| match s {
        ReplicationState::Complete => 0,
        ReplicationState::InProgress => 1,
        ReplicationState::Failed => 2,
    };
    rank(a) > rank(b)
}

impl ReplicationStore {
    /// Wakes this replica's replication worker (a permit is kept if it is busy).
    pub fn wake_replication(&self) {
        self.wake.notify_one();
    }

    /// Writes an event for `destinations`, then marks them `IN_PROGRESS` in the image's status.
    pub async fn enqueue_replication(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        tags: Vec<String>,
        destinations: &[ReplicationDestination],
        backfill: Option<&str>,
    ) -> Result<EventId> {
        let now = self.clock.now_ms();
        let statuses: Vec<DestinationStatus> = destinations
            .iter()
            .map(|d| DestinationStatus {
                region: d.region.clone(),
                registry_id: d.registry_id.clone(),
                status: ReplicationState::InProgress,
                failure_code: None,
            })
            .collect();
        let event = ReplicationEvent {
            repository: name.to_string(),
            digest: digest.clone(),
            tags,
            destinations: statuses
                .iter()
                .map(|s| EventDestination { status: s.clone(), attempts: 0, next_attempt_at_ms: 0 })
                .collect(),
            backfill: backfill.map(str::to_owned),
        };
        let id = EventId::new(now);
        let tag_updates: Vec<TagStatusUpdate> = event
            .tags
            .iter()
            .flat_map(|t| statuses.iter().map(|s| TagStatusUpdate { tag: t.clone(), status: Some(s.clone()) }))
            .collect();
        self.storage.record_put(&Key::replication_event(&id), records::encode(&event)?).await?;
        self.set_replication_status(name, digest, &statuses, &tag_updates).await?;
        Ok(id)
    }

    /// What wakes the workers when this replica records an event.
    pub fn replication_wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The events waiting, oldest first (ids that are not events' are skipped).
    pub async fn replication_events(&self) -> Result<Vec<EventId>> {
        records::event_ids(self.storage.as_ref(), &Key::replication_events()).await
    }

    /// One event and its version, if it is still there.
    pub async fn replication_event(&self, id: &EventId) -> Result<Option<(ReplicationEvent, Version)>> {
        records::get_versioned(self.storage.as_ref(), &Key::replication_event(id)).await
    }

    /// Stores an event's progress if it has not changed since `version` (`None` when it has).
    pub async fn update_replication_event(
        &self,
        id: &EventId,
        event: &ReplicationEvent,
        version: Version,
    ) -> Result<Option<Version>> {
        records::put_if_unchanged(self.storage.as_ref(), &Key::replication_event(id), event, version).await
    }

    /// Removes a finished event.
    pub async fn delete_replication_event(&self, id: &EventId) -> Result<()> {
        self.storage.record_delete(&Key::replication_event(id)).await?;
        Ok(())
    }

    async fn status_record(&self, name: &RepositoryName, digest: &Digest) -> Result<StatusRecord> {
        match self.storage.record_get(&Key::replication_status(name, digest)).await? {
            Some(bytes) => records::decode::<StatusRecord>(&bytes),
            None => Ok(StatusRecord::default()),
        }
    }

    /// The manifest's status at each destination it was replicated to (none when it never
    /// was), whatever became of its tags.
    pub async fn replication_status(&self, name: &RepositoryName, digest: &Digest) -> Result<Vec<DestinationStatus>> {
        Ok(self.status_record(name, digest).await?.destinations)
    }

    /// Where the image stands at each destination for a user asking by `tag`: that tag's own
    /// status (none when it was never sent anywhere, though the image went under another tag).
    /// Asking by digest (`tag` `None`): per destination, the worst of the manifest's status and
    /// those of the tags that name it at the source now, so an image is `COMPLETE` only when
    /// everything it carries arrived; a tag the destination refused as immutable is the one
    /// exception (the image arrives untagged, as in ECR; asked by that tag, it is `FAILED`).
    pub async fn replication_status_of(
        &self,
        registry: &Registry,
        name: &RepositoryName,
        digest: &Digest,
        tag: Option<&str>,
    ) -> std::result::Result<Vec<DestinationStatus>, crate::registry::Error> {
        let record = self.status_record(name, digest).await?;
        let Some(tags) = record.tags else { return Ok(record.destinations) };
        if let Some(tag) = tag {
            return Ok(tags.get(tag).cloned().unwrap_or_default());
        }
        let mut out = record.destinations;
        for (tag, statuses) in &tags {
            if !tag_names(registry, name, tag, digest).await? {
                continue;
            }
            for s in statuses.iter().filter(|s| !tag_settled(s)) {
                match out.iter_mut().find(|d| d.registry_id == s.registry_id && d.region == s.region) {
                    Some(d) if worse(s.status, d.status) => {
                        *d = DestinationStatus {
                            failure_code: s.failure_code.clone().map(|c| format!("tag {tag}: {c}")),
                            ..s.clone()
                        };
                    }
                    Some(_) => {}
                    None => out.push(s.clone()),
                }
            }
        }
        Ok(out)
    }

    /// The destinations among `wanted` where the image, with every one of `tags` (its tags at
    /// the source now), is not yet complete: what a backfill still has to send.
    pub async fn replication_pending(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        tags: &[String],
        wanted: &[ReplicationDestination],
    ) -> Result<Vec<ReplicationDestination>> {
        let record = self.status_record(name, digest).await?;
        let complete = |list: &[DestinationStatus], d: &ReplicationDestination| {
            list.iter().any(|s| {
                s.registry_id == d.registry_id && s.region == d.region && s.status == ReplicationState::Complete
            })
        };
        Ok(wanted
            .iter()
            .filter(|d| {
                let image_done = complete(&record.destinations, d);
                let tags_done = match &record.tags {
                    None => true,
                    Some(by_tag) => tags.iter().all(|t| {
                        by_tag.get(t).is_some_and(|list| {
                            list.iter()
                                .any(|s| s.registry_id == d.registry_id && s.region == d.region && tag_settled(s))
                        })
                    }),
                };
                !(image_done && tags_done)
            })
            .cloned()
            .collect())
    }

    /// Sets the image's status at the destinations in `updates`, and its tags' in `tags`,
    /// keeping the others: a conditional update, so two replicas settling the same image at
    /// once (two events of one image, or a backfill beside a push) both land.
    pub async fn set_replication_status(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        updates: &[DestinationStatus],
        tags: &[TagStatusUpdate],
    ) -> Result<()> {
        let key = Key::replication_status(name, digest);
        let change = |record: &mut StatusRecord| -> std::result::Result<(), std::convert::Infallible> {
            for u in updates {
                upsert(&mut record.destinations, u);
            }
            let by_tag = record.tags.get_or_insert_with(Default::default);
            for t in tags {
                match &t.status {
                    Some(status) => upsert(by_tag.entry(t.tag.clone()).or_default(), status),
                    None => {
                        if let Some(list) = by_tag.get_mut(&t.tag) {
                            list.clear();
                        }
                    }
                }
            }
            by_tag.retain(|_, list| !list.is_empty());
            Ok(())
        };
        match records::update(self.storage.as_ref(), &key, change).await {
            Ok(_) => Ok(()),
            Err(records::UpdateError::Storage(e)) => Err(e),
            Err(records::UpdateError::Refused(never)) => match never {},
        }
    }
}

/// Whether `tag` names `digest` in `name` now.
async fn tag_names(
    registry: &Registry,
    name: &RepositoryName,
    tag: &str,
    digest: &Digest,
) -> std::result::Result<bool, crate::registry::Error> {
    use crate::registry::Error;
    let Ok(tag) = Tag::parse(tag) else { return Ok(false) };
    let local = crate::registry::Repo::Local(name.clone());
    match registry.manifest_record(&local, &crate::oci::Reference::Tag(tag)).await {
        Ok(r) => Ok(&r.digest == digest),
        Err(Error::ManifestUnknown(_) | Error::NameUnknown(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl ImageEvents for ReplicationStore {
    /// A push may be replicated; nothing needs looking up before a delete.
    fn wants(&self, action: ImageAction, _: &RepositoryName) -> bool {
        action == ImageAction::Push
    }

    /// A client's push matching a rule: its event, recorded after the manifest is validated and
    /// before anything of it is stored, so every push that is acknowledged has its event (a
    /// push that fails after this leaves an event whose manifest never appears, which the
    /// workers drop after [`UNCOMMITTED_EVENT_TTL_MS`]). A replicated push is not replicated on
    /// (no chaining). A manifest's delete takes its status with it (deletes are not replicated).
    async fn record(&self, event: &ImageEvent) -> Result<bool> {
        match (event.action, event.origin) {
            (ImageAction::Push, PushOrigin::Client) => {
                let destinations = self.replication_configuration().await?.destinations_for(&event.repository);
                if destinations.is_empty() {
                    return Ok(false);
                }
                let tags = event.tag.iter().cloned().collect();
                self.enqueue_replication(&event.repository, &event.digest, tags, &destinations, None).await?;
                Ok(true)
            }
            (ImageAction::Push, PushOrigin::Replication) => Ok(false),
            (ImageAction::Delete, _) => {
                if event.removes_manifest {
                    self.storage.record_delete(&Key::replication_status(&event.repository, &event.digest)).await?;
                }
                Ok(false)
            }
        }
    }

    /// Wakes the workers once the manifest is stored (not before: they would find it missing).
    fn committed(&self) {
        self.wake_replication();
    }
}

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

impl ReplicationStore {
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
            Some(bytes) => Ok(Some(records::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Stores a backfill's progress.
    pub async fn put_backfill(&self, backfill: &Backfill) -> Result<()> {
        let Ok(id) = uuid::Uuid::try_parse(&backfill.id) else { return Ok(()) };
        let bytes = records::encode(backfill)?;
        self.storage.record_put(&Key::replication_backfill(&id), bytes).await
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
            Err(crate::storage::Error::Conflict { .. }) => {
                let holder = self.storage.record_get(&marker).await?.map(|b| String::from_utf8_lossy(&b).into_owned());
                return Ok(Err(BackfillRefusal::InProgress(holder.unwrap_or_default())));
            }
            Err(e) => return Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(id: &str) -> ReplicationDestination {
        ReplicationDestination { region: "eu-west-1".into(), registry_id: id.into() }
    }

    #[test]
    fn rules_match_by_prefix_and_name_each_destination_once() {
        let filter = |f: &str| RepositoryFilter { filter: f.into(), filter_type: "PREFIX_MATCH".into() };
        let config = ReplicationConfiguration {
            rules: vec![
                ReplicationRule {
                    destinations: vec![dest("222222222222")],
                    repository_filters: vec![filter("team-a/")],
                },
                ReplicationRule {
                    destinations: vec![dest("333333333333"), dest("222222222222")],
                    repository_filters: vec![filter("team-b"), filter("team-a/app")],
                },
                ReplicationRule { destinations: vec![dest("444444444444")], repository_filters: vec![] },
            ],
        };
        let name = |n: &str| RepositoryName::parse(n).unwrap();
        let ids =
            |n: &str| -> Vec<String> { config.destinations_for(&name(n)).into_iter().map(|d| d.registry_id).collect() };
        assert_eq!(ids("team-a/app"), ["222222222222", "333333333333", "444444444444"]);
        assert_eq!(ids("team-a/other"), ["222222222222", "444444444444"]);
        assert_eq!(ids("team-bee/x"), ["333333333333", "222222222222", "444444444444"]);
        assert_eq!(ids("other"), ["444444444444"]);
        assert!(ReplicationConfiguration::default().destinations_for(&name("x")).is_empty());
    }

    /// Two replicas settling one image at once, each for its own destination and tag: both
    /// statuses are kept (an unconditional write would drop one).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_status_updates_all_land() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::memory::MemoryStorage::new());
        let store = Arc::new(ReplicationStore::new(storage, Arc::new(crate::clock::SystemClock)));
        let name = RepositoryName::parse("team/app").unwrap();
        let digest = Digest::sha256_of(b"m");
        let settle = (0..16).map(|i| {
            let (store, name, digest) = (store.clone(), name.clone(), digest.clone());
            tokio::spawn(async move {
                let status = DestinationStatus {
                    region: "eu-west-1".into(),
                    registry_id: format!("{i:012}"),
                    status: ReplicationState::Complete,
                    failure_code: None,
                };
                let tag = TagStatusUpdate { tag: format!("v{i}"), status: Some(status.clone()) };
                store.set_replication_status(&name, &digest, &[status], &[tag]).await
            })
        });
        for task in futures_util::future::join_all(settle).await {
            task.unwrap().unwrap();
        }
        let mut ids: Vec<String> =
            store.replication_status(&name, &digest).await.unwrap().into_iter().map(|d| d.registry_id).collect();
        ids.sort();
        assert_eq!(ids, (0..16).map(|i| format!("{i:012}")).collect::<Vec<_>>());
        let record = store.status_record(&name, &digest).await.unwrap();
        assert_eq!(record.tags.map(|t| t.len()), Some(16));
    }
}
