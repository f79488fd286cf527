//! The throttles a request (or a WebSocket message) must pass: the key's plan
//! for its route and the key's plan, the stage's route, the stage, the gateway.

use crate::ids::{RouteId, StageId};
use crate::plan::{Plan, RoutePlan, StagePlan};
use crate::policy::keys::Binding;
use crate::proxy::shard::Shard;

/// Checks the throttles that apply, most specific first (the key's plan for this
/// route, the key's plan, the stage's route, the stage, the gateway); each one passed
/// spends a token.
pub fn admit(
    plan: &Plan,
    shard: &Shard,
    binding: Option<&Binding>,
    stage_id: StageId,
    route_id: RouteId,
    route: &RoutePlan,
    stage: &StagePlan,
) -> bool {
    let keyed = binding.is_some_and(|b| b.throttle.is_some() || !b.routes.is_empty());
    let levels = [route.throttle, stage.throttle, plan.throttle];
    if !keyed && levels.iter().all(Option::is_none) {
        return true;
    }
    let mut tokens = shard.tokens.borrow_mut();
    let now = tokens.now_ns();
    if let Some(b) = binding {
        let buckets = [b.route_throttle(stage_id, route_id), b.throttle.as_ref()];
        for bucket in buckets.into_iter().flatten() {
            if !tokens.admit_slot(bucket.slot, &bucket.shared, now) {
                return false;
            }
        }
    }
    levels
        .into_iter()
        .flatten()
        .all(|id| tokens.admit(&plan.throttles[id], now))
}
