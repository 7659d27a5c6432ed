//! Configuration: serde structs with defaults, one module per section, read from a TOML file,
//! then `FERRY_*` environment variables, then command-line flags, then validated section by
//! section with messages that say what to fix. Every key has a default, so an empty file is a
//! complete config. Secrets go through one resolver (`secret.rs`).

mod audit;
mod auth;
mod gc;
mod lifecycle;
mod log;
mod pull_through;
mod registry;
mod replication;
mod secret;
mod server;
mod storage;
mod units;
mod webhooks;

pub use audit::AuditConfig;
pub use auth::{policy_text, AnonymousConfig, AuthConfig, Challenge, PrincipalConfig, SecretKnown};
pub use gc::GcConfig;
pub use lifecycle::LifecycleConfig;
pub use log::{log_filter_is_valid, LogConfig, LogFormat};
pub use pull_through::{PullThroughApiConfig, PullThroughRule, UpstreamAddress, UpstreamSecret};
pub use registry::RegistryConfig;
pub use replication::{ReplicationConfig, ReplicationTarget};
pub use secret::{resolve as resolve_secret, Secret};
pub use server::{ServerConfig, TlsConfig};
pub use storage::{Backend, HotTierConfig, S3Config, StorageConfig};
pub use units::{ByteSize, HumanDuration};
pub use webhooks::WebhookConfig;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration problem, naming the key and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// The offending key, as written in the file.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and connection limits.
    pub server: ServerConfig,
    /// TLS for the registry listener.
    pub tls: TlsConfig,
    /// Where content is kept.
    pub storage: StorageConfig,
    /// Registry behaviour.
    pub registry: RegistryConfig,
    /// Logging.
    pub log: LogConfig,
    /// The in-memory hot tier.
    pub hot_tier: HotTierConfig,
    /// Pull-through cache rules, `[[pull_through]]`, one per upstream registry.
    pub pull_through: Vec<PullThroughRule>,
    /// Upstream credentials for rules created through the ECR API, `[[pull_through_secrets]]`.
    pub pull_through_secrets: Vec<UpstreamSecret>,
    /// What rules created through the ECR API may reach.
    pub pull_through_api: PullThroughApiConfig,
    /// Identities, tokens and policies.
    pub auth: AuthConfig,
    /// The garbage collector.
    pub gc: GcConfig,
    /// Lifecycle policies and pull-through cache limits.
    pub lifecycle: LifecycleConfig,
    /// Where replication destinations are, and the workers' pace.
    pub replication: ReplicationConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Receivers of push and delete events, `[[webhooks]]`.
    pub webhooks: Vec<WebhookConfig>,
}

impl Config {
    /// Reads `path` (if given), applies `FERRY_*` variables from `env`, and returns the unvalidated config.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parses TOML text and applies `FERRY_*` overrides.
    pub fn from_toml(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("FERRY_")).collect();
        for (var, value) in &env {
            apply_env(&mut table, &defaults, var, value)?;
        }
        let mut config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for rule in &mut config.pull_through {
            let var = rule.password_env_var();
            if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
                rule.password = Secret(v.clone());
            }
        }
        Ok(config)
    }

    /// Checks values that types cannot, section by section, with messages that name the key
    /// and say what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.tls.validate()?;
        self.storage.validate()?;
        self.registry.validate()?;
        pull_through::validate(&self.pull_through)?;
        pull_through::validate_secrets(&self.pull_through_secrets)?;
        self.auth.validate()?;
        self.gc.validate()?;
        self.lifecycle.validate()?;
        self.replication.validate()?;
        self.audit.validate()?;
        webhooks::validate(&self.webhooks)?;
        self.log.validate()
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Sets the key that `var` names (`FERRY_SERVER_ADMIN_LISTEN` → `server.admin_listen`,
/// `FERRY_STORAGE_S3_BUCKET` → `storage.s3.bucket`), typed like its default. Known keys are
/// matched rather than split on `_`, because keys contain `_`.
fn apply_env(table: &mut toml::Table, defaults: &toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    fn find(defaults: &toml::Table, prefix: &str, var: &str, path: &mut Vec<String>) -> Option<toml::Value> {
        for (key, default) in defaults {
            let name = format!("{prefix}_{}", key.to_uppercase());
            if let Some(t) = default.as_table() {
                path.push(key.clone());
                if let Some(v) = find(t, &name, var, path) {
                    return Some(v);
                }
                path.pop();
            } else if name == var {
                path.push(key.clone());
                return Some(default.clone());
            }
        }
        None
    }
    let mut path = Vec::new();
    let Some(default) = find(defaults, "FERRY", var, &mut path) else { return Ok(()) };
    let parsed = match default {
        toml::Value::String(_) => toml::Value::String(value.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(value.parse().map_err(|_| ConfigError::Invalid {
            key: "environment",
            message: format!("{var}={value:?} must be a whole number"),
        })?),
        toml::Value::Boolean(_) => toml::Value::Boolean(value.parse().map_err(|_| ConfigError::Invalid {
            key: "environment",
            message: format!("{var}={value:?} must be true or false"),
        })?),
        _ => return Ok(()),
    };
    let (last, parents) = match path.split_last() {
        Some(p) => p,
        None => return Ok(()),
    };
    let mut t = table;
    for p in parents {
        let entry = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry.as_table_mut() {
            Some(t) => t,
            None => return Ok(()),
        };
    }
    t.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_single_section() {
        let c = Config::from_toml("", env(&[])).unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        let c = Config::from_toml("[server]\nlisten = \"127.0.0.1:7000\"\n", env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7000");
        assert_eq!(c.server.admin_listen, "127.0.0.1:5090");
    }

    #[test]
    fn environment_overrides_file() {
        let c = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:7000\"\n",
            env(&[
                ("FERRY_SERVER_LISTEN", "127.0.0.1:7001"),
                ("FERRY_SERVER_ADMIN_LISTEN", "127.0.0.1:7002"),
                ("FERRY_REGISTRY_DELETE_ENABLED", "false"),
                ("FERRY_SERVER_MAX_IN_FLIGHT_REQUESTS", "7"),
                ("FERRY_REGISTRY_UPLOAD_MAX_IDLE", "1h"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7001");
        assert_eq!(c.server.admin_listen, "127.0.0.1:7002");
        assert!(!c.registry.delete_enabled);
        assert_eq!(c.server.max_in_flight_requests, 7);
        assert_eq!(c.registry.upload_max_idle.0, Duration::from_secs(3600));
        assert!(Config::from_toml("", env(&[("FERRY_SERVER_MAX_IN_FLIGHT_REQUESTS", "x")])).is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[server]\nlisen = \"x\"\n", env(&[])).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::from_toml("[registry]\nupload_max_idle = \"soon\"\n", env(&[])).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let c = Config::from_toml("[server]\nlisten = \"nowhere\"\n", env(&[])).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("server.listen"));
        let c = Config::from_toml("[tls]\ncert = \"/nonexistent\"\n", env(&[])).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tls.key"));
    }

    #[test]
    fn log_filters() {
        for ok in ["info", "warn,ferry=debug", "ferry::http=trace", "INFO", "off", "hyper=warn,ferry=info"] {
            assert!(log_filter_is_valid(ok), "{ok}");
        }
        for bad in ["verbose!!", "verbose", "", "ferry=loud", "=info", "info,", "ferry[x]=info"] {
            assert!(!log_filter_is_valid(bad), "{bad}");
        }
        let c = Config::from_toml("[log]\nlevel = \"verbose!!\"\n", env(&[])).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("log.level"));
    }

    #[test]
    fn s3_settings_sizes_and_nested_environment() {
        let c = Config::from_toml(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"ferry\"\npart_size = \"8MiB\"\n[hot_tier]\nmax_bytes = \"1GiB\"\n",
            env(&[("FERRY_STORAGE_S3_ENDPOINT", "http://127.0.0.1:9000"), ("FERRY_STORAGE_S3_FORCE_PATH_STYLE", "true")]),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.storage.s3.part_size, ByteSize(8 << 20));
        assert_eq!(c.hot_tier.max_bytes, ByteSize(1 << 30));
        assert_eq!(c.storage.s3.endpoint, "http://127.0.0.1:9000");
        assert!(c.storage.s3.force_path_style);
        assert!(c.to_redacted_toml().contains("part_size = \"8MiB\""));
        let bad = Config::from_toml(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"ferry\"\npart_size = \"1MiB\"\n",
            env(&[]),
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("storage.s3.part_size"));
        let no_bucket = Config::from_toml("[storage]\nbackend = \"s3\"\n", env(&[])).unwrap();
        assert!(no_bucket.validate().unwrap_err().to_string().contains("storage.s3.bucket"));
        assert!(Config::from_toml("[hot_tier]\nmax_bytes = \"lots\"\n", env(&[]))
            .unwrap_err()
            .to_string()
            .contains("lots"));
        assert_eq!(ByteSize::parse("512KiB"), Some(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("10"), Some(ByteSize(10)));
    }

    #[test]
    fn pull_through_rules() {
        let text = "[[pull_through]]\nprefix = \"docker-hub\"\nupstream = \"https://registry-1.docker.io\"\nmirror_default = true\nnamespace = \"docker.io\"\nusername = \"bot\"\n\n[[pull_through]]\nprefix = \"quay\"\nupstream = \"https://quay.io\"\ntag_ttl = \"1m\"\n";
        let c = Config::from_toml(text, env(&[("FERRY_PULL_THROUGH_DOCKER_HUB_PASSWORD", "hunter2")])).unwrap();
        c.validate().unwrap();
        assert_eq!(c.pull_through[0].password.0, "hunter2");
        assert!(c.pull_through[0].adds_library());
        assert!(!c.pull_through[1].adds_library());
        assert_eq!(c.pull_through[1].tag_ttl.0, Duration::from_secs(60));
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
        assert!(!format!("{c:?}").contains("hunter2"));
        let missing = Config::from_toml(text, env(&[])).unwrap();
        assert!(missing.validate().unwrap_err().to_string().contains("FERRY_PULL_THROUGH_DOCKER_HUB_PASSWORD"));
        for bad in [
            "[[pull_through]]\nprefix = \"Bad/\"\nupstream = \"https://x\"\n",
            "[[pull_through]]\nprefix = \"a\"\nupstream = \"ftp://x\"\n",
            "[[pull_through]]\nprefix = \"a\"\nupstream = \"https://x\"\n[[pull_through]]\nprefix = \"a\"\nupstream = \"https://y\"\n",
        ] {
            assert!(Config::from_toml(bad, env(&[])).unwrap().validate().is_err(), "{bad}");
        }
    }
}
