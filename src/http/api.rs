//! The ECR API's HTTP framing: `POST /` with `X-Amz-Target`, a bounded JSON body, SigV4 on
//! every request when access control is on, `{"__type","message"}` errors with
//! `X-Amzn-ErrorType` and `x-amzn-RequestId`. The operations themselves live in `api/`.

use super::{full, App, Body};
use crate::api::{ApiContext, ApiError, EcrException, Operation};
use crate::auth::sigv4::{self, SigV4Error};
use crate::auth::Principal;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use sha2::Digest as _;

/// The largest request body the API reads, but for a layer part (its largest other inputs are
/// policy documents and manifests).
const MAX_BODY: usize = 1 << 20;

/// `PutImage`'s: a 4 MiB manifest, escaped.
const MAX_PUT_IMAGE_BODY: usize = 9 << 20;

/// How long a whole request body may take (a stalled one is cut sooner by the server's
/// `body_read_timeout`).
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The headers the ECR API needs signed besides `host` and `x-amz-date`: what selects the
/// operation and how its body is read.
const SIGNED_HEADERS: [&str; 2] = ["x-amz-target", "content-type"];

/// Whether a request is for the ECR API rather than the registry API.
pub fn is_api<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST && req.uri().path() == "/" && req.headers().contains_key("x-amz-target")
}

/// Serves one API request; returns the operation's name (for metrics and logs), the response,
/// the in-flight permit it was served under (none when it was refused before it had one), and
/// whether its body was read to the end.
///
/// With access control on, the signature is checked from the headers first (scope, date, key,
/// every required header signed), so a request that cannot be a principal's is refused before a
/// byte of its body is read. SigV4 covers the body, so the rest of the check needs it: the body
/// is read within `body_read_timeout` (idle) and a deadline, under a reservation of its bytes
/// per client address and in total ([`super::limits::UnverifiedBodies`]), and only a request
/// whose signature then verifies takes an in-flight permit (and a layer part one of the few
/// layer-part permits). A client that signs `x-amz-content-sha256` is verified before its body
/// is read, and its body checked against that hash.
pub async fn serve(
    app: &App,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> (&'static str, Response<Body>, Option<super::limits::InFlight>, bool) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut served = Served { permit: None, body_read: false };
    let (name, result) = run(app, req, client, &mut served).await;
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
                tracing::warn!(operation = name, kind = e.kind.as_str(), error = %e.message, "API request failed");
            }
            let body = e.to_body();
            let mut resp = Response::builder()
                .status(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST))
                .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
                .header(http::header::CONTENT_LENGTH, body.len())
                .header("x-amzn-RequestId", &request_id)
                .body(full(Bytes::from(body)))
                .unwrap_or_default();
            resp.headers_mut().insert("X-Amzn-ErrorType", HeaderValue::from_static(e.kind.as_str()));
            resp
        }
    };
    (name, resp, served.permit, served.body_read)
}

/// What a request was served under.
struct Served {
    permit: Option<super::limits::InFlight>,
    body_read: bool,
}

/// `ThrottlingException` (which the SDKs retry) for a request refused for load.
fn throttled(message: &str) -> ApiError {
    ApiError::new(EcrException::Throttling, message)
}

/// The body's size limit for an operation.
fn body_limit(target: &str) -> usize {
    match target.strip_prefix(crate::api::TARGET_PREFIX).unwrap_or("") {
        "UploadLayerPart" => crate::api::MAX_PART_BODY,
        // `imageManifest` may be 4 MiB of characters, each escaped in JSON.
        "PutImage" => MAX_PUT_IMAGE_BODY,
        _ => MAX_BODY,
    }
}

/// Who sent the request, and its body: read within its limits, and (access control on)
/// checked against the signature as described on [`serve`]; the in-flight permit is taken into
/// `served` once the sender is known.
async fn authenticate_and_read(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
    client: std::net::IpAddr,
    served: &mut Served,
    limit: usize,
) -> Result<(Principal, Bytes), ApiError> {
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || -> Result<(), ApiError> {
        match declared.is_some_and(|n| n > limit as u64) {
            true => Err(ApiError::new(EcrException::Serialization, "the request body is too large")),
            false => Ok(()),
        }
    };
    let admit = |served: &mut Served| match app.limits.admit(client) {
        Ok(permit) => {
            served.permit = Some(permit);
            Ok(())
        }
        Err(why) => {
            app.metrics.http.rejected.inc();
            app.limits.log_refusal(client, why);
            Err(throttled("Too many requests in flight: retry shortly"))
        }
    };
    let read = |body, limit| read_body(body, limit, app.body_read_timeout);
    let Some(auth) = app.auth.as_ref() else {
        too_large()?;
        admit(served)?;
        return Ok((Principal::Anonymous, read(body, limit).await?));
    };
    let refused = |e: &SigV4Error| {
        let e = signature_error(e);
        app.metrics.auth.failures.with_label_values(&["invalid"]).inc();
        app.audit.record(crate::events::AuditEvent {
            principal: "unauthenticated".into(),
            client: Some(client.to_string()),
            api: "ecr",
            operation: "api",
            action: "",
            status: Some(e.status()),
            detail: Some(e.to_string()),
            ..crate::events::AuditEvent::new(crate::events::Outcome::Denied)
        });
        e
    };
    let headers = header_pairs(&parts.headers);
    let identities = auth.authenticator.identities();
    let now = app.registry.clock().now();
    let pre =
        sigv4::precheck(&headers, &identities, &auth.region, "ecr", &SIGNED_HEADERS, now).map_err(|e| refused(&e))?;
    too_large()?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let verify = |pre: sigv4::Prechecked, hash: &str| {
        pre.verify(parts.method.as_str(), path_and_query, &headers, &auth.region, "ecr", hash)
            .map(Principal::User)
            .map_err(|e| refused(&e))
    };
    match pre.signed_payload_hash.clone() {
        // The body's hash was signed: who sent it is known before the body is read.
        Some(hash) => {
            let principal = verify(pre, &hash)?;
            admit(served)?;
            let body = read(body, limit).await?;
            if hex::encode(sha2::Sha256::digest(&body)) != hash {
                return Err(refused(&SigV4Error::BodyMismatch));
            }
            Ok((principal, body))
        }
        None => {
            let reserve = declared.unwrap_or(limit as u64).min(limit as u64);
            let Some(reservation) = app.unverified.reserve(client, pre.access_key_id(), reserve) else {
                app.metrics.http.rejected.inc();
                return Err(throttled("Too many unverified request bodies from this client: retry shortly"));
            };
            let body = read(body, usize::try_from(reserve).unwrap_or(limit)).await?;
            let principal = verify(pre, &hex::encode(sha2::Sha256::digest(&body)))?;
            drop(reservation);
            admit(served)?;
            Ok((principal, body))
        }
    }
}

async fn run(
    app: &App,
    req: Request<Incoming>,
    client: std::net::IpAddr,
    served: &mut Served,
) -> (&'static str, Result<serde_json::Value, ApiError>) {
    let (parts, body) = req.into_parts();
    served.body_read = body.is_end_stream();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (principal, body) = match authenticate_and_read(app, &parts, body, client, served, body_limit(&target)).await {
        Ok(read) => read,
        Err(e) => return ("api", Err(e)),
    };
    let auth = app.auth.as_ref();
    served.body_read = true;
    // A layer part's permit is held until the request is done: its body is decoded and stored
    // after it is read. Only signed requests get one.
    let _part_permit = if target.ends_with(".UploadLayerPart") {
        match app.layer_parts.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return ("api", Err(throttled("Too many layer parts are being uploaded: retry shortly"))),
        }
    } else {
        None
    };
    let registry_id = auth.map_or("000000000000", |a| a.registry_id.as_str());
    let region = auth.map_or("us-east-1", |a| a.region.as_str());
    let (op_name, op) = match Operation::parse(&target, &body, registry_id, region) {
        Ok(parsed) => parsed,
        Err(e) => return ("api", Err(e)),
    };
    let name = op_name.as_str();
    let first = op.accesses().into_iter().next();
    let audit = |who: String, outcome, result: &Result<serde_json::Value, ApiError>| {
        let first = first.clone();
        app.audit.record(crate::events::AuditEvent {
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
    if let Err(e) = authorize(app, &principal, &op, client).await {
        let refused = Err(e);
        audit(super::principal_arn(&principal), crate::events::Outcome::Denied, &refused);
        return (name, refused);
    }
    let audited = op_name.audited();
    let who = super::principal_arn(&principal);
    let host = parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let proxy_endpoint = match auth.map(|a| a.public_url.as_str()) {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => format!("{}://{host}", if app.tls { "https" } else { "http" }),
    };
    let ctx = ApiContext {
        registry: &app.registry,
        replication: &app.replication,
        rules: &app.rules,
        account: &app.account,
        previews: &app.previews,
        principal: &principal,
        authenticator: auth.map(|a| a.authenticator.as_ref()),
        registry_id,
        region,
        proxy_endpoint,
        now: app.registry.clock().now_ms() / 1000,
        open_token_ttl: 12 * 3600,
        visible: &|name| {
            let access = [crate::auth::Access::on(crate::auth::Action::DescribeRepositories, name)];
            app.authorizer.allowed_by_identity(&principal, &access, client)
        },
        keeps_control: &|name, text| app.authorizer.keeps_control(&principal, name, text, client),
    };
    let result = op.run(&ctx).await;
    if audited {
        let outcome = if result.is_ok() { crate::events::Outcome::Success } else { crate::events::Outcome::Failure };
        audit(who, outcome, &result);
    }
    (name, result)
}

/// The request's headers as text pairs, for SigV4.
fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str().to_owned(), v.to_owned()))).collect()
}

/// A signature refusal as ECR answers it.
fn signature_error(e: &SigV4Error) -> ApiError {
    let kind = match e {
        SigV4Error::Missing => EcrException::MissingAuthenticationToken,
        SigV4Error::Incomplete(_) => EcrException::IncompleteSignature,
        SigV4Error::UnknownKey => EcrException::UnrecognizedClient,
        SigV4Error::SecretNotKnown => EcrException::AccessDenied,
        SigV4Error::Malformed(_) | SigV4Error::Expired(_) | SigV4Error::Mismatch | SigV4Error::BodyMismatch => {
            EcrException::InvalidSignature
        }
    };
    ApiError::new(kind, e.to_string())
}

/// Reads a body of at most `limit` bytes, cut off when it delivers nothing for `idle` or is
/// not all there within [`BODY_DEADLINE`].
async fn read_body(body: Incoming, limit: usize, idle: std::time::Duration) -> Result<Bytes, ApiError> {
    // Room for what the body announces (within the limit): growing by doubling would hold up
    // to twice the body for a moment.
    let announced = usize::try_from(body.size_hint().exact().unwrap_or(0)).unwrap_or(0).min(limit);
    let stream = http_body_util::BodyDataStream::new(body).map(|r| r.map_err(std::io::Error::other)).boxed();
    let mut stream = super::limits::body_idle_timeout(stream, idle);
    let read = async {
        let mut buf = BytesMut::with_capacity(announced);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::new(EcrException::Serialization, format!("the request body failed: {e}")))?;
            if buf.len().saturating_add(chunk.len()) > limit {
                return Err(ApiError::new(EcrException::Serialization, "the request body is too large"));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(BODY_DEADLINE, read).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            EcrException::Serialization,
            format!("the request body did not arrive within {} s", BODY_DEADLINE.as_secs()),
        )),
    }
}

async fn authorize(app: &App, principal: &Principal, op: &Operation, client: std::net::IpAddr) -> Result<(), ApiError> {
    let accesses = op.accesses();
    let ask = crate::auth::authorizer::Ask {
        principal,
        accesses: &accesses,
        client,
        read_only: &|_| None,
        claims_replication: false,
    };
    match app.authorizer.decide(ask).await? {
        Ok(_) => Ok(()),
        Err(crate::auth::Refusal::ReadOnly(reason)) => Err(ApiError::new(EcrException::AccessDenied, reason)),
        Err(crate::auth::Refusal::NotAuthorized { action, resource }) => {
            app.metrics.auth.denials.with_label_values(&[action.as_str()]).inc();
            let arn = match principal {
                Principal::User(id) => id.arn.clone(),
                Principal::Anonymous => "anonymous".into(),
            };
            Err(ApiError::new(
                EcrException::AccessDenied,
                format!("User: {arn} is not authorized to perform: {} on resource: {resource}", action.as_str()),
            ))
        }
    }
}
