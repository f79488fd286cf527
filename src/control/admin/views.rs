//! How the management API shows keys, plans, access keys, deployments, stages and
//! usage, as AWS's API Gateway does.

use serde_json::{json, Value};

use crate::config::UsagePlanFile;
use crate::policy::usage::KeyDef;

/// A key as a usage plan lists it (AWS's UsagePlanKey).
pub fn plan_key_json(k: &KeyDef) -> Value {
    json!({ "id": k.id, "name": k.name, "type": "API_KEY" })
}

pub fn key_json(k: &KeyDef) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "enabled": k.enabled,
        "plans": k.plans,
        "created_s": k.created_s,
    })
}

pub fn access_key_json(k: &crate::policy::sigv4::AccessKey) -> Value {
    json!({
        "id": k.id,
        "allow": k.allow,
        "source": k.source,
        "created_s": k.created_s,
    })
}

pub fn plan_json(p: &UsagePlanFile) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("id".into(), Value::String(p.name.clone()));
    }
    v
}

pub fn deployment_json(d: &crate::control::store::Deployment) -> Value {
    json!({
        "id": d.id,
        "apiId": d.api,
        "description": d.description,
        "createdDate": d.created_ms / 1000,
    })
}

/// A stage as AWS shows it: `deploymentId` null while it follows the config file.
pub fn stage_json(
    plan: &crate::plan::Plan,
    api: &str,
    stage: &str,
    set: &[(String, String, crate::control::store::StagePointer)],
) -> Value {
    let p = set
        .iter()
        .find(|(a, s, _)| a == api && s == stage)
        .map(|x| x.2.clone())
        .unwrap_or_default();
    let canary = plan
        .stages
        .iter()
        .find(|s| s.api == api && s.stage == stage && s.canary_of.is_none())
        .and_then(|s| s.canary.as_ref());
    let mut v = json!({
        "apiId": api,
        "stageName": stage,
        "deploymentId": p.deployment_id,
        "variables": p.variables,
    });
    if let Some(c) = canary {
        v["canarySettings"] = canary_json(&c.setting);
    }
    v
}

/// A canary as AWS's `canarySettings`.
pub fn canary_json(c: &crate::config::CanaryFile) -> Value {
    json!({
        "percentTraffic": c.percent,
        "deploymentId": c.deployment,
        "stageVariableOverrides": c.variables,
    })
}

/// The `values` of AWS's usage report: key id → `[[used, remaining], ...]`.
pub fn values_json(
    report: impl IntoIterator<Item = (String, Vec<(u64, Option<u64>)>)>,
) -> serde_json::Map<String, Value> {
    report
        .into_iter()
        .map(|(id, days)| {
            let days = days.into_iter().map(|(u, r)| json!([u, r])).collect();
            (id, Value::Array(days))
        })
        .collect()
}

/// `GET /upstreams`: each group, its settings, and each target's state.
pub fn upstreams_json(
    groups: &[std::sync::Arc<crate::upstream::group::Group>],
    now_ms: u64,
) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let snap = g.live.snapshot.load();
            let targets: Vec<Value> = snap
                .endpoints
                .iter()
                .map(|m| {
                    let s = &m.state;
                    let until = s.ejected_until_ms.load(Relaxed);
                    let healthy = s.healthy.load(Relaxed);
                    json!({
                        "url": &*g.targets[m.target].url,
                        "address": m.to.addr.to_string(),
                        "weight": m.weight,
                        "state": if !healthy { "unhealthy" } else if until > now_ms { "ejected" } else { "up" },
                        "healthy": healthy,
                        "ejected_for_ms": until.saturating_sub(now_ms),
                        "ejections": s.ejections.load(Relaxed),
                        "requests": s.requests.load(Relaxed),
                        "failures": s.failures.load(Relaxed),
                        "retries": s.retries.load(Relaxed),
                        "connections_open": s.open.open.load(Relaxed),
                        "connections_idle": s.idle.load(Relaxed).max(0),
                    })
                })
                .collect();
            json!({
                "name": &*g.name,
                "implicit": g.implicit,
                "balance": match g.balance {
                    crate::config::Balance::LeastRequest => "least_request",
                    crate::config::Balance::RoundRobin => "round_robin",
                    crate::config::Balance::ConsistentHash => "consistent_hash",
                },
                "health_check": g.health.as_ref().map(|h| json!({
                    "path": &*h.path,
                    "interval_ms": h.interval.as_millis() as u64,
                    "timeout_ms": h.timeout.as_millis() as u64,
                    "healthy": h.healthy,
                    "unhealthy": h.unhealthy,
                })),
                "retries": { "attempts": g.retries.attempts, "budget_percent": g.retries.budget_percent },
                "targets": targets,
            })
        })
        .collect();
    json!({ "items": items })
}

/// `GET /apis`: each API, its stages (what each serves: the config or a
/// deployment, its throttle and cache) and each stage's routes with their
/// integration, authorizer, throttle and cache, from the running plan.
///
/// `source` gives an API's definition as a stage serves it: the deployment's
/// snapshot when `deploymentId` is set, else the config's.
pub fn apis_json(
    plan: &crate::plan::Plan,
    set: &[(String, String, crate::control::store::StagePointer)],
    source: impl Fn(&str, Option<&str>) -> Option<Value>,
) -> Value {
    let limit = |id: Option<crate::ids::ThrottleId>| {
        id.and_then(|t| plan.throttles.get(t))
            .map(|b| json!({ "rate": b.limit.rate, "burst": b.limit.burst }))
    };
    let mut names: Vec<&String> = plan.api_sources.keys().collect();
    names.sort();
    let items: Vec<Value> = names
        .into_iter()
        .map(|api| {
            let config = &plan.api_sources[api];
            let stages: Vec<Value> = plan
                .stages
                .iter()
                .filter(|s| s.api == *api && s.canary_of.is_none())
                .map(|s| {
                    let mut v = stage_json(plan, &s.api, &s.stage, set);
                    let deployment = v["deploymentId"].as_str().map(str::to_owned);
                    let def = source(api, deployment.as_deref());
                    let defined = def
                        .as_ref()
                        .and_then(|d| d["routes"].as_array())
                        .cloned()
                        .unwrap_or_default();
                    let routes: Vec<Value> = s
                        .routes
                        .iter()
                        .map(|r| {
                            let own = defined.iter().find(|d| d["route"] == r.key.as_str());
                            json!({
                                "route": r.key,
                                "integration": own.map(|d| d["integration"].clone()),
                                "authorizer": own.and_then(|d| d.get("authorizer").cloned()),
                                "authorizationScopes": own.and_then(|d| d.get("authorization_scopes").cloned()),
                                "apiKeyRequired": r.api_key_required,
                                "throttle": limit(r.throttle),
                                "cacheTtlSeconds": r.cache.as_ref().map(|c| c.ttl_ms / 1000),
                                "validated": r.validate.is_some(),
                            })
                        })
                        .collect();
                    v["throttle"] = limit(s.throttle).unwrap_or(Value::Null);
                    v["cacheBytes"] = json!(s.cache_bytes);
                    v["routes"] = Value::Array(routes);
                    v
                })
                .collect();
            json!({
                "name": api,
                "type": config.get("type").cloned().unwrap_or_else(|| json!("http")),
                "stages": stages,
            })
        })
        .collect();
    json!({ "items": items })
}
