//! HTTP/1.1 message heads on `httparse`, strict per RFC 9112, zero-copy into the
//! read buffer, and the streaming chunked-body decoder.
//!
//! Strictness is where request smuggling lives: a request with both
//! `Content-Length` and `Transfer-Encoding`, differing `Content-Length`s, a transfer
//! coding other than a final `chunked`, obs-fold, bare CR, or a bad header name is
//! refused, never guessed at.

/// Header lines per message. 100 matches nginx's default `large_client_header_buffers`
/// reach for ordinary clients; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Room for a head's headers, left uninitialised: httparse writes those it
/// parses and the rest are never read (an initialised array of 100 is 3.2 KB
/// of stores before every parse).
pub type Headers<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// An empty `Headers`, at no cost.
pub const fn headers<'b>() -> Headers<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

/// A refused request head; `conn` maps each to its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request header section too large")]
    TooLarge,
    #[error("HTTP version not supported")]
    Version,
    #[error("transfer coding not implemented")]
    UnsupportedCoding,
    #[error("unsupported expectation")]
    Expectation,
}

/// What the pipeline needs from a parsed request head, borrowed from the buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    /// Path without the query string, normalised (`crate::http::path`): the only path
    /// any later step reads. Borrowed from the buffer when it was already normal.
    pub path: std::borrow::Cow<'b, str>,
    /// Query string without `?`, if any.
    pub query: Option<&'b str>,
    /// HTTP/1.0 (`false` = HTTP/1.1).
    pub http10: bool,
    pub host: &'b [u8],
    pub framing: Framing,
    /// The client asked to keep the connection open (explicitly or by default).
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Length of the head, including the final CRLF.
    pub head_len: usize,
}

/// Parses a request head. `Ok(None)`: incomplete, read more.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
    max_header_bytes: usize,
    paths: crate::http::path::Rules,
) -> Result<Option<(RequestHead<'b>, &'h [httparse::Header<'b>])>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    let status = req
        .parse_with_uninit_headers(buf, &mut headers[..])
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => HeadError::TooLarge,
            httparse::Error::Version if names_other_version(buf) => HeadError::Version,
            httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
            httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
            httparse::Error::Token => HeadError::Malformed("invalid method"),
            httparse::Error::NewLine => HeadError::Malformed("bare CR or bad line ending"),
            _ => HeadError::Malformed("invalid request line or header"),
        })?;
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() >= max_header_bytes {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > max_header_bytes {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.ok_or(HeadError::Malformed("no method"))?;
    let target = req.path.ok_or(HeadError::Malformed("no target"))?;
    let http10 = req.version == Some(0);
    let headers: &'h [httparse::Header<'b>] = req.headers;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut host: Option<&'b [u8]> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("differing Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            saw_te = true;
            for coding in tokens(h.value) {
                if chunked {
                    // Anything after `chunked` (including a second `chunked`) is invalid.
                    return Err(HeadError::Malformed(
                        "chunked must be the final transfer coding",
                    ));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if coding.is_empty() {
                    return Err(HeadError::Malformed("empty transfer coding"));
                } else {
                    return Err(HeadError::UnsupportedCoding);
                }
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HeadError::Malformed("more than one Host header"));
            }
            if !valid_host(h.value) {
                return Err(HeadError::Malformed("invalid Host header"));
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HeadError::Expectation);
            }
        }
    }
    if saw_te && !chunked {
        return Err(HeadError::Malformed("Transfer-Encoding without chunked"));
    }
    if chunked && content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && http10 {
        return Err(HeadError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    let (path, query, target_host) = split_target(target)?;
    let path =
        crate::http::path::normalise(path, paths).map_err(|e| HeadError::Malformed(e.reason()))?;
    let host = match (target_host, host) {
        (Some(t), _) => t,
        (None, Some(h)) => h,
        (None, None) if http10 => b"",
        (None, None) => return Err(HeadError::Malformed("missing Host header")),
    };
    let framing = if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    Ok(Some((
        RequestHead {
            method,
            path,
            query,
            http10,
            host,
            framing,
            keep_alive: if http10 {
                keep_alive_token && !close
            } else {
                !close
            },
            expect_continue: expect_continue && framing != Framing::None,
            head_len,
        },
        headers,
    )))
}

/// Whether the request line ends in a well-formed `HTTP/d.d` other than 1.0/1.1
/// (505), as opposed to a malformed line (400).
fn names_other_version(buf: &[u8]) -> bool {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    matches!(parts.as_slice(), [_, _, v] if v.len() == 8
        && v.starts_with(b"HTTP/")
        && v[5].is_ascii_digit()
        && v[6] == b'.'
        && v[7].is_ascii_digit())
}

/// Origin-form `/path?query`, or absolute-form `http://host/path?query` (RFC 9112 §3.2.2:
/// a server must accept it; its authority replaces Host).
/// A request target split into path, query and (absolute-form only) authority.
type Target<'a> = (&'a str, Option<&'a str>, Option<&'a [u8]>);

fn split_target(target: &str) -> Result<Target<'_>, HeadError> {
    let (host, rest) = if target.starts_with('/') {
        (None, target)
    } else if let Some(after) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if !valid_host(authority.as_bytes()) || authority.is_empty() {
            return Err(HeadError::Malformed(
                "invalid authority in the request target",
            ));
        }
        (
            Some(authority.as_bytes()),
            if rest.is_empty() { "/" } else { rest },
        )
    } else {
        return Err(HeadError::Malformed("the request target must be a path"));
    };
    if rest.contains('#') {
        return Err(HeadError::Malformed("a fragment in the request target"));
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Ok(("/", query, host));
    }
    Ok((path, query, host))
}

fn valid_host(v: &[u8]) -> bool {
    v.len() <= 255
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    // 1*DIGIT only: no sign, no whitespace inside, no list form. 19 digits fit in u64.
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The value of the first header named `name` (any case).
pub fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Comma-separated tokens with optional whitespace trimmed (RFC 9110 §5.6.1).
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// What the gateway needs from an upstream response head.
#[derive(Debug)]
pub struct ResponseHead<'b> {
    pub status: u16,
    pub reason: &'b str,
    pub content_length: Option<u64>,
    pub framing: Framing,
    /// The upstream will close the connection after this response.
    pub close: bool,
    pub head_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream response: {0}")]
pub struct BadResponse(pub &'static str);

/// Parses an upstream response head. `Ok(None)`: incomplete.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut Headers<'b>,
    request_was_head: bool,
) -> Result<Option<(ResponseHead<'b>, &'h [httparse::Header<'b>])>, BadResponse> {
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers[..],
    );
    let head_len = match parsed.map_err(|_| BadResponse("malformed head"))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = res.code.ok_or(BadResponse("no status"))?;
    let http10 = res.version == Some(0);
    let headers: &'h [httparse::Header<'b>] = res.headers;
    let mut content_length = None;
    let mut chunked = false;
    let mut close = http10;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value).map_err(|_| BadResponse("bad Content-Length"))?;
            if content_length.is_some_and(|p| p != n) {
                return Err(BadResponse("differing Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                // RFC 9112 §6.3: the body runs until close.
                close = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let framing =
        if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = content_length {
            if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            }
        } else {
            close = true;
            Framing::UntilClose
        };
    Ok(Some((
        ResponseHead {
            status,
            reason: res.reason.unwrap_or(""),
            content_length,
            framing,
            close,
            head_len,
        },
        headers,
    )))
}

/// Streaming decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1). Feed it bytes;
/// it hands back where the data is, without copying. Trailers are read and dropped.
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    size_digits: u8,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// One step of decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `consumed` input bytes used; `data` is a range of them that is body.
    Data {
        consumed: usize,
        start: usize,
        len: usize,
    },
    /// All input consumed without data; feed more.
    NeedMore,
    /// The last chunk and trailers ended after `consumed` bytes.
    Done { consumed: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked encoding: {0}")]
pub struct ChunkError(pub &'static str);

/// Trailer section bound: like the head, it must not grow without limit.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub fn decode(&mut self, input: &[u8]) -> Result<Chunk, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // 15 hex digits bound the size below 2^60: no overflow.
                        if self.size_digits == 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(hex(b));
                        self.size_digits += 1;
                        i += 1;
                    }
                    b';' if self.size_digits > 0 => {
                        self.state = ChunkState::Ext;
                        i += 1;
                    }
                    b'\r' if self.size_digits > 0 => {
                        self.state = ChunkState::SizeLf;
                        i += 1;
                    }
                    _ => return Err(ChunkError("invalid chunk size")),
                },
                ChunkState::Ext => {
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in chunk extension")),
                        _ => {
                            self.trailer_bytes += 1;
                            if self.trailer_bytes > MAX_TRAILER_BYTES {
                                return Err(ChunkError("chunk extension too long"));
                            }
                        }
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR after chunk size"));
                    }
                    i += 1;
                    self.size_digits = 0;
                    self.trailer_bytes = 0;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Chunk::Data {
                        consumed: i + take,
                        start: i,
                        len: take,
                    });
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR after chunk data"));
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::TrailerLine
                    };
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in trailer")),
                        _ => {}
                    }
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(ChunkError("trailer section too large"));
                    }
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR in trailer"));
                    }
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare CR at end of chunked body"));
                    }
                    self.state = ChunkState::Done;
                    return Ok(Chunk::Done { consumed: i + 1 });
                }
                ChunkState::Done => return Ok(Chunk::Done { consumed: i }),
            }
        }
        if self.state == ChunkState::Done {
            return Ok(Chunk::Done { consumed: i });
        }
        Ok(Chunk::NeedMore)
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Framing>, HeadError> {
        let mut h = headers();
        parse_request(raw, &mut h, 16 * 1024, Default::default()).map(|o| o.map(|(r, _)| r.framing))
    }

    #[test]
    fn framing_of_good_requests() {
        let table: &[(&[u8], Framing)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::None),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", Framing::None),
        ];
        for (raw, want) in table {
            assert_eq!(
                parse(raw),
                Ok(Some(*want)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let table: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET nopath HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in table {
            assert!(
                parse(raw).is_err(),
                "accepted: {}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn head_size_limit() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(parse(&raw), Err(HeadError::TooLarge));
    }

    fn decode_all(input: &[u8], step: usize) -> Result<Vec<u8>, ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&buf)? {
                    Chunk::Data {
                        consumed,
                        start,
                        len,
                    } => {
                        out.extend_from_slice(&buf[start..start + len]);
                        buf.drain(..consumed);
                    }
                    Chunk::NeedMore => {
                        buf.clear();
                        break;
                    }
                    Chunk::Done { .. } => return Ok(out),
                }
            }
        }
        Err(ChunkError("incomplete"))
    }

    #[test]
    fn chunked_decodes_at_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        for step in 1..body.len() {
            assert_eq!(
                decode_all(body, step).unwrap(),
                b"hello world",
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_rejects_bad_input() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloo\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
