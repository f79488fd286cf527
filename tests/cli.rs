//! The management CLI against a running gateway's admin API.

mod common;

use std::process::Command;

use common::{bin, config, Gateway};
use serde_json::Value;

const TOKEN: &str = "cli-test-admin-token-0123";

struct Cli {
    admin: String,
    token: String,
}

impl Cli {
    /// Runs `shardgate ARGS`: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .args(args)
            .env("SHARDGATE_ADMIN", &self.admin)
            .env("SHARDGATE_ADMIN_TOKEN", &self.token)
            .output()
            .expect("run the CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

#[test]
fn keys_plans_usage_and_access_keys() {
    let yaml = config(
        "admin: { bind: 127.0.0.1:0, token: { env: SG_ADMIN } }
apis:
  - name: shop
    routes:
      - { route: GET /orders, api_key_required: true, integration: { type: mock, body: orders } }
    stages: [ { name: prod } ]
usage_plans:
  - { name: gold, stages: [shop/prod], quota: { limit: 100, period: day } }
",
    );
    let gw = Gateway::start_env(&yaml, &[], &[("SG_ADMIN", TOKEN)]);
    let cli = Cli {
        admin: format!("http://{}", gw.admin.unwrap()),
        token: TOKEN.into(),
    };
    let created = cli.json(&["keys", "create", "--name", "ci", "--plan", "gold"]);
    let id = created["id"].as_str().unwrap().to_owned();
    let value = created["value"].as_str().unwrap().to_owned();
    let list = cli.json(&["keys", "list"]);
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["id"] == id.as_str() && k["name"] == "ci"));
    let use_key = || {
        let mut c = common::Client::connect(gw.addr);
        c.request(
            "GET",
            "/prod/orders",
            "gw.test",
            &[("x-api-key", &value)],
            b"",
        )
        .status
    };
    assert_eq!(use_key(), 200);
    assert_eq!(cli.json(&["keys", "disable", &id])["enabled"], false);
    assert!(common::wait_until(
        std::time::Duration::from_secs(2),
        || use_key() == 403
    ));
    assert_eq!(cli.json(&["keys", "enable", &id])["enabled"], true);
    assert!(common::wait_until(
        std::time::Duration::from_secs(2),
        || use_key() == 200
    ));

    let plans = cli.json(&["plans", "list"]);
    assert_eq!(plans["items"][0]["name"], "gold");
    assert_eq!(cli.json(&["plans", "show", "gold"])["quota"]["limit"], 100);
    let day = common::today();
    let usage = cli.json(&["usage", "gold", "--from", &day, "--to", &day, "--key", &id]);
    let used = usage["values"][&id][0][0].as_u64().unwrap();
    assert!(used >= 2, "{usage}");

    let ak = cli.json(&["access-keys", "create", "--allow", "shop/prod/GET/*"]);
    let ak_id = ak["id"].as_str().unwrap().to_owned();
    assert!(ak["secret"].as_str().unwrap().len() >= 16);
    let listed = cli.run(&["access-keys", "list"]).1;
    assert!(listed.contains(&ak_id) && !listed.contains(ak["secret"].as_str().unwrap()));
    assert_eq!(cli.run(&["access-keys", "delete", &ak_id]).0, 0);

    // Import: AWS's CSV.
    let csv = std::env::temp_dir().join(format!("sg-cli-{}.csv", std::process::id()));
    std::fs::write(
        &csv,
        "name,key,enabled,usageplanIds\nimported,abcdefghij0123456789XY,true,gold\n",
    )
    .unwrap();
    let imported = cli.json(&["keys", "import", csv.to_str().unwrap()]);
    let _ = std::fs::remove_file(&csv);
    assert_eq!(imported["ids"].as_array().unwrap().len(), 1, "{imported}");

    assert_eq!(cli.run(&["keys", "delete", &id]).0, 0);
    // Errors: the API's status and message, exit 1.
    let (code, _, err) = cli.run(&["keys", "show", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let wrong = Cli {
        admin: cli.admin.clone(),
        token: "wrong-token-0123456789".into(),
    };
    let (code, _, err) = wrong.run(&["keys", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let nowhere = Cli {
        admin: "http://127.0.0.1:1".into(),
        token: TOKEN.into(),
    };
    let (code, _, err) = nowhere.run(&["plans", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("connect"), "{err}");
}
