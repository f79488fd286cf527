//! The `@connections` management API of WebSocket APIs (`PostToConnection`,
//! `GetConnection`, `DeleteConnection`): a call reaches the connection's
//! worker through its inbox, or, for another node's connection, the cluster
//! relay (`upstream::connections::RELAY`).

use std::sync::Arc;
use std::time::Duration;

use crate::http::error::GatewayError;
use crate::proxy::shard::Shard;
use crate::upstream::connections;
use crate::upstream::inbox::Outcome;

/// What the pipeline worked out for an `@connections` call.
#[derive(Debug)]
pub struct ConnectionsCall {
    /// 0 POST (send), 1 GET, 2 DELETE.
    pub kind: usize,
    pub id: String,
    pub data: Vec<u8>,
}

/// AWS's `PostToConnection` limit.
const MAX_POST: usize = 128 * 1024;

/// How long an `@connections` call for another node's connection waits for
/// that node's answer.
const REMOTE_WAIT: Duration = Duration::from_secs(3);

/// Answers an `@connections` call: sends to, describes or closes a connection
/// of this stage held by any worker, or by another node in cluster mode; 410
/// `GoneException` when there is none.
pub async fn manage(
    shard: &Shard,
    stage: &crate::plan::StagePlan,
    call: &ConnectionsCall,
) -> Result<crate::proxy::lambda::Answer, GatewayError> {
    let r = connections_call(shard, stage, call).await;
    if let Some(m) = shard.metrics.worker.get(shard.id) {
        match &r {
            Ok(_) => m.connections_ok.add(1),
            Err(e) if e.refusal().status == 410 => m.connections_gone.add(1),
            Err(_) => m.connections_refused.add(1),
        }
    }
    r
}

async fn connections_call(
    shard: &Shard,
    stage: &crate::plan::StagePlan,
    call: &ConnectionsCall,
) -> Result<crate::proxy::lambda::Answer, GatewayError> {
    let gone = || GatewayError::detailed(410, "message", "", Some("GoneException"));
    let op = match call.kind {
        0 if call.data.len() > MAX_POST => {
            return Err(GatewayError::detailed(
                413,
                "message",
                "Message too long",
                Some("PayloadTooLargeException"),
            ))
        }
        0 => connections::Op::Post(call.data.clone()),
        1 => connections::Op::Get,
        _ => connections::Op::Delete,
    };
    let (status, body) = match connections::tag_of(&call.id) {
        Some(tag) if tag != *connections::NODE_TAG => {
            remote(shard, stage, call, tag, op).await.ok_or_else(gone)?
        }
        _ => connections::carry_out(&stage.api, &stage.stage, &call.id, op, |entry, cmd| {
            let local = shard
                .calls
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.inbox, &entry.inbox));
            if local {
                shard.mailboxes.post(entry.local, cmd);
            } else {
                entry.inbox.command(entry.local, cmd);
            }
        })
        .ok_or_else(gone)?,
    };
    if status == 410 {
        return Err(gone());
    }
    Ok(crate::proxy::lambda::Answer {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    })
}

/// A call for a connection of the node tagged `tag`, through the cluster relay
/// (`None`: no relay, or no node answered in time: the connection is gone).
async fn remote(
    shard: &Shard,
    stage: &crate::plan::StagePlan,
    call: &ConnectionsCall,
    tag: [u8; 3],
    op: connections::Op,
) -> Option<(u16, Vec<u8>)> {
    let relay = connections::RELAY.get()?;
    let calls = shard.calls.as_ref()?;
    let (reply, token) = calls.reply();
    let sent = relay.try_send(connections::Remote {
        tag,
        api: stage.api.clone(),
        stage: stage.stage.clone(),
        id: call.id.clone(),
        op,
        reply,
    });
    if let Err(e) = sent {
        // The relay is behind or gone: the reply, dropped with the call, is
        // not waited for.
        drop(e);
        calls.cancel(token);
        tracing::warn!(
            "@connections relay unavailable; a call for another node's connection failed"
        );
        return None;
    }
    match calls.wait(token, REMOTE_WAIT).await {
        Some(Outcome::Answer(status, body)) => Some((status, body)),
        _ => None,
    }
}
