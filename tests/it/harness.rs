//! Starts Ferry for a test: in-process on port 0 with a temporary data directory, or as a
//! separate process (for restarts and `kill -9`). Plus small helpers that speak the API.

pub use crate::data::random_bytes;
pub use crate::process::{free_port, wait_for_port, ChildGuard};
use ferry::config::Config;
use ferry::RunningServer;
use reqwest::{Client, Response, StatusCode};
use sha2::Digest as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A Ferry running inside the test process. With `FERRY_TEST_BACKEND=s3` it stores into a
/// bucket of its own on the test binary's moto instead of the filesystem, so the same suites
/// run on both backends.
pub struct TestFerry {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub admin: String,
    pub client: Client,
    pub s3: Option<crate::s3::S3Bucket>,
    pub config: Config,
}

/// A config for tests: loopback, port 0, data in `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.admin_listen = "127.0.0.1:0".into();
    c.storage.data_dir = dir.join("data");
    c
}

impl TestFerry {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_clock(std::sync::Arc::new(ferry::clock::SystemClock), change).await
    }

    /// A Ferry reading `clock` for everything time-based (a `ManualClock` moves only when told).
    pub async fn start_with_clock(clock: ferry::clock::SharedClock, change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        let s3 = if std::env::var("FERRY_TEST_BACKEND").as_deref() == Ok("s3") {
            let bucket = crate::s3::S3Bucket::fresh().await;
            bucket.configure(&mut config);
            // Segments bigger than a fill's 32 MiB window: a 64 MiB fill must still flow while
            // S3 gathers a segment (the window grows by what the backend buffers).
            config.storage.s3.part_size = ferry::config::ByteSize(40 << 20);
            Some(bucket)
        } else {
            None
        };
        change(&mut config);
        let server = ferry::start_with_clock(config.clone(), clock).await.expect("ferry starts");
        let base = format!("http://{}", server.addr);
        let admin = format!("http://{}", server.admin_addr);
        Self { server: Some(server), dir, base, admin, client: Client::new(), s3, config }
    }

    /// Stops this Ferry and starts a new one on the same storage (new ports, empty hot tier,
    /// nothing in memory carried over).
    pub async fn restart(&mut self) {
        self.restart_with_clock(std::sync::Arc::new(ferry::clock::SystemClock)).await
    }

    /// [`Self::restart`] reading `clock`.
    pub async fn restart_with_clock(&mut self, clock: ferry::clock::SharedClock) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let server = ferry::start_with_clock(self.config.clone(), clock).await.expect("ferry restarts");
        self.base = format!("http://{}", server.addr);
        self.admin = format!("http://{}", server.admin_addr);
        self.server = Some(server);
    }

    /// Every key under `blobs/` whose stored bytes do not hash to the digest the key names,
    /// read straight from the backend (no hot tier, no link sizes to hide behind).
    pub async fn corrupt_blobs(&self) -> Vec<String> {
        if self.s3.is_none() {
            return corrupt_blobs_in(&self.data_dir());
        }
        let mut bad = Vec::new();
        for (key, _) in self.stored_objects().await {
            let Some(hex) = key.strip_prefix("blobs/sha256/").and_then(|r| r.split('/').nth(1)) else { continue };
            let bytes = self.read_raw(&key).await;
            if digest(&bytes) != format!("sha256:{hex}") {
                bad.push(format!("{key} ({} bytes)", bytes.len()));
            }
        }
        bad
    }

    /// The bytes stored under `key` (relative to the store's root), from the backend itself.
    pub async fn read_raw(&self, key: &str) -> Vec<u8> {
        match &self.s3 {
            None => std::fs::read(self.data_dir().join(key)).unwrap(),
            Some(b) => {
                let out = b.client().get_object().bucket(&b.bucket).key(key).send().await.unwrap();
                out.body.collect().await.unwrap().into_bytes().to_vec()
            }
        }
    }

    /// Writes `bytes` under `key` in the backend itself, behind Ferry's back (to stand for
    /// content damaged outside Ferry, or left by an older version).
    pub async fn write_raw(&self, key: &str, bytes: &[u8]) {
        match &self.s3 {
            None => {
                let path = self.data_dir().join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            Some(b) => {
                let body = aws_sdk_s3::primitives::ByteStream::from(bytes.to_vec());
                b.client().put_object().bucket(&b.bucket).key(key).body(body).send().await.unwrap();
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything stored, as (path relative to the store's root, size), from whichever backend
    /// this Ferry uses; temporary files are left out.
    pub async fn stored_objects(&self) -> Vec<(String, u64)> {
        match &self.s3 {
            None => snapshot(&self.data_dir()).into_iter().filter(|(k, _)| !k.starts_with("tmp/")).collect(),
            Some(b) => {
                let mut out = Vec::new();
                let mut pages = b.client().list_objects_v2().bucket(&b.bucket).into_paginator().send();
                while let Some(page) = pages.next().await {
                    for o in page.unwrap().contents() {
                        out.push((o.key().unwrap_or_default().to_owned(), o.size().unwrap_or(0) as u64));
                    }
                }
                out.sort();
                out
            }
        }
    }

    /// Whether content is stored under `digest`.
    pub async fn stores(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        let key = format!("blobs/sha256/{}/{hex}", &hex[..2]);
        self.stored_objects().await.iter().any(|(k, _)| *k == key)
    }

    /// Whether the backend holds an object under `key`, with one request (no listing).
    pub async fn has_object(&self, key: &str) -> bool {
        match &self.s3 {
            None => self.data_dir().join(key).exists(),
            Some(b) => b.client().head_object().bucket(&b.bucket).key(key).send().await.is_ok(),
        }
    }

    /// A stored object's bytes, read from outside Ferry (`None` when absent).
    pub async fn read_object(&self, key: &str) -> Option<Vec<u8>> {
        match &self.s3 {
            None => std::fs::read(self.data_dir().join(key)).ok(),
            Some(b) => {
                let got = b.client().get_object().bucket(&b.bucket).key(key).send().await.ok()?;
                Some(got.body.collect().await.ok()?.into_bytes().to_vec())
            }
        }
    }

    pub async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap()
    }

    /// Pushes a blob in one request and returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        push_blob(&self.client, &self.base, repo, bytes).await
    }

    /// Pushes a manifest; returns the response.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes a config and one layer, then an OCI image manifest under `tag`; returns (manifest bytes, digest).
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, String) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = self.push_blob(repo, config).await;
        let layer_digest = self.push_blob(repo, layer).await;
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
        let d = digest(&manifest);
        (manifest, d)
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub async fn push_blob(client: &Client, base: &str, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    // Like a client, retry what the registry says to retry (a loaded S3 server's 503, a 429):
    // a few times, with a short backoff.
    let mut attempt = 0u32;
    let resp = loop {
        let resp = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let retryable = matches!(resp.status(), StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS);
        if !retryable || attempt >= 8 {
            break resp;
        }
        attempt += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(5))).await;
    };
    if resp.status() == StatusCode::ACCEPTED {
        // docker-registry 2.8 opens a session instead of taking the blob in the POST.
        let location = header(&resp, "location");
        let url = if location.starts_with("http") { location } else { format!("{base}{location}") };
        let sep = if url.contains('?') { '&' } else { '?' };
        let resp = client.put(format!("{url}{sep}digest={d}")).body(bytes.to_vec()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
        return d;
    }
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    d
}

/// The OCI error code of a response body.
pub async fn error_code(resp: Response) -> String {
    let v: serde_json::Value = resp.json().await.expect("an OCI error body");
    v["errors"][0]["code"].as_str().expect("an error code").to_owned()
}

/// A Ferry running as a separate process of the built binary.
pub struct FerryProcess {
    pub child: ChildGuard,
    pub base: String,
    pub admin: String,
    /// Every log line it has written so far (JSON, one event a line).
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FerryProcess {
    /// Starts `ferry serve` on a free port with `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_env(data_dir, &[])
    }

    /// The same, with `FERRY_*` environment overrides (e.g. an S3 backend, or `FERRY_CONFIG`).
    pub fn start_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .env("FERRY_CONFIG", "/dev/null")
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("FERRY_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry binary starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let (addr, admin) = loop {
            let line = lines.next().expect("ferry logs its address").unwrap();
            if line.contains("ferry started") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let field = |k: &str| v["fields"][k].as_str().unwrap().to_owned();
                break (field("addr"), field("admin_addr"));
            }
        };
        // Keep draining the log so the child never blocks on a full pipe, and keep it to read.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Self { child: ChildGuard::new(child), base: format!("http://{addr}"), admin: format!("http://{admin}"), logs }
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.child.stop();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        self.child.child().wait().unwrap()
    }
}

/// Every file under `dir` with its size, ignoring temporary files: a snapshot to compare.
pub fn snapshot(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The value of an unlabelled metric in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of a metric, labelled or not, whose labels contain each of
/// `labels` (e.g. `source="upstream"`); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (series, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels.iter().all(|want| series.contains(want)).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// A response header as a string ("" when absent).
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Pushes `config` as a blob and a layerless OCI manifest naming it under `tag`, to any
/// registry at `base`; returns the manifest's bytes and digest.
pub async fn push_config_image(client: &Client, base: &str, repo: &str, tag: &str, config: &[u8]) -> (Vec<u8>, String) {
    let config_digest = push_blob(client, base, repo, config).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let d = digest(&manifest);
    (manifest, d)
}

/// Sends `data[start..end]` for each range as a PATCH with its `Content-Range` to the upload at
/// `location` (relative to `base`), asserting each is accepted.
pub async fn patch_chunks(client: &Client, base: &str, location: &str, data: &[u8], ranges: &[(usize, usize)]) {
    for &(start, end) in ranges {
        let resp = client
            .patch(format!("{base}{location}"))
            .header("Content-Range", format!("{start}-{}", end - 1))
            .body(data[start..end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{start}-{end}");
    }
}

/// Every file under `<data_dir>/blobs/` whose bytes do not hash to the digest its path names.
pub fn corrupt_blobs_in(data_dir: &Path) -> Vec<String> {
    snapshot(&data_dir.join("blobs"))
        .into_iter()
        .filter_map(|(rel, _)| {
            let hex = rel.rsplit('/').next()?.to_owned();
            let bytes = std::fs::read(data_dir.join("blobs").join(&rel)).ok()?;
            (digest(&bytes) != format!("sha256:{hex}")).then(|| format!("blobs/{rel} ({} bytes)", bytes.len()))
        })
        .collect()
}

/// The storage key of a digest's content.
pub fn blob_key(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

/// Polls `check` until it holds, failing the test with `what` after `within`. For states that
/// settle on their own (a permit released when a connection closes, a purge that runs on a
/// timer, a replication worker's copy), never as a stand-in for waiting on something the test
/// itself controls.
pub async fn eventually<F, Fut>(what: &str, within: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_value(what, within, || {
        let checked = check();
        async move {
            if checked.await {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    })
    .await
}

/// [`eventually`] for a check that yields a value once the state settles (`Ok`), or what it
/// saw meanwhile (`Err`, shown when it gives up). Polls at 10 ms, backing off to 200 ms, so a
/// check that runs a client costs little while it waits.
pub async fn eventually_value<T, S, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    S: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, S>>,
{
    let deadline = std::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => {
                assert!(std::time::Instant::now() < deadline, "not within {within:?}: {what}; last seen: {seen:?}")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}

/// A small seeded generator (xorshift64*), so a failing interleaving can be replayed from the
/// seed a test prints.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// The test's seed: `FERRY_TEST_SEED` when set (to replay a failure), else a new one each
    /// run, so runs explore different interleavings. Printed, so a failure shows it.
    pub fn seed(test: &str) -> u64 {
        let seed = std::env::var("FERRY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        eprintln!("{test}: seed {seed} (replay with FERRY_TEST_SEED={seed})");
        seed
    }
}
