//! What one client may hold at once, and how long it may keep it without making progress:
//! the global and per-client in-flight limits (one guard counts both, and the gauge with
//! them), per-client open upload sessions, an idle timeout on request bodies, and a stall
//! timeout on writes to the socket. Owns no registry rules; knows only addresses and counts.

use crate::storage::{ByteStream, UploadId};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every in-flight permit is taken.
    Global,
    /// This client already has its share of requests in flight.
    Client,
}

impl Refusal {
    /// The `reason` label of `ferry_http_requests_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global_limit",
            Self::Client => "client_limit",
        }
    }
}

/// Counts per client address, up to a limit each.
#[derive(Debug)]
struct PerClient {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, counts: Mutex::new(HashMap::new()) })
    }

    fn try_take(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n = n.saturating_add(1);
        Some(ClientSlot { owner: self.clone(), client })
    }

    fn release(&self, client: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&client);
            }
        }
    }
}

/// One client's share of a per-client limit, given back when dropped.
#[derive(Debug)]
struct ClientSlot {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.owner.release(self.client);
    }
}

/// A request's permits: global, per client, and the in-flight gauge, all held until the
/// response body ends (or is dropped), and all released together.
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The in-flight limits of one listener.
pub struct RequestLimits {
    global: Arc<Semaphore>,
    per_client: Arc<PerClient>,
    gauge: prometheus::IntGauge,
    /// When a refusal was last logged (ms since `epoch`), and how many since.
    last_logged_ms: AtomicU64,
    refused_since_log: AtomicU64,
    epoch: Instant,
}

impl RequestLimits {
    /// `global` requests at once, at most `per_client` of them from one address.
    pub fn new(global: usize, per_client: usize, gauge: prometheus::IntGauge) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global)),
            per_client: PerClient::new(per_client),
            gauge,
            last_logged_ms: AtomicU64::new(0),
            refused_since_log: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Takes a permit for a request from `client`; the gauge counts it from now on.
    pub fn admit(&self, client: IpAddr) -> Result<InFlight, Refusal> {
        let slot = self.per_client.try_take(client).ok_or(Refusal::Client)?;
        let permit = self.global.clone().try_acquire_owned().map_err(|_| Refusal::Global)?;
        self.gauge.inc();
        Ok(InFlight { _permit: permit, _slot: slot, gauge: self.gauge.clone() })
    }

    /// Logs a refusal at most once a second, with how many there were since the last line.
    pub fn log_refusal(&self, client: IpAddr, why: Refusal) {
        let refused = self.refused_since_log.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self.last_logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.refused_since_log.store(0, Ordering::Relaxed);
            tracing::warn!(%client, reason = why.as_str(), refused, "refusing requests: too many in flight");
        }
    }
}

/// Request bodies read before their sender is known (an ECR API body, which the signature
/// covers): bytes reserved before a byte is read, per client address, per access key id the
/// request names (key ids are not secrets: whoever floods with one holds only that key's
/// share) and in total, so unauthenticated clients can hold only this much memory, and nothing
/// else, between them.
pub struct UnverifiedBodies {
    /// In KiB, so a semaphore's permit count fits any configured total.
    total: Arc<Semaphore>,
    per_owner_max: u64,
    held: Mutex<HashMap<BodyOwner, u64>>,
    gauge: prometheus::IntGauge,
}

/// Who a share of the unverified budget is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BodyOwner {
    Client(IpAddr),
    Key(String),
}

/// Bytes reserved for one unverified body, given back when dropped.
pub struct UnverifiedReservation {
    _permit: OwnedSemaphorePermit,
    owner: Arc<UnverifiedBodies>,
    counted: [BodyOwner; 2],
    bytes: u64,
}

impl Drop for UnverifiedReservation {
    fn drop(&mut self) {
        self.owner.gauge.sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        for who in &self.counted {
            if let Some(n) = held.get_mut(who) {
                *n = n.saturating_sub(self.bytes);
                if *n == 0 {
                    held.remove(who);
                }
            }
        }
    }
}

impl UnverifiedBodies {
    /// At most `total` bytes in all, `per_owner` from one address and for one access key.
    pub fn new(total: u64, per_owner: u64, gauge: prometheus::IntGauge) -> Arc<Self> {
        let kib = usize::try_from(total.div_ceil(1024)).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            total: Arc::new(Semaphore::new(kib)),
            per_owner_max: per_owner,
            held: Mutex::new(HashMap::new()),
            gauge,
        })
    }

    /// Reserves `bytes` for a body from `client` signed (in form) with `key`, or `None` when
    /// any of the three budgets is spent.
    pub fn reserve(self: &Arc<Self>, client: IpAddr, key: &str, bytes: u64) -> Option<UnverifiedReservation> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        let counted = [BodyOwner::Client(client), BodyOwner::Key(key.to_owned())];
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for who in &counted {
            if held.get(who).copied().unwrap_or(0).checked_add(bytes)? > self.per_owner_max {
                return None;
            }
        }
        let permit = self.total.clone().try_acquire_many_owned(kib).ok()?;
        for who in &counted {
            let n = held.entry(who.clone()).or_insert(0);
            *n = n.saturating_add(bytes);
        }
        self.gauge.add(i64::try_from(bytes).unwrap_or(i64::MAX));
        Some(UnverifiedReservation { _permit: permit, owner: self.clone(), counted, bytes })
    }
}

/// Open upload sessions per client address, so one client cannot open sessions without end.
/// Sessions finished or cancelled elsewhere (another replica) are dropped at the next purge.
pub struct UploadLimits {
    max: usize,
    sessions: Mutex<HashMap<IpAddr, HashSet<UploadId>>>,
}

impl UploadLimits {
    /// At most `max` open sessions per client.
    pub fn new(max: usize) -> Self {
        Self { max, sessions: Mutex::new(HashMap::new()) }
    }

    /// Whether `client` may open one more session.
    pub fn may_open(&self, client: IpAddr) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.get(&client).map_or(0, HashSet::len) < self.max
    }

    /// Counts a session `client` opened.
    pub fn opened(&self, client: IpAddr, id: UploadId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.entry(client).or_default().insert(id);
    }

    /// Stops counting a session (finished, cancelled, failed).
    pub fn closed(&self, id: &UploadId) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, ids| {
            ids.remove(id);
            !ids.is_empty()
        });
    }

    /// Keeps only the sessions `exists` says are still in storage.
    pub fn retain(&self, exists: impl Fn(&UploadId) -> bool) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, ids| {
            ids.retain(|id| exists(id));
            !ids.is_empty()
        });
    }
}

/// A request body that fails with `TimedOut` when no byte arrives for `timeout`, so a client
/// that announces a body and goes silent gives its permit back.
pub fn body_idle_timeout(body: ByteStream, timeout: Duration) -> ByteStream {
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(timeout, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no byte of the request body arrived for {}s", timeout.as_secs_f64()),
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// A connection whose writes fail with `TimedOut` once the peer has accepted no byte for
/// `timeout`: a client that stops reading a response cannot hold its connection, permit and
/// buffers for ever. Reads are untouched (the header and body timeouts cover them).
pub struct StallTimeout<T> {
    inner: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallTimeout<T> {
    /// Wraps a connection.
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self { inner, timeout, stalled: None }
    }

    /// After a write returned `Pending`: start the clock, or fail once it ran out.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {}s", timeout.as_secs_f64()),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx).map(Err),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.track(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.track(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.track(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_and_global_limits_count_the_same_permits() {
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let limits = RequestLimits::new(3, 2, gauge.clone());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::Client));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Global));
        assert_eq!(gauge.get(), 3);
        drop(a1);
        assert_eq!(gauge.get(), 2);
        assert!(limits.admit(b).is_ok(), "a permit given back is free again");
        assert_eq!(gauge.get(), 2, "the permit taken above was dropped at once");
    }

    #[test]
    fn upload_sessions_per_client() {
        let limits = UploadLimits::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let (x, y) = (UploadId::new(), UploadId::new());
        limits.opened(a, x);
        assert!(limits.may_open(a));
        limits.opened(a, y);
        assert!(!limits.may_open(a));
        assert!(limits.may_open("127.0.0.3".parse().unwrap()));
        limits.closed(&x);
        assert!(limits.may_open(a));
        limits.opened(a, x);
        limits.retain(|id| *id != y);
        assert!(limits.may_open(a));
    }

    #[test]
    fn unverified_bodies_are_bounded_per_client_per_key_and_in_total() {
        // The total is kept in KiB.
        const K: u64 = 1024;
        let gauge = prometheus::IntGauge::new("t", "t").unwrap();
        let budget = UnverifiedBodies::new(100 * K, 40 * K, gauge.clone());
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let first = budget.reserve(a, "K1", 30 * K).unwrap();
        assert!(budget.reserve(a, "K2", 11 * K).is_none(), "past the client's share");
        assert!(budget.reserve(b, "K1", 11 * K).is_none(), "past the key's share, from another address");
        let second = budget.reserve(b, "K2", 40 * K).unwrap();
        assert_eq!(gauge.get(), 70 * 1024);
        let _third = budget.reserve(c, "K3", 20 * K).unwrap();
        assert!(budget.reserve(c, "K4", 10 * K).is_some(), "the total has room for 10 more (given back at once)");
        assert!(budget.reserve("127.0.0.4".parse().unwrap(), "K5", 11 * K).is_none(), "past the total");
        drop(first);
        drop(second);
        assert_eq!(gauge.get(), 20 * 1024);
        assert!(budget.reserve(a, "K1", 40 * K).is_some(), "shares come back when dropped");
    }
}
