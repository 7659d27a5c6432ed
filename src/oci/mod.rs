//! The OCI vocabulary: digests, repository names, tags, references, media types,
//! manifest parsing and the spec's error codes. Knows nothing of HTTP or storage.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Digest, DigestAlgorithm, Hasher};
pub use error::{ErrorCode, ErrorSource, OciError};
pub use manifest::{Descriptor, Manifest, MediaType};
pub use name::{Reference, RepositoryName, Tag};
