//! IAM-style policy documents and the one function that evaluates them.
//!
//! A document is parsed once, strictly: every key, operator and condition key must be one this
//! module understands, so a document is either wholly in force or refused when it is set, never
//! half-applied. Patterns are compiled at parse time. [`evaluate`] is pure (no I/O, no clock of
//! its own, no owner shortcut): default deny; an explicit `Deny` in any applicable policy wins;
//! otherwise an `Allow` in an identity policy or in a resource (repository, registry) policy is
//! enough (ECR.md 3.5). Knows nothing of HTTP or storage.

use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wildmatch::WildMatchPattern;

/// A `*` and `?` pattern.
type Pattern = WildMatchPattern<'*', '?'>;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(message.into()))
}

/// Where a policy is attached, which decides whether statements name principals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Attached to a principal (or to anonymous callers): no `Principal` element.
    Identity,
    /// Attached to a repository or to the registry: every statement names its `Principal`.
    Resource,
}

/// `Allow` or `Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses, whatever else grants.
    Deny,
}

/// A list of patterns that must match (`Action`, `Resource`) or must not (`NotAction`, `NotResource`).
#[derive(Debug, Clone)]
struct Matcher {
    negated: bool,
    raw: Vec<String>,
    patterns: Vec<Pattern>,
}

impl Matcher {
    fn matches(&self, value: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(value)) != self.negated
    }
}

/// Who a resource-policy statement is about.
#[derive(Debug, Clone)]
enum Principals {
    /// `"*"`: anyone, anonymous callers included.
    Anyone,
    /// `{"AWS": [...]}`: these ARNs (`arn:aws:iam::<id>:root` stands for every principal of
    /// that account).
    Arns(Vec<String>),
}

/// A condition operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringLike,
    StringNotLike,
    IpAddress,
    NotIpAddress,
    Bool,
    DateLessThan,
    DateGreaterThan,
}

/// A condition key Ferry can supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConditionKey {
    SourceIp,
    Username,
    SecureTransport,
    CurrentTime,
    PrincipalArn,
}

/// One operator on one key with its values (any value may match).
#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    key: ConditionKey,
    values: Vec<ConditionValue>,
}

#[derive(Debug, Clone)]
enum ConditionValue {
    Text(String),
    Like(Pattern),
    Network(ipnet::IpNet),
    Flag(bool),
    Time(SystemTime),
}

/// One statement.
#[derive(Debug, Clone)]
struct Statement {
    sid: Option<String>,
    effect: Effect,
    principals: Option<Principals>,
    actions: Matcher,
    resources: Option<Matcher>,
    conditions: Vec<Condition>,
}

/// A parsed policy document.
#[derive(Debug, Clone)]
pub struct Policy {
    statements: Vec<Statement>,
}

/// Who is asking, as a policy sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// A principal: its ARN (`arn:aws:iam::<account>:user/<name>`), account and user name.
    Principal {
        /// The ARN.
        arn: String,
        /// The 12-digit account it belongs to.
        account: String,
        /// Its user name (`aws:username`).
        username: String,
    },
}

/// What a request carries besides caller, action and resource, for conditions.
#[derive(Debug, Clone)]
pub struct Context {
    /// `aws:SourceIp`.
    pub source_ip: IpAddr,
    /// `aws:SecureTransport`: whether it arrived over TLS.
    pub secure_transport: bool,
    /// `aws:CurrentTime`.
    pub current_time: SystemTime,
}

/// One question for [`evaluate`].
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who asks.
    pub caller: &'a Caller,
    /// The action, `ecr:<Operation>`.
    pub action: &'a str,
    /// The resource's ARN, or `*` for registry-wide actions.
    pub resource: &'a str,
    /// Conditions' inputs.
    pub context: &'a Context,
}

/// The answer, naming the statement that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A `Deny` applied (its `Sid`, if it has one).
    ExplicitDeny(Option<String>),
    /// An `Allow` applied and no `Deny` did.
    Allow(Option<String>),
    /// Nothing applied.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

impl Policy {
    /// Parses a document attached as `kind`; anything this module does not understand refuses
    /// the whole document.
    pub fn parse(text: &str, kind: PolicyKind) -> Result<Self, PolicyError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| PolicyError(format!("not JSON: {e}")))?;
        let Value::Object(doc) = doc else { return refuse("a policy is a JSON object") };
        let mut statements = None;
        for (key, value) in &doc {
            match key.as_str() {
                "Version" => match value.as_str() {
                    Some("2012-10-17" | "2008-10-17") => {}
                    _ => return refuse("Version must be \"2012-10-17\" or \"2008-10-17\""),
                },
                "Id" => {
                    if !value.is_string() {
                        return refuse("Id must be a string");
                    }
                }
                "Statement" => {
                    let list = match value {
                        Value::Array(list) => list.iter().collect::<Vec<_>>(),
                        Value::Object(_) => vec![value],
                        _ => return refuse("Statement must be an object or a list of objects"),
                    };
                    if list.is_empty() {
                        return refuse("Statement must not be empty");
                    }
                    statements = Some(list.into_iter().map(|s| Statement::parse(s, kind)).collect::<Result<_, _>>()?);
                }
                other => return refuse(format!("unknown policy element {other:?}")),
            }
        }
        let Some(statements) = statements else { return refuse("a policy needs a Statement") };
        Ok(Self { statements })
    }

    /// Whether every statement names only actions matching one of `allowed` (lowercase, exact
    /// or `ecr:*`), and none uses `NotAction`.
    pub fn only_actions(&self, allowed: &[&str]) -> bool {
        self.statements.iter().all(|s| !s.actions.negated) && {
            let raw = &self.raw_actions();
            raw.iter().all(|a| allowed.iter().any(|ok| a.eq_ignore_ascii_case(ok)))
        }
    }

    fn raw_actions(&self) -> Vec<String> {
        self.statements.iter().flat_map(|s| s.actions.raw.iter().cloned()).collect()
    }
}

/// A JSON string or list of strings.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| PolicyError(format!("{what} entries must be strings")))
            })
            .collect(),
        _ => refuse(format!("{what} must be a string or a non-empty list of strings")),
    }
}

/// Condition values: strings, numbers or booleans, alone or in a list.
fn condition_strings(value: &Value) -> Result<Vec<String>, PolicyError> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => refuse("condition values must be strings, numbers or booleans"),
    };
    match value {
        Value::Array(list) if !list.is_empty() => list.iter().map(one).collect(),
        Value::Array(_) => refuse("a condition needs at least one value"),
        v => Ok(vec![one(v)?]),
    }
}

fn patterns(values: &[String], case_insensitive: bool) -> Vec<Pattern> {
    values.iter().map(|v| if case_insensitive { Pattern::new_case_insensitive(v) } else { Pattern::new(v) }).collect()
}

impl Statement {
    fn parse(value: &Value, kind: PolicyKind) -> Result<Self, PolicyError> {
        let Value::Object(map) = value else { return refuse("each Statement is an object") };
        let (mut sid, mut effect, mut principals, mut actions, mut resources, mut conditions) =
            (None, None, None, None, None, Vec::new());
        for (key, value) in map {
            match key.as_str() {
                "Sid" => {
                    sid = Some(value.as_str().ok_or_else(|| PolicyError("Sid must be a string".into()))?.to_owned())
                }
                "Effect" => {
                    effect = Some(match value.as_str() {
                        Some("Allow") => Effect::Allow,
                        Some("Deny") => Effect::Deny,
                        _ => return refuse("Effect must be \"Allow\" or \"Deny\""),
                    })
                }
                "Principal" => principals = Some(parse_principals(value)?),
                "Action" | "NotAction" => {
                    if actions.is_some() {
                        return refuse("a statement has Action or NotAction, not both");
                    }
                    let values = strings(value, key)?;
                    if let Some(bad) = values.iter().find(|a| !valid_action(a)) {
                        return refuse(format!("{bad:?} is not an action such as \"ecr:BatchGetImage\" or \"ecr:*\""));
                    }
                    let patterns = patterns(&values, true);
                    actions = Some(Matcher { negated: key == "NotAction", raw: values, patterns });
                }
                "Resource" | "NotResource" => {
                    if resources.is_some() {
                        return refuse("a statement has Resource or NotResource, not both");
                    }
                    let values = strings(value, key)?;
                    let patterns = patterns(&values, false);
                    resources = Some(Matcher { negated: key == "NotResource", raw: values, patterns });
                }
                "Condition" => conditions = parse_conditions(value)?,
                other => return refuse(format!("unknown statement element {other:?}")),
            }
        }
        let Some(effect) = effect else { return refuse("a statement needs an Effect") };
        let Some(actions) = actions else { return refuse("a statement needs an Action or NotAction") };
        match (kind, &principals) {
            (PolicyKind::Identity, Some(_)) => return refuse("an identity policy names no Principal"),
            (PolicyKind::Resource, None) => return refuse("each statement of a resource policy needs a Principal"),
            _ => {}
        }
        if kind == PolicyKind::Identity && resources.is_none() {
            return refuse("each statement of an identity policy needs a Resource or NotResource");
        }
        Ok(Self { sid, effect, principals, actions, resources, conditions })
    }

    /// Whether the statement is about this request.
    fn applies(&self, request: &Request<'_>) -> bool {
        self.actions.matches(request.action)
            // A resource policy's statement without Resource covers what it is attached to.
            && self.resources.as_ref().is_none_or(|r| r.matches(request.resource))
            && self.principals.as_ref().is_none_or(|p| p.matches(request.caller))
            && self.conditions.iter().all(|c| c.holds(request))
    }
}

/// `ecr:Operation`, `ecr:*`, `*`, with `?`/`*` wildcards in the operation.
fn valid_action(a: &str) -> bool {
    if a == "*" {
        return true;
    }
    match a.split_once(':') {
        Some((service, op)) => {
            !service.is_empty()
                && service.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !op.is_empty()
                && op.chars().all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?')
        }
        None => false,
    }
}

fn parse_principals(value: &Value) -> Result<Principals, PolicyError> {
    match value {
        Value::String(s) if s == "*" => Ok(Principals::Anyone),
        Value::Object(map) => {
            let mut arns = Vec::new();
            for (key, value) in map {
                if key != "AWS" {
                    return refuse(format!("Principal {key:?} is not supported: use \"AWS\""));
                }
                for arn in strings(value, "Principal.AWS")? {
                    if arn == "*" {
                        return Ok(Principals::Anyone);
                    }
                    let account_only = arn.len() == 12 && arn.bytes().all(|b| b.is_ascii_digit());
                    if account_only {
                        // A bare account id means that account's root, as in IAM.
                        arns.push(format!("arn:aws:iam::{arn}:root"));
                    } else if arn.starts_with("arn:aws:iam::") {
                        arns.push(arn);
                    } else {
                        return refuse(format!(
                            "{arn:?} is not a principal ARN such as \"arn:aws:iam::123456789012:user/ci\""
                        ));
                    }
                }
            }
            if arns.is_empty() {
                return refuse("Principal needs at least one ARN");
            }
            Ok(Principals::Arns(arns))
        }
        _ => refuse("Principal must be \"*\" or {\"AWS\": ARN or [ARNs]}"),
    }
}

impl Principals {
    fn matches(&self, caller: &Caller) -> bool {
        match (self, caller) {
            (Self::Anyone, _) => true,
            (Self::Arns(_), Caller::Anonymous) => false,
            (Self::Arns(arns), Caller::Principal { arn, account, .. }) => arns.iter().any(|a| {
                a == arn
                    || a.strip_prefix("arn:aws:iam::").and_then(|r| r.strip_suffix(":root")) == Some(account.as_str())
            }),
        }
    }
}

fn parse_conditions(value: &Value) -> Result<Vec<Condition>, PolicyError> {
    let Value::Object(operators) = value else { return refuse("Condition must be an object") };
    let mut out = Vec::new();
    for (op, keys) in operators {
        let operator = match op.as_str() {
            "StringEquals" => Operator::StringEquals,
            "StringNotEquals" => Operator::StringNotEquals,
            "StringLike" => Operator::StringLike,
            "StringNotLike" => Operator::StringNotLike,
            "IpAddress" => Operator::IpAddress,
            "NotIpAddress" => Operator::NotIpAddress,
            "Bool" => Operator::Bool,
            "DateLessThan" => Operator::DateLessThan,
            "DateGreaterThan" => Operator::DateGreaterThan,
            other => return refuse(format!("condition operator {other:?} is not supported")),
        };
        let Value::Object(keys) = keys else { return refuse(format!("{op} must map condition keys to values")) };
        for (key, values) in keys {
            let key = match key.to_ascii_lowercase().as_str() {
                "aws:sourceip" => ConditionKey::SourceIp,
                "aws:username" => ConditionKey::Username,
                "aws:securetransport" => ConditionKey::SecureTransport,
                "aws:currenttime" => ConditionKey::CurrentTime,
                "aws:principalarn" => ConditionKey::PrincipalArn,
                _ => return refuse(format!("condition key {key:?} is not supported")),
            };
            let values = condition_strings(values)?
                .into_iter()
                .map(|v| parse_value(operator, key, v))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Condition { operator, key, values });
        }
    }
    Ok(out)
}

fn parse_value(operator: Operator, key: ConditionKey, v: String) -> Result<ConditionValue, PolicyError> {
    let fits = |ok: bool| if ok { Ok(()) } else { refuse(format!("{operator:?} does not apply to {key:?}")) };
    match operator {
        Operator::StringEquals | Operator::StringNotEquals => {
            fits(matches!(key, ConditionKey::Username | ConditionKey::PrincipalArn))?;
            Ok(ConditionValue::Text(v))
        }
        Operator::StringLike | Operator::StringNotLike => {
            fits(matches!(key, ConditionKey::Username | ConditionKey::PrincipalArn))?;
            Ok(ConditionValue::Like(Pattern::new(&v)))
        }
        Operator::IpAddress | Operator::NotIpAddress => {
            fits(key == ConditionKey::SourceIp)?;
            let net = v
                .parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| PolicyError(format!("{v:?} is not an address or CIDR block")))?;
            Ok(ConditionValue::Network(net))
        }
        Operator::Bool => {
            fits(key == ConditionKey::SecureTransport)?;
            match v.to_ascii_lowercase().as_str() {
                "true" => Ok(ConditionValue::Flag(true)),
                "false" => Ok(ConditionValue::Flag(false)),
                _ => refuse(format!("{v:?} is not true or false")),
            }
        }
        Operator::DateLessThan | Operator::DateGreaterThan => {
            fits(key == ConditionKey::CurrentTime)?;
            let time = humantime::parse_rfc3339_weak(&v)
                .ok()
                .or_else(|| v.parse::<u64>().ok().and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))))
                .ok_or_else(|| PolicyError(format!("{v:?} is not a date such as \"2026-01-01T00:00:00Z\"")))?;
            Ok(ConditionValue::Time(time))
        }
    }
}

impl Condition {
    fn holds(&self, request: &Request<'_>) -> bool {
        let ctx = request.context;
        let text = match (self.key, request.caller) {
            (ConditionKey::Username, Caller::Principal { username, .. }) => Some(username.as_str()),
            (ConditionKey::PrincipalArn, Caller::Principal { arn, .. }) => Some(arn.as_str()),
            _ => None,
        };
        let any = |f: &dyn Fn(&ConditionValue) -> bool| self.values.iter().any(f);
        match self.operator {
            // A missing key never equals or matches; the negated forms then hold.
            Operator::StringEquals => text.is_some_and(|t| any(&|v| matches!(v, ConditionValue::Text(x) if x == t))),
            Operator::StringNotEquals => {
                !text.is_some_and(|t| any(&|v| matches!(v, ConditionValue::Text(x) if x == t)))
            }
            Operator::StringLike => {
                text.is_some_and(|t| any(&|v| matches!(v, ConditionValue::Like(p) if p.matches(t))))
            }
            Operator::StringNotLike => {
                !text.is_some_and(|t| any(&|v| matches!(v, ConditionValue::Like(p) if p.matches(t))))
            }
            Operator::IpAddress => any(&|v| matches!(v, ConditionValue::Network(n) if n.contains(&ctx.source_ip))),
            Operator::NotIpAddress => !any(&|v| matches!(v, ConditionValue::Network(n) if n.contains(&ctx.source_ip))),
            Operator::Bool => any(&|v| matches!(v, ConditionValue::Flag(b) if *b == ctx.secure_transport)),
            Operator::DateLessThan => any(&|v| matches!(v, ConditionValue::Time(t) if ctx.current_time < *t)),
            Operator::DateGreaterThan => any(&|v| matches!(v, ConditionValue::Time(t) if ctx.current_time > *t)),
        }
    }
}

/// Resource policies (repositories', the registry's) parsed once per text: keyed by the text's
/// SHA-256, so a changed policy is a new entry and nothing needs invalidating. Bounded.
pub struct ParsedPolicies {
    cache: moka::sync::Cache<[u8; 32], Arc<Policy>>,
}

impl Default for ParsedPolicies {
    fn default() -> Self {
        Self { cache: moka::sync::Cache::builder().max_capacity(10_000).build() }
    }
}

impl ParsedPolicies {
    /// `text` as a resource policy, parsed (or from the cache).
    pub fn resource(&self, text: &str) -> Result<Arc<Policy>, PolicyError> {
        let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
        if let Some(p) = self.cache.get(&key) {
            return Ok(p);
        }
        let parsed = Arc::new(Policy::parse(text, PolicyKind::Resource)?);
        self.cache.insert(key, parsed.clone());
        Ok(parsed)
    }
}

/// The one evaluation: default deny; an explicit `Deny` in any applicable policy wins;
/// otherwise an `Allow` in any identity or resource policy is enough.
pub fn evaluate(request: &Request<'_>, policies: &[&Policy]) -> Decision {
    let mut allowed = None;
    for policy in policies {
        for statement in &policy.statements {
            if !statement.applies(request) {
                continue;
            }
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny(statement.sid.clone()),
                Effect::Allow => {
                    if allowed.is_none() {
                        allowed = Some(statement.sid.clone());
                    }
                }
            }
        }
    }
    match allowed {
        Some(sid) => Decision::Allow(sid),
        None => Decision::ImplicitDeny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "123456789012";

    fn ctx() -> Context {
        Context {
            source_ip: "10.0.0.5".parse().unwrap(),
            secure_transport: true,
            current_time: humantime::parse_rfc3339("2026-06-01T00:00:00Z").unwrap(),
        }
    }

    fn user(name: &str) -> Caller {
        Caller::Principal {
            arn: format!("arn:aws:iam::{ACCOUNT}:user/{name}"),
            account: ACCOUNT.into(),
            username: name.into(),
        }
    }

    fn repo(name: &str) -> String {
        format!("arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{name}")
    }

    fn decide(
        policies: &[(&str, PolicyKind)],
        caller: &Caller,
        action: &str,
        resource: &str,
        ctx: &Context,
    ) -> Decision {
        let parsed: Vec<Policy> = policies.iter().map(|(p, k)| Policy::parse(p, *k).unwrap()).collect();
        let refs: Vec<&Policy> = parsed.iter().collect();
        evaluate(&Request { caller, action, resource, context: ctx }, &refs)
    }

    #[test]
    fn a_table_of_decisions() {
        use PolicyKind::{Identity as I, Resource as R};
        let ci_push = r#"{"Version":"2012-10-17","Statement":[{"Sid":"push","Effect":"Allow","Action":["ecr:Put*","ecr:InitiateLayerUpload","ecr:UploadLayerPart","ecr:CompleteLayerUpload","ecr:BatchGetImage"],"Resource":"arn:aws:ecr:us-east-1:123456789012:repository/team-a/*"}]}"#;
        let deny_secret = r#"{"Version":"2012-10-17","Statement":{"Sid":"nosecret","Effect":"Deny","Action":"ecr:*","Resource":"arn:aws:ecr:*:*:repository/team-a/secret"}}"#;
        let repo_public = r#"{"Version":"2012-10-17","Statement":[{"Sid":"anyone","Effect":"Allow","Principal":"*","Action":["ecr:BatchGetImage","ecr:GetDownloadUrlForLayer"]}]}"#;
        let repo_root = r#"{"Version":"2012-10-17","Statement":[{"Sid":"acct","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"ecr:BatchGetImage"}]}"#;
        let not_action = r#"{"Version":"2012-10-17","Statement":[{"Sid":"all-but-delete","Effect":"Allow","NotAction":"ecr:BatchDeleteImage","Resource":"*"}]}"#;
        let from_office = r#"{"Version":"2012-10-17","Statement":[{"Sid":"office","Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":["10.0.0.0/8"]},"Bool":{"aws:SecureTransport":"true"}}}]}"#;
        let until = r#"{"Version":"2012-10-17","Statement":[{"Sid":"until","Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"DateLessThan":{"aws:CurrentTime":"2026-01-01T00:00:00Z"}}}]}"#;
        let named = r#"{"Version":"2012-10-17","Statement":[{"Sid":"named","Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"StringLike":{"aws:username":"c?"},"StringNotEquals":{"aws:PrincipalArn":"arn:aws:iam::123456789012:user/cx"}}}]}"#;
        let c = ctx();
        let ci = user("ci");
        let cx = user("cx");
        let allow = |s: &str| Decision::Allow(Some(s.into()));
        #[rustfmt::skip]
        type Row<'a> = (Vec<(&'a str, PolicyKind)>, &'a Caller, &'a str, String, Decision);
        let table: Vec<Row> = vec![
            (vec![(ci_push, I)], &ci, "ecr:PutImage", repo("team-a/app"), allow("push")),
            (vec![(ci_push, I)], &ci, "ECR:putimage", repo("team-a/app"), allow("push")),
            (vec![(ci_push, I)], &ci, "ecr:PutImage", repo("team-b/app"), Decision::ImplicitDeny),
            (vec![(ci_push, I)], &ci, "ecr:BatchDeleteImage", repo("team-a/app"), Decision::ImplicitDeny),
            (
                vec![(ci_push, I), (deny_secret, I)],
                &ci,
                "ecr:PutImage",
                repo("team-a/secret"),
                Decision::ExplicitDeny(Some("nosecret".into())),
            ),
            (vec![(repo_public, R)], &Caller::Anonymous, "ecr:BatchGetImage", repo("public/x"), allow("anyone")),
            (vec![(repo_public, R)], &Caller::Anonymous, "ecr:PutImage", repo("public/x"), Decision::ImplicitDeny),
            (vec![(repo_root, R)], &ci, "ecr:BatchGetImage", repo("x"), allow("acct")),
            (vec![(repo_root, R)], &Caller::Anonymous, "ecr:BatchGetImage", repo("x"), Decision::ImplicitDeny),
            (vec![(not_action, I)], &ci, "ecr:PutImage", repo("x"), allow("all-but-delete")),
            (vec![(not_action, I)], &ci, "ecr:BatchDeleteImage", repo("x"), Decision::ImplicitDeny),
            (vec![(from_office, I)], &ci, "ecr:PutImage", repo("x"), allow("office")),
            (vec![(until, I)], &ci, "ecr:PutImage", repo("x"), Decision::ImplicitDeny),
            (vec![(named, I)], &ci, "ecr:PutImage", repo("x"), allow("named")),
            (vec![(named, I)], &cx, "ecr:PutImage", repo("x"), Decision::ImplicitDeny),
            (vec![(named, I)], &Caller::Anonymous, "ecr:PutImage", repo("x"), Decision::ImplicitDeny),
        ];
        for (i, (policies, caller, action, resource, want)) in table.into_iter().enumerate() {
            assert_eq!(decide(&policies, caller, action, &resource, &c), want, "row {i}: {action} on {resource}");
        }
        let elsewhere = Context { source_ip: "192.168.1.1".parse().unwrap(), ..ctx() };
        assert_eq!(decide(&[(from_office, I)], &ci, "ecr:PutImage", &repo("x"), &elsewhere), Decision::ImplicitDeny);
        let clear = Context { secure_transport: false, ..ctx() };
        assert_eq!(decide(&[(from_office, I)], &ci, "ecr:PutImage", &repo("x"), &clear), Decision::ImplicitDeny);
    }

    #[test]
    fn documents_are_refused_whole() {
        for (bad, kind) in [
            ("", PolicyKind::Identity),
            ("[]", PolicyKind::Identity),
            (r#"{"Version":"2012-10-17"}"#, PolicyKind::Identity),
            (r#"{"Version":"2099-01-01","Statement":[]}"#, PolicyKind::Identity),
            (r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*"}]}"#, PolicyKind::Identity),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*","Principal":"*"}]}"#,
                PolicyKind::Identity,
            ),
            (r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*"}]}"#, PolicyKind::Resource),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Action":"ecr:*","Resource":"*"}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*","Extra":1}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"NumericEquals":{"aws:username":"1"}}}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"StringEquals":{"aws:Referer":"x"}}}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"not-an-ip"}}}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"not an action","Resource":"*"}]}"#,
                PolicyKind::Identity,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"ecr:*"}]}"#,
                PolicyKind::Resource,
            ),
            (
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","NotAction":"ecr:x","Resource":"*"}]}"#,
                PolicyKind::Identity,
            ),
        ] {
            assert!(Policy::parse(bad, kind).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_policies_may_name_only_some_actions() {
        let p = Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":["ecr:ReplicateImage","ecr:CreateRepository"],"Resource":"*"}]}"#,
            PolicyKind::Resource,
        )
        .unwrap();
        assert!(p.only_actions(&[
            "ecr:ReplicateImage",
            "ecr:CreateRepository",
            "ecr:BatchImportUpstreamImage",
            "ecr:*"
        ]));
        assert!(!p.only_actions(&["ecr:ReplicateImage"]));
    }
}
