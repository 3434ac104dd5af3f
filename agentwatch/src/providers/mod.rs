//! LLM APIs recognised by request shape; each turns a request and a response into an [`LlmCall`].
//!
//! Shape: one [`Api`] enum variant per wire API (not per vendor — many vendors and gateways
//! speak the OpenAI or Anthropic shapes), with four questions asked of it:
//! [`Api::route`] (method + path → a [`Route`], which also carries what the path says: the
//! Gemini model, an Azure deployment, a streaming verb), [`Route::request_info`] (the JSON
//! body must carry a string `model`, unless the path named one), [`Api::framing`] (how a
//! response body is cut into events: SSE, NDJSON, a streamed JSON array, or one JSON body)
//! and [`Api::accumulator`], a per-response state machine fed either the whole JSON body or
//! stream events one at a time. Adding an API means one more variant, one more module and
//! one more accumulator variant. An enum (not `dyn Trait`) keeps dispatch static and
//! allocation-free per call.
//!
//! Bodies are read with typed `serde` envelopes that name only the metadata fields (`model`,
//! `id`, `usage`, …): prompt and completion text is skipped by the deserializer, never copied.
//! The vendor name ([`provider_for_host`]) comes from the `Host` header where it is known,
//! else the API family.

pub mod anthropic;
pub mod call;
pub mod gemini;
mod json;
pub mod ollama;
pub mod openai;
pub mod responses;

pub(crate) use json::{as_count, count};

pub use call::{LlmCall, LlmRequest};

use serde::Deserialize;
use serde_json::Value;

use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

/// Why a body could not be read as an LLM request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Position only: a `serde_json` message can quote body text, which must not leak.
    #[error("request body is not a JSON object (line {line}, column {column})")]
    InvalidJson { line: usize, column: usize },
    #[error("request body has no string `model`")]
    NoModel,
}

/// A wire API recognised by request shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST …/chat/completions` (OpenAI, Azure deployments, every compatible server).
    OpenAiChat,
    /// `POST …/v1/messages`.
    AnthropicMessages,
    /// `POST …/responses` (OpenAI Responses API).
    OpenAiResponses,
    /// `POST …/completions` (legacy text completions; not `chat/completions`).
    OpenAiCompletions,
    /// `POST …/embeddings` (input tokens only).
    OpenAiEmbeddings,
    /// `POST …/models/{model}:generateContent` and `:streamGenerateContent` (Gemini).
    GeminiGenerateContent,
    /// `POST …/api/chat` (Ollama native).
    OllamaChat,
    /// `POST …/api/generate` (Ollama native).
    OllamaGenerate,
}

/// How a response body is cut into what an [`Accumulator`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON body, read whole at its end.
    Whole,
    /// `text/event-stream`.
    Sse,
    /// Newline-delimited JSON (Ollama streams): one object per line.
    Ndjson,
    /// A JSON array streamed element by element (Gemini `streamGenerateContent` without
    /// `alt=sse`).
    JsonArray,
}

/// A request whose method and path match an API, with what the path itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub api: Api,
    /// The model named by the path: Gemini's `models/{model}:…`, an Azure deployment.
    pub path_model: Option<String>,
    /// The path asks for a stream whatever the body says (`:streamGenerateContent`).
    pub path_streaming: bool,
}

/// What the request body says about the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub model: String,
    pub streaming: bool,
    /// OpenAI `stream_options.include_usage`: a streamed response carries a final usage chunk.
    pub include_usage: bool,
}

impl Api {
    pub const ALL: [Api; 8] = [
        Api::OpenAiChat,
        Api::AnthropicMessages,
        Api::OpenAiResponses,
        Api::OpenAiCompletions,
        Api::OpenAiEmbeddings,
        Api::GeminiGenerateContent,
        Api::OllamaChat,
        Api::OllamaGenerate,
    ];

    /// The `api` field of calls.
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "chat.completions",
            Api::AnthropicMessages => "messages",
            Api::OpenAiResponses => "responses",
            Api::OpenAiCompletions => "completions",
            Api::OpenAiEmbeddings => "embeddings",
            Api::GeminiGenerateContent => "generate_content",
            Api::OllamaChat => "ollama.chat",
            Api::OllamaGenerate => "ollama.generate",
        }
    }

    /// The provider named when the host is not a known vendor (a gateway, a local mock).
    pub fn family(self) -> &'static str {
        match self {
            Api::OpenAiChat
            | Api::OpenAiResponses
            | Api::OpenAiCompletions
            | Api::OpenAiEmbeddings => "openai",
            Api::AnthropicMessages => "anthropic",
            Api::GeminiGenerateContent => "gemini",
            Api::OllamaChat | Api::OllamaGenerate => "ollama",
        }
    }

    /// The API whose method and path this request has, if any.
    pub fn for_request(method: &str, path: &str) -> Option<Api> {
        Self::route(method, path).map(|r| r.api)
    }

    /// The API, and what the path says, of a request with this method and path (query allowed).
    pub fn route(method: &str, path: &str) -> Option<Route> {
        if method != "POST" {
            return None;
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        if let Some((model, streaming)) = gemini::match_path(path) {
            return Some(Route {
                api: Api::GeminiGenerateContent,
                path_model: Some(model),
                path_streaming: streaming,
            });
        }
        let api = if openai::matches_path(path) {
            Api::OpenAiChat
        } else if anthropic::matches_path(path) {
            Api::AnthropicMessages
        } else if responses::matches_path(path) {
            Api::OpenAiResponses
        } else if openai::matches_completions_path(path) {
            Api::OpenAiCompletions
        } else if openai::matches_embeddings_path(path) {
            Api::OpenAiEmbeddings
        } else if path.ends_with("/api/chat") {
            Api::OllamaChat
        } else if path.ends_with("/api/generate") {
            Api::OllamaGenerate
        } else {
            return None;
        };
        Some(Route {
            api,
            path_model: openai::azure_deployment(path).map(str::to_string),
            path_streaming: false,
        })
    }

    /// Reads the request body: it must be a JSON object with a string `model`.
    pub fn request_info(self, body: &[u8]) -> Result<RequestInfo, ProviderError> {
        Route {
            api: self,
            path_model: None,
            path_streaming: false,
        }
        .request_info(body)
    }

    /// Whether a request that does not say `stream` streams (Ollama's default is to stream).
    fn streams_by_default(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }

    /// How a response with this `Content-Type` (empty if none) is framed; `streaming` is what
    /// the request asked for.
    pub fn framing(self, content_type: &str, streaming: bool) -> Framing {
        let ct = content_type.to_ascii_lowercase();
        if ct.contains("text/event-stream") {
            return Framing::Sse;
        }
        if ct.contains("ndjson") || ct.contains("jsonl") {
            return Framing::Ndjson;
        }
        match self {
            _ if !streaming => Framing::Whole,
            Api::OllamaChat | Api::OllamaGenerate => Framing::Ndjson,
            Api::GeminiGenerateContent => Framing::JsonArray,
            _ if ct.is_empty() => Framing::Sse,
            _ => Framing::Whole,
        }
    }

    /// A fresh response accumulator for one call of this API.
    pub fn accumulator(self) -> Accumulator {
        match self {
            Api::OpenAiChat | Api::OpenAiCompletions | Api::OpenAiEmbeddings => {
                Accumulator::OpenAiChat(openai::ChatAccumulator::default())
            }
            Api::AnthropicMessages => {
                Accumulator::AnthropicMessages(anthropic::MessagesAccumulator::default())
            }
            Api::OpenAiResponses => {
                Accumulator::OpenAiResponses(responses::ResponsesAccumulator::default())
            }
            Api::GeminiGenerateContent => {
                Accumulator::Gemini(gemini::GenerateAccumulator::default())
            }
            Api::OllamaChat | Api::OllamaGenerate => {
                Accumulator::Ollama(ollama::OllamaAccumulator::default())
            }
        }
    }
}

impl Route {
    /// Reads the request body: it must be a JSON object, with a string `model` unless the path
    /// named one. Gemini's model is the path's; an Azure deployment stands in for a body with
    /// no `model`.
    pub fn request_info(&self, body: &[u8]) -> Result<RequestInfo, ProviderError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ProviderError::InvalidJson { line: 1, column: 1 });
        }
        let probe: RequestProbe =
            serde_json::from_slice(body).map_err(|e| ProviderError::InvalidJson {
                line: e.line(),
                column: e.column(),
            })?;
        let body_model = match probe.model {
            Some(Value::String(m)) => Some(m),
            _ => None,
        };
        let model = match self.api {
            Api::GeminiGenerateContent => self.path_model.clone().or(body_model),
            _ => body_model.or_else(|| self.path_model.clone()),
        };
        let Some(model) = model else {
            return Err(ProviderError::NoModel);
        };
        let include_usage = probe
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let stream = probe.stream.as_ref().and_then(Value::as_bool);
        Ok(RequestInfo {
            model,
            streaming: self.path_streaming
                || stream.unwrap_or_else(|| self.api.streams_by_default()),
            include_usage: matches!(self.api, Api::OpenAiChat | Api::OpenAiCompletions)
                && include_usage,
        })
    }

    /// Model and streaming of a request whose body was too large (or undecodable) to read
    /// whole, from what was kept of it and from the path.
    pub fn scan_prefix(&self, prefix: &[u8]) -> (Option<String>, bool) {
        let (model, stream) = scan_request_prefix(prefix);
        let model = match self.api {
            Api::GeminiGenerateContent => self.path_model.clone().or(model),
            _ => model.or_else(|| self.path_model.clone()),
        };
        let streaming =
            self.path_streaming || stream.unwrap_or_else(|| self.api.streams_by_default());
        (model, streaming)
    }
}

/// Best effort for a request body too large to buffer whole: the top-level `"model"` string
/// and `"stream"` flag found in the kept prefix by a minimal scanner that only tracks strings,
/// escapes and nesting depth (a `"model"` key inside `messages` or `tools` is not top-level).
/// No other string is copied.
pub fn scan_request_prefix(prefix: &[u8]) -> (Option<String>, Option<bool>) {
    let (mut model, mut stream) = (None, None);
    let mut depth = 0usize;
    // A top-level string that may be a key, and the key whose value comes next.
    let mut key: Option<&[u8]> = None;
    let mut value_of: Option<&[u8]> = None;
    let mut i = 0;
    while i < prefix.len() {
        match prefix[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < prefix.len() && prefix[j] != b'"' {
                    j += if prefix[j] == b'\\' { 2 } else { 1 };
                }
                if j >= prefix.len() {
                    break; // cut inside a string
                }
                let s = &prefix[start..j];
                if depth == 1 {
                    match value_of.take() {
                        Some(b"model") if model.is_none() && !s.contains(&b'\\') => {
                            model = std::str::from_utf8(s).ok().map(str::to_string);
                        }
                        Some(_) => {}
                        None => key = Some(s),
                    }
                }
                i = j;
            }
            b':' if depth == 1 => value_of = key.take(),
            b',' if depth == 1 => (key, value_of) = (None, None),
            b'{' | b'[' => {
                depth += 1;
                value_of = None;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b't' | b'f' if depth == 1 && value_of == Some(&b"stream"[..]) => {
                stream = Some(prefix[i] == b't');
                value_of = None;
            }
            _ => {}
        }
        if model.is_some() && stream.is_some() {
            break;
        }
        i += 1;
    }
    (model, stream)
}

/// The request fields every API family shares; the rest of the body is skipped unread.
#[derive(Deserialize)]
struct RequestProbe {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
}

/// The response metadata fields both families use (in a body, a chunk or an SSE event).
/// Everything else — choices, content, deltas — is skipped by the deserializer.
#[derive(Deserialize, Default)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub usage: Option<Value>,
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "type")]
    pub kind: Option<Value>,
    /// Anthropic `message_start`: `{id, model, usage, …}` (its `content` is empty).
    #[serde(default)]
    pub message: Option<Value>,
}

impl Envelope {
    pub(crate) fn parse(data: &[u8]) -> Option<Envelope> {
        json::object(data)
    }
}

/// What a response told us, whatever the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    /// Bodies, chunks or events that were not valid JSON.
    pub json_errors: u64,
    /// Error objects or `error` events sent by the provider.
    pub provider_errors: u64,
    /// The stream's terminal event was seen (`[DONE]`, `message_stop`).
    pub stream_done: bool,
}

impl ResponseMeta {
    pub(crate) fn take_ids(&mut self, id: Option<&Value>, model: Option<&Value>) {
        if let Some(Value::String(id)) = id {
            self.response_id = Some(id.clone());
        }
        if let Some(Value::String(m)) = model {
            self.response_model = Some(m.clone());
        }
    }
}

/// Per-response usage state, one variant per usage shape (chat, legacy completions and
/// embeddings share OpenAI's `usage` object).
#[derive(Debug, Clone)]
pub enum Accumulator {
    OpenAiChat(openai::ChatAccumulator),
    AnthropicMessages(anthropic::MessagesAccumulator),
    OpenAiResponses(responses::ResponsesAccumulator),
    Gemini(gemini::GenerateAccumulator),
    Ollama(ollama::OllamaAccumulator),
}

/// Dispatches one expression over every accumulator variant.
macro_rules! each {
    ($self:expr, $a:ident => $e:expr) => {
        match $self {
            Accumulator::OpenAiChat($a) => $e,
            Accumulator::AnthropicMessages($a) => $e,
            Accumulator::OpenAiResponses($a) => $e,
            Accumulator::Gemini($a) => $e,
            Accumulator::Ollama($a) => $e,
        }
    };
}

impl Accumulator {
    /// A complete non-streamed body (or an error body).
    pub fn on_json_body(&mut self, body: &[u8]) {
        each!(self, a => a.on_json_body(body))
    }

    /// One event of a streamed body: an SSE event, or (with no event name) one NDJSON line or
    /// one element of a streamed JSON array.
    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        each!(self, a => a.on_sse(event))
    }

    /// Usage so far; `None` if the response reported none.
    pub fn usage(&self) -> Option<Usage> {
        each!(self, a => a.usage())
    }

    pub fn meta(&self) -> &ResponseMeta {
        each!(self, a => &a.meta)
    }
}

/// Known LLM endpoints by exact host name, and their vendor.
const HOSTS: &[(&str, &str)] = &[
    ("api.openai.com", "openai"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gemini"),
    ("openrouter.ai", "openrouter"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "xai"),
    ("api.together.xyz", "together"),
    ("api.together.ai", "together"),
    ("api.fireworks.ai", "fireworks"),
    ("api.cerebras.ai", "cerebras"),
    ("api.perplexity.ai", "perplexity"),
    ("api.deepinfra.com", "deepinfra"),
    ("api.moonshot.ai", "moonshot"),
    ("api.moonshot.cn", "moonshot"),
    ("dashscope.aliyuncs.com", "alibaba"),
    ("dashscope-intl.aliyuncs.com", "alibaba"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("integrate.api.nvidia.com", "nvidia"),
    ("api.sambanova.ai", "sambanova"),
    ("api.hyperbolic.xyz", "hyperbolic"),
    ("api.novita.ai", "novita"),
    ("router.huggingface.co", "huggingface"),
    ("ollama.com", "ollama"),
    ("aiplatform.googleapis.com", "vertex_ai"),
];

/// … by a suffix that starts at `.` or `-` (the kernel matches these the same way).
const HOST_SUFFIXES: &[(&str, &str)] = &[
    (".openai.azure.com", "azure_openai"),
    (".cognitiveservices.azure.com", "azure_openai"),
    (".services.ai.azure.com", "azure_ai"),
    ("-aiplatform.googleapis.com", "vertex_ai"),
];

/// AWS regions with Bedrock: `bedrock-runtime.{region}.amazonaws.com` is named one by one
/// for the kernel's first-contact match (a suffix would take in all of AWS); user space
/// names any region.
const BEDROCK_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "ca-west-1",
    "sa-east-1",
    "mx-central-1",
    "eu-central-1",
    "eu-central-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
    "ap-east-2",
    "me-central-1",
    "me-south-1",
    "il-central-1",
    "af-south-1",
    "us-gov-east-1",
    "us-gov-west-1",
];

/// The vendor behind a host, if known; else `None` (the caller falls back to the API family).
pub fn provider_for_host(host: &str) -> Option<&'static str> {
    let host = host.trim();
    // Strip the port: `[::1]:8080`, `api.openai.com:443`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if let Some((_, vendor)) = HOSTS.iter().find(|(h, _)| *h == name) {
        return Some(vendor);
    }
    if let Some((_, vendor)) = HOST_SUFFIXES.iter().find(|(s, _)| name.ends_with(s)) {
        return Some(vendor);
    }
    (name.starts_with("bedrock-runtime.") && name.ends_with(".amazonaws.com"))
        .then_some("aws_bedrock")
}

/// The host names (exact) and suffixes (from a `.` or `-`) that first contact takes for
/// LLM endpoints: the vendors above, and `extra` from the config (`name`, or `*.domain`
/// for every name under it), lowercased.
pub fn first_contact_hosts(extra: &[String]) -> (Vec<String>, Vec<String>) {
    let mut names: Vec<String> = HOSTS.iter().map(|(h, _)| h.to_string()).collect();
    for region in BEDROCK_REGIONS {
        names.push(format!("bedrock-runtime.{region}.amazonaws.com"));
        names.push(format!("bedrock-runtime-fips.{region}.amazonaws.com"));
    }
    let mut suffixes: Vec<String> = HOST_SUFFIXES.iter().map(|(s, _)| s.to_string()).collect();
    for host in extra {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => suffixes.push(suffix.to_string()),
            Some(_) => {}
            None if !host.is_empty() => names.push(host),
            None => {}
        }
    }
    (names, suffixes)
}

/// The `provider` of a call: by host where known, else the API family.
pub fn provider_name(api: Api, host: Option<&str>) -> String {
    host.and_then(provider_for_host)
        .unwrap_or(api.family())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_shape_recognition() {
        assert_eq!(
            Api::for_request("POST", "/v1/chat/completions"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(
            Api::for_request(
                "POST",
                "/openai/deployments/x/chat/completions?api-version=1"
            ),
            Some(Api::OpenAiChat)
        );
        assert_eq!(
            Api::for_request("POST", "/v1/messages?beta=true"),
            Some(Api::AnthropicMessages)
        );
        assert_eq!(Api::for_request("GET", "/v1/messages"), None);
        assert_eq!(Api::for_request("POST", "/v1/messages/count_tokens"), None);
        assert_eq!(
            Api::for_request("POST", "/v1/embeddings"),
            Some(Api::OpenAiEmbeddings)
        );
        assert_eq!(
            Api::for_request("POST", "/v1/completions"),
            Some(Api::OpenAiCompletions)
        );
        assert_eq!(
            Api::for_request("POST", "/v1/responses"),
            Some(Api::OpenAiResponses)
        );
        assert_eq!(
            Api::for_request("POST", "/v1/responses/resp_1/cancel"),
            None
        );
        assert_eq!(Api::for_request("POST", "/api/chat"), Some(Api::OllamaChat));
        assert_eq!(
            Api::for_request("POST", "/api/generate"),
            Some(Api::OllamaGenerate)
        );
        assert_eq!(Api::for_request("POST", "/api/embeddings"), None);
        assert_eq!(
            Api::route(
                "POST",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            ),
            Some(Route {
                api: Api::GeminiGenerateContent,
                path_model: Some("gemini-2.5-flash".into()),
                path_streaming: true,
            })
        );
        assert_eq!(
            Api::route(
                "POST",
                "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
            ),
            Some(Route {
                api: Api::OpenAiChat,
                path_model: Some("prod-gpt4o".into()),
                path_streaming: false,
            })
        );
        assert_eq!(
            Api::route("POST", "/openai/deployments/emb/embeddings").map(|r| r.api),
            Some(Api::OpenAiEmbeddings)
        );
        assert_eq!(Api::route("GET", "/v1beta/models/gemini-2.5-flash"), None);
    }

    #[test]
    fn providers_route_request_info() {
        let gemini = Api::route("POST", "/v1beta/models/gemini-2.5-pro:generateContent").unwrap();
        let info = gemini
            .request_info(br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#)
            .unwrap();
        assert_eq!(
            (info.model.as_str(), info.streaming),
            ("gemini-2.5-pro", false)
        );
        let stream = Api::route(
            "POST",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        )
        .unwrap();
        assert!(stream.request_info(b"{}").unwrap().streaming);
        assert!(stream.request_info(b"[]").is_err());
        // Azure: the deployment stands in for a missing model; a body model wins.
        let azure = Api::route("POST", "/openai/deployments/dep1/chat/completions").unwrap();
        assert_eq!(
            azure.request_info(br#"{"messages":[]}"#).unwrap().model,
            "dep1"
        );
        assert_eq!(
            azure.request_info(br#"{"model":"gpt-4o"}"#).unwrap().model,
            "gpt-4o"
        );
        // Ollama streams unless told not to.
        let ollama = Api::route("POST", "/api/chat").unwrap();
        assert!(
            ollama
                .request_info(br#"{"model":"llama3.2"}"#)
                .unwrap()
                .streaming
        );
        assert!(
            !ollama
                .request_info(br#"{"model":"llama3.2","stream":false}"#)
                .unwrap()
                .streaming
        );
        assert_eq!(
            ollama.request_info(br#"{"messages":[]}"#),
            Err(ProviderError::NoModel)
        );
        // Legacy completions honour include_usage; the prefix scan falls back to the path.
        let comp = Api::route("POST", "/v1/completions").unwrap();
        assert!(
            comp.request_info(
                br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#
            )
            .unwrap()
            .include_usage
        );
        assert_eq!(
            stream.scan_prefix(br#"{"contents":[{"parts":[{"text":"cut"#),
            (Some("gemini-2.5-pro".into()), true)
        );
        assert_eq!(
            ollama.scan_prefix(br#"{"model":"qwen3","messa"#),
            (Some("qwen3".into()), true)
        );
    }

    #[test]
    fn providers_framing() {
        use Framing::*;
        assert_eq!(
            Api::OpenAiChat.framing("text/event-stream; charset=utf-8", true),
            Sse
        );
        assert_eq!(Api::OpenAiChat.framing("", true), Sse);
        assert_eq!(Api::OpenAiChat.framing("application/json", false), Whole);
        assert_eq!(
            Api::OllamaChat.framing("application/x-ndjson", true),
            Ndjson
        );
        assert_eq!(Api::OllamaChat.framing("application/json", true), Ndjson);
        assert_eq!(Api::OllamaChat.framing("application/json", false), Whole);
        assert_eq!(
            Api::GeminiGenerateContent.framing("text/event-stream", true),
            Sse
        );
        assert_eq!(
            Api::GeminiGenerateContent.framing("application/json; charset=UTF-8", true),
            JsonArray
        );
        assert_eq!(
            Api::GeminiGenerateContent.framing("application/json", false),
            Whole
        );
    }

    #[test]
    fn providers_request_info() {
        let info = Api::OpenAiChat
            .request_info(
                br#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true}}"#,
            )
            .unwrap();
        assert_eq!(
            info,
            RequestInfo {
                model: "gpt-4o-mini".into(),
                streaming: true,
                include_usage: true
            }
        );
        let info = Api::AnthropicMessages
            .request_info(br#" {"model":"claude-sonnet-4-5","max_tokens":5}"#)
            .unwrap();
        assert!(!info.streaming);
        assert_eq!(
            Api::OpenAiChat.request_info(br#"{"model":5}"#),
            Err(ProviderError::NoModel)
        );
        assert!(matches!(
            Api::OpenAiChat.request_info(br#"["model"]"#),
            Err(ProviderError::InvalidJson { .. })
        ));
        assert!(matches!(
            Api::OpenAiChat.request_info(br#"{"model":"x""#),
            Err(ProviderError::InvalidJson { .. })
        ));
    }

    #[test]
    fn providers_scan_request_prefix() {
        let body = br#"{"max_tokens":5,"messages":[{"role":"user","content":"say \"model\": \"x\""},{"model":"nested"}],"tools":{"model":"t"},"model":"claude-opus-4-5","stream":true,"system":"trunc"#;
        assert_eq!(
            scan_request_prefix(body),
            (Some("claude-opus-4-5".into()), Some(true))
        );
        assert_eq!(
            scan_request_prefix(br#"{"messages":[{"content":"cut here"#),
            (None, None)
        );
        assert_eq!(
            scan_request_prefix(br#"{"model" : "gpt-4o", "stream": false"#),
            (Some("gpt-4o".into()), Some(false))
        );
    }

    #[test]
    fn providers_by_host() {
        assert_eq!(provider_for_host("api.openai.com"), Some("openai"));
        assert_eq!(
            provider_for_host("API.Anthropic.com:443"),
            Some("anthropic")
        );
        assert_eq!(
            provider_for_host("generativelanguage.googleapis.com"),
            Some("gemini")
        );
        assert_eq!(provider_for_host("openrouter.ai"), Some("openrouter"));
        assert_eq!(provider_for_host("api.groq.com"), Some("groq"));
        assert_eq!(provider_for_host("api.mistral.ai"), Some("mistral"));
        assert_eq!(provider_for_host("api.deepseek.com"), Some("deepseek"));
        assert_eq!(provider_for_host("api.x.ai"), Some("xai"));
        assert_eq!(
            provider_for_host("my-res.openai.azure.com"),
            Some("azure_openai")
        );
        assert_eq!(
            provider_for_host("my-res.cognitiveservices.azure.com:443"),
            Some("azure_openai")
        );
        assert_eq!(provider_for_host("openai.azure.com.evil.example"), None);
        assert_eq!(provider_for_host("api.together.xyz"), Some("together"));
        assert_eq!(
            provider_for_host("us-central1-aiplatform.googleapis.com"),
            Some("vertex_ai")
        );
        assert_eq!(
            provider_name(Api::GeminiGenerateContent, Some("127.0.0.1:9")),
            "gemini"
        );
        assert_eq!(
            provider_name(Api::OllamaChat, Some("localhost:11434")),
            "ollama"
        );
        assert_eq!(provider_name(Api::OpenAiResponses, None), "openai");
        assert_eq!(provider_for_host("127.0.0.1:8443"), None);
        assert_eq!(provider_for_host("[::1]:8443"), None);
        assert_eq!(
            provider_name(Api::AnthropicMessages, Some("localhost:9000")),
            "anthropic"
        );
        assert_eq!(provider_name(Api::OpenAiChat, Some("api.groq.com")), "groq");
        assert_eq!(provider_name(Api::OpenAiChat, None), "openai");
    }
}
