//! `[storage]`, `[storage.s3]` and `[hot_tier]`: where content is kept, and what is kept in
//! memory in front of it.

use super::secret::Secret;
use super::units::{ByteSize, HumanDuration};
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The storage backend.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The local filesystem under `data_dir`.
    #[default]
    Fs,
    /// One S3 bucket, shareable by several Ferry replicas.
    S3,
}

/// `[storage.s3]`: where the S3 backend keeps everything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name. Required with `backend = "s3"`.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `"ferry/"`. Default `""`.
    pub prefix: String,
    /// Region. Default `"us-east-1"`.
    pub region: String,
    /// Endpoint URL of an S3-compatible service. Default `""` (AWS).
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible services need. Default `false`.
    pub force_path_style: bool,
    /// Access key id; empty uses the standard AWS credential chain. Default `""`.
    pub access_key_id: String,
    /// Secret access key (or `secret_access_key_file`, or `FERRY_STORAGE_S3_SECRET_ACCESS_KEY`). Default `""`.
    pub secret_access_key: Secret,
    /// File holding the secret access key. Default `""`.
    pub secret_access_key_file: String,
    /// Server-side encryption: `""`, `"AES256"` or `"aws:kms"`. Default `""`.
    pub sse: String,
    /// KMS key for `sse = "aws:kms"`. Default `""`.
    pub kms_key_id: String,
    /// Size of the parts blobs are uploaded in (at least 5MiB). Default `"16MiB"`.
    pub part_size: ByteSize,
    /// Blob GETs answer 307 with a presigned S3 URL, so clients download straight from S3 as
    /// ECR's layer downloads do. Default `false`.
    pub redirect: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            force_path_style: false,
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            secret_access_key_file: String::new(),
            sse: String::new(),
            kms_key_id: String::new(),
            part_size: ByteSize(16 << 20),
            redirect: false,
        }
    }
}

/// `[hot_tier]`: an in-memory cache of small immutable content in front of storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HotTierConfig {
    /// Capacity, weighted by bytes; `"0"` turns the hot tier off. Default `"256MiB"`.
    pub max_bytes: ByteSize,
    /// Larger blobs always stream from storage. Default `"4MiB"`.
    pub max_object_bytes: ByteSize,
    /// How long a tag lookup may be served from memory; `"0s"` (default) never caches tags,
    /// so replicas sharing a bucket agree at once.
    pub tag_ttl: HumanDuration,
}

impl Default for HotTierConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(256 << 20),
            max_object_bytes: ByteSize(4 << 20),
            tag_ttl: HumanDuration(Duration::ZERO),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"fs"` (the default) or `"s3"`.
    pub backend: Backend,
    /// Directory of the filesystem backend. Default `"./data"`.
    pub data_dir: PathBuf,
    /// The S3 backend's settings.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { backend: Backend::Fs, data_dir: PathBuf::from("./data"), s3: S3Config::default() }
    }
}

impl StorageConfig {
    /// Checks the data directory and, with `backend = "s3"`, the bucket settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.data_dir",
                message: "give a directory for the data".into(),
            });
        }
        if self.backend == Backend::S3 {
            self.s3.validate()?;
        }
        Ok(())
    }
}

impl S3Config {
    /// Checks the bucket, part size, encryption and credentials.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bucket.len() < 3 {
            return Err(ConfigError::Invalid {
                key: "storage.s3.bucket",
                message: "give the bucket's name (at least 3 characters)".into(),
            });
        }
        if self.part_size.0 < 5 << 20 || self.part_size.0 > 5 << 30 {
            return Err(ConfigError::Invalid {
                key: "storage.s3.part_size",
                message: "must be between 5MiB and 5GiB (S3's part limits)".into(),
            });
        }
        if !["", "AES256", "aws:kms"].contains(&self.sse.as_str()) {
            return Err(ConfigError::Invalid {
                key: "storage.s3.sse",
                message: format!("{:?} must be \"\", \"AES256\" or \"aws:kms\"", self.sse),
            });
        }
        if !self.access_key_id.is_empty() && self.resolved_secret()?.is_none() {
            return Err(ConfigError::Invalid {
                key: "storage.s3.secret_access_key",
                message: "access_key_id is set: set secret_access_key, secret_access_key_file or FERRY_STORAGE_S3_SECRET_ACCESS_KEY".into(),
            });
        }
        Ok(())
    }

    /// The secret access key from `secret_access_key` (or its environment variable), else
    /// `secret_access_key_file`.
    pub fn resolved_secret(&self) -> Result<Option<String>, ConfigError> {
        super::secret::resolve(
            &self.secret_access_key,
            &self.secret_access_key_file,
            "storage.s3.secret_access_key_file",
        )
    }
}
