use serde::{Deserialize, Serialize};

use crate::accounting::{Usage, UsageSource};

/// A request recognised as an LLM API call (known by shape), once it has been fully written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// Named by host where known (`api.openai.com` → `openai`), else by API family.
    pub provider: String,
    /// `chat.completions`, `messages`, …
    pub api: String,
    /// The `Host` header (or `:authority`), as sent.
    pub server_address: Option<String>,
    pub model: Option<String>,
    pub streaming: bool,
    /// `"1.1"`, later `"2"`.
    pub http_version: String,
    /// Boot-clock nanoseconds of the request's first byte.
    pub started_at_ns: u64,
    pub request_bytes: u64,
}

impl LlmRequest {
    /// A request known only to have started at `ts_ns`, named `label` for provider and API
    /// (empty for a session root's marker; `unknown` for a hold whose bytes were never read).
    pub fn unidentified(label: &str, ts_ns: u64) -> LlmRequest {
        LlmRequest {
            provider: label.into(),
            api: label.into(),
            server_address: None,
            model: None,
            streaming: false,
            http_version: String::new(),
            started_at_ns: ts_ns,
            request_bytes: 0,
        }
    }
}

/// One finished LLM call: request, response status and usage. No prompt or completion text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    pub request: LlmRequest,
    /// HTTP status; `None` when no response head was seen.
    pub status: Option<u16>,
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    /// Zero usage with `usage_source = Missing` when the response carried none.
    pub usage: Usage,
    pub usage_source: UsageSource,
    /// The response was seen to its end (not truncated, lost or cut by a closed connection).
    pub complete: bool,
    /// Boot-clock nanoseconds of the response's last byte (or of the moment the call was given up).
    pub ended_at_ns: u64,
    pub response_bytes: u64,
    /// `usage_source = Estimated`: the bounds of the estimate.
    pub estimate: Option<crate::accounting::Estimate>,
}
