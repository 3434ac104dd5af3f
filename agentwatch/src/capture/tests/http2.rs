//! HTTP/2 connections driven through `Connection`: frames built here, header blocks encoded
//! with a real HPACK encoder (so later blocks lean on the dynamic table, as real clients do).

use loona_hpack::Encoder;

use super::*;
use crate::capture::Http2Hold;
use crate::protocol::http2::{
    CONTINUATION, DATA, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, GOAWAY, HEADERS, PREFACE,
    REFUSED_STREAM, RST_STREAM, SETTINGS, frame,
};

/// A HEADERS frame, split into CONTINUATION frames of `piece` bytes of block.
fn headers(
    enc: &mut Encoder<'static>,
    stream: u32,
    fields: &[(&str, &str)],
    end_stream: bool,
    piece: usize,
) -> Vec<u8> {
    let block = enc.encode(fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    let pieces: Vec<&[u8]> = block.chunks(piece).collect();
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut flags = if last { FLAG_END_HEADERS } else { 0 };
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        if i == 0 && end_stream {
            flags |= FLAG_END_STREAM;
        }
        out.extend(frame(kind, flags, stream, p));
    }
    out
}

/// DATA frames of at most `max` bytes; the last one ends the stream if asked.
fn data(stream: u32, body: &[u8], max: usize, end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = body.chunks(max).collect();
    for (i, p) in pieces.iter().enumerate() {
        let flags = if end_stream && i + 1 == pieces.len() {
            FLAG_END_STREAM
        } else {
            0
        };
        out.extend(frame(DATA, flags, stream, p));
    }
    out
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn request_fields<'a>(path: &'a str, authority: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
        ("authorization", "Bearer sk-secret"),
        ("content-type", "application/json"),
        ("accept-encoding", "gzip"),
    ]
}

/// Client and server bytes of a connection with three LLM streams, the first two concurrent
/// and interleaved; the third reuses the dynamic table.
fn three_streams() -> (Vec<u8>, Vec<u8>) {
    let mut cenc = Encoder::new();
    let mut senc = Encoder::new();
    let mut w = PREFACE.to_vec();
    w.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]));
    w.extend(headers(
        &mut cenc,
        1,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    ));
    w.extend(data(
        1,
        &openai_body("gpt-4o-mini", false, false, 40_000),
        16_384,
        true,
    ));
    w.extend(headers(
        &mut cenc,
        3,
        &request_fields("/v1/messages", "api.anthropic.com"),
        false,
        20,
    ));
    w.extend(data(3, &anthropic_body("claude-haiku-4-5", true), 50, true));
    w.extend(headers(
        &mut cenc,
        5,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    ));
    w.extend(data(
        5,
        &openai_body("gpt-4o", true, true, 10),
        16_384,
        true,
    ));

    let mut r = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    r.extend(frame(SETTINGS, 1, 0, &[]));
    let sse = ANTHROPIC_STREAM;
    let half = sse.len() / 2;
    r.extend(headers(
        &mut senc,
        3,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
        4096,
    ));
    r.extend(data(3, &sse[..half], 64, false));
    let gz = gzip(OPENAI_JSON);
    r.extend(headers(
        &mut senc,
        1,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        false,
        4096,
    ));
    // A padded DATA frame: pad length 3, then 3 bytes of padding.
    let mut padded = vec![3u8];
    padded.extend_from_slice(&gz);
    padded.extend_from_slice(&[0, 0, 0]);
    r.extend(frame(DATA, FLAG_PADDED | FLAG_END_STREAM, 1, &padded));
    r.extend(data(3, &sse[half..], 64, true));
    r.extend(headers(&mut senc, 5, &[(":status", "100")], false, 4096));
    r.extend(headers(
        &mut senc,
        5,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
        4096,
    ));
    r.extend(data(5, &openai_stream(true), 30, false));
    // Trailers end the stream.
    r.extend(headers(&mut senc, 5, &[("x-trailer", "1")], true, 4096));
    (w, r)
}

fn check_three(calls: &[LlmCall]) {
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let openai = calls
        .iter()
        .find(|c| {
            c.request.server_address.as_deref() == Some("api.openai.com") && !c.request.streaming
        })
        .unwrap();
    assert_eq!(openai.usage, openai_json_usage());
    assert_eq!(openai.request.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(openai.request.http_version, "2");
    assert_eq!(openai.request.provider, "openai");
    assert!(openai.complete);
    let anthropic = calls.iter().find(|c| c.request.api == "messages").unwrap();
    assert_eq!(anthropic.usage, expected_stream_usage());
    assert_eq!(anthropic.request.provider, "anthropic");
    assert!(anthropic.request.streaming && anthropic.complete);
    let streamed = calls
        .iter()
        .find(|c| c.request.model.as_deref() == Some("gpt-4o"))
        .unwrap();
    assert_eq!(streamed.usage.input_tokens, 50);
    assert_eq!(streamed.usage.output_tokens, 3);
    assert_eq!(streamed.usage_source, UsageSource::Reported);
    assert_eq!(streamed.status, Some(200));
    for c in calls {
        let text = format!("{c:?}");
        assert!(
            !text.contains("sk-secret")
                && !text.contains("ppppp")
                && !text.contains("secret answer")
        );
    }
}

#[test]
fn http2_concurrent_streams_hpack_padding_continuation_trailers() {
    let (w, r) = three_streams();
    let mut h = H::new();
    h.write(&w).read(&r);
    let calls = h.calls();
    check_three(&calls);
    assert_eq!(h.stats.http2_connections, 1);
    assert_eq!(h.stats.http2_streams, 3);
    assert_eq!(h.stats.llm_calls, 3);
    assert_eq!(
        h.stats.hpack_errors + h.stats.http_errors + h.stats.http2_desynced,
        0
    );
    assert!(h.conn.is_idle());
    // Stream 3's response began first but stream 1's ended first, and is emitted first:
    // streams complete independently.
    assert!(calls[0].request.api == "chat.completions" && !calls[0].request.streaming);
    assert_eq!(calls[1].request.api, "messages");
}

#[test]
fn http2_bytes_cut_anywhere_give_the_same_calls() {
    let (w, r) = three_streams();
    for piece in [1, 2, 7, 9, 100, 4099] {
        let mut h = H::new();
        for c in w.chunks(piece) {
            h.write(c);
        }
        for c in r.chunks(piece) {
            h.read(c);
        }
        check_three(&h.calls());
        assert!(h.conn.is_idle(), "piece {piece}");
    }
}

fn open_request(h: &mut H, cenc: &mut Encoder<'static>, stream: u32, first: bool) {
    let mut w = if first { PREFACE.to_vec() } else { Vec::new() };
    w.extend(headers(
        cenc,
        stream,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    ));
    w.extend(data(
        stream,
        &openai_body("gpt-4o", true, true, 5),
        16_384,
        true,
    ));
    h.write(&w);
}

#[test]
fn http2_reset_refused_goaway_loss_and_close() {
    let mut cenc = Encoder::new();
    let mut senc = Encoder::new();
    let mut h = H::new();
    open_request(&mut h, &mut cenc, 1, true);
    open_request(&mut h, &mut cenc, 3, false);
    open_request(&mut h, &mut cenc, 5, false);
    open_request(&mut h, &mut cenc, 7, false);
    // Stream 1: part of a stream, then the server resets it: incomplete, usage missing.
    let mut r = headers(
        &mut senc,
        1,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
        4096,
    );
    let sse = openai_stream(true);
    r.extend(data(1, &sse[..100], 100, false));
    r.extend(rst(1, 0x8));
    // Stream 3: refused unprocessed: not a call. Then GOAWAY(last = 5) refuses stream 7.
    r.extend(rst(3, REFUSED_STREAM));
    let mut goaway = 5u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    r.extend(frame(GOAWAY, 0, 0, &goaway));
    h.read(&r);
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(!calls[0].complete);
    assert_eq!(calls[0].usage_source, UsageSource::Missing);
    assert_eq!(h.stats.http2_streams_reset, 1);
    assert_eq!(h.stats.http2_streams_refused, 2);
    // Stream 5 is still open; the connection closes: incomplete.
    h.read(&headers(
        &mut senc,
        5,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
        4096,
    ));
    h.close();
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].complete);
    assert!(h.conn.is_idle());

    // Loss on the read side: the open stream is given up, the rest of the connection ignored.
    let mut cenc = Encoder::new();
    let mut h = H::new();
    open_request(&mut h, &mut cenc, 1, true);
    h.loss(false);
    assert_eq!(h.stats.http2_desynced, 1);
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].complete);
    open_request(&mut h, &mut cenc, 3, false);
    h.read(&headers(
        &mut Encoder::new(),
        3,
        &[(":status", "200")],
        true,
        4096,
    ));
    assert!(h.calls().is_empty());
    h.close();
    assert!(h.conn.is_idle());

    // A request cut before END_STREAM and then closed was never sent whole: not a call.
    let mut cenc = Encoder::new();
    let mut h = H::new();
    let mut w = PREFACE.to_vec();
    w.extend(headers(
        &mut cenc,
        1,
        &request_fields("/v1/messages", "api.anthropic.com"),
        false,
        4096,
    ));
    w.extend(data(1, b"{\"model\":", 100, false));
    h.write(&w).close();
    assert!(h.calls().is_empty());
    assert_eq!(h.stats.abandoned_requests, 1);
}

#[test]
fn http2_bad_hpack_continuation_and_garbage_never_panic() {
    // An undecodable header block (index far beyond both tables).
    let mut h = H::new();
    let mut w = PREFACE.to_vec();
    w.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0xff, 0x7f]));
    h.write(&w);
    assert_eq!(h.stats.hpack_errors, 1);
    assert_eq!(h.stats.http2_desynced, 1);
    h.write(&[0u8; 64]).read(&[1u8; 64]).close();
    assert!(h.calls().is_empty());

    // CONTINUATION without HEADERS.
    let mut h = H::new();
    let mut w = PREFACE.to_vec();
    w.extend(frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]));
    h.write(&w);
    assert_eq!(h.stats.http2_desynced, 1);

    // Pseudo-random frames after the preface, both directions.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..300 {
        let mut h = H::new();
        h.write(PREFACE);
        for _ in 0..20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let kind = ((x >> 8) % 11) as u8;
            let flags = (x >> 16) as u8;
            let stream = ((x >> 24) % 6) as u32;
            let payload: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            let f = frame(kind, flags, stream, &payload);
            if x & 1 == 0 {
                h.write(&f);
            } else {
                h.read(&f);
            }
        }
        h.close();
        assert!(h.conn.is_idle());
    }
}

#[test]
fn http2_hold_tells_setup_new_llm_streams_and_open_streams_apart() {
    use crate::providers::Api;
    let openai = Some((Api::OpenAiChat, Some("api.openai.com".to_string())));
    let mut cenc = Encoder::new();
    // A new connection's first write: preface and SETTINGS only.
    let mut setup = PREFACE.to_vec();
    setup.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]));
    assert_eq!(Connection::http2_hold(None, &setup), Http2Hold::NoRequest);
    // Preface, SETTINGS and the first request's HEADERS in one write, cut at 256 bytes.
    let mut first = setup.clone();
    first.extend(headers(
        &mut cenc,
        1,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    ));
    first.extend(data(
        1,
        &openai_body("gpt-4o", false, false, 500),
        16_384,
        true,
    ));
    first.truncate(256);
    assert_eq!(
        Connection::http2_hold(None, &first),
        Http2Hold::NewStream(openai.clone())
    );
    // A non-LLM first request.
    let mut other = PREFACE.to_vec();
    other.extend(headers(
        &mut Encoder::new(),
        1,
        &[
            (":method", "GET"),
            (":path", "/index.html"),
            (":authority", "example.com"),
        ],
        true,
        4096,
    ));
    assert_eq!(
        Connection::http2_hold(None, &other),
        Http2Hold::NewStream(None)
    );

    // On a connection that made an LLM call: the next HEADERS (leaning on the dynamic table)
    // is a new LLM stream; a DATA frame of an open stream is not a new request.
    let mut full = setup;
    full.extend(headers(
        &mut Encoder::new(),
        1,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    ));
    full.extend(data(
        1,
        &openai_body("gpt-4o", false, false, 5),
        16_384,
        true,
    ));
    let mut h = H::new();
    h.write(&full);
    let mut cenc2 = Encoder::new();
    let _ = cenc2.encode(
        request_fields("/v1/chat/completions", "api.openai.com")
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    );
    let next = headers(
        &mut cenc2,
        3,
        &request_fields("/v1/chat/completions", "api.openai.com"),
        false,
        4096,
    );
    assert_eq!(
        Connection::http2_hold(Some(&h.conn), &next),
        Http2Hold::NewStream(openai)
    );
    let body = data(3, b"{\"model\":\"gpt-4o\"}", 100, true);
    assert_eq!(
        Connection::http2_hold(Some(&h.conn), &body),
        Http2Hold::OpenStreams
    );
    // HTTP/1 connections are left to the request-line classifier.
    let mut h1 = H::new();
    h1.write(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        Connection::http2_hold(Some(&h1.conn), b"POST /v1/messages HTTP/1.1\r\n"),
        Http2Hold::NotHttp2
    );
}

/// hypercorn (h2) sends a response's END_STREAM in an empty DATA frame of its own; curl, once it
/// has `content-length` bytes, can exit without reading that frame. A response complete by its
/// length is a complete call; the late END_STREAM frame changes nothing.
#[test]
fn http2_response_complete_by_content_length_without_end_stream() {
    let gz = gzip(OPENAI_JSON);
    let len = gz.len().to_string();
    for read_end_stream in [false, true] {
        let mut cenc = Encoder::new();
        let mut senc = Encoder::new();
        let mut h = H::new();
        open_request(&mut h, &mut cenc, 1, true);
        let mut r = headers(
            &mut senc,
            1,
            &[
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("content-length", &len),
            ],
            false,
            4096,
        );
        // The body in two frames, neither ending the stream.
        r.extend(data(1, &gz, gz.len() / 2 + 1, false));
        h.read(&r);
        if read_end_stream {
            h.read(&frame(DATA, FLAG_END_STREAM, 1, &[]));
        }
        // A second stream on the connection: a zero-length response is complete at its head.
        open_request(&mut h, &mut cenc, 3, false);
        h.read(&headers(
            &mut senc,
            3,
            &[(":status", "200"), ("content-length", "0")],
            false,
            4096,
        ));
        let calls = h.calls();
        assert_eq!(calls.len(), 2, "{calls:#?}");
        assert!(calls[0].complete, "{:?}", calls[0]);
        assert_eq!(calls[0].usage, openai_json_usage());
        assert_eq!(calls[0].usage_source, UsageSource::Reported);
        assert!(calls[1].complete, "{:?}", calls[1]);
        assert!(h.conn.is_idle());
        h.close();
        assert!(h.calls().is_empty(), "nothing more at close");
    }
}
