//! What a stage of the request pipeline decides: let the request go on, or settle
//! it with an `Action` the connection loop carries out.

use crate::http::error::GatewayError;
use crate::ids::{RouteId, StageId};
use crate::policy::access::Work;

pub enum Action {
    Refuse(GatewayError),
    /// Something to do (read the body, ask an authorizer) before deciding.
    Work(Work),
    /// A CORS preflight, answered by the gateway (headers in the tag).
    Preflight,
    Mock(StageId, RouteId),
    /// Served from this worker's cache.
    CacheHit(std::rc::Rc<crate::policy::cache::Entry>),
    /// The upstream head is in `Client::up_head`.
    Proxy(StageId, RouteId, Pick),
    /// A WebSocket API's handshake (`$connect`), worked out.
    WsConnect(StageId, RouteId, Box<crate::proxy::websocket::Opening>),
    /// An `@connections` call of a WebSocket API.
    Connections(StageId, Box<crate::proxy::manage::ConnectionsCall>),
    /// A `lambda` or `aws` integration's invocation, built.
    Invoke(StageId, RouteId, Box<crate::proxy::invoke::Invocation>),
}

/// A stage's verdict: `Ok` lets the request go on to the next stage; `Err` is the
/// action that settles it (a refusal, a preflight, a cache hit, work to do first).
pub type Verdict<T = ()> = Result<T, Action>;

/// What the pipeline worked out for a group's pick.
#[derive(Debug, Clone)]
pub struct Pick {
    /// Where the `Host` value is in `Client::up_head`.
    pub host: std::ops::Range<usize>,
    /// The consistent-hash key's hash, when the group hashes and the request
    /// has the key (else the group's fallback: least request).
    pub hash: Option<u64>,
    /// The request asks for a WebSocket.
    pub websocket: bool,
}
