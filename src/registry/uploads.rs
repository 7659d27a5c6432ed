//! Blob uploads: sessions, chunks at checked offsets, cross-repository mounts, and the
//! digest check that must pass before content is stored under its digest.

use super::{Error, Registry, Result};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepositoryName};
use crate::storage::{self, ByteStream, UploadId};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The sha256 of an upload's bytes so far, valid while `offset` equals the stored size.
pub(super) struct UploadHash {
    offset: u64,
    hasher: Option<Hasher>,
}

/// What storage keeps about a session besides its bytes.
#[derive(Serialize, Deserialize)]
struct UploadState {
    repository: String,
    started_at: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Hashes bytes as they pass, leaving the hasher in `slot` for the caller to take back.
fn hashing(body: ByteStream, hasher: Hasher) -> (ByteStream, Arc<Mutex<Option<Hasher>>>) {
    let slot = Arc::new(Mutex::new(Some(hasher)));
    let s = slot.clone();
    let stream = body.map(move |item| {
        if let Ok(bytes) = &item {
            if let Ok(mut guard) = s.lock() {
                if let Some(h) = guard.as_mut() {
                    h.update(bytes);
                }
            }
        }
        item
    });
    (stream.boxed(), slot)
}

impl Registry {
    /// Opens an upload session in the repository.
    pub async fn upload_start(&self, name: &RepositoryName) -> Result<UploadId> {
        let id = UploadId::new();
        let state = UploadState { repository: name.as_str().to_owned(), started_at: now_secs() };
        let state = serde_json::to_vec(&state).map_err(|e| Error::Storage(storage::Error::Io(e.into())))?;
        self.storage.upload_create(&id, Bytes::from(state)).await?;
        self.hash_entry(id, 0);
        self.metrics.uploads_in_progress.inc();
        Ok(id)
    }

    fn hash_entry(&self, id: UploadId, offset: u64) -> Arc<tokio::sync::Mutex<UploadHash>> {
        let mut map = match self.upload_hashes.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id)
            .or_insert_with(|| {
                let hasher = (offset == 0).then(|| Hasher::new(DigestAlgorithm::Sha256));
                Arc::new(tokio::sync::Mutex::new(UploadHash { offset, hasher }))
            })
            .clone()
    }

    fn forget_upload(&self, id: &UploadId) {
        let removed = match self.upload_hashes.lock() {
            Ok(mut m) => m.remove(id).is_some(),
            Err(poisoned) => poisoned.into_inner().remove(id).is_some(),
        };
        if removed {
            self.metrics.uploads_in_progress.dec();
        }
    }

    /// Checks that the session exists and belongs to this repository.
    async fn check_session(&self, name: &RepositoryName, id: &UploadId) -> Result<()> {
        let state = match self.storage.upload_state(id).await {
            Ok(s) => s,
            Err(storage::Error::NotFound) => return Err(Error::UploadUnknown),
            Err(e) => return Err(e.into()),
        };
        let state: UploadState = serde_json::from_slice(&state).map_err(|_| Error::UploadUnknown)?;
        if state.repository != name.as_str() {
            return Err(Error::UploadUnknown);
        }
        Ok(())
    }

    /// The session's lock and hash, created (with an unknown hash) after a restart.
    async fn session(&self, name: &RepositoryName, id: &UploadId) -> Result<Arc<tokio::sync::Mutex<UploadHash>>> {
        self.check_session(name, id).await?;
        let known = self.upload_hashes.lock().map(|m| m.contains_key(id)).unwrap_or(false);
        if !known {
            // A session from before a restart, or started by another replica.
            self.metrics.uploads_in_progress.inc();
            return Ok(self.hash_entry(*id, u64::MAX));
        }
        Ok(self.hash_entry(*id, 0))
    }

    /// The bytes received so far.
    pub async fn upload_status(&self, name: &RepositoryName, id: &UploadId) -> Result<u64> {
        self.check_session(name, id).await?;
        Ok(self.storage.upload_size(id).await?)
    }

    /// Appends a chunk; `start`, when given, must equal the bytes held so far.
    pub async fn upload_append(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let session = self.session(name, id).await?;
        let mut hash = session.lock().await;
        let size = self.storage.upload_size(id).await?;
        if let Some(start) = start {
            if start != size {
                return Err(Error::RangeMismatch { start, size });
            }
        }
        let hasher = if hash.offset == size { hash.hasher.take() } else { None };
        hash.hasher = None;
        let (body, slot) = match hasher {
            Some(h) => {
                let (b, s) = hashing(body, h);
                (b, Some(s))
            }
            None => (body, None),
        };
        // On any failure the running hash is dropped: finishing re-reads the stored bytes instead.
        let new_size = self.storage.upload_append(id, body).await?;
        if let Some(slot) = slot {
            hash.hasher = slot.lock().ok().and_then(|mut g| g.take());
            hash.offset = new_size;
        }
        Ok(new_size)
    }

    /// Completes an upload: appends the last chunk, checks the digest, stores and links the blob.
    /// A wrong digest removes the session and stores nothing.
    pub async fn upload_finish(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        last_chunk: Option<ByteStream>,
    ) -> Result<u64> {
        let size = match last_chunk {
            Some(body) => self.upload_append(name, id, start, body).await?,
            None => self.upload_status(name, id).await?,
        };
        let session = self.session(name, id).await?;
        let mut hash = session.lock().await;
        let computed = match hash.hasher.take() {
            Some(h) if hash.offset == size && digest.algorithm() == DigestAlgorithm::Sha256 => h.finish(),
            _ => {
                let mut h = Hasher::new(digest.algorithm());
                let mut data = self.storage.upload_read(id, None).await?;
                while let Some(chunk) = data.next().await {
                    h.update(&chunk.map_err(storage::Error::Io)?);
                }
                h.finish()
            }
        };
        drop(hash);
        if &computed != digest {
            self.storage.upload_delete(id).await?;
            self.forget_upload(id);
            return Err(Error::DigestMismatch { expected: digest.clone(), actual: computed });
        }
        self.storage.upload_commit(id, digest).await?;
        self.forget_upload(id);
        self.link_blob(name, digest, size).await?;
        Ok(size)
    }

    /// Uploads a whole blob in one request.
    pub async fn upload_monolithic(&self, name: &RepositoryName, digest: &Digest, body: ByteStream) -> Result<u64> {
        let id = self.upload_start(name).await?;
        let result = self.upload_finish(name, &id, digest, None, Some(body)).await;
        if result.is_err() {
            let _ = self.storage.upload_delete(&id).await;
            self.forget_upload(&id);
        }
        result
    }

    /// Links a blob from `from` into `name` when `from` holds it; false when it cannot.
    pub async fn upload_mount(&self, name: &RepositoryName, digest: &Digest, from: &RepositoryName) -> Result<bool> {
        match self.blob_size(&super::Repo::Local(from.clone()), digest).await {
            Ok(size) => {
                self.link_blob(name, digest, size).await?;
                Ok(true)
            }
            Err(Error::BlobUnknown(_) | Error::NameUnknown(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Cancels a session and drops its bytes.
    pub async fn upload_cancel(&self, name: &RepositoryName, id: &UploadId) -> Result<()> {
        self.check_session(name, id).await?;
        self.storage.upload_delete(id).await?;
        self.forget_upload(id);
        Ok(())
    }

    /// Removes sessions idle for longer than the configured age; returns how many.
    pub async fn purge_uploads(&self) -> Result<usize> {
        let cutoff = SystemTime::now() - self.settings.upload_max_idle;
        let mut purged = 0;
        for (id, last_write) in self.storage.upload_list().await? {
            if last_write < cutoff {
                self.storage.upload_delete(&id).await?;
                self.forget_upload(&id);
                self.metrics.uploads_purged.inc();
                purged += 1;
            }
        }
        // Only after the sessions: a session being finished now is younger than the cutoff.
        purged += self.storage.cleanup(cutoff).await?;
        Ok(purged)
    }
}
