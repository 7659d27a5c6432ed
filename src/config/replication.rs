//! `[replication]`: how this registry reaches the destinations its replication configuration
//! (ECR's `PutReplicationConfiguration`, kept in storage) names, and how its workers pace
//! themselves. A destination `{region, registryId}` of a rule is resolved here to a URL and the
//! credentials that destination gave this source.

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[replication]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Run the replication workers on this replica. Default `true` (they do nothing until a
    /// replication configuration exists).
    pub enabled: bool,
    /// Images one replica copies at once. Default `4`.
    pub images_at_once: usize,
    /// Blobs of one image copied at once: over a slow link each costs a few round trips, so
    /// many small layers go much faster side by side. Default `16`.
    pub blobs_at_once: usize,
    /// How often an idle replica looks for events another replica recorded or left (its own
    /// pushes wake it at once, and a retry it knows of wakes it when due; a dead replica's
    /// events wait for its lease to expire anyway). Default `"10s"`.
    pub poll_interval: HumanDuration,
    /// A destination still failing with retryable errors after this long is marked `FAILED`.
    /// Default `"24h"`.
    pub give_up_after: HumanDuration,
    /// How long a replica's claim on an event lasts unless renewed (it renews every third of
    /// it while copying): how soon another replica takes over from one that died. Default `"30s"`.
    pub lease_ttl: HumanDuration,
    /// `[[replication.destinations]]`: where each destination of the rules is.
    pub destinations: Vec<ReplicationTarget>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            images_at_once: 4,
            blobs_at_once: 16,
            poll_interval: HumanDuration(Duration::from_secs(10)),
            give_up_after: HumanDuration(Duration::from_secs(24 * 3600)),
            lease_ttl: HumanDuration(Duration::from_secs(30)),
            destinations: Vec::new(),
        }
    }
}

/// `[[replication.destinations]]`: one destination registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationTarget {
    /// The registry id rules name (12 digits). Required.
    pub registry_id: String,
    /// The region rules name. Required.
    pub region: String,
    /// Its registry API, e.g. `https://ferry.eu-west-1.example.com`. Required.
    pub url: String,
    /// The access key id (or user name) this source signs in with there. Default `""`: none.
    pub access_key_id: String,
    /// A file holding its secret (or password). Default `""`.
    pub secret_access_key_file: String,
}

impl ReplicationTarget {
    /// `<registry id>/<region>`: the destination's label in logs and metrics.
    pub fn label(&self) -> String {
        format!("{}/{}", self.registry_id, self.region)
    }

    /// The credentials, read from the secret file.
    pub fn credentials(&self) -> Result<Option<(String, String)>, ConfigError> {
        if self.access_key_id.is_empty() {
            return Ok(None);
        }
        let none = super::Secret::default();
        let secret = super::secret::resolve(
            &none,
            &self.secret_access_key_file,
            "replication.destinations.secret_access_key_file",
        )?;
        Ok(Some((self.access_key_id.clone(), secret.unwrap_or_default())))
    }
}

impl ReplicationConfig {
    /// Checks the numbers and each destination.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.images_at_once == 0 || self.images_at_once > 256 {
            return invalid("replication.images_at_once", "must be 1 to 256".into());
        }
        if self.blobs_at_once == 0 || self.blobs_at_once > 256 {
            return invalid("replication.blobs_at_once", "must be 1 to 256".into());
        }
        if self.poll_interval.0 < Duration::from_millis(50) {
            return invalid("replication.poll_interval", "must be at least 50ms".into());
        }
        if self.lease_ttl.0 < Duration::from_secs(1) {
            return invalid("replication.lease_ttl", "must be at least 1s".into());
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.destinations {
            if d.registry_id.len() != 12 || !d.registry_id.bytes().all(|b| b.is_ascii_digit()) {
                return invalid(
                    "replication.destinations.registry_id",
                    format!("{:?} must be 12 digits", d.registry_id),
                );
            }
            if !(2..=25).contains(&d.region.len())
                || !d.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return invalid("replication.destinations.region", format!("{:?} is not a region", d.region));
            }
            let url_ok = (d.url.starts_with("http://") || d.url.starts_with("https://"))
                && reqwest::Url::parse(&d.url).is_ok_and(|u| u.host_str().is_some());
            if !url_ok {
                return invalid(
                    "replication.destinations.url",
                    format!("{:?} must be an http:// or https:// URL", d.url),
                );
            }
            if !seen.insert((d.registry_id.as_str(), d.region.as_str())) {
                return invalid("replication.destinations", format!("{} is listed twice", d.label()));
            }
            d.credentials()?;
        }
        Ok(())
    }

    /// The destination a rule's `{region, registryId}` names.
    pub fn target(&self, registry_id: &str, region: &str) -> Option<&ReplicationTarget> {
        self.destinations.iter().find(|d| d.registry_id == registry_id && d.region == region)
    }
}
