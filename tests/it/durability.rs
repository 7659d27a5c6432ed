//! What survives a restart, what a crash or a full disk leaves behind, and memory that does not
//! grow with blob size. Most run Ferry as a separate process so it can be stopped and killed.

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;
use std::sync::{Arc, Mutex};

/// `count` chunks of `chunk` bytes, each stamped with its index so no two are alike; also returns their digest.
pub fn generated(count: usize, chunk: usize) -> (impl Fn(usize) -> Bytes, String) {
    let base = random_bytes(chunk, 42);
    let make = move |i: usize| {
        let mut c = base.clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Bytes::from(c)
    };
    let mut h = sha2::Sha256::new();
    for i in 0..count {
        h.update(make(i));
    }
    (make, format!("sha256:{}", hex::encode(h.finalize())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let blob = random_bytes(3_000_000, 7);
    let d = digest(&blob);
    let mut ferry = FerryProcess::start(dir.path());
    let resp = client.post(format!("{}/v2/resume/me/blobs/uploads/", ferry.base)).send().await.unwrap();
    let location = header(&resp, "location");
    patch_chunks(&client, &ferry.base, &location, &blob, &[(0, 700_000), (700_000, 1_500_000)]).await;
    assert!(ferry.terminate().success(), "SIGTERM stops Ferry cleanly");

    let ferry = FerryProcess::start(dir.path());
    let resp = client.get(format!("{}{location}", ferry.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), "0-1499999", "the upload's progress survived the restart");
    let resp = client
        .put(format!("{}{location}?digest={d}", ferry.base))
        .header("Content-Range", "1500000-2999999")
        .body(blob[1_500_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let got = client.get(format!("{}/v2/resume/me/blobs/{d}", ferry.base)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_upload_leaves_nothing_under_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let mut ferry = FerryProcess::start(dir.path());
    // Content that must survive.
    let layer = random_bytes(100_000, 9);
    let (manifest, _) = push_config_image(&client, &ferry.base, "keep", "v1", &layer).await;
    let layer_digest = digest(&layer);
    let blobs_before = snapshot(&dir.path().join("blobs"));

    // A big chunked upload and a big monolithic one, both cut by kill -9 half way.
    let (make, big_digest) = generated(256, 1 << 20);
    let make = std::sync::Arc::new(make);
    let resp = client.post(format!("{}/v2/crash/blobs/uploads/", ferry.base)).send().await.unwrap();
    let location = header(&resp, "location");
    let mut uploads = Vec::new();
    for url in
        [format!("{}{location}", ferry.base), format!("{}/v2/crash/blobs/uploads/?digest={big_digest}", ferry.base)]
    {
        let m = make.clone();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(0..256).then(move |i| {
            let m = m.clone();
            async move {
                // Paced, so the kill lands mid-stream.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok::<_, std::io::Error>(m(i))
            }
        }));
        let c = client.clone();
        let monolithic = url.contains("?digest=");
        uploads.push(tokio::spawn(async move {
            if monolithic {
                c.post(url).body(body).send().await
            } else {
                c.patch(url).body(body).send().await
            }
        }));
    }
    // Wait until the chunked upload has bytes on disk, then kill.
    eventually("the chunked upload has 8 MiB on disk", std::time::Duration::from_secs(30), || async {
        let resp = client.get(format!("{}{location}", ferry.base)).send().await.unwrap();
        let end: u64 = header(&resp, "range").split('-').nth(1).unwrap().parse().unwrap();
        end > 8 << 20
    })
    .await;
    ferry.kill();
    for u in uploads {
        // Cut off: either the request failed, or it got an answer that is not success.
        if let Ok(resp) = u.await.unwrap() {
            assert!(!resp.status().is_success(), "a killed upload must not report success");
        }
    }

    let ferry = FerryProcess::start(dir.path());
    let hex = big_digest.trim_start_matches("sha256:");
    assert!(!dir.path().join("blobs/sha256").join(&hex[..2]).join(hex).exists(), "nothing stored under the digest");
    assert_eq!(snapshot(&dir.path().join("blobs")), blobs_before, "no other content changed");
    let resp = client.head(format!("{}/v2/crash/blobs/{big_digest}", ferry.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let got = client.get(format!("{}/v2/keep/manifests/v1", ferry.base)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &manifest[..]);
    let got =
        client.get(format!("{}/v2/keep/blobs/{layer_digest}", ferry.base)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &layer[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_blob_streams_in_bounded_memory() {
    const CHUNKS: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let ferry = FerryProcess::start(dir.path());
    let (make, d) = generated(CHUNKS, 1 << 20);
    let make = std::sync::Arc::new(make);
    let resp = client.post(format!("{}/v2/big/blobs/uploads/", ferry.base)).send().await.unwrap();
    let location = header(&resp, "location");
    let m = make.clone();
    let body =
        reqwest::Body::wrap_stream(futures_util::stream::iter((0..CHUNKS).map(move |i| Ok::<_, std::io::Error>(m(i)))));
    let resp = client.patch(format!("{}{location}", ferry.base)).body(body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), format!("0-{}", (CHUNKS << 20) - 1));
    let resp = client.put(format!("{}{location}?digest={d}", ferry.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let pull = |url: String| {
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            assert_eq!(header(&resp, "content-length"), (CHUNKS << 20).to_string());
            let mut h = sha2::Sha256::new();
            let mut stream = resp.bytes_stream();
            let mut n = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                n += chunk.len();
                h.update(&chunk);
            }
            assert_eq!(n, CHUNKS << 20);
            format!("sha256:{}", hex::encode(h.finalize()))
        }
    };
    assert_eq!(pull(format!("{}/v2/big/blobs/{d}", ferry.base)).await, d);
    let peak = ferry.peak_rss();
    eprintln!("peak RSS after a 1 GiB push and pull: {} MiB", peak >> 20);
    assert!(peak < 100 << 20, "peak RSS {} MiB must stay under 100 MiB", peak >> 20);

    // A second Ferry pulling the blob through from the first: a cold fill of 1 GiB (stored
    // while it streams) holds a bounded window, not the blob.
    let cache_dir = tempfile::tempdir().unwrap();
    let config = cache_dir.path().join("ferry.toml");
    std::fs::write(&config, format!("[[pull_through]]\nprefix = \"up\"\nupstream = \"{}\"\n", ferry.base)).unwrap();
    let cache = FerryProcess::start_env(&cache_dir.path().join("data"), &[("FERRY_CONFIG", config.to_str().unwrap())]);
    assert_eq!(pull(format!("{}/v2/up/big/blobs/{d}", cache.base)).await, d);
    let peak = cache.peak_rss();
    eprintln!("peak RSS after a 1 GiB cold pull through the cache: {} MiB", peak >> 20);
    assert!(peak < 150 << 20, "peak RSS {} MiB must stay under 150 MiB", peak >> 20);
    // Stored under its digest once the fill commits, just after the client got its last byte.
    let stored = cache_dir.path().join(format!("data/blobs/sha256/{}/{}", &d[7..9], &d[7..]));
    eventually("the fill commits", std::time::Duration::from_secs(60), || async { stored.exists() }).await;
    assert_eq!(std::fs::metadata(stored).unwrap().len(), (CHUNKS << 20) as u64);
}

/// A tmpfs of a given size mounted on a temporary directory (needs root, as CI has), so a test
/// can fill a disk; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_up_mid_fill_aborts_every_response_and_stores_nothing() {
    let hub = crate::upstream::RealUpstream::start();
    let client = Client::new();
    let blob = random_bytes(24 << 20, 93);
    let d = push_blob(&client, &hub.base, "team/full", &blob).await;
    let disk = SmallDisk::mount("12m");
    let data = disk.dir.path().join("data");
    let f = TestFerry::start_with(|c| {
        c.storage.data_dir = data.clone();
        c.pull_through = vec![crate::pull_through::rule("hub", &hub.base)];
    })
    .await;
    let url = f.url(&format!("/v2/hub/team/full/blobs/{d}"));
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (f.client.clone(), url.clone());
            tokio::spawn(async move {
                let resp = c.get(url).send().await.unwrap();
                let status = resp.status();
                (status, resp.bytes().await.ok())
            })
        })
        .collect();
    for p in pulls {
        let (status, body) = p.await.unwrap();
        // Storage failed half way: the response may have started, but never looks complete.
        assert!(status != StatusCode::OK || body.is_none(), "{status}, {:?} bytes", body.map(|b| b.len()));
    }
    assert!(!f.stores(&d).await);
    let leftovers: Vec<_> = std::fs::read_dir(data.join("uploads")).unwrap().collect();
    assert!(leftovers.is_empty(), "the failed fill's upload is gone: {leftovers:?}");

    // Room again: the next pull fills, serves and stores the blob.
    disk.resize("64m");
    let resp = f.client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(digest(&resp.bytes().await.unwrap()), d);
    let stored = std::fs::read(data.join(format!("blobs/sha256/{}/{}", &d[7..9], &d[7..]))).unwrap();
    assert_eq!(digest(&stored), d);
    drop(f);
}

/// A body sent in `chunk`-byte pieces, one every few milliseconds, so a kill lands mid-stream.
fn paced(data: Bytes, chunk: usize) -> reqwest::Body {
    let pieces: Vec<Bytes> =
        (0..data.len()).step_by(chunk).map(|at| data.slice(at..(at + chunk).min(data.len()))).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces).then(|p| async move {
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        Ok::<_, std::io::Error>(p)
    }))
}

/// What the campaign's clients did, to check after the last restart.
#[derive(Default)]
struct Campaign {
    /// Chunked sessions opened: location, and the whole blob the client was sending.
    sessions: Vec<(String, Bytes)>,
    /// Blobs and manifests whose push got 201: path to GET, and the bytes.
    stored: Vec<(String, Bytes)>,
}

/// One Ferry life: start on `dir`, run pushes (chunked and monolithic), manifest pushes and
/// pull-through fills at once, and `kill -9` it at a random point.
async fn one_life(
    dir: &std::path::Path,
    config: &str,
    rng: &mut Rng,
    upstream_blobs: &[(String, usize)],
    log: &Arc<Mutex<Campaign>>,
) {
    let mut ferry = FerryProcess::start_env(dir, &[("FERRY_CONFIG", config)]);
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut ops = Vec::new();
    for op in 0..4u64 {
        let (client, base, log) = (client.clone(), ferry.base.clone(), log.clone());
        let seed = rng.next_u64();
        let (fill, fill_len) = upstream_blobs[rng.below(upstream_blobs.len() as u64) as usize].clone();
        ops.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed);
            let blob = Bytes::from(random_bytes(1 + rng.below(6 << 20) as usize, seed));
            let d = digest(&blob);
            let repo = format!("campaign/op{op}");
            match (op + rng.below(4)) % 4 {
                0 => {
                    let Ok(resp) = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await else { return };
                    let location = header(&resp, "location");
                    log.lock().unwrap().sessions.push((location.clone(), blob.clone()));
                    let url = format!("{base}{location}");
                    let Ok(resp) = client.patch(&url).body(paced(blob.clone(), 256 << 10)).send().await else { return };
                    if resp.status() == StatusCode::ACCEPTED {
                        if let Ok(resp) = client.put(format!("{url}?digest={d}")).send().await {
                            if resp.status() == StatusCode::CREATED {
                                log.lock().unwrap().stored.push((format!("/v2/{repo}/blobs/{d}"), blob));
                            }
                        }
                    }
                }
                1 => {
                    let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={d}");
                    if let Ok(resp) = client.post(url).body(paced(blob.clone(), 256 << 10)).send().await {
                        if resp.status() == StatusCode::CREATED {
                            log.lock().unwrap().stored.push((format!("/v2/{repo}/blobs/{d}"), blob));
                        }
                    }
                }
                2 => {
                    let config = format!("{{\"architecture\":\"amd64\",\"seed\":{seed}}}");
                    let Ok(resp) = client.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={}", digest(config.as_bytes()))).body(config.clone()).send().await else { return };
                    if resp.status() != StatusCode::CREATED {
                        return;
                    }
                    let manifest = serde_json::to_vec(&serde_json::json!({
                        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config.as_bytes()), "size": config.len()},
                        "layers": [],
                    }))
                    .unwrap();
                    let tag = format!("t{seed}");
                    let url = format!("{base}/v2/{repo}/manifests/{tag}");
                    if let Ok(resp) = client.put(url).header("Content-Type", OCI_MANIFEST).body(manifest.clone()).send().await {
                        if resp.status() == StatusCode::CREATED {
                            log.lock().unwrap().stored.push((format!("/v2/{repo}/manifests/{tag}"), Bytes::from(manifest)));
                        }
                    }
                }
                _ => {
                    // A pull-through fill, cut wherever the kill lands; a complete body must be right.
                    let url = format!("{base}/v2/up/campaign/src/blobs/{fill}");
                    let Ok(resp) = client.get(url).send().await else { return };
                    if resp.status() == StatusCode::OK {
                        if let Ok(body) = resp.bytes().await {
                            assert!(body.len() < fill_len || digest(&body) == fill, "a fill served wrong bytes as complete");
                        }
                    }
                }
            }
        }));
    }
    // The random kill point (what varies is where it lands, not what it waits for).
    tokio::time::sleep(std::time::Duration::from_millis(rng.below(500))).await;
    ferry.kill();
    for op in ops {
        op.await.unwrap();
    }
}

/// Fifty `kill -9`s at random points during pushes and pull-through fills (seeded), each
/// followed by a restart on the same data: every digest stored re-hashes, every push that got
/// 201 is served, interrupted uploads resume or are gone, and the purge leaves no session and
/// no temporary file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_campaign_leaves_only_verified_content() {
    let seed = Rng::seed("kill_campaign_leaves_only_verified_content");
    let mut rng = Rng::new(seed);
    let upstream = crate::upstream::RealUpstream::start();
    let client = Client::new();
    let mut upstream_blobs = Vec::new();
    for i in 0..6u64 {
        let blob = random_bytes(1 + rng.below(24 << 20) as usize, seed ^ i);
        upstream_blobs.push((push_blob(&client, &upstream.base, "campaign/src", &blob).await, blob.len()));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, format!("[[pull_through]]\nprefix = \"up\"\nupstream = \"{}\"\n", upstream.base)).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let log = Arc::new(Mutex::new(Campaign::default()));
    for life in 0..50 {
        one_life(&data, &config, &mut rng, &upstream_blobs, &log).await;
        let bad = corrupt_blobs_in(&data);
        assert!(bad.is_empty(), "seed {seed} life {life}: content does not hash to its digest: {bad:?}");
    }

    let ferry = FerryProcess::start_env(&data, &[("FERRY_CONFIG", &config)]);
    let campaign = std::mem::take(&mut *log.lock().unwrap());
    for (path, bytes) in &campaign.stored {
        let got = client.get(format!("{}{path}", ferry.base)).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "seed {seed}: {path} was pushed with 201");
        assert_eq!(got.bytes().await.unwrap(), bytes, "seed {seed}: {path}");
    }
    // Interrupted sessions either resume (from what they hold) and finish, or are gone.
    let (mut resumed, mut gone) = (0, 0);
    for (location, blob) in &campaign.sessions {
        let url = format!("{}{location}", ferry.base);
        let resp = client.get(&url).send().await.unwrap();
        if resp.status() == StatusCode::NOT_FOUND {
            gone += 1;
            continue;
        }
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "seed {seed}: {location}");
        let held: usize = match header(&resp, "range").split_once('-') {
            Some(("0", "0")) => 0,
            Some((_, end)) => end.parse::<usize>().unwrap() + 1,
            None => 0,
        };
        assert!(held <= blob.len());
        let mut put = client.put(format!("{url}?digest={}", digest(blob)));
        if held < blob.len() {
            put = put.header("Content-Range", format!("{held}-{}", blob.len() - 1)).body(blob.slice(held..));
        }
        let resp = put.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "seed {seed}: {location} resumes from byte {held}");
        resumed += 1;
    }
    eprintln!("seed {seed}: {} pushes stored, {resumed} sessions resumed, {gone} gone", campaign.stored.len());
    assert!(corrupt_blobs_in(&data).is_empty());
    drop(ferry);

    // Abandoned sessions are purged; no temporary file survives.
    let purging = FerryProcess::start_env(
        &data,
        &[
            ("FERRY_CONFIG", &config),
            ("FERRY_REGISTRY_UPLOAD_MAX_IDLE", "1ms"),
            ("FERRY_REGISTRY_UPLOAD_PURGE_INTERVAL", "50ms"),
        ],
    );
    let resp = client.post(format!("{}/v2/campaign/last/blobs/uploads/", purging.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Within the purge lease's 30 s: a Ferry killed during its own purge pass held it.
    eventually("every abandoned session is purged", std::time::Duration::from_secs(45), || async {
        snapshot(&data.join("uploads")).is_empty()
    })
    .await;
    // While it runs, the purge's own lease writes pass through `tmp/`; a clean stop lets the
    // write in flight finish (renamed or removed), so nothing may be left after it.
    let mut purging = purging;
    assert!(purging.terminate().success(), "SIGTERM stops Ferry cleanly");
    assert!(snapshot(&data.join("tmp")).is_empty(), "temporary files: {:?}", snapshot(&data.join("tmp")));
}
