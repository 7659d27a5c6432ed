//! A test fixture for ECR API operations: a registry and the feature stores over the in-memory
//! store behind a [`CountingStorage`], and a way to call an operation as a caller allowed
//! everything would, so a test can assert what an operation answers and what it costs in
//! storage requests. Compiled only for tests.

use super::{ApiContext, ApiError, Operation, TARGET_PREFIX};
use crate::auth::Principal;
use crate::clock::{ManualClock, SharedClock};
use crate::lifecycle::previews::Previews;
use crate::metrics::Metrics;
use crate::proxy::rules::RuleStore;
use crate::registry::settings::AccountStore;
use crate::registry::testing;
use crate::registry::Registry;
use crate::replication::store::ReplicationStore;
use crate::storage::counting::{CountingStorage, Requests};
use crate::storage::memory::MemoryStorage;
use crate::storage::Storage;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The account id the fixture answers for.
pub const REGISTRY_ID: &str = "123456789012";

/// Everything an operation runs with, over a counted in-memory store.
pub struct ApiFixture {
    pub storage: Arc<CountingStorage>,
    pub registry: Registry,
    pub clock: ManualClock,
    replication: ReplicationStore,
    rules: RuleStore,
    account: AccountStore,
    previews: Previews,
}

impl ApiFixture {
    /// An empty registry.
    pub fn new() -> Self {
        let clock = ManualClock::new();
        let shared: SharedClock = Arc::new(clock.clone());
        let storage = Arc::new(CountingStorage::new(Arc::new(MemoryStorage::with_clock(shared.clone()))));
        let store: Arc<dyn Storage> = storage.clone();
        let registry = testing::registry(store.clone(), testing::settings(Duration::from_secs(3600)), shared.clone());
        let metrics = Arc::new(Metrics::new(prometheus::Registry::new()).expect("metrics register"));
        let proxy = Arc::new(
            crate::proxy::Proxy::new(&[], &[], &crate::config::PullThroughApiConfig::default(), &metrics)
                .expect("no rules build"),
        );
        Self {
            replication: ReplicationStore::new(store.clone(), shared.clone()),
            rules: RuleStore::new(store.clone(), proxy),
            account: AccountStore::new(store.clone()),
            previews: Previews::new(store, shared),
            storage,
            registry,
            clock,
        }
    }

    /// Calls `operation` with `body` as a caller every policy allows.
    pub async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError> {
        let target = format!("{TARGET_PREFIX}{operation}");
        let (_, op) = Operation::parse(&target, body.to_string().as_bytes(), REGISTRY_ID, "us-east-1")?;
        let principal = Principal::Anonymous;
        let ctx = ApiContext {
            registry: &self.registry,
            replication: &self.replication,
            rules: &self.rules,
            account: &self.account,
            previews: &self.previews,
            principal: &principal,
            authenticator: None,
            registry_id: REGISTRY_ID,
            region: "us-east-1",
            proxy_endpoint: "http://127.0.0.1:5000".into(),
            now: crate::clock::Clock::now_ms(&self.clock) / 1000,
            open_token_ttl: 3600,
            visible: &|_| true,
            keeps_control: &|_, _| true,
        };
        op.run(&ctx).await
    }

    /// Every item under `key` of a paged operation, following `nextToken` from the first page
    /// (`body` sets `maxResults` and filters); asserts no page is longer than `maxResults`.
    pub async fn walk(&self, operation: &str, body: Value, key: &str) -> Vec<Value> {
        let per_page = body["maxResults"].as_u64().map_or(usize::MAX, |n| n as usize);
        let (mut items, mut token) = (Vec::new(), None::<String>);
        loop {
            let mut ask = body.clone();
            if let Some(t) = &token {
                ask["nextToken"] = Value::from(t.as_str());
            }
            let out = self.call(operation, ask).await.expect("a page");
            let page = out[key].as_array().cloned().unwrap_or_default();
            assert!(page.len() <= per_page, "{out}");
            items.extend(page);
            match out["nextToken"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => return items,
            }
        }
    }

    /// [`Self::call`], with the storage requests it made.
    pub async fn counted(&self, operation: &str, body: Value) -> (Result<Value, ApiError>, Requests) {
        self.storage.count(self.call(operation, body)).await
    }
}
