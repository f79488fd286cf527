//! Throttles at each level (gateway, stage, stage route) over real sockets, with two
//! workers and a new connection per request so requests land on both.

mod common;
use std::time::Duration;

use common::*;

const MOCK: &str = "{ type: mock, status: 200, headers: { content-type: text/plain }, body: ok }";

/// Statuses of `n` GETs of `path`, each on a new connection.
fn statuses(gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(gw.addr, path).status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

fn assert_throttled(r: &Response) {
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), r#"{"message":"Too Many Requests"}"#);
    assert_eq!(
        r.header("x-amzn-errortype"),
        Some("TooManyRequestsException")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

/// A stage throttle admits exactly `burst` at once over both workers (rate 0.01/s:
/// no refill during the test), then answers 429.
#[test]
fn stage_throttle_admits_the_burst_then_429() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /a', integration: {MOCK} }}
      - {{ route: 'GET /b', integration: {MOCK} }}
    stages:
      - name: prod
        throttle: {{ rate: 0.01, burst: 3 }}
"
    )));
    let mut got = statuses(&gw, "/prod/a", 5);
    got.extend(statuses(&gw, "/prod/b", 3));
    assert_eq!(count(&got, 200), 3, "{got:?}");
    assert_eq!(count(&got, 429), 5, "{got:?}");
    assert_throttled(&get(gw.addr, "/prod/a"));
}

/// A route's throttle in a stage limits that route only; the keep-alive connection
/// stays usable after a 429.
#[test]
fn route_throttle_limits_its_route_only() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /a', integration: {MOCK} }}
      - {{ route: 'GET /b', integration: {MOCK} }}
    stages:
      - name: prod
        routes:
          'GET /a': {{ throttle: {{ rate: 0.01, burst: 2 }} }}
"
    )));
    let got = statuses(&gw, "/prod/a", 4);
    assert_eq!(got, vec![200, 200, 429, 429]);
    assert_eq!(statuses(&gw, "/prod/b", 5), vec![200; 5]);
    let mut c = Client::connect(gw.addr);
    assert_throttled(&c.get("/prod/a"));
    assert_eq!(
        c.get("/prod/b").status,
        200,
        "the connection survives a 429"
    );
}

/// The gateway-wide throttle counts every API and stage together; a throttled
/// request never reaches the upstream.
#[test]
fn gateway_throttle_covers_all_apis_and_stops_before_the_upstream() {
    let up = Upstream::echo();
    let gw = Gateway::start(&config(&format!(
        "throttle: {{ rate: 0.01, burst: 4 }}
apis:
  - name: one
    routes:
      - {{ route: 'GET /one', integration: {{ type: http_proxy, uri: \"{}/one\" }} }}
    stages: [ {{ name: $default }} ]
  - name: two
    routes:
      - {{ route: 'GET /two', integration: {MOCK} }}
    stages: [ {{ name: s }} ]
",
        up.url()
    )));
    let mut got = statuses(&gw, "/one", 3);
    got.extend(statuses(&gw, "/s/two", 3));
    assert_eq!(count(&got, 200), 4, "{got:?}");
    assert_eq!(count(&got, 429), 2, "{got:?}");
    let proxied = count(&got[..3], 200);
    assert_eq!(
        up.seen().len(),
        proxied,
        "only admitted requests reach the upstream"
    );
}

/// Tokens come back at the configured rate.
#[test]
fn throttle_refills_at_its_rate() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /a', integration: {MOCK} }}
    stages:
      - name: $default
        throttle: {{ rate: 2, burst: 1 }}
"
    )));
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/a").status, 200);
    assert_throttled(&c.get("/a"));
    // One token per 500 ms.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.get("/a").status, 200);
}

/// Rate 0 blocks the route, as in AWS.
#[test]
fn zero_rate_blocks() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: p
    routes:
      - {{ route: 'GET /a', integration: {MOCK} }}
    stages:
      - name: $default
        routes:
          'GET /a': {{ throttle: {{ rate: 0, burst: 0 }} }}
"
    )));
    assert_throttled(&get(gw.addr, "/a"));
}
