//! Gateway responses over real sockets: each of AWS's response types the
//! gateway answers with, replaced by an API's `gateway_responses` (status,
//! headers, a body template with `$context` values), the DEFAULT types as the
//! fallback of a class, and the built-in answers where an API has none.

mod common;
use common::*;

use std::net::TcpListener;
use std::time::Duration;

const KEY: &str = "shopkey0123456789abcdefXY";
const AKID: &str = "AKIDSHOPEXAMPLE12345";

/// Every type this test makes the gateway answer, with the status it answers
/// (THROTTLED's replaced by 503).
const TYPES: [(&str, u16); 15] = [
    ("RESOURCE_NOT_FOUND", 404),
    ("THROTTLED", 503),
    ("INVALID_API_KEY", 403),
    ("QUOTA_EXCEEDED", 429),
    ("UNAUTHORIZED", 401),
    ("AUTHORIZER_FAILURE", 500),
    ("MISSING_AUTHENTICATION_TOKEN", 403),
    ("INVALID_SIGNATURE", 403),
    ("EXPIRED_TOKEN", 403),
    ("ACCESS_DENIED", 403),
    ("INTEGRATION_TIMEOUT", 504),
    ("INTEGRATION_FAILURE", 503),
    ("BAD_REQUEST_PARAMETERS", 400),
    ("BAD_REQUEST_BODY", 400),
    ("REQUEST_TOO_LARGE", 413),
];

fn responses_yaml() -> String {
    let mut y = String::from("    gateway_responses:\n");
    for (t, _) in TYPES {
        let status = if t == "THROTTLED" {
            "status: 503, "
        } else {
            ""
        };
        let body = if t == "RESOURCE_NOT_FOUND" {
            r#"'{"type":"$context.error.responseType","msg":$context.error.messageString,"id":"$context.requestId","stage":"$context.stage","team":"$stageVariables.team","method":"$context.httpMethod","path":"$context.path","ip":"$context.identity.sourceIp"}'"#
        } else if t == "BAD_REQUEST_BODY" {
            r#"'{"type":"$context.error.responseType","msg":"$context.error.message","id":"$context.requestId","why":"$context.error.validationErrorString"}'"#
        } else {
            r#"'{"type":"$context.error.responseType","msg":$context.error.messageString,"id":"$context.requestId"}'"#
        };
        y.push_str(&format!(
            "      {t}: {{ {status}headers: {{ x-gateway-response: {t}, x-request: $context.requestId }}, body: {body} }}\n"
        ));
    }
    y
}

/// Checks one answer: the status, the type's header, and the body template
/// filled in with the built-in message and this request's id.
fn check(r: &Response, kind: &str, status: u16, message: &str) -> serde_json::Value {
    assert_eq!(r.status, status, "{kind}: {} {}", r.status, r.text());
    assert_eq!(
        r.header("x-gateway-response"),
        Some(kind),
        "{kind}: {:?}",
        r.headers
    );
    let id = r.header("apigw-requestid").expect("request id");
    assert_eq!(r.header("x-request"), Some(id), "{kind}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{kind}");
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{kind}: {e}: {}", r.text()));
    assert_eq!(v["type"], kind, "{kind}: {v}");
    assert_eq!(v["id"], id, "{kind}: {v}");
    assert!(
        v["msg"].as_str().is_some_and(|m| m.starts_with(message)),
        "{kind}: {v} (message {message:?})"
    );
    v
}

fn amz_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn signed(date: &str) -> [(String, String); 2] {
    [
        (
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={AKID}/{}/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
                &date[..8],
                "0".repeat(64)
            ),
        ),
        ("x-amz-date".into(), date.to_owned()),
    ]
}

#[test]
fn each_response_type_is_replaced_and_defaults_catch_the_rest() {
    // A backend that never answers (timeouts) and an address nothing listens on.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for s in silent.incoming().take(4) {
            conns.push(s);
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    drop(held);
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = config(&format!(
        "    limits: {{ max_body_bytes: 1000 }}
apis:
  - name: shop
    authorizers:
      - {{ name: partners, type: request, uri: \"http://{closed}/authorize\", identity_sources: [header.authorization] }}
      - name: machines
        type: sigv4
        region: us-east-1
        access_keys: [ {{ id: {AKID}, secret: {{ env: SHOP_SECRET }} }} ]
    routes:
      - {{ route: GET /t, integration: {{ type: mock, body: ok }} }}
      - {{ route: POST /paid, api_key_required: true, integration: {{ type: mock, body: paid }} }}
      - {{ route: GET /partner, authorizer: partners, integration: {{ type: mock, body: ok }} }}
      - {{ route: GET /signed, authorizer: machines, integration: {{ type: mock, body: ok }} }}
      - {{ route: GET /slow, integration: {{ type: http_proxy, uri: \"http://{silent_addr}/\", timeout_ms: 300 }} }}
      - {{ route: GET /broken, integration: {{ type: http_proxy, uri: \"http://{closed}/\" }} }}
      - route: POST /pets
        validate:
          required: [query.owner]
          body_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }} }}
        integration: {{ type: mock, body: ok }}
{responses}    stages:
      - name: prod
        variables: {{ team: orders }}
        routes: {{ \"GET /t\": {{ throttle: {{ rate: 0.01, burst: 1 }} }} }}
  - name: walled
    resource_policy: {{ deny_cidrs: [127.0.0.0/8] }}
    routes: [ {{ route: GET /x, integration: {{ type: mock, body: ok }} }} ]
    gateway_responses:
      ACCESS_DENIED: {{ headers: {{ x-gateway-response: ACCESS_DENIED, x-request: $context.requestId }}, body: '{{\"type\":\"$context.error.responseType\",\"msg\":$context.error.messageString,\"id\":\"$context.requestId\"}}' }}
    stages: [ {{ name: walled }} ]
  - name: plain
    routes:
      - {{ route: GET /broken, integration: {{ type: http_proxy, uri: \"http://{closed}/\" }} }}
      - {{ route: POST /paid, api_key_required: true, integration: {{ type: mock, body: paid }} }}
    gateway_responses:
      DEFAULT_4XX: {{ status: 400, headers: {{ content-type: text/plain, x-class: 4xx }}, body: 'client error: $context.error.message ($context.error.responseType)' }}
      DEFAULT_5XX: {{ headers: {{ x-class: 5xx }}, body: 'server error ($context.error.responseType)' }}
    stages: [ {{ name: fallback }} ]
  - name: builtin
    routes: [ {{ route: GET /broken, integration: {{ type: http_proxy, uri: \"http://{closed}/\" }} }} ]
    stages: [ {{ name: builtin }} ]
usage_plans:
  - {{ name: tiny, stages: [shop/prod], quota: {{ limit: 1, period: day }} }}
api_keys:
  - {{ name: shopper, value: {KEY}, plans: [tiny] }}
",
        responses = responses_yaml()
    ));
    let gw = Gateway::start_env(&yaml, &[], &[("SHOP_SECRET", "shop/secret+key")]);
    let status_of = |t: &str| TYPES.iter().find(|(n, _)| *n == t).unwrap().1;
    // A connection per request: some refusals close theirs.
    let req = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        Client::connect(gw.addr).request(method, path, "gw.test", headers, body)
    };

    let v = check(
        &req("GET", "/prod/nope", &[], b""),
        "RESOURCE_NOT_FOUND",
        404,
        "Not Found",
    );
    assert_eq!(v["stage"], "prod");
    assert_eq!(v["team"], "orders");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/prod/nope");
    assert_eq!(v["ip"], "127.0.0.1");

    assert_eq!(req("GET", "/prod/t", &[], b"").status, 200);
    check(
        &req("GET", "/prod/t", &[], b""),
        "THROTTLED",
        status_of("THROTTLED"),
        "Too Many Requests",
    );

    check(
        &req("POST", "/prod/paid", &[], b""),
        "INVALID_API_KEY",
        403,
        "Forbidden",
    );
    assert_eq!(
        req("POST", "/prod/paid", &[("x-api-key", KEY)], b"").status,
        200
    );
    check(
        &req("POST", "/prod/paid", &[("x-api-key", KEY)], b""),
        "QUOTA_EXCEEDED",
        429,
        "Limit Exceeded",
    );

    check(
        &req("GET", "/prod/partner", &[], b""),
        "UNAUTHORIZED",
        401,
        "Unauthorized",
    );
    check(
        &req("GET", "/prod/partner", &[("authorization", "token")], b""),
        "AUTHORIZER_FAILURE",
        500,
        "Internal Server Error",
    );

    check(
        &req("GET", "/prod/signed", &[], b""),
        "MISSING_AUTHENTICATION_TOKEN",
        403,
        "Missing Authentication Token",
    );
    let fresh = signed(&amz_now());
    let fresh: Vec<(&str, &str)> = fresh
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    check(
        &req("GET", "/prod/signed", &fresh, b""),
        "INVALID_SIGNATURE",
        403,
        "The request signature we calculated does not match",
    );
    let old = signed("20200101T000000Z");
    let old: Vec<(&str, &str)> = old.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    check(
        &req("GET", "/prod/signed", &old, b""),
        "EXPIRED_TOKEN",
        403,
        "Signature expired",
    );

    check(
        &req("GET", "/prod/slow", &[], b""),
        "INTEGRATION_TIMEOUT",
        504,
        "Endpoint request timed out",
    );
    check(
        &req("GET", "/prod/broken", &[], b""),
        "INTEGRATION_FAILURE",
        503,
        "Service Unavailable",
    );

    check(
        &req("POST", "/prod/pets", &[], b"{\"name\":\"rex\"}"),
        "BAD_REQUEST_PARAMETERS",
        400,
        "Missing required request parameters: [owner]",
    );
    let v = check(
        &req("POST", "/prod/pets?owner=ann", &[], b"{\"name\":7}"),
        "BAD_REQUEST_BODY",
        400,
        "Invalid request body",
    );
    assert!(
        v["why"].as_str().is_some_and(|w| !w.is_empty()),
        "validationErrorString: {v}"
    );
    assert_eq!(
        req("POST", "/prod/pets?owner=ann", &[], b"{\"name\":\"rex\"}").status,
        200
    );

    // The connection closes after a 413 (the body is not read).
    check(
        &req("POST", "/prod/pets?owner=ann", &[], &[b'x'; 2000]),
        "REQUEST_TOO_LARGE",
        413,
        "Request Too Long",
    );

    let r = get(gw.addr, "/walled/x");
    check(&r, "ACCESS_DENIED", 403, "Forbidden");

    // An API with only DEFAULT responses: every 4xx and 5xx falls back to them.
    let mut c = Client::connect(gw.addr);
    let r = c.get("/fallback/nope");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("x-class"), Some("4xx"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.text(), "client error: Not Found (RESOURCE_NOT_FOUND)");
    let r = c.request("POST", "/fallback/paid", "gw.test", &[], b"");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "client error: Forbidden (INVALID_API_KEY)");
    let r = c.get("/fallback/broken");
    assert_eq!(
        r.status, 503,
        "the class's DEFAULT keeps the status it has no status of its own"
    );
    assert_eq!(r.header("x-class"), Some("5xx"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "server error (INTEGRATION_FAILURE)");

    // Without gateway responses, and on no stage at all: the built-in answers.
    let r = c.get("/builtin/broken");
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, r#"{"message":"Service Unavailable"}"#)
    );
    let r = c.get("/nowhere/x");
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, r#"{"message":"Not Found"}"#)
    );
    assert!(r.header("x-class").is_none());
}
