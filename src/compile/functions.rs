//! `functions[]`, the `lambda` and `aws` integrations, and HTTP API parameter
//! mapping (`request_parameters`, `response_parameters`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::compile::build::{secret, Build, DEFAULT_TIMEOUT_MS, TIMEOUT_RANGE_MS};
use crate::compile::upstreams::split_url;
use crate::config::{
    AwsCredentialsFile, ConfigErrors, FunctionFile, IntegrationFile, ParameterMap,
    ResponseParameters,
};
use crate::http::sigv4::Credentials;
use crate::plan::{Integration, LambdaPlan, LambdaTarget};
use crate::upstream::aws::{AwsAction, AwsEndpoint, Subtype};
use crate::upstream::function::{Function, FunctionSpec};
use crate::upstream::mapping::{parse_mapping, Expr, Mappings};
use crate::upstream::pool::PoolKey;
use crate::upstream::target::Endpoint;

/// Lambda's default function timeout.
const DEFAULT_FUNCTION_TIMEOUT_MS: u64 = 3_000;
const DEFAULT_REGION: &str = "us-east-1";

/// The config's functions (none started), and their index by name.
pub fn compile_functions(
    files: &[Option<FunctionFile>],
    base_dir: &std::path::Path,
    workers: usize,
    errs: &mut ConfigErrors,
) -> (Vec<Arc<Function>>, HashMap<String, usize>) {
    let mut out = Vec::new();
    let mut names = HashMap::new();
    let mut addrs: HashMap<std::net::SocketAddr, String> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let Some(f) = f else { continue };
        let path = format!("functions[{i}]");
        let valid_name = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            errs.push(
                format!("{path}.name"),
                "1 to 64 letters, digits, - and _ (Lambda's function names)",
            );
            continue;
        }
        let Ok(addr) = f.runtime_api.parse::<std::net::SocketAddr>() else {
            errs.push(
                format!("{path}.runtime_api"),
                format!(
                    "{:?} is not an address:port such as 127.0.0.1:9001",
                    f.runtime_api
                ),
            );
            continue;
        };
        if let Some(other) = addrs.insert(addr, f.name.clone()) {
            errs.push(
                format!("{path}.runtime_api"),
                format!("{addr} is also function {other:?}'s"),
            );
        }
        let concurrency = f.concurrency.unwrap_or(1);
        if !(1..=256).contains(&concurrency) {
            errs.push(format!("{path}.concurrency"), "must be from 1 to 256");
        }
        let timeout_ms = f.timeout_ms.unwrap_or(DEFAULT_FUNCTION_TIMEOUT_MS);
        if !(1..=900_000).contains(&timeout_ms) {
            errs.push(
                format!("{path}.timeout_ms"),
                "must be from 1 to 900000 (Lambda's 15 minutes)",
            );
        }
        let memory_mb = f.memory_mb.unwrap_or(128);
        if !(128..=10_240).contains(&memory_mb) {
            errs.push(format!("{path}.memory_mb"), "must be from 128 to 10240");
        }
        let queue = f.queue.unwrap_or(100 * concurrency);
        if !(1..=100_000).contains(&queue) {
            errs.push(format!("{path}.queue"), "must be from 1 to 100000");
        }
        if f.command.first().is_some_and(|c| c.is_empty()) {
            errs.push(format!("{path}.command"), "the program name is empty");
        }
        for k in f.environment.keys() {
            if k.is_empty() || k.contains('=') || k.starts_with("AWS_LAMBDA_RUNTIME") {
                errs.push(
                    format!("{path}.environment.{k}"),
                    "not a variable the function may set",
                );
            }
        }
        if names.insert(f.name.clone(), out.len()).is_some() {
            errs.push(
                format!("{path}.name"),
                format!("duplicate function {:?}", f.name),
            );
        }
        let working_dir = match &f.working_dir {
            Some(d) if std::path::Path::new(d).is_absolute() => d.into(),
            Some(d) => base_dir.join(d),
            None => base_dir.to_path_buf(),
        };
        out.push(Function::new(
            FunctionSpec {
                name: f.name.clone(),
                runtime_api: addr,
                command: f.command.clone(),
                concurrency,
                timeout: Duration::from_millis(timeout_ms),
                environment: f.environment.clone(),
                memory_mb,
                queue: queue as usize,
                working_dir,
                region: std::env::var("AWS_REGION").unwrap_or_else(|_| DEFAULT_REGION.into()),
            },
            workers,
        ));
    }
    (out, names)
}

/// Keeps the running function of `prev` where the new config describes the same
/// one, so a reload does not restart runtimes that did not change.
pub fn keep_running(next: &mut [Arc<Function>], prev: &[Arc<Function>]) {
    for f in next.iter_mut() {
        if let Some(p) = prev.iter().find(|p| p.spec == f.spec) {
            *f = Arc::clone(p);
        }
    }
}

fn integration_timeout(t: Option<u64>, path: &str, errs: &mut ConfigErrors) -> Duration {
    let ms = t.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !TIMEOUT_RANGE_MS.contains(&ms) {
        errs.push(format!("{path}.timeout_ms"), "must be from 50 to 30000");
    }
    Duration::from_millis(ms)
}

/// `lambda` and `aws` integrations.
pub fn compile_aws_integration(
    i: &IntegrationFile,
    vars: &BTreeMap<String, String>,
    path: &str,
    b: &mut Build,
) -> Option<Integration> {
    match i {
        IntegrationFile::Lambda(l) => {
            let v2 = match l.payload_format_version.as_deref() {
                None | Some("2.0") => true,
                Some("1.0") => false,
                Some(other) => {
                    b.errs.push(
                        format!("{path}.payload_format_version"),
                        format!("{other:?}: expected \"1.0\" or \"2.0\""),
                    );
                    return None;
                }
            };
            let timeout = integration_timeout(l.timeout_ms, path, &mut b.errs);
            let target = match (&l.function, &l.function_arn) {
                (Some(name), None) => {
                    if l.endpoint.is_some() || l.credentials.is_some() || l.region.is_some() {
                        b.errs.push(
                            path.to_owned(),
                            "endpoint, region and credentials are for function_arn",
                        );
                    }
                    match b.functions.get(name) {
                        Some(&fi) => LambdaTarget::Local(fi),
                        None => {
                            b.errs.push(
                                format!("{path}.function"),
                                format!("no function named {name:?} in functions"),
                            );
                            return None;
                        }
                    }
                }
                (None, Some(arn)) => {
                    let arn = match crate::compile::integrations::expand_stage_variables(arn, vars)
                    {
                        Ok(a) => a,
                        Err(var) => {
                            b.errs.push(
                                format!("{path}.function_arn"),
                                format!("the stage has no variable {var:?}"),
                            );
                            return None;
                        }
                    };
                    let parts: Vec<&str> = arn.split(':').collect();
                    if parts.len() < 7
                        || parts[0] != "arn"
                        || parts[2] != "lambda"
                        || parts[5] != "function"
                    {
                        b.errs.push(
                            format!("{path}.function_arn"),
                            format!("{arn:?} is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME)"),
                        );
                        return None;
                    }
                    let region = l.region.clone().unwrap_or_else(|| parts[3].to_owned());
                    let endpoint = aws_endpoint(
                        "lambda",
                        &region,
                        l.endpoint.as_deref(),
                        l.credentials.as_ref(),
                        path,
                        b,
                    )?;
                    let mut encoded = String::new();
                    crate::http::sigv4::uri_encode(&mut encoded, arn.as_bytes(), false);
                    LambdaTarget::Remote {
                        endpoint: Box::new(endpoint),
                        path: format!("/2015-03-31/functions/{encoded}/invocations"),
                    }
                }
                _ => {
                    b.errs.push(
                        path.to_owned(),
                        "a lambda integration names either function (one of functions) or function_arn",
                    );
                    return None;
                }
            };
            Some(Integration::Lambda(Box::new(LambdaPlan {
                target,
                v2,
                timeout,
            })))
        }
        IntegrationFile::Aws(a) => {
            let Some(subtype) = Subtype::parse(&a.subtype) else {
                b.errs.push(
                    format!("{path}.subtype"),
                    format!(
                        "{:?}: expected one of {}",
                        a.subtype,
                        Subtype::ALL.map(Subtype::name).join(", ")
                    ),
                );
                return None;
            };
            let timeout = integration_timeout(a.timeout_ms, path, &mut b.errs);
            let mut parameters = Vec::new();
            let known = subtype.parameters();
            for (name, value) in &a.parameters {
                let ppath = format!("{path}.parameters.{name}");
                let Some((n, _, _)) = known.iter().find(|(n, _, _)| n == name) else {
                    b.errs.push(
                        ppath,
                        format!(
                            "not a parameter of {}: expected {}",
                            subtype.name(),
                            known.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
                        ),
                    );
                    continue;
                };
                let text = match value {
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::Bool(v) => v.to_string(),
                    other => match serde_json::to_string(other) {
                        Ok(s) => s,
                        Err(_) => {
                            b.errs.push(ppath, "not a value");
                            continue;
                        }
                    },
                };
                match Expr::parse(&text, vars, false) {
                    Ok(e) => parameters.push((*n, e)),
                    Err(msg) => b.errs.push(ppath, msg),
                }
            }
            for (n, _, required) in known {
                if *required && !a.parameters.contains_key(*n) {
                    b.errs.push(
                        format!("{path}.parameters"),
                        format!("{} needs {n}", subtype.name()),
                    );
                }
            }
            let region = a
                .parameters
                .get("Region")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .or_else(|| a.region.clone())
                .unwrap_or_else(|| DEFAULT_REGION.into());
            let endpoint = aws_endpoint(
                subtype.service(),
                &region,
                a.endpoint.as_deref(),
                a.credentials.as_ref(),
                path,
                b,
            )?;
            Some(Integration::Aws(Box::new(AwsAction {
                subtype,
                endpoint,
                parameters,
                timeout,
            })))
        }
        _ => None,
    }
}

/// The endpoint (the override; else `AWS_ENDPOINT_URL_<SERVICE>` or
/// `AWS_ENDPOINT_URL` as AWS's SDKs read them; else AWS's for the region),
/// resolved now, and the credentials (the integration's, else the standard
/// environment variables).
fn aws_endpoint(
    service: &'static str,
    region: &str,
    endpoint: Option<&str>,
    creds: Option<&AwsCredentialsFile>,
    path: &str,
    b: &mut Build,
) -> Option<AwsEndpoint> {
    let creds = match creds {
        Some(c) => {
            let cpath = format!("{path}.credentials");
            let id = secret(
                &c.access_key_id,
                &format!("{cpath}.access_key_id"),
                &mut b.errs,
            );
            let key = secret(
                &c.secret_access_key,
                &format!("{cpath}.secret_access_key"),
                &mut b.errs,
            );
            let token = c
                .session_token
                .as_ref()
                .and_then(|t| secret(t, &format!("{cpath}.session_token"), &mut b.errs));
            Credentials {
                access_key_id: id?,
                secret_access_key: key?,
                session_token: token,
            }
        }
        None => match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(key)) => Credentials {
                access_key_id: id,
                secret_access_key: key,
                session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
            },
            _ => {
                b.errs.push(
                    format!("{path}.credentials"),
                    "no credentials: set credentials, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                );
                return None;
            }
        },
    };
    // As AWS's SDKs: the service's endpoint variable, then the general one.
    let from_env = || {
        let own = format!(
            "AWS_ENDPOINT_URL_{}",
            service.to_ascii_uppercase().replace('-', "_")
        );
        std::env::var(own)
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|u| !u.is_empty())
    };
    let url = endpoint
        .map(str::to_owned)
        .or_else(from_env)
        .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"));
    let epath = format!("{path}.endpoint");
    let (https, host, port, authority, tail) = match split_url(&url) {
        Ok(p) => p,
        Err(msg) => {
            b.errs.push(epath, format!("{url:?}: {msg}"));
            return None;
        }
    };
    let base_path = tail.split('?').next().unwrap_or("").trim_end_matches('/');
    let addr = match crate::upstream::group::resolve(host, port) {
        Ok(a) if !a.is_empty() => a[0],
        Ok(_) | Err(_) => {
            b.errs.push(
                epath,
                format!("cannot resolve {host:?} (the endpoint {url:?})"),
            );
            return None;
        }
    };
    let (tls, tls_id) = if https {
        let (t, id) = b.up_tls.compile(None, host, path, &mut b.errs)?;
        (Some(t), id)
    } else {
        (None, 0)
    };
    Some(AwsEndpoint {
        endpoint: Endpoint {
            addr,
            pool_key: PoolKey { addr, tls: tls_id },
            tls,
            host_header: authority.into(),
            open: None,
        },
        region: region.to_owned(),
        service,
        creds,
        base_path: base_path.to_owned(),
    })
}

/// `request_parameters` and `response_parameters` of an integration.
pub fn compile_mappings(
    request: &ParameterMap,
    response: &ResponseParameters,
    vars: &BTreeMap<String, String>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<Mappings>> {
    if request.is_empty() && response.is_empty() {
        return None;
    }
    let mut m = Mappings::default();
    for (k, v) in request {
        match parse_mapping(k, v, vars, false) {
            Ok(map) => m.request.push(map),
            Err(msg) => errs.push(format!("{path}.request_parameters.{k:?}"), msg),
        }
    }
    for (status, maps) in response {
        let code = match status.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => c,
            _ => {
                errs.push(
                    format!("{path}.response_parameters.{status:?}"),
                    "expected a status code from 200 to 599",
                );
                continue;
            }
        };
        let mut list = Vec::new();
        for (k, v) in maps {
            match parse_mapping(k, v, vars, true) {
                Ok(map) => list.push(map),
                Err(msg) => errs.push(format!("{path}.response_parameters.{status:?}.{k:?}"), msg),
            }
        }
        m.response.push((code, list));
    }
    Some(Arc::new(m))
}

/// The mappings an integration declares.
pub fn integration_mappings(i: &IntegrationFile) -> Option<(&ParameterMap, &ResponseParameters)> {
    match i {
        IntegrationFile::HttpProxy {
            request_parameters,
            response_parameters,
            ..
        } => Some((request_parameters, response_parameters)),
        IntegrationFile::Lambda(l) => Some((&l.request_parameters, &l.response_parameters)),
        IntegrationFile::Aws(a) => Some((&a.request_parameters, &a.response_parameters)),
        IntegrationFile::Mock { .. } => None,
    }
}
