//! The admin listener (`admin.bind`, loopback by default): health, and the
//! management API for API keys and usage plans, behind a bearer token.
//!
//! A plain blocking server on its own threads (one per connection, each request
//! answered with `Connection: close`): management calls are rare, and none of this
//! touches the workers except through the keyring the registry publishes.
//!
//! ```text
//! GET    /health
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
//! GET    /cache                              (sizes, hits and misses per route)
//! DELETE /cache/{api}/{stage}                (flush the stage's cache)
//! POST   /cache/{api}/{stage}/flush          (flush one entry)
//! POST   /test/clock      (only with SHARDGATE_TEST_CLOCK=1)
//! ```

// The control plane: its threads share state under mutexes, off the request path.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::UsagePlanFile;
use crate::control::registry::api_keys::{KeyPatch, NewKey};
use crate::control::registry::{ApiError, Registry};
use crate::encode::ct_eq;
use crate::http::parse::{self, Framing, HeadError};
use crate::http::respond;
use crate::plan::{AdminPlan, Plan};
use crate::policy::usage::KeyDef;

const MAX_HEAD: usize = 16 * 1024;
/// Large enough for a CSV of 100,000 keys.
const MAX_BODY: usize = 32 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (a thread each); more are closed at once.
const MAX_CONNS: usize = 64;
/// Longest usage report, in days.
const MAX_REPORT_DAYS: u64 = 366;
/// How long a usage report waits so that every request answered before it was
/// asked has been counted (workers add their counts each 100 ms tick).
const TICK_WAIT: Duration = Duration::from_millis(120);

struct Ctx {
    token: Option<String>,
    registry: Arc<Mutex<Registry>>,
    /// The running plan (replaced by reloads) and the reload itself.
    control: Arc<crate::control::reload::Control>,
    test_clock: bool,
}

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

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<Vec<u8>>,
    body: Vec<u8>,
}

struct Response {
    status: u16,
    body: Value,
    /// A body that is not JSON: (content type, text).
    text: Option<(&'static str, String)>,
}

impl Response {
    fn ok(body: Value) -> Self {
        Self::with(200, body)
    }
    fn created(body: Value) -> Self {
        Self::with(201, body)
    }
    fn no_content() -> Self {
        Self::with(204, Value::Null)
    }
    fn with(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            text: None,
        }
    }
    fn text(content_type: &'static str, text: String) -> Self {
        Self {
            status: 200,
            body: Value::Null,
            text: Some((content_type, text)),
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        Self::with(e.status, json!({ "message": e.message }))
    }
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
    head.extend_from_slice(b"content-length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    if let Some((ctype, _)) = &resp.text {
        head.extend_from_slice(b"content-type: ");
        head.extend_from_slice(ctype.as_bytes());
        head.extend_from_slice(b"\r\n");
    } else if !body.is_empty() {
        head.extend_from_slice(b"content-type: application/json\r\n");
    }
    if resp.status == 401 {
        head.extend_from_slice(b"www-authenticate: Bearer realm=\"shardgate\"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let _ = stream.write_all(&head);
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// Reads one request with the gateway's own codec (`http::parse`: strict framing,
/// the normalised path); `None` when the client closed without sending one.
fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, ApiError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Management paths are ids and names: nothing to refuse in them.
    let paths = crate::http::path::Rules {
        keep_escaped_slashes: true,
        keep_semicolons: true,
    };
    loop {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| ApiError::new(400, format!("reading the request: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ApiError::new(400, "the request ended inside its head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; parse::MAX_HEADERS];
        let (head, headers) = match parse::parse_request(&buf, &mut headers, MAX_HEAD, paths) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => return Err(ApiError::new(head_status(e), e.to_string())),
        };
        let length = match head.framing {
            Framing::None => 0,
            Framing::Length(n) if n <= MAX_BODY as u64 => n as usize,
            Framing::Length(_) => return Err(ApiError::new(413, "body too large")),
            Framing::Chunked | Framing::UntilClose => {
                return Err(ApiError::new(411, "send the body with a content-length"));
            }
        };
        let request = Request {
            method: head.method.to_owned(),
            path: head.path.into_owned(),
            query: form_urlencoded::parse(head.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            authorization: parse::header(headers, "authorization").map(<[u8]>::to_vec),
            body: Vec::new(),
        };
        if head.expect_continue && length > buf.len() - head.head_len {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let head_len = head.head_len;
        let mut body = buf.split_off(head_len);
        if body.len() < length {
            let have = body.len();
            body.resize(length, 0);
            stream
                .read_exact(&mut body[have..])
                .map_err(|e| ApiError::new(400, format!("reading the body: {e}")))?;
        }
        body.truncate(length);
        return Ok(Some(Request { body, ..request }));
    }
}

/// The status of a refused request head (as the gateway answers it).
fn head_status(e: HeadError) -> u16 {
    match e {
        HeadError::Malformed(_) => 400,
        HeadError::TooLarge => 431,
        HeadError::Version => 505,
        HeadError::UnsupportedCoding => 501,
        HeadError::Expectation => 417,
    }
}

fn authorized(ctx: &Ctx, req: &Request) -> bool {
    let Some(token) = &ctx.token else {
        return false;
    };
    let Some(given) = req.authorization.as_deref() else {
        return false;
    };
    let Some(given) = given
        .strip_prefix(b"Bearer ")
        .or_else(|| given.strip_prefix(b"bearer "))
    else {
        return false;
    };
    ct_eq(given.trim_ascii(), token.as_bytes())
}

fn lock(ctx: &Ctx) -> MutexGuard<'_, Registry> {
    crate::lock(&ctx.registry)
}

/// A key as a usage plan lists it (AWS's UsagePlanKey).
fn plan_key_json(k: &KeyDef) -> Value {
    json!({ "id": k.id, "name": k.name, "type": "API_KEY" })
}

fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ApiError> {
    let text: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(text).map_err(|e| ApiError::new(400, format!("body: {e}")))
}

fn query<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn key_json(k: &KeyDef) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "description": k.description,
        "enabled": k.enabled,
        "plans": k.plans,
        "created_s": k.created_s,
    })
}

fn access_key_json(k: &crate::policy::sigv4::AccessKey) -> Value {
    json!({
        "id": k.id,
        "allow": k.allow,
        "source": k.source,
        "created_s": k.created_s,
    })
}

fn plan_json(p: &UsagePlanFile) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("id".into(), Value::String(p.name.clone()));
    }
    v
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
            return Response::text(
                "text/plain; version=0.0.4; charset=utf-8",
                ctx.control.plan().metrics.render(),
            )
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

fn not_allowed() -> ApiError {
    ApiError::new(405, "method not allowed")
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
        ["cache"] if m == "GET" => Ok(Response::ok(cache_stats(&ctx.control.plan()))),
        ["cache", api, stage] if m == "DELETE" => {
            let sid = cached_stage(&ctx.control.plan(), api, stage)?;
            ctx.control.plan().cache.flush_stage(sid);
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
        ["apis", api, "stages"] if m == "GET" => {
            let plan = ctx.control.plan();
            let set = lock(ctx).store().stages()?;
            let items: Vec<Value> = plan
                .stages
                .iter()
                .filter(|s| s.api == *api)
                .map(|s| stage_json(&s.api, &s.stage, &set))
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
                Ok(Response::ok(stage_json(api, stage, &set)))
            }
            "PUT" | "PATCH" => update_stage(ctx, req, api, stage),
            _ => Err(not_allowed()),
        },
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

/// A stage with a cache, by API and stage name.
fn cached_stage(plan: &Plan, api: &str, stage: &str) -> Result<usize, ApiError> {
    plan.stages
        .iter()
        .position(|s| s.api == api && s.stage == stage && s.cache_bytes > 0)
        .ok_or_else(|| ApiError::new(404, format!("no cache for stage {api}/{stage}")))
}

/// Every stage cache: size, capacity, and hits and misses per route.
fn cache_stats(plan: &Plan) -> Value {
    let items: Vec<Value> = plan
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| s.cache_bytes > 0)
        .map(|(i, s)| {
            let (entries, bytes) = plan.cache.stage_size(i);
            let routes: Vec<Value> = s
                .routes
                .iter()
                .enumerate()
                .filter(|(_, r)| r.cache.is_some())
                .map(|(ri, r)| {
                    let (hits, misses) = plan.cache.route_counts(i, ri);
                    json!({ "route": r.key, "hits": hits, "misses": misses })
                })
                .collect();
            json!({
                "api": s.api,
                "stage": s.stage,
                "capacity_bytes": s.cache_bytes,
                "entries": entries,
                "bytes": bytes,
                "routes": routes,
            })
        })
        .collect();
    json!({ "items": items })
}

/// Flushes one entry: `{"method":"GET","path":"/pets?type=a","headers":{...}}`,
/// the request whose entry to drop (stage-relative path).
fn flush_entry(ctx: &Ctx, req: &Request, api: &str, stage: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Which {
        #[serde(default = "get")]
        method: String,
        path: String,
        #[serde(default)]
        headers: std::collections::BTreeMap<String, String>,
    }
    fn get() -> String {
        "GET".into()
    }
    let w: Which = body(req)?;
    let plan = ctx.control.plan();
    let sid = cached_stage(&plan, api, stage)?;
    let sp = &plan.stages[sid];
    let (path, query) = match w.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (w.path.as_str(), None),
    };
    let lookup = if w.method == "HEAD" {
        "GET"
    } else {
        w.method.as_str()
    };
    let m = sp
        .router
        .find(lookup, path)
        .ok_or_else(|| ApiError::new(404, format!("no route for {} {path}", w.method)))?;
    let rc = sp.routes[m.route].cache.as_ref().ok_or_else(|| {
        ApiError::new(
            404,
            format!("route {:?} does not cache", sp.routes[m.route].key),
        )
    })?;
    let headers: Vec<httparse::Header<'_>> = w
        .headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let mut key = Vec::new();
    let sig = sp.routes[m.route].sig;
    crate::policy::cache::build_key(&mut key, sig, &w.method, path, query, &headers, &m, &rc.key);
    plan.cache.flush_key(sid, key);
    Ok(Response::no_content())
}

fn deployment_json(d: &crate::control::store::Deployment) -> Value {
    json!({
        "id": d.id,
        "apiId": d.api,
        "description": d.description,
        "createdDate": d.created_ms / 1000,
    })
}

/// A stage as AWS shows it: `deploymentId` null while it follows the config file.
fn stage_json(
    api: &str,
    stage: &str,
    set: &[(String, String, crate::control::store::StagePointer)],
) -> Value {
    let p = set
        .iter()
        .find(|(a, s, _)| a == api && s == stage)
        .map(|x| x.2.clone())
        .unwrap_or_default();
    json!({
        "apiId": api,
        "stageName": stage,
        "deploymentId": p.deployment_id,
        "variables": p.variables,
    })
}

fn known_stage(ctx: &Ctx, api: &str, stage: &str) -> Result<(), ApiError> {
    let plan = ctx.control.plan();
    if plan.stages.iter().any(|s| s.api == api && s.stage == stage) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            format!("no stage {stage:?} of API {api:?} in the config"),
        ))
    }
}

fn list_deployments(ctx: &Ctx, api: &str) -> Result<Response, ApiError> {
    let mut all = lock(ctx).store().deployments(api)?;
    if all.is_empty() && !ctx.control.plan().api_sources.contains_key(api) {
        return Err(ApiError::new(404, format!("no API {api:?}")));
    }
    // Newest first, as AWS's GetDeployments.
    all.reverse();
    let items: Vec<Value> = all.iter().map(deployment_json).collect();
    Ok(Response::ok(json!({ "items": items })))
}

/// AWS's CreateDeployment: snapshots the API as the running config has it;
/// with `stageName`, points that stage at it.
fn create_deployment(ctx: &Ctx, req: &Request, api: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        #[serde(default)]
        description: String,
        #[serde(default, alias = "stage_name")]
        #[serde(rename = "stageName")]
        stage_name: Option<String>,
    }
    let new: New = body(req)?;
    let snapshot = ctx
        .control
        .plan()
        .api_sources
        .get(api)
        .cloned()
        .ok_or_else(|| ApiError::new(404, format!("no API {api:?}")))?;
    if let Some(stage) = &new.stage_name {
        known_stage(ctx, api, stage)?;
    }
    let d = crate::control::store::Deployment {
        id: crate::control::deploy::new_id(),
        api: api.to_owned(),
        description: new.description,
        created_ms: crate::clock::unix_ms(),
        snapshot,
    };
    lock(ctx).store().put_deployment(&d)?;
    if let Some(stage) = &new.stage_name {
        point_stage(ctx, api, stage, |p| p.deployment_id = Some(d.id.clone()))?;
    }
    Ok(Response::created(deployment_json(&d)))
}

/// AWS's UpdateStage: `{"deploymentId": ID | null, "variables": {...} | null}`;
/// a field left out stays as it is. Answers once every worker serves it.
fn update_stage(ctx: &Ctx, req: &Request, api: &str, stage: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        #[serde(
            default,
            rename = "deploymentId",
            alias = "deployment_id",
            deserialize_with = "present"
        )]
        deployment_id: Option<Option<String>>,
        #[serde(default, deserialize_with = "present")]
        variables: Option<Option<std::collections::BTreeMap<String, String>>>,
    }
    /// A field given as `null` is `Some(None)` (cleared); one left out is `None`.
    fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
    let patch: Patch = body(req)?;
    known_stage(ctx, api, stage)?;
    if let Some(Some(id)) = &patch.deployment_id {
        if lock(ctx).store().deployment(api, id)?.is_none() {
            return Err(ApiError::new(
                404,
                format!("no deployment {id:?} of API {api:?}"),
            ));
        }
    }
    point_stage(ctx, api, stage, |p| {
        if let Some(d) = patch.deployment_id {
            p.deployment_id = d;
        }
        if let Some(v) = patch.variables {
            p.variables = v;
        }
    })?;
    let set = lock(ctx).store().stages()?;
    Ok(Response::ok(stage_json(api, stage, &set)))
}

/// Changes a stage's setting and reloads; when the reload refuses it (the
/// deployment no longer compiles with this config, say), the setting goes back
/// and the errors are the answer.
fn point_stage(
    ctx: &Ctx,
    api: &str,
    stage: &str,
    change: impl FnOnce(&mut crate::control::store::StagePointer),
) -> Result<(), ApiError> {
    let before = {
        let reg = lock(ctx);
        let before = reg
            .store()
            .stages()?
            .into_iter()
            .find(|(a, s, _)| a == api && s == stage)
            .map(|x| x.2);
        let mut p = before.clone().unwrap_or_default();
        change(&mut p);
        reg.store()
            .put_stage(api, stage, (!p.is_empty()).then_some(&p))?;
        before
    };
    match ctx.control.reload("stage update") {
        Ok(_) => Ok(()),
        Err(errors) => {
            lock(ctx).store().put_stage(api, stage, before.as_ref())?;
            Err(ApiError::new(
                400,
                format!("stage not changed: {}", errors.join("; ")),
            ))
        }
    }
}

fn import(ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
    let text =
        std::str::from_utf8(&req.body).map_err(|_| ApiError::new(400, "the CSV must be UTF-8"))?;
    let fail = query(req, "failonwarnings").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let out = lock(ctx).import_csv(text, fail)?;
    Ok(Response::created(
        json!({ "ids": out.ids, "warnings": out.warnings }),
    ))
}

/// AWS's GetUsage: `{usagePlanId, startDate, endDate, position, values: {keyId:
/// [[used, remaining], ...]}}`, one pair per day.
fn usage(ctx: &Ctx, req: &Request, plan: &str) -> Result<Response, ApiError> {
    let date = |name: &str| {
        let v = query(req, name)
            .ok_or_else(|| ApiError::new(400, format!("{name} is required (YYYY-MM-DD)")))?;
        crate::clock::parse_date(v)
            .ok_or_else(|| ApiError::new(400, format!("{name} must be a date as YYYY-MM-DD")))
    };
    let (start, end) = (date("startDate")?, date("endDate")?);
    if end < start {
        return Err(ApiError::new(400, "endDate is before startDate"));
    }
    if end - start >= MAX_REPORT_DAYS {
        return Err(ApiError::new(
            400,
            format!("at most {MAX_REPORT_DAYS} days at once"),
        ));
    }
    let limit: usize = match query(req, "limit") {
        None => 25,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::new(400, "limit must be 1 to 500"))?,
    };
    let position: usize = match query(req, "position") {
        None | Some("") => 0,
        Some(v) => v.parse().map_err(|_| ApiError::new(400, "bad position"))?,
    };
    // Counts reach the shared quotas on the workers' tick: wait one, so that every
    // request answered before this call is in the report.
    std::thread::sleep(TICK_WAIT);
    let report = lock(ctx).usage(plan, query(req, "keyId"), start, end)?;
    let total = report.len();
    let values = values_json(report.into_iter().skip(position).take(limit));
    let mut out = json!({
        "usagePlanId": plan,
        "startDate": crate::clock::format_date(start),
        "endDate": crate::clock::format_date(end),
        "values": values,
    });
    if position + limit < total {
        out["position"] = Value::String((position + limit).to_string());
    }
    Ok(Response::ok(out))
}

/// The `values` of AWS's usage report: key id → `[[used, remaining], ...]`.
fn values_json(
    report: impl IntoIterator<Item = (String, Vec<(u64, Option<u64>)>)>,
) -> serde_json::Map<String, Value> {
    report
        .into_iter()
        .map(|(id, days)| {
            let days = days.into_iter().map(|(u, r)| json!([u, r])).collect();
            (id, Value::Array(days))
        })
        .collect()
}

/// AWS's UpdateUsage: `{"patchOperations":[{"op":"replace","path":"/remaining",
/// "value":"N"}]}`, or simply `{"remaining": N}`.
fn update_usage(ctx: &Ctx, req: &Request, plan: &str, key: &str) -> Result<Response, ApiError> {
    let v: Value = body(req)?;
    let remaining = v
        .get("remaining")
        .and_then(Value::as_u64)
        .or_else(|| {
            v.get("patchOperations")?
                .as_array()?
                .iter()
                .find(|op| op.get("path").and_then(Value::as_str) == Some("/remaining"))
                .and_then(|op| {
                    let value = op.get("value")?;
                    value
                        .as_u64()
                        .or_else(|| value.as_str()?.trim().parse().ok())
                })
        })
        .ok_or_else(|| {
            ApiError::new(
                400,
                "expected {\"remaining\": N} or a patchOperations replace of /remaining",
            )
        })?;
    std::thread::sleep(TICK_WAIT);
    let today = crate::clock::unix_s() / 86_400;
    let mut reg = lock(ctx);
    reg.set_remaining(plan, key, remaining)?;
    let values = values_json(reg.usage(plan, Some(key), today, today)?);
    Ok(Response::ok(json!({
        "usagePlanId": plan,
        "startDate": crate::clock::format_date(today),
        "endDate": crate::clock::format_date(today),
        "values": values,
    })))
}
/// Each HTTPS listener's name and TLS state.
fn https(plan: &Plan) -> impl Iterator<Item = (&str, &crate::http::tls::ListenerTls)> {
    plan.listeners
        .iter()
        .filter_map(|lp| Some((lp.name.as_str(), &**lp.tls.as_ref()?)))
}
