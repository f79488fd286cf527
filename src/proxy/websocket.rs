//! WebSocket APIs: the handshake (`$connect` and its integration), then the
//! connection's messages, each routed by the API's route selection expression to
//! an integration that receives AWS's WebSocket event, its answer sent back where
//! the route asks for a route response; `$disconnect` when the connection ends.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::http::body;
use crate::http::error::GatewayError;
use crate::http::respond::{Persist, Tag};
use crate::http::stream::Stream;
use crate::http::ws::{self, code, Event, Messages, Opcode};
use crate::ids::{RouteId, StageId};
use crate::plan::{Integration, LambdaTarget, Plan, WsStage};
use crate::proxy::admit::{meter, Keyed};
use crate::proxy::client::{refuse, Client, Kept};
use crate::proxy::dormant;
use crate::proxy::invoke::Seen;
use crate::proxy::shard::{InFlight, Shard};
use crate::proxy::ws_context::{
    chosen_protocol, conn_facts, log_event, Context, Incoming, Message,
};
use crate::upstream::connections::{self, Command, Entry, CONNECTIONS};

/// The most an HTTP integration of a WebSocket route may answer.
const MAX_ANSWER: usize = 1 << 20;

/// What the pipeline worked out for a handshake.
#[derive(Debug)]
pub struct Opening {
    accept: String,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`).
    offered: Vec<String>,
    /// The API key the handshake presented.
    key: Option<Keyed>,
    /// Fields every event of the connection carries (`requestContext`'s).
    context: Context,
    /// The `$connect` event.
    connect_event: Vec<u8>,
}

/// The handshake's facts, while the request head is at hand; `Err` when the
/// request is not a WebSocket handshake (426) or a malformed one (400).
pub fn opening(s: &Seen<'_, '_>) -> Result<Opening, GatewayError> {
    let header = |n: &str| {
        crate::http::parse::header(s.headers, n).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let wants = crate::proxy::forward::wants_websocket(s.head, s.headers);
    if !wants {
        return Err(GatewayError::detailed(
            426,
            "message",
            "Upgrade Required",
            None,
        ));
    }
    let (Some(key), Some("13")) = (
        header("sec-websocket-key"),
        header("sec-websocket-version").as_deref(),
    ) else {
        return Err(GatewayError::detailed(
            400,
            "message",
            "a WebSocket handshake needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
            None,
        ));
    };
    let now = crate::clock::unix_ms();
    // What differs between connections; the stage's names, the id and the
    // connection's time are added as each event is made.
    let mut ctx = Map::new();
    ctx.insert(
        "domainName".into(),
        header("host")
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or("")
            .into(),
    );
    ctx.insert(
        "identity".into(),
        json!({
            "sourceIp": s.source_ip.to_string(),
            "userAgent": header("user-agent").unwrap_or_default(),
        }),
    );
    if let Some(v) = s.grant.claims.as_deref() {
        ctx.insert(
            "authorizer".into(),
            json!({ "claims": v.claims, "scopes": v.scopes.iter().map(|x| &**x).collect::<Vec<_>>() }),
        );
    } else if let Some(d) = s.grant.context.as_deref() {
        ctx.insert("authorizer".into(), Value::Object(d.context.clone()));
    }
    let mut headers = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for h in s.headers {
        let v = String::from_utf8_lossy(h.value).into_owned();
        headers.insert(h.name.to_owned(), Value::String(v.clone()));
        match multi.get_mut(h.name) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            _ => {
                multi.insert(h.name.to_owned(), json!([v]));
            }
        }
    }
    let mut q = Map::new();
    let mut qm: Map<String, Value> = Map::new();
    for (k, v) in form_urlencoded::parse(s.head.query.unwrap_or("").as_bytes()) {
        q.insert(k.to_string(), Value::String(v.to_string()));
        match qm.get_mut(k.as_ref()) {
            Some(Value::Array(a)) => a.push(Value::String(v.into_owned())),
            _ => {
                qm.insert(k.into_owned(), json!([v]));
            }
        }
    }
    let request_id = String::from_utf8_lossy(&s.tag.id).into_owned();
    let context = Context::of(&ctx, connections::Id::new(), now);
    let mut top = vec![
        ("headers", Value::Object(headers)),
        ("multiValueHeaders", Value::Object(multi)),
    ];
    if !q.is_empty() {
        top.push(("queryStringParameters", Value::Object(q)));
        top.push(("multiValueQueryStringParameters", Value::Object(qm)));
    }
    let names = (s.stage.api.as_str(), s.stage.stage.as_str());
    let connect_event = context.event(names, "$connect", "CONNECT", &request_id, now, &[], top);
    let offered = s
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|h| crate::http::parse::tokens(h.value))
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let api_key = crate::http::parse::header(s.headers, "x-api-key")
        .filter(|v| !v.is_empty())
        .map(|v| Keyed {
            hash: crate::policy::keys::hash(v),
            all: s.route.api_key_required,
        });
    Ok(Opening {
        accept: ws::accept_key(key.trim().as_bytes()),
        offered,
        key: api_key,
        context,
        connect_event,
    })
}

/// A WebSocket API handshake that passed the pipeline, for `open`.
pub struct Upgrade {
    pub tag: Tag,
    pub stage: StageId,
    pub route: RouteId,
    pub opening: Box<Opening>,
    pub started: Instant,
}

/// A boxed value, out of its box: the box is freed now, not when its
/// binding goes out of scope (an async fn's locals live as long as it runs).
#[allow(clippy::boxed_local)] // The point: it takes the box.
pub(crate) fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Calls a route's integration with an event: its status and body.
async fn call(
    plan: &Plan,
    shard: &Shard,
    stage: StageId,
    route: RouteId,
    event: Vec<u8>,
    request_id: String,
) -> Result<crate::http::client::Answered, GatewayError> {
    match &plan.stages[stage].routes[route].integration {
        Integration::Mock(m) => {
            let headers = String::from_utf8_lossy(&m.header_lines)
                .lines()
                .filter_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    Some((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                })
                .collect();
            Ok((m.status, headers, m.body.to_vec()))
        }
        Integration::HttpProxy(t) => {
            let Some(ep) = t.fixed() else {
                return Err(GatewayError::UpstreamFailed("no fixed endpoint"));
            };
            let mut target = String::new();
            for p in &t.path {
                if let crate::upstream::target::PathPart::Literal(l) = p {
                    target.push_str(l);
                }
            }
            if target.is_empty() {
                target.push('/');
            }
            if let Some(q) = &t.query {
                target.push('?');
                target.push_str(q);
            }
            match monoio::time::timeout(
                t.timeout,
                crate::upstream::connect::post(
                    &shard.dial(),
                    ep,
                    &target,
                    "application/json",
                    &event,
                    MAX_ANSWER,
                ),
            )
            .await
            {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(why)) => {
                    tracing::warn!(upstream = %ep.addr, reason = why, "WebSocket integration failed");
                    Err(GatewayError::UpstreamFailed(why))
                }
                Err(_) => Err(GatewayError::IntegrationTimeout),
            }
        }
        Integration::Lambda(l) => match &l.target {
            LambdaTarget::Local(fi) => {
                let f = plan
                    .functions
                    .get(*fi)
                    .ok_or(GatewayError::FunctionFailed("no such function"))?;
                let a = crate::proxy::invoke::local(shard, f, l, event, request_id).await?;
                Ok((a.status, a.headers, a.body))
            }
            LambdaTarget::Remote { endpoint, path } => {
                let a = crate::proxy::invoke::remote(shard, l, endpoint, path, &event).await?;
                Ok((a.status, a.headers, a.body))
            }
        },
        Integration::Aws(_) => Err(GatewayError::UpstreamFailed(
            "AWS service integrations are not WebSocket integrations",
        )),
    }
}

/// Runs `$connect`, answers the handshake, then serves the connection until it
/// ends. The connection is done afterwards (`false`).
#[allow(clippy::too_many_arguments)]
pub async fn open(
    c: &mut Client,
    plan: &Plan,
    shard: &Shard,
    u: Box<Upgrade>,
) -> Option<Box<Live>> {
    let Upgrade {
        tag: owned_tag,
        stage,
        route,
        opening: o,
        started: _,
    } = unbox(u);
    let tag = &owned_tag;
    let request_id = String::from_utf8_lossy(&tag.id).into_owned();
    let Opening {
        accept,
        offered,
        key,
        context,
        connect_event,
    } = unbox(o);
    let started = Instant::now();
    let (connect_status, protocol) =
        match Box::pin(call(plan, shard, stage, route, connect_event, request_id)).await {
            Ok((status, headers, _)) if (200..300).contains(&status) => {
                (status, chosen_protocol(&offered, &headers))
            }
            Ok((status, _, _)) => {
                let reason =
                    String::from_utf8_lossy(crate::http::respond::reason(status)).into_owned();
                // The integration's refusal, not the gateway's own answer.
                let err = GatewayError::detailed(status, "message", &reason, None).of_type(None);
                Box::pin(refuse(c, shard, err, tag, Persist::Close, false)).await;
                return None;
            }
            Err(err) => {
                tracing::warn!(%err, "$connect failed");
                Box::pin(refuse(c, shard, err, tag, Persist::Close, false)).await;
                return None;
            }
        };
    c.out.clear();
    c.out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ");
    c.out.extend_from_slice(accept.as_bytes());
    if let Some(p) = &protocol {
        c.out.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        c.out.extend_from_slice(p.as_bytes());
    }
    c.out.extend_from_slice(b"\r\napigw-requestid: ");
    c.out.extend_from_slice(&tag.id);
    c.out.extend_from_slice(b"\r\n\r\n");
    c.outcome.status = 101;
    // Not kept for the connection's life.
    let tag_id = tag.id;
    drop((accept, offered, protocol, owned_tag));
    // Boxed, as every wait here but the session's: an async fn's state is as
    // large as its largest wait, and an open connection keeps it.
    if Box::pin(body::write_all(&mut c.stream, &mut c.out, c.send_timeout))
        .await
        .is_err()
    {
        return None;
    }
    let ws = Arc::clone(plan.stages[stage].ws.as_ref()?);
    let calls = shard.calls.as_ref()?;
    let id = context.id;
    let local = shard.mailboxes.open();
    let now = crate::clock::unix_ms();
    let entry = Arc::new(Entry {
        scope: Arc::clone(&ws.scope),
        inbox: Arc::clone(&calls.inbox),
        local,
        connected_at_ms: now,
        last_active_ms: AtomicU64::new(now),
        context: Arc::clone(&context.fields),
    });
    CONNECTIONS.insert(id, Arc::clone(&entry));
    let cells = shard.metrics.worker.get(shard.id);
    if let Some(m) = cells {
        m.ws_api_opened.add(1);
    }
    // The stage's access log gets a line per event (this one now, not when the
    // connection ends).
    let base = c.outcome.log.take();
    log_event(
        plan,
        shard,
        stage,
        base.as_deref(),
        conn_facts(&context, "CONNECT"),
        tag_id,
        "$connect",
        connect_status,
        0,
        started,
    );
    Some(Box::new(Live {
        stage: stage as u32,
        until: Instant::now() + ws.limits.max_duration,
        send_timeout_ms: c.send_timeout.as_millis().min(u32::MAX.into()) as u32,
        asleep: None,
        ws,
        context,
        entry,
        base,
        key: key.map(Box::new),
    }))
}

/// An open connection, between `open` and `serve`.
pub struct Live {
    /// Its `StageId` (`stage()`).
    stage: u32,
    ws: Arc<WsStage>,
    /// When the duration limit ends the connection.
    until: Instant,
    /// The listener's send timeout, in milliseconds.
    send_timeout_ms: u32,
    /// While it sleeps with no task: its plan, and when the idle limit ends it.
    asleep: Option<(Arc<Plan>, Instant)>,
    context: Context,
    entry: Arc<Entry>,
    base: Option<Box<crate::observe::accesslog::Facts>>,
    key: Option<Box<Keyed>>,
}

// A sleeping connection keeps it: in mimalloc's 128-byte class.
const _: () = assert!(std::mem::size_of::<Live>() <= 128);

impl Live {
    fn stage(&self) -> StageId {
        self.stage as StageId
    }

    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.into())
    }
}

/// Serves an open connection until it ends, then calls `$disconnect`; or
/// until it has been idle a while (`DOZE_AFTER`), then puts it to sleep in the
/// worker's dormant set with no task (`proxy::dormant`), from which `watch`
/// wakes it into a new one. `idle_at`: when the idle limit ends it (`None`:
/// the limit from now).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn serve(
    c: Box<Client>,
    plan: Arc<Plan>,
    shard: Rc<Shard>,
    live: Box<Live>,
    idle_at: Option<Instant>,
) -> impl Future<Output = ()> {
    async move {
        let in_flight = InFlight::enter(&shard);
        let idle_at = idle_at.unwrap_or_else(|| Instant::now() + live.ws.limits.idle);
        let (code, reason) = match session(c, &plan, &shard, &live, idle_at).await {
            Ended::Closed(code, reason) => (code, reason),
            Ended::Dozing(kept, bed, idle_at) => {
                drop(in_flight);
                lay(&shard, bed, plan, live, idle_at);
                // This copy of the socket closes; the dormant set's stays.
                drop(kept);
                return;
            }
        };
        Box::pin(ended(&plan, &shard, live, code, reason)).await;
    }
}

/// How long a connection waits in its task before it sleeps with none: a
/// chatty connection keeps its task (moving a socket between the runtime and
/// the dormant set costs a few system calls); one that went quiet keeps no task.
const DOZE_AFTER: Duration = Duration::from_secs(1);

/// Puts a connection to sleep in the slot `bed` took: woken by its socket, a
/// command for it, or its deadline. It counts as in flight (a drain waits for
/// it), as its task did. `live` keeps what its task held (`asleep`).
fn lay(shard: &Shard, bed: dormant::Bed, plan: Arc<Plan>, mut live: Box<Live>, idle_at: Instant) {
    // (`bed` came from the dormant set: there is one.)
    let Some(d) = &shard.dormant else {
        return;
    };
    let waker = dormant::waker(bed.key());
    let queued = !shard.mailboxes.watch(live.entry.local, waker.clone());
    shard.in_flight.set(shard.in_flight.get() + 1);
    let deadline = idle_at.min(live.until);
    live.asleep = Some((plan, idle_at));
    d.lay(bed, deadline, live);
    if queued {
        waker.wake();
    }
}

/// Wakes the worker's sleeping connections, each into a task of its own, as
/// their sockets, commands and deadlines call.
pub async fn watch(shard: Rc<Shard>) {
    let Some(d) = &shard.dormant else {
        return;
    };
    let poller = d
        .poller()
        .and_then(|fd| monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)));
    let poller = match poller {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(worker = shard.id, %err, "idle connections keep their tasks");
            return;
        }
    };
    d.watched();
    let mut keys = Vec::new();
    loop {
        d.woken(&mut keys);
        for key in keys.drain(..) {
            rouse(&shard, d, key);
        }
        let mut readable = std::pin::pin!(poller.readable(false));
        let r = std::future::poll_fn(|cx| {
            if !dormant::quiet(cx.waker()) {
                return Poll::Ready(Ok(()));
            }
            readable.as_mut().poll(cx)
        })
        .await;
        if let Err(err) = r {
            tracing::debug!(worker = shard.id, %err, "waiting on the dormant set");
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Gives sleeper `key`, if it still sleeps, a task again.
fn rouse(shard: &Rc<Shard>, d: &dormant::Dormant, key: u64) {
    let Some((fd, what)) = d.wake(key) else {
        return;
    };
    let Ok(mut live) = what.downcast::<Live>() else {
        return;
    };
    let Some((plan, idle_at)) = live.asleep.take() else {
        return;
    };
    shard.in_flight.set(shard.in_flight.get().saturating_sub(1));
    let shard = Rc::clone(shard);
    match monoio::net::TcpStream::from_std(std::net::TcpStream::from(fd)) {
        Ok(tcp) => {
            // (Not kept asleep: a WebSocket session does not read it.)
            let peer = tcp
                .peer_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            let kept = Kept {
                stream: Stream::Plain(tcp),
                peer,
                tls: None,
            };
            let c = Box::new(Client::new(kept, live.send_timeout(), &shard));
            monoio::spawn(serve(c, plan, shard, live, Some(idle_at)));
        }
        Err(err) => {
            tracing::warn!(%err, "an idle WebSocket connection could not be woken");
            monoio::spawn(async move {
                let _in_flight = InFlight::enter(&shard);
                ended(&plan, &shard, live, 1006, String::new()).await;
            });
        }
    }
}

/// After the session: the metrics, the registry, and `$disconnect`.
async fn ended(plan: &Plan, shard: &Shard, live: Box<Live>, code: u16, reason: String) {
    let (stage, ws) = (live.stage(), Arc::clone(&live.ws));
    if let Some(m) = shard.metrics.worker.get(shard.id) {
        m.ws_api_closed.add(1);
    }
    let local = live.entry.local;
    let Live { context, base, .. } = unbox(live);
    // Gone for `@connections` before `$disconnect` runs, as on AWS.
    connections::unregister(&context.id);
    shard.mailboxes.close(local);
    let Some(d) = ws.disconnect else {
        return;
    };
    let now = crate::clock::unix_ms();
    let rid = shard.next_request_id();
    let id = String::from_utf8_lossy(&rid).into_owned();
    let st = &plan.stages[stage];
    let event = context.event(
        (st.api.as_str(), st.stage.as_str()),
        "$disconnect",
        "DISCONNECT",
        &id,
        now,
        &[
            ("disconnectStatusCode", code.into()),
            ("disconnectReason", reason.as_str().into()),
        ],
        Vec::new(),
    );
    // Best effort, as AWS's.
    let started = Instant::now();
    let status = match call(plan, shard, stage, d, event, id).await {
        Ok((s, _, _)) => s,
        Err(err) => {
            tracing::debug!(%err, "$disconnect failed");
            err.refusal().status
        }
    };
    log_event(
        plan,
        shard,
        stage,
        base.as_deref(),
        conn_facts(&context, "DISCONNECT"),
        rid,
        "$disconnect",
        status,
        0,
        started,
    );
}

/// What ended a wait for the client.
enum Woke {
    /// The socket is readable (read next).
    Readable,
    Command(Command),
    Idle,
    /// Idle a while: sleep with no task.
    Doze,
}

/// Sends one frame; `false` when the client is gone.
async fn send(c: &mut Client, shard: &Shard, op: Opcode, payload: &[u8]) -> bool {
    if op == Opcode::Text {
        if let Some(m) = shard.metrics.worker.get(shard.id) {
            m.ws_messages_out.add(1);
            m.ws_bytes_out.add(payload.len() as u64);
        }
    }
    c.out.clear();
    ws::write_frame(&mut c.out, op, payload);
    body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_ok()
}

async fn close(c: &mut Client, code: u16, reason: &str) {
    c.out.clear();
    ws::write_close(&mut c.out, code, reason);
    let _ = body::write_all(&mut c.stream, &mut c.out, c.send_timeout).await;
}

/// How a session ends: the close code and reason.
type End = (u16, String);

/// What a session ends with: the connection closed, or it sleeps (its
/// socket, the slot taken for it, its idle deadline).
enum Ended {
    Closed(u16, String),
    Dozing(Kept, dormant::Bed, Instant),
}

/// What a waiting connection holds: its socket alone when nothing of a
/// message is read (the `Client` and its buffers went back, as a parked HTTP
/// connection's), or the `Client` with the start of a frame in its buffer.
enum Held {
    Idle(Kept),
    Busy(Box<Client>),
}

/// Serves messages until the connection ends or dozes off.
/// Only the wait for the client is inline (what an idle connection holds);
/// reading frames and answering them are boxed futures, gone between messages.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn session<'a>(
    mut c: Box<Client>,
    plan: &'a Plan,
    shard: &'a Shard,
    live: &'a Live,
    mut idle_at: Instant,
) -> impl std::future::Future<Output = Ended> + 'a {
    async move {
        let until = live.until;
        let send_timeout = c.send_timeout;
        let mut messages = Messages::default();
        let mut may_doze = shard.dormant.is_some();
        let end = loop {
            if let Some(end) = Box::pin(frames(&mut c, plan, shard, live, &mut messages)).await {
                break end;
            }
            c.buf.drain(..c.pos);
            c.pos = 0;
            let now = Instant::now();
            if now >= until {
                Box::pin(close(&mut c, code::GOING_AWAY, "Going away")).await;
                break (code::GOING_AWAY, "the connection's duration limit".into());
            }
            let due = idle_at.min(until);
            let doze = may_doze
                && c.buf.is_empty()
                && c.tls.is_none()
                && matches!(c.stream, Stream::Plain(_))
                && messages.is_empty();
            let wake_at = if doze { due.min(now + DOZE_AFTER) } else { due };
            let held = if c.buf.is_empty() {
                Held::Idle(unbox(c).release(shard))
            } else {
                Held::Busy(c)
            };
            // Data, a command from `@connections`, the idle limit, or time to
            // doze. Readiness is waited for (checked, not cached:
            // `readiness(false)`), not a read, so the wait can be given up on
            // both drivers without losing bytes. The deadline is a slot of the
            // shard's parked deadlines (swept by the worker), not a timer of its
            // own: monoio's is 640 bytes. The wait holds the driver's operation
            // itself (`readiness`), not an async body around it.
            let (woke, held) = wait(held, shard, live, wake_at, due).await;
            let next = match (woke, held) {
                (Woke::Doze, Held::Idle(kept)) => {
                    let fd = kept.stream.tcp().as_raw_fd();
                    // SAFETY: `kept` owns the descriptor for the call.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    match shard.dormant.as_ref().map(|d| d.prepare(fd)) {
                        Some(Ok(bed)) => return Ended::Dozing(kept, bed, idle_at),
                        Some(Err(err)) => {
                            tracing::debug!(%err, "an idle WebSocket connection keeps its task");
                        }
                        None => {}
                    }
                    may_doze = false;
                    (Woke::Doze, Held::Idle(kept))
                }
                other => other,
            };
            let (woke, held) = next;
            let active = matches!(woke, Woke::Readable | Woke::Command(_));
            c = match held {
                Held::Idle(kept) => Box::new(Client::new(kept, send_timeout, shard)),
                Held::Busy(c) => c,
            };
            if let Some(end) = Box::pin(woken(&mut c, shard, &live.entry, woke)).await {
                break end;
            }
            if active {
                idle_at = Instant::now() + live.ws.limits.idle;
            }
        };
        c.give_bufs(shard);
        Ended::Closed(end.0, end.1)
    }
}

/// Waits for what ends a wait (see `session`); `wake_at`: its deadline, `due`:
/// the idle limit's (earlier: time to doze).
async fn wait(
    mut held: Held,
    shard: &Shard,
    live: &Live,
    wake_at: Instant,
    due: Instant,
) -> (Woke, Held) {
    let woke = {
        let stream = match &mut held {
            Held::Idle(k) => &mut k.stream,
            Held::Busy(c) => &mut c.stream,
        };
        let buffered = stream.has_buffered();
        let mut readable = stream.tcp().readiness(false).ok();
        let slot = crate::proxy::shard::Parking::new(shard, wake_at);
        let local = live.entry.local;
        std::future::poll_fn(move |cx| {
            if let Some(cmd) = shard.mailboxes.take(local, cx.waker()) {
                return Poll::Ready(Woke::Command(cmd));
            }
            // No wait (an error registering it): read, and see the error.
            let Some(r) = readable.as_mut() else {
                return Poll::Ready(Woke::Readable);
            };
            if buffered || std::pin::Pin::new(r).poll(cx).is_ready() {
                return Poll::Ready(Woke::Readable);
            }
            if Instant::now() >= due || slot.expired(cx.waker()) {
                return Poll::Ready(if Instant::now() >= due {
                    Woke::Idle
                } else {
                    Woke::Doze
                });
            }
            Poll::Pending
        })
        .await
    };
    (woke, held)
}

/// Serves every whole frame already read; the end, if one of them ends the
/// connection.
async fn frames(
    c: &mut Client,
    plan: &Plan,
    shard: &Shard,
    live: &Live,
    messages: &mut Messages,
) -> Option<End> {
    let limits = ws::Limits {
        max_frame: live.ws.limits.max_frame,
        max_message: live.ws.limits.max_message,
        binary: live.ws.limits.binary,
    };
    loop {
        let start = c.pos;
        let frame = match ws::parse_frame(&mut c.buf[start..], &limits) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(v) => {
                close(c, v.code, v.why).await;
                return Some((v.code, v.why.into()));
            }
        };
        let payload = c.buf[start + frame.payload.start..start + frame.payload.end].to_vec();
        c.pos = start + frame.len;
        let incoming = match messages.take(&frame, &payload, &limits) {
            Ok(Event::Text(text)) => Incoming::Text(text),
            Ok(Event::Binary(data)) => Incoming::Binary(data),
            Ok(Event::Ping(p)) => {
                if !send(c, shard, Opcode::Pong, &p).await {
                    return Some((1006, String::new()));
                }
                continue;
            }
            Ok(Event::Pong | Event::Partial) => continue,
            Ok(Event::Close(code, reason)) => {
                close(c, if code == 1005 { code::NORMAL } else { code }, "").await;
                return Some((code, reason));
            }
            Err(v) => {
                close(c, v.code, v.why).await;
                return Some((v.code, v.why.into()));
            }
        };
        live.entry.touch();
        if let Some(m) = shard.metrics.worker.get(shard.id) {
            m.ws_messages_in.add(1);
            m.ws_bytes_in.add(incoming.bytes() as u64);
        }
        let (stage, w, base) = (live.stage(), &*live.ws, live.base.as_deref());
        let key = live.key.as_deref();
        if !Box::pin(message(
            c,
            plan,
            shard,
            stage,
            w,
            &live.context,
            base,
            key,
            incoming,
        ))
        .await
        {
            return Some((1006, String::new()));
        }
    }
}

/// Acts on what ended a wait; the end, if it ends the connection.
async fn woken(c: &mut Client, shard: &Shard, entry: &Entry, woke: Woke) -> Option<End> {
    match woke {
        Woke::Readable => match body::read_more(&mut c.stream, &mut c.buf, 16 * 1024).await {
            Ok(n) if n > 0 => None,
            _ => Some((1006, String::new())),
        },
        Woke::Command(Command::Send(data)) => {
            entry.touch();
            if send(c, shard, Opcode::Text, &data).await {
                None
            } else {
                Some((1006, String::new()))
            }
        }
        Woke::Command(Command::Close) => {
            close(c, code::NORMAL, "").await;
            Some((code::NORMAL, "deleted through @connections".into()))
        }
        Woke::Idle => {
            close(c, code::GOING_AWAY, "Going away").await;
            Some((code::GOING_AWAY, "idle".into()))
        }
        Woke::Doze => None,
    }
}

/// Routes one message (within the stage's and the route's throttles), calls
/// its integration, sends the route response (an empty one too: an empty
/// message); `false` when the client is gone.
#[allow(clippy::too_many_arguments)]
async fn message(
    c: &mut Client,
    plan: &Plan,
    shard: &Shard,
    stage: StageId,
    w: &WsStage,
    context: &Context,
    base: Option<&crate::observe::accesslog::Facts>,
    api_key: Option<&Keyed>,
    incoming: Incoming,
) -> bool {
    let started = Instant::now();
    // A binary message is not JSON: `$default` (AWS routes non-JSON so).
    let key = match &incoming {
        Incoming::Text(text) => w
            .selection
            .as_ref()
            .and_then(|e| e.eval(&Message(text.as_bytes())))
            .unwrap_or_default(),
        Incoming::Binary(_) => String::new(),
    };
    let (route, route_key) = match w.routes.get(&key) {
        Some(&r) => (Some(r), key.as_str()),
        None => (w.default, "$default"),
    };
    let rid = shard.next_request_id();
    let id = String::from_utf8_lossy(&rid).into_owned();
    let connection = context.id();
    let message_id = connections::new_id();
    let facts = crate::observe::accesslog::WsFacts {
        connection_id: connection.into(),
        event_type: "MESSAGE",
        message_id: Some(message_id.as_str().into()),
    };
    let bytes = incoming.bytes() as u64;
    let binary = matches!(incoming, Incoming::Binary(_));
    let Some(route) = route else {
        // AWS's answer when no route matches and there is no $default.
        log_event(
            plan, shard, stage, base, facts, rid, route_key, 403, bytes, started,
        );
        let m = json!({"message": "Forbidden", "connectionId": connection, "requestId": id});
        return send(c, shard, Opcode::Text, m.to_string().as_bytes()).await;
    };
    if let Err((status, message)) = meter(plan, shard, stage, route, api_key) {
        log_event(
            plan, shard, stage, base, facts, rid, route_key, status, bytes, started,
        );
        let m = json!({"message": message, "connectionId": connection, "requestId": id});
        return send(c, shard, Opcode::Text, m.to_string().as_bytes()).await;
    }
    let now = crate::clock::unix_ms();
    let st = &plan.stages[stage];
    let event = context.event(
        (st.api.as_str(), st.stage.as_str()),
        route_key,
        "MESSAGE",
        &id,
        now,
        &[("messageId", message_id.as_str().into())],
        match incoming {
            Incoming::Text(text) => vec![("body", Value::String(text))],
            Incoming::Binary(data) => vec![
                ("body", Value::String(BASE64.encode(data))),
                ("isBase64Encoded", Value::Bool(true)),
            ],
        },
    );
    let answered = call(plan, shard, stage, route, event, id.clone()).await;
    let status = match &answered {
        Ok((s, _, _)) => *s,
        Err(e) => e.refusal().status,
    };
    log_event(
        plan, shard, stage, base, facts, rid, route_key, status, bytes, started,
    );
    match answered {
        Ok((_, _, body)) if w.route_response.get(route).copied().unwrap_or(false) => {
            if binary {
                // AWS's CONVERT_TO_BINARY: the answer is base64 (an echo of the
                // event's body); an answer that is not goes as it is.
                let data = BASE64.decode(&body).unwrap_or(body);
                send(c, shard, Opcode::Binary, &data).await
            } else {
                send(c, shard, Opcode::Text, &body).await
            }
        }
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(%err, route = route_key, "WebSocket integration failed");
            let m = json!({"message": "Internal server error", "connectionId": connection, "requestId": id});
            send(c, shard, Opcode::Text, m.to_string().as_bytes()).await
        }
    }
}
