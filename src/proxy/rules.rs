//! Pull-through cache rules created through the ECR API: one record holds them all
//! (`pull-through/rules`), changed only by conditional writes so that two replicas changing
//! rules at once cannot lose either change, and read into the proxy by every replica: at once
//! by the one that wrote, within [`RULE_REFRESH`] by the others ([`RuleRefresh`]). The config
//! file's rules are the proxy's own and never stored. Knows nothing of ECR's wire format.

use super::{Proxy, RuleRecord};
use crate::storage::{self, records, Key, Storage};
use crate::worker::{Worker, WorkerError, WorkerState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How soon a rule created on one replica is in force on the others.
pub const RULE_REFRESH: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize, Default)]
struct StoredRules {
    rules: Vec<RuleRecord>,
}

/// The stored rules, and the proxy they are put in force in.
pub struct RuleStore {
    storage: Arc<dyn Storage>,
    proxy: Arc<Proxy>,
}

impl RuleStore {
    /// The rules in `storage`, for `proxy`.
    pub fn new(storage: Arc<dyn Storage>, proxy: Arc<Proxy>) -> Self {
        Self { storage, proxy }
    }

    /// The pull-through rules in force and their upstream clients.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The rules created through the API, as stored now.
    pub async fn stored(&self) -> storage::Result<Vec<RuleRecord>> {
        Ok(records::get::<StoredRules>(self.storage.as_ref(), &Key::pull_through_rules())
            .await?
            .unwrap_or_default()
            .rules)
    }

    /// Changes the stored rules with `change` (retried on a racing write, so it must only
    /// look at what it is given), then puts them in force here at once.
    pub async fn update<T, E: From<storage::Error>>(
        &self,
        change: impl Fn(&mut Vec<RuleRecord>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let (stored, out) =
            records::update(self.storage.as_ref(), &Key::pull_through_rules(), |s: &mut StoredRules| {
                change(&mut s.rules)
            })
            .await
            .map_err(|e| match e {
                records::UpdateError::Storage(e) => E::from(e),
                records::UpdateError::Refused(e) => e,
            })?;
        self.proxy.set_stored(&stored.rules);
        Ok(out)
    }

    /// Reads the stored rules into the proxy.
    pub async fn refresh(&self) -> storage::Result<()> {
        let rules = self.stored().await?;
        self.proxy.set_stored(&rules);
        Ok(())
    }
}

/// Keeps this replica's rules in step with what other replicas stored.
pub struct RuleRefresh {
    rules: Arc<RuleStore>,
    last: String,
}

impl RuleRefresh {
    /// A refresher of `rules`.
    pub fn new(rules: Arc<RuleStore>) -> Self {
        Self { rules, last: String::new() }
    }
}

#[async_trait]
impl Worker for RuleRefresh {
    fn name(&self) -> &'static str {
        "pull_through_rules"
    }

    fn status(&self) -> String {
        self.last.clone()
    }

    async fn work(&mut self) -> std::result::Result<WorkerState, WorkerError> {
        self.rules.refresh().await?;
        self.last = format!("{} pull-through rules in force", self.rules.proxy.rules().len());
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(RULE_REFRESH).await;
    }
}
