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
