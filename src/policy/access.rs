//! Access control, in the order a request meets it: resource policy, CORS
//! preflight, authorizer (JWT, request, SigV4), then (after the API key) request
//! validation. All of it is compiled into the plan; the per-worker parts (verified
//! tokens, authorizer decisions) live in [`AccessCache`].

use std::rc::Rc;
use std::sync::Arc;

use ipnet::IpNet;

use crate::policy::{cors, jwt, request, resource as policy, sigv4};

#[derive(Debug)]
pub enum Authorizer {
    Jwt(jwt::JwtAuthorizer),
    Request(request::RequestAuthorizer),
    Sigv4(sigv4::Sigv4Authorizer),
}

impl Authorizer {
    /// Starts what runs beside the workers (JWKS fetchers).
    pub fn start(&self) {
        if let Self::Jwt(j) = self {
            j.start();
        }
    }
}

/// A stage's access control (its API's, or its own resource policy).
#[derive(Debug, Default)]
pub struct StageAccess {
    pub policy: Option<Arc<policy::ResourcePolicy>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted: Arc<[IpNet]>,
    pub cors: Option<Arc<cors::Cors>>,
    /// Header names the API's authorizers set for the integration (lower case):
    /// a client's own are dropped.
    pub strip: Arc<[Box<str>]>,
}

/// A route's authorizer.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// Index into `Plan::authorizers`.
    pub authorizer: usize,
    pub scopes: Box<[Box<str>]>,
}

/// What a request's authorizer granted, for the integration.
#[derive(Debug, Default)]
pub struct Grant {
    /// Header lines to add (forwarded claims or context).
    pub lines: Option<Rc<[u8]>>,
    /// SigV4: the `Authorization` header is not forwarded (AWS).
    pub drop_authorization: bool,
    /// What the access log may show: the token's claims, the authorizer's context.
    pub claims: Option<Rc<jwt::Verified>>,
    pub context: Option<Rc<request::Decision>>,
}

/// One worker's remembered verifications and decisions.
#[derive(Default)]
pub struct AccessCache {
    pub tokens: jwt::TokenCache,
    pub decisions: request::DecisionCache,
}

/// Work a request needs before it can be decided; none of it changes state
/// (tokens, quotas), so the request is looked at again from the start after it.
#[derive(Debug)]
pub enum Work {
    /// Read the whole body (validation, SigV4's payload hash).
    ReadBody,
    /// Wait for a JWKS refetch; `seen`: fetches finished when it was asked.
    Jwks { authorizer: usize, seen: u64 },
    /// Ask a request authorizer.
    Call(Box<request::Call>),
    /// Cluster mode: wait for Redis's next answer on a quota this node ran out
    /// of (`seen`: answers when it was asked).
    Quota {
        quota: std::sync::Arc<crate::policy::quota::Quota>,
        seen: u64,
    },
}

/// The body read for a route that needs it whole.
#[derive(Debug)]
pub enum BodyRead {
    /// In the connection's buffer right after the head, this long.
    InBuf(usize),
    /// Chunked: decoded here (the chunked bytes stay in the buffer for forwarding).
    Decoded(Vec<u8>),
}

/// Cluster mode: how many times a request waits for Redis to grant its node more
/// of a quota (other requests on the node may take a grant first).
pub const MAX_QUOTA_WAITS: u8 = 3;

/// What earlier work found, carried into the next look at the request.
#[derive(Debug, Default)]
pub struct Pass {
    pub body: Option<BodyRead>,
    pub decision: Option<Rc<request::Decision>>,
    /// Keys were refetched for this request.
    pub refreshed: bool,
    /// Times a quota's grant was waited for (at most `MAX_QUOTA_WAITS`).
    pub quota_waits: u8,
    /// The request id given on the first look.
    pub id: Option<crate::ids::RequestId>,
    pub rounds: u8,
}
