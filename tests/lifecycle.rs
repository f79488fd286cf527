//! The binary as an operator uses it: `validate`, refusal of not-yet-supported
//! sections, both monoio drivers, `--workers`, and the SIGTERM drain.

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn validate_reports_every_error_with_its_path() {
    let (code, out) = validate(
        "listeners:
  - { name: l, bind: 'not an address' }
apis:
  - name: p
    routes:
      - { route: 'GET /a/{id}', integration: { type: http_proxy, uri: 'http://127.0.0.1:9/x/{nope}' } }
      - { route: 'GET /a/{other}', integration: { type: mock } }
      - { route: 'FETCH /b', integration: { type: mock } }
      - { route: 'GET /c', integration: { type: mock, colour: blue } }
    stages: [ { name: 'bad stage' } ]
",
    );
    assert_eq!(code, 1, "{out}");
    for needle in [
        "listeners[0].bind",
        "apis[0].routes[0].integration.uri",
        "apis[0].routes[1].route",
        "apis[0].routes[2].route",
        "apis[0].routes[3].integration",
        "apis[0].stages[0].name",
    ] {
        assert!(out.contains(needle), "missing {needle} in:\n{out}");
    }
}

#[test]
fn validate_accepts_the_keys_example() {
    let (code, out) = validate_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/keys.yaml").as_ref(),
        &[
            ("SHARDGATE_ADMIN_TOKEN", "example-admin-token-0123"),
            ("ALICE_API_KEY", "alice0123456789abcdefXYZ"),
        ],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_accepts_the_access_example() {
    let (code, out) = validate_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/access.yaml").as_ref(),
        &[],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_accepts_the_cluster_example() {
    let (code, out) = validate_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster.yaml").as_ref(),
        &[("ADMIN_TOKEN", "an-admin-token-for-the-example")],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_accepts_the_quickstart() {
    let (code, out) = validate_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.yaml").as_ref(),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn later_features_are_refused_not_ignored() {
    let table = [
        (
            "store: { redis: { url: \"http://127.0.0.1:6379/0\" } }\n",
            "store.redis.url: \"http://127.0.0.1:6379/0\": expected a redis:// or rediss:// URL",
        ),
        (
            "admin: { bind: 127.0.0.1:9901, colour: red }\n",
            "admin.colour: unknown field",
        ),
    ];
    let apis = "apis:
  - name: p
    routes: [ { route: GET /a, integration: { type: mock } } ]
    stages: [ { name: prod } ]
";
    for (extra, want) in table {
        let (code, out) = validate(&format!("{}{extra}{apis}", config("")));
        assert_eq!(code, 1, "{extra}");
        assert!(out.contains(want), "{extra}: {out}");
    }
    let keyed = "apis:
  - name: p
    routes:
      - route: POST /orders
        authorizer: users
        integration: { type: mock }
    gateway_responses: { THROTTLE: { status: 503 } }
    stages: [ { name: prod, access_log: { path: stdout } } ]
";
    let (code, out) = validate(&config(keyed));
    assert_eq!(code, 1);
    // An authorizer the API does not define is named as such.
    assert!(
        out.contains("apis[0].routes[0].authorizer: no authorizer \"users\""),
        "{out}"
    );
    // A gateway response type AWS does not have is named with the ones it has.
    assert!(
        out.contains("apis[0].gateway_responses.THROTTLE: unknown gateway response type"),
        "{out}"
    );
    // `run` refuses the same config and exits 1 without listening.
    let path = write_config(&config(keyed));
    let out = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("apis[0].gateway_responses.THROTTLE: unknown gateway response type"));
}

const MOCK_API: &str = "apis:
  - name: m
    routes: [ { route: GET /ping, integration: { type: mock, body: pong } } ]
    stages: [ { name: $default } ]
";

#[test]
fn both_drivers_serve_and_say_which_they_use() {
    for (runtime, driver) in [("epoll", "\"epoll\""), ("io_uring", "")] {
        let gw = Gateway::start_with(&config(MOCK_API), &["--runtime", runtime, "--workers", "3"]);
        let mut c = Client::connect(gw.addr);
        for _ in 0..20 {
            assert_eq!(c.get("/ping").text(), "pong");
        }
        assert!(
            wait_until(Duration::from_secs(5), || gw
                .log()
                .matches("worker started")
                .count()
                == 3),
            "{}",
            gw.log()
        );
        let log = gw.log();
        if driver.is_empty() {
            // io_uring where the kernel allows it, else a logged fallback to epoll.
            assert!(
                log.contains("\"io_uring\"") || log.contains("falling back to epoll"),
                "{log}"
            );
        } else {
            assert!(log.contains(driver), "{log}");
        }
    }
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let up = Upstream::start(|_| {
        let mut r = Reply::ok("finished");
        r.delay = Duration::from_millis(700);
        r
    });
    let mut gw = Gateway::start(&format!(
        "drain_timeout_ms: 5000\n{}",
        config(&format!(
            "apis:
  - name: p
    routes: [ {{ route: GET /slow, integration: {{ type: http_proxy, uri: \"{}/slow\" }} }} ]
    stages: [ {{ name: $default }} ]
",
            up.url()
        ))
    ));
    let addr = gw.addr;
    let in_flight = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.get("/slow")
    });
    assert!(wait_until(Duration::from_secs(5), || !up.seen().is_empty()));
    let signalled = Instant::now();
    gw.sigterm();
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gw.log()
    );
    assert!(
        signalled.elapsed() >= Duration::from_millis(300),
        "exited before the request finished"
    );
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// The process's CPU time so far (user + system), in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn busy_polling_is_bounded_and_gives_way_when_requests_are_sparse() {
    // Out of range and of the wrong type: refused with the key's path.
    let (code, out) = validate(&format!("busy_poll_us: 5000\n{}", config(MOCK_API)));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("busy_poll_us: 5000 is too long: at most 1000"),
        "{out}"
    );
    let (code, out) = validate(&format!("busy_poll_us: fast\n{}", config(MOCK_API)));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("busy_poll_us"), "{out}");
    // Off, and at the longest window: both serve. After back-to-back requests
    // (the window grows to its longest), requests 3 ms apart are further apart
    // than the window, so it shrinks to nothing: a worker that kept polling
    // for 1 ms after each request would add about a third of a core to what
    // the same requests cost without polling; this one sleeps.
    let mut busy = Vec::new();
    for us in [0, 1000] {
        let gw = Gateway::start_with(
            &format!("busy_poll_us: {us}\n{}", config(MOCK_API)),
            &["--runtime", "epoll", "--workers", "1"],
        );
        let mut c = Client::connect(gw.addr);
        for _ in 0..300 {
            assert_eq!(c.get("/ping").text(), "pong");
        }
        let (ticks, began) = (cpu_ticks(gw.pid()), Instant::now());
        for _ in 0..300 {
            assert_eq!(c.get("/ping").text(), "pong");
            std::thread::sleep(Duration::from_millis(3));
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        busy.push((cpu_ticks(gw.pid()) - ticks) as f64 / hz / began.elapsed().as_secs_f64());
    }
    assert!(
        busy[1] < busy[0] + 0.1,
        "a request every 3 ms: {:.0}% of a core without polling, {:.0}% with busy_poll_us 1000",
        busy[0] * 100.0,
        busy[1] * 100.0
    );
}
