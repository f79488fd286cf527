//! The `lambda` and `aws` integrations: the invocation the pipeline built goes to
//! a local function's queue (awaited through this worker's inbox, never blocking),
//! to the Lambda Invoke API, or to an AWS service; the answer becomes the response,
//! after the route's response mappings.

use std::time::{Duration, Instant};

use crate::http::body;
use crate::http::error::GatewayError;
use crate::http::parse::Framing;
use crate::http::respond::{self, Persist, Tag};
use crate::plan::{Integration, LambdaPlan, LambdaTarget, ListenerPlan, Plan};
use crate::proxy::client::{body_error, refuse, send_continue, Client};
use crate::proxy::lambda::{answer, Answer, Request};
use crate::proxy::shard::Shard;
use crate::upstream::function::{Function, Job, Outcome};
use crate::upstream::mapping::{apply_headers, Lookup, Mapping, Op, Target};

/// What the pipeline built for a `lambda` or `aws` route.
#[derive(Debug)]
pub struct Invocation {
    /// The event (lambda) or the action's JSON (aws).
    pub payload: Vec<u8>,
    /// More headers for an AWS call (request mappings, the action's target).
    pub headers: Vec<(String, String)>,
}

/// The request as the pipeline sees it, for events and mappings.
pub struct Seen<'a, 'h> {
    pub head: &'a crate::http::parse::RequestHead<'h>,
    pub headers: &'a [httparse::Header<'h>],
    pub stage: &'a crate::plan::StagePlan,
    pub route: &'a crate::plan::RoutePlan,
    pub m: &'a crate::route::RouteMatch<'a, 'a>,
    pub routed_path: &'a str,
    pub grant: &'a crate::policy::access::Grant,
    pub tag: &'a Tag,
    pub source_ip: std::net::IpAddr,
    pub client_cert: Option<&'a [u8]>,
    pub body: Option<&'a [u8]>,
}

/// The request's facts as an event's (and a mapping's) source, after the
/// route's request mappings of headers and the query string.
pub fn request_of<'a>(s: &'a Seen<'a, '_>, query: Option<&'a str>) -> Request<'a> {
    let headers = s
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let path_params =
        s.m.params
            .as_ref()
            .map(|p| {
                p.iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
    let resource = s
        .route
        .key
        .split_once(' ')
        .map_or(s.route.key.as_str(), |(_, p)| p);
    Request {
        method: s.head.method,
        raw_path: &s.head.path,
        routed_path: s.routed_path,
        query,
        headers,
        path_params,
        stage_variables: &s.stage.variables,
        api: &s.stage.api,
        stage: &s.stage.stage,
        route_key: &s.route.key,
        resource,
        request_id: String::from_utf8_lossy(&s.tag.id).into_owned(),
        source_ip: s.source_ip.to_string(),
        body: s.body,
        claims: s.grant.claims.as_deref().map(|v| (&v.claims, &*v.scopes)),
        context: s.grant.context.as_deref().map(|d| &d.context),
        iam_key: None,
        client_cert: s.client_cert,
        now_ms: crate::clock::unix_ms(),
    }
}

/// The invocation of a `lambda` or `aws` route.
pub fn build(s: &Seen<'_, '_>) -> Result<Invocation, GatewayError> {
    let maps: &[Mapping] = s.route.mapping.as_ref().map_or(&[], |m| &m.request);
    let mapped_query;
    let query = if maps.iter().any(|m| matches!(m.target, Target::Query(_))) {
        let base = request_of(s, s.head.query);
        let mut pairs: Vec<(String, String)> =
            form_urlencoded::parse(s.head.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        crate::upstream::mapping::apply_query(maps, &mut pairs, &base);
        mapped_query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Some(mapped_query.as_str())
    } else {
        s.head.query
    };
    let mut req = request_of(s, query);
    if maps.iter().any(|m| matches!(m.target, Target::Header(_))) {
        let mut headers = req.headers.clone();
        apply_headers(maps, &mut headers, &req);
        req.headers = headers;
    }
    match &s.route.integration {
        Integration::Lambda(l) => Ok(Invocation {
            payload: if l.v2 { req.event_v2() } else { req.event_v1() },
            headers: Vec::new(),
        }),
        Integration::Aws(act) => {
            let mut values = std::collections::BTreeMap::new();
            for (name, expr) in &act.parameters {
                if let Some(v) = expr.eval_json(&req) {
                    values.insert(*name, v);
                }
            }
            let payload = act.subtype.body(&values).map_err(|why| {
                GatewayError::detailed(
                    400,
                    "message",
                    &format!("{}: {why}", act.subtype.name()),
                    Some("BadRequestException"),
                )
                .of_type(Some(
                    crate::http::responses::ResponseType::BadRequestParameters,
                ))
            })?;
            let (target, ct) = act.subtype.target();
            let mut headers = vec![
                ("content-type".to_owned(), ct.to_owned()),
                ("x-amz-target".to_owned(), target.to_owned()),
            ];
            let mut extra = Vec::new();
            apply_headers(maps, &mut extra, &req);
            headers.extend(extra);
            Ok(Invocation { payload, headers })
        }
        _ => Err(GatewayError::FunctionFailed("not a function route")),
    }
}

/// What the connection loop knows of the request.
pub struct Asked<'a> {
    pub tag: &'a Tag,
    pub persist: Persist,
    pub is_head: bool,
    pub framing: Framing,
    pub expect_continue: bool,
    pub deadline: Instant,
}

/// Runs the invocation and answers; `true` to keep the connection.
#[allow(clippy::too_many_arguments)]
pub async fn invoke(
    c: &mut Client,
    plan: &Plan,
    lp: &ListenerPlan,
    shard: &Shard,
    a: Asked<'_>,
    stage: usize,
    route: usize,
    inv: Box<Invocation>,
) -> bool {
    // The body is in the event already: step over it in the buffer.
    if !skip_body(c, lp, shard, &a).await {
        return false;
    }
    let r = &plan.stages[stage].routes[route];
    c.outcome.sent = Instant::now();
    let result = match &r.integration {
        Integration::Lambda(l) => match &l.target {
            LambdaTarget::Local(fi) => match plan.functions.get(*fi) {
                Some(f) => {
                    let id = String::from_utf8_lossy(&a.tag.id).into_owned();
                    local(shard, f, l, inv.payload, id).await
                }
                None => Err(GatewayError::FunctionFailed("no such function")),
            },
            LambdaTarget::Remote { endpoint, path } => {
                remote(shard, l, endpoint, path, &inv.payload).await
            }
        },
        Integration::Aws(act) => {
            match crate::upstream::aws::call(
                &shard.dial(),
                &act.endpoint,
                "/",
                &inv.headers,
                &inv.payload,
                act.timeout,
            )
            .await
            {
                Ok(ans) => {
                    if ans.status >= 400 {
                        tracing::debug!(subtype = act.subtype.name(), status = ans.status, answer = %String::from_utf8_lossy(&ans.body), "the AWS service refused");
                    }
                    let ct = ans
                        .header("content-type")
                        .unwrap_or("application/json")
                        .to_owned();
                    Ok(Answer {
                        status: ans.status,
                        headers: vec![("content-type".into(), ct)],
                        body: ans.body,
                    })
                }
                Err(e) => Err(e),
            }
        }
        _ => Err(GatewayError::FunctionFailed("not a function route")),
    };
    c.outcome.integration_us = Some(c.outcome.sent.elapsed().as_micros() as u64);
    match result {
        Ok(mut ans) => {
            if let Some(maps) = r.mapping.as_ref().and_then(|m| m.for_status(ans.status)) {
                map_answer(maps, &mut ans, a.tag);
            }
            let persist = shard.persist(a.persist);
            c.out.clear();
            let date = *shard.date.borrow_mut().now();
            write_answer(&mut c.out, &ans, &date, a.tag, persist, a.is_head);
            c.outcome.status = ans.status;
            c.outcome.bytes = if a.is_head { 0 } else { ans.body.len() as u64 };
            body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
                .await
                .is_ok()
                && !persist.closes()
        }
        Err(err) => {
            tracing::debug!(peer = %c.peer, %err, "integration refused");
            refuse(c, shard, err, a.tag, a.persist, a.is_head).await
        }
    }
}

/// A function in AWS (or an emulator of the Lambda Invoke API): the event
/// POSTed to `path` SigV4-signed, the proxy response read.
pub async fn remote(
    shard: &Shard,
    l: &LambdaPlan,
    endpoint: &crate::upstream::aws::AwsEndpoint,
    path: &str,
    payload: &[u8],
) -> Result<Answer, GatewayError> {
    let headers = [
        ("content-type".to_owned(), "application/json".to_owned()),
        (
            "x-amz-invocation-type".to_owned(),
            "RequestResponse".to_owned(),
        ),
    ];
    match crate::upstream::aws::call(&shard.dial(), endpoint, path, &headers, payload, l.timeout)
        .await
    {
        Ok(ans) if ans.header("x-amz-function-error").is_some() => {
            tracing::warn!(path = %path, error = %String::from_utf8_lossy(&ans.body), "function error (Lambda Invoke API)");
            Err(GatewayError::FunctionFailed("function error"))
        }
        Ok(ans) if ans.status != 200 => {
            tracing::warn!(path = %path, status = ans.status, answer = %String::from_utf8_lossy(&ans.body), "the Lambda Invoke API refused");
            Err(
                GatewayError::detailed(500, "message", "Internal Server Error", None).of_type(
                    Some(crate::http::responses::ResponseType::IntegrationFailure),
                ),
            )
        }
        Ok(ans) => malformed(answer(&ans.body, l.v2)),
        Err(e) => Err(e),
    }
}

fn malformed(r: Result<Answer, String>) -> Result<Answer, GatewayError> {
    r.map_err(|why| {
        tracing::warn!(reason = %why, "malformed Lambda proxy response");
        GatewayError::FunctionFailed("malformed Lambda proxy response")
    })
}

/// Steps over a request body already read whole (it is in the event or the
/// call); `false` when the connection is done (refused or gone).
pub async fn skip_body(c: &mut Client, lp: &ListenerPlan, shard: &Shard, a: &Asked<'_>) -> bool {
    if a.framing == Framing::None {
        return true;
    }
    if a.expect_continue && send_continue(c).await.is_err() {
        return false;
    }
    let mut src = body::Source {
        stream: &mut c.stream,
        buf: &mut c.buf,
        pos: &mut c.pos,
        read_timeout: lp.limits.idle_timeout,
        deadline: Some(a.deadline),
    };
    let mut sink = Vec::new();
    if let Err(e) = body::pump(
        &mut src,
        None,
        a.framing,
        body::Encode::Raw,
        &mut sink,
        lp.limits.max_body_bytes,
    )
    .await
    {
        if let Some(err) = body_error(e) {
            refuse(c, shard, err, a.tag, Persist::Close, a.is_head).await;
        }
        return false;
    }
    true
}

/// A local function: handed to a runtime of this worker, or queued (429 when
/// the queue is full), then awaited. `id`: the invocation's request id.
pub async fn local(
    shard: &Shard,
    f: &std::sync::Arc<Function>,
    l: &LambdaPlan,
    event: Vec<u8>,
    id: String,
) -> Result<Answer, GatewayError> {
    let Some(calls) = &shard.calls else {
        return Err(GatewayError::FunctionFailed("no inbox on this worker"));
    };
    let (reply, token) = calls.reply();
    let now = Instant::now();
    let job = Job {
        id,
        event,
        trace: None,
        reply,
        give_up: now + l.timeout,
    };
    // A runtime of this worker waiting: handed over on this thread; else the
    // function's queue.
    f.count_invocation();
    let job = crate::proxy::runtime_api::offer(shard, f, job).err();
    if let Some(Err(job)) = job.map(|j| f.submit(j)) {
        calls.cancel(token);
        drop(job);
        tracing::debug!(function = %f.spec.name, "function queue full");
        return Err(GatewayError::Throttled);
    }
    // The host answers a timeout itself (and restarts the runtime); this bound
    // is the integration's.
    match calls
        .wait(token, l.timeout + Duration::from_millis(50))
        .await
    {
        Some(Outcome::Response(payload)) => malformed(answer(&payload, l.v2)),
        Some(Outcome::Error(doc)) => {
            tracing::warn!(function = %f.spec.name, error = %String::from_utf8_lossy(&doc), "function error");
            Err(GatewayError::FunctionFailed("function error"))
        }
        Some(Outcome::Timeout) | None => {
            tracing::warn!(function = %f.spec.name, "function timed out");
            Err(GatewayError::IntegrationTimeout)
        }
        Some(Outcome::Lost(why)) => {
            tracing::warn!(function = %f.spec.name, reason = why, "invocation lost");
            Err(GatewayError::FunctionFailed(why))
        }
        Some(Outcome::Answer(..)) => {
            Err(GatewayError::FunctionFailed("not an invocation's outcome"))
        }
    }
}

/// The response: status, the gateway's headers, the answer's, its body.
pub fn write_answer(
    out: &mut Vec<u8>,
    a: &Answer,
    date: &[u8; crate::clock::HTTP_DATE_LEN],
    tag: &Tag,
    persist: Persist,
    head_only: bool,
) {
    respond::status_line(out, a.status, respond::reason(a.status));
    respond::common_headers(out, date, tag, persist);
    for (n, v) in &a.headers {
        if tag.cors_api && n.starts_with("access-control-") {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodyless = a.status == 204 || a.status == 304;
    if !bodyless {
        respond::content_length(out, a.body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodyless {
        out.extend_from_slice(&a.body);
    }
}

/// What a response mapping reads: the answer, and the request's id.
pub struct Answered<'a> {
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
    pub request_id: &'a str,
}

impl Lookup for Answered<'_> {
    fn header(&self, _: &str) -> Option<String> {
        None
    }
    fn query(&self, _: &str) -> Option<String> {
        None
    }
    fn body(&self) -> Option<&[u8]> {
        None
    }
    fn path(&self) -> Option<String> {
        None
    }
    fn path_param(&self, _: &str) -> Option<String> {
        None
    }
    fn context(&self, name: &str) -> Option<String> {
        matches!(name, "requestId" | "extendedRequestId").then(|| self.request_id.to_owned())
    }
    fn response_header(&self, name: &str) -> Option<String> {
        crate::upstream::mapping::joined_header(self.headers, name)
    }
    fn response_body(&self) -> Option<&[u8]> {
        self.body
    }
}

/// Applies response mappings: headers, and `overwrite:statuscode`. Returns the new
/// status, if a mapping set a valid one.
pub fn map_response(
    maps: &[Mapping],
    headers: &mut Vec<(String, String)>,
    body: Option<&[u8]>,
    tag: &Tag,
) -> Option<u16> {
    let id = String::from_utf8_lossy(&tag.id).into_owned();
    let snapshot = headers.clone();
    let l = Answered {
        headers: &snapshot,
        body,
        request_id: &id,
    };
    apply_headers(maps, headers, &l);
    maps.iter()
        .filter(|m| m.target == Target::StatusCode && m.op == Op::Overwrite)
        .filter_map(|m| m.value.eval(&l)?.trim().parse::<u16>().ok())
        .rfind(|s| (200..=599).contains(s))
}

fn map_answer(maps: &[Mapping], ans: &mut Answer, tag: &Tag) {
    let mut headers = std::mem::take(&mut ans.headers);
    if let Some(s) = map_response(maps, &mut headers, Some(&ans.body), tag) {
        ans.status = s;
    }
    ans.headers = headers;
}
