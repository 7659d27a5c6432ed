//! Every endpoint of the distribution API, success and failure paths, asserting status,
//! headers, error codes and bytes.

use crate::harness::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn base_endpoint_and_admin() {
    let f = TestFerry::start().await;
    let resp = f.client.get(f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-distribution-api-version"), "registry/2.0");
    for (path, want) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        let r = f.client.get(format!("{}{path}", f.admin)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
    let metrics = f.metrics().await;
    assert!(metrics.contains(r#"ferry_http_requests_total{endpoint="base",status_class="2xx"} 1"#), "{metrics}");
    assert!(metrics.contains("ferry_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn monolithic_upload_get_head_and_ranges() {
    let f = TestFerry::start().await;
    let blob = random_bytes(1000, 1);
    let d = digest(&blob);
    let resp = f
        .client
        .post(f.url(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/team/app/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d);

    let resp = f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert_eq!(header(&resp, "content-length"), "1000");
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &blob[..]);

    let resp = f.client.head(f.url(&format!("/v2/team/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), "1000");
    assert_eq!(header(&resp, "docker-content-digest"), d);

    for (range, start, end) in
        [("bytes=0-99", 0, 99), ("bytes=990-", 990, 999), ("bytes=-16", 984, 999), ("bytes=500-5000", 500, 999)]
    {
        let resp = f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).header("Range", range).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&resp, "content-range"), format!("bytes {start}-{end}/1000"));
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &blob[start..=end], "{range}");
    }
    let resp =
        f.client.get(f.url(&format!("/v2/team/app/blobs/{d}"))).header("Range", "bytes=1000-").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range"), "bytes */1000");
    assert_eq!(error_code(resp).await, "RANGE_INVALID");

    // Another repository cannot read the blob by guessing its digest.
    f.push_blob("other", b"x").await;
    let resp = f.client.get(f.url(&format!("/v2/other/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = f.client.get(f.url(&format!("/v2/nobody/blobs/{d}"))).send().await.unwrap();
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");

    // An empty blob.
    let empty = f.push_blob("team/app", b"").await;
    let resp = f.client.get(f.url(&format!("/v2/team/app/blobs/{empty}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn chunked_upload_with_progress_and_out_of_order_chunks() {
    let f = TestFerry::start().await;
    let blob = random_bytes(300_000, 2);
    let d = digest(&blob);
    let resp = f.client.post(f.url("/v2/chunky/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location");
    let uuid = header(&resp, "docker-upload-uuid");
    assert!(location.ends_with(&uuid) && location.starts_with("/v2/chunky/blobs/uploads/"));
    assert_eq!(header(&resp, "range"), "0-0");

    let resp = f
        .client
        .patch(f.url(&location))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "0-99999")
        .body(blob[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-99999");
    assert_eq!(header(&resp, "docker-upload-uuid"), uuid);

    // A chunk that does not start where the upload ends: 416 with the current range.
    for bad in ["0-99999", "200000-299999"] {
        let resp = f
            .client
            .patch(f.url(&location))
            .header("Content-Range", bad)
            .body(blob[..100_000].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(header(&resp, "range"), "0-99999");
        assert_eq!(header(&resp, "location"), location);
        assert_eq!(error_code(resp).await, "RANGE_INVALID");
    }

    // A streamed chunk with no Content-Range (Docker's way).
    let resp = f.client.patch(f.url(&location)).body(blob[100_000..200_000].to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), "0-199999");

    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), "0-199999");

    // Finish with the last chunk in the PUT.
    let resp = f
        .client
        .put(f.url(&format!("{location}?digest={d}")))
        .header("Content-Range", "200000-299999")
        .body(blob[200_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    let got = f.client.get(f.url(&format!("/v2/chunky/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), &blob[..]);
    // The session is gone.
    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn wrong_digest_stores_nothing_and_cancel_removes_session() {
    let f = TestFerry::start().await;
    let blob = random_bytes(5000, 3);
    let wrong = digest(b"something else");
    let resp = f.client.post(f.url("/v2/w/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    f.client.patch(f.url(&location)).body(blob.clone()).send().await.unwrap();
    let resp = f.client.put(f.url(&format!("{location}?digest={wrong}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    for d in [wrong.clone(), digest(&blob)] {
        let resp = f.client.head(f.url(&format!("/v2/w/blobs/{d}"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let resp = f.client.get(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Monolithic with a wrong digest.
    let resp =
        f.client.post(f.url(&format!("/v2/w/blobs/uploads/?digest={wrong}"))).body(blob.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    // Nothing under blobs/, and no session left.
    let stored = f.stored_objects().await;
    assert!(!stored.iter().any(|(k, _)| k.starts_with("blobs/") || k.starts_with("uploads/")), "{stored:?}");

    // Cancel.
    let resp = f.client.post(f.url("/v2/w/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    f.client.patch(f.url(&location)).body(blob.clone()).send().await.unwrap();
    let resp = f.client.delete(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = f.client.patch(f.url(&location)).body(blob.clone()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    // PUT without a digest.
    let resp = f.client.post(f.url("/v2/w/blobs/uploads/")).send().await.unwrap();
    let location = header(&resp, "location");
    let resp = f.client.put(f.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    // A session belongs to its repository.
    let other = location.replace("/v2/w/", "/v2/x/");
    let resp = f.client.get(f.url(&other)).send().await.unwrap();
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount() {
    let f = TestFerry::start().await;
    let d = f.push_blob("src/repo", b"shared layer").await;
    let resp =
        f.client.post(f.url(&format!("/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/dst/repo/blobs/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d);
    let got = f.client.get(f.url(&format!("/v2/dst/repo/blobs/{d}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"shared layer");
    // Not in the source: falls back to a new session.
    let missing = digest(b"absent");
    let resp = f
        .client
        .post(f.url(&format!("/v2/dst/repo/blobs/uploads/?mount={missing}&from=src/repo")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(header(&resp, "location").starts_with("/v2/dst/repo/blobs/uploads/"));
    let resp = f.client.post(f.url("/v2/dst/repo/blobs/uploads/?mount=sha256:zz&from=src/repo")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
}

#[tokio::test]
async fn manifests_put_get_head_by_tag_and_digest() {
    let f = TestFerry::start().await;
    let (manifest, d) = f.push_image("img", "v1", b"layer-bytes").await;

    let resp = f.client.get(f.url("/v2/img/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);
    assert_eq!(header(&resp, "docker-content-digest"), d);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..], "served byte-identical");

    let resp = f.client.head(f.url(&format!("/v2/img/manifests/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), manifest.len().to_string());
    assert_eq!(header(&resp, "content-type"), OCI_MANIFEST);

    // PUT by digest: Location and digest headers.
    let resp = f.put_manifest("img", &d, OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), format!("/v2/img/manifests/{d}"));
    assert_eq!(header(&resp, "docker-content-digest"), d);
    // PUT by a digest that does not match the body.
    let resp = f.put_manifest("img", &digest(b"nope"), OCI_MANIFEST, &manifest).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");

    let resp = f.client.get(f.url("/v2/img/manifests/v2")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = f.client.get(f.url("/v2/ghost/manifests/v1")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn manifest_validation() {
    let f = TestFerry::start().await;
    let config = f.push_blob("val", b"{}").await;
    let absent = digest(b"never pushed");
    let manifest = |layer: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}],
        }))
        .unwrap()
    };
    let resp = f.put_manifest("val", "t", OCI_MANIFEST, &manifest(&absent)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], absent);

    // Content-Type disagrees with mediaType.
    let resp = f.put_manifest("val", "t", DOCKER_MANIFEST, &manifest(&config)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    // Both manifests and layers.
    let both = json!({"schemaVersion": 2, "manifests": [], "layers": [], "config": {"mediaType": "x", "digest": config, "size": 2}});
    let resp = f.put_manifest("val", "t", OCI_MANIFEST, &serde_json::to_vec(&both).unwrap()).await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    // Not JSON.
    let resp = f.put_manifest("val", "t", OCI_MANIFEST, b"{not json").await;
    assert_eq!(error_code(resp).await, "MANIFEST_INVALID");
    // Too large: 413 before it is stored.
    let mut big = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 4 * 1024 * 1024));
    big.extend_from_slice(b"\"}");
    let resp = f.put_manifest("val", "big", OCI_MANIFEST, &big).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(resp).await, "SIZE_INVALID");
    // None of those created a tag.
    let tags: serde_json::Value = f.client.get(f.url("/v2/val/tags/list")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tags["tags"], json!([]));
    // Schema 1 is checked as schema 1 (its layers must be in the repository), then stored and
    // served byte-identical.
    let layer = f.push_blob("val", b"schema 1 layer").await;
    let s1 = |blob_sum: &str| {
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 1, "name": "val", "tag": "old", "architecture": "amd64",
            "fsLayers": [{"blobSum": blob_sum}], "history": [{"v1Compatibility": "{}"}],
            "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", "protected": "cHJvdA"}],
        }))
        .unwrap()
    };
    let ct = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    let resp = f.put_manifest("val", "old", ct, &s1(&layer)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = f.client.get(f.url("/v2/val/manifests/old")).send().await.unwrap();
    assert_eq!(header(&resp, "content-type"), ct);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &s1(&layer)[..]);
    let resp = f.put_manifest("val", "old2", ct, &s1(&absent)).await;
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn indexes_and_docker_manifest_lists() {
    let f = TestFerry::start().await;
    let (_, amd) = f.push_image("multi", "amd", b"amd64 layer").await;
    let (_, arm) = f.push_image("multi", "arm", b"arm64 layer").await;
    let absent = digest(b"no such manifest");
    for (mt, child_mt) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, OCI_MANIFEST)] {
        let index = |second: &str| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": mt,
                "manifests": [
                    {"mediaType": child_mt, "digest": amd, "size": 1, "platform": {"architecture": "amd64", "os": "linux"}},
                    {"mediaType": child_mt, "digest": second, "size": 1, "platform": {"architecture": "arm64", "os": "linux"}},
                ],
            }))
            .unwrap()
        };
        let resp = f.put_manifest("multi", "latest", mt, &index(&absent)).await;
        assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN", "{mt}");
        let body = index(&arm);
        let resp = f.put_manifest("multi", "latest", mt, &body).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{mt}");
        let resp = f.client.get(f.url("/v2/multi/manifests/latest")).send().await.unwrap();
        assert_eq!(header(&resp, "content-type"), mt);
        assert_eq!(header(&resp, "docker-content-digest"), digest(&body));
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[..]);
    }
}

#[tokio::test]
async fn artifacts_and_referrers() {
    let f = TestFerry::start().await;
    let (_, subject) = f.push_image("art", "v1", b"image layer").await;
    let empty = f.push_blob("art", b"{}").await;
    let sig_blob = f.push_blob("art", b"signature").await;
    let artifact = |artifact_type: &str, n: u32| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": sig_blob, "size": 9}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 100},
            "annotations": {"n": n.to_string()},
        }))
        .unwrap()
    };
    let sig = artifact("application/vnd.example.signature", 1);
    let sbom = artifact("application/vnd.example.sbom", 2);
    for body in [&sig, &sbom] {
        let resp = f.put_manifest("art", &digest(body), OCI_MANIFEST, body).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "oci-subject"), subject);
    }
    let resp = f.client.get(f.url(&format!("/v2/art/referrers/{subject}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), OCI_INDEX);
    assert!(header(&resp, "oci-filters-applied").is_empty());
    let index: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);
    let mut found: Vec<String> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect();
    found.sort();
    let mut want = vec![digest(&sig), digest(&sbom)];
    want.sort();
    assert_eq!(found, want);
    let entry = index["manifests"].as_array().unwrap().iter().find(|m| m["digest"] == digest(&sig)).unwrap();
    assert_eq!(entry["artifactType"], "application/vnd.example.signature");
    assert_eq!(entry["size"], sig.len());
    assert_eq!(entry["annotations"]["n"], "1");

    let resp = f
        .client
        .get(f.url(&format!("/v2/art/referrers/{subject}?artifactType=application/vnd.example.sbom")))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "oci-filters-applied"), "artifactType");
    let index: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["digest"], digest(&sbom));

    // No referrers: an empty index, not 404.
    let resp = f.client.get(f.url(&format!("/v2/art/referrers/{}", digest(b"lonely")))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let index: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(index["manifests"], json!([]));

    // Deleting a referrer removes it from the list.
    let resp = f.client.delete(f.url(&format!("/v2/art/manifests/{}", digest(&sig)))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let index: serde_json::Value =
        f.client.get(f.url(&format!("/v2/art/referrers/{subject}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tag_list_and_catalog_pagination() {
    let f = TestFerry::start().await;
    let (manifest, _) = f.push_image("pages/a", "seed", b"l").await;
    for tag in ["b", "a", "d", "c", "e"] {
        let resp = f.put_manifest("pages/a", tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let resp = f.client.get(f.url("/v2/pages/a/tags/list")).send().await.unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"name": "pages/a", "tags": ["a", "b", "c", "d", "e", "seed"]}));

    let resp = f.client.get(f.url("/v2/pages/a/tags/list?n=2")).send().await.unwrap();
    assert_eq!(header(&resp, "link"), "</v2/pages/a/tags/list?n=2&last=b>; rel=\"next\"");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let resp = f.client.get(f.url("/v2/pages/a/tags/list?n=2&last=b")).send().await.unwrap();
    assert_eq!(header(&resp, "link"), "</v2/pages/a/tags/list?n=2&last=d>; rel=\"next\"");
    let resp = f.client.get(f.url("/v2/pages/a/tags/list?n=2&last=e")).send().await.unwrap();
    assert!(header(&resp, "link").is_empty());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], json!(["seed"]));
    // A huge n is clamped, never used to size anything.
    let resp = f.client.get(f.url("/v2/pages/a/tags/list?n=18446744073709551615")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    for repo in ["pages/c", "pages/b", "zeta"] {
        f.push_blob(repo, b"x").await;
    }
    let v: serde_json::Value = f.client.get(f.url("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["repositories"], json!(["pages/a", "pages/b", "pages/c", "zeta"]));
    let resp = f.client.get(f.url("/v2/_catalog?n=3")).send().await.unwrap();
    assert_eq!(header(&resp, "link"), "</v2/_catalog?n=3&last=pages%2Fc>; rel=\"next\"");
    let v: serde_json::Value =
        f.client.get(f.url("/v2/_catalog?n=3&last=pages%2Fc")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["repositories"], json!(["zeta"]));
    let resp = f.client.get(f.url("/v2/ghost/tags/list")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn deletes() {
    let f = TestFerry::start().await;
    let (manifest, d) = f.push_image("del", "v1", b"layer").await;
    f.put_manifest("del", "v2", OCI_MANIFEST, &manifest).await;
    // By tag: only the tag goes.
    let resp = f.client.delete(f.url("/v2/del/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(f.client.get(f.url("/v2/del/manifests/v1")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(f.client.get(f.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(f.client.get(f.url("/v2/del/manifests/v2")).send().await.unwrap().status(), StatusCode::OK);
    // By digest: the manifest and every tag on it.
    let resp = f.client.delete(f.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        f.client.get(f.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let resp = f.client.get(f.url("/v2/del/manifests/v2")).send().await.unwrap();
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = f.client.delete(f.url(&format!("/v2/del/manifests/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Blobs.
    let b = f.push_blob("del", b"blob to delete").await;
    let resp = f.client.delete(f.url(&format!("/v2/del/blobs/{b}"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = f.client.get(f.url(&format!("/v2/del/blobs/{b}"))).send().await.unwrap();
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");

    // Deletes turned off.
    let f = TestFerry::start_with(|c| c.registry.delete_enabled = false).await;
    let (_, d) = f.push_image("keep", "v1", b"layer").await;
    for path in [format!("/v2/keep/manifests/{d}"), "/v2/keep/manifests/v1".into()] {
        let resp = f.client.delete(f.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(resp).await, "UNSUPPORTED");
    }
    assert_eq!(f.client.get(f.url("/v2/keep/manifests/v1")).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn http2_cleartext_and_metrics_by_endpoint() {
    let f = TestFerry::start().await;
    let (manifest, _) = f.push_image("h2", "v1", b"layer").await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.get(f.url("/v2/h2/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);
    let m = f.metrics().await;
    assert!(m.contains(r#"ferry_http_requests_total{endpoint="manifest_get",status_class="2xx"} 1"#), "{m}");
    assert!(m.contains(r#"ferry_http_requests_total{endpoint="manifest_put",status_class="2xx"} 1"#));
    assert!(m.contains(&format!(r#"ferry_http_sent_bytes_total{{endpoint="manifest_get"}} {}"#, manifest.len())));
    assert!(
        m.contains(r#"ferry_http_received_bytes_total{endpoint="upload_start"} 42"#),
        "config (37) + layer (5): {m}"
    );
}

#[tokio::test]
async fn tls_with_rustls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = dir.path().join("ca.pem");
    let sh = format!(
        "set -e; cd {d}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=test-ca -keyout ca.key -out ca.pem; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ext; \
         openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out cert.pem",
        d = dir.path().display()
    );
    let status =
        std::process::Command::new("sh").args(["-c", &sh]).stderr(std::process::Stdio::null()).status().unwrap();
    assert!(status.success());
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let f = TestFerry::start_with(|cfg| {
        cfg.tls.cert = c;
        cfg.tls.key = k;
    })
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let addr = f.server.as_ref().unwrap().addr;
    let resp = client.get(format!("https://localhost:{}/v2/", addr.port())).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN negotiates h2");
    // Plain HTTP on a TLS port does not get served.
    assert!(f.client.get(f.url("/v2/")).send().await.is_err());
}
