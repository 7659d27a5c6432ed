//! Every metric Ferry exports, in one place. Registered into a registry that is passed in
//! (no globals), so tests can build their own and read counters back.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Ferry's metrics.
pub struct Metrics {
    /// The registry they are registered in, for `/metrics`.
    pub registry: Registry,
    /// `ferry_http_requests_total{endpoint,status_class}`.
    pub http_requests: IntCounterVec,
    /// `ferry_http_request_duration_seconds{endpoint}`: time to the response head.
    pub http_duration: HistogramVec,
    /// `ferry_http_sent_bytes_total{endpoint}`: body bytes served.
    pub http_sent_bytes: IntCounterVec,
    /// `ferry_http_received_bytes_total{endpoint}`: body bytes received.
    pub http_received_bytes: IntCounterVec,
    /// `ferry_http_requests_in_flight`.
    pub http_in_flight: IntGauge,
    /// `ferry_http_requests_rejected_total`: refused because too many were in flight.
    pub http_rejected: IntCounter,
    /// `ferry_uploads_in_progress`: upload sessions this process is tracking.
    pub uploads_in_progress: IntGauge,
    /// `ferry_storage_errors_total{endpoint}`: requests that failed because storage did.
    pub storage_errors: IntCounterVec,
    /// `ferry_http_errors_total{endpoint,source}`: error responses by where the failure came
    /// from (client, storage, upstream).
    pub http_errors: IntCounterVec,
    /// `ferry_uploads_purged_total`: abandoned upload sessions removed.
    pub uploads_purged: IntCounter,
    /// `ferry_cache_requests_total{rule,kind,result}`: pull-through lookups (hit, miss, revalidated, stale, coalesced).
    pub cache_requests: IntCounterVec,
    /// `ferry_upstream_requests_total{rule,method,status}`: requests sent upstream.
    pub upstream_requests: IntCounterVec,
    /// `ferry_upstream_received_bytes_total{rule}`: blob bytes fetched from upstreams.
    pub upstream_bytes: IntCounterVec,
    /// `ferry_upstream_request_duration_seconds{rule}`: time to the upstream's response head.
    pub upstream_duration: HistogramVec,
    /// `ferry_upstream_ratelimit_remaining{rule}`: the upstream's last `ratelimit-remaining`.
    pub upstream_ratelimit_remaining: prometheus::IntGaugeVec,
    /// `ferry_cache_fills_in_progress`: blobs being fetched from upstreams.
    pub fills_in_progress: IntGauge,
    /// `ferry_hot_tier_requests_total{result}`: hot-tier lookups (hit, miss).
    pub hot_tier_requests: IntCounterVec,
    /// `ferry_hot_tier_bytes`: bytes held in the hot tier.
    pub hot_tier_bytes: IntGauge,
    /// `ferry_hot_tier_evictions_total`: entries evicted for room.
    pub hot_tier_evictions: IntCounter,
    /// `ferry_s3_requests_total{operation,result}`: S3 requests by kind, ok or error.
    pub s3_requests: IntCounterVec,
    /// `ferry_s3_request_duration_seconds{operation}`: S3 latency.
    pub s3_duration: HistogramVec,
}

impl Metrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new("ferry_http_requests_total", "HTTP requests by endpoint and status class"),
                &["endpoint", "status_class"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new("ferry_http_request_duration_seconds", "Time to the response head, by endpoint")
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                &["endpoint"],
            )?,
            http_sent_bytes: IntCounterVec::new(
                Opts::new("ferry_http_sent_bytes_total", "Response body bytes sent, by endpoint"),
                &["endpoint"],
            )?,
            http_received_bytes: IntCounterVec::new(
                Opts::new("ferry_http_received_bytes_total", "Request body bytes received, by endpoint"),
                &["endpoint"],
            )?,
            http_in_flight: IntGauge::new("ferry_http_requests_in_flight", "Requests being served")?,
            http_rejected: IntCounter::new(
                "ferry_http_requests_rejected_total",
                "Requests refused because the in-flight limit was reached",
            )?,
            uploads_in_progress: IntGauge::new("ferry_uploads_in_progress", "Upload sessions being received")?,
            storage_errors: IntCounterVec::new(
                Opts::new("ferry_storage_errors_total", "Requests that failed because storage failed, by endpoint"),
                &["endpoint"],
            )?,
            http_errors: IntCounterVec::new(
                Opts::new("ferry_http_errors_total", "Error responses by endpoint and where the failure came from"),
                &["endpoint", "source"],
            )?,
            uploads_purged: IntCounter::new("ferry_uploads_purged_total", "Abandoned upload sessions purged")?,
            cache_requests: IntCounterVec::new(
                Opts::new("ferry_cache_requests_total", "Pull-through cache lookups by rule, kind and result"),
                &["rule", "kind", "result"],
            )?,
            upstream_requests: IntCounterVec::new(
                Opts::new("ferry_upstream_requests_total", "Requests sent to upstream registries"),
                &["rule", "method", "status"],
            )?,
            upstream_bytes: IntCounterVec::new(
                Opts::new("ferry_upstream_received_bytes_total", "Blob bytes fetched from upstream registries"),
                &["rule"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new("ferry_upstream_request_duration_seconds", "Time to the upstream's response head")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                &["rule"],
            )?,
            upstream_ratelimit_remaining: prometheus::IntGaugeVec::new(
                Opts::new("ferry_upstream_ratelimit_remaining", "The upstream's last ratelimit-remaining header"),
                &["rule"],
            )?,
            fills_in_progress: IntGauge::new("ferry_cache_fills_in_progress", "Blobs being fetched from upstreams")?,
            hot_tier_requests: IntCounterVec::new(
                Opts::new("ferry_hot_tier_requests_total", "Hot-tier lookups by result"),
                &["result"],
            )?,
            hot_tier_bytes: IntGauge::new("ferry_hot_tier_bytes", "Bytes held in the hot tier")?,
            hot_tier_evictions: IntCounter::new("ferry_hot_tier_evictions_total", "Hot-tier entries evicted for room")?,
            s3_requests: IntCounterVec::new(
                Opts::new("ferry_s3_requests_total", "S3 requests by operation and result"),
                &["operation", "result"],
            )?,
            s3_duration: HistogramVec::new(
                HistogramOpts::new("ferry_s3_request_duration_seconds", "S3 request latency by operation")
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["operation"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.http_requests.clone()))?;
        m.registry.register(Box::new(m.http_duration.clone()))?;
        m.registry.register(Box::new(m.http_sent_bytes.clone()))?;
        m.registry.register(Box::new(m.http_received_bytes.clone()))?;
        m.registry.register(Box::new(m.http_in_flight.clone()))?;
        m.registry.register(Box::new(m.http_rejected.clone()))?;
        m.registry.register(Box::new(m.uploads_in_progress.clone()))?;
        m.registry.register(Box::new(m.storage_errors.clone()))?;
        m.registry.register(Box::new(m.http_errors.clone()))?;
        m.registry.register(Box::new(m.uploads_purged.clone()))?;
        m.registry.register(Box::new(m.cache_requests.clone()))?;
        m.registry.register(Box::new(m.upstream_requests.clone()))?;
        m.registry.register(Box::new(m.upstream_bytes.clone()))?;
        m.registry.register(Box::new(m.upstream_duration.clone()))?;
        m.registry.register(Box::new(m.upstream_ratelimit_remaining.clone()))?;
        m.registry.register(Box::new(m.fills_in_progress.clone()))?;
        m.registry.register(Box::new(m.hot_tier_requests.clone()))?;
        m.registry.register(Box::new(m.hot_tier_bytes.clone()))?;
        m.registry.register(Box::new(m.hot_tier_evictions.clone()))?;
        m.registry.register(Box::new(m.s3_requests.clone()))?;
        m.registry.register(Box::new(m.s3_duration.clone()))?;
        Ok(m)
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
