//! A token-authenticated upstream: `docker-registry` with Docker-Hub-style token auth, and a
//! token issuer written here (distribution does not ship one). Ferry follows the 401 challenge
//! to the issuer with its configured credentials; wrong credentials give a clear error.

use crate::harness::*;
use crate::upstream::RealUpstream;
use base64::Engine;
use bytes::Bytes;
use ferry::config::{PullThroughRule, Secret};
use http_body_util::Full;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

const USER: &str = "ferry-bot";
const PASSWORD: &str = "correct horse";

/// Signs ES256 JWTs with a key whose self-signed certificate the upstream trusts.
struct Issuer {
    base: String,
    cert: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ECDSA signature in DER (what openssl prints) as JOSE's raw r||s.
fn der_to_jose(der: &[u8]) -> Vec<u8> {
    let mut i = 2;
    if der[1] & 0x80 != 0 {
        i += (der[1] & 0x7f) as usize;
    }
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = if int.len() > 32 { &int[int.len() - 32..] } else { int };
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

fn sign(dir: &Path, scope: &str) -> String {
    let cert_der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap()
        .stdout;
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)]});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // scope = repository:NAME:pull[,push]
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let claims = serde_json::json!({
        "iss": "test-issuer", "sub": USER, "aud": "test-registry",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", rand_id()),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    std::fs::write(dir.join("input"), &input).unwrap();
    let der = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .arg(dir.join("input"))
        .output()
        .unwrap()
        .stdout;
    format!("{input}.{}", b64url(&der_to_jose(&der)))
}

fn rand_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
}

impl Issuer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=test-issuer",
                "-keyout",
            ])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (path, log) = (dir.path().to_owned(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (path, log) = (path.clone(), log.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (path, log) = (path.clone(), log.clone());
                        async move {
                            let expected = format!(
                                "Basic {}",
                                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                            );
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let query = req.uri().query().unwrap_or("").to_owned();
                            log.lock().unwrap().push(format!("{} {query} auth={}", req.method(), !auth.is_empty()));
                            let scope = form_urlencoded::parse(query.as_bytes())
                                .find(|(k, _)| k == "scope")
                                .map(|(_, v)| v.into_owned())
                                .unwrap_or_default();
                            let (status, body) = if auth != expected {
                                (401, serde_json::json!({"details": "bad credentials"}).to_string())
                            } else {
                                let token = tokio::task::spawn_blocking(move || sign(&path, &scope)).await.unwrap();
                                (200, serde_json::json!({"token": token, "access_token": token, "expires_in": 300, "issued_at": "2026-01-01T00:00:00Z"}).to_string())
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("Content-Type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { base, cert: dir.path().join("cert.pem"), requests, _dir: dir }
    }

    fn auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: \"{}/token\"\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            self.base,
            self.cert.display()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authenticated_upstream_with_configured_credentials() {
    let mut hub = RealUpstream::start();
    let client = reqwest::Client::new();
    let layer = random_bytes(300_000, 90);
    let (manifest, _) = push_config_image(&client, &hub.base, "private/app", "v1", &layer).await;
    let layer_digest = digest(&layer);
    let issuer = Issuer::start().await;
    hub.restart_with(&issuer.auth_yaml());
    let resp = client.get(format!("{}/v2/private/app/manifests/v1", hub.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "the upstream now demands a token");

    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("hub-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let rule = PullThroughRule {
        prefix: "hub".into(),
        upstream: hub.base.clone(),
        username: USER.into(),
        password_file: password_file.display().to_string(),
        ..Default::default()
    };
    let good = TestFerry::start_with({
        let rule = rule.clone();
        move |c| c.pull_through = vec![rule]
    })
    .await;
    let resp = good
        .client
        .get(good.url("/v2/hub/private/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);
    let got = good
        .client
        .get(good.url(&format!("/v2/hub/private/app/blobs/{layer_digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &layer[..]);
    let seen = issuer.requests.lock().unwrap().clone();
    assert!(
        !seen.is_empty()
            && seen.iter().all(|r| r.contains("auth=true") && r.contains("scope=repository%3Aprivate%2Fapp%3Apull")),
        "{seen:?}"
    );
    // The token is reused while it is valid.
    let again = good
        .client
        .get(good.url(
            "/v2/hub/private/app/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(issuer.requests.lock().unwrap().len(), seen.len(), "no new token for the same scope");

    // Wrong credentials: a clear error naming the upstream's refusal.
    let bad = TestFerry::start_with(move |c| {
        c.pull_through =
            vec![PullThroughRule { password_file: String::new(), password: Secret("wrong".into()), ..rule }]
    })
    .await;
    let resp = bad
        .client
        .get(bad.url("/v2/hub/private/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("refused Ferry's credentials"), "{body}");
}

/// Replication to a plain OCI registry: the CNCF registry with Docker-Hub-style token auth as
/// a destination. The source follows the challenge to the issuer with the configured
/// credentials for a pull and push token, and the image arrives whole (nothing ECR-only is
/// asked of it: no registry policy, no repository creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_to_a_token_authenticated_cncf_registry() {
    let issuer = Issuer::start().await;
    let hub = RealUpstream::start_with(&issuer.auth_yaml());
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("hub-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let target = ferry::config::ReplicationTarget {
        registry_id: "444444444444".into(),
        region: "us-west-2".into(),
        url: hub.base.clone(),
        access_key_id: USER.into(),
        secret_access_key_file: password_file.display().to_string(),
    };
    let source = TestFerry::start_with(move |c| {
        c.auth.registry_id = crate::replication::SOURCE_ID.into();
        c.replication.destinations = vec![target];
    })
    .await;
    let rules = serde_json::json!({ "replicationConfiguration": { "rules": [{
        "destinations": [{ "region": "us-west-2", "registryId": "444444444444" }] }] } });
    let (status, body) = crate::replication::ecr(&source, "PutReplicationConfiguration", rules).await;
    assert_eq!(status, 200, "{body}");
    let layer = random_bytes(300_000, 91);
    let (manifest, top) = source.push_image("team/app", "v1", &layer).await;

    eventually_value("the image is replicated", std::time::Duration::from_secs(60), || async {
        let s = crate::replication::statuses(&source.base, "team/app", &top).await;
        assert!(s.iter().all(|(_, status, _)| status == "IN_PROGRESS" || status == "COMPLETE"), "{s:?}");
        match s.iter().any(|(_, status, _)| status == "COMPLETE") {
            true => Ok(()),
            false => Err(s),
        }
    })
    .await;
    let seen = issuer.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|r| r.contains("auth=true") && r.contains("scope=repository%3Ateam%2Fapp%3Apull%2Cpush")),
        "{seen:?}"
    );
    // Read it back from the registry itself, with a pull token of its issuer.
    let client = reqwest::Client::new();
    let token: serde_json::Value = client
        .get(format!("{}/token?service=test-registry&scope=repository:team/app:pull", issuer.base))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let got = client
        .get(format!("{}/v2/team/app/manifests/v1", hub.base))
        .bearer_auth(&token)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &manifest[..]);
    let blob = client
        .get(format!("{}/v2/team/app/blobs/{}", hub.base, digest(&layer)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(blob.as_ref(), &layer[..]);
}
