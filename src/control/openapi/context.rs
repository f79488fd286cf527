//! What an import knows while it walks a document, and the small readings of
//! AWS's syntax its parts share.

use std::collections::BTreeMap;

use serde_json::Value;

/// Where the placeholder of a value the document does not give points.
pub const PLACEHOLDER_URL: &str = "http://127.0.0.1:9";

/// A JSON pointer's segment.
pub fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// What a security scheme is to a route.
#[derive(Clone)]
pub enum Scheme {
    ApiKey,
    /// One of the API's authorizers, by name.
    Authorizer(String),
}

/// The import's state: the document, what it found, what it reports.
pub struct Ctx<'a> {
    pub doc: &'a Value,
    pub swagger2: bool,
    pub notes: Vec<String>,
    pub hints: Vec<String>,
    /// Stage variables the document refers to: name → a value to start with.
    pub variables: BTreeMap<String, String>,
    pub schemes: BTreeMap<String, Scheme>,
    pub authorizers: Vec<Value>,
    /// The region of the document's ARNs (SigV4 authorizers need one).
    pub region: Option<String>,
}

impl Ctx<'_> {
    /// Mapped, with something the user must provide.
    pub fn hint(&mut self, ptr: impl AsRef<str>, what: impl AsRef<str>) {
        self.hints
            .push(format!("{}: {}", ptr.as_ref(), what.as_ref()));
    }

    pub fn note(&mut self, ptr: impl AsRef<str>, why: impl AsRef<str>) {
        self.notes
            .push(format!("{}: {}", ptr.as_ref(), why.as_ref()));
    }
}

/// A static header value of AWS's mapping syntax (`'text'`), else `None`.
pub fn quoted(v: &str) -> Option<String> {
    let v = v.trim();
    (v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'')).then(|| v[1..v.len() - 1].to_owned())
}

/// A template with no VTL in it (a static body): no directive, comment or
/// reference to the request.
pub fn is_static(t: &str) -> bool {
    const VTL: [&str; 16] = [
        "#set",
        "#if",
        "#elseif",
        "#else",
        "#end",
        "#foreach",
        "#break",
        "#stop",
        "#macro",
        "#parse",
        "#include",
        "#define",
        "#evaluate",
        "##",
        "#*",
        "$input",
    ];
    !VTL.iter().any(|d| t.contains(d))
        && !["$util", "$method", "$context", "$stageVariables"]
            .iter()
            .any(|r| t.contains(r))
}

/// `${stageVariables.name}` → `${stage_variables.name}`, remembering the name
/// (and whether it starts a URI: its placeholder is then a URL).
pub fn stage_vars(cx: &mut Ctx<'_>, s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${stageVariables.") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "${stageVariables.".len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let name = &after[..end];
        let placeholder = if out.is_empty() {
            PLACEHOLDER_URL
        } else {
            "REPLACE_ME"
        };
        cx.variables
            .entry(name.to_owned())
            .or_insert_with(|| placeholder.to_owned());
        out.push_str(&format!("${{stage_variables.{name}}}"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}
