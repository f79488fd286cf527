//! shardgate: a thread-per-core API gateway with Amazon API Gateway semantics.
//!
//! ```text
//! control plane (main thread)                     hot path (one worker per core, no locks)
//! main → config (file types) → compile → Arc<Plan> ──▶ worker → accept → conn → parse → route
//!                                                         │                                │
//!                                                     Shard (per core)                     ▼
//!                                                     └ upstream pools ◀── upstream: pool, forward
//!                                                                          │
//!                                                            body (stream) → respond → client
//! ```
//!
//! - `config`: the YAML users write (serde types) and `compile`, which validates it and
//!   builds the `Plan`.
//! - `plan`: the immutable compiled config: listeners, stages, routers, integrations.
//! - `worker`: threads, pinning, the monoio runtime and driver choice, accept, drain.
//! - `shard`: per-core state (pools, free buffers, parked connections, request ids,
//!   the Date cache, in-flight count).
//! - `conn`: the per-connection loop: parse → route → integration → respond; between
//!   requests a connection parks, holding no buffers.
//! - `parse`: strict HTTP/1.1 heads on httparse, and the chunked decoder.
//! - `path`: the one normalised request path that routing, policies, logs and the
//!   upstream request all read.
//! - `route`: stage dispatch (domain, stage segment, `$default`) and the radix routers.
//! - `body`: streaming bodies between sockets, re-framed as needed.
//! - `upstream`: the `http_proxy` integration: connection pool and forwarding.
//! - `respond`: response heads; `error`: the one error type and its responses.
//! - `clock`: the HTTP Date value.
//! - `reload`: hot reload: compile again, carry state over, hand workers the new plan.
//! - `deploy`: deployments (API snapshots in the store) and the stages pointed at them.

pub mod clock;
pub mod compile;
pub mod config;
pub mod control;
pub mod counter;
pub mod encode;
pub mod http;
pub mod ids;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod upstream;

/// Locks `m` even if a thread panicked while holding it: the control-plane state
/// behind these mutexes stays consistent between calls, and the gateway keeps
/// serving rather than cascading the panic.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lowers the calling thread's scheduling priority to `nice` (the control plane's
/// threads: access log writer, admin API, reloads): where one shares a core with a
/// worker, the worker's requests go first and this work fills the gaps. A failure
/// leaves the thread as it was.
pub fn below_workers(nice: i32) {
    // SAFETY: gettid and setpriority take integers; on Linux PRIO_PROCESS with a
    // thread id applies to that thread only (threads it starts inherit it).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}
