//! Access logs: one line per request per stage, in AWS's `$context` variables.
//!
//! Off the request path: each worker formats lines into its own buffer per sink
//! and hands full buffers (and, every tick, partial ones) to one writer thread
//! through a bounded channel. When the writer falls behind (a slow disk, a pipe
//! nobody reads), batches are dropped and counted (`shardgate_access_log_dropped_total`),
//! never the request. SIGUSR1 reopens the files (logrotate).

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
#[allow(clippy::disallowed_types)]
// Not on the request path: the writer thread takes the receiver once, at start.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// A sink's index and lines for it.
type Batch = (usize, Vec<u8>);

/// A worker hands its buffer over once it holds this much.
pub const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued for the writer at most (over all workers).
const QUEUE: usize = 16;

/// A `$context` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    RequestId,
    ExtendedRequestId,
    SourceIp,
    UserAgent,
    RequestTime,
    RequestTimeEpoch,
    HttpMethod,
    Path,
    RouteKey,
    Stage,
    ApiId,
    DomainName,
    Protocol,
    Status,
    ResponseLength,
    IntegrationLatency,
    ResponseLatency,
    IntegrationStatus,
    /// Tries after the first on another target of an upstream group.
    IntegrationRetries,
    ErrorMessage,
    ApiKeyId,
    TraceId,
    /// `$context.authorizer.claims.NAME` (JWT).
    Claim(Box<str>),
    /// `$context.authorizer.NAME` (a request authorizer's context).
    Authorizer(Box<str>),
    /// WebSocket APIs: the connection, the event (CONNECT, MESSAGE,
    /// DISCONNECT), the message.
    ConnectionId,
    EventType,
    MessageId,
    /// `true` for a request the stage's canary served; `false` for the others
    /// (absent from `json` lines of stages without a canary).
    IsCanaryRequest,
}

impl Var {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "requestId" => Self::RequestId,
            "extendedRequestId" => Self::ExtendedRequestId,
            "identity.sourceIp" => Self::SourceIp,
            "identity.userAgent" => Self::UserAgent,
            "requestTime" => Self::RequestTime,
            "requestTimeEpoch" => Self::RequestTimeEpoch,
            "httpMethod" => Self::HttpMethod,
            "path" => Self::Path,
            "routeKey" => Self::RouteKey,
            "stage" => Self::Stage,
            "apiId" => Self::ApiId,
            "domainName" => Self::DomainName,
            "protocol" => Self::Protocol,
            "status" => Self::Status,
            "responseLength" => Self::ResponseLength,
            "integrationLatency" | "integration.latency" => Self::IntegrationLatency,
            "responseLatency" => Self::ResponseLatency,
            "integrationStatus" | "integration.status" => Self::IntegrationStatus,
            "integration.retries" => Self::IntegrationRetries,
            "error.message" | "error.messageString" => Self::ErrorMessage,
            "identity.apiKeyId" | "identity.apiKey" => Self::ApiKeyId,
            "traceId" | "xrayTraceId" => Self::TraceId,
            "connectionId" => Self::ConnectionId,
            "eventType" => Self::EventType,
            "messageId" => Self::MessageId,
            "isCanaryRequest" => Self::IsCanaryRequest,
            other => {
                if let Some(c) = other.strip_prefix("authorizer.claims.") {
                    Self::Claim(c.into())
                } else if let Some(k) = other.strip_prefix("authorizer.") {
                    Self::Authorizer(k.into())
                } else {
                    return None;
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Box<str>),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, AWS's default fields and more.
    Json,
    Template(Box<[Part]>),
}

/// AWS's CLF example.
const CLF: &str = "$context.identity.sourceIp - - [$context.requestTime] \"$context.httpMethod $context.path $context.protocol\" $context.status $context.responseLength $context.requestId";
const CSV: &str = "$context.identity.sourceIp,$context.requestTime,$context.httpMethod,$context.routeKey,$context.protocol,$context.status,$context.responseLength,$context.requestId";

/// The fields of the `json` format, in order.
const JSON_FIELDS: [(&str, Var); 19] = [
    ("requestId", Var::RequestId),
    ("ip", Var::SourceIp),
    ("requestTime", Var::RequestTime),
    ("httpMethod", Var::HttpMethod),
    ("path", Var::Path),
    ("routeKey", Var::RouteKey),
    ("stage", Var::Stage),
    ("status", Var::Status),
    ("protocol", Var::Protocol),
    ("responseLength", Var::ResponseLength),
    ("integrationLatency", Var::IntegrationLatency),
    ("responseLatency", Var::ResponseLatency),
    ("traceId", Var::TraceId),
    ("errorMessage", Var::ErrorMessage),
    ("integrationRetries", Var::IntegrationRetries),
    ("connectionId", Var::ConnectionId),
    ("eventType", Var::EventType),
    ("messageId", Var::MessageId),
    ("isCanaryRequest", Var::IsCanaryRequest),
];

impl Format {
    /// `json`, `clf`, `csv`, or a template of `$context` variables.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "json" => return Ok(Self::Json),
            "clf" => return Self::parse(CLF),
            "csv" => return Self::parse(CSV),
            _ => {}
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("$context.") {
            if at > 0 {
                parts.push(Part::Lit(rest[..at].into()));
            }
            let after = &rest[at + "$context.".len()..];
            let name = crate::encode::var_name(after);
            let var =
                Var::parse(name).ok_or_else(|| format!("unknown variable $context.{name}"))?;
            parts.push(Part::Var(var));
            rest = &after[name.len()..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.into()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
            return Err("a format is json, clf, csv or a template with $context variables".into());
        }
        Ok(Self::Template(parts.into()))
    }
}

/// A stage's access log.
#[derive(Debug, Clone)]
pub struct LogSpec {
    pub sink: usize,
    pub format: Format,
}

impl Format {
    fn names(&self, want: &Var) -> bool {
        match self {
            Self::Json => JSON_FIELDS.iter().any(|(_, v)| v == want),
            Self::Template(parts) => parts.iter().any(|p| matches!(p, Part::Var(v) if v == want)),
        }
    }

    /// The line needs the `Host` header.
    pub fn needs_host(&self) -> bool {
        self.names(&Var::DomainName)
    }

    /// The line needs the `User-Agent` header.
    pub fn needs_user_agent(&self) -> bool {
        self.names(&Var::UserAgent)
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// What a WebSocket API's line adds.
#[derive(Debug, Clone)]
pub struct WsFacts {
    pub connection_id: Box<str>,
    pub event_type: &'static str,
    pub message_id: Option<Box<str>>,
}

/// What a request's line needs besides what the plan knows.
#[derive(Debug, Clone)]
pub struct Facts {
    pub request_id: crate::ids::RequestId,
    pub stage: usize,
    pub time_ms: u64,
    /// `requestTime`, formatted once per second per worker.
    pub time_text: [u8; CLF_TIME_LEN],
    pub method: std::borrow::Cow<'static, str>,
    pub path: Box<str>,
    pub http10: bool,
    /// Empty unless the format names `$context.domainName`.
    pub host: Box<str>,
    pub source_ip: IpAddr,
    /// Empty unless the format names `$context.identity.userAgent`.
    pub user_agent: Box<str>,
    /// 32 hex digits, or none.
    pub trace_id: Option<[u8; 32]>,
    pub api_key_id: Option<Arc<str>>,
    pub claims: Option<Rc<crate::policy::jwt::Verified>>,
    pub context: Option<Rc<crate::policy::request::Decision>>,
    /// WebSocket APIs' events.
    pub ws: Option<Box<WsFacts>>,
}

/// What the response was.
pub struct Response<'a> {
    pub route_key: &'a str,
    pub api: &'a str,
    pub stage: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub integration_us: Option<u64>,
    pub latency_us: u64,
    pub error: Option<&'a str>,
    pub retries: u8,
    /// The stage has a canary: whether it served this request.
    pub canary: Option<bool>,
}

/// `24/Nov/2026:09:22:00 +0000`.
pub const CLF_TIME_LEN: usize = 26;

/// A worker's `requestTime` of the current second.
#[derive(Debug, Default)]
pub struct TimeCache {
    secs: u64,
    text: [u8; CLF_TIME_LEN],
}

impl TimeCache {
    pub fn text(&mut self, unix_s: u64) -> [u8; CLF_TIME_LEN] {
        if unix_s != self.secs || self.text[0] == 0 {
            let mut v = Vec::with_capacity(CLF_TIME_LEN);
            clf_time(&mut v, unix_s);
            let n = v.len().min(CLF_TIME_LEN);
            self.text = [b' '; CLF_TIME_LEN];
            self.text[..n].copy_from_slice(&v[..n]);
            self.secs = unix_s;
        }
        self.text
    }
}

/// AWS's `requestTime`: `24/Nov/2026:09:22:00 +0000`.
pub fn clf_time(out: &mut Vec<u8>, unix_s: u64) {
    let c = crate::clock::Civil::of(unix_s as i64);
    let _ = write!(
        out,
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        c.day,
        c.month_name(),
        c.year,
        c.hour,
        c.minute,
        c.second
    );
}

/// Appends `v` with JSON string escaping (quotes, backslashes, control characters).
fn escaped(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
}

/// Writes one variable's value (escaped); `false` when it has none.
fn value(out: &mut Vec<u8>, var: &Var, f: &Facts, r: &Response<'_>) -> bool {
    let mut num = itoa::Buffer::new();
    match var {
        Var::RequestId | Var::ExtendedRequestId => out.extend_from_slice(&f.request_id),
        Var::ConnectionId | Var::EventType | Var::MessageId => {
            let Some(w) = &f.ws else { return false };
            let v = match var {
                Var::ConnectionId => &*w.connection_id,
                Var::EventType => w.event_type,
                _ => match &w.message_id {
                    Some(m) => m,
                    None => return false,
                },
            };
            escaped(out, v.as_bytes());
        }
        Var::IsCanaryRequest => match r.canary {
            Some(c) => out.extend_from_slice(if c { b"true" } else { b"false" }),
            None => return false,
        },
        Var::SourceIp => crate::encode::write_ip(out, f.source_ip),
        Var::UserAgent => escaped(out, f.user_agent.as_bytes()),
        Var::RequestTime => out.extend_from_slice(&f.time_text),
        Var::RequestTimeEpoch => out.extend_from_slice(num.format(f.time_ms).as_bytes()),
        Var::HttpMethod => escaped(out, f.method.as_bytes()),
        Var::Path => escaped(out, f.path.as_bytes()),
        Var::RouteKey => escaped(out, r.route_key.as_bytes()),
        Var::Stage => escaped(out, r.stage.as_bytes()),
        Var::ApiId => escaped(out, r.api.as_bytes()),
        Var::DomainName => escaped(out, f.host.as_bytes()),
        Var::Protocol => out.extend_from_slice(if f.http10 { b"HTTP/1.0" } else { b"HTTP/1.1" }),
        Var::Status => out.extend_from_slice(num.format(r.status).as_bytes()),
        Var::ResponseLength => out.extend_from_slice(num.format(r.bytes).as_bytes()),
        Var::IntegrationLatency => match r.integration_us {
            Some(us) => out.extend_from_slice(num.format(us / 1000).as_bytes()),
            None => return false,
        },
        Var::IntegrationStatus => match r.integration_us {
            Some(_) => out.extend_from_slice(num.format(r.status).as_bytes()),
            None => return false,
        },
        Var::ResponseLatency => out.extend_from_slice(num.format(r.latency_us / 1000).as_bytes()),
        // Only when there were some (the JSON line leaves the field out).
        Var::IntegrationRetries => match r.retries {
            0 => return false,
            n => out.extend_from_slice(num.format(n).as_bytes()),
        },
        Var::ErrorMessage => match r.error {
            Some(e) => escaped(out, e.as_bytes()),
            None => return false,
        },
        Var::ApiKeyId => match &f.api_key_id {
            Some(k) => escaped(out, k.as_bytes()),
            None => return false,
        },
        Var::TraceId => match &f.trace_id {
            Some(t) => out.extend_from_slice(t),
            None => return false,
        },
        Var::Claim(name) => match f.claims.as_ref().and_then(|c| c.claims.get(&**name)) {
            Some(v) => json_value(out, v),
            None => return false,
        },
        Var::Authorizer(name) => match f.context.as_ref().and_then(|d| d.context.get(&**name)) {
            Some(v) => json_value(out, v),
            None => return false,
        },
    }
    true
}

fn json_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => escaped(out, s.as_bytes()),
        other => escaped(out, other.to_string().as_bytes()),
    }
}

/// Appends one line (with its newline).
pub fn format_line(out: &mut Vec<u8>, format: &Format, f: &Facts, r: &Response<'_>) {
    match format {
        Format::Json => {
            out.push(b'{');
            let mut first = true;
            for (key, var) in &JSON_FIELDS {
                let mark = out.len();
                if !first {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                let numeric = matches!(
                    var,
                    Var::Status
                        | Var::ResponseLength
                        | Var::IntegrationLatency
                        | Var::ResponseLatency
                        | Var::IntegrationRetries
                        | Var::IsCanaryRequest
                );
                if !numeric {
                    out.push(b'"');
                }
                if value(out, var, f, r) {
                    if !numeric {
                        out.push(b'"');
                    }
                    first = false;
                } else {
                    out.truncate(mark);
                }
            }
            out.extend_from_slice(b"}\n");
        }
        Format::Template(parts) => {
            for p in parts.iter() {
                match p {
                    Part::Lit(l) => out.extend_from_slice(l.as_bytes()),
                    Part::Var(Var::IsCanaryRequest) if r.canary.is_none() => {
                        out.extend_from_slice(b"false");
                    }
                    Part::Var(v) => {
                        if !value(out, v, f, r) {
                            out.push(b'-');
                        }
                    }
                }
            }
            out.push(b'\n');
        }
    }
}

/// The sinks and the writer thread's channel.
#[derive(Debug)]
pub struct Logs {
    pub targets: Vec<Target>,
    tx: Sender<Batch>,
    #[allow(clippy::disallowed_types)]
    // Not on the request path: the writer thread takes the receiver once, at start.
    rx: Mutex<Option<Receiver<Batch>>>,
    /// Written buffers come back for reuse (a fresh 64 KiB buffer costs page faults).
    spare_tx: Sender<Vec<u8>>,
    spare_rx: Receiver<Vec<u8>>,
    reopen: Arc<AtomicBool>,
}

impl Default for Logs {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(QUEUE * 2);
        Self {
            targets: Vec::new(),
            tx,
            #[allow(clippy::disallowed_types)] // Not on the request path: the writer thread takes the receiver once, at start.
            rx: Mutex::new(Some(rx)),
            spare_tx,
            spare_rx,
            reopen: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Logs {
    /// The sink for `target`, added if new.
    pub fn sink(&mut self, target: Target) -> usize {
        match self.targets.iter().position(|t| *t == target) {
            Some(i) => i,
            None => {
                self.targets.push(target);
                self.targets.len() - 1
            }
        }
    }

    /// An empty buffer for the next batch: a written one if any came back.
    pub fn spare(&self) -> Vec<u8> {
        self.spare_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES + 4096))
    }

    /// Hands a batch to the writer; `false` (dropped) when its queue is full.
    pub fn send(&self, sink: usize, batch: Vec<u8>) -> bool {
        match self.tx.try_send((sink, batch)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// At exit: waits (at most `within`) for the writer to take what is queued.
    pub fn drain(&self, within: Duration) {
        if self.targets.is_empty() {
            return;
        }
        let until = std::time::Instant::now() + within;
        while !self.tx.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The last batch taken is being written and flushed.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// SIGUSR1: the writer reopens its files before its next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Starts the writer thread (once), if any stage logs.
    pub fn start(&self) {
        if self.targets.is_empty() {
            return;
        }
        let Some(rx) = crate::lock(&self.rx).take() else {
            return;
        };
        let targets = self.targets.clone();
        let reopen = Arc::clone(&self.reopen);
        let spare = self.spare_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("shardgate-log".into())
            .spawn(move || writer(&targets, &rx, &spare, &reopen));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
    }
}

enum Out {
    Stdout,
    File(std::io::BufWriter<std::fs::File>),
    Failed,
}

fn open(t: &Target) -> Out {
    match t {
        Target::Stdout => Out::Stdout,
        Target::File(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Out::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot open the access log; its lines are dropped");
                Out::Failed
            }
        },
    }
}

fn writer(targets: &[Target], rx: &Receiver<Batch>, spare: &Sender<Vec<u8>>, reopen: &AtomicBool) {
    // Below the workers: where it shares a core with one, the worker's requests go
    // first and the log catches up in the gaps (its queue absorbs the delay).
    crate::below_workers(10);
    let mut outs: Vec<Out> = targets.iter().map(open).collect();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(b) => Some(b),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        if reopen.swap(false, Ordering::AcqRel) {
            for o in outs.iter_mut() {
                if let Out::File(w) = o {
                    let _ = w.flush();
                }
            }
            outs = targets.iter().map(open).collect();
            tracing::info!("access logs reopened");
        }
        for (sink, mut batch) in first.into_iter().chain(rx.try_iter()) {
            let written = match outs.get_mut(sink) {
                Some(Out::Stdout) => std::io::stdout().lock().write_all(&batch),
                Some(Out::File(w)) => w.write_all(&batch),
                _ => Ok(()),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "access log write failed");
            }
            batch.clear();
            let _ = spare.try_send(batch);
        }
        for o in outs.iter_mut() {
            match o {
                Out::File(w) => {
                    let _ = w.flush();
                }
                Out::Stdout => {
                    let _ = std::io::stdout().lock().flush();
                }
                Out::Failed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_refuse_unknown_names() {
        let f = Format::parse("$context.requestId $context.status.").unwrap();
        let Format::Template(parts) = f else { panic!() };
        assert_eq!(parts[0], Part::Var(Var::RequestId));
        assert_eq!(parts[2], Part::Var(Var::Status));
        assert_eq!(parts[3], Part::Lit(".".into()));
        assert!(Format::parse("$context.nope").is_err());
        assert!(Format::parse("no variables").is_err());
        assert!(matches!(Format::parse("clf"), Ok(Format::Template(_))));
        let mut out = Vec::new();
        clf_time(&mut out, 1_764_000_000);
        assert_eq!(out, b"24/Nov/2025:16:00:00 +0000");
    }
}
