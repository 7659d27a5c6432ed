//! `[auth]`: who may do what. Principals and their identity policies live here (reviewable,
//! the same on every replica, reloaded on SIGHUP); secrets only as argon2id hashes. Plain data:
//! the policy language and the hash format are `auth`'s to check (`auth::check_config`).

use super::units::HumanDuration;
use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require credentials and policies. Default `false`: the embedded default stays open (on
    /// loopback only; see `allow_anonymous_writes`).
    pub enabled: bool,
    /// The 12-digit account id in every ARN Ferry prints. Default `"000000000000"`.
    pub registry_id: String,
    /// The region in ARNs, the SigV4 scope and `proxyEndpoint`. Default `"us-east-1"`.
    pub region: String,
    /// How long a registry password (`GetAuthorizationToken`) is accepted. Default `"12h"`.
    pub token_ttl: HumanDuration,
    /// The registry's public URL, for `WWW-Authenticate` and `proxyEndpoint`. Default `""`
    /// (the address of the request).
    pub public_url: String,
    /// Wrong secrets one client address may send for one access key per minute before its
    /// further attempts with that key get 429 (reserved before each check, so parallel guesses
    /// count too). Other keys from the same address, credentials verified in the last five
    /// minutes and registry tokens are not held back. Default `20`.
    pub max_failures_per_minute: u32,
    /// argon2 password checks run at once; more wait in a queue. Default `0`: the number of
    /// cores.
    pub password_checks_at_once: usize,
    /// Password checks that may wait for a run; past it, 429 with `Retry-After: 1`. Default `64`.
    pub password_check_queue: usize,
    /// The challenge a request without credentials gets: `"basic"` (ECR's), `"bearer"` (Docker
    /// Hub's token flow, through `/v2/token`, which hands anonymous clients a token too), or
    /// `"auto"`: bearer when `[auth.anonymous]` has policies (docker only pulls anonymously, and
    /// a Docker daemon only uses a mirror without credentials, through the token flow), else
    /// basic. Default `"auto"`.
    pub challenge: Challenge,
    /// With auth disabled, Ferry refuses to listen on a non-loopback address unless this is
    /// `true` (anyone reaching it could push and delete). Default `false`.
    pub allow_anonymous_writes: bool,
    /// `[[auth.principals]]`: the identities.
    pub principals: Vec<PrincipalConfig>,
    /// `[auth.anonymous]`: what a request without credentials may do.
    pub anonymous: AnonymousConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            registry_id: "000000000000".into(),
            region: "us-east-1".into(),
            token_ttl: HumanDuration(Duration::from_secs(12 * 3600)),
            public_url: String::new(),
            max_failures_per_minute: 20,
            password_checks_at_once: 0,
            password_check_queue: 64,
            challenge: Challenge::Auto,
            allow_anonymous_writes: false,
            principals: Vec::new(),
            anonymous: AnonymousConfig::default(),
        }
    }
}

/// `auth.challenge`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Challenge {
    /// Bearer when anonymous policies exist, else Basic.
    #[default]
    Auto,
    /// `WWW-Authenticate: Basic`, as ECR answers.
    Basic,
    /// `WWW-Authenticate: Bearer` with Ferry's token endpoint as the realm.
    Bearer,
}

/// `[[auth.principals]]`: one identity (an IAM user of the registry's account, or with
/// `account` set, a principal of another account, such as a replicating registry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Its name: `arn:aws:iam::<account>:user/<name>`. Required.
    pub name: String,
    /// The account it belongs to. Default `""`: the registry's own.
    pub account: String,
    /// Its access key id (AWS style: 16 to 128 letters and digits). Required.
    pub access_key_id: String,
    /// The argon2id hash of its secret access key (`ferry auth new-key` prints one): enough
    /// for `docker login` with the key pair. Printed as `<redacted>`.
    pub secret_access_key_hash: super::Secret,
    /// Or a file holding the secret itself (a mounted secret): needed to verify SigV4
    /// signatures on the ECR API (`aws ecr get-login-password`), since a hash cannot be.
    /// Default `""`.
    pub secret_access_key_file: String,
    /// Identity policies: IAM JSON documents, inline (starting with `{`) or file paths.
    pub policies: Vec<String>,
}

/// `[auth.anonymous]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnonymousConfig {
    /// Identity policies for requests without credentials; none by default (nothing allowed).
    pub policies: Vec<String>,
}

/// How a principal's secret is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKnown {
    /// Only as an argon2id hash.
    Hash(String),
    /// The secret itself (from a file).
    Secret(String),
}

impl PrincipalConfig {
    /// The secret from `secret_access_key_file`, else the hash from `secret_access_key_hash`.
    pub fn resolved_secret(&self) -> Result<Option<SecretKnown>, ConfigError> {
        if !self.secret_access_key_file.is_empty() {
            let none = super::Secret::default();
            let secret =
                super::secret::resolve(&none, &self.secret_access_key_file, "auth.principals.secret_access_key_file")?;
            return Ok(secret.map(SecretKnown::Secret));
        }
        Ok(self.secret_access_key_hash.is_set().then(|| SecretKnown::Hash(self.secret_access_key_hash.0.clone())))
    }
}

/// A policy entry's text: inline JSON, or the file it names.
pub fn policy_text(entry: &str) -> Result<String, ConfigError> {
    if entry.trim_start().starts_with('{') {
        return Ok(entry.to_owned());
    }
    std::fs::read_to_string(entry).map_err(|e| ConfigError::Invalid {
        key: "auth.principals.policies",
        message: format!("cannot read {entry:?}: {e}"),
    })
}

impl AuthConfig {
    /// Checks ids, names, that each principal has a secret or a hash, and that every policy
    /// document can be read (what they say is `auth::check_config`'s to check).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let twelve_digits = |s: &str| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit());
        if !twelve_digits(&self.registry_id) {
            return invalid(
                "auth.registry_id",
                format!("{:?} must be 12 digits, like an AWS account id", self.registry_id),
            );
        }
        if self.region.len() < 2
            || !self.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("auth.region", format!("{:?} is not a region such as \"us-east-1\"", self.region));
        }
        if self.password_check_queue == 0 {
            return invalid("auth.password_check_queue", "must be at least 1".into());
        }
        if self.token_ttl.0.is_zero() {
            return invalid("auth.token_ttl", "must be more than 0s".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for p in &self.principals {
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
            if !name_ok {
                return invalid(
                    "auth.principals.name",
                    format!("{:?} must be 1-64 letters, digits or +=,.@_-", p.name),
                );
            }
            if !names.insert(p.name.as_str()) {
                return invalid("auth.principals.name", format!("{:?} is used twice", p.name));
            }
            if !p.account.is_empty() && !twelve_digits(&p.account) {
                return invalid("auth.principals.account", format!("{:?} must be 12 digits", p.account));
            }
            let key_ok = (16..=128).contains(&p.access_key_id.len())
                && p.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !key_ok {
                return invalid(
                    "auth.principals.access_key_id",
                    format!("principal {}: an access key id is 16 to 128 letters and digits", p.name),
                );
            }
            if !keys.insert(p.access_key_id.as_str()) {
                return invalid(
                    "auth.principals.access_key_id",
                    format!("principal {}: the key id is used twice", p.name),
                );
            }
            // The hash's own format and the policies' grammar are `auth::check_config`'s.
            match p.resolved_secret()? {
                Some(SecretKnown::Hash(h)) if h.starts_with("$argon2id$") => {}
                Some(SecretKnown::Secret(s)) if !s.is_empty() => {}
                _ => {
                    return invalid(
                        "auth.principals.secret_access_key_hash",
                        format!(
                            "principal {}: give the argon2id hash `ferry auth new-key` prints (never the secret itself), or secret_access_key_file",
                            p.name
                        ),
                    )
                }
            }
            for entry in &p.policies {
                policy_text(entry)?;
            }
        }
        for entry in &self.anonymous.policies {
            policy_text(entry)?;
        }
        Ok(())
    }
}
