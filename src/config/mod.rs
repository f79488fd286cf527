//! The config file as users write it (`../shared/spec/config.md`): serde types that keep
//! human units, and the loader that reports every structural error at once with the
//! key's path. `compile` turns these into a [`crate::plan::Plan`].

use std::collections::BTreeMap;

pub mod functions;
pub mod secret;
pub mod upstreams;
pub mod websocket;

pub use functions::{AwsCredentialsFile, FunctionFile, ParameterMap, ResponseParameters};
pub use secret::{EnvRef, SecretFile};
pub use upstreams::{
    Balance, ClientCertFile, HealthCheckFile, OutlierFile, RetriesFile, UpstreamFile,
    UpstreamTargetFile, UpstreamTlsFile,
};
pub use websocket::WsLimitsFile;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// One problem in a config file, with the path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one file, in file order.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn not_supported(&mut self, path: impl Into<String>) {
        let path = path.into();
        let message = format!("not supported yet: {path}");
        self.push(path, message);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    #[default]
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// The driver measured fastest for this kind of host (see `tuning/drivers.md`).
    #[default]
    Auto,
    IoUring,
    Epoll,
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "io_uring" => Ok(Self::IoUring),
            "epoll" => Ok(Self::Epoll),
            other => Err(format!(
                "unknown runtime {other:?}: expected auto, io_uring or epoll"
            )),
        }
    }
}

/// The whole file. Sections owned by later features are kept as raw values so that
/// `compile` can refuse them by name instead of silently ignoring them.
#[derive(Debug, Default)]
pub struct ConfigFile {
    pub workers: Workers,
    pub runtime: RuntimeKind,
    /// `busy_poll_us`: how long an epoll worker may poll before it sleeps
    /// (`None`: `compile::gateway::DEFAULT_BUSY_POLL_US`).
    pub busy_poll_us: Option<u64>,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub drain_timeout_ms: Option<u64>,
    /// List elements that failed to parse are `None`, so later errors keep the
    /// indexes of the file.
    pub listeners: Vec<Option<ListenerFile>>,
    pub apis: Vec<Option<ApiFile>>,
    /// Each API's mapping as written (deployments snapshot it).
    pub api_values: Vec<Value>,
    pub domains: Vec<Option<DomainFile>>,
    /// The gateway-wide throttle, over all APIs.
    pub throttle: Option<ThrottleFile>,
    pub usage_plans: Vec<Option<UsagePlanFile>>,
    pub api_keys: Vec<Option<ApiKeyFile>>,
    pub admin: Option<AdminFile>,
    pub store: Option<StoreFile>,
    pub tracing: Option<TracingFile>,
    pub telemetry: Option<TelemetryFile>,
    /// `metrics: false` turns the per-request counters off (default on).
    pub metrics: Option<bool>,
    /// `watch: true`: reload when the file changes.
    pub watch: Option<bool>,
    /// Upstream groups `http_proxy` integrations may name.
    pub upstreams: Vec<Option<UpstreamFile>>,
    /// How often host names in `http_proxy` URIs are resolved again (seconds).
    pub dns_refresh_s: Option<u64>,
    /// Functions run next to the gateway (`lambda` integrations name them).
    pub functions: Vec<Option<FunctionFile>>,
    /// Present but not yet served: (key path, value).
    pub unsupported: Vec<String>,
    /// The config file's directory: relative certificate paths are looked up there
    /// first, then in the working directory.
    pub base_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub tls: Option<ListenerTlsFile>,
    #[serde(default)]
    pub limits: LimitsFile,
    /// How request paths are normalised (`shared/spec/config.md`, "Request paths").
    #[serde(default)]
    pub paths: PathsFile,
    /// The APIs this listener serves; all when absent.
    #[serde(default)]
    pub apis: Option<Vec<String>>,
}

/// `listeners[].tls`: HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// Chosen by SNI; the first is the default.
    pub certificates: Vec<CertificateFile>,
    #[serde(default)]
    pub client_auth: Option<ClientAuthFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8; PKCS#1 and SEC1 also read).
    pub key: String,
    /// Server names it answers (exact or `*.example.com`); the certificate's DNS
    /// subject alternative names when absent.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthFile {
    /// PEM bundle of the CA certificates client certificates must chain to.
    pub truststore: String,
    #[serde(default = "default_client_auth_mode")]
    pub mode: String,
    /// Pass the verified certificate's subject, issuer, serial and validity to the
    /// integration as `x-client-cert-*` headers.
    #[serde(default)]
    pub forward_headers: bool,
}

fn default_client_auth_mode() -> String {
    "required".to_owned()
}

/// `listeners[].paths`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsFile {
    /// `reject` (default): `%2F`/`%5C` in a path is a 400; `keep`: passed on encoded.
    #[serde(default)]
    pub escaped_slashes: KeepOrReject,
    /// `reject` (default): `;` in a path is a 400 (servlet containers read it as
    /// path parameters and route around the gateway); `keep`: an ordinary character.
    #[serde(default)]
    pub semicolons: KeepOrReject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepOrReject {
    Keep,
    #[default]
    Reject,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_header_bytes: Option<usize>,
    pub max_body_bytes: Option<u64>,
    /// Bodies a route must read whole before forwarding (request validation, SigV4
    /// payload hashes) may be at most this long; default 1 MiB.
    pub max_buffered_body_bytes: Option<u64>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    /// The whole request (head and body) must arrive within this; default 30000.
    pub request_timeout_ms: Option<u64>,
    /// A response write that makes no progress for this long is cut; default 30000.
    pub send_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ApiFile {
    pub name: String,
    pub kind: String,
    pub routes: Vec<Option<RouteFile>>,
    pub stages: Vec<Option<StageFile>>,
    pub cors: Option<CorsFile>,
    /// List elements that failed to parse are `None`, so indexes stay those of the file.
    pub authorizers: Vec<Option<AuthorizerFile>>,
    pub resource_policy: Option<ResourcePolicyFile>,
    /// CIDRs of the proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// WebSocket APIs: which part of a message names its route.
    pub route_selection_expression: Option<String>,
    /// WebSocket APIs: the SigV4 authorizer whose keys sign `@connections` calls.
    pub connections_authorizer: Option<String>,
    /// WebSocket APIs: what a binary message does (AWS: closes with 1003).
    pub binary_messages: BinaryMessages,
    /// `gateway_responses`: by AWS's response type (`THROTTLED`, `DEFAULT_4XX`, ...).
    pub gateway_responses: BTreeMap<String, GatewayResponseFile>,
}

/// `apis[].gateway_responses.TYPE`: what replaces the gateway's own answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayResponseFile {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A template: `$context.error.message`, `$context.requestId`, ...
    #[serde(default)]
    pub body: Option<String>,
}

/// `apis[].cors`: AWS HTTP APIs' `corsConfiguration`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age_s: Option<i64>,
    #[serde(default)]
    pub allow_credentials: bool,
}

/// `resource_policy`: who may call an API (or one stage), evaluated before
/// authorizers; a deny wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePolicyFile {
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// Host names (custom domains) the API may be called through.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub deny_hosts: Vec<String>,
}

/// `apis[].authorizers[]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthorizerFile {
    Jwt {
        name: String,
        issuer: String,
        audience: Vec<String>,
        /// Where the signing keys are; `{issuer}/.well-known/openid-configuration`
        /// names it when absent (and `jwks` is absent).
        #[serde(default)]
        jwks_uri: Option<String>,
        /// The keys themselves, as a JWKS document (`{ keys: [...] }`).
        #[serde(default)]
        jwks: Option<Value>,
        /// Accepted signature algorithms; default RS256 and ES256.
        #[serde(default)]
        algorithms: Option<Vec<String>>,
        /// Clock skew allowed on `exp`, `nbf` and `iat`; default 60, at most 300.
        #[serde(default)]
        leeway_s: Option<u64>,
        /// Where the token is read: `header.NAME` (default `header.authorization`)
        /// or `query.NAME`.
        #[serde(default)]
        identity_source: Option<String>,
        /// A refetch for an unknown `kid` happens at most once per this many
        /// seconds; default 60.
        #[serde(default)]
        refresh_interval_s: Option<u64>,
        /// Verified claims passed to the integration: claim name → header name.
        #[serde(default)]
        forward: BTreeMap<String, String>,
    },
    Request {
        name: String,
        uri: String,
        #[serde(default)]
        identity_sources: Vec<String>,
        /// Seconds a decision is cached per identity; default 300, 0 to 3600.
        #[serde(default)]
        ttl_s: Option<u64>,
        /// Default 10000 (AWS's authorizer timeout).
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        tls: Option<UpstreamTlsFile>,
        /// Context values passed to the integration: context key → header name.
        #[serde(default)]
        forward: BTreeMap<String, String>,
    },
    Sigv4 {
        name: String,
        region: String,
        #[serde(default)]
        access_keys: Vec<AccessKeyFile>,
    },
}

impl AuthorizerFile {
    pub fn name(&self) -> &str {
        match self {
            Self::Jwt { name, .. } | Self::Request { name, .. } | Self::Sigv4 { name, .. } => name,
        }
    }
}

/// A SigV4 access key: in the config, in the store and in the management API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKeyFile {
    pub id: String,
    pub secret: SecretFile,
    /// `api/stage/route` patterns the key may call (`*` as the last part, or a
    /// whole part); every route when empty.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `routes[].validate`: AWS's request validator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateFile {
    /// `header.NAME`, `query.NAME` or `path.NAME`: present and not blank.
    #[serde(default)]
    pub required: Vec<String>,
    /// JSON Schema (draft 4 unless `$schema` names another) of the body.
    #[serde(default)]
    pub body_schema: Option<Value>,
    /// Media types whose bodies are validated; default `[application/json]`.
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
}

/// The keys of an API besides `routes` and `stages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiHead {
    name: String,
    #[serde(rename = "type", default = "default_api_type")]
    kind: String,
    #[serde(default)]
    cors: Option<CorsFile>,
    #[serde(default)]
    resource_policy: Option<ResourcePolicyFile>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    gateway_responses: BTreeMap<String, GatewayResponseFile>,
    #[serde(default)]
    route_selection_expression: Option<String>,
    #[serde(default)]
    connections_authorizer: Option<String>,
    #[serde(default)]
    binary_messages: BinaryMessages,
}

/// `apis[].binary_messages` (WebSocket APIs; not in AWS, which has only `close`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryMessages {
    /// AWS's: a binary message closes the connection with 1003.
    #[default]
    Close,
    /// The integration gets the message base64-encoded (`isBase64Encoded: true`);
    /// its route response goes back as a binary message, base64-decoded.
    Base64,
}

fn default_api_type() -> String {
    "http".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub route: String,
    pub integration: IntegrationFile,
    #[serde(default)]
    pub api_key_required: Option<bool>,
    /// The name of one of the API's authorizers.
    #[serde(default)]
    pub authorizer: Option<String>,
    /// JWT: the token must carry at least one of these scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// WebSocket APIs: the integration's answer goes back to the client.
    #[serde(default)]
    pub route_response: Option<bool>,
    #[serde(default)]
    pub validate: Option<ValidateFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum IntegrationFile {
    HttpProxy {
        /// A full URL; with `upstream`, a path on the group's targets.
        #[serde(default)]
        uri: String,
        /// The name of an upstream group (may be a stage variable).
        #[serde(default)]
        upstream: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
        #[serde(default)]
        tls: Option<UpstreamTlsFile>,
        #[serde(default)]
        request_parameters: ParameterMap,
        #[serde(default)]
        response_parameters: ResponseParameters,
    },
    /// A function: one of `functions` (local) or one in AWS (`function_arn`).
    Lambda(Box<functions::LambdaFile>),
    /// An AWS service action (HTTP API integration subtypes).
    Aws(Box<functions::AwsFile>),
    Mock {
        #[serde(default = "default_mock_status")]
        status: u16,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        body: String,
    },
}

fn default_mock_status() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    pub name: String,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub throttle: Option<ThrottleFile>,
    #[serde(default)]
    pub cache: Option<StageCacheFile>,
    #[serde(default)]
    pub access_log: Option<AccessLogFile>,
    /// Replaces the API's resource policy for this stage.
    #[serde(default)]
    pub resource_policy: Option<ResourcePolicyFile>,
    /// Per-route overrides, keyed by route key (`"GET /pets"`).
    #[serde(default)]
    pub routes: BTreeMap<String, StageRouteFile>,
    /// WebSocket APIs: message and frame sizes, idle and duration limits.
    #[serde(default)]
    pub limits: Option<WsLimitsFile>,
    /// A canary release: a share of the stage's requests served by another
    /// deployment and/or other stage variables.
    #[serde(default)]
    pub canary: Option<CanaryFile>,
}

/// `stages[].canary`, as AWS's `canarySettings`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    /// The share of the stage's requests the canary serves, 0.0 to 100.0.
    pub percent: f64,
    /// A deployment id (from the management API); absent: the stage's own.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Stage variables over the stage's, for canary requests.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRouteFile {
    #[serde(default)]
    pub throttle: Option<ThrottleFile>,
    #[serde(default)]
    pub cache: Option<RouteCacheFile>,
}

/// `stages[].access_log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// `stdout` or a file path (appended; reopened on SIGUSR1).
    pub path: String,
    /// `json` (default), `clf`, `csv`, or a template of `$context` variables.
    #[serde(default)]
    pub format: Option<String>,
}

/// `stages[].cache`: the stage's response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageCacheFile {
    /// Memory for the stage's cache, split evenly across workers.
    #[serde(default = "default_capacity_mb")]
    pub capacity_mb: u64,
    /// Default 300; 0 to 3600; 0 disables.
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

fn default_capacity_mb() -> u64 {
    64
}

/// `stages[].routes[key].cache`: one route's caching, over the stage's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheFile {
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// Request parameters that vary the key: `query.NAME`, `header.NAME`, `path.NAME`.
    #[serde(default)]
    pub key: Vec<String>,
    /// `Cache-Control: max-age=0` invalidates only for an authorized caller.
    #[serde(default)]
    pub require_authorization: bool,
    #[serde(default)]
    pub unauthorized_strategy: UnauthorizedStrategy,
}

/// What an unauthorized `Cache-Control: max-age=0` gets (AWS's
/// `unauthorizedCacheControlHeaderStrategy`; AWS's default is to succeed with a
/// warning header).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnauthorizedStrategy {
    #[serde(rename = "fail_with_403")]
    FailWith403,
    #[default]
    SucceedWithHeader,
    SucceedWithoutHeader,
}

/// A usage plan: in the config, in the store, and in the management API's bodies.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsagePlanFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `api/stage` names.
    pub stages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaFile>,
    /// Per-key, per-route throttles: `"api/stage/GET /pets": { rate, burst }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, ThrottleFile>,
}

/// `admin:`: the listener of the management API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Default `127.0.0.1:9901` (loopback).
    #[serde(default)]
    pub bind: Option<String>,
    /// Bearer token the management API requires; without it the API refuses all.
    #[serde(default)]
    pub token: Option<SecretFile>,
}

/// `store:`: where keys and usage are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub redis: Option<RedisFile>,
}

/// `store.redis`: cluster mode, every node sharing its state through Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://host:port/db` (`rediss://` for TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes' URLs.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    #[serde(default)]
    pub password: Option<SecretFile>,
    #[serde(default)]
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Keep serving with local limits and the keys last seen.
    #[default]
    FailOpen,
    /// Answer 503 on keyed or throttled routes.
    FailClosed,
}

/// `telemetry:`: where sampled requests' spans go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans; default `shardgate`.
    #[serde(default)]
    pub service_name: Option<String>,
}

/// `tracing:`: trace headers the gateway creates when a request has none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// Create `traceparent` and `X-Amzn-Trace-Id` when absent (default true).
    #[serde(default)]
    pub create: Option<bool>,
    /// The share of created traces marked sampled, 0 to 1 (default 0.05).
    #[serde(default)]
    pub sample_rate: Option<f64>,
}

/// `{ limit, period }`: requests per key per calendar period (UTC).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaFile {
    pub limit: u64,
    pub period: Period,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    pub name: String,
    pub value: SecretFile,
    #[serde(default)]
    pub plans: Vec<String>,
    #[serde(default = "enabled_default")]
    pub enabled: bool,
    #[serde(default)]
    pub description: Option<String>,
}

fn enabled_default() -> bool {
    true
}

/// `{ rate, burst }`: requests per second, and the bucket size.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThrottleFile {
    pub rate: f64,
    pub burst: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainFile {
    pub name: String,
    pub mappings: Vec<MappingFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    #[serde(default)]
    pub base_path: String,
    pub api: String,
    pub stage: String,
}

/// Parses config text; every structural error at once.
pub fn parse(text: &str) -> Result<ConfigFile, ConfigErrors> {
    match parse_partial(text) {
        (Some(cfg), errs) if errs.is_empty() => Ok(cfg),
        (_, errs) => Err(errs),
    }
}

/// Parses what it can: the elements that parsed, and the errors of those that did not.
/// `None` only when the text is not a YAML mapping at all.
pub fn parse_partial(text: &str) -> (Option<ConfigFile>, ConfigErrors) {
    let mut errs = ConfigErrors::default();
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errs.push("", format!("not valid YAML: {e}"));
            return (None, errs);
        }
    };
    let Value::Mapping(root) = root else {
        errs.push("", "the config must be a mapping of keys");
        return (None, errs);
    };
    let mut cfg = ConfigFile::default();
    let mut saw_listeners = false;
    let mut saw_apis = false;
    for (k, v) in root {
        let Some(key) = k.as_str().map(str::to_owned) else {
            errs.push("", format!("keys must be strings, found {k:?}"));
            continue;
        };
        match key.as_str() {
            "workers" => cfg.workers = parse_workers(&v, &mut errs),
            "runtime" => {
                if let Some(r) = de::<RuntimeKind>(v, "runtime", &mut errs) {
                    cfg.runtime = r
                }
            }
            "drain_timeout_ms" => cfg.drain_timeout_ms = de(v, "drain_timeout_ms", &mut errs),
            "busy_poll_us" => cfg.busy_poll_us = de(v, "busy_poll_us", &mut errs),
            "listeners" => {
                saw_listeners = true;
                cfg.listeners = de_list(v, "listeners", &mut errs, de);
            }
            "apis" => {
                saw_apis = true;
                if let Value::Sequence(items) = &v {
                    cfg.api_values = items.clone();
                }
                cfg.apis = de_list(v, "apis", &mut errs, parse_api);
            }
            "domains" => cfg.domains = de_list(v, "domains", &mut errs, de),
            "throttle" => cfg.throttle = de(v, "throttle", &mut errs),
            "usage_plans" => cfg.usage_plans = de_list(v, "usage_plans", &mut errs, de),
            "api_keys" => cfg.api_keys = de_list(v, "api_keys", &mut errs, de),
            "admin" if !v.is_null() => cfg.admin = de(v, "admin", &mut errs),
            "store" if !v.is_null() => cfg.store = de(v, "store", &mut errs),
            "admin" | "store" => {}
            "tracing" => cfg.tracing = de(v, "tracing", &mut errs),
            "metrics" => cfg.metrics = de(v, "metrics", &mut errs),
            "watch" => cfg.watch = de(v, "watch", &mut errs),
            "telemetry" => cfg.telemetry = de(v, "telemetry", &mut errs),
            "upstreams" => cfg.upstreams = de_list(v, "upstreams", &mut errs, de),
            "dns_refresh_s" => cfg.dns_refresh_s = de(v, "dns_refresh_s", &mut errs),
            "functions" => cfg.functions = de_list(v, "functions", &mut errs, de),
            other => errs.push(
                other,
                "unknown key: expected one of workers, runtime, busy_poll_us, drain_timeout_ms, listeners, \
                 admin, store, apis, domains, usage_plans, api_keys, throttle, tracing, metrics, telemetry, \
                 watch, upstreams, dns_refresh_s, functions",
            ),
        }
    }
    if !saw_listeners {
        errs.push("listeners", "missing: at least one listener is required");
    }
    if !saw_apis {
        errs.push("apis", "missing: at least one API is required");
    }
    (Some(cfg), errs)
}

fn parse_workers(v: &Value, errs: &mut ConfigErrors) -> Workers {
    match v {
        Value::String(s) if s == "auto" => Workers::Auto,
        Value::Number(n) if n.as_u64().is_some_and(|n| (1..=1024).contains(&n)) => {
            Workers::Count(n.as_u64().unwrap_or(1) as usize)
        }
        _ => {
            errs.push("workers", "expected `auto` or a number from 1 to 1024");
            Workers::Auto
        }
    }
}

/// Deserializes one value, recording the error (with its full key path) on failure.
fn de<T: DeserializeOwned>(v: Value, path: &str, errs: &mut ConfigErrors) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errs.push(full, e.into_inner().to_string());
            None
        }
    }
}

/// Deserializes a list element by element, so one bad element does not hide the next.
fn de_list<T>(
    v: Value,
    path: &str,
    errs: &mut ConfigErrors,
    each: impl Fn(Value, &str, &mut ConfigErrors) -> Option<T>,
) -> Vec<Option<T>> {
    let Value::Sequence(items) = v else {
        errs.push(path, "expected a list");
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| each(item, &format!("{path}[{i}]"), errs))
        .collect()
}

pub(crate) fn parse_api(v: Value, path: &str, errs: &mut ConfigErrors) -> Option<ApiFile> {
    let Value::Mapping(mut m) = v else {
        errs.push(path, "expected a mapping");
        return None;
    };
    let routes = take(&mut m, "routes");
    let stages = take(&mut m, "stages");
    let authorizers = take(&mut m, "authorizers");
    let head: Option<ApiHead> = de(Value::Mapping(m), path, errs);
    let routes = match routes {
        Some(r) => de_list(r, &format!("{path}.routes"), errs, de),
        None => {
            errs.push(format!("{path}.routes"), "missing: an API needs routes");
            Vec::new()
        }
    };
    let stages = match stages {
        Some(s) => de_list(s, &format!("{path}.stages"), errs, de),
        None => {
            errs.push(format!("{path}.stages"), "missing: an API needs stages");
            Vec::new()
        }
    };
    let authorizers = match authorizers {
        Some(a) => de_list(a, &format!("{path}.authorizers"), errs, de),
        None => Vec::new(),
    };
    let head = head?;
    Some(ApiFile {
        name: head.name,
        kind: head.kind,
        routes,
        stages,
        cors: head.cors,
        authorizers,
        resource_policy: head.resource_policy,
        trusted_proxies: head.trusted_proxies,
        route_selection_expression: head.route_selection_expression,
        connections_authorizer: head.connections_authorizer,
        binary_messages: head.binary_messages,
        gateway_responses: head.gateway_responses,
    })
}

fn take(m: &mut Mapping, key: &str) -> Option<Value> {
    m.remove(Value::String(key.to_owned()))
}

/// A quota period, as written in the config (`day | week | month`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_error_with_its_path() {
        let text = r#"
listeners:
  - { name: a, bind: "127.0.0.1:1", colour: red }
apis:
  - name: p
    routes:
      - route: GET /x
        integration: { type: mock, stauts: 200 }
      - route: GET /y
        integration: { type: carrier_pigeon }
    stages: [ { name: prod, variabels: {} } ]
bogus: 1
"#;
        let errs = parse(text).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"listeners[0].colour"), "{errs}");
        assert!(
            paths.iter().any(|p| p.starts_with("apis[0].routes[0]")),
            "{errs}"
        );
        assert!(
            paths.iter().any(|p| p.starts_with("apis[0].routes[1]")),
            "{errs}"
        );
        assert!(
            paths.iter().any(|p| p.starts_with("apis[0].stages[0]")),
            "{errs}"
        );
        assert!(paths.contains(&"bogus"), "{errs}");
        assert!(errs.0.len() >= 5);
    }

    #[test]
    fn workers_accepts_auto_or_count() {
        let base = "listeners: []\napis: []\n";
        let c = parse(&format!("workers: 3\n{base}")).unwrap();
        assert_eq!(c.workers, Workers::Count(3));
        let c = parse(&format!("workers: auto\n{base}")).unwrap();
        assert_eq!(c.workers, Workers::Auto);
        assert!(parse(&format!("workers: 0\n{base}")).is_err());
        assert!(parse(&format!("workers: many\n{base}")).is_err());
    }
}
