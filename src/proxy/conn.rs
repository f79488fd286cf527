//! One client connection: read a head, then parse → route → integration → respond, in
//! order, for each request on the connection (keep-alive and pipelining).

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::http::stream::{Stream, TlsStream};

use crate::http::body::{self, Encode, Source};
use crate::http::error::GatewayError;
use crate::http::parse::{self, Framing};
use crate::http::respond::{self, CacheStatus, Persist, Tag};
use crate::plan::{Integration, ListenerPlan, Plan};
use crate::policy::access::Pass;
use crate::policy::cache::Lookup;
use crate::proxy::client::{
    body_error, read_ready, refuse, send_continue, timed_read, Client, Kept, Outcome, CONN_BUF,
};
use crate::proxy::forward;
use crate::proxy::pipeline::{do_work, look_again, prepare, Coalesce, Facts, Leading, Prepared};
use crate::proxy::shard::{InFlight, Shard};
use crate::proxy::verdict::Action;

// `Ready` is the common case and lives on the stack once per request; boxing it
// would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Ready(Prepared),
    /// Closed or idle: nothing to answer.
    Gone,
    /// Nothing is waiting between requests: park the connection.
    Park,
    /// Refused before a head could be parsed.
    Refuse(GatewayError),
}

/// Serves a connection until it closes. The task's future is this async
/// block's, sized for what a parked connection holds: its socket, who it is
/// (`Kept`, captured once: an async body keeps its inputs for its whole life)
/// and the wait. Each busy spell is one boxed future (`busy`), which owns the
/// request state (`Client`: buffers, outcome) and is freed when it ends.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<Plan>,
    listener: usize,
    shard: Rc<Shard>,
) -> impl Future<Output = ()> {
    // On Linux the connection has the listener's TCP_NODELAY already
    // (`crate::reuseport_listener`).
    #[cfg(not(target_os = "linux"))]
    let _ = stream.set_nodelay(true);
    let mut kept = Kept {
        stream: Stream::Plain(stream),
        peer,
        tls: None,
    };
    let (mut plan, mut listener) = (plan, listener);
    async move {
        if let Some(t) = &plan.listeners[listener].tls {
            let Stream::Plain(tcp) = kept.stream else {
                return;
            };
            let limits = &plan.listeners[listener].limits;
            // Boxed: the handshake's state is not kept for the connection's life.
            match Box::pin(accept_tls(tcp, kept.peer, t, limits, shard.uring)).await {
                Some((stream, session)) => {
                    kept = Kept {
                        stream,
                        peer: kept.peer,
                        tls: Some(session),
                    };
                }
                None => return,
            }
        }
        let mut woken = false;
        // The new plan dropped this connection's listener: one more request on
        // the old plan, answered with `Connection: close`.
        let mut last = false;
        loop {
            let send_timeout = plan.listeners[listener].limits.send_timeout;
            let c = Client::new(kept, send_timeout, &shard);
            // Taken apart at once: a `Spell` partly moved out of would keep
            // its storage (the whole `Client`) in this future across the park.
            let Spell {
                next,
                client: c,
                plan: p,
                listener: li,
                last: l,
            } = Box::pin(busy(c, plan, listener, &shard, woken, last)).await;
            (plan, listener, last) = (p, li, l);
            match next {
                // (`busy` goes on with a new plan itself.)
                Next::Close | Next::Switch(_) => {
                    c.release(&shard);
                    return;
                }
                Next::WebSocket(u) => {
                    // The session gets a task of its own, sized for it; this
                    // one, sized for the request path's waits, ends here. (The
                    // buffers go with it: its first frames may be in them.)
                    monoio::spawn(websocket(Box::new(c), plan, shard, u));
                    return;
                }
                Next::Park => {
                    // Buffers go back to the shard, as nginx frees its buffers
                    // on an idle keep-alive connection; the rest of the request
                    // state went with the busy spell's box.
                    kept = c.release(&shard);
                    let idle = plan.listeners[listener].limits.idle_timeout;
                    if !park(&mut kept.stream, &shard, idle).await {
                        return;
                    }
                    woken = true;
                }
            }
        }
    }
}

/// What a busy spell ends with: why, the connection, and the plan it ended on.
struct Spell {
    next: Next,
    client: Client,
    plan: Arc<Plan>,
    listener: usize,
    last: bool,
}

/// Serves requests until the connection closes, parks or upgrades, going on
/// with a new plan after a reload (a switching connection keeps its buffers:
/// its next request may be in them already). One boxed future per spell: the
/// request path's state and the connection's `Client`, in one allocation.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn busy(
    mut c: Client,
    mut plan: Arc<Plan>,
    mut listener: usize,
    shard: &Shard,
    mut woken: bool,
    mut last: bool,
) -> impl Future<Output = Spell> + '_ {
    async move {
        loop {
            let next = active(&mut c, &plan, &plan.listeners[listener], shard, woken, last).await;
            let Next::Switch(w) = next else {
                return Spell {
                    next,
                    client: c,
                    plan,
                    listener,
                    last,
                };
            };
            // A reload: the next request uses the new plan; a listener it
            // dropped closes its connections between requests.
            woken = w;
            match shard.switch(&plan, listener) {
                Some((p, li)) => {
                    c.send_timeout = p.listeners[li].limits.send_timeout;
                    (plan, listener) = (p, li);
                }
                None if !last => last = true,
                None => {
                    return Spell {
                        next: Next::Close,
                        client: c,
                        plan,
                        listener,
                        last,
                    }
                }
            }
        }
    }
}

/// A WebSocket API connection after its handshake passed the pipeline:
/// `$connect` and the 101 (a boxed future, gone once answered), then the
/// session, in a task whose future is the session's and a few pointers.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn websocket(
    mut c: Box<Client>,
    plan: Arc<Plan>,
    shard: Rc<Shard>,
    u: Box<crate::proxy::websocket::Upgrade>,
) -> impl Future<Output = ()> {
    // An async block: it keeps its inputs once (an async fn keeps them twice).
    async move {
        let live = {
            let _in_flight = InFlight::enter(&shard);
            let started = u.started;
            let live = Box::pin(crate::proxy::websocket::open(&mut c, &plan, &shard, u)).await;
            // The handshake's request is recorded once answered (its latency is
            // the handshake's, not the connection's life), and its outcome not kept.
            record(&mut c.outcome, &plan, &shard, started, &Flags::default());
            live
        };
        if let Some(live) = live {
            crate::proxy::websocket::serve(c, plan, shard, live, None).await;
        }
    }
}

/// What a connection does after `active`.
enum Next {
    Close,
    /// Wait, holding no buffer, for the next request.
    Park,
    /// The worker runs a new plan: go on with it (`woken` as it was).
    Switch(bool),
    /// A WebSocket API handshake passed the pipeline: `$connect`, then the
    /// session, run by a task of their own (`websocket`) after this request's
    /// state (the large future of `active`) and the connection's task are
    /// gone, so an open connection holds only the session's.
    WebSocket(Box<crate::proxy::websocket::Upgrade>),
}

/// The TLS handshake of a connection on an HTTPS listener, within `wait`; a
/// failure is logged with the peer and the reason and closes only this connection.
async fn accept_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: &crate::http::tls::ListenerTls,
    limits: &crate::plan::Limits,
    uring: bool,
) -> Option<(Stream, Box<crate::http::tls::Session>)> {
    let session = match rustls::ServerConnection::new(tls.config()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot start TLS");
            return None;
        }
    };
    let mut t = Box::new(TlsStream::new(tcp, session, uring));
    match monoio::time::timeout(limits.header_timeout, t.handshake()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::warn!(%peer, "TLS handshake timed out");
            return None;
        }
    }
    let session = Box::new(crate::http::tls::Session::of(&t.conn, &tls.spec));
    Some((Stream::Server(t), session))
}

/// Waits, holding no buffer and no timer, until the connection is readable
/// (`true`) or `idle` has passed or it failed (`false`).
fn park<'a>(stream: &mut Stream, shard: &'a Shard, idle: Duration) -> Park<'a> {
    if stream.has_buffered() {
        return Park::Ready;
    }
    stream.release();
    match stream.tcp().readiness(true) {
        Ok(readable) => Park::Waiting {
            readable,
            slot: crate::proxy::shard::Parking::new(shard, crate::clock::coarse_now() + idle),
        },
        Err(_) => Park::Failed,
    }
}

/// A parked connection's wait: readiness (the driver's operation itself) and a
/// slot of the shard's parked deadlines, nothing else.
enum Park<'a> {
    Ready,
    Failed,
    Waiting {
        readable: monoio::net::Readiness,
        slot: crate::proxy::shard::Parking<'a>,
    },
}

impl Future for Park<'_> {
    type Output = bool;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        match &mut *self {
            Park::Ready => Poll::Ready(true),
            Park::Failed => Poll::Ready(false),
            Park::Waiting { readable, slot } => {
                if let Poll::Ready(r) = std::pin::Pin::new(readable).poll(cx) {
                    return Poll::Ready(r.is_ok());
                }
                if slot.expired(cx.waker()) {
                    return Poll::Ready(false);
                }
                Poll::Pending
            }
        }
    }
}

/// Serves requests until the connection closes (`false`) or has no next request
/// waiting (`true`: park it). `woken`: readiness was just seen.
async fn active(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    mut woken: bool,
    mut last: bool,
) -> Next {
    'requests: loop {
        if c.pos > 0 {
            // Keep a pipelined next request at the front of the buffer.
            c.buf.drain(..c.pos);
            c.pos = 0;
        }
        if !shard.runs(plan) {
            if !last {
                return Next::Switch(woken);
            }
            last = false;
        }
        let mut pass = Pass::default();
        let read = read_head(c, plan, lp, shard, woken, &mut pass).await;
        let started = Instant::now();
        c.outcome = Outcome::at(started);
        let mut prepared = match read {
            HeadRead::Ready(p) => p,
            HeadRead::Gone => return Next::Close,
            HeadRead::Park => return Next::Park,
            HeadRead::Refuse(err) => {
                tracing::debug!(peer = %c.peer, %err, "request refused");
                let tag = Tag::from(shard.next_request_id());
                let _ = refuse(c, shard, err, &tag, Persist::Close, false).await;
                record(&mut c.outcome, plan, shard, started, &Flags::default());
                return Next::Close;
            }
        };
        c.outcome.route = prepared.route;
        c.outcome.log = prepared.log.take();
        c.outcome.trace = prepared.trace;
        c.outcome.span = prepared.span.take();
        c.outcome.request_id = prepared.tag.id;
        woken = false;
        let _in_flight = InFlight::enter(shard);
        while matches!(prepared.action, Action::Work(_)) {
            let Action::Work(work) = std::mem::replace(&mut prepared.action, Action::Preflight)
            else {
                break;
            };
            pass.rounds += 1;
            pass.id = Some(prepared.tag.id);
            match do_work(c, plan, lp, shard, &prepared, work, &mut pass).await {
                Ok(()) if pass.rounds <= 4 => {
                    prepared = look_again(c, plan, lp, shard, &mut pass, prepared.deadline);
                }
                Ok(()) => {
                    prepared.action =
                        Action::Refuse(GatewayError::AuthorizerFailed("too many rounds"));
                }
                Err(Some(err)) => {
                    tracing::debug!(peer = %c.peer, %err, "request refused");
                    // A body, read or not, is not skipped: close after it.
                    let persist = prepared.persist_unread();
                    c.pos = prepared.head_len;
                    let keep =
                        refuse(c, shard, err, &prepared.tag, persist, prepared.is_head).await;
                    record(&mut c.outcome, plan, shard, started, &Flags::default());
                    if !keep || shard.draining.get() {
                        return Next::Close;
                    }
                    continue 'requests;
                }
                Err(None) => return Next::Close,
            }
        }
        let flags = Flags {
            throttled: matches!(prepared.action, Action::Refuse(GatewayError::Throttled)),
            quota: matches!(prepared.action, Action::Refuse(GatewayError::QuotaExceeded)),
            cache: match prepared.tag.cache {
                Some(CacheStatus::Hit) => Some(true),
                Some(CacheStatus::Miss) => Some(false),
                _ => None,
            },
        };
        if let Action::WsConnect(..) = prepared.action {
            // The WebSocket session runs outside this future (see `Next::WebSocket`).
            let Action::WsConnect(stage, route, opening) =
                std::mem::replace(&mut prepared.action, Action::Preflight)
            else {
                return Next::Close;
            };
            c.pos = prepared.head_len;
            return Next::WebSocket(Box::new(crate::proxy::websocket::Upgrade {
                tag: prepared.tag,
                stage,
                route,
                opening,
                started,
            }));
        }
        let keep = handle(c, plan, lp, shard, prepared).await;
        record(&mut c.outcome, plan, shard, started, &flags);
        if !keep || shard.draining.get() {
            return Next::Close;
        }
    }
}

/// What a request's action says about it, for the metrics.
#[derive(Default)]
struct Flags {
    throttled: bool,
    quota: bool,
    cache: Option<bool>,
}

/// Counts a finished request in this worker's metrics.
fn record(o: &mut Outcome, plan: &Plan, shard: &Shard, started: Instant, f: &Flags) {
    let sample = crate::observe::metrics::Sample {
        status: o.status,
        latency_us: started.elapsed().as_micros() as u64,
        integration_us: o.integration_us,
        throttled: f.throttled,
        quota: f.quota,
        cache: f.cache,
    };
    if plan.metrics_on {
        let slot = o.route.map(|(s, r)| plan.stages[s].routes[r].metric_slot);
        plan.metrics.record(shard.id, slot, &sample);
    }
    if let (Some(exporter), Some(facts), Some(trace)) = (&plan.telemetry, o.span.take(), o.trace) {
        let end_ns = crate::clock::unix_ns();
        let (name, api, stage) = match o.route {
            Some((s, r)) => {
                let st = &plan.stages[s];
                (
                    st.routes[r].key.as_str(),
                    st.api.as_str(),
                    st.stage.as_str(),
                )
            }
            None => ("unrouted", "", ""),
        };
        let span = crate::observe::telemetry::Span {
            trace_id: trace.id,
            span_id: trace.span,
            parent: trace.parent,
            name: name.into(),
            start_ns: end_ns.saturating_sub(sample.latency_us * 1000),
            end_ns,
            status: o.status,
            facts,
            api: api.into(),
            stage: stage.into(),
            request_id: o.request_id,
        };
        let mut spans = shard.spans.borrow_mut();
        spans.push(span);
        if spans.len() >= 256 {
            exporter.send(std::mem::take(&mut *spans));
        }
    }
    let Some(facts) = o.log.take() else {
        return;
    };
    let stage = &plan.stages[facts.stage];
    let Some(spec) = &stage.access_log else {
        return;
    };
    let route_key = o
        .route
        .map_or("-", |(s, r)| plan.stages[s].routes[r].key.as_str());
    let response = crate::observe::accesslog::Response {
        route_key,
        api: &stage.api,
        stage: &stage.stage,
        status: o.status,
        bytes: o.bytes,
        integration_us: o.integration_us,
        latency_us: sample.latency_us,
        error: o.error.as_deref(),
        retries: o.retries,
        canary: stage.is_canary_request(),
    };
    shard.log_line(&plan.logs, spec.sink, |out| {
        crate::observe::accesslog::format_line(out, &spec.format, &facts, &response)
    });
}

async fn read_head(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    woken: bool,
    pass: &mut Pass,
) -> HeadRead {
    let limits = lp.limits;
    let mut first_byte: Option<Instant> = None;
    loop {
        if !c.buf.is_empty() {
            let mut headers = parse::headers();
            match parse::parse_request(&c.buf, &mut headers, limits.max_header_bytes, limits.paths)
            {
                Ok(Some((head, hdrs))) => {
                    let origin = forward::Origin {
                        peer: c.peer,
                        local_port: lp.bind.port(),
                        tls: c.tls.as_deref(),
                    };
                    let deadline = first_byte.unwrap_or_else(crate::clock::coarse_now)
                        + limits.request_timeout;
                    let facts = Facts {
                        head: &head,
                        headers: hdrs,
                        plan,
                        lp,
                        shard,
                        origin: &origin,
                        body: None,
                        deadline,
                    };
                    return HeadRead::Ready(prepare(&facts, &mut c.up_head, pass));
                }
                Ok(None) => {}
                Err(e) => return HeadRead::Refuse(GatewayError::BadHead(e)),
            }
        }
        let spare =
            (limits.max_header_bytes - c.buf.len().min(limits.max_header_bytes)).clamp(1, CONN_BUF);
        let read = if c.buf.is_empty() && first_byte.is_none() {
            // Between requests: read only what is already there, else park.
            let now = if shard.uring {
                // A read on io_uring cannot be dropped safely once submitted (the
                // kernel may fill the buffer): read only after readiness was seen.
                if woken {
                    // Idle past the limit reads as a close.
                    Some(
                        timed_read(c, limits.idle_timeout, spare)
                            .await
                            .unwrap_or(Ok(0)),
                    )
                } else {
                    None
                }
            } else {
                read_ready(&mut c.stream, &mut c.buf, spare).await
            };
            match now {
                Some(r) => r,
                None => return HeadRead::Park,
            }
        } else {
            let wait = match first_byte {
                None => limits.idle_timeout,
                // The head counts towards the whole request's time too.
                Some(t) => match limits
                    .header_timeout
                    .min(limits.request_timeout)
                    .checked_sub(t.elapsed())
                {
                    Some(d) => d,
                    None => return HeadRead::Refuse(GatewayError::RequestTimeout),
                },
            };
            match timed_read(c, wait, spare).await {
                Some(r) => r,
                None if first_byte.is_some() => {
                    return HeadRead::Refuse(GatewayError::RequestTimeout)
                }
                None => return HeadRead::Gone,
            }
        };
        match read {
            Ok(0) | Err(_) => return HeadRead::Gone,
            Ok(_) => {
                first_byte.get_or_insert_with(crate::clock::coarse_now);
            }
        }
    }
}

/// Writes a cached response: status line and this response's headers, then the
/// stored header lines and body as they are. `true` if it was all written.
async fn serve_hit(
    c: &mut Client,
    shard: &Shard,
    entry: std::rc::Rc<crate::policy::cache::Entry>,
    tag: &Tag,
    persist: Persist,
    is_head: bool,
) -> bool {
    let persist = shard.persist(persist);
    let date = *shard.date.borrow_mut().now();
    c.outcome.status = 200;
    c.outcome.bytes = if is_head { 0 } else { entry.body.len() as u64 };
    c.out.clear();
    respond::status_line(&mut c.out, 200, b"OK");
    respond::common_headers(&mut c.out, &date, tag, persist);
    let age = crate::clock::unix_s().saturating_sub(entry.stored_s);
    c.out.extend_from_slice(b"age: ");
    c.out
        .extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(&entry.head);
    if is_head || entry.body.is_empty() {
        return body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
            .await
            .is_ok();
    }
    if c.out.capacity() - c.out.len() >= entry.body.len() {
        c.out.extend_from_slice(&entry.body);
        return body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
            .await
            .is_ok();
    }
    if body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_err()
    {
        return false;
    }
    let len = entry.body.len();
    let body = crate::policy::cache::BodyBuf(entry);
    body::send(&mut c.stream, body, 0, len, c.send_timeout)
        .await
        .0
        .is_ok()
}

/// Runs one request to its end; `true` to keep the connection.
async fn handle(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    p: Prepared,
) -> bool {
    c.pos = p.head_len;
    let has_body = p.framing != Framing::None;
    // An unread body is still on the wire: close rather than read it.
    let unread = p.persist_unread();
    // What the integration paths that read the body whole need of the request
    // (captures the fields it names, so `p.action` can still be matched).
    let asked = || crate::proxy::invoke::Asked {
        tag: &p.tag,
        persist: p.persist,
        is_head: p.is_head,
        framing: p.framing,
        expect_continue: p.expect_continue,
        deadline: p.deadline,
    };
    match p.action {
        Action::Work(_) => false,
        Action::Preflight => {
            let persist = unread;
            c.out.clear();
            let date = *shard.date.borrow_mut().now();
            let persist = shard.persist(persist);
            respond::no_content(&mut c.out, &date, &p.tag, persist);
            c.outcome.status = 204;
            body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
                .await
                .is_ok()
                && !persist.closes()
        }
        Action::Refuse(err) => {
            let persist = unread;
            tracing::debug!(peer = %c.peer, %err, "request refused");
            refuse(c, shard, err, &p.tag, persist, p.is_head).await
        }
        Action::Mock(stage, route) => {
            let Integration::Mock(mock) = &plan.stages[stage].routes[route].integration else {
                return false;
            };
            if has_body {
                if p.expect_continue && send_continue(c).await.is_err() {
                    return false;
                }
                let mut src = Source {
                    stream: &mut c.stream,
                    buf: &mut c.buf,
                    pos: &mut c.pos,
                    read_timeout: lp.limits.idle_timeout,
                    deadline: Some(p.deadline),
                };
                if let Err(e) = body::pump(
                    &mut src,
                    None,
                    p.framing,
                    Encode::Raw,
                    &mut c.out,
                    lp.limits.max_body_bytes,
                )
                .await
                {
                    return match body_error(e) {
                        Some(err) => refuse(c, shard, err, &p.tag, Persist::Close, p.is_head).await,
                        None => false,
                    };
                }
            }
            c.out.clear();
            let date = *shard.date.borrow_mut().now();
            // A drain that began while the body was read closes this connection.
            let persist = shard.persist(p.persist);
            respond::mock(&mut c.out, mock, &date, &p.tag, persist, p.is_head);
            c.outcome.status = mock.status;
            c.outcome.bytes = if p.is_head { 0 } else { mock.body.len() as u64 };
            body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
                .await
                .is_ok()
                && !persist.closes()
        }
        Action::Connections(stage, call) => {
            let asked = asked();
            if !crate::proxy::invoke::skip_body(c, lp, shard, &asked).await {
                return false;
            }
            match crate::proxy::manage::manage(shard, &plan.stages[stage], &call).await {
                Ok(ans) => {
                    let persist = shard.persist(p.persist);
                    c.out.clear();
                    let date = *shard.date.borrow_mut().now();
                    crate::proxy::invoke::write_answer(
                        &mut c.out, &ans, &date, &p.tag, persist, p.is_head,
                    );
                    c.outcome.status = ans.status;
                    body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
                        .await
                        .is_ok()
                        && !persist.closes()
                }
                Err(err) => refuse(c, shard, err, &p.tag, p.persist, p.is_head).await,
            }
        }
        // Taken by `active` before it gets here.
        Action::WsConnect(..) => false,
        Action::Invoke(stage, route, inv) => {
            let asked = asked();
            crate::proxy::invoke::invoke(c, plan, lp, shard, asked, stage, route, inv).await
        }
        Action::CacheHit(entry) => {
            let persist = unread;
            serve_hit(c, shard, entry, &p.tag, persist, p.is_head).await && !persist.closes()
        }
        Action::Proxy(stage, route, pick) => {
            let Integration::HttpProxy(target) = &plan.stages[stage].routes[route].integration
            else {
                return false;
            };
            let mut tag = p.tag.clone();
            let _leading = match p.coalesce {
                Coalesce::Lead(stage, hash) => Some(Leading(shard, stage, hash)),
                Coalesce::Wait(stage_id, hash) => {
                    // Bounded like the fetch itself; after that, fetch alone.
                    let done = std::future::poll_fn(|cx| {
                        shard.fills.borrow_mut().poll_done(stage_id, hash, cx)
                    });
                    let _ = monoio::time::timeout(target.timeout, done).await;
                    let hit = p.fill.as_ref().and_then(|f| {
                        if f.owner != Arc::as_ptr(&plan.cache) as usize
                            || !shard.caches.borrow().is_for(&plan.cache)
                        {
                            return None;
                        }
                        match shard.caches.borrow_mut().get(
                            f.stage,
                            &f.key,
                            crate::clock::unix_ms(),
                        ) {
                            // An entry with a Vary may be another variant: fetch.
                            Lookup::Hit(e) if e.vary.is_none() => Some((f.route, e)),
                            _ => None,
                        }
                    });
                    // Served from what the leader stored, or (not stored: not a 200,
                    // say) fetched by this request itself.
                    let route_id = hit.as_ref().map_or(route, |h| h.0);
                    shard
                        .caches
                        .borrow()
                        .count(stage_id, route_id, hit.is_some());
                    if let Some((_, entry)) = hit {
                        tag.cache = Some(CacheStatus::Hit);
                        let persist = unread;
                        return serve_hit(c, shard, entry, &tag, persist, p.is_head).await
                            && !persist.closes();
                    }
                    None
                }
                Coalesce::None => None,
            };
            let req = forward::Request {
                framing: p.framing,
                persist: p.persist,
                is_head: p.is_head,
                expect_continue: p.expect_continue,
                idempotent: p.idempotent,
                tag,
                fill: p.fill,
                deadline: p.deadline,
                held: false,
                retry: false,
                max_conns: u32::MAX,
                websocket: pick.websocket,
                mapping: plan.stages[stage].routes[route]
                    .mapping
                    .as_ref()
                    .filter(|m| !m.response.is_empty())
                    .cloned(),
            };
            match crate::proxy::send::send(c, shard, plan, target, &pick, req, &lp.limits).await {
                Ok(keep) => keep,
                Err(forward::Failed::Answer(err)) => {
                    let persist = if err.refusal().close {
                        Persist::Close
                    } else {
                        p.persist
                    };
                    refuse(c, shard, err, &p.tag, persist, p.is_head).await
                }
                Err(forward::Failed::Abort) => false,
                Err(forward::Failed::Retry(err)) => {
                    refuse(c, shard, err, &p.tag, p.persist, p.is_head).await
                }
            }
        }
    }
}
