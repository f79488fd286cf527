//! Forwarding one request to an `http_proxy` integration and streaming its response
//! back: pooled connection (one retry on a fresh connection when a pooled one turns
//! out dead and the request is idempotent), integration timeout, header rewriting.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::encode::write_ip;
use crate::http::body::{self, Encode, PumpError, Source};
use crate::http::error::GatewayError;
use crate::http::parse::{self, Framing, RequestHead};
use crate::http::respond::{self, Persist, Tag};
use crate::plan::Limits;
use crate::proxy::client::{body_error, send_continue, Client};
use crate::proxy::shard::Shard;
use crate::route::RouteMatch;
use crate::upstream::connect::connect;
use crate::upstream::pool::UpConn;
use crate::upstream::target::{Endpoint, PathPart, ProxyTarget};

/// A body up to this size that has arrived with its head is sent in the same write.
const INLINE_BODY: u64 = 16 * 1024;
/// A response body up to this size is read whole before any of it is sent, so it
/// leaves in one or two writes rather than one per read (nginx's proxy buffers).
const INLINE_RESPONSE: u64 = 64 * 1024;

/// The facts of the client request `proxy` needs.
pub struct Request {
    pub framing: Framing,
    pub persist: Persist,
    pub is_head: bool,
    pub expect_continue: bool,
    pub idempotent: bool,
    pub tag: Tag,
    /// A cache miss: store the response if it may be.
    pub fill: Option<crate::policy::cache::Fill>,
    /// The request's body must have arrived by then (`request_timeout_ms`).
    pub deadline: Instant,
    /// The body is in `Client::up_head` behind the head (`hold_body`).
    pub held: bool,
    /// A failure another target may mend is returned as `Failed::Retry` rather
    /// than answered (a group with retries left, in budget).
    pub retry: bool,
    /// The target's connection cap over all workers (`u32::MAX`: none).
    pub max_conns: u32,
    /// `Upgrade: websocket`: a 101 from the target opens a tunnel.
    pub websocket: bool,
    /// The route's response mappings (`response_parameters`), if it has any.
    pub mapping: Option<std::sync::Arc<crate::upstream::mapping::Mappings>>,
}

/// Why no upstream response reached the client.
pub enum Failed {
    /// Answer the client with this error.
    Answer(GatewayError),
    /// Close the client connection without an answer (it left, or a response had
    /// already started).
    Abort,
    /// The target failed before anything reached the client, in a way another
    /// target may not (no connection, closed or reset before a response, a 502
    /// or 503): retry elsewhere, or answer with this.
    Retry(GatewayError),
}

/// How long a request waits for a connection to a target at its cap.
const CAP_WAIT: Duration = Duration::from_millis(500);

/// Where a request came in, as the forwarded headers tell the upstream.
pub struct Origin<'a> {
    pub peer: SocketAddr,
    pub local_port: u16,
    /// HTTPS: what the handshake established.
    pub tls: Option<&'a crate::http::tls::Session>,
}

/// What access control adds to, and removes from, the upstream request.
pub struct Extra<'a> {
    /// Header names only the gateway sets (its authorizers' forwarded values).
    pub strip: &'a [Box<str>],
    pub grant: &'a crate::policy::access::Grant,
    /// Trace headers the request lacked.
    pub trace: Option<&'a crate::observe::trace::Trace>,
}

impl Extra<'_> {
    pub const NONE: Extra<'static> = Extra {
        strip: &[],
        grant: &crate::policy::access::Grant {
            lines: None,
            drop_authorization: false,
            claims: None,
            context: None,
        },
        trace: None,
    };
}

/// Whether a request asks for a WebSocket (`GET`, `Upgrade: websocket`,
/// `Connection: upgrade`).
pub fn wants_websocket(head: &RequestHead<'_>, headers: &[httparse::Header<'_>]) -> bool {
    head.method == "GET"
        && headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("upgrade")
                && parse::tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"websocket"))
        })
        && headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("connection")
                && parse::tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Writes the upstream request head for `target` into `out`; the range of the
/// `Host` value in it (a group's pick may replace it).
#[allow(clippy::too_many_arguments)]
pub fn write_request_head(
    out: &mut Vec<u8>,
    target: &ProxyTarget,
    head: &RequestHead<'_>,
    headers: &[httparse::Header<'_>],
    m: &RouteMatch<'_, '_>,
    routed_path: &str,
    origin: &Origin<'_>,
    extra: &Extra<'_>,
    websocket: bool,
) -> std::ops::Range<usize> {
    out.clear();
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    let start = out.len();
    for part in &target.path {
        match part {
            PathPart::Literal(l) => {
                let l = if target.append_request_path {
                    l.trim_end_matches('/')
                } else {
                    l
                };
                out.extend_from_slice(l.as_bytes());
            }
            PathPart::Param(name) => out.extend_from_slice(m.param(name).unwrap_or("").as_bytes()),
        }
    }
    if target.append_request_path {
        out.extend_from_slice(routed_path.as_bytes());
    }
    if out.len() == start {
        out.push(b'/');
    }
    match (&target.query, head.query) {
        (Some(fixed), Some(q)) if !q.is_empty() => {
            out.push(b'?');
            out.extend_from_slice(fixed.as_bytes());
            out.push(b'&');
            out.extend_from_slice(q.as_bytes());
        }
        (Some(fixed), _) => {
            out.push(b'?');
            out.extend_from_slice(fixed.as_bytes());
        }
        (None, Some(q)) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, None) => {}
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let host_at = out.len();
    out.extend_from_slice(target.host_header.as_bytes());
    let host = host_at..out.len();
    out.extend_from_slice(b"\r\n");
    let forwards_cert = origin.tls.is_some_and(|t| t.forwards_client_cert);
    respond::copy_headers(out, headers, |n| {
        n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"x-forwarded-for")
            || n.eq_ignore_ascii_case(b"x-forwarded-proto")
            || n.eq_ignore_ascii_case(b"x-forwarded-host")
            || n.eq_ignore_ascii_case(b"x-forwarded-port")
            // Only the gateway says which client certificate was verified.
            || (forwards_cert
                && n.len() >= 14
                && n[..14].eq_ignore_ascii_case(b"x-client-cert-"))
            || (extra.grant.drop_authorization && n.eq_ignore_ascii_case(b"authorization"))
            || extra.strip.iter().any(|s| n.eq_ignore_ascii_case(s.as_bytes()))
    });
    out.extend_from_slice(b"x-forwarded-for: ");
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        out.extend_from_slice(h.value);
        out.extend_from_slice(b", ");
    }
    write_ip(out, origin.peer.ip());
    out.extend_from_slice(if origin.tls.is_some() {
        &b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: "[..]
    } else {
        &b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: "[..]
    });
    out.extend_from_slice(head.host);
    out.extend_from_slice(b"\r\nx-forwarded-port: ");
    out.extend_from_slice(itoa::Buffer::new().format(origin.local_port).as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(lines) = origin.tls.and_then(|t| t.client_cert_headers.as_deref()) {
        out.extend_from_slice(lines);
    }
    if let Some(lines) = &extra.grant.lines {
        out.extend_from_slice(lines);
    }
    if let Some(t) = extra.trace {
        t.write(out);
    }
    if websocket {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
    }
    match head.framing {
        Framing::Length(n) => respond::content_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            if matches!(head.method, "POST" | "PUT" | "PATCH") {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    host
}

/// What the upstream answered, once its head is in `Client::out` (already rewritten
/// for the client).
pub struct Answered {
    pub framing: Framing,
    pub upstream_close: bool,
    pub client_persist: Persist,
    /// Where the upstream's header lines start in the written head (what a cache
    /// entry keeps).
    pub headers_from: usize,
    /// A 200 the cache may keep: no `Set-Cookie`, no `Cache-Control: no-store` or
    /// `private`, no `Vary: *`. Only worked out when the request is a cache miss.
    pub storable: bool,
    /// The header names its `Vary` lists (`\n`-separated), if any.
    pub vary: Vec<u8>,
    /// A 101 to a WebSocket upgrade: the connection becomes a tunnel.
    pub upgraded: bool,
}

enum ExchangeError {
    /// Nothing came back on a pooled connection: it was dead before we used it.
    Stale,
    /// A 502 or 503 from the target, which another may mend (`Request::retry`).
    Status(u16),
    Failed(Failed),
}

/// Moves a small body that arrived with its head (or soon after) behind the
/// upstream head, so both go in one write, and a retry can send them again;
/// `true` when it did.
pub async fn hold_body(c: &mut Client, req: &Request, limits: &Limits) -> Result<bool, Failed> {
    if let Framing::Length(n) = req.framing {
        if n <= INLINE_BODY && !req.expect_continue {
            // Wait for the rest of a small body, so head and body go upstream in one
            // write instead of two or three.
            body::read_to(
                &mut c.stream,
                &mut c.buf,
                c.pos + n as usize,
                limits.idle_timeout,
                Some(req.deadline),
            )
            .await
            .map_err(|e| body_error(e).map_or(Failed::Abort, Failed::Answer))?;
        }
        if n <= INLINE_BODY && (c.buf.len() - c.pos) as u64 >= n {
            let end = c.pos + n as usize;
            c.up_head.extend_from_slice(&c.buf[c.pos..end]);
            c.pos = end;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A pooled connection to `ep`, or a new one; at the target's connection cap,
/// waits up to `CAP_WAIT` for one to come back or close.
async fn connection(
    shard: &Shard,
    ep: &Endpoint,
    max_conns: u32,
) -> Result<(UpConn, bool), GatewayError> {
    // Deadlines and pool ages: the coarse clock (`crate::clock::coarse_now`).
    let give_up = crate::clock::coarse_now() + CAP_WAIT;
    loop {
        let now = crate::clock::coarse_now();
        if let Some(up) = shard.pool.borrow_mut().take(ep.pool_key, now) {
            return Ok((up, true));
        }
        let full = ep
            .open
            .as_ref()
            .filter(|c| c.open.load(Ordering::Relaxed) >= max_conns);
        let Some(conns) = full else {
            if let Some(c) = ep
                .open
                .as_ref()
                .filter(|c| c.starved.load(Ordering::Relaxed))
            {
                c.starved.store(false, Ordering::Relaxed);
            }
            return Ok((connect(&shard.dial(), ep).await?, false));
        };
        // Other workers' idle connections to the target count too: they close
        // them at their next tick.
        conns.starved.store(true, Ordering::Relaxed);
        if crate::clock::coarse_now() >= give_up {
            conns.starved.store(false, Ordering::Relaxed);
            tracing::warn!(upstream = %ep.addr, max_connections_per_target = max_conns, "target at its connection cap");
            return Err(GatewayError::Unavailable("target at its connection cap"));
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Proxies the request whose head (and held body) is in `c.up_head` to `ep`;
/// `Ok(true)` keeps the client connection open.
pub async fn proxy(
    c: &mut Client,
    shard: &Shard,
    target: &ProxyTarget,
    ep: &Endpoint,
    req: &Request,
    limits: &Limits,
) -> Result<bool, Failed> {
    let inline = req.held;
    let has_body = req.framing != Framing::None && !inline;
    let may_retry = req.idempotent && !has_body;
    // One reading serves the deadline, the first attempt's start and the first wait.
    let start = Instant::now();
    let clock = Clock {
        until: Cell::new(start + target.timeout),
        uploading: Cell::new(false),
    };
    let exchange = async {
        let mut retried = false;
        let mut attempt = Some(start);
        loop {
            c.outcome.sent = attempt.take().unwrap_or_else(Instant::now);
            let (mut up, reused) = match connection(shard, ep, req.max_conns).await {
                Ok(c) => c,
                // Nothing was sent: another target may take it.
                Err(e) if req.retry && !matches!(e, GatewayError::Unavailable(_)) => {
                    return Err(Failed::Retry(e))
                }
                Err(e) => return Err(Failed::Answer(e)),
            };
            match exchange(c, &mut up, req, has_body, limits, shard, &clock, target).await {
                Ok(a) => return Ok((up, a)),
                Err(ExchangeError::Stale) if reused && may_retry && !retried => {
                    retried = true;
                    // The pool hands out its most recently used connection first:
                    // the others to this target idled longer, so whatever closed
                    // this one (the target's idle timeout, a restart) closed them
                    // too. Dropped, so the retry opens a new connection instead of
                    // taking the next dead one.
                    shard.pool.borrow_mut().close_idle(&ep.pool_key);
                    tracing::debug!(upstream = %ep.addr, "pooled connection was closed; retrying on a new one");
                }
                Err(ExchangeError::Stale) => {
                    tracing::warn!(upstream = %ep.addr, "upstream closed the connection without a response");
                    let e = GatewayError::UpstreamFailed("closed without a response");
                    return Err(if req.retry && !has_body {
                        Failed::Retry(e)
                    } else {
                        Failed::Answer(e)
                    });
                }
                Err(ExchangeError::Status(status)) => {
                    tracing::debug!(upstream = %ep.addr, status, "target answered {status}; retrying on another");
                    return Err(Failed::Retry(GatewayError::UpstreamFailed(
                        "the target answered 502 or 503",
                    )));
                }
                Err(ExchangeError::Failed(f)) => return Err(f),
            }
        }
    };
    let (mut up, answered) = {
        let mut exchange = std::pin::pin!(exchange);
        let mut now = start;
        loop {
            let left = clock.until.get().saturating_duration_since(now);
            if let Ok(r) = monoio::time::timeout(left, exchange.as_mut()).await {
                break r?;
            }
            now = Instant::now();
            if clock.until.get() > now {
                // The clock moved on (the body was sent): wait on.
                continue;
            }
            if clock.uploading.get() {
                tracing::debug!(upstream = %ep.addr, "request body not received by the request deadline");
                return Err(Failed::Answer(GatewayError::RequestTimeout));
            }
            tracing::warn!(upstream = %ep.addr, timeout_ms = target.timeout.as_millis() as u64, "integration timed out");
            return Err(Failed::Answer(GatewayError::IntegrationTimeout));
        }
    };
    if answered.upgraded {
        // Boxed: the tunnel's state lives on the heap, only for the requests that
        // open one, not inline in every proxied request's future.
        return Box::pin(upgrade(c, shard, up, ep, limits)).await;
    }
    // The head is in `c.out`; a body of up to INLINE_RESPONSE is gathered first.
    let body_start = up.pos;
    // A response the cache keeps is read whole (at most 1 MiB), then stored and sent.
    let inline = if answered.storable {
        crate::policy::cache::MAX_CACHED_BODY
    } else {
        INLINE_RESPONSE
    };
    if let Framing::Length(n) = answered.framing {
        if n <= inline {
            gather(&mut up, body_start + n as usize, target, ep).await?;
        }
        if n <= inline && (up.buf.len() - body_start) as u64 >= n {
            let end = body_start + n as usize;
            if let (true, Some(fill)) = (answered.storable, &req.fill) {
                let vary = (!answered.vary.is_empty()).then(|| {
                    let mut headers = parse::headers();
                    let mut r = httparse::Request::new(&mut []);
                    let mut values = Vec::new();
                    if r.parse_with_uninit_headers(&c.buf, &mut headers).is_ok() {
                        crate::policy::cache::vary_values(&answered.vary, r.headers, &mut values);
                    }
                    crate::policy::cache::Vary {
                        names: answered.vary.as_slice().into(),
                        values: values.into(),
                    }
                });
                store(
                    shard,
                    fill,
                    &c.out[answered.headers_from..],
                    &up.buf[body_start..end],
                    vary,
                );
            }
            // A body that fits behind the head in `c.out` as it is goes in one write;
            // a larger one is sent from where it was read, gathered with the head
            // (one `writev`): growing `c.out` and copying cost more (16 KiB: 9.3
            // vs 4.6 µs user).
            let sent = if c.out.capacity() - c.out.len() >= n as usize {
                c.out.extend_from_slice(&up.buf[body_start..end]);
                body::write_all(&mut c.stream, &mut c.out, c.send_timeout).await
            } else {
                body::write_two(
                    &mut c.stream,
                    &mut c.out,
                    &mut up.buf,
                    body_start,
                    end,
                    c.send_timeout,
                )
                .await
            };
            // The upstream's response was read whole: its connection goes back to
            // the pool even when the client has gone.
            up.pos = end;
            let keep = finish(shard, ep, up, &answered);
            return if sent.is_ok() {
                Ok(keep)
            } else {
                Err(Failed::Abort)
            };
        }
    }
    if body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_err()
    {
        return Err(Failed::Abort);
    }
    let encode = match (answered.framing, answered.client_persist) {
        (Framing::Chunked | Framing::UntilClose, Persist::KeepAlive) => Encode::Chunked,
        _ => Encode::Raw,
    };
    let mut src = Source {
        stream: &mut up.stream,
        buf: &mut up.buf,
        pos: &mut up.pos,
        read_timeout: target.timeout,
        deadline: None,
    };
    match body::pump(
        &mut src,
        Some(body::Sink {
            stream: &mut c.stream,
            stalled: c.send_timeout,
        }),
        answered.framing,
        encode,
        &mut c.out,
        u64::MAX,
    )
    .await
    {
        Ok(n) => {
            c.outcome.bytes = n;
            Ok(finish(shard, ep, up, &answered))
        }
        Err(e) => {
            tracing::warn!(upstream = %ep.addr, error = %e, "response body failed midway");
            Err(Failed::Abort)
        }
    }
}

/// The 101 head for the client: the upstream's headers (the WebSocket ones
/// among them) with the gateway's, and the upgrade's own two.
fn write_upgrade_head(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    date: [u8; crate::clock::HTTP_DATE_LEN],
    tag: &Tag,
) {
    out.clear();
    respond::status_line(out, 101, b"Switching Protocols");
    respond::common_headers(out, &date, tag, Persist::KeepAlive);
    respond::copy_headers(out, headers, |n| {
        n.eq_ignore_ascii_case(b"date") || n.eq_ignore_ascii_case(b"apigw-requestid")
    });
    out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
}

/// After a 101: sends the head (and whatever the upstream sent behind it), then
/// tunnels both ways until the WebSocket ends; the client connection closes.
async fn upgrade(
    c: &mut Client,
    shard: &Shard,
    mut up: UpConn,
    ep: &Endpoint,
    limits: &Limits,
) -> Result<bool, Failed> {
    c.out.extend_from_slice(&up.buf[up.pos..]);
    up.pos = up.buf.len();
    if body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_err()
    {
        return Err(Failed::Abort);
    }
    // Frames the client sent right behind its upgrade request.
    if c.pos < c.buf.len() {
        let end = c.buf.len();
        if body::write_range(&mut up.stream, &mut c.buf, c.pos, end, limits.send_timeout)
            .await
            .is_err()
        {
            return Err(Failed::Abort);
        }
        c.pos = end;
    }
    let sides = (
        crate::proxy::tunnel::side(&mut c.stream),
        crate::proxy::tunnel::side(&mut up.stream),
    );
    let (Ok(client), Ok(upstream)) = sides else {
        tracing::warn!(upstream = %ep.addr, "cannot tunnel this WebSocket (no descriptor to spare)");
        return Err(Failed::Abort);
    };
    let started = Instant::now();
    let cell = shard.metrics.worker.get(shard.id);
    if let Some(cell) = cell {
        cell.websockets_opened.add(1);
    }
    let (ended, up_bytes, down_bytes) =
        crate::proxy::tunnel::run(client, upstream, limits.websocket_idle).await;
    if let Some(cell) = cell {
        cell.websockets_closed.add(1);
    }
    c.outcome.bytes = down_bytes;
    tracing::debug!(upstream = %ep.addr, ?ended, up_bytes, down_bytes, ms = started.elapsed().as_millis() as u64, "WebSocket tunnel ended");
    Ok(false)
}

/// Keeps a response in the worker's cache of its stage.
fn store(
    shard: &Shard,
    fill: &crate::policy::cache::Fill,
    head: &[u8],
    body: &[u8],
    vary: Option<crate::policy::cache::Vary>,
) {
    shard.caches.borrow_mut().insert(
        fill.owner,
        fill.stage,
        crate::policy::cache::Entry {
            key: fill.key.as_slice().into(),
            head: head.into(),
            body: body.into(),
            stored_s: crate::clock::unix_s(),
            expires_ms: crate::clock::unix_ms() + fill.ttl_ms,
            vary,
        },
    );
}

/// Reads from the upstream until `up.buf` holds `want` bytes; nothing has been sent
/// to the client yet, so a failure is still answered.
async fn gather(
    up: &mut UpConn,
    want: usize,
    target: &ProxyTarget,
    ep: &Endpoint,
) -> Result<(), Failed> {
    let read = body::read_to(&mut up.stream, &mut up.buf, want, target.timeout, None).await;
    let err = match read {
        Ok(()) => return Ok(()),
        Err(PumpError::ReadTimeout) => {
            tracing::warn!(upstream = %ep.addr, timeout_ms = target.timeout.as_millis() as u64, "integration timed out");
            GatewayError::IntegrationTimeout
        }
        Err(PumpError::Read(e)) => {
            tracing::warn!(upstream = %ep.addr, error = %e, "upstream read failed inside the response body");
            GatewayError::UpstreamFailed("reset inside the response body")
        }
        Err(_) => {
            tracing::warn!(upstream = %ep.addr, "upstream closed inside the response body");
            GatewayError::UpstreamFailed("closed inside the response body")
        }
    };
    Err(Failed::Answer(err))
}

/// Pools the upstream connection if it can carry another request.
fn finish(shard: &Shard, ep: &Endpoint, up: UpConn, a: &Answered) -> bool {
    if !a.upstream_close && a.framing != Framing::UntilClose {
        shard
            .pool
            .borrow_mut()
            .put(ep.pool_key, up, crate::clock::coarse_now());
    }
    !a.client_persist.closes()
}

/// When an exchange times out. The integration timeout counts the time to connect
/// and the time waiting for the response, not the client's upload: while a request
/// body streams through, the bound is the request's deadline (a 408 when it
/// passes), and the integration's clock restarts once the body is sent.
struct Clock {
    until: Cell<Instant>,
    uploading: Cell<bool>,
}

/// Sends head and body, then reads the response head and writes its client version
/// into `c.out`.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    c: &mut Client,
    up: &mut UpConn,
    req: &Request,
    has_body: bool,
    limits: &Limits,
    shard: &Shard,
    clock: &Clock,
    target: &ProxyTarget,
) -> Result<Answered, ExchangeError> {
    up.buf.clear();
    up.pos = 0;
    if body::write_all(&mut up.stream, &mut c.up_head, limits.send_timeout)
        .await
        .is_err()
    {
        return Err(ExchangeError::Stale);
    }
    if has_body {
        if req.expect_continue && send_continue(c).await.is_err() {
            return Err(ExchangeError::Failed(Failed::Abort));
        }
        let encode = if req.framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Raw
        };
        let mut src = Source {
            stream: &mut c.stream,
            buf: &mut c.buf,
            pos: &mut c.pos,
            read_timeout: limits.idle_timeout,
            deadline: Some(req.deadline),
        };
        clock.uploading.set(true);
        clock.until.set(clock.until.get().max(req.deadline));
        if let Err(e) = body::pump(
            &mut src,
            Some(body::Sink {
                stream: &mut up.stream,
                stalled: limits.send_timeout,
            }),
            req.framing,
            encode,
            &mut c.out,
            limits.max_body_bytes,
        )
        .await
        {
            return Err(ExchangeError::Failed(match e {
                PumpError::Write(_) => {
                    Failed::Answer(GatewayError::UpstreamFailed("request body write failed"))
                }
                other => body_error(other).map_or(Failed::Abort, Failed::Answer),
            }));
        }
        clock.uploading.set(false);
        clock.until.set(Instant::now() + target.timeout);
    }
    loop {
        let mut headers = parse::headers();
        if up.pos < up.buf.len() {
            match parse::parse_response(&up.buf[up.pos..], &mut headers, req.is_head) {
                Ok(Some((head, hdrs))) => {
                    if (100..200).contains(&head.status) {
                        if head.status == 101 && req.websocket {
                            c.outcome.status = 101;
                            c.outcome.integration_us =
                                Some(c.outcome.sent.elapsed().as_micros() as u64);
                            let date = *shard.date.borrow_mut().now();
                            write_upgrade_head(&mut c.out, hdrs, date, &req.tag);
                            up.pos += head.head_len;
                            return Ok(Answered {
                                framing: Framing::UntilClose,
                                upstream_close: true,
                                client_persist: Persist::Close,
                                headers_from: 0,
                                storable: false,
                                vary: Vec::new(),
                                upgraded: true,
                            });
                        }
                        if head.status == 101 {
                            return Err(fail("protocol switch without an upgrade request"));
                        }
                        up.pos += head.head_len;
                        continue;
                    }
                    if req.retry && matches!(head.status, 502 | 503) {
                        return Err(ExchangeError::Status(head.status));
                    }
                    let date = *shard.date.borrow_mut().now();
                    // A drain that began while the upstream worked closes this connection.
                    let persist = shard.persist(req.persist);
                    c.outcome.status = head.status;
                    c.outcome.integration_us = Some(c.outcome.sent.elapsed().as_micros() as u64);
                    c.outcome.bytes = match head.framing {
                        Framing::Length(n) if !req.is_head => n,
                        _ => 0,
                    };
                    let mut a = write_response_head(
                        &mut c.out,
                        &head,
                        hdrs,
                        req.is_head,
                        persist,
                        date,
                        &req.tag,
                    );
                    if let Some(maps) = req.mapping.as_ref().and_then(|m| m.for_status(head.status))
                    {
                        let head_len = c.out.len();
                        if let Some((status, _)) =
                            crate::proxy::remap::response_head(&mut c.out, head_len, maps, &req.tag)
                        {
                            c.outcome.status = status;
                        }
                        // Mapped heads are not stored (the cache keeps upstream heads).
                        up.pos += head.head_len;
                        return Ok(a);
                    }
                    if req.fill.is_some()
                        && !req.is_head
                        && head.status == 200
                        && matches!(head.framing, Framing::Length(n) if n <= crate::policy::cache::MAX_CACHED_BODY)
                    {
                        if let Some(vary) = storable(hdrs) {
                            // The request's values for a Vary come from its head,
                            // still at the front of the client buffer when it had
                            // no body.
                            a.storable = vary.is_empty() || req.framing == Framing::None;
                            a.vary = vary;
                        }
                    }
                    up.pos += head.head_len;
                    return Ok(a);
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e.0)),
            }
        }
        if up.buf.len() - up.pos >= MAX_RESPONSE_HEAD {
            return Err(fail("response head too large"));
        }
        match body::read_more(
            &mut up.stream,
            &mut up.buf,
            crate::upstream::pool::UPSTREAM_BUF,
        )
        .await
        {
            Ok(0) | Err(_) if up.buf.is_empty() => return Err(ExchangeError::Stale),
            Ok(0) => return Err(fail("closed inside the response head")),
            Err(_) => return Err(fail("reset inside the response head")),
            Ok(_) => {}
        }
    }
}

/// An upstream's response head larger than this is refused (nginx's default
/// `proxy_buffer_size` is 4-8 KiB; 64 KiB leaves room for large cookies).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

fn fail(why: &'static str) -> ExchangeError {
    tracing::warn!(reason = why, "invalid response from integration");
    ExchangeError::Failed(Failed::Answer(GatewayError::UpstreamFailed(why)))
}

pub fn write_response_head(
    out: &mut Vec<u8>,
    head: &parse::ResponseHead<'_>,
    headers: &[httparse::Header<'_>],
    is_head: bool,
    persist: Persist,
    date: [u8; crate::clock::HTTP_DATE_LEN],
    tag: &Tag,
) -> Answered {
    let streamed = matches!(head.framing, Framing::Chunked | Framing::UntilClose);
    let client_persist = match persist {
        // An HTTP/1.0 client cannot take chunked: delimit by closing.
        Persist::KeepAlive10 if streamed => Persist::Close,
        p => p,
    };
    out.clear();
    respond::status_line(out, head.status, head.reason.as_bytes());
    respond::common_headers(out, &date, tag, client_persist);
    let headers_from = out.len();
    // The upstream's Content-Length stays meaningful where there is no body to frame.
    let keep_length = is_head || head.status == 304;
    respond::copy_headers(out, headers, |n| {
        n.eq_ignore_ascii_case(b"date")
            || n.eq_ignore_ascii_case(b"apigw-requestid")
            || (tag.cors_api && n.len() > 15 && n[..15].eq_ignore_ascii_case(b"access-control-"))
    });
    match head.framing {
        Framing::Length(n) => respond::content_length(out, n),
        Framing::None if keep_length => {
            if let Some(n) = head.content_length {
                respond::content_length(out, n);
            }
        }
        Framing::None if head.status == 204 => {}
        Framing::None => respond::content_length(out, 0),
        Framing::Chunked | Framing::UntilClose => {
            if client_persist == Persist::KeepAlive {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    Answered {
        framing: head.framing,
        upstream_close: head.close,
        client_persist,
        headers_from,
        storable: false,
        vary: Vec::new(),
        upgraded: false,
    }
}

/// Whether the response headers allow caching: `None` with `Set-Cookie`,
/// `Cache-Control` `no-store` or `private`, or `Vary: *`; else the header names
/// `Vary` lists (lower case, `\n`-separated; empty without `Vary`).
fn storable(headers: &[httparse::Header<'_>]) -> Option<Vec<u8>> {
    let mut vary = Vec::new();
    for h in headers {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"set-cookie") {
            return None;
        }
        if n.eq_ignore_ascii_case(b"cache-control")
            && parse::tokens(h.value)
                .any(|d| d.eq_ignore_ascii_case(b"no-store") || d.eq_ignore_ascii_case(b"private"))
        {
            return None;
        }
        if n.eq_ignore_ascii_case(b"vary") {
            for name in parse::tokens(h.value) {
                if name == b"*" {
                    return None;
                }
                if !name.is_empty() {
                    vary.extend(name.iter().map(u8::to_ascii_lowercase));
                    vary.push(b'\n');
                }
            }
        }
    }
    Some(vary)
}
