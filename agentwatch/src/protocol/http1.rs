//! Incremental HTTP/1.1 message framing.
//!
//! Shape: a pull parser. The caller hands in whatever bytes it has and gets back *one* event
//! plus the number of bytes consumed, then calls again with the rest. Pulling one event at a
//! time lets the caller act between events — the response parser must know whether the
//! request it answers was a `HEAD` *before* it frames the body ([`Http1Parser::set_request_was_head`]),
//! and the capture layer switches body handling right after a head. Body bytes are returned as
//! a range into the caller's slice, never copied; only the header block (bounded by
//! `max_header_bytes`), one chunk-size line and trailer lines are buffered.
//!
//! Heads are parsed with `httparse` once the blank line that ends them has been seen (searched
//! only in newly arrived bytes, so a head dribbled in byte by byte is not re-parsed quadratically).
//! Only the handful of header values the pipeline needs are kept: never `Authorization` or
//! cookies.

use std::ops::Range;

/// Framing errors. Any of them means the byte stream can no longer be framed: the caller
/// gives up the message in flight and resynchronises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http1Error {
    #[error("header block larger than {limit} bytes")]
    HeaderTooLarge { limit: usize },
    #[error("malformed {kind} head: {reason}")]
    MalformedHead { kind: &'static str, reason: String },
    #[error("invalid or conflicting Content-Length")]
    InvalidContentLength,
    #[error("unsupported Transfer-Encoding on a request")]
    UnsupportedTransferEncoding,
    #[error("invalid chunk-size line")]
    InvalidChunkSize,
    #[error("chunk data not followed by CRLF")]
    BadChunkTerminator,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (requests without length, HEAD answers, 204, 304, `Content-Length: 0`).
    None,
    Length(u64),
    Chunked,
    /// A response without length: the body ends when the connection closes.
    UntilClose,
}

/// The parts of a request head the pipeline uses (no credentials are kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub minor_version: u8,
    pub host: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub framing: BodyFraming,
    /// Size of the head in bytes, request line to blank line.
    pub head_bytes: usize,
}

/// The parts of a response head the pipeline uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub framing: BodyFraming,
    pub head_bytes: usize,
    /// `Upgrade: websocket` (with a 101).
    pub websocket: bool,
    /// `Sec-WebSocket-Extensions`, as negotiated.
    pub websocket_extensions: Option<String>,
}

/// One step of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http1Event {
    Request(RequestHead),
    /// A final response head (1xx interim responses are skipped, except 101).
    Response(ResponseHead),
    /// Body bytes (transfer-decoded, still content-encoded): a range of the input slice.
    Body(Range<usize>),
    /// The message is complete.
    End,
    /// `101 Switching Protocols`: the rest of the stream is not HTTP/1.x; the parser swallows it.
    Upgraded(ResponseHead),
    /// All input consumed; call again with more bytes.
    NeedMore,
}

/// Which side of a message exchange this parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages.
    Idle,
    Head,
    Fixed {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    /// Emit `End` on the next call.
    End,
    /// After `101`: swallow everything.
    Opaque,
}

/// A chunk-size line (hex size plus optional extensions) longer than this is malformed.
const MAX_CHUNK_LINE: usize = 4096;

/// Incremental parser of a sequence of HTTP/1.x messages in one direction.
#[derive(Debug)]
pub struct Http1Parser {
    kind: MessageKind,
    state: State,
    /// Head bytes, the current chunk-size line, or the current trailer line.
    buf: Vec<u8>,
    trailer_bytes: usize,
    max_header_bytes: usize,
    request_was_head: bool,
    message_bytes: u64,
    /// Length of a 1xx head just skipped by `parse_head`.
    interim_len: Option<usize>,
}

impl Http1Parser {
    pub fn new(kind: MessageKind, max_header_bytes: usize) -> Self {
        Self {
            kind,
            state: State::Idle,
            buf: Vec::new(),
            trailer_bytes: 0,
            max_header_bytes: max_header_bytes.max(64),
            request_was_head: false,
            message_bytes: 0,
            interim_len: None,
        }
    }

    /// Responses only: whether the request this response answers was a `HEAD` (no body follows).
    /// Call before the response head is parsed.
    pub fn set_request_was_head(&mut self, was_head: bool) {
        self.request_was_head = was_head;
    }

    /// Forget any partial message (after loss or an error).
    pub fn reset(&mut self) {
        self.state = State::Idle;
        self.buf = Vec::new();
        self.trailer_bytes = 0;
        self.message_bytes = 0;
    }

    /// A message has started and not yet ended.
    pub fn in_message(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Bytes buffered inside the parser (head, chunk line, trailer).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Wire bytes of the current (or just ended) message so far.
    pub fn message_bytes(&self) -> u64 {
        self.message_bytes
    }

    /// The body of the current message runs until the connection closes.
    pub fn is_until_close(&self) -> bool {
        matches!(self.state, State::UntilClose)
    }

    /// The stream was switched to another protocol (`101`).
    pub fn is_upgraded(&self) -> bool {
        matches!(self.state, State::Opaque)
    }

    /// At connection close: ends a close-delimited body. Returns `true` if that completed a message.
    pub fn finish_at_close(&mut self) -> bool {
        if self.is_until_close() {
            self.state = State::Idle;
            true
        } else {
            false
        }
    }

    /// Parse from `input`; returns the bytes consumed and one event.
    pub fn next(&mut self, input: &[u8]) -> Result<(usize, Http1Event), Http1Error> {
        let result = self.step(input);
        if let Ok((n, _)) = &result {
            self.message_bytes += *n as u64;
        }
        result
    }

    fn step(&mut self, input: &[u8]) -> Result<(usize, Http1Event), Http1Error> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Idle => {
                    // Tolerate stray CRLFs between messages (RFC 9112 §2.2).
                    while pos < input.len() && matches!(input[pos], b'\r' | b'\n') {
                        pos += 1;
                    }
                    if pos == input.len() {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    self.state = State::Head;
                    self.buf.clear();
                    self.message_bytes = 0;
                }
                State::Head => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    let old_len = self.buf.len();
                    let take = rest.len().min(self.max_header_bytes + 1 - old_len);
                    self.buf.extend_from_slice(&rest[..take]);
                    let search_from = old_len.saturating_sub(2);
                    let ended = find(&self.buf[search_from..], b"\n\r\n").is_some()
                        || find(&self.buf[search_from..], b"\n\n").is_some();
                    if ended {
                        if let Some((head_len, event)) = self.parse_head()? {
                            let used = head_len - old_len;
                            self.buf = Vec::new();
                            return Ok((pos + used, event));
                        }
                        // 1xx interim response: skipped, parse the next head.
                        if let Some(len) = self.interim_len {
                            self.interim_len = None;
                            let used = len - old_len;
                            pos += used;
                            self.buf.clear();
                            continue;
                        }
                    }
                    if self.buf.len() > self.max_header_bytes {
                        return Err(Http1Error::HeaderTooLarge {
                            limit: self.max_header_bytes,
                        });
                    }
                    return Ok((pos + take, Http1Event::NeedMore));
                }
                State::Fixed { remaining } => {
                    let rest = input.len() - pos;
                    if rest == 0 {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    let take = (rest as u64).min(remaining) as usize;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::End
                    } else {
                        State::Fixed { remaining: left }
                    };
                    return Ok((pos + take, Http1Event::Body(pos..pos + take)));
                }
                State::ChunkData { remaining } => {
                    let rest = input.len() - pos;
                    if rest == 0 {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    let take = (rest as u64).min(remaining) as usize;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData { remaining: left }
                    };
                    return Ok((pos + take, Http1Event::Body(pos..pos + take)));
                }
                State::ChunkDataEnd => {
                    if pos == input.len() {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    let b = input[pos];
                    pos += 1;
                    match (b, self.buf.is_empty()) {
                        (b'\r', true) => self.buf.push(b'\r'),
                        (b'\n', _) => {
                            self.buf.clear();
                            self.state = State::ChunkSize;
                        }
                        _ => return Err(Http1Error::BadChunkTerminator),
                    }
                }
                State::ChunkSize => {
                    let Some(line_end) = self.take_line(input, &mut pos, MAX_CHUNK_LINE)? else {
                        return Ok((pos, Http1Event::NeedMore));
                    };
                    debug_assert!(line_end);
                    let size = parse_chunk_size(&self.buf)?;
                    self.buf.clear();
                    self.state = if size == 0 {
                        self.trailer_bytes = 0;
                        State::Trailers
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::Trailers => {
                    let before = pos;
                    let limit = self.max_header_bytes;
                    let got = self.take_line(input, &mut pos, limit);
                    self.trailer_bytes += pos - before;
                    if self.trailer_bytes > limit {
                        return Err(Http1Error::HeaderTooLarge { limit });
                    }
                    let Some(_) = got? else {
                        return Ok((pos, Http1Event::NeedMore));
                    };
                    let blank = matches!(self.buf.as_slice(), b"\r\n" | b"\n");
                    self.buf.clear();
                    if blank {
                        self.state = State::End;
                    }
                }
                State::UntilClose => {
                    if pos == input.len() {
                        return Ok((pos, Http1Event::NeedMore));
                    }
                    return Ok((input.len(), Http1Event::Body(pos..input.len())));
                }
                State::End => {
                    self.state = State::Idle;
                    return Ok((pos, Http1Event::End));
                }
                State::Opaque => return Ok((input.len(), Http1Event::NeedMore)),
            }
        }
    }

    /// Appends bytes up to and including `\n` to `buf`. `Some(true)` when a line is complete.
    fn take_line(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        limit: usize,
    ) -> Result<Option<bool>, Http1Error> {
        let rest = &input[*pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.buf.extend_from_slice(&rest[..=i]);
                *pos += i + 1;
                if self.buf.len() > limit {
                    return Err(self.line_error(limit));
                }
                Ok(Some(true))
            }
            None => {
                self.buf.extend_from_slice(rest);
                *pos = input.len();
                if self.buf.len() > limit {
                    return Err(self.line_error(limit));
                }
                Ok(None)
            }
        }
    }

    fn line_error(&self, limit: usize) -> Http1Error {
        if matches!(self.state, State::Trailers) {
            Http1Error::HeaderTooLarge { limit }
        } else {
            Http1Error::InvalidChunkSize
        }
    }
}

impl Http1Parser {
    fn parse_head(&mut self) -> Result<Option<(usize, Http1Event)>, Http1Error> {
        match self.kind {
            MessageKind::Request => self.parse_request_head(),
            MessageKind::Response => self.parse_response_head(),
        }
    }

    fn parse_request_head(&mut self) -> Result<Option<(usize, Http1Event)>, Http1Error> {
        let mut small = [httparse::EMPTY_HEADER; 64];
        let mut large;
        let mut req = httparse::Request::new(&mut small);
        let mut status = req.parse(&self.buf);
        if matches!(status, Err(httparse::Error::TooManyHeaders)) {
            large = vec![httparse::EMPTY_HEADER; 1024];
            req = httparse::Request::new(&mut large);
            status = req.parse(&self.buf);
        }
        let len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(Http1Error::MalformedHead {
                    kind: "request",
                    reason: e.to_string(),
                });
            }
        };
        let fields = HeadFields::collect(req.headers)?;
        let framing = if fields.chunked {
            BodyFraming::Chunked
        } else if fields.transfer_encoding {
            return Err(Http1Error::UnsupportedTransferEncoding);
        } else {
            match fields.content_length {
                Some(0) | None => BodyFraming::None,
                Some(n) => BodyFraming::Length(n),
            }
        };
        let head = RequestHead {
            method: req.method.unwrap_or_default().to_string(),
            path: req.path.unwrap_or_default().to_string(),
            minor_version: req.version.unwrap_or(1),
            host: fields.host,
            content_type: fields.content_type,
            content_encoding: fields.content_encoding,
            framing,
            head_bytes: len,
        };
        self.enter_body(framing);
        Ok(Some((len, Http1Event::Request(head))))
    }

    fn parse_response_head(&mut self) -> Result<Option<(usize, Http1Event)>, Http1Error> {
        let mut small = [httparse::EMPTY_HEADER; 64];
        let mut large;
        let mut resp = httparse::Response::new(&mut small);
        let mut status = resp.parse(&self.buf);
        if matches!(status, Err(httparse::Error::TooManyHeaders)) {
            large = vec![httparse::EMPTY_HEADER; 1024];
            resp = httparse::Response::new(&mut large);
            status = resp.parse(&self.buf);
        }
        let len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(Http1Error::MalformedHead {
                    kind: "response",
                    reason: e.to_string(),
                });
            }
        };
        let code = resp.code.unwrap_or(0);
        let fields = HeadFields::collect(resp.headers)?;
        let mut head = ResponseHead {
            status: code,
            minor_version: resp.version.unwrap_or(1),
            content_type: fields.content_type,
            content_encoding: fields.content_encoding,
            framing: BodyFraming::None,
            head_bytes: len,
            websocket: fields.upgrade_websocket,
            websocket_extensions: fields.websocket_extensions,
        };
        if code == 101 {
            self.state = State::Opaque;
            return Ok(Some((len, Http1Event::Upgraded(head))));
        }
        if (100..200).contains(&code) {
            self.interim_len = Some(len);
            return Ok(None);
        }
        head.framing = if self.request_was_head || code == 204 || code == 304 {
            BodyFraming::None
        } else if fields.chunked {
            BodyFraming::Chunked
        } else if fields.transfer_encoding {
            // A non-chunked transfer coding: the body runs to the close (RFC 9112 §6.3).
            BodyFraming::UntilClose
        } else {
            match fields.content_length {
                Some(0) => BodyFraming::None,
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::UntilClose,
            }
        };
        self.enter_body(head.framing);
        Ok(Some((len, Http1Event::Response(head))))
    }

    fn enter_body(&mut self, framing: BodyFraming) {
        self.state = match framing {
            BodyFraming::None => State::End,
            BodyFraming::Length(n) => State::Fixed { remaining: n },
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
    }
}

/// Header values kept from a head.
#[derive(Default)]
struct HeadFields {
    host: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    upgrade_websocket: bool,
    websocket_extensions: Option<String>,
}

impl HeadFields {
    fn collect(headers: &[httparse::Header<'_>]) -> Result<Self, Http1Error> {
        let mut f = HeadFields::default();
        for h in headers {
            let value = || String::from_utf8_lossy(h.value).trim().to_string();
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                f.host = Some(value());
            } else if name.eq_ignore_ascii_case("upgrade") {
                f.upgrade_websocket = value().eq_ignore_ascii_case("websocket");
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                f.websocket_extensions = Some(value());
            } else if name.eq_ignore_ascii_case("content-type") {
                f.content_type = Some(value());
            } else if name.eq_ignore_ascii_case("content-encoding") {
                f.content_encoding = Some(value());
            } else if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(Http1Error::InvalidContentLength)?;
                if f.content_length.is_some_and(|old| old != v) {
                    return Err(Http1Error::InvalidContentLength);
                }
                f.content_length = Some(v);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.transfer_encoding = true;
                // Chunked must be the last coding applied.
                let v = value();
                f.chunked = v
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            }
        }
        Ok(f)
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, Http1Error> {
    let line = line
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(line);
    let digits = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(Http1Error::InvalidChunkSize);
    }
    let mut size: u64 = 0;
    for &b in digits {
        let d = (b as char)
            .to_digit(16)
            .ok_or(Http1Error::InvalidChunkSize)?;
        size = size * 16 + d as u64;
    }
    Ok(size)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a parser over `chunks`, collecting events with body bytes inlined.
    fn run(parser: &mut Http1Parser, chunks: &[&[u8]]) -> Result<Vec<Ev>, Http1Error> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut pos = 0;
            loop {
                let (n, ev) = parser.next(&chunk[pos..])?;
                let ev = match ev {
                    Http1Event::NeedMore => {
                        pos += n;
                        assert_eq!(pos, chunk.len());
                        break;
                    }
                    Http1Event::Body(r) => Ev::Body(chunk[pos..][r].to_vec()),
                    Http1Event::Request(h) => Ev::Req(h.method, h.path, h.framing),
                    Http1Event::Response(h) => Ev::Resp(h.status, h.framing),
                    Http1Event::Upgraded(h) => Ev::Resp(h.status, h.framing),
                    Http1Event::End => Ev::End,
                };
                pos += n;
                // Merge adjacent body pieces so tests are independent of chunking.
                if let (Ev::Body(b), Some(Ev::Body(prev))) = (&ev, out.last_mut()) {
                    prev.extend_from_slice(b);
                } else {
                    out.push(ev);
                }
            }
        }
        Ok(out)
    }

    #[derive(Debug, PartialEq)]
    enum Ev {
        Req(String, String, BodyFraming),
        Resp(u16, BodyFraming),
        Body(Vec<u8>),
        End,
    }

    fn every_split(data: &[u8], kind: MessageKind) -> Vec<Vec<Ev>> {
        (0..=data.len())
            .map(|i| {
                let mut p = Http1Parser::new(kind, 1024);
                run(&mut p, &[&data[..i], &data[i..]]).unwrap()
            })
            .collect()
    }

    #[test]
    fn http1_content_length_request_any_split() {
        let msg = b"POST /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        for evs in every_split(msg, MessageKind::Request) {
            assert_eq!(
                evs,
                vec![
                    Ev::Req("POST".into(), "/v1/x".into(), BodyFraming::Length(5)),
                    Ev::Body(b"hello".to_vec()),
                    Ev::End
                ]
            );
        }
    }

    #[test]
    fn http1_chunked_with_trailers_any_split() {
        let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for evs in every_split(msg, MessageKind::Response) {
            assert_eq!(
                evs,
                vec![
                    Ev::Resp(200, BodyFraming::Chunked),
                    Ev::Body(b"hello world".to_vec()),
                    Ev::End
                ]
            );
        }
    }

    #[test]
    fn http1_interim_and_no_body_responses() {
        let mut p = Http1Parser::new(MessageKind::Response, 1024);
        let evs = run(
            &mut p,
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n\
                HTTP/1.1 304 Not Modified\r\n\r\n"],
        )
        .unwrap();
        assert_eq!(
            evs,
            vec![
                Ev::Resp(204, BodyFraming::None),
                Ev::End,
                Ev::Resp(304, BodyFraming::None),
                Ev::End
            ]
        );
        p.set_request_was_head(true);
        let evs = run(&mut p, &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]).unwrap();
        assert_eq!(evs, vec![Ev::Resp(200, BodyFraming::None), Ev::End]);
    }

    #[test]
    fn http1_until_close_and_keep_alive() {
        let mut p = Http1Parser::new(MessageKind::Response, 1024);
        let evs = run(
            &mut p,
            &[
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 200 OK\r\n\r\nabc",
                b"def",
            ],
        )
        .unwrap();
        assert_eq!(
            evs,
            vec![
                Ev::Resp(200, BodyFraming::Length(2)),
                Ev::Body(b"ok".to_vec()),
                Ev::End,
                Ev::Resp(200, BodyFraming::UntilClose),
                Ev::Body(b"abcdef".to_vec()),
            ]
        );
        assert!(p.finish_at_close());
        assert!(!p.in_message());
    }

    #[test]
    fn http1_errors() {
        let mut p = Http1Parser::new(MessageKind::Request, 1024);
        assert!(matches!(
            p.next(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Err(Http1Error::InvalidContentLength)
        ));
        let mut p = Http1Parser::new(MessageKind::Request, 1024);
        assert!(matches!(
            p.next(b"\x00\x01garbage\r\n\r\n"),
            Err(Http1Error::MalformedHead { .. })
        ));
        let mut p = Http1Parser::new(MessageKind::Response, 1024);
        assert_eq!(
            run(
                &mut p,
                &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
            ),
            Err(Http1Error::InvalidChunkSize)
        );
        // Oversized head, fed in small pieces.
        let mut p = Http1Parser::new(MessageKind::Request, 100);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        let r = big
            .as_bytes()
            .chunks(7)
            .try_for_each(|c| p.next(c).map(|_| ()));
        assert_eq!(r, Err(Http1Error::HeaderTooLarge { limit: 100 }));
    }
}
