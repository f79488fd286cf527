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
//!
//! One file per resource: `api_keys` (API keys, CSV import), `plans` (usage plans,
//! quotas, usage reports), `access_keys` (SigV4 access keys); this file holds the
//! state they share and what rebuilds and publishes the keyring.

pub mod access_keys;
pub mod api_keys;
pub mod plans;
pub mod shared;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::config::UsagePlanFile;
use crate::control::store::{CountWrite, SavedQuota, Store};
use crate::ids::{Slot, StageId};
use crate::plan::StagePlan;
use crate::policy::keys::{Binding, Bucket, KeyHash, KeyView, Keyring, Live};
use crate::policy::quota::{Period, Quota};
use crate::policy::throttle::{Limit, SharedBucket};
use crate::policy::usage::{now_s, resolve, KeyDef, Resolved, Seed, StageInfo};

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

pub struct Registry {
    /// The plan generation `stages` come from; keyrings carry it.
    generation: u64,
    stages: Vec<StageInfo>,
    workers: usize,
    live: Arc<Live>,
    store: Arc<Store>,
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
    /// Cluster mode: every key's throttle buckets, by their name in Redis (the
    /// tokens thread refills their reservoirs; republished with each keyring).
    key_buckets: KeyBuckets,
}

/// Cluster mode: every key's throttle buckets by their name in Redis, swapped as
/// keys and plans change (read by the tokens thread without a lock).
pub type KeyBuckets = Arc<arc_swap::ArcSwap<Vec<(String, Arc<SharedBucket>)>>>;

#[derive(Default)]
struct AccessKeys {
    table: Option<Arc<crate::policy::sigv4::KeyTable>>,
    config: Vec<crate::policy::sigv4::AccessKey>,
    made: BTreeMap<String, crate::policy::sigv4::AccessKey>,
}

impl Registry {
    /// Loads what the store holds, applies the config's plans and keys over it, and
    /// publishes the first keyring.
    pub fn new(
        stages: &[StagePlan],
        workers: usize,
        live: Arc<Live>,
        store: Arc<Store>,
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
            key_buckets: Arc::default(),
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
            r.store.seed_plan(def)?;
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
        r.store.seed_keys(&seeded)?;
        r.rebuild();
        Ok(r)
    }

    pub(crate) fn stage_names(&self, ids: &[StageId]) -> Vec<String> {
        ids.iter()
            .map(|&i| format!("{}/{}", self.stages[i].api, self.stages[i].stage))
            .collect()
    }

    pub(crate) fn binding(&mut self, key_id: &str, plan: &str) -> Option<Arc<Binding>> {
        let k = (key_id.to_owned(), plan.to_owned());
        if let Some(b) = self.bindings.get(&k) {
            return Some(Arc::clone(b));
        }
        let res = self.plans.get(plan)?.1.clone();
        let workers = self.workers;
        let cluster = self.store.mirror().is_some();
        let bucket = |slots: &mut Slots, l: Limit| {
            let shared = Arc::new(SharedBucket::new(l, workers));
            if cluster {
                // Cluster mode: the key's rate is for all nodes together.
                shared.share(workers);
            }
            Bucket {
                slot: slots.take(),
                shared,
            }
        };
        let throttle = res.throttle.map(|l| bucket(&mut self.slots, l));
        let routes: Box<[(StageId, crate::ids::RouteId, Bucket)]> = res
            .routes
            .iter()
            .map(|&(s, r, l)| (s, r, bucket(&mut self.slots, l)))
            .collect();
        if let Some(m) = self.store.mirror() {
            // Cluster mode: the key's reservoirs filled before its first request.
            let named = throttle
                .iter()
                .map(|t| (self.bucket_name(key_id, plan, None), t))
                .chain(
                    routes
                        .iter()
                        .map(|(s, r, t)| (self.bucket_name(key_id, plan, Some((*s, *r))), t)),
                );
            for (name, t) in named {
                crate::control::redis::fill(m, &t.shared, &name);
            }
        }
        let quota = match res.quota {
            // Cluster mode: within what Redis grants this node.
            Some(q) if self.store.mirror().is_some() => Quota::new(q.limit, q.period).with_grant(),
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

    /// A key's throttle bucket's name in Redis: the plan's, or one route's.
    fn bucket_name(
        &self,
        key: &str,
        plan: &str,
        route: Option<(StageId, crate::ids::RouteId)>,
    ) -> String {
        match route {
            None => format!("k:{key}:{plan}"),
            Some((s, r)) => {
                let st = &self.stages[s];
                let route = st.routes.get(r).map_or("", String::as_str);
                format!("k:{key}:{plan}:{}/{}:{route}", st.api, st.stage)
            }
        }
    }

    /// Drops a (key, plan) binding so that the next rebuild makes it anew (new
    /// buckets), keeping its quota count for the new one (same period only).
    pub(crate) fn retire(&mut self, k: (String, String)) {
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

    pub(crate) fn release(&mut self, b: &Binding) {
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
            self.store.seed_plan(def)?;
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
        self.store.seed_keys(&seeded)?;
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

    /// The store, for the compiler's lookups of deployments.
    pub fn store_handle(&self) -> Arc<Store> {
        Arc::clone(&self.store)
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

    /// Builds the keyring from the definitions and publishes it.
    pub(crate) fn rebuild(&mut self) {
        self.publish(true);
    }

    /// Builds the keyring and publishes it; `wait`: until every worker uses it.
    pub(crate) fn publish(&mut self, wait: bool) {
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
        if self.store.mirror().is_some() {
            let mut list = Vec::new();
            for ((key, plan), b) in &self.bindings {
                if let Some(t) = &b.throttle {
                    list.push((self.bucket_name(key, plan, None), Arc::clone(&t.shared)));
                }
                for (s, r, t) in b.routes.iter() {
                    list.push((
                        self.bucket_name(key, plan, Some((*s, *r))),
                        Arc::clone(&t.shared),
                    ));
                }
            }
            self.key_buckets.store(Arc::new(list));
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
                let others = q.grant.as_ref().map_or(0, |g| g.others(period));
                q.limit().saturating_sub(spent + others)
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

    /// Hands every quota back to the store (at shutdown, after the workers settled
    /// their leases).
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        let r = self.flush();
        self.store.send_usage();
        r
    }
}
