//! Functions run next to the gateway (`functions[]`): what the workers share of
//! each (its queue, its Runtime API sockets, which workers have runtimes waiting),
//! the processes started for it, and each worker's inbox.
//!
//! The Runtime API is served by the workers themselves (`proxy::runtime_api`):
//! every worker listens on the function's `runtime_api` address (`SO_REUSEPORT`),
//! so each runtime's connection belongs to one worker. An invocation goes to a
//! runtime of its own worker when one is waiting (no other thread involved);
//! otherwise to the function's bounded queue, and a worker with a waiting
//! runtime is rung. Outcomes for another worker go to that worker's `Inbox` (a
//! channel and a socket pair rung once per batch). No worker blocks or locks on
//! the request path; the supervisor thread (processes, restarts) may lock.
#![allow(clippy::disallowed_types)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

pub use crate::upstream::inbox::{Inbox, Outcome};

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

    /// The token, when the reply goes to `calls` (the worker at hand): it is
    /// then filed there directly, not through the inbox.
    pub fn local_token(&mut self, calls: &Calls) -> Option<u64> {
        Arc::ptr_eq(&self.inbox, &calls.inbox).then(|| {
            self.sent = true;
            self.token
        })
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

    /// Files the outcomes the bell announced and wakes their requests; hands
    /// the connection commands to `commands`.
    pub fn dispatch(&self, commands: impl FnMut(u64, crate::upstream::inbox::Command)) {
        self.inbox.drain(|token, o| self.fulfil(token, o), commands);
    }

    /// Files an outcome and wakes the request waiting for it.
    pub fn fulfil(&self, token: u64, o: Outcome) {
        if let Some(slot) = self.waiting.borrow_mut().get_mut(&token) {
            slot.0 = Some(o);
            if let Some(w) = slot.1.take() {
                w.wake();
            }
        }
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

/// A runtime waiting for a job on its worker (single-threaded: the worker's).
#[derive(Default)]
pub struct Idle {
    job: RefCell<Option<Job>>,
    /// Rung: look at the function's queue again.
    woken: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Idle {
    /// Hands the runtime a job of its own worker.
    pub fn give(&self, job: Job) {
        *self.job.borrow_mut() = Some(job);
        self.wake();
    }

    /// Tells the runtime to look at the function's queue again.
    pub fn ring(&self) {
        self.woken.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// A job handed over (`Some`), or rung (`None`).
    pub fn poll_job(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<Job>> {
        if let Some(j) = self.job.borrow_mut().take() {
            return Poll::Ready(Some(j));
        }
        if self.woken.get() {
            return Poll::Ready(None);
        }
        self.waker.set(Some(cx.waker().clone()));
        Poll::Pending
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

/// A function as the workers share it.
pub struct Function {
    pub spec: FunctionSpec,
    jobs: Sender<Job>,
    queued: Receiver<Job>,
    shared: Arc<Shared>,
    started: AtomicBool,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Each worker's Runtime API socket until the worker takes it.
    listeners: Mutex<Vec<Option<TcpListener>>>,
    /// The sockets' descriptors, shut down on stop so the workers' accepts end.
    fds: Mutex<Vec<i32>>,
    /// Each worker's inbox, set when it starts serving the function.
    inboxes: Box<[OnceLock<Arc<Inbox>>]>,
    /// Each worker's runtimes waiting for a job.
    idle: Box<[AtomicU32]>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// What the supervisor thread shares with the function.
struct Shared {
    spec: FunctionSpec,
    /// Invocations a runtime took, by request id: its answer may come on any
    /// of its connections, on any worker.
    pending: dashmap::DashMap<String, Pending>,
    /// The runtime ends of connections waiting in `next` for a job: their
    /// processes are idle (a timed-out invocation is another's).
    waiting: dashmap::DashSet<SocketAddr>,
    stop: AtomicBool,
    stats: Arc<FunctionStats>,
    /// Peers whose runtime must be restarted (a timeout), for the supervisor.
    kill: Mutex<Vec<SocketAddr>>,
}

/// An invocation a runtime took.
struct Pending {
    reply: Reply,
    deadline: Instant,
    /// The connection it was sent on (the runtime to restart on a timeout).
    peer: SocketAddr,
}

impl Function {
    pub fn new(spec: FunctionSpec, workers: usize) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::bounded(spec.queue.max(1));
        let workers = workers.max(1);
        Arc::new(Self {
            shared: Arc::new(Shared {
                spec: spec.clone(),
                pending: dashmap::DashMap::new(),
                waiting: dashmap::DashSet::new(),
                stop: AtomicBool::new(false),
                stats: Arc::new(FunctionStats::default()),
                kill: Mutex::new(Vec::new()),
            }),
            spec,
            jobs: tx,
            queued: rx,
            started: AtomicBool::new(false),
            supervisor: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
            fds: Mutex::new(Vec::new()),
            inboxes: (0..workers).map(|_| OnceLock::new()).collect(),
            idle: (0..workers).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    pub fn stats(&self) -> &FunctionStats {
        &self.shared.stats
    }

    pub fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Queues an invocation for any worker's runtime and rings a worker that
    /// has one waiting; `Err` (the job back) when the queue is full.
    /// (The caller counts the invocation: `count_invocation`.)
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        if let Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) = self.jobs.try_send(job)
        {
            self.shared.stats.throttles.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(j));
        }
        // After the job is queued (a runtime that goes idle after this load
        // finds it in the queue).
        if let Some(w) = self.idle.iter().position(|n| n.load(Ordering::SeqCst) > 0) {
            if let Some(inbox) = self.inboxes[w].get() {
                inbox.ring();
            }
        }
        Ok(())
    }

    pub fn count_invocation(&self) {
        self.shared
            .stats
            .invocations
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// A job from the queue.
    pub fn take_job(&self) -> Option<Job> {
        self.queued.try_recv().ok()
    }

    /// Puts back a job whose runtime went away before it was sent.
    pub fn requeue(&self, job: Job) {
        if let Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) = self.jobs.try_send(job)
        {
            j.reply
                .send(Outcome::Lost("the function's runtime went away"));
        }
    }

    /// A runtime of `worker` starts (`true`) or stops waiting for a job.
    pub fn idle(&self, worker: usize, waiting: bool) {
        if let Some(n) = self.idle.get(worker) {
            if waiting {
                n.fetch_add(1, Ordering::SeqCst);
            } else {
                n.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Worker `worker` serves the function: its Runtime API socket (once), and
    /// where to ring it.
    pub fn serve(&self, worker: usize, inbox: &Arc<Inbox>) -> Option<TcpListener> {
        if let Some(slot) = self.inboxes.get(worker) {
            let _ = slot.set(Arc::clone(inbox));
        }
        crate::lock(&self.listeners)
            .get_mut(worker)
            .and_then(Option::take)
    }

    /// A runtime took invocation `id` on its connection `peer`; past `deadline`
    /// the supervisor answers it and restarts that runtime.
    pub fn hold(&self, id: String, reply: Reply, deadline: Instant, peer: SocketAddr) {
        self.shared.pending.insert(
            id,
            Pending {
                reply,
                deadline,
                peer,
            },
        );
    }

    /// A runtime's connection `peer` starts (`true`) or stops waiting in `next`.
    pub fn polling(&self, peer: SocketAddr, waiting: bool) {
        if waiting {
            self.shared.waiting.insert(peer);
        } else {
            self.shared.waiting.remove(&peer);
        }
    }

    /// The reply of invocation `id`, if it is still awaited.
    pub fn release(&self, id: &str) -> Option<Reply> {
        self.shared.pending.remove(id).map(|(_, p)| p.reply)
    }

    pub fn count_error(&self) {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Opens the Runtime API (one `SO_REUSEPORT` socket per worker) and starts
    /// the processes (once; a second call does nothing).
    pub fn start(&self) -> std::io::Result<()> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // A reload that replaced this function's predecessor on the same address:
        // its sockets close within a few tens of milliseconds.
        let mut bound = self.bind_all();
        let until = Instant::now() + Duration::from_secs(2);
        while bound.is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            bound = self.bind_all();
        }
        let sockets = bound.map_err(|e| {
            self.started.store(false, Ordering::SeqCst);
            std::io::Error::new(
                e.kind(),
                format!(
                    "function {:?}: cannot listen on runtime_api {}: {e}",
                    self.spec.name, self.spec.runtime_api
                ),
            )
        })?;
        {
            use std::os::fd::AsRawFd;
            *crate::lock(&self.fds) = sockets.iter().map(|l| l.as_raw_fd()).collect();
        }
        *crate::lock(&self.listeners) = sockets.into_iter().map(Some).collect();
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

    fn bind_all(&self) -> std::io::Result<Vec<TcpListener>> {
        let addr = self.spec.runtime_api;
        (0..self.idle.len())
            .map(|_| crate::reuseport_listener(addr, 1024))
            .collect()
    }

    /// Stops the processes and the Runtime API; invocations still queued are
    /// answered as lost.
    pub fn stop(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for fd in crate::lock(&self.fds).drain(..) {
            // SAFETY: a listening socket this function owns (held by a worker or
            // by `listeners`); shutting it down ends the worker's accept.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        crate::lock(&self.listeners).clear();
        // Runtimes waiting for a job see the stop.
        for inbox in self.inboxes.iter().filter_map(OnceLock::get) {
            inbox.ring();
        }
        while let Ok(job) = self.queued.try_recv() {
            job.reply.send(Outcome::Lost("the function stopped"));
        }
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

/// A process of the function and when it may next be started.
struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    not_before: Instant,
}

/// Keeps `concurrency` processes running (restarting one that exits, with
/// backoff), kills the runtime of an invocation that timed out (it is then
/// restarted), and stops everything when the function stops.
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
        // Timeouts.
        let now = Instant::now();
        let expired: Vec<String> = s
            .pending
            .iter()
            .filter(|p| p.deadline <= now)
            .map(|p| p.key().clone())
            .collect();
        for id in expired {
            if let Some((_, p)) = s.pending.remove(&id) {
                tracing::warn!(function = %s.spec.name, request_id = %id, timeout_ms = s.spec.timeout.as_millis() as u64, "function timed out; restarting its runtime");
                s.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                p.reply.send(Outcome::Timeout);
                crate::lock(&s.kill).push(p.peer);
            }
        }
        let kill: Vec<SocketAddr> = std::mem::take(&mut *crate::lock(&s.kill));
        for peer in kill {
            let children: Vec<&Child> = slots
                .iter()
                .filter_map(|slot| slot.child.as_ref())
                .collect();
            // The process holding the connection the invocation went out on; a
            // runtime client that closed that connection (curl may) is found as
            // the one process not waiting in `next`.
            let holder = children.iter().find(|c| owns_socket(c.id(), peer)).copied();
            let holder = holder.or_else(|| {
                let busy: Vec<&Child> = children
                    .iter()
                    .filter(|c| !s.waiting.iter().any(|w| owns_socket(c.id(), *w)))
                    .copied()
                    .collect();
                (busy.len() == 1).then(|| busy[0])
            });
            match holder {
                Some(c) => kill_group(c),
                None if !children.is_empty() => tracing::warn!(
                    function = %s.spec.name, %peer,
                    "cannot tell which runtime process holds the timed-out invocation; none restarted"
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
    let ids: Vec<String> = s.pending.iter().map(|p| p.key().clone()).collect();
    for id in ids {
        if let Some((_, p)) = s.pending.remove(&id) {
            p.reply.send(Outcome::Lost("the function stopped"));
        }
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
