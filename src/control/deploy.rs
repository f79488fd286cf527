//! Deployments and stages, as AWS: a deployment is an immutable snapshot of an
//! API's definition (routes, integrations, authorizers, CORS, policy) as the
//! running config has it; a stage follows the config file until the management
//! API points it at a deployment, and serves that snapshot from then on (across
//! reloads and restarts); rollback is pointing it back at an older one. Stage
//! variables set through the management API apply over the file's. Both live in
//! the store, so the history survives restarts.

use std::collections::HashMap;

use crate::compile::Deployed;
use crate::control::store::Store;

/// A new deployment id: 10 lower-case letters and digits, as AWS's (and as key
/// ids).
pub fn new_id() -> String {
    crate::encode::random_id()
}

/// What the compiler needs from the store: each pointed stage's snapshot,
/// variables and canary.
pub fn deployed(store: &Store) -> anyhow::Result<HashMap<(String, String), Deployed>> {
    let mut out = HashMap::new();
    for (api, stage, p) in store.stages()? {
        let snapshot = match &p.deployment_id {
            Some(id) => match store.deployment(&api, id)? {
                Some(d) => Some(d.snapshot),
                None => {
                    tracing::warn!(api, stage, deployment = %id, "stage points at a deployment the store lacks; it follows the config");
                    None
                }
            },
            None => None,
        };
        out.insert(
            (api, stage),
            Deployed {
                id: p.deployment_id.clone().filter(|_| snapshot.is_some()),
                snapshot,
                variables: p.variables,
                canary: p.canary.map(|c| c.setting().cloned()),
            },
        );
    }
    Ok(out)
}

/// The compiler's view of the store's deployments: an API's deployment's
/// snapshot by id (a canary names its deployment by id).
pub fn snapshots(store: std::sync::Arc<Store>) -> crate::compile::Snapshots {
    std::sync::Arc::new(move |api: &str, id: &str| match store.deployment(api, id) {
        Ok(d) => d.map(|d| d.snapshot),
        Err(e) => {
            tracing::warn!(api, deployment = id, error = %format!("{e:#}"), "cannot read a deployment from the store");
            None
        }
    })
}
