//! Token usage: the deterministic per-call numbers, the `x-mock-usage`
//! override, and the conversion between OTel-normalised numbers and each
//! provider's native fields.

use serde::{Deserialize, Serialize};

/// OTel-normalised usage (gen_ai semantic conventions):
/// `input_tokens` includes cached and cache-written tokens, `output_tokens`
/// includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Of `cache_write_tokens`, those with Anthropic's 1-hour TTL (`cache_creation`'s
    /// `ephemeral_1h_input_tokens`); other providers do not report it.
    pub cache_write_1h_tokens: u64,
}

/// The provider whose native usage fields a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    /// Gemini `usageMetadata`: thoughts outside candidates, no cache writes.
    Gemini,
    /// Ollama: prompt and eval counts only.
    Ollama,
}

/// OpenAI Chat Completions native usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiUsage {
    /// Includes cached tokens.
    pub prompt_tokens: u64,
    /// Includes reasoning tokens.
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// `prompt_tokens_details.cache_write_tokens`: only sent when nonzero
    /// (set through `x-mock-usage`).
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl OpenAiUsage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// From OTel numbers.
    pub fn from_otel(u: &Usage) -> Self {
        OpenAiUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }
    }

    /// Back to OTel numbers, exactly as carried.
    pub fn to_otel(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cache_read_tokens: self.cached_tokens,
            cache_write_tokens: self.cache_write_tokens,
            reasoning_tokens: self.reasoning_tokens,
            cache_write_1h_tokens: 0,
        }
    }
}

/// Anthropic Messages native usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnthropicUsage {
    /// EXCLUDES cache-read and cache-creation tokens.
    pub input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub output_tokens: u64,
    /// `output_tokens_details.thinking_tokens` (part of output_tokens): only
    /// sent when nonzero (set through `x-mock-usage` reasoning_tokens).
    pub thinking_tokens: u64,
    /// Of `cache_creation_input_tokens`, those written with the 1-hour TTL.
    pub cache_creation_1h: u64,
}

impl AnthropicUsage {
    /// From OTel numbers: input_tokens = input - cache_read - cache_write
    /// (saturating); reasoning tokens become `thinking_tokens`.
    pub fn from_otel(u: &Usage) -> Self {
        AnthropicUsage {
            input_tokens: u
                .input_tokens
                .saturating_sub(u.cache_read_tokens.saturating_add(u.cache_write_tokens)),
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            output_tokens: u.output_tokens,
            thinking_tokens: u.reasoning_tokens,
            cache_creation_1h: u.cache_write_1h_tokens.min(u.cache_write_tokens),
        }
    }

    pub fn to_otel(&self) -> Usage {
        Usage {
            input_tokens: self
                .input_tokens
                .saturating_add(self.cache_creation_input_tokens)
                .saturating_add(self.cache_read_input_tokens),
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
            reasoning_tokens: self.thinking_tokens,
            cache_write_1h_tokens: self.cache_creation_1h,
        }
    }
}

/// Whether an OpenAI model name is a reasoning model (reports reasoning tokens).
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    m.starts_with('o') || m.starts_with("gpt-5")
}

/// The deterministic usage of call number `seq` (1-based) whose request body
/// had `body_len` bytes. Every part that the provider can carry is nonzero.
pub fn deterministic(provider: Provider, model: &str, seq: u64, body_len: usize) -> Usage {
    let input = 12u64
        .saturating_add(body_len as u64 / 4)
        .saturating_add(seq.saturating_mul(3));
    let cache_read = (input / 4).max(1);
    let output = 16u64.saturating_add(seq.saturating_mul(5));
    match provider {
        Provider::OpenAi => Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: 0,
            reasoning_tokens: if is_reasoning_model(model) {
                output / 2
            } else {
                0
            },
            cache_write_1h_tokens: 0,
        },
        Provider::Anthropic => Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: (input / 8).max(1),
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
        },
        Provider::Gemini => Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: 0,
            reasoning_tokens: output / 3,
            cache_write_1h_tokens: 0,
        },
        Provider::Ollama => Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
    }
}

/// Parses an `x-mock-usage` header value (missing fields are 0).
pub fn parse_override(v: &str) -> Result<Usage, String> {
    serde_json::from_str::<Usage>(v).map_err(|e| format!("invalid x-mock-usage header: {e}"))
}

/// The usage as the response will carry it, normalised back to OTel numbers.
pub fn as_carried(provider: Provider, u: &Usage) -> Usage {
    match provider {
        Provider::OpenAi => OpenAiUsage::from_otel(u).to_otel(),
        Provider::Anthropic => AnthropicUsage::from_otel(u).to_otel(),
        Provider::Gemini => Usage {
            output_tokens: u.output_tokens.max(u.reasoning_tokens),
            cache_write_tokens: 0,
            ..*u
        },
        Provider::Ollama => Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            ..Usage::default()
        },
    }
}
