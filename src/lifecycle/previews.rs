//! Lifecycle policy previews' records (`repos/<name>/_lifecycle-preview`): one per
//! repository, read with its version and written conditionally, so at most one preview per
//! repository is in progress across replicas (ECR's `LifecyclePolicyPreviewInProgressException`).
//! The record's content is the API's; this module owns where it lives and how it is changed.

use crate::oci::RepositoryName;
use crate::storage::{self, Key, PutMode, Storage, Version};
use bytes::Bytes;

/// The repository's last preview record, with its version.
pub async fn get(storage: &dyn Storage, name: &RepositoryName) -> storage::Result<Option<(Bytes, Version)>> {
    storage.record_get_versioned(&Key::lifecycle_preview(name)).await
}

/// Writes the preview record conditionally (`Conflict` when another writer got there first).
pub async fn put(
    storage: &dyn Storage,
    name: &RepositoryName,
    record: Bytes,
    mode: PutMode,
) -> storage::Result<Version> {
    storage.record_put_if(&Key::lifecycle_preview(name), record, mode).await
}
