//! Ollama's native API: `POST /api/chat` and `POST /api/generate`.
//!
//! Requests stream unless the body says `"stream": false`. A stream is NDJSON
//! (`application/x-ndjson`): one JSON object per line, the last with `"done": true` and the
//! counts; a non-streamed body is that last object alone. Usage: `prompt_eval_count` is the
//! input, `eval_count` the output (no cache or reasoning split is reported). Ollama may leave
//! `prompt_eval_count` out when the whole prompt came from its cache: input is then 0, as
//! reported. Errors are `{"error": "…"}` (a string), as a body or as a stream line.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{ResponseMeta, as_count};
use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

/// The fields read from a line; `message`, `response`, `context`… are skipped.
#[derive(Deserialize, Default)]
struct Probe {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    done: Option<Value>,
    #[serde(default)]
    prompt_eval_count: Option<Value>,
    #[serde(default)]
    eval_count: Option<Value>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

fn parse(data: &[u8]) -> Option<Probe> {
    super::json::object(data)
}

#[derive(Debug, Clone, Default)]
pub struct OllamaAccumulator {
    pub meta: ResponseMeta,
    usage: Option<Usage>,
}

impl OllamaAccumulator {
    pub fn on_json_body(&mut self, body: &[u8]) {
        self.take(body);
    }

    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        if event.data.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        // Content lines are most of a stream: once the model is known, only a line that may
        // end the stream or report an error is parsed.
        static DONE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"done\""));
        static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
        if self.meta.response_model.is_some()
            && !done_true(event.data, &DONE)
            && ERROR.find(event.data).is_none()
        {
            return;
        }
        self.take(event.data);
    }

    fn take(&mut self, data: &[u8]) {
        let Some(p) = parse(data) else {
            self.meta.json_errors += 1;
            return;
        };
        if p.error.is_some() {
            self.meta.provider_errors += 1;
        }
        self.meta.take_ids(None, p.model.as_ref());
        if p.done.as_ref().and_then(Value::as_bool) == Some(true) {
            self.meta.stream_done = true;
            let input = p.prompt_eval_count.as_ref().and_then(as_count);
            let output = p.eval_count.as_ref().and_then(as_count);
            if input.is_some() || output.is_some() {
                self.usage = Some(Usage {
                    input_tokens: input.unwrap_or(0),
                    output_tokens: output.unwrap_or(0),
                    ..Usage::default()
                });
            }
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

/// True if a `"done"` key (not escaped inside a string) has the value `true`.
fn done_true(data: &[u8], key: &Finder<'_>) -> bool {
    let key_len = key.needle().len();
    key.find_iter(data).any(|at| {
        if at > 0 && data[at - 1] == b'\\' {
            return false;
        }
        let mut rest = data[at + key_len..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b't')
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::streams::NdjsonSplitter;

    pub(crate) const CHAT_STREAM: &[u8] = b"{\"model\":\"llama3.2\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"The \\\"done\\\": true\"},\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2026-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\" sky\"},\"done\":false}\n\
{\"model\":\"llama3.2\",\"created_at\":\"2026-01-01T00:00:01Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_count\":26,\"prompt_eval_duration\":342546000,\"eval_count\":282,\"eval_duration\":4535599000}\n";

    pub(crate) const GENERATE_BODY: &[u8] = br#"{"model":"llama3.2","created_at":"2026-01-01T00:00:00Z","response":"private words","done":true,"done_reason":"stop","context":[1,2,3],"total_duration":5043500667,"prompt_eval_count":26,"eval_count":290}"#;

    #[test]
    fn ollama_non_stream_usage() {
        let mut a = OllamaAccumulator::default();
        a.on_json_body(GENERATE_BODY);
        assert_eq!(
            a.usage()
                .map(|u| (u.input_tokens, u.output_tokens, u.cache_read_tokens)),
            Some((26, 290, 0))
        );
        assert_eq!(a.meta.response_model.as_deref(), Some("llama3.2"));
    }

    #[test]
    fn ollama_ndjson_stream_at_every_split() {
        for i in 0..=CHAT_STREAM.len() {
            let mut a = OllamaAccumulator::default();
            let mut p = NdjsonSplitter::new(1 << 20);
            p.feed(&CHAT_STREAM[..i], &mut |e| a.on_sse(e));
            p.feed(&CHAT_STREAM[i..], &mut |e| a.on_sse(e));
            p.finish(&mut |e| a.on_sse(e));
            assert_eq!(
                a.usage().map(|u| (u.input_tokens, u.output_tokens)),
                Some((26, 282)),
                "split at {i}"
            );
            assert!(a.meta.stream_done);
            assert_eq!(a.meta.json_errors, 0);
        }
    }

    #[test]
    fn ollama_truncated_and_errors() {
        let cut = CHAT_STREAM.len() - 40;
        let mut a = OllamaAccumulator::default();
        let mut p = NdjsonSplitter::new(1 << 20);
        p.feed(&CHAT_STREAM[..cut], &mut |e| a.on_sse(e));
        p.finish(&mut |e| a.on_sse(e));
        assert_eq!(a.usage(), None);
        assert!(!a.meta.stream_done);
        assert_eq!(a.meta.json_errors, 1, "the cut line");
        let mut a = OllamaAccumulator::default();
        a.on_json_body(br#"{"error":"model 'nope' not found"}"#);
        assert_eq!((a.usage(), a.meta.provider_errors), (None, 1));
        a.on_sse(SseEvent {
            event: None,
            data: br#"{"error":"an error was encountered while running the model"}"#,
        });
        assert_eq!(a.meta.provider_errors, 2);
    }
}
