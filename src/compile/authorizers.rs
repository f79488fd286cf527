//! Access control of an API: resource policy, trusted proxies, CORS, authorizers
//! (JWT, request, SigV4), and what each route requires of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::compile::build::{secret, UpstreamTls};
use crate::compile::integrations::{parse_http_uri, UriError};
use crate::config::ConfigErrors;
use crate::http::tls;
use crate::upstream::group::resolve;
use crate::upstream::pool::PoolKey;
use crate::upstream::target::Endpoint;
use crate::upstream::target::PathPart;

/// An API's access control, compiled once for all its stages.
pub struct ApiAccess {
    /// Authorizer name → index into `Plan::authorizers`.
    pub by_name: HashMap<String, usize>,
    pub policy: Option<Arc<crate::policy::resource::ResourcePolicy>>,
    pub trusted: Arc<[ipnet::IpNet]>,
    pub cors: Option<Arc<crate::policy::cors::Cors>>,
    pub strip: Arc<[Box<str>]>,
}

pub fn compile_policy(
    p: &crate::config::ResourcePolicyFile,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<crate::policy::resource::ResourcePolicy>> {
    use crate::policy::resource::parse_cidrs;
    let mut cidrs = |list: &[String], key: &str| match parse_cidrs(list) {
        Ok(l) => l,
        Err(e) => {
            errs.push(format!("{path}.{key}"), e);
            Box::default()
        }
    };
    let allow_cidrs = cidrs(&p.allow_cidrs, "allow_cidrs");
    let deny_cidrs = cidrs(&p.deny_cidrs, "deny_cidrs");
    let hosts = |list: &[String]| -> Box<[Box<str>]> {
        list.iter()
            .map(|h| h.trim().to_ascii_lowercase().into())
            .collect()
    };
    Some(Arc::new(crate::policy::resource::ResourcePolicy {
        allow_cidrs,
        deny_cidrs,
        allow_hosts: hosts(&p.allow_hosts),
        deny_hosts: hosts(&p.deny_hosts),
    }))
}

/// `claim → header` maps: header names valid, not ones the gateway owns.
pub fn compile_forward(
    map: &BTreeMap<String, String>,
    path: &str,
    strip: &mut Vec<Box<str>>,
    errs: &mut ConfigErrors,
) -> Box<[(Box<str>, Box<str>)]> {
    let mut out = Vec::new();
    for (from, header) in map {
        let h = header.to_ascii_lowercase();
        let valid = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let reserved = matches!(
            h.as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "authorization"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-forwarded-port"
        );
        if !valid || reserved {
            errs.push(
                format!("{path}.forward.{from}"),
                format!("{header:?} is not a header name the gateway may set"),
            );
            continue;
        }
        if !strip.iter().any(|s| **s == *h) {
            strip.push(h.clone().into());
        }
        out.push((from.as_str().into(), h.into()));
    }
    out.into()
}

#[allow(clippy::too_many_arguments)]
pub fn compile_api_access(
    api: &crate::config::ApiFile,
    path: &str,
    up_tls: &mut UpstreamTls,
    authorizers: &mut Vec<Arc<crate::policy::access::Authorizer>>,
    config_keys: &mut Vec<crate::policy::sigv4::AccessKey>,
    key_table: &Arc<crate::policy::sigv4::KeyTable>,
    errs: &mut ConfigErrors,
) -> ApiAccess {
    use crate::config::AuthorizerFile;
    use crate::policy::access::Authorizer;
    use crate::policy::{jwt, request, sigv4};
    let mut by_name = HashMap::new();
    let mut strip: Vec<Box<str>> = Vec::new();
    for (i, a) in api.authorizers.iter().enumerate() {
        let Some(a) = a else { continue };
        let apath = format!("{path}.authorizers[{i}]");
        if by_name.contains_key(a.name()) {
            errs.push(
                format!("{apath}.name"),
                format!("duplicate authorizer {:?}", a.name()),
            );
            continue;
        }
        let compiled = match a {
            AuthorizerFile::Jwt {
                name,
                issuer,
                audience,
                jwks_uri,
                jwks,
                algorithms,
                leeway_s,
                identity_source,
                refresh_interval_s,
                forward,
            } => {
                if audience.is_empty() || audience.len() > 50 {
                    errs.push(format!("{apath}.audience"), "list 1 to 50 audiences");
                }
                if !issuer.starts_with("https://") && !issuer.starts_with("http://") {
                    errs.push(format!("{apath}.issuer"), "must be an http(s) URL");
                }
                let algorithms = match jwt::parse_algorithms(
                    algorithms
                        .as_deref()
                        .unwrap_or(&["RS256".to_owned(), "ES256".to_owned()]),
                ) {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) => {
                        errs.push(format!("{apath}.algorithms"), "list at least one");
                        continue;
                    }
                    Err(e) => {
                        errs.push(format!("{apath}.algorithms"), e);
                        continue;
                    }
                };
                let leeway_s = leeway_s.unwrap_or(60);
                if leeway_s > 300 {
                    errs.push(format!("{apath}.leeway_s"), "must be from 0 to 300");
                }
                let source = match jwt::Source::parse(
                    identity_source.as_deref().unwrap_or("header.authorization"),
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        errs.push(format!("{apath}.identity_source"), e);
                        continue;
                    }
                };
                let (initial, key_source) = match (jwks, jwks_uri) {
                    (Some(_), Some(_)) => {
                        errs.push(apath.clone(), "give jwks_uri or jwks, not both");
                        continue;
                    }
                    (Some(inline), None) => {
                        let parsed = serde_json::to_vec(inline)
                            .map_err(|e| e.to_string())
                            .and_then(|j| jwt::KeySet::parse(&j));
                        match parsed {
                            Ok(k) if !k.is_empty() => (k, jwt::KeySource::Inline),
                            Ok(_) => {
                                errs.push(format!("{apath}.jwks"), "has no RSA or EC key");
                                continue;
                            }
                            Err(e) => {
                                errs.push(format!("{apath}.jwks"), e);
                                continue;
                            }
                        }
                    }
                    (None, uri) => {
                        let (uri, discover) = match uri {
                            Some(u) => (u.clone(), false),
                            None => (
                                format!(
                                    "{}/.well-known/openid-configuration",
                                    issuer.trim_end_matches('/')
                                ),
                                true,
                            ),
                        };
                        if !uri.starts_with("https://") && !uri.starts_with("http://") {
                            errs.push(format!("{apath}.jwks_uri"), "must be an http(s) URL");
                            continue;
                        }
                        let tls = if uri.starts_with("https://") || discover {
                            match up_tls.builder.build(&tls::UpstreamTlsSpec::default()) {
                                Ok(c) => Some(c),
                                Err(e) => {
                                    errs.push(format!("{apath}.jwks_uri"), e);
                                    continue;
                                }
                            }
                        } else {
                            None
                        };
                        (
                            jwt::KeySet::default(),
                            jwt::KeySource::Remote { uri, discover, tls },
                        )
                    }
                };
                let refresh_interval_s = refresh_interval_s.unwrap_or(60);
                if refresh_interval_s > 86_400 {
                    errs.push(
                        format!("{apath}.refresh_interval_s"),
                        "must be at most 86400",
                    );
                }
                Authorizer::Jwt(jwt::JwtAuthorizer {
                    name: name.clone(),
                    issuer: issuer.clone(),
                    audience: audience.iter().map(|a| a.as_str().into()).collect(),
                    algorithms: algorithms.into(),
                    leeway_s,
                    source,
                    refresh_interval_s,
                    forward: compile_forward(forward, &apath, &mut strip, errs),
                    keys: Arc::new(jwt::KeyState::new(initial)),
                    key_source,
                    asks: jwt::Asks::default(),
                })
            }
            AuthorizerFile::Request {
                name,
                uri,
                identity_sources,
                ttl_s,
                timeout_ms,
                tls,
                forward,
            } => {
                let ttl_s = ttl_s.unwrap_or(300);
                if ttl_s > 3600 {
                    errs.push(format!("{apath}.ttl_s"), "must be from 0 to 3600");
                }
                let timeout_ms = timeout_ms.unwrap_or(10_000);
                if !(50..=30_000).contains(&timeout_ms) {
                    errs.push(format!("{apath}.timeout_ms"), "must be from 50 to 30000");
                }
                let mut sources = Vec::new();
                for (j, src) in identity_sources.iter().enumerate() {
                    match request::Identity::parse(src) {
                        Ok(s) => sources.push(s),
                        Err(e) => errs.push(format!("{apath}.identity_sources[{j}]"), e),
                    }
                }
                let parsed = match parse_http_uri(uri, &[]) {
                    Ok(p) => p,
                    Err(UriError::Invalid(msg)) => {
                        errs.push(format!("{apath}.uri"), format!("{uri:?}: {msg}"));
                        continue;
                    }
                };
                let (tls, tls_id) = if parsed.https {
                    let Some((t, id)) = up_tls.compile(tls.as_ref(), parsed.host, &apath, errs)
                    else {
                        continue;
                    };
                    (Some(t), id)
                } else {
                    if tls.is_some() {
                        errs.push(format!("{apath}.tls"), "only for https:// URIs");
                    }
                    (None, 0)
                };
                // Resolved once, here (authorizers are not upstream groups).
                let addr = match resolve(parsed.host, parsed.port) {
                    Ok(a) => a[0],
                    Err(e) => {
                        errs.push(format!("{apath}.uri"), e);
                        continue;
                    }
                };
                let endpoint = Endpoint {
                    addr,
                    pool_key: PoolKey { addr, tls: tls_id },
                    tls,
                    host_header: parsed.authority.into(),
                    open: None,
                };
                let mut request_target = String::new();
                for part in &parsed.path {
                    if let PathPart::Literal(l) = part {
                        request_target.push_str(l);
                    }
                }
                if request_target.is_empty() {
                    request_target.push('/');
                }
                if let Some(q) = &parsed.query {
                    request_target.push('?');
                    request_target.push_str(q);
                }
                Authorizer::Request(request::RequestAuthorizer {
                    name: name.clone(),
                    endpoint,
                    request_target: request_target.into(),
                    sources: sources.into(),
                    ttl_s: ttl_s.min(3600),
                    timeout: Duration::from_millis(timeout_ms),
                    forward: compile_forward(forward, &apath, &mut strip, errs),
                })
            }
            AuthorizerFile::Sigv4 {
                name,
                region,
                access_keys,
            } => {
                if region.is_empty()
                    || !region
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    errs.push(
                        format!("{apath}.region"),
                        "must be a region name such as us-east-1",
                    );
                }
                for (j, k) in access_keys.iter().enumerate() {
                    let kpath = format!("{apath}.access_keys[{j}]");
                    if let Err(e) = sigv4::check_key_id(&k.id) {
                        errs.push(format!("{kpath}.id"), e);
                        continue;
                    }
                    for (n, p) in k.allow.iter().enumerate() {
                        if let Err(e) = sigv4::check_pattern(p) {
                            errs.push(format!("{kpath}.allow[{n}]"), e);
                        }
                    }
                    let Some(secret) = secret(&k.secret, &format!("{kpath}.secret"), errs) else {
                        continue;
                    };
                    if config_keys.iter().any(|c| c.id == k.id) {
                        errs.push(
                            format!("{kpath}.id"),
                            format!("access key {:?} is declared twice", k.id),
                        );
                        continue;
                    }
                    config_keys.push(sigv4::AccessKey {
                        id: k.id.clone(),
                        secret,
                        allow: k.allow.clone(),
                        source: "config".into(),
                        created_s: 0,
                    });
                }
                Authorizer::Sigv4(sigv4::Sigv4Authorizer {
                    name: name.clone(),
                    region: region.clone(),
                    keys: Arc::clone(key_table),
                })
            }
        };
        by_name.insert(a.name().to_owned(), authorizers.len());
        authorizers.push(Arc::new(compiled));
    }
    let trusted: Arc<[ipnet::IpNet]> =
        match crate::policy::resource::parse_cidrs(&api.trusted_proxies) {
            Ok(t) => Arc::from(t),
            Err(e) => {
                errs.push(format!("{path}.trusted_proxies"), e);
                Arc::from(Vec::new())
            }
        };
    let policy = api
        .resource_policy
        .as_ref()
        .and_then(|p| compile_policy(p, &format!("{path}.resource_policy"), errs));
    let cors = api
        .cors
        .as_ref()
        .and_then(|c| match crate::policy::cors::Cors::compile(c) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                errs.push(format!("{path}.cors"), e);
                None
            }
        });
    ApiAccess {
        by_name,
        policy,
        trusted,
        cors,
        strip: strip.into(),
    }
}

/// Each route's authorizer and validator, by route index.
pub type RouteAccessList = (
    Vec<Option<crate::policy::access::RouteAuth>>,
    Vec<Option<Arc<crate::policy::validate::Validator>>>,
);

pub fn compile_route_access(
    api: &crate::config::ApiFile,
    path: &str,
    access: &ApiAccess,
    authorizers: &[Arc<crate::policy::access::Authorizer>],
    errs: &mut ConfigErrors,
) -> RouteAccessList {
    use crate::policy::validate::{compile_schema, Param, Validator};
    let mut auths = Vec::new();
    let mut validators = Vec::new();
    for (ri, route) in api.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{ri}]");
        let Some(route) = route else {
            auths.push(None);
            validators.push(None);
            continue;
        };
        let auth = match &route.authorizer {
            None => {
                if !route.scopes.is_empty() {
                    errs.push(format!("{rpath}.scopes"), "scopes need a JWT authorizer");
                }
                None
            }
            Some(name) => match access.by_name.get(name) {
                None => {
                    errs.push(
                        format!("{rpath}.authorizer"),
                        format!("no authorizer {name:?} in API {:?}", api.name),
                    );
                    None
                }
                Some(&id) => {
                    if !route.scopes.is_empty()
                        && !matches!(
                            authorizers.get(id).map(|a| &**a),
                            Some(crate::policy::access::Authorizer::Jwt(_))
                        )
                    {
                        errs.push(format!("{rpath}.scopes"), "scopes need a JWT authorizer");
                    }
                    if route.scopes.len() > 10 {
                        errs.push(format!("{rpath}.scopes"), "at most 10 scopes");
                    }
                    Some(crate::policy::access::RouteAuth {
                        authorizer: id,
                        scopes: route.scopes.iter().map(|s| s.as_str().into()).collect(),
                    })
                }
            },
        };
        auths.push(auth);
        let validator = route.validate.as_ref().map(|v| {
            let vpath = format!("{rpath}.validate");
            let mut required = Vec::new();
            for (j, r) in v.required.iter().enumerate() {
                match Param::parse(r) {
                    Ok(p) => required.push(p),
                    Err(e) => errs.push(format!("{vpath}.required[{j}]"), e),
                }
            }
            let schema = match &v.body_schema {
                None => None,
                Some(s) => {
                    let json = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
                    match compile_schema(&json) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            errs.push(format!("{vpath}.body_schema"), e);
                            None
                        }
                    }
                }
            };
            let content_types = v
                .content_types
                .clone()
                .unwrap_or_else(|| vec!["application/json".to_owned()])
                .iter()
                .map(|t| t.trim().to_ascii_lowercase().into())
                .collect();
            Arc::new(Validator {
                required: required.into(),
                schema,
                content_types,
            })
        });
        validators.push(validator);
    }
    (auths, validators)
}
