//! `[[webhooks]]`: HTTP endpoints told of pushes and deletes, as ECR tells EventBridge.

use super::secret::Secret;
use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[[webhooks]]`: one receiver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// A name for metrics and storage keys (lowercase letters, digits, `-`). Required.
    pub name: String,
    /// Where events are POSTed (`http://` or `https://`). Required.
    pub url: String,
    /// Which actions: `"PUSH"`, `"DELETE"`. Default both.
    pub events: Vec<String>,
    /// Repositories whose events are sent, as globs (`"team-a/*"`). Default `["*"]`.
    pub repositories: Vec<String>,
    /// Signs each body: `Ferry-Signature: sha256=<hex HMAC-SHA256 of the body>`. Default `""`
    /// (unsigned); or set `secret_file`.
    pub secret: Secret,
    /// File holding the secret. Default `""`.
    pub secret_file: String,
    /// One delivery attempt's time limit. Default `"10s"`.
    pub timeout: HumanDuration,
    /// An event still undelivered after this is dropped (logged and counted). Default `"24h"`.
    pub give_up_after: HumanDuration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            events: vec!["PUSH".into(), "DELETE".into()],
            repositories: vec!["*".into()],
            secret: Secret::default(),
            secret_file: String::new(),
            timeout: HumanDuration(Duration::from_secs(10)),
            give_up_after: HumanDuration(Duration::from_secs(24 * 3600)),
        }
    }
}

impl WebhookConfig {
    /// The signing secret, if any.
    pub fn resolved_secret(&self) -> Result<Option<String>, ConfigError> {
        super::secret::resolve(&self.secret, &self.secret_file, "webhooks.secret_file")
    }

    /// Whether `action` on `repository` is sent to this receiver.
    pub fn wants(&self, action: &str, repository: &str) -> bool {
        self.events.iter().any(|e| e == action)
            && self.repositories.iter().any(|g| wildmatch::WildMatch::new(g).matches(repository))
    }
}

/// Checks every receiver: a unique name, a URL, known actions.
pub fn validate(hooks: &[WebhookConfig]) -> Result<(), ConfigError> {
    let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
    let mut names = std::collections::HashSet::new();
    for h in hooks {
        let name_ok = !h.name.is_empty()
            && h.name.len() <= 64
            && h.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return invalid("webhooks.name", format!("{:?} must be lowercase letters, digits and '-'", h.name));
        }
        if !names.insert(h.name.as_str()) {
            return invalid("webhooks.name", format!("{:?} is used twice", h.name));
        }
        let scheme_ok = h.url.starts_with("http://") || h.url.starts_with("https://");
        if !scheme_ok || h.url.parse::<http::Uri>().map(|u| u.host().is_none()).unwrap_or(true) {
            return invalid(
                "webhooks.url",
                format!("{:?} (webhook {}) must be an http:// or https:// URL", h.url, h.name),
            );
        }
        if let Some(e) = h.events.iter().find(|e| !["PUSH", "DELETE"].contains(&e.as_str())) {
            return invalid("webhooks.events", format!("{e:?} (webhook {}) must be \"PUSH\" or \"DELETE\"", h.name));
        }
        h.resolved_secret()?;
        if h.timeout.0 < Duration::from_millis(100) {
            return invalid("webhooks.timeout", format!("webhook {}: must be at least 100ms", h.name));
        }
    }
    Ok(())
}
