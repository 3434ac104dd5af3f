//! HTTP/2 framing (RFC 9113 §4–6): the client preface, frame headers, padding and the header
//! block fragments of HEADERS / PUSH_PROMISE / CONTINUATION. HPACK is decoded by the caller
//! (one decoder per connection and direction, see `capture::http2`).
//!
//! Push-driven like the other parsers: bytes arrive cut anywhere; a frame is handed on once it
//! is whole. A frame is at most 16 MiB (the protocol's 24-bit length), so that is the most one
//! direction ever buffers.

use thiserror::Error;

/// What a client sends before its first frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// `RST_STREAM` / `GOAWAY` error code: the stream was refused before any processing, so the
/// client retries it elsewhere (RFC 9113 §8.7).
pub const REFUSED_STREAM: u32 = 0x7;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Http2Error {
    #[error("the connection does not start with the HTTP/2 client preface")]
    BadPreface,
    #[error("{kind} frame on stream {stream_id} has a malformed payload ({len} bytes)")]
    BadPayload {
        kind: &'static str,
        stream_id: u32,
        len: usize,
    },
}

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Splits one direction of a connection into frames.
#[derive(Debug)]
pub struct FrameReader {
    /// Preface bytes still expected (24 for the client's direction, 0 for the server's).
    preface_left: usize,
    buf: Vec<u8>,
}

impl FrameReader {
    /// The client → server direction (starts with the preface).
    pub fn client() -> Self {
        Self {
            preface_left: PREFACE.len(),
            buf: Vec::new(),
        }
    }

    /// The server → client direction.
    pub fn server() -> Self {
        Self {
            preface_left: 0,
            buf: Vec::new(),
        }
    }

    /// A frame (or the preface) is partly buffered.
    pub fn in_frame(&self) -> bool {
        !self.buf.is_empty() || (self.preface_left > 0 && self.preface_left < PREFACE.len())
    }

    /// Feeds bytes; calls `on_frame` for each whole frame, in order. An error from the
    /// callback stops the feed and is returned.
    pub fn feed<E: From<Http2Error>>(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(FrameHeader, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.preface_left > 0 {
            let done = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(data.len());
            if data[..n] != PREFACE[done..done + n] {
                return Err(Http2Error::BadPreface.into());
            }
            self.preface_left -= n;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        // Whole frames straight from `data` when nothing is buffered; otherwise through `buf`.
        let owned;
        let input: &[u8] = if self.buf.is_empty() {
            data
        } else {
            self.buf.extend_from_slice(data);
            owned = std::mem::take(&mut self.buf);
            &owned
        };
        let mut pos = 0;
        while let Some(header) = parse_header(&input[pos..]) {
            let end = pos + FRAME_HEADER_LEN + header.len;
            if end > input.len() {
                break;
            }
            // On an error the rest is dropped: the caller gives the direction up.
            on_frame(header, &input[pos + FRAME_HEADER_LEN..end])?;
            pos = end;
        }
        self.buf = input[pos..].to_vec();
        Ok(())
    }

    pub fn reset(&mut self) {
        self.buf = Vec::new();
        self.preface_left = 0;
    }
}

/// Encodes one frame. The daemon only reads frames; this serves its tests, fuzz seeds and
/// benchmarks.
pub fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    v.extend_from_slice(&stream_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The frame header at the start of `b`, if `b` holds one.
pub fn parse_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER_LEN {
        return None;
    }
    Some(FrameHeader {
        len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    })
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        DATA => "DATA",
        HEADERS => "HEADERS",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PUSH_PROMISE => "PUSH_PROMISE",
        GOAWAY => "GOAWAY",
        CONTINUATION => "CONTINUATION",
        _ => "frame",
    }
}

fn bad(h: &FrameHeader) -> Http2Error {
    Http2Error::BadPayload {
        kind: kind_name(h.kind),
        stream_id: h.stream_id,
        len: h.len,
    }
}

/// The payload of a DATA, HEADERS or PUSH_PROMISE frame without its padding.
pub fn unpadded<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], Http2Error> {
    if !h.has(FLAG_PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or_else(|| bad(h))?;
    let keep = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or_else(|| bad(h))?;
    Ok(&rest[..keep])
}

/// The header block fragment of a HEADERS frame (padding and priority removed).
pub fn headers_fragment<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], Http2Error> {
    let body = unpadded(h, payload)?;
    if h.has(FLAG_PRIORITY) {
        body.get(5..).ok_or_else(|| bad(h))
    } else {
        Ok(body)
    }
}

/// The header block fragment of a PUSH_PROMISE frame (after the promised stream id).
pub fn push_promise_fragment<'a>(
    h: &FrameHeader,
    payload: &'a [u8],
) -> Result<&'a [u8], Http2Error> {
    unpadded(h, payload)?.get(4..).ok_or_else(|| bad(h))
}

/// The error code of a RST_STREAM frame.
pub fn rst_stream_code(h: &FrameHeader, payload: &[u8]) -> Result<u32, Http2Error> {
    let b: [u8; 4] = payload.try_into().map_err(|_| bad(h))?;
    Ok(u32::from_be_bytes(b))
}

/// The last stream id a GOAWAY frame says the sender processed.
pub fn goaway_last_stream(h: &FrameHeader, payload: &[u8]) -> Result<u32, Http2Error> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(h))?;
    Ok(u32::from_be_bytes(b) & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(reader: &mut FrameReader, bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut out = Vec::new();
        reader
            .feed::<Http2Error>(bytes, |h, p| {
                out.push((h, p.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn frames_cut_at_every_byte_come_out_whole_and_in_order() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        wire.extend(frame(HEADERS, FLAG_END_HEADERS, 1, b"hdr"));
        wire.extend(frame(DATA, FLAG_END_STREAM, 1, &[7u8; 300]));
        for cut in 0..wire.len() {
            let mut r = FrameReader::client();
            let mut got = collect(&mut r, &wire[..cut]);
            got.extend(collect(&mut r, &wire[cut..]));
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[1].0.stream_id, 1);
            assert_eq!(got[1].1, b"hdr");
            assert_eq!(got[2].1.len(), 300);
            assert!(got[2].0.has(FLAG_END_STREAM));
            assert!(!r.in_frame());
        }
    }

    #[test]
    fn a_wrong_preface_is_an_error() {
        let mut r = FrameReader::client();
        let e = r.feed::<Http2Error>(b"PRI * HTTP/2.0\r\n\r\nXX", |_, _| Ok(()));
        assert_eq!(e, Err(Http2Error::BadPreface));
    }

    #[test]
    fn padding_and_priority_are_removed_and_bad_lengths_rejected() {
        let h = FrameHeader {
            len: 0,
            kind: HEADERS,
            flags: FLAG_PADDED | FLAG_PRIORITY,
            stream_id: 3,
        };
        // pad length 2, 5 priority bytes, fragment "ab", 2 padding bytes.
        let p = [2, 0, 0, 0, 1, 16, b'a', b'b', 0, 0];
        assert_eq!(headers_fragment(&h, &p).unwrap(), b"ab");
        assert!(headers_fragment(&h, &[9, 1, 2]).is_err());
        assert!(headers_fragment(&h, &[]).is_err());
        let d = FrameHeader {
            kind: DATA,
            flags: FLAG_PADDED,
            ..h
        };
        assert_eq!(unpadded(&d, &[1, b'x', 0]).unwrap(), b"x");
        let r = FrameHeader {
            kind: RST_STREAM,
            flags: 0,
            ..h
        };
        assert_eq!(rst_stream_code(&r, &[0, 0, 0, 7]).unwrap(), REFUSED_STREAM);
        assert!(rst_stream_code(&r, &[0, 7]).is_err());
    }
}
