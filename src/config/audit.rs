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
    /// Checks that the path names a file (its directory is created at start if missing).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.is_empty() && (self.path.ends_with('/') || std::path::Path::new(&self.path).is_dir()) {
            return Err(ConfigError::Invalid {
                key: "audit.path",
                message: format!("{:?} is a directory: name the file to append to", self.path),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AuditConfig;

    #[test]
    fn the_path_names_a_file() {
        let with = |path: &str| AuditConfig { path: path.into(), ..AuditConfig::default() };
        assert!(with("").validate().is_ok());
        assert!(with("not/there/yet.jsonl").validate().is_ok(), "created at start");
        assert!(with("logs/").validate().is_err());
        assert!(with("/").validate().is_err());
    }
}
