//! A [`Storage`] wrapper that counts the requests made through it, by kind: reads (of content,
//! sessions and records), writes, deletes and listings. Tests and benchmarks put it in front of
//! any backend to assert what an operation costs in storage requests (on S3, requests are time
//! and money), independent of how fast the machine is. Made [`CountingStorage::yielding`], it
//! also gives way to other tasks before each request, as a network store does, so race tests
//! over the in-memory store see their requests interleave. Owns only its counters.

use super::{ByteRange, ByteStream, Key, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version};
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// What was asked of the store, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// Reads: a blob's size or bytes, a session's state, size or bytes, a record.
    pub reads: u64,
    /// Writes: content, sessions, records (conditional or not).
    pub writes: u64,
    /// Deletes of content, sessions and records.
    pub deletes: u64,
    /// Listings (each page of a paged listing counts once).
    pub lists: u64,
}

impl Requests {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.reads.saturating_add(self.writes).saturating_add(self.deletes).saturating_add(self.lists)
    }
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
}

/// A store that counts what passes through it to `inner`.
pub struct CountingStorage {
    inner: Arc<dyn Storage>,
    counters: Counters,
    yields: bool,
}

impl CountingStorage {
    /// Counts the requests made to `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self { inner, counters: Counters::default(), yields: false }
    }

    /// Counts the requests made to `inner`, and yields to other tasks before each one.
    pub fn yielding(inner: Arc<dyn Storage>) -> Self {
        Self { inner, counters: Counters::default(), yields: true }
    }

    /// The requests made so far.
    pub fn requests(&self) -> Requests {
        let c = &self.counters;
        Requests {
            reads: c.reads.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            lists: c.lists.load(Ordering::Relaxed),
        }
    }

    /// The requests `op` makes (others running meanwhile are counted too: use it alone).
    pub async fn count<T>(&self, op: impl std::future::Future<Output = T>) -> (T, Requests) {
        let before = self.requests();
        let out = op.await;
        let after = self.requests();
        let requests = Requests {
            reads: after.reads.saturating_sub(before.reads),
            writes: after.writes.saturating_sub(before.writes),
            deletes: after.deletes.saturating_sub(before.deletes),
            lists: after.lists.saturating_sub(before.lists),
        };
        (out, requests)
    }

    async fn read(&self) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        if self.yields {
            tokio::task::yield_now().await;
        }
    }
    async fn write(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if self.yields {
            tokio::task::yield_now().await;
        }
    }
    async fn delete(&self) {
        self.counters.deletes.fetch_add(1, Ordering::Relaxed);
        if self.yields {
            tokio::task::yield_now().await;
        }
    }
    async fn list(&self) {
        self.counters.lists.fetch_add(1, Ordering::Relaxed);
        if self.yields {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl Storage for CountingStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.read().await;
        self.inner.blob_size(digest).await
    }
    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream> {
        self.read().await;
        self.inner.blob_read(digest, range, size).await
    }
    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes> {
        self.read().await;
        self.inner.blob_read_small_unverified(digest).await
    }
    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        self.inner.blob_url(digest).await
    }
    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.write().await;
        self.inner.blob_put_small(digest, bytes).await
    }
    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        self.list().await;
        self.inner.blob_list(after, limit).await
    }
    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        self.delete().await;
        self.inner.blob_delete(digest).await
    }
    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()> {
        self.write().await;
        self.inner.upload_create(id, state).await
    }
    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        self.read().await;
        self.inner.upload_state(id).await
    }
    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        self.write().await;
        self.inner.upload_seal(id).await
    }
    async fn upload_append_observed(&self, id: &UploadId, body: ByteStream, on_written: OnWritten<'_>) -> Result<u64> {
        self.write().await;
        self.inner.upload_append_observed(id, body, on_written).await
    }
    fn append_buffer_bytes(&self) -> u64 {
        self.inner.append_buffer_bytes()
    }
    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        self.read().await;
        self.inner.upload_size(id).await
    }
    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        self.read().await;
        self.inner.upload_read(id, range).await
    }
    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        self.write().await;
        self.inner.upload_commit(id, digest, size).await
    }
    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        self.delete().await;
        self.inner.upload_delete(id).await
    }
    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        self.list().await;
        self.inner.upload_list().await
    }
    async fn cleanup(&self, cutoff: SystemTime) -> Result<usize> {
        self.inner.cleanup(cutoff).await
    }
    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>> {
        self.read().await;
        self.inner.record_get(key).await
    }
    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()> {
        self.write().await;
        self.inner.record_put(key, value).await
    }
    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>> {
        self.read().await;
        self.inner.record_get_versioned(key).await
    }
    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        self.write().await;
        self.inner.record_put_if(key, value, mode).await
    }
    async fn record_delete(&self, key: &Key) -> Result<bool> {
        self.delete().await;
        self.inner.record_delete(key).await
    }
    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>> {
        self.list().await;
        self.inner.record_list(prefix).await
    }
    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<super::ListPage> {
        self.list().await;
        self.inner.record_list_page(prefix, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn each_kind_of_request_is_counted_once() {
        let store = CountingStorage::new(Arc::new(MemoryStorage::new()));
        let key = Key::lease("counting-test");
        let ((), counted) = store
            .count(async {
                store.record_put(&key, Bytes::from_static(b"x")).await.unwrap();
                store.record_get(&key).await.unwrap();
                store.record_get_versioned(&key).await.unwrap();
                store.record_list(&Key::lease("")).await.unwrap();
                store.record_delete(&key).await.unwrap();
            })
            .await;
        assert_eq!(counted, Requests { reads: 2, writes: 1, deletes: 1, lists: 1 });
        assert_eq!(counted.total(), 5);
        assert_eq!(store.requests(), counted);
    }
}
