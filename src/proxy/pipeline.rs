//! The request pipeline, in the order a request meets it: dispatch to a stage,
//! resource policy, CORS, route, authorizer, API key and usage plan, throttles and
//! quota, validation, response cache. Each stage either lets the request go on or
//! settles it (`Action`); the connection loop (`conn`) runs what it settles on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::UnauthorizedStrategy;
use crate::http::body::{self};
use crate::http::error::GatewayError;
use crate::http::parse::{self, Framing};
use crate::http::respond::{CacheStatus, Persist, Tag};
use crate::ids::{RouteId, StageId};
use crate::plan::{Integration, ListenerPlan, Plan, RoutePlan, StagePlan};
use crate::policy::access::{Authorizer, BodyRead, Grant, Pass, Work};
use crate::policy::cache::Lookup;
use crate::policy::keys::Binding;
use crate::proxy::admit::{admit, ask_for_grant, spend_quota};
use crate::proxy::authorize::{authorize, AuthFacts};
use crate::proxy::client::{body_error, send_continue, Client, CONN_BUF};
use crate::proxy::forward;
use crate::proxy::shard::Shard;
use crate::proxy::verdict::{Action, Pick, Verdict};
use crate::route;
use crate::upstream::group::HashKey;
use crate::upstream::target::Upstream;

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

impl Prepared {
    /// The connection's fate when the request is answered without reading its
    /// body: an unread body is still on the wire, so the connection closes rather
    /// than read it.
    pub fn persist_unread(&self) -> Persist {
        if self.framing == Framing::None {
            self.persist
        } else {
            Persist::Close
        }
    }

    /// A request about to enter the pipeline (its action is set by the stages).
    fn new(f: &Facts<'_, '_>, pass: &Pass) -> Self {
        let head = f.head;
        // A request served on a plan the worker left (its listener was removed by a
        // reload) is the connection's last.
        let persist = f
            .shard
            .persist(if !head.keep_alive || !f.shard.runs(f.plan) {
                Persist::Close
            } else if head.http10 {
                Persist::KeepAlive10
            } else {
                Persist::KeepAlive
            });
        Prepared {
            head_len: head.head_len,
            deadline: f.deadline,
            framing: head.framing,
            persist,
            is_head: head.method == "HEAD",
            // A body read whole already had its `100 Continue`.
            expect_continue: head.expect_continue && f.body.is_none(),
            idempotent: matches!(
                head.method,
                "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
            ),
            tag: Tag::from(pass.id.unwrap_or_else(|| f.shard.next_request_id())),
            action: Action::Refuse(GatewayError::RouteNotFound),
            fill: None,
            coalesce: Coalesce::None,
            route: None,
            log: None,
            trace: None,
            span: None,
        }
    }
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
    let mut headers = parse::headers();
    let parsed = parse::parse_request(
        &c.buf,
        &mut headers,
        lp.limits.max_header_bytes,
        lp.limits.paths,
    );
    let Ok(Some((head, hdrs))) = parsed else {
        // It parsed the first time; it cannot fail now. Were it to, the request
        // is refused and the connection closed.
        let mut p = Prepared::new(
            &Facts {
                head: &parse::RequestHead {
                    method: "",
                    path: "/".into(),
                    query: None,
                    http10: false,
                    host: b"",
                    framing: Framing::None,
                    keep_alive: false,
                    expect_continue: false,
                    head_len: 0,
                },
                headers: &[],
                plan,
                lp,
                shard,
                origin: &forward::Origin {
                    peer: c.peer,
                    local_port: lp.bind.port(),
                    tls: None,
                },
                body: None,
                deadline,
            },
            pass,
        );
        p.action = Action::Refuse(GatewayError::AuthorizerFailed("request lost"));
        return p;
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
    let facts = Facts {
        head: &head,
        headers: hdrs,
        plan,
        lp,
        shard,
        origin: &origin,
        body,
        deadline,
    };
    let p = prepare(&facts, &mut c.up_head, pass);
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
        Work::Quota { quota, seen } => {
            // Bounded: Redis answers within its command timeout, or the node goes
            // offline (fail_open) or closed (fail_closed).
            if let Some(g) = &quota.grant {
                let until = Instant::now() + Duration::from_millis(1500);
                while g.answers.load(std::sync::atomic::Ordering::Acquire) == seen
                    && Instant::now() < until
                {
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            pass.quota_waits += 1;
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

/// What every stage of the pipeline reads, borrowed while the head is in the buffer.
pub struct Facts<'a, 'h> {
    pub head: &'a parse::RequestHead<'h>,
    pub headers: &'a [httparse::Header<'h>],
    pub plan: &'a Plan,
    pub lp: &'a ListenerPlan,
    pub shard: &'a Shard,
    pub origin: &'a forward::Origin<'a>,
    /// The body, once read whole for a route that needs it (SigV4, validation).
    pub body: Option<&'a [u8]>,
    /// When the whole request must have arrived.
    pub deadline: Instant,
}

/// Runs the pipeline on a parsed head, synchronously while the head is borrowed
/// from the buffer; for a proxied route it also writes the upstream request head.
pub fn prepare(f: &Facts<'_, '_>, up_head: &mut Vec<u8>, pass: &mut Pass) -> Prepared {
    let mut p = Prepared::new(f, pass);
    p.action = match stages(f, &mut p, up_head, pass) {
        Ok(action) | Err(action) => action,
    };
    p
}

/// The stages in the order a request meets them (AWS's order: a resource policy
/// refuses, and CORS answers a preflight, before routes are matched).
fn stages(
    f: &Facts<'_, '_>,
    p: &mut Prepared,
    up_head: &mut Vec<u8>,
    pass: &mut Pass,
) -> Verdict<Action> {
    let not_found = || Action::Refuse(GatewayError::RouteNotFound);
    let Some(routed) = route::resolve(
        &f.lp.stages,
        |s| {
            // A stage's canary takes its share, drawn per request.
            let s = match &f.plan.stages[s].canary {
                Some(c) if c.takes(f.shard.random()) => c.stage,
                _ => s,
            };
            (s, &*f.plan.stages[s].router)
        },
        f.head.host,
        f.head.method,
        &f.head.path,
    ) else {
        within_body_limit(f)?;
        return Err(not_found());
    };
    let (stage_id, path) = (routed.stage, routed.path);
    let stage = &f.plan.stages[stage_id];
    // The caller's address as the stage trusts X-Forwarded-For: computed once, by
    // the first stage that needs it.
    let ip = std::cell::OnceCell::new();
    let source_ip = || {
        *ip.get_or_init(|| {
            crate::policy::resource::client_ip(f.origin.peer.ip(), &stage.access.trusted, f.headers)
        })
    };
    if let Some(set) = &stage.responses {
        if set.needs_request {
            p.tag.request_values = Some(Box::new(crate::http::responses::RequestValues {
                method: f.head.method.into(),
                path: (*f.head.path).into(),
                source_ip: Some(source_ip()),
            }));
        }
        p.tag.responses = Some(Arc::clone(set));
    }
    observe(f, p, stage_id, stage, &source_ip);
    // After the stage is known, so that its gateway responses answer.
    within_body_limit(f)?;
    resource_policy(f, stage, &source_ip)?;
    cors(f, stage, &mut p.tag)?;
    // The route was matched with the stage; a stage without it answers 404 only
    // after its own checks (AWS: a resource policy refuses, CORS answers a
    // preflight, whatever the route).
    let m = routed.found.ok_or_else(not_found)?;
    let route = &stage.routes[m.route];
    p.route = Some((stage_id, m.route));
    whole_body_first(f, route)?;
    let grant = match &route.auth {
        Some(auth) => {
            let facts = AuthFacts {
                head: f.head,
                headers: f.headers,
                routed_path: path,
                stage,
                route,
                m: &m,
                source_ip: &source_ip,
                tag: &p.tag,
                body: f.body,
            };
            let g = authorize(f.plan, f.shard, auth, &facts, pass)?;
            if let Some(log) = &mut p.log {
                log.claims = g.claims.clone();
                log.context = g.context.clone();
            }
            g
        }
        None => Grant::default(),
    };
    // The key's usage plan for this stage, where the route takes a key. The keyring
    // is this shard's snapshot, swapped by the worker's tick between requests; a
    // request that began before a reload reads the keyring of its own plan.
    let ring = f.shard.keyring_for(f.plan.generation);
    // A canary's requests are its stage's to API keys and usage plans.
    let (usage_stage, usage_route) = stage.usage_ids(stage_id, m.route);
    let binding = api_key(f, &ring, usage_stage, route, &mut p.log)?;
    if f.plan.live.closed()
        && (route.api_key_required
            || route.throttle.is_some()
            || stage.throttle.is_some()
            || f.plan.throttle.is_some())
    {
        return Err(Action::Refuse(GatewayError::Unavailable(
            "cluster state unreachable (fail_closed)",
        )));
    }
    validate(f, route, &m)?;
    if !admit(
        f.plan,
        f.shard,
        binding,
        usage_stage,
        usage_route,
        route,
        stage,
    ) {
        return Err(Action::Refuse(GatewayError::Throttled));
    }
    // Last, so that a request a throttle refused does not count against the quota.
    quota(f, binding, &mut p.tag, pass)?;
    // A caller with a valid key may invalidate cache entries, on any route.
    let authorized = binding.is_some()
        || (route
            .cache
            .as_ref()
            .is_some_and(|c| c.require_authorization)
            && crate::policy::cache::wants_refresh(f.headers)
            && ring.check(f.headers, usage_stage).is_ok());
    drop(ring);
    cache(f, p, stage_id, route, &m, path, authorized)?;
    if let Some(w) = &stage.ws {
        if let Some(base) = w.connections.filter(|b| (*b..*b + 6).contains(&m.route)) {
            let id = percent_encoding::percent_decode_str(m.param("connectionId").unwrap_or(""))
                .decode_utf8_lossy()
                .into_owned();
            // The `@connections` API answers as AWS's, whatever the API's
            // gateway responses.
            p.tag.responses = None;
            return Ok(Action::Connections(
                stage_id,
                Box::new(crate::proxy::manage::ConnectionsCall {
                    kind: (m.route - base) % 3,
                    id,
                    data: f.body.map(<[u8]>::to_vec).unwrap_or_default(),
                }),
            ));
        }
        // A WebSocket API routes only its handshake by path: `$connect`.
        let seen = seen(f, stage, route, &m, path, &grant, &p.tag, source_ip());
        return Ok(match crate::proxy::websocket::opening(&seen) {
            Ok(o) => Action::WsConnect(stage_id, m.route, Box::new(o)),
            Err(e) => Action::Refuse(e),
        });
    }
    Ok(match &route.integration {
        Integration::Mock(_) => Action::Mock(stage_id, m.route),
        Integration::Lambda(_) | Integration::Aws(_) => {
            let seen = seen(f, stage, route, &m, path, &grant, &p.tag, source_ip());
            match crate::proxy::invoke::build(&seen) {
                Ok(inv) => Action::Invoke(stage_id, m.route, Box::new(inv)),
                Err(e) => Action::Refuse(e),
            }
        }
        Integration::HttpProxy(target) => {
            let extra = forward::Extra {
                strip: &stage.access.strip,
                grant: &grant,
                trace: p.trace.as_ref(),
            };
            let websocket = forward::wants_websocket(f.head, f.headers);
            let mut host = forward::write_request_head(
                up_head, target, f.head, f.headers, &m, path, f.origin, &extra, websocket,
            );
            if let Some(maps) = route.mapping.as_ref().filter(|m| !m.request.is_empty()) {
                let seen = seen(f, stage, route, &m, path, &grant, &p.tag, source_ip());
                let req = crate::proxy::invoke::request_of(&seen, f.head.query);
                host = crate::proxy::remap::request_head(up_head, &maps.request, &req);
            }
            let hash = match &target.to {
                Upstream::Group(g) => f
                    .plan
                    .upstreams
                    .get(*g)
                    .and_then(|g| g.hash_key.as_ref())
                    .and_then(|k| key_hash(k, f, &m, &source_ip)),
                Upstream::Fixed(_) => None,
            };
            Action::Proxy(
                stage_id,
                m.route,
                Pick {
                    host,
                    hash,
                    websocket,
                },
            )
        }
    })
}

/// The request as events and mappings read it.
#[allow(clippy::too_many_arguments)]
fn seen<'a, 'h>(
    f: &'a Facts<'a, 'h>,
    stage: &'a crate::plan::StagePlan,
    route: &'a RoutePlan,
    m: &'a route::RouteMatch<'a, 'a>,
    path: &'a str,
    grant: &'a Grant,
    tag: &'a Tag,
    source_ip: std::net::IpAddr,
) -> crate::proxy::invoke::Seen<'a, 'h> {
    crate::proxy::invoke::Seen {
        head: f.head,
        headers: f.headers,
        stage,
        route,
        m,
        routed_path: path,
        grant,
        tag,
        source_ip,
        client_cert: f.origin.tls.and_then(|t| t.client_cert_headers.as_deref()),
        body: f.body,
    }
}

/// The hash of a request's consistent-hash key; `None` when it lacks the key.
fn key_hash(
    key: &HashKey,
    f: &Facts<'_, '_>,
    m: &crate::route::RouteMatch<'_, '_>,
    source_ip: &dyn Fn() -> std::net::IpAddr,
) -> Option<u64> {
    let h = crate::upstream::balance::hash;
    match key {
        HashKey::Header(name) => f
            .headers
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(name))
            .map(|x| h(x.value)),
        HashKey::Query(name) => f.head.query.and_then(|q| {
            q.split('&')
                .find_map(|kv| match kv.split_once('=') {
                    Some((k, v)) if k == &**name => Some(v),
                    None if kv == &**name => Some(""),
                    _ => None,
                })
                .map(|v| h(v.as_bytes()))
        }),
        HashKey::Path(name) => m.param(name).map(|v| h(v.as_bytes())),
        HashKey::SourceIp => Some(match source_ip() {
            std::net::IpAddr::V4(ip) => h(&ip.octets()),
            std::net::IpAddr::V6(ip) => h(&ip.octets()),
        }),
    }
}

/// A declared body over the listener's `max_body_bytes` is refused before anything.
fn within_body_limit(f: &Facts<'_, '_>) -> Verdict {
    match f.head.framing {
        Framing::Length(n) if n > f.lp.limits.max_body_bytes => {
            Err(Action::Refuse(GatewayError::BodyTooLarge))
        }
        _ => Ok(()),
    }
}

/// Trace headers, the span and the access log line's facts, for the stage's
/// settings.
fn observe(
    f: &Facts<'_, '_>,
    p: &mut Prepared,
    stage_id: StageId,
    stage: &StagePlan,
    source_ip: &dyn Fn() -> std::net::IpAddr,
) {
    let plan = f.plan;
    if plan.tracing.create || stage.access_log.is_some() || plan.telemetry.is_some() {
        let secs = match f.shard.date.borrow().secs() {
            0 => crate::clock::unix_s(),
            s => s,
        };
        p.trace =
            crate::observe::trace::of_request(f.headers, &plan.tracing, secs, || f.shard.random());
    }
    if plan.telemetry.is_some() && p.trace.is_some_and(|t| t.sampled) {
        p.span = Some(Box::new(crate::observe::telemetry::SpanFacts {
            method: f.head.method.into(),
            path: (*f.head.path).into(),
        }));
    }
    if let Some(spec) = &stage.access_log {
        p.log = Some(log_facts(f, stage_id, spec, source_ip(), p));
    }
}

/// The stage's resource policy (source address, host).
fn resource_policy(
    f: &Facts<'_, '_>,
    stage: &StagePlan,
    source_ip: &dyn Fn() -> std::net::IpAddr,
) -> Verdict {
    match &stage.access.policy {
        Some(policy) if !policy.allows(source_ip(), f.head.host) => Err(Action::Refuse(
            GatewayError::AccessDenied("resource policy"),
        )),
        _ => Ok(()),
    }
}

/// CORS: a preflight is answered here; an actual request gets its headers in the
/// tag.
fn cors(f: &Facts<'_, '_>, stage: &StagePlan, tag: &mut Tag) -> Verdict {
    let Some(cors) = &stage.access.cors else {
        return Ok(());
    };
    tag.cors_api = true;
    if let Some(from) = parse::header(f.headers, "origin") {
        if f.head.method == "OPTIONS"
            && parse::header(f.headers, "access-control-request-method").is_some()
        {
            tag.cors = cors.preflight(
                from,
                parse::header(f.headers, "access-control-request-headers"),
            );
            return Err(Action::Preflight);
        }
        tag.cors = cors.actual(from);
    }
    Ok(())
}

/// Routes that need the whole body (a SigV4 authorizer, body validation) read it
/// first (bounded), before anything that changes state.
fn whole_body_first(f: &Facts<'_, '_>, route: &RoutePlan) -> Verdict {
    if f.body.is_some() || f.head.framing == Framing::None {
        return Ok(());
    }
    let sigv4 = route.auth.as_ref().is_some_and(|a| {
        matches!(
            f.plan.authorizers.get(a.authorizer).map(|a| &**a),
            Some(Authorizer::Sigv4(_))
        )
    });
    let validates = route
        .validate
        .as_ref()
        .is_some_and(|v| v.wants_body(f.headers));
    let invokes = matches!(
        route.integration,
        Integration::Lambda(_) | Integration::Aws(_)
    );
    if !(sigv4 || validates || invokes) {
        return Ok(());
    }
    Err(match f.head.framing {
        Framing::Length(n) if n > f.lp.limits.max_buffered_body_bytes => {
            Action::Refuse(GatewayError::BodyTooLarge)
        }
        _ => Action::Work(Work::ReadBody),
    })
}

/// The API key, where the route requires one: its binding to this stage's plan.
fn api_key<'r>(
    f: &Facts<'_, '_>,
    ring: &'r crate::policy::keys::Keyring,
    stage_id: StageId,
    route: &RoutePlan,
    log: &mut Option<Box<crate::observe::accesslog::Facts>>,
) -> Verdict<Option<&'r Binding>> {
    if !route.api_key_required {
        return Ok(None);
    }
    match ring.check(f.headers, stage_id) {
        Ok(b) => {
            if let Some(log) = log {
                log.api_key_id = Some(Arc::clone(&b.key_id));
            }
            Ok(Some(b))
        }
        Err(why) => Err(Action::Refuse(GatewayError::Forbidden(why))),
    }
}

/// Request validation: required parameters, then the body against its schema.
fn validate(f: &Facts<'_, '_>, route: &RoutePlan, m: &route::RouteMatch<'_, '_>) -> Verdict {
    let Some(v) = &route.validate else {
        return Ok(());
    };
    if let Some(err) = v.missing(f.headers, f.head.query, |n| m.param(n).map(str::to_owned)) {
        return Err(Action::Refuse(err));
    }
    if v.wants_body(f.headers) {
        if let Err(err) = v.check_body(f.body.unwrap_or_default()) {
            tracing::debug!(%err, "request refused by validation");
            return Err(Action::Refuse(err));
        }
    }
    Ok(())
}

/// The key's plan quota: spends one from this shard's lease (taking a new lease
/// when it runs out).
fn quota(f: &Facts<'_, '_>, binding: Option<&Binding>, tag: &mut Tag, pass: &Pass) -> Verdict {
    let Some((slot, q)) = binding.and_then(|b| b.quota.as_ref()) else {
        return Ok(());
    };
    match spend_quota(f.plan, f.shard, *slot, q) {
        Ok(a) => {
            if q.limited {
                tag.quota = Some(a.state);
            }
            Ok(())
        }
        Err(state) => {
            let (period, _) = q.period.at(crate::clock::unix_s());
            if let Some(g) = q.grant.as_ref().filter(|_| {
                pass.quota_waits < crate::policy::access::MAX_QUOTA_WAITS && q.may_wait(period)
            }) {
                // Cluster mode: this node's grant is spent, Redis may have more.
                return Err(Action::Work(Work::Quota {
                    quota: Arc::clone(q),
                    seen: ask_for_grant(f.plan, g),
                }));
            }
            tag.quota = Some(state);
            Err(Action::Refuse(GatewayError::QuotaExceeded))
        }
    }
}

/// The route's response cache: a hit settles the request; a miss is marked to be
/// filled (and coalesced with other misses for the same key on this worker).
fn cache(
    f: &Facts<'_, '_>,
    p: &mut Prepared,
    stage_id: StageId,
    route: &RoutePlan,
    m: &route::RouteMatch<'_, '_>,
    path: &str,
    authorized: bool,
) -> Verdict {
    let (Some(rc), Integration::HttpProxy(_)) = (&route.cache, &route.integration) else {
        return Ok(());
    };
    let (plan, shard, method) = (f.plan, f.shard, f.head.method);
    if !(rc.any_method || method == "GET" || method == "HEAD")
        || !shard.caches.borrow().is_for(&plan.cache)
    {
        // (The second: a request that began before this worker switched plans,
        // looked at again after an authorizer's answer.)
        p.tag.cache = Some(CacheStatus::Bypass);
        return Ok(());
    }
    let mut refresh = crate::policy::cache::wants_refresh(f.headers);
    if refresh && rc.require_authorization && !authorized {
        // Only a caller with a valid key may invalidate (AWS:
        // requireAuthorizationForCacheControl).
        match rc.unauthorized {
            UnauthorizedStrategy::FailWith403 => {
                return Err(Action::Refuse(GatewayError::CacheControlForbidden));
            }
            UnauthorizedStrategy::SucceedWithHeader => p.tag.cache_warning = true,
            UnauthorizedStrategy::SucceedWithoutHeader => {}
        }
        refresh = false;
    }
    let mut key = shard.cache_key.borrow_mut();
    crate::policy::cache::build_key(
        &mut key,
        route.sig,
        method,
        path,
        f.head.query,
        f.headers,
        m,
        &rc.key,
    );
    let mut caches = shard.caches.borrow_mut();
    if !refresh {
        let found = match caches.get(stage_id, &key, crate::clock::unix_ms()) {
            // Stored for other values of the headers its Vary names: a miss,
            // whose response replaces it.
            Lookup::Hit(e) if !crate::policy::cache::vary_matches(&e, f.headers) => Lookup::Miss,
            other => other,
        };
        if let Lookup::Hit(entry) = found {
            caches.count(stage_id, m.route, true);
            p.tag.cache = Some(CacheStatus::Hit);
            return Err(Action::CacheHit(entry));
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
    Ok(())
}

/// What a logged request's line needs from its head.
pub fn log_facts(
    f: &Facts<'_, '_>,
    stage_id: StageId,
    spec: &crate::observe::accesslog::LogSpec,
    source_ip: std::net::IpAddr,
    p: &Prepared,
) -> Box<crate::observe::accesslog::Facts> {
    let (head, headers, shard) = (f.head, f.headers, f.shard);
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
        source_ip,
        user_agent: if spec.format.needs_user_agent() {
            text(parse::header(headers, "user-agent").unwrap_or_default())
        } else {
            Box::default()
        },
        trace_id: p.trace.as_ref().map(|t| t.id),
        api_key_id: None,
        claims: None,
        context: None,
        ws: None,
    })
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
