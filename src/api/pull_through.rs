//! ECR's pull-through cache rule operations: `CreatePullThroughCacheRule`,
//! `DescribePullThroughCacheRules`, `UpdatePullThroughCacheRule`, `DeletePullThroughCacheRule`
//! and `ValidatePullThroughCacheRule`, with ECR's limits and exceptions. Rules created here
//! are stored by the registry and in force on every replica; the config file's rules are
//! listed beside them but changed only in the file. `credentialArn` names one of
//! `[[pull_through_secrets]]` (Ferry has no Secrets Manager). This module speaks ECR; the
//! registry and the proxy do the work.

use super::operations::names;
use super::EcrException;
use super::{epoch_seconds, paged, ApiContext, ApiError, Input, Page};
use crate::auth::{Access, Action};
use crate::oci::RepositoryName;
use crate::proxy::RuleRecord;
use serde_json::{json, Value};

/// ECR's quota: pull-through cache rules per registry.
const MAX_RULES: usize = 50;

const UPSTREAM_REGISTRIES: [&str; 9] = [
    "ecr",
    "ecr-public",
    "quay",
    "k8s",
    "docker-hub",
    "github-container-registry",
    "azure-container-registry",
    "gitlab-container-registry",
    "chainguard",
];

/// One parsed pull-through rule operation.
#[derive(Debug, Clone, PartialEq)]
pub enum PullThroughOp {
    /// `CreatePullThroughCacheRule`: the rule to store (times filled in when it runs).
    Create(RuleRecord),
    /// `DescribePullThroughCacheRules`: these prefixes, or a page of all.
    Describe(Option<Vec<String>>, Page),
    /// `UpdatePullThroughCacheRule`: prefix, `credentialArn`, `customRoleArn`.
    Update(String, Option<String>, Option<String>),
    /// `DeletePullThroughCacheRule`.
    Delete(String),
    /// `ValidatePullThroughCacheRule`.
    Validate(String),
}

impl PullThroughOp {
    /// What it needs (rules are registry-wide resources).
    pub fn accesses(&self) -> Vec<Access> {
        let action = match self {
            Self::Create(_) => Action::CreatePullThroughCacheRule,
            Self::Describe(..) => Action::DescribePullThroughCacheRules,
            Self::Update(..) => Action::UpdatePullThroughCacheRule,
            Self::Delete(_) => Action::DeletePullThroughCacheRule,
            Self::Validate(_) => Action::ValidatePullThroughCacheRule,
        };
        vec![Access::registry(action)]
    }
}

/// `ecrRepositoryPrefix`: 2–30 characters of repository-name syntax, a trailing `/` implied.
fn prefix(value: Option<&str>, member: &str) -> Result<String, ApiError> {
    let p = value.ok_or_else(|| ApiError::invalid(member, "Member must not be null"))?;
    if !(2..=30).contains(&p.len()) {
        return Err(ApiError::invalid(member, "Member must have length between 2 and 30"));
    }
    if p == "ROOT" {
        return Err(ApiError::invalid(
            member,
            "Ferry serves every name through one upstream only from its config file: set mirror_default on a [[pull_through]] rule",
        ));
    }
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    RepositoryName::parse(trimmed).map_err(|_| {
        ApiError::invalid(
            member,
            "Member must satisfy regular expression pattern: ^([a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*\\/?|ROOT)$",
        )
    })?;
    Ok(trimmed.to_owned())
}

fn credential_arn(input: &Input) -> Result<Option<String>, ApiError> {
    let Some(arn) = input.str("credentialArn")? else { return Ok(None) };
    let valid = (50..=612).contains(&arn.len())
        && arn.starts_with("arn:aws")
        && arn.split_once(":secret:").is_some_and(|(head, name)| {
            head.contains(":secretsmanager:")
                && name.strip_prefix("ecr-pullthroughcache/").is_some_and(|rest| {
                    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
                })
        });
    if !valid {
        return Err(ApiError::invalid(
            "credentialArn",
            "Member must satisfy regular expression pattern: ^arn:aws(-\\w+)*:secretsmanager:[a-zA-Z0-9-:]+:secret:ecr\\-pullthroughcache\\/[a-zA-Z0-9\\/_+=.@-]+$",
        ));
    }
    Ok(Some(arn.to_owned()))
}

fn custom_role_arn(input: &Input) -> Result<Option<String>, ApiError> {
    let role = input.str("customRoleArn")?;
    if role.is_some_and(|r| r.len() > 2048) {
        return Err(ApiError::invalid("customRoleArn", "Member must have length less than or equal to 2048"));
    }
    Ok(role.map(str::to_owned))
}

/// The upstream's base URL: as given with a scheme (`http://` is Ferry's, for registries on
/// a private network), else `https://`.
fn upstream_base(url: &str) -> Result<String, ApiError> {
    let base = if url.starts_with("https://") || url.starts_with("http://") {
        url.trim_end_matches('/').to_owned()
    } else {
        format!("https://{}", url.trim_end_matches('/'))
    };
    // A registry's base: a host (and port), nothing else (no credentials, path or query),
    // parsed as the HTTP client will parse it.
    let host_ok = crate::config::UpstreamAddress::parse(&base).is_ok();
    if !host_ok || url.len() > 2048 {
        return Err(ApiError::invalid(
            "upstreamRegistryUrl",
            "Member must be a registry host such as registry-1.docker.io",
        ));
    }
    Ok(base)
}

/// Parses one of the pull-through rule operations.
pub fn parse_operation(op: names::PullThrough, input: &Input) -> Result<PullThroughOp, ApiError> {
    let member = "ecrRepositoryPrefix";
    Ok(match op {
        names::PullThrough::CreatePullThroughCacheRule => {
            let ecr_repository_prefix = prefix(input.str(member)?, member)?;
            let upstream_registry_url = input.required_str("upstreamRegistryUrl")?.to_owned();
            let upstream = upstream_base(&upstream_registry_url)?;
            let upstream_registry = input.str("upstreamRegistry")?.map(str::to_owned);
            if let Some(r) = &upstream_registry {
                if !UPSTREAM_REGISTRIES.contains(&r.as_str()) {
                    return Err(ApiError::new(
                        EcrException::UnsupportedUpstreamRegistry,
                        format!("The upstream registry '{r}' is not supported"),
                    ));
                }
            }
            match input.str("upstreamRepositoryPrefix")? {
                None | Some("ROOT") => {}
                Some(_) => {
                    return Err(ApiError::invalid(
                        "upstreamRepositoryPrefix",
                        "Ferry maps a rule's repositories to the upstream's names unchanged: only ROOT is supported",
                    ))
                }
            }
            PullThroughOp::Create(RuleRecord {
                ecr_repository_prefix,
                upstream_registry_url,
                upstream,
                upstream_registry,
                credential_arn: credential_arn(input)?,
                custom_role_arn: custom_role_arn(input)?,
                created_at_ms: 0,
                updated_at_ms: 0,
            })
        }
        names::PullThrough::DescribePullThroughCacheRules => {
            let prefixes = match input.list("ecrRepositoryPrefixes")? {
                None => None,
                Some(list) => {
                    if list.is_empty() || list.len() > 100 {
                        return Err(ApiError::invalid(
                            "ecrRepositoryPrefixes",
                            "Member must have length between 1 and 100",
                        ));
                    }
                    let mut out = Vec::new();
                    for p in list {
                        out.push(prefix(p.as_str(), "ecrRepositoryPrefixes.member")?);
                    }
                    Some(out)
                }
            };
            if prefixes.is_some() && (input.get("nextToken").is_some() || input.get("maxResults").is_some()) {
                return Err(ApiError::invalid(
                    "ecrRepositoryPrefixes",
                    "ecrRepositoryPrefixes cannot be combined with maxResults or nextToken",
                ));
            }
            PullThroughOp::Describe(prefixes, input.page(1000)?)
        }
        names::PullThrough::UpdatePullThroughCacheRule => {
            PullThroughOp::Update(prefix(input.str(member)?, member)?, credential_arn(input)?, custom_role_arn(input)?)
        }
        names::PullThrough::DeletePullThroughCacheRule => PullThroughOp::Delete(prefix(input.str(member)?, member)?),
        names::PullThrough::ValidatePullThroughCacheRule => {
            PullThroughOp::Validate(prefix(input.str(member)?, member)?)
        }
    })
}

/// Runs one.
pub async fn run(ctx: &ApiContext<'_>, op: PullThroughOp) -> Result<Value, ApiError> {
    match op {
        PullThroughOp::Create(record) => create(ctx, record).await,
        PullThroughOp::Describe(prefixes, page) => describe(ctx, prefixes, &page).await,
        PullThroughOp::Update(prefix, credential, role) => update(ctx, &prefix, credential, role).await,
        PullThroughOp::Delete(prefix) => delete(ctx, &prefix).await,
        PullThroughOp::Validate(prefix) => validate(ctx, &prefix).await,
    }
}

fn not_found(ctx: &ApiContext<'_>, prefix: &str) -> ApiError {
    ApiError::new(
        EcrException::PullThroughCacheRuleNotFound,
        format!(
            "The pull through cache rule with prefix '{prefix}' does not exist in the registry with id '{}'",
            ctx.registry_id
        ),
    )
}

fn in_config(ctx: &ApiContext<'_>, prefix: &str) -> bool {
    ctx.rules.proxy().configured().iter().any(|r| r.prefix.as_str() == prefix)
}

fn config_only(prefix: &str) -> ApiError {
    ApiError::invalid(
        "ecrRepositoryPrefix",
        format!("the rule for '{prefix}' is defined in Ferry's config file ([[pull_through]]): change it there"),
    )
}

/// Whether one prefix lies inside the other (or they are equal): a name could match both.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x == y || x.strip_prefix(y).is_some_and(|rest| rest.starts_with('/'));
    inside(a, b) || inside(b, a)
}

fn check_secret(ctx: &ApiContext<'_>, record: &RuleRecord) -> Result<(), ApiError> {
    match record.secret_name() {
        Some(name) if ctx.rules.proxy().secret(name).is_none() => Err(ApiError::new(
            EcrException::SecretNotFound,
            format!("The secret '{name}' was not found: add it to [[pull_through_secrets]] in Ferry's config"),
        )),
        _ => Ok(()),
    }
}

/// A rule as ECR shows it; the config file's have no times.
fn shown(ctx: &ApiContext<'_>, r: &RuleRecord) -> Value {
    let mut v = json!({
        "ecrRepositoryPrefix": r.ecr_repository_prefix,
        "upstreamRegistryUrl": r.upstream_registry_url,
        "registryId": ctx.registry_id,
        "upstreamRepositoryPrefix": "ROOT",
    });
    if r.created_at_ms > 0 {
        v["createdAt"] = json!(epoch_seconds(r.created_at_ms));
        v["updatedAt"] = json!(epoch_seconds(r.updated_at_ms));
    }
    for (member, value) in [
        ("upstreamRegistry", &r.upstream_registry),
        ("credentialArn", &r.credential_arn),
        ("customRoleArn", &r.custom_role_arn),
    ] {
        if let Some(value) = value {
            v[member] = json!(value);
        }
    }
    v
}

/// Every rule: the config file's, then the stored ones.
async fn all_rules(ctx: &ApiContext<'_>) -> Result<Vec<RuleRecord>, ApiError> {
    let mut all: Vec<RuleRecord> = ctx
        .rules
        .proxy()
        .configured()
        .iter()
        .map(|r| RuleRecord {
            ecr_repository_prefix: r.prefix.to_string(),
            upstream_registry_url: r.config.upstream.clone(),
            upstream: r.config.upstream.clone(),
            upstream_registry: None,
            credential_arn: None,
            custom_role_arn: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .collect();
    all.extend(ctx.rules.stored().await?);
    Ok(all)
}

async fn create(ctx: &ApiContext<'_>, mut record: RuleRecord) -> Result<Value, ApiError> {
    if !ctx.rules.proxy().allows_upstream(&record.upstream) {
        return Err(ApiError::new(
            EcrException::UnsupportedUpstreamRegistry,
            format!(
                "The upstream registry {} is not allowed here: add its host to pull_through_api.allowed_upstreams in Ferry's config",
                record.upstream_registry_url
            ),
        ));
    }
    check_secret(ctx, &record)?;
    let now = ctx.registry.clock().now_ms();
    record.created_at_ms = now;
    record.updated_at_ms = now;
    let prefix = record.ecr_repository_prefix.clone();
    let configured: Vec<String> = ctx.rules.proxy().configured().iter().map(|r| r.prefix.to_string()).collect();
    let new = record.clone();
    ctx.rules
        .update(|rules| {
            let taken = configured.iter().chain(rules.iter().map(|r| &r.ecr_repository_prefix));
            for existing in taken {
                if existing == &prefix {
                    return Err(ApiError::new(
                        EcrException::PullThroughCacheRuleAlreadyExists,
                        format!(
                            "A pull through cache rule with prefix '{prefix}' already exists in the registry with id '{}'",
                            ctx.registry_id
                        ),
                    ));
                }
                if overlaps(existing, &prefix) {
                    return Err(ApiError::invalid(
                        "ecrRepositoryPrefix",
                        format!("'{prefix}' overlaps the prefix '{existing}' of another rule: a name would match both"),
                    ));
                }
            }
            if rules.len().saturating_add(configured.len()) >= MAX_RULES {
                return Err(ApiError::new(
                    EcrException::LimitExceeded,
                    format!("The registry already has the most pull through cache rules allowed ({MAX_RULES})"),
                ));
            }
            rules.push(new.clone());
            Ok(())
        })
        .await?;
    let mut out = shown(ctx, &record);
    if let Some(o) = out.as_object_mut() {
        o.remove("updatedAt");
    }
    Ok(out)
}

async fn describe(ctx: &ApiContext<'_>, prefixes: Option<Vec<String>>, page: &Page) -> Result<Value, ApiError> {
    let all = all_rules(ctx).await?;
    let Some(prefixes) = prefixes else {
        let shown_all: Vec<Value> = all.iter().map(|r| shown(ctx, r)).collect();
        let (rules, next) = paged(&shown_all, page)?;
        let mut out = json!({ "pullThroughCacheRules": rules });
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
        return Ok(out);
    };
    let mut out = Vec::new();
    for p in prefixes {
        let rule = all.iter().find(|r| r.ecr_repository_prefix == p).ok_or_else(|| not_found(ctx, &p))?;
        out.push(shown(ctx, rule));
    }
    Ok(json!({ "pullThroughCacheRules": out }))
}

async fn update(
    ctx: &ApiContext<'_>,
    prefix: &str,
    credential: Option<String>,
    role: Option<String>,
) -> Result<Value, ApiError> {
    if in_config(ctx, prefix) {
        return Err(config_only(prefix));
    }
    let probe = RuleRecord { credential_arn: credential.clone(), ..placeholder(prefix) };
    check_secret(ctx, &probe)?;
    let now = ctx.registry.clock().now_ms();
    let updated = ctx
        .rules
        .update(|rules| {
            let rule =
                rules.iter_mut().find(|r| r.ecr_repository_prefix == prefix).ok_or_else(|| not_found(ctx, prefix))?;
            rule.credential_arn.clone_from(&credential);
            rule.custom_role_arn.clone_from(&role);
            rule.updated_at_ms = now;
            Ok::<_, ApiError>(rule.clone())
        })
        .await?;
    let mut out = shown(ctx, &updated);
    if let Some(o) = out.as_object_mut() {
        for gone in ["createdAt", "upstreamRegistryUrl", "upstreamRegistry"] {
            o.remove(gone);
        }
    }
    Ok(out)
}

fn placeholder(prefix: &str) -> RuleRecord {
    RuleRecord {
        ecr_repository_prefix: prefix.to_owned(),
        upstream_registry_url: String::new(),
        upstream: String::new(),
        upstream_registry: None,
        credential_arn: None,
        custom_role_arn: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// Removes the rule; its cached repositories stay, as ordinary repositories (as in ECR).
async fn delete(ctx: &ApiContext<'_>, prefix: &str) -> Result<Value, ApiError> {
    if in_config(ctx, prefix) {
        return Err(config_only(prefix));
    }
    let removed = ctx
        .rules
        .update(|rules| {
            let at =
                rules.iter().position(|r| r.ecr_repository_prefix == prefix).ok_or_else(|| not_found(ctx, prefix))?;
            Ok::<_, ApiError>(rules.remove(at))
        })
        .await?;
    let mut out = shown(ctx, &removed);
    if let Some(o) = out.as_object_mut() {
        for gone in ["updatedAt", "upstreamRegistry"] {
            o.remove(gone);
        }
    }
    Ok(out)
}

/// Asks the upstream's `/v2/` with the rule's credentials.
async fn validate(ctx: &ApiContext<'_>, prefix: &str) -> Result<Value, ApiError> {
    let rule = ctx
        .rules
        .proxy()
        .rules()
        .into_iter()
        .find(|r| r.prefix.as_str() == prefix)
        .ok_or_else(|| not_found(ctx, prefix))?;
    let record = all_rules(ctx).await?.into_iter().find(|r| r.ecr_repository_prefix == prefix);
    let mut out = record.map_or_else(|| shown(ctx, &placeholder(prefix)), |r| shown(ctx, &r));
    if let Some(o) = out.as_object_mut() {
        for gone in ["createdAt", "updatedAt", "upstreamRegistry"] {
            o.remove(gone);
        }
    }
    match rule.upstream.check().await {
        Ok(()) => out["isValid"] = json!(true),
        Err(e) => {
            out["isValid"] = json!(false);
            out["failure"] = json!(e.to_string());
        }
    }
    Ok(out)
}
