//! An in-memory [`Storage`]: every promise of the trait (the storage contract) kept in maps
//! under one lock, so the registry's rules can be unit-tested without a disk, a server or
//! a tool. Not a production backend: nothing survives the process, and nothing bounds its size.
//! Owns only its maps; knows nothing of repositories.

use super::keys::{self, UploadObject};
use super::{
    ByteRange, ByteStream, Error, Key, ListPage, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version,
};
use crate::clock::{SharedClock, SystemClock};
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// An upload session's state and data.
struct Session {
    state: Bytes,
    data: BytesMut,
    sealed: bool,
    modified: SystemTime,
}

#[derive(Default)]
struct Maps {
    blobs: BTreeMap<String, (Digest, Bytes, SystemTime)>,
    uploads: HashMap<UploadId, Session>,
    /// Each record with the write that made it (its version).
    records: BTreeMap<String, (Bytes, u64)>,
    writes: u64,
}

/// Storage in memory.
pub struct MemoryStorage {
    maps: Mutex<Maps>,
    /// What stamps blobs and upload sessions (a test's manual clock ages them).
    clock: SharedClock,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose blobs and sessions are stamped by `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self { maps: Mutex::default(), clock }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `bytes` as a one-item stream.
fn once(bytes: Bytes) -> ByteStream {
    futures_util::stream::iter([Ok(bytes)]).boxed()
}

/// The range `r` of `bytes` (clamped: ranges reaching past the end were refused above).
fn slice(bytes: &Bytes, r: Option<ByteRange>) -> Bytes {
    match r {
        None => bytes.clone(),
        Some(r) => {
            let len = bytes.len();
            let start = usize::try_from(r.start).unwrap_or(len).min(len);
            let end = usize::try_from(r.end).unwrap_or(len).saturating_add(1).min(len);
            bytes.slice(start..end.max(start))
        }
    }
}

impl Maps {
    fn next_version(&mut self) -> u64 {
        self.writes = self.writes.saturating_add(1);
        self.writes
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.maps().blobs.get(&digest.to_string()).map(|(_, b, _)| b.len() as u64))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream> {
        let bytes = self.maps().blobs.get(&digest.to_string()).map(|(_, b, _)| b.clone()).ok_or(Error::NotFound)?;
        if bytes.len() as u64 != size {
            return Err(Error::Corrupt(format!("{digest} is {} bytes, its link says {size}", bytes.len())));
        }
        Ok(once(slice(&bytes, range)))
    }

    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes> {
        self.maps().blobs.get(&digest.to_string()).map(|(_, b, _)| b.clone()).ok_or(Error::NotFound)
    }

    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.maps().blobs.insert(digest.to_string(), (digest.clone(), bytes, self.clock.now()));
        Ok(())
    }

    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        let maps = self.maps();
        let from = after.unwrap_or("");
        Ok(maps
            .blobs
            .range::<str, _>((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(_, (digest, bytes, modified))| StoredBlob {
                digest: digest.clone(),
                size: bytes.len() as u64,
                modified: *modified,
            })
            .collect())
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        Ok(self.maps().blobs.remove(&digest.to_string()).is_some())
    }

    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()> {
        let session = Session { state, data: BytesMut::new(), sealed: false, modified: self.clock.now() };
        self.maps().uploads.insert(*id, session);
        Ok(())
    }

    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        match self.maps().uploads.get(id) {
            Some(s) if !s.sealed => Ok(s.state.clone()),
            _ => Err(Error::NotFound),
        }
    }

    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        match self.maps().uploads.get_mut(id) {
            Some(s) if s.sealed => Err(Error::Conflict { key: keys::upload_object(id, UploadObject::Sealed) }),
            Some(s) => {
                s.sealed = true;
                Ok(())
            }
            None => Err(Error::NotFound),
        }
    }

    async fn upload_append_observed(
        &self,
        id: &UploadId,
        mut body: ByteStream,
        on_written: OnWritten<'_>,
    ) -> Result<u64> {
        if !self.maps().uploads.contains_key(id) {
            return Err(Error::NotFound);
        }
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Error::Incoming)?;
            let size = {
                let mut maps = self.maps();
                let session = maps.uploads.get_mut(id).ok_or(Error::NotFound)?;
                session.data.extend_from_slice(&chunk);
                session.modified = self.clock.now();
                session.data.len() as u64
            };
            on_written(size);
        }
        self.upload_size(id).await
    }

    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        self.maps().uploads.get(id).map(|s| s.data.len() as u64).ok_or(Error::NotFound)
    }

    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        let data = self.maps().uploads.get(id).map(|s| Bytes::copy_from_slice(&s.data)).ok_or(Error::NotFound)?;
        Ok(once(slice(&data, range)))
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let mut maps = self.maps();
        let session = maps.uploads.get(id).ok_or(Error::NotFound)?;
        let held = session.data.len() as u64;
        if held < size {
            return Err(Error::Corrupt(format!("the session holds {held} bytes, not {size}")));
        }
        let bytes = Bytes::copy_from_slice(session.data.get(..usize::try_from(size).unwrap_or(0)).unwrap_or_default());
        maps.uploads.remove(id);
        let keep = maps.blobs.get(&digest.to_string()).is_some_and(|(_, b, _)| b.len() as u64 == size);
        if !keep {
            maps.blobs.insert(digest.to_string(), (digest.clone(), bytes, self.clock.now()));
        }
        Ok(())
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        self.maps().uploads.remove(id);
        Ok(())
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        Ok(self.maps().uploads.iter().map(|(id, s)| (*id, s.modified)).collect())
    }

    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>> {
        Ok(self.maps().records.get(key.as_str()).map(|(b, _)| b.clone()))
    }

    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()> {
        let mut maps = self.maps();
        let version = maps.next_version();
        maps.records.insert(key.as_str().to_owned(), (value, version));
        Ok(())
    }

    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>> {
        Ok(self.maps().records.get(key.as_str()).map(|(b, v)| (b.clone(), Version(v.to_string()))))
    }

    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        let mut maps = self.maps();
        let current = maps.records.get(key.as_str()).map(|(_, v)| Version(v.to_string()));
        match (&mode, current) {
            (PutMode::Create, None) => {}
            (PutMode::Update(want), Some(have)) if *want == have => {}
            _ => return Err(Error::Conflict { key: key.as_str().to_owned() }),
        }
        let version = maps.next_version();
        maps.records.insert(key.as_str().to_owned(), (value, version));
        Ok(Version(version.to_string()))
    }

    async fn record_delete(&self, key: &Key) -> Result<bool> {
        Ok(self.maps().records.remove(key.as_str()).is_some())
    }

    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>> {
        let dir = format!("{}/", prefix.as_str().trim_end_matches('/'));
        let maps = self.maps();
        // A set: keys sort by their whole text, their first components not always in order.
        let names: std::collections::BTreeSet<String> = maps
            .records
            .range::<str, _>((std::ops::Bound::Included(dir.as_str()), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&dir))
            .filter_map(|k| k.get(dir.len()..)?.split('/').next().map(str::to_owned))
            .filter(|n| !n.is_empty())
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<ListPage> {
        let dir = format!("{}/", prefix.as_str().trim_end_matches('/'));
        let start = format!("{dir}{}", after.unwrap_or(""));
        let maps = self.maps();
        // Records only (no further `/`): their keys sort as their names do.
        let names = maps
            .records
            .range::<str, _>((std::ops::Bound::Excluded(start.as_str()), std::ops::Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&dir))
            .filter_map(|k| k.get(dir.len()..))
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .take(limit.saturating_add(1))
            .map(str::to_owned);
        Ok(ListPage::of(names, after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_storage_contract() {
        super::super::contract::storage_contract(std::sync::Arc::new(MemoryStorage::new()), "memory", true).await;
    }
}
