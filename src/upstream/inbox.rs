//! A worker's inbox: what other threads hand it (function outcomes, commands for
//! its WebSocket connections), and the socket pair that wakes it, rung once per
//! batch.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// How an invocation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The runtime's response payload.
    Response(Vec<u8>),
    /// The function failed: its error document (and error type header).
    Error(Vec<u8>),
    /// The function ran past its timeout (its runtime was restarted).
    Timeout,
    /// The invocation could not be run (the function stopped; its runtime died
    /// with it in hand).
    Lost(&'static str),
    /// Another node's answer to an `@connections` call: status and JSON body.
    Answer(u16, Vec<u8>),
}

/// What `@connections` may ask of a WebSocket connection.
#[derive(Debug)]
pub enum Command {
    /// Send this text message.
    Send(Vec<u8>),
    /// Close the connection (`DeleteConnection`).
    Close,
}

/// A worker's inbox: outcomes from any host thread, and a socket pair rung when
/// the first of a batch arrives.
pub struct Inbox {
    tx: Sender<(u64, Outcome)>,
    rx: Receiver<(u64, Outcome)>,
    /// Commands for this worker's WebSocket connections, by their number.
    ws_tx: Sender<(u64, Command)>,
    ws_rx: Receiver<(u64, Command)>,
    bell: std::os::unix::net::UnixStream,
    rung: AtomicBool,
}

impl Inbox {
    /// The inbox and the socket its worker reads to wake.
    pub fn new() -> std::io::Result<(Arc<Self>, std::os::unix::net::UnixStream)> {
        let (bell, wake) = std::os::unix::net::UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ws_tx, ws_rx) = crossbeam_channel::unbounded();
        Ok((
            Arc::new(Self {
                tx,
                rx,
                ws_tx,
                ws_rx,
                bell,
                rung: AtomicBool::new(false),
            }),
            wake,
        ))
    }

    /// A command for the worker's connection `n`.
    pub fn command(&self, n: u64, c: Command) {
        let _ = self.ws_tx.send((n, c));
        self.ring();
    }

    pub(crate) fn deliver(&self, token: u64, o: Outcome) {
        let _ = self.tx.send((token, o));
        self.ring();
    }

    /// Wakes the worker (its outcomes, and its runtimes waiting for a job).
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            // A full socket buffer means the worker has wake-ups unread anyway.
            let _ = (&self.bell).write(&[1]);
        }
    }

    /// Hands every delivered outcome to `f` and every command to `g` (the
    /// worker, after its bell rang).
    pub fn drain(&self, mut f: impl FnMut(u64, Outcome), mut g: impl FnMut(u64, Command)) {
        self.rung.store(false, Ordering::SeqCst);
        while let Ok((t, o)) = self.rx.try_recv() {
            f(t, o);
        }
        while let Ok((n, c)) = self.ws_rx.try_recv() {
            g(n, c);
        }
    }
}
