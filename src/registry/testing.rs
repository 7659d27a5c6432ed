//! Test fixtures for the registry domain and what builds on it (the collector, lifecycle):
//! a registry over any store with a manual clock, request bodies, image manifests, and an
//! outbox consumer that keeps what it is given. Compiled only for tests.

use super::outbox::{ImageAction, ImageEvent, ImageEvents};
use super::{Registry, Settings};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName};
use crate::storage::{self, ByteStream, Storage};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The settings a test registry runs with: deletes on, create-on-push on, `gc_grace` as given.
pub fn settings(gc_grace: Duration) -> Settings {
    Settings {
        delete_enabled: true,
        upload_max_idle: Duration::from_secs(3600),
        local_namespaces: vec![],
        create_on_push: true,
        gc_grace,
    }
}

/// A registry over `storage`, with no pull-through rules.
pub fn registry(storage: Arc<dyn Storage>, settings: Settings, clock: SharedClock) -> Registry {
    let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics register"));
    let proxy = Arc::new(
        crate::proxy::Proxy::new(&[], &[], &crate::config::PullThroughApiConfig::default(), &metrics)
            .expect("no rules build"),
    );
    Registry::new(storage, proxy, settings, metrics, clock)
}

/// A request body of `bytes`, in one chunk.
pub fn body(bytes: &[u8]) -> ByteStream {
    let bytes = Bytes::copy_from_slice(bytes);
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

/// An OCI image manifest naming `config` (2 bytes) and `layer` (5 bytes); `n` makes each one
/// distinct.
pub fn image_manifest(config: &Digest, layer: &Digest, n: u32) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
            "annotations": {"n": n.to_string()},
        }))
        .expect("a manifest serializes"),
    )
}

/// An outbox consumer that keeps the events it is given, counts its wake-ups, and (with
/// `fail`) refuses to record, as a consumer whose store is down does.
#[derive(Default)]
pub struct KeptEvents {
    /// What it recorded, in order.
    pub events: Mutex<Vec<ImageEvent>>,
    /// How many times it was woken.
    pub woken: Mutex<usize>,
    /// Only this action, when set.
    pub only: Option<ImageAction>,
    /// Every record fails.
    pub fail: bool,
}

impl KeptEvents {
    /// What it recorded so far.
    pub fn events(&self) -> Vec<ImageEvent> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many times it was woken so far.
    pub fn woken(&self) -> usize {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ImageEvents for KeptEvents {
    fn wants(&self, action: ImageAction, _: &RepositoryName) -> bool {
        self.only.is_none_or(|a| a == action)
    }
    async fn record(&self, event: &ImageEvent) -> storage::Result<bool> {
        if !self.wants(event.action, &event.repository) {
            return Ok(false);
        }
        if self.fail {
            return Err(storage::Error::Io(std::io::Error::other("the consumer's store is down")));
        }
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event.clone());
        Ok(true)
    }
    fn committed(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
}
