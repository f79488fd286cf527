//! WebSocket APIs (AWS's route-based ones) over real sockets: the `websockets`
//! package's clients (tests/support/ws_chat.py) and a raw frame client here for
//! what a library will not send (invalid UTF-8, unmasked frames, fragments with
//! control frames between them).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ws::{
    close_code, frame, handshake, handshake_head, handshake_with, manage, read_frame,
};
use common::{config, wait_until, Gateway, Reply, Upstream};
use serde_json::Value;

const CHAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws_chat.py");

/// Runs the two-client chat script: one JSON value per client.
fn chat(url: &str, messages: &[&str], headers: &[&str]) -> Vec<Value> {
    chat_env(url, messages, headers, &[])
}

fn chat_env(url: &str, messages: &[&str], headers: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let mut cmd = Command::new("timeout");
    cmd.envs(env.iter().copied());
    cmd.args(["20", "python3", CHAT, url]).args(messages);
    for h in headers {
        cmd.args(["--header", h]);
    }
    let out = cmd.output().expect("python3 with websockets");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chat_api(be: &str, extra_routes: &str, stage_extra: &str) -> String {
    config(&format!(
        "apis:
  - name: chat
    type: websocket
    route_selection_expression: \"$request.body.action\"
    routes:
      - route: $connect
        integration: {{ type: http_proxy, uri: \"{be}/connect\" }}
      - route: $disconnect
        integration: {{ type: http_proxy, uri: \"{be}/disconnect\" }}
      - route: sendmessage
        integration: {{ type: http_proxy, uri: \"{be}/message\" }}
        route_response: true
      - route: $default
        integration: {{ type: mock, body: '{{\"error\":\"unknown action\"}}' }}
        route_response: true
{extra_routes}    stages:
      - name: prod
        limits: {{ max_message_bytes: 2048, max_frame_bytes: 1024, idle_timeout_s: 2 }}
{stage_extra}"
    ))
}

/// The id `$connect` saw for the client that sent `x-client: who`.
fn connection_id(be: &Upstream, who: &str) -> String {
    events(be, "/connect")
        .into_iter()
        .find(|e| e["headers"]["x-client"] == who)
        .and_then(|e| {
            e["requestContext"]["connectionId"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap()
}

fn events(be: &Upstream, path: &str) -> Vec<Value> {
    be.seen()
        .into_iter()
        .filter(|s| s.target == path)
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect()
}

#[test]
fn a_chat_routes_messages_and_answers_with_route_responses() {
    let be = Upstream::start(|s| {
        if s.target == "/message" {
            let e: Value = serde_json::from_slice(&s.body).unwrap();
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
            Reply::ok(format!(
                "{{\"from\":\"{}\",\"said\":{}}}",
                e["requestContext"]["connectionId"].as_str().unwrap(),
                body["text"]
            ))
        } else {
            Reply::ok("")
        }
    });
    let gw = Gateway::start(&chat_api(&be.url(), "", ""));
    let url = format!("ws://{}/prod?room=1", gw.addr);
    let out = chat(
        &url,
        &[
            r#"{"action":"sendmessage","text":"hi"}"#,
            r#"{"action":"nothing"}"#,
        ],
        &["x-client:tests"],
    );
    let said: Value = serde_json::from_str(out[0]["got"].as_str().unwrap()).unwrap();
    assert_eq!(said["said"], "hi");
    assert_eq!(out[1]["got"], r#"{"error":"unknown action"}"#);
    // The integration saw AWS's events: CONNECT (headers, query), MESSAGE, and
    // DISCONNECT after the clients closed.
    assert!(wait_until(Duration::from_secs(5), || events(
        &be,
        "/disconnect"
    )
    .len()
        == 2));
    let connects = events(&be, "/connect");
    assert_eq!(connects.len(), 2);
    let c = &connects[0];
    let rc = &c["requestContext"];
    assert_eq!(rc["eventType"], "CONNECT");
    assert_eq!(rc["routeKey"], "$connect");
    assert_eq!(rc["stage"], "prod");
    assert_eq!(rc["apiId"], "chat");
    assert_eq!(rc["messageDirection"], "IN");
    assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(rc["requestId"], rc["extendedRequestId"]);
    assert!(rc["connectedAt"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(c["headers"]["x-client"], "tests");
    assert_eq!(c["queryStringParameters"]["room"], "1");
    assert_ne!(
        connects[0]["requestContext"]["connectionId"],
        connects[1]["requestContext"]["connectionId"]
    );
    let m = &events(&be, "/message")[0];
    assert_eq!(m["requestContext"]["eventType"], "MESSAGE");
    assert_eq!(m["requestContext"]["routeKey"], "sendmessage");
    assert!(m["requestContext"]["messageId"].is_string());
    assert_eq!(m["body"], r#"{"action":"sendmessage","text":"hi"}"#);
    assert_eq!(said["from"], m["requestContext"]["connectionId"]);
    let d = &events(&be, "/disconnect")[0];
    assert_eq!(d["requestContext"]["eventType"], "DISCONNECT");
    assert_eq!(d["requestContext"]["disconnectStatusCode"], 1000);
}

#[test]
fn connect_refusals_and_no_default_route() {
    let be = Upstream::start(|s| {
        let mut r = Reply::ok("");
        if s.target == "/connect" && s.body.windows(6).any(|w| w == b"banned") {
            r.status = 403;
        }
        // A subprotocol chosen by $connect's integration (AWS's way).
        if s.body.windows(7).any(|w| w == b"chat.v1") {
            r.headers
                .push(("Sec-WebSocket-Protocol".into(), "chat.v1".into()));
        }
        if s.body.windows(7).any(|w| w == b"want-v9") {
            r.headers
                .push(("Sec-WebSocket-Protocol".into(), "chat.v9".into()));
        }
        r
    });
    let yaml = config(&format!(
        "apis:
  - name: chat
    type: websocket
    routes:
      - route: $connect
        integration: {{ type: http_proxy, uri: \"{}/connect\" }}
      - route: ping
        integration: {{ type: mock, body: pong }}
        route_response: true
    stages: [ {{ name: prod }} ]
",
        be.url()
    ));
    let gw = Gateway::start(&yaml);
    let url = format!("ws://{}/prod", gw.addr);
    // The subprotocol $connect's integration picks from the client's offer is
    // named in the 101; one the client did not offer is not.
    let (_, status, head) = handshake_head(
        gw.addr,
        "/prod",
        "sec-websocket-protocol: chat.v2, chat.v1\r\n",
    );
    assert_eq!(status, 101);
    assert!(
        head.contains("\r\nsec-websocket-protocol: chat.v1\r\n"),
        "{head}"
    );
    let (_, status, head) = handshake_head(gw.addr, "/prod", "x-client: want-v9\r\n");
    assert_eq!(status, 101);
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    // $connect's integration refuses: the handshake gets its status.
    let out = chat(&url, &["x", "y"], &["x-user:banned"]);
    assert_eq!(out[0]["refused"], 403);
    // No route and no $default: AWS's message.
    let out = chat(
        &url,
        &[r#"{"action":"ping"}"#, r#"{"action":"other"}"#],
        &[],
    );
    assert_eq!(out[0]["got"], "pong");
    let v: Value = serde_json::from_str(out[1]["got"].as_str().unwrap()).unwrap();
    assert_eq!(v["message"], "Forbidden");
    assert!(v["connectionId"].is_string() && v["requestId"].is_string());
    // A plain request to the stage: 426.
    let r = common::get(gw.addr, "/prod");
    assert_eq!(r.status, 426);
}

#[test]
fn frames_limits_and_close_codes() {
    let be = Upstream::start(|_| Reply::ok(""));
    let gw = Gateway::start(&chat_api(&be.url(), "", ""));
    // Fragments with a ping between them: the pong first, then the answer.
    let (mut s, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 101);
    let msg = br#"{"action":"unknown","pad":"...."}"#;
    s.write_all(&frame(false, 1, &msg[..10], false)).unwrap();
    s.write_all(&frame(true, 9, b"are you there", false))
        .unwrap();
    s.write_all(&frame(true, 0, &msg[10..], false)).unwrap();
    assert_eq!(read_frame(&mut s), Some((10, b"are you there".to_vec())));
    assert_eq!(
        read_frame(&mut s),
        Some((1, br#"{"error":"unknown action"}"#.to_vec()))
    );
    // A close from the client is answered with its code.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    s.write_all(&frame(true, 8, &close, false)).unwrap();
    assert_eq!(close_code(&mut s), 1000);
    for (bytes, code, what) in [
        (
            frame(true, 1, &[0xff, 0xfe, 0xfd], false),
            1007,
            "invalid UTF-8",
        ),
        (frame(true, 1, b"hello", true), 1002, "an unmasked frame"),
        (frame(true, 2, b"bin", false), 1003, "a binary message"),
        (
            frame(true, 1, &[b'a'; 1500], false),
            1009,
            "a frame over max_frame_bytes",
        ),
        (
            [
                frame(false, 1, &[b'a'; 1000], false),
                frame(false, 0, &[b'a'; 1000], false),
                frame(true, 0, &[b'a'; 100], false),
            ]
            .concat(),
            1009,
            "a message over max_message_bytes",
        ),
    ] {
        let (mut s, status) = handshake(gw.addr, "/prod");
        assert_eq!(status, 101);
        s.write_all(&bytes).unwrap();
        let mut got = None;
        while let Some((op, p)) = read_frame(&mut s) {
            if op == 8 {
                got = Some(u16::from_be_bytes([p[0], p[1]]));
                break;
            }
        }
        assert_eq!(got, Some(code), "{what}: {}", gw.log());
    }
    // Idle: closed with 1001 after idle_timeout_s.
    let (mut s, _) = handshake(gw.addr, "/prod");
    let t = Instant::now();
    assert_eq!(close_code(&mut s), 1001);
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    // Each connection's end reached $disconnect with its code.
    assert!(wait_until(Duration::from_secs(5), || events(
        &be,
        "/disconnect"
    )
    .len()
        == 7));
    let codes: Vec<u64> = events(&be, "/disconnect")
        .iter()
        .map(|e| {
            e["requestContext"]["disconnectStatusCode"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for c in [1000, 1007, 1002, 1003, 1009, 1001] {
        assert!(codes.contains(&c), "{c}: {codes:?}");
    }
}

/// `binary_messages: base64` (not in AWS, whose WebSocket APIs close binary
/// messages with 1003): a binary message reaches the integration base64-encoded
/// and its route response goes back as a binary message; an empty route response
/// is an empty message of the message's kind.
#[test]
fn binary_messages_when_the_api_takes_them() {
    // The event's body, as an echo integration answers.
    let be = Upstream::start(|s| {
        let event: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
        Reply::ok(event["body"].as_str().unwrap_or("").to_owned())
    });
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: echo
    type: websocket
    binary_messages: base64
    routes:
      - route: $default
        integration: {{ type: http_proxy, uri: \"{be}/echo\" }}
        route_response: true
    stages: [ {{ name: prod }} ]
",
        be = be.url()
    )));
    let (mut s, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 101);
    let blob: Vec<u8> = (0..=255u8).chain([0, 0xff]).collect();
    s.write_all(&frame(false, 2, &blob[..100], false)).unwrap();
    s.write_all(&frame(true, 9, b"ping", false)).unwrap();
    s.write_all(&frame(true, 0, &blob[100..], false)).unwrap();
    assert_eq!(read_frame(&mut s), Some((10, b"ping".to_vec())));
    assert_eq!(read_frame(&mut s), Some((2, blob.clone())));
    let seen = events(&be, "/echo");
    let last = seen.last().expect("the integration was called");
    assert_eq!(last["isBase64Encoded"], true, "{last}");
    assert_eq!(last["requestContext"]["routeKey"], "$default");
    assert_eq!(
        last["body"].as_str().map(str::len),
        Some(blob.len().div_ceil(3) * 4)
    );
    // Text stays text; empty messages are echoed as empty messages.
    for (op, payload) in [(1u8, &b"hello"[..]), (1, b""), (2, b"")] {
        s.write_all(&frame(true, op, payload, false)).unwrap();
        assert_eq!(read_frame(&mut s), Some((op, payload.to_vec())), "{op}");
    }
    assert_eq!(events(&be, "/echo")[2]["isBase64Encoded"], false);
}

#[test]
fn websocket_config_is_checked() {
    let (code, out) = common::validate(&config(
        "apis:
  - name: chat
    type: websocket
    routes:
      - { route: \"$bogus\", integration: { type: mock } }
      - { route: a, integration: { type: mock } }
      - { route: a, integration: { type: mock } }
    stages:
      - { name: prod, limits: { max_frame_bytes: 0 } }
  - name: web
    routes:
      - { route: GET /x, integration: { type: mock }, route_response: true }
    stages:
      - { name: prod, limits: { idle_timeout_s: 5 } }
",
    ));
    assert_eq!(code, 1, "{out}");
    for want in [
        "apis[0].routes[0].route: \"$bogus\": a WebSocket route key is",
        "apis[0].routes[2].route: \"a\" is also routes[1]",
        "apis[0].stages[0].limits.max_frame_bytes: must be from 1 to",
        "apis[1].routes[0].route_response: only WebSocket APIs",
        "apis[1].stages[0].limits: only WebSocket APIs' stages take limits",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
}

#[test]
fn connections_api_with_botocore_across_workers() {
    let be = Upstream::start(|_| Reply::ok(""));
    let yaml = config(&format!(
        "admin: {{ bind: \"127.0.0.1:0\", token: an-admin-token-for-tests }}
apis:
{}",
        common::ws::connections_api(&be.url())
    ));
    let gw = Gateway::start(&yaml);
    let (mut a, status) = handshake_with(gw.addr, "/prod", "x-client: a\r\n");
    assert_eq!(status, 101);
    let (mut b, status) = handshake_with(gw.addr, "/prod", "x-client: b\r\n");
    assert_eq!(status, 101);
    let id_of = |who: &str| connection_id(&be, who);
    let (ida, idb) = (id_of("a"), id_of("b"));
    let endpoint = format!("http://{}/prod", gw.addr);
    let secret = "conn-secret-0123456789";
    // Ten posts, each its own client connection (spread over the workers by the
    // kernel): every one reaches a, whichever worker holds it.
    for i in 0..10 {
        let r = manage(&endpoint, secret, &["post", &ida, &format!("hello {i}")]);
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(
            read_frame(&mut a),
            Some((1, format!("hello {i}").into_bytes()))
        );
    }
    let r = manage(&endpoint, secret, &["get", &ida]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["identity"]["SourceIp"], "127.0.0.1");
    // DELETE closes b (1000), which reaches $disconnect; then b is gone.
    let r = manage(&endpoint, secret, &["delete", &idb]);
    assert_eq!(r["status"], 204, "{r}");
    assert_eq!(close_code(&mut b), 1000);
    assert!(wait_until(Duration::from_secs(5), || events(
        &be,
        "/disconnect"
    )
    .len()
        == 1));
    assert!(wait_until(Duration::from_secs(2), || manage(
        &endpoint,
        secret,
        &["post", &idb, "x"]
    )["status"]
        == 410));
    let r = manage(&endpoint, secret, &["post", &idb, "x"]);
    assert_eq!(r["error"], "GoneException", "{r}");
    let r = manage(&endpoint, secret, &["get", "no-such-connection"]);
    assert_eq!(
        (r["status"].as_u64(), r["error"].as_str()),
        (Some(410), Some("GoneException"))
    );
    // A wrong secret is refused before anything is looked up.
    let r = manage(&endpoint, "not-the-secret-at-all", &["post", &ida, "x"]);
    assert_eq!(r["status"], 403, "{r}");
    // a is still connected and served.
    let r = manage(&endpoint, secret, &["post", &ida, "still here"]);
    assert_eq!(r["status"], 200);
    assert_eq!(read_frame(&mut a), Some((1, b"still here".to_vec())));
    // The metrics count them (summed over workers).
    let metrics = common::get(gw.admin.expect("admin"), "/metrics").text();
    let sum = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(sum("shardgate_connections_api_ok_total"), 13, "{metrics}");
    assert!(sum("shardgate_connections_api_gone_total") >= 2);
    assert_eq!(sum("shardgate_websocket_api_messages_out_total"), 11);
    assert_eq!(sum("shardgate_websocket_api_connections_total"), 2);
    assert_eq!(sum("shardgate_websocket_api_connections_open"), 1);
}

#[test]
fn the_chat_example_runs_as_written() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (gw_port, be_port) = (free(), free());
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat");
    let yaml = std::fs::read_to_string(format!("{dir}/chat.yaml"))
        .unwrap()
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{gw_port}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{be_port}"));
    let secret = "chat-secret-0123456789";
    let mut backend = Command::new("python3")
        .arg(format!("{dir}/backend.py"))
        .arg(be_port.to_string())
        .arg(format!("http://127.0.0.1:{gw_port}/prod"))
        .env("CHAT_SECRET", secret)
        .spawn()
        .expect("python3 with botocore");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _backend = Kill(&mut backend);
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(
        ("127.0.0.1", be_port)
    )
    .is_ok()));
    let gw = Gateway::start_env(&yaml, &[], &[("CHAT_SECRET", secret)]);
    let (mut a, sa) = handshake(gw.addr, "/prod");
    let (mut b, sb) = handshake(gw.addr, "/prod");
    assert_eq!((sa, sb), (101, 101));
    a.write_all(&frame(
        true,
        1,
        br#"{"action":"sendmessage","text":"hi"}"#,
        false,
    ))
    .unwrap();
    let (op, got) = read_frame(&mut b).unwrap();
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(v["text"], "hi");
    let mut at_a: Vec<Value> = (0..2)
        .map(|_| serde_json::from_slice(&read_frame(&mut a).unwrap().1).unwrap())
        .collect();
    at_a.sort_by_key(|v| v.get("delivered").is_some());
    assert_eq!(at_a[0]["text"], "hi", "{at_a:?}");
    assert_eq!(at_a[1]["delivered"], 2, "{at_a:?}");
    a.write_all(&frame(true, 1, br#"{"action":"dance"}"#, false))
        .unwrap();
    let (_, got) = read_frame(&mut a).unwrap();
    assert_eq!(got, br#"{"error":"unknown action: use sendmessage"}"#);
}

#[test]
fn authorizers_on_connect_and_lambda_routes() {
    let authz = Upstream::start(|s| {
        // The authorizer gets the request's facts as JSON (its headers among them).
        let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
        let ok = v["headers"]["authorization"] == "let-me-in";
        let mut r = Reply::ok(
            serde_json::json!({"isAuthorized": ok, "context": {"user": "u1"}}).to_string(),
        );
        r.headers
            .push(("content-type".into(), "application/json".into()));
        r
    });
    let be = Upstream::start(|_| Reply::ok(""));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = config(&format!(
        "functions:
  - name: wsfn
    runtime_api: 127.0.0.1:{port}
    command: [python3, -m, awslambdaric, ws_app.handler]
    working_dir: {dir}/tests/support/functions
apis:
  - name: locked
    type: websocket
    authorizers:
      - {{ name: gate, type: request, uri: \"{authz}/authorize\", identity_sources: [header.authorization] }}
    routes:
      - route: $connect
        authorizer: gate
        integration: {{ type: http_proxy, uri: \"{be}/connect\" }}
      - route: hello
        integration: {{ type: lambda, function: wsfn }}
        route_response: true
    stages: [ {{ name: prod }} ]
",
        dir = env!("CARGO_MANIFEST_DIR"),
        authz = authz.url(),
        be = be.url()
    ));
    let gw = Gateway::start(&yaml);
    // Refused by the authorizer: the handshake gets 403 and $connect's
    // integration is never called.
    let (_s, status) = handshake_with(gw.addr, "/prod", "authorization: nope\r\n");
    assert_eq!(status, 403);
    let (_s, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 401);
    assert!(events(&be, "/connect").is_empty());
    // Let in: the authorizer's context is in the events.
    let (mut s, status) = handshake_with(gw.addr, "/prod", "authorization: let-me-in\r\n");
    assert_eq!(status, 101);
    let c = &events(&be, "/connect")[0];
    assert_eq!(c["requestContext"]["authorizer"]["user"], "u1");
    // A lambda route: the function's body is the route response.
    let got = (0..100)
        .find_map(|_| {
            s.write_all(&frame(true, 1, br#"{"action":"hello","n":1}"#, false))
                .unwrap();
            let (_, p) = read_frame(&mut s)?;
            let v: Value = serde_json::from_slice(&p).ok()?;
            if v.get("route").is_some() {
                Some(v)
            } else {
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        })
        .expect("the function answered");
    assert_eq!(got["route"], "hello");
    assert_eq!(got["type"], "MESSAGE");
    assert_eq!(got["connection"], c["requestContext"]["connectionId"]);
    assert_eq!(got["body"], r#"{"action":"hello","n":1}"#);
}

#[test]
fn wss_on_an_https_listener() {
    let dir = std::env::temp_dir().join(format!("shardgate-wsapi-{}", std::process::id()));
    let (ca, cert, key) = common::test_ca(&dir, &["localhost", "127.0.0.1"]);
    let yaml = format!(
        "workers: 2
listeners:
  - name: secure
    bind: \"127.0.0.1:0\"
    tls: {{ certificates: [ {{ cert: {}, key: {} }} ] }}
apis:
  - name: chat
    type: websocket
    routes:
      - route: $default
        integration: {{ type: mock, body: '{{\"over\":\"tls\"}}' }}
        route_response: true
    stages: [ {{ name: prod }} ]
",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&yaml);
    let url = format!("wss://127.0.0.1:{}/prod", gw.addr.port());
    let out = chat_env(&url, &["a", "b"], &[], &[("WS_CA", ca.to_str().unwrap())]);
    for o in &out {
        assert_eq!(o["got"], r#"{"over":"tls"}"#, "{o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn access_log_lines_per_event_and_throttled_messages() {
    let be = Upstream::start(|_| Reply::ok(""));
    let log = std::env::temp_dir().join(format!("shardgate-wsapi-log-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let gw = Gateway::start(&chat_api(
        &be.url(),
        "",
        &format!(
            "        access_log: {{ path: {}, format: json }}\n        throttle: {{ rate: 1, burst: 2 }}\n",
            log.display()
        ),
    ));
    let (mut s, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 101);
    let mut answers = Vec::new();
    for _ in 0..4 {
        s.write_all(&frame(true, 1, br#"{"action":"nope"}"#, false))
            .unwrap();
        answers.push(read_frame(&mut s).unwrap().1);
    }
    // The first within the burst (its tokens are leased per worker), then AWS's
    // throttled answer within the second.
    assert_eq!(answers[0], br#"{"error":"unknown action"}"#);
    let throttled: Vec<Value> = answers
        .iter()
        .filter_map(|a| serde_json::from_slice::<Value>(a).ok())
        .filter(|v| v["message"] == "Too Many Requests")
        .collect();
    assert!(!throttled.is_empty(), "{answers:?}");
    assert!(throttled[0]["connectionId"].is_string());
    s.write_all(&frame(true, 8, &1000u16.to_be_bytes(), false))
        .unwrap();
    assert_eq!(close_code(&mut s), 1000);
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(wait_until(Duration::from_secs(5), || lines()
        .iter()
        .any(|l| l["eventType"] == "DISCONNECT")));
    let l = lines();
    let kinds: Vec<&str> = l.iter().filter_map(|v| v["eventType"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "CONNECT",
            "MESSAGE",
            "MESSAGE",
            "MESSAGE",
            "MESSAGE",
            "DISCONNECT"
        ],
        "{l:?}"
    );
    let id = &l[0]["connectionId"];
    assert!(l.iter().all(|v| &v["connectionId"] == id), "{l:?}");
    assert_eq!(l[1]["routeKey"], "$default");
    let statuses: Vec<u64> = l.iter().filter_map(|v| v["status"].as_u64()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        throttled.len(),
        "{statuses:?}"
    );
    assert!(l[1]["messageId"].is_string());
    assert_eq!(l[5]["routeKey"], "$disconnect");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn api_keys_and_usage_plans_meter_messages() {
    let yaml = config(
        "apis:
  - name: chat
    type: websocket
    routes:
      - { route: $connect, integration: { type: mock, status: 200 } }
      - { route: free, route_response: true, integration: { type: mock, body: free-ok } }
      - { route: paid, route_response: true, api_key_required: true, integration: { type: mock, body: paid-ok } }
    stages: [ { name: prod } ]
usage_plans:
  - { name: metered, stages: [chat/prod], quota: { limit: 3, period: day } }
api_keys:
  - { name: alice, value: alicekey0123456789abcdef, plans: [metered] }
",
    );
    let gw = Gateway::start(&yaml);
    let say = |s: &mut TcpStream, action: &str| -> String {
        let m = format!(r#"{{"action":"{action}"}}"#);
        s.write_all(&frame(true, 1, m.as_bytes(), false)).unwrap();
        let (op, p) = read_frame(s).expect("an answer");
        assert_eq!(op, 1);
        String::from_utf8(p).unwrap()
    };
    // Without a key: the free route answers, the paid one refuses (AWS's message).
    let (mut anon, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 101);
    assert_eq!(say(&mut anon, "free"), "free-ok");
    let refused: Value = serde_json::from_str(&say(&mut anon, "paid")).unwrap();
    assert_eq!(refused["message"], "Forbidden");
    // With a key: the paid route counts against the plan's quota (3 a day);
    // the free route does not.
    let (mut alice, status) =
        handshake_with(gw.addr, "/prod", "x-api-key: alicekey0123456789abcdef\r\n");
    assert_eq!(status, 101);
    for _ in 0..3 {
        assert_eq!(say(&mut alice, "paid"), "paid-ok");
        assert_eq!(say(&mut alice, "free"), "free-ok");
    }
    let over: Value = serde_json::from_str(&say(&mut alice, "paid")).unwrap();
    assert_eq!(over["message"], "Limit Exceeded", "{over}");
    assert!(over["connectionId"].is_string() && over["requestId"].is_string());
    assert_eq!(say(&mut alice, "free"), "free-ok");
    // A wrong key opens the connection ($connect takes none) but pays for nothing.
    let (mut mallory, status) = handshake_with(gw.addr, "/prod", "x-api-key: not-a-key\r\n");
    assert_eq!(status, 101);
    let refused: Value = serde_json::from_str(&say(&mut mallory, "paid")).unwrap();
    assert_eq!(refused["message"], "Forbidden");
}

/// An idle connection sleeps with no task after a second (`proxy::dormant`):
/// everything that may reach it then wakes it: a message, `@connections` POST,
/// GET and DELETE, the client's close frame, and the idle limit.
#[test]
fn idle_connections_sleep_and_wake_for_all_that_reaches_them() {
    for runtime in ["epoll", "io_uring"] {
        sleep_and_wake(runtime);
    }
}

fn sleep_and_wake(runtime: &str) {
    let be = Upstream::start(|_| Reply::ok(""));
    let api = common::ws::connections_api(&be.url())
        .replace(
            "    routes:\n",
            "    route_selection_expression: \"$request.body.action\"
    routes:
      - route: ping
        integration: { type: mock, body: '{\"pong\":true}' }
        route_response: true
",
        )
        .replace(
            "    stages: [ { name: prod } ]",
            "    stages: [ { name: prod, limits: { idle_timeout_s: 4 } } ]",
        );
    let gw = Gateway::start_with(&config(&format!("apis:\n{api}")), &["--runtime", runtime]);
    let open = |who: &str| {
        let (s, status) = handshake_with(gw.addr, "/prod", &format!("x-client: {who}\r\n"));
        assert_eq!(status, 101);
        s
    };
    let (mut a, mut b, mut c, mut d) = (open("a"), open("b"), open("c"), open("d"));
    let id_of = |who: &str| connection_id(&be, who);
    let (idb, idc) = (id_of("b"), id_of("c"));
    let endpoint = format!("http://{}/prod", gw.addr);
    let secret = "conn-secret-0123456789";
    let disconnects = || events(&be, "/disconnect").len();
    // Asleep now (a second idle, and the deadline sweep's tenth of one).
    std::thread::sleep(Duration::from_millis(1600));
    a.write_all(&frame(true, 1, br#"{"action":"ping"}"#, false))
        .unwrap();
    assert_eq!(read_frame(&mut a), Some((1, br#"{"pong":true}"#.to_vec())));
    let r = manage(&endpoint, secret, &["post", &idb, "hello"]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(read_frame(&mut b), Some((1, b"hello".to_vec())));
    let r = manage(&endpoint, secret, &["get", &idc]);
    assert_eq!(r["status"], 200, "{r}");
    assert!(r["body"]["connectedAt"].is_string(), "{r}");
    let r = manage(&endpoint, secret, &["delete", &idc]);
    assert_eq!(r["status"], 204, "{r}");
    assert_eq!(close_code(&mut c), 1000);
    d.write_all(&frame(true, 8, &1000u16.to_be_bytes(), false))
        .unwrap();
    assert_eq!(close_code(&mut d), 1000);
    assert!(wait_until(Duration::from_secs(5), || disconnects() == 2));
    // The idle limit (4 s since their last message) ends a and b asleep again.
    assert_eq!(close_code(&mut a), 1001);
    assert_eq!(close_code(&mut b), 1001);
    assert!(wait_until(Duration::from_secs(5), || disconnects() == 4));
    let codes: Vec<u64> = events(&be, "/disconnect")
        .iter()
        .filter_map(|e| e["requestContext"]["disconnectStatusCode"].as_u64())
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 1001).count(), 2, "{codes:?}");
    let r = manage(&endpoint, secret, &["post", &idb, "x"]);
    assert_eq!(r["status"], 410, "{r}");
}
