//! One observed TLS connection: role detection, two HTTP/1.1 parsers and the exchange queue.

use std::collections::VecDeque;

use super::exchange::{BodyReader, Exchange, RequestState, ResponseState};
use super::http2::{Http2, Http2Hold};
use super::transport::{Direction, Transport};
use super::websocket::WebSocket;
use super::{CaptureEvent, CaptureLimits, CaptureStats};
use crate::protocol::http1::{
    Http1Error, Http1Event, Http1Parser, MessageKind, RequestHead, ResponseHead,
};
use crate::providers::Framing;

/// Exchanges queued on one connection (requests written, responses not finished) at most.
/// Real clients have one, pipelining ones a few.
const MAX_PENDING: usize = 256;

/// What the observed process is on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Nothing seen yet.
    Unknown,
    /// It writes requests: its calls are ours to account.
    Client,
    /// It writes responses (a local gateway, a mock server): ignored.
    ServerSide,
    /// It wrote the HTTP/2 preface: its calls are ours, framed by [`Http2`].
    Http2Client,
    /// Its request was upgraded to a WebSocket: messages, framed by [`WebSocket`].
    WebSocketClient,
    /// An upgrade other than WebSocket, HTTP/2 without its preface (capture began
    /// mid-connection), or not HTTP.
    Unsupported,
}

/// What the first bytes of a direction look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    NeedMore,
    RequestLine,
    StatusLine,
    Http2Preface,
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

fn sniff(data: &[u8]) -> Sniff {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http2Preface
        } else {
            Sniff::NeedMore
        };
    }
    const STATUS: &[u8] = b"HTTP/1.";
    let n = data.len().min(STATUS.len());
    if data[..n] == STATUS[..n] {
        return if n == STATUS.len() {
            Sniff::StatusLine
        } else {
            Sniff::NeedMore
        };
    }
    // A request line: an upper-case method token (≤ 16 bytes) then a space.
    for (i, &b) in data.iter().enumerate().take(17) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => {}
            b' ' if i > 0 => return Sniff::RequestLine,
            _ => return Sniff::Other,
        }
    }
    if data.len() <= 16 {
        Sniff::NeedMore
    } else {
        Sniff::Other
    }
}

/// Whether the first plaintext written on a new connection is the start of an HTTP/1 request
/// or the HTTP/2 preface (None: too short to tell). Probes at located functions are checked
/// with it: a wrong location would not yield request lines.
pub fn starts_http_request(data: &[u8]) -> Option<bool> {
    match sniff(data) {
        Sniff::RequestLine | Sniff::Http2Preface => Some(true),
        Sniff::NeedMore => None,
        Sniff::StatusLine | Sniff::Other => Some(false),
    }
}

/// The write (request) direction.
#[derive(Debug)]
struct WriteSide {
    parser: Http1Parser,
    /// Waiting for a chunk that starts a request.
    resync: bool,
    /// A request head was parsed and its message has not ended (it is `pending.back()`).
    in_request: bool,
    /// The body of an LLM-candidate request being written.
    body: Option<BodyReader>,
    /// Timestamp of the chunk where the current message began.
    started_at_ns: u64,
    /// Bytes of a direction whose role is not known yet, and when the first of them came.
    sniffed: Vec<u8>,
    sniffed_at_ns: u64,
}

/// The read (response) direction.
#[derive(Debug)]
struct ReadSide {
    parser: Http1Parser,
    resync: bool,
    /// The response being read has no request to pair with.
    orphan: bool,
    sniffed: Vec<u8>,
}

/// One observed TLS connection (one `(tgid, SSL*)`). See the module docs.
#[derive(Debug)]
pub struct Connection {
    limits: CaptureLimits,
    role: Role,
    write: WriteSide,
    read: ReadSide,
    pending: VecDeque<Exchange>,
    /// The HTTP/2 state, once the process wrote the preface.
    h2: Option<Box<Http2>>,
    /// The WebSocket state, once a request of the process was upgraded.
    ws: Option<Box<WebSocket>>,
}

impl Connection {
    pub fn new(limits: CaptureLimits) -> Self {
        Self {
            limits,
            role: Role::Unknown,
            write: WriteSide {
                parser: Http1Parser::new(MessageKind::Request, limits.max_header_bytes),
                resync: false,
                in_request: false,
                body: None,
                started_at_ns: 0,
                sniffed: Vec::new(),
                sniffed_at_ns: 0,
            },
            read: ReadSide {
                parser: Http1Parser::new(MessageKind::Response, limits.max_header_bytes),
                resync: false,
                orphan: false,
                sniffed: Vec::new(),
            },
            pending: VecDeque::new(),
            h2: None,
            ws: None,
        }
    }

    /// Bytes the observed process sent (`SSL_write`).
    pub fn on_write(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.bytes_written += data.len() as u64;
        if data.is_empty() {
            return;
        }
        match self.role {
            Role::Client => self.process_write(data, ts_ns, ts_ns, stats, out),
            Role::Http2Client => {
                if let Some(h2) = self.h2.as_mut() {
                    h2.on_bytes(Direction::Write, data, ts_ns, stats, out);
                }
            }
            Role::WebSocketClient => {
                if let Some(ws) = self.ws.as_mut() {
                    ws.on_bytes(Direction::Write, data, ts_ns, stats, out);
                }
            }
            Role::Unknown => {
                let mut buf = std::mem::take(&mut self.write.sniffed);
                if buf.is_empty() {
                    self.write.sniffed_at_ns = ts_ns;
                }
                buf.extend_from_slice(data);
                let role = match sniff(&buf) {
                    Sniff::NeedMore => {
                        self.write.sniffed = buf;
                        return;
                    }
                    Sniff::RequestLine => Role::Client,
                    Sniff::StatusLine => Role::ServerSide,
                    Sniff::Http2Preface => Role::Http2Client,
                    Sniff::Other if self.write.resync => {
                        // After loss, before any role was known: wait for a message start.
                        stats.bytes_discarded += buf.len() as u64;
                        return;
                    }
                    Sniff::Other => Role::Unsupported,
                };
                if self.write.resync {
                    self.write.resync = false;
                    stats.resyncs += 1;
                }
                self.set_role(role, stats);
                if role == Role::Client {
                    let first_byte_ns = self.write.sniffed_at_ns;
                    self.process_write(&buf, ts_ns, first_byte_ns, stats, out);
                }
                if let Some(h2) = self.h2.as_mut() {
                    h2.on_bytes(Direction::Write, &buf, ts_ns, stats, out);
                }
            }
            Role::ServerSide | Role::Unsupported => {}
        }
    }

    /// Bytes the observed process received (`SSL_read`).
    pub fn on_read(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.bytes_read += data.len() as u64;
        if data.is_empty() {
            return;
        }
        match self.role {
            Role::Client => self.process_read(data, ts_ns, stats, out),
            Role::Http2Client => {
                if let Some(h2) = self.h2.as_mut() {
                    h2.on_bytes(Direction::Read, data, ts_ns, stats, out);
                }
            }
            Role::WebSocketClient => {
                if let Some(ws) = self.ws.as_mut() {
                    ws.on_bytes(Direction::Read, data, ts_ns, stats, out);
                }
            }
            Role::Unknown => {
                let mut buf = std::mem::take(&mut self.read.sniffed);
                buf.extend_from_slice(data);
                // Receiving a request or a preface means we are the server.
                let role = match sniff(&buf) {
                    Sniff::NeedMore => {
                        self.read.sniffed = buf;
                        return;
                    }
                    Sniff::RequestLine => Role::ServerSide,
                    Sniff::StatusLine => Role::Client,
                    // It received the preface: it is the server.
                    Sniff::Http2Preface => Role::ServerSide,
                    Sniff::Other if self.read.resync => {
                        stats.bytes_discarded += buf.len() as u64;
                        return;
                    }
                    Sniff::Other => Role::Unsupported,
                };
                if self.read.resync {
                    self.read.resync = false;
                    stats.resyncs += 1;
                }
                self.set_role(role, stats);
                if role == Role::Client {
                    self.process_read(&buf, ts_ns, stats, out);
                }
            }
            Role::ServerSide | Role::Unsupported => {}
        }
    }

    /// The kernel dropped bytes of one direction before the next chunk.
    pub fn on_loss(
        &mut self,
        direction_is_write: bool,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.losses += 1;
        let dir = if direction_is_write {
            Direction::Write
        } else {
            Direction::Read
        };
        match self.role {
            Role::Client if direction_is_write => self.write_broken(ts_ns, stats, out),
            Role::Client => self.read_broken(ts_ns, stats, out),
            Role::Http2Client => {
                if let Some(h2) = self.h2.as_mut() {
                    h2.on_loss(dir, ts_ns, stats, out);
                }
            }
            Role::WebSocketClient => {
                if let Some(ws) = self.ws.as_mut() {
                    ws.on_loss(dir, ts_ns, stats, out);
                }
            }
            Role::Unknown if direction_is_write => {
                self.write.sniffed.clear();
                self.write.resync = true;
            }
            Role::Unknown => {
                self.read.sniffed.clear();
                self.read.resync = true;
            }
            Role::ServerSide | Role::Unsupported => {}
        }
    }

    /// The connection is gone (or its process exited): a close-delimited response completes,
    /// every other exchange in flight is given up, and the connection starts afresh (an SSL
    /// pointer can be reused by a new connection).
    pub fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if let Some(h2) = self.h2.as_mut() {
            h2.close(ts_ns, stats, out);
        }
        if let Some(ws) = self.ws.as_mut() {
            ws.close(ts_ns, stats, out);
        }
        if self.role == Role::Client {
            if self.read.parser.finish_at_close() {
                self.on_response_end(ts_ns, true, stats, out);
            }
            if self.write.in_request {
                // Never sent whole: not a call.
                self.write.in_request = false;
                self.write.body = None;
                if self.pending.pop_back().is_some() {
                    stats.abandoned_requests += 1;
                }
            }
            self.settle(stats, out);
            while let Some(mut ex) = self.pending.pop_front() {
                if ex.response != ResponseState::Done {
                    ex.ended_at_ns = ts_ns;
                    ex.response_complete = false;
                    ex.response_bytes = match ex.response {
                        ResponseState::Receiving => self.read.parser.message_bytes(),
                        _ => 0,
                    };
                }
                ex.finalize(stats, out);
            }
        }
        *self = Connection::new(self.limits);
    }

    /// What a write held by the ceilings gate starts, if this is (or the write opens) an
    /// HTTP/2 client connection. `conn` is the connection's state, if it has one yet.
    pub fn http2_hold(conn: Option<&Connection>, preview: &[u8]) -> Http2Hold {
        let preface = crate::protocol::http2::PREFACE;
        let n = preview.len().min(preface.len());
        if n >= H2_PREFACE.len() && preview[..n] == preface[..n] {
            // A new connection: its first write.
            return Http2::hold(None, &preview[n..]);
        }
        match conn.and_then(|c| c.h2.as_deref()) {
            Some(h2) if conn.is_some_and(|c| c.role == Role::Http2Client) => {
                Http2::hold(Some(h2), preview)
            }
            _ => Http2Hold::NotHttp2,
        }
    }

    /// HTTP/2 or WebSocket: state that spans exchanges (HPACK tables, a deflate context), so
    /// reading it again must start where it was first seen.
    pub fn keeps_stream_state(&self) -> bool {
        self.h2.is_some() || self.ws.is_some()
    }

    /// Nothing buffered or in flight: the daemon may drop this connection. Connections that
    /// are ignored (server side, unsupported) are idle too.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && !self.write.parser.in_message()
            && !self.read.parser.in_message()
            && self.write.sniffed.is_empty()
            && self.read.sniffed.is_empty()
            && self.h2.as_ref().is_none_or(|h2| h2.is_idle())
            && self.ws.as_ref().is_none_or(|ws| ws.is_idle())
    }

    fn set_role(&mut self, role: Role, stats: &mut CaptureStats) {
        self.role = role;
        self.write.sniffed = Vec::new();
        self.read.sniffed = Vec::new();
        match role {
            Role::ServerSide => stats.server_side_connections += 1,
            Role::Unsupported => stats.unsupported_connections += 1,
            Role::Http2Client => {
                stats.http2_connections += 1;
                self.h2 = Some(Box::new(Http2::new(self.limits)));
            }
            Role::WebSocketClient => stats.websocket_connections += 1,
            Role::Client | Role::Unknown => {}
        }
    }

    // ------------------------------------------------------------------ requests

    fn process_write(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        first_byte_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.write.resync {
            if sniff(data) == Sniff::RequestLine {
                self.write.resync = false;
                stats.resyncs += 1;
            } else {
                stats.bytes_discarded += data.len() as u64;
                return;
            }
        }
        let mut pos = 0;
        loop {
            if !self.write.parser.in_message() {
                // Bytes buffered while sniffing the role arrived at `first_byte_ns`.
                self.write.started_at_ns = if pos == 0 { first_byte_ns } else { ts_ns };
            }
            let input = &data[pos..];
            let (n, event) = match self.write.parser.next(input) {
                Ok(step) => step,
                Err(e) => {
                    Self::count_http_error(&e, "request", stats);
                    stats.bytes_discarded += input.len() as u64;
                    self.write_broken(ts_ns, stats, out);
                    return;
                }
            };
            pos += n;
            match event {
                Http1Event::NeedMore => return,
                Http1Event::Request(head) => self.on_request_head(&head, ts_ns, stats, out),
                Http1Event::Body(range) => {
                    if let Some(body) = self.write.body.as_mut() {
                        body.feed(&input[range], stats, &mut |_| {});
                    }
                }
                Http1Event::End => self.on_request_end(stats, out),
                Http1Event::Response(_) | Http1Event::Upgraded(_) => {}
            }
        }
    }

    fn on_request_head(
        &mut self,
        head: &RequestHead,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.http_requests += 1;
        let ex = Exchange::new(Some(head), self.write.started_at_ns);
        self.write.body = ex.route.as_ref().map(|_| {
            let mut reader = BodyReader::new(
                head.content_encoding.as_deref(),
                Framing::Whole,
                self.limits.max_request_body,
                stats,
            );
            reader.keep_prefix = true;
            reader
        });
        self.write.in_request = true;
        self.push_exchange(ex, ts_ns, stats, out);
    }

    fn on_request_end(&mut self, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        self.write.in_request = false;
        let body = self.write.body.take();
        let request_bytes = self.write.parser.message_bytes();
        let Some(ex) = self.pending.back_mut() else {
            return;
        };
        ex.finish_request(body, request_bytes, stats, out);
        self.settle(stats, out);
    }

    /// The write direction cannot be framed any more (loss or malformed input).
    fn write_broken(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if self.write.in_request {
            self.write.in_request = false;
            self.write.body = None;
            let request_bytes = self.write.parser.message_bytes();
            if let Some(ex) = self.pending.back_mut() {
                ex.request = RequestState::Lost;
                match ex.route.clone() {
                    Some(route) => {
                        // It was sent; we did not see all of it. Its response still pairs.
                        let req = ex.llm_request(
                            route.api,
                            route.path_model,
                            route.path_streaming,
                            request_bytes,
                        );
                        stats.llm_requests += 1;
                        out.push(CaptureEvent::Request(req.clone()));
                        ex.llm = Some(req);
                    }
                    None => stats.non_llm_requests += 1,
                }
            }
        } else if self.write.parser.in_message() {
            // A request began but its head was cut: keep a placeholder so its response pairs.
            let mut ex = Exchange::new(None, self.write.started_at_ns);
            ex.request = RequestState::Lost;
            self.push_exchange(ex, ts_ns, stats, out);
        }
        self.write.parser.reset();
        self.write.resync = true;
        self.settle(stats, out);
    }

    // ------------------------------------------------------------------ responses

    /// The exchange the read side is (or will next be) answering.
    fn read_index(&self) -> Option<usize> {
        self.pending
            .iter()
            .position(|e| e.response != ResponseState::Done)
    }

    fn process_read(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.read.resync {
            if sniff(data) == Sniff::StatusLine {
                self.read.resync = false;
                stats.resyncs += 1;
            } else {
                stats.bytes_discarded += data.len() as u64;
                return;
            }
        }
        let mut pos = 0;
        loop {
            if !self.read.parser.in_message() {
                let was_head = self.read_index().is_some_and(|i| self.pending[i].is_head);
                self.read.parser.set_request_was_head(was_head);
            }
            let input = &data[pos..];
            let (n, event) = match self.read.parser.next(input) {
                Ok(step) => step,
                Err(e) => {
                    Self::count_http_error(&e, "response", stats);
                    stats.bytes_discarded += input.len() as u64;
                    self.read_broken(ts_ns, stats, out);
                    return;
                }
            };
            pos += n;
            match event {
                Http1Event::NeedMore => return,
                Http1Event::Response(head) => self.on_response_head(&head, stats),
                Http1Event::Body(range) => self.on_response_body(&input[range], ts_ns, stats, out),
                Http1Event::End => self.on_response_end(ts_ns, true, stats, out),
                Http1Event::Upgraded(head) => {
                    // 101: the rest is a WebSocket (followed) or another protocol (ignored).
                    let host = self.read_index().and_then(|i| self.pending[i].host.clone());
                    self.on_response_head(&head, stats);
                    self.on_response_end(ts_ns, true, stats, out);
                    self.close(ts_ns, stats, out);
                    if !head.websocket {
                        self.set_role(Role::Unsupported, stats);
                        return;
                    }
                    self.set_role(Role::WebSocketClient, stats);
                    let mut ws =
                        WebSocket::new(self.limits, host, head.websocket_extensions.as_deref());
                    ws.on_bytes(Direction::Read, &data[pos..], ts_ns, stats, out);
                    self.ws = Some(Box::new(ws));
                    return;
                }
                Http1Event::Request(_) => {}
            }
        }
    }

    fn on_response_head(&mut self, head: &ResponseHead, stats: &mut CaptureStats) {
        stats.http_responses += 1;
        let Some(i) = self.read_index() else {
            stats.unmatched_responses += 1;
            self.read.orphan = true;
            return;
        };
        self.read.orphan = false;
        let limit = self.limits.max_response_body;
        self.pending[i].start_response(
            head.status,
            head.content_type.as_deref(),
            head.content_encoding.as_deref(),
            limit,
            stats,
        );
    }

    fn on_response_body(
        &mut self,
        bytes: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.read.orphan {
            return;
        }
        let Some(i) = self.read_index() else {
            return;
        };
        let message_bytes = self.read.parser.message_bytes();
        self.pending[i].response_body(bytes, ts_ns, message_bytes, stats, out);
    }

    fn on_response_end(
        &mut self,
        ts_ns: u64,
        complete: bool,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if std::mem::take(&mut self.read.orphan) {
            return;
        }
        let Some(i) = self.read_index() else {
            return;
        };
        let message_bytes = self.read.parser.message_bytes();
        self.pending[i].end_response(ts_ns, complete, message_bytes, stats);
        self.settle(stats, out);
    }

    /// The read direction cannot be framed any more (loss or malformed input).
    fn read_broken(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if self.read.parser.in_message() {
            if self.read.orphan {
                self.read.orphan = false;
            } else if let Some(i) = self.read_index() {
                let message_bytes = self.read.parser.message_bytes();
                let ex = &mut self.pending[i];
                ex.response = ResponseState::Done;
                ex.response_complete = false;
                ex.ended_at_ns = ts_ns;
                ex.response_bytes = message_bytes;
            }
        }
        self.read.parser.reset();
        self.read.resync = true;
        self.settle(stats, out);
    }

    // ------------------------------------------------------------------ completion

    /// Queues an exchange. A peer that never answers cannot grow the queue without bound:
    /// past [`MAX_PENDING`] the oldest exchange is given up (incomplete) and counted.
    fn push_exchange(
        &mut self,
        ex: Exchange,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.pending.len() >= MAX_PENDING
            && let Some(mut old) = self.pending.pop_front()
        {
            stats.exchanges_dropped += 1;
            if old.response == ResponseState::Receiving {
                // The rest of its response now pairs with nothing.
                self.read.orphan = true;
            }
            if old.response != ResponseState::Done {
                old.response = ResponseState::Done;
                old.response_complete = false;
                old.ended_at_ns = ts_ns;
            }
            old.finalize(stats, out);
        }
        self.pending.push_back(ex);
    }

    /// Removes finished exchanges from the front of the queue, emitting their calls.
    fn settle(&mut self, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        while let Some(front) = self.pending.front() {
            if front.request == RequestState::Writing || front.response != ResponseState::Done {
                break;
            }
            if let Some(ex) = self.pending.pop_front() {
                ex.finalize(stats, out);
            }
        }
    }

    fn count_http_error(e: &Http1Error, side: &'static str, stats: &mut CaptureStats) {
        tracing::debug!(error = %e, side, "HTTP framing error; resynchronising");
        match e {
            Http1Error::HeaderTooLarge { .. } => stats.header_overflows += 1,
            _ => stats.http_errors += 1,
        }
    }
}
