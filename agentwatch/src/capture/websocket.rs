//! The OpenAI Responses API over WebSocket (Codex's default transport): after `GET
//! /v1/responses` is answered `101`, each client text message `{"type":"response.create", …}`
//! is a request with the same body fields as `POST /v1/responses`, and the server answers with
//! the Responses streaming events as JSON text messages, `response.completed` carrying the usage.
//!
//! Each call goes through the same exchange steps as an HTTP call: the message is the request
//! body, the server's messages are fed as the events of an SSE stream. A `response.create` with
//! `"generate": false` is a warm-up (no output, nothing billed): its answer is skipped. Loss or
//! a bad frame leaves framing and the deflate contexts out of step: the connection is then
//! desynchronised, calls in flight are emitted incomplete, and the rest is ignored.
use std::collections::VecDeque;

use serde::Deserialize;

use super::exchange::{BodyReader, Exchange, RequestState, ResponseState};
use super::transport::{Direction, PerDirection, Transport};
use super::{CaptureEvent, CaptureLimits, CaptureStats};
use crate::protocol::websocket::{Deflate, FrameReader, Inflater, Opcode};
use crate::providers::Framing;

/// In-flight `response.create`s on one connection at most.
const MAX_IN_FLIGHT: usize = 64;

/// What a message says about itself (only its type; the rest stays unparsed here).
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a str>,
    generate: Option<bool>,
}

enum InFlight {
    Warmup,
    Call {
        ex: Box<Exchange>,
        response_bytes: u64,
    },
}

/// One direction: its frames, and its deflate context if `permessage-deflate` was negotiated.
#[derive(Debug)]
struct Side {
    frames: FrameReader,
    inflate: Option<Inflater>,
}

#[derive(Debug)]
pub(super) struct WebSocket {
    limits: CaptureLimits,
    host: Option<String>,
    sides: PerDirection<Side>,
    in_flight: VecDeque<InFlight>,
    desynced: bool,
}

/// Shows no content.
impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InFlight::Warmup => "Warmup",
            InFlight::Call { .. } => "Call",
        })
    }
}

impl WebSocket {
    /// A connection upgraded by a `101` whose `Sec-WebSocket-Extensions` answer was
    /// `extensions`, to `host`.
    pub(super) fn new(
        limits: CaptureLimits,
        host: Option<String>,
        extensions: Option<&str>,
    ) -> Self {
        let deflate = Deflate::negotiated(extensions);
        let max = limits.max_request_body.max(limits.max_response_body);
        Self {
            limits,
            host,
            sides: PerDirection {
                write: Side {
                    frames: FrameReader::new(max),
                    inflate: deflate.map(|d| Inflater::new(d.client_no_context_takeover)),
                },
                read: Side {
                    frames: FrameReader::new(max),
                    inflate: deflate.map(|d| Inflater::new(d.server_no_context_takeover)),
                },
            },
            in_flight: VecDeque::new(),
            desynced: false,
        }
    }

    /// A client text message (`wire`: its bytes on the wire, the request size).
    fn client_message(
        &mut self,
        message: &[u8],
        wire: u64,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let Ok(kind) = serde_json::from_slice::<Kind>(message) else {
            stats.json_errors += 1;
            return;
        };
        if kind.kind != Some("response.create") {
            return;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            stats.exchanges_dropped += 1;
            if let Some(InFlight::Call { ex, response_bytes }) = self.in_flight.pop_front() {
                Self::end(*ex, response_bytes, ts_ns, false, stats, out);
            }
        }
        if kind.generate == Some(false) {
            stats.websocket_warmups += 1;
            self.in_flight.push_back(InFlight::Warmup);
            return;
        }
        stats.http_requests += 1;
        let mut ex =
            Exchange::for_message("POST", "/v1/responses", self.host.clone(), "1.1", ts_ns);
        let mut body = BodyReader::new(None, Framing::Whole, self.limits.max_request_body, stats);
        body.keep_prefix = true;
        body.feed(message, stats, &mut |_| {});
        ex.finish_request(Some(body), wire, stats, out);
        if let Some(req) = ex.llm.as_mut() {
            // Every answer over the socket is a stream of events.
            req.streaming = true;
        }
        ex.start_response(
            200,
            Some("text/event-stream"),
            None,
            self.limits.max_response_body,
            stats,
        );
        self.in_flight.push_back(InFlight::Call {
            ex: Box::new(ex),
            response_bytes: 0,
        });
    }

    fn server_message(
        &mut self,
        message: &[u8],
        wire: u64,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let terminal = serde_json::from_slice::<Kind>(message).is_ok_and(|k| {
            matches!(
                k.kind,
                Some("response.completed" | "response.failed" | "response.incomplete" | "error")
            )
        });
        match self.in_flight.front_mut() {
            None => {}
            Some(InFlight::Warmup) => {}
            Some(InFlight::Call { ex, response_bytes }) => {
                *response_bytes += wire;
                // As one SSE event (JSON text has no raw newlines outside strings).
                let mut event = Vec::with_capacity(message.len() + 8);
                event.extend_from_slice(b"data: ");
                event.extend(message.iter().map(|b| if *b == b'\n' { b' ' } else { *b }));
                event.extend_from_slice(b"\n\n");
                ex.response_body(&event, ts_ns, *response_bytes, stats, out);
            }
        }
        if terminal && let Some(InFlight::Call { ex, response_bytes }) = self.in_flight.pop_front()
        {
            Self::end(*ex, response_bytes, ts_ns, true, stats, out);
        }
    }

    fn end(
        mut ex: Exchange,
        response_bytes: u64,
        ts_ns: u64,
        complete: bool,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if ex.response != ResponseState::Done {
            ex.end_response(ts_ns, complete, response_bytes, stats);
        }
        ex.finalize(stats, out);
    }

    fn desync(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        stats.websocket_desynced += 1;
        self.close(ts_ns, stats, out);
        self.desynced = true;
    }
}

impl Transport for WebSocket {
    fn on_bytes(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.desynced {
            stats.bytes_discarded += data.len() as u64;
            return;
        }
        let mut messages: Vec<(Opcode, Vec<u8>, u64)> = Vec::new();
        let side = &mut self.sides[dir];
        let fed = side
            .frames
            .feed(data, side.inflate.as_mut(), &mut |op, m, wire| {
                messages.push((op, m.to_vec(), wire))
            });
        for (op, message, wire) in messages {
            stats.websocket_messages += 1;
            if op != Opcode::Text {
                continue;
            }
            match dir {
                Direction::Write => self.client_message(&message, wire, ts_ns, stats, out),
                Direction::Read => self.server_message(&message, wire, ts_ns, stats, out),
            }
        }
        match fed {
            Ok(false) => {}
            // A close frame: the calls still open end with the connection.
            Ok(true) => self.close(ts_ns, stats, out),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket stream broken; desynchronised");
                if matches!(e, crate::protocol::websocket::WsError::Inflate) {
                    stats.websocket_inflate_errors += 1;
                }
                self.desync(ts_ns, stats, out);
            }
        }
    }

    /// Bytes were lost (either way): framing and the deflate contexts are out of step.
    fn on_loss(
        &mut self,
        _: Direction,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if !self.desynced {
            self.desync(ts_ns, stats, out);
        }
    }

    /// Ends every call in flight, incomplete.
    fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        while let Some(item) = self.in_flight.pop_front() {
            if let InFlight::Call { ex, response_bytes } = item {
                debug_assert!(ex.request == RequestState::Done);
                Self::end(*ex, response_bytes, ts_ns, false, stats, out);
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight.is_empty()
    }
}
