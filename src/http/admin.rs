//! The admin listener: `/metrics`, `/healthz` (the process is up) and `/readyz` (it serves);
//! `/console` is [`super::console`]'s.

use super::{full, App, Body};
use bytes::Bytes;
use http::{Response, StatusCode};

/// Answers one admin request.
pub fn handle(app: &App, path: &str) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", app.metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if *app.ready.borrow() => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(full(Bytes::from(body)))
        .unwrap_or_default()
}
