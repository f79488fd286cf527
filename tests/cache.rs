//! The response cache over real sockets, with an upstream that counts what reaches
//! it: hit after miss, HEAD from a GET entry, key parameters, what is not stored,
//! expiry (the gateway's clock moved by the admin API), and `Cache-Control:
//! max-age=0` with each strategy. One keep-alive client stays on one worker, whose
//! cache it sees.

mod common;
use common::*;

const TOKEN: &str = "cache-test-admin-token-0123";
const KEY: &str = "cacheKey0123456789abcdef";

/// The upstream answers by path: `/big` 1 MiB + 1, `/missing` 404, `/cookie` with
/// Set-Cookie, `/nostore` and `/private` with those Cache-Control values; otherwise
/// 200 with a body naming the request and how many requests came before it.
fn upstream() -> Upstream {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Upstream::start(move |s| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = s.target.split('?').next().unwrap_or("");
        let mut r = Reply::ok(format!("{} {} #{i}", s.method, s.target));
        match path {
            "/big" => r.body = vec![b'b'; 1024 * 1024 + 1],
            "/large" => r.body = vec![b'l'; 256 * 1024],
            "/missing" => r.status = 404,
            "/slow" => r.delay = std::time::Duration::from_millis(300),
            "/varied" => {
                r.headers
                    .push(("vary".into(), "Accept-Encoding, X-Tenant".into()));
                r.body = format!("{} for {:?} #{i}", s.target, s.header("x-tenant")).into_bytes();
            }
            "/star" => r.headers.push(("vary".into(), "*".into())),
            "/cookie" => r.headers.push(("set-cookie".into(), "a=b".into())),
            "/nostore" => r.headers.push(("cache-control".into(), "no-store".into())),
            "/private" => r
                .headers
                .push(("cache-control".into(), "max-age=60, private".into())),
            _ => r.headers.push(("x-from".into(), "upstream".into())),
        }
        r
    })
}

fn gateway(up: &Upstream) -> Gateway {
    let u = up.url();
    let yaml = format!(
        "workers: 1
listeners: [ {{ name: t, bind: \"127.0.0.1:0\" }} ]
admin: {{ bind: \"127.0.0.1:0\", token: {{ env: SG_CACHE_TOKEN }} }}
apis:
  - name: pets
    routes:
      - {{ route: 'GET /pets', integration: {{ type: http_proxy, uri: \"{u}/pets\" }} }}
      - {{ route: 'GET /search', integration: {{ type: http_proxy, uri: \"{u}/search\" }} }}
      - {{ route: 'GET /items/{{id}}', integration: {{ type: http_proxy, uri: \"{u}/items/{{id}}\" }} }}
      - {{ route: 'GET /strict', api_key_required: true, integration: {{ type: http_proxy, uri: \"{u}/strict\" }} }}
      - {{ route: 'GET /fail', integration: {{ type: http_proxy, uri: \"{u}/fail\" }} }}
      - {{ route: 'GET /warn', integration: {{ type: http_proxy, uri: \"{u}/warn\" }} }}
      - {{ route: 'GET /quiet', integration: {{ type: http_proxy, uri: \"{u}/quiet\" }} }}
      - {{ route: 'GET /open', integration: {{ type: http_proxy, uri: \"{u}/open\" }} }}
      - {{ route: 'GET /uncached', integration: {{ type: http_proxy, uri: \"{u}/uncached\" }} }}
      - {{ route: 'POST /orders', integration: {{ type: http_proxy, uri: \"{u}/orders\" }} }}
      - {{ route: 'POST /query', integration: {{ type: http_proxy, uri: \"{u}/query\" }} }}
      - {{ route: 'ANY /any', integration: {{ type: http_proxy, uri: \"{u}/any\" }} }}
      - {{ route: 'GET /{{proxy+}}', integration: {{ type: http_proxy, uri: \"{u}/{{proxy}}\" }} }}
    stages:
      - name: prod
        cache: {{ capacity_mb: 16, ttl_s: 60 }}
        routes:
          'GET /search': {{ cache: {{ key: [query.type, header.accept-language] }} }}
          'GET /items/{{id}}': {{ cache: {{ key: [path.id] }} }}
          'GET /strict': {{ cache: {{ require_authorization: true, unauthorized_strategy: fail_with_403 }} }}
          'GET /fail': {{ cache: {{ require_authorization: true, unauthorized_strategy: fail_with_403 }} }}
          'GET /warn': {{ cache: {{ require_authorization: true, unauthorized_strategy: succeed_with_header }} }}
          'GET /quiet': {{ cache: {{ require_authorization: true, unauthorized_strategy: succeed_without_header }} }}
          'GET /uncached': {{ cache: {{ ttl_s: 0 }} }}
          'POST /query': {{ cache: {{ ttl_s: 30 }} }}
usage_plans:
  - {{ name: p, stages: [pets/prod] }}
api_keys:
  - {{ name: k, value: {KEY}, plans: [p] }}
"
    );
    let gw = Gateway::start_env(
        &yaml,
        &[],
        &[("SG_CACHE_TOKEN", TOKEN), ("SHARDGATE_TEST_CLOCK", "1")],
    );
    assert!(gw.admin.is_some());
    gw
}

fn get(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> Response {
    c.request("GET", path, "gw.test", headers, b"")
}

fn cache(r: &Response) -> Option<&str> {
    r.header("x-cache")
}

fn upstream_count(up: &Upstream, path: &str) -> usize {
    up.seen()
        .iter()
        .filter(|s| s.target.split('?').next() == Some(path))
        .count()
}

#[test]
fn a_miss_is_stored_and_then_served_from_the_cache() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    let first = get(&mut c, "/prod/pets", &[]);
    assert_eq!((first.status, cache(&first)), (200, Some("Miss")));
    let second = get(&mut c, "/prod/pets", &[]);
    assert_eq!((second.status, cache(&second)), (200, Some("Hit")));
    assert_eq!(second.body, first.body, "the stored body");
    assert_eq!(
        second.header("x-from"),
        Some("upstream"),
        "the stored headers"
    );
    assert_eq!(second.header("age"), Some("0"));
    assert!(second.header("apigw-requestid") != first.header("apigw-requestid"));
    assert_eq!(upstream_count(&up, "/pets"), 1);
    // HEAD is served from the GET entry, without the body (on a route that takes
    // both: a `GET` route does not match HEAD).
    let got = get(&mut c, "/prod/any", &[]);
    assert_eq!(cache(&got), Some("Miss"));
    let head = c.request("HEAD", "/prod/any", "gw.test", &[], b"");
    assert_eq!((head.status, cache(&head)), (200, Some("Hit")));
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length").map(str::to_owned),
        Some(got.body.len().to_string())
    );
    assert_eq!(upstream_count(&up, "/any"), 1);
    // A large body (256 KiB) is written from the entry.
    let a = get(&mut c, "/prod/large", &[]);
    let b = get(&mut c, "/prod/large", &[]);
    assert_eq!((cache(&a), cache(&b)), (Some("Miss"), Some("Hit")));
    assert_eq!(b.body.len(), 256 * 1024);
    assert_eq!(upstream_count(&up, "/large"), 1);
}

#[test]
fn only_the_listed_parameters_vary_the_key() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    let a = get(&mut c, "/prod/search?type=admin&department=A", &[]);
    let b = get(&mut c, "/prod/search?type=admin&department=B", &[]);
    assert_eq!(
        (cache(&a), cache(&b)),
        (Some("Miss"), Some("Hit")),
        "AWS: department is not in the key"
    );
    assert_eq!(b.body, a.body);
    let other = get(&mut c, "/prod/search?type=user", &[]);
    assert_eq!(cache(&other), Some("Miss"));
    let fr = get(
        &mut c,
        "/prod/search?type=admin",
        &[("accept-language", "fr")],
    );
    assert_eq!(cache(&fr), Some("Miss"), "a listed header varies the key");
    let fr2 = get(
        &mut c,
        "/prod/search?type=admin",
        &[("Accept-Language", "fr")],
    );
    assert_eq!(cache(&fr2), Some("Hit"));
    assert_eq!(upstream_count(&up, "/search"), 3);
    // Path parameters.
    assert_eq!(cache(&get(&mut c, "/prod/items/1", &[])), Some("Miss"));
    assert_eq!(cache(&get(&mut c, "/prod/items/2", &[])), Some("Miss"));
    assert_eq!(cache(&get(&mut c, "/prod/items/1", &[])), Some("Hit"));
}

#[test]
fn some_responses_are_never_stored() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    for path in [
        "/missing", "/cookie", "/nostore", "/private", "/big", "/star",
    ] {
        let a = get(&mut c, &format!("/prod{path}"), &[]);
        let b = get(&mut c, &format!("/prod{path}"), &[]);
        assert_eq!(
            (cache(&a), cache(&b)),
            (Some("Miss"), Some("Miss")),
            "{path}"
        );
        assert_eq!(upstream_count(&up, path), 2, "{path}");
    }
    // TTL 0 turns the route's caching off; POST is cached only where a route opts in.
    for _ in 0..2 {
        let r = get(&mut c, "/prod/uncached", &[]);
        assert_eq!(cache(&r), None);
        let r = c.request("POST", "/prod/orders", "gw.test", &[], b"x");
        assert_eq!(cache(&r), None);
    }
    let a = c.request("POST", "/prod/query", "gw.test", &[], b"");
    let b = c.request("POST", "/prod/query", "gw.test", &[], b"");
    assert_eq!(
        (cache(&a), cache(&b)),
        (Some("Miss"), Some("Hit")),
        "opted in"
    );
    // An ANY route caches GET, and passes other methods by.
    let r = c.request("DELETE", "/prod/any", "gw.test", &[], b"");
    assert_eq!(cache(&r), Some("Bypass"));
}

#[test]
fn entries_expire_after_their_ttl() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    assert_eq!(cache(&get(&mut c, "/prod/pets", &[])), Some("Miss"));
    let admin = gw.admin.unwrap();
    let auth = format!("Bearer {TOKEN}");
    let advance = |s: u64| {
        let r = Client::connect(admin).request(
            "POST",
            "/test/clock",
            "a",
            &[("authorization", &auth)],
            format!("{{\"advance_s\": {s}}}").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    advance(30);
    let r = get(&mut c, "/prod/pets", &[]);
    assert_eq!(cache(&r), Some("Hit"));
    // Age is whole seconds of the clock, which runs on between the store and the
    // hit: the real second may turn in between (it did on a busy CI machine).
    let age: u64 = r.header("age").unwrap_or("").parse().unwrap_or(0);
    assert!((30..=31).contains(&age), "age {age} after 30 s");
    advance(31);
    assert_eq!(
        cache(&get(&mut c, "/prod/pets", &[])),
        Some("Miss"),
        "after 61 s of a 60 s TTL"
    );
    assert_eq!(upstream_count(&up, "/pets"), 2);
}

#[test]
fn max_age_zero_refreshes_as_each_strategy_says() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    let refresh = [("cache-control", "max-age=0")];
    // No authorization required: anyone refetches and replaces.
    let a = get(&mut c, "/prod/open", &[]);
    let b = get(&mut c, "/prod/open", &refresh);
    assert_eq!(cache(&b), Some("Miss"));
    assert_ne!(a.body, b.body, "fetched again");
    let after = get(&mut c, "/prod/open", &[]);
    assert_eq!(
        (cache(&after), &after.body),
        (Some("Hit"), &b.body),
        "replaced"
    );

    // fail_with_403: refused without a key; a valid key refreshes.
    let keyed = [("x-api-key", KEY)];
    let k1 = get(&mut c, "/prod/strict", &keyed);
    assert_eq!(cache(&k1), Some("Miss"));
    let k2 = get(
        &mut c,
        "/prod/strict",
        &[("x-api-key", KEY), ("cache-control", "max-age=0")],
    );
    assert_eq!(cache(&k2), Some("Miss"), "an authorized caller refreshes");

    // succeed_with_header: served from the cache, with a warning.
    get(&mut c, "/prod/warn", &[]);
    let w = get(&mut c, "/prod/warn", &refresh);
    assert_eq!(cache(&w), Some("Hit"));
    assert!(
        w.header("warning").is_some_and(|v| v.starts_with("199")),
        "{:?}",
        w.headers
    );
    // succeed_without_header: served from the cache, no warning.
    get(&mut c, "/prod/quiet", &[]);
    let q = get(&mut c, "/prod/quiet", &refresh);
    assert_eq!(cache(&q), Some("Hit"));
    assert!(q.header("warning").is_none());
    assert_eq!(
        upstream_count(&up, "/warn") + upstream_count(&up, "/quiet"),
        2
    );
}

#[test]
fn unauthorized_invalidation_can_fail_with_403() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    assert_eq!(cache(&get(&mut c, "/prod/fail", &[])), Some("Miss"));
    let r = get(&mut c, "/prod/fail", &[("cache-control", "max-age=0")]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text(), r#"{"message":"Unauthorized"}"#);
    // A caller with a valid API key may invalidate, even where the route needs none.
    let r = get(
        &mut c,
        "/prod/fail",
        &[("cache-control", "no-cache, max-age=0"), ("x-api-key", KEY)],
    );
    assert_eq!((r.status, cache(&r)), (200, Some("Miss")));
    assert_eq!(cache(&get(&mut c, "/prod/fail", &[])), Some("Hit"));
    assert_eq!(upstream_count(&up, "/fail"), 2);
}

#[test]
fn cache_config_errors_name_the_key() {
    let yaml = config(
        "apis:
  - name: p
    routes:
      - { route: 'GET /a/{id}', integration: { type: http_proxy, uri: 'http://127.0.0.1:9/a' } }
      - { route: 'GET /b', integration: { type: http_proxy, uri: 'http://127.0.0.1:9/b' } }
    stages:
      - name: prod
        cache: { capacity_mb: 0, ttl_s: 4000 }
        routes:
          'GET /a/{id}': { cache: { key: [path.nope, cookie.x] } }
      - name: beta
        routes:
          'GET /b': { cache: { ttl_s: 10 } }
",
    );
    let (code, text) = validate(&yaml);
    assert_eq!(code, 1, "{text}");
    for want in [
        "apis[0].stages[0].cache.ttl_s: must be 0 to 3600",
        "apis[0].stages[0].cache.capacity_mb",
        "key[0]: the route has no path parameter \"nope\"",
        "key[1]: \"cookie.x\": expected query.NAME, header.NAME or path.NAME",
        "apis[0].stages[1].routes[\"GET /b\"].cache: a route's cache needs the stage's",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

fn admin_call(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    let auth = format!("Bearer {TOKEN}");
    Client::connect(gw.admin.unwrap()).request(
        method,
        path,
        "a",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
}

#[test]
fn concurrent_misses_make_one_upstream_request() {
    let up = upstream();
    let gw = gateway(&up);
    let addr = gw.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                let r = get(&mut c, "/prod/slow", &[]);
                (r.status, cache(&r).map(str::to_owned), r.body)
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(upstream_count(&up, "/slow"), 1, "one worker, one fetch");
    let misses = results
        .iter()
        .filter(|r| r.1.as_deref() == Some("Miss"))
        .count();
    assert_eq!(misses, 1, "{results:?}");
    assert!(results.iter().all(|r| r.0 == 200 && r.2 == results[0].2));
}

#[test]
fn the_management_api_flushes_and_reports() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    get(&mut c, "/prod/pets", &[]);
    assert_eq!(cache(&get(&mut c, "/prod/pets", &[])), Some("Hit"));
    get(&mut c, "/prod/search?type=a", &[("accept-language", "fr")]);
    assert_eq!(
        cache(&get(
            &mut c,
            "/prod/search?type=a",
            &[("accept-language", "fr")]
        )),
        Some("Hit")
    );

    // One entry: the request it was stored for.
    let r = admin_call(
        &gw,
        "POST",
        "/cache/pets/prod/flush",
        r#"{"path":"/search?type=a&other=1","headers":{"Accept-Language":"fr"}}"#,
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        cache(&get(
            &mut c,
            "/prod/search?type=a",
            &[("accept-language", "fr")]
        )),
        Some("Miss")
    );
    assert_eq!(
        cache(&get(&mut c, "/prod/pets", &[])),
        Some("Hit"),
        "other entries stay"
    );

    let stats = admin_call(&gw, "GET", "/cache", "");
    assert_eq!(stats.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    let stage = &v["items"][0];
    assert_eq!(stage["stage"], "prod");
    assert_eq!(stage["capacity_bytes"], 16 * 1024 * 1024);
    assert_eq!(stage["entries"], 2, "{v}");
    assert!(stage["bytes"].as_u64().unwrap() > 0);
    let pets = stage["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "GET /pets")
        .unwrap();
    assert_eq!(
        (pets["hits"].as_u64(), pets["misses"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );

    // The whole stage.
    assert_eq!(
        admin_call(&gw, "DELETE", "/cache/pets/prod", "").status,
        204
    );
    assert_eq!(cache(&get(&mut c, "/prod/pets", &[])), Some("Miss"));
    assert_eq!(
        admin_call(&gw, "DELETE", "/cache/pets/nope", "").status,
        404
    );
    let r = admin_call(
        &gw,
        "POST",
        "/cache/pets/prod/flush",
        r#"{"path":"/nothing/here/at/all","method":"POST"}"#,
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn vary_keeps_variants_apart() {
    let up = upstream();
    let gw = gateway(&up);
    let mut c = Client::connect(gw.addr);
    let a = [("x-tenant", "a")];
    let b = [("x-tenant", "b")];
    let a1 = get(&mut c, "/prod/varied", &a);
    let a2 = get(&mut c, "/prod/varied", &a);
    assert_eq!((cache(&a1), cache(&a2)), (Some("Miss"), Some("Hit")));
    assert_eq!(a2.body, a1.body);
    // Another tenant never gets a's variant: a miss, which replaces the entry.
    let b1 = get(&mut c, "/prod/varied", &b);
    assert_eq!(cache(&b1), Some("Miss"));
    assert!(b1.text().contains("\"b\""), "{}", b1.text());
    let b2 = get(&mut c, "/prod/varied", &b);
    assert_eq!((cache(&b2), &b2.body), (Some("Hit"), &b1.body));
    // No x-tenant at all is a variant of its own.
    assert_eq!(cache(&get(&mut c, "/prod/varied", &[])), Some("Miss"));
    assert_eq!(upstream_count(&up, "/varied"), 3);
}
