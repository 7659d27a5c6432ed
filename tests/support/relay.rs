//! A TCP relay between "regions" for the replication tests and benchmark. It forwards each
//! connection to a target port on 127.0.0.1, holding every chunk back for a fixed latency in
//! each direction (this kernel has no `netem` qdisc, and Debian has no toxiproxy), optionally
//! capping each direction's bandwidth, and optionally answering the first N connections with
//! `HTTP 500` instead of relaying them: a destination failing on purpose, which no real
//! registry does on demand (the one fake here, and only for that). Runs on its own thread and
//! runtime, so synchronous benchmarks and async tests both use it. Shared through `#[path]`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the relay treats traffic.
#[derive(Debug, Clone, Default)]
pub struct RelaySettings {
    /// Added to every chunk, each way.
    pub latency: Duration,
    /// Bytes per second each way, per connection (`None`: as fast as loopback).
    pub bytes_per_sec: Option<u64>,
    /// Connections answered `500 Internal Server Error` before any is relayed.
    pub fail_first: usize,
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// The port clients connect to.
    pub port: u16,
    /// Connections answered with 500 so far.
    pub failed: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays `127.0.0.1:<port>` to `127.0.0.1:<target>`.
    pub fn start(target: u16, settings: RelaySettings) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let failed = Arc::new(AtomicUsize::new(0));
        let counted = failed.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::pin!(stopped);
                loop {
                    let (client, _) = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    let _ = client.set_nodelay(true);
                    if counted.load(Ordering::SeqCst) < settings.fail_first {
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(refuse(client));
                        continue;
                    }
                    let settings = settings.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let up = tokio::spawn(pump(cr, sw, settings.clone()));
                        let down = tokio::spawn(pump(sr, cw, settings));
                        let _ = tokio::join!(up, down);
                    });
                }
            });
        });
        Self { port, failed, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head, then answers 500 and closes.
async fn refuse(mut client: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
    let _ = client
        .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 58\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"failing on purpose\"}]}")
        .await;
    let _ = client.shutdown().await;
}

/// Copies one direction: each chunk is released `latency` after it was read (so latency adds
/// to every round trip but does not cut throughput), at most `bytes_per_sec`.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, s: RelaySettings) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(256);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + s.latency;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if let Some(rate) = s.bytes_per_sec {
            let allowed_at = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(allowed_at).await;
        }
        if to.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let _ = to.shutdown().await;
    reader.abort();
}
