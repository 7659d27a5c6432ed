//! When each image was last pulled (`lastRecordedPullTime`, what lifecycle's `sinceImagePulled`
//! and cache eviction read), recorded without a storage write on the request path: a pull
//! notes the time in memory, and a flush (every minute, from the worker) writes each image's
//! record at most once an hour per replica, so a hot image costs one small write an hour, not
//! one per pull. The record (`repos/<name>/_pulls/sha256/<hex>`) survives restarts; what a
//! replica noted and had not flushed when it died is lost, which only makes the recorded time
//! up to an hour older (ECR's own is coarser, about a day). Memory is bounded: past
//! [`MAX_PENDING`] images, further pulls are not noted until the next flush.

use crate::oci::{Digest, RepositoryName};
use crate::storage::{self, Key, Storage};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One write per image per this long, per replica.
pub const WRITE_EVERY_MS: u64 = 3_600_000;

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
            let key = Key::image_pull(&name, &digest);
            // Another replica may have written a later pull; the record keeps the latest.
            let stored = self.read(&name, &digest).await?;
            if stored.is_none_or(|s| s < at) {
                self.storage.record_put(&key, Bytes::from(at.to_string())).await?;
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

    #[tokio::test]
    async fn pulls_are_written_at_most_hourly_and_keep_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path()).unwrap());
        let pulls = PullTimes::new(storage.clone());
        let name = RepositoryName::parse("app").unwrap();
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert_eq!(pulls.read(&name, &digest).await.unwrap(), None);
        pulls.note(&name, &digest, 1_000);
        assert_eq!(storage.record_get(&Key::image_pull(&name, &digest)).await.unwrap(), None, "no write on a pull");
        assert_eq!(pulls.flush(1_000, false).await.unwrap(), 1);
        assert_eq!(pulls.read(&name, &digest).await.unwrap(), Some(1_000));
        // Pulled again within the hour: held, not written.
        pulls.note(&name, &digest, 2_000);
        pulls.note(&name, &digest, 1_500);
        assert_eq!(pulls.flush(2_000, false).await.unwrap(), 0);
        assert_eq!(pulls.read(&name, &digest).await.unwrap(), Some(1_000));
        assert_eq!(pulls.pending(&name, &digest), Some(2_000));
        // An hour after the last write it goes out, with the latest pull.
        assert_eq!(pulls.flush(1_000 + WRITE_EVERY_MS, false).await.unwrap(), 1);
        assert_eq!(pulls.read(&name, &digest).await.unwrap(), Some(2_000));
        // A restart (a new recorder) keeps what was written.
        let again = PullTimes::new(storage);
        assert_eq!(again.read(&name, &digest).await.unwrap(), Some(2_000));
    }
}
