//! Deployments and stages: list and create deployments, point a stage at one (or
//! back at the file), set stage variables.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::registry::ApiError;
use crate::control::store::CanaryPointer;

use crate::control::admin::views::{deployment_json, stage_json};
use crate::control::admin::wire::{body, lock, Ctx, Request, Response};

pub fn known_stage(ctx: &Ctx, api: &str, stage: &str) -> Result<(), ApiError> {
    let plan = ctx.control.plan();
    if plan.stages.iter().any(|s| s.api == api && s.stage == stage) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            format!("no stage {stage:?} of API {api:?} in the config"),
        ))
    }
}

pub fn list_deployments(ctx: &Ctx, api: &str) -> Result<Response, ApiError> {
    let mut all = lock(ctx).store().deployments(api)?;
    if all.is_empty() && !ctx.control.plan().api_sources.contains_key(api) {
        return Err(ApiError::new(404, format!("no API {api:?}")));
    }
    // Newest first, as AWS's GetDeployments.
    all.reverse();
    let items: Vec<Value> = all.iter().map(deployment_json).collect();
    Ok(Response::ok(json!({ "items": items })))
}

/// AWS's CreateDeployment: snapshots the API as the running config has it;
/// with `stageName`, points that stage at it.
pub fn create_deployment(ctx: &Ctx, req: &Request, api: &str) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct New {
        #[serde(default)]
        description: String,
        #[serde(default, alias = "stage_name")]
        #[serde(rename = "stageName")]
        stage_name: Option<String>,
    }
    let new: New = body(req)?;
    let snapshot = ctx
        .control
        .plan()
        .api_sources
        .get(api)
        .cloned()
        .ok_or_else(|| ApiError::new(404, format!("no API {api:?}")))?;
    if let Some(stage) = &new.stage_name {
        known_stage(ctx, api, stage)?;
    }
    let d = crate::control::store::Deployment {
        id: crate::control::deploy::new_id(),
        api: api.to_owned(),
        description: new.description,
        created_ms: crate::clock::unix_ms(),
        snapshot,
    };
    lock(ctx).store().put_deployment(&d)?;
    if let Some(stage) = &new.stage_name {
        point_stage(ctx, api, stage, |p| p.deployment_id = Some(d.id.clone()))?;
    }
    Ok(Response::created(deployment_json(&d)))
}

/// AWS's UpdateStage: `{"deploymentId": ID | null, "variables": {...} | null}`;
/// a field left out stays as it is. Answers once every worker serves it.
pub fn update_stage(
    ctx: &Ctx,
    req: &Request,
    api: &str,
    stage: &str,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Patch {
        #[serde(
            default,
            rename = "deploymentId",
            alias = "deployment_id",
            deserialize_with = "present"
        )]
        deployment_id: Option<Option<String>>,
        #[serde(default, deserialize_with = "present")]
        variables: Option<Option<std::collections::BTreeMap<String, String>>>,
        /// AWS's `canarySettings`; `null` removes the stage's canary.
        #[serde(
            default,
            rename = "canarySettings",
            alias = "canary",
            deserialize_with = "present"
        )]
        canary: Option<Option<CanarySettings>>,
    }
    /// A field given as `null` is `Some(None)` (cleared); one left out is `None`.
    fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: serde::Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
    let patch: Patch = body(req)?;
    known_stage(ctx, api, stage)?;
    let canary_deployment = patch
        .canary
        .as_ref()
        .and_then(|c| c.as_ref()?.deployment_id.as_ref());
    for id in [
        patch.deployment_id.as_ref().and_then(|d| d.as_ref()),
        canary_deployment,
    ]
    .into_iter()
    .flatten()
    {
        if lock(ctx).store().deployment(api, id)?.is_none() {
            return Err(ApiError::new(
                404,
                format!("no deployment {id:?} of API {api:?}"),
            ));
        }
    }
    let canary = match patch.canary {
        None => None,
        Some(None) => Some(CanaryPointer::Removed),
        Some(Some(c)) => Some(CanaryPointer::Set(c.setting()?)),
    };
    point_stage(ctx, api, stage, |p| {
        if let Some(d) = patch.deployment_id {
            p.deployment_id = d;
        }
        if let Some(v) = patch.variables {
            p.variables = v;
        }
        if let Some(c) = canary {
            p.canary = Some(c);
        }
    })?;
    stage_answer(ctx, api, stage)
}

/// The stage as it is now served.
fn stage_answer(ctx: &Ctx, api: &str, stage: &str) -> Result<Response, ApiError> {
    let set = lock(ctx).store().stages()?;
    Ok(Response::ok(stage_json(
        &ctx.control.plan(),
        api,
        stage,
        &set,
    )))
}

/// AWS's `canarySettings` as UpdateStage takes them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanarySettings {
    #[serde(rename = "percentTraffic", alias = "percent", default)]
    percent: f64,
    #[serde(rename = "deploymentId", alias = "deployment", default)]
    deployment_id: Option<String>,
    #[serde(rename = "stageVariableOverrides", alias = "variables", default)]
    variables: std::collections::BTreeMap<String, String>,
}

impl CanarySettings {
    fn setting(self) -> Result<crate::config::CanaryFile, ApiError> {
        if !self.percent.is_finite() || !(0.0..=100.0).contains(&self.percent) {
            return Err(ApiError::new(
                400,
                format!(
                    "canarySettings.percentTraffic {}: 0.0 to 100.0",
                    self.percent
                ),
            ));
        }
        Ok(crate::config::CanaryFile {
            percent: self.percent,
            deployment: self.deployment_id,
            variables: self.variables,
        })
    }
}

/// The canary in force on a stage (the file's or the management API's).
fn canary_of(ctx: &Ctx, api: &str, stage: &str) -> Result<crate::config::CanaryFile, ApiError> {
    known_stage(ctx, api, stage)?;
    let plan = ctx.control.plan();
    plan.stages
        .iter()
        .find(|s| s.api == api && s.stage == stage && s.canary_of.is_none())
        .and_then(|s| s.canary.as_ref())
        .map(|c| c.setting.clone())
        .ok_or_else(|| ApiError::new(404, format!("stage {api}/{stage} has no canary")))
}

/// Removes the stage's canary (AWS: `remove /canarySettings`): every request
/// goes to the stage again, on every worker before the answer.
pub fn remove_canary(ctx: &Ctx, api: &str, stage: &str) -> Result<Response, ApiError> {
    canary_of(ctx, api, stage)?;
    point_stage(ctx, api, stage, |p| p.canary = Some(CanaryPointer::Removed))?;
    stage_answer(ctx, api, stage)
}

/// Promotes the stage's canary, as AWS's console does: the stage serves the
/// canary's deployment with the canary's variables over its own, and the canary
/// stays with 0% of the traffic (on every worker before the answer).
pub fn promote_canary(ctx: &Ctx, api: &str, stage: &str) -> Result<Response, ApiError> {
    let mut c = canary_of(ctx, api, stage)?;
    point_stage(ctx, api, stage, |p| {
        if let Some(d) = &c.deployment {
            p.deployment_id = Some(d.clone());
        }
        if !c.variables.is_empty() {
            let vars = p.variables.get_or_insert_with(Default::default);
            vars.extend(c.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        c.percent = 0.0;
        p.canary = Some(CanaryPointer::Set(c));
    })?;
    stage_answer(ctx, api, stage)
}

/// Changes a stage's setting and reloads; when the reload refuses it (the
/// deployment no longer compiles with this config, say), the setting goes back
/// and the errors are the answer.
pub fn point_stage(
    ctx: &Ctx,
    api: &str,
    stage: &str,
    change: impl FnOnce(&mut crate::control::store::StagePointer),
) -> Result<(), ApiError> {
    let before = {
        let reg = lock(ctx);
        let before = reg
            .store()
            .stages()?
            .into_iter()
            .find(|(a, s, _)| a == api && s == stage)
            .map(|x| x.2);
        let mut p = before.clone().unwrap_or_default();
        change(&mut p);
        reg.store()
            .put_stage(api, stage, (!p.is_empty()).then_some(&p))?;
        before
    };
    match ctx.control.reload("stage update") {
        Ok(_) => Ok(()),
        Err(errors) => {
            lock(ctx).store().put_stage(api, stage, before.as_ref())?;
            Err(ApiError::new(
                400,
                format!("stage not changed: {}", errors.join("; ")),
            ))
        }
    }
}
