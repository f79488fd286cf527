//! Usage plans and API keys as they are defined (in the config, the store, the
//! management API): checked, and resolved against the compiled stages. The registry
//! (`control::registry`) turns them into the keyring the workers read.

use serde::{Deserialize, Serialize};

use crate::config::{QuotaFile, ThrottleFile, UsagePlanFile};
use crate::encode::hex;
use crate::ids::{RouteId, StageId};
use crate::policy::keys::KeyHash;
use crate::policy::throttle::Limit;

/// An API key as the store keeps it and the management API shows it (never its
/// value: only its SHA-256).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyDef {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    /// Usage plan names.
    #[serde(default)]
    pub plans: Vec<String>,
    /// Unix seconds.
    pub created_s: u64,
    /// Hex SHA-256 of the value.
    pub hash: String,
}

impl KeyDef {
    pub fn key_hash(&self) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        if self.hash.len() != 64 {
            return None;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(self.hash.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

/// The config's usage plans and keys, validated by `config::compile`.
#[derive(Debug, Default, Clone)]
pub struct Seed {
    pub plans: Vec<UsagePlanFile>,
    pub keys: Vec<KeyDef>,
}

/// A usage plan resolved against the compiled stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub stages: Vec<StageId>,
    pub throttle: Option<Limit>,
    pub quota: Option<QuotaFile>,
    pub routes: Vec<(StageId, RouteId, Limit)>,
}

pub fn limit(t: ThrottleFile) -> Limit {
    Limit {
        rate: t.rate,
        burst: t.burst,
    }
}

pub fn check_throttle(t: ThrottleFile, path: &str, errs: &mut Vec<(String, String)>) {
    if !t.rate.is_finite() || t.rate < 0.0 {
        errs.push((
            format!("{path}.rate"),
            "must be a number of requests per second, 0 or more".into(),
        ));
    }
}

/// Checks a usage plan against the stages it names; errors are `(path, message)`
/// with paths relative to the plan.
pub fn resolve(
    stages: &[StageInfo],
    def: &UsagePlanFile,
) -> Result<Resolved, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let stage_of = |name: &str| {
        let (api, stage) = name.split_once('/')?;
        stages.iter().position(|s| s.api == api && s.stage == stage)
    };
    if def.name.is_empty() || def.name.len() > 1024 {
        errs.push(("name".into(), "must be 1 to 1,024 characters".into()));
    }
    let mut ids = Vec::new();
    for (i, name) in def.stages.iter().enumerate() {
        match stage_of(name) {
            Some(id) if ids.contains(&id) => {
                errs.push((format!("stages[{i}]"), format!("{name:?} is listed twice")))
            }
            Some(id) => ids.push(id),
            None => errs.push((
                format!("stages[{i}]"),
                format!("no stage {name:?}: expected \"api/stage\""),
            )),
        }
    }
    if let Some(t) = def.throttle {
        check_throttle(t, "throttle", &mut errs);
    }
    let mut routes = Vec::new();
    for (key, t) in &def.routes {
        let path = format!("routes[{key:?}]");
        // "api/stage/METHOD /path"
        let mut parts = key.splitn(3, '/');
        let found = match (parts.next(), parts.next(), parts.next()) {
            (Some(api), Some(stage), Some(route)) => {
                stage_of(&format!("{api}/{stage}")).and_then(|sid| {
                    let rid = stages[sid].routes.iter().position(|r| r == route)?;
                    Some((sid, rid))
                })
            }
            _ => None,
        };
        match found {
            Some((sid, _)) if !ids.contains(&sid) => errs.push((
                path,
                "names a stage that is not in this usage plan's stages".into(),
            )),
            Some((sid, rid)) => {
                check_throttle(*t, &path, &mut errs);
                routes.push((sid, rid, limit(*t)));
            }
            None => errs.push((
                path,
                format!("no route {key:?}: expected \"api/stage/METHOD /path\""),
            )),
        }
    }
    if errs.is_empty() {
        Ok(Resolved {
            stages: ids,
            throttle: def.throttle.map(limit),
            quota: def.quota,
            routes,
        })
    } else {
        Err(errs)
    }
}

/// AWS: key values are 20 to 128 letters and digits.
pub fn valid_key_value(v: &str) -> bool {
    (20..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The id of a key written in the config: stable across restarts.
pub fn config_key_id(hash: &KeyHash) -> String {
    hex(&hash[..5])
}

pub fn now_s() -> u64 {
    crate::clock::unix_s()
}

/// What the registry needs of a compiled stage: names, and route keys by route id.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub api: String,
    pub stage: String,
    pub routes: Vec<String>,
}
