//! Registry-wide settings kept for the ECR API: the scanning configuration
//! (`registry/scanning`) and account settings (`registry/account-settings`), one small record
//! each, read by every replica. Which of them change behaviour is said where they are read
//! (today `BLOB_MOUNTING`, by cross-repository mounts).

use crate::storage::{self, records, Key, Storage};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One registry scanning rule: a frequency for the repositories its wildcards match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanningRule {
    /// `SCAN_ON_PUSH`, `CONTINUOUS_SCAN` or `MANUAL`.
    pub scan_frequency: String,
    /// `WILDCARD` filters.
    pub repository_filters: Vec<String>,
}

/// The registry's scanning configuration (`BASIC` with no rules until one is put).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanningConfiguration {
    /// `BASIC` or `ENHANCED`.
    pub scan_type: String,
    /// Up to 2 rules.
    pub rules: Vec<ScanningRule>,
}

impl Default for ScanningConfiguration {
    fn default() -> Self {
        Self { scan_type: "BASIC".into(), rules: Vec::new() }
    }
}

impl ScanningConfiguration {
    /// The frequency and filters that apply to `repository`: the first rule with a matching
    /// filter, else the repository's own scan-on-push.
    pub fn applied(&self, repository: &str, scan_on_push: bool) -> (String, Vec<String>) {
        for rule in &self.rules {
            let matching: Vec<String> = rule
                .repository_filters
                .iter()
                .filter(|f| wildmatch::WildMatch::new(f).matches(repository))
                .cloned()
                .collect();
            if !matching.is_empty() {
                return (rule.scan_frequency.clone(), matching);
            }
        }
        (if scan_on_push { "SCAN_ON_PUSH" } else { "MANUAL" }.to_owned(), Vec::new())
    }
}

/// Account settings by name; a name not set has its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSettings(BTreeMap<String, String>);

impl AccountSettings {
    /// The settings ECR knows.
    pub const NAMES: [&'static str; 3] = ["BASIC_SCAN_TYPE_VERSION", "REGISTRY_POLICY_SCOPE", "BLOB_MOUNTING"];

    /// The values `name` may take, the default first; none for an unknown name.
    pub fn valid_values(name: &str) -> &'static [&'static str] {
        match name {
            "BASIC_SCAN_TYPE_VERSION" => &["AWS_NATIVE", "CLAIR"],
            "REGISTRY_POLICY_SCOPE" => &["V2", "V1"],
            // Ferry mounts by default, as registries that follow the distribution spec do.
            "BLOB_MOUNTING" => &["ENABLED", "DISABLED"],
            _ => &[],
        }
    }

    /// The value of `name` (its default when not set).
    pub fn get(&self, name: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| Self::valid_values(name).first().copied().unwrap_or_default().to_owned())
    }
}

/// The registry-wide settings' records.
pub struct AccountStore {
    storage: Arc<dyn Storage>,
}

impl AccountStore {
    /// The settings kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// The scanning configuration.
    pub async fn scanning_configuration(&self) -> storage::Result<ScanningConfiguration> {
        Ok(records::get(self.storage.as_ref(), &Key::scanning_configuration()).await?.unwrap_or_default())
    }

    /// Replaces the scanning configuration.
    pub async fn put_scanning_configuration(&self, config: &ScanningConfiguration) -> storage::Result<()> {
        records::put(self.storage.as_ref(), &Key::scanning_configuration(), config).await
    }

    /// The account settings.
    pub async fn account_settings(&self) -> storage::Result<AccountSettings> {
        Ok(records::get(self.storage.as_ref(), &Key::account_settings()).await?.unwrap_or_default())
    }

    /// Sets one account setting (already validated), keeping the others even when two
    /// replicas set different ones at once.
    pub async fn put_account_setting(&self, name: &str, value: &str) -> storage::Result<()> {
        records::update(self.storage.as_ref(), &Key::account_settings(), |settings: &mut AccountSettings| {
            settings.0.insert(name.to_owned(), value.to_owned());
            Ok::<_, std::convert::Infallible>(())
        })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            records::UpdateError::Storage(e) => e,
            records::UpdateError::Refused(never) => match never {},
        })
    }

    /// Whether cross-repository mounts are on (`BLOB_MOUNTING`).
    pub async fn blob_mounting(&self) -> storage::Result<bool> {
        Ok(self.account_settings().await?.get("BLOB_MOUNTING") == "ENABLED")
    }
}
