//! Usage plans and API keys declared in the config, checked against the compiled
//! stages; the registry builds them at start.

use std::collections::{HashMap, HashSet};

use crate::compile::build::secret;
use crate::config::{ConfigErrors, ConfigFile};
use crate::ids::StageId;
use crate::plan::StagePlan;
use crate::policy::keys;
use crate::policy::usage::{self as registry, KeyDef, Seed, StageInfo};

/// Validates the usage plans and API keys of the config against the compiled
/// stages; the registry builds them at start.
pub fn compile_seed(cfg: &ConfigFile, stages: &[StagePlan], errs: &mut ConfigErrors) -> Seed {
    let infos = StageInfo::of(stages);
    let mut seed = Seed::default();
    // Plan name → the stages it covers.
    let mut plan_stages: HashMap<&str, Vec<StageId>> = HashMap::new();
    for (pi, plan) in cfg.usage_plans.iter().enumerate() {
        let Some(plan) = plan else { continue };
        let path = format!("usage_plans[{pi}]");
        match registry::resolve(&infos, plan) {
            Ok(res) => {
                if plan_stages.insert(plan.name.as_str(), res.stages).is_some() {
                    errs.push(
                        format!("{path}.name"),
                        format!("duplicate usage plan {:?}", plan.name),
                    );
                }
                seed.plans.push(plan.clone());
            }
            Err(list) => {
                for (p, m) in list {
                    errs.push(format!("{path}.{p}"), m);
                }
            }
        }
    }
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (ki, key) in cfg.api_keys.iter().enumerate() {
        let Some(key) = key else { continue };
        let path = format!("api_keys[{ki}]");
        if !names.insert(key.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate API key name {:?}", key.name),
            );
        }
        let Some(value) = secret(&key.value, &format!("{path}.value"), errs) else {
            continue;
        };
        if !registry::valid_key_value(&value) {
            // AWS: key values are alphanumeric, 20 to 128 characters.
            errs.push(
                format!("{path}.value"),
                "must be 20 to 128 letters and digits",
            );
            continue;
        }
        let mut covered: Vec<StageId> = Vec::new();
        for (pi, plan_name) in key.plans.iter().enumerate() {
            let Some(stages) = plan_stages.get(plan_name.as_str()) else {
                errs.push(
                    format!("{path}.plans[{pi}]"),
                    format!("no usage plan {plan_name:?}"),
                );
                continue;
            };
            if stages.iter().any(|s| covered.contains(s)) {
                errs.push(
                    format!("{path}.plans[{pi}]"),
                    "a key is in at most one usage plan per stage",
                );
            }
            covered.extend(stages);
        }
        let hash = keys::hash(value.as_bytes());
        if !hashes.insert(hash) {
            errs.push(
                format!("{path}.value"),
                "another API key has the same value",
            );
        }
        seed.keys.push(KeyDef {
            id: registry::config_key_id(&hash),
            name: key.name.clone(),
            description: key.description.clone().unwrap_or_default(),
            enabled: key.enabled,
            plans: key.plans.clone(),
            created_s: registry::now_s(),
            hash: crate::encode::hex(&hash),
        });
    }
    seed
}

/// `store.redis`: the URLs, password and prefix, checked.
pub fn compile_redis(
    r: &crate::config::RedisFile,
    errs: &mut ConfigErrors,
) -> Option<crate::plan::RedisPlan> {
    let (urls, cluster) = match (&r.url, &r.cluster) {
        (Some(u), None) => (vec![u.clone()], false),
        (None, Some(list)) if !list.is_empty() => (list.clone(), true),
        (None, Some(_)) => {
            errs.push("store.redis.cluster", "list at least one node");
            return None;
        }
        (Some(_), Some(_)) => {
            errs.push("store.redis", "url and cluster exclude each other");
            return None;
        }
        (None, None) => {
            errs.push(
                "store.redis",
                "needs url (standalone) or cluster (node URLs)",
            );
            return None;
        }
    };
    for (i, u) in urls.iter().enumerate() {
        let path = if cluster {
            format!("store.redis.cluster[{i}]")
        } else {
            "store.redis.url".to_owned()
        };
        if !u.starts_with("redis://") && !u.starts_with("rediss://") {
            errs.push(path, format!("{u:?}: expected a redis:// or rediss:// URL"));
        }
    }
    let password = r
        .password
        .as_ref()
        .and_then(|p| crate::compile::build::secret(p, "store.redis.password", errs));
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| "shardgate:".to_owned());
    if key_prefix.contains(['{', '}']) {
        errs.push(
            "store.redis.key_prefix",
            "must not contain { or } (the gateway adds its own hash tag)",
        );
    }
    Some(crate::plan::RedisPlan {
        urls,
        cluster,
        password,
        key_prefix,
        fail_open: r.on_unavailable.unwrap_or_default() == crate::config::OnUnavailable::FailOpen,
    })
}
