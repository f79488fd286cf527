//! Lambda proxy integration payloads as AWS writes them (`aws-apigw.md` §5.3–5.5):
//! the 1.0 and 2.0 events built from a request, and the function's answer turned
//! into a response (statusCode, headers, multiValueHeaders, cookies, base64
//! bodies, 2.0's inference for a bare return value).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::upstream::mapping::Lookup;

const ACCOUNT: &str = "000000000000";

/// A JWT's claims and scopes.
pub type Claims<'a> = (&'a Map<String, Value>, &'a [Box<str>]);

/// What an event is made of, gathered once from the request.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as received (with the stage segment).
    pub raw_path: &'a str,
    /// The path the route matched (without the stage).
    pub routed_path: &'a str,
    pub query: Option<&'a str>,
    /// `(name as received, value)`, after request mappings.
    pub headers: Vec<(String, String)>,
    pub path_params: Vec<(String, String)>,
    pub stage_variables: &'a BTreeMap<String, String>,
    pub api: &'a str,
    pub stage: &'a str,
    pub route_key: &'a str,
    /// The route key's path (`/pets/{id}`), for 1.0's `resource`.
    pub resource: &'a str,
    pub request_id: String,
    pub source_ip: String,
    pub body: Option<&'a [u8]>,
    /// A JWT's claims and scopes.
    pub claims: Option<Claims<'a>>,
    pub context: Option<&'a Map<String, Value>>,
    pub iam_key: Option<&'a str>,
    pub client_cert: Option<&'a [u8]>,
    pub now_ms: u64,
}

impl Request<'_> {
    fn header_joined(&self, name: &str) -> Option<String> {
        crate::upstream::mapping::joined_header(&self.headers, name)
    }

    fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// AWS's rule (observed): text for `text/*`, JSON, XML and JavaScript; base64
    /// for everything else, a missing type included.
    fn body_value(&self) -> (Value, bool) {
        let Some(body) = self.body else {
            return (Value::Null, false);
        };
        let ct = self
            .header_joined("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        let text = mime.starts_with("text/")
            || matches!(
                mime,
                "application/json" | "application/xml" | "application/javascript"
            )
            || mime.ends_with("+json")
            || mime.ends_with("+xml");
        match (text, std::str::from_utf8(body)) {
            (true, Ok(s)) => (Value::String(s.to_owned()), false),
            _ => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                true,
            ),
        }
    }

    fn time(&self) -> String {
        let mut out = Vec::new();
        crate::observe::accesslog::clf_time(&mut out, self.now_ms / 1000);
        String::from_utf8(out).unwrap_or_default()
    }

    fn domain(&self) -> (String, String) {
        let host = self.header_joined("host").unwrap_or_default();
        let name = host.split(':').next().unwrap_or("").to_owned();
        let prefix = name.split('.').next().unwrap_or("").to_owned();
        (name, prefix)
    }

    fn client_cert(&self) -> Option<Value> {
        let lines = std::str::from_utf8(self.client_cert?).ok()?;
        let get = |n: &str| {
            lines.lines().find_map(|l| {
                l.strip_prefix(n)
                    .and_then(|r| r.strip_prefix(": "))
                    .map(|v| v.trim_end().to_owned())
            })
        };
        Some(json!({
            "clientCertPem": "",
            "subjectDN": get("x-client-cert-subject")?,
            "issuerDN": get("x-client-cert-issuer")?,
            "serialNumber": get("x-client-cert-serial")?,
            "validity": {
                "notBefore": get("x-client-cert-not-before")?,
                "notAfter": get("x-client-cert-not-after")?,
            }
        }))
    }

    fn path_parameters(&self) -> Option<Value> {
        (!self.path_params.is_empty()).then(|| {
            Value::Object(
                self.path_params
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        })
    }

    fn stage_variables(&self) -> Option<Value> {
        (!self.stage_variables.is_empty()).then(|| json!(self.stage_variables))
    }

    /// The payload format 2.0 event.
    pub fn event_v2(&self) -> Vec<u8> {
        let mut headers = Map::new();
        let mut cookies: Vec<Value> = Vec::new();
        for (n, v) in &self.headers {
            let n = n.to_ascii_lowercase();
            if n == "cookie" {
                cookies.extend(
                    v.split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| Value::String(c.to_owned())),
                );
                continue;
            }
            match headers.get_mut(&n) {
                Some(Value::String(old)) => {
                    old.push(',');
                    old.push_str(v);
                }
                _ => {
                    headers.insert(n, Value::String(v.clone()));
                }
            }
        }
        let mut query = Map::new();
        for (k, v) in self.query_pairs() {
            match query.get_mut(&k) {
                Some(Value::String(old)) => {
                    old.push(',');
                    old.push_str(&v);
                }
                _ => {
                    query.insert(k, Value::String(v));
                }
            }
        }
        let (domain, prefix) = self.domain();
        let mut http = Map::new();
        http.insert("method".into(), self.method.into());
        http.insert("path".into(), self.raw_path.into());
        http.insert("protocol".into(), "HTTP/1.1".into());
        http.insert("sourceIp".into(), self.source_ip.clone().into());
        http.insert(
            "userAgent".into(),
            self.header_joined("user-agent").unwrap_or_default().into(),
        );
        let mut ctx = Map::new();
        ctx.insert("accountId".into(), ACCOUNT.into());
        ctx.insert("apiId".into(), self.api.into());
        ctx.insert("domainName".into(), domain.into());
        ctx.insert("domainPrefix".into(), prefix.into());
        ctx.insert("http".into(), Value::Object(http));
        ctx.insert("requestId".into(), self.request_id.as_str().into());
        ctx.insert("routeKey".into(), self.route_key.into());
        ctx.insert("stage".into(), self.stage.into());
        ctx.insert("time".into(), self.time().into());
        ctx.insert("timeEpoch".into(), self.now_ms.into());
        if let Some(cert) = self.client_cert() {
            ctx.insert("authentication".into(), json!({ "clientCert": cert }));
        }
        if let Some((claims, scopes)) = self.claims {
            ctx.insert(
                "authorizer".into(),
                json!({ "jwt": { "claims": claims, "scopes": scopes.iter().map(|s| &**s).collect::<Vec<_>>() } }),
            );
        } else if let Some(c) = self.context {
            ctx.insert("authorizer".into(), json!({ "lambda": c }));
        } else if let Some(key) = self.iam_key {
            ctx.insert("authorizer".into(), iam(key));
        }
        let mut e = Map::new();
        e.insert("version".into(), "2.0".into());
        e.insert("routeKey".into(), self.route_key.into());
        e.insert("rawPath".into(), self.raw_path.into());
        e.insert("rawQueryString".into(), self.query.unwrap_or("").into());
        if !cookies.is_empty() {
            e.insert("cookies".into(), Value::Array(cookies));
        }
        e.insert("headers".into(), Value::Object(headers));
        if !query.is_empty() {
            e.insert("queryStringParameters".into(), Value::Object(query));
        }
        if let Some(p) = self.path_parameters() {
            e.insert("pathParameters".into(), p);
        }
        if let Some(v) = self.stage_variables() {
            e.insert("stageVariables".into(), v);
        }
        e.insert("requestContext".into(), Value::Object(ctx));
        let (body, b64) = self.body_value();
        if !body.is_null() {
            e.insert("body".into(), body);
        }
        e.insert("isBase64Encoded".into(), b64.into());
        Value::Object(e).to_string().into_bytes()
    }

    /// The payload format 1.0 event (REST's proxy event, with `version`).
    pub fn event_v1(&self) -> Vec<u8> {
        let mut single = Map::new();
        let mut multi: Map<String, Value> = Map::new();
        for (n, v) in &self.headers {
            single.insert(n.clone(), Value::String(v.clone()));
            match multi.get_mut(n) {
                Some(Value::Array(a)) => a.push(Value::String(v.clone())),
                _ => {
                    multi.insert(n.clone(), json!([v]));
                }
            }
        }
        let mut q_single = Map::new();
        let mut q_multi: Map<String, Value> = Map::new();
        for (k, v) in self.query_pairs() {
            q_single.insert(k.clone(), Value::String(v.clone()));
            match q_multi.get_mut(&k) {
                Some(Value::Array(a)) => a.push(Value::String(v)),
                _ => {
                    q_multi.insert(k, json!([v]));
                }
            }
        }
        let or_null = |m: Map<String, Value>| {
            if m.is_empty() {
                Value::Null
            } else {
                Value::Object(m)
            }
        };
        let (domain, prefix) = self.domain();
        let authorizer = if let Some((claims, scopes)) = self.claims {
            json!({ "claims": claims, "scopes": scopes.iter().map(|s| &**s).collect::<Vec<_>>() })
        } else if let Some(c) = self.context {
            let mut a = c.clone();
            a.entry("principalId")
                .or_insert(Value::String(String::new()));
            Value::Object(a)
        } else {
            json!({ "claims": null, "scopes": null })
        };
        let mut identity = json!({
            "accessKey": null, "accountId": null, "apiKey": null, "apiKeyId": null,
            "caller": null, "cognitoAuthenticationProvider": null,
            "cognitoAuthenticationType": null, "cognitoIdentityId": null,
            "cognitoIdentityPoolId": null, "principalOrgId": null,
            "sourceIp": self.source_ip, "user": null,
            "userAgent": self.header_joined("user-agent").unwrap_or_default(),
            "userArn": null,
        });
        if let Some(key) = self.iam_key {
            identity["accessKey"] = key.into();
            identity["accountId"] = ACCOUNT.into();
            identity["caller"] = key.into();
            identity["user"] = key.into();
            identity["userArn"] = format!("arn:aws:iam::{ACCOUNT}:user/{key}").into();
        }
        if let Some(cert) = self.client_cert() {
            identity["clientCert"] = cert;
        }
        let ctx = json!({
            "accountId": ACCOUNT,
            "apiId": self.api,
            "domainName": domain,
            "domainPrefix": prefix,
            "extendedRequestId": self.request_id,
            "httpMethod": self.method,
            "identity": identity,
            "path": self.raw_path,
            "protocol": "HTTP/1.1",
            "requestId": self.request_id,
            "requestTime": self.time(),
            "requestTimeEpoch": self.now_ms,
            "resourceId": self.route_key,
            "resourcePath": self.resource,
            "routeKey": self.route_key,
            "stage": self.stage,
            "authorizer": authorizer,
        });
        let (body, b64) = self.body_value();
        let e = json!({
            "version": "1.0",
            "resource": self.resource,
            "path": self.routed_path,
            "httpMethod": self.method,
            "headers": or_null(single),
            "multiValueHeaders": or_null(multi),
            "queryStringParameters": or_null(q_single),
            "multiValueQueryStringParameters": or_null(q_multi),
            "requestContext": ctx,
            "pathParameters": self.path_parameters().unwrap_or(Value::Null),
            "stageVariables": self.stage_variables().unwrap_or(Value::Null),
            "body": body,
            "isBase64Encoded": b64,
        });
        e.to_string().into_bytes()
    }
}

fn iam(key: &str) -> Value {
    json!({ "iam": {
        "accessKey": key, "accountId": ACCOUNT, "callerId": key,
        "cognitoIdentity": null, "principalOrgId": null,
        "userArn": format!("arn:aws:iam::{ACCOUNT}:user/{key}"), "userId": key,
    }})
}

impl Lookup for Request<'_> {
    fn header(&self, name: &str) -> Option<String> {
        self.header_joined(name)
    }
    fn query(&self, name: &str) -> Option<String> {
        let vals: Vec<String> = self
            .query_pairs()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect();
        (!vals.is_empty()).then(|| vals.join(","))
    }
    fn body(&self) -> Option<&[u8]> {
        self.body
    }
    fn path(&self) -> Option<String> {
        Some(self.routed_path.to_owned())
    }
    fn path_param(&self, name: &str) -> Option<String> {
        self.path_params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn context(&self, name: &str) -> Option<String> {
        let (domain, prefix) = self.domain();
        Some(match name {
            "requestId" | "extendedRequestId" => self.request_id.clone(),
            "stage" => self.stage.to_owned(),
            "apiId" => self.api.to_owned(),
            "accountId" => ACCOUNT.to_owned(),
            "routeKey" => self.route_key.to_owned(),
            "httpMethod" => self.method.to_owned(),
            "path" => self.raw_path.to_owned(),
            "protocol" => "HTTP/1.1".to_owned(),
            "domainName" => domain,
            "domainPrefix" => prefix,
            "requestTime" => self.time(),
            "requestTimeEpoch" => self.now_ms.to_string(),
            "identity.sourceIp" => self.source_ip.clone(),
            "identity.userAgent" => self.header_joined("user-agent")?,
            other => {
                if let Some(c) = other.strip_prefix("authorizer.claims.") {
                    return self.claims.and_then(|(m, _)| m.get(c)).map(text);
                }
                if let Some(c) = other.strip_prefix("authorizer.") {
                    return self.context.and_then(|m| m.get(c)).map(text);
                }
                return None;
            }
        })
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A function's answer as a response.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `(lower-case name, value)`, `set-cookie` once per cookie.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why an answer is malformed (logged; the client gets a 502).
pub type Malformed = String;

fn header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Headers the gateway sets itself: a function's are dropped.
fn gateway_header(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "date"
            | "apigw-requestid"
            | "keep-alive"
            | "upgrade"
            | "trailer"
            | "te"
    )
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The function's payload as a response (`v2`: payload format 2.0's rules).
pub fn answer(payload: &[u8], v2: bool) -> Result<Answer, Malformed> {
    let doc: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let structured = doc.as_object().filter(|o| o.contains_key("statusCode"));
    let Some(obj) = structured else {
        if !v2 {
            return Err("payload format 1.0 needs statusCode".into());
        }
        // 2.0's inference: the output is the body of a 200 JSON response.
        let body = match &doc {
            Value::String(s) => s.clone().into_bytes(),
            _ => payload.to_vec(),
        };
        return Ok(Answer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        });
    };
    let status = obj
        .get("statusCode")
        .and_then(|s| match s {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .filter(|s| (100..=599).contains(s) && !(101..200).contains(s))
        .ok_or("statusCode is not a status code")? as u16;
    let mut headers: Vec<(String, String)> = Vec::new();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (n, v) in m {
                let v = scalar(v).ok_or_else(|| format!("header {n:?} is not a string"))?;
                headers.push((n.to_ascii_lowercase(), v));
            }
        }
        Some(_) => return Err("headers is not an object".into()),
    }
    if !v2 {
        match obj.get("multiValueHeaders") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (n, vs) in m {
                    let n = n.to_ascii_lowercase();
                    let Value::Array(vs) = vs else {
                        return Err(format!("multiValueHeaders {n:?} is not a list"));
                    };
                    // Multi-value wins over the single value of the same name.
                    headers.retain(|(h, _)| *h != n);
                    for v in vs {
                        let v = scalar(v)
                            .ok_or_else(|| format!("multiValueHeaders {n:?} has a non-string"))?;
                        headers.push((n.clone(), v));
                    }
                }
            }
            Some(_) => return Err("multiValueHeaders is not an object".into()),
        }
    }
    if v2 {
        match obj.get("cookies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(cs)) => {
                for c in cs {
                    let c = c.as_str().ok_or("cookies holds a non-string")?;
                    headers.push(("set-cookie".into(), c.to_owned()));
                }
            }
            Some(_) => return Err("cookies is not a list".into()),
        }
    }
    for (n, v) in &headers {
        if !header_ok(n, v) {
            return Err(format!("header {n:?} is not a valid header"));
        }
    }
    headers.retain(|(n, _)| !gateway_header(n));
    if !headers.iter().any(|(n, _)| n == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let b64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("isBase64Encoded is not a boolean".into()),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if b64 => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|_| "body is not base64")?,
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(other) if v2 => other.to_string().into_bytes(),
        Some(_) => return Err("body is not a string".into()),
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_aws() {
        let a = answer(br#""Hello from Lambda!""#, true).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice()),
            (200, &b"Hello from Lambda!"[..])
        );
        let a = answer(br#"{ "message": "hi" }"#, true).unwrap();
        assert_eq!(a.body, br#"{ "message": "hi" }"#);
        assert_eq!(
            a.headers,
            vec![("content-type".into(), "application/json".into())]
        );
        let a = answer(
            br#"{"statusCode":201,"headers":{"X-A":"1"},"cookies":["a=1","b=2"],"body":"aGk=","isBase64Encoded":true}"#,
            true,
        )
        .unwrap();
        assert_eq!(a.status, 201);
        assert_eq!(a.body, b"hi");
        assert!(a.headers.contains(&("set-cookie".into(), "b=2".into())));
        assert!(a.headers.contains(&("x-a".into(), "1".into())));
        let a = answer(
            br#"{"statusCode":200,"headers":{"x-a":"1"},"multiValueHeaders":{"x-a":["2","3"]},"body":"b"}"#,
            false,
        )
        .unwrap();
        assert_eq!(
            a.headers.iter().filter(|(n, _)| n == "x-a").count(),
            2,
            "multiValueHeaders wins: {:?}",
            a.headers
        );
        assert!(answer(br#"{"body":"x"}"#, false).is_err());
        assert!(answer(b"not json", true).is_err());
        assert!(answer(br#"{"statusCode":"abc"}"#, true).is_err());
        assert!(answer(br#"{"statusCode":200,"headers":{"x":"a\nb"}}"#, true).is_err());
    }
}
