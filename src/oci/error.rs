//! The OCI error body (`{"errors":[{"code","message","detail"}]}`) and its codes.

use serde::Serialize;

/// The error codes of the distribution spec, plus the few that Docker's registry adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// "blob unknown to registry"
    BlobUnknown,
    /// "blob upload invalid"
    BlobUploadInvalid,
    /// "blob upload unknown to registry"
    BlobUploadUnknown,
    /// "provided digest did not match uploaded content"
    DigestInvalid,
    /// "manifest references a manifest or blob unknown to registry"
    ManifestBlobUnknown,
    /// "manifest invalid"
    ManifestInvalid,
    /// "manifest unknown to registry"
    ManifestUnknown,
    /// "invalid repository name"
    NameInvalid,
    /// "repository name not known to registry"
    NameUnknown,
    /// "provided length did not match content length"
    SizeInvalid,
    /// "authentication required"
    Unauthorized,
    /// "requested access to the resource is denied"
    Denied,
    /// "the operation is unsupported"
    Unsupported,
    /// "too many requests"
    Toomanyrequests,
    /// Docker registry: "manifest tag did not match URI" / invalid tag.
    TagInvalid,
    /// Docker registry: "invalid content range".
    RangeInvalid,
    /// Docker registry: "invalid number of results requested".
    PaginationNumberInvalid,
    /// Ferry: the registry itself failed; try again.
    Unavailable,
    /// Docker registry: "unknown error" (an internal failure that retrying will not fix).
    Unknown,
}

/// Where a failure came from, for logs and the `source` label of `ferry_http_errors_total`,
/// so an upstream outage is never counted as a storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself (bad input, unknown content, refused access).
    Client,
    /// The registry's storage.
    Storage,
    /// A pull-through upstream.
    Upstream,
}

impl ErrorSource {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Storage => "storage",
            Self::Upstream => "upstream",
        }
    }
}

/// One OCI error: what the client sees, with the HTTP status and any extra headers.
#[derive(Debug, Clone, Serialize)]
pub struct OciError {
    /// The spec's error code.
    pub code: ErrorCode,
    /// A human-readable message saying what went wrong.
    pub message: String,
    /// Optional structured detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// The HTTP status code to answer with.
    #[serde(skip)]
    pub status: u16,
    /// Extra response headers (for example `Range` on a 416, `Retry-After` on a 503).
    #[serde(skip)]
    pub headers: Vec<(&'static str, String)>,
    /// Where the failure came from.
    #[serde(skip)]
    pub source: ErrorSource,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [&'a OciError; 1],
}

impl OciError {
    /// An error with the code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        use ErrorCode::*;
        let status = match code {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => 404,
            BlobUploadInvalid
            | DigestInvalid
            | ManifestBlobUnknown
            | ManifestInvalid
            | NameInvalid
            | SizeInvalid
            | TagInvalid
            | PaginationNumberInvalid => 400,
            Unauthorized => 401,
            Denied => 403,
            Unsupported => 405,
            Toomanyrequests => 429,
            RangeInvalid => 416,
            Unavailable => 503,
            Unknown => 500,
        };
        Self { code, message: message.into(), detail: None, status, headers: Vec::new(), source: ErrorSource::Client }
    }

    /// Says where the failure came from.
    pub fn from_source(mut self, source: ErrorSource) -> Self {
        self.source = source;
        self
    }

    /// Overrides the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body `{"errors":[...]}`.
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body { errors: [self] }).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_the_spec_says() {
        let e = OciError::new(ErrorCode::ManifestBlobUnknown, "blob unknown")
            .with_detail(serde_json::json!({"digest": "sha256:x"}));
        let v: serde_json::Value = serde_json::from_slice(&e.to_body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["detail"]["digest"], "sha256:x");
        assert_eq!(e.status, 400);
        assert_eq!(serde_json::to_value(ErrorCode::Toomanyrequests).unwrap(), "TOOMANYREQUESTS");
    }
}
