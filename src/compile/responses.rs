//! `apis[].gateway_responses`, compiled for one stage: type names checked,
//! static header lines encoded, templates with the stage's values filled in.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ConfigErrors, GatewayResponseFile};
use crate::http::responses::{Custom, ResponseType, Responses, StageValues, Template};

/// The stage's responses, or `None` when the API has none (or they have errors,
/// pushed with `path`: `apis[i].gateway_responses`).
pub fn compile_responses(
    set: &BTreeMap<String, GatewayResponseFile>,
    path: &str,
    stage: &StageValues<'_>,
    errs: &mut ConfigErrors,
) -> Option<Arc<Responses>> {
    if set.is_empty() {
        return None;
    }
    let mut push = |p: String, m: String| {
        // Stages of one API compile the same file: say each error once.
        if !errs.0.iter().any(|e| e.path == p && e.message == m) {
            errs.push(p, m);
        }
    };
    let mut out = Vec::new();
    for (name, r) in set {
        let rpath = format!("{path}.{name}");
        let Some(kind) = ResponseType::from_name(name) else {
            let known: Vec<&str> = crate::http::responses::TYPES.iter().map(|t| t.0).collect();
            push(
                rpath,
                format!(
                    "unknown gateway response type (one of {})",
                    known.join(", ")
                ),
            );
            continue;
        };
        let mut c = Custom::default();
        if let Some(s) = r.status {
            if !(200..=599).contains(&s) || matches!(s, 204 | 205 | 304) {
                push(
                    format!("{rpath}.status"),
                    format!("{s}: a status from 200 to 599 whose answer has a body"),
                );
            }
            c.status = Some(s);
        }
        let mut lines = Vec::new();
        let mut templated = Vec::new();
        for (h, v) in &r.headers {
            let hpath = format!("{rpath}.headers.{h}");
            let lower = h.to_ascii_lowercase();
            if lower.is_empty() || !lower.bytes().all(is_token_byte) {
                push(hpath, "not a header name".into());
                continue;
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                push(hpath, "a header value cannot hold line breaks".into());
                continue;
            }
            if matches!(
                lower.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "date" | "apigw-requestid"
            ) {
                push(hpath, "set by the gateway; it cannot be overridden".into());
                continue;
            }
            match Template::compile(v, stage) {
                Ok(t) => {
                    c.content_type |= lower == "content-type";
                    match t.as_static() {
                        Some(text) => {
                            lines.extend_from_slice(lower.as_bytes());
                            lines.extend_from_slice(b": ");
                            lines.extend_from_slice(text.as_bytes());
                            lines.extend_from_slice(b"\r\n");
                        }
                        None => templated.push((lower.into_boxed_str(), t)),
                    }
                }
                Err(e) => push(hpath, with_stage(e, stage)),
            }
        }
        c.headers = lines.into();
        c.templated = templated.into();
        if let Some(body) = &r.body {
            match Template::compile(body, stage) {
                Ok(t) => c.body = Some(t),
                Err(e) => push(format!("{rpath}.body"), with_stage(e, stage)),
            }
        }
        out.push((kind, c));
    }
    Some(Arc::new(Responses::new(out)))
}

fn with_stage(e: String, stage: &StageValues<'_>) -> String {
    if e.starts_with("unknown stage variable") {
        format!("{e} (stage {:?})", stage.stage)
    } else {
        e
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
