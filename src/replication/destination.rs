//! One destination registry as the replication workers see it: its registry API over HTTP with
//! the credentials it gave this source (Basic, or a Bearer token from the realm its challenge
//! names, as Docker Hub-style registries want), and every answer classified as done, retryable
//! or permanent. Every request says `Ferry-Replication: <source registry id>`, so a Ferry
//! destination authorizes it as `ecr:ReplicateImage` and never replicates it on; other
//! registries ignore the header. Knows nothing of storage or events.

use crate::config::{ConfigError, ReplicationTarget};
use crate::oci::Digest;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The header that marks a request as a replication.
pub const REPLICATION_HEADER: &str = "ferry-replication";

/// What `HEAD` of a manifest asks for: every manifest type Ferry stores.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, application/vnd.docker.distribution.manifest.v1+json";

/// Longest `Retry-After` honoured (a destination cannot park a worker for days).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Why a copy did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// Worth retrying: the destination was unreachable, overloaded or failing.
    Retry {
        /// A short code (a metric label).
        code: &'static str,
        /// What happened.
        message: String,
        /// How long the destination asked to wait.
        retry_after: Option<Duration>,
    },
    /// Not worth retrying: refused (credentials, policy) or invalid.
    Permanent {
        /// A short code (a metric label, and the start of `failureCode`).
        code: &'static str,
        /// What happened.
        message: String,
    },
}

impl CopyError {
    /// The short code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Retry { code, .. } | Self::Permanent { code, .. } => code,
        }
    }

    /// `failureCode` as `DescribeImageReplicationStatus` shows it: the code and the message,
    /// at most 256 characters.
    pub fn failure_code(&self) -> String {
        let (Self::Retry { code, message, .. } | Self::Permanent { code, message }) = self;
        format!("{code}: {message}").chars().take(256).collect()
    }

    fn unreachable(base: &str, e: &reqwest::Error) -> Self {
        Self::Retry { code: "UNREACHABLE", message: format!("{base}: {e}"), retry_after: None }
    }
}

/// How a mount request ended.
pub enum Mount {
    /// The destination linked a blob it already held.
    Mounted,
    /// It opened an upload session there instead.
    Upload(String),
}

/// One destination.
pub struct Destination {
    /// `<registry id>/<region>`.
    pub label: String,
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    source_registry_id: String,
    /// Bearer tokens by repository, with when to stop using them.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// Most of a destination's answer body read (an error or a token): a hostile or broken
/// registry cannot make a worker buffer more.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The first [`MAX_ANSWER_BYTES`] of a response body.
async fn bounded_body(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ANSWER_BYTES.saturating_sub(out.len());
        out.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
        if out.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    out
}

/// The OCI error's first code and message in a response body, if it has one.
async fn oci_error(resp: reqwest::Response) -> (Option<String>, String) {
    let status = resp.status();
    let text = bounded_body(resp).await;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&text).ok();
    let first = parsed.as_ref().and_then(|v| v.get("errors")).and_then(|e| e.get(0)).cloned();
    let code = first.as_ref().and_then(|e| e.get("code")).and_then(|c| c.as_str()).map(str::to_owned);
    let message = first
        .as_ref()
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map_or_else(|| format!("HTTP {status}"), |m| format!("HTTP {status}: {m}"));
    (code, message)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// An unwanted answer as a [`CopyError`]: 401/403 refuse for good, 408/429/5xx are retried
/// (honouring `Retry-After`), other 4xx refuse for good with the destination's message.
async fn refusal(resp: reqwest::Response) -> CopyError {
    let status = resp.status();
    let wait = retry_after(resp.headers());
    let (code, message) = oci_error(resp).await;
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            // A HEAD's refusal has no body to say why: say what a destination wants.
            let message = match code {
                Some(_) => message,
                None => format!(
                    "{message}: the destination refused this registry's credentials; its registry policy must allow \
                     ecr:ReplicateImage (and ecr:CreateRepository for a new repository) to this account"
                ),
            };
            CopyError::Permanent { code: "ACCESS_DENIED", message }
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
            CopyError::Retry { code: "THROTTLED", message, retry_after: wait }
        }
        s if s.is_server_error() => CopyError::Retry { code: "DESTINATION_ERROR", message, retry_after: wait },
        StatusCode::NOT_FOUND if code.as_deref() == Some("NAME_UNKNOWN") => {
            CopyError::Permanent { code: "REPOSITORY_NOT_FOUND", message }
        }
        _ => CopyError::Permanent { code: "REJECTED", message },
    }
}

impl Destination {
    /// A client for `target`, replicating from the registry `source_registry_id`.
    pub fn new(target: &ReplicationTarget, source_registry_id: &str) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled destination must not hold an event's lease forever; a body that is
            // still moving is never cut (reads and writes each get this long).
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ConfigError::Invalid { key: "replication.destinations.url", message: e.to_string() })?;
        Ok(Self {
            label: target.label(),
            base: target.url.trim_end_matches('/').to_owned(),
            client,
            credentials: target.credentials()?,
            source_registry_id: source_registry_id.to_owned(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, repo: &str, path: &str) -> String {
        format!("{}/v2/{repo}/{path}", self.base)
    }

    fn authorized(&self, repo: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = req.header(REPLICATION_HEADER, &self.source_registry_id);
        let token = self
            .tokens
            .lock()
            .ok()
            .and_then(|t| t.get(repo).filter(|(_, until)| Instant::now() < *until).map(|(token, _)| token.clone()));
        match (token, &self.credentials) {
            (Some(token), _) => req.bearer_auth(token),
            (None, Some((user, secret))) => req.basic_auth(user, Some(secret)),
            (None, None) => req,
        }
    }

    /// Sends `req` with credentials; on a Bearer challenge, fetches a token for the
    /// repository and sends it once more (when the request can be sent twice).
    async fn send(&self, repo: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CopyError> {
        let again = req.try_clone();
        let resp = self.authorized(repo, req).send().await.map_err(|e| CopyError::unreachable(&self.base, &e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(again) = again else { return Ok(resp) };
        if !self.fetch_token(repo, resp.headers()).await? {
            return Ok(resp);
        }
        self.authorized(repo, again).send().await.map_err(|e| CopyError::unreachable(&self.base, &e))
    }

    /// Answers a Bearer challenge with a pull and push token for `repo`; `false` for any other
    /// challenge (the credentials themselves were refused).
    async fn fetch_token(&self, repo: &str, headers: &HeaderMap) -> Result<bool, CopyError> {
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::proxy::upstream::parse_challenge);
        let Some((scheme, params)) = challenge else { return Ok(false) };
        let Some(realm) = params.get("realm").filter(|_| scheme == "bearer") else { return Ok(false) };
        let mut req = self.client.get(realm).query(&[("scope", format!("repository:{repo}:pull,push"))]);
        if let Some(service) = params.get("service") {
            req = req.query(&[("service", service)]);
        }
        if let Some((user, secret)) = &self.credentials {
            req = req.basic_auth(user, Some(secret));
        }
        let resp = req.send().await.map_err(|e| CopyError::unreachable(realm, &e))?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        let body: crate::proxy::upstream::TokenAnswer =
            serde_json::from_slice(&bounded_body(resp).await).map_err(|e| CopyError::Permanent {
                code: "REJECTED",
                message: format!("the token service at {realm} answered no token: {e}"),
            })?;
        let Some(token) = body.into_token() else { return Ok(false) };
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(repo.to_owned(), token);
        }
        Ok(true)
    }

    /// Whether the destination's repository already holds the blob.
    pub async fn has_blob(&self, repo: &str, digest: &Digest) -> Result<bool, CopyError> {
        let resp = self.send(repo, self.client.head(self.url(repo, &format!("blobs/{digest}")))).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(refusal(resp).await),
        }
    }

    /// The digest `reference` names there, if it exists.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<Digest>, CopyError> {
        let req = self.client.head(self.url(repo, &format!("manifests/{reference}"))).header(ACCEPT, MANIFEST_TYPES);
        let resp = self.send(repo, req).await?;
        match resp.status() {
            s if s.is_success() => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(refusal(resp).await),
        }
    }

    /// Asks the destination to mount a blob it holds in another repository; a registry that
    /// does not hold it (or does not mount without `from`) opens an upload session instead.
    pub async fn mount(&self, repo: &str, digest: &Digest) -> Result<Mount, CopyError> {
        let url = format!("{}?mount={digest}", self.url(repo, "blobs/uploads/"));
        let resp = self.send(repo, self.client.post(url).header(CONTENT_LENGTH, 0)).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => {
                let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                    CopyError::Permanent { code: "REJECTED", message: "an upload session without a Location".into() }
                })?;
                Ok(Mount::Upload(location.to_owned()))
            }
            _ => Err(refusal(resp).await),
        }
    }

    /// Sends a blob's bytes to an upload session in one streamed PUT; the destination
    /// verifies them against `digest`.
    pub async fn upload(
        &self,
        repo: &str,
        location: &str,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), CopyError> {
        let mut url = if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else {
            format!("{}{location}", self.base)
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let req = self
            .client
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        let resp = self.send(repo, req).await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            _ => Err(refusal(resp).await),
        }
    }

    /// Stores a manifest under `reference`. `Ok(false)` when the destination refused the tag
    /// as immutable (`TAG_INVALID`): the caller stores it by digest instead.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<bool, CopyError> {
        let req = self
            .client
            .put(self.url(repo, &format!("manifests/{reference}")))
            .header(CONTENT_TYPE, media_type)
            .body(bytes);
        let resp = self.send(repo, req).await?;
        if resp.status().is_success() {
            return Ok(true);
        }
        if resp.status() == StatusCode::BAD_REQUEST {
            let (code, message) = oci_error(resp).await;
            if code.as_deref() == Some("TAG_INVALID") && !reference.contains(':') {
                return Ok(false);
            }
            return Err(CopyError::Permanent { code: "REJECTED", message });
        }
        Err(refusal(resp).await)
    }
}
