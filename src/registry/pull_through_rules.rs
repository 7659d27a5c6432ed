//! Pull-through cache rules created through the ECR API: one record holds them all
//! (`pull-through/rules`), changed only by conditional writes so that two replicas changing
//! rules at once cannot lose either change, and read into the proxy by every replica: at once
//! by the one that wrote, within [`RULE_REFRESH`] by the others ([`RuleRefresh`]). The config
//! file's rules are the proxy's own and never stored. Knows nothing of ECR's wire format.

use super::{Error, Registry, Result};
use crate::proxy::RuleRecord;
use crate::storage::Key;
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

fn decode_rules(bytes: &[u8]) -> Result<Vec<RuleRecord>> {
    super::manifests::decode::<StoredRules>(bytes).map(|s| s.rules)
}

impl Registry {
    /// The rules created through the API, as stored now.
    pub async fn stored_pull_through_rules(&self) -> Result<Vec<RuleRecord>> {
        match self.storage.record_get_versioned(&Key::pull_through_rules()).await? {
            Some((bytes, _)) => decode_rules(&bytes),
            None => Ok(Vec::new()),
        }
    }

    /// Changes the stored rules with `change` (retried on a racing write, so it must only
    /// look at what it is given), then puts them in force here at once.
    pub async fn update_pull_through_rules<T, E: From<Error>>(
        &self,
        change: impl Fn(&mut Vec<RuleRecord>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let (stored, out) = self
            .update_record(&Key::pull_through_rules(), |stored: &mut StoredRules| change(&mut stored.rules))
            .await?;
        self.proxy.set_stored(&stored.rules);
        Ok(out)
    }

    /// Reads the stored rules into the proxy.
    pub async fn refresh_pull_through_rules(&self) -> Result<()> {
        let rules = self.stored_pull_through_rules().await?;
        self.proxy.set_stored(&rules);
        Ok(())
    }

    /// The pull-through rules and their upstream clients.
    pub fn proxy(&self) -> &crate::proxy::Proxy {
        &self.proxy
    }
}

/// Keeps this replica's rules in step with what other replicas stored.
pub struct RuleRefresh {
    registry: Arc<Registry>,
    last: String,
}

impl RuleRefresh {
    /// A refresher for `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry, last: String::new() }
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
        self.registry.refresh_pull_through_rules().await?;
        self.last = format!("{} pull-through rules in force", self.registry.proxy.rules().len());
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(RULE_REFRESH).await;
    }
}
