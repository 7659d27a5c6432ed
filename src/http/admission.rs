//! Admission on the registry API, the one step between a parsed request and its handler: who
//! sent it (Basic, Bearer, or nobody), what it reads or writes once names are resolved (a
//! pull-through prefix, containerd's `?ns=`, the mirror default), whether the policies allow
//! every action on exactly those repositories (plus the import right on a cache, and
//! `ecr:CreateRepository` for a push that creates one), and the challenge a client is
//! answered with when it must log in. Also the token endpoint (`/v2/token`) of Docker's
//! Bearer flow, which hands logged-in and anonymous clients a token. The decision itself is
//! `auth::authorize`; this module gathers its inputs and shapes its answers. Knows nothing of
//! storage layout.

use super::endpoint::{Endpoint, Query};
use super::{error_response, full, App, AuthState, Body};
use crate::auth::authenticator::{AuthError, Authenticated};
use crate::auth::authorizer::Ask;
use crate::auth::{Principal, Refusal, Verdict};
use crate::oci::{ErrorCode, OciError, RepositoryName};
use crate::registry::Repo;
use bytes::Bytes;
use http::{Request, Response, StatusCode};

/// The path of the token endpoint (the Bearer challenge's realm).
pub const TOKEN_PATH: &str = "/v2/token";

/// What admission decided for a request it let through.
pub struct Admitted {
    /// Who sent it.
    pub principal: Principal,
    /// Whether it is another registry's replication ([`Verdict::replication`]).
    pub replication: bool,
    /// The repository a read reads (resolved once, authorized as such, with the import right
    /// decided); `None` for endpoints that do not read through a repository.
    pub repo: Option<Repo>,
}

/// Who the request is from: anonymous when access control is off or no credentials came;
/// refused credentials answer 401 (or 403 for an expired token, 429 when throttled).
pub async fn authenticate<B>(app: &App, req: &Request<B>, client: std::net::IpAddr) -> Result<Authenticated, OciError> {
    let Some(auth) = &app.auth else {
        return Ok(Authenticated { principal: Principal::Anonymous, expires_at: None, presented: false });
    };
    let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    auth.authenticator.authenticate_credential(header, client).await.map_err(|e| auth_error(app, auth, req, &e))
}

fn auth_error<B>(app: &App, auth: &AuthState, req: &Request<B>, e: &AuthError) -> OciError {
    let reason = match e {
        AuthError::Invalid => "invalid",
        AuthError::Expired => "expired",
        AuthError::Throttled(_) => "throttled",
    };
    app.metrics.auth.failures.with_label_values(&[reason]).inc();
    match e {
        AuthError::Invalid => challenge(app, auth, req, "the credentials are not valid", None),
        AuthError::Expired => OciError::new(ErrorCode::Denied, e.to_string()),
        AuthError::Throttled(retry) => {
            OciError::new(ErrorCode::Toomanyrequests, e.to_string()).with_header("Retry-After", retry.to_string())
        }
    }
}

/// The registry's URL as clients reach it: `auth.public_url`, else the listener's scheme and
/// the request's `Host`.
fn public_base<B>(app: &App, auth: &AuthState, req: &Request<B>) -> String {
    let base = if auth.public_url.is_empty() {
        let host = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        format!("{}://{host}", if app.tls { "https" } else { "http" })
    } else {
        auth.public_url.trim_end_matches('/').to_owned()
    };
    base.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
}

/// Whether clients are challenged to the Bearer flow (see `auth.challenge`).
fn bearer(auth: &AuthState) -> bool {
    match auth.challenge {
        crate::config::Challenge::Basic => false,
        crate::config::Challenge::Bearer => true,
        crate::config::Challenge::Auto => !auth.authenticator.identities().anonymous.is_empty(),
    }
}

/// 401 with the challenge clients answer: Basic (ECR's form), or Bearer with the token
/// endpoint as its realm and the scope the request needs (Docker Hub's form), which docker
/// follows without credentials too.
fn challenge<B>(app: &App, auth: &AuthState, req: &Request<B>, message: &str, scope: Option<&str>) -> OciError {
    let base = public_base(app, auth, req);
    let header = if bearer(auth) {
        let mut h = format!("Bearer realm=\"{base}{TOKEN_PATH}\",service=\"ferry\"");
        if let Some(scope) = scope {
            let scope: String = scope.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            h.push_str(&format!(",scope=\"{scope}\""));
            if req.headers().contains_key(http::header::AUTHORIZATION) {
                h.push_str(",error=\"insufficient_scope\"");
            }
        }
        h
    } else {
        format!("Basic realm=\"{base}\",service=\"ferry\"")
    };
    OciError::new(ErrorCode::Unauthorized, message).with_header("WWW-Authenticate", header)
}

/// The scope a Bearer client asks for to make this request (Docker's resource scopes).
fn scope(endpoint: &Endpoint) -> Option<String> {
    let name = endpoint.repository()?;
    let actions = match endpoint {
        Endpoint::BlobDelete(..) | Endpoint::ManifestDelete(..) => "delete",
        Endpoint::UploadStart(..)
        | Endpoint::UploadStatus(..)
        | Endpoint::UploadChunk(..)
        | Endpoint::UploadFinish(..)
        | Endpoint::UploadCancel(..)
        | Endpoint::ManifestPut(..) => "pull,push",
        _ => "pull",
    };
    Some(format!("repository:{name}:{actions}"))
}

/// Whether a request is another registry's replication by its own account (the header); what
/// it is allowed as is for [`crate::auth::authorize`] to say.
fn claims_replication(headers: &http::HeaderMap) -> bool {
    headers.contains_key(crate::replication::destination::REPLICATION_HEADER)
}

/// The one admission decision for a registry API request, before any handler: the
/// repository each read reads is resolved first, and every action the endpoint needs is
/// decided on the repositories it actually touches (a mount's source too); for a read of a
/// pull-through repository, whether this caller may make Ferry fetch from its upstream
/// (`ecr:BatchImportUpstreamImage`; cache hits need no such right).
pub async fn admit<B>(
    app: &App,
    authenticated: Authenticated,
    endpoint: &Endpoint,
    query: &Query,
    client: std::net::IpAddr,
    req: &Request<B>,
) -> Result<Admitted, OciError> {
    let principal = authenticated.principal;
    if let (Some(auth), Endpoint::Base, Principal::Anonymous) = (&app.auth, endpoint, &principal) {
        // `GET /v2/` asks only who you are: docker login probes it, and needs the challenge. A
        // client that finished the token flow as nobody (or sent an empty Basic pair) is answered.
        if !authenticated.presented {
            return Err(challenge(app, auth, req, "authentication required", None));
        }
    }
    let ns = query.namespace();
    let mut repo = match endpoint.read_repository() {
        Some(name) => Some(app.registry.resolve(name.clone(), ns).await?),
        None => None,
    };
    let mut accesses = endpoint.accesses();
    if let (Some(Repo::Proxied(route)), Some(addressed)) = (&repo, endpoint.repository()) {
        for access in &mut accesses {
            if access.repository.as_ref() == Some(addressed) {
                access.repository = Some(route.local.clone());
            }
        }
    }
    let claims = claims_replication(req.headers()) && endpoint.is_push_step();
    let read_only = |name: &RepositoryName| app.registry.read_only_reason(name, ns);
    let ask =
        Ask { principal: &principal, accesses: &accesses, client, read_only: &read_only, claims_replication: claims };
    let verdict = app
        .authorizer
        .decide(ask)
        .await
        .map_err(crate::registry::Error::from)?
        .map_err(|r| refused(app, &principal, req, r, scope(endpoint).as_deref()))?;
    if let Some(Repo::Proxied(route)) = &mut repo {
        route.may_import =
            app.authorizer.may_import(&principal, &route.local, client).await.map_err(crate::registry::Error::from)?;
    }
    create_on_push(app, &principal, endpoint, client, req, verdict).await?;
    Ok(Admitted { principal, replication: verdict.replication, repo })
}

/// A refusal as the registry API answers it: 401 with the challenge for anonymous callers
/// (so clients log in), else 403 `DENIED` naming the action and the resource.
fn refused<B>(app: &App, principal: &Principal, req: &Request<B>, refusal: Refusal, scope: Option<&str>) -> OciError {
    match refusal {
        Refusal::ReadOnly(reason) => OciError::new(ErrorCode::Denied, reason),
        Refusal::NotAuthorized { action, resource } => {
            app.metrics.auth.denials.with_label_values(&[action.as_str()]).inc();
            match (principal, &app.auth) {
                (Principal::Anonymous, Some(auth)) => challenge(app, auth, req, "authentication required", scope),
                (Principal::User(id), _) => OciError::new(
                    ErrorCode::Denied,
                    format!(
                        "User: {} is not authorized to perform: {} on resource: {resource}",
                        id.arn,
                        action.as_str()
                    ),
                ),
                (Principal::Anonymous, None) => OciError::new(ErrorCode::Denied, "access denied"),
            }
        }
    }
}

/// A push to a repository that does not exist creates it, as ECR's `CREATE_ON_PUSH`
/// templates do: only when a template matches (or `registry.create_on_push` stands in for a
/// `ROOT` one) and the caller may `ecr:CreateRepository`; otherwise `NAME_UNKNOWN` in ECR's
/// words. A replication (as the decision found it) takes the `REPLICATION` template and may
/// create the repository when the registry policy allows it. The repository starts with the
/// template's settings and policy.
async fn create_on_push<B>(
    app: &App,
    principal: &Principal,
    endpoint: &Endpoint,
    client: std::net::IpAddr,
    req: &Request<B>,
    verdict: Verdict,
) -> Result<(), OciError> {
    let (Endpoint::UploadStart(name, _) | Endpoint::ManifestPut(name, _)) = endpoint else { return Ok(()) };
    let registry = &app.registry;
    if registry.repository_exists(name).await? {
        return Ok(());
    }
    let purpose = match verdict.replication {
        true => crate::registry::templates::AppliedFor::Replication,
        false => crate::registry::templates::AppliedFor::CreateOnPush,
    };
    let Some(settings) =
        registry.templates().settings_for_new_repository(name, purpose).await.map_err(crate::registry::Error::from)?
    else {
        let registry_id = app.auth.as_ref().map_or("000000000000", |a| a.registry_id.as_str());
        return Err(OciError::new(
            ErrorCode::NameUnknown,
            format!("The repository with name '{name}' does not exist in the registry with id '{registry_id}'"),
        )
        .with_detail(serde_json::json!({ "name": name.as_str() })));
    };
    app.authorizer
        .may_create(principal, name, client, verdict.replication)
        .await
        .map_err(crate::registry::Error::from)?
        .map_err(|r| refused(app, principal, req, r, scope(endpoint).as_deref()))?;
    match registry.create_repository(name, settings).await {
        Ok(_) | Err(crate::registry::Error::RepositoryAlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Most of a token request's form body read (`POST` with `grant_type=password`).
const MAX_TOKEN_FORM: usize = 64 << 10;

/// The token endpoint of Docker's Bearer flow: `GET /v2/token?service=&scope=` with Basic
/// credentials or none, or `POST` with a `grant_type=password` form (containerd, when it has
/// credentials). Answers a token naming the principal (or nobody, without credentials), which
/// the registry API then accepts as `Authorization: Bearer`. What a token holder may do is
/// decided by the policies on every request, so the scope asked for grants nothing by itself.
pub async fn token_endpoint(
    app: &App,
    req: Request<hyper::body::Incoming>,
    client: std::net::IpAddr,
) -> Response<Body> {
    let Some(auth) = &app.auth else {
        let e = OciError::new(ErrorCode::Unsupported, "access control is off: no token is needed").with_status(404);
        return error_response(&e);
    };
    let authorization = match *req.method() {
        http::Method::GET => {
            req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned)
        }
        http::Method::POST => {
            let (parts, body) = req.into_parts();
            let form = match read_form(body, app.body_read_timeout).await {
                Ok(f) => f,
                Err(e) => return error_response(&e),
            };
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
            if get("grant_type") != Some("password") {
                let e = OciError::new(ErrorCode::Unsupported, "only grant_type=password is supported").with_status(400);
                return error_response(&e);
            }
            let pair = format!("{}:{}", get("username").unwrap_or(""), get("password").unwrap_or(""));
            let req = Request::from_parts(parts, ());
            return token_answer(app, auth, &req, Some(format!("Basic {}", b64(&pair))), client).await;
        }
        _ => {
            let e = OciError::new(ErrorCode::Unsupported, "the token endpoint answers GET and POST");
            return error_response(&e);
        }
    };
    let req = Request::from_parts(req.into_parts().0, ());
    token_answer(app, auth, &req, authorization, client).await
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn token_answer(
    app: &App,
    auth: &AuthState,
    req: &Request<()>,
    authorization: Option<String>,
    client: std::net::IpAddr,
) -> Response<Body> {
    let checked = auth.authenticator.authenticate_credential(authorization.as_deref(), client).await;
    let authenticated = match checked {
        Ok(a) => a,
        Err(e) => {
            let mut e = auth_error(app, auth, req, &e);
            if e.status == 401 {
                // The token endpoint itself takes Basic credentials.
                let realm = public_base(app, auth, req);
                e = OciError::new(ErrorCode::Unauthorized, "incorrect username or password")
                    .with_header("WWW-Authenticate", format!("Basic realm=\"{realm}\",service=\"ferry\""));
            }
            return error_response(&e);
        }
    };
    let (token, expires_in) = auth.authenticator.issue_bearer(&authenticated.principal, authenticated.expires_at);
    let issued_at = humantime::format_rfc3339_seconds(app.registry.clock().now()).to_string();
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": issued_at,
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(full(Bytes::from(bytes)))
        .unwrap_or_default()
}

/// How long a token request's form may take in all (a byte at a time within the idle timeout
/// would otherwise hold its permit for hours).
const TOKEN_FORM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// A small urlencoded form, read within the server's idle timeout and [`TOKEN_FORM_DEADLINE`].
async fn read_form(body: hyper::body::Incoming, idle: std::time::Duration) -> Result<Vec<(String, String)>, OciError> {
    use futures_util::StreamExt;
    let stream = http_body_util::BodyDataStream::new(body).map(|r| r.map_err(std::io::Error::other)).boxed();
    let mut stream = super::limits::body_idle_timeout(stream, idle);
    let read = async {
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| OciError::new(ErrorCode::Unsupported, format!("the body failed: {e}")).with_status(400))?;
            if buf.len().saturating_add(chunk.len()) > MAX_TOKEN_FORM {
                return Err(OciError::new(ErrorCode::Unsupported, "the form is too large").with_status(413));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(TOKEN_FORM_DEADLINE, read)
        .await
        .map_err(|_| OciError::new(ErrorCode::Unsupported, "the form did not arrive in time").with_status(408))??;
    Ok(form_urlencoded::parse(&buf).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}
