//! When each image was last pulled (`lastRecordedPullTime`, what lifecycle's `sinceImagePulled`
//! and cache eviction read), recorded without a storage write on the request path: a pull
//! notes the time in memory, and a flush (every minute, from the worker) writes each image's
//! record at most once an hour per replica, so a hot image costs one small write an hour, not
//! one per pull. The record (`repos/<name>/_pulls/sha256/<hex>`) survives restarts; what a
//! replica noted and had not flushed when it died is lost, which only makes the recorded time
//! up to an hour older (ECR's own is coarser, about a day). Memory is bounded: past
//! [`MAX_PENDING`] images, further pulls are not noted until the next flush.
//!
//! An indexed link keeps the time itself (`last_pulled_ms`, written by a conditional update so
//! a tag move racing the flush is not undone), so listings and lifecycle read one record per
//! image; the separate record serves only links the index has not reached yet.

use super::manifests::{decode, encode, ManifestRecord};
use crate::oci::{Digest, RepositoryName};
use crate::storage::{self, Key, Storage};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One write per image per this long, per replica.
pub const WRITE_EVERY_MS: u64 = 3_600_000;

/// Conditional updates of one link a flush tries before giving up on that image.
const LINK_UPDATE_ROUNDS: usize = 8;

/// Images whose pulls are held in memory at most.
pub const MAX_PENDING: usize = 100_000;

type Image = (RepositoryName, Digest);

#[derive(Default)]
struct State {
    /// The latest pull not yet written, per image.
    pending: HashMap<Image, u64>,
    /// When this replica last wrote each image's record (the time it wrote).
    written: HashMap<Image, u64>,
}

/// The pull recorder, shared by every request.
pub struct PullTimes {
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
}

impl PullTimes {
    /// A recorder writing to `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage, state: Mutex::default() }
    }

    /// Notes a pull of `digest` from `name` at `now_ms` (memory only).
    pub fn note(&self, name: &RepositoryName, digest: &Digest, now_ms: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        let image = (name.clone(), digest.clone());
        if let Some(t) = state.pending.get_mut(&image) {
            *t = (*t).max(now_ms);
        } else if state.pending.len() < MAX_PENDING {
            state.pending.insert(image, now_ms);
        }
    }

    /// Writes the pulls that are due (every noted image not written by this replica within the
    /// last hour; all of them with `force`). Returns how many records were written.
    pub async fn flush(&self, now_ms: u64, force: bool) -> storage::Result<usize> {
        let due: Vec<(Image, u64)> = {
            let Ok(mut state) = self.state.lock() else { return Ok(0) };
            let written = &state.written;
            let due: Vec<(Image, u64)> = state
                .pending
                .iter()
                .filter(|(image, _)| {
                    force || written.get(*image).is_none_or(|w| now_ms.saturating_sub(*w) >= WRITE_EVERY_MS)
                })
                .map(|(i, t)| (i.clone(), *t))
                .collect();
            for (image, _) in &due {
                state.pending.remove(image);
            }
            due
        };
        let mut count: usize = 0;
        for ((name, digest), at) in due {
            if self.record(&name, &digest, at).await? {
                count = count.saturating_add(1);
            }
            if let Ok(mut state) = self.state.lock() {
                if state.written.len() >= MAX_PENDING {
                    // Forgetting costs at most one early write per image; it keeps memory bounded.
                    state.written.clear();
                }
                state.written.insert((name, digest), now_ms);
            }
        }
        Ok(count)
    }

    /// Records a pull at `at` in the image's link (or its pull record, when the link is not
    /// indexed yet); whether anything was written. Another replica may have written a later
    /// pull: the latest is kept. A link that is gone (the image was deleted) is left alone.
    async fn record(&self, name: &RepositoryName, digest: &Digest, at: u64) -> storage::Result<bool> {
        let key = Key::manifest_link(name, digest);
        for _ in 0..LINK_UPDATE_ROUNDS {
            let Some((bytes, version)) = self.storage.record_get_versioned(&key).await? else { return Ok(false) };
            let Ok(mut link) = decode::<ManifestRecord>(&bytes) else { return Ok(false) };
            if link.tags.is_none() {
                let stored = self.read(name, digest).await?;
                if stored.is_some_and(|s| s >= at) {
                    return Ok(false);
                }
                self.storage.record_put(&Key::image_pull(name, digest), Bytes::from(at.to_string())).await?;
                return Ok(true);
            }
            if link.last_pulled_ms.is_some_and(|s| s >= at) {
                return Ok(false);
            }
            link.last_pulled_ms = Some(at);
            let Ok(bytes) = encode(&link) else { return Ok(false) };
            match self.storage.record_put_if(&key, bytes, storage::PutMode::Update(version)).await {
                Ok(_) => return Ok(true),
                Err(storage::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        // The link kept changing under us: the pull is noted again by the next pull.
        Ok(false)
    }

    /// The recorded last pull of an image (ms since the epoch), if it was ever pulled.
    pub async fn read(&self, name: &RepositoryName, digest: &Digest) -> storage::Result<Option<u64>> {
        Ok(self
            .storage
            .record_get(&Key::image_pull(name, digest))
            .await?
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse().ok())))
    }

    /// The latest pull this replica noted and has not written yet.
    pub fn pending(&self, name: &RepositoryName, digest: &Digest) -> Option<u64> {
        let state = self.state.lock().ok()?;
        state.pending.get(&(name.clone(), digest.clone())).copied()
    }
}

/// How often the worker writes the pulls that are due.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes due pulls every [`FLUSH_EVERY`] (every replica flushes its own).
pub struct PullFlush {
    pulls: Arc<PullTimes>,
    clock: crate::clock::SharedClock,
    last: String,
}

impl PullFlush {
    /// A flush of `pulls`, timed by `clock`.
    pub fn new(pulls: Arc<PullTimes>, clock: crate::clock::SharedClock) -> Self {
        Self { pulls, clock, last: "not run yet".into() }
    }
}

#[async_trait::async_trait]
impl crate::worker::Worker for PullFlush {
    fn name(&self) -> &'static str {
        "pull_times"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<crate::worker::WorkerState, crate::worker::WorkerError> {
        let written = self.pulls.flush(self.clock.now_ms(), false).await?;
        self.last = format!("wrote {written} pull records");
        Ok(crate::worker::WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(FLUSH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsStorage;

    /// Writes a link for `digest`, indexed (tags present) or as written before the index.
    async fn link(storage: &dyn Storage, name: &RepositoryName, digest: &Digest, indexed: bool) {
        let mut record = ManifestRecord::new(digest.clone(), "application/vnd.oci.image.manifest.v1+json".into(), 2);
        record.tags = indexed.then(Vec::new);
        storage.record_put(&Key::manifest_link(name, digest), encode(&record).unwrap()).await.unwrap();
    }

    /// The pull time as readers see it: the indexed link's, or the legacy record's.
    async fn recorded(pulls: &PullTimes, storage: &dyn Storage, name: &RepositoryName, digest: &Digest) -> Option<u64> {
        let bytes = storage.record_get(&Key::manifest_link(name, digest)).await.unwrap()?;
        let link: ManifestRecord = decode(&bytes).unwrap();
        match link.tags {
            Some(_) => link.last_pulled_ms,
            None => pulls.read(name, digest).await.unwrap(),
        }
    }

    #[tokio::test]
    async fn pulls_are_written_at_most_hourly_and_keep_the_latest() {
        for indexed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
            let pulls = PullTimes::new(storage.clone());
            let name = RepositoryName::parse("app").unwrap();
            let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
            link(storage.as_ref(), &name, &digest, indexed).await;
            let read = || recorded(&pulls, storage.as_ref(), &name, &digest);
            assert_eq!(read().await, None);
            pulls.note(&name, &digest, 1_000);
            assert_eq!(read().await, None, "no write on a pull");
            assert_eq!(pulls.flush(1_000, false).await.unwrap(), 1);
            assert_eq!(read().await, Some(1_000));
            // The indexed link holds it; no separate record is written.
            let separate = storage.record_get(&Key::image_pull(&name, &digest)).await.unwrap();
            assert_eq!(separate.is_some(), !indexed);
            // Pulled again within the hour: held, not written.
            pulls.note(&name, &digest, 2_000);
            pulls.note(&name, &digest, 1_500);
            assert_eq!(pulls.flush(2_000, false).await.unwrap(), 0);
            assert_eq!(read().await, Some(1_000));
            assert_eq!(pulls.pending(&name, &digest), Some(2_000));
            // An hour after the last write it goes out, with the latest pull.
            assert_eq!(pulls.flush(1_000 + WRITE_EVERY_MS, false).await.unwrap(), 1);
            assert_eq!(read().await, Some(2_000));
            // An older pull from another replica does not move it back.
            let other = PullTimes::new(storage.clone());
            other.note(&name, &digest, 1_200);
            assert_eq!(other.flush(1_200, true).await.unwrap(), 0);
            assert_eq!(recorded(&other, storage.as_ref(), &name, &digest).await, Some(2_000), "kept across a restart");
            // A deleted image gets no record back.
            storage.record_delete(&Key::manifest_link(&name, &digest)).await.unwrap();
            storage.record_delete(&Key::image_pull(&name, &digest)).await.unwrap();
            other.note(&name, &digest, 9_000);
            assert_eq!(other.flush(9_000, true).await.unwrap(), 0);
            assert_eq!(storage.record_get(&Key::image_pull(&name, &digest)).await.unwrap(), None);
        }
    }
}
