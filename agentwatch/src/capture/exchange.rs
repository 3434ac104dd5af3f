//! One request/response exchange, whichever framing carries it: the request's body read for
//! its model, the response's body decoded for its usage, and the call they make.

use super::streams::{JsonArraySplitter, NdjsonSplitter};
use super::{CaptureEvent, CaptureStats};
use crate::accounting::UsageSource;
use crate::protocol::decode::{ContentEncoding, Decoder};
use crate::protocol::http1::RequestHead;
use crate::protocol::sse::{SseEvent, SseParser};
use crate::providers::{
    Accumulator, Api, Framing, LlmCall, LlmRequest, ProviderError, Route, provider_name,
};

/// Compressed or plain body bytes are handed to decoders in pieces of this size, so one TLS
/// record never inflates into more than a few MiB at once.
const BODY_PIECE: usize = 4096;

/// Where a request's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestState {
    Writing,
    Done,
    /// Bytes of it were lost: it was sent, but we did not see all of it.
    Lost,
}

/// Where a response's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseState {
    Waiting,
    Receiving,
    Done,
}

/// A body being read: content decoding, then bounded buffering or SSE parsing.
#[derive(Debug)]
pub(super) struct BodyReader {
    /// `None`: unsupported content encoding.
    decoder: Option<Decoder>,
    broken: bool,
    sink: BodySink,
    limit: usize,
    /// Over the limit, keep the first `limit` bytes (requests: the `model` is near the start).
    pub(super) keep_prefix: bool,
}

#[derive(Debug)]
enum BodySink {
    Buffer { buf: Vec<u8>, over_limit: bool },
    Sse(SseParser),
    Ndjson(NdjsonSplitter),
    JsonArray(JsonArraySplitter),
}

impl BodyReader {
    pub(super) fn new(
        content_encoding: Option<&str>,
        framing: Framing,
        limit: usize,
        stats: &mut CaptureStats,
    ) -> Self {
        let decoder = match ContentEncoding::from_header(content_encoding) {
            Ok(e) => Some(Decoder::new(e)),
            Err(e) => {
                tracing::debug!(error = %e, "body not decoded");
                stats.decode_errors += 1;
                None
            }
        };
        let sink = match framing {
            Framing::Sse => BodySink::Sse(SseParser::new(limit)),
            Framing::Ndjson => BodySink::Ndjson(NdjsonSplitter::new(limit)),
            Framing::JsonArray => BodySink::JsonArray(JsonArraySplitter::new(limit)),
            Framing::Whole => BodySink::Buffer {
                buf: Vec::new(),
                over_limit: false,
            },
        };
        Self {
            broken: decoder.is_none(),
            decoder,
            sink,
            limit,
            keep_prefix: false,
        }
    }

    pub(super) fn feed(
        &mut self,
        bytes: &[u8],
        stats: &mut CaptureStats,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if self.broken {
            return;
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        if decoder.encoding() == ContentEncoding::Identity {
            self.sink_bytes(bytes, stats, on_event);
            return;
        }
        let mut plain = Vec::new();
        let piece_len = decoder.max_piece().min(BODY_PIECE);
        for piece in bytes.chunks(piece_len) {
            plain.clear();
            let Some(decoder) = self.decoder.as_mut() else {
                return;
            };
            if let Err(e) = decoder.feed(piece, &mut plain) {
                tracing::debug!(error = %e, "body decoding failed");
                stats.decode_errors += 1;
                self.broken = true;
                return;
            }
            self.sink_bytes(&plain, stats, on_event);
        }
    }

    /// The body ended normally: flush the decoder and the SSE parser.
    pub(super) fn finish(
        &mut self,
        stats: &mut CaptureStats,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if self.broken {
            return;
        }
        if let Some(decoder) = self.decoder.as_mut() {
            let mut plain = Vec::new();
            if let Err(e) = decoder.finish(&mut plain) {
                tracing::debug!(error = %e, "body decoding failed at its end");
                stats.decode_errors += 1;
                self.broken = true;
                return;
            }
            self.sink_bytes(&plain, stats, on_event);
        }
        match &mut self.sink {
            BodySink::Sse(p) => p.finish(on_event),
            BodySink::Ndjson(p) => p.finish(on_event),
            BodySink::JsonArray(p) => p.finish(on_event),
            BodySink::Buffer { .. } => {}
        }
    }

    fn sink_bytes(
        &mut self,
        bytes: &[u8],
        stats: &mut CaptureStats,
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) {
        if bytes.is_empty() {
            return;
        }
        match &mut self.sink {
            BodySink::Buffer { buf, over_limit } => {
                if *over_limit {
                    stats.bytes_over_limit += bytes.len() as u64;
                } else if buf.len() + bytes.len() > self.limit {
                    *over_limit = true;
                    stats.bytes_over_limit += (buf.len() + bytes.len()) as u64;
                    if self.keep_prefix {
                        let room = self.limit - buf.len();
                        buf.extend_from_slice(&bytes[..room]);
                    } else {
                        *buf = Vec::new();
                    }
                } else {
                    buf.extend_from_slice(bytes);
                }
            }
            BodySink::Sse(p) => p.feed(bytes, on_event),
            BodySink::Ndjson(p) => p.feed(bytes, on_event),
            BodySink::JsonArray(p) => p.feed(bytes, on_event),
        }
    }

    /// The whole decoded body, if it was kept intact.
    pub(super) fn buffered(&self) -> Option<&[u8]> {
        match &self.sink {
            BodySink::Buffer {
                buf,
                over_limit: false,
            } if !self.broken => Some(buf),
            _ => None,
        }
    }

    /// What was kept of a body over its limit (with `keep_prefix`).
    pub(super) fn prefix(&self) -> &[u8] {
        match &self.sink {
            BodySink::Buffer { buf, .. } if !self.broken => buf,
            _ => &[],
        }
    }

    /// The body was not kept whole for a reason that is not the body's own fault.
    pub(super) fn lost_to_limit_or_decoding(&self) -> bool {
        self.broken
            || matches!(
                self.sink,
                BodySink::Buffer {
                    over_limit: true,
                    ..
                }
            )
    }

    fn oversized_events(&self) -> u64 {
        match &self.sink {
            BodySink::Sse(p) => p.oversized_events,
            BodySink::Ndjson(p) => p.oversized_events,
            BodySink::JsonArray(p) => p.oversized_events,
            BodySink::Buffer { .. } => 0,
        }
    }
}

/// The response side of an LLM exchange.
#[derive(Debug)]
pub(super) struct ResponseBody {
    pub(super) reader: BodyReader,
    pub(super) acc: Accumulator,
}

/// One request/response pair, queued FIFO from the request head until both sides are done.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) is_head: bool,
    /// The API this request's method and path match (a candidate until the body is read),
    /// with what the path says (a Gemini model, an Azure deployment, a streaming verb).
    pub(super) route: Option<Route>,
    pub(super) host: Option<String>,
    pub(super) http_version: &'static str,
    pub(super) started_at_ns: u64,
    pub(super) request: RequestState,
    /// Set once the request is known to be an LLM call.
    pub(super) llm: Option<LlmRequest>,
    pub(super) response: ResponseState,
    pub(super) status: Option<u16>,
    pub(super) body: Option<ResponseBody>,
    /// The response was seen to its end.
    pub(super) response_complete: bool,
    pub(super) response_bytes: u64,
    pub(super) ended_at_ns: u64,
    /// The call was already emitted (at the SSE stream's terminal event).
    pub(super) emitted: bool,
}

impl Exchange {
    /// A request that is not an HTTP/1 message: an HTTP/2 stream (from its pseudo-headers),
    /// or a WebSocket message standing for `method path`.
    pub(super) fn for_message(
        method: &str,
        path: &str,
        host: Option<String>,
        http_version: &'static str,
        started_at_ns: u64,
    ) -> Self {
        let mut ex = Self::new(None, started_at_ns);
        ex.is_head = method == "HEAD";
        ex.route = Api::route(method, path);
        ex.host = host;
        ex.http_version = http_version;
        ex
    }

    pub(super) fn new(head: Option<&RequestHead>, started_at_ns: u64) -> Self {
        Self {
            is_head: head.is_some_and(|h| h.method == "HEAD"),
            route: head.and_then(|h| Api::route(&h.method, &h.path)),
            host: head.and_then(|h| h.host.clone()),
            http_version: match head.map(|h| h.minor_version) {
                Some(0) => "1.0",
                _ => "1.1",
            },
            started_at_ns,
            request: RequestState::Writing,
            llm: None,
            response: ResponseState::Waiting,
            status: None,
            body: None,
            response_complete: false,
            response_bytes: 0,
            ended_at_ns: 0,
            emitted: false,
        }
    }

    pub(super) fn llm_request(
        &self,
        api: Api,
        model: Option<String>,
        streaming: bool,
        request_bytes: u64,
    ) -> LlmRequest {
        LlmRequest {
            provider: provider_name(api, self.host.as_deref()),
            api: api.name().to_string(),
            server_address: self.host.clone(),
            model,
            streaming,
            http_version: self.http_version.to_string(),
            started_at_ns: self.started_at_ns,
            request_bytes,
        }
    }

    pub(super) fn call(&self, request: LlmRequest, complete: bool) -> LlmCall {
        let acc = self.body.as_ref().map(|b| &b.acc);
        let usage = acc.and_then(Accumulator::usage);
        let meta = acc.map(Accumulator::meta);
        LlmCall {
            request,
            status: self.status,
            response_model: meta.and_then(|m| m.response_model.clone()),
            response_id: meta.and_then(|m| m.response_id.clone()),
            usage_source: if usage.is_some() {
                UsageSource::Reported
            } else {
                UsageSource::Missing
            },
            usage: usage.unwrap_or_default(),
            complete,
            ended_at_ns: self.ended_at_ns,
            response_bytes: self.response_bytes,
            estimate: None,
        }
    }
}

impl Exchange {
    /// The request was written whole: read the model from its body and say whether it is an
    /// LLM call (emitting `Request` if so).
    pub(super) fn finish_request(
        &mut self,
        body: Option<BodyReader>,
        request_bytes: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        self.request = RequestState::Done;
        let llm = match (self.route.clone(), body) {
            (Some(route), Some(mut body)) => {
                body.finish(stats, &mut |_| {});
                if body.lost_to_limit_or_decoding() {
                    // Method and path say LLM; the body was too big (or undecodable) to read
                    // whole: take the model from the kept prefix (or the path) if it is there.
                    let (model, streaming) = route.scan_prefix(body.prefix());
                    Some(self.llm_request(route.api, model, streaming, request_bytes))
                } else {
                    match route.request_info(body.buffered().unwrap_or_default()) {
                        Ok(info) => Some(self.llm_request(
                            route.api,
                            Some(info.model),
                            info.streaming,
                            request_bytes,
                        )),
                        Err(ProviderError::InvalidJson { .. })
                            if !body.buffered().unwrap_or_default().is_empty() =>
                        {
                            stats.json_errors += 1;
                            None
                        }
                        Err(_) => None,
                    }
                }
            }
            _ => None,
        };
        match llm {
            Some(req) => {
                stats.llm_requests += 1;
                out.push(CaptureEvent::Request(req.clone()));
                self.llm = Some(req);
            }
            None => stats.non_llm_requests += 1,
        }
    }

    /// A final response head: set up reading its body if it may carry usage.
    pub(super) fn start_response(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        limit: usize,
        stats: &mut CaptureStats,
    ) {
        self.response = ResponseState::Receiving;
        self.status = Some(status);
        // Known non-LLM by now (the body had no model): frame only.
        let ruled_out = self.request == RequestState::Done && self.llm.is_none();
        if let Some(route) = self.route.as_ref().filter(|_| !ruled_out) {
            let streaming = match &self.llm {
                Some(r) => r.streaming,
                None => route.path_streaming,
            };
            let framing = route.api.framing(content_type.unwrap_or(""), streaming);
            self.body = Some(ResponseBody {
                reader: BodyReader::new(content_encoding, framing, limit, stats),
                acc: route.api.accumulator(),
            });
        }
    }

    /// Response body bytes (still content-encoded). A stream's terminal event ends the call
    /// even if the HTTP body trails on.
    pub(super) fn response_body(
        &mut self,
        bytes: &[u8],
        ts_ns: u64,
        message_bytes: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let Some(ResponseBody { reader, acc }) = self.body.as_mut() else {
            return;
        };
        reader.feed(bytes, stats, &mut |e| acc.on_sse(e));
        if acc.meta().stream_done
            && !self.emitted
            && self.request == RequestState::Done
            && let Some(req) = self.llm.clone()
        {
            self.ended_at_ns = ts_ns;
            self.response_bytes = message_bytes;
            let call = self.call(req, true);
            count_call(&call, stats);
            out.push(CaptureEvent::Call(call));
            self.emitted = true;
        }
    }

    /// The response ended (`complete`: seen to its end).
    pub(super) fn end_response(
        &mut self,
        ts_ns: u64,
        complete: bool,
        message_bytes: u64,
        stats: &mut CaptureStats,
    ) {
        if !self.emitted {
            self.ended_at_ns = ts_ns;
            self.response_bytes = message_bytes;
        }
        self.response = ResponseState::Done;
        self.response_complete = complete;
        if complete && let Some(ResponseBody { reader, acc }) = self.body.as_mut() {
            reader.finish(stats, &mut |e| acc.on_sse(e));
            if let Some(buf) = reader.buffered()
                && !buf.is_empty()
            {
                acc.on_json_body(buf);
            }
        }
    }

    /// The exchange left its framing (done, or given up): emits its call unless it already
    /// was, and counts what its response body could not be read for.
    pub(super) fn finalize(self, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if let Some(body) = self.body.as_ref().filter(|_| self.llm.is_some()) {
            let meta = body.acc.meta();
            stats.json_errors += meta.json_errors;
            stats.provider_errors += meta.provider_errors;
            stats.sse_oversized_events += body.reader.oversized_events();
        }
        if self.emitted {
            return;
        }
        if let Some(req) = self.llm.clone() {
            let complete = self.response_complete && self.request == RequestState::Done;
            let call = self.call(req, complete);
            count_call(&call, stats);
            out.push(CaptureEvent::Call(call));
        }
    }
}

fn count_call(call: &LlmCall, stats: &mut CaptureStats) {
    stats.llm_calls += 1;
    if !call.complete {
        stats.calls_incomplete += 1;
    }
    if call.usage_source == UsageSource::Missing {
        stats.calls_usage_missing += 1;
    }
}
