//! Unauthenticated work that would hold the server (issue 17), at the default limits, against
//! Ferry as its own process: stalled and unverifiable ECR API bodies from few and many
//! addresses, a wrong-password flood from 64 addresses, and 9 MiB bodies by the thousand. In
//! each, a logged-in client's pull (a manifest and its config blob) still succeeds within a
//! second, and the server's peak memory stays bounded.

use crate::ecr_api::{api_head_from, signed_call_at, SIGNED};
use crate::harness::*;
use ferry::auth::secrets::new_key;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ferry with access control and its default limits: `pusher` pushes and reads everything and
/// can sign the ECR API (its key id is what attackers name on the ECR API); `operator` signs
/// the ECR API too; `victim` is a real key (its secret only as a hash) that others guess.
struct Hostile {
    ferry: FerryProcess,
    addr: SocketAddr,
    pusher: (String, String),
    operator: (String, String),
    victim: (String, String),
    _dir: tempfile::TempDir,
}

impl Hostile {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pusher_secret = "hostile-pusher-secret-0123456789";
        std::fs::write(dir.path().join("pusher.secret"), pusher_secret).unwrap();
        let operator_secret = "hostile-operator-secret-0123456789";
        std::fs::write(dir.path().join("operator.secret"), operator_secret).unwrap();
        let victim = new_key().unwrap();
        let everything = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}"#;
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nenabled = true\nregistry_id = \"123456789012\"\n\n\
                 [[auth.principals]]\nname = \"pusher\"\naccess_key_id = \"AKIAHOSTILEPUSHER001\"\nsecret_access_key_file = \"{}\"\npolicies = ['{everything}']\n\n\
                 [[auth.principals]]\nname = \"operator\"\naccess_key_id = \"AKIAHOSTILEOPERATOR1\"\nsecret_access_key_file = \"{}\"\npolicies = ['{everything}']\n\n\
                 [[auth.principals]]\nname = \"victim\"\naccess_key_id = \"{}\"\nsecret_access_key_hash = \"{}\"\npolicies = ['{everything}']\n",
                dir.path().join("pusher.secret").display(),
                dir.path().join("operator.secret").display(),
                victim.access_key_id,
                victim.hash,
            ),
        )
        .unwrap();
        let ferry = FerryProcess::start_env(&dir.path().join("data"), &[("FERRY_CONFIG", config.to_str().unwrap())]);
        let addr: SocketAddr = ferry.base.trim_start_matches("http://").parse().unwrap();
        Self {
            ferry,
            addr,
            pusher: ("AKIAHOSTILEPUSHER001".into(), pusher_secret.into()),
            operator: ("AKIAHOSTILEOPERATOR1".into(), operator_secret.into()),
            victim: (victim.access_key_id, victim.secret),
            _dir: dir,
        }
    }

    /// Pushes a small image as `pusher`; returns its config's digest.
    async fn push(&self) -> String {
        let client = reqwest::Client::new();
        let (key, secret) = &self.pusher;
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let d = digest(config);
        let resp = client
            .post(format!("{}/v2/team/app/blobs/uploads/?digest={d}", self.ferry.base))
            .basic_auth(key, Some(secret))
            .body(config.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": config.len()},
            "layers": [],
        });
        let resp = client
            .put(format!("{}/v2/team/app/manifests/v1", self.ferry.base))
            .basic_auth(key, Some(secret))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        d
    }

    /// A logged-in pull from its own address: the manifest, then the config blob. Returns how
    /// long it took, failing the test unless both succeed within a second.
    async fn logged_in_pull(&self, config: &str) -> Duration {
        let client = reqwest::Client::builder()
            .local_address(Some("127.0.9.9".parse().unwrap()))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (key, secret) = &self.pusher;
        let started = Instant::now();
        let m = client
            .get(format!("{}/v2/team/app/manifests/v1", self.ferry.base))
            .basic_auth(key, Some(secret))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(m.status(), 200, "{:?}", m.text().await);
        m.bytes().await.unwrap();
        let b = client
            .get(format!("{}/v2/team/app/blobs/{config}", self.ferry.base))
            .basic_auth(key, Some(secret))
            .send()
            .await
            .unwrap();
        assert_eq!(b.status(), 200);
        assert_eq!(digest(&b.bytes().await.unwrap()), config);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "a logged-in pull took {took:?}");
        took
    }
}

/// An ECR API request head from `from`, signed in form only (a made-up signature) with `key`
/// as SDKs sign, or with no `Authorization` at all, announcing `announced` body bytes.
async fn api_head(
    from: &str,
    server: SocketAddr,
    target: &str,
    key: Option<&str>,
    announced: usize,
) -> tokio::net::TcpStream {
    api_head_from(from, server, target, key, SIGNED, announced).await
}

/// Reads what the server answered on `s` (to the end of the connection), as text.
async fn answer(mut s: tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// 1,024 unsigned ECR API requests from two addresses announce bodies and send none, and stay
/// open: each is refused from its headers (no byte of its body read, no permit kept), so a
/// logged-in pull goes on; stalled `UploadLayerPart` bodies with a known key id and a bad
/// signature, from eight addresses, hold only that key's share of the unverified budget, and
/// another principal's signed API call is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_unsigned_and_unverifiable_bodies_hold_nothing_a_pull_needs() {
    let h = Hostile::start();
    let config = h.push().await;
    h.logged_in_pull(&config).await;

    let mut held = Vec::new();
    for i in 0..1024 {
        let from = if i % 2 == 0 { "127.0.3.1" } else { "127.0.3.2" };
        held.push(api_head(from, h.addr, "PutImage", None, 9 << 20).await);
    }
    // Every one was answered at once from its headers, and none holds a permit.
    let first = held.pop().unwrap();
    assert!(answer(first).await.contains("MissingAuthenticationTokenException"));
    let metrics = reqwest::get(format!("{}/metrics", h.ferry.admin)).await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "ferry_http_requests_in_flight") <= 1.0, "unsigned requests hold no permit");
    for _ in 0..5 {
        h.logged_in_pull(&config).await;
    }
    drop(held);

    // Known key id, made-up signature, bodies that never come: from eight addresses, four each.
    let mut stalled = Vec::new();
    for a in 1..=8 {
        for _ in 0..4 {
            stalled.push(
                api_head(&format!("127.0.4.{a}"), h.addr, "UploadLayerPart", Some(&h.pusher.0), 10_000_000).await,
            );
        }
    }
    let reserved = || async {
        let text = reqwest::get(format!("{}/metrics", h.ferry.admin)).await.unwrap().text().await.unwrap();
        metric(&text, "ferry_http_unverified_body_bytes")
    };
    eventually("the key's share is spent", Duration::from_secs(10), || async { reserved().await == 30_000_000.0 })
        .await;
    for _ in 0..5 {
        h.logged_in_pull(&config).await;
    }
    let (key, secret) = &h.operator;
    let (status, body) = signed_call_at(&h.ferry.base, "us-east-1", key, secret, "DescribeRepositories", "{}").await;
    assert_eq!(status, 200, "another key's signed call is served meanwhile: {body}");
    assert_eq!(reserved().await, 30_000_000.0, "three bodies of the key are being read, no more");
    drop(stalled);
}

/// 64 addresses each guess the victim's secret at its limit, at once: each gets exactly its 20
/// checks (the failure is reserved before the check) and 429 after; argon2 runs a few at a
/// time, so logged-in pulls stay fast throughout; the victim's own credential, verified
/// before, still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_flood_from_64_addresses_leaves_logged_in_pulls_fast() {
    let h = Hostile::start();
    let config = h.push().await;
    h.logged_in_pull(&config).await;
    let victim_ping = |secret: &str| {
        reqwest::Client::new().get(format!("{}/v2/", h.ferry.base)).basic_auth(&h.victim.0, Some(secret)).send()
    };
    assert_eq!(victim_ping(&h.victim.1).await.unwrap().status(), 200, "the victim logs in before the flood");

    let flood = (1..=64).map(|a| {
        let base = h.ferry.base.clone();
        let key = h.victim.0.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .local_address(Some(format!("127.0.5.{a}").parse().unwrap()))
                .build()
                .unwrap();
            let mut statuses = Vec::new();
            for i in 0..25 {
                let r = client.get(format!("{base}/v2/")).basic_auth(&key, Some(format!("guess-{a}-{i}"))).send();
                statuses.push(r.await.unwrap().status().as_u16());
            }
            statuses
        })
    });
    let flood: Vec<_> = flood.collect();
    let mut slowest = Duration::ZERO;
    while !flood.iter().all(tokio::task::JoinHandle::is_finished) {
        slowest = slowest.max(h.logged_in_pull(&config).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("slowest logged-in pull during the flood: {slowest:?}");
    for (a, handle) in flood.into_iter().enumerate() {
        let statuses = handle.await.unwrap();
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 20, "address {a}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "address {a}: {statuses:?}");
    }
    assert_eq!(victim_ping(&h.victim.1).await.unwrap().status(), 200, "the victim's verified credential passes");
}

/// 1,000 unsigned 9 MiB bodies attempted, 64 at a time, then 9 MiB bodies sent whole with a
/// known key id and a made-up signature: the server reads none of the first and only its
/// budget of the second, and its peak memory stays under 300 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nine_mib_bodies_by_the_thousand_keep_memory_bounded() {
    let h = Hostile::start();
    let config = h.push().await;
    let body = std::sync::Arc::new(vec![b'{'; 9 << 20]);
    let attempt = |i: usize, key: Option<String>| {
        let (server, body) = (h.addr, body.clone());
        async move {
            let from = format!("127.0.6.{}", i % 32 + 1);
            let mut s = api_head(&from, server, "PutImage", key.as_deref(), body.len()).await;
            // The server may answer and close before the body is sent: that is the point.
            let _ = s.write_all(&body).await;
            answer(s).await
        }
    };
    use futures_util::StreamExt;
    let unsigned: Vec<String> =
        futures_util::stream::iter(0..1000).map(|i| attempt(i, None)).buffer_unordered(64).collect().await;
    assert!(unsigned.iter().all(|a| a.is_empty() || a.contains("MissingAuthenticationTokenException")));
    let known: Vec<String> = futures_util::stream::iter(0..64)
        .map(|i| attempt(i, Some(h.pusher.0.clone())))
        .buffer_unordered(32)
        .collect()
        .await;
    let read = known.iter().filter(|a| a.contains("InvalidSignatureException")).count();
    let throttled = known.iter().filter(|a| a.contains("ThrottlingException")).count();
    assert!(read >= 1 && throttled >= 1, "some were read (and refused), some throttled: {read} {throttled}");
    h.logged_in_pull(&config).await;
    let peak = h.ferry.peak_rss();
    println!("peak RSS after the 9 MiB bodies: {} MiB", peak >> 20);
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
}
