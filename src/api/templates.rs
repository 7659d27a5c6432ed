//! Repository creation templates on the ECR API: `Create`, `Describe`, `Update` and
//! `DeleteRepositoryCreationTemplate(s)`, with ECR's patterns, limits and exception names.
//! Storage and matching belong to [`crate::registry::templates`].

use super::repositories::{merge_tags, mutability, policy_member, tags};
use super::EcrException;
use super::{ApiContext, ApiError, Input, Page};
use crate::registry::repositories::{ResourceTag, TagMutability};
use crate::registry::templates::{canonical_prefix, AppliedFor, CreationTemplate, MAX_TEMPLATES, ROOT};
use serde_json::{json, Value};

/// A template request's members; those absent leave a template as it is on update.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TemplateInput {
    /// `ROOT` or a namespace prefix, without the trailing `/`.
    pub prefix: String,
    description: Option<String>,
    encryption: Option<(String, Option<String>)>,
    resource_tags: Option<Vec<ResourceTag>>,
    mutability: Option<(TagMutability, Vec<String>)>,
    repository_policy: Option<String>,
    lifecycle_policy: Option<String>,
    applied_for: Option<Vec<AppliedFor>>,
    custom_role_arn: Option<String>,
}

impl TemplateInput {
    /// Reads and checks a create or update request (`appliedFor` required on create).
    pub fn parse(input: &Input, creating: bool) -> Result<Self, ApiError> {
        let prefix = prefix(input.required_str("prefix")?, "prefix")?;
        let description = input.str("description")?.map(str::to_owned);
        if description.as_ref().is_some_and(|d| d.chars().count() > 256) {
            return Err(ApiError::invalid("description", "Member must have length less than or equal to 256"));
        }
        let encryption = match input.get("encryptionConfiguration") {
            None => None,
            Some(enc) => Some(encryption(enc)?),
        };
        let resource_tags = match tags(input, "resourceTags")? {
            None => None,
            Some(new) => {
                let mut merged = Vec::new();
                merge_tags(&mut merged, new)?;
                Some(merged)
            }
        };
        let repository_policy = match input.get("repositoryPolicy") {
            None => None,
            Some(_) => Some(policy_member(input, "repositoryPolicy")?),
        };
        let lifecycle_policy = input.str("lifecyclePolicy")?.map(str::to_owned);
        if let Some(text) = &lifecycle_policy {
            crate::lifecycle::policy::parse(text).map_err(|e| ApiError::invalid("lifecyclePolicy", e))?;
        }
        let applied_for = match input.list("appliedFor")? {
            None if creating => return Err(ApiError::invalid("appliedFor", "Member must not be null")),
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for v in list {
                    let a = v.as_str().and_then(AppliedFor::parse).ok_or_else(|| {
                        ApiError::invalid(
                            "appliedFor",
                            "Member must satisfy enum value set: [REPLICATION, PULL_THROUGH_CACHE, CREATE_ON_PUSH]",
                        )
                    })?;
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
                if out.is_empty() {
                    return Err(ApiError::invalid("appliedFor", "Member must have length greater than or equal to 1"));
                }
                Some(out)
            }
        };
        let custom_role_arn = input.str("customRoleArn")?.map(str::to_owned);
        if custom_role_arn.as_ref().is_some_and(|a| a.len() > 2048) {
            return Err(ApiError::invalid("customRoleArn", "Member must have length less than or equal to 2048"));
        }
        Ok(Self {
            prefix,
            description,
            encryption,
            resource_tags,
            mutability: mutability(input, false)?,
            repository_policy,
            lifecycle_policy,
            applied_for,
            custom_role_arn,
        })
    }

    /// Writes the members present into `t`.
    pub fn apply(&self, t: &mut CreationTemplate) {
        if let Some(d) = &self.description {
            t.description.clone_from(d);
        }
        if let Some((kind, key)) = &self.encryption {
            t.encryption_type.clone_from(kind);
            t.kms_key.clone_from(key);
        }
        if let Some(tags) = &self.resource_tags {
            t.resource_tags.clone_from(tags);
        }
        if let Some((m, filters)) = &self.mutability {
            t.image_tag_mutability = *m;
            t.mutability_exclusions.clone_from(filters);
        }
        if let Some(p) = &self.repository_policy {
            t.repository_policy = Some(p.clone());
        }
        if let Some(p) = &self.lifecycle_policy {
            t.lifecycle_policy = Some(p.clone());
        }
        if let Some(a) = &self.applied_for {
            t.applied_for.clone_from(a);
        }
        if let Some(r) = &self.custom_role_arn {
            t.custom_role_arn = Some(r.clone());
        }
    }
}

/// A `prefix` by ECR's pattern: `ROOT`, or a repository namespace with an optional trailing `/`.
pub fn prefix(s: &str, member: &str) -> Result<String, ApiError> {
    let ok = s == ROOT
        || ((1..=256).contains(&s.len())
            && crate::oci::RepositoryName::parse(s.strip_suffix('/').unwrap_or(s)).is_ok());
    if !ok {
        return Err(ApiError::invalid(
            member,
            "Member must satisfy regular expression pattern: ^([a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*\\/?|ROOT)$",
        ));
    }
    Ok(canonical_prefix(s))
}

fn encryption(enc: &Value) -> Result<(String, Option<String>), ApiError> {
    let kind = enc.get("encryptionType").and_then(Value::as_str).unwrap_or("");
    if !["AES256", "KMS", "KMS_DSSE"].contains(&kind) {
        return Err(ApiError::invalid("encryptionType", "Member must satisfy enum value set: [AES256, KMS, KMS_DSSE]"));
    }
    let key = enc.get("kmsKey").and_then(Value::as_str).filter(|k| !k.is_empty());
    if let Some(k) = key {
        let ok = k.len() <= 2048 && k.starts_with("arn:aws") && k.contains(":kms:") && k.contains(":key/");
        if !ok {
            return Err(ApiError::invalid(
                "kmsKey",
                "Member must satisfy regular expression pattern: ^$|arn:aws[a-z0-9-]*:kms:[a-z0-9-]+:[0-9]{12}:key\\/[a-z0-9-]+",
            ));
        }
    }
    Ok((kind.to_owned(), key.map(str::to_owned)))
}

/// `DescribeRepositoryCreationTemplates`' input: the prefixes asked for (all when absent) and a page.
pub fn parse_describe(input: &Input) -> Result<(Option<Vec<String>>, Page), ApiError> {
    let prefixes = match input.list("prefixes")? {
        None => None,
        Some(list) => {
            Some(list.iter().map(|p| prefix(p.as_str().unwrap_or(""), "prefixes")).collect::<Result<Vec<_>, _>>()?)
        }
    };
    Ok((prefixes, input.page(1000)?))
}

/// A template as ECR describes it.
pub fn describe(t: &CreationTemplate) -> Value {
    let mut out = json!({
        "prefix": t.prefix,
        "description": t.description,
        "encryptionConfiguration": { "encryptionType": t.encryption_type },
        "resourceTags": t.resource_tags,
        "imageTagMutability": t.image_tag_mutability.as_str(),
        "appliedFor": t.applied_for.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "createdAt": t.created_at,
        "updatedAt": t.updated_at,
    });
    if let Some(k) = &t.kms_key {
        out["encryptionConfiguration"]["kmsKey"] = json!(k);
    }
    if !t.mutability_exclusions.is_empty() {
        out["imageTagMutabilityExclusionFilters"] =
            t.mutability_exclusions.iter().map(|f| json!({ "filterType": "WILDCARD", "filter": f })).collect();
    }
    for (member, value) in [
        ("repositoryPolicy", &t.repository_policy),
        ("lifecyclePolicy", &t.lifecycle_policy),
        ("customRoleArn", &t.custom_role_arn),
    ] {
        if let Some(v) = value {
            out[member] = json!(v);
        }
    }
    out
}

fn not_found(ctx: &ApiContext<'_>, prefix: &str) -> ApiError {
    ApiError::new(
        EcrException::TemplateNotFound,
        format!(
            "The repository creation template with prefix '{prefix}' does not exist in the registry with id '{}'",
            ctx.registry_id
        ),
    )
}

/// `CreateRepositoryCreationTemplate`.
pub async fn create(ctx: &ApiContext<'_>, input: TemplateInput) -> Result<Value, ApiError> {
    if ctx.registry.templates().creation_templates().await?.len() >= MAX_TEMPLATES {
        return Err(ApiError::new(
            EcrException::LimitExceeded,
            format!("A registry can hold at most {MAX_TEMPLATES} repository creation templates"),
        ));
    }
    let mut template = CreationTemplate::new(&input.prefix, vec![]);
    input.apply(&mut template);
    match ctx.registry.templates().create_template(template).await? {
        Some(t) => Ok(json!({ "registryId": ctx.registry_id, "repositoryCreationTemplate": describe(&t) })),
        None => Err(ApiError::new(
            EcrException::TemplateAlreadyExists,
            format!(
                "A repository creation template with prefix '{}' already exists in the registry with id '{}'",
                input.prefix, ctx.registry_id
            ),
        )),
    }
}

/// `UpdateRepositoryCreationTemplate`.
pub async fn update(ctx: &ApiContext<'_>, input: TemplateInput) -> Result<Value, ApiError> {
    match ctx.registry.templates().update_template(&input.prefix, |t| input.apply(t)).await? {
        Some(t) => Ok(json!({ "registryId": ctx.registry_id, "repositoryCreationTemplate": describe(&t) })),
        None => Err(not_found(ctx, &input.prefix)),
    }
}

/// `DeleteRepositoryCreationTemplate`.
pub async fn delete(ctx: &ApiContext<'_>, prefix: String) -> Result<Value, ApiError> {
    match ctx.registry.templates().delete_template(&prefix).await? {
        Some(t) => Ok(json!({ "registryId": ctx.registry_id, "repositoryCreationTemplate": describe(&t) })),
        None => Err(not_found(ctx, &prefix)),
    }
}

/// `DescribeRepositoryCreationTemplates`: the ones asked for, or a page of all, by prefix.
pub async fn list(ctx: &ApiContext<'_>, prefixes: Option<Vec<String>>, page: Page) -> Result<Value, ApiError> {
    let all = ctx.registry.templates().creation_templates().await?;
    let after = page.after.as_deref().unwrap_or("");
    let mut wanted =
        all.iter().filter(|t| prefixes.as_ref().is_none_or(|p| p.contains(&t.prefix)) && t.prefix.as_str() > after);
    let out: Vec<&CreationTemplate> = wanted.by_ref().take(page.max).collect();
    let mut resp = json!({ "registryId": ctx.registry_id, "repositoryCreationTemplates": out.iter().map(|t| describe(t)).collect::<Vec<_>>() });
    if let (Some(last), true) = (out.last(), wanted.next().is_some()) {
        resp["nextToken"] = json!(super::next_token(&last.prefix));
    }
    Ok(resp)
}
