//! The Responses API over WebSocket driven through `Connection`: the upgrade, masked client
//! frames, server events, permessage-deflate with context takeover, warm-ups, loss.

use flate2::{Compress, Compression, FlushCompress};

use super::*;
use crate::protocol::websocket::frame;

const UPGRADE: &[u8] = b"GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nopenai-beta: responses_websockets=2026-02-06\r\n\r\n";

fn switching(deflate: bool) -> Vec<u8> {
    let ext = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    } else {
        ""
    };
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{ext}\r\n").into_bytes()
}

/// One direction's message encoder: masked (client) or not, deflated with one shared context.
struct Side {
    z: Option<Compress>,
    mask: Option<[u8; 4]>,
}

impl Side {
    fn new(deflate: bool, client: bool) -> Self {
        Self {
            z: deflate.then(|| Compress::new(Compression::default(), false)),
            mask: client.then_some([0x37, 0xfa, 0x21, 0x3d]),
        }
    }
    fn message(&mut self, text: &str) -> Vec<u8> {
        match self.z.as_mut() {
            Some(z) => {
                let mut out = Vec::with_capacity(text.len() + 64);
                z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                    .unwrap();
                out.truncate(out.len() - 4);
                frame(0x1, true, true, self.mask, &out)
            }
            None => frame(0x1, true, false, self.mask, text.as_bytes()),
        }
    }
}

fn create(model: &str, generate: Option<bool>) -> String {
    let generate = generate.map_or(String::new(), |g| format!(",\"generate\":{g}"));
    format!(
        "{{\"type\":\"response.create\",\"model\":\"{model}\",\"input\":[{{\"role\":\"user\",\"content\":\"say hi\"}}]{generate}}}"
    )
}

fn events(id: &str, input: u64, output: u64) -> Vec<String> {
    vec![
        format!("{{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"{id}\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-5.1\",\"usage\":null}}}}"),
        "{\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"m\",\"output_index\":0,\"content_index\":0,\"delta\":\"hi\"}".to_string(),
        format!("{{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{{\"id\":\"{id}\",\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-5.1\",\"usage\":{{\"input_tokens\":{input},\"input_tokens_details\":{{\"cached_tokens\":3}},\"output_tokens\":{output},\"output_tokens_details\":{{\"reasoning_tokens\":2}},\"total_tokens\":{}}}}}}}", input + output),
    ]
}

/// Whole exchange bytes: (writes, reads) in order, as one script of (is_write, bytes).
fn script(deflate: bool) -> Vec<(bool, Vec<u8>)> {
    let (mut c, mut s) = (Side::new(deflate, true), Side::new(deflate, false));
    let mut out = vec![(true, UPGRADE.to_vec()), (false, switching(deflate))];
    out.push((true, c.message(&create("gpt-5.1", Some(false)))));
    for e in events("warm", 0, 0) {
        out.push((false, s.message(&e)));
    }
    for (i, (input, output)) in [(1200u64, 30u64), (2400, 45)].into_iter().enumerate() {
        out.push((true, c.message(&create("gpt-5.1", None))));
        for e in events(&format!("resp_{i}"), input, output) {
            out.push((false, s.message(&e)));
        }
    }
    out
}

fn run(h: &mut H, script: &[(bool, Vec<u8>)]) {
    for (write, bytes) in script {
        if *write {
            h.write(bytes);
        } else {
            h.read(bytes);
        }
    }
}

fn check(calls: &[LlmCall]) {
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for (call, (input, output)) in calls.iter().zip([(1200, 30), (2400, 45)]) {
        assert_eq!(call.request.api, "responses");
        assert_eq!(call.request.provider, "openai");
        assert_eq!(call.request.model.as_deref(), Some("gpt-5.1"));
        assert!(call.request.streaming);
        assert!(call.complete);
        assert_eq!(call.usage_source, UsageSource::Reported);
        assert_eq!(call.usage.input_tokens, input);
        assert_eq!(call.usage.output_tokens, output);
        assert_eq!(call.usage.reasoning_tokens, 2);
    }
}

#[test]
fn websocket_responses_with_and_without_deflate_warmup_not_billed() {
    for deflate in [false, true] {
        let mut h = H::new();
        run(&mut h, &script(deflate));
        check(&h.calls());
        assert_eq!(h.stats.websocket_connections, 1);
        assert_eq!(h.stats.websocket_warmups, 1);
        assert_eq!(h.stats.websocket_desynced, 0);
        assert!(h.conn.is_idle());
    }
}

#[test]
fn websocket_bytes_cut_anywhere() {
    for deflate in [false, true] {
        // Server messages all in one read, cut into pieces of every size from 1 to 40.
        let script = script(deflate);
        for piece in 1..40 {
            let mut h = H::new();
            for (write, bytes) in &script {
                if *write {
                    h.write_pieces(bytes, &[bytes.len() / 2]);
                } else {
                    h.read_pieces(bytes, piece);
                }
            }
            check(&h.calls());
        }
    }
}

#[test]
fn websocket_loss_ends_calls_incomplete_and_ignores_the_rest() {
    let script = script(true);
    let mut h = H::new();
    // Up to the second call's first event, then loss on the read side.
    run(&mut h, &script[..script.len() - 2]);
    assert_eq!(h.calls().len(), 1);
    h.loss(false);
    run(&mut h, &script[script.len() - 2..]);
    let calls = h.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(!calls[0].complete);
    assert_eq!(calls[0].usage_source, UsageSource::Missing);
    assert_eq!(h.stats.websocket_desynced, 1);
    // Closing with a call in flight ends it incomplete.
    let mut h = H::new();
    run(&mut h, &script[..script.len() - 2]);
    h.calls();
    h.close();
    let calls = h.calls();
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].complete);
}
