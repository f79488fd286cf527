//! HTTP API parameter mapping on `http_proxy` heads: the upstream request head the
//! pipeline wrote (path, query string, headers) and the client response head
//! (headers, status). Only routes with mappings come here.

use crate::upstream::mapping::{apply_headers, apply_query, Lookup, Mapping, Target};

/// Splits a head into its first line and `(name, value)` header lines.
fn split_head(head: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let mut lines = text.split("\r\n");
    let first = lines.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    Some((first, headers))
}

fn valid_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Rewrites the upstream request head in `out` by `maps`; the new range of the
/// `Host` value.
pub fn request_head(out: &mut Vec<u8>, maps: &[Mapping], l: &dyn Lookup) -> std::ops::Range<usize> {
    let Some((first, mut headers)) = split_head(out) else {
        return 0..0;
    };
    let mut parts = first.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or("GET").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
        parts.next().unwrap_or("HTTP/1.1").to_owned(),
    );
    let (mut path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.clone(), None),
    };
    for m in maps {
        if m.target == Target::Path {
            if let Some(v) = m.value.eval(l) {
                let mut p = String::new();
                for b in v.bytes() {
                    if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b) {
                        p.push(b as char);
                    } else {
                        p.push_str(&format!("%{b:02X}"));
                    }
                }
                path = if p.starts_with('/') {
                    p
                } else {
                    format!("/{p}")
                };
            }
        }
    }
    let query = if maps.iter().any(|m| matches!(m.target, Target::Query(_))) {
        let mut pairs: Vec<(String, String)> =
            form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        apply_query(maps, &mut pairs, l);
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        (!q.is_empty()).then_some(q)
    } else {
        query
    };
    let host = headers
        .iter()
        .position(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|i| headers.remove(i).1)
        .unwrap_or_default();
    apply_headers(maps, &mut headers, l);
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = &query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\nhost: ");
    let at = out.len();
    out.extend_from_slice(host.as_bytes());
    let range = at..out.len();
    out.extend_from_slice(b"\r\n");
    for (n, v) in &headers {
        if !valid_value(v) {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    range
}

/// Rewrites the client response head (`out[..head_len]`, the body, if any, after
/// it) by `maps`; the new status, and by how many bytes the head grew.
pub fn response_head(
    out: &mut Vec<u8>,
    head_len: usize,
    maps: &[Mapping],
    tag: &crate::http::respond::Tag,
) -> Option<(u16, isize)> {
    let (first, mut headers) = split_head(&out[..head_len])?;
    let mut parts = first.splitn(3, ' ');
    let version = parts.next()?.to_owned();
    let mut status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").to_owned();
    if let Some(s) = crate::proxy::invoke::map_response(maps, &mut headers, None, tag) {
        status = s;
    }
    let mut head = Vec::with_capacity(head_len + 128);
    head.extend_from_slice(version.as_bytes());
    head.push(b' ');
    head.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    head.push(b' ');
    if first.split(' ').nth(1) == Some(itoa::Buffer::new().format(status)) {
        head.extend_from_slice(reason.as_bytes());
    } else {
        head.extend_from_slice(crate::http::respond::reason(status));
    }
    head.extend_from_slice(b"\r\n");
    for (n, v) in &headers {
        if !valid_value(v) {
            continue;
        }
        head.extend_from_slice(n.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let grew = head.len() as isize - head_len as isize;
    out.splice(..head_len, head);
    Some((status, grew))
}
