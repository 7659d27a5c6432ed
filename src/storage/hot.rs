//! The hot tier: an in-memory, byte-weighted cache (moka) in front of a backend. Content by
//! digest never changes, so manifests and small blobs are cached without invalidation; tag
//! records are cached only when a TTL is configured (by default never, so replicas sharing a
//! bucket agree at once), and this process's own writes invalidate them.

use super::{ByteRange, ByteStream, Error, Key, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version};
use crate::metrics::Metrics;
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use moka::future::Cache;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A backend with an in-memory cache in front.
pub struct HotTier {
    inner: Arc<dyn Storage>,
    blobs: Cache<Digest, Bytes>,
    tags: Option<Cache<Key, Option<Bytes>>>,
    max_object: u64,
    metrics: Arc<Metrics>,
}

impl HotTier {
    /// Caches up to `max_bytes` of blobs no larger than `max_object`, and tag records for `tag_ttl` (zero: never).
    pub fn new(
        inner: Arc<dyn Storage>,
        max_bytes: u64,
        max_object: u64,
        tag_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let evictions = metrics.hot_tier.evictions.clone();
        let blobs = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Digest, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evictions.inc();
                }
            })
            .build();
        let tags = (!tag_ttl.is_zero()).then(|| Cache::builder().max_capacity(100_000).time_to_live(tag_ttl).build());
        Self { inner, blobs, tags, max_object, metrics }
    }

    fn count(&self, hit: bool) {
        self.metrics.hot_tier.requests.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
        self.metrics.hot_tier.bytes.set(self.blobs.weighted_size() as i64);
    }

    async fn cached(&self, digest: &Digest) -> Option<Bytes> {
        let got = self.blobs.get(digest).await;
        self.count(got.is_some());
        got
    }

    async fn remember(&self, digest: &Digest, bytes: &Bytes) {
        if (bytes.len() as u64) <= self.max_object {
            self.blobs.insert(digest.clone(), bytes.clone()).await;
            self.metrics.hot_tier.bytes.set(self.blobs.weighted_size() as i64);
        }
    }
}

#[async_trait]
impl Storage for HotTier {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(b) = self.blobs.get(digest).await {
            return Ok(Some(b.len() as u64));
        }
        self.inner.blob_size(digest).await
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream> {
        if let Some(b) = self.cached(digest).await {
            if b.len() as u64 != size {
                return Err(Error::Corrupt(format!("{digest} is {} bytes, its link records {size}", b.len())));
            }
            let part = match range {
                Some(r) => {
                    let end = usize::try_from(r.end.saturating_add(1)).unwrap_or(usize::MAX).min(b.len());
                    b.slice(usize::try_from(r.start).unwrap_or(usize::MAX).min(end)..end)
                }
                None => b,
            };
            return Ok(futures_util::stream::once(async move { Ok(part) }).boxed());
        }
        // Small blobs are read whole once (and verified), so the next read is from memory.
        if range.is_none() && size <= self.max_object {
            let bytes = self.blob_read_small(digest).await?;
            if bytes.len() as u64 != size {
                return Err(Error::Corrupt(format!("{digest} is {} bytes, its link records {size}", bytes.len())));
            }
            return Ok(futures_util::stream::once(async move { Ok(bytes) }).boxed());
        }
        self.inner.blob_read(digest, range, size).await
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        self.inner.blob_url(digest).await
    }

    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes> {
        self.inner.blob_read_small_unverified(digest).await
    }

    async fn blob_read_small(&self, digest: &Digest) -> Result<Bytes> {
        // Only verified bytes enter memory (checked by the backend's read, or computed by the
        // writer from exactly these bytes), so a hit needs no second check.
        if let Some(b) = self.cached(digest).await {
            return Ok(b);
        }
        let bytes = self.inner.blob_read_small(digest).await?;
        self.remember(digest, &bytes).await;
        Ok(bytes)
    }

    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.inner.blob_put_small(digest, bytes.clone()).await?;
        self.remember(digest, &bytes).await;
        Ok(())
    }

    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()> {
        self.inner.upload_create(id, state).await
    }

    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        self.inner.upload_state(id).await
    }

    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        self.inner.upload_seal(id).await
    }

    async fn upload_append_observed(&self, id: &UploadId, body: ByteStream, on_written: OnWritten<'_>) -> Result<u64> {
        self.inner.upload_append_observed(id, body, on_written).await
    }

    fn append_buffer_bytes(&self) -> u64 {
        self.inner.append_buffer_bytes()
    }

    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        self.inner.upload_size(id).await
    }

    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        self.inner.upload_read(id, range).await
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        self.inner.upload_commit(id, digest, size).await
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        self.inner.upload_delete(id).await
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        self.inner.upload_list().await
    }

    async fn cleanup(&self, cutoff: SystemTime) -> Result<usize> {
        self.inner.cleanup(cutoff).await
    }

    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>> {
        match &self.tags {
            Some(tags) if key.is_tag() => {
                if let Some(v) = tags.get(key).await {
                    return Ok(v);
                }
                let v = self.inner.record_get(key).await?;
                tags.insert(key.clone(), v.clone()).await;
                Ok(v)
            }
            _ => self.inner.record_get(key).await,
        }
    }

    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()> {
        self.inner.record_put(key, value).await?;
        if let Some(tags) = &self.tags {
            tags.invalidate(key).await;
        }
        Ok(())
    }

    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>> {
        self.inner.record_get_versioned(key).await
    }

    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        let version = self.inner.record_put_if(key, value, mode).await;
        if let Some(tags) = &self.tags {
            tags.invalidate(key).await;
        }
        version
    }

    async fn record_delete(&self, key: &Key) -> Result<bool> {
        let existed = self.inner.record_delete(key).await?;
        if let Some(tags) = &self.tags {
            tags.invalidate(key).await;
        }
        Ok(existed)
    }

    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<super::ListPage> {
        self.inner.record_list_page(prefix, after, limit).await
    }

    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>> {
        self.inner.record_list(prefix).await
    }

    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        self.inner.blob_list(after, limit).await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        self.blobs.invalidate(digest).await;
        self.metrics.hot_tier.bytes.set(self.blobs.weighted_size() as i64);
        self.inner.blob_delete(digest).await
    }
}
