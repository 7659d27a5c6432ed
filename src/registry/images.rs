//! Images as lifecycle policies and cache eviction see them: each manifest a repository holds,
//! with its tags, push and pull times, what it references and what refers to it; and expiring
//! one (its tags, referrer entry, pull record and link), re-checked just before, so an image a
//! push re-tagged since it was judged is left for the next run.

use super::manifests::{decode, ManifestRecord};
use super::{Registry, Result};
use crate::oci::{Digest, Manifest, MediaType, RepositoryName};
use crate::storage::{self, Key};

/// Links read at once for a page of images.
const READS_AT_ONCE: usize = 16;

/// One manifest a repository holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The manifest's own size.
    pub manifest_size: u64,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// When it was first pushed or cached (ms since the epoch), when known.
    pub pushed_at_ms: Option<u64>,
    /// When it was last pulled, as recorded (or noted by this replica and not yet written).
    pub last_pulled_ms: Option<u64>,
    /// The manifest it refers to (signatures, SBOMs), if any.
    pub subject: Option<Digest>,
    /// The manifests it lists (an index).
    pub children: Vec<Digest>,
    /// The blobs it references (config and layers).
    pub blobs: Vec<Digest>,
    /// ECR's image size, from the index (absent for a pull-through image: measure what is
    /// cached).
    pub image_size: Option<u64>,
}

/// One image as the ECR image operations describe it, read from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// ECR's image size.
    pub image_size: u64,
    /// When it was first pushed or cached (ms since the epoch), when known.
    pub pushed_at_ms: Option<u64>,
    /// When it was last pulled.
    pub last_pulled_ms: Option<u64>,
    /// The manifest it refers to, if any.
    pub subject: Option<Digest>,
}

impl Registry {
    /// One image of `name` from the index: its link and its pull time (a pull-through image,
    /// whose size the index does not keep, is measured from what is cached). `None` when the
    /// repository does not hold it.
    pub async fn image_summary(&self, name: &RepositoryName, digest: &Digest) -> Result<Option<ImageSummary>> {
        self.ensure_indexed(name).await?;
        let Some(bytes) = self.storage.record_get(&Key::manifest_link(name, digest)).await? else { return Ok(None) };
        let record: ManifestRecord = decode(&bytes)?;
        let image_size = match record.image_size {
            Some(size) => size,
            None => self.measure_image(name, digest, &record.media_type).await?.0,
        };
        Ok(Some(ImageSummary {
            last_pulled_ms: self.last_pulled(name, digest, &record).await?,
            digest: digest.clone(),
            media_type: record.media_type,
            tags: record.tags.unwrap_or_default(),
            image_size,
            pushed_at_ms: record.pushed_at_ms,
            subject: record.subject,
        }))
    }

    /// One page of the repository's images from the index, in digest order after the digest
    /// whose hex is `after`: one listing and one read per image, and whether more follow.
    /// `NameUnknown` when the repository does not exist.
    pub async fn images_page(
        &self,
        name: &RepositoryName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ImageSummary>, bool)> {
        self.ensure_indexed(name).await?;
        let page = self.storage.record_list_page(&Key::manifest_links(name), after, limit).await?;
        if page.names.is_empty() && !self.repository_exists(name).await? {
            return Err(super::Error::NameUnknown(name.clone()));
        }
        // The links are read a few at once (each waits on storage, an S3 round trip), in order.
        let digests: Vec<Digest> =
            page.names.iter().filter_map(|hex| Digest::parse(&format!("sha256:{hex}")).ok()).collect();
        let mut out = Vec::with_capacity(digests.len());
        for chunk in digests.chunks(READS_AT_ONCE) {
            let reads = futures_util::future::join_all(chunk.iter().map(|d| self.image_summary(name, d))).await;
            for image in reads {
                // A link deleted since the listing is simply not on the page.
                out.extend(image?);
            }
        }
        Ok((out, page.more))
    }

    /// When the image was last pulled: as recorded (in its indexed link, or the pull record of
    /// a link not indexed yet), or as noted by this replica and not yet written, whichever is
    /// later.
    async fn last_pulled(&self, name: &RepositoryName, digest: &Digest, link: &ManifestRecord) -> Result<Option<u64>> {
        let recorded = match link.tags {
            Some(_) => link.last_pulled_ms,
            None => self.pulls.read(name, digest).await?,
        };
        Ok(match (recorded, self.pulls.pending(name, digest)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    /// Every manifest `name` holds, with its tags (from the index), times and references.
    /// Costs two reads per manifest (its link and its bytes); a manifest whose bytes are gone
    /// or do not parse is listed without references.
    pub async fn repository_images(&self, name: &RepositoryName) -> Result<Vec<StoredImage>> {
        self.images(name, true).await
    }

    /// Every manifest `name` holds as the index knows it (tags, times, subject), with the
    /// children of image indexes but not the blobs of images: one listing and one read per
    /// image (two for an image index). What lifecycle policies judge.
    pub async fn indexed_images(&self, name: &RepositoryName) -> Result<Vec<StoredImage>> {
        self.images(name, false).await
    }

    async fn images(&self, name: &RepositoryName, content: bool) -> Result<Vec<StoredImage>> {
        self.ensure_indexed(name).await?;
        let digests = storage::records::sha256_names(self.storage.as_ref(), &Key::manifest_links(name)).await?;
        // A few at once (each waits on storage, an S3 round trip), in order.
        let mut images = Vec::with_capacity(digests.len());
        for chunk in digests.chunks(READS_AT_ONCE) {
            let reads = futures_util::future::join_all(chunk.iter().map(|d| self.stored_image(name, d, content))).await;
            for image in reads {
                images.extend(image?);
            }
        }
        Ok(images)
    }

    /// One image as [`Self::images`] lists it; `None` when its link is gone.
    async fn stored_image(&self, name: &RepositoryName, digest: &Digest, content: bool) -> Result<Option<StoredImage>> {
        let Some(bytes) = self.storage.record_get(&Key::manifest_link(name, digest)).await? else { return Ok(None) };
        let record: ManifestRecord = decode(&bytes)?;
        // An indexed link names its subject; only an index's children need its bytes.
        let is_index = MediaType::parse(&record.media_type).is_some_and(MediaType::is_index);
        let parsed = match content || is_index || record.tags.is_none() {
            false => None,
            true => match self.storage.blob_read_small(digest).await {
                Ok(b) => Manifest::parse(&b, Some(&record.media_type)).ok(),
                Err(storage::Error::NotFound) => None,
                Err(e) => return Err(e.into()),
            },
        };
        let last_pulled_ms = self.last_pulled(name, digest, &record).await?;
        let mut image_tags = record.tags.clone().unwrap_or_default();
        image_tags.sort_unstable();
        Ok(Some(StoredImage {
            image_size: record.image_size,
            tags: image_tags,
            pushed_at_ms: record.pushed_at_ms,
            last_pulled_ms,
            media_type: record.media_type,
            manifest_size: record.size,
            subject: match &parsed {
                Some(m) => m.subject.as_ref().map(|s| s.digest.clone()),
                None => record.subject.clone(),
            },
            children: parsed.as_ref().map(|m| m.children.clone()).unwrap_or_default(),
            blobs: parsed.map(|m| m.blobs).unwrap_or_default(),
            digest: digest.clone(),
        }))
    }

    /// The stored size of a blob the repository links (0 when it is not linked).
    pub async fn linked_blob_size(&self, name: &RepositoryName, digest: &Digest) -> Result<u64> {
        Ok(match self.storage.record_get(&Key::blob_link(name, digest)).await? {
            Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
            None => 0,
        })
    }

    /// Expires an image judged with `tags`: removes its tags, referrer entry, pull record and
    /// link, regardless of `registry.delete_enabled` (a policy the owner set does it). Returns
    /// false, removing nothing, when its tags changed since it was judged.
    pub async fn expire_image(&self, name: &RepositoryName, digest: &Digest, tags: &[String]) -> Result<bool> {
        self.ensure_indexed(name).await?;
        let Some(link) = self.storage.record_get(&Key::manifest_link(name, digest)).await? else { return Ok(false) };
        let mut now: Vec<String> = decode::<ManifestRecord>(&link)?.tags.unwrap_or_default();
        now.sort_unstable();
        if now != tags {
            return Ok(false);
        }
        self.remove_manifest(name, digest).await?;
        self.notify_delete(name, digest, tags.first().map(String::as_str), true).await?;
        Ok(true)
    }
}
