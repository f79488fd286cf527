//! The SigV4 authorizer: AWS Signature Version 4 for the `execute-api` service, as
//! API Gateway's IAM authorization checks it, against access keys the gateway holds
//! (the config's and the management API's) instead of IAM.

use crate::http::responses::ResponseType;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::hmac;

use crate::http::error::GatewayError;
pub use crate::http::sigv4::sha256_hex;
use crate::http::sigv4::{amz_date, canonical_request, signing_key, Canonical};
#[cfg(test)]
use crate::http::sigv4::{normalize_path, uri_encode};

/// Signatures older or newer than this are refused (AWS: 5 minutes).
pub const MAX_SKEW_S: u64 = 300;
const ACCOUNT: &str = "000000000000";

/// One access key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
    /// `api/stage/METHOD/path` patterns (`*` matches anything); empty: all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Where it came from: `config` or `api`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub created_s: u64,
}

impl AccessKey {
    fn may_call(&self, resource: &str) -> bool {
        self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|p| glob(p.as_bytes(), resource.as_bytes()))
    }
}

/// `*` matches any run of characters (slashes included); everything else itself.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Access key ids: 16 to 128 letters and digits (IAM's rule).
pub fn check_key_id(id: &str) -> Result<(), String> {
    if (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(format!(
            "{id:?}: an access key id is 16 to 128 letters and digits"
        ))
    }
}

/// Checks an `allow` pattern when it is configured or created.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "{p:?}: expected api/stage/METHOD/path, `*` as a wildcard"
        ));
    }
    Ok(())
}

/// The gateway's access keys, published to the workers.
#[derive(Debug, Default)]
pub struct KeyTable {
    live: ArcSwap<HashMap<String, Arc<AccessKey>>>,
}

impl KeyTable {
    pub fn publish(&self, keys: impl IntoIterator<Item = AccessKey>) {
        let map = keys
            .into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        self.live.store(Arc::new(map));
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<AccessKey>>> {
        self.live.load_full()
    }
}

#[derive(Debug)]
pub struct Sigv4Authorizer {
    pub name: String,
    pub region: String,
    pub keys: Arc<KeyTable>,
}

/// What is signed besides the headers.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The request target's path as sent (stage prefix included).
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'a>],
    /// SHA-256 of the body, hex.
    pub body_hash: &'a str,
    /// `api/stage/METHOD/path`: what the key must be allowed to call.
    pub resource: &'a str,
}

fn forbidden(message: &str) -> GatewayError {
    GatewayError::detailed(403, "message", message, None)
        .of_type(Some(ResponseType::InvalidSignature))
}

fn mismatch() -> GatewayError {
    forbidden(
        "The request signature we calculated does not match the signature you provided. \
         Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    )
}

fn header<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a str> {
    crate::http::parse::header(headers, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// `yyyyMMddTHHmmssZ` → unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    if y < 1970 {
        return None;
    }
    let days = crate::clock::days_from_civil(y, mo as u32, d as u32);
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// The credential, signed header names and signature of a request.
struct Auth<'a> {
    key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
    expires: Option<u64>,
    token: Option<std::borrow::Cow<'a, str>>,
}

fn split_credential(c: &str) -> Option<(&str, &str, &str, &str, &str)> {
    let mut p = c.split('/');
    let r = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
    p.next().is_none().then_some(r)
}

fn from_header<'a>(
    value: &'a str,
    headers: &'a [httparse::Header<'a>],
) -> Result<Auth<'a>, GatewayError> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| {
        forbidden("Authorization header requires the AWS4-HMAC-SHA256 algorithm.")
    })?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let missing = |what: &str| {
        forbidden(&format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let cred = cred.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = sig.ok_or_else(|| missing("Signature"))?;
    let (key_id, date, region, service, terminator) = split_credential(cred)
        .ok_or_else(|| forbidden("Credential should be scoped to a valid region."))?;
    let amz_date = header(headers, "x-amz-date").ok_or_else(|| {
        forbidden(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    Ok(Auth {
        key_id,
        date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
        amz_date,
        expires: None,
        token: header(headers, "x-amz-security-token").map(std::borrow::Cow::Borrowed),
    })
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

impl Sigv4Authorizer {
    /// Whether this request carries SigV4 at all (header or presigned query).
    pub fn presigned(query: Option<&str>) -> bool {
        query.is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Signature=")))
    }

    /// Verifies the request; `Ok` with the key id.
    pub fn verify(&self, r: &Signed<'_>, now_s: u64) -> Result<String, GatewayError> {
        let auth_header = header(r.headers, "authorization");
        let q = r.query.unwrap_or("");
        // Presigned values live as long as the request: leaked into no struct.
        let (cred_q, date_q, signed_q, sig_q, expires_q, token_q);
        let auth = match auth_header {
            Some(v) => from_header(v, r.headers)?,
            None if Self::presigned(r.query) => {
                if query_param(q, "X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
                    return Err(forbidden(
                        "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"",
                    ));
                }
                cred_q = query_param(q, "X-Amz-Credential").unwrap_or_default();
                date_q = query_param(q, "X-Amz-Date").unwrap_or_default();
                signed_q = query_param(q, "X-Amz-SignedHeaders").unwrap_or_default();
                sig_q = query_param(q, "X-Amz-Signature").unwrap_or_default();
                expires_q = query_param(q, "X-Amz-Expires").and_then(|e| e.parse::<u64>().ok());
                token_q = query_param(q, "X-Amz-Security-Token");
                let (key_id, date, region, service, terminator) = split_credential(&cred_q)
                    .ok_or_else(|| forbidden("Credential should be scoped to a valid region."))?;
                Auth {
                    key_id,
                    date,
                    region,
                    service,
                    terminator,
                    signed_headers: &signed_q,
                    signature: &sig_q,
                    amz_date: &date_q,
                    expires: Some(expires_q.unwrap_or(0).min(604_800)),
                    token: token_q,
                }
            }
            None => {
                return Err(forbidden("Missing Authentication Token")
                    .of_type(Some(ResponseType::MissingAuthenticationToken)))
            }
        };
        let keys = self.keys.snapshot();
        let Some(key) = keys.get(auth.key_id) else {
            return Err(forbidden(
                "The security token included in the request is invalid.",
            ));
        };
        if auth.token.is_some() {
            // Only long-term keys exist here; a session token names credentials
            // this gateway did not issue.
            return Err(forbidden(
                "The security token included in the request is invalid.",
            ));
        }
        let Some(signed_at) = parse_amz_date(auth.amz_date) else {
            return Err(forbidden(
                "Date must be in ISO-8601 'basic format'. Got ...'",
            ));
        };
        match auth.expires {
            Some(exp) => {
                if now_s > signed_at + exp {
                    return Err(forbidden(&format!(
                        "Signature expired: {} is now earlier than {} ({} - {} sec.)",
                        amz_date(signed_at + exp),
                        amz_date(now_s),
                        amz_date(now_s),
                        exp
                    ))
                    .of_type(Some(ResponseType::ExpiredToken)));
                }
                if signed_at > now_s + MAX_SKEW_S {
                    return Err(forbidden("Signature not yet current"));
                }
            }
            None if signed_at + MAX_SKEW_S < now_s => {
                return Err(forbidden(&format!(
                    "Signature expired: {} is now earlier than {} ({} - 5 min.)",
                    auth.amz_date,
                    amz_date(now_s - MAX_SKEW_S),
                    amz_date(now_s)
                ))
                .of_type(Some(ResponseType::ExpiredToken)));
            }
            None if signed_at > now_s + MAX_SKEW_S => {
                return Err(forbidden(&format!(
                    "Signature not yet current: {} is still later than {} ({} + 5 min.)",
                    auth.amz_date,
                    amz_date(now_s + MAX_SKEW_S),
                    amz_date(now_s)
                )));
            }
            None => {}
        }
        if auth.date != &auth.amz_date[..8] {
            return Err(forbidden("Credential should be scoped to a valid date."));
        }
        if auth.region != self.region {
            return Err(forbidden(&format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                auth.region
            )));
        }
        if auth.service != "execute-api" {
            return Err(forbidden(
                "Credential should be scoped to correct service: 'execute-api'. ",
            ));
        }
        if auth.terminator != "aws4_request" {
            return Err(forbidden(
                "Credential should be scoped with a valid terminator: 'aws4_request'.",
            ));
        }
        let signed: Vec<&str> = auth.signed_headers.split(';').collect();
        if !signed.contains(&"host") {
            return Err(mismatch());
        }
        let payload =
            match header(r.headers, "x-amz-content-sha256") {
                Some(h) if h.eq_ignore_ascii_case(r.body_hash) => r.body_hash,
                Some(_) => return Err(forbidden(
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )),
                None => r.body_hash,
            };
        let signing_key = signing_key(&key.secret, auth.date, auth.region, "execute-api");
        let presigned = auth.expires.is_some();
        // A presigned URL may also leave the payload unsigned (S3's convention).
        let payloads: &[&str] = if presigned {
            &[payload, "UNSIGNED-PAYLOAD"]
        } else {
            &[payload]
        };
        let mut matched = false;
        // The strict canonical query string (each name and value decoded and
        // re-encoded, as AWS computes it) and, for clients that sign the query as it
        // is written (botocore), that form too.
        'forms: for strict in [true, false] {
            for payload in payloads {
                let canonical = canonical_request(
                    &Canonical {
                        method: r.method,
                        raw_path: r.raw_path,
                        query: r.query,
                        headers: r.headers,
                    },
                    &signed,
                    auth.signed_headers,
                    payload,
                    strict,
                    presigned,
                );
                let sts = format!(
                    "AWS4-HMAC-SHA256\n{}\n{}/{}/execute-api/aws4_request\n{}",
                    auth.amz_date,
                    auth.date,
                    auth.region,
                    sha256_hex(canonical.as_bytes())
                );
                let sig = hmac::sign(&signing_key, sts.as_bytes());
                let expected = crate::encode::hex(sig.as_ref());
                if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
                    matched = true;
                    break 'forms;
                }
            }
        }
        if !matched {
            return Err(mismatch());
        }
        if !key.may_call(r.resource) {
            return Err(GatewayError::detailed(
                403,
                "Message",
                &format!(
                    "User: arn:aws:iam::{ACCOUNT}:user/{} is not authorized to perform: execute-api:Invoke on resource: arn:aws:execute-api:{}:{ACCOUNT}:{}",
                    key.id, self.region, r.resource
                ),
                Some("AccessDeniedException"),
            )
            .of_type(Some(ResponseType::AccessDenied)));
        }
        Ok(key.id.clone())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example (IAM ListUsers, adapted): the signing key chain and
    /// a GET with no body, signed here and checked by `verify`.
    #[test]
    fn dates_globs_and_paths() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert!(parse_amz_date("2015-08-30").is_none());
        assert!(glob(b"petstore/prod/*", b"petstore/prod/GET/pets/1"));
        assert!(glob(b"*/prod/GET/*", b"petstore/prod/GET/pets"));
        assert!(!glob(b"petstore/prod/*", b"petstore/beta/GET/pets"));
        assert_eq!(normalize_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(normalize_path(""), "/");
        let mut s = String::new();
        uri_encode(&mut s, b"/a b%20/~x", true);
        assert_eq!(s, "/a%20b%2520/~x");
    }

    #[test]
    fn aws_signing_key_example() {
        // From AWS's SigV4 docs: secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // 20120215, us-east-1, iam.
        let mut k = hmac::sign(
            &hmac::Key::new(
                hmac::HMAC_SHA256,
                b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ),
            b"20120215",
        );
        for part in ["us-east-1", "iam", "aws4_request"] {
            k = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()),
                part.as_bytes(),
            );
        }
        assert_eq!(
            crate::encode::hex(k.as_ref()),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
