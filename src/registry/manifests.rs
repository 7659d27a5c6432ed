//! Manifests, tags and referrers: a manifest is stored only after everything it references
//! exists in the repository, and a tag moves with one small write after that.

use super::outbox::{ImageAction, ImageEvent, PushOrigin};
use super::{paginate, Error, Page, Registry, Repo, Result};
use crate::oci::manifest::{ManifestError, MAX_MANIFEST_BYTES};
use crate::oci::{Descriptor, Digest, DigestAlgorithm, Hasher, Manifest, Reference, RepositoryName, Tag};
use crate::storage::{self, Key};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How many of a manifest's references are looked up at once.
const REFERENCE_CHECKS_AT_ONCE: usize = 16;

/// What a manifest link and a tag record hold: enough to answer a HEAD with one read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type, served as `Content-Type`.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// For pull-through tags: when the upstream last confirmed it (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at_ms: Option<u64>,
    /// When the image was first pushed (or cached) into this repository, ms since the epoch:
    /// a retag or re-push keeps it, as lifecycle's `sinceImagePushed` expects. Absent only on
    /// records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_at_ms: Option<u64>,
    /// The image index (manifest links only, see [`super::index`]): the tags that name this
    /// manifest, sorted. Absent on tag records, and on links written before the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// The image index: ECR's `imageSizeInBytes` (its blobs' stored sizes; for an index, its
    /// largest child's), worked out when the manifest was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// The image index: the manifest it refers to (signatures, SBOMs), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    /// The image index: when the image was last pulled, as flushed by [`super::pulls`] (ms
    /// since the epoch). On a link without `tags` (not indexed yet) the pull record holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pulled_ms: Option<u64>,
}

impl ManifestRecord {
    /// A record of `digest` with no times and no index fields.
    pub fn new(digest: Digest, media_type: String, size: u64) -> Self {
        Self {
            digest,
            media_type,
            size,
            fetched_at_ms: None,
            pushed_at_ms: None,
            tags: None,
            image_size: None,
            subject: None,
            last_pulled_ms: None,
        }
    }

    /// What a tag record holds: this record without the index's fields.
    pub fn for_tag(&self) -> Self {
        Self { tags: None, image_size: None, subject: None, last_pulled_ms: None, ..self.clone() }
    }
}

/// A manifest read for a GET.
#[derive(Debug, Clone)]
pub struct ManifestContent {
    /// Digest, media type and size.
    pub record: ManifestRecord,
    /// The bytes exactly as pushed.
    pub bytes: Bytes,
}

/// The outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// The subject it refers to, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
}

fn digest_of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish()
}

/// Decodes a stored record ([`storage::records::decode`]).
pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    Ok(storage::records::decode(bytes)?)
}

/// Encodes a record ([`storage::records::encode`]).
pub(super) fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    Ok(storage::records::encode(value)?)
}

impl Registry {
    /// Stores a manifest under its digest (and the tag, when the reference is one).
    pub async fn manifest_put(
        &self,
        name: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        origin: PushOrigin,
    ) -> Result<StoredManifest> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::ManifestTooLarge(MAX_MANIFEST_BYTES));
        }
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = digest_of(expected.algorithm(), &bytes);
                if &actual != expected {
                    return Err(Error::DigestMismatch { expected: expected.clone(), actual });
                }
                actual
            }
            Reference::Tag(_) => digest_of(DigestAlgorithm::Sha256, &bytes),
        };
        let manifest = Manifest::parse(&bytes, content_type).map_err(|e| match e {
            ManifestError::Json(m) | ManifestError::MediaType(m) | ManifestError::Invalid(m) => {
                Error::ManifestInvalid(m)
            }
        })?;
        // References are checked, touched (so no collector removes them from now on), and
        // checked again: one a collector removed between the first check and the touch is
        // caught by the second. The first check keeps a manifest naming blobs that do not exist
        // from writing a use record (or a replication event) for each. Everything else that
        // must happen before the commit (the immutability check, the replication event) comes
        // before the touch, so the touch is as young as it can be when the manifest lands: a
        // collection that starts a grace period after the touch no longer respects it.
        self.check_references(name, &manifest).await?;
        // An immutable tag that exists refuses the push before anything is stored (an identical
        // re-push too, as in ECR); racing pushes are settled by the conditional write below.
        let immutable = match reference {
            Reference::Tag(tag) => {
                let settings = self.repository_settings(name).await?.unwrap_or_default();
                let immutable = settings.tag_is_immutable(tag);
                if immutable && self.storage.record_get(&Key::tag(name, tag)).await?.is_some() {
                    return Err(Error::TagImmutable { tag: tag.to_string(), repository: name.clone() });
                }
                immutable
            }
            Reference::Digest(_) => false,
        };
        // Durable with every consumer before anything of the push is stored.
        let event = ImageEvent {
            action: ImageAction::Push,
            repository: name.clone(),
            digest: digest.clone(),
            tag: match reference {
                Reference::Tag(t) => Some(t.to_string()),
                Reference::Digest(_) => None,
            },
            origin,
            removes_manifest: false,
        };
        let recorded = self.outbox.record(&event).await?;
        self.touch_references(&manifest).await?;
        let image_size = self.check_references(name, &manifest).await?;
        let record = ManifestRecord {
            pushed_at_ms: Some(self.clock.now_ms()),
            tags: Some(Vec::new()),
            image_size: Some(image_size),
            subject: manifest.subject.as_ref().map(|s| s.digest.clone()),
            ..ManifestRecord::new(digest.clone(), manifest.media_type.as_str().to_owned(), bytes.len() as u64)
        };
        self.uses.touch(&digest).await?;
        self.storage.blob_put_small(&digest, bytes).await?;
        // Keeps the tags the link has, and when the image was first pushed (a retag keeps it).
        let record = self.write_link(name, record).await?;
        if let Some(subject) = &manifest.subject {
            let descriptor = Descriptor {
                media_type: record.media_type.clone(),
                digest: digest.clone(),
                size: record.size,
                urls: None,
                artifact_type: manifest.artifact_type.clone(),
                annotations: manifest.annotations.clone(),
                platform: None,
            };
            self.storage.record_put(&Key::referrer(name, &subject.digest, &digest), encode(&descriptor)?).await?;
        }
        self.ensure_repository(name).await?;
        if let Reference::Tag(tag) = reference {
            // Conditional: of two replicas racing to create an immutable tag exactly one wins.
            self.set_tag(name, tag, &record, immutable).await?;
        }
        self.outbox.committed(recorded);
        Ok(StoredManifest { digest, subject: manifest.subject.map(|s| s.digest) })
    }

    /// Checks that everything the manifest references is in the repository: each distinct
    /// digest once, a few at a time, so a manifest listing one layer 25,000 times costs one
    /// lookup and a manifest of many costs bounded memory. Returns the image's size as ECR
    /// reports it (its blobs' stored sizes, each as often as listed; for an index, its largest
    /// child's), from the links it read.
    async fn check_references(&self, name: &RepositoryName, manifest: &Manifest) -> Result<u64> {
        let mut blob_uses: BTreeMap<&Digest, u64> = BTreeMap::new();
        for d in &manifest.blobs {
            let n = blob_uses.entry(d).or_insert(0);
            *n = n.saturating_add(1);
        }
        let children: BTreeSet<&Digest> = manifest.children.iter().collect();
        let keys: Vec<(Key, Digest, u64, bool)> = blob_uses
            .into_iter()
            .map(|(d, n)| (Key::blob_link(name, d), d.clone(), n, true))
            .chain(children.into_iter().map(|d| (Key::manifest_link(name, d), d.clone(), 1, false)))
            .collect();
        let storage = self.storage.clone();
        let sizes: Vec<(u64, bool)> = futures_util::stream::iter(keys)
            .map(move |(key, d, uses, blob)| {
                let storage = storage.clone();
                async move {
                    let Some(value) = storage.record_get(&key).await? else {
                        return Err(Error::ManifestBlobUnknown(d));
                    };
                    let size = match blob {
                        true => std::str::from_utf8(&value).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0),
                        false => decode::<ManifestRecord>(&value).ok().and_then(|r| r.image_size).unwrap_or(0),
                    };
                    Ok((size.saturating_mul(uses), blob))
                }
            })
            .buffer_unordered(REFERENCE_CHECKS_AT_ONCE)
            .try_collect()
            .await?;
        let blobs = sizes.iter().filter(|(_, blob)| *blob).fold(0u64, |sum, (s, _)| sum.saturating_add(*s));
        let largest_child = sizes.iter().filter(|(_, blob)| !*blob).map(|(s, _)| *s).max().unwrap_or(0);
        Ok(blobs.max(largest_child))
    }

    /// Marks everything the manifest references as in use (see [`crate::storage::uses`]).
    async fn touch_references(&self, manifest: &Manifest) -> Result<()> {
        let digests: BTreeSet<Digest> = manifest.blobs.iter().chain(manifest.children.iter()).cloned().collect();
        let uses = self.uses.clone();
        futures_util::stream::iter(digests)
            .map(move |d| {
                let uses = uses.clone();
                async move { uses.touch(&d).await.map_err(Error::from) }
            })
            .buffer_unordered(REFERENCE_CHECKS_AT_ONCE)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    /// Digest, media type and size of a manifest, without its bytes (for HEAD).
    pub async fn manifest_record(&self, repo: &Repo, reference: &Reference) -> Result<ManifestRecord> {
        match repo {
            Repo::Local(name) => self.local_manifest_record(name, reference).await,
            Repo::Proxied(route) => self.pull_through_manifest(route, reference).await,
        }
    }

    async fn local_manifest_record(&self, name: &RepositoryName, reference: &Reference) -> Result<ManifestRecord> {
        let key = match reference {
            Reference::Tag(t) => Key::tag(name, t),
            Reference::Digest(d) => Key::manifest_link(name, d),
        };
        match self.storage.record_get(&key).await? {
            Some(v) => decode(&v),
            None => Err(self.unknown(name, Error::ManifestUnknown(reference.to_string())).await),
        }
    }

    /// A manifest's bytes, exactly as pushed.
    pub async fn manifest_get(&self, repo: &Repo, reference: &Reference) -> Result<ManifestContent> {
        let record = self.manifest_record(repo, reference).await?;
        let content = self.manifest_bytes(record, reference).await?;
        // Noted in memory only; a worker writes it (see `pulls`).
        self.pulls.note(repo.name(), &content.record.digest, self.clock.now_ms());
        Ok(content)
    }

    /// A manifest this registry holds, read for copying elsewhere: not a pull, so not noted
    /// as one (lifecycle's `sinceImagePulled` sees clients only).
    pub async fn stored_manifest(&self, name: &RepositoryName, digest: &Digest) -> Result<ManifestContent> {
        let reference = Reference::Digest(digest.clone());
        let record = self.local_manifest_record(name, &reference).await?;
        self.manifest_bytes(record, &reference).await
    }

    async fn manifest_bytes(&self, record: ManifestRecord, reference: &Reference) -> Result<ManifestContent> {
        let bytes = self.storage.blob_read_small(&record.digest).await.map_err(|e| match e {
            storage::Error::NotFound => Error::ManifestUnknown(reference.to_string()),
            e => e.into(),
        })?;
        // The read checked the bytes against the digest; the record must agree on the size.
        if bytes.len() as u64 != record.size {
            return Err(Error::Storage(storage::Error::Corrupt(format!(
                "the stored bytes of manifest {} do not hash to it",
                record.digest
            ))));
        }
        Ok(ManifestContent { record, bytes })
    }

    /// Deletes a tag (by tag), or a manifest with its tags and referrer entry (by digest).
    pub async fn manifest_delete(&self, name: &RepositoryName, reference: &Reference) -> Result<()> {
        if !self.settings.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        let digest = match reference {
            Reference::Tag(tag) => {
                let Some(record) = self.unset_tag(name, tag).await? else {
                    return Err(self.unknown(name, Error::ManifestUnknown(tag.to_string())).await);
                };
                if self.outbox.wants(ImageAction::Delete, name) {
                    self.notify_delete(name, &record.digest, Some(tag.as_str()), false).await?;
                }
                return Ok(());
            }
            Reference::Digest(d) => d,
        };
        self.local_manifest_record(name, reference).await?;
        self.remove_manifest(name, digest).await?;
        self.notify_delete(name, digest, None, true).await
    }

    /// Tells the outbox's consumers of a delete that is done: of `tag`, or (`removes_manifest`)
    /// of the manifest itself.
    pub(super) async fn notify_delete(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        tag: Option<&str>,
        removes_manifest: bool,
    ) -> Result<()> {
        let event = ImageEvent {
            action: ImageAction::Delete,
            repository: name.clone(),
            digest: digest.clone(),
            tag: tag.map(str::to_owned),
            origin: PushOrigin::Client,
            removes_manifest,
        };
        let recorded = self.outbox.record(&event).await?;
        self.outbox.committed(recorded);
        Ok(())
    }

    /// Whether the manifest link `name` holds for `digest` exists (its push committed).
    pub async fn holds_manifest(&self, name: &RepositoryName, digest: &Digest) -> Result<bool> {
        Ok(self.storage.record_get(&Key::manifest_link(name, digest)).await?.is_some())
    }

    /// Removes a manifest from a repository: its referrer entry, the tags on it, its pull
    /// record and its link (the content stays for the collector).
    pub(super) async fn remove_manifest(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        let record = match self.storage.record_get(&Key::manifest_link(name, digest)).await? {
            Some(v) => decode::<ManifestRecord>(&v)?,
            None => return Ok(()),
        };
        let subject = match (&record.subject, record.image_size) {
            // An indexed link says whether it has a subject (`image_size` marks it indexed).
            (subject, Some(_)) => subject.clone(),
            (_, None) => match self.storage.blob_read_small(digest).await {
                Ok(bytes) => {
                    Manifest::parse(&bytes, Some(&record.media_type)).ok().and_then(|m| m.subject).map(|s| s.digest)
                }
                Err(_) => None,
            },
        };
        if let Some(subject) = subject {
            self.storage.record_delete(&Key::referrer(name, &subject, digest)).await?;
        }
        // The index names the tags on it; a repository not indexed yet is walked.
        let tags = match (&record.tags, self.is_indexed(name).await?) {
            (Some(tags), true) => tags.clone(),
            _ => self.storage.record_list(&Key::tags(name)).await?,
        };
        for tag in tags {
            let Ok(tag) = Tag::parse(&tag) else { continue };
            let key = Key::tag(name, &tag);
            if let Some(v) = self.storage.record_get(&key).await? {
                if decode::<ManifestRecord>(&v).map(|r| &r.digest == digest).unwrap_or(false) {
                    self.storage.record_delete(&key).await?;
                }
            }
        }
        self.storage.record_delete(&Key::manifest_link(name, digest)).await?;
        self.storage.record_delete(&Key::image_pull(name, digest)).await?;
        Ok(())
    }

    /// The repository's tags, sorted, one page after `last`.
    pub async fn tags_list(&self, repo: &Repo, n: Option<usize>, last: Option<&str>) -> Result<Page<String>> {
        let tags = match repo {
            Repo::Proxied(route) => self.pull_through_tags(route).await?,
            Repo::Local(name) => {
                if !self.repository_exists(name).await? {
                    return Err(Error::NameUnknown(name.clone()));
                }
                // One page read from storage, whatever the repository holds.
                let limit = n.unwrap_or(super::MAX_PAGE).min(super::MAX_PAGE);
                let page = self.storage.record_list_page(&Key::tags(name), last, limit).await?;
                let items = page.names.into_iter().filter(|t| Tag::parse(t).is_ok()).collect();
                return Ok(Page { items, more: page.more });
            }
        };
        let mut tags: Vec<String> = tags.into_iter().filter(|t| Tag::parse(t).is_ok()).collect();
        tags.sort_unstable();
        Ok(paginate(tags, n, last))
    }

    /// Descriptors of the manifests whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &Repo,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let name = repo.name();
        if !self.repository_exists(name).await? {
            return Err(Error::NameUnknown(name.clone()));
        }
        let mut out = Vec::new();
        for entry in self.storage.record_list(&Key::referrers(name, subject)).await? {
            let Ok(referrer) = Digest::parse(&entry) else { continue };
            let Some(v) = self.storage.record_get(&Key::referrer(name, subject, &referrer)).await? else {
                continue;
            };
            let descriptor: Descriptor = decode(&v)?;
            if artifact_type.is_none_or(|t| descriptor.artifact_type.as_deref() == Some(t)) {
                out.push(descriptor);
            }
        }
        Ok(out)
    }
}
