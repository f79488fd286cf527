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
use std::collections::{HashMap, VecDeque};
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
    let mut b = [0u8; 15];
    b[..3].copy_from_slice(&*NODE_TAG);
    if getrandom::fill(&mut b[3..]).is_err() {
        b[3..11].copy_from_slice(&crate::clock::unix_ns().to_le_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
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
        .get(id)
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
pub static CONNECTIONS: LazyLock<dashmap::DashMap<Arc<str>, Arc<Entry>>> =
    LazyLock::new(dashmap::DashMap::new);

/// Removes a connection from `CONNECTIONS` when it ends.
pub struct Registered(pub Arc<str>);

impl Drop for Registered {
    fn drop(&mut self) {
        CONNECTIONS.remove(&*self.0);
    }
}

/// A connection's commands not yet carried out, and its task's waker.
type Mailbox = (VecDeque<Command>, Option<Waker>);

/// A worker's connections' mailboxes (single-threaded: the worker's).
#[derive(Default)]
pub struct Mailboxes {
    boxes: RefCell<HashMap<u64, Mailbox>>,
    next: std::cell::Cell<u64>,
}

impl Mailboxes {
    /// A mailbox for a new connection: its number.
    pub fn open(&self) -> u64 {
        let n = self.next.get() + 1;
        self.next.set(n);
        self.boxes.borrow_mut().insert(n, (VecDeque::new(), None));
        n
    }

    pub fn close(&self, n: u64) {
        self.boxes.borrow_mut().remove(&n);
    }

    /// Files a command for connection `n` and wakes it.
    pub fn post(&self, n: u64, c: Command) {
        if let Some((q, w)) = self.boxes.borrow_mut().get_mut(&n) {
            q.push_back(c);
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// The next command for `n`, or `None` (and `waker` is woken on the next).
    pub fn take(&self, n: u64, waker: &Waker) -> Option<Command> {
        let mut boxes = self.boxes.borrow_mut();
        let (q, w) = boxes.get_mut(&n)?;
        let c = q.pop_front();
        if c.is_none() {
            *w = Some(waker.clone());
        }
        c
    }
}
