//! The soak benchmark: one Ferry under mixed load for a bounded time (10 minutes by default;
//! `cargo bench --bench soak -- --duration 2m` for less or more): pushes (chunked and
//! monolithic), pulls that re-hash every blob they get, deletes, pull-through fills from a
//! docker-registry upstream that keeps receiving new blobs, and hostile clients at the same
//! time (stalled request bodies, slowloris headers, downloads never read, oversized manifests,
//! manifests naming one layer 25,000 times). It reports requests by kind and class, RSS over
//! time, and the number of corrupt reads, which must be 0 (the run fails otherwise).
//!
//! First, one side-by-side figure against docker-registry: 16 concurrent PUTs of a 4 MiB
//! manifest naming one layer 25,000 times (`manifest_put_25000_refs_16_concurrent`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/support/data.rs"]
mod data;

use bytes::Bytes;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Requests by (kind, class), and what the pullers verified.
#[derive(Default)]
struct Stats {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    corrupt: AtomicU64,
    verified_bytes: AtomicU64,
}

impl Stats {
    fn count(&self, kind: &'static str, class: &'static str) {
        *self.counts.lock().unwrap().entry((kind, class)).or_default() += 1;
    }

    fn status(&self, kind: &'static str, status: Result<reqwest::StatusCode, ()>) -> Option<reqwest::StatusCode> {
        let class = match status {
            Ok(s) if s.is_success() => "2xx",
            Ok(s) if s.is_redirection() => "3xx",
            Ok(s) if s.is_client_error() => "4xx",
            Ok(_) => "5xx",
            Err(()) => "transport",
        };
        self.count(kind, class);
        status.ok()
    }
}

/// A small seeded generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn random_bytes(len: usize, seed: u64) -> Bytes {
    Bytes::from(data::random_bytes(len, seed))
}

/// An image a pusher stored: where, and its layers.
#[derive(Clone)]
struct Image {
    repo: String,
    tag: String,
    manifest_digest: String,
    layers: Vec<String>,
}

struct Soak {
    client: reqwest::Client,
    ferry: String,
    upstream: String,
    stats: Stats,
    images: Mutex<Vec<Image>>,
    upstream_blobs: Mutex<Vec<(String, usize)>>,
    deadline: Instant,
}

impl Soak {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    async fn push_blob(&self, repo: &str, blob: Bytes, chunked: bool) -> Option<String> {
        let d = digest(&blob);
        let kind = if chunked { "push_chunked" } else { "push_monolithic" };
        if !chunked {
            let url = format!("{}/v2/{repo}/blobs/uploads/?digest={d}", self.ferry);
            let resp = self.client.post(url).body(blob).send().await;
            return (self.stats.status(kind, resp.map(|r| r.status()).map_err(|_| ()))? == 201).then_some(d);
        }
        let resp = self.client.post(format!("{}/v2/{repo}/blobs/uploads/", self.ferry)).send().await.ok()?;
        let location = resp.headers().get("location")?.to_str().ok()?.to_owned();
        let url = format!("{}{location}", self.ferry);
        // Two chunks (layers are at least 16 KiB, so neither is empty).
        let half = blob.len() / 2;
        for (from, to) in [(0, half), (half, blob.len())] {
            let resp = self
                .client
                .patch(&url)
                .header("Content-Range", format!("{from}-{}", to - 1))
                .body(blob.slice(from..to))
                .send()
                .await;
            if self.stats.status(kind, resp.map(|r| r.status()).map_err(|_| ()))? != 202 {
                return None;
            }
        }
        let resp = self.client.put(format!("{url}?digest={d}")).send().await;
        (self.stats.status(kind, resp.map(|r| r.status()).map_err(|_| ()))? == 201).then_some(d)
    }

    async fn pusher(self: Arc<Self>, id: u64) {
        let mut rng = Rng(0x5eed ^ id);
        let mut n = 0u64;
        while self.running() {
            n += 1;
            let repo = format!("soak/p{id}/r{}", rng.below(4));
            let config = Bytes::from(format!("{{\"architecture\":\"amd64\",\"n\":{n},\"id\":{id}}}"));
            let Some(config_digest) = self.push_blob(&repo, config.clone(), false).await else { continue };
            let mut layers = Vec::new();
            for l in 0..1 + rng.below(2) {
                let size = 16 * 1024 + rng.below(2 << 20) as usize;
                let blob = random_bytes(size, (id << 40) ^ (n << 8) ^ l);
                if let Some(d) = self.push_blob(&repo, blob.clone(), rng.below(2) == 0).await {
                    layers.push((d, size));
                }
            }
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
                "layers": layers.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})).collect::<Vec<_>>(),
            }))
            .unwrap();
            let tag = format!("t{n}");
            let resp = self
                .client
                .put(format!("{}/v2/{repo}/manifests/{tag}", self.ferry))
                .header("Content-Type", OCI_MANIFEST)
                .body(manifest.clone())
                .send()
                .await;
            if self.stats.status("push_manifest", resp.map(|r| r.status()).map_err(|_| ())).map(|s| s.as_u16())
                == Some(201)
            {
                let image = Image {
                    repo,
                    tag,
                    manifest_digest: digest(&manifest),
                    layers: layers.into_iter().map(|(d, _)| d).collect(),
                };
                self.images.lock().unwrap().push(image);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// GETs `url` and re-hashes the body; a complete 200 that does not hash to `d` is corrupt.
    async fn verified_get(&self, kind: &'static str, url: String, d: &str) {
        let resp = self.client.get(url).send().await;
        let Some(status) = self.stats.status(kind, resp.as_ref().map(|r| r.status()).map_err(|_| ())) else { return };
        if status != 200 {
            return;
        }
        if let Ok(body) = resp.unwrap().bytes().await {
            if digest(&body) != d {
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                eprintln!("CORRUPT read of {d}: {} bytes", body.len());
            }
            self.stats.verified_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        } else {
            self.stats.count(kind, "body_cut");
        }
    }

    async fn puller(self: Arc<Self>, id: u64) {
        let mut rng = Rng(0xbeef ^ id);
        while self.running() {
            let image = {
                let images = self.images.lock().unwrap();
                if images.is_empty() {
                    None
                } else {
                    Some(images[rng.below(images.len() as u64) as usize].clone())
                }
            };
            let Some(image) = image else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let url = format!("{}/v2/{}/manifests/{}", self.ferry, image.repo, image.tag);
            self.verified_get("pull_manifest", url, &image.manifest_digest).await;
            for l in &image.layers {
                self.verified_get("pull_blob", format!("{}/v2/{}/blobs/{l}", self.ferry, image.repo), l).await;
            }
        }
    }

    async fn deleter(self: Arc<Self>) {
        let mut rng = Rng(0xde1);
        while self.running() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let image = {
                let mut images = self.images.lock().unwrap();
                let n = images.len();
                (n > 20).then(|| images.swap_remove(rng.below(n as u64) as usize))
            };
            if let Some(image) = image {
                let url = format!("{}/v2/{}/manifests/{}", self.ferry, image.repo, image.manifest_digest);
                let resp = self.client.delete(url).send().await;
                self.stats.status("delete_manifest", resp.map(|r| r.status()).map_err(|_| ()));
            }
        }
    }

    /// Keeps giving the upstream new blobs, so the fills stay cold.
    async fn upstream_pusher(self: Arc<Self>) {
        let mut rng = Rng(0x0b5);
        let mut n = 0u64;
        while self.running() {
            n += 1;
            let size = 1 + rng.below(24 << 20) as usize;
            let blob = random_bytes(size, 0xf111 ^ n);
            let d = digest(&blob);
            let url = format!("{}/v2/src/blobs/blobs/uploads/?digest={d}", self.upstream);
            let resp = self.client.post(url).body(blob.clone()).send().await;
            let ok = match resp {
                Ok(r) if r.status() == 201 => true,
                Ok(r) if r.status() == 202 => {
                    let location = r.headers()["location"].to_str().unwrap().to_owned();
                    let url =
                        if location.starts_with("http") { location } else { format!("{}{location}", self.upstream) };
                    let sep = if url.contains('?') { '&' } else { '?' };
                    self.client
                        .put(format!("{url}{sep}digest={d}"))
                        .body(blob)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 201)
                }
                _ => false,
            };
            if ok {
                self.upstream_blobs.lock().unwrap().push((d, size));
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    }

    async fn filler(self: Arc<Self>, id: u64) {
        let mut rng = Rng(0xf1 ^ id);
        while self.running() {
            let d = {
                let blobs = self.upstream_blobs.lock().unwrap();
                // Mostly the newest (cold, or joining another filler's fetch), sometimes any (warm).
                match (blobs.len(), rng.below(3)) {
                    (0, _) => None,
                    (n, 0) => Some(blobs[rng.below(n as u64) as usize].0.clone()),
                    (n, _) => Some(blobs[n - 1].0.clone()),
                }
            };
            let Some(d) = d else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            self.verified_get("pull_through_blob", format!("{}/v2/up/src/blobs/blobs/{d}", self.ferry), &d).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn addr(&self) -> String {
        self.ferry.trim_start_matches("http://").to_owned()
    }

    /// Connects, sends `head` and `body`, then reads until the server closes; the status line
    /// (or "transport" when the server closed without one) is counted.
    async fn hostile(&self, kind: &'static str, head: String, body: &[u8], trickle: bool) {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.addr()).await else { return };
        if trickle {
            // Slowloris: one byte of the head a second, never finishing it.
            for b in head.bytes() {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        } else {
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out)).await;
        let status = String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        let status = status.map(|s| reqwest::StatusCode::from_u16(s).unwrap()).ok_or(());
        self.stats.status(kind, status);
    }

    async fn staller(self: Arc<Self>) {
        while self.running() {
            let head = "PATCH /v2/soak/hostile/blobs/uploads/6f1c2d3e-4b5a-4c6d-8e7f-901234567890 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
            let session = self.client.post(format!("{}/v2/soak/hostile/blobs/uploads/", self.ferry)).send().await;
            let location =
                session.ok().and_then(|r| r.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned));
            let head = match location {
                Some(l) => format!("PATCH {l} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"),
                None => head.to_owned(),
            };
            self.hostile("hostile_stalled_body", head, b"0123456789", false).await;
        }
    }

    async fn slowloris(self: Arc<Self>) {
        while self.running() {
            let head = "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            self.hostile("hostile_slowloris", head.to_owned(), b"", true).await;
        }
    }

    async fn unread_download(self: Arc<Self>) {
        while self.running() {
            // The largest blob so far: more than socket buffers hold, once there is one.
            let d = self.upstream_blobs.lock().unwrap().iter().max_by_key(|(_, size)| *size).cloned();
            let Some((d, size)) = d.filter(|(_, size)| *size > 12 << 20) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            // Asks for a blob, reads nothing for 30 s, then reads what is left: a connection the
            // server cut (send_timeout) ends short of the blob.
            let Ok(mut s) = tokio::net::TcpStream::connect(self.addr()).await else { continue };
            let head = format!("GET /v2/up/src/blobs/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
            let cut = out.len() < size;
            self.stats.count("hostile_unread_download", if cut { "cut" } else { "served_whole" });
        }
    }

    async fn bad_manifests(self: Arc<Self>, amplifying: Bytes) {
        let oversized = Bytes::from(vec![b' '; 5 << 20]);
        let mut n = 0u64;
        while self.running() {
            n += 1;
            let (kind, body) = if n.is_multiple_of(2) {
                ("hostile_oversized_manifest", oversized.clone())
            } else {
                ("hostile_25000_refs_manifest", amplifying.clone())
            };
            let url = format!("{}/v2/soak/amp/manifests/m{}", self.ferry, n % 8);
            let resp = self.client.put(url).header("Content-Type", OCI_MANIFEST).body(body).send().await;
            self.stats.status(kind, resp.map(|r| r.status()).map_err(|_| ()));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A manifest whose 25,000 layers all name `layer` (about 3.8 MB), and its config.
async fn amplifying_manifest(client: &reqwest::Client, base: &str, repo: &str) -> Bytes {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = push_small_blob(client, base, repo, config).await;
    let layer = push_small_blob(client, base, repo, b"one layer").await;
    let entry =
        serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 9});
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": vec![entry; 25_000],
        }))
        .unwrap(),
    )
}

async fn push_small_blob(client: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let url = if location.starts_with("http") { location } else { format!("{base}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = client.put(format!("{url}{sep}digest={d}")).body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    d
}

/// Seconds for 16 concurrent PUTs of the amplifying manifest (all must be accepted).
async fn amplification_seconds(client: &reqwest::Client, base: &str) -> f64 {
    let manifest = amplifying_manifest(client, base, "amp/bench").await;
    let started = Instant::now();
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let (client, url, body) = (client.clone(), format!("{base}/v2/amp/bench/manifests/t{i}"), manifest.clone());
            tokio::spawn(async move {
                client.put(url).header("Content-Type", OCI_MANIFEST).body(body).send().await.unwrap().status()
            })
        })
        .collect();
    for p in puts {
        assert_eq!(p.await.unwrap(), 201);
    }
    started.elapsed().as_secs_f64()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let duration = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .map(|d| humantime::parse_duration(d).expect("--duration like 10m or 90s"))
        .unwrap_or(Duration::from_secs(600));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(soak(duration));
}

async fn soak(duration: Duration) {
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(32).timeout(Duration::from_secs(120)).build().unwrap();

    // Side by side: the amplifying manifest, 16 at once.
    {
        let ferry = start_ferry();
        let peer = start_peer();
        let f = amplification_seconds(&client, &ferry.base).await;
        let p = amplification_seconds(&client, &peer.base).await;
        report("manifest_put_25000_refs_16_concurrent", f, p, false, "s");
    }

    let upstream = start_peer();
    let ferry = start_ferry_with(&format!(
        "[server]\nheader_read_timeout = \"5s\"\nbody_read_timeout = \"5s\"\nsend_timeout = \"10s\"\n\n[[pull_through]]\nprefix = \"up\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let amplifying = amplifying_manifest(&client, &ferry.base, "soak/amp").await;
    let soak = Arc::new(Soak {
        client: client.clone(),
        ferry: ferry.base.clone(),
        upstream: upstream.base.clone(),
        stats: Stats::default(),
        images: Mutex::new(Vec::new()),
        upstream_blobs: Mutex::new(Vec::new()),
        deadline: Instant::now() + duration,
    });
    let mut tasks = Vec::new();
    for i in 0..2 {
        tasks.push(tokio::spawn(soak.clone().pusher(i)));
        tasks.push(tokio::spawn(soak.clone().filler(i)));
    }
    for i in 0..3 {
        tasks.push(tokio::spawn(soak.clone().puller(i)));
    }
    tasks.push(tokio::spawn(soak.clone().deleter()));
    tasks.push(tokio::spawn(soak.clone().upstream_pusher()));
    for _ in 0..4 {
        tasks.push(tokio::spawn(soak.clone().staller()));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(soak.clone().slowloris()));
        tasks.push(tokio::spawn(soak.clone().unread_download()));
    }
    tasks.push(tokio::spawn(soak.clone().bad_manifests(amplifying)));

    // RSS over time, every 10 s.
    let started = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < soak.deadline {
        tokio::time::sleep(Duration::from_secs(10).min(soak.deadline.saturating_duration_since(Instant::now()))).await;
        let rss = rss_mib(ferry.child.id());
        let metrics = client.get(format!("{}/metrics", ferry.admin)).send().await;
        let metrics = match metrics {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let hot = gauge("ferry_hot_tier_bytes") / (1 << 20) as f64;
        samples.push((started.elapsed().as_secs(), rss, hot));
        eprintln!(
            "soak t={}s rss={rss:.1}MiB hot_tier={hot:.1}MiB in_flight={} uploads={}",
            started.elapsed().as_secs(),
            gauge("ferry_http_requests_in_flight"),
            gauge("ferry_uploads_in_progress")
        );
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(150), t).await;
    }

    let counts = soak.stats.counts.lock().unwrap();
    let total: u64 = counts.values().sum();
    println!("soak_duration_seconds {}", started.elapsed().as_secs());
    println!("soak_requests_total {total}");
    for ((kind, class), n) in counts.iter() {
        println!("soak_requests{{kind=\"{kind}\",class=\"{class}\"}} {n}");
    }
    println!("soak_verified_bytes {}", soak.stats.verified_bytes.load(Ordering::Relaxed));
    // RSS besides the hot tier (which fills to its configured capacity, 256 MiB by default).
    let beside = |s: &(u64, f64, f64)| s.1 - s.2;
    let warm = samples.get(samples.len() / 5).map_or(0.0, beside);
    let end = samples.last().map_or(0.0, beside);
    let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    println!("soak_rss_beside_hot_tier_mib after_warmup={warm:.1} end={end:.1}; rss max={max:.1}");
    let series: Vec<String> = samples.iter().map(|(t, r, h)| format!("{t}s:{r:.0}/{h:.0}")).collect();
    println!("soak_rss_and_hot_tier_series_mib {}", series.join(" "));
    let corrupt = soak.stats.corrupt.load(Ordering::Relaxed);
    println!("soak_corrupt_reads {corrupt}");
    let five_xx: u64 = counts.iter().filter(|((_, c), _)| *c == "5xx").map(|(_, n)| n).sum();
    println!("soak_server_errors {five_xx}");
    assert_eq!(corrupt, 0, "a pull got bytes that do not hash to their digest");
}
