//! The request pipeline, in the order a request meets it: dispatch to a stage,
//! resource policy, CORS, route, authorizer, API key and usage plan, throttles and
//! quota, validation, response cache. Each stage either lets the request go on or
//! settles it (`Action`); the connection loop (`conn`) runs what it settles on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::UnauthorizedStrategy;
use crate::http::body::{self};
use crate::http::error::GatewayError;
use crate::http::parse::{self, Framing, MAX_HEADERS};
use crate::http::respond::{CacheStatus, Persist, Tag};
use crate::ids::{RouteId, StageId};
use crate::plan::{Integration, ListenerPlan, Plan, RoutePlan, StagePlan};
use crate::policy::access::{Authorizer, BodyRead, Grant, Pass, Work};
use crate::policy::cache::Lookup;
use crate::policy::keys::Binding;
use crate::proxy::client::{body_error, send_continue, Client, CONN_BUF};
use crate::proxy::forward;
use crate::proxy::shard::Shard;
use crate::route;

/// What a parsed head asks for, with everything borrowed from the buffer resolved.
pub struct Prepared {
    pub head_len: usize,
    /// The whole request (head and body) must have arrived by then
    /// (`request_timeout_ms` from its first byte).
    pub deadline: Instant,
    pub framing: Framing,
    pub persist: Persist,
    pub is_head: bool,
    pub expect_continue: bool,
    pub idempotent: bool,
    pub tag: Tag,
    pub action: Action,
    /// A cache miss to store once the upstream answers.
    pub fill: Option<crate::policy::cache::Fill>,
    pub coalesce: Coalesce,
    /// The stage and route it matched.
    pub route: Option<(StageId, RouteId)>,
    /// What its access log line needs (stages that log).
    pub log: Option<Box<crate::observe::accesslog::Facts>>,
    pub trace: Option<crate::observe::trace::Trace>,
    /// A sampled request's span, when spans are exported.
    pub span: Option<Box<crate::observe::telemetry::SpanFacts>>,
}

/// A cache miss's part in coalescing: fetching for others, or waiting for another.
#[derive(Clone, Copy)]
pub enum Coalesce {
    None,
    /// (stage, key hash)
    Lead(StageId, u64),
    Wait(StageId, u64),
}

/// Ends a leading fetch however it ends (stored, failed, cancelled): the requests
/// waiting for it go on.
pub struct Leading<'a>(pub &'a Shard, pub StageId, pub u64);

pub enum Action {
    Refuse(GatewayError),
    /// Something to do (read the body, ask an authorizer) before deciding.
    Work(Work),
    /// A CORS preflight, answered by the gateway (headers in the tag).
    Preflight,
    Mock(StageId, RouteId),
    /// Served from this worker's cache.
    CacheHit(std::rc::Rc<crate::policy::cache::Entry>),
    /// The upstream head is in `Client::up_head`.
    Proxy(StageId, RouteId),
}

/// Looks at a request again after work for it (its head is still at the front of
/// the buffer, and a body read for it right after); its deadline stays.
pub fn look_again(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    pass: &mut Pass,
    deadline: Instant,
) -> Prepared {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = parse::parse_request(
        &c.buf,
        &mut headers,
        lp.limits.max_header_bytes,
        lp.limits.paths,
    );
    let Ok(Some((head, hdrs))) = parsed else {
        // It parsed the first time; it cannot fail now.
        return Prepared {
            head_len: 0,
            deadline,
            framing: Framing::None,
            persist: Persist::Close,
            is_head: false,
            expect_continue: false,
            idempotent: false,
            tag: Tag::from(shard.next_request_id()),
            action: Action::Refuse(GatewayError::AuthorizerFailed("request lost")),
            fill: None,
            coalesce: Coalesce::None,
            route: None,
            log: None,
            trace: None,
            span: None,
        };
    };
    let origin = forward::Origin {
        peer: c.peer,
        local_port: lp.bind.port(),
        tls: c.tls.as_deref(),
    };
    let read = pass.body.take();
    let body = match &read {
        Some(BodyRead::InBuf(n)) => c.buf.get(head.head_len..head.head_len + n),
        Some(BodyRead::Decoded(v)) => Some(v.as_slice()),
        None => None,
    };
    let p = prepare(
        &head,
        hdrs,
        plan,
        lp,
        shard,
        &origin,
        &mut c.up_head,
        pass,
        body,
        deadline,
    );
    pass.body = read;
    p
}

/// Does the work a request needs; `Err(None)` when the connection is gone.
pub async fn do_work(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    p: &Prepared,
    work: Work,
    pass: &mut Pass,
) -> Result<(), Option<GatewayError>> {
    match work {
        Work::ReadBody => {
            if p.expect_continue && send_continue(c).await.is_err() {
                return Err(None);
            }
            pass.body = Some(read_whole_body(c, p, lp).await?);
            Ok(())
        }
        Work::Jwks { authorizer, seen } => {
            if let Some(Authorizer::Jwt(j)) = plan.authorizers.get(authorizer).map(|a| &**a) {
                let until = Instant::now() + crate::policy::jwt::FETCH_TIMEOUT * 2;
                while j.keys.attempts.load(std::sync::atomic::Ordering::Acquire) == seen
                    && Instant::now() < until
                {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            pass.refreshed = true;
            Ok(())
        }
        Work::Call(call) => {
            let Some(Authorizer::Request(r)) = plan.authorizers.get(call.authorizer).map(|a| &**a)
            else {
                return Err(Some(GatewayError::AuthorizerFailed("no such authorizer")));
            };
            match r.call(&shard.dial(), &call.payload).await {
                Ok(d) => {
                    let d = std::rc::Rc::new(d);
                    if let Some(key) = call.key {
                        let until = crate::clock::unix_ms() + r.ttl_s * 1000;
                        shard.access.borrow_mut().decisions.put(
                            plan.authorizer_uids[call.authorizer],
                            key,
                            until,
                            std::rc::Rc::clone(&d),
                        );
                    }
                    pass.decision = Some(d);
                    Ok(())
                }
                Err(why) => {
                    tracing::warn!(authorizer = %r.name, reason = why, "request authorizer failed");
                    Err(Some(GatewayError::AuthorizerFailed(why)))
                }
            }
        }
    }
}

/// Parse → route, synchronously while the head is borrowed from the buffer; for a
/// proxied route also writes the upstream request head.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    head: &parse::RequestHead<'_>,
    headers: &[httparse::Header<'_>],
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    origin: &forward::Origin<'_>,
    up_head: &mut Vec<u8>,
    pass: &mut Pass,
    body: Option<&[u8]>,
    deadline: Instant,
) -> Prepared {
    // A request served on a plan the worker left (its listener was removed by a
    // reload) is the connection's last.
    let persist = shard.persist(if !head.keep_alive || !shard.runs(plan) {
        Persist::Close
    } else if head.http10 {
        Persist::KeepAlive10
    } else {
        Persist::KeepAlive
    });
    let method = head.method;
    let mut p = Prepared {
        head_len: head.head_len,
        deadline,
        framing: head.framing,
        persist,
        is_head: method == "HEAD",
        // A body read whole already had its `100 Continue`.
        expect_continue: head.expect_continue && body.is_none(),
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        ),
        tag: Tag::from(pass.id.unwrap_or_else(|| shard.next_request_id())),
        action: Action::Refuse(GatewayError::RouteNotFound),
        fill: None,
        coalesce: Coalesce::None,
        route: None,
        log: None,
        trace: None,
        span: None,
    };
    if let Framing::Length(n) = head.framing {
        if n > lp.limits.max_body_bytes {
            p.action = Action::Refuse(GatewayError::BodyTooLarge);
            return p;
        }
    }
    let Some((stage_id, path)) = route::dispatch(&lp.stages, head.host, &head.path) else {
        return p;
    };
    let stage = &plan.stages[stage_id];
    let access = &stage.access;
    if plan.tracing.create || stage.access_log.is_some() || plan.telemetry.is_some() {
        let secs = match shard.date.borrow().secs() {
            0 => crate::clock::unix_s(),
            s => s,
        };
        p.trace =
            crate::observe::trace::of_request(headers, &plan.tracing, secs, || shard.random());
    }
    if plan.telemetry.is_some() && p.trace.is_some_and(|t| t.sampled) {
        p.span = Some(Box::new(crate::observe::telemetry::SpanFacts {
            method: head.method.into(),
            path: (*head.path).into(),
        }));
    }
    if let Some(spec) = &stage.access_log {
        p.log = Some(log_facts(
            head, headers, stage_id, stage, spec, origin, shard, &p,
        ));
    }
    if let Some(policy) = &access.policy {
        let ip = crate::policy::resource::client_ip(origin.peer.ip(), &access.trusted, headers);
        if !policy.allows(ip, head.host) {
            p.action = Action::Refuse(GatewayError::AccessDenied("resource policy"));
            return p;
        }
    }
    if let Some(cors) = &access.cors {
        p.tag.cors_api = true;
        if let Some(from) = parse::header(headers, "origin") {
            if method == "OPTIONS"
                && parse::header(headers, "access-control-request-method").is_some()
            {
                p.tag.cors = cors.preflight(
                    from,
                    parse::header(headers, "access-control-request-headers"),
                );
                p.action = Action::Preflight;
                return p;
            }
            p.tag.cors = cors.actual(from);
        }
    }
    let Some(m) = stage.router.find(method, path) else {
        return p;
    };
    let route = &stage.routes[m.route];
    p.route = Some((stage_id, m.route));
    // Routes that need the whole body read it first (bounded), before anything
    // that changes state.
    if body.is_none() && head.framing != Framing::None {
        let sigv4 = route.auth.as_ref().is_some_and(|a| {
            matches!(
                plan.authorizers.get(a.authorizer).map(|a| &**a),
                Some(Authorizer::Sigv4(_))
            )
        });
        let validates = route
            .validate
            .as_ref()
            .is_some_and(|v| v.wants_body(headers));
        if sigv4 || validates {
            p.action = match head.framing {
                Framing::Length(n) if n > lp.limits.max_buffered_body_bytes => {
                    Action::Refuse(GatewayError::BodyTooLarge)
                }
                _ => Action::Work(Work::ReadBody),
            };
            return p;
        }
    }
    let mut grant = Grant::default();
    if let Some(auth) = &route.auth {
        let facts = AuthFacts {
            head,
            headers,
            routed_path: path,
            stage,
            route,
            m: &m,
            origin,
            tag: &p.tag,
            body,
        };
        match authorize(plan, shard, auth, &facts, pass) {
            Ok(g) => {
                if let Some(log) = &mut p.log {
                    log.claims = g.claims.clone();
                    log.context = g.context.clone();
                }
                grant = g;
            }
            Err(action) => {
                p.action = action;
                return p;
            }
        }
    }
    // The key's usage plan for this stage, where the route takes a key. The keyring
    // is this shard's snapshot, swapped by the worker's tick between requests; a
    // request that began before a reload reads the keyring of its own plan.
    let current = shard.keyring.borrow();
    let previous = shard.previous_keyring.borrow();
    let ring: &crate::policy::keys::Keyring = match &*previous {
        Some(p) if current.1.generation != plan.generation && p.generation == plan.generation => p,
        _ => &current.1,
    };
    let mut binding: Option<&Binding> = None;
    if route.api_key_required {
        match ring.check(headers, stage_id) {
            Ok(b) => {
                if let Some(log) = &mut p.log {
                    log.api_key_id = Some(std::sync::Arc::clone(&b.key_id));
                }
                binding = Some(b);
            }
            Err(why) => {
                p.action = Action::Refuse(GatewayError::Forbidden(why));
                return p;
            }
        }
    }
    if let Some(v) = &route.validate {
        if let Some(err) = v.missing(headers, head.query, |n| m.param(n).map(str::to_owned)) {
            p.action = Action::Refuse(err);
            return p;
        }
        if v.wants_body(headers) {
            if let Err(err) = v.check_body(body.unwrap_or_default()) {
                tracing::debug!(%err, "request refused by validation");
                p.action = Action::Refuse(err);
                return p;
            }
        }
    }
    if !admit(plan, shard, binding, stage_id, m.route, route, stage) {
        p.action = Action::Refuse(GatewayError::Throttled);
        return p;
    }
    // Last, so that a request a throttle refused does not count against the quota.
    if let Some((slot, q)) = binding.and_then(|b| b.quota.as_ref()) {
        let admitted = shard
            .leases
            .borrow_mut()
            .admit(*slot, q, crate::clock::unix_s());
        match admitted {
            Ok(a) => {
                if q.limited {
                    p.tag.quota = Some(a.state);
                }
                if a.leased {
                    plan.live.lease_taken();
                }
            }
            Err(state) => {
                p.tag.quota = Some(state);
                p.action = Action::Refuse(GatewayError::QuotaExceeded);
                return p;
            }
        }
    }
    // A caller with a valid key may invalidate cache entries, on any route.
    let authorized = binding.is_some()
        || (route
            .cache
            .as_ref()
            .is_some_and(|c| c.require_authorization)
            && crate::policy::cache::wants_refresh(headers)
            && ring.check(headers, stage_id).is_ok());
    drop(current);
    drop(previous);
    if let (Some(rc), Integration::HttpProxy(_)) = (&route.cache, &route.integration) {
        if !(rc.any_method || method == "GET" || method == "HEAD")
            || !shard.caches.borrow().is_for(&plan.cache)
        {
            // (The second: a request that began before this worker switched plans,
            // looked at again after an authorizer's answer.)
            p.tag.cache = Some(CacheStatus::Bypass);
        } else {
            let mut refresh = crate::policy::cache::wants_refresh(headers);
            if refresh && rc.require_authorization && !authorized {
                // Only a caller with a valid key may invalidate (AWS:
                // requireAuthorizationForCacheControl).
                match rc.unauthorized {
                    UnauthorizedStrategy::FailWith403 => {
                        p.action = Action::Refuse(GatewayError::CacheControlForbidden);
                        return p;
                    }
                    UnauthorizedStrategy::SucceedWithHeader => p.tag.cache_warning = true,
                    UnauthorizedStrategy::SucceedWithoutHeader => {}
                }
                refresh = false;
            }
            let mut key = shard.cache_key.borrow_mut();
            crate::policy::cache::build_key(
                &mut key, route.sig, method, path, head.query, headers, &m, &rc.key,
            );
            let mut caches = shard.caches.borrow_mut();
            if !refresh {
                let found = match caches.get(stage_id, &key, crate::clock::unix_ms()) {
                    // Stored for other values of the headers its Vary names: a miss,
                    // whose response replaces it.
                    Lookup::Hit(e) if !crate::policy::cache::vary_matches(&e, headers) => {
                        Lookup::Miss
                    }
                    other => other,
                };
                if let Lookup::Hit(entry) = found {
                    caches.count(stage_id, m.route, true);
                    p.tag.cache = Some(CacheStatus::Hit);
                    p.action = Action::CacheHit(entry);
                    return p;
                }
                // Another request on this worker is fetching the same key: wait
                // for it (counted when served).
                let hash = crate::policy::cache::hash_key(&key);
                p.coalesce = if shard.fills.borrow_mut().lead(stage_id, hash) {
                    Coalesce::Lead(stage_id, hash)
                } else {
                    Coalesce::Wait(stage_id, hash)
                };
            }
            if !matches!(p.coalesce, Coalesce::Wait(..)) {
                caches.count(stage_id, m.route, false);
            }
            p.tag.cache = Some(CacheStatus::Miss);
            p.fill = Some(crate::policy::cache::Fill {
                owner: Arc::as_ptr(&plan.cache) as usize,
                stage: stage_id,
                route: m.route,
                key: key.clone(),
                ttl_ms: rc.ttl_ms,
            });
        }
    }
    p.action = match &route.integration {
        Integration::Mock(_) => Action::Mock(stage_id, m.route),
        Integration::HttpProxy(target) => {
            let extra = forward::Extra {
                strip: &access.strip,
                grant: &grant,
                trace: p.trace.as_ref(),
            };
            forward::write_request_head(up_head, target, head, headers, &m, path, origin, &extra);
            Action::Proxy(stage_id, m.route)
        }
    };
    p
}

/// What a logged request's line needs from its head.
#[allow(clippy::too_many_arguments)]
pub fn log_facts(
    head: &parse::RequestHead<'_>,
    headers: &[httparse::Header<'_>],
    stage_id: StageId,
    stage: &StagePlan,
    spec: &crate::observe::accesslog::LogSpec,
    origin: &forward::Origin<'_>,
    shard: &Shard,
    p: &Prepared,
) -> Box<crate::observe::accesslog::Facts> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned().into_boxed_str();
    let time_ms = crate::clock::unix_ms();
    let method: std::borrow::Cow<'static, str> = match head.method {
        "GET" => "GET".into(),
        "POST" => "POST".into(),
        "PUT" => "PUT".into(),
        "DELETE" => "DELETE".into(),
        "PATCH" => "PATCH".into(),
        "HEAD" => "HEAD".into(),
        "OPTIONS" => "OPTIONS".into(),
        other => other.to_owned().into(),
    };
    Box::new(crate::observe::accesslog::Facts {
        request_id: p.tag.id,
        stage: stage_id,
        time_ms,
        time_text: shard.log_time.borrow_mut().text(time_ms / 1000),
        method,
        path: (*head.path).into(),
        http10: head.http10,
        host: if spec.format.needs_host() {
            text(head.host)
        } else {
            Box::default()
        },
        source_ip: crate::policy::resource::client_ip(
            origin.peer.ip(),
            &stage.access.trusted,
            headers,
        ),
        user_agent: if spec.format.needs_user_agent() {
            text(parse::header(headers, "user-agent").unwrap_or_default())
        } else {
            Box::default()
        },
        trace_id: p.trace.as_ref().map(|t| t.id),
        api_key_id: None,
        claims: None,
        context: None,
    })
}

/// What an authorizer may look at.
pub struct AuthFacts<'a, 'h> {
    pub head: &'a parse::RequestHead<'h>,
    pub headers: &'a [httparse::Header<'h>],
    pub routed_path: &'a str,
    pub stage: &'a StagePlan,
    pub route: &'a RoutePlan,
    pub m: &'a route::RouteMatch<'a, 'a>,
    pub origin: &'a forward::Origin<'a>,
    pub tag: &'a Tag,
    pub body: Option<&'a [u8]>,
}

/// Runs the route's authorizer: what it granted, or what to do instead (refuse,
/// or work first: a JWKS refetch, a call to a request authorizer).
pub fn authorize(
    plan: &Plan,
    shard: &Shard,
    auth: &crate::policy::access::RouteAuth,
    f: &AuthFacts<'_, '_>,
    pass: &mut Pass,
) -> Result<Grant, Action> {
    use crate::policy::jwt::Check;
    let refuse = |e: GatewayError| Action::Refuse(e);
    match &*plan.authorizers[auth.authorizer] {
        Authorizer::Jwt(j) => {
            let now = crate::clock::unix_s();
            let checked = j.check(
                plan.authorizer_uids[auth.authorizer],
                f.headers,
                f.head.query,
                &auth.scopes,
                &mut shard.access.borrow_mut().tokens,
                now,
                pass.refreshed,
            );
            match checked {
                Check::Granted(v) => Ok(Grant {
                    lines: (!v.lines.is_empty()).then(|| std::rc::Rc::from(&*v.lines)),
                    drop_authorization: false,
                    claims: Some(v),
                    context: None,
                }),
                Check::Refused(e) => Err(refuse(e)),
                Check::UnknownKey => match j.ask_refresh(now) {
                    Some(seen) => Err(Action::Work(Work::Jwks {
                        authorizer: auth.authorizer,
                        seen,
                    })),
                    None => Err(refuse(GatewayError::Unauthorized(
                        crate::http::error::Challenge::Bearer(crate::policy::jwt::UNKNOWN_KEY),
                    ))),
                },
            }
        }
        Authorizer::Request(r) => {
            let decision = match pass.decision.take() {
                Some(d) => d,
                None => {
                    let source_ip = crate::policy::resource::client_ip(
                        f.origin.peer.ip(),
                        &f.stage.access.trusted,
                        f.headers,
                    );
                    let host = std::str::from_utf8(f.head.host).unwrap_or("");
                    let id = String::from_utf8_lossy(&f.tag.id).into_owned();
                    let mut params = serde_json::Map::new();
                    if let Some(ps) = &f.m.params {
                        for (k, v) in ps.iter() {
                            // Decoded, as AWS hands path parameters to functions.
                            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                            params.insert(k.to_owned(), serde_json::Value::String(v.into()));
                        }
                    }
                    let facts = crate::policy::request::RequestFacts {
                        api: &f.stage.api,
                        stage: &f.stage.stage,
                        route_key: &f.route.key,
                        method: f.head.method,
                        raw_path: &f.head.path,
                        query: f.head.query,
                        source_ip,
                        host,
                        request_id: &id,
                        path_params: params,
                        headers: f.headers,
                    };
                    let Some(identity) = r.identity(&facts) else {
                        return Err(refuse(GatewayError::Unauthorized(
                            crate::http::error::Challenge::Plain("identity source missing"),
                        )));
                    };
                    let key = (r.ttl_s > 0 && !r.sources.is_empty())
                        .then(|| identity.join("\u{0}").into_boxed_str());
                    if let Some(k) = &key {
                        let hit = shard.access.borrow().decisions.get(
                            plan.authorizer_uids[auth.authorizer],
                            k,
                            crate::clock::unix_ms(),
                        );
                        if let Some(d) = hit {
                            return decided(d);
                        }
                    }
                    return Err(Action::Work(Work::Call(Box::new(
                        crate::policy::request::Call {
                            authorizer: auth.authorizer,
                            key,
                            payload: r.payload(&facts, &identity),
                        },
                    ))));
                }
            };
            decided(decision)
        }
        Authorizer::Sigv4(s) => {
            let hash = crate::policy::sigv4::sha256_hex(f.body.unwrap_or_default());
            let resource = format!(
                "{}/{}/{}{}",
                f.stage.api, f.stage.stage, f.head.method, f.routed_path
            );
            let signed = crate::policy::sigv4::Signed {
                method: f.head.method,
                raw_path: &f.head.path,
                query: f.head.query,
                headers: f.headers,
                body_hash: &hash,
                resource: &resource,
            };
            match s.verify(&signed, crate::clock::unix_s()) {
                Ok(_) => Ok(Grant {
                    drop_authorization: true,
                    ..Grant::default()
                }),
                Err(e) => Err(refuse(e)),
            }
        }
    }
}

/// A request authorizer's decision as a grant or a refusal.
pub fn decided(d: std::rc::Rc<crate::policy::request::Decision>) -> Result<Grant, Action> {
    if !d.authorized {
        return Err(Action::Refuse(GatewayError::AccessDenied(
            "the authorizer said isAuthorized: false",
        )));
    }
    Ok(Grant {
        lines: (!d.lines.is_empty()).then(|| std::rc::Rc::from(&*d.lines)),
        drop_authorization: false,
        claims: None,
        context: Some(d),
    })
}

/// Checks the throttles that apply, most specific first (the key's plan for this
/// route, the key's plan, the stage's route, the stage, the gateway); each one passed
/// spends a token.
pub fn admit(
    plan: &Plan,
    shard: &Shard,
    binding: Option<&Binding>,
    stage_id: StageId,
    route_id: RouteId,
    route: &RoutePlan,
    stage: &StagePlan,
) -> bool {
    let keyed = binding.is_some_and(|b| b.throttle.is_some() || !b.routes.is_empty());
    let levels = [route.throttle, stage.throttle, plan.throttle];
    if !keyed && levels.iter().all(Option::is_none) {
        return true;
    }
    let mut tokens = shard.tokens.borrow_mut();
    let now = tokens.now_ns();
    if let Some(b) = binding {
        let buckets = [b.route_throttle(stage_id, route_id), b.throttle.as_ref()];
        for bucket in buckets.into_iter().flatten() {
            if !tokens.admit_slot(bucket.slot, &bucket.shared, now) {
                return false;
            }
        }
    }
    levels
        .into_iter()
        .flatten()
        .all(|id| tokens.admit(&plan.throttles[id], now))
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.fills.borrow_mut().done(self.1, self.2);
    }
}

/// Reads a request's whole body into the connection's buffer (after its head),
/// within `max_buffered_body_bytes`; a chunked body is also decoded.
pub async fn read_whole_body(
    c: &mut Client,
    p: &Prepared,
    lp: &ListenerPlan,
) -> Result<BodyRead, Option<GatewayError>> {
    let limit = lp.limits.max_buffered_body_bytes;
    let wait = lp.limits.idle_timeout;
    match p.framing {
        Framing::Length(n) => {
            if n > limit {
                return Err(Some(GatewayError::BodyTooLarge));
            }
            let want = p.head_len + n as usize;
            body::read_to(&mut c.stream, &mut c.buf, want, wait, Some(p.deadline))
                .await
                .map_err(body_error)?;
            Ok(BodyRead::InBuf(n as usize))
        }
        Framing::Chunked => {
            let mut decoder = parse::ChunkedDecoder::default();
            let mut at = p.head_len;
            let mut out = Vec::new();
            loop {
                if at == c.buf.len() {
                    let wait = body::within(wait, Some(p.deadline)).map_err(body_error)?;
                    match monoio::time::timeout(
                        wait,
                        body::read_more(&mut c.stream, &mut c.buf, CONN_BUF),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return Err(None),
                        Err(_) => return Err(Some(GatewayError::RequestTimeout)),
                    }
                }
                match decoder.decode(&c.buf[at..]) {
                    Err(e) => return Err(Some(GatewayError::BadBody(e.0))),
                    Ok(parse::Chunk::Data {
                        consumed,
                        start,
                        len,
                    }) => {
                        if (out.len() + len) as u64 > limit {
                            return Err(Some(GatewayError::BodyTooLarge));
                        }
                        out.extend_from_slice(&c.buf[at + start..at + start + len]);
                        at += consumed;
                    }
                    Ok(parse::Chunk::NeedMore) => at = c.buf.len(),
                    Ok(parse::Chunk::Done { .. }) => return Ok(BodyRead::Decoded(out)),
                }
            }
        }
        Framing::None | Framing::UntilClose => Ok(BodyRead::InBuf(0)),
    }
}
