//! Gateway responses (`gateway_responses` of an API): AWS's response types, and
//! a stage's overrides of the status, headers and body of the answers the
//! gateway gives itself. Compiled once per stage (stage values and stage
//! variables already substituted, header lines already encoded); a request
//! only fills in its own values (`$context.requestId`, the error message).

use std::fmt::Write as _;

/// AWS's gateway response types (`aws-apigw.md` §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseType {
    AccessDenied,
    ApiConfigurationError,
    AuthorizerConfigurationError,
    AuthorizerFailure,
    BadRequestParameters,
    BadRequestBody,
    Default4xx,
    Default5xx,
    ExpiredToken,
    IntegrationFailure,
    IntegrationTimeout,
    InvalidApiKey,
    InvalidSignature,
    MissingAuthenticationToken,
    QuotaExceeded,
    RequestTooLarge,
    ResourceNotFound,
    Throttled,
    Unauthorized,
    UnsupportedMediaType,
    WafFiltered,
}

/// Every type, by its name in the config (and in AWS's exports).
pub const TYPES: [(&str, ResponseType); 21] = [
    ("ACCESS_DENIED", ResponseType::AccessDenied),
    (
        "API_CONFIGURATION_ERROR",
        ResponseType::ApiConfigurationError,
    ),
    (
        "AUTHORIZER_CONFIGURATION_ERROR",
        ResponseType::AuthorizerConfigurationError,
    ),
    ("AUTHORIZER_FAILURE", ResponseType::AuthorizerFailure),
    ("BAD_REQUEST_PARAMETERS", ResponseType::BadRequestParameters),
    ("BAD_REQUEST_BODY", ResponseType::BadRequestBody),
    ("DEFAULT_4XX", ResponseType::Default4xx),
    ("DEFAULT_5XX", ResponseType::Default5xx),
    ("EXPIRED_TOKEN", ResponseType::ExpiredToken),
    ("INTEGRATION_FAILURE", ResponseType::IntegrationFailure),
    ("INTEGRATION_TIMEOUT", ResponseType::IntegrationTimeout),
    ("INVALID_API_KEY", ResponseType::InvalidApiKey),
    ("INVALID_SIGNATURE", ResponseType::InvalidSignature),
    (
        "MISSING_AUTHENTICATION_TOKEN",
        ResponseType::MissingAuthenticationToken,
    ),
    ("QUOTA_EXCEEDED", ResponseType::QuotaExceeded),
    ("REQUEST_TOO_LARGE", ResponseType::RequestTooLarge),
    ("RESOURCE_NOT_FOUND", ResponseType::ResourceNotFound),
    ("THROTTLED", ResponseType::Throttled),
    ("UNAUTHORIZED", ResponseType::Unauthorized),
    ("UNSUPPORTED_MEDIA_TYPE", ResponseType::UnsupportedMediaType),
    ("WAF_FILTERED", ResponseType::WafFiltered),
];

impl ResponseType {
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    pub fn name(self) -> &'static str {
        TYPES[self as usize].0
    }

    /// The DEFAULT type an answer of this status falls back to.
    pub fn default_for(status: u16) -> Self {
        if status >= 500 {
            Self::Default5xx
        } else {
            Self::Default4xx
        }
    }
}

/// A value an answer fills in when it is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    RequestId,
    /// The message, JSON-escaped (placed inside quotes by the template).
    Message,
    /// The message as a quoted JSON string (`$context.error.messageString`).
    MessageString,
    ResponseType,
    /// The validation failure's details (`$context.error.validationErrorString`).
    Validation,
    HttpMethod,
    Path,
    SourceIp,
}

impl Var {
    /// Whether the value comes from the request line or the peer (captured for
    /// a stage whose responses use it).
    pub fn of_request(self) -> bool {
        matches!(self, Self::HttpMethod | Self::Path | Self::SourceIp)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Box<str>),
    Var(Var),
}

/// A body or header template: text and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template(pub Box<[Piece]>);

/// What a stage's templates may read that the stage already knows.
pub struct StageValues<'a> {
    pub stage: &'a str,
    /// The API's name (also its `apiId`).
    pub api: &'a str,
    pub variables: &'a std::collections::BTreeMap<String, String>,
}

impl Template {
    /// Compiles `$context.x` and `$stageVariables.x` references (also written
    /// `${context.x}`); stage values are substituted now. An unknown variable
    /// is an error naming it.
    pub fn compile(text: &str, stage: &StageValues<'_>) -> Result<Self, String> {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, len) = if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) => (&inner[..end], end + 2),
                    None => return Err(format!("unclosed `${{` in {text:?}")),
                }
            } else {
                let name = crate::encode::var_name(after);
                (name, name.len())
            };
            if !(name.starts_with("context.") || name.starts_with("stageVariables.")) {
                lit.push('$');
                rest = after;
                continue;
            }
            rest = &after[len..];
            let var = match name {
                "context.requestId" | "context.extendedRequestId" => Var::RequestId,
                "context.error.message" => Var::Message,
                "context.error.messageString" => Var::MessageString,
                "context.error.responseType" => Var::ResponseType,
                "context.error.validationErrorString" => Var::Validation,
                "context.httpMethod" => Var::HttpMethod,
                "context.path" => Var::Path,
                "context.identity.sourceIp" => Var::SourceIp,
                "context.stage" => {
                    lit.push_str(stage.stage);
                    continue;
                }
                "context.apiId" | "context.apiName" => {
                    lit.push_str(stage.api);
                    continue;
                }
                _ => {
                    if let Some(v) = name.strip_prefix("stageVariables.") {
                        match stage.variables.get(v) {
                            Some(value) => lit.push_str(value),
                            None => return Err(format!("unknown stage variable `{v}`")),
                        }
                        continue;
                    }
                    return Err(format!(
                        "`${name}` is not a value gateway responses can use (requestId, \
                         error.message, error.messageString, error.responseType, \
                         error.validationErrorString, httpMethod, path, identity.sourceIp, \
                         stage, apiId, apiName, stageVariables.NAME)"
                    ));
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit).into()));
            }
            pieces.push(Piece::Var(var));
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit.into()));
        }
        Ok(Self(pieces.into()))
    }

    pub fn uses(&self, pred: impl Fn(Var) -> bool) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Var(v) if pred(*v)))
    }

    /// The template's static text, when it has no values.
    pub fn as_static(&self) -> Option<&str> {
        match &*self.0 {
            [] => Some(""),
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    fn render(&self, out: &mut String, v: &Values<'_>) {
        for p in &*self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(var) => v.write(*var, out),
            }
        }
    }
}

/// A request's own values, for a stage whose templates read them.
#[derive(Debug, Clone, Default)]
pub struct RequestValues {
    pub method: Box<str>,
    pub path: Box<str>,
    pub source_ip: Option<std::net::IpAddr>,
}

/// What an answer being made knows.
pub struct Values<'a> {
    pub request_id: &'a [u8],
    pub message: &'a str,
    pub kind: ResponseType,
    pub validation: &'a str,
    pub request: Option<&'a RequestValues>,
}

impl Values<'_> {
    fn write(&self, var: Var, out: &mut String) {
        match var {
            Var::RequestId => out.push_str(&String::from_utf8_lossy(self.request_id)),
            Var::Message => escape_into(out, self.message),
            Var::MessageString => {
                out.push('"');
                escape_into(out, self.message);
                out.push('"');
            }
            Var::ResponseType => out.push_str(self.kind.name()),
            Var::Validation => escape_into(out, self.validation),
            Var::HttpMethod => {
                out.push_str(self.request.map_or("", |r| &r.method));
            }
            Var::Path => escape_into(out, self.request.map_or("", |r| &r.path)),
            Var::SourceIp => {
                if let Some(ip) = self.request.and_then(|r| r.source_ip) {
                    let _ = write!(out, "{ip}");
                }
            }
        }
    }
}

/// JSON string escaping, without the quotes.
fn escape_into(out: &mut String, s: &str) {
    let quoted = serde_json::Value::from(s).to_string();
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// One configured response type.
#[derive(Debug, Clone, Default)]
pub struct Custom {
    pub status: Option<u16>,
    /// Header lines with static values, encoded (`name: value\r\n` each).
    pub headers: Box<[u8]>,
    /// Header lines whose values are templates.
    pub templated: Box<[(Box<str>, Template)]>,
    /// Replaces the built-in `content-type: application/json`.
    pub content_type: bool,
    pub body: Option<Template>,
}

/// A stage's gateway responses: a slot per type.
#[derive(Debug, Default)]
pub struct Responses {
    slots: [Option<Box<Custom>>; TYPES.len()],
    /// Some template reads the request line or the peer.
    pub needs_request: bool,
}

impl Responses {
    pub fn new(set: Vec<(ResponseType, Custom)>) -> Self {
        let mut r = Self::default();
        for (t, c) in set {
            let reads = |tpl: &Template| tpl.uses(Var::of_request);
            r.needs_request |=
                c.body.as_ref().is_some_and(reads) || c.templated.iter().any(|(_, t)| reads(t));
            r.slots[t as usize] = Some(Box::new(c));
        }
        r
    }

    /// The response an error of this type and built-in status gets: the type's
    /// own, else the DEFAULT of its class, else none (the built-in answer).
    pub fn pick(&self, kind: ResponseType, status: u16) -> Option<&Custom> {
        self.slots[kind as usize]
            .as_deref()
            .or_else(|| self.slots[ResponseType::default_for(status) as usize].as_deref())
    }
}

/// An answer made from a `Custom`: its status, extra header lines and body.
pub struct Made {
    pub status: u16,
    pub headers: Vec<u8>,
    pub content_type: bool,
    pub body: Option<String>,
}

impl Custom {
    pub fn make(&self, status: u16, v: &Values<'_>) -> Made {
        let mut headers = self.headers.to_vec();
        let mut scratch = String::new();
        for (name, tpl) in &*self.templated {
            scratch.clear();
            tpl.render(&mut scratch, v);
            headers.extend_from_slice(name.as_bytes());
            headers.extend_from_slice(b": ");
            // Values are request ids, addresses and escaped text: no line breaks.
            headers.extend(scratch.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            headers.extend_from_slice(b"\r\n");
        }
        let body = self.body.as_ref().map(|t| {
            let mut s = String::with_capacity(64);
            t.render(&mut s, v);
            s
        });
        Made {
            status: self.status.unwrap_or(status),
            headers,
            content_type: self.content_type,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_values(vars: &std::collections::BTreeMap<String, String>) -> StageValues<'_> {
        StageValues {
            stage: "prod",
            api: "shop",
            variables: vars,
        }
    }

    #[test]
    fn templates_fill_stage_values_now_and_request_values_later() {
        let vars = [("team".to_owned(), "orders".to_owned())].into();
        let t = Template::compile(
            r#"{"error":"$context.error.message","id":"$context.requestId","m":$context.error.messageString,"s":"${context.stage}/$stageVariables.team","t":"$context.error.responseType","cost":"$5"}"#,
            &stage_values(&vars),
        )
        .unwrap();
        let mut out = String::new();
        t.render(
            &mut out,
            &Values {
                request_id: b"abc",
                message: "Too \"Many\" Requests",
                kind: ResponseType::Throttled,
                validation: "",
                request: None,
            },
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"], "Too \"Many\" Requests");
        assert_eq!(v["m"], "Too \"Many\" Requests");
        assert_eq!(v["id"], "abc");
        assert_eq!(v["s"], "prod/orders");
        assert_eq!(v["t"], "THROTTLED");
        assert_eq!(v["cost"], "$5");
        assert!(!t.uses(Var::of_request));
    }

    #[test]
    fn unknown_values_are_refused_by_name() {
        let vars = Default::default();
        let e = Template::compile("$context.nope", &stage_values(&vars)).unwrap_err();
        assert!(e.contains("$context.nope"), "{e}");
        let e = Template::compile("$stageVariables.x", &stage_values(&vars)).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
    }

    #[test]
    fn a_type_of_its_own_goes_before_the_default_of_its_class() {
        let r = Responses::new(vec![
            (
                ResponseType::Throttled,
                Custom {
                    status: Some(503),
                    ..Custom::default()
                },
            ),
            (
                ResponseType::Default4xx,
                Custom {
                    status: Some(400),
                    ..Custom::default()
                },
            ),
        ]);
        assert_eq!(
            r.pick(ResponseType::Throttled, 429).unwrap().status,
            Some(503)
        );
        assert_eq!(
            r.pick(ResponseType::QuotaExceeded, 429).unwrap().status,
            Some(400)
        );
        assert!(r.pick(ResponseType::IntegrationTimeout, 504).is_none());
        for (name, t) in TYPES {
            assert_eq!(ResponseType::from_name(name), Some(t));
            assert_eq!(t.name(), name);
        }
    }
}
