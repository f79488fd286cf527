//! Deadlines a slow client cannot stretch: a whole request within
//! `request_timeout_ms` from its first byte however it trickles, and a response
//! the client does not read cut after `send_timeout_ms` without progress.

mod common;
use common::*;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn gateway(up: &Upstream, limits: &str) -> Gateway {
    let be = up.url();
    Gateway::start(&format!(
        "workers: 1
listeners:
  - name: test
    bind: 127.0.0.1:0
    limits: {{ {limits} }}
apis:
  - name: a
    routes:
      - {{ route: 'POST /up', integration: {{ type: http_proxy, uri: \"{be}/up\" }} }}
      - {{ route: 'GET /big', integration: {{ type: http_proxy, uri: \"{be}/big\" }} }}
      - {{ route: 'POST /mock', integration: {{ type: mock, status: 200, body: ok }} }}
      - route: POST /checked
        validate: {{ body_schema: {{ type: object }} }}
        integration: {{ type: http_proxy, uri: \"{be}/checked\" }}
    stages: [ {{ name: $default }} ]
"
    ))
}

/// Sends `head`, then trickles `body` a byte every `gap` from another thread;
/// returns the status the gateway answered and how long after the first byte.
fn trickle(gw: &Gateway, head: &str, body: &[u8], gap: Duration) -> (u16, Duration) {
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut w = s.try_clone().unwrap();
    w.write_all(head.as_bytes()).unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        for b in body {
            std::thread::sleep(gap);
            if w.write_all(&[b]).is_err() {
                return;
            }
        }
    });
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("an answer before the body ended");
    let took = started.elapsed();
    // The connection is closed after the 408: nothing more comes.
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "more after the answer: {rest:?}");
    drop(r);
    let _ = writer.join();
    (resp.status, took)
}

#[test]
fn a_trickled_body_is_cut_at_the_request_deadline() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "request_timeout_ms: 1500, idle_timeout_ms: 60000, header_timeout_ms: 10000",
    );
    let body = vec![b'x'; 100];
    for (path, chunked) in [
        ("/up", false),
        ("/mock", false),
        ("/checked", false),
        ("/up", true),
    ] {
        let head = if chunked {
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        } else {
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        };
        // A byte every 100 ms: each read comes well within the idle timeout, yet the
        // body would take 10 s.
        let payload: Vec<u8> = if chunked {
            let mut p = Vec::new();
            for _ in 0..20 {
                p.extend_from_slice(b"5\r\nxxxxx\r\n");
            }
            p
        } else {
            body.clone()
        };
        let (status, took) = trickle(&gw, &head, &payload, Duration::from_millis(100));
        assert_eq!(status, 408, "{path} chunked={chunked}");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(4000),
            "{path}: cut after {took:?}"
        );
    }
    // The upstream never saw a whole request, and the gateway serves on.
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let mut c = Client::connect(gw.addr);
    let r = c.request("POST", "/up", "t", &[], b"hello");
    assert_eq!(r.status, 200);
}

#[test]
fn a_trickled_head_is_cut_at_the_request_deadline() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "request_timeout_ms: 1000, idle_timeout_ms: 60000, header_timeout_ms: 10000",
    );
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in b"GET /big HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let resp = read_response(&mut BufReader::new(s), false).expect("an answer");
    assert_eq!(resp.status, 408);
    assert!(started.elapsed() < Duration::from_millis(3000));
    let _ = writer.join();
}

/// A client that sends its request and reads nothing: once the socket buffers are
/// full, the gateway gives up after `send_timeout_ms` and closes both sides.
#[test]
fn a_client_that_does_not_read_is_cut_after_the_send_timeout() {
    const BODY: usize = 48 << 20;
    let up = Upstream::start(|_| Reply::ok(vec![b'y'; BODY]));
    let gw = gateway(&up, "send_timeout_ms: 1000");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so the gateway's writes stall soon.
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Read nothing for a while: the gateway's writes stall, then it gives up.
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("the gateway neither sent nor closed: {e} after {got} bytes"),
        }
    };
    assert!(
        got < BODY,
        "all {got} bytes arrived ({ended}): nothing was cut"
    );
    // The gateway serves on, and the upstream's connection was not left half-read
    // in the pool: a new request gets a whole answer.
    let mut c = Client::connect(gw.addr);
    let r = c.request("POST", "/up", "t", &[], b"hello");
    assert_eq!(r.status, 200, "{}", gw.log());
}
