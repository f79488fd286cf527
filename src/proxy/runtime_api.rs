//! The Lambda Runtime API (`/2018-06-01/runtime/invocation/next`, `.../{id}/response`,
//! `.../{id}/error`, `/init/error`), served by every worker for the runtime
//! connections it accepted on a function's `runtime_api` address. A runtime that
//! asks for the next invocation takes one from its own worker when a request
//! there is waiting for it (handed over without leaving the thread), else from
//! the function's queue; its answer goes to the waiting request directly when
//! that request is on the same worker, else to that worker's inbox.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::http::body;
use crate::http::stream::Stream;
use crate::plan::Plan;
use crate::proxy::shard::Shard;
use crate::upstream::function::{Function, Idle, Job, Outcome, Reply, MAX_PAYLOAD};

const PREFIX: &str = "/2018-06-01/runtime/";
const NOT_FOUND: &[u8] = br#"{"errorMessage":"not found","errorType":"NotFound"}"#;
const INVALID_ID: &[u8] =
    br#"{"errorMessage":"Invalid request ID","errorType":"InvalidRequestID"}"#;
const SEND_STALL: Duration = Duration::from_secs(10);

/// Starts serving the Runtime API of the plan's functions this worker does not
/// serve yet (at start, and after each reload).
pub fn serve(shard: &Rc<Shard>, plan: &Plan) {
    let Some(calls) = &shard.calls else { return };
    shard.runtimes.borrow_mut().retain(|(f, _)| !f.stopped());
    for f in &plan.functions {
        if shard
            .runtimes
            .borrow()
            .iter()
            .any(|(s, _)| Arc::ptr_eq(s, f))
        {
            continue;
        }
        shard
            .runtimes
            .borrow_mut()
            .push((Arc::clone(f), Vec::new()));
        if let Some(listener) = f.serve(shard.id, &calls.inbox) {
            monoio::spawn(accept(Rc::clone(shard), Arc::clone(f), listener));
        }
    }
}

/// An invocation for a runtime of this worker that is waiting; the job back when
/// none is.
pub fn offer(shard: &Shard, f: &Arc<Function>, job: Job) -> Result<(), Job> {
    let idle = shard
        .runtimes
        .borrow_mut()
        .iter_mut()
        .find(|(s, _)| Arc::ptr_eq(s, f))
        .and_then(|(_, idle)| idle.pop());
    match idle {
        Some(slot) => {
            slot.give(job);
            Ok(())
        }
        None => Err(job),
    }
}

/// The worker was rung: runtimes waiting for a function with queued jobs (or
/// one that stopped) look again.
pub fn wake_idle(shard: &Shard) {
    for (f, idle) in shard.runtimes.borrow_mut().iter_mut() {
        if idle.is_empty() || !(f.has_queued() || f.stopped()) {
            continue;
        }
        for slot in idle.drain(..) {
            slot.ring();
        }
    }
}

async fn accept(shard: Rc<Shard>, f: Arc<Function>, listener: std::net::TcpListener) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(function = %f.spec.name, error = %e, "cannot serve the Runtime API");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if f.stopped() {
                    return;
                }
                // Linux: the listener's TCP_NODELAY is the connection's already.
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                monoio::spawn(runtime(Rc::clone(&shard), Arc::clone(&f), stream, peer));
            }
            Err(_) if f.stopped() => return,
            Err(e) => {
                tracing::warn!(function = %f.spec.name, error = %e, "Runtime API accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Files an outcome: directly when the request waits on this worker.
fn answer(shard: &Shard, mut reply: Reply, o: Outcome) {
    if let Some(calls) = &shard.calls {
        if let Some(token) = reply.local_token(calls) {
            calls.fulfil(token, o);
            return;
        }
    }
    reply.send(o);
}

/// One request of a runtime client.
struct RuntimeRequest {
    method: String,
    path: String,
    body: Vec<u8>,
    error_type: Option<String>,
}

/// Reads one request (head and `Content-Length` body); `None` when the
/// connection closed or failed.
async fn read_request(stream: &mut Stream, buf: &mut Vec<u8>) -> Option<RuntimeRequest> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                if len > MAX_PAYLOAD + 1024 {
                    return None;
                }
                let error_type = req
                    .headers
                    .iter()
                    .find(|h| {
                        h.name
                            .eq_ignore_ascii_case("lambda-runtime-function-error-type")
                    })
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                let (method, path) = (
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                );
                while buf.len() < n + len {
                    match body::read_more(stream, buf, 64 * 1024).await {
                        Ok(k) if k > 0 => {}
                        _ => return None,
                    }
                }
                let body = buf[n..n + len].to_vec();
                buf.drain(..n + len);
                return Some(RuntimeRequest {
                    method,
                    path,
                    body,
                    error_type,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() <= 64 * 1024 => {}
            _ => return None,
        }
        match body::read_more(stream, buf, 16 * 1024).await {
            Ok(k) if k > 0 => {}
            _ => return None,
        }
    }
}

fn response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(crate::http::respond::reason(status));
    out.extend_from_slice(b"\r\n");
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Serves one runtime client's connection.
async fn runtime(shard: Rc<Shard>, f: Arc<Function>, tcp: TcpStream, peer: SocketAddr) {
    let mut stream = Stream::Plain(tcp);
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(1024);
    // The last invocation sent on this connection: when the connection closes
    // with it unanswered, the runtime died holding it.
    let mut sent: Option<String> = None;
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            if let Some(reply) = sent.and_then(|id| f.release(&id)) {
                f.count_error();
                answer(
                    &shard,
                    reply,
                    Outcome::Lost("the function's runtime exited"),
                );
            }
            return;
        };
        let path = req.path.split('?').next().unwrap_or("");
        let rest = path.strip_prefix(PREFIX).unwrap_or("");
        match (req.method.as_str(), rest) {
            ("GET", "invocation/next") => {
                f.polling(peer, true);
                let job = acquire(&shard, &f).await;
                f.polling(peer, false);
                let Some(job) = job else {
                    return;
                };
                let deadline = Instant::now() + f.spec.timeout;
                let deadline_ms =
                    (crate::clock::unix_ms() + f.spec.timeout.as_millis() as u64).to_string();
                let arn = f.spec.arn();
                let mut headers: Vec<(&str, &str)> = vec![
                    ("lambda-runtime-aws-request-id", &job.id),
                    ("lambda-runtime-deadline-ms", &deadline_ms),
                    ("lambda-runtime-invoked-function-arn", &arn),
                ];
                if let Some(t) = &job.trace {
                    headers.push(("lambda-runtime-trace-id", t));
                }
                response(&mut out, 200, &headers, &job.event);
                if body::write_all(&mut stream, &mut out, SEND_STALL)
                    .await
                    .is_err()
                {
                    // The runtime went away with the job unsent: another runs it.
                    f.requeue(job);
                    return;
                }
                out.clear();
                sent = Some(job.id.clone());
                f.hold(job.id, job.reply, deadline, peer);
            }
            ("POST", "init/error") => {
                tracing::warn!(
                    function = %f.spec.name,
                    error_type = req.error_type.as_deref().unwrap_or("-"),
                    error = %String::from_utf8_lossy(&req.body),
                    "function init failed"
                );
                response(&mut out, 202, &[], br#"{"status":"OK"}"#);
            }
            ("POST", r) => match r
                .strip_prefix("invocation/")
                .and_then(|r| r.rsplit_once('/'))
            {
                Some((id, kind @ ("response" | "error"))) => match f.release(id) {
                    None => response(&mut out, 400, &[], INVALID_ID),
                    Some(reply) if req.body.len() > MAX_PAYLOAD => {
                        f.count_error();
                        answer(&shard, reply, Outcome::Error(
                            br#"{"errorMessage":"Response payload size exceeded maximum allowed payload size (6291556 bytes).","errorType":"Function.ResponseSizeTooLarge"}"#.to_vec(),
                        ));
                        response(&mut out, 413, &[], br#"{"errorMessage":"Exceeded maximum allowed payload size (6291556 bytes).","errorType":"RequestEntityTooLarge"}"#);
                    }
                    Some(reply) => {
                        if kind == "response" {
                            answer(&shard, reply, Outcome::Response(req.body));
                        } else {
                            f.count_error();
                            answer(&shard, reply, Outcome::Error(req.body));
                        }
                        response(&mut out, 202, &[], br#"{"status":"OK"}"#);
                    }
                },
                _ => response(&mut out, 404, &[], NOT_FOUND),
            },
            _ => response(&mut out, 404, &[], NOT_FOUND),
        }
        if !out.is_empty()
            && body::write_all(&mut stream, &mut out, SEND_STALL)
                .await
                .is_err()
        {
            return;
        }
        out.clear();
    }
}

/// The next job for a runtime of this worker: from the function's queue, or
/// handed over by a request of this worker; `None` when the function stopped.
async fn acquire(shard: &Shard, f: &Arc<Function>) -> Option<Job> {
    loop {
        if f.stopped() {
            return None;
        }
        // Waiting is announced before the queue is looked at: a job queued
        // after this look rings this worker.
        f.idle(shard.id, true);
        let job = match f.take_job() {
            Some(j) => {
                f.idle(shard.id, false);
                j
            }
            None => {
                let slot = Rc::new(Idle::default());
                if let Some((_, idle)) = shard
                    .runtimes
                    .borrow_mut()
                    .iter_mut()
                    .find(|(s, _)| Arc::ptr_eq(s, f))
                {
                    idle.push(Rc::clone(&slot));
                }
                let got = std::future::poll_fn(|cx| slot.poll_job(cx)).await;
                if let Some((_, idle)) = shard
                    .runtimes
                    .borrow_mut()
                    .iter_mut()
                    .find(|(s, _)| Arc::ptr_eq(s, f))
                {
                    idle.retain(|s| !Rc::ptr_eq(s, &slot));
                }
                f.idle(shard.id, false);
                match got {
                    Some(j) => j,
                    None => continue,
                }
            }
        };
        if Instant::now() >= job.give_up {
            // Its caller gave up while it waited.
            answer(shard, job.reply, Outcome::Timeout);
            continue;
        }
        return Some(job);
    }
}
