//! The response cache: one per worker and stage, no locks. Each holds a byte budget
//! (the stage's `capacity_mb` split across workers), evicts the least recently used
//! entry when full, and checks expiry on read.
//!
//! An entry keeps what a hit needs, ready to write: the stored header lines (the
//! upstream's, with `content-length`) and the body. A hit writes the status line and
//! the per-response headers (`date`, request id, `x-cache`, `age`) and then those
//! bytes: no upstream work and no re-serialisation.
//!
//! Keys are the bytes of (method, path, the values of the route's `cache.key`
//! parameters), built into a reused buffer; the map holds their 64-bit hash and each
//! entry its full key, compared on lookup, so a hash collision is a miss, never a
//! wrong response.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
#[allow(clippy::disallowed_types)]
// Not on the request path: the admin API queues flushes; workers drain them on their tick, not per request.
use std::sync::Mutex;

use crate::ids::StageId;

use rustc_hash::FxBuildHasher;

/// A stored response's `Vary`: the request headers it names (lower case,
/// `\n`-separated) and their values in the request it was stored for.
#[derive(Debug)]
pub struct Vary {
    pub names: Box<[u8]>,
    pub values: Box<[u8]>,
}

/// What one entry costs besides its key, headers and body (slab slot, map entry,
/// `Rc` and `Vec` headers), counted against the budget.
pub const ENTRY_OVERHEAD: usize = 160;

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    pub key: Box<[u8]>,
    /// Header lines after the per-response ones, ending with the blank line.
    pub head: Box<[u8]>,
    pub body: Box<[u8]>,
    /// Unix seconds when stored; `age` counts from here.
    pub stored_s: u64,
    /// Unix milliseconds after which the entry is stale.
    pub expires_ms: u64,
    /// The response's `Vary`: the request headers named (lower case, `\n`-separated)
    /// and their values in the request it was stored for (`vary_values`'s form).
    /// A request whose values differ misses, and its response replaces the entry.
    pub vary: Option<Vary>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.key.len()
            + self.head.len()
            + self.body.len()
            + self
                .vary
                .as_ref()
                .map_or(0, |v| v.names.len() + v.values.len())
            + ENTRY_OVERHEAD
    }
}

const NIL: u32 = u32::MAX;

struct Slot {
    entry: Option<Rc<Entry>>,
    hash: u64,
    prev: u32,
    next: u32,
}

/// One worker's cache of one stage.
pub struct Cache {
    budget: usize,
    used: usize,
    map: HashMap<u64, u32, FxBuildHasher>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Rc<Entry>),
    /// Nothing, or an entry past its TTL (removed).
    Miss,
}

pub fn hash_key(key: &[u8]) -> u64 {
    // FxHash is fast but weak; the full key is compared anyway.
    use std::hash::{BuildHasher, Hasher};
    let mut h = FxBuildHasher.build_hasher();
    h.write(key);
    h.finish()
}

impl Cache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held, counting each entry's overhead.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn remove_slot(&mut self, i: u32) {
        self.unlink(i);
        let s = &mut self.slots[i as usize];
        if let Some(e) = s.entry.take() {
            self.used -= e.cost();
        }
        self.map.remove(&s.hash);
        self.free.push(i);
    }

    /// Looks `key` up at `now_ms`; a hit becomes the most recently used.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Lookup {
        let h = hash_key(key);
        let Some(&i) = self.map.get(&h) else {
            return Lookup::Miss;
        };
        let entry = match &self.slots[i as usize].entry {
            Some(e) if *e.key == *key => Rc::clone(e),
            _ => return Lookup::Miss,
        };
        if entry.expires_ms <= now_ms {
            self.remove_slot(i);
            return Lookup::Miss;
        }
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Lookup::Hit(entry)
    }

    /// Stores `entry`, replacing one with the same key, evicting the least recently
    /// used until it fits; `false` if it is larger than the whole budget.
    pub fn insert(&mut self, entry: Entry) -> bool {
        let cost = entry.cost();
        if cost > self.budget {
            return false;
        }
        let h = hash_key(&entry.key);
        if let Some(&i) = self.map.get(&h) {
            self.remove_slot(i);
        }
        while self.used + cost > self.budget && self.tail != NIL {
            self.remove_slot(self.tail);
        }
        let slot = Slot {
            entry: Some(Rc::new(entry)),
            hash: h,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(h, i);
        self.push_front(i);
        self.used += cost;
        true
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let h = hash_key(key);
        match self.map.get(&h) {
            Some(&i)
                if self.slots[i as usize]
                    .entry
                    .as_ref()
                    .is_some_and(|e| *e.key == *key) =>
            {
                self.remove_slot(i);
                true
            }
            _ => false,
        }
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
        self.used = 0;
    }
}

/// What the control plane and the workers share about the caches: flushes (read by
/// each worker at its next lookup of that stage, one Relaxed load when nothing
/// changed), and the counters and sizes the workers publish for the management API
/// and metrics. Each worker writes only its own counters (no read-modify-write
/// contention).
#[derive(Debug, Default)]
pub struct Shared {
    /// Per stage: bumped to drop the stage's whole cache on every worker.
    stage_gen: Box<[AtomicU64]>,
    /// Bumped for each single-entry flush, recorded in `flushes`.
    flush_version: AtomicU64,
    #[allow(clippy::disallowed_types)]
    // Not on the request path: the admin API queues flushes; workers drain them on their tick, not per request.
    flushes: Mutex<VecDeque<(u64, StageId, Vec<u8>)>>,
    /// `[worker][stage route slot] → (hits, misses)`.
    counters: Box<[(AtomicU64, AtomicU64)]>,
    /// `[worker][stage] → bytes held`.
    used: Box<[AtomicU64]>,
    /// `[worker][stage] → entries held`.
    entries: Box<[AtomicU64]>,
    /// First route slot of each stage.
    route_base: Box<[usize]>,
    routes_total: usize,
    stages: usize,
}

/// Single-entry flushes kept for workers that have not looked yet; one further
/// behind drops the whole stage instead.
const MAX_PENDING_FLUSHES: usize = 4096;

impl Shared {
    /// `routes[stage]` is the number of routes of each stage.
    pub fn new(workers: usize, routes: &[usize]) -> Self {
        let mut route_base = Vec::with_capacity(routes.len());
        let mut total = 0;
        for &n in routes {
            route_base.push(total);
            total += n;
        }
        let counters = (0..workers * total)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect();
        let per_stage = || {
            (0..workers * routes.len())
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        Self {
            stage_gen: (0..routes.len()).map(|_| AtomicU64::new(0)).collect(),
            flush_version: AtomicU64::new(0),
            #[allow(clippy::disallowed_types)] // Not on the request path: the admin API queues flushes; workers drain them on their tick, not per request.
            flushes: Mutex::new(VecDeque::new()),
            counters,
            used: per_stage(),
            entries: per_stage(),
            route_base: route_base.into(),
            routes_total: total,
            stages: routes.len(),
        }
    }

    /// Drops a stage's whole cache, on every worker.
    pub fn flush_stage(&self, stage: StageId) {
        if let Some(g) = self.stage_gen.get(stage) {
            g.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Drops one entry of a stage, on every worker.
    pub fn flush_key(&self, stage: StageId, key: Vec<u8>) {
        let mut q = crate::lock(&self.flushes);
        let v = self.flush_version.load(Ordering::Acquire) + 1;
        q.push_back((v, stage, key));
        while q.len() > MAX_PENDING_FLUSHES {
            q.pop_front();
        }
        self.flush_version.store(v, Ordering::Release);
    }

    fn bump(&self, worker: usize, stage: StageId, route: usize, hit: bool) {
        // (A request that began on an older plan may name a stage this one lacks.)
        let Some(base) = self.route_base.get(stage) else {
            return;
        };
        let i = worker * self.routes_total + base + route;
        if let Some((h, m)) = self.counters.get(i) {
            // Only this worker writes its counters: no atomic read-modify-write.
            let c = if hit { h } else { m };
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// `(hits, misses)` of one route of a stage, summed over workers.
    pub fn route_counts(&self, stage: StageId, route: usize) -> (u64, u64) {
        let workers = self.counters.len() / self.routes_total.max(1);
        (0..workers).fold((0, 0), |(h, m), w| {
            let (ch, cm) = &self.counters[w * self.routes_total + self.route_base[stage] + route];
            (
                h + ch.load(Ordering::Relaxed),
                m + cm.load(Ordering::Relaxed),
            )
        })
    }

    /// `(entries, bytes)` a stage's caches hold, summed over workers.
    pub fn stage_size(&self, stage: StageId) -> (u64, u64) {
        let workers = self.used.len() / self.stages.max(1);
        (0..workers).fold((0, 0), |(e, b), w| {
            let i = w * self.stages + stage;
            (
                e + self.entries[i].load(Ordering::Relaxed),
                b + self.used[i].load(Ordering::Relaxed),
            )
        })
    }
}

/// One worker's caches, one per stage, and what it has seen of the shared flushes.
pub struct Caches {
    worker: usize,
    shared: std::sync::Arc<Shared>,
    stages: Vec<Option<Cache>>,
    seen_gen: Vec<u64>,
    seen_flush: u64,
}

impl Caches {
    pub fn new(worker: usize, shared: std::sync::Arc<Shared>, stages: Vec<Option<Cache>>) -> Self {
        let n = stages.len();
        Self {
            worker,
            shared,
            stages,
            seen_gen: vec![0; n],
            seen_flush: 0,
        }
    }

    /// These caches are laid out for the plan whose shared state is `shared` (a
    /// request that began on an older plan does not touch them).
    pub fn is_for(&self, shared: &std::sync::Arc<Shared>) -> bool {
        std::sync::Arc::ptr_eq(&self.shared, shared)
    }

    /// The caches for a new plan: each stage that caches takes over the cache of
    /// the stage of the same API and name in this plan (`old_stages`), with its
    /// entries, after the flushes made so far are applied. `stages`: (api, stage,
    /// bytes for this worker) of the new plan.
    pub fn carry(
        mut self,
        old_stages: &[(String, String)],
        shared: std::sync::Arc<Shared>,
        stages: &[(String, String, usize)],
    ) -> Self {
        for sid in 0..self.stages.len() {
            self.catch_up(sid);
        }
        let mut old: Vec<Option<Cache>> = std::mem::take(&mut self.stages);
        let caches = stages
            .iter()
            .map(|(api, stage, bytes)| {
                if *bytes == 0 {
                    return None;
                }
                let kept = old_stages
                    .iter()
                    .position(|(a, s)| a == api && s == stage)
                    .and_then(|i| old.get_mut(i).and_then(Option::take))
                    .filter(|c| c.budget() == *bytes);
                Some(kept.unwrap_or_else(|| Cache::new(*bytes)))
            })
            .collect();
        let mut next = Caches::new(self.worker, shared, caches);
        // Flushes made on the new shared state before this worker switched.
        for sid in 0..next.stages.len() {
            next.catch_up(sid);
            next.publish(sid);
        }
        next
    }

    /// Applies flushes the control plane made since this worker last looked.
    fn catch_up(&mut self, stage: StageId) {
        let shared = &*self.shared;
        let g = shared.stage_gen[stage].load(Ordering::Acquire);
        if g != self.seen_gen[stage] {
            self.seen_gen[stage] = g;
            if let Some(c) = &mut self.stages[stage] {
                c.clear();
            }
        }
        let v = shared.flush_version.load(Ordering::Acquire);
        if v != self.seen_flush {
            let q = crate::lock(&shared.flushes);
            let oldest = q.front().map_or(v, |f| f.0);
            if oldest > self.seen_flush + 1 {
                // Fell behind what is kept: drop everything.
                self.stages.iter_mut().flatten().for_each(Cache::clear);
            } else {
                for (fv, s, key) in q.iter() {
                    if *fv > self.seen_flush {
                        if let Some(c) = &mut self.stages[*s] {
                            c.remove(key);
                        }
                    }
                }
            }
            self.seen_flush = v;
        }
    }

    fn publish(&self, stage: StageId) {
        let shared = &*self.shared;
        if let Some(c) = &self.stages[stage] {
            let i = self.worker * shared.stages + stage;
            shared.used[i].store(c.used() as u64, Ordering::Relaxed);
            shared.entries[i].store(c.len() as u64, Ordering::Relaxed);
        }
    }

    /// Looks a request up, counting the hit or miss for its route.
    /// Looks a request up (not counted: see `count`).
    pub fn get(&mut self, stage: StageId, key: &[u8], now_ms: u64) -> Lookup {
        self.catch_up(stage);
        let Some(c) = &mut self.stages[stage] else {
            return Lookup::Miss;
        };
        let found = c.get(key, now_ms);
        if matches!(found, Lookup::Miss) {
            // An expired entry may have gone.
            self.publish(stage);
        }
        found
    }

    /// Counts a request served from the cache (`hit`) or from the integration.
    pub fn count(&self, stage: StageId, route: usize, hit: bool) {
        self.shared.bump(self.worker, stage, route, hit);
    }

    pub fn insert(&mut self, owner: usize, stage: StageId, entry: Entry) {
        if owner != std::sync::Arc::as_ptr(&self.shared) as usize {
            return;
        }
        self.catch_up(stage);
        if let Some(c) = &mut self.stages[stage] {
            c.insert(entry);
        }
        self.publish(stage);
    }
}

/// Misses being fetched on this worker, by (stage, key hash), with the requests
/// waiting for them: concurrent misses for one key make one upstream request.
#[derive(Default)]
pub struct Fills {
    pending: HashMap<(StageId, u64), Vec<std::task::Waker>, FxBuildHasher>,
}

impl Fills {
    /// `true` if this request leads (fetches); `false` if one is already fetching.
    pub fn lead(&mut self, stage: StageId, hash: u64) -> bool {
        match self.pending.entry((stage, hash)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Vec::new());
                true
            }
        }
    }

    /// The leader is done (stored or not): wake the waiters.
    pub fn done(&mut self, stage: StageId, hash: u64) {
        if let Some(waiters) = self.pending.remove(&(stage, hash)) {
            for w in waiters {
                w.wake();
            }
        }
    }

    /// Polled by a waiting request: ready once the leader is done.
    pub fn poll_done(
        &mut self,
        stage: StageId,
        hash: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.pending.get_mut(&(stage, hash)) {
            None => std::task::Poll::Ready(()),
            Some(w) => {
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                std::task::Poll::Pending
            }
        }
    }
}

/// The largest response stored (AWS: 1,048,576 bytes).
pub const MAX_CACHED_BODY: u64 = 1024 * 1024;

/// A miss to store, once the upstream answers: the stage's cache, the key, the TTL.
#[derive(Debug)]
pub struct Fill {
    /// The plan's shared cache state (its address): a response that arrives after
    /// the worker switched plans is not stored.
    pub owner: usize,
    pub stage: crate::ids::StageId,
    pub route: usize,
    pub key: Vec<u8>,
    pub ttl_ms: u64,
}

/// Builds the key of a request: the route's config digest (entries of a route a
/// reload changed are never served), method (HEAD is served from GET's entry),
/// path, then each configured parameter's value (missing and empty differ).
#[allow(clippy::too_many_arguments)]
pub fn build_key(
    out: &mut Vec<u8>,
    sig: u64,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &[httparse::Header<'_>],
    m: &crate::route::RouteMatch<'_, '_>,
    params: &[KeyParam],
) {
    out.clear();
    out.extend_from_slice(&sig.to_le_bytes());
    out.extend_from_slice(if method == "HEAD" {
        b"GET"
    } else {
        method.as_bytes()
    });
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    for p in params {
        let (tag, value): (u8, Option<&[u8]>) = match p {
            KeyParam::Query(n) => (
                b'q',
                query.and_then(|q| {
                    q.split('&')
                        .find_map(|kv| match kv.split_once('=') {
                            Some((k, v)) if k == &**n => Some(v),
                            None if kv == &**n => Some(""),
                            _ => None,
                        })
                        .map(str::as_bytes)
                }),
            ),
            KeyParam::Header(n) => (
                b'h',
                headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| h.value),
            ),
            KeyParam::Path(n) => (b'p', m.param(n).map(str::as_bytes)),
        };
        out.push(b'\n');
        out.push(tag);
        match value {
            Some(v) => {
                out.push(b'=');
                out.extend_from_slice(v);
            }
            None => out.push(b'!'),
        }
    }
}

/// The values of the request headers `names` (`\n`-separated, lower case) names,
/// each as `value\n` (`!\n` when absent), into `out`.
pub fn vary_values(names: &[u8], headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    out.clear();
    for name in names.split(|&b| b == b'\n').filter(|n| !n.is_empty()) {
        match headers
            .iter()
            .find(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
        {
            Some(h) => {
                out.push(b'=');
                out.extend_from_slice(h.value);
            }
            None => out.push(b'!'),
        }
        out.push(b'\n');
    }
}

/// Whether `entry` was stored for a request with the same `Vary` header values.
pub fn vary_matches(entry: &Entry, headers: &[httparse::Header<'_>]) -> bool {
    let Some(v) = &entry.vary else {
        return true;
    };
    let mut mine = Vec::with_capacity(v.values.len());
    vary_values(&v.names, headers, &mut mine);
    *mine == *v.values
}

/// `Cache-Control: max-age=0` on the request: refetch and replace.
pub fn wants_refresh(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cache-control"))
        .any(|h| crate::http::parse::tokens(h.value).any(|d| d.eq_ignore_ascii_case(b"max-age=0")))
}

/// An entry's body as a write buffer: written from the entry itself, no copy.
pub struct BodyBuf(pub Rc<Entry>);

// SAFETY: the body is a boxed slice owned by the entry, which the Rc keeps alive and
// unmoved for as long as the buffer exists; it is fully initialised.
unsafe impl monoio::buf::IoBuf for BodyBuf {
    fn read_ptr(&self) -> *const u8 {
        self.0.body.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.body.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParam {
    Query(Box<str>),
    /// Lower case.
    Header(Box<str>),
    Path(Box<str>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, body: usize, expires_ms: u64) -> Entry {
        Entry {
            key: key.as_bytes().into(),
            head: Box::new(*b"content-length: 0\r\n\r\n"),
            body: vec![b'x'; body].into(),
            stored_s: 0,
            expires_ms,
            vary: None,
        }
    }

    #[test]
    fn hits_expire_and_keys_are_compared_whole() {
        let mut c = Cache::new(1 << 20);
        assert!(c.insert(entry("GET /a", 10, 1_000)));
        assert!(matches!(c.get(b"GET /a", 999), Lookup::Hit(_)));
        assert!(matches!(c.get(b"GET /b", 999), Lookup::Miss));
        assert!(matches!(c.get(b"GET /a", 1_000), Lookup::Miss), "expired");
        assert!(c.is_empty(), "an expired entry is dropped on read");
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let one = entry("k0", 1000, u64::MAX).cost();
        let mut c = Cache::new(3 * one);
        for k in ["k0", "k1", "k2"] {
            assert!(c.insert(entry(k, 1000, u64::MAX)));
        }
        // k0 is used, so k1 is now the oldest.
        assert!(matches!(c.get(b"k0", 0), Lookup::Hit(_)));
        assert!(c.insert(entry("k3", 1000, u64::MAX)));
        assert!(matches!(c.get(b"k1", 0), Lookup::Miss));
        for k in ["k0", "k2", "k3"] {
            assert!(matches!(c.get(k.as_bytes(), 0), Lookup::Hit(_)), "{k}");
        }
        assert!(c.used() <= 3 * one);
        // Replacing a key does not grow the cache; too large an entry is refused.
        assert!(c.insert(entry("k3", 1000, u64::MAX)));
        assert_eq!(c.len(), 3);
        assert!(!c.insert(entry("huge", 4 * one, u64::MAX)));
        assert!(c.remove(b"k3"));
        assert!(!c.remove(b"k3"));
        c.clear();
        assert!(c.is_empty() && c.used() == 0);
    }
}
