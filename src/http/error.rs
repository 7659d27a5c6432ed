//! The one place where registry errors become OCI errors with a status code.

use crate::oci::{ErrorCode, OciError};
use crate::registry::Error;
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
            Error::DeleteDisabled => OciError::new(ErrorCode::Unsupported, message),
            Error::Incoming(_) => OciError::new(ErrorCode::BlobUploadInvalid, message),
            Error::Storage(_) => OciError::new(ErrorCode::Unavailable, "the registry's storage failed; try again")
                .with_header("Retry-After", "1"),
        }
    }
}
