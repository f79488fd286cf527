//! The authorizer stage: a route's JWT, request or SigV4 authorizer, and what it
//! granted (claims, context, headers for the upstream) or what to do instead.

use crate::http::error::GatewayError;
use crate::http::parse;
use crate::http::respond::Tag;
use crate::plan::{Plan, RoutePlan, StagePlan};
use crate::policy::access::{Authorizer, Grant, Pass, Work};
use crate::proxy::shard::Shard;
use crate::proxy::verdict::Action;
use crate::route;

/// What an authorizer may look at.
pub struct AuthFacts<'a, 'h> {
    pub head: &'a parse::RequestHead<'h>,
    pub headers: &'a [httparse::Header<'h>],
    pub routed_path: &'a str,
    pub stage: &'a StagePlan,
    pub route: &'a RoutePlan,
    pub m: &'a route::RouteMatch<'a, 'a>,
    /// The caller's address as the stage trusts X-Forwarded-For.
    pub source_ip: &'a dyn Fn() -> std::net::IpAddr,
    pub tag: &'a Tag,
    pub body: Option<&'a [u8]>,
}

/// Runs the route's authorizer: what it granted, or what to do instead (refuse,
/// or work first: a JWKS refetch, a call to a request authorizer).
pub fn authorize(
    plan: &Plan,
    shard: &Shard,
    auth: &crate::policy::access::RouteAuth,
    f: &AuthFacts<'_, '_>,
    pass: &mut Pass,
) -> Result<Grant, Action> {
    use crate::policy::jwt::Check;
    let refuse = |e: GatewayError| Action::Refuse(e);
    match &*plan.authorizers[auth.authorizer] {
        Authorizer::Jwt(j) => {
            let now = crate::clock::unix_s();
            let checked = j.check(
                plan.authorizer_uids[auth.authorizer],
                f.headers,
                f.head.query,
                &auth.scopes,
                &mut shard.access.borrow_mut().tokens,
                now,
                pass.refreshed,
            );
            match checked {
                Check::Granted(v) => Ok(Grant {
                    lines: (!v.lines.is_empty()).then(|| std::rc::Rc::from(&*v.lines)),
                    drop_authorization: false,
                    claims: Some(v),
                    context: None,
                }),
                Check::Refused(e) => Err(refuse(e)),
                Check::UnknownKey => match j.ask_refresh(now) {
                    Some(seen) => Err(Action::Work(Work::Jwks {
                        authorizer: auth.authorizer,
                        seen,
                    })),
                    None => Err(refuse(GatewayError::Unauthorized(
                        crate::http::error::Challenge::Bearer(crate::policy::jwt::UNKNOWN_KEY),
                    ))),
                },
            }
        }
        Authorizer::Request(r) => {
            let decision = match pass.decision.take() {
                Some(d) => d,
                None => {
                    let source_ip = (f.source_ip)();
                    let host = std::str::from_utf8(f.head.host).unwrap_or("");
                    let id = String::from_utf8_lossy(&f.tag.id).into_owned();
                    let mut params = serde_json::Map::new();
                    if let Some(ps) = &f.m.params {
                        for (k, v) in ps.iter() {
                            // Decoded, as AWS hands path parameters to functions.
                            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                            params.insert(k.to_owned(), serde_json::Value::String(v.into()));
                        }
                    }
                    let facts = crate::policy::request::RequestFacts {
                        api: &f.stage.api,
                        stage: &f.stage.stage,
                        route_key: &f.route.key,
                        method: f.head.method,
                        raw_path: &f.head.path,
                        query: f.head.query,
                        source_ip,
                        host,
                        request_id: &id,
                        path_params: params,
                        headers: f.headers,
                    };
                    let Some(identity) = r.identity(&facts) else {
                        return Err(refuse(GatewayError::Unauthorized(
                            crate::http::error::Challenge::Plain("identity source missing"),
                        )));
                    };
                    let key = (r.ttl_s > 0 && !r.sources.is_empty())
                        .then(|| identity.join("\u{0}").into_boxed_str());
                    if let Some(k) = &key {
                        let hit = shard.access.borrow().decisions.get(
                            plan.authorizer_uids[auth.authorizer],
                            k,
                            crate::clock::unix_ms(),
                        );
                        if let Some(d) = hit {
                            return decided(d);
                        }
                    }
                    return Err(Action::Work(Work::Call(Box::new(
                        crate::policy::request::Call {
                            authorizer: auth.authorizer,
                            key,
                            payload: r.payload(&facts, &identity),
                        },
                    ))));
                }
            };
            decided(decision)
        }
        Authorizer::Sigv4(s) => {
            let hash = crate::policy::sigv4::sha256_hex(f.body.unwrap_or_default());
            let resource = format!(
                "{}/{}/{}{}",
                f.stage.api, f.stage.stage, f.head.method, f.routed_path
            );
            let signed = crate::policy::sigv4::Signed {
                method: f.head.method,
                raw_path: &f.head.path,
                query: f.head.query,
                headers: f.headers,
                body_hash: &hash,
                resource: &resource,
            };
            match s.verify(&signed, crate::clock::unix_s()) {
                Ok(_) => Ok(Grant {
                    drop_authorization: true,
                    ..Grant::default()
                }),
                Err(e) => Err(refuse(e)),
            }
        }
    }
}

/// A request authorizer's decision as a grant or a refusal.
pub fn decided(d: std::rc::Rc<crate::policy::request::Decision>) -> Result<Grant, Action> {
    if !d.authorized {
        return Err(Action::Refuse(GatewayError::AccessDenied(
            "the authorizer said isAuthorized: false",
        )));
    }
    Ok(Grant {
        lines: (!d.lines.is_empty()).then(|| std::rc::Rc::from(&*d.lines)),
        drop_authorization: false,
        claims: None,
        context: Some(d),
    })
}
