//! Where an `http_proxy` integration (or a request authorizer) sends requests: one
//! fixed address or an upstream group, its TLS, and the path template filled from
//! route parameters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::upstream::pool::{Conns, PoolKey};

/// One address requests go to, and how.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pool_key: PoolKey,
    /// `https://`: how the upstream is verified.
    pub tls: Option<crate::http::tls::UpstreamTls>,
    /// `host[:port]` as written in the URI: sent as the upstream `Host`.
    pub host_header: Box<str>,
    /// A group target's open connections over all workers (its connection cap
    /// and gauge): counted by each connection from connect to close.
    pub open: Option<Arc<Conns>>,
}

/// An integration's upstream: an address fixed at compile time (an IP literal),
/// or a group (configured in `upstreams`, or the host name of a plain URI,
/// re-resolved while the gateway runs), by its index in `Plan::upstreams`.
#[derive(Debug)]
pub enum Upstream {
    Fixed(Endpoint),
    Group(usize),
}

#[derive(Debug)]
pub struct ProxyTarget {
    pub to: Upstream,
    /// The `Host` written into the upstream head before a group's target is
    /// picked (its first target's; replaced when the pick differs).
    pub host_header: Box<str>,
    /// Path template; parameters refer to route parameter names.
    pub path: Vec<PathPart>,
    /// For `$default` routes (AWS: "the full request path"): append the request path.
    pub append_request_path: bool,
    /// Query string fixed in the integration URI, if any (without `?`).
    pub query: Option<Box<str>>,
    pub timeout: Duration,
}

impl ProxyTarget {
    /// The fixed endpoint (request authorizers always have one).
    pub fn fixed(&self) -> Option<&Endpoint> {
        match &self.to {
            Upstream::Fixed(e) => Some(e),
            Upstream::Group(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Literal(Box<str>),
    Param(Box<str>),
}
