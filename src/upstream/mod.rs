//! The integration stage (AWS's word): per-core connection pools and forwarding a
//! request to an HTTP upstream.

pub mod connect;
pub mod pool;
pub mod target;
