//! OTLP/HTTP span export (`telemetry: { otlp_endpoint }`): one server span per
//! sampled request, buffered by its worker, handed over each tick, and POSTed as
//! OTLP JSON by one background thread about once a second. A collector that is
//! slow or down costs dropped spans (counted in the log), never requests.

use std::sync::atomic::{AtomicU64, Ordering};
#[allow(clippy::disallowed_types)]
// Not on the request path: the export thread takes the receiver once, at start.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

/// Batches of spans queued for the exporter at most.
const QUEUE: usize = 64;
/// Spans per POST at most.
const MAX_PER_POST: usize = 2048;
const POST_EVERY: Duration = Duration::from_secs(1);
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sampled request's span needs from its head.
#[derive(Debug)]
pub struct SpanFacts {
    pub method: Box<str>,
    pub path: Box<str>,
}

/// One finished server span.
#[derive(Debug)]
pub struct Span {
    pub trace_id: [u8; 32],
    pub span_id: [u8; 16],
    pub parent: Option<[u8; 16]>,
    pub name: Box<str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: u16,
    pub facts: Box<SpanFacts>,
    pub api: Box<str>,
    pub stage: Box<str>,
    pub request_id: crate::ids::RequestId,
}

#[derive(Debug)]
pub struct Exporter {
    pub endpoint: String,
    pub service_name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    tx: Sender<Vec<Span>>,
    #[allow(clippy::disallowed_types)]
    // Not on the request path: the export thread takes the receiver once, at start.
    rx: Mutex<Option<Receiver<Vec<Span>>>>,
    pub dropped: AtomicU64,
}

impl Exporter {
    pub fn new(
        endpoint: String,
        service_name: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        Self {
            endpoint,
            service_name,
            tls,
            tx,
            #[allow(clippy::disallowed_types)] // Not on the request path: the export thread takes the receiver once, at start.
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Hands a worker's spans over; dropped (and counted) when the queue is full.
    pub fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(spans)
        {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Starts the exporter thread (once).
    pub fn start(self: &Arc<Self>) {
        let Some(rx) = crate::lock(&self.rx).take() else {
            return;
        };
        // Weak: the thread ends when the last plan using this exporter is gone (its
        // channel disconnects).
        let me = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("shardgate-otlp".into())
            .spawn(move || Self::run(&me, &rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the OTLP exporter");
        }
    }

    fn run(me: &std::sync::Weak<Self>, rx: &Receiver<Vec<Span>>) {
        let mut pending: Vec<Span> = Vec::new();
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(POST_EVERY) {
                Ok(batch) => pending.extend(batch),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            if !pending.is_empty()
                && (last.elapsed() >= POST_EVERY || pending.len() >= MAX_PER_POST)
            {
                let Some(me) = me.upgrade() else { return };
                for chunk in pending.chunks(MAX_PER_POST) {
                    me.post(chunk);
                }
                pending.clear();
                last = Instant::now();
            }
        }
    }

    fn post(&self, spans: &[Span]) {
        if spans.is_empty() {
            return;
        }
        let body = self.encode(spans).to_string();
        match crate::http::client::post(
            &self.endpoint,
            self.tls.as_ref(),
            ("application/json", body.as_bytes()),
            POST_TIMEOUT,
        ) {
            Ok(status) if (200..300).contains(&status) => {}
            Ok(status) => {
                tracing::warn!(endpoint = %self.endpoint, status, spans = spans.len(), "OTLP collector refused spans");
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, spans = spans.len(), "OTLP export failed; spans dropped");
            }
        }
    }

    /// An OTLP `ExportTraceServiceRequest` in OTLP/JSON.
    pub fn encode(&self, spans: &[Span]) -> Value {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let attr = |k: &str, v: Value| json!({ "key": k, "value": v });
        let spans: Vec<Value> = spans
            .iter()
            .map(|s| {
                let mut span = json!({
                    "traceId": text(&s.trace_id),
                    "spanId": text(&s.span_id),
                    "name": &*s.name,
                    "kind": 2,
                    "startTimeUnixNano": s.start_ns.to_string(),
                    "endTimeUnixNano": s.end_ns.to_string(),
                    "attributes": [
                        attr("http.request.method", json!({ "stringValue": &*s.facts.method })),
                        attr("url.path", json!({ "stringValue": &*s.facts.path })),
                        attr("http.route", json!({ "stringValue": &*s.name })),
                        attr("http.response.status_code", json!({ "intValue": s.status.to_string() })),
                        attr("apigw.api", json!({ "stringValue": &*s.api })),
                        attr("apigw.stage", json!({ "stringValue": &*s.stage })),
                        attr("apigw.request_id", json!({ "stringValue": text(&s.request_id) })),
                    ],
                    // OTLP: 2 = error (5xx on a server span), else unset.
                    "status": { "code": if s.status >= 500 { 2 } else { 0 } },
                });
                if let Some(p) = &s.parent {
                    span["parentSpanId"] = Value::String(text(p));
                }
                span
            })
            .collect();
        json!({
            "resourceSpans": [{
                "resource": { "attributes": [
                    attr("service.name", json!({ "stringValue": &self.service_name })),
                ]},
                "scopeSpans": [{
                    "scope": { "name": "shardgate", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            }]
        })
    }
}
