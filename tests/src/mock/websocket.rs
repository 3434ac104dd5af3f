//! The Responses API's WebSocket mode (`GET /v1/responses` with `Upgrade: websocket`), as
//! Codex uses it: each client text message `{"type":"response.create", …}` carries the body of
//! a `POST /v1/responses`; the answer is the same streaming events, one JSON text message each.
//! A `response.create` with `"generate": false` is a warm-up: `response.created` and a
//! `response.completed` without output or usage, not logged (nothing is billed). When the client
//! offers permessage-deflate (and `--no-ws-deflate` is not given) the server accepts it with
//! context takeover both ways and compresses every message it sends.
use base64::Engine;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, timeout};

use super::app::{self, AppState, Body, Request};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest client message accepted (a Codex request is ~60 KB).
const MAX_MESSAGE: usize = 8 << 20;
const IDLE: Duration = Duration::from_secs(60);
const PROTOCOL: &str = "websocket";

pub fn is_upgrade(req: &Request) -> bool {
    req.method == "GET"
        && req.path().ends_with("/responses")
        && req
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

struct Socket<'a, IO> {
    io: &'a mut IO,
    buf: Vec<u8>,
    /// Compression contexts when permessage-deflate was accepted (server → client, and the
    /// client's for its messages).
    deflate: Option<(Compress, Decompress)>,
    written: u64,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Socket<'_, IO> {
    async fn fill(&mut self) -> Option<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = timeout(IDLE, self.io.read(&mut tmp)).await.ok()?.ok()?;
        (n > 0).then(|| self.buf.extend_from_slice(&tmp[..n]))
    }

    async fn need(&mut self, n: usize) -> Option<()> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Some(())
    }

    /// The next whole message: (opcode, payload), control frames answered on the way.
    async fn message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut message = Vec::new();
        let mut first: Option<(u8, bool)> = None;
        loop {
            self.need(2).await?;
            let (b0, b1) = (self.buf[0], self.buf[1]);
            let mut at = 2;
            let mut len = (b1 & 0x7f) as usize;
            if len == 126 {
                self.need(4).await?;
                len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                at = 4;
            } else if len == 127 {
                self.need(10).await?;
                len = u64::from_be_bytes(self.buf[2..10].try_into().ok()?) as usize;
                at = 10;
            }
            if len > MAX_MESSAGE || b1 & 0x80 == 0 {
                return None; // too large, or an unmasked client frame
            }
            self.need(at + 4 + len).await?;
            let key: [u8; 4] = self.buf[at..at + 4].try_into().ok()?;
            let mut payload: Vec<u8> = self.buf[at + 4..at + 4 + len].to_vec();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            self.buf.drain(..at + 4 + len);
            let opcode = b0 & 0x0f;
            match opcode {
                0x8 => {
                    let _ = self.send(0x8, &[]).await;
                    return None;
                }
                0x9 => {
                    self.send(0xA, &payload).await.ok()?;
                    continue;
                }
                0xA => continue,
                _ => {}
            }
            if first.is_none() {
                first = Some((opcode, b0 & 0x40 != 0));
            }
            message.extend_from_slice(&payload);
            if message.len() > MAX_MESSAGE {
                return None;
            }
            if b0 & 0x80 != 0 {
                let (opcode, compressed) = first?;
                if compressed {
                    let (_, z) = self.deflate.as_mut()?;
                    message.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    let mut out = Vec::with_capacity(message.len() * 4 + 1024);
                    let mut pos = 0;
                    loop {
                        let (before_in, before_out) = (z.total_in(), z.total_out());
                        z.decompress_vec(&message[pos..], &mut out, FlushDecompress::Sync)
                            .ok()?;
                        pos += (z.total_in() - before_in) as usize;
                        let stuck = z.total_in() == before_in && z.total_out() == before_out;
                        if (pos >= message.len() && out.len() < out.capacity()) || stuck {
                            break;
                        }
                        if out.len() > 4 * MAX_MESSAGE {
                            return None;
                        }
                        out.reserve(out.capacity().max(1024));
                    }
                    return Some((opcode, out));
                }
                return Some((opcode, message));
            }
        }
    }

    /// Sends one unfragmented frame (a text message compressed when deflate is on).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut first = 0x80 | opcode;
        let mut body = payload.to_vec();
        if opcode == 0x1
            && let Some((z, _)) = self.deflate.as_mut()
        {
            let mut out = Vec::with_capacity(payload.len() + 128);
            z.compress_vec(payload, &mut out, FlushCompress::Sync)
                .map_err(std::io::Error::other)?;
            out.truncate(out.len().saturating_sub(4));
            body = out;
            first |= 0x40;
        }
        let mut frame = vec![first];
        match body.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&body);
        self.written += frame.len() as u64;
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }
}

/// The JSON of each SSE event's `data:` line.
fn event_data(event: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(event).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("data: "))?;
    Some(line.as_bytes())
}

/// Serves the socket after the upgrade request `req` (with `leftover` bytes already read).
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    leftover: Vec<u8>,
    req: &Request,
    state: &AppState,
    conn_id: u64,
) {
    let Some(key) = req.header("sec-websocket-key") else {
        let _ = io
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    let offered = req
        .header("sec-websocket-extensions")
        .is_some_and(|e| e.contains("permessage-deflate"));
    let deflate = offered && state.config.ws_deflate;
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n",
        accept_key(key)
    );
    if deflate {
        head.push_str("sec-websocket-extensions: permessage-deflate\r\n");
    }
    head.push_str("\r\n");
    if io.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut socket = Socket {
        io,
        buf: leftover,
        deflate: deflate.then(|| {
            (
                Compress::new(Compression::default(), false),
                Decompress::new(false),
            )
        }),
        written: 0,
    };
    while let Some((opcode, message)) = socket.message().await {
        if opcode != 0x1 {
            continue;
        }
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&message) else {
            continue;
        };
        if body.get("type").and_then(Value::as_str) != Some("response.create") {
            continue;
        }
        body.remove("type");
        if body.remove("generate") == Some(Value::Bool(false)) {
            // A warm-up: acknowledged, nothing generated, nothing billed or logged.
            let seq = state.seq.load(std::sync::atomic::Ordering::SeqCst);
            let id = format!("resp_warmup_{conn_id}_{seq}");
            let model = body.get("model").cloned().unwrap_or(Value::Null);
            for (n, (kind, status)) in [
                ("response.created", "in_progress"),
                ("response.completed", "completed"),
            ]
            .into_iter()
            .enumerate()
            {
                let event = serde_json::json!({
                    "type": kind, "sequence_number": n,
                    "response": {"id": id, "object": "response", "status": status,
                                 "model": model, "output": [], "usage": null},
                });
                if socket
                    .send(0x1, event.to_string().as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            continue;
        }
        body.insert("stream".into(), Value::Bool(true));
        let call = Request {
            method: "POST".into(),
            target: req.target.clone(),
            headers: req.headers.clone(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
            wire_bytes: message.len() as u64,
        };
        let mut resp = app::handle(state, &call, conn_id, PROTOCOL);
        resp.log.websocket_deflate = Some(socket.deflate.is_some());
        let start = socket.written;
        let events: Vec<Vec<u8>> = match &resp.body {
            Body::Events(events) => events.clone(),
            Body::Full(body) => vec![body.clone()],
        };
        let mut ok = true;
        for event in &events {
            let data = match &resp.body {
                Body::Events(_) => event_data(event).unwrap_or(event),
                // An error answer: its JSON body, as the API's `error` event would carry.
                Body::Full(_) => event,
            };
            if socket.send(0x1, data).await.is_err() {
                ok = false;
                break;
            }
        }
        state.finish(&resp, !ok, socket.written - start);
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §1.3's example handshake.
    #[test]
    fn accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_get_upgrades_of_responses_are_taken() {
        let req = |method: &str, target: &str, upgrade: Option<&str>| Request {
            method: method.into(),
            target: target.into(),
            headers: upgrade
                .map(|u| vec![("upgrade".to_string(), u.to_string())])
                .unwrap_or_default(),
            ..Default::default()
        };
        assert!(is_upgrade(&req("GET", "/v1/responses", Some("websocket"))));
        assert!(is_upgrade(&req(
            "GET",
            "/v1/responses?x=1",
            Some("WebSocket")
        )));
        assert!(!is_upgrade(&req(
            "POST",
            "/v1/responses",
            Some("websocket")
        )));
        assert!(!is_upgrade(&req("GET", "/v1/responses", None)));
        assert!(!is_upgrade(&req(
            "GET",
            "/v1/chat/completions",
            Some("websocket")
        )));
    }

    #[test]
    fn sse_events_become_their_data() {
        assert_eq!(
            event_data(b"event: response.created\ndata: {\"a\":1}\n\n"),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(event_data(b"event: x\n\n"), None);
    }
}
