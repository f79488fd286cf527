//! Criterion benches of the per-request CPU work that is not I/O: request-head and
//! response-head parse, route lookup (10 / 1,000 / 10,000 routes, against a linear
//! scan baseline), chunked decoding, the throttle check, and the API key check.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shardgate::http::parse::{parse_request, parse_response, Chunk, ChunkedDecoder};
use shardgate::route::{RouteKey, Router};

const REQUEST: &[u8] = b"GET /prod/pets/42?color=brown HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nX-Request-Id: 1b9f2c\r\n\r\n";

fn parse(c: &mut Criterion) {
    c.bench_function("parse_request/6_headers", |b| {
        b.iter(|| {
            let mut h = shardgate::http::parse::headers();
            let r =
                parse_request(black_box(REQUEST), &mut h, 16 * 1024, Default::default()).unwrap();
            black_box(r.map(|(head, _)| head.head_len))
        })
    });
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 24 Nov 2026 02:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: keep-alive\r\nCache-Control: no-store\r\n\r\n";

fn parse_resp(c: &mut Criterion) {
    c.bench_function("parse_response/6_headers", |b| {
        b.iter(|| {
            let mut h = shardgate::http::parse::headers();
            let r = parse_response(black_box(RESPONSE), &mut h, false).unwrap();
            black_box(r.map(|(head, _)| head.head_len))
        })
    });
}

/// A 64 KiB body in 16 chunks of 4 KiB, decoded from one buffer.
fn chunked(c: &mut Criterion) {
    let mut wire = Vec::new();
    for _ in 0..16 {
        wire.extend_from_slice(b"1000\r\n");
        wire.extend_from_slice(&[b'x'; 4096]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut group = c.benchmark_group("chunked_decode");
    group.throughput(criterion::Throughput::Bytes(wire.len() as u64));
    group.bench_function("64KiB_in_4KiB_chunks", |b| {
        b.iter(|| {
            let mut dec = ChunkedDecoder::default();
            let (mut at, mut body) = (0, 0);
            loop {
                match dec.decode(black_box(&wire[at..])).unwrap() {
                    Chunk::Data { consumed, len, .. } => {
                        at += consumed;
                        body += len;
                    }
                    Chunk::Done { .. } => break,
                    Chunk::NeedMore => unreachable!("whole body given"),
                }
            }
            black_box(body)
        })
    });
    group.finish();
}

/// The per-request throttle check: spending a local token, drawing a batch from the
/// shared bucket when the local ones run out.
fn throttle(c: &mut Criterion) {
    use shardgate::policy::throttle::{Limit, LocalTokens, SharedBucket};
    let bucket = SharedBucket::new(
        Limit {
            rate: 1e9,
            burst: 1_000_000,
        },
        2,
    );
    let mut local = LocalTokens::new(std::time::Instant::now());
    c.bench_function("throttle_admit/batched", |b| {
        b.iter(|| {
            let now = local.now_ns();
            black_box(local.admit(&bucket, now))
        })
    });
}

/// The per-request API key work with 1,000,000 keys loaded, each in a usage plan
/// with its own throttle and quota: SHA-256 of the header value, one hash-map
/// lookup, the stage check, the key's bucket, and its quota lease.
fn api_key(c: &mut Criterion) {
    use shardgate::ids::Slot;
    use shardgate::policy::keys::{hash, Binding, Bucket, KeyView, Keyring};
    use shardgate::policy::quota::{Leases, Period, Quota};
    use shardgate::policy::throttle::{Limit, LocalTokens, SharedBucket};
    use std::sync::Arc;
    const N: u32 = 1_000_000;
    let mut ring = Keyring::with_capacity(N as usize);
    for i in 0..N {
        let binding = Arc::new(Binding {
            key_id: format!("k{i}").into(),
            plan: "gold".into(),
            throttle: Some(Bucket {
                slot: Slot {
                    index: 2 * i,
                    gen: 1,
                },
                shared: std::sync::Arc::new(SharedBucket::new(
                    Limit {
                        rate: 1e9,
                        burst: 1_000_000,
                    },
                    2,
                )),
            }),
            routes: Box::default(),
            quota: Some((
                Slot {
                    index: 2 * i + 1,
                    gen: 1,
                },
                Arc::new(Quota::new(u64::MAX, Period::Month)),
            )),
        });
        ring.insert(KeyView {
            hash: hash(format!("key{i:020}").as_bytes()),
            enabled: true,
            stages: Box::new([(0, binding)]),
        });
    }
    let value = format!("key{:020}", 777_777);
    let headers = [
        httparse::Header {
            name: "host",
            value: b"api.example.com",
        },
        httparse::Header {
            name: "x-api-key",
            value: value.as_bytes(),
        },
    ];
    c.bench_function("api_key_check/1M_keys", |b| {
        b.iter(|| black_box(ring.check(black_box(&headers), 0).is_ok()))
    });
    let mut tokens = LocalTokens::new(std::time::Instant::now());
    let mut leases = Leases::new(2);
    let unix_s = shardgate::clock::unix_s();
    c.bench_function("api_key_throttle_quota/1M_keys", |b| {
        b.iter(|| {
            let binding = ring.check(black_box(&headers), 0).ok()?;
            let t = binding.throttle.as_ref()?;
            let now = tokens.now_ns();
            if !tokens.admit_slot(t.slot, &t.shared, now) {
                return None;
            }
            let (slot, q) = binding.quota.as_ref()?;
            black_box(leases.admit(*slot, q, unix_s).ok())
        })
    });
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("GET /svc{i}/items/{{id}}"))
        .collect()
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let texts = keys(n);
        let parsed: Vec<RouteKey> = texts.iter().map(|k| RouteKey::parse(k).unwrap()).collect();
        let router = Router::build(&parsed).unwrap();
        let path = format!("/svc{}/items/42", n / 2);
        group.bench_with_input(BenchmarkId::new("radix", n), &path, |b, p| {
            b.iter(|| black_box(router.find("GET", black_box(p)).map(|m| m.route)))
        });
        // Baseline: compare the path with every route's literal prefix in turn.
        let prefixes: Vec<String> = (0..n).map(|i| format!("/svc{i}/items/")).collect();
        group.bench_with_input(BenchmarkId::new("linear_scan", n), &path, |b, p| {
            b.iter(|| {
                black_box(
                    prefixes
                        .iter()
                        .position(|pre| black_box(p).starts_with(pre.as_str())),
                )
            })
        });
    }
    group.finish();
}

/// The response cache with 100,000 entries of 1 KiB: a hit (hash, compare the key,
/// move to the front of the LRU list), and an insert that evicts the oldest.
fn cache(c: &mut Criterion) {
    use shardgate::policy::cache::{Cache, Entry, Lookup};
    const N: usize = 100_000;
    let entry = |i: usize| Entry {
        key: format!("GET /items/{i}\nq=type{}", i % 7)
            .into_bytes()
            .into(),
        head: b"content-type: application/json\r\ncontent-length: 1024\r\n\r\n"[..].into(),
        body: vec![b'x'; 1024].into(),
        stored_s: 0,
        expires_ms: u64::MAX,
        vary: None,
    };
    // Room for exactly N: every insert past them evicts one.
    let one = {
        let mut probe = Cache::new(usize::MAX);
        probe.insert(entry(0));
        probe.used()
    };
    let mut cache = Cache::new(N * (one + 8));
    for i in 0..N {
        cache.insert(entry(i));
    }
    assert_eq!(cache.len(), N);
    let keys: Vec<Vec<u8>> = (0..N).map(|i| entry(i).key.to_vec()).collect();
    let mut i = 0usize;
    c.bench_function("cache/lookup_hit/100k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            black_box(matches!(cache.get(&keys[i], 1), Lookup::Hit(_)))
        })
    });
    let mut n = N;
    c.bench_function("cache/insert_evict/100k", |b| {
        b.iter_batched(
            || {
                n += 1;
                entry(n)
            },
            |e| black_box(cache.insert(e)),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A JWT authorizer with its key already fetched: a full check (signature and
/// claims), and the per-worker cache hit a repeated token gets.
fn jwt(c: &mut Criterion) {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use shardgate::policy::jwt::{JwtAuthorizer, KeySet, KeySource, KeyState, Source, TokenCache};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://id.test/", "aud": "petstore", "sub": "alice",
        "exp": now + 3600, "iat": now, "scope": "pets:read",
    });
    let mut group = c.benchmark_group("jwt");
    for (alg, rc) in [
        (Algorithm::RS256, &rcgen::PKCS_RSA_SHA256),
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
    ] {
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        let pem = kp.serialize_pem();
        let enc = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        };
        let mut jwk = Jwk::from_encoding_key(&enc, alg).unwrap();
        jwk.common.key_id = Some("k1".into());
        let set = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).unwrap();
        let mut header = Header::new(alg);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
        let auth = JwtAuthorizer {
            name: "users".into(),
            issuer: "https://id.test/".into(),
            audience: vec!["petstore".into()].into(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256].into(),
            leeway_s: 60,
            source: Source::Header("authorization".into()),
            refresh_interval_s: 60,
            forward: vec![("sub".into(), "x-jwt-claim-sub".into())].into(),
            keys: std::sync::Arc::new(KeyState::new(KeySet::parse(&set).unwrap())),
            key_source: KeySource::Inline,
            asks: Default::default(),
        };
        let value = format!("Bearer {token}");
        let headers = [httparse::Header {
            name: "authorization",
            value: value.as_bytes(),
        }];
        let scopes: Vec<Box<str>> = vec!["pets:read".into()];
        group.bench_function(BenchmarkId::new("verify", format!("{alg:?}")), |b| {
            b.iter(|| auth.verify(black_box(&token), now, false).is_ok())
        });
        let mut cache = TokenCache::default();
        group.bench_function(BenchmarkId::new("cached", format!("{alg:?}")), |b| {
            b.iter(|| {
                matches!(
                    auth.check(
                        0,
                        black_box(&headers),
                        None,
                        &scopes,
                        &mut cache,
                        now,
                        false
                    ),
                    shardgate::policy::jwt::Check::Granted(_)
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, parse_resp, route, chunked, throttle, api_key, cache, jwt);
criterion_main!(benches);
