//! Hot reload: the control plane compiles the config again, carries over what
//! unchanged routes and upstreams hold (token buckets, cache entries, pooled
//! connections, authorizers, metric series), binds new listeners, and hands each
//! worker the new plan. A worker switches on its next tick, between requests; a
//! connection switches before its next request, so requests in flight finish on
//! the plan they began with. An invalid config changes nothing.

// The control plane: its threads share state under mutexes, off the request path.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::compile::Options;
use crate::control::registry::Registry;
use crate::plan::Plan;
use crate::proxy::worker::Swap;

/// How long a reload waits for every worker to run the new plan.
const SWITCH_WAIT: Duration = Duration::from_secs(2);

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub generation: u64,
    pub stages: usize,
    pub routes: usize,
    /// Listeners opened (name, address) and closed (name).
    pub opened: Vec<(String, SocketAddr)>,
    pub closed: Vec<String>,
    /// Settings that need a restart and were left as they were.
    pub warnings: Vec<String>,
    /// Every worker switched within the wait.
    pub switched: bool,
}

struct Attached {
    swaps: Vec<crossbeam_channel::Sender<Swap>>,
    running: Arc<[AtomicU64]>,
}

/// The running plan and what is needed to replace it.
pub struct Control {
    path: PathBuf,
    current: ArcSwap<Plan>,
    registry: Arc<Mutex<Registry>>,
    /// The workers' channels and the generation each runs, once they run.
    workers: OnceLock<Attached>,
    /// One reload at a time.
    busy: Mutex<()>,
    /// The reload thread's queue: (reason, where to answer).
    asks: Mutex<Option<crossbeam_channel::Sender<Ask>>>,
}

type Ask = (
    String,
    crossbeam_channel::Sender<Result<Reloaded, Vec<String>>>,
);

impl Control {
    pub fn new(path: PathBuf, plan: Arc<Plan>, registry: Arc<Mutex<Registry>>) -> Self {
        Self {
            path,
            current: ArcSwap::new(plan),
            registry,
            workers: OnceLock::new(),
            busy: Mutex::new(()),
            asks: Mutex::new(None),
        }
    }

    /// The workers' channels, once they run; starts the reload thread. Reloads
    /// run there, below the workers' priority: compiling takes a fraction of a
    /// millisecond, and on a core shared with a worker it waits for the worker's
    /// gaps instead of delaying its requests.
    pub fn attach(self: &Arc<Self>, workers: &crate::proxy::worker::Workers) {
        let _ = self.workers.set(Attached {
            swaps: workers.swaps.clone(),
            running: Arc::clone(&workers.running),
        });
        let (tx, rx) = crossbeam_channel::unbounded::<Ask>();
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("shardgate-reload".into())
            .spawn(move || {
                crate::below_workers(19);
                for (why, answer) in rx {
                    let Some(me) = me.upgrade() else { return };
                    let _ = answer.send(me.reload_here(&why));
                }
            });
        match spawned {
            Ok(_) => *crate::lock(&self.asks) = Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the reload thread; reloads run where asked")
            }
        }
    }

    /// The plan the workers run (or are switching to).
    pub fn plan(&self) -> Arc<Plan> {
        self.current.load_full()
    }

    pub fn registry(&self) -> &Arc<Mutex<Registry>> {
        &self.registry
    }

    /// Reloads the config file; on error the running plan stays and every error is
    /// returned (`path: message` lines).
    pub fn reload(&self, why: &str) -> Result<Reloaded, Vec<String>> {
        let asks = crate::lock(&self.asks).clone();
        let Some(asks) = asks else {
            return self.reload_here(why);
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if asks.send((why.to_owned(), tx)).is_err() {
            return self.reload_here(why);
        }
        rx.recv()
            .unwrap_or_else(|_| Err(vec!["the reload thread stopped".to_owned()]))
    }

    fn reload_here(&self, why: &str) -> Result<Reloaded, Vec<String>> {
        let _one = crate::lock(&self.busy);
        let Some(attached) = self.workers.get() else {
            return Err(vec!["the workers are still starting; try again".to_owned()]);
        };
        let started = Instant::now();
        let prev = self.current.load_full();
        let (deployed, store) = {
            let reg = crate::lock(&self.registry);
            (reg.deployed(), reg.store_handle())
        };
        let compiled = crate::compile::load_plan_with(
            &self.path,
            &Options {
                workers: Some(prev.workers),
                access_keys: Some(Arc::clone(&prev.access_keys)),
                deployed,
                snapshots: Some(crate::control::deploy::snapshots(store)),
            },
        );
        let mut next = match compiled {
            Ok(p) => p,
            Err(errs) => {
                let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
                tracing::error!(
                    reason = why,
                    errors = lines.len(),
                    "reload refused: the running config stays"
                );
                for e in &lines {
                    tracing::error!(reason = why, "reload: {e}");
                }
                return Err(lines);
            }
        };
        let compiled_us = started.elapsed().as_micros() as u64;
        let warnings = restart_only(&prev, &mut next);
        carry(&mut next, &prev);
        crate::compile::functions::keep_running(&mut next.functions, &prev.functions);
        // Functions the new config changed or dropped stop first, so a changed
        // one can take its address again.
        for f in &prev.functions {
            if !next.functions.iter().any(|n| Arc::ptr_eq(n, f)) {
                f.shutdown();
            }
        }
        for f in &next.functions {
            if let Err(e) = f.start() {
                tracing::error!(reason = why, error = %e, "reload refused: a function cannot start");
                return Err(vec![e.to_string()]);
            }
        }
        next.generation = prev.generation + 1;
        // Listeners: the same name and configured address keep their sockets.
        let mut opened = Vec::new();
        let mut closed = Vec::new();
        let mut open: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..prev.workers).map(|_| Vec::new()).collect();
        for lp in &mut next.listeners {
            let kept = prev
                .listeners
                .iter()
                .find(|o| o.name == lp.name && o.configured == lp.configured);
            match kept {
                Some(o) => lp.bind = o.bind,
                None => {
                    let sockets = crate::proxy::worker::bind_listener(lp.configured, prev.workers)
                        .map_err(|e| vec![format!("listeners ({}): {e}", lp.name)])?;
                    lp.bind = sockets.0;
                    for (w, s) in sockets.1.into_iter().enumerate() {
                        open[w].push((lp.name.clone(), s));
                    }
                    opened.push((lp.name.clone(), lp.bind));
                }
            }
        }
        for o in &prev.listeners {
            let kept = next
                .listeners
                .iter()
                .any(|n| n.name == o.name && n.configured == o.configured);
            if !kept {
                closed.push(o.name.clone());
            }
        }
        {
            let mut reg = crate::lock(&self.registry);
            reg.replan(&next.stages, &next.seed, next.generation)
                .map_err(|e| vec![format!("usage plans: {e:#}")])?;
            reg.replace_config_access_keys(std::mem::take(&mut next.config_access_keys));
        }
        for a in &next.authorizers {
            a.start();
        }
        crate::upstream::watch::start(&next.upstreams);
        next.logs.start();
        if let Some(t) = &next.telemetry {
            t.start();
        }
        let next = Arc::new(next);
        let prepared_us = started.elapsed().as_micros() as u64;
        self.current.store(Arc::clone(&next));
        for (w, tx) in attached.swaps.iter().enumerate() {
            let _ = tx.send(Swap {
                plan: Arc::clone(&next),
                open: std::mem::take(&mut open[w]),
                close: closed.clone(),
            });
        }
        let switched = wait_switched(&attached.running, next.generation);
        let out = Reloaded {
            generation: next.generation,
            stages: next.stages.len(),
            routes: next.stages.iter().map(|s| s.routes.len()).sum(),
            opened,
            closed,
            warnings,
            switched,
        };
        for w in &out.warnings {
            tracing::warn!(reason = why, "reload: {w}");
        }
        tracing::info!(
            reason = why,
            generation = out.generation,
            stages = out.stages,
            routes = out.routes,
            opened = ?out.opened,
            closed = ?out.closed,
            switched,
            compile_us = compiled_us,
            prepare_us = prepared_us,
            ms = started.elapsed().as_millis() as u64,
            "reloaded"
        );
        Ok(out)
    }
}

/// Waits until every worker runs `generation` (at most `SWITCH_WAIT`).
fn wait_switched(running: &[AtomicU64], generation: u64) -> bool {
    let until = Instant::now() + SWITCH_WAIT;
    loop {
        if running
            .iter()
            .all(|g| g.load(Ordering::Acquire) >= generation)
        {
            return true;
        }
        if Instant::now() >= until {
            tracing::warn!(
                generation,
                "a worker did not switch to the new plan in time"
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reloads when the config file changes, while the running plan says `watch:
/// true` (checked twice a second; a change is taken once the file has been still
/// for one check, so an editor's partial write is not compiled).
pub fn watch(control: Arc<Control>) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let spawned = std::thread::Builder::new()
        .name("shardgate-watch".into())
        .spawn(move || {
            let mut seen = stamp(&control.path);
            let mut pending: Option<Option<(Option<std::time::SystemTime>, u64)>> = None;
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = stamp(&control.path);
                if !control.plan().watch {
                    seen = now;
                    pending = None;
                    continue;
                }
                match pending.take() {
                    Some(p) if p == now => {
                        seen = now;
                        let _ = control.reload("config file changed");
                    }
                    _ if now != seen => pending = Some(now),
                    _ => {}
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the config watcher");
    }
}

/// Settings a running gateway cannot change: kept as they are, with a warning.
fn restart_only(prev: &Plan, next: &mut Plan) -> Vec<String> {
    let mut w = Vec::new();
    // (`workers` and `runtime`, from the file or the flags, need a restart too:
    // the workers are compiled for as they run.)
    next.runtime = prev.runtime;
    let admin_bind = |p: &Plan| p.admin.as_ref().map(|a| a.bind);
    if admin_bind(next) != admin_bind(prev) {
        w.push("admin.bind: changes need a restart".to_owned());
    }
    let token = |p: &Plan| p.admin.as_ref().and_then(|a| a.token.clone());
    if token(next) != token(prev) {
        w.push("admin.token: changes need a restart".to_owned());
    }
    next.admin = prev.admin.clone();
    if next.store_path != prev.store_path {
        w.push("store.path: changes need a restart".to_owned());
        next.store_path = prev.store_path.clone();
    }
    w
}

/// Makes `next` share with `prev` what unchanged parts of the config hold.
fn carry(next: &mut Plan, prev: &Plan) {
    // Throttles: a bucket of the same name and limit keeps its level; the shards
    // keep their unspent tokens of it (by the bucket's slot).
    next.epoch = prev.epoch;
    let by_name: HashMap<&str, usize> = prev
        .throttle_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for (j, name) in next.throttle_names.iter().enumerate() {
        if let Some(&i) = by_name.get(name.as_str()) {
            if prev.throttles[i].limit == next.throttles[j].limit {
                next.throttles[j] = Arc::clone(&prev.throttles[i]);
            }
        }
    }
    // Authorizers of the same config: their keys, fetchers and the workers'
    // remembered tokens and decisions.
    for j in 0..next.authorizers.len() {
        let sig = next.authorizer_sigs[j];
        if sig == 0 {
            continue;
        }
        if let Some(i) = prev.authorizer_sigs.iter().position(|&s| s == sig) {
            next.authorizers[j] = Arc::clone(&prev.authorizers[i]);
            next.authorizer_uids[j] = prev.authorizer_uids[i];
        }
    }
    // Upstream groups of the same config: their health, ejections, resolved
    // addresses, counters and watcher.
    for g in &mut next.upstreams {
        if let Some(old) = prev
            .upstreams
            .iter()
            .find(|o| o.sig == g.sig && o.name == g.name)
        {
            *g = Arc::clone(old);
        }
    }
    // Cluster mode: the new plan's throttles are Redis's too, from its first
    // request on.
    if prev.throttles.iter().any(|b| b.remote.get().is_some()) {
        for b in &next.throttles {
            b.share(next.workers);
        }
    }
    // The same series for the same (api, stage, route).
    next.metrics = Arc::clone(&prev.metrics);
    crate::plan::assign_metric_slots(&next.metrics, &mut next.stages);
    next.live = Arc::clone(&prev.live);
    // The same log files: the same writer.
    if next.logs.targets == prev.logs.targets {
        next.logs = Arc::clone(&prev.logs);
    }
    if let (Some(a), Some(b)) = (&next.telemetry, &prev.telemetry) {
        if a.endpoint == b.endpoint && a.service_name == b.service_name {
            next.telemetry = Some(Arc::clone(b));
        }
    }
}
