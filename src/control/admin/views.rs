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
