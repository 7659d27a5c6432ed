//! Pull-through repositories: manifests by tag trusted for the rule's `tag_ttl`, then
//! revalidated with a HEAD and fetched again only when the digest moved; manifests by digest
//! cached for good; a cached tag served for `stale_if_error` while the upstream fails; blobs
//! fetched through single-flight fills. Everything fetched is stored in the repository
//! `<prefix>/<upstream repository>`, so later pulls are served locally.

use super::manifests::ManifestRecord;
use super::{Error, Registry, Repo, Result};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::proxy::fill::{FillError, OnCommit};
use crate::proxy::{upstream, Route};
use crate::storage::Key;

/// A duration in whole milliseconds, saturating (config durations can be anything).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A cache lookup's result, the `result` label of `ferry_cache_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    /// Served from the cache without asking the upstream.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// Cached tag confirmed unchanged by a HEAD upstream.
    Revalidated,
    /// Served from the cache because the upstream failed.
    Stale,
    /// Joined a fill already in progress.
    Coalesced,
}

impl CacheResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::Coalesced => "coalesced",
        }
    }
}

impl Registry {
    pub(super) fn count_cache(&self, route: &Route, kind: &str, result: CacheResult) {
        self.metrics.cache.requests.with_label_values(&[route.rule.label(), kind, result.as_str()]).inc();
    }

    /// Which repository a pull of `name` reads: a pull-through rule's (by prefix, by `ns`, or
    /// as the mirror default for names no local repository has) or the local one.
    pub async fn resolve(&self, name: RepositoryName, ns: Option<&str>) -> Result<Repo> {
        Ok(match self.route(&name, ns) {
            Some(route) => Repo::Proxied(route),
            None => Repo::Local(name),
        })
    }

    /// The pull-through route a name takes, from configuration alone (never from what happens
    /// to be stored, so nobody can claim a mirrored name by pushing it): a rule's prefix or
    /// `ns`, else the mirror-default rule for every name outside `registry.local_namespaces`.
    fn route(&self, name: &RepositoryName, ns: Option<&str>) -> Option<Route> {
        if let Some(route) = self.proxy.route_explicit(name, ns) {
            return Some(route);
        }
        if self.is_local_namespace(name) {
            return None;
        }
        self.proxy.route_mirror(name)
    }

    fn is_local_namespace(&self, name: &RepositoryName) -> bool {
        self.settings.local_namespaces.iter().any(|ns| {
            name.as_str() == ns || name.as_str().strip_prefix(ns.as_str()).is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Why `name` cannot be written, if it cannot: pull-through repositories are read-only to
    /// clients, as in ECR.
    pub fn read_only_reason(&self, name: &RepositoryName, ns: Option<&str>) -> Option<String> {
        if let Some(route) = self.proxy.route_explicit(name, ns) {
            return Some(format!(
                "{name} is a pull-through cache of {}; it cannot be pushed to or deleted from",
                route.rule.upstream.base()
            ));
        }
        self.route(name, ns).map(|route| {
            format!(
                "{name} belongs to the mirror of {} (pull_through rule {} has mirror_default): it cannot be pushed to or deleted from; to push it here, add its namespace to registry.local_namespaces",
                route.rule.upstream.base(),
                route.rule.label()
            )
        })
    }

    /// Stores a manifest fetched from upstream under the route's repository (and the tag, if any).
    async fn store_upstream_manifest(
        &self,
        route: &Route,
        tag: Option<&Tag>,
        m: upstream::UpstreamManifest,
    ) -> Result<ManifestRecord> {
        // No image size in the index: the blobs are fetched on demand, so readers measure what
        // is cached when they ask.
        let parsed = crate::oci::Manifest::parse(&m.bytes, Some(&m.media_type)).ok();
        let record = ManifestRecord {
            pushed_at_ms: Some(self.clock.now_ms()),
            tags: Some(Vec::new()),
            subject: parsed.and_then(|p| p.subject.map(|s| s.digest)),
            ..ManifestRecord::new(m.digest.clone(), m.media_type, m.bytes.len() as u64)
        };
        self.uses.touch(&m.digest).await?;
        self.storage.blob_put_small(&m.digest, m.bytes).await?;
        let record = self.write_link(&route.local, record).await?;
        if !self.repository_exists(&route.local).await? {
            self.apply_creation_template(&route.local, super::templates::AppliedFor::PullThroughCache).await?;
        }
        self.ensure_repository(&route.local).await?;
        let record = ManifestRecord { fetched_at_ms: Some(self.clock.now_ms()), ..record };
        if let Some(tag) = tag {
            self.put_tag_record(&route.local, tag, &record).await?;
        }
        Ok(record)
    }

    async fn put_tag_record(&self, name: &RepositoryName, tag: &Tag, record: &ManifestRecord) -> Result<()> {
        self.set_tag(name, tag, record, false).await
    }

    /// Makes sure the manifest is cached and fresh enough; returns its record.
    pub(super) async fn pull_through_manifest(&self, route: &Route, reference: &Reference) -> Result<ManifestRecord> {
        let tag = match reference {
            Reference::Digest(d) => {
                if let Some(v) = self.storage.record_get(&Key::manifest_link(&route.local, d)).await? {
                    self.count_cache(route, "manifest", CacheResult::Hit);
                    return super::manifests::decode(&v);
                }
                if !route.may_import {
                    return Err(Error::ImportDenied(route.local.clone()));
                }
                let m = route
                    .rule
                    .upstream
                    .manifest(&route.upstream_repo, &d.to_string(), Some(d))
                    .await
                    .map_err(|e| self.upstream_error(e, reference))?;
                self.count_cache(route, "manifest", CacheResult::Miss);
                return self.store_upstream_manifest(route, None, m).await;
            }
            Reference::Tag(t) => t,
        };
        let cached: Option<ManifestRecord> = match self.storage.record_get(&Key::tag(&route.local, tag)).await? {
            Some(v) => serde_json::from_slice(&v).ok(),
            None => None,
        };
        let age_ms = cached.as_ref().map(|c| self.clock.now_ms().saturating_sub(c.fetched_at_ms.unwrap_or(0)));
        let ttl_ms = millis(route.rule.config.tag_ttl.0);
        if let (Some(c), Some(age)) = (&cached, age_ms) {
            // A caller that may not import gets what is cached, however old.
            if age < ttl_ms || !route.may_import {
                self.count_cache(route, "manifest", CacheResult::Hit);
                return Ok(c.clone());
            }
        }
        if !route.may_import {
            return Err(Error::ImportDenied(route.local.clone()));
        }
        enum Fetched {
            Unchanged(ManifestRecord),
            New(upstream::UpstreamManifest),
        }
        let fetched = async {
            if let Some(c) = &cached {
                if route.rule.upstream.manifest_digest(&route.upstream_repo, tag.as_str()).await?
                    == Some(c.digest.clone())
                {
                    return Ok(Fetched::Unchanged(c.clone()));
                }
            }
            Ok::<_, upstream::Error>(Fetched::New(
                route.rule.upstream.manifest(&route.upstream_repo, tag.as_str(), None).await?,
            ))
        }
        .await;
        match fetched {
            Ok(Fetched::Unchanged(c)) => {
                self.count_cache(route, "manifest", CacheResult::Revalidated);
                let record = ManifestRecord { fetched_at_ms: Some(self.clock.now_ms()), ..c };
                self.put_tag_record(&route.local, tag, &record).await?;
                Ok(record)
            }
            Ok(Fetched::New(m)) => {
                self.count_cache(route, "manifest", CacheResult::Miss);
                self.store_upstream_manifest(route, Some(tag), m).await
            }
            Err(e) if e.is_transient() => {
                let stale_ms = ttl_ms.saturating_add(millis(route.rule.config.stale_if_error.0));
                match (cached, age_ms) {
                    (Some(c), Some(age)) if age < stale_ms => {
                        tracing::warn!(rule = route.rule.label(), repository = %route.upstream_repo, %tag, error = %e, "upstream failing; serving the cached tag");
                        self.count_cache(route, "manifest", CacheResult::Stale);
                        Ok(c)
                    }
                    _ => Err(self.upstream_error(e, reference)),
                }
            }
            Err(e) => Err(self.upstream_error(e, reference)),
        }
    }

    fn upstream_error(&self, e: upstream::Error, reference: &Reference) -> Error {
        match e {
            upstream::Error::NotFound => Error::ManifestUnknown(reference.to_string()),
            e => Error::Upstream(e),
        }
    }

    /// The tags upstream when it answers, else the cached ones.
    pub(super) async fn pull_through_tags(&self, route: &Route) -> Result<Vec<String>> {
        if !route.may_import {
            return Ok(self.storage.record_list(&Key::tags(&route.local)).await?);
        }
        match route.rule.upstream.tags(&route.upstream_repo).await {
            Ok(tags) => Ok(tags),
            Err(upstream::Error::NotFound) => Err(Error::NameUnknown(route.local.clone())),
            Err(e) if e.is_transient() => {
                tracing::warn!(rule = route.rule.label(), repository = %route.upstream_repo, error = %e, "upstream failing; listing cached tags");
                Ok(self.storage.record_list(&Key::tags(&route.local)).await?)
            }
            Err(e) => Err(Error::Upstream(e)),
        }
    }

    /// A callback that links a filled blob into the route's repository.
    pub(super) fn link_on_commit(&self, route: &Route, digest: &Digest) -> OnCommit {
        let repositories = self.repositories.clone();
        let (name, digest) = (route.local.clone(), digest.clone());
        Box::new(move |size| {
            Box::pin(async move {
                repositories
                    .link_blob(&name, &digest, size)
                    .await
                    .map_err(|e| FillError::Storage(std::sync::Arc::new(e)))
            })
        })
    }
}
