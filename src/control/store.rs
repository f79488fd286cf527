//! The embedded store (`store.path`, redb): API keys, usage plans created through
//! the management API, each key's quota counts, and usage per key per day.
//!
//! Only the control plane writes here (the admin thread and the store's writer
//! thread, `crate::control::registry`); the request path never does. Without `store.path`
//! the same tables live in memory and die with the process.
//!
//! What a `kill -9` can lose. Quota counts are saved as *leased* (handed to
//! workers), never less than what was served. The writer thread is woken when a
//! worker takes a lease and commits at most once per 10 ms (one commit per gap
//! however many leases, which keeps a busy key's cost to a few percent). So:
//! - a key is charged for the leases its workers held unspent: at most one lease
//!   per worker (≤ 64 requests, and ≤ a quarter of what was left per worker, so
//!   a nearly spent quota loses a request or two);
//! - usage served but not yet saved is at most the leases taken in the last gap
//!   and the commit in flight: at most one lease per worker unless a single key
//!   runs above one lease per worker per 10 ms (6,400 req/s per worker).
//!
//! A clean stop (SIGTERM) returns every unspent lease first, so the saved counts
//! are exact. Keys and plans are committed before the management API answers, so
//! an acknowledged key is never lost.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::config::UsagePlanFile;
use crate::policy::usage::KeyDef;

/// Key id → `KeyDef` as JSON.
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("api_keys");
/// Plan name → `UsagePlanFile` as JSON.
const PLANS: TableDefinition<&str, &str> = TableDefinition::new("usage_plans");
/// (key id, plan) → (period kind, period index, leased, spent).
const QUOTAS: TableDefinition<(&str, &str), (u8, u64, u64, u64)> = TableDefinition::new("quotas");
/// (plan, key id, day since 1970-01-01) → (served that day, remaining at its end;
/// `u64::MAX` for a plan without a quota).
const USAGE: TableDefinition<(&str, &str, u64), (u64, u64)> = TableDefinition::new("usage");

/// SigV4 access key id → `AccessKey` as JSON (those made through the management API).
const ACCESS_KEYS: TableDefinition<&str, &str> = TableDefinition::new("access_keys");
/// (api, deployment id) → the deployment as JSON (`deploy::Deployment`).
const DEPLOYMENTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("deployments");
/// (api, stage) → what the management API set for the stage (`deploy::StagePointer`).
const STAGES: TableDefinition<(&str, &str), &str> = TableDefinition::new("stages");

const NO_QUOTA: u64 = u64::MAX;

/// A config definition Redis could not take: the node starts (or reloads) on it
/// anyway (with `fail_closed`, answering 503 on keyed and throttled routes until
/// Redis is back), and the cluster sync thread seeds it once Redis answers,
/// before it adopts anything from there.
fn seeded(m: &crate::control::redis::Shared, r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = r {
        if !m.needs_seed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tracing::warn!(error = %format!("{e:#}"), "config definitions not seeded into redis; seeded when it is back");
        }
    }
    Ok(())
}

pub struct Store {
    db: Database,
    pub persistent: bool,
    /// Cluster mode: definitions are written to Redis too (the source of truth),
    /// which announces them to every node.
    mirror: Option<std::sync::Arc<crate::control::redis::Shared>>,
    /// Cluster mode: requests served not yet added to Redis's daily usage (Redis
    /// away): added when it is back, so the report counts every request.
    #[allow(clippy::disallowed_types)]
    // The store's writer and the admin thread only; never a worker.
    pending: std::sync::Mutex<Pending>,
}

/// Daily usage not yet in Redis, and when it was last sent.
#[derive(Default)]
struct Pending {
    served: HashMap<(String, String, u64), u64>,
    sent: Option<std::time::Instant>,
}

/// Usage goes to Redis at most this often (one pipeline per gap, whatever the
/// traffic): the usage report lags by as much.
const USAGE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// What the store held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub keys: Vec<KeyDef>,
    pub plans: Vec<UsagePlanFile>,
    pub quotas: HashMap<(String, String), SavedQuota>,
}

/// One quota's counts to save, and what it served today.
#[derive(Debug, Clone)]
pub struct CountWrite {
    pub key: String,
    pub plan: String,
    pub quota: SavedQuota,
    pub day: u64,
    pub served: u64,
    pub remaining: Option<u64>,
}

impl Store {
    /// Opens (or creates) `dir/shardgate.redb`. Fails if another process has it open.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create store directory {}", dir.display()))?;
        let file = dir.join("shardgate.redb");
        let db = Database::create(&file).with_context(|| {
            format!(
                "cannot open store {} (is another shardgate using it?)",
                file.display()
            )
        })?;
        Self::init(db, true)
    }

    /// A store that lives in memory only (no `store.path`).
    pub fn memory() -> anyhow::Result<Self> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        Self::init(db, false)
    }

    fn init(db: Database, persistent: bool) -> anyhow::Result<Self> {
        let tx = db.begin_write()?;
        tx.open_table(KEYS)?;
        tx.open_table(PLANS)?;
        tx.open_table(QUOTAS)?;
        tx.open_table(USAGE)?;
        tx.open_table(ACCESS_KEYS)?;
        tx.open_table(DEPLOYMENTS)?;
        tx.open_table(STAGES)?;
        tx.commit()?;
        Ok(Self {
            db,
            persistent,
            mirror: None,
            pending: Default::default(),
        })
    }

    pub fn load(&self) -> anyhow::Result<Loaded> {
        let tx = self.db.begin_read()?;
        let mut out = Loaded::default();
        for row in tx.open_table(KEYS)?.iter()? {
            let (id, json) = row?;
            match serde_json::from_str::<KeyDef>(json.value()) {
                Ok(k) => out.keys.push(k),
                Err(e) => {
                    tracing::warn!(key = id.value(), error = %e, "unreadable API key in the store; skipped")
                }
            }
        }
        for row in tx.open_table(PLANS)?.iter()? {
            let (name, json) = row?;
            match serde_json::from_str::<UsagePlanFile>(json.value()) {
                Ok(p) => out.plans.push(p),
                Err(e) => {
                    tracing::warn!(plan = name.value(), error = %e, "unreadable usage plan in the store; skipped")
                }
            }
        }
        for row in tx.open_table(QUOTAS)?.iter()? {
            let (k, v) = row?;
            let (key, plan) = k.value();
            let (period_kind, period, leased, spent) = v.value();
            out.quotas.insert(
                (key.to_owned(), plan.to_owned()),
                SavedQuota {
                    period_kind,
                    period,
                    leased,
                    spent,
                },
            );
        }
        Ok(out)
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        if !self.persistent {
            tx.set_durability(Durability::None)?;
        }
        f(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Cluster mode: definitions go to Redis as well.
    pub fn with_mirror(mut self, m: std::sync::Arc<crate::control::redis::Shared>) -> Self {
        self.mirror = Some(m);
        self
    }

    pub fn mirror(&self) -> Option<&std::sync::Arc<crate::control::redis::Shared>> {
        self.mirror.as_ref()
    }

    /// The config's keys: saved here, and in Redis only where Redis lacks them
    /// (a key changed at run time through any node keeps that change).
    pub fn seed_keys(&self, keys: &[KeyDef]) -> anyhow::Result<()> {
        self.write_keys(keys)?;
        if let Some(m) = &self.mirror {
            for k in keys {
                seeded(m, m.seed("keys", &k.id, &serde_json::to_string(k)?))?;
            }
        }
        Ok(())
    }

    /// A config plan: as `seed_keys`.
    pub fn seed_plan(&self, plan: &UsagePlanFile) -> anyhow::Result<()> {
        self.write_plan(plan)?;
        if let Some(m) = &self.mirror {
            seeded(
                m,
                m.seed("plans", &plan.name, &serde_json::to_string(plan)?),
            )?;
        }
        Ok(())
    }

    /// The SigV4 access keys made through the management API.
    pub fn access_keys(&self) -> anyhow::Result<Vec<crate::policy::sigv4::AccessKey>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in tx.open_table(ACCESS_KEYS)?.iter()? {
            let (id, json) = row?;
            match serde_json::from_str(json.value()) {
                Ok(k) => out.push(k),
                Err(e) => {
                    tracing::warn!(access_key = id.value(), error = %e, "unreadable access key in the store; skipped")
                }
            }
        }
        Ok(out)
    }

    pub fn put_access_key(&self, key: &crate::policy::sigv4::AccessKey) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.put("access_keys", &key.id, &serde_json::to_string(key)?)?;
        }
        self.write(|tx| {
            tx.open_table(ACCESS_KEYS)?
                .insert(key.id.as_str(), serde_json::to_string(key)?.as_str())?;
            Ok(())
        })
    }

    pub fn delete_access_key(&self, id: &str) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.delete("access_keys", id)?;
        }
        self.write(|tx| {
            tx.open_table(ACCESS_KEYS)?.remove(id)?;
            Ok(())
        })
    }

    pub fn put_deployment(&self, d: &crate::control::store::Deployment) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.put(
                "deployments",
                &serde_json::to_string(&(&d.api, &d.id))?,
                &serde_json::to_string(d)?,
            )?;
        }
        self.write_deployment(d)
    }

    /// Saves a deployment here only (one another node made, from Redis).
    pub fn write_deployment(&self, d: &crate::control::store::Deployment) -> anyhow::Result<()> {
        self.write(|tx| {
            tx.open_table(DEPLOYMENTS)?.insert(
                (d.api.as_str(), d.id.as_str()),
                serde_json::to_string(d)?.as_str(),
            )?;
            Ok(())
        })
    }

    /// The deployments of `api`, oldest first.
    pub fn deployments(&self, api: &str) -> anyhow::Result<Vec<crate::control::store::Deployment>> {
        let tx = self.db.begin_read()?;
        let mut out: Vec<crate::control::store::Deployment> = Vec::new();
        for row in tx.open_table(DEPLOYMENTS)?.range((api, "")..)? {
            let (k, json) = row?;
            if k.value().0 != api {
                break;
            }
            match serde_json::from_str(json.value()) {
                Ok(d) => out.push(d),
                Err(e) => {
                    tracing::warn!(deployment = k.value().1, error = %e, "unreadable deployment in the store; skipped")
                }
            }
        }
        out.sort_by_key(|d| (d.created_ms, d.id.clone()));
        Ok(out)
    }

    pub fn deployment(
        &self,
        api: &str,
        id: &str,
    ) -> anyhow::Result<Option<crate::control::store::Deployment>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(DEPLOYMENTS)?;
        let Some(json) = t.get((api, id))? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(json.value())?))
    }

    /// Sets (or with `None` removes) what the management API set for a stage.
    pub fn put_stage(
        &self,
        api: &str,
        stage: &str,
        p: Option<&crate::control::store::StagePointer>,
    ) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            let field = serde_json::to_string(&(api, stage))?;
            match p {
                Some(p) => m.put("stages", &field, &serde_json::to_string(p)?)?,
                None => m.delete("stages", &field)?,
            }
        }
        self.write_stage(api, stage, p)
    }

    /// Sets a stage's pointer here only (another node's, from Redis).
    pub fn write_stage(
        &self,
        api: &str,
        stage: &str,
        p: Option<&crate::control::store::StagePointer>,
    ) -> anyhow::Result<()> {
        self.write(|tx| {
            let mut t = tx.open_table(STAGES)?;
            match p {
                Some(p) => {
                    t.insert((api, stage), serde_json::to_string(p)?.as_str())?;
                }
                None => {
                    t.remove((api, stage))?;
                }
            }
            Ok(())
        })
    }

    /// Every stage the management API set: (api, stage, pointer).
    pub fn stages(
        &self,
    ) -> anyhow::Result<Vec<(String, String, crate::control::store::StagePointer)>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in tx.open_table(STAGES)?.iter()? {
            let (k, json) = row?;
            let (api, stage) = k.value();
            match serde_json::from_str(json.value()) {
                Ok(p) => out.push((api.to_owned(), stage.to_owned(), p)),
                Err(e) => {
                    tracing::warn!(api, stage, error = %e, "unreadable stage setting in the store; skipped")
                }
            }
        }
        Ok(out)
    }

    pub fn put_key(&self, key: &KeyDef) -> anyhow::Result<()> {
        self.put_keys(std::slice::from_ref(key))
    }

    pub fn put_keys(&self, keys: &[KeyDef]) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            for k in keys {
                m.put("keys", &k.id, &serde_json::to_string(k)?)?;
            }
        }
        self.write_keys(keys)
    }

    fn write_keys(&self, keys: &[KeyDef]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut t = tx.open_table(KEYS)?;
            for k in keys {
                t.insert(k.id.as_str(), serde_json::to_string(k)?.as_str())?;
            }
            Ok(())
        })
    }

    pub fn delete_key(&self, id: &str) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.delete("keys", id)?;
        }
        self.write(|tx| {
            tx.open_table(KEYS)?.remove(id)?;
            let mut q = tx.open_table(QUOTAS)?;
            q.retain(|(k, _), _| k != id)?;
            Ok(())
        })
    }

    pub fn put_plan(&self, plan: &UsagePlanFile) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.put("plans", &plan.name, &serde_json::to_string(plan)?)?;
        }
        self.write_plan(plan)
    }

    fn write_plan(&self, plan: &UsagePlanFile) -> anyhow::Result<()> {
        self.write(|tx| {
            tx.open_table(PLANS)?
                .insert(plan.name.as_str(), serde_json::to_string(plan)?.as_str())?;
            Ok(())
        })
    }

    pub fn delete_plan(&self, name: &str) -> anyhow::Result<()> {
        if let Some(m) = &self.mirror {
            m.delete("plans", name)?;
        }
        self.write(|tx| {
            tx.open_table(PLANS)?.remove(name)?;
            let mut q = tx.open_table(QUOTAS)?;
            q.retain(|(_, p), _| p != name)?;
            Ok(())
        })
    }

    /// Saves quota counts and adds to today's usage, in one transaction.
    pub fn write_counts(&self, writes: &[CountWrite]) -> anyhow::Result<()> {
        let mut totals = Vec::new();
        self.write(|tx| {
            let mut q = tx.open_table(QUOTAS)?;
            let mut u = tx.open_table(USAGE)?;
            for w in writes {
                let s = w.quota;
                q.insert(
                    (w.key.as_str(), w.plan.as_str()),
                    (s.period_kind, s.period, s.leased, s.spent),
                )?;
                let k = (w.plan.as_str(), w.key.as_str(), w.day);
                let before = u.get(k)?.map_or(0, |v| v.value().0);
                u.insert(k, (before + w.served, w.remaining.unwrap_or(NO_QUOTA)))?;
                if w.served > 0 {
                    totals.push(((w.plan.clone(), w.key.clone(), w.day), before + w.served));
                }
            }
            Ok(())
        })?;
        // Cluster mode: this node's day totals go to Redis (its field of each day).
        if let Some(m) = &self.mirror {
            let mut pending = crate::lock(&self.pending);
            pending.served.extend(totals);
            self.push_usage(m, &mut pending, false);
        }
        Ok(())
    }

    /// Adds what is pending to Redis's daily usage; kept for later if Redis is away.
    fn push_usage(&self, m: &crate::control::redis::Shared, pending: &mut Pending, now: bool) {
        if pending.served.is_empty()
            || (!now && pending.sent.is_some_and(|t| t.elapsed() < USAGE_EVERY))
        {
            return;
        }
        pending.sent = Some(std::time::Instant::now());
        let batch: Vec<((String, String, u64), u64)> = pending
            .served
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if m.set_usage(&batch).is_ok() {
            pending.served.clear();
        }
    }

    /// Cluster mode: adds usage still pending to Redis (the writer's loop, so
    /// counts kept while Redis was away reach it once it is back).
    pub fn replay_usage(&self) {
        if let Some(m) = &self.mirror {
            let mut pending = crate::lock(&self.pending);
            self.push_usage(m, &mut pending, false);
        }
    }

    /// Cluster mode: sends pending usage now (a usage report, shutdown).
    pub fn send_usage(&self) {
        if let Some(m) = &self.mirror {
            let mut pending = crate::lock(&self.pending);
            self.push_usage(m, &mut pending, true);
        }
    }

    /// `(day, served, remaining)` of the days with a record, from `start` to `end`.
    pub fn usage(
        &self,
        plan: &str,
        key: &str,
        start: u64,
        end: u64,
    ) -> anyhow::Result<Vec<(u64, u64, Option<u64>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(USAGE)?;
        let mut out = Vec::new();
        for row in t.range((plan, key, start)..=(plan, key, end))? {
            let (k, v) = row?;
            let (used, remaining) = v.value();
            out.push((
                k.value().2,
                used,
                (remaining != NO_QUOTA).then_some(remaining),
            ));
        }
        // Cluster mode: what every node served (this node's own count when Redis
        // cannot be read).
        if let Some(m) = &self.mirror {
            if let Ok(shared) = m.usage(plan, key, start..=end) {
                for (day, served) in shared {
                    match out.iter_mut().find(|r| r.0 == day) {
                        Some(r) => r.1 = served,
                        None => out.push((day, served, None)),
                    }
                }
                out.sort_by_key(|r| r.0);
            }
        }
        Ok(out)
    }
}

/// The saved state of one quota, read back at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedQuota {
    pub period_kind: u8,
    pub period: u64,
    pub leased: u64,
    pub spent: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub api: String,
    #[serde(default)]
    pub description: String,
    pub created_ms: u64,
    /// The API's mapping in the config (without `stages`), as JSON.
    pub snapshot: serde_json::Value,
}

/// What the management API set for one stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StagePointer {
    /// The deployment the stage serves; `None`: the config file's definition.
    pub deployment_id: Option<String>,
    /// Stage variables over the file's.
    pub variables: Option<BTreeMap<String, String>>,
    /// The stage's canary as the management API set it; `None`: the file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryPointer>,
}

/// A canary the management API set, or removed (over the file's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum CanaryPointer {
    Removed,
    Set(crate::config::CanaryFile),
}

impl CanaryPointer {
    pub fn setting(&self) -> Option<&crate::config::CanaryFile> {
        match self {
            Self::Removed => None,
            Self::Set(c) => Some(c),
        }
    }
}

impl StagePointer {
    pub fn is_empty(&self) -> bool {
        self.deployment_id.is_none() && self.variables.is_none() && self.canary.is_none()
    }
}
