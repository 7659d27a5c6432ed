//! Replication against `skopeo copy`, the tool people use by hand, between the same kind of
//! registries over the same slow link: a source Ferry, and two fresh destination Ferrys each
//! behind the harness relay adding 50 ms each way (`tests/support/relay.rs`; this kernel has
//! no `netem`). Ferry replicates an image it was pushed into one destination; skopeo copies the
//! same image from the source into the other. Measured:
//! - a single-layer image of `FERRY_BENCH_REPLICATION_BYTES` (default 1 GiB): Ferry's time from
//!   the push acknowledged to `COMPLETE` against skopeo's copy time (target ratio >= 1.0);
//! - an image of `FERRY_BENCH_REPLICATION_LAYERS` small layers (default 200, 64 KiB each), the
//!   same way (target >= 3: Ferry copies layers concurrently);
//! - the lag from push acknowledged to `COMPLETE` for a small image, p50 and p99 over
//!   `FERRY_BENCH_REPLICATION_PUSHES` pushes (default 50).
//!
//! Run with `cargo bench --bench replication`. Prints `<name> ferry=<s> peer=<s> ratio=<r> s`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../tests/support/data.rs"]
mod data;
#[path = "../tests/support/relay.rs"]
mod relay;

use common::{digest, report, start_ferry_with, Server};
use data::random_bytes;
use relay::{Relay, RelaySettings};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const SOURCE_ID: &str = "111111111111";
const LATENCY: Duration = Duration::from_millis(50);

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, blob: Vec<u8>) -> String {
    let d = digest(&blob);
    let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")).body(blob).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{:?}", resp.text().await);
    d
}

/// Pushes `layers` (and a config) into `repo`; returns the manifest's bytes.
async fn push_layers(client: &reqwest::Client, base: &str, repo: &str, layers: Vec<Vec<u8>>) -> Vec<u8> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"repo\":\"{repo}\"}}").into_bytes();
    let config_size = config.len();
    let config_digest = push_blob(client, base, repo, config).await;
    let mut descriptors = Vec::new();
    for layer in layers {
        let size = layer.len();
        let d = push_blob(client, base, repo, layer).await;
        descriptors.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}));
    }
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }))
    .unwrap()
}

async fn put_manifest(client: &reqwest::Client, base: &str, repo: &str, tag: &str, manifest: &[u8]) {
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{:?}", resp.text().await);
}

async fn ecr(client: &reqwest::Client, base: &str, operation: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = client
        .post(format!("{base}/"))
        .header("X-Amz-Target", format!("AmazonEC2ContainerRegistry_V20150921.{operation}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{operation}: {:?}", resp.text().await);
    resp.json().await.unwrap()
}

/// Pushes the manifest (its blobs are already there) and times acknowledgement to `COMPLETE`.
async fn replicate(client: &reqwest::Client, source: &str, repo: &str, manifest: &[u8]) -> Duration {
    let d = digest(manifest);
    put_manifest(client, source, repo, "v1", manifest).await;
    let acknowledged = Instant::now();
    let deadline = acknowledged + Duration::from_secs(1800);
    loop {
        let body = ecr(
            client,
            source,
            "DescribeImageReplicationStatus",
            json!({"repositoryName": repo, "imageId": {"imageDigest": d}}),
        )
        .await;
        match body["replicationStatuses"][0]["status"].as_str() {
            Some("COMPLETE") => return acknowledged.elapsed(),
            Some("FAILED") => panic!("replication failed: {body}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no replication after 30 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `skopeo copy` of `repo:v1` from the source to the peer destination; its wall time.
fn skopeo_copy(dir: &std::path::Path, source: &str, dest_port: u16, repo: &str) -> Duration {
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    std::fs::write(dir.join("auth.json"), r#"{"auths":{}}"#).unwrap();
    let started = Instant::now();
    let out = Command::new("skopeo")
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .arg(format!("docker://{}/{repo}:v1", source.trim_start_matches("http://")))
        .arg(format!("docker://127.0.0.1:{dest_port}/{repo}:v1"))
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    took
}

struct Setup {
    source: Server,
    _ferry_dest: Server,
    _skopeo_dest: Server,
    _relays: (Relay, Relay),
    skopeo_port: u16,
    client: reqwest::Client,
}

async fn setup() -> Setup {
    let ferry_dest = start_ferry_with("[auth]\nregistry_id = \"222222222222\"\nregion = \"eu-west-1\"\n");
    let skopeo_dest = start_ferry_with("[auth]\nregistry_id = \"333333333333\"\nregion = \"eu-west-1\"\n");
    let port = |s: &Server| s.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let settings = RelaySettings { latency: LATENCY, ..RelaySettings::default() };
    let (to_ferry, to_skopeo) =
        (Relay::start(port(&ferry_dest), settings.clone()), Relay::start(port(&skopeo_dest), settings));
    let source = start_ferry_with(&format!(
        "[auth]\nregistry_id = \"{SOURCE_ID}\"\n[[replication.destinations]]\nregistry_id = \"222222222222\"\nregion = \"eu-west-1\"\nurl = \"http://127.0.0.1:{}\"\n",
        to_ferry.port
    ));
    let client = reqwest::Client::new();
    let rules = json!({"replicationConfiguration": {"rules": [{
        "destinations": [{"region": "eu-west-1", "registryId": "222222222222"}],
        "repositoryFilters": [{"filter": "repl/", "filterType": "PREFIX_MATCH"}]
    }]}});
    ecr(&client, &source.base, "PutReplicationConfiguration", rules).await;
    Setup {
        skopeo_port: to_skopeo.port,
        source,
        _ferry_dest: ferry_dest,
        _skopeo_dest: skopeo_dest,
        _relays: (to_ferry, to_skopeo),
        client,
    }
}

/// One image both ways: pushed under `repl/<name>` (replicated by Ferry) and `copy/<name>`
/// (copied by skopeo); same blobs, so the same bytes travel.
async fn compare(s: &Setup, name: &str, layers: impl Fn() -> Vec<Vec<u8>>, dir: &std::path::Path) {
    let copy_repo = format!("copy/{name}");
    let manifest = push_layers(&s.client, &s.source.base, &copy_repo, layers()).await;
    put_manifest(&s.client, &s.source.base, &copy_repo, "v1", &manifest).await;
    let repl_repo = format!("repl/{name}");
    let replicated = push_layers(&s.client, &s.source.base, &repl_repo, layers()).await;
    let ferry = replicate(&s.client, &s.source.base, &repl_repo, &replicated).await;
    let peer = skopeo_copy(dir, &s.source.base, s.skopeo_port, &copy_repo);
    report(&format!("replicate_{name}_over_50ms"), ferry.as_secs_f64(), peer.as_secs_f64(), false, "s");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let s = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let size = count("FERRY_BENCH_REPLICATION_BYTES", 1 << 30);
    compare(&s, "single_layer", || vec![random_bytes(size, 1)], dir.path()).await;
    let n = count("FERRY_BENCH_REPLICATION_LAYERS", 200);
    compare(
        &s,
        &format!("{n}_layers"),
        || (0..n).map(|i| random_bytes(64 << 10, 1000 + i as u64)).collect(),
        dir.path(),
    )
    .await;

    let pushes = count("FERRY_BENCH_REPLICATION_PUSHES", 50);
    let mut lags = Vec::new();
    for i in 0..pushes {
        let repo = format!("repl/lag{i}");
        let manifest = push_layers(&s.client, &s.source.base, &repo, vec![random_bytes(4096, 5000 + i as u64)]).await;
        lags.push(replicate(&s.client, &s.source.base, &repo, &manifest).await);
    }
    lags.sort();
    println!(
        "replication_lag_small_image_over_50ms p50={:.3} p99={:.3} s ({pushes} pushes)",
        percentile(&lags, 0.5).as_secs_f64(),
        percentile(&lags, 0.99).as_secs_f64()
    );
}
