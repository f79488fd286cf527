//! TLS configuration, built in the control plane and shared read-only by the
//! workers: HTTPS listeners (certificates chosen by SNI, client certificates for
//! mutual TLS, rotation without a restart) and `https://` upstreams.
//!
//! Handshakes and record work run on the worker that owns the socket
//! (`crate::http::stream`); a listener's current `ServerConfig` sits in an `ArcSwap` that
//! a reload replaces, so new connections get new certificates and open ones keep
//! theirs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The one crypto provider (aws-lc-rs, rustls's default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS 1.2 and 1.3 only: what rustls implements, and AWS's `TLS_1_2` policy.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A client without a certificate chaining to the truststore is refused in the
    /// handshake.
    Required,
    /// A client may present no certificate; one it presents must verify.
    Optional,
}

#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Server names this certificate answers (exact or `*.suffix`); empty: the DNS
    /// names of its subject alternative names.
    pub names: Vec<String>,
}

/// What a listener's `tls:` asks for: files, read now and again on every reload.
#[derive(Debug, Clone)]
pub struct ListenerTlsSpec {
    pub certificates: Vec<CertSpec>,
    pub client_auth: Option<(PathBuf, ClientAuthMode)>,
    /// Forward the verified client certificate as `x-client-cert-*` headers.
    pub forward_client_cert: bool,
}

/// A loaded certificate, as the management API and the logs describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub cert: String,
    pub names: Vec<String>,
    pub not_after: String,
}

/// An HTTPS listener's TLS: the config new connections get, swapped on reload.
pub struct ListenerTls {
    pub spec: ListenerTlsSpec,
    current: ArcSwap<ServerConfig>,
    summary: ArcSwap<Vec<CertSummary>>,
    /// The current config's certificate picker, for questions asked off the
    /// handshake (which names are covered).
    resolver: ArcSwap<SniResolver>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads every file the spec names; every problem at once.
    pub fn load(spec: ListenerTlsSpec) -> Result<Self, Vec<String>> {
        let (config, summary, resolver) = build_server(&spec)?;
        Ok(Self {
            spec,
            current: ArcSwap::from_pointee(config),
            summary: ArcSwap::from_pointee(summary),
            resolver: ArcSwap::new(resolver),
        })
    }

    /// The config for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn summary(&self) -> Arc<Vec<CertSummary>> {
        self.summary.load_full()
    }

    /// Reads the files again; on any error the running config stays.
    pub fn reload(&self) -> Result<Arc<Vec<CertSummary>>, Vec<String>> {
        let (config, summary, resolver) = build_server(&self.spec)?;
        let summary = Arc::new(summary);
        self.current.store(Arc::new(config));
        self.summary.store(Arc::clone(&summary));
        self.resolver.store(resolver);
        Ok(summary)
    }

    /// A certificate names `host` (exactly or by wildcard): SNI `host` does not
    /// fall back to the default.
    pub fn covers(&self, host: &str) -> bool {
        self.resolver.load().pick(host).is_some()
    }
}

type Built = (ServerConfig, Vec<CertSummary>, Arc<SniResolver>);

fn build_server(spec: &ListenerTlsSpec) -> Result<Built, Vec<String>> {
    let provider = provider();
    let mut errs = Vec::new();
    let mut resolver = SniResolver::default();
    let mut summary = Vec::new();
    for c in &spec.certificates {
        match load_certified_key(&c.cert, &c.key, &provider) {
            Ok((key, info)) => {
                let names = if c.names.is_empty() {
                    info.dns_names.clone()
                } else {
                    c.names.iter().map(|n| n.to_ascii_lowercase()).collect()
                };
                if info.expired {
                    tracing::warn!(cert = %c.cert.display(), not_after = %info.not_after, "certificate has expired");
                }
                let key = Arc::new(key);
                for n in &names {
                    resolver.add(n, &key);
                }
                resolver.default.get_or_insert_with(|| Arc::clone(&key));
                summary.push(CertSummary {
                    cert: c.cert.display().to_string(),
                    names,
                    not_after: info.not_after,
                });
            }
            Err(e) => errs.push(e),
        }
    }
    let verifier = match &spec.client_auth {
        None => None,
        Some((truststore, mode)) => match load_roots(truststore) {
            Ok(roots) => {
                let b = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                );
                let b = if *mode == ClientAuthMode::Optional {
                    b.allow_unauthenticated()
                } else {
                    b
                };
                match b.build() {
                    Ok(v) => Some(v),
                    Err(e) => {
                        errs.push(format!("{}: {e}", truststore.display()));
                        None
                    }
                }
            }
            Err(e) => {
                errs.push(e);
                None
            }
        },
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| vec![e.to_string()])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let resolver = Arc::new(resolver);
    let mut config =
        builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Stateless resumption: tickets, so a client that comes back to another worker
    // resumes too.
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => config.ticketer = t,
        Err(e) => tracing::warn!(error = %e, "no TLS session tickets"),
    }
    Ok((config, summary, resolver))
}

/// Reads the certificate, key and truststore files of every HTTPS listener again
/// (SIGHUP, `POST /tls/reload`): new connections get what was read, open ones keep
/// what they have. A listener whose files fail keeps its running config; the errors
/// come back, each prefixed with the listener's name.
pub fn reload_listeners<'a>(
    listeners: impl IntoIterator<Item = (&'a str, &'a ListenerTls)>,
) -> (serde_json::Value, Vec<String>) {
    let mut loaded = Vec::new();
    let mut errs = Vec::new();
    for (name, tls) in listeners {
        match tls.reload() {
            Ok(summary) => {
                for c in summary.iter() {
                    tracing::info!(listener = %name, cert = %c.cert, names = ?c.names, not_after = %c.not_after, "certificate loaded");
                }
                loaded.push(serde_json::json!({ "listener": name, "certificates": *summary }));
            }
            Err(problems) => {
                for p in problems {
                    tracing::error!(listener = %name, error = %p, "certificate reload failed; the running certificates stay");
                    errs.push(format!("{}: {p}", name));
                }
            }
        }
    }
    (serde_json::Value::Array(loaded), errs)
}

/// Every HTTPS listener's certificates as loaded now.
pub fn describe_listeners<'a>(
    listeners: impl IntoIterator<Item = (&'a str, &'a ListenerTls)>,
) -> serde_json::Value {
    listeners
        .into_iter()
        .map(|(name, tls)| {
            serde_json::json!({
                "listener": name,
                "client_auth": tls.spec.client_auth.as_ref().map(|(_, m)| match m {
                    ClientAuthMode::Required => "required",
                    ClientAuthMode::Optional => "optional",
                }),
                "certificates": *tls.summary(),
            })
        })
        .collect()
}

struct LeafInfo {
    dns_names: Vec<String>,
    not_after: String,
    expired: bool,
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, LeafInfo), String> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|_| {
        format!(
            "{} does not match the certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    let (_, x509) = x509_parser::parse_x509_certificate(&ck.cert[0])
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", cert.display()))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push(d.to_ascii_lowercase());
            }
        }
    }
    let not_after = x509.validity().not_after.timestamp();
    let info = LeafInfo {
        dns_names,
        not_after: openssl_time(not_after),
        expired: not_after < crate::clock::unix_s() as i64,
    };
    Ok((ck, info))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "{}: no private key (PEM, PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Picks the certificate by SNI: an exact name, then a `*.` wildcard one label
/// deep, then the first certificate (also for clients that send no SNI).
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn add(&mut self, name: &str, key: &Arc<CertifiedKey>) {
        // The first certificate naming a host wins, as the first is the default.
        match name.strip_prefix("*.") {
            Some(suffix) => self.wildcard.entry(suffix.to_owned()),
            None => self.exact.entry(name.to_owned()),
        }
        .or_insert_with(|| Arc::clone(key));
    }

    fn pick(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let lower;
        let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = sni.to_ascii_lowercase();
            lower.as_str()
        } else {
            sni
        };
        self.exact.get(sni).or_else(|| {
            sni.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.pick(n))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// What a handshake established that later stages use.
#[derive(Debug, Default)]
pub struct Session {
    /// `x-client-cert-*` header lines of the verified client certificate, when the
    /// listener forwards them.
    pub client_cert_headers: Option<Box<[u8]>>,
    /// The listener forwards client certificates: a client's own `x-client-cert-*`
    /// headers are dropped.
    pub forwards_client_cert: bool,
}

impl Session {
    pub fn of(conn: &rustls::ServerConnection, spec: &ListenerTlsSpec) -> Self {
        let client_cert_headers = spec
            .forward_client_cert
            .then(|| conn.peer_certificates().and_then(|c| c.first()))
            .flatten()
            .and_then(|leaf| client_cert_headers(leaf));
        Self {
            client_cert_headers,
            forwards_client_cert: spec.forward_client_cert,
        }
    }
}

/// The verified client certificate as AWS's `clientCert` fields, in header lines.
fn client_cert_headers(leaf: &CertificateDer<'_>) -> Option<Box<[u8]>> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let mut out = String::new();
    let mut line = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        for ch in value.chars() {
            // Header values carry no control characters.
            if ch.is_control() {
                let _ = write!(out, "\\x{:02x}", ch as u32);
            } else {
                out.push(ch);
            }
        }
        out.push_str("\r\n");
    };
    line("x-client-cert-subject", &x.subject().to_string());
    line("x-client-cert-issuer", &x.issuer().to_string());
    line("x-client-cert-serial", &x.raw_serial_as_string());
    line(
        "x-client-cert-not-before",
        &openssl_time(x.validity().not_before.timestamp()),
    );
    line(
        "x-client-cert-not-after",
        &openssl_time(x.validity().not_after.timestamp()),
    );
    Some(out.into_bytes().into_boxed_slice())
}

/// `May 28 12:30:02 2019 GMT`: how AWS (and OpenSSL) write certificate validity.
fn openssl_time(unix: i64) -> String {
    let c = crate::clock::Civil::of(unix);
    format!(
        "{} {:2} {:02}:{:02}:{:02} {} GMT",
        c.month_name(),
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

/// An `https://` upstream: the client config (roots, optional client certificate)
/// and the name verified and sent as SNI.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTlsSpec {
    /// PEM CA bundle; the system's roots when absent.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Builds upstream client configs, one per distinct spec, and the system roots
/// once.
#[derive(Default)]
pub struct UpstreamTlsBuilder {
    built: HashMap<UpstreamTlsSpec, Arc<ClientConfig>>,
    system: Option<Arc<RootCertStore>>,
}

impl UpstreamTlsBuilder {
    pub fn build(&mut self, spec: &UpstreamTlsSpec) -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = self.built.get(spec) {
            return Ok(Arc::clone(c));
        }
        let roots = match &spec.ca {
            Some(ca) => Arc::new(load_roots(ca)?),
            None => Arc::clone(self.system_roots()?),
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(VERSIONS)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match &spec.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs(cert)?;
                let der = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.built.insert(spec.clone(), Arc::clone(&config));
        Ok(config)
    }

    fn system_roots(&mut self) -> Result<&Arc<RootCertStore>, String> {
        if self.system.is_none() {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates found{}; name a CA bundle with `tls.ca`",
                    found
                        .errors
                        .first()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
            }
            self.system = Some(Arc::new(roots));
        }
        Ok(self.system.as_ref().expect("set above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_time_format() {
        assert_eq!(openssl_time(1_559_046_602), "May 28 12:30:02 2019 GMT");
        assert_eq!(openssl_time(0), "Jan  1 00:00:00 1970 GMT");
    }
}
