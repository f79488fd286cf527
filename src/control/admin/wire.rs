//! The management API on the wire: its requests (read with the gateway's codec),
//! its responses, the bearer token, and reading JSON bodies and query values.

// The control plane: its threads share state under mutexes, off the request path.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::registry::{ApiError, Registry};
use crate::encode::ct_eq;
use crate::http::parse::{self, Framing, HeadError};

pub const MAX_HEAD: usize = 16 * 1024;

/// Large enough for a CSV of 100,000 keys.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Ctx {
    pub token: Option<String>,
    pub registry: Arc<Mutex<Registry>>,
    /// The running plan (replaced by reloads) and the reload itself.
    pub control: Arc<crate::control::reload::Control>,
    pub test_clock: bool,
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub body: Value,
    /// A body that is not JSON: (content type, text).
    pub text: Option<(&'static str, String)>,
    /// More header lines, each ending in CRLF.
    pub headers: &'static str,
}

impl Response {
    pub fn ok(body: Value) -> Self {
        Self::with(200, body)
    }
    pub fn created(body: Value) -> Self {
        Self::with(201, body)
    }
    pub fn no_content() -> Self {
        Self::with(204, Value::Null)
    }
    pub fn with(status: u16, body: Value) -> Self {
        Self {
            status,
            body,
            text: None,
            headers: "",
        }
    }
    pub fn text(content_type: &'static str, text: String) -> Self {
        Self {
            status: 200,
            body: Value::Null,
            text: Some((content_type, text)),
            headers: "",
        }
    }
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Self {
        Self::with(e.status, json!({ "message": e.message }))
    }
}

/// Reads one request with the gateway's own codec (`http::parse`: strict framing,
/// the normalised path); `None` when the client closed without sending one.
pub fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, ApiError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Management paths are ids and names: nothing to refuse in them.
    let paths = crate::http::path::Rules {
        keep_escaped_slashes: true,
        keep_semicolons: true,
    };
    loop {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| ApiError::new(400, format!("reading the request: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(ApiError::new(400, "the request ended inside its head"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = parse::headers();
        let (head, headers) = match parse::parse_request(&buf, &mut headers, MAX_HEAD, paths) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => return Err(ApiError::new(head_status(e), e.to_string())),
        };
        let length = match head.framing {
            Framing::None => 0,
            Framing::Length(n) if n <= MAX_BODY as u64 => n as usize,
            Framing::Length(_) => return Err(ApiError::new(413, "body too large")),
            Framing::Chunked | Framing::UntilClose => {
                return Err(ApiError::new(411, "send the body with a content-length"));
            }
        };
        let request = Request {
            method: head.method.to_owned(),
            path: head.path.into_owned(),
            query: form_urlencoded::parse(head.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            authorization: parse::header(headers, "authorization").map(<[u8]>::to_vec),
            body: Vec::new(),
        };
        if head.expect_continue && length > buf.len() - head.head_len {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let head_len = head.head_len;
        let mut body = buf.split_off(head_len);
        if body.len() < length {
            let have = body.len();
            body.resize(length, 0);
            stream
                .read_exact(&mut body[have..])
                .map_err(|e| ApiError::new(400, format!("reading the body: {e}")))?;
        }
        body.truncate(length);
        return Ok(Some(Request { body, ..request }));
    }
}

/// The status of a refused request head (as the gateway answers it).
pub fn head_status(e: HeadError) -> u16 {
    match e {
        HeadError::Malformed(_) => 400,
        HeadError::TooLarge => 431,
        HeadError::Version => 505,
        HeadError::UnsupportedCoding => 501,
        HeadError::Expectation => 417,
    }
}

pub fn authorized(ctx: &Ctx, req: &Request) -> bool {
    let Some(token) = &ctx.token else {
        return false;
    };
    let Some(given) = req.authorization.as_deref() else {
        return false;
    };
    let Some(given) = given
        .strip_prefix(b"Bearer ")
        .or_else(|| given.strip_prefix(b"bearer "))
    else {
        return false;
    };
    ct_eq(given.trim_ascii(), token.as_bytes())
}

pub fn lock(ctx: &Ctx) -> MutexGuard<'_, Registry> {
    crate::lock(&ctx.registry)
}

pub fn body<T: for<'de> Deserialize<'de>>(req: &Request) -> Result<T, ApiError> {
    let text: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(text).map_err(|e| ApiError::new(400, format!("body: {e}")))
}

pub fn query<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn not_allowed() -> ApiError {
    ApiError::new(405, "method not allowed")
}

/// How long a usage report waits so that every request answered before it was
/// asked has been counted (workers add their counts each 100 ms tick).
pub const TICK_WAIT: Duration = Duration::from_millis(120);
