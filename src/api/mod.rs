//! The ECR-compatible control API (AWS JSON 1.1 on `POST /` with `X-Amz-Target`), so boto3
//! and the aws CLI work with nothing but `--endpoint-url`. Parse, then dispatch: the target
//! and body become one typed [`Operation`] with its request validated by ECR's limits; each
//! operation says which ECR actions it needs on which resources (authorized by the same policy
//! engine as the registry API) and runs as a thin call into the registry and the features'
//! stores. The operations are listed once, in [`operations`]. Errors are `{"__type","message"}`
//! ([`ApiError`], of an [`EcrException`]). Knows nothing of HTTP framing or storage layout.

mod account;
mod backfill;
mod error;
mod images;
mod layers;
mod lifecycle;
mod pull_through;
mod registry_policy;
mod replication;
mod repositories;
mod templates;
#[cfg(test)]
pub(crate) mod testing;

pub use layers::{LAYER_PARTS_AT_ONCE, MAX_PART_BODY};

pub use crate::auth::operations;
pub use crate::auth::OperationName;
pub use error::{ApiError, EcrException};

use crate::auth::authenticator::Authenticator;
use crate::auth::{Access, Action, Principal};
use crate::oci::RepositoryName;
use crate::registry::repositories::{RepositorySettings, ResourceTag, TagMutability};
use crate::registry::Registry;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The service's target prefix: `X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Op>`.
pub const TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";

/// What an operation runs with.
pub struct ApiContext<'a> {
    /// The registry.
    pub registry: &'a Registry,
    /// Replication's records (configuration, registry policy, statuses, backfills).
    pub replication: &'a crate::replication::store::ReplicationStore,
    /// The pull-through rules created through the API, and the proxy they are in force in.
    pub rules: &'a crate::proxy::rules::RuleStore,
    /// ECR's registry-wide settings (scanning configuration, account settings).
    pub account: &'a crate::registry::settings::AccountStore,
    /// Lifecycle policy previews.
    pub previews: &'a crate::lifecycle::previews::Previews,
    /// Who signed the request.
    pub principal: &'a Principal,
    /// Access control, when on (it issues registry passwords).
    pub authenticator: Option<&'a Authenticator>,
    /// The account id in ARNs and answers.
    pub registry_id: &'a str,
    /// The region.
    pub region: &'a str,
    /// The registry API's URL (`proxyEndpoint`).
    pub proxy_endpoint: String,
    /// Seconds since the epoch, now.
    pub now: u64,
    /// How long a registry password lasts when access control is off (it is not checked then).
    pub open_token_ttl: u64,
    /// Whether the caller may see a repository in a listing.
    pub visible: &'a (dyn Fn(&RepositoryName) -> bool + Sync),
    /// Whether the caller could still `ecr:SetRepositoryPolicy` on the repository with this
    /// policy text in force.
    pub keeps_control: &'a (dyn Fn(&RepositoryName, &str) -> bool + Sync),
}

/// One operation, with its validated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `GetAuthorizationToken`.
    GetAuthorizationToken,
    /// `DescribeRegistry`.
    DescribeRegistry,
    /// `CreateRepository`.
    CreateRepository(RepositoryName, RepositorySettings),
    /// `DescribeRepositories`: by name, or every repository the caller may see (a page).
    DescribeRepositories(Option<Vec<RepositoryName>>, Page),
    /// `DeleteRepository`, with `force`.
    DeleteRepository(RepositoryName, bool),
    /// `PutImageTagMutability`.
    PutImageTagMutability(RepositoryName, TagMutability, Vec<String>),
    /// `SetRepositoryPolicy` (the text, checked; `force`).
    SetRepositoryPolicy(RepositoryName, String, bool),
    /// `GetRepositoryPolicy`.
    GetRepositoryPolicy(RepositoryName),
    /// `DeleteRepositoryPolicy`.
    DeleteRepositoryPolicy(RepositoryName),
    /// `TagResource`.
    TagResource(RepositoryName, Vec<ResourceTag>),
    /// `UntagResource`.
    UntagResource(RepositoryName, Vec<String>),
    /// `ListTagsForResource`.
    ListTagsForResource(RepositoryName),
    /// `CreateRepositoryCreationTemplate`.
    CreateRepositoryCreationTemplate(templates::TemplateInput),
    /// `DescribeRepositoryCreationTemplates`: by prefix, or a page of all.
    DescribeRepositoryCreationTemplates(Option<Vec<String>>, Page),
    /// `UpdateRepositoryCreationTemplate`.
    UpdateRepositoryCreationTemplate(templates::TemplateInput),
    /// `DeleteRepositoryCreationTemplate` (the prefix).
    DeleteRepositoryCreationTemplate(String),
    /// `PutLifecyclePolicy` (the text, validated).
    PutLifecyclePolicy(RepositoryName, String),
    /// `GetLifecyclePolicy`.
    GetLifecyclePolicy(RepositoryName),
    /// `DeleteLifecyclePolicy`.
    DeleteLifecyclePolicy(RepositoryName),
    /// `StartLifecyclePolicyPreview` (a text to try, else the stored policy).
    StartLifecyclePolicyPreview(RepositoryName, Option<String>),
    /// `GetLifecyclePolicyPreview`.
    GetLifecyclePolicyPreview(RepositoryName, lifecycle::PreviewQuery),
    /// `PutReplicationConfiguration` (validated).
    PutReplicationConfiguration(crate::replication::store::ReplicationConfiguration),
    /// `PutRegistryPolicy` (the text, checked).
    PutRegistryPolicy(String),
    /// `GetRegistryPolicy`.
    GetRegistryPolicy,
    /// `DeleteRegistryPolicy`.
    DeleteRegistryPolicy,
    /// `DescribeImageReplicationStatus`: a repository and an image's digest or tag.
    DescribeImageReplicationStatus(RepositoryName, images::ImageIdentifier),
    /// `StartReplicationBackfill` to a destination.
    StartReplicationBackfill(crate::replication::store::ReplicationDestination),
    /// `StopReplicationBackfill`.
    StopReplicationBackfill(uuid::Uuid),
    /// `DescribeReplicationBackfillResults`: which, a result filter, a page.
    DescribeReplicationBackfillResults(uuid::Uuid, Option<crate::replication::store::ReplicationState>, Page),
    /// `ListReplicationBackfills`.
    ListReplicationBackfills(Page),
    /// `ListImages`, `DescribeImages`, `BatchGetImage`, `BatchDeleteImage`, `PutImage`.
    Images(images::ImagesOp),
    /// `BatchCheckLayerAvailability`, `GetDownloadUrlForLayer`, `InitiateLayerUpload`,
    /// `UploadLayerPart`, `CompleteLayerUpload`.
    Layers(layers::LayersOp),
    /// The pull-through cache rule operations.
    PullThrough(pull_through::PullThroughOp),
    /// Scanning configuration and account settings.
    Settings(account::SettingsOp),
}

/// `maxResults` and `nextToken`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// How many at most (1 to 1000; 100 by default).
    pub max: usize,
    /// Where the previous page ended.
    pub after: Option<String>,
}

/// Milliseconds since the epoch as ECR's JSON timestamps carry them (seconds, fractional).
pub(crate) fn epoch_seconds(ms: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // ms since the epoch are far below 2^52
    let s = ms as f64 / 1000.0;
    s
}

/// One page of `items` from the offset a previous page's token names, and the token of the
/// next page when there is one.
/// A `nextToken` that [`Input::page`] reads back as `after`: where a listing's page ended.
pub(crate) fn next_token(after: &str) -> String {
    STANDARD.encode(after)
}

pub(crate) fn paged<T: Clone>(items: &[T], page: &Page) -> Result<(Vec<T>, Option<String>), ApiError> {
    let start: usize = match &page.after {
        None => 0,
        Some(t) => {
            t.parse().map_err(|_| ApiError::invalid("nextToken", "Member is not a token this registry issued"))?
        }
    };
    let start = start.min(items.len());
    let end = start.saturating_add(page.max).min(items.len());
    let next = (end < items.len()).then(|| next_token(&end.to_string()));
    Ok((items.get(start..end).unwrap_or_default().to_vec(), next))
}

/// A request body's members, read with ECR's types and limits.
pub struct Input(pub Map<String, Value>);

impl Input {
    /// A member that is present and not null.
    pub fn get(&self, member: &str) -> Option<&Value> {
        self.0.get(member).filter(|v| !v.is_null())
    }

    /// A string member, if present.
    pub fn str(&self, member: &str) -> Result<Option<&str>, ApiError> {
        match self.get(member) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| ApiError::invalid(member, "Member must be a string")),
        }
    }

    /// A string member that must be present.
    pub fn required_str(&self, member: &str) -> Result<&str, ApiError> {
        self.str(member)?.ok_or_else(|| ApiError::invalid(member, "Member must not be null"))
    }

    /// A list member, if present.
    pub fn list(&self, member: &str) -> Result<Option<&Vec<Value>>, ApiError> {
        match self.get(member) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| ApiError::invalid(member, "Member must be a list")),
        }
    }

    /// A boolean member (false when absent).
    pub fn flag(&self, member: &str) -> Result<bool, ApiError> {
        match self.get(member) {
            None => Ok(false),
            Some(v) => v.as_bool().ok_or_else(|| ApiError::invalid(member, "Member must be a boolean")),
        }
    }

    /// `maxResults` (within `1..=limit`) and `nextToken`.
    pub fn page(&self, limit: u64) -> Result<Page, ApiError> {
        let max = match self.get("maxResults") {
            None => 100.min(limit),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=limit).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "maxResults",
                        format!("Member must have value between 1 and {limit}"),
                    ))
                }
            },
        };
        let after = match self.str("nextToken")? {
            None => None,
            Some(t) => Some(
                STANDARD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::invalid("nextToken", "Member is not a token this registry issued"))?,
            ),
        };
        Ok(Page { max: usize::try_from(max).unwrap_or(100), after })
    }
}

impl Operation {
    /// Parses `X-Amz-Target` and the JSON body into an operation, checking every member.
    pub fn parse(
        target: &str,
        body: &[u8],
        registry_id: &str,
        region: &str,
    ) -> Result<(OperationName, Self), ApiError> {
        let Some(op) = target.strip_prefix(TARGET_PREFIX) else {
            return Err(ApiError::new(EcrException::UnknownOperation, format!("{target} is not an ECR operation")));
        };
        let Some(op_name) = OperationName::parse(op) else {
            return Err(ApiError::new(
                EcrException::UnknownOperation,
                format!("The operation {op} is not supported by this registry"),
            ));
        };
        let input = Input(parse_body(body)?);
        if let Some(id) = input.str("registryId")? {
            if id != registry_id {
                registry_id_member(&Value::String(id.to_owned()), "registryId")?;
                return Err(ApiError::invalid("registryId", format!("this registry's id is {registry_id}")));
            }
        }
        let name = || repositories::repository_name(&input, "repositoryName");
        let arn = || {
            let arn = input.required_str("resourceArn")?;
            let prefix = format!("arn:aws:ecr:{region}:{registry_id}:repository/");
            arn.strip_prefix(&prefix).and_then(|n| RepositoryName::parse(n).ok()).ok_or_else(|| {
                ApiError::invalid(
                    "resourceArn",
                    format!("Member must be a repository ARN of this registry ({prefix}<name>)"),
                )
            })
        };
        use operations::names::{Repositories as R, Templates as T};
        let parsed = match op_name {
            OperationName::Replication(n) => replication::parse_operation(n, &input),
            OperationName::Backfill(n) => backfill::parse_operation(n, &input),
            OperationName::Images(n) => images::parse_operation(n, &input).map(Self::Images),
            OperationName::Layers(n) => layers::parse_operation(n, &input).map(Self::Layers),
            OperationName::PullThrough(n) => pull_through::parse_operation(n, &input).map(Self::PullThrough),
            OperationName::Settings(n) => account::parse_operation(n, &input).map(Self::Settings),
            OperationName::Lifecycle(n) => lifecycle::parse_operation(n, &input, name()?),
            OperationName::Repositories(R::GetAuthorizationToken) => {
                registry_ids(&input)?;
                Ok(Self::GetAuthorizationToken)
            }
            OperationName::Repositories(R::DescribeRegistry) => Ok(Self::DescribeRegistry),
            OperationName::Repositories(R::CreateRepository) => {
                let (name, settings) = repositories::parse_create(&input)?;
                Ok(Self::CreateRepository(name, settings))
            }
            OperationName::Repositories(R::DescribeRepositories) => {
                let (names, page) = repositories::parse_describe(&input)?;
                Ok(Self::DescribeRepositories(names, page))
            }
            OperationName::Repositories(R::DeleteRepository) => {
                Ok(Self::DeleteRepository(name()?, input.flag("force")?))
            }
            OperationName::Repositories(R::PutImageTagMutability) => {
                let name = name()?;
                let (m, filters) = repositories::mutability(&input, true)?.unwrap_or_default();
                Ok(Self::PutImageTagMutability(name, m, filters))
            }
            OperationName::Repositories(R::SetRepositoryPolicy) => {
                let name = name()?;
                let force = input.flag("force")?;
                Ok(Self::SetRepositoryPolicy(name, repositories::policy_text(&input)?, force))
            }
            OperationName::Repositories(R::GetRepositoryPolicy) => Ok(Self::GetRepositoryPolicy(name()?)),
            OperationName::Repositories(R::DeleteRepositoryPolicy) => Ok(Self::DeleteRepositoryPolicy(name()?)),
            OperationName::Repositories(R::TagResource) => {
                let name = arn()?;
                let tags = repositories::tags(&input, "tags")?
                    .ok_or_else(|| ApiError::invalid("tags", "Member must not be null"))?;
                Ok(Self::TagResource(name, tags))
            }
            OperationName::Repositories(R::UntagResource) => {
                let name = arn()?;
                let keys =
                    input.list("tagKeys")?.ok_or_else(|| ApiError::invalid("tagKeys", "Member must not be null"))?;
                let keys = keys
                    .iter()
                    .map(|k| {
                        k.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| ApiError::invalid("tagKeys", "Member must be a list of strings"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Self::UntagResource(name, keys))
            }
            OperationName::Repositories(R::ListTagsForResource) => Ok(Self::ListTagsForResource(arn()?)),
            OperationName::Templates(T::CreateRepositoryCreationTemplate) => {
                Ok(Self::CreateRepositoryCreationTemplate(templates::TemplateInput::parse(&input, true)?))
            }
            OperationName::Templates(T::DescribeRepositoryCreationTemplates) => {
                let (prefixes, page) = templates::parse_describe(&input)?;
                Ok(Self::DescribeRepositoryCreationTemplates(prefixes, page))
            }
            OperationName::Templates(T::UpdateRepositoryCreationTemplate) => {
                Ok(Self::UpdateRepositoryCreationTemplate(templates::TemplateInput::parse(&input, false)?))
            }
            OperationName::Templates(T::DeleteRepositoryCreationTemplate) => {
                Ok(Self::DeleteRepositoryCreationTemplate(templates::prefix(input.required_str("prefix")?, "prefix")?))
            }
        };
        parsed.map(|op| (op_name, op))
    }

    /// The ECR actions it needs, on which resources.
    pub fn accesses(&self) -> Vec<Access> {
        match self {
            Self::GetAuthorizationToken => vec![Access::registry(Action::GetAuthorizationToken)],
            Self::DescribeRegistry => vec![Access::registry(Action::DescribeRegistry)],
            Self::CreateRepository(n, _) => vec![Access::on(Action::CreateRepository, n)],
            Self::DescribeRepositories(Some(names), _) => {
                names.iter().map(|n| Access::on(Action::DescribeRepositories, n)).collect()
            }
            // A listing shows each caller the repositories it may describe.
            Self::DescribeRepositories(None, _) => vec![],
            Self::DeleteRepository(n, _) => vec![Access::on(Action::DeleteRepository, n)],
            Self::PutImageTagMutability(n, ..) => vec![Access::on(Action::PutImageTagMutability, n)],
            Self::SetRepositoryPolicy(n, ..) => vec![Access::on(Action::SetRepositoryPolicy, n)],
            Self::GetRepositoryPolicy(n) => vec![Access::on(Action::GetRepositoryPolicy, n)],
            Self::DeleteRepositoryPolicy(n) => vec![Access::on(Action::DeleteRepositoryPolicy, n)],
            Self::TagResource(n, _) => vec![Access::on(Action::TagResource, n)],
            Self::UntagResource(n, _) => vec![Access::on(Action::UntagResource, n)],
            Self::ListTagsForResource(n) => vec![Access::on(Action::ListTagsForResource, n)],
            Self::CreateRepositoryCreationTemplate(_) => {
                vec![Access::registry(Action::CreateRepositoryCreationTemplate)]
            }
            Self::DescribeRepositoryCreationTemplates(..) => {
                vec![Access::registry(Action::DescribeRepositoryCreationTemplates)]
            }
            Self::UpdateRepositoryCreationTemplate(_) => {
                vec![Access::registry(Action::UpdateRepositoryCreationTemplate)]
            }
            Self::DeleteRepositoryCreationTemplate(_) => {
                vec![Access::registry(Action::DeleteRepositoryCreationTemplate)]
            }
            Self::PutLifecyclePolicy(n, _) => vec![Access::on(Action::PutLifecyclePolicy, n)],
            Self::GetLifecyclePolicy(n) => vec![Access::on(Action::GetLifecyclePolicy, n)],
            Self::DeleteLifecyclePolicy(n) => vec![Access::on(Action::DeleteLifecyclePolicy, n)],
            Self::StartLifecyclePolicyPreview(n, _) => vec![Access::on(Action::StartLifecyclePolicyPreview, n)],
            Self::GetLifecyclePolicyPreview(n, _) => vec![Access::on(Action::GetLifecyclePolicyPreview, n)],
            Self::PutReplicationConfiguration(_) => vec![Access::registry(Action::PutReplicationConfiguration)],
            Self::PutRegistryPolicy(_) => vec![Access::registry(Action::PutRegistryPolicy)],
            Self::GetRegistryPolicy => vec![Access::registry(Action::GetRegistryPolicy)],
            Self::DeleteRegistryPolicy => vec![Access::registry(Action::DeleteRegistryPolicy)],
            Self::DescribeImageReplicationStatus(n, _) => vec![Access::on(Action::DescribeImageReplicationStatus, n)],
            Self::StartReplicationBackfill(_) => vec![Access::registry(Action::StartReplicationBackfill)],
            Self::StopReplicationBackfill(_) => vec![Access::registry(Action::StopReplicationBackfill)],
            Self::DescribeReplicationBackfillResults(..) => {
                vec![Access::registry(Action::DescribeReplicationBackfillResults)]
            }
            Self::ListReplicationBackfills(_) => vec![Access::registry(Action::ListReplicationBackfills)],
            Self::Images(op) => op.accesses(),
            Self::Layers(op) => op.accesses(),
            Self::PullThrough(op) => op.accesses(),
            Self::Settings(op) => op.accesses(),
        }
    }

    /// Runs the operation.
    pub async fn run(self, ctx: &ApiContext<'_>) -> Result<Value, ApiError> {
        let reg = ctx.registry;
        let existing = |name: &RepositoryName| {
            let name = name.clone();
            async move { reg.repository_settings(&name).await?.ok_or_else(|| repositories::not_found(ctx, &name)) }
        };
        match self {
            Self::GetAuthorizationToken => Ok(authorization_token(ctx)),
            Self::DescribeRegistry => replication::describe_registry(ctx).await,
            Self::PutReplicationConfiguration(config) => replication::put(ctx, config).await,
            Self::PutRegistryPolicy(text) => registry_policy::put(ctx, text).await,
            Self::GetRegistryPolicy => registry_policy::get(ctx, false).await,
            Self::DeleteRegistryPolicy => registry_policy::get(ctx, true).await,
            Self::DescribeImageReplicationStatus(name, image) => replication::image_status(ctx, &name, &image).await,
            Self::StartReplicationBackfill(d) => backfill::start(ctx, d).await,
            Self::StopReplicationBackfill(id) => backfill::stop(ctx, id).await,
            Self::DescribeReplicationBackfillResults(id, filter, page) => {
                backfill::describe(ctx, id, filter, &page).await
            }
            Self::ListReplicationBackfills(page) => backfill::list(ctx, &page).await,
            Self::Images(op) => images::run(ctx, op).await,
            Self::Layers(op) => layers::run(ctx, op).await,
            Self::PullThrough(op) => pull_through::run(ctx, op).await,
            Self::Settings(op) => account::run(ctx, op).await,
            Self::CreateRepository(name, settings) => {
                let created = reg.create_repository(&name, settings).await?;
                Ok(json!({ "repository": repositories::describe(ctx, &name, &created) }))
            }
            Self::DescribeRepositories(Some(names), _) => {
                let mut out = Vec::new();
                for name in names {
                    out.push(repositories::describe(ctx, &name, &existing(&name).await?));
                }
                Ok(json!({ "repositories": out }))
            }
            Self::DescribeRepositories(None, page) => repositories::list(ctx, page).await,
            Self::DeleteRepository(name, force) => {
                existing(&name).await?;
                let settings = reg.delete_repository(&name, force).await?;
                Ok(json!({ "repository": repositories::describe(ctx, &name, &settings) }))
            }
            Self::PutImageTagMutability(name, m, filters) => {
                existing(&name).await?;
                repositories::put_tag_mutability(ctx, &name, m, filters).await
            }
            Self::SetRepositoryPolicy(name, text, force) => {
                existing(&name).await?;
                // ECR's guard against lock-outs: a policy that would stop the caller from
                // setting the policy again needs `force`.
                if !force && !(ctx.keeps_control)(&name, &text) {
                    return Err(ApiError::invalid(
                        "PolicyText",
                        "The policy would prevent you from setting the repository policy again; set force to apply it anyway",
                    ));
                }
                let t = text.clone();
                reg.update_repository(&name, move |s| {
                    s.policy = Some(t.clone());
                    Ok(())
                })
                .await?;
                Ok(json!({ "registryId": ctx.registry_id, "repositoryName": name.as_str(), "policyText": text }))
            }
            Self::GetRepositoryPolicy(name) => {
                let policy = existing(&name).await?.policy.ok_or_else(|| repositories::no_policy(ctx, &name))?;
                Ok(json!({ "registryId": ctx.registry_id, "repositoryName": name.as_str(), "policyText": policy }))
            }
            Self::DeleteRepositoryPolicy(name) => {
                let policy = existing(&name).await?.policy.ok_or_else(|| repositories::no_policy(ctx, &name))?;
                reg.update_repository(&name, |s| {
                    s.policy = None;
                    Ok(())
                })
                .await?;
                Ok(json!({ "registryId": ctx.registry_id, "repositoryName": name.as_str(), "policyText": policy }))
            }
            Self::TagResource(name, tags) => {
                existing(&name).await?;
                repositories::tag(ctx, &name, tags).await
            }
            Self::UntagResource(name, keys) => untag(ctx, name, keys).await,
            Self::ListTagsForResource(name) => Ok(json!({ "tags": existing(&name).await?.tags })),
            Self::CreateRepositoryCreationTemplate(input) => templates::create(ctx, input).await,
            Self::DescribeRepositoryCreationTemplates(prefixes, page) => templates::list(ctx, prefixes, page).await,
            Self::UpdateRepositoryCreationTemplate(input) => templates::update(ctx, input).await,
            Self::DeleteRepositoryCreationTemplate(prefix) => templates::delete(ctx, prefix).await,
            Self::PutLifecyclePolicy(name, text) => lifecycle::put(ctx, name, text).await,
            Self::GetLifecyclePolicy(name) => lifecycle::get(ctx, name, false).await,
            Self::DeleteLifecyclePolicy(name) => lifecycle::get(ctx, name, true).await,
            Self::StartLifecyclePolicyPreview(name, text) => lifecycle::start_preview(ctx, name, text).await,
            Self::GetLifecyclePolicyPreview(name, query) => lifecycle::get_preview(ctx, name, query).await,
        }
    }
}

/// `UntagResource`: removes the resource tags with these keys.
async fn untag(ctx: &ApiContext<'_>, name: RepositoryName, keys: Vec<String>) -> Result<Value, ApiError> {
    ctx.registry.repository_settings(&name).await?.ok_or_else(|| repositories::not_found(ctx, &name))?;
    ctx.registry
        .update_repository(&name, |s| {
            s.tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
        .await?;
    Ok(json!({}))
}

/// A registry password as `aws ecr get-login-password` expects it: base64 of `AWS:<token>`.
fn authorization_token(ctx: &ApiContext<'_>) -> Value {
    let (token, expires_at) = match (ctx.authenticator, ctx.principal) {
        (Some(auth), Principal::User(identity)) => auth.issue_token(identity),
        // Access control off: the registry takes any password.
        _ => ("open-registry".to_owned(), ctx.now.saturating_add(ctx.open_token_ttl)),
    };
    json!({
        "authorizationData": [{
            "authorizationToken": STANDARD.encode(format!("AWS:{token}")),
            "expiresAt": expires_at,
            "proxyEndpoint": ctx.proxy_endpoint,
        }]
    })
}

/// The request body: a JSON object (`{}` when the operation has no input).
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::new(EcrException::Serialization, "the request body is not a JSON object")),
    }
}

/// `registryIds` of `GetAuthorizationToken`: 1 to 10 ids of 12 digits, when given.
fn registry_ids(input: &Input) -> Result<(), ApiError> {
    if let Some(ids) = input.list("registryIds")? {
        if ids.is_empty() || ids.len() > 10 {
            return Err(ApiError::invalid("registryIds", "Member must have length between 1 and 10"));
        }
        for id in ids {
            registry_id_member(id, "registryIds")?;
        }
    }
    Ok(())
}

/// A `registryId`: 12 digits.
fn registry_id_member(value: &Value, member: &str) -> Result<String, ApiError> {
    match value.as_str() {
        Some(s) if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(s.to_owned()),
        _ => Err(ApiError::invalid(member, "Member must satisfy regular expression pattern: [0-9]{12}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_inputs() {
        let op = |t: &str, b: &str| {
            Operation::parse(&format!("{TARGET_PREFIX}{t}"), b.as_bytes(), "123456789012", "us-east-1")
                .map(|(_, op)| op)
        };
        assert_eq!(op("GetAuthorizationToken", "{}").unwrap(), Operation::GetAuthorizationToken);
        assert_eq!(op("GetAuthorizationToken", "").unwrap(), Operation::GetAuthorizationToken);
        let named = Operation::parse(
            &format!("{TARGET_PREFIX}GetAuthorizationToken"),
            br#"{"registryIds":["123456789012"]}"#,
            "123456789012",
            "us-east-1",
        );
        assert_eq!(named.unwrap().0.as_str(), "GetAuthorizationToken");
        assert_eq!(
            op("GetAuthorizationToken", r#"{"registryIds":["12345"]}"#).unwrap_err().kind,
            EcrException::InvalidParameter
        );
        assert_eq!(
            op("GetAuthorizationToken", r#"{"registryIds":[]}"#).unwrap_err().kind,
            EcrException::InvalidParameter
        );
        assert_eq!(op("GetAuthorizationToken", "[1]").unwrap_err().kind, EcrException::Serialization);
        assert_eq!(op("LaunchRockets", "{}").unwrap_err().kind, EcrException::UnknownOperation);
        assert_eq!(
            Operation::parse("Other.GetAuthorizationToken", b"{}", "123456789012", "us-east-1").unwrap_err().kind,
            EcrException::UnknownOperation
        );
        assert_eq!(
            op("CreateRepository", r#"{"repositoryName":"a"}"#).unwrap_err().kind,
            EcrException::InvalidParameter
        );
        assert_eq!(
            op("CreateRepository", r#"{"repositoryName":"Team/App"}"#).unwrap_err().kind,
            EcrException::InvalidParameter
        );
        assert!(op("CreateRepository", r#"{"repositoryName":"team/app","imageTagMutability":"IMMUTABLE"}"#).is_ok());
        let no_filters = r#"{"repositoryName":"team/app","imageTagMutability":"IMMUTABLE_WITH_EXCLUSION"}"#;
        assert_eq!(op("CreateRepository", no_filters).unwrap_err().kind, EcrException::InvalidParameter);
        let many: Vec<String> = (0..51).map(|i| format!(r#"{{"Key":"k{i}","Value":"v"}}"#)).collect();
        let body = format!(r#"{{"repositoryName":"team/app","tags":[{}]}}"#, many.join(","));
        assert_eq!(op("CreateRepository", &body).unwrap_err().kind, EcrException::TooManyTags);
        let bad_tag = r#"{"repositoryName":"team/app","tags":[{"Key":"","Value":"v"}]}"#;
        assert_eq!(op("CreateRepository", bad_tag).unwrap_err().kind, EcrException::InvalidTagParameter);
        let bad_policy = r#"{"repositoryName":"team/app","policyText":"{\"Version\":\"2012-10-17\"}"}"#;
        let e = op("SetRepositoryPolicy", bad_policy).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Invalid repository policy provided'"
        );
        let foreign = r#"{"resourceArn":"arn:aws:ecr:us-east-1:999999999999:repository/x1","tags":[]}"#;
        assert_eq!(op("TagResource", foreign).unwrap_err().kind, EcrException::InvalidParameter);
        assert_eq!(op("DescribeRepositories", r#"{"maxResults":0}"#).unwrap_err().kind, EcrException::InvalidParameter);
        assert_eq!(Operation::GetAuthorizationToken.accesses()[0].action, Action::GetAuthorizationToken);
        let template = |b: &str| op("CreateRepositoryCreationTemplate", b).map_err(|e| e.kind);
        assert!(template(r#"{"prefix":"ROOT","appliedFor":["CREATE_ON_PUSH"]}"#).is_ok());
        assert!(template(r#"{"prefix":"team-a/","appliedFor":["CREATE_ON_PUSH","REPLICATION"]}"#).is_ok());
        assert_eq!(template(r#"{"prefix":"team-a"}"#).unwrap_err(), EcrException::InvalidParameter);
        assert_eq!(
            template(r#"{"prefix":"Team","appliedFor":["CREATE_ON_PUSH"]}"#).unwrap_err(),
            EcrException::InvalidParameter
        );
        assert_eq!(
            template(r#"{"prefix":"root","appliedFor":["ON_PULL"]}"#).unwrap_err(),
            EcrException::InvalidParameter
        );
        let bad_policy = r#"{"prefix":"a","appliedFor":["CREATE_ON_PUSH"],"repositoryPolicy":"{}"}"#;
        assert_eq!(template(bad_policy).unwrap_err(), EcrException::InvalidParameter);
        let update = op("UpdateRepositoryCreationTemplate", r#"{"prefix":"a/"}"#).unwrap();
        assert_eq!(update.accesses()[0].action, Action::UpdateRepositoryCreationTemplate);
    }
}
