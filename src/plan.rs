//! The compiled config every worker reads, shared read-only as `Arc<Plan>` and
//! built once by `compile`. Its fields are ready values (durations, resolved
//! addresses, compiled routers, ids) and, apart, `Arc` handles to the cross-thread
//! state a compile creates and a reload carries over or replaces (shared token
//! buckets, the published keyring, cache counters, metrics, log sinks, span export,
//! authorizers' key sets): the plan fixes which state a request uses, never holds
//! a lock, and the types of that state live in the layers below (`policy`,
//! `observe`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::RuntimeKind;
use crate::http::respond::MockResponse;
use crate::observe::trace::TracingPlan;
use crate::policy::cache::KeyParam;
use crate::policy::usage::StageInfo;
use crate::route::Router;
use crate::route::Stages;
use crate::upstream::pool::PoolLimits;
use crate::upstream::target::ProxyTarget;

#[derive(Debug)]
pub struct Plan {
    /// 0 for the plan the gateway started with; each reload adds one.
    pub generation: u64,
    /// `watch: true`: the file is reloaded when it changes.
    pub watch: bool,
    /// Each API's definition in the config, as JSON without `stages`: what a
    /// deployment snapshots.
    pub api_sources: HashMap<String, serde_json::Value>,
    pub workers: usize,
    pub runtime: RuntimeKind,
    /// The longest an epoll worker polls before sleeping (zero: never).
    pub busy_poll: Duration,
    pub drain_timeout: Duration,
    pub listeners: Vec<ListenerPlan>,
    pub stages: Vec<StagePlan>,
    pub pool: PoolLimits,
    /// Upstream groups, configured and implicit (`Upstream::Group` indexes).
    pub upstreams: Vec<Arc<crate::upstream::group::Group>>,
    /// `functions[]`: `lambda` integrations name them by index.
    pub functions: Vec<Arc<crate::upstream::function::Function>>,
    /// Every throttle of the config. A reload keeps the buckets whose name and
    /// limit did not change (their levels and the shards' unspent tokens).
    pub throttles: Vec<Arc<crate::policy::throttle::SharedBucket>>,
    /// Each throttle's name: `gateway`, `api/stage` or `api/stage/ROUTE KEY`.
    pub throttle_names: Vec<String>,
    /// The gateway-wide throttle.
    pub throttle: Option<crate::ids::ThrottleId>,
    /// The usage plans and API keys the config declares (the registry adds those
    /// of the management API and the store).
    pub seed: crate::policy::usage::Seed,
    /// The keyring the workers read, published by the registry.
    pub live: Arc<crate::policy::keys::Live>,
    /// The management API's listener, if `admin:` is configured.
    pub admin: Option<AdminPlan>,
    /// Cache flushes, counters and sizes shared by the workers and the admin API.
    pub cache: Arc<crate::policy::cache::Shared>,
    /// `store.path`: where keys and usage persist; in memory when absent.
    pub store_path: Option<std::path::PathBuf>,
    /// `store.redis`: cluster mode.
    pub redis: Option<RedisPlan>,
    /// The instant throttle clocks count from, the same for every worker.
    pub epoch: std::time::Instant,
    /// Every API's authorizers; routes refer to them by index.
    pub authorizers: Vec<Arc<crate::policy::access::Authorizer>>,
    /// Each authorizer's config digest: a reload keeps those that did not change.
    pub authorizer_sigs: Vec<u64>,
    /// Each authorizer's number for the workers' token and decision memories.
    pub authorizer_uids: Vec<usize>,
    /// SigV4 access keys (the config's and the management API's).
    pub access_keys: Arc<crate::policy::sigv4::KeyTable>,
    /// The access keys the config declares.
    pub config_access_keys: Vec<crate::policy::sigv4::AccessKey>,
    /// Per-worker counters and histograms, summed by `/metrics`.
    pub metrics: Arc<crate::observe::metrics::Metrics>,
    /// `metrics: false` in the config: requests are not counted.
    pub metrics_on: bool,
    /// Access log sinks and their writer.
    pub logs: Arc<crate::observe::accesslog::Logs>,
    pub tracing: TracingPlan,
    /// OTLP span export, when `telemetry.otlp_endpoint` is set.
    pub telemetry: Option<Arc<crate::observe::telemetry::Exporter>>,
}

impl Plan {
    /// A stage and its canary's compiled stage (the caches a stage flush empties).
    pub fn with_canary(
        &self,
        stage: crate::ids::StageId,
    ) -> impl Iterator<Item = crate::ids::StageId> {
        std::iter::once(stage).chain(self.stages[stage].canary.as_ref().map(|c| c.stage))
    }
}

#[derive(Debug, Clone)]
pub struct AdminPlan {
    pub bind: SocketAddr,
    /// The bearer token; `None` refuses every management call.
    pub token: Option<String>,
}

#[derive(Debug)]
pub struct ListenerPlan {
    pub name: String,
    /// `bind` as configured (port 0 stays 0): a reload compares these.
    pub configured: SocketAddr,
    /// As configured until the sockets are bound; then the address actually bound.
    pub bind: SocketAddr,
    pub limits: Limits,
    /// Which stage serves a request: domains, stage segments, `$default`.
    pub stages: Stages,
    /// HTTPS: certificates, client authentication; swapped on reload.
    pub tls: Option<Arc<crate::http::tls::ListenerTls>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bodies read whole before forwarding (validation, SigV4) are at most this.
    pub max_buffered_body_bytes: u64,
    /// Head and body of one request, from its first byte: a client trickling a
    /// body cannot hold a connection past this.
    pub request_timeout: Duration,
    /// A write to the client that makes no progress for this long is cut (a
    /// client that does not read its response).
    pub send_timeout: Duration,
    pub paths: crate::http::path::Rules,
    /// A WebSocket tunnel with no bytes either way for this long is closed (the
    /// listener's `idle_timeout_ms`, else 10 minutes).
    pub websocket_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 16 KiB: the default; AWS allows 10,240 B of header values.
            max_header_bytes: 16 * 1024,
            // 10 MiB: AWS's payload limit for REST and HTTP APIs.
            max_body_bytes: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_buffered_body_bytes: 1024 * 1024,
            // 30 s: AWS's integration ceiling, so a request the gateway can serve
            // is never cut by its own upload taking longer than AWS allows.
            request_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            paths: crate::http::path::Rules::default(),
            websocket_idle: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
pub struct StagePlan {
    pub api: String,
    pub stage: String,
    /// Stage variables (functions' events carry them).
    pub variables: std::collections::BTreeMap<String, String>,
    pub router: Arc<Router>,
    pub routes: Vec<RoutePlan>,
    /// The stage-wide throttle (`stages[].throttle`), over all its routes.
    pub throttle: Option<crate::ids::ThrottleId>,
    /// Bytes of response cache (`stages[].cache.capacity_mb`), over all workers;
    /// 0 without a cache.
    pub cache_bytes: usize,
    pub access: crate::policy::access::StageAccess,
    pub access_log: Option<crate::observe::accesslog::LogSpec>,
    /// A WebSocket API's stage: how messages are routed, its limits (shared
    /// with its open connections, which outlive a request).
    pub ws: Option<Arc<WsStage>>,
    /// The API's `gateway_responses`, compiled for this stage.
    pub responses: Option<Arc<crate::http::responses::Responses>>,
    /// The stage's canary release, when it has one.
    pub canary: Option<Box<Canary>>,
    /// A canary's own compiled stage (never dispatched to: its stage draws it).
    pub canary_of: Option<Box<CanaryOf>>,
}

/// A stage's canary release.
#[derive(Debug)]
pub struct Canary {
    /// The compiled stage serving the canary's share.
    pub stage: crate::ids::StageId,
    /// A request is the canary's when a 32-bit draw is below this
    /// (`percent` of 2^32).
    pub threshold: u64,
    /// As in force: the file's, or the management API's.
    pub setting: crate::config::CanaryFile,
}

impl Canary {
    pub fn threshold(percent: f64) -> u64 {
        ((percent.clamp(0.0, 100.0) / 100.0) * (1u64 << 32) as f64) as u64
    }

    /// Whether a request with the random `draw` goes to the canary.
    pub fn takes(&self, draw: u64) -> bool {
        (draw >> 32) < self.threshold
    }
}

/// What a canary's compiled stage owes its stage.
#[derive(Debug)]
pub struct CanaryOf {
    /// The stage whose share this serves: API keys, usage plans and their
    /// throttles know canary requests by it.
    pub parent: crate::ids::StageId,
    /// Each of the canary's routes → the stage's route of the same key.
    pub routes: Box<[Option<crate::ids::RouteId>]>,
    /// The stage as metrics label the canary's series (AWS's `prod/Canary`).
    pub label: String,
}

impl StagePlan {
    /// The stage's name as metrics and caches know it: a canary's is AWS's
    /// `prod/Canary`.
    pub fn label(&self) -> &str {
        self.canary_of.as_ref().map_or(&self.stage, |c| &c.label)
    }

    /// `$context.isCanaryRequest` of a request this stage served: `None` where
    /// the stage has no canary.
    pub fn is_canary_request(&self) -> Option<bool> {
        if self.canary_of.is_some() {
            Some(true)
        } else {
            self.canary.as_ref().map(|_| false)
        }
    }

    /// The (stage, route) that API keys, usage plans and their per-route
    /// throttles know a request by: a canary's route is its stage's route of
    /// the same key (`RouteId::MAX` where the stage has none).
    pub fn usage_ids(
        &self,
        stage: crate::ids::StageId,
        route: crate::ids::RouteId,
    ) -> (crate::ids::StageId, crate::ids::RouteId) {
        match &self.canary_of {
            None => (stage, route),
            Some(c) => (
                c.parent,
                c.routes.get(route).copied().flatten().unwrap_or(usize::MAX),
            ),
        }
    }
}

/// A stage of a WebSocket API.
#[derive(Debug)]
pub struct WsStage {
    /// The route selection expression (`$request.body.action`); `None` when it
    /// did not compile (there is then no plan).
    pub selection: Option<crate::upstream::mapping::Expr>,
    /// Custom route keys → route ids.
    pub routes: std::collections::HashMap<String, crate::ids::RouteId>,
    /// `None` for `$connect`: the handshake is accepted (a route added at the
    /// end of the stage's routes answers it).
    pub connect: Option<crate::ids::RouteId>,
    pub disconnect: Option<crate::ids::RouteId>,
    pub default: Option<crate::ids::RouteId>,
    /// Per route id: the integration's answer goes back to the client.
    pub route_response: Vec<bool>,
    /// The first of the `@connections` routes (POST, GET, DELETE, then the same
    /// with `%40`), when the API has a `connections_authorizer`.
    pub connections: Option<crate::ids::RouteId>,
    pub limits: WsLimits,
    /// The API's and the stage's names, as each connection's `Entry` holds them
    /// (`upstream::connections::scope`).
    pub scope: std::sync::Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    pub max_frame: usize,
    pub max_message: usize,
    pub idle: std::time::Duration,
    pub max_duration: std::time::Duration,
    /// `binary_messages: base64`: binary messages reach the integration.
    pub binary: bool,
}

/// How one route's responses are cached.
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub ttl_ms: u64,
    /// The request parameters that vary the key, in the order configured.
    pub key: Box<[KeyParam]>,
    /// Methods besides GET and HEAD are cached (the route opted in).
    pub any_method: bool,
    pub require_authorization: bool,
    pub unauthorized: crate::config::UnauthorizedStrategy,
}

#[derive(Debug)]
pub struct RoutePlan {
    /// As written in the config, e.g. `GET /pets/{id}` or `$default`.
    pub key: String,
    pub integration: Integration,
    /// The stage's throttle for this route (`stages[].routes[key].throttle`).
    pub throttle: Option<crate::ids::ThrottleId>,
    /// Requests need an `x-api-key` of a usage plan covering this stage.
    pub api_key_required: bool,
    /// The stage's response cache for this route, if it caches.
    pub cache: Option<RouteCache>,
    pub auth: Option<crate::policy::access::RouteAuth>,
    pub validate: Option<Arc<crate::policy::validate::Validator>>,
    /// This route's series in `Plan::metrics` (kept across reloads).
    pub metric_slot: usize,
    /// HTTP API parameter mapping of the route's integration.
    pub mapping: Option<Arc<crate::upstream::mapping::Mappings>>,
    /// A digest of everything the route's config says (and its stage's
    /// variables): cached responses of a route that a reload changed are not
    /// served (the digest is part of the cache key).
    pub sig: u64,
}

#[derive(Debug)]
pub enum Integration {
    HttpProxy(ProxyTarget),
    Mock(MockResponse),
    Lambda(Box<LambdaPlan>),
    Aws(Box<crate::upstream::aws::AwsAction>),
}

/// A `lambda` integration.
#[derive(Debug)]
pub struct LambdaPlan {
    pub target: LambdaTarget,
    /// Payload format 2.0 (else 1.0).
    pub v2: bool,
    /// How long the caller waits (the integration timeout).
    pub timeout: std::time::Duration,
}

#[derive(Debug)]
pub enum LambdaTarget {
    /// One of `Plan::functions`.
    Local(usize),
    /// A function in AWS: the Invoke API's endpoint and path.
    Remote {
        endpoint: Box<crate::upstream::aws::AwsEndpoint>,
        path: String,
    },
}

/// Gives each route of `stages` its series in `metrics` (kept across reloads).
pub fn assign_metric_slots(metrics: &crate::observe::metrics::Metrics, stages: &mut [StagePlan]) {
    for s in stages {
        let stage = s.label().to_owned();
        for r in &mut s.routes {
            r.metric_slot = metrics.slot(&s.api, &stage, &r.key);
        }
    }
}

impl StageInfo {
    pub fn of(stages: &[StagePlan]) -> Vec<StageInfo> {
        // Canaries (after every stage) are known by their stages.
        stages
            .iter()
            .filter(|s| s.canary_of.is_none())
            .map(|s| StageInfo {
                api: s.api.clone(),
                stage: s.stage.clone(),
                routes: s.routes.iter().map(|r| r.key.clone()).collect(),
            })
            .collect()
    }
}

/// `store.redis` as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisPlan {
    /// One URL (standalone), or the cluster nodes given.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub password: Option<String>,
    pub key_prefix: String,
    pub fail_open: bool,
}
