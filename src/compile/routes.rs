//! Routes: route keys, the radix router of an API, and each route's response cache.

use crate::config::ConfigErrors;
use crate::plan::RouteCache;
use crate::policy::cache::KeyParam;
use crate::route::{RouteKey, Router};

/// AWS: TTL 300 s by default, 0 to 3600 s, 0 disables.
pub const DEFAULT_CACHE_TTL_S: u64 = 300;

pub fn check_ttl(ttl: Option<u64>, path: &str, errs: &mut ConfigErrors) -> Option<u64> {
    let t = ttl?;
    if t > 3600 {
        errs.push(path, "must be 0 to 3600 seconds (0 disables)");
        return None;
    }
    Some(t)
}

/// A route's caching: the stage's TTL unless the route sets one; GET and HEAD only
/// unless the route has a `cache` of its own (it opted in).
pub fn route_cache(
    stage_ttl: u64,
    over: Option<&crate::config::RouteCacheFile>,
    key: Option<&RouteKey>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<RouteCache> {
    let ttl = over
        .and_then(|o| check_ttl(o.ttl_s, &format!("{path}.ttl_s"), errs))
        .unwrap_or(stage_ttl);
    let method = match key {
        Some(RouteKey::Path {
            method: Some(m), ..
        }) => m.as_str(),
        // ANY and $default: GET and HEAD requests are cached.
        _ => "ANY",
    };
    if ttl == 0 || (over.is_none() && !matches!(method, "GET" | "HEAD" | "ANY")) {
        return None;
    }
    let mut params = Vec::new();
    for (i, p) in over
        .map_or(&[][..], |o| o.key.as_slice())
        .iter()
        .enumerate()
    {
        let param = match p.split_once('.') {
            Some(("query", n)) if !n.is_empty() => Some(KeyParam::Query(n.into())),
            Some(("header", n)) if !n.is_empty() => {
                Some(KeyParam::Header(n.to_ascii_lowercase().into()))
            }
            Some(("path", n)) if key.is_some_and(|k| k.params().contains(&n)) => {
                Some(KeyParam::Path(n.into()))
            }
            Some(("path", n)) => {
                errs.push(
                    format!("{path}.key[{i}]"),
                    format!("the route has no path parameter {n:?}"),
                );
                None
            }
            _ => {
                errs.push(
                    format!("{path}.key[{i}]"),
                    format!("{p:?}: expected query.NAME, header.NAME or path.NAME"),
                );
                None
            }
        };
        params.extend(param);
    }
    Some(RouteCache {
        ttl_ms: ttl * 1000,
        key: params.into(),
        any_method: over.is_some() && !matches!(method, "GET" | "HEAD"),
        require_authorization: over.is_some_and(|o| o.require_authorization),
        unauthorized: over.map(|o| o.unauthorized_strategy).unwrap_or_default(),
    })
}

pub fn empty_router() -> Router {
    Router::build(&[]).unwrap_or_else(|_| unreachable!("an empty router has no conflicts"))
}

pub fn route_keys(
    api: &crate::config::ApiFile,
    path: &str,
    errs: &mut ConfigErrors,
) -> Vec<RouteKey> {
    let mut keys = Vec::with_capacity(api.routes.len());
    for (ri, route) in api.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{ri}]");
        let Some(route) = route else {
            keys.push(never_matched(ri));
            continue;
        };
        match RouteKey::parse(&route.route) {
            Ok(k) => keys.push(k),
            Err(e) => {
                errs.push(format!("{rpath}.route"), e);
                keys.push(never_matched(ri));
            }
        }
    }
    keys
}

/// A key for a route that failed to load: keeps route ids aligned with the file,
/// and no request path (which cannot contain NUL) matches it.
pub fn never_matched(ri: usize) -> RouteKey {
    RouteKey::Path {
        method: Some("GET".into()),
        segments: vec![crate::route::Segment::Literal(format!("\u{0}invalid{ri}"))],
    }
}
