//! Request paths (`shared/spec/config.md`, "Request paths"): what is routed is what
//! is forwarded. Every shape an attacker tries either is refused with 400 or reaches
//! the route its normalised path names, and the upstream receives exactly that path.

mod common;
use common::*;
use shardgate::http::path::{normalise, Rules};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The routes of the table: each integration prefixes what it forwards with the
/// route's letter, so the upstream's target names the route that served it.
fn gateway(up: &Upstream, listener_extra: &str) -> Gateway {
    let be = up.url();
    Gateway::start(&format!(
        "workers: 2
listeners:
  - name: test
    bind: 127.0.0.1:0
{listener_extra}
domains:
  - name: api.test
    mappings:
      - {{ base_path: v2, api: staged, stage: prod }}
apis:
  - name: main
    authorizers:
      - {{ name: users, type: jwt, issuer: https://id.test/, audience: [x], jwks: {{ keys: [ {{ kty: EC, crv: P-256, kid: k1, x: MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4, y: 4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM }} ] }} }}
    routes:
      - {{ route: 'ANY /admin/{{proxy+}}', authorizer: users, integration: {{ type: http_proxy, uri: \"{be}/A/{{proxy}}\" }} }}
      - {{ route: 'GET /pets/{{id}}', integration: {{ type: http_proxy, uri: \"{be}/P/{{id}}\" }} }}
      - {{ route: 'ANY /files/{{proxy+}}', integration: {{ type: http_proxy, uri: \"{be}/F/{{proxy}}\" }} }}
      - {{ route: '$default', integration: {{ type: http_proxy, uri: \"{be}/D\" }} }}
    stages: [ {{ name: $default }} ]
  - name: staged
    routes:
      - {{ route: 'GET /items/{{id}}', integration: {{ type: http_proxy, uri: \"{be}/S/{{id}}\" }} }}
    stages: [ {{ name: prod }} ]
"
    ))
}

/// Sends one request (raw target and Host) on a new connection; the status and what
/// the upstream saw (its echo: `METHOD TARGET body=N`), if it answered.
fn send(addr: SocketAddr, method: &str, target: &[u8], host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no status for {:?}: {text:?}",
                String::from_utf8_lossy(target)
            )
        });
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The target the upstream received, from the echo body.
fn upstream_target(body: &str) -> &str {
    body.split(' ').nth(1).unwrap_or("")
}

/// (target as sent, Host, expected status, expected upstream target or "" when the
/// upstream must see nothing)
const TABLE: &[(&str, &str, u16, &str)] = &[
    // The reported bypasses: every spelling of /admin/secret reaches the authorizer.
    ("/admin/secret", "gw.test", 401, ""),
    ("//admin/secret", "gw.test", 401, ""),
    ("///admin///secret", "gw.test", 401, ""),
    ("/x/../admin/secret", "gw.test", 401, ""),
    ("/./admin/secret", "gw.test", 401, ""),
    ("/%61dmin/secret", "gw.test", 401, ""),
    ("/%41dmin/secret", "gw.test", 200, "/D/Admin/secret"),
    ("/ADMIN/secret", "gw.test", 200, "/D/ADMIN/secret"),
    ("/public/%2e%2e/admin/secret", "gw.test", 401, ""),
    ("/public/%2E%2E/admin/secret", "gw.test", 401, ""),
    ("/public/%2e%2E/admin/secret", "gw.test", 401, ""),
    ("/public/.%2e/admin/secret", "gw.test", 401, ""),
    ("/public/%2e./admin/secret", "gw.test", 401, ""),
    ("/public/%2e/../admin/secret", "gw.test", 401, ""),
    ("/admin/%2e/secret", "gw.test", 401, ""),
    ("/admin/x/%2e%2e/secret", "gw.test", 401, ""),
    ("/admin%2fsecret", "gw.test", 400, ""),
    ("/admin%2Fsecret", "gw.test", 400, ""),
    ("/admin%5csecret", "gw.test", 400, ""),
    ("/admin\\secret", "gw.test", 400, ""),
    ("/public\\..\\admin/secret", "gw.test", 400, ""),
    ("/admin;/secret", "gw.test", 400, ""),
    ("/public/..;/admin/secret", "gw.test", 400, ""),
    ("/admin/secret%00", "gw.test", 400, ""),
    ("/admin/secret%00.json", "gw.test", 400, ""),
    ("/pets/1%0d%0aX-Injected:%201", "gw.test", 400, ""),
    ("/..", "gw.test", 400, ""),
    ("/../admin/secret", "gw.test", 400, ""),
    ("/pets/../../etc/passwd", "gw.test", 400, ""),
    ("/%2e%2e/%2e%2e/etc/passwd", "gw.test", 400, ""),
    ("/pets/%zz", "gw.test", 400, ""),
    ("/pets/%4", "gw.test", 400, ""),
    // Routed by the normalised path, forwarded as routed.
    ("/pets/1", "gw.test", 200, "/P/1"),
    ("//pets//1", "gw.test", 200, "/P/1"),
    ("/pets/./1", "gw.test", 200, "/P/1"),
    ("/files/x/../pets/1", "gw.test", 200, "/F/pets/1"),
    ("/x/../pets/1", "gw.test", 200, "/P/1"),
    ("/%70ets/%31", "gw.test", 200, "/P/1"),
    ("/pets/a%20b", "gw.test", 200, "/P/a%20b"),
    ("/pets/a%2a", "gw.test", 200, "/P/a%2A"),
    ("/pets/%7e%2D%5f", "gw.test", 200, "/P/~-_"),
    ("/pets/%c3%a9", "gw.test", 200, "/P/%C3%A9"),
    (
        "/pets/1?q=/../admin/secret",
        "gw.test",
        200,
        "/P/1?q=/../admin/secret",
    ),
    (
        "/pets/1?next=%2e%2e%2fadmin",
        "gw.test",
        200,
        "/P/1?next=%2e%2e%2fadmin",
    ),
    ("/files//a//b/", "gw.test", 200, "/F/a/b"),
    ("/files/a/b/c/../../d", "gw.test", 200, "/F/a/d"),
    ("/files/.well-known/x", "gw.test", 200, "/F/.well-known/x"),
    ("/files/a..b/..c", "gw.test", 200, "/F/a..b/..c"),
    ("/other//thing", "gw.test", 200, "/D/other/thing"),
    ("/other/./thing/.", "gw.test", 200, "/D/other/thing/"),
    ("/a/..", "gw.test", 200, "/D/"),
    ("/", "gw.test", 200, "/D/"),
    // Absolute-form targets: the same normalisation.
    ("http://gw.test//admin/secret", "gw.test", 401, ""),
    ("http://gw.test/x/../pets/2", "gw.test", 200, "/P/2"),
    ("http://gw.test/%2e%2e/x", "gw.test", 400, ""),
    ("http://gw.test", "gw.test", 200, "/D/"),
    // The stage segment and custom-domain base paths read the normalised path.
    ("/prod/items/1", "gw.test", 200, "/S/1"),
    ("//prod//items/1", "gw.test", 200, "/S/1"),
    ("/%70rod/items/1", "gw.test", 200, "/S/1"),
    ("/x/../prod/items/1", "gw.test", 200, "/S/1"),
    ("/prod/../items/1", "gw.test", 200, "/D/items/1"),
    ("/v2/items/3", "api.test", 200, "/S/3"),
    ("//v2/./items/3", "api.test", 200, "/S/3"),
    ("/%76%32/items/3", "api.test", 200, "/S/3"),
];

#[test]
fn path_shapes_route_and_forward_as_normalised() {
    let up = Upstream::echo();
    let gw = gateway(&up, "");
    assert!(TABLE.len() >= 40);
    for &(target, host, status, want) in TABLE {
        let before = up.seen().len();
        let (got, body) = send(gw.addr, "GET", target.as_bytes(), host);
        assert_eq!(got, status, "{target} (Host {host}): {body}");
        if want.is_empty() {
            assert_eq!(up.seen().len(), before, "{target} reached the upstream");
        } else {
            assert_eq!(upstream_target(&body), want, "{target} (Host {host})");
        }
    }
    // Refusals name their reason in the log (debug level is off: the 400 itself is
    // the answer); the gateway is still serving after all of them.
    assert_eq!(send(gw.addr, "GET", b"/pets/9", "gw.test").0, 200);
}

/// A raw control byte, raw non-ASCII and a fragment are refused or encoded before
/// routing.
#[test]
fn raw_bytes_in_the_target() {
    let up = Upstream::echo();
    let gw = gateway(&up, "");
    let (status, _) = send(gw.addr, "GET", b"/pets/\x01", "gw.test");
    assert_eq!(status, 400);
    let (status, body) = send(gw.addr, "GET", "/pets/é".as_bytes(), "gw.test");
    assert_eq!(
        (status, upstream_target(&body)),
        (200, "/P/%C3%A9"),
        "{body}"
    );
    let (status, _) = send(gw.addr, "GET", b"/pets/1#frag", "gw.test");
    assert_eq!(status, 400);
}

/// `paths: { escaped_slashes: keep, semicolons: keep }` lets `%2F`, `%5C` and `;`
/// through (still normalised otherwise); NUL, backslash and `..;` stay refused.
#[test]
fn listener_keeps_escaped_slashes_when_told() {
    let up = Upstream::echo();
    let gw = gateway(
        &up,
        "    paths: { escaped_slashes: keep, semicolons: keep }",
    );
    let table: &[(&str, u16, &str)] = &[
        ("/files/a%2fb", 200, "/F/a%2Fb"),
        ("/files/a%5Cb", 200, "/F/a%5Cb"),
        ("//pets/a%2Fb", 200, "/P/a%2Fb"),
        ("/admin%2fsecret", 200, "/D/admin%2Fsecret"),
        ("/admin;x/secret", 200, "/D/admin;x/secret"),
        ("/files/a;b/../c", 200, "/F/c"),
        ("/public/..;/admin/secret", 400, ""),
        ("/x/.;/admin/secret", 400, ""),
        ("/files/%00", 400, ""),
        ("/files/a\\b", 400, ""),
        ("/x/../admin/secret", 401, ""),
    ];
    for &(target, status, want) in table {
        let (got, body) = send(gw.addr, "GET", target.as_bytes(), "gw.test");
        assert_eq!(got, status, "{target}: {body}");
        if !want.is_empty() {
            assert_eq!(upstream_target(&body), want, "{target}");
        }
    }
    let (code, out) = validate(&config(
        "    paths: { escaped_slashes: sometimes }\napis: []\n",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("listeners[0].paths.escaped_slashes"), "{out}");
}

/// Whether `p` is in normal form, judged independently of the gateway's code:
/// no empty, `.` or `..` segment (but a final empty one), and every escape is
/// upper-case hex of a byte that must stay escaped.
fn canonical(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let last = segs.len() - 1;
    let shape = segs
        .iter()
        .enumerate()
        .all(|(i, s)| !matches!(*s, "." | "..") && (!s.is_empty() || i == last));
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if i + 2 >= b.len() {
                    return false;
                }
                let (h, l) = (b[i + 1], b[i + 2]);
                if !hex(h) || !hex(l) {
                    return false;
                }
                let v = u8::from_str_radix(&p[i + 1..i + 3], 16).unwrap();
                if v.is_ascii_alphanumeric() || b"-._~/\\".contains(&v) || v < 0x20 || v == 0x7f {
                    return false;
                }
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&c) => i += 1,
            _ => return false,
        }
    }
    shape
}

/// Random paths: whatever is forwarded is in normal form (checked independently),
/// is the normalised request path under the prefix of the route that served it,
/// and that route is the one the path names; nothing under /admin/ reaches the
/// upstream without the authorizer.
#[test]
fn random_paths_forward_what_they_route() {
    let up = Upstream::echo();
    let gw = gateway(&up, "");
    let parts: &[&str] = &[
        "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "admin", "%61dmin", "pets", "files", "prod",
        "1", "x", "%2f", "%5c", ";", "%00", "%20", "%c3%a9", "é", "~", "%7E", "%", "%4", "a.b",
    ];
    let strict = Rules::default();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut served, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut p = String::from("/");
        for _ in 0..1 + next() % 8 {
            p.push_str(parts[(next() % parts.len() as u64) as usize]);
        }
        let before = up.seen().len();
        let (status, body) = send(gw.addr, "GET", p.as_bytes(), "gw.test");
        if status != 200 {
            assert!(matches!(status, 400 | 401 | 404), "{p}: {status}");
            assert_eq!(up.seen().len(), before, "{p} reached the upstream");
            if status == 400 {
                refused += 1;
                assert!(normalise(&p, strict).is_err(), "{p} refused");
            }
            continue;
        }
        served += 1;
        let got = upstream_target(&body);
        // The path the router saw, recovered from the route's prefix.
        let (route, routed) = got.split_at(2);
        let routed = match route {
            "/P" => format!("/pets{routed}"),
            "/F" => format!("/files{routed}"),
            "/S" => format!("/prod/items{routed}"),
            "/D" => routed.to_owned(),
            other => panic!("{p}: unknown route {other} in {got}"),
        };
        assert!(
            canonical(&routed),
            "{p}: forwarded {got}, not in normal form"
        );
        let segs: Vec<&str> = routed[1..].split('/').collect();
        let named = match segs.as_slice() {
            ["admin", rest @ ..] if rest.iter().any(|s| !s.is_empty()) => {
                panic!("{p} reached the upstream as {got} without the authorizer")
            }
            ["pets", id] | ["pets", id, ""] if !id.is_empty() => "/P",
            ["files", rest @ ..] if rest.iter().any(|s| !s.is_empty()) => "/F",
            ["prod", "items", id] | ["prod", "items", id, ""] if !id.is_empty() => "/S",
            _ => "/D",
        };
        assert_eq!(route, named, "{p}: {routed} served by the wrong route");
        if route == "/D" {
            assert_eq!(normalise(&p, strict).as_deref(), Ok(routed.as_str()), "{p}");
        }
    }
    assert!(
        served > 50 && refused > 50,
        "{served} served, {refused} refused"
    );
}

/// Cache keys and the access log read the normalised path too: two spellings of
/// one path share a cache entry, and the log shows the path as routed.
#[test]
fn cache_keys_and_access_logs_use_the_normalised_path() {
    let up = Upstream::echo();
    let be = up.url();
    let log = std::env::temp_dir().join(format!("shardgate-paths-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let gw = Gateway::start(&config(&format!(
        "apis:
  - name: c
    routes:
      - {{ route: 'GET /items/{{id}}', integration: {{ type: http_proxy, uri: \"{be}/items/{{id}}\" }} }}
    stages:
      - name: $default
        cache: {{ capacity_mb: 1, ttl_s: 60 }}
        access_log: {{ path: {log}, format: \"$context.path|$context.status\" }}
        routes:
          \"GET /items/{{id}}\": {{ cache: {{ ttl_s: 60 }} }}
",
        log = log.display()
    )));
    let mut c = Client::connect(gw.addr);
    let first = c.get("/items/a%62c");
    assert_eq!(first.header("x-cache"), Some("Miss"));
    for spelling in [
        "/items/abc",
        "//items/./abc",
        "/x/../items/%61bc",
        "/%69tems/abc",
    ] {
        let r = c.get(spelling);
        assert_eq!(r.header("x-cache"), Some("Hit"), "{spelling}");
    }
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.last().target, "/items/abc");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(5), || lines()
        .lines()
        .count()
        >= 5));
    for line in lines().lines() {
        assert_eq!(line, "/items/abc|200");
    }
    drop(gw);
    let _ = std::fs::remove_file(&log);
}
