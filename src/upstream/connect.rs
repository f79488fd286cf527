//! Opening a connection to an upstream, for integrations and request authorizers
//! alike: TCP without Nagle, then TLS where the target says so.

use std::cell::RefCell;
use std::sync::Arc;

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

/// One `POST` of `body` to `target` on a new connection (`connection: close`):
/// the answer's status, header fields and body (at most `max` bytes), or why
/// there is none.
pub async fn post(
    dial: &Dial<'_>,
    to: &Endpoint,
    target: &str,
    content_type: &str,
    body: &[u8],
    max: usize,
) -> Result<crate::http::client::Answered, &'static str> {
    let mut up = connect(dial, to).await.map_err(|_| "cannot connect")?;
    let mut out = Vec::with_capacity(256 + body.len());
    crate::http::client::request_head(
        &mut out,
        "POST",
        target,
        &to.host_header,
        &[],
        Some((content_type, body.len())),
    );
    out.extend_from_slice(body);
    crate::http::body::write_all(&mut up.stream, &mut out, std::time::Duration::from_secs(30))
        .await
        .map_err(|_| "cannot send")?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        match crate::http::body::read_more(&mut up.stream, &mut buf, 4096).await {
            Ok(0) => break,
            Ok(_) if buf.len() > max => return Err("the answer is too large"),
            Ok(_) => {
                if crate::http::client::complete(&buf) {
                    break;
                }
            }
            Err(_) if !buf.is_empty() => break,
            Err(_) => return Err("closed without answering"),
        }
    }
    crate::http::client::response_with_headers(&buf, max).map_err(|e| {
        tracing::warn!(upstream = %to.addr, error = %e, "bad answer");
        "bad answer"
    })
}
