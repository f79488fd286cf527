//! shardgate: a thread-per-core API gateway with Amazon API Gateway semantics.
//!
//! ```text
//! control plane (main thread)                      hot path (one worker per core, no locks)
//! main → control ─ config → compile → Arc<Plan> ──▶ proxy::worker → conn → http::parse
//!        (store, registry,                                 │             │
//!         reload, admin)                            proxy::shard         ▼ route (dispatch + match)
//!                                                   ├ token buckets ◀── proxy::pipeline → policy:
//!                                                   ├ response cache ◀─   resource policy, CORS,
//!                                                   ├ upstream pools ◀─   authorizers, keys, throttles,
//!                                                   └ counters             quotas, validation, cache
//!                                                          ▲                     │
//!                                                   observe: metrics,      proxy::forward → upstream:
//!                                                   access log, traces ◀── connect, pool → http::respond
//! ```
//!
//! Layers, each importing only the ones above it in this list (`tests/layers.rs`
//! checks it, and that no two source files import each other in a cycle):
//!
//! 1. `ids`, `clock`, `counter`, `encode`: ids, time, single-writer counters,
//!    small encoders.
//! 2. `config`: the YAML users write, as serde types in human units.
//! 3. `http`: HTTP/1.1 on both sides; knows nothing of APIs.
//! 4. `upstream`: where requests go and the connections that carry them.
//! 5. `route`: which stage and which route serve a request.
//! 6. `policy`: what a request must pass; each a verdict from request facts.
//! 7. `observe`: metrics, access logs, tracing, span export.
//! 8. `plan`: the compiled config every worker reads.
//! 9. `compile`: config file → `Plan`, one file per part.
//! 10. `proxy`: workers, shards, connections and the request pipeline.
//! 11. `control`: store, registry, deployments, reload, admin API, CLI.
//!
//! Modules:
//! - `ids`: stage, route, request, throttle ids and per-shard slots.
//! - `clock`: the HTTP Date value, civil dates, a test clock.
//! - `counter`: a counter one thread writes and any reads.
//! - `encode`: hex, IP addresses as text, random ids, constant-time compare.
//! - `config`: the config file's serde types and their structural errors.
//!   - `config::upstreams`: upstream groups and upstream TLS.
//!   - `config::functions`: functions, `lambda` and `aws` integrations, parameter
//!     mapping.
//!   - `config::secret`: secrets (a value or an environment variable).
//!   - `config::websocket`: what WebSocket APIs add (stage limits).
//! - `http`: the codec and everything that speaks HTTP/1.1:
//!   - `http::parse`: strict request and response heads on httparse, chunked decoding.
//!   - `http::path`: the one normalised request path routing, policies, logs and the
//!     upstream request all read.
//!   - `http::body`: streaming bodies between sockets, re-framed as needed, with deadlines.
//!   - `http::stream`: plain and TLS sockets behind one type.
//!   - `http::respond`: response heads, the reason-phrase table, mock responses.
//!   - `http::error`: the one gateway error type and its response.
//!   - `http::responses`: gateway responses: AWS's response types and a stage's
//!     overrides of the gateway's own answers (status, headers, body templates).
//!   - `http::tls`: certificates, client authentication, upstream TLS, reloads.
//!   - `http::sigv4`: AWS Signature Version 4: the canonical request, signing keys,
//!     signing the gateway's outbound AWS calls.
//!   - `http::ws`: WebSocket (RFC 6455) frames and messages as the gateway
//!     terminates them: the handshake key, checks, fragments, close codes.
//!   - `http::client`: the blocking client of the control plane's outbound calls
//!     (JWKS, OTLP export, the CLI), on `http::parse`.
//! - `upstream`: the integration side:
//!   - `upstream::target`: an `http_proxy` target (a fixed endpoint or a group)
//!     and its path template.
//!   - `upstream::balance`: the balancers (round robin, least request, consistent
//!     hashing), lock-free.
//!   - `upstream::group`: upstream groups, their shared live state (membership,
//!     health, ejection, counters), and resolving host names.
//!   - `upstream::choose`: one shard's state of a group: picks, in-flight counts,
//!     passive outlier detection, the retry budget.
//!   - `upstream::watch`: each group's thread for health checks and DNS refresh.
//!   - `upstream::connect`: TCP (and TLS) to a target, for integrations and request
//!     authorizers alike.
//!   - `upstream::pool`: each shard's idle upstream connections.
//!   - `upstream::function`: functions run next to the gateway: what workers share
//!     of each (queue, Runtime API sockets, waiting runtimes), their processes,
//!     each worker's inbox.
//!   - `upstream::inbox`: a worker's inbox (function outcomes, connection
//!     commands) and its wake-up socket.
//!   - `upstream::connections`: the process's WebSocket connections, for
//!     `@connections`, and each worker's mailboxes.
//!   - `upstream::aws`: signed calls to AWS (Lambda Invoke, service integrations).
//!   - `upstream::mapping`: HTTP API parameter mapping expressions.
//! - `route`: which stage and route serve a request, in one step (`resolve`): stage
//!   dispatch (domain, stage segment, `$default`), then the stage's radix router.
//! - `policy`: the checks between route and integration:
//!   - `policy::resource`: resource policies (source IP, X-Forwarded-For).
//!   - `policy::cors`: CORS preflight and response headers.
//!   - `policy::access`: an API's access control as compiled, and the authorizer steps.
//!   - `policy::jwt`: JWT authorizers and JWKS.
//!   - `policy::request`: request (Lambda-style) authorizers over HTTP.
//!   - `policy::sigv4`: IAM-style SigV4 authorization.
//!   - `policy::keys`: API keys and the keyring workers read.
//!   - `policy::usage`: usage plans and keys as defined, resolved against stages.
//!   - `policy::throttle`: token buckets, shared and per shard.
//!   - `policy::quota`: usage-plan quotas leased to shards.
//!   - `policy::validate`: request validation (parameters, JSON schema).
//!   - `policy::cache`: the per-shard response cache.
//! - `observe`: what operators see:
//!   - `observe::metrics`: per-worker counters and histograms, Prometheus text.
//!   - `observe::accesslog`: access log formats and the per-core buffered writer.
//!   - `observe::trace`: W3C and X-Ray trace headers.
//!   - `observe::telemetry`: OTLP span export.
//! - `plan`: the compiled config: listeners, stages, routes, integrations.
//! - `compile`: validates a `ConfigFile` and builds the `Plan`:
//!   - `compile::build`: what a compile accumulates, and shared checks.
//!   - `compile::upstreams`: upstream groups, and the implicit group of a named host.
//!   - `compile::integrations`: `http_proxy` URIs and mock responses.
//!   - `compile::functions`: `functions[]`, `lambda` and `aws` integrations,
//!     parameter mapping.
//!   - `compile::websocket`: WebSocket APIs' route keys, route responses, limits.
//!   - `compile::routes`: route keys, routers, per-route caches.
//!   - `compile::authorizers`: resource policy, CORS, authorizers, validation.
//!   - `compile::apis`: what an API compiles to once; deployments' snapshots.
//!   - `compile::stages`: one stage of an API.
//!   - `compile::canary`: a stage's canary release, a second compiled stage.
//!   - `compile::responses`: gateway responses, per stage.
//!   - `compile::listeners`: listeners, limits, TLS, domains.
//!   - `compile::keys`: the config's usage plans and keys.
//!   - `compile::telemetry`: OTLP export and trace creation.
//!   - `compile::gateway`: the whole config, in order.
//!   - `compile::load`: a config file from disk.
//! - `proxy`: the hot path:
//!   - `proxy::worker`: threads, pinning, the monoio runtime and driver, accept, drain.
//!   - `proxy::shard`: per-core state (pools, buffers, parked connections, caches,
//!     buckets, request ids).
//!   - `proxy::conn`: the connection loop: read a head, run the pipeline, answer;
//!     between requests a connection parks, holding no buffers.
//!   - `proxy::dormant`: idle connections kept with no task: a worker's epoll set
//!     of their sockets, woken by data, a command or a deadline.
//!   - `proxy::verdict`: what a stage decides (`Action`, `Verdict`).
//!   - `proxy::admit`: the throttles a request or a WebSocket message passes, and a
//!     message's API key and usage plan.
//!   - `proxy::authorize`: the authorizer stage (JWT, request, SigV4).
//!   - `proxy::pipeline`: the request's stages from dispatch to cache, each settling
//!     the request or letting it go on.
//!   - `proxy::client`: the client connection and the ways to answer it.
//!   - `proxy::forward`: the `http_proxy` integration: request and response rewriting,
//!     cache fills.
//!   - `proxy::lambda`: Lambda proxy events (1.0, 2.0) and responses.
//!   - `proxy::invoke`: the `lambda` and `aws` integrations: invocations and their
//!     answers.
//!   - `proxy::runtime_api`: the Lambda Runtime API, served by each worker for
//!     the runtimes connected to it.
//!   - `proxy::remap`: parameter mapping of `http_proxy` request and response heads.
//!   - `proxy::send`: a group's pick for a request, retries and outlier feedback.
//!   - `proxy::manage`: the `@connections` API of WebSocket APIs (this
//!     node's connections through their workers' inboxes, other nodes' through
//!     the cluster relay).
//!   - `proxy::websocket`: WebSocket APIs: `$connect`, messages routed to
//!     integrations, route responses, `$disconnect`.
//!   - `proxy::ws_context`: a WebSocket API connection's `requestContext`, the
//!     events made of it, its messages and its access log lines.
//!   - `proxy::tunnel`: WebSocket pass-through after a 101.
//! - `control`: the control plane:
//!   - `control::redis`: cluster mode's connection to Redis (`store.redis`): the
//!     shared definitions, the change announcements, node heartbeats.
//!   - `control::store`: the embedded store (redb) and the records it keeps (and,
//!     in cluster mode, writes through to Redis).
//!   - `control::registry`: keys, usage plans and access keys, and the keyring:
//!     - `control::registry::api_keys`: API keys and CSV import.
//!     - `control::registry::plans`: usage plans, quotas, usage reports.
//!     - `control::registry::access_keys`: SigV4 access keys.
//!     - `control::registry::shared`: adopting the definitions Redis holds.
//!   - `control::cluster`: cluster mode's sync thread (changes from other nodes,
//!     heartbeats, `GET /cluster`).
//!   - `control::relay`: cluster mode's `@connections` relay: calls for another
//!     node's WebSocket connections, and their answers, through Redis.
//!   - `control::deploy`: deployments and the stages pointed at them.
//!   - `control::openapi`: OpenAPI documents with AWS's extensions.
//!   - `control::openapi::context`: an import's state; AWS's syntax read.
//!   - `control::openapi::integration`: AWS's integrations as routes' integrations.
//!   - `control::openapi::import`: an AWS export made a config.
//!   - `control::openapi::export`: an API of a config as an OpenAPI document.
//!   - `control::reload`: hot reload: compile again, carry state over, hand workers
//!     the new plan.
//!   - `control::admin`: the management API's server and routes:
//!     - `control::admin::wire`: its requests and responses, the bearer token.
//!     - `control::admin::views`: keys, plans, deployments, usage as JSON.
//!     - `control::admin::deployments`: deployments and stage pointers.
//!     - `control::admin::usage`: CSV import, usage reports, quota changes.
//!     - `control::admin::cache`: cache counters and flushes; certificates.
//!     - `control::admin::console`: the web console's files (`/console`), embedded.
//!   - `control::cli`: the command line's management commands.

/// `shardgate --version`: the package version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SHARDGATE_COMMIT"),
    ")"
);

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
#[allow(clippy::disallowed_types)] // Not on the request path: the control plane's lock helper.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A non-blocking listening socket on `addr` with `SO_REUSEPORT` (one per worker
/// on the same address: the kernel spreads connections over them) and
/// `TCP_NODELAY`, which Linux gives each accepted connection: set once here,
/// not with a system call per connection.
pub fn reuseport_listener(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
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
