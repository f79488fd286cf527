//! WebSocket (RFC 6455) as the gateway terminates it for WebSocket APIs: the
//! handshake's accept key, client frames parsed and checked (masking, reserved
//! bits, opcodes, control frame rules, sizes), messages assembled from fragments
//! with control frames interleaved, text checked as UTF-8, close codes checked;
//! and the server's frames (unmasked). Knows nothing of routes or integrations.

use aws_lc_rs::digest;
use base64::Engine;

/// RFC 6455's key GUID.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref())
}

/// Close codes the gateway sends.
pub mod code {
    pub const NORMAL: u16 = 1000;
    /// Going away: idle or duration limits, the gateway stopping.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    /// Binary messages (AWS: not supported on WebSocket APIs).
    pub const UNSUPPORTED: u16 = 1003;
    /// Text that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame or message over the stage's limits.
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn of(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    fn byte(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Why a connection must close, and the code to close it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub why: &'static str,
}

fn violation(code: u16, why: &'static str) -> Violation {
    Violation { code, why }
}

/// Limits of a stage (AWS: frames 32 KiB, messages 128 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: usize,
    pub max_message: usize,
    /// Binary messages are taken (else closed with 1003, as AWS closes them).
    pub binary: bool,
}

/// One frame, unmasked in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    /// Where the payload is in the buffer given to `parse_frame`.
    pub payload: std::ops::Range<usize>,
    /// Bytes of the buffer the frame took.
    pub len: usize,
}

/// Parses (and unmasks, in place) the client frame at the start of `buf`;
/// `Ok(None)` while it is incomplete.
pub fn parse_frame(buf: &mut [u8], limits: &Limits) -> Result<Option<Frame>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(violation(code::PROTOCOL, "reserved bits set"));
    }
    let opcode = Opcode::of(b0 & 0x0f).ok_or(violation(code::PROTOCOL, "unknown opcode"))?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(violation(code::PROTOCOL, "client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(violation(code::PROTOCOL, "payload length's top bit set"));
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (len > 125 || !fin) {
        return Err(violation(
            code::PROTOCOL,
            "control frames are at most 125 bytes and not fragmented",
        ));
    }
    if len > limits.max_frame as u64 {
        return Err(violation(code::TOO_BIG, "frame larger than the limit"));
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    for (i, b) in buf[at..end].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: at..end,
        len: end,
    }))
}

/// What a connection does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole text message.
    Text(String),
    /// A whole binary message (only when `Limits::binary`).
    Binary(Vec<u8>),
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    Pong,
    /// The client closes: its code (1005 when it gave none) and reason.
    Close(u16, String),
    /// A fragment was taken; nothing to do yet.
    Partial,
}

/// Assembles messages from frames.
#[derive(Debug, Default)]
pub struct Messages {
    /// The message being assembled, and whether it is text.
    partial: Option<(Vec<u8>, bool)>,
}

impl Messages {
    /// No message is partly assembled.
    pub fn is_empty(&self) -> bool {
        self.partial.is_none()
    }

    /// Takes one frame (its payload unmasked); binary messages are refused
    /// (AWS: 1003) unless `limits.binary`.
    pub fn take(
        &mut self,
        frame: &Frame,
        payload: &[u8],
        limits: &Limits,
    ) -> Result<Event, Violation> {
        match frame.opcode {
            Opcode::Ping => Ok(Event::Ping(payload.to_vec())),
            Opcode::Pong => Ok(Event::Pong),
            Opcode::Close => close_frame(payload),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(violation(
                        code::PROTOCOL,
                        "a new message began before the last one ended",
                    ));
                }
                let text = frame.opcode == Opcode::Text;
                if payload.len() > limits.max_message {
                    return Err(violation(code::TOO_BIG, "message larger than the limit"));
                }
                if frame.fin {
                    return finish(payload.to_vec(), text, limits.binary);
                }
                self.partial = Some((payload.to_vec(), text));
                Ok(Event::Partial)
            }
            Opcode::Continuation => {
                let Some((mut data, text)) = self.partial.take() else {
                    return Err(violation(
                        code::PROTOCOL,
                        "a continuation without a message",
                    ));
                };
                if data.len() + payload.len() > limits.max_message {
                    return Err(violation(code::TOO_BIG, "message larger than the limit"));
                }
                data.extend_from_slice(payload);
                if text && !utf8_so_far(&data) {
                    return Err(violation(code::INVALID_DATA, "text is not UTF-8"));
                }
                if frame.fin {
                    finish(data, text, limits.binary)
                } else {
                    self.partial = Some((data, text));
                    Ok(Event::Partial)
                }
            }
        }
    }
}

fn finish(data: Vec<u8>, text: bool, binary: bool) -> Result<Event, Violation> {
    if !text && binary {
        return Ok(Event::Binary(data));
    }
    if !text {
        return Err(violation(
            code::UNSUPPORTED,
            "binary messages are not supported",
        ));
    }
    String::from_utf8(data)
        .map(Event::Text)
        .map_err(|_| violation(code::INVALID_DATA, "text is not UTF-8"))
}

/// Whether `data` is UTF-8 up to a character cut at its end.
fn utf8_so_far(data: &[u8]) -> bool {
    match std::str::from_utf8(data) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fn close_frame(payload: &[u8]) -> Result<Event, Violation> {
    match payload.len() {
        0 => Ok(Event::Close(1005, String::new())),
        1 => Err(violation(code::PROTOCOL, "a close frame of one byte")),
        _ => {
            let c = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(c, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(violation(code::PROTOCOL, "an invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| violation(code::INVALID_DATA, "a close reason that is not UTF-8"))?;
            Ok(Event::Close(c, reason.to_owned()))
        }
    }
}

/// Appends a server frame (unmasked, unfragmented).
pub fn write_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    out.push(0x80 | opcode.byte());
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut p = code.to_be_bytes().to_vec();
    let mut r = reason;
    while r.len() > 123 {
        let mut cut = 123;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    p.extend_from_slice(r.as_bytes());
    write_frame(out, Opcode::Close, &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_frame: 32 * 1024,
        max_message: 128 * 1024,
        binary: false,
    };

    /// A masked client frame.
    fn client(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn events(bytes: &[u8]) -> Result<Vec<Event>, Violation> {
        events_with(bytes, &LIMITS)
    }

    fn events_with(bytes: &[u8], limits: &Limits) -> Result<Vec<Event>, Violation> {
        let mut buf = bytes.to_vec();
        let mut m = Messages::default();
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let Some(f) = parse_frame(&mut buf[at..], limits)? else {
                break;
            };
            let payload = buf[at + f.payload.start..at + f.payload.end].to_vec();
            out.push(m.take(&f, &payload, limits)?);
            at += f.len;
        }
        Ok(out)
    }

    #[test]
    fn the_rfc_accept_key() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn messages_fragments_and_control_frames() {
        let mut b = client(false, 1, b"Hel");
        b.extend(client(true, 9, b"ping!"));
        b.extend(client(true, 0, b"lo"));
        b.extend(client(true, 1, "é".as_bytes()));
        let e = events(&b).unwrap();
        assert_eq!(
            e,
            vec![
                Event::Partial,
                Event::Ping(b"ping!".to_vec()),
                Event::Text("Hello".into()),
                Event::Text("é".into())
            ]
        );
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        assert_eq!(
            events(&client(true, 8, &close)).unwrap(),
            vec![Event::Close(1000, "bye".into())]
        );
        // 126- and 127-length forms.
        let big = vec![b'a'; 70_000];
        let limits = Limits {
            max_frame: 100_000,
            max_message: 100_000,
            binary: false,
        };
        let mut f = client(true, 1, &big);
        let frame = parse_frame(&mut f, &limits).unwrap().unwrap();
        assert_eq!(frame.payload.len(), 70_000);
        let mut f = client(true, 1, &big[..300]);
        assert_eq!(parse_frame(&mut f[..100], &limits).unwrap(), None);
    }

    #[test]
    fn violations_close_with_their_codes() {
        let code_of = |b: Vec<u8>| events(&b).unwrap_err().code;
        let mut unmasked = client(true, 1, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(code_of(unmasked), code::PROTOCOL);
        let mut rsv = client(true, 1, b"x");
        rsv[0] |= 0x40;
        assert_eq!(code_of(rsv), code::PROTOCOL);
        assert_eq!(code_of(client(true, 3, b"x")), code::PROTOCOL);
        assert_eq!(code_of(client(false, 9, b"x")), code::PROTOCOL);
        assert_eq!(code_of(client(true, 9, &[0; 126])), code::PROTOCOL);
        assert_eq!(code_of(client(true, 0, b"x")), code::PROTOCOL);
        let mut two = client(false, 1, b"a");
        two.extend(client(true, 1, b"b"));
        assert_eq!(code_of(two), code::PROTOCOL);
        assert_eq!(code_of(client(true, 1, &[0xff, 0xfe])), code::INVALID_DATA);
        // Invalid UTF-8 is refused at the fragment that makes it so.
        let mut frag = client(false, 1, b"ok");
        frag.extend(client(false, 0, &[0xc0, 0xaf]));
        assert_eq!(code_of(frag), code::INVALID_DATA);
        assert_eq!(code_of(client(true, 2, b"bin")), code::UNSUPPORTED);
        // Taken when the API takes binary messages, fragments too.
        let binary = Limits {
            binary: true,
            ..LIMITS
        };
        let mut parts = client(false, 2, &[0xff, 0]);
        parts.extend(client(true, 0, &[1]));
        assert_eq!(
            events_with(&parts, &binary).unwrap(),
            [Event::Partial, Event::Binary(vec![0xff, 0, 1])]
        );
        assert_eq!(code_of(client(true, 1, &vec![b'a'; 40_000])), code::TOO_BIG);
        let small = Limits {
            max_frame: 32 * 1024,
            max_message: 1000,
            binary: false,
        };
        let mut one = client(true, 1, &[b'a'; 2000]);
        let f = parse_frame(&mut one, &small).unwrap().unwrap();
        let p = one[f.payload.clone()].to_vec();
        assert_eq!(
            Messages::default().take(&f, &p, &small).unwrap_err().code,
            code::TOO_BIG
        );
        let mut long = Vec::new();
        for _ in 0..5 {
            long.extend(client(
                false,
                if long.is_empty() { 1 } else { 0 },
                &[b'a'; 30_000],
            ));
        }
        assert_eq!(code_of(long), code::TOO_BIG);
        assert_eq!(code_of(client(true, 8, &[3])), code::PROTOCOL);
        assert_eq!(
            code_of(client(true, 8, &1005u16.to_be_bytes())),
            code::PROTOCOL
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff]);
        assert_eq!(code_of(client(true, 8, &bad_reason)), code::INVALID_DATA);
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        write_frame(&mut out, Opcode::Text, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        write_frame(&mut out, Opcode::Text, &[b'x'; 300]);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        out.clear();
        write_close(&mut out, code::TOO_BIG, &"é".repeat(100));
        assert_eq!(out[0], 0x88);
        assert!(out[1] <= 125);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1009);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
