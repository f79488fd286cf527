//! Token-bucket throttles that hold across cores without a lock on the request path.
//!
//! Each throttle is one `SharedBucket`: GCRA (the generic cell rate algorithm, an
//! exact token bucket) on a single atomic, the "theoretical arrival time" of the
//! next token. A worker does not touch it per request: it draws a small batch of
//! tokens into its shard and spends them locally, drawing again when they run out.
//!
//! Error bound: the shared bucket never grants more than `rate × t + burst` tokens in
//! any window of length `t`, and every admitted request spent a granted token. A
//! worker may hold up to one batch it has not spent yet, and spend it later, so
//! across `W` workers the admitted count in a window is at most
//! `rate × t + burst + W × batch`. `batch` is at most `burst / (4 × W)` (at least 1)
//! and at most 10 ms of the rate, so the excess is under a quarter of `burst` (one
//! request per worker where `burst < 4 × W`) and at most 10 ms of traffic per worker. One client on one worker can still use the whole
//! rate: it draws batch after batch.
//!
//! Cluster mode (`store.redis`): every bucket (a stage's, a route's, the
//! gateway's, each key's in its usage plan) is one GCRA in Redis, on Redis's
//! clock, for all nodes; each node keeps a reservoir of `W × batch` tokens drawn
//! from it (`Reservoir`, refilled by `control::cluster`'s tokens thread), and its
//! workers draw batches from the reservoir as above. So across `N` nodes of `W`
//! workers, admitted ≤ `rate × t + burst + N × 2 × W × batch`. Measured
//! (tests/cluster.rs): 50/s, burst 10, 3 nodes of 2 workers, 3 s: 164-165
//! admitted against `rate × t + burst` = 160 and the bound 172.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Gives every bucket a number of its own for the life of the process: a shard
/// keeps its unspent tokens by it, so a bucket a reloaded plan kept keeps them.
static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

/// A configured limit: `rate` requests per second, `burst` bucket size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: u64,
}

#[derive(Debug)]
pub struct SharedBucket {
    pub limit: Limit,
    /// Nanoseconds per token; 0 when the limit admits nothing.
    interval_ns: u64,
    /// How far ahead of now the arrival time may run: `burst × interval`.
    tolerance_ns: u64,
    /// The theoretical arrival time of the next token, in ns since `epoch`.
    tat_ns: AtomicU64,
    /// Tokens a worker draws at once.
    pub batch: u32,
    /// Where shards keep their unspent tokens of this bucket.
    pub slot: u32,
    /// Cluster mode: the bucket is Redis's, shared by every node; workers draw
    /// from this node's reservoir, which the refill thread keeps topped up.
    pub remote: std::sync::OnceLock<std::sync::Arc<Reservoir>>,
}

/// A node's tokens of a bucket kept in Redis (cluster mode).
#[derive(Debug, Default)]
pub struct Reservoir {
    tokens: AtomicU64,
    /// How many the refill thread keeps here.
    pub target: u64,
    /// Workers found it low: refill now.
    pub wanted: std::sync::atomic::AtomicBool,
    /// Redis unreachable with `fail_open`: `fallback` decides.
    pub offline: std::sync::atomic::AtomicBool,
    /// While offline: this node's last known share of the bucket (the rate and
    /// burst divided by the nodes alive when Redis went away).
    pub fallback: arc_swap::ArcSwapOption<SharedBucket>,
    pub workers: usize,
}

impl Reservoir {
    pub fn new(target: u64, workers: usize) -> Self {
        Self {
            target: target.max(1),
            workers,
            ..Self::default()
        }
    }

    /// Redis went away (`fail_open`): from now until it is back, this node admits
    /// its share of `limit` among `nodes` on its own.
    pub fn go_offline(&self, limit: Limit, nodes: u32) {
        if self.offline.swap(true, Ordering::AcqRel) {
            return;
        }
        let n = f64::from(nodes.max(1));
        let share = Limit {
            rate: limit.rate / n,
            burst: ((limit.burst as f64 / n).ceil() as u64).max(1),
        };
        self.fallback
            .store(Some(std::sync::Arc::new(SharedBucket::new(
                share,
                self.workers,
            ))));
    }

    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Acquire)
    }

    /// Tokens Redis granted this node.
    pub fn add(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::AcqRel);
    }

    /// Up to `want` tokens; marks the reservoir wanted when it runs low.
    fn take(&self, want: u32) -> u32 {
        let mut t = self.tokens.load(Ordering::Relaxed);
        loop {
            let n = t.min(u64::from(want));
            if t - n < self.target.div_ceil(2) {
                self.wanted.store(true, Ordering::Release);
            }
            if n == 0 {
                return 0;
            }
            match self
                .tokens
                .compare_exchange_weak(t, t - n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return n as u32,
                Err(current) => t = current,
            }
        }
    }
}

impl SharedBucket {
    pub fn new(limit: Limit, workers: usize) -> Self {
        let interval_ns = if limit.rate > 0.0 && limit.burst > 0 {
            ((1e9 / limit.rate).round() as u64).max(1)
        } else {
            0
        };
        let per_worker = limit.burst / (4 * workers.max(1) as u64);
        let ten_ms = (limit.rate / 100.0) as u64;
        let batch = per_worker.min(ten_ms).clamp(1, 1024) as u32;
        Self {
            limit,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(limit.burst),
            tat_ns: AtomicU64::new(0),
            batch,
            slot: NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
            remote: std::sync::OnceLock::new(),
        }
    }

    /// Cluster mode: this bucket is drawn from Redis from now on (each node keeps
    /// a reservoir of about one batch per worker).
    pub fn share(&self, workers: usize) {
        let _ = self.remote.set(std::sync::Arc::new(Reservoir::new(
            u64::from(self.batch) * workers.max(1) as u64,
            workers,
        )));
    }

    /// Nanoseconds per token and the burst's tolerance (the Redis bucket's).
    pub fn gcra(&self) -> (u64, u64) {
        (self.interval_ns, self.tolerance_ns)
    }

    /// Takes up to `want` tokens at `now_ns`; returns how many were granted (0: the
    /// bucket is empty).
    pub fn take(&self, now_ns: u64, want: u32) -> u32 {
        if self.interval_ns == 0 {
            return 0;
        }
        if let Some(r) = self.remote.get() {
            if !r.offline.load(Ordering::Relaxed) {
                return r.take(want);
            }
            if let Some(f) = &*r.fallback.load() {
                return f.take(now_ns, want);
            }
        }
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now_ns);
            let room = (now_ns + self.tolerance_ns).saturating_sub(base);
            let granted = (room / self.interval_ns).min(u64::from(want));
            if granted == 0 {
                return 0;
            }
            let next = base + granted * self.interval_ns;
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return granted as u32,
                Err(current) => tat = current,
            }
        }
    }
}

/// A shard's unspent tokens: one per throttle of the config (by `ThrottleId`), and
/// one per API key's bucket (by `Slot`, since keys come and go at run time).
#[derive(Debug, Default)]
pub struct LocalTokens {
    tokens: Vec<u32>,
    /// `(slot generation, tokens)` by slot index; grown on first use.
    slots: Vec<(u32, u32)>,
    epoch: Option<Instant>,
}

impl LocalTokens {
    pub fn new(epoch: Instant) -> Self {
        Self {
            tokens: Vec::new(),
            slots: Vec::new(),
            epoch: Some(epoch),
        }
    }

    /// Nanoseconds since the plan's epoch (shared by all workers).
    pub fn now_ns(&self) -> u64 {
        self.epoch.map_or(0, crate::clock::since_ns)
    }

    /// `admit` for a key's bucket: tokens held for an older generation of the slot
    /// (a deleted key, a changed plan) are dropped, never spent.
    pub fn admit_slot(
        &mut self,
        slot: crate::ids::Slot,
        shared: &SharedBucket,
        now_ns: u64,
    ) -> bool {
        let i = slot.index as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, (0, 0));
        }
        let s = &mut self.slots[i];
        if s.0 != slot.gen {
            *s = (slot.gen, 0);
        }
        if s.1 == 0 {
            s.1 = shared.take(now_ns, shared.batch);
            if s.1 == 0 {
                return false;
            }
        }
        s.1 -= 1;
        true
    }

    /// Spends one token of `shared`, drawing a batch when none is left; `false`
    /// when the throttle refuses the request.
    pub fn admit(&mut self, shared: &SharedBucket, now_ns: u64) -> bool {
        let i = shared.slot as usize;
        if i >= self.tokens.len() {
            self.tokens.resize(i + 1, 0);
        }
        let slot = &mut self.tokens[i];
        if *slot == 0 {
            *slot = shared.take(now_ns, shared.batch);
            if *slot == 0 {
                return false;
            }
        }
        *slot -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_gives_burst_then_the_rate() {
        let b = SharedBucket::new(
            Limit {
                rate: 10.0,
                burst: 5,
            },
            1,
        );
        assert_eq!(b.take(SEC, 100), 5, "the burst at once");
        assert_eq!(b.take(SEC, 1), 0, "empty");
        assert_eq!(b.take(SEC + SEC / 10, 100), 1, "one token per 100 ms");
        assert_eq!(b.take(3 * SEC, 100), 5, "refilled, but never past burst");
    }

    #[test]
    fn zero_rate_or_burst_admits_nothing() {
        for limit in [
            Limit {
                rate: 0.0,
                burst: 10,
            },
            Limit {
                rate: 10.0,
                burst: 0,
            },
        ] {
            assert_eq!(SharedBucket::new(limit, 2).take(SEC, 10), 0);
        }
    }

    /// Two "workers" drawing batches over a simulated 10 s never admit more than
    /// rate × t + burst + one batch each, and not much less than the rate.
    #[test]
    fn batched_workers_stay_within_the_bound() {
        let limit = Limit {
            rate: 1000.0,
            burst: 200,
        };
        let b = SharedBucket::new(limit, 2);
        let mut workers = [
            LocalTokens::new(Instant::now()),
            LocalTokens::new(Instant::now()),
        ];
        let mut admitted = 0u64;
        // Both offer 2,000 req/s each, interleaved, for 10 s.
        for step in 0..40_000u64 {
            let now = step * (SEC / 4000);
            if workers[(step % 2) as usize].admit(&b, now) {
                admitted += 1;
            }
        }
        let max = 1000 * 10 + 200 + 2 * u64::from(b.batch);
        assert!(admitted <= max, "{admitted} > {max}");
        assert!(admitted >= 1000 * 10, "{admitted} under the rate");
    }
}
