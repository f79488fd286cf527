//! The control plane of API keys and usage plans: their definitions (from the config
//! and from the management API), the shared state of each key in each plan (token
//! buckets, quota), and the keyring the workers read.
//!
//! Every change validates, saves to the store, rebuilds the keyring and publishes it
//! (`keys::Live`); workers switch on their next tick, within 100 ms. Nothing here
//! runs on the request path: the admin thread and the store's writer call it, under
//! one mutex.
//!
//! Keys and plans written in the config are applied at every start, over what the
//! store holds for them; those created through the management API live in the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::UsagePlanFile;
use crate::control::store::{CountWrite, SavedQuota, Store};
use crate::encode::{hex, random_alnum, random_id};
use crate::ids::{Slot, StageId};
use crate::plan::StagePlan;
use crate::policy::keys::{self, Binding, Bucket, KeyHash, KeyView, Keyring, Live};
use crate::policy::quota::{Period, Quota};
use crate::policy::throttle::{Limit, SharedBucket};
use crate::policy::usage::{now_s, resolve, valid_key_value, KeyDef, Resolved, Seed, StageInfo};

const DAY_S: u64 = 86_400;

/// An error of the management API: the HTTP status and the message it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    fn not_found(what: &str, id: &str) -> Self {
        Self::new(404, format!("no {what} {id:?}"))
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "store write failed");
        Self::new(500, format!("store: {e:#}"))
    }
}

/// A random secret in AWS's shape: 40 characters of standard base64 (never a
/// leading `-`, which command lines would take for an option).
fn base64_secret(raw: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
}

/// Slot indexes for per-shard state, reused with a new generation once freed.
#[derive(Debug, Default)]
struct Slots {
    next: u32,
    free: Vec<Slot>,
}

impl Slots {
    fn take(&mut self) -> Slot {
        match self.free.pop() {
            Some(s) => Slot {
                index: s.index,
                gen: s.gen.wrapping_add(1).max(1),
            },
            None => {
                self.next += 1;
                Slot {
                    index: self.next - 1,
                    gen: 1,
                }
            }
        }
    }
    fn release(&mut self, s: Slot) {
        self.free.push(s);
    }
}

/// A key's plan quota as last saved: for the usage report's daily counts.
#[derive(Debug, Clone, Copy)]
struct Saved {
    period: u64,
    spent: u64,
}

pub fn period_kind(p: Period) -> u8 {
    match p {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

/// A usage report: key id → one `(used, remaining)` per day; `remaining` is `None`
/// for a plan without a quota.
pub type Report = BTreeMap<String, Vec<(u64, Option<u64>)>>;

/// What a CSV import did.
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    pub ids: Vec<String>,
    pub warnings: Vec<String>,
}

/// The fields a key may be created with.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A value to use (20-128 letters and digits); generated when absent.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub plans: Vec<String>,
}

/// The fields of a key that may change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

pub struct Registry {
    /// The plan generation `stages` come from; keyrings carry it.
    generation: u64,
    stages: Vec<StageInfo>,
    workers: usize,
    live: Arc<Live>,
    store: Store,
    plans: BTreeMap<String, (UsagePlanFile, Resolved)>,
    keys: BTreeMap<String, KeyDef>,
    by_hash: HashMap<KeyHash, String>,
    bindings: HashMap<(String, String), Arc<Binding>>,
    slots: Slots,
    /// Quotas read from the store, claimed when their binding is first built.
    restore: HashMap<(String, String), SavedQuota>,
    saved: HashMap<(String, String), Saved>,
    /// SigV4 access keys: the config's, then the management API's (in the store).
    access: AccessKeys,
}

#[derive(Default)]
struct AccessKeys {
    table: Option<Arc<crate::policy::sigv4::KeyTable>>,
    config: Vec<crate::policy::sigv4::AccessKey>,
    made: BTreeMap<String, crate::policy::sigv4::AccessKey>,
}

/// A new access key through the management API; id and secret are generated
/// when absent.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccessKey {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Registry {
    /// Loads what the store holds, applies the config's plans and keys over it, and
    /// publishes the first keyring.
    pub fn new(
        stages: &[StagePlan],
        workers: usize,
        live: Arc<Live>,
        store: Store,
        seed: &Seed,
    ) -> anyhow::Result<Self> {
        let loaded = store.load()?;
        let stages = StageInfo::of(stages);
        let mut r = Self {
            generation: 0,
            stages,
            workers,
            live,
            store,
            plans: BTreeMap::new(),
            keys: BTreeMap::new(),
            by_hash: HashMap::new(),
            bindings: HashMap::new(),
            slots: Slots::default(),
            restore: loaded.quotas,
            saved: HashMap::new(),
            access: AccessKeys::default(),
        };
        let config_plans: HashSet<&str> = seed.plans.iter().map(|p| p.name.as_str()).collect();
        for def in loaded.plans {
            if config_plans.contains(def.name.as_str()) {
                continue;
            }
            match resolve(&r.stages, &def) {
                Ok(res) => {
                    r.plans.insert(def.name.clone(), (def, res));
                }
                Err(errs) => tracing::warn!(
                    plan = %def.name,
                    errors = ?errs,
                    "usage plan in the store no longer matches the config; not loaded"
                ),
            }
        }
        for def in &seed.plans {
            let res = resolve(&r.stages, def)
                .map_err(|e| anyhow::anyhow!("usage plan {:?}: {e:?}", def.name))?;
            r.store.put_plan(def)?;
            r.plans.insert(def.name.clone(), (def.clone(), res));
        }
        let created: HashMap<String, u64> = loaded
            .keys
            .iter()
            .map(|k| (k.id.clone(), k.created_s))
            .collect();
        let seeded = seed.keys.iter().cloned().map(|mut k| {
            // A config key keeps the creation time of its first start.
            if let Some(&t) = created.get(&k.id) {
                k.created_s = t;
            }
            k
        });
        let seeded: Vec<KeyDef> = seeded.collect();
        for key in loaded.keys.into_iter().chain(seeded.iter().cloned()) {
            let Some(h) = key.key_hash() else {
                tracing::warn!(key = %key.id, "API key in the store has a bad hash; not loaded");
                continue;
            };
            if let Some(other) = r.by_hash.get(&h).cloned() {
                if other != key.id {
                    r.keys.remove(&other);
                }
            }
            r.by_hash.insert(h, key.id.clone());
            r.keys.insert(key.id.clone(), key);
        }
        r.store.put_keys(&seeded)?;
        r.rebuild();
        Ok(r)
    }

    fn stage_names(&self, ids: &[StageId]) -> Vec<String> {
        ids.iter()
            .map(|&i| format!("{}/{}", self.stages[i].api, self.stages[i].stage))
            .collect()
    }

    fn binding(&mut self, key_id: &str, plan: &str) -> Option<Arc<Binding>> {
        let k = (key_id.to_owned(), plan.to_owned());
        if let Some(b) = self.bindings.get(&k) {
            return Some(Arc::clone(b));
        }
        let res = self.plans.get(plan)?.1.clone();
        let workers = self.workers;
        let bucket = |slots: &mut Slots, l: Limit| Bucket {
            slot: slots.take(),
            shared: Arc::new(SharedBucket::new(l, workers)),
        };
        let throttle = res.throttle.map(|l| bucket(&mut self.slots, l));
        let routes = res
            .routes
            .iter()
            .map(|&(s, r, l)| (s, r, bucket(&mut self.slots, l)))
            .collect();
        let quota = match res.quota {
            Some(q) => Quota::new(q.limit, q.period),
            None => Quota::unlimited(),
        };
        if let Some(saved) = self.restore.remove(&k) {
            if saved.period_kind == period_kind(quota.period) {
                quota.restore(saved.period, saved.leased, saved.spent);
                self.saved.insert(
                    k.clone(),
                    Saved {
                        period: saved.period,
                        spent: saved.spent,
                    },
                );
            }
        }
        let b = Arc::new(Binding {
            key_id: key_id.into(),
            plan: plan.into(),
            throttle,
            routes,
            quota: Some((self.slots.take(), Arc::new(quota))),
        });
        self.bindings.insert(k, Arc::clone(&b));
        Some(b)
    }

    /// Drops a (key, plan) binding so that the next rebuild makes it anew (new
    /// buckets), keeping its quota count for the new one (same period only).
    fn retire(&mut self, k: (String, String)) {
        let Some(b) = self.bindings.remove(&k) else {
            return;
        };
        self.release(&b);
        if let Some((_, q)) = &b.quota {
            let (period, leased, spent) = q.snapshot();
            self.restore.insert(
                k,
                SavedQuota {
                    period_kind: period_kind(q.period),
                    period,
                    leased,
                    spent,
                },
            );
        }
    }

    fn release(&mut self, b: &Binding) {
        if let Some(t) = &b.throttle {
            self.slots.release(t.slot);
        }
        for (_, _, t) in b.routes.iter() {
            self.slots.release(t.slot);
        }
        if let Some((s, _)) = &b.quota {
            self.slots.release(*s);
        }
    }

    /// A reloaded config: its stages (plan `generation`), usage plans and keys.
    /// Plans and keys of the management API stay (a plan that no longer matches
    /// the stages is set aside with a warning, as at start). Bindings whose plan
    /// resolves as before keep their buckets and quotas; the others are rebuilt
    /// with their quota counts. The new keyring is published for the new plan:
    /// workers take it when they switch to that plan.
    pub fn replan(
        &mut self,
        stages: &[StagePlan],
        seed: &Seed,
        generation: u64,
    ) -> anyhow::Result<()> {
        let infos = StageInfo::of(stages);
        let config: HashSet<&str> = seed.plans.iter().map(|p| p.name.as_str()).collect();
        let mut plans = BTreeMap::new();
        for def in &seed.plans {
            let res = resolve(&infos, def)
                .map_err(|e| anyhow::anyhow!("usage plan {:?}: {e:?}", def.name))?;
            plans.insert(def.name.clone(), (def.clone(), res));
        }
        for (name, (def, _)) in &self.plans {
            if config.contains(name.as_str()) {
                continue;
            }
            match resolve(&infos, def) {
                Ok(res) => {
                    plans.insert(name.clone(), (def.clone(), res));
                }
                Err(errs) => tracing::warn!(
                    plan = %name,
                    errors = ?errs,
                    "usage plan no longer matches the config's stages; set aside"
                ),
            }
        }
        for def in &seed.plans {
            self.store.put_plan(def)?;
        }
        let seeded: Vec<KeyDef> = seed
            .keys
            .iter()
            .cloned()
            .map(|mut k| {
                if let Some(old) = self.keys.get(&k.id) {
                    k.created_s = old.created_s;
                }
                k
            })
            .collect();
        for key in &seeded {
            let Some(h) = key.key_hash() else { continue };
            if let Some(other) = self.by_hash.get(&h).cloned() {
                if other != key.id {
                    self.keys.remove(&other);
                }
            }
            self.by_hash.insert(h, key.id.clone());
            self.keys.insert(key.id.clone(), key.clone());
        }
        self.store.put_keys(&seeded)?;
        let changed: Vec<(String, String)> = self
            .bindings
            .keys()
            .filter(|(_, p)| {
                plans.get(p).map(|x| &x.1) != self.plans.get(p).map(|x| &x.1)
                    || plans.get(p).map(|x| &x.0) != self.plans.get(p).map(|x| &x.0)
            })
            .cloned()
            .collect();
        for k in changed {
            self.retire(k);
        }
        self.stages = infos;
        self.plans = plans;
        self.generation = generation;
        self.publish(false);
        Ok(())
    }

    /// The store (deployments and stage settings are read and written through it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Each stage the management API pointed at a deployment or gave variables.
    pub fn deployed(
        &self,
    ) -> std::collections::HashMap<(String, String), crate::compile::Deployed> {
        crate::control::deploy::deployed(&self.store).unwrap_or_else(|e| {
            tracing::error!(error = %format!("{e:#}"), "cannot read deployments from the store; stages follow the config");
            Default::default()
        })
    }

    /// The config's SigV4 keys after a reload (the management API's stay).
    pub fn replace_config_access_keys(&mut self, config: Vec<crate::policy::sigv4::AccessKey>) {
        self.access.config = config;
        self.publish_access_keys();
    }

    /// Builds the keyring from the definitions and publishes it.
    fn rebuild(&mut self) {
        self.publish(true);
    }

    /// Builds the keyring and publishes it; `wait`: until every worker uses it.
    fn publish(&mut self, wait: bool) {
        let pairs: Vec<(String, String)> = self
            .keys
            .values()
            .flat_map(|k| k.plans.iter().map(move |p| (k.id.clone(), p.clone())))
            .collect();
        let mut ring = Keyring::with_capacity(self.keys.len());
        ring.generation = self.generation;
        let mut per_key: HashMap<String, Vec<(StageId, Arc<Binding>)>> = HashMap::new();
        for (key_id, plan) in &pairs {
            let Some(b) = self.binding(key_id, plan) else {
                continue;
            };
            let stages = self.plans[plan].1.stages.clone();
            let list = per_key.entry(key_id.clone()).or_default();
            for s in stages {
                if !list.iter().any(|(x, _)| *x == s) {
                    list.push((s, Arc::clone(&b)));
                }
            }
        }
        let wanted: HashSet<&(String, String)> = pairs.iter().collect();
        let stale: Vec<(String, String)> = self
            .bindings
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(b) = self.bindings.remove(&k) {
                self.release(&b);
            }
        }
        for key in self.keys.values() {
            let Some(hash) = key.key_hash() else { continue };
            ring.insert(KeyView {
                hash,
                enabled: key.enabled,
                stages: per_key.remove(&key.id).unwrap_or_default().into(),
            });
        }
        let version = self.live.publish(ring);
        // Answer only once every worker uses it: a key the API just returned works
        // on every core (workers switch on their 100 ms tick).
        if wait
            && !self
                .live
                .wait_seen(version, std::time::Duration::from_secs(1))
        {
            tracing::warn!(
                version,
                "a worker did not switch to the new keyring within 1 s"
            );
        }
    }

    // ---- keys ----

    /// A random key id no key has yet.
    fn new_key_id(&self) -> String {
        loop {
            let id = random_id();
            if !self.keys.contains_key(&id) {
                return id;
            }
        }
    }

    /// Takes over the plan's SigV4 key table: the config's keys, then the store's.
    pub fn attach_access_keys(
        &mut self,
        table: Arc<crate::policy::sigv4::KeyTable>,
        config: Vec<crate::policy::sigv4::AccessKey>,
    ) -> anyhow::Result<()> {
        for k in self.store.access_keys()? {
            if config.iter().any(|c| c.id == k.id) {
                tracing::warn!(access_key = %k.id, "an access key in the store has the id of a config key; the config's is used");
                continue;
            }
            self.access.made.insert(k.id.clone(), k);
        }
        self.access.table = Some(table);
        self.access.config = config;
        self.publish_access_keys();
        Ok(())
    }

    fn publish_access_keys(&self) {
        if let Some(t) = &self.access.table {
            t.publish(
                self.access
                    .config
                    .iter()
                    .chain(self.access.made.values())
                    .cloned(),
            );
        }
    }

    pub fn access_keys(&self) -> Vec<&crate::policy::sigv4::AccessKey> {
        self.access
            .config
            .iter()
            .chain(self.access.made.values())
            .collect()
    }

    pub fn create_access_key(
        &mut self,
        new: NewAccessKey,
    ) -> Result<crate::policy::sigv4::AccessKey, ApiError> {
        use crate::policy::sigv4;
        let id = match new.id {
            Some(id) => id,
            None => {
                // AWS's shape: `AKIA` and 16 upper-case letters and digits.
                let mut raw = [0u8; 16];
                getrandom::fill(&mut raw).map_err(|e| ApiError::new(500, e.to_string()))?;
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
                let tail: String = raw
                    .iter()
                    .map(|b| alphabet[(*b & 31) as usize] as char)
                    .collect();
                format!("AKIA{tail}")
            }
        };
        sigv4::check_key_id(&id).map_err(|e| ApiError::new(400, e))?;
        for p in &new.allow {
            sigv4::check_pattern(p).map_err(|e| ApiError::new(400, e))?;
        }
        if self.access_keys().iter().any(|k| k.id == id) {
            return Err(ApiError::new(409, format!("access key {id:?} exists")));
        }
        let secret = match new.secret {
            Some(s) if s.len() >= 16 => s,
            Some(_) => return Err(ApiError::new(400, "a secret is at least 16 characters")),
            None => {
                let mut raw = [0u8; 30];
                getrandom::fill(&mut raw).map_err(|e| ApiError::new(500, e.to_string()))?;
                base64_secret(&raw)
            }
        };
        let key = sigv4::AccessKey {
            id: id.clone(),
            secret,
            allow: new.allow,
            source: "api".into(),
            created_s: now_s(),
        };
        self.store.put_access_key(&key)?;
        self.access.made.insert(id, key.clone());
        self.publish_access_keys();
        Ok(key)
    }

    pub fn delete_access_key(&mut self, id: &str) -> Result<(), ApiError> {
        if self.access.config.iter().any(|k| k.id == id) {
            return Err(ApiError::new(
                409,
                "a config key is removed from the config",
            ));
        }
        if self.access.made.remove(id).is_none() {
            return Err(ApiError::new(404, format!("no access key {id:?}")));
        }
        self.store.delete_access_key(id)?;
        self.publish_access_keys();
        Ok(())
    }

    pub fn keys(&self) -> Vec<&KeyDef> {
        self.keys.values().collect()
    }

    pub fn key(&self, id: &str) -> Result<&KeyDef, ApiError> {
        self.keys
            .get(id)
            .ok_or_else(|| ApiError::not_found("API key", id))
    }

    /// The stages `plans` cover; an error if two of them cover one stage, or if one
    /// does not exist.
    fn check_plans(&self, plans: &[String]) -> Result<(), ApiError> {
        let mut seen: HashMap<StageId, &str> = HashMap::new();
        for p in plans {
            let (_, res) = self
                .plans
                .get(p)
                .ok_or_else(|| ApiError::bad(format!("no usage plan {p:?}")))?;
            for &s in &res.stages {
                if let Some(other) = seen.insert(s, p) {
                    return Err(ApiError::conflict(format!(
                        "usage plans {other:?} and {p:?} both cover stage {:?}: a key is in at most one usage plan per stage",
                        self.stage_names(&[s])[0]
                    )));
                }
            }
        }
        Ok(())
    }

    /// Creates a key; returns it and its value (shown this once).
    pub fn create_key(&mut self, new: NewKey) -> Result<(KeyDef, String), ApiError> {
        let value = match new.value {
            Some(v) if !valid_key_value(&v) => {
                return Err(ApiError::bad("value must be 20 to 128 letters and digits"))
            }
            Some(v) => v,
            None => random_alnum(40),
        };
        let hash = keys::hash(value.as_bytes());
        if let Some(id) = self.by_hash.get(&hash) {
            return Err(ApiError::conflict(format!(
                "an API key with this value exists: {id}"
            )));
        }
        let mut plans = new.plans;
        plans.dedup();
        self.check_plans(&plans)?;
        let id = self.new_key_id();
        let name = new.name.unwrap_or_else(|| id.clone());
        if name.len() > 1024 {
            return Err(ApiError::bad("name must be at most 1,024 characters"));
        }
        let def = KeyDef {
            id: id.clone(),
            name,
            description: new.description.unwrap_or_default(),
            enabled: new.enabled.unwrap_or(true),
            plans,
            created_s: now_s(),
            hash: hex(&hash),
        };
        self.store.put_key(&def)?;
        self.by_hash.insert(hash, id.clone());
        self.keys.insert(id, def.clone());
        self.rebuild();
        Ok((def, value))
    }

    pub fn update_key(&mut self, id: &str, patch: KeyPatch) -> Result<KeyDef, ApiError> {
        let mut def = self.key(id)?.clone();
        if let Some(n) = patch.name {
            if n.is_empty() || n.len() > 1024 {
                return Err(ApiError::bad("name must be 1 to 1,024 characters"));
            }
            def.name = n;
        }
        if let Some(d) = patch.description {
            def.description = d;
        }
        if let Some(e) = patch.enabled {
            def.enabled = e;
        }
        self.store.put_key(&def)?;
        self.keys.insert(id.to_owned(), def.clone());
        self.rebuild();
        Ok(def)
    }

    pub fn delete_key(&mut self, id: &str) -> Result<(), ApiError> {
        let def = self.key(id)?.clone();
        self.store.delete_key(id)?;
        if let Some(h) = def.key_hash() {
            self.by_hash.remove(&h);
        }
        self.keys.remove(id);
        self.rebuild();
        Ok(())
    }

    /// Imports keys from AWS's CSV format: a header naming the columns (any order,
    /// any case) among `key,name,description,enabled,usageplanIds`, then one key per
    /// row. Plan ids (names here) are separated by `,` inside a quoted field, or
    /// by `;`. Rows that cannot be imported are warnings; with `fail_on_warnings`
    /// nothing is imported if there is one.
    pub fn import_csv(&mut self, text: &str, fail_on_warnings: bool) -> Result<Imported, ApiError> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = rdr
            .headers()
            .map_err(|e| ApiError::bad(format!("CSV header: {e}")))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let Some(key_col) = col("key") else {
            return Err(ApiError::bad(
                "CSV header must name a `key` column (key,name,description,enabled,usageplanIds)",
            ));
        };
        for h in headers.iter() {
            if !["key", "name", "description", "enabled", "usageplanids"]
                .contains(&h.to_ascii_lowercase().as_str())
            {
                return Err(ApiError::bad(format!(
                    "unknown CSV column {h:?}: expected key,name,description,enabled,usageplanIds"
                )));
            }
        }
        let (name_col, desc_col, en_col, plans_col) = (
            col("name"),
            col("description"),
            col("enabled"),
            col("usageplanIds"),
        );
        let mut out = Imported::default();
        let mut rows = Vec::new();
        let mut values = HashSet::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    out.warnings.push(format!("line {line}: {e}"));
                    continue;
                }
            };
            let field = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").to_owned();
            let value = field(Some(key_col));
            if !valid_key_value(&value) {
                out.warnings.push(format!(
                    "line {line}: key must be 20 to 128 letters and digits"
                ));
                continue;
            }
            let hash = keys::hash(value.as_bytes());
            if let Some(id) = self.by_hash.get(&hash) {
                out.warnings.push(format!(
                    "line {line}: an API key with this value exists: {id}"
                ));
                continue;
            }
            if !values.insert(hash) {
                out.warnings.push(format!(
                    "line {line}: the same key appears earlier in the file"
                ));
                continue;
            }
            let enabled = match field(en_col).to_ascii_lowercase().as_str() {
                "" | "true" => true,
                "false" => false,
                other => {
                    out.warnings.push(format!(
                        "line {line}: enabled must be true or false, not {other:?}"
                    ));
                    continue;
                }
            };
            let plans: Vec<String> = field(plans_col)
                .split([',', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if let Err(e) = self.check_plans(&plans) {
                out.warnings.push(format!("line {line}: {}", e.message));
                continue;
            }
            let name = field(name_col);
            if name.len() > 1024 {
                out.warnings.push(format!(
                    "line {line}: name must be at most 1,024 characters"
                ));
                continue;
            }
            rows.push((value, name, field(desc_col), enabled, plans));
        }
        if fail_on_warnings && !out.warnings.is_empty() {
            return Err(ApiError::bad(format!(
                "nothing imported: {}",
                out.warnings.join("; ")
            )));
        }
        let mut defs = Vec::with_capacity(rows.len());
        for (value, name, description, enabled, plans) in rows {
            let hash = keys::hash(value.as_bytes());
            let id = self.new_key_id();
            let def = KeyDef {
                id: id.clone(),
                name: if name.is_empty() { id.clone() } else { name },
                description,
                enabled,
                plans,
                created_s: now_s(),
                hash: hex(&hash),
            };
            self.by_hash.insert(hash, id.clone());
            self.keys.insert(id.clone(), def.clone());
            out.ids.push(id);
            defs.push(def);
        }
        self.store.put_keys(&defs)?;
        self.rebuild();
        Ok(out)
    }

    // ---- usage plans ----

    pub fn plans(&self) -> Vec<&UsagePlanFile> {
        self.plans.values().map(|(d, _)| d).collect()
    }

    pub fn plan(&self, name: &str) -> Result<&UsagePlanFile, ApiError> {
        self.plans
            .get(name)
            .map(|(d, _)| d)
            .ok_or_else(|| ApiError::not_found("usage plan", name))
    }

    fn resolve(&self, def: &UsagePlanFile) -> Result<Resolved, ApiError> {
        resolve(&self.stages, def).map_err(|e| {
            ApiError::bad(
                e.into_iter()
                    .map(|(p, m)| format!("{p}: {m}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
    }

    pub fn create_plan(&mut self, def: UsagePlanFile) -> Result<UsagePlanFile, ApiError> {
        if self.plans.contains_key(&def.name) {
            return Err(ApiError::conflict(format!(
                "a usage plan named {:?} exists",
                def.name
            )));
        }
        let res = self.resolve(&def)?;
        self.store.put_plan(&def)?;
        self.plans.insert(def.name.clone(), (def.clone(), res));
        Ok(def)
    }

    /// Replaces a plan's stages and limits. Its keys keep their quota counts (the
    /// new limit applies to what they used) unless the period changes; their
    /// buckets start full.
    pub fn update_plan(
        &mut self,
        name: &str,
        def: UsagePlanFile,
    ) -> Result<UsagePlanFile, ApiError> {
        self.plan(name)?;
        if def.name != name {
            return Err(ApiError::bad("a usage plan's name cannot change"));
        }
        let res = self.resolve(&def)?;
        // The plan's keys must still be in at most one plan per stage.
        let old = self.plans.insert(name.to_owned(), (def.clone(), res));
        let clash = self
            .keys
            .values()
            .filter(|k| k.plans.iter().any(|p| p == name))
            .find_map(|k| self.check_plans(&k.plans).err());
        if let Some(e) = clash {
            if let Some(old) = old {
                self.plans.insert(name.to_owned(), old);
            }
            return Err(e);
        }
        self.store.put_plan(&def)?;
        // New buckets; quotas carried over where the period is the same.
        let stale: Vec<(String, String)> = self
            .bindings
            .keys()
            .filter(|(_, p)| p == name)
            .cloned()
            .collect();
        for k in stale {
            self.retire(k);
        }
        self.rebuild();
        Ok(def)
    }

    /// Deletes a plan and takes its keys out of it.
    pub fn delete_plan(&mut self, name: &str) -> Result<(), ApiError> {
        self.plan(name)?;
        let mut changed = Vec::new();
        for k in self.keys.values_mut() {
            if k.plans.iter().any(|p| p == name) {
                k.plans.retain(|p| p != name);
                changed.push(k.clone());
            }
        }
        self.store.put_keys(&changed)?;
        self.store.delete_plan(name)?;
        self.plans.remove(name);
        self.rebuild();
        Ok(())
    }

    pub fn plan_keys(&self, name: &str) -> Result<Vec<&KeyDef>, ApiError> {
        self.plan(name)?;
        Ok(self
            .keys
            .values()
            .filter(|k| k.plans.iter().any(|p| p == name))
            .collect())
    }

    /// Adds a key to a plan (AWS's CreateUsagePlanKey).
    pub fn attach(&mut self, plan: &str, key_id: &str) -> Result<KeyDef, ApiError> {
        self.plan(plan)?;
        let mut def = self.key(key_id)?.clone();
        if def.plans.iter().any(|p| p == plan) {
            return Err(ApiError::conflict(format!(
                "API key {key_id} is already in usage plan {plan:?}"
            )));
        }
        def.plans.push(plan.to_owned());
        self.check_plans(&def.plans)?;
        self.store.put_key(&def)?;
        self.keys.insert(key_id.to_owned(), def.clone());
        self.rebuild();
        Ok(def)
    }

    pub fn detach(&mut self, plan: &str, key_id: &str) -> Result<(), ApiError> {
        self.plan(plan)?;
        let mut def = self.key(key_id)?.clone();
        if !def.plans.iter().any(|p| p == plan) {
            return Err(ApiError::not_found(
                &format!("key of usage plan {plan:?}"),
                key_id,
            ));
        }
        def.plans.retain(|p| p != plan);
        self.store.put_key(&def)?;
        self.keys.insert(key_id.to_owned(), def);
        self.rebuild();
        Ok(())
    }

    // ---- usage ----

    fn quota_of(&self, plan: &str, key_id: &str) -> Result<Arc<Quota>, ApiError> {
        self.bindings
            .get(&(key_id.to_owned(), plan.to_owned()))
            .and_then(|b| b.quota.as_ref())
            .map(|(_, q)| Arc::clone(q))
            .ok_or_else(|| ApiError::not_found(&format!("key of usage plan {plan:?}"), key_id))
    }

    /// Sets what is left of a key's quota for the current period (AWS's UpdateUsage).
    pub fn set_remaining(
        &mut self,
        plan: &str,
        key_id: &str,
        remaining: u64,
    ) -> Result<(), ApiError> {
        self.plan(plan)?;
        self.key(key_id)?;
        let q = self.quota_of(plan, key_id)?;
        if !q.limited {
            return Err(ApiError::bad(format!(
                "usage plan {plan:?} has no quota to reset"
            )));
        }
        let (period, _) = q.period.at(now_s());
        let remaining = remaining.min(q.limit());
        // Flush first so that what was served before the reset counts as used today;
        // the reset itself changes what is left, not what was used.
        self.flush()?;
        q.set_remaining(period, remaining);
        self.saved.insert(
            (key_id.to_owned(), plan.to_owned()),
            Saved {
                period,
                spent: q.spent(period),
            },
        );
        self.flush()?;
        Ok(())
    }

    /// Saves the quotas that changed and adds what was served since the last save
    /// to today's usage: the store writer's job, a few times a second and whenever
    /// a worker takes a lease.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let now = now_s();
        let today = now / DAY_S;
        let mut writes = Vec::new();
        for ((key, plan), b) in &self.bindings {
            let Some((_, q)) = &b.quota else { continue };
            if !q.take_dirty() {
                continue;
            }
            let (period, leased, _) = q.snapshot();
            let (current, _) = q.period.at(now);
            let spent = q.spent(period);
            let last = self
                .saved
                .entry((key.clone(), plan.clone()))
                .or_insert(Saved { period, spent: 0 });
            let served = if last.period == period {
                spent.saturating_sub(last.spent)
            } else {
                spent
            };
            *last = Saved { period, spent };
            let remaining = if period == current {
                q.limit().saturating_sub(spent)
            } else {
                q.limit()
            };
            writes.push(CountWrite {
                key: key.clone(),
                plan: plan.clone(),
                quota: SavedQuota {
                    period_kind: period_kind(q.period),
                    period,
                    leased,
                    spent,
                },
                day: today,
                served,
                remaining: q.limited.then_some(remaining),
            });
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.store.write_counts(&writes)
    }

    /// `flush`, when a worker marked something changed since the last one (the
    /// writer's loop: an idle gateway scans nothing).
    pub fn flush_if_changed(&mut self) -> anyhow::Result<()> {
        if self.live.take_usage_changed() {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// AWS's usage report: for each key of the plan (or `key_id`), one
    /// `[used, remaining]` per day from `start` to `end` (days since 1970-01-01).
    /// `remaining` is `None` for a plan without a quota.
    pub fn usage(
        &mut self,
        plan: &str,
        key_id: Option<&str>,
        start: u64,
        end: u64,
    ) -> Result<Report, ApiError> {
        self.plan(plan)?;
        self.flush()?;
        let ids: Vec<String> = match key_id {
            Some(id) => {
                self.key(id)?;
                vec![id.to_owned()]
            }
            None => self
                .plan_keys(plan)?
                .into_iter()
                .map(|k| k.id.clone())
                .collect(),
        };
        let quota = self.plans[plan].0.quota;
        let mut out = BTreeMap::new();
        for id in ids {
            let days = self.store.usage(plan, &id, start, end)?;
            let mut row = Vec::new();
            let mut last: Option<(u64, Option<u64>)> = None; // (period, remaining)
            for day in start..=end {
                let period = quota.map(|q| q.period.at(day * DAY_S).0);
                let found = days.iter().find(|d| d.0 == day);
                let entry = match found {
                    Some(&(_, used, remaining)) => (used, remaining),
                    None => {
                        // Nothing served that day: what was left carries over
                        // within a period, and a new period starts full.
                        let remaining = match (quota, last) {
                            (None, _) => None,
                            (Some(_), Some((p, r))) if Some(p) == period => r,
                            (Some(q), _) => Some(q.limit),
                        };
                        (0, remaining)
                    }
                };
                if let Some(p) = period {
                    last = Some((p, entry.1));
                }
                row.push(entry);
            }
            out.insert(id, row);
        }
        Ok(out)
    }

    /// Hands every quota back to the store (at shutdown, after the workers settled
    /// their leases).
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
}
