//! Repositories as resources: each repository's settings record (created-at, tag mutability
//! with its exclusion filters, scan-on-push, encryption, resource tags, repository policy),
//! creating, describing and deleting repositories, and the tag-immutability rule manifest pushes
//! obey. A repository pushed before it had a settings record has the defaults.

use super::{Error, Registry, Result};
use crate::oci::{RepositoryName, Tag};
use crate::storage::{Key, PutMode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wildmatch::WildMatchPattern;

/// ECR's tag mutability settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagMutability {
    /// Tags move freely.
    #[default]
    Mutable,
    /// A tag, once pushed, never moves (nor is it pushed again).
    Immutable,
    /// Immutable, except tags matching an exclusion filter.
    ImmutableWithExclusion,
    /// Mutable, except tags matching an exclusion filter, which are immutable.
    MutableWithExclusion,
}

impl TagMutability {
    /// Parses ECR's enum value.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// ECR's enum value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutable => "MUTABLE",
            Self::Immutable => "IMMUTABLE",
            Self::ImmutableWithExclusion => "IMMUTABLE_WITH_EXCLUSION",
            Self::MutableWithExclusion => "MUTABLE_WITH_EXCLUSION",
        }
    }
}

/// A resource tag (`Key`, `Value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceTag {
    /// Up to 128 characters.
    #[serde(rename = "Key")]
    pub key: String,
    /// Up to 256 characters.
    #[serde(rename = "Value")]
    pub value: String,
}

/// What a repository's settings record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySettings {
    /// When it was created (seconds since the epoch; 0 for one pushed before settings existed).
    #[serde(default)]
    pub created_at: u64,
    /// Tag mutability.
    #[serde(default)]
    pub image_tag_mutability: TagMutability,
    /// Up to 5 `WILDCARD` filters for the `_WITH_EXCLUSION` settings.
    #[serde(default)]
    pub mutability_exclusions: Vec<String>,
    /// Scan on push (kept for the API; no scanner yet).
    #[serde(default)]
    pub scan_on_push: bool,
    /// `AES256` (the default), `KMS` or `KMS_DSSE`.
    #[serde(default = "default_encryption")]
    pub encryption_type: String,
    /// The KMS key, for the KMS types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// Resource tags.
    #[serde(default)]
    pub tags: Vec<ResourceTag>,
    /// The repository policy's text, as set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The lifecycle policy's text, as put (validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_policy: Option<String>,
    /// When a lifecycle run last evaluated the policy (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_evaluated_at: Option<u64>,
}

fn default_encryption() -> String {
    "AES256".into()
}

impl Default for RepositorySettings {
    fn default() -> Self {
        Self {
            created_at: 0,
            image_tag_mutability: TagMutability::Mutable,
            mutability_exclusions: Vec::new(),
            scan_on_push: false,
            encryption_type: default_encryption(),
            kms_key: None,
            tags: Vec::new(),
            policy: None,
            lifecycle_policy: None,
            lifecycle_evaluated_at: None,
        }
    }
}

impl RepositorySettings {
    /// Whether a push may not move (or re-push) `tag`.
    pub fn tag_is_immutable(&self, tag: &Tag) -> bool {
        let excluded =
            || self.mutability_exclusions.iter().any(|f| WildMatchPattern::<'*', '?'>::new(f).matches(tag.as_str()));
        match self.image_tag_mutability {
            TagMutability::Mutable => false,
            TagMutability::Immutable => true,
            TagMutability::ImmutableWithExclusion => !excluded(),
            TagMutability::MutableWithExclusion => excluded(),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<RepositorySettings> {
    super::manifests::decode(bytes)
}

fn encode(settings: &RepositorySettings) -> Result<Bytes> {
    super::manifests::encode(settings)
}

impl Registry {
    /// A repository's settings: `None` when the repository does not exist; the defaults for one
    /// pushed before it had settings.
    pub async fn repository_settings(&self, name: &RepositoryName) -> Result<Option<RepositorySettings>> {
        match self.storage.record_get(&Key::repository_settings(name)).await? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None if self.repository_exists(name).await? => Ok(Some(RepositorySettings::default())),
            None => Ok(None),
        }
    }

    /// Creates a repository with `settings`; `AlreadyExists` when it exists (pushed to, or
    /// created before, on any replica: the settings record is created conditionally).
    pub async fn create_repository(
        &self,
        name: &RepositoryName,
        mut settings: RepositorySettings,
    ) -> Result<RepositorySettings> {
        if self.repository_exists(name).await? {
            return Err(Error::RepositoryAlreadyExists(name.clone()));
        }
        settings.created_at = self.clock.now_ms() / 1000;
        match self.storage.record_put_if(&Key::repository_settings(name), encode(&settings)?, PutMode::Create).await {
            Ok(_) => {}
            Err(crate::storage::Error::Conflict { .. }) => return Err(Error::RepositoryAlreadyExists(name.clone())),
            Err(e) => return Err(e.into()),
        }
        self.ensure_repository(name).await?;
        // A decision made while it did not exist may have cached "no policy".
        self.forget_repository_policy(name).await;
        Ok(settings)
    }

    /// Changes a repository's settings with `change`, re-reading and retrying when another
    /// writer changed them at the same time (so concurrent changes never overwrite each other).
    pub async fn update_repository(
        &self,
        name: &RepositoryName,
        change: impl Fn(&mut RepositorySettings) -> Result<()>,
    ) -> Result<RepositorySettings> {
        let key = Key::repository_settings(name);
        let conflict = |e: &Error| matches!(e, Error::Storage(crate::storage::Error::Conflict { .. }));
        let settings = crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
            let (mut settings, mode) = match self.storage.record_get_versioned(&key).await? {
                Some((bytes, version)) => (decode(&bytes)?, PutMode::Update(version)),
                None if self.repository_exists(name).await? => (RepositorySettings::default(), PutMode::Create),
                None => return Err(Error::NameUnknown(name.clone())),
            };
            change(&mut settings)?;
            self.storage.record_put_if(&key, encode(&settings)?, mode).await?;
            Ok(settings)
        })
        .await?;
        self.forget_repository_policy(name).await;
        Ok(settings)
    }

    /// Whether the repository holds any image (a manifest or a tag).
    pub(super) async fn repository_has_images(&self, name: &RepositoryName) -> Result<bool> {
        Ok(!self.storage.record_list(&Key::tags(name)).await?.is_empty()
            || !self.storage.record_list(&Key::manifest_links(name)).await?.is_empty())
    }

    /// Deletes a repository: its settings, tags, manifest and blob links, referrers and catalog
    /// entry (the content itself stays for other repositories and for garbage collection).
    /// Refused when it holds images, unless `force`.
    pub async fn delete_repository(&self, name: &RepositoryName, force: bool) -> Result<RepositorySettings> {
        let settings = self.repository_settings(name).await?.ok_or_else(|| Error::NameUnknown(name.clone()))?;
        if !force && self.repository_has_images(name).await? {
            return Err(Error::RepositoryNotEmpty(name.clone()));
        }
        for tag in self.storage.record_list(&Key::tags(name)).await? {
            if let Ok(tag) = Tag::parse(&tag) {
                self.storage.record_delete(&Key::tag(name, &tag)).await?;
            }
        }
        for (dir, entry) in [
            (Key::manifest_links(name), Key::manifest_link as fn(&RepositoryName, &crate::oci::Digest) -> Key),
            (Key::blob_links(name), Key::blob_link),
            (Key::image_pulls(name), Key::image_pull),
        ] {
            for hex in self.storage.record_list(&dir).await? {
                if let Ok(d) = crate::oci::Digest::parse(&format!("sha256:{hex}")) {
                    self.storage.record_delete(&entry(name, &d)).await?;
                }
            }
        }
        for subject in self.storage.record_list(&Key::all_referrers(name)).await? {
            let Ok(subject) = crate::oci::Digest::parse(&format!("sha256:{subject}")) else { continue };
            for referrer in self.storage.record_list(&Key::referrers(name, &subject)).await? {
                if let Ok(r) = crate::oci::Digest::parse(&referrer) {
                    self.storage.record_delete(&Key::referrer(name, &subject, &r)).await?;
                }
            }
        }
        self.storage.record_delete(&Key::lifecycle_preview(name)).await?;
        self.storage.record_delete(&Key::image_index(name)).await?;
        self.indexed.invalidate(name);
        self.storage.record_delete(&Key::repository_settings(name)).await?;
        self.storage.record_delete(&Key::catalog_entry(name)).await?;
        self.repositories.forget(name);
        self.forget_repository_policy(name).await;
        Ok(settings)
    }

    /// How many tags the repository has, counted up to `limit` (one listing page), and
    /// whether there are more.
    pub async fn tag_count_up_to(&self, name: &RepositoryName, limit: usize) -> Result<(usize, bool)> {
        let page = self.storage.record_list_page(&Key::tags(name), None, limit).await?;
        Ok((page.names.len(), page.more))
    }

    /// Every repository, sorted.
    pub async fn repository_names(&self) -> Result<Vec<RepositoryName>> {
        let mut names: Vec<RepositoryName> = self
            .storage
            .record_list(&Key::catalog())
            .await?
            .iter()
            .filter_map(|e| crate::storage::keys::decode_catalog_entry(e))
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutability_with_exclusions() {
        let tag = |t: &str| Tag::parse(t).unwrap();
        let mut s = RepositorySettings::default();
        assert!(!s.tag_is_immutable(&tag("v1")));
        s.image_tag_mutability = TagMutability::Immutable;
        assert!(s.tag_is_immutable(&tag("latest")));
        s.image_tag_mutability = TagMutability::ImmutableWithExclusion;
        s.mutability_exclusions = vec!["latest*".into(), "dev-?".into()];
        assert!(!s.tag_is_immutable(&tag("latest")) && !s.tag_is_immutable(&tag("latest-arm")));
        assert!(!s.tag_is_immutable(&tag("dev-1")) && s.tag_is_immutable(&tag("dev-12")));
        assert!(s.tag_is_immutable(&tag("v1")));
        s.image_tag_mutability = TagMutability::MutableWithExclusion;
        assert!(s.tag_is_immutable(&tag("latest")) && !s.tag_is_immutable(&tag("v1")));
        assert_eq!(TagMutability::parse("IMMUTABLE_WITH_EXCLUSION"), Some(TagMutability::ImmutableWithExclusion));
        assert_eq!(TagMutability::parse("immutable"), None);
    }
}
