//! The ECR-compatible control API (AWS JSON 1.1 on `POST /` with `X-Amz-Target`), so boto3
//! and the aws CLI work with nothing but `--endpoint-url`. Parse, then dispatch: the target
//! and body become one typed [`Operation`] with its request validated by ECR's limits; each
//! operation says which ECR actions it needs on which resources (authorized by the same policy
//! engine as the registry API) and runs as a thin call into the registry. Errors are
//! `{"__type","message"}` ([`ApiError`]). Knows nothing of HTTP framing or storage layout.

mod error;

pub use error::ApiError;

use crate::auth::authenticator::Authenticator;
use crate::auth::{Access, Action, Principal};
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
}

/// One operation, with its validated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `GetAuthorizationToken`.
    GetAuthorizationToken,
    /// `DescribeRegistry`.
    DescribeRegistry,
}

impl Operation {
    /// A stable name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetAuthorizationToken => "GetAuthorizationToken",
            Self::DescribeRegistry => "DescribeRegistry",
        }
    }

    /// Parses `X-Amz-Target` and the JSON body into an operation, checking every member.
    pub fn parse(target: &str, body: &[u8]) -> Result<Self, ApiError> {
        let Some(op) = target.strip_prefix(TARGET_PREFIX) else {
            return Err(ApiError::new("UnknownOperationException", format!("{target} is not an ECR operation")));
        };
        let input = parse_body(body)?;
        match op {
            "GetAuthorizationToken" => {
                if let Some(ids) = input.get("registryIds") {
                    let ids =
                        ids.as_array().ok_or_else(|| ApiError::invalid("registryIds", "Member must be a list"))?;
                    if ids.is_empty() || ids.len() > 10 {
                        return Err(ApiError::invalid("registryIds", "Member must have length between 1 and 10"));
                    }
                    for id in ids {
                        registry_id(id, "registryIds")?;
                    }
                }
                Ok(Self::GetAuthorizationToken)
            }
            "DescribeRegistry" => Ok(Self::DescribeRegistry),
            other => Err(ApiError::new(
                "UnknownOperationException",
                format!("The operation {other} is not supported by this registry"),
            )),
        }
    }

    /// The ECR actions it needs, on which resources.
    pub fn accesses(&self) -> Vec<Access> {
        match self {
            Self::GetAuthorizationToken => vec![Access::registry(Action::GetAuthorizationToken)],
            Self::DescribeRegistry => vec![Access::registry(Action::DescribeRegistry)],
        }
    }

    /// Runs the operation.
    pub async fn run(self, ctx: &ApiContext<'_>) -> Result<Value, ApiError> {
        match self {
            Self::GetAuthorizationToken => Ok(authorization_token(ctx)),
            Self::DescribeRegistry => {
                Ok(json!({ "registryId": ctx.registry_id, "replicationConfiguration": { "rules": [] } }))
            }
        }
    }
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
        _ => Err(ApiError::new("SerializationException", "the request body is not a JSON object")),
    }
}

/// A `registryId`: 12 digits.
fn registry_id(value: &Value, member: &str) -> Result<String, ApiError> {
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
        let op = |t: &str, b: &str| Operation::parse(&format!("{TARGET_PREFIX}{t}"), b.as_bytes());
        assert_eq!(op("GetAuthorizationToken", "{}").unwrap(), Operation::GetAuthorizationToken);
        assert_eq!(op("GetAuthorizationToken", "").unwrap(), Operation::GetAuthorizationToken);
        assert_eq!(
            op("GetAuthorizationToken", r#"{"registryIds":["123456789012"]}"#).unwrap().name(),
            "GetAuthorizationToken"
        );
        assert_eq!(
            op("GetAuthorizationToken", r#"{"registryIds":["12345"]}"#).unwrap_err().kind,
            "InvalidParameterException"
        );
        assert_eq!(op("GetAuthorizationToken", r#"{"registryIds":[]}"#).unwrap_err().kind, "InvalidParameterException");
        assert_eq!(op("GetAuthorizationToken", "[1]").unwrap_err().kind, "SerializationException");
        assert_eq!(op("LaunchRockets", "{}").unwrap_err().kind, "UnknownOperationException");
        assert_eq!(
            Operation::parse("Other.GetAuthorizationToken", b"{}").unwrap_err().kind,
            "UnknownOperationException"
        );
        assert_eq!(Operation::GetAuthorizationToken.accesses()[0].action, Action::GetAuthorizationToken);
    }
}
