//! ECR's registry-wide settings: the scanning configuration (`PutRegistryScanningConfiguration`,
//! `GetRegistryScanningConfiguration`), a repository's scan-on-push
//! (`PutImageScanningConfiguration`, `BatchGetRepositoryScanningConfiguration`) and account
//! settings (`PutAccountSetting`, `GetAccountSetting`), with ECR's limits. Ferry has no
//! scanner yet: the settings are kept and shown, so tools that manage them (Terraform's
//! `aws_ecr_registry_scanning_configuration`, `aws_ecr_account_setting`) work. The one account
//! setting with an effect is `BLOB_MOUNTING`. This module speaks ECR; the registry stores.

use super::operations::names;
use super::EcrException;
use super::{ApiContext, ApiError, Input};
use crate::auth::{Access, Action};
use crate::oci::RepositoryName;
use crate::registry::settings::{AccountSettings, ScanningConfiguration, ScanningRule};
use serde_json::{json, Value};

/// One parsed settings operation.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingsOp {
    /// `PutRegistryScanningConfiguration`.
    PutScanning(ScanningConfiguration),
    /// `GetRegistryScanningConfiguration`.
    GetScanning,
    /// `PutImageScanningConfiguration`: the repository and `scanOnPush`.
    PutRepositoryScanning(RepositoryName, bool),
    /// `BatchGetRepositoryScanningConfiguration`.
    GetRepositoryScanning(Vec<String>),
    /// `PutAccountSetting`.
    PutAccount(String, String),
    /// `GetAccountSetting`.
    GetAccount(String),
}

impl SettingsOp {
    /// What it needs.
    pub fn accesses(&self) -> Vec<Access> {
        match self {
            Self::PutScanning(_) => vec![Access::registry(Action::PutRegistryScanningConfiguration)],
            Self::GetScanning => vec![Access::registry(Action::GetRegistryScanningConfiguration)],
            Self::PutRepositoryScanning(n, _) => vec![Access::on(Action::PutImageScanningConfiguration, n)],
            Self::GetRepositoryScanning(names) => names
                .iter()
                .filter_map(|n| RepositoryName::parse(n).ok())
                .map(|n| Access::on(Action::BatchGetRepositoryScanningConfiguration, &n))
                .collect(),
            Self::PutAccount(..) => vec![Access::registry(Action::PutAccountSetting)],
            Self::GetAccount(_) => vec![Access::registry(Action::GetAccountSetting)],
        }
    }
}

fn scanning_rules(input: &Input) -> Result<Vec<ScanningRule>, ApiError> {
    let Some(list) = input.list("rules")? else { return Ok(Vec::new()) };
    if list.len() > 2 {
        return Err(ApiError::invalid("rules", "Member must have length less than or equal to 2"));
    }
    let mut rules = Vec::new();
    for rule in list {
        let frequency = rule.get("scanFrequency").and_then(Value::as_str).unwrap_or_default();
        if !["SCAN_ON_PUSH", "CONTINUOUS_SCAN", "MANUAL"].contains(&frequency) {
            return Err(ApiError::invalid(
                "rules.member.scanFrequency",
                "Member must satisfy enum value set: [SCAN_ON_PUSH, CONTINUOUS_SCAN, MANUAL]",
            ));
        }
        let filters = rule
            .get("repositoryFilters")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::invalid("rules.member.repositoryFilters", "Member must not be null"))?;
        if filters.len() > 100 {
            return Err(ApiError::invalid(
                "rules.member.repositoryFilters",
                "Member must have length less than or equal to 100",
            ));
        }
        let mut out = Vec::new();
        for f in filters {
            let filter = f.get("filter").and_then(Value::as_str).unwrap_or_default();
            let valid = (1..=255).contains(&filter.len())
                && filter.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c));
            if !valid || f.get("filterType").and_then(Value::as_str) != Some("WILDCARD") {
                return Err(ApiError::invalid(
                    "rules.member.repositoryFilters.member",
                    "Member must be {filter: ^[a-z0-9*](?:[._\\-/a-z0-9*]?[a-z0-9*]+)*$, filterType: WILDCARD}",
                ));
            }
            out.push(filter.to_owned());
        }
        rules.push(ScanningRule { scan_frequency: frequency.to_owned(), repository_filters: out });
    }
    Ok(rules)
}

/// Parses one of the settings operations.
pub fn parse_operation(op: names::Settings, input: &Input) -> Result<SettingsOp, ApiError> {
    Ok(match op {
        names::Settings::PutRegistryScanningConfiguration => {
            let scan_type = input.str("scanType")?.unwrap_or("BASIC");
            if !["BASIC", "ENHANCED"].contains(&scan_type) {
                return Err(ApiError::invalid("scanType", "Member must satisfy enum value set: [BASIC, ENHANCED]"));
            }
            SettingsOp::PutScanning(ScanningConfiguration {
                scan_type: scan_type.to_owned(),
                rules: scanning_rules(input)?,
            })
        }
        names::Settings::GetRegistryScanningConfiguration => SettingsOp::GetScanning,
        names::Settings::PutImageScanningConfiguration => {
            let name = super::repositories::repository_name(input, "repositoryName")?;
            let config = input
                .get("imageScanningConfiguration")
                .ok_or_else(|| ApiError::invalid("imageScanningConfiguration", "Member must not be null"))?;
            let on_push = match config.get("scanOnPush") {
                None | Some(Value::Null) => false,
                Some(v) => v.as_bool().ok_or_else(|| ApiError::invalid("scanOnPush", "Member must be a boolean"))?,
            };
            SettingsOp::PutRepositoryScanning(name, on_push)
        }
        names::Settings::BatchGetRepositoryScanningConfiguration => {
            let list = input
                .list("repositoryNames")?
                .ok_or_else(|| ApiError::invalid("repositoryNames", "Member must not be null"))?;
            if list.is_empty() || list.len() > 25 {
                return Err(ApiError::invalid("repositoryNames", "Member must have length between 1 and 25"));
            }
            let names =
                list.iter()
                    .map(|v| {
                        v.as_str().filter(|n| RepositoryName::parse(n).is_ok()).map(str::to_owned).ok_or_else(|| {
                            ApiError::invalid("repositoryNames.member", "Member must be a repository name")
                        })
                    })
                    .collect::<Result<_, _>>()?;
            SettingsOp::GetRepositoryScanning(names)
        }
        names::Settings::PutAccountSetting => {
            let name = account_setting_name(input)?;
            let value = input.required_str("value")?;
            if !AccountSettings::valid_values(&name).contains(&value) {
                return Err(ApiError::new(
                    EcrException::Validation,
                    format!(
                        "Invalid value '{value}' for {name}: must be one of {}",
                        AccountSettings::valid_values(&name).join(", ")
                    ),
                ));
            }
            SettingsOp::PutAccount(name, value.to_owned())
        }
        names::Settings::GetAccountSetting => SettingsOp::GetAccount(account_setting_name(input)?),
    })
}

fn account_setting_name(input: &Input) -> Result<String, ApiError> {
    let name = input.required_str("name")?;
    if AccountSettings::valid_values(name).is_empty() {
        return Err(ApiError::new(
            EcrException::Validation,
            format!("Invalid account setting name '{name}': must be one of {}", AccountSettings::NAMES.join(", ")),
        ));
    }
    Ok(name.to_owned())
}

/// Runs one.
pub async fn run(ctx: &ApiContext<'_>, op: SettingsOp) -> Result<Value, ApiError> {
    let reg = ctx.registry;
    match op {
        SettingsOp::PutScanning(config) => {
            ctx.account.put_scanning_configuration(&config).await?;
            Ok(json!({ "registryScanningConfiguration": scanning_json(&config) }))
        }
        SettingsOp::GetScanning => {
            let config = ctx.account.scanning_configuration().await?;
            Ok(json!({ "registryId": ctx.registry_id, "scanningConfiguration": scanning_json(&config) }))
        }
        SettingsOp::PutRepositoryScanning(name, on_push) => {
            if reg.repository_settings(&name).await?.is_none() {
                return Err(super::repositories::not_found(ctx, &name));
            }
            reg.update_repository(&name, move |s| {
                s.scan_on_push = on_push;
                Ok(())
            })
            .await?;
            Ok(json!({
                "registryId": ctx.registry_id,
                "repositoryName": name.as_str(),
                "imageScanningConfiguration": { "scanOnPush": on_push },
            }))
        }
        SettingsOp::GetRepositoryScanning(names) => {
            let registry_config = ctx.account.scanning_configuration().await?;
            let (mut found, mut failures) = (Vec::new(), Vec::new());
            for n in names {
                let settings = match RepositoryName::parse(&n) {
                    Ok(name) => reg.repository_settings(&name).await?.map(|s| (name, s)),
                    Err(_) => None,
                };
                let Some((name, settings)) = settings else {
                    failures.push(json!({
                        "repositoryName": n, "failureCode": "REPOSITORY_NOT_FOUND",
                        "failureReason": "REPOSITORY_NOT_FOUND",
                    }));
                    continue;
                };
                let (frequency, filters) = registry_config.applied(name.as_str(), settings.scan_on_push);
                found.push(json!({
                    "repositoryArn": crate::auth::repository_arn(ctx.region, ctx.registry_id, &name),
                    "repositoryName": name.as_str(),
                    "scanOnPush": frequency == "SCAN_ON_PUSH" || settings.scan_on_push,
                    "scanFrequency": frequency,
                    "appliedScanFilters": filters.iter().map(|f| json!({ "filter": f, "filterType": "WILDCARD" })).collect::<Vec<_>>(),
                }));
            }
            Ok(json!({ "scanningConfigurations": found, "failures": failures }))
        }
        SettingsOp::PutAccount(name, value) => {
            ctx.account.put_account_setting(&name, &value).await?;
            Ok(json!({ "name": name, "value": value }))
        }
        SettingsOp::GetAccount(name) => {
            let value = ctx.account.account_settings().await?.get(&name);
            Ok(json!({ "name": name, "value": value }))
        }
    }
}

fn scanning_json(config: &ScanningConfiguration) -> Value {
    json!({
        "scanType": config.scan_type,
        "rules": config.rules.iter().map(|r| json!({
            "scanFrequency": r.scan_frequency,
            "repositoryFilters": r.repository_filters.iter().map(|f| json!({ "filter": f, "filterType": "WILDCARD" })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
