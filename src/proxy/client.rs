//! A client connection as the pipeline and the integrations see it: its socket and
//! reused buffers, what the current request did, and the ways to answer it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::RawBuf;
use monoio::io::AsyncReadRent;

use crate::http::stream::Stream;

use crate::http::body::{self, PumpError};
use crate::http::error::GatewayError;
use crate::http::respond::{self, Persist, Tag};
use crate::ids::{RouteId, StageId};
use crate::proxy::shard::Shard;

/// First read buffer of a connection; grows up to `max_header_bytes` for a head and
/// to `body::BODY_READ` of spare room while streaming a body.
pub const CONN_BUF: usize = 4 * 1024;

/// A client connection's socket and reused buffers.
pub struct Client {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// What the TLS handshake established (HTTPS listeners only).
    pub tls: Option<Box<crate::http::tls::Session>>,
    /// Bytes read; `pos..` not yet consumed.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// Response heads and chunk framing written to the client.
    pub out: Vec<u8>,
    /// The upstream request head.
    pub up_head: Vec<u8>,
    /// What the request being served did (metrics, access log).
    pub outcome: Outcome,
    /// The listener's `send_timeout_ms`: a write to this client that makes no
    /// progress for this long ends the connection (slow read).
    pub send_timeout: Duration,
}

/// What a connection keeps between requests: its socket and who it is.
pub struct Kept {
    pub stream: Stream,
    pub peer: SocketAddr,
    /// What the TLS handshake established (HTTPS listeners only).
    pub tls: Option<Box<crate::http::tls::Session>>,
}

impl Client {
    /// A connection about to serve requests, with buffers from the shard.
    pub fn new(kept: Kept, send_timeout: Duration, shard: &Shard) -> Self {
        Self {
            stream: kept.stream,
            peer: kept.peer,
            tls: kept.tls,
            buf: shard.take_buf(Vec::new()),
            pos: 0,
            out: shard.take_buf(Vec::new()),
            up_head: shard.take_buf(Vec::new()),
            outcome: Outcome::at(crate::clock::coarse_now()),
            send_timeout,
        }
    }

    /// Its buffers back to the shard (empty ones in their place).
    pub fn give_bufs(&mut self, shard: &Shard) {
        shard.give_buf(std::mem::take(&mut self.buf));
        shard.give_buf(std::mem::take(&mut self.out));
        shard.give_buf(std::mem::take(&mut self.up_head));
    }

    /// Its buffers back to the shard; what it keeps between requests.
    pub fn release(mut self, shard: &Shard) -> Kept {
        self.give_bufs(shard);
        Kept {
            stream: self.stream,
            peer: self.peer,
            tls: self.tls,
        }
    }
}

/// What one request did: its route, status, sizes and times.
#[derive(Debug)]
pub struct Outcome {
    pub route: Option<(StageId, RouteId)>,
    pub status: u16,
    /// Response body bytes (as framed; 0 for HEAD).
    pub bytes: u64,
    /// When the request went to the integration.
    pub sent: Instant,
    pub integration_us: Option<u64>,
    /// Tries after the first on another target of an upstream group.
    pub retries: u8,
    /// For the access log line, when the stage logs.
    pub log: Option<Box<crate::observe::accesslog::Facts>>,
    /// The refusal's message (logged requests only).
    pub error: Option<Box<str>>,
    pub trace: Option<crate::observe::trace::Trace>,
    pub span: Option<Box<crate::observe::telemetry::SpanFacts>>,
    pub request_id: crate::ids::RequestId,
}

impl Outcome {
    pub fn at(started: Instant) -> Self {
        Self {
            route: None,
            status: 0,
            bytes: 0,
            sent: started,
            integration_us: None,
            retries: 0,
            log: None,
            error: None,
            trace: None,
            span: None,
            request_id: [b'-'; 16],
        }
    }
}

/// A read into `c.buf` that gives up after `wait` (`None`).
pub async fn timed_read(c: &mut Client, wait: Duration, spare: usize) -> Option<io::Result<usize>> {
    monoio::time::timeout(wait, body::read_more(&mut c.stream, &mut c.buf, spare))
        .await
        .ok()
}

/// epoll driver only: one read of what is already there into `buf`'s spare room;
/// `None` when nothing is (the read is dropped without a syscall in flight).
///
/// A TLS read dropped here leaves its stream whole: what was decrypted stays in
/// rustls, and its socket read is in place (`TlsStream::in_place`).
pub async fn read_ready(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    spare: usize,
) -> Option<io::Result<usize>> {
    if buf.capacity() - buf.len() < spare {
        buf.reserve(spare);
    }
    let len = buf.len();
    // SAFETY: the spare room is valid for writes while `buf` is borrowed here, and on
    // the epoll driver the read syscall runs inside `poll`: a read dropped while
    // pending leaves nothing in the kernel pointing at the buffer.
    let raw = unsafe { RawBuf::new(buf.as_mut_ptr().add(len), buf.capacity() - len) };
    let mut read = std::pin::pin!(stream.read(raw));
    match std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
        Poll::Ready((Ok(n), _)) => {
            // SAFETY: the kernel initialised `n` bytes of the spare room.
            unsafe { buf.set_len(len + n) };
            Some(Ok(n))
        }
        Poll::Ready((Err(e), _)) => Some(Err(e)),
        Poll::Pending => None,
    }
}

/// Maps a failed client-body read to the answer owed, if any.
pub fn body_error(e: PumpError) -> Option<GatewayError> {
    match e {
        PumpError::TooLarge => Some(GatewayError::BodyTooLarge),
        PumpError::Framing(c) => Some(GatewayError::BadBody(c.0)),
        PumpError::ReadTimeout => Some(GatewayError::RequestTimeout),
        PumpError::ReadClosed | PumpError::Read(_) | PumpError::Write(_) => None,
    }
}

pub async fn send_continue(c: &mut Client) -> std::io::Result<()> {
    c.out.clear();
    c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    body::write_all(&mut c.stream, &mut c.out, c.send_timeout).await
}

/// Answers with a gateway error; `true` when the connection stays open.
pub async fn refuse(
    c: &mut Client,
    shard: &Shard,
    err: GatewayError,
    tag: &Tag,
    persist: Persist,
    head_only: bool,
) -> bool {
    let mut r = err.refusal();
    let persist = if r.close { Persist::Close } else { persist };
    // The stage's gateway response for this refusal, if it has one.
    let custom = tag.responses.as_deref().and_then(|set| {
        let kind = err.response_type()?;
        Some((kind, set.pick(kind, r.status)?))
    });
    // `{"message":"..."}` (or `Message`): the message itself.
    let message = (c.outcome.log.is_some() || custom.is_some())
        .then(|| {
            serde_json::from_str::<serde_json::Value>(r.body)
                .ok()
                .and_then(|v| Some(v.as_object()?.values().next()?.as_str()?.to_owned()))
        })
        .flatten();
    let made = custom.map(|(kind, chosen)| {
        let message = message.as_deref().unwrap_or("");
        // What the log has past the message: the validation failure.
        let validation = match &err {
            GatewayError::Detailed(d) => d.log.strip_prefix(message).unwrap_or(""),
            _ => "",
        };
        chosen.make(
            r.status,
            &crate::http::responses::Values {
                request_id: &tag.id,
                message,
                kind,
                validation: validation.trim_start_matches(": "),
                request: tag.request_values.as_deref(),
            },
        )
    });
    if let Some(m) = &made {
        r.status = m.status;
        if let Some(b) = &m.body {
            r.body = b;
        }
    }
    c.outcome.status = r.status;
    c.outcome.bytes = if head_only { 0 } else { r.body.len() as u64 };
    if c.outcome.log.is_some() {
        c.outcome.error = message.map(Into::into);
    }
    c.out.clear();
    let date = *shard.date.borrow_mut().now();
    respond::refusal(&mut c.out, r, &date, tag, persist, head_only, made.as_ref());
    let ok = body::write_all(&mut c.stream, &mut c.out, c.send_timeout)
        .await
        .is_ok();
    if persist.closes() {
        // Half-close so the client reads the answer before the reset a close with
        // unread input would cause (RFC 9112 §9.6).
        let _ = c.stream.close_write().await;
        linger(c).await;
    }
    ok && !persist.closes()
}

/// Lingering close (nginx's `lingering_close`): read and drop what the client still
/// sends, briefly, so closing with unread input does not reset the connection before
/// the client has read the answer.
pub async fn linger(c: &mut Client) {
    const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX_DRAIN: usize = 1024 * 1024;
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    while drained < MAX_DRAIN {
        let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        c.buf.clear();
        c.pos = 0;
        match monoio::time::timeout(wait, body::read_more(&mut c.stream, &mut c.buf, CONN_BUF))
            .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}
