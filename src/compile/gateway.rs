//! The whole config to a `Plan`: APIs and stages, then listeners, then the
//! gateway-wide parts (keys, admin, store, telemetry, tracing, metrics).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::compile::apis::{api_parts, ApiParts, Deployed};
use crate::compile::build::{add_throttle, secret, Build, Throttles, UpstreamTls};
use crate::compile::canary::{compile_canary, CanarySpec};
use crate::compile::keys::compile_seed;
use crate::compile::listeners::compile_listener;
use crate::compile::stages::compile_stage;
use crate::compile::telemetry::{compile_telemetry, compile_tracing};
use crate::config::{ApiFile, ConfigErrors, ConfigFile, Workers};
use crate::plan::{AdminPlan, Plan, StagePlan};
use crate::policy::keys;
use crate::upstream::pool::PoolLimits;

const DEFAULT_DRAIN_MS: u64 = 30_000;
/// `busy_poll_us` unless the config says: how long an epoll worker polls for
/// the next event before it sleeps (the window adapts below it). Off: polling
/// buys latency and requests per second where a core would idle between close
/// events, but its time counts as the gateway's CPU (`tuning/busy-poll.md`).
pub const DEFAULT_BUSY_POLL_US: u64 = 0;
/// Longer windows only burn the core: a sleep that short costs less.
const MAX_BUSY_POLL_US: u64 = 1_000;

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
    /// The store's deployments, for canaries that name one; `None` (no store,
    /// as `shardgate validate`): a canary's deployment is not looked up and the
    /// canary serves the stage's definition (logged at debug level).
    pub snapshots: Option<crate::compile::apis::Snapshots>,
}

/// Numbers each compiled authorizer for the life of the process: workers remember
/// verified tokens and decisions by it, so a reload that keeps an authorizer
/// keeps them, and one that replaces it cannot reuse them.
static NEXT_AUTHORIZER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

pub fn compile_with(cfg: &ConfigFile, opts: &Options) -> Result<Plan, ConfigErrors> {
    let workers_override = opts.workers;
    let workers = match workers_override.map(Workers::Count).unwrap_or(cfg.workers) {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };

    let mut b = Build {
        errs: ConfigErrors::default(),
        throttles: Throttles {
            buckets: Vec::new(),
            names: Vec::new(),
            workers,
        },
        up_tls: UpstreamTls::new(&cfg.base_dir),
        groups: crate::compile::build::Groups::default(),
        logs: crate::observe::accesslog::Logs::default(),
        base_dir: cfg.base_dir.clone(),
        functions: HashMap::new(),
    };
    let (functions, function_names) = crate::compile::functions::compile_functions(
        &cfg.functions,
        &cfg.base_dir,
        workers,
        &mut b.errs,
    );
    b.functions = function_names;
    for key in &cfg.unsupported {
        b.errs.not_supported(key.clone());
    }
    b.groups = crate::compile::upstreams::compile_groups(
        &cfg.upstreams,
        cfg.dns_refresh_s,
        &mut b.up_tls,
        &mut b.errs,
    );
    let global_throttle = cfg.throttle.and_then(|t| {
        add_throttle(
            &mut b.throttles,
            t,
            "gateway".into(),
            "throttle",
            &mut b.errs,
        )
    });

    let mut authorizers: Vec<Arc<crate::policy::access::Authorizer>> = Vec::new();
    // Each authorizer's config digest, in the order compiled.
    let mut authorizer_sigs: Vec<u64> = Vec::new();
    let mut config_access_keys: Vec<crate::policy::sigv4::AccessKey> = Vec::new();
    let access_keys = opts.access_keys.clone().unwrap_or_default();
    // APIs and their stages.
    let mut api_index: HashMap<&str, usize> = HashMap::new();
    let mut stages: Vec<StagePlan> = Vec::new();
    // (api index, stage name) → stage id
    let mut stage_ids: HashMap<(usize, &str), usize> = HashMap::new();
    let mut api_stages: Vec<Vec<usize>> = Vec::new();
    // (stage, (the canary in force, its compiled stage)), added after them all.
    let mut canaries: Vec<(usize, (crate::config::CanaryFile, StagePlan))> = Vec::new();
    for (ai, api) in cfg.apis.iter().enumerate() {
        let Some(api) = api else {
            api_stages.push(Vec::new());
            continue;
        };
        let path = format!("apis[{ai}]");
        if api_index.insert(api.name.as_str(), ai).is_some() {
            b.errs.push(
                format!("{path}.name"),
                format!("duplicate API name {:?}", api.name),
            );
        }
        match api.kind.as_str() {
            "http" => {}
            "websocket" => {}
            "rest" => b.errs.not_supported(format!("{path}.type ({})", api.kind)),
            other => b.errs.push(
                format!("{path}.type"),
                format!("unknown API type {other:?}: expected http, rest or websocket"),
            ),
        }
        let config_parts = api_parts(
            api,
            &path,
            &mut b.up_tls,
            &mut authorizers,
            &mut authorizer_sigs,
            &mut config_access_keys,
            &access_keys,
            &mut b.errs,
        );
        // Stages pointed at a deployment serve its snapshot of the API (routes,
        // integrations, authorizers, CORS, policy) instead of the file's.
        let mut deployed: HashMap<String, (ApiFile, ApiParts)> = HashMap::new();
        for stage in api.stages.iter().flatten() {
            let Some(d) = opts.deployed.get(&(api.name.clone(), stage.name.clone())) else {
                continue;
            };
            let Some(id) = d.id.as_deref() else { continue };
            if deployed.contains_key(id) {
                continue;
            }
            let dpath = format!("deployments[{}/{id}]", api.name);
            let Some(file) = d.api_file(&api.name, &dpath, &mut b.errs) else {
                continue;
            };
            let mut no_keys = Vec::new();
            let parts = api_parts(
                &file,
                &dpath,
                &mut b.up_tls,
                &mut authorizers,
                &mut authorizer_sigs,
                &mut no_keys,
                &access_keys,
                &mut b.errs,
            );
            deployed.insert(id.to_owned(), (file, parts));
        }
        if api.stages.is_empty() {
            b.errs
                .push(format!("{path}.stages"), "an API needs at least one stage");
        }
        let mut mine = Vec::new();
        for (si, stage) in api.stages.iter().enumerate() {
            let Some(stage) = stage else { continue };
            let spath = format!("{path}.stages[{si}]");
            let pointer = opts.deployed.get(&(api.name.clone(), stage.name.clone()));
            if stage_ids
                .insert((ai, stage.name.as_str()), stages.len())
                .is_some()
            {
                b.errs.push(
                    format!("{spath}.name"),
                    format!("duplicate stage {:?} in API {:?}", stage.name, api.name),
                );
            }
            mine.push(stages.len());
            let before = b.errs.0.len();
            let compiled = compile_stage(
                api,
                &path,
                stage,
                &spath,
                pointer,
                &config_parts,
                &deployed,
                None,
                &mut b,
            );
            let canary = match pointer.and_then(|d| d.canary.as_ref()) {
                Some(set) => set.clone(),
                None => stage.canary.clone(),
            };
            let parent = stages.len();
            stages.push(compiled);
            // A stage that did not compile has no canary to add errors of its own.
            if let (Some(setting), true) = (canary, b.errs.0.len() == before) {
                let spec = CanarySpec {
                    api,
                    path: &path,
                    stage,
                    spath: &spath,
                    pointer,
                    parts: &config_parts,
                };
                let canary = compile_canary(
                    &spec,
                    setting,
                    &stages[parent],
                    &mut deployed,
                    &mut authorizers,
                    &mut authorizer_sigs,
                    &access_keys,
                    opts.snapshots.as_ref(),
                    &mut b,
                );
                if let Some(c) = canary {
                    canaries.push((parent, c));
                }
            }
        }
        api_stages.push(mine);
    }

    // Canaries after every stage: dispatch never reaches them, and the stages'
    // ids stay as they are when one comes or goes.
    for (parent, (setting, mut canary)) in canaries {
        let id = stages.len();
        if let Some(of) = &mut canary.canary_of {
            of.parent = parent;
            of.routes = canary
                .routes
                .iter()
                .map(|r| stages[parent].routes.iter().position(|p| p.key == r.key))
                .collect();
        }
        stages[parent].canary = Some(Box::new(crate::plan::Canary {
            stage: id,
            threshold: crate::plan::Canary::threshold(setting.percent),
            setting,
        }));
        stages.push(canary);
    }
    let seed = compile_seed(cfg, &stages, &mut b.errs);
    let admin = compile_admin(cfg, &mut b.errs);
    let mut store_path = None;
    let mut redis = None;
    if let Some(store) = &cfg.store {
        if let Some(r) = &store.redis {
            if store.path.is_some() {
                b.errs.push(
                    "store",
                    "store.path and store.redis exclude each other: choose one",
                );
            }
            redis = crate::compile::keys::compile_redis(r, &mut b.errs);
        }
        match store.path.as_deref() {
            Some("") => b.errs.push("store.path", "must name a directory"),
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
        listeners.extend(compile_listener(
            l,
            &path,
            cfg,
            &api_index,
            &api_stages,
            &stage_ids,
            &stages,
            &mut binds,
            &mut b,
        ));
    }
    if cfg.listeners.is_empty() {
        b.errs
            .push("listeners", "at least one listener is required");
    }
    let drain_ms = cfg.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_MS);
    let busy_poll_us = cfg.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US);
    if busy_poll_us > MAX_BUSY_POLL_US {
        b.errs.push(
            "busy_poll_us",
            format!(
                "{busy_poll_us} is too long: at most {MAX_BUSY_POLL_US} (0 switches polling off)"
            ),
        );
    }
    let routes_per_stage: Vec<usize> = stages.iter().map(|s| s.routes.len()).collect();
    if opts.access_keys.is_none() {
        access_keys.publish(config_access_keys.iter().cloned());
    }
    let authorizer_uids = authorizers
        .iter()
        .map(|_| NEXT_AUTHORIZER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        .collect();
    let telemetry = compile_telemetry(cfg, &mut b);
    let tracing = compile_tracing(cfg, &mut b.errs);
    let metrics = Arc::new(crate::observe::metrics::Metrics::new(workers));
    crate::plan::assign_metric_slots(&metrics, &mut stages);
    if b.errs.is_empty() {
        Ok(Plan {
            generation: 0,
            watch: cfg.watch.unwrap_or(false),
            api_sources: api_sources(cfg),
            metrics,
            logs: Arc::new(b.logs),
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
            busy_poll: Duration::from_micros(busy_poll_us),
            drain_timeout: Duration::from_millis(drain_ms),
            listeners,
            stages,
            pool: PoolLimits::default(),
            functions,
            upstreams: std::mem::take(&mut b.groups.list)
                .into_iter()
                .map(Arc::new)
                .collect(),
            throttles: b.throttles.buckets,
            throttle_names: b.throttles.names,
            throttle: global_throttle,
            seed,
            live: Arc::new(keys::Live::new(workers)),
            cache: Arc::new(crate::policy::cache::Shared::new(
                workers,
                &routes_per_stage,
            )),
            admin,
            store_path,
            redis,
            epoch: std::time::Instant::now(),
        })
    } else {
        Err(b.errs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::plan::Integration;
    use crate::upstream::target::PathPart;

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
    fn gateway_responses_are_checked_key_by_key() {
        let text = format!(
            "{BASE}apis:
  - name: p
    routes:
      - route: POST /orders
        integration: {{ type: mock }}
    gateway_responses:
      THROTTLED: {{ status: 503, headers: {{ retry-after: '1', x-id: $context.requestId }}, body: '{{\"e\":\"$context.error.message\"}}' }}
      DEFAULT_4XX: {{ body: '$stageVariables.missing' }}
      NOT_A_TYPE: {{ status: 400 }}
      QUOTA_EXCEEDED: {{ status: 99, headers: {{ content-length: '3', 'bad name': x }} }}
      UNAUTHORIZED: {{ body: '$context.secret' }}
    stages: [ {{ name: prod }}, {{ name: beta, variables: {{ missing: here }} }} ]
"
        );
        let errs = errors_of(&text);
        let has = |key: &str, words: &str| {
            assert!(
                errs.iter().any(|e| e.contains(key) && e.contains(words)),
                "{key} / {words}: {errs:?}"
            )
        };
        let r = "apis[0].gateway_responses";
        has(&format!("{r}.NOT_A_TYPE"), "unknown gateway response type");
        has(&format!("{r}.QUOTA_EXCEEDED.status"), "99");
        has(
            &format!("{r}.QUOTA_EXCEEDED.headers.content-length"),
            "set by the gateway",
        );
        has(
            &format!("{r}.QUOTA_EXCEEDED.headers.bad name"),
            "not a header name",
        );
        has(&format!("{r}.UNAUTHORIZED.body"), "$context.secret");
        has(&format!("{r}.DEFAULT_4XX.body"), "stage \"prod\"");
        assert!(!errs.iter().any(|e| e.contains(".THROTTLED")), "{errs:?}");
        assert!(
            !errs.iter().any(|e| e.contains("stage \"beta\"")),
            "{errs:?}"
        );
        // Each error once, though two stages compile the API.
        assert_eq!(
            errs.iter().filter(|e| e.contains("NOT_A_TYPE")).count(),
            1,
            "{errs:?}"
        );
    }

    #[test]
    fn functions_and_aws_integrations_are_checked_key_by_key() {
        let text = format!(
            "{BASE}functions:
  - {{ name: hello, runtime_api: 127.0.0.1:9001, concurrency: 0, timeout_ms: 0 }}
  - {{ name: 'bad name', runtime_api: nowhere }}
apis:
  - name: p
    routes:
      - route: GET /a
        integration: {{ type: lambda, function: nope }}
      - route: GET /b
        integration: {{ type: lambda, function: hello, payload_format_version: '3.0' }}
      - route: GET /c
        integration: {{ type: aws, subtype: SQS-Nothing }}
      - route: GET /d
        integration:
          type: aws
          subtype: SQS-SendMessage
          endpoint: http://127.0.0.1:5000
          credentials: {{ access_key_id: a, secret_access_key: b }}
          parameters: {{ QueueUrl: $request.nothing, Colour: red }}
      - route: GET /e
        integration:
          type: http_proxy
          uri: http://127.0.0.1:9/x
          request_parameters: {{ 'overwrite:header.authorization': x, 'shout:header.x': y }}
          response_parameters: {{ '700': {{}}, '200': {{ 'append:statuscode': '201' }} }}
      - route: GET /f
        integration: {{ type: lambda, function_arn: 'arn:aws:s3:::bucket', endpoint: http://127.0.0.1:9, credentials: {{ access_key_id: a, secret_access_key: b }} }}
    stages: [ {{ name: prod }} ]
"
        );
        let errs = errors_of(&text);
        for want in [
            "functions[0].concurrency: must be from 1 to 256",
            "functions[0].timeout_ms: must be from 1 to 900000",
            "functions[1].name:",
            "apis[0].routes[0].integration.function: no function named \"nope\"",
            "apis[0].routes[1].integration.payload_format_version: \"3.0\"",
            "apis[0].routes[2].integration.subtype: \"SQS-Nothing\": expected one of SQS-SendMessage",
            "apis[0].routes[3].integration.parameters.QueueUrl: \"request.nothing\" is not a mapping source",
            "apis[0].routes[3].integration.parameters.Colour: not a parameter of SQS-SendMessage",
            "apis[0].routes[3].integration.parameters: SQS-SendMessage needs MessageBody",
            "apis[0].routes[4].integration.request_parameters.\"overwrite:header.authorization\": \"authorization\" is reserved",
            "apis[0].routes[4].integration.request_parameters.\"shout:header.x\": \"shout\": expected overwrite, append or remove",
            "apis[0].routes[4].integration.response_parameters.\"700\": expected a status code",
            "apis[0].routes[4].integration.response_parameters.\"200\".\"append:statuscode\": the status code can only be overwritten",
            "apis[0].routes[5].integration.function_arn: \"arn:aws:s3:::bucket\" is not a Lambda function ARN",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:#?}");
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
        let crate::upstream::target::Upstream::Fixed(ep) = &t.to else {
            panic!("an IP literal is a fixed endpoint")
        };
        assert_eq!(ep.addr, "127.0.0.1:9001".parse().unwrap());
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

    #[test]
    fn upstream_groups_are_checked_key_by_key() {
        let text = format!(
            "{BASE}upstreams:
  - name: pets
    targets: [ {{ url: \"http://127.0.0.1:9001\", weight: 0 }}, {{ url: \"ftp://x\" }} ]
    balance: consistent_hash
    health_check: {{ path: healthz, interval_ms: 5 }}
    outlier: {{ max_ejection_percent: 150 }}
    retries: {{ attempts: 11 }}
  - name: ok
    targets: [ {{ url: \"http://127.0.0.1:9002\" }} ]
    hash_key: header.x
apis:
  - name: p
    routes:
      - route: GET /a
        integration: {{ type: http_proxy, upstream: nowhere, uri: /a }}
      - route: GET /b
        integration: {{ type: http_proxy, upstream: ok, uri: \"http://127.0.0.1:1/b\" }}
    stages: [ {{ name: prod }} ]
"
        );
        let errs = errors_of(&text).join("\n");
        for want in [
            "upstreams[0].targets[0].weight: must be from 1 to 1000",
            "upstreams[0].targets[1].url: \"ftp://x\": must start with http:// or https://",
            "upstreams[0].hash_key: consistent_hash needs a hash_key",
            "upstreams[0].health_check.interval_ms: must be from 100 to 300000",
            "upstreams[0].health_check.path: must be a path starting with /",
            "upstreams[0].outlier.max_ejection_percent: must be from 0 to 100",
            "upstreams[0].retries.attempts: must be from 0 to 10",
            "upstreams[1].hash_key: only with balance: consistent_hash",
            "apis[0].routes[0].integration.upstream: no upstream group named \"nowhere\"",
            "with upstream, uri is a path starting with /",
        ] {
            assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
        }
    }
}
