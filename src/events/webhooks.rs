//! Webhook delivery: workers on every replica POST each queued event (see
//! [`super::webhook_queue`]) to its receiver, in ECR's EventBridge shape (`detail-type:
//! "ECR Image Action"`), signed with HMAC-SHA256 when the receiver has a secret. An event is
//! claimed by a conditional write before it is sent, so one replica sends it at a time; it is
//! removed once the receiver answers 2xx, retried with backoff otherwise, and dropped (logged
//! and counted) after `give_up_after`. Delivery is at least once: a receiver may see an event
//! twice (a replica that dies after sending, before removing it), and should use `id`.

use super::webhook_queue::{WebhookEvent, WebhookQueue};
use crate::config::WebhookConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::storage::EventId;
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle replica looks at the queues: for events another replica recorded and
/// could not deliver (it died, or its retries are due). A replica's own events wake it at
/// once, and a retry it scheduled wakes it when due, so this only bounds takeovers; it keeps
/// an idle registry on S3 to one LIST per receiver per replica every 10 s.
const IDLE_POLL: Duration = Duration::from_secs(10);
/// How soon to look again at a push whose manifest is not there yet (its push is in flight).
const UNCOMMITTED_RECHECK_MS: u64 = 1_000;
/// Retries start after this and double up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A push's event whose manifest has not appeared after this is dropped: the push failed.
const UNCOMMITTED_TTL_MS: u64 = 10 * 60 * 1000;
/// Events looked at per receiver per round.
const BATCH: usize = 64;

/// Waiting events counted per round at most (one storage listing page).
const COUNTED: usize = 1000;

/// One receiver, ready to send to.
struct Receiver {
    config: WebhookConfig,
    secret: Option<String>,
}

/// Delivers every receiver's queue.
pub struct WebhookWorker {
    /// To ask whether a push's manifest is there yet.
    registry: Arc<Registry>,
    queue: Arc<WebhookQueue>,
    receivers: Vec<Receiver>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    registry_id: String,
    region: String,
    last: String,
    /// When the soonest event this replica saw waiting becomes due (ms since the epoch).
    next_due_ms: Option<u64>,
}

impl WebhookWorker {
    /// A deliverer for `hooks`; events name `registry_id` and `region` as ECR's do.
    pub fn new(
        registry: Arc<Registry>,
        queue: Arc<WebhookQueue>,
        hooks: &[WebhookConfig],
        metrics: Arc<Metrics>,
        registry_id: &str,
        region: &str,
    ) -> Result<Self, crate::config::ConfigError> {
        let receivers = hooks
            .iter()
            .map(|h| Ok(Receiver { config: h.clone(), secret: h.resolved_secret()? }))
            .collect::<Result<_, crate::config::ConfigError>>()?;
        // Never a client that follows redirects: a receiver cannot send the signed body elsewhere.
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().map_err(|e| {
            crate::config::ConfigError::Invalid { key: "webhooks", message: format!("no HTTP client: {e}") }
        })?;
        Ok(Self {
            registry,
            queue,
            receivers,
            client,
            metrics,
            registry_id: registry_id.to_owned(),
            region: region.to_owned(),
            last: String::new(),
            next_due_ms: None,
        })
    }

    /// The body a receiver gets: ECR's EventBridge event for an image action.
    fn body(&self, id: &EventId, event: &WebhookEvent) -> Vec<u8> {
        let time = std::time::UNIX_EPOCH
            .checked_add(Duration::from_millis(event.recorded_at_ms))
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut detail = json!({
            "result": "SUCCESS",
            "repository-name": event.repository,
            "image-digest": event.digest,
            "action-type": event.action,
        });
        if let Some(tag) = &event.tag {
            detail["image-tag"] = json!(tag);
        }
        serde_json::to_vec(&json!({
            "version": "0",
            "id": id.to_string(),
            "detail-type": "ECR Image Action",
            "source": "aws.ecr",
            "account": self.registry_id,
            "time": humantime::format_rfc3339_seconds(time).to_string(),
            "region": self.region,
            "resources": [],
            "detail": detail,
        }))
        .unwrap_or_default()
    }

    /// Sends one event; `Ok` when the receiver took it.
    async fn send(&self, receiver: &Receiver, id: &EventId, event: &WebhookEvent) -> Result<(), String> {
        let body = self.body(id, event);
        let mut req = self
            .client
            .post(&receiver.config.url)
            .timeout(receiver.config.timeout.0)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("Ferry-Event-Id", id.to_string());
        if let Some(secret) = &receiver.secret {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
            mac.update(&body);
            req = req.header("Ferry-Signature", format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
        }
        match req.body(body).send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("answered {}", resp.status())),
            Err(e) => Err(format!("unreachable: {e}")),
        }
    }

    /// Looks at one event: sends it if it is due and unclaimed; returns whether it did work.
    /// An event left for later lowers `due` to when it should be looked at again.
    async fn deliver(
        &self,
        receiver: &Receiver,
        id: &EventId,
        due: &mut Option<u64>,
    ) -> Result<bool, crate::registry::Error> {
        let name = receiver.config.name.as_str();
        let Some((mut event, version)) = self.queue.event(name, id).await? else { return Ok(false) };
        let now = self.queue.now_ms();
        let later = event.next_attempt_at_ms.max(event.claimed_until_ms);
        if later > now {
            *due = Some(due.map_or(later, |d| d.min(later)));
            return Ok(false);
        }
        if event.action == "PUSH" {
            let repository = crate::oci::RepositoryName::parse(&event.repository).ok();
            let committed = match &repository {
                Some(r) => self.registry.holds_manifest(r, &event.digest).await?,
                None => false,
            };
            if !committed {
                if now.saturating_sub(event.recorded_at_ms) > UNCOMMITTED_TTL_MS {
                    self.queue.delete(name, id).await?;
                } else {
                    let again = now.saturating_add(UNCOMMITTED_RECHECK_MS);
                    *due = Some(due.map_or(again, |d| d.min(again)));
                }
                return Ok(false);
            }
        }
        let claim = millis(receiver.config.timeout.0).saturating_add(5_000);
        event.claimed_until_ms = now.saturating_add(claim);
        let Some(version) = self.queue.update(name, id, &event, version).await? else {
            return Ok(false);
        };
        let outcome = self.send(receiver, id, &event).await;
        let deliveries = &self.metrics.webhooks.deliveries;
        match outcome {
            Ok(()) => {
                self.queue.delete(name, id).await?;
                deliveries.with_label_values(&[name, "delivered"]).inc();
            }
            Err(why) if now.saturating_sub(event.recorded_at_ms) >= millis(receiver.config.give_up_after.0) => {
                tracing::warn!(webhook = name, event = %id, error = %why, attempts = event.attempts, "webhook event dropped: its receiver did not take it in time");
                self.queue.delete(name, id).await?;
                deliveries.with_label_values(&[name, "failed"]).inc();
            }
            Err(why) => {
                tracing::info!(webhook = name, event = %id, error = %why, "webhook delivery failed; will retry");
                event.attempts = event.attempts.saturating_add(1);
                let wait = crate::clock::retry::backoff(event.attempts, FIRST_BACKOFF, MAX_BACKOFF);
                event.next_attempt_at_ms = self.queue.now_ms().saturating_add(millis(wait));
                event.claimed_until_ms = 0;
                let _ = self.queue.update(name, id, &event, version).await?;
                *due = Some(due.map_or(event.next_attempt_at_ms, |d| d.min(event.next_attempt_at_ms)));
                deliveries.with_label_values(&[name, "retried"]).inc();
            }
        }
        Ok(true)
    }

    async fn deliver_all(&self, receiver: &Receiver) -> Result<(usize, usize, Option<u64>), crate::registry::Error> {
        // One listing page: the pending gauge counts up to COUNTED (a queue longer than that
        // shows as COUNTED), and a round delivers the oldest BATCH.
        let (ids, _) = self.queue.events(&receiver.config.name, COUNTED).await?;
        self.metrics
            .webhooks
            .pending
            .with_label_values(&[&receiver.config.name])
            .set(i64::try_from(ids.len()).unwrap_or(i64::MAX));
        let (mut worked, mut due) = (0usize, None);
        for id in ids.iter().take(BATCH) {
            if self.deliver(receiver, id, &mut due).await? {
                worked = worked.saturating_add(1);
            }
        }
        Ok((ids.len(), worked, due))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Worker for WebhookWorker {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> Result<WorkerState, WorkerError> {
        // Receivers are served side by side: a slow one does not hold up the others.
        let rounds = futures_util::future::join_all(self.receivers.iter().map(|r| self.deliver_all(r))).await;
        let (mut pending, mut worked, mut due) = (0usize, 0usize, None::<u64>);
        for round in rounds {
            let (p, w, d) = round?;
            pending = pending.saturating_add(p);
            worked = worked.saturating_add(w);
            due = match (due, d) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.next_due_ms = due;
        self.last = format!("{pending} webhook events pending");
        Ok(if worked > 0 && pending > worked { WorkerState::Busy } else { WorkerState::Idle })
    }

    async fn wait_for_work(&mut self) {
        let wake = self.queue.wake();
        let idle = crate::clock::retry::jittered(IDLE_POLL);
        let until_due = self
            .next_due_ms
            .map(|due| Duration::from_millis(due.saturating_sub(self.queue.now_ms())).max(Duration::from_millis(50)));
        let wait = until_due.map_or(idle, |d| d.min(idle));
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
