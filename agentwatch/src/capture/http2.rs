//! One observed HTTP/2 connection where the process is the client (it wrote the preface).
//!
//! Each direction has its own frame reader and its own HPACK decoder (the dynamic tables of
//! the two directions are independent); each stream is one [`Exchange`], driven through the
//! same steps as an HTTP/1.1 exchange, so provider parsing and the call it yields are the
//! same. Streams interleave freely; a call is emitted when its stream's request and response
//! are both done (or at the stream's terminal SSE event).
//!
//! HPACK is stateful: a header block that is lost or cannot be decoded leaves the decoder's
//! table out of step with the peer's, and every later block of that direction would decode
//! wrong. So loss, a malformed frame or a bad header block *desynchronises* the connection:
//! its streams are given up (emitted incomplete when their request was sent) and the rest
//! of the connection is ignored, counted in `http2_desynced`. Nothing is guessed.

use std::collections::BTreeMap;

use loona_hpack::Decoder;

use super::exchange::{BodyReader, Exchange, RequestState, ResponseState};
use super::transport::{Direction, PerDirection, Transport};
use super::{CaptureEvent, CaptureLimits, CaptureStats};
use crate::protocol::http2::{
    self as h2, CONTINUATION, DATA, FLAG_END_HEADERS, FLAG_END_STREAM, FRAME_HEADER_LEN,
    FrameHeader, FrameReader, GOAWAY, HEADERS, Http2Error, PUSH_PROMISE, REFUSED_STREAM,
    RST_STREAM,
};
use crate::providers::{Api, Framing};

/// Streams tracked on one connection at most. Servers allow ~100 concurrent streams; past
/// this the oldest stream is given up (incomplete) and counted in `exchanges_dropped`.
const MAX_STREAMS: usize = 256;

/// Largest HPACK dynamic table a peer may make us keep (per direction). Peers advertise
/// 4 KiB–64 KiB; this bounds memory against a hostile one.
const MAX_HPACK_TABLE: usize = 1 << 20;

/// Why a connection could not be followed any further.
#[derive(Debug, thiserror::Error)]
enum Desync {
    #[error(transparent)]
    Frame(#[from] Http2Error),
    #[error("HPACK header block could not be decoded: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
    #[error("header block above max_header_bytes")]
    HeaderBlockTooLarge,
    #[error("CONTINUATION frame without a header block to continue, or a frame inside one")]
    Continuation,
}

/// A header block being assembled from HEADERS / PUSH_PROMISE + CONTINUATION frames.
#[derive(Debug)]
struct HeaderBlock {
    stream_id: u32,
    end_stream: bool,
    push_promise: bool,
    fragment: Vec<u8>,
    /// Frame bytes of the block on the wire (headers included).
    wire_bytes: u64,
}

/// One direction: frames, its HPACK decoder and the header block in progress.
struct Side {
    frames: FrameReader,
    hpack: Decoder<'static>,
    block: Option<HeaderBlock>,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("frames", &self.frames)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl Side {
    fn new(frames: FrameReader) -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(MAX_HPACK_TABLE);
        Self {
            frames,
            hpack,
            block: None,
        }
    }
}

/// The few header values the capture uses; nothing else of a header block is kept.
#[derive(Debug, Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    host: Option<String>,
    status: Option<u16>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_length: Option<u64>,
}

impl Fields {
    fn take(&mut self, name: &[u8], value: &[u8]) {
        let v = || String::from_utf8_lossy(value).into_owned();
        match name {
            b":method" => self.method = Some(v()),
            b":path" => self.path = Some(v()),
            b":authority" => self.authority = Some(v()),
            b"host" => self.host = Some(v()),
            b":status" => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            b"content-type" => self.content_type = Some(v()),
            b"content-encoding" => self.content_encoding = Some(v()),
            b"content-length" => {
                self.content_length = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
            }
            _ => {}
        }
    }
}

#[derive(Debug)]
struct Stream {
    ex: Exchange,
    request_body: Option<BodyReader>,
    request_bytes: u64,
    response_bytes: u64,
    /// The response's `content-length`, and the DATA payload received against it: a response
    /// complete by its length is complete, even if the frame carrying END_STREAM is never read
    /// (hypercorn sends END_STREAM in an empty DATA frame of its own, which a client that has
    /// its `content-length` bytes may exit without reading).
    response_length: Option<u64>,
    response_data: u64,
}

#[derive(Debug)]
pub(super) struct Http2 {
    limits: CaptureLimits,
    sides: PerDirection<Side>,
    streams: BTreeMap<u32, Stream>,
    /// Given up (see the module docs): everything after is ignored.
    desynced: bool,
    /// Highest stream id the client opened, and its last LLM request (for [`Http2Hold`]).
    max_stream_id: u32,
    last_llm: Option<(Api, Option<String>)>,
}

/// What a write held by the ceilings gate starts, on an HTTP/2 connection. The gate sees only
/// the first bytes of the write, before the connection's state has seen them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http2Hold {
    /// Not an HTTP/2 client connection: the HTTP/1 request line decides.
    NotHttp2,
    /// Connection set-up or control frames only (preface, SETTINGS, WINDOW_UPDATE, PING): no
    /// request has started; the next write must be held again.
    NoRequest,
    /// Frames of streams already open (request bodies, trailers): nothing new.
    OpenStreams,
    /// HEADERS opening a new stream, with the API and host if it is an LLM request: read from
    /// the preview when its header block decodes without the dynamic table (always so for a
    /// connection's first request), else taken from the connection's last LLM request.
    NewStream(Option<(Api, Option<String>)>),
}

impl Http2 {
    pub(super) fn new(limits: CaptureLimits) -> Self {
        Self {
            limits,
            sides: PerDirection {
                write: Side::new(FrameReader::client()),
                read: Side::new(FrameReader::server()),
            },
            streams: BTreeMap::new(),
            desynced: false,
            max_stream_id: 0,
            last_llm: None,
        }
    }

    /// See [`Http2Hold`]. `preview` is what a held write starts with (after the preface, if
    /// the write carries it: then `conn` is `None`, the connection being new).
    pub(super) fn hold(conn: Option<&Http2>, preview: &[u8]) -> Http2Hold {
        let mut frames = preview;
        let mut saw_data = false;
        while let Some(h) = h2::parse_header(frames) {
            let len = h.len;
            // The preview may end inside this frame: take what is there.
            let payload = &frames[FRAME_HEADER_LEN..frames.len().min(FRAME_HEADER_LEN + len)];
            match h.kind {
                HEADERS if h.stream_id > conn.map_or(0, |c| c.max_stream_id) => {
                    let fragment = h2::headers_fragment(&h, payload).unwrap_or(payload);
                    let mut f = Fields::default();
                    // A fresh decoder: right for a first block; a later one may refer to the
                    // dynamic table, and then :method/:path do not come out.
                    let _ = Decoder::new().decode_with_cb(fragment, |n, v| f.take(&n, &v));
                    let route = match (f.method.as_deref(), f.path.as_deref()) {
                        (Some(m), Some(p)) => {
                            Some(Api::route(m, p).map(|r| (r.api, f.authority.or(f.host))))
                        }
                        _ => None,
                    };
                    let llm = match route {
                        Some(decoded) => decoded,
                        None => conn.and_then(|c| c.last_llm.clone()),
                    };
                    return Http2Hold::NewStream(llm);
                }
                DATA | HEADERS | CONTINUATION => saw_data = true,
                _ => {}
            }
            frames = &frames[(FRAME_HEADER_LEN + len).min(frames.len())..];
        }
        if saw_data {
            Http2Hold::OpenStreams
        } else {
            Http2Hold::NoRequest
        }
    }

    fn desync(
        &mut self,
        e: Desync,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        tracing::debug!(error = %e, "HTTP/2 connection desynchronised; ignoring the rest of it");
        match e {
            Desync::Hpack(_) => stats.hpack_errors += 1,
            Desync::HeaderBlockTooLarge => stats.header_overflows += 1,
            Desync::Frame(_) | Desync::Continuation => stats.http_errors += 1,
        }
        stats.http2_desynced += 1;
        self.give_up(ts_ns, stats, out);
    }

    fn give_up(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        for (_, s) in std::mem::take(&mut self.streams) {
            Self::end_abruptly(s, ts_ns, stats, out);
        }
        self.desynced = true;
        self.sides.write.frames.reset();
        self.sides.read.frames.reset();
        self.sides.write.block = None;
        self.sides.read.block = None;
    }

    /// A stream ended before its exchange did (reset, close, loss, eviction).
    fn end_abruptly(
        mut s: Stream,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if s.ex.request == RequestState::Writing {
            // Never sent whole: not a call.
            stats.abandoned_requests += 1;
            return;
        }
        if s.ex.response != ResponseState::Done {
            s.ex.response = ResponseState::Done;
            s.ex.response_complete = false;
            s.ex.ended_at_ns = ts_ns;
            s.ex.response_bytes = s.response_bytes;
        }
        s.ex.finalize(stats, out);
    }

    /// A whole frame of one direction. Frames that matter to one direction only (DATA of a
    /// request or of a response, GOAWAY from the server) are told apart here.
    fn frame(
        &mut self,
        dir: Direction,
        h: FrameHeader,
        payload: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) -> Result<(), Desync> {
        if self.sides[dir].block.is_some()
            || matches!(h.kind, HEADERS | CONTINUATION | PUSH_PROMISE)
        {
            return self.header_frame(dir, &h, payload, ts_ns, stats, out);
        }
        match (h.kind, dir) {
            (DATA, Direction::Write) => self.request_data(&h, payload, stats, out)?,
            (DATA, Direction::Read) => self.response_data(&h, payload, ts_ns, stats, out)?,
            (RST_STREAM, _) => {
                let code = h2::rst_stream_code(&h, payload)?;
                self.reset(h.stream_id, code, ts_ns, stats, out);
            }
            (GOAWAY, Direction::Read) => {
                // Streams above the last one the server processed were refused: the client
                // retries them on another connection, where they are counted.
                let last = h2::goaway_last_stream(&h, payload)?;
                let refused: Vec<u32> = self.streams.range(last + 1..).map(|(id, _)| *id).collect();
                for id in refused {
                    self.reset(id, REFUSED_STREAM, ts_ns, stats, out);
                }
            }
            _ => {}
        }
        Ok(())
    }

    // ------------------------------------------------------------------ header blocks

    /// Adds a frame to the header block of `side`; returns the block once it is whole.
    fn assemble(
        side: &mut Side,
        h: &FrameHeader,
        payload: &[u8],
        max: usize,
    ) -> Result<Option<HeaderBlock>, Desync> {
        let wire = (FRAME_HEADER_LEN + h.len) as u64;
        let block = match (side.block.take(), h.kind) {
            (Some(mut b), CONTINUATION) if b.stream_id == h.stream_id => {
                b.fragment.extend_from_slice(payload);
                b.wire_bytes += wire;
                b
            }
            (Some(_), _) | (None, CONTINUATION) => return Err(Desync::Continuation),
            (None, kind) => {
                let push_promise = kind == PUSH_PROMISE;
                let fragment = if push_promise {
                    h2::push_promise_fragment(h, payload)?
                } else {
                    h2::headers_fragment(h, payload)?
                };
                HeaderBlock {
                    stream_id: h.stream_id,
                    end_stream: !push_promise && h.has(FLAG_END_STREAM),
                    push_promise,
                    fragment: fragment.to_vec(),
                    wire_bytes: wire,
                }
            }
        };
        if block.fragment.len() > max {
            return Err(Desync::HeaderBlockTooLarge);
        }
        if h.has(FLAG_END_HEADERS) {
            Ok(Some(block))
        } else {
            side.block = Some(block);
            Ok(None)
        }
    }

    /// Decodes a whole block (always: the table must stay in step) and keeps a few fields.
    fn decode(side: &mut Side, block: &HeaderBlock) -> Result<Fields, Desync> {
        let mut fields = Fields::default();
        side.hpack
            .decode_with_cb(&block.fragment, |n, v| fields.take(&n, &v))
            .map_err(Desync::Hpack)?;
        Ok(fields)
    }

    /// A frame of a header block of one direction: once the block is whole it is decoded
    /// (always, to keep the table in step) and, unless it is a push promise, handed on as a
    /// request's or a response's head (or trailers).
    fn header_frame(
        &mut self,
        dir: Direction,
        h: &FrameHeader,
        payload: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) -> Result<(), Desync> {
        let max = self.limits.max_header_bytes;
        let side = &mut self.sides[dir];
        let Some(block) = Self::assemble(side, h, payload, max)? else {
            return Ok(());
        };
        let fields = Self::decode(side, &block)?;
        match (block.push_promise, dir) {
            (true, _) => {}
            (false, Direction::Write) => self.request_headers(&block, fields, ts_ns, stats, out),
            (false, Direction::Read) => self.response_headers(&block, &fields, ts_ns, stats, out),
        }
        Ok(())
    }

    // ------------------------------------------------------------------ requests

    fn request_data(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) -> Result<(), Desync> {
        let body = h2::unpadded(h, payload)?;
        if let Some(s) = self.streams.get_mut(&h.stream_id)
            && s.ex.request == RequestState::Writing
        {
            s.request_bytes += (FRAME_HEADER_LEN + h.len) as u64;
            if let Some(reader) = s.request_body.as_mut() {
                reader.feed(body, stats, &mut |_| {});
            }
            if h.has(FLAG_END_STREAM) {
                self.request_end(h.stream_id, stats, out);
            }
        }
        Ok(())
    }

    fn request_headers(
        &mut self,
        block: &HeaderBlock,
        f: Fields,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let id = block.stream_id;
        if let Some(s) = self.streams.get_mut(&id) {
            // Trailers.
            s.request_bytes += block.wire_bytes;
            if block.end_stream && s.ex.request == RequestState::Writing {
                self.request_end(id, stats, out);
            }
            return;
        }
        stats.http_requests += 1;
        stats.http2_streams += 1;
        self.max_stream_id = self.max_stream_id.max(id);
        let method = f.method.unwrap_or_default();
        let path = f.path.unwrap_or_default();
        let ex = Exchange::for_message(&method, &path, f.authority.or(f.host), "2", ts_ns);
        let request_body = ex.route.as_ref().map(|_| {
            let mut reader = BodyReader::new(
                f.content_encoding.as_deref(),
                Framing::Whole,
                self.limits.max_request_body,
                stats,
            );
            reader.keep_prefix = true;
            reader
        });
        if self.streams.len() >= MAX_STREAMS
            && let Some((_, oldest)) = self.streams.pop_first()
        {
            stats.exchanges_dropped += 1;
            Self::end_abruptly(oldest, ts_ns, stats, out);
        }
        self.streams.insert(
            id,
            Stream {
                ex,
                request_body,
                request_bytes: block.wire_bytes,
                response_bytes: 0,
                response_length: None,
                response_data: 0,
            },
        );
        if block.end_stream {
            self.request_end(id, stats, out);
        }
    }

    fn request_end(&mut self, id: u32, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let body = s.request_body.take();
        s.ex.finish_request(body, s.request_bytes, stats, out);
        if let Some(req) = &s.ex.llm
            && let Some(route) = &s.ex.route
        {
            self.last_llm = Some((route.api, req.server_address.clone()));
        }
        self.settle(id, stats, out);
    }

    // ------------------------------------------------------------------ responses

    fn response_data(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) -> Result<(), Desync> {
        let body = h2::unpadded(h, payload)?;
        if let Some(s) = self.streams.get_mut(&h.stream_id)
            && s.ex.response == ResponseState::Receiving
        {
            s.response_bytes += (FRAME_HEADER_LEN + h.len) as u64;
            s.response_data += body.len() as u64;
            s.ex.response_body(body, ts_ns, s.response_bytes, stats, out);
            let whole = s.response_length.is_some_and(|n| s.response_data >= n);
            if h.has(FLAG_END_STREAM) || whole {
                s.ex.end_response(ts_ns, true, s.response_bytes, stats);
                self.settle(h.stream_id, stats, out);
            }
        }
        Ok(())
    }

    fn response_headers(
        &mut self,
        block: &HeaderBlock,
        f: &Fields,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let id = block.stream_id;
        let Some(s) = self.streams.get_mut(&id) else {
            stats.unmatched_responses += 1;
            return;
        };
        s.response_bytes += block.wire_bytes;
        if s.ex.response == ResponseState::Waiting {
            let status = f.status.unwrap_or(0);
            if (100..200).contains(&status) {
                // Interim (100 Continue, 103 Early Hints): the final head follows.
                return;
            }
            stats.http_responses += 1;
            let limit = self.limits.max_response_body;
            s.ex.start_response(
                status,
                f.content_type.as_deref(),
                f.content_encoding.as_deref(),
                limit,
                stats,
            );
            s.response_length = f.content_length;
            if f.content_length == Some(0) && s.ex.response == ResponseState::Receiving {
                s.ex.end_response(ts_ns, true, s.response_bytes, stats);
                self.settle(id, stats, out);
                return;
            }
        }
        // Otherwise: trailers.
        if block.end_stream && s.ex.response == ResponseState::Receiving {
            s.ex.end_response(ts_ns, true, s.response_bytes, stats);
            self.settle(id, stats, out);
        }
    }

    // ------------------------------------------------------------------ completion

    /// RST_STREAM (either side) or a GOAWAY refusal.
    fn reset(
        &mut self,
        id: u32,
        code: u32,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        if code == REFUSED_STREAM && s.ex.response == ResponseState::Waiting {
            // Not processed by the server: the client sends it again; not a call here.
            stats.http2_streams_refused += 1;
            if s.ex.llm.is_some() {
                stats.http2_requests_refused += 1;
            }
            return;
        }
        stats.http2_streams_reset += 1;
        Self::end_abruptly(s, ts_ns, stats, out);
    }

    fn settle(&mut self, id: u32, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        let done = self.streams.get(&id).is_some_and(|s| {
            s.ex.request != RequestState::Writing && s.ex.response == ResponseState::Done
        });
        if done && let Some(s) = self.streams.remove(&id) {
            s.ex.finalize(stats, out);
        }
    }
}

impl Transport for Http2 {
    /// Split into frames, each handled in order.
    fn on_bytes(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if self.desynced {
            return;
        }
        // The reader is taken out while its frames are handled (they need `&mut self`).
        let mut frames = std::mem::replace(&mut self.sides[dir].frames, FrameReader::server());
        let result = frames.feed(data, |h, p| self.frame(dir, h, p, ts_ns, stats, out));
        self.sides[dir].frames = frames;
        if let Err(e) = result {
            self.desync(e, ts_ns, stats, out);
        }
    }

    /// Bytes were lost (either way): frame boundaries and the HPACK state cannot be trusted
    /// any more.
    fn on_loss(
        &mut self,
        _: Direction,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if !self.desynced {
            self.give_up(ts_ns, stats, out);
            stats.http2_desynced += 1;
        }
    }

    /// Every stream still open is emitted incomplete (or, if its request was never written
    /// whole, counted as abandoned).
    fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        self.give_up(ts_ns, stats, out);
    }

    fn is_idle(&self) -> bool {
        self.streams.is_empty()
            && !self.sides.write.frames.in_frame()
            && !self.sides.read.frames.in_frame()
            && self.sides.write.block.is_none()
            && self.sides.read.block.is_none()
    }
}
