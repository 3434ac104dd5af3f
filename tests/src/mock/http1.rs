//! The HTTP/1.1 front: keep-alive connections, Content-Length and chunked
//! request bodies, `Expect: 100-continue`, and responses written whole or as
//! chunked streams (one chunk per event, flushed), optionally gzip- or zstd-encoded.
//! Every read and write has a deadline and every loop a bound.

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::app::{self, AppState, Body, Request, Response, TRUNCATE_AFTER_EVENTS};

pub const PROTOCOL: &str = "http/1.1";
/// Largest request head.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
const MAX_HEADERS: usize = 128;
/// How long a kept-alive connection may sit idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the rest of a request may take once its first byte arrived.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REQUESTS_PER_CONN: u32 = 100_000;
const READ_SIZE: usize = 64 * 1024;

#[derive(Debug)]
enum ReadErr {
    /// The peer closed before sending a byte of a new request.
    Closed,
    Io,
    Timeout,
    Bad(&'static str),
    TooLarge,
}

impl From<std::io::Error> for ReadErr {
    fn from(_: std::io::Error) -> Self {
        ReadErr::Io
    }
}

struct Conn<IO> {
    io: IO,
    /// Received bytes not yet consumed.
    buf: Vec<u8>,
    /// Bytes consumed for the request being read.
    consumed: u64,
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

struct Head {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    /// Reads more bytes into the buffer; false on EOF.
    async fn fill(&mut self) -> Result<bool, ReadErr> {
        let mut tmp = vec![0u8; READ_SIZE];
        let n = self.io.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        self.consumed += n as u64;
        self.buf.drain(..n).collect()
    }

    async fn read_head(&mut self) -> Result<Head, ReadErr> {
        // Bounded: each round reads at least one byte or returns, and the
        // buffer may not grow past MAX_HEAD without a complete head.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = Head {
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("").to_string(),
                        minor_version: req.version.unwrap_or(1),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).trim().to_string(),
                                )
                            })
                            .collect(),
                    };
                    self.consume(n);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(ReadErr::TooLarge);
                    }
                }
                Err(_) => return Err(ReadErr::Bad("malformed request head")),
            }
            let first = self.buf.is_empty();
            if !self.fill().await? {
                return Err(if first {
                    ReadErr::Closed
                } else {
                    ReadErr::Bad("truncated head")
                });
            }
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadErr> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(ReadErr::Bad("truncated body"));
            }
        }
        Ok(self.consume(n))
    }

    /// One CRLF-terminated line without the terminator.
    async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, ReadErr> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.consume(i + 1);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(ReadErr::Bad("line too long"));
            }
            if !self.fill().await? {
                return Err(ReadErr::Bad("truncated chunked body"));
            }
        }
    }

    async fn read_body(&mut self, framing: Framing) -> Result<Vec<u8>, ReadErr> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => self.take(n).await,
            Framing::Chunked => {
                let mut body = Vec::new();
                // Bounded: every non-final chunk adds at least one byte to a
                // body capped at MAX_BODY.
                loop {
                    let line = self.read_line(4096).await?;
                    let line = String::from_utf8_lossy(&line);
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_str, 16)
                        .map_err(|_| ReadErr::Bad("bad chunk size"))?;
                    if size == 0 {
                        for _ in 0..MAX_HEADERS {
                            if self.read_line(8192).await?.is_empty() {
                                return Ok(body);
                            }
                        }
                        return Err(ReadErr::Bad("too many trailers"));
                    }
                    if body.len().saturating_add(size) > MAX_BODY {
                        return Err(ReadErr::TooLarge);
                    }
                    let data = self.take(size).await?;
                    body.extend_from_slice(&data);
                    if !self.read_line(2).await?.is_empty() {
                        return Err(ReadErr::Bad("chunk not followed by CRLF"));
                    }
                }
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match timeout(WRITE_TIMEOUT, async {
            self.io.write_all(data).await?;
            self.io.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            )),
        }
    }
}

fn framing(head: &Head) -> Result<Framing, ReadErr> {
    let te: Vec<&str> = head
        .headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    if !te.is_empty() {
        let last = te.join(",");
        let last = last
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        return if last == "chunked" {
            Ok(Framing::Chunked)
        } else {
            Err(ReadErr::Bad("unsupported transfer-encoding"))
        };
    }
    let mut len: Option<usize> = None;
    for (_, v) in head.headers.iter().filter(|(k, _)| k == "content-length") {
        let n: usize = v
            .trim()
            .parse()
            .map_err(|_| ReadErr::Bad("bad content-length"))?;
        if len.is_some_and(|l| l != n) {
            return Err(ReadErr::Bad("conflicting content-length"));
        }
        len = Some(n);
    }
    match len {
        Some(n) if n > MAX_BODY => Err(ReadErr::TooLarge),
        Some(0) | None => Ok(Framing::None),
        Some(n) => Ok(Framing::Length(n)),
    }
}

fn wants_close(head: &Head) -> bool {
    let conn: Vec<String> = head
        .headers
        .iter()
        .filter(|(k, _)| k == "connection")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    if head.minor_version == 0 {
        !conn.iter().any(|t| t == "keep-alive")
    } else {
        conn.iter().any(|t| t == "close")
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

/// An RFC 9110 IMF-fixdate for a Unix time.
pub fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if mo <= 2 { 1 } else { 0 };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{weekday}, {d:02} {month} {y} {h:02}:{m:02}:{s:02} GMT")
}

fn head_bytes(status: u16, headers: &[(String, String)], extra: &[(&str, String)]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    s.push_str(&format!("date: {}\r\n", http_date(app::now_secs())));
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("server: mock-llm\r\n\r\n");
    s.into_bytes()
}

/// A whole body as the response's content coding says (zstd wins over gzip).
pub(super) fn encode_whole(resp: &Response, body: &[u8]) -> Vec<u8> {
    if resp.zstd {
        zstd_all(body)
    } else if resp.gzip {
        gzip_all(body)
    } else {
        body.to_vec()
    }
}

fn gzip_all(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

fn zstd_all(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap_or_default()
}

/// A streaming body encoder, flushed after every event.
pub(super) enum StreamEnc {
    Gzip(GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl StreamEnc {
    pub(super) fn for_response(resp: &Response) -> Option<StreamEnc> {
        if resp.zstd {
            zstd::stream::write::Encoder::new(Vec::new(), 3)
                .ok()
                .map(StreamEnc::Zstd)
        } else if resp.gzip {
            Some(StreamEnc::Gzip(GzEncoder::new(
                Vec::new(),
                Compression::default(),
            )))
        } else {
            None
        }
    }

    /// Encodes and flushes one event; returns the bytes to send.
    pub(super) fn event(&mut self, ev: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            StreamEnc::Gzip(e) => {
                e.write_all(ev)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            StreamEnc::Zstd(e) => {
                e.write_all(ev)?;
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    pub(super) fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            StreamEnc::Gzip(e) => e.finish(),
            StreamEnc::Zstd(e) => e.finish(),
        }
    }
}

/// The `content-encoding` header of a response, if any.
pub(super) fn encoding_headers(resp: &Response) -> Vec<(&'static str, String)> {
    let coding = if resp.zstd {
        "zstd"
    } else if resp.gzip {
        "gzip"
    } else {
        return Vec::new();
    };
    vec![
        ("content-encoding", coding.into()),
        ("vary", "Accept-Encoding".into()),
    ]
}

/// Writes a response. Returns (truncated, bytes written) or an I/O error.
async fn write_response<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<IO>,
    resp: &Response,
    close: bool,
) -> std::io::Result<(bool, u64)> {
    let conn_hdr = if close || resp.truncate {
        "close"
    } else {
        "keep-alive"
    };
    let mut written = 0u64;
    match &resp.body {
        Body::Full(body) => {
            let body = encode_whole(resp, body);
            let mut extra = vec![("content-length", body.len().to_string())];
            extra.extend(encoding_headers(resp));
            extra.push(("connection", conn_hdr.into()));
            let mut out = head_bytes(resp.status, &resp.headers, &extra);
            let body_part = if resp.truncate {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            out.extend_from_slice(body_part);
            conn.write(&out).await?;
            written += out.len() as u64;
            Ok((resp.truncate, written))
        }
        Body::Events(events) => {
            let mut extra = vec![("transfer-encoding", "chunked".to_string())];
            extra.extend(encoding_headers(resp));
            extra.push(("connection", conn_hdr.into()));
            let head = head_bytes(resp.status, &resp.headers, &extra);
            conn.write(&head).await?;
            written += head.len() as u64;
            let cut = TRUNCATE_AFTER_EVENTS.min(events.len().saturating_sub(1));
            let mut enc = StreamEnc::for_response(resp);
            for (i, ev) in events.iter().enumerate() {
                if resp.truncate && i == cut {
                    return Ok((true, written));
                }
                if i > 0 && resp.event_delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(resp.event_delay_ms)).await;
                }
                let data = match enc.as_mut() {
                    Some(e) => e.event(ev)?,
                    None => ev.clone(),
                };
                if data.is_empty() {
                    continue;
                }
                let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                conn.write(&chunk).await?;
                written += chunk.len() as u64;
            }
            let mut tail = Vec::new();
            if let Some(e) = enc {
                let rest = e.finish()?;
                if !rest.is_empty() {
                    tail.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                    tail.extend_from_slice(&rest);
                    tail.extend_from_slice(b"\r\n");
                }
            }
            tail.extend_from_slice(b"0\r\n\r\n");
            conn.write(&tail).await?;
            written += tail.len() as u64;
            Ok((false, written))
        }
    }
}

/// A protocol-level error reply (not logged: no request was served).
async fn write_plain_error<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<IO>,
    status: u16,
    msg: &str,
) {
    let body = format!(
        "{{\"error\":{{\"message\":{},\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}}}",
        super::json::quote(msg)
    );
    let extra = [
        ("content-type", "application/json".to_string()),
        ("content-length", body.len().to_string()),
        ("connection", "close".to_string()),
    ];
    let mut out = head_bytes(status, &[], &extra);
    out.extend_from_slice(body.as_bytes());
    let _ = conn.write(&out).await;
}

/// Serves one connection until it closes, errs, idles out or hits the bound.
pub async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, state: &AppState, conn_id: u64) {
    let mut conn = Conn {
        io,
        buf: Vec::new(),
        consumed: 0,
    };
    for _ in 0..MAX_REQUESTS_PER_CONN {
        conn.consumed = 0;
        // Wait for the first byte of the next request (idle keep-alive).
        if conn.buf.is_empty() {
            match timeout(IDLE_TIMEOUT, conn.fill()).await {
                Ok(Ok(true)) => {}
                _ => break,
            }
        }
        // The head of a request whose body has not arrived (yet): logged as incomplete
        // if the body never does.
        let mut pending: Option<(String, String, Option<String>)> = None;
        let read = timeout(REQUEST_TIMEOUT, async {
            let head = conn.read_head().await?;
            pending = Some((
                head.method.clone(),
                head.target.clone(),
                head.headers
                    .iter()
                    .find(|(k, _)| k == "x-test-tag")
                    .map(|(_, v)| v.clone()),
            ));
            let framing = framing(&head)?;
            let expects = head
                .headers
                .iter()
                .any(|(k, v)| k == "expect" && v.eq_ignore_ascii_case("100-continue"));
            if expects && !matches!(framing, Framing::None) && conn.buf.is_empty() {
                conn.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let body = conn.read_body(framing).await?;
            Ok::<_, ReadErr>((head, body))
        })
        .await
        .unwrap_or(Err(ReadErr::Timeout));
        if read.is_err()
            && let Some((method, target, tag)) = pending.take()
        {
            let wire = conn.consumed + conn.buf.len() as u64;
            state.incomplete(conn_id, PROTOCOL, &method, &target, tag, wire);
        }
        let (head, body) = match read {
            Ok(x) => x,
            Err(ReadErr::Closed) | Err(ReadErr::Io) => break,
            Err(ReadErr::Timeout) => {
                write_plain_error(&mut conn, 408, "Request timed out").await;
                break;
            }
            Err(ReadErr::TooLarge) => {
                write_plain_error(&mut conn, 413, "Request too large").await;
                break;
            }
            Err(ReadErr::Bad(why)) => {
                write_plain_error(&mut conn, 400, why).await;
                break;
            }
        };
        let close = wants_close(&head);
        let req = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
            wire_bytes: conn.consumed,
        };
        if super::websocket::is_upgrade(&req) {
            // The Responses API's WebSocket mode: the connection is the socket's from here.
            let leftover = std::mem::take(&mut conn.buf);
            super::websocket::serve(&mut conn.io, leftover, &req, state, conn_id).await;
            break;
        }
        let resp = app::handle(state, &req, conn_id, PROTOCOL);
        drop(req);
        match write_response(&mut conn, &resp, close).await {
            Ok((truncated, written)) => {
                state.finish(&resp, truncated, written);
                if truncated || close {
                    break;
                }
            }
            Err(_) => {
                // The client went away mid-response: nothing reached it whole.
                state.finish(&resp, true, 0);
                break;
            }
        }
    }
    let _ = timeout(Duration::from_secs(5), conn.io.shutdown()).await;
}
