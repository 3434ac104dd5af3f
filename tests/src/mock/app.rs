//! The protocol-independent part of the mock: a parsed request goes in, a
//! response description comes out. HTTP/1.1 (and later HTTP/2) fronts turn
//! it into bytes on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::log::{LogRecord, LogSink};
use super::usage::{self, Provider, Usage};
use super::{Config, GzipMode, anthropic, openai};

/// A request as received (any HTTP version).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    /// The de-chunked body.
    pub body: Vec<u8>,
    /// Total bytes of the request on the wire.
    pub wire_bytes: u64,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    pub fn accepts_gzip(&self) -> bool {
        let Some(ae) = self.header("accept-encoding") else {
            return false;
        };
        ae.split(',').any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let zero_q = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_q
        })
    }
}

/// A response body: whole, or a sequence of events each flushed on its own.
#[derive(Debug, Clone)]
pub enum Body {
    Full(Vec<u8>),
    Events(Vec<Vec<u8>>),
}

/// How many events a truncated stream sends before the connection is cut.
pub const TRUNCATE_AFTER_EVENTS: usize = 4;

/// A response description. Fronts add framing headers (content-length or
/// chunked, content-encoding, date, connection).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Gzip the body (decided by the app from `--gzip` and Accept-Encoding).
    pub gzip: bool,
    /// Cut the response short and close the connection.
    pub truncate: bool,
    /// Delay between stream events.
    pub event_delay_ms: u64,
    /// The log line, completed by the front when the response is finished.
    pub log: LogRecord,
}

/// Shared server state.
pub struct AppState {
    pub config: Config,
    pub seq: AtomicU64,
    pub conns: AtomicU64,
    pub log: LogSink,
}

impl AppState {
    pub fn new(config: Config, log: LogSink) -> Arc<Self> {
        Arc::new(AppState {
            config,
            seq: AtomicU64::new(0),
            conns: AtomicU64::new(0),
            log,
        })
    }

    /// Completes and writes a log record for a finished response.
    pub fn finish(&self, resp: &Response, truncated: bool, response_wire_bytes: u64) {
        let mut rec = resp.log.clone();
        rec.truncated = truncated;
        rec.gzip = resp.gzip;
        rec.response_wire_bytes = response_wire_bytes;
        if truncated {
            rec.usage_sent = false;
        } else {
            rec.usage_partial = None;
        }
        rec.ts_ms = super::log::now_ms();
        self.log.write(&rec);
    }
}

/// Which API a request is for.
fn provider_for(req: &Request) -> Provider {
    let p = req.path();
    if p.starts_with("/v1/messages")
        || p.starts_with("/v1/complete")
        || req.header("anthropic-version").is_some()
        || req.header("x-api-key").is_some()
    {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    }
}

/// Per-call context the provider modules need.
pub struct Call<'a> {
    pub seq: u64,
    pub model: &'a str,
    pub usage: Usage,
    pub include_usage: bool,
}

/// Serves one request.
pub fn handle(state: &AppState, req: &Request, conn: u64, protocol: &str) -> Response {
    let seq = state.seq.fetch_add(1, Ordering::SeqCst) + 1;
    let provider = provider_for(req);
    let mut log = LogRecord {
        seq,
        conn,
        protocol: protocol.to_string(),
        method: req.method.clone(),
        path: req.path().to_string(),
        tag: req.header("x-test-tag").map(str::to_string),
        request_bytes: req.body.len() as u64,
        request_wire_bytes: req.wire_bytes,
        ..Default::default()
    };
    let gzip_full = match state.config.gzip {
        GzipMode::Never => false,
        GzipMode::Auto | GzipMode::Always => req.accepts_gzip(),
    };
    let gzip_stream = state.config.gzip == GzipMode::Always && req.accepts_gzip();

    let error = |log: LogRecord, status: u16, kind: Option<&str>, msg: &str| -> Response {
        let (headers, body) = match provider {
            Provider::OpenAi => openai::error(seq, status, kind, msg),
            Provider::Anthropic => anthropic::error(seq, status, kind, msg),
        };
        let mut log = log;
        log.status = status;
        Response {
            status,
            headers,
            body: Body::Full(body),
            gzip: gzip_full,
            truncate: false,
            event_delay_ms: 0,
            log,
        }
    };

    let api = match req.path() {
        "/v1/chat/completions" => "chat.completions",
        "/v1/messages" => "messages",
        other => {
            let msg = format!("Invalid URL ({} {})", req.method, other);
            return error(log, 404, None, &msg);
        }
    };
    log.api = Some(api.to_string());
    if req.method != "POST" {
        let msg = format!("Method {} not allowed for {}", req.method, req.path());
        return error(log, 405, None, &msg);
    }

    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(log, 400, None, "The request body must be a JSON object."),
        Err(_) => {
            return error(
                log,
                400,
                None,
                "We could not parse the JSON body of your request. The request body must be valid JSON.",
            );
        }
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    log.model = model.clone();
    log.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    log.include_usage = match provider {
        Provider::Anthropic => true,
        Provider::OpenAi => body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let Some(model) = model else {
        return error(log, 400, None, "model: Field required");
    };

    if let Some(s) = req.header("x-mock-status") {
        match s.trim().parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => {
                return error(log, code, None, "Mock error requested with x-mock-status.");
            }
            Ok(200) => {}
            _ => return error(log, 400, None, "invalid x-mock-status header"),
        }
    }

    let planned = match req.header("x-mock-usage") {
        Some(h) => match usage::parse_override(h) {
            Ok(u) => u,
            Err(e) => return error(log, 400, None, &e),
        },
        None => usage::deterministic(provider, &model, seq, req.body.len()),
    };
    let carried = usage::as_carried(provider, &planned);
    log.usage = Some(carried);
    log.status = 200;
    let truncate = req.header("x-mock-truncate").is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    });

    let call = Call {
        seq,
        model: &model,
        usage: planned,
        include_usage: log.include_usage,
    };
    let stream = log.stream;
    let (headers, body) = match (provider, stream) {
        (Provider::OpenAi, false) => {
            log.usage_sent = true;
            let (h, b) = openai::completion(&call);
            (h, Body::Full(b))
        }
        (Provider::OpenAi, true) => {
            log.usage_sent = call.include_usage;
            let (h, ev) = openai::stream(&call);
            (h, Body::Events(ev))
        }
        (Provider::Anthropic, false) => {
            log.usage_sent = true;
            let (h, b) = anthropic::message(&call);
            (h, Body::Full(b))
        }
        (Provider::Anthropic, true) => {
            log.usage_sent = true;
            // A truncated stream still sent message_start with the input usage.
            let mut partial = carried;
            partial.output_tokens = anthropic::INITIAL_OUTPUT_TOKENS.min(carried.output_tokens);
            log.usage_partial = Some(partial);
            let (h, ev) = anthropic::stream(&call);
            (h, Body::Events(ev))
        }
    };
    Response {
        status: 200,
        headers,
        gzip: if stream { gzip_stream } else { gzip_full },
        body,
        truncate,
        event_delay_ms: state.config.chunk_delay_ms,
        log,
    }
}

/// The deterministic reply text of call `seq` (never derived from the prompt),
/// split into stream pieces.
pub fn reply_pieces(seq: u64) -> Vec<String> {
    vec![
        format!("Mock reply {seq}"),
        ": the quick".to_string(),
        " brown fox".to_string(),
        " jumps over".to_string(),
        " the lazy dog.".to_string(),
    ]
}

pub fn reply_text(seq: u64) -> String {
    reply_pieces(seq).concat()
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A deterministic id suffix for call `seq`.
pub fn id_suffix(seq: u64) -> String {
    // Spread the bits so ids look random but stay reproducible.
    let x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995_0000_1234;
    format!("{x:016x}{seq:08x}")
}
