//! Each worker's keep-alive pool of upstream connections: bounded idle per upstream,
//! idle timeout, most recently used first (the warmest connection is the least likely
//! to have been closed by the upstream).

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::http::stream::Stream;

/// An upstream connection with its own read buffer (kept across requests so a
/// pooled request allocates nothing).
pub struct UpConn {
    pub stream: Stream,
    pub buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pub pos: usize,
    /// The target's open-connection count over all workers (a group target's).
    open: Option<Arc<Conns>>,
}

/// A pooled connection idle this long is checked before reuse (`Pool::take`).
const CHECK_IDLE: Duration = Duration::from_millis(100);

/// Initial capacity of an upstream read buffer: one read takes a typical small
/// response head and body.
pub const UPSTREAM_BUF: usize = 16 * 1024;

thread_local! {
    /// Upstream connections this thread opened and closed: the open-connection
    /// gauge of its worker (published each tick).
    static OPENED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static CLOSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Upstream connections open on this thread now (pooled or carrying a request).
pub fn open_here() -> u64 {
    OPENED.get().saturating_sub(CLOSED.get())
}

impl Drop for UpConn {
    fn drop(&mut self) {
        CLOSED.set(CLOSED.get() + 1);
        if let Some(c) = &self.open {
            c.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl UpConn {
    pub fn new(stream: Stream, open: Option<Arc<Conns>>) -> Self {
        OPENED.set(OPENED.get() + 1);
        if let Some(c) = &open {
            c.open.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            stream,
            buf: Vec::with_capacity(UPSTREAM_BUF),
            pos: 0,
            open,
        }
    }
}

struct Idle {
    conn: UpConn,
    since: Instant,
}

pub struct Pool {
    // Fx, not SipHash: keys are our own upstream addresses, hashed on every request.
    idle: FxHashMap<PoolKey, VecDeque<Idle>>,
    limits: PoolLimits,
    /// New upstream connections opened by this worker (a counter for metrics).
    pub connects: u64,
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            idle: FxHashMap::default(),
            limits,
            connects: 0,
        }
    }

    /// Closes the idle connections to one upstream.
    pub fn close_idle(&mut self, key: &PoolKey) {
        self.idle.remove(key);
    }

    /// Idle connections kept to one upstream.
    pub fn idle_of(&self, key: &PoolKey) -> usize {
        self.idle.get(key).map_or(0, VecDeque::len)
    }

    /// Idle connections kept, over all upstreams.
    pub fn idle(&self) -> usize {
        self.idle.values().map(VecDeque::len).sum()
    }

    /// The most recently returned live connection to `addr`, dropping expired ones
    /// and those the upstream closed while they idled.
    pub fn take(&mut self, addr: PoolKey, now: Instant) -> Option<UpConn> {
        let list = self.idle.get_mut(&addr)?;
        // Oldest at the front: drop the expired ones.
        while list
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= self.limits.idle_timeout)
        {
            list.pop_front();
        }
        while let Some(i) = list.pop_back() {
            // One that idled a while is checked first (a system call): servers
            // close idle connections after their own timeout (Node's 5 s, Apache's
            // 5 s, against this pool's 30 s), and a request sent on one is lost
            // (502) unless it can be retried. One back within `CHECK_IDLE` (under
            // load, all of them) goes straight back to work.
            if now.duration_since(i.since) < CHECK_IDLE || i.conn.stream.quiet() {
                return Some(i.conn);
            }
            tracing::debug!("pooled upstream connection closed while idle; dropped");
        }
        None
    }

    /// Closes the idle connections past the idle timeout (the worker's tick): after
    /// a burst the pool shrinks back, so sockets are not held for upstreams no
    /// request reuses.
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.limits.idle_timeout;
        self.idle.retain(|_, list| {
            while list
                .front()
                .is_some_and(|i| now.duration_since(i.since) >= timeout)
            {
                list.pop_front();
            }
            !list.is_empty()
        });
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&mut self, addr: PoolKey, mut conn: UpConn, now: Instant) {
        if conn.pos < conn.buf.len() || conn.stream.has_buffered() {
            // The upstream sent bytes past the response: the stream is out of step.
            return;
        }
        conn.buf.clear();
        conn.pos = 0;
        let list = self.idle.entry(addr).or_default();
        if list.len() >= self.limits.max_idle_per_upstream {
            list.pop_front();
        }
        list.push_back(Idle { conn, since: now });
    }
}

/// Bounds of each worker's upstream connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Idle connections kept per upstream address per core: enough for 1,000
    /// concurrent requests per core without reconnects (load-tests/compare.sh's
    /// c1000 scenario churned connections at 256), while bounding the file
    /// descriptors one upstream can pin.
    pub max_idle_per_upstream: usize,
    /// An idle connection older than this is closed instead of reused: below
    /// nginx's 75 s keep-alive default, so the upstream rarely closes first; a
    /// connection it did close is retried once for idempotent requests.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_idle_per_upstream: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Which pooled connections can carry a request: same address, same TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    /// 0: plain TCP; otherwise one id per distinct upstream TLS config and name.
    pub tls: u32,
}

/// A target's connections over all workers.
#[derive(Debug, Default)]
pub struct Conns {
    pub open: AtomicU32,
    /// A request waits at the connection cap: workers close their idle
    /// connections to the target at their next tick, to make room.
    pub starved: AtomicBool,
}
