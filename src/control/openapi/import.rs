//! `shardgate import openapi FILE`: an OpenAPI 3.0/3.1 or Swagger 2.0 document
//! with AWS's `x-amazon-apigateway-*` extensions (what the console, `aws
//! apigatewayv2 export-api` and `aws apigateway get-export` write) becomes a
//! config. What cannot be mapped is listed with its JSON pointer, never dropped
//! silently.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::control::openapi::context::{esc, quoted, Ctx, Scheme, PLACEHOLDER_URL};
use crate::control::openapi::integration::integration;

/// A config made from a document, and what of the document it does not serve.
pub struct Imported {
    /// The config, as JSON (written out as YAML).
    pub config: Value,
    /// `JSON pointer: why`, in document order.
    pub unmapped: Vec<String>,
    /// Mapped, but needing something of the user (`JSON pointer: what`).
    pub hints: Vec<String>,
}

const METHODS: [&str; 8] = [
    "get",
    "put",
    "post",
    "delete",
    "options",
    "head",
    "patch",
    "x-amazon-apigateway-any-method",
];

/// Reads a document: YAML or JSON.
pub fn parse_document(text: &str) -> Result<Value, String> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| format!("not YAML or JSON: {e}"))
}

/// Imports `doc`; `Err` when it is not an OpenAPI 3 or Swagger 2.0 document.
pub fn import(doc: &Value) -> Result<Imported, String> {
    let swagger2 = match (doc.get("openapi"), doc.get("swagger")) {
        (Some(Value::String(v)), _) if v.starts_with("3.") => false,
        (_, Some(Value::String(v))) if v == "2.0" => true,
        _ => {
            return Err(
                "not an OpenAPI 3.0/3.1 or Swagger 2.0 document (no `openapi: 3.x` or `swagger: \"2.0\"`)"
                    .into(),
            )
        }
    };
    let mut cx = Ctx {
        doc,
        swagger2,
        notes: Vec::new(),
        hints: Vec::new(),
        variables: BTreeMap::new(),
        schemes: BTreeMap::new(),
        authorizers: Vec::new(),
        region: find_region(doc),
    };
    let mut api = Map::new();
    let title = doc
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or("imported");
    api.insert("name".into(), Value::String(api_name(title)));
    api.insert("type".into(), "http".into());
    top_level(&mut cx, &mut api);
    security_schemes(&mut cx);
    let mut routes = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            path_item(&mut cx, path, item, &mut routes);
        }
    }
    if routes.is_empty() {
        cx.note(
            "/paths",
            "no route with an integration: the API answers 404",
        );
        routes.push(json!({
            "route": "$default",
            "integration": { "type": "mock", "status": 404, "body": "{\"message\":\"Not Found\"}" }
        }));
    }
    if !cx.authorizers.is_empty() {
        api.insert("authorizers".into(), Value::Array(cx.authorizers.clone()));
    }
    api.insert("routes".into(), Value::Array(routes));
    api.insert("stages".into(), stages(&mut cx));
    let config = json!({
        "listeners": [{ "name": "public", "bind": "127.0.0.1:8080" }],
        "apis": [Value::Object(api)],
    });
    Ok(Imported {
        config,
        unmapped: cx.notes,
        hints: cx.hints,
    })
}

/// An API name from a title: letters, digits, `-` and `_`.
fn api_name(title: &str) -> String {
    let mut out = String::new();
    for c in title.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "imported".into()
    } else {
        out
    }
}

/// The region of the first ARN or API endpoint in the document.
fn find_region(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            if let Some(at) = s.find(".execute-api.") {
                // An endpoint's host: ID.execute-api.REGION.amazonaws.com.
                let region = s[at + ".execute-api.".len()..].split('.').next()?;
                return (!region.is_empty()).then(|| region.to_owned());
            }
            let at = s.find("arn:aws:")?;
            let region = s[at..].split(':').nth(3)?;
            (!region.is_empty()).then(|| region.to_owned())
        }
        Value::Array(a) => a.iter().find_map(find_region),
        Value::Object(o) => o.values().find_map(find_region),
        _ => None,
    }
}

/// The document's own keys and AWS's API-wide extensions.
fn top_level(cx: &mut Ctx<'_>, api: &mut Map<String, Value>) {
    let Some(top) = cx.doc.as_object() else {
        return;
    };
    for (key, v) in top {
        let ptr = format!("/{}", esc(key));
        match key.as_str() {
            "openapi" | "swagger" | "info" | "servers" | "paths" | "components" | "security"
            | "externalDocs" | "host" | "basePath" | "schemes" | "consumes"
            | "produces" | "definitions" | "securityDefinitions" | "parameters" | "responses"
            | "x-amazon-apigateway-importexport-version"
            | "x-amazon-apigateway-request-validator"
            | "x-amazon-apigateway-request-validators"
            | "x-shardgate-stages" => {}
            "tags" => {
                for (ti, t) in v.as_array().into_iter().flatten().enumerate() {
                    for k in t.as_object().into_iter().flatten().map(|o| o.0) {
                        if k.starts_with("x-") {
                            cx.note(format!("/tags/{ti}/{}", esc(k)), "resource tag: not mapped");
                        }
                    }
                }
            }
            "x-amazon-apigateway-cors" => {
                if let Some(c) = cors(cx, &ptr, v) {
                    api.insert("cors".into(), c);
                }
            }
            "x-amazon-apigateway-gateway-responses" => {
                let r = gateway_responses(cx, &ptr, v);
                if !r.is_empty() {
                    api.insert("gateway_responses".into(), Value::Object(r));
                }
            }
            "x-amazon-apigateway-api-key-source" => {
                if v.as_str().is_some_and(|s| !s.eq_ignore_ascii_case("HEADER")) {
                    cx.note(
                        ptr,
                        "keys from an authorizer's usageIdentifierKey: shardgate reads x-api-key",
                    );
                }
            }
            "x-amazon-apigateway-binary-media-types" => cx.note(
                ptr,
                "not mapped: shardgate passes every body through as bytes (REST APIs' templates and 1.0 Lambda events are where AWS uses this list)",
            ),
            "x-amazon-apigateway-policy" => cx.note(
                ptr,
                "IAM resource policy not mapped: write apis[].resource_policy (CIDRs, domains)",
            ),
            other => cx.note(ptr, format!("{other}: not mapped")),
        }
    }
}

/// `x-amazon-apigateway-cors` → `cors`.
fn cors(cx: &mut Ctx<'_>, ptr: &str, v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let mut c = Map::new();
    for (key, x) in o {
        let name = match key.as_str() {
            "allowOrigins" => "allow_origins",
            "allowMethods" => "allow_methods",
            "allowHeaders" => "allow_headers",
            "exposeHeaders" => "expose_headers",
            "maxAge" => "max_age_s",
            "allowCredentials" => "allow_credentials",
            other => {
                cx.note(format!("{ptr}/{}", esc(other)), "not mapped");
                continue;
            }
        };
        c.insert(name.into(), x.clone());
    }
    Some(Value::Object(c))
}

/// `x-amazon-apigateway-gateway-responses` → `gateway_responses`.
fn gateway_responses(cx: &mut Ctx<'_>, ptr: &str, v: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(o) = v.as_object() else {
        return out;
    };
    for (kind, r) in o {
        let rptr = format!("{ptr}/{}", esc(kind));
        let mut g = Map::new();
        if let Some(s) = r.get("statusCode") {
            let status = s
                .as_u64()
                .or_else(|| s.as_str().and_then(|s| s.parse().ok()));
            match status {
                Some(n) => {
                    g.insert("status".into(), n.into());
                }
                None => cx.note(format!("{rptr}/statusCode"), "not a status code"),
            }
        }
        let mut headers = Map::new();
        for (k, val) in r
            .get("responseParameters")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let hptr = format!("{rptr}/responseParameters/{}", esc(k));
            match (
                k.strip_prefix("gatewayresponse.header."),
                val.as_str().and_then(quoted),
            ) {
                (Some(name), Some(text)) => {
                    headers.insert(name.to_ascii_lowercase(), text.into());
                }
                _ => cx.note(hptr, "only static header values ('text') are mapped"),
            }
        }
        if !headers.is_empty() {
            g.insert("headers".into(), Value::Object(headers));
        }
        if let Some(t) = r.get("responseTemplates").and_then(Value::as_object) {
            let body = t.get("application/json").or_else(|| t.values().next());
            if let Some(b) = body.and_then(Value::as_str) {
                if b.contains('#') {
                    cx.note(
                        format!("{rptr}/responseTemplates"),
                        "VTL directives not mapped: the body keeps its $context variables only",
                    );
                }
                g.insert("body".into(), b.into());
            }
            if t.len() > 1 {
                cx.note(
                    format!("{rptr}/responseTemplates"),
                    "one template is used (application/json, else the first)",
                );
            }
        }
        for k in r.as_object().into_iter().flatten().map(|o| o.0) {
            if !matches!(
                k.as_str(),
                "statusCode" | "responseParameters" | "responseTemplates" | "defaultResponse"
            ) {
                cx.note(format!("{rptr}/{}", esc(k)), "not mapped");
            }
        }
        out.insert(kind.clone(), Value::Object(g));
    }
    out
}

/// `$request.header.Authorization` / `method.request.header.Authorization` →
/// `header.authorization`; `None` for other sources.
fn identity_source(s: &str) -> Option<String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("$request.")
        .or_else(|| s.strip_prefix("method.request."))?;
    if let Some(h) = rest.strip_prefix("header.") {
        return Some(format!("header.{}", h.to_ascii_lowercase()));
    }
    rest.strip_prefix("querystring.")
        .map(|q| format!("query.{q}"))
}

/// The security schemes: API keys and AWS's authorizers.
fn security_schemes(cx: &mut Ctx<'_>) {
    let (base, schemes) = if cx.swagger2 {
        ("/securityDefinitions", cx.doc.get("securityDefinitions"))
    } else {
        (
            "/components/securitySchemes",
            cx.doc.pointer("/components/securitySchemes"),
        )
    };
    let Some(schemes) = schemes.and_then(Value::as_object) else {
        return;
    };
    for (name, s) in schemes {
        let ptr = format!("{base}/{}", esc(name));
        let authtype = s
            .get("x-amazon-apigateway-authtype")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(a) = s.get("x-amazon-apigateway-authorizer") {
            authorizer(cx, &ptr, name, a);
        } else if authtype.eq_ignore_ascii_case("awsSigv4") {
            let region = cx.region.clone().unwrap_or_else(|| "us-east-1".into());
            cx.authorizers
                .push(json!({ "name": name, "type": "sigv4", "region": region }));
            cx.schemes
                .insert(name.clone(), Scheme::Authorizer(name.clone()));
            cx.hint(
                &ptr,
                format!("AWS_IAM → sigv4 authorizer {name:?} in {region}: add access keys (`access_keys:` or the management API); IAM policies are not read"),
            );
        } else if s.get("type").and_then(Value::as_str) == Some("apiKey")
            && s.get("in").and_then(Value::as_str) == Some("header")
            && s.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case("x-api-key"))
        {
            cx.schemes.insert(name.clone(), Scheme::ApiKey);
        } else {
            cx.note(
                ptr,
                "no x-amazon-apigateway-authorizer: not enforced (AWS does not enforce it either)",
            );
        }
    }
}

/// `x-amazon-apigateway-authorizer` → one of the API's authorizers.
fn authorizer(cx: &mut Ctx<'_>, ptr: &str, name: &str, a: &Value) {
    let aptr = format!("{ptr}/x-amazon-apigateway-authorizer");
    let kind = a
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let sources: Vec<String> = match a.get("identitySource") {
        Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
        Some(Value::Array(v)) => v
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let mapped: Vec<String> = sources.iter().filter_map(|s| identity_source(s)).collect();
    if mapped.len() < sources.len() {
        cx.note(
            format!("{aptr}/identitySource"),
            "only header and query string sources are mapped",
        );
    }
    match kind.as_str() {
        "jwt" => {
            let issuer = a
                .pointer("/jwtConfiguration/issuer")
                .and_then(Value::as_str);
            let audience = a
                .pointer("/jwtConfiguration/audience")
                .cloned()
                .unwrap_or(json!([]));
            let Some(issuer) = issuer else {
                cx.note(aptr, "a JWT authorizer without an issuer: not mapped");
                return;
            };
            let mut v =
                json!({ "name": name, "type": "jwt", "issuer": issuer, "audience": audience });
            if let Some(src) = mapped.first().filter(|s| *s != "header.authorization") {
                v["identity_source"] = src.clone().into();
            }
            cx.authorizers.push(v);
        }
        "request" | "token" => {
            let mut v = json!({
                "name": name,
                "type": "request",
                "uri": format!("{PLACEHOLDER_URL}/authorize"),
                "identity_sources": mapped,
            });
            if let Some(ttl) = a
                .get("authorizerResultTtlInSeconds")
                .and_then(Value::as_u64)
            {
                v["ttl_s"] = ttl.into();
            }
            cx.authorizers.push(v);
            let function = a
                .get("authorizerUri")
                .and_then(Value::as_str)
                .unwrap_or("its Lambda function");
            cx.note(
                aptr,
                format!("Lambda authorizer {name:?} ({function}) → request authorizer with the placeholder uri {PLACEHOLDER_URL}/authorize: point it at an HTTP service that answers as the function does"),
            );
        }
        "cognito_user_pools" => {
            cx.note(
                aptr,
                "Cognito user pool authorizer: write a jwt authorizer (issuer https://cognito-idp.REGION.amazonaws.com/POOL_ID, audience: the app client id)",
            );
            return;
        }
        other => {
            cx.note(aptr, format!("authorizer type {other:?}: not mapped"));
            return;
        }
    }
    cx.schemes
        .insert(name.to_owned(), Scheme::Authorizer(name.to_owned()));
}

/// One path's operations → routes.
fn path_item(cx: &mut Ctx<'_>, path: &str, item: &Value, routes: &mut Vec<Value>) {
    let pptr = format!("/paths/{}", esc(path));
    let Some(ops) = item.as_object() else {
        return;
    };
    for (key, op) in ops {
        let optr = format!("{pptr}/{}", esc(key));
        if !METHODS.contains(&key.as_str()) {
            if key.starts_with("x-") {
                cx.note(optr, "not mapped");
            }
            continue;
        }
        let method = if key == "x-amazon-apigateway-any-method" {
            "ANY".to_owned()
        } else {
            key.to_ascii_uppercase()
        };
        let default_route =
            path == "$default" || op.get("isDefaultRoute").and_then(Value::as_bool) == Some(true);
        let route_key = if default_route {
            "$default".to_owned()
        } else {
            format!("{method} {path}")
        };
        let Some(i) = op.get("x-amazon-apigateway-integration") else {
            cx.note(
                optr,
                "no x-amazon-apigateway-integration: not served (the route answers 404)",
            );
            continue;
        };
        let Some(integration) =
            integration(cx, &format!("{optr}/x-amazon-apigateway-integration"), i)
        else {
            continue;
        };
        let mut route = json!({ "route": route_key, "integration": integration });
        security(cx, &optr, op, &mut route);
        if let Some(v) = validator(cx, &optr, item, op) {
            route["validate"] = v;
        }
        for k in op.as_object().into_iter().flatten().map(|o| o.0) {
            if k.starts_with("x-")
                && !matches!(
                    k.as_str(),
                    "x-amazon-apigateway-integration"
                        | "x-amazon-apigateway-request-validator"
                        | "x-shardgate-upstream"
                )
            {
                cx.note(format!("{optr}/{}", esc(k)), "not mapped");
            }
        }
        if let Some(u) = op.get("x-shardgate-upstream").and_then(Value::as_str) {
            route["integration"]["upstream"] = u.into();
        }
        routes.push(route);
    }
}

/// The route's security requirement: API key, authorizer and scopes.
fn security(cx: &mut Ctx<'_>, optr: &str, op: &Value, route: &mut Value) {
    let reqs = op
        .get("security")
        .or_else(|| cx.doc.get("security"))
        .and_then(Value::as_array);
    let mut authorizer: Option<(String, Value)> = None;
    for req in reqs.into_iter().flatten() {
        for (name, scopes) in req.as_object().into_iter().flatten() {
            match cx.schemes.get(name).cloned() {
                Some(Scheme::ApiKey) => route["api_key_required"] = true.into(),
                Some(Scheme::Authorizer(a)) => {
                    if authorizer.is_some() {
                        cx.note(
                            format!("{optr}/security"),
                            format!("{name}: one authorizer per route; the first is used"),
                        );
                    } else {
                        authorizer = Some((a, scopes.clone()));
                    }
                }
                None => {}
            }
        }
    }
    if let Some((a, scopes)) = authorizer {
        route["authorizer"] = a.clone().into();
        let jwt = cx
            .authorizers
            .iter()
            .any(|x| x["name"] == a.as_str() && x["type"] == "jwt");
        if jwt && scopes.as_array().is_some_and(|s| !s.is_empty()) {
            route["scopes"] = scopes;
        }
    }
}

/// Follows `$ref`s inside the document (schemas are written out whole: a
/// config's body schema stands alone).
fn resolve(doc: &Value, v: &Value, depth: usize) -> Value {
    if depth > 32 {
        return v.clone();
    }
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                if let Some(target) = r.strip_prefix('#').and_then(|p| doc.pointer(p)) {
                    return resolve(doc, target, depth + 1);
                }
            }
            Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), resolve(doc, x, depth + 1)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve(doc, x, depth + 1)).collect()),
        _ => v.clone(),
    }
}

/// AWS's request validators (REST): the route's required parameters and body
/// model → `validate`.
fn validator(cx: &mut Ctx<'_>, optr: &str, item: &Value, op: &Value) -> Option<Value> {
    let name = op
        .get("x-amazon-apigateway-request-validator")
        .or_else(|| cx.doc.get("x-amazon-apigateway-request-validator"))
        .and_then(Value::as_str)?;
    let Some(v) = cx
        .doc
        .get("x-amazon-apigateway-request-validators")
        .and_then(|vs| vs.get(name))
    else {
        cx.note(
            format!("{optr}/x-amazon-apigateway-request-validator"),
            format!("no request validator {name:?} in x-amazon-apigateway-request-validators"),
        );
        return None;
    };
    let body = v.get("validateRequestBody").and_then(Value::as_bool) == Some(true);
    let params = v.get("validateRequestParameters").and_then(Value::as_bool) == Some(true);
    let mut out = Map::new();
    if params {
        let mut required = BTreeSet::new();
        let declared = item
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(
                op.get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        for p in declared {
            let p = resolve(cx.doc, p, 0);
            if p.get("required").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let Some(n) = p.get("name").and_then(Value::as_str) else {
                continue;
            };
            match p.get("in").and_then(Value::as_str) {
                Some("header") => required.insert(format!("header.{}", n.to_ascii_lowercase())),
                Some("query") => required.insert(format!("query.{n}")),
                _ => false,
            };
        }
        if !required.is_empty() {
            out.insert("required".into(), json!(required));
        }
    }
    if body {
        let schema = if cx.swagger2 {
            op.get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("in").and_then(Value::as_str) == Some("body"))
                .and_then(|p| p.get("schema"))
        } else {
            op.pointer("/requestBody/content/application~1json/schema")
        };
        if let Some(s) = schema {
            let mut s = resolve(cx.doc, s, 0);
            if let Some(o) = s.as_object_mut() {
                o.remove("$schema");
                o.remove("title");
            }
            out.insert("body_schema".into(), s);
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// The stages: `x-shardgate-stages` (an export's), else one from the
/// document's base path (`$default` when none), with the stage variables the
/// document refers to.
fn stages(cx: &mut Ctx<'_>) -> Value {
    if let Some(Value::Array(s)) = cx.doc.get("x-shardgate-stages") {
        return Value::Array(s.clone());
    }
    let base = if cx.swagger2 {
        cx.doc
            .get("basePath")
            .and_then(Value::as_str)
            .map(str::to_owned)
    } else {
        cx.doc
            .pointer("/servers/0/variables/basePath/default")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = base
        .as_deref()
        .map(|b| b.trim_matches('/'))
        .filter(|b| {
            !b.is_empty()
                && b.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
        .unwrap_or("$default")
        .to_owned();
    let mut stage = json!({ "name": name });
    if !cx.variables.is_empty() {
        let vars = cx.variables.clone();
        for (k, v) in &vars {
            cx.note(
                format!("stage variable {k}"),
                format!("referenced by the document; its value is the placeholder {v:?}: set it in stages[0].variables"),
            );
        }
        stage["variables"] = json!(vars);
    }
    json!([stage])
}

/// The config as YAML, each mapping's keys in the order a person writes them
/// (`name`, `type`, `route` first), the rest sorted.
pub fn to_yaml(config: &Value) -> Result<String, String> {
    const FIRST: [&str; 8] = [
        "listeners",
        "name",
        "type",
        "route",
        "bind",
        "issuer",
        "status",
        "integration",
    ];
    yaml_in_order(config, &FIRST)
}

/// `v` as YAML, the keys of each mapping in `first`'s order, then sorted.
pub fn yaml_in_order(v: &Value, first: &[&str]) -> Result<String, String> {
    serde_yaml_ng::to_string(&ordered(v, first)).map_err(|e| e.to_string())
}

fn ordered(v: &Value, first: &[&str]) -> serde_yaml_ng::Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by_key(|k| {
                (
                    first.iter().position(|f| f == k).unwrap_or(first.len()),
                    (*k).clone(),
                )
            });
            let mut m = serde_yaml_ng::Mapping::new();
            for k in keys {
                m.insert(k.as_str().into(), ordered(&o[k], first));
            }
            serde_yaml_ng::Value::Mapping(m)
        }
        Value::Array(a) => {
            serde_yaml_ng::Value::Sequence(a.iter().map(|x| ordered(x, first)).collect())
        }
        other => serde_yaml_ng::to_value(other).unwrap_or(serde_yaml_ng::Value::Null),
    }
}
