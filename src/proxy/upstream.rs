//! The client for one upstream registry: Docker's token flow and Basic auth, redirects
//! (reqwest drops `Authorization` when a redirect leaves the host), pooling, timeouts, and
//! bounded retries with backoff on connect errors, 5xx and 429 (honouring `Retry-After`).
//! URLs are built only from the configured base and validated names, so a client can never
//! make Ferry fetch a URL of its choosing.

use crate::metrics::Metrics;
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, DigestAlgorithm, Hasher, MediaType};
use crate::storage::ByteStream;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Attempts per request (the first plus retries) on transient failures.
const MAX_ATTEMPTS: u32 = 3;
/// The longest `Retry-After` honoured between attempts; longer waits are left to the client.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// Why an upstream request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No connection, or a timeout.
    #[error("upstream {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The upstream rate-limited Ferry.
    #[error("upstream {upstream} rate-limited Ferry")]
    RateLimited {
        /// The upstream base URL.
        upstream: String,
        /// Seconds the upstream asked to wait.
        retry_after: Option<u64>,
    },
    /// The upstream failed with a 5xx.
    #[error("upstream {0} failed with status {1}")]
    Failed(String, u16),
    /// The upstream does not have it.
    #[error("not found upstream")]
    NotFound,
    /// The upstream refused Ferry's credentials (or needs some and none are configured).
    #[error("upstream {0} refused Ferry's credentials: {1}")]
    Unauthorized(String, String),
    /// The upstream answered with something unusable (wrong digest, too large, bad JSON).
    #[error("upstream {0} sent an invalid response: {1}")]
    Invalid(String, String),
}

impl Error {
    /// Whether a cached copy may be served instead (the upstream is down or rate-limiting).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(..) | Self::RateLimited { .. } | Self::Failed(..))
    }
}

/// The result type of upstream calls.
pub type Result<T> = std::result::Result<T, Error>;

/// A manifest fetched from upstream, re-hashed.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    /// The sha256 of the bytes.
    pub digest: Digest,
    /// The upstream's `Content-Type`.
    pub media_type: String,
    /// The bytes exactly as received.
    pub bytes: Bytes,
}

/// A blob response whose body has not been read yet.
pub struct UpstreamBlob {
    /// `Content-Length`, when the upstream sent one.
    pub size: Option<u64>,
    /// The body.
    pub body: ByteStream,
}

#[derive(Clone)]
enum Auth {
    Bearer(String, Instant),
    Basic,
}

/// One upstream registry.
pub struct Upstream {
    rule: String,
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    auth: Mutex<HashMap<String, Auth>>,
    metrics: Arc<Metrics>,
}

/// A token service's answer to a Bearer challenge (Docker Hub style); replication reads
/// destinations' answers with it too.
#[derive(serde::Deserialize)]
pub(crate) struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token and when to stop using it: a little before it expires, so it never expires in
    /// flight; the service's number is capped at a day, so no answer can overflow the clock.
    pub(crate) fn into_token(self) -> Option<(String, Instant)> {
        let token = self.token.or(self.access_token)?;
        let ttl = Duration::from_secs(self.expires_in.unwrap_or(60).clamp(10, 86_400).saturating_sub(5));
        Some((token, Instant::now().checked_add(ttl).unwrap_or_else(Instant::now)))
    }
}

/// Parses `Bearer realm="...",service="...",scope="..."` into its scheme (lower case) and parameters
/// (replication reads destinations' challenges with it too).
pub(crate) fn parse_challenge(value: &str) -> Option<(String, HashMap<String, String>)> {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], quoted.get(end.saturating_add(1)..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key.trim().to_ascii_lowercase(), val.to_owned());
        rest = remaining.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Upstream {
    /// A client for `base` (e.g. `https://registry-1.docker.io`), labelled `rule` in metrics.
    pub fn new(rule: &str, base: &str, credentials: Option<(String, String)>, metrics: Arc<Metrics>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(base.to_owned(), e.to_string()))?;
        Ok(Self {
            rule: rule.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            client,
            credentials,
            auth: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The upstream's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn cached_auth(&self, scope: &str) -> Option<Auth> {
        let map = self.auth.lock().ok()?;
        match map.get(scope)? {
            Auth::Bearer(_, expires) if *expires <= Instant::now() => None,
            a => Some(a.clone()),
        }
    }

    fn apply(&self, req: reqwest::RequestBuilder, auth: &Option<Auth>) -> reqwest::RequestBuilder {
        match (auth, &self.credentials) {
            (Some(Auth::Bearer(t, _)), _) => req.bearer_auth(t),
            (Some(Auth::Basic), Some((u, p))) => req.basic_auth(u, Some(p)),
            _ => req,
        }
    }

    /// Answers a 401 challenge: fetches a token (Bearer) or switches to Basic credentials.
    async fn authenticate(&self, scope: &str, headers: &HeaderMap) -> Result<()> {
        let challenge = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(parse_challenge);
        let auth = match challenge {
            Some((scheme, params)) if scheme == "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| Error::Invalid(self.base.clone(), "Bearer challenge without a realm".into()))?;
                let mut req = self.client.get(realm).query(&[("scope", scope)]);
                if let Some(service) = params.get("service") {
                    req = req.query(&[("service", service)]);
                }
                if let Some((u, p)) = &self.credentials {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.map_err(|e| Error::Unreachable(realm.clone(), e.to_string()))?;
                self.metrics
                    .cache
                    .upstream_requests
                    .with_label_values(&[&self.rule, "GET", resp.status().as_str()])
                    .inc();
                if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                    return Err(Error::Unauthorized(
                        self.base.clone(),
                        format!("the token service answered {}", resp.status()),
                    ));
                }
                if !resp.status().is_success() {
                    return Err(Error::Failed(realm.clone(), resp.status().as_u16()));
                }
                let body: TokenAnswer =
                    resp.json().await.map_err(|e| Error::Invalid(realm.clone(), format!("token response: {e}")))?;
                let (token, until) = body
                    .into_token()
                    .ok_or_else(|| Error::Invalid(realm.clone(), "token response without a token".into()))?;
                Auth::Bearer(token, until)
            }
            Some((scheme, _)) if scheme == "basic" && self.credentials.is_some() => Auth::Basic,
            _ => {
                return Err(Error::Unauthorized(
                    self.base.clone(),
                    "it demands credentials and none are configured (set username and password)".into(),
                ))
            }
        };
        if let Ok(mut map) = self.auth.lock() {
            map.insert(scope.to_owned(), auth);
        }
        Ok(())
    }

    /// Checks that the upstream answers the registry API with these credentials: `/v2/`
    /// succeeds, or it challenges and the credentials get a token (or Basic is accepted).
    pub async fn check(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let resp =
            self.client.get(&url).send().await.map_err(|e| Error::Unreachable(self.base.clone(), e.to_string()))?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                let challenge = resp.headers().clone();
                self.authenticate("", &challenge).await?;
                match self.cached_auth("") {
                    Some(Auth::Basic) => {
                        let again = self.apply(self.client.get(&url), &Some(Auth::Basic)).send().await;
                        match again {
                            Ok(r) if r.status().is_success() => Ok(()),
                            Ok(r) => {
                                Err(Error::Unauthorized(self.base.clone(), format!("/v2/ answered {}", r.status())))
                            }
                            Err(e) => Err(Error::Unreachable(self.base.clone(), e.to_string())),
                        }
                    }
                    _ => Ok(()),
                }
            }
            s => Err(Error::Failed(self.base.clone(), s.as_u16())),
        }
    }

    /// Sends a request with authentication and bounded retries; 404 becomes `NotFound`.
    async fn send(&self, method: Method, path: &str, repo: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let url = format!("{}/v2/{repo}/{path}", self.base);
        let scope = format!("repository:{repo}:pull");
        let mut authenticated = false;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let auth = self.cached_auth(&scope);
            let mut req = self.apply(self.client.request(method.clone(), &url), &auth);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            let started = Instant::now();
            let result = req.send().await;
            self.metrics
                .cache
                .upstream_duration
                .with_label_values(&[&self.rule])
                .observe(started.elapsed().as_secs_f64());
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    self.metrics
                        .cache
                        .upstream_requests
                        .with_label_values(&[&self.rule, method.as_str(), "error"])
                        .inc();
                    if attempt < MAX_ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        continue;
                    }
                    return Err(Error::Unreachable(self.base.clone(), e.to_string()));
                }
            };
            let status = resp.status();
            self.metrics
                .cache
                .upstream_requests
                .with_label_values(&[&self.rule, method.as_str(), status.as_str()])
                .inc();
            if let Some(remaining) = resp
                .headers()
                .get("ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .and_then(|v| v.trim().parse::<i64>().ok())
            {
                self.metrics.cache.upstream_ratelimit_remaining.with_label_values(&[&self.rule]).set(remaining);
            }
            match status {
                StatusCode::UNAUTHORIZED if !authenticated => {
                    authenticated = true;
                    attempt = attempt.saturating_sub(1);
                    self.authenticate(&scope, resp.headers()).await?;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(Error::Unauthorized(self.base.clone(), format!("{method} {path} answered {status}")));
                }
                StatusCode::NOT_FOUND => return Err(Error::NotFound),
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let wait = retry_after.map(Duration::from_secs).unwrap_or(Duration::from_millis(100 << attempt));
                    if attempt < MAX_ATTEMPTS && wait <= MAX_RETRY_WAIT {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(if s == StatusCode::TOO_MANY_REQUESTS {
                        Error::RateLimited { upstream: self.base.clone(), retry_after }
                    } else {
                        Error::Failed(self.base.clone(), s.as_u16())
                    });
                }
                s if s.is_success() => return Ok(resp),
                s => return Err(Error::Invalid(self.base.clone(), format!("{method} {path} answered {s}"))),
            }
        }
    }

    fn manifest_accept() -> String {
        MediaType::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The digest a tag points at (HEAD, which Docker Hub does not count against its limit).
    /// `None` when the upstream does not say.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Result<Option<Digest>> {
        let resp =
            self.send(Method::HEAD, &format!("manifests/{reference}"), repo, Some(&Self::manifest_accept())).await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok()))
    }

    /// Fetches a manifest (at most 4 MiB) and hashes it; by digest, the bytes must match.
    pub async fn manifest(&self, repo: &str, reference: &str, expected: Option<&Digest>) -> Result<UpstreamManifest> {
        let resp =
            self.send(Method::GET, &format!("manifests/{reference}"), repo, Some(&Self::manifest_accept())).await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let mut body = resp.bytes_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Unreachable(self.base.clone(), e.to_string()))?;
            if buf.len().saturating_add(chunk.len()) > MAX_MANIFEST_BYTES {
                return Err(Error::Invalid(self.base.clone(), format!("manifest {repo}:{reference} exceeds 4 MiB")));
            }
            buf.extend_from_slice(&chunk);
        }
        let bytes = buf.freeze();
        let algorithm = expected.map(|d| d.algorithm()).unwrap_or(DigestAlgorithm::Sha256);
        let mut h = Hasher::new(algorithm);
        h.update(&bytes);
        let digest = h.finish();
        if let Some(e) = expected {
            if &digest != e {
                return Err(Error::Invalid(self.base.clone(), format!("manifest {e} hashed to {digest}")));
            }
        }
        let media_type = if MediaType::parse(&media_type).is_some() {
            media_type
        } else {
            // Some registries send application/json: take the manifest's own mediaType.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned))
                .filter(|m| MediaType::parse(m).is_some())
                .ok_or_else(|| {
                    Error::Invalid(self.base.clone(), format!("manifest {repo}:{reference} has no known media type"))
                })?
        };
        Ok(UpstreamManifest { digest, media_type, bytes })
    }

    /// The size of a blob (HEAD).
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let resp = self.send(Method::HEAD, &format!("blobs/{digest}"), repo, None).await?;
        Ok(resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()))
    }

    /// Starts a blob download (following redirects to other hosts without credentials).
    pub async fn blob(&self, repo: &str, digest: &Digest) -> Result<UpstreamBlob> {
        let resp = self.send(Method::GET, &format!("blobs/{digest}"), repo, None).await?;
        let size = resp.content_length();
        let counter = self.metrics.cache.upstream_bytes.with_label_values(&[&self.rule]);
        let body = resp
            .bytes_stream()
            .map(move |r| r.inspect(|b| counter.inc_by(b.len() as u64)).map_err(std::io::Error::other))
            .boxed();
        Ok(UpstreamBlob { size, body })
    }

    /// The upstream's tags for a repository (first page of up to 10000).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let resp = self.send(Method::GET, "tags/list?n=10000", repo, None).await?;
        #[derive(serde::Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let tags: Tags = resp.json().await.map_err(|e| Error::Invalid(self.base.clone(), e.to_string()))?;
        Ok(tags.tags.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(scheme, "basic");
        assert_eq!(p["realm"], "Registry Realm");
    }
}
