//! HTTP/1.1 as the gateway speaks it, on both sides: heads, paths, bodies, streams,
//! response heads and the error→response mapping, TLS, and the small client the
//! control plane's outbound calls use. Knows nothing of APIs, stages or routes.

pub mod body;
pub mod client;
pub mod error;
pub mod parse;
pub mod path;
pub mod respond;
pub mod responses;
pub mod sigv4;
pub mod stream;
pub mod tls;
pub mod ws;
