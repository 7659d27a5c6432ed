//! The ECR API's HTTP framing: `POST /` with `X-Amz-Target`, a bounded JSON body, SigV4 on
//! every request when access control is on, `{"__type","message"}` errors with
//! `X-Amzn-ErrorType` and `x-amzn-RequestId`. The operations themselves live in `api/`.

use super::{full, App, Body};
use crate::api::{ApiContext, ApiError, Operation};
use crate::auth::sigv4::{self, SigV4Error, SignedRequest};
use crate::auth::Principal;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

/// The largest request body the API reads, but for a layer part (its largest other inputs are
/// policy documents and manifests).
const MAX_BODY: usize = 1 << 20;

/// `PutImage`'s: a 4 MiB manifest, escaped.
const MAX_PUT_IMAGE_BODY: usize = 9 << 20;

/// How long a whole request body may take (a stalled one is cut sooner by the server's
/// `body_read_timeout`).
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// How long a layer part's body may take: 14 MiB at 120 KB/s. It holds one of a few permits.
const PART_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// With access control on, a layer part is read only when it is signed with a known access
/// key (checked fully once the body is there).
fn known_key(app: &App, parts: &http::request::Parts) -> Result<(), ApiError> {
    let Some(auth) = &app.auth else { return Ok(()) };
    let header = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Err(ApiError::new("MissingAuthenticationTokenException", SigV4Error::Missing.to_string()));
    };
    let v4 =
        sigv4::AuthorizationV4::parse(header).map_err(|e| ApiError::new("InvalidSignatureException", e.to_string()))?;
    if auth.authenticator.identities().by_access_key(&v4.access_key_id).is_none() {
        return Err(ApiError::new("UnrecognizedClientException", SigV4Error::UnknownKey.to_string()));
    }
    Ok(())
}

/// Whether a request is for the ECR API rather than the registry API.
pub fn is_api<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST && req.uri().path() == "/" && req.headers().contains_key("x-amz-target")
}

/// Serves one API request; returns the operation's name (for metrics and logs) and the response.
pub async fn serve(app: &App, req: Request<Incoming>, client: std::net::IpAddr) -> (&'static str, Response<Body>) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (name, result) = run(app, req, client).await;
    let resp = match result {
        Ok(value) => {
            let body = serde_json::to_vec(&value).unwrap_or_default();
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
                .header(http::header::CONTENT_LENGTH, body.len())
                .header("x-amzn-RequestId", &request_id)
                .body(full(Bytes::from(body)))
                .unwrap_or_default()
        }
        Err(e) => {
            if e.status() >= 500 {
                tracing::warn!(operation = name, kind = e.kind, error = %e.message, "API request failed");
            }
            let body = e.to_body();
            let mut resp = Response::builder()
                .status(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST))
                .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
                .header(http::header::CONTENT_LENGTH, body.len())
                .header("x-amzn-RequestId", &request_id)
                .body(full(Bytes::from(body)))
                .unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(e.kind) {
                resp.headers_mut().insert("X-Amzn-ErrorType", v);
            }
            resp
        }
    };
    (name, resp)
}

async fn run(
    app: &App,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> (&'static str, Result<serde_json::Value, ApiError>) {
    let (parts, body) = req.into_parts();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    // A layer part's permit is held until the request is done: its body is decoded and
    // stored after it is read.
    let (body, _permit) = match read_request_body(app, &parts, body, target).await {
        Ok(read) => read,
        Err(e) => return ("api", Err(e)),
    };
    let auth = app.auth.as_ref();
    let registry_id = auth.map_or("000000000000", |a| a.registry_id.as_str());
    let region = auth.map_or("us-east-1", |a| a.region.as_str());
    let op = match Operation::parse(target, &body, registry_id, region) {
        Ok(op) => op,
        Err(e) => return ("api", Err(e)),
    };
    let name = op.name();
    let first = op.accesses().into_iter().next();
    let audit = |who: String, outcome, result: &Result<serde_json::Value, ApiError>| {
        let first = first.clone();
        app.registry.audit().record(crate::events::AuditEvent {
            principal: who,
            client: Some(client.to_string()),
            api: "ecr",
            operation: name,
            action: first.as_ref().map_or("", |a| a.action.as_str()),
            repository: first.and_then(|a| a.repository).map(|r| r.to_string()),
            status: Some(result.as_ref().map_or_else(ApiError::status, |_| 200)),
            detail: result.as_ref().err().map(ToString::to_string),
            ..crate::events::AuditEvent::new(outcome)
        });
    };
    let principal = match authenticate(app, &parts, &body) {
        Ok(p) => p,
        Err(e) => {
            app.metrics.auth.failures.with_label_values(&["invalid"]).inc();
            let refused = Err(e);
            audit("unauthenticated".into(), crate::events::Outcome::Denied, &refused);
            return (name, refused);
        }
    };
    if let Err(e) = authorize(app, &principal, &op, client).await {
        let refused = Err(e);
        audit(super::principal_arn(&principal), crate::events::Outcome::Denied, &refused);
        return (name, refused);
    }
    let audited = op.audited();
    let who = super::principal_arn(&principal);
    let host = parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let proxy_endpoint = match auth.map(|a| a.public_url.as_str()) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => format!("{}://{host}", if app.tls { "https" } else { "http" }),
    };
    let ctx = ApiContext {
        registry: &app.registry,
        principal: &principal,
        authenticator: auth.map(|a| a.authenticator.as_ref()),
        registry_id,
        region,
        proxy_endpoint,
        now: app.registry.now_secs(),
        open_token_ttl: 12 * 3600,
        visible: &|name| {
            let access = [crate::auth::Access::on(crate::auth::Action::DescribeRepositories, name)];
            super::allowed(app, &principal, &access, client)
        },
        keeps_control: &|name, text| {
            let kind = crate::auth::policy::PolicyKind::Resource;
            let Ok(policy) = crate::auth::policy::Policy::parse(text, kind) else { return true };
            let mut policies = super::RepositoryPolicies::new();
            policies.insert(name.clone(), Some(std::sync::Arc::new(policy)));
            let access = [crate::auth::Access::on(crate::auth::Action::SetRepositoryPolicy, name)];
            super::decide(app, &principal, &access, client, &|_| None, &policies).is_ok()
        },
    };
    let result = op.run(&ctx).await;
    if audited {
        let outcome = if result.is_ok() { crate::events::Outcome::Success } else { crate::events::Outcome::Failure };
        audit(who, outcome, &result);
    }
    (name, result)
}

/// Reads the body within the operation's size limit and deadline. A layer part is the one
/// large input: only a few are read at once, each only for a known access key and within a
/// deadline, so nobody can hold the permits for long.
async fn read_request_body(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
    target: &str,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    let (permit, limit, deadline) = match target.strip_prefix(crate::api::TARGET_PREFIX).unwrap_or("") {
        "UploadLayerPart" => {
            known_key(app, parts)?;
            let permit = app.layer_parts.clone().try_acquire_owned().map_err(|_| {
                ApiError::new("ThrottlingException", "Too many layer parts are being uploaded: retry shortly")
            })?;
            (Some(permit), crate::api::MAX_PART_BODY, PART_BODY_DEADLINE)
        }
        // `imageManifest` may be 4 MiB of characters, each escaped in JSON.
        "PutImage" => (None, MAX_PUT_IMAGE_BODY, BODY_DEADLINE),
        _ => (None, MAX_BODY, BODY_DEADLINE),
    };
    match tokio::time::timeout(deadline, read_body(body, limit)).await {
        Ok(read) => read.map(|b| (b, permit)),
        Err(_) => Err(ApiError::new(
            "SerializationException",
            format!("the request body did not arrive within {} s", deadline.as_secs()),
        )),
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = http_body_util::BodyDataStream::new(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new("SerializationException", format!("the request body failed: {e}")))?;
        if buf.len().saturating_add(chunk.len()) > limit {
            return Err(ApiError::new("SerializationException", "the request body is too large"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// With access control on, every request must be SigV4-signed by a principal of the config.
fn authenticate(app: &App, parts: &http::request::Parts, body: &[u8]) -> Result<Principal, ApiError> {
    let Some(auth) = &app.auth else { return Ok(Principal::Anonymous) };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned())))
        .collect();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = SignedRequest { method: parts.method.as_str(), path_and_query, headers: &headers, body };
    let identities = auth.authenticator.identities();
    let now = app.registry.now();
    sigv4::verify(&request, &identities, &auth.region, "ecr", now).map(Principal::User).map_err(|e| {
        let kind = match e {
            SigV4Error::Missing => "MissingAuthenticationTokenException",
            SigV4Error::UnknownKey => "UnrecognizedClientException",
            SigV4Error::SecretNotKnown => "AccessDeniedException",
            SigV4Error::Malformed(_) | SigV4Error::Expired(_) | SigV4Error::Mismatch => "InvalidSignatureException",
        };
        ApiError::new(kind, e.to_string())
    })
}

async fn authorize(app: &App, principal: &Principal, op: &Operation, client: std::net::IpAddr) -> Result<(), ApiError> {
    let accesses = op.accesses();
    let policies = super::repository_policies(app, &accesses).await?;
    match super::decide(app, principal, &accesses, client, &|_| None, &policies) {
        Ok(()) => Ok(()),
        Err(crate::auth::Refusal::ReadOnly(reason)) => Err(ApiError::new("AccessDeniedException", reason)),
        Err(crate::auth::Refusal::NotAuthorized { action, resource }) => {
            app.metrics.auth.denials.with_label_values(&[action.as_str()]).inc();
            let arn = match principal {
                Principal::User(id) => id.arn.clone(),
                Principal::Anonymous => "anonymous".into(),
            };
            Err(ApiError::new(
                "AccessDeniedException",
                format!("User: {arn} is not authorized to perform: {} on resource: {resource}", action.as_str()),
            ))
        }
    }
}
