//! The http_proxy integration over real sockets: bodies both ways, keep-alive and
//! pooling, pipelining, timeouts and failures, header rewriting.

mod common;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

fn proxy_config(upstream: &str, extra_route: &str) -> String {
    config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{upstream}/{{proxy}}\" }} }}
{extra_route}    stages: [ {{ name: $default }} ]
"
    ))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_bodies_stream_both_ways() {
    let big = pattern(6 * 1024 * 1024);
    let reply_body = big.clone();
    let up = Upstream::start(move |s| {
        let mut r = Reply::ok(reply_body.clone());
        r.headers
            .push(("x-received".into(), s.body.len().to_string()));
        r.headers.push((
            "x-received-ok".into(),
            (s.body == pattern(s.body.len())).to_string(),
        ));
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    let r = c.request("POST", "/upload", "gw.test", &[], &big);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-received"), Some("6291456"));
    assert_eq!(r.header("x-received-ok"), Some("true"));
    assert!(r.body == big, "response body differs");
}

#[test]
fn chunked_bodies_stream_both_ways() {
    let body = pattern(5 * 1024 * 1024 + 17);
    let reply_body = body.clone();
    let up = Upstream::start(move |s| {
        let mut r = Reply::ok(reply_body.clone());
        r.chunked = true;
        r.headers
            .push(("x-received".into(), s.body.len().to_string()));
        r.headers
            .push(("x-received-chunked".into(), s.chunked.to_string()));
        r.headers.push((
            "x-received-ok".into(),
            (s.body == pattern(s.body.len())).to_string(),
        ));
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    let mut raw =
        b"POST /up HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_000) {
        raw.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
    let writer = {
        let mut w = c.writer.try_clone().unwrap();
        std::thread::spawn(move || w.write_all(&raw).unwrap())
    };
    let r = c.read_response(false).expect("response");
    writer.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-received"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header("x-received-chunked"), Some("true"));
    assert_eq!(r.header("x-received-ok"), Some("true"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.body == body, "response body differs");
    // Still in step.
    assert_eq!(c.get("/again").status, 200);
}

#[test]
fn close_delimited_upstream_response_is_chunked_to_the_client() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().take(1) {
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end");
        }
    });
    let gw = Gateway::start(&proxy_config(&format!("http://{addr}"), ""));
    let mut c = Client::connect(gw.addr);
    let r = c.get("/x");
    assert_eq!(r.text(), "until the end");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start(|s| {
        // Later requests answer faster: order must still hold.
        let n: u64 = s.target.trim_start_matches("/n/").parse().unwrap_or(0);
        let mut r = Reply::ok(s.target.clone());
        r.delay = Duration::from_millis(30u64.saturating_sub(n * 3));
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    let mut raw = Vec::new();
    for i in 0..10 {
        raw.extend_from_slice(format!("GET /n/{i} HTTP/1.1\r\nhost: gw.test\r\n\r\n").as_bytes());
    }
    c.send(&raw);
    for i in 0..10 {
        let r = c.read_response(false).expect("response");
        assert_eq!(r.text(), format!("/n/{i}"));
    }
}

#[test]
fn upstream_connections_are_reused() {
    let up = Upstream::echo();
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    for _ in 0..200 {
        assert_eq!(c.get("/r").status, 200);
    }
    // One client connection lives on one worker: one upstream connection serves all.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Several sequential client connections (possibly on both workers) still reuse.
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/r").status, 200);
    }
    assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

#[test]
fn dead_pooled_connection_is_retried_for_idempotent_requests() {
    // Every reply closes its connection after writing (without saying so), so each
    // pooled connection is dead when next used.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acc = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            acc.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            // Dropped: closed.
        }
    });
    let gw = Gateway::start(&proxy_config(&format!("http://{addr}"), ""));
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        let r = c.get("/x");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 5);
}

#[test]
fn a_target_that_closed_every_pooled_connection_costs_no_request() {
    // After a burst, the worker's pool holds several connections the target has
    // since closed. None is used: a request neither fails on them nor is retried
    // from one dead connection onto the next (which made it a 502).
    // The target closes a keep-alive connection after 300 ms without a request
    // (as servers do after their own idle timeout: Node's 5 s, against the
    // pool's 30 s); it answers with the length of the body it received, after
    // 150 ms while `slow`.
    let slow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow2 = std::sync::Arc::clone(&slow);
    let up = Upstream::start_idle(Duration::from_millis(300), move |s| {
        let mut r = Reply::ok(format!("got {}", s.body.len()));
        if slow2.load(std::sync::atomic::Ordering::SeqCst) {
            r.delay = Duration::from_millis(150);
        }
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    // Eight requests at once: eight pooled connections over the workers.
    let burst: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(gw.addr, "/x").status))
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), 200);
    }
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(800)); // the target closes them all
    for i in 0..8 {
        let r = get(gw.addr, "/x");
        assert_eq!((r.status, r.text().as_str()), (200, "got 0"), "GET {i}");
    }
    // A POST cannot be retried once sent: it must not go out on a closed one.
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..4 {
        let mut c = Client::connect(gw.addr);
        let r = c.request("POST", "/x", "gw.test", &[], b"hello");
        assert_eq!((r.status, r.text().as_str()), (200, "got 5"), "POST {i}");
    }
}

#[test]
fn integration_timeout_is_504() {
    let up = Upstream::start(|_| {
        let mut r = Reply::ok("late");
        r.delay = Duration::from_millis(1500);
        r
    });
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /slow', integration: {{ type: http_proxy, uri: \"{}/slow\", timeout_ms: 200 }} }}
    stages: [ {{ name: $default }} ]
",
        up.url()
    )));
    let started = Instant::now();
    let mut c = Client::connect(gw.addr);
    let r = c.get("/slow");
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), r#"{"message":"Endpoint request timed out"}"#);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "waited for the upstream"
    );
    // The client connection survives a timeout.
    assert_eq!(c.get("/slow").status, 504);
}

#[test]
fn refused_and_reset_upstreams_are_503_and_502() {
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A server that resets the connection without answering.
    let rude = TcpListener::bind("127.0.0.1:0").unwrap();
    let rude_addr = rude.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in rude.incoming() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"garbage\r\n\r\n");
        }
    });
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /closed', integration: {{ type: http_proxy, uri: \"http://{closed}/\" }} }}
      - {{ route: 'GET /rude', integration: {{ type: http_proxy, uri: \"http://{rude_addr}/\" }} }}
    stages: [ {{ name: $default }} ]
"
    )));
    let mut c = Client::connect(gw.addr);
    let r = c.get("/closed");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), r#"{"message":"Service Unavailable"}"#);
    let r = c.get("/rude");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), r#"{"message":"Bad Gateway"}"#);
    assert!(
        gw.log().contains("WARN"),
        "upstream failures are logged:\n{}",
        gw.log()
    );
}

/// A response of up to 64 KiB is read whole before any of it is sent: an upstream
/// that closes partway is answered with a 502, not a cut-off 200. A larger one
/// streams, so its failure can only cut the client's connection.
#[test]
fn upstream_closing_inside_a_buffered_body_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10000\r\n\r\n");
            let _ = s.write_all(&[b'x'; 5000]);
        }
    });
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /short', integration: {{ type: http_proxy, uri: \"http://{addr}/\" }} }}
    stages: [ {{ name: $default }} ]
"
    )));
    let mut c = Client::connect(gw.addr);
    let r = c.get("/short");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), r#"{"message":"Bad Gateway"}"#);
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .log()
            .contains("closed inside the response body")),
        "the reason is logged:\n{}",
        gw.log()
    );
}

#[test]
fn upstream_status_and_headers_pass_through_hop_by_hop_do_not() {
    let up = Upstream::start(|_| {
        let mut r = Reply::ok("teapot");
        r.status = 418;
        r.headers.push(("x-custom".into(), "kept".into()));
        r.headers.push(("keep-alive".into(), "timeout=5".into()));
        r.headers
            .push(("connection".into(), "keep-alive, X-Private ,x-other".into()));
        r.headers.push(("x-private".into(), "dropped".into()));
        r.headers.push(("x-other".into(), "dropped".into()));
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "GET",
        "/h",
        "gw.test",
        &[
            ("connection", "x-hop"),
            ("x-hop", "must not pass"),
            // More names than the gateway gathers at once: the last still counts.
            ("connection", "a1, a2, a3, a4, a5, a6, a7, a8, X-Late"),
            ("x-late", "must not pass"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-end-to-end", "passes"),
        ],
        b"",
    );
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-custom"), Some("kept"));
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-private"), None);
    assert_eq!(r.header("x-other"), None);
    let seen = up.last();
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("x-late"), None);
    assert_eq!(seen.header("te"), None);
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("x-end-to-end"), Some("passes"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
}

/// A small body that arrives in pieces after its head still reaches the upstream
/// whole (it is gathered and sent with the head), and the next request on the
/// connection is served after it.
#[test]
fn small_body_sent_in_pieces_arrives_whole() {
    let up = Upstream::echo();
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    c.send(b"POST /slow HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 4000\r\n\r\n");
    for piece in pattern(4000).chunks(1000) {
        std::thread::sleep(Duration::from_millis(50));
        c.send(piece);
    }
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "POST /slow body=4000");
    assert!(up.last().body == pattern(4000), "body differs");
    let r = c.get("/after");
    assert_eq!(r.text(), "GET /after body=0");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let up = Upstream::echo();
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    c.send(
        b"POST /e HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut blank).unwrap();
    c.send(b"hello");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.text(), "POST /e body=5");
    assert_eq!(up.last().header("expect"), None);
}

#[test]
fn http10_client_gets_a_close_delimited_answer() {
    let up = Upstream::start(|_| {
        let mut r = Reply::ok("chunked upstream");
        r.chunked = true;
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let out = raw_exchange(gw.addr, b"GET /old HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nchunked upstream"), "{text}");
}

#[test]
fn upstream_204_and_304_carry_no_body_and_keep_the_connection_in_step() {
    let up = Upstream::start(|s| {
        let mut r = Reply::ok(Vec::new());
        r.headers.clear();
        if s.target == "/nm" {
            r.status = 304;
            r.headers.push(("etag".into(), "\"v1\"".into()));
        } else {
            r.status = 204;
        }
        r
    });
    let gw = Gateway::start(&proxy_config(&up.url(), ""));
    let mut c = Client::connect(gw.addr);
    for _ in 0..3 {
        let r = c.request("GET", "/nm", "gw.test", &[("if-none-match", "\"v1\"")], b"");
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert!(r.body.is_empty());
        let r = c.get("/nc");
        assert_eq!(r.status, 204);
        assert_eq!(r.header("content-length"), None);
        assert_eq!(r.header("transfer-encoding"), None);
    }
}
