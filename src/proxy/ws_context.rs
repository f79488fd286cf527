//! A WebSocket API connection's `requestContext` (what it keeps for its life)
//! and the events made of it, its messages, and its access log lines.

use std::sync::Arc;

use std::time::Instant;

use serde_json::{Map, Value};

use crate::ids::StageId;
use crate::plan::Plan;
use crate::proxy::shard::Shard;
use crate::upstream::connections;
use crate::upstream::mapping::Lookup;

/// The `requestContext` fields of a connection's events: those that differ
/// between connections (domain name, identity, authorizer) as JSON text, so an
/// idle connection holds one short string, not a map of values; the id and
/// the time it connected. The stage's names are the events' maker's.
#[derive(Debug)]
pub struct Context {
    /// `"name":value` pairs, comma-separated, without the braces (shared
    /// with the connection's `Entry`).
    pub fields: Arc<str>,
    pub id: connections::Id,
    connected_at: u64,
}

/// A connection's registration ends with its context: wherever a connection
/// ends, nothing finds it in `CONNECTIONS` after.
impl Drop for Context {
    fn drop(&mut self) {
        connections::unregister(&self.id);
    }
}

impl Context {
    pub fn of(map: &Map<String, Value>, id: connections::Id, connected_at: u64) -> Self {
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
    pub fn event(
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

pub fn conn_facts(
    context: &Context,
    event_type: &'static str,
) -> crate::observe::accesslog::WsFacts {
    crate::observe::accesslog::WsFacts {
        connection_id: context.id().into(),
        event_type,
        message_id: None,
    }
}

/// What a message's route selection expression reads: the message.
pub struct Message<'a>(pub &'a [u8]);

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

/// Writes an access log line for an event of the connection, where the stage
/// logs (`base`: the handshake's facts).
#[allow(clippy::too_many_arguments)]
pub fn log_event(
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
pub enum Incoming {
    Text(String),
    /// Only on APIs with `binary_messages: base64`.
    Binary(Vec<u8>),
}

impl Incoming {
    /// Its size in bytes (the metrics' `bytes in`).
    pub fn bytes(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }
}

/// The subprotocol `$connect`'s integration chose (its `Sec-WebSocket-Protocol`
/// answer header), when the client offered it: AWS's way to accept one.
pub fn chosen_protocol(offered: &[String], headers: &[(String, String)]) -> Option<String> {
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
