//! `PutReplicationConfiguration` and the configuration `DescribeRegistry` shows, with ECR's
//! limits: at most 10 rules, 25 unique destinations in all, 1 to 100 `PREFIX_MATCH` filters per
//! rule when given, regions `[0-9a-z-]{2,25}`, registry ids of 12 digits. Ferry never
//! replicates deletes, so `deleteReplication: {enabled: true}` is refused rather than ignored.

use super::images::ImageIdentifier;
use super::operations::names;
use super::{registry_policy, ApiContext, ApiError, Input, Operation};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::registry::Repo;
use crate::replication::store::{ReplicationConfiguration, ReplicationDestination, ReplicationRule, RepositoryFilter};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Rules per configuration.
pub const MAX_RULES: usize = 10;
/// Unique destinations across all rules.
pub const MAX_DESTINATIONS: usize = 25;
/// Filters per rule.
pub const MAX_FILTERS: usize = 100;

fn invalid(member: &str, constraint: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(member, constraint)
}

fn string<'a>(v: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    v.get(member).and_then(Value::as_str).ok_or_else(|| invalid(member, "Member must not be null"))
}

/// Parses one of the registry-level replication operations.
pub fn parse_operation(op: names::Replication, input: &Input) -> Result<Operation, ApiError> {
    Ok(match op {
        names::Replication::PutReplicationConfiguration => Operation::PutReplicationConfiguration(parse(input)?),
        names::Replication::PutRegistryPolicy => Operation::PutRegistryPolicy(registry_policy::parse(input)?),
        names::Replication::GetRegistryPolicy => Operation::GetRegistryPolicy,
        names::Replication::DescribeImageReplicationStatus => {
            let name = super::repositories::repository_name(input, "repositoryName")?;
            Operation::DescribeImageReplicationStatus(name, image_id(input)?)
        }
        names::Replication::DeleteRegistryPolicy => Operation::DeleteRegistryPolicy,
    })
}

/// Reads `imageId` for `DescribeImageReplicationStatus`: a digest, a tag, or both.
fn image_id(input: &Input) -> Result<ImageIdentifier, ApiError> {
    let id = input.get("imageId").ok_or_else(|| invalid("imageId", "Member must not be null"))?;
    let id = ImageIdentifier::from_json(id);
    if id.digest.is_none() && id.tag.is_none() {
        return Err(invalid("imageId", "an image id needs an imageDigest or an imageTag"));
    }
    if id.tag.as_ref().is_some_and(|t| t.is_empty() || t.len() > 300) {
        return Err(invalid("imageTag", "Member must have length between 1 and 300"));
    }
    Ok(id)
}

/// `DescribeImageReplicationStatus`: the image's status at each destination it was recorded
/// for (none when it was pushed before replication was configured).
pub async fn image_status(
    ctx: &ApiContext<'_>,
    name: &RepositoryName,
    image: &ImageIdentifier,
) -> Result<Value, ApiError> {
    let registry = ctx.registry;
    if registry.repository_settings(name).await?.is_none() {
        return Err(super::repositories::not_found(ctx, name));
    }
    let not_found = || image.not_found(ctx, name);
    let local = Repo::Local(name.clone());
    let by_tag = match &image.tag {
        Some(t) => {
            let tag = Tag::parse(t).map_err(|_| not_found())?;
            match registry.manifest_record(&local, &Reference::Tag(tag)).await {
                Ok(r) => Some(r.digest),
                Err(crate::registry::Error::ManifestUnknown(_) | crate::registry::Error::NameUnknown(_)) => {
                    return Err(not_found())
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => None,
    };
    let digest = match (&image.digest, by_tag) {
        (Some(d), tagged) => {
            let d = Digest::parse(d).map_err(|_| invalid("imageDigest", "Invalid parameter at 'imageDigest'"))?;
            if tagged.is_some_and(|t| t != d) || !registry.holds_manifest(name, &d).await? {
                return Err(not_found());
            }
            d
        }
        (None, Some(t)) => t,
        (None, None) => return Err(not_found()),
    };
    // By tag: that tag's own status; by digest: the image's with every tag it carries.
    let statuses = ctx.replication.replication_status_of(registry, name, &digest, image.tag.as_deref()).await?;
    let mut id = image.clone();
    id.digest = Some(digest.to_string());
    Ok(json!({ "repositoryName": name.as_str(), "imageId": id.json(), "replicationStatuses": statuses }))
}

/// Reads `replicationConfiguration`.
pub fn parse(input: &Input) -> Result<ReplicationConfiguration, ApiError> {
    let config = input
        .get("replicationConfiguration")
        .ok_or_else(|| invalid("replicationConfiguration", "Member must not be null"))?;
    let rules =
        config.get("rules").and_then(Value::as_array).ok_or_else(|| invalid("rules", "Member must not be null"))?;
    if rules.len() > MAX_RULES {
        return Err(invalid("rules", format!("Member must have length less than or equal to {MAX_RULES}")));
    }
    let mut all = HashSet::new();
    let mut out = Vec::with_capacity(rules.len());
    for rule in rules {
        let deletes = rule.get("deleteReplication").and_then(|d| d.get("enabled")).and_then(Value::as_bool);
        if deletes == Some(true) {
            return Err(invalid("deleteReplication", "this registry never replicates deletes"));
        }
        let destinations = rule
            .get("destinations")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("destinations", "Member must not be null"))?;
        if destinations.len() > 100 {
            return Err(invalid("destinations", "Member must have length less than or equal to 100"));
        }
        let mut parsed = Vec::with_capacity(destinations.len());
        for d in destinations {
            let region = string(d, "region")?;
            if !(2..=25).contains(&region.len())
                || !region.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
            {
                return Err(invalid("region", "Member must satisfy regular expression pattern: [0-9a-z-]{2,25}"));
            }
            let registry_id = string(d, "registryId")?;
            if registry_id.len() != 12 || !registry_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("registryId", "Member must satisfy regular expression pattern: [0-9]{12}"));
            }
            let destination = ReplicationDestination { region: region.to_owned(), registry_id: registry_id.to_owned() };
            all.insert(destination.clone());
            parsed.push(destination);
        }
        let mut filters = Vec::new();
        if let Some(list) = rule.get("repositoryFilters").and_then(Value::as_array) {
            if list.is_empty() || list.len() > MAX_FILTERS {
                return Err(invalid(
                    "repositoryFilters",
                    format!("Member must have length between 1 and {MAX_FILTERS}"),
                ));
            }
            for f in list {
                let filter = string(f, "filter")?;
                if string(f, "filterType")? != "PREFIX_MATCH" {
                    return Err(invalid("filterType", "Member must satisfy enum value set: [PREFIX_MATCH]"));
                }
                let ok = (2..=256).contains(&filter.len())
                    && filter.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"._-/".contains(&b));
                if !ok {
                    return Err(invalid(
                        "filter",
                        "Member must satisfy regular expression pattern: ^(?:[a-z0-9]+(?:[._-][a-z0-9]*)*/)*[a-z0-9]*(?:[._-][a-z0-9]*)*$",
                    ));
                }
                filters.push(RepositoryFilter { filter: filter.to_owned(), filter_type: "PREFIX_MATCH".into() });
            }
        }
        out.push(ReplicationRule { destinations: parsed, repository_filters: filters });
    }
    if all.len() > MAX_DESTINATIONS {
        return Err(invalid(
            "destinations",
            format!("a replication configuration may name at most {MAX_DESTINATIONS} unique destinations"),
        ));
    }
    Ok(ReplicationConfiguration { rules: out })
}

/// `PutReplicationConfiguration`: stores it and echoes it.
pub async fn put(ctx: &ApiContext<'_>, config: ReplicationConfiguration) -> Result<Value, ApiError> {
    ctx.replication.put_replication_configuration(&config).await?;
    Ok(json!({ "replicationConfiguration": config }))
}

/// `DescribeRegistry`: the registry id and the stored configuration.
pub async fn describe_registry(ctx: &ApiContext<'_>) -> Result<Value, ApiError> {
    let config = ctx.replication.replication_configuration().await?;
    Ok(json!({ "registryId": ctx.registry_id, "replicationConfiguration": config }))
}
