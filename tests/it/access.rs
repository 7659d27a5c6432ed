//! Access control on the registry API: Basic credentials in ECR's two forms (access key id +
//! secret, `AWS` + a registry token), the 401 challenge real clients answer, IAM-style policies
//! decided per endpoint and repository, token expiry and tampering, a principal removed by a
//! reload, and the per-address limit on failed attempts. Real clients: skopeo and podman log in.

use crate::clients::{policy, run, skopeo};
use crate::harness::*;
use crate::images::build_layout;
use ferry::auth::secrets::new_key;
use ferry::config::{AuthConfig, Config, HumanDuration, PrincipalConfig, Secret};
use reqwest::StatusCode;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const ACCOUNT: &str = "123456789012";

/// A principal with a fresh key pair; returns its config and secret.
fn principal(name: &str, policy: &str) -> (PrincipalConfig, String, String) {
    let key = new_key().unwrap();
    let config = PrincipalConfig {
        name: name.into(),
        access_key_id: key.access_key_id.clone(),
        secret_access_key_hash: Secret(key.hash),
        policies: vec![policy.into()],
        ..PrincipalConfig::default()
    };
    (config, key.access_key_id, key.secret)
}

fn allow(actions: &[&str], resources: &[&str]) -> String {
    serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}]})
        .to_string()
}

fn repo_arn(name: &str) -> String {
    format!("arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{name}")
}

pub const PUSH: [&str; 6] = [
    "ecr:BatchGetImage",
    "ecr:BatchCheckLayerAvailability",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
];

/// `ci` pushes to team-a/* and public/* but is denied team-a/secret; `reader` pulls
/// everything and lists the catalog; anonymous callers pull public/*.
struct Setup {
    auth: AuthConfig,
    ci: (String, String),
    reader: (String, String),
}

fn setup() -> Setup {
    let mut ci_policy: serde_json::Value =
        serde_json::from_str(&allow(&PUSH, &[&repo_arn("team-a/*"), &repo_arn("public/*")])).unwrap();
    ci_policy["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "nosecret", "Effect": "Deny", "Action": "ecr:*", "Resource": repo_arn("team-a/secret")
    }));
    // Creating on push: team-a/* and public/tool, not other public/* names.
    ci_policy["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Effect": "Allow", "Action": "ecr:CreateRepository", "Resource": [repo_arn("team-a/*"), repo_arn("public/tool")]
    }));
    let (ci, ci_key, ci_secret) = principal("ci", &ci_policy.to_string());
    let reader_policy = allow(
        &[
            "ecr:BatchGetImage",
            "ecr:GetDownloadUrlForLayer",
            "ecr:BatchCheckLayerAvailability",
            "ecr:ListImages",
            "ecr:DescribeRepositories",
        ],
        &["*"],
    );
    let (reader, reader_key, reader_secret) = principal("reader", &reader_policy);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        max_failures_per_minute: 5,
        principals: vec![ci, reader],
        anonymous: ferry::config::AnonymousConfig {
            policies: vec![allow(&["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"], &[&repo_arn("public/*")])],
        },
        ..AuthConfig::default()
    };
    Setup { auth, ci: (ci_key, ci_secret), reader: (reader_key, reader_secret) }
}

async fn status(resp: reqwest::Response) -> (u16, String) {
    let s = resp.status().as_u16();
    (s, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_every_endpoint_for_every_principal() {
    let s = setup();
    let auth = s.auth.clone();
    let f = TestFerry::start_with(move |c| c.auth = auth).await;
    let c = &f.client;
    let as_ci = |r: reqwest::RequestBuilder| r.basic_auth(&s.ci.0, Some(&s.ci.1));
    let as_reader = |r: reqwest::RequestBuilder| r.basic_auth(&s.reader.0, Some(&s.reader.1));

    // The challenge docker, podman and skopeo answer: with anonymous policies in force, Docker's
    // Bearer flow (docker pulls nothing anonymously after a Basic challenge), whose token
    // endpoint hands out a token to anyone; without credentials it names nobody.
    let resp = c.get(f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&resp, "www-authenticate");
    let realm = format!("Bearer realm=\"{}/v2/token\",service=\"ferry\"", f.base);
    assert_eq!(challenge, realm);
    assert_eq!(error_code(resp).await, "UNAUTHORIZED");
    let denied = c.get(f.url("/v2/team-a/app/manifests/v1")).send().await.unwrap();
    assert_eq!(
        header(&denied, "www-authenticate"),
        format!("{realm},scope=\"repository:team-a/app:pull\""),
        "the scope a Bearer client asks for"
    );
    let anonymous: serde_json::Value = c
        .get(f.url("/v2/token?service=ferry&scope=repository:team-a/app:pull"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let anonymous = anonymous["token"].as_str().unwrap().to_owned();
    let with_bearer = |t: &str| c.get(f.url("/v2/")).bearer_auth(t);
    assert_eq!(with_bearer(&anonymous).send().await.unwrap().status(), StatusCode::OK, "the flow finished, as nobody");
    let denied = c.get(f.url("/v2/team-a/app/manifests/v1")).bearer_auth(&anonymous).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED, "an anonymous token grants what anonymous may do, no more");
    assert!(header(&denied, "www-authenticate").ends_with(",error=\"insufficient_scope\""));
    let as_ci_token: serde_json::Value = c
        .get(f.url("/v2/token?service=ferry&scope=repository:team-a/app:pull,push"))
        .basic_auth(&s.ci.0, Some(&s.ci.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(as_ci_token["expires_in"].as_u64().unwrap() <= 3600, "{as_ci_token}");
    let ci_bearer = as_ci_token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(with_bearer(&ci_bearer).send().await.unwrap().status(), StatusCode::OK);
    let wrong = c.get(f.url("/v2/token?service=ferry")).basic_auth(&s.ci.0, Some("wrong")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "the token endpoint checks credentials");
    // containerd asks with a password grant.
    let form = c
        .post(f.url("/v2/token"))
        .form(&[("grant_type", "password"), ("username", &s.ci.0), ("password", &s.ci.1), ("service", "ferry")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let mut tampered = ci_bearer.clone();
    tampered.insert(12, 'x');
    assert_eq!(with_bearer(&tampered).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(as_ci(c.get(f.url("/v2/"))).send().await.unwrap().status(), StatusCode::OK);
    let wrong = c.get(f.url("/v2/")).basic_auth(&s.ci.0, Some("wrong secret")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    // Pushes: ci to team-a, not to team-b, never to team-a/secret.
    let push = |repo: &'static str| {
        let (c, base, key, secret) = (c.clone(), f.base.clone(), s.ci.0.clone(), s.ci.1.clone());
        async move {
            let body = format!("layer of {repo}");
            let d = digest(body.as_bytes());
            c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .basic_auth(key, Some(secret))
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(push("team-a/app").await.status(), StatusCode::CREATED);
    assert_eq!(push("public/tool").await.status(), StatusCode::CREATED);
    let (code, body) = status(push("team-b/app").await).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("DENIED") && body.contains("ecr:InitiateLayerUpload") && body.contains(&repo_arn("team-b/app")),
        "{body}"
    );
    assert_eq!(push("team-a/secret").await.status(), StatusCode::FORBIDDEN);
    // May push to public/*, but not create a repository there beyond public/tool.
    let (code, body) = status(push("public/other").await).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("ecr:CreateRepository") && body.contains(&repo_arn("public/other")), "{body}");

    // An image in team-a, pushed by ci.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = digest(config);
    let resp = as_ci(c.post(f.url(&format!("/v2/team-a/app/blobs/uploads/?digest={cd}"))))
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let put =
        as_ci(c.put(f.url("/v2/team-a/app/manifests/v1"))).header("Content-Type", OCI_MANIFEST).body(manifest.clone());
    assert_eq!(put.send().await.unwrap().status(), StatusCode::CREATED);

    // Reads: reader everywhere; anonymous only public/*, challenged elsewhere (never told
    // whether a repository exists).
    let get = |path: &str| c.get(f.url(path));
    assert_eq!(as_reader(get("/v2/team-a/app/manifests/v1")).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(as_reader(get(&format!("/v2/team-a/app/blobs/{cd}"))).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/v2/team-a/app/manifests/v1").send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get("/v2/team-a/nothing/manifests/v1").send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let public_layer = digest(b"layer of public/tool");
    assert_eq!(get(&format!("/v2/public/tool/blobs/{public_layer}")).send().await.unwrap().status(), StatusCode::OK);
    // reader may not push or delete.
    let resp = as_reader(c.delete(f.url("/v2/team-a/app/manifests/v1"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // ci may not read team-b, so it may not mount from it either.
    let team_b_layer = digest(b"layer of team-b/app");
    let mount = as_ci(c.post(f.url(&format!("/v2/team-a/app/blobs/uploads/?mount={team_b_layer}&from=team-b/app"))));
    assert_eq!(mount.send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // Nor take a blob by its digest alone: without `from`, no automatic mount (a session opens).
    let public_layer_digest = digest(b"layer of public/tool");
    let auto = as_ci(c.post(f.url(&format!("/v2/team-a/app/blobs/uploads/?mount={public_layer_digest}"))));
    assert_eq!(auto.send().await.unwrap().status(), StatusCode::ACCEPTED);

    // The catalog shows each caller what it may describe.
    let catalog = |r: reqwest::RequestBuilder| async move {
        let v: serde_json::Value = r.send().await.unwrap().json().await.unwrap();
        v["repositories"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(catalog(as_reader(get("/v2/_catalog"))).await, ["public/tool", "team-a/app"]);
    assert!(catalog(as_ci(get("/v2/_catalog"))).await.is_empty());

    // Tokens: AWS + a registry password works like the key pair; a tampered one does not.
    let (token, _) = ferry::issue_token(&f.config, &s.ci.0, &s.ci.1).await.unwrap();
    let with_token = |t: &str| c.get(f.url("/v2/team-a/app/manifests/v1")).basic_auth("AWS", Some(t));
    assert_eq!(with_token(&token).send().await.unwrap().status(), StatusCode::OK);
    let mut tampered = token.clone();
    tampered.insert(10, 'x');
    assert_eq!(with_token(&tampered).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let metrics = f.metrics().await;
    assert!(metric_sum(&metrics, "ferry_auth_failures_total", &["reason=\"invalid\""]) >= 2.0);
    assert!(metric_sum(&metrics, "ferry_auth_denials_total", &[]) >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_principals_can_be_removed_and_guessing_is_throttled() {
    let s = setup();
    let mut auth = s.auth.clone();
    auth.token_ttl = HumanDuration(Duration::from_secs(600));
    let clock = ferry::clock::ManualClock::new();
    let f = TestFerry::start_with_clock(Arc::new(clock.clone()), move |c| c.auth = auth).await;
    let c = &f.client;
    let (token, _) = ferry::issue_token(&f.config, &s.ci.0, &s.ci.1).await.unwrap();
    let with_token = || c.get(f.url("/v2/")).basic_auth("AWS", Some(&token));
    assert_eq!(with_token().send().await.unwrap().status(), StatusCode::OK);
    // Ferry's clock moves past the token's ttl: ECR's text, 403.
    clock.advance(Duration::from_secs(601));
    let resp = with_token().send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("Your authorization token has expired. Reauthenticate and try again."),
        "{body}"
    );

    // A principal removed by a reload: its key pair stops at once, though it verified before.
    let as_ci = || c.get(f.url("/v2/")).basic_auth(&s.ci.0, Some(&s.ci.1));
    assert_eq!(as_ci().send().await.unwrap().status(), StatusCode::OK);
    let mut without_ci = s.auth.clone();
    without_ci.principals.retain(|p| p.name != "ci");
    f.server.as_ref().unwrap().reload_auth(&without_ci).unwrap();
    assert_eq!(as_ci().send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // The reader's credential verifies once before anyone guesses.
    let as_reader = || c.get(f.url("/v2/")).basic_auth(&s.reader.0, Some(&s.reader.1));
    assert_eq!(as_reader().send().await.unwrap().status(), StatusCode::OK);
    // Guessing: after 5 wrong secrets for one key in a minute from one address, 429 with
    // Retry-After; 20 parallel guesses get no more checks than that (each reserves its failure
    // before its check).
    let guess = || c.get(f.url("/v2/")).basic_auth(&s.reader.0, Some("guess"));
    let answers = futures_util::future::join_all((0..20).map(|_| guess().send())).await;
    let statuses: Vec<u16> = answers.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 15, "{statuses:?}");
    let resp = guess().send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&resp, "retry-after").is_empty());
    assert!(metric_sum(&f.metrics().await, "ferry_auth_failures_total", &["reason=\"throttled\""]) >= 1.0);
    // The key's owner, verified lately, is not held back by someone else's guesses; nor is a
    // registry token, nor another key from the same address.
    assert_eq!(as_reader().send().await.unwrap().status(), StatusCode::OK);
    let mut with_ci = s.auth.clone();
    with_ci.token_ttl = HumanDuration(Duration::from_secs(600));
    f.server.as_ref().unwrap().reload_auth(&with_ci).unwrap();
    let as_ci = || c.get(f.url("/v2/")).basic_auth(&s.ci.0, Some(&s.ci.1));
    assert_eq!(as_ci().send().await.unwrap().status(), StatusCode::OK, "another key from the same address");
    // After the minute, the budget is back.
    clock.advance(Duration::from_secs(60));
    assert_eq!(guess().send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// skopeo and podman log in with the key pair and with `AWS` + a registry password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_podman_log_in() {
    let s = setup();
    let auth = s.auth.clone();
    let f = TestFerry::start_with(move |c| c.auth = auth).await;
    let addr = f.server.as_ref().unwrap().addr;
    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    let built = build_layout(&work.path().join("src"), "v1", &["amd64"], 50_000, false, 61);
    let dest = format!("docker://{addr}/team-a/logged-in:v1");
    // Without credentials the push is refused; with the key pair it goes through.
    let out = skopeo(&policy).args(["copy", "--dest-tls-verify=false", &built.source, &dest]).output().unwrap();
    assert!(!out.status.success(), "an anonymous push must fail");
    let creds = format!("{}:{}", s.ci.0, s.ci.1);
    run(skopeo(&policy).args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds, &built.source, &dest]));
    // podman logs in as AWS with a registry password (what `aws ecr get-login-password` gives).
    let (token, _) = ferry::issue_token(&f.config, &s.reader.0, &s.reader.1).await.unwrap();
    let root = work.path().join("podman");
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root").arg(root.join("root")).arg("--runroot").arg(root.join("run"));
        c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c.env("REGISTRY_AUTH_FILE", work.path().join("auth.json"));
        c.args(args);
        c
    };
    let host = addr.to_string();
    let mut login = podman(&["login", "--tls-verify=false", "--username", "AWS", "--password-stdin", &host]);
    login.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), token.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "podman login: {}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{addr}/team-a/logged-in:v1");
    run(&mut podman(&["pull", "--tls-verify=false", &image]));
    let got = run(&mut podman(&["image", "inspect", "--format", "{{.Digest}}", &image]));
    assert_eq!(got.trim(), built.top);
    // A wrong password is refused at login.
    let mut bad = podman(&["login", "--tls-verify=false", "--username", "AWS", "--password", "not-a-token", &host]);
    assert!(!bad.output().unwrap().status.success(), "podman login with a wrong password must fail");
}

/// With access control off, Ferry refuses to listen beyond loopback unless told to.
#[tokio::test]
async fn an_open_registry_listens_only_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut c: Config = test_config(dir.path());
    c.server.listen = "0.0.0.0:0".into();
    let err = ferry::start(c.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("auth.allow_anonymous_writes"), "{err}");
    c.auth.allow_anonymous_writes = true;
    let server = ferry::start(c).await.unwrap();
    server.shutdown().await;
}

/// A pull-through miss needs `ecr:BatchImportUpstreamImage` as well as the pull actions; a
/// cache hit does not. A caller without it never makes Ferry contact the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_importers_make_ferry_fetch_from_an_upstream() {
    let hub = crate::upstream::RealUpstream::start();
    let client = reqwest::Client::new();
    let (manifest, d) = push_config_image(&client, &hub.base, "lib/tool", "v1", br#"{"from":"upstream"}"#).await;
    let pull = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"];
    let (puller, puller_key, puller_secret) = principal("puller", &allow(&pull, &[&repo_arn("hub/*")]));
    let mut import = pull.to_vec();
    import.push("ecr:BatchImportUpstreamImage");
    let (importer, importer_key, importer_secret) = principal("importer", &allow(&import, &[&repo_arn("hub/*")]));
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![puller, importer],
        ..AuthConfig::default()
    };
    let rules =
        vec![ferry::config::PullThroughRule { prefix: "hub".into(), upstream: hub.base.clone(), ..Default::default() }];
    let f = TestFerry::start_with(move |c| {
        c.auth = auth;
        c.pull_through = rules;
    })
    .await;
    let get = |key: &str, secret: &str| {
        f.client
            .get(f.url("/v2/hub/lib/tool/manifests/v1"))
            .header("Accept", OCI_MANIFEST)
            .basic_auth(key, Some(secret))
            .send()
    };
    let (code, body) = status(get(&puller_key, &puller_secret).await.unwrap()).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("BatchImportUpstreamImage"), "{body}");
    let log = std::fs::read_to_string(hub.access_log()).unwrap_or_default();
    let asked = log.lines().any(|l| l.contains("\"GET /v2/lib/tool/") || l.contains("\"HEAD /v2/lib/tool/"));
    assert!(!asked, "the refused miss reached the upstream:\n{log}");
    let resp = get(&importer_key, &importer_secret).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);
    // Now cached: a hit needs no import right.
    let resp = get(&puller_key, &puller_secret).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), d);
}

/// Secrets, hashes and tokens never reach the log, whatever happens: wrong and right key
/// pairs, tokens, denials, a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_tokens_never_reach_the_log() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    let c = Config { auth: s.auth.clone(), ..Config::default() };
    std::fs::write(&config, toml::to_string(&c).unwrap().replace("\"<redacted>\"", "\"\"")).unwrap();
    // The hashes are secrets too: written into the file by hand, since `Secret` serializes as <redacted>.
    let mut text = std::fs::read_to_string(&config).unwrap();
    for p in &s.auth.principals {
        text = text.replacen(
            "secret_access_key_hash = \"\"",
            &format!("secret_access_key_hash = \"{}\"", p.secret_access_key_hash.0),
            1,
        );
    }
    std::fs::write(&config, &text).unwrap();
    let config_path = config.to_str().unwrap();
    let ferry = FerryProcess::start_env(
        &dir.path().join("data"),
        &[("FERRY_CONFIG", config_path), ("FERRY_LOG_LEVEL", "debug")],
    );
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", ferry.base);
    assert_eq!(client.get(url("/v2/")).basic_auth(&s.ci.0, Some(&s.ci.1)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(url("/v2/")).basic_auth(&s.ci.0, Some("wrong-guess-1")).send().await.unwrap().status(), 401);
    let mut cfg: Config = Config::load(Some(&config), std::iter::empty()).unwrap();
    cfg.storage.data_dir = dir.path().join("data");
    let (token, _) = ferry::issue_token(&cfg, &s.ci.0, &s.ci.1).await.unwrap();
    assert_eq!(client.get(url("/v2/")).basic_auth("AWS", Some(&token)).send().await.unwrap().status(), 200);
    let resp = client.get(url("/v2/team-b/x/manifests/v1")).basic_auth("AWS", Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    std::process::Command::new("kill").arg("-HUP").arg(ferry.child.id().to_string()).status().unwrap();
    eventually("the reload is logged", std::time::Duration::from_secs(10), || async {
        ferry.logs.lock().unwrap().iter().any(|l| l.contains("reloaded principals"))
    })
    .await;
    let logs = ferry.logs.lock().unwrap().join("\n");
    assert!(logs.contains("\"status\":401"), "the refusal was logged");
    for secret in [s.ci.1.as_str(), s.reader.1.as_str(), token.as_str(), "wrong-guess-1"]
        .into_iter()
        .chain(s.auth.principals.iter().map(|p| p.secret_access_key_hash.0.as_str()))
    {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}
