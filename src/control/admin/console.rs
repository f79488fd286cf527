//! The web console at `/console`: static files compiled into the binary (built
//! from `console/src` by `console/build.sh`; `console/dist` is committed, so the
//! Rust build needs no Node). The page asks for the admin token and calls the
//! management API with it like any client: serving the files needs no token, and
//! nothing here bypasses the API.

use crate::control::admin::wire::Response;

const INDEX: &str = include_str!("../../../console/dist/index.html");
const SCRIPT: &str = include_str!("../../../console/dist/app.js");
const STYLE: &str = include_str!("../../../console/dist/app.css");

/// Sent with every console file: scripts and styles from this origin only, API
/// calls to this origin only, no framing, no referrer.
const HEADERS: &str = "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\nx-content-type-options: nosniff\r\nx-frame-options: DENY\r\nreferrer-policy: no-referrer\r\ncache-control: no-cache\r\n";

/// The file at `/console/...` (`segs` after `console`), or `None`.
pub fn file(segs: &[&str]) -> Option<Response> {
    let (ctype, body) = match segs {
        [] | ["index.html"] => ("text/html; charset=utf-8", INDEX),
        ["app.js"] => ("text/javascript; charset=utf-8", SCRIPT),
        ["app.css"] => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut r = Response::text(ctype, body.to_owned());
    r.headers = HEADERS;
    Some(r)
}
