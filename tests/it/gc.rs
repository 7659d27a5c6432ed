//! Garbage collection: deleting images frees their space (and a dry run frees nothing), the
//! usage it measures matches what is stored, collections racing pushes, pulls and deletes on
//! two replicas never lose content a manifest references, and a collector killed mid-run
//! leaves everything consistent and its lease to a successor. Runs on the filesystem, and on
//! S3 (moto) in CI's S3 pass.

use crate::harness::*;
use ferry::config::{Config, HumanDuration};
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Content stored under `blobs/`: (key, size).
async fn stored_content(f: &TestFerry) -> Vec<(String, u64)> {
    f.stored_objects().await.into_iter().filter(|(k, _)| k.starts_with("blobs/")).collect()
}

fn with_grace(config: &Config, grace: Duration) -> Config {
    let mut c = config.clone();
    c.gc.grace = HumanDuration(grace);
    c
}

async fn gc(config: &Config, grace: Duration) -> ferry::gc::GcReport {
    ferry::collect_garbage(&with_grace(config, grace), false, &|_| {}).await.expect("gc runs")
}

/// An image of `layers` plus a config unique to `tag`, pushed as docker does: a layer the
/// repository already has (HEAD 200) is not sent again. The manifest PUT's status, the
/// manifest's digest and every digest it references.
pub async fn push(
    client: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    layers: &[Vec<u8>],
) -> (StatusCode, String, Vec<String>) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","image":"{repo}:{tag}"}}"#).into_bytes();
    let mut descriptors = Vec::new();
    let mut digests = Vec::new();
    for blob in std::iter::once(&config).chain(layers.iter()) {
        let d = digest(blob);
        let head = client.head(format!("{base}/v2/{repo}/blobs/{d}")).send().await.unwrap();
        if head.status() != StatusCode::OK {
            push_blob(client, base, repo, blob).await;
        }
        descriptors.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": blob.len()}),
        );
        digests.push(d);
    }
    let config_descriptor = descriptors.remove(0);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_descriptor["digest"], "size": config_descriptor["size"]},
        "layers": descriptors,
    }))
    .unwrap();
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    (resp.status(), digest(&manifest), digests)
}

/// Pulls an image by tag and re-hashes every blob it names.
async fn pull_and_verify(client: &Client, base: &str, repo: &str, tag: &str, expected: &str, blobs: &[String]) {
    let resp =
        client.get(format!("{base}/v2/{repo}/manifests/{tag}")).header("Accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag}");
    assert_eq!(digest(&resp.bytes().await.unwrap()), expected, "{repo}:{tag}");
    for d in blobs {
        let resp = client.get(format!("{base}/v2/{repo}/blobs/{d}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{repo}:{tag} lost {d}");
        assert_eq!(&digest(&resp.bytes().await.unwrap()), d, "{repo}:{tag} {d} does not hash");
    }
}

async fn delete_manifest(client: &Client, base: &str, repo: &str, manifest: &str) {
    let resp = client.delete(format!("{base}/v2/{repo}/manifests/{manifest}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_images_frees_their_space_and_a_dry_run_frees_nothing() {
    let f = TestFerry::start_with(|c| c.gc.enabled = false).await;
    let (c, base) = (&f.client, f.base.as_str());
    let shared = random_bytes(1 << 20, 1);
    let (x_layer, y_layer) = (random_bytes(2 << 20, 2), random_bytes(2 << 20, 3));
    let (status, x, x_blobs) = push(c, base, "team/x", "v1", &[shared.clone(), x_layer.clone()]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, y, y_blobs) = push(c, base, "team/y", "v1", &[shared.clone(), y_layer]).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = stored_content(&f).await;
    assert_eq!(before.len(), 7, "2 configs, 3 layers, 2 manifests");

    // Nothing is garbage yet.
    let report = gc(&f.config, Duration::ZERO).await;
    assert_eq!((report.objects_removed, report.links_removed), (0, 0), "{report:?}");

    // Delete x: its config, its own layer and its manifest become garbage; the shared layer
    // stays for y. A dry run says so and removes nothing.
    delete_manifest(c, base, "team/x", &x).await;
    let dry = ferry::collect_garbage(&with_grace(&f.config, Duration::ZERO), true, &|_| {}).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.objects_removed, dry.links_removed), (3, 3), "{dry:?}");
    let size_of = |d: &str| before.iter().find(|(k, _)| *k == blob_key(d)).map(|o| o.1).unwrap();
    // x_blobs: its config, the shared layer, its own layer.
    assert_eq!(dry.bytes_removed, size_of(&x) + size_of(&x_blobs[0]) + size_of(&x_blobs[2]));
    assert_eq!(stored_content(&f).await, before, "a dry run removes nothing");

    let report = gc(&f.config, Duration::ZERO).await;
    assert_eq!((report.objects_removed, report.links_removed), (3, 3), "{report:?}");
    assert!(!f.stores(&x_blobs[2]).await && !f.stores(&x).await && !f.stores(&x_blobs[0]).await);
    assert!(f.stores(&x_blobs[1]).await, "the shared layer stays for y");
    pull_and_verify(c, base, "team/y", "v1", &y, &y_blobs).await;
    // x's blobs are no longer served from x.
    let resp = c.get(format!("{base}/v2/team/x/blobs/{}", x_blobs[2])).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // What the run measured is what is stored, and every replica's metrics say it.
    let stored = stored_content(&f).await;
    let measured: u64 = report.stored.values().map(|u| u.bytes).sum();
    assert_eq!(measured, stored.iter().map(|o| o.1).sum::<u64>());
    assert_eq!(report.stored.values().map(|u| u.objects).sum::<u64>(), stored.len() as u64);
    let mut f = f;
    f.config.gc.enabled = true;
    f.restart().await;
    let want = report.stored["blob"].bytes as f64;
    eventually("the usage gauges", Duration::from_secs(10), || {
        let f = &f;
        async move { metric_sum(&f.metrics().await, "ferry_storage_stored_bytes", &["kind=\"blob\""]) == want }
    })
    .await;

    // Delete y's whole repository (ECR's DeleteRepository, forced): one more collection and
    // no content is left at all.
    let resp = f
        .client
        .post(f.url("/"))
        .header("X-Amz-Target", "AmazonEC2ContainerRegistry_V20150921.DeleteRepository")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(r#"{"repositoryName":"team/y","force":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{:?}", resp.text().await);
    let report = gc(&f.config, Duration::ZERO).await;
    assert_eq!(report.objects_removed, 4, "{report:?}");
    assert!(stored_content(&f).await.is_empty(), "{:?}", stored_content(&f).await);
}

/// An accepted image: repository, tag, manifest digest, the digests it names.
type Pushed = (String, String, String, Vec<String>);

/// Two replicas on one store take 200 pushes of images that share layers, with deletes of
/// earlier images mixed in, while collections with a one-second grace period run back to
/// back. Every image whose manifest was accepted and not deleted then pulls whole from both
/// replicas, also after one more collection; deleting everything leaves no content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_pushes_and_deletes_on_two_replicas_never_lose_referenced_content() {
    let grace = Duration::from_secs(1);
    let a = TestFerry::start_with(move |c| {
        c.gc.enabled = false;
        c.gc.grace = HumanDuration(grace);
    })
    .await;
    let storage = a.config.storage.clone();
    let b = TestFerry::start_with(move |c| {
        c.gc.enabled = false;
        c.gc.grace = HumanDuration(grace);
        c.storage = storage;
    })
    .await;
    let bases = [a.base.clone(), b.base.clone()];
    // Many base layers over few images per repository: a layer's last use in a repository is
    // often more than the grace period old when a delete leaves its link dangling and the
    // next push there relies on that link (HEAD 200, not sent again) — the race that matters.
    let base_layers: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(16 << 10, 100 + i)).collect();
    let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();
    let deleted = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));

    // Collections back to back, from a third party (as `ferry gc` beside the servers).
    let collector = {
        let (config, done, runs) = (a.config.clone(), done.clone(), runs.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                match ferry::collect_garbage(&config, false, &|_| {}).await {
                    Ok(_) => runs.fetch_add(1, Ordering::SeqCst),
                    Err(e) => panic!("gc failed: {e}"),
                };
            }
        })
    };

    let client = Client::new();
    let retried = AtomicUsize::new(0);
    futures_util::stream::iter(0..200u64)
        .for_each_concurrent(8, |i| {
            let (client, bases, base_layers, pushed, deleted, retried) =
                (&client, &bases, &base_layers, pushed.clone(), deleted.clone(), &retried);
            async move {
                let base = &bases[(i % 2) as usize];
                let repo = format!("stress/r{}", i % 20);
                let tag = format!("t{i}");
                let own = random_bytes(8 << 10, 1000 + i);
                let layers = vec![
                    base_layers[(i % 40) as usize].clone(),
                    base_layers[((i / 20 + 7 * i) % 40) as usize].clone(),
                    own,
                ];
                // A manifest refused because a collector took a layer it named is pushed again,
                // as docker would.
                for attempt in 0.. {
                    let (status, manifest, blobs) = push(client, base, &repo, &tag, &layers).await;
                    if status == StatusCode::CREATED {
                        pushed.lock().unwrap().push((repo.clone(), tag.clone(), manifest, blobs));
                        break;
                    }
                    assert_eq!(status, StatusCode::BAD_REQUEST, "only MANIFEST_BLOB_UNKNOWN may refuse it");
                    assert!(attempt < 5, "{repo}:{tag} refused 5 times");
                    retried.fetch_add(1, Ordering::SeqCst);
                }
                // Every third push deletes an earlier image of the same repository.
                if i % 3 == 2 {
                    let victim = pushed.lock().unwrap().iter().find(|p| p.0 == repo && p.1 != tag).cloned();
                    if let Some((repo, tag, manifest, _)) = victim {
                        if deleted.lock().unwrap().insert(tag.clone()) {
                            delete_manifest(client, base, &repo, &manifest).await;
                        }
                    }
                }
            }
        })
        .await;
    done.store(true, Ordering::SeqCst);
    collector.await.unwrap();
    assert!(runs.load(Ordering::SeqCst) >= 2, "collections ran during the pushes");

    let live: Vec<_> = {
        let deleted = deleted.lock().unwrap();
        pushed.lock().unwrap().iter().filter(|p| !deleted.contains(&p.1)).cloned().collect()
    };
    assert!(live.len() >= 100, "{} images live", live.len());
    for (repo, tag, manifest, blobs) in &live {
        for base in &bases {
            pull_and_verify(&client, base, repo, tag, manifest, blobs).await;
        }
    }
    // Quiet now: a collection with no grace at all still keeps every referenced blob.
    let report = gc(&a.config, Duration::ZERO).await;
    for (repo, tag, manifest, blobs) in &live {
        pull_and_verify(&client, &bases[1], repo, tag, manifest, blobs).await;
    }
    assert!(a.corrupt_blobs().await.is_empty());
    eprintln!(
        "{} collections during 200 pushes ({} manifests pushed again); the last removed {} objects",
        runs.load(Ordering::SeqCst),
        retried.load(Ordering::SeqCst),
        report.objects_removed
    );

    // Everything deleted: one collection and no content is left.
    for (repo, _, manifest, _) in &live {
        delete_manifest(&client, &bases[0], repo, manifest).await;
    }
    gc(&a.config, Duration::ZERO).await;
    assert!(stored_content(&a).await.is_empty(), "{:?}", stored_content(&a).await);
}

/// `ferry gc` killed with SIGKILL while it removes thousands of unreferenced blobs: what is
/// referenced still pulls, its lease keeps others out until it lapses, then a collector takes
/// it over and finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_mid_run_leaves_everything_consistent_and_its_lease_is_taken_over() {
    let f = TestFerry::start_with(|c| c.gc.enabled = false).await;
    let (c, base) = (&f.client, f.base.as_str());
    let (status, kept, kept_blobs) = push(c, base, "keep/app", "v1", &[random_bytes(64 << 10, 7)]).await;
    assert_eq!(status, StatusCode::CREATED);
    // Enough that a run takes seconds: thousands on disk, fewer on moto (each removal there is
    // several requests to a Python server).
    let junk: u64 = if f.s3.is_some() { 800 } else { 3000 };
    let junk_digests: Vec<String> = (0..junk).map(|i| digest(&i.to_le_bytes())).collect();
    futures_util::stream::iter(0..junk)
        .for_each_concurrent(16, |i| async move {
            push_blob(c, base, "junk/blobs", &i.to_le_bytes()).await;
        })
        .await;
    let before = stored_content(&f).await.len();
    assert_eq!(before as u64, junk + 3);
    // The sweep goes in digest order: the first junk blob to go is the lowest.
    let first = junk_digests.iter().min().unwrap().clone();

    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("gc.toml");
    std::fs::write(&config_file, toml::to_string(&with_grace(&f.config, Duration::ZERO)).unwrap()).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["gc", "--config"])
        .arg(&config_file)
        .stdout(std::fs::File::create(dir.path().join("gc.out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("gc.err")).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard::new(child);
    // Killed as soon as the sweep has removed content, long before it could finish.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if !f.has_object(&blob_key(&first)).await {
            child.child().kill().unwrap();
            break;
        }
        if child.child().try_wait().unwrap().is_some() {
            let said = std::fs::read_to_string(dir.path().join("gc.err")).unwrap_or_default();
            let out = std::fs::read_to_string(dir.path().join("gc.out")).unwrap_or_default();
            panic!("ferry gc ended before it was killed:\n{said}\n{out}");
        }
        assert!(std::time::Instant::now() < deadline, "ferry gc removed nothing within 5 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = child.child().wait();
    let left = stored_content(&f).await.len();
    assert!(left > 3, "killed mid-run, with garbage left ({left} objects)");
    pull_and_verify(c, base, "keep/app", "v1", &kept, &kept_blobs).await;

    // Its lease has not lapsed: another collector stays out.
    let held = ferry::collect_garbage(&with_grace(&f.config, Duration::ZERO), false, &|_| {}).await;
    assert!(held.unwrap_err().to_string().contains("lease"));
    // Past the lease (and any claim it left), a successor takes over and finishes.
    let clock = ferry::clock::ManualClock::new();
    clock.advance(ferry::gc::LEASE_TTL + Duration::from_secs(60));
    let report =
        ferry::collect_garbage_with_clock(&with_grace(&f.config, Duration::ZERO), false, Arc::new(clock), &|_| {})
            .await
            .expect("the lease is taken over");
    assert!(report.objects_removed > 0);
    assert_eq!(stored_content(&f).await.len(), 3, "only the kept image is left");
    pull_and_verify(c, base, "keep/app", "v1", &kept, &kept_blobs).await;
    assert!(f.corrupt_blobs().await.is_empty());
}
