//! The pull-through cache against real upstream registries (Debian's `docker-registry`) and,
//! for failures no real registry produces on purpose, the fault-injecting upstream.

use crate::clients::{policy, run, skopeo};
use crate::harness::*;
use crate::images::build_layout;
use crate::upstream::{FakeUpstream, Fault, RealUpstream};
use bytes::Bytes;
use ferry::config::{HumanDuration, PullThroughRule};
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;

pub fn rule(prefix: &str, upstream: &str) -> PullThroughRule {
    PullThroughRule { prefix: prefix.into(), upstream: upstream.into(), ..Default::default() }
}

async fn ferry_with(rules: Vec<PullThroughRule>) -> TestFerry {
    TestFerry::start_with(move |c| c.pull_through = rules).await
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

async fn get_manifest(f: &TestFerry, path: &str) -> reqwest::Response {
    f.client.get(f.url(path)).header("Accept", ACCEPT).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_prefix_namespace_and_mirror_default_with_real_clients() {
    let hub = RealUpstream::start();
    let quay = RealUpstream::start();
    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    let single = build_layout(&work.path().join("single"), "v1", &["amd64"], 50_000, false, 31);
    let multi = build_layout(&work.path().join("multi"), "v1", &["amd64", "arm64"], 50_000, true, 32);
    let etcd = build_layout(&work.path().join("etcd"), "v1", &["amd64"], 50_000, false, 33);
    for (src, dest) in [
        (&single.source, format!("docker://{}/library/alpine:v1", hub.host)),
        (&multi.source, format!("docker://{}/team/tool:v1", hub.host)),
        (&etcd.source, format!("docker://{}/coreos/etcd:v1", quay.host)),
    ] {
        run(skopeo(&policy).args(["copy", "--all", "--dest-tls-verify=false", src, &dest]));
    }
    let f = ferry_with(vec![
        PullThroughRule { mirror_default: true, namespace: "docker.io".into(), ..rule("docker-hub", &hub.base) },
        PullThroughRule { namespace: "quay.io".into(), ..rule("quay", &quay.base) },
    ])
    .await;
    let ferry = f.server.as_ref().unwrap().addr;

    // By prefix, with library/ added for Docker Hub; byte-identical manifests.
    for (name, want) in [
        ("docker-hub/library/alpine", &single.top),
        ("docker-hub/alpine", &single.top),
        ("docker-hub/team/tool", &multi.top),
        ("quay/coreos/etcd", &etcd.top),
    ] {
        let raw = run(skopeo(&policy)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{ferry}/{name}:v1")));
        assert_eq!(&digest(raw.as_bytes()), want, "{name}");
    }
    // A whole multi-arch image copied out through the cache.
    let out = work.path().join("out");
    run(skopeo(&policy)
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{ferry}/docker-hub/team/tool:v1"))
        .arg(format!("dir:{}", out.display())));
    assert_eq!(digest(&std::fs::read(out.join("manifest.json")).unwrap()), multi.top);
    for p in &multi.platforms {
        assert!(out.join(format!("{}.manifest.json", &p[7..])).exists());
    }
    // Mirror default: the unprefixed name Docker's registry-mirrors sends.
    let raw = run(skopeo(&policy)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{ferry}/alpine:v1")));
    assert_eq!(digest(raw.as_bytes()), single.top);
    // containerd's ?ns= picks the rule.
    let resp = get_manifest(&f, "/v2/coreos/etcd/manifests/v1?ns=quay.io").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(digest(&resp.bytes().await.unwrap()), etcd.top);
    let resp = get_manifest(&f, "/v2/library/alpine/manifests/v1?ns=docker.io").await;
    assert_eq!(digest(&resp.bytes().await.unwrap()), single.top);

    // podman with a registries.conf mirror: docker.io goes to Ferry, never to a real host.
    let conf = work.path().join("registries.conf");
    std::fs::write(&conf, format!("[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:1\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{ferry}\"\ninsecure = true\n")).unwrap();
    let root = work.path().join("podman");
    let out = run(std::process::Command::new("podman")
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"])
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .env("REGISTRY_AUTH_FILE", work.path().join("auth.json"))
        .args(["pull", "--arch", "amd64", "docker.io/team/tool:v1"]));
    assert!(!out.trim().is_empty());
    let inspected = run(std::process::Command::new("podman")
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            "docker.io/team/tool:v1",
        ]));
    assert_eq!(inspected.trim(), multi.top);

    // Everything fetched is cached under the prefixed name and listed in the catalog.
    let catalog: serde_json::Value = f.client.get(f.url("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    let repos: Vec<&str> = catalog["repositories"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(repos, ["docker-hub/library/alpine", "docker-hub/team/tool", "quay/coreos/etcd"]);
    let m = f.metrics().await;
    assert!(m.contains(r#"ferry_cache_requests_total{kind="manifest",result="hit",rule="docker-hub"}"#), "{m}");
}

#[tokio::test]
async fn pull_through_repositories_are_read_only_and_unknown_ns_reaches_nothing() {
    let fake = FakeUpstream::start().await;
    let f = ferry_with(vec![PullThroughRule { namespace: "docker.io".into(), ..rule("docker-hub", &fake.base) }]).await;
    let resp = f.client.post(f.url("/v2/docker-hub/library/x/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = f.put_manifest("docker-hub/library/x", "v1", OCI_MANIFEST, b"{}").await;
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = f.client.delete(f.url("/v2/docker-hub/library/x/manifests/v1")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = f.client.post(f.url("/v2/library/x/blobs/uploads/?ns=docker.io")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "DENIED", "a push through the ns route is refused too");
    // Unknown ns values and crafted names stay local: NAME_UNKNOWN, and the upstream sees nothing.
    for path in [
        "/v2/library/x/manifests/v1?ns=evil.example.com",
        "/v2/library/x/manifests/v1?ns=127.0.0.1:1",
        "/v2/docker-hubx/library/x/manifests/v1",
        "/v2/x/manifests/v1?ns=",
    ] {
        let resp = get_manifest(&f, path).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(resp).await, "NAME_UNKNOWN", "{path}");
    }
    let resp = get_manifest(&f, "/v2/docker-hub/..%2f..%2fetc/manifests/v1").await;
    assert_eq!(error_code(resp).await, "NAME_INVALID");
    assert_eq!(fake.hits("/v2/library/x/manifests/v1"), 0);
    // Pushing elsewhere still works.
    f.push_blob("team/app", b"local content").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pulls_cause_one_upstream_fetch() {
    let hub = RealUpstream::start();
    let client = reqwest::Client::new();
    let blob = random_bytes(64 << 20, 77);
    let d = push_blob(&client, &hub.base, "team/big", &blob).await;
    let f = ferry_with(vec![rule("hub", &hub.base)]).await;
    let pulls: Vec<_> = (0..50)
        .map(|_| {
            let (c, url) = (f.client.clone(), f.url(&format!("/v2/hub/team/big/blobs/{d}")));
            tokio::spawn(async move {
                let resp = c.get(url).send().await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                resp.bytes().await.unwrap()
            })
        })
        .collect();
    for p in pulls {
        // A stalled fill never ends: fail instead of hanging.
        let got = tokio::time::timeout(Duration::from_secs(120), p).await.expect("the pull finished").unwrap();
        assert_eq!(got.len(), blob.len());
        assert_eq!(digest(&got), d);
    }
    let path = format!("/v2/team/big/blobs/{d}");
    assert_eq!(hub.requests("GET", &path, 1), 1, "exactly one upstream GET of the blob");
    let m = f.metrics().await;
    let coalesced = m
        .lines()
        .find(|l| l.contains(r#"kind="blob",result="coalesced""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .unwrap_or(0);
    let missed = m
        .lines()
        .find(|l| l.contains(r#"kind="blob",result="miss""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .unwrap_or(0);
    assert_eq!(missed, 1, "{m}");
    assert_eq!(
        coalesced
            + missed
            + m.lines()
                .find(|l| l.contains(r#"kind="blob",result="hit""#))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .unwrap_or(0),
        50
    );
    // Cached now: served locally, ranges too.
    let resp = f
        .client
        .get(f.url(&format!("/v2/hub/team/big/blobs/{d}")))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &blob[10..20]);
    assert_eq!(hub.requests("GET", &path, 1), 1);
    if f.s3.is_some() {
        // On S3 the fill went in as whole segments, assembled by server-side copies: no byte of
        // it was read back from S3 and uploaded again.
        let m = f.metrics().await;
        let count = |op: &str| metric(&m, &format!(r#"ferry_s3_requests_total{{operation="{op}",result="ok"}}"#));
        assert!(count("UploadPartCopy") >= 2.0, "{m}");
        assert_eq!(count("UploadPart"), 0.0, "{m}");
    }
}

/// A blob whose upstream sends the first half, then holds the rest until `gate` is notified;
/// Ferry in front of it with the rule `up`.
struct Gated {
    fake: FakeUpstream,
    blob: Bytes,
    d: String,
    gate: std::sync::Arc<tokio::sync::Notify>,
    /// The blob's path upstream.
    path: String,
    f: TestFerry,
    /// The blob's URL through Ferry.
    url: String,
}

impl Gated {
    async fn start(size: usize, seed: u64) -> Self {
        let fake = FakeUpstream::start().await;
        let blob = Bytes::from(random_bytes(size, seed));
        let d = digest(&blob);
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        let path = format!("/v2/lib/gated/blobs/{d}");
        fake.route(&path, Fault::Gate { bytes: blob.clone(), gate: gate.clone() }, "application/octet-stream");
        let f = ferry_with(vec![rule("up", &fake.base)]).await;
        let url = f.url(&format!("/v2/up/lib/gated/blobs/{d}"));
        Self { fake, blob, d, gate, path, f, url }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_bytes_reach_clients_before_the_fill_completes_and_survive_a_client_leaving() {
    let Gated { fake, blob, d, gate, path, f, url } = Gated::start(8 << 20, 78).await;
    // The first client leaves after its first bytes; the second stays.
    let first = f.client.get(&url).send().await.unwrap();
    let mut first_stream = first.bytes_stream();
    assert!(
        !first_stream.next().await.unwrap().unwrap().is_empty(),
        "bytes arrive while the upstream holds back the second half"
    );
    let second = f.client.get(&url).send().await.unwrap();
    assert_eq!(second.headers()["content-length"], blob.len().to_string());
    let mut second_stream = second.bytes_stream();
    let early = second_stream.next().await.unwrap().unwrap();
    assert!(!early.is_empty(), "a late client gets the bytes already received at once");
    assert_eq!(metric(&f.metrics().await, "ferry_cache_fills_in_progress"), 1.0, "the fill is still running");
    drop(first_stream);
    gate.notify_one();
    let mut got = early.to_vec();
    while let Some(c) = second_stream.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(digest(&got), d);
    assert_eq!(fake.hits(&path), 1);
    // Cached: a third pull does not go upstream.
    let again = f.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&again), d);
    assert_eq!(fake.hits(&path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_client_gets_bytes_that_already_left_memory_from_storage() {
    // 80 MiB, of which the upstream sends 40 and then holds back: more than a fill's 32 MiB
    // window, so when the first client has its 40 MiB, the first megabytes are only in storage.
    let Gated { fake, blob, d, gate, path, f, url } = Gated::start(80 << 20, 79).await;
    let half = blob.len() / 2;
    let mut first = Box::pin(f.client.get(&url).send().await.unwrap().bytes_stream());
    let mut first_got = Vec::new();
    read_until(&mut first, &mut first_got, half).await;
    // The upstream still holds the second half: everything the second client gets now was
    // already received, the start of it from the upload in storage.
    let mut second = Box::pin(f.client.get(&url).send().await.unwrap().bytes_stream());
    let mut second_got = Vec::new();
    read_until(&mut second, &mut second_got, half).await;
    assert_eq!(&second_got[..half], &blob[..half]);
    assert_eq!(metric(&f.metrics().await, "ferry_cache_fills_in_progress"), 1.0, "the fill is still running");
    gate.notify_one();
    for (mut stream, mut got) in [(first, first_got), (second, second_got)] {
        while let Some(c) = stream.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(digest(&got), d);
    }
    assert_eq!(fake.hits(&path), 1);
}

/// Reads from `stream` until `got` holds at least `n` bytes.
async fn read_until(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    got: &mut Vec<u8>,
    n: usize,
) {
    while got.len() < n {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
}

/// Whether the content ends up stored: a response completes once the digest is verified, and
/// the fill stores the blob durably just after, on its own task.
async fn eventually_stored(f: &TestFerry, d: &str) -> bool {
    eventually("the filled blob is stored", Duration::from_secs(10), || f.stores(d)).await;
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_never_store_or_serve_corrupt_content() {
    let fake = FakeUpstream::start().await;
    let f = ferry_with(vec![rule("up", &fake.base)]).await;
    let blob = Bytes::from(random_bytes(2 << 20, 79));
    let d = digest(&blob);
    let path = format!("/v2/lib/x/blobs/{d}");
    let url = f.url(&format!("/v2/up/lib/x/blobs/{d}"));

    // Connection dropped mid-blob: the client's body fails, nothing is stored.
    fake.route(&path, Fault::DropMidway(blob.clone()), "application/octet-stream");
    let resp = f.client.get(&url).send().await.unwrap();
    assert!(resp.bytes().await.is_err(), "a cut upstream never looks like a complete body");
    assert!(!f.stores(&d).await);

    // Wrong bytes of the right length: the body is never completed, nothing is stored.
    let mut wrong = blob.to_vec();
    wrong[12345] ^= 0xff;
    fake.route(&path, Fault::Serve(Bytes::from(wrong)), "application/octet-stream");
    let resp = f.client.get(&url).send().await.unwrap();
    assert!(resp.bytes().await.is_err(), "corrupt content is never served as complete");
    assert!(!f.stores(&d).await);

    // 500 twice, then fine: retried within one request.
    fake.route(
        &path,
        Fault::Status { status: 500, retry_after: None, times: 2, then: blob.clone() },
        "application/octet-stream",
    );
    let got = f.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
    assert!(eventually_stored(&f, &d).await, "the next pull after the faults succeeds and is cached");

    // 500 every time: a clear error.
    let other = Bytes::from(random_bytes(1000, 80));
    let od = digest(&other);
    let opath = format!("/v2/lib/x/blobs/{od}");
    fake.route(
        &opath,
        Fault::Status { status: 500, retry_after: None, times: 100, then: other.clone() },
        "application/octet-stream",
    );
    let resp = f.client.get(f.url(&format!("/v2/up/lib/x/blobs/{od}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(resp).await, "UNAVAILABLE");

    // 429 with a long Retry-After: passed on to the client.
    fake.route(
        &opath,
        Fault::Status { status: 429, retry_after: Some(120), times: 100, then: other.clone() },
        "application/octet-stream",
    );
    let resp = f.client.get(f.url(&format!("/v2/up/lib/x/blobs/{od}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "120");
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");

    // A slow trickle arrives whole.
    fake.route(&opath, Fault::Trickle { bytes: other.clone(), chunk: 100, delay_ms: 5 }, "application/octet-stream");
    let got = f.client.get(f.url(&format!("/v2/up/lib/x/blobs/{od}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, other);
    assert!(eventually_stored(&f, &od).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_revalidated_after_their_ttl_and_served_stale_while_the_upstream_is_down() {
    let mut hub = RealUpstream::start();
    let client = reqwest::Client::new();
    let base = hub.base.clone();
    let push = |tag: &'static str, seed: u64| {
        let (client, base) = (client.clone(), base.clone());
        async move { push_config_image(&client, &base, "lib/app", tag, &random_bytes(100, seed)).await.1 }
    };
    let first = push("v1", 1).await;
    push("other", 3).await;
    // Two rules on one upstream: one re-checks tags at every pull, one trusts them for an hour.
    let f = ferry_with(vec![
        PullThroughRule { tag_ttl: HumanDuration(Duration::ZERO), ..rule("fresh", &hub.base) },
        PullThroughRule { tag_ttl: HumanDuration(Duration::from_secs(3600)), ..rule("slow", &hub.base) },
    ])
    .await;
    let digest_of = |path: &'static str| {
        let f = &f;
        async move {
            let resp = get_manifest(f, path).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            resp.headers()["docker-content-digest"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(digest_of("/v2/fresh/lib/app/manifests/v1").await, first);
    assert_eq!(digest_of("/v2/slow/lib/app/manifests/v1").await, first);
    let second = push("v1", 2).await;
    assert_ne!(first, second);
    assert_eq!(digest_of("/v2/slow/lib/app/manifests/v1").await, first, "not seen before the TTL");
    assert_eq!(digest_of("/v2/fresh/lib/app/manifests/v1").await, second, "seen once the TTL has passed");
    let m = f.metrics().await;
    assert!(m.contains(r#"ferry_cache_requests_total{kind="manifest",result="hit",rule="slow"} 1"#), "{m}");

    // Upstream down: the cached tag is served stale; an uncached one gets a clear error.
    hub.stop();
    assert_eq!(digest_of("/v2/fresh/lib/app/manifests/v1").await, second);
    let resp = get_manifest(&f, "/v2/fresh/lib/app/manifests/other").await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
    let resp = f.client.get(f.url("/v2/fresh/lib/app/tags/list")).send().await.unwrap();
    let tags: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]), "cached tags while the upstream is down");
    assert!(f.metrics().await.contains(r#"ferry_cache_requests_total{kind="manifest",result="stale",rule="fresh"} 1"#));

    // Upstream back: revalidation resumes.
    hub.restart();
    assert_eq!(digest_of("/v2/fresh/lib/app/manifests/v1").await, second);
    assert!(f
        .metrics()
        .await
        .contains(r#"ferry_cache_requests_total{kind="manifest",result="revalidated",rule="fresh"}"#));
    let tags: serde_json::Value =
        f.client.get(f.url("/v2/fresh/lib/app/tags/list")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["other", "v1"]), "the upstream's list when it answers");
}

/// What an unprefixed name means follows from configuration, never from storage: with a
/// mirror-default rule, a push of a mirrored name is refused (naming the setting to change)
/// and the upstream's image is still what is served; a name under a local namespace is this
/// registry's own, and not one request about it reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_poison_the_mirror_and_local_namespaces_stay_local() {
    let hub = RealUpstream::start();
    let client = reqwest::Client::new();
    let (manifest, d) = push_config_image(&client, &hub.base, "library/upimg", "v1", br#"{"upstream":true}"#).await;
    let rules = vec![PullThroughRule { mirror_default: true, library_prefix: Some(true), ..rule("hub", &hub.base) }];
    let f = TestFerry::start_with(move |c| {
        c.pull_through = rules;
        c.registry.local_namespaces = vec!["team-a".into()];
    })
    .await;
    // The poisoning attempt of the report: push library/upimg:v1 (and upimg:v1) to Ferry.
    for name in ["library/upimg", "upimg"] {
        let resp = f.client.post(f.url(&format!("/v2/{name}/blobs/uploads/"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{name}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("DENIED") && text.contains("registry.local_namespaces"), "{text}");
        let resp = f.put_manifest(name, "v1", OCI_MANIFEST, b"{}").await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{name}");
    }
    let resp = get_manifest(&f, "/v2/upimg/manifests/v1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);
    // A local namespace: pushed, pulled, listed; the upstream never hears of it.
    let (_, local) = f.push_image("team-a/private", "v1", b"private layer").await;
    let resp = get_manifest(&f, "/v2/team-a/private/manifests/v1").await;
    assert_eq!(header(&resp, "docker-content-digest"), local);
    let resp = get_manifest(&f, "/v2/team-a/absent/manifests/v1").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let log = std::fs::read_to_string(hub.access_log()).unwrap_or_default();
    assert!(log.contains("upimg"), "the mirror was asked about upimg");
    assert!(!log.contains("team-a"), "a local namespace reached the upstream:\n{log}");
}

/// Pull-through cache rules created through boto3 (ECR's operations and exceptions) are in
/// force at once on the replica that stored them and, within the refresh interval, on another
/// replica of the same storage: skopeo pulls through both from a real upstream, the cache is
/// read-only; the config file's rule is listed beside them but cannot be changed; a deleted
/// rule's name is an ordinary repository again, its cache kept (as in ECR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_creates_pull_through_rules_that_every_replica_follows() {
    let upstream = RealUpstream::start();
    let work = tempfile::tempdir().unwrap();
    let built = build_layout(&work.path().join("src"), "v1", &["amd64"], 30_000, false, 77);
    crate::replication::skopeo_push(work.path(), &built.source, &upstream.base, "team/app:v1");
    let secret_file = work.path().join("token");
    std::fs::write(&secret_file, "upstream-token\n").unwrap();
    let base = upstream.base.clone();
    let secret_path = secret_file.to_str().unwrap().to_owned();
    let f = TestFerry::start_with(move |c| {
        c.pull_through = vec![rule("cfg", &base)];
        // Loopback upstreams are not among the defaults (the public registries ECR supports).
        c.pull_through_api.allowed_upstreams.push("127.0.0.1:*".into());
        c.pull_through_secrets = vec![ferry::config::UpstreamSecret {
            name: "ecr-pullthroughcache/upstream".into(),
            username: "bot".into(),
            access_token_file: secret_path,
            ..Default::default()
        }];
    })
    .await;
    let other = ferry::start(f.config.clone()).await.unwrap();
    let other_base = format!("http://{}", other.addr);

    let v = crate::ecr_api::boto3_open(
        &f.base,
        &format!(
            r#"
arn = 'arn:aws:secretsmanager:us-east-1:000000000000:secret:ecr-pullthroughcache/upstream'
out = {{}}
r = ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='hub/', upstreamRegistryUrl='{upstream}', credentialArn=arn)
out['created'] = [r['ecrRepositoryPrefix'], r['upstreamRegistryUrl'], r['credentialArn'] == arn, r['createdAt'].timestamp() > 0]
out['again'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='hub', upstreamRegistryUrl='{upstream}'))
out['config_taken'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='cfg', upstreamRegistryUrl='{upstream}'))
out['overlap'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='hub/team', upstreamRegistryUrl='{upstream}'))
out['no_secret'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='other', upstreamRegistryUrl='{upstream}',
    credentialArn='arn:aws:secretsmanager:us-east-1:000000000000:secret:ecr-pullthroughcache/missing'))
out['bad_prefix'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='Not/Valid', upstreamRegistryUrl='{upstream}'))
out['root'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='ROOT', upstreamRegistryUrl='{upstream}'))
out['not_allowed'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='meta', upstreamRegistryUrl='http://169.254.169.254'))
out['with_path'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='other', upstreamRegistryUrl='{upstream}/v2/x'))
out['with_credentials'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='other', upstreamRegistryUrl='http://u:p@127.0.0.1:1'))
out['unsupported'] = error(lambda: ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='other', upstreamRegistryUrl='{upstream}', upstreamRegistry='nope'))
ecr.create_pull_through_cache_rule(ecrRepositoryPrefix='dead', upstreamRegistryUrl='http://127.0.0.1:1')
out['all'] = sorted(r['ecrRepositoryPrefix'] for r in ecr.describe_pull_through_cache_rules()['pullThroughCacheRules'])
out['one'] = [r['upstreamRegistryUrl'] for r in ecr.describe_pull_through_cache_rules(ecrRepositoryPrefixes=['hub'])['pullThroughCacheRules']]
out['missing'] = error(lambda: ecr.describe_pull_through_cache_rules(ecrRepositoryPrefixes=['none']))
out['valid'] = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix='hub')['isValid']
dead = ecr.validate_pull_through_cache_rule(ecrRepositoryPrefix='dead')
out['dead'] = [dead['isValid'], len(dead.get('failure', '')) > 0]
u = ecr.update_pull_through_cache_rule(ecrRepositoryPrefix='hub', customRoleArn='arn:aws:iam::000000000000:role/ptc')
out['updated'] = [u['customRoleArn'], u['updatedAt'].timestamp() > 0]
out['update_config'] = error(lambda: ecr.update_pull_through_cache_rule(ecrRepositoryPrefix='cfg', customRoleArn='x'))
out['delete_config'] = error(lambda: ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix='cfg'))
out['deleted'] = ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix='dead')['ecrRepositoryPrefix']
out['deleted_again'] = error(lambda: ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix='dead'))
print(json.dumps(out))
"#,
            upstream = upstream.base,
        ),
    );
    assert_eq!(v["created"], serde_json::json!(["hub", upstream.base, true, true]), "{v}");
    assert_eq!(v["again"], "PullThroughCacheRuleAlreadyExistsException");
    assert_eq!(v["config_taken"], "PullThroughCacheRuleAlreadyExistsException");
    assert_eq!(v["overlap"], "InvalidParameterException");
    assert_eq!(v["no_secret"], "SecretNotFoundException");
    assert_eq!(v["bad_prefix"], "InvalidParameterException");
    assert_eq!(v["root"], "InvalidParameterException");
    assert_eq!(v["unsupported"], "UnsupportedUpstreamRegistryException");
    assert_eq!(
        v["not_allowed"], "UnsupportedUpstreamRegistryException",
        "only allowed upstreams: no fetching from any address"
    );
    assert_eq!(v["with_path"], "InvalidParameterException");
    assert_eq!(v["with_credentials"], "InvalidParameterException");
    assert_eq!(v["all"], serde_json::json!(["cfg", "dead", "hub"]));
    assert_eq!(v["one"], serde_json::json!([upstream.base]));
    assert_eq!(v["missing"], "PullThroughCacheRuleNotFoundException");
    assert_eq!(v["valid"], true);
    assert_eq!(v["dead"], serde_json::json!([false, true]));
    assert_eq!(v["updated"], serde_json::json!(["arn:aws:iam::000000000000:role/ptc", true]));
    assert_eq!(v["update_config"], "InvalidParameterException");
    assert_eq!(v["delete_config"], "InvalidParameterException");
    assert_eq!(v["deleted"], "dead");
    assert_eq!(v["deleted_again"], "PullThroughCacheRuleNotFoundException");

    // skopeo pulls through the rule at once here, and through the other replica once its
    // refresh has read the rule.
    let policy = policy(work.path());
    let inspect = |base: &str| {
        let image = format!("docker://{}/hub/team/app:v1", base.trim_start_matches("http://"));
        let raw = run(skopeo(&policy).args(["inspect", "--raw", "--tls-verify=false", &image]));
        digest(raw.as_bytes())
    };
    assert_eq!(inspect(&f.base), built.top);
    eventually("the other replica follows the stored rule", Duration::from_secs(10), || async {
        reqwest::Client::new()
            .get(format!("{other_base}/v2/hub/team/app/tags/list"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert_eq!(inspect(&other_base), built.top);
    // The cache is read-only while the rule stands.
    let refused = f.client.post(f.url("/v2/hub/team/mine/blobs/uploads/")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(refused).await, "DENIED");

    crate::ecr_api::python_json(&format!(
        "import boto3, json\necr = boto3.client('ecr', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')\nprint(json.dumps(ecr.delete_pull_through_cache_rule(ecrRepositoryPrefix='hub')['ecrRepositoryPrefix']))",
        f.base
    ));
    let opened = f.client.post(f.url("/v2/hub/team/mine/blobs/uploads/")).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::ACCEPTED, "a deleted rule's names are ordinary repositories");
    assert_eq!(inspect(&f.base), built.top, "its cache stays");
    other.shutdown().await;
}
