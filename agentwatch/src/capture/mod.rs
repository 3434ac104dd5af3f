//! Per-connection TLS plaintext streams → LLM calls.
//!
//! Shape: the daemon owns one [`Connection`] per (tgid, SSL pointer) and pushes every captured
//! chunk into it with a direction; the connection pushes [`CaptureEvent`]s into a caller-owned
//! `Vec` and bumps caller-owned [`CaptureStats`]. Nothing here blocks, allocates per byte, owns
//! a thread or knows about processes, so it is tested alone with recorded bytes.
//!
//! Layout: `connection.rs` tells the process's role from the first bytes (`sniff.rs`), then
//! holds the current framing — `http1.rs`, `http2.rs` or `websocket.rs` — each implementing
//! `transport::Transport` (bytes in for a `Direction`, loss, close, idle) over the exchanges of
//! `exchange.rs` (request and response bodies, the call they make). A new transport is a new
//! file implementing `Transport`, a `State` variant in `connection.rs`, and its switch where it
//! is recognised (as the HTTP/2 preface is in `connection.rs`, a 101 in `http1.rs`).
//!
//! Over HTTP/1.1, each direction has its own incremental parser; requests and responses are
//! paired FIFO through a queue of exchanges (keep-alive). An exchange is created at the request
//! *head* — so a response that starts early still pairs with its request — and leaves the queue
//! once both sides are done. Only requests whose method and path match a known API buffer their
//! body (bounded), and only their responses are decoded; everything else is framed and
//! skipped. Bodies, SSE events and decoded bytes are dropped as soon as the usage has been read
//! from them: no prompt or completion text outlives the call, and none is ever logged.
//!
//! Failure is normal input: malformed HTTP, bad encodings, kernel loss. Each is counted in
//! [`CaptureStats`]; the direction concerned gives up its message in flight and resynchronises
//! at the next chunk that starts a message (a request line for writes, `HTTP/1.` for reads).
//! A response cut by loss or an error is emitted at once as an incomplete call, with whatever
//! usage it had shown. A request cut by loss was still *sent*, so it is emitted at once as a
//! `Request` (model unknown) but stays queued: its response, which may carry the usage, pairs
//! with it and ends the call, marked incomplete. At `close`, every exchange still in flight
//! is emitted incomplete; a request that was never written whole is not a call.

pub mod aead;
mod connection;
mod exchange;
mod http1;
mod http2;
mod sniff;
pub(crate) mod streams;
#[cfg(test)]
mod tests;
mod transport;
mod websocket;

pub use connection::Connection;
pub use http2::Http2Hold;
pub use sniff::starts_http_request;

use serde::{Deserialize, Serialize};

use crate::providers::{LlmCall, LlmRequest};

/// Memory bounds of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureLimits {
    /// Largest (decoded) request body buffered to read its `model`. Default 8 MiB: real
    /// coding-agent requests are 20–200 KiB, long contexts with images a few MiB.
    pub max_request_body: usize,
    /// Largest (decoded) non-streamed response body buffered to read its usage; also the
    /// largest single SSE event. Default 8 MiB.
    pub max_response_body: usize,
    /// Largest header block (and chunked trailer block). Default 64 KiB, far above real heads.
    pub max_header_bytes: usize,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        Self {
            max_request_body: 8 << 20,
            max_response_body: 8 << 20,
            max_header_bytes: 64 << 10,
        }
    }
}

/// Counters of everything the capture stage saw, kept, gave up or could not parse.
/// Shared by all connections of a daemon (the caller owns it); never decremented.
#[derive(Default, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct CaptureStats {
    /// Plaintext bytes the observed processes wrote / read.
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// HTTP requests framed (LLM or not).
    pub http_requests: u64,
    /// HTTP responses framed (final responses; 1xx are skipped).
    pub http_responses: u64,
    /// Requests recognised as LLM calls (one `CaptureEvent::Request` each).
    pub llm_requests: u64,
    /// Requests framed but not LLM calls (their responses are consumed to keep pairing).
    pub non_llm_requests: u64,
    /// `CaptureEvent::Call`s emitted, and how many of them were incomplete / had no usage.
    pub llm_calls: u64,
    pub calls_incomplete: u64,
    pub calls_usage_missing: u64,
    /// Responses with no request to pair with (after loss, or a capture started mid-connection).
    pub unmatched_responses: u64,
    /// Exchanges given up because a connection had more than 256 awaiting responses.
    pub exchanges_dropped: u64,
    /// Requests still being written when the connection closed (never sent whole: not calls).
    pub abandoned_requests: u64,
    /// Connections where the observed process is the HTTP server (it writes responses).
    pub server_side_connections: u64,
    /// Connections whose first bytes start no HTTP message (capture began mid-connection,
    /// HTTP/2 without its preface, not HTTP: bytes discarded until a message starts), and
    /// upgrades to anything but WebSocket (ignored).
    pub unsupported_connections: u64,
    /// HTTP/2 connections (the process wrote the preface) and the streams they opened.
    pub http2_connections: u64,
    pub http2_streams: u64,
    /// HTTP/2 streams reset by either side (their calls are emitted incomplete), and streams
    /// the server refused unprocessed (retried by the client: not calls).
    pub http2_streams_reset: u64,
    pub http2_streams_refused: u64,
    /// Of those, streams whose LLM request was already announced (a `CaptureEvent::Request`
    /// with no call to follow: the client's retry is the call).
    pub http2_requests_refused: u64,
    /// HPACK header blocks that could not be decoded.
    pub hpack_errors: u64,
    /// HTTP/2 connections given up after loss or an error (HPACK state cannot be recovered):
    /// their open streams are emitted incomplete and the rest of the connection is ignored.
    pub http2_desynced: u64,
    /// Connections upgraded to WebSocket (followed for the Responses API's WebSocket mode).
    pub websocket_connections: u64,
    pub websocket_messages: u64,
    /// `response.create` with `generate: false` (warm-ups, not calls).
    pub websocket_warmups: u64,
    /// WebSocket connections given up after loss, a bad frame or a bad deflate stream.
    pub websocket_desynced: u64,
    pub websocket_inflate_errors: u64,
    /// `on_loss` calls (the kernel dropped bytes).
    pub losses: u64,
    /// Times a direction found a new message start after loss or an error.
    pub resyncs: u64,
    /// Bytes skipped while waiting for a message start, or after an error in a chunk.
    pub bytes_discarded: u64,
    /// Body bytes not buffered because the body exceeded its limit.
    pub bytes_over_limit: u64,
    /// Header or trailer blocks above `max_header_bytes`.
    pub header_overflows: u64,
    /// Malformed HTTP (bad request/status line, Content-Length, chunk sizes, …).
    pub http_errors: u64,
    /// Bodies whose content encoding was unsupported, corrupt or truncated.
    pub decode_errors: u64,
    /// LLM-path request bodies, response bodies or SSE events that were not valid JSON.
    pub json_errors: u64,
    /// Error objects / `error` events sent by providers.
    pub provider_errors: u64,
    /// Stream events (SSE events, NDJSON lines, JSON array elements) above
    /// `max_response_body`, dropped.
    pub sse_oversized_events: u64,
}

/// What a connection reports.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureEvent {
    /// An LLM request has been fully written (its response has not been seen yet).
    Request(LlmRequest),
    /// An LLM call finished, or was given up (`complete = false`).
    Call(LlmCall),
}
