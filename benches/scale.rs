//! `cargo bench --bench scale`: what a request costs as the registry grows. Ferry runs in this
//! process over a counting wrapper around its durable store (no hot tier, so every storage
//! request is seen), on the filesystem and on s3s-fs. One repository is grown to each size in
//! `FERRY_BENCH_SCALE_SIZES` (default `1000,10000,100000`) images, and the registry to as many
//! repositories, by pushing and `CreateRepository` over HTTP (the server's own code paths);
//! then each operation is timed (median of `FERRY_BENCH_SCALE_ROUNDS`, default 15) and its
//! storage requests counted (the fewest of those rounds: a background worker's request can
//! only add). Prints per operation and size
//! `scale_<backend>_<op>_<n> requests=<r> reads=<r> lists=<l> ms=<t>`, then
//! `scale_<backend>_<op>_growth ratio=<t(largest)/t(smallest)>` (target <= 1.5 for every
//! per-request operation). `FERRY_BENCH_SCALE_BACKENDS` (default `fs,s3s-fs`) picks backends.
//!
//! A lifecycle round over the repository (`ferry lifecycle run --dry-run`, a policy that judges
//! every image and expires none) is timed once per size: `scale_<backend>_lifecycle_round_<n>
//! ms= ms_per_image=`. Its storage requests (one listing and one read per image) are asserted in
//! the unit tests (`lifecycle_reads_one_link_per_image`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{digest, free_port, ChildGuard};
use ferry::config::{Backend, Config, Secret};
use ferry::storage::counting::{CountingStorage, Requests};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

const AT_ONCE: usize = 32;
const REPO: &str = "scale/app";
const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn list_var(var: &str, default: &str) -> Vec<String> {
    std::env::var(var).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_owned()).collect()
}

fn manifest(config: &str, layer: &str, n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
        "annotations": {"n": n.to_string()},
    }))
    .unwrap()
}

struct Bench {
    client: reqwest::Client,
    base: String,
    counted: Arc<CountingStorage>,
    config_digest: String,
    layer_digest: String,
}

impl Bench {
    async fn ecr(&self, op: &str, body: Value) -> Value {
        let resp = self
            .client
            .post(format!("{}/", self.base))
            .header("X-Amz-Target", format!("{TARGET}{op}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let out: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{op}: {status} {out}");
        out
    }

    async fn push_blob(&self, bytes: &'static [u8]) -> String {
        let d = digest(bytes);
        let url = format!("{}/v2/{REPO}/blobs/uploads/?digest={d}", self.base);
        let resp = self.client.post(url).body(bytes).send().await.unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        d
    }

    async fn push_image(&self, n: usize) -> reqwest::StatusCode {
        let body = manifest(&self.config_digest, &self.layer_digest, n);
        let url = format!("{}/v2/{REPO}/manifests/t{n}", self.base);
        let resp = self.client.put(url).header("Content-Type", MANIFEST_TYPE).body(body).send().await.unwrap();
        resp.status()
    }

    /// Grows the repository to `images` images and the registry to `repositories` repositories.
    async fn grow(&self, images: std::ops::Range<usize>, repositories: std::ops::Range<usize>) {
        futures_util::stream::iter(images)
            .map(|n| async move { assert_eq!(self.push_image(n).await, reqwest::StatusCode::CREATED) })
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<()>>()
            .await;
        futures_util::stream::iter(repositories)
            .map(|n| async move {
                self.ecr("CreateRepository", json!({ "repositoryName": format!("scale-r/{n:06}") })).await;
            })
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<()>>()
            .await;
    }

    async fn get(&self, path: &str) {
        let resp =
            self.client.get(format!("{}{path}", self.base)).header("Accept", MANIFEST_TYPE).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.bytes().await.unwrap();
    }

    /// Runs `op` `rounds` times: the median time (ms) and the fewest storage requests.
    async fn measure<F, Fut>(&self, rounds: usize, op: F) -> (f64, Requests)
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        op(usize::MAX).await; // warm: index markers, connections
        let (mut times, mut fewest) = (Vec::new(), None::<Requests>);
        for round in 0..rounds {
            let before = self.counted.requests();
            let started = Instant::now();
            op(round).await;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let after = self.counted.requests();
            let used = Requests {
                reads: after.reads - before.reads,
                writes: after.writes - before.writes,
                deletes: after.deletes - before.deletes,
                lists: after.lists - before.lists,
            };
            if fewest.is_none_or(|f| used.total() < f.total()) {
                fewest = Some(used);
            }
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], fewest.unwrap_or_default())
    }
}

/// An s3s-fs server on a free port with a bucket `scale`, killed when dropped.
fn start_s3s_fs(dir: &std::path::Path) -> (ChildGuard, String) {
    let tools = std::env::var("FERRY_TEST_TOOLS").unwrap_or_else(|_| "/var/tmp/ferry-tools".into());
    let port = free_port();
    // s3s-fs keeps each bucket as a directory of its data directory.
    std::fs::create_dir_all(dir.join("scale")).unwrap();
    let child = Command::new(format!("{tools}/bin/s3s-fs"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            "bench",
            "--secret-key",
            "benchsecret",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs runs (scripts/test.sh installs it into FERRY_TEST_TOOLS)");
    common::wait_until_listening(port);
    (ChildGuard::new(child), format!("http://127.0.0.1:{port}"))
}

async fn run(backend: &str, sizes: &[usize], rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.server.admin_listen = "127.0.0.1:0".into();
    config.storage.data_dir = dir.path().join("data");
    config.hot_tier.max_bytes = ferry::config::ByteSize(0);
    config.log.level = "warn".into();
    let mut _s3 = None;
    if backend == "s3s-fs" {
        let (child, endpoint) = start_s3s_fs(&dir.path().join("s3"));
        _s3 = Some(child);
        config.storage.backend = Backend::S3;
        let s3 = &mut config.storage.s3;
        s3.bucket = "scale".into();
        s3.endpoint = endpoint;
        s3.force_path_style = true;
        s3.access_key_id = "bench".into();
        s3.secret_access_key = Secret("benchsecret".into());
    }
    let mut counted = None;
    let server = ferry::server::start_wrapped(config.clone(), Arc::new(ferry::clock::SystemClock), |backend| {
        let c = Arc::new(CountingStorage::new(backend));
        counted = Some(c.clone());
        c
    })
    .await
    .expect("ferry starts");
    let mut bench = Bench {
        client: reqwest::Client::new(),
        base: format!("http://{}", server.addr),
        counted: counted.expect("the backend was wrapped"),
        config_digest: String::new(),
        layer_digest: String::new(),
    };
    bench.ecr("CreateRepository", json!({ "repositoryName": REPO })).await;
    // A policy that judges every image and expires none (no repository grows this large).
    let policy = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":10000000},"action":{"type":"expire"}}]}"#;
    bench.ecr("PutLifecyclePolicy", json!({ "repositoryName": REPO, "lifecyclePolicyText": policy })).await;
    let repo_name = ferry::oci::RepositoryName::parse(REPO).unwrap();
    bench.config_digest = bench.push_blob(b"{}").await;
    bench.layer_digest = bench.push_blob(b"layer").await;

    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let (mut images, mut repositories) = (0usize, 0usize);
    for &size in sizes {
        let started = Instant::now();
        bench.grow(images..size, repositories..size).await;
        (images, repositories) = (size, size);
        println!(
            "# {backend}: seeded {size} images and {size} repositories in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let repo = json!({ "repositoryName": REPO });
        let with = |extra: Value| {
            let mut v = repo.clone();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            v
        };
        let b = &bench;
        let ops: Vec<(&'static str, (f64, Requests))> = vec![
            (
                "batch_get_image",
                b.measure(rounds, |_| async {
                    b.ecr("BatchGetImage", with(json!({"imageIds": [{"imageTag": "t7"}]}))).await;
                })
                .await,
            ),
            (
                "describe_images_one",
                b.measure(rounds, |_| async {
                    b.ecr("DescribeImages", with(json!({"imageIds": [{"imageTag": "t7"}]}))).await;
                })
                .await,
            ),
            (
                "list_images_page",
                b.measure(rounds, |_| async {
                    b.ecr("ListImages", with(json!({"maxResults": 100}))).await;
                })
                .await,
            ),
            (
                "describe_images_page",
                b.measure(rounds, |_| async {
                    b.ecr("DescribeImages", with(json!({"maxResults": 100}))).await;
                })
                .await,
            ),
            (
                "manifest_get_by_tag",
                b.measure(rounds, |_| async { b.get(&format!("/v2/{REPO}/manifests/t7")).await }).await,
            ),
            (
                "tags_list_page",
                b.measure(rounds, |_| async { b.get(&format!("/v2/{REPO}/tags/list?n=100")).await }).await,
            ),
            ("catalog_page", b.measure(rounds, |_| async { b.get("/v2/_catalog?n=100").await }).await),
            (
                "describe_repositories_page",
                b.measure(rounds, |_| async {
                    b.ecr("DescribeRepositories", json!({"maxResults": 100})).await;
                })
                .await,
            ),
            (
                "push_image",
                b.measure(rounds, |round| async move {
                    // A new tag each round, on an image of its own (past every seeded one).
                    let n = size.saturating_mul(10).saturating_add(round.min(1_000_000));
                    assert!(b.push_image(n).await.is_success());
                })
                .await,
            ),
        ];
        // A lifecycle round over the repository (dry, as `ferry lifecycle run --dry-run`): one
        // pass over the index; once per size, its time per image.
        let started = Instant::now();
        let round = ferry::run_lifecycle(&config, Some(&repo_name), true, Arc::new(ferry::clock::SystemClock)).await;
        let judged = round.expect("a lifecycle round").repositories.len();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        #[allow(clippy::cast_precision_loss)]
        let per_image = ms / size as f64;
        println!("scale_{backend}_lifecycle_round_{size} repositories={judged} ms={ms:.1} ms_per_image={per_image:.4}");
        for (op, (ms, requests)) in ops {
            println!(
                "scale_{backend}_{op}_{size} requests={} reads={} writes={} lists={} ms={ms:.3}",
                requests.total(),
                requests.reads,
                requests.writes,
                requests.lists
            );
            times.entry(op).or_default().push(ms);
        }
    }
    for (op, t) in &times {
        if let (Some(first), Some(last)) = (t.first(), t.last()) {
            println!("scale_{backend}_{op}_growth ratio={:.2}", last / first.max(0.001));
        }
    }
    server.shutdown().await;
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = list_var("FERRY_BENCH_SCALE_SIZES", "1000,10000,100000")
        .iter()
        .map(|s| s.parse().expect("FERRY_BENCH_SCALE_SIZES: whole numbers"))
        .collect();
    let rounds: usize =
        std::env::var("FERRY_BENCH_SCALE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15).max(1);
    for backend in list_var("FERRY_BENCH_SCALE_BACKENDS", "fs,s3s-fs") {
        run(&backend, &sizes, rounds).await;
    }
}
