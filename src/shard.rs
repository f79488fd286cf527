//! Per-core state. Each worker builds and owns one `Shard`; its connections share it
//! through `Rc` on that thread only, so nothing here needs a lock.

use std::cell::{Cell, RefCell};

use crate::clock::DateCache;
use crate::plan::PoolLimits;
use crate::upstream::pool::Pool;

pub struct Shard {
    pub id: usize,
    pub pool: RefCell<Pool>,
    /// Requests whose head was read and whose response is not yet complete.
    pub in_flight: Cell<usize>,
    /// Set on SIGTERM: finish what is in flight, answer with `Connection: close`.
    pub draining: Cell<bool>,
    pub date: RefCell<DateCache>,
    next_request: Cell<u64>,
    id_seed: u32,
}

/// A request id: 16 URL-safe base64 characters, unique per process start, worker and
/// request (AWS's `apigw-requestid` is a short opaque token of the same kind).
pub type RequestId = [u8; 16];

impl Shard {
    pub fn new(id: usize, pool_limits: PoolLimits, id_seed: u32) -> Self {
        Self {
            id,
            pool: RefCell::new(Pool::new(pool_limits)),
            in_flight: Cell::new(0),
            draining: Cell::new(false),
            date: RefCell::new(DateCache::default()),
            next_request: Cell::new(0),
            id_seed,
        }
    }

    /// `persist`, unless a drain has begun: then the response closes the connection.
    pub fn persist(&self, persist: crate::respond::Persist) -> crate::respond::Persist {
        if self.draining.get() {
            crate::respond::Persist::Close
        } else {
            persist
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
        let s = Shard::new(3, PoolLimits::default(), 0xdead_beef);
        let a = s.next_request_id();
        let b = s.next_request_id();
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'));
    }
}
