//! What operators rely on besides the APIs: `shardgate --version` names the
//! commit, `shardgate run` finds its config in `SHARDGATE_CONFIG` (as the
//! packaged systemd unit sets it), and every metric the Grafana dashboard in
//! `contrib/grafana/` queries exists in `/metrics`, with the labels it groups by.
//! (The Debian package is built, installed and run by `packaging/test-deb.sh`,
//! which `.ci/run` runs: it needs root.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use common::{bin, Client, Gateway, Upstream};

#[test]
fn version_names_the_commit() {
    let out = Command::new(bin()).arg("--version").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let want = format!("shardgate {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&want), "{text}");
    let commit = text[want.len()..].trim_end().trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
    // Built from a git checkout: the stamp is a commit of it (HEAD at build time).
    let in_git = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists();
    if in_git && commit != "unknown" && std::env::var_os("SHARDGATE_COMMIT").is_none() {
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(known, "{commit} is not a commit of this checkout");
    }
}

#[test]
fn run_reads_the_config_path_from_the_environment() {
    let gw = Gateway::start_config_env(
        "listeners:
  - name: test
    bind: 127.0.0.1:0
apis:
  - name: a
    type: http
    routes:
      - route: GET /hello
        integration: { type: mock, status: 200, body: from-env }
    stages:
      - name: prod
",
    );
    let r = common::get(gw.addr, "/prod/hello");
    assert_eq!((r.status, r.text().as_str()), (200, "from-env"));
}

#[test]
fn packaged_configs_validate() {
    for f in [
        "packaging/deb/shardgate.yaml",
        "packaging/docker/shardgate.yaml",
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let (code, out) = common::validate_file(&path, &[]);
        assert_eq!(code, 0, "{f}: {out}");
    }
}

/// `(metric, labels)` of each series line of a Prometheus text page.
fn series(text: &str) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line.split(' ').next().unwrap_or(""), ""),
        };
        let labels = out.entry(name.to_owned()).or_default();
        for pair in rest.split("\",") {
            if let Some((k, _)) = pair.split_once("=\"") {
                labels.insert(k.trim_start_matches(',').to_owned());
            }
        }
    }
    out
}

#[test]
fn grafana_dashboard_queries_metrics_that_exist() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/grafana/shardgate.json"
        ))
        .expect("contrib/grafana/shardgate.json"),
    )
    .expect("the dashboard is JSON");
    let be = Upstream::echo();
    // Every kind of series the dashboard reads: routes (with a cache and a usage
    // plan), an upstream group with a health check, a WebSocket API.
    let gw = Gateway::start(&format!(
        "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
admin: {{ bind: 127.0.0.1:0 }}
upstreams:
  - name: pool
    targets: [{{ url: \"{be}\" }}]
    health_check: {{ path: /health, interval_ms: 200 }}
apis:
  - name: shop
    type: http
    routes:
      - route: GET /pets
        integration: {{ type: http_proxy, upstream: pool, uri: /pets }}
    stages:
      - name: prod
        cache: {{ capacity_mb: 1 }}
        routes:
          \"GET /pets\": {{ cache: {{ ttl_s: 30 }} }}
  - name: chat
    type: websocket
    route_selection_expression: \"$request.body.action\"
    routes:
      - route: $default
        integration: {{ type: mock, body: ok }}
    stages:
      - name: live
",
        be = be.url()
    ));
    for _ in 0..3 {
        assert_eq!(common::get(gw.addr, "/prod/pets").status, 200);
    }
    let mut c = Client::connect(gw.admin.expect("admin"));
    let text = c.request("GET", "/metrics", "admin", &[], b"").text();
    let have = series(&text);
    let mut checked = 0;
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let grouped: Vec<&str> = expr
                .split("by (")
                .skip(1)
                .filter_map(|s| s.split_once(')'))
                .flat_map(|(l, _)| l.split(',').map(str::trim))
                .filter(|l| *l != "le")
                .collect();
            let names = expr
                .match_indices("shardgate_")
                .map(|(i, _)| {
                    let tail = &expr[i..];
                    let end = tail
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(tail.len());
                    &tail[..end]
                })
                .collect::<BTreeSet<_>>();
            assert!(
                !names.is_empty(),
                "{}: no shardgate metric in {expr}",
                p["title"]
            );
            for name in names {
                let labels = have.get(name).unwrap_or_else(|| {
                    panic!("{}: {name} is not in /metrics ({expr})", p["title"])
                });
                for l in &grouped {
                    assert!(
                        labels.contains(*l),
                        "{}: {name} has no label {l:?} (has {labels:?})",
                        p["title"]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} metric references checked");
    // The dashboard's variables read the route series' labels.
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            assert!(q.contains("shardgate_requests_total"), "{q}");
        }
    }
}
