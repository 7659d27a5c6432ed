//! Webhook events waiting for delivery: one record per receiver and event,
//! `webhooks/<receiver>/<event id>`, so every replica sees the same queue and none holds the
//! only copy. The queue is one of the registry's [`ImageEvents`] consumers: a push's event is
//! written before the push is acknowledged (and delivered only once its manifest is there: a
//! push that failed after recording it leaves an event that is dropped); a delete's once the
//! delete is done. Delivering is [`super::webhooks`]'s. Knows records and receivers' filters.

use crate::clock::SharedClock;
use crate::config::WebhookConfig;
use crate::oci::{Digest, RepositoryName};
use crate::registry::outbox::{ImageAction, ImageEvent, ImageEvents};
use crate::storage::{self, records, EventId, Key, Storage, Version};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One event for one receiver, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// `PUSH` or `DELETE` ([`ImageAction::as_str`]).
    pub action: String,
    /// The repository.
    pub repository: String,
    /// The image.
    pub digest: Digest,
    /// The tag pushed or deleted, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When it happened (ms since the epoch).
    pub recorded_at_ms: u64,
    /// Failed deliveries so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before this.
    #[serde(default)]
    pub next_attempt_at_ms: u64,
    /// A replica is delivering it until this (its claim, taken by a conditional write).
    #[serde(default)]
    pub claimed_until_ms: u64,
}

/// The receivers' queues.
pub struct WebhookQueue {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    receivers: Vec<WebhookConfig>,
    /// Woken when an event is recorded here, so this replica delivers it at once.
    wake: Arc<tokio::sync::Notify>,
}

impl WebhookQueue {
    /// The queues of `receivers` in `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock, receivers: Vec<WebhookConfig>) -> Self {
        Self { storage, clock, receivers, wake: Arc::default() }
    }

    /// What wakes the deliverers.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Now, by the injected clock (ms since the epoch).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The receiver's oldest events waiting, at most `limit`, and whether more wait: one
    /// listing page, however long the queue.
    pub async fn events(&self, receiver: &str, limit: usize) -> storage::Result<(Vec<EventId>, bool)> {
        records::oldest_event_ids(self.storage.as_ref(), &Key::webhook_events(receiver), limit).await
    }

    /// One event and its version, if it is still there.
    pub async fn event(&self, receiver: &str, id: &EventId) -> storage::Result<Option<(WebhookEvent, Version)>> {
        records::get_versioned(self.storage.as_ref(), &Key::webhook_event(receiver, id)).await
    }

    /// Stores an event's state if it has not changed since `version` (`None` when it has).
    pub async fn update(
        &self,
        receiver: &str,
        id: &EventId,
        event: &WebhookEvent,
        version: Version,
    ) -> storage::Result<Option<Version>> {
        records::put_if_unchanged(self.storage.as_ref(), &Key::webhook_event(receiver, id), event, version).await
    }

    /// Removes a delivered (or abandoned) event.
    pub async fn delete(&self, receiver: &str, id: &EventId) -> storage::Result<()> {
        self.storage.record_delete(&Key::webhook_event(receiver, id)).await?;
        Ok(())
    }
}

#[async_trait]
impl ImageEvents for WebhookQueue {
    fn wants(&self, action: ImageAction, repository: &RepositoryName) -> bool {
        self.receivers.iter().any(|h| h.wants(action.as_str(), repository.as_str()))
    }

    /// One event per receiver that wants it (a replicated push too: it is news here).
    async fn record(&self, event: &ImageEvent) -> storage::Result<bool> {
        let now = self.clock.now_ms();
        let mut any = false;
        for hook in self.receivers.iter().filter(|h| h.wants(event.action.as_str(), event.repository.as_str())) {
            let queued = WebhookEvent {
                action: event.action.as_str().to_owned(),
                repository: event.repository.to_string(),
                digest: event.digest.clone(),
                tag: event.tag.clone(),
                recorded_at_ms: now,
                attempts: 0,
                next_attempt_at_ms: 0,
                claimed_until_ms: 0,
            };
            records::put(self.storage.as_ref(), &Key::webhook_event(&hook.name, &EventId::new(now)), &queued).await?;
            any = true;
        }
        Ok(any)
    }

    fn committed(&self) {
        self.wake.notify_one();
    }
}
