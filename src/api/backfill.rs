//! ECR's replication backfill API: `StartReplicationBackfill` (one destination of the
//! replication configuration; one in progress per destination region, ten in a registry),
//! `StopReplicationBackfill`, `DescribeReplicationBackfillResults` (progress always, per-image
//! results once it has ended) and `ListReplicationBackfills`. The records are
//! [`crate::replication::store`]'; the replication workers do the work.

use super::operations::names;
use super::EcrException;
use super::{epoch_seconds, paged, ApiContext, ApiError, Input, Operation, Page};
use crate::replication::store::{Backfill, BackfillRefusal, BackfillResult};
use crate::replication::store::{ReplicationDestination, ReplicationState};
use serde_json::{json, Value};

/// A `replicationBackfillId`.
fn backfill_id(input: &Input) -> Result<uuid::Uuid, ApiError> {
    let id = input.required_str("replicationBackfillId")?;
    uuid::Uuid::try_parse(id).ok().filter(|_| id.len() == 36).ok_or_else(|| {
        ApiError::invalid(
            "replicationBackfillId",
            "Member must satisfy regular expression pattern: [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        )
    })
}

/// Parses one of the backfill operations.
pub fn parse_operation(op: names::Backfill, input: &Input) -> Result<Operation, ApiError> {
    Ok(match op {
        names::Backfill::StartReplicationBackfill => {
            let d =
                input.get("destination").ok_or_else(|| ApiError::invalid("destination", "Member must not be null"))?;
            let field = |k: &str| {
                d.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::invalid(k, "Member must not be null"))
            };
            Operation::StartReplicationBackfill(ReplicationDestination {
                region: field("region")?,
                registry_id: field("registryId")?,
            })
        }
        names::Backfill::StopReplicationBackfill => Operation::StopReplicationBackfill(backfill_id(input)?),
        names::Backfill::DescribeReplicationBackfillResults => {
            let filter = match input.str("resultStatusFilter")? {
                None => None,
                Some("COMPLETE") => Some(ReplicationState::Complete),
                Some("FAILED") => Some(ReplicationState::Failed),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "resultStatusFilter",
                        "Member must satisfy enum value set: [COMPLETE, FAILED]",
                    ))
                }
            };
            Operation::DescribeReplicationBackfillResults(backfill_id(input)?, filter, input.page(1000)?)
        }
        names::Backfill::ListReplicationBackfills => Operation::ListReplicationBackfills(input.page(50)?),
    })
}

fn refused(ctx: &ApiContext<'_>, r: BackfillRefusal, region: &str) -> ApiError {
    match r {
        BackfillRefusal::InProgress(id) => ApiError::new(
            EcrException::ReplicationBackfillInProgress,
            format!("A replication backfill ({id}) is already in progress for the destination Region '{region}' in the registry with id '{}'", ctx.registry_id),
        ),
        BackfillRefusal::Limit => ApiError::new(
            EcrException::LimitExceeded,
            format!("The registry with id '{}' already has {} replication backfills in progress", ctx.registry_id, crate::replication::store::MAX_IN_PROGRESS),
        ),
        BackfillRefusal::NotFound => not_found(ctx),
        BackfillRefusal::Ended(status) => ApiError::new(
            EcrException::ReplicationBackfillInvalidStatus,
            format!("The replication backfill is {} and cannot be stopped", json!(status).as_str().unwrap_or("")),
        ),
    }
}

fn not_found(ctx: &ApiContext<'_>) -> ApiError {
    ApiError::new(
        EcrException::ReplicationBackfillNotFound,
        format!("The replication backfill does not exist in the registry with id '{}'", ctx.registry_id),
    )
}

fn head(ctx: &ApiContext<'_>, b: &Backfill) -> Value {
    json!({
        "registryId": ctx.registry_id,
        "replicationBackfillId": b.id,
        "destination": b.destination,
        "status": b.status,
        "startedAt": epoch_seconds(b.started_at_ms),
    })
}

/// `StartReplicationBackfill`.
pub async fn start(ctx: &ApiContext<'_>, destination: ReplicationDestination) -> Result<Value, ApiError> {
    let config = ctx.replication.replication_configuration().await?;
    if !config.rules.iter().any(|r| r.destinations.contains(&destination)) {
        return Err(ApiError::new(
            EcrException::InvalidParameter,
            format!(
                "The destination (registryId '{}', region '{}') is not in the replication configuration of the registry with id '{}'",
                destination.registry_id, destination.region, ctx.registry_id
            ),
        ));
    }
    let region = destination.region.clone();
    match ctx.replication.start_backfill(destination).await? {
        Ok(b) => Ok(head(ctx, &b)),
        Err(r) => Err(refused(ctx, r, &region)),
    }
}

/// `StopReplicationBackfill`.
pub async fn stop(ctx: &ApiContext<'_>, id: uuid::Uuid) -> Result<Value, ApiError> {
    match ctx.replication.stop_backfill(&id).await? {
        Ok(b) => Ok(head(ctx, &b)),
        Err(r) => Err(refused(ctx, r, "")),
    }
}

/// Totals over every image and tag combination: (total, completed, failed, failure codes).
async fn progress(ctx: &ApiContext<'_>, b: &Backfill) -> Result<Value, ApiError> {
    let results: Vec<BackfillResult> = if b.status.is_terminal() {
        b.results.clone()
    } else {
        crate::replication::backfill::results(ctx.registry, ctx.replication, b).await?
    };
    let total: usize = b.targets.iter().map(|t| t.tags.len().max(1)).sum();
    let completed = results.iter().filter(|r| r.status == ReplicationState::Complete).count();
    let failed = results.iter().filter(|r| r.status == ReplicationState::Failed).count();
    let mut codes: Vec<&str> = results.iter().filter_map(|r| r.failure_code.as_deref()).collect();
    codes.sort_unstable();
    codes.dedup();
    Ok(json!({
        "totalReplicationCount": total,
        "completedReplicationCount": completed,
        "failedReplicationCount": failed,
        "failureCodes": codes,
    }))
}

fn summary(ctx: &ApiContext<'_>, b: &Backfill, progress: Value) -> Value {
    let mut out = head(ctx, b);
    out["progress"] = progress;
    if let Some(end) = b.ended_at_ms {
        out["endedAt"] = json!(epoch_seconds(end));
    }
    if let Some(code) = &b.failure_code {
        out["failureCode"] = json!(code);
    }
    out
}

/// `DescribeReplicationBackfillResults`.
pub async fn describe(
    ctx: &ApiContext<'_>,
    id: uuid::Uuid,
    filter: Option<ReplicationState>,
    page: &Page,
) -> Result<Value, ApiError> {
    let b = ctx.replication.backfill(&id).await?.ok_or_else(|| not_found(ctx))?;
    let mut out = summary(ctx, &b, progress(ctx, &b).await?);
    if b.status.is_terminal() {
        let all: Vec<&BackfillResult> = b.results.iter().filter(|r| filter.is_none_or(|f| r.status == f)).collect();
        let (chosen, next) = paged(&all, page)?;
        let results: Vec<Value> = chosen
            .iter()
            .map(|r| {
                let mut image = json!({ "imageDigest": r.target.digest });
                if let Some(tag) = r.target.tags.first() {
                    image["imageTag"] = json!(tag);
                }
                let mut v = json!({ "repositoryName": r.target.repository, "imageId": image, "status": r.status });
                if let Some(code) = &r.failure_code {
                    v["failureCode"] = json!(code);
                }
                v
            })
            .collect();
        out["results"] = json!(results);
        if let Some(t) = next {
            out["nextToken"] = json!(t);
        }
    }
    Ok(out)
}

/// `ListReplicationBackfills`: newest first.
pub async fn list(ctx: &ApiContext<'_>, page: &Page) -> Result<Value, ApiError> {
    let all = ctx.replication.backfills().await?;
    let (chosen, next) = paged(&all, page)?;
    let mut out = Vec::new();
    for b in &chosen {
        out.push(summary(ctx, b, progress(ctx, b).await?));
    }
    let mut resp = json!({ "registryId": ctx.registry_id, "backfills": out });
    if let Some(t) = next {
        resp["nextToken"] = json!(t);
    }
    Ok(resp)
}
