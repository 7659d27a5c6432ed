//! Pull-through cache eviction, per rule: images nobody pulled for `expire_unpulled_after` go,
//! then, while the rule's cached images hold more than `max_bytes` (each stored digest counted
//! once, however many images share it), the least recently pulled go, down to 90% of it (the
//! low-water mark, so a full cache does not evict one image per run). An image's last use is
//! its latest pull or, never pulled, when it was cached. Evicting only unlinks: the collector
//! frees the bytes after its grace period, a pull in progress keeps reading (its blobs stay
//! until then, and a pull-through repository fetches a missing blob again), and the next pull
//! of an evicted image fetches it from the upstream.

use super::{apply, Expiry, Grouped, Reason};
use crate::oci::{Digest, RepositoryName};
use crate::registry::{self, Registry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// One rule's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    /// The rule's repository prefix (its cached repositories are `<prefix>/…`).
    pub prefix: String,
    /// The most its images may hold; 0 for no limit.
    pub max_bytes: u64,
    /// Images unused for this long go; zero for never.
    pub expire_unpulled_after: Duration,
}

impl CacheLimits {
    /// Whether the rule has any limit to enforce.
    pub fn any(&self) -> bool {
        self.max_bytes > 0 || !self.expire_unpulled_after.is_zero()
    }
}

/// What an eviction pass found and did for one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictionReport {
    /// The rule's prefix.
    pub rule: String,
    /// Bytes its images held before (each digest once).
    pub bytes_before: u64,
    /// Bytes they hold after (what the collector will leave).
    pub bytes_after: u64,
    /// Images evicted (or, dry, that would be), by repository.
    pub evicted: Vec<(String, Expiry)>,
}

/// One cached image (an owner with what belongs to it) across the rule's repositories.
struct Unit {
    repository: RepositoryName,
    /// Its expiries in order (owner first).
    members: Vec<Expiry>,
    /// Every digest it stores (manifests and blobs), each once.
    content: Vec<Digest>,
    last_used_ms: u64,
}

/// Enforces `limits` on the rule's cached repositories (nothing is written on a dry run).
pub async fn evict(
    registry: &Registry,
    audit: &crate::events::Audit,
    limits: &CacheLimits,
    repositories: &[RepositoryName],
    dry_run: bool,
) -> registry::Result<EvictionReport> {
    let now_ms = registry.clock().now_ms();
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut units = Vec::new();
    let under = format!("{}/", limits.prefix);
    for name in repositories.iter().filter(|n| n.as_str().starts_with(&under)) {
        units.extend(repository_units(registry, name, now_ms, &mut sizes).await?);
    }
    let mut uses: HashMap<&Digest, u32> = HashMap::new();
    for u in &units {
        for d in &u.content {
            *uses.entry(d).or_default() = uses.get(d).copied().unwrap_or(0).saturating_add(1);
        }
    }
    let size = |d: &Digest| sizes.get(d).copied().unwrap_or(0);
    let mut total: u64 = uses.keys().map(|d| size(d)).fold(0, u64::saturating_add);
    let mut report = EvictionReport { rule: limits.prefix.clone(), bytes_before: total, ..Default::default() };
    // Least recently used first; ties in name and digest order so every run agrees.
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| {
        units[a]
            .last_used_ms
            .cmp(&units[b].last_used_ms)
            .then_with(|| units[a].repository.as_str().cmp(units[b].repository.as_str()))
            .then_with(|| units[a].members[0].digest.hex().cmp(units[b].members[0].digest.hex()))
    });
    let unpulled_cutoff = (!limits.expire_unpulled_after.is_zero())
        .then(|| now_ms.saturating_sub(u64::try_from(limits.expire_unpulled_after.as_millis()).unwrap_or(u64::MAX)));
    let low_water = limits.max_bytes.saturating_sub(limits.max_bytes / 10);
    let over = limits.max_bytes > 0 && total > limits.max_bytes;
    let mut chosen: Vec<(usize, Reason)> = Vec::new();
    for &i in &order {
        let unit = &units[i];
        let reason = if unpulled_cutoff.is_some_and(|c| unit.last_used_ms < c) {
            Reason::CacheUnpulled
        } else if over && total > low_water {
            Reason::CacheSize
        } else {
            continue;
        };
        for d in &unit.content {
            if let Some(n) = uses.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    total = total.saturating_sub(size(d));
                }
            }
        }
        chosen.push((i, reason));
    }
    report.bytes_after = total;
    for (i, reason) in chosen {
        let unit = &units[i];
        let done = if dry_run {
            unit.members.clone()
        } else {
            apply(registry, audit, &unit.repository, &unit.members, reason).await?
        };
        report.evicted.extend(done.into_iter().map(|e| (unit.repository.to_string(), e)));
    }
    if let Ok(gauge) = registry.metrics().gc.rule_bytes.get_metric_with_label_values(&[&limits.prefix]) {
        gauge.set(i64::try_from(report.bytes_after).unwrap_or(i64::MAX));
    }
    Ok(report)
}

/// A repository's cached images as units, noting each digest's stored size in `sizes`.
async fn repository_units(
    registry: &Registry,
    name: &RepositoryName,
    now_ms: u64,
    sizes: &mut HashMap<Digest, u64>,
) -> registry::Result<Vec<Unit>> {
    let grouped = Grouped::new(registry.repository_images(name).await?);
    for image in &grouped.images {
        sizes.insert(image.digest.clone(), image.manifest_size);
        for blob in &image.blobs {
            if !sizes.contains_key(blob) {
                let s = registry.linked_blob_size(name, blob).await?;
                sizes.insert(blob.clone(), s);
            }
        }
    }
    let mut units = Vec::new();
    for &owner in &grouped.owners {
        let members: Vec<usize> = grouped.with_dependents(vec![(owner, 0)]).into_iter().map(|(i, _)| i).collect();
        let mut content: Vec<Digest> = Vec::new();
        let mut last_used_ms = 0u64;
        // What belongs to the owner counts with it, even what another owner shares.
        let shared = grouped.owned_by.iter().filter(|(_, o)| o.contains(&owner)).map(|(&d, _)| d);
        let counted: Vec<usize> = members.iter().copied().chain(shared).collect();
        for &m in &counted {
            let image = &grouped.images[m];
            content.push(image.digest.clone());
            content.extend(image.blobs.iter().cloned());
            let used = image.last_pulled_ms.max(image.pushed_at_ms).unwrap_or(now_ms);
            last_used_ms = last_used_ms.max(used);
        }
        content.sort_unstable_by(|a, b| a.hex().cmp(b.hex()));
        content.dedup();
        units.push(Unit {
            repository: name.clone(),
            members: members.into_iter().map(|m| grouped.expiry(m, 0, now_ms)).collect(),
            content,
            last_used_ms,
        });
    }
    Ok(units)
}
