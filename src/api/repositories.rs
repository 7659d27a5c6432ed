//! The repository operations: create, describe, delete, tag mutability, repository policies
//! and resource tags, with ECR's limits, patterns and exception names.

use super::EcrException;
use super::{ApiContext, ApiError, Input, Page};
use crate::auth::policy::{Policy, PolicyKind};
use crate::oci::RepositoryName;
use crate::registry::repositories::{RepositorySettings, ResourceTag, TagMutability};
use futures_util::StreamExt;
use serde_json::Map;
use serde_json::{json, Value};

/// A `repositoryName` by ECR's pattern and length (2 to 256).
pub fn repository_name(input: &Input, member: &str) -> Result<RepositoryName, ApiError> {
    let s = input.required_str(member)?;
    if s.len() < 2 || s.len() > 256 {
        return Err(ApiError::invalid(member, "Member must have length between 2 and 256"));
    }
    RepositoryName::parse(s).map_err(|_| {
        ApiError::invalid(
            member,
            "Member must satisfy regular expression pattern: (?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*",
        )
    })
}

/// `imageTagMutability` and its exclusion filters.
pub fn mutability(input: &Input, required: bool) -> Result<Option<(TagMutability, Vec<String>)>, ApiError> {
    let value = match input.str("imageTagMutability")? {
        Some(v) => v,
        None if required => return Err(ApiError::invalid("imageTagMutability", "Member must not be null")),
        None => return Ok(None),
    };
    let m = TagMutability::parse(value).ok_or_else(|| {
        ApiError::invalid(
            "imageTagMutability",
            "Member must satisfy enum value set: [MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION, MUTABLE_WITH_EXCLUSION]",
        )
    })?;
    let mut filters = Vec::new();
    if let Some(list) = input.list("imageTagMutabilityExclusionFilters")? {
        if list.is_empty() || list.len() > 5 {
            return Err(ApiError::invalid(
                "imageTagMutabilityExclusionFilters",
                "Member must have length between 1 and 5",
            ));
        }
        for f in list {
            let filter_type = f.get("filterType").and_then(Value::as_str);
            let filter = f.get("filter").and_then(Value::as_str).unwrap_or("");
            if filter_type != Some("WILDCARD") {
                return Err(ApiError::invalid("filterType", "Member must satisfy enum value set: [WILDCARD]"));
            }
            let ok = (1..=128).contains(&filter.len())
                && filter.bytes().all(|b| b.is_ascii_alphanumeric() || b"._*-".contains(&b));
            if !ok {
                return Err(ApiError::invalid(
                    "filter",
                    "Member must satisfy regular expression pattern: ^[0-9a-zA-Z._*-]{1,128}",
                ));
            }
            filters.push(filter.to_owned());
        }
    }
    let with_exclusion = matches!(m, TagMutability::ImmutableWithExclusion | TagMutability::MutableWithExclusion);
    if with_exclusion && filters.is_empty() {
        return Err(ApiError::invalid(
            "imageTagMutabilityExclusionFilters",
            format!("{} needs exclusion filters", m.as_str()),
        ));
    }
    if !with_exclusion && !filters.is_empty() {
        return Err(ApiError::invalid(
            "imageTagMutabilityExclusionFilters",
            format!("{} takes no exclusion filters", m.as_str()),
        ));
    }
    Ok(Some((m, filters)))
}

/// `tags[{Key,Value}]`, checked as ECR checks them.
pub fn tags(input: &Input, member: &str) -> Result<Option<Vec<ResourceTag>>, ApiError> {
    let Some(list) = input.list(member)? else { return Ok(None) };
    let mut out = Vec::new();
    for t in list {
        let key = t.get("Key").and_then(Value::as_str);
        let value = t.get("Value").and_then(Value::as_str);
        let (Some(key), Some(value)) = (key, value) else {
            return Err(ApiError::new(EcrException::InvalidTagParameter, "Each tag needs a Key and a Value"));
        };
        if key.is_empty() || key.chars().count() > 128 || value.chars().count() > 256 {
            return Err(ApiError::new(
                EcrException::InvalidTagParameter,
                "A tag key must be 1 to 128 characters and a value at most 256",
            ));
        }
        out.push(ResourceTag { key: key.to_owned(), value: value.to_owned() });
    }
    Ok(Some(out))
}

/// At most 50 tags on a repository, keys unique (a later one replaces an earlier one).
pub fn merge_tags(existing: &mut Vec<ResourceTag>, new: Vec<ResourceTag>) -> Result<(), ApiError> {
    for tag in new {
        match existing.iter_mut().find(|t| t.key == tag.key) {
            Some(t) => t.value = tag.value,
            None => existing.push(tag),
        }
    }
    if existing.len() > 50 {
        return Err(ApiError::new(EcrException::TooManyTags, "A repository can have at most 50 tags"));
    }
    Ok(())
}

/// A repository as ECR describes it.
pub fn describe(ctx: &ApiContext<'_>, name: &RepositoryName, s: &RepositorySettings) -> Value {
    let host = ctx.proxy_endpoint.split("://").nth(1).unwrap_or(&ctx.proxy_endpoint).trim_end_matches('/');
    let mut repo = json!({
        "repositoryArn": crate::auth::repository_arn(ctx.region, ctx.registry_id, name),
        "registryId": ctx.registry_id,
        "repositoryName": name.as_str(),
        "repositoryUri": format!("{host}/{name}"),
        "createdAt": s.created_at,
        "imageTagMutability": s.image_tag_mutability.as_str(),
        "imageScanningConfiguration": { "scanOnPush": s.scan_on_push },
        "encryptionConfiguration": { "encryptionType": s.encryption_type },
    });
    if !s.mutability_exclusions.is_empty() {
        repo["imageTagMutabilityExclusionFilters"] =
            s.mutability_exclusions.iter().map(|f| json!({ "filterType": "WILDCARD", "filter": f })).collect();
    }
    if let Some(k) = &s.kms_key {
        repo["encryptionConfiguration"]["kmsKey"] = json!(k);
    }
    repo
}

/// A repository policy document, refused as ECR refuses one.
pub fn policy_text(input: &Input) -> Result<String, ApiError> {
    policy_member(input, "policyText")
}

/// A repository policy document in `member`, refused as ECR refuses one.
pub fn policy_member(input: &Input, member: &str) -> Result<String, ApiError> {
    let text = input.required_str(member)?;
    if text.is_empty() || text.chars().count() > 10240 {
        return Err(ApiError::invalid(member, "Member must have length less than or equal to 10240"));
    }
    Policy::parse(text, PolicyKind::Resource)
        .map_err(|_| ApiError::invalid("PolicyText", "Invalid repository policy provided"))?;
    Ok(text.to_owned())
}

/// `RepositoryPolicyNotFoundException` in ECR's words.
pub fn no_policy(ctx: &ApiContext<'_>, name: &RepositoryName) -> ApiError {
    ApiError::new(
        EcrException::RepositoryPolicyNotFound,
        format!(
            "Repository policy does not exist for the repository with name '{name}' in the registry with id '{}'",
            ctx.registry_id
        ),
    )
}

/// `RepositoryNotFoundException` in ECR's words.
pub fn not_found(ctx: &ApiContext<'_>, name: &RepositoryName) -> ApiError {
    ApiError::new(
        EcrException::RepositoryNotFound,
        format!("The repository with name '{name}' does not exist in the registry with id '{}'", ctx.registry_id),
    )
}

/// `CreateRepository`'s input.
pub fn parse_create(input: &Input) -> Result<(RepositoryName, RepositorySettings), ApiError> {
    let name = repository_name(input, "repositoryName")?;
    let mut settings = RepositorySettings::default();
    if let Some((m, filters)) = mutability(input, false)? {
        settings.image_tag_mutability = m;
        settings.mutability_exclusions = filters;
    }
    if let Some(scan) = input.get("imageScanningConfiguration") {
        settings.scan_on_push = scan.get("scanOnPush").and_then(Value::as_bool).unwrap_or(false);
    }
    if let Some(enc) = input.get("encryptionConfiguration") {
        let kind = enc.get("encryptionType").and_then(Value::as_str).unwrap_or("");
        if !["AES256", "KMS", "KMS_DSSE"].contains(&kind) {
            return Err(ApiError::invalid(
                "encryptionType",
                "Member must satisfy enum value set: [AES256, KMS, KMS_DSSE]",
            ));
        }
        settings.encryption_type = kind.to_owned();
        settings.kms_key = enc.get("kmsKey").and_then(Value::as_str).map(str::to_owned);
    }
    if let Some(tags) = tags(input, "tags")? {
        merge_tags(&mut settings.tags, tags)?;
    }
    Ok((name, settings))
}

/// `DescribeRepositories`' input: names, or a page of the listing (not both).
pub fn parse_describe(input: &Input) -> Result<(Option<Vec<RepositoryName>>, Page), ApiError> {
    let names = match input.list("repositoryNames")? {
        None => None,
        Some(list) => {
            if list.is_empty() || list.len() > 100 {
                return Err(ApiError::invalid("repositoryNames", "Member must have length between 1 and 100"));
            }
            let mut names = Vec::new();
            for n in list {
                let mut one = Map::new();
                one.insert("repositoryNames".into(), n.clone());
                names.push(repository_name(&Input(one), "repositoryNames")?);
            }
            Some(names)
        }
    };
    let page = input.page(1000)?;
    if names.is_some() && (input.get("maxResults").is_some() || page.after.is_some()) {
        return Err(ApiError::invalid("maxResults", "cannot be combined with repositoryNames"));
    }
    Ok((names, page))
}

/// A page of the repositories the caller may describe, in catalog order: one listing and one
/// read per repository returned, whatever the registry holds.
pub async fn list(ctx: &ApiContext<'_>, page: Page) -> Result<Value, ApiError> {
    let listed = ctx.registry.repositories_page(page.after.as_deref(), page.max, ctx.visible).await?;
    // Read a few at once (each waits on storage), in order.
    let registry = ctx.registry;
    let read: Vec<_> = futures_util::stream::iter(listed.items.clone())
        .map(|name| async move { registry.repository_settings(&name).await.map(|s| (name, s)) })
        .buffered(16)
        .collect()
        .await;
    let mut out = Vec::new();
    for result in read {
        // A catalog entry whose repository was just deleted has no settings: left out.
        if let (name, Some(settings)) = result? {
            out.push(describe(ctx, &name, &settings));
        }
    }
    let mut resp = json!({ "repositories": out });
    if let (Some(last), true) = (listed.items.last(), listed.more) {
        resp["nextToken"] = json!(super::next_token(last.as_str()));
    }
    Ok(resp)
}

/// Adds tags; `TooManyTagsException` past 50, leaving the repository as it was.
pub async fn tag(ctx: &ApiContext<'_>, name: &RepositoryName, new: Vec<ResourceTag>) -> Result<Value, ApiError> {
    let refused = std::sync::Mutex::new(None);
    let result = ctx
        .registry
        .update_repository(name, |s| {
            let mut tags = s.tags.clone();
            match merge_tags(&mut tags, new.clone()) {
                Ok(()) => {
                    s.tags = tags;
                    Ok(())
                }
                Err(e) => {
                    if let Ok(mut r) = refused.lock() {
                        *r = Some(e);
                    }
                    Err(crate::registry::Error::SizeInvalid("too many tags".into()))
                }
            }
        })
        .await;
    if let Some(e) = refused.lock().ok().and_then(|mut r| r.take()) {
        return Err(e);
    }
    result?;
    Ok(json!({}))
}

/// `PutImageTagMutability`: the setting and its exclusion filters, echoed as ECR does.
pub async fn put_tag_mutability(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    m: TagMutability,
    filters: Vec<String>,
) -> Result<Value, ApiError> {
    let f = filters.clone();
    ctx.registry
        .update_repository(name, move |s| {
            s.image_tag_mutability = m;
            s.mutability_exclusions = f.clone();
            Ok(())
        })
        .await?;
    let mut resp = json!({
        "registryId": ctx.registry_id, "repositoryName": name.as_str(), "imageTagMutability": m.as_str(),
    });
    if !filters.is_empty() {
        resp["imageTagMutabilityExclusionFilters"] =
            filters.iter().map(|f| json!({ "filterType": "WILDCARD", "filter": f })).collect();
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use crate::api::testing::ApiFixture;
    use serde_json::json;

    /// A registry holding `count` repositories, with names whose order as strings differs from
    /// their catalog order (`team/a…` before `team-…`).
    async fn seeded(count: usize) -> ApiFixture {
        let f = ApiFixture::new();
        for n in 0..count {
            let name = match n % 3 {
                0 => format!("team/a{n:05}"),
                1 => format!("team-{n:05}"),
                _ => format!("team.x/{n:05}"),
            };
            f.call("CreateRepository", json!({ "repositoryName": name })).await.unwrap();
        }
        f
    }

    /// Every repository, walked with `maxResults` of `per_page`.
    async fn walk(f: &ApiFixture, per_page: u64) -> Vec<String> {
        let items = f.walk("DescribeRepositories", json!({ "maxResults": per_page }), "repositories").await;
        items.iter().map(|r| r["repositoryName"].as_str().unwrap_or_default().to_owned()).collect()
    }

    #[tokio::test]
    async fn a_page_of_repositories_costs_what_it_returns() {
        let mut costs = Vec::new();
        for count in [150, 1000] {
            let f = seeded(count).await;
            let (out, requests) = f.counted("DescribeRepositories", json!({ "maxResults": 100 })).await;
            let out = out.unwrap();
            assert_eq!(out["repositories"].as_array().map(Vec::len), Some(100));
            assert!(out["nextToken"].is_string());
            assert!(requests.lists <= 2 && requests.reads <= 100, "{requests:?}");
            let (page, catalog) = f.storage.count(f.registry.catalog(Some(100), None, &|_| true)).await;
            let page = page.unwrap();
            assert_eq!((page.items.len(), page.more), (100, true));
            assert!(catalog.lists <= 2 && catalog.reads == 0, "{catalog:?}");
            costs.push((requests, catalog));
        }
        assert_eq!(costs[0], costs[1], "the cost does not grow with the registry");
    }

    #[tokio::test]
    async fn paging_through_repositories_gives_each_once_in_catalog_order() {
        let f = seeded(40).await;
        let whole = walk(&f, 1000).await;
        assert_eq!(whole.len(), 40);
        // Path components compared in turn, as distribution's catalog walks them.
        let mut expected = whole.clone();
        expected.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        assert_eq!(whole, expected);
        assert!(whole[0].starts_with("team/a"), "{whole:?}");
        for per_page in [1, 3, 7] {
            assert_eq!(walk(&f, per_page).await, whole, "by {per_page}");
        }
        // The catalog pages the same way, and a caller sees only what it may.
        let mut names = Vec::new();
        let mut last: Option<String> = None;
        let visible = |n: &crate::oci::RepositoryName| !n.as_str().starts_with("team-");
        loop {
            let page = f.registry.catalog(Some(4), last.as_deref(), &visible).await.unwrap();
            names.extend(page.items.iter().cloned());
            if !page.more {
                break;
            }
            last = page.items.last().cloned();
        }
        let seen: Vec<String> = whole.iter().filter(|n| !n.starts_with("team-")).cloned().collect();
        assert_eq!(names, seen);
    }
}
