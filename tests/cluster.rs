//! Cluster mode (`store.redis`) with a real `redis-server` started here (Debian's
//! package; `.ci/run` installs it): three gateway processes sharing API keys,
//! usage plans and their bindings. A key made on one node works on the others
//! within a second; one disabled on another is refused everywhere within a
//! second; config keys are seeded without clobbering run-time changes; nodes see
//! each other in `GET /cluster`.

// Tests may share state under a mutex (clippy.toml keeps them off the request path).
#![allow(clippy::disallowed_types)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Client, Gateway, Response};

const TOKEN: &str = "cluster-test-admin-token-01";
const ALICE: &str = "alice0123456789abcdefXYZ";

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; .ci/run installs it)");
        let r = Self { child, port };
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "redis-server did not start"
        );
        r
    }
}

impl Redis {
    /// Stops the server (its data goes with it: no persistence).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A fresh, empty server on the same port.
    fn restart(&mut self) {
        self.stop();
        let fresh = Self::start_on(self.port);
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yaml(redis_port: u16) -> String {
    yaml_v(redis_port, "v1")
}

fn yaml_v(redis_port: u16, version: &str) -> String {
    yaml_full(redis_port, version, "fail_open")
}

fn yaml_full(redis_port: u16, version: &str, on_unavailable: &str) -> String {
    yaml_store(
        &format!("{{ url: \"redis://127.0.0.1:{redis_port}/0\", key_prefix: \"sgtest:\", on_unavailable: {on_unavailable} }}"),
        version,
    )
}

fn yaml_store(redis: &str, version: &str) -> String {
    format!(
        "workers: 2
listeners: [ {{ name: public, bind: \"127.0.0.1:0\" }} ]
admin: {{ bind: \"127.0.0.1:0\", token: {{ env: SG_TEST_ADMIN_TOKEN }} }}
store:
  redis: {redis}
apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets', api_key_required: true, integration: {{ type: mock, body: pets }} }}
      - {{ route: 'GET /v', integration: {{ type: mock, body: {version} }} }}
    stages: [ {{ name: prod }}, {{ name: beta }} ]
usage_plans:
  - {{ name: gold, stages: [pets/prod] }}
  - {{ name: metered, stages: [pets/beta], quota: {{ limit: 300, period: day }} }}
api_keys:
  - {{ name: alice, value: {{ env: ALICE_KEY }}, plans: [gold, metered] }}
"
    )
}

fn node(redis: &Redis) -> Gateway {
    let gw = Gateway::start_env(
        &yaml(redis.port),
        &[],
        &[("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)],
    );
    assert!(gw.admin.is_some(), "no admin listener; log:\n{}", gw.log());
    gw
}

fn call(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    let admin: SocketAddr = gw.admin.expect("admin listener");
    let auth = format!("Bearer {TOKEN}");
    Client::connect(admin).request(
        method,
        path,
        "admin.test",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
}

fn api(gw: &Gateway, method: &str, path: &str, body: &str) -> serde_json::Value {
    let r = call(gw, method, path, body);
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.text()
    );
    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
}

fn pets(gw: &Gateway, key: &str) -> u16 {
    Client::connect(gw.addr)
        .request("GET", "/prod/pets", "gw.test", &[("x-api-key", key)], b"")
        .status
}

/// How long until `key` gets `status` on `gw` (at most `within`).
fn reaches(gw: &Gateway, key: &str, status: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    wait_until(within, || pets(gw, key) == status).then(|| started.elapsed())
}

#[test]
fn keys_made_or_changed_on_one_node_hold_on_every_node_within_a_second() {
    let redis = Redis::start();
    let a = node(&redis);
    let b = node(&redis);
    let mut c = node(&redis);
    // The config's key works everywhere.
    for n in [&a, &b, &c] {
        assert_eq!(pets(n, ALICE), 200, "log:\n{}", n.log());
    }
    // Made on A: works on C within a second.
    let k = api(&a, "POST", "/apikeys", r#"{"name":"bob","plans":["gold"]}"#);
    let id = k["id"].as_str().unwrap().to_owned();
    let value = k["value"].as_str().unwrap().to_owned();
    let took = reaches(&c, &value, 200, Duration::from_secs(1));
    assert!(
        took.is_some(),
        "a key made on A not live on C within 1 s; C's log:\n{}",
        c.log()
    );
    // Disabled on B: refused on A within a second.
    api(
        &b,
        "PATCH",
        &format!("/apikeys/{id}"),
        r#"{"enabled":false}"#,
    );
    assert!(
        reaches(&a, &value, 403, Duration::from_secs(1)).is_some(),
        "a key disabled on B still works on A after 1 s"
    );
    // The definitions are the same on every node.
    let listed = api(&c, "GET", &format!("/apikeys/{id}"), "");
    assert_eq!(listed["enabled"], false);
    // Deleted on C: refused on B.
    api(&c, "DELETE", &format!("/apikeys/{id}"), "");
    assert!(reaches(&b, &value, 403, Duration::from_secs(1)).is_some());

    // A run-time change to a config key survives a node's restart: the config
    // seeds Redis only where it lacks the key.
    let alice = api(&a, "GET", "/apikeys", "")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "alice")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .expect("alice listed");
    api(
        &a,
        "PATCH",
        &format!("/apikeys/{alice}"),
        r#"{"enabled":false}"#,
    );
    assert!(reaches(&c, ALICE, 403, Duration::from_secs(1)).is_some());
    c.kill9();
    let c2 = node(&redis);
    assert_eq!(
        pets(&c2, ALICE),
        403,
        "a restarted node re-enabled a key disabled at run time"
    );
    drop(c);

    // Every node is in GET /cluster.
    assert!(
        wait_until(Duration::from_secs(3), || {
            let v = api(&a, "GET", "/cluster", "");
            v["items"]
                .as_array()
                .is_some_and(|n| n.iter().filter(|x| x["alive"] == true).count() >= 3)
        }),
        "{}",
        api(&a, "GET", "/cluster", "")
    );
    let v = api(&b, "GET", "/cluster", "");
    assert_eq!(v["redis"], "up");
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["this_node"] == true && x["id"] == v["node"]));
}

#[test]
fn usage_plans_made_on_one_node_cover_keys_on_every_node() {
    let redis = Redis::start();
    let a = node(&redis);
    let b = node(&redis);
    api(
        &a,
        "POST",
        "/usageplans",
        r#"{"name":"beta-plan","stages":["pets/prod"]}"#,
    );
    let k = api(
        &a,
        "POST",
        "/apikeys",
        r#"{"name":"dora","plans":["beta-plan"]}"#,
    );
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(
        reaches(&b, &value, 200, Duration::from_secs(1)).is_some(),
        "log:\n{}",
        b.log()
    );
    // The plan removed on B: the key is refused on A.
    api(&b, "DELETE", "/usageplans/beta-plan", "");
    assert!(reaches(&a, &value, 403, Duration::from_secs(1)).is_some());
    let plans = api(&a, "GET", "/usageplans", "");
    assert!(!plans.to_string().contains("beta-plan"), "{plans}");
}

fn body(gw: &Gateway, path: &str) -> String {
    Client::connect(gw.addr).get(path).text()
}

#[test]
fn deployments_and_stage_moves_made_on_one_node_hold_on_every_node() {
    let redis = Redis::start();
    let a = node(&redis);
    let b = node(&redis);
    // Deployed on A to prod: a snapshot of v1.
    let r = call(
        &a,
        "POST",
        "/apis/pets/deployments",
        r#"{"description":"first","stageName":"prod"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let first: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let id1 = first["id"].as_str().unwrap().to_owned();
    // Both files move to v2 and both nodes reload: beta follows the file, prod
    // serves the deployment on both (B learnt the pointer from Redis).
    for n in [&a, &b] {
        n.rewrite(&yaml_v(redis.port, "v2"));
        assert_eq!(call(n, "POST", "/reload", "").status, 200);
    }
    for n in [&a, &b] {
        assert_eq!(body(n, "/beta/v"), "v2");
        assert!(
            wait_until(Duration::from_secs(2), || body(n, "/prod/v") == "v1"),
            "prod does not serve the deployment; log:\n{}",
            n.log()
        );
    }
    // Deployed on B (v2) to prod: A serves it within a second; rolled back on A
    // to the first: B follows.
    let r = call(
        &b,
        "POST",
        "/apis/pets/deployments",
        r#"{"stageName":"prod"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        wait_until(Duration::from_secs(1), || body(&a, "/prod/v") == "v2"),
        "A's log:\n{}",
        a.log()
    );
    let r = call(
        &a,
        "PATCH",
        "/apis/pets/stages/prod",
        &format!("{{\"deploymentId\":\"{id1}\"}}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(wait_until(Duration::from_secs(1), || body(&b, "/prod/v") == "v1"));
    // A node started later serves the same.
    let c = node(&redis);
    assert_eq!(body(&c, "/prod/v"), "v1");
}

#[test]
fn redis_down_fail_closed_refuses_keyed_routes_fail_open_serves_and_nothing_is_lost() {
    let mut redis = Redis::start();
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    let closed = Gateway::start_env(&yaml_full(redis.port, "v1", "fail_closed"), &[], &env);
    let open = node(&redis);
    let k = api(
        &open,
        "POST",
        "/apikeys",
        r#"{"name":"erin","plans":["gold"]}"#,
    );
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(reaches(&closed, &value, 200, Duration::from_secs(1)).is_some());
    redis.stop();
    // fail_closed: keyed routes answer 503 once the node sees Redis gone; routes
    // without a key or throttle go on.
    assert!(
        wait_until(Duration::from_secs(4), || pets(&closed, ALICE) == 503),
        "log:\n{}",
        closed.log()
    );
    let r = Client::connect(closed.addr).request(
        "GET",
        "/prod/pets",
        "gw.test",
        &[("x-api-key", ALICE)],
        b"",
    );
    assert_eq!(r.text(), r#"{"message":"Service Unavailable"}"#);
    assert_eq!(body(&closed, "/prod/v"), "v1");
    // fail_open: every key goes on working, the run-time one too.
    for _ in 0..200 {
        assert_eq!(pets(&open, &value), 200);
        assert_eq!(pets(&open, ALICE), 200);
    }
    // Redis comes back empty: the nodes put back what they hold, and the key made
    // at run time survives Redis's loss.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || pets(&closed, ALICE) == 200),
        "log:\n{}",
        closed.log()
    );
    assert!(wait_until(Duration::from_secs(5), || pets(&closed, &value) == 200));
    assert!(wait_until(Duration::from_secs(5), || pets(&open, &value) == 200));
    assert!(closed.log().contains("redis unreachable"));
}

#[test]
fn a_cache_flush_on_one_node_reaches_every_node() {
    let redis = Redis::start();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = std::sync::Arc::clone(&n);
    let up = common::Upstream::start(move |_| {
        common::Reply::ok(format!(
            "#{}",
            n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ))
    });
    let yaml = format!(
        "workers: 1
listeners: [ {{ name: public, bind: \"127.0.0.1:0\" }} ]
admin: {{ bind: \"127.0.0.1:0\", token: {{ env: SG_TEST_ADMIN_TOKEN }} }}
store:
  redis: {{ url: \"redis://127.0.0.1:{}/0\", key_prefix: \"sgcache:\" }}
apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets', integration: {{ type: http_proxy, uri: \"{}/pets\" }} }}
    stages:
      - {{ name: prod, cache: {{ capacity_mb: 4, ttl_s: 300 }} }}
",
        redis.port,
        up.url()
    );
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN)];
    let a = Gateway::start_env(&yaml, &[], &env);
    let b = Gateway::start_env(&yaml, &[], &env);
    let get = |g: &Gateway| {
        let r = Client::connect(g.addr).get("/prod/pets");
        (r.header("x-cache").unwrap_or("").to_owned(), r.text())
    };
    // Each node caches its own copy.
    let (_, a1) = get(&a);
    let (_, b1) = get(&b);
    assert_eq!(get(&a), ("Hit".to_owned(), a1.clone()));
    assert_eq!(get(&b), ("Hit".to_owned(), b1.clone()));
    // Flushed on A: B's next request is a miss (a fresh body) within moments: a
    // Redis message, applied by the control thread (niced below the workers, so
    // on a busy 2-core CI machine it can wait a while for its turn).
    assert_eq!(call(&a, "DELETE", "/cache/pets/prod", "").status, 204);
    assert!(
        wait_until(Duration::from_secs(3), || get(&b).0 == "Miss"),
        "B still serves its cached copy; log:\n{}",
        b.log()
    );
    // One entry, flushed on B: A drops it too.
    assert_eq!(get(&a).0, "Miss");
    assert_eq!(get(&a).0, "Hit");
    let r = call(&b, "POST", "/cache/pets/prod/flush", r#"{"path":"/pets"}"#);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(
        wait_until(Duration::from_secs(3), || get(&a).0 == "Miss"),
        "A still serves its cached copy; log:\n{}",
        a.log()
    );
}

#[test]
fn a_quota_hammered_on_three_nodes_at_once_admits_exactly_its_limit() {
    let redis = Redis::start();
    let nodes: Vec<Gateway> = (0..3).map(|_| node(&redis)).collect();
    assert_eq!(
        hammer(&nodes),
        300,
        "three nodes together must admit exactly the quota"
    );
    // What is left, as every node shows it: nothing.
    let r = Client::connect(nodes[1].addr).request(
        "GET",
        "/beta/pets",
        "gw.test",
        &[("x-api-key", ALICE)],
        b"",
    );
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (429, Some("0"))
    );
    // A reset through one node's management API (AWS's UpdateUsage) holds for
    // the cluster: 5 more, over all nodes.
    let alice = api(&nodes[0], "GET", "/apikeys", "")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "alice")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .unwrap();
    api(
        &nodes[0],
        "PATCH",
        &format!("/usageplans/metered/keys/{alice}/usage"),
        r#"{"patchOperations":[{"op":"replace","path":"/remaining","value":"5"}]}"#,
    );
    assert_eq!(
        hammer(&nodes),
        5,
        "a reset must hold for all nodes together"
    );
}

/// Two clients per node, at once, on the metered route until each has seen 30
/// refusals in a row; the requests admitted.
fn hammer(nodes: &[Gateway]) -> usize {
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let other = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    // Two clients per node, at once, until each has seen 30 refusals in a row.
    let threads: Vec<_> = nodes
        .iter()
        .flat_map(|n| [n.addr, n.addr])
        .map(|addr| {
            let (admitted, other) = (
                std::sync::Arc::clone(&admitted),
                std::sync::Arc::clone(&other),
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut refused_in_a_row = 0;
                for _ in 0..2000 {
                    let r = c.request("GET", "/beta/pets", "gw.test", &[("x-api-key", ALICE)], b"");
                    match r.status {
                        200 => {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            refused_in_a_row = 0;
                        }
                        429 => {
                            refused_in_a_row += 1;
                            if refused_in_a_row >= 30 {
                                break;
                            }
                        }
                        s => other.lock().unwrap().push(s),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        other.lock().unwrap().is_empty(),
        "{:?}",
        other.lock().unwrap()
    );
    admitted.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn a_stage_throttle_holds_for_all_nodes_together() {
    let redis = Redis::start();
    let yaml = yaml(redis.port).replace(
        "stages: [ { name: prod }, { name: beta } ]",
        "stages: [ { name: prod }, { name: beta }, { name: slow, throttle: { rate: 50, burst: 10 } } ]",
    );
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_env(&yaml, &[], &env))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let secs = 3.0;
    let addrs: Vec<SocketAddr> = nodes.iter().flat_map(|n| [n.addr, n.addr]).collect();
    let (got, t) = admitted_for(&addrs, "/slow/v", None, secs);
    let got = got as f64;
    // The bound (README, src/policy/throttle.rs): rate × t + burst + what the
    // nodes hold: 3 nodes × (a reservoir of workers × batch + each worker's batch)
    // = 3 × (2 + 2) tokens here.
    let bound = 50.0 * t + 10.0 + 12.0;
    eprintln!("stage throttle 50/s burst 10 over 3 nodes: {got} admitted in {t:.2} s (rate x t + burst = {:.0}; bound {bound:.0})", 50.0 * t + 10.0);
    assert!(
        got <= bound,
        "{got} admitted in {t:.2} s across 3 nodes; bound {bound:.0}"
    );
    // Three nodes each on their own would have admitted about three times the rate.
    assert!(
        got >= 50.0 * secs * 0.8,
        "{got} admitted in {t:.2} s: far under the rate"
    );
}

/// A three-master Redis Cluster (`--cluster-enabled yes`, `redis-cli --cluster
/// create`), killed on drop.
struct RedisCluster {
    nodes: Vec<Redis>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("shardgate-rc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push(Redis { child, port });
            assert!(wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(Duration::from_secs(20), || {
            nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            })
        });
        assert!(ok, "the Redis Cluster did not form");
        Self { nodes, dir }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_redis_cluster_of_three_masters_keeps_the_quota_exact_and_shares_keys() {
    let rc = RedisCluster::start();
    let urls: Vec<String> = rc
        .nodes
        .iter()
        .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
        .collect();
    let yaml = yaml_store(
        &format!(
            "{{ cluster: [ {} ], key_prefix: \"sgrc:\" }}",
            urls.join(", ")
        ),
        "v1",
    );
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    let nodes: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_env(&yaml, &[], &env))
        .collect();
    let k = api(
        &nodes[0],
        "POST",
        "/apikeys",
        r#"{"name":"bob","plans":["gold"]}"#,
    );
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(
        reaches(&nodes[2], &value, 200, Duration::from_secs(1)).is_some(),
        "log:\n{}",
        nodes[2].log()
    );
    assert_eq!(
        hammer(&nodes),
        300,
        "a Redis Cluster must keep the quota exact too"
    );
}

#[test]
fn a_node_killed_mid_traffic_loses_at_most_its_unspent_grant() {
    let redis = Redis::start();
    let mut nodes: Vec<Gateway> = (0..3).map(|_| node(&redis)).collect();
    // Some traffic on every node, then the third dies with whatever it was granted.
    let mut admitted = 0;
    for n in &nodes {
        for _ in 0..30 {
            if pets_beta(n) == 200 {
                admitted += 1;
            }
        }
    }
    nodes[2].kill9();
    let dead = nodes.pop().unwrap();
    drop(dead);
    admitted += hammer(&nodes);
    // The stated bound (Registry::top_up_grants): a killed node loses at most
    // 2 × batch × (workers + 1) of the period; batch = 300 / 64 = 4, 2 workers.
    eprintln!("a node killed: {admitted} of 300 admitted");
    assert!(admitted <= 300, "{admitted}");
    assert!(
        admitted >= 300 - 24,
        "{admitted}: a killed node lost more than the bound"
    );
}

fn pets_beta(gw: &Gateway) -> u16 {
    Client::connect(gw.addr)
        .request("GET", "/beta/pets", "gw.test", &[("x-api-key", ALICE)], b"")
        .status
}

/// SIGSTOP / SIGCONT a process (Redis paused: connections hang, nothing is lost).
fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn usage_made_while_redis_is_away_is_replayed_into_the_shared_report() {
    let redis = Redis::start();
    let a = node(&redis);
    let b = node(&redis);
    for n in [&a, &b] {
        for _ in 0..10 {
            assert_eq!(pets(n, ALICE), 200);
        }
    }
    let day = common::today();
    let alice = api(&a, "GET", "/apikeys", "")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "alice")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .unwrap();
    let served = |n: &Gateway| {
        api(
            n,
            "GET",
            &format!("/usageplans/gold/usage?startDate={day}&endDate={day}&keyId={alice}"),
            "",
        )["values"][&alice][0][0]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(3), || served(&b) == 20),
        "{}",
        served(&b)
    );
    // Redis paused mid-traffic (fail_open): every request with a valid key is
    // answered.
    signal(redis.child.id(), libc::SIGSTOP);
    for _ in 0..30 {
        assert_eq!(pets(&a, ALICE), 200);
    }
    std::thread::sleep(Duration::from_millis(1500));
    signal(redis.child.id(), libc::SIGCONT);
    // Back: what A counted meanwhile reaches the shared report.
    assert!(
        wait_until(Duration::from_secs(10), || served(&b) == 50),
        "{} of 50; A's log:\n{}",
        served(&b),
        a.log()
    );
}

#[test]
fn with_redis_away_each_node_keeps_its_share_of_a_throttle() {
    let mut redis = Redis::start();
    let yaml = yaml(redis.port).replace(
        "stages: [ { name: prod }, { name: beta } ]",
        "stages: [ { name: prod }, { name: beta }, { name: slow, throttle: { rate: 40, burst: 4 } } ]",
    );
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    let nodes: Vec<Gateway> = (0..2)
        .map(|_| Gateway::start_env(&yaml, &[], &env))
        .collect();
    // Both nodes have seen each other's heartbeat.
    assert!(wait_until(Duration::from_secs(4), || {
        api(&nodes[0], "GET", "/cluster", "")["items"]
            .as_array()
            .is_some_and(|n| n.iter().filter(|x| x["alive"] == true).count() == 2)
    }));
    std::thread::sleep(Duration::from_millis(1200));
    redis.stop();
    // Each node notices when its reservoir runs dry, and then admits its share.
    for n in &nodes {
        for _ in 0..40 {
            Client::connect(n.addr).get("/slow/v");
        }
    }
    std::thread::sleep(Duration::from_millis(800));
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let (got, _) = admitted_for(&addrs, "/slow/v", None, 2.0);
    eprintln!("redis away, 2 nodes, 40/s burst 4, 2 s: {got} admitted");
    // Each node at half the rate: about 40 × 2 + 4; each at the whole rate
    // would be about 160.
    assert!(got <= 100, "{got}: the nodes did not keep to their shares");
    assert!(got >= 50, "{got}: far under the rate");
}

#[test]
fn a_node_starts_while_redis_is_down_and_catches_up_when_it_is_back() {
    let mut redis = Redis::start();
    let port = redis.port;
    redis.stop();
    let env = [("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    // fail_closed: it starts, and answers 503 on keyed routes until Redis is back.
    let closed = Gateway::start_env(&yaml_full(port, "v1", "fail_closed"), &[], &env);
    let open = Gateway::start_env(&yaml_full(port, "v1", "fail_open"), &[], &env);
    assert_eq!(pets(&closed, ALICE), 503, "log:\n{}", closed.log());
    assert_eq!(body(&closed, "/prod/v"), "v1");
    assert_eq!(pets(&open, ALICE), 200);
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || pets(&closed, ALICE) == 200),
        "log:\n{}",
        closed.log()
    );
    // Both seeded Redis with the config on their way back: a key made now works on both.
    let k = api(
        &open,
        "POST",
        "/apikeys",
        r#"{"name":"late","plans":["gold"]}"#,
    );
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(reaches(&closed, &value, 200, Duration::from_secs(2)).is_some());
}

#[test]
fn rediss_with_tls_to_redis() {
    let dir = std::env::temp_dir().join(format!("shardgate-rediss-{}", std::process::id()));
    let (ca_path, cert, key) = common::test_ca(&dir, &["localhost"]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-auth-clients",
            "no",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let _redis = Redis { child, port };
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    // The gateway verifies Redis's certificate against the system's roots; this
    // test's CA stands in for them (SSL_CERT_FILE).
    let yaml = yaml_store(
        &format!("{{ url: \"rediss://localhost:{port}/0\", key_prefix: \"sgtls:\" }}"),
        "v1",
    );
    let env = [
        ("SG_TEST_ADMIN_TOKEN", TOKEN),
        ("ALICE_KEY", ALICE),
        ("SSL_CERT_FILE", ca_path.to_str().unwrap()),
    ];
    let a = Gateway::start_env(&yaml, &[], &env);
    let b = Gateway::start_env(&yaml, &[], &env);
    let k = api(&a, "POST", "/apikeys", r#"{"name":"tls","plans":["gold"]}"#);
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(
        reaches(&b, &value, 200, Duration::from_secs(1)).is_some(),
        "log:\n{}",
        b.log()
    );
    assert_eq!(api(&b, "GET", "/cluster", "")["redis"], "up");
    // Without the CA the certificate is refused: that node cannot reach Redis.
    let untrusting = Gateway::start_env(
        &yaml,
        &[],
        &[
            ("SG_TEST_ADMIN_TOKEN", TOKEN),
            ("ALICE_KEY", ALICE),
            ("SSL_CERT_FILE", "/nonexistent"),
        ],
    );
    assert_eq!(call(&untrusting, "GET", "/cluster", "").status, 503);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_usage_plan_throttle_holds_for_all_nodes_together() {
    let redis = Redis::start();
    let nodes: Vec<Gateway> = (0..3).map(|_| node(&redis)).collect();
    api(
        &nodes[0],
        "POST",
        "/usageplans",
        r#"{"name":"capped","stages":["pets/prod"],"throttle":{"rate":20,"burst":4}}"#,
    );
    // The plan made on node 0 is in force on node 1 within a second.
    assert!(wait_until(Duration::from_secs(1), || call(
        &nodes[1],
        "GET",
        "/usageplans/capped",
        ""
    )
    .status
        == 200));
    let k = api(
        &nodes[1],
        "POST",
        "/apikeys",
        r#"{"name":"busy","plans":["capped"]}"#,
    );
    let value = k["value"].as_str().unwrap().to_owned();
    for n in &nodes {
        assert!(reaches(n, &value, 200, Duration::from_secs(2)).is_some());
    }
    std::thread::sleep(Duration::from_millis(1000));
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let (got, _) = admitted_for(&addrs, "/prod/pets", Some(&value), 2.0);
    eprintln!("a key's plan throttle 20/s burst 4 over 3 nodes, 2 s: {got} admitted");
    // rate × t + burst = 44, plus what 3 nodes of 2 workers hold (3 × 2 × 2 × 1);
    // three independent nodes would admit about 130.
    assert!(got <= 56, "{got}: the key's rate was not shared");
    assert!(got >= 30, "{got}: far under the rate");
}

#[test]
fn a_redis_with_a_password() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--requirepass", "s3cret-redis-pass"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let _redis = Redis { child, port };
    assert!(wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let store = |password: &str| {
        yaml_store(
            &format!(
                "{{ url: \"redis://127.0.0.1:{port}/0\", password: {{ env: {password} }}, key_prefix: \"sgpw:\" }}"
            ),
            "v1",
        )
    };
    let env = [
        ("SG_TEST_ADMIN_TOKEN", TOKEN),
        ("ALICE_KEY", ALICE),
        ("REDIS_PASSWORD", "s3cret-redis-pass"),
        ("WRONG_PASSWORD", "not-it"),
    ];
    let a = Gateway::start_env(&store("REDIS_PASSWORD"), &[], &env);
    let b = Gateway::start_env(&store("REDIS_PASSWORD"), &[], &env);
    let k = api(&a, "POST", "/apikeys", r#"{"name":"pw","plans":["gold"]}"#);
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(
        reaches(&b, &value, 200, Duration::from_secs(1)).is_some(),
        "log:\n{}",
        b.log()
    );
    // A wrong password: that node cannot use Redis (and says so).
    let wrong = Gateway::start_env(&store("WRONG_PASSWORD"), &[], &env);
    assert_eq!(call(&wrong, "GET", "/cluster", "").status, 503);
}

/// One client per address, all at once, looping GETs of `path` for `secs`
/// seconds (a short pause after each 429); the requests answered 200, and the
/// seconds it took. Any answer but 200 or 429 fails the test.
fn admitted_for(addrs: &[SocketAddr], path: &str, key: Option<&str>, secs: f64) -> (usize, f64) {
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = addrs
        .iter()
        .map(|&addr| {
            let admitted = std::sync::Arc::clone(&admitted);
            let (path, key) = (path.to_owned(), key.map(str::to_owned));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let headers: Vec<(&str, &str)> = key
                    .as_deref()
                    .map(|k| ("x-api-key", k))
                    .into_iter()
                    .collect();
                while started.elapsed() < Duration::from_secs_f64(secs) {
                    match c.request("GET", &path, "gw.test", &headers, b"").status {
                        200 => {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        429 => std::thread::sleep(Duration::from_millis(2)),
                        s => panic!("unexpected {s}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (
        admitted.load(std::sync::atomic::Ordering::SeqCst),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn connections_calls_on_any_node_reach_the_node_holding_the_connection() {
    use common::ws::{close_code, handshake_with, manage, read_frame};
    let redis = Redis::start();
    let be = common::Upstream::start(|_| common::Reply::ok(""));
    let yaml = format!(
        "workers: 2
listeners: [ {{ name: public, bind: \"127.0.0.1:0\" }} ]
store:
  redis: {{ url: \"redis://127.0.0.1:{}/0\", key_prefix: \"sgws:\" }}
apis:
{}",
        redis.port,
        common::ws::connections_api(&be.url())
    );
    let a = Gateway::start(&yaml);
    let b = Gateway::start(&yaml);
    let (mut client, status) = handshake_with(a.addr, "/prod", "");
    assert_eq!(status, 101);
    let connected = || -> Vec<String> {
        be.seen()
            .iter()
            .filter(|r| r.target == "/connect")
            .filter_map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.body).ok()?["requestContext"]
                    ["connectionId"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let id = connected().pop().expect("the $connect event");
    let secret = "conn-secret-0123456789";
    let on_b = format!("http://{}/prod", b.addr);
    let on_a = format!("http://{}/prod", a.addr);
    // Posts through B reach the client on A, in order.
    for i in 0..5 {
        let r = manage(&on_b, secret, &["post", &id, &format!("via b {i}")]);
        assert_eq!(r["status"], 200, "{r}\nlog of b:\n{}", b.log());
        assert_eq!(
            read_frame(&mut client),
            Some((1, format!("via b {i}").into_bytes()))
        );
    }
    let r = manage(&on_b, secret, &["get", &id]);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["identity"]["SourceIp"], "127.0.0.1");
    // An id of no node is gone at once; so is one of this stage's ids on another stage.
    let r = manage(&on_b, secret, &["post", "AAAAAAAAAAAAAAAAAAAAAAAAAAA", "x"]);
    assert_eq!(
        (r["status"].as_u64(), r["error"].as_str()),
        (Some(410), Some("GoneException"))
    );
    // DELETE through B closes it on A; then it is gone on both nodes.
    let r = manage(&on_b, secret, &["delete", &id]);
    assert_eq!(r["status"], 204, "{r}");
    assert_eq!(close_code(&mut client), 1000);
    for endpoint in [&on_b, &on_a] {
        assert!(
            wait_until(Duration::from_secs(3), || manage(
                endpoint,
                secret,
                &["post", &id, "x"]
            )["status"]
                == 410),
            "{endpoint}"
        );
    }
    // The relay survives Redis going away and coming back.
    let mut redis = redis;
    redis.restart();
    let (mut again, status) = handshake_with(a.addr, "/prod", "x-again: 1\r\n");
    assert_eq!(status, 101);
    let id2 = connected()
        .into_iter()
        .find(|i| *i != id)
        .expect("a second $connect event");
    assert!(
        wait_until(Duration::from_secs(10), || manage(
            &on_b,
            secret,
            &["post", &id2, "after the restart"]
        )["status"]
            == 200),
        "log of b:\n{}",
        b.log()
    );
    assert_eq!(
        read_frame(&mut again),
        Some((1, b"after the restart".to_vec()))
    );
}
