//! The protocol-independent part of the mock: a parsed request goes in, a
//! response description comes out. HTTP/1.1 (and later HTTP/2) fronts turn
//! it into bytes on the wire.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::log::{LogRecord, LogSink};
use super::ollama::Endpoint;
use super::usage::{self, Provider, Usage};
use super::{Config, GzipMode, anthropic, gemini, ollama, openai, responses};

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
        self.accepts("gzip")
    }

    /// Whether `Accept-Encoding` allows `coding` (explicitly, or through `*`).
    pub fn accepts(&self, wanted: &str) -> bool {
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
            (coding.eq_ignore_ascii_case(wanted) || coding == "*") && !zero_q
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
    /// Zstd-encode the body (from `--zstd` and Accept-Encoding); wins over gzip.
    pub zstd: bool,
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

    /// Logs a request whose head arrived but whose body did not (whole): proof that some
    /// of it left its client, though nothing was served.
    pub fn incomplete(
        &self,
        conn: u64,
        protocol: &str,
        method: &str,
        path: &str,
        tag: Option<String>,
        wire_bytes: u64,
    ) {
        let rec = LogRecord {
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            conn,
            protocol: protocol.to_string(),
            method: method.to_string(),
            path: path.split('?').next().unwrap_or_default().to_string(),
            tag,
            request_wire_bytes: wire_bytes,
            incomplete: true,
            ts_ms: super::log::now_ms(),
            ..Default::default()
        };
        self.log.write(&rec);
    }

    /// Completes and writes a log record for a finished response.
    pub fn finish(&self, resp: &Response, truncated: bool, response_wire_bytes: u64) {
        let mut rec = resp.log.clone();
        rec.truncated = truncated;
        rec.gzip = resp.gzip;
        rec.zstd = resp.zstd;
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

/// The API a request's path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MockApi {
    Chat,
    Messages,
    Responses,
    Completions,
    Embeddings,
    /// `…/models/{model}:generateContent` or `:streamGenerateContent`.
    Gemini {
        model: String,
        stream: bool,
    },
    Ollama(Endpoint),
}

impl MockApi {
    /// The `api` of the log (agentwatch's names).
    fn name(&self) -> &'static str {
        match self {
            MockApi::Chat => "chat.completions",
            MockApi::Messages => "messages",
            MockApi::Responses => "responses",
            MockApi::Completions => "completions",
            MockApi::Embeddings => "embeddings",
            MockApi::Gemini { .. } => "generate_content",
            MockApi::Ollama(Endpoint::Chat) => "ollama.chat",
            MockApi::Ollama(Endpoint::Generate) => "ollama.generate",
        }
    }

    fn usage_provider(&self) -> Provider {
        match self {
            MockApi::Messages => Provider::Anthropic,
            MockApi::Gemini { .. } => Provider::Gemini,
            MockApi::Ollama(_) => Provider::Ollama,
            _ => Provider::OpenAi,
        }
    }
}

/// The API of a path, and the model the path names (Gemini's model, an Azure
/// deployment).
fn route(path: &str) -> Option<(MockApi, Option<String>)> {
    if let Some((head, verb)) = path.rsplit_once(':')
        && let Some((prefix, model)) = head.rsplit_once("/models/")
        && (prefix == "/v1beta" || prefix == "/v1")
        && !model.is_empty()
    {
        let stream = match verb {
            "generateContent" => false,
            "streamGenerateContent" => true,
            _ => return None,
        };
        let api = MockApi::Gemini {
            model: model.to_string(),
            stream,
        };
        return Some((api, Some(model.to_string())));
    }
    // Azure OpenAI: /openai/deployments/{deployment}/{chat/completions|completions|embeddings}.
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (dep, op) = rest.split_once('/')?;
        let api = match op {
            "chat/completions" => MockApi::Chat,
            "completions" => MockApi::Completions,
            "embeddings" => MockApi::Embeddings,
            _ => return None,
        };
        return (!dep.is_empty()).then(|| (api, Some(dep.to_string())));
    }
    let api = match path {
        "/v1/chat/completions" | "/openai/v1/chat/completions" => MockApi::Chat,
        "/v1/messages" => MockApi::Messages,
        "/v1/responses" | "/openai/v1/responses" => MockApi::Responses,
        "/v1/completions" => MockApi::Completions,
        "/v1/embeddings" | "/openai/v1/embeddings" => MockApi::Embeddings,
        "/api/chat" => MockApi::Ollama(Endpoint::Chat),
        "/api/generate" => MockApi::Ollama(Endpoint::Generate),
        _ => return None,
    };
    Some((api, None))
}

/// The shape errors take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    OpenAi,
    Anthropic,
    Gemini,
    Ollama,
}

/// Which API's error shape a request gets.
fn error_shape(req: &Request) -> ErrorShape {
    let p = req.path();
    if p.starts_with("/v1/messages")
        || p.starts_with("/v1/complete") && !p.starts_with("/v1/completions")
        || req.header("anthropic-version").is_some()
        || req.header("x-api-key").is_some()
    {
        ErrorShape::Anthropic
    } else if p.starts_with("/v1beta/") || req.header("x-goog-api-key").is_some() {
        ErrorShape::Gemini
    } else if p.starts_with("/api/") {
        ErrorShape::Ollama
    } else {
        ErrorShape::OpenAi
    }
}

/// The usage as the API's fields carry it, normalised back to OTel numbers.
fn carried(api: &MockApi, u: &Usage) -> Usage {
    match api {
        MockApi::Chat => usage::as_carried(Provider::OpenAi, u),
        // Legacy completions carry prompt and completion counts, no details.
        MockApi::Completions => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            ..Usage::default()
        },
        MockApi::Messages => usage::as_carried(Provider::Anthropic, u),
        // input incl. cached, output incl. reasoning; no cache-write field.
        MockApi::Responses => Usage {
            cache_write_tokens: 0,
            ..*u
        },
        // Embeddings: prompt tokens only.
        MockApi::Embeddings => Usage {
            input_tokens: u.input_tokens,
            ..Usage::default()
        },
        // candidates = output - thoughts (saturating): output is re-derived.
        MockApi::Gemini { .. } => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u
                .output_tokens
                .saturating_sub(u.reasoning_tokens)
                .saturating_add(u.reasoning_tokens),
            cache_write_1h_tokens: 0,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: 0,
            reasoning_tokens: u.reasoning_tokens,
        },
        MockApi::Ollama(_) => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            ..Usage::default()
        },
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
    let shape = error_shape(req);
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
    let encoding = |mode: GzipMode, stream: bool, coding: &str| -> bool {
        let on = match mode {
            GzipMode::Never => false,
            GzipMode::Auto => !stream,
            GzipMode::Always => true,
        };
        on && req.accepts(coding)
    };
    let zstd_full = encoding(state.config.zstd, false, "zstd");
    let gzip_full = !zstd_full && encoding(state.config.gzip, false, "gzip");

    let error = |log: LogRecord, status: u16, kind: Option<&str>, msg: &str| -> Response {
        let (headers, body) = match shape {
            ErrorShape::OpenAi => openai::error(seq, status, kind, msg),
            ErrorShape::Anthropic => anthropic::error(seq, status, kind, msg),
            ErrorShape::Gemini => gemini::error(status, msg),
            ErrorShape::Ollama => ollama::error(msg),
        };
        let mut log = log;
        log.status = status;
        Response {
            status,
            headers,
            body: Body::Full(body),
            gzip: gzip_full,
            zstd: zstd_full,
            truncate: false,
            event_delay_ms: 0,
            log,
        }
    };

    let Some((api, path_model)) = route(req.path()) else {
        let msg = format!("Invalid URL ({} {})", req.method, req.path());
        return error(log, 404, None, &msg);
    };
    log.api = Some(api.name().to_string());
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
    let body_model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let model = match &api {
        MockApi::Gemini { model, .. } => Some(model.clone()),
        _ => body_model.or(path_model),
    };
    log.model = model.clone();
    let body_stream = body.get("stream").and_then(Value::as_bool);
    log.stream = match &api {
        MockApi::Gemini { stream, .. } => *stream,
        MockApi::Ollama(_) => body_stream.unwrap_or(true),
        MockApi::Embeddings => false,
        _ => body_stream.unwrap_or(false),
    };
    log.include_usage = match &api {
        MockApi::Chat | MockApi::Completions => body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        _ => true,
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
        None => usage::deterministic(api.usage_provider(), &model, seq, req.body.len()),
    };
    let carried = carried(&api, &planned);
    log.usage = Some(carried);
    log.status = 200;
    let truncate = req.header("x-mock-truncate").is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    });

    let call = Call {
        seq,
        model: &model,
        usage: match api {
            MockApi::Chat | MockApi::Messages => planned,
            _ => carried,
        },
        include_usage: log.include_usage,
    };
    let stream = log.stream;
    log.usage_sent = true;
    let full = |(h, b): (Vec<(String, String)>, Vec<u8>)| (h, Body::Full(b));
    let events = |(h, e): (Vec<(String, String)>, Vec<Vec<u8>>)| (h, Body::Events(e));
    let (headers, body) = match (&api, stream) {
        (MockApi::Chat, false) => full(openai::completion(&call)),
        (MockApi::Chat, true) => {
            log.usage_sent = call.include_usage;
            events(openai::stream(&call))
        }
        (MockApi::Messages, false) => full(anthropic::message(&call)),
        (MockApi::Messages, true) => {
            // A truncated stream still sent message_start with the input usage.
            let mut partial = carried;
            partial.output_tokens = anthropic::INITIAL_OUTPUT_TOKENS.min(carried.output_tokens);
            log.usage_partial = Some(partial);
            events(anthropic::stream(&call))
        }
        (MockApi::Responses, false) => full(responses::response(&call)),
        (MockApi::Responses, true) => events(responses::stream(&call)),
        (MockApi::Completions, false) => full(openai::text_completion(&call)),
        (MockApi::Completions, true) => {
            log.usage_sent = call.include_usage;
            events(openai::text_stream(&call))
        }
        (MockApi::Embeddings, _) => {
            let inputs = match body.get("input") {
                Some(Value::Array(items)) if items.first().is_some_and(|v| !v.is_number()) => {
                    items.len()
                }
                _ => 1,
            };
            let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
            full(openai::embeddings(&call, inputs, base64))
        }
        (MockApi::Gemini { .. }, false) => full(gemini::generate(&call)),
        (MockApi::Gemini { .. }, true) => {
            if req.target.contains("alt=sse") {
                events(gemini::stream_sse(&call))
            } else {
                events(gemini::stream_array(&call))
            }
        }
        (MockApi::Ollama(ep), false) => full(ollama::whole(&call, *ep)),
        (MockApi::Ollama(ep), true) => events(ollama::stream(&call, *ep)),
    };
    let zstd = encoding(state.config.zstd, stream, "zstd");
    let gzip = !zstd && encoding(state.config.gzip, stream, "gzip");
    Response {
        status: 200,
        headers,
        gzip,
        zstd,
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
