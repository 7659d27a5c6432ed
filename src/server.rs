//! The server: builds storage, the registry and the stores of the features around it once
//! (`Services`), binds the registry and admin listeners, and starts the workers. `main` and
//! the tests start Ferry through [`start`]. Handles no request itself; commands run beside a
//! server are [`crate::commands`]'.

use crate::config::{self, Config};
use crate::{api, auth, clock, events, gc, http, lifecycle, metrics, proxy, registry, replication, storage, worker};
use crate::{validate, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running Ferry: its bound addresses and a handle to stop it.
pub struct RunningServer {
    /// The registry listener's address.
    pub addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    /// The metrics, for tests to read.
    pub metrics: Arc<metrics::Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    authenticator: Option<Arc<auth::authenticator::Authenticator>>,
    /// Pulls noted and not yet written, flushed at shutdown.
    pulls: Arc<registry::pulls::PullTimes>,
    clock: clock::SharedClock,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (up to the grace period), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.pulls.flush(self.clock.now_ms(), true).await {
            tracing::warn!(error = %e, "could not record the last pulls at shutdown");
        }
    }

    /// Takes new principals and policies (SIGHUP) without dropping a connection. Nothing to do
    /// when access control is off.
    pub fn reload_auth(&self, auth: &config::AuthConfig) -> Result<(), config::ConfigError> {
        auth.validate()?;
        auth::check_config(auth)?;
        match &self.authenticator {
            Some(a) => a.reload(auth),
            None => Ok(()),
        }
    }

    /// A handle that reloads principals and policies, for a signal handler.
    pub fn auth_reloader(&self) -> Option<Arc<auth::authenticator::Authenticator>> {
        self.authenticator.clone()
    }

    /// A sender that starts the shutdown when `true` is sent, e.g. from a signal handler.
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until the listeners have stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.pulls.flush(self.clock.now_ms(), true).await {
            tracing::warn!(error = %e, "could not record the last pulls at shutdown");
        }
    }
}

/// Opens the durable backend `config` names (no hot tier), checking an S3 bucket is reachable.
/// With `beside_server`, a server may be running on it: nothing of its is cleaned up.
pub async fn open_storage(
    config: &Config,
    metrics: Option<Arc<metrics::Metrics>>,
    beside_server: bool,
) -> Result<Arc<dyn storage::Storage>, StartError> {
    Ok(match config.storage.backend {
        config::Backend::Fs => {
            let dir = &config.storage.data_dir;
            let opened = if beside_server {
                storage::fs::FsStorage::open_beside_server(dir)
            } else {
                storage::fs::FsStorage::open(dir)
            };
            Arc::new(opened.map_err(|source| StartError::Storage { path: dir.display().to_string(), source })?)
        }
        config::Backend::S3 => {
            Arc::new(storage::s3::S3Storage::connect(&config.storage.s3, metrics).await.map_err(StartError::S3)?)
        }
    })
}

/// Validates `config`, opens storage, binds both listeners and starts serving.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_clock(config, Arc::new(clock::SystemClock)).await
}

/// [`start`] with the clock everything time-based reads (tests move a manual one).
pub async fn start_with_clock(config: Config, clock: clock::SharedClock) -> Result<RunningServer, StartError> {
    start_wrapped(config, clock, |backend| backend).await
}

/// [`start_with_clock`] with `wrap` around the durable backend, under the hot tier: benchmarks
/// count what each request costs in storage with [`storage::counting::CountingStorage`].
pub async fn start_wrapped(
    config: Config,
    clock: clock::SharedClock,
    wrap: impl FnOnce(Arc<dyn storage::Storage>) -> Arc<dyn storage::Storage>,
) -> Result<RunningServer, StartError> {
    validate(&config)?;
    let metrics = Arc::new(metrics::Metrics::new(prometheus::Registry::new())?);
    let backend = wrap(open_storage(&config, Some(metrics.clone()), false).await?);
    let hot = &config.hot_tier;
    let store: Arc<dyn storage::Storage> = if hot.max_bytes.0 > 0 {
        Arc::new(storage::hot::HotTier::new(
            backend,
            hot.max_bytes.0,
            hot.max_object_bytes.0,
            hot.tag_ttl.0,
            metrics.clone(),
        ))
    } else {
        backend
    };
    let auth = auth_state(&config, store.as_ref(), &clock).await?;
    let authenticator = auth.as_ref().map(|a| a.authenticator.clone());
    let services = Services::build(&config, store, metrics.clone(), clock.clone()).await?;
    let registry = services.registry.clone();
    let tls = if config.tls.enabled() { Some(http::tls_acceptor(&config.tls.cert, &config.tls.key)?) } else { None };
    let (listener, addr) = http::bind(&config.server.listen).await?;
    check_exposure(&config, addr)?;
    let (admin_listener, admin_addr) = http::bind(&config.server.admin_listen).await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(true);
    let server = &config.server;
    let app = Arc::new(http::App {
        registry: registry.clone(),
        replication: services.replication.clone(),
        audit: services.audit.clone(),
        rules: services.rules.clone(),
        account: services.account.clone(),
        previews: services.previews.clone(),
        workers: worker::Workers::default(),
        authorizer: Arc::new(auth::authorizer::Authorizer::new(
            authenticator.clone(),
            &config.auth.registry_id,
            &config.auth.region,
            config.tls.enabled(),
            clock.clone(),
            Arc::new(StoredPolicies { registry: registry.clone(), replication: services.replication.clone() }),
        )),
        metrics: metrics.clone(),
        limits: http::limits::RequestLimits::new(
            server.max_in_flight_requests,
            server.max_in_flight_per_client,
            metrics.http.in_flight.clone(),
        ),
        uploads: http::limits::UploadLimits::new(server.max_uploads_per_client),
        body_read_timeout: server.body_read_timeout.0,
        client_address_header: (!server.client_address_header.is_empty())
            .then(|| ::http::HeaderName::from_bytes(server.client_address_header.as_bytes()).ok())
            .flatten(),
        ready: ready_rx,
        auth,
        tls: config.tls.enabled(),
        layer_parts: Arc::new(tokio::sync::Semaphore::new(api::LAYER_PARTS_AT_ONCE)),
        unverified: http::limits::UnverifiedBodies::new(
            server.unverified_body_bytes,
            server.unverified_body_bytes_per_client,
            metrics.http.unverified_body_bytes.clone(),
        ),
    });
    let settings = http::ListenerSettings {
        header_read_timeout: server.header_read_timeout.0,
        shutdown_grace: server.shutdown_grace.0,
        send_timeout: server.send_timeout.0,
        tls,
    };
    let mut tasks = Vec::new();
    let a = app.clone();
    tasks.push(tokio::spawn(http::run_listener(listener, settings.clone(), shutdown_rx.clone(), move |peer, req| {
        http::serve_request(a.clone(), peer, req)
    })));
    let admin_settings = http::ListenerSettings { tls: None, ..settings };
    let a = app.clone();
    tasks.push(tokio::spawn(http::run_listener(
        admin_listener,
        admin_settings,
        shutdown_rx.clone(),
        move |peer, req| http::serve_admin(a.clone(), peer, req),
    )));
    // Not ready once shutdown begins, so load balancers stop sending work.
    let mut rx = shutdown_rx.clone();
    tokio::spawn(async move {
        let _ = rx.changed().await;
        let _ = ready_tx.send(false);
    });
    // Sessions gone from storage (finished on another replica, purged) stop counting against
    // their clients.
    let pulls = registry.pull_times();
    let runner = worker::Runner {
        metrics: metrics.clone(),
        workers: app.workers.clone(),
        clock: clock.clone(),
        shutdown: shutdown_rx.clone(),
    };
    tasks.extend(spawn_workers(&config, &app, &services, &runner));
    tracing::info!(%addr, %admin_addr, tls = config.tls.enabled(), data_dir = %config.storage.data_dir.display(), "ferry started");
    Ok(RunningServer { addr, admin_addr, metrics, shutdown, tasks, authenticator, pulls, clock })
}

/// Access control's state at the edge, when `[auth] enabled`: the token key (from storage, made
/// by the first replica) and the authenticator over the config's principals.
async fn auth_state(
    config: &Config,
    store: &dyn storage::Storage,
    clock: &clock::SharedClock,
) -> Result<Option<http::AuthState>, StartError> {
    if !config.auth.enabled {
        return Ok(None);
    }
    let key = auth::token::TokenKey::load_or_create(store).await.map_err(StartError::TokenKey)?;
    let authenticator = Arc::new(auth::authenticator::Authenticator::new(&config.auth, key, clock.clone())?);
    Ok(Some(http::AuthState {
        authenticator,
        registry_id: config.auth.registry_id.clone(),
        region: config.auth.region.clone(),
        public_url: config.auth.public_url.clone(),
        challenge: config.auth.challenge,
    }))
}

/// The background workers: the upload purge and, when on, the garbage collector.
fn spawn_workers(
    config: &Config,
    app: &Arc<http::App>,
    services: &Services,
    runner: &worker::Runner,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (clock, metrics) = (runner.clock.clone(), &runner.metrics);
    let mut tasks = Vec::new();
    let registry = services.registry.clone();
    let edge = app.clone();
    let flush = registry::pulls::PullFlush::new(registry.pull_times(), clock.clone());
    tasks.push(runner.spawn(Box::new(flush)));
    if !config.webhooks.is_empty() {
        match events::webhooks::WebhookWorker::new(
            registry.clone(),
            services.webhooks.clone(),
            &config.webhooks,
            metrics.clone(),
            &config.auth.registry_id,
            &config.auth.region,
        ) {
            Ok(worker) => tasks.push(runner.spawn(Box::new(worker))),
            Err(e) => tracing::error!(error = %e, "webhook deliveries not started"),
        }
    }
    let rules = proxy::rules::RuleRefresh::new(services.rules.clone());
    tasks.push(runner.spawn(Box::new(rules)));
    if config.gc.enabled {
        let collector = gc::Collector::new(
            registry.storage_handle(),
            registry.content_uses(),
            clock.clone(),
            Some(metrics.clone()),
            rule_prefixes(config),
        );
        let worker = gc::GcWorker::new(collector, config.gc.interval.0, uuid::Uuid::new_v4().to_string());
        tasks.push(runner.spawn(Box::new(worker)));
    }
    if config.lifecycle.enabled {
        let worker = lifecycle::LifecycleWorker::new(
            registry.clone(),
            services.audit.clone(),
            cache_limits(config),
            config.lifecycle.interval.0,
            uuid::Uuid::new_v4().to_string(),
        );
        tasks.push(runner.spawn(Box::new(worker)));
    }
    if config.replication.enabled {
        match replication::destinations(&config.replication, &config.auth.registry_id) {
            Ok(destinations) => {
                let worker = replication::ReplicationWorker::new(
                    registry.clone(),
                    services.replication.clone(),
                    Arc::new(destinations),
                    replication::Pace::from_config(&config.replication),
                    uuid::Uuid::new_v4().to_string(),
                    metrics.clone(),
                );
                tasks.push(runner.spawn(Box::new(worker)));
            }
            Err(e) => tracing::error!(error = %e, "replication workers not started"),
        }
    }
    let purge = registry::purge::UploadPurge::new(
        registry,
        config.registry.upload_purge_interval.0,
        uuid::Uuid::new_v4().to_string(),
        Box::new(move |open| edge.uploads.retain(|id| open.contains(id))),
    );
    tasks.push(runner.spawn(Box::new(purge)));
    tasks
}

/// Each pull-through rule's label and repository prefix, for usage by rule.
pub(crate) fn rule_prefixes(config: &Config) -> Vec<gc::RulePrefix> {
    config.pull_through.iter().map(|r| gc::RulePrefix { label: r.prefix.clone(), prefix: r.prefix.clone() }).collect()
}

/// Each pull-through rule's cache limits.
pub(crate) fn cache_limits(config: &Config) -> Vec<lifecycle::evict::CacheLimits> {
    config
        .pull_through
        .iter()
        .map(|r| lifecycle::evict::CacheLimits {
            prefix: r.prefix.clone(),
            max_bytes: r.max_bytes.0,
            expire_unpulled_after: r.expire_unpulled_after.0,
        })
        .collect()
}

/// The registry and the stores of the features around it, built once over one storage: the
/// registry tells replication and the webhook queue of pushes and deletes through its outbox.
pub(crate) struct Services {
    pub(crate) registry: Arc<registry::Registry>,
    /// The audit trail, for the edge and the workers that change things.
    pub(crate) audit: Arc<events::Audit>,
    pub(crate) replication: Arc<replication::store::ReplicationStore>,
    pub(crate) webhooks: Arc<events::webhook_queue::WebhookQueue>,
    /// The pull-through rules created through the API.
    pub(crate) rules: Arc<proxy::rules::RuleStore>,
    /// ECR's registry-wide settings.
    pub(crate) account: Arc<registry::settings::AccountStore>,
    /// Lifecycle policy previews.
    pub(crate) previews: Arc<lifecycle::previews::Previews>,
}

impl Services {
    pub(crate) async fn build(
        config: &Config,
        storage: Arc<dyn storage::Storage>,
        metrics: Arc<metrics::Metrics>,
        clock: clock::SharedClock,
    ) -> Result<Self, StartError> {
        let proxy = Arc::new(
            proxy::Proxy::new(&config.pull_through, &config.pull_through_secrets, &config.pull_through_api, &metrics)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        // What a command changes (lifecycle expiries) goes to the same audit trail as the server's.
        let audit = events::Audit::open(&config.audit, metrics.clone())
            .map_err(|e| std::io::Error::other(format!("audit.path {:?}: {e}", config.audit.path)))?;
        let replication = Arc::new(replication::store::ReplicationStore::new(storage.clone(), clock.clone()));
        let webhooks =
            Arc::new(events::webhook_queue::WebhookQueue::new(storage.clone(), clock.clone(), config.webhooks.clone()));
        let outbox = registry::outbox::Outbox::new(vec![replication.clone(), webhooks.clone()]);
        let rules = Arc::new(proxy::rules::RuleStore::new(storage.clone(), proxy.clone()));
        let account = Arc::new(registry::settings::AccountStore::new(storage.clone()));
        let previews = Arc::new(lifecycle::previews::Previews::new(storage.clone(), clock.clone()));
        // Rules created through the ECR API are in force before the first request.
        rules.refresh().await.map_err(|e| std::io::Error::other(e.to_string()))?;
        let registry = Arc::new(
            registry::Registry::new(storage, proxy, registry_settings(config), metrics, clock).with_outbox(outbox),
        );
        Ok(Self { registry, audit: Arc::new(audit), replication, webhooks, rules, account, previews })
    }
}

/// Where the authorizer reads policies: repositories' settings (from the registry's short
/// cache) and the registry policy (replication's record).
struct StoredPolicies {
    registry: Arc<registry::Registry>,
    replication: Arc<replication::store::ReplicationStore>,
}

#[async_trait::async_trait]
impl auth::authorizer::PolicySource for StoredPolicies {
    async fn repository_policy(&self, name: &crate::oci::RepositoryName) -> storage::Result<Option<String>> {
        let settings = self.registry.repository_settings_cached(name).await.map_err(|e| match e {
            registry::Error::Storage(e) => e,
            other => storage::Error::Corrupt(other.to_string()),
        })?;
        Ok(settings.and_then(|s| s.policy.clone()))
    }

    async fn registry_policy(&self) -> storage::Result<Option<String>> {
        self.replication.registry_policy().await
    }
}

/// The registry's settings from the configuration.
fn registry_settings(config: &Config) -> registry::Settings {
    registry::Settings {
        delete_enabled: config.registry.delete_enabled,
        upload_max_idle: config.registry.upload_max_idle.0,
        local_namespaces: config.registry.local_namespaces.clone(),
        create_on_push: config.registry.create_on_push,
        gc_grace: config.gc.grace.0,
    }
}

/// Safe defaults: without access control, anyone who reaches Ferry may push and delete, so it
/// listens only on loopback unless `auth.allow_anonymous_writes` says otherwise. With access
/// control but no TLS on another address, credentials travel in clear text: warn.
fn check_exposure(config: &Config, addr: SocketAddr) -> Result<(), StartError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !config.auth.enabled && !config.auth.allow_anonymous_writes {
        return Err(StartError::Config(config::ConfigError::Invalid {
            key: "auth.enabled",
            message: format!(
                "Ferry would listen on {addr} with access control off, so anyone reaching it could push and delete: set auth.enabled = true (with principals), or auth.allow_anonymous_writes = true to accept that"
            ),
        }));
    }
    if config.auth.enabled && !config.tls.enabled() {
        tracing::warn!(%addr, "access control is on without TLS on a non-loopback address: credentials and tokens travel in clear text");
    }
    Ok(())
}
