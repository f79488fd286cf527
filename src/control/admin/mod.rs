//! The admin listener (`admin.bind`, loopback by default): health, and the
//! management API for API keys and usage plans, behind a bearer token.
//!
//! A plain blocking server on its own threads (one per connection, each request
//! answered with `Connection: close`): management calls are rare, and none of this
//! touches the workers except through the keyring the registry publishes.
//!
//! ```text
//! GET    /health
//! GET    /console          (the web console; its files need no token)
//! GET    /apikeys                             POST /apikeys
//! POST   /apikeys/import  (text/csv; also POST /apikeys?mode=import)
//! GET    /apikeys/{id}    PATCH /apikeys/{id}   DELETE /apikeys/{id}
//! GET    /accesskeys                          POST /accesskeys (SigV4)
//! GET    /accesskeys/{id}                     DELETE /accesskeys/{id}
//! GET    /usageplans                          POST /usageplans
//! GET    /usageplans/{id} PUT /usageplans/{id}  DELETE /usageplans/{id}
//! GET    /usageplans/{id}/keys                POST /usageplans/{id}/keys
//! DELETE /usageplans/{id}/keys/{keyId}
//! GET    /usageplans/{id}/usage?startDate=&endDate=[&keyId=][&limit=][&position=]
//! PATCH  /usageplans/{id}/keys/{keyId}/usage
//! GET    /apis                              (APIs, stages, routes as served)
//! GET    /cache                              (sizes, hits and misses per route)
//! DELETE /cache/{api}/{stage}                (flush the stage's cache)
//! POST   /cache/{api}/{stage}/flush          (flush one entry)
//! POST   /test/clock      (only with SHARDGATE_TEST_CLOCK=1)
//! ```

// The control plane: its threads share state under mutexes, off the request path.
#![allow(clippy::disallowed_types)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::UsagePlanFile;
use crate::control::registry::api_keys::{KeyPatch, NewKey};
use crate::control::registry::ApiError;
use crate::http::respond;
use crate::plan::AdminPlan;

pub mod cache;
pub mod console;
pub mod deployments;
pub mod usage;
pub mod views;
pub mod wire;

use cache::{cache_stats, cached_stage, flush_entry, https};
use deployments::{
    create_deployment, known_stage, list_deployments, promote_canary, remove_canary, update_stage,
};
use usage::{import, update_usage, usage};
use views::{access_key_json, deployment_json, key_json, plan_json, plan_key_json, stage_json};
use wire::{
    authorized, body, lock, not_allowed, query, read_request, Ctx, Request, Response, IO_TIMEOUT,
};

/// Connections served at once (a thread each); more are closed at once.
const MAX_CONNS: usize = 64;

/// Binds the admin listener and serves it on a thread of its own.
pub fn start(
    admin: &AdminPlan,
    control: Arc<crate::control::reload::Control>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(admin.bind).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot bind admin {}: {e}", admin.bind))
    })?;
    let addr = listener.local_addr()?;
    let ctx = Arc::new(Ctx {
        token: admin.token.clone(),
        registry: Arc::clone(control.registry()),
        control,
        test_clock: std::env::var_os("SHARDGATE_TEST_CLOCK").is_some_and(|v| v == "1"),
    });
    std::thread::Builder::new()
        .name("shardgate-admin".into())
        .spawn(move || {
            // Scrapes and management calls (and the connection threads, which
            // inherit it) yield to the workers on a shared core.
            crate::below_workers(10);
            let open = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                if open.load(Ordering::Acquire) >= MAX_CONNS {
                    tracing::warn!("admin: {MAX_CONNS} connections open; closing a new one");
                    continue;
                }
                open.fetch_add(1, Ordering::AcqRel);
                let (ctx, done) = (Arc::clone(&ctx), Arc::clone(&open));
                let spawned = std::thread::Builder::new()
                    .name("shardgate-admin-conn".into())
                    .spawn(move || {
                        serve(stream, &ctx);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    open.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(error = %e, "admin: cannot start a connection thread");
                }
            }
        })?;
    Ok(addr)
}

fn serve(mut stream: TcpStream, ctx: &Ctx) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = stream.peer_addr().ok();
    let resp = match read_request(&mut stream) {
        Ok(Some(req)) => {
            let resp = handle(ctx, &req);
            tracing::info!(peer = ?peer, method = %req.method, path = %req.path, status = resp.status, "admin");
            resp
        }
        Ok(None) => return,
        Err(e) => {
            tracing::info!(peer = ?peer, error = %e.message, "admin: bad request");
            e.into()
        }
    };
    let body = if resp.status == 204 {
        Vec::new()
    } else if let Some((_, text)) = &resp.text {
        text.clone().into_bytes()
    } else {
        let mut b = serde_json::to_vec(&resp.body).unwrap_or_default();
        b.push(b'\n');
        b
    };
    let mut head = Vec::with_capacity(256);
    respond::status_line(&mut head, resp.status, respond::reason(resp.status));
    respond::content_length(&mut head, body.len() as u64);
    head.extend_from_slice(b"connection: close\r\n");
    if let Some((ctype, _)) = &resp.text {
        head.extend_from_slice(b"content-type: ");
        head.extend_from_slice(ctype.as_bytes());
        head.extend_from_slice(b"\r\n");
    } else if !body.is_empty() {
        head.extend_from_slice(b"content-type: application/json\r\n");
    }
    head.extend_from_slice(resp.headers.as_bytes());
    if resp.status == 401 {
        head.extend_from_slice(b"www-authenticate: Bearer realm=\"shardgate\"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let _ = stream.write_all(&head);
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

fn handle(ctx: &Ctx, req: &Request) -> Response {
    let segs: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    // `/admin/...` and `/...` are the same calls.
    let segs = segs.strip_prefix(&["admin"]).unwrap_or(&segs);
    let m = req.method.as_str();
    // Probes and scrapes need no token (bind the admin listener to a private
    // address).
    match (m, segs) {
        ("GET", ["health"] | ["healthz"]) => return Response::ok(json!({ "status": "ok" })),
        ("GET", ["readyz"]) => {
            return if ctx.control.plan().metrics.ready.load(Ordering::Acquire) {
                Response::ok(
                    json!({ "status": "ready", "listeners": ctx.control.plan().listeners.len() }),
                )
            } else {
                Response::with(503, json!({ "status": "not ready" }))
            };
        }
        ("GET", ["metrics"]) => {
            let plan = ctx.control.plan();
            let mut text = plan.metrics.render();
            text.push_str(&crate::observe::metrics::render_upstreams(&plan.upstreams));
            text.push_str(&crate::observe::metrics::render_functions(&plan.functions));
            if let Some(s) = lock(ctx).store().mirror() {
                use std::fmt::Write as _;
                let _ = writeln!(
                    text,
                    "# HELP shardgate_redis_round_trips_total Calls to Redis (cluster mode; a script or a pipeline is one).\n# TYPE shardgate_redis_round_trips_total counter\nshardgate_redis_round_trips_total {}\n# HELP shardgate_redis_up 1 while Redis answers.\n# TYPE shardgate_redis_up gauge\nshardgate_redis_up {}",
                    s.round_trips.load(std::sync::atomic::Ordering::Relaxed),
                    u8::from(s.is_up())
                );
            }
            return Response::text("text/plain; version=0.0.4; charset=utf-8", text);
        }
        ("GET", ["console", rest @ ..]) => {
            if let Some(r) = console::file(rest) {
                return r;
            }
        }
        _ => {}
    }
    if !authorized(ctx, req) {
        let message = if ctx.token.is_none() {
            "Unauthorized: the management API is off (no admin.token configured)"
        } else {
            "Unauthorized"
        };
        return ApiError::new(401, message).into();
    }
    match route(ctx, req, m, segs) {
        Ok(r) => r,
        Err(e) => e.into(),
    }
}

fn route(ctx: &Ctx, req: &Request, m: &str, segs: &[&str]) -> Result<Response, ApiError> {
    match segs {
        ["apikeys"] if m == "POST" && query(req, "mode") == Some("import") => import(ctx, req),
        ["apikeys", "import"] if m == "POST" => import(ctx, req),
        ["apikeys"] => match m {
            "GET" => {
                let reg = lock(ctx);
                let items: Vec<Value> = reg.keys().into_iter().map(key_json).collect();
                Ok(Response::ok(json!({ "items": items })))
            }
            "POST" => {
                let new: NewKey = body(req)?;
                let (def, value) = lock(ctx).create_key(new)?;
                let mut v = key_json(&def);
                v["value"] = Value::String(value);
                Ok(Response::created(v))
            }
            _ => Err(not_allowed()),
        },
        ["apikeys", id] => match m {
            "GET" => Ok(Response::ok(key_json(lock(ctx).key(id)?))),
            "PATCH" => {
                let patch: KeyPatch = body(req)?;
                Ok(Response::ok(key_json(&lock(ctx).update_key(id, patch)?)))
            }
            "DELETE" => {
                lock(ctx).delete_key(id)?;
                Ok(Response::no_content())
            }
            _ => Err(not_allowed()),
        },
        ["accesskeys"] => match m {
            "GET" => {
                let reg = lock(ctx);
                let items: Vec<Value> =
                    reg.access_keys().into_iter().map(access_key_json).collect();
                Ok(Response::ok(json!({ "items": items })))
            }
            "POST" => {
                let new: crate::control::registry::access_keys::NewAccessKey = body(req)?;
                let key = lock(ctx).create_access_key(new)?;
                let mut v = access_key_json(&key);
                // The secret is shown once, as IAM does.
                v["secret"] = Value::String(key.secret);
                Ok(Response::created(v))
            }
            _ => Err(not_allowed()),
        },
        ["accesskeys", id] => match m {
            "GET" => {
                let reg = lock(ctx);
                let keys = reg.access_keys();
                let k = keys
                    .iter()
                    .find(|k| k.id == *id)
                    .ok_or_else(|| ApiError::new(404, format!("no access key {id:?}")))?;
                Ok(Response::ok(access_key_json(k)))
            }
            "DELETE" => {
                lock(ctx).delete_access_key(id)?;
                Ok(Response::no_content())
            }
            _ => Err(not_allowed()),
        },
        ["usageplans"] => match m {
            "GET" => {
                let reg = lock(ctx);
                let items: Vec<Value> = reg.plans().into_iter().map(plan_json).collect();
                Ok(Response::ok(json!({ "items": items })))
            }
            "POST" => {
                let def: UsagePlanFile = body(req)?;
                Ok(Response::created(plan_json(&lock(ctx).create_plan(def)?)))
            }
            _ => Err(not_allowed()),
        },
        ["usageplans", id] => match m {
            "GET" => Ok(Response::ok(plan_json(lock(ctx).plan(id)?))),
            "PUT" => {
                let def: UsagePlanFile = body(req)?;
                Ok(Response::ok(plan_json(&lock(ctx).update_plan(id, def)?)))
            }
            "DELETE" => {
                lock(ctx).delete_plan(id)?;
                Ok(Response::no_content())
            }
            _ => Err(not_allowed()),
        },
        ["usageplans", id, "keys"] => match m {
            "GET" => {
                let reg = lock(ctx);
                let items: Vec<Value> = reg.plan_keys(id)?.into_iter().map(plan_key_json).collect();
                Ok(Response::ok(json!({ "items": items })))
            }
            "POST" => {
                #[derive(Deserialize)]
                struct Attach {
                    #[serde(alias = "keyId")]
                    key_id: String,
                    #[serde(default, alias = "keyType")]
                    key_type: Option<String>,
                }
                let a: Attach = body(req)?;
                if a.key_type.as_deref().is_some_and(|t| t != "API_KEY") {
                    return Err(ApiError::new(400, "key_type must be API_KEY"));
                }
                let k = lock(ctx).attach(id, &a.key_id)?;
                Ok(Response::created(plan_key_json(&k)))
            }
            _ => Err(not_allowed()),
        },
        ["usageplans", id, "keys", key] => match m {
            "GET" => {
                let reg = lock(ctx);
                let k = reg
                    .plan_keys(id)?
                    .into_iter()
                    .find(|k| k.id == *key)
                    .ok_or_else(|| {
                        ApiError::new(404, format!("no key {key:?} in usage plan {id:?}"))
                    })?;
                Ok(Response::ok(plan_key_json(k)))
            }
            "DELETE" => {
                lock(ctx).detach(id, key)?;
                Ok(Response::no_content())
            }
            _ => Err(not_allowed()),
        },
        ["usageplans", id, "usage"] if m == "GET" => usage(ctx, req, id),
        ["cluster"] if m == "GET" => {
            let shared = lock(ctx).store().mirror().cloned();
            match shared {
                Some(s) => crate::control::cluster::nodes_json(&s)
                    .map(Response::ok)
                    .map_err(|e| ApiError::new(503, format!("redis: {e:#}"))),
                None => Err(ApiError::new(
                    404,
                    "not in cluster mode (no store.redis in the config)",
                )),
            }
        }
        ["upstreams"] if m == "GET" => Ok(Response::ok(views::upstreams_json(
            &ctx.control.plan().upstreams,
            crate::clock::unix_ms(),
        ))),
        ["cache"] if m == "GET" => Ok(Response::ok(cache_stats(&ctx.control.plan()))),
        ["cache", api, stage] if m == "DELETE" => {
            let plan = ctx.control.plan();
            let sid = cached_stage(&plan, api, stage)?;
            for s in plan.with_canary(sid) {
                plan.cache.flush_stage(s);
            }
            cache::announce_flush(ctx, api, stage, None);
            Ok(Response::no_content())
        }
        ["cache", api, stage, "flush"] if m == "POST" => flush_entry(ctx, req, api, stage),
        ["usageplans", id, "keys", key, "usage"] if m == "PATCH" => update_usage(ctx, req, id, key),
        ["apis", api, "deployments"] => match m {
            "GET" => list_deployments(ctx, api),
            "POST" => create_deployment(ctx, req, api),
            _ => Err(not_allowed()),
        },
        ["apis", api, "deployments", id] if m == "GET" => {
            let d = lock(ctx).store().deployment(api, id)?.ok_or_else(|| {
                ApiError::new(404, format!("no deployment {id:?} of API {api:?}"))
            })?;
            let mut v = deployment_json(&d);
            v["snapshot"] = d.snapshot;
            Ok(Response::ok(v))
        }
        ["apis"] if m == "GET" => {
            let plan = ctx.control.plan();
            let reg = lock(ctx);
            let set = reg.store().stages()?;
            Ok(Response::ok(views::apis_json(
                &plan,
                &set,
                |api, id| match id {
                    Some(id) => reg
                        .store()
                        .deployment(api, id)
                        .ok()
                        .flatten()
                        .map(|d| d.snapshot),
                    None => plan.api_sources.get(api).cloned(),
                },
            )))
        }
        ["apis", api, "stages"] if m == "GET" => {
            let plan = ctx.control.plan();
            let set = lock(ctx).store().stages()?;
            let items: Vec<Value> = plan
                .stages
                .iter()
                .filter(|s| s.api == *api && s.canary_of.is_none())
                .map(|s| stage_json(&plan, &s.api, &s.stage, &set))
                .collect();
            if items.is_empty() {
                return Err(ApiError::new(404, format!("no API {api:?}")));
            }
            Ok(Response::ok(json!({ "items": items })))
        }
        ["apis", api, "stages", stage] => match m {
            "GET" => {
                known_stage(ctx, api, stage)?;
                let set = lock(ctx).store().stages()?;
                Ok(Response::ok(stage_json(
                    &ctx.control.plan(),
                    api,
                    stage,
                    &set,
                )))
            }
            "PUT" | "PATCH" => update_stage(ctx, req, api, stage),
            _ => Err(not_allowed()),
        },
        ["apis", api, "stages", stage, "canary"] if m == "DELETE" => remove_canary(ctx, api, stage),
        ["apis", api, "stages", stage, "canary", "promote"] if m == "POST" => {
            promote_canary(ctx, api, stage)
        }
        ["reload"] if m == "POST" => match ctx.control.reload("admin API") {
            Ok(done) => Ok(Response::ok(json!(done))),
            Err(errors) => Ok(Response::with(
                400,
                json!({ "message": "config not reloaded: the running config stays", "errors": errors }),
            )),
        },
        ["tls"] if m == "GET" => Ok(Response::ok(json!({
            "listeners": crate::http::tls::describe_listeners(https(&ctx.control.plan()))
        }))),
        ["tls", "reload"] if m == "POST" => {
            let (loaded, errs) = crate::http::tls::reload_listeners(https(&ctx.control.plan()));
            if errs.is_empty() {
                Ok(Response::ok(json!({ "listeners": loaded })))
            } else {
                Err(ApiError::new(
                    400,
                    format!("certificates not reloaded: {}", errs.join("; ")),
                ))
            }
        }
        ["test", "clock"] if m == "POST" && ctx.test_clock => {
            #[derive(Deserialize)]
            struct Advance {
                advance_s: u64,
            }
            let a: Advance = body(req)?;
            crate::clock::advance(Duration::from_secs(a.advance_s));
            Ok(Response::ok(json!({ "unix_s": crate::clock::unix_s() })))
        }
        _ => Err(ApiError::new(404, "Not Found")),
    }
}
