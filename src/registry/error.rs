//! The registry layer's error type; `http` maps it to OCI errors in one place.

use crate::oci::{Digest, RepositoryName};
use crate::storage;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository has no content.
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepositoryName),
    /// The repository does not hold that blob.
    #[error("blob {0} is not known to this repository")]
    BlobUnknown(Digest),
    /// The repository does not hold that manifest or tag.
    #[error("manifest {0} is not known to this repository")]
    ManifestUnknown(String),
    /// No such upload session in this repository.
    #[error("upload session is not known to this repository")]
    UploadUnknown,
    /// The uploaded bytes do not hash to the digest the client gave.
    #[error("the content's digest is {actual}, not {expected}")]
    DigestMismatch {
        /// What the client claimed.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A digest parameter is required and absent or malformed.
    #[error("{0}")]
    DigestInvalid(String),
    /// A chunk does not start where the upload ends.
    #[error("chunk starts at byte {start}, but the upload holds {size} bytes")]
    RangeMismatch {
        /// Where the chunk claimed to start.
        start: u64,
        /// Bytes held so far.
        size: u64,
    },
    /// A length disagrees with the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// The manifest was refused.
    #[error("{0}")]
    ManifestInvalid(String),
    /// The manifest references content the repository lacks.
    #[error("manifest references {0}, which this repository does not hold: push it first")]
    ManifestBlobUnknown(Digest),
    /// The manifest exceeds the size limit.
    #[error("manifest exceeds {0} bytes")]
    ManifestTooLarge(usize),
    /// Deletes are turned off by configuration.
    #[error("deletes are disabled on this registry")]
    DeleteDisabled,
    /// The client's stream failed before the request was complete.
    #[error("the request body ended early: {0}")]
    Incoming(std::io::Error),
    /// The upstream of a pull-through repository failed and nothing cached could stand in.
    #[error("{0}")]
    Upstream(crate::proxy::upstream::Error),
    /// A `Range` outside the blob.
    #[error("the range is not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// The blob's size.
        size: u64,
    },
    /// A pull-through cache miss the caller may not fill from the upstream.
    #[error("not authorized to perform ecr:BatchImportUpstreamImage on {0}: only cached content is served")]
    ImportDenied(RepositoryName),
    /// The repository exists already.
    #[error("The repository with name '{0}' already exists")]
    RepositoryAlreadyExists(RepositoryName),
    /// The repository holds images and was not deleted by force.
    #[error("The repository with name '{0}' cannot be deleted because it still contains images")]
    RepositoryNotEmpty(RepositoryName),
    /// A push would move (or re-push) an immutable tag.
    #[error("The image tag '{tag}' already exists in the '{repository}' repository and cannot be overwritten because the repository is immutable.")]
    TagImmutable {
        /// The tag.
        tag: String,
        /// The repository.
        repository: RepositoryName,
    },
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(storage::Error),
    /// Storing a pull-through fill failed (the error is shared by all its readers).
    #[error("storage failed: {0}")]
    FillStorage(std::sync::Arc<storage::Error>),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        match e {
            storage::Error::Incoming(io) => Self::Incoming(io),
            other => Self::Storage(other),
        }
    }
}

/// The result type of registry operations.
pub type Result<T> = std::result::Result<T, Error>;
