//! OpenAI Chat Completions: `chat.completion`, `chat.completion.chunk`
//! streams and errors, as the API reference documents them.

use super::app::{Call, id_suffix, now_secs, reply_pieces, reply_text};
use super::json::{Obj, arr};
use super::usage::OpenAiUsage;

const FINGERPRINT: &str = "fp_mock0a1b2c";

fn common_headers(seq: u64, content_type: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), content_type.into()),
        ("x-request-id".into(), format!("req_{}", id_suffix(seq))),
        ("openai-organization".into(), "agentwatch-mock".into()),
        ("openai-processing-ms".into(), "12".into()),
        ("openai-version".into(), "2020-10-01".into()),
        ("x-ratelimit-limit-requests".into(), "10000".into()),
        ("x-ratelimit-limit-tokens".into(), "30000000".into()),
        ("x-ratelimit-remaining-requests".into(), "9999".into()),
        ("x-ratelimit-remaining-tokens".into(), "29999000".into()),
        ("x-ratelimit-reset-requests".into(), "6ms".into()),
        ("x-ratelimit-reset-tokens".into(), "2ms".into()),
    ]
}

fn usage_obj(u: &OpenAiUsage) -> Obj {
    let mut prompt_details = Obj::new()
        .n("cached_tokens", u.cached_tokens)
        .n("audio_tokens", 0);
    if u.cache_write_tokens > 0 {
        prompt_details = prompt_details.n("cache_write_tokens", u.cache_write_tokens);
    }
    Obj::new()
        .n("prompt_tokens", u.prompt_tokens)
        .n("completion_tokens", u.completion_tokens)
        .n("total_tokens", u.total_tokens())
        .o("prompt_tokens_details", prompt_details)
        .o(
            "completion_tokens_details",
            Obj::new()
                .n("reasoning_tokens", u.reasoning_tokens)
                .n("audio_tokens", 0)
                .n("accepted_prediction_tokens", 0)
                .n("rejected_prediction_tokens", 0),
        )
}

/// A non-streaming `chat.completion`.
pub fn completion(call: &Call) -> (Vec<(String, String)>, Vec<u8>) {
    let u = OpenAiUsage::from_otel(&call.usage);
    let message = Obj::new()
        .s("role", "assistant")
        .s("content", &reply_text(call.seq))
        .null("refusal")
        .raw("annotations", "[]");
    let choice = Obj::new()
        .n("index", 0)
        .o("message", message)
        .null("logprobs")
        .s("finish_reason", "stop");
    let body = Obj::new()
        .s("id", &format!("chatcmpl-{}", id_suffix(call.seq)))
        .s("object", "chat.completion")
        .n("created", now_secs())
        .s("model", call.model)
        .raw("choices", &arr([choice.finish()]))
        .o("usage", usage_obj(&u))
        .s("service_tier", "default")
        .s("system_fingerprint", FINGERPRINT)
        .finish();
    (
        common_headers(call.seq, "application/json"),
        body.into_bytes(),
    )
}

/// A streamed completion: `data: {chunk}` events then `data: [DONE]`.
pub fn stream(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let id = format!("chatcmpl-{}", id_suffix(call.seq));
    let created = now_secs();
    let chunk = |choices: String, usage: Option<Obj>| -> Vec<u8> {
        let o = Obj::new()
            .s("id", &id)
            .s("object", "chat.completion.chunk")
            .n("created", created)
            .s("model", call.model)
            .s("service_tier", "default")
            .s("system_fingerprint", FINGERPRINT)
            .raw("choices", &choices);
        let o = match usage {
            Some(u) => o.o("usage", u),
            None => o.null("usage"),
        };
        format!("data: {}\n\n", o.finish()).into_bytes()
    };
    let choice = |delta: Obj, finish: Option<&str>| -> String {
        arr([Obj::new()
            .n("index", 0)
            .o("delta", delta)
            .null("logprobs")
            .opt_s("finish_reason", finish)
            .finish()])
    };
    let mut events = Vec::new();
    events.push(chunk(
        choice(
            Obj::new()
                .s("role", "assistant")
                .s("content", "")
                .null("refusal"),
            None,
        ),
        None,
    ));
    for piece in reply_pieces(call.seq) {
        events.push(chunk(choice(Obj::new().s("content", &piece), None), None));
    }
    events.push(chunk(choice(Obj::new(), Some("stop")), None));
    if call.include_usage {
        let u = OpenAiUsage::from_otel(&call.usage);
        events.push(chunk("[]".into(), Some(usage_obj(&u))));
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    let mut headers = common_headers(call.seq, "text/event-stream; charset=utf-8");
    headers.push(("cache-control".into(), "no-cache".into()));
    (headers, events)
}

/// An error in OpenAI's shape: `{"error": {message, type, param, code}}`.
pub fn error(
    seq: u64,
    status: u16,
    kind: Option<&str>,
    message: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    let (default_kind, code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => (
            "invalid_request_error",
            Some("unsupported_country_region_territory"),
        ),
        404 => ("invalid_request_error", None),
        429 => ("requests", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let message = if status == 429 {
        "Rate limit reached for requests (mock). Please try again in 1s."
    } else {
        message
    };
    let err = Obj::new()
        .s("message", message)
        .s("type", kind.unwrap_or(default_kind))
        .null("param")
        .opt_s("code", code);
    let body = format!("{}\n", Obj::new().o("error", err).finish());
    let mut headers = common_headers(seq, "application/json; charset=utf-8");
    if status == 429 {
        headers.push(("retry-after".into(), "1".into()));
    }
    (headers, body.into_bytes())
}

/// Legacy `text_completion` usage: no cache or reasoning details.
fn text_usage_obj(call: &Call) -> Obj {
    let u = &call.usage;
    Obj::new()
        .n("prompt_tokens", u.input_tokens)
        .n("completion_tokens", u.output_tokens)
        .n(
            "total_tokens",
            u.input_tokens.saturating_add(u.output_tokens),
        )
}

/// A non-streaming legacy `text_completion` (`POST /v1/completions`).
pub fn text_completion(call: &Call) -> (Vec<(String, String)>, Vec<u8>) {
    let choice = Obj::new()
        .s("text", &reply_text(call.seq))
        .n("index", 0)
        .null("logprobs")
        .s("finish_reason", "stop");
    let body = Obj::new()
        .s("id", &format!("cmpl-{}", id_suffix(call.seq)))
        .s("object", "text_completion")
        .n("created", now_secs())
        .s("model", call.model)
        .raw("choices", &arr([choice.finish()]))
        .o("usage", text_usage_obj(call))
        .finish();
    (
        common_headers(call.seq, "application/json"),
        body.into_bytes(),
    )
}

/// A streamed legacy completion: text chunks, a usage chunk (`"choices": []`)
/// only with `stream_options.include_usage`, then `data: [DONE]`.
pub fn text_stream(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let id = format!("cmpl-{}", id_suffix(call.seq));
    let created = now_secs();
    let chunk = |choices: String, usage: Option<Obj>| -> Vec<u8> {
        let o = Obj::new()
            .s("id", &id)
            .s("object", "text_completion")
            .n("created", created)
            .raw("choices", &choices)
            .s("model", call.model)
            .s("system_fingerprint", FINGERPRINT);
        let o = match usage {
            Some(u) => o.o("usage", u),
            None => o.null("usage"),
        };
        format!("data: {}\n\n", o.finish()).into_bytes()
    };
    let choice = |text: &str, finish: Option<&str>| -> String {
        arr([Obj::new()
            .s("text", text)
            .n("index", 0)
            .null("logprobs")
            .opt_s("finish_reason", finish)
            .finish()])
    };
    let mut events: Vec<Vec<u8>> = reply_pieces(call.seq)
        .iter()
        .map(|p| chunk(choice(p, None), None))
        .collect();
    events.push(chunk(choice("", Some("stop")), None));
    if call.include_usage {
        events.push(chunk("[]".into(), Some(text_usage_obj(call))));
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    let mut headers = common_headers(call.seq, "text/event-stream; charset=utf-8");
    headers.push(("cache-control".into(), "no-cache".into()));
    (headers, events)
}

/// Dimensions of the mock's embeddings.
const EMBEDDING_DIMS: usize = 8;

/// `POST /v1/embeddings`: one embedding per input (`float` arrays, or
/// little-endian float32 in base64 with `"encoding_format": "base64"`, which
/// the Python SDK asks for); usage has `prompt_tokens` and `total_tokens` only.
pub fn embeddings(call: &Call, inputs: usize, base64: bool) -> (Vec<(String, String)>, Vec<u8>) {
    let data = (0..inputs.max(1)).map(|i| {
        let floats: Vec<f32> = (0..EMBEDDING_DIMS)
            .map(|d| ((call.seq as usize + i + d) % 7) as f32 / 7.0 - 0.5)
            .collect();
        let emb = if base64 {
            let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
            super::json::quote(&base64_encode(&bytes))
        } else {
            format!(
                "[{}]",
                floats
                    .iter()
                    .map(|f| format!("{f}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        Obj::new()
            .s("object", "embedding")
            .n("index", i as u64)
            .raw("embedding", &emb)
            .finish()
    });
    let body = Obj::new()
        .s("object", "list")
        .raw("data", &arr(data))
        .s("model", call.model)
        .o(
            "usage",
            Obj::new()
                .n("prompt_tokens", call.usage.input_tokens)
                .n("total_tokens", call.usage.input_tokens),
        )
        .finish();
    (
        common_headers(call.seq, "application/json"),
        body.into_bytes(),
    )
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for group in data.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
