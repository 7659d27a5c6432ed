//! Parse, then dispatch: a request's method, path and query become one typed [`Endpoint`],
//! scanned from the right so repository names of any depth work. Names, tags and digests are
//! validated here, before anything touches storage, and each endpoint says which ECR actions it
//! needs on which repositories, for the one authorization decision.

use crate::auth::{Access, Action};
use crate::oci::{Digest, ErrorCode, OciError, Reference, RepositoryName};
use crate::storage::UploadId;
use http::Method;
use std::collections::HashMap;

/// A request's query parameters (the first value of each name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(HashMap<String, String>);

impl Query {
    /// Parses a query string; malformed escapes are taken as written.
    pub fn parse(q: Option<&str>) -> Self {
        let mut out = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Self(out)
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// containerd names the upstream registry of a mirrored pull in `?ns=`.
    pub fn namespace(&self) -> Option<&str> {
        self.get("ns")
    }
}

/// What a `POST /v2/<name>/blobs/uploads/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStart {
    /// A new session.
    Session,
    /// `?digest=`: the whole blob in this request.
    Monolithic(Digest),
    /// `?mount=<digest>&from=<repository>`; without `from`, from any repository holding it.
    Mount(Digest, Option<RepositoryName>),
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v2/`
    Base,
    /// `GET /v2/_catalog`
    Catalog,
    /// `GET /v2/<name>/blobs/<digest>`
    BlobGet(RepositoryName, Digest),
    /// `HEAD /v2/<name>/blobs/<digest>`
    BlobHead(RepositoryName, Digest),
    /// `DELETE /v2/<name>/blobs/<digest>`
    BlobDelete(RepositoryName, Digest),
    /// `POST /v2/<name>/blobs/uploads/`
    UploadStart(RepositoryName, UploadStart),
    /// `GET /v2/<name>/blobs/uploads/<id>`
    UploadStatus(RepositoryName, UploadId),
    /// `PATCH /v2/<name>/blobs/uploads/<id>`
    UploadChunk(RepositoryName, UploadId),
    /// `PUT /v2/<name>/blobs/uploads/<id>?digest=`
    UploadFinish(RepositoryName, UploadId),
    /// `DELETE /v2/<name>/blobs/uploads/<id>`
    UploadCancel(RepositoryName, UploadId),
    /// `GET /v2/<name>/manifests/<reference>`
    ManifestGet(RepositoryName, Reference),
    /// `HEAD /v2/<name>/manifests/<reference>`
    ManifestHead(RepositoryName, Reference),
    /// `PUT /v2/<name>/manifests/<reference>`
    ManifestPut(RepositoryName, Reference),
    /// `DELETE /v2/<name>/manifests/<reference>`
    ManifestDelete(RepositoryName, Reference),
    /// `GET /v2/<name>/tags/list`
    TagsList(RepositoryName),
    /// `GET /v2/<name>/referrers/<digest>`
    Referrers(RepositoryName, Digest),
}

impl Endpoint {
    /// Whether this is a step of a push, or a HEAD a pusher makes to skip what is there: what
    /// a replication from another registry may do under `ecr:ReplicateImage` (never a read of
    /// content, a listing or a delete).
    pub fn is_push_step(&self) -> bool {
        matches!(
            self,
            Self::BlobHead(..)
                | Self::UploadStart(..)
                | Self::UploadStatus(..)
                | Self::UploadChunk(..)
                | Self::UploadFinish(..)
                | Self::UploadCancel(..)
                | Self::ManifestHead(..)
                | Self::ManifestPut(..)
        )
    }

    /// The repository a read reads through (a pull-through name resolves to its cache): what
    /// admission resolves before it decides, so the decision is on the repository served.
    pub fn read_repository(&self) -> Option<&RepositoryName> {
        match self {
            Self::BlobGet(n, _)
            | Self::BlobHead(n, _)
            | Self::ManifestGet(n, _)
            | Self::ManifestHead(n, _)
            | Self::TagsList(n)
            | Self::Referrers(n, _) => Some(n),
            _ => None,
        }
    }

    /// A stable, low-cardinality name for metric labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Catalog => "catalog",
            Self::BlobGet(..) => "blob_get",
            Self::BlobHead(..) => "blob_head",
            Self::BlobDelete(..) => "blob_delete",
            Self::UploadStart(..) => "upload_start",
            Self::UploadStatus(..) => "upload_status",
            Self::UploadChunk(..) => "upload_chunk",
            Self::UploadFinish(..) => "upload_finish",
            Self::UploadCancel(..) => "upload_cancel",
            Self::ManifestGet(..) => "manifest_get",
            Self::ManifestHead(..) => "manifest_head",
            Self::ManifestPut(..) => "manifest_put",
            Self::ManifestDelete(..) => "manifest_delete",
            Self::TagsList(..) => "tags_list",
            Self::Referrers(..) => "referrers",
        }
    }

    /// The repository the endpoint addresses, if any.
    pub fn repository(&self) -> Option<&RepositoryName> {
        match self {
            Self::Base | Self::Catalog => None,
            Self::BlobGet(n, _)
            | Self::BlobHead(n, _)
            | Self::BlobDelete(n, _)
            | Self::UploadStart(n, _)
            | Self::UploadStatus(n, _)
            | Self::UploadChunk(n, _)
            | Self::UploadFinish(n, _)
            | Self::UploadCancel(n, _)
            | Self::ManifestGet(n, _)
            | Self::ManifestHead(n, _)
            | Self::ManifestPut(n, _)
            | Self::ManifestDelete(n, _)
            | Self::TagsList(n)
            | Self::Referrers(n, _) => Some(n),
        }
    }

    /// Every action the endpoint needs, on which repository (a mount reads its source too).
    pub fn accesses(&self) -> Vec<Access> {
        use Action::*;
        let on = |a, n| vec![Access::on(a, n)];
        match self {
            Self::Base => vec![],
            // Decided per repository when the catalog is listed: each caller sees what it may.
            Self::Catalog => vec![],
            Self::BlobGet(n, _) => on(GetDownloadUrlForLayer, n),
            Self::BlobHead(n, _) => on(BatchCheckLayerAvailability, n),
            Self::BlobDelete(n, _) | Self::ManifestDelete(n, _) => on(BatchDeleteImage, n),
            Self::UploadStart(n, UploadStart::Session) => on(InitiateLayerUpload, n),
            Self::UploadStart(n, UploadStart::Monolithic(_)) => {
                vec![
                    Access::on(InitiateLayerUpload, n),
                    Access::on(UploadLayerPart, n),
                    Access::on(CompleteLayerUpload, n),
                ]
            }
            Self::UploadStart(n, UploadStart::Mount(_, from)) => {
                let mut a = vec![Access::on(InitiateLayerUpload, n), Access::on(CompleteLayerUpload, n)];
                a.extend(from.iter().map(|f| Access::on(GetDownloadUrlForLayer, f)));
                a
            }
            Self::UploadStatus(n, _) | Self::UploadChunk(n, _) | Self::UploadCancel(n, _) => on(UploadLayerPart, n),
            Self::UploadFinish(n, _) => vec![Access::on(UploadLayerPart, n), Access::on(CompleteLayerUpload, n)],
            Self::ManifestGet(n, _) | Self::ManifestHead(n, _) | Self::Referrers(n, _) => on(BatchGetImage, n),
            Self::ManifestPut(n, _) => on(PutImage, n),
            Self::TagsList(n) => on(ListImages, n),
        }
    }

    /// Parses a request line into an endpoint, or the OCI error to answer with.
    pub fn parse(method: &Method, path: &str, query: &Query) -> Result<Self, OciError> {
        let rest = path.strip_prefix("/v2").filter(|r| r.is_empty() || r.starts_with('/')).ok_or_else(not_found)?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if rest.is_empty() {
            return one_method(method, &[Method::GET, Method::HEAD]).map(|_| Self::Base);
        }
        if rest == "_catalog" {
            return one_method(method, &[Method::GET]).map(|_| Self::Catalog);
        }
        let decoded = percent_encoding::percent_decode_str(rest)
            .decode_utf8()
            .map_err(|_| OciError::new(ErrorCode::NameInvalid, "the path is not valid UTF-8"))?;
        let segments: Vec<&str> = decoded.split('/').collect();
        let name_of = |parts: &[&str]| -> Result<RepositoryName, OciError> {
            let name = parts.join("/");
            RepositoryName::parse(&name).map_err(|e| {
                OciError::new(ErrorCode::NameInvalid, e.to_string())
                    .with_detail(serde_json::json!({ "name": name.chars().take(300).collect::<String>() }))
            })
        };
        let digest_of = |s: &str| Digest::parse(s).map_err(|e| OciError::new(ErrorCode::DigestInvalid, e.to_string()));
        // Scan from the right: the last segments say which endpoint it is; everything before
        // them (at least one segment) is the repository name.
        match segments.as_slice() {
            [name @ .., "tags", "list"] if !name.is_empty() => {
                let name = name_of(name)?;
                one_method(method, &[Method::GET]).map(|_| Self::TagsList(name))
            }
            [name @ .., "blobs", "uploads", id] if !name.is_empty() => {
                let name = name_of(name)?;
                if id.is_empty() {
                    one_method(method, &[Method::POST])?;
                    return Ok(Self::UploadStart(name, upload_start(query)?));
                }
                let id = UploadId::parse(id)
                    .ok_or_else(|| OciError::new(ErrorCode::BlobUploadUnknown, "upload id is not a known session"))?;
                match *method {
                    Method::GET | Method::HEAD => Ok(Self::UploadStatus(name, id)),
                    Method::PATCH => Ok(Self::UploadChunk(name, id)),
                    Method::PUT => Ok(Self::UploadFinish(name, id)),
                    Method::DELETE => Ok(Self::UploadCancel(name, id)),
                    _ => Err(method_not_allowed()),
                }
            }
            [name @ .., "blobs", "uploads"] if !name.is_empty() => {
                let name = name_of(name)?;
                one_method(method, &[Method::POST])?;
                Ok(Self::UploadStart(name, upload_start(query)?))
            }
            [name @ .., "blobs", digest] if !name.is_empty() => {
                let name = name_of(name)?;
                let digest = digest_of(digest)?;
                match *method {
                    Method::GET => Ok(Self::BlobGet(name, digest)),
                    Method::HEAD => Ok(Self::BlobHead(name, digest)),
                    Method::DELETE => Ok(Self::BlobDelete(name, digest)),
                    _ => Err(method_not_allowed()),
                }
            }
            [name @ .., "manifests", reference] if !name.is_empty() => {
                let name = name_of(name)?;
                let reference = parse_reference(method, reference)?;
                match *method {
                    Method::GET => Ok(Self::ManifestGet(name, reference)),
                    Method::HEAD => Ok(Self::ManifestHead(name, reference)),
                    Method::PUT => Ok(Self::ManifestPut(name, reference)),
                    Method::DELETE => Ok(Self::ManifestDelete(name, reference)),
                    _ => Err(method_not_allowed()),
                }
            }
            [name @ .., "referrers", digest] if !name.is_empty() => {
                let name = name_of(name)?;
                let digest = digest_of(digest)?;
                one_method(method, &[Method::GET]).map(|_| Self::Referrers(name, digest))
            }
            _ => Err(not_found()),
        }
    }
}

/// What an upload POST asks for. A `from` that is not a repository name is ignored (the client
/// gets a new session, as if the blob could not be mounted).
fn upload_start(query: &Query) -> Result<UploadStart, OciError> {
    let digest = |s: &str| Digest::parse(s).map_err(|e| OciError::new(ErrorCode::DigestInvalid, e.to_string()));
    match (query.get("mount"), query.get("digest")) {
        (Some(mount), _) => {
            let from = match query.get("from") {
                None => None,
                Some(f) => match RepositoryName::parse(f) {
                    Ok(f) => Some(f),
                    Err(_) => return digest(mount).map(|_| UploadStart::Session),
                },
            };
            Ok(UploadStart::Mount(digest(mount)?, from))
        }
        (None, Some(d)) => Ok(UploadStart::Monolithic(digest(d)?)),
        (None, None) => Ok(UploadStart::Session),
    }
}

/// A manifest reference. Only a PUT names a reference to create, so only a PUT is told its tag
/// or digest is malformed; for anything else a reference that cannot exist is not found.
fn parse_reference(method: &Method, reference: &str) -> Result<Reference, OciError> {
    Reference::parse(reference).map_err(|e| match e {
        _ if *method != Method::PUT => OciError::new(
            ErrorCode::ManifestUnknown,
            "manifest unknown: the reference is neither a valid tag nor a digest",
        )
        .with_detail(serde_json::json!({ "reference": reference.chars().take(300).collect::<String>() })),
        crate::oci::name::ReferenceError::Digest(e) => OciError::new(ErrorCode::DigestInvalid, e.to_string()),
        crate::oci::name::ReferenceError::Tag(e) => OciError::new(ErrorCode::TagInvalid, e.to_string()),
    })
}

fn not_found() -> OciError {
    OciError::new(ErrorCode::Unsupported, "no such endpoint in the registry API").with_status(404)
}

fn method_not_allowed() -> OciError {
    OciError::new(ErrorCode::Unsupported, "this method is not supported on this endpoint")
}

fn one_method(method: &Method, allowed: &[Method]) -> Result<(), OciError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(method_not_allowed())
    }
}

/// What the audit trail says of a request to the registry API.
pub struct Audited {
    /// The ECR action it is (for a push of a blob, `ecr:CompleteLayerUpload`).
    pub action: &'static str,
    /// The repository.
    pub repository: Option<String>,
    /// The tag or digest.
    pub reference: Option<String>,
}

impl Endpoint {
    /// Whether it changes what the registry holds (what the audit trail always records). A
    /// match, no allocation: it is asked of every request.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Self::ManifestPut(..)
                | Self::ManifestDelete(..)
                | Self::BlobDelete(..)
                | Self::UploadFinish(..)
                | Self::UploadStart(_, UploadStart::Monolithic(_) | UploadStart::Mount(..))
        )
    }

    /// How the audit trail names this request (built only for requests it records).
    pub fn audited(&self, query: &Query) -> Audited {
        let accesses = self.accesses();
        let first = accesses.first();
        let (action, reference) = match self {
            Self::ManifestPut(_, r) => (Action::PutImage, Some(r.to_string())),
            Self::ManifestDelete(_, r) => (Action::BatchDeleteImage, Some(r.to_string())),
            Self::BlobDelete(_, d) => (Action::BatchDeleteImage, Some(d.to_string())),
            Self::UploadFinish(..) => (Action::CompleteLayerUpload, query.get("digest").map(str::to_owned)),
            Self::UploadStart(_, UploadStart::Monolithic(d) | UploadStart::Mount(d, _)) => {
                (Action::CompleteLayerUpload, Some(d.to_string()))
            }
            Self::ManifestGet(_, r) | Self::ManifestHead(_, r) => (Action::BatchGetImage, Some(r.to_string())),
            Self::BlobGet(_, d) | Self::BlobHead(_, d) | Self::Referrers(_, d) => {
                (first.map_or(Action::BatchGetImage, |a| a.action), Some(d.to_string()))
            }
            _ => (first.map_or(Action::BatchGetImage, |a| a.action), None),
        };
        Audited {
            action: action.as_str(),
            repository: first.and_then(|a| a.repository.as_ref()).map(ToString::to_string),
            reference,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: &str, p: &str) -> Result<Endpoint, OciError> {
        let (path, query) = p.split_once('?').map_or((p, None), |(a, b)| (a, Some(b)));
        Endpoint::parse(&Method::from_bytes(m.as_bytes()).unwrap(), path, &Query::parse(query))
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        let name = |s: &str| RepositoryName::parse(s).unwrap();
        let d = Digest::parse(D).unwrap();
        let id = "3f2e1a2b-0b7c-4c1d-9e6f-0a1b2c3d4e5f";
        let uid = UploadId::parse(id).unwrap();
        let cases: Vec<(&str, String, Endpoint)> = vec![
            ("GET", "/v2/".into(), Endpoint::Base),
            ("GET", "/v2".into(), Endpoint::Base),
            ("GET", "/v2/_catalog".into(), Endpoint::Catalog),
            ("GET", format!("/v2/a/b/c/blobs/{D}"), Endpoint::BlobGet(name("a/b/c"), d.clone())),
            ("HEAD", format!("/v2/a/blobs/{D}"), Endpoint::BlobHead(name("a"), d.clone())),
            ("DELETE", format!("/v2/a/blobs/{D}"), Endpoint::BlobDelete(name("a"), d.clone())),
            ("POST", "/v2/a/blobs/uploads/".into(), Endpoint::UploadStart(name("a"), UploadStart::Session)),
            ("POST", "/v2/a/blobs/uploads".into(), Endpoint::UploadStart(name("a"), UploadStart::Session)),
            (
                "POST",
                format!("/v2/a/blobs/uploads/?digest={D}"),
                Endpoint::UploadStart(name("a"), UploadStart::Monolithic(d.clone())),
            ),
            (
                "POST",
                format!("/v2/a/blobs/uploads/?mount={D}&from=b/c"),
                Endpoint::UploadStart(name("a"), UploadStart::Mount(d.clone(), Some(name("b/c")))),
            ),
            (
                "POST",
                format!("/v2/a/blobs/uploads/?mount={D}"),
                Endpoint::UploadStart(name("a"), UploadStart::Mount(d.clone(), None)),
            ),
            (
                "POST",
                format!("/v2/a/blobs/uploads/?mount={D}&from=Bad..Name"),
                Endpoint::UploadStart(name("a"), UploadStart::Session),
            ),
            ("PATCH", format!("/v2/a/blobs/uploads/{id}"), Endpoint::UploadChunk(name("a"), uid)),
            ("PUT", format!("/v2/a/blobs/uploads/{id}"), Endpoint::UploadFinish(name("a"), uid)),
            ("GET", format!("/v2/a/blobs/uploads/{id}"), Endpoint::UploadStatus(name("a"), uid)),
            ("DELETE", format!("/v2/a/blobs/uploads/{id}"), Endpoint::UploadCancel(name("a"), uid)),
            (
                "GET",
                "/v2/manifests/x/manifests/latest".into(),
                Endpoint::ManifestGet(name("manifests/x"), Reference::parse("latest").unwrap()),
            ),
            (
                "PUT",
                format!("/v2/a/manifests/{}", D.replace(':', "%3A")),
                Endpoint::ManifestPut(name("a"), Reference::Digest(d.clone())),
            ),
            ("GET", "/v2/tags/tags/list".into(), Endpoint::TagsList(name("tags"))),
            ("GET", format!("/v2/a/referrers/{D}"), Endpoint::Referrers(name("a"), d.clone())),
            ("GET", format!("/v2/blobs/blobs/{D}"), Endpoint::BlobGet(name("blobs"), d)),
        ];
        for (m, p, want) in cases {
            assert_eq!(parse(m, &p).unwrap(), want, "{m} {p}");
        }
    }

    #[test]
    fn accesses_name_every_repository_touched() {
        let mount = parse("POST", &format!("/v2/a/blobs/uploads/?mount={D}&from=b")).unwrap();
        let names: Vec<_> =
            mount.accesses().iter().filter_map(|a| a.repository.clone()).map(|n| n.to_string()).collect();
        assert!(names.contains(&"a".to_owned()) && names.contains(&"b".to_owned()), "{names:?}");
        let get = parse("GET", "/v2/a/manifests/v1").unwrap();
        assert_eq!(get.accesses()[0].action, Action::BatchGetImage);
        assert!(parse("GET", "/v2/").unwrap().accesses().is_empty());
    }

    #[test]
    fn rejects() {
        let code = |m: &str, p: &str| parse(m, p).unwrap_err().code;
        assert_eq!(code("GET", "/v2/A/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("GET", "/v2/../etc/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("GET", "/v2/a/%2e%2e/b/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("GET", "/v2/a/blobs/sha256:123"), ErrorCode::DigestInvalid);
        assert_eq!(code("GET", "/v2/a/manifests/-bad"), ErrorCode::ManifestUnknown);
        assert_eq!(parse("HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME").unwrap_err().status, 404);
        assert_eq!(code("PUT", "/v2/a/manifests/-bad"), ErrorCode::TagInvalid);
        assert_eq!(code("PUT", "/v2/a/manifests/sha256:12"), ErrorCode::DigestInvalid);
        assert_eq!(code("GET", "/v2/a/blobs/uploads/not-a-uuid"), ErrorCode::BlobUploadUnknown);
        assert_eq!(code("POST", "/v2/a/blobs/uploads/?digest=sha256:12"), ErrorCode::DigestInvalid);
        assert_eq!(code("POST", "/v2/a/blobs/uploads/?mount=md5:12&from=b"), ErrorCode::DigestInvalid);
        assert_eq!(code("POST", "/v2/a/manifests/latest"), ErrorCode::Unsupported);
        assert_eq!(parse("GET", "/v3/").unwrap_err().status, 404);
        assert_eq!(parse("GET", "/v2/a").unwrap_err().status, 404);
        assert_eq!(parse("GET", "/v2x").unwrap_err().status, 404);
        let long = format!("/v2/{}/tags/list", "a".repeat(256));
        assert_eq!(code("GET", &long), ErrorCode::NameInvalid);
    }
}
