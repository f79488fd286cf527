//! `upstreams[]` (upstream groups) and the TLS an `https://` upstream is verified
//! with, as users write them.

use serde::Deserialize;

/// `upstreams[]`: a group of targets an `http_proxy` integration balances over.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: String,
    pub targets: Vec<UpstreamTargetFile>,
    #[serde(default)]
    pub balance: Balance,
    /// `consistent_hash` only: `header.NAME | query.NAME | path.NAME | source_ip`.
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub outlier: Option<OutlierFile>,
    #[serde(default)]
    pub retries: Option<RetriesFile>,
    #[serde(default)]
    pub max_connections_per_target: Option<u32>,
    /// How often the targets' host names are resolved again (default 30).
    #[serde(default)]
    pub dns_refresh_s: Option<u64>,
    #[serde(default)]
    pub tls: Option<UpstreamTlsFile>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTargetFile {
    pub url: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    LeastRequest,
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub healthy: Option<u32>,
    #[serde(default)]
    pub unhealthy: Option<u32>,
}

fn default_health_path() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    #[serde(default)]
    pub base_ejection_ms: Option<u64>,
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetriesFile {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub budget_percent: Option<u32>,
}

/// `integration.tls`: how an `https://` upstream is verified.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM CA bundle the upstream's certificate must chain to; the system's
    /// roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
    /// The name verified in the upstream's certificate and sent as SNI (AWS's
    /// `serverNameToVerify`); the URI's host when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// A certificate the gateway presents to the upstream (AWS's client
    /// certificate for backends).
    #[serde(default)]
    pub client_cert: Option<ClientCertFile>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertFile {
    pub cert: String,
    pub key: String,
}
