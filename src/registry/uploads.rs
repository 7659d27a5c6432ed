//! Blob uploads: sessions, chunks at checked offsets, cross-repository mounts, and the
//! digest check that must pass before content is stored under its digest.

use super::{Error, Registry, Result};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepositoryName};
use crate::storage::{self, ByteRange, ByteStream, UploadId};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One session's lock and the sha256 of its bytes so far (valid while `offset` equals the
/// stored size). Every request that touches a session's bytes holds the lock throughout.
pub(super) struct UploadHash {
    offset: u64,
    hasher: Option<Hasher>,
    /// Set once a finish has started: every later request on the session is refused.
    finishing: bool,
}

/// What storage keeps about a session besides its bytes.
#[derive(Serialize, Deserialize)]
pub(super) struct UploadState {
    repository: String,
    started_at: u64,
}

impl UploadState {
    /// The state of a pull-through fill's session: it names no repository, so no client can
    /// address it; it is purged like any other once abandoned.
    pub(super) fn for_fill() -> Bytes {
        // What `UploadState { repository: "", started_at: 0 }` serializes to.
        Bytes::from_static(br#"{"repository":"","started_at":0}"#)
    }
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
        let started_at = self.clock.now_ms() / 1000;
        let state = UploadState { repository: name.as_str().to_owned(), started_at };
        let state = serde_json::to_vec(&state).map_err(|e| Error::Storage(storage::Error::Io(e.into())))?;
        self.storage.upload_create(&id, Bytes::from(state)).await?;
        self.hash_entry(id, true);
        Ok(id)
    }

    /// The session's entry, created (counted in `ferry_uploads_in_progress`) when this process
    /// has none: a new session's hash starts at offset 0; one from before a restart, or started
    /// by another replica, has an unknown hash.
    fn hash_entry(&self, id: UploadId, new_session: bool) -> Arc<tokio::sync::Mutex<UploadHash>> {
        let mut map = match self.upload_hashes.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id)
            .or_insert_with(|| {
                self.metrics.uploads.in_progress.inc();
                let (offset, hasher) =
                    if new_session { (0, Some(Hasher::new(DigestAlgorithm::Sha256))) } else { (u64::MAX, None) };
                Arc::new(tokio::sync::Mutex::new(UploadHash { offset, hasher, finishing: false }))
            })
            .clone()
    }

    fn forget_upload(&self, id: &UploadId) {
        let removed = match self.upload_hashes.lock() {
            Ok(mut m) => m.remove(id).is_some(),
            Err(poisoned) => poisoned.into_inner().remove(id).is_some(),
        };
        if removed {
            self.metrics.uploads.in_progress.dec();
        }
    }

    /// Checks that the session exists, is not sealed for its finish, and belongs to this repository.
    async fn check_session(&self, name: &RepositoryName, id: &UploadId) -> Result<()> {
        let state = self.storage.upload_state(id).await.map_err(unknown_if_gone)?;
        let state: UploadState = serde_json::from_slice(&state).map_err(|_| Error::UploadUnknown)?;
        if state.repository != name.as_str() {
            return Err(Error::UploadUnknown);
        }
        Ok(())
    }

    /// Locks the session and checks it under the lock, so nothing can finish, cancel or seal
    /// it between the check and what the caller does next. A session from before a restart,
    /// or started by another replica, gets a lock with an unknown running hash.
    async fn lock_session(
        &self,
        name: &RepositoryName,
        id: &UploadId,
    ) -> Result<tokio::sync::OwnedMutexGuard<UploadHash>> {
        let entry = self.hash_entry(*id, false);
        let guard = entry.lock_owned().await;
        if guard.finishing {
            return Err(Error::UploadUnknown);
        }
        if let Err(e) = self.check_session(name, id).await {
            if matches!(e, Error::UploadUnknown) {
                // Finished, cancelled or purged meanwhile (perhaps by another replica).
                self.forget_upload(id);
            }
            return Err(e);
        }
        Ok(guard)
    }

    /// The bytes received so far.
    pub async fn upload_status(&self, name: &RepositoryName, id: &UploadId) -> Result<u64> {
        self.check_session(name, id).await?;
        self.storage.upload_size(id).await.map_err(unknown_if_gone)
    }

    /// Appends a chunk; `start`, when given, must equal the bytes held so far.
    pub async fn upload_append(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let mut hash = self.lock_session(name, id).await?;
        self.append_locked(&mut hash, id, start, body).await
    }

    /// Appends under the session's lock, keeping the running hash when the chunk follows it.
    async fn append_locked(
        &self,
        hash: &mut UploadHash,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let size = self.storage.upload_size(id).await.map_err(unknown_if_gone)?;
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
        let new_size = match self.storage.upload_append(id, body).await {
            Ok(n) => n,
            // Another replica appended at this offset first: the chunk is out of order.
            Err(storage::Error::Conflict { .. }) => {
                let size = self.storage.upload_size(id).await.map_err(unknown_if_gone)?;
                return Err(Error::RangeMismatch { start: start.unwrap_or(size), size });
            }
            Err(e) => return Err(unknown_if_gone(e)),
        };
        if let Some(slot) = slot {
            hash.hasher = slot.lock().ok().and_then(|mut g| g.take());
            hash.offset = new_size;
        }
        Ok(new_size)
    }

    /// Completes an upload: appends the last chunk, seals the session, checks the digest of
    /// exactly the bytes held, stores them under it and links the blob. The session's lock is
    /// held from the last chunk to the commit, and the seal keeps every other request (on any
    /// replica) out, so no byte can join the upload between its check and its commit.
    /// A wrong digest removes the session and stores nothing.
    pub async fn upload_finish(
        &self,
        name: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        last_chunk: Option<ByteStream>,
    ) -> Result<u64> {
        let mut hash = self.lock_session(name, id).await?;
        if let Some(body) = last_chunk {
            self.append_locked(&mut hash, id, start, body).await?;
        }
        hash.finishing = true;
        let result = self.seal_and_commit(&mut hash, name, id, digest).await;
        drop(hash);
        self.forget_upload(id);
        result
    }

    async fn seal_and_commit(
        &self,
        hash: &mut UploadHash,
        name: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64> {
        match self.storage.upload_seal(id).await {
            Ok(()) => {}
            // Another finish (perhaps on another replica) sealed it first.
            Err(storage::Error::Conflict { .. } | storage::Error::NotFound) => return Err(Error::UploadUnknown),
            Err(e) => return Err(e.into()),
        }
        let size = self.storage.upload_size(id).await.map_err(unknown_if_gone)?;
        let computed = match hash.hasher.take() {
            Some(h) if hash.offset == size && digest.algorithm() == DigestAlgorithm::Sha256 => h.finish(),
            _ => {
                let mut h = Hasher::new(digest.algorithm());
                if size > 0 {
                    let range = ByteRange { start: 0, end: size.saturating_sub(1) };
                    let mut data = self.storage.upload_read(id, Some(range)).await.map_err(unknown_if_gone)?;
                    let mut read = 0u64;
                    while let Some(chunk) = data.next().await {
                        let chunk = chunk.map_err(storage::Error::Io)?;
                        read = read.saturating_add(chunk.len() as u64);
                        h.update(&chunk);
                    }
                    if read != size {
                        return Err(Error::Storage(storage::Error::Corrupt(format!(
                            "upload {id} read back {read} of {size} bytes"
                        ))));
                    }
                }
                h.finish()
            }
        };
        if &computed != digest {
            self.storage.upload_delete(id).await?;
            return Err(Error::DigestMismatch { expected: digest.clone(), actual: computed });
        }
        // In use from now: no collector removes it between the commit and the link.
        self.uses.touch(digest).await?;
        self.storage.upload_commit(id, digest, size).await.map_err(unknown_if_gone)?;
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
        let source = super::Repo::Local(from.clone());
        // Checked, touched, checked again (as a manifest's references are): a collector that
        // removed it between the first check and the touch is caught by the second, and a
        // digest nobody holds never gets a use record.
        for attempt in 0..2 {
            match self.blob_size(&source, digest).await {
                Ok(size) if attempt == 1 => {
                    self.link_blob(name, digest, size).await?;
                    return Ok(true);
                }
                Ok(_) => self.uses.touch(digest).await?,
                Err(Error::BlobUnknown(_) | Error::NameUnknown(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Mounts a blob no source repository was named for: links it when the registry holds the
    /// content (only with access control off: see the HTTP handler). False when it cannot.
    pub async fn upload_mount_any(&self, name: &RepositoryName, digest: &Digest) -> Result<bool> {
        if self.storage.blob_size(digest).await?.is_none() {
            return Ok(false);
        }
        self.uses.touch(digest).await?;
        match self.storage.blob_size(digest).await? {
            Some(size) => {
                self.link_blob(name, digest, size).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Cancels a session and drops its bytes.
    pub async fn upload_cancel(&self, name: &RepositoryName, id: &UploadId) -> Result<()> {
        let mut hash = self.lock_session(name, id).await?;
        hash.finishing = true;
        let result = self.storage.upload_delete(id).await;
        drop(hash);
        self.forget_upload(id);
        Ok(result?)
    }

    /// Every session in storage.
    pub(super) async fn upload_ids(&self) -> Result<std::collections::HashSet<UploadId>> {
        Ok(self.storage.upload_list().await?.into_iter().map(|(id, _)| id).collect())
    }

    /// Removes sessions idle for longer than the configured age; returns how many.
    pub async fn purge_uploads(&self) -> Result<usize> {
        let cutoff = self.clock.now().checked_sub(self.settings.upload_max_idle).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut purged: usize = 0;
        for (id, last_write) in self.storage.upload_list().await? {
            if last_write < cutoff {
                self.storage.upload_delete(&id).await?;
                self.forget_upload(&id);
                self.metrics.uploads.purged.inc();
                purged = purged.saturating_add(1);
            }
        }
        // Only after the sessions: a session being finished now is younger than the cutoff.
        purged = purged.saturating_add(self.storage.cleanup(cutoff).await?);
        Ok(purged)
    }
}

/// A session that is gone (finished, cancelled, purged, sealed) is unknown to the client, not a
/// storage failure.
fn unknown_if_gone(e: storage::Error) -> Error {
    match e {
        storage::Error::NotFound => Error::UploadUnknown,
        e => e.into(),
    }
}
