//! Integrations: `http_proxy` URIs (with route parameters and stage variables) and
//! `mock` responses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::compile::build::Groups;
use crate::compile::build::{UpstreamTls, DEFAULT_TIMEOUT_MS, TIMEOUT_RANGE_MS};
use crate::compile::upstreams::{implicit_group, split_url};
use crate::config::{ConfigErrors, IntegrationFile};
use crate::http::respond::MockResponse;
use crate::plan::Integration;
use crate::route::RouteKey;
use crate::upstream::group::{resolve, TargetSpec};
use crate::upstream::pool::PoolKey;
use crate::upstream::target::{Endpoint, PathPart, ProxyTarget, Upstream};

#[allow(clippy::too_many_arguments)]
pub fn compile_integration(
    i: &IntegrationFile,
    key: Option<&RouteKey>,
    vars: &BTreeMap<String, String>,
    path: &str,
    stage: &str,
    up_tls: &mut UpstreamTls,
    groups: &mut Groups,
    errs: &mut ConfigErrors,
) -> Option<Integration> {
    match i {
        IntegrationFile::Lambda(_) | IntegrationFile::Aws(_) => None,
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
            upstream,
            timeout_ms,
            tls,
            ..
        } => {
            let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
            if !TIMEOUT_RANGE_MS.contains(&timeout_ms) {
                errs.push(format!("{path}.timeout_ms"), "must be from 50 to 30000");
            }
            let uri_path = format!("{path}.uri");
            let expand =
                |v: &str, key: &str, errs: &mut ConfigErrors| match expand_stage_variables(v, vars)
                {
                    Ok(u) => Some(u),
                    Err(var) => {
                        errs.push(
                            format!("{path}.{key}"),
                            format!("stage {stage:?} has no variable {var:?} used in {v:?}"),
                        );
                        None
                    }
                };
            let expanded = expand(uri, "uri", errs)?;
            let params = key.map(RouteKey::params).unwrap_or_default();
            let append_request_path = matches!(key, Some(RouteKey::Default));
            let timeout = Duration::from_millis(timeout_ms);
            if let Some(name) = upstream {
                let name = expand(name, "upstream", errs)?;
                if tls.is_some() {
                    errs.push(
                        format!("{path}.tls"),
                        "with upstream, TLS is the group's (upstreams[].tls)",
                    );
                }
                let Some(&gi) = groups.by_name.get(&name) else {
                    errs.push(
                        format!("{path}.upstream"),
                        format!("no upstream group named {name:?} (stage {stage:?})"),
                    );
                    return None;
                };
                if !expanded.is_empty() && !expanded.starts_with('/') {
                    errs.push(
                        uri_path,
                        format!("{expanded:?}: with upstream, uri is a path starting with /"),
                    );
                    return None;
                }
                let (path_only, query) = split_query(&expanded);
                let parts = match path_template(path_only, &params) {
                    Ok(p) => p,
                    Err(msg) => {
                        errs.push(uri_path, format!("{expanded:?} (stage {stage:?}): {msg}"));
                        return None;
                    }
                };
                return Some(Integration::HttpProxy(ProxyTarget {
                    to: Upstream::Group(gi),
                    host_header: groups.list[gi]
                        .targets
                        .first()
                        .map_or_else(|| "".into(), |t| t.host_header.clone()),
                    path: parts,
                    append_request_path,
                    query,
                    timeout,
                }));
            }
            let parsed = match parse_http_uri(&expanded, &params) {
                Ok(p) => p,
                Err(UriError::Invalid(msg)) => {
                    errs.push(uri_path, format!("{expanded:?} (stage {stage:?}): {msg}"));
                    return None;
                }
            };
            let (tls, tls_id) = if parsed.https {
                let (t, id) = up_tls.compile(tls.as_ref(), parsed.host, path, errs)?;
                (Some(t), id)
            } else {
                if tls.is_some() {
                    errs.push(format!("{path}.tls"), "only for https:// URIs");
                }
                (None, 0)
            };
            let to = if let Ok(ip) = parsed.host.parse::<std::net::IpAddr>() {
                let addr = std::net::SocketAddr::new(ip, parsed.port);
                Upstream::Fixed(Endpoint {
                    addr,
                    pool_key: PoolKey { addr, tls: tls_id },
                    tls,
                    host_header: parsed.authority.into(),
                    open: None,
                })
            } else {
                // A name: an implicit group, so it is resolved again while running.
                let addrs = match resolve(parsed.host, parsed.port) {
                    Ok(a) => a,
                    Err(e) => {
                        errs.push(uri_path, e);
                        return None;
                    }
                };
                Upstream::Group(implicit_group(
                    groups,
                    TargetSpec {
                        url: expanded.as_str().into(),
                        host: parsed.host.into(),
                        port: parsed.port,
                        weight: 1,
                        host_header: parsed.authority.into(),
                        tls,
                        tls_id,
                    },
                    addrs,
                ))
            };
            Some(Integration::HttpProxy(ProxyTarget {
                to,
                host_header: parsed.authority.into(),
                path: parsed.path,
                append_request_path,
                query: parsed.query,
                timeout,
            }))
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

/// `http://host[:port][/path][?query]`, split (nothing resolved).
pub struct ParsedUri<'a> {
    pub https: bool,
    /// The URI's host without its port (and without IPv6 brackets).
    pub host: &'a str,
    pub port: u16,
    /// `host[:port]` as written: the upstream `Host`.
    pub authority: &'a str,
    pub path: Vec<PathPart>,
    pub query: Option<Box<str>>,
}

pub fn parse_http_uri<'a>(uri: &'a str, params: &[&str]) -> Result<ParsedUri<'a>, UriError> {
    let (https, host, port, authority, tail) = split_url(uri).map_err(UriError::Invalid)?;
    let (path, query) = split_query(tail);
    let path = path_template(path, params).map_err(UriError::Invalid)?;
    Ok(ParsedUri {
        https,
        host,
        port,
        authority,
        path,
        query,
    })
}

fn split_query(tail: &str) -> (&str, Option<Box<str>>) {
    match tail.split_once('?') {
        Some((p, q)) => (p, Some(q).filter(|q| !q.is_empty()).map(Into::into)),
        None => (tail, None),
    }
}

/// A path with `{param}` (or `{param+}`) placeholders naming route parameters.
fn path_template(path: &str, params: &[&str]) -> Result<Vec<PathPart>, String> {
    if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err("the path has characters not allowed in a URI".into());
    }
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "unclosed `{` in the path".to_owned())?
            + open;
        if open > 0 {
            parts.push(PathPart::Literal(rest[..open].into()));
        }
        let name = rest[open + 1..close].trim_end_matches('+');
        if !params.contains(&name) {
            return Err(format!(
                "`{{{name}}}` is not a parameter of this route (it has: {})",
                if params.is_empty() {
                    "none".to_owned()
                } else {
                    params.join(", ")
                }
            ));
        }
        parts.push(PathPart::Param(name.into()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched `}` in the path".into());
    }
    if !rest.is_empty() {
        parts.push(PathPart::Literal(rest.into()));
    }
    Ok(parts)
}
