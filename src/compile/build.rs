//! What compiling one config accumulates (errors, throttles, authorizers, log sinks,
//! upstream TLS configs) and the small checks every part uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ConfigErrors, SecretFile, ThrottleFile};
use crate::http::tls;
use crate::ids::ThrottleId;
use crate::policy::throttle::{Limit, SharedBucket};

/// AWS's default integration timeout (REST; the config contract picks it for all APIs).
pub const DEFAULT_TIMEOUT_MS: u64 = 29_000;

/// AWS's integration timeout bounds: 50 ms to 30 s (HTTP APIs).
pub const TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 50..=30_000;

/// Reads a `{ env: NAME }` or literal secret; `None` (with an error) when unset.
pub fn secret(v: &SecretFile, path: &str, errs: &mut ConfigErrors) -> Option<String> {
    match v {
        SecretFile::Env(r) => match std::env::var(&r.env) {
            Ok(v) => Some(v),
            Err(_) => {
                errs.push(
                    format!("{path}.env"),
                    format!("environment variable {} is not set", r.env),
                );
                None
            }
        },
        SecretFile::Value(v) => Some(v.clone()),
    }
}

pub fn check_limit(t: ThrottleFile, path: &str, errs: &mut ConfigErrors) -> bool {
    if !t.rate.is_finite() || t.rate < 0.0 {
        errs.push(
            format!("{path}.rate"),
            "must be a number of requests per second, 0 or more",
        );
        return false;
    }
    true
}

/// Validates a `{ rate, burst }` and adds its bucket; `None` when it is invalid.
pub fn add_throttle(
    throttles: &mut Throttles,
    t: ThrottleFile,
    name: String,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<ThrottleId> {
    if !check_limit(t, path, errs) {
        return None;
    }
    throttles.buckets.push(Arc::new(SharedBucket::new(
        Limit {
            rate: t.rate,
            burst: t.burst,
        },
        throttles.workers,
    )));
    throttles.names.push(name);
    Some(throttles.buckets.len() - 1)
}

/// The throttles being compiled, with their names.
pub struct Throttles {
    pub buckets: Vec<Arc<SharedBucket>>,
    pub names: Vec<String>,
    pub workers: usize,
}

/// A digest of a piece of config, as written: equal digests, equal config.
pub fn digest(v: &impl std::fmt::Debug) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    format!("{v:?}").hash(&mut h);
    h.finish()
}

/// A relative path names a file beside the config, or else in the working directory.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_relative() && !base.as_os_str().is_empty() {
        let beside = base.join(p);
        if beside.exists() || !p.exists() {
            return beside;
        }
    }
    p.to_path_buf()
}

/// Upstream TLS configs of the whole config: built once per distinct CA and
/// client certificate, with an id per (config, server name) that keys the pools.
pub struct UpstreamTls {
    pub base: PathBuf,
    pub builder: tls::UpstreamTlsBuilder,
    pub ids: HashMap<(tls::UpstreamTlsSpec, String), u32>,
}

impl UpstreamTls {
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_path_buf(),
            builder: tls::UpstreamTlsBuilder::default(),
            ids: HashMap::new(),
        }
    }

    pub fn compile(
        &mut self,
        t: Option<&crate::config::UpstreamTlsFile>,
        host: &str,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<(tls::UpstreamTls, u32)> {
        let default = crate::config::UpstreamTlsFile::default();
        let t = t.unwrap_or(&default);
        let spec = tls::UpstreamTlsSpec {
            ca: t.ca.as_deref().map(|p| resolve_path(&self.base, p)),
            client_cert: t.client_cert.as_ref().map(|c| {
                (
                    resolve_path(&self.base, &c.cert),
                    resolve_path(&self.base, &c.key),
                )
            }),
        };
        let name = t.server_name.as_deref().unwrap_or(host);
        // `[::1]` in a URI is the address `::1`.
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = match rustls::pki_types::ServerName::try_from(name.clone()) {
            Ok(n) => n,
            Err(_) => {
                errs.push(
                    format!("{path}.tls.server_name"),
                    format!("{name:?} is not a host name or address"),
                );
                return None;
            }
        };
        let config = match self.builder.build(&spec) {
            Ok(c) => c,
            Err(e) => {
                errs.push(format!("{path}.tls"), e);
                return None;
            }
        };
        // Stable across reloads (a digest, never 0), so pooled connections of an
        // upstream whose TLS did not change are kept.
        let id = *self.ids.entry((spec, name)).or_insert_with_key(|k| {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            k.hash(&mut h);
            (h.finish() as u32).max(1)
        });
        Some((
            tls::UpstreamTls {
                config,
                server_name,
            },
            id,
        ))
    }
}

/// What compiling one config accumulates as each part is compiled.
pub struct Build {
    /// Every error, with its key's path.
    pub errs: ConfigErrors,
    pub throttles: Throttles,
    /// Upstream TLS configs, one per distinct spec (shared by integrations).
    pub up_tls: UpstreamTls,
    /// Upstream groups, configured and implicit.
    pub groups: Groups,
    /// Access log sinks, one per distinct target.
    pub logs: crate::observe::accesslog::Logs,
    /// The config file's directory: relative paths resolve from it.
    pub base_dir: PathBuf,
    /// `functions[]` by name: their index in `Plan::functions`.
    pub functions: std::collections::HashMap<String, usize>,
}

/// The upstream groups of one config: those configured, then the implicit ones
/// (`compile::upstreams`).
#[derive(Default)]
pub struct Groups {
    pub list: Vec<crate::upstream::group::Group>,
    pub by_name: HashMap<String, usize>,
    /// (authority, TLS id) → an implicit group.
    pub implicit: HashMap<(String, u32), usize>,
    pub dns_refresh: std::time::Duration,
}
