//! Integrity under every interleaving: a seeded race harness over upload sessions, and each
//! way a hostile client once broke "bytes served under a digest hash to it", as its own
//! regression test with the exact request sequence. Runs on the filesystem and (with
//! `FERRY_TEST_BACKEND=s3`) on S3.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// What one racing request did: its description and status.
type Outcome = (String, u16);

/// One round: a session holding the first chunk, then several tasks sending PATCHes (in and
/// out of order, with and without `Content-Range`, junk), finishes (with and without a last
/// chunk, claiming the digest of some prefix), cancels and status requests with random delays.
/// Returns the digests whose finish got 201, after checking that no request failed with a
/// server error and at most one finish succeeded.
async fn race_round(f: &TestFerry, seed: u64, round: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(seed ^ round.wrapping_mul(0x1000_0001));
    let repo = format!("race/r{round}");
    let n = 2 + rng.below(3) as usize;
    let chunks: Vec<Vec<u8>> =
        (0..n).map(|i| random_bytes(1 + rng.below(2 << 20) as usize, seed ^ (round << 8) ^ i as u64)).collect();
    let mut offsets = vec![0usize];
    for c in &chunks {
        offsets.push(offsets.last().unwrap() + c.len());
    }
    let whole: Vec<u8> = chunks.concat();
    // The digest of each prefix of whole chunks: what a finisher may claim.
    let prefixes: Vec<(String, Vec<u8>)> =
        (1..=n).map(|k| (digest(&whole[..offsets[k]]), whole[..offsets[k]].to_vec())).collect();

    let resp = f.client.post(f.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location");
    patch_chunks(&f.client, &f.base, &location, &whole, &[(0, offsets[1])]).await;

    let shared = Arc::new((chunks, offsets, prefixes.clone(), location));
    // No pooled connections: a connection the server closed after answering early must not
    // be reused for the next request and fail it.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let (client, base, shared) = (client.clone(), f.base.clone(), shared.clone());
        let mut rng = Rng::new(seed ^ (round << 16) ^ (t + 1));
        tasks.push(tokio::spawn(async move {
            let (chunks, offsets, prefixes, location) = &*shared;
            let url = format!("{base}{location}");
            let mut outcomes: Vec<Outcome> = Vec::new();
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_micros(rng.below(4000))).await;
                let i = rng.below(chunks.len() as u64) as usize;
                let range = format!("{}-{}", offsets[i], offsets[i + 1] - 1);
                let (what, resp) = match rng.below(10) {
                    0..=3 => (
                        format!("PATCH chunk {i} at {range}"),
                        client.patch(&url).header("Content-Range", &range).body(chunks[i].clone()).send().await,
                    ),
                    4 => (format!("PATCH chunk {i} unranged"), client.patch(&url).body(chunks[i].clone()).send().await),
                    5 => (
                        "PATCH junk".to_owned(),
                        client.patch(&url).body(random_bytes(144, rng.next_u64())).send().await,
                    ),
                    6 | 7 => {
                        let k = rng.below(prefixes.len() as u64) as usize;
                        (format!("PUT prefix {k}"), client.put(format!("{url}?digest={}", prefixes[k].0)).send().await)
                    }
                    8 => (
                        format!("PUT prefix {i} with chunk {i} at {range}"),
                        client
                            .put(format!("{url}?digest={}", prefixes[i].0))
                            .header("Content-Range", &range)
                            .body(chunks[i].clone())
                            .send()
                            .await,
                    ),
                    _ if rng.below(3) == 0 => ("DELETE".to_owned(), client.delete(&url).send().await),
                    _ => ("GET status".to_owned(), client.get(&url).send().await),
                };
                outcomes.push((what, resp.map(|r| r.status().as_u16()).unwrap_or(0)));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap());
    }
    for (what, status) in &outcomes {
        // 0: the connection closed while the client was still sending a body. A server may
        // answer (here 404 or 416) before reading a body; it then closes the connection, and
        // a client still writing may see the reset before the answer.
        let sends_a_body = what.starts_with("PATCH") || what.contains("with chunk");
        assert!(
            [201, 202, 204, 400, 404, 416].contains(status) || (*status == 0 && sends_a_body),
            "seed {seed} round {round}: {what} answered {status}: {outcomes:?}"
        );
    }
    let finished: Vec<&Outcome> = outcomes.iter().filter(|(_, s)| *s == 201).collect();
    assert!(finished.len() <= 1, "seed {seed} round {round}: one session finished twice: {outcomes:?}");
    // Which prefix did the successful finish claim? Any whose blob the repository now serves.
    let mut stored = Vec::new();
    if !finished.is_empty() {
        for (d, bytes) in &prefixes {
            let resp = f.client.get(f.url(&format!("/v2/{repo}/blobs/{d}"))).send().await.unwrap();
            if resp.status() == StatusCode::OK {
                let got = resp.bytes().await.unwrap();
                assert_eq!(digest(&got), *d, "seed {seed} round {round}: served bytes do not hash to the digest");
                assert_eq!(got.as_ref(), &bytes[..]);
                stored.push((format!("/v2/{repo}/blobs/{d}"), bytes.clone()));
            }
        }
        assert_eq!(stored.len(), 1, "seed {seed} round {round}: the finished blob is served: {outcomes:?}");
    }
    stored
}

/// The race harness: rounds of interleaved PATCH, finish, cancel and status on one session;
/// after every round every digest stored re-hashes, and again after a restart (hot tier empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_requests_on_one_session_never_store_a_wrong_digest() {
    let seed = Rng::seed("racing_requests_on_one_session_never_store_a_wrong_digest");
    let mut f = TestFerry::start().await;
    let mut served = Vec::new();
    for round in 0..24 {
        served.extend(race_round(&f, seed, round).await);
        eprintln!("round {round}: {} finished", served.len());
        let bad = f.corrupt_blobs().await;
        assert!(bad.is_empty(), "seed {seed} round {round}: stored content does not hash to its digest: {bad:?}");
    }
    f.restart().await;
    let bad = f.corrupt_blobs().await;
    assert!(bad.is_empty(), "seed {seed}: after a restart: {bad:?}");
    for (path, bytes) in served {
        let got = f.client.get(f.url(&path)).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(got.as_ref(), &bytes[..], "seed {seed}: {path} after a restart");
    }
}

/// Finding 1: a PATCH racing an upload's finish once appended to the file being committed.
/// The finish re-reads 64 MiB here (its running hash died with the restart), a long window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_racing_the_finish_never_reaches_the_blob() {
    let mut f = TestFerry::start().await;
    let data = random_bytes(64 << 20, 81);
    let d = digest(&data);
    let resp = f.client.post(f.url("/v2/racy/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    patch_chunks(&f.client, &f.base, &location, &data, &[(0, data.len())]).await;
    f.restart().await;
    let finish = {
        let (client, url) = (f.client.clone(), f.url(&format!("{location}?digest={d}")));
        tokio::spawn(async move { client.put(url).send().await.unwrap().status() })
    };
    let mut patches = Vec::new();
    loop {
        let resp = f.client.patch(f.url(&location)).body(vec![b'!'; 144]).send().await.unwrap();
        patches.push(resp.status().as_u16());
        if finish.is_finished() {
            break;
        }
    }
    let finished = finish.await.unwrap();
    let after = f.client.patch(f.url(&location)).body(vec![b'!'; 144]).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::NOT_FOUND, "a finished session takes no more bytes");
    assert_eq!(error_code(after).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(patches.iter().all(|s| [202, 404].contains(s)), "{patches:?}");
    match finished {
        // The finish went first: every PATCH was refused, and the blob is exactly the data.
        StatusCode::CREATED => {
            assert!(patches.iter().all(|s| *s == 404), "a PATCH got in after the finish began: {patches:?}");
            let got = f.client.get(f.url(&format!("/v2/racy/blobs/{d}"))).send().await.unwrap();
            assert_eq!(header(&got, "content-length"), data.len().to_string());
            assert_eq!(digest(&got.bytes().await.unwrap()), d);
        }
        // A PATCH went first: the upload no longer hashes to D, and nothing is stored under it.
        StatusCode::BAD_REQUEST => {
            assert!(patches.contains(&202), "{patches:?}");
            assert!(!f.stores(&d).await);
        }
        other => panic!("the finish answered {other}; PATCHes: {patches:?}"),
    }
    assert!(f.corrupt_blobs().await.is_empty());
}

/// Finding 3: two finishes of one session at once: one stores the blob, the others are told the
/// session is gone (not "storage failed, try again").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_finishes_of_one_session_store_once() {
    let f = TestFerry::start().await;
    let data = random_bytes(8 << 20, 82);
    let d = digest(&data);
    let resp = f.client.post(f.url("/v2/twice/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    patch_chunks(&f.client, &f.base, &location, &data, &[(0, data.len())]).await;
    let finishes: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (f.client.clone(), f.url(&format!("{location}?digest={d}")));
            tokio::spawn(async move {
                let resp = client.put(url).send().await.unwrap();
                let status = resp.status();
                let code = if status.is_success() { String::new() } else { error_code(resp).await };
                (status, code)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in finishes {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, c)| *s == StatusCode::CREATED || (*s == StatusCode::NOT_FOUND && c == "BLOB_UPLOAD_UNKNOWN")),
        "{results:?}"
    );
    let metrics = f.metrics().await;
    assert_eq!(metric_sum(&metrics, "ferry_storage_errors_total", &[]), 0.0, "nothing failed in storage");
    let got = f.client.get(f.url(&format!("/v2/twice/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(digest(&got), d);
}

/// Finding 2: content under a digest that does not hash to it (here written behind Ferry's
/// back, as the race once did) is replaced by the real content when it is pushed, and never
/// served: a manifest whose bytes are wrong, or a blob whose length is, is refused with an
/// error instead of a 200 with the wrong body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_that_does_not_hash_to_its_digest_is_replaced_or_refused() {
    let mut f = TestFerry::start().await;
    let config = f.push_blob("victim", br#"{"architecture":"amd64","os":"linux"}"#).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
        "layers": [],
    }))
    .unwrap();
    let d = digest(&manifest);
    let mut poisoned = manifest.clone();
    poisoned.extend_from_slice(b"attacker's bytes");
    f.write_raw(&blob_key(&d), &poisoned).await;
    let resp = f.put_manifest("victim", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    f.restart().await;
    let resp = f.client.get(f.url("/v2/victim/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..], "the pushed manifest replaced the poison");
    assert!(f.corrupt_blobs().await.is_empty());

    // Damaged after it was stored: refused, never served.
    f.write_raw(&blob_key(&d), &poisoned).await;
    let layer = random_bytes(6 << 20, 83);
    let l = f.push_blob("victim", &layer).await;
    let mut longer = layer.clone();
    longer.extend_from_slice(b"more");
    f.write_raw(&blob_key(&l), &longer).await;
    let small = f.push_blob("victim", b"a small blob").await;
    f.write_raw(&blob_key(&small), b"a small blob, changed").await;
    f.restart().await;
    for path in
        ["/v2/victim/manifests/v1".to_owned(), format!("/v2/victim/blobs/{l}"), format!("/v2/victim/blobs/{small}")]
    {
        let resp = f.client.get(f.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(error_code(resp).await, "UNKNOWN", "{path}");
    }
}

/// Finding 4: an index carrying layers, sent under a schema 1 Content-Type (the
/// CVE-2021-41190 pattern), is refused like the same body sent as an index.
#[tokio::test]
async fn schema1_content_type_does_not_smuggle_an_index() {
    let f = TestFerry::start().await;
    let never = digest(b"never pushed");
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": never, "size": 10}],
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": never, "size": 10}],
    }))
    .unwrap();
    f.push_blob("smuggle", b"so the repository exists").await;
    for ct in [
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        OCI_INDEX,
    ] {
        let resp = f.put_manifest("smuggle", "evil", ct, &body).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(error_code(resp).await, "MANIFEST_INVALID", "{ct}");
    }
    let resp = f.client.get(f.url("/v2/smuggle/manifests/evil")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(!f.stores(&digest(&body)).await);
}

/// Finding 7: a `Content-Range` whose length overflows, and chunk bodies longer or shorter
/// than their `Content-Range`, are refused and change nothing.
#[tokio::test]
async fn content_ranges_are_checked_arithmetic() {
    let f = TestFerry::start().await;
    let resp = f.client.post(f.url("/v2/ranges/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let resp = f
        .client
        .patch(f.url(&location))
        .header("Content-Range", "0-18446744073709551615")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(resp).await, "RANGE_INVALID");
    // Chunked bodies (no Content-Length for the server to hold them to).
    for (range, len) in [("0-9", 20usize), ("0-9", 5)] {
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            bytes::Bytes::from(vec![7u8; len]),
        )]));
        let resp = f.client.patch(f.url(&location)).header("Content-Range", range).body(body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{range} with {len} bytes");
        assert_eq!(error_code(resp).await, "BLOB_UPLOAD_INVALID");
    }
    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Nothing of the longer chunk was stored; the shorter one's 5 bytes arrived before it ended.
    assert!(["0-0", "0-4"].contains(&header(&resp, "range").as_str()), "{}", header(&resp, "range"));
}

/// Finding 10: a manifest GET or HEAD by a reference that cannot exist is a 404; only a PUT
/// checks the tag grammar. A mount without `from` mounts what the registry holds.
#[tokio::test]
async fn spec_points_invalid_references_and_mounts_without_from() {
    let f = TestFerry::start().await;
    f.push_image("spec", "v1", b"layer").await;
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp =
            f.client.request(method.clone(), f.url("/v2/spec/manifests/.INVALID_MANIFEST_NAME")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method}");
        if method == reqwest::Method::GET {
            assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
        }
    }
    let resp = f.put_manifest("spec", ".INVALID_MANIFEST_NAME", OCI_MANIFEST, b"{}").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "TAG_INVALID");

    let d = f.push_blob("spec/source", b"held by another repository").await;
    let resp = f.client.post(f.url(&format!("/v2/spec/dest/blobs/uploads/?mount={d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/spec/dest/blobs/{d}"));
    let got = f.client.get(f.url(&format!("/v2/spec/dest/blobs/{d}"))).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"held by another repository");
    let absent = digest(b"held by nobody");
    let resp = f.client.post(f.url(&format!("/v2/spec/dest/blobs/uploads/?mount={absent}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(header(&resp, "location").starts_with("/v2/spec/dest/blobs/uploads/"));
}
