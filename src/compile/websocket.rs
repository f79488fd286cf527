//! WebSocket APIs: route keys (`$connect`, `$disconnect`, `$default`, custom keys
//! chosen by the route selection expression), route responses, stage limits.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::config::{ApiFile, ConfigErrors, StageFile};
use crate::plan::{WsLimits, WsStage};
use crate::route::RouteKey;
use crate::upstream::mapping::Expr;

/// AWS's limits: 32 KiB frames, 128 KiB messages, 10 minutes idle, 2 hours.
pub const DEFAULT_LIMITS: WsLimits = WsLimits {
    max_frame: 32 * 1024,
    max_message: 128 * 1024,
    idle: Duration::from_secs(600),
    max_duration: Duration::from_secs(7200),
    binary: false,
};

pub fn is_websocket(api: &ApiFile) -> bool {
    api.kind == "websocket"
}

/// A WebSocket API's route keys for the router: `$connect` answers the
/// handshake (`GET /` of the stage); the others are chosen per message, never by
/// path. Without a `$connect` route, one that accepts is added at the end.
pub fn ws_route_keys(api: &ApiFile, path: &str, errs: &mut ConfigErrors) -> Vec<RouteKey> {
    let mut keys = Vec::with_capacity(api.routes.len() + 1);
    let mut seen = HashMap::new();
    for (ri, route) in api.routes.iter().enumerate() {
        let never = crate::compile::routes::never_matched(ri);
        let Some(route) = route else {
            keys.push(never);
            continue;
        };
        let key = route.route.as_str();
        let valid = matches!(key, "$connect" | "$disconnect" | "$default")
            || (!key.is_empty()
                && !key.starts_with('$')
                && key.len() <= 128
                && !key.chars().any(char::is_control));
        if !valid {
            errs.push(
                format!("{path}.routes[{ri}].route"),
                format!("{key:?}: a WebSocket route key is $connect, $disconnect, $default or a name not starting with $"),
            );
        }
        if let Some(first) = seen.insert(key, ri) {
            errs.push(
                format!("{path}.routes[{ri}].route"),
                format!("{key:?} is also routes[{first}]"),
            );
        }
        keys.push(if key == "$connect" {
            connect_key()
        } else {
            never
        });
    }
    if !seen.contains_key("$connect") {
        keys.push(connect_key());
    }
    if api.connections_authorizer.is_some() {
        for key in CONNECTIONS_KEYS {
            keys.push(RouteKey::parse(key).unwrap_or(RouteKey::Default));
        }
    }
    keys
}

/// The `@connections` API's routes, after the API's own (and an added
/// `$connect`): POST, GET, DELETE, with `@` as written and as botocore sends it.
pub const CONNECTIONS_KEYS: [&str; 6] = [
    "POST /@connections/{connectionId}",
    "GET /@connections/{connectionId}",
    "DELETE /@connections/{connectionId}",
    "POST /%40connections/{connectionId}",
    "GET /%40connections/{connectionId}",
    "DELETE /%40connections/{connectionId}",
];

/// The authorizer of the `@connections` routes: the API's SigV4 authorizer
/// named by `connections_authorizer`.
pub fn connections_auth(
    api: &ApiFile,
    by_name: &HashMap<String, usize>,
    authorizers: &[std::sync::Arc<crate::policy::access::Authorizer>],
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<crate::policy::access::RouteAuth> {
    let name = api.connections_authorizer.as_ref()?;
    let kpath = format!("{path}.connections_authorizer");
    if !is_websocket(api) {
        errs.push(kpath, "only WebSocket APIs have @connections");
        return None;
    }
    match by_name.get(name) {
        Some(&id)
            if matches!(
                authorizers.get(id).map(|a| &**a),
                Some(crate::policy::access::Authorizer::Sigv4(_))
            ) =>
        {
            Some(crate::policy::access::RouteAuth {
                authorizer: id,
                scopes: Box::default(),
            })
        }
        Some(_) => {
            errs.push(kpath, format!("{name:?} is not a sigv4 authorizer"));
            None
        }
        None => {
            errs.push(
                kpath,
                format!("no authorizer {name:?} in API {:?}", api.name),
            );
            None
        }
    }
}

fn connect_key() -> RouteKey {
    RouteKey::parse("GET /").unwrap_or(RouteKey::Default)
}

/// What a WebSocket stage needs beyond its routes.
pub fn ws_stage(
    api: &ApiFile,
    stage: &StageFile,
    vars: &BTreeMap<String, String>,
    path: &str,
    spath: &str,
    errs: &mut ConfigErrors,
) -> WsStage {
    let expr_text = api
        .route_selection_expression
        .as_deref()
        .unwrap_or("$request.body.action");
    let selection = match Expr::parse(&expr_text.replace("\\$", "\u{0}"), vars, false) {
        Ok(e) => Some(e),
        Err(msg) => {
            errs.push(format!("{path}.route_selection_expression"), msg);
            None
        }
    };
    let mut routes = HashMap::new();
    let (mut connect, mut disconnect, mut default) = (None, None, None);
    let added = usize::from(!api.routes.iter().flatten().any(|r| r.route == "$connect"));
    let connections = api
        .connections_authorizer
        .is_some()
        .then_some(api.routes.len() + added);
    let mut route_response = Vec::new();
    for (ri, r) in api.routes.iter().enumerate() {
        let Some(r) = r else {
            route_response.push(false);
            continue;
        };
        route_response.push(r.route_response == Some(true));
        match r.route.as_str() {
            "$connect" => connect = Some(ri),
            "$disconnect" => disconnect = Some(ri),
            "$default" => default = Some(ri),
            k => {
                routes.insert(k.to_owned(), ri);
            }
        }
    }
    let l = stage.limits.unwrap_or_default();
    let lpath = format!("{spath}.limits");
    let mut check = |v: Option<u64>, key: &str, max: u64, default: u64| -> u64 {
        match v {
            None => default,
            Some(n) if (1..=max).contains(&n) => n,
            Some(_) => {
                errs.push(format!("{lpath}.{key}"), format!("must be from 1 to {max}"));
                default
            }
        }
    };
    let max_message = check(
        l.max_message_bytes,
        "max_message_bytes",
        16 << 20,
        128 * 1024,
    );
    let max_frame = check(l.max_frame_bytes, "max_frame_bytes", 16 << 20, 32 * 1024);
    let idle = check(l.idle_timeout_s, "idle_timeout_s", 86_400, 600);
    let max_duration = check(l.max_duration_s, "max_duration_s", 7 * 86_400, 7200);
    WsStage {
        scope: crate::upstream::connections::scope(&api.name, &stage.name).into(),
        selection,
        routes,
        connect,
        disconnect,
        default,
        route_response,
        connections,
        limits: WsLimits {
            max_frame: max_frame as usize,
            max_message: max_message as usize,
            idle: Duration::from_secs(idle),
            max_duration: Duration::from_secs(max_duration),
            binary: api.binary_messages == crate::config::BinaryMessages::Base64,
        },
    }
}
