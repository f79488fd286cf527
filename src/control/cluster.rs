//! Cluster mode's sync thread: keeps this node's keys, usage plans and access keys
//! those Redis holds, and tells Redis this node is alive.
//!
//! A change made through any node bumps `version` and publishes it; this thread,
//! subscribed, adopts the shared definitions at once (`Registry::adopt`), and
//! workers switch to the new keyring on their next tick (100 ms). Each second it
//! also compares `version` with the one it adopted, so a node that missed a
//! message (a reconnect, a network blip) catches up within the second, and writes
//! its heartbeat (`GET /cluster` lists them). Redis down: the node keeps what it
//! last adopted, retries with backoff, and logs once per change of state.

// The control plane shares the registry under a mutex (clippy.toml keeps them off
// the request path).
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::control::redis::Shared;
use crate::control::registry::Registry;
use crate::control::reload::Control;
use crate::control::store::{Deployment, StagePointer, Store};

/// How long a subscribed read waits before the thread does its rounds.
const WAIT: Duration = Duration::from_millis(200);
/// Version check and heartbeat.
const EVERY: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is shown as gone.
pub const ALIVE_MS: u64 = 5_000;

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub listeners: Vec<String>,
    pub admin: Option<String>,
    pub started_ms: u64,
}

/// Adopts the shared definitions now; the version adopted.
pub fn sync_now(shared: &Shared, registry: &Mutex<Registry>) -> anyhow::Result<u64> {
    let version = shared.version()?;
    let keys = parse(shared.all("keys")?, "API key");
    let plans = parse(shared.all("plans")?, "usage plan");
    let access = parse(shared.all("access_keys")?, "access key");
    crate::lock(registry).adopt(keys, plans, access);
    Ok(version)
}

fn parse<T: serde::de::DeserializeOwned>(rows: Vec<(String, String)>, what: &str) -> Vec<T> {
    rows.into_iter()
        .filter_map(|(id, json)| match serde_json::from_str(&json) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "unreadable shared {what} in redis; skipped");
                None
            }
        })
        .collect()
}

/// Copies the deployments this node lacks from Redis and makes its stage
/// pointers Redis's; `true` when a pointer changed (the plan must be compiled
/// again).
pub fn pull_deployments(shared: &Shared, store: &Store) -> anyhow::Result<bool> {
    for d in parse::<Deployment>(shared.all("deployments")?, "deployment") {
        if store.deployment(&d.api, &d.id)?.is_none() {
            store.write_deployment(&d)?;
        }
    }
    let mut remote: BTreeMap<(String, String), StagePointer> = BTreeMap::new();
    for (field, json) in shared.all("stages")? {
        match (
            serde_json::from_str::<(String, String)>(&field),
            serde_json::from_str::<StagePointer>(&json),
        ) {
            (Ok(k), Ok(p)) => {
                remote.insert(k, p);
            }
            _ => {
                tracing::warn!(stage = %field, "unreadable shared stage setting in redis; skipped")
            }
        }
    }
    let local: BTreeMap<(String, String), StagePointer> = store
        .stages()?
        .into_iter()
        .map(|(a, s, p)| ((a, s), p))
        .collect();
    if remote == local {
        return Ok(false);
    }
    for (k, p) in &remote {
        if local.get(k) != Some(p) {
            store.write_stage(&k.0, &k.1, Some(p))?;
        }
    }
    for k in local.keys() {
        if !remote.contains_key(k) {
            store.write_stage(&k.0, &k.1, None)?;
        }
    }
    Ok(true)
}

/// Starts the sync thread (it runs for the life of the process); `control`
/// reloads the plan when another node moved a stage.
pub fn start(
    shared: Arc<Shared>,
    registry: Arc<Mutex<Registry>>,
    control: Arc<Control>,
    me: NodeInfo,
    adopted: u64,
) {
    let spawned = std::thread::Builder::new()
        .name("shardgate-cluster".into())
        .spawn(move || run(&shared, &registry, &control, &me, adopted));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cluster sync thread: changes from other nodes are not seen");
    }
}

/// What the sync thread keeps between rounds.
struct State {
    adopted: u64,
    generation: u64,
    next_round: Instant,
}

fn run(
    shared: &Shared,
    registry: &Mutex<Registry>,
    control: &Control,
    me: &NodeInfo,
    adopted: u64,
) {
    crate::below_workers(5);
    let mut st = State {
        adopted,
        generation: crate::lock(registry).generation(),
        next_round: Instant::now(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        // Subscribe (again); while Redis is down, do the rounds on a backoff.
        match shared.subscriber(WAIT) {
            Ok(mut conn) => {
                let mut ps = conn.as_pubsub();
                let flushes = shared.flushes_channel();
                if ps.subscribe(shared.changes_channel()).is_ok() && ps.subscribe(&flushes).is_ok()
                {
                    backoff = Duration::from_millis(100);
                    loop {
                        let changed = match ps.get_message() {
                            Ok(msg) if msg.get_channel_name() == flushes => {
                                if let Ok(text) = msg.get_payload::<String>() {
                                    flush(shared, control, &text);
                                }
                                false
                            }
                            Ok(_) => true,
                            Err(e) if e.is_timeout() => false,
                            Err(_) => break,
                        };
                        round(shared, registry, control, me, &mut st, changed);
                    }
                }
            }
            Err(_) => {
                round(shared, registry, control, me, &mut st, false);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(EVERY);
            }
        }
    }
}

/// Heartbeat and version check once a second; adopts the shared definitions
/// when a change was announced, the version moved, or a reload re-seeded the
/// config's definitions over them.
fn round(
    shared: &Shared,
    registry: &Mutex<Registry>,
    control: &Control,
    me: &NodeInfo,
    st: &mut State,
    changed: bool,
) {
    let now = Instant::now();
    let due = now >= st.next_round;
    if shared.needs_seed.load(std::sync::atomic::Ordering::Acquire) {
        // What this node holds goes in first: adopting a Redis without the
        // config's definitions would drop them here too.
        if !(due || changed) {
            return;
        }
        if crate::lock(registry).reseed().is_err() {
            if due {
                st.next_round = now + EVERY;
                if !shared.fail_open {
                    crate::lock(registry).live().set_closed(true);
                }
            }
            return;
        }
        shared
            .needs_seed
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::info!("config definitions seeded into redis");
    }
    if due {
        st.next_round = now + EVERY;
        heartbeat(shared, me, st.adopted);
        if let Ok(nodes) = shared.nodes() {
            let now_ms = crate::clock::unix_ms();
            let alive = nodes
                .iter()
                .filter_map(|(_, j)| serde_json::from_str::<serde_json::Value>(j).ok())
                .filter(|v| {
                    now_ms.saturating_sub(v["last_seen_ms"].as_u64().unwrap_or(0)) < ALIVE_MS
                })
                .count();
            shared
                .alive
                .store((alive as u32).max(1), std::sync::atomic::Ordering::Release);
        }
        if !shared.fail_open {
            crate::lock(registry).live().set_closed(!shared.is_up());
        }
    }
    let regen = crate::lock(registry).generation();
    let current = if due { shared.version().ok() } else { None };
    if current.is_some_and(|v| v < st.adopted) {
        // Redis went back in time: it lost its data. What this node holds goes
        // back in (where Redis lacks it), then every node adopts it.
        tracing::warn!(
            redis_version = current,
            adopted = st.adopted,
            "redis lost the shared state; seeding it again from this node"
        );
        if let Err(e) = crate::lock(registry).reseed() {
            tracing::warn!(error = %format!("{e:#}"), "reseeding redis failed; retrying");
            return;
        }
    }
    let moved = current.is_some_and(|v| v != st.adopted);
    if changed || moved || regen != st.generation {
        match sync_now(shared, registry) {
            Ok(v) => {
                st.adopted = v;
                st.generation = regen;
            }
            Err(e) => tracing::debug!(error = %e, "cluster sync failed; retrying"),
        }
        let moved = pull_deployments(shared, crate::lock(registry).store());
        match moved {
            Ok(true) => {
                tracing::info!("another node moved a stage: compiling the plan again");
                if let Err(errs) = control.reload("cluster: stage changed on another node") {
                    tracing::error!(errors = ?errs, "cluster: the stage change does not compile here");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "cluster: deployments not pulled; retrying"),
        }
    }
}

/// A cache flush another node announced: this node's workers drop the same.
fn flush(shared: &Shared, control: &Control, text: &str) {
    use base64::Engine;
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if v["from"] == shared.node_id.as_str() {
        return;
    }
    let (Some(api), Some(stage)) = (v["api"].as_str(), v["stage"].as_str()) else {
        return;
    };
    let plan = control.plan();
    let Some(sid) = plan
        .stages
        .iter()
        .position(|s| s.api == api && s.stage == stage)
    else {
        return;
    };
    match v["key"].as_str() {
        Some(k) => {
            if let Ok(key) = base64::engine::general_purpose::STANDARD.decode(k) {
                plan.cache.flush_key(sid, key);
            }
        }
        None => {
            for s in plan.with_canary(sid) {
                plan.cache.flush_stage(s);
            }
        }
    }
    tracing::debug!(api, stage, "cache flush from another node applied");
}

fn heartbeat(shared: &Shared, me: &NodeInfo, version: u64) {
    let json = serde_json::json!({
        "id": shared.node_id,
        "listeners": me.listeners,
        "admin": me.admin,
        "version": version,
        "started_ms": me.started_ms,
        "last_seen_ms": crate::clock::unix_ms(),
    });
    let _ = shared.heartbeat(&json.to_string());
}

/// `GET /cluster`: every node's last heartbeat, with whether it is alive.
pub fn nodes_json(shared: &Shared) -> anyhow::Result<serde_json::Value> {
    let now = crate::clock::unix_ms();
    let mut nodes: Vec<serde_json::Value> = shared
        .nodes()?
        .into_iter()
        .filter_map(|(_, json)| serde_json::from_str::<serde_json::Value>(&json).ok())
        .map(|mut v| {
            let seen = v["last_seen_ms"].as_u64().unwrap_or(0);
            v["alive"] = serde_json::Value::Bool(now.saturating_sub(seen) < ALIVE_MS);
            v["this_node"] = serde_json::Value::Bool(v["id"] == shared.node_id.as_str());
            v
        })
        .collect();
    nodes.sort_by_key(|v| v["started_ms"].as_u64().unwrap_or(0));
    Ok(serde_json::json!({
        "node": shared.node_id,
        "redis": if shared.is_up() { "up" } else { "unreachable" },
        "items": nodes,
    }))
}

/// Fills each shared throttle's reservoir once (at start, before any request).
pub fn fill_reservoirs(
    shared: &Shared,
    throttles: &[Arc<crate::policy::throttle::SharedBucket>],
    names: &[String],
) {
    for (b, name) in throttles.iter().zip(names) {
        crate::control::redis::fill(shared, b, name);
    }
}

/// How often the tokens thread looks at the reservoirs.
const REFILL_EVERY: Duration = Duration::from_millis(5);

/// Starts the thread that keeps each throttle's reservoir on this node topped up
/// from the bucket in Redis (cluster mode: a throttle's `rate` is for all nodes):
/// the plan's throttles (stages, routes, the gateway) and every key's.
pub fn start_tokens(shared: Arc<Shared>, control: Arc<Control>) {
    let keys = crate::lock(control.registry()).key_buckets();
    let spawned = std::thread::Builder::new()
        .name("shardgate-tokens".into())
        .spawn(move || {
            crate::below_workers(5);
            // Per bucket (by slot): not before this time again (an empty bucket).
            let mut quiet: std::collections::HashMap<u32, Instant> = Default::default();
            loop {
                std::thread::sleep(REFILL_EVERY);
                let plan = control.plan();
                let now = Instant::now();
                for (b, name) in plan.throttles.iter().zip(&plan.throttle_names) {
                    refill(&shared, b, name, &mut quiet, now);
                }
                for (name, b) in keys.load().iter() {
                    refill(&shared, b, name, &mut quiet, now);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cluster tokens thread: throttles admit nothing");
    }
}

/// Tops one reservoir up when a worker found it low (or it is offline: tries
/// Redis again); an empty bucket is asked again once a token may be there.
fn refill(
    shared: &Shared,
    b: &crate::policy::throttle::SharedBucket,
    name: &str,
    quiet: &mut std::collections::HashMap<u32, Instant>,
    now: Instant,
) {
    use std::sync::atomic::Ordering;
    let Some(r) = b.remote.get() else { return };
    if quiet.get(&b.slot).is_some_and(|t| now < *t) {
        return;
    }
    let have = r.tokens();
    let wanted = r.wanted.swap(false, Ordering::AcqRel);
    let offline = r.offline.load(Ordering::Acquire);
    if !(wanted || offline || have < r.target.div_ceil(2)) {
        return;
    }
    let (interval_ns, tolerance_ns) = b.gcra();
    if interval_ns == 0 {
        return;
    }
    let want = r.target.saturating_sub(have).max(1);
    match shared.tokens(name, interval_ns / 1000, tolerance_ns / 1000, want) {
        Ok(n) => {
            r.add(n);
            if r.offline.swap(false, Ordering::AcqRel) {
                tracing::info!(throttle = %name, "throttle shared through redis again");
            }
            if n == 0 {
                let wait = Duration::from_nanos(interval_ns).min(Duration::from_millis(50));
                quiet.insert(b.slot, now + wait);
            } else {
                quiet.remove(&b.slot);
            }
        }
        Err(_) => {
            if shared.fail_open {
                r.go_offline(b.limit, shared.alive.load(Ordering::Acquire));
            }
            quiet.insert(b.slot, now + Duration::from_millis(500));
        }
    }
}
