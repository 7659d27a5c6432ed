//! `[gc]`: the garbage collector's schedule and grace period.

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[gc]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Run the collector on a schedule (one replica at a time). Default `true`.
    pub enabled: bool,
    /// How often, with up to a tenth of it added at random so replicas spread out. Default `"24h"`.
    pub interval: HumanDuration,
    /// Content and links used within this long are never collected: what a push in progress
    /// has uploaded but not yet referenced stays. Default `"1h"`.
    pub grace: HumanDuration,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(24 * 3600)),
            grace: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

impl GcConfig {
    /// Checks the interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid { key: "gc.interval", message: "must be at least 1s".into() });
        }
        Ok(())
    }
}
