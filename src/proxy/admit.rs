//! The throttles a request (or a WebSocket message) must pass: the key's plan
//! for its route and the key's plan, the stage's route, the stage, the gateway;
//! and for a WebSocket message, its connection's API key and usage plan (`meter`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::http::respond::QuotaState;
use crate::ids::Slot;
use crate::ids::{RouteId, StageId};
use crate::plan::{Plan, RoutePlan, StagePlan};
use crate::policy::keys::Binding;
use crate::policy::quota::{Admitted, NodeGrant, Quota};
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

/// The API key a connection was opened with: its hash, and whether every
/// message counts against its usage plan (`$connect` required it) or only
/// those of routes that require a key.
#[derive(Debug)]
pub struct Keyed {
    pub hash: crate::policy::keys::KeyHash,
    pub all: bool,
}

/// A message's throttles and usage plan, as a request's: the key the
/// connection was opened with (checked again: a key disabled since is refused),
/// its plan's throttles and quota, the stage's and route's throttles. `Err`:
/// the status and AWS's message for the sender.
pub fn meter(
    plan: &Plan,
    shard: &Shard,
    stage: StageId,
    route: RouteId,
    key: Option<&Keyed>,
) -> Result<(), (u16, &'static str)> {
    let st = &plan.stages[stage];
    let rp = &st.routes[route];
    let ring = shard.keyring_for(plan.generation);
    let binding = match key {
        Some(k) if k.all || rp.api_key_required => ring.by_hash(&k.hash, stage).ok(),
        _ => None,
    };
    if binding.is_none() && (rp.api_key_required || key.is_some_and(|k| k.all)) {
        return Err((403, "Forbidden"));
    }
    if !admit(plan, shard, binding, stage, route, rp, st) {
        return Err((429, "Too Many Requests"));
    }
    let Some((slot, q)) = binding.and_then(|b| b.quota.as_ref()) else {
        return Ok(());
    };
    if spend_quota(plan, shard, *slot, q).is_err() {
        // Cluster mode: Redis may grant more; this message is refused.
        if let Some(g) = &q.grant {
            ask_for_grant(plan, g);
        }
        return Err((429, "Limit Exceeded"));
    }
    Ok(())
}

/// Spends one request of a key's plan quota from this shard's lease, taking a new
/// lease when it runs out (counted, for the store to save); `Err`: the period's
/// quota is spent as far as this node knows.
pub fn spend_quota(
    plan: &Plan,
    shard: &Shard,
    slot: Slot,
    quota: &Arc<Quota>,
) -> Result<Admitted, QuotaState> {
    let admitted = shard
        .leases
        .borrow_mut()
        .admit(slot, quota, crate::clock::unix_s());
    if admitted.is_ok_and(|a| a.leased) {
        plan.live.lease_taken();
    }
    admitted
}

/// Cluster mode: this node's grant of a quota is spent; asks the syncer for more
/// now (Redis may grant it). Returns the count of Redis's answers seen before
/// asking, which a request waiting for the grant watches.
pub fn ask_for_grant(plan: &Plan, grant: &NodeGrant) -> u64 {
    let seen = grant.answers.load(Ordering::Acquire);
    grant.wanted.store(true, Ordering::Release);
    plan.live.lease_taken();
    seen
}
