//! Request validation (AWS's request validators): required parameters, and a JSON
//! Schema for the body of the content types the route declares.

use serde_json::Value;

use crate::http::error::GatewayError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// Lower case.
    Header(Box<str>),
    Query(Box<str>),
    Path(Box<str>),
}

impl Param {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('.')
            .filter(|(_, n)| !n.is_empty())
            .ok_or_else(|| format!("{s:?}: expected header.NAME, query.NAME or path.NAME"))?;
        match kind {
            "header" => Ok(Self::Header(name.to_ascii_lowercase().into())),
            "query" | "querystring" => Ok(Self::Query(name.into())),
            "path" => Ok(Self::Path(name.into())),
            _ => Err(format!(
                "{s:?}: expected header.NAME, query.NAME or path.NAME"
            )),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Header(n) | Self::Query(n) | Self::Path(n) => n,
        }
    }
}

pub struct Validator {
    pub required: Box<[Param]>,
    pub schema: Option<jsonschema::Validator>,
    /// Lower-case media types whose bodies are validated.
    pub content_types: Box<[Box<str>]>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("required", &self.required)
            .field("schema", &self.schema.is_some())
            .field("content_types", &self.content_types)
            .finish()
    }
}

/// Compiles a schema: draft 4 (AWS's) unless `$schema` names another draft.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    let built = if schema.get("$schema").is_some() {
        jsonschema::validator_for(schema)
    } else {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(schema)
    };
    built.map_err(|e| format!("not a valid JSON Schema: {e}"))
}

fn media_type(v: &[u8]) -> &[u8] {
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    v[..end].trim_ascii()
}

impl Validator {
    /// The required parameters that are absent or blank, as AWS names them.
    pub fn missing(
        &self,
        headers: &[httparse::Header<'_>],
        query: Option<&str>,
        path_param: impl Fn(&str) -> Option<String>,
    ) -> Option<GatewayError> {
        let mut missing: Vec<&str> = Vec::new();
        for p in self.required.iter() {
            let present = match p {
                Param::Header(n) => headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case(n) && !h.value.trim_ascii().is_empty()),
                Param::Query(n) => query.is_some_and(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .any(|(k, v)| k == n.as_ref() && !v.trim().is_empty())
                }),
                Param::Path(n) => path_param(n).is_some_and(|v| !v.trim().is_empty()),
            };
            if !present {
                missing.push(p.name());
            }
        }
        if missing.is_empty() {
            return None;
        }
        Some(
            GatewayError::detailed(
                400,
                "message",
                &format!(
                    "Missing required request parameters: [{}]",
                    missing.join(", ")
                ),
                Some("BadRequestException"),
            )
            .of_type(Some(
                crate::http::responses::ResponseType::BadRequestParameters,
            )),
        )
    }

    /// Whether this request's body is validated (the route has a schema for its
    /// content type; no `Content-Type` counts as `application/json`, as AWS).
    pub fn wants_body(&self, headers: &[httparse::Header<'_>]) -> bool {
        if self.schema.is_none() {
            return false;
        }
        let ct = crate::http::parse::header(headers, "content-type")
            .map_or(&b"application/json"[..], media_type);
        self.content_types
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(ct))
    }

    /// Checks a body against the schema.
    pub fn check_body(&self, body: &[u8]) -> Result<(), GatewayError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let invalid = |why: String| {
            let mut e = GatewayError::detailed(
                400,
                "message",
                "Invalid request body",
                Some("BadRequestException"),
            )
            .of_type(Some(crate::http::responses::ResponseType::BadRequestBody));
            if let GatewayError::Detailed(d) = &mut e {
                d.log = format!("Invalid request body: {why}");
            }
            e
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let errors: Vec<String> = schema
            .iter_errors(&value)
            .take(8)
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!("[{}]", errors.join(", "))))
        }
    }
}
