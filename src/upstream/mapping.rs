//! HTTP API parameter mapping (`request_parameters`, `response_parameters`, and
//! the `parameters` of AWS service integrations): value expressions as AWS writes
//! them (`$request.header.x`, `$request.body.a.b`, `${request.path.id}-x`,
//! `$context.requestId`, `$stageVariables.x`, static text), compiled once and
//! evaluated against what a request (or response) offers.

use std::collections::BTreeMap;

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(String),
    Query(String),
    /// The whole body.
    Body,
    /// A JSON path into the body: keys and `[n]` indexes.
    BodyPath(Vec<Step>),
    /// The request path without the stage.
    Path,
    PathParam(String),
    Context(String),
    ResponseHeader(String),
    ResponseBody(Vec<Step>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    From(Source),
}

/// A value: text and sources, concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(pub Vec<Part>);

/// What an expression reads.
pub trait Lookup {
    /// Values of a header, comma-joined (case-insensitive name).
    fn header(&self, name: &str) -> Option<String>;
    /// Values of a query parameter, comma-joined.
    fn query(&self, name: &str) -> Option<String>;
    fn body(&self) -> Option<&[u8]>;
    fn path(&self) -> Option<String>;
    fn path_param(&self, name: &str) -> Option<String>;
    fn context(&self, name: &str) -> Option<String>;
    fn response_header(&self, _name: &str) -> Option<String> {
        None
    }
    fn response_body(&self) -> Option<&[u8]> {
        None
    }
}

/// The values of header `name` in `(name, value)` pairs, comma-joined (what
/// `$request.header.x` and `$response.header.x` read).
pub fn joined_header(headers: &[(String, String)], name: &str) -> Option<String> {
    let vals: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!vals.is_empty()).then(|| vals.join(","))
}

/// The 100 KB of a body that JSON paths read (AWS truncates there).
const BODY_LIMIT: usize = 100 * 1024;

impl Expr {
    /// Parses an expression; stage variables are replaced by their values now.
    /// `response`: `$response.*` is allowed.
    pub fn parse(
        text: &str,
        vars: &BTreeMap<String, String>,
        response: bool,
    ) -> Result<Expr, String> {
        let mut parts = Vec::new();
        if text.contains("${") {
            let mut rest = text;
            while let Some(start) = rest.find("${") {
                if start > 0 {
                    parts.push(Part::Text(rest[..start].to_owned()));
                }
                let after = &rest[start + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
                parts.push(source(&after[..end], vars, response)?);
                rest = &after[end + 1..];
            }
            if !rest.is_empty() {
                parts.push(Part::Text(rest.to_owned()));
            }
        } else if let Some(inner) = text.strip_prefix('$') {
            parts.push(source(inner, vars, response)?);
        } else {
            parts.push(Part::Text(text.to_owned()));
        }
        Ok(Expr(parts))
    }

    /// The value, or `None` when a source it names is absent.
    pub fn eval(&self, l: &dyn Lookup) -> Option<String> {
        if let [Part::Text(t)] = self.0.as_slice() {
            return Some(t.clone());
        }
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::From(s) => out.push_str(&eval_source(s, l)?),
            }
        }
        Some(out)
    }

    /// The value as JSON: a body path's JSON as it is (objects, numbers), else a
    /// string.
    pub fn eval_json(&self, l: &dyn Lookup) -> Option<serde_json::Value> {
        if let [Part::From(Source::BodyPath(steps))] = self.0.as_slice() {
            return json_at(l.body()?, steps);
        }
        self.eval(l).map(serde_json::Value::String)
    }
}

fn source(inner: &str, vars: &BTreeMap<String, String>, response: bool) -> Result<Part, String> {
    let bad = || {
        format!(
            "{inner:?} is not a mapping source: expected request.header.NAME, \
             request.querystring.NAME, request.body[.PATH], request.path[.NAME], \
             context.NAME or stageVariables.NAME{}",
            if response {
                ", response.header.NAME or response.body[.PATH]"
            } else {
                ""
            }
        )
    };
    let name = |rest: &str| {
        if rest.is_empty() || rest.bytes().any(|b| b <= b' ' || b == b'}') {
            Err(bad())
        } else {
            Ok(rest.to_owned())
        }
    };
    let src = if let Some(r) = inner.strip_prefix("request.header.") {
        Source::Header(name(r)?.to_ascii_lowercase())
    } else if let Some(r) = inner.strip_prefix("request.querystring.") {
        Source::Query(name(r)?)
    } else if inner == "request.body" {
        Source::Body
    } else if let Some(r) = inner.strip_prefix("request.body.") {
        Source::BodyPath(steps(r).ok_or_else(bad)?)
    } else if inner == "request.path" {
        Source::Path
    } else if let Some(r) = inner.strip_prefix("request.path.") {
        Source::PathParam(name(r)?)
    } else if let Some(r) = inner.strip_prefix("context.") {
        Source::Context(name(r)?)
    } else if let Some(r) = inner
        .strip_prefix("stageVariables.")
        .or_else(|| inner.strip_prefix("stage_variables."))
    {
        return vars
            .get(r)
            .map(|v| Part::Text(v.clone()))
            .ok_or_else(|| format!("the stage has no variable {r:?}"));
    } else if let (true, Some(r)) = (response, inner.strip_prefix("response.header.")) {
        Source::ResponseHeader(name(r)?.to_ascii_lowercase())
    } else if let (true, Some(r)) = (response, inner.strip_prefix("response.body")) {
        match r.strip_prefix('.') {
            Some(p) => Source::ResponseBody(steps(p).ok_or_else(bad)?),
            None if r.is_empty() => Source::ResponseBody(Vec::new()),
            None => return Err(bad()),
        }
    } else {
        return Err(bad());
    };
    Ok(Part::From(src))
}

/// `a.b[0].c` → steps; no recursive descent or filters (AWS's rule).
fn steps(path: &str) -> Option<Vec<Step>> {
    let mut out = Vec::new();
    for seg in path.split('.') {
        let (key, mut rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if key.is_empty() && rest.is_empty() {
            return None;
        }
        if !key.is_empty() {
            if key.contains(['*', '?', '(', ')', ']']) {
                return None;
            }
            out.push(Step::Key(key.to_owned()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            out.push(Step::Index(r[..close].parse().ok()?));
            rest = &r[close + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn json_at(body: &[u8], steps: &[Step]) -> Option<serde_json::Value> {
    let body = &body[..body.len().min(BODY_LIMIT)];
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    for s in steps {
        v = match (s, v) {
            (Step::Key(k), serde_json::Value::Object(mut m)) => m.remove(k)?,
            (Step::Index(i), serde_json::Value::Array(mut a)) if *i < a.len() => a.swap_remove(*i),
            _ => return None,
        };
    }
    Some(v)
}

fn text_of(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    }
}

fn eval_source(s: &Source, l: &dyn Lookup) -> Option<String> {
    match s {
        Source::Header(n) => l.header(n),
        Source::Query(n) => l.query(n),
        Source::Body => l.body().map(|b| String::from_utf8_lossy(b).into_owned()),
        Source::BodyPath(steps) => json_at(l.body()?, steps).map(text_of),
        Source::Path => l.path(),
        Source::PathParam(n) => l.path_param(n),
        Source::Context(n) => l.context(n),
        Source::ResponseHeader(n) => l.response_header(n),
        Source::ResponseBody(steps) if steps.is_empty() => l
            .response_body()
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Source::ResponseBody(steps) => json_at(l.response_body()?, steps).map(text_of),
    }
}

/// What a mapping does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Overwrite,
    Append,
    Remove,
}

/// Where a mapping writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Header(String),
    Query(String),
    Path,
    StatusCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub op: Op,
    pub target: Target,
    pub value: Expr,
}

/// An integration's request mappings and its response mappings per status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mappings {
    pub request: Vec<Mapping>,
    pub response: Vec<(u16, Vec<Mapping>)>,
}

impl Mappings {
    pub fn for_status(&self, status: u16) -> Option<&[Mapping]> {
        self.response
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, m)| m.as_slice())
    }
}

/// Headers a mapping may not touch (AWS's reserved list).
pub fn reserved_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("access-control-")
        || n.starts_with("apigw-")
        || n.starts_with("x-amz-")
        || n.starts_with("x-amzn-")
        || matches!(
            n.as_str(),
            "authorization"
                | "connection"
                | "content-encoding"
                | "content-length"
                | "content-location"
                | "forwarded"
                | "keep-alive"
                | "origin"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailers"
                | "transfer-encoding"
                | "upgrade"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
                | "via"
                | "host"
        )
}

/// Parses one `op:target` key and its value.
pub fn parse_mapping(
    key: &str,
    value: &str,
    vars: &BTreeMap<String, String>,
    response: bool,
) -> Result<Mapping, String> {
    let (op, target) = key.split_once(':').ok_or_else(|| {
        "expected overwrite:, append: or remove: and a target, such as overwrite:header.x-name"
            .to_owned()
    })?;
    let op = match op {
        "overwrite" => Op::Overwrite,
        "append" => Op::Append,
        "remove" => Op::Remove,
        other => return Err(format!("{other:?}: expected overwrite, append or remove")),
    };
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let target = if let Some(h) = target.strip_prefix("header.") {
        if !valid_name(h) {
            return Err(format!("{h:?} is not a header name"));
        }
        if reserved_header(h) {
            return Err(format!("{h:?} is reserved and cannot be mapped"));
        }
        Target::Header(h.to_ascii_lowercase())
    } else if let (false, Some(q)) = (response, target.strip_prefix("querystring.")) {
        if q.is_empty() {
            return Err("a query parameter needs a name".into());
        }
        Target::Query(q.to_owned())
    } else if target == "path" && !response {
        if op != Op::Overwrite {
            return Err("the path can only be overwritten".into());
        }
        Target::Path
    } else if target == "statuscode" && response {
        if op != Op::Overwrite {
            return Err("the status code can only be overwritten".into());
        }
        Target::StatusCode
    } else if response {
        return Err(format!(
            "{target:?}: expected header.NAME or statuscode in a response mapping"
        ));
    } else {
        return Err(format!(
            "{target:?}: expected header.NAME, querystring.NAME or path"
        ));
    };
    let value = if op == Op::Remove {
        Expr(Vec::new())
    } else {
        Expr::parse(value, vars, response)?
    };
    Ok(Mapping { op, target, value })
}

/// Applies header mappings to `(name, value)` pairs (names lower case).
pub fn apply_headers(maps: &[Mapping], headers: &mut Vec<(String, String)>, l: &dyn Lookup) {
    for m in maps {
        let Target::Header(name) = &m.target else {
            continue;
        };
        match m.op {
            Op::Remove => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Op::Overwrite => {
                if let Some(v) = m.value.eval(l) {
                    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                    headers.push((name.clone(), v));
                }
            }
            Op::Append => {
                if let Some(v) = m.value.eval(l) {
                    match headers
                        .iter_mut()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    {
                        Some((_, old)) => {
                            old.push(',');
                            old.push_str(&v);
                        }
                        None => headers.push((name.clone(), v)),
                    }
                }
            }
        }
    }
}

/// Applies query mappings to `(name, value)` pairs (decoded).
pub fn apply_query(maps: &[Mapping], query: &mut Vec<(String, String)>, l: &dyn Lookup) {
    for m in maps {
        let Target::Query(name) = &m.target else {
            continue;
        };
        match m.op {
            Op::Remove => query.retain(|(n, _)| n != name),
            Op::Overwrite => {
                if let Some(v) = m.value.eval(l) {
                    query.retain(|(n, _)| n != name);
                    query.push((name.clone(), v));
                }
            }
            Op::Append => {
                if let Some(v) = m.value.eval(l) {
                    query.push((name.clone(), v));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req;
    impl Lookup for Req {
        fn header(&self, name: &str) -> Option<String> {
            (name == "x-a").then(|| "1,2".into())
        }
        fn query(&self, name: &str) -> Option<String> {
            (name == "q").then(|| "v".into())
        }
        fn body(&self) -> Option<&[u8]> {
            Some(br#"{"a":{"b":[{"c":"deep"}]},"n":5}"#)
        }
        fn path(&self) -> Option<String> {
            Some("/items/7".into())
        }
        fn path_param(&self, name: &str) -> Option<String> {
            (name == "id").then(|| "7".into())
        }
        fn context(&self, name: &str) -> Option<String> {
            (name == "requestId").then(|| "rid".into())
        }
    }

    #[test]
    fn expressions_read_their_sources() {
        let vars = BTreeMap::from([("queue".to_owned(), "q1".to_owned())]);
        let e = |s: &str| Expr::parse(s, &vars, false).unwrap().eval(&Req);
        assert_eq!(e("$request.header.X-A").as_deref(), Some("1,2"));
        assert_eq!(e("$request.querystring.q").as_deref(), Some("v"));
        assert_eq!(e("$request.body.a.b[0].c").as_deref(), Some("deep"));
        assert_eq!(e("$request.body.n").as_deref(), Some("5"));
        assert_eq!(e("$request.path").as_deref(), Some("/items/7"));
        assert_eq!(
            e("${request.path.id}-${context.requestId}").as_deref(),
            Some("7-rid")
        );
        assert_eq!(e("$stageVariables.queue").as_deref(), Some("q1"));
        assert_eq!(e("${stage_variables.queue}").as_deref(), Some("q1"));
        assert_eq!(e("plain").as_deref(), Some("plain"));
        assert_eq!(e("$request.body.missing"), None);
        assert!(Expr::parse("$request.nothing", &vars, false).is_err());
        assert!(Expr::parse("$response.header.x", &vars, false).is_err());
        assert!(Expr::parse("$stageVariables.none", &vars, false).is_err());
        assert!(Expr::parse("$request.body..x", &vars, false).is_err());
    }

    #[test]
    fn mappings_are_checked() {
        let vars = BTreeMap::new();
        assert!(parse_mapping("overwrite:header.x-y", "$request.path", &vars, false).is_ok());
        assert!(parse_mapping("overwrite:header.authorization", "a", &vars, false).is_err());
        assert!(parse_mapping("append:path", "a", &vars, false).is_err());
        assert!(parse_mapping("overwrite:statuscode", "201", &vars, true).is_ok());
        assert!(parse_mapping("overwrite:statuscode", "201", &vars, false).is_err());
        assert!(parse_mapping("replace:header.x", "a", &vars, false).is_err());
        let mut h = vec![("x-a".to_owned(), "1".to_owned())];
        let maps = [
            parse_mapping("append:header.x-a", "2", &vars, false).unwrap(),
            parse_mapping("overwrite:header.x-b", "$request.path.id", &vars, false).unwrap(),
        ];
        apply_headers(&maps, &mut h, &Req);
        assert_eq!(
            h,
            vec![("x-a".into(), "1,2".into()), ("x-b".into(), "7".into())]
        );
    }
}
