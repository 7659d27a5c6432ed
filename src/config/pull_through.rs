//! `[[pull_through]]`: one rule per upstream registry, as ECR's pull-through cache rules.

use super::secret::Secret;
use super::units::{ByteSize, HumanDuration};
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// The most this rule's cached images may hold (shared layers counted once); past it, the
    /// least recently pulled images are evicted down to 90% of it. `0` is no limit. Default `0`.
    pub max_bytes: ByteSize,
    /// Cached images nobody pulled for this long are evicted (e.g. `"30d"`); `"0s"` never.
    /// Default `"0s"`.
    pub expire_unpulled_after: HumanDuration,
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
            max_bytes: ByteSize(0),
            expire_unpulled_after: HumanDuration(Duration::ZERO),
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

    /// The password from `password` (or its environment variable), else `password_file`.
    pub fn resolved_password(&self) -> Result<Option<String>, ConfigError> {
        super::secret::resolve(&self.password, &self.password_file, "pull_through.password_file")
    }

    /// Whether one-component names get `library/`, as Docker Hub requires.
    pub fn adds_library(&self) -> bool {
        self.library_prefix.unwrap_or_else(|| {
            self.namespace == "docker.io" || self.upstream.contains("docker.io") || self.upstream.contains("docker.com")
        })
    }
}

/// `[pull_through_api]`: what pull-through rules created through the ECR API may reach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PullThroughApiConfig {
    /// Upstream hosts (`host` or `host:port`, `*` wildcards) a rule created through the API may
    /// name: anyone allowed `ecr:CreatePullThroughCacheRule` could otherwise make Ferry fetch
    /// from any address it can reach. Default: the public registries ECR supports.
    pub allowed_upstreams: Vec<String>,
}

impl Default for PullThroughApiConfig {
    fn default() -> Self {
        let hosts = [
            "registry-1.docker.io",
            "public.ecr.aws",
            "*.dkr.ecr.*.amazonaws.com",
            "quay.io",
            "registry.k8s.io",
            "ghcr.io",
            "registry.gitlab.com",
            "*.azurecr.io",
            "cgr.dev",
        ];
        Self { allowed_upstreams: hosts.iter().map(|h| (*h).to_owned()).collect() }
    }
}

/// An upstream registry's base URL, parsed as a URL parser does (what the HTTP client will
/// connect to): an `http` or `https` scheme, a host (a domain, lowercase, without a trailing
/// dot; or an IP address in any notation, normalized) and a numeric port; no credentials,
/// path, query or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddress {
    /// The host.
    pub host: url::Host<String>,
    /// The port, the scheme's default when none is written.
    pub port: u16,
    /// Whether the port is the scheme's default.
    pub default_port: bool,
}

impl UpstreamAddress {
    /// Parses `url` (with its scheme), or says why it is not a registry's base URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?}: the scheme must be http or https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("{url:?}: a registry's URL carries no credentials"));
        }
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(format!("{url:?}: a registry's URL is a host and port, with no path or query"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => {
                let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
                if d.is_empty() || d.contains("..") {
                    return Err(format!("{url:?}: no host"));
                }
                url::Host::Domain(d)
            }
            Some(url::Host::Ipv4(ip)) => url::Host::Ipv4(ip),
            Some(url::Host::Ipv6(ip)) => url::Host::Ipv6(ip),
            None => return Err(format!("{url:?}: no host")),
        };
        let port = parsed.port_or_known_default().ok_or_else(|| format!("{url:?}: no port"))?;
        Ok(Self { host, port, default_port: parsed.port().is_none() })
    }
}

/// One `allowed_upstreams` entry: a host pattern (`*` stands for one or more characters of one
/// DNS label) or an IP address, and a port (`:*` any; none: the scheme's default only).
fn entry_allows(entry: &str, address: &UpstreamAddress) -> bool {
    let entry = entry.trim().to_ascii_lowercase();
    let (host, port) = match entry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((h, p)) => (h.to_owned(), p.strip_prefix(':').map(str::to_owned)),
            None => return false,
        },
        None => match entry.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
            None => (entry.clone(), None),
        },
    };
    let port_ok = match port.as_deref() {
        None => address.default_port,
        Some("*") => true,
        Some(p) => p.parse::<u16>().is_ok_and(|p| p == address.port),
    };
    if !port_ok {
        return false;
    }
    match &address.host {
        url::Host::Domain(d) => {
            let host = host.strip_suffix('.').unwrap_or(&host);
            let (pattern, labels): (Vec<&str>, Vec<&str>) = (host.split('.').collect(), d.split('.').collect());
            pattern.len() == labels.len()
                && pattern
                    .iter()
                    .zip(&labels)
                    .all(|(p, l)| !l.is_empty() && wildmatch::WildMatchPattern::<'*', '\0'>::new(p).matches(l))
        }
        url::Host::Ipv4(ip) => host.parse::<std::net::Ipv4Addr>().is_ok_and(|h| h == *ip),
        url::Host::Ipv6(ip) => host.parse::<std::net::Ipv6Addr>().is_ok_and(|h| h == *ip),
    }
}

impl PullThroughApiConfig {
    /// Whether a rule may name the upstream at `url` (a base URL with its scheme): its host
    /// and port, parsed as the HTTP client will read them, must match an entry.
    pub fn allows(&self, url: &str) -> bool {
        match UpstreamAddress::parse(url) {
            Ok(address) => self.allowed_upstreams.iter().any(|e| entry_allows(e, &address)),
            Err(_) => false,
        }
    }
}

/// `[[pull_through_secrets]]`: upstream credentials that pull-through rules created through
/// the ECR API name by `credentialArn`, as ECR names a Secrets Manager secret
/// (`arn:aws:secretsmanager:<region>:<account>:secret:ecr-pullthroughcache/<name>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSecret {
    /// The secret's name, e.g. `"ecr-pullthroughcache/docker-hub"`. Required.
    pub name: String,
    /// The upstream user name. Required.
    pub username: String,
    /// The upstream password or access token (Secrets Manager's `accessToken`), or set
    /// `access_token_file`. Default `""`.
    pub access_token: Secret,
    /// File holding the access token. Default `""`.
    pub access_token_file: String,
}

impl UpstreamSecret {
    /// The user name and access token.
    pub fn credentials(&self) -> Result<(String, String), ConfigError> {
        let token = super::secret::resolve(
            &self.access_token,
            &self.access_token_file,
            "pull_through_secrets.access_token_file",
        )?;
        Ok((self.username.clone(), token.unwrap_or_default()))
    }
}

/// Checks each secret: a name under `ecr-pullthroughcache/` (as ECR requires), used once, with
/// a user name and a token.
pub fn validate_secrets(secrets: &[UpstreamSecret]) -> Result<(), ConfigError> {
    let invalid = |message: String| Err(ConfigError::Invalid { key: "pull_through_secrets", message });
    let mut names = std::collections::HashSet::new();
    for s in secrets {
        let valid_name = s.name.strip_prefix("ecr-pullthroughcache/").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
        });
        if !valid_name {
            return invalid(format!("name {:?} must be \"ecr-pullthroughcache/<name>\", as ECR requires", s.name));
        }
        if !names.insert(s.name.as_str()) {
            return invalid(format!("name {:?} is used twice", s.name));
        }
        if s.username.is_empty() || s.credentials()?.1.is_empty() {
            return invalid(format!("secret {:?} needs a username and an access_token or access_token_file", s.name));
        }
    }
    Ok(())
}

/// Checks every rule, and that prefixes and namespaces are unique and one rule at most is the
/// mirror default.
pub fn validate(rules: &[PullThroughRule]) -> Result<(), ConfigError> {
    let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
    let mut prefixes = std::collections::HashSet::new();
    let mut namespaces = std::collections::HashSet::new();
    for rule in rules {
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
    if rules.iter().filter(|r| r.mirror_default).count() > 1 {
        return invalid("pull_through.mirror_default", "only one rule can be the mirror default".into());
    }
    Ok(())
}

#[cfg(test)]
mod api_tests {
    use super::PullThroughApiConfig;

    #[test]
    fn api_rules_reach_only_allowed_upstreams() {
        let c = PullThroughApiConfig::default();
        for ok in [
            "https://registry-1.docker.io",
            "https://registry-1.docker.io/",
            "https://registry-1.docker.io.",
            "https://registry-1.docker.io:443",
            "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "https://team.azurecr.io",
            "https://GHCR.IO",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for refused in [
            "https://169.254.169.254",
            "https://127.0.0.1:5000",
            "https://registry-1.docker.io.evil.example",
            "https://evil.example",
            "",
            "registry-1.docker.io",
            // A "port" that is not a number, wildcard-matched before: now not a URL at all.
            "https://127.0.0.1:5000.azurecr.io",
            "https://169.254.169.254:80.dkr.ecr.us-east-1.amazonaws.com",
            // Another port on an allowed host, credentials, paths, queries, other schemes.
            "https://registry-1.docker.io:8443",
            "https://user:pw@registry-1.docker.io",
            "https://registry-1.docker.io@169.254.169.254",
            "https://registry-1.docker.io/v2/evil",
            "https://registry-1.docker.io?x=1",
            "file:///etc/passwd",
            "ftp://registry-1.docker.io",
            // A wildcard is one label, never several or none.
            "https://a.b.dkr.ecr.eu-west-1.amazonaws.com",
            "https://.azurecr.io",
            "https://azurecr.io",
            // IP literals in any notation are addresses, never a pattern's domain.
            "http://2130706433",
            "http://0x7f.0.0.1",
            "http://[::1]",
            "http://[::ffff:169.254.169.254]",
        ] {
            assert!(!c.allows(refused), "{refused}");
        }
        // Explicit entries: an address (any notation reaches it), a port, any port, IPv6.
        let own = PullThroughApiConfig {
            allowed_upstreams: vec!["10.0.0.5:5000".into(), "mirror.internal:*".into(), "[fd00::5]:5000".into()],
        };
        for ok in [
            "http://10.0.0.5:5000",
            "http://167772165:5000",
            "http://0xa.0.0.5:5000",
            "https://mirror.internal:8443",
            "https://mirror.internal",
            "http://[fd00:0::5]:5000",
        ] {
            assert!(own.allows(ok), "{ok}");
        }
        for refused in
            ["http://10.0.0.5", "http://10.0.0.5:5001", "http://mirror.internal.evil:80", "http://[fd00::6]:5000"]
        {
            assert!(!own.allows(refused), "{refused}");
        }
    }
}
