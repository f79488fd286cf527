//! Prometheus metrics with AWS's meanings (`Count`, `4XXError`, `5XXError`,
//! `Latency`, `IntegrationLatency`, `CacheHitCount`, `CacheMissCount`), per route
//! template: bounded cardinality.
//!
//! Each worker writes only its own cells (`[worker][route slot]`, each cell its own
//! cache lines), with a plain load and store: no atomic read-modify-write and no
//! line shared across cores on the request path. `/metrics` sums the workers' cells
//! when it is scraped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
#[allow(clippy::disallowed_types)]
// Not on the request path: series are assigned at compile and reload and read by `/metrics`.
use std::sync::{Mutex, OnceLock};

pub use crate::counter::Counter;

/// Route slots per chunk of cells; chunks are allocated as routes appear.
const CHUNK: usize = 64;
/// At most `CHUNKS × CHUNK` distinct (api, stage, route) series over the
/// process's life; routes beyond are not counted per route.
const CHUNKS: usize = 1024;

/// Histogram bucket bounds, seconds (Prometheus's `le`), for both latencies.
pub const BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const NB: usize = BUCKETS_S.len() + 1;
/// `BUCKETS_S` in microseconds: what a request compares against.
const BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// (api, stage, route key) of a series.
type Labels = (String, String, String);
/// (name, help, value) of a per-route counter.
type RouteCounter = (&'static str, &'static str, fn(&RouteCell) -> u64);
type RouteHistogram = (&'static str, &'static str, fn(&RouteCell) -> &Histogram);
/// (name, type, help, value) of a per-worker series.
type WorkerCounter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerCell) -> u64,
);

#[derive(Default)]
struct Histogram {
    /// Non-cumulative per bucket; the last is +Inf.
    buckets: [Counter; NB],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    fn observe(&self, us: u64) {
        let i = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(NB - 1);
        self.buckets[i].add(1);
        self.sum_us.add(us);
    }
}

/// One worker's figures for one route.
#[derive(Default)]
#[repr(align(128))]
struct RouteCell {
    requests: Counter,
    e4xx: Counter,
    e5xx: Counter,
    throttled: Counter,
    quota: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    latency: Histogram,
    integration: Histogram,
}

/// One worker's figures outside routes.
#[derive(Default)]
#[repr(align(128))]
pub struct WorkerCell {
    pub accepted: Counter,
    pub upstream_connects: Counter,
    /// Gauges, set each tick: upstream connections open, and idle in the pool.
    pub upstream_open: Counter,
    pub upstream_idle: Counter,
    /// Requests that matched no stage or route (404s, malformed heads).
    pub unrouted: Counter,
    pub unrouted_4xx: Counter,
    pub unrouted_5xx: Counter,
    /// Access log lines dropped because the writer fell behind.
    pub log_dropped: Counter,
    pub log_lines: Counter,
    /// WebSocket tunnels opened and ended (`http_proxy` pass-through).
    pub websockets_opened: Counter,
    pub websockets_closed: Counter,
    /// WebSocket APIs' connections opened and ended, messages and their bytes.
    pub ws_api_opened: Counter,
    pub ws_api_closed: Counter,
    pub ws_messages_in: Counter,
    pub ws_messages_out: Counter,
    pub ws_bytes_in: Counter,
    pub ws_bytes_out: Counter,
    /// `@connections` calls: answered, 410 (gone), refused otherwise (413).
    pub connections_ok: Counter,
    pub connections_gone: Counter,
    pub connections_refused: Counter,
}

/// What one request did, for the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub status: u16,
    pub latency_us: u64,
    pub integration_us: Option<u64>,
    pub throttled: bool,
    pub quota: bool,
    /// `Some(hit)` on a route that caches.
    pub cache: Option<bool>,
}

/// The series of the process: one slot per (api, stage, route key) ever
/// configured, kept across reloads so counters of unchanged routes go on.
pub struct Metrics {
    workers: usize,
    /// (api, stage, route key) per slot, and the slot of each.
    #[allow(clippy::disallowed_types)]
    // Not on the request path: series are assigned at compile and reload and read by `/metrics`.
    labels: Mutex<(Vec<Labels>, HashMap<Labels, usize>)>,
    /// `[slot / CHUNK]` → `[worker × CHUNK + slot % CHUNK]`.
    cells: Box<[OnceLock<Box<[RouteCell]>>]>,
    pub worker: Box<[WorkerCell]>,
    /// Workers started and listening: `/readyz`.
    pub ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.workers)
            .finish()
    }
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Self {
            workers,
            #[allow(clippy::disallowed_types)] // Not on the request path: series are assigned at compile and reload and read by `/metrics`.
            labels: Mutex::new((Vec::new(), HashMap::new())),
            cells: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            worker: (0..workers).map(|_| WorkerCell::default()).collect(),
            ready: AtomicBool::new(false),
        }
    }

    /// The series of route `key` of `api`/`stage`: the slot its labels already
    /// have, or a new one (`usize::MAX` when all are taken: not counted per route).
    pub fn slot(&self, api: &str, stage: &str, key: &str) -> usize {
        let mut guard = crate::lock(&self.labels);
        let (list, by) = &mut *guard;
        let l: Labels = (api.to_owned(), stage.to_owned(), key.to_owned());
        match by.get(&l) {
            Some(&slot) => slot,
            None if list.len() < CHUNK * CHUNKS => {
                let slot = list.len();
                self.cells[slot / CHUNK].get_or_init(|| {
                    (0..self.workers * CHUNK)
                        .map(|_| RouteCell::default())
                        .collect()
                });
                list.push(l.clone());
                by.insert(l, slot);
                slot
            }
            None => usize::MAX,
        }
    }

    #[inline]
    fn cell(&self, w: usize, slot: usize) -> Option<&RouteCell> {
        self.cells
            .get(slot / CHUNK)?
            .get()?
            .get(w * CHUNK + slot % CHUNK)
    }

    /// Records one request on worker `w`; `route`: the route's slot when it matched.
    #[inline]
    pub fn record(&self, w: usize, route: Option<usize>, s: &Sample) {
        let Some(slot) = route else {
            let Some(c) = self.worker.get(w) else {
                return;
            };
            c.unrouted.add(1);
            match s.status {
                400..=499 => c.unrouted_4xx.add(1),
                500..=599 => c.unrouted_5xx.add(1),
                _ => {}
            }
            return;
        };
        let Some(cell) = self.cell(w, slot) else {
            return;
        };
        cell.requests.add(1);
        match s.status {
            400..=499 => cell.e4xx.add(1),
            500..=599 => cell.e5xx.add(1),
            _ => {}
        }
        if s.throttled {
            cell.throttled.add(1);
        }
        if s.quota {
            cell.quota.add(1);
        }
        match s.cache {
            Some(true) => cell.cache_hits.add(1),
            Some(false) => cell.cache_misses.add(1),
            None => {}
        }
        cell.latency.observe(s.latency_us);
        if let Some(us) = s.integration_us {
            cell.integration.observe(us);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let labels = crate::lock(&self.labels).0.clone();
        let slots = labels.len();
        let mut out = String::with_capacity(4096 + slots * 2048);
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let sum = |slot: usize, f: &dyn Fn(&RouteCell) -> u64| -> u64 {
            (0..self.workers)
                .filter_map(|w| self.cell(w, slot))
                .map(f)
                .sum()
        };
        let counters: [RouteCounter; 7] = [
            (
                "shardgate_requests_total",
                "Requests served (AWS Count).",
                |c| c.requests.get(),
            ),
            (
                "shardgate_4xx_total",
                "Client errors (AWS 4XXError).",
                |c| c.e4xx.get(),
            ),
            (
                "shardgate_5xx_total",
                "Server errors (AWS 5XXError).",
                |c| c.e5xx.get(),
            ),
            (
                "shardgate_throttled_total",
                "Requests refused by a throttle (429 Too Many Requests).",
                |c| c.throttled.get(),
            ),
            (
                "shardgate_quota_exceeded_total",
                "Requests refused by a usage plan quota (429 Limit Exceeded).",
                |c| c.quota.get(),
            ),
            (
                "shardgate_cache_hits_total",
                "Responses served from the cache (AWS CacheHitCount).",
                |c| c.cache_hits.get(),
            ),
            (
                "shardgate_cache_misses_total",
                "Cacheable requests sent to the integration (AWS CacheMissCount).",
                |c| c.cache_misses.get(),
            ),
        ];
        for (name, help, f) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (slot, (api, stage, route)) in labels.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{api=\"{}\",stage=\"{}\",route=\"{}\"}} {}",
                    esc(api),
                    esc(stage),
                    esc(route),
                    sum(slot, &f)
                );
            }
        }
        let hists: [RouteHistogram; 2] = [
            ("shardgate_latency_seconds", "Time from the request head to the end of the response (AWS Latency).", |c| &c.latency),
            ("shardgate_integration_latency_seconds", "Time from sending to the integration to its response head (AWS IntegrationLatency).", |c| &c.integration),
        ];
        for (name, help, f) in hists {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (slot, (api, stage, route)) in labels.iter().enumerate() {
                let labels = format!(
                    "api=\"{}\",stage=\"{}\",route=\"{}\"",
                    esc(api),
                    esc(stage),
                    esc(route)
                );
                let mut cumulative = 0;
                for (i, le) in BUCKETS_S
                    .iter()
                    .map(|b| b.to_string())
                    .chain(["+Inf".to_owned()])
                    .enumerate()
                {
                    cumulative += sum(slot, &|c| f(c).buckets[i].get());
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                let total_us = sum(slot, &|c| f(c).sum_us.get());
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", total_us as f64 / 1e6);
                let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
            }
        }
        let per_worker: [WorkerCounter; 19] = [
            (
                "shardgate_accepted_connections_total",
                "counter",
                "Client connections accepted, per worker.",
                |c| c.accepted.get(),
            ),
            (
                "shardgate_upstream_connections_total",
                "counter",
                "Connections opened to integrations, per worker.",
                |c| c.upstream_connects.get(),
            ),
            (
                "shardgate_upstream_connections_open",
                "gauge",
                "Connections to integrations open now (carrying a request or pooled), per worker.",
                |c| c.upstream_open.get(),
            ),
            (
                "shardgate_upstream_connections_idle",
                "gauge",
                "Pooled idle connections to integrations, per worker.",
                |c| c.upstream_idle.get(),
            ),
            (
                "shardgate_unrouted_requests_total",
                "counter",
                "Requests that matched no stage or route (404) or were malformed, per worker.",
                |c| c.unrouted.get(),
            ),
            (
                "shardgate_unrouted_4xx_total",
                "counter",
                "Client errors among unrouted requests, per worker.",
                |c| c.unrouted_4xx.get(),
            ),
            (
                "shardgate_access_log_lines_total",
                "counter",
                "Access log lines written, per worker.",
                |c| c.log_lines.get(),
            ),
            (
                "shardgate_access_log_dropped_total",
                "counter",
                "Access log lines dropped because the writer fell behind, per worker.",
                |c| c.log_dropped.get(),
            ),
            (
                "shardgate_websocket_connections_total",
                "counter",
                "WebSocket tunnels opened on http_proxy routes, per worker.",
                |c| c.websockets_opened.get(),
            ),
            (
                "shardgate_websocket_connections_open",
                "gauge",
                "WebSocket tunnels open now, per worker.",
                |c| {
                    c.websockets_opened
                        .get()
                        .saturating_sub(c.websockets_closed.get())
                },
            ),
            (
                "shardgate_websocket_api_connections_total",
                "counter",
                "Connections of WebSocket APIs accepted, per worker.",
                |c| c.ws_api_opened.get(),
            ),
            (
                "shardgate_websocket_api_connections_open",
                "gauge",
                "Connections of WebSocket APIs open now, per worker.",
                |c| c.ws_api_opened.get().saturating_sub(c.ws_api_closed.get()),
            ),
            (
                "shardgate_websocket_api_messages_in_total",
                "counter",
                "Messages received on WebSocket APIs, per worker.",
                |c| c.ws_messages_in.get(),
            ),
            (
                "shardgate_websocket_api_messages_out_total",
                "counter",
                "Messages sent on WebSocket APIs (route responses, @connections posts), per worker.",
                |c| c.ws_messages_out.get(),
            ),
            (
                "shardgate_websocket_api_bytes_in_total",
                "counter",
                "Bytes of messages received on WebSocket APIs, per worker.",
                |c| c.ws_bytes_in.get(),
            ),
            (
                "shardgate_websocket_api_bytes_out_total",
                "counter",
                "Bytes of messages sent on WebSocket APIs, per worker.",
                |c| c.ws_bytes_out.get(),
            ),
            (
                "shardgate_connections_api_ok_total",
                "counter",
                "@connections calls answered (200, 204), per worker.",
                |c| c.connections_ok.get(),
            ),
            (
                "shardgate_connections_api_gone_total",
                "counter",
                "@connections calls for a connection that is gone (410), per worker.",
                |c| c.connections_gone.get(),
            ),
            (
                "shardgate_connections_api_refused_total",
                "counter",
                "@connections calls refused otherwise (413), per worker.",
                |c| c.connections_refused.get(),
            ),
        ];
        for (name, kind, help, f) in per_worker {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (w, cell) in self.worker.iter().enumerate() {
                let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", f(cell));
            }
        }
        out
    }
}

/// The Prometheus series of upstream groups' targets: requests, failures,
/// retries, ejections, health, and open and idle connections.
pub fn render_upstreams(groups: &[std::sync::Arc<crate::upstream::group::Group>]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    if groups.is_empty() {
        return out;
    }
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::upstream::group::MemberState) -> i64,
    );
    let series: [Series; 7] = [
        (
            "shardgate_upstream_requests_total",
            "counter",
            "Requests sent to the target (tries, retries included).",
            |s| s.requests.load(Relaxed) as i64,
        ),
        (
            "shardgate_upstream_failures_total",
            "counter",
            "Tries the target failed (no connection, reset, timeout, 502-504).",
            |s| s.failures.load(Relaxed) as i64,
        ),
        (
            "shardgate_upstream_retries_total",
            "counter",
            "Retries sent to the target after another target failed.",
            |s| s.retries.load(Relaxed) as i64,
        ),
        (
            "shardgate_upstream_ejections_total",
            "counter",
            "Times outlier detection ejected the target.",
            |s| s.ejections.load(Relaxed) as i64,
        ),
        (
            "shardgate_upstream_healthy",
            "gauge",
            "1 while the target passes its health check (or has none), else 0.",
            |s| i64::from(s.healthy.load(Relaxed)),
        ),
        (
            "shardgate_upstream_target_connections_open",
            "gauge",
            "Connections open to the target over all workers.",
            |s| i64::from(s.open.open.load(Relaxed)),
        ),
        (
            "shardgate_upstream_target_connections_idle",
            "gauge",
            "Pooled idle connections to the target over all workers.",
            |s| s.idle.load(Relaxed).max(0),
        ),
    ];
    let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    for (name, kind, help, f) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in groups {
            let snap = g.live.snapshot.load();
            for m in &snap.endpoints {
                let _ = writeln!(
                    out,
                    "{name}{{group=\"{}\",target=\"{}\",address=\"{}\"}} {}",
                    esc(&g.name),
                    esc(&g.targets[m.target].url),
                    m.to.addr,
                    f(&m.state)
                );
            }
        }
    }
    out
}

/// The Prometheus series of `functions[]`: invocations, errors, timeouts,
/// throttles (a full queue) and runtime restarts, all counters.
pub fn render_functions(
    functions: &[std::sync::Arc<crate::upstream::function::Function>],
) -> String {
    use crate::upstream::function::FunctionStats;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    type Read = fn(&FunctionStats) -> u64;
    let counters: [(&str, &str, Read); 5] = [
        (
            "invocations",
            "Invocations handed to the function's queue (throttled ones included).",
            |s| s.invocations.load(Relaxed),
        ),
        (
            "errors",
            "Invocations the function failed (an error, a runtime that exited with it).",
            |s| s.errors.load(Relaxed),
        ),
        (
            "timeouts",
            "Invocations past the function's timeout (its runtime restarted).",
            |s| s.timeouts.load(Relaxed),
        ),
        (
            "throttles",
            "Invocations refused with 429: the function's queue was full.",
            |s| s.throttles.load(Relaxed),
        ),
        (
            "restarts",
            "Runtime processes restarted after they exited.",
            |s| s.restarts.load(Relaxed),
        ),
    ];
    for (what, help, count) in counters.iter().filter(|_| !functions.is_empty()) {
        let name = format!("shardgate_function_{what}_total");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for func in functions {
            let _ = writeln!(
                out,
                "{name}{{function=\"{}\"}} {}",
                func.spec.name,
                count(func.stats())
            );
        }
    }
    out
}
