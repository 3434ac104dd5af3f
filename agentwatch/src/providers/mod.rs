//! LLM APIs recognised by request shape; each turns a request and a response into an [`LlmCall`].
//!
//! Shape: one [`Api`] enum variant per wire API (not per vendor — many vendors and gateways
//! speak the OpenAI or Anthropic shapes), with three questions asked of it:
//! [`Api::for_request`] (method + path), [`Api::request_info`] (the JSON body must carry a
//! string `model`) and [`Api::accumulator`], a per-response state machine fed either the whole
//! JSON body or SSE events one at a time. Adding the Responses API, Gemini or Ollama means one
//! more variant, one more module and one more accumulator variant; the capture layer does not
//! change. An enum (not `dyn Trait`) keeps dispatch static and allocation-free per call.
//!
//! Bodies are read with typed `serde` envelopes that name only the metadata fields (`model`,
//! `id`, `usage`, …): prompt and completion text is skipped by the deserializer, never copied.
//! The vendor name ([`provider_for_host`]) comes from the `Host` header where it is known,
//! else the API family.

pub mod anthropic;
pub mod call;
pub mod openai;

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
    /// `POST …/chat/completions`.
    OpenAiChat,
    /// `POST …/v1/messages`.
    AnthropicMessages,
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
    pub const ALL: [Api; 2] = [Api::OpenAiChat, Api::AnthropicMessages];

    /// The `api` field of calls.
    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "chat.completions",
            Api::AnthropicMessages => "messages",
        }
    }

    /// The provider named when the host is not a known vendor (a gateway, a local mock).
    pub fn family(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai",
            Api::AnthropicMessages => "anthropic",
        }
    }

    /// The API whose method and path this request has, if any.
    pub fn for_request(method: &str, path: &str) -> Option<Api> {
        if method != "POST" {
            return None;
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        Self::ALL.into_iter().find(|api| match api {
            Api::OpenAiChat => openai::matches_path(path),
            Api::AnthropicMessages => anthropic::matches_path(path),
        })
    }

    /// Reads the request body: it must be a JSON object with a string `model`.
    pub fn request_info(self, body: &[u8]) -> Result<RequestInfo, ProviderError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ProviderError::InvalidJson { line: 1, column: 1 });
        }
        let probe: RequestProbe =
            serde_json::from_slice(body).map_err(|e| ProviderError::InvalidJson {
                line: e.line(),
                column: e.column(),
            })?;
        let Some(Value::String(model)) = probe.model else {
            return Err(ProviderError::NoModel);
        };
        let include_usage = probe
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(RequestInfo {
            model,
            streaming: probe.stream.as_ref().and_then(Value::as_bool) == Some(true),
            include_usage: matches!(self, Api::OpenAiChat) && include_usage,
        })
    }

    /// A fresh response accumulator for one call of this API.
    pub fn accumulator(self) -> Accumulator {
        match self {
            Api::OpenAiChat => Accumulator::OpenAiChat(openai::ChatAccumulator::default()),
            Api::AnthropicMessages => {
                Accumulator::AnthropicMessages(anthropic::MessagesAccumulator::default())
            }
        }
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
        let first = data.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(data).ok()
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

/// Per-response usage state, one variant per [`Api`].
#[derive(Debug, Clone)]
pub enum Accumulator {
    OpenAiChat(openai::ChatAccumulator),
    AnthropicMessages(anthropic::MessagesAccumulator),
}

impl Accumulator {
    /// A complete non-streamed body (or an error body).
    pub fn on_json_body(&mut self, body: &[u8]) {
        match self {
            Accumulator::OpenAiChat(a) => a.on_json_body(body),
            Accumulator::AnthropicMessages(a) => a.on_json_body(body),
        }
    }

    /// One SSE event of a streamed body.
    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        match self {
            Accumulator::OpenAiChat(a) => a.on_sse(event),
            Accumulator::AnthropicMessages(a) => a.on_sse(event),
        }
    }

    /// Usage so far; `None` if the response reported none.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Accumulator::OpenAiChat(a) => a.usage(),
            Accumulator::AnthropicMessages(a) => a.usage(),
        }
    }

    pub fn meta(&self) -> &ResponseMeta {
        match self {
            Accumulator::OpenAiChat(a) => &a.meta,
            Accumulator::AnthropicMessages(a) => &a.meta,
        }
    }
}

/// Reads a token count: a non-negative integer (a float with no fraction is tolerated).
pub(crate) fn count(obj: &Value, key: &str) -> Option<u64> {
    let v = obj.get(key)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e15)
            .map(|f| f as u64)
    })
}

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
    Some(match name.as_str() {
        "api.openai.com" => "openai",
        "api.anthropic.com" => "anthropic",
        "generativelanguage.googleapis.com" => "gemini",
        "openrouter.ai" => "openrouter",
        "api.groq.com" => "groq",
        "api.mistral.ai" => "mistral",
        "api.deepseek.com" => "deepseek",
        "api.x.ai" => "xai",
        _ => return None,
    })
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
        assert_eq!(Api::for_request("POST", "/v1/embeddings"), None);
        assert_eq!(Api::for_request("POST", "/v1/completions"), None);
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
