//! The one error type of the ECR API: `{"__type": <kind>, "message": <text>}`, 400 for every
//! modelled client exception and 500 for `ServerException`, mapped once from the registry's
//! errors. Every exception Ferry answers is a variant of [`EcrException`]; its name is written
//! nowhere else.

use serde_json::json;

/// Declares the exceptions: each variant's name is the exception's without `Exception`.
macro_rules! ecr_exceptions {
    ($($variant:ident;)*) => {
        /// An exception of the ECR API (or of AWS's common ones the SDKs know).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EcrException {
            $(
                #[doc = concat!("`", stringify!($variant), "Exception`.")]
                $variant,
            )*
        }

        impl EcrException {
            /// Every exception.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// Its name, as `__type` and `X-Amzn-ErrorType` carry it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!(stringify!($variant), "Exception"),)*
                }
            }
        }
    };
}

ecr_exceptions! {
    AccessDenied;
    EmptyUpload;
    ImageAlreadyExists;
    ImageDigestDoesNotMatch;
    ImageNotFound;
    ImageTagAlreadyExists;
    IncompleteSignature;
    InvalidLayer;
    InvalidLayerPart;
    InvalidParameter;
    InvalidSignature;
    InvalidTagParameter;
    LayerAlreadyExists;
    LayersNotFound;
    LifecyclePolicyNotFound;
    LifecyclePolicyPreviewInProgress;
    LifecyclePolicyPreviewNotFound;
    LimitExceeded;
    MissingAuthenticationToken;
    PullThroughCacheRuleAlreadyExists;
    PullThroughCacheRuleNotFound;
    ReferencedImagesNotFound;
    RegistryPolicyNotFound;
    ReplicationBackfillInProgress;
    ReplicationBackfillInvalidStatus;
    ReplicationBackfillNotFound;
    RepositoryAlreadyExists;
    RepositoryNotEmpty;
    RepositoryNotFound;
    RepositoryPolicyNotFound;
    SecretNotFound;
    Serialization;
    Server;
    TemplateAlreadyExists;
    TemplateNotFound;
    Throttling;
    TooManyTags;
    UnknownOperation;
    UnrecognizedClient;
    UnsupportedUpstreamRegistry;
    UploadNotFound;
    Validation;
}

impl EcrException {
    /// The HTTP status: 500 for `ServerException` (the only `fault` in the model), 400 for
    /// every client exception.
    pub fn status(self) -> u16 {
        match self {
            Self::Server => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for EcrException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ECR API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// The exception.
    pub kind: EcrException,
    /// What went wrong.
    pub message: String,
    /// The exception's other modelled members (`lastValidByteReceived`, ...), which botocore
    /// hands to the caller beside the code.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: EcrException, message: impl Into<String>) -> Self {
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
            EcrException::InvalidParameter,
            format!("Invalid parameter at '{member}' failed to satisfy constraint: '{constraint}'"),
        )
    }

    /// `ServerException`: the registry itself failed.
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(EcrException::Server, message)
    }

    /// The HTTP status (see [`EcrException::status`]).
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The body.
    pub fn to_body(&self) -> Vec<u8> {
        let mut body = self.fields.clone();
        body.insert("__type".into(), json!(self.kind.as_str()));
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
                Self::new(EcrException::RepositoryNotFound, format!("The repository with name '{name}' does not exist"))
            }
            Error::RepositoryAlreadyExists(_) => Self::new(EcrException::RepositoryAlreadyExists, e.to_string()),
            Error::RepositoryNotEmpty(_) => Self::new(EcrException::RepositoryNotEmpty, e.to_string()),
            Error::TagImmutable { .. } => Self::new(EcrException::ImageTagAlreadyExists, e.to_string()),
            other => Self::new(EcrException::InvalidParameter, other.to_string()),
        }
    }
}
