//! Where integrations and request authorizers send requests: targets, upstream
//! groups (balancing, health, ejection, DNS), connecting (TCP, TLS), and each
//! shard's pool of idle upstream connections; functions run next to the gateway,
//! calls to AWS, and parameter mapping.

pub mod aws;
pub mod balance;
pub mod choose;
pub mod connect;
pub mod connections;
pub mod function;
pub mod group;
pub mod inbox;
pub mod mapping;
pub mod pool;
pub mod target;
pub mod watch;
