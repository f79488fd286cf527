//! Malformed and smuggling-shaped requests: each is answered 400/431/413/501/505
//! with a JSON body, and the connection is closed. A request that follows on the same
//! connection is never served.

mod common;
use common::*;

fn gateway(up: &Upstream) -> Gateway {
    Gateway::start(&format!(
        "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
    limits: {{ max_header_bytes: 4096, max_body_bytes: 1000 }}
apis:
  - name: p
    routes:
      - {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{}/{{proxy}}\" }} }}
    stages: [ {{ name: $default }} ]
",
        up.url()
    ))
}

#[test]
fn malformed_requests_are_refused_and_closed() {
    let up = Upstream::echo();
    let gw = gateway(&up);
    let long_header = format!(
        "GET /a HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let many_headers = {
        let mut s = "GET /a HTTP/1.1\r\nhost: x\r\n".to_owned();
        for i in 0..150 {
            s.push_str(&format!("x-h{i}: 1\r\n"));
        }
        s + "\r\n"
    };
    let table: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL and TE together", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE then CL", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing CLs", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde".to_vec(), 400),
        ("CL list", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 4, 5\r\n\r\nabcd".to_vec(), 400),
        ("signed CL", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: +4\r\n\r\nabcd".to_vec(), 400),
        ("hex CL", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0x4\r\n\r\nabcd".to_vec(), 400),
        ("double chunked", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("chunked not last", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(), 400),
        ("unknown coding", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n".to_vec(), 501),
        ("TE with space in name", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE in HTTP/1.0", b"POST /a HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("invalid chunk size", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk size overflow", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("chunk longer than size", b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n".to_vec(), 400),
        ("bare CR in header", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\rx-b: 2\r\n\r\n".to_vec(), 400),
        ("bare CR in request line", b"GET /a\r HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        ("invalid header name", b"GET /a HTTP/1.1\r\nhost: x\r\nx(a): 1\r\n\r\n".to_vec(), 400),
        ("NUL in header value", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n".to_vec(), 400),
        ("missing host", b"GET /a HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two hosts", b"GET /a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n".to_vec(), 400),
        ("bad host", b"GET /a HTTP/1.1\r\nhost: x y\r\n\r\n".to_vec(), 400),
        ("target not a path", b"GET a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        ("space in target", b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        ("bad method", b"G@T /a HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        ("HTTP/2 preface as 1.1", b"GET /a HTTP/2.0\r\nhost: x\r\n\r\n".to_vec(), 505),
        ("header section too large", long_header.into_bytes(), 431),
        ("too many headers", many_headers.into_bytes(), 431),
        ("body over the limit", b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n".to_vec(), 413),
        ("chunked body over the limit", {
            let mut r = b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            r.extend_from_slice(b"7d0\r\n");
            r.extend(std::iter::repeat_n(b'a', 2000));
            r.extend_from_slice(b"\r\n0\r\n\r\n");
            r
        }, 413),
    ];
    assert!(table.len() >= 20);
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for (name, mut raw, status) in table {
        let before = up.seen().iter().filter(|s| s.target == "/smuggled").count();
        raw.extend_from_slice(smuggled);
        let out = raw_exchange(gw.addr, &raw);
        let text = String::from_utf8_lossy(&out);
        let want = format!("HTTP/1.1 {status} ");
        assert!(
            text.starts_with(&want),
            "{name}: expected {status}, got {text:?}"
        );
        assert!(text.contains("connection: close"), "{name}: {text:?}");
        assert!(text.contains("{\"message\":"), "{name}: {text:?}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: a second response: {text:?}"
        );
        let after = up.seen().iter().filter(|s| s.target == "/smuggled").count();
        assert_eq!(
            before, after,
            "{name}: the follow-up request reached the upstream"
        );
    }
}

#[test]
fn header_timeout_answers_408_and_idle_connections_close() {
    let gw = Gateway::start(
        "workers: 1
listeners:
  - name: test
    bind: 127.0.0.1:0
    limits: { header_timeout_ms: 300, idle_timeout_ms: 400 }
apis:
  - name: m
    routes: [ { route: $default, integration: { type: mock, body: hi } } ]
    stages: [ { name: $default } ]
",
    );
    // A partial head that never completes.
    let out = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nhost: x\r\n");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));
    // An idle keep-alive connection is closed without a response.
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/").text(), "hi");
    let started = std::time::Instant::now();
    assert!(c.is_closed());
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}
