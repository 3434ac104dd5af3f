use serde::{Deserialize, Serialize};

/// Token usage of one call, with OpenTelemetry GenAI semantics:
/// `input_tokens` includes cache-read and cache-write tokens, `output_tokens` includes
/// reasoning tokens; the parts are also kept on their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// Of `cache_write_tokens`, those written with Anthropic's 1-hour TTL (priced higher).
    #[serde(default)]
    pub cache_write_1h_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Saturating: totals of absurd reported counts stay at the maximum instead of wrapping
    /// (a wrapped total would let a session slip under its token ceiling).
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.reasoning_tokens = self.reasoning_tokens.saturating_add(other.reasoning_tokens);
        self.cache_write_1h_tokens = self
            .cache_write_1h_tokens
            .saturating_add(other.cache_write_1h_tokens);
    }
}

/// How a call's usage was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The provider reported it in the response.
    #[default]
    Reported,
    /// The response ended (or was lost) without usage.
    Missing,
    /// Not seen in plaintext (no hook covers the TLS): estimated from bytes on the socket,
    /// within the call's `estimate` bounds.
    Estimated,
}

/// The bounds of an estimated call's tokens, and what they rest on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub input_tokens_low: u64,
    pub input_tokens_high: u64,
    /// Output tokens are not estimated (`output_tokens` is 0): response bytes on the wire say
    /// too little about them (event framing, compression).
    pub output_unknown: bool,
    /// How it was measured, e.g. `SNI api.openai.com; 41234 bytes sent`.
    pub basis: String,
    /// The most the input could have cost: `input_tokens_high` at the highest input rate
    /// of the price table (the model is unknown). Ceilings charge this; output is not in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_high: Option<f64>,
}

#[cfg(test)]
mod saturation_tests {
    use super::Usage;

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let big = Usage {
            input_tokens: u64::MAX - 1,
            output_tokens: 5,
            ..Default::default()
        };
        let mut total = big;
        total.add(&big);
        assert_eq!(total.input_tokens, u64::MAX);
        assert_eq!(total.output_tokens, 10);
        assert_eq!(total.total_tokens(), u64::MAX);
    }
}
