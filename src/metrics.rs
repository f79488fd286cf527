//! Prometheus metrics with AWS's meanings (`Count`, `4XXError`, `5XXError`,
//! `Latency`, `IntegrationLatency`, `CacheHitCount`, `CacheMissCount`), per route
//! template: bounded cardinality.
//!
//! Each worker writes only its own cells (`[worker][route slot]`, each cell its own
//! cache lines), with a plain load and store: no atomic read-modify-write and no
//! line shared across cores on the request path. `/metrics` sums the workers' cells
//! when it is scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::plan::StagePlan;

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

/// A single-writer counter: only its worker adds to it; readers may see a value a
/// moment old.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

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
    /// Requests that matched no stage or route (404s, malformed heads).
    pub unrouted: Counter,
    pub unrouted_4xx: Counter,
    pub unrouted_5xx: Counter,
    /// Access log lines dropped because the writer fell behind.
    pub log_dropped: Counter,
    pub log_lines: Counter,
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

pub struct Metrics {
    workers: usize,
    /// First slot of each stage.
    base: Box<[usize]>,
    slots: usize,
    /// (api, stage, route key) per slot.
    labels: Box<[(String, String, String)]>,
    cells: Box<[RouteCell]>,
    pub worker: Box<[WorkerCell]>,
    /// Workers started and listening: `/readyz`.
    pub ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.workers)
            .field("slots", &self.slots)
            .finish()
    }
}

impl Metrics {
    pub fn new(workers: usize, stages: &[StagePlan]) -> Self {
        let mut base = Vec::with_capacity(stages.len());
        let mut labels = Vec::new();
        for s in stages {
            base.push(labels.len());
            for r in &s.routes {
                labels.push((s.api.clone(), s.stage.clone(), r.key.clone()));
            }
        }
        let slots = labels.len();
        Self {
            workers,
            base: base.into(),
            slots,
            labels: labels.into(),
            cells: (0..workers * slots).map(|_| RouteCell::default()).collect(),
            worker: (0..workers).map(|_| WorkerCell::default()).collect(),
            ready: AtomicBool::new(false),
        }
    }

    /// Records one request on worker `w`; `route`: (stage, route) when it matched.
    #[inline]
    pub fn record(&self, w: usize, route: Option<(usize, usize)>, s: &Sample) {
        let Some((stage, r)) = route else {
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
        let Some(cell) = self.cells.get(w * self.slots + self.base[stage] + r) else {
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
        let mut out = String::with_capacity(4096 + self.slots * 2048);
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let sum = |slot: usize, f: &dyn Fn(&RouteCell) -> u64| -> u64 {
            (0..self.workers)
                .map(|w| f(&self.cells[w * self.slots + slot]))
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
            for slot in 0..self.slots {
                let (api, stage, route) = &self.labels[slot];
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
            for slot in 0..self.slots {
                let (api, stage, route) = &self.labels[slot];
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
        let per_worker: [WorkerCounter; 6] = [
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
