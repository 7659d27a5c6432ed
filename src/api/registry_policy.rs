//! The registry policy (`PutRegistryPolicy`, `GetRegistryPolicy`, `DeleteRegistryPolicy`): an
//! IAM resource policy on the whole registry, which in ECR may grant only
//! `ecr:ReplicateImage`, `ecr:BatchImportUpstreamImage` and `ecr:CreateRepository` (or
//! `ecr:*`); anything else is refused with ECR's `Invalid registry policy provided`. It is
//! stored for the replication destination side, which reads it when another account's
//! replicator pushes.

use super::EcrException;
use super::{ApiContext, ApiError, Input};
use crate::auth::policy::{Policy, PolicyKind};
use serde_json::{json, Value};

/// The actions a registry policy may grant.
pub const ALLOWED_ACTIONS: [&str; 4] =
    ["ecr:ReplicateImage", "ecr:BatchImportUpstreamImage", "ecr:CreateRepository", "ecr:*"];

/// A registry policy text from `policyText`, checked as ECR checks it.
pub fn parse(input: &Input) -> Result<String, ApiError> {
    let text = input.required_str("policyText")?;
    if text.is_empty() || text.chars().count() > 10240 {
        return Err(ApiError::invalid("policyText", "Member must have length less than or equal to 10240"));
    }
    let invalid = || ApiError::invalid("PolicyText", "Invalid registry policy provided");
    let policy = Policy::parse(text, PolicyKind::Resource).map_err(|_| invalid())?;
    if !policy.only_actions(&ALLOWED_ACTIONS) {
        return Err(invalid());
    }
    Ok(text.to_owned())
}

fn not_found(ctx: &ApiContext<'_>) -> ApiError {
    ApiError::new(
        EcrException::RegistryPolicyNotFound,
        format!("Registry policy does not exist in the registry with id '{}'", ctx.registry_id),
    )
}

/// `PutRegistryPolicy`.
pub async fn put(ctx: &ApiContext<'_>, text: String) -> Result<Value, ApiError> {
    ctx.replication.put_registry_policy(Some(&text)).await?;
    Ok(json!({ "registryId": ctx.registry_id, "policyText": text }))
}

/// `GetRegistryPolicy`, or `DeleteRegistryPolicy` with `delete`.
pub async fn get(ctx: &ApiContext<'_>, delete: bool) -> Result<Value, ApiError> {
    let text = ctx.replication.registry_policy().await?.ok_or_else(|| not_found(ctx))?;
    if delete {
        ctx.replication.put_registry_policy(None).await?;
    }
    Ok(json!({ "registryId": ctx.registry_id, "policyText": text }))
}
