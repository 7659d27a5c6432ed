//! Property tests of every parser that takes client bytes, on stable Rust with a fixed budget:
//! names, tags, references, digests, request lines and manifests never panic, accept only what
//! their grammar allows, and every refusal is an OCI error. Last, random requests against a
//! running Ferry: never a server error, always OCI error JSON. (The unit tests of
//! `src/http/handlers.rs` cover `Range`, `Content-Range` and query strings the same way.)

use crate::harness::*;
use ferry::http::endpoint::Endpoint;
use ferry::oci::{Digest, Manifest, Reference, RepositoryName, Tag};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Strings close to the grammars (so many parse) mixed with arbitrary ones (so many do not).
fn namelike() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/-]{0,80}",
        "([a-z0-9]+([._]|__|-+)?){1,4}(/[a-z0-9]+([._]|__|-+)?[a-z0-9]*){0,4}",
        ".{0,80}",
        "[%./A-Za-z0-9:]{0,40}",
    ]
}

fn digestlike() -> impl Strategy<Value = String> {
    prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}", "[a-z0-9+._-]{0,10}:[0-9a-fA-F]{0,130}", ".{0,140}",]
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn repository_names_follow_the_grammar(s in namelike()) {
        if let Ok(name) = RepositoryName::parse(&s) {
            prop_assert_eq!(name.as_str(), s.as_str());
            prop_assert!(s.len() <= 255 && !s.is_empty());
            prop_assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)));
        }
    }

    #[test]
    fn tags_follow_the_grammar(s in prop_oneof!["[A-Za-z0-9_][A-Za-z0-9._-]{0,140}", ".{0,140}"]) {
        if let Ok(tag) = Tag::parse(&s) {
            prop_assert_eq!(tag.as_str(), s.as_str());
            prop_assert!(s.len() <= 128);
            prop_assert!(!s.starts_with('.') && !s.starts_with('-'));
        }
    }

    #[test]
    fn digests_and_references_round_trip(s in digestlike()) {
        if let Ok(d) = Digest::parse(&s) {
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        if let Ok(r) = Reference::parse(&s) {
            prop_assert_eq!(r.to_string(), s);
        }
    }

    /// Any method and path: an endpoint whose parts passed their grammars, or an OCI error
    /// that is a client error.
    #[test]
    fn request_lines_parse_or_are_refused(
        method in prop_oneof![Just("GET"), Just("HEAD"), Just("PUT"), Just("POST"), Just("PATCH"), Just("DELETE"), Just("OPTIONS")],
        path in prop_oneof![
            "/v2/[a-z0-9/._%-]{0,60}/(blobs|manifests|tags|referrers)/[a-z0-9:._%-]{0,80}",
            "/v2/[a-z0-9/._-]{0,40}/blobs/uploads/[0-9a-f-]{0,40}",
            "/v2/.{0,80}",
            ".{0,80}",
        ],
    ) {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let (path, query) = path.split_once('?').map_or((path.as_str(), None), |(p, q)| (p, Some(q)));
        match Endpoint::parse(&method, path, &ferry::http::endpoint::Query::parse(query)) {
            Ok(ep) => {
                prop_assert!(!ep.name().is_empty());
                if let Some(name) = ep.repository() {
                    prop_assert!(RepositoryName::parse(name.as_str()).is_ok());
                }
            }
            Err(e) => {
                prop_assert!((400..500).contains(&e.status), "{} {}: {}", method, path, e.status);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

/// A JSON value of bounded size and depth.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        digestlike().prop_map(serde_json::Value::from),
        "(application/vnd\\.(oci|docker)\\.[a-z.]{0,30}(\\+json)?)|.{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("schemaVersion".to_owned()),
                    Just("mediaType".to_owned()),
                    Just("config".to_owned()),
                    Just("layers".to_owned()),
                    Just("manifests".to_owned()),
                    Just("subject".to_owned()),
                    Just("digest".to_owned()),
                    Just("size".to_owned()),
                    Just("urls".to_owned()),
                    Just("fsLayers".to_owned()),
                    Just("blobSum".to_owned()),
                    Just("history".to_owned()),
                    Just("signatures".to_owned()),
                    Just("name".to_owned()),
                    Just("tag".to_owned()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config(3000))]

    /// Any document under any manifest Content-Type: no panic; an accepted one has a media
    /// type Ferry serves and references only digests it could parse.
    #[test]
    fn manifests_parse_or_are_refused(
        doc in json_value(),
        content_type in proptest::option::of(prop_oneof![
            Just("application/vnd.oci.image.manifest.v1+json"),
            Just("application/vnd.oci.image.index.v1+json"),
            Just("application/vnd.docker.distribution.manifest.v2+json"),
            Just("application/vnd.docker.distribution.manifest.list.v2+json"),
            Just("application/vnd.docker.distribution.manifest.v1+json"),
            Just("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            Just("application/json"),
            Just("text/plain"),
        ]),
    ) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Ok(m) = Manifest::parse(&bytes, content_type) {
            prop_assert!(m.media_type.as_str().starts_with("application/vnd."));
            if m.media_type.is_index() {
                prop_assert!(m.blobs.is_empty());
            } else {
                prop_assert!(m.children.is_empty());
            }
        }
    }

    /// Arbitrary bytes, and deeply nested JSON, as a manifest: refused without a panic or a
    /// stack overflow.
    #[test]
    fn arbitrary_bytes_as_a_manifest(bytes in prop::collection::vec(any::<u8>(), 0..512), depth in 0usize..5000) {
        let _ = Manifest::parse(&bytes, None);
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        prop_assert!(Manifest::parse(nested.as_bytes(), Some("application/vnd.oci.image.manifest.v1+json")).is_err());
    }
}

/// Random request lines and headers against a running Ferry over raw TCP: never a server
/// error, and every refusal is OCI error JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_get_a_server_error() {
    let f = TestFerry::start().await;
    f.push_image("fz/app", "v1", b"fuzz layer").await;
    let addr = f.server.as_ref().unwrap().addr;
    let mut runner = proptest::test_runner::TestRunner::new(config(300));
    let method = prop_oneof![Just("GET"), Just("HEAD"), Just("PUT"), Just("POST"), Just("PATCH"), Just("DELETE")];
    let path = prop_oneof![
        "/v2/fz/app/(blobs|manifests|tags|referrers)/[a-z0-9:._%-]{0,70}",
        "/v2/fz/app/blobs/uploads/[0-9a-f-]{0,40}(\\?digest=[a-z0-9:]{0,70})?",
        "/v2/fz/app/blobs/uploads/(\\?(mount|from|digest)=[a-z0-9:/]{0,70}){0,3}",
        "/v2/(_catalog|fz/app/tags/list)(\\?n=[0-9-]{0,22}&last=[a-z]{0,5})?",
        "/v2/[a-zA-Z0-9/._%:-]{0,60}",
    ];
    let header = prop_oneof![
        "Range: bytes=[0-9-]{0,25}",
        "Content-Range: [0-9-]{0,45}",
        "Content-Type: application/vnd\\.[a-z.]{0,40}\\+json",
        "Accept: [a-z/.+*,]{0,40}",
    ];
    let body = prop::collection::vec(any::<u8>(), 0..64);
    let strategy = (method, path, prop::collection::vec(header, 0..3), body);
    let mut cases = Vec::new();
    for _ in 0..300 {
        cases.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for (method, path, headers, body) in cases {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n");
        for h in &headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let status: u16 = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((100..500).contains(&status), "{method} {path} {headers:?}: {text}");
        if status >= 400 && method != "HEAD" {
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            let v: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
            assert!(v["errors"][0]["code"].is_string(), "{method} {path}: {text}");
        }
    }
    assert!(f.corrupt_blobs().await.is_empty());
}
