//! Every metric Ferry exports, grouped by the area that updates them. Each area registers its
//! own metrics into a registry that is passed in (no globals), so tests build their own and
//! read counters back. Names are `ferry_<area>_<thing>_<unit>`; labels have few values
//! (endpoint name, status class, rule, result), never a repository or a digest.

use prometheus::core::Collector;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Registers `c` and hands it back, so an area's metrics are built and registered in one step.
fn reg<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    reg(registry, IntCounter::new(name, help)?)
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    reg(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    reg(registry, IntGauge::new(name, help)?)
}

fn histograms(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    reg(registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?)
}

/// The HTTP edge's metrics.
pub struct HttpMetrics {
    /// `ferry_http_requests_total{endpoint,status_class}`.
    pub requests: IntCounterVec,
    /// `ferry_http_request_duration_seconds{endpoint}`: time to the response head.
    pub duration: HistogramVec,
    /// `ferry_http_sent_bytes_total{endpoint}`: body bytes served.
    pub sent_bytes: IntCounterVec,
    /// `ferry_http_received_bytes_total{endpoint}`: body bytes received.
    pub received_bytes: IntCounterVec,
    /// `ferry_http_requests_in_flight`: permits held (from admission until the body ends).
    pub in_flight: IntGauge,
    /// `ferry_http_unverified_body_bytes`: bytes reserved for ECR API bodies being read before
    /// their signature can be checked.
    pub unverified_body_bytes: IntGauge,
    /// `ferry_http_requests_rejected_total`: refused because too many were in flight.
    pub rejected: IntCounter,
    /// `ferry_http_errors_total{endpoint,source}`: error responses by where the failure came
    /// from (client, storage, upstream).
    pub errors: IntCounterVec,
    /// `ferry_storage_errors_total{endpoint}`: requests that failed because storage did.
    pub storage_errors: IntCounterVec,
}

impl HttpMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: counters(
                r,
                "ferry_http_requests_total",
                "HTTP requests by endpoint and status class",
                &["endpoint", "status_class"],
            )?,
            duration: histograms(
                r,
                "ferry_http_request_duration_seconds",
                "Time to the response head, by endpoint",
                &["endpoint"],
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            sent_bytes: counters(
                r,
                "ferry_http_sent_bytes_total",
                "Response body bytes sent, by endpoint",
                &["endpoint"],
            )?,
            received_bytes: counters(
                r,
                "ferry_http_received_bytes_total",
                "Request body bytes received, by endpoint",
                &["endpoint"],
            )?,
            in_flight: gauge(r, "ferry_http_requests_in_flight", "Requests being served")?,
            unverified_body_bytes: gauge(
                r,
                "ferry_http_unverified_body_bytes",
                "Bytes reserved for ECR API bodies read before their signature can be checked",
            )?,
            rejected: counter(
                r,
                "ferry_http_requests_rejected_total",
                "Requests refused because the in-flight limit was reached",
            )?,
            errors: counters(
                r,
                "ferry_http_errors_total",
                "Error responses by endpoint and where the failure came from",
                &["endpoint", "source"],
            )?,
            storage_errors: counters(
                r,
                "ferry_storage_errors_total",
                "Requests that failed because storage failed, by endpoint",
                &["endpoint"],
            )?,
        })
    }
}

/// Upload sessions.
pub struct UploadMetrics {
    /// `ferry_uploads_in_progress`: upload sessions this process is tracking.
    pub in_progress: IntGauge,
    /// `ferry_uploads_purged_total`: abandoned upload sessions removed.
    pub purged: IntCounter,
}

impl UploadMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            in_progress: gauge(r, "ferry_uploads_in_progress", "Upload sessions being received")?,
            purged: counter(r, "ferry_uploads_purged_total", "Abandoned upload sessions purged")?,
        })
    }
}

/// The pull-through cache and its upstreams.
pub struct CacheMetrics {
    /// `ferry_cache_requests_total{rule,kind,result}`: lookups (hit, miss, revalidated, stale, coalesced).
    pub requests: IntCounterVec,
    /// `ferry_cache_fills_in_progress`: blobs being fetched from upstreams.
    pub fills_in_progress: IntGauge,
    /// `ferry_upstream_requests_total{rule,method,status}`: requests sent upstream.
    pub upstream_requests: IntCounterVec,
    /// `ferry_upstream_received_bytes_total{rule}`: blob bytes fetched from upstreams.
    pub upstream_bytes: IntCounterVec,
    /// `ferry_upstream_request_duration_seconds{rule}`: time to the upstream's response head.
    pub upstream_duration: HistogramVec,
    /// `ferry_upstream_ratelimit_remaining{rule}`: the upstream's last `ratelimit-remaining`.
    pub upstream_ratelimit_remaining: IntGaugeVec,
}

impl CacheMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: counters(
                r,
                "ferry_cache_requests_total",
                "Pull-through cache lookups by rule, kind and result",
                &["rule", "kind", "result"],
            )?,
            fills_in_progress: gauge(r, "ferry_cache_fills_in_progress", "Blobs being fetched from upstreams")?,
            upstream_requests: counters(
                r,
                "ferry_upstream_requests_total",
                "Requests sent to upstream registries",
                &["rule", "method", "status"],
            )?,
            upstream_bytes: counters(
                r,
                "ferry_upstream_received_bytes_total",
                "Blob bytes fetched from upstream registries",
                &["rule"],
            )?,
            upstream_duration: histograms(
                r,
                "ferry_upstream_request_duration_seconds",
                "Time to the upstream's response head",
                &["rule"],
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            )?,
            upstream_ratelimit_remaining: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ferry_upstream_ratelimit_remaining", "The upstream's last ratelimit-remaining header"),
                    &["rule"],
                )?,
            )?,
        })
    }
}

/// The in-memory hot tier.
pub struct HotTierMetrics {
    /// `ferry_hot_tier_requests_total{result}`: lookups (hit, miss).
    pub requests: IntCounterVec,
    /// `ferry_hot_tier_bytes`: bytes held.
    pub bytes: IntGauge,
    /// `ferry_hot_tier_evictions_total`: entries evicted for room.
    pub evictions: IntCounter,
}

impl HotTierMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: counters(r, "ferry_hot_tier_requests_total", "Hot-tier lookups by result", &["result"])?,
            bytes: gauge(r, "ferry_hot_tier_bytes", "Bytes held in the hot tier")?,
            evictions: counter(r, "ferry_hot_tier_evictions_total", "Hot-tier entries evicted for room")?,
        })
    }
}

/// Requests to S3.
pub struct S3Metrics {
    /// `ferry_s3_requests_total{operation,result}`: by kind, ok or error.
    pub requests: IntCounterVec,
    /// `ferry_s3_request_duration_seconds{operation}`.
    pub duration: HistogramVec,
}

impl S3Metrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: counters(
                r,
                "ferry_s3_requests_total",
                "S3 requests by operation and result",
                &["operation", "result"],
            )?,
            duration: histograms(
                r,
                "ferry_s3_request_duration_seconds",
                "S3 request latency by operation",
                &["operation"],
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )?,
        })
    }
}

/// Authentication and authorization.
pub struct AuthMetrics {
    /// `ferry_auth_failures_total{reason}`: credentials refused (invalid, expired, throttled).
    pub failures: IntCounterVec,
    /// `ferry_auth_denials_total{action}`: requests authenticated (or anonymous) but not allowed.
    pub denials: IntCounterVec,
}

impl AuthMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            failures: counters(r, "ferry_auth_failures_total", "Credentials refused, by reason", &["reason"])?,
            denials: counters(r, "ferry_auth_denials_total", "Requests no policy allowed, by action", &["action"])?,
        })
    }
}

/// Background workers.
pub struct WorkerMetrics {
    /// `ferry_worker_runs_total{worker,result}`: rounds of work (busy, idle, done, error).
    pub runs: IntCounterVec,
    /// `ferry_worker_last_success_timestamp_seconds{worker}`.
    pub last_success: GaugeVec,
    /// `ferry_worker_consecutive_errors{worker}`: rounds failed in a row (0 after a good one).
    pub consecutive_errors: IntGaugeVec,
}

impl WorkerMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            runs: counters(
                r,
                "ferry_worker_runs_total",
                "Rounds of background work by worker and result",
                &["worker", "result"],
            )?,
            last_success: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "ferry_worker_last_success_timestamp_seconds",
                        "When each background worker last finished a round without error",
                    ),
                    &["worker"],
                )?,
            )?,
            consecutive_errors: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ferry_worker_consecutive_errors", "Rounds each background worker failed in a row"),
                    &["worker"],
                )?,
            )?,
        })
    }
}

/// Replication to other registries. The destination label is `<registry id>/<region>`: a
/// configuration has at most 25.
pub struct ReplicationMetrics {
    /// `ferry_replication_events_pending{destination}`: events not yet `COMPLETE` or `FAILED`
    /// there, as this replica last counted them.
    pub pending: IntGaugeVec,
    /// `ferry_replication_oldest_pending_seconds{destination}`: the age of the oldest of them
    /// (the replication lag).
    pub oldest_pending: GaugeVec,
    /// `ferry_replication_bytes_total{destination}`: blob bytes sent (mounted and skipped blobs
    /// send none).
    pub bytes: IntCounterVec,
    /// `ferry_replication_images_total{destination}`: images that reached `COMPLETE`.
    pub images: IntCounterVec,
    /// `ferry_replication_blobs_total{destination,how}`: blobs by how they got there (present,
    /// mounted, uploaded).
    pub blobs: IntCounterVec,
    /// `ferry_replication_failures_total{destination,code}`: failed attempts, retried or not.
    pub failures: IntCounterVec,
    /// `ferry_replication_copy_duration_seconds{destination}`: one image's copy, per attempt.
    pub copy_duration: HistogramVec,
}

impl ReplicationMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            pending: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ferry_replication_events_pending", "Replication events pending by destination"),
                    &["destination"],
                )?,
            )?,
            oldest_pending: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "ferry_replication_oldest_pending_seconds",
                        "Age of the oldest pending replication event by destination (the lag)",
                    ),
                    &["destination"],
                )?,
            )?,
            bytes: counters(r, "ferry_replication_bytes_total", "Blob bytes sent to destinations", &["destination"])?,
            images: counters(
                r,
                "ferry_replication_images_total",
                "Images replicated to each destination",
                &["destination"],
            )?,
            blobs: counters(
                r,
                "ferry_replication_blobs_total",
                "Blobs replicated by how they reached the destination",
                &["destination", "how"],
            )?,
            failures: counters(
                r,
                "ferry_replication_failures_total",
                "Failed replication attempts by destination and failure code",
                &["destination", "code"],
            )?,
            copy_duration: histograms(
                r,
                "ferry_replication_copy_duration_seconds",
                "Time to copy one image to one destination",
                &["destination"],
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0],
            )?,
        })
    }
}

/// Lifecycle policies and cache eviction.
pub struct LifecycleMetrics {
    /// `ferry_lifecycle_runs_total{result}`: rounds (done, skipped: another replica held the lease, error).
    pub runs: IntCounterVec,
    /// `ferry_lifecycle_expired_images_total{reason}`: images expired by a lifecycle policy
    /// (policy), or evicted from a pull-through cache (cache_size, cache_unpulled).
    pub expired: IntCounterVec,
    /// `ferry_lifecycle_last_success_timestamp_seconds`.
    pub last_success: prometheus::Gauge,
}

impl LifecycleMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            runs: counters(r, "ferry_lifecycle_runs_total", "Lifecycle rounds by result", &["result"])?,
            expired: counters(
                r,
                "ferry_lifecycle_expired_images_total",
                "Images expired by lifecycle policies or evicted from pull-through caches, by reason",
                &["reason"],
            )?,
            last_success: reg(
                r,
                prometheus::Gauge::new(
                    "ferry_lifecycle_last_success_timestamp_seconds",
                    "When a lifecycle round last finished",
                )?,
            )?,
        })
    }
}

/// The garbage collector's metrics, and the stored usage its runs measure.
pub struct GcMetrics {
    /// `ferry_gc_runs_total{result}`: collections (done, skipped: another replica held the lease, error).
    pub runs: IntCounterVec,
    /// `ferry_gc_scanned_objects_total{kind}`: manifests read (manifest) and stored objects listed (content).
    pub scanned: IntCounterVec,
    /// `ferry_gc_removed_objects_total{kind}`: content removed (content) and links removed (link).
    pub removed: IntCounterVec,
    /// `ferry_gc_removed_bytes_total`.
    pub removed_bytes: IntCounter,
    /// `ferry_gc_duration_seconds`: how long the last run took.
    pub duration: prometheus::Gauge,
    /// `ferry_gc_last_success_timestamp_seconds`.
    pub last_success: prometheus::Gauge,
    /// `ferry_storage_stored_bytes{kind}`: bytes stored (blob, manifest), as the last collection measured.
    pub stored_bytes: IntGaugeVec,
    /// `ferry_storage_stored_objects{kind}`.
    pub stored_objects: IntGaugeVec,
    /// `ferry_cache_stored_bytes{rule}`: bytes linked into each pull-through rule's repositories.
    pub rule_bytes: IntGaugeVec,
}

impl GcMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        let gauges = |name: &str, help: &str, labels: &[&str]| reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?);
        Ok(Self {
            runs: counters(r, "ferry_gc_runs_total", "Garbage collections by result", &["result"])?,
            scanned: counters(
                r,
                "ferry_gc_scanned_objects_total",
                "Objects the collector examined, by kind",
                &["kind"],
            )?,
            removed: counters(
                r,
                "ferry_gc_removed_objects_total",
                "Objects the collector removed, by kind",
                &["kind"],
            )?,
            removed_bytes: counter(r, "ferry_gc_removed_bytes_total", "Bytes of content the collector removed")?,
            duration: reg(
                r,
                prometheus::Gauge::new("ferry_gc_duration_seconds", "How long the last collection took")?,
            )?,
            last_success: reg(
                r,
                prometheus::Gauge::new("ferry_gc_last_success_timestamp_seconds", "When a collection last finished")?,
            )?,
            stored_bytes: gauges("ferry_storage_stored_bytes", "Bytes stored, by kind, as last measured", &["kind"])?,
            stored_objects: gauges(
                "ferry_storage_stored_objects",
                "Objects stored, by kind, as last measured",
                &["kind"],
            )?,
            rule_bytes: gauges(
                "ferry_cache_stored_bytes",
                "Bytes linked into each pull-through rule's repositories",
                &["rule"],
            )?,
        })
    }
}

/// The audit trail.
pub struct AuditMetrics {
    /// `ferry_audit_events_total{outcome}`: events recorded (success, failure, denied).
    pub events: IntCounterVec,
    /// `ferry_audit_events_dropped_total`: events lost because the audit file's writer fell a
    /// whole queue behind (a stalled disk).
    pub dropped: IntCounter,
}

impl AuditMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            events: counters(r, "ferry_audit_events_total", "Audit events recorded, by outcome", &["outcome"])?,
            dropped: counter(
                r,
                "ferry_audit_events_dropped_total",
                "Audit events lost because the audit file's writer fell a whole queue behind",
            )?,
        })
    }
}

/// Webhook delivery.
pub struct WebhookMetrics {
    /// `ferry_webhook_deliveries_total{webhook,result}`: delivered, retried (an attempt
    /// failed), failed (dropped after `give_up_after`).
    pub deliveries: IntCounterVec,
    /// `ferry_webhook_events_pending{webhook}`: events waiting, as this replica last counted
    /// (up to one listing page, about 1,000).
    pub pending: IntGaugeVec,
}

impl WebhookMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            deliveries: counters(
                r,
                "ferry_webhook_deliveries_total",
                "Webhook delivery attempts by receiver and result",
                &["webhook", "result"],
            )?,
            pending: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("ferry_webhook_events_pending", "Webhook events waiting, by receiver"),
                    &["webhook"],
                )?,
            )?,
        })
    }
}

/// Ferry's metrics, by area.
pub struct Metrics {
    /// The registry they are registered in, for `/metrics`.
    pub registry: Registry,
    /// The HTTP edge.
    pub http: HttpMetrics,
    /// Upload sessions.
    pub uploads: UploadMetrics,
    /// The pull-through cache and its upstreams.
    pub cache: CacheMetrics,
    /// The hot tier.
    pub hot_tier: HotTierMetrics,
    /// S3.
    pub s3: S3Metrics,
    /// Background workers.
    pub workers: WorkerMetrics,
    /// Authentication and authorization.
    pub auth: AuthMetrics,
    /// Garbage collection and stored usage.
    pub gc: GcMetrics,
    /// Lifecycle policies and cache eviction.
    pub lifecycle: LifecycleMetrics,
    /// Replication.
    pub replication: ReplicationMetrics,
    /// The audit trail.
    pub audit: AuditMetrics,
    /// Webhook delivery.
    pub webhooks: WebhookMetrics,
}

impl Metrics {
    /// Creates every area's metrics in `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        Ok(Self {
            http: HttpMetrics::register(&registry)?,
            uploads: UploadMetrics::register(&registry)?,
            cache: CacheMetrics::register(&registry)?,
            hot_tier: HotTierMetrics::register(&registry)?,
            s3: S3Metrics::register(&registry)?,
            workers: WorkerMetrics::register(&registry)?,
            auth: AuthMetrics::register(&registry)?,
            gc: GcMetrics::register(&registry)?,
            lifecycle: LifecycleMetrics::register(&registry)?,
            replication: ReplicationMetrics::register(&registry)?,
            audit: AuditMetrics::register(&registry)?,
            webhooks: WebhookMetrics::register(&registry)?,
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode_utf8(&self.registry.gather(), &mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}
