//! OpenAI Chat Completions (`POST …/chat/completions`), also spoken by most gateways and
//! OpenAI-compatible servers.
//!
//! Usage semantics: `prompt_tokens` already includes `prompt_tokens_details.cached_tokens`,
//! and `completion_tokens` already includes `completion_tokens_details.reasoning_tokens`, so
//! they map straight onto OTel input/output. A streamed response carries usage only in a final
//! chunk (empty `choices`) when the request set `stream_options.include_usage`; some compatible
//! servers repeat a running usage in every chunk, so the *last* usage object wins.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

use super::{Envelope, ResponseMeta, count};
use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

pub(crate) fn matches_path(path: &str) -> bool {
    path.ends_with("/chat/completions")
}

/// Legacy text completions (`/v1/completions`, Azure `…/deployments/{d}/completions`, FIM
/// endpoints): the same `usage` object as chat.
pub(crate) fn matches_completions_path(path: &str) -> bool {
    path.ends_with("/completions") && !path.ends_with("/chat/completions")
}

/// Embeddings: `usage` has `prompt_tokens` (and `total_tokens`) only. Ollama's deprecated
/// `/api/embeddings` reports no usage at all and is not counted.
pub(crate) fn matches_embeddings_path(path: &str) -> bool {
    path.ends_with("/embeddings") && !path.ends_with("/api/embeddings")
}

/// The deployment of an Azure OpenAI path (`/openai/deployments/{deployment}/…`): Azure bodies
/// may omit `model`, the deployment names it.
pub(crate) fn azure_deployment(path: &str) -> Option<&str> {
    let (_, rest) = path.split_once("/openai/deployments/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

#[derive(Debug, Clone, Default)]
pub struct ChatAccumulator {
    pub meta: ResponseMeta,
    usage: Option<Usage>,
}

impl ChatAccumulator {
    pub fn on_json_body(&mut self, body: &[u8]) {
        match Envelope::parse(body) {
            Some(env) => self.take(&env),
            None => self.meta.json_errors += 1,
        }
    }

    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        if event.data.trim_ascii() == b"[DONE]" {
            self.meta.stream_done = true;
            return;
        }
        let error_event = event.event == Some("error");
        if !error_event && !self.worth_parsing(event.data) {
            return;
        }
        match Envelope::parse(event.data) {
            Some(env) => {
                // An `error` event counts once, with or without an `error` object inside.
                if error_event && env.error.is_none() {
                    self.meta.provider_errors += 1;
                }
                self.take(&env);
            }
            None => {
                if error_event {
                    self.meta.provider_errors += 1;
                }
                self.meta.json_errors += 1;
            }
        }
    }

    /// Content chunks are most of a stream and carry nothing kept here: once the response's
    /// id and model are known, a chunk is parsed only if it may hold usage or an error.
    /// (A false positive only costs a parse; JSON cannot hide a key from this scan except
    /// through `\u` escapes in key names, which no server sends.)
    fn worth_parsing(&self, data: &[u8]) -> bool {
        if self.meta.response_id.is_none() || self.meta.response_model.is_none() {
            return true;
        }
        static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
        static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
        has_object_value(data, &USAGE) || ERROR.find(data).is_some()
    }

    fn take(&mut self, env: &Envelope) {
        self.meta.take_ids(env.id.as_ref(), env.model.as_ref());
        if env.error.is_some() {
            self.meta.provider_errors += 1;
        }
        if let Some(u) = env.usage.as_ref().and_then(parse_usage) {
            self.usage = Some(u);
        }
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

fn parse_usage(u: &Value) -> Option<Usage> {
    let prompt = count(u, "prompt_tokens");
    let completion = count(u, "completion_tokens");
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let cached = u
        .get("prompt_tokens_details")
        .and_then(|d| count(d, "cached_tokens"))
        .unwrap_or(0);
    let reasoning = u
        .get("completion_tokens_details")
        .and_then(|d| count(d, "reasoning_tokens"))
        .unwrap_or(0);
    Some(Usage {
        input_tokens: prompt.unwrap_or(0),
        output_tokens: completion.unwrap_or(0),
        cache_read_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
        ..Usage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sse::SseParser;

    #[test]
    fn openai_non_stream_usage() {
        let mut a = ChatAccumulator::default();
        a.on_json_body(
            br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18",
            "choices":[{"index":0,"message":{"role":"assistant","content":"secret text"}}],
            "usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,
            "prompt_tokens_details":{"cached_tokens":1024},
            "completion_tokens_details":{"reasoning_tokens":128}}}"#,
        );
        assert_eq!(
            a.usage(),
            Some(Usage {
                input_tokens: 1200,
                output_tokens: 300,
                cache_read_tokens: 1024,
                cache_write_tokens: 0,
                reasoning_tokens: 128,
                cache_write_1h_tokens: 0,
            })
        );
        assert_eq!(a.meta.response_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(
            a.meta.response_model.as_deref(),
            Some("gpt-4o-mini-2024-07-18")
        );
    }

    #[test]
    fn openai_error_body_and_garbage() {
        let mut a = ChatAccumulator::default();
        a.on_json_body(br#"{"error":{"message":"rate limited","type":"requests"}}"#);
        assert_eq!(a.usage(), None);
        assert_eq!(a.meta.provider_errors, 1);
        a.on_json_body(b"<html>bad gateway</html>");
        assert_eq!(a.meta.json_errors, 1);
    }

    #[test]
    fn openai_stream_usage_last_chunk() {
        let stream = b"data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
            data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        let mut a = ChatAccumulator::default();
        let mut p = SseParser::new(1 << 20);
        p.feed(stream, &mut |e| a.on_sse(e));
        assert!(a.meta.stream_done);
        assert_eq!(
            a.usage().map(|u| (u.input_tokens, u.output_tokens)),
            Some((10, 2))
        );
    }
}

/// True if the finder's key (a quoted JSON key) occurs, not escaped inside a string, with an
/// object value.
fn has_object_value(data: &[u8], key: &Finder<'_>) -> bool {
    let key_len = key.needle().len();
    key.find_iter(data).any(|at| {
        if at > 0 && data[at - 1] == b'\\' {
            return false;
        }
        let mut rest = data[at + key_len..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    fn usage() -> Finder<'static> {
        Finder::new(b"\"usage\"")
    }

    #[test]
    fn usage_objects_are_found_and_null_or_escaped_ones_skipped() {
        assert!(has_object_value(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            &usage()
        ));
        assert!(has_object_value(
            br#"{"usage" :  {"prompt_tokens":1}}"#,
            &usage()
        ));
        assert!(!has_object_value(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#,
            &usage()
        ));
        assert!(!has_object_value(
            br#"{"delta":{"content":"say \"usage\": {"}}"#,
            &usage()
        ));
    }

    #[test]
    fn content_chunks_after_the_first_are_skipped_but_usage_is_kept() {
        let mut acc = ChatAccumulator::default();
        let ev = |data: &'static [u8]| SseEvent { event: None, data };
        acc.on_sse(ev(br#"{"id":"c1","model":"gpt-4o-mini","choices":[{"delta":{"role":"assistant"}}],"usage":null}"#));
        acc.on_sse(ev(br#"{"id":"c1","model":"gpt-4o-mini","choices":[{"delta":{"content":"hi"}}],"usage":null}"#));
        acc.on_sse(ev(br#"{"id":"c1","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}}"#));
        acc.on_sse(ev(b"[DONE]"));
        let u = acc.usage().expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens), (10, 4));
        assert_eq!(acc.meta.response_id.as_deref(), Some("c1"));
        assert!(acc.meta.stream_done);
    }
}
