//! Where an `http_proxy` integration (or a request authorizer) sends requests: the
//! upstream address, its TLS, and the path template filled from route parameters.

use std::net::SocketAddr;
use std::time::Duration;

use crate::upstream::pool::PoolKey;

#[derive(Debug)]
pub struct ProxyTarget {
    pub addr: SocketAddr,
    pub pool_key: PoolKey,
    /// `https://`: how the upstream is verified.
    pub tls: Option<crate::http::tls::UpstreamTls>,
    /// `host[:port]` as written in the URI: sent as the upstream `Host`.
    pub host_header: Box<str>,
    /// Path template; parameters refer to route parameter names.
    pub path: Vec<PathPart>,
    /// For `$default` routes (AWS: "the full request path"): append the request path.
    pub append_request_path: bool,
    /// Query string fixed in the integration URI, if any (without `?`).
    pub query: Option<Box<str>>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Literal(Box<str>),
    Param(Box<str>),
}
