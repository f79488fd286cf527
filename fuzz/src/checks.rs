// The fuzz targets' bodies, shared by the AFL binaries (`fuzz/src/bin/`) and by
// `tests/fuzz_corpora.rs`, which replays the committed corpora under `cargo test`.
// Each must not panic on any input and asserts what must hold of its output.

use std::borrow::Cow;
use std::sync::OnceLock;

use shardgate::http::parse::{self, Chunk, ChunkedDecoder, Framing, MAX_HEADERS};
use shardgate::http::path::{normalise, Rules};
use shardgate::route::{RouteKey, Router};

const RULES: [Rules; 4] = [
    Rules {
        keep_escaped_slashes: false,
        keep_semicolons: false,
    },
    Rules {
        keep_escaped_slashes: true,
        keep_semicolons: false,
    },
    Rules {
        keep_escaped_slashes: false,
        keep_semicolons: true,
    },
    Rules {
        keep_escaped_slashes: true,
        keep_semicolons: true,
    },
];

/// The request-head parser: an accepted head has a normalised path, a length
/// within the input, and framing that does not contradict itself.
pub fn head(data: &[u8]) {
    for rules in RULES {
        let mut headers = parse::headers();
        let Ok(Some((head, hdrs))) = parse::parse_request(data, &mut headers, 16 * 1024, rules)
        else {
            continue;
        };
        assert!(head.head_len <= data.len());
        assert!(hdrs.len() <= MAX_HEADERS);
        assert!(matches!(
            normalise(&head.path, rules),
            Ok(Cow::Borrowed(p)) if p == head.path
        ));
        assert!(
            head.framing != Framing::UntilClose,
            "a request body is never close-delimited"
        );
        // The same bytes with more after them parse to the same head (pipelining).
        let mut longer = data[..head.head_len].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut again = parse::headers();
        let Ok(Some((h2, _))) = parse::parse_request(&longer, &mut again, 16 * 1024, rules) else {
            panic!("a complete head stopped parsing with bytes after it");
        };
        assert_eq!(
            (h2.head_len, &h2.path, h2.framing),
            (head.head_len, &head.path, head.framing)
        );
    }
}

/// Decodes `input` fed in pieces of the given sizes; the body and how it ended.
fn decode_in(input: &[u8], mut piece: impl FnMut() -> usize) -> (Vec<u8>, Result<usize, ()>) {
    let mut dec = ChunkedDecoder::default();
    let mut body = Vec::new();
    // `fed`: bytes handed to the decoder so far; `at`: consumed.
    let (mut at, mut fed) = (0, 0);
    loop {
        if at == fed {
            if fed == input.len() {
                return (body, Err(()));
            }
            fed = (fed + piece().max(1)).min(input.len());
        }
        match dec.decode(&input[at..fed]) {
            Err(_) => return (body, Err(())),
            Ok(Chunk::Data {
                consumed,
                start,
                len,
            }) => {
                assert!(start + len <= consumed && at + consumed <= fed);
                body.extend_from_slice(&input[at + start..at + start + len]);
                at += consumed;
            }
            Ok(Chunk::NeedMore) => at = fed,
            Ok(Chunk::Done { consumed }) => {
                assert!(at + consumed <= fed);
                return (body, Ok(at + consumed));
            }
        }
    }
}

/// The chunked decoder: whole input at once and the same input split at
/// input-chosen points decode to the same body and end at the same byte.
pub fn chunked(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let (whole, end) = decode_in(input, || input.len());
    let mut s = u32::from(seed) | 1;
    let (split, end2) = decode_in(input, || {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (s >> 16) as usize % 7 + 1
    });
    let (bytewise, end3) = decode_in(input, || 1);
    if let Ok(n) = end {
        assert_eq!(end2, Ok(n));
        assert_eq!(end3, Ok(n));
        assert_eq!(split, whole);
        assert_eq!(bytewise, whole);
    }
}

/// The path normaliser: a normal form is its own normal form (borrowed, so the
/// check is allocation-free), starts with `/`, holds no empty, `.` or `..`
/// segment and only ASCII; relaxing a rule never refuses what the strict rules
/// accept, nor changes it.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let strict = normalise(raw, RULES[0]);
    for rules in RULES {
        let Ok(n) = normalise(raw, rules) else {
            continue;
        };
        assert!(n.is_ascii() && n.starts_with('/'), "{raw:?} -> {n:?}");
        let inner = &n[1..];
        let segs: Vec<&str> = inner.split('/').collect();
        for (i, s) in segs.iter().enumerate() {
            assert!(*s != "." && *s != "..", "{raw:?} -> {n:?}");
            assert!(!s.is_empty() || i == segs.len() - 1, "{raw:?} -> {n:?}");
        }
        match normalise(&n, rules) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, n, "{raw:?}"),
            other => panic!("{raw:?} -> {n:?} -> {other:?}"),
        }
        if let Ok(s) = &strict {
            assert_eq!(s, &n, "{raw:?}");
        }
    }
}

/// The router: route keys from the input's first lines, lookups from the rest.
/// Building never panics; a match names a route that exists, its parameters are
/// pieces of the path, and `find` agrees with itself for a trailing slash.
pub fn router(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let n = lines.next().map_or(0, |l| l.len() % 12);
    let keys: Vec<RouteKey> = lines
        .by_ref()
        .take(n)
        .filter_map(|k| RouteKey::parse(k).ok())
        .collect();
    let Ok(router) = Router::build(&keys) else {
        return;
    };
    for line in lines {
        let (method, path) = line.split_once(' ').unwrap_or(("GET", line));
        let Some(m) = router.find(method, path) else {
            continue;
        };
        assert!(m.route < keys.len());
        if let Some(params) = &m.params {
            for (_, v) in params.iter() {
                assert!(path.contains(v), "{path:?} param {v:?}");
            }
        }
        if path.len() > 1 && !path.ends_with('/') {
            let slashed = format!("{path}/");
            assert_eq!(
                router.find(method, &slashed).map(|m| m.route),
                Some(m.route)
            );
        }
    }
}

/// The config loader: any text is parsed and compiled to a plan or to errors
/// with a key path, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cfg, errs) = shardgate::config::parse_partial(text);
    assert!(cfg.is_some() || !errs.is_empty());
    if let Some(cfg) = cfg {
        let _ = shardgate::compile::compile(&cfg, Some(1));
    }
}

fn jwt_authorizer() -> &'static shardgate::plan::Plan {
    static PLAN: OnceLock<shardgate::plan::Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        // RFC 7517 A.1's P-256 key, inline: no fetch.
        let yaml = "listeners: [ { name: l, bind: '127.0.0.1:0' } ]
apis:
  - name: a
    authorizers:
      - name: users
        type: jwt
        issuer: https://id.test/
        audience: [x]
        jwks:
          keys:
            - { kty: EC, crv: P-256, kid: k1, x: MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4, y: 4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM }
    routes:
      - { route: GET /me, authorizer: users, integration: { type: mock } }
    stages: [ { name: prod } ]
";
        let cfg = shardgate::config::parse(yaml).expect("the fuzz config parses");
        shardgate::compile::compile(&cfg, Some(1)).expect("the fuzz config compiles")
    })
}

/// The JWT verifier: any token (and any Authorization header) is refused or
/// granted, never a panic; nothing unsigned by the key is granted.
pub fn jwt(data: &[u8]) {
    let plan = jwt_authorizer();
    let shardgate::policy::access::Authorizer::Jwt(j) = &*plan.authorizers[0] else {
        panic!("the fuzz config's authorizer is a JWT authorizer");
    };
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let now = 1_790_000_000;
    // The fuzzer cannot sign with a key it does not hold.
    assert!(j.verify(token, now, true).is_err(), "{token:?} verified");
    let value = format!("Bearer {token}");
    let headers = [httparse::Header {
        name: "authorization",
        value: value.as_bytes(),
    }];
    let mut cache = shardgate::policy::jwt::TokenCache::default();
    let checked = j.check(0, &headers, None, &[], &mut cache, now, true);
    assert!(!matches!(
        checked,
        shardgate::policy::jwt::Check::Granted(_)
    ));
}
