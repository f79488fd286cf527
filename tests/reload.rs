//! Hot reload over real sockets: `POST /admin/reload`, SIGHUP and `watch: true`;
//! what unchanged routes keep (token levels, cache entries, pooled upstream
//! connections, metric series), requests in flight finishing on the old plan, a
//! kept-alive connection moving to the new one, invalid configs refused, and
//! listeners opened and closed without a restart.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{wait_until, Client, Gateway, Reply, Upstream};
use serde_json::Value;

const TOKEN: &str = "reload-test-admin-token-01";

fn admin(gw: &Gateway, method: &str, path: &str, body: &[u8]) -> common::Response {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    let auth = format!("Bearer {TOKEN}");
    let mut extra = vec![("authorization", auth.as_str())];
    if !body.is_empty() {
        extra.push(("content-type", "application/json"));
    }
    c.request(method, path, "admin", &extra, body)
}

fn reload(gw: &Gateway) -> common::Response {
    admin(gw, "POST", "/admin/reload", b"")
}

fn start(yaml: &str) -> Gateway {
    Gateway::start_env(yaml, &[], &[("SG_ADMIN", TOKEN)])
}

/// The `shardgate_requests_total` of one route.
fn requests_of(gw: &Gateway, route: &str) -> u64 {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    let text = c.request("GET", "/metrics", "admin", &[], b"").text();
    let want = format!("route=\"{route}\"}}");
    text.lines()
        .filter(|l| l.starts_with("shardgate_requests_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Two workers, the `test` listener and then `listeners` (more of them), and the
/// admin listener: what every config here begins with.
fn preamble(listeners: &str) -> String {
    format!(
        "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
{listeners}admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
"
    )
}

/// The shop API: `extra` adds route lines, `c_path` is where `GET /c` goes,
/// `burst` is `GET /t`'s throttle.
fn shop(be: &str, slow: &str, extra: &str, c_path: &str, burst: u32, listeners: &str) -> String {
    format!(
        "{}apis:
  - name: shop
    routes:
      - {{ route: GET /a, integration: {{ type: http_proxy, uri: \"{be}/a\" }} }}
      - {{ route: GET /t, integration: {{ type: mock, body: t }} }}
      - {{ route: GET /c, integration: {{ type: http_proxy, uri: \"{be}{c_path}\" }} }}
{extra}    stages:
      - name: $default
        cache: {{ capacity_mb: 1, ttl_s: 300 }}
        routes:
          \"GET /a\": {{ cache: {{ ttl_s: 0 }} }}
          \"GET /t\": {{ throttle: {{ rate: 0.001, burst: {burst} }} }}
",
        preamble(listeners)
    )
    .replace("{slow}", slow)
}

const SLOW_ROUTE: &str =
    "      - { route: GET /slow, integration: { type: http_proxy, uri: \"{slow}/slow\" } }\n";
const B_ROUTE: &str = "      - { route: GET /b, integration: { type: mock, body: b } }\n";

#[test]
fn reload_keeps_unchanged_routes_state_and_refuses_bad_configs() {
    let be = Upstream::start(|s| Reply::ok(format!("be {}", s.target)));
    let slow = Upstream::start(|_| {
        std::thread::sleep(Duration::from_millis(700));
        Reply::ok("slow")
    });
    let (b, s) = (be.url(), slow.url());
    let gw = start(&shop(&b, &s, SLOW_ROUTE, "/c", 3, ""));
    let mut c = Client::connect(gw.addr);

    // Before: a pooled upstream connection, a cached entry, a spent throttle.
    for _ in 0..3 {
        assert_eq!(c.get("/a").status, 200);
    }
    assert_eq!(be.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(c.get("/c").header("x-cache"), Some("Miss"));
    assert_eq!(c.get("/c").header("x-cache"), Some("Hit"));
    let statuses: Vec<u16> = (0..4).map(|_| c.get("/t").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(c.get("/b").status, 404);
    wait_until(Duration::from_secs(2), || requests_of(&gw, "GET /a") == 3);
    let a_before = requests_of(&gw, "GET /a");
    assert_eq!(a_before, 3);

    // A slow request in flight while its route is removed: it finishes.
    let addr = gw.addr;
    let in_flight = std::thread::spawn(move || Client::connect(addr).get("/slow"));
    assert!(wait_until(Duration::from_secs(3), || !slow
        .seen()
        .is_empty()));

    // Reload: /b added, /slow removed, the rest as it was.
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c", 3, ""));
    let r = reload(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    let done: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(done["generation"], 1, "{done}");
    assert_eq!(done["switched"], true, "{done}");
    let old = in_flight.join().unwrap();
    assert_eq!(
        (old.status, old.text()),
        (200, "slow".to_owned()),
        "the request in flight finished on the plan it began with"
    );

    // The same kept-alive connection now runs the new plan.
    assert_eq!(c.get("/b").text(), "b");
    assert_eq!(c.get("/slow").status, 404);
    // Unchanged routes kept their state.
    assert_eq!(
        c.get("/t").status,
        429,
        "the throttle's bucket stayed empty"
    );
    assert_eq!(
        c.get("/c").header("x-cache"),
        Some("Hit"),
        "the cache entry stayed"
    );
    assert_eq!(c.get("/a").status, 200);
    assert_eq!(
        be.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the pooled upstream connection was reused"
    );
    // A request is counted just after its response is written: wait for it.
    wait_until(Duration::from_secs(2), || {
        requests_of(&gw, "GET /a") == a_before + 1
    });
    assert_eq!(
        requests_of(&gw, "GET /a"),
        a_before + 1,
        "the series went on"
    );

    // A changed route: its cache entries are not served, its new bucket is full.
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c2", 4, ""));
    assert_eq!(reload(&gw).status, 200);
    let r = c.get("/c");
    assert_eq!(r.header("x-cache"), Some("Miss"));
    assert_eq!(r.text(), "be /c2");
    assert_eq!(c.get("/t").status, 200, "a changed throttle starts full");

    // An invalid config: refused with every error, the running plan stays.
    gw.rewrite(&(shop(&b, &s, B_ROUTE, "/c2", 4, "") + "bogus_key: 1\n"));
    let r = reload(&gw);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("bogus_key"), "{}", r.text());
    assert_eq!(c.get("/b").text(), "b");
    assert!(wait_until(Duration::from_secs(3), || gw
        .log()
        .contains("reload refused")));
    let broken = shop(&b, &s, B_ROUTE, "/c2", 4, "")
        .replace("type: mock, body: b", "type: mock, status: 99");
    gw.rewrite(&broken);
    assert_eq!(reload(&gw).status, 400);
    assert_eq!(c.get("/b").text(), "b");

    // SIGHUP reloads the file too.
    let d = B_ROUTE.replace("/b", "/d").replace("body: b", "body: d");
    gw.rewrite(&shop(&b, &s, &d, "/c2", 4, ""));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(3), || common::get(gw.addr, "/d").status
            == 200),
        "{}",
        gw.log()
    );
    assert!(wait_until(Duration::from_secs(3), || common::get(
        gw.addr, "/b"
    )
    .status
        == 404));
    // SIGHUP answers no one: the worker serving `c` takes the plan on its own tick,
    // which a busy machine can delay past the other worker's.
    assert!(wait_until(Duration::from_secs(3), || c.get("/d").text() == "d"));
}

#[test]
fn listeners_open_and_close_without_a_restart() {
    let be = Upstream::echo();
    let (b, s) = (be.url(), be.url());
    let gw = start(&shop(&b, &s, B_ROUTE, "/c", 3, ""));
    let extra = "  - name: extra\n    bind: 127.0.0.1:0\n";
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c", 3, extra));
    let r = reload(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    let done: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(done["opened"][0][0], "extra", "{done}");
    let addr: std::net::SocketAddr = done["opened"][0][1].as_str().unwrap().parse().unwrap();
    let mut on_extra = Client::connect(addr);
    assert_eq!(on_extra.get("/b").text(), "b");
    assert_eq!(common::get(gw.addr, "/t").text(), "t");

    // The same listener moved to another address: the old port stops accepting.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved_to = spare.local_addr().unwrap();
    drop(spare);
    let moved = format!("  - name: extra\n    bind: {moved_to}\n");
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c", 3, &moved));
    let r = reload(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    let done: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(done["closed"][0], "extra", "{done}");
    assert_eq!(
        done["opened"][0][1],
        moved_to.to_string().as_str(),
        "{done}"
    );
    assert_eq!(common::get(moved_to, "/b").text(), "b");
    assert!(wait_until(Duration::from_secs(3), || TcpStream::connect(
        addr
    )
    .is_err()));
    let addr = moved_to;

    // Removed: the port stops accepting; the other listener serves on.
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c", 3, ""));
    let r = reload(&gw);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"closed\":[\"extra\"]"), "{}", r.text());
    assert!(wait_until(Duration::from_secs(3), || TcpStream::connect(
        addr
    )
    .is_err()));
    // Its kept-alive connection gets one more answer, its last.
    let r = on_extra.get("/b");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(on_extra.is_closed());
    assert_eq!(common::get(gw.addr, "/t").text(), "t");

    // A bind that fails: the reload is refused and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = format!(
        "  - name: clash\n    bind: {}\n",
        taken.local_addr().unwrap()
    );
    gw.rewrite(&shop(&b, &s, B_ROUTE, "/c", 3, &clash));
    let r = reload(&gw);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("clash"), "{}", r.text());
    assert_eq!(common::get(gw.addr, "/t").text(), "t");
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let be = Upstream::echo();
    let (b, s) = (be.url(), be.url());
    let yaml = shop(&b, &s, "", "/c", 3, "") + "watch: true\n";
    let gw = start(&yaml);
    assert_eq!(common::get(gw.addr, "/b").status, 404);
    gw.rewrite(&(shop(&b, &s, B_ROUTE, "/c", 3, "") + "watch: true\n"));
    assert!(
        wait_until(Duration::from_secs(5), || common::get(gw.addr, "/b").status
            == 200),
        "{}",
        gw.log()
    );
    assert!(wait_until(Duration::from_secs(3), || gw
        .log()
        .contains("config file changed")));
    // A broken file is refused; the running config stays.
    gw.rewrite("this: [is not");
    assert!(wait_until(Duration::from_secs(5), || gw
        .log()
        .contains("reload refused")));
    assert_eq!(common::get(gw.addr, "/b").status, 200);
}

/// A GET's status and body.
fn status_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = common::get(addr, path);
    (r.status, r.text())
}

/// The CLI against the gateway's admin API: (exit code, stdout).
fn cli(gw: &Gateway, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .env("SHARDGATE_ADMIN", format!("http://{}", gw.admin.unwrap()))
        .env("SHARDGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn versioned(version: &str, extra: &str, store: &std::path::Path, be: &str) -> String {
    format!(
        "{}store: {{ path: {store} }}
apis:
  - name: shop
    routes:
      - {{ route: GET /v, integration: {{ type: mock, body: {version} }} }}
      - {{ route: GET /echo, integration: {{ type: http_proxy, uri: \"{be}/${{stage_variables.p}}\" }} }}
{extra}    stages:
      - {{ name: prod, variables: {{ p: one }} }}
      - {{ name: dev, variables: {{ p: one }} }}
",
        preamble(""),
        store = store.display()
    )
}

#[test]
fn deployments_stage_switches_and_rollback() {
    let be = Upstream::start(|s| Reply::ok(format!("be {}", s.target)));
    let store = std::env::temp_dir().join(format!("shardgate-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let new_route = "      - { route: GET /new, integration: { type: mock, body: new } }\n";
    let gw = start(&versioned("v1", "", &store, &be.url()));
    let body = |path: &str| status_text(gw.addr, path);

    // Deploy v1 to prod.
    let r = admin(
        &gw,
        "POST",
        "/admin/apis/shop/deployments",
        br#"{"description":"first","stageName":"prod"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let first: Value = serde_json::from_str(&r.text()).unwrap();
    let id1 = first["id"].as_str().unwrap().to_owned();
    assert_eq!(id1.len(), 10);
    assert_eq!(first["description"], "first");

    // The file moves to v2: dev follows it, prod serves its deployment.
    gw.rewrite(&versioned("v2", new_route, &store, &be.url()));
    assert_eq!(reload(&gw).status, 200);
    assert_eq!(body("/dev/v"), (200, "v2".to_owned()));
    assert_eq!(body("/dev/new"), (200, "new".to_owned()));
    assert_eq!(body("/prod/v"), (200, "v1".to_owned()));
    assert_eq!(body("/prod/new").0, 404);

    // Deploy v2 to prod (the CLI), then roll back to v1 (the API).
    let (code, out) = cli(
        &gw,
        &[
            "deploy",
            "create",
            "shop",
            "--description",
            "second",
            "--stage",
            "prod",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let id2 = serde_json::from_str::<Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(body("/prod/v"), (200, "v2".to_owned()));
    let r = admin(
        &gw,
        "PATCH",
        "/admin/apis/shop/stages/prod",
        format!("{{\"deploymentId\":\"{id1}\"}}").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(body("/prod/v"), (200, "v1".to_owned()), "rolled back");
    assert_eq!(body("/prod/new").0, 404);

    // Stage variables set through the API, over the file's.
    assert_eq!(body("/dev/echo"), (200, "be /one".to_owned()));
    let (code, out) = cli(&gw, &["deploy", "stage", "shop", "dev", "--var", "p=two"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(body("/dev/echo"), (200, "be /two".to_owned()));
    assert_eq!(body("/prod/echo"), (200, "be /one".to_owned()));

    // History and stages.
    let (code, out) = cli(&gw, &["deploy", "list", "shop"]);
    assert_eq!(code, 0, "{out}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id2.as_str(), id1.as_str()], "newest first");
    let r = admin(&gw, "GET", "/admin/apis/shop/stages", b"");
    let stages: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(stages["items"][0]["stageName"], "prod", "{stages}");
    assert_eq!(stages["items"][0]["deploymentId"], id1.as_str(), "{stages}");
    assert_eq!(stages["items"][1]["deploymentId"], Value::Null, "{stages}");
    assert_eq!(stages["items"][1]["variables"]["p"], "two", "{stages}");
    let r = admin(
        &gw,
        "GET",
        &format!("/admin/apis/shop/deployments/{id1}"),
        b"",
    );
    assert!(r.text().contains("\"body\":\"v1\""), "{}", r.text());

    // Refused: an unknown deployment, stage or API; nothing changes.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/apis/shop/stages/prod",
        br#"{"deploymentId":"nosuchid00"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        admin(
            &gw,
            "PATCH",
            "/admin/apis/shop/stages/qa",
            br#"{"deploymentId":null}"#
        )
        .status,
        404
    );
    assert_eq!(
        admin(&gw, "POST", "/admin/apis/nope/deployments", b"{}").status,
        404
    );
    assert_eq!(body("/prod/v"), (200, "v1".to_owned()));
    assert_eq!(cli(&gw, &["reload"]).0, 0);

    // A restart keeps the history and where each stage points.
    gw.sigterm();
    let mut gw = gw;
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    drop(gw);
    let gw = start(&versioned("v3", new_route, &store, &be.url()));
    let body = |path: &str| status_text(gw.addr, path);
    assert_eq!(body("/prod/v"), (200, "v1".to_owned()));
    assert_eq!(body("/dev/v"), (200, "v3".to_owned()));
    assert_eq!(body("/dev/echo"), (200, "be /two".to_owned()));
    let (_, out) = cli(&gw, &["deploy", "list", "shop"]);
    assert!(out.contains(&id1) && out.contains(&id2), "{out}");
    // Back to following the file.
    let (code, out) = cli(&gw, &["deploy", "stage", "shop", "prod", "--follow-config"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(body("/prod/v"), (200, "v3".to_owned()));
    drop(gw);
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn an_unchanged_authorizer_keeps_its_decisions() {
    let auth = Upstream::start(|_| Reply::ok(r#"{"isAuthorized":true}"#));
    let yaml = |ttl: u32, extra: &str| {
        format!(
            "{}apis:
  - name: shop
    authorizers:
      - {{ name: partners, type: request, uri: \"{}/authorize\", identity_sources: [header.authorization], ttl_s: {ttl} }}
    routes:
      - {{ route: GET /p, authorizer: partners, integration: {{ type: mock, body: p }} }}
{extra}    stages:
      - name: $default
",
            preamble(""),
            auth.url()
        )
    };
    let gw = start(&yaml(300, ""));
    let mut c = Client::connect(gw.addr);
    let get = |c: &mut Client| c.request("GET", "/p", "gw.test", &[("authorization", "abc")], b"");
    assert_eq!(get(&mut c).text(), "p");
    assert_eq!(get(&mut c).text(), "p");
    assert_eq!(auth.seen().len(), 1, "the decision is cached");
    // A reload that leaves the authorizer as it was: the decision stays.
    gw.rewrite(&yaml(300, B_ROUTE));
    assert_eq!(reload(&gw).status, 200);
    assert_eq!(get(&mut c).text(), "p");
    assert_eq!(
        c.get("/b").text(),
        "b",
        "the same connection runs the new plan"
    );
    assert_eq!(auth.seen().len(), 1, "kept across the reload");
    // A changed authorizer is a new one: asked again.
    gw.rewrite(&yaml(299, B_ROUTE));
    assert_eq!(reload(&gw).status, 200);
    assert_eq!(get(&mut c).text(), "p");
    assert_eq!(auth.seen().len(), 2);
}
