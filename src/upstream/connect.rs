//! Opening a connection to an upstream, for integrations and request authorizers
//! alike: TCP without Nagle, then TLS where the target says so; and one
//! request's exchange over a pooled connection.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::counter::Counter;
use crate::http::error::GatewayError;
use crate::http::stream::{Stream, TlsStream};
use crate::upstream::pool::{Pool, UpConn};
use crate::upstream::target::Endpoint;

/// What a connection is opened with: the shard's pool (which counts connects), its
/// driver, and its `upstream_connects` counter.
pub struct Dial<'a> {
    pub pool: &'a RefCell<Pool>,
    /// The worker runs io_uring (see `Shard::uring`).
    pub uring: bool,
    pub connects: Option<&'a Counter>,
}

/// Opens a connection to `target` (TCP without Nagle; TLS where the target has it).
/// The refusal is the answer the client gets.
pub async fn connect(dial: &Dial<'_>, target: &Endpoint) -> Result<UpConn, GatewayError> {
    let addr = target.addr;
    match TcpStream::connect_addr(addr).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            dial.pool.borrow_mut().connects += 1;
            if let Some(c) = dial.connects {
                c.add(1);
            }
            let Some(tls) = &target.tls else {
                return Ok(UpConn::new(Stream::Plain(s), target.open.clone()));
            };
            let session = rustls::ClientConnection::new(
                Arc::clone(&tls.config),
                tls.server_name.clone(),
            )
            .map_err(|e| {
                tracing::warn!(upstream = %addr, error = %e, "cannot start TLS to integration");
                GatewayError::UpstreamFailed("TLS failed")
            })?;
            let mut t = Box::new(TlsStream::new(s, session, dial.uring));
            match t.handshake().await {
                Ok(()) => Ok(UpConn::new(Stream::Client(t), target.open.clone())),
                Err(e) => {
                    tracing::warn!(upstream = %addr, server_name = ?tls.server_name, error = %e, "TLS handshake with integration failed");
                    Err(GatewayError::UpstreamFailed("TLS handshake failed"))
                }
            }
        }
        Err(e) => {
            tracing::warn!(upstream = %addr, error = %e, "cannot connect to integration");
            Err(if e.kind() == std::io::ErrorKind::ConnectionRefused {
                GatewayError::UpstreamRefused
            } else {
                GatewayError::UpstreamFailed("connect failed")
            })
        }
    }
}

/// One `POST` of `body` to `target` over a pooled connection of this worker
/// (`exchange`): the answer's status, header fields and body (at most `max`
/// bytes), or why there is none.
pub async fn post(
    dial: &Dial<'_>,
    to: &Endpoint,
    target: &str,
    content_type: &str,
    body: &[u8],
    max: usize,
) -> Result<crate::http::client::Answered, &'static str> {
    let mut out = Vec::with_capacity(256 + body.len());
    crate::http::client::request_head(
        &mut out,
        "POST",
        target,
        &to.host_header,
        &[],
        Some((content_type, body.len())),
        false,
    );
    out.extend_from_slice(body);
    exchange(dial, to, &out, max).await.map_err(|f| match f {
        Failed::Connect(_) => "cannot connect",
        Failed::Other(why) => why,
    })
}

/// Why an `exchange` has no answer.
#[derive(Debug)]
pub enum Failed {
    /// No connection could be made (the answer the client gets).
    Connect(GatewayError),
    /// Sending or reading failed: why.
    Other(&'static str),
}

/// Sends a whole request (`request`: head and body) and reads the whole
/// answer: over a pooled connection of this worker first, and one that turns
/// out closed (no byte of an answer) is replaced by a new one, once. The
/// connection goes back to the pool when the answer was framed and the peer
/// keeps it open.
pub async fn exchange(
    dial: &Dial<'_>,
    to: &Endpoint,
    request: &[u8],
    max: usize,
) -> Result<crate::http::client::Answered, Failed> {
    let key = to.pool_key;
    let mut buf = Vec::with_capacity(4096);
    for _ in 0..2 {
        let pooled = dial.pool.borrow_mut().take(key, std::time::Instant::now());
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(dial, to).await.map_err(Failed::Connect)?,
        };
        let mut sending = request.to_vec();
        if crate::http::body::write_all(&mut conn.stream, &mut sending, Duration::from_secs(30))
            .await
            .is_err()
        {
            if reused {
                continue;
            }
            return Err(Failed::Other("cannot send"));
        }
        buf.clear();
        let mut failed = false;
        loop {
            match crate::http::body::read_more(&mut conn.stream, &mut buf, 64 * 1024).await {
                Ok(0) => break,
                Ok(_) if buf.len() > max + 64 * 1024 => {
                    return Err(Failed::Other("the answer is too large"))
                }
                Ok(_) => {
                    if crate::http::client::complete(&buf) {
                        break;
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if buf.is_empty() && reused {
            continue;
        }
        if buf.is_empty() && failed {
            return Err(Failed::Other("closed without answering"));
        }
        let answered = crate::http::client::response_with_headers(&buf, max).map_err(|e| {
            tracing::warn!(upstream = %to.addr, error = %e, "bad answer");
            Failed::Other("bad answer")
        })?;
        let mut heads = crate::http::parse::headers();
        if let Ok(Some((head, _))) = crate::http::parse::parse_response(&buf, &mut heads, false) {
            let framed = !matches!(head.framing, crate::http::parse::Framing::UntilClose);
            if framed && !head.close && crate::http::client::complete(&buf) {
                dial.pool
                    .borrow_mut()
                    .put(key, conn, std::time::Instant::now());
            }
        }
        return Ok(answered);
    }
    Err(Failed::Other("closed without answering"))
}
