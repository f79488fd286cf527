//! Upstream groups: a compiled group's targets and settings, and its live state,
//! shared by every worker: the endpoints its targets resolve to (replaced when a
//! host name's addresses change), and each endpoint's health, ejection and
//! counters. Workers read the live state with relaxed atomic loads; only the
//! watcher thread (health checks, DNS) and the rare ejection write it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Balance;
use crate::upstream::balance::Ring;
use crate::upstream::pool::{Conns, PoolKey};
use crate::upstream::target::Endpoint;

/// A group as compiled: what it balances over and how.
#[derive(Debug)]
pub struct Group {
    pub name: Box<str>,
    pub targets: Vec<TargetSpec>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    pub health: Option<HealthCheck>,
    pub outlier: Option<Outlier>,
    pub retries: Retries,
    /// Connections to one target over all workers; `u32::MAX`: no cap.
    pub max_conns: u32,
    pub dns_refresh: Duration,
    /// The host of a plain `http_proxy` URI, not an `upstreams` entry.
    pub implicit: bool,
    /// A digest of the group's config: a reload that keeps it keeps `live`.
    pub sig: u64,
    pub live: Arc<Live>,
}

/// One `targets[]` entry.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub url: Box<str>,
    /// The host to resolve (without IPv6 brackets) and the port.
    pub host: Box<str>,
    pub port: u16,
    pub weight: u32,
    pub host_header: Box<str>,
    pub tls: Option<crate::http::tls::UpstreamTls>,
    /// The pool key's TLS id (0: plain).
    pub tls_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(Box<str>),
    Query(Box<str>),
    Path(Box<str>),
    SourceIp,
}

impl HashKey {
    pub fn parse(s: &str) -> Option<Self> {
        if s == "source_ip" {
            return Some(Self::SourceIp);
        }
        let (kind, name) = s.split_once('.')?;
        if name.is_empty() {
            return None;
        }
        Some(match kind {
            "header" => Self::Header(name.to_ascii_lowercase().into()),
            "query" => Self::Query(name.into()),
            "path" => Self::Path(name.into()),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: Box<str>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing checks in a row that make a target healthy again.
    pub healthy: u32,
    /// Failing checks in a row that make a target unhealthy.
    pub unhealthy: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Retries {
    /// Retries after the first try (each on another target).
    pub attempts: u32,
    pub budget_percent: u32,
}

/// A group's state while it runs, shared by every worker and the watcher; kept
/// across a reload that does not change the group.
#[derive(Debug)]
pub struct Live {
    /// Bumped with each new snapshot: a worker compares it with its copy's.
    pub gen: AtomicU64,
    pub snapshot: ArcSwap<Snapshot>,
    /// The watcher thread runs (started once).
    pub started: AtomicBool,
}

/// The endpoints of one membership, and its hash ring where the group hashes.
#[derive(Debug)]
pub struct Snapshot {
    pub gen: u64,
    pub endpoints: Vec<Member>,
    pub ring: Option<Ring>,
}

/// One address of one target.
#[derive(Debug)]
pub struct Member {
    pub to: Endpoint,
    /// Index in `Group::targets`.
    pub target: usize,
    pub weight: u32,
    pub state: Arc<MemberState>,
}

/// What every worker knows of one endpoint, and its counters.
#[derive(Debug)]
pub struct MemberState {
    /// The health check's verdict (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Ejected by outlier detection until then (Unix ms; 0: not ejected).
    pub ejected_until_ms: AtomicU64,
    pub ejections: AtomicU64,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub retries: AtomicU64,
    /// Open connections over all workers (shared with `Endpoint::open`).
    pub open: Arc<Conns>,
    /// Idle pooled connections over all workers (each worker adds its change).
    pub idle: AtomicI64,
    /// The health check's streak (watcher only): passes (> 0) or failures (< 0).
    pub streak: AtomicI64,
}

impl Default for MemberState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            open: Arc::default(),
            idle: AtomicI64::new(0),
            streak: AtomicI64::new(0),
        }
    }
}

impl MemberState {
    /// Whether requests may go to this endpoint now.
    #[inline]
    pub fn up(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

impl Live {
    /// No endpoints yet (a group being compiled).
    pub fn empty() -> Arc<Self> {
        Arc::new(Self {
            gen: AtomicU64::new(0),
            snapshot: ArcSwap::from_pointee(Snapshot {
                gen: 0,
                endpoints: Vec::new(),
                ring: None,
            }),
            started: AtomicBool::new(false),
        })
    }

    /// Publishes a new membership to every worker.
    pub fn publish(&self, snap: Snapshot) {
        let gen = snap.gen;
        self.snapshot.store(Arc::new(snap));
        self.gen.store(gen, Ordering::Release);
    }
}

impl Group {
    /// Fills `live` with the targets as resolved now (`addrs[i]`: target i's).
    pub fn with_addrs(mut self, addrs: &[Vec<SocketAddr>]) -> Group {
        let live = Live::empty();
        live.publish(self.snapshot(addrs, None, 1));
        self.live = live;
        self
    }

    /// The membership of `addrs`, keeping the state of endpoints `prev` had.
    pub fn snapshot(
        &self,
        addrs: &[Vec<SocketAddr>],
        prev: Option<&Snapshot>,
        gen: u64,
    ) -> Snapshot {
        let mut endpoints = Vec::new();
        for (i, (t, list)) in self.targets.iter().zip(addrs).enumerate() {
            for &addr in list {
                let state = prev
                    .and_then(|p| {
                        p.endpoints
                            .iter()
                            .find(|m| m.target == i && m.to.addr == addr)
                    })
                    .map_or_else(Arc::default, |m| Arc::clone(&m.state));
                endpoints.push(Member {
                    to: Endpoint {
                        addr,
                        pool_key: PoolKey {
                            addr,
                            tls: t.tls_id,
                        },
                        tls: t.tls.clone(),
                        host_header: t.host_header.clone(),
                        open: Some(Arc::clone(&state.open)),
                    },
                    target: i,
                    weight: t.weight,
                    state,
                });
            }
        }
        let ring = (self.balance == Balance::ConsistentHash).then(|| {
            let ids: Vec<String> = endpoints
                .iter()
                .map(|m| format!("{}#{}", self.targets[m.target].url, m.to.addr))
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let weights: Vec<u32> = endpoints.iter().map(|m| m.weight).collect();
            Ring::new(&ids, &weights)
        });
        Snapshot {
            gen,
            endpoints,
            ring,
        }
    }

    /// Whether any target is named by a host name (re-resolved while running).
    pub fn resolves(&self) -> bool {
        self.targets
            .iter()
            .any(|t| t.host.parse::<IpAddr>().is_err())
    }
}

/// The environment variable naming an `/etc/hosts`-style file consulted before
/// the system resolver (names a test, or an operator, controls).
pub const HOSTS_FILE_ENV: &str = "SHARDGATE_HOSTS_FILE";

/// The addresses of `host:port`, sorted: an IP literal as it is; a name from the
/// hosts file of `SHARDGATE_HOSTS_FILE` if it lists it, else the system resolver.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Ok(file) = std::env::var(HOSTS_FILE_ENV) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut found: Vec<SocketAddr> = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or(""))
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let ip = words.next()?.parse::<IpAddr>().ok()?;
                    words
                        .any(|w| w.eq_ignore_ascii_case(host))
                        .then_some(SocketAddr::new(ip, port))
                })
                .collect();
            if !found.is_empty() {
                found.sort();
                found.dedup();
                return Ok(found);
            }
        }
    }
    let mut found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    found.sort();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse_as_the_contract_writes_them() {
        assert_eq!(
            HashKey::parse("header.X-User-Id"),
            Some(HashKey::Header("x-user-id".into()))
        );
        assert_eq!(
            HashKey::parse("query.user"),
            Some(HashKey::Query("user".into()))
        );
        assert_eq!(HashKey::parse("path.id"), Some(HashKey::Path("id".into())));
        assert_eq!(HashKey::parse("source_ip"), Some(HashKey::SourceIp));
        assert_eq!(HashKey::parse("cookie.x"), None);
        assert_eq!(HashKey::parse("header."), None);
    }

    #[test]
    fn literals_resolve_to_themselves() {
        assert_eq!(
            resolve("127.0.0.1", 8080).unwrap(),
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            resolve("::1", 80).unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
    }
}
