//! Lifecycle: repositories' ECR lifecycle policies (parsed in [`policy`], judged by
//! [`evaluate`]) and pull-through cache limits ([`evict`]), applied by expiring images, on a
//! schedule on one replica at a time (the `leases/lifecycle` lease, [`LifecycleWorker`]) and by
//! hand (`ferry lifecycle run`); previews use the same planner with no side effects. Expiring
//! an image only unlinks it from its repository: the collector frees the space after its grace
//! period. Owns policies' meaning and the plan; the storage layout stays in `registry`.
//!
//! **What an image is.** Each manifest a repository holds, except the ones that belong to
//! another: an untagged child of an index the repository holds, or an untagged referrer
//! (signature, SBOM) whose subject it holds. Those are not judged on their own: they are kept
//! while their owner lives and expire with it (after it, so a crash in between never leaves
//! an index naming a missing child). This is what users of multi-arch images expect, where ECR
//! judges children as untagged images of their own (ECR.md §4 row 8).

pub mod evaluate;
pub mod evict;
pub mod policy;
pub mod previews;
pub mod worker;

pub use worker::LifecycleWorker;

use crate::oci::{Digest, RepositoryName};
use crate::registry::images::StoredImage;
use crate::registry::{self, Registry};
use evaluate::{evaluate, ImageFacts};
use policy::LifecyclePolicy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How long the lifecycle lease lasts between renewals.
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// One image a plan expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiry {
    /// The image's digest.
    pub digest: Digest,
    /// Its tags when judged (sorted).
    pub tags: Vec<String>,
    /// When it was pushed (ms since the epoch).
    pub pushed_at_ms: u64,
    /// The rule that expires it (for an image that belongs to another, its owner's rule).
    pub rule_priority: u64,
}

/// Images grouped as lifecycle sees them: the judged ones, and who owns each of the rest.
pub(crate) struct Grouped {
    /// Every manifest the repository holds.
    pub images: Vec<StoredImage>,
    /// Indexes into `images` of those judged on their own.
    pub owners: Vec<usize>,
    /// For each image that belongs to others: the indexes of its owners.
    pub owned_by: HashMap<usize, Vec<usize>>,
}

impl Grouped {
    /// Groups a repository's images (see the module docs).
    pub(crate) fn new(images: Vec<StoredImage>) -> Self {
        let position: HashMap<&Digest, usize> = images.iter().enumerate().map(|(i, m)| (&m.digest, i)).collect();
        let mut owned_by: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, image) in images.iter().enumerate() {
            for child in &image.children {
                if let Some(&c) = position.get(child) {
                    if images[c].tags.is_empty() && c != i {
                        owned_by.entry(c).or_default().push(i);
                    }
                }
            }
            if let Some(&s) = image.subject.as_ref().and_then(|s| position.get(s)) {
                if image.tags.is_empty() && s != i {
                    owned_by.entry(i).or_default().push(s);
                }
            }
        }
        let owners = (0..images.len()).filter(|i| !owned_by.contains_key(i)).collect();
        Self { images, owners, owned_by }
    }

    /// The images that go with `expired` owners: every image all of whose owners expire (to a
    /// fixed point, so a signature of an SBOM of an image goes too), after them, each with its
    /// first owner's rule.
    pub(crate) fn with_dependents(&self, expired: Vec<(usize, u64)>) -> Vec<(usize, u64)> {
        let mut out = expired;
        let mut rule_of: HashMap<usize, u64> = out.iter().copied().collect();
        loop {
            let mut added = false;
            for (&dependent, owners) in &self.owned_by {
                if rule_of.contains_key(&dependent) {
                    continue;
                }
                if owners.iter().all(|o| rule_of.contains_key(o)) {
                    let rule = owners.first().and_then(|o| rule_of.get(o)).copied().unwrap_or(0);
                    rule_of.insert(dependent, rule);
                    out.push((dependent, rule));
                    added = true;
                }
            }
            if !added {
                return out;
            }
        }
    }

    /// An image's expiry record.
    pub(crate) fn expiry(&self, i: usize, rule_priority: u64, now_ms: u64) -> Expiry {
        let image = &self.images[i];
        Expiry {
            digest: image.digest.clone(),
            tags: image.tags.clone(),
            pushed_at_ms: image.pushed_at_ms.unwrap_or(now_ms),
            rule_priority,
        }
    }
}

/// What `policy` would expire in `name` at `now_ms`: the judged images first, then what goes
/// with them. An image pushed before push times were kept counts as pushed now.
pub async fn plan(
    registry: &Registry,
    name: &RepositoryName,
    policy: &LifecyclePolicy,
    now_ms: u64,
) -> registry::Result<Vec<Expiry>> {
    // One pass over the index: a link per image (and an image index's bytes, for its children).
    let grouped = Grouped::new(registry.indexed_images(name).await?);
    let facts: Vec<ImageFacts> = grouped
        .owners
        .iter()
        .map(|&i| {
            let image = &grouped.images[i];
            ImageFacts {
                digest: image.digest.clone(),
                tags: image.tags.clone(),
                pushed_at_ms: image.pushed_at_ms.unwrap_or(now_ms),
                last_pulled_ms: image.last_pulled_ms,
            }
        })
        .collect();
    let verdicts = evaluate(policy, &facts, now_ms);
    let index: HashMap<&Digest, usize> = grouped.images.iter().enumerate().map(|(i, m)| (&m.digest, i)).collect();
    let expired: Vec<(usize, u64)> =
        verdicts.iter().filter_map(|v| index.get(&v.digest).map(|&i| (i, v.rule_priority))).collect();
    Ok(grouped.with_dependents(expired).into_iter().map(|(i, rule)| grouped.expiry(i, rule, now_ms)).collect())
}

/// Why an image was expired, for the log and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A repository's lifecycle policy.
    Policy,
    /// A pull-through rule's `max_bytes`.
    CacheSize,
    /// A pull-through rule's `expire_unpulled_after`.
    CacheUnpulled,
}

impl Reason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::CacheSize => "cache_size",
            Self::CacheUnpulled => "cache_unpulled",
        }
    }
}

/// Expires the planned images in order (owners before what goes with them), each re-checked
/// just before; records each in the audit trail as done by `ferry:lifecycle`. Returns those
/// expired.
pub async fn apply(
    registry: &Registry,
    audit: &crate::events::Audit,
    name: &RepositoryName,
    planned: &[Expiry],
    reason: Reason,
) -> registry::Result<Vec<Expiry>> {
    let mut done = Vec::new();
    for e in planned {
        if registry.expire_image(name, &e.digest, &e.tags).await? {
            registry.metrics().lifecycle.expired.with_label_values(&[reason.as_str()]).inc();
            audit.record(crate::events::AuditEvent {
                principal: "ferry:lifecycle".into(),
                api: "worker",
                operation: "lifecycle",
                action: "ecr:BatchDeleteImage",
                repository: Some(name.to_string()),
                reference: Some(e.digest.to_string()),
                detail: Some(format!(
                    "expired ({}, rule priority {}), tags {:?}",
                    reason.as_str(),
                    e.rule_priority,
                    e.tags
                )),
                ..crate::events::AuditEvent::new(crate::events::Outcome::Success)
            });
            done.push(e.clone());
        } else {
            tracing::info!(repository = %name, digest = %e.digest, "image changed since it was judged; left for the next run");
        }
    }
    Ok(done)
}

/// What a lifecycle run did to one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryRun {
    /// The repository.
    pub repository: String,
    /// The images it expired (or, dry, would expire).
    pub expired: Vec<Expiry>,
}

/// Applies `name`'s lifecycle policy, if it has one (nothing is written on a dry run).
pub async fn run_repository(
    registry: &Registry,
    audit: &crate::events::Audit,
    name: &RepositoryName,
    dry_run: bool,
) -> registry::Result<Option<RepositoryRun>> {
    let Some(settings) = registry.repository_settings(name).await? else { return Ok(None) };
    let Some(text) = settings.lifecycle_policy else { return Ok(None) };
    let policy = match policy::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(repository = %name, error = %e, "stored lifecycle policy no longer parses; skipped");
            return Ok(None);
        }
    };
    let now_ms = registry.clock().now_ms();
    let planned = plan(registry, name, &policy, now_ms).await?;
    let expired = if dry_run { planned } else { apply(registry, audit, name, &planned, Reason::Policy).await? };
    if !dry_run {
        let at = now_ms / 1000;
        registry
            .update_repository(name, move |s| {
                s.lifecycle_evaluated_at = Some(at);
                Ok(())
            })
            .await?;
    }
    Ok(Some(RepositoryRun { repository: name.to_string(), expired }))
}
