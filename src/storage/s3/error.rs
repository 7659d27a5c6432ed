//! What an S3 failure means to Ferry: throttling told apart from other failures (clients are
//! told to retry one, not the other), a failed condition told apart from an error, and the
//! SDK's whole chain of causes kept in the message (its `Display` says only "service error").
//! Owns no request; knows nothing of keys or uploads.

use crate::storage::Error;

/// The SDK's HTTP response type, which every S3 error carries.
pub(super) type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// The SDK's error for one operation.
pub(super) type SdkError<E> = aws_sdk_s3::error::SdkError<E, HttpResponse>;

/// Whether an S3 error code or HTTP status says "slow down": AWS's codes, and the statuses
/// S3-compatible servers use for the same thing.
pub(super) fn is_throttling(code: Option<&str>, status: Option<u16>) -> bool {
    matches!(code, Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests"))
        || matches!(status, Some(429 | 503))
}

/// Whether the status of a conditional PUT's failure means the condition failed: 412 (it did
/// not hold), 409 (a concurrent conditional write won), and, with `missing_counts`, 404 (an
/// `If-Match` on an object that is gone).
pub(super) fn is_condition_failed(status: Option<u16>, missing_counts: bool) -> bool {
    matches!(status, Some(412 | 409)) || (missing_counts && status == Some(404))
}

/// The HTTP status an SDK error came with, if a response arrived.
pub(super) fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// An SDK error as a storage error, the SDK's error kept as the source.
pub(super) fn sdk_error<E>(operation: &'static str, e: SdkError<E>) -> Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    use aws_sdk_s3::error::ProvideErrorMetadata as _;
    let message = detail(&e);
    if is_throttling(e.code(), status(&e)) {
        Error::Throttled { operation, message, source: Box::new(e) }
    } else {
        Error::Backend { operation, message, source: Box::new(e) }
    }
}

/// Any other failure of an S3 operation (reading a body, presigning), its cause kept.
pub(super) fn backend_error(operation: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend { operation, message: e.to_string(), source: Box::new(e) }
}

/// An error and every cause under it, `: `-separated.
pub(super) fn detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_by_code_or_status() {
        assert!(is_throttling(Some("SlowDown"), Some(503)));
        assert!(is_throttling(None, Some(429)));
        assert!(is_throttling(Some("RequestLimitExceeded"), Some(400)));
        assert!(!is_throttling(Some("AccessDenied"), Some(403)));
        assert!(!is_throttling(None, None));
    }

    #[test]
    fn a_failed_condition_is_not_an_error() {
        assert!(is_condition_failed(Some(412), false));
        assert!(is_condition_failed(Some(409), false));
        assert!(!is_condition_failed(Some(404), false));
        assert!(is_condition_failed(Some(404), true));
        assert!(!is_condition_failed(Some(500), true));
        assert!(!is_condition_failed(None, true));
    }

    #[test]
    fn the_detail_keeps_every_cause() {
        let outer = Wrapped(std::io::Error::other("connection reset"));
        assert_eq!(detail(&outer), "dispatch failure: connection reset");

        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
    }
}
