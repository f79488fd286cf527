//! One client connection: read a head, then parse → route → integration → respond, in
//! order, for each request on the connection (keep-alive and pipelining).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::RawBuf;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::http::stream::{Stream, TlsStream};

use crate::config::UnauthorizedStrategy;
use crate::http::body::{self, Encode, PumpError, Source};
use crate::http::error::GatewayError;
use crate::http::parse::{self, Framing, MAX_HEADERS};
use crate::http::respond::{self, CacheStatus, Persist, Tag};
use crate::ids::{RouteId, StageId};
use crate::plan::{Integration, ListenerPlan, Plan, RoutePlan, StagePlan};
use crate::policy::access::{Authorizer, BodyRead, Grant, Pass, Work};
use crate::policy::cache::Lookup;
use crate::policy::keys::Binding;
use crate::proxy::forward;
use crate::proxy::shard::{InFlight, Shard};
use crate::route;

/// First read buffer of a connection; grows up to `max_header_bytes` for a head and
/// to `body::BODY_READ` of spare room while streaming a body.
const CONN_BUF: usize = 4 * 1024;

/// A client connection's socket and reused buffers.
pub struct Client {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// What the TLS handshake established (HTTPS listeners only).
    pub tls: Option<Box<crate::http::tls::Session>>,
    /// Bytes read; `pos..` not yet consumed.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// Response heads and chunk framing written to the client.
    pub out: Vec<u8>,
    /// The upstream request head.
    pub up_head: Vec<u8>,
    /// What the request being served did (metrics, access log).
    pub outcome: Outcome,
    /// The listener's `send_timeout_ms`: a write to this client that makes no
    /// progress for this long ends the connection (slow read).
    pub send_timeout: Duration,
}

/// What one request did: its route, status, sizes and times.
#[derive(Debug)]
pub struct Outcome {
    pub route: Option<(StageId, RouteId)>,
    pub status: u16,
    /// Response body bytes (as framed; 0 for HEAD).
    pub bytes: u64,
    /// When the request went to the integration.
    pub sent: Instant,
    pub integration_us: Option<u64>,
    /// For the access log line, when the stage logs.
    pub log: Option<Box<crate::observe::accesslog::Facts>>,
    /// The refusal's message (logged requests only).
    pub error: Option<Box<str>>,
    pub trace: Option<crate::observe::trace::Trace>,
    pub span: Option<Box<crate::observe::telemetry::SpanFacts>>,
    pub request_id: crate::ids::RequestId,
}

impl Outcome {
    fn at(started: Instant) -> Self {
        Self {
            route: None,
            status: 0,
            bytes: 0,
            sent: started,
            integration_us: None,
            log: None,
            error: None,
            trace: None,
            span: None,
            request_id: [b'-'; 16],
        }
    }
}

/// What a parsed head asks for, with everything borrowed from the buffer resolved.
struct Prepared {
    head_len: usize,
    /// The whole request (head and body) must have arrived by then
    /// (`request_timeout_ms` from its first byte).
    deadline: Instant,
    framing: Framing,
    persist: Persist,
    is_head: bool,
    expect_continue: bool,
    idempotent: bool,
    tag: Tag,
    action: Action,
    /// A cache miss to store once the upstream answers.
    fill: Option<crate::policy::cache::Fill>,
    coalesce: Coalesce,
    /// The stage and route it matched.
    route: Option<(StageId, RouteId)>,
    /// What its access log line needs (stages that log).
    log: Option<Box<crate::observe::accesslog::Facts>>,
    trace: Option<crate::observe::trace::Trace>,
    /// A sampled request's span, when spans are exported.
    span: Option<Box<crate::observe::telemetry::SpanFacts>>,
}

/// A cache miss's part in coalescing: fetching for others, or waiting for another.
#[derive(Clone, Copy)]
enum Coalesce {
    None,
    /// (stage, key hash)
    Lead(StageId, u64),
    Wait(StageId, u64),
}

/// Ends a leading fetch however it ends (stored, failed, cancelled): the requests
/// waiting for it go on.
struct Leading<'a>(&'a Shard, StageId, u64);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.fills.borrow_mut().done(self.1, self.2);
    }
}

enum Action {
    Refuse(GatewayError),
    /// Something to do (read the body, ask an authorizer) before deciding.
    Work(Work),
    /// A CORS preflight, answered by the gateway (headers in the tag).
    Preflight,
    Mock(StageId, RouteId),
    /// Served from this worker's cache.
    CacheHit(std::rc::Rc<crate::policy::cache::Entry>),
    /// The upstream head is in `Client::up_head`.
    Proxy(StageId, RouteId),
}

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

pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<Plan>,
    listener: usize,
    shard: Rc<Shard>,
) -> impl std::future::Future<Output = ()> {
    let _ = stream.set_nodelay(true);
    serve_client(stream, peer, plan, listener, shard)
}

async fn serve_client(
    tcp: TcpStream,
    peer: SocketAddr,
    plan: Arc<Plan>,
    listener: usize,
    shard: Rc<Shard>,
) {
    let lp = &plan.listeners[listener];
    let (stream, tls) = match &lp.tls {
        None => (Stream::Plain(tcp), None),
        // Boxed: the handshake's state is not kept for the connection's life.
        Some(t) => match Box::pin(accept_tls(tcp, peer, t, &lp.limits, shard.uring)).await {
            Some((stream, session)) => (stream, Some(session)),
            None => return,
        },
    };
    // Boxed, so the task's future holds a pointer rather than the connection's
    // state: an idle connection's footprint is mostly this future.
    let mut c = Box::new(Client {
        stream,
        peer,
        tls,
        buf: Vec::new(),
        pos: 0,
        out: Vec::new(),
        up_head: Vec::new(),
        outcome: Outcome::at(Instant::now()),
        send_timeout: lp.limits.send_timeout,
    });
    let (mut plan, mut listener) = (plan, listener);
    let mut woken = false;
    // The new plan dropped this connection's listener: one more request on the
    // old plan, answered with `Connection: close`.
    let mut last = false;
    loop {
        c.buf = shard.take_buf(std::mem::take(&mut c.buf));
        c.out = shard.take_buf(std::mem::take(&mut c.out));
        c.up_head = shard.take_buf(std::mem::take(&mut c.up_head));
        // The request path's state is boxed so that a parked connection holds only
        // `Client` and its park.
        let lp = &plan.listeners[listener];
        let next = Box::pin(active(&mut c, &plan, lp, &shard, woken, last)).await;
        let idle = lp.limits.idle_timeout;
        if !matches!(next, Next::Switch(_)) {
            // Parked (or closing): buffers go back to the shard, as nginx frees its
            // buffers on an idle keep-alive connection. (A switching connection
            // keeps them: its next request may be in them already.)
            shard.give_buf(std::mem::take(&mut c.buf));
            shard.give_buf(std::mem::take(&mut c.out));
            shard.give_buf(std::mem::take(&mut c.up_head));
        }
        match next {
            Next::Close => return,
            Next::Park => {
                if !park(&mut c.stream, &shard, idle).await {
                    return;
                }
                woken = true;
            }
            // A reload: the next request uses the new plan; a listener it dropped
            // closes its connections between requests.
            Next::Switch(w) => {
                woken = w;
                match shard.switch(&plan, listener) {
                    Some((p, li)) => {
                        c.send_timeout = p.listeners[li].limits.send_timeout;
                        (plan, listener) = (p, li);
                    }
                    None if !last => last = true,
                    None => return,
                }
            }
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

/// Waits, holding no buffer and no timer, until the connection is readable (`true`)
/// or `idle` has passed or it failed (`false`).
async fn park(stream: &mut Stream, shard: &Shard, idle: Duration) -> bool {
    if stream.has_buffered() {
        return true;
    }
    stream.release();
    let stream = stream.tcp();
    struct Slot<'a>(&'a Shard, usize);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.parked.borrow_mut().remove(self.1);
        }
    }
    let slot = Slot(
        shard,
        shard.parked.borrow_mut().insert(Instant::now() + idle),
    );
    let mut readable = std::pin::pin!(stream.readable(true));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = readable.as_mut().poll(cx) {
            return Poll::Ready(r.is_ok());
        }
        if shard.parked.borrow_mut().expired(slot.1, cx.waker()) {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
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
                record(c, plan, shard, started, &Flags::default());
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
                    let persist = if prepared.framing == Framing::None {
                        prepared.persist
                    } else {
                        Persist::Close
                    };
                    c.pos = prepared.head_len;
                    let keep =
                        refuse(c, shard, err, &prepared.tag, persist, prepared.is_head).await;
                    record(c, plan, shard, started, &Flags::default());
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
        let keep = handle(c, plan, lp, shard, prepared).await;
        record(c, plan, shard, started, &flags);
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
fn record(c: &mut Client, plan: &Plan, shard: &Shard, started: Instant, f: &Flags) {
    let sample = crate::observe::metrics::Sample {
        status: c.outcome.status,
        latency_us: started.elapsed().as_micros() as u64,
        integration_us: c.outcome.integration_us,
        throttled: f.throttled,
        quota: f.quota,
        cache: f.cache,
    };
    if plan.metrics_on {
        let slot = c
            .outcome
            .route
            .map(|(s, r)| plan.stages[s].routes[r].metric_slot);
        plan.metrics.record(shard.id, slot, &sample);
    }
    if let (Some(exporter), Some(facts), Some(trace)) =
        (&plan.telemetry, c.outcome.span.take(), c.outcome.trace)
    {
        let end_ns = crate::clock::unix_ns();
        let (name, api, stage) = match c.outcome.route {
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
            status: c.outcome.status,
            facts,
            api: api.into(),
            stage: stage.into(),
            request_id: c.outcome.request_id,
        };
        let mut spans = shard.spans.borrow_mut();
        spans.push(span);
        if spans.len() >= 256 {
            exporter.send(std::mem::take(&mut *spans));
        }
    }
    let Some(facts) = c.outcome.log.take() else {
        return;
    };
    let stage = &plan.stages[facts.stage];
    let Some(spec) = &stage.access_log else {
        return;
    };
    let route_key = c
        .outcome
        .route
        .map_or("-", |(s, r)| plan.stages[s].routes[r].key.as_str());
    let response = crate::observe::accesslog::Response {
        route_key,
        api: &stage.api,
        stage: &stage.stage,
        status: c.outcome.status,
        bytes: c.outcome.bytes,
        integration_us: c.outcome.integration_us,
        latency_us: sample.latency_us,
        error: c.outcome.error.as_deref(),
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
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse::parse_request(&c.buf, &mut headers, limits.max_header_bytes, limits.paths)
            {
                Ok(Some((head, hdrs))) => {
                    let origin = forward::Origin {
                        peer: c.peer,
                        local_port: lp.bind.port(),
                        tls: c.tls.as_deref(),
                    };
                    let deadline = first_byte.unwrap_or_else(Instant::now) + limits.request_timeout;
                    let p = prepare(
                        &head,
                        hdrs,
                        plan,
                        lp,
                        shard,
                        &origin,
                        &mut c.up_head,
                        pass,
                        None,
                        deadline,
                    );
                    return HeadRead::Ready(p);
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
                first_byte.get_or_insert_with(Instant::now);
            }
        }
    }
}

/// Looks at a request again after work for it (its head is still at the front of
/// the buffer, and a body read for it right after); its deadline stays.
fn look_again(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    pass: &mut Pass,
    deadline: Instant,
) -> Prepared {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = parse::parse_request(
        &c.buf,
        &mut headers,
        lp.limits.max_header_bytes,
        lp.limits.paths,
    );
    let Ok(Some((head, hdrs))) = parsed else {
        // It parsed the first time; it cannot fail now.
        return Prepared {
            head_len: 0,
            deadline,
            framing: Framing::None,
            persist: Persist::Close,
            is_head: false,
            expect_continue: false,
            idempotent: false,
            tag: Tag::from(shard.next_request_id()),
            action: Action::Refuse(GatewayError::AuthorizerFailed("request lost")),
            fill: None,
            coalesce: Coalesce::None,
            route: None,
            log: None,
            trace: None,
            span: None,
        };
    };
    let origin = forward::Origin {
        peer: c.peer,
        local_port: lp.bind.port(),
        tls: c.tls.as_deref(),
    };
    let read = pass.body.take();
    let body = match &read {
        Some(BodyRead::InBuf(n)) => c.buf.get(head.head_len..head.head_len + n),
        Some(BodyRead::Decoded(v)) => Some(v.as_slice()),
        None => None,
    };
    let p = prepare(
        &head,
        hdrs,
        plan,
        lp,
        shard,
        &origin,
        &mut c.up_head,
        pass,
        body,
        deadline,
    );
    pass.body = read;
    p
}

/// Does the work a request needs; `Err(None)` when the connection is gone.
async fn do_work(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    p: &Prepared,
    work: Work,
    pass: &mut Pass,
) -> Result<(), Option<GatewayError>> {
    match work {
        Work::ReadBody => {
            if p.expect_continue && send_continue(c).await.is_err() {
                return Err(None);
            }
            pass.body = Some(read_whole_body(c, p, lp).await?);
            Ok(())
        }
        Work::Jwks { authorizer, seen } => {
            if let Some(Authorizer::Jwt(j)) = plan.authorizers.get(authorizer).map(|a| &**a) {
                let until = Instant::now() + crate::policy::jwt::FETCH_TIMEOUT * 2;
                while j.keys.attempts.load(std::sync::atomic::Ordering::Acquire) == seen
                    && Instant::now() < until
                {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            pass.refreshed = true;
            Ok(())
        }
        Work::Call(call) => {
            let Some(Authorizer::Request(r)) = plan.authorizers.get(call.authorizer).map(|a| &**a)
            else {
                return Err(Some(GatewayError::AuthorizerFailed("no such authorizer")));
            };
            match r.call(&shard.dial(), &call.payload).await {
                Ok(d) => {
                    let d = std::rc::Rc::new(d);
                    if let Some(key) = call.key {
                        let until = crate::clock::unix_ms() + r.ttl_s * 1000;
                        shard.access.borrow_mut().decisions.put(
                            plan.authorizer_uids[call.authorizer],
                            key,
                            until,
                            std::rc::Rc::clone(&d),
                        );
                    }
                    pass.decision = Some(d);
                    Ok(())
                }
                Err(why) => {
                    tracing::warn!(authorizer = %r.name, reason = why, "request authorizer failed");
                    Err(Some(GatewayError::AuthorizerFailed(why)))
                }
            }
        }
    }
}

/// Reads a request's whole body into the connection's buffer (after its head),
/// within `max_buffered_body_bytes`; a chunked body is also decoded.
async fn read_whole_body(
    c: &mut Client,
    p: &Prepared,
    lp: &ListenerPlan,
) -> Result<BodyRead, Option<GatewayError>> {
    let limit = lp.limits.max_buffered_body_bytes;
    let wait = lp.limits.idle_timeout;
    match p.framing {
        Framing::Length(n) => {
            if n > limit {
                return Err(Some(GatewayError::BodyTooLarge));
            }
            let want = p.head_len + n as usize;
            body::read_to(&mut c.stream, &mut c.buf, want, wait, Some(p.deadline))
                .await
                .map_err(body_error)?;
            Ok(BodyRead::InBuf(n as usize))
        }
        Framing::Chunked => {
            let mut decoder = parse::ChunkedDecoder::default();
            let mut at = p.head_len;
            let mut out = Vec::new();
            loop {
                if at == c.buf.len() {
                    let wait = body::within(wait, Some(p.deadline)).map_err(body_error)?;
                    match monoio::time::timeout(
                        wait,
                        body::read_more(&mut c.stream, &mut c.buf, CONN_BUF),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Err(None),
                        Err(_) => return Err(Some(GatewayError::RequestTimeout)),
                    }
                }
                match decoder.decode(&c.buf[at..]) {
                    Err(e) => return Err(Some(GatewayError::BadBody(e.0))),
                    Ok(parse::Chunk::Data {
                        consumed,
                        start,
                        len,
                    }) => {
                        if (out.len() + len) as u64 > limit {
                            return Err(Some(GatewayError::BodyTooLarge));
                        }
                        out.extend_from_slice(&c.buf[at + start..at + start + len]);
                        at += consumed;
                    }
                    Ok(parse::Chunk::NeedMore) => at = c.buf.len(),
                    Ok(parse::Chunk::Done { .. }) => return Ok(BodyRead::Decoded(out)),
                }
            }
        }
        Framing::None | Framing::UntilClose => Ok(BodyRead::InBuf(0)),
    }
}

/// A read into `c.buf` that gives up after `wait` (`None`).
async fn timed_read(c: &mut Client, wait: Duration, spare: usize) -> Option<io::Result<usize>> {
    monoio::time::timeout(wait, body::read_more(&mut c.stream, &mut c.buf, spare))
        .await
        .ok()
}

/// epoll driver only: one read of what is already there into `buf`'s spare room;
/// `None` when nothing is (the read is dropped without a syscall in flight).
///
/// A TLS read dropped here leaves its stream whole: what was decrypted stays in
/// rustls, and its socket read is in place (`TlsStream::in_place`).
async fn read_ready(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    spare: usize,
) -> Option<io::Result<usize>> {
    if buf.capacity() - buf.len() < spare {
        buf.reserve(spare);
    }
    let len = buf.len();
    // SAFETY: the spare room is valid for writes while `buf` is borrowed here, and on
    // the epoll driver the read syscall runs inside `poll`: a read dropped while
    // pending leaves nothing in the kernel pointing at the buffer.
    let raw = unsafe { RawBuf::new(buf.as_mut_ptr().add(len), buf.capacity() - len) };
    let mut read = std::pin::pin!(stream.read(raw));
    match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready((Ok(n), _)) => {
            // SAFETY: the kernel initialised `n` bytes of the spare room.
            unsafe { buf.set_len(len + n) };
            Some(Ok(n))
        }
        Poll::Ready((Err(e), _)) => Some(Err(e)),
        Poll::Pending => None,
    }
}

/// Parse → route, synchronously while the head is borrowed from the buffer; for a
/// proxied route also writes the upstream request head.
#[allow(clippy::too_many_arguments)]
fn prepare(
    head: &parse::RequestHead<'_>,
    headers: &[httparse::Header<'_>],
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    origin: &forward::Origin<'_>,
    up_head: &mut Vec<u8>,
    pass: &mut Pass,
    body: Option<&[u8]>,
    deadline: Instant,
) -> Prepared {
    // A request served on a plan the worker left (its listener was removed by a
    // reload) is the connection's last.
    let persist = shard.persist(if !head.keep_alive || !shard.runs(plan) {
        Persist::Close
    } else if head.http10 {
        Persist::KeepAlive10
    } else {
        Persist::KeepAlive
    });
    let method = head.method;
    let mut p = Prepared {
        head_len: head.head_len,
        deadline,
        framing: head.framing,
        persist,
        is_head: method == "HEAD",
        // A body read whole already had its `100 Continue`.
        expect_continue: head.expect_continue && body.is_none(),
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
        tag: Tag::from(pass.id.unwrap_or_else(|| shard.next_request_id())),
        action: Action::Refuse(GatewayError::RouteNotFound),
        fill: None,
        coalesce: Coalesce::None,
        route: None,
        log: None,
        trace: None,
        span: None,
    };
    if let Framing::Length(n) = head.framing {
        if n > lp.limits.max_body_bytes {
            p.action = Action::Refuse(GatewayError::BodyTooLarge);
            return p;
        }
    }
    let Some((stage_id, path)) = route::dispatch(&lp.stages, head.host, &head.path) else {
        return p;
    };
    let stage = &plan.stages[stage_id];
    let access = &stage.access;
    if plan.tracing.create || stage.access_log.is_some() || plan.telemetry.is_some() {
        let secs = match shard.date.borrow().secs() {
            0 => crate::clock::unix_s(),
            s => s,
        };
        p.trace =
            crate::observe::trace::of_request(headers, &plan.tracing, secs, || shard.random());
    }
    if plan.telemetry.is_some() && p.trace.is_some_and(|t| t.sampled) {
        p.span = Some(Box::new(crate::observe::telemetry::SpanFacts {
            method: head.method.into(),
            path: (*head.path).into(),
        }));
    }
    if let Some(spec) = &stage.access_log {
        p.log = Some(log_facts(
            head, headers, stage_id, stage, spec, origin, shard, &p,
        ));
    }
    if let Some(policy) = &access.policy {
        let ip = crate::policy::resource::client_ip(origin.peer.ip(), &access.trusted, headers);
        if !policy.allows(ip, head.host) {
            p.action = Action::Refuse(GatewayError::AccessDenied("resource policy"));
            return p;
        }
    }
    if let Some(cors) = &access.cors {
        p.tag.cors_api = true;
        if let Some(from) = parse::header(headers, "origin") {
            if method == "OPTIONS"
                && parse::header(headers, "access-control-request-method").is_some()
            {
                p.tag.cors = cors.preflight(
                    from,
                    parse::header(headers, "access-control-request-headers"),
                );
                p.action = Action::Preflight;
                return p;
            }
            p.tag.cors = cors.actual(from);
        }
    }
    let Some(m) = stage.router.find(method, path) else {
        return p;
    };
    let route = &stage.routes[m.route];
    p.route = Some((stage_id, m.route));
    // Routes that need the whole body read it first (bounded), before anything
    // that changes state.
    if body.is_none() && head.framing != Framing::None {
        let sigv4 = route.auth.as_ref().is_some_and(|a| {
            matches!(
                plan.authorizers.get(a.authorizer).map(|a| &**a),
                Some(Authorizer::Sigv4(_))
            )
        });
        let validates = route
            .validate
            .as_ref()
            .is_some_and(|v| v.wants_body(headers));
        if sigv4 || validates {
            p.action = match head.framing {
                Framing::Length(n) if n > lp.limits.max_buffered_body_bytes => {
                    Action::Refuse(GatewayError::BodyTooLarge)
                }
                _ => Action::Work(Work::ReadBody),
            };
            return p;
        }
    }
    let mut grant = Grant::default();
    if let Some(auth) = &route.auth {
        let facts = AuthFacts {
            head,
            headers,
            routed_path: path,
            stage,
            route,
            m: &m,
            origin,
            tag: &p.tag,
            body,
        };
        match authorize(plan, shard, auth, &facts, pass) {
            Ok(g) => {
                if let Some(log) = &mut p.log {
                    log.claims = g.claims.clone();
                    log.context = g.context.clone();
                }
                grant = g;
            }
            Err(action) => {
                p.action = action;
                return p;
            }
        }
    }
    // The key's usage plan for this stage, where the route takes a key. The keyring
    // is this shard's snapshot, swapped by the worker's tick between requests; a
    // request that began before a reload reads the keyring of its own plan.
    let current = shard.keyring.borrow();
    let previous = shard.previous_keyring.borrow();
    let ring: &crate::policy::keys::Keyring = match &*previous {
        Some(p) if current.1.generation != plan.generation && p.generation == plan.generation => p,
        _ => &current.1,
    };
    let mut binding: Option<&Binding> = None;
    if route.api_key_required {
        match ring.check(headers, stage_id) {
            Ok(b) => {
                if let Some(log) = &mut p.log {
                    log.api_key_id = Some(std::sync::Arc::clone(&b.key_id));
                }
                binding = Some(b);
            }
            Err(why) => {
                p.action = Action::Refuse(GatewayError::Forbidden(why));
                return p;
            }
        }
    }
    if let Some(v) = &route.validate {
        if let Some(err) = v.missing(headers, head.query, |n| m.param(n).map(str::to_owned)) {
            p.action = Action::Refuse(err);
            return p;
        }
        if v.wants_body(headers) {
            if let Err(err) = v.check_body(body.unwrap_or_default()) {
                tracing::debug!(%err, "request refused by validation");
                p.action = Action::Refuse(err);
                return p;
            }
        }
    }
    if !admit(plan, shard, binding, stage_id, m.route, route, stage) {
        p.action = Action::Refuse(GatewayError::Throttled);
        return p;
    }
    // Last, so that a request a throttle refused does not count against the quota.
    if let Some((slot, q)) = binding.and_then(|b| b.quota.as_ref()) {
        let admitted = shard
            .leases
            .borrow_mut()
            .admit(*slot, q, crate::clock::unix_s());
        match admitted {
            Ok(a) => {
                if q.limited {
                    p.tag.quota = Some(a.state);
                }
                if a.leased {
                    plan.live.lease_taken();
                }
            }
            Err(state) => {
                p.tag.quota = Some(state);
                p.action = Action::Refuse(GatewayError::QuotaExceeded);
                return p;
            }
        }
    }
    // A caller with a valid key may invalidate cache entries, on any route.
    let authorized = binding.is_some()
        || (route
            .cache
            .as_ref()
            .is_some_and(|c| c.require_authorization)
            && crate::policy::cache::wants_refresh(headers)
            && ring.check(headers, stage_id).is_ok());
    drop(current);
    drop(previous);
    if let (Some(rc), Integration::HttpProxy(_)) = (&route.cache, &route.integration) {
        if !(rc.any_method || method == "GET" || method == "HEAD")
            || !shard.caches.borrow().is_for(&plan.cache)
        {
            // (The second: a request that began before this worker switched plans,
            // looked at again after an authorizer's answer.)
            p.tag.cache = Some(CacheStatus::Bypass);
        } else {
            let mut refresh = crate::policy::cache::wants_refresh(headers);
            if refresh && rc.require_authorization && !authorized {
                // Only a caller with a valid key may invalidate (AWS:
                // requireAuthorizationForCacheControl).
                match rc.unauthorized {
                    UnauthorizedStrategy::FailWith403 => {
                        p.action = Action::Refuse(GatewayError::CacheControlForbidden);
                        return p;
                    }
                    UnauthorizedStrategy::SucceedWithHeader => p.tag.cache_warning = true,
                    UnauthorizedStrategy::SucceedWithoutHeader => {}
                }
                refresh = false;
            }
            let mut key = shard.cache_key.borrow_mut();
            crate::policy::cache::build_key(
                &mut key, route.sig, method, path, head.query, headers, &m, &rc.key,
            );
            let mut caches = shard.caches.borrow_mut();
            if !refresh {
                let found = match caches.get(stage_id, &key, crate::clock::unix_ms()) {
                    // Stored for other values of the headers its Vary names: a miss,
                    // whose response replaces it.
                    Lookup::Hit(e) if !crate::policy::cache::vary_matches(&e, headers) => {
                        Lookup::Miss
                    }
                    other => other,
                };
                if let Lookup::Hit(entry) = found {
                    caches.count(stage_id, m.route, true);
                    p.tag.cache = Some(CacheStatus::Hit);
                    p.action = Action::CacheHit(entry);
                    return p;
                }
                // Another request on this worker is fetching the same key: wait
                // for it (counted when served).
                let hash = crate::policy::cache::hash_key(&key);
                p.coalesce = if shard.fills.borrow_mut().lead(stage_id, hash) {
                    Coalesce::Lead(stage_id, hash)
                } else {
                    Coalesce::Wait(stage_id, hash)
                };
            }
            if !matches!(p.coalesce, Coalesce::Wait(..)) {
                caches.count(stage_id, m.route, false);
            }
            p.tag.cache = Some(CacheStatus::Miss);
            p.fill = Some(crate::policy::cache::Fill {
                owner: Arc::as_ptr(&plan.cache) as usize,
                stage: stage_id,
                route: m.route,
                key: key.clone(),
                ttl_ms: rc.ttl_ms,
            });
        }
    }
    p.action = match &route.integration {
        Integration::Mock(_) => Action::Mock(stage_id, m.route),
        Integration::HttpProxy(target) => {
            let extra = forward::Extra {
                strip: &access.strip,
                grant: &grant,
                trace: p.trace.as_ref(),
            };
            forward::write_request_head(up_head, target, head, headers, &m, path, origin, &extra);
            Action::Proxy(stage_id, m.route)
        }
    };
    p
}

/// What a logged request's line needs from its head.
#[allow(clippy::too_many_arguments)]
fn log_facts(
    head: &parse::RequestHead<'_>,
    headers: &[httparse::Header<'_>],
    stage_id: StageId,
    stage: &StagePlan,
    spec: &crate::observe::accesslog::LogSpec,
    origin: &forward::Origin<'_>,
    shard: &Shard,
    p: &Prepared,
) -> Box<crate::observe::accesslog::Facts> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned().into_boxed_str();
    let time_ms = crate::clock::unix_ms();
    let method: std::borrow::Cow<'static, str> = match head.method {
        "GET" => "GET".into(),
        "POST" => "POST".into(),
        "PUT" => "PUT".into(),
        "DELETE" => "DELETE".into(),
        "PATCH" => "PATCH".into(),
        "HEAD" => "HEAD".into(),
        "OPTIONS" => "OPTIONS".into(),
        other => other.to_owned().into(),
    };
    Box::new(crate::observe::accesslog::Facts {
        request_id: p.tag.id,
        stage: stage_id,
        time_ms,
        time_text: shard.log_time.borrow_mut().text(time_ms / 1000),
        method,
        path: (*head.path).into(),
        http10: head.http10,
        host: if spec.format.needs_host() {
            text(head.host)
        } else {
            Box::default()
        },
        source_ip: crate::policy::resource::client_ip(
            origin.peer.ip(),
            &stage.access.trusted,
            headers,
        ),
        user_agent: if spec.format.needs_user_agent() {
            text(parse::header(headers, "user-agent").unwrap_or_default())
        } else {
            Box::default()
        },
        trace_id: p.trace.as_ref().map(|t| t.id),
        api_key_id: None,
        claims: None,
        context: None,
    })
}

/// What an authorizer may look at.
struct AuthFacts<'a, 'h> {
    head: &'a parse::RequestHead<'h>,
    headers: &'a [httparse::Header<'h>],
    routed_path: &'a str,
    stage: &'a StagePlan,
    route: &'a RoutePlan,
    m: &'a route::RouteMatch<'a, 'a>,
    origin: &'a forward::Origin<'a>,
    tag: &'a Tag,
    body: Option<&'a [u8]>,
}

/// Runs the route's authorizer: what it granted, or what to do instead (refuse,
/// or work first: a JWKS refetch, a call to a request authorizer).
fn authorize(
    plan: &Plan,
    shard: &Shard,
    auth: &crate::policy::access::RouteAuth,
    f: &AuthFacts<'_, '_>,
    pass: &mut Pass,
) -> Result<Grant, Action> {
    use crate::policy::jwt::Check;
    let refuse = |e: GatewayError| Action::Refuse(e);
    match &*plan.authorizers[auth.authorizer] {
        Authorizer::Jwt(j) => {
            let now = crate::clock::unix_s();
            let checked = j.check(
                plan.authorizer_uids[auth.authorizer],
                f.headers,
                f.head.query,
                &auth.scopes,
                &mut shard.access.borrow_mut().tokens,
                now,
                pass.refreshed,
            );
            match checked {
                Check::Granted(v) => Ok(Grant {
                    lines: (!v.lines.is_empty()).then(|| std::rc::Rc::from(&*v.lines)),
                    drop_authorization: false,
                    claims: Some(v),
                    context: None,
                }),
                Check::Refused(e) => Err(refuse(e)),
                Check::UnknownKey => match j.ask_refresh(now) {
                    Some(seen) => Err(Action::Work(Work::Jwks {
                        authorizer: auth.authorizer,
                        seen,
                    })),
                    None => Err(refuse(GatewayError::Unauthorized(
                        crate::http::error::Challenge::Bearer(crate::policy::jwt::UNKNOWN_KEY),
                    ))),
                },
            }
        }
        Authorizer::Request(r) => {
            let decision = match pass.decision.take() {
                Some(d) => d,
                None => {
                    let source_ip = crate::policy::resource::client_ip(
                        f.origin.peer.ip(),
                        &f.stage.access.trusted,
                        f.headers,
                    );
                    let host = std::str::from_utf8(f.head.host).unwrap_or("");
                    let id = String::from_utf8_lossy(&f.tag.id).into_owned();
                    let mut params = serde_json::Map::new();
                    if let Some(ps) = &f.m.params {
                        for (k, v) in ps.iter() {
                            // Decoded, as AWS hands path parameters to functions.
                            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                            params.insert(k.to_owned(), serde_json::Value::String(v.into()));
                        }
                    }
                    let facts = crate::policy::request::RequestFacts {
                        api: &f.stage.api,
                        stage: &f.stage.stage,
                        route_key: &f.route.key,
                        method: f.head.method,
                        raw_path: &f.head.path,
                        query: f.head.query,
                        source_ip,
                        host,
                        request_id: &id,
                        path_params: params,
                        headers: f.headers,
                    };
                    let Some(identity) = r.identity(&facts) else {
                        return Err(refuse(GatewayError::Unauthorized(
                            crate::http::error::Challenge::Plain("identity source missing"),
                        )));
                    };
                    let key = (r.ttl_s > 0 && !r.sources.is_empty())
                        .then(|| identity.join("\u{0}").into_boxed_str());
                    if let Some(k) = &key {
                        let hit = shard.access.borrow().decisions.get(
                            plan.authorizer_uids[auth.authorizer],
                            k,
                            crate::clock::unix_ms(),
                        );
                        if let Some(d) = hit {
                            return decided(d);
                        }
                    }
                    return Err(Action::Work(Work::Call(Box::new(
                        crate::policy::request::Call {
                            authorizer: auth.authorizer,
                            key,
                            payload: r.payload(&facts, &identity),
                        },
                    ))));
                }
            };
            decided(decision)
        }
        Authorizer::Sigv4(s) => {
            let hash = crate::policy::sigv4::sha256_hex(f.body.unwrap_or_default());
            let resource = format!(
                "{}/{}/{}{}",
                f.stage.api, f.stage.stage, f.head.method, f.routed_path
            );
            let signed = crate::policy::sigv4::Signed {
                method: f.head.method,
                raw_path: &f.head.path,
                query: f.head.query,
                headers: f.headers,
                body_hash: &hash,
                resource: &resource,
            };
            match s.verify(&signed, crate::clock::unix_s()) {
                Ok(_) => Ok(Grant {
                    drop_authorization: true,
                    ..Grant::default()
                }),
                Err(e) => Err(refuse(e)),
            }
        }
    }
}

/// A request authorizer's decision as a grant or a refusal.
fn decided(d: std::rc::Rc<crate::policy::request::Decision>) -> Result<Grant, Action> {
    if !d.authorized {
        return Err(Action::Refuse(GatewayError::AccessDenied(
            "the authorizer said isAuthorized: false",
        )));
    }
    Ok(Grant {
        lines: (!d.lines.is_empty()).then(|| std::rc::Rc::from(&*d.lines)),
        drop_authorization: false,
        claims: None,
        context: Some(d),
    })
}

/// Checks the throttles that apply, most specific first (the key's plan for this
/// route, the key's plan, the stage's route, the stage, the gateway); each one passed
/// spends a token.
fn admit(
    plan: &Plan,
    shard: &Shard,
    binding: Option<&Binding>,
    stage_id: StageId,
    route_id: RouteId,
    route: &RoutePlan,
    stage: &StagePlan,
) -> bool {
    let keyed = binding.is_some_and(|b| b.throttle.is_some() || !b.routes.is_empty());
    let levels = [route.throttle, stage.throttle, plan.throttle];
    if !keyed && levels.iter().all(Option::is_none) {
        return true;
    }
    let mut tokens = shard.tokens.borrow_mut();
    let now = tokens.now_ns();
    if let Some(b) = binding {
        let buckets = [b.route_throttle(stage_id, route_id), b.throttle.as_ref()];
        for bucket in buckets.into_iter().flatten() {
            if !tokens.admit_slot(bucket.slot, &bucket.shared, now) {
                return false;
            }
        }
    }
    levels
        .into_iter()
        .flatten()
        .all(|id| tokens.admit(&plan.throttles[id], now))
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
    match p.action {
        Action::Work(_) => false,
        Action::Preflight => {
            let persist = if has_body { Persist::Close } else { p.persist };
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
            // An unread body is still on the wire: close rather than read it.
            let persist = if has_body { Persist::Close } else { p.persist };
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
        Action::CacheHit(entry) => {
            // An unread body is still on the wire: close rather than read it.
            let persist = if has_body { Persist::Close } else { p.persist };
            serve_hit(c, shard, entry, &p.tag, persist, p.is_head).await && !persist.closes()
        }
        Action::Proxy(stage, route) => {
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
                        let persist = if has_body { Persist::Close } else { p.persist };
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
            };
            match forward::proxy(c, shard, target, &req, &lp.limits).await {
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
            }
        }
    }
}

/// Maps a failed client-body read to the answer owed, if any.
pub fn body_error(e: PumpError) -> Option<GatewayError> {
    match e {
        PumpError::TooLarge => Some(GatewayError::BodyTooLarge),
        PumpError::Framing(c) => Some(GatewayError::BadBody(c.0)),
        PumpError::ReadTimeout => Some(GatewayError::RequestTimeout),
        PumpError::ReadClosed | PumpError::Read(_) | PumpError::Write(_) => None,
    }
}

pub async fn send_continue(c: &mut Client) -> std::io::Result<()> {
    c.out.clear();
    c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    body::write_all(&mut c.stream, &mut c.out, c.send_timeout).await
}

/// Answers with a gateway error; `true` when the connection stays open.
pub async fn refuse(
    c: &mut Client,
    shard: &Shard,
    err: GatewayError,
    tag: &Tag,
    persist: Persist,
    head_only: bool,
) -> bool {
    let r = err.refusal();
    let persist = if r.close { Persist::Close } else { persist };
    c.outcome.status = r.status;
    c.outcome.bytes = if head_only { 0 } else { r.body.len() as u64 };
    if c.outcome.log.is_some() {
        // `{"message":"..."}` (or `Message`): the message itself.
        let message = serde_json::from_str::<serde_json::Value>(r.body)
            .ok()
            .and_then(|v| v.as_object()?.values().next()?.as_str().map(Into::into));
        c.outcome.error = message;
    }
    c.out.clear();
    let date = *shard.date.borrow_mut().now();
    respond::refusal(&mut c.out, r, &date, tag, persist, head_only);
    let ok = body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_ok();
    if persist.closes() {
        // Half-close so the client reads the answer before the reset a close with
        // unread input would cause (RFC 9112 §9.6).
        let _ = c.stream.close_write().await;
        linger(c).await;
    }
    ok && !persist.closes()
}

/// Lingering close (nginx's `lingering_close`): read and drop what the client still
/// sends, briefly, so closing with unread input does not reset the connection before
/// the client has read the answer.
async fn linger(c: &mut Client) {
    const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX_DRAIN: usize = 1024 * 1024;
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < MAX_DRAIN {
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        c.buf.clear();
        c.pos = 0;
        match monoio::time::timeout(wait, body::read_more(&mut c.stream, &mut c.buf, CONN_BUF))
            .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}
