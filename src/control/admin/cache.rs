//! The response cache through the management API: sizes and counters, flushing a
//! stage or one entry; and the listeners' certificates.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::registry::ApiError;
use crate::plan::Plan;

use crate::control::admin::wire::{body, Ctx, Request, Response};

/// A stage with a cache, by API and stage name.
pub fn cached_stage(plan: &Plan, api: &str, stage: &str) -> Result<usize, ApiError> {
    plan.stages
        .iter()
        .position(|s| s.api == api && s.stage == stage && s.cache_bytes > 0)
        .ok_or_else(|| ApiError::new(404, format!("no cache for stage {api}/{stage}")))
}

/// Every stage cache: size, capacity, and hits and misses per route.
pub fn cache_stats(plan: &Plan) -> Value {
    let items: Vec<Value> = plan
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.cache_bytes > 0)
        .map(|(i, s)| {
            let (entries, bytes) = plan.cache.stage_size(i);
            let routes: Vec<Value> = s
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.cache.is_some())
                .map(|(ri, r)| {
                    let (hits, misses) = plan.cache.route_counts(i, ri);
                    json!({ "route": r.key, "hits": hits, "misses": misses })
                })
                .collect();
            json!({
                "api": s.api,
                "stage": s.label(),
                "capacity_bytes": s.cache_bytes,
                "entries": entries,
                "bytes": bytes,
                "routes": routes,
            })
        })
        .collect();
    json!({ "items": items })
}

/// Flushes one entry: `{"method":"GET","path":"/pets?type=a","headers":{...}}`,
/// the request whose entry to drop (stage-relative path).
pub fn flush_entry(ctx: &Ctx, req: &Request, api: &str, stage: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Which {
        #[serde(default = "get")]
        method: String,
        path: String,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    }
    fn get() -> String {
        "GET".into()
    }
    let w: Which = body(req)?;
    let plan = ctx.control.plan();
    let sid = cached_stage(&plan, api, stage)?;
    let sp = &plan.stages[sid];
    let (path, query) = match w.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (w.path.as_str(), None),
    };
    let lookup = if w.method == "HEAD" {
        "GET"
    } else {
        w.method.as_str()
    };
    let m = sp
        .router
        .find(lookup, path)
        .ok_or_else(|| ApiError::new(404, format!("no route for {} {path}", w.method)))?;
    let rc = sp.routes[m.route].cache.as_ref().ok_or_else(|| {
        ApiError::new(
            404,
            format!("route {:?} does not cache", sp.routes[m.route].key),
        )
    })?;
    let headers: Vec<httparse::Header<'_>> = w
        .headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let mut key = Vec::new();
    let sig = sp.routes[m.route].sig;
    crate::policy::cache::build_key(&mut key, sig, &w.method, path, query, &headers, &m, &rc.key);
    announce_flush(ctx, api, stage, Some(&key));
    plan.cache.flush_key(sid, key);
    Ok(Response::no_content())
}

/// Cluster mode: every other node flushes the same (a Redis that cannot be
/// reached is logged; this node's flush stands).
pub fn announce_flush(ctx: &Ctx, api: &str, stage: &str, key: Option<&[u8]>) {
    let shared = crate::lock(ctx.control.registry())
        .store()
        .mirror()
        .cloned();
    if let Some(s) = shared {
        if let Err(e) = s.publish_flush(api, stage, key) {
            tracing::warn!(api, stage, error = %format!("{e:#}"), "cache flush not announced to the other nodes");
        }
    }
}

/// Each HTTPS listener's name and TLS state.
pub fn https(plan: &Plan) -> impl Iterator<Item = (&str, &crate::http::tls::ListenerTls)> {
    plan.listeners
        .iter()
        .filter_map(|lp| Some((lp.name.as_str(), &**lp.tls.as_ref()?)))
}
