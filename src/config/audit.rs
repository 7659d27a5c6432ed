//! `[audit]`: the audit trail, one JSON line per mutation, refusal and (optionally) pull.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Record audit events. Default `true`.
    pub enabled: bool,
    /// Append them as JSON lines to this file; `""` writes them to the log instead (target
    /// `ferry::audit`). Default `""`.
    pub path: String,
    /// Also record every manifest pull (by tag or digest; blob reads are not recorded). Busy
    /// caches pull a lot. Default `false`.
    pub pulls: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true, path: String::new(), pulls: false }
    }
}

impl AuditConfig {
    /// Checks that the file's directory exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.is_empty() {
            return Ok(());
        }
        let dir = std::path::Path::new(&self.path).parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(ConfigError::Invalid {
                key: "audit.path",
                message: format!("{:?}: its directory does not exist", self.path),
            });
        }
        Ok(())
    }
}
