//! Thin handlers: read the inputs, call one registry method, shape the response.

use super::endpoint::{Endpoint, Query, UploadStart};
use super::{empty, full, stream, App, Body};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, ErrorCode, OciError, Reference, RepositoryName};
use crate::registry::{Page, RangeRequest};
use crate::storage::{ByteStream, UploadId};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type Reply = Result<Response<Body>, OciError>;

/// One request's inputs, as the handlers read them.
pub struct Input {
    /// Who sent it (for per-client limits).
    pub client: std::net::IpAddr,
    /// The query parameters.
    pub query: Query,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, not yet read.
    body: Option<Incoming>,
    /// Counts body bytes received.
    received: prometheus::IntCounter,
    /// How long the body may deliver nothing.
    body_timeout: std::time::Duration,
    /// Set once the body has been read to its end.
    body_read: Arc<AtomicBool>,
    /// Who sent it.
    pub principal: crate::auth::Principal,
    /// Whether admission found it to be another registry's replication.
    replication: bool,
    /// The repository a read reads, as admission resolved and authorized it.
    repo: Option<crate::registry::Repo>,
}

impl Input {
    /// Splits a request into what the handlers read.
    pub fn new(
        app: &App,
        client: std::net::IpAddr,
        endpoint: &Endpoint,
        query: Query,
        req: Request<Incoming>,
        body_read: Arc<AtomicBool>,
        admitted: super::admission::Admitted,
    ) -> Self {
        let (parts, body) = req.into_parts();
        body_read.store(body.is_end_stream(), Ordering::Relaxed);
        Self {
            client,
            query,
            headers: parts.headers,
            body: Some(body),
            received: app.metrics.http.received_bytes.with_label_values(&[endpoint.name()]),
            body_timeout: app.body_read_timeout,
            body_read,
            principal: admitted.principal,
            replication: admitted.replication,
            repo: admitted.repo,
        }
    }

    /// The request body as a stream: counted, and cut off when it stalls.
    fn body(&mut self) -> ByteStream {
        let received = self.received.clone();
        let body_read = self.body_read.clone();
        let body = match self.body.take() {
            Some(b) => http_body_util::BodyDataStream::new(b)
                .map(move |r| r.inspect(|b| received.inc_by(b.len() as u64)).map_err(std::io::Error::other))
                .chain(futures_util::stream::poll_fn(move |_| {
                    // Reached only when the body ended: the connection can carry another request.
                    body_read.store(true, Ordering::Relaxed);
                    std::task::Poll::Ready(None)
                }))
                .boxed(),
            None => futures_util::stream::empty().boxed(),
        };
        super::limits::body_idle_timeout(body, self.body_timeout)
    }
}

/// Serves one parsed, authorized request: a thin dispatch to each area's handler.
pub async fn handle(app: &App, endpoint: Endpoint, mut input: Input) -> Reply {
    match endpoint {
        Endpoint::Base => Ok(json_response(StatusCode::OK, &serde_json::json!({}))),
        Endpoint::Catalog => catalog(app, &input).await,
        Endpoint::TagsList(name) => tags_list(app, name, &input).await,
        Endpoint::BlobHead(name, digest) => blob_head(app, name, &digest, &input).await,
        Endpoint::BlobGet(name, digest) => blob_get(app, name, &digest, &input).await,
        Endpoint::BlobDelete(name, digest) => {
            app.registry.blob_delete(&name, &digest).await?;
            Ok(status_only(StatusCode::ACCEPTED))
        }
        Endpoint::UploadStart(name, start) => upload_start(app, &name, start, &mut input).await,
        Endpoint::UploadStatus(name, id) => {
            let size = app.registry.upload_status(&name, &id).await?;
            Ok(upload_progress(StatusCode::NO_CONTENT, &name, &id, size))
        }
        Endpoint::UploadChunk(name, id) => upload_chunk(app, &name, &id, &mut input).await,
        Endpoint::UploadFinish(name, id) => upload_finish(app, &name, &id, &mut input).await,
        Endpoint::UploadCancel(name, id) => {
            let result = app.registry.upload_cancel(&name, &id).await;
            app.uploads.closed(&id);
            result?;
            Ok(status_only(StatusCode::NO_CONTENT))
        }
        Endpoint::ManifestPut(name, reference) => manifest_put(app, &name, &reference, &mut input).await,
        Endpoint::ManifestHead(name, reference) => {
            let repo = resolve(name, &input)?;
            let record = app.registry.manifest_record(&repo, &reference).await?;
            Ok(manifest_headers(&record.media_type, &record.digest, record.size).body(empty()).unwrap_or_default())
        }
        Endpoint::ManifestGet(name, reference) => {
            let repo = resolve(name, &input)?;
            let m = app.registry.manifest_get(&repo, &reference).await?;
            let size = m.bytes.len() as u64;
            Ok(manifest_headers(&m.record.media_type, &m.record.digest, size).body(full(m.bytes)).unwrap_or_default())
        }
        Endpoint::ManifestDelete(name, reference) => {
            app.registry.manifest_delete(&name, &reference).await?;
            Ok(status_only(StatusCode::ACCEPTED))
        }
        Endpoint::Referrers(name, digest) => referrers(app, name, &digest, &input).await,
    }
}

/// The repository a read reads: the one admission resolved and authorized (never resolved
/// again here, so what is served is what was decided).
fn resolve(name: RepositoryName, input: &Input) -> Result<crate::registry::Repo, OciError> {
    input.repo.clone().ok_or_else(|| {
        OciError::new(ErrorCode::Unknown, format!("{name}: the repository this read addresses was not resolved"))
            .with_status(500)
    })
}

async fn catalog(app: &App, input: &Input) -> Reply {
    let (n, last) = page_params(&input.query)?;
    let visible = |name: &RepositoryName| {
        let access = [crate::auth::Access::on(crate::auth::Action::DescribeRepositories, name)];
        app.authorizer.allowed_by_identity(&input.principal, &access, input.client)
    };
    let page = app.registry.catalog(n, last, &visible).await?;
    let link = next_link("/v2/_catalog", n, &page);
    let mut resp = json_response(StatusCode::OK, &serde_json::json!({ "repositories": page.items }));
    set_link(&mut resp, link);
    Ok(resp)
}

async fn tags_list(app: &App, name: RepositoryName, input: &Input) -> Reply {
    let (n, last) = page_params(&input.query)?;
    let repo = resolve(name.clone(), input)?;
    let page = app.registry.tags_list(&repo, n, last).await?;
    let link = next_link(&format!("/v2/{name}/tags/list"), n, &page);
    let mut resp = json_response(StatusCode::OK, &serde_json::json!({ "name": name.as_str(), "tags": page.items }));
    set_link(&mut resp, link);
    Ok(resp)
}

async fn blob_head(app: &App, name: RepositoryName, digest: &Digest, input: &Input) -> Reply {
    let repo = resolve(name, input)?;
    let size = app.registry.blob_size(&repo, digest).await?;
    Ok(blob_headers(Response::builder().status(StatusCode::OK), digest)
        .header(CONTENT_LENGTH, size)
        .body(empty())
        .unwrap_or_default())
}

async fn blob_get(app: &App, name: RepositoryName, digest: &Digest, input: &Input) -> Reply {
    let range = match input.headers.get(RANGE) {
        Some(v) => parse_range(v)?,
        None => None,
    };
    let repo = resolve(name, input)?;
    let blob = app.registry.blob_get(&repo, digest, range).await?;
    if let Some(url) = blob.redirect {
        return Ok(Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(LOCATION, url)
            .header("Docker-Content-Digest", digest.to_string())
            .header(CONTENT_LENGTH, 0)
            .body(empty())
            .unwrap_or_default());
    }
    let mut builder = blob_headers(Response::builder(), digest);
    builder = match (blob.range, blob.size) {
        (Some(r), Some(size)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end))
            .header(CONTENT_LENGTH, r.len()),
        (_, Some(size)) => builder.status(StatusCode::OK).header(CONTENT_LENGTH, size),
        (_, None) => builder.status(StatusCode::OK),
    };
    Ok(builder.body(stream(blob.body)).unwrap_or_default())
}

async fn upload_start(app: &App, name: &RepositoryName, start: UploadStart, input: &mut Input) -> Reply {
    let reg = &app.registry;
    match start {
        UploadStart::Monolithic(digest) => {
            reg.upload_monolithic(name, &digest, input.body()).await?;
            return Ok(blob_created(name, &digest));
        }
        // With `BLOB_MOUNTING` set to DISABLED (ECR's account setting), a mount is answered
        // with a session, the spec's fallback, and the client uploads the blob.
        UploadStart::Mount(digest, from)
            if app.account.blob_mounting().await.map_err(crate::registry::Error::from)? =>
        {
            let mounted = match from {
                Some(from) => reg.upload_mount(name, &digest, &from).await?,
                // No source named: mount when the registry holds the blob (the spec lets a
                // registry mount automatically) while every repository is readable. With access
                // control on, the caller may not read where the blob is: open a session instead
                // (the spec's fallback), so nobody learns or takes content by its digest alone.
                None if app.auth.is_none() => reg.upload_mount_any(name, &digest).await?,
                None => false,
            };
            if mounted {
                return Ok(blob_created(name, &digest));
            }
        }
        UploadStart::Session | UploadStart::Mount(..) => {}
    }
    if !app.uploads.may_open(input.client) {
        return Err(OciError::new(
            ErrorCode::Toomanyrequests,
            "this client has too many open upload sessions; finish or cancel some first",
        )
        .with_header("Retry-After", "10"));
    }
    let id = reg.upload_start(name).await?;
    app.uploads.opened(input.client, id);
    Ok(upload_progress(StatusCode::ACCEPTED, name, &id, 0))
}

async fn upload_chunk(app: &App, name: &RepositoryName, id: &UploadId, input: &mut Input) -> Reply {
    let range = content_range(&input.headers)?;
    let body = exact_length(input.body(), range.map(|(_, len)| len));
    let size = app
        .registry
        .upload_append(name, id, range.map(|(start, _)| start), body)
        .await
        .map_err(|e| with_location(e.into(), name, id))?;
    Ok(upload_progress(StatusCode::ACCEPTED, name, id, size))
}

async fn upload_finish(app: &App, name: &RepositoryName, id: &UploadId, input: &mut Input) -> Reply {
    let digest = input
        .query
        .get("digest")
        .ok_or_else(|| {
            OciError::new(ErrorCode::DigestInvalid, "the digest query parameter is required to finish an upload")
        })
        .and_then(parse_digest)?;
    let range = content_range(&input.headers)?;
    let body = exact_length(input.body(), range.map(|(_, len)| len));
    let result = app.registry.upload_finish(name, id, &digest, range.map(|(start, _)| start), Some(body)).await;
    if matches!(
        result,
        Ok(_) | Err(crate::registry::Error::UploadUnknown | crate::registry::Error::DigestMismatch { .. })
    ) {
        app.uploads.closed(id);
    }
    result.map_err(|e| with_location(e.into(), name, id))?;
    Ok(blob_created(name, &digest))
}

async fn manifest_put(app: &App, name: &RepositoryName, reference: &Reference, input: &mut Input) -> Reply {
    let content_type = input.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let declared = input.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let bytes = read_limited(input.body(), MAX_MANIFEST_BYTES, declared).await?;
    let origin =
        if input.replication { crate::registry::PushOrigin::Replication } else { crate::registry::PushOrigin::Client };
    let stored = app.registry.manifest_put(name, reference, content_type.as_deref(), bytes, origin).await?;
    let mut b = Response::builder()
        .status(StatusCode::CREATED)
        .header(LOCATION, format!("/v2/{name}/manifests/{}", stored.digest))
        .header("Docker-Content-Digest", stored.digest.to_string())
        .header(CONTENT_LENGTH, 0);
    if let Some(subject) = stored.subject {
        b = b.header("OCI-Subject", subject.to_string());
    }
    Ok(b.body(empty()).unwrap_or_default())
}

async fn referrers(app: &App, name: RepositoryName, digest: &Digest, input: &Input) -> Reply {
    let artifact_type = input.query.get("artifactType");
    let repo = resolve(name, input)?;
    let manifests = app.registry.referrers(&repo, digest, artifact_type).await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut resp = json_response(StatusCode::OK, &index);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.oci.image.index.v1+json"));
    if artifact_type.is_some() {
        resp.headers_mut().insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    Digest::parse(s).map_err(|e| OciError::new(ErrorCode::DigestInvalid, e.to_string()))
}

fn page_params(query: &Query) -> Result<(Option<usize>, Option<&str>), OciError> {
    let n =
        match query.get("n") {
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                OciError::new(ErrorCode::PaginationNumberInvalid, "n must be a non-negative whole number")
            })?),
            None => None,
        };
    Ok((n, query.get("last")))
}

fn next_link(path: &str, n: Option<usize>, page: &Page<String>) -> Option<String> {
    if !page.more {
        return None;
    }
    let last = page.items.last()?;
    let n = n.unwrap_or(page.items.len()).min(crate::registry::MAX_PAGE);
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    Some(format!("<{path}?{q}>; rel=\"next\""))
}

fn set_link(resp: &mut Response<Body>, link: Option<String>) {
    if let Some(v) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert("Link", v);
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(full(Bytes::from(body)))
        .unwrap_or_default()
}

fn status_only(status: StatusCode) -> Response<Body> {
    Response::builder().status(status).header(CONTENT_LENGTH, 0).body(empty()).unwrap_or_default()
}

fn blob_headers(b: http::response::Builder, digest: &Digest) -> http::response::Builder {
    b.header(CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest.to_string())
        .header("Accept-Ranges", "bytes")
        .header("ETag", format!("\"{digest}\""))
}

fn manifest_headers(media_type: &str, digest: &Digest, size: u64) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, media_type)
        .header("Docker-Content-Digest", digest.to_string())
        .header("ETag", format!("\"{digest}\""))
        .header(CONTENT_LENGTH, size)
}

fn blob_created(name: &RepositoryName, digest: &Digest) -> Response<Body> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .unwrap_or_default()
}

fn upload_location(name: &RepositoryName, id: &UploadId) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn upload_progress(status: StatusCode, name: &RepositoryName, id: &UploadId, size: u64) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(LOCATION, upload_location(name, id))
        .header("Docker-Upload-UUID", id.to_string())
        .header(RANGE, format!("0-{}", size.saturating_sub(1)))
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .unwrap_or_default()
}

fn with_location(e: OciError, name: &RepositoryName, id: &UploadId) -> OciError {
    if e.code == ErrorCode::RangeInvalid {
        e.with_header("Location", upload_location(name, id)).with_header("Docker-Upload-UUID", id.to_string())
    } else {
        e
    }
}

/// A chunk's `Content-Range` (`<start>-<end>`, optionally after `bytes ` or `bytes=`) as its
/// start and length, checked against `Content-Length`. Every number is the client's: the
/// length is computed with checked arithmetic.
fn content_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, OciError> {
    let Some(v) = headers.get(CONTENT_RANGE) else { return Ok(None) };
    let bad = || OciError::new(ErrorCode::RangeInvalid, "Content-Range must be <start>-<end>");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.split('/').next().unwrap_or("").trim().parse().map_err(|_| bad())?;
    let len = end.checked_sub(start).and_then(|d| d.checked_add(1)).ok_or_else(bad)?;
    if let Some(declared) = headers.get(CONTENT_LENGTH) {
        let declared: u64 = declared.to_str().ok().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        if declared != len {
            return Err(OciError::new(
                ErrorCode::SizeInvalid,
                format!("Content-Length {declared} does not match Content-Range {start}-{end}"),
            ));
        }
    }
    Ok(Some((start, len)))
}

/// A chunk body that must be exactly `len` bytes when a `Content-Range` said so: more is cut
/// off with an error before it is stored, fewer fail at the end (a chunked body has no
/// `Content-Length` for hyper to enforce).
fn exact_length(body: ByteStream, len: Option<u64>) -> ByteStream {
    let Some(len) = len else { return body };
    let mismatch = move |got: u64| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the chunk holds {got} bytes or more, its Content-Range says {len}"),
        )
    };
    futures_util::stream::unfold((body, 0u64, false), move |(mut body, got, done)| async move {
        if done {
            return None;
        }
        match body.next().await {
            Some(Ok(b)) => {
                let total = got.saturating_add(b.len() as u64);
                if total > len {
                    return Some((Err(mismatch(total)), (body, total, true)));
                }
                Some((Ok(b), (body, total, false)))
            }
            Some(Err(e)) => Some((Err(e), (body, got, true))),
            None if got != len => Some((Err(mismatch(got)), (body, got, true))),
            None => None,
        }
    })
    .boxed()
}

/// Parses a `Range: bytes=...` header. Several ranges are answered with the whole blob
/// (allowed by RFC 9110); a malformed one gets 416.
fn parse_range(v: &HeaderValue) -> Result<Option<RangeRequest>, OciError> {
    let malformed =
        || OciError::new(ErrorCode::RangeInvalid, "Range must be bytes=<start>-<end>, bytes=<start>- or bytes=-<n>");
    let s = v.to_str().map_err(|_| malformed())?.trim();
    let spec = s.strip_prefix("bytes=").ok_or_else(malformed)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(malformed)?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Ok(Some(RangeRequest::Suffix(b.parse().map_err(|_| malformed())?)));
    }
    let start = a.parse().map_err(|_| malformed())?;
    let end = if b.is_empty() { None } else { Some(b.parse().map_err(|_| malformed())?) };
    Ok(Some(RangeRequest::From(start, end)))
}

/// Reads a body of at most `limit` bytes; more is refused with 413 before it is all read.
async fn read_limited(mut body: ByteStream, limit: usize, declared: Option<usize>) -> Result<Bytes, OciError> {
    // Sized once when the client said how much comes (never more than the limit). A larger
    // body is read up to the limit before the 413, so the client, still sending, reads the
    // answer instead of a reset.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
            let e = OciError::new(ErrorCode::ManifestInvalid, format!("the request body ended early: {e}"));
            if timed_out {
                e.with_status(408).with_header("Connection", "close")
            } else {
                e
            }
        })?;
        if buf.len().saturating_add(chunk.len()) > limit {
            return Err(
                OciError::new(ErrorCode::SizeInvalid, format!("manifest exceeds {limit} bytes")).with_status(413)
            );
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ByteRange;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any `Range` header, against any blob size: no panic, and a resolved range lies
        /// inside the blob.
        #[test]
        fn any_range_header_resolves_inside_the_blob(
            header in "(bytes=)?[0-9 ,-]{0,40}|bytes=[0-9]{0,25}-[0-9]{0,25}|bytes=-[0-9]{0,25}",
            size in any::<u64>(),
        ) {
            if let Ok(v) = HeaderValue::from_str(&header) {
                if let Ok(Some(r)) = parse_range(&v) {
                    if let Ok(r) = r.resolve(size) {
                        prop_assert!(r.start <= r.end && r.end < size);
                    }
                }
            }
        }

        /// Any `Content-Range` and `Content-Length`: no panic, no overflow, and an accepted
        /// range's last byte is representable.
        #[test]
        fn any_content_range_is_checked(
            range in "(bytes[ =])?[0-9]{0,22}-[0-9]{0,22}(/[0-9*]{0,5})?|.{0,30}",
            length in proptest::option::of("[0-9]{0,22}|.{0,5}"),
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&range) {
                h.insert(CONTENT_RANGE, v);
            }
            if let Some(Ok(v)) = length.map(|l| HeaderValue::from_str(&l)) {
                h.insert(CONTENT_LENGTH, v);
            }
            match content_range(&h) {
                Ok(Some((start, len))) => prop_assert!(len >= 1 && start.checked_add(len - 1).is_some()),
                Ok(None) => prop_assert!(!h.contains_key(CONTENT_RANGE)),
                Err(e) => prop_assert!(e.status == 400 || e.status == 416),
            }
        }

        /// Any query string: pagination parameters parse or give PAGINATION_NUMBER_INVALID.
        #[test]
        fn any_query_string_paginates_or_is_refused(q in ".{0,60}") {
            let parsed = Query::parse(Some(&q));
            match page_params(&parsed) {
                Ok((n, _)) => prop_assert_eq!(n.is_some(), parsed.get("n").is_some()),
                Err(e) => prop_assert_eq!(e.code, ErrorCode::PaginationNumberInvalid),
            }
        }
    }

    #[test]
    fn ranges() {
        let r = |s: &str, size| parse_range(&HeaderValue::from_str(s).unwrap()).map(|r| r.map(|r| r.resolve(size)));
        let ok = |s: &str, size| r(s, size).unwrap().map(|r| r.unwrap());
        assert_eq!(ok("bytes=0-99", 1000), Some(ByteRange { start: 0, end: 99 }));
        assert_eq!(ok("bytes=990-", 1000), Some(ByteRange { start: 990, end: 999 }));
        assert_eq!(ok("bytes=-16", 1000), Some(ByteRange { start: 984, end: 999 }));
        assert_eq!(ok("bytes=-5000", 1000), Some(ByteRange { start: 0, end: 999 }));
        assert_eq!(ok("bytes=10-5000", 1000), Some(ByteRange { start: 10, end: 999 }));
        assert_eq!(ok("bytes=0-1,5-6", 1000), None);
        for unsatisfiable in ["bytes=1000-", "bytes=5-4", "bytes=-0"] {
            assert!(r(unsatisfiable, 1000).unwrap().unwrap().is_err(), "{unsatisfiable}");
        }
        for malformed in ["items=0-1", "bytes=a-b", "bytes=0"] {
            assert!(r(malformed, 1000).is_err(), "{malformed}");
        }
        assert!(r("bytes=0-0", 0).unwrap().unwrap().is_err());
    }

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(content_range(&h).unwrap(), Some((0, 100)));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/*"));
        assert_eq!(content_range(&h).unwrap(), Some((100, 100)));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(content_range(&h).unwrap_err().code, ErrorCode::SizeInvalid);
        h.insert(CONTENT_RANGE, HeaderValue::from_static("9-1"));
        assert_eq!(content_range(&h).unwrap_err().code, ErrorCode::RangeInvalid);
        // The whole u64 range: its length does not fit, and must not wrap to 0.
        h.insert(CONTENT_RANGE, HeaderValue::from_static("0-18446744073709551615"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(content_range(&h).unwrap_err().code, ErrorCode::RangeInvalid);
        h.remove(CONTENT_LENGTH);
        assert_eq!(content_range(&h).unwrap_err().code, ErrorCode::RangeInvalid);
    }
}
