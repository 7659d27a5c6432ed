//! The one error type of the ECR API: `{"__type": <kind>, "message": <text>}`, 400 for every
//! modelled client exception and 500 for `ServerException`, mapped once from the registry's
//! errors.

use serde_json::json;

/// An ECR API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// The exception's name (`RepositoryNotFoundException`, ...).
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
    /// The exception's other modelled members (`lastValidByteReceived`, ...), which botocore
    /// hands to the caller beside the code.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), fields: serde_json::Map::new() }
    }

    /// The same error with one more modelled member.
    #[must_use]
    pub fn with(mut self, member: &str, value: serde_json::Value) -> Self {
        self.fields.insert(member.to_owned(), value);
        self
    }

    /// `InvalidParameterException` in AWS's wording.
    pub fn invalid(member: &str, constraint: impl std::fmt::Display) -> Self {
        Self::new(
            "InvalidParameterException",
            format!("Invalid parameter at '{member}' failed to satisfy constraint: '{constraint}'"),
        )
    }

    /// `ServerException`: the registry itself failed.
    pub fn server(message: impl Into<String>) -> Self {
        Self::new("ServerException", message)
    }

    /// The HTTP status: 500 for `ServerException`, 400 for everything else.
    pub fn status(&self) -> u16 {
        if self.kind == "ServerException" {
            500
        } else {
            400
        }
    }

    /// The body.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = self.fields.clone();
        body.insert("__type".into(), json!(self.kind));
        body.insert("message".into(), json!(self.message));
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl From<crate::storage::Error> for ApiError {
    fn from(e: crate::storage::Error) -> Self {
        crate::registry::Error::from(e).into()
    }
}

impl From<crate::registry::Error> for ApiError {
    fn from(e: crate::registry::Error) -> Self {
        use crate::registry::Error;
        match e {
            Error::Storage(_) | Error::FillStorage(_) | Error::Upstream(_) => Self::server(e.to_string()),
            Error::NameUnknown(name) => {
                Self::new("RepositoryNotFoundException", format!("The repository with name '{name}' does not exist"))
            }
            Error::RepositoryAlreadyExists(_) => Self::new("RepositoryAlreadyExistsException", e.to_string()),
            Error::RepositoryNotEmpty(_) => Self::new("RepositoryNotEmptyException", e.to_string()),
            Error::TagImmutable { .. } => Self::new("ImageTagAlreadyExistsException", e.to_string()),
            other => Self::new("InvalidParameterException", other.to_string()),
        }
    }
}
