//! The management CLI: the admin API's common operations (`shardgate keys ...`,
//! `shardgate access-keys ...`, `shardgate usage ...`, `shardgate deploy ...`,
//! `shardgate reload`) without curl. It talks to a
//! running gateway's admin listener (`--admin`, default `http://127.0.0.1:9901`)
//! with the bearer token from `--token` or `SHARDGATE_ADMIN_TOKEN`, prints the
//! API's JSON answer, and exits 1 with the API's message on an error.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The admin listener.
    #[arg(
        long,
        env = "SHARDGATE_ADMIN",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    pub admin: String,
    /// The admin bearer token.
    #[arg(
        long,
        env = "SHARDGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Keys {
    /// Every API key (values are never shown again).
    List,
    /// One key.
    Show {
        id: String,
    },
    /// A new key; its value is printed once.
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Usage plans to attach (repeat the flag for more).
        #[arg(long = "plan")]
        plans: Vec<String>,
        /// A value to use instead of a generated one.
        #[arg(long)]
        value: Option<String>,
        /// Created disabled.
        #[arg(long)]
        disabled: bool,
    },
    Enable {
        id: String,
    },
    Disable {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Imports AWS's CSV format (`name,key,description,enabled,usageplanIds`).
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        fail_on_warnings: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Plans {
    List,
    Show { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AccessKeys {
    List,
    /// A new SigV4 access key; its secret is printed once.
    Create {
        #[arg(long)]
        id: Option<String>,
        /// `api/stage/METHOD/path` patterns (repeat for more); every route when none.
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    Delete {
        id: String,
    },
}

/// What to ask the admin API.
#[derive(Debug)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<(&'static str, Vec<u8>)>,
}

fn call(method: &'static str, path: impl Into<String>) -> Call {
    Call {
        method,
        path: path.into(),
        body: None,
    }
}

fn with_json(mut c: Call, v: Value) -> Call {
    c.body = Some(("application/json", v.to_string().into_bytes()));
    c
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub fn keys(k: &Keys) -> Result<Call, String> {
    Ok(match k {
        Keys::List => call("GET", "/apikeys"),
        Keys::Show { id } => call("GET", format!("/apikeys/{}", seg(id))),
        Keys::Create {
            name,
            description,
            plans,
            value,
            disabled,
        } => {
            let mut v = json!({ "plans": plans, "enabled": !disabled });
            for (k, x) in [
                ("name", name),
                ("description", description),
                ("value", value),
            ] {
                if let Some(x) = x {
                    v[k] = Value::String(x.clone());
                }
            }
            with_json(call("POST", "/apikeys"), v)
        }
        Keys::Enable { id } => with_json(
            call("PATCH", format!("/apikeys/{}", seg(id))),
            json!({ "enabled": true }),
        ),
        Keys::Disable { id } => with_json(
            call("PATCH", format!("/apikeys/{}", seg(id))),
            json!({ "enabled": false }),
        ),
        Keys::Delete { id } => call("DELETE", format!("/apikeys/{}", seg(id))),
        Keys::Import {
            file,
            fail_on_warnings,
        } => {
            let csv = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut c = call(
                "POST",
                format!("/apikeys/import?failonwarnings={fail_on_warnings}"),
            );
            c.body = Some(("text/csv", csv));
            c
        }
    })
}

pub fn plans(p: &Plans) -> Call {
    match p {
        Plans::List => call("GET", "/usageplans"),
        Plans::Show { name } => call("GET", format!("/usageplans/{}", seg(name))),
    }
}

pub fn access_keys(a: &AccessKeys) -> Call {
    match a {
        AccessKeys::List => call("GET", "/accesskeys"),
        AccessKeys::Create { id, allow } => {
            let mut v = json!({ "allow": allow });
            if let Some(id) = id {
                v["id"] = Value::String(id.clone());
            }
            with_json(call("POST", "/accesskeys"), v)
        }
        AccessKeys::Delete { id } => call("DELETE", format!("/accesskeys/{}", seg(id))),
    }
}

/// Deployments and stages (`shardgate deploy ...`).
#[derive(Debug, Subcommand)]
pub enum Deploy {
    /// Snapshots an API as the running config has it; `--stage` points a stage at it.
    Create {
        api: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        stage: Option<String>,
    },
    /// An API's deployments, newest first.
    List { api: String },
    /// An API's stages and the deployment each serves (null: the config file).
    Stages { api: String },
    /// Points a stage at a deployment (a rollback is pointing it back), or back at
    /// the config file with `--follow-config`; `--var k=v` sets stage variables.
    Stage {
        api: String,
        stage: String,
        #[arg(long, conflicts_with = "follow_config")]
        deployment: Option<String>,
        #[arg(long)]
        follow_config: bool,
        /// A stage variable, `name=value` (repeat for more; replaces those set before).
        #[arg(long = "var")]
        vars: Vec<String>,
    },
    /// Gives a stage a canary: `--percent` of its requests go to `--deployment`
    /// (default: the stage's own) with `--var k=v` over the stage's variables.
    Canary {
        api: String,
        stage: String,
        #[arg(long)]
        percent: f64,
        #[arg(long)]
        deployment: Option<String>,
        #[arg(long = "var")]
        vars: Vec<String>,
    },
    /// Promotes a stage's canary: its deployment and variables become the
    /// stage's, and the canary keeps 0% (as AWS's).
    Promote { api: String, stage: String },
    /// Removes a stage's canary.
    RemoveCanary { api: String, stage: String },
}

/// `name=value` pairs as a JSON object.
fn vars_json(vars: &[String]) -> Result<Value, String> {
    let mut m = serde_json::Map::new();
    for kv in vars {
        let (k, x) = kv
            .split_once('=')
            .ok_or_else(|| format!("--var {kv:?}: expected name=value"))?;
        m.insert(k.to_owned(), Value::String(x.to_owned()));
    }
    Ok(Value::Object(m))
}

pub fn deploy(d: &Deploy) -> Result<Call, String> {
    Ok(match d {
        Deploy::Create {
            api,
            description,
            stage,
        } => {
            let mut v = json!({ "description": description.clone().unwrap_or_default() });
            if let Some(s) = stage {
                v["stageName"] = Value::String(s.clone());
            }
            with_json(call("POST", format!("/apis/{}/deployments", seg(api))), v)
        }
        Deploy::List { api } => call("GET", format!("/apis/{}/deployments", seg(api))),
        Deploy::Stages { api } => call("GET", format!("/apis/{}/stages", seg(api))),
        Deploy::Stage {
            api,
            stage,
            deployment,
            follow_config,
            vars,
        } => {
            let mut v = json!({});
            if let Some(id) = deployment {
                v["deploymentId"] = Value::String(id.clone());
            } else if *follow_config {
                v["deploymentId"] = Value::Null;
            }
            if !vars.is_empty() {
                v["variables"] = vars_json(vars)?;
            }
            if v.as_object().is_some_and(serde_json::Map::is_empty) {
                return Err(
                    "nothing to change: give --deployment, --follow-config or --var".into(),
                );
            }
            with_json(
                call("PATCH", format!("/apis/{}/stages/{}", seg(api), seg(stage))),
                v,
            )
        }
        Deploy::Canary {
            api,
            stage,
            percent,
            deployment,
            vars,
        } => with_json(
            call("PATCH", format!("/apis/{}/stages/{}", seg(api), seg(stage))),
            json!({ "canarySettings": {
                "percentTraffic": percent,
                "deploymentId": deployment,
                "stageVariableOverrides": vars_json(vars)?,
            } }),
        ),
        Deploy::Promote { api, stage } => call(
            "POST",
            format!("/apis/{}/stages/{}/canary/promote", seg(api), seg(stage)),
        ),
        Deploy::RemoveCanary { api, stage } => call(
            "DELETE",
            format!("/apis/{}/stages/{}/canary", seg(api), seg(stage)),
        ),
    })
}

/// `shardgate reload`: the running gateway compiles its config file again.
pub fn reload() -> Call {
    call("POST", "/reload")
}

pub fn usage(plan: &str, from: &str, to: &str, key: Option<&str>) -> Call {
    let mut path = format!(
        "/usageplans/{}/usage?startDate={}&endDate={}",
        seg(plan),
        seg(from),
        seg(to)
    );
    if let Some(k) = key {
        path.push_str(&format!("&keyId={}", seg(k)));
    }
    call("GET", path)
}

/// Sends the call; the answer's JSON (pretty) on success.
pub fn send(t: &Target, c: &Call) -> Result<String, String> {
    let uri = format!("{}{}", t.admin.trim_end_matches('/'), c.path);
    if !uri.starts_with("http://") {
        return Err(format!("--admin {}: expected http://HOST:PORT", t.admin));
    }
    let auth = t.token.as_ref().map(|tok| format!("Bearer {tok}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let (status, body) = crate::http::client::request(
        &uri,
        c.method,
        &headers,
        c.body.as_ref().map(|(ct, b)| (*ct, b.as_slice())),
        Duration::from_secs(30),
        64 << 20,
    )
    .map_err(|e| format!("{uri}: {e}"))?;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if (200..300).contains(&status) {
        return Ok(match parsed {
            Some(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            None => String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(format!("{} {}: {status} {message}", c.method, c.path))
}
