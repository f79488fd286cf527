//! What the gateway tells its operators about each request: metrics, access logs,
//! trace headers and OTLP span export.

pub mod accesslog;
pub mod metrics;
pub mod telemetry;
pub mod trace;
