//! Worker threads: one per core, pinned, each a monoio runtime owning its `Shard` and
//! accepting on its own `SO_REUSEPORT` listener sockets.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::config::RuntimeKind;
use crate::plan::Plan;
use crate::proxy::shard::Shard;

/// Which monoio driver `runtime: auto` picks. epoll: on the 2-core VMs measured for
/// `tuning/drivers.md`, io_uring (its ring set up as `uring_runtime` does) costs the
/// same CPU per proxied request, with a higher p99 and locked memory to raise.
pub const AUTO_DRIVER: RuntimeKind = RuntimeKind::Epoll;

/// Listen backlog per socket; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Every worker's listener sockets: `sockets[worker][listener]`.
pub struct Sockets {
    pub sockets: Vec<Vec<std::net::TcpListener>>,
    /// The address each listener is bound to (port resolved when the config said 0).
    pub bound: Vec<SocketAddr>,
}

/// Binds `workers` `SO_REUSEPORT` sockets per listener. A listener bound to port 0
/// gets one port from the kernel, shared by all its workers' sockets.
pub fn bind_all(plan: &Plan) -> std::io::Result<Sockets> {
    let mut sockets: Vec<Vec<std::net::TcpListener>> =
        (0..plan.workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for lp in &plan.listeners {
        let mut addr = lp.bind;
        for per_worker in sockets.iter_mut() {
            let s = reuseport_socket(addr)?;
            if addr.port() == 0 {
                addr = s.local_addr()?;
            }
            per_worker.push(s);
        }
        bound.push(addr);
    }
    Ok(Sockets { sockets, bound })
}

/// `workers` sockets for one listener added by a reload, and the address bound.
pub fn bind_listener(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let s = reuseport_socket(addr)?;
        if addr.port() == 0 {
            addr = s.local_addr()?;
        }
        out.push(s);
    }
    Ok((addr, out))
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    crate::reuseport_listener(addr, BACKLOG)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))
}

/// A new plan for a worker, with the listener sockets it starts and the names of
/// those it stops accepting on. Built by the control plane (`reload`); the worker
/// applies it on its tick, between requests.
pub struct Swap {
    pub plan: Arc<Plan>,
    pub open: Vec<(String, std::net::TcpListener)>,
    pub close: Vec<String>,
}

/// What the control plane keeps to reach the workers and stop them.
pub struct Workers {
    pub handles: Vec<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    /// One channel per worker: new plans.
    pub swaps: Vec<crossbeam_channel::Sender<Swap>>,
    /// The plan generation each worker runs.
    pub running: Arc<[AtomicU64]>,
}

impl Workers {
    /// Stops accepting everywhere and lets the workers drain: each worker, on its
    /// next tick, shuts its listening sockets down (which wakes blocked accepts on
    /// both drivers) and waits for what is in flight.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
    }

    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}

pub fn start(plan: Arc<Plan>, sockets: Sockets) -> std::io::Result<Workers> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let shutdown = Arc::new(AtomicBool::new(false));
    // Request ids differ across restarts: the seed mixes the pid and the start time.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let running: Arc<[AtomicU64]> = (0..sockets.sockets.len())
        .map(|_| AtomicU64::new(plan.generation))
        .collect();
    let mut handles = Vec::new();
    let mut swaps = Vec::new();
    for (id, listeners) in sockets.sockets.into_iter().enumerate() {
        let named: Vec<(String, std::net::TcpListener)> = plan
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .zip(listeners)
            .collect();
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let (tx, rx) = crossbeam_channel::unbounded();
        swaps.push(tx);
        let ctl = Control {
            shutdown: Arc::clone(&shutdown),
            swaps: rx,
            running: Arc::clone(&running),
            seed,
        };
        let plan = Arc::clone(&plan);
        let h = std::thread::Builder::new()
            .name(format!("shardgate-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, core.map(|c| c.id), plan, named, ctl);
            })?;
        handles.push(h);
    }
    Ok(Workers {
        handles,
        shutdown,
        swaps,
        running,
    })
}

/// What a worker reads of the control plane, on its tick.
struct Control {
    shutdown: Arc<AtomicBool>,
    swaps: crossbeam_channel::Receiver<Swap>,
    running: Arc<[AtomicU64]>,
    seed: u32,
}

fn run_worker(
    id: usize,
    core: Option<usize>,
    plan: Arc<Plan>,
    listeners: Vec<(String, std::net::TcpListener)>,
    ctl: Control,
) {
    let want = match plan.runtime {
        RuntimeKind::Auto => AUTO_DRIVER,
        other => other,
    };
    if want == RuntimeKind::IoUring {
        match uring_runtime() {
            Ok((mut rt, flags)) => {
                tracing::info!(
                    worker = id,
                    core,
                    driver = "io_uring",
                    flags,
                    "worker started"
                );
                rt.block_on(worker_main(id, true, plan, listeners, ctl));
                return;
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "io_uring unavailable; falling back to epoll")
            }
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            tracing::info!(worker = id, core, driver = "epoll", "worker started");
            rt.block_on(worker_main(id, false, plan, listeners, ctl));
        }
        Err(e) => tracing::error!(worker = id, error = %e, "cannot start a runtime"),
    }
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// An io_uring runtime whose ring is set up for one thread
/// (`IORING_SETUP_SINGLE_ISSUER`) that runs completions' task work only when it
/// asks for completions (`IORING_SETUP_DEFER_TASKRUN`: no interrupt of the
/// worker to run it, fewer context switches), as the kernel allows (6.1 and
/// later); a plain ring on older kernels. The flags used, for the log.
fn uring_runtime() -> std::io::Result<(UringRuntime, &'static str)> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_single_issuer().setup_defer_taskrun();
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .enable_timer()
        .build()
    {
        Ok(rt) => Ok((rt, "single_issuer,defer_taskrun")),
        Err(e) => {
            tracing::debug!(error = %e, "io_uring without SINGLE_ISSUER/DEFER_TASKRUN");
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .map(|rt| (rt, "none"))
        }
    }
}

/// One listening socket of this worker and its accept loop's stop flag.
struct Accepting {
    name: String,
    fd: RawFd,
    stop: Rc<Cell<bool>>,
}

impl Accepting {
    /// Stops the accept loop: the flag, then a shutdown that wakes a blocked accept.
    fn stop(&self) {
        self.stop.set(true);
        // SAFETY: the fd belongs to the accept loop's listener, which closes it only
        // after it returns, which it does only after seeing the flag set above, on
        // this thread, after this call.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

/// Starts accepting on `socket` for the listener `name`.
fn accept_on(shard: &Rc<Shard>, name: String, socket: std::net::TcpListener) -> Option<Accepting> {
    let fd = socket.as_raw_fd();
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = shard.id, listener = %name, error = %e, "cannot register listener");
            return None;
        }
    };
    let stop = Rc::new(Cell::new(false));
    monoio::spawn(accept_loop(
        listener,
        name.clone(),
        Rc::clone(shard),
        Rc::clone(&stop),
    ));
    Some(Accepting { name, fd, stop })
}

/// The caches of this worker's share of each stage's budget, for `plan`.
fn cache_sizes(plan: &Plan) -> Vec<(String, String, usize)> {
    plan.stages
        .iter()
        .map(|s| {
            (
                s.api.clone(),
                s.label().to_owned(),
                s.cache_bytes / plan.workers.max(1),
            )
        })
        .collect()
}

async fn worker_main(
    id: usize,
    uring: bool,
    plan: Arc<Plan>,
    listeners: Vec<(String, std::net::TcpListener)>,
    ctl: Control,
) {
    let parts = crate::proxy::shard::Parts {
        tokens: crate::policy::throttle::LocalTokens::new(plan.epoch),
        leases: crate::policy::quota::Leases::new(plan.workers),
        keyring: plan.live.current(),
        metrics: Some(Arc::clone(&plan.metrics)),
        // Each stage's cache budget, split evenly across workers.
        caches: Some(crate::policy::cache::Caches::new(
            id,
            Arc::clone(&plan.cache),
            cache_sizes(&plan)
                .into_iter()
                .map(|(_, _, bytes)| (bytes > 0).then(|| crate::policy::cache::Cache::new(bytes)))
                .collect(),
        )),
        plan: Some(Arc::clone(&plan)),
    };
    let shard = Rc::new(Shard::new(id, uring, plan.pool, parts, ctl.seed));
    shard.log_owner.set(Arc::as_ptr(&plan.logs) as usize);
    // The epoll driver polls briefly before sleeping (`busy_poll_us`); io_uring's does not.
    monoio::utils::set_busy_poll(plan.busy_poll);
    if let Some(bell) = shard.bell.borrow_mut().take() {
        monoio::spawn(ring(Rc::clone(&shard), bell));
    }
    if shard.dormant.is_some() {
        monoio::spawn(crate::proxy::websocket::watch(Rc::clone(&shard)));
    }
    crate::proxy::runtime_api::serve(&shard, &plan);
    plan.live.saw(id, shard.keyring.borrow().0);
    let mut accepting: Vec<Accepting> = listeners
        .into_iter()
        .filter_map(|(name, socket)| accept_on(&shard, name, socket))
        .collect();
    let mut plan = plan;
    // The control plane's flag is read a few times a second, off the request path.
    let mut tick = 0u32;
    // Ticks left of collecting at every tick, after a trim.
    let mut eager = 0u32;
    while !ctl.shutdown.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_millis(100)).await;
        // A new plan: between requests (this task runs only when no request is
        // being prepared), so the next request of each connection sees it.
        while let Ok(swap) = ctl.swaps.try_recv() {
            plan = apply(&shard, &plan, swap, &mut accepting);
            ctl.running[id].store(plan.generation, Ordering::Release);
        }
        let now = Instant::now();
        shard.parked.borrow_mut().sweep(now);
        if let Some(d) = &shard.dormant {
            d.sweep(now);
        }
        if tick.is_multiple_of(10) {
            // Once a second: a pool holds at most a few thousand entries.
            shard.pool.borrow_mut().sweep(now);
            shard.trim_bufs();
        }
        shard.flush_choosers();
        if let Some(cell) = shard.metrics.worker.get(id) {
            cell.upstream_open.set(crate::upstream::pool::open_here());
            cell.upstream_idle.set(shard.pool.borrow().idle() as u64);
        }
        // Requests served this tick count towards their keys' daily usage.
        if shard.leases.borrow_mut().flush() {
            plan.live.usage_changed();
        }
        shard.flush_logs(&plan.logs);
        if let Some(exporter) = &plan.telemetry {
            let spans = std::mem::take(&mut *shard.spans.borrow_mut());
            if !spans.is_empty() {
                exporter.send(spans);
            }
        }
        if plan.live.version() != shard.keyring.borrow().0 {
            // Only a keyring of this plan (its bindings name this plan's stage and
            // route ids): one made for a newer plan waits for that plan.
            let (version, ring) = plan.live.current();
            if ring.generation == plan.generation {
                let old = std::mem::replace(&mut *shard.keyring.borrow_mut(), (version, ring));
                if old.1.generation != plan.generation {
                    *shard.previous_keyring.borrow_mut() = Some(old.1);
                }
                plan.live.saw(id, version);
            }
        }
        tick = tick.wrapping_add(1);
        // What a burst of connections grew, once a second has passed with at most
        // half of it used (`Slots::trim`; a few comparisons when not).
        let mut trimmed = shard.parked.borrow_mut().trim();
        trimmed |= shard.mailboxes.trim();
        trimmed |= shard.dormant.as_ref().is_some_and(|d| d.trim());
        if tick.is_multiple_of(10) {
            trimmed |= monoio::utils::trim_io();
        }
        if trimmed {
            eager = 20;
        }
        if tick.is_multiple_of(10) || eager > 0 {
            eager = eager.saturating_sub(1);
            // Return freed buffers' pages (parked connections) to the system once a
            // second: mimalloc otherwise purges only when this thread next allocates.
            // For 2 s after a trim, at every tick: mimalloc frees an emptied page
            // only after 16 collects (its retire delay), which at one a second
            // kept a burst's last pages for seconds.
            // SAFETY: mi_collect works on the calling thread's heap only.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }
    for a in &accepting {
        a.stop();
    }
    shard.draining.set(true);
    // No more keyring switches here: management calls stop waiting for this worker.
    plan.live.saw(id, 0);
    let deadline = Instant::now() + plan.drain_timeout;
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if shard.in_flight.get() > 0 {
        tracing::warn!(
            worker = id,
            in_flight = shard.in_flight.get(),
            "drain timed out; closing"
        );
    }
    // Unspent quota leases go back, so the store saves exact counts.
    shard.leases.borrow_mut().settle_all();
    shard.flush_logs(&plan.logs);
    if let Some(exporter) = &plan.telemetry {
        exporter.send(std::mem::take(&mut *shard.spans.borrow_mut()));
    }
}

/// Switches this worker from `old` to `swap.plan`: listeners stop and start, the
/// caches of unchanged stages move over, buffered log lines go to the old plan's
/// writer. Token levels (by bucket), pools (by address and TLS digest), verified
/// tokens (by authorizer number) and quota leases (by slot) need no move.
fn apply(shard: &Rc<Shard>, old: &Plan, swap: Swap, accepting: &mut Vec<Accepting>) -> Arc<Plan> {
    let Swap {
        plan: new,
        open,
        close,
    } = swap;
    accepting.retain(|a| {
        let closing = close.contains(&a.name);
        if closing {
            a.stop();
        }
        !closing
    });
    for (name, socket) in open {
        accepting.extend(accept_on(shard, name, socket));
    }
    shard.flush_logs(&old.logs);
    shard.log_owner.set(Arc::as_ptr(&new.logs) as usize);
    let old_stages: Vec<(String, String)> = old
        .stages
        .iter()
        .map(|s| (s.api.clone(), s.label().to_owned()))
        .collect();
    {
        let mut caches = shard.caches.borrow_mut();
        let taken = std::mem::replace(
            &mut *caches,
            crate::policy::cache::Caches::new(shard.id, Arc::default(), Vec::new()),
        );
        *caches = taken.carry(&old_stages, Arc::clone(&new.cache), &cache_sizes(&new));
    }
    *shard.plan.borrow_mut() = Some(Arc::clone(&new));
    crate::proxy::runtime_api::serve(shard, &new);
    monoio::utils::set_busy_poll(new.busy_poll);
    new
}

async fn accept_loop(listener: TcpListener, name: String, shard: Rc<Shard>, stop: Rc<Cell<bool>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shard.metrics.worker[shard.id].accepted.add(1);
                // The worker's plan now, and this listener's place in it.
                let Some(plan) = shard.plan.borrow().clone() else {
                    return;
                };
                let Some(li) = plan.listeners.iter().position(|l| l.name == name) else {
                    return;
                };
                monoio::spawn(crate::proxy::conn::serve(
                    stream,
                    peer,
                    plan,
                    li,
                    Rc::clone(&shard),
                ));
            }
            Err(e) => {
                if stop.get() {
                    return;
                }
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = shard.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if stop.get() {
            return;
        }
    }
}

/// Wakes the requests whose function invocations finished, each time a host
/// thread rings this worker's inbox.
async fn ring(shard: Rc<Shard>, bell: std::os::unix::net::UnixStream) {
    use monoio::io::AsyncReadRent;
    let Ok(mut bell) = monoio::net::UnixStream::from_std(bell) else {
        tracing::warn!(worker = shard.id, "cannot watch the function inbox");
        return;
    };
    let mut buf = vec![0u8; 64];
    loop {
        let (r, b) = bell.read(buf).await;
        buf = b;
        match r {
            Ok(n) if n > 0 => {
                if let Some(calls) = &shard.calls {
                    calls.dispatch(|n, c| shard.mailboxes.post(n, c));
                }
                crate::proxy::runtime_api::wake_idle(&shard);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// `conn::serve` leaves TCP_NODELAY to the listener on Linux: the kernel
    /// copies it to every connection accepted there.
    #[cfg(target_os = "linux")]
    #[test]
    fn connections_accepted_on_a_listener_have_nodelay() {
        let l = super::reuseport_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        l.set_nonblocking(false).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(a.nodelay().unwrap());
    }
}
