//! Pull-through caching: the rules that map repository names to upstream registries (those of
//! the config file, and those created through the ECR API, kept by [`rules`] and handed over as
//! [`RuleRecord`]s), the upstream client, and single-flight fills that stream a blob to every
//! waiting client and into storage at once. Knows nothing of how storage is laid out.

pub mod fill;
pub mod rules;
pub mod upstream;

use crate::config::{PullThroughApiConfig, PullThroughRule, UpstreamSecret};
use crate::metrics::Metrics;
use crate::oci::RepositoryName;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
pub use upstream::Upstream;

/// A pull-through rule created through the ECR API, as stored (ECR's members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleRecord {
    /// `ecrRepositoryPrefix`, without a trailing `/`.
    pub ecr_repository_prefix: String,
    /// `upstreamRegistryUrl`, as given.
    pub upstream_registry_url: String,
    /// The upstream's base URL (`https://` unless the URL named `http://`).
    pub upstream: String,
    /// `upstreamRegistry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_registry: Option<String>,
    /// `credentialArn`: names one of `[[pull_through_secrets]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_arn: Option<String>,
    /// `customRoleArn`, kept and shown (Ferry assumes no roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_role_arn: Option<String>,
    /// When it was created, in ms since the epoch.
    pub created_at_ms: u64,
    /// When it last changed, in ms since the epoch.
    pub updated_at_ms: u64,
}

impl RuleRecord {
    /// The secret `credentialArn` names (`ecr-pullthroughcache/...`).
    pub fn secret_name(&self) -> Option<&str> {
        self.credential_arn.as_deref().and_then(|a| a.split_once(":secret:")).map(|(_, name)| name)
    }
}

/// One configured rule with its upstream client.
pub struct Rule {
    /// The rule as configured.
    pub config: PullThroughRule,
    /// The validated prefix.
    pub prefix: RepositoryName,
    /// The upstream client.
    pub upstream: Upstream,
}

impl Rule {
    /// The rule's label in metrics and logs (its prefix).
    pub fn label(&self) -> &str {
        self.prefix.as_str()
    }
}

/// Where a pulled name comes from: which rule, the upstream repository, and the local name
/// its cache lives under (`<prefix>/<upstream repository>`).
#[derive(Clone)]
pub struct Route {
    /// The rule.
    pub rule: Arc<Rule>,
    /// The repository name upstream, e.g. `library/nginx`.
    pub upstream_repo: String,
    /// The repository the cache is kept in, e.g. `docker-hub/library/nginx`.
    pub local: RepositoryName,
    /// Whether this request may make Ferry contact the upstream (`ecr:BatchImportUpstreamImage`):
    /// without it only what is cached is served.
    pub may_import: bool,
}

/// The rules: the config file's, then those created through the API.
pub struct Proxy {
    configured: Vec<Arc<Rule>>,
    /// Replaced whole when the stored rules change; readers take a snapshot.
    stored: RwLock<Arc<Vec<Arc<Rule>>>>,
    secrets: Vec<UpstreamSecret>,
    api: PullThroughApiConfig,
    metrics: Arc<Metrics>,
}

/// Why the rules could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("pull_through rule {prefix}: {message}")]
pub struct RuleError {
    prefix: String,
    message: String,
}

impl Proxy {
    /// Builds the config file's rules and their upstream clients; `secrets` are what rules
    /// created through the API may name, and `api` which upstreams they may reach.
    pub fn new(
        rules: &[PullThroughRule],
        secrets: &[UpstreamSecret],
        api: &PullThroughApiConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, RuleError> {
        let configured = rules.iter().map(|r| Self::build(r, metrics)).collect::<Result<_, _>>()?;
        Ok(Self {
            configured,
            stored: RwLock::default(),
            secrets: secrets.to_vec(),
            api: api.clone(),
            metrics: metrics.clone(),
        })
    }

    /// Whether a rule created through the API may name this upstream base URL.
    pub fn allows_upstream(&self, base: &str) -> bool {
        self.api.allows(base)
    }

    fn build(r: &PullThroughRule, metrics: &Arc<Metrics>) -> Result<Arc<Rule>, RuleError> {
        let err = |message: String| RuleError { prefix: r.prefix.clone(), message };
        let prefix = RepositoryName::parse(&r.prefix).map_err(|e| err(e.to_string()))?;
        let password = r.resolved_password().map_err(|e| err(e.to_string()))?;
        let credentials = (!r.username.is_empty()).then(|| (r.username.clone(), password.unwrap_or_default()));
        let upstream = Upstream::new(prefix.as_str(), &r.upstream, credentials, metrics.clone())
            .map_err(|e| err(e.to_string()))?;
        Ok(Arc::new(Rule { config: r.clone(), prefix, upstream }))
    }

    /// The credentials of the secret `name`, when `[[pull_through_secrets]]` has it.
    pub fn secret(&self, name: &str) -> Option<(String, String)> {
        self.secrets.iter().find(|s| s.name == name).and_then(|s| s.credentials().ok())
    }

    /// The rule a stored record stands for (its credentials from the secret it names).
    pub fn rule_config(&self, record: &RuleRecord) -> Result<PullThroughRule, RuleError> {
        if !self.allows_upstream(&record.upstream) {
            return Err(RuleError {
                prefix: record.ecr_repository_prefix.clone(),
                message: format!("its upstream {} is not in pull_through_api.allowed_upstreams", record.upstream),
            });
        }
        let mut rule = PullThroughRule {
            prefix: record.ecr_repository_prefix.clone(),
            upstream: record.upstream.clone(),
            ..PullThroughRule::default()
        };
        if let Some(name) = record.secret_name() {
            let (username, token) = self.secret(name).ok_or_else(|| RuleError {
                prefix: record.ecr_repository_prefix.clone(),
                message: format!("its secret {name} is not in [[pull_through_secrets]]"),
            })?;
            rule.username = username;
            rule.password = crate::config::Secret(token);
        }
        Ok(rule)
    }

    /// Takes the stored rules (all of them, as stored now). Unchanged rules keep their
    /// upstream clients (and cached tokens); one that cannot be built is logged and left out.
    pub fn set_stored(&self, records: &[RuleRecord]) {
        let current = self.stored_rules();
        let mut next = Vec::new();
        for record in records {
            let built = self.rule_config(record).and_then(|config| match current.iter().find(|r| r.config == config) {
                Some(same) => Ok(same.clone()),
                None => Self::build(&config, &self.metrics),
            });
            match built {
                Ok(rule) => next.push(rule),
                Err(e) => tracing::warn!(error = %e, "pull-through rule from the ECR API not in force"),
            }
        }
        if let Ok(mut stored) = self.stored.write() {
            *stored = Arc::new(next);
        }
    }

    fn stored_rules(&self) -> Arc<Vec<Arc<Rule>>> {
        self.stored.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Every rule in force: the config file's first, then the API's.
    pub fn rules(&self) -> Vec<Arc<Rule>> {
        self.configured.iter().chain(self.stored_rules().iter()).cloned().collect()
    }

    /// The config file's rules.
    pub fn configured(&self) -> &[Arc<Rule>] {
        &self.configured
    }

    /// Whether any rules are in force.
    pub fn is_empty(&self) -> bool {
        self.configured.is_empty() && self.stored_rules().is_empty()
    }

    fn route(rule: &Arc<Rule>, upstream_name: &str) -> Option<Route> {
        let upstream_repo = if rule.config.adds_library() && !upstream_name.contains('/') {
            format!("library/{upstream_name}")
        } else {
            upstream_name.to_owned()
        };
        let local = RepositoryName::parse(&format!("{}/{upstream_repo}", rule.prefix)).ok()?;
        Some(Route { rule: rule.clone(), upstream_repo, local, may_import: false })
    }

    /// The rule a name selects by its prefix, or by containerd's `ns` query parameter.
    pub fn route_explicit(&self, name: &RepositoryName, ns: Option<&str>) -> Option<Route> {
        // A snapshot, so a request sees one set of rules; no allocation on this hot path.
        let stored = self.stored_rules();
        for rule in self.configured.iter().chain(stored.iter()) {
            if let Some(rest) = name.as_str().strip_prefix(rule.prefix.as_str()).and_then(|r| r.strip_prefix('/')) {
                return Self::route(rule, rest);
            }
        }
        let ns = ns.filter(|n| !n.is_empty())?;
        let rule = self.configured.iter().chain(stored.iter()).find(|r| r.config.namespace == ns)?;
        Self::route(rule, name.as_str())
    }

    /// The mirror-default rule's route for a name that matched nothing else.
    pub fn route_mirror(&self, name: &RepositoryName) -> Option<Route> {
        let rule = self.configured.iter().find(|r| r.config.mirror_default)?;
        Self::route(rule, name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy() -> Proxy {
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).unwrap());
        let rules = vec![
            PullThroughRule {
                prefix: "docker-hub".into(),
                upstream: "http://127.0.0.1:1".into(),
                mirror_default: true,
                namespace: "docker.io".into(),
                ..Default::default()
            },
            PullThroughRule {
                prefix: "quay".into(),
                upstream: "http://127.0.0.1:2".into(),
                namespace: "quay.io".into(),
                ..Default::default()
            },
        ];
        Proxy::new(&rules, &[], &PullThroughApiConfig::default(), &metrics).unwrap()
    }

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    #[test]
    fn routes_by_prefix_namespace_and_mirror_default() {
        let p = proxy();
        let r = p.route_explicit(&name("docker-hub/nginx"), None).unwrap();
        assert_eq!((r.upstream_repo.as_str(), r.local.as_str()), ("library/nginx", "docker-hub/library/nginx"));
        let r = p.route_explicit(&name("docker-hub/library/nginx"), None).unwrap();
        assert_eq!(r.local.as_str(), "docker-hub/library/nginx");
        let r = p.route_explicit(&name("quay/coreos/etcd"), None).unwrap();
        assert_eq!((r.upstream_repo.as_str(), r.rule.label()), ("coreos/etcd", "quay"));
        let r = p.route_explicit(&name("quay/etcd"), None).unwrap();
        assert_eq!(r.upstream_repo, "etcd", "only Docker Hub adds library/");
        let r = p.route_explicit(&name("alpine"), Some("docker.io")).unwrap();
        assert_eq!(r.local.as_str(), "docker-hub/library/alpine");
        let r = p.route_explicit(&name("coreos/etcd"), Some("quay.io")).unwrap();
        assert_eq!(r.local.as_str(), "quay/coreos/etcd");
        assert!(p.route_explicit(&name("team/app"), None).is_none());
        assert!(p.route_explicit(&name("team/app"), Some("evil.example.com")).is_none(), "unknown ns reaches nothing");
        assert!(p.route_explicit(&name("docker-hubx/a"), None).is_none());
        assert!(p.route_explicit(&name("docker-hub"), None).is_none());
        let r = p.route_mirror(&name("nginx")).unwrap();
        assert_eq!(r.local.as_str(), "docker-hub/library/nginx");
    }
}
