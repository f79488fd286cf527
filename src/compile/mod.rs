//! Validates a `ConfigFile` and builds the immutable `Plan`. Every error is
//! reported at once, with the key's path; nothing is checked at request time that
//! could have been checked here. One file per part, each importing only the ones
//! before it: `build` (shared state and checks) → `upstreams` → `integrations`, `functions`,
//! `routes` →
//! `authorizers` → `apis` (APIs and stages) → `canary` → `listeners`, `keys` → `gateway`
//! (the whole config) → `load` (from a file).

pub mod apis;
pub mod authorizers;
pub mod build;
pub mod canary;
pub mod functions;
pub mod gateway;
pub mod integrations;
pub mod keys;
pub mod listeners;
pub mod load;
pub mod responses;
pub mod routes;
pub mod stages;
pub mod telemetry;
pub mod upstreams;
pub mod websocket;

pub use apis::{Deployed, Snapshots};
pub use gateway::{compile, compile_with, Options};
pub use load::{load_plan, load_plan_with};
