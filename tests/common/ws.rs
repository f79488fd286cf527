//! WebSocket clients for the tests: a raw handshake and frames (for what a
//! library will not send), and botocore's `apigatewaymanagementapi` client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// A handshake by hand: the stream and the status.
pub fn handshake(addr: SocketAddr, path: &str) -> (TcpStream, u16) {
    handshake_with(addr, path, "")
}

/// A handshake with more header lines (each ending in CRLF).
pub fn handshake_with(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, u16) {
    let (s, status, _) = handshake_head(addr, path, extra);
    (s, status)
}

/// `handshake_with`, and the response head as text.
pub fn handshake_head(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: gw.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 101 {
        assert!(
            text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{text}"
        );
    }
    (s, status, text)
}

/// A client frame (masked unless `unmasked`).
pub fn frame(fin: bool, op: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let m = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if unmasked {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }
    out
}

/// The next server frame: opcode and payload.
pub fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    Some((h[0] & 0x0f, p))
}

/// The close code the gateway sent (reading past other frames).
pub fn close_code(s: &mut TcpStream) -> u16 {
    while let Some((op, p)) = read_frame(s) {
        if op == 8 {
            return u16::from_be_bytes([p[0], p[1]]);
        }
        eprintln!("frame {op}: {}", String::from_utf8_lossy(&p));
    }
    let mut rest = Vec::new();
    let e = s.read_to_end(&mut rest);
    panic!("no close frame ({e:?}, {} more bytes)", rest.len());
}

const CONNECTIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/connections_client.py"
);

/// One `apigatewaymanagementapi` call by botocore.
pub fn manage(endpoint: &str, secret: &str, args: &[&str]) -> Value {
    super::json_output(
        Command::new("timeout")
            .args([
                "20",
                "python3",
                CONNECTIONS,
                endpoint,
                "AKIDCONNECTIONS12345",
                secret,
                "us-east-1",
            ])
            .args(args),
    )
}

/// A WebSocket API `chat` (stage `prod`) whose `$connect` and `$disconnect`
/// go to `be` (`/connect`, `/disconnect`) and whose `@connections` calls are
/// signed with `AKIDCONNECTIONS12345` / `conn-secret-0123456789`: an entry
/// of a config's `apis`.
pub fn connections_api(be: &str) -> String {
    format!(
        "  - name: chat
    type: websocket
    connections_authorizer: machines
    authorizers:
      - name: machines
        type: sigv4
        region: us-east-1
        access_keys:
          - {{ id: AKIDCONNECTIONS12345, secret: conn-secret-0123456789, allow: [\"chat/prod/*/@connections/*\"] }}
    routes:
      - route: $connect
        integration: {{ type: http_proxy, uri: \"{be}/connect\" }}
      - route: $disconnect
        integration: {{ type: http_proxy, uri: \"{be}/disconnect\" }}
    stages: [ {{ name: prod }} ]
"
    )
}
