//! One stage of an API: routes with their integrations and caches, the stage's and
//! routes' throttles, its access log, and its access control.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compile::apis::{check_stage_name, ApiParts, Deployed};
use crate::compile::authorizers::compile_policy;
use crate::compile::build::{add_throttle, digest, resolve_path, Build};
use crate::compile::functions::{compile_aws_integration, compile_mappings, integration_mappings};
use crate::compile::integrations::compile_integration;
use crate::compile::routes::{check_ttl, route_cache, DEFAULT_CACHE_TTL_S};
use crate::config::IntegrationFile;
use crate::config::{ApiFile, StageFile};
use crate::http::respond::MockResponse;
use crate::ids::ThrottleId;
use crate::plan::{Integration, RoutePlan, StagePlan};

/// One stage of `api` (`path`: the API's key path): its routes' integrations and
/// caches, throttles, access log and access control, from the file's definition
/// of the API or from the deployment the stage points at.
#[allow(clippy::too_many_arguments)]
pub fn compile_stage(
    api: &ApiFile,
    path: &str,
    stage: &StageFile,
    spath: &str,
    pointer: Option<&Deployed>,
    config_parts: &ApiParts,
    deployed: &HashMap<String, (ApiFile, ApiParts)>,
    canary_of: Option<&StagePlan>,
    b: &mut Build,
) -> StagePlan {
    let deployment = pointer.and_then(|d| d.id.as_deref());
    let (src, parts, path) = match deployment.and_then(|id| deployed.get(id)) {
        Some((file, parts)) => (
            file,
            parts,
            format!("deployments[{}/{}]", api.name, deployment.unwrap_or("")),
        ),
        None => (api, config_parts, path.to_owned()),
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
    check_stage_name(&stage.name, &format!("{spath}.name"), &mut b.errs);
    let access_log = stage.access_log.as_ref().and_then(|l| {
        let format =
            match crate::observe::accesslog::Format::parse(l.format.as_deref().unwrap_or("json")) {
                Ok(f) => f,
                Err(e) => {
                    b.errs.push(format!("{spath}.access_log.format"), e);
                    return None;
                }
            };
        let target = match l.path.as_str() {
            "stdout" | "-" => crate::observe::accesslog::Target::Stdout,
            "" => {
                b.errs
                    .push(format!("{spath}.access_log.path"), "stdout or a file path");
                return None;
            }
            p => crate::observe::accesslog::Target::File(resolve_path(&b.base_dir, p)),
        };
        Some(crate::observe::accesslog::LogSpec {
            sink: b.logs.sink(target),
            format,
        })
    });
    let stage_ttl = stage.cache.as_ref().map(|c| {
        check_ttl(c.ttl_s, &format!("{spath}.cache.ttl_s"), &mut b.errs)
            .unwrap_or(DEFAULT_CACHE_TTL_S)
    });
    let cache_bytes = stage.cache.as_ref().map_or(0, |c| {
        if c.capacity_mb == 0 || c.capacity_mb > 1 << 20 {
            b.errs.push(
                format!("{spath}.cache.capacity_mb"),
                "must be 1 to 1048576 (MiB)",
            );
        }
        (c.capacity_mb.min(1 << 20) as usize) << 20
    });
    // A canary shares its stage's throttles (the stage's rate is for both).
    let stage_throttle = match canary_of {
        Some(parent) => parent.throttle,
        None => stage.throttle.and_then(|t| {
            add_throttle(
                &mut b.throttles,
                t,
                format!("{}/{}", api.name, stage.name),
                &format!("{spath}.throttle"),
                &mut b.errs,
            )
        }),
    };
    // Per-route overrides name routes of this API.
    let mut route_throttles: HashMap<&str, ThrottleId> = HashMap::new();
    for (key, over) in &stage.routes {
        let rpath = format!("{spath}.routes[{key:?}]");
        // (A canary's deployment may lack a route the stage has.)
        if canary_of.is_none() && !src.routes.iter().flatten().any(|r| r.route == *key) {
            b.errs.push(
                rpath.clone(),
                format!("no route {key:?} in API {:?}", api.name),
            );
        }
        if over.cache.is_some() && stage.cache.is_none() {
            b.errs.push(
                format!("{rpath}.cache"),
                "a route's cache needs the stage's (stages[].cache)",
            );
        }
        if let Some(parent) = canary_of {
            let id = parent.routes.iter().find(|r| r.key == *key);
            if let Some(id) = id.and_then(|r| r.throttle) {
                route_throttles.insert(key.as_str(), id);
            }
        } else if let Some(t) = over.throttle {
            if let Some(id) = add_throttle(
                &mut b.throttles,
                t,
                format!("{}/{}/{key}", api.name, stage.name),
                &format!("{rpath}.throttle"),
                &mut b.errs,
            ) {
                route_throttles.insert(key.as_str(), id);
            }
        }
    }
    let websocket = crate::compile::websocket::is_websocket(src);
    let ws = websocket.then(|| {
        Arc::new(crate::compile::websocket::ws_stage(
            src,
            stage,
            &variables,
            &path,
            spath,
            &mut b.errs,
        ))
    });
    if !websocket {
        if stage.limits.is_some() {
            b.errs.push(
                format!("{spath}.limits"),
                "only WebSocket APIs' stages take limits",
            );
        }
        for (ri, r) in src.routes.iter().enumerate() {
            if r.as_ref().is_some_and(|r| r.route_response.is_some()) {
                b.errs.push(
                    format!("{path}.routes[{ri}].route_response"),
                    "only WebSocket APIs' routes answer with route responses",
                );
            }
        }
    }
    let mut routes = Vec::with_capacity(src.routes.len() + 1);
    for (ri, route) in src.routes.iter().enumerate() {
        let Some(route) = route else {
            // Keeps route ids aligned with the router; never matched.
            routes.push(gateway_route(String::new(), 500, None));
            continue;
        };
        let rpath = format!("{path}.routes[{ri}].integration");
        let integration = match &route.integration {
            IntegrationFile::Lambda(_) | IntegrationFile::Aws(_) => {
                compile_aws_integration(&route.integration, &variables, &rpath, b)
            }
            _ => compile_integration(
                &route.integration,
                keys.get(ri),
                &variables,
                &rpath,
                &stage.name,
                &mut b.up_tls,
                &mut b.groups,
                &mut b.errs,
            ),
        };
        if websocket {
            if let Some(Integration::HttpProxy(t)) = &integration {
                if t.fixed().is_none() {
                    b.errs.push(
                        rpath.clone(),
                        "a WebSocket route's http_proxy takes a URI with an IP address (not a host name or an upstream group) for now",
                    );
                }
            }
        }
        let mapping = integration_mappings(&route.integration)
            .and_then(|(req, resp)| compile_mappings(req, resp, &variables, &rpath, &mut b.errs));
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
                    &mut b.errs,
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
                mapping,
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
    // A WebSocket API without `$connect`: the handshake is accepted.
    if ws.as_ref().is_some_and(|w| w.connect.is_none()) {
        routes.push(gateway_route("$connect".into(), 200, None));
    }
    // The `@connections` API's routes (answered by the gateway).
    if ws.as_ref().is_some_and(|w| w.connections.is_some()) {
        for key in crate::compile::websocket::CONNECTIONS_KEYS {
            let auth = route_auth.get(routes.len()).cloned().flatten();
            routes.push(gateway_route(key.into(), 200, auth));
        }
    }
    let policy = match &stage.resource_policy {
        Some(p) => compile_policy(p, &format!("{spath}.resource_policy"), &mut b.errs),
        None => api_access.policy.clone(),
    };
    let access = crate::policy::access::StageAccess {
        policy,
        trusted: Arc::clone(&api_access.trusted),
        cors: api_access.cors.clone(),
        strip: Arc::clone(&api_access.strip),
    };
    let responses = crate::compile::responses::compile_responses(
        &src.gateway_responses,
        &format!("{path}.gateway_responses"),
        &crate::http::responses::StageValues {
            stage: &stage.name,
            api: &api.name,
            variables: &variables,
        },
        &mut b.errs,
    );
    StagePlan {
        responses,
        access,
        access_log,
        api: api.name.clone(),
        stage: stage.name.clone(),
        variables: variables.clone(),
        // Stages of one API share the tree; they differ in integrations.
        router: Arc::clone(router),
        routes,
        throttle: stage_throttle,
        cache_bytes,
        ws,
        canary: None,
        canary_of: canary_of.map(|parent| {
            Box::new(crate::plan::CanaryOf {
                parent: usize::MAX,
                routes: Vec::new().into(),
                label: format!("{}/Canary", parent.stage),
            })
        }),
    }
}

/// A route the gateway answers itself (a mock integration placeholder): a file
/// route that did not load, a WebSocket API's added `$connect`, `@connections`.
fn gateway_route(
    key: String,
    status: u16,
    auth: Option<crate::policy::access::RouteAuth>,
) -> RoutePlan {
    RoutePlan {
        key,
        integration: Integration::Mock(MockResponse {
            status,
            header_lines: Box::default(),
            body: Box::default(),
        }),
        throttle: None,
        api_key_required: false,
        cache: None,
        auth,
        validate: None,
        mapping: None,
        metric_slot: usize::MAX,
        sig: 0,
    }
}
