//! Single-flight fills: one upstream fetch per digest, whose bytes go to every client that
//! asked for the digest and into an upload session in storage at the same time. Clients keeping
//! up read the latest bytes from a bounded in-memory window; late arrivals and slow readers
//! read what they missed from storage, then catch up with the window: every reader gets the
//! bytes already received at once, and memory grows with the number of fills, never with blob
//! size.
//! The fill runs on its own task, so it completes even when every client has gone. A client's
//! response never ends before the digest is verified: its last byte is held back until then,
//! so a failed fill aborts every response (never a short or corrupt body presented as complete)
//! and leaves nothing stored.

use super::upstream;
use super::Rule;
use crate::metrics::Metrics;
use crate::oci::{Digest, Hasher};
use crate::storage::uses::ContentUses;
use crate::storage::{self, ByteRange, ByteStream, Storage, UploadId};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Incoming upstream bytes are appended to storage in batches of up to this size, or of what
/// arrived within [`BATCH_WAIT`] when the upstream is slower.
const BATCH: usize = 1 << 20;
/// The longest a received byte waits before it is stored and readers can see it.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(2);
/// The most recent bytes of a fill kept in memory for readers that keep up.
const WINDOW: u64 = 32 << 20;

/// The latest received chunks of a fill, by offset. Chunks leave only once they are in storage.
#[derive(Debug, Default)]
pub struct Window {
    chunks: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Window {
    fn push(&self, offset: u64, bytes: Bytes) {
        if let Ok(mut c) = self.chunks.lock() {
            c.push_back((offset, bytes));
        }
    }

    /// Drops chunks that are in storage (end ≤ `written`) while more than `keep` bytes are held;
    /// returns the bytes still held.
    fn trim(&self, written: u64, keep: u64) -> u64 {
        let Ok(mut c) = self.chunks.lock() else { return 0 };
        let mut held: u64 = c.iter().map(|(_, b)| b.len() as u64).sum();
        while held > keep {
            match c.front() {
                Some((off, b)) if off.saturating_add(b.len() as u64) <= written => {
                    held = held.saturating_sub(b.len() as u64);
                    c.pop_front();
                }
                _ => break,
            }
        }
        held
    }

    /// The bytes from `pos` up to `end` (exclusive) held in one chunk, if `pos` is in the window.
    fn slice(&self, pos: u64, end: u64) -> Option<Bytes> {
        let c = self.chunks.lock().ok()?;
        let (off, b) = c.iter().find(|(off, b)| *off <= pos && pos < off.saturating_add(b.len() as u64))?;
        let from = usize::try_from(pos.saturating_sub(*off)).ok()?;
        let to = usize::try_from(end.saturating_sub(*off)).unwrap_or(usize::MAX).min(b.len());
        (from < to).then(|| b.slice(from..to))
    }
}

/// Progress of one fill, as every reader sees it.
#[derive(Debug, Clone, Default)]
pub struct FillState {
    /// Whether the upstream answered and bytes may follow.
    pub started: bool,
    /// The blob's size, when the upstream sent `Content-Length`.
    pub size: Option<u64>,
    /// Bytes received from the upstream so far.
    pub received: u64,
    /// Bytes in the upload session so far (readable from storage).
    pub written: u64,
    /// The latest received bytes.
    pub window: Arc<Window>,
    /// The upload session the bytes go into.
    pub upload: Option<UploadId>,
    /// Every byte has arrived and the digest matched (storing may still be under way).
    pub verified: bool,
    /// Set when the fill ends: verified and stored, or failed.
    pub outcome: Option<Result<(), FillError>>,
}

/// Why a fill failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The upstream failed, or sent bytes that do not match the digest.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// Storing the bytes failed (shared by every reader of the fill, hence the `Arc`).
    #[error("storing the blob failed: {0}")]
    Storage(Arc<storage::Error>),
    /// The fill's own machinery failed (a task died): nothing was stored.
    #[error("the fill failed: {0}")]
    Internal(String),
}

/// Why a reader could not start.
#[derive(Debug)]
pub enum ReadError<E> {
    /// The fill failed before any byte arrived.
    Fill(FillError),
    /// The range could not be resolved against the size.
    Resolve(E),
}

/// Called once the blob is stored under its digest, to link it into the repository.
pub type OnCommit = Box<dyn FnOnce(u64) -> BoxFuture<'static, Result<(), FillError>> + Send>;

type FillMap = Arc<Mutex<HashMap<Digest, watch::Receiver<FillState>>>>;

/// The fills in progress, by digest.
pub struct Fills {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    map: FillMap,
    /// The state record of a fill's upload session (the registry owns its format): one that
    /// names no repository, so no client can address the session.
    session_state: Bytes,
    /// Content in use: a fill touches its digest before storing it.
    uses: ContentUses,
}

/// What a reader of a fill gets: the blob's size (if known) and the requested bytes.
pub struct FillReader {
    /// The whole blob's size, when known.
    pub size: Option<u64>,
    /// The range actually served, when a satisfiable one was asked for.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub body: ByteStream,
}

impl Fills {
    /// No fills yet.
    pub fn new(storage: Arc<dyn Storage>, metrics: Arc<Metrics>, session_state: Bytes, uses: ContentUses) -> Self {
        Self { storage, metrics, map: Arc::new(Mutex::new(HashMap::new())), session_state, uses }
    }

    /// Joins the fill of `digest`, starting it when there is none; returns whether it joined one.
    pub fn join(
        &self,
        rule: Arc<Rule>,
        upstream_repo: String,
        digest: &Digest,
        on_commit: OnCommit,
    ) -> (watch::Receiver<FillState>, bool) {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(rx) = map.get(digest) {
            return (rx.clone(), true);
        }
        let (tx, rx) = watch::channel(FillState::default());
        map.insert(digest.clone(), rx.clone());
        let job = FillJob {
            storage: self.storage.clone(),
            metrics: self.metrics.clone(),
            map: self.map.clone(),
            session_state: self.session_state.clone(),
            uses: self.uses.clone(),
            rule,
            upstream_repo,
            digest: digest.clone(),
        };
        tokio::spawn(job.run(tx, on_commit));
        (rx, false)
    }

    /// Waits for the fill to start, then streams `range` (resolved by `resolve` once the size is known).
    /// An upstream failure before any byte arrives is returned as an error, for a clean answer.
    pub async fn read<E>(
        &self,
        mut rx: watch::Receiver<FillState>,
        digest: &Digest,
        resolve: impl FnOnce(Option<u64>) -> Result<Option<ByteRange>, E>,
    ) -> Result<FillReader, ReadError<E>> {
        loop {
            let state = rx.borrow_and_update().clone();
            match state.outcome {
                Some(Err(e)) if !state.started => return Err(ReadError::Fill(e)),
                _ if state.started || state.outcome.is_some() => break,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(ReadError::Fill(FillError::Internal("the fill stopped without an outcome".into())));
            }
        }
        let size = rx.borrow().size;
        let range = resolve(size).map_err(ReadError::Resolve)?;
        let (start, end) = match (range, size) {
            (Some(r), _) => (r.start, Some(r.end)),
            (None, Some(s)) if s > 0 => (0, Some(s.saturating_sub(1))),
            _ => (0, None),
        };
        let reader = Reader {
            storage: self.storage.clone(),
            digest: digest.clone(),
            rx,
            pos: start,
            end,
            stored: None,
            stored_from: 0,
            done: false,
        };
        let body = futures_util::stream::unfold(reader, |mut r| async move {
            let item = r.next().await?;
            Some((item, r))
        })
        .boxed();
        Ok(FillReader { size, range, body })
    }
}

/// One reader's position in a fill.
struct Reader {
    storage: Arc<dyn Storage>,
    digest: Digest,
    rx: watch::Receiver<FillState>,
    pos: u64,
    /// Last byte wanted, inclusive; `None` when the size is unknown (read to the end).
    end: Option<u64>,
    /// What is being read from storage: the upload while the fill runs, the blob after it.
    stored: Option<ByteStream>,
    /// Where that read started.
    stored_from: u64,
    done: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if let Some(stream) = &mut self.stored {
                match stream.next().await {
                    Some(Ok(b)) => {
                        self.pos = self.pos.saturating_add(b.len() as u64);
                        return Some(Ok(b));
                    }
                    // The upload moved under its digest while it was read (S3 removes its
                    // segments then): read on from wherever the state says the bytes are.
                    Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => self.stored = None,
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    None => {
                        self.stored = None;
                        // Nothing there after all (the upload just went): wait for news rather
                        // than ask storage again at once.
                        if self.pos == self.stored_from && self.rx.changed().await.is_err() {
                            self.done = true;
                            return Some(Err(io::Error::other("the stored bytes ended early")));
                        }
                    }
                }
                continue;
            }
            if self.done {
                return None;
            }
            let state = self.rx.borrow_and_update().clone();
            match &state.outcome {
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(io::Error::other(format!("upstream fill failed: {e}"))));
                }
                Some(Ok(())) => {
                    // Verified and stored: the rest comes from the blob itself.
                    let last = self.end.unwrap_or(u64::MAX).min(state.written.saturating_sub(1));
                    if state.written == 0 || self.pos > last {
                        self.done = true;
                        return None;
                    }
                    if let Err(e) = self.open_stored(false, last).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                None => {
                    // Hold back the response's last byte until the digest is verified: with a
                    // known end, that byte; otherwise the last byte received so far.
                    let got = state.received;
                    let readable = match self.end {
                        _ if state.verified && got > 0 => Some(got.saturating_sub(1).min(self.end.unwrap_or(u64::MAX))),
                        Some(end) if end > 0 && got > 0 => Some(got.saturating_sub(1).min(end.saturating_sub(1))),
                        None if got >= 2 => Some(got.saturating_sub(2)),
                        _ => None,
                    };
                    if state.verified && readable.is_none_or(|last| self.pos > last) {
                        self.done = true;
                        return None;
                    }
                    if let Some(last) = readable.filter(|last| self.pos <= *last) {
                        // Keeping up: straight from memory. Behind the window: from storage, as
                        // far as it holds the bytes now.
                        if let Some(b) = state.window.slice(self.pos, last.saturating_add(1)) {
                            self.pos = self.pos.saturating_add(b.len() as u64);
                            return Some(Ok(b));
                        }
                        if self.pos < state.written {
                            match self.open_stored(true, last.min(state.written.saturating_sub(1))).await {
                                Ok(()) => continue,
                                // Moved under its digest (or removed) meanwhile: look at the state again.
                                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                                Err(e) => {
                                    self.done = true;
                                    return Some(Err(e));
                                }
                            }
                        }
                    }
                    if self.rx.changed().await.is_err() && self.rx.borrow().outcome.is_none() {
                        self.done = true;
                        return Some(Err(io::Error::other("the fill stopped without an outcome")));
                    }
                }
            }
        }
    }

    /// Starts reading `pos..=last` from the upload (in progress) or the blob (verified).
    async fn open_stored(&mut self, from_upload: bool, last: u64) -> io::Result<()> {
        let range = ByteRange { start: self.pos, end: last };
        let stream = if from_upload {
            let id = self.rx.borrow().upload.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            self.storage.upload_read(&id, Some(range)).await
        } else {
            let size = self.rx.borrow().written;
            self.storage.blob_read(&self.digest, Some(range), size).await
        };
        self.stored_from = self.pos;
        self.stored = Some(stream.map_err(|e| match e {
            storage::Error::NotFound => io::Error::from(io::ErrorKind::NotFound),
            e => io::Error::other(e.to_string()),
        })?);
        Ok(())
    }
}

/// The task that fetches one blob.
struct FillJob {
    storage: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
    map: FillMap,
    session_state: Bytes,
    uses: ContentUses,
    rule: Arc<Rule>,
    upstream_repo: String,
    digest: Digest,
}

impl FillJob {
    async fn run(self, tx: watch::Sender<FillState>, on_commit: OnCommit) {
        self.metrics.cache.fills_in_progress.inc();
        let mut upload = None;
        let result = self.fetch(&tx, &mut upload).await;
        let result = match result {
            Ok(size) => on_commit(size).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(rule = self.rule.label(), repository = %self.upstream_repo, digest = %self.digest, error = %e, "upstream fill failed; nothing stored");
            if let Some(id) = upload {
                let _ = self.storage.upload_delete(&id).await;
            }
        }
        // Out of the map before the outcome is published, so a request that sees the outcome
        // and asks again either finds the blob stored or starts afresh.
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.digest);
        }
        tx.send_modify(|s| s.outcome = Some(result));
        // Readers now read the stored blob (or stop): the window's memory can go.
        tx.borrow().window.trim(u64::MAX, 0);
        self.metrics.cache.fills_in_progress.dec();
    }

    /// Fetches the blob in stages: open the upstream response and the upload session, receive
    /// (feeding the window, the hasher and the writer), then verify and commit.
    async fn fetch(&self, tx: &watch::Sender<FillState>, upload: &mut Option<UploadId>) -> Result<u64, FillError> {
        let blob = self.rule.upstream.blob(&self.upstream_repo, &self.digest).await?;
        let id = UploadId::new();
        // A fill's session names no repository, so no client can append to it.
        self.storage.upload_create(&id, self.session_state.clone()).await.map_err(stored)?;
        *upload = Some(id);
        tx.send_modify(|s| {
            s.started = true;
            s.size = blob.size;
            s.upload = Some(id);
        });
        // One append for the whole fill, fed batch by batch, reports what is stored as it goes;
        // a hasher thread runs beside it. Both are off the receiving path, and every stage
        // shares the received buffers: nothing is copied between them.
        let (to_hash, hasher) = spawn_hasher(&self.digest);
        let (batches, writer) = spawn_writer(self.storage.clone(), id, tx.clone());
        let received = self.receive(blob.body, blob.size, tx, &to_hash, &batches).await?;
        drop(batches);
        drop(to_hash);
        let written = match writer.await {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(stored(e)),
            Err(e) => return Err(FillError::Internal(e.to_string())),
        };
        if written != received {
            return Err(stored(storage::Error::Corrupt(format!("stored {written} of {received} bytes"))));
        }
        if let Some(size) = blob.size.filter(|s| *s != written) {
            return Err(self.invalid(format!("it sent {written} bytes of {size}")));
        }
        let actual = hasher.await.map_err(|e| FillError::Internal(e.to_string()))?;
        if actual != self.digest {
            return Err(self.invalid(format!("its bytes hash to {actual}, not {}", self.digest)));
        }
        // Readers may finish now; storing durably under the digest happens behind them.
        tx.send_modify(|s| s.verified = true);
        // In use from now: a collector cannot remove it between the commit and the link.
        self.uses.touch(&self.digest).await.map_err(stored)?;
        self.storage.upload_commit(&id, &self.digest, written).await.map_err(stored)?;
        *upload = None;
        Ok(written)
    }

    fn invalid(&self, message: String) -> FillError {
        FillError::Upstream(upstream::Error::Invalid(self.rule.upstream.base().to_owned(), message))
    }

    /// Receives the upstream's bytes in batches, hands each to the window, the hasher and the
    /// writer, and holds the window to its bound; returns how many bytes arrived.
    async fn receive(
        &self,
        mut body: ByteStream,
        size: Option<u64>,
        tx: &watch::Sender<FillState>,
        to_hash: &tokio::sync::mpsc::Sender<Vec<Bytes>>,
        batches: &tokio::sync::mpsc::Sender<Vec<Bytes>>,
    ) -> Result<u64, FillError> {
        let window = tx.borrow().window.clone();
        let window_limit = WINDOW.saturating_add(self.storage.append_buffer_bytes());
        let mut progress = tx.subscribe();
        let mut received = 0u64;
        let unreachable = |e: io::Error| {
            FillError::Upstream(upstream::Error::Unreachable(self.rule.upstream.base().to_owned(), e.to_string()))
        };
        loop {
            let (batch, ended) = next_batch(&mut body).await.map_err(unreachable)?;
            let mut offset = received;
            for chunk in &batch {
                window.push(offset, chunk.clone());
                offset = offset.saturating_add(chunk.len() as u64);
            }
            received = offset;
            if let Some(size) = size.filter(|s| received > *s) {
                return Err(self.invalid(format!("it sent more than its Content-Length of {size}")));
            }
            tx.send_modify(|s| s.received = received);
            if batch.is_empty() && ended {
                return Ok(received);
            }
            if to_hash.send(batch.clone()).await.is_err() || batches.send(batch).await.is_err() {
                return Ok(received);
            }
            // Keep the window bounded: wait for the writer when storage falls behind.
            while window.trim(progress.borrow_and_update().written, window_limit) > window_limit {
                tokio::select! {
                    changed = progress.changed() => if changed.is_err() { break },
                    // The writer stopped (storage failed): its error is reported after.
                    () = batches.closed() => break,
                }
            }
            if ended {
                return Ok(received);
            }
        }
    }
}

fn stored(e: storage::Error) -> FillError {
    FillError::Storage(Arc::new(e))
}

/// The next batch of the upstream's bytes: what arrives within [`BATCH_WAIT`] of the first
/// chunk, up to [`BATCH`] (few wake-ups per megabyte, yet readers see bytes at once), and
/// whether the body ended.
async fn next_batch(body: &mut ByteStream) -> io::Result<(Vec<Bytes>, bool)> {
    let mut batch = Vec::new();
    let mut len: usize = 0;
    match body.next().await {
        Some(b) => {
            let b = b?;
            len = len.saturating_add(b.len());
            batch.push(b);
        }
        None => return Ok((batch, true)),
    }
    let deadline = tokio::time::Instant::now().checked_add(BATCH_WAIT).unwrap_or_else(tokio::time::Instant::now);
    while len < BATCH {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(b)) => {
                let b = b?;
                len = len.saturating_add(b.len());
                batch.push(b);
            }
            Ok(None) => {
                batch.retain(|b| !b.is_empty());
                return Ok((batch, true));
            }
            Err(_) => break,
        }
    }
    batch.retain(|b| !b.is_empty());
    Ok((batch, false))
}

/// A hasher on a blocking thread, fed batches; yields the digest once the sender is dropped.
fn spawn_hasher(digest: &Digest) -> (tokio::sync::mpsc::Sender<Vec<Bytes>>, tokio::task::JoinHandle<Digest>) {
    let (to_hash, mut hash_queue) = tokio::sync::mpsc::channel::<Vec<Bytes>>(8);
    let mut hasher = Hasher::new(digest.algorithm());
    let task = tokio::task::spawn_blocking(move || {
        while let Some(batch) = hash_queue.blocking_recv() {
            for chunk in &batch {
                hasher.update(chunk);
            }
        }
        hasher.finish()
    });
    (to_hash, task)
}

/// One append into the upload session for the whole fill, fed batches, publishing what is
/// stored (and so readable) as it goes.
fn spawn_writer(
    storage: Arc<dyn Storage>,
    id: UploadId,
    tx: watch::Sender<FillState>,
) -> (tokio::sync::mpsc::Sender<Vec<Bytes>>, tokio::task::JoinHandle<storage::Result<u64>>) {
    let (batches, queue) = tokio::sync::mpsc::channel::<Vec<Bytes>>(4);
    let task = tokio::spawn(async move {
        let stream = futures_util::stream::unfold(queue, |mut q| async move {
            let batch = q.recv().await?;
            Some((futures_util::stream::iter(batch.into_iter().map(Ok)), q))
        })
        .flatten()
        .boxed();
        storage.upload_append_observed(&id, stream, &|written| tx.send_modify(|s| s.written = written)).await
    });
    (batches, task)
}
