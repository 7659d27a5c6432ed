//! Copying one image from this registry's storage to one destination: child manifests and
//! blobs first, the manifest last, so the destination never holds a manifest whose content is
//! missing. A blob the destination's repository has is skipped (HEAD); one it holds elsewhere
//! is mounted; anything else is streamed from storage in one PUT (memory does not grow with
//! the blob) and verified by the destination. Tags are set last; a tag the destination keeps
//! immutable is left off, so the image may arrive untagged (as in ECR). Reads storage and the
//! registry's records; writes nothing here.

use super::destination::{CopyError, Destination, Mount};
use crate::metrics::ReplicationMetrics;
use crate::oci::{Digest, Manifest, Reference, RepositoryName, Tag};
use crate::registry::{Registry, Repo};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

/// Deepest nesting of indexes followed (an index of indexes is already rare).
const MAX_DEPTH: u8 = 4;

/// One image's copy to one destination.
pub struct ImageCopy<'a> {
    /// The source registry.
    pub registry: &'a Registry,
    /// Where to.
    pub destination: &'a Destination,
    /// Blobs sent at once.
    pub blobs_at_once: usize,
    /// Counters.
    pub metrics: &'a ReplicationMetrics,
}

fn source_error(e: &crate::registry::Error) -> CopyError {
    match e {
        crate::registry::Error::ManifestUnknown(_)
        | crate::registry::Error::BlobUnknown(_)
        | crate::registry::Error::NameUnknown(_)
        | crate::registry::Error::Storage(crate::storage::Error::NotFound) => CopyError::Permanent {
            code: "SOURCE_IMAGE_GONE",
            message: format!("the image is no longer in the source registry: {e}"),
        },
        crate::registry::Error::Storage(crate::storage::Error::Corrupt(m)) => {
            CopyError::Permanent { code: "SOURCE_CORRUPT", message: m.clone() }
        }
        other => CopyError::Retry { code: "SOURCE_ERROR", message: other.to_string(), retry_after: None },
    }
}

/// What became of an image's tags at a destination it reached.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopiedTags {
    /// Tags that name the image there now.
    pub set: Vec<String>,
    /// Tags the destination refused (it keeps them immutable): the image is there without them.
    pub refused: Vec<String>,
    /// Tags that no longer name the image at the source (a later push owns them).
    pub moved: Vec<String>,
}

impl ImageCopy<'_> {
    /// Copies the manifest `digest` of `name` and sets those of `tags` that still name it at
    /// the source (a tag moved since belongs to a later event); says what became of each tag.
    pub async fn copy(&self, name: &RepositoryName, digest: &Digest, tags: &[String]) -> Result<CopiedTags, CopyError> {
        let repo = name.as_str();
        let mut outcome = CopiedTags::default();
        let mut live_tags = Vec::new();
        for tag in tags {
            let Ok(parsed) = Tag::parse(tag) else { continue };
            let local = Repo::Local(name.clone());
            match self.registry.manifest_record(&local, &Reference::Tag(parsed)).await {
                Ok(r) if &r.digest == digest => live_tags.push(tag.clone()),
                Ok(_) | Err(crate::registry::Error::ManifestUnknown(_)) => outcome.moved.push(tag.clone()),
                Err(e) => return Err(source_error(&e)),
            }
        }
        let present = self.destination.manifest_digest(repo, &digest.to_string()).await?.as_ref() == Some(digest);
        let (media_type, bytes) = self.manifest(name, digest).await?;
        if !present {
            self.copy_references(name, &media_type, &bytes, 0).await?;
        }
        let mut stored = present;
        for tag in live_tags {
            // A tag can name the image there only if the image is there.
            if present && self.destination.manifest_digest(repo, &tag).await?.as_ref() == Some(digest) {
                outcome.set.push(tag);
                continue;
            }
            // Refused as an immutable tag: the image goes in by digest, untagged.
            let accepted = self.destination.put_manifest(repo, &tag, &media_type, bytes.clone()).await?;
            stored |= accepted;
            match accepted {
                true => outcome.set.push(tag),
                false => outcome.refused.push(tag),
            }
        }
        if !stored {
            self.destination.put_manifest(repo, &digest.to_string(), &media_type, bytes).await?;
        }
        Ok(outcome)
    }

    /// A manifest's media type and bytes, from the source.
    async fn manifest(&self, name: &RepositoryName, digest: &Digest) -> Result<(String, Bytes), CopyError> {
        let content = self.registry.stored_manifest(name, digest).await.map_err(|e| source_error(&e))?;
        Ok((content.record.media_type, content.bytes))
    }

    /// Everything a manifest references: its child manifests (each with its own references,
    /// then itself, by digest) and its blobs.
    async fn copy_references(
        &self,
        name: &RepositoryName,
        media_type: &str,
        bytes: &Bytes,
        depth: u8,
    ) -> Result<(), CopyError> {
        let manifest = Manifest::parse(bytes, Some(media_type)).map_err(|e| CopyError::Permanent {
            code: "SOURCE_CORRUPT",
            message: format!("the stored manifest no longer parses: {e}"),
        })?;
        let repo = name.as_str();
        for child in &manifest.children {
            if self.destination.manifest_digest(repo, &child.to_string()).await?.as_ref() == Some(child) {
                continue;
            }
            if depth >= MAX_DEPTH {
                return Err(CopyError::Permanent { code: "REJECTED", message: "indexes nested too deeply".into() });
            }
            let (child_type, child_bytes) = self.manifest(name, child).await?;
            Box::pin(self.copy_references(name, &child_type, &child_bytes, depth.saturating_add(1))).await?;
            self.destination.put_manifest(repo, &child.to_string(), &child_type, child_bytes).await?;
        }
        let mut blobs = manifest.blobs;
        blobs.sort_unstable();
        blobs.dedup();
        futures_util::stream::iter(blobs)
            .map(|d| async move { self.copy_blob(name, &d).await })
            .buffer_unordered(self.blobs_at_once)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// One blob: skipped when there, mounted when the destination holds it elsewhere, else
    /// streamed.
    async fn copy_blob(&self, name: &RepositoryName, digest: &Digest) -> Result<(), CopyError> {
        let repo = name.as_str();
        let label = self.destination.label.as_str();
        if self.destination.has_blob(repo, digest).await? {
            self.metrics.blobs.with_label_values(&[label, "present"]).inc();
            return Ok(());
        }
        let location = match self.destination.mount(repo, digest).await? {
            Mount::Mounted => {
                self.metrics.blobs.with_label_values(&[label, "mounted"]).inc();
                return Ok(());
            }
            Mount::Upload(location) => location,
        };
        let local = Repo::Local(name.clone());
        let content = self.registry.blob_get(&local, digest, None).await.map_err(|e| source_error(&e))?;
        let size = match content.size {
            Some(s) => s,
            None => self.registry.blob_size(&local, digest).await.map_err(|e| source_error(&e))?,
        };
        let sent = self.metrics.bytes.with_label_values(&[label]);
        let body = content.body.inspect_ok(move |chunk| sent.inc_by(chunk.len() as u64));
        self.destination.upload(repo, &location, digest, size, reqwest::Body::wrap_stream(body)).await?;
        self.metrics.blobs.with_label_values(&[label, "uploaded"]).inc();
        Ok(())
    }
}
