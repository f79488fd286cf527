//! WebSocket connections of this process, for the `@connections` API: which
//! worker holds each (by connection id), when it connected and was last active,
//! who it is; and each worker's mailbox of commands (send a message, close) for
//! the connections it holds. A call landing on any worker reaches the holder
//! through the holder's inbox (no lock on the request path: a `DashMap` lookup
//! and a channel send).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::Waker;

pub use crate::upstream::inbox::Command;
use crate::upstream::inbox::Inbox;

/// One open connection.
pub struct Entry {
    pub api: String,
    pub stage: String,
    /// The holding worker's inbox, and the connection's number there.
    pub inbox: Arc<Inbox>,
    pub local: u64,
    pub connected_at_ms: u64,
    pub last_active_ms: AtomicU64,
    pub source_ip: String,
    pub user_agent: String,
}

impl Entry {
    pub fn touch(&self) {
        self.last_active_ms
            .store(crate::clock::unix_ms(), Ordering::Relaxed);
    }
}

/// The process's open connections, by id.
pub static CONNECTIONS: LazyLock<dashmap::DashMap<String, Arc<Entry>>> =
    LazyLock::new(dashmap::DashMap::new);

/// Removes a connection from `CONNECTIONS` when it ends.
pub struct Registered(pub String);

impl Drop for Registered {
    fn drop(&mut self) {
        CONNECTIONS.remove(&self.0);
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
