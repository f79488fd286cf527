//! Functions and AWS integrations over real sockets with real runtimes: a Python
//! handler run by AWS's own runtime client (`awslambdaric`) that the gateway
//! starts, through payload formats 1.0 and 2.0 (every field of the event, bare
//! returns, base64 bodies, cookies, errors, timeouts, crashes, a full queue); a
//! runtime started outside the gateway; a Node handler through `aws-lambda-ric`
//! where it is installed; the Lambda Invoke API with signatures checked by
//! botocore; each `aws` subtype against moto's server; parameter mapping both
//! ways.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, wait_until, Client, Gateway, Proc, Reply, Upstream};
use serde_json::Value;

const SUPPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support");

/// A child process killed on drop.
/// A free loopback port (bound, then released for the gateway to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json(r: &common::Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.text()))
}

fn functions_config(port: u16, extra_fn: &str, routes: &str) -> String {
    config(&format!(
        "functions:
  - name: hello
    runtime_api: 127.0.0.1:{port}
    command: [python3, -m, awslambdaric, app.handler]
    working_dir: {SUPPORT}/functions
    concurrency: 2
    timeout_ms: 1500
    environment: {{ GREETING: hi }}
{extra_fn}apis:
  - name: serverless
    routes:
      - route: \"ANY /v2/{{p+}}\"
        integration: {{ type: lambda, function: hello, payload_format_version: \"2.0\" }}
      - route: \"ANY /v1/{{p+}}\"
        integration: {{ type: lambda, function: hello, payload_format_version: \"1.0\" }}
{routes}    stages:
      - {{ name: prod, variables: {{ table: pets }} }}
"
    ))
}

/// Waits until the function's runtimes poll (a first request answered).
fn warm(c: &mut Client) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            c.request("GET", "/prod/v2/text", "gw.test", &[], b"")
                .status
                == 200
        }),
        "the runtimes never answered"
    );
}

#[test]
fn python_handler_through_payload_2_0() {
    let port = free_port();
    let gw = Gateway::start(&functions_config(port, "", ""));
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    let r = c.request(
        "POST",
        "/prod/v2/items/echo?a=1&a=2&b=x",
        "api.example.com",
        &[
            ("content-type", "application/json"),
            ("cookie", "c1=v1; c2=v2"),
            ("x-dup", "one"),
            ("x-dup", "two"),
            ("user-agent", "tests/1.0"),
        ],
        br#"{"pet":"cat"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-handler"), Some("python"));
    let out = json(&r);
    let e = &out["event"];
    let id = r.header("apigw-requestid").unwrap();
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /v2/{p+}");
    assert_eq!(e["rawPath"], "/prod/v2/items/echo");
    assert_eq!(e["rawQueryString"], "a=1&a=2&b=x");
    assert_eq!(e["cookies"], serde_json::json!(["c1=v1", "c2=v2"]));
    assert_eq!(e["headers"]["x-dup"], "one,two");
    assert_eq!(e["headers"]["content-type"], "application/json");
    assert!(e["headers"].get("cookie").is_none(), "{e}");
    assert_eq!(e["queryStringParameters"]["a"], "1,2");
    assert_eq!(e["queryStringParameters"]["b"], "x");
    assert_eq!(e["pathParameters"]["p"], "items/echo");
    assert_eq!(e["stageVariables"]["table"], "pets");
    assert_eq!(e["body"], r#"{"pet":"cat"}"#);
    assert_eq!(e["isBase64Encoded"], false);
    let rc = &e["requestContext"];
    assert_eq!(rc["accountId"], "000000000000");
    assert_eq!(rc["apiId"], "serverless");
    assert_eq!(rc["domainName"], "api.example.com");
    assert_eq!(rc["domainPrefix"], "api");
    assert_eq!(rc["requestId"], id);
    assert_eq!(rc["routeKey"], "ANY /v2/{p+}");
    assert_eq!(rc["stage"], "prod");
    assert!(rc["time"].as_str().unwrap().ends_with(" +0000"), "{rc}");
    assert!(rc["timeEpoch"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(rc["http"]["method"], "POST");
    assert_eq!(rc["http"]["path"], "/prod/v2/items/echo");
    assert_eq!(rc["http"]["protocol"], "HTTP/1.1");
    assert_eq!(rc["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(rc["http"]["userAgent"], "tests/1.0");
    // The runtime client's context came from the Lambda-Runtime-* headers.
    assert_eq!(out["request_id"], id);
    assert_eq!(out["function_name"], "hello");
    assert_eq!(
        out["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    let remaining = out["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 1500, "{remaining}");
    assert_eq!(out["memory"], "128");
    assert_eq!(out["env"], "hi");
    // A binary body is base64 (missing or non-text content types).
    let r = c.request(
        "PUT",
        "/prod/v2/echo",
        "gw.test",
        &[("content-type", "application/octet-stream")],
        &[0, 159, 146, 150],
    );
    let e = &json(&r)["event"];
    assert_eq!(e["isBase64Encoded"], true);
    assert_eq!(e["body"], "AJ+Slg==");
    // No query, no cookies, no body: those keys are absent.
    let r = c.request("GET", "/prod/v2/echo", "gw.test", &[], b"");
    let e = &json(&r)["event"];
    for absent in ["cookies", "queryStringParameters", "body"] {
        assert!(e.get(absent).is_none(), "{absent}: {e}");
    }
}

#[test]
fn python_handler_through_payload_1_0() {
    let port = free_port();
    let gw = Gateway::start(&functions_config(port, "", ""));
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    let r = c.request(
        "POST",
        "/prod/v1/a/echo?q=1&q=2",
        "gw.test",
        &[
            ("X-Dup", "one"),
            ("X-Dup", "two"),
            ("content-type", "text/plain"),
        ],
        b"plain",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let e = &json(&r)["event"];
    assert_eq!(e["version"], "1.0");
    assert_eq!(e["resource"], "/v1/{p+}");
    assert_eq!(e["path"], "/v1/a/echo");
    assert_eq!(e["httpMethod"], "POST");
    assert_eq!(e["headers"]["X-Dup"], "two");
    assert_eq!(
        e["multiValueHeaders"]["X-Dup"],
        serde_json::json!(["one", "two"])
    );
    assert_eq!(e["queryStringParameters"]["q"], "2");
    assert_eq!(
        e["multiValueQueryStringParameters"]["q"],
        serde_json::json!(["1", "2"])
    );
    assert_eq!(e["pathParameters"]["p"], "a/echo");
    assert_eq!(e["stageVariables"]["table"], "pets");
    assert_eq!(e["body"], "plain");
    assert_eq!(e["isBase64Encoded"], false);
    let rc = &e["requestContext"];
    assert_eq!(rc["path"], "/prod/v1/a/echo");
    assert_eq!(rc["stage"], "prod");
    assert_eq!(rc["requestId"], r.header("apigw-requestid").unwrap());
    assert_eq!(rc["httpMethod"], "POST");
    assert_eq!(rc["resourcePath"], "/v1/{p+}");
    assert_eq!(rc["identity"]["sourceIp"], "127.0.0.1");
    assert_eq!(
        rc["authorizer"],
        serde_json::json!({"claims": null, "scopes": null})
    );
    // 1.0 with no query or body: nulls, as AWS sends them.
    let r = c.request("GET", "/prod/v1/echo", "gw.test", &[], b"");
    let e = &json(&r)["event"];
    assert_eq!(e["queryStringParameters"], Value::Null);
    assert_eq!(e["body"], Value::Null);
    // 1.0 responses: multiValueHeaders, base64; a 2.0-style bare value is malformed.
    let r = c.request("GET", "/prod/v1/binary", "gw.test", &[], b"");
    assert_eq!(r.status, 201);
    let multi: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["a", "b"]);
    assert_eq!(r.body, (0..=255u8).collect::<Vec<_>>());
    let r = c.request("GET", "/prod/v1/bare", "gw.test", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, r#"{"message":"Internal Server Error"}"#)
    );
}

#[test]
fn responses_errors_timeouts_and_crashes() {
    let port = free_port();
    let gw = Gateway::start(&functions_config(port, "", ""));
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    // The 2.0 inference for a bare return value.
    let r = c.request("GET", "/prod/v2/text", "gw.test", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "Hello from Lambda!"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = c.request("GET", "/prod/v2/bare", "gw.test", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(json(&r), serde_json::json!({"hello": "world"}));
    // Base64 bodies and cookies.
    let r = c.request("GET", "/prod/v2/binary", "gw.test", &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(r.body, (0..=255u8).collect::<Vec<_>>());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    // A raised exception and a malformed response: 502, AWS's body.
    for path in ["/prod/v2/raise", "/prod/v2/malformed"] {
        let r = c.request("GET", path, "gw.test", &[], b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (502, r#"{"message":"Internal Server Error"}"#),
            "{path}"
        );
    }
    assert!(wait_until(Duration::from_secs(2), || gw
        .log()
        .contains("ValueError")));
    // A timeout: 504 within the function's 1.5 s, its runtime restarted.
    let t = Instant::now();
    let r = c.request("GET", "/prod/v2/sleep?s=10", "gw.test", &[], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), r#"{"message":"Endpoint request timed out"}"#);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("function timed out; restarting its runtime")));
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .log()
            .contains("status=signal: 9")),
        "{}",
        gw.log()
    );
    // Both runtimes serve again.
    warm(&mut c);
    // A crash: the invocation is answered at once, the runtime restarted, and the
    // next requests are served.
    let t = Instant::now();
    let r = c.request("GET", "/prod/v2/crash", "gw.test", &[], b"");
    assert_eq!(r.status, 502);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("status=exit status: 3")));
    for _ in 0..5 {
        warm(&mut c);
    }
}

#[test]
fn a_full_queue_is_throttled_and_an_outside_runtime_is_used() {
    // No command: the runtime is started here, as a container's would be.
    let port = free_port();
    let yaml = config(&format!(
        "admin: {{ bind: \"127.0.0.1:0\", token: an-admin-token-for-tests }}
functions:
  - {{ name: outside, runtime_api: 127.0.0.1:{port}, timeout_ms: 5000, queue: 1 }}
apis:
  - name: serverless
    routes:
      - route: \"GET /{{p+}}\"
        integration: {{ type: lambda, function: outside }}
    stages: [ {{ name: $default }} ]
"
    ));
    let gw = Gateway::start(&yaml);
    let _rt = Proc(
        Command::new("python3")
            .args(["-m", "awslambdaric", "app.handler"])
            .current_dir(format!("{SUPPORT}/functions"))
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m awslambdaric"),
    );
    let mut c = Client::connect(gw.addr);
    assert!(wait_until(Duration::from_secs(20), || {
        c.get("/text").status == 200
    }));
    // One runtime busy for a second, one invocation queued: the rest are 429.
    let addr = gw.addr;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 200 }));
                Client::connect(addr).get("/sleep?s=1")
            })
        })
        .collect();
    let answers: Vec<common::Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let throttled: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert!(
        ok >= 2,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        !throttled.is_empty(),
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(throttled[0].text(), r#"{"message":"Too Many Requests"}"#);
    let metrics = common::get(gw.admin.expect("admin listener"), "/metrics").text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("shardgate_function_throttles_total{function=\"outside\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(n, throttled.len(), "{line}");
}

#[test]
fn node_handler_through_aws_lambda_ric() {
    let ric = format!("{SUPPORT}/node/node_modules/.bin/aws-lambda-ric");
    if !std::path::Path::new(&ric).exists() {
        // tests/deps.sh installs it where npm and a C++ toolchain are present.
        eprintln!("skipped: {ric} is not installed (tests/deps.sh: npm ci in tests/support/node)");
        return;
    }
    let port = free_port();
    let yaml = config(&format!(
        "functions:
  - name: node
    runtime_api: 127.0.0.1:{port}
    command: [{ric}, index.handler]
    working_dir: {SUPPORT}/node
apis:
  - name: serverless
    routes:
      - route: \"ANY /{{p+}}\"
        integration: {{ type: lambda, function: node }}
    stages: [ {{ name: $default }} ]
"
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    assert!(
        wait_until(Duration::from_secs(30), || c.get("/hi?x=1").status == 200),
        "{}",
        gw.log()
    );
    let r = c.request(
        "POST",
        "/hi?x=1",
        "gw.test",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 200);
    let v = json(&r);
    assert_eq!(v["runtime"], "node");
    assert_eq!(v["rawPath"], "/hi");
    assert_eq!(v["requestId"], r.header("apigw-requestid").unwrap());
}

#[test]
fn the_invoke_api_is_signed_for_botocore() {
    let (_srv, port) = common::lambda_invoke_server();
    let arn = "arn:aws:lambda:eu-west-1:123456789012:function:orders";
    let yaml = config(&format!(
        "apis:
  - name: remote
    routes:
      - route: \"POST /{{p+}}\"
        integration:
          type: lambda
          function_arn: \"{arn}\"
          endpoint: http://127.0.0.1:{port}
          credentials: {{ access_key_id: {{ env: T_KEY_ID }}, secret_access_key: {{ env: T_SECRET }} }}
      - route: \"POST /wrong/{{p+}}\"
        integration:
          type: lambda
          function_arn: \"{arn}\"
          endpoint: http://127.0.0.1:{port}
          credentials: {{ access_key_id: AKIDTEST, secret_access_key: not-the-secret }}
    stages: [ {{ name: $default }} ]
"
    ));
    let gw = Gateway::start_env(
        &yaml,
        &[],
        &[("T_KEY_ID", "AKIDTEST"), ("T_SECRET", "secret/key+1")],
    );
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "POST",
        "/orders/1",
        "gw.test",
        &[("content-type", "application/json")],
        br#"{"n":1}"#,
    );
    assert_eq!(r.status, 200, "{} {}", r.text(), gw.log());
    assert_eq!(
        json(&r),
        serde_json::json!({"rawPath": "/orders/1", "signed": true, "connection_requests": 1})
    );
    assert_eq!(
        r.header("x-invoked"),
        Some(format!("/2015-03-31/functions/{arn}/invocations").as_str())
    );
    // The worker keeps its connection to the Invoke API for the next call.
    let r = c.request("POST", "/orders/2", "gw.test", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["connection_requests"], 2, "{}", r.text());
    // A function error (X-Amz-Function-Error): 502.
    let r = c.request("POST", "/orders/error", "gw.test", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (502, r#"{"message":"Internal Server Error"}"#)
    );
    // A signature Lambda refuses: 500, as AWS's invoke errors.
    let r = c.request("POST", "/wrong/x", "gw.test", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, r#"{"message":"Internal Server Error"}"#)
    );
    assert!(wait_until(Duration::from_secs(2), || gw
        .log()
        .contains("the Lambda Invoke API refused")));
}

#[test]
fn a_websocket_route_invokes_a_function_in_aws() {
    use common::ws::{frame, handshake, read_frame};
    let (_srv, port) = common::lambda_invoke_server();
    let arn = "arn:aws:lambda:eu-west-1:123456789012:function:live";
    let yaml = config(&format!(
        "apis:
  - name: live
    type: websocket
    routes:
      - route: $connect
        integration: {{ type: lambda, function_arn: \"{arn}\", endpoint: \"http://127.0.0.1:{port}\", credentials: {{ access_key_id: AKIDTEST, secret_access_key: secret/key+1 }} }}
      - route: $default
        route_response: true
        integration: {{ type: lambda, function_arn: \"{arn}\", endpoint: \"http://127.0.0.1:{port}\", credentials: {{ access_key_id: AKIDTEST, secret_access_key: secret/key+1 }} }}
    stages: [ {{ name: prod }} ]
"
    ));
    let gw = Gateway::start(&yaml);
    let (mut s, status) = handshake(gw.addr, "/prod");
    assert_eq!(status, 101, "{}", gw.log());
    s.write_all(&frame(true, 1, b"hello aws", false)).unwrap();
    let (op, answer) = read_frame(&mut s).expect("the route response");
    assert_eq!(op, 1);
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"eventType": "MESSAGE", "routeKey": "$default", "body": "hello aws", "signed": true})
    );
}

/// moto's server on a free port, killed on drop.
fn moto() -> (Proc, String) {
    let port = free_port();
    let p = Proc(
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (tests/requirements.txt)"),
    );
    let url = format!("http://127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    (p, url)
}

fn aws_cli(endpoint: &str, args: &[&str]) -> Value {
    common::json_output(
        Command::new("python3")
            .arg(format!("{SUPPORT}/aws_setup.py"))
            .arg(endpoint)
            .args(args),
    )
}

#[test]
fn aws_service_integrations_against_moto() {
    let (_moto, endpoint) = moto();
    let made = aws_cli(&endpoint, &["setup"]);
    let queue = made["queue"].as_str().unwrap().to_owned();
    let machine = made["machine"].as_str().unwrap().to_owned();
    let common = format!(
        "region: us-east-1\n          endpoint: {endpoint}\n          credentials: {{ access_key_id: test, secret_access_key: test }}"
    );
    let yaml = config(&format!(
        "apis:
  - name: services
    routes:
      - route: POST /orders
        integration:
          type: aws
          subtype: SQS-SendMessage
          {common}
          parameters: {{ QueueUrl: \"${{stage_variables.queue}}\", MessageBody: $request.body, DelaySeconds: \"0\" }}
      - route: GET /orders
        integration:
          type: aws
          subtype: SQS-ReceiveMessage
          {common}
          parameters: {{ QueueUrl: \"${{stage_variables.queue}}\", MaxNumberOfMessages: $request.querystring.max }}
      - route: DELETE /orders
        integration:
          type: aws
          subtype: SQS-DeleteMessage
          {common}
          parameters: {{ QueueUrl: \"${{stage_variables.queue}}\", ReceiptHandle: $request.header.x-receipt }}
      - route: POST /nowhere
        integration:
          type: aws
          subtype: SQS-SendMessage
          {common}
          parameters: {{ QueueUrl: \"{endpoint}/123456789012/missing\", MessageBody: $request.body }}
      - route: POST /events
        integration:
          type: aws
          subtype: EventBridge-PutEvents
          {common}
          parameters: {{ Source: shop, DetailType: $request.body.kind, Detail: $request.body.detail }}
      - route: POST /clicks/{{user}}
        integration:
          type: aws
          subtype: Kinesis-PutRecord
          {common}
          parameters: {{ StreamName: clicks, PartitionKey: $request.path.user, Data: $request.body }}
      - route: POST /flows
        integration:
          type: aws
          subtype: StepFunctions-StartExecution
          {common}
          parameters: {{ StateMachineArn: \"{machine}\", Name: \"run-${{context.requestId}}\", Input: $request.body }}
    stages:
      - {{ name: $default, variables: {{ queue: \"{queue}\" }} }}
"
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    // SQS: send, receive, delete.
    let r = c.request(
        "POST",
        "/orders",
        "gw.test",
        &[("content-type", "text/plain")],
        b"order 42",
    );
    assert_eq!(r.status, 200, "{} {}", r.text(), gw.log());
    assert!(json(&r)["MessageId"].is_string(), "{}", r.text());
    let r = c.request("GET", "/orders?max=5", "gw.test", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let msgs = json(&r)["Messages"].clone();
    assert_eq!(msgs[0]["Body"], "order 42", "{msgs}");
    let receipt = msgs[0]["ReceiptHandle"].as_str().unwrap().to_owned();
    let r = c.request(
        "DELETE",
        "/orders",
        "gw.test",
        &[("x-receipt", &receipt)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The service's own errors, status and JSON message.
    let r = c.request("POST", "/nowhere", "gw.test", &[], b"x");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("QueueDoesNotExist") || r.text().contains("NonExistentQueue"),
        "{}",
        r.text()
    );
    // A missing required parameter: 400 before any call.
    let r = c.request("DELETE", "/orders", "gw.test", &[], b"");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("ReceiptHandle is missing"),
        "{}",
        r.text()
    );
    // EventBridge.
    let r = c.request(
        "POST",
        "/events",
        "gw.test",
        &[("content-type", "application/json")],
        br#"{"kind":"OrderPlaced","detail":{"id":7}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["FailedEntryCount"], 0, "{v}");
    assert!(v["Entries"][0]["EventId"].is_string(), "{v}");
    // Kinesis: the record holds the body as sent.
    let r = c.request("POST", "/clicks/u-9", "gw.test", &[], b"clicked");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(json(&r)["SequenceNumber"].is_string());
    assert_eq!(
        aws_cli(&endpoint, &["records", "clicks"]),
        serde_json::json!([["u-9", "clicked"]])
    );
    // Step Functions: the execution's name and input as mapped.
    let r = c.request(
        "POST",
        "/flows",
        "gw.test",
        &[("content-type", "application/json")],
        br#"{"go":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let arn = json(&r)["executionArn"].as_str().unwrap().to_owned();
    let d = aws_cli(&endpoint, &["execution", &arn]);
    assert_eq!(d["input"], r#"{"go":true}"#);
    assert_eq!(
        d["name"],
        format!("run-{}", r.header("apigw-requestid").unwrap())
    );
}

#[test]
fn parameter_mapping_both_ways() {
    let be = Upstream::start(|s| {
        let mut r = Reply::ok(format!("{} {}", s.method, s.target));
        r.headers.push(("x-upstream".into(), "yes".into()));
        r
    });
    let port = free_port();
    let yaml = functions_config(
        port,
        "",
        &format!(
            "      - route: GET /items/{{id}}
        integration:
          type: http_proxy
          uri: \"{be}/items\"
          request_parameters:
            \"overwrite:querystring.id\": $request.path.id
            \"append:querystring.tag\": static
            \"remove:querystring.drop\": \"''\"
            \"append:header.x-caller\": \"${{request.header.x-user}}-${{stageVariables.table}}\"
            \"remove:header.cookie\": \"''\"
          response_parameters:
            \"200\": {{ \"overwrite:header.x-served-by\": shardgate, \"remove:header.x-upstream\": \"''\", \"append:header.x-from\": $response.header.x-upstream }}
            \"404\": {{ \"overwrite:statuscode\": \"410\" }}
      - route: GET /moved/{{id}}
        integration:
          type: http_proxy
          uri: \"{be}/ignored\"
          request_parameters: {{ \"overwrite:path\": \"/v2/things/${{request.path.id}}\" }}
      - route: GET /fn/{{p+}}
        integration:
          type: lambda
          function: hello
          request_parameters: {{ \"overwrite:header.x-mapped\": $request.querystring.q }}
          response_parameters:
            \"200\": {{ \"overwrite:header.x-request\": $context.requestId }}
            \"404\": {{ \"overwrite:statuscode\": \"418\" }}
",
            be = be.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "GET",
        "/prod/items/7?drop=1&keep=2",
        "gw.test",
        &[("x-user", "ann"), ("cookie", "secret=1")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = be.last();
    // Mappings apply in the order of their keys (AWS leaves the order open).
    assert_eq!(seen.target, "/items?keep=2&tag=static&id=7");
    assert_eq!(seen.header("x-caller"), Some("ann-pets"));
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(r.header("x-served-by"), Some("shardgate"));
    assert_eq!(r.header("x-upstream"), None);
    assert_eq!(r.header("x-from"), Some("yes"));
    let r = c.request("GET", "/prod/moved/9?a=b", "gw.test", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(be.last().target, "/v2/things/9?a=b");
    // A lambda integration: the event carries the mapped header; the response
    // mapping applies per status.
    warm(&mut c);
    let r = c.request("GET", "/prod/fn/echo?q=hello", "gw.test", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["event"]["headers"]["x-mapped"], "hello");
    assert_eq!(r.header("x-request"), r.header("apigw-requestid"));
    let r = c.request("GET", "/prod/fn/unknown", "gw.test", &[], b"");
    assert_eq!(r.status, 418, "{}", r.text());
}

#[test]
fn authorizer_context_reaches_the_event() {
    let authz = Upstream::start(|_| {
        Reply::ok(
            serde_json::json!({"isAuthorized": true, "context": {"user": "u1", "tier": 2}})
                .to_string(),
        )
    });
    let port = free_port();
    let yaml = functions_config(port, "", "").replace(
        "    routes:\n",
        &format!(
            "    authorizers:
      - {{ name: partners, type: request, uri: \"{}/authorize\", identity_sources: [header.authorization] }}
    routes:
      - route: GET /authed/{{p+}}
        authorizer: partners
        integration: {{ type: lambda, function: hello }}
      - route: GET /authed1/{{p+}}
        authorizer: partners
        integration: {{ type: lambda, function: hello, payload_format_version: \"1.0\" }}
",
            authz.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    let r = c.request(
        "GET",
        "/prod/authed/echo",
        "gw.test",
        &[("authorization", "t1")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json(&r)["event"]["requestContext"]["authorizer"],
        serde_json::json!({"lambda": {"user": "u1", "tier": 2}})
    );
    let r = c.request(
        "GET",
        "/prod/authed1/echo",
        "gw.test",
        &[("authorization", "t1")],
        b"",
    );
    let a = &json(&r)["event"]["requestContext"]["authorizer"];
    assert_eq!(
        (&a["user"], &a["tier"]),
        (&serde_json::json!("u1"), &serde_json::json!(2))
    );
}

#[test]
fn reloads_keep_runtimes_and_shutdown_stops_them() {
    let port = free_port();
    let yaml = functions_config(port, "", "");
    let gw = Gateway::start_with(&yaml, &[]);
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    // The gateway's child processes: its runtimes.
    let gw_pid = gw.pid();
    let pids = |_: &mut Client| -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid: i32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                (ppid == gw_pid).then(|| pid.to_string())
            })
            .collect()
    };
    let before = pids(&mut c);
    assert_eq!(before.len(), 2, "{before:?}");
    // A reload that leaves the function alone keeps its processes.
    gw.rewrite(&yaml.replace("table: pets", "table: cats"));
    // SAFETY: signalling the gateway this test started.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("generation=1")));
    let mut c = Client::connect(gw.addr);
    let r = c.request("GET", "/prod/v2/echo", "gw.test", &[], b"");
    assert_eq!(json(&r)["event"]["stageVariables"]["table"], "cats");
    let after = pids(&mut c);
    assert_eq!(after, before);
    // A reload that changes it restarts them (same address).
    gw.rewrite(&yaml.replace("GREETING: hi", "GREETING: hello"));
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("generation=2")));
    let mut c = Client::connect(gw.addr);
    assert!(wait_until(Duration::from_secs(20), || {
        let r = c.request("GET", "/prod/v2/echo", "gw.test", &[], b"");
        r.status == 200 && json(&r)["env"] == "hello"
    }));
    assert!(wait_until(Duration::from_secs(5), || pids(&mut c).len() == 2));
    let changed = pids(&mut c);
    assert!(changed.is_disjoint(&before), "{before:?} → {changed:?}");
    // SIGTERM: the gateway drains, then its runtimes are gone.
    gw.sigterm();
    let mut gw = gw;
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    for pid in &changed {
        assert!(
            wait_until(Duration::from_secs(3), || !std::path::Path::new(&format!(
                "/proc/{pid}"
            ))
            .exists()),
            "runtime {pid} outlived the gateway"
        );
    }
}

#[test]
fn the_example_runs_as_written() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/functions");
    let text = std::fs::read_to_string(format!("{dir}/functions.yaml")).unwrap();
    // The same file on free ports, its handlers found where they are.
    let yaml = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9002", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "    command: [",
            &format!("    working_dir: {dir}\n    command: ["),
        );
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    assert!(wait_until(Duration::from_secs(20), || {
        c.get("/hello?name=ann").status == 200
    }));
    let r = c.get("/hello?name=ann");
    assert_eq!(
        json(&r),
        serde_json::json!({"message": "hello, ann", "table": "pets"})
    );
    assert!(wait_until(Duration::from_secs(20), || c
        .get("/pets/1")
        .status
        == 200));
    let r = c.get("/pets/1");
    assert_eq!(r.header("set-cookie"), Some("seen=1; Path=/"));
    assert_eq!(r.header("x-served-by"), Some("shardgate"));
    assert_eq!(json(&r)["requestId"], r.header("apigw-requestid").unwrap());
    assert_eq!(c.get("/pets/2").status, 404);
}

#[test]
fn jwt_claims_and_scopes_reach_the_event() {
    use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &h,
        &serde_json::json!({"iss": "https://id.test/", "aud": "fn", "sub": "alice",
            "exp": now + 600, "scope": "pets:read openid"}),
        &enc,
    )
    .unwrap();
    let port = free_port();
    let yaml = functions_config(port, "", "").replace(
        "    routes:\n",
        &format!(
            "    authorizers:
      - {{ name: users, type: jwt, issuer: https://id.test/, audience: [fn], jwks: {{ keys: [{}] }} }}
    routes:
      - route: GET /jwt/{{p+}}
        authorizer: users
        integration: {{ type: lambda, function: hello }}
      - route: GET /jwt1/{{p+}}
        authorizer: users
        integration: {{ type: lambda, function: hello, payload_format_version: \"1.0\" }}
",
            serde_json::to_string(&jwk).unwrap()
        ),
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    warm(&mut c);
    let bearer = format!("Bearer {token}");
    let r = c.request(
        "GET",
        "/prod/jwt/echo",
        "gw.test",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let a = &json(&r)["event"]["requestContext"]["authorizer"]["jwt"];
    assert_eq!(a["claims"]["sub"], "alice");
    assert_eq!(a["scopes"], serde_json::json!(["pets:read", "openid"]));
    let r = c.request(
        "GET",
        "/prod/jwt1/echo",
        "gw.test",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(
        json(&r)["event"]["requestContext"]["authorizer"]["claims"]["sub"],
        "alice"
    );
    let r = c.request("GET", "/prod/jwt/echo", "gw.test", &[], b"");
    assert_eq!(r.status, 401);
}
