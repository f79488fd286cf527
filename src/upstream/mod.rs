//! Where integrations and request authorizers send requests: targets, connecting
//! (TCP, TLS), and each shard's pool of idle upstream connections.

pub mod balance;
pub mod connect;
pub mod pool;
pub mod target;
