//! The management API on the admin listener, over real sockets: the bearer token,
//! key and usage-plan CRUD, CSV import, the usage report and quota reset, changes
//! reaching running workers within a second, the store across restarts (clean and
//! `kill -9`), and key rotation under load.

// Tests and the control plane may share state under a mutex; the request path may not (clippy.toml).
#![allow(clippy::disallowed_types)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";
const ALICE: &str = "alice0123456789abcdefXYZ";

fn yaml(extra: &str, store: Option<&std::path::Path>) -> String {
    let store = store
        .map(|p| format!("store: {{ path: {} }}\n", p.display()))
        .unwrap_or_default();
    format!(
        "workers: 2
listeners: [ {{ name: public, bind: \"127.0.0.1:0\" }} ]
admin: {{ bind: \"127.0.0.1:0\", token: {{ env: SG_TEST_ADMIN_TOKEN }} }}
{store}apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets', api_key_required: true, integration: {{ type: mock, body: pets }} }}
    stages: [ {{ name: prod }}, {{ name: beta }} ]
{extra}"
    )
}

fn start(extra: &str, store: Option<&std::path::Path>) -> Gateway {
    start_env(extra, store, &[])
}

fn start_env(extra: &str, store: Option<&std::path::Path>, env: &[(&str, &str)]) -> Gateway {
    let mut all = vec![("SG_TEST_ADMIN_TOKEN", TOKEN), ("ALICE_KEY", ALICE)];
    all.extend_from_slice(env);
    let gw = Gateway::start_env(&yaml(extra, store), &[], &all);
    assert!(gw.admin.is_some(), "no admin listener; log:\n{}", gw.log());
    gw
}

/// One management call; `token` None sends no Authorization header.
fn call(gw: &Gateway, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let admin: SocketAddr = gw.admin.expect("admin listener");
    let mut c = Client::connect(admin);
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    c.request(method, path, "admin.test", &headers, body.as_bytes())
}

fn api(gw: &Gateway, method: &str, path: &str, body: &str) -> serde_json::Value {
    let r = call(gw, method, path, Some(TOKEN), body);
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.text()
    );
    if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&r.body).expect("JSON body")
    }
}

fn pets(addr: SocketAddr, stage: &str, key: &str) -> Response {
    Client::connect(addr).request(
        "GET",
        &format!("/{stage}/pets"),
        "gw.test",
        &[("x-api-key", key)],
        b"",
    )
}

/// Waits (at most the one second the issue allows) until `key` gets `status`.
fn reaches(gw: &Gateway, stage: &str, key: &str, status: u16) -> bool {
    wait_until(Duration::from_secs(1), || {
        pets(gw.addr, stage, key).status == status
    })
}

fn temp_store(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shardgate-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn management_api_requires_the_bearer_token() {
    let gw = start("", None);
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let r = call(&gw, "GET", "/apikeys", token, "");
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert_eq!(r.text().trim(), r#"{"message":"Unauthorized"}"#);
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(call(&gw, "GET", "/apikeys", Some(TOKEN), "").status, 200);
    // Health needs no token.
    assert_eq!(call(&gw, "GET", "/health", None, "").status, 200);
    assert_eq!(call(&gw, "GET", "/nope", Some(TOKEN), "").status, 404);
    assert_eq!(call(&gw, "DELETE", "/apikeys", Some(TOKEN), "").status, 405);
    let bad = call(&gw, "POST", "/apikeys", Some(TOKEN), "{not json");
    assert_eq!(bad.status, 400, "{}", bad.text());
    // The test clock is off unless the environment turns it on.
    let r = call(
        &gw,
        "POST",
        "/test/clock",
        Some(TOKEN),
        r#"{"advance_s": 1}"#,
    );
    assert_eq!(r.status, 404);

    // Without a token configured, the management API refuses everything.
    let no_token =
        Gateway::start(&yaml("", None).replace(", token: { env: SG_TEST_ADMIN_TOKEN }", ""));
    let admin = no_token.admin.expect("admin listener");
    let mut c = Client::connect(admin);
    let r = c.request(
        "GET",
        "/apikeys",
        "a",
        &[("authorization", "Bearer x")],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.text());
}

#[test]
fn admin_config_errors_are_reported() {
    let text = yaml("", None)
        .replace("bind: \"127.0.0.1:0\", token", "bind: \"nowhere\", token")
        .replace("SG_TEST_ADMIN_TOKEN", "SG_TEST_UNSET_TOKEN_VAR");
    let (code, text) = validate(&text);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("admin.bind"), "{text}");
    assert!(
        text.contains("admin.token.env: environment variable SG_TEST_UNSET_TOKEN_VAR is not set"),
        "{text}"
    );
}

#[test]
fn keys_are_created_changed_and_deleted_at_run_time() {
    let gw = start(
        "usage_plans:\n  - { name: gold, stages: [pets/prod] }\n",
        None,
    );
    // Created with a plan: the value is shown once, and works within a second.
    let k = api(
        &gw,
        "POST",
        "/apikeys",
        r#"{"name":"bob","description":"Bob's key","plans":["gold"]}"#,
    );
    let id = k["id"].as_str().unwrap().to_owned();
    let value = k["value"].as_str().unwrap().to_owned();
    assert!(value.len() >= 20 && value.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(k["enabled"], true);
    assert!(
        reaches(&gw, "prod", &value, 200),
        "new key not live within 1 s"
    );
    assert_eq!(
        pets(gw.addr, "beta", &value).status,
        403,
        "gold does not cover beta"
    );
    let shown = api(&gw, "GET", &format!("/apikeys/{id}"), "");
    assert_eq!(shown["name"], "bob");
    assert_eq!(shown["description"], "Bob's key");
    assert!(shown.get("value").is_none(), "the value is shown only once");
    let listed = api(&gw, "GET", "/apikeys", "");
    assert!(listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id.as_str()));
    assert!(
        !listed.to_string().contains(&value),
        "list must not show values"
    );

    // A value of the caller's choosing; and a duplicate value is refused.
    let mine = "carol0123456789abcdefXYZ";
    let c = api(
        &gw,
        "POST",
        "/apikeys",
        &format!(r#"{{"name":"carol","value":"{mine}","plans":["gold"]}}"#),
    );
    assert_eq!(c["value"], mine);
    let dup = call(
        &gw,
        "POST",
        "/apikeys",
        Some(TOKEN),
        &format!(r#"{{"value":"{mine}"}}"#),
    );
    assert_eq!(dup.status, 409, "{}", dup.text());
    let short = call(&gw, "POST", "/apikeys", Some(TOKEN), r#"{"value":"short"}"#);
    assert_eq!(short.status, 400, "{}", short.text());
    let no_plan = call(
        &gw,
        "POST",
        "/apikeys",
        Some(TOKEN),
        r#"{"plans":["platinum"]}"#,
    );
    assert_eq!(no_plan.status, 400, "{}", no_plan.text());

    // Disabled, enabled again, deleted: each within a second.
    api(
        &gw,
        "PATCH",
        &format!("/apikeys/{id}"),
        r#"{"enabled":false}"#,
    );
    assert!(
        reaches(&gw, "prod", &value, 403),
        "disable not applied within 1 s"
    );
    api(
        &gw,
        "PATCH",
        &format!("/apikeys/{id}"),
        r#"{"enabled":true}"#,
    );
    assert!(
        reaches(&gw, "prod", &value, 200),
        "enable not applied within 1 s"
    );
    api(&gw, "DELETE", &format!("/apikeys/{id}"), "");
    assert!(
        reaches(&gw, "prod", &value, 403),
        "delete not applied within 1 s"
    );
    assert_eq!(
        call(&gw, "GET", &format!("/apikeys/{id}"), Some(TOKEN), "").status,
        404
    );
    assert_eq!(
        call(&gw, "DELETE", &format!("/apikeys/{id}"), Some(TOKEN), "").status,
        404
    );
}

#[test]
fn keys_are_imported_from_aws_csv() {
    let gw = start(
        "usage_plans:\n  - { name: gold, stages: [pets/prod] }\n  - { name: free, stages: [pets/beta] }\n",
        None,
    );
    let a = "importedKeyA0123456789ab";
    let b = "importedKeyB0123456789ab";
    let c = "importedKeyC0123456789ab";
    let csv = format!(
        "Name,Key,Description,Enabled,UsagePlanIds\n\
         a,{a},first,TRUE,gold\n\
         b,{b},second,false,\"gold,free\"\n\
         bad,tooshort,third,true,gold\n\
         c,{c},fourth,true,nosuchplan\n"
    );
    let r = call(
        &gw,
        "POST",
        "/apikeys/import?failonwarnings=true",
        Some(TOKEN),
        &csv,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        reaches(&gw, "prod", a, 403),
        "nothing imported on failonwarnings"
    );

    let out = api(&gw, "POST", "/apikeys?mode=import&format=csv", &csv);
    assert_eq!(out["ids"].as_array().unwrap().len(), 2, "{out}");
    let warnings = out["warnings"].to_string();
    assert!(
        warnings.contains("line 4") && warnings.contains("line 5"),
        "{warnings}"
    );
    assert!(reaches(&gw, "prod", a, 200));
    assert_eq!(pets(gw.addr, "prod", b).status, 403, "b is disabled");
    let keys = api(&gw, "GET", "/apikeys", "");
    let b_def = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "b")
        .cloned()
        .unwrap();
    assert_eq!(b_def["plans"], serde_json::json!(["gold", "free"]));
    assert_eq!(b_def["description"], "second");
    // Importing the same key again is a warning, not a second key.
    let again = api(
        &gw,
        "POST",
        "/apikeys/import",
        &format!("key,name\n{a},again\n"),
    );
    assert_eq!(again["ids"].as_array().unwrap().len(), 0);
    assert!(again["warnings"].to_string().contains("exists"));
    let bad_header = call(&gw, "POST", "/apikeys/import", Some(TOKEN), "colour\nred\n");
    assert_eq!(bad_header.status, 400);
}

#[test]
fn usage_plans_are_managed_and_keys_attached() {
    let gw = start("", None);
    let plan = r#"{"name":"silver","description":"mid tier","stages":["pets/prod"],"throttle":{"rate":100,"burst":200},"quota":{"limit":1000,"period":"month"}}"#;
    let p = api(&gw, "POST", "/usageplans", plan);
    assert_eq!(p["id"], "silver");
    assert_eq!(p["quota"]["period"], "month");
    assert_eq!(
        call(&gw, "POST", "/usageplans", Some(TOKEN), plan).status,
        409
    );
    let bad = call(
        &gw,
        "POST",
        "/usageplans",
        Some(TOKEN),
        r#"{"name":"x","stages":["pets/nope"]}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("no stage"), "{}", bad.text());

    let k = api(&gw, "POST", "/apikeys", r#"{"name":"dan"}"#);
    let (id, value) = (k["id"].as_str().unwrap(), k["value"].as_str().unwrap());
    assert!(reaches(&gw, "prod", value, 403), "in no plan yet");
    api(
        &gw,
        "POST",
        "/usageplans/silver/keys",
        &format!(r#"{{"keyId":"{id}","keyType":"API_KEY"}}"#),
    );
    assert!(
        reaches(&gw, "prod", value, 200),
        "attach not applied within 1 s"
    );
    let r = pets(gw.addr, "prod", value);
    assert_eq!(r.header("x-ratelimit-limit"), Some("1000"));
    let keys = api(&gw, "GET", "/usageplans/silver/keys", "");
    assert_eq!(keys["items"][0]["id"], id);
    assert_eq!(keys["items"][0]["type"], "API_KEY");

    // A second plan on the same stage: refused for this key.
    api(
        &gw,
        "POST",
        "/usageplans",
        r#"{"name":"bronze","stages":["pets/prod","pets/beta"]}"#,
    );
    let clash = call(
        &gw,
        "POST",
        "/usageplans/bronze/keys",
        Some(TOKEN),
        &format!(r#"{{"key_id":"{id}"}}"#),
    );
    assert_eq!(clash.status, 409, "{}", clash.text());

    // Updating the plan's quota applies to running workers.
    let updated = plan.replace("1000", "5");
    api(&gw, "PUT", "/usageplans/silver", &updated);
    assert!(
        wait_until(Duration::from_secs(1), || {
            pets(gw.addr, "prod", value).header("x-ratelimit-limit") == Some("5")
        }),
        "plan update not applied within 1 s"
    );
    // The plan's stages widen to beta.
    api(
        &gw,
        "PUT",
        "/usageplans/silver",
        &updated.replace(r#"["pets/prod"]"#, r#"["pets/prod","pets/beta"]"#),
    );
    assert!(reaches(&gw, "beta", value, 200) || pets(gw.addr, "beta", value).status == 429);
    assert_eq!(
        api(&gw, "GET", "/usageplans", "")["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    api(&gw, "DELETE", &format!("/usageplans/silver/keys/{id}"), "");
    assert!(
        reaches(&gw, "prod", value, 403),
        "detach not applied within 1 s"
    );
    api(
        &gw,
        "POST",
        "/usageplans/silver/keys",
        &format!(r#"{{"keyId":"{id}"}}"#),
    );
    api(&gw, "DELETE", "/usageplans/silver", "");
    assert!(
        reaches(&gw, "prod", value, 403),
        "plan delete not applied within 1 s"
    );
    assert_eq!(
        api(&gw, "GET", &format!("/apikeys/{id}"), "")["plans"],
        serde_json::json!([])
    );
    assert_eq!(
        call(&gw, "GET", "/usageplans/silver", Some(TOKEN), "").status,
        404
    );
}

#[test]
fn usage_report_and_quota_reset() {
    let gw = start_env(
        "usage_plans:
  - { name: gold, stages: [pets/prod, pets/beta], quota: { limit: 10, period: day } }
  - { name: free, stages: [pets/prod] }
api_keys:
  - { name: alice, value: { env: ALICE_KEY }, plans: [gold] }
",
        None,
        &[("SHARDGATE_TEST_CLOCK", "1")],
    );
    let alice = api(&gw, "GET", "/apikeys", "")["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for stage in ["prod", "beta", "prod", "beta"] {
        assert_eq!(pets(gw.addr, stage, ALICE).status, 200);
    }
    let day = common::today();
    let report = api(
        &gw,
        "GET",
        &format!("/usageplans/gold/usage?startDate={day}&endDate={day}"),
        "",
    );
    assert_eq!(report["usagePlanId"], "gold");
    assert_eq!(report["startDate"], day.as_str());
    assert_eq!(
        report["values"][&alice],
        serde_json::json!([[4, 6]]),
        "{report}"
    );

    // Reset what is left: AWS's UpdateUsage patch.
    let patched = api(
        &gw,
        "PATCH",
        &format!("/usageplans/gold/keys/{alice}/usage"),
        r#"{"patchOperations":[{"op":"replace","path":"/remaining","value":"1"}]}"#,
    );
    assert_eq!(
        patched["values"][&alice],
        serde_json::json!([[4, 1]]),
        "{patched}"
    );
    assert_eq!(pets(gw.addr, "prod", ALICE).status, 200);
    let over = pets(gw.addr, "beta", ALICE);
    assert_eq!(over.status, 429, "{}", over.text());
    assert_eq!(over.text(), r#"{"message":"Limit Exceeded"}"#);
    let report = api(
        &gw,
        "GET",
        &format!("/usageplans/gold/usage?startDate={day}&endDate={day}&keyId={alice}"),
        "",
    );
    assert_eq!(
        report["values"][&alice],
        serde_json::json!([[5, 0]]),
        "{report}"
    );

    // The next UTC day (the gateway's clock moved forward): a new period, full again.
    api(&gw, "POST", "/test/clock", r#"{"advance_s": 86400}"#);
    assert_eq!(pets(gw.addr, "prod", ALICE).status, 200);
    let next = {
        let d = shardgate::clock::parse_date(&day).unwrap() + 1;
        shardgate::clock::format_date(d)
    };
    let report = api(
        &gw,
        "GET",
        &format!("/usageplans/gold/usage?startDate={day}&endDate={next}"),
        "",
    );
    assert_eq!(report["endDate"], next.as_str());
    assert_eq!(
        report["values"][&alice],
        serde_json::json!([[5, 0], [1, 9]]),
        "{report}"
    );

    // A plan without a quota still counts; its remaining is null.
    for bad in [
        "/usageplans/gold/usage?startDate=2026-02-30&endDate=2026-03-01",
        "/usageplans/gold/usage?endDate=2026-03-01",
        "/usageplans/gold/usage?startDate=2026-03-02&endDate=2026-03-01",
    ] {
        assert_eq!(call(&gw, "GET", bad, Some(TOKEN), "").status, 400, "{bad}");
    }
    assert_eq!(
        call(
            &gw,
            "GET",
            &format!("/usageplans/none/usage?startDate={day}&endDate={day}"),
            Some(TOKEN),
            ""
        )
        .status,
        404
    );
    let k = api(
        &gw,
        "POST",
        "/apikeys",
        r#"{"name":"freeloader","plans":["free"]}"#,
    );
    let (fid, fvalue) = (k["id"].as_str().unwrap(), k["value"].as_str().unwrap());
    assert!(reaches(&gw, "prod", fvalue, 200));
    let r = pets(gw.addr, "prod", fvalue);
    assert!(
        r.header("x-ratelimit-limit").is_none(),
        "no quota, no quota headers"
    );
    let report = api(
        &gw,
        "GET",
        &format!("/usageplans/free/usage?startDate={next}&endDate={next}"),
        "",
    );
    assert_eq!(
        report["values"][fid],
        serde_json::json!([[2, null]]),
        "{report}"
    );
}

#[test]
fn keys_and_quota_survive_restarts() {
    let store = temp_store("restart");
    let plans = "usage_plans:
  - { name: gold, stages: [pets/prod], quota: { limit: 10, period: month } }
api_keys:
  - { name: alice, value: { env: ALICE_KEY }, plans: [gold] }
";
    let mut gw = start(plans, Some(&store));
    let k = api(
        &gw,
        "POST",
        "/apikeys",
        r#"{"name":"bob","plans":["gold"]}"#,
    );
    let bob = k["value"].as_str().unwrap().to_owned();
    assert!(reaches(&gw, "prod", &bob, 200));
    for _ in 0..5 {
        assert_eq!(pets(gw.addr, "prod", ALICE).status, 200);
    }
    gw.sigterm();
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));

    // A clean stop returned the unspent leases: exactly 5 of 10 are left.
    let mut gw = start(plans, Some(&store));
    assert_eq!(
        pets(gw.addr, "prod", &bob).status,
        200,
        "an API-made key survives"
    );
    let mut admitted = 0;
    for _ in 0..8 {
        if pets(gw.addr, "prod", ALICE).status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "quota after a clean restart");
    // Bob uses 3 of his, then the process is killed.
    for _ in 0..3 {
        assert_eq!(pets(gw.addr, "prod", &bob).status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    gw.kill9();

    // kill -9: Bob's count is never below what was served; at most one lease per
    // worker (here 1 request each, since a lease is at most a quarter of what is
    // left per worker) is lost to him.
    let gw = start(plans, Some(&store));
    let mut admitted = 0;
    for _ in 0..8 {
        if pets(gw.addr, "prod", &bob).status == 200 {
            admitted += 1;
        }
    }
    assert!(
        (4..=6).contains(&admitted),
        "bob after kill -9: {admitted} of 6 left"
    );
    assert_eq!(pets(gw.addr, "prod", ALICE).status, 429);
    drop(gw);
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn a_second_gateway_cannot_share_the_store() {
    let store = temp_store("locked");
    let _first = start("", Some(&store));
    let path = write_config(&yaml("", Some(&store)));
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("SG_TEST_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open store"), "{err}");
    drop(_first);
    let _ = std::fs::remove_dir_all(&store);
}

/// Clients hammer the gateway with a valid key while keys are created, imported,
/// disabled, deleted and plans changed; then the key itself is rotated. No request
/// made with a key that was valid at the time fails.
#[test]
fn key_rotation_under_load_fails_no_valid_request() {
    let gw = start(
        "usage_plans:
  - { name: gold, stages: [pets/prod], throttle: { rate: 1000000, burst: 1000000 } }
api_keys:
  - { name: alice, value: { env: ALICE_KEY }, plans: [gold] }
",
        None,
    );
    let current = Arc::new(std::sync::Mutex::new(ALICE.to_owned()));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicU64::new(0));
    let addr = gw.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (current, stop, failures, served) = (
                current.clone(),
                stop.clone(),
                failures.clone(),
                served.clone(),
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let key = current.lock().unwrap().clone();
                    let r = c.request("GET", "/prod/pets", "gw.test", &[("x-api-key", &key)], b"");
                    if r.status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.lock().unwrap().push(format!(
                            "{} with {key}: {}",
                            r.status,
                            r.text()
                        ));
                    }
                }
            })
        })
        .collect();
    // Churn around the valid key.
    for i in 0..20 {
        let k = api(
            &gw,
            "POST",
            "/apikeys",
            &format!(r#"{{"name":"churn{i}","plans":["gold"]}}"#),
        );
        let id = k["id"].as_str().unwrap().to_owned();
        api(
            &gw,
            "PATCH",
            &format!("/apikeys/{id}"),
            r#"{"enabled":false}"#,
        );
        if i % 2 == 0 {
            api(&gw, "DELETE", &format!("/apikeys/{id}"), "");
        }
    }
    let csv: String = (0..50)
        .map(|i| format!("churnImported{i:012}x,imp{i},,true,gold\n"))
        .collect();
    api(
        &gw,
        "POST",
        "/apikeys/import",
        &format!("key,name,description,enabled,usageplanIds\n{csv}"),
    );
    api(
        &gw,
        "PUT",
        "/usageplans/gold",
        r#"{"name":"gold","stages":["pets/prod"],"throttle":{"rate":2000000,"burst":2000000}}"#,
    );

    // Rotation: a new key, used once it works, then the old one deleted.
    let k = api(
        &gw,
        "POST",
        "/apikeys",
        r#"{"name":"alice-2","plans":["gold"]}"#,
    );
    let new_value = k["value"].as_str().unwrap().to_owned();
    assert!(reaches(&gw, "prod", &new_value, 200));
    let before = served.load(Ordering::Relaxed);
    *current.lock().unwrap() = new_value.clone();
    // Requests already on the wire with the old key finish before it goes.
    std::thread::sleep(Duration::from_millis(200));
    let alice_id = api(&gw, "GET", "/apikeys", "")["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "alice")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    api(&gw, "DELETE", &format!("/apikeys/{alice_id}"), "");
    assert!(
        reaches(&gw, "prod", ALICE, 403),
        "old key still valid after 1 s"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total = served.load(Ordering::Relaxed);
    assert!(
        total > before && before > 100,
        "load too light: {before} then {total}"
    );
}
