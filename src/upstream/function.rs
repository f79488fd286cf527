//! Functions run next to the gateway (`functions[]`): the Lambda Runtime API their
//! runtime clients poll (`awslambdaric`, `aws-lambda-ric`, `lambda_runtime`, a
//! container's bootstrap), the processes started for them, and the queue
//! invocations wait in.
//!
//! The hot path only hands a `Job` to the function's bounded channel (`submit`,
//! never blocking) and awaits its `Outcome` in this worker's `Calls`: the host's
//! threads deliver outcomes to the worker's `Inbox` (a channel and a socket pair
//! rung once per batch), so no worker ever blocks or takes a lock. The host (the
//! Runtime API's connection threads, the supervisor and its watchdog) is control
//! plane: it may lock.
#![allow(clippy::disallowed_types)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// The largest response or error a runtime may post (Lambda's 6 MB).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
const ACCOUNT: &str = "000000000000";

/// A function as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime_api: SocketAddr,
    pub command: Vec<String>,
    pub concurrency: u32,
    /// From when a runtime takes an invocation.
    pub timeout: Duration,
    pub environment: BTreeMap<String, String>,
    pub memory_mb: u32,
    /// Invocations that may wait for a runtime.
    pub queue: usize,
    pub working_dir: PathBuf,
    pub region: String,
}

impl FunctionSpec {
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:{ACCOUNT}:function:{}",
            self.region, self.name
        )
    }
}

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
}

/// Where an outcome goes: a worker's inbox and the waiting request's token.
pub struct Reply {
    inbox: Arc<Inbox>,
    token: u64,
    sent: bool,
}

impl Reply {
    pub fn send(mut self, o: Outcome) {
        self.sent = true;
        self.inbox.deliver(self.token, o);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.inbox
                .deliver(self.token, Outcome::Lost("the invocation was dropped"));
        }
    }
}

/// One invocation.
pub struct Job {
    /// The request id (`Lambda-Runtime-Aws-Request-Id`).
    pub id: String,
    pub event: Vec<u8>,
    pub trace: Option<String>,
    pub reply: Reply,
    /// When its caller gives up: a runtime that takes it later does not run it.
    pub give_up: Instant,
}

/// A worker's inbox: outcomes from any host thread, and a socket pair rung when
/// the first of a batch arrives.
pub struct Inbox {
    tx: Sender<(u64, Outcome)>,
    rx: Receiver<(u64, Outcome)>,
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
        Ok((
            Arc::new(Self {
                tx,
                rx,
                bell,
                rung: AtomicBool::new(false),
            }),
            wake,
        ))
    }

    fn deliver(&self, token: u64, o: Outcome) {
        let _ = self.tx.send((token, o));
        if !self.rung.swap(true, Ordering::SeqCst) {
            // A full socket buffer means the worker has wake-ups unread anyway.
            let _ = (&self.bell).write(&[1]);
        }
    }

    /// Hands every delivered outcome to `f` (the worker, after its bell rang).
    pub fn drain(&self, mut f: impl FnMut(u64, Outcome)) {
        self.rung.store(false, Ordering::SeqCst);
        while let Ok((t, o)) = self.rx.try_recv() {
            f(t, o);
        }
    }
}

/// An invocation's outcome once delivered, and the request waiting for it.
type Waiting = (Option<Outcome>, Option<Waker>);

/// A worker's invocations in flight, by token.
pub struct Calls {
    pub inbox: Arc<Inbox>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    next: Cell<u64>,
}

impl Calls {
    pub fn new(inbox: Arc<Inbox>) -> Self {
        Self {
            inbox,
            waiting: RefCell::new(HashMap::new()),
            next: Cell::new(1),
        }
    }

    /// A reply for a new invocation, and the token to `wait` on.
    pub fn reply(&self) -> (Reply, u64) {
        let token = self.next.get();
        self.next.set(token + 1);
        self.waiting.borrow_mut().insert(token, (None, None));
        (
            Reply {
                inbox: Arc::clone(&self.inbox),
                token,
                sent: false,
            },
            token,
        )
    }

    /// Forgets a token whose job was never queued.
    pub fn cancel(&self, token: u64) {
        self.waiting.borrow_mut().remove(&token);
    }

    /// Files the outcomes the bell announced and wakes their requests.
    pub fn dispatch(&self) {
        self.inbox.drain(|token, o| {
            if let Some(slot) = self.waiting.borrow_mut().get_mut(&token) {
                slot.0 = Some(o);
                if let Some(w) = slot.1.take() {
                    w.wake();
                }
            }
        });
    }

    /// The outcome of `token`'s invocation, or `None` after `limit`.
    pub async fn wait(&self, token: u64, limit: Duration) -> Option<Outcome> {
        struct Forget<'a>(&'a Calls, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.waiting.borrow_mut().remove(&self.1);
            }
        }
        let _forget = Forget(self, token);
        let done = std::future::poll_fn(|cx| {
            let mut w = self.waiting.borrow_mut();
            let Some(slot) = w.get_mut(&token) else {
                return Poll::Ready(Outcome::Lost("unknown invocation"));
            };
            match slot.0.take() {
                Some(o) => Poll::Ready(o),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        monoio::time::timeout(limit, done).await.ok()
    }
}

/// Counters of a function, for `/metrics` and the admin API.
#[derive(Debug, Default)]
pub struct FunctionStats {
    pub invocations: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub throttles: AtomicU64,
    pub restarts: AtomicU64,
}

/// A function: its queue, and (once started) its Runtime API and processes.
pub struct Function {
    pub spec: FunctionSpec,
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    started: AtomicBool,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// What the host's threads share.
struct Shared {
    spec: FunctionSpec,
    jobs: Receiver<Job>,
    /// A job taken from the queue whose runtime vanished before it was sent:
    /// run first.
    retry: Sender<Job>,
    retried: Receiver<Job>,
    pending: Mutex<HashMap<String, Pending>>,
    stop: AtomicBool,
    stats: Arc<FunctionStats>,
    /// Peers whose runtime must be restarted (a timeout), for the supervisor.
    kill: Mutex<Vec<SocketAddr>>,
}

struct Pending {
    reply: Reply,
    deadline: Instant,
    peer: SocketAddr,
}

impl Function {
    pub fn new(spec: FunctionSpec) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::bounded(spec.queue.max(1));
        let (retry, retried) = crossbeam_channel::unbounded();
        Arc::new(Self {
            shared: Arc::new(Shared {
                spec: spec.clone(),
                jobs: rx,
                retry,
                retried,
                pending: Mutex::new(HashMap::new()),
                stop: AtomicBool::new(false),
                stats: Arc::new(FunctionStats::default()),
                kill: Mutex::new(Vec::new()),
            }),
            spec,
            jobs: tx,
            started: AtomicBool::new(false),
            supervisor: Mutex::new(None),
        })
    }

    pub fn stats(&self) -> &FunctionStats {
        &self.shared.stats
    }

    /// Queues an invocation; `Err` (the job back) when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.shared
            .stats
            .invocations
            .fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.shared.stats.throttles.fetch_add(1, Ordering::Relaxed);
                Err(Box::new(j))
            }
        }
    }

    /// Opens the Runtime API and starts the processes (once; a second call does
    /// nothing).
    pub fn start(&self) -> std::io::Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // A reload that replaced this function's predecessor on the same address:
        // its listener closes within a few tens of milliseconds.
        let mut bound = TcpListener::bind(self.spec.runtime_api);
        let until = Instant::now() + Duration::from_secs(2);
        while bound.is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            bound = TcpListener::bind(self.spec.runtime_api);
        }
        let listener = bound.map_err(|e| {
            self.started.store(false, Ordering::SeqCst);
            std::io::Error::new(
                e.kind(),
                format!(
                    "function {:?}: cannot listen on runtime_api {}: {e}",
                    self.spec.name, self.spec.runtime_api
                ),
            )
        })?;
        listener.set_nonblocking(true)?;
        let s = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name(format!("fn-{}-api", self.spec.name))
            .spawn(move || accept_loop(&s, &listener))?;
        let s = Arc::clone(&self.shared);
        let h = std::thread::Builder::new()
            .name(format!("fn-{}", self.spec.name))
            .spawn(move || supervise(&s))?;
        *crate::lock(&self.supervisor) = Some(h);
        tracing::info!(
            function = %self.spec.name,
            runtime_api = %self.spec.runtime_api,
            processes = if self.spec.command.is_empty() { 0 } else { self.spec.concurrency },
            "function started"
        );
        Ok(())
    }

    /// Stops the processes and the Runtime API; invocations waiting are answered
    /// as lost.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Stops and waits until the processes are gone.
    pub fn shutdown(&self) {
        self.stop();
        if let Some(h) = crate::lock(&self.supervisor).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(s: &Arc<Shared>, listener: &TcpListener) {
    while !s.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, peer)) => {
                let s = Arc::clone(s);
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_nodelay(true);
                let spawned = std::thread::Builder::new()
                    .name(format!("fn-{}-rt", s.spec.name))
                    .spawn(move || serve_runtime(&s, conn, peer));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot serve a runtime connection");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(function = %s.spec.name, error = %e, "runtime API accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Whatever is still queued is answered, not left to time out.
    while let Ok(job) = s.jobs.try_recv() {
        job.reply.send(Outcome::Lost("the function stopped"));
    }
}

/// One request of a runtime client.
struct RuntimeRequest {
    method: String,
    path: String,
    body: Vec<u8>,
    error_type: Option<String>,
}

/// Reads one request (head and `Content-Length` body); `None` when the connection
/// closed, failed, or the function is stopping.
fn read_request(
    s: &Shared,
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<RuntimeRequest> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(buf) {
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if len > MAX_PAYLOAD + 1024 {
                return None;
            }
            let error_type = req
                .headers
                .iter()
                .find(|h| {
                    h.name
                        .eq_ignore_ascii_case("lambda-runtime-function-error-type")
                })
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            let (method, path) = (
                req.method.unwrap_or("").to_owned(),
                req.path.unwrap_or("").to_owned(),
            );
            while buf.len() < n + len {
                match conn.read(chunk) {
                    Ok(0) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(e) if is_timeout(&e) && !s.stop.load(Ordering::Relaxed) => {}
                    Err(_) => return None,
                }
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Some(RuntimeRequest {
                method,
                path,
                body,
                error_type,
            });
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        match conn.read(chunk) {
            Ok(0) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if is_timeout(&e) && !s.stop.load(Ordering::Relaxed) => {}
            Err(_) => return None,
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn write_response(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        _ => "Error",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (n, v) in headers {
        out.push_str(n);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    conn.write_all(&bytes)
}

/// True when the peer closed its end (a runtime that died while polling).
fn peer_closed(conn: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    let _ = conn.set_nonblocking(true);
    let closed = matches!(conn.peek(&mut b), Ok(0));
    let _ = conn.set_nonblocking(false);
    closed
}

/// Serves one runtime client's connection: `next` long-polls the queue; the
/// invocation's `response` or `error` goes to the waiting worker.
fn serve_runtime(s: &Shared, mut conn: TcpStream, peer: SocketAddr) {
    // Reads wake at least this often to see a stop.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    const PREFIX: &str = "/2018-06-01/runtime/";
    while let Some(req) = read_request(s, &mut conn, &mut buf, &mut chunk) {
        let path = req.path.split('?').next().unwrap_or("");
        let Some(rest) = path.strip_prefix(PREFIX) else {
            let _ = write_response(
                &mut conn,
                404,
                &[],
                br#"{"errorMessage":"not found","errorType":"NotFound"}"#,
            );
            continue;
        };
        let ok = match (req.method.as_str(), rest) {
            ("GET", "invocation/next") => next(s, &mut conn, peer),
            ("POST", "init/error") => {
                tracing::warn!(
                    function = %s.spec.name,
                    error_type = req.error_type.as_deref().unwrap_or("-"),
                    error = %String::from_utf8_lossy(&req.body),
                    "function init failed"
                );
                write_response(&mut conn, 202, &[], br#"{"status":"OK"}"#).is_ok()
            }
            ("POST", r) => match r
                .strip_prefix("invocation/")
                .and_then(|r| r.rsplit_once('/'))
            {
                Some((id, kind @ ("response" | "error"))) => {
                    finish(s, &mut conn, id, kind == "response", req.body)
                }
                _ => write_response(
                    &mut conn,
                    404,
                    &[],
                    br#"{"errorMessage":"not found","errorType":"NotFound"}"#,
                )
                .is_ok(),
            },
            _ => write_response(
                &mut conn,
                404,
                &[],
                br#"{"errorMessage":"not found","errorType":"NotFound"}"#,
            )
            .is_ok(),
        };
        if !ok {
            return;
        }
    }
}

/// `GET .../invocation/next`: waits for a job and sends it.
fn next(s: &Shared, conn: &mut TcpStream, peer: SocketAddr) -> bool {
    let job = loop {
        if s.stop.load(Ordering::Relaxed) {
            return false;
        }
        let got = s
            .retried
            .try_recv()
            .or_else(|_| s.jobs.recv_timeout(Duration::from_millis(200)));
        match got {
            Ok(job) if Instant::now() >= job.give_up => {
                job.reply.send(Outcome::Timeout);
            }
            Ok(job) => break job,
            Err(_) if peer_closed(conn) => return false,
            Err(_) => {}
        }
    };
    let deadline = Instant::now() + s.spec.timeout;
    let deadline_ms = crate::clock::unix_ms() + s.spec.timeout.as_millis() as u64;
    let arn = s.spec.arn();
    let deadline_text = deadline_ms.to_string();
    let mut headers: Vec<(&str, &str)> = vec![
        ("lambda-runtime-aws-request-id", &job.id),
        ("lambda-runtime-deadline-ms", &deadline_text),
        ("lambda-runtime-invoked-function-arn", &arn),
    ];
    if let Some(t) = &job.trace {
        headers.push(("lambda-runtime-trace-id", t));
    }
    if let Err(e) = write_response(conn, 200, &headers, &job.event) {
        // The runtime went away with the job unsent: the next one runs it.
        tracing::debug!(function = %s.spec.name, error = %e, "runtime gone before its invocation");
        let _ = s.retry.send(job);
        return false;
    }
    let id = job.id.clone();
    crate::lock(&s.pending).insert(
        id,
        Pending {
            reply: job.reply,
            deadline,
            peer,
        },
    );
    true
}

/// `POST .../invocation/{id}/response` or `/error`.
fn finish(s: &Shared, conn: &mut TcpStream, id: &str, response: bool, body: Vec<u8>) -> bool {
    let Some(p) = crate::lock(&s.pending).remove(id) else {
        return write_response(
            conn,
            400,
            &[],
            br#"{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}"#,
        )
        .is_ok();
    };
    if body.len() > MAX_PAYLOAD {
        s.stats.errors.fetch_add(1, Ordering::Relaxed);
        p.reply.send(Outcome::Error(
            br#"{"errorMessage":"Response payload size exceeded maximum allowed payload size (6291556 bytes).","errorType":"Function.ResponseSizeTooLarge"}"#.to_vec(),
        ));
        return write_response(
            conn,
            413,
            &[],
            br#"{"errorMessage":"Exceeded maximum allowed payload size (6291556 bytes).","errorType":"RequestEntityTooLarge"}"#,
        )
        .is_ok();
    }
    if response {
        p.reply.send(Outcome::Response(body));
    } else {
        s.stats.errors.fetch_add(1, Ordering::Relaxed);
        p.reply.send(Outcome::Error(body));
    }
    write_response(conn, 202, &[], br#"{"status":"OK"}"#).is_ok()
}

/// A process of the function and when it may next be started.
struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    not_before: Instant,
}

/// Keeps `concurrency` processes running (restarting one that exits, with
/// backoff), times out invocations (restarting the runtime that holds one), and
/// stops everything when the function stops.
fn supervise(s: &Shared) {
    let mut slots: Vec<Slot> = if s.spec.command.is_empty() {
        Vec::new()
    } else {
        (0..s.spec.concurrency.max(1))
            .map(|_| Slot {
                child: None,
                started: Instant::now(),
                backoff: Duration::from_millis(100),
                not_before: Instant::now(),
            })
            .collect()
    };
    while !s.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Timeouts.
        let expired: Vec<(String, Pending)> = {
            let mut pending = crate::lock(&s.pending);
            let ids: Vec<String> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        for (id, p) in expired {
            tracing::warn!(function = %s.spec.name, request_id = %id, timeout_ms = s.spec.timeout.as_millis() as u64, "function timed out; restarting its runtime");
            s.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            p.reply.send(Outcome::Timeout);
            crate::lock(&s.kill).push(p.peer);
        }
        let kill: Vec<SocketAddr> = std::mem::take(&mut *crate::lock(&s.kill));
        for peer in kill {
            let holder = slots
                .iter()
                .filter_map(|slot| slot.child.as_ref())
                .find(|c| owns_socket(c.id(), peer));
            match holder {
                Some(c) => kill_group(c),
                None if !slots.is_empty() => tracing::warn!(
                    function = %s.spec.name, %peer,
                    "no runtime process holds the timed-out invocation's connection; none restarted"
                ),
                None => {}
            }
        }
        for slot in &mut slots {
            if let Some(c) = &mut slot.child {
                match c.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        tracing::warn!(function = %s.spec.name, pid = c.id(), %status, "function process exited; restarting it");
                    }
                    Err(e) => {
                        tracing::warn!(function = %s.spec.name, error = %e, "cannot check a function process");
                    }
                }
                slot.child = None;
                orphans(s);
                // Backoff doubles while processes die young, and resets after
                // one ran 10 s.
                slot.backoff = if slot.started.elapsed() > Duration::from_secs(10) {
                    Duration::from_millis(100)
                } else {
                    (slot.backoff * 2).min(Duration::from_secs(10))
                };
                slot.not_before = Instant::now() + slot.backoff;
                s.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
            if slot.child.is_none() && Instant::now() >= slot.not_before {
                match spawn(&s.spec) {
                    Ok(c) => {
                        slot.child = Some(c);
                        slot.started = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(function = %s.spec.name, error = %e, command = ?s.spec.command, "cannot start the function");
                        slot.backoff = (slot.backoff * 2).min(Duration::from_secs(10));
                        slot.not_before = Instant::now() + slot.backoff;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in &mut slots {
        if let Some(c) = &mut slot.child {
            kill_group(c);
            let _ = c.wait();
        }
    }
    let pending: Vec<Pending> = crate::lock(&s.pending).drain().map(|(_, p)| p).collect();
    for p in pending {
        p.reply.send(Outcome::Lost("the function stopped"));
    }
}

/// Answers the invocations whose runtime's socket is gone (its process exited
/// with them in hand) instead of letting them time out.
fn orphans(s: &Shared) {
    let gone: Vec<Pending> = {
        let mut pending = crate::lock(&s.pending);
        let ids: Vec<String> = pending
            .iter()
            .filter(|(_, p)| matches!(socket_inode(p.peer), None | Some(0)))
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter().filter_map(|id| pending.remove(id)).collect()
    };
    for p in gone {
        s.stats.errors.fetch_add(1, Ordering::Relaxed);
        p.reply.send(Outcome::Lost("the function's runtime exited"));
    }
}

fn spawn(spec: &FunctionSpec) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .current_dir(&spec.working_dir)
        .env("AWS_LAMBDA_RUNTIME_API", spec.runtime_api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            spec.memory_mb.to_string(),
        )
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", spec.name),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "shardgate")
        .env("AWS_REGION", &spec.region)
        .env("AWS_DEFAULT_REGION", &spec.region)
        .env("AWS_EXECUTION_ENV", "shardgate")
        .env("LAMBDA_TASK_ROOT", &spec.working_dir)
        .envs(&spec.environment)
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; the child dies with the supervisor
    // thread that started it (a gateway killed with -9 leaves no runtimes).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

fn kill_group(c: &Child) {
    // SAFETY: signals the process group the child leads.
    unsafe {
        libc::kill(-(c.id() as i32), libc::SIGKILL);
    }
}

/// Whether process `pid` (or a process of its group) holds the TCP socket whose
/// local address is `peer` (the runtime end of a Runtime API connection).
fn owns_socket(pid: u32, peer: SocketAddr) -> bool {
    let Some(inode) = socket_inode(peer) else {
        return false;
    };
    let target = format!("socket:[{inode}]");
    let mut pids = vec![pid];
    // The group's other members (a shell that started the runtime, say).
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if p == pid {
                continue;
            }
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                // pid (comm) state ppid pgrp ...
                let after = stat.rsplit_once(") ").map_or("", |x| x.1);
                if after.split(' ').nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(pid) {
                    pids.push(p);
                }
            }
        }
    }
    pids.into_iter().any(|p| {
        std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(target.as_str()))
            })
        })
    })
}

/// The inode of the local TCP socket bound to `addr`, from `/proc/net/tcp{,6}`.
fn socket_inode(addr: SocketAddr) -> Option<u64> {
    let (file, local) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let mut s = String::new();
            for w in o.chunks(4) {
                s.push_str(&format!(
                    "{:08X}",
                    u32::from_le_bytes([w[0], w[1], w[2], w[3]])
                ));
            }
            ("/proc/net/tcp6", format!("{s}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str()))
            .then(|| cols.get(9)?.parse().ok())
            .flatten()
    })
}
