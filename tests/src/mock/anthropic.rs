//! Anthropic Messages: `message` objects, the SSE event sequence and errors,
//! as the API reference documents them.

use super::app::{Call, id_suffix, reply_pieces, reply_text};
use super::json::{Obj, arr};
use super::usage::AnthropicUsage;

/// `output_tokens` in `message_start` (the final count comes in `message_delta`).
pub const INITIAL_OUTPUT_TOKENS: u64 = 1;

fn common_headers(seq: u64, content_type: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), content_type.into()),
        ("request-id".into(), format!("req_{}", id_suffix(seq))),
        (
            "anthropic-organization-id".into(),
            "00000000-0000-4000-8000-agentwatch00".into(),
        ),
        ("anthropic-ratelimit-requests-limit".into(), "4000".into()),
        (
            "anthropic-ratelimit-requests-remaining".into(),
            "3999".into(),
        ),
        (
            "anthropic-ratelimit-requests-reset".into(),
            "2030-01-01T00:00:01Z".into(),
        ),
        (
            "anthropic-ratelimit-input-tokens-limit".into(),
            "400000".into(),
        ),
        (
            "anthropic-ratelimit-input-tokens-remaining".into(),
            "399000".into(),
        ),
        (
            "anthropic-ratelimit-input-tokens-reset".into(),
            "2030-01-01T00:00:01Z".into(),
        ),
        (
            "anthropic-ratelimit-output-tokens-limit".into(),
            "80000".into(),
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining".into(),
            "79000".into(),
        ),
        (
            "anthropic-ratelimit-output-tokens-reset".into(),
            "2030-01-01T00:00:01Z".into(),
        ),
    ]
}

fn usage_obj(u: &AnthropicUsage, output_tokens: u64) -> Obj {
    Obj::new()
        .n("input_tokens", u.input_tokens)
        .n("cache_creation_input_tokens", u.cache_creation_input_tokens)
        .n("cache_read_input_tokens", u.cache_read_input_tokens)
        .o(
            "cache_creation",
            Obj::new()
                .n(
                    "ephemeral_5m_input_tokens",
                    u.cache_creation_input_tokens - u.cache_creation_1h,
                )
                .n("ephemeral_1h_input_tokens", u.cache_creation_1h),
        )
        .n("output_tokens", output_tokens)
        .s("service_tier", "standard")
}

fn with_thinking(o: Obj, u: &AnthropicUsage) -> Obj {
    if u.thinking_tokens > 0 {
        o.o(
            "output_tokens_details",
            Obj::new().n("thinking_tokens", u.thinking_tokens),
        )
    } else {
        o
    }
}

fn message_obj(call: &Call, content: String, stop: Option<&str>, usage: Obj) -> Obj {
    Obj::new()
        .s("id", &format!("msg_{}", id_suffix(call.seq)))
        .s("type", "message")
        .s("role", "assistant")
        .s("model", call.model)
        .raw("content", &content)
        .opt_s("stop_reason", stop)
        .null("stop_sequence")
        .o("usage", usage)
}

/// A non-streaming `message`.
pub fn message(call: &Call) -> (Vec<(String, String)>, Vec<u8>) {
    let u = AnthropicUsage::from_otel(&call.usage);
    let content = arr([Obj::new()
        .s("type", "text")
        .s("text", &reply_text(call.seq))
        .finish()]);
    let usage = with_thinking(usage_obj(&u, u.output_tokens), &u);
    let body = message_obj(call, content, Some("end_turn"), usage).finish();
    (
        common_headers(call.seq, "application/json"),
        body.into_bytes(),
    )
}

fn event(name: &str, data: String) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// A streamed message: message_start, content_block_start, ping,
/// content_block_delta×N, content_block_stop, message_delta, message_stop.
pub fn stream(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let u = AnthropicUsage::from_otel(&call.usage);
    let initial = INITIAL_OUTPUT_TOKENS.min(u.output_tokens);
    let mut events = Vec::new();
    events.push(event(
        "message_start",
        Obj::new()
            .s("type", "message_start")
            .o(
                "message",
                message_obj(call, "[]".into(), None, usage_obj(&u, initial)),
            )
            .finish(),
    ));
    events.push(event(
        "content_block_start",
        Obj::new()
            .s("type", "content_block_start")
            .n("index", 0)
            .o("content_block", Obj::new().s("type", "text").s("text", ""))
            .finish(),
    ));
    events.push(event("ping", Obj::new().s("type", "ping").finish()));
    for piece in reply_pieces(call.seq) {
        events.push(event(
            "content_block_delta",
            Obj::new()
                .s("type", "content_block_delta")
                .n("index", 0)
                .o(
                    "delta",
                    Obj::new().s("type", "text_delta").s("text", &piece),
                )
                .finish(),
        ));
    }
    events.push(event(
        "content_block_stop",
        Obj::new()
            .s("type", "content_block_stop")
            .n("index", 0)
            .finish(),
    ));
    events.push(event(
        "message_delta",
        Obj::new()
            .s("type", "message_delta")
            .o(
                "delta",
                Obj::new()
                    .s("stop_reason", "end_turn")
                    .null("stop_sequence"),
            )
            .o(
                "usage",
                with_thinking(Obj::new().n("output_tokens", u.output_tokens), &u),
            )
            .finish(),
    ));
    events.push(event(
        "message_stop",
        Obj::new().s("type", "message_stop").finish(),
    ));
    let mut headers = common_headers(call.seq, "text/event-stream; charset=utf-8");
    headers.push(("cache-control".into(), "no-cache".into()));
    (headers, events)
}

/// An error in Anthropic's shape: `{"type":"error","error":{type,message},"request_id"}`.
pub fn error(
    seq: u64,
    status: u16,
    kind: Option<&str>,
    message: &str,
) -> (Vec<(String, String)>, Vec<u8>) {
    let default_kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        504 => "timeout_error",
        _ if status < 500 => "invalid_request_error",
        _ => "api_error",
    };
    let message = match status {
        404 => "Not found",
        429 => "Number of request tokens has exceeded your per-minute rate limit (mock)",
        529 => "Overloaded",
        _ => message,
    };
    let body = Obj::new()
        .s("type", "error")
        .o(
            "error",
            Obj::new()
                .s("type", kind.unwrap_or(default_kind))
                .s("message", message),
        )
        .s("request_id", &format!("req_{}", id_suffix(seq)))
        .finish();
    let mut headers = common_headers(seq, "application/json");
    if status == 429 {
        headers.push(("retry-after".into(), "1".into()));
    }
    (headers, body.into_bytes())
}
