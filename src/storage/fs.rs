//! The embedded default backend: a directory on the local filesystem.
//!
//! Writes go to a temporary file that is fsynced and renamed into place, so a crash never
//! leaves partial content under a digest or a half-written record.
//!
//! A directory keeps no sorted order, so a page of records needs the whole directory. The
//! sorted names of directories listed recently are kept in memory ([`Listings`]) with the
//! directory's modification time when read; a page of a directory whose time has not changed
//! is a binary search. Any write into the directory (by this process or another on the same
//! `data_dir`) changes its time; a listing is kept only when the directory had been still for
//! [`SETTLED`] before it was read ([`SETTLED_WHOLE_SECONDS`] when its time has no fraction of
//! a second), so a write landing in the same timestamp tick as the one the kept time shows
//! cannot be missed. This assumes a local filesystem, whose timestamps come
//! from this machine's clock.

use super::keys::{self, UploadObject};
use super::{
    ByteRange, ByteStream, Error, Key, ListPage, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version,
};
use crate::oci::Digest;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use std::io::{self, Write};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Incoming bytes are gathered into writes of this size, one blocking write in flight at a time.
const WRITE_CHUNK: usize = 1 << 20;
/// Outgoing blobs are read in chunks of this size, one chunk read ahead of the one being sent.
const READ_CHUNK: usize = 512 * 1024;

/// How long a directory must have been still before its listing is kept: far longer than a
/// filesystem timestamp's tick (ext4, XFS, btrfs and tmpfs keep nanoseconds, updated every few
/// milliseconds).
const SETTLED: std::time::Duration = std::time::Duration::from_millis(200);

/// The same, for a directory whose time has no fraction of a second: likely a filesystem that
/// keeps whole seconds (ext3, FAT, some network filesystems), where a later write in the same
/// second would leave the time unchanged.
const SETTLED_WHOLE_SECONDS: std::time::Duration = std::time::Duration::from_millis(2500);

/// Record names kept in memory at most, over all directories.
const LISTED_NAMES_KEPT: u64 = 500_000;

/// A directory's records, sorted, as of its modification time.
struct Listing {
    modified: SystemTime,
    names: Vec<String>,
}

/// Sorted listings of directories, each valid while the directory's time is unchanged.
#[derive(Clone)]
struct Listings(moka::sync::Cache<PathBuf, std::sync::Arc<Listing>>);

impl Listings {
    fn new() -> Self {
        Self(
            moka::sync::Cache::builder()
                .weigher(|_, l: &std::sync::Arc<Listing>| u32::try_from(l.names.len()).unwrap_or(u32::MAX).max(1))
                .max_capacity(LISTED_NAMES_KEPT)
                .build(),
        )
    }

    /// The records of `dir`, sorted: kept ones while the directory is unchanged, else read.
    fn records(&self, dir: &Path) -> io::Result<std::sync::Arc<Listing>> {
        let modified = match std::fs::metadata(dir) {
            Ok(m) => m.modified()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(std::sync::Arc::new(Listing { modified: SystemTime::UNIX_EPOCH, names: Vec::new() }))
            }
            Err(e) => return Err(e),
        };
        if let Some(kept) = self.0.get(dir).filter(|l| l.modified == modified) {
            return Ok(kept);
        }
        let whole_seconds = modified.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|t| t.subsec_nanos() == 0);
        let needed = if whole_seconds { SETTLED_WHOLE_SECONDS } else { SETTLED };
        let settled = SystemTime::now().duration_since(modified).is_ok_and(|still| still >= needed);
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(std::sync::Arc::new(Listing { modified, names }))
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if !name.starts_with('.') && entry.file_type()?.is_file() {
                names.push(name);
            }
        }
        names.sort_unstable();
        let listing = std::sync::Arc::new(Listing { modified, names });
        // A write during the read changes the time again, so the next call reads afresh.
        if settled {
            self.0.insert(dir.to_owned(), listing.clone());
        }
        Ok(listing)
    }
}

/// Filesystem storage rooted at one directory.
#[derive(Clone)]
pub struct FsStorage {
    root: PathBuf,
    listings: Listings,
}

impl std::fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStorage").field("root", &self.root).finish_non_exhaustive()
    }
}

fn not_found_as(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NotFound
    } else {
        Error::Io(e)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// A record's version on the filesystem: a digest of its content (so a conditional write needs
/// no side file to say which version is current).
fn content_version(bytes: &[u8]) -> Version {
    Version(crate::oci::Digest::sha256_of(bytes).hex()[..32].to_owned())
}

/// Writes `bytes` to a temporary file beside nothing that can be served, fsyncs it, and renames it to `dest`.
fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write_renamed(tmp_dir, dest, bytes, true)
}

/// [`write_atomic`], with the fsyncs only when `durable`: records whose loss in a power cut is
/// safe ([`Key::is_volatile`]) skip them, which is most of a collection's cost on a disk.
fn write_renamed(tmp_dir: &Path, dest: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    // Always under `tmp/`, which start-up empties: a process killed between the create and the
    // rename leaves nothing anywhere else.
    let tmp = tmp_dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let result = (|| {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dest)?;
        if durable {
            sync_dir(dest.parent())?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: Option<&Path>) -> io::Result<()> {
    match dir {
        Some(d) => std::fs::File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// Opens `path` positioned at the range's start; returns the file, how many bytes to read, and
/// the file's whole length.
async fn open_range(path: PathBuf, range: Option<ByteRange>) -> Result<(std::fs::File, u64, u64)> {
    blocking(move || {
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let (start, len) = match range {
            Some(r) => (r.start, r.len().min(size.saturating_sub(r.start))),
            None => (0, size),
        };
        file.seek(io::SeekFrom::Start(start))?;
        Ok((file, len, size))
    })
    .await
    .map_err(not_found_as)
}

/// Writes every buffer, in order, with as few `writev` calls as the kernel allows.
// The arithmetic is on lengths of buffers in memory and on what the kernel says it wrote, which
// never exceeds them; no number here comes from a client.
#[allow(clippy::arithmetic_side_effects)]
fn write_all_vectored(file: &mut std::fs::File, mut bufs: Vec<Bytes>) -> io::Result<()> {
    // The kernel takes at most IOV_MAX (1024) buffers per call.
    const MAX_BUFS: usize = 1024;
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> = bufs[first..].iter().take(MAX_BUFS).map(|b| io::IoSlice::new(b)).collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let len = bufs[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                bytes::Buf::advance(&mut bufs[first], n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Streams `len` bytes from `file`'s current position. Each chunk is read on the blocking pool
/// while the previous one is being sent, so disk and network overlap; at most two chunks are
/// held per stream, whatever the blob's size.
fn read_ahead(file: std::fs::File, len: u64) -> ByteStream {
    fn read_chunk(mut file: std::fs::File, n: usize) -> tokio::task::JoinHandle<io::Result<(std::fs::File, Bytes)>> {
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(n);
            (&mut file).take(n as u64).read_to_end(&mut buf)?;
            Ok((file, Bytes::from(buf)))
        })
    }
    let chunk = |remaining: u64| usize::try_from(remaining).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
    let first = (len > 0).then(|| read_chunk(file, chunk(len)));
    futures_util::stream::unfold((first, len), move |(next, remaining)| async move {
        let pending = next?;
        let (file, bytes) = match pending.await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Some((Err(e), (None, 0))),
            Err(e) => return Some((Err(io::Error::other(e)), (None, 0))),
        };
        if bytes.is_empty() {
            // The file is shorter than its recorded size: fail rather than end early.
            return Some((Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob ended early")), (None, 0)));
        }
        let remaining = remaining.saturating_sub(bytes.len() as u64);
        let next = (remaining > 0).then(|| read_chunk(file, chunk(remaining)));
        Some((Ok(bytes), (next, remaining)))
    })
    .boxed()
}

impl FsStorage {
    /// Opens (creating if needed) a store under `root`, and clears temporary files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let store = Self::open_beside_server(root)?;
        for entry in std::fs::read_dir(store.root.join("tmp"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(store)
    }

    /// Opens a store a running server may be using (the CLI's `ferry auth token`): its
    /// temporary files are the server's writes in progress, so they are left alone.
    pub fn open_beside_server(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for dir in ["blobs", "repos", "uploads", "catalog", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(Self { root, listings: Listings::new() })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join(keys::blob_object(d))
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join(keys::upload_folder(id))
    }

    fn upload_path(&self, id: &UploadId, object: UploadObject) -> PathBuf {
        self.root.join(keys::upload_object(id, object))
    }

    fn record_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// The lock file of a record's conditional writes: `locks/<2 hex>`, by the key's hash.
    fn lock_path(&self, key: &Key) -> PathBuf {
        use sha2::Digest as _;
        let stripe = sha2::Sha256::digest(key.as_str().as_bytes()).first().copied().unwrap_or(0);
        self.root.join("locks").join(format!("{stripe:02x}"))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream> {
        let (file, len, stored) = open_range(self.blob_path(digest), range).await?;
        if stored != size {
            return Err(Error::Corrupt(format!("{digest} is {stored} bytes on disk, its link records {size}")));
        }
        Ok(read_ahead(file, len))
    }

    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes> {
        Ok(tokio::fs::read(self.blob_path(digest)).await.map_err(not_found_as)?.into())
    }

    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        let dest = self.blob_path(digest);
        let tmp = self.tmp_dir();
        blocking(move || {
            // Keep what is there only when it is exactly these bytes: a file under a digest
            // that does not hash to it must never survive a write of the real content.
            match std::fs::read(&dest) {
                Ok(existing) if existing == bytes.as_ref() => return Ok(()),
                Ok(_) => tracing::warn!(path = %dest.display(), "replacing content that did not match its digest"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            write_atomic(&tmp, &dest, &bytes)
        })
        .await?;
        Ok(())
    }

    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        let root = self.root.join(keys::SHA256_BLOBS);
        let after = after.map(str::to_owned);
        Ok(blocking(move || list_blobs(&root, after.as_deref(), limit)).await?)
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()> {
        let dir = self.upload_dir(id);
        let (data, state_path) = (self.upload_path(id, UploadObject::Data), self.upload_path(id, UploadObject::State));
        let tmp = self.tmp_dir();
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(data)?;
            write_atomic(&tmp, &state_path, &state)
        })
        .await?;
        Ok(())
    }

    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        Ok(tokio::fs::read(self.upload_path(id, UploadObject::State)).await.map_err(not_found_as)?.into())
    }

    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        // A rename is atomic: exactly one caller moves `state` away; everyone else, and every
        // later `upload_state`, finds it gone.
        let (state, sealed) = (self.upload_path(id, UploadObject::State), self.upload_path(id, UploadObject::Sealed));
        blocking(move || std::fs::rename(state, sealed)).await.map_err(not_found_as)
    }

    async fn upload_append_observed(
        &self,
        id: &UploadId,
        mut body: ByteStream,
        on_written: OnWritten<'_>,
    ) -> Result<u64> {
        let path = self.upload_path(id, UploadObject::Data);
        let (file, mut size) = blocking(move || {
            let file = std::fs::OpenOptions::new().append(true).open(path)?;
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await
        .map_err(not_found_as)?;
        // One write in flight while the next is gathered, so disk and network overlap. Chunks
        // are gathered as they came (one vectored write, no copy into a bigger buffer).
        let mut file = Some(file);
        let mut in_flight: Option<tokio::task::JoinHandle<io::Result<(std::fs::File, u64)>>> = None;
        let (mut gathered, mut gathered_len) = (Vec::new(), 0usize);
        let mut incoming_error = None;
        loop {
            let done = match body.next().await {
                Some(Ok(b)) => {
                    gathered_len = gathered_len.saturating_add(b.len());
                    if !b.is_empty() {
                        gathered.push(b);
                    }
                    false
                }
                Some(Err(e)) => {
                    incoming_error = Some(e);
                    true
                }
                None => true,
            };
            if gathered_len >= WRITE_CHUNK || (done && gathered_len > 0) {
                if let Some(write) = in_flight.take() {
                    let (f, n) = write.await.map_err(io::Error::other)??;
                    size = size.saturating_add(n);
                    on_written(size);
                    file = Some(f);
                }
                let mut f = file.take().ok_or_else(|| io::Error::other("writer lost"))?;
                let (bufs, n) = (std::mem::take(&mut gathered), std::mem::take(&mut gathered_len));
                in_flight = Some(tokio::task::spawn_blocking(move || {
                    write_all_vectored(&mut f, bufs)?;
                    Ok((f, n as u64))
                }));
            }
            if done {
                break;
            }
        }
        if let Some(write) = in_flight.take() {
            let (_, n) = write.await.map_err(io::Error::other)??;
            size = size.saturating_add(n);
            on_written(size);
        }
        match incoming_error {
            Some(e) => Err(Error::Incoming(e)),
            None => Ok(size),
        }
    }

    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        Ok(tokio::fs::metadata(self.upload_path(id, UploadObject::Data)).await.map_err(not_found_as)?.len())
    }

    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        let (file, len, _) = open_range(self.upload_path(id, UploadObject::Data), range).await?;
        Ok(read_ahead(file, len))
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let (dir, data) = (self.upload_dir(id), self.upload_path(id, UploadObject::Data));
        let dest = self.blob_path(digest);
        let what = digest.to_string();
        blocking(move || {
            let file = std::fs::File::open(&data)?;
            let held = file.metadata()?.len();
            if held != size {
                // The caller verified `size` bytes; anything else must not go under the digest.
                return Ok(Err(Error::Corrupt(format!("upload for {what} holds {held} bytes, {size} were verified"))));
            }
            file.sync_all()?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Replaces whatever was there (readers holding the old file keep reading it): the
            // verified bytes always win.
            std::fs::rename(&data, &dest)?;
            sync_dir(dest.parent())?;
            std::fs::remove_dir_all(&dir).map(Ok)
        })
        .await
        .map_err(not_found_as)?
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        match tokio::fs::remove_dir_all(self.upload_dir(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        let root = self.root.join(keys::UPLOADS);
        let list = blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&root)? {
                let entry = entry?;
                let Some(id) = entry.file_name().to_str().and_then(UploadId::parse) else { continue };
                let data = root.join(keys::upload_object(&id, UploadObject::Data));
                let state = root.join(keys::upload_object(&id, UploadObject::State));
                // Last activity: the data file's modification time, else the state's, else the folder's.
                let modified = [data, state, entry.path()]
                    .iter()
                    .find_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((id, modified));
            }
            Ok(out)
        })
        .await?;
        Ok(list)
    }

    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>> {
        match tokio::fs::read(self.record_path(key)).await {
            Ok(v) => Ok(Some(v.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()> {
        let dest = self.record_path(key);
        let tmp = self.tmp_dir();
        let durable = !key.is_volatile();
        blocking(move || write_renamed(&tmp, &dest, &value, durable)).await?;
        Ok(())
    }

    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>> {
        Ok(self.record_get(key).await?.map(|v| {
            let version = content_version(&v);
            (v, version)
        }))
    }

    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        let dest = self.record_path(key);
        let tmp = self.tmp_dir();
        let lock_path = self.lock_path(key);
        let durable = !key.is_volatile();
        let what = key.as_str().to_owned();
        blocking(move || {
            let Some(parent) = dest.parent() else {
                return Ok(Err(Error::Corrupt(format!("{} is not a record path", dest.display()))));
            };
            std::fs::create_dir_all(parent)?;
            // Every conditional writer of this record takes its lock (an flock, so other
            // processes and other stores on the same directory are held too): the check and the
            // write are one step. One of 256 lock files by the key's hash, so records come and
            // go (use records, one per blob) without leaving a lock file each.
            if let Some(dir) = lock_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
            lock.lock()?;
            let current = match std::fs::read(&dest) {
                Ok(v) => Some(v),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let allowed = match (&mode, &current) {
                (PutMode::Create, None) => true,
                (PutMode::Update(v), Some(c)) => content_version(c) == *v,
                _ => false,
            };
            if !allowed {
                return Ok(Err(Error::Conflict { key: what }));
            }
            write_renamed(&tmp, &dest, &value, durable)?;
            Ok(Ok(content_version(&value)))
        })
        .await?
    }

    async fn record_delete(&self, key: &Key) -> Result<bool> {
        match tokio::fs::remove_file(self.record_path(key)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>> {
        let dir = self.record_path(prefix);
        let names = blocking(move || {
            let mut names = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
                Err(e) => return Err(e),
            };
            for entry in entries {
                if let Some(name) = entry?.file_name().to_str() {
                    if !name.starts_with('.') {
                        names.push(name.to_owned());
                    }
                }
            }
            names.sort_unstable();
            Ok(names)
        })
        .await?;
        Ok(names)
    }

    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<ListPage> {
        // A directory unchanged since it was last listed costs a stat and a binary search;
        // otherwise one pass over it (see the module docs).
        let dir = self.record_path(prefix);
        let after = after.map(str::to_owned);
        let listings = self.listings.clone();
        Ok(blocking(move || {
            let listing = listings.records(&dir)?;
            let start = after.map_or(0, |a| listing.names.partition_point(|n| n.as_str() <= a.as_str()));
            let rest = listing.names.get(start..).unwrap_or_default();
            let names = rest.iter().take(limit).cloned().collect();
            Ok(ListPage { names, more: rest.len() > limit })
        })
        .await?)
    }
}

/// A page of `blobs/sha256/<2 hex>/<hex>` in digest order after `after`: one fan-out directory
/// at a time, so a page reads a few directories however many blobs there are.
fn list_blobs(root: &Path, after: Option<&str>, limit: usize) -> io::Result<Vec<StoredBlob>> {
    let after_hex = after.and_then(|a| a.strip_prefix("sha256:")).unwrap_or("");
    let mut fans: Vec<String> = match std::fs::read_dir(root) {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.len() == 2).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    fans.sort_unstable();
    let mut out = Vec::new();
    for fan in fans.into_iter().filter(|f| after_hex.get(..2).is_none_or(|start| f.as_str() >= start)) {
        let mut names: Vec<(String, std::fs::DirEntry)> = match std::fs::read_dir(root.join(&fan)) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e)))
                .filter(|(n, _)| n.as_str() > after_hex)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in names {
            let Some(digest) = keys::blob_object_digest(&name) else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            out.push(StoredBlob {
                digest,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_the_storage_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::FsStorage::open(dir.path()).unwrap();
        super::super::contract::storage_contract(std::sync::Arc::new(store), "fs", true).await;
    }

    /// A directory's sorted listing is kept while the directory is unchanged (shown by removing
    /// a file behind the store's back and putting the directory's time back), and read again
    /// after any write into it, the store's own or another process's.
    #[tokio::test]
    async fn a_kept_listing_is_used_until_the_directory_changes() {
        use crate::oci::{RepositoryName, Tag};
        let dir = tempfile::tempdir().unwrap();
        let store = FsStorage::open(dir.path()).unwrap();
        let name = RepositoryName::parse("team/app").unwrap();
        for t in ["a", "b", "c"] {
            store.record_put(&Key::tag(&name, &Tag::parse(t).unwrap()), Bytes::from_static(b"x")).await.unwrap();
        }
        let tags_dir = dir.path().join(Key::tags(&name).as_str());
        let still = SystemTime::now() - std::time::Duration::from_secs(10);
        let set_time = |t: SystemTime| std::fs::File::open(&tags_dir).unwrap().set_modified(t).unwrap();
        set_time(still);
        let names = |page: ListPage| page.names;
        let tags = Key::tags(&name);
        let page = |after: Option<&'static str>, limit| store.record_list_page(&tags, after, limit);
        assert_eq!(names(page(None, 10).await.unwrap()), ["a", "b", "c"]);
        std::fs::remove_file(tags_dir.join("b")).unwrap();
        set_time(still);
        assert_eq!(names(page(None, 10).await.unwrap()), ["a", "b", "c"], "the kept listing");
        store.record_put(&Key::tag(&name, &Tag::parse("d").unwrap()), Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(names(page(None, 10).await.unwrap()), ["a", "c", "d"], "read again after a write");
        // Still again (at another time, as a directory's time never goes back): kept again.
        set_time(still + std::time::Duration::from_secs(1));
        assert_eq!(names(page(None, 10).await.unwrap()), ["a", "c", "d"]);
        std::fs::write(tags_dir.join("e"), b"x").unwrap();
        assert_eq!(names(page(None, 10).await.unwrap()), ["a", "c", "d", "e"], "another process's write");
        let next = page(Some("a"), 2).await.unwrap();
        assert_eq!((next.names, next.more), (vec!["c".to_owned(), "d".to_owned()], true));
        assert_eq!(names(page(Some("e"), 2).await.unwrap()), Vec::<String>::new());
    }
}
