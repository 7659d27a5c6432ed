//! Pull-through caching: the rules that map repository names to upstream registries, the
//! upstream client, and single-flight fills that stream a blob to every waiting client and
//! into storage at once. Knows nothing of how storage is laid out.

pub mod fill;
pub mod upstream;

use crate::config::PullThroughRule;
use crate::metrics::Metrics;
use crate::oci::RepositoryName;
use std::sync::Arc;
pub use upstream::Upstream;

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

/// The configured rules.
pub struct Proxy {
    rules: Vec<Arc<Rule>>,
}

/// Why the rules could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("pull_through rule {prefix}: {message}")]
pub struct RuleError {
    prefix: String,
    message: String,
}

impl Proxy {
    /// Builds the rules and their upstream clients.
    pub fn new(rules: &[PullThroughRule], metrics: &Arc<Metrics>) -> Result<Self, RuleError> {
        let mut out = Vec::new();
        for r in rules {
            let err = |message: String| RuleError { prefix: r.prefix.clone(), message };
            let prefix = RepositoryName::parse(&r.prefix).map_err(|e| err(e.to_string()))?;
            let password = r.resolved_password().map_err(|e| err(e.to_string()))?;
            let credentials = (!r.username.is_empty()).then(|| (r.username.clone(), password.unwrap_or_default()));
            let upstream = Upstream::new(prefix.as_str(), &r.upstream, credentials, metrics.clone())
                .map_err(|e| err(e.to_string()))?;
            out.push(Arc::new(Rule { config: r.clone(), prefix, upstream }));
        }
        Ok(Self { rules: out })
    }

    /// Whether any rules are configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn route(rule: &Arc<Rule>, upstream_name: &str) -> Option<Route> {
        let upstream_repo = if rule.config.adds_library() && !upstream_name.contains('/') {
            format!("library/{upstream_name}")
        } else {
            upstream_name.to_owned()
        };
        let local = RepositoryName::parse(&format!("{}/{upstream_repo}", rule.prefix)).ok()?;
        Some(Route { rule: rule.clone(), upstream_repo, local, may_import: true })
    }

    /// The rule a name selects by its prefix, or by containerd's `ns` query parameter.
    pub fn route_explicit(&self, name: &RepositoryName, ns: Option<&str>) -> Option<Route> {
        for rule in &self.rules {
            if let Some(rest) = name.as_str().strip_prefix(rule.prefix.as_str()).and_then(|r| r.strip_prefix('/')) {
                return Self::route(rule, rest);
            }
        }
        let ns = ns.filter(|n| !n.is_empty())?;
        let rule = self.rules.iter().find(|r| r.config.namespace == ns)?;
        Self::route(rule, name.as_str())
    }

    /// The mirror-default rule's route for a name that matched nothing else.
    pub fn route_mirror(&self, name: &RepositoryName) -> Option<Route> {
        let rule = self.rules.iter().find(|r| r.config.mirror_default)?;
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
        Proxy::new(&rules, &metrics).unwrap()
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
