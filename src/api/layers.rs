//! ECR's layer operations, the calls behind a push and a pull made through the API rather
//! than the registry API: `BatchCheckLayerAvailability`, `GetDownloadUrlForLayer`, and the
//! upload trio `InitiateLayerUpload` → `UploadLayerPart`… → `CompleteLayerUpload`. An upload
//! is an ordinary registry upload session (so it is resumable on any replica, purged when
//! abandoned, and its bytes are checked against the digest before anything is stored); parts
//! must follow each other exactly, as ECR demands. This module speaks ECR; the registry does
//! the work. It must not know how sessions are stored.

use super::operations::names;
use super::EcrException;
use super::{ApiContext, ApiError, Input};
use crate::auth::{Access, Action};
use crate::oci::{Digest, RepositoryName};
use crate::registry::{Error, Repo};
use crate::storage::UploadId;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The part size Ferry asks for, and the largest part it takes: ECR's service quota (10 MiB).
/// A part is held in memory while its signature is checked, so this bounds what one request
/// costs; the API's body limit for `UploadLayerPart` follows from it.
pub const PART_SIZE: u64 = 10 << 20;

/// `UploadLayerPart` requests read at once (about 40 MiB each at most while decoded).
pub const LAYER_PARTS_AT_ONCE: usize = 4;

/// The largest `UploadLayerPart` body: a whole part in base64 plus the other members.
pub const MAX_PART_BODY: usize = 14 << 20;

/// One parsed layer operation.
#[derive(Debug, Clone, PartialEq)]
pub enum LayersOp {
    /// `BatchCheckLayerAvailability`: the digests as sent.
    Check(RepositoryName, Vec<String>),
    /// `GetDownloadUrlForLayer`.
    DownloadUrl(RepositoryName, Digest),
    /// `InitiateLayerUpload`.
    Initiate(RepositoryName),
    /// `UploadLayerPart`.
    UploadPart(Part),
    /// `CompleteLayerUpload`: the upload and the digest it must have.
    Complete(RepositoryName, UploadId, Digest),
}

/// An `UploadLayerPart` request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The repository.
    pub name: RepositoryName,
    /// The session.
    pub upload: UploadId,
    /// `partFirstByte`.
    pub first: u64,
    /// The bytes, decoded; exactly `partLastByte - partFirstByte + 1` of them.
    pub blob: Bytes,
}

impl LayersOp {
    /// What it needs.
    pub fn accesses(&self) -> Vec<Access> {
        match self {
            Self::Check(n, _) => vec![Access::on(Action::BatchCheckLayerAvailability, n)],
            Self::DownloadUrl(n, _) => vec![Access::on(Action::GetDownloadUrlForLayer, n)],
            Self::Initiate(n) => vec![Access::on(Action::InitiateLayerUpload, n)],
            Self::UploadPart(p) => vec![Access::on(Action::UploadLayerPart, &p.name)],
            Self::Complete(n, ..) => vec![Access::on(Action::CompleteLayerUpload, n)],
        }
    }
}

fn digest_member(value: &str, member: &str) -> Result<Digest, ApiError> {
    Digest::parse(value).map_err(|_| {
        ApiError::invalid(member, "Member must satisfy regular expression pattern: [a-zA-Z0-9-_+.]+:[a-fA-F0-9]+")
    })
}

fn upload_id(input: &Input) -> Result<UploadId, ApiError> {
    let id = input.required_str("uploadId")?;
    UploadId::parse(id).ok_or_else(|| {
        ApiError::invalid(
            "uploadId",
            "Member must satisfy regular expression pattern: [a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}",
        )
    })
}

fn byte_member(input: &Input, member: &str) -> Result<u64, ApiError> {
    input
        .get(member)
        .ok_or_else(|| ApiError::invalid(member, "Member must not be null"))?
        .as_u64()
        .ok_or_else(|| ApiError::invalid(member, "Member must have value greater than or equal to 0"))
}

/// Parses one of the layer operations.
pub fn parse_operation(op: names::Layers, input: &Input) -> Result<LayersOp, ApiError> {
    let name = super::repositories::repository_name(input, "repositoryName")?;
    Ok(match op {
        names::Layers::BatchCheckLayerAvailability => {
            let list = input
                .list("layerDigests")?
                .ok_or_else(|| ApiError::invalid("layerDigests", "Member must not be null"))?;
            if list.is_empty() || list.len() > 100 {
                return Err(ApiError::invalid("layerDigests", "Member must have length between 1 and 100"));
            }
            let digests = list.iter().map(|v| v.as_str().unwrap_or_default().chars().take(1000).collect()).collect();
            LayersOp::Check(name, digests)
        }
        names::Layers::GetDownloadUrlForLayer => {
            let d = input.required_str("layerDigest")?;
            LayersOp::DownloadUrl(name, digest_member(d, "layerDigest")?)
        }
        names::Layers::InitiateLayerUpload => LayersOp::Initiate(name),
        names::Layers::UploadLayerPart => {
            let upload = upload_id(input)?;
            let first = byte_member(input, "partFirstByte")?;
            let last = byte_member(input, "partLastByte")?;
            let encoded = input.required_str("layerPartBlob")?;
            let blob = STANDARD
                .decode(encoded)
                .map_err(|_| ApiError::new(EcrException::Serialization, "layerPartBlob is not valid base64"))?;
            let invalid = |message: String| {
                ApiError::new(EcrException::InvalidLayerPart, message)
                    .with("repositoryName", json!(name.as_str()))
                    .with("uploadId", json!(upload.to_string()))
            };
            if blob.is_empty() {
                return Err(ApiError::invalid("layerPartBlob", "Member must have length greater than or equal to 0"));
            }
            if blob.len() as u64 > PART_SIZE {
                return Err(invalid(format!(
                    "The layer part is {} bytes; a part may be at most {PART_SIZE} bytes",
                    blob.len()
                )));
            }
            if last.checked_sub(first).and_then(|d| d.checked_add(1)) != Some(blob.len() as u64) {
                return Err(invalid(format!(
                    "The layer part's bytes {first}-{last} do not match the {} bytes sent",
                    blob.len()
                )));
            }
            LayersOp::UploadPart(Part { name, upload, first, blob: Bytes::from(blob) })
        }
        names::Layers::CompleteLayerUpload => {
            let upload = upload_id(input)?;
            let list = input
                .list("layerDigests")?
                .ok_or_else(|| ApiError::invalid("layerDigests", "Member must not be null"))?;
            if list.is_empty() || list.len() > 100 {
                return Err(ApiError::invalid("layerDigests", "Member must have length between 1 and 100"));
            }
            // A layer has one digest: every entry must name the same one.
            let mut digest: Option<Digest> = None;
            for v in list {
                let d = digest_member(v.as_str().unwrap_or_default(), "layerDigests")?;
                if digest.as_ref().is_some_and(|first| first != &d) {
                    return Err(ApiError::invalid("layerDigests", "Member must name one layer's digest"));
                }
                digest = Some(d);
            }
            let digest = digest.ok_or_else(|| ApiError::invalid("layerDigests", "Member must not be null"))?;
            LayersOp::Complete(name, upload, digest)
        }
    })
}

/// Runs one.
pub async fn run(ctx: &ApiContext<'_>, op: LayersOp) -> Result<Value, ApiError> {
    match op {
        LayersOp::Check(name, digests) => check_layers(ctx, &name, &digests).await,
        LayersOp::DownloadUrl(name, digest) => download_url(ctx, &name, &digest).await,
        LayersOp::Initiate(name) => {
            existing(ctx, &name).await?;
            let id = ctx.registry.upload_start(&name).await?;
            Ok(json!({ "uploadId": id.to_string(), "partSize": PART_SIZE }))
        }
        LayersOp::UploadPart(part) => upload_part(ctx, part).await,
        LayersOp::Complete(name, id, digest) => complete(ctx, &name, &id, &digest).await,
    }
}

async fn existing(ctx: &ApiContext<'_>, name: &RepositoryName) -> Result<(), ApiError> {
    match ctx.registry.repository_settings(name).await? {
        Some(_) => Ok(()),
        None => Err(super::repositories::not_found(ctx, name)),
    }
}

fn upload_not_found(ctx: &ApiContext<'_>, name: &RepositoryName, id: &UploadId) -> ApiError {
    ApiError::new(
        EcrException::UploadNotFound,
        format!(
            "The upload with id '{id}' does not exist in the repository with name '{name}' in the registry with id '{}'",
            ctx.registry_id
        ),
    )
}

/// Appends the part where the upload ends; a part that does not start there is refused with
/// the last byte the upload holds, so the caller can resume.
async fn upload_part(ctx: &ApiContext<'_>, part: Part) -> Result<Value, ApiError> {
    let Part { name, upload, first, blob } = part;
    existing(ctx, &name).await?;
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(blob) }).boxed();
    match ctx.registry.upload_append(&name, &upload, Some(first), body).await {
        Ok(size) => Ok(json!({
            "registryId": ctx.registry_id,
            "repositoryName": name.as_str(),
            "uploadId": upload.to_string(),
            "lastByteReceived": size.saturating_sub(1),
        })),
        Err(Error::RangeMismatch { size, .. }) => {
            let mut e = ApiError::new(
                EcrException::InvalidLayerPart,
                format!("The part starts at byte {first}, but the upload holds {size} bytes: the next part must start at byte {size}"),
            )
            .with("registryId", json!(ctx.registry_id))
            .with("repositoryName", json!(name.as_str()))
            .with("uploadId", json!(upload.to_string()));
            if let Some(last) = size.checked_sub(1) {
                e = e.with("lastValidByteReceived", json!(last));
            }
            Err(e)
        }
        Err(Error::UploadUnknown) => Err(upload_not_found(ctx, &name, &upload)),
        Err(e) => Err(e.into()),
    }
}

/// Checks and stores the layer: `EmptyUploadException` without parts,
/// `LayerAlreadyExistsException` when the repository has it (the upload is dropped),
/// `InvalidLayerException` when the bytes hash to another digest (nothing is stored).
async fn complete(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    id: &UploadId,
    digest: &Digest,
) -> Result<Value, ApiError> {
    existing(ctx, name).await?;
    let held = match ctx.registry.upload_status(name, id).await {
        Ok(n) => n,
        Err(Error::UploadUnknown) => return Err(upload_not_found(ctx, name, id)),
        Err(e) => return Err(e.into()),
    };
    if held == 0 {
        return Err(ApiError::new(
            EcrException::EmptyUpload,
            format!("The upload with id '{id}' has no layer parts: upload at least one before completing it"),
        ));
    }
    match ctx.registry.blob_size(&Repo::Local(name.clone()), digest).await {
        Ok(_) => {
            // Gone already when another request finished or cancelled it meanwhile.
            let _ = ctx.registry.upload_cancel(name, id).await;
            return Err(ApiError::new(
                EcrException::LayerAlreadyExists,
                format!(
                    "The layer with digest '{digest}' already exists in the repository with name '{name}' in the registry with id '{}'",
                    ctx.registry_id
                ),
            ));
        }
        Err(Error::BlobUnknown(_) | Error::NameUnknown(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match ctx.registry.upload_finish(name, id, digest, None, None).await {
        Ok(_) => Ok(json!({
            "registryId": ctx.registry_id,
            "repositoryName": name.as_str(),
            "uploadId": id.to_string(),
            "layerDigest": digest,
        })),
        Err(Error::DigestMismatch { expected, actual }) => Err(ApiError::new(
            EcrException::InvalidLayer,
            format!("The layer digest calculated for the uploaded content is '{actual}', not the '{expected}' given"),
        )),
        Err(Error::UploadUnknown) => Err(upload_not_found(ctx, name, id)),
        Err(e) => Err(e.into()),
    }
}

/// `BatchCheckLayerAvailability`: each digest `AVAILABLE` with its size when the repository
/// links it, else `UNAVAILABLE`; a malformed one is a failure.
async fn check_layers(ctx: &ApiContext<'_>, name: &RepositoryName, digests: &[String]) -> Result<Value, ApiError> {
    existing(ctx, name).await?;
    let (mut layers, mut failures) = (Vec::new(), Vec::new());
    let local = Repo::Local(name.clone());
    for d in digests {
        if d.is_empty() {
            failures.push(json!({ "layerDigest": d, "failureCode": "MissingLayerDigest", "failureReason": "Missing layer digest" }));
            continue;
        }
        let Ok(digest) = Digest::parse(d) else {
            failures.push(json!({ "layerDigest": d, "failureCode": "InvalidLayerDigest", "failureReason": "Invalid layer digest" }));
            continue;
        };
        match ctx.registry.blob_size(&local, &digest).await {
            Ok(size) => layers.push(json!({ "layerDigest": d, "layerAvailability": "AVAILABLE", "layerSize": size })),
            Err(crate::registry::Error::BlobUnknown(_) | crate::registry::Error::NameUnknown(_)) => {
                layers.push(json!({ "layerDigest": d, "layerAvailability": "UNAVAILABLE" }));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(json!({ "layers": layers, "failures": failures }))
}

/// `GetDownloadUrlForLayer`: a presigned URL straight to the bucket when S3 redirects are on,
/// else the registry API's own blob URL (which takes the same credentials as any pull).
async fn download_url(ctx: &ApiContext<'_>, name: &RepositoryName, digest: &Digest) -> Result<Value, ApiError> {
    existing(ctx, name).await?;
    match ctx.registry.blob_size(&Repo::Local(name.clone()), digest).await {
        Ok(_) => {}
        Err(crate::registry::Error::BlobUnknown(_) | crate::registry::Error::NameUnknown(_)) => {
            return Err(ApiError::new(
                EcrException::LayersNotFound,
                format!("The layer with digest '{digest}' does not exist in the repository with name '{name}' in the registry with id '{}'", ctx.registry_id),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let url = match ctx.registry.storage_handle().blob_url(digest).await.map_err(crate::registry::Error::from)? {
        Some(url) => url,
        None => format!("{}/v2/{name}/blobs/{digest}", ctx.proxy_endpoint.trim_end_matches('/')),
    };
    Ok(json!({ "downloadUrl": url, "layerDigest": digest }))
}
