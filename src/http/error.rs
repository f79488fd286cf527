//! The one error type at the boundary and the one place it becomes a response:
//! status, AWS's JSON message, and whether the connection must close.

use crate::http::parse::HeadError;
use crate::http::responses::ResponseType;

/// Why a token is refused: the `error_description` of the challenge.
pub const NO_TOKEN: &str = "no token";
pub const EXPIRED: &str = "expired";
pub const NOT_YET: &str = "not yet valid";
pub const AUDIENCE: &str = "audience";
pub const ISSUER: &str = "issuer";
pub const SIGNATURE: &str = "signature";
pub const MALFORMED: &str = "malformed";
pub const UNKNOWN_KEY: &str = "unknown key";
pub const ALGORITHM: &str = "algorithm";

/// Why a keyed request was refused (all answer 403; the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Missing,
    Unknown,
    Disabled,
    NotInPlan,
}

/// Why the gateway answered instead of the integration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no stage or route matches")]
    RouteNotFound,
    #[error("{0}")]
    BadHead(HeadError),
    #[error("invalid request body: {0}")]
    BadBody(&'static str),
    #[error("request body larger than the limit")]
    BodyTooLarge,
    /// The head past `header_timeout_ms`, or head and body past
    /// `request_timeout_ms`, from the request's first byte.
    #[error("request not received in time")]
    RequestTimeout,
    #[error("integration did not answer in time")]
    IntegrationTimeout,
    #[error("integration refused the connection")]
    UpstreamRefused,
    #[error("integration failed: {0}")]
    UpstreamFailed(&'static str),
    /// A function failed, timed out in its runtime, or answered malformed: 502
    /// `Internal Server Error`.
    #[error("function failed: {0}")]
    FunctionFailed(&'static str),
    /// An upstream group with no target to send to (none healthy, or every one
    /// at its connection cap).
    #[error("upstream unavailable: {0}")]
    Unavailable(&'static str),
    #[error("throttled")]
    Throttled,
    #[error("API key refused: {0:?}")]
    Forbidden(KeyRefusal),
    #[error("usage plan quota spent")]
    QuotaExceeded,
    #[error("Cache-Control: max-age=0 from a caller not authorized to invalidate")]
    CacheControlForbidden,
    /// No or an invalid credential (401 `Unauthorized`).
    #[error("unauthorized: {0}")]
    Unauthorized(Challenge),
    /// A valid credential without the right (403 `Forbidden`): insufficient scope,
    /// an authorizer's `isAuthorized: false`, a resource policy.
    #[error("forbidden: {0}")]
    AccessDenied(&'static str),
    /// The authorizer could not decide (500).
    #[error("authorizer failed: {0}")]
    AuthorizerFailed(&'static str),
    /// A refusal whose message names request values (SigV4, validation).
    #[error("{}", .0.log)]
    Detailed(Box<Detailed>),
}

/// How a 401 tells the client what to fix (`www-authenticate`), if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A request authorizer refused the identity, or it is missing.
    Plain(&'static str),
    /// A bearer token: RFC 6750's `invalid_token` with this description.
    Bearer(&'static str),
    /// A token without any of the route's scopes (RFC 6750's `insufficient_scope`,
    /// a 403).
    Scope,
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(why) | Self::Bearer(why) => f.write_str(why),
            Self::Scope => f.write_str("insufficient scope"),
        }
    }
}

/// A refusal with a body made for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detailed {
    pub status: u16,
    /// The JSON body.
    pub body: String,
    pub error_type: Option<&'static str>,
    /// What the log says (no secrets).
    pub log: String,
    /// Its gateway response type; `None` for answers that are not the
    /// gateway's own (an integration's refusal, the `@connections` API's).
    pub kind: Option<ResponseType>,
}

impl GatewayError {
    /// A refusal with `{"message": message}` (or `{"Message": ...}`) as its body.
    pub fn detailed(
        status: u16,
        key: &str,
        message: &str,
        error_type: Option<&'static str>,
    ) -> Self {
        let body = serde_json::json!({ key: message }).to_string();
        Self::Detailed(Box::new(Detailed {
            status,
            body,
            error_type,
            log: message.to_owned(),
            kind: Some(ResponseType::default_for(status)),
        }))
    }

    /// The same refusal as a response of this type (`None`: not customizable).
    pub fn of_type(mut self, kind: Option<ResponseType>) -> Self {
        if let Self::Detailed(d) = &mut self {
            d.kind = kind;
        }
        self
    }

    /// Which gateway response this refusal is (`gateway_responses`), if any.
    pub fn response_type(&self) -> Option<ResponseType> {
        use ResponseType as T;
        Some(match self {
            Self::Detailed(d) => return d.kind,
            Self::RouteNotFound => T::ResourceNotFound,
            Self::BodyTooLarge => T::RequestTooLarge,
            Self::IntegrationTimeout => T::IntegrationTimeout,
            Self::UpstreamRefused
            | Self::Unavailable(_)
            | Self::UpstreamFailed(_)
            | Self::FunctionFailed(_) => T::IntegrationFailure,
            Self::Throttled => T::Throttled,
            Self::Forbidden(_) => T::InvalidApiKey,
            Self::QuotaExceeded => T::QuotaExceeded,
            Self::Unauthorized(Challenge::Scope) | Self::AccessDenied(_) => T::AccessDenied,
            Self::Unauthorized(_) => T::Unauthorized,
            Self::AuthorizerFailed(_) => T::AuthorizerFailure,
            Self::BadHead(_)
            | Self::BadBody(_)
            | Self::RequestTimeout
            | Self::CacheControlForbidden => T::Default4xx,
        })
    }
}

/// A gateway response, ready to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub status: u16,
    /// The JSON body, `{"message":"..."}`, AWS's wording.
    pub body: &'a str,
    /// Close the connection after answering: the byte stream can no longer be trusted
    /// (malformed framing) or an unread body is still on the wire.
    pub close: bool,
    /// AWS's `x-amzn-ErrorType` value, where AWS sends one.
    pub error_type: Option<&'static str>,
    /// More header lines (`www-authenticate`), each ending in CRLF.
    pub headers: &'static str,
}

impl GatewayError {
    pub fn refusal(&self) -> Refusal<'_> {
        if let Self::Detailed(d) = self {
            return Refusal {
                status: d.status,
                body: &d.body,
                close: false,
                error_type: d.error_type,
                headers: "",
            };
        }
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
            Self::RequestTimeout => (408, r#"{"message":"Request Timeout"}"#, true),
            Self::IntegrationTimeout => (504, r#"{"message":"Endpoint request timed out"}"#, false),
            Self::UpstreamRefused | Self::Unavailable(_) => {
                (503, r#"{"message":"Service Unavailable"}"#, false)
            }
            Self::UpstreamFailed(_) => (502, r#"{"message":"Bad Gateway"}"#, false),
            Self::FunctionFailed(_) => (502, r#"{"message":"Internal Server Error"}"#, false),
            Self::Throttled => (429, r#"{"message":"Too Many Requests"}"#, false),
            Self::Forbidden(_) => (403, r#"{"message":"Forbidden"}"#, false),
            Self::QuotaExceeded => (429, r#"{"message":"Limit Exceeded"}"#, false),
            // AWS's FAIL_WITH_403: "returns a 403 Unauthorized response".
            Self::CacheControlForbidden => (403, r#"{"message":"Unauthorized"}"#, false),
            Self::Unauthorized(Challenge::Scope) | Self::AccessDenied(_) => {
                (403, r#"{"message":"Forbidden"}"#, false)
            }
            Self::Unauthorized(_) => (401, r#"{"message":"Unauthorized"}"#, false),
            Self::AuthorizerFailed(_) => (500, r#"{"message":"Internal Server Error"}"#, false),
            Self::Detailed(_) => unreachable!("answered above"),
        };
        let error_type = match self {
            Self::Throttled => Some("TooManyRequestsException"),
            Self::Forbidden(_) => Some("ForbiddenException"),
            Self::QuotaExceeded => Some("LimitExceededException"),
            Self::Unauthorized(Challenge::Scope) => Some("ForbiddenException"),
            Self::Unauthorized(_) => Some("UnauthorizedException"),
            Self::AccessDenied(_) => Some("ForbiddenException"),
            _ => None,
        };
        let headers = match self {
            Self::Unauthorized(Challenge::Bearer(why)) => bearer_challenge(why),
            Self::Unauthorized(Challenge::Scope) => {
                "www-authenticate: Bearer scope=\"\" error=\"insufficient_scope\" error_description=\"the token does not have the scope the route requires\"\r\n"
            }
            _ => "",
        };
        Refusal {
            status,
            body,
            close,
            error_type,
            headers,
        }
    }
}

/// AWS's JWT authorizer challenge, per description (a fixed set, so no allocation).
fn bearer_challenge(why: &str) -> &'static str {
    macro_rules! line {
        ($d:literal) => {
            concat!(
                "www-authenticate: Bearer scope=\"\" error=\"invalid_token\" error_description=\"",
                $d,
                "\"\r\n"
            )
        };
    }
    match why {
        NO_TOKEN => "www-authenticate: Bearer\r\n",
        EXPIRED => line!("the token has expired"),
        NOT_YET => line!("the token is not valid yet"),
        AUDIENCE => line!("the token does not have a valid audience"),
        ISSUER => line!("the token does not have a valid issuer"),
        SIGNATURE => line!("the token signature is invalid"),
        _ => line!("the token is invalid"),
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
            (
                GatewayError::Unavailable("no healthy target"),
                503,
                "Service Unavailable",
            ),
            (GatewayError::UpstreamFailed("reset"), 502, "Bad Gateway"),
            (GatewayError::Throttled, 429, "Too Many Requests"),
            (GatewayError::QuotaExceeded, 429, "Limit Exceeded"),
            (
                GatewayError::Forbidden(KeyRefusal::Missing),
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
