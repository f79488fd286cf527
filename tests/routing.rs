//! Stage dispatch, route precedence, custom domains, substitution and mocks, over
//! real sockets with real upstreams.

mod common;
use common::*;

fn mock(body: &str) -> String {
    format!(
        "{{ type: mock, status: 200, headers: {{ content-type: text/plain }}, body: \"{body}\" }}"
    )
}

#[test]
fn route_precedence_follows_aws() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets/dog/1', integration: {m1} }}
      - {{ route: 'GET /pets/dog/{{id}}', integration: {m2} }}
      - {{ route: 'GET /pets/{{proxy+}}', integration: {m3} }}
      - {{ route: 'ANY /{{proxy+}}', integration: {m4} }}
      - {{ route: 'ANY /things', integration: {m5} }}
      - {{ route: 'DELETE /things', integration: {m6} }}
      - {{ route: '$default', integration: {m7} }}
    stages: [ {{ name: $default }} ]
",
        m1 = mock("literal"),
        m2 = mock("param"),
        m3 = mock("greedy-get"),
        m4 = mock("greedy-any"),
        m5 = mock("any-things"),
        m6 = mock("delete-things"),
        m7 = mock("default"),
    )));
    let mut c = Client::connect(gw.addr);
    let table = [
        ("GET", "/pets/dog/1", "literal"),
        ("GET", "/pets/dog/2", "param"),
        ("GET", "/pets/cat/1", "greedy-get"),
        ("POST", "/test/5", "greedy-any"),
        ("POST", "/pets/dog/1", "greedy-any"),
        ("GET", "/things", "any-things"),
        ("DELETE", "/things", "delete-things"),
        ("GET", "/", "default"),
        ("GET", "/pets/dog/1?x=1", "literal"),
    ];
    for (method, path, want) in table {
        let r = c.request(method, path, "gw.test", &[], b"");
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(r.text(), want, "{method} {path}");
        assert!(r.header("apigw-requestid").is_some_and(|v| !v.is_empty()));
    }
}

#[test]
fn stages_and_default_stage_dispatch() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: a
    routes:
      - {{ route: 'GET /hello', integration: {{ type: http_proxy, uri: \"${{stage_variables.greeting}}\" }} }}
    stages:
      - {{ name: prod, variables: {{ greeting: \"http://127.0.0.1:1/prod\" }} }}
  - name: b
    routes:
      - {{ route: 'GET /hello', integration: {mb} }}
      - {{ route: 'GET /prod/hello', integration: {mp} }}
    stages: [ {{ name: dev }}, {{ name: $default }} ]
",
        mb = mock("b"),
        mp = mock("b-default-prod-path"),
    )));
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/dev/hello").text(), "b");
    // No stage named `hello`: the $default stage gets the whole path.
    assert_eq!(c.get("/hello").text(), "b");
    // `prod` names a stage of API a: it wins over b's $default route of the same path.
    // API a's integration points at a closed port: 503 proves API a was chosen.
    assert_eq!(c.get("/prod/hello").status, 503);
    let r = c.get("/staging/hello");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"message":"Not Found"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[test]
fn no_stage_and_no_default_is_404() {
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: a
    routes: [ {{ route: 'GET /x', integration: {m} }} ]
    stages: [ {{ name: prod }} ]
",
        m = mock("x")
    )));
    assert_eq!(get(gw.addr, "/prod/x").text(), "x");
    assert_eq!(get(gw.addr, "/x").status, 404);
    assert_eq!(get(gw.addr, "/prod/y").status, 404);
}

#[test]
fn custom_domains_use_longest_base_path() {
    let up = Upstream::echo();
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: one
    routes: [ {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{u}/one/{{proxy}}\" }} }} ]
    stages: [ {{ name: prod }} ]
  - name: two
    routes: [ {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{u}/two/{{proxy}}\" }} }} ]
    stages: [ {{ name: live }} ]
  - name: three
    routes: [ {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{u}/three/{{proxy}}\" }} }} ]
    stages: [ {{ name: beta }} ]
domains:
  - name: API.Example.com
    mappings:
      - {{ base_path: \"\", api: one, stage: prod }}
      - {{ base_path: orders/v1/items, api: two, stage: live }}
      - {{ base_path: orders/v1/items/categories, api: three, stage: beta }}
",
        u = up.url()
    )));
    let mut c = Client::connect(gw.addr);
    let table = [
        ("api.example.com", "/customers", "GET /one/customers body=0"),
        (
            "API.EXAMPLE.COM:8443",
            "/orders/v1/items/123",
            "GET /two/123 body=0",
        ),
        (
            "api.example.com",
            "/orders/v1/items/categories/5",
            "GET /three/5 body=0",
        ),
        // Whole segments only: `itemsX` is not under `items`.
        (
            "api.example.com",
            "/orders/v1/itemsX/1",
            "GET /one/orders/v1/itemsX/1 body=0",
        ),
    ];
    for (host, path, want) in table {
        let r = c.request("GET", path, host, &[], b"");
        assert_eq!(r.text(), want, "{host}{path}");
    }
    // Without the domain, the stage segment routes as usual.
    let r = c.request("GET", "/live/a/b", "other.example", &[], b"");
    assert_eq!(r.text(), "GET /two/a/b body=0");
}

#[test]
fn stage_variables_params_and_query_are_substituted() {
    let up = Upstream::echo();
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets/{{id}}', integration: {{ type: http_proxy, uri: \"${{stage_variables.backend}}/v1/pets/{{id}}?src=gw\" }} }}
      - {{ route: 'ANY /files/{{proxy+}}', integration: {{ type: http_proxy, uri: \"${{stage_variables.backend}}/store/{{proxy}}\" }} }}
      - {{ route: '$default', integration: {{ type: http_proxy, uri: \"${{stage_variables.backend}}/base/\" }} }}
    stages:
      - {{ name: prod, variables: {{ backend: \"{u}\" }} }}
",
        u = up.url()
    )));
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.get("/prod/pets/42?color=brown&n=1").text(),
        "GET /v1/pets/42?src=gw&color=brown&n=1 body=0"
    );
    assert_eq!(
        c.get("/prod/files/a/b/c.txt?v=2").text(),
        "GET /store/a/b/c.txt?v=2 body=0"
    );
    assert_eq!(
        c.get("/prod/any/thing?q").text(),
        "GET /base/any/thing?q body=0"
    );
    let seen = up.last();
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some("gw.test"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    // The listener was configured with port 0: the port it really got is forwarded.
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gw.addr.port().to_string().as_str())
    );
}

#[test]
fn mock_responses_and_head() {
    let gw = Gateway::start(&config(
        "apis:
  - name: m
    routes:
      - route: POST /orders
        integration:
          type: mock
          status: 201
          headers: { content-type: application/json, x-extra: yes }
          body: '{\"ordered\":true}'
      - route: HEAD /orders
        integration: { type: mock, status: 200, body: 'twelve bytes' }
      - route: GET /empty
        integration: { type: mock, status: 204 }
    stages: [ { name: $default } ]
",
    ));
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "POST",
        "/orders",
        "gw.test",
        &[("content-type", "text/plain")],
        b"ignored body",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), r#"{"ordered":true}"#);
    assert_eq!(r.header("x-extra"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = c.request("HEAD", "/orders", "gw.test", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(r.body.is_empty());
    let r = c.get("/empty");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
    // The connection is still in step after all three.
    assert_eq!(
        c.request("POST", "/orders", "gw.test", &[], b"").status,
        201
    );
}

#[test]
fn head_is_proxied_without_a_body() {
    let up = Upstream::start(|_| Reply::ok(vec![b'x'; 1000]));
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: h
    routes: [ {{ route: 'ANY /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{}/{{proxy}}\" }} }} ]
    stages: [ {{ name: $default }} ]
",
        up.url()
    )));
    let mut c = Client::connect(gw.addr);
    let r = c.request("HEAD", "/doc", "gw.test", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert_eq!(up.last().method, "HEAD");
    // Still in step: a GET on the same connection gets the whole body.
    assert_eq!(c.get("/doc").body.len(), 1000);
}
