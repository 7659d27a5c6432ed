//! Malformed requests: each gets the right OCI error and status, and none changes storage.
//! Sent over a raw TCP connection so paths reach Ferry exactly as written (no client-side
//! normalisation of `..`).

use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one raw HTTP/1.1 request and returns (status, body).
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Method, path, headers, body, expected status, expected OCI code.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16, &'a str);

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let f = TestFerry::start().await;
    let addr = f.server.as_ref().unwrap().addr;
    let blob = f.push_blob("a", b"0123456789").await;
    let resp = f.client.post(f.url("/v2/a/blobs/uploads/")).send().await.unwrap();
    let session = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = f.client.patch(f.url(&session)).header("Content-Range", "0-9").body("0123456789").send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let before = f.stored_objects().await;
    assert!(before.iter().any(|(k, _)| k.starts_with("blobs/")), "the listing sees this backend's content: {before:?}");

    let good = digest(b"x");
    let random_session = "/v2/a/blobs/uploads/6f1c2d3e-4b5a-4c6d-8e7f-901234567890";
    let long_name = format!("/v2/{}/tags/list", "a".repeat(256));
    let long_tag = format!("/v2/a/manifests/{}", "t".repeat(129));
    let upper = format!("/v2/a/blobs/sha256:{}", "A".repeat(64));
    let big = vec![b' '; 5 * 1024 * 1024];
    let unknown_blob_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": good, "size": 1}, "layers": []
    }))
    .unwrap();
    let bad_descriptor = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:../../etc","size":1}]}"#;
    let put_session_bad_digest = format!("{session}?digest=sha256:zz");
    let put_unknown = format!("{random_session}?digest={good}");
    let blob_path = format!("/v2/a/blobs/{blob}");
    let mono_bad = "/v2/a/blobs/uploads/?digest=sha256:zz".to_owned();
    let referrers_bad = "/v2/a/referrers/sha256:bad".to_owned();
    let oci_ct = [("Content-Type", OCI_MANIFEST)];

    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("GET", "/v2/Upper/tags/list", vec![], b"", 400, "NAME_INVALID"),
        ("GET", "/v2/a/../b/tags/list", vec![], b"", 400, "NAME_INVALID"),
        ("GET", "/v2/%2e%2e/%2e%2e/etc/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", vec![], b"", 400, "NAME_INVALID"),
        ("PUT", "/v2/a//b/manifests/latest", vec![], b"{}", 400, "NAME_INVALID"),
        ("GET", &long_name, vec![], b"", 400, "NAME_INVALID"),
        ("GET", "/v2/a/blobs/sha256:abc", vec![], b"", 400, "DIGEST_INVALID"),
        ("GET", "/v2/a/blobs/md5:abcd", vec![], b"", 400, "DIGEST_INVALID"),
        ("GET", &upper, vec![], b"", 400, "DIGEST_INVALID"),
        // Only a PUT names a reference to create; a GET of one that cannot exist is a 404.
        ("GET", "/v2/a/manifests/-tag", vec![], b"", 404, "MANIFEST_UNKNOWN"),
        ("GET", &long_tag, vec![], b"", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/a/manifests/.INVALID_MANIFEST_NAME", vec![], b"", 404, "MANIFEST_UNKNOWN"),
        ("PUT", "/v2/a/manifests/-tag", oci_ct.to_vec(), b"{}", 400, "TAG_INVALID"),
        ("PUT", &long_tag, oci_ct.to_vec(), b"{}", 400, "TAG_INVALID"),
        ("PATCH", &session, vec![("Content-Range", "0-18446744073709551615")], b"", 416, "RANGE_INVALID"),
        ("POST", &mono_bad, vec![], b"data", 400, "DIGEST_INVALID"),
        ("PATCH", "/v2/a/blobs/uploads/not-a-uuid", vec![], b"data", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", random_session, vec![], b"data", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", &put_unknown, vec![], b"x", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", &put_session_bad_digest, vec![], b"", 400, "DIGEST_INVALID"),
        ("GET", &blob_path, vec![("Range", "bytes=z-y")], b"", 416, "RANGE_INVALID"),
        ("GET", &blob_path, vec![("Range", "bytes=5000-")], b"", 416, "RANGE_INVALID"),
        ("PATCH", &session, vec![("Content-Range", "garbage")], b"abc", 416, "RANGE_INVALID"),
        ("PATCH", &session, vec![("Content-Range", "5-7")], b"abc", 416, "RANGE_INVALID"),
        ("PATCH", &session, vec![("Content-Range", "10-19")], b"abc", 400, "SIZE_INVALID"),
        ("PUT", "/v2/a/manifests/t", oci_ct.to_vec(), b"{not json", 400, "MANIFEST_INVALID"),
        ("PUT", "/v2/a/manifests/t", vec![("Content-Type", "text/plain")], br#"{"schemaVersion":2,"manifests":[]}"#, 400, "MANIFEST_INVALID"),
        ("PUT", "/v2/a/manifests/t", oci_ct.to_vec(), &big, 413, "SIZE_INVALID"),
        ("PUT", "/v2/a/manifests/t", oci_ct.to_vec(), &unknown_blob_manifest, 400, "MANIFEST_BLOB_UNKNOWN"),
        ("PUT", "/v2/a/manifests/t", vec![], bad_descriptor, 400, "MANIFEST_INVALID"),
        ("GET", "/v2/_catalog?n=abc", vec![], b"", 400, "PAGINATION_NUMBER_INVALID"),
        ("GET", "/v2/a/tags/list?n=-1", vec![], b"", 400, "PAGINATION_NUMBER_INVALID"),
        ("POST", "/v2/a/manifests/latest", vec![], b"", 405, "UNSUPPORTED"),
        ("GET", &referrers_bad, vec![], b"", 400, "DIGEST_INVALID"),
        ("GET", "/v3/", vec![], b"", 404, "UNSUPPORTED"),
        ("GET", "/v2/a/blobs/uploads/../../../../etc/passwd", vec![], b"", 404, "UNSUPPORTED"),
    ];
    assert!(cases.len() >= 20);
    for (method, path, headers, body, status, code) in cases {
        let (got_status, got_body) = raw(addr, method, path, &headers, body).await;
        assert_eq!(got_status, status, "{method} {path}: {got_body}");
        let v: serde_json::Value = serde_json::from_str(&got_body)
            .unwrap_or_else(|_| panic!("{method} {path}: OCI error JSON, got {got_body:?}"));
        assert_eq!(v["errors"][0]["code"], code, "{method} {path}: {got_body}");
        assert!(v["errors"][0]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: a message");
    }
    assert_eq!(f.stored_objects().await, before, "malformed requests changed storage");
    // The session is still usable and still holds its 10 bytes.
    let resp = f.client.get(f.url(&session)).send().await.unwrap();
    assert_eq!(resp.headers()["range"], "0-9");
}
