//! What survives a restart, what a crash or a full disk leaves behind, and memory that does not
//! grow with blob size. Most run Ferry as a separate process so it can be stopped and killed.

use crate::harness::*;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::Digest as _;

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
    loop {
        let resp = client.get(format!("{}{location}", ferry.base)).send().await.unwrap();
        let range = header(&resp, "range");
        let end: u64 = range.split('-').nth(1).unwrap().parse().unwrap();
        if end > 8 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !stored.exists() {
        assert!(std::time::Instant::now() < deadline, "the fill never committed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
