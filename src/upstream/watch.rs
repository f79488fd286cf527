//! Off the request path: a thread per upstream group that has health checks or
//! host names. It checks every endpoint each `interval_ms` (in parallel, each
//! bounded by `timeout_ms`) and flips its shared `healthy` flag after `healthy`
//! passes or `unhealthy` failures in a row; and it resolves the targets' host
//! names each `dns_refresh_s`, publishing a new membership when an address set
//! changed (a failing resolver keeps the last good set). The thread holds the
//! group weakly: it ends once no plan uses the group.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::upstream::group::{resolve, Group, Member};

/// Starts the watchers of `groups` that need one and do not have one yet (a
/// group a reload kept keeps its watcher).
pub fn start(groups: &[Arc<Group>]) {
    for g in groups {
        if g.health.is_none() && !g.resolves() {
            continue;
        }
        if g.live.started.swap(true, Ordering::AcqRel) {
            continue;
        }
        let weak = Arc::downgrade(g);
        let spawned = std::thread::Builder::new()
            .name(format!("shardgate-upstream-{}", g.name))
            .spawn(move || run(&weak));
        if let Err(e) = spawned {
            tracing::error!(group = %g.name, error = %e, "cannot start the upstream watcher: no health checks or DNS refresh for this group");
        }
    }
}

fn run(weak: &Weak<Group>) {
    crate::below_workers(10);
    let now = Instant::now();
    let mut next_check = now;
    let mut next_dns = now
        + weak
            .upgrade()
            .map_or(Duration::from_secs(30), |g| g.dns_refresh);
    loop {
        let Some(g) = weak.upgrade() else { return };
        let now = Instant::now();
        if let Some(h) = &g.health {
            if now >= next_check {
                check_all(&g);
                next_check = now + h.interval;
            }
        } else {
            next_check = now + Duration::from_secs(3600);
        }
        if g.resolves() && now >= next_dns {
            refresh_dns(&g);
            next_dns = now + g.dns_refresh;
        } else if !g.resolves() {
            next_dns = now + Duration::from_secs(3600);
        }
        let wake = next_check.min(next_dns);
        drop(g);
        // Short sleeps, so a dropped group's thread ends soon after.
        let left = wake.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(250)));
    }
}

/// One round of health checks over the group's endpoints, in parallel.
fn check_all(g: &Group) {
    let Some(h) = &g.health else { return };
    let snap = g.live.snapshot.load_full();
    std::thread::scope(|s| {
        for m in &snap.endpoints {
            s.spawn(move || {
                let result = check(m, &h.path, h.timeout);
                record(g, m, result);
            });
        }
    });
}

fn check(m: &Member, path: &str, timeout: Duration) -> Result<u16, String> {
    let tls =
        m.to.tls
            .as_ref()
            .map(|t| (&t.config, t.server_name.clone()));
    crate::http::client::status_at(m.to.addr, tls, &m.to.host_header, path, timeout)
}

/// Applies one check's result: 2xx and 3xx pass.
fn record(g: &Group, m: &Member, result: Result<u16, String>) {
    let Some(h) = &g.health else { return };
    let passed = matches!(result, Ok(200..=399));
    let st = &m.state;
    let streak = st.streak.load(Ordering::Relaxed);
    let streak = match (passed, streak) {
        (true, s) if s > 0 => s + 1,
        (true, _) => 1,
        (false, s) if s < 0 => s - 1,
        (false, _) => -1,
    };
    st.streak.store(streak, Ordering::Relaxed);
    let healthy = st.healthy.load(Ordering::Relaxed);
    if healthy && streak <= -i64::from(h.unhealthy) {
        st.healthy.store(false, Ordering::Relaxed);
        tracing::warn!(group = %g.name, target = %m.to.addr, result = ?result, "target failed its health check: no traffic until it passes again");
    } else if !healthy && streak >= i64::from(h.healthy) {
        st.healthy.store(true, Ordering::Relaxed);
        tracing::info!(group = %g.name, target = %m.to.addr, "target passes its health check again");
    }
}

/// Resolves the group's host names; publishes a new membership if any address
/// set changed. A name that fails keeps its last good addresses.
fn refresh_dns(g: &Group) {
    let snap = g.live.snapshot.load_full();
    let mut changed = false;
    let mut addrs = Vec::with_capacity(g.targets.len());
    for (i, t) in g.targets.iter().enumerate() {
        let before: Vec<_> = snap
            .endpoints
            .iter()
            .filter(|m| m.target == i)
            .map(|m| m.to.addr)
            .collect();
        match resolve(&t.host, t.port) {
            Ok(now) => {
                if now != before {
                    tracing::info!(group = %g.name, host = %t.host, before = ?before, now = ?now, "upstream host name resolves to new addresses");
                    changed = true;
                }
                addrs.push(now);
            }
            Err(e) => {
                tracing::warn!(group = %g.name, host = %t.host, error = %e, "cannot resolve upstream host name; keeping its last addresses");
                addrs.push(before);
            }
        }
    }
    if changed {
        let next = g.snapshot(&addrs, Some(&snap), snap.gen + 1);
        g.live.publish(next);
    }
}
