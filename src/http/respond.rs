//! Encoding response heads into a reused buffer: gateway refusals, mock responses,
//! and the head of a proxied upstream response.

use crate::clock::HTTP_DATE_LEN;
use crate::http::error::Refusal;
use crate::ids::RequestId;

/// What the `Connection` header of a response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 default: no header.
    KeepAlive,
    /// HTTP/1.0 client that asked for keep-alive: `connection: keep-alive`.
    KeepAlive10,
    /// `connection: close`, and the gateway closes after the response.
    Close,
}

impl Persist {
    pub fn closes(self) -> bool {
        self == Self::Close
    }
}

pub fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// What a response says about its request: the request id and, for a keyed request
/// under a quota, the quota's state.
#[derive(Debug, Clone)]
pub struct Tag {
    pub id: RequestId,
    /// CORS header lines for this request's origin (an API with `cors`).
    pub cors: Option<Box<[u8]>>,
    /// The API answers CORS itself: the integration's `access-control-*` headers
    /// are dropped (AWS ignores them when CORS is configured).
    pub cors_api: bool,
    pub quota: Option<QuotaState>,
    /// On a route that caches: what the cache did (`x-cache`).
    pub cache: Option<CacheStatus>,
    /// An unauthorized `Cache-Control: max-age=0` was ignored (`warning` header).
    pub cache_warning: bool,
    /// The stage's gateway responses, where its API has `gateway_responses`.
    pub responses: Option<std::sync::Arc<crate::http::responses::Responses>>,
    /// The request's own values, where a template of those responses reads them.
    pub request_values: Option<Box<crate::http::responses::RequestValues>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// The route caches, but not this request (its method).
    Bypass,
}

impl From<RequestId> for Tag {
    fn from(id: RequestId) -> Self {
        Self {
            id,
            cors: None,
            cors_api: false,
            quota: None,
            cache: None,
            cache_warning: false,
            responses: None,
            request_values: None,
        }
    }
}

/// The headers every gateway response carries, then the blank line is NOT written.
pub fn common_headers(out: &mut Vec<u8>, date: &[u8; HTTP_DATE_LEN], tag: &Tag, persist: Persist) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\napigw-requestid: ");
    out.extend_from_slice(&tag.id);
    out.extend_from_slice(b"\r\n");
    if let Some(q) = tag.quota {
        // draft-ietf-httpapi-ratelimit-headers: the quota, what is left of it, and
        // seconds until it resets.
        let mut n = itoa::Buffer::new();
        for (name, v) in [
            (&b"x-ratelimit-limit: "[..], q.limit),
            (b"x-ratelimit-remaining: ", q.remaining),
            (b"x-ratelimit-reset: ", q.reset_s),
        ] {
            out.extend_from_slice(name);
            out.extend_from_slice(n.format(v).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(c) = tag.cache {
        out.extend_from_slice(match c {
            CacheStatus::Hit => b"x-cache: Hit\r\n".as_slice(),
            CacheStatus::Miss => b"x-cache: Miss\r\n",
            CacheStatus::Bypass => b"x-cache: Bypass\r\n",
        });
    }
    if let Some(lines) = &tag.cors {
        out.extend_from_slice(lines);
    }
    if tag.cache_warning {
        out.extend_from_slice(
            b"warning: 199 shardgate \"Cache-Control ignored: not authorized to invalidate\"\r\n",
        );
    }
    match persist {
        Persist::KeepAlive => {}
        Persist::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persist::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
}

pub fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn refusal(
    out: &mut Vec<u8>,
    r: Refusal<'_>,
    date: &[u8; HTTP_DATE_LEN],
    tag: &Tag,
    persist: Persist,
    head_only: bool,
    custom: Option<&crate::http::responses::Made>,
) {
    status_line(out, r.status, reason(r.status));
    common_headers(out, date, tag, persist);
    if !custom.is_some_and(|m| m.content_type) {
        out.extend_from_slice(b"content-type: application/json\r\n");
    }
    if let Some(t) = r.error_type {
        out.extend_from_slice(b"x-amzn-errortype: ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(r.headers.as_bytes());
    if let Some(m) = custom {
        out.extend_from_slice(&m.headers);
    }
    content_length(out, r.body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
}

/// `204 No Content` with the common headers (a CORS preflight's answer).
pub fn no_content(out: &mut Vec<u8>, date: &[u8; HTTP_DATE_LEN], tag: &Tag, persist: Persist) {
    status_line(out, 204, reason(204));
    common_headers(out, date, tag, persist);
    out.extend_from_slice(b"\r\n");
}

pub fn mock(
    out: &mut Vec<u8>,
    m: &MockResponse,
    date: &[u8; HTTP_DATE_LEN],
    tag: &Tag,
    persist: Persist,
    head_only: bool,
) {
    status_line(out, m.status, reason(m.status));
    common_headers(out, date, tag, persist);
    out.extend_from_slice(&m.header_lines);
    let bodyless = m.status == 204 || m.status == 304;
    if !bodyless {
        content_length(out, m.body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodyless {
        out.extend_from_slice(&m.body);
    }
}

/// Canonical reason phrases (RFC 9110 §15) for the statuses the gateway sends itself.
pub fn reason(status: u16) -> &'static [u8] {
    match status {
        100 => b"Continue",
        200 => b"OK",
        201 => b"Created",
        202 => b"Accepted",
        204 => b"No Content",
        301 => b"Moved Permanently",
        302 => b"Found",
        304 => b"Not Modified",
        400 => b"Bad Request",
        401 => b"Unauthorized",
        403 => b"Forbidden",
        404 => b"Not Found",
        405 => b"Method Not Allowed",
        408 => b"Request Timeout",
        409 => b"Conflict",
        411 => b"Length Required",
        413 => b"Content Too Large",
        426 => b"Upgrade Required",
        417 => b"Expectation Failed",
        429 => b"Too Many Requests",
        431 => b"Request Header Fields Too Large",
        500 => b"Internal Server Error",
        501 => b"Not Implemented",
        502 => b"Bad Gateway",
        503 => b"Service Unavailable",
        504 => b"Gateway Timeout",
        505 => b"HTTP Version Not Supported",
        _ => b"",
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the gateway sets itself; never
/// copied from one side to the other.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"proxy-authorization",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a header is named by a `Connection` header among `headers`.
pub fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| crate::http::parse::tokens(h.value).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Copies the end-to-end headers of `headers` into `out`, skipping hop-by-hop ones,
/// those named by `Connection`, and any for which `skip` says so.
pub fn copy_headers(
    out: &mut Vec<u8>,
    headers: &[httparse::Header<'_>],
    skip: impl Fn(&[u8]) -> bool,
) {
    // The names `Connection` lists, gathered once (usually none, or one:
    // `keep-alive`), not looked up again for every header.
    let mut named: [&[u8]; 8] = [&[]; 8];
    let mut count = 0;
    let mut more = false;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
    {
        for t in crate::http::parse::tokens(h.value).filter(|t| !t.is_empty()) {
            match named.get_mut(count) {
                Some(slot) => {
                    *slot = t;
                    count += 1;
                }
                None => more = true,
            }
        }
    }
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || skip(name)
            || named[..count].iter().any(|t| t.eq_ignore_ascii_case(name))
            || (more && named_by_connection(headers, name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug)]
pub struct MockResponse {
    pub status: u16,
    /// Pre-encoded `name: value\r\n` lines of the configured headers.
    pub header_lines: Box<[u8]>,
    pub body: Box<[u8]>,
}

/// What a keyed response reports of its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset_s: u64,
}
