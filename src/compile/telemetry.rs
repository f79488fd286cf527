//! Telemetry: OTLP span export and the trace headers created for requests.

use std::sync::Arc;

use crate::compile::build::Build;
use crate::config::{ConfigErrors, ConfigFile};
use crate::http::tls;
use crate::observe::telemetry::Exporter;
use crate::observe::trace::TracingPlan;

/// `telemetry.otlp_endpoint`: the span exporter, when set.
pub fn compile_telemetry(cfg: &ConfigFile, b: &mut Build) -> Option<Arc<Exporter>> {
    cfg.telemetry.as_ref().and_then(|t| {
        let uri = t.otlp_endpoint.as_str();
        let tls = if uri.starts_with("https://") {
            match b.up_tls.builder.build(&tls::UpstreamTlsSpec::default()) {
                Ok(c) => Some(c),
                Err(e) => {
                    b.errs.push("telemetry.otlp_endpoint", e);
                    return None;
                }
            }
        } else if uri.starts_with("http://") {
            None
        } else {
            b.errs
                .push("telemetry.otlp_endpoint", "must be an http(s) URL");
            return None;
        };
        Some(Arc::new(Exporter::new(
            uri.to_owned(),
            t.service_name
                .clone()
                .unwrap_or_else(|| "shardgate".to_owned()),
            tls,
        )))
    })
}

/// `tracing`: whether trace headers are created for requests without one, and
/// the share sampled.
pub fn compile_tracing(cfg: &ConfigFile, errs: &mut ConfigErrors) -> TracingPlan {
    let t = cfg.tracing.as_ref();
    let rate = t.and_then(|t| t.sample_rate).unwrap_or(0.05);
    if !(0.0..=1.0).contains(&rate) {
        errs.push("tracing.sample_rate", "must be from 0 to 1");
    }
    TracingPlan {
        create: t.and_then(|t| t.create).unwrap_or(true),
        sample_below: (rate.clamp(0.0, 1.0) * u32::MAX as f64) as u32,
    }
}
