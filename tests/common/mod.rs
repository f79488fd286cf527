//! Test support: the gateway as a child process on an ephemeral port, real upstream
//! servers on loopback, and a small independent HTTP/1.1 client. Everything is bounded
//! in time and cleaned up on drop.

// Tests and the control plane may share state under a mutex; the request path may not (clippy.toml).
#![allow(clippy::disallowed_types)]
#![allow(dead_code)]

pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Every socket read in the tests gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the config has `admin:`.
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
    config_path: std::path::PathBuf,
}

fn unique(name: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "shardgate-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shardgate")
}

/// Runs `shardgate validate` on `path` with extra environment variables: the exit
/// code and what it printed.
pub fn validate_file(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(bin())
        .arg("validate")
        .arg("--config")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("run shardgate validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `validate_file` on `yaml`, written to a temporary file.
pub fn validate(yaml: &str) -> (i32, String) {
    let path = write_config(yaml);
    let result = validate_file(&path, &[]);
    let _ = std::fs::remove_file(&path);
    result
}

/// Writes `yaml` to a temporary file and returns its path.
pub fn write_config(yaml: &str) -> std::path::PathBuf {
    let path = unique("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

impl Gateway {
    /// Starts `shardgate run` on `yaml` (whose listener should bind 127.0.0.1:0) and
    /// waits for its listening line.
    pub fn start(yaml: &str) -> Self {
        Self::start_with(yaml, &[])
    }

    pub fn start_with(yaml: &str, args: &[&str]) -> Self {
        Self::start_env(yaml, args, &[])
    }

    /// `start_with`, with extra environment variables for the gateway.
    pub fn start_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(yaml, args, env, true)
    }

    /// `start_env`, naming the config file in `SHARDGATE_CONFIG` instead of
    /// `--config`.
    pub fn start_config_env(yaml: &str) -> Self {
        Self::spawn(yaml, &[], &[], false)
    }

    fn spawn(yaml: &str, args: &[&str], env: &[(&str, &str)], flag: bool) -> Self {
        let config_path = write_config(yaml);
        let mut cmd = Command::new(bin());
        cmd.arg("run");
        if flag {
            cmd.arg("--config").arg(&config_path);
        } else {
            cmd.env("SHARDGATE_CONFIG", &config_path);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env("SHARDGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("addr=") {
                    let addr: String = line[i + 5..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    if let (Some(t), Ok(a)) = (tx.as_ref(), addr.parse::<SocketAddr>()) {
                        let _ = t.send(a);
                        tx = None;
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gateway did not start; log:\n{}", log.lock().unwrap());
            }
        };
        // All workers register their listeners right after the line; give them a moment.
        wait_until(Duration::from_secs(5), || {
            log.lock().unwrap().matches("worker started").count() >= 1
        });
        let admin = log
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains("admin listening"))
            .and_then(|l| l.split("admin=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        Self {
            child,
            addr,
            admin,
            log,
            config_path,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `kill -9`: no drain, no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Waits for exit, bounded; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Replaces the config file the gateway runs (written aside, then renamed, so
    /// a watcher never reads half of it).
    pub fn rewrite(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("replace config");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The first value of header `name` (case-insensitive).
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request as the upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Which accepted connection (0-based) carried it.
    pub conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub delay: Duration,
    /// Close the connection after this reply.
    pub close: bool,
}

impl Reply {
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.into(),
            chunked: false,
            delay: Duration::ZERO,
            close: false,
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A real HTTP/1.1 server on loopback, written independently of the gateway's codec.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_idle(IO_TIMEOUT, handler)
    }

    /// Closes a connection after `idle` without a request (`start`: `IO_TIMEOUT`).
    pub fn start_idle(
        idle: Duration,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (c2, s2) = (Arc::clone(&connections), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let conn = c2.fetch_add(1, Ordering::SeqCst);
                let (h, s) = (Arc::clone(&handler), Arc::clone(&s2));
                std::thread::spawn(move || serve_upstream(stream, conn, idle, h, s));
            }
        });
        Self {
            addr,
            connections,
            seen,
        }
    }

    /// Echoes what it received as a small text body: method, target, body length.
    pub fn echo() -> Self {
        Self::start(|s| Reply::ok(format!("{} {} body={}", s.method, s.target, s.body.len())))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

fn serve_upstream(
    stream: TcpStream,
    conn: usize,
    idle: Duration,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    stream.set_read_timeout(Some(idle)).ok();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let Some(mut req) = read_message_head(&mut reader) else {
            return;
        };
        let (method, target) = {
            let mut parts = req.start.split(' ');
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        };
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            match read_chunked(&mut reader) {
                Some(b) => b,
                None => return,
            }
        } else {
            let n: usize = req
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut b = vec![0; n];
            if reader.read_exact(&mut b).is_err() {
                return;
            }
            b
        };
        let s = Seen {
            method: method.clone(),
            target,
            headers: std::mem::take(&mut req.headers),
            body,
            chunked,
            conn,
        };
        seen.lock().unwrap().push(s.clone());
        let reply = handler(&s);
        std::thread::sleep(reply.delay);
        let mut out = format!("HTTP/1.1 {} X\r\n", reply.status).into_bytes();
        for (n, v) in &reply.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if reply.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        let bodyless = method == "HEAD" || reply.status == 204 || reply.status == 304;
        if reply.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            if !bodyless {
                for piece in reply.body.chunks(7000) {
                    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            if reply.status != 204 {
                out.extend_from_slice(
                    format!("content-length: {}\r\n", reply.body.len()).as_bytes(),
                );
            }
            out.extend_from_slice(b"\r\n");
            if !bodyless {
                out.extend_from_slice(&reply.body);
            }
        }
        if writer.write_all(&out).is_err() || reply.close {
            return;
        }
    }
}

/// A message head read line by line.
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

pub fn read_message_head(r: &mut impl BufRead) -> Option<Head> {
    let mut start = String::new();
    if r.read_line(&mut start).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    Some(Head {
        start: start.trim_end().to_owned(),
        headers,
    })
}

pub fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim_end().split(';').next()?, 16).ok()?;
        if size == 0 {
            // Trailers until the blank line.
            loop {
                let mut t = String::new();
                r.read_line(&mut t).ok()?;
                if t == "\r\n" || t.is_empty() {
                    return Some(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).ok()?;
        if &crlf != b"\r\n" {
            return None;
        }
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive client connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect to gateway");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.writer.write_all(raw).expect("write request");
    }

    /// Sends `METHOD path` with Host `host` and the given extra header lines and body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (n, v) in extra {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            raw.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_response(method == "HEAD").expect("a response")
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, "gw.test", &[], b"")
    }

    pub fn read_response(&mut self, head_request: bool) -> Option<Response> {
        read_response(&mut self.reader, head_request)
    }

    /// True when the server closed the connection (EOF) within the timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
            || matches!(self.reader.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Reads one response (skipping `100 Continue`) from any buffered stream.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> Option<Response> {
    loop {
        let head = read_message_head(r)?;
        let status: u16 = head.start.split(' ').nth(1)?.parse().ok()?;
        if status == 100 {
            continue;
        }
        let body = if head_request || status == 204 || status == 304 {
            Vec::new()
        } else if head
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            read_chunked(r)?
        } else if let Some(n) = head.header("content-length") {
            let mut b = vec![0; n.parse().ok()?];
            r.read_exact(&mut b).ok()?;
            b
        } else {
            let mut b = Vec::new();
            r.read_to_end(&mut b).ok()?;
            b
        };
        return Some(Response {
            status,
            headers: head.headers,
            body,
        });
    }
}

/// One request on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

/// Sends raw bytes, returns everything the gateway wrote until it closed.
pub fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading from the gateway: {e} (got {:?})",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

/// A config with one listener on an ephemeral loopback port and the given APIs/extra.
pub fn config(body: &str) -> String {
    format!("workers: 2\nlisteners:\n  - name: test\n    bind: 127.0.0.1:0\n{body}")
}

pub fn headers_map(r: &Response) -> HashMap<String, String> {
    r.headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Today (UTC) as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    shardgate::clock::format_date(days)
}

/// A CA and a certificate it signed for `names` (DNS names or IP addresses),
/// written into `dir` as `ca.pem`, `leaf.pem` and `leaf.key`; their paths.
pub fn test_ca(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "shardgate test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_pem = leaf.signed_by(&leaf_key, &issuer).unwrap().pem();
    let (ca_path, cert, key) = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    std::fs::write(&ca_path, ca_pem).unwrap();
    std::fs::write(&cert, leaf_pem).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_path, cert, key)
}

/// Runs a helper script and reads the one JSON document it prints (its stderr
/// shown when it fails).
pub fn json_output(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("run the helper");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The botocore-verified Lambda Invoke API (tests/support/lambda_invoke_server.py:
/// key AKIDTEST, secret `secret/key+1`, eu-west-1) on a free port: the process
/// and its port.
pub fn lambda_invoke_server() -> (Proc, u16) {
    let mut srv = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/lambda_invoke_server.py"
        ))
        .args(["AKIDTEST", "secret/key+1", "eu-west-1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with botocore");
    let mut line = String::new();
    BufReader::new(srv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let srv = Proc(srv);
    (srv, line.trim().parse().expect("the server's port"))
}
