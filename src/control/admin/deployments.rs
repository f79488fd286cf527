//! Deployments and stages: list and create deployments, point a stage at one (or
//! back at the file), set stage variables.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::registry::ApiError;

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
    if let Some(Some(id)) = &patch.deployment_id {
        if lock(ctx).store().deployment(api, id)?.is_none() {
            return Err(ApiError::new(
                404,
                format!("no deployment {id:?} of API {api:?}"),
            ));
        }
    }
    point_stage(ctx, api, stage, |p| {
        if let Some(d) = patch.deployment_id {
            p.deployment_id = d;
        }
        if let Some(v) = patch.variables {
            p.variables = v;
        }
    })?;
    let set = lock(ctx).store().stages()?;
    Ok(Response::ok(stage_json(api, stage, &set)))
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
