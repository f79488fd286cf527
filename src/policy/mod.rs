//! What a request must pass between its route and its integration, in the order it
//! meets them: resource policy, CORS preflight, authorizers (JWT, request, SigV4),
//! API keys, throttles and quotas, request validation, and the response cache.

pub mod access;
pub mod cache;
pub mod cors;
pub mod jwt;
pub mod keys;
pub mod quota;
pub mod request;
pub mod resource;
pub mod sigv4;
pub mod throttle;
pub mod usage;
pub mod validate;
