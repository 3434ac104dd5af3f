//! OpenAI Responses API (`POST /v1/responses`): the `response` object and its
//! typed SSE event stream, as the API reference documents them.

use super::app::{Call, id_suffix, now_secs, reply_pieces, reply_text};
use super::json::{Obj, arr};

fn headers(seq: u64, content_type: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), content_type.into()),
        ("x-request-id".into(), format!("req_{}", id_suffix(seq))),
        ("openai-organization".into(), "agentwatch-mock".into()),
        ("openai-processing-ms".into(), "15".into()),
        ("openai-version".into(), "2020-10-01".into()),
    ]
}

/// `usage` as the Responses API reports it: input includes cached, output
/// includes reasoning.
fn usage_obj(call: &Call) -> Obj {
    let u = &call.usage;
    Obj::new()
        .n("input_tokens", u.input_tokens)
        .o(
            "input_tokens_details",
            Obj::new().n("cached_tokens", u.cache_read_tokens),
        )
        .n("output_tokens", u.output_tokens)
        .o(
            "output_tokens_details",
            Obj::new().n("reasoning_tokens", u.reasoning_tokens),
        )
        .n(
            "total_tokens",
            u.input_tokens.saturating_add(u.output_tokens),
        )
}

fn message_id(call: &Call) -> String {
    format!("msg_{}", id_suffix(call.seq))
}

fn output_text(text: &str) -> Obj {
    Obj::new()
        .s("type", "output_text")
        .s("text", text)
        .raw("annotations", "[]")
        .raw("logprobs", "[]")
}

fn message(call: &Call, status: &str, content: String) -> Obj {
    Obj::new()
        .s("id", &message_id(call))
        .s("type", "message")
        .s("status", status)
        .raw("content", &content)
        .s("role", "assistant")
}

/// The `response` object in a given state.
fn response_obj(call: &Call, status: &str, output: String, usage: Option<Obj>) -> Obj {
    let o = Obj::new()
        .s("id", &format!("resp_{}", id_suffix(call.seq)))
        .s("object", "response")
        .n("created_at", now_secs())
        .s("status", status)
        .b("background", false)
        .null("error")
        .null("incomplete_details")
        .null("instructions")
        .null("max_output_tokens")
        .s("model", call.model)
        .raw("output", &output)
        .b("parallel_tool_calls", true)
        .null("previous_response_id")
        .o("reasoning", Obj::new().null("effort").null("summary"))
        .b("store", true)
        .n("temperature", 1)
        .o("text", Obj::new().o("format", Obj::new().s("type", "text")))
        .s("tool_choice", "auto")
        .raw("tools", "[]")
        .n("top_p", 1)
        .s("truncation", "disabled");
    let o = match usage {
        Some(u) => o.o("usage", u),
        None => o.null("usage"),
    };
    o.null("user").raw("metadata", "{}")
}

/// A non-streaming `response`.
pub fn response(call: &Call) -> (Vec<(String, String)>, Vec<u8>) {
    let content = arr([output_text(&reply_text(call.seq)).finish()]);
    let output = arr([message(call, "completed", content).finish()]);
    let body = response_obj(call, "completed", output, Some(usage_obj(call))).finish();
    (headers(call.seq, "application/json"), body.into_bytes())
}

fn event(name: &str, data: Obj) -> Vec<u8> {
    format!("event: {name}\ndata: {}\n\n", data.finish()).into_bytes()
}

/// A streamed response: `response.created`, `response.in_progress`,
/// `response.output_item.added`, `response.content_part.added`,
/// `response.output_text.delta`×N, `response.output_text.done`,
/// `response.content_part.done`, `response.output_item.done`,
/// `response.completed` (the only event with usage). No `[DONE]`.
pub fn stream(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let mut seq_no = 0u64;
    let mut next = || {
        let n = seq_no;
        seq_no += 1;
        n
    };
    let mid = message_id(call);
    let text = reply_text(call.seq);
    let mut events = Vec::new();
    for kind in ["response.created", "response.in_progress"] {
        events.push(event(
            kind,
            Obj::new().s("type", kind).n("sequence_number", next()).o(
                "response",
                response_obj(call, "in_progress", "[]".into(), None),
            ),
        ));
    }
    events.push(event(
        "response.output_item.added",
        Obj::new()
            .s("type", "response.output_item.added")
            .n("sequence_number", next())
            .n("output_index", 0)
            .o("item", message(call, "in_progress", "[]".into())),
    ));
    events.push(event(
        "response.content_part.added",
        Obj::new()
            .s("type", "response.content_part.added")
            .n("sequence_number", next())
            .s("item_id", &mid)
            .n("output_index", 0)
            .n("content_index", 0)
            .o("part", output_text("")),
    ));
    for piece in reply_pieces(call.seq) {
        events.push(event(
            "response.output_text.delta",
            Obj::new()
                .s("type", "response.output_text.delta")
                .n("sequence_number", next())
                .s("item_id", &mid)
                .n("output_index", 0)
                .n("content_index", 0)
                .s("delta", &piece)
                .raw("logprobs", "[]"),
        ));
    }
    events.push(event(
        "response.output_text.done",
        Obj::new()
            .s("type", "response.output_text.done")
            .n("sequence_number", next())
            .s("item_id", &mid)
            .n("output_index", 0)
            .n("content_index", 0)
            .s("text", &text)
            .raw("logprobs", "[]"),
    ));
    events.push(event(
        "response.content_part.done",
        Obj::new()
            .s("type", "response.content_part.done")
            .n("sequence_number", next())
            .s("item_id", &mid)
            .n("output_index", 0)
            .n("content_index", 0)
            .o("part", output_text(&text)),
    ));
    let done_item = message(call, "completed", arr([output_text(&text).finish()]));
    events.push(event(
        "response.output_item.done",
        Obj::new()
            .s("type", "response.output_item.done")
            .n("sequence_number", next())
            .n("output_index", 0)
            .o("item", done_item),
    ));
    let output = arr([message(call, "completed", arr([output_text(&text).finish()])).finish()]);
    events.push(event(
        "response.completed",
        Obj::new()
            .s("type", "response.completed")
            .n("sequence_number", next())
            .o(
                "response",
                response_obj(call, "completed", output, Some(usage_obj(call))),
            ),
    ));
    let mut h = headers(call.seq, "text/event-stream; charset=utf-8");
    h.push(("cache-control".into(), "no-cache".into()));
    (h, events)
}
