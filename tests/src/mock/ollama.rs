//! Ollama's native API (`POST /api/chat`, `POST /api/generate`), as its API
//! docs describe it: streaming by default as NDJSON (one object per line,
//! the last with `"done": true` and the counts), or one object with
//! `"stream": false`. Errors are `{"error": "…"}`.

use super::app::{Call, reply_pieces, reply_text};
use super::json::{Obj, arr};

/// A fixed timestamp (the mock's replies are deterministic).
const CREATED_AT: &str = "2026-01-01T00:00:00.000000000Z";

fn headers(content_type: &str) -> Vec<(String, String)> {
    vec![("content-type".into(), content_type.into())]
}

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
}

fn base(call: &Call, ep: Endpoint, text: &str, done: bool) -> Obj {
    let o = Obj::new()
        .s("model", call.model)
        .s("created_at", CREATED_AT);
    let o = match ep {
        Endpoint::Chat => o.o(
            "message",
            Obj::new().s("role", "assistant").s("content", text),
        ),
        Endpoint::Generate => o.s("response", text),
    };
    o.b("done", done)
}

fn final_obj(call: &Call, ep: Endpoint, text: &str) -> String {
    let mut o = base(call, ep, text, true).s("done_reason", "stop");
    if ep == Endpoint::Generate {
        o = o.raw(
            "context",
            &arr(["128006".into(), "882".into(), "128007".into()]),
        );
    }
    o.n("total_duration", 4_883_583_458)
        .n("load_duration", 1_334_875)
        .n("prompt_eval_count", call.usage.input_tokens)
        .n("prompt_eval_duration", 342_546_000)
        .n("eval_count", call.usage.output_tokens)
        .n("eval_duration", 4_535_599_000)
        .finish()
}

/// `"stream": false`: one object.
pub fn whole(call: &Call, ep: Endpoint) -> (Vec<(String, String)>, Vec<u8>) {
    (
        headers("application/json; charset=utf-8"),
        final_obj(call, ep, &reply_text(call.seq)).into_bytes(),
    )
}

/// The NDJSON stream: one line per piece, then the `done` line with counts.
pub fn stream(call: &Call, ep: Endpoint) -> (Vec<(String, String)>, Vec<Vec<u8>>) {
    let mut events: Vec<Vec<u8>> = reply_pieces(call.seq)
        .iter()
        .map(|p| format!("{}\n", base(call, ep, p, false).finish()).into_bytes())
        .collect();
    events.push(format!("{}\n", final_obj(call, ep, "")).into_bytes());
    (headers("application/x-ndjson"), events)
}

pub fn error(message: &str) -> (Vec<(String, String)>, Vec<u8>) {
    (
        headers("application/json; charset=utf-8"),
        Obj::new().s("error", message).finish().into_bytes(),
    )
}
