//! `upstreams`: groups of targets, validated and resolved into `Group`s; and the
//! implicit one-target group of a plain `http_proxy` URI whose host is a name
//! (so that it, too, is resolved again while the gateway runs).

use std::time::Duration;

use crate::compile::build::{digest, Groups, UpstreamTls};
use crate::config::{Balance, ConfigErrors, UpstreamFile};
use crate::upstream::group::{
    resolve, Group, HashKey, HealthCheck, Live, Outlier, Retries, TargetSpec,
};

/// Default seconds between resolutions of an upstream's host names.
pub const DEFAULT_DNS_REFRESH_S: u64 = 30;

/// Compiles `upstreams` (errors with their key paths).
pub fn compile_groups(
    files: &[Option<UpstreamFile>],
    dns_refresh_s: Option<u64>,
    up_tls: &mut UpstreamTls,
    errs: &mut ConfigErrors,
) -> Groups {
    let mut g = Groups {
        dns_refresh: Duration::from_secs(dns_refresh_s.unwrap_or(DEFAULT_DNS_REFRESH_S)),
        ..Groups::default()
    };
    if dns_refresh_s == Some(0) {
        errs.push("dns_refresh_s", "must be 1 or more");
    }
    for (i, f) in files.iter().enumerate() {
        let Some(f) = f else { continue };
        let path = format!("upstreams[{i}]");
        if let Some(group) = compile_group(f, &path, g.dns_refresh, up_tls, errs) {
            if g.by_name.insert(f.name.clone(), g.list.len()).is_some() {
                errs.push(
                    format!("{path}.name"),
                    format!("duplicate upstream name {:?}", f.name),
                );
            }
            g.list.push(group);
        }
    }
    g
}

/// The implicit group of a plain URI's named host (one per host and TLS).
pub fn implicit_group(
    groups: &mut Groups,
    target: TargetSpec,
    addrs: Vec<std::net::SocketAddr>,
) -> usize {
    let key = (target.host_header.to_string(), target.tls_id);
    if let Some(&i) = groups.implicit.get(&key) {
        return i;
    }
    let group = Group {
        name: target.host_header.clone(),
        sig: digest(&("implicit", &key, groups.dns_refresh)),
        targets: vec![target],
        balance: Balance::LeastRequest,
        hash_key: None,
        health: None,
        outlier: None,
        retries: Retries {
            attempts: 0,
            budget_percent: 0,
        },
        max_conns: u32::MAX,
        dns_refresh: groups.dns_refresh,
        implicit: true,
        live: Live::empty(),
    }
    .with_addrs(&[addrs]);
    groups.list.push(group);
    groups.implicit.insert(key, groups.list.len() - 1);
    groups.list.len() - 1
}

/// Splits `http[s]://host[:port][/path]` into (https, host, port, authority, path).
pub fn split_url(url: &str) -> Result<(bool, &str, u16, &str, &str), String> {
    let (rest, https) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() || authority.contains(['{', '}', '@', ' ']) {
        return Err(format!(
            "host {authority:?} must be a fixed host[:port] (parameters belong in the path)"
        ));
    }
    let (host, port) = match authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'))
    {
        Some((host, p)) => (
            host,
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is not a port number"))?,
        ),
        None => (authority, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    Ok((https, host, port, authority, tail))
}

fn compile_group(
    f: &UpstreamFile,
    path: &str,
    default_dns: Duration,
    up_tls: &mut UpstreamTls,
    errs: &mut ConfigErrors,
) -> Option<Group> {
    if f.name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    if f.targets.is_empty() {
        errs.push(
            format!("{path}.targets"),
            "a group needs at least one target",
        );
    }
    if f.targets.len() > 64 {
        errs.push(format!("{path}.targets"), "at most 64 targets");
    }
    let mut targets = Vec::new();
    let mut addrs = Vec::new();
    for (ti, t) in f.targets.iter().enumerate() {
        let tpath = format!("{path}.targets[{ti}]");
        let (https, host, port, authority, tail) = match split_url(&t.url) {
            Ok(parts) => parts,
            Err(e) => {
                errs.push(format!("{tpath}.url"), format!("{:?}: {e}", t.url));
                continue;
            }
        };
        if !tail.is_empty() && tail != "/" {
            errs.push(
                format!("{tpath}.url"),
                "a target is a scheme, host and port: the path belongs in the integration's uri",
            );
        }
        let weight = t.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            errs.push(format!("{tpath}.weight"), "must be from 1 to 1000");
        }
        let (tls, tls_id) = if https {
            match up_tls.compile(f.tls.as_ref(), host, path, errs) {
                Some((t, id)) => (Some(t), id),
                None => continue,
            }
        } else {
            (None, 0)
        };
        match resolve(host, port) {
            Ok(a) => addrs.push(a),
            Err(e) => {
                errs.push(format!("{tpath}.url"), e);
                continue;
            }
        }
        targets.push(TargetSpec {
            url: t.url.as_str().into(),
            host: host.into(),
            port,
            weight,
            host_header: authority.into(),
            tls,
            tls_id,
        });
    }
    if f.tls.is_some() && !targets.iter().any(|t| t.tls.is_some()) {
        errs.push(format!("{path}.tls"), "only for https:// targets");
    }
    let hash_key = match (&f.hash_key, f.balance) {
        (Some(k), Balance::ConsistentHash) => match HashKey::parse(k) {
            Some(k) => Some(k),
            None => {
                errs.push(
                    format!("{path}.hash_key"),
                    format!("{k:?}: expected header.NAME, query.NAME, path.NAME or source_ip"),
                );
                None
            }
        },
        (None, Balance::ConsistentHash) => {
            errs.push(
                format!("{path}.hash_key"),
                "consistent_hash needs a hash_key (header.NAME, query.NAME, path.NAME or source_ip)",
            );
            None
        }
        (Some(_), _) => {
            errs.push(
                format!("{path}.hash_key"),
                "only with balance: consistent_hash",
            );
            None
        }
        (None, _) => None,
    };
    let health = f.health_check.as_ref().map(|h| {
        let hpath = format!("{path}.health_check");
        let interval = h.interval_ms.unwrap_or(10_000);
        let timeout = h.timeout_ms.unwrap_or(2_000);
        if !(100..=300_000).contains(&interval) {
            errs.push(format!("{hpath}.interval_ms"), "must be from 100 to 300000");
        }
        if !(10..=60_000).contains(&timeout) {
            errs.push(format!("{hpath}.timeout_ms"), "must be from 10 to 60000");
        }
        if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            errs.push(
                format!("{hpath}.path"),
                "must be a path starting with / (no spaces or control characters)",
            );
        }
        let (healthy, unhealthy) = (h.healthy.unwrap_or(2), h.unhealthy.unwrap_or(2));
        for (k, v) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            if !(1..=100).contains(&v) {
                errs.push(format!("{hpath}.{k}"), "must be from 1 to 100");
            }
        }
        HealthCheck {
            path: h.path.as_str().into(),
            interval: Duration::from_millis(interval),
            timeout: Duration::from_millis(timeout),
            healthy,
            unhealthy,
        }
    });
    let outlier = f.outlier.as_ref().map(|o| {
        let opath = format!("{path}.outlier");
        let out = Outlier {
            consecutive_failures: o.consecutive_failures.unwrap_or(5),
            base_ejection_ms: o.base_ejection_ms.unwrap_or(30_000),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(50),
        };
        if out.consecutive_failures == 0 {
            errs.push(format!("{opath}.consecutive_failures"), "must be 1 or more");
        }
        if !(1..=3_600_000).contains(&out.base_ejection_ms) {
            errs.push(
                format!("{opath}.base_ejection_ms"),
                "must be from 1 to 3600000",
            );
        }
        if out.max_ejection_percent > 100 {
            errs.push(
                format!("{opath}.max_ejection_percent"),
                "must be from 0 to 100",
            );
        }
        out
    });
    let retries = match &f.retries {
        Some(r) => {
            let out = Retries {
                attempts: r.attempts.unwrap_or(2),
                budget_percent: r.budget_percent.unwrap_or(20),
            };
            if out.attempts > 10 {
                errs.push(format!("{path}.retries.attempts"), "must be from 0 to 10");
            }
            if out.budget_percent > 100 {
                errs.push(
                    format!("{path}.retries.budget_percent"),
                    "must be from 0 to 100",
                );
            }
            out
        }
        None => Retries {
            attempts: 2,
            budget_percent: 20,
        },
    };
    let max_conns = f.max_connections_per_target.unwrap_or(u32::MAX);
    if max_conns == 0 {
        errs.push(
            format!("{path}.max_connections_per_target"),
            "must be 1 or more",
        );
    }
    let dns_refresh = match f.dns_refresh_s {
        Some(0) => {
            errs.push(format!("{path}.dns_refresh_s"), "must be 1 or more");
            default_dns
        }
        Some(s) => Duration::from_secs(s),
        None => default_dns,
    };
    // A group with errors is still registered (the plan fails anyway): routes
    // naming it get no second error.
    Some(
        Group {
            name: f.name.as_str().into(),
            targets,
            balance: f.balance,
            hash_key,
            health,
            outlier,
            retries,
            max_conns,
            dns_refresh,
            implicit: false,
            sig: digest(&(f, default_dns)),
            live: Live::empty(),
        }
        .with_addrs(&addrs),
    )
}
