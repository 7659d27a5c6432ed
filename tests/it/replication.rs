//! Replication between Ferry "regions": separate registries, each with its own storage,
//! registry id and region; the source runs as two replicas on one S3 bucket (moto). Pushes with
//! skopeo and by hand; each destination holds the source's replicator as a principal of another
//! account, and accepts its images only under its registry policy. Status is polled through
//! `DescribeImageReplicationStatus`, bounded and without fixed sleeps. Faults come from real
//! parts (a destination stopped, a source process killed) and, where no real program fails on
//! demand, from the harness relay (`tests/support/relay.rs`).

use crate::clients::{policy, run, skopeo};
use crate::ecr_api::{boto3_open, signed_call_in};
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
    ecr_at(&f.base, operation, body).await
}

/// The same, to the registry at `base`.
pub async fn ecr_at(base: &str, operation: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/"))
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
pub async fn statuses(base: &str, repo: &str, digest: &str) -> Vec<(String, String, String)> {
    let (status, body) = ecr_at(
        base,
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
pub async fn wait_status(base: &str, repo: &str, digest: &str, region: &Region, want: &str) -> String {
    let what = format!("{repo}@{digest} becomes {want} at {}", region.id);
    eventually_value(&what, WITHIN, || async {
        let all = statuses(base, repo, digest).await;
        match all.iter().find(|(id, status, _)| id == region.id && status == want) {
            Some((_, _, code)) => Ok(code.clone()),
            None => Err(all),
        }
    })
    .await
}

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The manifest `reference` names at the source and at the destination are the same bytes,
/// and so is everything they reference (children of an index, config and layers).
pub async fn assert_same_image(source: &str, dest: &Region, repo: &str, reference: &str) {
    let get =
        reqwest::Client::new().get(format!("{source}/v2/{repo}/manifests/{reference}")).header("Accept", ACCEPT_ALL);
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

async fn manifest_head(base: &str, repo: &str, reference: &str) -> (String, u64, String) {
    let resp = reqwest::Client::new()
        .head(format!("{base}/v2/{repo}/manifests/{reference}"))
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
    let (top, size, media_type) = manifest_head(&a1.base, "team/app", "v1").await;
    assert_eq!(top, single.top);
    let signature = push_signature(&a2, "team/app", &top, size, &media_type).await;

    // Read through the other replica than the one pushed to: the status is in storage.
    for (f, repo, d) in [(&a2, "team/app", &single.top), (&a1, "team/multi", &multi.top), (&a1, "team/app", &signature)]
    {
        wait_status(&f.base, repo, d, &b, "COMPLETE").await;
        assert_eq!(wait_status(&f.base, repo, d, &c, "IN_PROGRESS").await, "");
    }
    let failures = metric_sum(&a1.metrics().await, "ferry_replication_failures_total", &["333333333333/ap-south-1"])
        + metric_sum(&a2.metrics().await, "ferry_replication_failures_total", &["333333333333/ap-south-1"]);
    assert!(failures >= 1.0, "the stopped region was tried");
    let gauge = |name: &'static str| {
        let (a1, a2) = (&a1, &a2);
        async move {
            metric_sum(&a1.metrics().await, name, &["333333333333/ap-south-1"]).max(metric_sum(
                &a2.metrics().await,
                name,
                &["333333333333/ap-south-1"],
            ))
        }
    };
    eventually("the pending gauge counts what waits for C", WITHIN, || async {
        gauge("ferry_replication_events_pending").await >= 3.0
            && gauge("ferry_replication_oldest_pending_seconds").await > 0.0
    })
    .await;

    c.restart().await;
    for (repo, d) in [("team/app", &single.top), ("team/multi", &multi.top), ("team/app", &signature)] {
        wait_status(&a1.base, repo, d, &c, "COMPLETE").await;
    }
    for region in [&b, &c] {
        assert_same_image(&a1.base, region, "team/app", "v1").await;
        assert_same_image(&a1.base, region, "team/multi", "v1").await;
        assert_same_image(&a1.base, region, "team/app", &signature).await;
        let referrers: Value = region.get(&format!("/v2/team/app/referrers/{top}"), "*/*").await.json().await.unwrap();
        assert_eq!(referrers["manifests"][0]["digest"], signature.as_str(), "{referrers}");
    }
    // boto3 reads the status as ECR's model describes it.
    let v = crate::ecr_api::python_json(&format!(
        r#"
import boto3, json
ecr = boto3.client('ecr', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')
r = ecr.describe_image_replication_status(repositoryName='team/app', imageId={{'imageTag': 'v1'}})
print(json.dumps([r['imageId'], sorted((s['registryId'], s['region'], s['status']) for s in r['replicationStatuses'])]))
"#,
        a2.base
    ));
    assert_eq!(v[0]["imageDigest"], single.top.as_str(), "{v}");
    assert_eq!(v[1], json!([["222222222222", "eu-west-1", "COMPLETE"], ["333333333333", "ap-south-1", "COMPLETE"]]));
    // What a destination created for the source is a repository like any other there.
    let (status, body) = b.ecr("DescribeRepositories", json!({ "repositoryNames": ["team/multi"] })).await;
    assert_eq!(status, 200, "{body}");
    // Counted once each copy is committed (just after its status is), so read until it settles.
    let pushes = 1 + multi.platforms.len() + 1 + 1; // skopeo pushes each platform manifest, then the index
    let replicated = || async {
        metric_sum(&a1.metrics().await, "ferry_replication_images_total", &[])
            + metric_sum(&a2.metrics().await, "ferry_replication_images_total", &[])
    };
    eventually("each push reaches each region once", WITHIN, || async { replicated().await >= (pushes * 2) as f64 })
        .await;
    assert_eq!(replicated().await, (pushes * 2) as f64, "each push reaches each region once");
    // Finished events leave nothing behind (the status is written before the event and its
    // image lease are removed, so this may trail it briefly): no event, no image lease.
    let s3 = moto.client();
    eventually("no replication event or lease is left", WITHIN, || async {
        let mut left = 0;
        for prefix in ["replication/events/", "leases/replication-"] {
            let listed = s3.list_objects_v2().bucket("source").prefix(prefix).send().await.unwrap();
            left += listed.key_count().unwrap_or(0);
        }
        left == 0
    })
    .await;
}

/// A source replica as its own process (so it can be killed), on `bucket` of `moto`.
fn source_process(moto: &crate::s3::Moto, bucket: &str, targets: Vec<ReplicationTarget>, dir: &Path) -> FerryProcess {
    let mut c = Config::default();
    moto.configure(&mut c, bucket);
    c.auth.registry_id = SOURCE_ID.into();
    c.replication.destinations = targets;
    c.replication.poll_interval = HumanDuration(Duration::from_millis(200));
    c.replication.lease_ttl = HumanDuration(Duration::from_secs(2));
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let file = dir.join(format!("source-{}.toml", NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
    std::fs::write(&file, toml::to_string(&c).unwrap()).unwrap();
    FerryProcess::start_env(dir, &[("FERRY_CONFIG", file.to_str().unwrap())])
}

async fn metrics_of(admin: &str) -> String {
    reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap()
}

/// The source replica copying a large blob is killed with `kill -9` mid-blob (the link to the
/// destination is held to 8 MiB/s by the relay, so the copy is still going); the other replica
/// takes the event over once its lease lapses and finishes it, and the destination ends with
/// the image intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_replica_killed_mid_blob_is_taken_over_by_the_other() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let b = Region::start("222222222222", "eu-west-1", true).await;
    let relay = Relay::start(b.port, RelaySettings { bytes_per_sec: Some(8 << 20), ..RelaySettings::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = [
        source_process(&moto, "source", vec![b.target(relay.port)], dir.path()),
        source_process(&moto, "source", vec![b.target(relay.port)], dir.path()),
    ];
    let (status, body) = ecr_at(
        &replicas[0].base,
        "PutReplicationConfiguration",
        json!({ "replicationConfiguration": { "rules": [rule(&[&b], &[])] } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let layer = 40 << 20;
    let image = build_layout(&dir.path().join("big"), "v1", &["linux/amd64"], layer, false, 7);
    skopeo_push(dir.path(), &image.source, &replicas[0].base, "team/big:v1");

    // Whichever replica claimed the event is sending; kill it once a fifth of the layer left.
    let copying = eventually_value("a replica copies a fifth of the layer", WITHIN, || async {
        let mut sent = Vec::new();
        for p in &replicas {
            sent.push(metric_sum(&metrics_of(&p.admin).await, "ferry_replication_bytes_total", &[]));
        }
        sent.iter().position(|&bytes| bytes > (layer / 5) as f64).ok_or(sent)
    })
    .await;
    replicas[copying].kill();
    let survivor = &replicas[1 - copying];
    assert_eq!(statuses(&survivor.base, "team/big", &image.top).await[0].1, "IN_PROGRESS");
    wait_status(&survivor.base, "team/big", &image.top, &b, "COMPLETE").await;
    let sent = metric_sum(&metrics_of(&survivor.admin).await, "ferry_replication_bytes_total", &[]);
    assert!(sent >= layer as f64, "the survivor sent the whole layer itself ({sent} bytes)");
    assert_same_image(&survivor.base, &b, "team/big", "v1").await;
}

/// Faults and a slow link at once: region B sits behind a relay adding 50 ms each way whose
/// first three connections answer 500 (retried, then replicated; the lag is reported); region
/// C has no registry policy for the source (`FAILED` with a failure code), and accepts the
/// same image pushed again once the policy is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_or_reported_and_a_slow_link_still_replicates() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let b = Region::start("222222222222", "eu-west-1", true).await;
    let c = Region::start("333333333333", "ap-south-1", false).await;
    let relay = Relay::start(
        b.port,
        RelaySettings { latency: Duration::from_millis(50), fail_first: 3, ..RelaySettings::default() },
    );
    let a = source_replica(&moto, "source", vec![b.target(relay.port), c.target(c.port)]).await;
    configure(&a, vec![rule(&[&b, &c], &[])]).await;

    let pushed = Instant::now();
    let (_, top) = a.push_image("team/app", "v1", &random_bytes(200_000, 11)).await;
    wait_status(&a.base, "team/app", &top, &b, "COMPLETE").await;
    let lag = pushed.elapsed();
    println!("replication lag over a 50 ms link (one small image, after three 500s): {lag:?}");
    assert_eq!(relay.failed.load(std::sync::atomic::Ordering::SeqCst), 3);
    let text = a.metrics().await;
    assert!(metric_sum(&text, "ferry_replication_failures_total", &["222222222222", "DESTINATION_ERROR"]) >= 1.0);
    assert_same_image(&a.base, &b, "team/app", "v1").await;

    let code = wait_status(&a.base, "team/app", &top, &c, "FAILED").await;
    assert!(code.starts_with("ACCESS_DENIED"), "{code}");
    assert!(code.contains("ecr:ReplicateImage") || code.contains("ecr:CreateRepository"), "{code}");
    let missing = c.get("/v2/team/app/manifests/v1", ACCEPT_ALL).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    c.put_registry_policy(&replication_policy(&["ecr:ReplicateImage", "ecr:CreateRepository"])).await;
    let (_, again) = a.push_image("team/app", "v1", &random_bytes(200_000, 11)).await;
    assert_eq!(again, top);
    wait_status(&a.base, "team/app", &top, &c, "COMPLETE").await;
    assert_same_image(&a.base, &c, "team/app", "v1").await;
}

/// ECR's semantics: repository filters; deletes stay at the source; an image replicated into B
/// is not carried on to C (while B's own pushes are); a tag B keeps immutable is left off, so
/// the image arrives untagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_deletes_chaining_and_immutable_tags_behave_as_in_ecr() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let c = Region::start("333333333333", "ap-south-1", true).await;
    // B replicates on to C with its own (source-account) replicator key: only B's own pushes
    // may travel, never what A replicated into it.
    let to_c = c.target(c.port);
    let b = Region::start_with("222222222222", "eu-west-1", true, move |cfg| {
        cfg.replication.destinations = vec![to_c];
        cfg.replication.poll_interval = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let (status, body) = b
        .ecr("PutReplicationConfiguration", json!({ "replicationConfiguration": { "rules": [rule(&[&c], &[])] } }))
        .await;
    assert_eq!(status, 200, "{body}");
    let a = source_replica(&moto, "source", vec![b.target(b.port)]).await;
    configure(&a, vec![rule(&[&b], &["team/", "imm/"])]).await;

    // B keeps imm/app's tags immutable, and v1 is taken there by another image.
    let (status, body) =
        b.ecr("CreateRepository", json!({ "repositoryName": "imm/app", "imageTagMutability": "IMMUTABLE" })).await;
    assert_eq!(status, 200, "{body}");

    let (_, other) = a.push_image("other/app", "v1", &random_bytes(1000, 1)).await;
    let (_, kept) = a.push_image("team/app", "v1", &random_bytes(1000, 2)).await;
    wait_status(&a.base, "team/app", &kept, &b, "COMPLETE").await;
    assert!(statuses(&a.base, "other/app", &other).await.is_empty(), "a filtered repository is never recorded");
    assert_eq!(b.get("/v2/other/app/manifests/v1", ACCEPT_ALL).await.status(), StatusCode::NOT_FOUND);

    // No chaining: A's image has no replication record at B, so it never reaches C...
    assert!(statuses_signed(&b, "team/app", &kept).await.is_empty());
    // ...while an image pushed to B itself does.
    let dir = tempfile::tempdir().unwrap();
    let own = build_layout(&dir.path().join("own"), "v1", &["linux/amd64"], 1000, false, 3);
    let p = policy(dir.path());
    let dest = format!("docker://127.0.0.1:{}/team/own:v1", b.port);
    let creds = format!("{ADMIN_KEY}:{}", b.admin_secret);
    run(skopeo(&p).args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds, &own.source, &dest]));
    wait_signed(&b, "team/own", &own.top, &c, "COMPLETE").await;
    assert_eq!(c.get("/v2/team/app/manifests/v1", ACCEPT_ALL).await.status(), StatusCode::NOT_FOUND);

    // Deletes are not replicated: deleted at A, still at B after a later image arrived there.
    let resp = a.client.delete(a.url(&format!("/v2/team/app/manifests/{kept}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let (_, later) = a.push_image("team/later", "v1", &random_bytes(1000, 4)).await;
    wait_status(&a.base, "team/later", &later, &b, "COMPLETE").await;
    assert_eq!(b.get(&format!("/v2/team/app/manifests/{kept}"), ACCEPT_ALL).await.status(), StatusCode::OK);

    // An immutable tag at B: the image arrives, untagged; B's v1 still names its own image.
    let theirs = b_push(&b, "imm/app", "v1", 5).await;
    let (_, ours) = a.push_image("imm/app", "v1", &random_bytes(1000, 6)).await;
    assert_ne!(ours, theirs);
    wait_status(&a.base, "imm/app", &ours, &b, "COMPLETE").await;
    assert_eq!(b.get(&format!("/v2/imm/app/manifests/{ours}"), ACCEPT_ALL).await.status(), StatusCode::OK);
    let tagged = b.get("/v2/imm/app/manifests/v1", ACCEPT_ALL).await;
    assert_eq!(header(&tagged, "docker-content-digest"), theirs);
    // Asked by that tag, the status says it did not arrive, and why.
    let (status, body) = ecr(
        &a,
        "DescribeImageReplicationStatus",
        json!({ "repositoryName": "imm/app", "imageId": { "imageTag": "v1" } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replicationStatuses"][0]["status"], "FAILED", "{body}");
    assert!(body["replicationStatuses"][0]["failureCode"].as_str().unwrap().starts_with("TAG_IMMUTABLE"), "{body}");

    // What the registry policy grants the source is pushing (and the HEADs a push makes):
    // saying it replicates never lets it read content, list or delete.
    let secret = std::fs::read_to_string(&b.replicator_secret_file).unwrap().trim_end().to_owned();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", b.f.base);
    let send = |req: reqwest::RequestBuilder| {
        req.basic_auth(REPLICATOR_KEY, Some(&secret))
            .header("Ferry-Replication", SOURCE_ID)
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    let manifest = url(&format!("/v2/imm/app/manifests/{ours}"));
    assert_eq!(send(client.head(&manifest)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(client.get(&manifest)).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(send(client.get(url("/v2/imm/app/tags/list"))).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(send(client.delete(&manifest)).await.unwrap().status(), StatusCode::FORBIDDEN);
}

/// Pushes a small image into `region` with its admin's credentials; returns the digest.
async fn b_push(region: &Region, repo: &str, tag: &str, seed: u64) -> String {
    let client = reqwest::Client::new();
    let base = &region.f.base;
    let auth = |r: reqwest::RequestBuilder| r.basic_auth(ADMIN_KEY, Some(&region.admin_secret));
    let layer = random_bytes(1000, seed);
    let mut digests = Vec::new();
    for blob in [&layer[..], b"{}"] {
        let d = digest(blob);
        let resp = auth(client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")))
            .header("Content-Type", "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        digests.push(d);
    }
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[1], "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digests[0], "size": layer.len()}]
    })
    .to_string();
    let resp = auth(client.put(format!("{base}/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    digest(manifest.as_bytes())
}

/// Statuses read from a region with access control on.
async fn statuses_signed(region: &Region, repo: &str, digest: &str) -> Vec<Value> {
    let (status, body) = region
        .ecr("DescribeImageReplicationStatus", json!({ "repositoryName": repo, "imageId": { "imageDigest": digest } }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["replicationStatuses"].as_array().unwrap().clone()
}

async fn wait_signed(region: &Region, repo: &str, digest: &str, to: &Region, want: &str) {
    let what = format!("{repo}@{digest} becomes {want} at {}", to.id);
    eventually_value(&what, WITHIN, || async {
        let all = statuses_signed(region, repo, digest).await;
        match all.iter().any(|s| s["registryId"] == to.id && s["status"] == want) {
            true => Ok(()),
            false => Err(all),
        }
    })
    .await
}

/// What was there before the configuration is not replicated until `ferry replication
/// backfill`, which copies it once: a second run queues nothing and the destination receives
/// no manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backfill_copies_what_was_there_before_once_even_when_run_twice() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let b = Region::start("222222222222", "eu-west-1", true).await;
    let a = source_replica(&moto, "source", vec![b.target(b.port)]).await;
    let (_, old) = a.push_image("team/old", "v1", &random_bytes(5000, 1)).await;
    let (_, other) = a.push_image("elsewhere/old", "v1", &random_bytes(5000, 2)).await;
    configure(&a, vec![rule(&[&b], &[])]).await;
    let (_, new) = a.push_image("team/new", "v1", &random_bytes(5000, 3)).await;
    wait_status(&a.base, "team/new", &new, &b, "COMPLETE").await;
    assert!(statuses(&a.base, "team/old", &old).await.is_empty(), "pushed before the configuration");
    assert_eq!(b.get("/v2/team/old/manifests/v1", ACCEPT_ALL).await.status(), StatusCode::NOT_FOUND);

    let file = a.dir.path().join("backfill.toml");
    std::fs::write(&file, toml::to_string(&a.config).unwrap()).unwrap();
    let backfill = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["replication", "backfill", "--repository", "team/", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = backfill();
    assert_eq!(first["images_queued"], 1, "{first}");
    assert_eq!(first["images_already_replicated"], 1, "{first}");
    assert_eq!(first["complete"], 1, "{first}");
    assert_eq!(statuses(&a.base, "team/old", &old).await[0].1, "COMPLETE");
    assert_same_image(&a.base, &b, "team/old", "v1").await;
    assert!(statuses(&a.base, "elsewhere/old", &other).await.is_empty(), "outside --repository");

    let puts = |text: &str| metric_sum(text, "ferry_http_requests_total", &["endpoint=\"manifest_put\""]);
    let before = puts(&b.f.metrics().await);
    let second = backfill();
    assert_eq!(second["images_queued"], 0, "{second}");
    assert_eq!(second["images_already_replicated"], 2, "{second}");
    assert_eq!(puts(&b.f.metrics().await), before, "nothing was copied twice");
}

/// Waits until the backfill's status is `want`; returns its description.
async fn wait_backfill(f: &TestFerry, id: &str, want: &str) -> Value {
    eventually_value(&format!("backfill {id} becomes {want}"), WITHIN, || async {
        let (status, body) = ecr(f, "DescribeReplicationBackfillResults", json!({ "replicationBackfillId": id })).await;
        assert_eq!(status, 200, "{body}");
        match body["status"] == want {
            true => Ok(body),
            false => Err(body),
        }
    })
    .await
}

/// ECR's backfill API (in this botocore model): a backfill to a region that is down is stopped
/// (its queued copies withdrawn, results `FAILED`); one started when the region is back
/// replicates the tagged and the untagged image and reports both; a third finds nothing to
/// copy. One backfill per region at a time, the destination must be configured, and a
/// finished one cannot be stopped. boto3 reads the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ecr_backfill_api_starts_stops_and_reports_backfills() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let mut b = Region::start("222222222222", "eu-west-1", true).await;
    let a = source_replica(&moto, "source", vec![b.target(b.port)]).await;
    let (_, tagged) = a.push_image("team/one", "v1", &random_bytes(3000, 1)).await;
    let (untagged_bytes, untagged) = {
        let (bytes, d) = a.push_image("team/two", "tmp", &random_bytes(3000, 2)).await;
        let resp = a.client.delete(a.url("/v2/team/two/manifests/tmp")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        (bytes, d)
    };
    assert!(!untagged_bytes.is_empty());
    configure(&a, vec![rule(&[&b], &[])]).await;
    let destination = json!({ "destination": { "region": b.region, "registryId": b.id } });

    let (status, body) =
        ecr(&a, "StartReplicationBackfill", json!({ "destination": { "region": "us-west-2", "registryId": b.id } }))
            .await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("InvalidParameterException")), "{body}");

    // The region is down: the backfill queues both images, then is stopped.
    b.stop().await;
    let (status, first) = ecr(&a, "StartReplicationBackfill", destination.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "PREPARING");
    let id1 = first["replicationBackfillId"].as_str().unwrap().to_owned();
    let (status, body) = ecr(&a, "StartReplicationBackfill", destination.clone()).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ReplicationBackfillInProgressException")), "{body}");
    wait_backfill(&a, &id1, "IN_PROGRESS").await;
    assert_eq!(wait_status(&a.base, "team/one", &tagged, &b, "IN_PROGRESS").await, "");
    let (status, body) = ecr(&a, "StopReplicationBackfill", json!({ "replicationBackfillId": id1 })).await;
    assert_eq!(status, 200, "{body}");
    let stopped = wait_backfill(&a, &id1, "STOPPED").await;
    assert_eq!(stopped["progress"]["totalReplicationCount"], 2, "{stopped}");
    assert_eq!(stopped["progress"]["failedReplicationCount"], 2, "{stopped}");
    let code = wait_status(&a.base, "team/two", &untagged, &b, "FAILED").await;
    assert!(code.starts_with("BACKFILL_STOPPED"), "{code}");

    // Back up: a new backfill copies both, and says so per image.
    b.restart().await;
    let (status, second) = ecr(&a, "StartReplicationBackfill", destination.clone()).await;
    assert_eq!(status, 200, "{second}");
    let id2 = second["replicationBackfillId"].as_str().unwrap().to_owned();
    let done = wait_backfill(&a, &id2, "COMPLETE").await;
    assert_eq!(done["progress"]["completedReplicationCount"], 2, "{done}");
    let mut results: Vec<(String, String, String)> = done["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["repositoryName"].as_str().unwrap().to_owned(),
                r["imageId"]["imageTag"].as_str().unwrap_or("").to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    results.sort();
    assert_eq!(
        results,
        [("team/one".into(), "v1".into(), "COMPLETE".into()), ("team/two".into(), String::new(), "COMPLETE".into())]
    );
    assert_same_image(&a.base, &b, "team/one", "v1").await;
    assert_same_image(&a.base, &b, "team/two", &untagged).await;
    let (status, body) = ecr(&a, "StopReplicationBackfill", json!({ "replicationBackfillId": id2 })).await;
    assert_eq!((status, body["__type"].as_str()), (400, Some("ReplicationBackfillInvalidStatusException")), "{body}");

    // Nothing left to copy: the third one ends at once, empty.
    let (_, third) = ecr(&a, "StartReplicationBackfill", destination).await;
    let id3 = third["replicationBackfillId"].as_str().unwrap().to_owned();
    let empty = wait_backfill(&a, &id3, "COMPLETE").await;
    assert_eq!(empty["progress"]["totalReplicationCount"], 0, "{empty}");

    let v = crate::ecr_api::python_json(&format!(
        r#"
import boto3, json
ecr = boto3.client('ecr', endpoint_url='{base}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')
listed = ecr.list_replication_backfills()['backfills']
r = ecr.describe_replication_backfill_results(replicationBackfillId='{id2}', resultStatusFilter='COMPLETE', maxResults=1)
more = ecr.describe_replication_backfill_results(replicationBackfillId='{id2}', nextToken=r['nextToken'], maxResults=1)
try:
    ecr.describe_replication_backfill_results(replicationBackfillId='00000000-0000-0000-0000-000000000000')
    missing = None
except ecr.exceptions.ReplicationBackfillNotFoundException as e:
    missing = e.response['Error']['Code']
print(json.dumps({{
    'listed': [(b['replicationBackfillId'], b['status'], b['progress']['totalReplicationCount'], b['startedAt'].timestamp() > 0) for b in listed],
    'pages': [len(r['results']), len(more['results']), 'nextToken' in more],
    'missing': missing,
}}))
"#,
        base = a.base
    ));
    assert_eq!(
        v["listed"],
        json!([[id3, "COMPLETE", 0, true], [id2, "COMPLETE", 2, true], [id1, "STOPPED", 2, true]]),
        "{v}"
    );
    assert_eq!(v["pages"], json!([1, 1, false]));
    assert_eq!(v["missing"], "ReplicationBackfillNotFoundException");
}

/// Replication status per tag (issue 17): `v1` fails to replicate (no registry policy yet);
/// once the policy is there the same image is pushed again as `v2` and replicated. Asked by
/// `v1`, the status is still `FAILED` (the destination has no `v1`), by digest too, and the
/// console agrees; a backfill treats the image as not replicated and sends `v1`, after which
/// every answer is `COMPLETE`. Pushed with skopeo, read with boto3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tag_that_never_arrived_is_not_complete_until_a_backfill_sends_it() {
    let moto = crate::s3::Moto::start();
    moto.bucket("source").await;
    let c = Region::start("333333333333", "ap-south-1", false).await;
    let a = source_replica(&moto, "source", vec![c.target(c.port)]).await;
    configure(&a, vec![rule(&[&c], &[])]).await;
    let work = tempfile::tempdir().unwrap();
    let built = build_layout(&work.path().join("image"), "v1", &["amd64"], 20_000, false, 91);
    skopeo_push(work.path(), &built.source, &a.base, "team/tagged:v1");
    let top = built.top.clone();
    wait_status(&a.base, "team/tagged", &top, &c, "FAILED").await;

    c.put_registry_policy(&replication_policy(&["ecr:ReplicateImage", "ecr:CreateRepository"])).await;
    skopeo_push(work.path(), &built.source, &a.base, "team/tagged:v2");
    let by_tag = |tag: &str| {
        boto3_open(
            &a.base,
            &format!(
                "s = ecr.describe_image_replication_status(repositoryName='team/tagged', imageId={{'imageTag': '{tag}'}})\n\
                 print(json.dumps([(d['registryId'], d['status']) for d in s['replicationStatuses']]))"
            ),
        )
    };
    eventually_value("v2 is replicated, asked by tag", WITHIN, || async {
        let seen = by_tag("v2");
        match seen == json!([["333333333333", "COMPLETE"]]) {
            true => Ok(()),
            false => Err(seen),
        }
    })
    .await;
    assert_eq!(c.get("/v2/team/tagged/manifests/v2", ACCEPT_ALL).await.status(), StatusCode::OK);
    assert_eq!(c.get("/v2/team/tagged/manifests/v1", ACCEPT_ALL).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(by_tag("v1"), json!([["333333333333", "FAILED"]]), "v1 never arrived");
    let by_digest = statuses(&a.base, "team/tagged", &top).await;
    assert_eq!(by_digest.len(), 1);
    assert_eq!(by_digest[0].1, "FAILED", "by digest, an image is complete only with all its tags: {by_digest:?}");
    assert!(by_digest[0].2.starts_with("tag v1:"), "{by_digest:?}");
    let console = |a: &TestFerry| {
        let url = format!("{}/console/repositories/team/tagged", a.admin);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    assert!(console(&a).await.contains("ap-south-1: FAILED"), "the console tells the same truth");

    // A backfill sends the image again with every tag it carries.
    let (status, started) =
        ecr(&a, "StartReplicationBackfill", json!({ "destination": { "region": c.region, "registryId": c.id } })).await;
    assert_eq!(status, 200, "{started}");
    let id = started["replicationBackfillId"].as_str().unwrap().to_owned();
    wait_backfill(&a, &id, "COMPLETE").await;
    assert_same_image(&a.base, &c, "team/tagged", "v1").await;
    assert_eq!(by_tag("v1"), json!([["333333333333", "COMPLETE"]]));
    assert_eq!(statuses(&a.base, "team/tagged", &top).await[0].1, "COMPLETE");
    assert!(console(&a).await.contains("ap-south-1: COMPLETE"));
    // Nothing left: another backfill queues nothing.
    let (status, again) =
        ecr(&a, "StartReplicationBackfill", json!({ "destination": { "region": c.region, "registryId": c.id } })).await;
    assert_eq!(status, 200, "{again}");
    let again_id = again["replicationBackfillId"].as_str().unwrap().to_owned();
    let done = wait_backfill(&a, &again_id, "COMPLETE").await;
    assert_eq!(done["progress"]["totalReplicationCount"], 0, "{done}");
}
