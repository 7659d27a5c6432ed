//! The `Authorizer`: the one place that decides what a request may do. It reads what a decision
//! needs (the caller's identity policies or the anonymous ones, the repositories' policies, the
//! registry policy for a request claiming to be a replication) through an injected
//! [`PolicySource`], parses each policy text once, and hands the decision to [`super::authorize`].
//! The edge asks it once per request (and once more for a pull-through cache's import right or
//! a repository a push creates) and passes the result down as a value; with access control off
//! it allows everything but writes to read-only repositories. Knows nothing of HTTP, and of
//! storage only its error type.

use super::authenticator::Authenticator;
use super::policy::{Context, ParsedPolicies, Policy};
use super::{Access, Action, Policies, Principal, Refusal, Verdict};
use crate::clock::SharedClock;
use crate::oci::RepositoryName;
use crate::storage;
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Where the policies a decision draws on are kept: repositories' settings and the registry
/// policy (read briefly cached by whoever implements this).
#[async_trait]
pub trait PolicySource: Send + Sync {
    /// A repository's policy text, if it has one.
    async fn repository_policy(&self, name: &RepositoryName) -> storage::Result<Option<String>>;
    /// The registry policy's text, if one is set.
    async fn registry_policy(&self) -> storage::Result<Option<String>>;
}

/// Decides.
pub struct Authorizer {
    /// The principals and anonymous policies; `None`: access control is off.
    authenticator: Option<Arc<Authenticator>>,
    registry_id: String,
    region: String,
    /// Whether requests arrive over TLS (`aws:SecureTransport`).
    tls: bool,
    clock: SharedClock,
    parsed: ParsedPolicies,
    source: Arc<dyn PolicySource>,
}

/// One question: may `principal` do every one of `accesses`?
pub struct Ask<'a> {
    /// Who.
    pub principal: &'a Principal,
    /// What, on which repositories.
    pub accesses: &'a [Access],
    /// From where (`aws:SourceIp`).
    pub client: IpAddr,
    /// Why a repository cannot be written, if it cannot (a pull-through cache).
    pub read_only: &'a (dyn Fn(&RepositoryName) -> Option<String> + Sync),
    /// Whether the request says it is another registry's replication.
    pub claims_replication: bool,
}

/// What a question's answer is: allowed (and whether as a replication), or refused.
pub type Decision = Result<Verdict, Refusal>;

impl Authorizer {
    /// An authorizer; `authenticator` `None` when access control is off.
    pub fn new(
        authenticator: Option<Arc<Authenticator>>,
        registry_id: &str,
        region: &str,
        tls: bool,
        clock: SharedClock,
        source: Arc<dyn PolicySource>,
    ) -> Self {
        Self {
            authenticator,
            registry_id: registry_id.to_owned(),
            region: region.to_owned(),
            tls,
            clock,
            parsed: ParsedPolicies::default(),
            source,
        }
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        self.authenticator.is_some()
    }

    fn resource(&self, text: &str, what: &str) -> storage::Result<Arc<Policy>> {
        self.parsed.resource(text).map_err(|e| storage::Error::Corrupt(format!("{what} no longer parses: {e}")))
    }

    /// The decision, with every policy it needs read first. The outer error is a failure to
    /// read them.
    pub async fn decide(&self, ask: Ask<'_>) -> storage::Result<Decision> {
        let mut repositories: HashMap<RepositoryName, Option<Arc<Policy>>> = HashMap::new();
        let mut registry = None;
        if self.enabled() {
            for name in ask.accesses.iter().filter_map(|a| a.repository.as_ref()) {
                if repositories.contains_key(name) {
                    continue;
                }
                let policy = match self.source.repository_policy(name).await? {
                    Some(text) => Some(self.resource(&text, &format!("the policy of {name}"))?),
                    None => None,
                };
                repositories.insert(name.clone(), policy);
            }
            if ask.claims_replication {
                if let Some(text) = self.source.registry_policy().await? {
                    registry = Some(self.resource(&text, "the registry policy")?);
                }
            }
        }
        Ok(self.decide_with(&ask, &repositories, registry.as_deref()))
    }

    /// The decision over policies already at hand.
    fn decide_with(
        &self,
        ask: &Ask<'_>,
        repositories: &HashMap<RepositoryName, Option<Arc<Policy>>>,
        registry: Option<&Policy>,
    ) -> Decision {
        let context = Context { source_ip: ask.client, secure_transport: self.tls, current_time: self.clock.now() };
        let lookup = |name: &RepositoryName| repositories.get(name).cloned().flatten();
        let identities = self.authenticator.as_ref().map(|a| a.identities());
        let policies = identities.as_ref().map(|identities| Policies {
            registry_id: &self.registry_id,
            region: &self.region,
            anonymous: &identities.anonymous,
            repository: &lookup,
            registry,
        });
        super::authorize(
            ask.principal,
            ask.accesses,
            ask.read_only,
            policies.as_ref(),
            &context,
            ask.claims_replication,
        )
    }

    /// Whether `principal` may do `accesses` by its identity policies alone (what a listing
    /// shows: the catalog, `DescribeRepositories`), without reading each repository's policy.
    pub fn allowed_by_identity(&self, principal: &Principal, accesses: &[Access], client: IpAddr) -> bool {
        let ask = Ask { principal, accesses, client, read_only: &|_| None, claims_replication: false };
        self.decide_with(&ask, &HashMap::new(), None).is_ok()
    }

    /// Whether `principal` could still `ecr:SetRepositoryPolicy` on `name` were `text` its
    /// policy (so nobody locks themselves out by mistake); a text that does not parse keeps
    /// control (it is refused elsewhere).
    pub fn keeps_control(&self, principal: &Principal, name: &RepositoryName, text: &str, client: IpAddr) -> bool {
        let Ok(policy) = self.parsed.resource(text) else { return true };
        let access = [Access::on(Action::SetRepositoryPolicy, name)];
        let ask = Ask { principal, accesses: &access, client, read_only: &|_| None, claims_replication: false };
        let policies = HashMap::from([(name.clone(), Some(policy))]);
        self.decide_with(&ask, &policies, None).is_ok()
    }

    /// Whether `principal` may make Ferry fetch into the pull-through cache `local` from its
    /// upstream (`ecr:BatchImportUpstreamImage`; cache hits need no such right).
    pub async fn may_import(
        &self,
        principal: &Principal,
        local: &RepositoryName,
        client: IpAddr,
    ) -> storage::Result<bool> {
        let access = [Access::on(Action::BatchImportUpstreamImage, local)];
        let ask = Ask { principal, accesses: &access, client, read_only: &|_| None, claims_replication: false };
        Ok(self.decide(ask).await?.is_ok())
    }

    /// Whether `principal` may create `name` (a push to a repository that does not exist); a
    /// replication may by the registry policy.
    pub async fn may_create(
        &self,
        principal: &Principal,
        name: &RepositoryName,
        client: IpAddr,
        replication: bool,
    ) -> storage::Result<Decision> {
        let access = [Access::on(Action::CreateRepository, name)];
        let ask = Ask { principal, accesses: &access, client, read_only: &|_| None, claims_replication: replication };
        self.decide(ask).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Policies from memory, counting reads.
    #[derive(Default)]
    struct Source {
        repositories: HashMap<String, String>,
        registry: Option<String>,
        reads: Mutex<usize>,
    }

    #[async_trait]
    impl PolicySource for Source {
        async fn repository_policy(&self, name: &RepositoryName) -> storage::Result<Option<String>> {
            *self.reads.lock().unwrap() += 1;
            Ok(self.repositories.get(name.as_str()).cloned())
        }
        async fn registry_policy(&self) -> storage::Result<Option<String>> {
            *self.reads.lock().unwrap() += 1;
            Ok(self.registry.clone())
        }
    }

    #[tokio::test]
    async fn off_allows_all_but_read_only_writes_and_reads_nothing() {
        let source = Arc::new(Source::default());
        let authorizer = Authorizer::new(
            None,
            "123456789012",
            "us-east-1",
            false,
            Arc::new(crate::clock::SystemClock),
            source.clone(),
        );
        let name = RepositoryName::parse("hub/library/alpine").unwrap();
        let put = [Access::on(Action::PutImage, &name)];
        let read_only = |_: &RepositoryName| Some("a cache".to_owned());
        let ask = Ask {
            principal: &Principal::Anonymous,
            accesses: &put,
            client: [127, 0, 0, 1].into(),
            read_only: &read_only,
            claims_replication: false,
        };
        assert!(matches!(authorizer.decide(ask).await.unwrap(), Err(Refusal::ReadOnly(_))));
        assert!(authorizer.may_import(&Principal::Anonymous, &name, [127, 0, 0, 1].into()).await.unwrap());
        assert_eq!(*source.reads.lock().unwrap(), 0, "nothing is read with access control off");
    }

    #[tokio::test]
    async fn on_reads_each_policy_once_and_decides_with_it() {
        let allow_public = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:BatchGetImage","ecr:SetRepositoryPolicy"],"Resource":"*"}]}"#;
        let cfg = crate::config::AuthConfig {
            enabled: true,
            registry_id: "123456789012".into(),
            anonymous: crate::config::AnonymousConfig { policies: vec![allow_public.into()] },
            ..Default::default()
        };
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let authenticator = Arc::new(
            Authenticator::new(&cfg, super::super::token::TokenKey::from_bytes(&[7; 32]), clock.clone()).unwrap(),
        );
        let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"ecr:*"}]}"#;
        let source = Arc::new(Source {
            repositories: HashMap::from([("team/closed".to_owned(), deny.to_owned())]),
            ..Source::default()
        });
        let authorizer =
            Authorizer::new(Some(authenticator), "123456789012", "us-east-1", false, clock, source.clone());
        let (open, closed) =
            (RepositoryName::parse("team/open").unwrap(), RepositoryName::parse("team/closed").unwrap());
        let client: IpAddr = [127, 0, 0, 1].into();
        let ask = |accesses: &'static [Access]| Ask {
            principal: &Principal::Anonymous,
            accesses,
            client,
            read_only: &|_| None,
            claims_replication: false,
        };
        let both: &'static [Access] = Box::leak(Box::new([
            Access::on(Action::BatchGetImage, &open),
            Access::on(Action::BatchGetImage, &open),
            Access::on(Action::BatchGetImage, &closed),
        ]));
        assert!(matches!(authorizer.decide(ask(both)).await.unwrap(), Err(Refusal::NotAuthorized { .. })));
        assert_eq!(*source.reads.lock().unwrap(), 2, "each repository's policy read once per decision");
        let one: &'static [Access] = Box::leak(Box::new([Access::on(Action::BatchGetImage, &open)]));
        assert!(authorizer.decide(ask(one)).await.unwrap().is_ok());
        // Listings see identity policies only; a policy that would lock the caller out is caught.
        assert!(authorizer.allowed_by_identity(
            &Principal::Anonymous,
            &[Access::on(Action::BatchGetImage, &closed)],
            client
        ));
        assert!(!authorizer.keeps_control(&Principal::Anonymous, &open, deny, client));
        assert!(authorizer.keeps_control(
            &Principal::Anonymous,
            &open,
            allow_public.replace("\"Action\"", "\"Principal\":\"*\",\"Action\"").as_str(),
            client
        ));
    }
}
