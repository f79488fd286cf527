//! WebSocket APIs: the handshake (`$connect` and its integration), then the
//! connection's messages, each routed by the API's route selection expression to
//! an integration that receives AWS's WebSocket event, its answer sent back where
//! the route asks for a route response; `$disconnect` when the connection ends.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::http::body;
use crate::http::error::GatewayError;
use crate::http::respond::{Persist, Tag};
use crate::http::ws::{self, code, Event, Messages, Opcode};
use crate::ids::{RouteId, StageId};
use crate::plan::{Integration, LambdaTarget, Plan, WsStage};
use crate::proxy::admit::{meter, Keyed};
use crate::proxy::client::{refuse, Client, Kept};
use crate::proxy::invoke::Seen;
use crate::proxy::shard::Shard;
use crate::upstream::connections::{self, Command, Entry, Registered, CONNECTIONS};
use crate::upstream::mapping::Lookup;

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

/// The `requestContext` fields of a connection's events: those that differ
/// between connections (domain name, identity, authorizer) as JSON text, so an
/// idle connection holds one short string, not a map of values; the id and
/// the time it connected. The stage's names are the events' maker's.
#[derive(Debug)]
pub struct Context {
    /// `"name":value` pairs, comma-separated, without the braces (shared
    /// with the connection's `Entry`).
    fields: Arc<str>,
    id: connections::Id,
    connected_at: u64,
}

impl Context {
    fn of(map: &Map<String, Value>, id: connections::Id, connected_at: u64) -> Self {
        let text = serde_json::to_string(map).unwrap_or_else(|_| "{}".into());
        Self {
            fields: text[1..text.len() - 1].into(),
            id,
            connected_at,
        }
    }

    /// The connection's id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// An event of the connection, as JSON: its `requestContext` with this
    /// event's fields and `rc`, and the event's own top-level fields `top`;
    /// `names`: the API's and the stage's.
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        names: (&str, &str),
        route_key: &str,
        event_type: &str,
        request_id: &str,
        now_ms: u64,
        rc: &[(&str, Value)],
        top: Vec<(&str, Value)>,
    ) -> Vec<u8> {
        let mut t = Vec::new();
        crate::observe::accesslog::clf_time(&mut t, now_ms / 1000);
        let mut own = Map::new();
        own.insert("messageDirection".into(), "IN".into());
        own.insert("connectionId".into(), self.id().into());
        own.insert("connectedAt".into(), self.connected_at.into());
        own.insert("stage".into(), names.1.into());
        own.insert("apiId".into(), names.0.into());
        own.insert("routeKey".into(), route_key.into());
        own.insert("eventType".into(), event_type.into());
        own.insert("requestId".into(), request_id.into());
        own.insert("extendedRequestId".into(), request_id.into());
        own.insert(
            "requestTime".into(),
            String::from_utf8_lossy(&t).into_owned().into(),
        );
        own.insert("requestTimeEpoch".into(), now_ms.into());
        for (k, v) in rc {
            own.insert((*k).into(), v.clone());
        }
        let own = Value::Object(own).to_string();
        let mut out = Vec::with_capacity(self.fields.len() + own.len() + 64);
        out.extend_from_slice(b"{\"requestContext\":{");
        out.extend_from_slice(self.fields.as_bytes());
        if !self.fields.is_empty() {
            out.push(b',');
        }
        // `own` without its `{`: its `}` closes `requestContext`.
        out.extend_from_slice(&own.as_bytes()[1..]);
        if !top.iter().any(|(k, _)| *k == "isBase64Encoded") {
            out.extend_from_slice(b",\"isBase64Encoded\":false");
        }
        for (k, v) in top {
            out.push(b',');
            let _ = serde_json::to_writer(&mut out, k);
            out.push(b':');
            let _ = serde_json::to_writer(&mut out, &v);
        }
        out.push(b'}');
        out
    }
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

/// The subprotocol `$connect`'s integration chose (its `Sec-WebSocket-Protocol`
/// answer header), when the client offered it: AWS's way to accept one.
fn chosen_protocol(offered: &[String], headers: &[(String, String)]) -> Option<String> {
    let (_, chosen) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))?;
    let chosen = chosen.trim();
    if offered.iter().any(|p| p == chosen) {
        Some(chosen.to_owned())
    } else {
        tracing::warn!(
            protocol = chosen,
            "$connect chose a subprotocol the client did not offer; none is named"
        );
        None
    }
}

/// Runs `$connect`, answers the handshake, then serves the connection until it
/// ends. The connection is done afterwards (`false`).
#[allow(clippy::too_many_arguments)]
pub async fn open<'p>(
    c: &mut Client,
    plan: &'p Plan,
    shard: &Shard,
    u: Box<Upgrade>,
) -> Option<Box<Live<'p>>> {
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
    let ws = plan.stages[stage].ws.as_deref()?;
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
    let registered = Registered(id);
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
        stage,
        ws,
        context,
        entry,
        registered,
        base,
        key,
    }))
}

/// An open connection, between `open` and `serve`.
pub struct Live<'p> {
    stage: StageId,
    ws: &'p WsStage,
    context: Context,
    entry: Arc<Entry>,
    registered: Registered,
    base: Option<Box<crate::observe::accesslog::Facts>>,
    key: Option<Keyed>,
}

fn conn_facts(context: &Context, event_type: &'static str) -> crate::observe::accesslog::WsFacts {
    crate::observe::accesslog::WsFacts {
        connection_id: context.id().into(),
        event_type,
        message_id: None,
    }
}

/// Serves an open connection until it ends, then calls `$disconnect`. Its
/// own future, apart from `open`'s: an idle connection keeps only this one
/// (and `session`'s, which holds only its socket and its idle wait inline).
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
pub fn serve<'a>(
    c: Box<Client>,
    plan: &'a Plan,
    shard: &'a Shard,
    live: Box<Live<'a>>,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        let (code, reason) = session(c, plan, shard, &live).await;
        Box::pin(ended(plan, shard, live, code, reason)).await;
    }
}

/// After the session: the metrics, the registry, and `$disconnect`.
async fn ended(plan: &Plan, shard: &Shard, live: Box<Live<'_>>, code: u16, reason: String) {
    let (stage, ws) = (live.stage, live.ws);
    if let Some(m) = shard.metrics.worker.get(shard.id) {
        m.ws_api_closed.add(1);
    }
    let local = live.entry.local;
    let Live {
        context,
        registered,
        base,
        ..
    } = unbox(live);
    drop(registered);
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
}

/// What a message's route selection expression reads: the message.
struct Message<'a>(&'a [u8]);

impl Lookup for Message<'_> {
    fn header(&self, _: &str) -> Option<String> {
        None
    }
    fn query(&self, _: &str) -> Option<String> {
        None
    }
    fn body(&self) -> Option<&[u8]> {
        Some(self.0)
    }
    fn path(&self) -> Option<String> {
        None
    }
    fn path_param(&self, _: &str) -> Option<String> {
        None
    }
    fn context(&self, _: &str) -> Option<String> {
        None
    }
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

/// What a waiting connection holds: its socket alone when nothing of a
/// message is read (the `Client` and its buffers went back, as a parked HTTP
/// connection's), or the `Client` with the start of a frame in its buffer.
enum Held {
    Idle(Kept),
    Busy(Box<Client>),
}

/// Serves messages until the connection ends: the close code and reason.
/// Only the wait for the client is inline (what an idle connection holds);
/// reading frames and answering them are boxed futures, gone between messages.
#[allow(clippy::manual_async_fn)] // An async fn would keep its arguments twice.
fn session<'a>(
    mut c: Box<Client>,
    plan: &'a Plan,
    shard: &'a Shard,
    live: &'a Live<'a>,
) -> impl std::future::Future<Output = End> + 'a {
    async move {
        let until = Instant::now() + live.ws.limits.max_duration;
        let send_timeout = c.send_timeout;
        let mut messages = Messages::default();
        let end = loop {
            if let Some(end) = Box::pin(frames(&mut c, plan, shard, live, &mut messages)).await {
                break end;
            }
            c.buf.drain(..c.pos);
            c.pos = 0;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Box::pin(close(&mut c, code::GOING_AWAY, "Going away")).await;
                break (code::GOING_AWAY, "the connection's duration limit".into());
            }
            let wait = live.ws.limits.idle.min(left);
            let mut held = if c.buf.is_empty() {
                Held::Idle(unbox(c).release(shard))
            } else {
                Held::Busy(c)
            };
            // Data, a command from `@connections`, or the idle limit. Readiness is
            // waited for (checked, not cached: `readiness(false)`), not a read, so
            // the wait can be given up on both drivers without losing bytes.
            // The idle limit is a slot of the shard's parked deadlines (swept by
            // the worker), not a timer of its own: monoio's is 640 bytes.
            // The wait holds the driver's operation itself (`readiness`), not an
            // async body around it.
            let woke = {
                let stream = match &mut held {
                    Held::Idle(k) => &mut k.stream,
                    Held::Busy(c) => &mut c.stream,
                };
                let buffered = stream.has_buffered();
                let mut readable = stream.tcp().readiness(false).ok();
                let slot = crate::proxy::shard::Parking::new(shard, Instant::now() + wait);
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
                    if slot.expired(cx.waker()) {
                        return Poll::Ready(Woke::Idle);
                    }
                    Poll::Pending
                })
                .await
            };
            c = match held {
                Held::Idle(kept) => Box::new(Client::new(kept, send_timeout, shard)),
                Held::Busy(c) => c,
            };
            if let Some(end) = Box::pin(woken(&mut c, shard, &live.entry, woke)).await {
                break end;
            }
        };
        c.give_bufs(shard);
        end
    }
}

/// Serves every whole frame already read; the end, if one of them ends the
/// connection.
async fn frames(
    c: &mut Client,
    plan: &Plan,
    shard: &Shard,
    live: &Live<'_>,
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
            m.ws_bytes_in.add(incoming.len() as u64);
        }
        let (stage, w, base) = (live.stage, live.ws, live.base.as_deref());
        let key = live.key.as_ref();
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
    }
}

/// Writes an access log line for an event of the connection, where the stage
/// logs (`base`: the handshake's facts).
#[allow(clippy::too_many_arguments)]
fn log_event(
    plan: &Plan,
    shard: &Shard,
    stage: StageId,
    base: Option<&crate::observe::accesslog::Facts>,
    ws: crate::observe::accesslog::WsFacts,
    request_id: crate::ids::RequestId,
    route_key: &str,
    status: u16,
    bytes: u64,
    started: Instant,
) {
    let (Some(base), Some(spec)) = (base, &plan.stages[stage].access_log) else {
        return;
    };
    let st = &plan.stages[stage];
    let now = crate::clock::unix_ms();
    let mut f = base.clone();
    f.request_id = request_id;
    f.time_ms = now;
    f.time_text = shard.log_time.borrow_mut().text(now / 1000);
    f.ws = Some(Box::new(ws));
    let response = crate::observe::accesslog::Response {
        route_key,
        api: &st.api,
        stage: &st.stage,
        status,
        bytes,
        integration_us: None,
        latency_us: started.elapsed().as_micros() as u64,
        error: None,
        retries: 0,
        canary: None,
    };
    shard.log_line(&plan.logs, spec.sink, |out| {
        crate::observe::accesslog::format_line(out, &spec.format, &f, &response)
    });
}

/// A whole message from the client.
enum Incoming {
    Text(String),
    /// Only on APIs with `binary_messages: base64`.
    Binary(Vec<u8>),
}

impl Incoming {
    fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
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
    let bytes = incoming.len() as u64;
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
