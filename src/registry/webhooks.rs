//! Webhook events waiting for delivery: one record per receiver and event,
//! `webhooks/<receiver>/<event id>`, so every replica sees the same queue and none holds the
//! only copy. A push's event is written before the push is acknowledged (and delivered only
//! once its manifest is there: a push that failed after recording it leaves an event that is
//! dropped); a delete's once the delete is done. Delivering is [`crate::events::webhooks`]'s.

use super::{Registry, Result};
use crate::oci::{Digest, RepositoryName};
use crate::storage::{EventId, Key, Version};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One event for one receiver, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// `PUSH` or `DELETE`.
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

impl Registry {
    /// Records `action` on the image for every receiver that wants it; returns whether any
    /// does. The caller wakes the deliverers once what it reports is stored
    /// ([`Self::wake_webhooks`]).
    pub async fn record_webhook_events(
        &self,
        action: &str,
        name: &RepositoryName,
        digest: &Digest,
        tag: Option<&str>,
    ) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut any = false;
        for hook in self.settings.webhooks.iter().filter(|h| h.wants(action, name.as_str())) {
            let event = WebhookEvent {
                action: action.to_owned(),
                repository: name.to_string(),
                digest: digest.clone(),
                tag: tag.map(str::to_owned),
                recorded_at_ms: now,
                attempts: 0,
                next_attempt_at_ms: 0,
                claimed_until_ms: 0,
            };
            let key = Key::webhook_event(&hook.name, &EventId::new(now));
            self.storage.record_put(&key, super::manifests::encode(&event)?).await?;
            any = true;
        }
        Ok(any)
    }

    /// Whether any receiver wants `action` on `name` (so the caller knows to look up what it
    /// would report).
    pub fn webhooks_want(&self, action: &str, name: &RepositoryName) -> bool {
        self.settings.webhooks.iter().any(|h| h.wants(action, name.as_str()))
    }

    /// Wakes this replica's deliverers.
    pub fn wake_webhooks(&self) {
        self.webhook_wake.notify_one();
    }

    /// What wakes the deliverers.
    pub fn webhook_wake(&self) -> Arc<tokio::sync::Notify> {
        self.webhook_wake.clone()
    }

    /// The receiver's events waiting, oldest first.
    pub async fn webhook_events(&self, receiver: &str) -> Result<Vec<EventId>> {
        self.queued_ids(&Key::webhook_events(receiver)).await
    }

    /// One event and its version, if it is still there.
    pub async fn webhook_event(&self, receiver: &str, id: &EventId) -> Result<Option<(WebhookEvent, Version)>> {
        self.queued_get(&Key::webhook_event(receiver, id)).await
    }

    /// Stores an event's state if it has not changed since `version` (`None` when it has).
    pub async fn update_webhook_event(
        &self,
        receiver: &str,
        id: &EventId,
        event: &WebhookEvent,
        version: Version,
    ) -> Result<Option<Version>> {
        self.queued_update(&Key::webhook_event(receiver, id), event, version).await
    }

    /// Removes a delivered (or abandoned) event.
    pub async fn delete_webhook_event(&self, receiver: &str, id: &EventId) -> Result<()> {
        self.storage.record_delete(&Key::webhook_event(receiver, id)).await?;
        Ok(())
    }

    /// The ids of the events listed under `prefix`, oldest first (other names are skipped).
    pub(super) async fn queued_ids(&self, prefix: &Key) -> Result<Vec<EventId>> {
        Ok(crate::storage::records::event_ids(self.storage.as_ref(), prefix).await?)
    }

    /// A queued event and its version.
    pub(super) async fn queued_get<T: serde::de::DeserializeOwned>(&self, key: &Key) -> Result<Option<(T, Version)>> {
        Ok(crate::storage::records::get_versioned(self.storage.as_ref(), key).await?)
    }

    /// Writes a queued event if it is still at `version`.
    pub(super) async fn queued_update<T: Serialize>(
        &self,
        key: &Key,
        event: &T,
        version: Version,
    ) -> Result<Option<Version>> {
        Ok(crate::storage::records::put_if_unchanged(self.storage.as_ref(), key, event, version).await?)
    }
}
