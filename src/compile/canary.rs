//! A stage's canary release: a second compiled stage with the canary's
//! deployment and stage variables, which dispatch never reaches; the stage
//! draws it for `percent` of its requests.

use std::collections::HashMap;
use std::sync::Arc;

use crate::compile::apis::Snapshots;
use crate::compile::apis::{api_parts, ApiParts, Deployed};
use crate::compile::build::Build;
use crate::compile::stages::compile_stage;
use crate::config::{ApiFile, CanaryFile, StageFile};
use crate::plan::StagePlan;

/// The stage a canary belongs to, as the API's loop has it.
pub struct CanarySpec<'a> {
    pub api: &'a ApiFile,
    /// The API's key path.
    pub path: &'a str,
    pub stage: &'a StageFile,
    /// The stage's key path.
    pub spath: &'a str,
    /// What the management API set for the stage.
    pub pointer: Option<&'a Deployed>,
    /// The API's definition in the file, compiled.
    pub parts: &'a ApiParts,
}

/// The canary of `parent` (compiled from `spec`), or `None` with errors.
#[allow(clippy::too_many_arguments)]
pub fn compile_canary(
    spec: &CanarySpec<'_>,
    setting: CanaryFile,
    parent: &StagePlan,
    deployed: &mut HashMap<String, (ApiFile, ApiParts)>,
    authorizers: &mut Vec<Arc<crate::policy::access::Authorizer>>,
    sigs: &mut Vec<u64>,
    access_keys: &Arc<crate::policy::sigv4::KeyTable>,
    snapshots: Option<&Snapshots>,
    b: &mut Build,
) -> Option<(CanaryFile, StagePlan)> {
    let cpath = format!("{}.canary", spec.spath);
    let api = &spec.api.name;
    if !setting.percent.is_finite() || !(0.0..=100.0).contains(&setting.percent) {
        b.errs.push(
            format!("{cpath}.percent"),
            format!("{}: a share of 0.0 to 100.0 (percent)", setting.percent),
        );
        return None;
    }
    if crate::compile::websocket::is_websocket(spec.api) {
        b.errs.push(
            cpath,
            "canary releases are for HTTP APIs' stages (AWS has them for REST APIs only)",
        );
        return None;
    }
    // The stage's own deployment (or the file), unless the canary names one.
    let own = spec.pointer.and_then(|d| d.id.clone());
    let id = match &setting.deployment {
        None => own,
        Some(id) if deployed.contains_key(id) => Some(id.clone()),
        Some(id) => {
            let Some(look) = snapshots else {
                tracing::debug!(
                    api = %api,
                    stage = %spec.stage.name,
                    deployment = %id,
                    "no store to read the canary's deployment from: it is not checked here"
                );
                let plan = compile_stage_as_canary(spec, &setting, own, parent, deployed, b);
                return Some((setting, plan));
            };
            let Some(snapshot) = look(api, id) else {
                b.errs.push(
                    format!("{cpath}.deployment"),
                    format!("no deployment {id:?} of API {api:?} in the store"),
                );
                return None;
            };
            let dpath = format!("deployments[{api}/{id}]");
            let d = Deployed {
                id: Some(id.clone()),
                snapshot: Some(snapshot),
                variables: None,
                canary: None,
            };
            let file = d.api_file(api, &dpath, &mut b.errs)?;
            let parts = api_parts(
                &file,
                &dpath,
                &mut b.up_tls,
                authorizers,
                sigs,
                &mut Vec::new(),
                access_keys,
                &mut b.errs,
            );
            deployed.insert(id.clone(), (file, parts));
            Some(id.clone())
        }
    };
    Some((
        setting.clone(),
        compile_stage_as_canary(spec, &setting, id, parent, deployed, b),
    ))
}

/// The stage compiled again as its canary: the deployment `id` (`None`: the
/// file's definition), the stage's variables with the canary's over them, the
/// stage's throttles.
fn compile_stage_as_canary(
    spec: &CanarySpec<'_>,
    setting: &CanaryFile,
    id: Option<String>,
    parent: &StagePlan,
    deployed: &HashMap<String, (ApiFile, ApiParts)>,
    b: &mut Build,
) -> StagePlan {
    let mut variables = spec
        .pointer
        .and_then(|d| d.variables.clone())
        .unwrap_or_default();
    variables.extend(setting.variables.clone());
    let pointer = Deployed {
        id,
        snapshot: None,
        variables: Some(variables),
        canary: None,
    };
    compile_stage(
        spec.api,
        spec.path,
        spec.stage,
        &format!("{}.canary", spec.spath),
        Some(&pointer),
        spec.parts,
        deployed,
        Some(parent),
        b,
    )
}
