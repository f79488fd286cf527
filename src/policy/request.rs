//! The request authorizer: AWS's Lambda `REQUEST` authorizer (HTTP API, payload
//! format 2.0 with simple responses) over HTTP. The gateway POSTs the request's
//! identity to an endpoint and expects `{"isAuthorized": bool, "context": {...}}`;
//! each worker caches decisions per identity-source values for `ttl_s`.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::upstream::connect::Dial;
use crate::upstream::target::Endpoint;

/// An authorizer's answer may be at most this long.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Decisions remembered per worker before the memory is cleared.
const DECISIONS_MAX: usize = 16_384;

/// One identity source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Lower case.
    Header(Box<str>),
    Query(Box<str>),
    Context(ContextVar),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextVar {
    SourceIp,
    RouteKey,
    HttpMethod,
    Path,
    Stage,
}

impl Identity {
    /// `header.NAME`, `query.NAME` or `context.sourceIp|routeKey|httpMethod|path|stage`
    /// (AWS's `$request.header.NAME` spelling too).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        let t = t.strip_prefix("request.").unwrap_or(t);
        if let Some(h) = t.strip_prefix("header.").filter(|h| !h.is_empty()) {
            return Ok(Self::Header(h.to_ascii_lowercase().into()));
        }
        if let Some(q) = t
            .strip_prefix("querystring.")
            .or_else(|| t.strip_prefix("query."))
            .filter(|q| !q.is_empty())
        {
            return Ok(Self::Query(q.into()));
        }
        if let Some(c) = t.strip_prefix("context.") {
            let v = match c {
                "sourceIp" | "identity.sourceIp" => ContextVar::SourceIp,
                "routeKey" => ContextVar::RouteKey,
                "httpMethod" => ContextVar::HttpMethod,
                "path" => ContextVar::Path,
                "stage" => ContextVar::Stage,
                _ => {
                    return Err(format!(
                        "{s:?}: context sources are sourceIp, routeKey, httpMethod, path, stage"
                    ))
                }
            };
            return Ok(Self::Context(v));
        }
        Err(format!(
            "{s:?}: expected header.NAME, query.NAME or context.NAME"
        ))
    }
}

#[derive(Debug)]
pub struct RequestAuthorizer {
    pub name: String,
    pub endpoint: Endpoint,
    /// The endpoint's path and query, as sent.
    pub request_target: Box<str>,
    pub sources: Box<[Identity]>,
    pub ttl_s: u64,
    pub timeout: Duration,
    /// (context key, lower-case header name)
    pub forward: Box<[(Box<str>, Box<str>)]>,
}

/// What the authorizer decided for one identity.
#[derive(Debug)]
pub struct Decision {
    pub authorized: bool,
    /// Header lines of the forwarded context values.
    pub lines: Box<[u8]>,
    pub context: Map<String, Value>,
}

/// A call to make before the request can go on.
#[derive(Debug)]
pub struct Call {
    pub authorizer: usize,
    /// The cache key (identity values), when the decision may be cached.
    pub key: Option<Box<str>>,
    pub payload: Vec<u8>,
}

/// One worker's cached decisions.
#[derive(Default)]
pub struct DecisionCache {
    map: HashMap<(usize, Box<str>), (u64, Rc<Decision>)>,
}

impl DecisionCache {
    pub fn get(&self, id: usize, key: &str, now_ms: u64) -> Option<Rc<Decision>> {
        // A tuple key cannot be borrowed as (usize, &str): look up by an owned copy
        // only when the map has anything for it.
        if self.map.is_empty() {
            return None;
        }
        let k = (id, Box::<str>::from(key));
        match self.map.get(&k) {
            Some((until, d)) if now_ms < *until => Some(Rc::clone(d)),
            _ => None,
        }
    }

    pub fn put(&mut self, id: usize, key: Box<str>, until_ms: u64, d: Rc<Decision>) {
        if self.map.len() >= DECISIONS_MAX {
            let now = crate::clock::unix_ms();
            self.map.retain(|_, (until, _)| *until > now);
            if self.map.len() >= DECISIONS_MAX {
                self.map.clear();
            }
        }
        self.map.insert((id, key), (until_ms, d));
    }
}

/// What the payload describes besides headers and query.
pub struct RequestFacts<'a> {
    pub api: &'a str,
    pub stage: &'a str,
    pub route_key: &'a str,
    pub method: &'a str,
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub source_ip: std::net::IpAddr,
    pub host: &'a str,
    pub request_id: &'a str,
    pub path_params: Map<String, Value>,
    pub headers: &'a [httparse::Header<'a>],
}

impl RequestAuthorizer {
    /// The identity-source values, in order; `None` if one is missing or empty
    /// (401 without calling the authorizer, as AWS).
    pub fn identity(&self, f: &RequestFacts<'_>) -> Option<Vec<String>> {
        self.sources
            .iter()
            .map(|s| {
                let v = match s {
                    Identity::Header(name) => {
                        let vals: Vec<&str> = f
                            .headers
                            .iter()
                            .filter(|h| h.name.eq_ignore_ascii_case(name))
                            .filter_map(|h| std::str::from_utf8(h.value).ok())
                            .collect();
                        vals.join(",")
                    }
                    Identity::Query(name) => f
                        .query
                        .and_then(|q| {
                            form_urlencoded::parse(q.as_bytes())
                                .find(|(k, _)| k == name.as_ref())
                                .map(|(_, v)| v.into_owned())
                        })
                        .unwrap_or_default(),
                    Identity::Context(c) => match c {
                        ContextVar::SourceIp => f.source_ip.to_string(),
                        ContextVar::RouteKey => f.route_key.to_owned(),
                        ContextVar::HttpMethod => f.method.to_owned(),
                        ContextVar::Path => f.raw_path.to_owned(),
                        ContextVar::Stage => f.stage.to_owned(),
                    },
                };
                (!v.trim().is_empty()).then_some(v)
            })
            .collect()
    }

    /// AWS's payload format 2.0 event.
    pub fn payload(&self, f: &RequestFacts<'_>, identity: &[String]) -> Vec<u8> {
        let mut headers = Map::new();
        let mut cookies = Vec::new();
        for h in f.headers {
            let Ok(v) = std::str::from_utf8(h.value) else {
                continue;
            };
            let name = h.name.to_ascii_lowercase();
            if name == "cookie" {
                cookies.extend(v.split(';').map(|c| Value::String(c.trim().to_owned())));
                continue;
            }
            match headers.get_mut(&name) {
                Some(Value::String(prev)) => {
                    prev.push(',');
                    prev.push_str(v);
                }
                _ => {
                    headers.insert(name, Value::String(v.to_owned()));
                }
            }
        }
        let mut query = Map::new();
        if let Some(q) = f.query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                match query.get_mut(k.as_ref()) {
                    Some(Value::String(prev)) => {
                        prev.push(',');
                        prev.push_str(&v);
                    }
                    _ => {
                        query.insert(k.into_owned(), Value::String(v.into_owned()));
                    }
                }
            }
        }
        let now_ms = crate::clock::unix_ms();
        let (method, path) = f.route_key.split_once(' ').unwrap_or(("ANY", f.route_key));
        let event = json!({
            "version": "2.0",
            "type": "REQUEST",
            "routeArn": format!(
                "arn:aws:execute-api:local:000000000000:{}/{}/{}{}",
                f.api, f.stage, if f.route_key == "$default" { "$default" } else { method },
                if f.route_key == "$default" { "" } else { path }
            ),
            "identitySource": identity,
            "routeKey": f.route_key,
            "rawPath": f.raw_path,
            "rawQueryString": f.query.unwrap_or(""),
            "cookies": cookies,
            "headers": headers,
            "queryStringParameters": query,
            "requestContext": {
                "accountId": "000000000000",
                "apiId": f.api,
                "domainName": f.host,
                "http": {
                    "method": f.method,
                    "path": f.raw_path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": f.source_ip.to_string(),
                    "userAgent": crate::http::parse::header(f.headers, "user-agent")
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                },
                "requestId": f.request_id,
                "routeKey": f.route_key,
                "stage": f.stage,
                "time": String::from_utf8_lossy(&crate::clock::http_date(now_ms / 1000)),
                "timeEpoch": now_ms,
            },
            "pathParameters": f.path_params,
        });
        serde_json::to_vec(&event).unwrap_or_default()
    }

    /// Reads an answer: `{"isAuthorized": bool, "context": {...}}`.
    pub fn decide(&self, body: &[u8]) -> Result<Decision, &'static str> {
        let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON")?;
        let authorized = v
            .get("isAuthorized")
            .and_then(Value::as_bool)
            .ok_or("the answer has no boolean isAuthorized")?;
        let context = match v.get("context") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("the answer's context is not an object"),
        };
        let mut lines = Vec::new();
        if authorized {
            for (key, header) in self.forward.iter() {
                if let Some(v) = context.get(&**key) {
                    crate::policy::jwt::push_header(&mut lines, header, v);
                }
            }
        }
        Ok(Decision {
            authorized,
            lines: lines.into(),
            context,
        })
    }

    /// Calls the endpoint; the whole exchange within `timeout`.
    pub async fn call(&self, dial: &Dial<'_>, payload: &[u8]) -> Result<Decision, &'static str> {
        match monoio::time::timeout(self.timeout, self.exchange(dial, payload)).await {
            Ok(r) => r,
            Err(_) => Err("the authorizer did not answer in time"),
        }
    }

    async fn exchange(&self, dial: &Dial<'_>, payload: &[u8]) -> Result<Decision, &'static str> {
        let (status, _, body) = crate::upstream::connect::post(
            dial,
            &self.endpoint,
            &self.request_target,
            "application/json",
            payload,
            MAX_ANSWER_BYTES,
        )
        .await
        .map_err(|why| match why {
            "cannot connect" => "cannot connect to the authorizer",
            "cannot send" => "cannot send to the authorizer",
            "closed without answering" => "the authorizer closed without answering",
            "the answer is too large" => "the answer is too large",
            _ => "bad answer",
        })?;
        if status != 200 {
            tracing::warn!(authorizer = %self.name, status, "bad answer from the request authorizer");
            return Err("bad answer");
        }
        self.decide(&body)
    }
}
