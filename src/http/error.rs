//! The one place where registry errors become OCI errors with a status code.

use crate::oci::{ErrorCode, ErrorSource, OciError};
use crate::proxy::upstream;
use crate::registry::Error;
use crate::storage;
use serde_json::json;

impl From<Error> for OciError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::NameUnknown(name) => {
                OciError::new(ErrorCode::NameUnknown, message).with_detail(json!({ "name": name.as_str() }))
            }
            Error::BlobUnknown(d) => OciError::new(ErrorCode::BlobUnknown, message).with_detail(json!({ "digest": d })),
            Error::ManifestUnknown(r) => {
                OciError::new(ErrorCode::ManifestUnknown, message).with_detail(json!({ "reference": r }))
            }
            Error::UploadUnknown => OciError::new(ErrorCode::BlobUploadUnknown, message),
            Error::DigestMismatch { expected, actual } => OciError::new(ErrorCode::DigestInvalid, message)
                .with_detail(json!({ "expected": expected, "actual": actual })),
            Error::DigestInvalid(_) => OciError::new(ErrorCode::DigestInvalid, message),
            Error::RangeMismatch { size, .. } => OciError::new(ErrorCode::RangeInvalid, message)
                .with_header("Range", format!("0-{}", size.saturating_sub(1))),
            Error::SizeInvalid(_) => OciError::new(ErrorCode::SizeInvalid, message),
            Error::ManifestInvalid(_) => OciError::new(ErrorCode::ManifestInvalid, message),
            Error::ManifestBlobUnknown(d) => {
                OciError::new(ErrorCode::ManifestBlobUnknown, message).with_detail(json!({ "digest": d }))
            }
            Error::ManifestTooLarge(_) => OciError::new(ErrorCode::SizeInvalid, message).with_status(413),
            Error::TagImmutable { .. } => OciError::new(ErrorCode::TagInvalid, message),
            Error::ImportDenied(_) => OciError::new(ErrorCode::Denied, message),
            Error::RepositoryAlreadyExists(_) | Error::RepositoryNotEmpty(_) => {
                OciError::new(ErrorCode::Denied, message)
            }
            Error::DeleteDisabled => OciError::new(ErrorCode::Unsupported, message),
            Error::Incoming(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                OciError::new(ErrorCode::BlobUploadInvalid, message).with_status(408).with_header("Connection", "close")
            }
            Error::Incoming(_) => OciError::new(ErrorCode::BlobUploadInvalid, message),
            Error::RangeNotSatisfiable { size } => {
                OciError::new(ErrorCode::RangeInvalid, message).with_header("Content-Range", format!("bytes */{size}"))
            }
            Error::Upstream(e) => upstream_error(e),
            Error::Storage(e) => storage_error(&e),
            Error::FillStorage(e) => storage_error(&e),
        }
    }
}

/// A storage failure: corrupt content is a server error that says so (retrying will not help);
/// throttling and other failures are worth a retry.
fn storage_error(e: &storage::Error) -> OciError {
    let e = match e {
        storage::Error::Corrupt(what) => {
            OciError::new(ErrorCode::Unknown, format!("stored content is corrupt and is not served: {what}"))
        }
        storage::Error::Throttled { .. } => {
            OciError::new(ErrorCode::Unavailable, "the registry's storage is throttling requests; try again shortly")
                .with_header("Retry-After", "2")
        }
        _ => OciError::new(ErrorCode::Unavailable, "the registry's storage failed; try again")
            .with_header("Retry-After", "1"),
    };
    e.from_source(ErrorSource::Storage)
}

/// An upstream failure with nothing cached to stand in: 429 when the upstream rate-limited
/// Ferry (passing on its `Retry-After`), else 502 saying which upstream failed and how.
fn upstream_error(e: upstream::Error) -> OciError {
    let message = e.to_string();
    let e = match e {
        upstream::Error::RateLimited { retry_after, .. } => OciError::new(ErrorCode::Toomanyrequests, message)
            .with_header("Retry-After", retry_after.unwrap_or(60).to_string()),
        upstream::Error::NotFound => OciError::new(ErrorCode::ManifestUnknown, message),
        upstream::Error::Unauthorized(..) => OciError::new(ErrorCode::Denied, message).with_status(502),
        upstream::Error::Unreachable(..) | upstream::Error::Failed(..) | upstream::Error::Invalid(..) => {
            OciError::new(ErrorCode::Unavailable, message).with_status(502)
        }
    };
    e.from_source(ErrorSource::Upstream)
}
