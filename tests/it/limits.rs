//! Bounded resources under hostile clients: stalled request bodies are cut off and give their
//! permits back, the in-flight gauge counts exactly the permits held, one client address cannot
//! take every permit or open upload sessions without end, a client that stops reading a
//! response is disconnected, and a manifest naming one layer 25,000 times costs one lookup.

use crate::harness::*;
use ferry::config::HumanDuration;
use reqwest::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `server` from the loopback address `from` (127.0.0.x: Linux routes the
/// whole 127/8 to lo), so a test can be several clients.
pub async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Sends a request head that announces `announced` body bytes, then `sent` of them, then
/// nothing: the connection stays open and silent.
async fn stall(from: &str, server: SocketAddr, method: &str, path: &str, announced: usize, sent: usize) -> TcpStream {
    let mut s = connect_from(from, server).await;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Length: {announced}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    s
}

/// One whole request over a fresh connection from `from`; returns (status, body).
async fn request_from(from: &str, server: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = connect_from(from, server).await;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

async fn in_flight(f: &TestFerry) -> f64 {
    metric(&f.metrics().await, "ferry_http_requests_in_flight")
}

async fn new_session(f: &TestFerry, repo: &str) -> String {
    let resp = f.client.post(f.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    header(&resp, "location")
}

/// Finding 5 and 8: four clients announce a body, send 10 bytes and go silent. While they hold
/// the four permits the gauge says 4 and others get 429; once `body_read_timeout` passes they
/// get 408, their permits come back, and everyone is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_are_cut_off_and_give_their_permits_back() {
    let f = TestFerry::start_with(|c| {
        c.server.max_in_flight_requests = 4;
        c.server.body_read_timeout = HumanDuration(Duration::from_secs(2));
    })
    .await;
    let addr = f.server.as_ref().unwrap().addr;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let location = new_session(&f, &format!("stall/s{i}")).await;
        stalled.push(stall("127.0.0.1", addr, "PATCH", &location, 1_000_000, 10).await);
    }
    eventually("the four stalled requests hold the four permits", Duration::from_secs(10), || async {
        in_flight(&f).await == 4.0
    })
    .await;
    let resp = f.client.get(f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(metric(&f.metrics().await, "ferry_http_requests_rejected_total") >= 1.0);
    assert_eq!(in_flight(&f).await, 4.0, "a refused request is not counted in flight");
    // The body timeout frees them: each stalled client gets 408 and its connection closes.
    for mut s in stalled {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("BLOB_UPLOAD_INVALID"), "{text}");
    }
    eventually("every permit is back", Duration::from_secs(10), || async { in_flight(&f).await == 0.0 }).await;
    let resp = f.client.get(f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// A stalled manifest body is cut off the same way.
#[tokio::test]
async fn stalled_manifest_body_gets_408() {
    let f = TestFerry::start_with(|c| c.server.body_read_timeout = HumanDuration(Duration::from_millis(500))).await;
    let addr = f.server.as_ref().unwrap().addr;
    let mut s = stall("127.0.0.1", addr, "PUT", "/v2/slow/manifests/v1", 4000, 10).await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

/// One client address cannot take every permit: past its share it gets 429 while another
/// client is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_permit() {
    let f = TestFerry::start_with(|c| {
        c.server.max_in_flight_requests = 16;
        c.server.max_in_flight_per_client = 2;
    })
    .await;
    let addr = f.server.as_ref().unwrap().addr;
    let _a = stall("127.0.0.2", addr, "PUT", "/v2/greedy/manifests/a", 4000, 1).await;
    let _b = stall("127.0.0.2", addr, "PUT", "/v2/greedy/manifests/b", 4000, 1).await;
    eventually("the greedy client holds its two permits", Duration::from_secs(10), || async {
        in_flight(&f).await == 2.0
    })
    .await;
    let (status, body) = request_from("127.0.0.2", addr, "GET", "/v2/").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("this client"), "{body}");
    let (status, _) = request_from("127.0.0.3", addr, "GET", "/v2/").await;
    assert_eq!(status, 200, "another client is served");
}

/// Upload sessions per client address: past the limit, 429; others may still open sessions,
/// and a cancelled session frees its place.
#[tokio::test]
async fn one_client_cannot_open_upload_sessions_without_end() {
    let f = TestFerry::start_with(|c| c.server.max_uploads_per_client = 2).await;
    let from =
        |ip: &str| reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let (greedy, other) = (from("127.0.0.2"), from("127.0.0.3"));
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let resp = greedy.post(f.url("/v2/many/blobs/uploads/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        sessions.push(header(&resp, "location"));
    }
    let resp = greedy.post(f.url("/v2/many/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    let resp = other.post(f.url("/v2/many/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "another client is not affected");
    // A monolithic upload opens no lasting session, so it is not limited.
    let d = push_blob(&greedy, &f.base, "many", b"monolithic").await;
    assert!(d.starts_with("sha256:"));
    let resp = greedy.delete(f.url(&sessions[0])).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = greedy.post(f.url("/v2/many/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "a cancelled session frees its place");
}

/// A client that asks for a blob and stops reading is disconnected after `send_timeout`, and
/// its permit comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let f = TestFerry::start_with(|c| c.server.send_timeout = HumanDuration(Duration::from_secs(1))).await;
    let blob = random_bytes(64 << 20, 91);
    let d = f.push_blob("unread", &blob).await;
    let addr = f.server.as_ref().unwrap().addr;
    let mut s = connect_from("127.0.0.1", addr).await;
    let head = format!("GET /v2/unread/blobs/{d} HTTP/1.1\r\nHost: registry\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    eventually("the unread download holds a permit", Duration::from_secs(10), || async { in_flight(&f).await == 1.0 })
        .await;
    eventually("the stalled connection is cut and its permit returned", Duration::from_secs(20), || async {
        in_flight(&f).await == 0.0
    })
    .await;
    // What is left to read ends well short of the blob: the connection was closed.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.len() < blob.len(), "{} bytes arrived", rest.len());
}

/// Finding 6: 16 concurrent PUTs of a 4 MiB manifest listing one layer 25,000 times. Each
/// distinct reference is looked up once, so they are quick, and Ferry's memory stays within a
/// small multiple of the bodies (the time is in the soak bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_references_to_one_layer_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(dir.path());
    let client = reqwest::Client::new();
    let config = push_blob(&client, &ferry.base, "amp", br#"{"architecture":"amd64","os":"linux"}"#).await;
    let layer = push_blob(&client, &ferry.base, "amp", b"one layer").await;
    let manifest = amplifying_manifest(&config, &layer, 25_000);
    assert!(manifest.len() > 3 << 20 && manifest.len() <= 4 << 20, "{}", manifest.len());
    let puts: Vec<_> = (0..16)
        .map(|i| {
            let (client, url, body) =
                (client.clone(), format!("{}/v2/amp/manifests/t{i}", ferry.base), manifest.clone());
            tokio::spawn(async move {
                client.put(url).header("Content-Type", OCI_MANIFEST).body(body).send().await.unwrap().status()
            })
        })
        .collect();
    for p in puts {
        assert_eq!(p.await.unwrap(), StatusCode::CREATED);
    }
    let peak = ferry.peak_rss();
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
}

/// An OCI manifest listing `layer` `n` times (25,000 entries come near the 4 MiB limit).
pub fn amplifying_manifest(config: &str, layer: &str, n: usize) -> Vec<u8> {
    let entry = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 9,
    });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
        "layers": vec![entry; n],
    }))
    .unwrap()
}
