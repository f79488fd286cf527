//! `shardgate export openapi --config FILE --api NAME`: one API of a config as
//! an OpenAPI 3.0 document with AWS's `x-amazon-apigateway-*` extensions, as
//! `aws apigatewayv2 export-api` writes them, which AWS's import and
//! `shardgate import openapi` read back. What only shardgate has (upstream
//! groups, stages and their variables) rides in `x-shardgate-*` extensions.

use serde_json::{json, Map, Value};

use crate::config::{ApiFile, AuthorizerFile, ConfigFile, IntegrationFile, RouteFile};

/// The document and what it could not say as AWS would (`what: why`).
pub struct Exported {
    pub document: Value,
    pub notes: Vec<String>,
}

/// `api` of `cfg` as an OpenAPI 3.0.1 document.
pub fn export(cfg: &ConfigFile, api: &str) -> Result<Exported, String> {
    let Some(a) = cfg.apis.iter().flatten().find(|a| a.name == api) else {
        let names: Vec<&str> = cfg.apis.iter().flatten().map(|a| a.name.as_str()).collect();
        return Err(format!("no API {api:?} in the config (it has {names:?})"));
    };
    if a.kind != "http" {
        return Err(format!(
            "API {api:?} is a {} API: OpenAPI export is for HTTP APIs (as AWS's export-api)",
            a.kind
        ));
    }
    let mut notes = Vec::new();
    let mut paths = Map::new();
    let mut any_validator = false;
    for r in a.routes.iter().flatten() {
        let (method, path) = match r.route.split_once(' ') {
            Some((m, p)) => (m.to_owned(), p.to_owned()),
            None => ("ANY".to_owned(), "$default".to_owned()),
        };
        let key = if method == "ANY" {
            "x-amazon-apigateway-any-method".to_owned()
        } else {
            method.to_ascii_lowercase()
        };
        let mut op = operation(a, r, &path, &mut notes);
        if let Some(v) = &r.validate {
            any_validator = true;
            validate(&mut op, v);
        }
        if r.route == "$default" {
            op["isDefaultRoute"] = true.into();
        }
        let item = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[key] = op;
    }
    let mut doc = json!({
        "openapi": "3.0.1",
        "info": {
            "title": a.name,
            "version": format!("shardgate {}", env!("CARGO_PKG_VERSION")),
        },
        "servers": [{
            "url": "http://127.0.0.1:8080/{basePath}",
            "variables": { "basePath": { "default": first_stage(a) } },
        }],
        "paths": paths,
        "x-amazon-apigateway-importexport-version": "1.0",
    });
    let schemes = security_schemes(a, &mut notes);
    if !schemes.is_empty() {
        doc["components"] = json!({ "securitySchemes": schemes });
    }
    if let Some(c) = &a.cors {
        let mut v = json!({
            "allowOrigins": c.allow_origins,
            "allowMethods": c.allow_methods,
            "allowHeaders": c.allow_headers,
            "exposeHeaders": c.expose_headers,
            "allowCredentials": c.allow_credentials,
        });
        if let Some(m) = c.max_age_s {
            v["maxAge"] = m.into();
        }
        doc["x-amazon-apigateway-cors"] = v;
    }
    if !a.gateway_responses.is_empty() {
        let mut g = Map::new();
        for (kind, r) in &a.gateway_responses {
            let mut v = Map::new();
            if let Some(s) = r.status {
                v.insert("statusCode".into(), s.to_string().into());
            }
            if !r.headers.is_empty() {
                let params: Map<String, Value> = r
                    .headers
                    .iter()
                    .map(|(k, x)| {
                        (
                            format!("gatewayresponse.header.{k}"),
                            format!("'{x}'").into(),
                        )
                    })
                    .collect();
                v.insert("responseParameters".into(), Value::Object(params));
            }
            if let Some(b) = &r.body {
                v.insert("responseTemplates".into(), json!({ "application/json": b }));
            }
            g.insert(kind.clone(), Value::Object(v));
        }
        doc["x-amazon-apigateway-gateway-responses"] = Value::Object(g);
    }
    if any_validator {
        doc["x-amazon-apigateway-request-validators"] = json!({
            "shardgate": { "validateRequestBody": true, "validateRequestParameters": true }
        });
    }
    let stages: Vec<Value> = a
        .stages
        .iter()
        .flatten()
        .map(|s| {
            let mut v = json!({ "name": s.name });
            if !s.variables.is_empty() {
                v["variables"] = json!(s.variables);
            }
            v
        })
        .collect();
    doc["x-shardgate-stages"] = Value::Array(stages);
    for what in [
        a.resource_policy.as_ref().map(|_| "resource_policy"),
        (!a.trusted_proxies.is_empty()).then_some("trusted_proxies"),
    ]
    .into_iter()
    .flatten()
    {
        notes.push(format!(
            "{what}: not in the document (AWS writes IAM policies there)"
        ));
    }
    Ok(Exported {
        document: doc,
        notes,
    })
}

fn first_stage(a: &ApiFile) -> String {
    a.stages
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .find(|n| *n != "$default")
        .unwrap_or("")
        .to_owned()
}

/// `${stage_variables.x}` → `${stageVariables.x}`.
fn aws_vars(s: &str) -> String {
    s.replace("${stage_variables.", "${stageVariables.")
}

/// One route as an operation.
fn operation(a: &ApiFile, r: &RouteFile, path: &str, notes: &mut Vec<String>) -> Value {
    let mut op = json!({
        "responses": { "default": { "description": format!("Default response for {}", r.route) } },
    });
    // Path parameters, as AWS's export declares them.
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({
                "name": name.trim_end_matches('+'),
                "in": "path",
                "required": true,
                "schema": { "type": "string" },
            })
        })
        .collect();
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    let mut security = Map::new();
    if let Some(name) = &r.authorizer {
        security.insert(name.clone(), json!(r.scopes));
    }
    if r.api_key_required == Some(true) {
        security.insert("api_key".into(), json!([]));
    }
    if !security.is_empty() {
        op["security"] = json!([security]);
    }
    op["x-amazon-apigateway-integration"] = match &r.integration {
        IntegrationFile::HttpProxy {
            uri,
            upstream,
            timeout_ms,
            tls,
            request_parameters,
            response_parameters,
        } => {
            let mut i = json!({
                "type": "http_proxy",
                "httpMethod": r.route.split_once(' ').map_or("ANY", |x| x.0),
                "uri": aws_vars(uri),
                "payloadFormatVersion": "1.0",
                "connectionType": "INTERNET",
            });
            if let Some(t) = timeout_ms {
                i["timeoutInMillis"] = (*t).into();
            }
            if let Some(name) = tls.as_ref().and_then(|t| t.server_name.as_ref()) {
                i["tlsConfig"] = json!({ "serverNameToVerify": name });
            }
            if !request_parameters.is_empty() {
                let p: Map<String, Value> = request_parameters
                    .iter()
                    .map(|(k, v)| (k.clone(), aws_vars(v).into()))
                    .collect();
                i["requestParameters"] = Value::Object(p);
            }
            if !response_parameters.is_empty() {
                notes.push(format!("{}: response_parameters not exported", r.route));
            }
            if let Some(u) = upstream {
                op["x-shardgate-upstream"] = u.clone().into();
                notes.push(format!(
                    "{}: upstream group {u:?} (x-shardgate-upstream; AWS would need a VPC link)",
                    r.route
                ));
            }
            i
        }
        IntegrationFile::Lambda(l) => {
            let arn = match (&l.function_arn, &l.function) {
                (Some(arn), _) => arn.clone(),
                (None, f) => {
                    let f = f.clone().unwrap_or_default();
                    notes.push(format!(
                        "{}: function {f:?} runs next to the gateway; exported as an ARN of account 000000000000",
                        r.route
                    ));
                    format!("arn:aws:lambda:us-east-1:000000000000:function:{f}")
                }
            };
            let region = arn.split(':').nth(3).unwrap_or("us-east-1").to_owned();
            let mut i = json!({
                "type": "aws_proxy",
                "httpMethod": "POST",
                "uri": format!("arn:aws:apigateway:{region}:lambda:path/2015-03-31/functions/{arn}/invocations"),
                "payloadFormatVersion": l.payload_format_version.clone().unwrap_or_else(|| "2.0".into()),
                "connectionType": "INTERNET",
            });
            if let Some(t) = l.timeout_ms {
                i["timeoutInMillis"] = t.into();
            }
            i
        }
        IntegrationFile::Aws(x) => {
            let params: Map<String, Value> = x
                .parameters
                .iter()
                .map(|(k, v)| {
                    let v = serde_json::to_value(v).unwrap_or(Value::Null);
                    let v = match v {
                        Value::String(s) => Value::String(aws_vars(&s)),
                        other => Value::String(other.to_string()),
                    };
                    (k.clone(), v)
                })
                .collect();
            json!({
                "type": "aws_proxy",
                "integrationSubtype": x.subtype,
                "requestParameters": params,
                "payloadFormatVersion": "1.0",
                "connectionType": "INTERNET",
            })
        }
        IntegrationFile::Mock {
            status,
            headers,
            body,
        } => {
            let mut resp = json!({ "statusCode": status.to_string() });
            if !headers.is_empty() {
                let p: Map<String, Value> = headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            format!("method.response.header.{k}"),
                            format!("'{v}'").into(),
                        )
                    })
                    .collect();
                resp["responseParameters"] = Value::Object(p);
            }
            if !body.is_empty() {
                resp["responseTemplates"] = json!({ "application/json": body });
            }
            json!({
                "type": "mock",
                "requestTemplates": { "application/json": format!("{{\"statusCode\": {status}}}") },
                "responses": { "default": resp },
                "passthroughBehavior": "when_no_match",
            })
        }
    };
    let _ = a;
    op
}

/// A route's `validate` as a request validator, its parameters and its body
/// model.
fn validate(op: &mut Value, v: &crate::config::ValidateFile) {
    op["x-amazon-apigateway-request-validator"] = "shardgate".into();
    let mut params = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for req in &v.required {
        let Some((kind, name)) = req.split_once('.') else {
            continue;
        };
        let place = match kind {
            "header" => "header",
            "query" => "query",
            _ => continue,
        };
        params.push(
            json!({ "name": name, "in": place, "required": true, "schema": { "type": "string" } }),
        );
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some(schema) = &v.body_schema {
        let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
}

/// The API's authorizers and API keys as security schemes.
fn security_schemes(a: &ApiFile, notes: &mut Vec<String>) -> Map<String, Value> {
    let mut out = Map::new();
    if a.routes
        .iter()
        .flatten()
        .any(|r| r.api_key_required == Some(true))
    {
        out.insert(
            "api_key".into(),
            json!({ "type": "apiKey", "name": "x-api-key", "in": "header" }),
        );
    }
    for z in a.authorizers.iter().flatten() {
        let v = match z {
            AuthorizerFile::Jwt {
                name,
                issuer,
                audience,
                identity_source,
                ..
            } => {
                let src = identity_source.as_deref().unwrap_or("header.authorization");
                (
                    name,
                    json!({
                        "type": "oauth2",
                        "flows": {},
                        "x-amazon-apigateway-authorizer": {
                            "type": "jwt",
                            "identitySource": aws_source(src),
                            "jwtConfiguration": { "issuer": issuer, "audience": audience },
                        },
                    }),
                )
            }
            AuthorizerFile::Request {
                name,
                uri,
                identity_sources,
                ttl_s,
                ..
            } => {
                notes.push(format!(
                    "authorizer {name:?}: an HTTP service ({uri}); AWS calls a Lambda function (authorizerUri)"
                ));
                let sources: Vec<String> = identity_sources.iter().map(|s| aws_source(s)).collect();
                (
                    name,
                    json!({
                        "type": "apiKey",
                        "name": "Authorization",
                        "in": "header",
                        "x-amazon-apigateway-authorizer": {
                            "type": "request",
                            "authorizerUri": uri,
                            "identitySource": sources,
                            "authorizerPayloadFormatVersion": "2.0",
                            "authorizerResultTtlInSeconds": ttl_s.unwrap_or(300),
                        },
                    }),
                )
            }
            AuthorizerFile::Sigv4 { name, .. } => (
                name,
                json!({
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                }),
            ),
        };
        out.insert(v.0.clone(), v.1);
    }
    out
}

/// `header.authorization` → `$request.header.authorization`.
fn aws_source(s: &str) -> String {
    match s.split_once('.') {
        Some(("query", q)) => format!("$request.querystring.{q}"),
        Some((_, h)) => format!("$request.header.{h}"),
        None => s.to_owned(),
    }
}
