//! Who a request is from: the principals of the config (reloaded on SIGHUP), Basic
//! credentials in ECR's two forms (`AWS` + a registry token, or access key id + secret),
//! Bearer tokens from the registry's token endpoint (Docker's flow, anonymous ones included),
//! a bounded cache of credentials that verified (one argon2 run per credential per cache
//! period, never one per request), and bounds on password checks: a failure budget per client
//! address and access key, reserved before the check; a few argon2 runs at once; a bounded
//! queue behind them. Knows nothing of HTTP beyond the `Authorization` header's text.

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

impl Identity {
    /// A principal with a secret nobody knows and these identity policies (unit tests).
    #[cfg(test)]
    pub fn for_tests(name: &str, account: &str, policies: Vec<Policy>) -> Self {
        Self {
            name: name.to_owned(),
            arn: format!("arn:aws:iam::{account}:user/{name}"),
            account: account.to_owned(),
            access_key_id: format!("AKIA{name}"),
            secret: SecretKnown::Hash(String::new()),
            policies,
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

/// The longest a Bearer token from the token endpoint lasts (and never past the credential it
/// was issued for).
pub const BEARER_TTL: Duration = Duration::from_secs(3600);

/// Failed-attempt records kept before old minutes are swept.
const MAX_FAILURE_RECORDS: usize = 100_000;

/// A request's credentials once checked.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who.
    pub principal: Principal,
    /// When the credential stops being accepted (seconds since the epoch), for a token.
    pub expires_at: Option<u64>,
    /// Whether the request carried credentials (an anonymous Bearer token or an empty Basic
    /// pair count: the client finished a login flow, as itself or as nobody).
    pub presented: bool,
}

/// Authenticates requests.
pub struct Authenticator {
    identities: RwLock<Arc<Identities>>,
    key: TokenKey,
    token_ttl: Duration,
    max_failures_per_minute: u32,
    /// Credentials that verified, by a digest of them: the principal's name (a synchronous
    /// cache: it is read on every request with a key pair).
    verified: moka::sync::Cache<[u8; 32], String>,
    /// Registry passwords whose signature checked out, with their claims: a docker client
    /// sends the same one on every request, so the MAC and the claims' JSON are checked once
    /// per token per cache period (expiry and the principal still on every request).
    tokens: moka::sync::Cache<String, Claims>,
    /// Failed attempts per (address, access key id): when its minute began (ms) and how many.
    failures: Mutex<HashMap<(IpAddr, String), (u64, u32)>>,
    /// argon2 runs at once (each takes ~19 MiB and a core for tens of milliseconds).
    password_checks: Arc<tokio::sync::Semaphore>,
    /// Checks waiting for a run, and how many may wait before the rest are throttled.
    password_queue: Arc<std::sync::atomic::AtomicUsize>,
    max_password_queue: usize,
    clock: SharedClock,
}

/// One reserved failure of the budget: kept as a failure unless refunded.
struct Attempt<'a> {
    owner: &'a Authenticator,
    key: (IpAddr, String),
    window: u64,
}

impl Attempt<'_> {
    /// Gives the reserved failure back: the credential was right, or never checked.
    fn refund(self) {
        let mut failures = self.owner.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((window, n)) = failures.get_mut(&self.key) {
            if *window == self.window {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// How long a failure budget lasts from its first failure.
const FAILURE_WINDOW_MS: u64 = 60_000;

/// Counts one waiter in the password queue while it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Authenticator {
    /// An authenticator for `cfg`, signing tokens with `key`.
    pub fn new(cfg: &AuthConfig, key: TokenKey, clock: SharedClock) -> Result<Self, ConfigError> {
        let at_once = match cfg.password_checks_at_once {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        Ok(Self {
            identities: RwLock::new(Arc::new(Identities::from_config(cfg)?)),
            key,
            token_ttl: cfg.token_ttl.0,
            max_failures_per_minute: cfg.max_failures_per_minute,
            verified: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_FOR).build(),
            tokens: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(VERIFIED_FOR).build(),
            failures: Mutex::new(HashMap::new()),
            password_checks: Arc::new(tokio::sync::Semaphore::new(at_once)),
            password_queue: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_password_queue: cfg.password_check_queue,
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

    fn now_secs(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// A registry password for `identity`, and when it expires (seconds since the epoch).
    pub fn issue_token(&self, identity: &Identity) -> (String, u64) {
        let ttl = self.token_ttl.as_secs();
        let expires_at = self.now_secs().saturating_add(ttl);
        (self.key.issue(&Claims { principal: identity.name.clone(), expires_at }), expires_at)
    }

    /// A Bearer token for the token endpoint's answer: `principal`'s (anonymous ones included),
    /// lasting [`BEARER_TTL`] at most and never past `not_after`. Returns it and its lifetime
    /// in seconds.
    pub fn issue_bearer(&self, principal: &Principal, not_after: Option<u64>) -> (String, u64) {
        let now = self.now_secs();
        let ttl = BEARER_TTL.min(self.token_ttl).as_secs();
        let expires_at =
            not_after.map_or(now.saturating_add(ttl), |t| t.min(now.saturating_add(ttl))).max(now.saturating_add(1));
        let name = match principal {
            Principal::Anonymous => String::new(),
            Principal::User(id) => id.name.clone(),
        };
        (self.key.issue(&Claims { principal: name, expires_at }), expires_at.saturating_sub(now))
    }

    /// Reserves one failure of `client`'s budget for `key_id` before its secret is checked
    /// (check and count in one step, so parallel guesses cannot all pass the check), or says
    /// how long to wait. A budget lasts a minute from its first failure (a sliding start, so
    /// nobody gets two budgets across a clock minute's edge).
    fn reserve_attempt(&self, client: IpAddr, key_id: &str) -> Result<Attempt<'_>, AuthError> {
        let now = self.clock.now_ms();
        let current = |start: u64| now.saturating_sub(start) < FAILURE_WINDOW_MS;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > MAX_FAILURE_RECORDS {
            failures.retain(|_, (start, _)| current(*start));
        }
        let key = (client, key_id.to_owned());
        let entry = failures.entry(key.clone()).or_insert((now, 0));
        if !current(entry.0) || entry.1 == 0 {
            *entry = (now, 0);
        }
        if entry.1 >= self.max_failures_per_minute {
            let left_ms = entry.0.saturating_add(FAILURE_WINDOW_MS).saturating_sub(now);
            return Err(AuthError::Throttled(left_ms.div_ceil(1000).max(1)));
        }
        entry.1 = entry.1.saturating_add(1);
        Ok(Attempt { owner: self, key, window: entry.0 })
    }

    /// Who the `Authorization` header names: `None` (no header) is anonymous.
    pub async fn authenticate(&self, authorization: Option<&str>, client: IpAddr) -> Result<Principal, AuthError> {
        self.authenticate_credential(authorization, client).await.map(|a| a.principal)
    }

    /// [`Self::authenticate`], with the credential's expiry and whether one was presented.
    pub async fn authenticate_credential(
        &self,
        authorization: Option<&str>,
        client: IpAddr,
    ) -> Result<Authenticated, AuthError> {
        let Some(header) = authorization else {
            return Ok(Authenticated { principal: Principal::Anonymous, expires_at: None, presented: false });
        };
        let (scheme, value) = header.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.token(value.trim(), true);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Invalid);
        }
        let decoded = STANDARD.decode(value.trim()).map_err(|_| AuthError::Invalid)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = text.split_once(':').ok_or(AuthError::Invalid)?;
        // podman and skopeo send an empty pair when they have no credentials: that is nobody.
        if user.is_empty() && password.is_empty() {
            return Ok(Authenticated { principal: Principal::Anonymous, expires_at: None, presented: true });
        }
        if user == "AWS" {
            return self.token(password, false);
        }
        let identity = self.identities().by_access_key(user).ok_or(AuthError::Invalid)?;
        let cache_key: [u8; 32] =
            sha2::Sha256::new().chain_update(user).chain_update([0u8]).chain_update(password).finalize().into();
        // A credential verified lately passes whatever others at this address are doing.
        if self.verified.get(&cache_key).as_deref() == Some(identity.name.as_str()) {
            return Ok(Authenticated { principal: Principal::User(identity), expires_at: None, presented: true });
        }
        let attempt = self.reserve_attempt(client, user)?;
        let checked = match &identity.secret {
            SecretKnown::Secret(s) => Ok(bool::from(subtle::ConstantTimeEq::ct_eq(s.as_bytes(), password.as_bytes()))),
            SecretKnown::Hash(hash) => self.check_hash(password, hash).await,
        };
        match checked {
            Ok(true) => {
                attempt.refund();
                self.verified.insert(cache_key, identity.name.clone());
                Ok(Authenticated { principal: Principal::User(identity), expires_at: None, presented: true })
            }
            Ok(false) => Err(AuthError::Invalid),
            Err(e) => {
                attempt.refund();
                Err(e)
            }
        }
    }

    /// A registry token (`AWS:<token>`, or a Bearer token): a MAC and an expiry, never
    /// throttled (nothing to guess, nothing costly to check). Only a Bearer token may name
    /// nobody (the token endpoint's anonymous answer).
    fn token(&self, token: &str, bearer: bool) -> Result<Authenticated, AuthError> {
        let now = self.now_secs();
        let claims = match self.tokens.get(token) {
            Some(claims) if now >= claims.expires_at => return Err(AuthError::Expired),
            Some(claims) => claims,
            None => {
                let claims = self.key.verify(token, now).map_err(|e| match e {
                    TokenError::Expired => AuthError::Expired,
                    TokenError::Invalid => AuthError::Invalid,
                })?;
                self.tokens.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        let expires_at = Some(claims.expires_at);
        if claims.principal.is_empty() {
            return match bearer {
                true => Ok(Authenticated { principal: Principal::Anonymous, expires_at, presented: true }),
                false => Err(AuthError::Invalid),
            };
        }
        // A principal removed from the config: its tokens stop here.
        let identity = self.identities().by_name(&claims.principal).ok_or(AuthError::Invalid)?;
        Ok(Authenticated { principal: Principal::User(identity), expires_at, presented: true })
    }

    /// One argon2 check, when a run is free: a bounded number run at once (they would starve
    /// every other request of the cores), a bounded number wait, and the rest are throttled.
    async fn check_hash(&self, secret: &str, hash: &str) -> Result<bool, AuthError> {
        use std::sync::atomic::Ordering;
        let waiting = self.password_queue.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self.password_queue.clone());
        if waiting >= self.max_password_queue {
            return Err(AuthError::Throttled(1));
        }
        let _run = self.password_checks.clone().acquire_owned().await.map_err(|_| AuthError::Throttled(1))?;
        let (secret, hash) = (secret.to_owned(), hash.to_owned());
        Ok(tokio::task::spawn_blocking(move || secrets::verify(&secret, &hash)).await.unwrap_or(false))
    }
}
