//! Access control over real sockets: JWT (tokens signed here, a JWKS endpoint), the
//! request authorizer (an endpoint started here), SigV4 (requests signed by
//! botocore), resource policies with X-Forwarded-For, CORS, request validation.

// Tests and the control plane may share state under a mutex; the request path may not (clippy.toml).
#![allow(clippy::disallowed_types)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, Client, Gateway, Reply, Upstream};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public JWK.
struct SigningKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Jwk,
    public_pem: String,
}

fn rsa_key(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    signing_key(kid, Algorithm::RS256, &kp)
}

fn ec_key(kid: &str) -> SigningKey {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    signing_key(kid, Algorithm::ES256, &kp)
}

fn signing_key(kid: &str, alg: Algorithm, kp: &rcgen::KeyPair) -> SigningKey {
    let pem = kp.serialize_pem();
    let enc = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    SigningKey {
        kid: kid.to_owned(),
        alg,
        enc,
        jwk,
        public_pem: kp.public_key_pem(),
    }
}

fn token(key: &SigningKey, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, claims, &key.enc).unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://id.test/",
        "aud": "petstore",
        "sub": "alice",
        "exp": now_s() + 600,
        "iat": now_s() - 5,
        "scope": "pets:read openid",
    });
    if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
        for (k, v) in e {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn body_json(r: &common::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// A JWKS endpoint whose key set the test changes; counts its fetches.
struct Jwks {
    up: Upstream,
    keys: Arc<Mutex<Vec<Jwk>>>,
}

impl Jwks {
    fn start(keys: Vec<Jwk>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let k2 = Arc::clone(&keys);
        let up = Upstream::start(move |_| {
            let set = JwkSet {
                keys: k2.lock().unwrap().clone(),
            };
            let mut r = Reply::ok(serde_json::to_vec(&set).unwrap());
            r.headers
                .push(("content-type".into(), "application/json".into()));
            r
        });
        Self { up, keys }
    }

    fn fetches(&self) -> usize {
        self.up.seen().len()
    }
}

#[test]
fn jwt_authorizer() {
    let k1 = rsa_key("k1");
    let k2 = ec_key("k2");
    let k3 = rsa_key("k3");
    let stranger = rsa_key("k1");
    let jwks = Jwks::start(vec![k1.jwk.clone(), k2.jwk.clone()]);
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "apis:
  - name: petstore
    authorizers:
      - name: users
        type: jwt
        issuer: https://id.test/
        audience: [petstore, spa-client]
        jwks_uri: {jwks}/.well-known/jwks.json
        refresh_interval_s: 60
        forward: {{ sub: x-jwt-claim-sub }}
    routes:
      - route: GET /me
        authorizer: users
        scopes: [pets:read]
        integration: {{ type: http_proxy, uri: \"{be}/me\" }}
      - route: GET /admin
        authorizer: users
        scopes: [pets:admin]
        integration: {{ type: http_proxy, uri: \"{be}/admin\" }}
    stages: [ {{ name: prod }} ]
",
        jwks = jwks.up.url(),
        be = backend.url()
    ));
    let gw = Gateway::start(&yaml);
    assert!(common::wait_until(Duration::from_secs(3), || jwks
        .fetches()
        >= 1));
    let mut c = Client::connect(gw.addr);
    let get = |c: &mut Client, auth: Option<&str>| {
        let mut h: Vec<(&str, &str)> = vec![("x-jwt-claim-sub", "mallory")];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        c.request("GET", "/prod/me", "gw.test", &h, b"")
    };

    // Missing token: 401 with AWS's body and a challenge; the backend is not called.
    let r = get(&mut c, None);
    assert_eq!(r.status, 401);
    assert_eq!(body_json(&r), json!({"message": "Unauthorized"}));
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));

    // A valid RS256 token, as `Bearer` and bare; the claim is forwarded, the
    // client's forged header is not.
    let good = token(&k1, &claims(json!({})));
    for auth in [bearer(&good), good.clone()] {
        let r = get(&mut c, Some(&auth));
        assert_eq!(r.status, 200, "{} {}", r.text(), gw.log());
        let seen = backend.last();
        assert_eq!(seen.header("x-jwt-claim-sub"), Some("alice"));
        assert_eq!(
            seen.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-jwt-claim-sub"))
                .count(),
            1
        );
    }
    // ES256 with the EC key; `scp` as an array; `client_id` instead of `aud`.
    let r = get(&mut c, Some(&bearer(&token(&k2, &claims(json!({}))))));
    assert_eq!(r.status, 200);
    let scp = claims(json!({"scope": null, "scp": ["pets:read"]}));
    assert_eq!(get(&mut c, Some(&bearer(&token(&k1, &scp)))).status, 200);
    let cid = claims(json!({"aud": null, "client_id": "spa-client"}));
    assert_eq!(get(&mut c, Some(&bearer(&token(&k1, &cid)))).status, 200);

    // Insufficient scope: 403 Forbidden.
    let r = c.request(
        "GET",
        "/prod/admin",
        "gw.test",
        &[("authorization", &bearer(&good))],
        b"",
    );
    assert_eq!(r.status, 403);
    assert_eq!(body_json(&r), json!({"message": "Forbidden"}));
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));

    let served = backend.seen().len();
    // Every pitfall: 401 Unauthorized, and the backend never sees it.
    let header_none = b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = b64(claims(json!({})).to_string().as_bytes());
    let alg_none = format!("{header_none}.{payload}.");
    let hs_confusion = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &EncodingKey::from_secret(k1.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        ("alg none", alg_none),
        ("HS256 with the RSA public key", hs_confusion),
        (
            "signed by another key",
            token(&stranger, &claims(json!({}))),
        ),
        (
            "expired",
            token(
                &k1,
                &claims(json!({"exp": now_s() - 120, "iat": now_s() - 700})),
            ),
        ),
        (
            "not yet valid",
            token(&k1, &claims(json!({"nbf": now_s() + 600}))),
        ),
        (
            "wrong audience",
            token(&k1, &claims(json!({"aud": "other"}))),
        ),
        (
            "wrong issuer",
            token(&k1, &claims(json!({"iss": "https://evil.test/"}))),
        ),
        ("no exp", token(&k1, &claims(json!({"exp": null})))),
        ("garbage", "not.a.jwt".to_owned()),
        ("tampered payload", {
            let t = good.clone();
            let parts: Vec<&str> = t.split('.').collect();
            let forged = b64(claims(json!({"sub": "root"})).to_string().as_bytes());
            format!("{}.{}.{}", parts[0], forged, parts[2])
        }),
    ];
    for (what, t) in &cases {
        let r = get(&mut c, Some(&bearer(t)));
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(body_json(&r), json!({"message": "Unauthorized"}), "{what}");
    }
    assert_eq!(
        backend.seen().len(),
        served,
        "a refused token reached the backend"
    );

    // A key added at the issuer: the unknown kid triggers one refetch, then passes.
    let before = jwks.fetches();
    jwks.keys.lock().unwrap().push(k3.jwk.clone());
    let r = get(&mut c, Some(&bearer(&token(&k3, &claims(json!({}))))));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.fetches(), before + 1);
    // Another unknown kid within the interval: refused at once, no refetch.
    let k9 = rsa_key("k9");
    let started = Instant::now();
    let r = get(&mut c, Some(&bearer(&token(&k9, &claims(json!({}))))));
    assert_eq!(r.status, 401);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(jwks.fetches(), before + 1);
}

#[test]
fn jwt_config_errors() {
    let base = "apis:
  - name: p
    authorizers:
      - { name: a, type: jwt, issuer: https://id.test/, audience: [x], jwks: { keys: [] }, algorithms: [HS256] }
      - { name: b, type: jwt, issuer: https://id.test/, audience: [x], jwks_uri: ftp://x }
    routes:
      - { route: GET /a, authorizer: nobody, integration: { type: mock } }
      - { route: GET /b, scopes: [x], integration: { type: mock } }
    stages: [ { name: prod } ]
";
    let (code, out) = common::validate(&config(base));
    assert_eq!(code, 1);
    for want in [
        "apis[0].authorizers[0].algorithms: \"HS256\" is not accepted",
        "apis[0].authorizers[1].jwks_uri: must be an http(s) URL",
        "apis[0].routes[0].authorizer: no authorizer \"nobody\"",
        "apis[0].routes[1].scopes: scopes need a JWT authorizer",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
}

#[test]
fn request_authorizer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let payloads = Arc::new(Mutex::new(Vec::<Value>::new()));
    let (c2, p2) = (Arc::clone(&calls), Arc::clone(&payloads));
    let authz = Upstream::start(move |s| {
        c2.fetch_add(1, Ordering::SeqCst);
        let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
        let ok = v["headers"]["authorization"] == "Bearer good";
        p2.lock().unwrap().push(v);
        let mut r = Reply::ok(
            json!({"isAuthorized": ok, "context": {"user": "u1", "tier": 2}}).to_string(),
        );
        r.headers
            .push(("content-type".into(), "application/json".into()));
        r
    });
    let slow = Upstream::start(|_| {
        let mut r = Reply::ok(json!({"isAuthorized": true}).to_string());
        r.delay = Duration::from_millis(1500);
        r
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "apis:
  - name: petstore
    authorizers:
      - name: partners
        type: request
        uri: {authz}/authorize
        identity_sources: [header.authorization]
        ttl_s: 2
        forward: {{ user: x-auth-user, tier: x-auth-tier }}
      - {{ name: slow, type: request, uri: {slow}/, identity_sources: [header.authorization], timeout_ms: 300 }}
      - {{ name: down, type: request, uri: \"http://{closed_addr}/\", identity_sources: [header.authorization] }}
    routes:
      - route: GET /pets/{{id}}
        authorizer: partners
        integration: {{ type: http_proxy, uri: \"{be}/pets/{{id}}\" }}
      - {{ route: GET /slow, authorizer: slow, integration: {{ type: mock }} }}
      - {{ route: GET /down, authorizer: down, integration: {{ type: mock }} }}
    stages: [ {{ name: prod }} ]
",
        authz = authz.url(),
        slow = slow.url(),
        be = backend.url()
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    let get = |c: &mut Client, path: &str, auth: Option<&str>| {
        let mut h: Vec<(&str, &str)> = vec![("x-auth-user", "forged")];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        c.request("GET", path, "gw.test", &h, b"")
    };

    // No identity source: 401 without calling.
    let r = get(&mut c, "/prod/pets/7", None);
    assert_eq!(r.status, 401);
    assert_eq!(body_json(&r), json!({"message": "Unauthorized"}));
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Authorized: the context reaches the backend; the event is AWS's 2.0 shape.
    let r = get(&mut c, "/prod/pets/7?x=1", Some("Bearer good"));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = backend.last();
    assert_eq!(seen.header("x-auth-user"), Some("u1"));
    assert_eq!(seen.header("x-auth-tier"), Some("2"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let event = payloads.lock().unwrap()[0].clone();
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["type"], "REQUEST");
    assert_eq!(event["routeKey"], "GET /pets/{id}");
    assert_eq!(event["identitySource"], json!(["Bearer good"]));
    assert_eq!(event["rawPath"], "/prod/pets/7");
    assert_eq!(event["rawQueryString"], "x=1");
    assert_eq!(event["pathParameters"]["id"], "7");
    assert_eq!(event["requestContext"]["stage"], "prod");
    assert_eq!(event["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(
        event["requestContext"]["requestId"].as_str(),
        r.header("apigw-requestid")
    );

    // The same identity again (same connection, same worker): from the cache.
    assert_eq!(get(&mut c, "/prod/pets/8", Some("Bearer good")).status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Refused: 403 Forbidden; cached too.
    for _ in 0..2 {
        let r = get(&mut c, "/prod/pets/7", Some("Bearer bad"));
        assert_eq!(r.status, 403);
        assert_eq!(body_json(&r), json!({"message": "Forbidden"}));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // After ttl_s the authorizer is asked again.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(&mut c, "/prod/pets/7", Some("Bearer good")).status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Too slow, or not there: 500 Internal Server Error; the connection stays usable.
    for path in ["/prod/slow", "/prod/down"] {
        let r = get(&mut c, path, Some("Bearer good"));
        assert_eq!(r.status, 500, "{path}");
        assert_eq!(body_json(&r), json!({"message": "Internal Server Error"}));
    }
    assert_eq!(get(&mut c, "/prod/pets/1", Some("Bearer good")).status, 200);
    assert!(common::wait_until(Duration::from_secs(2), || gw
        .log()
        .contains("request authorizer failed")));
}

fn python() -> &'static str {
    "python3"
}

/// Runs the botocore client: (status, body).
fn signed(args: &[&str]) -> (u16, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/sigv4_client.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "botocore client failed (python3 -m pip install -r tests/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap(), body.to_owned())
}

#[test]
fn sigv4_with_botocore() {
    const ID: &str = "AKIDEXAMPLE12345678";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const LIMITED: &str = "AKIDREADONLY1234567";
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "admin: {{ bind: 127.0.0.1:0, token: {{ env: SG_ADMIN }} }}
apis:
  - name: petstore
    authorizers:
      - name: machines
        type: sigv4
        region: us-east-1
        access_keys:
          - {{ id: {ID}, secret: {{ env: MACHINE_SECRET }} }}
          - {{ id: {LIMITED}, secret: {{ env: MACHINE_SECRET }}, allow: [\"petstore/prod/GET/*\"] }}
    routes:
      - {{ route: ANY /pets, authorizer: machines, integration: {{ type: http_proxy, uri: \"{be}/pets\" }} }}
      - {{ route: \"GET /files/{{proxy+}}\", authorizer: machines, integration: {{ type: http_proxy, uri: \"{be}/files/{{proxy}}\" }} }}
    stages: [ {{ name: prod }} ]
",
        be = backend.url()
    ));
    let gw = Gateway::start_env(
        &yaml,
        &[],
        &[
            ("MACHINE_SECRET", SECRET),
            ("SG_ADMIN", "t0ken-for-the-access-tests"),
            ("SHARDGATE_TEST_CLOCK", "1"),
        ],
    );
    let base = format!("http://{}", gw.addr);
    let url = |p: &str| format!("{base}{p}");

    // GET with a query string in no particular order, and a POST with a JSON body.
    let (s, b) = signed(&[
        "GET",
        &url("/prod/pets?b=2&a=1&a=0"),
        ID,
        SECRET,
        "us-east-1",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s, 200, "{b} {}", gw.log());
    let seen = backend.last();
    assert!(
        seen.header("authorization").is_none(),
        "SigV4 Authorization forwarded"
    );
    assert!(seen.header("x-amz-date").is_some());
    let (s, b) = signed(&[
        "POST",
        &url("/prod/pets"),
        ID,
        SECRET,
        "us-east-1",
        "--body",
        r#"{"name":"rex"}"#,
        "--header",
        "content-type:application/json",
    ]);
    assert_eq!(s, 200, "{b}");
    assert_eq!(backend.last().body, br#"{"name":"rex"}"#);
    // A path with encoded characters (double-encoded in the canonical request).
    let (s, b) = signed(&[
        "GET",
        &url("/prod/files/a%20b/c~d.txt"),
        ID,
        SECRET,
        "us-east-1",
    ]);
    assert_eq!(s, 200, "{b}");
    // A presigned URL.
    let (s, b) = signed(&[
        "GET",
        &url("/prod/pets?x=1"),
        ID,
        SECRET,
        "us-east-1",
        "--presign",
        "60",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s, 200, "{b} {}", gw.log().split("CANON").last().unwrap());

    let served = backend.seen().len();
    // Failures, with AWS's status and message.
    let (s, b) = signed(&[
        "GET",
        &url("/prod/pets"),
        ID,
        "wrong-secret-0123456789",
        "us-east-1",
    ]);
    assert_eq!(s, 403);
    assert!(
        b.contains("The request signature we calculated does not match"),
        "{b}"
    );
    let (s, b) = signed(&[
        "GET",
        &url("/prod/pets"),
        "AKIDUNKNOWN12345678",
        SECRET,
        "us-east-1",
    ]);
    assert_eq!(s, 403);
    assert!(
        b.contains("The security token included in the request is invalid."),
        "{b}"
    );
    let (s, b) = signed(&["GET", &url("/prod/pets"), ID, SECRET, "eu-west-1"]);
    assert_eq!(s, 403, "{b}");
    let (s, b) = signed(&[
        "POST",
        &url("/prod/pets"),
        ID,
        SECRET,
        "us-east-1",
        "--body",
        "{\"a\":1}",
        "--send-body",
        "{\"a\":2}",
    ]);
    assert_eq!(s, 403, "a changed body must not pass: {b}");
    let r = common::get(gw.addr, "/prod/pets");
    assert_eq!(r.status, 403);
    assert_eq!(
        body_json(&r),
        json!({"message": "Missing Authentication Token"})
    );
    // A key limited to GET.
    let (s, _) = signed(&["GET", &url("/prod/pets"), LIMITED, SECRET, "us-east-1"]);
    assert_eq!(s, 200);
    let served = served + 1;
    let (s, b) = signed(&[
        "POST",
        &url("/prod/pets"),
        LIMITED,
        SECRET,
        "us-east-1",
        "--body",
        "{}",
    ]);
    assert_eq!(s, 403);
    assert!(
        b.contains("is not authorized to perform: execute-api:Invoke on resource: arn:aws:execute-api:us-east-1:"),
        "{b}"
    );
    assert_eq!(
        backend.seen().len(),
        served,
        "a refused request reached the backend"
    );

    // A key made through the management API works at once, and stops when deleted.
    let admin = gw.admin.unwrap();
    let (s, created) = admin_call(admin, "POST", "/accesskeys", r#"{"allow": ["petstore/*"]}"#);
    assert_eq!(s, 201, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let (s, b) = signed(&["GET", &url("/prod/pets"), &id, &secret, "us-east-1"]);
    assert_eq!(s, 200, "{b}");
    let (s, list) = admin_call(admin, "GET", "/accesskeys", "");
    assert_eq!(s, 200);
    assert!(list.contains(&id) && !list.contains(&secret), "{list}");
    let (s, _) = admin_call(admin, "DELETE", &format!("/accesskeys/{id}"), "");
    assert_eq!(s, 204);
    let (s, _) = signed(&["GET", &url("/prod/pets"), &id, &secret, "us-east-1"]);
    assert_eq!(s, 403);
    // Clock skew: 6 minutes later the same signature time is refused.
    let (s, _) = admin_call(admin, "POST", "/test/clock", r#"{"advance_s": 360}"#);
    assert!(s == 200 || s == 204, "{s}");
    let (s, b) = signed(&["GET", &url("/prod/pets"), ID, SECRET, "us-east-1"]);
    assert_eq!(s, 403);
    assert!(
        b.contains("Signature expired:") && b.contains("- 5 min."),
        "{b}"
    );
}

/// One management API call: (status, body).
fn admin_call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = Client::connect(addr);
    let r = c.request(
        method,
        path,
        "admin",
        &[
            ("authorization", "Bearer t0ken-for-the-access-tests"),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    );
    (r.status, r.text())
}

#[test]
fn resource_policy_and_forwarded_for() {
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "apis:
  - name: inner
    resource_policy:
      allow_cidrs: [10.0.0.0/8, \"2001:db8::/32\"]
      deny_cidrs: [10.9.0.0/16]
      deny_hosts: [internal.test]
    trusted_proxies: [127.0.0.1/32]
    authorizers:
      - {{ name: users, type: jwt, issuer: https://id.test/, audience: [x], jwks: {{ keys: [] }} }}
    routes:
      - {{ route: GET /pets, integration: {{ type: http_proxy, uri: \"{be}/pets\" }} }}
      - {{ route: GET /me, authorizer: users, integration: {{ type: mock }} }}
    stages:
      - {{ name: prod }}
      - name: open
        resource_policy: {{ allow_cidrs: [0.0.0.0/0] }}
  - name: direct
    resource_policy: {{ allow_cidrs: [127.0.0.0/8] }}
    routes:
      - {{ route: GET /x, integration: {{ type: mock, body: direct }} }}
    stages: [ {{ name: direct }} ]
",
        be = backend.url()
    ));
    let (code, out) = common::validate(&yaml);
    // An inline JWKS with no keys is a config error: use a real one.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("has no RSA or EC key"), "{out}");
    let k = rsa_key("k1");
    let jwks = serde_json::to_string(&JwkSet {
        keys: vec![k.jwk.clone()],
    })
    .unwrap();
    let yaml = yaml.replace("jwks: { keys: [] }", &format!("jwks: {jwks}"));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    let mut get = |path: &str, host: &str, xff: Option<&str>| {
        let h: Vec<(&str, &str)> = xff
            .map(|x| vec![("x-forwarded-for", x)])
            .unwrap_or_default();
        c.request("GET", path, host, &h, b"")
    };
    let forbidden = json!({"message": "Forbidden"});
    // The client is the right-most hop the trusted proxy (127.0.0.1) did not add.
    assert_eq!(get("/prod/pets", "gw.test", Some("10.1.2.3")).status, 200);
    assert_eq!(
        get("/prod/pets", "gw.test", Some("2001:db8::5")).status,
        200
    );
    let r = get("/prod/pets", "gw.test", Some("10.9.1.1"));
    assert_eq!(
        (r.status, body_json(&r)),
        (403, forbidden.clone()),
        "deny wins"
    );
    assert_eq!(get("/prod/pets", "gw.test", Some("192.0.2.1")).status, 403);
    // A spoofed left-most hop does not help; a spoofed right-most one is the client.
    assert_eq!(
        get("/prod/pets", "gw.test", Some("10.1.1.1, 10.9.1.1")).status,
        403
    );
    assert_eq!(
        get("/prod/pets", "gw.test", Some("10.9.1.1, 10.1.1.1")).status,
        200
    );
    // No header: the peer itself (127.0.0.1), not allowed.
    assert_eq!(get("/prod/pets", "gw.test", None).status, 403);
    // A denied host.
    assert_eq!(
        get("/prod/pets", "internal.test:8080", Some("10.1.2.3")).status,
        403
    );
    // The policy comes before the authorizer: 403, not 401.
    assert_eq!(get("/prod/me", "gw.test", Some("192.0.2.1")).status, 403);
    assert_eq!(get("/prod/me", "gw.test", Some("10.1.2.3")).status, 401);
    // The stage's own policy replaces the API's.
    assert_eq!(get("/open/pets", "gw.test", Some("192.0.2.1")).status, 200);
    // Without trusted proxies the header is not believed: the peer is the client.
    let r = get("/direct/x", "gw.test", Some("10.9.1.1"));
    assert_eq!((r.status, r.text().as_str()), (200, "direct"));
    // The backend saw only what was allowed.
    assert_eq!(backend.seen().len(), 4);
}

/// A response without any CORS header.
fn assert_no_cors(r: &common::Response) {
    assert!(
        r.headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-")),
        "{:?}",
        r.headers
    );
}

#[test]
fn cors() {
    let backend = Upstream::start(|_| {
        let mut r = Reply::ok("pets");
        r.headers
            .push(("access-control-allow-origin".into(), "*".into()));
        r
    });
    let yaml = config(&format!(
        "apis:
  - name: web
    cors:
      allow_origins: [\"https://app.example.com\", \"http://*\"]
      allow_methods: [GET, POST]
      allow_headers: [authorization, content-type]
      expose_headers: [x-request-id]
      max_age_s: 600
      allow_credentials: true
    authorizers:
      - {{ name: partners, type: request, uri: \"http://127.0.0.1:9/\", identity_sources: [header.authorization] }}
    routes:
      - {{ route: GET /pets, integration: {{ type: http_proxy, uri: \"{be}/pets\" }} }}
      - {{ route: ANY /private, authorizer: partners, integration: {{ type: mock }} }}
    stages: [ {{ name: prod }} ]
",
        be = backend.url()
    ));
    let gw = Gateway::start(&yaml);
    let mut c = Client::connect(gw.addr);
    let preflight = |c: &mut Client, path: &str, origin: &str| {
        c.request(
            "OPTIONS",
            path,
            "gw.test",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            b"",
        )
    };
    // A preflight is answered by the gateway, on a route with an authorizer too,
    // and on a path with no OPTIONS route.
    for path in ["/prod/pets", "/prod/private"] {
        let r = preflight(&mut c, path, "https://app.example.com");
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization,content-type")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
    assert!(backend.seen().is_empty());
    // A scheme wildcard origin.
    let r = preflight(&mut c, "/prod/pets", "http://localhost:3000");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    // An origin not allowed: no CORS headers at all.
    let r = preflight(&mut c, "/prod/pets", "https://evil.example.com");
    assert_eq!(r.status, 204);
    assert_no_cors(&r);

    // Actual requests: the configured headers, the backend's CORS headers dropped.
    let r = c.request(
        "GET",
        "/prod/pets",
        "gw.test",
        &[("origin", "https://app.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("access-control-allow-origin"))
            .count(),
        1
    );
    let r = c.request(
        "GET",
        "/prod/pets",
        "gw.test",
        &[("origin", "https://evil.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_no_cors(&r);
    // An OPTIONS that is not a preflight is routed as usual.
    let r = c.request("OPTIONS", "/prod/pets", "gw.test", &[], b"");
    assert_eq!(r.status, 404);
}

#[test]
fn request_validation() {
    let backend = Upstream::echo();
    let yaml = config(&format!(
        "    limits: {{ max_buffered_body_bytes: 4096 }}
apis:
  - name: petstore
    routes:
      - route: POST /pets
        validate:
          required: [header.content-type, query.owner]
          body_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string }} }}, additionalProperties: false }}
        integration: {{ type: http_proxy, uri: \"{be}/pets\" }}
      - route: POST /tags
        validate:
          body_schema:
            $schema: https://json-schema.org/draft/2020-12/schema
            type: array
            prefixItems: [ {{ type: string }} ]
            items: false
        integration: {{ type: http_proxy, uri: \"{be}/tags\" }}
    stages: [ {{ name: prod }} ]
",
        be = backend.url()
    ));
    let gw = Gateway::start(&yaml);
    let json_ct = ("content-type", "application/json");
    let post = |path: &str, h: &[(&str, &str)], body: &[u8]| {
        let mut c = Client::connect(gw.addr);
        c.request("POST", path, "gw.test", h, body)
    };
    let r = post("/prod/pets?owner=ann", &[json_ct], br#"{"name":"rex"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend.last().body, br#"{"name":"rex"}"#);

    let r = post("/prod/pets", &[json_ct], br#"{"name":"rex"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        body_json(&r),
        json!({"message": "Missing required request parameters: [owner]"})
    );
    let r = post("/prod/pets?owner=", &[], b"");
    assert_eq!(
        body_json(&r),
        json!({"message": "Missing required request parameters: [content-type, owner]"})
    );
    for bad in [
        &br#"{"nam":"rex"}"#[..],
        br#"{"name":1}"#,
        b"{not json",
        br#"{"name":"a","x":1}"#,
    ] {
        let r = post("/prod/pets?owner=ann", &[json_ct], bad);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(body_json(&r), json!({"message": "Invalid request body"}));
    }
    // A content type the route does not model passes through unvalidated.
    let r = post(
        "/prod/pets?owner=ann",
        &[("content-type", "text/plain")],
        b"anything",
    );
    assert_eq!(r.status, 200);
    // A newer draft, named by `$schema`.
    assert_eq!(post("/prod/tags", &[json_ct], br#"["a"]"#).status, 200);
    assert_eq!(post("/prod/tags", &[json_ct], br#"["a", 1]"#).status, 400);
    // Larger than the buffering limit: 413.
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(5000));
    let r = post("/prod/pets?owner=ann", &[json_ct], big.as_bytes());
    assert_eq!(r.status, 413);

    // A chunked body, with 100-continue, is decoded for validation and forwarded
    // whole; then the next request on the connection is served.
    let mut c = Client::connect(gw.addr);
    c.send(b"POST /prod/pets?owner=ann HTTP/1.1\r\nhost: gw.test\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    use std::io::BufRead;
    c.reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    c.reader.read_line(&mut line).unwrap();
    c.send(b"5\r\n{\"nam\r\n9\r\ne\":\"rex\"}\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(backend.last().body, br#"{"name":"rex"}"#);
    let r = c.request(
        "POST",
        "/prod/pets?owner=ann",
        "gw.test",
        &[json_ct],
        br#"{"x":1}"#,
    );
    assert_eq!(r.status, 400);
}

/// Without `jwks_uri`, the keys are found through the issuer's discovery document.
#[test]
fn jwt_keys_by_discovery() {
    let k1 = ec_key("d1");
    let set = serde_json::to_vec(&JwkSet {
        keys: vec![k1.jwk.clone()],
    })
    .unwrap();
    let base = Arc::new(Mutex::new(String::new()));
    let b2 = Arc::clone(&base);
    let idp = Upstream::start(move |s| {
        if s.target == "/.well-known/openid-configuration" {
            let doc = json!({"jwks_uri": format!("{}/keys", b2.lock().unwrap())});
            Reply::ok(doc.to_string())
        } else if s.target == "/keys" {
            Reply::ok(set.clone())
        } else {
            let mut r = Reply::ok("");
            r.status = 404;
            r
        }
    });
    *base.lock().unwrap() = idp.url();
    let yaml = config(&format!(
        "apis:
  - name: p
    authorizers:
      - {{ name: users, type: jwt, issuer: \"{iss}\", audience: [petstore] }}
    routes:
      - {{ route: GET /me, authorizer: users, integration: {{ type: mock, body: me }} }}
    stages: [ {{ name: prod }} ]
",
        iss = idp.url()
    ));
    let gw = Gateway::start(&yaml);
    let t = token(&k1, &claims(json!({"iss": idp.url()})));
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "GET",
        "/prod/me",
        "gw.test",
        &[("authorization", &bearer(&t))],
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "me"));
    let targets: Vec<String> = idp.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets[..2], ["/.well-known/openid-configuration", "/keys"]);
}
