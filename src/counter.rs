//! A counter one thread writes and any thread reads: per-worker metrics, and the
//! few counts the layers below `observe` keep for it.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// As a gauge: the writer sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
}
