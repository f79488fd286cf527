//! Canary releases over real sockets: a stage's canary takes its share of the
//! requests (drawn per request), with the canary's stage variables or
//! deployment; metrics and access logs mark canary requests; API keys apply to
//! them as to the stage's; the management API sets, promotes and removes a
//! canary under load with no failed request, in force on every worker before it
//! answers; and bad canaries are refused with their key paths.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bin, write_config, Client, Gateway, Reply, Upstream};
use serde_json::Value;

const TOKEN: &str = "canary-test-admin-token-01";
const KEY: &str = "canaryTestApiKey0123456789";

fn start(yaml: &str) -> Gateway {
    Gateway::start_env(yaml, &[], &[("SG_ADMIN", TOKEN), ("SG_KEY", KEY)])
}

fn admin(gw: &Gateway, method: &str, path: &str, body: &str) -> common::Response {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    let auth = format!("Bearer {TOKEN}");
    let mut extra = vec![("authorization", auth.as_str())];
    if !body.is_empty() {
        extra.push(("content-type", "application/json"));
    }
    c.request(method, path, "admin", &extra, body.as_bytes())
}

fn json(r: &common::Response) -> Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// `shardgate_requests_total` of one (stage label, route).
fn requests_of(gw: &Gateway, stage: &str, route: &str) -> u64 {
    let text = admin(gw, "GET", "/metrics", "").text();
    let want = format!("stage=\"{stage}\",route=\"{route}\"}}");
    text.lines()
        .filter(|l| l.starts_with("shardgate_requests_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

const PREAMBLE: &str = "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
admin: { bind: 127.0.0.1:0, token: { env: SG_ADMIN } }
";

#[test]
fn canary_takes_its_share_and_is_marked() {
    let be = Upstream::start(|s| Reply::ok(s.target.trim_start_matches('/').to_owned()));
    let log = std::env::temp_dir().join(format!("shardgate-canary-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let yaml = format!(
        "{PREAMBLE}apis:
  - name: shop
    routes:
      - {{ route: GET /color, integration: {{ type: http_proxy, uri: \"{be}/${{stage_variables.color}}\" }} }}
      - {{ route: GET /keyed, api_key_required: true, integration: {{ type: mock, body: keyed }} }}
    stages:
      - name: prod
        variables: {{ color: blue }}
        canary: {{ percent: 25, variables: {{ color: green }} }}
        access_log: {{ path: {log}, format: '$context.routeKey $context.stage $context.isCanaryRequest' }}
      - name: dev
        variables: {{ color: blue }}
usage_plans:
  - {{ name: gold, stages: [shop/prod] }}
api_keys:
  - {{ name: alice, value: {{ env: SG_KEY }}, plans: [gold] }}
",
        be = be.url(),
        log = log.display(),
    );
    let gw = start(&yaml);

    // 2,000 requests over 4 connections: the canary's share within 5 points.
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.addr)).collect();
    let (mut green, mut blue) = (0u64, 0u64);
    for i in 0..2000 {
        let r = clients[i % 4].get("/prod/color");
        assert_eq!(r.status, 200, "{}", r.text());
        match r.text().as_str() {
            "green" => green += 1,
            "blue" => blue += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        (400..=600).contains(&green),
        "canary share {green} of 2000, want 500 ± 100"
    );
    assert_eq!(green + blue, 2000);
    // A stage without a canary: never.
    for _ in 0..50 {
        assert_eq!(clients[0].get("/dev/color").text(), "blue");
    }

    // Metrics: the canary's series under AWS's `prod/Canary`.
    assert_eq!(requests_of(&gw, "prod/Canary", "GET /color"), green);
    assert_eq!(requests_of(&gw, "prod", "GET /color"), blue);

    // Access log: `$context.isCanaryRequest`, the stage's name either way.
    assert!(common::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2000)
    }));
    let text = std::fs::read_to_string(&log).unwrap();
    let count = |line: &str| text.lines().filter(|l| *l == line).count() as u64;
    assert_eq!(count("GET /color prod true"), green, "{text:.300}");
    assert_eq!(count("GET /color prod false"), blue, "{text:.300}");

    // API keys and usage plans know canary requests as the stage's.
    let key = [("x-api-key", KEY)];
    for _ in 0..100 {
        let r = clients[1].request("GET", "/prod/keyed", "t", &[], b"");
        assert_eq!(r.status, 403, "{}", r.text());
        let r = clients[1].request("GET", "/prod/keyed", "t", &key, b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(requests_of(&gw, "prod/Canary", "GET /keyed") > 0);

    // The management API shows the canary in force, as AWS's canarySettings.
    let stage = json(&admin(&gw, "GET", "/admin/apis/shop/stages/prod", ""));
    assert_eq!(stage["canarySettings"]["percentTraffic"], 25.0, "{stage}");
    assert_eq!(
        stage["canarySettings"]["stageVariableOverrides"]["color"],
        "green"
    );
    let stages = json(&admin(&gw, "GET", "/admin/apis/shop/stages", ""));
    assert_eq!(stages["items"].as_array().unwrap().len(), 2, "{stages}");
    let _ = std::fs::remove_file(&log);
}

/// Requests in a loop on kept-alive connections until `stop`: (answers by
/// body, failures).
fn load(gw: &Gateway, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<(u64, u64)>> {
    (0..3)
        .map(|_| {
            let addr = gw.addr;
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let (mut ok, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("/prod/v");
                    if r.status == 200 && matches!(r.text().as_str(), "v1" | "v2") {
                        ok += 1;
                    } else {
                        failed += 1;
                        eprintln!("failed: {} {}", r.status, r.text());
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

fn versioned(version: &str, store: &std::path::Path) -> String {
    format!(
        "{PREAMBLE}store: {{ path: {} }}
apis:
  - name: shop
    routes:
      - {{ route: GET /v, integration: {{ type: mock, body: {version} }} }}
    stages:
      - {{ name: prod }}
",
        store.display()
    )
}

/// How many of `n` answers of `/prod/v` are each version.
fn versions(gw: &Gateway, n: usize) -> (usize, usize) {
    let mut c = Client::connect(gw.addr);
    let mut v = (0, 0);
    for _ in 0..n {
        match c.get("/prod/v").text().as_str() {
            "v1" => v.0 += 1,
            "v2" => v.1 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    v
}

#[test]
fn canary_deployment_promoted_and_removed_under_load() {
    let store = std::env::temp_dir().join(format!("shardgate-canary-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let gw = start(&versioned("v1", &store));
    // prod serves deployment d1 (v1); d2 snapshots v2 from the file.
    let r = admin(
        &gw,
        "POST",
        "/admin/apis/shop/deployments",
        r#"{"stageName":"prod"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let d1 = json(&r)["id"].as_str().unwrap().to_owned();
    gw.rewrite(&versioned("v2", &store));
    assert_eq!(admin(&gw, "POST", "/admin/reload", "").status, 200);
    let r = admin(&gw, "POST", "/admin/apis/shop/deployments", "{}");
    assert_eq!(r.status, 201, "{}", r.text());
    let d2 = json(&r)["id"].as_str().unwrap().to_owned();
    assert_eq!(versions(&gw, 50), (50, 0), "prod serves d1");

    let stop = Arc::new(AtomicBool::new(false));
    let loaders = load(&gw, Arc::clone(&stop));
    let served = AtomicU64::new(0);

    // A canary of d2 at 50%: both versions answer.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/apis/shop/stages/prod",
        &format!(r#"{{"canarySettings":{{"percentTraffic":50,"deploymentId":"{d2}"}}}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["canarySettings"]["deploymentId"], d2.as_str());
    let (v1, v2) = versions(&gw, 400);
    assert!(v1 > 100 && v2 > 100, "50% split: {v1} v1, {v2} v2");

    // Promoted: d2 is the stage's, on every worker before the answer; the
    // canary stays, with 0% (AWS's promotion).
    let r = admin(
        &gw,
        "POST",
        "/admin/apis/shop/stages/prod/canary/promote",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let stage = json(&r);
    assert_eq!(stage["deploymentId"], d2.as_str(), "{stage}");
    assert_eq!(stage["canarySettings"]["percentTraffic"], 0.0, "{stage}");
    assert_eq!(versions(&gw, 300), (0, 300), "promoted");

    // A canary of d1 again (the CLI), then removed: the stage alone answers.
    let out = std::process::Command::new(bin())
        .args(["deploy", "canary", "shop", "prod", "--percent", "30"])
        .args(["--deployment", &d1])
        .env("SHARDGATE_ADMIN", format!("http://{}", gw.admin.unwrap()))
        .env("SHARDGATE_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["canarySettings"]["percentTraffic"], 30.0, "{shown}");
    let (v1, _) = versions(&gw, 300);
    assert!(v1 > 30, "30% canary of d1: {v1} of 300");
    let r = admin(&gw, "DELETE", "/admin/apis/shop/stages/prod/canary", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(json(&r).get("canarySettings").is_none(), "{}", r.text());
    assert_eq!(versions(&gw, 300), (0, 300), "removed");
    // Nothing to remove or promote now.
    let r = admin(&gw, "DELETE", "/admin/apis/shop/stages/prod/canary", "");
    assert_eq!(r.status, 404, "{}", r.text());

    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for h in loaders {
        let (ok, failed) = h.join().unwrap();
        assert_eq!(failed, 0, "failed requests under load");
        served.fetch_add(ok, Ordering::Relaxed);
    }
    assert!(served.load(Ordering::Relaxed) > 300);

    // Bad settings through the API: refused, nothing changed.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/apis/shop/stages/prod",
        r#"{"canarySettings":{"percentTraffic":150}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin(
        &gw,
        "PATCH",
        "/admin/apis/shop/stages/prod",
        r#"{"canarySettings":{"percentTraffic":10,"deploymentId":"nosuchdepl"}}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // The store keeps the stage's deployment and the removal across a restart.
    drop(gw);
    let gw = start(&versioned("v1", &store));
    assert_eq!(versions(&gw, 100), (0, 100), "d2 after the restart");
    drop(gw);
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn bad_canaries_are_refused() {
    let api = |canary: &str, kind: &str| {
        format!(
            "listeners: [{{ name: test, bind: 127.0.0.1:0 }}]
apis:
  - name: shop
    type: {kind}
    routes:
      - {{ route: $default, integration: {{ type: mock, body: hi }} }}
    stages:
      - {{ name: prod, canary: {canary} }}
"
        )
    };
    let (code, out) = common::validate(&api("{ percent: 150 }", "http"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("apis[0].stages[0].canary.percent"), "{out}");
    let (code, out) = common::validate(&api("{ percent: 10, weight: 3 }", "http"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("weight"), "{out}");
    let (code, out) = common::validate(&api("{ percent: 10 }", "websocket"));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("apis[0].stages[0].canary"), "{out}");
    let (code, out) = common::validate(&api("{ percent: 10 }", "http"));
    assert_eq!(code, 0, "{out}");

    // A deployment the store does not have: `run` refuses to start.
    let store = std::env::temp_dir().join(format!("shardgate-canary-x-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let yaml = api("{ percent: 10, deployment: nosuchdepl }", "http").replace(
        "apis:",
        &format!("store: {{ path: {} }}\napis:", store.display()),
    );
    let path = write_config(&yaml);
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("SG_ADMIN", TOKEN)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(&store);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("apis[0].stages[0].canary.deployment: no deployment \"nosuchdepl\""),
        "{err}"
    );
}
