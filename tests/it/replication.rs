//! Replication between Ferry "regions": separate registries, each with its own storage,
//! registry id and region; the source runs as two replicas on one S3 bucket (moto). Pushes with
//! skopeo and by hand; each destination holds the source's replicator as a principal of another
//! account, and accepts its images only under its registry policy. Status is polled through
//! `DescribeImageReplicationStatus`, bounded and without fixed sleeps. Faults come from real
//! parts (a destination stopped, a source process killed) and, where no real program fails on
//! demand, from the harness relay (`tests/support/relay.rs`).

use crate::clients::{policy, run, skopeo};
use crate::ecr_api::signed_call_in;
use crate::harness::*;
use crate::images::build_layout;
use crate::relay::{Relay, RelaySettings};
use ferry::config::{AuthConfig, Config, HumanDuration, PrincipalConfig, ReplicationTarget};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub const SOURCE_ID: &str = "111111111111";
const REPLICATOR_KEY: &str = "AKIAREPLICATOR000001";
const ADMIN_KEY: &str = "AKIAREGIONADMIN00001";
/// Long enough for a copy over the loopback on a loaded CI machine; a hang fails the test.
const WITHIN: Duration = Duration::from_secs(60);

/// A destination region: a Ferry with access control on, an `admin` of its own account and
/// the source's `replicator` (account [`SOURCE_ID`]), listening on a fixed port so it can be
/// stopped and started again at the same address.
pub struct Region {
    pub f: TestFerry,
    pub id: &'static str,
    pub region: &'static str,
    pub port: u16,
    admin_secret: String,
    replicator_secret_file: String,
    _secrets: tempfile::TempDir,
}

fn secret_principal(
    dir: &Path,
    name: &str,
    key: &str,
    account: &str,
    policies: Vec<String>,
) -> (PrincipalConfig, String) {
    let secret = format!("{name}-secret-{key}");
    let file = dir.join(format!("{name}.secret"));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let config = PrincipalConfig {
        name: name.into(),
        account: account.into(),
        access_key_id: key.into(),
        secret_access_key_file: file.display().to_string(),
        policies,
        ..PrincipalConfig::default()
    };
    (config, file.display().to_string())
}

/// The registry policy a destination needs for the source's replications.
pub fn replication_policy(actions: &[&str]) -> String {
    json!({"Version": "2012-10-17", "Statement": [{
        "Sid": "replication", "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{SOURCE_ID}:root")},
        "Action": actions, "Resource": "*"
    }]})
    .to_string()
}

impl Region {
    /// Starts a destination; with `policy`, its registry policy lets the source replicate
    /// (and create repositories).
    pub async fn start(id: &'static str, region: &'static str, policy: bool) -> Self {
        Self::start_with(id, region, policy, |_| {}).await
    }

    pub async fn start_with(
        id: &'static str,
        region: &'static str,
        policy: bool,
        change: impl FnOnce(&mut Config),
    ) -> Self {
        let secrets = tempfile::tempdir().unwrap();
        let everything =
            json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]});
        let (admin, admin_file) =
            secret_principal(secrets.path(), "admin", ADMIN_KEY, "", vec![everything.to_string()]);
        let (replicator, replicator_file) =
            secret_principal(secrets.path(), "replicator", REPLICATOR_KEY, SOURCE_ID, Vec::new());
        let port = free_port();
        let f = TestFerry::start_with(move |c| {
            c.server.listen = format!("127.0.0.1:{port}");
            c.auth = AuthConfig {
                enabled: true,
                registry_id: id.into(),
                region: region.into(),
                principals: vec![admin, replicator],
                ..AuthConfig::default()
            };
            change(c);
        })
        .await;
        let admin_secret = std::fs::read_to_string(admin_file).unwrap().trim_end().to_owned();
        let r = Self { f, id, region, port, admin_secret, replicator_secret_file: replicator_file, _secrets: secrets };
        if policy {
            r.put_registry_policy(&replication_policy(&["ecr:ReplicateImage", "ecr:CreateRepository"])).await;
        }
        r
    }

    /// The `[[replication.destinations]]` entry the source needs for this region, reached
    /// through `port` (the region's own, or a relay's).
    pub fn target(&self, port: u16) -> ReplicationTarget {
        ReplicationTarget {
            registry_id: self.id.into(),
            region: self.region.into(),
            url: format!("http://127.0.0.1:{port}"),
            access_key_id: REPLICATOR_KEY.into(),
            secret_access_key_file: self.replicator_secret_file.clone(),
        }
    }

    pub async fn ecr(&self, operation: &str, body: Value) -> (u16, Value) {
        signed_call_in(&self.f, self.region, ADMIN_KEY, &self.admin_secret, operation, &body.to_string()).await
    }

    pub async fn put_registry_policy(&self, text: &str) {
        let (status, body) = self.ecr("PutRegistryPolicy", json!({ "policyText": text })).await;
        assert_eq!(status, 200, "{body}");
    }

    /// GET with the admin's credentials.
    pub async fn get(&self, path: &str, accept: &str) -> reqwest::Response {
        self.f
            .client
            .get(self.f.url(path))
            .basic_auth(ADMIN_KEY, Some(&self.admin_secret))
            .header("Accept", accept)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.f.server.take() {
            s.shutdown().await;
        }
    }

    pub async fn restart(&mut self) {
        self.f.restart().await;
        assert_eq!(self.f.base, format!("http://127.0.0.1:{}", self.port));
    }
}

/// One replica of the source on the bucket `bucket` of `moto`, replicating to `targets`.
pub async fn source_replica(moto: &crate::s3::Moto, bucket: &str, targets: Vec<ReplicationTarget>) -> TestFerry {
    TestFerry::start_with(|c| {
        moto.configure(c, bucket);
        c.auth.registry_id = SOURCE_ID.into();
        c.replication.destinations = targets;
        c.replication.poll_interval = HumanDuration(Duration::from_millis(200));
        c.replication.lease_ttl = HumanDuration(Duration::from_secs(2));
    })
    .await
}

/// An unsigned ECR API call (access control is off at the source).
pub async fn ecr(f: &TestFerry, operation: &str, body: Value) -> (u16, Value) {
    let resp = f
        .client
        .post(f.url("/"))
        .header("X-Amz-Target", format!("AmazonEC2ContainerRegistry_V20150921.{operation}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

/// A rule replicating repositories starting with one of `filters` (all when empty) to `regions`.
pub fn rule(regions: &[&Region], filters: &[&str]) -> Value {
    let destinations: Vec<Value> = regions.iter().map(|r| json!({"region": r.region, "registryId": r.id})).collect();
    let mut rule = json!({ "destinations": destinations });
    if !filters.is_empty() {
        rule["repositoryFilters"] =
            filters.iter().map(|f| json!({"filter": f, "filterType": "PREFIX_MATCH"})).collect::<Vec<_>>().into();
    }
    rule
}

pub async fn configure(f: &TestFerry, rules: Vec<Value>) {
    let (status, body) =
        ecr(f, "PutReplicationConfiguration", json!({ "replicationConfiguration": { "rules": rules } })).await;
    assert_eq!(status, 200, "{body}");
}

/// `(registry id, status, failure code)` per destination.
pub async fn statuses(f: &TestFerry, repo: &str, digest: &str) -> Vec<(String, String, String)> {
    let (status, body) = ecr(
        f,
        "DescribeImageReplicationStatus",
        json!({ "repositoryName": repo, "imageId": { "imageDigest": digest } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["replicationStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["registryId"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
                s["failureCode"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits until the image's status at `region` is `want`; returns its failure code.
pub async fn wait_status(f: &TestFerry, repo: &str, digest: &str, region: &Region, want: &str) -> String {
    let deadline = Instant::now() + WITHIN;
    loop {
        let all = statuses(f, repo, digest).await;
        if let Some((_, status, code)) = all.iter().find(|(id, _, _)| id == region.id) {
            if status == want {
                return code.clone();
            }
        }
        assert!(Instant::now() < deadline, "{repo}@{digest} never became {want} at {}: {all:?}", region.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The manifest `reference` names at the source and at the destination are the same bytes,
/// and so is everything they reference (children of an index, config and layers).
pub async fn assert_same_image(source: &TestFerry, dest: &Region, repo: &str, reference: &str) {
    let get = source.client.get(source.url(&format!("/v2/{repo}/manifests/{reference}"))).header("Accept", ACCEPT_ALL);
    let here = get.send().await.unwrap();
    assert_eq!(here.status(), StatusCode::OK);
    let here = here.bytes().await.unwrap();
    let there = dest.get(&format!("/v2/{repo}/manifests/{reference}"), ACCEPT_ALL).await;
    assert_eq!(there.status(), StatusCode::OK, "{repo}:{reference} is not at {}", dest.id);
    assert_eq!(there.bytes().await.unwrap(), here, "{repo}:{reference} differs at {}", dest.id);
    let manifest: Value = serde_json::from_slice(&here).unwrap();
    for child in manifest["manifests"].as_array().into_iter().flatten() {
        Box::pin(assert_same_image(source, dest, repo, child["digest"].as_str().unwrap())).await;
    }
    let blobs = manifest["layers"].as_array().into_iter().flatten().chain(manifest.get("config"));
    for blob in blobs {
        let d = blob["digest"].as_str().unwrap();
        let there = dest.get(&format!("/v2/{repo}/blobs/{d}"), "*/*").await;
        assert_eq!(there.status(), StatusCode::OK, "blob {d} is not at {}", dest.id);
        assert_eq!(digest(&there.bytes().await.unwrap()), d);
    }
}

/// Pushes an OCI layout with skopeo (`--all` for an index).
pub fn skopeo_push(dir: &Path, source: &str, base: &str, repo_tag: &str) {
    let p = policy(dir);
    let dest = format!("docker://{}/{repo_tag}", base.trim_start_matches("http://"));
    run(skopeo(&p).args(["copy", "--all", "--dest-tls-verify=false", source, &dest]));
}

/// Pushes a signature artifact whose subject is `subject` (of `size` bytes) into `repo`.
pub async fn push_signature(f: &TestFerry, repo: &str, subject: &str, size: u64, media_type: &str) -> String {
    let config = f.push_blob(repo, b"{}").await;
    let sig = f.push_blob(repo, format!("signature of {subject}").as_bytes()).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.signature.v1", "digest": sig,
                    "size": format!("signature of {subject}").len()}],
        "subject": {"mediaType": media_type, "digest": subject, "size": size}
    })
    .to_string();
    let d = digest(manifest.as_bytes());
    let resp = f.put_manifest(repo, &d, "application/vnd.oci.image.manifest.v1+json", manifest.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    d
}

async fn manifest_head(f: &TestFerry, repo: &str, reference: &str) -> (String, u64, String) {
    let resp = f
        .client
        .head(f.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    (
        header(&resp, "docker-content-digest"),
        header(&resp, "content-length").parse().unwrap(),
        header(&resp, "content-type"),
    )
}

/// The whole path: three regions, the source as two replicas on one bucket. A single-arch
/// image (pushed through one replica), a multi-arch index (through the other) and a signature
/// referring to the first reach both destinations byte for byte. One destination is down when
/// they are pushed: its status stays `IN_PROGRESS` (retried, counted as failures) until it is
/// back, then turns `COMPLETE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_reach_every_region_byte_identical_even_one_that_was_down() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let b = Region::start("222222222222", "eu-west-1", true).await;
    let mut c = Region::start("333333333333", "ap-south-1", true).await;
    let targets = vec![b.target(b.port), c.target(c.port)];
    let a1 = source_replica(&moto, "source", targets.clone()).await;
    let a2 = source_replica(&moto, "source", targets).await;
    configure(&a1, vec![rule(&[&b, &c], &[])]).await;
    c.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let single = build_layout(&dir.path().join("single"), "v1", &["linux/amd64"], 300_000, false, 1);
    skopeo_push(dir.path(), &single.source, &a1.base, "team/app:v1");
    let multi = build_layout(&dir.path().join("multi"), "v1", &["linux/amd64", "linux/arm64"], 100_000, false, 2);
    skopeo_push(dir.path(), &multi.source, &a2.base, "team/multi:v1");
    let (top, size, media_type) = manifest_head(&a1, "team/app", "v1").await;
    assert_eq!(top, single.top);
    let signature = push_signature(&a2, "team/app", &top, size, &media_type).await;

    // Read through the other replica than the one pushed to: the status is in storage.
    for (f, repo, d) in [(&a2, "team/app", &single.top), (&a1, "team/multi", &multi.top), (&a1, "team/app", &signature)]
    {
        wait_status(f, repo, d, &b, "COMPLETE").await;
        assert_eq!(wait_status(f, repo, d, &c, "IN_PROGRESS").await, "");
    }
    let failures = metric_sum(&a1.metrics().await, "ferry_replication_failures_total", &["333333333333/ap-south-1"])
        + metric_sum(&a2.metrics().await, "ferry_replication_failures_total", &["333333333333/ap-south-1"]);
    assert!(failures >= 1.0, "the stopped region was tried");

    c.restart().await;
    for (repo, d) in [("team/app", &single.top), ("team/multi", &multi.top), ("team/app", &signature)] {
        wait_status(&a1, repo, d, &c, "COMPLETE").await;
    }
    for region in [&b, &c] {
        assert_same_image(&a1, region, "team/app", "v1").await;
        assert_same_image(&a1, region, "team/multi", "v1").await;
        assert_same_image(&a1, region, "team/app", &signature).await;
        let referrers: Value = region.get(&format!("/v2/team/app/referrers/{top}"), "*/*").await.json().await.unwrap();
        assert_eq!(referrers["manifests"][0]["digest"], signature.as_str(), "{referrers}");
    }
    // What a destination created for the source is a repository like any other there.
    let (status, body) = b.ecr("DescribeRepositories", json!({ "repositoryNames": ["team/multi"] })).await;
    assert_eq!(status, 200, "{body}");
    let replicated = metric_sum(&a1.metrics().await, "ferry_replication_images_total", &[])
        + metric_sum(&a2.metrics().await, "ferry_replication_images_total", &[]);
    let pushes = 1 + multi.platforms.len() + 1 + 1; // skopeo pushes each platform manifest, then the index
    assert_eq!(replicated, (pushes * 2) as f64, "each push reaches each region once");
}
