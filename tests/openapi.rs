//! OpenAPI import and export over real sockets: three documents shaped as AWS's
//! exports (an HTTP API with a Lambda proxy route behind a JWT authorizer, a REST
//! API's Swagger 2.0 export with API keys, request validators and mocks, and an
//! HTTP API with `$default` and CORS) are imported with `shardgate import
//! openapi`, served, and answered as AWS would; what the importer cannot map is
//! listed with its JSON pointer. `shardgate export openapi` writes documents
//! that a standard validator (openapi-spec-validator) accepts, and importing an
//! export serves what the original config serves.

mod common;

use std::process::Command;

use common::{bin, Client, Gateway, Reply, Upstream};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/openapi");
const KEY: &str = "openapiTestKey0123456789abc";

/// `shardgate import openapi` on `doc` (written with extension `ext`): the
/// config with its listener on port 0, and stderr.
fn import(doc: &str, ext: &str) -> (String, String) {
    let dir = std::env::temp_dir();
    let n = std::process::id();
    let src = dir.join(format!("shardgate-openapi-{n}-{}.{ext}", doc.len()));
    let out = dir.join(format!("shardgate-openapi-{n}-{}.out.yaml", doc.len()));
    std::fs::write(&src, doc).unwrap();
    let run = Command::new(bin())
        .args(["import", "openapi"])
        .arg(&src)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "import failed: {stderr}");
    let config = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&out);
    assert!(config.contains("bind: 127.0.0.1:8080"), "{config}");
    (config.replace("127.0.0.1:8080", "127.0.0.1:0"), stderr)
}

/// A fixture with its placeholders filled in.
fn fixture(name: &str, fill: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    for (k, v) in fill {
        text = text.replace(k, v);
    }
    text
}

/// An ES256 signing key and the identity provider serving its discovery
/// document and keys.
struct Idp {
    enc: EncodingKey,
    server: Upstream,
}

impl Idp {
    fn start() -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("k1".into());
        let set = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap();
        let server = Upstream::start(move |s| {
            if s.target == "/.well-known/openid-configuration" {
                let host = s.header("host").unwrap_or("").to_owned();
                Reply::ok(json!({ "jwks_uri": format!("http://{host}/keys") }).to_string())
            } else {
                Reply::ok(set.clone())
            }
        });
        Self { enc, server }
    }

    fn token(&self, aud: &str, scope: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": self.server.url(), "aud": aud, "sub": "alice",
            "exp": now + 600, "iat": now - 5, "scope": scope,
        });
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, &self.enc).unwrap()
    }
}

/// A backend answering with the target it saw and the `x-imported` header.
fn backend() -> Upstream {
    Upstream::start(|s| {
        let marked = s.header("x-imported").unwrap_or("-").to_owned();
        Reply::ok(format!("{} {} {marked}", s.method, s.target))
    })
}

fn request(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> common::Response {
    Client::connect(gw.addr).request(method, path, "api.test", headers, body)
}

#[test]
fn http_api_with_lambda_and_jwt() {
    let idp = Idp::start();
    let be = backend();
    let (_srv, port) = common::lambda_invoke_server();
    let lambda = format!("http://127.0.0.1:{port}");

    let doc = fixture(
        "http-lambda-jwt.yaml",
        &[
            ("{{ISSUER}}", &idp.server.url()),
            ("{{BACKEND}}", &be.url()),
        ],
    );
    let (config, notes) = import(&doc, "yaml");
    // What AWS has and shardgate cannot serve as such, by JSON pointer.
    for want in [
        "unmapped: /paths/~1admin/post/x-amazon-apigateway-integration: VPC link not mapped",
        "unmapped: /components/securitySchemes/ops-authorizer/x-amazon-apigateway-authorizer: Lambda authorizer",
        "unmapped: /tags/0/x-amazon-apigateway-tag-value: resource tag",
        "note: /paths/~1pets/get/x-amazon-apigateway-integration/uri: calls arn:aws:lambda:eu-west-1:123456789012:function:pets",
    ] {
        assert!(notes.contains(want), "{want:?} not in:\n{notes}");
    }
    let gw = Gateway::start_env(
        &config,
        &[],
        &[
            ("AWS_ENDPOINT_URL_LAMBDA", &lambda),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "secret/key+1"),
        ],
    );

    // The Lambda route behind the JWT authorizer and its scope.
    assert_eq!(request(&gw, "GET", "/pets", &[], b"").status, 401);
    let bad_scope = format!("Bearer {}", idp.token("pets-app", "openid"));
    let r = request(&gw, "GET", "/pets", &[("authorization", &bad_scope)], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    let good = format!("Bearer {}", idp.token("pets-app", "pets:read"));
    let r = request(
        &gw,
        "GET",
        "/pets?kind=dog",
        &[("authorization", &good)],
        b"",
    );
    assert_eq!(r.status, 200, "{} {}", r.text(), gw.log());
    let event: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(event["rawPath"], "/pets", "{event}");
    assert_eq!(event["signed"], true, "{event}");

    // The HTTP proxy route with its parameter mapping.
    let r = request(&gw, "GET", "/pets/7", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "GET /pets/7 yes");
}

#[test]
fn rest_swagger2_export_with_keys_validators_and_mocks() {
    let be = backend();
    let doc = fixture("rest-swagger2.json", &[("{{BACKEND}}", &be.url())]);
    let (config, notes) = import(&doc, "json");
    for want in [
        "unmapped: /x-amazon-apigateway-binary-media-types",
        "unmapped: /x-amazon-apigateway-policy",
        "unmapped: /paths/~1echo/get/x-amazon-apigateway-integration/responses/default/responseTemplates: VTL template not mapped",
        "unmapped: /paths/~1legacy/get/x-amazon-apigateway-integration: non-proxy HTTP integration",
        "unmapped: stage variable legacy",
        "note: /securityDefinitions/sigv4: AWS_IAM → sigv4 authorizer \"sigv4\" in eu-west-1",
    ] {
        assert!(notes.contains(want), "{want:?} not in:\n{notes}");
    }
    // Usage plans are not part of an export: the user adds theirs.
    let config = format!(
        "{config}usage_plans:\n  - {{ name: basic, stages: [PetStore-REST/prod] }}\napi_keys:\n  - {{ name: app, value: {{ env: T_KEY }}, plans: [basic] }}\n"
    );
    let gw = Gateway::start_env(&config, &[], &[("T_KEY", KEY)]);
    let key = ("x-api-key", KEY);

    // The mock, behind the API key.
    assert_eq!(request(&gw, "GET", "/prod/pets", &[], b"").status, 403);
    let r = request(&gw, "GET", "/prod/pets", &[key], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"[{"id":1,"type":"dog","price":249.99}]"#);

    // The body model, with the API's BAD_REQUEST_BODY response.
    let json_ct = ("content-type", "application/json");
    let r = request(
        &gw,
        "POST",
        "/prod/pets",
        &[key, json_ct],
        br#"{"type":"dog","price":10}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("x-validation"), Some("failed"));
    let body: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(body["message"], "bad pet", "{body}");
    let r = request(
        &gw,
        "POST",
        "/prod/pets",
        &[key, json_ct],
        br#"{"type":"gecko","price":100}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "POST /petstore/pets -");

    // Required parameters.
    assert_eq!(request(&gw, "GET", "/prod/pets/7", &[], b"").status, 400);
    let r = request(&gw, "GET", "/prod/pets/7", &[("x-trace", "t1")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "GET /petstore/pets/7 -");

    // AWS_IAM: an unsigned request is refused.
    let r = request(&gw, "GET", "/prod/stats", &[], b"");
    assert_eq!(r.status, 403, "{}", r.text());

    // RESOURCE_NOT_FOUND as the export says.
    let r = request(&gw, "GET", "/prod/nope", &[], b"");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no such route"), "{}", r.text());
}

#[test]
fn http_api_with_default_route_and_cors() {
    let be = backend();
    let doc = fixture("http-default-cors.json", &[("{{BACKEND}}", &be.url())]);
    let (config, notes) = import(&doc, "json");
    assert!(notes.contains("0 item(s) not mapped"), "{notes}");
    let gw = Gateway::start(&config);

    let r = request(&gw, "GET", "/anything/here?x=1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "GET /anything/here?x=1 -");
    let r = request(&gw, "DELETE", "/items/a/b", &[], b"");
    assert_eq!(r.text(), "DELETE /store/a/b -");

    // CORS: a preflight answered by the gateway; allowed origins marked.
    let r = request(
        &gw,
        "OPTIONS",
        "/items/a",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = request(
        &gw,
        "GET",
        "/items/a",
        &[("origin", "https://app.example.com")],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
}

/// A request: method, path, headers, body.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8]);

/// `shardgate export openapi` of `api` in `config`: the document's text.
fn export(config: &str, api: &str, format: &str) -> String {
    let path = common::write_config(config);
    let out = Command::new(bin())
        .args(["export", "openapi", "--config"])
        .arg(&path)
        .args(["--api", api, "--format", format])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// openapi-spec-validator's verdict on a document.
fn spec_valid(doc: &str, ext: &str) {
    let path = std::env::temp_dir().join(format!(
        "shardgate-openapi-export-{}-{}.{ext}",
        std::process::id(),
        doc.len()
    ));
    std::fs::write(&path, doc).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom openapi_spec_validator import validate\nfrom openapi_spec_validator.readers import read_from_filename\nvalidate(read_from_filename(sys.argv[1])[0])\nprint('valid')",
        ])
        .arg(&path)
        .output()
        .expect("python3 with openapi-spec-validator");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "not a valid OpenAPI document: {}\n{doc}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn export_passes_a_validator_and_imports_back_to_the_same_answers() {
    let idp = Idp::start();
    let be = backend();
    let original = format!(
        "listeners: [{{ name: public, bind: 127.0.0.1:0 }}]
apis:
  - name: shop
    cors: {{ allow_origins: [\"https://shop.example\"], allow_methods: [GET], max_age_s: 60 }}
    authorizers:
      - {{ name: users, type: jwt, issuer: \"{iss}\", audience: [shop] }}
    gateway_responses:
      UNAUTHORIZED: {{ status: 401, headers: {{ x-why: token }}, body: '{{\"error\":\"$context.error.message\"}}' }}
      DEFAULT_4XX: {{ headers: {{ x-shop: \"4xx\" }} }}
    routes:
      - route: GET /items/{{id}}
        integration:
          type: http_proxy
          uri: \"${{stage_variables.backend}}/items/{{id}}\"
          timeout_ms: 5000
          request_parameters: {{ \"append:header.x-imported\": \"rt\" }}
      - route: GET /me
        authorizer: users
        scopes: [shop:read]
        integration: {{ type: mock, body: me }}
      - route: POST /orders
        api_key_required: true
        validate:
          required: [header.x-order]
          body_schema: {{ type: object, required: [sku], properties: {{ sku: {{ type: string }} }} }}
        integration: {{ type: mock, status: 201, headers: {{ content-type: application/json }}, body: '{{\"ordered\":true}}' }}
      - route: ANY /files/{{proxy+}}
        integration: {{ type: http_proxy, uri: \"{be}/f/{{proxy}}\" }}
    stages:
      - {{ name: prod, variables: {{ backend: \"{be}\" }} }}
usage_plans:
  - {{ name: basic, stages: [shop/prod] }}
api_keys:
  - {{ name: app, value: {{ env: T_KEY }}, plans: [basic] }}
",
        iss = idp.server.url(),
        be = be.url(),
    );
    let yaml = export(&original, "shop", "yaml");
    let json_doc = export(&original, "shop", "json");
    spec_valid(&yaml, "yaml");
    spec_valid(&json_doc, "json");
    let a: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    let b: Value = serde_json::from_str(&json_doc).unwrap();
    assert_eq!(a, b, "the YAML and JSON exports say the same");
    assert_eq!(a["openapi"], "3.0.1");
    assert_eq!(
        a["paths"]["/items/{id}"]["get"]["x-amazon-apigateway-integration"]["uri"],
        "${stageVariables.backend}/items/{id}"
    );
    assert!(a["paths"]["/files/{proxy+}"]["x-amazon-apigateway-any-method"].is_object());

    // Imported back (usage plans are the config's, not the API's).
    let (mut imported, notes) = import(&yaml, "yaml");
    assert!(notes.contains("0 item(s) not mapped"), "{notes}");
    imported.push_str(
        "usage_plans:\n  - { name: basic, stages: [shop/prod] }\napi_keys:\n  - { name: app, value: { env: T_KEY }, plans: [basic] }\n",
    );
    // Exporting the import says the same again.
    let again: Value = serde_yaml_ng::from_str(&export(&imported, "shop", "yaml")).unwrap();
    assert_eq!(again["paths"], a["paths"]);
    assert_eq!(again["components"], a["components"]);
    assert_eq!(again["x-shardgate-stages"], a["x-shardgate-stages"]);

    let env = [("T_KEY", KEY)];
    let first = Gateway::start_env(&original, &[], &env);
    let second = Gateway::start_env(&imported, &[], &env);
    let token = format!("Bearer {}", idp.token("shop", "shop:read"));
    let no_scope = format!("Bearer {}", idp.token("shop", "other"));
    let cases: Vec<Case> = vec![
        ("GET", "/prod/items/42", vec![], b""),
        ("GET", "/prod/me", vec![], b""),
        ("GET", "/prod/me", vec![("authorization", &no_scope)], b""),
        ("GET", "/prod/me", vec![("authorization", &token)], b""),
        (
            "POST",
            "/prod/orders",
            vec![("content-type", "application/json")],
            br#"{"sku":"a"}"#,
        ),
        (
            "POST",
            "/prod/orders",
            vec![
                ("x-api-key", KEY),
                ("x-order", "1"),
                ("content-type", "application/json"),
            ],
            br#"{"sku":"a"}"#,
        ),
        (
            "POST",
            "/prod/orders",
            vec![
                ("x-api-key", KEY),
                ("x-order", "1"),
                ("content-type", "application/json"),
            ],
            br#"{"sku":1}"#,
        ),
        (
            "POST",
            "/prod/orders",
            vec![("x-api-key", KEY), ("content-type", "application/json")],
            br#"{"sku":"a"}"#,
        ),
        ("PUT", "/prod/files/a/b.txt", vec![], b"data"),
        ("GET", "/prod/nope", vec![], b""),
        (
            "OPTIONS",
            "/prod/items/1",
            vec![
                ("origin", "https://shop.example"),
                ("access-control-request-method", "GET"),
            ],
            b"",
        ),
    ];
    for (method, path, headers, body) in &cases {
        let answer = |gw: &Gateway| {
            let r = request(gw, method, path, headers, body);
            let h = |n: &str| r.header(n).unwrap_or("").to_owned();
            (
                r.status,
                r.text(),
                h("content-type"),
                h("x-why"),
                h("x-shop"),
                h("access-control-allow-origin"),
            )
        };
        let want = answer(&first);
        assert_eq!(answer(&second), want, "{method} {path}");
    }
    // The answers are the config's, not two equal mistakes.
    let r = request(&first, "GET", "/prod/items/42", &[], b"");
    assert_eq!(r.text(), "GET /items/42 rt");
    let r = request(&first, "GET", "/prod/me", &[("authorization", &token)], b"");
    assert_eq!((r.status, r.text()), (200, "me".to_owned()));
    let r = request(&first, "GET", "/prod/me", &[], b"");
    assert_eq!((r.status, r.header("x-why")), (401, Some("token")));
}
