//! `cargo bench --bench gc`: garbage collection against the CNCF reference registry on the
//! same content: `FERRY_BENCH_GC_BLOBS` small blobs (default 100,000) in 100 repositories,
//! half of them referenced by manifests (two blobs each) and half never referenced. Ferry
//! collects online (`ferry gc` beside a server that keeps answering 200 pulls a second, which
//! are counted);
//! docker-registry must be stopped for `docker-registry garbage-collect`. Reports the time
//! ratio (peer seconds / Ferry seconds, higher is better for Ferry), Ferry's peak RSS (the
//! `ferry gc` process, by `/usr/bin/time`), what each removed, and on S3 (moto, with
//! `FERRY_BENCH_GC_S3_BLOBS`, default 20,000, since moto is slow to seed) Ferry's S3
//! requests per removed object. `FERRY_BENCH_GC=fs` or `s3` runs one part.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const REPOS: usize = 100;
const AT_ONCE: usize = 32;

fn blob(i: usize) -> Vec<u8> {
    format!("ferry gc bench blob {i:08}").into_bytes()
}

/// The repository blob `i` is pushed to: referenced blobs go with their manifest.
fn repo_of_blob(i: usize, n: usize) -> String {
    let r = if i < n / 2 { (i / 2) % REPOS } else { i % REPOS };
    format!("bench/r{r:03}")
}

async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, bytes: Vec<u8>) {
    let d = digest(&bytes);
    // A loaded S3 server (moto) sometimes fails a request: the registry answers 503, and a
    // client tries again, as this one does.
    let mut attempt = 0;
    let resp = loop {
        let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")).body(bytes.clone()).send().await;
        let resp = resp.expect("upload");
        if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || attempt == 5 {
            break resp;
        }
        attempt += 1;
    };
    if resp.status() == reqwest::StatusCode::ACCEPTED {
        // docker-registry opens a session instead of taking the blob in the POST.
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let url = if location.starts_with("http") { location } else { format!("{base}{location}") };
        let sep = if url.contains('?') { '&' } else { '?' };
        let resp = client.put(format!("{url}{sep}digest={d}")).body(bytes).send().await.expect("upload");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    } else {
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{:?}", resp.text().await);
    }
}

fn manifest(k: usize) -> Vec<u8> {
    let (config, layer) = (blob(2 * k), blob(2 * k + 1));
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap()
}

/// Pushes `n` blobs and `n / 4` manifests (each naming two of the first half).
async fn seed(client: &reqwest::Client, base: &str, n: usize, name: &str) {
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (client, base) = (client.clone(), base.to_owned());
            async move { push_blob(&client, &base, &repo_of_blob(i, n), blob(i)).await }
        })
        .buffer_unordered(AT_ONCE)
        .collect::<Vec<()>>()
        .await;
    futures_util::stream::iter(0..n / 4)
        .map(|k| {
            let (client, base) = (client.clone(), base.to_owned());
            async move {
                let repo = format!("bench/r{:03}", k % REPOS);
                let mut attempt = 0;
                let resp = loop {
                    let resp = client
                        .put(format!("{base}/v2/{repo}/manifests/m{k}"))
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                        .body(manifest(k))
                        .send()
                        .await
                        .expect("manifest put");
                    // As a client would, try again what a loaded S3 server failed.
                    if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || attempt == 5 {
                        break resp;
                    }
                    attempt += 1;
                };
                assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{:?}", resp.text().await);
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect::<Vec<()>>()
        .await;
    eprintln!("seeded {name} with {n} blobs and {} manifests in {:.0}s", n / 4, started.elapsed().as_secs_f64());
}

/// Runs `command` under `/usr/bin/time`: (stdout, peak RSS in KiB, wall seconds).
fn timed(command: Command) -> (String, u64, f64) {
    let time_file = tempfile::NamedTempFile::new().unwrap();
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let envs: Vec<_> = command.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped.arg("-f").arg("%M %e").arg("-o").arg(time_file.path()).arg(program).args(args);
    for (k, v) in envs {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let out = wrapped.output().expect("runs under /usr/bin/time (apt-get install time)");
    assert!(out.status.success(), "{:?} failed: {}", command, String::from_utf8_lossy(&out.stderr));
    let measured = std::fs::read_to_string(time_file.path()).unwrap();
    let mut fields = measured.split_whitespace();
    let rss = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let secs = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), rss, secs)
}

/// One comparison on a backend: `ferry_toml` is the storage section, `peer` the started peer.
async fn compare(label: &str, n: usize, ferry_toml: &str, peer: Server) {
    let client = reqwest::Client::new();
    // No scheduled collection in the server: the bench runs one by hand beside it.
    let ferry = start_ferry_with(&format!("{ferry_toml}\n[gc]\nenabled = false\ngrace = \"1s\"\n"));
    seed(&client, &ferry.base, n, "ferry").await;
    seed(&client, &peer.base, n, "docker-registry").await;
    // Past the grace period, so everything unreferenced may go.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // Ferry collects while it keeps serving pulls.
    let gc_config = ferry.dir.path().join("gc.toml");
    let data = ferry.dir.path().join("data");
    let storage = if ferry_toml.is_empty() {
        format!("[storage]\ndata_dir = \"{}\"\n", data.display())
    } else {
        ferry_toml.to_owned()
    };
    std::fs::write(&gc_config, format!("{storage}\n[gc]\ngrace = \"1s\"\n")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (client, base, stop, served, failed) =
            (client.clone(), ferry.base.clone(), stop.clone(), served.clone(), failed.clone());
        async move {
            let mut k = 0usize;
            // A steady 200 pulls a second: enough to show it serves throughout, not so many
            // that the load generator takes the two cores from the collector.
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let url = format!("{base}/v2/bench/r{:03}/manifests/m{k}", k % REPOS);
                match client.get(url).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().await {
                    Ok(r) if r.status().is_success() => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                k = (k + 1) % (n / 4);
            }
        }
    });
    // FERRY_BENCH_GC_WRAP (e.g. "perf record -g -o /tmp/gc.perf") runs the collector under a profiler.
    let wrap = std::env::var("FERRY_BENCH_GC_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut gc = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(env!("CARGO_BIN_EXE_ferry"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ferry")),
    };
    gc.arg("gc").arg("--config").arg(&gc_config).env("FERRY_LOG_LEVEL", "warn");
    let (out, ferry_rss_kib, ferry_wall) = tokio::task::spawn_blocking(move || timed(gc)).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let json = &out[..out.rfind('}').map_or(0, |i| i + 1)];
    let summary: serde_json::Value = serde_json::from_str(json).expect("ferry gc prints a JSON report");
    let removed = summary["objects_removed"].as_u64().unwrap_or(0);
    let s3_requests = summary["s3_requests"].as_u64().unwrap_or(0);

    // docker-registry must be stopped to collect.
    let peer_config = peer.dir.path().join("config.yml");
    let peer_dir = peer.dir;
    drop(peer.child);
    let mut peer_gc = Command::new("docker-registry");
    peer_gc.arg("garbage-collect").arg(&peer_config).env_remove("AWS_CA_BUNDLE");
    let (peer_out, peer_rss_kib, peer_wall) = tokio::task::spawn_blocking(move || timed(peer_gc)).await.unwrap();
    let peer_removed = peer_out.lines().filter(|l| l.contains("blob eligible for deletion")).count();
    drop(peer_dir);

    report(&format!("{label}_gc_{n}_blobs_time"), ferry_wall, peer_wall, false, "s");
    println!(
        "{label}_gc_{n}_blobs ferry_collect_seconds={:.2} ferry_removed={removed} ferry_links_removed={} ferry_peak_rss_mib={:.1} peer_peak_rss_mib={:.1} ferry_served_during_gc={} ferry_failed_during_gc={} peer_eligible_logged={peer_removed}",
        summary["seconds"].as_f64().unwrap_or(0.0),
        summary["links_removed"],
        ferry_rss_kib as f64 / 1024.0,
        peer_rss_kib as f64 / 1024.0,
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    if s3_requests > 0 && removed > 0 {
        // Per removed content object (the figure the first collector was measured by), and per
        // removal of anything (content and links alike), the whole run's requests included.
        let links = summary["links_removed"].as_u64().unwrap_or(0);
        println!(
            "{label}_gc_s3_requests ferry_total={s3_requests} per_removed_object={:.2} per_removal={:.2}",
            s3_requests as f64 / removed as f64,
            s3_requests as f64 / (removed + links) as f64
        );
    }
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let part = std::env::var("FERRY_BENCH_GC").unwrap_or_default();
    if part.is_empty() || part == "fs" {
        compare("fs", count("FERRY_BENCH_GC_BLOBS", 100_000), "", start_peer()).await;
    }
    if part.is_empty() || part == "s3" {
        let (mut moto, endpoint) = start_moto(&["ferry", "peer"]).await;
        let ferry_toml = format!(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"ferry\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\naccess_key_id = \"bench\"\nsecret_access_key = \"benchsecret\"\n"
        );
        let peer = start_peer_on(
            &format!("s3: {{accesskey: bench, secretkey: benchsecret, region: us-east-1, regionendpoint: \"{endpoint}\", bucket: peer, secure: false, v4auth: true, forcepathstyle: true, rootdirectory: /}}\n  redirect: {{disable: true}}"),
            "",
        );
        compare("s3", count("FERRY_BENCH_GC_S3_BLOBS", 20_000), &ferry_toml, peer).await;
        let _ = moto.kill();
        let _ = moto.wait();
    }
}
