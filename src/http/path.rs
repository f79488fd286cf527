//! The one normalised request path (`shared/spec/config.md`, "Request paths"):
//! what is routed is what is forwarded.
//!
//! A request target's path is normalised once, right after the head is parsed;
//! dispatch, routing, policies, authorizers, cache keys, logs and the upstream
//! request all read the result, never the raw target. The result is a fixed point
//! (`normalise(normalise(p)) == normalise(p)`), so an upstream that normalises again
//! sees the path the router saw.
//!
//! - Escapes of unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded (`%61` →
//!   `a`, `%2e` → `.`); every other escape is kept with upper-case hex.
//! - Bytes that may not stand raw in a path (outside RFC 3986 `pchar`: space,
//!   quotes, brackets, braces, `^`, `|`, a backquote, non-ASCII) are
//!   percent-encoded.
//! - Dot segments are removed (RFC 3986 §5.2.4), after decoding, so `%2e%2e` is
//!   `..`; a path that climbs above the root is refused.
//! - Runs of `/` are merged (`//admin` → `/admin`), before dot segments are
//!   resolved, as nginx's `merge_slashes` does.
//! - Refused: `%2F` and `%5C` (unless the listener keeps escaped slashes), a raw
//!   `\`, a NUL or other control character raw or escaped, a malformed escape, and
//!   `;` (unless the listener keeps semicolons). A `.`/`..` segment carrying `;`
//!   parameters is refused even then: Java servlet containers strip the parameters
//!   and climb (`/public/..;/admin`).

use std::borrow::Cow;

/// A listener's path rules (`listeners[].paths`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// `escaped_slashes: keep`: `%2F` and `%5C` pass, still encoded.
    pub keep_escaped_slashes: bool,
    /// `semicolons: keep`: `;` passes as an ordinary character.
    pub keep_semicolons: bool,
}

/// Why a path was refused (a 400, with this as the logged reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    AboveRoot,
    EscapedSlash,
    Backslash,
    Control,
    BadEscape,
    Semicolon,
    DotParameters,
    NotAbsolute,
}

impl PathError {
    /// The reason as a static string, for `HeadError::Malformed`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AboveRoot => "the path climbs above the root",
            Self::EscapedSlash => "an encoded slash (%2F or %5C) in the path",
            Self::Backslash => "a backslash in the path",
            Self::Control => "a NUL or control character in the path",
            Self::BadEscape => "a malformed percent-escape in the path",
            Self::Semicolon => "a `;` in the path",
            Self::DotParameters => "a dot segment with `;` parameters in the path",
            Self::NotAbsolute => "the path does not start with `/`",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What a byte is in a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Stands as it is (unreserved, sub-delims but `;`, `:`, `@`).
    Plain,
    Slash,
    Percent,
    Semicolon,
    Backslash,
    Control,
    /// Not allowed raw: written as an escape.
    Encode,
}

const fn class(b: u8) -> Class {
    match b {
        b'/' => Class::Slash,
        b'%' => Class::Percent,
        b';' => Class::Semicolon,
        b'\\' => Class::Backslash,
        0..=0x1f | 0x7f => Class::Control,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => Class::Plain,
        b'-' | b'.' | b'_' | b'~' => Class::Plain,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@' => {
            Class::Plain
        }
        _ => Class::Encode,
    }
}

const CLASSES: [Class; 256] = {
    let mut t = [Class::Encode; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class(i as u8);
        i += 1;
    }
    t
};

const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises a request path (no query string). Borrows when the path is already
/// normal, which is the common case: one pass over its bytes, no allocation.
pub fn normalise(raw: &str, rules: Rules) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes, rules) {
        return Ok(Cow::Borrowed(raw));
    }
    rewrite(bytes, rules).map(Cow::Owned)
}

/// Whether `bytes` (starting with `/`) is already its own normal form.
fn is_normal(bytes: &[u8], rules: Rules) -> bool {
    let mut prev = 0u8;
    let mut skip = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        match CLASSES[b as usize] {
            Class::Plain => {
                // A segment of `.` or `..` (a dot right after a slash starts one).
                if b == b'.' && prev == b'/' {
                    let rest = &bytes[i..];
                    let seg = &rest[..rest.iter().position(|&c| c == b'/').unwrap_or(rest.len())];
                    if seg == b"."
                        || seg == b".."
                        || seg.starts_with(b".;")
                        || seg.starts_with(b"..;")
                    {
                        return false;
                    }
                }
            }
            Class::Slash => {
                if prev == b'/' {
                    return false;
                }
            }
            Class::Semicolon if rules.keep_semicolons => {}
            // An escape as the normal form writes it: upper-case hex of a byte
            // that is neither unreserved nor refused.
            Class::Percent => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (
                    Some(&h @ (b'0'..=b'9' | b'A'..=b'F')),
                    Some(&l @ (b'0'..=b'9' | b'A'..=b'F')),
                ) => {
                    let v = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
                    let slash = v == b'/' || v == b'\\';
                    if unreserved(v)
                        || v < 0x20
                        || v == 0x7f
                        || (slash && !rules.keep_escaped_slashes)
                    {
                        return false;
                    }
                    skip = 2;
                }
                _ => return false,
            },
            _ => return false,
        }
        prev = b;
    }
    true
}

/// The slow path: decode, check, encode, then resolve segments.
fn rewrite(bytes: &[u8], rules: Rules) -> Result<String, PathError> {
    // Pass 1: one canonical spelling per byte; `/` stays the only separator (an
    // escaped slash stays `%2F` text, never a separator).
    let mut text: Vec<u8> = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match CLASSES[b as usize] {
            Class::Plain | Class::Slash => text.push(b),
            Class::Semicolon if rules.keep_semicolons => text.push(b),
            Class::Semicolon => return Err(PathError::Semicolon),
            Class::Backslash => return Err(PathError::Backslash),
            Class::Control => return Err(PathError::Control),
            Class::Encode => push_escape(&mut text, b),
            Class::Percent => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).and_then(|&c| hex(c)),
                    bytes.get(i + 2).and_then(|&c| hex(c)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = h << 4 | l;
                if unreserved(v) {
                    text.push(v);
                } else if v == b'/' || v == b'\\' {
                    if !rules.keep_escaped_slashes {
                        return Err(PathError::EscapedSlash);
                    }
                    push_escape(&mut text, v);
                } else if v < 0x20 || v == 0x7f {
                    return Err(PathError::Control);
                } else {
                    push_escape(&mut text, v);
                }
                i += 2;
            }
        }
        i += 1;
    }
    // Pass 2: segments. Empty ones (runs of `/`) are dropped first; then `.` and `..`.
    let mut out: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in text[1..].split(|&c| c == b'/') {
        trailing = false;
        match seg {
            b"" | b"." => trailing = true,
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = true;
            }
            s if s.starts_with(b".;") || s.starts_with(b"..;") => {
                return Err(PathError::DotParameters)
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(text.len());
    for seg in &out {
        path.push('/');
        // Every byte is ASCII: raw bytes outside `pchar` were escaped in pass 1.
        path.extend(seg.iter().map(|&c| c as char));
    }
    if out.is_empty() || trailing {
        path.push('/');
    }
    Ok(path)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, v: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Rules = Rules {
        keep_escaped_slashes: false,
        keep_semicolons: false,
    };
    const KEEP: Rules = Rules {
        keep_escaped_slashes: true,
        keep_semicolons: true,
    };

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/pets",
            "/pets/1",
            "/a/b/",
            "/.well-known/x",
            "/a.b/..c",
            "/~u/@x:y",
            "/a%20b",
            "/%C3%A9",
        ] {
            assert!(matches!(normalise(p, STRICT), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn table() {
        let ok = [
            ("//admin/secret", "/admin/secret"),
            ("///a////b", "/a/b"),
            ("/x/../admin", "/admin"),
            ("/x/./admin", "/x/admin"),
            ("/%61dmin", "/admin"),
            ("/a/%2e%2e/", "/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//../b", "/b"),
            ("/a/%7e", "/a/~"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a b", "/a%20b"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/é", "/%C3%A9"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/%41%42", "/AB"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalise(raw, STRICT).as_deref(), Ok(want), "{raw}");
        }
        let bad = [
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e", PathError::AboveRoot),
            ("/a%2fb", PathError::EscapedSlash),
            ("/a%5Cb", PathError::EscapedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::Control),
            ("/a%0d%0a", PathError::Control),
            ("/a%7f", PathError::Control),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/admin;/secret", PathError::Semicolon),
            ("a", PathError::NotAbsolute),
        ];
        for (raw, want) in bad {
            assert_eq!(normalise(raw, STRICT), Err(want), "{raw}");
        }
        assert_eq!(normalise("/a%2fb", KEEP).as_deref(), Ok("/a%2Fb"));
        assert_eq!(normalise("/a%5cb", KEEP).as_deref(), Ok("/a%5Cb"));
        assert_eq!(normalise("/a;x/b", KEEP).as_deref(), Ok("/a;x/b"));
        assert_eq!(
            normalise("/p/..;/admin", KEEP),
            Err(PathError::DotParameters)
        );
        assert_eq!(normalise("/p/.;x/a", KEEP), Err(PathError::DotParameters));
        assert_eq!(
            normalise("/p/%2e%2e;/a", KEEP),
            Err(PathError::DotParameters)
        );
    }

    #[test]
    fn output_is_a_fixed_point() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: &[&str] = &[
            "/", "a", ".", "..", "%2e", "%2E", "%61", "%2f", ";", "%20", "é", "~", "%41", "b", "//",
        ];
        for _ in 0..20_000 {
            let mut p = String::from("/");
            for _ in 0..(seed % 9) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                p.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            for rules in [STRICT, KEEP] {
                if let Ok(n) = normalise(&p, rules) {
                    let again = normalise(&n, rules).expect("normal form re-normalises");
                    assert_eq!(again, n, "{p}");
                    assert!(matches!(again, Cow::Borrowed(_)), "{p} -> {n}");
                }
            }
        }
    }
}
