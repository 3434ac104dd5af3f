//! Anthropic Messages (`POST …/v1/messages`, query such as `?beta=true` allowed).
//!
//! Usage semantics: `input_tokens` EXCLUDES cache tokens, so OTel input is
//! `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`. In a stream,
//! `message_start` carries `message.usage` (and the model and id) and every `message_delta`
//! carries a CUMULATIVE usage: each field keeps the last value seen, nothing is summed.
//! The stream ends at `message_stop`.

use serde_json::Value;

use super::{Envelope, ResponseMeta, count};
use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

pub(crate) fn matches_path(path: &str) -> bool {
    path.ends_with("/v1/messages")
}

#[derive(Debug, Clone, Default)]
pub struct MessagesAccumulator {
    pub meta: ResponseMeta,
    input: Option<u64>,
    output: Option<u64>,
    cache_write: Option<u64>,
    cache_read: Option<u64>,
    cache_write_1h: Option<u64>,
}

/// SSE event types that never carry usage or ids: not even parsed.
const SKIPPED_EVENTS: [&str; 4] = [
    "content_block_delta",
    "content_block_start",
    "content_block_stop",
    "ping",
];

impl MessagesAccumulator {
    pub fn on_json_body(&mut self, body: &[u8]) {
        let Some(env) = Envelope::parse(body) else {
            self.meta.json_errors += 1;
            return;
        };
        if env.kind.as_ref().and_then(Value::as_str) == Some("error") || env.error.is_some() {
            self.meta.provider_errors += 1;
        }
        self.meta.take_ids(env.id.as_ref(), env.model.as_ref());
        if let Some(u) = &env.usage {
            self.take_usage(u);
        }
    }

    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        if event.event.is_some_and(|e| SKIPPED_EVENTS.contains(&e)) {
            return;
        }
        let Some(env) = Envelope::parse(event.data) else {
            if event.event == Some("error") {
                self.meta.provider_errors += 1;
            }
            self.meta.json_errors += 1;
            return;
        };
        let kind = env.kind.as_ref().and_then(Value::as_str).or(event.event);
        match kind {
            Some("message_start") => {
                if let Some(m) = &env.message {
                    self.meta.take_ids(m.get("id"), m.get("model"));
                    if let Some(u) = m.get("usage") {
                        self.take_usage(u);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = &env.usage {
                    self.take_usage(u);
                }
            }
            Some("message_stop") => self.meta.stream_done = true,
            Some("error") => self.meta.provider_errors += 1,
            _ => {}
        }
    }

    /// Each field present replaces the previous value (cumulative semantics).
    fn take_usage(&mut self, u: &Value) {
        if let Some(v) = count(u, "input_tokens") {
            self.input = Some(v);
        }
        if let Some(v) = count(u, "output_tokens") {
            self.output = Some(v);
        }
        if let Some(v) = count(u, "cache_creation_input_tokens") {
            self.cache_write = Some(v);
        }
        if let Some(v) = count(u, "cache_read_input_tokens") {
            self.cache_read = Some(v);
        }
        // `cache_creation` splits the writes by TTL; the 1-hour ones cost more.
        if let Some(v) = u
            .get("cache_creation")
            .and_then(|c| count(c, "ephemeral_1h_input_tokens"))
        {
            self.cache_write_1h = Some(v);
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let cache_write = self.cache_write.unwrap_or(0);
        let cache_read = self.cache_read.unwrap_or(0);
        Some(Usage {
            input_tokens: self.input.unwrap_or(0) + cache_write + cache_read,
            output_tokens: self.output.unwrap_or(0),
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            reasoning_tokens: 0,
            cache_write_1h_tokens: self.cache_write_1h.unwrap_or(0).min(cache_write),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::sse::SseParser;

    /// A recorded-shape Anthropic stream: cache tokens at start, cumulative deltas.
    pub(crate) const STREAM: &[u8] = b"event: message_start\r\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":4000,\"output_tokens\":1}}}\r\n\r\n\
event: content_block_start\r\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n\
event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
event: content_block_delta\r\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"private words\"}}\r\n\r\n\
event: message_delta\r\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":40}}\r\n\r\n\
event: message_delta\r\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":87}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

    pub(crate) fn expected_stream_usage() -> Usage {
        Usage {
            input_tokens: 5025,
            output_tokens: 87,
            cache_read_tokens: 4000,
            cache_write_tokens: 1000,
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
        }
    }

    #[test]
    fn anthropic_non_stream_usage() {
        let mut a = MessagesAccumulator::default();
        a.on_json_body(
            br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5",
            "content":[{"type":"text","text":"hidden"}],"stop_reason":"end_turn",
            "usage":{"input_tokens":12,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":45}}"#,
        );
        assert_eq!(
            a.usage(),
            Some(Usage {
                input_tokens: 3212,
                output_tokens: 45,
                cache_read_tokens: 3000,
                cache_write_tokens: 200,
                reasoning_tokens: 0,
                cache_write_1h_tokens: 0,
            })
        );
        assert_eq!(a.meta.response_id.as_deref(), Some("msg_1"));
        assert_eq!(a.meta.response_model.as_deref(), Some("claude-haiku-4-5"));
    }

    #[test]
    fn anthropic_stream_cumulative_at_every_split() {
        for i in 0..=STREAM.len() {
            let mut a = MessagesAccumulator::default();
            let mut p = SseParser::new(1 << 20);
            p.feed(&STREAM[..i], &mut |e| a.on_sse(e));
            p.feed(&STREAM[i..], &mut |e| a.on_sse(e));
            p.finish(&mut |e| a.on_sse(e));
            assert_eq!(a.usage(), Some(expected_stream_usage()), "split at {i}");
            assert!(a.meta.stream_done);
            assert_eq!(a.meta.response_id.as_deref(), Some("msg_01"));
            assert_eq!(a.meta.json_errors, 0);
        }
    }

    #[test]
    fn anthropic_error_event() {
        let mut a = MessagesAccumulator::default();
        let mut p = SseParser::new(1 << 20);
        p.feed(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            &mut |e| a.on_sse(e),
        );
        assert_eq!(a.meta.provider_errors, 1);
        assert_eq!(a.usage(), None);
    }
}
