//! Repository creation templates (ECR's): settings, tags and a policy given to repositories a
//! registry creates by itself — on first push (`CREATE_ON_PUSH`), and later for pull-through
//! caches and replication. The most specific prefix wins; `ROOT` matches every name.

use super::repositories::{RepositorySettings, ResourceTag, TagMutability};
use super::{Registry, Result};
use crate::clock::SharedClock;
use crate::oci::RepositoryName;
use crate::storage::{self, records, Key, PutMode, Storage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a template is applied for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppliedFor {
    /// Repositories a replication creates.
    Replication,
    /// Pull-through cache repositories.
    PullThroughCache,
    /// Repositories created by a push to a name that does not exist.
    CreateOnPush,
}

impl AppliedFor {
    /// ECR's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replication => "REPLICATION",
            Self::PullThroughCache => "PULL_THROUGH_CACHE",
            Self::CreateOnPush => "CREATE_ON_PUSH",
        }
    }

    /// From ECR's name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Replication, Self::PullThroughCache, Self::CreateOnPush].into_iter().find(|a| a.as_str() == s)
    }
}

/// One template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationTemplate {
    /// `ROOT`, or a namespace prefix such as `team-a/` (the trailing `/` optional).
    pub prefix: String,
    /// Up to 256 characters.
    #[serde(default)]
    pub description: String,
    /// Tag mutability for the repositories it creates.
    #[serde(default)]
    pub image_tag_mutability: TagMutability,
    /// Exclusion filters.
    #[serde(default)]
    pub mutability_exclusions: Vec<String>,
    /// `AES256`, `KMS` or `KMS_DSSE`.
    #[serde(default = "aes256")]
    pub encryption_type: String,
    /// The KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
    /// Resource tags.
    #[serde(default)]
    pub resource_tags: Vec<ResourceTag>,
    /// A repository policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_policy: Option<String>,
    /// A lifecycle policy every repository it creates starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_policy: Option<String>,
    /// What it applies to.
    pub applied_for: Vec<AppliedFor>,
    /// A role ARN (kept, not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_role_arn: Option<String>,
    /// When it was created and last changed (seconds since the epoch).
    #[serde(default)]
    pub created_at: u64,
    /// Last change.
    #[serde(default)]
    pub updated_at: u64,
}

/// The prefix of the template that applies to every name.
pub const ROOT: &str = "ROOT";

/// How many templates a registry may hold (every creation reads them all).
pub const MAX_TEMPLATES: usize = 100;

/// A prefix as stored: without the trailing `/` ECR assumes anyway, so `prod` and `prod/`
/// are one template.
pub fn canonical_prefix(prefix: &str) -> String {
    if prefix == ROOT {
        prefix.to_owned()
    } else {
        prefix.trim_end_matches('/').to_owned()
    }
}

fn aes256() -> String {
    "AES256".into()
}

impl CreationTemplate {
    /// A template for `prefix` with ECR's defaults (mutable tags, AES256, no policy).
    pub fn new(prefix: &str, applied_for: Vec<AppliedFor>) -> Self {
        Self {
            prefix: canonical_prefix(prefix),
            description: String::new(),
            image_tag_mutability: TagMutability::Mutable,
            mutability_exclusions: vec![],
            encryption_type: aes256(),
            kms_key: None,
            resource_tags: vec![],
            repository_policy: None,
            lifecycle_policy: None,
            applied_for,
            custom_role_arn: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// Whether it applies to `name`: `ROOT` to every name, a prefix to the names under it
    /// (ECR assumes a trailing `/`: `prod` covers `prod/app`, not `prod` or `production/app`).
    pub fn matches(&self, name: &RepositoryName) -> bool {
        if self.prefix == ROOT {
            return true;
        }
        let prefix = self.prefix.trim_end_matches('/');
        name.as_str().strip_prefix(prefix).is_some_and(|r| r.starts_with('/'))
    }

    /// The settings it gives a new repository.
    pub fn settings(&self) -> RepositorySettings {
        RepositorySettings {
            image_tag_mutability: self.image_tag_mutability,
            mutability_exclusions: self.mutability_exclusions.clone(),
            encryption_type: self.encryption_type.clone(),
            kms_key: self.kms_key.clone(),
            tags: self.resource_tags.clone(),
            policy: self.repository_policy.clone(),
            lifecycle_policy: self.lifecycle_policy.clone(),
            ..RepositorySettings::default()
        }
    }

    /// How specific it is (the longest prefix wins; `ROOT` least).
    fn specificity(&self) -> usize {
        if self.prefix == ROOT {
            0
        } else {
            self.prefix.trim_end_matches('/').len().saturating_add(1)
        }
    }
}

fn key(prefix: &str) -> Key {
    Key::creation_template(&canonical_prefix(prefix).replace('/', "+"))
}

/// The templates' records (`templates/<prefix>`).
pub struct TemplateStore {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    /// `registry.create_on_push`: a push creates a repository no template covers.
    create_on_push: bool,
}

impl TemplateStore {
    /// The templates in `storage`.
    pub fn new(storage: Arc<dyn Storage>, clock: SharedClock, create_on_push: bool) -> Self {
        Self { storage, clock, create_on_push }
    }

    /// Every template, sorted by prefix.
    pub async fn creation_templates(&self) -> storage::Result<Vec<CreationTemplate>> {
        let mut out = Vec::new();
        for entry in self.storage.record_list(&Key::creation_templates()).await? {
            if let Some(t) =
                records::get::<CreationTemplate>(self.storage.as_ref(), &Key::creation_template(&entry)).await?
            {
                out.push(t);
            }
        }
        out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(out)
    }

    /// The most specific template for `name` applied for `purpose`.
    pub async fn creation_template_for(
        &self,
        name: &RepositoryName,
        purpose: AppliedFor,
    ) -> storage::Result<Option<CreationTemplate>> {
        Ok(self
            .creation_templates()
            .await?
            .into_iter()
            .filter(|t| t.applied_for.contains(&purpose) && t.matches(name))
            .max_by_key(CreationTemplate::specificity))
    }

    /// Settings for a repository about to be created for `purpose`: the most specific
    /// matching template's; the defaults when none matches (for a push only when
    /// `registry.create_on_push` holds); `None` when a push must not create it.
    pub async fn settings_for_new_repository(
        &self,
        name: &RepositoryName,
        purpose: AppliedFor,
    ) -> storage::Result<Option<RepositorySettings>> {
        match self.creation_template_for(name, purpose).await? {
            Some(t) => Ok(Some(t.settings())),
            None if purpose != AppliedFor::CreateOnPush || self.create_on_push => {
                Ok(Some(RepositorySettings::default()))
            }
            None => Ok(None),
        }
    }

    /// Stores a new template; `None` when one with that prefix exists.
    pub async fn create_template(&self, mut template: CreationTemplate) -> storage::Result<Option<CreationTemplate>> {
        template.prefix = canonical_prefix(&template.prefix);
        template.created_at = self.clock.now_ms() / 1000;
        template.updated_at = template.created_at;
        let bytes = records::encode(&template)?;
        match self.storage.record_put_if(&key(&template.prefix), bytes, PutMode::Create).await {
            Ok(_) => Ok(Some(template)),
            Err(storage::Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes a template with `change` (retried with backoff on a racing write); `None` when
    /// there is none with that prefix.
    pub async fn update_template(
        &self,
        prefix: &str,
        change: impl Fn(&mut CreationTemplate),
    ) -> storage::Result<Option<CreationTemplate>> {
        let conflict = |e: &storage::Error| matches!(e, storage::Error::Conflict { .. });
        crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
            let Some((mut template, version)) =
                records::get_versioned::<CreationTemplate>(self.storage.as_ref(), &key(prefix)).await?
            else {
                return Ok(None);
            };
            change(&mut template);
            template.updated_at = self.clock.now_ms() / 1000;
            let bytes = records::encode(&template)?;
            self.storage.record_put_if(&key(prefix), bytes, PutMode::Update(version)).await?;
            Ok(Some(template))
        })
        .await
    }

    /// Removes a template; returns it, `None` when there was none.
    pub async fn delete_template(&self, prefix: &str) -> storage::Result<Option<CreationTemplate>> {
        let Some(template) = records::get::<CreationTemplate>(self.storage.as_ref(), &key(prefix)).await? else {
            return Ok(None);
        };
        self.storage.record_delete(&key(prefix)).await?;
        Ok(Some(template))
    }
}

impl Registry {
    /// Gives a repository its template's settings when it has none yet (a pull-through cache
    /// or a replica the registry creates by itself); one another writer settled meanwhile is
    /// kept.
    pub(crate) async fn apply_creation_template(&self, name: &RepositoryName, purpose: AppliedFor) -> Result<()> {
        if self.storage.record_get(&Key::repository_settings(name)).await?.is_some() {
            return Ok(());
        }
        let Some(template) = self.templates.creation_template_for(name, purpose).await? else { return Ok(()) };
        let mut settings = template.settings();
        settings.created_at = self.clock.now_ms() / 1000;
        let bytes = super::manifests::encode(&settings)?;
        match self.storage.record_put_if(&Key::repository_settings(name), bytes, PutMode::Create).await {
            Ok(_) | Err(crate::storage::Error::Conflict { .. }) => {
                self.forget_repository_policy(name).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The repository creation templates.
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(prefix: &str) -> CreationTemplate {
        CreationTemplate::new(prefix, vec![AppliedFor::CreateOnPush])
    }

    #[test]
    fn prefixes_match_namespaces() {
        let name = |n: &str| RepositoryName::parse(n).unwrap();
        assert!(template("ROOT").matches(&name("anything/at/all")));
        assert!(template("team-a/").matches(&name("team-a/app")));
        assert!(template("team-a").matches(&name("team-a/x/y")));
        assert!(!template("team-a").matches(&name("team-a")));
        assert!(!template("team-a").matches(&name("team-ab/app")));
        assert!(template("team-a/x").specificity() > template("team-a").specificity());
        assert!(template("team-a").specificity() > template("ROOT").specificity());
        assert_eq!(canonical_prefix("prod/"), "prod");
        assert_eq!(canonical_prefix("ROOT"), "ROOT");
    }
}
