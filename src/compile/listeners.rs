//! Listeners: addresses, limits, path rules, TLS, and which stages each serves
//! (stage segments, `$default`, custom domains).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::compile::build::{resolve_path, Build};
use crate::config::{ConfigErrors, ConfigFile, ListenerFile};
use crate::http::tls;
use crate::plan::{Limits, ListenerPlan, StagePlan};
use crate::route::BaseMapping;
use crate::route::Stages;

pub fn compile_limits(
    l: &crate::config::LimitsFile,
    path: &str,
    errs: &mut ConfigErrors,
) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        max_header_bytes: l.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_body_bytes: l.max_body_bytes.unwrap_or(d.max_body_bytes),
        header_timeout: l
            .header_timeout_ms
            .map_or(d.header_timeout, Duration::from_millis),
        idle_timeout: l
            .idle_timeout_ms
            .map_or(d.idle_timeout, Duration::from_millis),
        max_buffered_body_bytes: l
            .max_buffered_body_bytes
            .unwrap_or(d.max_buffered_body_bytes)
            .min(l.max_body_bytes.unwrap_or(d.max_body_bytes)),
        request_timeout: l
            .request_timeout_ms
            .map_or(d.request_timeout, Duration::from_millis),
        send_timeout: l
            .send_timeout_ms
            .map_or(d.send_timeout, Duration::from_millis),
        paths: d.paths,
        websocket_idle: l
            .idle_timeout_ms
            .map_or(d.websocket_idle, Duration::from_millis),
    };
    if l.max_buffered_body_bytes == Some(0) {
        errs.push(format!("{path}.max_buffered_body_bytes"), "must be above 0");
    }
    // 1 KiB..1 MiB: below 1 KiB ordinary browsers fail; above 1 MiB one connection
    // could pin megabytes of buffer.
    if !(1024..=1024 * 1024).contains(&limits.max_header_bytes) {
        errs.push(
            format!("{path}.max_header_bytes"),
            "must be from 1024 to 1048576",
        );
    }
    if limits.header_timeout.is_zero() {
        errs.push(format!("{path}.header_timeout_ms"), "must be above 0");
    }
    if limits.idle_timeout.is_zero() {
        errs.push(format!("{path}.idle_timeout_ms"), "must be above 0");
    }
    if limits.request_timeout.is_zero() {
        errs.push(format!("{path}.request_timeout_ms"), "must be above 0");
    }
    if limits.send_timeout.is_zero() {
        errs.push(format!("{path}.send_timeout_ms"), "must be above 0");
    }
    limits
}

pub fn compile_domains(
    cfg: &ConfigFile,
    api_index: &HashMap<&str, usize>,
    stage_ids: &HashMap<(usize, &str), usize>,
    served: &[usize],
    errs: &mut ConfigErrors,
) -> HashMap<Box<str>, Vec<BaseMapping>> {
    let mut out: HashMap<Box<str>, Vec<BaseMapping>> = HashMap::new();
    for (di, d) in cfg.domains.iter().enumerate() {
        let Some(d) = d else { continue };
        let path = format!("domains[{di}]");
        let name = d.name.to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 || name.contains(['/', ':', ' ']) {
            errs.push(
                format!("{path}.name"),
                format!("{:?} is not a host name", d.name),
            );
        }
        let mut seen = HashSet::new();
        let mut mappings = Vec::new();
        for (mi, m) in d.mappings.iter().enumerate() {
            let mpath = format!("{path}.mappings[{mi}]");
            let base = m.base_path.trim_matches('/').to_owned();
            let ok = base.len() <= 300
                && !base.contains("//")
                && base
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"$-_.+!*'()/".contains(&b));
            if !ok {
                errs.push(
                    format!("{mpath}.base_path"),
                    "letters, digits and $-_.+!*'()/ only, at most 300",
                );
            }
            if !seen.insert(base.clone()) {
                errs.push(
                    format!("{mpath}.base_path"),
                    format!("duplicate base path {base:?}"),
                );
            }
            let Some(&ai) = api_index.get(m.api.as_str()) else {
                errs.push(format!("{mpath}.api"), format!("no API named {:?}", m.api));
                continue;
            };
            let Some(&sid) = stage_ids.get(&(ai, m.stage.as_str())) else {
                errs.push(
                    format!("{mpath}.stage"),
                    format!("API {:?} has no stage {:?}", m.api, m.stage),
                );
                continue;
            };
            if served.contains(&ai) {
                mappings.push(BaseMapping {
                    base_path: base.into(),
                    stage: sid,
                });
            }
        }
        // Longest base path first: the first whole-segment match wins.
        mappings.sort_by_key(|m| std::cmp::Reverse(m.base_path.len()));
        if !mappings.is_empty() && out.insert(name.clone().into(), mappings).is_some() {
            errs.push(format!("{path}.name"), format!("duplicate domain {name:?}"));
        }
    }
    out
}

pub fn compile_listener_tls(
    t: &crate::config::ListenerTlsFile,
    base: &Path,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<Arc<tls::ListenerTls>> {
    if t.certificates.is_empty() {
        errs.push(
            format!("{path}.certificates"),
            "at least one certificate is required",
        );
        return None;
    }
    let mut ok = true;
    let certificates = t
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            for (j, n) in c.names.iter().enumerate() {
                let bare = n.strip_prefix("*.").unwrap_or(n);
                if bare.is_empty()
                    || bare.contains('*')
                    || !bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    ok = false;
                    errs.push(
                        format!("{path}.certificates[{i}].names[{j}]"),
                        format!("{n:?} is not a host name or `*.` wildcard"),
                    );
                }
            }
            tls::CertSpec {
                cert: resolve_path(base, &c.cert),
                key: resolve_path(base, &c.key),
                names: c.names.clone(),
            }
        })
        .collect();
    let client_auth = match &t.client_auth {
        None => None,
        Some(ca) => {
            let mode = match ca.mode.as_str() {
                "required" => tls::ClientAuthMode::Required,
                "optional" => tls::ClientAuthMode::Optional,
                other => {
                    errs.push(
                        format!("{path}.client_auth.mode"),
                        format!("{other:?}: expected required or optional"),
                    );
                    return None;
                }
            };
            Some((resolve_path(base, &ca.truststore), mode))
        }
    };
    if !ok {
        return None;
    }
    let spec = tls::ListenerTlsSpec {
        certificates,
        client_auth,
        forward_client_cert: t.client_auth.as_ref().is_some_and(|c| c.forward_headers),
    };
    match tls::ListenerTls::load(spec) {
        Ok(l) => Some(Arc::new(l)),
        Err(problems) => {
            for p in problems {
                errs.push(path, p);
            }
            None
        }
    }
}

/// A custom domain on an HTTPS listener that no certificate names is served with
/// the default certificate, which clients will refuse: say so at load time.
pub fn warn_uncovered_domains<'a>(
    listener: &str,
    tls: &tls::ListenerTls,
    domains: impl Iterator<Item = &'a Box<str>>,
) {
    for d in domains.filter(|d| !tls.covers(d)) {
        tracing::warn!(listener, domain = %d, "no certificate names this custom domain; it gets the default certificate");
    }
}

/// One listener: its address, limits, path rules, TLS, and the stages it serves.
/// `None` (with errors) when its address does not parse.
#[allow(clippy::too_many_arguments)]
pub fn compile_listener(
    l: &ListenerFile,
    path: &str,
    cfg: &ConfigFile,
    api_index: &HashMap<&str, usize>,
    api_stages: &[Vec<usize>],
    stage_ids: &HashMap<(usize, &str), usize>,
    stages: &[StagePlan],
    binds: &mut HashSet<SocketAddr>,
    b: &mut Build,
) -> Option<ListenerPlan> {
    let tls = l
        .tls
        .as_ref()
        .and_then(|t| compile_listener_tls(t, &b.base_dir, &format!("{path}.tls"), &mut b.errs));
    let bind: Option<SocketAddr> = match l.bind.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            b.errs.push(
                format!("{path}.bind"),
                format!("{:?} is not an address:port such as 0.0.0.0:8080", l.bind),
            );
            None
        }
    };
    if let Some(addr) = bind {
        if addr.port() != 0 && !binds.insert(addr) {
            b.errs.push(
                format!("{path}.bind"),
                format!("{addr} is bound by another listener"),
            );
        }
    }
    let mut limits = compile_limits(&l.limits, &format!("{path}.limits"), &mut b.errs);
    limits.paths = crate::http::path::Rules {
        keep_escaped_slashes: l.paths.escaped_slashes == crate::config::KeepOrReject::Keep,
        keep_semicolons: l.paths.semicolons == crate::config::KeepOrReject::Keep,
    };
    let served: Vec<usize> = match &l.apis {
        None => (0..cfg.apis.len()).collect(),
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let found = api_index.get(n.as_str()).copied();
                if found.is_none() {
                    b.errs
                        .push(format!("{path}.apis[{i}]"), format!("no API named {n:?}"));
                }
                found
            })
            .collect(),
    };
    let mut stage_by_name: HashMap<Box<str>, usize> = HashMap::new();
    let mut default_stage = None;
    for &ai in &served {
        for &sid in api_stages.get(ai).map(Vec::as_slice).unwrap_or(&[]) {
            let name = stages[sid].stage.as_str();
            if name == "$default" {
                if let Some(prev) = default_stage.replace(sid) {
                    let prev: &StagePlan = &stages[prev];
                    b.errs.push(
                        path,
                        format!(
                            "two `$default` stages on one listener: APIs {:?} and {:?}",
                            prev.api, stages[sid].api
                        ),
                    );
                }
            } else if let Some(prev) = stage_by_name.insert(name.into(), sid) {
                b.errs.push(
                    path,
                    format!(
                        "stage name {name:?} is used by APIs {:?} and {:?} on this listener",
                        stages[prev].api, stages[sid].api
                    ),
                );
            }
        }
    }
    let domains = compile_domains(cfg, api_index, stage_ids, &served, &mut b.errs);
    if let Some(tls) = &tls {
        warn_uncovered_domains(&l.name, tls, domains.keys());
    }
    let bind = bind?;
    Some(ListenerPlan {
        name: l.name.clone(),
        configured: bind,
        bind,
        limits,
        stages: Stages {
            by_name: stage_by_name,
            default: default_stage,
            domains,
        },
        tls,
    })
}
