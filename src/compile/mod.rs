//! Validates a [`ConfigFile`] and builds the immutable [`Plan`]. Every error is
//! reported at once, with the key's path; nothing is checked at request time that
//! could have been checked here.

mod load;
pub use load::{load_plan, load_plan_with};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    ApiFile, ConfigErrors, ConfigFile, IntegrationFile, SecretFile, ThrottleFile, Workers,
};
use crate::http::respond::MockResponse;
use crate::http::tls;
use crate::ids::{StageId, ThrottleId};
use crate::plan::{
    AdminPlan, Integration, Limits, ListenerPlan, Plan, RouteCache, RoutePlan, StagePlan,
};
use crate::policy::cache::KeyParam;
use crate::policy::keys;
use crate::policy::throttle::{Limit, SharedBucket};
use crate::policy::usage::{self as registry, KeyDef, Seed, StageInfo};
use crate::route::{BaseMapping, RouteKey, Router, Stages};
use crate::upstream::pool::PoolLimits;
use crate::upstream::target::{PathPart, ProxyTarget};

/// AWS's default integration timeout (REST; the config contract picks it for all APIs).
const DEFAULT_TIMEOUT_MS: u64 = 29_000;
/// AWS's integration timeout bounds: 50 ms to 30 s (HTTP APIs).
const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 50..=30_000;
const DEFAULT_DRAIN_MS: u64 = 30_000;

/// Reads a `{ env: NAME }` or literal secret; `None` (with an error) when unset.
fn secret(v: &SecretFile, path: &str, errs: &mut ConfigErrors) -> Option<String> {
    match v {
        SecretFile::Env(r) => match std::env::var(&r.env) {
            Ok(v) => Some(v),
            Err(_) => {
                errs.push(
                    format!("{path}.env"),
                    format!("environment variable {} is not set", r.env),
                );
                None
            }
        },
        SecretFile::Value(v) => Some(v.clone()),
    }
}

/// Validates the usage plans and API keys of the config against the compiled
/// stages; the registry builds them at start.
fn compile_seed(cfg: &ConfigFile, stages: &[StagePlan], errs: &mut ConfigErrors) -> Seed {
    let infos = StageInfo::of(stages);
    let mut seed = Seed::default();
    // Plan name → the stages it covers.
    let mut plan_stages: HashMap<&str, Vec<StageId>> = HashMap::new();
    for (pi, plan) in cfg.usage_plans.iter().enumerate() {
        let Some(plan) = plan else { continue };
        let path = format!("usage_plans[{pi}]");
        match registry::resolve(&infos, plan) {
            Ok(res) => {
                if plan_stages.insert(plan.name.as_str(), res.stages).is_some() {
                    errs.push(
                        format!("{path}.name"),
                        format!("duplicate usage plan {:?}", plan.name),
                    );
                }
                seed.plans.push(plan.clone());
            }
            Err(list) => {
                for (p, m) in list {
                    errs.push(format!("{path}.{p}"), m);
                }
            }
        }
    }
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (ki, key) in cfg.api_keys.iter().enumerate() {
        let Some(key) = key else { continue };
        let path = format!("api_keys[{ki}]");
        if !names.insert(key.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate API key name {:?}", key.name),
            );
        }
        let Some(value) = secret(&key.value, &format!("{path}.value"), errs) else {
            continue;
        };
        if !registry::valid_key_value(&value) {
            // AWS: key values are alphanumeric, 20 to 128 characters.
            errs.push(
                format!("{path}.value"),
                "must be 20 to 128 letters and digits",
            );
            continue;
        }
        let mut covered: Vec<StageId> = Vec::new();
        for (pi, plan_name) in key.plans.iter().enumerate() {
            let Some(stages) = plan_stages.get(plan_name.as_str()) else {
                errs.push(
                    format!("{path}.plans[{pi}]"),
                    format!("no usage plan {plan_name:?}"),
                );
                continue;
            };
            if stages.iter().any(|s| covered.contains(s)) {
                errs.push(
                    format!("{path}.plans[{pi}]"),
                    "a key is in at most one usage plan per stage",
                );
            }
            covered.extend(stages);
        }
        let hash = keys::hash(value.as_bytes());
        if !hashes.insert(hash) {
            errs.push(
                format!("{path}.value"),
                "another API key has the same value",
            );
        }
        seed.keys.push(KeyDef {
            id: registry::config_key_id(&hash),
            name: key.name.clone(),
            description: key.description.clone().unwrap_or_default(),
            enabled: key.enabled,
            plans: key.plans.clone(),
            created_s: registry::now_s(),
            hash: crate::encode::hex(&hash),
        });
    }
    seed
}

fn compile_admin(cfg: &ConfigFile, errs: &mut ConfigErrors) -> Option<AdminPlan> {
    let admin = cfg.admin.as_ref()?;
    let bind = admin.bind.as_deref().unwrap_or("127.0.0.1:9901");
    let parsed: Option<SocketAddr> = bind.parse().ok();
    if parsed.is_none() {
        errs.push(
            "admin.bind",
            format!("{bind:?} is not an address:port such as 127.0.0.1:9901"),
        );
    }
    let token = admin
        .token
        .as_ref()
        .and_then(|t| secret(t, "admin.token", errs));
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        errs.push("admin.token", "must be at least 16 characters");
    }
    if token.is_none() && admin.token.is_none() {
        tracing::warn!("admin.token is not set: the management API refuses every call");
    }
    Some(AdminPlan {
        bind: parsed?,
        token,
    })
}

/// AWS: TTL 300 s by default, 0 to 3600 s, 0 disables.
const DEFAULT_CACHE_TTL_S: u64 = 300;

fn check_ttl(ttl: Option<u64>, path: &str, errs: &mut ConfigErrors) -> Option<u64> {
    let t = ttl?;
    if t > 3600 {
        errs.push(path, "must be 0 to 3600 seconds (0 disables)");
        return None;
    }
    Some(t)
}

/// A route's caching: the stage's TTL unless the route sets one; GET and HEAD only
/// unless the route has a `cache` of its own (it opted in).
fn route_cache(
    stage_ttl: u64,
    over: Option<&crate::config::RouteCacheFile>,
    key: Option<&RouteKey>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<RouteCache> {
    let ttl = over
        .and_then(|o| check_ttl(o.ttl_s, &format!("{path}.ttl_s"), errs))
        .unwrap_or(stage_ttl);
    let method = match key {
        Some(RouteKey::Path {
            method: Some(m), ..
        }) => m.as_str(),
        // ANY and $default: GET and HEAD requests are cached.
        _ => "ANY",
    };
    if ttl == 0 || (over.is_none() && !matches!(method, "GET" | "HEAD" | "ANY")) {
        return None;
    }
    let mut params = Vec::new();
    for (i, p) in over
        .map_or(&[][..], |o| o.key.as_slice())
        .iter()
        .enumerate()
    {
        let param = match p.split_once('.') {
            Some(("query", n)) if !n.is_empty() => Some(KeyParam::Query(n.into())),
            Some(("header", n)) if !n.is_empty() => {
                Some(KeyParam::Header(n.to_ascii_lowercase().into()))
            }
            Some(("path", n)) if key.is_some_and(|k| k.params().contains(&n)) => {
                Some(KeyParam::Path(n.into()))
            }
            Some(("path", n)) => {
                errs.push(
                    format!("{path}.key[{i}]"),
                    format!("the route has no path parameter {n:?}"),
                );
                None
            }
            _ => {
                errs.push(
                    format!("{path}.key[{i}]"),
                    format!("{p:?}: expected query.NAME, header.NAME or path.NAME"),
                );
                None
            }
        };
        params.extend(param);
    }
    Some(RouteCache {
        ttl_ms: ttl * 1000,
        key: params.into(),
        any_method: over.is_some() && !matches!(method, "GET" | "HEAD"),
        require_authorization: over.is_some_and(|o| o.require_authorization),
        unauthorized: over.map(|o| o.unauthorized_strategy).unwrap_or_default(),
    })
}

fn check_limit(t: ThrottleFile, path: &str, errs: &mut ConfigErrors) -> bool {
    if !t.rate.is_finite() || t.rate < 0.0 {
        errs.push(
            format!("{path}.rate"),
            "must be a number of requests per second, 0 or more",
        );
        return false;
    }
    true
}

/// Validates a `{ rate, burst }` and adds its bucket; `None` when it is invalid.
fn add_throttle(
    throttles: &mut Throttles,
    t: ThrottleFile,
    name: String,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<ThrottleId> {
    if !check_limit(t, path, errs) {
        return None;
    }
    throttles.buckets.push(Arc::new(SharedBucket::new(
        Limit {
            rate: t.rate,
            burst: t.burst,
        },
        throttles.workers,
    )));
    throttles.names.push(name);
    Some(throttles.buckets.len() - 1)
}

/// The throttles being compiled, with their names.
struct Throttles {
    buckets: Vec<Arc<SharedBucket>>,
    names: Vec<String>,
    workers: usize,
}

/// Compiles the file into a plan. `workers_override` is the `--workers` flag.
pub fn compile(cfg: &ConfigFile, workers_override: Option<usize>) -> Result<Plan, ConfigErrors> {
    compile_with(
        cfg,
        &Options {
            workers: workers_override,
            ..Options::default()
        },
    )
}

/// What a compile takes besides the file.
#[derive(Default)]
pub struct Options {
    /// `--workers`, or a running gateway's count on reload.
    pub workers: Option<usize>,
    /// A running gateway's SigV4 key table: its authorizers use it, and the
    /// registry publishes the config's keys into it (a fresh table gets them here).
    pub access_keys: Option<Arc<crate::policy::sigv4::KeyTable>>,
    /// (api, stage) → the deployment the stage serves (from the store).
    pub deployed: HashMap<(String, String), Deployed>,
}

/// A stage pointed at a deployment: the deployment's snapshot of the API, and
/// the stage's variables set through the management API (over the file's).
#[derive(Debug, Clone)]
pub struct Deployed {
    /// `None`: the stage follows the file (only its variables are set).
    pub id: Option<String>,
    /// The API's mapping as deployed (without `stages`), as JSON.
    pub snapshot: Option<serde_json::Value>,
    pub variables: Option<BTreeMap<String, String>>,
}

impl Deployed {
    /// The snapshot as an API definition (its own errors under `path`).
    fn api_file(&self, api: &str, path: &str, errs: &mut ConfigErrors) -> Option<ApiFile> {
        let snapshot = self.snapshot.clone()?;
        let mut v: serde_yaml_ng::Value = match serde_json::from_value(snapshot) {
            Ok(v) => v,
            Err(e) => {
                errs.push(path, format!("unreadable snapshot: {e}"));
                return None;
            }
        };
        if let serde_yaml_ng::Value::Mapping(m) = &mut v {
            m.insert("stages".into(), serde_yaml_ng::Value::Sequence(Vec::new()));
        }
        let file = crate::config::parse_api(v, path, errs)?;
        if file.name != api {
            errs.push(
                path,
                format!("a snapshot of API {:?}, not {api:?}", file.name),
            );
            return None;
        }
        Some(file)
    }
}

/// What an API's definition compiles to once for all the stages that serve it.
struct ApiParts {
    keys: Vec<RouteKey>,
    api_access: ApiAccess,
    route_auth: Vec<Option<crate::policy::access::RouteAuth>>,
    route_validate: Vec<Option<Arc<crate::policy::validate::Validator>>>,
    router: Arc<Router>,
}

#[allow(clippy::too_many_arguments)]
fn api_parts(
    api: &ApiFile,
    path: &str,
    up_tls: &mut UpstreamTls,
    authorizers: &mut Vec<Arc<crate::policy::access::Authorizer>>,
    sigs: &mut Vec<u64>,
    config_access_keys: &mut Vec<crate::policy::sigv4::AccessKey>,
    access_keys: &Arc<crate::policy::sigv4::KeyTable>,
    errs: &mut ConfigErrors,
) -> ApiParts {
    let keys = route_keys(api, path, errs);
    let before = authorizers.len();
    let api_access = compile_api_access(
        api,
        path,
        up_tls,
        authorizers,
        config_access_keys,
        access_keys,
        errs,
    );
    // The authorizers just compiled are the API's, as listed (when all compiled;
    // otherwise there is no plan): their digests let a reload keep them.
    let files: Vec<_> = api.authorizers.iter().flatten().collect();
    let added = authorizers.len() - before;
    if files.len() == added {
        sigs.extend(files.iter().map(|a| digest(&(&api.name, a))));
    } else {
        sigs.extend(std::iter::repeat_n(0, added));
    }
    let (route_auth, route_validate) =
        compile_route_access(api, path, &api_access, authorizers, errs);
    let router = match Router::build(&keys) {
        Ok(r) => Arc::new(r),
        Err(conflicts) => {
            for (ri, msg) in conflicts {
                let key = api.routes[ri].as_ref().map_or("", |r| r.route.as_str());
                errs.push(
                    format!("{path}.routes[{ri}].route"),
                    format!("{key:?} {msg}"),
                );
            }
            Arc::new(empty_router())
        }
    };
    ApiParts {
        keys,
        api_access,
        route_auth,
        route_validate,
        router,
    }
}

/// Numbers each compiled authorizer for the life of the process: workers remember
/// verified tokens and decisions by it, so a reload that keeps an authorizer
/// keeps them, and one that replaces it cannot reuse them.
static NEXT_AUTHORIZER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

pub fn compile_with(cfg: &ConfigFile, opts: &Options) -> Result<Plan, ConfigErrors> {
    let workers_override = opts.workers;
    let mut errs = ConfigErrors::default();
    for key in &cfg.unsupported {
        errs.not_supported(key.clone());
    }
    let workers = match workers_override.map(Workers::Count).unwrap_or(cfg.workers) {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };

    let mut throttles = Throttles {
        buckets: Vec::new(),
        names: Vec::new(),
        workers,
    };
    let global_throttle = cfg
        .throttle
        .and_then(|t| add_throttle(&mut throttles, t, "gateway".into(), "throttle", &mut errs));

    let mut up_tls = UpstreamTls::new(&cfg.base_dir);
    let mut authorizers: Vec<Arc<crate::policy::access::Authorizer>> = Vec::new();
    // Each authorizer's config digest, in the order compiled.
    let mut authorizer_sigs: Vec<u64> = Vec::new();
    let mut logs = crate::observe::accesslog::Logs::default();
    let mut config_access_keys: Vec<crate::policy::sigv4::AccessKey> = Vec::new();
    let access_keys = opts.access_keys.clone().unwrap_or_default();
    // APIs and their stages.
    let mut api_index: HashMap<&str, usize> = HashMap::new();
    let mut stages: Vec<StagePlan> = Vec::new();
    // (api index, stage name) → stage id
    let mut stage_ids: HashMap<(usize, &str), usize> = HashMap::new();
    let mut api_stages: Vec<Vec<usize>> = Vec::new();
    for (ai, api) in cfg.apis.iter().enumerate() {
        let Some(api) = api else {
            api_stages.push(Vec::new());
            continue;
        };
        let path = format!("apis[{ai}]");
        if api_index.insert(api.name.as_str(), ai).is_some() {
            errs.push(
                format!("{path}.name"),
                format!("duplicate API name {:?}", api.name),
            );
        }
        match api.kind.as_str() {
            "http" => {}
            "rest" | "websocket" => errs.not_supported(format!("{path}.type ({})", api.kind)),
            other => errs.push(
                format!("{path}.type"),
                format!("unknown API type {other:?}: expected http, rest or websocket"),
            ),
        }
        let config_parts = api_parts(
            api,
            &path,
            &mut up_tls,
            &mut authorizers,
            &mut authorizer_sigs,
            &mut config_access_keys,
            &access_keys,
            &mut errs,
        );
        // Stages pointed at a deployment serve its snapshot of the API (routes,
        // integrations, authorizers, CORS, policy) instead of the file's.
        let mut deployed: HashMap<&str, (ApiFile, ApiParts)> = HashMap::new();
        for stage in api.stages.iter().flatten() {
            let Some(d) = opts.deployed.get(&(api.name.clone(), stage.name.clone())) else {
                continue;
            };
            let Some(id) = d.id.as_deref() else { continue };
            if deployed.contains_key(id) {
                continue;
            }
            let dpath = format!("deployments[{}/{id}]", api.name);
            let Some(file) = d.api_file(&api.name, &dpath, &mut errs) else {
                continue;
            };
            let mut no_keys = Vec::new();
            let parts = api_parts(
                &file,
                &dpath,
                &mut up_tls,
                &mut authorizers,
                &mut authorizer_sigs,
                &mut no_keys,
                &access_keys,
                &mut errs,
            );
            deployed.insert(id, (file, parts));
        }
        if api.stages.is_empty() {
            errs.push(format!("{path}.stages"), "an API needs at least one stage");
        }
        let mut mine = Vec::new();
        for (si, stage) in api.stages.iter().enumerate() {
            let Some(stage) = stage else { continue };
            let spath = format!("{path}.stages[{si}]");
            let pointer = opts.deployed.get(&(api.name.clone(), stage.name.clone()));
            let deployment = pointer.and_then(|d| d.id.as_deref());
            let (src, parts, path) = match deployment.and_then(|id| deployed.get(id)) {
                Some((file, parts)) => (
                    file,
                    parts,
                    format!("deployments[{}/{}]", api.name, deployment.unwrap_or("")),
                ),
                None => (api, &config_parts, path.clone()),
            };
            let ApiParts {
                keys,
                api_access,
                route_auth,
                route_validate,
                router,
            } = parts;
            let variables: BTreeMap<String, String> = {
                let mut v = stage.variables.clone();
                if let Some(over) = pointer.and_then(|d| d.variables.as_ref()) {
                    v.extend(over.iter().map(|(k, x)| (k.clone(), x.clone())));
                }
                v
            };
            check_stage_name(&stage.name, &format!("{spath}.name"), &mut errs);
            let access_log = stage.access_log.as_ref().and_then(|l| {
                let format = match crate::observe::accesslog::Format::parse(
                    l.format.as_deref().unwrap_or("json"),
                ) {
                    Ok(f) => f,
                    Err(e) => {
                        errs.push(format!("{spath}.access_log.format"), e);
                        return None;
                    }
                };
                let target = match l.path.as_str() {
                    "stdout" | "-" => crate::observe::accesslog::Target::Stdout,
                    "" => {
                        errs.push(format!("{spath}.access_log.path"), "stdout or a file path");
                        return None;
                    }
                    p => crate::observe::accesslog::Target::File(resolve_path(&cfg.base_dir, p)),
                };
                Some(crate::observe::accesslog::LogSpec {
                    sink: logs.sink(target),
                    format,
                })
            });
            let stage_ttl = stage.cache.as_ref().map(|c| {
                check_ttl(c.ttl_s, &format!("{spath}.cache.ttl_s"), &mut errs)
                    .unwrap_or(DEFAULT_CACHE_TTL_S)
            });
            let cache_bytes = stage.cache.as_ref().map_or(0, |c| {
                if c.capacity_mb == 0 || c.capacity_mb > 1 << 20 {
                    errs.push(
                        format!("{spath}.cache.capacity_mb"),
                        "must be 1 to 1048576 (MiB)",
                    );
                }
                (c.capacity_mb.min(1 << 20) as usize) << 20
            });
            let stage_throttle = stage.throttle.and_then(|t| {
                add_throttle(
                    &mut throttles,
                    t,
                    format!("{}/{}", api.name, stage.name),
                    &format!("{spath}.throttle"),
                    &mut errs,
                )
            });
            // Per-route overrides name routes of this API.
            let mut route_throttles: HashMap<&str, ThrottleId> = HashMap::new();
            for (key, over) in &stage.routes {
                let rpath = format!("{spath}.routes[{key:?}]");
                if !src.routes.iter().flatten().any(|r| r.route == *key) {
                    errs.push(
                        rpath.clone(),
                        format!("no route {key:?} in API {:?}", api.name),
                    );
                }
                if over.cache.is_some() && stage.cache.is_none() {
                    errs.push(
                        format!("{rpath}.cache"),
                        "a route's cache needs the stage's (stages[].cache)",
                    );
                }
                if let Some(t) = over.throttle {
                    if let Some(id) = add_throttle(
                        &mut throttles,
                        t,
                        format!("{}/{}/{key}", api.name, stage.name),
                        &format!("{rpath}.throttle"),
                        &mut errs,
                    ) {
                        route_throttles.insert(key.as_str(), id);
                    }
                }
            }
            if stage_ids
                .insert((ai, stage.name.as_str()), stages.len())
                .is_some()
            {
                errs.push(
                    format!("{spath}.name"),
                    format!("duplicate stage {:?} in API {:?}", stage.name, api.name),
                );
            }
            let mut routes = Vec::with_capacity(src.routes.len());
            for (ri, route) in src.routes.iter().enumerate() {
                let Some(route) = route else {
                    // Keeps route ids aligned with the router; never matched.
                    routes.push(RoutePlan {
                        key: String::new(),
                        integration: Integration::Mock(MockResponse {
                            status: 500,
                            header_lines: Box::default(),
                            body: Box::default(),
                        }),
                        throttle: None,
                        api_key_required: false,
                        cache: None,
                        auth: None,
                        validate: None,
                        metric_slot: usize::MAX,
                        sig: 0,
                    });
                    continue;
                };
                let rpath = format!("{path}.routes[{ri}].integration");
                let integration = compile_integration(
                    &route.integration,
                    keys.get(ri),
                    &variables,
                    &rpath,
                    &stage.name,
                    &mut up_tls,
                    &mut errs,
                );
                if let Some(integration) = integration {
                    let over = stage
                        .routes
                        .get(&route.route)
                        .and_then(|o| o.cache.as_ref());
                    let cache = match (stage_ttl, &integration) {
                        (Some(ttl), Integration::HttpProxy(_)) => route_cache(
                            ttl,
                            over,
                            keys.get(ri),
                            &format!("{spath}.routes[{:?}].cache", route.route),
                            &mut errs,
                        ),
                        // Mock responses cost less to make than to look up.
                        _ => None,
                    };
                    routes.push(RoutePlan {
                        key: route.route.clone(),
                        integration,
                        throttle: route_throttles.get(route.route.as_str()).copied(),
                        api_key_required: route.api_key_required == Some(true),
                        cache,
                        auth: route_auth.get(ri).cloned().flatten(),
                        validate: route_validate.get(ri).cloned().flatten(),
                        metric_slot: usize::MAX,
                        sig: digest(&(
                            &api.name,
                            route,
                            &variables,
                            stage.routes.get(&route.route),
                            &stage.cache,
                        )),
                    });
                }
            }
            let policy = match &stage.resource_policy {
                Some(p) => compile_policy(p, &format!("{spath}.resource_policy"), &mut errs),
                None => api_access.policy.clone(),
            };
            let access = crate::policy::access::StageAccess {
                policy,
                trusted: Arc::clone(&api_access.trusted),
                cors: api_access.cors.clone(),
                strip: Arc::clone(&api_access.strip),
            };
            mine.push(stages.len());
            stages.push(StagePlan {
                access,
                access_log,
                api: api.name.clone(),
                stage: stage.name.clone(),
                // Stages of one API share the tree; they differ in integrations.
                router: Arc::clone(router),
                routes,
                throttle: stage_throttle,
                cache_bytes,
            });
        }
        api_stages.push(mine);
    }

    let seed = compile_seed(cfg, &stages, &mut errs);
    let admin = compile_admin(cfg, &mut errs);
    let mut store_path = None;
    if let Some(store) = &cfg.store {
        if store.redis.is_some() {
            errs.not_supported("store.redis");
        }
        match store.path.as_deref() {
            Some("") => errs.push("store.path", "must name a directory"),
            Some(p) => store_path = Some(std::path::PathBuf::from(p)),
            None => {}
        }
    }

    // Listeners.
    let mut listeners = Vec::new();
    let mut binds = HashSet::new();
    for (li, l) in cfg.listeners.iter().enumerate() {
        let Some(l) = l else { continue };
        let path = format!("listeners[{li}]");
        let tls = l.tls.as_ref().and_then(|t| {
            compile_listener_tls(t, &cfg.base_dir, &format!("{path}.tls"), &mut errs)
        });
        let bind: Option<SocketAddr> = match l.bind.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(
                    format!("{path}.bind"),
                    format!("{:?} is not an address:port such as 0.0.0.0:8080", l.bind),
                );
                None
            }
        };
        if let Some(b) = bind {
            if b.port() != 0 && !binds.insert(b) {
                errs.push(
                    format!("{path}.bind"),
                    format!("{b} is bound by another listener"),
                );
            }
        }
        let mut limits = compile_limits(&l.limits, &format!("{path}.limits"), &mut errs);
        limits.paths = crate::http::path::Rules {
            keep_escaped_slashes: l.paths.escaped_slashes == crate::config::KeepOrReject::Keep,
            keep_semicolons: l.paths.semicolons == crate::config::KeepOrReject::Keep,
        };
        let served: Vec<usize> = match &l.apis {
            None => (0..cfg.apis.len()).collect(),
            Some(names) => names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let found = api_index.get(n.as_str()).copied();
                    if found.is_none() {
                        errs.push(format!("{path}.apis[{i}]"), format!("no API named {n:?}"));
                    }
                    found
                })
                .collect(),
        };
        let mut stage_by_name: HashMap<Box<str>, usize> = HashMap::new();
        let mut default_stage = None;
        for &ai in &served {
            for &sid in api_stages.get(ai).map(Vec::as_slice).unwrap_or(&[]) {
                let name = stages[sid].stage.as_str();
                if name == "$default" {
                    if let Some(prev) = default_stage.replace(sid) {
                        let prev: &StagePlan = &stages[prev];
                        errs.push(
                            path.clone(),
                            format!(
                                "two `$default` stages on one listener: APIs {:?} and {:?}",
                                prev.api, stages[sid].api
                            ),
                        );
                    }
                } else if let Some(prev) = stage_by_name.insert(name.into(), sid) {
                    errs.push(
                        path.clone(),
                        format!(
                            "stage name {name:?} is used by APIs {:?} and {:?} on this listener",
                            stages[prev].api, stages[sid].api
                        ),
                    );
                }
            }
        }
        let domains = compile_domains(cfg, &api_index, &stage_ids, &served, &mut errs);
        if let Some(tls) = &tls {
            warn_uncovered_domains(&l.name, tls, domains.keys());
        }
        if let Some(bind) = bind {
            listeners.push(ListenerPlan {
                name: l.name.clone(),
                configured: bind,
                bind,
                limits,
                stages: Stages {
                    by_name: stage_by_name,
                    default: default_stage,
                    domains,
                },
                tls,
            });
        }
    }
    if cfg.listeners.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let drain_ms = cfg.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_MS);
    let routes_per_stage: Vec<usize> = stages.iter().map(|s| s.routes.len()).collect();
    if opts.access_keys.is_none() {
        access_keys.publish(config_access_keys.iter().cloned());
    }
    let authorizer_uids = authorizers
        .iter()
        .map(|_| NEXT_AUTHORIZER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        .collect();
    let telemetry = cfg.telemetry.as_ref().and_then(|t| {
        let uri = t.otlp_endpoint.as_str();
        let tls = if uri.starts_with("https://") {
            match up_tls.builder.build(&tls::UpstreamTlsSpec::default()) {
                Ok(c) => Some(c),
                Err(e) => {
                    errs.push("telemetry.otlp_endpoint", e);
                    return None;
                }
            }
        } else if uri.starts_with("http://") {
            None
        } else {
            errs.push("telemetry.otlp_endpoint", "must be an http(s) URL");
            return None;
        };
        Some(Arc::new(crate::observe::telemetry::Exporter::new(
            uri.to_owned(),
            t.service_name
                .clone()
                .unwrap_or_else(|| "shardgate".to_owned()),
            tls,
        )))
    });
    let tracing = {
        let t = cfg.tracing.as_ref();
        let rate = t.and_then(|t| t.sample_rate).unwrap_or(0.05);
        if !(0.0..=1.0).contains(&rate) {
            errs.push("tracing.sample_rate", "must be from 0 to 1");
        }
        crate::observe::trace::TracingPlan {
            create: t.and_then(|t| t.create).unwrap_or(true),
            sample_below: (rate.clamp(0.0, 1.0) * u32::MAX as f64) as u32,
        }
    };
    let metrics = Arc::new(crate::observe::metrics::Metrics::new(workers));
    crate::plan::assign_metric_slots(&metrics, &mut stages);
    if errs.is_empty() {
        Ok(Plan {
            generation: 0,
            watch: cfg.watch.unwrap_or(false),
            api_sources: api_sources(cfg),
            metrics,
            logs: Arc::new(logs),
            tracing,
            metrics_on: cfg.metrics.unwrap_or(true),
            telemetry,
            authorizer_sigs,
            authorizer_uids,
            authorizers,
            access_keys,
            config_access_keys,
            workers,
            runtime: cfg.runtime,
            drain_timeout: Duration::from_millis(drain_ms),
            listeners,
            stages,
            pool: PoolLimits::default(),
            throttles: throttles.buckets,
            throttle_names: throttles.names,
            throttle: global_throttle,
            seed,
            live: Arc::new(keys::Live::new(workers)),
            cache: Arc::new(crate::policy::cache::Shared::new(
                workers,
                &routes_per_stage,
            )),
            admin,
            store_path,
            epoch: std::time::Instant::now(),
        })
    } else {
        Err(errs)
    }
}

/// Each API's mapping as written, without `stages`, as JSON.
fn api_sources(cfg: &ConfigFile) -> HashMap<String, serde_json::Value> {
    cfg.api_values
        .iter()
        .filter_map(|v| {
            let mut m = v.as_mapping()?.clone();
            m.remove("stages");
            let name = m.get("name")?.as_str()?.to_owned();
            let json = serde_json::to_value(serde_yaml_ng::Value::Mapping(m)).ok()?;
            Some((name, json))
        })
        .collect()
}

/// A digest of a piece of config, as written: equal digests, equal config.
pub fn digest(v: &impl std::fmt::Debug) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    format!("{v:?}").hash(&mut h);
    h.finish()
}

/// An API's access control, compiled once for all its stages.
struct ApiAccess {
    /// Authorizer name → index into `Plan::authorizers`.
    by_name: HashMap<String, usize>,
    policy: Option<Arc<crate::policy::resource::ResourcePolicy>>,
    trusted: Arc<[ipnet::IpNet]>,
    cors: Option<Arc<crate::policy::cors::Cors>>,
    strip: Arc<[Box<str>]>,
}

fn compile_policy(
    p: &crate::config::ResourcePolicyFile,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<crate::policy::resource::ResourcePolicy>> {
    use crate::policy::resource::parse_cidrs;
    let mut cidrs = |list: &[String], key: &str| match parse_cidrs(list) {
        Ok(l) => l,
        Err(e) => {
            errs.push(format!("{path}.{key}"), e);
            Box::default()
        }
    };
    let allow_cidrs = cidrs(&p.allow_cidrs, "allow_cidrs");
    let deny_cidrs = cidrs(&p.deny_cidrs, "deny_cidrs");
    let hosts = |list: &[String]| -> Box<[Box<str>]> {
        list.iter()
            .map(|h| h.trim().to_ascii_lowercase().into())
            .collect()
    };
    Some(Arc::new(crate::policy::resource::ResourcePolicy {
        allow_cidrs,
        deny_cidrs,
        allow_hosts: hosts(&p.allow_hosts),
        deny_hosts: hosts(&p.deny_hosts),
    }))
}

/// `claim → header` maps: header names valid, not ones the gateway owns.
fn compile_forward(
    map: &BTreeMap<String, String>,
    path: &str,
    strip: &mut Vec<Box<str>>,
    errs: &mut ConfigErrors,
) -> Box<[(Box<str>, Box<str>)]> {
    let mut out = Vec::new();
    for (from, header) in map {
        let h = header.to_ascii_lowercase();
        let valid = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let reserved = matches!(
            h.as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "authorization"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-forwarded-port"
        );
        if !valid || reserved {
            errs.push(
                format!("{path}.forward.{from}"),
                format!("{header:?} is not a header name the gateway may set"),
            );
            continue;
        }
        if !strip.iter().any(|s| **s == *h) {
            strip.push(h.clone().into());
        }
        out.push((from.as_str().into(), h.into()));
    }
    out.into()
}

#[allow(clippy::too_many_arguments)]
fn compile_api_access(
    api: &crate::config::ApiFile,
    path: &str,
    up_tls: &mut UpstreamTls,
    authorizers: &mut Vec<Arc<crate::policy::access::Authorizer>>,
    config_keys: &mut Vec<crate::policy::sigv4::AccessKey>,
    key_table: &Arc<crate::policy::sigv4::KeyTable>,
    errs: &mut ConfigErrors,
) -> ApiAccess {
    use crate::config::AuthorizerFile;
    use crate::policy::access::Authorizer;
    use crate::policy::{jwt, request, sigv4};
    let mut by_name = HashMap::new();
    let mut strip: Vec<Box<str>> = Vec::new();
    for (i, a) in api.authorizers.iter().enumerate() {
        let Some(a) = a else { continue };
        let apath = format!("{path}.authorizers[{i}]");
        if by_name.contains_key(a.name()) {
            errs.push(
                format!("{apath}.name"),
                format!("duplicate authorizer {:?}", a.name()),
            );
            continue;
        }
        let compiled = match a {
            AuthorizerFile::Jwt {
                name,
                issuer,
                audience,
                jwks_uri,
                jwks,
                algorithms,
                leeway_s,
                identity_source,
                refresh_interval_s,
                forward,
            } => {
                if audience.is_empty() || audience.len() > 50 {
                    errs.push(format!("{apath}.audience"), "list 1 to 50 audiences");
                }
                if !issuer.starts_with("https://") && !issuer.starts_with("http://") {
                    errs.push(format!("{apath}.issuer"), "must be an http(s) URL");
                }
                let algorithms = match jwt::parse_algorithms(
                    algorithms
                        .as_deref()
                        .unwrap_or(&["RS256".to_owned(), "ES256".to_owned()]),
                ) {
                    Ok(a) if !a.is_empty() => a,
                    Ok(_) => {
                        errs.push(format!("{apath}.algorithms"), "list at least one");
                        continue;
                    }
                    Err(e) => {
                        errs.push(format!("{apath}.algorithms"), e);
                        continue;
                    }
                };
                let leeway_s = leeway_s.unwrap_or(60);
                if leeway_s > 300 {
                    errs.push(format!("{apath}.leeway_s"), "must be from 0 to 300");
                }
                let source = match jwt::Source::parse(
                    identity_source.as_deref().unwrap_or("header.authorization"),
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        errs.push(format!("{apath}.identity_source"), e);
                        continue;
                    }
                };
                let (initial, key_source) = match (jwks, jwks_uri) {
                    (Some(_), Some(_)) => {
                        errs.push(apath.clone(), "give jwks_uri or jwks, not both");
                        continue;
                    }
                    (Some(inline), None) => {
                        let parsed = serde_json::to_vec(inline)
                            .map_err(|e| e.to_string())
                            .and_then(|j| jwt::KeySet::parse(&j));
                        match parsed {
                            Ok(k) if !k.is_empty() => (k, jwt::KeySource::Inline),
                            Ok(_) => {
                                errs.push(format!("{apath}.jwks"), "has no RSA or EC key");
                                continue;
                            }
                            Err(e) => {
                                errs.push(format!("{apath}.jwks"), e);
                                continue;
                            }
                        }
                    }
                    (None, uri) => {
                        let (uri, discover) = match uri {
                            Some(u) => (u.clone(), false),
                            None => (
                                format!(
                                    "{}/.well-known/openid-configuration",
                                    issuer.trim_end_matches('/')
                                ),
                                true,
                            ),
                        };
                        if !uri.starts_with("https://") && !uri.starts_with("http://") {
                            errs.push(format!("{apath}.jwks_uri"), "must be an http(s) URL");
                            continue;
                        }
                        let tls = if uri.starts_with("https://") || discover {
                            match up_tls.builder.build(&tls::UpstreamTlsSpec::default()) {
                                Ok(c) => Some(c),
                                Err(e) => {
                                    errs.push(format!("{apath}.jwks_uri"), e);
                                    continue;
                                }
                            }
                        } else {
                            None
                        };
                        (
                            jwt::KeySet::default(),
                            jwt::KeySource::Remote { uri, discover, tls },
                        )
                    }
                };
                let refresh_interval_s = refresh_interval_s.unwrap_or(60);
                if refresh_interval_s > 86_400 {
                    errs.push(
                        format!("{apath}.refresh_interval_s"),
                        "must be at most 86400",
                    );
                }
                Authorizer::Jwt(jwt::JwtAuthorizer {
                    name: name.clone(),
                    issuer: issuer.clone(),
                    audience: audience.iter().map(|a| a.as_str().into()).collect(),
                    algorithms: algorithms.into(),
                    leeway_s,
                    source,
                    refresh_interval_s,
                    forward: compile_forward(forward, &apath, &mut strip, errs),
                    keys: Arc::new(jwt::KeyState::new(initial)),
                    key_source,
                    asks: jwt::Asks::default(),
                })
            }
            AuthorizerFile::Request {
                name,
                uri,
                identity_sources,
                ttl_s,
                timeout_ms,
                tls,
                forward,
            } => {
                let ttl_s = ttl_s.unwrap_or(300);
                if ttl_s > 3600 {
                    errs.push(format!("{apath}.ttl_s"), "must be from 0 to 3600");
                }
                let timeout_ms = timeout_ms.unwrap_or(10_000);
                if !(50..=30_000).contains(&timeout_ms) {
                    errs.push(format!("{apath}.timeout_ms"), "must be from 50 to 30000");
                }
                let mut sources = Vec::new();
                for (j, src) in identity_sources.iter().enumerate() {
                    match request::Identity::parse(src) {
                        Ok(s) => sources.push(s),
                        Err(e) => errs.push(format!("{apath}.identity_sources[{j}]"), e),
                    }
                }
                let parsed = match parse_http_uri(uri, &[]) {
                    Ok(p) => p,
                    Err(UriError::Invalid(msg)) => {
                        errs.push(format!("{apath}.uri"), format!("{uri:?}: {msg}"));
                        continue;
                    }
                };
                let mut target = parsed.target;
                if parsed.https {
                    let Some((t, id)) = up_tls.compile(tls.as_ref(), parsed.host, &apath, errs)
                    else {
                        continue;
                    };
                    target.tls = Some(t);
                    target.pool_key.tls = id;
                } else if tls.is_some() {
                    errs.push(format!("{apath}.tls"), "only for https:// URIs");
                }
                let mut request_target = String::new();
                for part in &target.path {
                    if let PathPart::Literal(l) = part {
                        request_target.push_str(l);
                    }
                }
                if request_target.is_empty() {
                    request_target.push('/');
                }
                if let Some(q) = &target.query {
                    request_target.push('?');
                    request_target.push_str(q);
                }
                Authorizer::Request(request::RequestAuthorizer {
                    name: name.clone(),
                    target,
                    request_target: request_target.into(),
                    sources: sources.into(),
                    ttl_s: ttl_s.min(3600),
                    timeout: Duration::from_millis(timeout_ms),
                    forward: compile_forward(forward, &apath, &mut strip, errs),
                })
            }
            AuthorizerFile::Sigv4 {
                name,
                region,
                access_keys,
            } => {
                if region.is_empty()
                    || !region
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    errs.push(
                        format!("{apath}.region"),
                        "must be a region name such as us-east-1",
                    );
                }
                for (j, k) in access_keys.iter().enumerate() {
                    let kpath = format!("{apath}.access_keys[{j}]");
                    if let Err(e) = sigv4::check_key_id(&k.id) {
                        errs.push(format!("{kpath}.id"), e);
                        continue;
                    }
                    for (n, p) in k.allow.iter().enumerate() {
                        if let Err(e) = sigv4::check_pattern(p) {
                            errs.push(format!("{kpath}.allow[{n}]"), e);
                        }
                    }
                    let Some(secret) = secret(&k.secret, &format!("{kpath}.secret"), errs) else {
                        continue;
                    };
                    if config_keys.iter().any(|c| c.id == k.id) {
                        errs.push(
                            format!("{kpath}.id"),
                            format!("access key {:?} is declared twice", k.id),
                        );
                        continue;
                    }
                    config_keys.push(sigv4::AccessKey {
                        id: k.id.clone(),
                        secret,
                        allow: k.allow.clone(),
                        source: "config".into(),
                        created_s: 0,
                    });
                }
                Authorizer::Sigv4(sigv4::Sigv4Authorizer {
                    name: name.clone(),
                    region: region.clone(),
                    keys: Arc::clone(key_table),
                })
            }
        };
        by_name.insert(a.name().to_owned(), authorizers.len());
        authorizers.push(Arc::new(compiled));
    }
    let trusted: Arc<[ipnet::IpNet]> =
        match crate::policy::resource::parse_cidrs(&api.trusted_proxies) {
            Ok(t) => Arc::from(t),
            Err(e) => {
                errs.push(format!("{path}.trusted_proxies"), e);
                Arc::from(Vec::new())
            }
        };
    let policy = api
        .resource_policy
        .as_ref()
        .and_then(|p| compile_policy(p, &format!("{path}.resource_policy"), errs));
    let cors = api
        .cors
        .as_ref()
        .and_then(|c| match crate::policy::cors::Cors::compile(c) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                errs.push(format!("{path}.cors"), e);
                None
            }
        });
    ApiAccess {
        by_name,
        policy,
        trusted,
        cors,
        strip: strip.into(),
    }
}

/// Each route's authorizer and validator, by route index.
type RouteAccessList = (
    Vec<Option<crate::policy::access::RouteAuth>>,
    Vec<Option<Arc<crate::policy::validate::Validator>>>,
);

fn compile_route_access(
    api: &crate::config::ApiFile,
    path: &str,
    access: &ApiAccess,
    authorizers: &[Arc<crate::policy::access::Authorizer>],
    errs: &mut ConfigErrors,
) -> RouteAccessList {
    use crate::policy::validate::{compile_schema, Param, Validator};
    let mut auths = Vec::new();
    let mut validators = Vec::new();
    for (ri, route) in api.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{ri}]");
        let Some(route) = route else {
            auths.push(None);
            validators.push(None);
            continue;
        };
        let auth = match &route.authorizer {
            None => {
                if !route.scopes.is_empty() {
                    errs.push(format!("{rpath}.scopes"), "scopes need a JWT authorizer");
                }
                None
            }
            Some(name) => match access.by_name.get(name) {
                None => {
                    errs.push(
                        format!("{rpath}.authorizer"),
                        format!("no authorizer {name:?} in API {:?}", api.name),
                    );
                    None
                }
                Some(&id) => {
                    if !route.scopes.is_empty()
                        && !matches!(
                            authorizers.get(id).map(|a| &**a),
                            Some(crate::policy::access::Authorizer::Jwt(_))
                        )
                    {
                        errs.push(format!("{rpath}.scopes"), "scopes need a JWT authorizer");
                    }
                    if route.scopes.len() > 10 {
                        errs.push(format!("{rpath}.scopes"), "at most 10 scopes");
                    }
                    Some(crate::policy::access::RouteAuth {
                        authorizer: id,
                        scopes: route.scopes.iter().map(|s| s.as_str().into()).collect(),
                    })
                }
            },
        };
        auths.push(auth);
        let validator = route.validate.as_ref().map(|v| {
            let vpath = format!("{rpath}.validate");
            let mut required = Vec::new();
            for (j, r) in v.required.iter().enumerate() {
                match Param::parse(r) {
                    Ok(p) => required.push(p),
                    Err(e) => errs.push(format!("{vpath}.required[{j}]"), e),
                }
            }
            let schema = match &v.body_schema {
                None => None,
                Some(s) => {
                    let json = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
                    match compile_schema(&json) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            errs.push(format!("{vpath}.body_schema"), e);
                            None
                        }
                    }
                }
            };
            let content_types = v
                .content_types
                .clone()
                .unwrap_or_else(|| vec!["application/json".to_owned()])
                .iter()
                .map(|t| t.trim().to_ascii_lowercase().into())
                .collect();
            Arc::new(Validator {
                required: required.into(),
                schema,
                content_types,
            })
        });
        validators.push(validator);
    }
    (auths, validators)
}

fn empty_router() -> Router {
    Router::build(&[]).unwrap_or_else(|_| unreachable!("an empty router has no conflicts"))
}

fn route_keys(api: &crate::config::ApiFile, path: &str, errs: &mut ConfigErrors) -> Vec<RouteKey> {
    let mut keys = Vec::with_capacity(api.routes.len());
    for (ri, route) in api.routes.iter().enumerate() {
        let rpath = format!("{path}.routes[{ri}]");
        let Some(route) = route else {
            keys.push(never_matched(ri));
            continue;
        };
        match RouteKey::parse(&route.route) {
            Ok(k) => keys.push(k),
            Err(e) => {
                errs.push(format!("{rpath}.route"), e);
                keys.push(never_matched(ri));
            }
        }
    }
    keys
}

/// A key for a route that failed to load: keeps route ids aligned with the file,
/// and no request path (which cannot contain NUL) matches it.
fn never_matched(ri: usize) -> RouteKey {
    RouteKey::Path {
        method: Some("GET".into()),
        segments: vec![crate::route::Segment::Literal(format!("\u{0}invalid{ri}"))],
    }
}

fn check_stage_name(name: &str, path: &str, errs: &mut ConfigErrors) {
    let ok = name == "$default"
        || (!name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if !ok {
        errs.push(
            path,
            format!(
                "stage name {name:?}: letters, digits, `-` and `_`, at most 128, or `$default`"
            ),
        );
    }
}

fn compile_limits(l: &crate::config::LimitsFile, path: &str, errs: &mut ConfigErrors) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        max_header_bytes: l.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
        header_timeout: l
            .header_timeout_ms
            .map_or(d.header_timeout, Duration::from_millis),
        idle_timeout: l
            .idle_timeout_ms
            .map_or(d.idle_timeout, Duration::from_millis),
        max_buffered_body_bytes: l
            .max_buffered_body_bytes
            .unwrap_or(d.max_buffered_body_bytes)
            .min(l.max_body_bytes.unwrap_or(d.max_body_bytes)),
        request_timeout: l
            .request_timeout_ms
            .map_or(d.request_timeout, Duration::from_millis),
        send_timeout: l
            .send_timeout_ms
            .map_or(d.send_timeout, Duration::from_millis),
        paths: d.paths,
    };
    if l.max_buffered_body_bytes == Some(0) {
        errs.push(format!("{path}.max_buffered_body_bytes"), "must be above 0");
    }
    // 1 KiB..1 MiB: below 1 KiB ordinary browsers fail; above 1 MiB one connection
    // could pin megabytes of buffer.
    if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        errs.push(
            format!("{path}.max_header_bytes"),
            "must be from 1024 to 1048576",
        );
    }
    if limits.header_timeout.is_zero() {
        errs.push(format!("{path}.header_timeout_ms"), "must be above 0");
    }
    if limits.idle_timeout.is_zero() {
        errs.push(format!("{path}.idle_timeout_ms"), "must be above 0");
    }
    if limits.request_timeout.is_zero() {
        errs.push(format!("{path}.request_timeout_ms"), "must be above 0");
    }
    if limits.send_timeout.is_zero() {
        errs.push(format!("{path}.send_timeout_ms"), "must be above 0");
    }
    limits
}

fn compile_domains(
    cfg: &ConfigFile,
    api_index: &HashMap<&str, usize>,
    stage_ids: &HashMap<(usize, &str), usize>,
    served: &[usize],
    errs: &mut ConfigErrors,
) -> HashMap<Box<str>, Vec<BaseMapping>> {
    let mut out: HashMap<Box<str>, Vec<BaseMapping>> = HashMap::new();
    for (di, d) in cfg.domains.iter().enumerate() {
        let Some(d) = d else { continue };
        let path = format!("domains[{di}]");
        let name = d.name.to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 || name.contains(['/', ':', ' ']) {
            errs.push(
                format!("{path}.name"),
                format!("{:?} is not a host name", d.name),
            );
        }
        let mut seen = HashSet::new();
        let mut mappings = Vec::new();
        for (mi, m) in d.mappings.iter().enumerate() {
            let mpath = format!("{path}.mappings[{mi}]");
            let base = m.base_path.trim_matches('/').to_owned();
            let ok = base.len() <= 300
                && !base.contains("//")
                && base
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"$-_.+!*'()/".contains(&b));
            if !ok {
                errs.push(
                    format!("{mpath}.base_path"),
                    "letters, digits and $-_.+!*'()/ only, at most 300",
                );
            }
            if !seen.insert(base.clone()) {
                errs.push(
                    format!("{mpath}.base_path"),
                    format!("duplicate base path {base:?}"),
                );
            }
            let Some(&ai) = api_index.get(m.api.as_str()) else {
                errs.push(format!("{mpath}.api"), format!("no API named {:?}", m.api));
                continue;
            };
            let Some(&sid) = stage_ids.get(&(ai, m.stage.as_str())) else {
                errs.push(
                    format!("{mpath}.stage"),
                    format!("API {:?} has no stage {:?}", m.api, m.stage),
                );
                continue;
            };
            if served.contains(&ai) {
                mappings.push(BaseMapping {
                    base_path: base.into(),
                    stage: sid,
                });
            }
        }
        // Longest base path first: the first whole-segment match wins.
        mappings.sort_by_key(|m| std::cmp::Reverse(m.base_path.len()));
        if !mappings.is_empty() && out.insert(name.clone().into(), mappings).is_some() {
            errs.push(format!("{path}.name"), format!("duplicate domain {name:?}"));
        }
    }
    out
}

/// A relative path names a file beside the config, or else in the working directory.
fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_relative() && !base.as_os_str().is_empty() {
        let beside = base.join(p);
        if beside.exists() || !p.exists() {
            return beside;
        }
    }
    p.to_path_buf()
}

fn compile_listener_tls(
    t: &crate::config::ListenerTlsFile,
    base: &Path,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<tls::ListenerTls>> {
    if t.certificates.is_empty() {
        errs.push(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
        return None;
    }
    let mut ok = true;
    let certificates = t
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            for (j, n) in c.names.iter().enumerate() {
                let bare = n.strip_prefix("*.").unwrap_or(n);
                if bare.is_empty()
                    || bare.contains('*')
                    || !bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    ok = false;
                    errs.push(
                        format!("{path}.certificates[{i}].names[{j}]"),
                        format!("{n:?} is not a host name or `*.` wildcard"),
                    );
                }
            }
            tls::CertSpec {
                cert: resolve_path(base, &c.cert),
                key: resolve_path(base, &c.key),
                names: c.names.clone(),
            }
        })
        .collect();
    let client_auth = match &t.client_auth {
        None => None,
        Some(ca) => {
            let mode = match ca.mode.as_str() {
                "required" => tls::ClientAuthMode::Required,
                "optional" => tls::ClientAuthMode::Optional,
                other => {
                    errs.push(
                        format!("{path}.client_auth.mode"),
                        format!("{other:?}: expected required or optional"),
                    );
                    return None;
                }
            };
            Some((resolve_path(base, &ca.truststore), mode))
        }
    };
    if !ok {
        return None;
    }
    let spec = tls::ListenerTlsSpec {
        certificates,
        client_auth,
        forward_client_cert: t.client_auth.as_ref().is_some_and(|c| c.forward_headers),
    };
    match tls::ListenerTls::load(spec) {
        Ok(l) => Some(Arc::new(l)),
        Err(problems) => {
            for p in problems {
                errs.push(path, p);
            }
            None
        }
    }
}

/// A custom domain on an HTTPS listener that no certificate names is served with
/// the default certificate, which clients will refuse: say so at load time.
fn warn_uncovered_domains<'a>(
    listener: &str,
    tls: &tls::ListenerTls,
    domains: impl Iterator<Item = &'a Box<str>>,
) {
    for d in domains.filter(|d| !tls.covers(d)) {
        tracing::warn!(listener, domain = %d, "no certificate names this custom domain; it gets the default certificate");
    }
}

/// Upstream TLS configs of the whole config: built once per distinct CA and
/// client certificate, with an id per (config, server name) that keys the pools.
struct UpstreamTls {
    base: PathBuf,
    builder: tls::UpstreamTlsBuilder,
    ids: HashMap<(tls::UpstreamTlsSpec, String), u32>,
}

impl UpstreamTls {
    fn new(base: &Path) -> Self {
        Self {
            base: base.to_path_buf(),
            builder: tls::UpstreamTlsBuilder::default(),
            ids: HashMap::new(),
        }
    }

    fn compile(
        &mut self,
        t: Option<&crate::config::UpstreamTlsFile>,
        host: &str,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<(tls::UpstreamTls, u32)> {
        let default = crate::config::UpstreamTlsFile::default();
        let t = t.unwrap_or(&default);
        let spec = tls::UpstreamTlsSpec {
            ca: t.ca.as_deref().map(|p| resolve_path(&self.base, p)),
            client_cert: t.client_cert.as_ref().map(|c| {
                (
                    resolve_path(&self.base, &c.cert),
                    resolve_path(&self.base, &c.key),
                )
            }),
        };
        let name = t.server_name.as_deref().unwrap_or(host);
        // `[::1]` in a URI is the address `::1`.
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = match rustls::pki_types::ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(_) => {
                errs.push(
                    format!("{path}.tls.server_name"),
                    format!("{name:?} is not a host name or address"),
                );
                return None;
            }
        };
        let config = match self.builder.build(&spec) {
            Ok(c) => c,
            Err(e) => {
                errs.push(format!("{path}.tls"), e);
                return None;
            }
        };
        // Stable across reloads (a digest, never 0), so pooled connections of an
        // upstream whose TLS did not change are kept.
        let id = *self.ids.entry((spec, name)).or_insert_with_key(|k| {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() as u32).max(1)
        });
        Some((
            tls::UpstreamTls {
                config,
                server_name,
            },
            id,
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_integration(
    i: &IntegrationFile,
    key: Option<&RouteKey>,
    vars: &BTreeMap<String, String>,
    path: &str,
    stage: &str,
    up_tls: &mut UpstreamTls,
    errs: &mut ConfigErrors,
) -> Option<Integration> {
    match i {
        IntegrationFile::Mock {
            status,
            headers,
            body,
        } => {
            if !(100..=599).contains(status) || (100..200).contains(status) {
                errs.push(format!("{path}.status"), "must be from 200 to 599");
                return None;
            }
            let mut lines = Vec::new();
            for (name, value) in headers {
                let lname = name.to_ascii_lowercase();
                let valid_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let valid_value = value
                    .bytes()
                    .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
                if !valid_name || !valid_value {
                    errs.push(
                        format!("{path}.headers.{name}"),
                        "not a valid header name and value",
                    );
                    continue;
                }
                if matches!(
                    lname.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "apigw-requestid"
                ) {
                    errs.push(
                        format!("{path}.headers.{name}"),
                        "set by the gateway; remove it from the mock",
                    );
                    continue;
                }
                lines.extend_from_slice(lname.as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value.as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
            Some(Integration::Mock(MockResponse {
                status: *status,
                header_lines: lines.into(),
                body: body.as_bytes().into(),
            }))
        }
        IntegrationFile::HttpProxy {
            uri,
            timeout_ms,
            tls,
        } => {
            let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
            if !TIMEOUT_RANGE_MS.contains(&timeout_ms) {
                errs.push(format!("{path}.timeout_ms"), "must be from 50 to 30000");
            }
            let uri_path = format!("{path}.uri");
            let expanded = match expand_stage_variables(uri, vars) {
                Ok(u) => u,
                Err(var) => {
                    errs.push(
                        uri_path,
                        format!("stage {stage:?} has no variable {var:?} used in {uri:?}"),
                    );
                    return None;
                }
            };
            let params = key.map(RouteKey::params).unwrap_or_default();
            match parse_http_uri(&expanded, &params) {
                Ok(ParsedUri {
                    mut target,
                    https,
                    host,
                }) => {
                    target.append_request_path = matches!(key, Some(RouteKey::Default));
                    target.timeout = Duration::from_millis(timeout_ms);
                    if https {
                        let (t, id) = up_tls.compile(tls.as_ref(), host, path, errs)?;
                        target.tls = Some(t);
                        target.pool_key.tls = id;
                    } else if tls.is_some() {
                        errs.push(format!("{path}.tls"), "only for https:// URIs");
                    }
                    Some(Integration::HttpProxy(target))
                }
                Err(UriError::Invalid(msg)) => {
                    errs.push(uri_path, format!("{expanded:?} (stage {stage:?}): {msg}"));
                    None
                }
            }
        }
    }
}

/// Replaces `${stage_variables.name}` (and AWS's `${stageVariables.name}`);
/// returns the name of a missing variable.
fn expand_stage_variables(uri: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(after.to_owned());
        };
        let inner = &after[..end];
        let name = inner
            .strip_prefix("stage_variables.")
            .or_else(|| inner.strip_prefix("stageVariables."))
            .ok_or_else(|| inner.to_owned())?;
        out.push_str(vars.get(name).ok_or_else(|| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

enum UriError {
    Invalid(String),
}

/// Parses `http://host[:port][/path][?query]`, resolving the host now (the control
/// plane) so workers never do DNS.
struct ParsedUri<'a> {
    target: ProxyTarget,
    https: bool,
    /// The URI's host without its port.
    host: &'a str,
}

fn parse_http_uri<'a>(uri: &'a str, params: &[&str]) -> Result<ParsedUri<'a>, UriError> {
    let (rest, default_port) = if let Some(r) = uri.strip_prefix("http://") {
        (r, 80)
    } else if let Some(r) = uri.strip_prefix("https://") {
        (r, 443)
    } else {
        return Err(UriError::Invalid(
            "must start with http:// or https://".into(),
        ));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() || authority.contains(['{', '}', '@', ' ']) {
        return Err(UriError::Invalid(format!(
            "host {authority:?} must be a fixed host[:port] (parameters belong in the path)"
        )));
    }
    let (host, with_port) = match authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
    {
        Some((host, _)) => (host, authority.to_owned()),
        None => (authority, format!("{authority}:{default_port}")),
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| UriError::Invalid(format!("cannot resolve {authority:?}: {e}")))?
        .next()
        .ok_or_else(|| UriError::Invalid(format!("{authority:?} resolves to no address")))?;
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(UriError::Invalid(
            "the path has characters not allowed in a URI".into(),
        ));
    }
    let mut parts = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| UriError::Invalid("unclosed `{` in the path".into()))?
            + open;
        if open > 0 {
            parts.push(PathPart::Literal(rest[..open].into()));
        }
        let name = rest[open + 1..close].trim_end_matches('+');
        if !params.contains(&name) {
            return Err(UriError::Invalid(format!(
                "`{{{name}}}` is not a parameter of this route (it has: {})",
                if params.is_empty() {
                    "none".to_owned()
                } else {
                    params.join(", ")
                }
            )));
        }
        parts.push(PathPart::Param(name.into()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(UriError::Invalid("unmatched `}` in the path".into()));
    }
    if !rest.is_empty() {
        parts.push(PathPart::Literal(rest.into()));
    }
    let target = ProxyTarget {
        addr,
        pool_key: crate::upstream::pool::PoolKey { addr, tls: 0 },
        tls: None,
        host_header: authority.into(),
        path: parts,
        append_request_path: false,
        query: query.filter(|q| !q.is_empty()).map(Into::into),
        timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
    };
    Ok(ParsedUri {
        target,
        https: default_port == 443,
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn errors_of(text: &str) -> Vec<String> {
        match parse(text) {
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
            Ok(cfg) => match compile(&cfg, None) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.iter().map(ToString::to_string).collect(),
            },
        }
    }

    const BASE: &str = "listeners: [ { name: l, bind: \"127.0.0.1:0\" } ]\n";

    #[test]
    fn throttles_are_checked_where_they_are_written() {
        let text = format!(
            "{BASE}throttle: {{ rate: -1, burst: 1 }}
apis:
  - name: p
    routes:
      - route: GET /pets
        integration: {{ type: mock }}
    stages:
      - name: prod
        throttle: {{ rate: 10, burst: 20 }}
        routes:
          \"GET /pets\": {{ throttle: {{ rate: 1, burst: 2 }}, cache: {{ ttl_s: 5 }} }}
          \"GET /cats\": {{ throttle: {{ rate: 1, burst: 2 }} }}
"
        );
        let errs = errors_of(&text);
        for want in [
            "throttle.rate: must be a number of requests per second",
            "apis[0].stages[0].routes[\"GET /pets\"].cache: a route's cache needs the stage's",
            "apis[0].stages[0].routes[\"GET /cats\"]: no route \"GET /cats\" in API \"p\"",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        let errs = errors_of(&format!(
            "{BASE}apis: [ {{ name: p, routes: [ {{ route: $default, integration: {{ type: mock }} }} ],
  stages: [ {{ name: prod, throttle: {{ rate: 10, burst: 20, extra: 1 }} }} ] }} ]
"
        ));
        assert!(
            errs.iter()
                .any(|e| e.contains("apis[0].stages[0].throttle.extra: unknown field")),
            "{errs:?}"
        );
    }

    #[test]
    fn later_features_are_refused_by_name() {
        let text = format!(
            "{BASE}store: {{ path: ./data, redis: {{ url: \"redis://127.0.0.1:6379/0\" }} }}
apis:
  - name: p
    routes:
      - route: POST /orders
        api_key_required: true
        integration: {{ type: mock }}
    stages: [ {{ name: prod, access_log: {{ path: stdout }} }} ]
"
        );
        let with_responses = text.replace(
            "    stages:",
            "    gateway_responses: { THROTTLED: { status: 503 } }\n    stages:",
        );
        for (text, key) in [
            (&text, "store.redis"),
            (&with_responses, "apis[0].gateway_responses"),
        ] {
            let errs = errors_of(text);
            assert!(
                errs.iter()
                    .any(|e| e.contains(&format!("not supported yet: {key}"))),
                "{key}: {errs:?}"
            );
        }
    }

    #[test]
    fn uri_errors_name_the_key() {
        let text = format!(
            "{BASE}apis:
  - name: p
    routes:
      - route: GET /a/{{id}}
        integration: {{ type: http_proxy, uri: \"${{stage_variables.nope}}/a\" }}
      - route: GET /b
        integration: {{ type: http_proxy, uri: \"http://127.0.0.1:9/b/{{id}}\" }}
      - route: GET /c
        integration: {{ type: http_proxy, uri: \"ftp://x/c\" }}
    stages: [ {{ name: prod }} ]
"
        );
        let errs = errors_of(&text);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("apis[0].routes[0].integration.uri"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("apis[0].routes[1].integration.uri"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("apis[0].routes[2].integration.uri"),
            "{errs:?}"
        );
    }

    #[test]
    fn stage_names_unique_per_listener_and_one_default() {
        let text = format!(
            "{BASE}apis:
  - name: a
    routes: [ {{ route: $default, integration: {{ type: mock }} }} ]
    stages: [ {{ name: prod }}, {{ name: $default }} ]
  - name: b
    routes: [ {{ route: $default, integration: {{ type: mock }} }} ]
    stages: [ {{ name: prod }}, {{ name: $default }} ]
"
        );
        let errs = errors_of(&text);
        assert!(
            errs.iter().any(|e| e.contains("stage name \"prod\"")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("two `$default` stages")),
            "{errs:?}"
        );
    }

    #[test]
    fn stage_variables_and_params_compile() {
        let text = format!(
            "{BASE}apis:
  - name: p
    routes:
      - route: GET /pets/{{id}}
        integration: {{ type: http_proxy, uri: \"${{stage_variables.backend}}/v1/pets/{{id}}?src=gw\" }}
    stages: [ {{ name: prod, variables: {{ backend: \"http://127.0.0.1:9001\" }} }} ]
"
        );
        let cfg = parse(&text).unwrap();
        let plan = compile(&cfg, Some(2)).unwrap();
        assert_eq!(plan.workers, 2);
        let Integration::HttpProxy(t) = &plan.stages[0].routes[0].integration else {
            panic!("not a proxy")
        };
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(&*t.host_header, "127.0.0.1:9001");
        assert_eq!(
            t.path,
            vec![
                PathPart::Literal("/v1/pets/".into()),
                PathPart::Param("id".into())
            ]
        );
        assert_eq!(t.query.as_deref(), Some("src=gw"));
    }
}
