//! Thin handlers: read the inputs, call one registry method, shape the response.

use super::endpoint::Endpoint;
use super::{empty, full, stream, App, Body};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, ErrorCode, OciError, RepositoryName};
use crate::registry::{Page, RangeRequest};
use crate::storage::{ByteStream, UploadId};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::collections::HashMap;

type Reply = Result<Response<Body>, OciError>;

/// Serves one parsed request.
pub async fn handle(app: &App, endpoint: Endpoint, req: Request<Incoming>) -> Reply {
    let reg = &app.registry;
    let (parts, body) = req.into_parts();
    let query = query(parts.uri.query());
    let headers = &parts.headers;
    // containerd names the upstream registry of a mirrored pull in `?ns=`.
    let ns = query.get("ns").map(String::as_str);
    if endpoint.action() != super::endpoint::Action::Pull {
        if let Some(name) = endpoint.repository() {
            reg.check_writable(name, ns)?;
        }
    }
    let received = app.metrics.http_received_bytes.with_label_values(&[endpoint.name()]);
    let incoming = move || -> ByteStream {
        http_body_util::BodyDataStream::new(body)
            .map(move |r| r.inspect(|b| received.inc_by(b.len() as u64)).map_err(std::io::Error::other))
            .boxed()
    };
    match endpoint {
        Endpoint::Base => Ok(json_response(StatusCode::OK, &serde_json::json!({}))),
        Endpoint::Catalog => {
            let (n, last) = page_params(&query)?;
            let page = reg.catalog(n, last).await?;
            let link = next_link("/v2/_catalog", n, &page);
            let mut resp = json_response(StatusCode::OK, &serde_json::json!({ "repositories": page.items }));
            set_link(&mut resp, link);
            Ok(resp)
        }
        Endpoint::TagsList(name) => {
            let (n, last) = page_params(&query)?;
            let repo = reg.resolve(name.clone(), ns).await?;
            let page = reg.tags_list(&repo, n, last).await?;
            let link = next_link(&format!("/v2/{name}/tags/list"), n, &page);
            let mut resp =
                json_response(StatusCode::OK, &serde_json::json!({ "name": name.as_str(), "tags": page.items }));
            set_link(&mut resp, link);
            Ok(resp)
        }
        Endpoint::BlobHead(name, digest) => {
            let repo = reg.resolve(name, ns).await?;
            let size = reg.blob_size(&repo, &digest).await?;
            Ok(blob_headers(Response::builder().status(StatusCode::OK), &digest)
                .header(CONTENT_LENGTH, size)
                .body(empty())
                .unwrap_or_default())
        }
        Endpoint::BlobGet(name, digest) => {
            let range = match headers.get(RANGE) {
                Some(v) => parse_range(v)?,
                None => None,
            };
            let repo = reg.resolve(name, ns).await?;
            let blob = reg.blob_get(&repo, &digest, range).await?;
            if let Some(url) = blob.redirect {
                return Ok(Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header(LOCATION, url)
                    .header("Docker-Content-Digest", digest.to_string())
                    .header(CONTENT_LENGTH, 0)
                    .body(empty())
                    .unwrap_or_default());
            }
            let mut builder = blob_headers(Response::builder(), &digest);
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
        Endpoint::BlobDelete(name, digest) => {
            reg.blob_delete(&name, &digest).await?;
            Ok(status_only(StatusCode::ACCEPTED))
        }
        Endpoint::UploadStart(name) => {
            if let Some(mount) = query.get("mount") {
                let digest = parse_digest(mount)?;
                let from = query.get("from").and_then(|f| RepositoryName::parse(f).ok());
                if let Some(from) = from.filter(|f| reg.check_writable(f, None).is_ok()) {
                    if reg.upload_mount(&name, &digest, &from).await? {
                        return Ok(blob_created(&name, &digest));
                    }
                }
            } else if let Some(digest) = query.get("digest") {
                let digest = parse_digest(digest)?;
                reg.upload_monolithic(&name, &digest, incoming()).await?;
                return Ok(blob_created(&name, &digest));
            }
            let id = reg.upload_start(&name).await?;
            Ok(upload_progress(StatusCode::ACCEPTED, &name, &id, 0))
        }
        Endpoint::UploadStatus(name, id) => {
            let size = reg.upload_status(&name, &id).await?;
            Ok(upload_progress(StatusCode::NO_CONTENT, &name, &id, size))
        }
        Endpoint::UploadChunk(name, id) => {
            let start = content_range_start(headers)?;
            let size = reg
                .upload_append(&name, &id, start, incoming())
                .await
                .map_err(|e| with_location(e.into(), &name, &id))?;
            Ok(upload_progress(StatusCode::ACCEPTED, &name, &id, size))
        }
        Endpoint::UploadFinish(name, id) => {
            let digest = query
                .get("digest")
                .ok_or_else(|| {
                    OciError::new(
                        ErrorCode::DigestInvalid,
                        "the digest query parameter is required to finish an upload",
                    )
                })
                .and_then(|d| parse_digest(d))?;
            let start = content_range_start(headers)?;
            reg.upload_finish(&name, &id, &digest, start, Some(incoming()))
                .await
                .map_err(|e| with_location(e.into(), &name, &id))?;
            Ok(blob_created(&name, &digest))
        }
        Endpoint::UploadCancel(name, id) => {
            reg.upload_cancel(&name, &id).await?;
            Ok(status_only(StatusCode::NO_CONTENT))
        }
        Endpoint::ManifestPut(name, reference) => {
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = read_limited(incoming(), MAX_MANIFEST_BYTES).await?;
            let stored = reg.manifest_put(&name, &reference, content_type.as_deref(), bytes).await?;
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
        Endpoint::ManifestHead(name, reference) => {
            let repo = reg.resolve(name, ns).await?;
            let record = reg.manifest_record(&repo, &reference).await?;
            Ok(manifest_headers(&record.media_type, &record.digest, record.size).body(empty()).unwrap_or_default())
        }
        Endpoint::ManifestGet(name, reference) => {
            let repo = reg.resolve(name, ns).await?;
            let m = reg.manifest_get(&repo, &reference).await?;
            let size = m.bytes.len() as u64;
            Ok(manifest_headers(&m.record.media_type, &m.record.digest, size).body(full(m.bytes)).unwrap_or_default())
        }
        Endpoint::ManifestDelete(name, reference) => {
            reg.manifest_delete(&name, &reference).await?;
            Ok(status_only(StatusCode::ACCEPTED))
        }
        Endpoint::Referrers(name, digest) => {
            let artifact_type = query.get("artifactType").map(String::as_str);
            let repo = reg.resolve(name, ns).await?;
            let manifests = reg.referrers(&repo, &digest, artifact_type).await?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            });
            let mut resp = json_response(StatusCode::OK, &index);
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.oci.image.index.v1+json"));
            if artifact_type.is_some() {
                resp.headers_mut().insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
            }
            Ok(resp)
        }
    }
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    Digest::parse(s).map_err(|e| OciError::new(ErrorCode::DigestInvalid, e.to_string()))
}

fn page_params(query: &HashMap<String, String>) -> Result<(Option<usize>, Option<&str>), OciError> {
    let n =
        match query.get("n") {
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                OciError::new(ErrorCode::PaginationNumberInvalid, "n must be a non-negative whole number")
            })?),
            None => None,
        };
    Ok((n, query.get("last").map(String::as_str)))
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

/// The start offset of a chunk's `Content-Range` (`<start>-<end>`, optionally after `bytes ` or `bytes=`),
/// checked against `Content-Length`.
fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>, OciError> {
    let Some(v) = headers.get(CONTENT_RANGE) else { return Ok(None) };
    let bad = || OciError::new(ErrorCode::RangeInvalid, "Content-Range must be <start>-<end>");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.split('/').next().unwrap_or("").trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    if let Some(len) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len != end - start + 1 {
            return Err(OciError::new(
                ErrorCode::SizeInvalid,
                format!("Content-Length {len} does not match Content-Range {start}-{end}"),
            ));
        }
    }
    Ok(Some(start))
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
async fn read_limited(mut body: ByteStream, limit: usize) -> Result<Bytes, OciError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| OciError::new(ErrorCode::ManifestInvalid, format!("the request body ended early: {e}")))?;
        if buf.len() + chunk.len() > limit {
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
        assert_eq!(content_range_start(&h).unwrap(), Some(0));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/*"));
        assert_eq!(content_range_start(&h).unwrap(), Some(100));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(content_range_start(&h).unwrap_err().code, ErrorCode::SizeInvalid);
        h.insert(CONTENT_RANGE, HeaderValue::from_static("9-1"));
        assert_eq!(content_range_start(&h).unwrap_err().code, ErrorCode::RangeInvalid);
    }
}
