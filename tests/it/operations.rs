//! Operations: the CLI's config check, graceful shutdown, the in-flight limit, and the purge
//! of abandoned uploads.

use crate::harness::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use sha2::Digest as _;
use std::process::Command;
use std::time::Duration;

#[test]
fn config_check_prints_effective_settings_or_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:6000\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:6000\""), "{text}");
    assert!(text.contains("admin_listen = \"127.0.0.1:5090\""), "defaults fill the rest: {text}");

    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["config", "check"])
        .arg(&good)
        .env("FERRY_SERVER_LISTEN", "127.0.0.1:6001")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listen = \"127.0.0.1:6001\""),
        "environment overrides the file"
    );

    for (text, key) in [
        ("[server]\nlisen = \"x\"\n", "lisen"),
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[storage]\nbackend = \"tape\"\n", "tape"),
        ("[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n", "tls.cert"),
    ] {
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["config", "check"]).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "error should name {key}: {err}");
    }
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["config", "check"]).arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 3, "config/ holds the default and the examples");
    for entry in std::fs::read_dir(dir.join("lifecycle")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        ferry::lifecycle::policy::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_downloads_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut ferry = FerryProcess::start(dir.path());
    let client = reqwest::Client::new();
    let blob = random_bytes(64 << 20, 5);
    let d = push_blob(&client, &ferry.base, "drain", &blob).await;
    let resp = client.get(format!("{}/v2/drain/blobs/{d}", ferry.base)).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut h = sha2::Sha256::new();
    let first = stream.next().await.unwrap().unwrap();
    h.update(&first);
    Command::new("kill").arg("-TERM").arg(ferry.child.id().to_string()).status().unwrap();
    let mut n = first.len();
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, blob.len(), "the download in flight completed");
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), d);
    assert!(ferry.child.child().wait().unwrap().success(), "Ferry exits cleanly once drained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_answers_429() {
    let f = TestFerry::start_with(|c| c.server.max_in_flight_requests = 1).await;
    let blob = random_bytes(64 << 20, 6);
    let d = f.push_blob("limit", &blob).await;
    // A download whose body is not read holds the one permit.
    let held = f.client.get(f.url(&format!("/v2/limit/blobs/{d}"))).send().await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let resp = f.client.get(f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    drop(held);
    eventually("the permit is released when the download is dropped", Duration::from_secs(10), || async {
        f.client.get(f.url("/v2/")).send().await.unwrap().status() == StatusCode::OK
    })
    .await;
    // At least the one asserted above; the wait loop may add more while the permit drains.
    assert!(metric(&f.metrics().await, "ferry_http_requests_rejected_total") >= 1.0);
}

#[tokio::test]
async fn abandoned_uploads_are_purged() {
    let f = TestFerry::start_with(|c| {
        // Not 1 ms: that purged sessions while their first fsync was still running, so the
        // POST itself failed (a session younger than the idle time is never purged).
        c.registry.upload_max_idle = ferry::config::HumanDuration(Duration::from_millis(300));
        c.registry.upload_purge_interval = ferry::config::HumanDuration(Duration::from_millis(20));
    })
    .await;
    let resp = f.client.post(f.url("/v2/purge/blobs/uploads/")).send().await.unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    eventually("the idle session was purged", Duration::from_secs(10), || async {
        f.client.get(f.url(&location)).send().await.unwrap().status() == StatusCode::NOT_FOUND
    })
    .await;
    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(snapshot(&f.data_dir().join("uploads")).is_empty());
    // Counted just after the session is removed.
    eventually("the purge is counted", Duration::from_secs(10), || async {
        metric(&f.metrics().await, "ferry_uploads_purged_total") >= 1.0
    })
    .await;
    assert_eq!(metric(&f.metrics().await, "ferry_uploads_purged_total"), 1.0);
}

/// Finding 9: an invalid log filter is refused by `config check` and by `serve` (which once
/// started and printed nothing at all), naming the key.
#[test]
fn an_invalid_log_level_is_refused_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[log]\nlevel = \"verbose!!\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["config", "check"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.level"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("FERRY_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log.level"), "serve says why it will not start");
}

/// Finding 9: an unreachable upstream is an upstream error, not a storage one; JSON log lines
/// carry each key once; text logs written to a pipe carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_labelled_by_source_and_logs_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on, from the range no bind to port 0 is given.
    let dead = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, format!("[[pull_through]]\nprefix = \"up\"\nupstream = \"http://{dead}\"\n")).unwrap();
    let config_path = config.to_str().unwrap();
    let ferry = FerryProcess::start_env(&dir.path().join("data"), &[("FERRY_CONFIG", config_path)]);
    let client = reqwest::Client::new();
    let resp = client.get(format!("{}/v2/up/library/x/manifests/v1", ferry.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let metrics = client.get(format!("{}/metrics", ferry.admin)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric_sum(&metrics, "ferry_storage_errors_total", &[]), 0.0, "storage was fine");
    assert!(metric_sum(&metrics, "ferry_http_errors_total", &["source=\"upstream\""]) >= 1.0, "{metrics}");
    eventually("the failure is logged", Duration::from_secs(10), || async {
        ferry.logs.lock().unwrap().iter().any(|l| l.contains("request failed"))
    })
    .await;
    for line in ferry.logs.lock().unwrap().iter() {
        assert_eq!(line.matches("\"message\":").count(), 1, "one message key: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if line.contains("request failed") {
            assert_eq!(v["fields"]["source"], "upstream", "{line}");
            assert!(v["fields"]["error"].as_str().is_some_and(|e| e.contains("unreachable") || !e.is_empty()));
        }
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("text"))
        .env("FERRY_CONFIG", "/dev/null")
        .env("FERRY_LOG_FORMAT", "text")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("ferry started"), "{line}");
    assert!(!line.contains('\u{1b}'), "no ANSI codes in a pipe: {line:?}");
}

/// The purge reads Ferry's clock: a session is kept while it is younger than
/// `upload_max_idle`, however many purge passes run, and purged once the clock says it is
/// older (the test moves the clock instead of waiting an hour).
#[tokio::test]
async fn uploads_are_purged_by_the_clock_not_by_waiting() {
    let clock = ferry::clock::ManualClock::new();
    let f = TestFerry::start_with_clock(std::sync::Arc::new(clock.clone()), |c| {
        c.registry.upload_max_idle = ferry::config::HumanDuration(Duration::from_secs(3600));
        c.registry.upload_purge_interval = ferry::config::HumanDuration(Duration::from_millis(20));
    })
    .await;
    let resp = f.client.post(f.url("/v2/clocked/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let passes = |m: &str| metric_sum(m, "ferry_worker_runs_total", &["worker=\"upload_purge\"", "result=\"idle\""]);
    let before = passes(&f.metrics().await);
    eventually("two more purge passes ran", Duration::from_secs(10), || async {
        passes(&f.metrics().await) >= before + 2.0
    })
    .await;
    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "a young session is kept");
    clock.advance(Duration::from_secs(2 * 3600));
    // The pass counts what it purged when it ends, just after the session is gone.
    eventually("the session, two hours idle by the clock, is purged and counted", Duration::from_secs(10), || async {
        f.client.get(f.url(&location)).send().await.unwrap().status() == StatusCode::NOT_FOUND
            && metric(&f.metrics().await, "ferry_uploads_purged_total") >= 1.0
    })
    .await;
}

/// `deploy/`: the Prometheus rules pass `promtool check rules` and their unit tests and name
/// only metrics Ferry defines; the systemd unit (pointed at this build's binary) passes
/// `systemd-analyze verify` without a complaint, and the config check it runs before start
/// accepts a config it could be given.
#[test]
fn deploy_files_pass_their_tools_and_name_only_what_ferry_has() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prometheus = root.join("deploy/prometheus");
    let tool = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    tool(Command::new("promtool").args(["check", "rules", "ferry-alerts.yml"]).current_dir(&prometheus));
    tool(Command::new("promtool").args(["test", "rules", "ferry-alerts.test.yml"]).current_dir(&prometheus));
    let rules = std::fs::read_to_string(prometheus.join("ferry-alerts.yml")).unwrap();
    let defined = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let named: std::collections::BTreeSet<&str> =
        rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("ferry_")).collect();
    assert!(named.len() >= 8, "{named:?}");
    for name in named {
        assert!(defined.contains(&format!("\"{name}\"")), "the rules name {name}, which Ferry does not define");
    }

    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root.join("deploy/systemd/ferry.service"))
        .unwrap()
        .replace("/usr/local/bin/ferry", env!("CARGO_BIN_EXE_ferry"));
    let path = dir.path().join("ferry.service");
    std::fs::write(&path, unit).unwrap();
    let complaints = tool(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[storage]\ndata_dir = \"/var/lib/ferry\"\n").unwrap();
    tool(Command::new(env!("CARGO_BIN_EXE_ferry")).args(["config", "check"]).arg(&config));
}

/// A webhook receiver on a loopback port: what a team's own endpoint would be. Written here
/// because no packaged program receives webhooks and fails on purpose: it answers 500 while
/// `failing` is above zero (counting it down), then 200, and keeps every request it answered
/// 200 with its headers and body.
#[derive(Clone)]
struct WebhookReceiver {
    url: String,
    failing: Arc<std::sync::atomic::AtomicUsize>,
    received: Arc<std::sync::Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>,
}

use std::sync::Arc;

impl WebhookReceiver {
    async fn start(failing: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Self {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            failing: Arc::new(std::sync::atomic::AtomicUsize::new(failing)),
            received: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body =
                                http_body_util::BodyExt::collect(body).await.map(|b| b.to_bytes()).unwrap_or_default();
                            let fail = me
                                .failing
                                .fetch_update(
                                    std::sync::atomic::Ordering::SeqCst,
                                    std::sync::atomic::Ordering::SeqCst,
                                    |n| n.checked_sub(1),
                                )
                                .is_ok();
                            let status = if fail { 500 } else { 200 };
                            if !fail {
                                me.received.lock().unwrap().push((parts.headers, body));
                            }
                            let resp = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        r
    }

    /// The bodies received, parsed.
    fn events(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect()
    }
}

/// Webhooks: a skopeo push and a tag delete reach a receiver as ECR's EventBridge events,
/// signed with the receiver's secret, after the receiver's failures (retried with backoff);
/// a second receiver gets only the deletes in the repositories it asked for; an event queued
/// while its receiver fails survives a restart of Ferry and is delivered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_deliver_pushes_and_deletes_signed_retried_and_across_a_restart() {
    let all = WebhookReceiver::start(2).await;
    let deletes = WebhookReceiver::start(0).await;
    let (all_url, deletes_url) = (all.url.clone(), deletes.url.clone());
    let mut f = TestFerry::start_with(move |c| {
        c.webhooks = vec![
            ferry::config::WebhookConfig {
                name: "all".into(),
                url: all_url,
                secret: ferry::config::Secret("hook-secret".into()),
                ..Default::default()
            },
            ferry::config::WebhookConfig {
                name: "team-deletes".into(),
                url: deletes_url,
                events: vec!["DELETE".into()],
                repositories: vec!["team/*".into()],
                ..Default::default()
            },
        ];
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let built = crate::images::build_layout(&work.path().join("src"), "v1", &["amd64"], 10_000, false, 5);
    crate::replication::skopeo_push(work.path(), &built.source, &f.base, "team/app:v1");
    eventually("the push reaches the receiver after its two failures", Duration::from_secs(20), || async {
        !all.events().is_empty()
    })
    .await;
    let (headers, body) = all.received.lock().unwrap()[0].clone();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["detail-type"], "ECR Image Action");
    assert_eq!(event["source"], "aws.ecr");
    assert_eq!(
        event["detail"],
        serde_json::json!({"result": "SUCCESS", "repository-name": "team/app", "image-digest": built.top,
                           "action-type": "PUSH", "image-tag": "v1"})
    );
    assert_eq!(headers["ferry-event-id"].to_str().unwrap(), event["id"].as_str().unwrap());
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"hook-secret").unwrap();
    hmac::Mac::update(&mut mac, &body);
    let expected = format!("sha256={}", hex::encode(hmac::Mac::finalize(mac).into_bytes()));
    assert_eq!(headers["ferry-signature"].to_str().unwrap(), expected, "signed with the receiver's secret");
    assert!(deletes.events().is_empty(), "the second receiver asked for deletes only");
    let m = f.metrics().await;
    assert!(metric_sum(&m, "ferry_webhook_deliveries_total", &["webhook=\"all\"", "result=\"retried\""]) >= 2.0);

    let resp = f.client.delete(f.url("/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    eventually("the delete reaches both receivers", Duration::from_secs(10), || async {
        all.events().len() == 2 && deletes.events().len() == 1
    })
    .await;
    for e in [&all.events()[1], &deletes.events()[0]] {
        assert_eq!(e["detail"]["action-type"], "DELETE");
        assert_eq!(e["detail"]["image-tag"], "v1");
        assert_eq!(e["detail"]["image-digest"], built.top.as_str());
    }

    // Queued while the receiver fails, kept across a restart, delivered once it recovers.
    all.failing.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let (_, digest) = f.push_image("other/app", "v2", b"layer of other").await;
    eventually("the receiver has refused the push at least once", Duration::from_secs(10), || async {
        metric_sum(&f.metrics().await, "ferry_webhook_deliveries_total", &["webhook=\"all\"", "result=\"retried\""])
            >= 3.0
    })
    .await;
    f.restart().await;
    all.failing.store(0, std::sync::atomic::Ordering::SeqCst);
    eventually("the queued push is delivered after the restart", Duration::from_secs(30), || async {
        all.events().iter().any(|e| e["detail"]["image-digest"] == digest.as_str())
    })
    .await;
    assert_eq!(deletes.events().len(), 1, "other/app is not the second receiver's");
}

/// The web console on the admin listener: the index lists repositories (50 a page, with a
/// link to the next), pull-through rules and replication; a repository's page lists its images
/// with tags and kinds; an unknown repository is 404; every page forbids scripts and framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_repositories_images_and_rules() {
    let f = TestFerry::start_with(|c| {
        c.pull_through = vec![crate::pull_through::rule("hub", "http://127.0.0.1:1")];
    })
    .await;
    let (manifest, v1) = f.push_image("team/app", "v1", b"first layer").await;
    let resp = f.put_manifest("team/app", "latest", OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (_, v2) = f.push_image("team/app", "v2", b"second layer").await;
    for i in 0..51 {
        f.push_image(&format!("many/r{i:02}"), "v1", format!("layer {i}").as_bytes()).await;
    }
    let get = |path: String| {
        let client = f.client.clone();
        let url = format!("{}{path}", f.admin);
        async move {
            let resp = client.get(url).send().await.unwrap();
            let status = resp.status();
            assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
            assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
            (status, resp.text().await.unwrap())
        }
    };
    let (status, index) = get("/console".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(index.contains("<h2>Repositories</h2>"), "{index}");
    assert!(index.contains("<a href=\"/console/repositories/many/r00\">many/r00</a>"));
    assert!(!index.contains("team/app"), "the first page holds 50 repositories, in catalog order");
    assert_eq!(index.matches("<a href=\"/console/repositories/").count(), 50);
    assert!(index.contains("<td>hub</td><td>http://127.0.0.1:1</td><td>config file</td>"), "{index}");
    assert!(index.contains("No replication rules."));
    assert!(!index.contains("<script"));
    let next = index.split("href=\"/console?after=").nth(1).and_then(|s| s.split('"').next()).unwrap().to_owned();
    let (_, second) = get(format!("/console?after={next}")).await;
    assert!(
        second.contains("<a href=\"/console/repositories/team/app\">team/app</a></td><td>3</td><td>MUTABLE</td>"),
        "{second}"
    );
    assert!(!second.contains("Next page"));

    let (status, repo) = get("/console/repositories/team/app".into()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(repo.contains("2 images"), "{repo}");
    assert!(
        repo.contains(&format!("<code title=\"{v1}\">{}</code></td><td>latest, v1</td><td>image</td>", &v1[..19])),
        "{repo}"
    );
    assert!(repo.contains(&format!("<code title=\"{v2}\">")));
    let (status, missing) = get("/console/repositories/team/none".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing.contains("There is no repository team/none."));
}

/// The workers table: every worker this replica runs is on the console with how its last
/// round ended; a worker that keeps failing (the pull-through rules' record damaged behind
/// Ferry's back) shows its error and how many rounds failed in a row, as does
/// `ferry_worker_consecutive_errors`, and both clear once it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_the_metrics_show_each_worker_and_its_errors() {
    let f = TestFerry::start().await;
    let console = || {
        let url = format!("{}/console", f.admin);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let index = console().await;
    for worker in ["upload_purge", "pull_times", "pull_through_rules"] {
        assert!(index.contains(&format!("<td>{worker}</td>")), "{worker}: {index}");
    }
    f.write_raw("pull-through/rules", b"not json").await;
    let errors =
        || async { metric_sum(&f.metrics().await, "ferry_worker_consecutive_errors", &["pull_through_rules"]) };
    eventually("the rules refresher fails twice in a row", Duration::from_secs(30), || async { errors().await >= 2.0 })
        .await;
    let index = console().await;
    assert!(index.contains("does not decode"), "the error is shown: {index}");
    f.write_raw("pull-through/rules", br#"{"rules":[]}"#).await;
    eventually("the refresher works again", Duration::from_secs(30), || async { errors().await == 0.0 }).await;
    assert!(!console().await.contains("does not decode"));
}

/// `ferry index check` beside a running server: a link whose index fields were damaged behind
/// Ferry's back is found (exit 1 without `--repair`), rewritten with `--repair`, and then
/// `DescribeImages` (which reads the index) shows the image's tag again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_index_check_finds_and_repairs_a_damaged_index() {
    let f = TestFerry::start().await;
    f.push_image("team/idx", "v1", b"index check layer").await;
    let (_, digest) = f.push_image("team/idx", "v2", b"another layer").await;
    let link = f.data_dir().join(format!("repos/team/idx/_manifests/sha256/{}", &digest[7..]));
    let describe = || async {
        let body = serde_json::json!({ "repositoryName": "team/idx", "imageIds": [{ "imageDigest": digest }] });
        let resp = f
            .client
            .post(format!("{}/", f.base))
            .header("X-Amz-Target", "AmazonEC2ContainerRegistry_V20150921.DescribeImages")
            .header("Content-Type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<serde_json::Value>().await.unwrap()["imageDetails"][0]["imageTags"].clone()
    };
    // The first reader marks the repository indexed; then the link is damaged.
    assert_eq!(describe().await, serde_json::json!(["v2"]));
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&link).unwrap()).unwrap();
    assert_eq!(record["tags"], serde_json::json!(["v2"]), "{record}");
    record["tags"] = serde_json::json!([]);
    std::fs::write(&link, serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(describe().await, serde_json::Value::Null, "the damaged index has lost the tag");

    let check = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["index", "check"])
            .args(args)
            .env("FERRY_CONFIG", "/dev/null")
            .env("FERRY_STORAGE_DATA_DIR", f.data_dir())
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), report)
    };
    let (code, report) = check(&[]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!((report["images"].as_u64(), report["wrong"].as_u64()), (Some(2), Some(1)), "{report}");
    assert_eq!(report["wrong_in"], serde_json::json!([["team/idx", 1]]));
    let (code, report) = check(&["--repository", "team/idx", "--repair"]);
    assert_eq!((code, report["wrong"].as_u64(), report["repaired"].as_bool()), (Some(0), Some(1), Some(true)));
    assert_eq!(describe().await, serde_json::json!(["v2"]));
    let (code, report) = check(&[]);
    assert_eq!((code, report["wrong"].as_u64()), (Some(0), Some(0)), "{report}");
    let (code, _) = check(&["--repository", "Not A Name"]);
    assert_eq!(code, Some(2));
}
