//! OpenAI Responses API (`POST …/responses`; also Azure `/openai/v1/responses` and the
//! gateways that speak it).
//!
//! Usage semantics: `usage.input_tokens` already includes `input_tokens_details.cached_tokens`
//! and `usage.output_tokens` already includes `output_tokens_details.reasoning_tokens`, so they
//! map straight onto OTel input/output. A non-streamed body is the `response` object itself.
//! A stream is a sequence of typed SSE events (`response.created`, `response.in_progress`,
//! `response.output_text.delta`, …); the usage arrives only in the terminal event
//! (`response.completed`, or `response.incomplete` / `response.failed`), inside its
//! `response` object. There is no `[DONE]`: the terminal event ends the stream.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{ResponseMeta, count};
use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

pub(crate) fn matches_path(path: &str) -> bool {
    path.ends_with("/responses")
}

/// Stream events that end the response (and carry the final `response` object).
const TERMINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Events read at all; every other (deltas, item and part events: the bulk of a stream, and
/// the only ones with text) is skipped unparsed when the SSE `event:` name says what it is.
const READ: [&str; 7] = [
    "response.created",
    "response.in_progress",
    "response.queued",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
];

/// A `response` object, or a stream event wrapping one. Only metadata fields are named;
/// `output`, `instructions`, `tools`… are skipped by the deserializer.
#[derive(Deserialize, Default)]
struct Probe {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    response: Option<ResponseProbe>,
}

#[derive(Deserialize, Default)]
struct ResponseProbe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

fn parse(data: &[u8]) -> Option<Probe> {
    super::json::object(data)
}

#[derive(Debug, Clone, Default)]
pub struct ResponsesAccumulator {
    pub meta: ResponseMeta,
    usage: Option<Usage>,
}

impl ResponsesAccumulator {
    pub fn on_json_body(&mut self, body: &[u8]) {
        let Some(p) = parse(body) else {
            self.meta.json_errors += 1;
            return;
        };
        if p.error.is_some() {
            self.meta.provider_errors += 1;
        }
        self.meta.take_ids(p.id.as_ref(), p.model.as_ref());
        if let Some(u) = p.usage.as_ref().and_then(parse_usage) {
            self.usage = Some(u);
        }
    }

    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        if event.event.is_some_and(|e| !READ.contains(&e)) {
            return;
        }
        let Some(p) = parse(event.data) else {
            if event.event == Some("error") {
                self.meta.provider_errors += 1;
            }
            self.meta.json_errors += 1;
            return;
        };
        let kind = p.kind.as_deref().or(event.event);
        if kind == Some("error") {
            self.meta.provider_errors += 1;
            return;
        }
        if let Some(r) = &p.response {
            self.meta.take_ids(r.id.as_ref(), r.model.as_ref());
            if let Some(u) = r.usage.as_ref().and_then(parse_usage) {
                self.usage = Some(u);
            }
            if kind == Some("response.failed") || r.error.is_some() {
                self.meta.provider_errors += 1;
            }
        }
        if kind.is_some_and(|k| TERMINAL.contains(&k)) {
            self.meta.stream_done = true;
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

fn parse_usage(u: &Value) -> Option<Usage> {
    let input = count(u, "input_tokens");
    let output = count(u, "output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let cached = u
        .get("input_tokens_details")
        .and_then(|d| count(d, "cached_tokens"))
        .unwrap_or(0);
    let reasoning = u
        .get("output_tokens_details")
        .and_then(|d| count(d, "reasoning_tokens"))
        .unwrap_or(0);
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        output_tokens: output.unwrap_or(0),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
        ..Usage::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::sse::SseParser;

    pub(crate) const BODY: &[u8] = br#"{"id":"resp_01","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"model":"gpt-5-mini-2025-08-07","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"private words","annotations":[]}]}],"parallel_tool_calls":true,"tools":[],"usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":256},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":32},"total_tokens":380},"user":null,"metadata":{}}"#;

    pub(crate) const STREAM: &[u8] = b"event: response.created\n\
data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_02\",\"object\":\"response\",\"status\":\"in_progress\",\"error\":null,\"model\":\"gpt-4o-mini-2024-07-18\",\"output\":[],\"usage\":null}}\n\n\
event: response.in_progress\n\
data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_02\",\"object\":\"response\",\"status\":\"in_progress\",\"error\":null,\"model\":\"gpt-4o-mini-2024-07-18\",\"output\":[],\"usage\":null}}\n\n\
event: response.output_item.added\n\
data: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"msg_2\",\"type\":\"message\",\"status\":\"in_progress\",\"content\":[],\"role\":\"assistant\"}}\n\n\
event: response.output_text.delta\n\
data: {\"type\":\"response.output_text.delta\",\"sequence_number\":3,\"item_id\":\"msg_2\",\"output_index\":0,\"content_index\":0,\"delta\":\"secret \\\"usage\\\": {\"}\n\n\
event: response.output_text.done\n\
data: {\"type\":\"response.output_text.done\",\"sequence_number\":4,\"item_id\":\"msg_2\",\"output_index\":0,\"content_index\":0,\"text\":\"secret\"}\n\n\
event: response.completed\n\
data: {\"type\":\"response.completed\",\"sequence_number\":5,\"response\":{\"id\":\"resp_02\",\"object\":\"response\",\"status\":\"completed\",\"error\":null,\"model\":\"gpt-4o-mini-2024-07-18\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"secret\"}]}],\"usage\":{\"input_tokens\":1200,\"input_tokens_details\":{\"cached_tokens\":1024},\"output_tokens\":300,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":1500}}}\n\n";

    pub(crate) fn stream_usage() -> Usage {
        Usage {
            input_tokens: 1200,
            output_tokens: 300,
            cache_read_tokens: 1024,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cache_write_1h_tokens: 0,
        }
    }

    #[test]
    fn responses_non_stream_usage() {
        let mut a = ResponsesAccumulator::default();
        a.on_json_body(BODY);
        assert_eq!(
            a.usage(),
            Some(Usage {
                input_tokens: 328,
                output_tokens: 52,
                cache_read_tokens: 256,
                cache_write_tokens: 0,
                reasoning_tokens: 32,
                cache_write_1h_tokens: 0,
            })
        );
        assert_eq!(a.meta.response_id.as_deref(), Some("resp_01"));
        assert_eq!(
            a.meta.response_model.as_deref(),
            Some("gpt-5-mini-2025-08-07")
        );
        assert_eq!(a.meta.provider_errors, 0);
    }

    #[test]
    fn responses_stream_at_every_split() {
        for i in 0..=STREAM.len() {
            let mut a = ResponsesAccumulator::default();
            let mut p = SseParser::new(1 << 20);
            p.feed(&STREAM[..i], &mut |e| a.on_sse(e));
            p.feed(&STREAM[i..], &mut |e| a.on_sse(e));
            p.finish(&mut |e| a.on_sse(e));
            assert_eq!(a.usage(), Some(stream_usage()), "split at {i}");
            assert!(a.meta.stream_done);
            assert_eq!(a.meta.response_id.as_deref(), Some("resp_02"));
            assert_eq!((a.meta.json_errors, a.meta.provider_errors), (0, 0));
        }
    }

    #[test]
    fn responses_truncated_stream_has_no_usage() {
        let cut = STREAM.len() / 2;
        let mut a = ResponsesAccumulator::default();
        let mut p = SseParser::new(1 << 20);
        p.feed(&STREAM[..cut], &mut |e| a.on_sse(e));
        assert_eq!(a.usage(), None);
        assert!(!a.meta.stream_done);
    }

    #[test]
    fn responses_errors_and_garbage() {
        let mut a = ResponsesAccumulator::default();
        a.on_json_body(br#"{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}"#);
        assert_eq!((a.usage(), a.meta.provider_errors), (None, 1));
        a.on_json_body(b"{\"id\": \"resp_");
        assert_eq!(a.meta.json_errors, 1);
        let mut a = ResponsesAccumulator::default();
        a.on_sse(SseEvent {
            event: Some("error"),
            data: br#"{"type":"error","code":"server_error","message":"x","param":null,"sequence_number":3}"#,
        });
        a.on_sse(SseEvent {
            event: Some("response.failed"),
            data: br#"{"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"server_error","message":"x"},"usage":null}}"#,
        });
        assert_eq!(a.meta.provider_errors, 2);
        assert!(a.meta.stream_done);
        assert_eq!(a.usage(), None);
        // Without event names every event is parsed; the result is the same.
        let mut a = ResponsesAccumulator::default();
        let mut p = SseParser::new(1 << 20);
        let unnamed: Vec<u8> = String::from_utf8_lossy(STREAM)
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        p.feed(&unnamed, &mut |e| a.on_sse(e));
        assert_eq!(a.usage(), Some(stream_usage()));
        assert!(a.meta.stream_done);
    }
}
