//! WebSocket connections of this process, for the `@connections` API: which
//! worker holds each (by connection id), when it connected and was last active,
//! who it is; and each worker's mailbox of commands (send a message, close) for
//! the connections it holds. A call landing on any worker reaches the holder
//! through the holder's inbox (no lock on the request path: a `DashMap` lookup
//! and a channel send).
//!
//! Across nodes (cluster mode): a connection id starts with its node's tag
//! (`NODE_TAG`, random per process); a call for another node's connection goes
//! to the cluster relay (`RELAY`, a control-plane thread that carries it through
//! Redis to the node subscribed under that tag) and its answer comes back to the
//! calling worker's inbox.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::task::Waker;

use base64::Engine;

use crate::upstream::function::Reply;
pub use crate::upstream::inbox::Command;
use crate::upstream::inbox::Inbox;

/// This process's tag, the first three bytes of each of its connection ids.
pub static NODE_TAG: LazyLock<[u8; 3]> = LazyLock::new(|| {
    let mut t = [0u8; 3];
    if getrandom::fill(&mut t).is_err() {
        t.copy_from_slice(&crate::clock::unix_ns().to_le_bytes()[..3]);
    }
    t
});

/// An unguessable connection id, unique across workers and nodes: this node's
/// tag and 96 random bits, URL-safe base64 (it goes into `@connections` paths).
pub fn new_id() -> String {
    Id::new().as_str().to_owned()
}

/// A connection id as the registry keys it: its 20 characters, inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Id([u8; 20]);

impl Id {
    /// A new id (`new_id`).
    #[allow(clippy::new_without_default)] // Each is different: not a default.
    pub fn new() -> Self {
        let mut b = [0u8; 15];
        b[..3].copy_from_slice(&*NODE_TAG);
        if getrandom::fill(&mut b[3..]).is_err() {
            b[3..11].copy_from_slice(&crate::clock::unix_ns().to_le_bytes());
        }
        let mut id = [b'A'; 20];
        // 15 bytes are 20 characters of unpadded base64, always.
        let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_slice(b, &mut id);
        Self(id)
    }

    /// The id a caller named, if it can be one of ours (20 characters).
    pub fn parse(s: &str) -> Option<Self> {
        s.as_bytes().try_into().ok().map(Self)
    }

    pub fn as_str(&self) -> &str {
        // Base64 from `new` or a `&str`'s bytes from `parse`: UTF-8 either way.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// The node tag a connection id names (`None`: not an id of ours).
pub fn tag_of(id: &str) -> Option<[u8; 3]> {
    let head = id.get(..4)?;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()?;
    b.try_into().ok()
}

/// A tag as the relay's channel names it.
pub fn tag_hex(t: &[u8; 3]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `@connections` asks of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `PostToConnection`: send this message.
    Post(Vec<u8>),
    /// `GetConnection`.
    Get,
    /// `DeleteConnection`.
    Delete,
}

/// A call for a connection another node holds, for the cluster relay.
pub struct Remote {
    pub tag: [u8; 3],
    pub api: String,
    pub stage: String,
    pub id: String,
    pub op: Op,
    /// Where the answer goes (`Outcome::Answer`).
    pub reply: Reply,
}

/// The cluster relay's queue (set once, in cluster mode).
pub static RELAY: OnceLock<crossbeam_channel::Sender<Remote>> = OnceLock::new();

/// Carries out a call for a connection of this process: its status and JSON
/// body, `None` when the stage has no such connection (`GoneException`).
/// `deliver` hands a command to the holding worker.
pub fn carry_out(
    api: &str,
    stage: &str,
    id: &str,
    op: Op,
    deliver: impl FnOnce(&Entry, Command),
) -> Option<(u16, Vec<u8>)> {
    let entry = CONNECTIONS
        .get(&Id::parse(id)?)
        .map(|e| Arc::clone(&e))
        .filter(|e| e.scope.split_once('\n') == Some((api, stage)))?;
    Some(match op {
        Op::Post(data) => {
            deliver(&entry, Command::Send(data));
            (200, Vec::new())
        }
        Op::Get => {
            let last = entry.last_active_ms.load(Ordering::Relaxed);
            let context: serde_json::Value =
                serde_json::from_str(&format!("{{{}}}", entry.context)).unwrap_or_default();
            let identity = |k: &str| context["identity"][k].as_str().unwrap_or("").to_owned();
            let body = serde_json::json!({
                "connectedAt": iso8601(entry.connected_at_ms),
                "identity": { "sourceIp": identity("sourceIp"), "userAgent": identity("userAgent") },
                "lastActiveAt": iso8601(last),
            });
            (200, body.to_string().into_bytes())
        }
        Op::Delete => {
            deliver(&entry, Command::Close);
            (204, Vec::new())
        }
    })
}

/// `2024-01-20T11:54:57.419Z`.
fn iso8601(ms: u64) -> String {
    let c = crate::clock::Civil::of((ms / 1000) as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        ms % 1000
    )
}

/// An API's and a stage's names as one string (shared by the stage's
/// connections).
pub fn scope(api: &str, stage: &str) -> String {
    format!("{api}\n{stage}")
}

/// One open connection.
pub struct Entry {
    /// Its API and stage (`scope`).
    pub scope: Arc<str>,
    /// The holding worker's inbox, and the connection's number there.
    pub inbox: Arc<Inbox>,
    pub local: u64,
    pub connected_at_ms: u64,
    pub last_active_ms: AtomicU64,
    /// The connection's `requestContext` fields as JSON, without the braces
    /// (shared with its events): `GetConnection`'s identity is read from it.
    pub context: Arc<str>,
}

impl Entry {
    pub fn touch(&self) {
        self.last_active_ms
            .store(crate::clock::unix_ms(), Ordering::Relaxed);
    }
}

/// The process's open connections, by id.
pub static CONNECTIONS: LazyLock<dashmap::DashMap<Id, Arc<Entry>>> =
    LazyLock::new(dashmap::DashMap::new);

/// Takes a connection out of `CONNECTIONS` (when it ends).
pub fn unregister(id: &Id) {
    CONNECTIONS.remove(id);
}

/// Values in reused slots, each known by a key: its slot and the slot's
/// generation (bumped when a value comes and when it goes), so a key kept after
/// its value was removed finds nothing, not the slot's next holder. A vacant
/// slot holds `T::default()`. After a burst, `trim` gives back the room it left.
pub struct Slots<T> {
    slots: Vec<(u32, T)>,
    free: Vec<u32>,
    /// At least every generation a trimmed slot had (even, as a vacant slot's
    /// is): a slot made again starts there, so a key kept from before the trim
    /// cannot match its new holder.
    floor: u32,
    /// The most values kept at once since the last `trim` call.
    peak: usize,
    /// `trim` calls in a row that found at most half the slots used.
    quiet: u32,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            floor: 0,
            peak: 0,
            quiet: 0,
        }
    }
}

impl<T: Default> Slots<T> {
    /// Keeps `v`: its key.
    pub fn insert(&mut self, v: T) -> u64 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((self.floor, T::default()));
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[i as usize];
        s.0 = s.0.wrapping_add(1);
        s.1 = v;
        let key = u64::from(s.0) << 32 | u64::from(i);
        self.peak = self.peak.max(self.len());
        key
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        self.slots
            .get_mut(key as u32 as usize)
            .filter(|s| s.0 == (key >> 32) as u32)
            .map(|s| &mut s.1)
    }

    /// Takes the value out; its slot is free for the next `insert`.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let s = self
            .slots
            .get_mut(key as u32 as usize)
            .filter(|s| s.0 == (key >> 32) as u32)?;
        s.0 = s.0.wrapping_add(1);
        self.free.push(key as u32);
        Some(std::mem::take(&mut s.1))
    }

    /// How many values it keeps.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Called at a steady pace (the worker's tick): when at most half the
    /// slots were used at once over the last `QUIET` calls (a burst has passed;
    /// a steady load, or a lull within a burst, keeps its room), drops the
    /// vacant slots at the end and gives the spare room back to the
    /// allocator. Whether it did.
    pub fn trim(&mut self) -> bool {
        /// A second of the worker's 100 ms ticks. Shorter, a lull in a burst
        /// (requests waiting on their upstream) trims what the burst's end
        /// grows again at once: with mimalloc, that new block can land in a
        /// large page among the burst's freed blocks and hold all of it.
        const QUIET: u32 = 10;
        let len = self.len();
        let peak = std::mem::replace(&mut self.peak, len);
        if peak * 2 >= self.slots.len() {
            self.quiet = 0;
            return false;
        }
        self.quiet = self.quiet.saturating_add(1);
        if self.quiet < QUIET {
            return false;
        }
        // A vacant slot's generation is even (bumped once as a value comes,
        // once as it goes; `floor` is even).
        let keep = self
            .slots
            .iter()
            .rposition(|s| s.0 % 2 == 1)
            .map_or(0, |i| i + 1);
        if keep == self.slots.len() && self.slots.capacity() == keep {
            return false;
        }
        for s in &self.slots[keep..] {
            self.floor = self.floor.max(s.0);
        }
        self.slots.truncate(keep);
        self.free.retain(|&i| (i as usize) < keep);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        true
    }

    /// Every slot (vacant ones hold the default) with its key.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .map(|(i, s)| (u64::from(s.0) << 32 | i as u64, &mut s.1))
    }
}

/// A connection's mailbox: its task's waker, and the commands not yet carried
/// out (boxed: most connections have none most of the time).
#[derive(Default)]
struct Mailbox {
    waker: Option<Waker>,
    #[allow(clippy::box_collection)] // 8 bytes in every slot, not 32.
    queue: Option<Box<VecDeque<Command>>>,
}

/// A worker's connections' mailboxes (single-threaded: the worker's), in slots
/// reused as connections come and go: a connection's number is its slot's key,
/// so a command for a connection gone since finds no one.
#[derive(Default)]
pub struct Mailboxes {
    slots: RefCell<Slots<Mailbox>>,
}

impl Mailboxes {
    /// A mailbox for a new connection: its number.
    pub fn open(&self) -> u64 {
        self.slots.borrow_mut().insert(Mailbox::default())
    }

    pub fn close(&self, n: u64) {
        self.slots.borrow_mut().remove(n);
    }

    /// Gives back the room a burst of connections left (`Slots::trim`).
    pub fn trim(&self) -> bool {
        self.slots.borrow_mut().trim()
    }

    /// Files a command for connection `n` and wakes it.
    pub fn post(&self, n: u64, c: Command) {
        if let Some(m) = self.slots.borrow_mut().get_mut(n) {
            m.queue.get_or_insert_with(Default::default).push_back(c);
            if let Some(w) = m.waker.take() {
                w.wake();
            }
        }
    }

    /// The next command for `n`, or `None` (and `waker` is woken on the next).
    pub fn take(&self, n: u64, waker: &Waker) -> Option<Command> {
        let mut slots = self.slots.borrow_mut();
        let m = slots.get_mut(n)?;
        let c = m.queue.as_mut().and_then(|q| q.pop_front());
        match &c {
            Some(_) => {
                if m.queue.as_ref().is_some_and(|q| q.is_empty()) {
                    m.queue = None;
                }
            }
            None => {
                if !m.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    m.waker = Some(waker.clone());
                }
            }
        }
        c
    }

    /// `waker` is woken on the next command for `n`: `false` if one waits already.
    pub fn watch(&self, n: u64, waker: Waker) -> bool {
        let mut slots = self.slots.borrow_mut();
        let Some(m) = slots.get_mut(n) else {
            return true;
        };
        if m.queue.is_some() {
            return false;
        }
        m.waker = Some(waker);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    /// Calls `trim` (at most 30 times) until it trims: how many calls it took.
    fn calls_to_trim(s: &mut Slots<u32>) -> Option<usize> {
        (1..=30).find(|_| s.trim())
    }

    #[test]
    fn a_burst_is_trimmed_and_its_keys_never_match_again() {
        let mut s = Slots::<u32>::default();
        let keys: Vec<u64> = (0..1000).map(|v| s.insert(v)).collect();
        assert_eq!(
            calls_to_trim(&mut s),
            None,
            "nothing vacant: nothing to trim"
        );
        // A lull: most go, and come back before a second of calls.
        let mut t = Slots::<u32>::default();
        let lull: Vec<u64> = (0..1000).map(|v| t.insert(v)).collect();
        for &k in &lull[2..] {
            t.remove(k);
        }
        assert!((0..9).all(|_| !t.trim()), "trimmed in a lull");
        for v in 2..1000 {
            t.insert(v);
        }
        assert!((0..30).all(|_| !t.trim()) && t.slots.len() == 1000);
        // The burst ends: all but the first two and one in the middle go.
        for (i, &k) in keys.iter().enumerate() {
            if i >= 2 && i != 500 {
                assert_eq!(s.remove(k), Some(i as u32));
            }
        }
        assert_eq!(s.len(), 3);
        // One call sees the burst's peak, then ten quiet ones.
        assert_eq!(calls_to_trim(&mut s), Some(11));
        assert!(s.slots.len() == 501 && s.slots.capacity() == 501);
        assert!(s.free.iter().all(|&i| i < 501) && s.free.len() == 498);
        assert!(!s.trim(), "once is enough");
        for &k in &keys[..2] {
            assert!(s.get_mut(k).is_some(), "a kept value keeps its key");
        }
        assert_eq!(s.get_mut(keys[500]).copied(), Some(500));
        // Slots made again where trimmed ones were: old keys find nothing.
        let again: Vec<u64> = (0..1000).map(|v| s.insert(v + 5000)).collect();
        for &k in &keys[501..] {
            assert!(s.get_mut(k).is_none(), "a stale key matched a new holder");
        }
        assert_eq!(s.len(), 1003);
        for (v, k) in again.into_iter().enumerate() {
            assert_eq!(s.remove(k), Some(v as u32 + 5000));
        }
        // Everything vacant: everything goes.
        for &k in &keys[..2] {
            s.remove(k);
        }
        s.remove(keys[500]);
        assert_eq!(calls_to_trim(&mut s), Some(11));
        assert!(s.is_empty() && s.slots.capacity() == 0 && s.free.capacity() == 0);
    }
}
