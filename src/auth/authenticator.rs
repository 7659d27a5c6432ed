//! Who a request is from: the principals of the config (reloaded on SIGHUP), Basic
//! credentials in ECR's two forms (`AWS` + a registry token, or access key id + secret), a
//! bounded cache of credentials that verified (one argon2 run per credential per cache
//! period, never one per request), and a per-address limit on failed attempts. Knows nothing
//! of HTTP beyond the `Authorization` header's text.

use super::policy::{Policy, PolicyKind};
use super::secrets;
use super::token::{Claims, TokenError, TokenKey};
use crate::clock::SharedClock;
use crate::config::{policy_text, AuthConfig, ConfigError, SecretKnown};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A principal of the config, with its parsed identity policies.
#[derive(Debug)]
pub struct Identity {
    /// Its name.
    pub name: String,
    /// `arn:aws:iam::<account>:user/<name>`.
    pub arn: String,
    /// The account it belongs to.
    pub account: String,
    /// Its access key id.
    pub access_key_id: String,
    secret: SecretKnown,
    /// Its identity policies.
    pub policies: Vec<Policy>,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A principal of the config.
    User(Arc<Identity>),
}

impl Identity {
    /// The secret itself, when the config holds it (SigV4 needs it; a hash cannot sign).
    pub fn secret(&self) -> Option<&str> {
        match &self.secret {
            SecretKnown::Secret(s) => Some(s),
            SecretKnown::Hash(_) => None,
        }
    }
}

impl Principal {
    /// The caller as policies see it.
    pub fn caller(&self) -> super::policy::Caller {
        match self {
            Self::Anonymous => super::policy::Caller::Anonymous,
            Self::User(id) => super::policy::Caller::Principal {
                arn: id.arn.clone(),
                account: id.account.clone(),
                username: id.name.clone(),
            },
        }
    }
}

/// The principals and policies in force.
#[derive(Debug, Default)]
pub struct Identities {
    by_name: HashMap<String, Arc<Identity>>,
    by_key: HashMap<String, Arc<Identity>>,
    /// Policies for requests without credentials.
    pub anonymous: Vec<Policy>,
}

impl Identities {
    /// Builds them from `[auth]` (already validated), reading policy files.
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, ConfigError> {
        let parse = |entry: &String, key: &'static str| {
            Policy::parse(&policy_text(entry)?, PolicyKind::Identity)
                .map_err(|e| ConfigError::Invalid { key, message: e.to_string() })
        };
        let mut out = Self::default();
        for p in &cfg.principals {
            let account = if p.account.is_empty() { cfg.registry_id.clone() } else { p.account.clone() };
            let identity = Arc::new(Identity {
                arn: format!("arn:aws:iam::{account}:user/{}", p.name),
                name: p.name.clone(),
                account,
                access_key_id: p.access_key_id.clone(),
                secret: p.resolved_secret()?.unwrap_or(SecretKnown::Hash(String::new())),
                policies: p.policies.iter().map(|e| parse(e, "auth.principals.policies")).collect::<Result<_, _>>()?,
            });
            out.by_name.insert(p.name.clone(), identity.clone());
            out.by_key.insert(p.access_key_id.clone(), identity);
        }
        out.anonymous =
            cfg.anonymous.policies.iter().map(|e| parse(e, "auth.anonymous.policies")).collect::<Result<_, _>>()?;
        Ok(out)
    }

    /// The principal with this access key id.
    pub fn by_access_key(&self, key: &str) -> Option<Arc<Identity>> {
        self.by_key.get(key).cloned()
    }

    /// The principal with this name.
    pub fn by_name(&self, name: &str) -> Option<Arc<Identity>> {
        self.by_name.get(name).cloned()
    }
}

/// Why credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong, unknown, malformed or tampered credentials.
    #[error("the credentials are not valid")]
    Invalid,
    /// A registry token past its expiry (ECR's text).
    #[error("Your authorization token has expired. Reauthenticate and try again.")]
    Expired,
    /// Too many failed attempts from this address in the last minute.
    #[error("too many failed authentications from this address; retry in {0}s")]
    Throttled(u64),
}

/// How long a verified credential is trusted without running argon2 again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);

/// Authenticates requests.
pub struct Authenticator {
    identities: RwLock<Arc<Identities>>,
    key: TokenKey,
    token_ttl: Duration,
    max_failures_per_minute: u32,
    /// Credentials that verified, by a digest of them: the principal's name.
    verified: moka::future::Cache<[u8; 32], String>,
    /// Registry passwords whose signature checked out, with their claims: a docker client
    /// sends the same one on every request, so the MAC and the claims' JSON are checked once
    /// per token per cache period (expiry and the principal still on every request).
    tokens: moka::sync::Cache<String, Claims>,
    /// Failed attempts per address in the current minute.
    failures: Mutex<HashMap<IpAddr, (u64, u32)>>,
    clock: SharedClock,
}

impl Authenticator {
    /// An authenticator for `cfg`, signing tokens with `key`.
    pub fn new(cfg: &AuthConfig, key: TokenKey, clock: SharedClock) -> Result<Self, ConfigError> {
        Ok(Self {
            identities: RwLock::new(Arc::new(Identities::from_config(cfg)?)),
            key,
            token_ttl: cfg.token_ttl.0,
            max_failures_per_minute: cfg.max_failures_per_minute,
            verified: moka::future::Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_FOR).build(),
            tokens: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_FOR).build(),
            failures: Mutex::new(HashMap::new()),
            clock,
        })
    }

    /// The principals in force now.
    pub fn identities(&self) -> Arc<Identities> {
        self.identities.read().map(|i| i.clone()).unwrap_or_default()
    }

    /// Takes new principals and policies (SIGHUP): credentials verified before are forgotten,
    /// and tokens of a removed principal stop working at once.
    pub fn reload(&self, cfg: &AuthConfig) -> Result<(), ConfigError> {
        let fresh = Arc::new(Identities::from_config(cfg)?);
        if let Ok(mut i) = self.identities.write() {
            *i = fresh;
        }
        self.verified.invalidate_all();
        Ok(())
    }

    /// A registry password for `identity`, and when it expires (seconds since the epoch).
    pub fn issue_token(&self, identity: &Identity) -> (String, u64) {
        let ttl = self.token_ttl.as_secs();
        let expires_at = (self.clock.now_ms() / 1000).saturating_add(ttl);
        (self.key.issue(&Claims { principal: identity.name.clone(), expires_at }), expires_at)
    }

    fn minute(&self) -> u64 {
        self.clock.now_ms() / 60_000
    }

    fn throttled(&self, client: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&client) {
            Some((minute, n)) if *minute == self.minute() && *n >= self.max_failures_per_minute => {
                Some(60u64.saturating_sub((self.clock.now_ms() / 1000) % 60).max(1))
            }
            _ => None,
        }
    }

    fn failed(&self, client: IpAddr) {
        let minute = self.minute();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 100_000 {
            failures.retain(|_, (m, _)| *m == minute);
        }
        let entry = failures.entry(client).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Who the `Authorization` header names: `None` (no header) is anonymous.
    pub async fn authenticate(&self, authorization: Option<&str>, client: IpAddr) -> Result<Principal, AuthError> {
        let Some(header) = authorization else { return Ok(Principal::Anonymous) };
        if let Some(retry) = self.throttled(client) {
            return Err(AuthError::Throttled(retry));
        }
        let result = self.basic(header).await;
        if matches!(result, Err(AuthError::Invalid)) {
            self.failed(client);
        }
        result
    }

    async fn basic(&self, header: &str) -> Result<Principal, AuthError> {
        let (scheme, value) = header.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Invalid);
        }
        let decoded = STANDARD.decode(value.trim()).map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        let identities = self.identities();
        if user == "AWS" {
            let now = self.clock.now_ms() / 1000;
            let claims = match self.tokens.get(password) {
                Some(claims) if now >= claims.expires_at => return Err(AuthError::Expired),
                Some(claims) => claims,
                None => {
                    let claims = self.key.verify(password, now).map_err(|e| match e {
                        TokenError::Expired => AuthError::Expired,
                        TokenError::Invalid => AuthError::Invalid,
                    })?;
                    self.tokens.insert(password.to_owned(), claims.clone());
                    claims
                }
            };
            // A principal removed from the config: its tokens stop here.
            return identities.by_name.get(&claims.principal).cloned().map(Principal::User).ok_or(AuthError::Invalid);
        }
        let identity = identities.by_access_key(user).ok_or(AuthError::Invalid)?;
        let cache_key: [u8; 32] = sha2::Sha256::digest(format!("{user}\0{password}").as_bytes()).into();
        if self.verified.get(&cache_key).await.as_deref() == Some(identity.name.as_str()) {
            return Ok(Principal::User(identity));
        }
        let ok = match &identity.secret {
            SecretKnown::Secret(s) => subtle::ConstantTimeEq::ct_eq(s.as_bytes(), password.as_bytes()).into(),
            SecretKnown::Hash(hash) => {
                let (secret, hash) = (password.to_owned(), hash.clone());
                tokio::task::spawn_blocking(move || secrets::verify(&secret, &hash)).await.unwrap_or(false)
            }
        };
        if !ok {
            return Err(AuthError::Invalid);
        }
        self.verified.insert(cache_key, identity.name.clone()).await;
        Ok(Principal::User(identity))
    }
}
