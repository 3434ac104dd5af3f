//! WebSocket framing (RFC 6455) and permessage-deflate (RFC 7692), one direction at a time.
//!
//! Frames arrive cut anywhere; a frame is kept until it is whole (bounded by the message cap),
//! fragments are joined into messages, client masking is undone, and a compressed message is
//! inflated with the direction's own context (kept across messages unless the peer negotiated
//! `*_no_context_takeover`). Control frames may sit between fragments.

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("malformed WebSocket frame: {0}")]
    Malformed(&'static str),
    #[error("WebSocket message over the size cap")]
    TooLarge,
    #[error("permessage-deflate data does not inflate")]
    Inflate,
}

/// The permessage-deflate parameters of a connection, from the server's
/// `Sec-WebSocket-Extensions` answer (None: not negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deflate {
    pub client_no_context_takeover: bool,
    pub server_no_context_takeover: bool,
}

impl Deflate {
    pub fn negotiated(extensions: Option<&str>) -> Option<Deflate> {
        let ext = extensions?.split(',').find(|e| {
            e.split(';')
                .next()
                .is_some_and(|n| n.trim() == "permessage-deflate")
        })?;
        let has = |p: &str| ext.split(';').skip(1).any(|x| x.trim() == p);
        Some(Deflate {
            client_no_context_takeover: has("client_no_context_takeover"),
            server_no_context_takeover: has("server_no_context_takeover"),
        })
    }
}

/// One direction's inflate context.
pub struct Inflater {
    z: flate2::Decompress,
    reset_each_message: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Inflater {
    pub fn new(reset_each_message: bool) -> Self {
        Self {
            z: flate2::Decompress::new(false),
            reset_each_message,
        }
    }

    /// Inflates one message's payload (RFC 7692 §7.2.2: the trailing `00 00 ff ff` was cut).
    fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, WsError> {
        let mut input = Vec::with_capacity(data.len() + 4);
        input.extend_from_slice(data);
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            out.reserve(32 * 1024);
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            self.z
                .decompress_vec(&input[pos..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(|_| WsError::Inflate)?;
            pos += (self.z.total_in() - before_in) as usize;
            if out.len() > max {
                return Err(WsError::TooLarge);
            }
            let stuck = self.z.total_in() == before_in && self.z.total_out() == before_out;
            if (pos >= input.len() && out.len() < out.capacity()) || stuck {
                break;
            }
        }
        if self.reset_each_message {
            self.z.reset(false);
        }
        Ok(out)
    }
}

/// One direction of a WebSocket connection.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// The message being assembled from fragments, and how it started.
    message: Vec<u8>,
    started: Option<(Opcode, bool)>,
    /// Bytes on the wire of the message being assembled (frame headers included).
    wire: u64,
    max_message: usize,
}

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            message: Vec::new(),
            started: None,
            wire: 0,
            max_message,
        }
    }

    /// Feeds bytes; calls `on_message` with each whole (inflated) message and the bytes its
    /// frames took on the wire. A close frame ends the direction (`Ok(true)`).
    pub fn feed(
        &mut self,
        data: &[u8],
        inflater: Option<&mut Inflater>,
        on_message: &mut dyn FnMut(Opcode, &[u8], u64),
    ) -> Result<bool, WsError> {
        self.buf.extend_from_slice(data);
        let mut inflater = inflater;
        let mut pos = 0;
        let result = loop {
            match self.frame(pos) {
                Ok(None) => break Ok(false),
                Err(e) => break Err(e),
                Ok(Some((header, payload))) => {
                    let frame_bytes = (payload.end - pos) as u64;
                    pos = payload.end;
                    let mut body = self.buf[payload].to_vec();
                    if let Some(key) = header.mask {
                        for (i, b) in body.iter_mut().enumerate() {
                            *b ^= key[i % 4];
                        }
                    }
                    match header.opcode {
                        0x8 => break Ok(true),
                        0x9 | 0xA => continue,
                        0x3..=0x7 | 0xB..=0xF => break Err(WsError::Malformed("reserved opcode")),
                        op => {
                            let starts = op != 0x0;
                            match (&self.started, starts) {
                                (None, false) => {
                                    break Err(WsError::Malformed(
                                        "continuation without a message",
                                    ));
                                }
                                (Some(_), true) => {
                                    break Err(WsError::Malformed(
                                        "new message inside a fragmented one",
                                    ));
                                }
                                (None, true) => {
                                    let kind = if op == 0x1 {
                                        Opcode::Text
                                    } else {
                                        Opcode::Binary
                                    };
                                    self.started = Some((kind, header.rsv1));
                                }
                                (Some(_), false) => {}
                            }
                            if self.message.len() + body.len() > self.max_message {
                                break Err(WsError::TooLarge);
                            }
                            self.message.extend_from_slice(&body);
                            self.wire += frame_bytes;
                            if header.fin {
                                let wire = std::mem::take(&mut self.wire);
                                let (kind, compressed) = self.started.take().expect("started");
                                let message = std::mem::take(&mut self.message);
                                if compressed {
                                    let Some(z) = inflater.as_deref_mut() else {
                                        break Err(WsError::Malformed(
                                            "RSV1 without permessage-deflate",
                                        ));
                                    };
                                    match z.inflate(&message, self.max_message) {
                                        Ok(plain) => on_message(kind, &plain, wire),
                                        Err(e) => break Err(e),
                                    }
                                } else {
                                    on_message(kind, &message, wire);
                                }
                            }
                        }
                    }
                }
            }
        };
        self.buf.drain(..pos.min(self.buf.len()));
        result
    }

    /// The frame starting at `pos` of the buffer, if it is whole.
    fn frame(&self, pos: usize) -> Result<Option<(FrameHeader, std::ops::Range<usize>)>, WsError> {
        let b = &self.buf[pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let opcode = b[0] & 0x0f;
        if b[0] & 0x30 != 0 {
            return Err(WsError::Malformed("RSV2/RSV3 set"));
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10)
            }
            n => (n as u64, 2),
        };
        if opcode >= 0x8 && (len > 125 || b[0] & 0x80 == 0) {
            return Err(WsError::Malformed("bad control frame"));
        }
        if len > self.max_message as u64 {
            return Err(WsError::TooLarge);
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        let end = at + len as usize;
        if b.len() < end {
            return Ok(None);
        }
        Ok(Some((
            FrameHeader {
                fin: b[0] & 0x80 != 0,
                rsv1: b[0] & 0x40 != 0,
                opcode,
                mask,
            },
            pos + at..pos + end,
        )))
    }
}

struct FrameHeader {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
}

/// Encodes one frame (tests, and the fuzz corpus).
pub fn frame(opcode: u8, fin: bool, rsv1: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend(key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// permessage-deflate compression of one message with a shared context.
    fn deflate(z: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        z.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn messages(r: &mut FrameReader, z: Option<&mut Inflater>, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        r.feed(bytes, z, &mut |_, m, _| got.push(m.to_vec()))
            .unwrap();
        got
    }

    #[test]
    fn masked_fragmented_messages_with_control_frames_between() {
        let mut wire = frame(0x1, false, false, Some([1, 2, 3, 4]), b"{\"type\":");
        wire.extend(frame(0x9, true, false, Some([5, 6, 7, 8]), b"ping"));
        wire.extend(frame(
            0x0,
            true,
            false,
            Some([9, 9, 9, 9]),
            b"\"response.create\"}",
        ));
        wire.extend(frame(0x1, true, false, None, &[b'x'; 300]));
        for cut in [1, 2, 3, 7, 13, wire.len() - 1] {
            let mut r = FrameReader::new(1 << 20);
            let mut got = messages(&mut r, None, &wire[..cut]);
            got.extend(messages(&mut r, None, &wire[cut..]));
            assert_eq!(
                got,
                vec![b"{\"type\":\"response.create\"}".to_vec(), vec![b'x'; 300]],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn deflate_with_and_without_context_takeover() {
        for reset in [false, true] {
            let mut z = Compress::new(Compression::default(), false);
            let mut wire = Vec::new();
            for text in [&b"hello hello hello"[..], b"hello again, hello"] {
                wire.extend(frame(0x1, true, true, None, &deflate(&mut z, text)));
                if reset {
                    z.reset();
                }
            }
            let mut r = FrameReader::new(1 << 20);
            let mut inflater = Inflater::new(reset);
            let got = messages(&mut r, Some(&mut inflater), &wire);
            assert_eq!(
                got,
                vec![
                    b"hello hello hello".to_vec(),
                    b"hello again, hello".to_vec()
                ]
            );
        }
    }

    #[test]
    fn garbage_and_oversize_are_errors_not_panics() {
        let mut r = FrameReader::new(64);
        assert!(
            r.feed(
                &frame(0x1, true, false, None, &[0; 100]),
                None,
                &mut |_, _, _| {}
            )
            .is_err()
        );
        let mut r = FrameReader::new(64);
        assert!(r.feed(&[0x83, 0x00], None, &mut |_, _, _| {}).is_err());
        let mut r = FrameReader::new(64);
        assert!(
            r.feed(
                &frame(0x0, true, false, None, b"x"),
                None,
                &mut |_, _, _| {}
            )
            .is_err()
        );
        let mut r = FrameReader::new(64);
        let bad = frame(0x1, true, true, None, b"\xff\xff\xff\xff");
        assert!(
            r.feed(&bad, Some(&mut Inflater::new(false)), &mut |_, _, _| {})
                .is_err()
        );
        let mut r = FrameReader::new(1 << 20);
        assert!(
            r.feed(&frame(0x8, true, false, None, b""), None, &mut |_, _, _| {})
                .unwrap()
        );
        for seed in 0..200u32 {
            let bytes: Vec<u8> = (0..64)
                .map(|i| (seed.wrapping_mul(2654435761) >> (i % 24)) as u8)
                .collect();
            let mut r = FrameReader::new(256);
            let _ = r.feed(&bytes, Some(&mut Inflater::new(false)), &mut |_, _, _| {});
        }
    }

    #[test]
    fn negotiation_from_the_servers_answer() {
        assert_eq!(Deflate::negotiated(None), None);
        assert_eq!(Deflate::negotiated(Some("x-other")), None);
        assert_eq!(
            Deflate::negotiated(Some("permessage-deflate; client_no_context_takeover")),
            Some(Deflate {
                client_no_context_takeover: true,
                server_no_context_takeover: false
            })
        );
    }
}
