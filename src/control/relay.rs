//! Cluster mode's `@connections` relay: a worker that gets a call for a
//! connection another node holds (its id starts with that node's tag) hands it
//! here; the relay publishes it on that node's Redis channel, the node's relay
//! carries it out on its own connection (through the holding worker's inbox) and
//! publishes the answer back, and the answer goes to the calling worker's inbox.
//!
//! Two threads per node: `out` publishes calls and answers, batched into one
//! pipeline per wake-up, on a connection of its own; `in` reads this node's two
//! channels (`ws:{tag}` calls, `wsr:{tag}` answers). A call nobody is subscribed
//! for (the node is gone) is answered 410 at once; one unanswered within the
//! workers' wait is dropped (the worker answers 410). Redis away: calls fail
//! (410, the connection cannot be reached) and the threads reconnect with
//! backoff.

// The control plane shares the calls in flight under a mutex (clippy.toml keeps
// them off the request path).
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::control::redis::Shared;
use crate::upstream::connections::{self, Op, Remote};
use crate::upstream::function::Reply;
use crate::upstream::inbox::Outcome;

/// Calls queued for the relay before workers are refused.
const QUEUE: usize = 65_536;
/// Publishes gathered into one pipeline.
const BATCH: usize = 512;
/// A call in flight is forgotten after this (the worker stopped waiting).
const FORGET: Duration = Duration::from_secs(5);
/// How long the subscriber's read waits before looking again.
const WAIT: Duration = Duration::from_secs(1);

/// A call as published.
#[derive(Serialize, Deserialize)]
struct Call {
    call: u64,
    /// The calling node's tag (where the answer goes).
    from: String,
    api: String,
    stage: String,
    id: String,
    /// `post`, `get` or `delete`.
    op: String,
    /// `post`'s message, base64.
    #[serde(default)]
    data: String,
}

/// An answer as published.
#[derive(Serialize, Deserialize)]
struct Answer {
    answer: u64,
    status: u16,
    /// The JSON body (GetConnection's), as text.
    #[serde(default)]
    body: String,
}

/// What the `out` thread publishes.
enum Publish {
    Call(Remote),
    Answer { to: String, answer: Answer },
}

type Pending = Arc<Mutex<HashMap<u64, (Reply, Instant)>>>;

/// Starts the relay and opens `connections::RELAY` to the workers.
pub fn start(shared: Arc<Shared>) {
    let (tx, rx) = crossbeam_channel::bounded::<Remote>(QUEUE);
    let (answers_tx, answers_rx) = crossbeam_channel::unbounded::<Publish>();
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let me = connections::tag_hex(&connections::NODE_TAG);
    let out = {
        let (shared, pending, me) = (Arc::clone(&shared), Arc::clone(&pending), me.clone());
        std::thread::Builder::new()
            .name("shardgate-relay-out".into())
            .spawn(move || publish_loop(&shared, &rx, &answers_rx, &pending, &me))
    };
    let inbound = std::thread::Builder::new()
        .name("shardgate-relay-in".into())
        .spawn(move || subscribe_loop(&shared, &answers_tx, &pending, &me));
    if let Err(e) = out.and(inbound) {
        tracing::error!(error = %e, "cannot start the @connections relay: calls for other nodes' connections answer 410");
        return;
    }
    let _ = connections::RELAY.set(tx);
}

fn op_name(op: &Op) -> (&'static str, String) {
    match op {
        Op::Post(d) => ("post", base64::engine::general_purpose::STANDARD.encode(d)),
        Op::Get => ("get", String::new()),
        Op::Delete => ("delete", String::new()),
    }
}

/// Publishes calls from the workers and answers from `in`, a batch per
/// pipeline; forgets calls past `FORGET`.
fn publish_loop(
    shared: &Shared,
    calls: &Receiver<Remote>,
    answers: &Receiver<Publish>,
    pending: &Pending,
    me: &str,
) {
    crate::below_workers(5);
    let mut conn: Option<redis::Connection> = None;
    let mut next_call: u64 = 1;
    let mut last_sweep = Instant::now();
    loop {
        let mut batch = Vec::new();
        crossbeam_channel::select! {
            recv(calls) -> r => match r {
                Ok(c) => batch.push(Publish::Call(c)),
                Err(_) => return,
            },
            recv(answers) -> r => match r {
                Ok(a) => batch.push(a),
                Err(_) => return,
            },
            default(Duration::from_millis(500)) => {}
        }
        while batch.len() < BATCH {
            match answers
                .try_recv()
                .map_err(|_| ())
                .or_else(|()| calls.try_recv().map(Publish::Call).map_err(|_| ()))
            {
                Ok(p) => batch.push(p),
                Err(()) => break,
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            // Dropped replies tell their workers the call was lost.
            crate::lock(pending).retain(|_, (_, since)| since.elapsed() < FORGET);
        }
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        let mut ids = Vec::with_capacity(batch.len());
        {
            let mut p = crate::lock(pending);
            for item in batch {
                match item {
                    Publish::Call(c) => {
                        let id = next_call;
                        next_call += 1;
                        let (op, data) = op_name(&c.op);
                        let wire = Call {
                            call: id,
                            from: me.to_string(),
                            api: c.api,
                            stage: c.stage,
                            id: c.id,
                            op: op.to_string(),
                            data,
                        };
                        let channel = shared.relay_channel(&connections::tag_hex(&c.tag), false);
                        pipe.cmd("PUBLISH")
                            .arg(channel)
                            .arg(serde_json::to_string(&wire).unwrap_or_default());
                        // Filed before it is published: the answer may come first.
                        p.insert(id, (c.reply, Instant::now()));
                        ids.push(Some(id));
                    }
                    Publish::Answer { to, answer } => {
                        pipe.cmd("PUBLISH")
                            .arg(shared.relay_channel(&to, true))
                            .arg(serde_json::to_string(&answer).unwrap_or_default());
                        ids.push(None);
                    }
                }
            }
        }
        let sent: redis::RedisResult<Vec<i64>> = match conn.as_mut() {
            Some(c) => pipe.query(c),
            None => match shared.publisher() {
                Ok(mut c) => {
                    let r = pipe.query(&mut c);
                    conn = Some(c);
                    r
                }
                Err(e) => Err(redis::RedisError::from(std::io::Error::other(
                    e.to_string(),
                ))),
            },
        };
        let mut p = crate::lock(pending);
        match sent {
            Ok(counts) => {
                for (id, n) in ids.into_iter().zip(counts) {
                    // Nobody subscribed under that tag: no node holds it.
                    if let (Some(id), 0) = (id, n) {
                        if let Some((reply, _)) = p.remove(&id) {
                            reply.send(Outcome::Answer(410, Vec::new()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "@connections relay: redis unreachable; calls for other nodes' connections failed");
                conn = None;
                for id in ids.into_iter().flatten() {
                    p.remove(&id);
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads this node's channels: carries out calls for its connections (the
/// answer goes to `out`), hands answers to the workers waiting for them.
fn subscribe_loop(shared: &Shared, out: &Sender<Publish>, pending: &Pending, me: &str) {
    crate::below_workers(5);
    let calls = shared.relay_channel(me, false);
    let answers = shared.relay_channel(me, true);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut conn = match shared.subscriber(WAIT) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "@connections relay: cannot subscribe yet");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut ps = conn.as_pubsub();
        if ps.subscribe(&calls).is_err() || ps.subscribe(&answers).is_err() {
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        loop {
            let msg = match ps.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => continue,
                Err(_) => break,
            };
            let Ok(text) = msg.get_payload::<String>() else {
                continue;
            };
            if msg.get_channel_name() == answers {
                match serde_json::from_str::<Answer>(&text) {
                    Ok(a) => {
                        if let Some((reply, _)) = crate::lock(pending).remove(&a.answer) {
                            reply.send(Outcome::Answer(a.status, a.body.into_bytes()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "@connections relay: unreadable answer; skipped")
                    }
                }
                continue;
            }
            match serde_json::from_str::<Call>(&text) {
                Ok(c) => {
                    let answer = carry_out(&c);
                    let _ = out.send(Publish::Answer { to: c.from, answer });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "@connections relay: unreadable call; skipped")
                }
            }
        }
    }
}

/// Carries out another node's call on a connection of this node.
fn carry_out(c: &Call) -> Answer {
    let op = match c.op.as_str() {
        "post" => match base64::engine::general_purpose::STANDARD.decode(&c.data) {
            Ok(d) => Op::Post(d),
            Err(_) => {
                return Answer {
                    answer: c.call,
                    status: 400,
                    body: String::new(),
                }
            }
        },
        "get" => Op::Get,
        _ => Op::Delete,
    };
    let (status, body) = connections::carry_out(&c.api, &c.stage, &c.id, op, |e, cmd| {
        e.inbox.command(e.local, cmd)
    })
    .unwrap_or((410, Vec::new()));
    Answer {
        answer: c.call,
        status,
        body: String::from_utf8(body).unwrap_or_default(),
    }
}
