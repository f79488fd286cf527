//! The JWT authorizer (AWS HTTP APIs' `JWT` type): a bearer token signed by a key of
//! the issuer's JWKS, with AWS's claim checks.
//!
//! Verification is synchronous on the worker. Keys are fetched by a background
//! thread and published through an `ArcSwap`; each worker keeps the tokens it has
//! verified, so a client's repeated token costs a hash lookup, not a signature.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::http::error::{Challenge, GatewayError};

pub use crate::http::error::{
    ALGORITHM, AUDIENCE, EXPIRED, ISSUER, MALFORMED, NOT_YET, NO_TOKEN, SIGNATURE, UNKNOWN_KEY,
};

/// AWS's JWKS fetch bounds.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(1500);
pub const MAX_JWKS_BYTES: usize = 150_000;
/// Keys are refetched this often even without an unknown `kid` (AWS caches two hours).
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// A verified token is trusted without a new signature check this long at most.
const VERIFIED_TTL_S: u64 = 300;
/// Tokens remembered per worker before the memory is cleared.
const TOKEN_CACHE_MAX: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        // HMAC needs a shared secret and EdDSA is not offered: never accepted.
        _ => None,
    }
}

/// Parses `algorithms:` entries; HMAC and `none` are refused by name.
pub fn parse_algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    names
        .iter()
        .map(|n| {
            let alg: Algorithm = n
                .parse()
                .map_err(|_| format!("{n:?} is not a JWS algorithm"))?;
            family(alg).map(|_| alg).ok_or_else(|| {
                format!("{n:?} is not accepted: only RSA (RS*, PS*) and ECDSA (ES256, ES384)")
            })
        })
        .collect()
}

struct Key {
    key: DecodingKey,
    family: Family,
    /// The JWK's `alg`, when it names one: the token must use it.
    alg: Option<Algorithm>,
}

/// One JWKS, parsed.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid`: tried for tokens without one.
    anonymous: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous.len())
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document; keys of other types (symmetric, OKP) are skipped.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut out = Self::default();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                _ => continue,
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key: {e}"))?;
            let key = Key { key, family, alg };
            match &jwk.common.key_id {
                Some(kid) => {
                    out.by_kid.insert(kid.clone(), key);
                }
                None => out.anonymous.push(key),
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a token (or an identity) is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Lower case.
    Header(Box<str>),
    Query(Box<str>),
}

impl Source {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let s = s.strip_prefix("$request.").unwrap_or(s);
        if let Some(h) = s.strip_prefix("header.").filter(|h| !h.is_empty()) {
            Ok(Self::Header(h.to_ascii_lowercase().into()))
        } else if let Some(q) = s
            .strip_prefix("querystring.")
            .or_else(|| s.strip_prefix("query."))
        {
            Ok(Self::Query(q.into()))
        } else {
            Err(format!("{s:?}: expected header.NAME or query.NAME"))
        }
    }

    /// The value in this request, if present.
    pub fn read<'a>(
        &self,
        headers: &'a [httparse::Header<'a>],
        query: Option<&'a str>,
    ) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Self::Header(name) => crate::http::parse::header(headers, name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(std::borrow::Cow::Borrowed),
            Self::Query(name) => query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name.as_ref())
                    .map(|(_, v)| v)
            }),
        }
    }
}

/// What the fetcher thread and the workers share.
#[derive(Debug)]
pub struct KeyState {
    pub keys: ArcSwap<KeySet>,
    /// Fetches finished (succeeded or not): a waiting worker watches it move.
    pub attempts: AtomicU64,
    /// Unix seconds of the last refetch asked for an unknown `kid`.
    last_ask_s: AtomicU64,
    started: AtomicBool,
}

/// The fetcher's wake-up channel: the authorizer holds the sender, so the thread
/// ends when the plan that owns the authorizer is dropped.
#[derive(Debug)]
pub struct Asks {
    tx: crossbeam_channel::Sender<()>,
    #[allow(clippy::disallowed_types)]
    // Not on the request path: the JWKS refresh thread takes the receiver once, at start.
    rx: std::sync::Mutex<Option<crossbeam_channel::Receiver<()>>>,
}

impl Default for Asks {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Self {
            tx,
            #[allow(clippy::disallowed_types)] // Not on the request path: the JWKS refresh thread takes the receiver once, at start.
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Inline,
    /// The JWKS URI, or the issuer's discovery document when `discover`.
    Remote {
        uri: String,
        discover: bool,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

#[derive(Debug)]
pub struct JwtAuthorizer {
    pub name: String,
    pub issuer: String,
    pub audience: Box<[Box<str>]>,
    pub algorithms: Box<[Algorithm]>,
    pub leeway_s: u64,
    pub source: Source,
    pub refresh_interval_s: u64,
    /// (claim, lower-case header name)
    pub forward: Box<[(Box<str>, Box<str>)]>,
    pub keys: Arc<KeyState>,
    pub key_source: KeySource,
    pub asks: Asks,
}

/// A verified token: what routes and integrations need from it.
#[derive(Debug)]
pub struct Verified {
    pub exp: u64,
    pub nbf: Option<u64>,
    pub scopes: Box<[Box<str>]>,
    /// Header lines of the forwarded claims.
    pub lines: Box<[u8]>,
    pub claims: Map<String, Value>,
}

/// The outcome of a synchronous check.
pub enum Check {
    Granted(Rc<Verified>),
    Refused(GatewayError),
    /// Signed by a key not (yet) in the set: refetch, then check again.
    UnknownKey,
}

struct Remembered {
    token: Box<str>,
    verified: Rc<Verified>,
    until_s: u64,
}

/// One worker's verified tokens, per authorizer.
#[derive(Default)]
pub struct TokenCache {
    map: HashMap<(usize, u64), Remembered>,
}

fn token_hash(token: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    token.hash(&mut h);
    h.finish()
}

fn refused(why: &'static str) -> Check {
    Check::Refused(GatewayError::Unauthorized(Challenge::Bearer(why)))
}

impl KeyState {
    pub fn new(initial: KeySet) -> Self {
        Self {
            keys: ArcSwap::from_pointee(initial),
            attempts: AtomicU64::new(0),
            last_ask_s: AtomicU64::new(0),
            started: AtomicBool::new(false),
        }
    }
}

impl JwtAuthorizer {
    /// Starts the key fetcher (once): a first fetch now, then hourly, and on asks.
    pub fn start(&self) {
        let KeySource::Remote { uri, discover, tls } = &self.key_source else {
            return;
        };
        if self.keys.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(asked) = crate::lock(&self.asks.rx).take() else {
            return;
        };
        let state = Arc::clone(&self.keys);
        let (uri, discover, tls) = (uri.clone(), *discover, tls.clone());
        let name = self.name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("jwks-{name}"))
            .spawn(move || fetch_loop(&name, &uri, discover, tls, &state, &asked));
        if let Err(e) = spawned {
            tracing::error!(authorizer = %self.name, error = %e, "cannot start the JWKS fetcher");
        }
    }

    /// Asks for a refetch after an unknown `kid`, at most once per interval (over
    /// all workers). `Some(attempts)` to wait on when asked.
    pub fn ask_refresh(&self, now_s: u64) -> Option<u64> {
        if matches!(self.key_source, KeySource::Inline) {
            return None;
        }
        let last = self.keys.last_ask_s.load(Ordering::Relaxed);
        if last != 0 && now_s < last + self.refresh_interval_s {
            return None;
        }
        if self
            .keys
            .last_ask_s
            .compare_exchange(last, now_s.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let seen = self.keys.attempts.load(Ordering::Acquire);
        let _ = self.asks.tx.try_send(());
        Some(seen)
    }

    /// Checks the request's token; `refreshed`: keys were just refetched for it.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        id: usize,
        headers: &[httparse::Header<'_>],
        query: Option<&str>,
        scopes: &[Box<str>],
        cache: &mut TokenCache,
        now_s: u64,
        refreshed: bool,
    ) -> Check {
        let Some(raw) = self.source.read(headers, query) else {
            return refused(NO_TOKEN);
        };
        let token = raw.trim();
        let token = match token.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => token[7..].trim_start(),
            _ => token,
        };
        if token.is_empty() {
            return refused(NO_TOKEN);
        }
        let hash = token_hash(token);
        let verified = match cache.map.get(&(id, hash)) {
            Some(r) if &*r.token == token && now_s < r.until_s => Rc::clone(&r.verified),
            _ => match self.verify(token, now_s, refreshed) {
                Ok(v) => {
                    let v = Rc::new(v);
                    if cache.map.len() >= TOKEN_CACHE_MAX {
                        cache.map.clear();
                    }
                    cache.map.insert(
                        (id, hash),
                        Remembered {
                            token: token.into(),
                            verified: Rc::clone(&v),
                            until_s: v.exp.min(now_s + VERIFIED_TTL_S),
                        },
                    );
                    v
                }
                Err(c) => return c,
            },
        };
        // Time claims again: a remembered token may have expired since.
        if now_s >= verified.exp + self.leeway_s {
            return refused(EXPIRED);
        }
        if verified.nbf.is_some_and(|nbf| nbf > now_s + self.leeway_s) {
            return refused(NOT_YET);
        }
        if !scopes.is_empty() && !verified.scopes.iter().any(|s| scopes.contains(s)) {
            return Check::Refused(GatewayError::Unauthorized(Challenge::Scope));
        }
        Check::Granted(verified)
    }

    /// Signature and claims (AWS's order: decode, key and signature, claims).
    pub fn verify(&self, token: &str, now_s: u64, refreshed: bool) -> Result<Verified, Check> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused(MALFORMED));
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused(MALFORMED))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refused(ALGORITHM));
        }
        let Some(fam) = family(header.alg) else {
            return Err(refused(ALGORITHM));
        };
        let keys = self.keys.keys.load();
        let key = match &header.kid {
            Some(kid) => keys.by_kid.get(kid),
            None => keys
                .anonymous
                .iter()
                .find(|k| k.family == fam && k.alg.is_none_or(|a| a == header.alg)),
        };
        let Some(key) = key else {
            return Err(if refreshed {
                refused(UNKNOWN_KEY)
            } else {
                Check::UnknownKey
            });
        };
        // No algorithm confusion: the key's type and its declared `alg` decide.
        if key.family != fam || key.alg.is_some_and(|a| a != header.alg) {
            return Err(refused(ALGORITHM));
        }
        let message = &token[..h64.len() + 1 + p64.len()];
        match jsonwebtoken::crypto::verify(sig, message.as_bytes(), &key.key, header.alg) {
            Ok(true) => {}
            _ => return Err(refused(SIGNATURE)),
        }
        drop(keys);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p64.trim_end_matches('='))
            .map_err(|_| refused(MALFORMED))?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| refused(MALFORMED))?;
        self.check_claims(claims, now_s)
    }

    fn check_claims(&self, claims: Map<String, Value>, now_s: u64) -> Result<Verified, Check> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(refused(ISSUER));
        }
        let listed = |v: Option<&Value>| match v {
            Some(Value::String(s)) => self.audience.iter().any(|a| **a == *s),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .any(|s| self.audience.iter().any(|a| **a == *s)),
            _ => false,
        };
        if !listed(claims.get("aud")) && !listed(claims.get("client_id")) {
            return Err(refused(AUDIENCE));
        }
        let time = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_f64)
                .map(|t| t.max(0.0) as u64)
        };
        let Some(exp) = time("exp") else {
            return Err(refused(EXPIRED));
        };
        if now_s >= exp + self.leeway_s {
            return Err(refused(EXPIRED));
        }
        let nbf = time("nbf");
        if nbf.is_some_and(|t| t > now_s + self.leeway_s)
            || time("iat").is_some_and(|t| t > now_s + self.leeway_s)
        {
            return Err(refused(NOT_YET));
        }
        let scopes: Box<[Box<str>]> = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(s)) => s.split_ascii_whitespace().map(Into::into).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(Into::into).collect(),
            _ => Box::default(),
        };
        let mut lines = Vec::new();
        for (claim, header) in self.forward.iter() {
            if let Some(v) = claims.get(&**claim) {
                push_header(&mut lines, header, v);
            }
        }
        Ok(Verified {
            exp,
            nbf,
            scopes,
            lines: lines.into(),
            claims,
        })
    }
}

/// Appends `name: value` for a claim or context value: strings as they are,
/// others as JSON; control characters are dropped so no value can end the line.
pub fn push_header(out: &mut Vec<u8>, name: &str, v: &Value) {
    let text = match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
        other => std::borrow::Cow::Owned(other.to_string()),
    };
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend(
        text.bytes()
            .filter(|&b| b == b'\t' || b >= 0x20 && b != 0x7f),
    );
    out.extend_from_slice(b"\r\n");
}

fn fetch_loop(
    name: &str,
    uri: &str,
    discover: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: &KeyState,
    asked: &crossbeam_channel::Receiver<()>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let got = fetch_keys(uri, discover, tls.as_ref());
        let wait = match got {
            Ok(set) => {
                tracing::info!(authorizer = name, keys = set.len(), "JWKS fetched");
                state.keys.store(Arc::new(set));
                backoff = Duration::from_secs(1);
                REFRESH_EVERY
            }
            Err(e) => {
                tracing::warn!(authorizer = name, uri, error = %e, "JWKS fetch failed; the keys in use stay");
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                w
            }
        };
        state.attempts.fetch_add(1, Ordering::AcqRel);
        match asked.recv_timeout(wait) {
            Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            // The plan that owned these keys is gone.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn fetch_keys(
    uri: &str,
    discover: bool,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<KeySet, String> {
    let jwks_uri = if discover {
        let doc = crate::http::client::get(uri, tls, FETCH_TIMEOUT, MAX_JWKS_BYTES)?;
        let doc: Value =
            serde_json::from_slice(&doc).map_err(|e| format!("discovery document: {e}"))?;
        doc.get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?
            .to_owned()
    } else {
        uri.to_owned()
    };
    let body = crate::http::client::get(&jwks_uri, tls, FETCH_TIMEOUT, MAX_JWKS_BYTES)?;
    KeySet::parse(&body)
}
