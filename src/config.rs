//! Configuration: serde structs with defaults, read from a TOML file, then `FERRY_*`
//! environment variables, then command-line flags, then validated with messages that say
//! what to fix. Every key has a default, so an empty file is a complete config.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A duration written as `"30s"`, `"5m"`, `"24h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration such as \"30s\" or \"5m\": {e}")))
    }
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
}

/// A secret string: printed as `<redacted>` in `Debug` and in `ferry config check`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "<redacted>" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// `[[pull_through]]`: repositories under `prefix` are cached from `upstream`, as ECR's
/// pull-through cache rules do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PullThroughRule {
    /// Repository prefix: `docker-hub/library/nginx` comes from the upstream's `library/nginx`. Required.
    pub prefix: String,
    /// Upstream registry base URL, e.g. `"https://registry-1.docker.io"`. Required.
    pub upstream: String,
    /// Also serve unprefixed names that match no local repository (daemon.json `registry-mirrors`). Default `false`.
    pub mirror_default: bool,
    /// The registry host containerd names in `?ns=` (e.g. `"docker.io"`); selects this rule. Default `""`.
    pub namespace: String,
    /// Upstream user name; with a password, used for Basic auth and token requests. Default `""`.
    pub username: String,
    /// Upstream password, or set `password_file`, or `FERRY_PULL_THROUGH_<PREFIX>_PASSWORD`. Default `""`.
    pub password: Secret,
    /// File holding the upstream password. Default `""`.
    pub password_file: String,
    /// A cached tag is trusted this long before it is re-checked upstream. Default `"5m"`.
    pub tag_ttl: HumanDuration,
    /// While the upstream fails, a cached tag is served for this long past its TTL. Default `"7d"`.
    pub stale_if_error: HumanDuration,
    /// Add `library/` to one-component names. Default: true when `namespace` is `"docker.io"`
    /// or the upstream is Docker Hub.
    pub library_prefix: Option<bool>,
}

impl Default for PullThroughRule {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            upstream: String::new(),
            mirror_default: false,
            namespace: String::new(),
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            tag_ttl: HumanDuration(Duration::from_secs(300)),
            stale_if_error: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            library_prefix: None,
        }
    }
}

impl PullThroughRule {
    /// The environment variable that may hold this rule's password.
    pub fn password_env_var(&self) -> String {
        let p: String =
            self.prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        format!("FERRY_PULL_THROUGH_{p}_PASSWORD")
    }

    /// The password from `password`, else `password_file` (trailing newline trimmed).
    pub fn resolved_password(&self) -> Result<Option<String>, ConfigError> {
        if !self.password.0.is_empty() {
            return Ok(Some(self.password.0.clone()));
        }
        if !self.password_file.is_empty() {
            let p = std::fs::read_to_string(&self.password_file).map_err(|e| ConfigError::Invalid {
                key: "pull_through.password_file",
                message: format!("cannot read {:?}: {e}", self.password_file),
            })?;
            return Ok(Some(p.trim_end_matches(['\n', '\r']).to_owned()));
        }
        Ok(None)
    }

    /// Whether one-component names get `library/`, as Docker Hub requires.
    pub fn adds_library(&self) -> bool {
        self.library_prefix.unwrap_or_else(|| {
            self.namespace == "docker.io" || self.upstream.contains("docker.io") || self.upstream.contains("docker.com")
        })
    }
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Registry API address. Default `"127.0.0.1:5000"`.
    pub listen: String,
    /// Admin address for `/metrics`, `/healthz`, `/readyz`. Default `"127.0.0.1:5090"`.
    pub admin_listen: String,
    /// Time a client has to send a request's headers; also closes idle keep-alive connections. Default `"30s"`.
    pub header_read_timeout: HumanDuration,
    /// Requests served at once; more get 429 with `Retry-After`. Default `1024`.
    pub max_in_flight_requests: usize,
    /// Requests served at once for one client address, so one client cannot take every
    /// permit. Default `512`.
    pub max_in_flight_per_client: usize,
    /// Upload sessions one client address may hold open at once. Default `1024`.
    pub max_uploads_per_client: usize,
    /// A request body that delivers no byte for this long is cut off (408). Default `"30s"`.
    pub body_read_timeout: HumanDuration,
    /// A client that accepts no byte of a response for this long is disconnected. Default `"60s"`.
    pub send_timeout: HumanDuration,
    /// Behind a proxy or load balancer: the header it sets to the client's address (e.g.
    /// `"X-Forwarded-For"`; its right-most entry is used), so per-client limits apply to
    /// clients rather than to the proxy. Default `""` (the connection's peer address).
    pub client_address_header: String,
    /// On SIGTERM/SIGINT, how long in-flight requests may run before they are cut. Default `"30s"`.
    pub shutdown_grace: HumanDuration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".into(),
            admin_listen: "127.0.0.1:5090".into(),
            header_read_timeout: HumanDuration(Duration::from_secs(30)),
            max_in_flight_requests: 1024,
            max_in_flight_per_client: 512,
            max_uploads_per_client: 1024,
            body_read_timeout: HumanDuration(Duration::from_secs(30)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            client_address_header: String::new(),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// `[tls]`: both `cert` and `key` (PEM files) turn TLS on for the registry listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM. Default `""` (no TLS).
    pub cert: String,
    /// Private key, PEM. Default `""` (no TLS).
    pub key: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }
}

/// A size written as `"16MiB"`, `"256MiB"`, `"4KiB"`, `"1GiB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"16MiB"`, `"512KiB"`, `"1GiB"`, `"100"` (bytes); also KB/MB/GB as powers of 1000.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        n.checked_mul(mult).map(Self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        let text = if v > 0 && v.is_multiple_of(1 << 30) {
            format!("{}GiB", v >> 30)
        } else if v > 0 && v.is_multiple_of(1 << 20) {
            format!("{}MiB", v >> 20)
        } else if v > 0 && v.is_multiple_of(1 << 10) {
            format!("{}KiB", v >> 10)
        } else {
            v.to_string()
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(t) => Self::parse(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("{t:?} is not a size such as \"16MiB\" or \"4KiB\""))),
        }
    }
}

/// The storage backend.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The local filesystem under `data_dir`.
    #[default]
    Fs,
    /// One S3 bucket, shareable by several Ferry replicas.
    S3,
}

/// `[storage.s3]`: where the S3 backend keeps everything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name. Required with `backend = "s3"`.
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `"ferry/"`. Default `""`.
    pub prefix: String,
    /// Region. Default `"us-east-1"`.
    pub region: String,
    /// Endpoint URL of an S3-compatible service. Default `""` (AWS).
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible services need. Default `false`.
    pub force_path_style: bool,
    /// Access key id; empty uses the standard AWS credential chain. Default `""`.
    pub access_key_id: String,
    /// Secret access key (or `secret_access_key_file`, or `FERRY_STORAGE_S3_SECRET_ACCESS_KEY`). Default `""`.
    pub secret_access_key: Secret,
    /// File holding the secret access key. Default `""`.
    pub secret_access_key_file: String,
    /// Server-side encryption: `""`, `"AES256"` or `"aws:kms"`. Default `""`.
    pub sse: String,
    /// KMS key for `sse = "aws:kms"`. Default `""`.
    pub kms_key_id: String,
    /// Size of the parts blobs are uploaded in (at least 5MiB). Default `"16MiB"`.
    pub part_size: ByteSize,
    /// Blob GETs answer 307 with a presigned S3 URL, so clients download straight from S3 as
    /// ECR's layer downloads do. Default `false`.
    pub redirect: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            force_path_style: false,
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            secret_access_key_file: String::new(),
            sse: String::new(),
            kms_key_id: String::new(),
            part_size: ByteSize(16 << 20),
            redirect: false,
        }
    }
}

/// `[hot_tier]`: an in-memory cache of small immutable content in front of storage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HotTierConfig {
    /// Capacity, weighted by bytes; `"0"` turns the hot tier off. Default `"256MiB"`.
    pub max_bytes: ByteSize,
    /// Larger blobs always stream from storage. Default `"4MiB"`.
    pub max_object_bytes: ByteSize,
    /// How long a tag lookup may be served from memory; `"0s"` (default) never caches tags,
    /// so replicas sharing a bucket agree at once.
    pub tag_ttl: HumanDuration,
}

impl Default for HotTierConfig {
    fn default() -> Self {
        Self {
            max_bytes: ByteSize(256 << 20),
            max_object_bytes: ByteSize(4 << 20),
            tag_ttl: HumanDuration(Duration::ZERO),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"fs"` (the default) or `"s3"`.
    pub backend: Backend,
    /// Directory of the filesystem backend. Default `"./data"`.
    pub data_dir: PathBuf,
    /// The S3 backend's settings.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { backend: Backend::Fs, data_dir: PathBuf::from("./data"), s3: S3Config::default() }
    }
}

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
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            delete_enabled: true,
            upload_max_idle: HumanDuration(Duration::from_secs(24 * 3600)),
            upload_purge_interval: HumanDuration(Duration::from_secs(600)),
        }
    }
}

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

    /// Checks values that types cannot, with messages that say what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = |key, v: &str| {
            v.parse::<SocketAddr>().map(|_| ()).map_err(|_| ConfigError::Invalid {
                key,
                message: format!("{v:?} is not an address such as \"127.0.0.1:5000\""),
            })
        };
        addr("server.listen", &self.server.listen)?;
        addr("server.admin_listen", &self.server.admin_listen)?;
        if self.server.max_in_flight_requests == 0 {
            return Err(ConfigError::Invalid {
                key: "server.max_in_flight_requests",
                message: "must be at least 1".into(),
            });
        }
        for (key, v) in [
            ("server.max_in_flight_per_client", self.server.max_in_flight_per_client),
            ("server.max_uploads_per_client", self.server.max_uploads_per_client),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid { key, message: "must be at least 1".into() });
            }
        }
        for (key, v) in [
            ("server.header_read_timeout", self.server.header_read_timeout),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("server.send_timeout", self.server.send_timeout),
        ] {
            if v.0.is_zero() {
                return Err(ConfigError::Invalid { key, message: "must be more than 0s".into() });
            }
        }
        if !self.server.client_address_header.is_empty()
            && http::HeaderName::from_bytes(self.server.client_address_header.as_bytes()).is_err()
        {
            return Err(ConfigError::Invalid {
                key: "server.client_address_header",
                message: format!(
                    "{:?} is not a header name such as \"X-Forwarded-For\"",
                    self.server.client_address_header
                ),
            });
        }
        if self.tls.enabled() {
            let pair = [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)];
            if let Some((key, _)) = pair.iter().find(|(_, v)| v.is_empty()) {
                return Err(ConfigError::Invalid {
                    key,
                    message: "TLS needs both tls.cert and tls.key (PEM files)".into(),
                });
            }
            if let Some((key, v)) = pair.iter().find(|(_, v)| !Path::new(v).is_file()) {
                return Err(ConfigError::Invalid { key, message: format!("{v:?} is not a readable file") });
            }
        }
        if self.storage.backend == Backend::S3 {
            let s3 = &self.storage.s3;
            if s3.bucket.len() < 3 {
                return Err(ConfigError::Invalid {
                    key: "storage.s3.bucket",
                    message: "give the bucket's name (at least 3 characters)".into(),
                });
            }
            if s3.part_size.0 < 5 << 20 || s3.part_size.0 > 5 << 30 {
                return Err(ConfigError::Invalid {
                    key: "storage.s3.part_size",
                    message: "must be between 5MiB and 5GiB (S3's part limits)".into(),
                });
            }
            if !["", "AES256", "aws:kms"].contains(&s3.sse.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "storage.s3.sse",
                    message: format!("{:?} must be \"\", \"AES256\" or \"aws:kms\"", s3.sse),
                });
            }
            if !s3.access_key_id.is_empty() && s3.secret_access_key.0.is_empty() && s3.secret_access_key_file.is_empty()
            {
                return Err(ConfigError::Invalid {
                    key: "storage.s3.secret_access_key",
                    message: "access_key_id is set: set secret_access_key, secret_access_key_file or FERRY_STORAGE_S3_SECRET_ACCESS_KEY".into(),
                });
            }
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "storage.data_dir",
                message: "give a directory for the data".into(),
            });
        }
        if self.registry.upload_purge_interval.0.is_zero() {
            return Err(ConfigError::Invalid {
                key: "registry.upload_purge_interval",
                message: "must be more than 0s".into(),
            });
        }
        self.validate_pull_through()?;
        if !log_filter_is_valid(&self.log.level) {
            return Err(ConfigError::Invalid {
                key: "log.level",
                message: format!(
                    "{:?} is not a filter such as \"info\" or \"info,ferry=debug\": each comma-separated part is a level (error, warn, info, debug, trace, off) or target=level",
                    self.log.level
                ),
            });
        }
        Ok(())
    }

    fn validate_pull_through(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let mut prefixes = std::collections::HashSet::new();
        let mut namespaces = std::collections::HashSet::new();
        for rule in &self.pull_through {
            if crate::oci::RepositoryName::parse(&rule.prefix).is_err() {
                return invalid(
                    "pull_through.prefix",
                    format!(
                        "{:?} must be a repository name such as \"docker-hub\" (lowercase, no trailing /)",
                        rule.prefix
                    ),
                );
            }
            if !prefixes.insert(rule.prefix.as_str()) {
                return invalid("pull_through.prefix", format!("{:?} is used by two rules", rule.prefix));
            }
            let scheme_ok = rule.upstream.starts_with("http://") || rule.upstream.starts_with("https://");
            if !scheme_ok || rule.upstream.parse::<http::Uri>().map(|u| u.host().is_none()).unwrap_or(true) {
                return invalid(
                    "pull_through.upstream",
                    format!(
                        "{:?} (rule {}) must be a URL such as \"https://registry-1.docker.io\"",
                        rule.upstream, rule.prefix
                    ),
                );
            }
            if !rule.namespace.is_empty() && !namespaces.insert(rule.namespace.as_str()) {
                return invalid("pull_through.namespace", format!("{:?} is used by two rules", rule.namespace));
            }
            let password = rule.resolved_password()?;
            if !rule.username.is_empty() && password.is_none() {
                return invalid(
                    "pull_through.password",
                    format!(
                        "rule {} has a username but no password: set password, password_file or {}",
                        rule.prefix,
                        rule.password_env_var()
                    ),
                );
            }
        }
        if self.pull_through.iter().filter(|r| r.mirror_default).count() > 1 {
            return invalid("pull_through.mirror_default", "only one rule can be the mirror default".into());
        }
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
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
