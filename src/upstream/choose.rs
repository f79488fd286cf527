//! One worker's state for one upstream group: its copy of the group's membership,
//! its balancer cursors and in-flight counts, the consecutive failures it saw of
//! each endpoint (passive outlier detection), its retry budget, and counters it
//! adds to the shared ones once per tick rather than per request.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::config::Balance;
use crate::upstream::balance::{RoundRobin, Weights};
use crate::upstream::group::{Group, Live, Snapshot};

/// How long the retry budget remembers requests: two halves of this, so the
/// budget follows the traffic of the last 5 to 10 seconds.
const BUDGET_HALF_MS: u64 = 5_000;
/// Retries a worker may always make in a budget window, whatever the percentage
/// (a quiet group still masks one dead target).
const BUDGET_FLOOR: u64 = 3;
/// An ejection lasts `base_ejection_ms` times the number of times the endpoint
/// was ejected, at most this many times.
const MAX_EJECTION_FACTOR: u64 = 10;

/// A group's membership as one worker holds it.
pub struct Membership(pub Arc<Snapshot>);

impl std::ops::Deref for Membership {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

pub struct Chooser {
    live: Weak<Live>,
    /// The membership this worker picks from. `Rc` around the `Arc`: a request
    /// holds it across its awaits with a count no other core touches.
    pub snap: Rc<Membership>,
    rr: RoundRobin,
    weights: Weights,
    /// Requests in flight to each endpoint from this worker.
    in_flight: Vec<u32>,
    /// Failures in a row this worker saw of each endpoint.
    fails: Vec<u32>,
    /// Counted here, added to the shared counters by `flush`.
    requests: Vec<u64>,
    failures: Vec<u64>,
    retries: Vec<u64>,
    /// Idle connections of each endpoint this worker last reported.
    idle_reported: Vec<i64>,
    /// Retry budget: (requests, retries) of the current and the previous half
    /// window, and when the current one began (Unix ms).
    budget: [(u64, u64); 2],
    budget_since_ms: u64,
}

impl Chooser {
    pub fn new(group: &Group) -> Self {
        let snap = group.live.snapshot.load_full();
        let mut c = Self {
            live: Arc::downgrade(&group.live),
            rr: RoundRobin::new(&[]),
            weights: Weights::new(&[]),
            in_flight: Vec::new(),
            fails: Vec::new(),
            requests: Vec::new(),
            failures: Vec::new(),
            retries: Vec::new(),
            idle_reported: Vec::new(),
            budget: [(0, 0); 2],
            budget_since_ms: 0,
            snap: Rc::new(Membership(Arc::clone(&snap))),
        };
        c.adopt(snap);
        c
    }

    /// The group still runs (a reload may have dropped it).
    pub fn alive(&self) -> bool {
        self.live.strong_count() > 0
    }

    /// Takes the group's newest membership if it changed (a cheap check per pick).
    #[inline]
    pub fn refresh(&mut self, live: &Live) {
        if live.gen.load(Ordering::Acquire) != self.snap.gen {
            let snap = live.snapshot.load_full();
            self.retire();
            self.adopt(snap);
        }
    }

    fn adopt(&mut self, snap: Arc<Snapshot>) {
        let n = snap.endpoints.len();
        let weights: Vec<u32> = snap.endpoints.iter().map(|m| m.weight).collect();
        self.rr = RoundRobin::new(&weights);
        self.weights = Weights::new(&weights);
        // In-flight counts of endpoints that stay are kept (by address).
        let mut in_flight = vec![0; n];
        for (j, m) in snap.endpoints.iter().enumerate() {
            if let Some(i) = self
                .snap
                .endpoints
                .iter()
                .position(|o| Arc::ptr_eq(&o.state, &m.state))
            {
                in_flight[j] = self.in_flight.get(i).copied().unwrap_or(0);
            }
        }
        self.in_flight = in_flight;
        self.fails = vec![0; n];
        self.requests = vec![0; n];
        self.failures = vec![0; n];
        self.retries = vec![0; n];
        self.idle_reported = vec![0; n];
        self.snap = Rc::new(Membership(snap));
    }

    /// An endpoint for a request: among those up and not in `tried` (a bit per
    /// endpoint, for retries), by the group's balance. `key_hash` is the request's
    /// consistent-hash key, if the group hashes and the request has one.
    pub fn pick(
        &mut self,
        group: &Group,
        key_hash: Option<u64>,
        tried: u64,
        now_ms: u64,
        random: impl FnMut() -> u64,
    ) -> Option<usize> {
        let endpoints = &self.snap.endpoints;
        let up = |i: usize| (i >= 64 || tried & (1 << i) == 0) && endpoints[i].state.up(now_ms);
        match (group.balance, &self.snap.ring, key_hash) {
            (Balance::ConsistentHash, Some(ring), Some(h)) => ring.pick(h, up),
            (Balance::RoundRobin, _, _) => self.rr.pick(up),
            _ => self.weights.least_request(&self.in_flight, up, random),
        }
    }

    /// A request goes to endpoint `i` (`retry`: not its first try).
    pub fn start(&mut self, i: usize, retry: bool) {
        self.in_flight[i] += 1;
        self.requests[i] += 1;
        if retry {
            self.retries[i] += 1;
        }
    }

    /// The request to endpoint `i` ended; `failed`: the target failed it (no
    /// connection, reset or closed before a response, timed out, 502/503/504).
    /// Enough failures in a row eject the endpoint from the group for every
    /// worker, unless `max_ejection_percent` are out already.
    pub fn end(&mut self, group: &Group, i: usize, failed: bool, now_ms: u64) {
        self.in_flight[i] = self.in_flight[i].saturating_sub(1);
        if !failed {
            self.fails[i] = 0;
            return;
        }
        self.failures[i] += 1;
        self.fails[i] += 1;
        let Some(o) = group.outlier else { return };
        if self.fails[i] < o.consecutive_failures {
            return;
        }
        self.fails[i] = 0;
        let endpoints = &self.snap.endpoints;
        let state = &endpoints[i].state;
        if state.ejected_until_ms.load(Ordering::Relaxed) > now_ms {
            return;
        }
        let out = endpoints
            .iter()
            .filter(|m| m.state.ejected_until_ms.load(Ordering::Relaxed) > now_ms)
            .count();
        let allowed = (endpoints.len() * o.max_ejection_percent as usize / 100)
            .max(usize::from(o.max_ejection_percent > 0));
        if out >= allowed {
            tracing::warn!(group = %group.name, target = %endpoints[i].to.addr, ejected = out, "outlier not ejected: max_ejection_percent reached");
            return;
        }
        let times = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = o.base_ejection_ms * times.min(MAX_EJECTION_FACTOR);
        state.ejected_until_ms.store(now_ms + ms, Ordering::Relaxed);
        tracing::warn!(group = %group.name, target = %endpoints[i].to.addr, failures = o.consecutive_failures, ejection_ms = ms, times, "target ejected after failures in a row");
    }

    /// Whether another retry fits the budget: retries stay under
    /// `budget_percent` of the requests of the last 5-10 s (at least a few).
    pub fn may_retry(&mut self, budget_percent: u32, now_ms: u64) -> bool {
        self.roll(now_ms);
        let requests = self.budget[0].0 + self.budget[1].0;
        let retries = self.budget[0].1 + self.budget[1].1;
        retries < (requests * u64::from(budget_percent) / 100).max(BUDGET_FLOOR)
    }

    /// Counts a request (`retry`: a retry) in the budget's window.
    pub fn count(&mut self, retry: bool, now_ms: u64) {
        self.roll(now_ms);
        if retry {
            self.budget[0].1 += 1;
        } else {
            self.budget[0].0 += 1;
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let since = now_ms.saturating_sub(self.budget_since_ms);
        if since >= 2 * BUDGET_HALF_MS {
            self.budget = [(0, 0); 2];
            self.budget_since_ms = now_ms;
        } else if since >= BUDGET_HALF_MS {
            self.budget = [(0, 0), self.budget[0]];
            self.budget_since_ms += BUDGET_HALF_MS;
        }
    }

    /// Adds this worker's counts to the shared counters, and closes its idle
    /// connections to targets where a request waits at the connection cap.
    pub fn flush_with(&mut self, pool: &mut crate::upstream::pool::Pool) {
        self.flush();
        for (i, m) in self.snap.endpoints.iter().enumerate() {
            if m.state.open.starved.load(Ordering::Relaxed) {
                pool.close_idle(&m.to.pool_key);
            }
            let idle = |k: &crate::upstream::pool::PoolKey| pool.idle_of(k);
            let now = idle(&m.to.pool_key) as i64;
            let delta = now - self.idle_reported[i];
            if delta != 0 {
                m.state.idle.fetch_add(delta, Ordering::Relaxed);
                self.idle_reported[i] = now;
            }
        }
    }

    fn flush(&mut self) {
        for (i, m) in self.snap.endpoints.iter().enumerate() {
            for (mine, shared) in [
                (&mut self.requests[i], &m.state.requests),
                (&mut self.failures[i], &m.state.failures),
                (&mut self.retries[i], &m.state.retries),
            ] {
                if *mine > 0 {
                    shared.fetch_add(std::mem::take(mine), Ordering::Relaxed);
                }
            }
        }
    }

    /// Takes back what this worker reported as idle (it drops the group).
    pub fn retire(&mut self) {
        self.flush();
        for (i, m) in self.snap.endpoints.iter().enumerate() {
            m.state.idle.fetch_sub(
                std::mem::take(&mut self.idle_reported[i]),
                Ordering::Relaxed,
            );
        }
    }
}
