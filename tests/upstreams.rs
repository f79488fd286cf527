//! Upstream groups over real sockets: weights, health checks, outlier ejection
//! and retries while targets die, the retry budget, consistent hashing, DNS
//! re-resolution from a hosts file the test controls, connection caps, and
//! groups chosen by stage variables. Backends are real HTTP/1.1 servers on
//! loopback that the test can kill and revive.

#![allow(clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{read_message_head, wait_until, Client, Gateway, IO_TIMEOUT};

/// A backend that answers `name` (or `status`), counts what it served, and can
/// be killed (listener closed, every connection reset) and revived on the same
/// address.
struct Backend {
    addr: SocketAddr,
    name: &'static str,
    hits: Arc<AtomicUsize>,
    /// The status of every answer (200 unless set).
    status: Arc<AtomicU16>,
    /// The status of `GET /healthz`.
    health: Arc<AtomicU16>,
    delay_ms: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Backend {
    fn start(name: &'static str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    fn start_on(addr: SocketAddr, name: &'static str) -> Self {
        let mut b = Self {
            addr,
            name,
            hits: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            health: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            stop: Arc::default(),
            conns: Arc::default(),
        };
        b.listen();
        b
    }

    fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr).expect("bind backend");
        self.addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, conns, hits, status, health, delay, name) = (
            Arc::clone(&self.stop),
            Arc::clone(&self.conns),
            Arc::clone(&self.hits),
            Arc::clone(&self.status),
            Arc::clone(&self.health),
            Arc::clone(&self.delay_ms),
            self.name,
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        conns.lock().unwrap().push(s.try_clone().unwrap());
                        let (hits, status, health, delay) = (
                            Arc::clone(&hits),
                            Arc::clone(&status),
                            Arc::clone(&health),
                            Arc::clone(&delay),
                        );
                        std::thread::spawn(move || serve(s, name, &hits, &status, &health, &delay));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
    }

    /// Closes the listener and resets every connection.
    fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // The accept loop notices within a few ms and drops the listener.
        std::thread::sleep(Duration::from_millis(50));
    }

    fn revive(&mut self) {
        self.listen();
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(
    s: TcpStream,
    name: &str,
    hits: &AtomicUsize,
    status: &AtomicU16,
    health: &AtomicU16,
    delay: &AtomicUsize,
) {
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    while let Some(head) = read_message_head(&mut r) {
        let n: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            if common::read_chunked(&mut r).is_none() {
                return;
            }
        } else {
            let mut body = vec![0; n];
            if r.read_exact(&mut body).is_err() {
                return;
            }
        }
        let path = head.start.split(' ').nth(1).unwrap_or("").to_owned();
        let code = if path == "/healthz" {
            health.load(Ordering::SeqCst)
        } else {
            hits.fetch_add(1, Ordering::SeqCst);
            let d = delay.load(Ordering::SeqCst);
            if d > 0 {
                std::thread::sleep(Duration::from_millis(d as u64));
            }
            status.load(Ordering::SeqCst)
        };
        let body = format!("{name} {path}");
        let out = format!(
            "HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\nx-backend: {name}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
    }
}

const ADMIN_TOKEN: &str = "upstreams-test-admin-token";

fn gateway(upstreams: &str, routes: &str, extra: &str) -> Gateway {
    gateway_with_stage(upstreams, routes, extra, "{ name: $default }")
}

fn gateway_with_stage(upstreams: &str, routes: &str, extra: &str, stage: &str) -> Gateway {
    let yaml = format!(
        "workers: 2
listeners: [ {{ name: main, bind: \"127.0.0.1:0\" }} ]
admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
{extra}upstreams:
{upstreams}
apis:
  - name: shop
    routes:
{routes}
    stages: [ {stage} ]
"
    );
    Gateway::start_env(&yaml, &[], &[("SG_ADMIN", ADMIN_TOKEN)])
}

fn upstreams_view(gw: &Gateway) -> serde_json::Value {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = c.request(
        "GET",
        "/upstreams",
        "admin",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn get(c: &mut Client, path: &str) -> common::Response {
    c.request("GET", path, "gw.test", &[], b"")
}

#[test]
fn weights_share_the_traffic_by_weight() {
    const N: usize = 4000;
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let targets = format!(
        "[ {{ url: \"{}\", weight: 1 }}, {{ url: \"{}\", weight: 3 }}, {{ url: \"{}\", weight: 4 }} ]",
        a.url(),
        b.url(),
        c.url()
    );
    let gw = gateway(
        &format!(
            "  - {{ name: rr, balance: round_robin, targets: {targets} }}\n  - {{ name: lr, targets: {targets} }}"
        ),
        "      - { route: \"GET /rr/{p+}\", integration: { type: http_proxy, upstream: rr, uri: \"/{p}\" } }
      - { route: \"GET /lr/{p+}\", integration: { type: http_proxy, upstream: lr, uri: \"/{p}\" } }",
        "",
    );
    for (prefix, tolerance) in [("rr", 0.05), ("lr", 0.05)] {
        let before = [a.hits(), b.hits(), c.hits()];
        // Several connections, as several clients: both workers serve.
        let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.addr)).collect();
        // 4,000 draws: least request draws at random (two choices by weight),
        // and at 1,000 the tolerance was 2.5 standard deviations of the
        // smallest share (a run in 40 or so failed by chance).
        for i in 0..N {
            let r = get(&mut clients[i % 4], &format!("/{prefix}/x"));
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let got = [
            a.hits() - before[0],
            b.hits() - before[1],
            c.hits() - before[2],
        ];
        assert_eq!(got.iter().sum::<usize>(), N);
        for (i, want) in [0.125, 0.375, 0.5].iter().enumerate() {
            let share = got[i] as f64 / N as f64;
            assert!(
                (share - want).abs()
                    <= want * tolerance + 0.02 * f64::from(u8::from(prefix == "lr")),
                "{prefix}: target {i} got {share} of the traffic, its weight says {want} ({got:?})"
            );
        }
    }
    // The group's host header is each target's own; the path is the template's.
    let r = get(&mut Client::connect(gw.addr), "/rr/deep/path?q=1");
    assert!(r.text().ends_with(" /deep/path?q=1"), "{}", r.text());
}

#[test]
fn a_target_failing_its_health_check_gets_no_traffic_until_it_recovers() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = gateway(
        &format!(
            "  - name: pool
    balance: round_robin
    targets: [ {{ url: \"{}\" }}, {{ url: \"{}\" }} ]
    health_check: {{ path: /healthz, interval_ms: 200, timeout_ms: 500, healthy: 2, unhealthy: 2 }}",
            a.url(),
            b.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
    );
    let mut c = Client::connect(gw.addr);
    for _ in 0..20 {
        assert_eq!(get(&mut c, "/x").status, 200);
    }
    assert!(b.hits() > 0);
    b.health.store(503, Ordering::SeqCst);
    // unhealthy × interval = 400 ms; allow a round of slack.
    std::thread::sleep(Duration::from_millis(900));
    let before = b.hits();
    for _ in 0..50 {
        assert_eq!(get(&mut c, "/x").status, 200);
    }
    assert_eq!(b.hits(), before, "an unhealthy target got traffic");
    let view = upstreams_view(&gw);
    let targets = &view["items"][0]["targets"];
    assert_eq!(targets[1]["state"], "unhealthy", "{view}");
    b.health.store(200, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let before = b.hits();
            for _ in 0..10 {
                get(&mut c, "/x");
            }
            b.hits() > before
        }),
        "the recovered target got no traffic again"
    );
    // No healthy target at all: 503 Service Unavailable.
    a.health.store(500, Ordering::SeqCst);
    b.health.store(500, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || get(&mut c, "/x")
        .status
        == 503));
    let r = get(&mut c, "/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), r#"{"message":"Service Unavailable"}"#);
    assert!(gw.log().contains("target failed its health check"));
}

#[test]
fn a_target_killed_under_keep_alive_load_costs_no_request_and_is_ejected() {
    let a = Backend::start("a");
    let mut b = Backend::start("b");
    let c3 = Backend::start("c");
    let gw = gateway(
        &format!(
            "  - name: pool
    targets: [ {{ url: \"{}\" }}, {{ url: \"{}\" }}, {{ url: \"{}\" }} ]
    outlier: {{ consecutive_failures: 3, base_ejection_ms: 60000, max_ejection_percent: 50 }}
    retries: {{ attempts: 2, budget_percent: 50 }}",
            a.url(),
            b.url(),
            c3.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (stop, failures, done, addr) = (
                Arc::clone(&stop),
                Arc::clone(&failures),
                Arc::clone(&done),
                gw.addr,
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::SeqCst) {
                    let r = get(&mut c, "/item");
                    if r.status != 200 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", r.status, r.text()));
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || done
        .load(Ordering::SeqCst)
        > 300));
    b.kill();
    let at_kill = done.load(Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(20), || done
        .load(Ordering::SeqCst)
        > at_kill + 1500));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let view = upstreams_view(&gw);
    let t = &view["items"][0]["targets"][1];
    assert_eq!(t["state"], "ejected", "{view}");
    assert!(t["ejections"].as_u64().unwrap() >= 1, "{view}");
    // The retries show in the metrics, not in the responses.
    let mut m = Client::connect(gw.admin.unwrap());
    let metrics = m.request("GET", "/metrics", "admin", &[], b"").text();
    let retried: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardgate_upstream_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(retried > 0, "{metrics}");
    // Revived, it serves again once its ejection ends (here: not within the test).
    b.revive();
}

#[test]
fn a_streamed_post_is_not_retried_and_a_get_is() {
    let bad = Backend::start("bad");
    bad.status.store(503, Ordering::SeqCst);
    let good = Backend::start("good");
    let log = std::env::temp_dir().join(format!("shardgate-retries-{}.log", std::process::id()));
    let gw = gateway_with_stage(
        &format!(
            "  - {{ name: pool, balance: round_robin, targets: [ {{ url: \"{}\" }}, {{ url: \"{}\" }} ], retries: {{ attempts: 1, budget_percent: 100 }} }}",
            bad.url(),
            good.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
        &format!("{{ name: $default, access_log: {{ path: \"{}\", format: json }} }}", log.display()),
    );
    let mut c = Client::connect(gw.addr);
    // GETs: every one answered 200 (the 503s are retried on the other target).
    for _ in 0..10 {
        let r = get(&mut c, "/g");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A small POST body the gateway holds is retried too.
    let r = c.request("POST", "/p", "gw.test", &[], b"small body");
    assert_eq!(r.status, 200);
    // Chunked POSTs: sent once; a 503 goes back to the client as it is.
    let hits = bad.hits() + good.hits();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        c.send(b"POST /s HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let r = c.read_response(false).unwrap();
        statuses.push(r.status);
    }
    assert_eq!(
        bad.hits() + good.hits(),
        hits + 6,
        "a streamed body was sent twice"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[test]
fn the_retry_budget_caps_retries_under_a_failing_group() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.status.store(503, Ordering::SeqCst);
    b.status.store(503, Ordering::SeqCst);
    let gw = gateway(
        &format!(
            "  - {{ name: pool, targets: [ {{ url: \"{}\" }}, {{ url: \"{}\" }} ], retries: {{ attempts: 1, budget_percent: 10 }} }}",
            a.url(),
            b.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
    );
    let mut c = Client::connect(gw.addr);
    let n = 400;
    for _ in 0..n {
        assert_eq!(get(&mut c, "/x").status, 503);
    }
    let sent = a.hits() + b.hits();
    // 10% of 400, plus each worker's small floor per window.
    assert!(sent >= n, "{sent}");
    assert!(
        sent <= n + n / 10 + 12,
        "{sent} tries for {n} requests: the budget did not hold"
    );
}

#[test]
fn consistent_hashing_keeps_keys_and_moves_only_the_dead_targets() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c3 = Backend::start("c");
    let gw = gateway(
        &format!(
            "  - {{ name: pool, balance: consistent_hash, hash_key: header.x-user, targets: [ {{ url: \"{}\" }}, {{ url: \"{}\" }}, {{ url: \"{}\" }} ], outlier: {{ consecutive_failures: 1, base_ejection_ms: 60000, max_ejection_percent: 50 }} }}",
            a.url(),
            b.url(),
            c3.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
    );
    let owner = |c: &mut Client, user: &str| {
        let r = c.request("GET", "/k", "gw.test", &[("x-user", user)], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("x-backend").unwrap().to_owned()
    };
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.addr)).collect();
    let users: Vec<String> = (0..120).map(|i| format!("user-{i}")).collect();
    let mut first = HashMap::new();
    for (i, u) in users.iter().enumerate() {
        first.insert(u.clone(), owner(&mut clients[i % 4], u));
    }
    // Every key stays where it is, from any connection (any worker).
    for (i, u) in users.iter().enumerate() {
        assert_eq!(owner(&mut clients[(i + 1) % 4], u), first[u], "{u} moved");
    }
    let on_b = first.values().filter(|v| *v == "b").count();
    assert!(on_b > 10 && on_b < 80, "{on_b} of 120 keys on b");
    b.kill();
    for (i, u) in users.iter().enumerate() {
        let now = owner(&mut clients[i % 4], u);
        if first[u] == "b" {
            assert_ne!(now, "b");
        } else {
            assert_eq!(now, first[u], "{u} moved though its target lives");
        }
    }
}

#[test]
fn host_names_are_resolved_again_and_followed() {
    // Two backends on two loopback addresses; a name the test's hosts file maps.
    let one = Backend::start_on("127.0.0.2:0".parse().unwrap(), "one");
    let two = Backend::start_on(
        SocketAddr::new("127.0.0.3".parse().unwrap(), one.addr.port()),
        "two",
    );
    let port = one.addr.port();
    let hosts = std::env::temp_dir().join(format!("shardgate-hosts-{}", std::process::id()));
    std::fs::write(&hosts, "127.0.0.2 svc.shardgate.test\n").unwrap();
    let yaml = format!(
        "workers: 2
listeners: [ {{ name: main, bind: \"127.0.0.1:0\" }} ]
dns_refresh_s: 1
upstreams:
  - {{ name: named, dns_refresh_s: 1, targets: [ {{ url: \"http://svc.shardgate.test:{port}\" }} ] }}
apis:
  - name: shop
    routes:
      - {{ route: \"GET /g/{{p+}}\", integration: {{ type: http_proxy, upstream: named, uri: \"/{{p}}\" }} }}
      - {{ route: \"GET /plain/{{p+}}\", integration: {{ type: http_proxy, uri: \"http://svc.shardgate.test:{port}/{{p}}\" }} }}
    stages: [ {{ name: $default }} ]
"
    );
    let gw = Gateway::start_env(
        &yaml,
        &[],
        &[("SHARDGATE_HOSTS_FILE", hosts.to_str().unwrap())],
    );
    let mut c = Client::connect(gw.addr);
    for p in ["/g/x", "/plain/x"] {
        let r = get(&mut c, p);
        assert_eq!(r.header("x-backend"), Some("one"), "{p}: {}", r.text());
    }
    std::fs::write(&hosts, "127.0.0.3 svc.shardgate.test\n").unwrap();
    for p in ["/g/x", "/plain/x"] {
        assert!(
            wait_until(Duration::from_secs(6), || {
                get(&mut c, p).header("x-backend") == Some("two")
            }),
            "{p} still goes to the old address; log:\n{}",
            gw.log()
        );
    }
    // A resolver that fails keeps the last good addresses.
    std::fs::write(&hosts, "").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let r = get(&mut c, "/g/x");
    assert_eq!(r.header("x-backend"), Some("two"), "{}", r.text());
    let _ = std::fs::remove_file(&hosts);
    drop(two);
}

#[test]
fn a_target_at_its_connection_cap_makes_requests_wait_then_503() {
    let slow = Backend::start("slow");
    slow.delay_ms.store(1500, Ordering::SeqCst);
    let gw = gateway(
        &format!(
            "  - {{ name: pool, max_connections_per_target: 1, targets: [ {{ url: \"{}\" }} ] }}",
            slow.url()
        ),
        "      - { route: \"ANY /{p+}\", integration: { type: http_proxy, upstream: pool, uri: \"/{p}\" } }",
        "",
    );
    let addr = gw.addr;
    let first = std::thread::spawn(move || get(&mut Client::connect(addr), "/one").status);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let second = get(&mut Client::connect(gw.addr), "/two");
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(first.join().unwrap(), 200);
    // Once the connection is back in a worker's pool, requests on either worker
    // get through: the other worker closes its idle connection to make room.
    slow.delay_ms.store(0, Ordering::SeqCst);
    for _ in 0..6 {
        let r = get(&mut Client::connect(gw.addr), "/three");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(gw.log().contains("target at its connection cap"));
}

#[test]
fn stages_pick_their_group_by_stage_variable() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let yaml = format!(
        "listeners: [ {{ name: main, bind: \"127.0.0.1:0\" }} ]
upstreams:
  - {{ name: blue, targets: [ {{ url: \"{}\" }} ] }}
  - {{ name: green, targets: [ {{ url: \"{}\" }} ] }}
apis:
  - name: shop
    routes:
      - {{ route: GET /who, integration: {{ type: http_proxy, upstream: \"${{stage_variables.pool}}\", uri: /who }} }}
    stages:
      - {{ name: prod, variables: {{ pool: blue }} }}
      - {{ name: beta, variables: {{ pool: green }} }}
",
        blue.url(),
        green.url()
    );
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    assert_eq!(get(&mut c, "/prod/who").header("x-backend"), Some("blue"));
    assert_eq!(get(&mut c, "/beta/who").header("x-backend"), Some("green"));
    // A group no stage variable names is a config error, with its path.
    let (code, out) = common::validate(&yaml.replace("pool: green", "pool: purple"));
    assert_ne!(code, 0);
    assert!(out.contains("no upstream group named \"purple\""), "{out}");
}
