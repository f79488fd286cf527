//! API keys on the request path: an immutable [`Keyring`] snapshot, looked up by the
//! SHA-256 of the `x-api-key` header, that ties each key to the stages of its usage
//! plans and to its own buckets and quota.
//!
//! The control plane (`crate::control::registry`) builds a new keyring on every change and
//! publishes it in [`Live`]; each worker picks it up on its next tick (100 ms) and
//! swaps it between requests, so a change reaches every core within a tick and the
//! request path never takes a lock. The shared state a key's limits need (its token
//! buckets and quota) lives in [`Binding`]s that survive rebuilds, so a change to
//! one key neither refills nor resets another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
#[allow(clippy::disallowed_types)]
// Not on the request path: the registry publishes keyrings; workers pick them up on their tick, not per request.
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::encode::ct_eq;
use crate::ids::{RouteId, Slot, StageId};
use crate::policy::quota::Quota;
use crate::policy::throttle::SharedBucket;

pub type KeyHash = [u8; 32];

pub fn hash(value: &[u8]) -> KeyHash {
    Sha256::digest(value).into()
}

/// A key's own token bucket.
#[derive(Debug)]
pub struct Bucket {
    pub slot: Slot,
    pub shared: Arc<SharedBucket>,
}

/// One API key in one usage plan: the plan's per-key limits, with this key's state.
#[derive(Debug)]
pub struct Binding {
    pub key_id: Arc<str>,
    pub plan: Arc<str>,
    /// The plan's `throttle`, for this key over all the plan's stages.
    pub throttle: Option<Bucket>,
    /// The plan's per-route throttles, for this key.
    pub routes: Box<[(StageId, RouteId, Bucket)]>,
    /// The plan's quota, for this key over all the plan's stages.
    pub quota: Option<(Slot, Arc<Quota>)>,
}

impl Binding {
    pub fn route_throttle(&self, stage: StageId, route: RouteId) -> Option<&Bucket> {
        self.routes
            .iter()
            .find(|(s, r, _)| *s == stage && *r == route)
            .map(|(_, _, b)| b)
    }
}

pub use crate::http::error::KeyRefusal;

#[derive(Debug)]
pub struct KeyView {
    pub hash: KeyHash,
    pub enabled: bool,
    /// The stages this key may call, each with its plan (one plan per stage).
    pub stages: Box<[(StageId, Arc<Binding>)]>,
}

/// Every API key, by the hash of its value.
#[derive(Debug, Default)]
pub struct Keyring {
    /// The plan generation whose stage and route ids the bindings use.
    pub generation: u64,
    by_hash: HashMap<KeyHash, KeyView, rustc_hash::FxBuildHasher>,
}

impl Keyring {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            generation: 0,
            by_hash: HashMap::with_capacity_and_hasher(n, rustc_hash::FxBuildHasher),
        }
    }

    /// Adds a key; `false` if a key with the same value is already there.
    pub fn insert(&mut self, view: KeyView) -> bool {
        if self.by_hash.contains_key(&view.hash) {
            return false;
        }
        self.by_hash.insert(view.hash, view);
        true
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks the request's `x-api-key` for `stage`; on success, the key's binding
    /// to the usage plan that covers the stage.
    pub fn check(
        &self,
        headers: &[httparse::Header<'_>],
        stage: StageId,
    ) -> Result<&Binding, KeyRefusal> {
        let value = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("x-api-key"))
            .map(|h| h.value)
            .filter(|v| !v.is_empty())
            .ok_or(KeyRefusal::Missing)?;
        self.by_hash(&hash(value), stage)
    }

    /// The binding for `stage` of the key whose value hashes to `h` (a
    /// WebSocket connection's key, checked again for each message).
    pub fn by_hash(&self, h: &KeyHash, stage: StageId) -> Result<&Binding, KeyRefusal> {
        let view = self
            .by_hash
            .get(h)
            .filter(|v| ct_eq(&v.hash, h))
            .ok_or(KeyRefusal::Unknown)?;
        if !view.enabled {
            return Err(KeyRefusal::Disabled);
        }
        view.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, b)| &**b)
            .ok_or(KeyRefusal::NotInPlan)
    }
}

/// The keyring the workers should use, and how the workers tell the store that a
/// quota changed. Shared by the control plane and every worker.
#[derive(Debug, Default)]
pub struct Live {
    version: AtomicU64,
    #[allow(clippy::disallowed_types)]
    // Not on the request path: the registry publishes keyrings; workers pick them up on their tick, not per request.
    ring: Mutex<Arc<Keyring>>,
    /// The store's writer thread, woken when a worker takes a quota lease.
    writer: OnceLock<std::thread::Thread>,
    /// Some quota changed since the writer last looked (set by workers on a lease
    /// or a tick that counted requests), so an idle gateway scans nothing.
    usage_dirty: std::sync::atomic::AtomicBool,
    /// The keyring version each worker uses (0: not started).
    seen: Box<[AtomicU64]>,
    /// Cluster mode with `on_unavailable: fail_closed`, Redis unreachable: keyed
    /// and throttled routes answer 503 (set by the cluster sync thread).
    closed: std::sync::atomic::AtomicBool,
}

impl Live {
    pub fn new(workers: usize) -> Self {
        Self {
            seen: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Publishes a new keyring; workers switch to it on their next tick. Returns
    /// its version.
    pub fn publish(&self, ring: Keyring) -> u64 {
        let ring = Arc::new(ring);
        *crate::lock(&self.ring) = ring;
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Refuses (or admits again) keyed and throttled routes: the shared state is
    /// out of reach and the config says `fail_closed`.
    pub fn set_closed(&self, closed: bool) {
        self.closed.store(closed, Ordering::Release);
    }

    /// Whether keyed and throttled routes are refused now (a relaxed load of a
    /// line that changes only when Redis comes or goes).
    #[inline]
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Worker `w` now uses keyring `version`.
    pub fn saw(&self, w: usize, version: u64) {
        if let Some(s) = self.seen.get(w) {
            s.store(version, Ordering::Release);
        }
    }

    /// Waits until every running worker uses `version` or later (at most `within`),
    /// so that a management call answers only once its change is live everywhere.
    /// `false` if some worker did not switch in time.
    pub fn wait_seen(&self, version: u64, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let behind = self.seen.iter().any(|s| {
                let v = s.load(Ordering::Acquire);
                v != 0 && v < version
            });
            if !behind {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current keyring (a worker's tick, when `version` moved; never per request).
    pub fn current(&self) -> (u64, Arc<Keyring>) {
        // Under the lock, so the version and the ring match.
        let g = crate::lock(&self.ring);
        (self.version(), Arc::clone(&g))
    }

    pub fn set_writer(&self, t: std::thread::Thread) {
        let _ = self.writer.set(t);
    }

    /// A worker took a quota lease: wake the store's writer to save it (a futex wake
    /// at most once per lease, not per request).
    pub fn lease_taken(&self) {
        self.usage_changed();
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// Requests were counted: the writer has something to save.
    pub fn usage_changed(&self) {
        if !self.usage_dirty.load(Ordering::Relaxed) {
            self.usage_dirty.store(true, Ordering::Release);
        }
    }

    /// Takes the "something changed" mark (the writer, before it scans).
    pub fn take_usage_changed(&self) -> bool {
        self.usage_dirty.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::throttle::Limit;

    fn binding(rate: f64) -> Arc<Binding> {
        Arc::new(Binding {
            key_id: "k".into(),
            plan: "p".into(),
            throttle: Some(Bucket {
                slot: Slot { index: 0, gen: 1 },
                shared: Arc::new(SharedBucket::new(Limit { rate, burst: 1 }, 1)),
            }),
            routes: Box::default(),
            quota: None,
        })
    }

    fn ring() -> Keyring {
        let mut t = Keyring::default();
        assert!(t.insert(KeyView {
            hash: hash(b"alice-key"),
            enabled: true,
            stages: Box::new([(1, binding(7.0))]),
        }));
        assert!(t.insert(KeyView {
            hash: hash(b"bob-key"),
            enabled: false,
            stages: Box::new([(1, binding(1.0))]),
        }));
        assert!(!t.insert(KeyView {
            hash: hash(b"alice-key"),
            enabled: true,
            stages: Box::default(),
        }));
        t
    }

    fn header<'a>(name: &'a str, value: &'a [u8]) -> [httparse::Header<'a>; 1] {
        [httparse::Header { name, value }]
    }

    #[test]
    fn keys_are_checked_by_hash_state_and_stage() {
        let t = ring();
        let rate = |r: Result<&Binding, KeyRefusal>| {
            r.map(|b| b.throttle.as_ref().map(|t| t.shared.limit.rate))
        };
        assert_eq!(
            rate(t.check(&header("X-Api-Key", b"alice-key"), 1)),
            Ok(Some(7.0))
        );
        assert_eq!(
            rate(t.check(&header("x-api-key", b"alice-key"), 2)),
            Err(KeyRefusal::NotInPlan)
        );
        assert_eq!(
            rate(t.check(&header("x-api-key", b"bob-key"), 1)),
            Err(KeyRefusal::Disabled)
        );
        assert_eq!(
            rate(t.check(&header("x-api-key", b"nope"), 1)),
            Err(KeyRefusal::Unknown)
        );
        assert_eq!(
            rate(t.check(&header("x-api-key", b""), 1)),
            Err(KeyRefusal::Missing)
        );
        assert_eq!(
            rate(t.check(&header("accept", b"*/*"), 1)),
            Err(KeyRefusal::Missing)
        );
    }

    #[test]
    fn published_rings_are_versioned() {
        let live = Live::default();
        let (v0, r0) = live.current();
        assert!(r0.is_empty());
        live.publish(ring());
        let (v1, r1) = live.current();
        assert!(v1 > v0);
        assert_eq!(r1.len(), 2);
    }
}
