//! HTTPS listeners, mutual TLS, TLS to upstreams and certificate rotation, over real
//! TLS sockets on loopback with certificates generated here (rcgen) and a client
//! (rustls) that is not the gateway's code path.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{read_message_head, read_response, Gateway, Response, Upstream, IO_TIMEOUT};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_RSA_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

const TOKEN: &str = "tls-test-admin-token-0123456789";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A scratch directory for one test's PEM files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(cn: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf_with(&self, names: &[&str], cn: &str, expired: bool, rsa: bool) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "Shardgate Tests");
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = if rsa {
            KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap()
        } else {
            KeyPair::generate().unwrap()
        };
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn leaf(&self, names: &[&str], cn: &str) -> Leaf {
        self.leaf_with(names, cn, false, false)
    }

    /// Writes the CA certificate as `DIR/NAME.pem`.
    fn write(&self, dir: &Path, name: &str) -> String {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path.display().to_string()
    }
}

impl Leaf {
    /// Writes `DIR/NAME.pem` and `DIR/NAME.key`; returns both paths.
    fn write(&self, dir: &Path, name: &str) -> (String, String) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.der.clone())],
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }
}

/// Accepts any server certificate: for tests that look at which one was served.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct ClientOpts<'a> {
    /// CA PEM the server must chain to; any certificate when `None`.
    trust: Option<&'a str>,
    cert: Option<&'a Leaf>,
    versions: &'a [&'static rustls::SupportedProtocolVersion],
}

impl Default for ClientOpts<'_> {
    fn default() -> Self {
        Self {
            trust: None,
            cert: None,
            versions: rustls::ALL_VERSIONS,
        }
    }
}

fn client_config(o: &ClientOpts<'_>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(o.versions)
        .unwrap();
    let b = match o.trust {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            b.with_root_certificates(roots)
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider()))),
    };
    let mut cfg = match o.cert {
        Some(leaf) => {
            let (chain, key) = leaf.chain_and_key();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A keep-alive HTTPS connection.
struct Tls {
    r: BufReader<rustls::StreamOwned<ClientConnection, TcpStream>>,
}

impl Tls {
    /// Connects and completes the handshake; `sni` is a host name, or an address
    /// (no SNI sent).
    fn connect(addr: SocketAddr, sni: &str, o: &ClientOpts<'_>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let conn = ClientConnection::new(client_config(o), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Self {
            r: BufReader::new(s),
        })
    }

    fn peer_cert(&self) -> Vec<u8> {
        self.r.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.r.get_ref().conn.protocol_version()
    }

    /// One request; `None` when no response came (the connection failed or closed).
    fn request(&mut self, path: &str, extra: &[(&str, &str)]) -> Option<Response> {
        let mut raw = format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\n");
        for (n, v) in extra {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let s = self.r.get_mut();
        s.write_all(raw.as_bytes()).ok()?;
        s.flush().ok()?;
        read_response(&mut self.r, false)
    }

    fn get(&mut self, path: &str) -> Option<Response> {
        self.request(path, &[])
    }
}

fn https_config(tls: &str, apis: &str) -> String {
    format!(
        "workers: 2\nlisteners:\n  - name: secure\n    bind: 127.0.0.1:0\n    tls:\n{tls}\napis:\n{apis}"
    )
}

fn mock_api() -> &'static str {
    "  - name: a
    routes:
      - route: GET /hello
        integration: { type: mock, body: hello }
    stages:
      - name: $default
"
}

fn proxy_api(upstream: &str) -> String {
    format!(
        "  - name: a
    routes:
      - route: GET /hello
        integration: {{ type: mock, body: hello }}
      - route: ANY /up/{{proxy+}}
        integration: {{ type: http_proxy, uri: \"{upstream}/{{proxy}}\" }}
    stages:
      - name: $default
"
    )
}

#[test]
fn sni_picks_the_certificate_exact_wildcard_named_and_default() {
    let dir = scratch("sni");
    let ca = Ca::new("Test CA");
    // The first certificate is RSA, the others ECDSA: both key types load.
    let a = ca.leaf_with(&["a.test"], "a", false, true);
    let b = ca.leaf(&["*.b.test"], "b");
    let c = ca.leaf(&["unrelated.test"], "c");
    let (ac, ak) = a.write(&dir, "a");
    let (bc, bk) = b.write(&dir, "b");
    let (cc, ck) = c.write(&dir, "c");
    let tls = format!(
        "      certificates:
        - {{ cert: {ac}, key: {ak} }}
        - {{ cert: {bc}, key: {bk} }}
        - {{ cert: {cc}, key: {ck}, names: [c.test, \"*.c.test\"] }}
"
    );
    let gw = Gateway::start(&https_config(&tls, mock_api()));
    let any = ClientOpts::default();
    let served = |sni: &str| Tls::connect(gw.addr, sni, &any).unwrap().peer_cert();
    assert_eq!(served("a.test"), a.der, "exact SAN");
    assert_eq!(served("A.TEST"), a.der, "names are case-insensitive");
    assert_eq!(served("x.b.test"), b.der, "wildcard SAN");
    assert_eq!(served("c.test"), c.der, "configured name");
    assert_eq!(served("deep.c.test"), c.der, "configured wildcard");
    assert_eq!(
        served("y.x.b.test"),
        a.der,
        "a wildcard covers one label only"
    );
    assert_eq!(
        served("b.test"),
        a.der,
        "a wildcard does not cover its parent"
    );
    assert_eq!(served("other.test"), a.der, "no match: the default");
    assert_eq!(served("127.0.0.1"), a.der, "no SNI: the default");

    // Verified for real, against the CA, and serving requests.
    let trusted = ClientOpts {
        trust: Some(&ca.pem),
        ..Default::default()
    };
    let mut conn = Tls::connect(gw.addr, "x.b.test", &trusted).unwrap();
    let r = conn.get("/hello").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let r = conn.get("/hello").unwrap();
    assert_eq!(r.status, 200, "keep-alive over TLS");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_versions_alpn_and_refusals() {
    let dir = scratch("versions");
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf(&["localhost"], "localhost");
    let (c, k) = leaf.write(&dir, "srv");
    let tls = format!("      certificates:\n        - {{ cert: {c}, key: {k} }}\n");
    let upstream = Upstream::echo();
    let gw = Gateway::start(&https_config(&tls, &proxy_api(&upstream.url())));

    for (versions, want) in [
        (
            &[&rustls::version::TLS12][..],
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            &[&rustls::version::TLS13][..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
    ] {
        let o = ClientOpts {
            trust: Some(&ca.pem),
            versions,
            ..Default::default()
        };
        let mut conn = Tls::connect(gw.addr, "localhost", &o).unwrap();
        assert_eq!(conn.version(), Some(want));
        assert_eq!(
            conn.r.get_ref().conn.alpn_protocol(),
            Some(&b"http/1.1"[..])
        );
        let r = conn.get("/up/x").unwrap();
        assert_eq!(r.status, 200);
    }
    // The upstream hears that the client used HTTPS.
    assert_eq!(upstream.last().header("x-forwarded-proto"), Some("https"));

    // A TLS 1.1 ClientHello gets an alert, not a handshake.
    let reply = common::raw_exchange(gw.addr, &tls11_client_hello());
    assert_eq!(reply.first(), Some(&0x15), "an alert record: {reply:02x?}");

    // Plain HTTP on the TLS port: refused without an HTTP answer, and a TLS
    // connection open meanwhile is not disturbed.
    let o = ClientOpts {
        trust: Some(&ca.pem),
        ..Default::default()
    };
    let mut open = Tls::connect(gw.addr, "localhost", &o).unwrap();
    let reply = common::raw_exchange(gw.addr, b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&reply).contains("HTTP/1."),
        "no plaintext answer: {reply:02x?}"
    );
    assert_eq!(open.get("/hello").unwrap().status, 200);
    // A client that offers only h2 is refused in the handshake.
    let mut h2 = (*client_config(&o)).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gw.addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = ClientConnection::new(Arc::new(h2), ServerName::try_from("localhost").unwrap());
    let mut s = rustls::StreamOwned::new(conn.unwrap(), tcp);
    assert!(s
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .and_then(|_| s.flush())
        .and_then(|_| s.read(&mut [0u8; 64]))
        .is_err());

    assert!(
        common::wait_until(Duration::from_secs(2), || {
            let log = gw.log();
            log.contains("TLS handshake failed")
                && log.contains("peer=127.0.0.1:")
                && log.contains("peer is incompatible")
        }),
        "{}",
        gw.log()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A ClientHello that offers only TLS 1.1 (0x0302) and two TLS 1.1 suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

struct MtlsSetup {
    dir: PathBuf,
    server_ca: Ca,
    client_ca: Ca,
    upstream: Upstream,
    gw: Gateway,
}

fn mtls(mode: &str, name: &str) -> MtlsSetup {
    let dir = scratch(name);
    let server_ca = Ca::new("Server CA");
    let client_ca = Ca::new("Client CA");
    let (c, k) = server_ca
        .leaf(&["localhost"], "localhost")
        .write(&dir, "srv");
    let trust = client_ca.write(&dir, "clients-ca");
    let tls = format!(
        "      certificates:\n        - {{ cert: {c}, key: {k} }}\n      client_auth: {{ truststore: {trust}, mode: {mode}, forward_headers: true }}\n"
    );
    let upstream = Upstream::echo();
    let gw = Gateway::start(&https_config(&tls, &proxy_api(&upstream.url())));
    MtlsSetup {
        dir,
        server_ca,
        client_ca,
        upstream,
        gw,
    }
}

impl MtlsSetup {
    /// A request with `cert`: the response, or `None` when TLS refused it.
    fn call(&self, cert: Option<&Leaf>) -> Option<Response> {
        let o = ClientOpts {
            trust: Some(&self.server_ca.pem),
            cert,
            ..Default::default()
        };
        // With TLS 1.3 the client's handshake ends before the server has checked
        // its certificate: a refusal shows on the first read.
        let mut conn = Tls::connect(self.gw.addr, "localhost", &o).ok()?;
        conn.request("/up/who", &[("x-client-cert-subject", "CN=forged")])
    }
}

#[test]
fn mutual_tls_required() {
    let s = mtls("required", "mtls-required");
    let good = s.client_ca.leaf(&["client-1.test"], "client-1");
    let r = s.call(Some(&good)).expect("a verified client is served");
    assert_eq!(r.status, 200);
    let seen = s.upstream.last();
    let subjects: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-client-cert-subject"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        subjects.len(),
        1,
        "the forged header is dropped: {subjects:?}"
    );
    assert!(subjects[0].contains("CN=client-1"), "{subjects:?}");
    assert!(seen
        .header("x-client-cert-issuer")
        .unwrap()
        .contains("CN=Client CA"));
    assert!(!seen.header("x-client-cert-serial").unwrap().is_empty());
    assert!(seen
        .header("x-client-cert-not-before")
        .unwrap()
        .ends_with(" GMT"));
    assert!(seen
        .header("x-client-cert-not-after")
        .unwrap()
        .contains("4096"));
    let served = s.upstream.seen().len();

    assert!(s.call(None).is_none(), "no client certificate");
    let stranger = Ca::new("Other CA").leaf(&["client-2.test"], "client-2");
    assert!(
        s.call(Some(&stranger)).is_none(),
        "a certificate of another CA"
    );
    let expired = s
        .client_ca
        .leaf_with(&["client-3.test"], "client-3", true, false);
    assert!(s.call(Some(&expired)).is_none(), "an expired certificate");
    let self_signed = {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["me.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    };
    assert!(
        s.call(Some(&self_signed)).is_none(),
        "a self-signed certificate"
    );
    assert_eq!(
        s.upstream.seen().len(),
        served,
        "no refused client got through"
    );
    // Still serving verified clients.
    assert_eq!(s.call(Some(&good)).unwrap().status, 200);
    assert!(
        common::wait_until(Duration::from_secs(2), || {
            let log = s.gw.log();
            log.contains("TLS handshake failed") && log.contains("certificate expired")
        }),
        "{}",
        s.gw.log()
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn mutual_tls_optional() {
    let s = mtls("optional", "mtls-optional");
    let r = s
        .call(None)
        .expect("a client without a certificate is served");
    assert_eq!(r.status, 200);
    let seen = s.upstream.last();
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| !n.to_ascii_lowercase().starts_with("x-client-cert-")),
        "no certificate, no x-client-cert headers, and the forged one dropped: {:?}",
        seen.headers
    );
    let good = s.client_ca.leaf(&["client-1.test"], "client-1");
    assert_eq!(s.call(Some(&good)).unwrap().status, 200);
    assert!(s
        .upstream
        .last()
        .header("x-client-cert-subject")
        .unwrap()
        .contains("CN=client-1"));
    let stranger = Ca::new("Other CA").leaf(&["client-2.test"], "client-2");
    assert!(
        s.call(Some(&stranger)).is_none(),
        "a certificate presented must verify"
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// An HTTPS upstream: answers `tls-upstream client=<CN or none> target=<target>`,
/// counting TCP connections.
struct TlsUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl TlsUpstream {
    fn start(leaf: &Leaf, client_ca: Option<&Ca>) -> Self {
        let (chain, key) = leaf.chain_and_key();
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                    .unwrap();
                b.with_client_cert_verifier(
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider(),
                    )
                    .build()
                    .unwrap(),
                )
            }
            None => b.with_no_client_auth(),
        };
        let cfg = Arc::new(b.with_single_cert(chain, key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let cfg = Arc::clone(&cfg);
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(IO_TIMEOUT));
                    let conn = rustls::ServerConnection::new(cfg).unwrap();
                    let mut r = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                    while let Some(head) = read_message_head(&mut r) {
                        let client = r
                            .get_ref()
                            .conn
                            .peer_certificates()
                            .and_then(|c| c.first().cloned())
                            .map(|c| {
                                let (_, x) = x509_parser::parse_x509_certificate(&c).unwrap();
                                x.subject().to_string()
                            })
                            .unwrap_or_else(|| "none".to_owned());
                        let target = head.start.split(' ').nth(1).unwrap_or("").to_owned();
                        let body = format!("tls-upstream client={client} target={target}");
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let s = r.get_mut();
                        if s.write_all(reply.as_bytes())
                            .and_then(|_| s.flush())
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }
}

#[test]
fn https_upstream_with_private_ca_sni_and_client_certificate() {
    let dir = scratch("upstream");
    let up_ca = Ca::new("Upstream CA");
    let gw_ca = Ca::new("Gateway Client CA");
    let up = TlsUpstream::start(&up_ca.leaf(&["backend.internal"], "backend"), Some(&gw_ca));
    let plain_up = TlsUpstream::start(&up_ca.leaf(&["localhost"], "localhost"), None);
    let ca_path = up_ca.write(&dir, "upstream-ca");
    let other_ca = Ca::new("Other CA").write(&dir, "other-ca");
    let (gc, gk) = gw_ca
        .leaf(&["gateway.test"], "gateway")
        .write(&dir, "gw-client");
    let port = up.addr.port();
    let yaml = format!(
        "workers: 1
listeners:
  - name: plain
    bind: 127.0.0.1:0
apis:
  - name: a
    routes:
      - route: GET /mtls/{{p}}
        integration:
          type: http_proxy
          uri: https://127.0.0.1:{port}/m/{{p}}
          tls: {{ ca: {ca_path}, server_name: backend.internal, client_cert: {{ cert: {gc}, key: {gk} }} }}
      - route: GET /named
        integration: {{ type: http_proxy, uri: \"https://localhost:{}/n\", tls: {{ ca: {ca_path} }} }}
      - route: GET /nocert
        integration: {{ type: http_proxy, uri: \"https://127.0.0.1:{port}/x\", tls: {{ ca: {ca_path}, server_name: backend.internal }} }}
      - route: GET /wrongca
        integration: {{ type: http_proxy, uri: \"https://localhost:{}/w\", tls: {{ ca: {other_ca} }} }}
      - route: GET /wrongname
        integration: {{ type: http_proxy, uri: \"https://127.0.0.1:{port}/x\", tls: {{ ca: {ca_path} }} }}
    stages:
      - name: $default
",
        plain_up.addr.port(),
        plain_up.addr.port()
    );
    let gw = Gateway::start(&yaml);
    let mut c = common::Client::connect(gw.addr);
    for i in 0..3 {
        let r = c.get(&format!("/mtls/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.text(),
            format!("tls-upstream client=CN=gateway, O=Shardgate Tests target=/m/{i}")
        );
    }
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "pooled like plain connections"
    );
    let r = c.get("/named");
    assert_eq!(
        (r.status, r.text()),
        (200, "tls-upstream client=none target=/n".to_owned())
    );
    // Refused by the upstream (no client certificate), by us (unknown CA, wrong name).
    for path in ["/nocert", "/wrongca", "/wrongname"] {
        let r = common::get(gw.addr, path);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(r.text(), r#"{"message":"Bad Gateway"}"#);
    }
    // The log is read from the gateway's stderr by another thread: wait for it.
    assert!(
        common::wait_until(Duration::from_secs(2), || gw
            .log()
            .contains("TLS handshake with integration failed")),
        "{}",
        gw.log()
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn admin_call(gw: &Gateway, method: &str, path: &str) -> Response {
    let mut c = common::Client::connect(gw.admin.expect("admin listener"));
    let auth = format!("Bearer {TOKEN}");
    c.request(method, path, "admin.test", &[("authorization", &auth)], b"")
}

#[test]
fn certificates_rotate_on_sighup_and_through_the_api_without_dropping_connections() {
    let dir = scratch("rotate");
    let ca = Ca::new("Test CA");
    let v1 = ca.leaf(&["localhost"], "v1");
    let (c, k) = v1.write(&dir, "live");
    let tls = format!("      certificates:\n        - {{ cert: {c}, key: {k} }}\n");
    let yaml = https_config(&tls, mock_api())
        + "admin: { bind: \"127.0.0.1:0\", token: { env: SG_TLS_ADMIN } }\n";
    let gw = Gateway::start_env(&yaml, &[], &[("SG_TLS_ADMIN", TOKEN)]);
    let o = ClientOpts {
        trust: Some(&ca.pem),
        ..Default::default()
    };
    let served = || Tls::connect(gw.addr, "localhost", &o).unwrap().peer_cert();
    let mut open = Tls::connect(gw.addr, "localhost", &o).unwrap();
    assert_eq!(open.get("/hello").unwrap().status, 200);
    assert_eq!(open.peer_cert(), v1.der);

    // SIGHUP.
    let v2 = ca.leaf(&["localhost"], "v2");
    v2.write(&dir, "live");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(
        common::wait_until(Duration::from_secs(3), || served() == v2.der),
        "new connections get the new certificate"
    );
    assert_eq!(
        open.get("/hello").unwrap().status,
        200,
        "the open connection stays"
    );

    // A broken key: refused, the running certificate stays.
    std::fs::write(dir.join("live.key"), "not a key").unwrap();
    let r = admin_call(&gw, "POST", "/tls/reload");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("secure"), "{}", r.text());
    assert_eq!(served(), v2.der);

    // The management API.
    let v3 = ca.leaf(&["localhost"], "v3");
    v3.write(&dir, "live");
    let r = admin_call(&gw, "POST", "/tls/reload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("localhost"), "{}", r.text());
    assert_eq!(served(), v3.der);
    assert_eq!(open.get("/hello").unwrap().status, 200, "still open");
    assert_eq!(
        open.peer_cert(),
        v1.der,
        "with the certificate it began with"
    );
    // A config reload (`POST /admin/reload`) takes the files as they are too.
    let v4 = ca.leaf(&["localhost"], "v4");
    v4.write(&dir, "live");
    let r = admin_call(&gw, "POST", "/admin/reload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(served(), v4.der);
    assert_eq!(open.get("/hello").unwrap().status, 200, "still open");
    let r = admin_call(&gw, "GET", "/tls");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"listener\":\"secure\""), "{}", r.text());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_config_errors_are_reported() {
    let dir = scratch("errors");
    let ca = Ca::new("Test CA");
    let (c, _) = ca.leaf(&["a.test"], "a").write(&dir, "a");
    let (_, other_key) = ca.leaf(&["b.test"], "b").write(&dir, "b");
    let missing = dir.join("missing.pem").display().to_string();
    let yaml = format!(
        "listeners:
  - name: one
    bind: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: {c}, key: {other_key} }}
        - {{ cert: {missing}, key: {other_key}, names: [\"bad name!\"] }}
  - name: two
    bind: 127.0.0.1:0
    tls:
      certificates: [ {{ cert: {c}, key: {other_key} }} ]
      client_auth: {{ truststore: {c}, mode: sometimes }}
apis:
  - name: a
    routes:
      - route: GET /x
        integration: {{ type: http_proxy, uri: \"http://127.0.0.1:9/x\", tls: {{ ca: {c} }} }}
      - route: GET /y
        integration: {{ type: http_proxy, uri: \"https://127.0.0.1:9/y\", tls: {{ ca: {missing} }} }}
    stages:
      - name: $default
"
    );
    let (code, out) = common::validate(&yaml);
    assert_eq!(code, 1, "{out}");
    for want in [
        "listeners[0].tls.certificates[1].names[0]",
        "listeners[1].tls.client_auth.mode",
        "apis[0].routes[0].integration.tls: only for https:// URIs",
        "apis[0].routes[1].integration.tls",
        "missing.pem",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // A key that is not the certificate's.
    let yaml = format!(
        "listeners:\n  - name: one\n    bind: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: {c}, key: {other_key} }}\napis: []\n"
    );
    let (code, out) = common::validate(&yaml);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not match the certificate"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn large_bodies_pipelining_and_cache_over_tls_on_both_drivers() {
    let dir = scratch("bodies");
    let ca = Ca::new("Test CA");
    let (c, k) = ca.leaf(&["localhost"], "localhost").write(&dir, "srv");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let reply = big.clone();
    let upstream = Upstream::start(move |s| {
        if s.target.starts_with("/big") {
            common::Reply::ok(reply.clone())
        } else {
            common::Reply::ok(format!("{} {} body={}", s.method, s.target, s.body.len()))
        }
    });
    let tls = format!("      certificates:\n        - {{ cert: {c}, key: {k} }}\n");
    let apis = format!(
        "  - name: a
    routes:
      - route: ANY /up/{{proxy+}}
        integration: {{ type: http_proxy, uri: \"{}/{{proxy}}\" }}
      - route: GET /cached
        integration: {{ type: http_proxy, uri: \"{}/cached\" }}
    stages:
      - name: $default
        cache: {{ capacity_mb: 4, ttl_s: 60 }}
        routes:
          \"GET /cached\": {{ cache: {{ ttl_s: 60 }} }}
",
        upstream.url(),
        upstream.url()
    );
    let o = ClientOpts {
        trust: Some(&ca.pem),
        ..Default::default()
    };
    for runtime in ["epoll", "io_uring"] {
        let gw = Gateway::start_with(&https_config(&tls, &apis), &["--runtime", runtime]);
        let mut conn = Tls::connect(gw.addr, "localhost", &o).unwrap();
        // A 1.5 MB response, then a 1 MB upload (chunked), on one connection.
        let r = conn.get("/up/big").unwrap();
        assert_eq!(r.status, 200);
        assert!(
            r.body == big,
            "{runtime}: the large response arrives intact"
        );
        let mut req =
            b"POST /up/upload HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for chunk in big[..1_000_000].chunks(100_000) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        conn.r.get_mut().write_all(&req).unwrap();
        let r = read_response(&mut conn.r, false).unwrap();
        assert_eq!(r.text(), "POST /upload body=1000000", "{runtime}");
        // Three pipelined requests in one TLS record.
        let three = b"GET /up/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /up/2 HTTP/1.1\r\nhost: a\r\n\r\nGET /up/3 HTTP/1.1\r\nhost: a\r\n\r\n";
        conn.r.get_mut().write_all(three).unwrap();
        for i in 1..=3 {
            let r = read_response(&mut conn.r, false).unwrap();
            assert_eq!(r.text(), format!("GET /{i} body=0"), "{runtime}");
        }
        // A cache fill, then a hit served from the worker's cache over TLS.
        let first = conn.get("/cached").unwrap();
        let mut hit = None;
        for _ in 0..4 {
            let mut fresh = Tls::connect(gw.addr, "localhost", &o).unwrap();
            let r = fresh.get("/cached").unwrap();
            if r.header("x-cache").is_some_and(|v| v.starts_with("Hit")) {
                hit = Some(r);
                break;
            }
        }
        let hit =
            hit.unwrap_or_else(|| panic!("{runtime}: no cache hit; first: {:?}", first.headers));
        assert_eq!(hit.text(), first.text());
    }
    let _ = std::fs::remove_dir_all(dir);
}
