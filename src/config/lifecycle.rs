//! `[lifecycle]`: when lifecycle policies and pull-through cache limits are enforced.

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[lifecycle]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Apply repositories' lifecycle policies and pull-through rules' `max_bytes` and
    /// `expire_unpulled_after` on a schedule (one replica at a time). Default `true`.
    pub enabled: bool,
    /// How often, with up to a tenth of it added at random. Default `"24h"` (ECR acts within 24 h).
    pub interval: HumanDuration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self { enabled: true, interval: HumanDuration(Duration::from_secs(24 * 3600)) }
    }
}

impl LifecycleConfig {
    /// Checks the interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::Invalid { key: "lifecycle.interval", message: "must be at least 1s".into() });
        }
        Ok(())
    }
}
