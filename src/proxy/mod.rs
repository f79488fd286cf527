//! The hot path: worker threads, each shard's state, the connection loop and the
//! request pipeline, and the integrations (`http_proxy`, `lambda`, `aws`).

pub mod admit;
pub mod authorize;
pub mod client;
pub mod conn;
pub mod dormant;
pub mod forward;
pub mod invoke;
pub mod lambda;
pub mod manage;
pub mod pipeline;
pub mod remap;
pub mod runtime_api;
pub mod send;
pub mod shard;
pub mod tunnel;
pub mod verdict;
pub mod websocket;
pub mod worker;
pub mod ws_context;
