//! A small blocking HTTP/1.1 GET for background threads (JWKS and discovery
//! documents): `http://` or `https://`, bounded in time and size.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::parse::{Chunk, ChunkedDecoder};

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
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => Ok(resp.code.unwrap_or(0)),
        _ => Err("no response head".into()),
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
    let deadline = Instant::now() + timeout;
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let tcp =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\nconnection: close\r\nuser-agent: shardgate\r\n"
    )
    .into_bytes();
    for (n, v) in headers {
        request.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if let Some((ctype, b)) = body {
        request.extend_from_slice(
            format!("content-type: {ctype}\r\ncontent-length: {}\r\n", b.len()).as_bytes(),
        );
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(b);
    } else {
        request.extend_from_slice(b"\r\n");
    }
    let raw = if https {
        let config = tls.ok_or("https needs a TLS config")?;
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| format!("{host}: {e}"))?;
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
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete response head".into()),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && crate::http::parse::tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"chunked"))
    });
    let length = crate::http::parse::header(resp.headers, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    let rest = &raw[head_len..];
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or("body shorter than its length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > max {
        return Err(format!("body larger than {max} bytes"));
    }
    Ok((status, body))
}

/// Decodes a whole chunked body.
pub fn decode_chunked(mut input: &[u8]) -> Result<Vec<u8>, String> {
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
            Chunk::Done { .. } => return Ok(out),
            Chunk::NeedMore => return Err("chunked body cut short".into()),
        }
    }
}

/// Whether `buf` holds a whole response: its head, and a body as long as its
/// `content-length` or a complete chunked body.
pub fn complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(buf) else {
        return false;
    };
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            return std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|len| buf.len() >= n + len);
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return decode_chunked(&buf[n..]).is_ok();
        }
    }
    false
}
