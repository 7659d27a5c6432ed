//! The commands run beside servers (`ferry gc`, `lifecycle run`, `replication backfill`,
//! `usage`, `auth token`, `index check`): each builds the same services a server builds, over storage without
//! the hot tier, and takes the same lease as the servers' schedule for its job. Knows nothing of
//! HTTP.

use crate::config::Config;
use crate::server::{cache_limits, open_storage, rule_prefixes, Services};
use crate::{auth, clock, gc, lifecycle, metrics, oci, registry, replication, storage};
use crate::{validate, StartError};
use std::sync::Arc;

/// A registry password for the principal with `access_key_id` and `secret` (what
/// `ferry auth token` prints, like `aws ecr get-login-password`): the secret is checked
/// against the config, and the token signed with the key in storage that the servers use.
pub async fn issue_token(config: &Config, access_key_id: &str, secret: &str) -> Result<(String, u64), StartError> {
    validate(config)?;
    if !config.auth.enabled {
        return Err(StartError::AuthDisabled);
    }
    let storage = open_storage(config, None, true).await?;
    let key = auth::token::TokenKey::load_or_create(storage.as_ref()).await.map_err(StartError::TokenKey)?;
    let authenticator = auth::authenticator::Authenticator::new(&config.auth, key, Arc::new(clock::SystemClock))?;
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{access_key_id}:{secret}"));
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    match authenticator.authenticate(Some(&format!("Basic {basic}")), localhost).await {
        Ok(auth::Principal::User(identity)) => Ok(authenticator.issue_token(&identity)),
        _ => Err(StartError::NoSuchPrincipal),
    }
}

/// A registry over the configured storage for work from the command line, beside running
/// servers (no hot tier, no listeners).
async fn offline_registry(config: &Config, clock: clock::SharedClock) -> Result<Arc<registry::Registry>, StartError> {
    Ok(offline_services(config, clock).await?.registry)
}

/// What a command beside running servers works with: storage without the hot tier, metrics of
/// its own, and the same services a server builds.
async fn offline_services(config: &Config, clock: clock::SharedClock) -> Result<Services, StartError> {
    validate(config)?;
    let metrics = Arc::new(metrics::Metrics::new(prometheus::Registry::new())?);
    let storage = open_storage(config, None, true).await?;
    Services::build(config, storage, metrics, clock).await
}

/// One lifecycle round from the command line (`ferry lifecycle run`): every repository's
/// policy and every rule's cache limits, or one repository's policy; under the lifecycle
/// lease, except a dry run, which writes nothing.
pub async fn run_lifecycle(
    config: &Config,
    repository: Option<&oci::RepositoryName>,
    dry_run: bool,
    clock: clock::SharedClock,
) -> Result<lifecycle::worker::LifecycleReport, StartError> {
    let services = offline_services(config, clock.clone()).await?;
    let (registry, audit) = (&services.registry, &services.audit);
    let limits = cache_limits(config);
    if dry_run {
        return lifecycle::worker::run_round(registry, audit, &limits, repository, true, None)
            .await
            .map_err(StartError::from);
    }
    let storage = registry.storage_handle();
    let mut lease = command_lease(storage.as_ref(), clock.as_ref(), "lifecycle", lifecycle::LEASE_TTL).await?;
    let result = lifecycle::worker::run_round(registry, audit, &limits, repository, false, Some(&mut lease)).await;
    let _ = lease.release(storage.as_ref()).await;
    result.map_err(StartError::from)
}

/// `ferry replication backfill`: queues what was pushed before the replication configuration
/// existed (within `scope`) and copies it, beside running servers; `progress(done, total)`.
pub async fn replication_backfill(
    config: &Config,
    scope: &replication::backfill::BackfillScope,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<replication::backfill::BackfillReport, StartError> {
    let clock: clock::SharedClock = Arc::new(clock::SystemClock);
    let services = offline_services(config, clock).await?;
    let destinations = replication::destinations(&config.replication, &config.auth.registry_id)?;
    let metrics = services.registry.metrics().clone();
    replication::backfill::backfill(
        services.registry,
        services.replication,
        Arc::new(destinations),
        replication::Pace::from_config(&config.replication),
        metrics,
        scope,
        progress,
    )
    .await
    .map_err(StartError::from)
}

/// What `ferry index check` found: per repository, the images looked at and the links whose
/// index fields were wrong (rewritten with `--repair`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexCheckReport {
    /// Repositories checked.
    pub repositories: usize,
    /// Images (manifest links) checked.
    pub images: usize,
    /// Links that were wrong (and, with repair, were rewritten).
    pub wrong: usize,
    /// Whether they were rewritten.
    pub repaired: bool,
    /// The repositories with wrong links, and how many.
    pub wrong_in: Vec<(String, usize)>,
}

/// `ferry index check [--repair]`: compares each repository's image index with its tag records
/// and manifests, beside running servers (a repair rewrites a link by a conditional write, so
/// a push racing it is neither lost nor undone).
pub async fn index_check(
    config: &Config,
    repository: Option<&oci::RepositoryName>,
    repair: bool,
) -> Result<IndexCheckReport, StartError> {
    let registry = offline_registry(config, Arc::new(clock::SystemClock)).await?;
    let names = match repository {
        Some(name) => vec![name.clone()],
        None => registry.repository_names().await.map_err(StartError::from)?,
    };
    let mut report = IndexCheckReport { repaired: repair, ..Default::default() };
    for name in names {
        let one = registry.rebuild_index(&name, repair).await.map_err(StartError::from)?;
        report.repositories = report.repositories.saturating_add(1);
        report.images = report.images.saturating_add(one.images);
        report.wrong = report.wrong.saturating_add(one.fixed);
        if one.fixed > 0 {
            report.wrong_in.push((name.as_str().to_owned(), one.fixed));
        }
    }
    Ok(report)
}

/// What each repository and pull-through rule stores (`ferry usage`).
pub async fn usage(config: &Config) -> Result<gc::usage::UsageReport, StartError> {
    let registry = offline_registry(config, Arc::new(clock::SystemClock)).await?;
    let rules: Vec<String> = config.pull_through.iter().map(|r| r.prefix.clone()).collect();
    Ok(gc::usage::usage(&registry, &rules).await?)
}

/// One garbage collection from the command line (`ferry gc`): beside running servers, under
/// the same lease, so no two collections run at once. A dry run takes no lease and writes
/// nothing.
pub async fn collect_garbage(
    config: &Config,
    dry_run: bool,
    progress: &(dyn Fn(gc::Progress) + Sync),
) -> Result<gc::GcReport, StartError> {
    collect_garbage_with_clock(config, dry_run, Arc::new(clock::SystemClock), progress).await
}

/// [`collect_garbage`] reading `clock` (tests move a manual one past grace periods and leases).
pub async fn collect_garbage_with_clock(
    config: &Config,
    dry_run: bool,
    clock: clock::SharedClock,
    progress: &(dyn Fn(gc::Progress) + Sync),
) -> Result<gc::GcReport, StartError> {
    validate(config)?;
    // Metrics of this run alone, to count its S3 requests.
    let metrics = Arc::new(metrics::Metrics::new(prometheus::Registry::new())?);
    let storage = open_storage(config, Some(metrics.clone()), true).await?;
    let uses = storage::uses::ContentUses::new(storage.clone(), clock.clone(), config.gc.grace.0);
    let collector = gc::Collector::new(storage.clone(), uses, clock.clone(), None, rule_prefixes(config));
    let s3_requests = || requests_counted(&metrics);
    if dry_run {
        let mut report = collector.collect(true, None, progress).await.map_err(StartError::from)?;
        report.s3_requests = s3_requests();
        return Ok(report);
    }
    let mut lease = command_lease(storage.as_ref(), clock.as_ref(), "gc", gc::LEASE_TTL).await?;
    let result = collector.collect(false, Some(&mut lease), progress).await;
    let _ = lease.release(storage.as_ref()).await;
    let mut report = result.map_err(StartError::from)?;
    report.s3_requests = s3_requests();
    Ok(report)
}

/// Takes the lease `leases/<job>` for a command run beside servers (which take the same lease
/// for their schedule), as an owner of its own; the caller releases it when done.
async fn command_lease(
    storage: &dyn storage::Storage,
    clock: &dyn clock::Clock,
    job: &'static str,
    ttl: std::time::Duration,
) -> Result<storage::lease::Lease, StartError> {
    let owner = format!("ferry-{job}-cli-{}", uuid::Uuid::new_v4());
    storage::lease::Lease::acquire(storage, clock, storage::Key::lease(job), &owner, ttl)
        .await
        .map_err(|source| StartError::Lease { job, source })
}

/// S3 requests counted in `metrics`.
// A count of requests is an integer far below 2^53, so the f64 the counter reports is exact.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn requests_counted(metrics: &metrics::Metrics) -> u64 {
    let total: f64 = prometheus::core::Collector::collect(&metrics.s3.requests)
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value())
        .sum();
    total as u64
}
