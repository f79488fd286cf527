//! Per-core state. Each worker builds and owns one `Shard`; its connections share it
//! through `Rc` on that thread only, so nothing here needs a lock.

use std::cell::{Cell, RefCell};
use std::task::Waker;
use std::time::Instant;

use std::sync::Arc;

use crate::clock::DateCache;
use crate::ids::RequestId;
use crate::policy::keys::Keyring;
use crate::policy::quota::Leases;
use crate::policy::throttle::LocalTokens;
use crate::upstream::connections::Slots;
use crate::upstream::pool::Pool;
use crate::upstream::pool::PoolLimits;

/// Capacity of a connection buffer: a typical head, or a small body with its head.
pub const SHARD_BUF: usize = 4 * 1024;
/// A buffer that grew past this (a large head or body) is freed, not kept.
const MAX_KEPT_BUF: usize = 16 * 1024;
/// Free buffers a shard keeps: a thousand connections with requests in flight hold
/// three each, and what one round of them gives back the next round takes again
/// (at 256, a 1,000-connection load freed and allocated buffers on most requests).
/// What stays unused goes back within seconds (`trim_bufs`); this bounds a burst.
const MAX_FREE_BUFS: usize = 4096;

pub struct Shard {
    pub id: usize,
    /// The plan new requests use: swapped by the worker's tick on a reload. A
    /// connection compares its own with it before each request.
    pub plan: RefCell<Option<Arc<crate::plan::Plan>>>,
    /// The worker runs monoio's io_uring driver (else epoll): a pending read there
    /// cannot be dropped without risking the bytes it reads.
    pub uring: bool,
    pub pool: RefCell<Pool>,
    /// Requests whose head was read and whose response is not yet complete.
    pub in_flight: Cell<usize>,
    /// Set on SIGTERM: finish what is in flight, answer with `Connection: close`.
    pub draining: Cell<bool>,
    pub date: RefCell<DateCache>,
    /// Idle deadlines of parked connections, swept by the worker's control loop (a
    /// timer per parked connection would cost monoio's 384-byte timer entry each).
    pub parked: RefCell<Parked>,
    /// Idle WebSocket API connections held with no task (`None`: no epoll set
    /// could be made; they wait in their tasks).
    pub dormant: Option<crate::proxy::dormant::Dormant>,
    /// This worker's unspent throttle tokens (`throttle`).
    pub tokens: RefCell<LocalTokens>,
    /// This worker's unspent quota leases (`quota`).
    pub leases: RefCell<Leases>,
    /// The keyring this worker reads, and its version: swapped by the worker's tick
    /// when the control plane publishes a new one, never during a request.
    pub keyring: RefCell<(u64, Arc<Keyring>)>,
    /// The keyring of the plan before the last reload, for requests that began
    /// on it (their stage ids are that plan's).
    pub previous_keyring: RefCell<Option<Arc<Keyring>>>,
    /// This worker's response cache of each stage.
    pub caches: RefCell<crate::policy::cache::Caches>,
    /// Where a request's cache key is built (reused).
    pub cache_key: RefCell<Vec<u8>>,
    /// Cache misses being fetched, and the requests waiting for them.
    pub fills: RefCell<crate::policy::cache::Fills>,
    /// Access log lines not yet handed to the writer, per sink.
    pub log_bufs: RefCell<Vec<Vec<u8>>>,
    /// Lines in each of `log_bufs`.
    pub log_lines: RefCell<Vec<u64>>,
    /// The address of the `Logs` whose sinks `log_bufs` are for (0: any).
    pub log_owner: Cell<usize>,
    rng: Cell<u64>,
    /// Finished spans not yet handed to the OTLP exporter.
    pub spans: RefCell<Vec<crate::observe::telemetry::Span>>,
    /// The access log's `requestTime` of the current second.
    pub log_time: RefCell<crate::observe::accesslog::TimeCache>,
    /// The process's metrics; this worker writes only its own cells.
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    /// Tokens this worker verified and authorizer decisions it was given.
    pub access: RefCell<crate::policy::access::AccessCache>,
    /// This worker's state of each upstream group, by its `Live`'s address.
    pub choosers: RefCell<rustc_hash::FxHashMap<usize, crate::upstream::choose::Chooser>>,
    /// Function invocations this worker awaits (`None`: no inbox could be made).
    pub calls: Option<crate::upstream::function::Calls>,
    /// The functions whose Runtime API this worker serves, and its runtimes
    /// waiting for a job of each.
    #[allow(clippy::type_complexity)]
    pub runtimes: RefCell<
        Vec<(
            Arc<crate::upstream::function::Function>,
            Vec<std::rc::Rc<crate::upstream::function::Idle>>,
        )>,
    >,
    /// The mailboxes of this worker's WebSocket connections.
    pub mailboxes: crate::upstream::connections::Mailboxes,
    /// The socket the inbox rings: taken by the worker's task that reads it.
    pub bell: RefCell<Option<std::os::unix::net::UnixStream>>,
    /// Connection buffers not in use (parked connections hold none).
    bufs: RefCell<Vec<Vec<u8>>>,
    /// The fewest free buffers seen since the last `trim_bufs`: that many went
    /// unused all the while.
    bufs_low: Cell<usize>,
    next_request: Cell<u64>,
    id_seed: u32,
}

/// A shard's limits, keys and caches, built by the worker from the plan.
#[derive(Default)]
pub struct Parts {
    pub tokens: LocalTokens,
    pub leases: Leases,
    pub keyring: (u64, Arc<Keyring>),
    pub caches: Option<crate::policy::cache::Caches>,
    pub metrics: Option<Arc<crate::observe::metrics::Metrics>>,
    pub plan: Option<Arc<crate::plan::Plan>>,
}

impl Shard {
    /// The keyring whose stage and route ids are those of the plan of
    /// `generation`: the current one, or the one before the last reload for a
    /// request (or a WebSocket connection) that began before it.
    pub fn keyring_for(&self, generation: u64) -> std::cell::Ref<'_, Keyring> {
        let current = self.keyring.borrow();
        if current.1.generation != generation {
            let previous = std::cell::Ref::filter_map(self.previous_keyring.borrow(), |p| {
                p.as_deref().filter(|r| r.generation == generation)
            });
            if let Ok(r) = previous {
                return r;
            }
        }
        std::cell::Ref::map(current, |c| &*c.1)
    }

    pub fn new(
        id: usize,
        uring: bool,
        pool_limits: PoolLimits,
        parts: Parts,
        id_seed: u32,
    ) -> Self {
        let Parts {
            tokens,
            leases,
            keyring,
            caches,
            metrics,
            plan,
        } = parts;
        let (calls, bell) = match crate::upstream::function::Inbox::new() {
            Ok((inbox, bell)) => (
                Some(crate::upstream::function::Calls::new(inbox)),
                Some(bell),
            ),
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "no function inbox: lambda integrations answer 500");
                (None, None)
            }
        };
        Self {
            calls,
            runtimes: RefCell::new(Vec::new()),
            mailboxes: crate::upstream::connections::Mailboxes::default(),
            bell: RefCell::new(bell),
            id,
            plan: RefCell::new(plan),
            uring,
            pool: RefCell::new(Pool::new(pool_limits)),
            in_flight: Cell::new(0),
            draining: Cell::new(false),
            date: RefCell::new(DateCache::default()),
            parked: RefCell::new(Parked::default()),
            dormant: crate::proxy::dormant::Dormant::new()
                .map_err(
                    |err| tracing::warn!(worker = id, %err, "idle connections keep their tasks"),
                )
                .ok(),
            tokens: RefCell::new(tokens),
            leases: RefCell::new(leases),
            keyring: RefCell::new(keyring),
            previous_keyring: RefCell::new(None),
            caches: RefCell::new(caches.unwrap_or_else(|| {
                crate::policy::cache::Caches::new(id, Arc::default(), Vec::new())
            })),
            cache_key: RefCell::new(Vec::new()),
            fills: RefCell::new(crate::policy::cache::Fills::default()),
            access: RefCell::new(crate::policy::access::AccessCache::default()),
            log_bufs: RefCell::new(Vec::new()),
            log_lines: RefCell::new(Vec::new()),
            log_owner: Cell::new(0),
            log_time: RefCell::new(crate::observe::accesslog::TimeCache::default()),
            spans: RefCell::new(Vec::new()),
            rng: Cell::new(
                (u64::from(id_seed) << 32 | id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            ),
            metrics: metrics
                .unwrap_or_else(|| Arc::new(crate::observe::metrics::Metrics::new(id + 1))),
            choosers: RefCell::new(rustc_hash::FxHashMap::default()),
            bufs: RefCell::new(Vec::new()),
            bufs_low: Cell::new(0),
            next_request: Cell::new(0),
            id_seed,
        }
    }

    /// `plan` is the one new requests use (always, where the shard has none).
    #[inline]
    pub fn runs(&self, plan: &crate::plan::Plan) -> bool {
        self.plan
            .borrow()
            .as_ref()
            .is_none_or(|p| std::ptr::eq(Arc::as_ptr(p), plan))
    }

    /// The plan new requests use, and the index in it of the listener named as
    /// `old`'s `listener`; `None` when the new plan dropped that listener.
    pub fn switch(
        &self,
        old: &crate::plan::Plan,
        listener: usize,
    ) -> Option<(Arc<crate::plan::Plan>, usize)> {
        let name = &old.listeners.get(listener)?.name;
        let plan = self.plan.borrow().clone()?;
        let li = plan.listeners.iter().position(|l| l.name == *name)?;
        Some((plan, li))
    }

    /// `persist`, unless a drain has begun: then the response closes the connection.
    pub fn persist(&self, persist: crate::http::respond::Persist) -> crate::http::respond::Persist {
        if self.draining.get() {
            crate::http::respond::Persist::Close
        } else {
            persist
        }
    }

    /// `buf` if it has room already, else a free buffer of the shard's.
    pub fn take_buf(&self, buf: Vec<u8>) -> Vec<u8> {
        if buf.capacity() > 0 {
            return buf;
        }
        let mut free = self.bufs.borrow_mut();
        let buf = free.pop();
        self.bufs_low.set(self.bufs_low.get().min(free.len()));
        buf.unwrap_or_else(|| Vec::with_capacity(SHARD_BUF))
    }

    /// Frees half of the buffers that stayed unused since the last call (the
    /// worker's tick, once a second): after a burst the free list shrinks back to
    /// what the traffic draws on within a few seconds, instead of keeping the
    /// burst's high-water mark (up to `MAX_FREE_BUFS`) for good.
    pub fn trim_bufs(&self) {
        let mut free = self.bufs.borrow_mut();
        let idle = self.bufs_low.get().min(free.len());
        let keep = free.len() - idle / 2;
        free.truncate(keep);
        self.bufs_low.set(free.len());
    }

    /// Keeps `buf` for reuse, unless it grew large or enough are kept.
    pub fn give_buf(&self, mut buf: Vec<u8>) {
        let mut free = self.bufs.borrow_mut();
        if (SHARD_BUF..=MAX_KEPT_BUF).contains(&buf.capacity()) && free.len() < MAX_FREE_BUFS {
            buf.clear();
            free.push(buf);
        }
    }

    /// A pseudo-random number (xorshift64*): trace and span ids, sampling.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Adds an access log line to the sink's buffer, handing the buffer to the
    /// writer when full.
    pub fn log_line(
        &self,
        logs: &crate::observe::accesslog::Logs,
        sink: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        let owner = std::ptr::from_ref(logs) as usize;
        if self.log_owner.get() != owner && self.log_owner.get() != 0 {
            // A request that began before this worker switched to a plan with other
            // sinks: its line goes to its own plan's writer, alone.
            let mut one = Vec::new();
            fill(&mut one);
            let cell = &self.metrics.worker[self.id.min(self.metrics.worker.len() - 1)];
            if logs.send(sink, one) {
                cell.log_lines.add(1);
            } else {
                cell.log_dropped.add(1);
            }
            return;
        }
        let mut bufs = self.log_bufs.borrow_mut();
        let mut lines = self.log_lines.borrow_mut();
        if bufs.len() <= sink {
            bufs.resize_with(sink + 1, Vec::new);
            lines.resize(sink + 1, 0);
        }
        fill(&mut bufs[sink]);
        lines[sink] += 1;
        if bufs[sink].len() >= crate::observe::accesslog::BATCH_BYTES {
            self.hand_over(logs, sink, &mut bufs[sink], &mut lines[sink]);
        }
    }

    /// Hands every buffered line to the writer (each tick, and at the end).
    pub fn flush_logs(&self, logs: &crate::observe::accesslog::Logs) {
        let mut bufs = self.log_bufs.borrow_mut();
        let mut lines = self.log_lines.borrow_mut();
        for (sink, (buf, n)) in bufs.iter_mut().zip(lines.iter_mut()).enumerate() {
            if !buf.is_empty() {
                self.hand_over(logs, sink, buf, n);
            }
        }
    }

    fn hand_over(
        &self,
        logs: &crate::observe::accesslog::Logs,
        sink: usize,
        buf: &mut Vec<u8>,
        lines: &mut u64,
    ) {
        let batch = std::mem::replace(buf, logs.spare());
        let cell = &self.metrics.worker[self.id.min(self.metrics.worker.len() - 1)];
        if logs.send(sink, batch) {
            cell.log_lines.add(*lines);
        } else {
            cell.log_dropped.add(*lines);
        }
        *lines = 0;
    }

    /// What this shard opens upstream connections with.
    /// Adds the choosers' counts to their groups' (the worker's tick), and drops
    /// those of groups no plan runs any more.
    pub fn flush_choosers(&self) {
        let mut pool = self.pool.borrow_mut();
        self.choosers.borrow_mut().retain(|_, ch| {
            if ch.alive() {
                ch.flush_with(&mut pool);
                true
            } else {
                ch.retire();
                false
            }
        });
    }

    pub fn dial(&self) -> crate::upstream::connect::Dial<'_> {
        crate::upstream::connect::Dial {
            pool: &self.pool,
            uring: self.uring,
            connects: self
                .metrics
                .worker
                .get(self.id)
                .map(|w| &w.upstream_connects),
        }
    }

    pub fn next_request_id(&self) -> RequestId {
        let n = self.next_request.get();
        self.next_request.set(n.wrapping_add(1));
        // 12 bytes: 4 of process seed, 1 of worker id, 7 of counter.
        let mut raw = [0u8; 12];
        raw[..4].copy_from_slice(&self.id_seed.to_be_bytes());
        raw[4] = self.id as u8;
        raw[5..].copy_from_slice(&n.to_be_bytes()[1..]);
        base64url_12(&raw)
    }
}

fn base64url_12(raw: &[u8; 12]) -> [u8; 16] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = [0u8; 16];
    for (i, chunk) in raw.chunks(3).enumerate() {
        let v = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for j in 0..4 {
            out[i * 4 + j] = ALPHABET[((v >> (18 - 6 * j)) & 63) as usize];
        }
    }
    out
}

/// The idle deadlines of parked connections, each with the waker to call when
/// it passes: reused slots (`Slots`), trimmed after a burst.
#[derive(Default)]
pub struct Parked {
    slots: Slots<ParkSlot>,
}

#[derive(Default)]
struct ParkSlot {
    /// `None` once it has passed (or the slot is vacant).
    deadline: Option<Instant>,
    waker: Option<Waker>,
}

impl Parked {
    pub fn insert(&mut self, deadline: Instant) -> u64 {
        self.slots.insert(ParkSlot {
            deadline: Some(deadline),
            waker: None,
        })
    }

    pub fn remove(&mut self, key: u64) {
        self.slots.remove(key);
    }

    /// `true` once the slot's deadline has passed; else keeps `waker` for the sweep.
    pub fn expired(&mut self, key: u64, waker: &Waker) -> bool {
        let Some(slot) = self.slots.get_mut(key) else {
            return true;
        };
        if slot.deadline.is_none() {
            return true;
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        false
    }

    /// Wakes the connections whose deadline is past.
    pub fn sweep(&mut self, now: Instant) {
        for (_, slot) in self.slots.iter_mut() {
            if slot.deadline.is_some_and(|d| d <= now) {
                slot.deadline = None;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Gives back the room a burst of connections left (`Slots::trim`).
    pub fn trim(&mut self) -> bool {
        self.slots.trim()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A connection's slot in `Shard::parked` while it waits, freed on drop.
pub struct Parking<'a>(&'a Shard, u64);

impl<'a> Parking<'a> {
    pub fn new(shard: &'a Shard, deadline: Instant) -> Self {
        Self(shard, shard.parked.borrow_mut().insert(deadline))
    }

    /// `true` once the deadline has passed; else `waker` is woken when it does.
    pub fn expired(&self, waker: &Waker) -> bool {
        self.0.parked.borrow_mut().expired(self.1, waker)
    }
}

impl Drop for Parking<'_> {
    fn drop(&mut self) {
        self.0.parked.borrow_mut().remove(self.1);
    }
}

/// Counts a request as in flight until dropped, so a drain waits for it.
pub struct InFlight<'a>(&'a Shard);

impl<'a> InFlight<'a> {
    pub fn enter(shard: &'a Shard) -> Self {
        shard.in_flight.set(shard.in_flight.get() + 1);
        Self(shard)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_url_safe() {
        let s = Shard::new(
            3,
            false,
            PoolLimits::default(),
            Parts::default(),
            0xdead_beef,
        );
        let a = s.next_request_id();
        let b = s.next_request_id();
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
    }
}
