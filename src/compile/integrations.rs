//! Integrations: `http_proxy` URIs (with route parameters and stage variables) and
//! `mock` responses.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::compile::build::{UpstreamTls, DEFAULT_TIMEOUT_MS, TIMEOUT_RANGE_MS};
use crate::config::{ConfigErrors, IntegrationFile};
use crate::http::respond::MockResponse;
use crate::plan::Integration;
use crate::route::RouteKey;
use crate::upstream::target::{PathPart, ProxyTarget};

#[allow(clippy::too_many_arguments)]
pub fn compile_integration(
    i: &IntegrationFile,
    key: Option<&RouteKey>,
    vars: &BTreeMap<String, String>,
    path: &str,
    stage: &str,
    up_tls: &mut UpstreamTls,
    errs: &mut ConfigErrors,
) -> Option<Integration> {
    match i {
        IntegrationFile::Mock {
            status,
            headers,
            body,
        } => {
            if !(100..=599).contains(status) || (100..200).contains(status) {
                errs.push(format!("{path}.status"), "must be from 200 to 599");
                return None;
            }
            let mut lines = Vec::new();
            for (name, value) in headers {
                let lname = name.to_ascii_lowercase();
                let valid_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let valid_value = value
                    .bytes()
                    .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
                if !valid_name || !valid_value {
                    errs.push(
                        format!("{path}.headers.{name}"),
                        "not a valid header name and value",
                    );
                    continue;
                }
                if matches!(
                    lname.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "apigw-requestid"
                ) {
                    errs.push(
                        format!("{path}.headers.{name}"),
                        "set by the gateway; remove it from the mock",
                    );
                    continue;
                }
                lines.extend_from_slice(lname.as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value.as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
            Some(Integration::Mock(MockResponse {
                status: *status,
                header_lines: lines.into(),
                body: body.as_bytes().into(),
            }))
        }
        IntegrationFile::HttpProxy {
            uri,
            timeout_ms,
            tls,
        } => {
            let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
            if !TIMEOUT_RANGE_MS.contains(&timeout_ms) {
                errs.push(format!("{path}.timeout_ms"), "must be from 50 to 30000");
            }
            let uri_path = format!("{path}.uri");
            let expanded = match expand_stage_variables(uri, vars) {
                Ok(u) => u,
                Err(var) => {
                    errs.push(
                        uri_path,
                        format!("stage {stage:?} has no variable {var:?} used in {uri:?}"),
                    );
                    return None;
                }
            };
            let params = key.map(RouteKey::params).unwrap_or_default();
            match parse_http_uri(&expanded, &params) {
                Ok(ParsedUri {
                    mut target,
                    https,
                    host,
                }) => {
                    target.append_request_path = matches!(key, Some(RouteKey::Default));
                    target.timeout = Duration::from_millis(timeout_ms);
                    if https {
                        let (t, id) = up_tls.compile(tls.as_ref(), host, path, errs)?;
                        target.tls = Some(t);
                        target.pool_key.tls = id;
                    } else if tls.is_some() {
                        errs.push(format!("{path}.tls"), "only for https:// URIs");
                    }
                    Some(Integration::HttpProxy(target))
                }
                Err(UriError::Invalid(msg)) => {
                    errs.push(uri_path, format!("{expanded:?} (stage {stage:?}): {msg}"));
                    None
                }
            }
        }
    }
}

/// Replaces `${stage_variables.name}` (and AWS's `${stageVariables.name}`);
/// returns the name of a missing variable.
pub fn expand_stage_variables(
    uri: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(after.to_owned());
        };
        let inner = &after[..end];
        let name = inner
            .strip_prefix("stage_variables.")
            .or_else(|| inner.strip_prefix("stageVariables."))
            .ok_or_else(|| inner.to_owned())?;
        out.push_str(vars.get(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub enum UriError {
    Invalid(String),
}

/// Parses `http://host[:port][/path][?query]`, resolving the host now (the control
/// plane) so workers never do DNS.
pub struct ParsedUri<'a> {
    pub target: ProxyTarget,
    pub https: bool,
    /// The URI's host without its port.
    pub host: &'a str,
}

pub fn parse_http_uri<'a>(uri: &'a str, params: &[&str]) -> Result<ParsedUri<'a>, UriError> {
    let (rest, default_port) = if let Some(r) = uri.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = uri.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(UriError::Invalid(
            "must start with http:// or https://".into(),
        ));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() || authority.contains(['{', '}', '@', ' ']) {
        return Err(UriError::Invalid(format!(
            "host {authority:?} must be a fixed host[:port] (parameters belong in the path)"
        )));
    }
    let (host, with_port) = match authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
    {
        Some((host, _)) => (host, authority.to_owned()),
        None => (authority, format!("{authority}:{default_port}")),
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| UriError::Invalid(format!("cannot resolve {authority:?}: {e}")))?
        .next()
        .ok_or_else(|| UriError::Invalid(format!("{authority:?} resolves to no address")))?;
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(UriError::Invalid(
            "the path has characters not allowed in a URI".into(),
        ));
    }
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| UriError::Invalid("unclosed `{` in the path".into()))?
            + open;
        if open > 0 {
            parts.push(PathPart::Literal(rest[..open].into()));
        }
        let name = rest[open + 1..close].trim_end_matches('+');
        if !params.contains(&name) {
            return Err(UriError::Invalid(format!(
                "`{{{name}}}` is not a parameter of this route (it has: {})",
                if params.is_empty() {
                    "none".to_owned()
                } else {
                    params.join(", ")
                }
            )));
        }
        parts.push(PathPart::Param(name.into()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(UriError::Invalid("unmatched `}` in the path".into()));
    }
    if !rest.is_empty() {
        parts.push(PathPart::Literal(rest.into()));
    }
    let target = ProxyTarget {
        addr,
        pool_key: crate::upstream::pool::PoolKey { addr, tls: 0 },
        tls: None,
        host_header: authority.into(),
        path: parts,
        append_request_path: false,
        query: query.filter(|q| !q.is_empty()).map(Into::into),
        timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
    };
    Ok(ParsedUri {
        target,
        https: default_port == 443,
        host,
    })
}
