//! The control plane (main thread and its helpers): the store, the registry of keys,
//! usage plans and access keys, deployments, hot reload, the management API and the
//! command line.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod deploy;
pub mod openapi;
pub mod redis;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod store;
