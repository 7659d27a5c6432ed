//! `[log]`: format and filter.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
    /// A tracing filter such as `"info"` or `"ferry=debug"`. Default `"info"`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// Whether `filter` is a log filter Ferry accepts: comma-separated parts, each a level or
/// `target=level` with a Rust path as the target. Stricter than tracing's own parser, which
/// takes any word as a target name, so a typo would silence every log line, the start-up
/// line included.
pub fn log_filter_is_valid(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    let target = |s: &str| {
        let s = s.trim();
        !s.is_empty()
            && s.split("::")
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    };
    !filter.trim().is_empty()
        && filter.split(',').all(|part| match part.split_once('=') {
            Some((t, l)) => target(t) && level(l),
            None => level(part),
        })
        && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
}

impl LogConfig {
    /// Checks the filter.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !log_filter_is_valid(&self.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!(
                    "{:?} is not a filter such as \"info\" or \"info,ferry=debug\": each comma-separated part is a level (error, warn, info, debug, trace, off) or target=level",
                    self.level
                ),
            });
        }
        Ok(())
    }
}
