//! API keys and usage-plan throttles over real sockets: `x-api-key` on routes with
//! `api_key_required`, AWS's 403 for every kind of bad key, and per-key buckets.

// Tests and the control plane may share state under a mutex; the request path may not (clippy.toml).
#![allow(clippy::disallowed_types)]

mod common;
use common::*;

const ALICE: &str = "alice0123456789abcdefXYZ";
const BOB: &str = "bob0123456789abcdefXYZ00";
const CAROL: &str = "carol0123456789abcdefXYZ";
const DAVE: &str = "dave0123456789abcdefXYZ0";

fn gateway() -> Gateway {
    Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'POST /orders', api_key_required: true, integration: {{ type: mock, status: 201, body: ordered }} }}
      - {{ route: 'GET /open', integration: {{ type: mock, status: 200, body: open }} }}
    stages: [ {{ name: prod }}, {{ name: beta }} ]
usage_plans:
  - {{ name: gold, stages: [pets/prod], throttle: {{ rate: 0.01, burst: 2 }} }}
  - {{ name: free, stages: [pets/beta] }}
api_keys:
  - {{ name: alice, value: {ALICE}, plans: [gold] }}
  - {{ name: bob, value: {BOB}, plans: [gold] }}
  - {{ name: carol, value: {CAROL}, plans: [gold], enabled: false }}
  - {{ name: dave, value: {DAVE}, plans: [free] }}
"
    )))
}

fn order(gw: &Gateway, stage: &str, key: Option<(&str, &str)>) -> Response {
    let mut c = Client::connect(gw.addr);
    let headers: Vec<(&str, &str)> = key.into_iter().collect();
    c.request(
        "POST",
        &format!("/{stage}/orders"),
        "gw.test",
        &headers,
        b"",
    )
}

fn assert_forbidden(r: &Response) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text(), r#"{"message":"Forbidden"}"#);
    assert_eq!(r.header("x-amzn-errortype"), Some("ForbiddenException"));
}

#[test]
fn keys_are_required_where_the_route_says() {
    let gw = gateway();
    assert_forbidden(&order(&gw, "prod", None));
    assert_forbidden(&order(
        &gw,
        "prod",
        Some(("x-api-key", "not-a-key-of-ours-at-all")),
    ));
    assert_forbidden(&order(&gw, "prod", Some(("x-api-key", CAROL))));
    // Dave's plan covers beta, not prod.
    assert_forbidden(&order(&gw, "prod", Some(("x-api-key", DAVE))));
    assert_eq!(order(&gw, "beta", Some(("x-api-key", DAVE))).status, 201);
    // The header name is case-insensitive.
    let r = order(&gw, "prod", Some(("X-API-Key", ALICE)));
    assert_eq!((r.status, r.text().as_str()), (201, "ordered"));
    // A route without api_key_required ignores keys.
    assert_eq!(get(gw.addr, "/prod/open").status, 200);
}

/// The plan's throttle is per key: Alice's bucket running dry leaves Bob's full.
#[test]
fn usage_plan_throttle_is_per_key() {
    let gw = gateway();
    let alice: Vec<u16> = (0..4)
        .map(|_| order(&gw, "prod", Some(("x-api-key", ALICE))).status)
        .collect();
    assert_eq!(alice, vec![201, 201, 429, 429]);
    let r = order(&gw, "prod", Some(("x-api-key", ALICE)));
    assert_eq!(r.text(), r#"{"message":"Too Many Requests"}"#);
    assert_eq!(order(&gw, "prod", Some(("x-api-key", BOB))).status, 201);
    // Dave's plan has no throttle.
    for _ in 0..5 {
        assert_eq!(order(&gw, "beta", Some(("x-api-key", DAVE))).status, 201);
    }
}

#[test]
fn key_config_errors_name_the_key() {
    let (code, text) = validate(&config(
        "apis: [ { name: p, routes: [ { route: GET /a, integration: { type: mock } } ], stages: [ { name: prod } ] } ]
usage_plans:
  - { name: gold, stages: [p/prod, p/nope], routes: { \"p/prod/GET /zzz\": { rate: 1, burst: 1 } } }
api_keys:
  - { name: short, value: abc, plans: [gold] }
  - { name: env, value: { env: SHARDGATE_TEST_UNSET_KEY_VAR }, plans: [gold] }
  - { name: lost, value: lost0123456789abcdefXYZ, plans: [platinum] }
",
    ));
    assert_eq!(code, 1, "{text}");
    for want in [
        "usage_plans[0].stages[1]: no stage \"p/nope\"",
        "usage_plans[0].routes[\"p/prod/GET /zzz\"]: no route",
        "api_keys[0].value: must be 20 to 128 letters and digits",
        "api_keys[1].value.env: environment variable SHARDGATE_TEST_UNSET_KEY_VAR is not set",
        "api_keys[2].plans[0]: no usage plan \"platinum\"",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}

/// A quota is exact across both workers and many concurrent connections, counted
/// over every stage of the plan, and requests a throttle refused do not count.
#[test]
fn quota_is_exact_across_workers_and_stages() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'POST /orders', api_key_required: true, integration: {{ type: mock, status: 201, body: ordered }} }}
    stages:
      - {{ name: prod }}
      - {{ name: beta }}
      - {{ name: slow, throttle: {{ rate: 0.01, burst: 2 }} }}
usage_plans:
  - {{ name: metered, stages: [pets/prod, pets/beta, pets/slow], quota: {{ limit: 50, period: day }} }}
api_keys:
  - {{ name: alice, value: {ALICE}, plans: [metered] }}
"
    )));
    // Two admitted and two throttled on the throttled stage: 2 of the quota used.
    let slow: Vec<u16> = (0..4)
        .map(|_| order(&gw, "slow", Some(("x-api-key", ALICE))).status)
        .collect();
    assert_eq!(slow, vec![201, 201, 429, 429]);
    let statuses = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (gw, statuses) = (&gw, &statuses);
            s.spawn(move || {
                for i in 0..20 {
                    let stage = if (t + i) % 2 == 0 { "prod" } else { "beta" };
                    let r = order(gw, stage, Some(("x-api-key", ALICE)));
                    statuses.lock().unwrap().push((r.status, r.text()));
                }
            });
        }
    });
    let statuses = statuses.into_inner().unwrap();
    let admitted = statuses.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(admitted, 48, "exactly the quota left");
    for (status, body) in statuses.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(
            (*status, body.as_str()),
            (429, r#"{"message":"Limit Exceeded"}"#)
        );
    }
    let r = order(&gw, "prod", Some(("x-api-key", ALICE)));
    assert_eq!(r.header("x-amzn-errortype"), Some("LimitExceededException"));
}

/// Keyed responses under a quota say what is left of it (IETF ratelimit headers).
#[test]
fn quota_state_is_in_the_response_headers() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'POST /orders', api_key_required: true, integration: {{ type: mock, status: 201, body: ordered }} }}
    stages: [ {{ name: prod }} ]
usage_plans:
  - {{ name: tiny, stages: [pets/prod], quota: {{ limit: 3, period: day }} }}
api_keys:
  - {{ name: alice, value: {ALICE}, plans: [tiny] }}
"
    )));
    let mut c = Client::connect(gw.addr);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = c.request(
            "POST",
            "/prod/orders",
            "gw.test",
            &[("x-api-key", ALICE)],
            b"",
        );
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&reset), "reset in {reset} s");
        seen.push((
            r.status,
            r.header("x-ratelimit-remaining").unwrap().to_owned(),
        ));
    }
    let want: Vec<(u16, String)> = [(201, "2"), (201, "1"), (201, "0"), (429, "0")]
        .iter()
        .map(|(s, r)| (*s, (*r).to_owned()))
        .collect();
    assert_eq!(seen, want);
    // Unkeyed answers carry none.
    assert_eq!(order(&gw, "prod", None).header("x-ratelimit-limit"), None);
}

/// A plan's per-route throttle is per key and per route: Alice's bucket for
/// `POST /orders` on prod runs dry while her other route, and Bob's bucket for the
/// same route, are untouched.
#[test]
fn usage_plan_route_throttle_is_per_key_and_route() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'POST /orders', api_key_required: true, integration: {{ type: mock, status: 201, body: ordered }} }}
      - {{ route: 'GET /orders', api_key_required: true, integration: {{ type: mock, status: 200, body: list }} }}
    stages: [ {{ name: prod }} ]
usage_plans:
  - name: gold
    stages: [pets/prod]
    routes:
      \"pets/prod/POST /orders\": {{ rate: 0.01, burst: 2 }}
api_keys:
  - {{ name: alice, value: {ALICE}, plans: [gold] }}
  - {{ name: bob, value: {BOB}, plans: [gold] }}
"
    )));
    let mut c = Client::connect(gw.addr);
    let mut call = |method: &str, key: &str| {
        c.request(
            method,
            "/prod/orders",
            "gw.test",
            &[("x-api-key", key)],
            b"",
        )
        .status
    };
    let alice: Vec<u16> = (0..3).map(|_| call("POST", ALICE)).collect();
    assert_eq!(alice, vec![201, 201, 429]);
    assert_eq!(call("GET", ALICE), 200, "her other route is not limited");
    assert_eq!(call("POST", BOB), 201, "Bob has his own bucket");
}
