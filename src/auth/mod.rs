//! Who is asking and what they may do: principals and credentials ([`authenticator`], [`token`],
//! [`sigv4`], [`secrets`]), the ECR action each request needs, the IAM policy language
//! ([`policy`]), and [`authorize`], the one decision every request passes before any handler
//! runs (read-only repositories, identity and repository policies, a replication's claim
//! against the registry policy). Also the checks of `[auth]` only this module can make
//! ([`check_config`]). Knows nothing of HTTP or of how storage is laid out.

pub mod authenticator;
pub mod authorizer;
pub mod operations;
pub mod policy;
pub mod secrets;
pub mod sigv4;
pub mod token;

use crate::oci::RepositoryName;

pub use authenticator::{Identity, Principal};
pub use operations::{Action, OperationName};

/// What `[auth]` says that only this module can check: every policy document parses (identity
/// policies, strictly) and every secret hash is an argon2id hash. Run after
/// [`crate::config::Config::validate`] wherever a config is taken (start, `config check`, SIGHUP).
pub fn check_config(cfg: &crate::config::AuthConfig) -> Result<(), crate::config::ConfigError> {
    use crate::config::{policy_text, ConfigError, SecretKnown};
    for p in &cfg.principals {
        if let Some(SecretKnown::Hash(h)) = p.resolved_secret()? {
            if secrets::parse_hash(&h).is_err() {
                return Err(ConfigError::Invalid {
                    key: "auth.principals.secret_access_key_hash",
                    message: format!("principal {}: not an argon2id hash as `ferry auth new-key` prints it", p.name),
                });
            }
        }
        for entry in &p.policies {
            policy::Policy::parse(&policy_text(entry)?, policy::PolicyKind::Identity).map_err(|e| {
                ConfigError::Invalid { key: "auth.principals.policies", message: format!("principal {}: {e}", p.name) }
            })?;
        }
    }
    for entry in &cfg.anonymous.policies {
        policy::Policy::parse(&policy_text(entry)?, policy::PolicyKind::Identity)
            .map_err(|e| ConfigError::Invalid { key: "auth.anonymous.policies", message: e.to_string() })?;
    }
    Ok(())
}

impl Action {
    /// What the right to do this is when another registry replicates into this one, if a
    /// replication may do it at all: every step of a push (and the HEADs a pusher makes on the
    /// repository it pushes to, to skip what is there) is `ecr:ReplicateImage`; creating the
    /// repository is `ecr:CreateRepository`. Nothing else (reads of content, listings,
    /// deletes, a mount's source) is ever a replication's: the registry policy cannot grant it.
    pub fn as_replication(self) -> Option<Self> {
        match self {
            Self::BatchGetImage
            | Self::BatchCheckLayerAvailability
            | Self::InitiateLayerUpload
            | Self::UploadLayerPart
            | Self::CompleteLayerUpload
            | Self::PutImage
            | Self::ReplicateImage => Some(Self::ReplicateImage),
            Self::CreateRepository => Some(Self::CreateRepository),
            _ => None,
        }
    }

    /// Whether the action pushes or deletes images (what a read-only repository, a
    /// pull-through cache, refuses; deleting a whole cache repository is allowed, as in ECR).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::InitiateLayerUpload
                | Self::UploadLayerPart
                | Self::CompleteLayerUpload
                | Self::PutImage
                | Self::BatchDeleteImage
                | Self::ReplicateImage
        )
    }
}

/// One thing a request needs to do: an action, on a repository or on the registry as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The action.
    pub action: Action,
    /// The repository it acts on; `None` for registry-wide actions.
    pub repository: Option<RepositoryName>,
}

impl Access {
    /// `action` on `repository`.
    pub fn on(action: Action, repository: &RepositoryName) -> Self {
        Self { action, repository: Some(repository.clone()) }
    }

    /// `action` on the registry as a whole.
    pub fn registry(action: Action) -> Self {
        Self { action, repository: None }
    }
}

/// Why a request may not proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A write to a read-only repository (a pull-through cache), and why it is read-only.
    ReadOnly(String),
    /// No policy allows it, or one denies it.
    NotAuthorized {
        /// The action refused.
        action: Action,
        /// The resource's ARN.
        resource: String,
    },
}

/// The policies a decision draws on, when access control is on.
pub struct Policies<'a> {
    /// The registry's account id and region, for ARNs.
    pub registry_id: &'a str,
    /// The region.
    pub region: &'a str,
    /// Identity policies of callers without credentials.
    pub anonymous: &'a [policy::Policy],
    /// A repository's own policy, if it has one.
    pub repository: &'a dyn Fn(&RepositoryName) -> Option<std::sync::Arc<policy::Policy>>,
    /// The registry policy, read only for a request that claims to be a replication: it
    /// answers `ecr:ReplicateImage` and `ecr:CreateRepository` on the repository replicated
    /// into, and nothing else.
    pub registry: Option<&'a policy::Policy>,
}

/// What the decision found a request to be, besides allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// A replication from another registry: its principal may replicate into every repository
    /// it writes (a registry, identity or repository policy allows it `ecr:ReplicateImage`).
    /// What it pushes is not replicated on, and a repository it creates takes the
    /// `REPLICATION` template.
    pub replication: bool,
}

/// `arn:aws:ecr:<region>:<account>:repository/<name>`.
pub fn repository_arn(region: &str, account: &str, name: &RepositoryName) -> String {
    format!("arn:aws:ecr:{region}:{account}:repository/{name}")
}

/// The one authorization decision: may `principal` do every one of `accesses`? Writes to a
/// read-only repository are refused whatever the policies say. With `policies` (access control
/// on), each access is decided by the caller's identity policies (or the anonymous ones) and
/// the repository's policy: an explicit deny wins, else an allow in either is enough.
///
/// `claims_replication` says the request calls itself a replication (the `Ferry-Replication`
/// header on a push step). The claim only ever narrows what the principal may do to what it
/// could do anyway: it is honoured only when the principal may `ecr:ReplicateImage` into every
/// repository the request writes (by the registry policy, or its identity or the repository's
/// policy); then each push step is allowed by that right or by its own action, and an explicit
/// deny of either, in an identity or repository policy, still refuses it. Anything else the
/// request needs (a mount's source above all) is decided as for any request: the registry
/// policy never answers it. A claim that is not honoured is ignored (the request is an
/// ordinary push, replicated on as any other). With access control off, the claim stands.
pub fn authorize(
    principal: &Principal,
    accesses: &[Access],
    read_only: &dyn Fn(&RepositoryName) -> Option<String>,
    policies: Option<&Policies<'_>>,
    context: &policy::Context,
    claims_replication: bool,
) -> Result<Verdict, Refusal> {
    for access in accesses {
        if let (true, Some(name)) = (access.action.writes(), &access.repository) {
            if let Some(reason) = read_only(name) {
                return Err(Refusal::ReadOnly(reason));
            }
        }
    }
    let Some(policies) = policies else { return Ok(Verdict { replication: claims_replication }) };
    let caller = principal.caller();
    let identity: Vec<&policy::Policy> = match principal {
        Principal::Anonymous => policies.anonymous.iter().collect(),
        Principal::User(id) => id.policies.iter().collect(),
    };
    let resource_of = |name: Option<&RepositoryName>| match name {
        Some(name) => repository_arn(policies.region, policies.registry_id, name),
        None => "*".to_owned(),
    };
    let evaluate = |action: Action, name: Option<&RepositoryName>, with_registry: bool| {
        let resource = resource_of(name);
        let repository_policy = name.and_then(|n| (policies.repository)(n));
        let mut applicable = identity.clone();
        if let Some(p) = &repository_policy {
            applicable.push(p);
        }
        if let (true, Some(registry)) = (with_registry, policies.registry) {
            applicable.push(registry);
        }
        let request = policy::Request { caller: &caller, action: action.as_str(), resource: &resource, context };
        policy::evaluate(&request, &applicable)
    };
    let replicated: Vec<&Access> = accesses.iter().filter(|a| a.action.as_replication().is_some()).collect();
    let replication = claims_replication
        && !replicated.is_empty()
        && replicated.iter().all(|a| evaluate(Action::ReplicateImage, a.repository.as_ref(), true).allowed());
    for access in accesses {
        let name = access.repository.as_ref();
        let refuse = |action: Action| Err(Refusal::NotAuthorized { action, resource: resource_of(name) });
        let own = evaluate(access.action, name, false);
        match (replication, access.action.as_replication()) {
            (true, Some(right)) => {
                if matches!(own, policy::Decision::ExplicitDeny(_)) {
                    return refuse(access.action);
                }
                match evaluate(right, name, true) {
                    policy::Decision::Allow(_) => {}
                    policy::Decision::ExplicitDeny(_) => return refuse(right),
                    policy::Decision::ImplicitDeny if own.allowed() => {}
                    policy::Decision::ImplicitDeny => return refuse(right),
                }
            }
            _ => {
                if !own.allowed() {
                    return refuse(access.action);
                }
            }
        }
    }
    Ok(Verdict { replication })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_read_only_repositories_are_denied_reads_are_not() {
        let cache = RepositoryName::parse("docker-hub/library/nginx").unwrap();
        let own = RepositoryName::parse("team/app").unwrap();
        let read_only = |n: &RepositoryName| n.as_str().starts_with("docker-hub/").then(|| format!("{n} is a cache"));
        let who = Principal::Anonymous;
        let ctx = policy::Context {
            source_ip: "127.0.0.1".parse().unwrap(),
            secure_transport: false,
            current_time: std::time::SystemTime::now(),
        };
        let check = |accesses: &[Access]| authorize(&who, accesses, &read_only, None, &ctx, false);
        assert!(check(&[Access::on(Action::BatchGetImage, &cache)]).is_ok());
        assert!(check(&[Access::on(Action::PutImage, &own)]).is_ok());
        let denied = check(&[Access::on(Action::PutImage, &cache)]).unwrap_err();
        assert!(matches!(denied, Refusal::ReadOnly(m) if m.contains("cache")));
        // A mount reads its source and writes its target: either may deny.
        let mount = [Access::on(Action::InitiateLayerUpload, &cache), Access::on(Action::GetDownloadUrlForLayer, &own)];
        assert!(check(&mount).is_err());
        assert!(check(&[Access::registry(Action::DescribeRepositories)]).is_ok());
        // With access control on and nothing granted, anonymous may do nothing.
        let none = |_: &RepositoryName| None;
        let policies = Policies {
            registry_id: "123456789012",
            region: "us-east-1",
            anonymous: &[],
            repository: &none,
            registry: None,
        };
        let refused =
            authorize(&who, &[Access::on(Action::BatchGetImage, &own)], &read_only, Some(&policies), &ctx, false);
        assert_eq!(
            refused,
            Err(Refusal::NotAuthorized {
                action: Action::BatchGetImage,
                resource: "arn:aws:ecr:us-east-1:123456789012:repository/team/app".into()
            })
        );
        assert_eq!(Action::BatchDeleteImage.as_str(), "ecr:BatchDeleteImage");
    }

    /// The seams where a replication meets access control: the claim narrows, never widens.
    #[test]
    fn a_replication_claim_only_ever_narrows() {
        use policy::{Policy, PolicyKind};
        let ctx = policy::Context {
            source_ip: "127.0.0.1".parse().unwrap(),
            secure_transport: false,
            current_time: std::time::SystemTime::now(),
        };
        let identity = |text: &str| Policy::parse(text, PolicyKind::Identity).unwrap();
        let user = |name: &str, account: &str, policies: Vec<Policy>| {
            Principal::User(std::sync::Arc::new(Identity::for_tests(name, account, policies)))
        };
        let everything_but_put = user(
            "ordinary",
            "123456789012",
            vec![identity(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"},{"Effect":"Deny","Action":"ecr:PutImage","Resource":"*"}]}"#,
            )],
        );
        let admin = user(
            "admin",
            "123456789012",
            vec![identity(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}"#,
            )],
        );
        let pusher = user(
            "pusher",
            "123456789012",
            vec![identity(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:PutImage","ecr:InitiateLayerUpload","ecr:UploadLayerPart","ecr:CompleteLayerUpload","ecr:BatchCheckLayerAvailability","ecr:BatchGetImage"],"Resource":"*"}]}"#,
            )],
        );
        let replicator = user("replicator", "210987654321", vec![]);
        let registry = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::210987654321:root"},"Action":"ecr:*","Resource":"*"}]}"#,
            PolicyKind::Resource,
        )
        .unwrap();
        let prod_denies_everyone = std::sync::Arc::new(
            Policy::parse(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"ecr:*"}]}"#,
                PolicyKind::Resource,
            )
            .unwrap(),
        );
        let name = |s: &str| RepositoryName::parse(s).unwrap();
        let repository = |n: &RepositoryName| (n.as_str() == "team-a/prod").then(|| prod_denies_everyone.clone());
        let policies = Policies {
            registry_id: "123456789012",
            region: "us-east-1",
            anonymous: &[],
            repository: &repository,
            registry: Some(&registry),
        };
        let decide = |who: &Principal, accesses: &[Access], claims: bool| {
            authorize(who, accesses, &|_| None, Some(&policies), &ctx, claims)
        };
        let put = |repo: &str| [Access::on(Action::PutImage, &name(repo))];
        let refused_action = |r: Result<Verdict, Refusal>| match r {
            Err(Refusal::NotAuthorized { action, .. }) => Some(action),
            other => panic!("expected a refusal, got {other:?}"),
        };

        // An identity Deny of PutImage holds whether or not the request claims replication.
        assert_eq!(refused_action(decide(&everything_but_put, &put("team-a/app"), false)), Some(Action::PutImage));
        assert_eq!(refused_action(decide(&everything_but_put, &put("team-a/app"), true)), Some(Action::PutImage));
        // A repository policy's Deny holds against the claim too, for an admin and a replicator.
        assert!(decide(&admin, &put("team-a/prod"), true).is_err());
        assert!(decide(&replicator, &put("team-a/prod"), true).is_err());
        // A principal that may not replicate gains nothing by claiming it, and is no replication:
        // its push is allowed as a push and replicated on like any other.
        assert_eq!(decide(&pusher, &put("team-a/app"), true), Ok(Verdict { replication: false }));
        // The foreign replicator, under a registry policy granting ecr:*: its push steps are
        // replications, and nothing else it does is decided by that policy.
        assert_eq!(decide(&replicator, &put("team-a/app"), true), Ok(Verdict { replication: true }));
        assert_eq!(refused_action(decide(&replicator, &put("team-a/app"), false)), Some(Action::PutImage));
        let head = [Access::on(Action::BatchCheckLayerAvailability, &name("team-a/app"))];
        assert!(decide(&replicator, &head, true).is_ok());
        let mount = [
            Access::on(Action::InitiateLayerUpload, &name("public/leak")),
            Access::on(Action::CompleteLayerUpload, &name("public/leak")),
            Access::on(Action::GetDownloadUrlForLayer, &name("private/secret")),
        ];
        assert_eq!(refused_action(decide(&replicator, &mount, true)), Some(Action::GetDownloadUrlForLayer));
        for action in
            [Action::GetDownloadUrlForLayer, Action::ListImages, Action::BatchDeleteImage, Action::DeleteRepository]
        {
            let access = [Access::on(action, &name("private/secret"))];
            assert_eq!(refused_action(decide(&replicator, &access, true)), Some(action), "{action:?}");
            assert_eq!(refused_action(decide(&replicator, &access, false)), Some(action), "{action:?}");
        }
        let create = [Access::on(Action::CreateRepository, &name("team-b/new"))];
        assert_eq!(decide(&replicator, &create, true), Ok(Verdict { replication: true }));
        assert!(decide(&replicator, &create, false).is_err());
        // Without the registry policy, the replicator is nobody here.
        let without = Policies { registry: None, ..policies };
        assert!(authorize(&replicator, &put("team-a/app"), &|_| None, Some(&without), &ctx, true).is_err());
    }
}
