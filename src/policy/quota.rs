//! Usage-plan quotas: at most `limit` requests per key per calendar period (UTC day,
//! week from Monday, or month), exact across workers.
//!
//! Each quota is one atomic holding the period and the count handed out in it. A
//! worker leases a few requests at a time (at most a quarter of what is left per
//! worker, at most 64, at least 1) and spends them locally, so the shared atomic is
//! touched once per lease, not per request. Leases are carved out of `limit`, so no
//! period ever admits more than `limit` requests, whatever the number of workers; a
//! lease still unspent when the period ends is dropped with it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub use crate::config::Period;
pub use crate::http::respond::QuotaState;

const USED_BITS: u32 = 44;
const USED_MASK: u64 = (1 << USED_BITS) - 1;
const DAY_S: u64 = 86_400;

impl Period {
    /// The index of the period holding `unix_s`, and when the next one starts.
    pub fn at(self, unix_s: u64) -> (u64, u64) {
        let day = unix_s / DAY_S;
        match self {
            Period::Day => (day, (day + 1) * DAY_S),
            Period::Week => {
                // 1970-01-01 was a Thursday: shift so weeks start on Monday.
                let week = (day + 3) / 7;
                (week, (week * 7 + 7 - 3) * DAY_S)
            }
            Period::Month => {
                let (y, m, _) = crate::clock::civil_from_days(day as i64);
                let (y, m) = (y as u64, u64::from(m));
                let index = y * 12 + (m - 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    index,
                    crate::clock::days_from_civil(ny, nm as u32, 1) * DAY_S,
                )
            }
        }
    }
}

/// One key's quota in one usage plan, shared by every worker.
#[derive(Debug)]
pub struct Quota {
    limit: AtomicU64,
    pub period: Period,
    /// `false` for a usage plan without a quota: requests are only counted (daily),
    /// for the usage report, never refused.
    pub limited: bool,
    /// `period index << 44 | requests handed out (leased) in it`.
    state: AtomicU64,
    /// `period index << 44 | requests served in it`: what workers spent of their
    /// leases, added once per worker tick (100 ms), for the usage report.
    spent: AtomicU64,
    /// Set when `state` or `spent` changed since the store last saved them.
    dirty: AtomicBool,
    /// Bumped by a reset (`set_remaining`): leases taken before it are void.
    gen: AtomicU32,
    /// Cluster mode: what Redis granted this node of the period. Workers lease
    /// within it; the store's writer asks Redis for more as it runs low.
    pub grant: Option<Arc<NodeGrant>>,
}

/// A node's share of one quota in cluster mode: Redis hands each node batches of
/// the period's `limit` with a script that never hands out more than `limit`
/// over all nodes, so the cluster admits at most `limit`.
#[derive(Debug, Default)]
pub struct NodeGrant {
    /// `period << 44 | requests granted to this node in it` (cumulative).
    granted: AtomicU64,
    /// A worker ran out of the grant, or is about to: ask for more now.
    pub wanted: AtomicBool,
    /// The period in which Redis said the quota is spent (`u64::MAX`: none).
    spent_in: AtomicU64,
    /// Redis unreachable with `on_unavailable: fail_open`: the node admits up to
    /// `limit` on its own (its count goes to Redis when it is back).
    pub offline: AtomicBool,
    /// Bumped at each answer from Redis (workers waiting for a grant watch it).
    pub answers: AtomicU64,
    /// `period << 44 | what the other nodes were granted of it`, as of Redis's
    /// last answer (what is left is shown for the cluster, not this node).
    others: AtomicU64,
}

impl NodeGrant {
    pub fn new() -> Self {
        Self {
            spent_in: AtomicU64::new(u64::MAX),
            ..Self::default()
        }
    }

    /// Requests granted to this node in `period`.
    pub fn granted(&self, period: u64) -> u64 {
        Quota::count(&self.granted, period)
    }

    /// Adds `n` granted in `period` (Redis answered); 0: the quota is spent.
    pub fn add(&self, period: u64, n: u64) {
        if n == 0 {
            self.spent_in.store(period, Ordering::Release);
        } else {
            let before = self.granted(period);
            self.granted
                .store(pack(period, before + n), Ordering::Release);
        }
        self.answers.fetch_add(1, Ordering::AcqRel);
    }

    /// Redis's count of `period` over all nodes, after its last answer: the
    /// other nodes' part of it is remembered.
    pub fn saw_total(&self, period: u64, total: u64) {
        let others = total.saturating_sub(self.granted(period));
        self.others.store(pack(period, others), Ordering::Release);
    }

    /// What the other nodes were granted of `period`, as last seen.
    pub fn others(&self, period: u64) -> u64 {
        Quota::count(&self.others, period)
    }

    /// A quota reset (`set_remaining`): this node holds no grant beyond what its
    /// workers leased, and may be granted again.
    pub fn reset(&self, period: u64, used: u64) {
        self.granted.store(pack(period, used), Ordering::Release);
        self.others.store(pack(period, 0), Ordering::Release);
        self.spent_in.store(u64::MAX, Ordering::Release);
        self.answers.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether Redis may still grant more of `period`.
    pub fn may_grant(&self, period: u64) -> bool {
        self.spent_in.load(Ordering::Acquire) != period
    }
}

fn pack(period: u64, n: u64) -> u64 {
    (period << USED_BITS) | n.min(USED_MASK)
}

/// Where to find a quota's unspent lease in each shard (see `crate::ids::Slot`).
pub type Slot = crate::ids::Slot;

impl Quota {
    pub fn new(limit: u64, period: Period) -> Self {
        Self {
            limit: AtomicU64::new(limit.min(USED_MASK)),
            period,
            limited: true,
            state: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            gen: AtomicU32::new(0),
            grant: None,
        }
    }

    /// Cluster mode: leases stay within what Redis granted this node.
    pub fn with_grant(mut self) -> Self {
        self.grant = Some(Arc::new(NodeGrant::new()));
        self
    }

    /// How many requests of `period` workers may lease on this node: `limit`, or
    /// in cluster mode what Redis granted (all of `limit` while it is offline).
    fn ceiling(&self, period: u64) -> u64 {
        let limit = self.limit();
        match &self.grant {
            Some(g) if !g.offline.load(Ordering::Acquire) => limit.min(g.granted(period)),
            _ => limit,
        }
    }

    /// Requests of `period` used: this node's leases, plus in cluster mode what
    /// the other nodes were granted (as of Redis's last answer).
    pub fn used_everywhere(&self, period: u64) -> u64 {
        self.used(period) + self.grant.as_ref().map_or(0, |g| g.others(period))
    }

    /// Cluster mode: whether a worker refused for want of a grant should wait for
    /// the next answer from Redis (it may grant more).
    pub fn may_wait(&self, period: u64) -> bool {
        self.grant.as_ref().is_some_and(|g| {
            !g.offline.load(Ordering::Acquire)
                && g.may_grant(period)
                && self.used(period) < self.limit()
        })
    }

    /// The reset generation leases are taken under.
    pub fn gen(&self) -> u32 {
        self.gen.load(Ordering::Acquire)
    }

    /// Counts without limiting: a plan without a quota still reports usage per day.
    pub fn unlimited() -> Self {
        Self {
            limited: false,
            ..Self::new(USED_MASK, Period::Day)
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A usage plan's new limit, keeping what was used.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit.min(USED_MASK), Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    pub(crate) fn count(word: &AtomicU64, period: u64) -> u64 {
        let s = word.load(Ordering::Relaxed);
        if s >> USED_BITS == period {
            s & USED_MASK
        } else {
            0
        }
    }

    /// Requests handed out (leased) in `period` so far.
    pub fn used(&self, period: u64) -> u64 {
        Self::count(&self.state, period)
    }

    /// Requests served in `period`, as of the workers' last tick.
    pub fn spent(&self, period: u64) -> u64 {
        Self::count(&self.spent, period)
    }

    /// `(period, leased, spent)` as the store saves them.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        let s = self.state.load(Ordering::Relaxed);
        let period = s >> USED_BITS;
        (period, s & USED_MASK, self.spent(period))
    }

    /// Restores what the store saved (at start, before any worker runs).
    pub fn restore(&self, period: u64, leased: u64, spent: u64) {
        self.state.store(pack(period, leased), Ordering::Relaxed);
        self.spent.store(pack(period, spent), Ordering::Relaxed);
    }

    /// Takes and clears the "changed since saved" mark.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Sets what is left of `period` (the management API's quota reset): both counts
    /// become `limit - remaining`, and the leases workers hold are void (each worker
    /// drops its lease at its next request under this quota, without giving it back).
    pub fn set_remaining(&self, period: u64, remaining: u64) {
        let used = self.limit().saturating_sub(remaining);
        self.gen.fetch_add(1, Ordering::AcqRel);
        self.state.store(pack(period, used), Ordering::Release);
        self.spent.store(pack(period, used), Ordering::Release);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Leases up to `want` requests of `period`; 0 when the quota is spent.
    pub fn lease(&self, period: u64, want: u64) -> u64 {
        let limit = self.ceiling(period);
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            let (p, used) = (s >> USED_BITS, s & USED_MASK);
            let used = match p.cmp(&period) {
                std::cmp::Ordering::Equal => used,
                // A new period starts from zero.
                std::cmp::Ordering::Less => 0,
                // This worker's clock is behind another's: wait for it.
                std::cmp::Ordering::Greater => return 0,
            };
            let granted = want.min(limit - used.min(limit));
            if let Some(g) = &self.grant {
                // Short of what Redis granted: the writer asks for more now.
                if granted < want {
                    g.wanted.store(true, Ordering::Release);
                }
            }
            if granted == 0 {
                return 0;
            }
            match self.state.compare_exchange_weak(
                s,
                pack(period, used + granted),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.dirty.store(true, Ordering::Relaxed);
                    return granted;
                }
                Err(current) => s = current,
            }
        }
    }

    /// Returns `n` unspent requests of `period`; nothing if that period is over.
    pub fn give_back(&self, period: u64, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = self.state.load(Ordering::Relaxed);
        while s >> USED_BITS == period {
            let used = (s & USED_MASK).saturating_sub(n);
            match self.state.compare_exchange_weak(
                s,
                pack(period, used),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.dirty.store(true, Ordering::Relaxed);
                    return;
                }
                Err(current) => s = current,
            }
        }
    }

    /// Adds `n` requests served in `period` (a worker's tick).
    pub fn add_spent(&self, period: u64, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = self.spent.load(Ordering::Relaxed);
        loop {
            let next = match (s >> USED_BITS).cmp(&period) {
                std::cmp::Ordering::Equal => pack(period, (s & USED_MASK) + n),
                std::cmp::Ordering::Less => pack(period, n),
                // Counted late, after the period ended: it no longer matters.
                std::cmp::Ordering::Greater => return,
            };
            match self
                .spent
                .compare_exchange_weak(s, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.dirty.store(true, Ordering::Relaxed);
                    return;
                }
                Err(current) => s = current,
            }
        }
    }
}

/// A worker's unspent lease of one quota.
#[derive(Debug, Default)]
struct LeaseSlot {
    /// The generation of the slot this lease belongs to (see `crate::ids::Slot`).
    gen: u32,
    period: u64,
    /// Requests of the lease not yet admitted.
    left: u64,
    /// Requests admitted since the last tick, not yet added to `Quota::spent`.
    unflushed: u64,
    /// The quota's reset generation when the lease was taken.
    qgen: u32,
    quota: Option<Arc<Quota>>,
}

impl LeaseSlot {
    /// Hands what this slot holds back to its quota: the unspent lease, and the
    /// count of requests served.
    fn settle(&mut self) {
        if let Some(q) = &self.quota {
            if q.gen() == self.qgen {
                q.give_back(self.period, self.left);
            }
            if self.unflushed > 0 {
                q.add_spent(self.period, self.unflushed);
            }
        }
        self.left = 0;
        self.unflushed = 0;
    }
}

/// A worker's unspent leases, one slot per quota (indexed by `Slot::index`), and the
/// slots whose served count the next tick adds to the shared quota.
#[derive(Debug, Default)]
pub struct Leases {
    slots: Vec<LeaseSlot>,
    dirty: Vec<u32>,
    workers: u64,
}

/// What `Leases::admit` did besides deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub state: QuotaState,
    /// A new lease was taken from the shared quota (the store should save it).
    pub leased: bool,
}

impl Leases {
    pub fn new(workers: usize) -> Self {
        Self {
            slots: Vec::new(),
            dirty: Vec::new(),
            workers: workers.max(1) as u64,
        }
    }

    /// Spends one request of `quota` (found at `slot`) at `unix_s`; `Err` with the
    /// state when the period's quota is spent.
    pub fn admit(
        &mut self,
        slot: Slot,
        quota: &Arc<Quota>,
        unix_s: u64,
    ) -> Result<Admitted, QuotaState> {
        let (period, next) = quota.period.at(unix_s);
        let i = slot.index as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, LeaseSlot::default);
        }
        let s = &mut self.slots[i];
        if s.gen != slot.gen || s.quota.is_none() {
            // First use, or the slot now belongs to another key or plan.
            s.settle();
            *s = LeaseSlot {
                gen: slot.gen,
                period,
                qgen: quota.gen(),
                quota: Some(Arc::clone(quota)),
                ..LeaseSlot::default()
            };
        } else if s.period != period {
            // Roll-over: the old period's unspent lease goes back.
            s.settle();
            s.period = period;
        }
        let qgen = quota.gen();
        if s.qgen != qgen {
            // The quota was reset: the lease held is void.
            s.left = 0;
            s.qgen = qgen;
        }
        let limit = quota.limit();
        let state = |left: u64| QuotaState {
            limit,
            remaining: limit - quota.used_everywhere(period).min(limit) + left,
            reset_s: next.saturating_sub(unix_s),
        };
        let mut leased = false;
        if s.left == 0 {
            let left = limit - quota.used(period).min(limit);
            let want = (left / (4 * self.workers)).clamp(1, 64);
            s.left = quota.lease(period, want);
            if s.left == 0 {
                return Err(state(0));
            }
            leased = true;
        }
        s.left -= 1;
        if s.unflushed == 0 {
            self.dirty.push(slot.index);
        }
        s.unflushed += 1;
        Ok(Admitted {
            state: state(s.left),
            leased,
        })
    }

    /// Adds the requests served since the last call to their quotas (the worker's
    /// tick, every 100 ms); `true` if there were any.
    pub fn flush(&mut self) -> bool {
        let any = !self.dirty.is_empty();
        for i in self.dirty.drain(..) {
            let s = &mut self.slots[i as usize];
            if let Some(q) = &s.quota {
                q.add_spent(s.period, s.unflushed);
            }
            s.unflushed = 0;
        }
        any
    }

    /// Gives every unspent lease back and counts what was served (at shutdown), so
    /// that the store saves exact counts.
    pub fn settle_all(&mut self) {
        self.dirty.clear();
        for s in &mut self.slots {
            s.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_periods_in_utc() {
        // 2026-11-24 (a Tuesday) 12:00 UTC.
        let t = 1_795_521_600;
        let (_, next_day) = Period::Day.at(t);
        assert_eq!(next_day, 1_795_564_800, "midnight of the 25th");
        let (_, next_week) = Period::Week.at(t);
        assert_eq!(next_week, 1_795_996_800, "Monday the 30th");
        // Sunday 23:59:59 is still that week; Monday 00:00 is the next.
        assert_eq!(
            Period::Week.at(1_795_996_799).0 + 1,
            Period::Week.at(1_795_996_800).0
        );
        let (_, next_month) = Period::Month.at(t);
        assert_eq!(next_month, 1_796_083_200, "December 1st");
        // December rolls into January.
        let (_, jan) = Period::Month.at(1_797_000_000);
        assert_eq!(jan, 1_798_761_600, "2027-01-01");
    }

    #[test]
    fn leases_never_exceed_the_limit_and_reset_each_period() {
        let q = Arc::new(Quota::new(10, Period::Day));
        let slot = Slot { index: 3, gen: 1 };
        let mut workers = [Leases::new(2), Leases::new(2)];
        let t = 1_795_521_600;
        let mut admitted = 0;
        for i in 0..40 {
            if workers[i % 2].admit(slot, &q, t).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        let refused = workers[0].admit(slot, &q, t).unwrap_err();
        assert_eq!((refused.limit, refused.remaining), (10, 0));
        let (period, _) = Period::Day.at(t);
        assert_eq!(q.spent(period), 0, "served counts wait for the tick");
        for w in &mut workers {
            assert!(w.flush(), "each worker served some");
        }
        assert_eq!(q.spent(period), 10);
        // The next day starts afresh.
        assert_eq!(
            workers[1]
                .admit(slot, &q, t + DAY_S)
                .map(|a| a.state.remaining),
            Ok(9)
        );
    }

    #[test]
    fn unspent_leases_go_back_at_shutdown() {
        let q = Arc::new(Quota::new(1000, Period::Month));
        let slot = Slot { index: 0, gen: 1 };
        let mut w = Leases::new(1);
        let t = 1_795_521_600;
        let (period, _) = Period::Month.at(t);
        for _ in 0..5 {
            w.admit(slot, &q, t).unwrap();
        }
        assert!(q.used(period) > 5, "a lease is larger than one request");
        w.settle_all();
        assert_eq!((q.used(period), q.spent(period)), (5, 5));
        // A slot reused by another quota settles the old one first.
        let other = Arc::new(Quota::new(1000, Period::Month));
        w.admit(slot, &q, t).unwrap();
        w.admit(Slot { index: 0, gen: 2 }, &other, t).unwrap();
        assert_eq!((q.used(period), q.spent(period)), (6, 6));
    }
}
