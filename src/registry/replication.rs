//! The registry's replication configuration (ECR's `PutReplicationConfiguration` /
//! `DescribeRegistry`) and its registry policy: each stored once in storage
//! (`replication/config`, `replication/registry-policy`), so every replica reads the same. The
//! workers that act on them come with the replication issue.

use super::{Registry, Result};
use crate::storage::Key;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One destination: a region and a registry (account) id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationDestination {
    /// `[0-9a-z-]{2,25}`.
    pub region: String,
    /// 12 digits.
    pub registry_id: String,
}

/// A `PREFIX_MATCH` repository filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryFilter {
    /// The repository name prefix.
    pub filter: String,
    /// Always `PREFIX_MATCH`.
    pub filter_type: String,
}

/// One rule: where, and for which repositories (none: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationRule {
    /// The destinations.
    pub destinations: Vec<ReplicationDestination>,
    /// The filters (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repository_filters: Vec<RepositoryFilter>,
}

/// The configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationConfiguration {
    /// Up to 10 rules.
    pub rules: Vec<ReplicationRule>,
}

impl Registry {
    /// The registry policy's text, if one is set.
    pub async fn registry_policy(&self) -> Result<Option<String>> {
        Ok(self.storage.record_get(&Key::registry_policy()).await?.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Sets (or, with `None`, removes) the registry policy (already validated).
    pub async fn put_registry_policy(&self, text: Option<&str>) -> Result<()> {
        match text {
            Some(t) => self.storage.record_put(&Key::registry_policy(), Bytes::from(t.to_owned())).await?,
            None => {
                self.storage.record_delete(&Key::registry_policy()).await?;
            }
        }
        Ok(())
    }

    /// The stored replication configuration (no rules when none was put).
    pub async fn replication_configuration(&self) -> Result<ReplicationConfiguration> {
        match self.storage.record_get(&Key::replication_configuration()).await? {
            Some(bytes) => super::manifests::decode(&bytes),
            None => Ok(ReplicationConfiguration::default()),
        }
    }

    /// Replaces the replication configuration (already validated).
    pub async fn put_replication_configuration(&self, config: &ReplicationConfiguration) -> Result<()> {
        let bytes = Bytes::from(serde_json::to_vec(config).unwrap_or_default());
        Ok(self.storage.record_put(&Key::replication_configuration(), bytes).await?)
    }
}
