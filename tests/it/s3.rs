//! Ferry on S3: the storage contract on the filesystem and on a real S3-compatible server
//! (moto, from PyPI, on a loopback port: one per test binary, a bucket per Ferry, except for the
//! tests that stop and restart their server), the registry and real clients on S3, and two
//! Ferry replicas sharing one bucket.

use crate::clients::{policy, run, skopeo};
use crate::harness::*;
use crate::images::build_layout;
use bytes::Bytes;
use ferry::config::{Backend, Config, Secret};
use ferry::storage::{self, ByteRange, Storage, UploadId};
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Which S3-compatible server.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// moto (PyPI), in memory.
    Moto,
    /// s3s-fs (crates.io), on disk: it keeps data across a restart.
    S3sFs,
}

/// An S3-compatible server on a free loopback port, stopped by its PID when dropped.
pub struct Moto {
    kind: Kind,
    child: Option<ChildGuard>,
    port: u16,
    data: tempfile::TempDir,
    pub endpoint: String,
    /// Started with `setpriv --pdeathsig KILL`: it dies with the thread that started it.
    dies_with_parent: bool,
}

/// One bucket of its own on the test binary's shared moto.
#[derive(Clone, Debug)]
pub struct S3Bucket {
    pub endpoint: String,
    pub bucket: String,
}

impl S3Bucket {
    /// A new, empty bucket on one of the motos this test binary shares (started on first
    /// use): one per core, since one moto serves one request at a time and tests run side by
    /// side. Measured on the S3 rerun (62 tests, 2 cores): a moto per test 169 s, one for all
    /// 216 s, one per core 162 s with two servers instead of sixty-two.
    pub async fn fresh() -> Self {
        static SHARED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let endpoints = SHARED.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            // Started from a thread that lives as long as the test binary, so each server dies
            // with the binary (its parent-death signal) and never outlives a run.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let motos: Vec<Moto> = (0..cores)
                    .map(|_| {
                        let mut moto = Moto::new(Kind::Moto);
                        moto.dies_with_parent = true;
                        moto.run();
                        moto
                    })
                    .collect();
                let endpoints = motos.iter().map(|m| m.endpoint.clone()).collect();
                tx.send(endpoints).expect("the test thread waits for the endpoints");
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared motos start")
        });
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let endpoint = endpoints.get(n % endpoints.len().max(1)).expect("at least one moto");
        let b = Self { endpoint: endpoint.clone(), bucket: format!("ferry-{n}") };
        b.client().create_bucket().bucket(&b.bucket).send().await.unwrap();
        b
    }

    /// An SDK client for checking from outside.
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint)
    }

    /// Points a config at this bucket.
    pub fn configure(&self, c: &mut Config) {
        configure(c, &self.endpoint, &self.bucket);
    }
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn configure(c: &mut Config, endpoint: &str, bucket: &str) {
    c.storage.backend = Backend::S3;
    let s3 = &mut c.storage.s3;
    s3.bucket = bucket.into();
    s3.endpoint = endpoint.into();
    s3.force_path_style = true;
    s3.access_key_id = "test".into();
    s3.secret_access_key = Secret("test".into());
    s3.part_size = ferry::config::ByteSize(5 << 20);
}

impl Moto {
    pub fn start() -> Self {
        Self::start_kind(Kind::Moto)
    }

    pub fn start_kind(kind: Kind) -> Self {
        let mut s = Self::new(kind);
        s.run();
        s
    }

    fn new(kind: Kind) -> Self {
        let port = free_port();
        Self {
            kind,
            child: None,
            port,
            data: tempfile::tempdir().unwrap(),
            endpoint: format!("http://127.0.0.1:{port}"),
            dies_with_parent: false,
        }
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Moto => {
                let venv = std::env::var("FERRY_TEST_VENV").unwrap_or_else(|_| "/var/tmp/ferry-venv".into());
                let moto = format!("{venv}/bin/moto_server");
                let mut c = match self.dies_with_parent {
                    true => {
                        let mut c = Command::new("setpriv");
                        c.args(["--pdeathsig", "KILL", "--", &moto]);
                        c
                    }
                    false => Command::new(moto),
                };
                c.args(["-H", "127.0.0.1", "-p", &port]);
                c
            }
            Kind::S3sFs => {
                let tools = std::env::var("FERRY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/ferry-tools".into());
                let mut c = Command::new(format!("{tools}/bin/s3s-fs"));
                c.args(["--host", "127.0.0.1", "--port", &port, "--access-key", "test", "--secret-key", "test"])
                    .arg(self.data.path());
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the S3 server runs (scripts/test.sh installs it)");
        self.child = Some(ChildGuard::new(child));
        wait_for_port(self.port, Duration::from_secs(30));
    }

    /// Stops the server (kill by PID).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port (and, for s3s-fs, the same data).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// An SDK client for checking from outside.
    pub fn client(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint)
    }

    /// Creates a bucket with the SDK, as an operator would.
    pub async fn bucket(&self, name: &str) {
        self.client().create_bucket().bucket(name).send().await.unwrap();
    }

    /// Points a config at this server and `bucket`.
    pub fn configure(&self, c: &mut Config, bucket: &str) {
        configure(c, &self.endpoint, bucket);
    }
}

pub async fn collect(s: storage::ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = s;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

pub fn stream_of(chunks: Vec<Vec<u8>>) -> storage::ByteStream {
    futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_segments_are_going_reads_as_gone_not_shifted() {
    // At commit the segments are deleted; a fill's reader may be reading the upload just then.
    let moto = Moto::start();
    moto.bucket("going").await;
    let mut c = Config::default();
    moto.configure(&mut c, "going");
    c.storage.s3.part_size = ferry::config::ByteSize(5 << 20);
    let store = ferry::storage::s3::S3Storage::connect(&c.storage.s3, None).await.unwrap();
    let id = UploadId::new();
    store.upload_create(&id, Bytes::from_static(b"{}")).await.unwrap();
    let data = random_bytes(12 << 20, 8);
    store.upload_append(&id, stream_of(vec![data.clone()])).await.unwrap();
    let range = ByteRange { start: 6 << 20, end: (7 << 20) - 1 };
    assert_eq!(collect(store.upload_read(&id, Some(range)).await.unwrap()).await, &data[6 << 20..7 << 20]);
    // The first segment is gone, the others not yet.
    let sdk = moto.client();
    let first = format!("uploads/{id}/seg/{:020}", 0);
    sdk.delete_object().bucket("going").key(&first).send().await.unwrap();
    assert!(matches!(store.upload_read(&id, Some(range)).await, Err(storage::Error::NotFound)));
}

/// Two replicas appending to one session at the same offset at once: segments are written
/// once, so one append wins and the other gets `Conflict`; the upload holds exactly the
/// winner's bytes, never a mix and never the loser's bytes under the winner's running digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_appending_at_one_offset_never_overwrite_each_other() {
    let moto = Moto::start();
    moto.bucket("race").await;
    let mut c = Config::default();
    moto.configure(&mut c, "race");
    let a = ferry::storage::s3::S3Storage::connect(&c.storage.s3, None).await.unwrap();
    let b = ferry::storage::s3::S3Storage::connect(&c.storage.s3, None).await.unwrap();
    let id = UploadId::new();
    a.upload_create(&id, Bytes::from_static(b"{}")).await.unwrap();
    // Each body waits until both appends have read the session's size (0) and asked for bytes.
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let gated = |byte: u8| {
        let gate = gate.clone();
        futures_util::stream::once(async move {
            gate.wait().await;
            Ok(Bytes::from(vec![byte; 1000]))
        })
        .boxed()
    };
    let (ra, rb) = tokio::join!(a.upload_append(&id, gated(b'a')), b.upload_append(&id, gated(b'b')));
    let won = match (&ra, &rb) {
        (Ok(1000), Err(storage::Error::Conflict { .. })) => b'a',
        (Err(storage::Error::Conflict { .. }), Ok(1000)) => b'b',
        other => panic!("one append must win and one conflict: {other:?}"),
    };
    assert_eq!(collect(a.upload_read(&id, None).await.unwrap()).await, vec![won; 1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_contract_holds_on_the_filesystem_and_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    ferry::storage::contract::storage_contract(
        Arc::new(ferry::storage::fs::FsStorage::open(dir.path()).unwrap()),
        "fs",
        true,
    )
    .await;

    for kind in [Kind::Moto, Kind::S3sFs] {
        let server = Moto::start_kind(kind);
        server.bucket("contract").await;
        let mut c = Config::default();
        server.configure(&mut c, "contract");
        c.storage.s3.prefix = "ferry/".into();
        c.storage.s3.part_size = ferry::config::ByteSize(5 << 20);
        let s3 = ferry::storage::s3::S3Storage::connect(&c.storage.s3, None).await.unwrap();
        let atomic = matches!(kind, Kind::Moto);
        ferry::storage::contract::storage_contract(Arc::new(s3), &format!("{kind:?}"), atomic).await;
    }
    let moto = Moto::start();

    // A missing bucket is refused at start-up with a message that says what to fix.
    let mut missing = Config::default();
    moto.configure(&mut missing, "no-such-bucket");
    let err = ferry::storage::s3::S3Storage::connect(&missing.storage.s3, None).await.err().unwrap();
    assert!(err.contains("storage.s3.bucket") && err.contains("no-such-bucket"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_s3_with_skopeo_single_and_multi_arch() {
    for kind in [Kind::Moto, Kind::S3sFs] {
        registry_on_s3(kind).await;
    }
}

async fn registry_on_s3(kind: Kind) {
    let moto = Moto::start_kind(kind);
    moto.bucket("registry").await;
    let f = TestFerry::start_with(|c| moto.configure(c, "registry")).await;
    let addr = f.server.as_ref().unwrap().addr;
    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    for (i, (name, platforms)) in
        [("single", &["amd64"][..]), ("multi", &["amd64", "arm64"][..])].into_iter().enumerate()
    {
        let built = build_layout(&work.path().join(name), "v1", platforms, 200_000, false, 60 + i as u64);
        let dest = format!("docker://{addr}/s3/{name}:v1");
        run(skopeo(&policy).args(["copy", "--all", "--dest-tls-verify=false", &built.source, &dest]));
        let raw = run(skopeo(&policy).args(["inspect", "--raw", "--tls-verify=false", &dest]));
        assert_eq!(digest(raw.as_bytes()), built.top, "{name}");
        let out = work.path().join(format!("out-{name}"));
        run(skopeo(&policy)
            .args(["copy", "--all", "--src-tls-verify=false", &dest])
            .arg(format!("oci:{}:v1", out.display())));
        for p in &built.platforms {
            assert!(out.join("blobs/sha256").join(&p[7..]).exists());
        }
    }
    // A chunked upload larger than a part, finished in a PUT, assembled server-side.
    let blob = random_bytes(11 << 20, 61);
    let d = digest(&blob);
    let resp = f.client.post(f.url("/v2/s3/big/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    patch_chunks(&f.client, &f.base, &location, &blob, &[(0, 6 << 20), (6 << 20, 8 << 20)]).await;
    let resp =
        f.client.put(f.url(&format!("{location}?digest={d}"))).body(blob[8 << 20..].to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let got =
        f.client.get(f.url(&format!("/v2/s3/big/blobs/{d}"))).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(got.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &blob[100..200]);
    let got = f.client.get(f.url(&format!("/v2/s3/big/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
    // A wrong digest stores nothing.
    let resp = f
        .client
        .post(f.url(&format!("/v2/s3/big/blobs/uploads/?digest={}", digest(b"other"))))
        .body(blob[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = f.client.head(f.url(&format!("/v2/s3/big/blobs/{}", digest(&blob[..1000])))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The hot tier serves repeated manifest reads from memory.
    let m = f.metrics().await;
    assert!(m.contains(r#"ferry_hot_tier_requests_total{result="hit"}"#), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_bucket_behave_as_one_registry() {
    for kind in [Kind::S3sFs, Kind::Moto] {
        two_replicas(kind).await;
    }
}

/// A replica: a separate `ferry serve` process on the shared bucket.
fn replica(server: &Moto, bucket: &str, dir: &std::path::Path) -> FerryProcess {
    FerryProcess::start_env(
        dir,
        &[
            ("FERRY_STORAGE_BACKEND", "s3"),
            ("FERRY_STORAGE_S3_BUCKET", bucket),
            ("FERRY_STORAGE_S3_ENDPOINT", &server.endpoint),
            ("FERRY_STORAGE_S3_FORCE_PATH_STYLE", "true"),
            ("FERRY_STORAGE_S3_ACCESS_KEY_ID", "test"),
            ("FERRY_STORAGE_S3_SECRET_ACCESS_KEY", "test"),
            ("FERRY_STORAGE_S3_PART_SIZE", "5MiB"),
        ],
    )
}

async fn two_replicas(kind: Kind) {
    let server = Moto::start_kind(kind);
    server.bucket("shared").await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (replica(&server, "shared", dir.path()), replica(&server, "shared", dir.path()));
    let client = reqwest::Client::new();
    let url = |p: &FerryProcess, path: &str| format!("{}{path}", p.base);

    // Push through A, pull through B at once.
    let (manifest, d) = push_config_image(&client, &a.base, "team/app", "v1", b"config pushed through A").await;
    let resp = client.get(url(&b, "/v2/team/app/manifests/v1")).header("Accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);

    // A chunked upload started on A and finished on B.
    let blob = random_bytes(3 << 20, 62);
    let bd = digest(&blob);
    let resp = client.post(url(&a, "/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let resp = client
        .patch(url(&a, &location))
        .header("Content-Range", format!("0-{}", (1 << 20) - 1))
        .body(blob[..1 << 20].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = client.get(url(&b, &location)).send().await.unwrap();
    assert_eq!(header(&resp, "range"), format!("0-{}", (1 << 20) - 1), "B sees A's progress");
    let resp = client
        .put(url(&b, &format!("{location}?digest={bd}")))
        .header("Content-Range", format!("{}-{}", 1 << 20, blob.len() - 1))
        .body(blob[1 << 20..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let got = client.get(url(&a, &format!("/v2/team/app/blobs/{bd}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), bd);
    assert!(has_s3_metrics(&client.get(format!("{}/metrics", a.admin)).send().await.unwrap().text().await.unwrap()));

    // Concurrent pushes of one tag through A and B leave one consistent tag on both. Not on
    // s3s-fs: it overwrites a key's file in place, so two PUTs to one key at the same instant can
    // leave a torn object there (seen here), which real S3 and moto never do.
    if matches!(kind, Kind::S3sFs) {
        return;
    }
    let (m2, _) = push_config_image(&client, &a.base, "team/app", "seed2", b"second image").await;
    let (m3, _) = push_config_image(&client, &a.base, "team/app", "seed3", b"third image").await;
    let put = |p: &FerryProcess, body: &[u8]| {
        client
            .put(url(p, "/v2/team/app/manifests/race"))
            .header("Content-Type", OCI_MANIFEST)
            .body(body.to_vec())
            .send()
    };
    for round in 0..5 {
        let (ra, rb) = tokio::join!(put(&a, &m2), put(&b, &m3));
        assert_eq!(ra.unwrap().status(), StatusCode::CREATED, "round {round}");
        assert_eq!(rb.unwrap().status(), StatusCode::CREATED, "round {round}");
        let ra = client.head(url(&a, "/v2/team/app/manifests/race")).send().await.unwrap();
        let da = header(&ra, "docker-content-digest");
        assert!(!da.is_empty(), "round {round}: {}", ra.status());
        let db =
            header(&client.head(url(&b, "/v2/team/app/manifests/race")).send().await.unwrap(), "docker-content-digest");
        assert_eq!(da, db, "both replicas serve the same tag");
        assert!(da == digest(&m2) || da == digest(&m3), "round {round}: {da:?}");
    }
    assert_ne!(d, digest(&m2));
}

/// Whether a metrics page counts S3 requests and their latency.
fn has_s3_metrics(m: &str) -> bool {
    m.contains(r#"ferry_s3_requests_total{operation="PutObject",result="ok"}"#)
        && m.contains("ferry_s3_request_duration_seconds_bucket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_keys_and_sizes_checked_with_boto3() {
    let moto = Moto::start();
    moto.bucket("sse").await;
    let f = TestFerry::start_with(|c| {
        moto.configure(c, "sse");
        c.storage.s3.sse = "AES256".into();
        c.storage.s3.prefix = "reg/".into();
    })
    .await;
    let (_, manifest_digest) = f.push_image("team/app", "v1", &random_bytes(7 << 20, 63)).await;
    let layer_digest = digest(&random_bytes(7 << 20, 63));
    let venv = std::env::var("FERRY_TEST_VENV").unwrap_or_else(|_| "/var/tmp/ferry-venv".into());
    let script = format!(
        "import boto3, json\n\
         s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         out = {{}}\n\
         for page in s3.get_paginator('list_objects_v2').paginate(Bucket='sse'):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       h = s3.head_object(Bucket='sse', Key=o['Key'])\n\
         \x20       out[o['Key']] = [o['Size'], h.get('ServerSideEncryption')]\n\
         print(json.dumps(out))\n",
        moto.endpoint
    );
    let out =
        Command::new(format!("{venv}/bin/python")).args(["-c", &script]).env_remove("AWS_CA_BUNDLE").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let objects: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = objects.as_object().unwrap();
    let layer_key = format!("reg/blobs/sha256/{}/{}", &layer_digest[7..9], &layer_digest[7..]);
    assert_eq!(objects[&layer_key][0], 7 << 20, "the layer is stored under its digest with its size");
    let manifest_key = format!("reg/blobs/sha256/{}/{}", &manifest_digest[7..9], &manifest_digest[7..]);
    assert!(objects.contains_key(&manifest_key));
    assert!(objects.contains_key("reg/repos/team/app/_tags/v1"));
    assert!(objects.contains_key("reg/catalog/team+app"));
    assert!(!objects.keys().any(|k| k.starts_with("reg/uploads/")), "no upload leftovers: {objects:?}");
    assert!(objects.keys().all(|k| k.starts_with("reg/")), "everything under the prefix");
    for (key, v) in objects {
        assert_eq!(v[1], "AES256", "{key} is encrypted at rest");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outages_give_errors_not_truncated_success_and_ferry_recovers() {
    let mut s3 = Moto::start_kind(Kind::S3sFs);
    s3.bucket("faults").await;
    let f = TestFerry::start_with(|c| {
        s3.configure(c, "faults");
        c.hot_tier.max_bytes = ferry::config::ByteSize(0);
    })
    .await;
    let blob = random_bytes(48 << 20, 64);
    let d = f.push_blob("team/app", &blob).await;

    // Mid-download: the client's body fails, never a short body presented as complete.
    let resp = f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut got = body.next().await.unwrap().unwrap().len();
    s3.stop();
    let mut failed = false;
    while let Some(c) = body.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed || got < blob.len(), "a cut S3 stream is never presented as complete");
    assert!(failed, "the body ended in an error");

    // Mid-upload: S3 goes away between two parts of a chunk; the PATCH is not acknowledged.
    s3.restart();
    let resp = f.client.post(f.url("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let gate = Arc::new(tokio::sync::Notify::new());
    let (g, first, rest) =
        (gate.clone(), Bytes::from(random_bytes(6 << 20, 67)), Bytes::from(random_bytes(6 << 20, 68)));
    let parts = futures_util::stream::iter(vec![(first, None), (rest, Some(g))]).then(|(b, g)| async move {
        if let Some(g) = g {
            g.notified().await;
        }
        Ok::<_, std::io::Error>(b)
    });
    let patch = tokio::spawn({
        let (c, url) = (f.client.clone(), f.url(&location));
        async move { c.patch(url).body(reqwest::Body::wrap_stream(parts)).send().await }
    });
    // Once the first part is in S3, stop S3, then let the rest of the chunk come.
    eventually("the first part reached S3", Duration::from_secs(20), || async {
        s3.client()
            .list_objects_v2()
            .bucket("faults")
            .prefix("uploads/")
            .send()
            .await
            .map(|o| o.contents().iter().any(|c| c.key().is_some_and(|k| k.contains("/seg/"))))
            .unwrap_or(false)
    })
    .await;
    s3.stop();
    gate.notify_one();
    // Either the connection failed, or the answer says S3 is unavailable: never 202.
    if let Ok(resp) = patch.await.unwrap() {
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "the chunk is not acknowledged");
    }

    // While S3 is down: a clear 503 with Retry-After.
    let resp = f.client.get(f.url("/v2/team/app/tags/list")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
    let other = random_bytes(1 << 20, 65);
    let resp = f
        .client
        .post(f.url(&format!("/v2/team/app/blobs/uploads/?digest={}", digest(&other))))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // S3 back: Ferry serves and stores again without a restart, and nothing corrupt was stored.
    s3.restart();
    let resp = f.client.head(f.url(&format!("/v2/team/app/blobs/{}", digest(&other)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let got = f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
    let d2 = f.push_blob("team/app", &other).await;
    let got = f.client.get(f.url(&format!("/v2/team/app/blobs/{d2}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &other[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_on_s3_streams_in_bounded_memory() {
    const CHUNKS: usize = 1024;
    let s3 = Moto::start_kind(Kind::S3sFs);
    s3.bucket("big").await;
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start_env(
        dir.path(),
        &[
            ("FERRY_STORAGE_BACKEND", "s3"),
            ("FERRY_STORAGE_S3_BUCKET", "big"),
            ("FERRY_STORAGE_S3_ENDPOINT", &s3.endpoint),
            ("FERRY_STORAGE_S3_FORCE_PATH_STYLE", "true"),
            ("FERRY_STORAGE_S3_ACCESS_KEY_ID", "test"),
            ("FERRY_STORAGE_S3_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let client = reqwest::Client::new();
    let (make, d) = crate::durability::generated(CHUNKS, 1 << 20);
    let resp = client.post(format!("{}/v2/big/blobs/uploads/", ferry.base)).send().await.unwrap();
    let location = header(&resp, "location");
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..CHUNKS).map(move |i| Ok::<_, std::io::Error>(make(i))),
    ));
    let resp = client.patch(format!("{}{location}", ferry.base)).body(body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = client.put(format!("{}{location}?digest={d}", ferry.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let resp = client.get(format!("{}/v2/big/blobs/{d}", ferry.base)).send().await.unwrap();
    assert_eq!(header(&resp, "content-length"), (CHUNKS << 20).to_string());
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        sha2::Digest::update(&mut h, c.unwrap());
    }
    assert_eq!(format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))), d);
    let peak = ferry.peak_rss();
    eprintln!("peak RSS after a 1 GiB push and pull on S3: {} MiB", peak >> 20);
    assert!(peak < 150 << 20, "peak RSS {} MiB must stay under 150 MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_sends_clients_straight_to_s3() {
    let moto = Moto::start();
    moto.bucket("redirect").await;
    let f = TestFerry::start_with(|c| {
        moto.configure(c, "redirect");
        c.storage.s3.redirect = true;
    })
    .await;
    let blob = random_bytes(3 << 20, 66);
    let d = f.push_blob("team/app", &blob).await;
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = no_follow.get(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header(&resp, "location");
    assert!(location.starts_with(&moto.endpoint) && location.contains("X-Amz-Signature"), "{location}");
    assert_eq!(header(&resp, "docker-content-digest"), d);
    // A client that follows the redirect gets the blob from S3; Ferry never read it.
    let got = f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
    let m = f.metrics().await;
    assert!(
        m.contains(r#"ferry_http_sent_bytes_total{endpoint="blob_get"} 0"#),
        "blob bytes never pass through Ferry: {m}"
    );
    // Another repository still cannot get a URL for it.
    let resp = no_follow.get(f.url(&format!("/v2/other/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_multipart_uploads_are_aborted() {
    let moto = Moto::start();
    moto.bucket("leftovers").await;
    // What a crash in the middle of assembling a blob leaves behind.
    let sdk = moto.client();
    let key = format!("blobs/sha256/ab/{}", "ab".repeat(32));
    sdk.create_multipart_upload().bucket("leftovers").key(&key).send().await.unwrap();
    let listed = sdk.list_multipart_uploads().bucket("leftovers").send().await.unwrap();
    assert_eq!(listed.uploads().len(), 1);
    let f = TestFerry::start_with(|c| {
        moto.configure(c, "leftovers");
        c.registry.upload_max_idle = ferry::config::HumanDuration(Duration::from_millis(1));
        c.registry.upload_purge_interval = ferry::config::HumanDuration(Duration::from_millis(50));
    })
    .await;
    eventually("the abandoned multipart upload was aborted", Duration::from_secs(15), || async {
        sdk.list_multipart_uploads().bucket("leftovers").send().await.unwrap().uploads().is_empty()
    })
    .await;
    assert!(f.metrics().await.contains(r#"operation="AbortMultipartUpload",result="ok""#));
}
