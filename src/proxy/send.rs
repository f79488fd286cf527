//! Sending a proxied request to its upstream: a fixed address directly; a group's
//! target picked by this worker's `Chooser`, retried on another target when the
//! first fails in a way another may mend (and the budget allows), with each
//! try's outcome feeding passive outlier detection.

use std::rc::Rc;

use crate::http::error::GatewayError;
use crate::http::parse::Framing;
use crate::plan::{Limits, Plan};
use crate::proxy::client::Client;
use crate::proxy::forward::{self, Failed, Request};
use crate::proxy::shard::Shard;
use crate::proxy::verdict::Pick;
use crate::upstream::choose::Chooser;
use crate::upstream::group::Group;
use crate::upstream::target::{ProxyTarget, Upstream};

/// Sends the request to `target`'s upstream; as `forward::proxy`.
pub async fn send(
    c: &mut Client,
    shard: &Shard,
    plan: &Plan,
    target: &ProxyTarget,
    pick: &Pick,
    mut req: Request,
    limits: &Limits,
) -> Result<bool, Failed> {
    req.held = forward::hold_body(c, &req, limits).await?;
    let gi = match &target.to {
        Upstream::Fixed(ep) => return forward::proxy(c, shard, target, ep, &req, limits).await,
        Upstream::Group(gi) => *gi,
    };
    let Some(group) = plan.upstreams.get(gi) else {
        return Err(Failed::Answer(GatewayError::Unavailable("no such group")));
    };
    req.max_conns = group.max_conns;
    // A streamed body cannot be sent twice.
    let resendable = req.framing == Framing::None || req.held;
    let key = std::sync::Arc::as_ptr(&group.live) as usize;
    let mut tried = 0u64;
    let mut host = pick.host.clone();
    let mut last: Option<GatewayError> = None;
    for attempt in 0..=group.retries.attempts {
        let now_ms = crate::clock::unix_ms();
        let retry = attempt > 0;
        let chosen = {
            let mut choosers = shard.choosers.borrow_mut();
            let ch = choosers.entry(key).or_insert_with(|| Chooser::new(group));
            ch.refresh(&group.live);
            if retry && !ch.may_retry(group.retries.budget_percent, now_ms) {
                tracing::debug!(group = %group.name, "retry budget spent: answering with the failure");
                None
            } else {
                let i = ch.pick(group, pick.hash, tried, now_ms, || shard.random());
                if let Some(i) = i {
                    ch.count(retry, now_ms);
                    ch.start(i, retry);
                    req.retry = resendable
                        && attempt < group.retries.attempts
                        && ch.may_retry(group.retries.budget_percent, now_ms);
                }
                i.map(|i| (i, Rc::clone(&ch.snap)))
            }
        };
        let Some((i, snap)) = chosen else {
            break;
        };
        if i < 64 {
            tried |= 1 << i;
        }
        let ep = &snap.endpoints[i].to;
        if c.up_head.get(host.clone()) != Some(ep.host_header.as_bytes()) {
            c.up_head
                .splice(host.clone(), ep.host_header.bytes())
                .for_each(drop);
            host = host.start..host.start + ep.host_header.len();
        }
        c.outcome.retries = attempt as u8;
        let r = forward::proxy(c, shard, target, ep, &req, limits).await;
        let failed = match &r {
            Ok(_) => matches!(c.outcome.status, 502..=504),
            Err(Failed::Retry(_)) => true,
            Err(Failed::Answer(e)) => matches!(
                e,
                GatewayError::IntegrationTimeout
                    | GatewayError::UpstreamRefused
                    | GatewayError::UpstreamFailed(_)
            ),
            Err(Failed::Abort) => false,
        };
        end(shard, group, key, &snap, i, failed);
        match r {
            Err(Failed::Retry(e)) => last = Some(e),
            other => return other,
        }
    }
    Err(Failed::Answer(last.unwrap_or_else(|| {
        tracing::warn!(group = %group.name, "no healthy target in the upstream group");
        GatewayError::Unavailable("no healthy target")
    })))
}

/// Ends a try on this worker's chooser (if it still runs the same membership).
fn end(
    shard: &Shard,
    group: &Group,
    key: usize,
    snap: &Rc<crate::upstream::choose::Membership>,
    i: usize,
    failed: bool,
) {
    let mut choosers = shard.choosers.borrow_mut();
    if let Some(ch) = choosers.get_mut(&key) {
        if Rc::ptr_eq(&ch.snap, snap) {
            ch.end(group, i, failed, crate::clock::unix_ms());
        }
    }
}
