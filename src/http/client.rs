//! A small blocking HTTP/1.1 client for the control plane's outbound calls (JWKS
//! and discovery documents, OTLP export, the command line): `http://` or
//! `https://`, bounded in time and size. Responses are read with the gateway's own
//! codec (`http::parse`), the same that reads upstream responses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::parse::{parse_response, Chunk, ChunkedDecoder, Framing};

/// GETs `uri`; the body of a 200, at most `max` bytes, all within `timeout`.
pub fn get(
    uri: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max: usize,
) -> Result<Vec<u8>, String> {
    let raw = send(uri, tls, "GET", &[], None, timeout, max)?;
    body_of(&raw, max)
}

/// Any request: `(status, body)` whatever the status.
pub fn request(
    uri: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    max: usize,
) -> Result<(u16, Vec<u8>), String> {
    let raw = send(uri, None, method, headers, body, timeout, max)?;
    response_of(&raw, max)
}

/// POSTs `body` (`content_type`) to `uri`; the response's status.
pub fn post(
    uri: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    body: (&str, &[u8]),
    timeout: Duration,
) -> Result<u16, String> {
    let raw = send(uri, tls, "POST", &[], Some(body), timeout, 64 * 1024)?;
    let mut headers = crate::http::parse::headers();
    match parse_response(&raw, &mut headers, false) {
        Ok(Some((head, _))) => Ok(head.status),
        Ok(None) => Err("no response head".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// One request on a new connection (`connection: close`); the raw response.
fn send(
    uri: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    max: usize,
) -> Result<Vec<u8>, String> {
    let (https, rest) = if let Some(r) = uri.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = uri.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{uri:?}: expected an http:// or https:// URI"));
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = if path.is_empty() { "/" } else { path };
    let default_port = if https { 443 } else { 80 };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'));
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let host = if has_port {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    } else {
        authority
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let tls = match (https, tls) {
        (false, _) => None,
        (true, None) => return Err("https needs a TLS config".into()),
        (true, Some(config)) => {
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| format!("{host}: {e}"))?;
            Some((config, name))
        }
    };
    let mut all = vec![("accept", "application/json"), ("user-agent", "shardgate")];
    all.extend_from_slice(headers);
    send_at(
        addr,
        tls,
        (method, path, authority),
        &all,
        body,
        timeout,
        max,
    )
}

/// The status of `GET path` at `addr` (a health check): `connection: close`,
/// within `timeout`, TLS where given.
pub fn status_at(
    addr: SocketAddr,
    tls: Option<(
        &Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let raw = send_at(
        addr,
        tls,
        ("GET", path, authority),
        &[("user-agent", "shardgate-health-check")],
        None,
        timeout,
        64 * 1024,
    )?;
    let mut headers = crate::http::parse::headers();
    match parse_response(&raw, &mut headers, false) {
        Ok(Some((head, _))) => Ok(head.status),
        Ok(None) => Err("no response head".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// One request to `addr` on a new connection; the raw response.
fn send_at(
    addr: SocketAddr,
    tls: Option<(
        &Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    (method, path, authority): (&str, &str, &str),
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    max: usize,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut request = Vec::with_capacity(256 + body.map_or(0, |(_, b)| b.len()));
    request_head(
        &mut request,
        method,
        path,
        authority,
        headers,
        body.map(|(t, b)| (t, b.len())),
        true,
    );
    if let Some((_, b)) = body {
        request.extend_from_slice(b);
    }
    let raw = if let Some((config, name)) = tls {
        let conn = rustls::ClientConnection::new(Arc::clone(config), name)
            .map_err(|e| format!("TLS: {e}"))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        exchange(
            &mut s,
            |s, d| s.sock.set_read_timeout(Some(d)),
            &request,
            deadline,
            max,
        )?
    } else {
        let mut s = tcp;
        exchange(
            &mut s,
            |s, d| s.set_read_timeout(Some(d)),
            &request,
            deadline,
            max,
        )?
    };
    Ok(raw)
}

/// Writes the head of an outbound request: the request line, `host`,
/// `connection: close` when the connection closes after the answer (`close`),
/// the given headers, and the body's type and length when there is one.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, usize)>,
    close: bool,
) {
    for part in [method, " ", target, " HTTP/1.1\r\nhost: ", host, "\r\n"] {
        out.extend_from_slice(part.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    for (n, v) in headers {
        for part in [n, ": ", v, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    if let Some((content_type, len)) = body {
        for part in ["content-type: ", content_type, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        crate::http::respond::content_length(out, len as u64);
    }
    out.extend_from_slice(b"\r\n");
}

fn exchange<S: Read + Write>(
    s: &mut S,
    set_timeout: impl Fn(&mut S, Duration) -> std::io::Result<()>,
    request: &[u8],
    deadline: Instant,
    max: usize,
) -> Result<Vec<u8>, String> {
    let left = |d: Instant| {
        d.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    set_timeout(s, left(deadline).ok_or("timed out")?).map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(wait) = left(deadline) else {
            return Err("timed out".into());
        };
        set_timeout(s, wait).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                // Servers may keep the connection open despite `connection: close`.
                if complete(&raw) {
                    break;
                }
            }
            // A peer closing without TLS close_notify still ends the body.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
        if raw.len() > max + 64 * 1024 {
            return Err(format!("response larger than {max} bytes"));
        }
    }
    Ok(raw)
}

/// The body of a complete response read to its close.
pub fn body_of(raw: &[u8], max: usize) -> Result<Vec<u8>, String> {
    match response_of(raw, max)? {
        (200, body) => Ok(body),
        (status, _) => Err(format!("status {status}")),
    }
}

/// The status and body of a complete response read to its close.
pub fn response_of(raw: &[u8], max: usize) -> Result<(u16, Vec<u8>), String> {
    let (status, _, body) = response_with_headers(raw, max)?;
    Ok((status, body))
}

/// `response_of` with the response's header fields (names lowercased).
pub fn response_with_headers(raw: &[u8], max: usize) -> Result<Answered, String> {
    message(raw, true, max)?.ok_or_else(|| "incomplete response".into())
}

/// A whole response: status, header fields (names lowercased), body.
pub type Answered = (u16, Vec<(String, String)>, Vec<u8>);

/// Whether `buf` holds a whole response (head and body as framed), so the reader
/// can stop without waiting for the close.
pub fn complete(buf: &[u8]) -> bool {
    matches!(message(buf, false, usize::MAX), Ok(Some(_)))
}

/// A response read by the gateway's own codec (`http::parse::parse_response`:
/// the same framing rules as upstream responses): `(status, body)`, or `None`
/// while more is to come. `closed`: the peer has closed, so a body delimited by
/// the close ends here and anything short is an error.
fn message(raw: &[u8], closed: bool, max: usize) -> Result<Option<Answered>, String> {
    let mut headers = crate::http::parse::headers();
    let (head, fields) =
        match parse_response(raw, &mut headers, false).map_err(|e| e.to_string())? {
            Some((head, fields)) => (
                head,
                fields
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect(),
            ),
            None if closed => return Err("incomplete response head".into()),
            None => return Ok(None),
        };
    let rest = &raw[head.head_len..];
    let body = match head.framing {
        Framing::None => Vec::new(),
        Framing::Length(n) => match rest.get(..n as usize) {
            Some(b) => b.to_vec(),
            None if closed => return Err("body shorter than its length".into()),
            None => return Ok(None),
        },
        Framing::Chunked => match decode_chunked(rest)? {
            Some(b) => b,
            None if closed => return Err("chunked body cut short".into()),
            None => return Ok(None),
        },
        Framing::UntilClose if closed => rest.to_vec(),
        Framing::UntilClose => return Ok(None),
    };
    if body.len() > max {
        return Err(format!("body larger than {max} bytes"));
    }
    Ok(Some((head.status, fields, body)))
}

/// Decodes a whole chunked body; `None` while it is cut short.
fn decode_chunked(mut input: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    loop {
        match d.decode(input).map_err(|e| e.to_string())? {
            Chunk::Data {
                consumed,
                start,
                len,
            } => {
                out.extend_from_slice(&input[start..start + len]);
                input = &input[consumed..];
            }
            Chunk::Done { .. } => return Ok(Some(out)),
            Chunk::NeedMore => return Ok(None),
        }
    }
}
