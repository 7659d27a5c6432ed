//! The lifecycle policy operations' wire shapes: put, get and delete a repository's policy,
//! and start and read a preview (whose protocol is [`crate::lifecycle::previews`]'s), with
//! ECR's exception names and output shapes.

use super::operations::names;
use super::EcrException;
use super::{ApiContext, ApiError, Input, Operation, Page};
use crate::lifecycle::previews::StartError;
use crate::lifecycle::{policy, Expiry};
use crate::oci::RepositoryName;
use serde_json::{json, Value};

/// Parses one of the lifecycle operations on `name`.
pub fn parse_operation(op: names::Lifecycle, input: &Input, name: RepositoryName) -> Result<Operation, ApiError> {
    Ok(match op {
        names::Lifecycle::PutLifecyclePolicy => {
            let text = policy_text(input, "lifecyclePolicyText")?
                .ok_or_else(|| ApiError::invalid("lifecyclePolicyText", "Member must not be null"))?;
            Operation::PutLifecyclePolicy(name, text)
        }
        names::Lifecycle::GetLifecyclePolicy => Operation::GetLifecyclePolicy(name),
        names::Lifecycle::DeleteLifecyclePolicy => Operation::DeleteLifecyclePolicy(name),
        names::Lifecycle::StartLifecyclePolicyPreview => {
            Operation::StartLifecyclePolicyPreview(name, policy_text(input, "lifecyclePolicyText")?)
        }
        names::Lifecycle::GetLifecyclePolicyPreview => {
            Operation::GetLifecyclePolicyPreview(name, PreviewQuery::parse(input)?)
        }
    })
}

/// A validated policy text from `member`.
pub fn policy_text(input: &Input, member: &str) -> Result<Option<String>, ApiError> {
    let Some(text) = input.str(member)? else { return Ok(None) };
    policy::parse(text).map_err(|e| ApiError::invalid("LifecyclePolicyText", e))?;
    Ok(Some(text.to_owned()))
}

/// `GetLifecyclePolicyPreview`'s request.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewQuery {
    /// Only these images (by digest or tag).
    pub images: Vec<(Option<String>, Option<String>)>,
    /// `TAGGED`, `UNTAGGED` or `ANY`.
    pub tag_status: Option<String>,
    /// The page.
    pub page: Page,
}

impl PreviewQuery {
    /// Reads the query members.
    pub fn parse(input: &Input) -> Result<Self, ApiError> {
        let mut images = Vec::new();
        if let Some(list) = input.list("imageIds")? {
            if list.is_empty() || list.len() > 100 {
                return Err(ApiError::invalid("imageIds", "Member must have length between 1 and 100"));
            }
            for id in list {
                let digest = id.get("imageDigest").and_then(Value::as_str).map(str::to_owned);
                let tag = id.get("imageTag").and_then(Value::as_str).map(str::to_owned);
                if digest.is_none() && tag.is_none() {
                    return Err(ApiError::invalid("imageIds", "each image id needs an imageDigest or an imageTag"));
                }
                images.push((digest, tag));
            }
        }
        let tag_status = match input.get("filter").and_then(|f| f.get("tagStatus")) {
            None => None,
            Some(v) => match v.as_str() {
                Some(s @ ("TAGGED" | "UNTAGGED" | "ANY")) => Some(s.to_owned()),
                _ => {
                    return Err(ApiError::invalid(
                        "tagStatus",
                        "Member must satisfy enum value set: [TAGGED, UNTAGGED, ANY]",
                    ))
                }
            },
        };
        let page = input.page(100)?;
        if !images.is_empty() && (page.after.is_some() || input.get("maxResults").is_some()) {
            return Err(ApiError::invalid("imageIds", "imageIds cannot be combined with maxResults or nextToken"));
        }
        Ok(Self { images, tag_status, page })
    }
}

fn not_found(ctx: &ApiContext<'_>, name: &RepositoryName) -> ApiError {
    ApiError::new(
        EcrException::LifecyclePolicyNotFound,
        format!(
            "Lifecycle policy does not exist for the repository with name '{name}' in the registry with id '{}'",
            ctx.registry_id
        ),
    )
}

/// `PutLifecyclePolicy`.
pub async fn put(ctx: &ApiContext<'_>, name: RepositoryName, text: String) -> Result<Value, ApiError> {
    ctx.registry.repository_settings(&name).await?.ok_or_else(|| super::repositories::not_found(ctx, &name))?;
    let t = text.clone();
    ctx.registry
        .update_repository(&name, move |s| {
            s.lifecycle_policy = Some(t.clone());
            Ok(())
        })
        .await?;
    Ok(json!({ "registryId": ctx.registry_id, "repositoryName": name.as_str(), "lifecyclePolicyText": text }))
}

/// `GetLifecyclePolicy`, or `DeleteLifecyclePolicy` with `delete`.
pub async fn get(ctx: &ApiContext<'_>, name: RepositoryName, delete: bool) -> Result<Value, ApiError> {
    let settings =
        ctx.registry.repository_settings(&name).await?.ok_or_else(|| super::repositories::not_found(ctx, &name))?;
    let text = settings.lifecycle_policy.ok_or_else(|| not_found(ctx, &name))?;
    if delete {
        ctx.registry
            .update_repository(&name, |s| {
                s.lifecycle_policy = None;
                Ok(())
            })
            .await?;
    }
    let mut out =
        json!({ "registryId": ctx.registry_id, "repositoryName": name.as_str(), "lifecyclePolicyText": text });
    if let Some(at) = settings.lifecycle_evaluated_at {
        out["lastEvaluatedAt"] = json!(at);
    }
    Ok(out)
}

/// `StartLifecyclePolicyPreview`: with `text`, or the stored policy.
pub async fn start_preview(
    ctx: &ApiContext<'_>,
    name: RepositoryName,
    text: Option<String>,
) -> Result<Value, ApiError> {
    let reg = ctx.registry;
    let settings = reg.repository_settings(&name).await?.ok_or_else(|| super::repositories::not_found(ctx, &name))?;
    let text = match text.or(settings.lifecycle_policy) {
        Some(t) => t,
        None => return Err(not_found(ctx, &name)),
    };
    let parsed = policy::parse(&text).map_err(|e| ApiError::invalid("LifecyclePolicyText", e))?;
    let status = match ctx.previews.run(reg, &name, text.clone(), &parsed).await {
        Ok(status) => status,
        Err(StartError::InProgress(name)) => return Err(in_progress(&name)),
        Err(StartError::Registry(e)) => return Err(e.into()),
    };
    Ok(json!({
        "registryId": ctx.registry_id, "repositoryName": name.as_str(), "lifecyclePolicyText": text,
        "status": status.as_str(),
    }))
}

fn in_progress(name: &RepositoryName) -> ApiError {
    ApiError::new(
        EcrException::LifecyclePolicyPreviewInProgress,
        format!("Previous lifecycle policy preview request has not completed for the repository with name '{name}'"),
    )
}

/// `GetLifecyclePolicyPreview`.
pub async fn get_preview(ctx: &ApiContext<'_>, name: RepositoryName, query: PreviewQuery) -> Result<Value, ApiError> {
    let reg = ctx.registry;
    reg.repository_settings(&name).await?.ok_or_else(|| super::repositories::not_found(ctx, &name))?;
    let none = || {
        ApiError::new(
            EcrException::LifecyclePolicyPreviewNotFound,
            format!(
                "There is no preview result for the repository with name '{name}' in the registry with id '{}'",
                ctx.registry_id
            ),
        )
    };
    let record = ctx.previews.last(&name).await?.ok_or_else(none)?;
    let status = record.status.as_str();
    let wanted = |e: &Expiry| {
        let by_id = query.images.is_empty()
            || query.images.iter().any(|(d, t)| {
                d.as_ref().is_none_or(|d| *d == e.digest.to_string()) && t.as_ref().is_none_or(|t| e.tags.contains(t))
            });
        let by_status = match query.tag_status.as_deref() {
            Some("TAGGED") => !e.tags.is_empty(),
            Some("UNTAGGED") => e.tags.is_empty(),
            _ => true,
        };
        by_id && by_status
    };
    let expiring = record.results.len();
    let matching: Vec<&Expiry> = record.results.iter().filter(|e| wanted(e)).collect();
    let total = matching.len();
    let start = query.page.after.as_deref().and_then(|a| a.parse::<usize>().ok()).unwrap_or(0).min(total);
    let end = start.saturating_add(query.page.max).min(total);
    let results: Vec<Value> = matching[start..end]
        .iter()
        .map(|e| {
            let mut r = json!({
                "imageDigest": e.digest.to_string(),
                "imagePushedAt": e.pushed_at_ms as f64 / 1000.0,
                "action": { "type": "EXPIRE" },
                "appliedRulePriority": e.rule_priority,
                "storageClass": "STANDARD",
            });
            if !e.tags.is_empty() {
                r["imageTags"] = json!(e.tags);
            }
            r
        })
        .collect();
    let mut out = json!({
        "registryId": ctx.registry_id,
        "repositoryName": name.as_str(),
        "lifecyclePolicyText": record.policy,
        "status": status,
        "previewResults": results,
        "summary": { "expiringImageTotalCount": expiring },
    });
    if end < total {
        out["nextToken"] = json!(super::next_token(&end.to_string()));
    }
    Ok(out)
}
