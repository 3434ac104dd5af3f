//! Google Gemini `generateContent` / `streamGenerateContent`
//! (`POST /v1beta/models/{model}:generateContent`; Vertex AI's
//! `…/publishers/google/models/{model}:…` has the same shape).
//!
//! The model is in the PATH, not the body. `:streamGenerateContent?alt=sse` streams SSE
//! events; without `alt=sse` the stream is one JSON array sent element by element
//! (`[{…}\r\n,{…}\r\n]`). Every element, event or whole body is a `GenerateContentResponse`.
//!
//! Usage semantics (`usageMetadata`): `promptTokenCount` already includes
//! `cachedContentTokenCount`; `thoughtsTokenCount` is OUTSIDE `candidatesTokenCount`, so OTel
//! output = candidates + thoughts and reasoning = thoughts; `toolUsePromptTokenCount` (tokens
//! of tool results the server fed back) is outside the prompt too and counted as input.
//! Streamed chunks repeat a running `usageMetadata` (often the prompt count alone); the final
//! chunk, the one with a `finishReason`, has the whole. A stream cut before that chunk has no
//! usage (`missing`), rather than a partial count taken for the whole.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::{ResponseMeta, count};
use crate::accounting::Usage;
use crate::protocol::sse::SseEvent;

/// `(model, streaming)` of a `…/models/{model}:generateContent` or `:streamGenerateContent`
/// path.
pub(crate) fn match_path(path: &str) -> Option<(String, bool)> {
    let (head, verb) = path.rsplit_once(':')?;
    let streaming = match verb {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let (_, model) = head.rsplit_once("/models/")?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some((model.to_string(), streaming))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    usage_metadata: Option<Value>,
    #[serde(default)]
    model_version: Option<Value>,
    #[serde(default)]
    response_id: Option<Value>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    /// Only `finishReason` is read; `content` (the text) is skipped.
    #[serde(default)]
    candidates: Option<Vec<CandidateProbe>>,
    #[serde(default)]
    prompt_feedback: Option<FeedbackProbe>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CandidateProbe {
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FeedbackProbe {
    #[serde(default)]
    block_reason: Option<IgnoredAny>,
}

fn parse(data: &[u8]) -> Option<Probe> {
    super::json::object(data)
}

#[derive(Debug, Clone, Default)]
pub struct GenerateAccumulator {
    pub meta: ResponseMeta,
    /// The last `usageMetadata` seen.
    running: Option<Usage>,
    /// The response said it was finished (a `finishReason`, a blocked prompt, or a whole body).
    finished: bool,
}

impl GenerateAccumulator {
    pub fn on_json_body(&mut self, body: &[u8]) {
        // A whole body is the whole response, finished or not.
        if self.take(body, false) {
            self.finished = true;
        }
    }

    pub fn on_sse(&mut self, event: SseEvent<'_>) {
        self.take(event.data, event.event == Some("error"));
    }

    /// Reads one response object; false if it was not one.
    fn take(&mut self, data: &[u8], error_event: bool) -> bool {
        let Some(p) = parse(data) else {
            if error_event {
                self.meta.provider_errors += 1;
            }
            self.meta.json_errors += 1;
            return false;
        };
        if p.error.is_some() || error_event {
            self.meta.provider_errors += 1;
        }
        self.meta
            .take_ids(p.response_id.as_ref(), p.model_version.as_ref());
        if let Some(u) = p.usage_metadata.as_ref().and_then(parse_usage) {
            self.running = Some(u);
        }
        let finish = p
            .candidates
            .as_ref()
            .is_some_and(|c| c.iter().any(|c| c.finish_reason.is_some()));
        let blocked = p
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
        if finish || blocked {
            self.finished = true;
        }
        true
    }

    pub fn usage(&self) -> Option<Usage> {
        self.running.filter(|_| self.finished)
    }
}

fn parse_usage(u: &Value) -> Option<Usage> {
    let prompt = count(u, "promptTokenCount");
    let candidates = count(u, "candidatesTokenCount");
    let thoughts = count(u, "thoughtsTokenCount");
    if prompt.is_none() && candidates.is_none() && thoughts.is_none() {
        return None;
    }
    let tool_prompt = count(u, "toolUsePromptTokenCount").unwrap_or(0);
    let thoughts = thoughts.unwrap_or(0);
    Some(Usage {
        input_tokens: prompt.unwrap_or(0) + tool_prompt,
        output_tokens: candidates.unwrap_or(0) + thoughts,
        cache_read_tokens: count(u, "cachedContentTokenCount").unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        ..Usage::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capture::streams::JsonArraySplitter;
    use crate::protocol::sse::SseParser;

    pub(crate) const BODY: &[u8] = br#"{
  "candidates": [{"content": {"parts": [{"text": "private words"}], "role": "model"},
                  "finishReason": "STOP", "index": 0}],
  "usageMetadata": {"promptTokenCount": 4000, "candidatesTokenCount": 120, "totalTokenCount": 4420,
                    "cachedContentTokenCount": 3000, "thoughtsTokenCount": 300,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 4000}]},
  "modelVersion": "gemini-2.5-flash",
  "responseId": "abc123"
}"#;

    pub(crate) fn body_usage() -> Usage {
        Usage {
            input_tokens: 4000,
            output_tokens: 420,
            cache_read_tokens: 3000,
            cache_write_tokens: 0,
            reasoning_tokens: 300,
            cache_write_1h_tokens: 0,
        }
    }

    fn chunk(text: &str, last: bool) -> String {
        let usage = if last {
            r#"{"promptTokenCount":4000,"candidatesTokenCount":120,"totalTokenCount":4420,"cachedContentTokenCount":3000,"thoughtsTokenCount":300}"#
        } else {
            r#"{"promptTokenCount":4000,"totalTokenCount":4000,"cachedContentTokenCount":3000}"#
        };
        let finish = if last {
            r#","finishReason":"STOP""#
        } else {
            ""
        };
        format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"text":"{text}"}}],"role":"model"}}{finish},"index":0}}],"usageMetadata":{usage},"modelVersion":"gemini-2.5-flash","responseId":"abc123"}}"#
        )
    }

    pub(crate) fn sse_stream() -> Vec<u8> {
        ["The", " answer ]}", " is"]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("data: {}\r\n\r\n", chunk(t, i == 2)))
            .collect::<String>()
            .into_bytes()
    }

    pub(crate) fn array_stream() -> Vec<u8> {
        let items: Vec<String> = ["The", " answer ]}", " is"]
            .iter()
            .enumerate()
            .map(|(i, t)| chunk(t, i == 2))
            .collect();
        format!("[{}]", items.join("\r\n,")).into_bytes()
    }

    #[test]
    fn gemini_paths() {
        assert_eq!(
            match_path("/v1beta/models/gemini-2.5-flash:generateContent"),
            Some(("gemini-2.5-flash".into(), false))
        );
        assert_eq!(
            match_path(
                "/v1/projects/p/locations/us/publishers/google/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Some(("gemini-2.0-flash".into(), true))
        );
        assert_eq!(
            match_path("/v1beta/models/gemini-2.5-flash:countTokens"),
            None
        );
        assert_eq!(match_path("/v1beta/models/:generateContent"), None);
        assert_eq!(match_path("/v1/chat/completions"), None);
    }

    #[test]
    fn gemini_non_stream_thoughts_outside_candidates() {
        let mut a = GenerateAccumulator::default();
        a.on_json_body(BODY);
        assert_eq!(a.usage(), Some(body_usage()));
        assert_eq!(a.meta.response_model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(a.meta.response_id.as_deref(), Some("abc123"));
    }

    #[test]
    fn gemini_sse_stream_at_every_split() {
        let s = sse_stream();
        for i in 0..=s.len() {
            let mut a = GenerateAccumulator::default();
            let mut p = SseParser::new(1 << 20);
            p.feed(&s[..i], &mut |e| a.on_sse(e));
            p.feed(&s[i..], &mut |e| a.on_sse(e));
            p.finish(&mut |e| a.on_sse(e));
            assert_eq!(a.usage(), Some(body_usage()), "split at {i}");
            assert_eq!(a.meta.json_errors, 0);
        }
    }

    #[test]
    fn gemini_json_array_stream_at_every_split() {
        let s = array_stream();
        for i in 0..=s.len() {
            let mut a = GenerateAccumulator::default();
            let mut p = JsonArraySplitter::new(1 << 20);
            p.feed(&s[..i], &mut |e| a.on_sse(e));
            p.feed(&s[i..], &mut |e| a.on_sse(e));
            p.finish(&mut |e| a.on_sse(e));
            assert_eq!(a.usage(), Some(body_usage()), "split at {i}");
            assert_eq!(a.meta.json_errors, 0);
        }
    }

    #[test]
    fn gemini_truncated_stream_reports_no_partial_usage() {
        let s = array_stream();
        let cut = s.len() * 2 / 3;
        let mut a = GenerateAccumulator::default();
        let mut p = JsonArraySplitter::new(1 << 20);
        p.feed(&s[..cut], &mut |e| a.on_sse(e));
        p.finish(&mut |e| a.on_sse(e));
        assert_eq!(a.usage(), None, "the running prompt count is not the usage");
    }

    #[test]
    fn gemini_errors_blocked_and_garbage() {
        let mut a = GenerateAccumulator::default();
        a.on_json_body(br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}"#);
        assert_eq!((a.usage(), a.meta.provider_errors), (None, 1));
        let mut a = GenerateAccumulator::default();
        let mut p = JsonArraySplitter::new(1 << 20);
        p.feed(
            br#"[{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}}]"#,
            &mut |e| a.on_sse(e),
        );
        assert_eq!(a.usage().map(|u| u.input_tokens), Some(9));
        let mut a = GenerateAccumulator::default();
        a.on_json_body(b"<html>502</html>");
        assert_eq!((a.usage(), a.meta.json_errors), (None, 1));
    }
}
