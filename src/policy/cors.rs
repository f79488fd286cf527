//! CORS as AWS HTTP APIs do it: preflights answered by the gateway, the configured
//! headers on actual responses, nothing for an origin not allowed.

use crate::config::CorsFile;

#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    /// Exact origins, lower case.
    origins: Box<[Box<str>]>,
    /// `https://*`-style patterns: the scheme prefix (`https://`), lower case.
    schemes: Box<[Box<str>]>,
    credentials: bool,
    any_header: bool,
    /// Pre-encoded lines: methods, headers, max-age for preflights; expose for
    /// actual responses.
    methods_line: Box<[u8]>,
    headers_line: Box<[u8]>,
    max_age_line: Box<[u8]>,
    expose_line: Box<[u8]>,
}

fn valid_token_list(list: &[String], what: &str) -> Result<(), String> {
    for v in list {
        if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(format!("{what}: {v:?} is not a header token"));
        }
    }
    Ok(())
}

fn line(name: &str, values: &[String]) -> Box<[u8]> {
    if values.is_empty() {
        return Box::default();
    }
    format!("{name}: {}\r\n", values.join(","))
        .into_bytes()
        .into()
}

impl Cors {
    pub fn compile(c: &CorsFile) -> Result<Self, String> {
        let mut origins = Vec::new();
        let mut schemes = Vec::new();
        let mut any_origin = false;
        for o in &c.allow_origins {
            let lower = o.trim().to_ascii_lowercase();
            if lower == "*" {
                any_origin = true;
            } else if let Some(scheme) = lower.strip_suffix('*') {
                if !scheme.ends_with("://") || scheme.len() < 4 {
                    return Err(format!(
                        "allow_origins: {o:?}: a wildcard is only `*` or a whole scheme (`https://*`)"
                    ));
                }
                schemes.push(scheme.into());
            } else if !lower.contains("://")
                || lower.ends_with('/')
                || lower.contains(['*', ' ', ','])
            {
                return Err(format!(
                    "allow_origins: {o:?} is not an origin such as https://app.example.com"
                ));
            } else {
                origins.push(lower.into());
            }
        }
        if c.allow_credentials && any_origin {
            return Err(
                "allow_credentials cannot go with allow_origins `*` (browsers refuse it)".into(),
            );
        }
        valid_token_list(&c.allow_methods, "allow_methods")?;
        valid_token_list(&c.allow_headers, "allow_headers")?;
        valid_token_list(&c.expose_headers, "expose_headers")?;
        let methods: Vec<String> = c
            .allow_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let max_age_line = match c.max_age_s {
            None => Box::default(),
            Some(a) if (-1..=86_400).contains(&a) => format!("access-control-max-age: {a}\r\n")
                .into_bytes()
                .into(),
            Some(_) => return Err("max_age_s must be from -1 to 86400".into()),
        };
        let any_header = c.allow_headers.iter().any(|h| h == "*");
        Ok(Self {
            any_origin,
            origins: origins.into(),
            schemes: schemes.into(),
            credentials: c.allow_credentials,
            any_header,
            methods_line: line("access-control-allow-methods", &methods),
            headers_line: if any_header {
                Box::default()
            } else {
                line("access-control-allow-headers", &c.allow_headers)
            },
            max_age_line,
            expose_line: line("access-control-expose-headers", &c.expose_headers),
        })
    }

    fn allows(&self, origin: &[u8]) -> bool {
        if self.any_origin {
            return true;
        }
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            || self.schemes.iter().any(|s| {
                origin.len() > s.len() && origin[..s.len()].eq_ignore_ascii_case(s.as_bytes())
            })
    }

    fn origin_lines(&self, origin: &[u8], out: &mut Vec<u8>) {
        if self.any_origin && !self.credentials {
            out.extend_from_slice(b"access-control-allow-origin: *\r\n");
        } else {
            out.extend_from_slice(b"access-control-allow-origin: ");
            out.extend_from_slice(origin);
            out.extend_from_slice(b"\r\nvary: origin\r\n");
        }
        if self.credentials {
            out.extend_from_slice(b"access-control-allow-credentials: true\r\n");
        }
    }

    /// The lines of an actual response to a request from `origin`; `None` for an
    /// origin not allowed (no CORS headers at all).
    pub fn actual(&self, origin: &[u8]) -> Option<Box<[u8]>> {
        if !self.allows(origin) || !valid_value(origin) {
            return None;
        }
        let mut out = Vec::with_capacity(64 + self.expose_line.len());
        self.origin_lines(origin, &mut out);
        out.extend_from_slice(&self.expose_line);
        Some(out.into())
    }

    /// The lines of a preflight's answer, `None` for an origin not allowed.
    /// `requested`: its `Access-Control-Request-Headers`, echoed when any header is
    /// allowed.
    pub fn preflight(&self, origin: &[u8], requested: Option<&[u8]>) -> Option<Box<[u8]>> {
        if !self.allows(origin) || !valid_value(origin) {
            return None;
        }
        let mut out = Vec::with_capacity(160);
        self.origin_lines(origin, &mut out);
        out.extend_from_slice(&self.methods_line);
        if self.any_header {
            if let Some(r) = requested.filter(|r| !r.is_empty() && valid_value(r)) {
                out.extend_from_slice(b"access-control-allow-headers: ");
                out.extend_from_slice(r);
                out.extend_from_slice(b"\r\n");
            }
        } else {
            out.extend_from_slice(&self.headers_line);
        }
        out.extend_from_slice(&self.max_age_line);
        Some(out.into())
    }
}

/// Safe to echo in a header: visible ASCII and spaces, no CR or LF.
fn valid_value(v: &[u8]) -> bool {
    v.iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::compile(&CorsFile {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["get".into(), "POST".into()],
            allow_headers: vec!["authorization".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age_s: Some(600),
            allow_credentials: credentials,
        })
        .unwrap()
    }

    #[test]
    fn origins_exact_wildcard_and_scheme() {
        let c = cors(&["https://app.example.com", "http://*"], true);
        let lines = c.actual(b"https://APP.example.com").unwrap();
        let text = String::from_utf8(lines.into()).unwrap();
        assert!(text.contains("access-control-allow-origin: https://APP.example.com\r\n"));
        assert!(text.contains("access-control-allow-credentials: true"));
        assert!(text.contains("access-control-expose-headers: x-request-id"));
        assert!(c.actual(b"http://anything.test").is_some());
        assert!(c.actual(b"https://evil.example.com").is_none());
        let pre = String::from_utf8(
            c.preflight(b"https://app.example.com", None)
                .unwrap()
                .into(),
        )
        .unwrap();
        assert!(pre.contains("access-control-allow-methods: GET,POST\r\n"));
        assert!(pre.contains("access-control-max-age: 600\r\n"));
        let star = cors(&["*"], false);
        let text = String::from_utf8(star.actual(b"https://x.test").unwrap().into()).unwrap();
        assert!(text.starts_with("access-control-allow-origin: *\r\n"));
        assert!(Cors::compile(&CorsFile {
            allow_origins: vec!["*".into()],
            allow_credentials: true,
            ..CorsFile::default()
        })
        .is_err());
    }
}
