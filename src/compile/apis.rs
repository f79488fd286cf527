//! APIs and their stages: what an API compiles to once (routes, router, access
//! control), and each stage built from it or from a deployment's snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::compile::authorizers::{compile_api_access, compile_route_access, ApiAccess};
use crate::compile::build::{digest, UpstreamTls};
use crate::compile::routes::{empty_router, route_keys};
use crate::config::{ApiFile, ConfigErrors};
use crate::route::{RouteKey, Router};

/// An API's deployment's snapshot by (api, deployment id), from the store.
pub type Snapshots = Arc<dyn Fn(&str, &str) -> Option<serde_json::Value> + Send + Sync>;

/// A stage pointed at a deployment: the deployment's snapshot of the API, and
/// the stage's variables set through the management API (over the file's).
#[derive(Debug, Clone)]
pub struct Deployed {
    /// `None`: the stage follows the file (only its variables are set).
    pub id: Option<String>,
    /// The API's mapping as deployed (without `stages`), as JSON.
    pub snapshot: Option<serde_json::Value>,
    pub variables: Option<BTreeMap<String, String>>,
    /// The canary the management API set (`Some(None)`: removed); `None`: the
    /// file's.
    pub canary: Option<Option<crate::config::CanaryFile>>,
}

impl Deployed {
    /// The snapshot as an API definition (its own errors under `path`).
    pub fn api_file(&self, api: &str, path: &str, errs: &mut ConfigErrors) -> Option<ApiFile> {
        let snapshot = self.snapshot.clone()?;
        let mut v: serde_yaml_ng::Value = match serde_json::from_value(snapshot) {
            Ok(v) => v,
            Err(e) => {
                errs.push(path, format!("unreadable snapshot: {e}"));
                return None;
            }
        };
        if let serde_yaml_ng::Value::Mapping(m) = &mut v {
            m.insert("stages".into(), serde_yaml_ng::Value::Sequence(Vec::new()));
        }
        let file = crate::config::parse_api(v, path, errs)?;
        if file.name != api {
            errs.push(
                path,
                format!("a snapshot of API {:?}, not {api:?}", file.name),
            );
            return None;
        }
        Some(file)
    }
}

/// What an API's definition compiles to once for all the stages that serve it.
pub struct ApiParts {
    pub keys: Vec<RouteKey>,
    pub api_access: ApiAccess,
    pub route_auth: Vec<Option<crate::policy::access::RouteAuth>>,
    pub route_validate: Vec<Option<Arc<crate::policy::validate::Validator>>>,
    pub router: Arc<Router>,
}

#[allow(clippy::too_many_arguments)]
pub fn api_parts(
    api: &ApiFile,
    path: &str,
    up_tls: &mut UpstreamTls,
    authorizers: &mut Vec<Arc<crate::policy::access::Authorizer>>,
    sigs: &mut Vec<u64>,
    config_access_keys: &mut Vec<crate::policy::sigv4::AccessKey>,
    access_keys: &Arc<crate::policy::sigv4::KeyTable>,
    errs: &mut ConfigErrors,
) -> ApiParts {
    let keys = if crate::compile::websocket::is_websocket(api) {
        crate::compile::websocket::ws_route_keys(api, path, errs)
    } else {
        route_keys(api, path, errs)
    };
    let before = authorizers.len();
    let api_access = compile_api_access(
        api,
        path,
        up_tls,
        authorizers,
        config_access_keys,
        access_keys,
        errs,
    );
    // The authorizers just compiled are the API's, as listed (when all compiled;
    // otherwise there is no plan): their digests let a reload keep them.
    let files: Vec<_> = api.authorizers.iter().flatten().collect();
    let added = authorizers.len() - before;
    if files.len() == added {
        sigs.extend(files.iter().map(|a| digest(&(&api.name, a))));
    } else {
        sigs.extend(std::iter::repeat_n(0, added));
    }
    let (mut route_auth, route_validate) =
        compile_route_access(api, path, &api_access, authorizers, errs);
    if let Some(auth) = crate::compile::websocket::connections_auth(
        api,
        &api_access.by_name,
        authorizers,
        path,
        errs,
    ) {
        // After the API's routes and an added `$connect`, as in the keys.
        route_auth.resize(
            keys.len() - crate::compile::websocket::CONNECTIONS_KEYS.len(),
            None,
        );
        route_auth.extend(std::iter::repeat_n(
            Some(auth),
            crate::compile::websocket::CONNECTIONS_KEYS.len(),
        ));
    }
    let router = match Router::build(&keys) {
        Ok(r) => Arc::new(r),
        Err(conflicts) => {
            for (ri, msg) in conflicts {
                let key = api.routes[ri].as_ref().map_or("", |r| r.route.as_str());
                errs.push(
                    format!("{path}.routes[{ri}].route"),
                    format!("{key:?} {msg}"),
                );
            }
            Arc::new(empty_router())
        }
    };
    ApiParts {
        keys,
        api_access,
        route_auth,
        route_validate,
        router,
    }
}

pub fn check_stage_name(name: &str, path: &str, errs: &mut ConfigErrors) {
    let ok = name == "$default"
        || (!name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    if !ok {
        errs.push(
            path,
            format!(
                "stage name {name:?}: letters, digits, `-` and `_`, at most 128, or `$default`"
            ),
        );
    }
}
