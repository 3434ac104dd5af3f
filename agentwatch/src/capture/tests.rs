//! Recorded-shape byte fixtures driven through `Connection`, as the daemon would.

use super::*;
use crate::accounting::{Usage, UsageSource};
use crate::protocol::decode::tests::{brotli, gzip, raw_deflate, zlib};
use crate::providers::anthropic::tests::{STREAM as ANTHROPIC_STREAM, expected_stream_usage};

mod http2;
mod websocket;

// ---------------------------------------------------------------- fixtures

fn request(path: &str, host: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-secret\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").into_bytes()
}

fn response(status: u16, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn chunked_response(status: u16, headers: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut v =
        format!("HTTP/1.1 {status} X\r\n{headers}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    for c in body.chunks(chunk) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

fn openai_body(model: &str, stream: bool, include_usage: bool, filler: usize) -> Vec<u8> {
    let opts = if include_usage {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"{}"}}],"stream":{stream}{opts}}}"#,
        "p".repeat(filler)
    )
    .into_bytes()
}

fn anthropic_body(model: &str, stream: bool) -> Vec<u8> {
    format!(
        r#"{{"max_tokens":1024,"messages":[{{"role":"user","content":"hello"}}],"model":"{model}","stream":{stream}}}"#
    )
    .into_bytes()
}

const OPENAI_JSON: &[u8] = br#"{"id":"chatcmpl-A1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"private answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1200,"completion_tokens":300,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":1024},"completion_tokens_details":{"reasoning_tokens":128}}}"#;

fn openai_json_usage() -> Usage {
    Usage {
        input_tokens: 1200,
        output_tokens: 300,
        cache_read_tokens: 1024,
        cache_write_tokens: 0,
        reasoning_tokens: 128,
        cache_write_1h_tokens: 0,
    }
}

fn openai_stream(include_usage: bool) -> Vec<u8> {
    let mut s = String::new();
    for word in ["Hel", "lo", "!"] {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-S1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]{}}}\n\n",
            if include_usage { ",\"usage\":null" } else { "" }
        ));
    }
    if include_usage {
        s.push_str("data: {\"id\":\"chatcmpl-S1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":3,\"total_tokens\":53,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

const ANTHROPIC_JSON: &[u8] = br#"{"id":"msg_N1","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"secret"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":45}}"#;

fn anthropic_json_usage() -> Usage {
    Usage {
        input_tokens: 3212,
        output_tokens: 45,
        cache_read_tokens: 3000,
        cache_write_tokens: 200,
        reasoning_tokens: 0,
        cache_write_1h_tokens: 0,
    }
}

const SSE: &str = "Content-Type: text/event-stream\r\n";
const JSON: &str = "Content-Type: application/json\r\n";

// ---------------------------------------------------------------- harness

struct H {
    conn: Connection,
    stats: CaptureStats,
    out: Vec<CaptureEvent>,
    ts: u64,
}

impl H {
    fn new() -> Self {
        Self::with_limits(CaptureLimits::default())
    }
    fn with_limits(limits: CaptureLimits) -> Self {
        Self {
            conn: Connection::new(limits),
            stats: CaptureStats::default(),
            out: Vec::new(),
            ts: 1_000,
        }
    }
    fn write(&mut self, data: &[u8]) -> &mut Self {
        self.ts += 10;
        self.conn
            .on_write(data, self.ts, &mut self.stats, &mut self.out);
        self
    }
    fn read(&mut self, data: &[u8]) -> &mut Self {
        self.ts += 10;
        self.conn
            .on_read(data, self.ts, &mut self.stats, &mut self.out);
        self
    }
    fn write_pieces(&mut self, data: &[u8], cuts: &[usize]) -> &mut Self {
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            self.write(&data[last..c]);
            last = c;
        }
        self
    }
    fn read_pieces(&mut self, data: &[u8], piece: usize) -> &mut Self {
        for c in data.chunks(piece) {
            self.read(c);
        }
        self
    }
    fn loss(&mut self, write: bool) -> &mut Self {
        self.ts += 10;
        self.conn
            .on_loss(write, self.ts, &mut self.stats, &mut self.out);
        self
    }
    fn close(&mut self) -> &mut Self {
        self.ts += 10;
        self.conn.close(self.ts, &mut self.stats, &mut self.out);
        self
    }
    fn take(&mut self) -> Vec<CaptureEvent> {
        std::mem::take(&mut self.out)
    }
    fn calls(&mut self) -> Vec<LlmCall> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                CaptureEvent::Call(c) => Some(c),
                CaptureEvent::Request(_) => None,
            })
            .collect()
    }
}

fn only_call(h: &mut H) -> LlmCall {
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    calls.into_iter().next().unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn capture_split_writes_100k_request_in_7_pieces() {
    let body = openai_body("gpt-4o-mini", false, false, 100 * 1024);
    let req = request("/v1/chat/completions", "api.openai.com", &body);
    let cuts = [3, 40, 150, 20_000, 50_001, 99_000];
    let mut h = H::new();
    // Nothing is emitted until the last byte of the body.
    h.write_pieces(&req[..req.len() - 1], &cuts);
    assert!(h.take().is_empty());
    assert!(!h.conn.is_idle());
    h.write(&req[req.len() - 1..]);
    let events = h.take();
    let [CaptureEvent::Request(r)] = events.as_slice() else {
        panic!("{events:#?}")
    };
    assert_eq!(
        r,
        &LlmRequest {
            provider: "openai".into(),
            api: "chat.completions".into(),
            server_address: Some("api.openai.com".into()),
            model: Some("gpt-4o-mini".into()),
            streaming: false,
            http_version: "1.1".into(),
            started_at_ns: 1_010,
            request_bytes: req.len() as u64,
        }
    );
    let resp = response(200, JSON, OPENAI_JSON);
    h.read_pieces(&resp, 97);
    let call = only_call(&mut h);
    assert_eq!(call.request, *r);
    assert_eq!(call.status, Some(200));
    assert_eq!(call.usage, openai_json_usage());
    assert_eq!(call.usage_source, UsageSource::Reported);
    assert!(call.complete);
    assert_eq!(
        call.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(call.response_id.as_deref(), Some("chatcmpl-A1"));
    assert_eq!(call.response_bytes, resp.len() as u64);
    assert_eq!(call.ended_at_ns, h.ts);
    assert!(h.conn.is_idle());
    assert_eq!(h.stats.llm_requests, 1);
    assert_eq!(h.stats.llm_calls, 1);
    assert_eq!(h.stats.bytes_written, req.len() as u64);
}

#[test]
fn capture_keep_alive_three_exchanges_with_non_llm_in_the_middle() {
    let r1 = request(
        "/v1/messages?beta=true",
        "api.anthropic.com",
        &anthropic_body("claude-haiku-4-5", false),
    );
    let r2 = get("/v1/models");
    let r3 = request(
        "/v1/chat/completions",
        "127.0.0.1:8080",
        &openai_body("gpt-4o", true, true, 10),
    );
    let p1 = response(200, JSON, ANTHROPIC_JSON);
    let p2 = chunked_response(200, JSON, br#"{"data":[{"id":"gpt-4o"}]}"#, 7);
    let p3 = chunked_response(200, SSE, &openai_stream(true), 64);

    // Interleaved, then pipelined (all requests first, responses in one read).
    for pipelined in [false, true] {
        let mut h = H::new();
        if pipelined {
            h.write(&[r1.clone(), r2.clone(), r3.clone()].concat());
            h.read(&[p1.clone(), p2.clone(), p3.clone()].concat());
        } else {
            h.write(&r1)
                .read(&p1)
                .write(&r2)
                .read(&p2)
                .write(&r3)
                .read(&p3);
        }
        let events = h.take();
        let calls: Vec<&LlmCall> = events
            .iter()
            .filter_map(|e| match e {
                CaptureEvent::Call(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 2, "{events:#?}");
        assert_eq!(calls[0].request.provider, "anthropic");
        assert_eq!(calls[0].request.api, "messages");
        assert_eq!(calls[0].usage, anthropic_json_usage());
        assert_eq!(calls[1].request.provider, "openai");
        assert_eq!(
            calls[1].request.server_address.as_deref(),
            Some("127.0.0.1:8080")
        );
        assert!(calls[1].request.streaming);
        assert_eq!(
            calls[1].usage,
            Usage {
                input_tokens: 50,
                output_tokens: 3,
                ..Usage::default()
            }
        );
        assert_eq!(
            calls[1].response_model.as_deref(),
            Some("gpt-4o-2024-08-06")
        );
        assert!(calls.iter().all(|c| c.complete));
        assert_eq!(h.stats.non_llm_requests, 1);
        assert_eq!(h.stats.http_requests, 3);
        assert_eq!(h.stats.http_responses, 3);
        assert_eq!(h.stats.unmatched_responses, 0);
        assert!(h.conn.is_idle());
    }
}

#[test]
fn capture_chunked_gzip_json_and_sse() {
    let gz = gzip(OPENAI_JSON);
    let mut h = H::new();
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 5),
    ));
    h.read_pieces(
        &chunked_response(200, &format!("{JSON}Content-Encoding: gzip\r\n"), &gz, 33),
        13,
    );
    assert_eq!(only_call(&mut h).usage, openai_json_usage());

    // A gzip'd SSE stream, decoded as it arrives.
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", true, true, 5),
    ));
    h.read_pieces(
        &chunked_response(
            200,
            &format!("{SSE}Content-Encoding: gzip\r\n"),
            &gzip(&openai_stream(true)),
            50,
        ),
        29,
    );
    let call = only_call(&mut h);
    assert_eq!((call.usage.input_tokens, call.usage.output_tokens), (50, 3));
    assert!(call.complete);
    assert_eq!(h.stats.decode_errors, 0);
}

#[test]
fn capture_deflate_and_brotli() {
    for (name, encoded) in [
        ("deflate", zlib(ANTHROPIC_JSON)),
        ("deflate", raw_deflate(ANTHROPIC_JSON)),
        ("br", brotli(ANTHROPIC_JSON)),
    ] {
        let mut h = H::new();
        h.write(&request(
            "/v1/messages",
            "api.anthropic.com",
            &anthropic_body("claude-haiku-4-5", false),
        ));
        h.read(&response(
            200,
            &format!("{JSON}Content-Encoding: {name}\r\n"),
            &encoded,
        ));
        assert_eq!(only_call(&mut h).usage, anthropic_json_usage(), "{name}");
    }
    // A brotli SSE stream.
    let mut h = H::new();
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-sonnet-4-5", true),
    ));
    h.read_pieces(
        &chunked_response(
            200,
            &format!("{SSE}Content-Encoding: br\r\n"),
            &brotli(ANTHROPIC_STREAM),
            40,
        ),
        17,
    );
    assert_eq!(only_call(&mut h).usage, expected_stream_usage());
}

#[test]
fn capture_openai_stream_without_include_usage_is_missing() {
    let mut h = H::new();
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", true, false, 5),
    ));
    h.read(&chunked_response(200, SSE, &openai_stream(false), 100));
    let call = only_call(&mut h);
    assert!(call.complete);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(call.usage, Usage::default());
    assert_eq!(call.response_id.as_deref(), Some("chatcmpl-S1"));
    assert_eq!(h.stats.calls_usage_missing, 1);
}

#[test]
fn capture_anthropic_stream_split_at_every_byte_boundary() {
    let req = request(
        "/v1/messages?beta=true",
        "api.anthropic.com",
        &anthropic_body("claude-sonnet-4-5", true),
    );
    let resp = chunked_response(200, SSE, ANTHROPIC_STREAM, 90);
    for split in 0..=resp.len() {
        let mut h = H::new();
        h.write(&req).take();
        h.read(&resp[..split]).read(&resp[split..]);
        let call = only_call(&mut h);
        assert_eq!(call.usage, expected_stream_usage(), "split at {split}");
        assert_eq!(
            call.response_model.as_deref(),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(call.response_id.as_deref(), Some("msg_01"));
        assert!(call.complete);
        assert!(h.conn.is_idle(), "split at {split}");
        assert_eq!(h.stats.json_errors, 0);
    }
}

#[test]
fn capture_error_status_is_a_call() {
    let mut h = H::new();
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-opus-4-5", false),
    ));
    h.read(&response(
        429,
        JSON,
        br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
    ));
    let call = only_call(&mut h);
    assert_eq!(call.status, Some(429));
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert!(call.complete);
    assert_eq!(h.stats.provider_errors, 1);
}

#[test]
fn capture_malformed_and_truncated_input() {
    // Bad status line: the call is given up, counted, and the next response resyncs.
    let req = request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 5),
    );
    let mut h = H::new();
    h.write(&req).read(b"HTTP/1.1 2x0 OK\r\n\r\n");
    let call = only_call(&mut h);
    assert!(!call.complete);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(h.stats.http_errors, 1);
    h.write(&req).read(&response(200, JSON, OPENAI_JSON));
    assert_eq!(only_call(&mut h).usage, openai_json_usage());
    assert_eq!(h.stats.resyncs, 1);

    // Bad chunk size.
    let mut h = H::new();
    h.write(&req)
        .read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n");
    assert!(!only_call(&mut h).complete);
    assert_eq!(h.stats.http_errors, 1);

    // Invalid JSON response body.
    let mut h = H::new();
    h.write(&req)
        .read(&response(200, JSON, b"{\"usage\": {oops"));
    let call = only_call(&mut h);
    assert!(call.complete);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(h.stats.json_errors, 1);

    // Bad gzip.
    let mut h = H::new();
    h.write(&req).read(&response(
        200,
        "Content-Encoding: gzip\r\n",
        b"\x1f\x8b\x08\x00garbage-garbage-garbage",
    ));
    assert_eq!(only_call(&mut h).usage_source, UsageSource::Missing);
    assert_eq!(h.stats.decode_errors, 1);

    // Unknown encoding.
    let mut h = H::new();
    h.write(&req).read(&response(
        200,
        "Content-Encoding: zstd\r\n",
        b"\x28\xb5\x2f\xfd",
    ));
    assert_eq!(only_call(&mut h).usage_source, UsageSource::Missing);
    assert_eq!(h.stats.decode_errors, 1);

    // Invalid JSON request body on an LLM path: not a call, counted, response still paired.
    let mut h = H::new();
    h.write(&request("/v1/chat/completions", "x", b"{nope"))
        .read(&response(400, JSON, b"{}"));
    assert!(h.take().is_empty());
    assert_eq!((h.stats.json_errors, h.stats.non_llm_requests), (1, 1));
    assert!(h.conn.is_idle());

    // Truncated stream then close: usage so far, incomplete.
    let resp = chunked_response(200, SSE, ANTHROPIC_STREAM, 50);
    let cut = resp
        .windows(13)
        .position(|w| w == b"message_delta")
        .unwrap();
    let mut h = H::new();
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-sonnet-4-5", true),
    ))
    .read(&resp[..cut]);
    assert!(h.calls().is_empty());
    h.close();
    let call = only_call(&mut h);
    assert!(!call.complete);
    assert_eq!(call.usage_source, UsageSource::Reported);
    assert_eq!(call.usage.input_tokens, 5025);
    assert_eq!(call.usage.output_tokens, 1);
    assert_eq!(h.stats.calls_incomplete, 1);
    assert!(h.conn.is_idle());
}

#[test]
fn capture_garbage_never_panics() {
    // Deterministic pseudo-random bytes, some shaped like HTTP, in every direction.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prefixes: [&[u8]; 4] = [
        b"POST /v1/chat/completions HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    ];
    for round in 0..300 {
        let mut h = H::with_limits(CaptureLimits {
            max_request_body: 256,
            max_response_body: 256,
            max_header_bytes: 128,
        });
        h.write(prefixes[round % 4]);
        for _ in 0..20 {
            let len = (next() % 200) as usize;
            let chunk: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
            match next() % 5 {
                0 => h.write(&chunk),
                1 => h.read(&chunk),
                2 => h.read(prefixes[1]),
                3 => h.loss(next() % 2 == 0),
                _ => h.write(prefixes[(next() % 4) as usize]),
            };
        }
        h.close();
        assert!(h.conn.is_idle());
    }
}

#[test]
fn capture_read_loss_emits_incomplete_and_resyncs() {
    let req = request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-sonnet-4-5", true),
    );
    let resp = chunked_response(200, SSE, ANTHROPIC_STREAM, 60);
    let mut h = H::new();
    h.write(&req).read(&resp[..700]).loss(false);
    let call = only_call(&mut h);
    assert!(!call.complete);
    assert_eq!(call.usage.input_tokens, 5025);
    // The rest of the lost response is discarded, then a new response resynchronises.
    h.read(&resp[800..]);
    assert_eq!(h.stats.bytes_discarded, (resp.len() - 800) as u64);
    h.write(&req).read(&resp);
    let call = only_call(&mut h);
    assert!(call.complete);
    assert_eq!(call.usage, expected_stream_usage());
    assert_eq!((h.stats.losses, h.stats.resyncs), (1, 1));
}

#[test]
fn capture_write_loss_keeps_pairing() {
    let body = openai_body("gpt-4o-mini", false, false, 5000);
    let req = request("/v1/chat/completions", "api.openai.com", &body);
    let mut h = H::new();
    // Part of the body is lost: the request was sent, we saw only some of it.
    h.write(&req[..1000]).loss(true);
    let events = h.take();
    let [CaptureEvent::Request(r)] = events.as_slice() else {
        panic!("{events:#?}")
    };
    assert_eq!(r.model, None);
    h.write(&req[3000..]); // mid-body: discarded
    assert_eq!(h.stats.bytes_discarded, (req.len() - 3000) as u64);
    // Its response still pairs with it; the call is incomplete but has the reported usage.
    h.read(&response(200, JSON, OPENAI_JSON));
    let call = only_call(&mut h);
    assert!(!call.complete);
    assert_eq!(call.usage, openai_json_usage());
    assert_eq!(
        call.response_model.as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    // The next request starts a chunk: resynchronised, paired normally.
    h.write(&req).read(&response(200, JSON, OPENAI_JSON));
    let events = h.take();
    assert_eq!(events.len(), 2);
    let CaptureEvent::Call(call) = &events[1] else {
        panic!()
    };
    assert!(call.complete);
    assert_eq!(call.request.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(h.stats.resyncs, 1);
    assert!(h.conn.is_idle());
}

/// Capture that begins mid-connection (a daemon started, or adopted a kernel side, while a
/// keep-alive connection carried a response): the tail is discarded, and the connection's
/// next request is a call (it was ignored for good before, and its calls lost).
#[test]
fn capture_begun_mid_response_catches_the_next_request() {
    let mut h = H::new();
    h.read(b"ompletion_tokens\":3}}\r\n0\r\n\r\n");
    assert!(h.take().is_empty());
    assert_eq!(h.stats.unsupported_connections, 1);
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 1),
    ))
    .read(&response(200, JSON, OPENAI_JSON));
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].complete);
    assert_eq!(calls[0].usage_source, UsageSource::Reported);
    assert_eq!(h.stats.resyncs, 1);
    assert_eq!(h.stats.unsupported_connections, 1);
}

#[test]
fn capture_server_side_and_unsupported_connections_are_ignored() {
    // A local mock server: it reads a request and writes a response.
    let mut h = H::new();
    h.read(&request(
        "/v1/chat/completions",
        "127.0.0.1",
        &openai_body("gpt-4o", false, false, 1),
    ))
    .write(&response(200, JSON, OPENAI_JSON));
    assert!(h.take().is_empty());
    assert_eq!(h.stats.server_side_connections, 1);

    // Writing a status line first also means server side.
    let mut h = H::new();
    h.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.read(&request("/v1/messages", "x", b"{}"));
    assert!(h.take().is_empty());
    assert_eq!(h.stats.server_side_connections, 1);

    // HTTP/2 preface, written in two pieces: an HTTP/2 client (see tests/http2.rs). Receiving
    // it means server side. Non-HTTP bytes are unsupported.
    let mut h = H::new();
    h.write(b"PRI * HT").write(b"TP/2.0\r\n\r\nSM\r\n\r\n");
    h.read(b"\x00\x00\x12\x04");
    assert_eq!(h.stats.http2_connections, 1);
    assert_eq!(h.stats.unsupported_connections, 0);
    let mut h = H::new();
    h.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(h.stats.server_side_connections, 1);
    let mut h = H::new();
    h.write(b"\x16\x03\x01 not http");
    assert_eq!(h.stats.unsupported_connections, 1);
    assert!(h.take().is_empty());
    assert!(h.conn.is_idle());

    // 101 to a WebSocket: followed (see tests/websocket.rs); messages that are not
    // `response.create` are no calls, and garbage desynchronises it.
    let mut h = H::new();
    h.write(b"GET /v1/realtime HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n\r\n")
        .read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
        .write(b"\x81\x85masked")
        .read(b"more frames");
    assert!(h.take().is_empty());
    assert_eq!(h.stats.websocket_connections, 1);
    assert_eq!(h.stats.websocket_desynced, 1);
    // Any other upgrade: the rest is ignored.
    let mut h = H::new();
    h.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n")
        .read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00")
        .write(b"more");
    assert!(h.take().is_empty());
    assert_eq!(h.stats.unsupported_connections, 1);
}

#[test]
fn capture_limits_are_enforced() {
    let limits = CaptureLimits {
        max_request_body: 1000,
        max_response_body: 200,
        max_header_bytes: 256,
    };
    // Request over the limit: still an LLM call by method and path, model unknown.
    let mut h = H::with_limits(limits);
    let body = openai_body("gpt-4o", false, false, 2000);
    h.write(&request("/v1/chat/completions", "api.openai.com", &body));
    let mut tail_model = anthropic_body("claude-haiku-4-5", true);
    tail_model.splice(
        1..1,
        format!(r#""system":"{}","#, "s".repeat(2000)).into_bytes(),
    );
    h.write(&request("/v1/messages", "api.anthropic.com", &tail_model));
    // Response over the limit: usage missing.
    h.read(&response(200, JSON, OPENAI_JSON));
    let events = h.take();
    let [
        CaptureEvent::Request(r),
        CaptureEvent::Request(r2),
        CaptureEvent::Call(call),
    ] = events.as_slice()
    else {
        panic!("{events:#?}")
    };
    // The model is in the kept prefix of the first, beyond it in the second.
    assert_eq!(r.model.as_deref(), Some("gpt-4o"));
    assert_eq!(r2.model, None);
    assert!(call.complete);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(
        h.stats.bytes_over_limit,
        (body.len() + tail_model.len() + OPENAI_JSON.len()) as u64
    );
    assert_eq!(h.stats.llm_requests, 2);

    // A header block above the limit breaks the direction; no panic, counted.
    let mut h = H::with_limits(limits);
    let mut big = b"POST /v1/messages HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend_from_slice(&[b'a'; 400]);
    big.extend_from_slice(b"\r\n\r\n{}");
    h.write(&big[..100]).write(&big[100..]);
    assert_eq!(h.stats.header_overflows, 1);
    assert!(h.take().is_empty());
    // The server answers it (431); the placeholder pairs it, then all is normal again.
    h.read(&response(431, "", b""));
    assert_eq!(h.stats.unmatched_responses, 0);
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-haiku-4-5", false),
    ))
    .read(&response(200, JSON, ANTHROPIC_JSON[..150].as_ref()));
    assert_eq!(only_call(&mut h).usage_source, UsageSource::Missing);
}

#[test]
fn capture_close_semantics() {
    // A response without length ends at close, complete.
    let mut h = H::new();
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 1),
    ))
    .read(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
    .read(OPENAI_JSON);
    assert!(h.calls().is_empty());
    h.close();
    let call = only_call(&mut h);
    assert!(call.complete);
    assert_eq!(call.usage, openai_json_usage());

    // A request answered by nothing: incomplete at close.
    let mut h = H::new();
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-haiku-4-5", false),
    ))
    .close();
    let events = h.take();
    let [CaptureEvent::Request(_), CaptureEvent::Call(call)] = events.as_slice() else {
        panic!("{events:#?}")
    };
    assert!(!call.complete);
    assert_eq!(call.status, None);
    assert_eq!(call.usage_source, UsageSource::Missing);

    // A request never written whole: not a call.
    let mut h = H::new();
    let req = request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-haiku-4-5", false),
    );
    h.write(&req[..req.len() - 5]).close();
    assert!(h.take().is_empty());
    assert_eq!(h.stats.abandoned_requests, 1);
    assert!(h.conn.is_idle());
}

#[test]
fn capture_head_204_and_interim_responses_keep_pairing() {
    let mut h = H::new();
    h.write(b"HEAD /v1/models HTTP/1.1\r\nHost: a\r\n\r\nDELETE /v1/files/1 HTTP/1.1\r\nHost: a\r\n\r\n");
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 1),
    ));
    h.read(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    h.read(b"HTTP/1.1 204 No Content\r\n\r\n");
    h.read(b"HTTP/1.1 100 Continue\r\n\r\n");
    h.read(&response(200, JSON, OPENAI_JSON));
    let call = only_call(&mut h);
    assert_eq!(call.usage, openai_json_usage());
    assert_eq!(h.stats.non_llm_requests, 2);
    assert!(h.conn.is_idle());
}

#[test]
fn capture_stream_call_emitted_at_terminal_event() {
    // The call is emitted at message_stop, before the chunked terminator arrives.
    let resp = chunked_response(200, SSE, ANTHROPIC_STREAM, 4096);
    let mut h = H::new();
    h.write(&request(
        "/v1/messages",
        "api.anthropic.com",
        &anthropic_body("claude-sonnet-4-5", true),
    ));
    h.take();
    h.read(&resp[..resp.len() - 5]);
    let call = only_call(&mut h);
    assert!(call.complete);
    assert!(!h.conn.is_idle());
    h.read(&resp[resp.len() - 5..]);
    assert!(h.take().is_empty());
    assert!(h.conn.is_idle());
    assert_eq!(h.stats.llm_calls, 1);
}

#[test]
fn capture_privacy_no_text_in_events() {
    let mut h = H::new();
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", true, true, 10),
    ))
    .read(&chunked_response(200, SSE, &openai_stream(true), 64));
    let text = format!("{:?}", h.take());
    for secret in ["ppppp", "Hel", "sk-secret", "private"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

#[test]
fn capture_limits_deserialize_with_defaults() {
    #[derive(serde::Deserialize)]
    struct Cfg {
        capture: CaptureLimits,
    }
    let cfg: Cfg = toml::from_str("[capture]\nmax_header_bytes = 1024\n").unwrap();
    assert_eq!(
        cfg.capture,
        CaptureLimits {
            max_header_bytes: 1024,
            ..CaptureLimits::default()
        }
    );
    assert_eq!(CaptureLimits::default().max_request_body, 8 * 1024 * 1024);
}

#[test]
fn capture_pending_queue_is_bounded() {
    let mut h = H::new();
    h.write(&request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o-mini", false, false, 1),
    ));
    for _ in 0..300 {
        h.write(&get("/v1/models"));
    }
    let events = h.take();
    assert_eq!(events.len(), 2, "{events:#?}");
    let CaptureEvent::Call(call) = &events[1] else {
        panic!()
    };
    assert!(!call.complete);
    assert_eq!(h.stats.exchanges_dropped, 45);
}

// ---------------------------------------------------------------- API breadth

fn run_exchange(req: &[u8], resp: &[u8], piece: usize) -> (LlmCall, CaptureStats) {
    let mut h = H::new();
    h.write(req);
    h.read_pieces(resp, piece);
    let call = only_call(&mut h);
    (call, h.stats)
}

#[test]
fn capture_responses_api_json_and_stream() {
    use crate::providers::responses::tests::{BODY, STREAM, stream_usage};
    let body = br#"{"model":"gpt-5-mini","input":"hi","store":false}"#;
    let req = request("/v1/responses", "api.openai.com", body);
    let (call, _) = run_exchange(&req, &response(200, JSON, BODY), 4096);
    assert_eq!(
        (call.request.api.as_str(), call.request.provider.as_str()),
        ("responses", "openai")
    );
    assert_eq!(call.request.model.as_deref(), Some("gpt-5-mini"));
    assert_eq!(
        (call.usage.input_tokens, call.usage.reasoning_tokens),
        (328, 32)
    );
    assert_eq!(call.usage_source, UsageSource::Reported);

    let body = br#"{"model":"gpt-4o-mini","input":"hi","stream":true}"#;
    let req = request("/v1/responses", "api.openai.com", body);
    let resp = chunked_response(200, SSE, STREAM, 97);
    for piece in [1, 13, 4096] {
        let (call, stats) = run_exchange(&req, &resp, piece);
        assert!(call.request.streaming && call.complete);
        assert_eq!(call.usage, stream_usage(), "piece {piece}");
        assert_eq!(stats.json_errors, 0);
    }
}

#[test]
fn capture_gemini_sse_json_array_and_whole_body() {
    use crate::providers::gemini::tests::{BODY, array_stream, body_usage, sse_stream};
    let body = br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let host = "generativelanguage.googleapis.com";
    let req = request(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        host,
        body,
    );
    let (call, _) = run_exchange(&req, &response(200, JSON, BODY), 4096);
    assert_eq!(call.request.api, "generate_content");
    assert_eq!(call.request.provider, "gemini");
    assert_eq!(call.request.model.as_deref(), Some("gemini-2.5-flash"));
    assert!(!call.request.streaming);
    assert_eq!(call.usage, body_usage());

    let sse_req = request(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        host,
        body,
    );
    let arr_req = request(
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        host,
        body,
    );
    let sse = chunked_response(
        200,
        "Content-Type: text/event-stream\r\n",
        &sse_stream(),
        50,
    );
    let arr = chunked_response(
        200,
        "Content-Type: application/json; charset=UTF-8\r\n",
        &array_stream(),
        64,
    );
    for piece in [1, 7, 4096] {
        for (req, resp) in [(&sse_req, &sse), (&arr_req, &arr)] {
            let (call, stats) = run_exchange(req, resp, piece);
            assert!(call.request.streaming && call.complete);
            assert_eq!(call.usage, body_usage(), "piece {piece}");
            assert_eq!(call.usage_source, UsageSource::Reported);
            assert_eq!(stats.json_errors, 0);
        }
    }
    // Cut before the final chunk: recorded, incomplete, usage missing.
    let a = array_stream();
    let cut = chunked_response(200, JSON, &a[..a.len() * 2 / 3], 64);
    let mut h = H::new();
    h.write(&arr_req).read(&cut[..cut.len() - 5]).close();
    let call = only_call(&mut h);
    assert!(!call.complete);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(call.usage, Usage::default());
}

#[test]
fn capture_ollama_ndjson_and_whole() {
    use crate::providers::ollama::tests::{CHAT_STREAM, GENERATE_BODY};
    let req = request(
        "/api/chat",
        "localhost:11434",
        br#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}"#,
    );
    let resp = chunked_response(
        200,
        "Content-Type: application/x-ndjson\r\n",
        CHAT_STREAM,
        33,
    );
    for piece in [1, 9, 4096] {
        let (call, _) = run_exchange(&req, &resp, piece);
        assert_eq!(
            (call.request.api.as_str(), call.request.provider.as_str()),
            ("ollama.chat", "ollama")
        );
        assert!(call.request.streaming, "Ollama streams by default");
        assert_eq!(
            (call.usage.input_tokens, call.usage.output_tokens),
            (26, 282)
        );
        assert_eq!(call.response_model.as_deref(), Some("llama3.2"));
    }
    let req = request(
        "/api/generate",
        "localhost:11434",
        br#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
    );
    let (call, _) = run_exchange(&req, &response(200, JSON, GENERATE_BODY), 4096);
    assert_eq!(call.request.api, "ollama.generate");
    assert!(!call.request.streaming);
    assert_eq!(
        (call.usage.input_tokens, call.usage.output_tokens),
        (26, 290)
    );
    // Truncated stream: missing, never zero-as-reported.
    let mut h = H::new();
    let cut = chunked_response(
        200,
        "Content-Type: application/x-ndjson\r\n",
        &CHAT_STREAM[..CHAT_STREAM.len() - 60],
        33,
    );
    h.write(&request(
        "/api/chat",
        "localhost:11434",
        br#"{"model":"llama3.2"}"#,
    ))
    .read(&cut[..cut.len() - 5])
    .close();
    let call = only_call(&mut h);
    assert_eq!(
        (call.complete, call.usage_source),
        (false, UsageSource::Missing)
    );
}

#[test]
fn capture_legacy_completions_embeddings_and_azure() {
    let comp = br#"{"id":"cmpl-1","object":"text_completion","model":"gpt-3.5-turbo-instruct","choices":[{"text":"x","index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
    let req = request(
        "/v1/completions",
        "api.openai.com",
        br#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}"#,
    );
    let (call, _) = run_exchange(&req, &response(200, JSON, comp), 4096);
    assert_eq!(call.request.api, "completions");
    assert_eq!((call.usage.input_tokens, call.usage.output_tokens), (5, 7));

    let emb = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let req = request(
        "/v1/embeddings",
        "api.openai.com",
        br#"{"model":"text-embedding-3-small","input":"hi"}"#,
    );
    let (call, _) = run_exchange(&req, &response(200, JSON, emb), 4096);
    assert_eq!(call.request.api, "embeddings");
    assert_eq!(
        call.usage,
        Usage {
            input_tokens: 8,
            ..Usage::default()
        }
    );
    assert_eq!(call.usage_source, UsageSource::Reported);

    // Azure: no model in the body, the deployment names it; the host names the provider.
    let req = request(
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21",
        "my-res.openai.azure.com",
        br#"{"messages":[{"role":"user","content":"hi"}]}"#,
    );
    let (call, _) = run_exchange(&req, &response(200, JSON, OPENAI_JSON), 4096);
    assert_eq!(call.request.provider, "azure_openai");
    assert_eq!(call.request.api, "chat.completions");
    assert_eq!(call.request.model.as_deref(), Some("prod-4o"));
    assert_eq!(call.usage, openai_json_usage());
}

#[test]
fn capture_zstd_json_and_stream() {
    use crate::protocol::decode::tests::{zstd, zstd_flushed};
    let req = request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", false, false, 10),
    );
    let resp = response(
        200,
        "Content-Type: application/json\r\nContent-Encoding: zstd\r\n",
        &zstd(OPENAI_JSON),
    );
    let (call, stats) = run_exchange(&req, &resp, 5);
    assert_eq!(call.usage, openai_json_usage());
    assert_eq!(stats.decode_errors, 0);

    // A zstd stream flushed per event: the call ends at [DONE], before the frame's end.
    let stream = openai_stream(true);
    let text = String::from_utf8(stream).unwrap();
    let events: Vec<String> = text.split_inclusive("\n\n").map(str::to_string).collect();
    let pieces: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    let z = zstd_flushed(&pieces);
    let req = request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", true, true, 10),
    );
    let resp = chunked_response(
        200,
        "Content-Type: text/event-stream\r\nContent-Encoding: zstd\r\n",
        &z,
        40,
    );
    for piece in [1, 3, 4096] {
        let (call, stats) = run_exchange(&req, &resp, piece);
        assert_eq!((call.usage.input_tokens, call.usage.output_tokens), (50, 3));
        assert!(call.complete);
        assert_eq!((stats.decode_errors, stats.json_errors), (0, 0));
    }
    // Corrupt zstd: counted, usage missing, no panic.
    let resp = response(
        200,
        "Content-Type: application/json\r\nContent-Encoding: zstd\r\n",
        b"\x28\xb5\x2f\xfdgarbage-not-a-frame",
    );
    let req = request(
        "/v1/chat/completions",
        "api.openai.com",
        &openai_body("gpt-4o", false, false, 10),
    );
    let (call, stats) = run_exchange(&req, &resp, 4096);
    assert_eq!(call.usage_source, UsageSource::Missing);
    assert_eq!(stats.decode_errors, 1);
}

#[test]
fn capture_new_apis_truncated_non_stream_bodies_are_missing() {
    use crate::providers::{gemini, responses};
    let cases: [(&str, &[u8], &[u8]); 3] = [
        ("/v1/responses", br#"{"model":"gpt-4o-mini","input":"x"}"#, responses::tests::BODY),
        ("/v1beta/models/gemini-2.5-flash:generateContent", b"{}", gemini::tests::BODY),
        ("/v1/embeddings", br#"{"model":"text-embedding-3-small","input":"x"}"#, br#"{"object":"list","data":[],"model":"m","usage":{"prompt_tokens":8,"total_tokens":8}}"#),
    ];
    for (path, body, resp_body) in cases {
        let resp = response(200, JSON, resp_body);
        let mut h = H::new();
        h.write(&request(path, "example.test", body))
            .read(&resp[..resp.len() - resp_body.len() / 2])
            .close();
        let call = only_call(&mut h);
        assert_eq!(
            (call.complete, call.usage_source),
            (false, UsageSource::Missing),
            "{path}"
        );
    }
}

#[test]
fn capture_new_apis_garbage_never_panics() {
    let paths = [
        "/v1/responses",
        "/v1beta/models/g:streamGenerateContent",
        "/api/chat",
        "/api/generate",
        "/v1/completions",
        "/v1/embeddings",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for path in paths {
        for ct in [
            "application/x-ndjson",
            "application/json",
            "text/event-stream",
        ] {
            let mut h = H::new();
            h.write(&request(path, "h", br#"{"model":"m","stream":true}"#));
            let junk: Vec<u8> = (0..3000).map(|_| (rnd() % 256) as u8).collect();
            let resp = chunked_response(200, &format!("Content-Type: {ct}\r\n"), &junk, 100);
            h.read_pieces(&resp, 17).close();
            let call = only_call(&mut h);
            assert_eq!(call.usage_source, UsageSource::Missing);
        }
    }
}
