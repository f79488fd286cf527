//! Small encoders shared by several layers: hex, IP addresses as text, random ids,
//! and comparison that does not leak where two secrets differ.

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `$context.x`-style variable name at the start of `s` (after the `$` and
/// any prefix): letters, digits, `.`, `_` and `-`; a trailing dot ends a
/// sentence, not the name. Access log formats and gateway responses read
/// their templates' names the same way.
pub fn var_name(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches('.')
}

/// Equality that takes the same time wherever the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Appends `ip` as text; IPv4 (the common case) without `fmt`, which costs several
/// times as much per request.
pub fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

pub fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        // The OS's CSPRNG; on failure, nothing safe can be made.
        getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("no randomness from the OS: {e}"));
        for &b in &buf {
            // Rejection sampling keeps the 62 symbols uniform.
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A new key or deployment id: 10 lower-case letters and digits, as AWS's.
pub fn random_id() -> String {
    random_alnum(10).to_ascii_lowercase()
}
