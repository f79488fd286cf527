//! Worker threads: one per core, pinned, each a monoio runtime owning its `Shard` and
//! accepting on its own `SO_REUSEPORT` listener sockets.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::RuntimeKind;
use crate::plan::Plan;
use crate::shard::Shard;

/// Which monoio driver `runtime: auto` picks. epoll: on the 2-core VMs measured for
/// `tuning/drivers.md`, io_uring cost more CPU per proxied request.
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

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// What the control plane keeps to stop the workers.
pub struct Workers {
    pub handles: Vec<JoinHandle<()>>,
    listener_fds: Vec<RawFd>,
    shutdown: Arc<AtomicBool>,
}

impl Workers {
    /// Stops accepting everywhere (the listening sockets are shut down, which wakes
    /// blocked accepts on both drivers) and lets the workers drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for &fd in &self.listener_fds {
            // SAFETY: the fds belong to listeners the workers own and close only after
            // their accept loops end, which this call causes; shutdown on an fd that
            // was already closed fails harmlessly with EBADF.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
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
    let mut handles = Vec::new();
    let mut listener_fds = Vec::new();
    for (id, listeners) in sockets.sockets.into_iter().enumerate() {
        listener_fds.extend(listeners.iter().map(AsRawFd::as_raw_fd));
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let plan = Arc::clone(&plan);
        let shutdown = Arc::clone(&shutdown);
        let h = std::thread::Builder::new()
            .name(format!("shardgate-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, core.map(|c| c.id), plan, listeners, shutdown, seed);
            })?;
        handles.push(h);
    }
    Ok(Workers {
        handles,
        listener_fds,
        shutdown,
    })
}

fn run_worker(
    id: usize,
    core: Option<usize>,
    plan: Arc<Plan>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Arc<AtomicBool>,
    seed: u32,
) {
    let want = match plan.runtime {
        RuntimeKind::Auto => AUTO_DRIVER,
        other => other,
    };
    if want == RuntimeKind::IoUring {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                tracing::info!(worker = id, core, driver = "io_uring", "worker started");
                rt.block_on(worker_main(id, true, plan, listeners, shutdown, seed));
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
            rt.block_on(worker_main(id, false, plan, listeners, shutdown, seed));
        }
        Err(e) => tracing::error!(worker = id, error = %e, "cannot start a runtime"),
    }
}

async fn worker_main(
    id: usize,
    uring: bool,
    plan: Arc<Plan>,
    listeners: Vec<std::net::TcpListener>,
    shutdown: Arc<AtomicBool>,
    seed: u32,
) {
    let parts = crate::shard::Parts {
        tokens: crate::throttle::LocalTokens::new(plan.throttles.len(), plan.epoch),
        leases: crate::quota::Leases::new(plan.workers),
        keyring: plan.live.current(),
        metrics: Some(Arc::clone(&plan.metrics)),
        // Each stage's cache budget, split evenly across workers.
        caches: Some(crate::cache::Caches::new(
            id,
            Arc::clone(&plan.cache),
            plan.stages
                .iter()
                .map(|s| {
                    (s.cache_bytes > 0)
                        .then(|| crate::cache::Cache::new(s.cache_bytes / plan.workers.max(1)))
                })
                .collect(),
        )),
    };
    let shard = Rc::new(Shard::new(id, uring, plan.pool, parts, seed));
    plan.live.saw(id, shard.keyring.borrow().0);
    for (li, std_listener) in listeners.into_iter().enumerate() {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot register listener");
                continue;
            }
        };
        monoio::spawn(accept_loop(
            listener,
            Arc::clone(&plan),
            li,
            Rc::clone(&shard),
            Arc::clone(&shutdown),
        ));
    }
    // The control plane's flag is read a few times a second, off the request path.
    let mut tick = 0u32;
    while !shutdown.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_millis(100)).await;
        shard.parked.borrow_mut().sweep(Instant::now());
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
            // Between requests (this task runs only when no request is being
            // prepared): the next request sees the new keys.
            *shard.keyring.borrow_mut() = plan.live.current();
            plan.live.saw(id, shard.keyring.borrow().0);
        }
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(10) {
            // Return freed buffers' pages (parked connections) to the system once a
            // second: mimalloc otherwise purges only when this thread next allocates.
            // SAFETY: mi_collect(false) works on the calling thread's heap only.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
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

async fn accept_loop(
    listener: TcpListener,
    plan: Arc<Plan>,
    li: usize,
    shard: Rc<Shard>,
    shutdown: Arc<AtomicBool>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                plan.metrics.worker[shard.id].accepted.add(1);
                monoio::spawn(crate::conn::serve(
                    stream,
                    peer,
                    Arc::clone(&plan),
                    li,
                    Rc::clone(&shard),
                ));
            }
            Err(e) => {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(worker = shard.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}
