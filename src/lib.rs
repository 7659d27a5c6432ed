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
    collect_garbage, collect_garbage_with_clock, issue_token, replication_backfill, run_lifecycle, usage,
};
pub use server::{open_storage, start, start_with_clock, RunningServer};
