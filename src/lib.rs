//! Ferry: a self-hosted container registry and pull-through cache. The crate's table of
//! contents: [`server`] starts it ([`start`], used by `main` and the tests), [`commands`] are
//! the one-shot runs beside servers, and each other module owns one layer or one feature (see
//! the README's architecture). Holds nothing else but the checks of a whole config and the
//! start-up error.

// Numbers from clients and upstreams (ranges, offsets, sizes, counts, TTLs) must never wrap
// or panic: every arithmetic operation is checked, saturating, or allowed with a reason where
// the operands are in-memory lengths; casts that could truncate go through `try_from`.
#![warn(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
// Long functions hide structure: split them into named stages instead.
#![warn(clippy::too_many_lines)]
// Unit tests compute expectations freely; the library itself is held to the rule above.
#![cfg_attr(test, allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation))]

pub mod api;
pub mod auth;
pub mod clock;
pub mod commands;
pub mod config;
pub mod events;
pub mod gc;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod replication;
pub mod server;
pub mod storage;
pub mod worker;

use config::Config;

/// Checks a config completely: each section's own checks, then what only the modules that
/// use it can check (the policy language, hash formats).
pub fn validate(config: &Config) -> Result<(), config::ConfigError> {
    config.validate()?;
    auth::check_config(&config.auth)
}

/// Why Ferry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Storage could not be opened.
    #[error("cannot open storage at {path}: {source}")]
    Storage {
        /// The data directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The S3 bucket could not be reached.
    #[error("{0}")]
    S3(String),
    /// A listener could not be bound, or TLS files could not be loaded.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A registry password was asked of a registry without access control.
    #[error("auth.enabled is false: this registry takes no passwords")]
    AuthDisabled,
    /// The token key could not be read or created in storage.
    #[error("cannot read or create the token key in storage: {0}")]
    TokenKey(#[source] storage::Error),
    /// The access key id and secret given are no principal's.
    #[error("the access key id and secret do not match a principal of the config")]
    NoSuchPrincipal,
    /// A command could not take its job's lease (another run holds it).
    #[error("cannot take the {job} lease: {source}")]
    Lease {
        /// The job.
        job: &'static str,
        /// Why.
        #[source]
        source: storage::lease::LeaseError,
    },
    /// A garbage collection failed.
    #[error("gc: {0}")]
    Gc(#[from] gc::GcError),
    /// Reading the registry failed.
    #[error("registry: {0}")]
    Registry(#[from] registry::Error),
    /// A lifecycle round failed.
    #[error("lifecycle: {0}")]
    Lifecycle(#[from] lifecycle::worker::LifecycleError),
    /// A replication backfill failed.
    #[error("replication: {0}")]
    Backfill(#[from] replication::backfill::BackfillError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

pub use commands::{
    collect_garbage, collect_garbage_with_clock, index_check, issue_token, replication_backfill, run_lifecycle, usage,
};
pub use server::{open_storage, start, start_with_clock, RunningServer};

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The top-level modules each module names (`crate::x`), outside comments and tests.
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut stack = vec![path.clone()];
                while let Some(dir) = stack.pop() {
                    for e in std::fs::read_dir(dir).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "rs") {
                            files.entry(name.clone()).or_default().push(p);
                        }
                    }
                }
            } else if path.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
                files.entry(name).or_default().push(path);
            }
        }
        let modules: BTreeSet<String> = files.keys().cloned().collect();
        let mut graph = BTreeMap::new();
        for (module, paths) in &files {
            let mut named = BTreeSet::new();
            for p in paths {
                let text = std::fs::read_to_string(p).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or("");
                for line in text.lines().map(|l| l.split("//").next().unwrap_or("")) {
                    for (i, _) in line.match_indices("crate::") {
                        let rest = &line[i + 7..];
                        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                        named.insert(rest[..end].to_owned());
                    }
                    if let Some(group) = line.split("use crate::{").nth(1) {
                        for item in group.split([',', '}']) {
                            named.insert(item.trim().split("::").next().unwrap_or("").to_owned());
                        }
                    }
                }
            }
            named.retain(|n| modules.contains(n) && n != module);
            graph.insert(module.clone(), named);
        }
        graph
    }

    /// Dependencies point down: no cycle between top-level modules; the ground floor (storage,
    /// oci, config, clock, metrics) names nothing above it; the registry names no feature.
    #[test]
    fn the_module_graph_points_down() {
        let graph = module_graph();
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            graph
                .get(from)
                .into_iter()
                .flatten()
                .any(|n| n == to || (seen.insert(n.clone()) && reaches(graph, n, to, seen)))
        }
        for module in graph.keys() {
            assert!(
                !reaches(&graph, module, module, &mut BTreeSet::new()),
                "{module} is on a dependency cycle: {graph:?}"
            );
        }
        let ground = ["storage", "oci", "config", "clock", "metrics"];
        for g in ground {
            for n in &graph[g] {
                assert!(ground.contains(&n.as_str()) || n == "worker", "{g} names {n}, above it");
            }
        }
        for n in &graph["registry"] {
            assert!(
                !["replication", "events", "lifecycle", "auth", "api", "http", "gc", "server", "commands"]
                    .contains(&n.as_str()),
                "the registry names {n}"
            );
        }
    }
}
