//! Where integrations and request authorizers send requests: targets, upstream
//! groups (balancing, health, ejection, DNS), connecting (TCP, TLS), and each
//! shard's pool of idle upstream connections.

pub mod balance;
pub mod choose;
pub mod connect;
pub mod group;
pub mod pool;
pub mod target;
pub mod watch;
