//! HTTP/1.1 framing: one incremental parser per direction, and requests paired FIFO with
//! responses through a queue of exchanges (keep-alive, pipelining). See the module docs of
//! `capture` for how loss and errors are handled.

use std::collections::VecDeque;

use super::exchange::{BodyReader, Exchange, RequestState, ResponseState};
use super::sniff::{Sniff, sniff};
use super::transport::{Direction, PerDirection, Transport};
use super::websocket::WebSocket;
use super::{CaptureEvent, CaptureLimits, CaptureStats};
use crate::protocol::http1::{
    Http1Error, Http1Event, Http1Parser, MessageKind, RequestHead, ResponseHead,
};
use crate::providers::Framing;

/// Exchanges queued on one connection (requests written, responses not finished) at most.
/// Real clients have one, pipelining ones a few.
const MAX_PENDING: usize = 256;

/// One direction's parser.
#[derive(Debug)]
struct Side {
    parser: Http1Parser,
    /// Waiting for a chunk that starts a message (after loss or malformed input).
    resync: bool,
}

/// What a `101 Switching Protocols` turned the connection into.
#[derive(Debug)]
pub(super) enum Upgrade {
    /// Followed, from the bytes after the 101 on.
    WebSocket(Box<WebSocket>),
    /// Another protocol: not followed.
    Other,
}

/// An HTTP/1.1 connection where the process is the client (it wrote a request first, or read
/// a response first).
#[derive(Debug)]
pub(super) struct Http1 {
    limits: CaptureLimits,
    sides: PerDirection<Side>,
    /// A request head was parsed and its message has not ended (it is `pending.back()`).
    in_request: bool,
    /// The body of an LLM-candidate request being written.
    request_body: Option<BodyReader>,
    /// Timestamp of the chunk where the current request began.
    request_started_at_ns: u64,
    /// The response being read has no request to pair with.
    orphan: bool,
    pending: VecDeque<Exchange>,
    /// Set at a 101, after which this framing is done: the connection takes it and hands
    /// the rest of its bytes on.
    upgrade: Option<Upgrade>,
}

impl Http1 {
    /// `resync`: the directions that lost bytes before the role was known (they wait for a
    /// message start).
    pub(super) fn new(limits: CaptureLimits, resync: PerDirection<bool>) -> Self {
        let side = |kind, resync| Side {
            parser: Http1Parser::new(kind, limits.max_header_bytes),
            resync,
        };
        Self {
            limits,
            sides: PerDirection {
                write: side(MessageKind::Request, resync.write),
                read: side(MessageKind::Response, resync.read),
            },
            in_request: false,
            request_body: None,
            request_started_at_ns: 0,
            orphan: false,
            pending: VecDeque::new(),
            upgrade: None,
        }
    }

    /// Bytes of one direction; the first of them arrived at `first_byte_ns` (earlier than
    /// `ts_ns` for bytes buffered while the connection's role was sniffed).
    pub(super) fn feed(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        first_byte_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let side = &mut self.sides[dir];
        if side.resync {
            let start = match dir {
                Direction::Write => Sniff::RequestLine,
                Direction::Read => Sniff::StatusLine,
            };
            if sniff(data) != start {
                stats.bytes_discarded += data.len() as u64;
                return;
            }
            side.resync = false;
            stats.resyncs += 1;
        }
        match dir {
            Direction::Write => self.requests(data, ts_ns, first_byte_ns, stats, out),
            Direction::Read => self.responses(data, ts_ns, stats, out),
        }
    }

    /// What a 101 upgraded the connection to (taken once, right after the bytes with it).
    pub(super) fn take_upgrade(&mut self) -> Option<Upgrade> {
        self.upgrade.take()
    }

    /// A direction cannot be framed any more (loss or malformed input): its message in flight
    /// is cut, and it waits for a chunk that starts the next one.
    fn broken(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        match dir {
            Direction::Write => self.request_cut(ts_ns, stats, out),
            Direction::Read => self.response_cut(ts_ns),
        }
        let side = &mut self.sides[dir];
        side.parser.reset();
        side.resync = true;
        self.settle(stats, out);
    }

    // ------------------------------------------------------------------ requests

    fn requests(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        first_byte_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let mut pos = 0;
        loop {
            if !self.sides.write.parser.in_message() {
                // Bytes buffered while sniffing the role arrived at `first_byte_ns`.
                self.request_started_at_ns = if pos == 0 { first_byte_ns } else { ts_ns };
            }
            let input = &data[pos..];
            let (n, event) = match self.sides.write.parser.next(input) {
                Ok(step) => step,
                Err(e) => {
                    count_http_error(&e, "request", stats);
                    stats.bytes_discarded += input.len() as u64;
                    self.broken(Direction::Write, ts_ns, stats, out);
                    return;
                }
            };
            pos += n;
            match event {
                Http1Event::NeedMore => return,
                Http1Event::Request(head) => self.on_request_head(&head, ts_ns, stats, out),
                Http1Event::Body(range) => {
                    if let Some(body) = self.request_body.as_mut() {
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
        let ex = Exchange::new(Some(head), self.request_started_at_ns);
        self.request_body = ex.route.as_ref().map(|_| {
            let mut reader = BodyReader::new(
                head.content_encoding.as_deref(),
                Framing::Whole,
                self.limits.max_request_body,
                stats,
            );
            reader.keep_prefix = true;
            reader
        });
        self.in_request = true;
        self.push_exchange(ex, ts_ns, stats, out);
    }

    fn on_request_end(&mut self, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        self.in_request = false;
        let body = self.request_body.take();
        let request_bytes = self.sides.write.parser.message_bytes();
        let Some(ex) = self.pending.back_mut() else {
            return;
        };
        ex.finish_request(body, request_bytes, stats, out);
        self.settle(stats, out);
    }

    /// The request being written was cut (see [`Http1::broken`]).
    fn request_cut(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if self.in_request {
            self.in_request = false;
            self.request_body = None;
            let request_bytes = self.sides.write.parser.message_bytes();
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
        } else if self.sides.write.parser.in_message() {
            // A request began but its head was cut: keep a placeholder so its response pairs.
            let mut ex = Exchange::new(None, self.request_started_at_ns);
            ex.request = RequestState::Lost;
            self.push_exchange(ex, ts_ns, stats, out);
        }
    }

    // ------------------------------------------------------------------ responses

    /// The exchange the read side is (or will next be) answering.
    fn read_index(&self) -> Option<usize> {
        self.pending
            .iter()
            .position(|e| e.response != ResponseState::Done)
    }

    fn responses(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let mut pos = 0;
        loop {
            if !self.sides.read.parser.in_message() {
                let was_head = self.read_index().is_some_and(|i| self.pending[i].is_head);
                self.sides.read.parser.set_request_was_head(was_head);
            }
            let input = &data[pos..];
            let (n, event) = match self.sides.read.parser.next(input) {
                Ok(step) => step,
                Err(e) => {
                    count_http_error(&e, "response", stats);
                    stats.bytes_discarded += input.len() as u64;
                    self.broken(Direction::Read, ts_ns, stats, out);
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
                    self.upgrade = Some(if head.websocket {
                        let extensions = head.websocket_extensions.as_deref();
                        let mut ws = WebSocket::new(self.limits, host, extensions);
                        ws.on_bytes(Direction::Read, &data[pos..], ts_ns, stats, out);
                        Upgrade::WebSocket(Box::new(ws))
                    } else {
                        Upgrade::Other
                    });
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
            self.orphan = true;
            return;
        };
        self.orphan = false;
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
        if self.orphan {
            return;
        }
        let Some(i) = self.read_index() else {
            return;
        };
        let message_bytes = self.sides.read.parser.message_bytes();
        self.pending[i].response_body(bytes, ts_ns, message_bytes, stats, out);
    }

    fn on_response_end(
        &mut self,
        ts_ns: u64,
        complete: bool,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if std::mem::take(&mut self.orphan) {
            return;
        }
        let Some(i) = self.read_index() else {
            return;
        };
        let message_bytes = self.sides.read.parser.message_bytes();
        self.pending[i].end_response(ts_ns, complete, message_bytes, stats);
        self.settle(stats, out);
    }

    /// The response being read was cut (see [`Http1::broken`]).
    fn response_cut(&mut self, ts_ns: u64) {
        if self.sides.read.parser.in_message() {
            if self.orphan {
                self.orphan = false;
            } else if let Some(i) = self.read_index() {
                let message_bytes = self.sides.read.parser.message_bytes();
                let ex = &mut self.pending[i];
                ex.response = ResponseState::Done;
                ex.response_complete = false;
                ex.ended_at_ns = ts_ns;
                ex.response_bytes = message_bytes;
            }
        }
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
                self.orphan = true;
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
}

impl Transport for Http1 {
    fn on_bytes(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        self.feed(dir, data, ts_ns, ts_ns, stats, out);
    }

    fn on_loss(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        self.broken(dir, ts_ns, stats, out);
    }

    /// A close-delimited response completes; every other exchange in flight is given up.
    fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if self.sides.read.parser.finish_at_close() {
            self.on_response_end(ts_ns, true, stats, out);
        }
        if self.in_request {
            // Never sent whole: not a call.
            self.in_request = false;
            self.request_body = None;
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
                    ResponseState::Receiving => self.sides.read.parser.message_bytes(),
                    _ => 0,
                };
            }
            ex.finalize(stats, out);
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && !self.sides.write.parser.in_message()
            && !self.sides.read.parser.in_message()
    }
}

fn count_http_error(e: &Http1Error, side: &'static str, stats: &mut CaptureStats) {
    tracing::debug!(error = %e, side, "HTTP framing error; resynchronising");
    match e {
        Http1Error::HeaderTooLarge { .. } => stats.header_overflows += 1,
        _ => stats.http_errors += 1,
    }
}
