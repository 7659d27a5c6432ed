//! What each repository stores, for `ferry usage`: per repository, the bytes of the blobs and
//! manifests it links (what deleting it alone could free at most); in the total, each stored
//! digest once however many repositories share it; and per pull-through rule, its
//! repositories' content, again each digest once. Read from the links (one listing per
//! repository and one read per link), so it needs no collection; memory grows with the
//! number of distinct digests, as a report of them must.

use crate::oci::{Digest, RepositoryName};
use crate::registry::{ManifestRecord, Registry, Result};
use crate::storage::{records, Key};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// One repository's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryUsage {
    /// The repository.
    pub repository: String,
    /// The pull-through rule (prefix) that fills it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Manifests it holds.
    pub manifests: u64,
    /// Blobs it links.
    pub blobs: u64,
    /// Bytes of everything it links, shared content included.
    pub bytes: u64,
}

/// One pull-through rule's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleUsage {
    /// The rule's prefix.
    pub rule: String,
    /// Its cached repositories.
    pub repositories: u64,
    /// Bytes its repositories link, each digest once.
    pub bytes: u64,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Repositories, largest first.
    pub repositories: Vec<RepositoryUsage>,
    /// Pull-through rules, largest first.
    pub rules: Vec<RuleUsage>,
    /// Bytes of every linked digest, each once.
    pub total_bytes: u64,
    /// Distinct digests linked.
    pub total_objects: u64,
}

/// Usage by repository and by pull-through rule (`rules` are their prefixes).
pub async fn usage(registry: &Registry, rules: &[String]) -> Result<UsageReport> {
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    let mut by_rule: HashMap<&str, (u64, HashSet<Digest>)> = HashMap::new();
    let mut report = UsageReport::default();
    for name in registry.repository_names().await? {
        let rule = rules.iter().find(|r| name.as_str().strip_prefix(r.as_str()).is_some_and(|x| x.starts_with('/')));
        let (usage, digests) = repository_usage(registry, &name, &mut sizes).await?;
        if let Some(rule) = rule {
            let entry = by_rule.entry(rule.as_str()).or_default();
            entry.0 = entry.0.saturating_add(1);
            entry.1.extend(digests);
        }
        report.repositories.push(RepositoryUsage { rule: rule.cloned(), ..usage });
    }
    report.total_bytes = sizes.values().copied().fold(0, u64::saturating_add);
    report.total_objects = sizes.len() as u64;
    report.rules = rules
        .iter()
        .map(|r| {
            let (repositories, digests) = by_rule.remove(r.as_str()).unwrap_or_default();
            let bytes = digests.iter().map(|d| sizes.get(d).copied().unwrap_or(0)).fold(0, u64::saturating_add);
            RuleUsage { rule: r.clone(), repositories, bytes }
        })
        .collect();
    report.repositories.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.repository.cmp(&b.repository)));
    report.rules.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.rule.cmp(&b.rule)));
    Ok(report)
}

async fn repository_usage(
    registry: &Registry,
    name: &RepositoryName,
    sizes: &mut HashMap<Digest, u64>,
) -> Result<(RepositoryUsage, Vec<Digest>)> {
    let storage = registry.storage_handle();
    let mut usage = RepositoryUsage { repository: name.to_string(), rule: None, manifests: 0, blobs: 0, bytes: 0 };
    let mut digests = Vec::new();
    for hex in storage.record_list(&Key::blob_links(name)).await? {
        let Ok(d) = Digest::parse(&format!("sha256:{hex}")) else { continue };
        let size = registry.linked_blob_size(name, &d).await?;
        usage.blobs = usage.blobs.saturating_add(1);
        usage.bytes = usage.bytes.saturating_add(size);
        sizes.insert(d.clone(), size);
        digests.push(d);
    }
    for hex in storage.record_list(&Key::manifest_links(name)).await? {
        let Ok(d) = Digest::parse(&format!("sha256:{hex}")) else { continue };
        let Some(v) = storage.record_get(&Key::manifest_link(name, &d)).await? else { continue };
        let size = records::decode::<ManifestRecord>(&v).map(|r| r.size).unwrap_or(0);
        usage.manifests = usage.manifests.saturating_add(1);
        usage.bytes = usage.bytes.saturating_add(size);
        sizes.insert(d.clone(), size);
        digests.push(d);
    }
    Ok((usage, digests))
}
