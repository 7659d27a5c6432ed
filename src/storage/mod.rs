//! Storage: content by digest (blobs and manifests alike), upload sessions, and small records
//! (tags, links, catalog entries). Backends implement [`Storage`] (`fs`, `s3`, and `memory` for
//! tests) and keep [`contract`]; nothing above this trait may assume a filesystem. Knows
//! nothing of repositories' rules or of HTTP.

pub mod contract;
pub mod counting;
pub mod fs;
pub mod hot;
pub mod keys;
pub mod lease;
pub mod memory;
pub mod records;
pub mod s3;
pub mod uses;

use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

pub use keys::{EventId, Key, UploadId};

/// A stream of bytes: a request body going in, or content going out.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A failure's underlying cause, kept (not stringified) for logs and callers that inspect it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob, upload or record does not exist.
    #[error("not found")]
    NotFound,
    /// The stream being written failed (the client went away); what arrived before is kept.
    #[error("the incoming stream failed: {0}")]
    Incoming(io::Error),
    /// Another writer got there first: the write was conditional and its condition no longer
    /// holds (an upload segment at that offset exists, a session is already sealed).
    #[error("a concurrent write to {key} got there first")]
    Conflict {
        /// What was written: a record key, or an object path relative to the store's root.
        key: String,
    },
    /// What is stored is not what was recorded (a blob whose length differs from the size its
    /// link records, content that does not hash to its digest); never served.
    #[error("stored content is corrupt: {0}")]
    Corrupt(String),
    /// The backend asked us to slow down (S3 `503 SlowDown`, throttling): retry later.
    #[error("S3 {operation} throttled: {message}")]
    Throttled {
        /// The request that was throttled.
        operation: &'static str,
        /// What the server said.
        message: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// A request to the backend failed.
    #[error("S3 {operation} failed: {message}")]
    Backend {
        /// The request that failed.
        operation: &'static str,
        /// What the server or the connection said.
        message: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
    /// The local filesystem failed.
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// A record's version as its backend knows it (an S3 ETag, a digest of the content on the
/// filesystem): opaque, compared, never parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub(crate) String);

/// What a conditional record write requires of the record's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// The record must not exist yet.
    Create,
    /// The record must still be at this version.
    Update(Version),
}

/// The result type of storage operations.
pub type Result<T> = std::result::Result<T, Error>;

/// An inclusive byte range `start..=end` within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range (saturating: a range is built only from checked numbers).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }

    /// Never true: a range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One piece of stored content, as a listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// Told an upload session's size each time more of an append is stored and readable.
pub type OnWritten<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// A content-addressed store with upload sessions and small records.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// The size of a blob, or `None` when it is not stored.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Streams a blob of `size` bytes (the size its link records), or the given range of it;
    /// `NotFound` when absent, `Corrupt` when the stored object is not `size` bytes long, so a
    /// short or long object is never served as complete.
    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream>;
    /// Reads a small blob (a manifest) whole, as stored; `NotFound` when absent. Backends
    /// implement this; callers use [`Storage::blob_read_small`].
    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes>;
    /// Reads a small blob whole, checked against its digest: `Corrupt` when the stored bytes do
    /// not hash to it (cheap: these are manifests and small blobs).
    async fn blob_read_small(&self, digest: &Digest) -> Result<Bytes> {
        let bytes = self.blob_read_small_unverified(digest).await?;
        if !digest.matches(&bytes) {
            return Err(Error::Corrupt(format!("the stored bytes of {digest} do not hash to it")));
        }
        Ok(bytes)
    }
    /// A URL the client may download the blob from directly, when the backend offers one.
    async fn blob_url(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
    /// Stores small content whose digest the caller computed from exactly these bytes. Whatever
    /// was stored under the digest before is replaced unless it is byte-identical.
    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()>;

    /// One page of stored content in digest order: at most `limit` entries after `after` (a
    /// digest's string form), so a collector walks any number of blobs in bounded memory.
    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>>;
    /// Removes content; returns whether it was there. Only the collector calls this, under
    /// the protocol of [`uses`], which keeps content anyone is about to use.
    async fn blob_delete(&self, digest: &Digest) -> Result<bool>;

    /// Creates an empty upload session holding `state` (opaque to storage).
    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()>;
    /// The session's state record; `NotFound` when there is no such session or it is sealed.
    async fn upload_state(&self, id: &UploadId) -> Result<Bytes>;
    /// Seals a session for its finish, exactly once across every process sharing the store:
    /// afterwards [`Storage::upload_state`] answers `NotFound`, so no other request can use it;
    /// a second seal gets `Conflict` (or `NotFound`).
    async fn upload_seal(&self, id: &UploadId) -> Result<()>;
    /// Appends a stream to the session's data and returns the new size. Appends to one session
    /// must not overlap in one process (the registry holds the session's lock); on a store
    /// shared by several processes each stored piece is written once, so an append racing
    /// another replica's at the same offset fails with `Conflict` instead of overwriting it.
    async fn upload_append(&self, id: &UploadId, body: ByteStream) -> Result<u64> {
        self.upload_append_observed(id, body, &|_| {}).await
    }
    /// [`Storage::upload_append`] that tells `on_written` the session's size each time more of
    /// the stream is stored and readable, so a fill's readers can follow one long append.
    async fn upload_append_observed(&self, id: &UploadId, body: ByteStream, on_written: OnWritten<'_>) -> Result<u64>;
    /// How many appended bytes the backend may hold in memory before they become readable
    /// (S3 gathers a whole segment); a fill keeps that many more bytes in its window.
    fn append_buffer_bytes(&self) -> u64 {
        0
    }
    /// The number of bytes received so far.
    async fn upload_size(&self, id: &UploadId) -> Result<u64>;
    /// Streams the data received so far, or a range of it (to re-hash it after a restart, or to
    /// serve a fill in progress).
    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream>;
    /// Makes exactly the first `size` bytes of the session's data durable under `digest` (the
    /// caller verified those bytes, and only those, against it), replacing whatever was stored
    /// under the digest unless it is already `size` bytes long, then removes the session.
    /// `Corrupt` when the session does not hold exactly that prefix.
    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()>;
    /// Removes a session and its data; absent sessions are not an error.
    async fn upload_delete(&self, id: &UploadId) -> Result<()>;
    /// Every session with the time of its last write, for purging abandoned ones.
    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>>;

    /// Removes the backend's own leftovers older than `cutoff` (for S3, multipart uploads a crash
    /// left incomplete); returns how many.
    async fn cleanup(&self, _cutoff: SystemTime) -> Result<usize> {
        Ok(0)
    }

    /// Reads a record.
    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>>;
    /// Writes a record atomically: readers see the old value or the new one, never a mix.
    /// Concurrent writers: the last one wins.
    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()>;
    /// Reads a record with its version, for a later [`Storage::record_put_if`].
    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>>;
    /// Writes a record only if it is in the state `mode` requires, in one atomic step (one
    /// conditional request on S3, under a file lock on the filesystem): of two writers racing
    /// from the same state, one succeeds and the other gets `Conflict`. Returns the new version.
    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version>;
    /// Deletes a record; returns whether it existed.
    async fn record_delete(&self, key: &Key) -> Result<bool>;
    /// The names directly below `prefix`, sorted.
    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>>;
    /// One page of the records (not sub-folders) directly below `prefix`, sorted by name: at
    /// most `limit` names after `after`, and whether more follow. One listing request on S3
    /// however many records there are.
    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<ListPage>;
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The names, sorted.
    pub names: Vec<String>,
    /// Whether more names follow the last one.
    pub more: bool,
}

impl ListPage {
    /// The page of sorted `names` after `after`, at most `limit` long.
    pub fn of(names: impl IntoIterator<Item = String>, after: Option<&str>, limit: usize) -> Self {
        let mut names: Vec<String> = names.into_iter().filter(|n| after.is_none_or(|a| n.as_str() > a)).collect();
        let more = names.len() > limit;
        names.truncate(limit);
        Self { names, more }
    }
}
