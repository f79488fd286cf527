//! The one error type at the boundary and the one place it becomes a response:
//! status, AWS's JSON message, and whether the connection must close.

use crate::parse::HeadError;

/// Why the gateway answered instead of the integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no stage or route matches")]
    RouteNotFound,
    #[error("{0}")]
    BadHead(HeadError),
    #[error("invalid request body: {0}")]
    BadBody(&'static str),
    #[error("request body larger than the limit")]
    BodyTooLarge,
    #[error("request head not received in time")]
    HeaderTimeout,
    #[error("integration did not answer in time")]
    IntegrationTimeout,
    #[error("integration refused the connection")]
    UpstreamRefused,
    #[error("integration failed: {0}")]
    UpstreamFailed(&'static str),
    #[error("throttled")]
    Throttled,
    #[error("API key refused: {0:?}")]
    Forbidden(crate::keys::KeyRefusal),
    #[error("usage plan quota spent")]
    QuotaExceeded,
    #[error("Cache-Control: max-age=0 from a caller not authorized to invalidate")]
    CacheControlForbidden,
}

/// A gateway response, ready to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// The JSON body, `{"message":"..."}`, AWS's wording.
    pub body: &'static str,
    /// Close the connection after answering: the byte stream can no longer be trusted
    /// (malformed framing) or an unread body is still on the wire.
    pub close: bool,
    /// AWS's `x-amzn-ErrorType` value, where AWS sends one.
    pub error_type: Option<&'static str>,
}

impl GatewayError {
    pub fn refusal(self) -> Refusal {
        let (status, body, close) = match self {
            Self::RouteNotFound => (404, r#"{"message":"Not Found"}"#, false),
            Self::BadHead(HeadError::TooLarge) => (
                431,
                r#"{"message":"Request Header Fields Too Large"}"#,
                true,
            ),
            Self::BadHead(HeadError::Version) => {
                (505, r#"{"message":"HTTP Version Not Supported"}"#, true)
            }
            Self::BadHead(HeadError::UnsupportedCoding) => {
                (501, r#"{"message":"Not Implemented"}"#, true)
            }
            Self::BadHead(HeadError::Expectation) => {
                (417, r#"{"message":"Expectation Failed"}"#, true)
            }
            Self::BadHead(HeadError::Malformed(_)) | Self::BadBody(_) => {
                (400, r#"{"message":"Bad Request"}"#, true)
            }
            Self::BodyTooLarge => (413, r#"{"message":"Request Too Long"}"#, true),
            Self::HeaderTimeout => (408, r#"{"message":"Request Timeout"}"#, true),
            Self::IntegrationTimeout => (504, r#"{"message":"Endpoint request timed out"}"#, false),
            Self::UpstreamRefused => (503, r#"{"message":"Service Unavailable"}"#, false),
            Self::UpstreamFailed(_) => (502, r#"{"message":"Bad Gateway"}"#, false),
            Self::Throttled => (429, r#"{"message":"Too Many Requests"}"#, false),
            Self::Forbidden(_) => (403, r#"{"message":"Forbidden"}"#, false),
            Self::QuotaExceeded => (429, r#"{"message":"Limit Exceeded"}"#, false),
            // AWS's FAIL_WITH_403: "returns a 403 Unauthorized response".
            Self::CacheControlForbidden => (403, r#"{"message":"Unauthorized"}"#, false),
        };
        let error_type = match self {
            Self::Throttled => Some("TooManyRequestsException"),
            Self::Forbidden(_) => Some("ForbiddenException"),
            Self::QuotaExceeded => Some("LimitExceededException"),
            _ => None,
        };
        Refusal {
            status,
            body,
            close,
            error_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording_and_status_follow_the_contract() {
        let table = [
            (GatewayError::RouteNotFound, 404, "Not Found"),
            (GatewayError::BodyTooLarge, 413, "Request Too Long"),
            (
                GatewayError::IntegrationTimeout,
                504,
                "Endpoint request timed out",
            ),
            (GatewayError::UpstreamRefused, 503, "Service Unavailable"),
            (GatewayError::UpstreamFailed("reset"), 502, "Bad Gateway"),
            (GatewayError::Throttled, 429, "Too Many Requests"),
            (GatewayError::QuotaExceeded, 429, "Limit Exceeded"),
            (
                GatewayError::Forbidden(crate::keys::KeyRefusal::Missing),
                403,
                "Forbidden",
            ),
            (
                GatewayError::BadHead(HeadError::TooLarge),
                431,
                "Request Header Fields Too Large",
            ),
            (
                GatewayError::BadHead(HeadError::Malformed("x")),
                400,
                "Bad Request",
            ),
        ];
        for (err, status, message) in table {
            let r = err.refusal();
            assert_eq!(r.status, status, "{err}");
            assert_eq!(r.body, format!(r#"{{"message":"{message}"}}"#));
        }
    }
}
