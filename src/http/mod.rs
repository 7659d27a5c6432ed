//! The HTTP edge: listeners (plain, h2c, TLS), limits, graceful shutdown, the request pipeline
//! (parse, `admission`, handler, count, log, audit), the ECR API's framing (`api`), the admin
//! listener and console, and turning errors into OCI error responses. The only module that
//! knows hyper; owns no business rule.

mod admin;
mod admission;
mod api;
mod console;
pub mod endpoint;
mod error;
mod handlers;
pub mod limits;

use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::oci::OciError;
use crate::registry::Registry;
use crate::storage::ByteStream;
use bytes::Bytes;
use endpoint::Endpoint;
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Every response body: empty, whole, or streamed.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What every request handler shares.
pub struct App {
    /// The registry service.
    pub registry: Arc<Registry>,
    /// Replication's records (the registry policy a replication is decided by; statuses).
    pub replication: Arc<crate::replication::store::ReplicationStore>,
    /// The audit trail.
    pub audit: Arc<crate::events::Audit>,
    /// The pull-through rules created through the API.
    pub rules: Arc<crate::proxy::rules::RuleStore>,
    /// ECR's registry-wide settings.
    pub account: Arc<crate::registry::settings::AccountStore>,
    /// Lifecycle policy previews.
    pub previews: Arc<crate::lifecycle::previews::Previews>,
    /// The one place that decides what a request may do.
    pub authorizer: Arc<crate::auth::authorizer::Authorizer>,
    /// The background workers and what each did last (shown on the console).
    pub workers: crate::worker::Workers,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Requests in flight, globally and per client (a permit lives until the response body ends).
    pub limits: limits::RequestLimits,
    /// Open upload sessions per client.
    pub uploads: limits::UploadLimits,
    /// How long a request body may deliver no byte before it is cut off.
    pub body_read_timeout: Duration,
    /// The header naming the client's address when Ferry is behind a proxy (right-most entry).
    pub client_address_header: Option<http::HeaderName>,
    /// Whether start-up finished and shutdown has not begun, for `/readyz`.
    pub ready: watch::Receiver<bool>,
    /// Access control, when `[auth] enabled`.
    pub auth: Option<AuthState>,
    /// Whether the registry listener speaks TLS (`aws:SecureTransport`).
    pub tls: bool,
    /// `UploadLayerPart` bodies decoded and stored at once (signed requests only); a request
    /// past them is throttled, and clients retry.
    pub layer_parts: Arc<tokio::sync::Semaphore>,
    /// ECR API bodies read before their signature could be checked, per client and in total.
    pub unverified: Arc<limits::UnverifiedBodies>,
}

/// What the edge needs when access control is on.
pub struct AuthState {
    /// Who a request is from.
    pub authenticator: Arc<crate::auth::authenticator::Authenticator>,
    /// The account id in ARNs.
    pub registry_id: String,
    /// The region in ARNs.
    pub region: String,
    /// The public URL for `WWW-Authenticate`; empty: from the request's `Host`.
    pub public_url: String,
    /// Which challenge clients without credentials get.
    pub challenge: crate::config::Challenge,
}

impl App {
    /// The client's address: the peer's, or the right-most entry of the configured header
    /// (the one the trusted proxy in front of Ferry appended).
    pub fn client_address<B>(&self, peer: SocketAddr, req: &Request<B>) -> std::net::IpAddr {
        self.client_address_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer.ip())
    }
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of bytes already in memory.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// A streamed body.
pub fn stream(s: ByteStream) -> Body {
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

/// Renders an OCI error as a response.
pub fn error_response(e: &OciError) -> Response<Body> {
    let body = e.to_body();
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(full(Bytes::from(body)))
        .unwrap_or_default();
    for (name, value) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(*name, v);
        }
    }
    resp
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Serves one registry request: limit, parse, dispatch, count, log.
pub async fn serve_request(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = app.client_address(peer, &req);
    // The ECR API takes its permit itself, once the request's signature checked out.
    if api::is_api(&req) {
        let http1 = req.version() < http::Version::HTTP_2;
        let (name, mut resp, guard, body_read) = api::serve(&app, req, client).await;
        if http1 && !body_read {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return Ok(finish(&app, name, &method, &path, started, resp, guard));
    }
    let guard = match app.limits.admit(client) {
        Ok(g) => g,
        Err(why) => {
            app.metrics.http.rejected.inc();
            app.limits.log_refusal(client, why);
            let message = match why {
                limits::Refusal::Global => "too many requests in flight; retry shortly",
                limits::Refusal::Client => "too many requests in flight from this client; retry shortly",
            };
            let e = OciError::new(crate::oci::ErrorCode::Toomanyrequests, message).with_header("Retry-After", "1");
            return Ok(error_response(&e));
        }
    };
    if path == admission::TOKEN_PATH {
        let resp = admission::token_endpoint(&app, req, client).await;
        return Ok(finish(&app, "token", &method, &path, started, resp, Some(guard)));
    }
    let query = endpoint::Query::parse(req.uri().query());
    let http1 = req.version() < http::Version::HTTP_2;
    let body_read = Arc::new(std::sync::atomic::AtomicBool::new(req.body().is_end_stream()));
    let mut audit = None;
    let (endpoint_name, result) = match Endpoint::parse(&method, &path, &query) {
        Ok(ep) => {
            let name = ep.name();
            // Recorded whatever their outcome; anything else only when refused.
            let recorded = ep.mutates() || (matches!(ep, Endpoint::ManifestGet(..)) && app.audit.records_pulls());
            let mut who = String::new();
            let admitted = match admission::authenticate(&app, &req, client).await {
                Ok(authenticated) => {
                    let arn = principal_arn(&authenticated.principal);
                    let admitted = admission::admit(&app, authenticated, &ep, &query, client, &req).await;
                    if recorded || admitted.is_err() {
                        who = arn;
                    }
                    admitted
                }
                Err(e) => {
                    who = "unauthenticated".into();
                    Err(e)
                }
            };
            let denied = admitted.is_err();
            // The ping a client makes before it logs in is refused by design: not worth a line.
            if recorded || (denied && !matches!(ep, Endpoint::Base)) {
                audit = Some((ep.audited(&query), who, denied, name));
            }
            match admitted {
                Ok(admitted) => {
                    let input = handlers::Input::new(&app, client, &ep, query, req, body_read.clone(), admitted);
                    (name, handlers::handle(&app, ep, input).await)
                }
                Err(e) => (name, Err(e)),
            }
        }
        Err(e) => ("invalid", Err(e)),
    };
    if let Some(audit) = audit {
        record_audit(&app, client, audit, &result);
    }
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                if e.source == crate::oci::ErrorSource::Storage {
                    app.metrics.http.storage_errors.with_label_values(&[endpoint_name]).inc();
                }
                tracing::warn!(endpoint = endpoint_name, %method, path, code = ?e.code, source = e.source.as_str(), error = %e.message, "request failed");
            } else {
                tracing::debug!(endpoint = endpoint_name, %method, path, code = ?e.code, error = %e.message, "request refused");
            }
            app.metrics.http.errors.with_label_values(&[endpoint_name, e.source.as_str()]).inc();
            error_response(&e)
        }
    };
    resp.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    // Answered before the request body was read (an error, mostly): HTTP/1.1 cannot carry
    // another request on this connection, so say so, and no client reuses it and fails.
    if http1 && !body_read.load(std::sync::atomic::Ordering::Relaxed) {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(finish(&app, endpoint_name, &method, &path, started, resp, Some(guard)))
}

/// Records one registry API request in the audit trail: how it was named before its handler
/// took it, who made it, whether admission refused it, and what it was answered.
fn record_audit(
    app: &App,
    client: std::net::IpAddr,
    (audited, principal, denied, operation): (endpoint::Audited, String, bool, &'static str),
    result: &Result<Response<Body>, OciError>,
) {
    let (status, detail) = match result {
        Ok(r) => (r.status().as_u16(), None),
        Err(e) => (e.status, Some(e.message.clone())),
    };
    let outcome = match (denied, status < 400) {
        (true, _) => crate::events::Outcome::Denied,
        (false, true) => crate::events::Outcome::Success,
        (false, false) => crate::events::Outcome::Failure,
    };
    app.audit.record(crate::events::AuditEvent {
        principal,
        client: Some(client.to_string()),
        api: "registry",
        operation,
        action: audited.action,
        repository: audited.repository,
        reference: audited.reference,
        status: Some(status),
        detail,
        ..crate::events::AuditEvent::new(outcome)
    });
}

/// Who a principal is in the audit trail: its ARN, or `anonymous`.
pub(crate) fn principal_arn(principal: &Principal) -> String {
    match principal {
        Principal::User(id) => id.arn.clone(),
        Principal::Anonymous => "anonymous".into(),
    }
}

/// Counts and logs a response, and ties the request's permits to its body.
fn finish(
    app: &App,
    endpoint_name: &'static str,
    method: &http::Method,
    path: &str,
    started: Instant,
    resp: Response<Body>,
    guard: Option<limits::InFlight>,
) -> Response<Body> {
    let status = resp.status();
    let m = &app.metrics;
    m.http.requests.with_label_values(&[endpoint_name, status_class(status)]).inc();
    m.http.duration.with_label_values(&[endpoint_name]).observe(started.elapsed().as_secs_f64());
    tracing::info!(
        endpoint = endpoint_name,
        %method,
        path,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    // The permits and the in-flight gauge last until the body is fully sent (or dropped).
    let sent = m.http.sent_bytes.with_label_values(&[endpoint_name]);
    resp.map(move |body| {
        body.map_frame(move |frame| {
            let _keep = &guard;
            if let Some(d) = frame.data_ref() {
                sent.inc_by(d.len() as u64);
            }
            frame
        })
        .boxed_unsync()
    })
}

/// Connection settings for a listener.
#[derive(Clone)]
pub struct ListenerSettings {
    /// Time allowed to send request headers; also ends idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// How long a client may accept no byte of a response before its connection is cut.
    pub send_timeout: Duration,
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
}

/// Accepts connections on `listener` until `shutdown` turns true, then drains them for up to the grace period.
pub async fn run_listener<F, Fut>(
    listener: TcpListener,
    settings: ListenerSettings,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(60)));
    let builder = Arc::new(builder);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = settings.tls.clone();
        let header_timeout = settings.header_read_timeout;
        let tcp = limits::StallTimeout::new(tcp, settings.send_timeout);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handler(peer, req));
            match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; cutting the remaining connections");
        }
    }
}

/// Serves a request on the admin listener.
pub async fn serve_admin(
    app: Arc<App>,
    _peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    if path == "/console" || path.starts_with("/console/") {
        let page = console::page(&app, path, req.uri().query()).await;
        let resp = Response::builder()
            .status(StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK))
            .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
            // Nothing on these pages may be framed or run: they show stored names.
            .header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
            .header("X-Content-Type-Options", "nosniff")
            .body(full(Bytes::from(page.html)))
            .unwrap_or_default();
        return Ok(resp);
    }
    Ok(admin::handle(&app, path))
}

/// Binds a listener, with a message that names the address on failure.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Loads the TLS certificate chain and key into an acceptor (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_acceptor(cert: &str, key: &str) -> std::io::Result<TlsAcceptor> {
    let certs: Vec<_> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?)).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or_else(|| std::io::Error::other(format!("{key} holds no private key")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
