//! An operation's `x-amazon-apigateway-integration` as a route's integration.

use serde_json::{json, Map, Value};

use crate::control::openapi::context::{esc, is_static, quoted, stage_vars, Ctx, PLACEHOLDER_URL};

/// `x-amazon-apigateway-integration` → `integration`.
pub fn integration(cx: &mut Ctx<'_>, ptr: &str, i: &Value) -> Option<Value> {
    let kind = i
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let uri = i.get("uri").and_then(Value::as_str).unwrap_or("");
    let mut handled: Vec<&str> = vec!["type", "uri", "httpMethod", "description"];
    let timeout = i.get("timeoutInMillis").and_then(Value::as_u64);
    let mut out = match kind.as_str() {
        "http_proxy" | "http" => {
            handled.extend(["connectionType", "payloadFormatVersion", "tlsConfig"]);
            if kind == "http_proxy" {
                // No effect on a proxy integration, at AWS either.
                handled.extend(["passthroughBehavior", "responses"]);
            }
            if i.get("connectionType").and_then(Value::as_str) == Some("VPC_LINK") {
                handled.push("connectionId");
                cx.note(
                    ptr,
                    format!("VPC link not mapped: {uri} is reached through it; the route's uri is the placeholder {PLACEHOLDER_URL}"),
                );
                json!({ "type": "http_proxy", "uri": PLACEHOLDER_URL })
            } else {
                let mut v = json!({ "type": "http_proxy", "uri": stage_vars(cx, uri) });
                if let Some(name) = i
                    .pointer("/tlsConfig/serverNameToVerify")
                    .and_then(Value::as_str)
                {
                    v["tls"] = json!({ "server_name": name });
                }
                if kind == "http" {
                    handled.extend(["requestTemplates", "passthroughBehavior", "responses"]);
                    if i.get("requestTemplates").is_some() || i.get("responses").is_some() {
                        cx.note(
                            ptr,
                            "non-proxy HTTP integration: request templates and response mappings are not mapped; requests and responses pass through",
                        );
                    }
                }
                v
            }
        }
        "aws_proxy" => {
            handled.extend([
                "payloadFormatVersion",
                "connectionType",
                "passthroughBehavior",
                "responses",
            ]);
            if let Some(sub) = i.get("integrationSubtype").and_then(Value::as_str) {
                handled.extend(["integrationSubtype", "requestParameters", "credentials"]);
                if i.get("credentials").is_some() {
                    cx.note(
                        format!("{ptr}/credentials"),
                        "IAM role not mapped: the gateway signs with its own credentials (AWS_ACCESS_KEY_ID, or `credentials:`)",
                    );
                }
                let params: Map<String, Value> = i
                    .get("requestParameters")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let mut v = json!({ "type": "aws", "subtype": sub, "parameters": params });
                if let Some(r) = &cx.region {
                    v["region"] = r.clone().into();
                }
                v
            } else if let Some(arn) = lambda_arn(uri) {
                let version = i
                    .get("payloadFormatVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("1.0");
                if arn.contains("${") {
                    cx.note(
                        format!("{ptr}/uri"),
                        "a function named by a stage variable: not mapped; set function_arn",
                    );
                }
                if i.get("credentials").is_some() {
                    handled.push("credentials");
                    cx.note(
                        format!("{ptr}/credentials"),
                        "IAM role not mapped: the gateway signs with its own credentials",
                    );
                }
                cx.hint(
                    format!("{ptr}/uri"),
                    format!("calls {arn} in AWS through Lambda's Invoke API: the gateway needs AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or `credentials:`); AWS_ENDPOINT_URL_LAMBDA points it elsewhere"),
                );
                json!({ "type": "lambda", "function_arn": arn, "payload_format_version": version })
            } else {
                cx.note(
                    ptr,
                    format!("aws_proxy to {uri:?}: not a Lambda function; not mapped"),
                );
                return None;
            }
        }
        "mock" => {
            handled.extend(["requestTemplates", "responses", "passthroughBehavior"]);
            mock(cx, ptr, i)
        }
        "aws" => {
            cx.note(
                ptr,
                format!("AWS service integration with templates ({uri}): not mapped; HTTP APIs' first-class integrations (integrationSubtype) are"),
            );
            return None;
        }
        other => {
            cx.note(ptr, format!("integration type {other:?}: not mapped"));
            return None;
        }
    };
    if let Some(t) = timeout {
        handled.push("timeoutInMillis");
        if out["type"] != "mock" {
            out["timeout_ms"] = t.into();
        }
    }
    if out["type"] != "aws" {
        if let Some(p) = i.get("requestParameters").and_then(Value::as_object) {
            handled.push("requestParameters");
            let mut mapped = Map::new();
            for (k, v) in p {
                let pp = format!("{ptr}/requestParameters/{}", esc(k));
                if let Some(dest) = k.strip_prefix("integration.request.path.") {
                    // REST: the path parameter of the same name is what the uri's
                    // {name} is given anyway.
                    if v.as_str() != Some(&format!("method.request.path.{dest}")) {
                        cx.note(pp, "REST parameter mapping not mapped");
                    }
                } else if k.starts_with("integration.request.") {
                    cx.note(pp, "REST parameter mapping not mapped");
                } else if let Some(s) = v.as_str() {
                    mapped.insert(k.clone(), stage_vars(cx, s).into());
                }
            }
            if !mapped.is_empty() && out["type"] != "mock" {
                out["request_parameters"] = Value::Object(mapped);
            }
        }
    }
    for k in i.as_object().into_iter().flatten().map(|o| o.0) {
        if !handled.contains(&k.as_str()) && k != "requestParameters" {
            cx.note(format!("{ptr}/{}", esc(k)), "not mapped");
        }
    }
    Some(out)
}

/// The function ARN of a Lambda integration's URI.
fn lambda_arn(uri: &str) -> Option<String> {
    if uri.starts_with("arn:aws:lambda:") {
        return Some(uri.to_owned());
    }
    let at = uri.find("/functions/")?;
    let rest = &uri[at + "/functions/".len()..];
    Some(rest.strip_suffix("/invocations").unwrap_or(rest).to_owned())
}

/// A mock integration: its default response's status, static headers and
/// static body.
fn mock(cx: &mut Ctx<'_>, ptr: &str, i: &Value) -> Value {
    let mut v = json!({ "type": "mock" });
    let resp = i.pointer("/responses/default").or_else(|| {
        i.get("responses")
            .and_then(|r| r.as_object()?.values().next())
    });
    let status = resp
        .and_then(|r| r.get("statusCode"))
        .and_then(|s| s.as_u64().or_else(|| s.as_str()?.parse().ok()))
        .or_else(|| {
            let t = i.pointer("/requestTemplates/application~1json")?.as_str()?;
            serde_json::from_str::<Value>(t)
                .ok()?
                .get("statusCode")?
                .as_u64()
        })
        .unwrap_or(200);
    v["status"] = status.into();
    if i.get("responses")
        .and_then(Value::as_object)
        .is_some_and(|r| r.len() > 1)
    {
        cx.note(
            format!("{ptr}/responses"),
            "selection patterns: only the default response is mapped",
        );
    }
    let Some(resp) = resp else { return v };
    let mut headers = Map::new();
    for (k, val) in resp
        .get("responseParameters")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        match (
            k.strip_prefix("method.response.header."),
            val.as_str().and_then(quoted),
        ) {
            (Some(h), Some(text)) => {
                headers.insert(h.to_ascii_lowercase(), text.into());
            }
            _ => cx.note(
                format!("{ptr}/responses/default/responseParameters/{}", esc(k)),
                "only static header values ('text') are mapped",
            ),
        }
    }
    if !headers.is_empty() {
        v["headers"] = Value::Object(headers);
    }
    if let Some(t) = resp.get("responseTemplates").and_then(Value::as_object) {
        let body = t.get("application/json").or_else(|| t.values().next());
        if let Some(b) = body.and_then(Value::as_str) {
            if is_static(b) {
                v["body"] = b.into();
            } else {
                cx.note(
                    format!("{ptr}/responses/default/responseTemplates"),
                    "VTL template not mapped (only static bodies are): the mock answers an empty body",
                );
            }
        }
    }
    v
}
