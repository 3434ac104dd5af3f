//! Google Gemini `generateContent` / `streamGenerateContent` (v1beta), as the
//! API reference documents them: a `GenerateContentResponse` body, an SSE
//! stream (`alt=sse`) or the default streamed JSON array, and Google's error
//! shape. The model is taken from the path.

use super::app::{Call, id_suffix, reply_pieces, reply_text};
use super::json::{Obj, arr};

fn headers(content_type: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), content_type.into()),
        ("vary".into(), "Origin, X-Origin, Referer".into()),
        ("x-content-type-options".into(), "nosniff".into()),
        ("server-timing".into(), "gfet4t7; dur=321".into()),
    ]
}

/// `usageMetadata`: prompt includes cached; thoughts are outside candidates.
/// `last` is false for the running count of a stream's earlier chunks
/// (prompt only, as the service sends it).
fn usage_obj(call: &Call, last: bool) -> Obj {
    let u = &call.usage;
    let thoughts = u.reasoning_tokens;
    let candidates = u.output_tokens.saturating_sub(thoughts);
    let mut o = Obj::new().n("promptTokenCount", u.input_tokens);
    if last {
        o = o.n("candidatesTokenCount", candidates);
    }
    let total = if last {
        u.input_tokens.saturating_add(u.output_tokens)
    } else {
        u.input_tokens
    };
    o = o.n("totalTokenCount", total);
    if u.cache_read_tokens > 0 {
        o = o.n("cachedContentTokenCount", u.cache_read_tokens);
    }
    o = o.raw(
        "promptTokensDetails",
        &arr([Obj::new()
            .s("modality", "TEXT")
            .n("tokenCount", u.input_tokens)
            .finish()]),
    );
    if last && thoughts > 0 {
        o = o.n("thoughtsTokenCount", thoughts);
    }
    o
}

fn response_obj(call: &Call, text: &str, finish: bool, last_usage: bool) -> Obj {
    let content = Obj::new()
        .raw("parts", &arr([Obj::new().s("text", text).finish()]))
        .s("role", "model");
    let mut cand = Obj::new().o("content", content);
    if finish {
        cand = cand.s("finishReason", "STOP");
    }
    cand = cand.n("index", 0);
    Obj::new()
        .raw("candidates", &arr([cand.finish()]))
        .o("usageMetadata", usage_obj(call, last_usage))
        .s("modelVersion", call.model)
        .s("responseId", &id_suffix(call.seq))
}

/// A non-streaming `generateContent` response.
pub fn generate(call: &Call) -> (Vec<(String, String)>, Vec<u8>) {
    let body = response_obj(call, &reply_text(call.seq), true, true).finish();
    (
        headers("application/json; charset=UTF-8"),
        body.into_bytes(),
    )
}

fn chunks(call: &Call) -> Vec<String> {
    let pieces = reply_pieces(call.seq);
    let n = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let last = i + 1 == n;
            response_obj(call, p, last, last).finish()
        })
        .collect()
}

/// `streamGenerateContent?alt=sse`: one `data:` event per chunk, `\r\n\r\n`
/// separated; the final chunk has `finishReason` and the full usage.
pub fn stream_sse(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let events = chunks(call)
        .into_iter()
        .map(|c| format!("data: {c}\r\n\r\n").into_bytes())
        .collect();
    (headers("text/event-stream"), events)
}

/// `streamGenerateContent` without `alt=sse`: one JSON array, written element
/// by element (`[{…}`, `,\r\n{…}`, …, `]`).
pub fn stream_array(call: &Call) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let mut events: Vec<Vec<u8>> = chunks(call)
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let sep = if i == 0 { "[" } else { ",\r\n" };
            format!("{sep}{c}").into_bytes()
        })
        .collect();
    events.push(b"]".to_vec());
    (headers("application/json; charset=UTF-8"), events)
}

/// Google's error shape: `{"error": {"code", "message", "status"}}`.
pub fn error(status: u16, message: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let kind = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        405..=499 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    };
    let body = Obj::new()
        .o(
            "error",
            Obj::new()
                .n("code", u64::from(status))
                .s("message", message)
                .s("status", kind),
        )
        .finish();
    (
        headers("application/json; charset=UTF-8"),
        body.into_bytes(),
    )
}
