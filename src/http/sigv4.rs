//! AWS Signature Version 4 on HTTP requests: the canonical request, the signing
//! key, and signing the gateway's own outbound calls (the Lambda Invoke API, AWS
//! service integrations). `policy::sigv4` verifies callers' signatures with the
//! same canonical form.

use aws_lc_rs::{digest, hmac};

/// The parts of a request the canonical form reads.
pub struct Canonical<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded once).
    pub raw_path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [httparse::Header<'a>],
}

/// Credentials the gateway signs with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Signs an outbound request: returns the headers to add (`x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token` where there is one, and
/// `authorization`), given the headers already on it (`host` among them).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    raw_path: &str,
    query: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
    now_s: u64,
) -> Vec<(String, String)> {
    let date_time = amz_date(now_s);
    let payload = sha256_hex(body);
    let mut added = vec![
        ("x-amz-date".to_owned(), date_time.clone()),
        ("x-amz-content-sha256".to_owned(), payload.clone()),
    ];
    if let Some(t) = &creds.session_token {
        added.push(("x-amz-security-token".to_owned(), t.clone()));
    }
    let all: Vec<(String, &str)> = headers
        .iter()
        .chain(added.iter())
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str()))
        .collect();
    let parsed: Vec<httparse::Header<'_>> = all
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let mut names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let signed_headers = names.join(";");
    let canonical = canonical_request(
        &Canonical {
            method,
            raw_path,
            query,
            headers: &parsed,
        },
        &names,
        &signed_headers,
        &payload,
        true,
        false,
    );
    let date = &date_time[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(&creds.secret_access_key, date, region, service);
    let signature = crate::encode::hex(hmac::sign(&key, sts.as_bytes()).as_ref());
    added.push((
        "authorization".to_owned(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    added
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::encode::hex(digest::digest(&digest::SHA256, data).as_ref())
}

pub fn amz_date(unix: u64) -> String {
    let c = crate::clock::Civil::of(unix as i64);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        k = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()),
            part.as_bytes(),
        );
    }
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

/// RFC 3986 encoding: unreserved characters stay, everything else is `%XX`
/// (upper case); `/` stays where `keep_slash`.
pub fn uri_encode(out: &mut String, s: &[u8], keep_slash: bool) {
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// botocore's `remove_dot_segments`: `.` and empty segments dropped, `..` pops.
pub fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let first = if path.starts_with('/') { "/" } else { "" };
    let last = if path.ends_with('/') && !out.is_empty() {
        "/"
    } else {
        ""
    };
    format!("{first}{}{last}", out.join("/"))
}

pub fn canonical_request(
    r: &Canonical<'_>,
    signed: &[&str],
    signed_headers: &str,
    payload: &str,
    strict: bool,
    presigned: bool,
) -> String {
    let mut c = String::with_capacity(256);
    c.push_str(r.method);
    c.push('\n');
    // The path as sent is encoded once already; encoding it again is AWS's
    // "twice" for services other than S3.
    uri_encode(&mut c, normalize_path(r.raw_path).as_bytes(), true);
    c.push('\n');
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in r.query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if presigned && k == "X-Amz-Signature" {
            continue;
        }
        if strict {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(
                &mut ek,
                &percent_encoding::percent_decode_str(k).collect::<Vec<u8>>(),
                false,
            );
            uri_encode(
                &mut ev,
                &percent_encoding::percent_decode_str(v).collect::<Vec<u8>>(),
                false,
            );
            pairs.push((ek, ev));
        } else {
            pairs.push((k.to_owned(), v.to_owned()));
        }
    }
    pairs.sort();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            c.push('&');
        }
        c.push_str(k);
        c.push('=');
        c.push_str(v);
    }
    c.push('\n');
    for name in signed {
        c.push_str(name);
        c.push(':');
        let mut first = true;
        for h in r
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
        {
            if !first {
                c.push(',');
            }
            first = false;
            let v = String::from_utf8_lossy(h.value);
            let mut words = v.split_ascii_whitespace();
            if let Some(w) = words.next() {
                c.push_str(w);
                for w in words {
                    c.push(' ');
                    c.push_str(w);
                }
            }
        }
        c.push('\n');
    }
    c.push('\n');
    c.push_str(signed_headers);
    c.push('\n');
    c.push_str(payload);
    c
}
