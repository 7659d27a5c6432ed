//! `[registry]`: deletes and upload sessions.

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[registry]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Allow DELETE of blobs, manifests and tags, as ECR does. Default `true`.
    pub delete_enabled: bool,
    /// Upload sessions with no write for this long are purged. Default `"24h"`.
    pub upload_max_idle: HumanDuration,
    /// How often to look for abandoned upload sessions. Default `"10m"`.
    pub upload_purge_interval: HumanDuration,
    /// With a `mirror_default` pull-through rule, unprefixed names belong to the mirror (and
    /// are read-only) except names equal to or under these namespaces, which are this
    /// registry's own and never reach an upstream. Default `[]`.
    pub local_namespaces: Vec<String>,
    /// A push to a repository that does not exist creates it (with default settings) when no
    /// `CREATE_ON_PUSH` creation template matches its name; `false` answers `NAME_UNKNOWN`
    /// unless a template does. Creating always needs `ecr:CreateRepository`. Default `true`.
    pub create_on_push: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            delete_enabled: true,
            upload_max_idle: HumanDuration(Duration::from_secs(24 * 3600)),
            upload_purge_interval: HumanDuration(Duration::from_secs(600)),
            local_namespaces: Vec::new(),
            create_on_push: true,
        }
    }
}

impl RegistryConfig {
    /// Checks the purge interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upload_purge_interval.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "registry.upload_purge_interval",
                message: "must be more than 0s".into(),
            });
        }
        if let Some(bad) = self.local_namespaces.iter().find(|n| crate::oci::RepositoryName::parse(n).is_err()) {
            return Err(ConfigError::Invalid {
                key: "registry.local_namespaces",
                message: format!("{bad:?} must be a repository name such as \"team-a\""),
            });
        }
        Ok(())
    }
}
