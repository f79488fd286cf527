//! Operations over real sockets: `/metrics` against the traffic sent (2 workers),
//! `/healthz` and `/readyz`, access logs (JSON, templates, dropped lines, SIGUSR1),
//! and trace headers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{config, Client, Gateway, Upstream};
use serde_json::Value;

const TOKEN: &str = "ops-test-admin-token-0123";

fn admin_get(gw: &Gateway, path: &str) -> common::Response {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    c.request("GET", path, "admin", &[], b"")
}

/// `name{labels} value` lines of a scrape, summed by the given label filter.
fn metric(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            if n != name {
                return None;
            }
            let have: HashMap<&str, &str> = labels
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            filter
                .iter()
                .all(|(k, v)| have.get(k) == Some(v))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[test]
fn metrics_match_the_traffic() {
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
apis:
  - name: shop
    routes:
      - {{ route: GET /ok, integration: {{ type: http_proxy, uri: \"{be}/ok\" }} }}
      - {{ route: GET /cached, integration: {{ type: http_proxy, uri: \"{be}/cached\" }} }}
      - {{ route: GET /gone, integration: {{ type: mock, status: 404, body: gone }} }}
      - {{ route: GET /boom, integration: {{ type: mock, status: 500, body: boom }} }}
      - {{ route: GET /slow-down, integration: {{ type: mock, body: ok }} }}
    stages:
      - name: prod
        routes:
          \"GET /slow-down\": {{ throttle: {{ rate: 1, burst: 2 }} }}
      - name: c
        cache: {{ capacity_mb: 1, ttl_s: 60 }}
",
        be = backend.url()
    ));
    let gw = Gateway::start_env(&yaml, &[], &[("SG_ADMIN", TOKEN)]);
    assert_eq!(admin_get(&gw, "/healthz").status, 200);
    let ready = admin_get(&gw, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Several connections, so both workers serve.
    let mut statuses: HashMap<(&str, u16), u32> = HashMap::new();
    let (mut hits, mut misses) = (0, 0);
    let conns = 8;
    for _ in 0..conns {
        let mut c = Client::connect(gw.addr);
        for path in [
            "/ok",
            "/ok",
            "/gone",
            "/boom",
            "/cached",
            "/slow-down",
            "/nowhere",
        ] {
            let stage = if path == "/cached" { "c" } else { "prod" };
            let r = c.get(&format!("/{stage}{path}"));
            *statuses.entry((path, r.status)).or_default() += 1;
            if path == "/cached" {
                match r.header("x-cache") {
                    Some("Hit") => hits += 1,
                    Some("Miss") => misses += 1,
                    other => panic!("x-cache {other:?}"),
                }
            }
        }
    }
    // A worker counts a request just after sending its answer: the last one
    // (unrouted) may not be counted yet the instant the client has read it.
    let mut scrape = admin_get(&gw, "/metrics");
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while metric(&scrape.text(), "shardgate_unrouted_requests_total", &[]) as u32 != conns
        && std::time::Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(10));
        scrape = admin_get(&gw, "/metrics");
    }
    assert_eq!(scrape.status, 200);
    assert!(scrape
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = scrape.text();
    let count = |name: &str, r: &str| {
        let stage = if r == "GET /cached" { "c" } else { "prod" };
        metric(&m, name, &[("api", "shop"), ("stage", stage), ("route", r)]) as u32
    };
    assert_eq!(count("shardgate_requests_total", "GET /ok"), 2 * conns);
    assert_eq!(count("shardgate_4xx_total", "GET /gone"), conns);
    assert_eq!(count("shardgate_5xx_total", "GET /boom"), conns);
    assert_eq!(count("shardgate_4xx_total", "GET /ok"), 0);
    let throttled = statuses.get(&("/slow-down", 429)).copied().unwrap_or(0);
    assert!(throttled > 0, "{statuses:?}");
    assert_eq!(
        count("shardgate_throttled_total", "GET /slow-down"),
        throttled
    );
    assert_eq!(count("shardgate_4xx_total", "GET /slow-down"), throttled);
    assert_eq!(count("shardgate_cache_hits_total", "GET /cached"), hits);
    assert_eq!(count("shardgate_cache_misses_total", "GET /cached"), misses);
    assert_eq!(hits + misses, conns);
    // Histograms: one observation per request; the integration's only when proxied.
    assert_eq!(
        count("shardgate_latency_seconds_count", "GET /ok"),
        2 * conns
    );
    assert_eq!(
        metric(
            &m,
            "shardgate_latency_seconds_bucket",
            &[("route", "GET /ok"), ("le", "+Inf")]
        ) as u32,
        2 * conns
    );
    assert_eq!(
        count("shardgate_integration_latency_seconds_count", "GET /ok"),
        2 * conns
    );
    assert_eq!(
        count("shardgate_integration_latency_seconds_count", "GET /gone"),
        0
    );
    assert_eq!(
        count("shardgate_integration_latency_seconds_count", "GET /cached"),
        misses
    );
    // Unrouted requests are counted apart, without a route label.
    assert_eq!(
        metric(&m, "shardgate_unrouted_requests_total", &[]) as u32,
        conns
    );
    // Both workers accepted connections, and they add up.
    let accepted: Vec<f64> = (0..2)
        .map(|w| {
            metric(
                &m,
                "shardgate_accepted_connections_total",
                &[("worker", &w.to_string())],
            )
        })
        .collect();
    assert!(
        accepted.iter().sum::<f64>() >= f64::from(conns),
        "{accepted:?}"
    );
    let opened = metric(&m, "shardgate_upstream_connections_total", &[]);
    assert!(opened >= 1.0);
    // Nothing in flight: every open upstream connection is idle in a pool (the
    // gauges are set each 100 ms tick).
    let mut gauges = (0.0, 0.0);
    assert!(
        common::wait_until(Duration::from_secs(3), || {
            let m = admin_get(&gw, "/metrics").text();
            gauges = (
                metric(&m, "shardgate_upstream_connections_open", &[]),
                metric(&m, "shardgate_upstream_connections_idle", &[]),
            );
            gauges.0 >= 1.0 && gauges.0 == gauges.1 && gauges.0 <= opened
        }),
        "{gauges:?} of {opened}"
    );
}

fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    common::wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= n
    });
    lines
}

#[test]
fn access_logs_and_trace_headers() {
    let dir = std::env::temp_dir().join(format!("sg-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let json_log = dir.join("prod.log");
    let tmpl_log = dir.join("beta.log");
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "apis:
  - name: shop
    routes:
      - {{ route: \"GET /items/{{id}}\", integration: {{ type: http_proxy, uri: \"{be}/items/{{id}}\" }} }}
      - {{ route: GET /teapot, integration: {{ type: mock, status: 418 }} }}
    stages:
      - name: prod
        access_log: {{ path: {json} }}
      - name: beta
        access_log: {{ path: {tmpl}, format: \"$context.requestId|$context.status|$context.routeKey|$context.error.message|$context.traceId\" }}
",
        be = backend.url(),
        json = json_log.display(),
        tmpl = tmpl_log.display(),
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);

    // A request with a traceparent: passed on, and X-Amzn-Trace-Id made from it.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r1 = c.request(
        "GET",
        "/prod/items/7?x=1",
        "gw.test",
        &[("traceparent", tp), ("user-agent", "ops-test")],
        b"",
    );
    assert_eq!(r1.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("traceparent"), Some(tp));
    assert_eq!(
        seen.header("x-amzn-trace-id"),
        Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Sampled=1")
    );
    // Without one: both created, with the same trace id.
    let r2 = c.get("/prod/items/8");
    let seen = backend.last();
    let created = seen
        .header("traceparent")
        .expect("a traceparent was created")
        .to_owned();
    let parts: Vec<&str> = created.split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1].len(), parts[2].len()),
        (4, "00", 32, 16)
    );
    let amzn = seen.header("x-amzn-trace-id").unwrap();
    assert!(
        amzn.starts_with(&format!("Root=1-{}-{}", &parts[1][..8], &parts[1][8..])),
        "{amzn} vs {created}"
    );
    let r3 = c.get("/prod/teapot");
    assert_eq!(r3.status, 418);

    // JSON lines, one per request, with the response's request id.
    let lines = wait_lines(&json_log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (line, r) in parsed.iter().zip([&r1, &r2, &r3]) {
        assert_eq!(line["requestId"].as_str(), r.header("apigw-requestid"));
        assert_eq!(line["status"].as_u64(), Some(u64::from(r.status)));
        assert_eq!(line["protocol"], "HTTP/1.1");
        assert_eq!(line["ip"], "127.0.0.1");
        assert_eq!(line["stage"], "prod");
        assert!(line["responseLatency"].is_u64());
    }
    assert_eq!(parsed[0]["routeKey"], "GET /items/{id}");
    assert_eq!(
        parsed[0]["path"],
        "/prod/items/7?x=1".split('?').next().unwrap()
    );
    assert_eq!(parsed[0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(parsed[1]["traceId"].as_str(), Some(parts[1]));
    assert!(parsed[0]["integrationLatency"].is_u64());
    assert_eq!(parsed[0]["httpMethod"], "GET");
    assert!(parsed[2].get("integrationLatency").is_none());
    assert!(parsed[0]["requestTime"]
        .as_str()
        .unwrap()
        .ends_with(" +0000"));

    // A template: values in place, `-` where there is none; refusals have messages.
    let ok = c.get("/beta/items/1");
    let missing = c.get("/beta/nothing");
    assert_eq!(missing.status, 404);
    let lines = wait_lines(&tmpl_log, 2);
    let f: Vec<Vec<&str>> = lines.iter().map(|l| l.split('|').collect()).collect();
    assert_eq!(f[0][0], ok.header("apigw-requestid").unwrap());
    assert_eq!(&f[0][1..4], ["200", "GET /items/{id}", "-"]);
    assert_eq!(f[0][4].len(), 32);
    assert_eq!(f[1][0], missing.header("apigw-requestid").unwrap());
    assert_eq!(&f[1][1..4], ["404", "-", "Not Found"]);

    // SIGUSR1: after logrotate moves the file, lines go to a new one.
    let rotated = dir.join("prod.log.1");
    std::fs::rename(&json_log, &rotated).unwrap();
    unsafe { libc::kill(gw.pid(), libc::SIGUSR1) };
    assert!(common::wait_until(Duration::from_secs(2), || gw
        .log()
        .contains("reopening access logs")));
    std::thread::sleep(Duration::from_millis(600));
    let r = c.get("/prod/items/9");
    let lines = wait_lines(&json_log, 1);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains(r.header("apigw-requestid").unwrap()));
    assert_eq!(wait_lines(&rotated, 3).len(), 3);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log path that blocks (a FIFO nobody reads): lines are dropped and counted,
/// requests are not.
#[test]
fn blocked_log_drops_lines_not_requests() {
    let dir = std::env::temp_dir().join(format!("sg-ops-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("log.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let yaml = config(&format!(
        "admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
apis:
  - name: shop
    routes:
      - {{ route: GET /x, integration: {{ type: mock, body: x }} }}
    stages:
      - name: prod
        access_log: {{ path: {fifo} }}
",
        fifo = fifo.display()
    ));
    let gw = Gateway::start_env(&yaml, &[], &[("SG_ADMIN", TOKEN)]);
    let sent = 4000;
    let mut ok = 0;
    let mut c = Client::connect(gw.addr);
    for _ in 0..sent {
        if c.get("/prod/x").status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, sent);
    let mut dropped = 0.0;
    common::wait_until(Duration::from_secs(3), || {
        let m = admin_get(&gw, "/metrics").text();
        dropped = metric(&m, "shardgate_access_log_dropped_total", &[]);
        let written = metric(&m, "shardgate_access_log_lines_total", &[]);
        dropped > 0.0 && dropped + written == f64::from(sent)
    });
    assert!(dropped > 0.0, "no line was dropped");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sampled requests' spans reach an OTLP/HTTP collector as OTLP JSON.
#[test]
fn spans_are_exported_over_otlp() {
    let collector = Upstream::start(|_| common::Reply::ok("{}"));
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "tracing: {{ sample_rate: 1.0 }}
telemetry: {{ otlp_endpoint: \"{otlp}/v1/traces\", service_name: edge }}
apis:
  - name: shop
    routes:
      - {{ route: \"GET /items/{{id}}\", integration: {{ type: http_proxy, uri: \"{be}/items/{{id}}\" }} }}
    stages: [ {{ name: prod }} ]
",
        otlp = collector.url(),
        be = backend.url()
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        c.request(
            "GET",
            "/prod/items/1",
            "gw.test",
            &[("traceparent", tp)],
            b""
        )
        .status,
        200
    );
    let r = c.get("/prod/items/2");
    assert_eq!(r.status, 200);
    let created = backend.last().header("traceparent").unwrap().to_owned();
    let mut spans: Vec<Value> = Vec::new();
    common::wait_until(Duration::from_secs(5), || {
        spans = collector
            .seen()
            .iter()
            .filter(|s| s.method == "POST" && s.target == "/v1/traces")
            .flat_map(|s| {
                let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
                assert_eq!(
                    v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
                    "edge"
                );
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        spans.len() >= 2
    });
    assert_eq!(spans.len(), 2, "{spans:?}");
    let first = spans
        .iter()
        .find(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the caller's trace");
    assert_eq!(first["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(first["name"], "GET /items/{id}");
    assert_eq!(first["kind"], 2);
    let attrs = first["attributes"].as_array().unwrap();
    let attr = |k: &str| {
        attrs
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
            .unwrap()
    };
    assert_eq!(attr("http.response.status_code")["intValue"], "200");
    assert_eq!(attr("url.path")["stringValue"], "/prod/items/1");
    assert_eq!(
        attr("apigw.request_id")["stringValue"]
            .as_str()
            .map(str::len),
        Some(16)
    );
    let start: u64 = first["startTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let end: u64 = first["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && end - start < 5_000_000_000);
    // The created trace's span has the id the integration saw, and no parent.
    let second = spans
        .iter()
        .find(|s| s["traceId"] != first["traceId"])
        .unwrap();
    assert_eq!(second["traceId"].as_str(), created.split('-').nth(1));
    assert_eq!(second["spanId"].as_str(), created.split('-').nth(2));
    assert!(second.get("parentSpanId").is_none());
}

/// Issue 17: the management API reads and answers with the gateway's codec. Its
/// private copy answered statuses missing from its own reason table as "Internal
/// Server Error" (a not-ready `/readyz` said "503 Internal Server Error") and took
/// requests the gateway refuses (no Host, both Content-Length and
/// Transfer-Encoding).
#[test]
fn admin_api_speaks_the_gateway_codec() {
    let yaml = config(
        "admin: { bind: 127.0.0.1:0, token: { env: SG_ADMIN } }
apis:
  - name: shop
    routes:
      - { route: GET /ok, integration: { type: mock, body: ok } }
    stages:
      - name: prod
",
    );
    let gw = Gateway::start_env(&yaml, &[], &[("SG_ADMIN", TOKEN)]);
    let admin = gw.admin.expect("admin listener");
    let status_line = |raw: &str| {
        let out = common::raw_exchange(admin, raw.as_bytes());
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines().next().unwrap_or("").to_owned()
    };
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    for (raw, want) in [
        ("GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n".to_owned(), "HTTP/1.1 200 OK"),
        (format!("GET /nowhere HTTP/1.1\r\nhost: a\r\n{auth}\r\n"), "HTTP/1.1 404 Not Found"),
        ("GET /apikeys HTTP/1.1\r\nhost: a\r\n\r\n".to_owned(), "HTTP/1.1 401 Unauthorized"),
        (format!("PUT /apikeys HTTP/1.1\r\nhost: a\r\n{auth}content-length: 0\r\n\r\n"), "HTTP/1.1 405 Method Not Allowed"),
        (format!("POST /apikeys HTTP/1.1\r\nhost: a\r\n{auth}transfer-encoding: chunked\r\n\r\n0\r\n\r\n"), "HTTP/1.1 411 Length Required"),
        ("GET /healthz HTTP/1.1\r\n\r\n".to_owned(), "HTTP/1.1 400 Bad Request"),
        (format!("POST /apikeys HTTP/1.1\r\nhost: a\r\n{auth}content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"), "HTTP/1.1 400 Bad Request"),
        ("GET /healthz HTTP/2.0\r\nhost: a\r\n\r\n".to_owned(), "HTTP/1.1 505 HTTP Version Not Supported"),
    ] {
        assert_eq!(status_line(&raw), want, "for {raw:?}");
    }
}
