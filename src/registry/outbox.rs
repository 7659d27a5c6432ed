//! The outbox: what the registry tells the rest of Ferry about images, without naming who
//! listens. A push or a delete is one [`ImageEvent`], handed to every injected [`ImageEvents`]
//! consumer (replication, webhooks). A push's event is made durable by each consumer *before*
//! anything of the push is stored, so a push that is acknowledged always has its events; the
//! consumers are woken once the push is stored. Owns no records; knows no consumer.

use crate::oci::{Digest, RepositoryName};
use crate::storage;
use async_trait::async_trait;
use std::sync::Arc;

/// What happened to an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAction {
    /// A manifest was pushed (under a tag, or by digest).
    Push,
    /// A tag, or a manifest with its tags, was deleted.
    Delete,
}

impl ImageAction {
    /// ECR's name for it (`PUSH`, `DELETE`), as webhook receivers and configs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "PUSH",
            Self::Delete => "DELETE",
        }
    }
}

/// Who pushed a manifest: a client (replicated to the destinations the replication
/// configuration names), or another registry's replication (never replicated on: no chaining).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOrigin {
    /// A client's push.
    Client,
    /// A replication from another registry.
    Replication,
}

/// One push or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEvent {
    /// Push or delete.
    pub action: ImageAction,
    /// The repository.
    pub repository: RepositoryName,
    /// The manifest.
    pub digest: Digest,
    /// The tag pushed or deleted, if one was.
    pub tag: Option<String>,
    /// Who pushed it (for a delete: [`PushOrigin::Client`]).
    pub origin: PushOrigin,
    /// For a delete: whether the manifest itself left the repository (by digest, or with its
    /// last tag), not just a tag.
    pub removes_manifest: bool,
}

/// A consumer of image events (replication, webhooks).
#[async_trait]
pub trait ImageEvents: Send + Sync {
    /// Whether it would record `action` on `repository` (so the registry knows whether to look
    /// up what a delete removes before removing it).
    fn wants(&self, action: ImageAction, repository: &RepositoryName) -> bool;
    /// Makes the event durable if this consumer wants it; returns whether it recorded one.
    async fn record(&self, event: &ImageEvent) -> storage::Result<bool>;
    /// Called once what a recorded event reports is stored: wake whatever acts on it.
    fn committed(&self);
}

/// Every consumer, in the order they were given.
#[derive(Clone, Default)]
pub struct Outbox {
    consumers: Vec<Arc<dyn ImageEvents>>,
}

/// What [`Outbox::record`] recorded, to pass to [`Outbox::committed`].
#[must_use]
pub struct Recorded(Vec<Arc<dyn ImageEvents>>);

impl Outbox {
    /// An outbox handing events to `consumers`.
    pub fn new(consumers: Vec<Arc<dyn ImageEvents>>) -> Self {
        Self { consumers }
    }

    /// Whether any consumer wants `action` on `repository`.
    pub fn wants(&self, action: ImageAction, repository: &RepositoryName) -> bool {
        self.consumers.iter().any(|c| c.wants(action, repository))
    }

    /// Records `event` with every consumer that wants it.
    pub async fn record(&self, event: &ImageEvent) -> storage::Result<Recorded> {
        let mut recorded = Vec::new();
        for c in &self.consumers {
            if c.record(event).await? {
                recorded.push(c.clone());
            }
        }
        Ok(Recorded(recorded))
    }

    /// Wakes the consumers that recorded an event, once what it reports is stored.
    pub fn committed(&self, recorded: Recorded) {
        for c in recorded.0 {
            c.committed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::testing::KeptEvents;

    #[tokio::test]
    async fn events_reach_the_consumers_that_want_them_and_wake_only_those() {
        let all = Arc::new(KeptEvents::default());
        let deletes = Arc::new(KeptEvents { only: Some(ImageAction::Delete), ..KeptEvents::default() });
        let outbox = Outbox::new(vec![all.clone(), deletes.clone()]);
        let name = RepositoryName::parse("team/app").unwrap();
        let event = ImageEvent {
            action: ImageAction::Push,
            repository: name.clone(),
            digest: Digest::sha256_of(b"m"),
            tag: Some("v1".into()),
            origin: PushOrigin::Client,
            removes_manifest: false,
        };
        assert!(outbox.wants(ImageAction::Push, &name));
        let recorded = outbox.record(&event).await.unwrap();
        outbox.committed(recorded);
        assert_eq!(all.events(), [event]);
        assert!(deletes.events().is_empty());
        assert_eq!((all.woken(), deletes.woken()), (1, 0));
    }
}
