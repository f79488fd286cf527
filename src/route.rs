//! Request → (stage, route, path parameters).
//!
//! `dispatch` picks the stage (custom domain base path, then first path segment,
//! then the listener's `$default` stage); `Router::find` picks the route inside the
//! stage with AWS's precedence: literal > `{param}` > `{proxy+}` per segment, then a
//! named method over `ANY`, then `$default`. Each method has its own `matchit` tree
//! holding that method's routes plus the `ANY` routes whose path it does not name,
//! so a lookup is one radix-tree walk whatever the number of routes.

use crate::ids::{RouteId, StageId};
use std::collections::HashMap;

/// Methods with a tree of their own; any other method uses `ANY` routes only.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const OTHER: usize = METHODS.len();

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    Default,
    Path {
        /// `None` for `ANY`.
        method: Option<String>,
        segments: Vec<Segment>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

impl RouteKey {
    /// Parses `METHOD /path`, `ANY /path` or `$default`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "$default" {
            return Ok(Self::Default);
        }
        let (method, path) = s
            .split_once(' ')
            .ok_or_else(|| format!("{s:?}: expected `METHOD /path`, `ANY /path` or `$default`"))?;
        let method = match method {
            "ANY" => None,
            m if METHODS.contains(&m) => Some(m.to_owned()),
            m => {
                return Err(format!(
                    "unknown method {m:?}: expected ANY, {}",
                    METHODS.join(", ")
                ))
            }
        };
        let segments = parse_path(path)?;
        Ok(Self::Path { method, segments })
    }

    /// Names of the path parameters, greedy included.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Self::Default => Vec::new(),
            Self::Path { segments, .. } => segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(n) | Segment::Greedy(n) => Some(n.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect(),
        }
    }
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} must start with `/`"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() {
            return Err(format!("path {path:?} has an empty segment"));
        }
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("path {path:?}: bad parameter name {name:?}"));
            }
            if greedy && !last {
                return Err(format!(
                    "path {path:?}: a greedy parameter `{{{name}+}}` must be the last segment"
                ));
            }
            segments.push(if greedy {
                Segment::Greedy(name.to_owned())
            } else {
                Segment::Param(name.to_owned())
            });
        } else {
            let ok = part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b));
            if !ok {
                return Err(format!(
                    "path {path:?}: segment {part:?} must be literal text, `{{name}}` or `{{name+}}`"
                ));
            }
            // Requests are normalised before routing (`crate::http::path`): a literal
            // that normalisation would change could never match.
            let literal = format!("/{part}");
            let keep_all = crate::http::path::Rules {
                keep_escaped_slashes: true,
                keep_semicolons: true,
            };
            match crate::http::path::normalise(&literal, keep_all) {
                Ok(n) if n == literal => {}
                Ok(n) => {
                    return Err(format!(
                        "path {path:?}: segment {part:?} never matches: requests are normalised first (write {:?})",
                        &n[1..]
                    ))
                }
                Err(e) => return Err(format!("path {path:?}: segment {part:?} never matches: {e}")),
            }
            segments.push(Segment::Literal((*part).to_owned()));
        }
    }
    let params = segments
        .iter()
        .filter(|s| !matches!(s, Segment::Literal(_)))
        .count();
    if params > MAX_PARAMS {
        return Err(format!(
            "path {path:?} has {params} parameters; at most {MAX_PARAMS}"
        ));
    }
    Ok(segments)
}

/// Path parameters in one route. The router (matchit) takes at most 25; found by
/// fuzzing (`fuzz/regressions/router`), where a 26th panicked in the insert.
const MAX_PARAMS: usize = 16;

fn matchit_path(segments: &[Segment]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::new();
    for s in segments {
        out.push('/');
        match s {
            Segment::Literal(l) => out.push_str(l),
            Segment::Param(n) => {
                out.push('{');
                out.push_str(n);
                out.push('}');
            }
            Segment::Greedy(n) => {
                out.push_str("{*");
                out.push_str(n);
                out.push('}');
            }
        }
    }
    out
}

/// The compiled routes of one stage.
#[derive(Debug)]
pub struct Router {
    trees: Vec<matchit::Router<RouteId>>,
    default: Option<RouteId>,
}

/// A matched route and its path parameters, borrowed from the request path.
pub struct RouteMatch<'r, 'p> {
    pub route: RouteId,
    pub params: Option<matchit::Params<'r, 'p>>,
}

impl<'r, 'p> RouteMatch<'r, 'p> {
    pub fn param(&self, name: &str) -> Option<&'p str> {
        self.params.as_ref().and_then(|p| p.get(name))
    }
}

impl Router {
    /// Builds the trees. Duplicate or tied routes (same method, paths that match the
    /// same requests with equal precedence) are errors, reported per route index.
    pub fn build(keys: &[RouteKey]) -> Result<Self, Vec<(usize, String)>> {
        let mut errors = Vec::new();
        let mut trees: Vec<matchit::Router<RouteId>> =
            (0..=OTHER).map(|_| matchit::Router::new()).collect();
        let mut default = None;
        // Named methods first, so `ANY` fills in only what they leave.
        for (id, key) in keys.iter().enumerate() {
            match key {
                RouteKey::Default => {
                    if default.replace(id).is_some() {
                        errors.push((id, "a second `$default` route".to_owned()));
                    }
                }
                RouteKey::Path {
                    method: Some(m),
                    segments,
                } => {
                    let tree = METHODS.iter().position(|x| x == m).unwrap_or(OTHER);
                    if let Err(e) = trees[tree].insert(matchit_path(segments), id) {
                        errors.push((id, conflict_message(e)));
                    }
                }
                RouteKey::Path { method: None, .. } => {}
            }
        }
        for (id, key) in keys.iter().enumerate() {
            let RouteKey::Path {
                method: None,
                segments,
            } = key
            else {
                continue;
            };
            let path = matchit_path(segments);
            for (t, tree) in trees.iter_mut().enumerate() {
                let named = keys.iter().any(|k| {
                    matches!(k, RouteKey::Path { method: Some(m), segments: s }
                        if t < OTHER && m == METHODS[t] && matchit_path(s) == path)
                });
                if named {
                    continue;
                }
                if let Err(e) = tree.insert(path.clone(), id) {
                    errors.push((id, conflict_message(e)));
                    break;
                }
            }
        }
        if errors.is_empty() {
            Ok(Self { trees, default })
        } else {
            Err(errors)
        }
    }

    /// Finds the route for `method` and `path` (path without query string).
    pub fn find<'r, 'p>(&'r self, method: &str, path: &'p str) -> Option<RouteMatch<'r, 'p>> {
        let tree = METHODS.iter().position(|m| *m == method).unwrap_or(OTHER);
        // AWS ignores one trailing slash when matching.
        let trimmed = if path.len() > 1 {
            path.strip_suffix('/').unwrap_or(path)
        } else {
            path
        };
        match self.trees[tree].at(trimmed) {
            Ok(m) => Some(RouteMatch {
                route: *m.value,
                params: Some(m.params),
            }),
            Err(_) => self.default.map(|route| RouteMatch {
                route,
                params: None,
            }),
        }
    }
}

fn conflict_message(e: matchit::InsertError) -> String {
    match e {
        matchit::InsertError::Conflict { with } => format!(
            "conflicts with the route at path {with:?}: the two match the same requests with equal precedence"
        ),
        other => format!("cannot be routed: {other}"),
    }
}

/// A listener's stages as requests reach them.
#[derive(Debug, Default)]
pub struct Stages {
    /// First path segment → stage, for the stages of the APIs this listener serves.
    pub by_name: HashMap<Box<str>, StageId>,
    /// The `$default` stage of the APIs on this listener (at most one).
    pub default: Option<StageId>,
    /// Lower-case host → mappings, longest base path first.
    pub domains: HashMap<Box<str>, Vec<BaseMapping>>,
}

#[derive(Debug, Clone)]
pub struct BaseMapping {
    /// Without leading or trailing slash; empty for the catch-all mapping.
    pub base_path: Box<str>,
    pub stage: StageId,
}

/// Where a request goes: its stage, the path left after the stage's prefix, and
/// the stage's route it matched (`None`: the stage has no such route, a 404 once
/// the stage's own checks have run).
pub struct Routed<'r, 'p> {
    pub stage: StageId,
    pub path: &'p str,
    pub found: Option<RouteMatch<'r, 'p>>,
}

/// Dispatch and route match as one step: the stage serving `host` and `path` on a
/// listener (`None`: no stage does), then the route for `method` of the router
/// `serve` gives for that stage, with the stage that serves the request (the
/// stage's canary, for the canary's share).
pub fn resolve<'r, 'p>(
    stages: &Stages,
    serve: impl FnOnce(StageId) -> (StageId, &'r Router),
    host: &[u8],
    method: &str,
    path: &'p str,
) -> Option<Routed<'r, 'p>> {
    let (stage, path) = dispatch(stages, host, path)?;
    let (stage, router) = serve(stage);
    Some(Routed {
        stage,
        path,
        found: router.find(method, path),
    })
}

/// Picks the stage serving a request on a listener, and the path left to route.
/// `host` is the Host header value (port ignored, case-insensitive).
pub fn dispatch<'p>(lp: &Stages, host: &[u8], path: &'p str) -> Option<(StageId, &'p str)> {
    if !lp.domains.is_empty() {
        if let Some(mappings) = lookup_domain(lp, host) {
            for m in mappings {
                if m.base_path.is_empty() {
                    return Some((m.stage, path));
                }
                if let Some(rest) = strip_segments(path, &m.base_path) {
                    return Some((m.stage, rest));
                }
            }
            return None;
        }
    }
    let first = path.get(1..).map(|p| p.split('/').next().unwrap_or(""));
    if let Some(first) = first.filter(|f| !f.is_empty()) {
        if let Some(&stage) = lp.by_name.get(first) {
            let rest = &path[1 + first.len()..];
            return Some((stage, if rest.is_empty() { "/" } else { rest }));
        }
    }
    lp.default.map(|s| (s, path))
}

fn lookup_domain<'a>(lp: &'a Stages, host: &[u8]) -> Option<&'a Vec<BaseMapping>> {
    let name = match host.iter().rposition(|&b| b == b':') {
        // A colon inside brackets belongs to an IPv6 literal, not a port.
        Some(i) if !host[i..].contains(&b']') => &host[..i],
        _ => host,
    };
    let mut lower = [0u8; 256];
    if name.len() > lower.len() {
        return None;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let lower = std::str::from_utf8(&lower[..name.len()]).ok()?;
    lp.domains.get(lower)
}

/// `/v2/pets` with base `v2` → `/pets`; whole segments only.
fn strip_segments<'p>(path: &'p str, base: &str) -> Option<&'p str> {
    let rest = path.strip_prefix('/')?.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(keys: &[&str]) -> Router {
        let keys: Vec<RouteKey> = keys.iter().map(|k| RouteKey::parse(k).unwrap()).collect();
        Router::build(&keys).unwrap()
    }

    #[test]
    fn aws_worked_example() {
        let keys = [
            "GET /pets/dog/1",
            "GET /pets/dog/{id}",
            "GET /pets/{proxy+}",
            "ANY /{proxy+}",
            "$default",
        ];
        let r = router(&keys);
        let table = [
            ("GET", "/pets/dog/1", 0),
            ("GET", "/pets/dog/2", 1),
            ("GET", "/pets/cat/1", 2),
            ("POST", "/test/5", 3),
            ("GET", "/pets/dog", 2),
            ("POST", "/pets/dog/1", 3),
            ("BREW", "/coffee", 3),
            ("GET", "/", 4),
        ];
        for (method, path, want) in table {
            let got = r.find(method, path).map(|m| m.route);
            assert_eq!(got, Some(want), "{method} {path}");
        }
    }

    #[test]
    fn named_method_beats_any_on_the_same_path() {
        let r = router(&["ANY /pets", "GET /pets"]);
        assert_eq!(r.find("GET", "/pets").unwrap().route, 1);
        assert_eq!(r.find("DELETE", "/pets").unwrap().route, 0);
    }

    #[test]
    fn literal_any_beats_greedy_get() {
        let r = router(&["GET /pets/{proxy+}", "ANY /pets/dog"]);
        assert_eq!(r.find("GET", "/pets/dog").unwrap().route, 1);
        assert_eq!(r.find("GET", "/pets/cat").unwrap().route, 0);
    }

    #[test]
    fn params_and_greedy_tail() {
        let r = router(&["GET /pets/{id}", "ANY /files/{proxy+}"]);
        let m = r.find("GET", "/pets/42").unwrap();
        assert_eq!(m.param("id"), Some("42"));
        let m = r.find("PUT", "/files/a/b/c.txt").unwrap();
        assert_eq!(m.param("proxy"), Some("a/b/c.txt"));
        assert!(
            r.find("PUT", "/files").is_none(),
            "greedy needs one segment"
        );
        assert_eq!(r.find("GET", "/pets/42/").unwrap().param("id"), Some("42"));
    }

    #[test]
    fn ties_and_duplicates_are_errors() {
        for keys in [
            &["GET /a/{x}", "GET /a/{y}"][..],
            &["GET /a", "GET /a"][..],
            &["$default", "$default"][..],
        ] {
            let keys: Vec<RouteKey> = keys.iter().map(|k| RouteKey::parse(k).unwrap()).collect();
            assert!(Router::build(&keys).is_err(), "{keys:?}");
        }
    }

    #[test]
    fn bad_keys_are_rejected() {
        for k in [
            "GET",
            "FETCH /a",
            "GET a",
            "GET /a//b",
            "GET /{proxy+}/x",
            "GET /a{b}",
            "GET /{}",
            // Never matched once requests are normalised.
            "GET /%61dmin",
            "GET /a/../b",
            "GET /a/./b",
            "GET /a%2fb",
            "GET /a\\b",
        ] {
            assert!(RouteKey::parse(k).is_err(), "{k}");
        }
        assert!(RouteKey::parse("GET /a%20b/c;d").is_ok());
    }

    /// matchit panics inserting a route with 26 parameters (found by fuzzing):
    /// such a key is refused at load instead.
    #[test]
    fn too_many_parameters_is_an_error_not_a_panic() {
        let key = |n: usize| {
            let segs: String = (0..n).map(|i| format!("/{{p{i}}}")).collect();
            format!("GET {segs}")
        };
        assert!(RouteKey::parse(&key(16)).is_ok());
        let err = RouteKey::parse(&key(30)).err().unwrap_or_default();
        assert!(err.contains("at most 16"), "{err}");
    }
}
