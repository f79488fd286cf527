//! The web console in a real browser: Debian's Chromium driven by Selenium
//! (`tests/support/console_drive.py`) against a gateway with an admin token, an
//! API with a keyed route, a cached proxied route, an upstream group and a usage
//! plan. The browser signs in (a wrong token is refused), sees the routes,
//! creates a key whose value is then used on the data plane, sees the usage
//! chart and live traffic, disables the key, which the data plane then refuses,
//! deploys the config to the stage and rolls it back, reloads, and sees the
//! upstream group's health. Screenshots of the pages are saved under
//! `docs/console/` (the README shows them).

mod common;

use std::process::Command;

use common::{Gateway, Upstream};

const TOKEN: &str = "console-test-admin-token-0001";

#[test]
fn console_in_chromium() {
    let be = Upstream::echo();
    let store = std::env::temp_dir().join(format!("shardgate-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let yaml = format!(
        "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
store: {{ path: {store} }}
upstreams:
  - name: pool
    targets: [{{ url: \"{be}\" }}]
    health_check: {{ path: /health, interval_ms: 500 }}
apis:
  - name: shop
    type: http
    routes:
      - route: GET /hello
        integration: {{ type: mock, status: 200, body: '{{\"hello\":true}}' }}
      - route: GET /keyed
        api_key_required: true
        integration: {{ type: mock, status: 200, body: '{{\"keyed\":true}}' }}
      - route: GET /pets/{{id}}
        integration: {{ type: http_proxy, uri: \"{be}/pets/{{id}}\" }}
      - route: GET /pool/{{proxy+}}
        integration: {{ type: http_proxy, upstream: pool, uri: \"/{{proxy}}\" }}
    stages:
      - name: prod
        throttle: {{ rate: 500, burst: 1000 }}
        cache: {{ capacity_mb: 4 }}
        routes:
          \"GET /pets/{{id}}\": {{ cache: {{ ttl_s: 30 }} }}
usage_plans:
  - name: gold
    stages: [shop/prod]
    throttle: {{ rate: 100, burst: 200 }}
    quota: {{ limit: 10000, period: day }}
",
        store = store.display(),
        be = be.url(),
    );
    let gw = Gateway::start_env(&yaml, &[], &[("SG_ADMIN", TOKEN)]);
    let admin = gw.admin.expect("admin listener");
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console");
    let out = Command::new("timeout")
        .args(["-k", "5", "240", "python3"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/console_drive.py"
        ))
        .args(["--admin", &format!("http://{admin}")])
        .args(["--data", &format!("http://{}/prod", gw.addr)])
        .args(["--token", TOKEN, "--plan", "gold", "--shots", shots])
        .output()
        .expect("python3 (tests/deps.sh installs selenium, chromium and chromium-driver)");
    let _ = std::fs::remove_dir_all(&store);
    assert!(
        out.status.success(),
        "the console's browser test failed ({}):\n{}\n{}\ngateway log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
}
