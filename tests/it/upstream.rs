//! Upstream registries for the pull-through tests: Debian's `docker-registry` (the CNCF
//! reference registry) on loopback, and a fault-injecting upstream.
//!
//! The fault-injecting upstream is a fake, written here because no real registry can fail on
//! purpose: drop a connection mid-blob, send wrong bytes, answer 500 or 429, trickle, or hold a
//! blob half-sent until the test releases it. Everything else uses the real registry.

use crate::harness::{free_port, wait_for_port, ChildGuard};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `docker-registry` process on a loopback port, with its data in a temporary directory.
pub struct RealUpstream {
    child: Option<ChildGuard>,
    pub port: u16,
    pub base: String,
    pub host: String,
    dir: tempfile::TempDir,
    extra: String,
}

impl RealUpstream {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts with extra YAML appended to the config (e.g. an `auth:` section).
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut u = Self {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            dir,
            extra: extra.to_owned(),
        };
        u.run();
        u
    }

    fn run(&mut self) {
        let config = self.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: \"127.0.0.1:{}\"}}\n{}",
                self.dir.path().join("data").display(),
                self.port,
                self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.access_log()).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        self.child = Some(ChildGuard::new(child));
        wait_for_port(self.port, Duration::from_secs(20));
    }

    /// Where the registry writes one line per request.
    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// How many `METHOD path` requests the upstream has logged (waiting up to 5 s for at least `at_least`).
    pub fn requests(&self, method: &str, path: &str, at_least: usize) -> usize {
        let needle = format!("\"{method} {path} HTTP/1.1\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = std::fs::read_to_string(self.access_log())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&needle))
                .count();
            if n >= at_least || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Restarts on the same port and data with different extra YAML.
    pub fn restart_with(&mut self, extra: &str) {
        self.extra = extra.to_owned();
        self.restart();
    }

    /// Starts again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

/// What the fake upstream does when asked for a path.
#[derive(Clone)]
pub enum Fault {
    /// Serve these bytes.
    Serve(Bytes),
    /// Send `Content-Length` of the whole, half the bytes, then drop the connection.
    DropMidway(Bytes),
    /// Answer this status (with `Retry-After` when given) the next `times` requests, then serve.
    Status { status: u16, retry_after: Option<u64>, times: usize, then: Bytes },
    /// Send the bytes in `chunk`-sized pieces, `delay_ms` apart.
    Trickle { bytes: Bytes, chunk: usize, delay_ms: u64 },
    /// Send the first half, then wait for the gate before the rest.
    Gate { bytes: Bytes, gate: Arc<tokio::sync::Notify> },
}

/// The fault-injecting upstream: a hyper server on a loopback port (see the module doc).
#[derive(Clone)]
pub struct FakeUpstream {
    pub base: String,
    routes: Arc<Mutex<HashMap<String, (Fault, String)>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

impl FakeUpstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Self {
            base: format!("http://{addr}"),
            routes: Arc::new(Mutex::new(HashMap::new())),
            hits: Arc::new(Mutex::new(HashMap::new())),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, std::convert::Infallible>(f.answer(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        fake
    }

    /// Sets what `GET/HEAD path` does, with the `Content-Type` to send.
    pub fn route(&self, path: &str, fault: Fault, content_type: &str) {
        self.routes.lock().unwrap().insert(path.to_owned(), (fault, content_type.to_owned()));
    }

    /// How many GETs `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn answer(&self, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        let path = req.uri().path().to_owned();
        let head = req.method() == hyper::Method::HEAD;
        if !head {
            *self.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        }
        let full = |b: Bytes| Full::new(b).map_err(|never| match never {}).boxed_unsync();
        let route = {
            let mut routes = self.routes.lock().unwrap();
            let entry = routes.get_mut(&path).map(|(fault, ct)| {
                let current = fault.clone();
                if let Fault::Status { times, then, .. } = fault {
                    if *times <= 1 {
                        *fault = Fault::Serve(then.clone());
                    } else {
                        *times -= 1;
                    }
                }
                (current, ct.clone())
            });
            entry
        };
        let Some((fault, content_type)) = route else {
            let status = if path == "/v2/" { 200 } else { 404 };
            return hyper::Response::builder().status(status).body(full(Bytes::from_static(b"{}"))).unwrap();
        };
        let digest = crate::harness::digest;
        let builder = |len: usize, b: &Bytes| {
            hyper::Response::builder()
                .header("Content-Type", content_type.clone())
                .header("Content-Length", len)
                .header("Docker-Content-Digest", digest(b))
        };
        if head {
            let b = match &fault {
                Fault::Serve(b)
                | Fault::DropMidway(b)
                | Fault::Gate { bytes: b, .. }
                | Fault::Trickle { bytes: b, .. } => b.clone(),
                Fault::Status { then, .. } => then.clone(),
            };
            return builder(b.len(), &b).body(full(Bytes::new())).unwrap();
        }
        match fault {
            Fault::Serve(b) => builder(b.len(), &b).body(full(b)).unwrap(),
            Fault::Status { status, retry_after, .. } => {
                let mut r = hyper::Response::builder().status(status);
                if let Some(s) = retry_after {
                    r = r.header("Retry-After", s.to_string());
                }
                r.body(full(Bytes::from_static(b"{\"errors\":[]}"))).unwrap()
            }
            Fault::DropMidway(b) => {
                let half = b.slice(..b.len() / 2);
                let s = futures_util::stream::iter(vec![
                    Ok(Frame::data(half)),
                    Err(std::io::Error::other("dropped on purpose")),
                ]);
                builder(b.len(), &b).body(StreamBody::new(s).boxed_unsync()).unwrap()
            }
            Fault::Trickle { bytes, chunk, delay_ms } => {
                let pieces: Vec<Bytes> =
                    (0..bytes.len()).step_by(chunk).map(|i| bytes.slice(i..(i + chunk).min(bytes.len()))).collect();
                let s = futures_util::StreamExt::then(futures_util::stream::iter(pieces), move |p| async move {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    Ok::<_, std::io::Error>(Frame::data(p))
                });
                builder(bytes.len(), &bytes).body(StreamBody::new(s).boxed_unsync()).unwrap()
            }
            Fault::Gate { bytes, gate } => {
                let (first, rest) = (bytes.slice(..bytes.len() / 2), bytes.slice(bytes.len() / 2..));
                let s = futures_util::StreamExt::then(
                    futures_util::stream::iter(vec![(first, None), (rest, Some(gate))]),
                    |(p, g)| async move {
                        if let Some(g) = g {
                            g.notified().await;
                        }
                        Ok::<_, std::io::Error>(Frame::data(p))
                    },
                );
                builder(bytes.len(), &bytes).body(StreamBody::new(s).boxed_unsync()).unwrap()
            }
        }
    }
}
