//! Streaming `Content-Encoding` decoding: identity, gzip, deflate (zlib, with a raw-deflate
//! fallback), brotli and zstd.
//!
//! Shape: the write-side decoders of `flate2`, `brotli` and `zstd` are fed compressed bytes as they
//! arrive and write plain bytes into an inner `Vec` that [`Decoder::feed`] drains after every
//! step. That lets an SSE stream be decoded event by event instead of being buffered whole.
//! Input is fed in small steps so that a high-ratio ("bomb") block cannot inflate one TLS
//! record into more than a few MiB before the caller sees the output and applies its limits.
//! zstd can expand far more per input byte (an RLE block of 4 bytes is 128 KiB), so callers
//! hand it smaller pieces ([`Decoder::max_piece`]), and its window is capped at 8 MiB: a frame
//! asking for more is refused, not allocated.

use std::io::Write;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Compressed input is fed at most this many bytes at a time.
const STEP: usize = 1024;

/// Largest zstd window accepted (log2): 8 MiB. Servers compressing responses use far less.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Largest zstd input piece handed to [`Decoder::feed`] by callers that bound memory: at most
/// ~4 MiB of output even for RLE blocks.
const ZSTD_PIECE: usize = 128;

/// Largest brotli output of one [`STEP`] of input. A brotli meta-block can repeat a byte
/// 16 MiB times for a few bits (211 bytes decode to 256 MiB): past deflate's worst ratio
/// (1032:1) the stream is refused as a bomb instead of being inflated into memory.
const BROTLI_STEP_OUTPUT_MAX: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported content encoding {encoding:?}")]
    Unsupported { encoding: String },
    #[error("corrupt {encoding} stream: {reason}")]
    Corrupt {
        encoding: &'static str,
        reason: String,
    },
    #[error("{encoding} stream truncated")]
    Truncated { encoding: &'static str },
}

/// A content coding named by a `Content-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl ContentEncoding {
    /// Parses a `Content-Encoding` value. A list with more than one real coding is refused
    /// (no LLM API stacks codings; supporting it would only widen the attack surface).
    pub fn from_header(value: Option<&str>) -> Result<Self, DecodeError> {
        let Some(value) = value else {
            return Ok(Self::Identity);
        };
        let mut found = Self::Identity;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let coding = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Self::Gzip,
                "deflate" => Self::Deflate,
                "br" => Self::Brotli,
                "zstd" => Self::Zstd,
                _ => {
                    return Err(DecodeError::Unsupported {
                        encoding: value.to_string(),
                    });
                }
            };
            if found != Self::Identity {
                return Err(DecodeError::Unsupported {
                    encoding: value.to_string(),
                });
            }
            found = coding;
        }
        Ok(found)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Gzip => "gzip",
            Self::Deflate => "deflate",
            Self::Brotli => "br",
            Self::Zstd => "zstd",
        }
    }
}

enum Inner {
    Identity,
    Gzip(GzDecoder<Vec<u8>>),
    /// `deflate` is zlib-wrapped by the spec, but some servers send raw deflate: the first two
    /// bytes decide.
    DeflateSniff(Vec<u8>),
    Zlib(ZlibDecoder<Vec<u8>>),
    RawDeflate(DeflateDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
    /// Concatenated frames are decoded one after the other; the body may end only between
    /// frames.
    Zstd(Box<zstd::stream::write::Decoder<'static, Vec<u8>>>),
    /// Decoder set-up failed (out of memory); reported at the first byte.
    ZstdUnavailable,
    /// The stream ended (gzip/zlib/deflate trailer seen); later bytes are ignored.
    Ended,
}

/// An incremental content decoder.
pub struct Decoder {
    encoding: ContentEncoding,
    inner: Inner,
    /// Compressed bytes fed in total (0 means an empty body, which is not an error).
    fed: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("encoding", &self.encoding)
            .field("fed", &self.fed)
            .finish()
    }
}

impl Decoder {
    pub fn new(encoding: ContentEncoding) -> Self {
        let inner = match encoding {
            ContentEncoding::Identity => Inner::Identity,
            ContentEncoding::Gzip => Inner::Gzip(GzDecoder::new(Vec::new())),
            ContentEncoding::Deflate => Inner::DeflateSniff(Vec::new()),
            ContentEncoding::Brotli => Inner::Brotli(Box::new(brotli::DecompressorWriter::new(
                Capped::default(),
                4096,
            ))),
            ContentEncoding::Zstd => match zstd::stream::write::Decoder::new(Vec::new()) {
                Ok(mut d) => {
                    match d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                        ZSTD_WINDOW_LOG_MAX,
                    )) {
                        Ok(()) => Inner::Zstd(Box::new(d)),
                        Err(_) => Inner::ZstdUnavailable,
                    }
                }
                Err(_) => Inner::ZstdUnavailable,
            },
        };
        Self {
            encoding,
            inner,
            fed: 0,
        }
    }

    pub fn encoding(&self) -> ContentEncoding {
        self.encoding
    }

    /// The largest input piece a caller bounding memory should hand to [`Decoder::feed`].
    pub fn max_piece(&self) -> usize {
        match self.encoding {
            ContentEncoding::Zstd => ZSTD_PIECE,
            _ => usize::MAX,
        }
    }

    /// Decodes `input`, appending plain bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        // A stream's first 7 bits 0010001 announce a large-window brotli stream (windows up to
        // 1 GiB, which the decoder allocates: a 256 MiB allocation for a few bytes, found by
        // fuzzing). HTTP's `br` content coding (RFC 7932) never uses it: refused.
        if self.fed == 0
            && matches!(self.inner, Inner::Brotli(_))
            && input.first().is_some_and(|b| b & 0x7f == 0x11)
        {
            self.inner = Inner::Ended;
            self.fed = input.len() as u64;
            return Err(DecodeError::Corrupt {
                encoding: "br",
                reason: "large-window brotli, not an HTTP content coding".into(),
            });
        }
        self.fed += input.len() as u64;
        if let Inner::Identity = self.inner {
            out.extend_from_slice(input);
            return Ok(());
        }
        let mut input = input;
        if let Inner::DeflateSniff(head) = &mut self.inner {
            let need = 2 - head.len();
            let take = need.min(input.len());
            head.extend_from_slice(&input[..take]);
            input = &input[take..];
            if head.len() < 2 {
                return Ok(());
            }
            let head = std::mem::take(head);
            let (cmf, flg) = (head[0], head[1]);
            let zlib = cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
            self.inner = if zlib {
                Inner::Zlib(ZlibDecoder::new(Vec::new()))
            } else {
                Inner::RawDeflate(DeflateDecoder::new(Vec::new()))
            };
            self.write_steps(&head, out)?;
        }
        self.write_steps(input, out)
    }

    fn write_steps(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        for mut step in input.chunks(STEP) {
            while !step.is_empty() {
                let written = match &mut self.inner {
                    Inner::Gzip(d) => write_drain(d, step, out),
                    Inner::Zlib(d) => write_drain(d, step, out),
                    Inner::RawDeflate(d) => write_drain(d, step, out),
                    Inner::Brotli(d) => write_drain(d.as_mut(), step, out),
                    Inner::Zstd(d) => write_drain(d.as_mut(), step, out),
                    Inner::ZstdUnavailable => {
                        return Err(DecodeError::Corrupt {
                            encoding: "zstd",
                            reason: "decoder unavailable".into(),
                        });
                    }
                    Inner::Ended => return Ok(()),
                    Inner::Identity | Inner::DeflateSniff(_) => unreachable!("handled in feed"),
                };
                match written {
                    Ok(0) => {
                        // End of the compressed stream; trailing bytes are ignored.
                        self.inner = Inner::Ended;
                        return Ok(());
                    }
                    Ok(n) => step = &step[n..],
                    Err(e) => return Err(self.corrupt(e)),
                }
            }
        }
        // Every decoder holds the bytes decoded by its last write in a buffer of its own until
        // the next write or a flush: a streamed event must come out now, not with the next one
        // (the last event may have no next: a client that has `[DONE]` resets the stream).
        let r = match &mut self.inner {
            Inner::Gzip(d) => flush_drain(d, out),
            Inner::Zlib(d) => flush_drain(d, out),
            Inner::RawDeflate(d) => flush_drain(d, out),
            Inner::Zstd(d) => flush_drain(d.as_mut(), out),
            Inner::Brotli(d) => flush_drain(d.as_mut(), out),
            _ => Ok(()),
        };
        if let Err(e) = r {
            return Err(self.corrupt(e));
        }
        Ok(())
    }

    /// The body ended: flush what remains. A stream cut short is an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let encoding = self.encoding.name();
        if self.fed == 0 {
            return Ok(());
        }
        let result = match &mut self.inner {
            Inner::Identity | Inner::Ended => Ok(()),
            Inner::DeflateSniff(_) => {
                self.inner = Inner::Ended;
                return Err(DecodeError::Truncated { encoding });
            }
            Inner::Gzip(d) => d.try_finish().map(|()| drain(d.get_mut(), out)),
            Inner::Zlib(d) => d.try_finish().map(|()| drain(d.get_mut(), out)),
            Inner::RawDeflate(d) => d.try_finish().map(|()| drain(d.get_mut(), out)),
            Inner::Brotli(d) => {
                let r = d.close();
                drain(&mut d.get_mut().buf, out);
                r
            }
            Inner::Zstd(d) => {
                let r = d.do_finish();
                drain(d.get_mut(), out);
                r
            }
            Inner::ZstdUnavailable => Err(std::io::Error::other("decoder unavailable")),
        };
        self.inner = Inner::Ended;
        result.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DecodeError::Truncated { encoding }
            } else {
                DecodeError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                }
            }
        })
    }

    fn corrupt(&mut self, e: std::io::Error) -> DecodeError {
        self.inner = Inner::Ended;
        DecodeError::Corrupt {
            encoding: self.encoding.name(),
            reason: e.to_string(),
        }
    }
}

trait InnerVec: Write {
    fn vec(&mut self) -> &mut Vec<u8>;
}
impl InnerVec for GzDecoder<Vec<u8>> {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}
impl InnerVec for ZlibDecoder<Vec<u8>> {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}
impl InnerVec for DeflateDecoder<Vec<u8>> {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}
impl InnerVec for zstd::stream::write::Decoder<'static, Vec<u8>> {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}
impl InnerVec for brotli::DecompressorWriter<Capped> {
    fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.get_mut().buf
    }
}

/// The brotli decoder's output: refuses to hold more than [`BROTLI_STEP_OUTPUT_MAX`] bytes
/// between two drains, and anything after a refusal (the decoder's drop flushes).
#[derive(Default)]
struct Capped {
    buf: Vec<u8>,
    refused: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.refused || self.buf.len() + buf.len() > BROTLI_STEP_OUTPUT_MAX {
            self.refused = true;
            return Err(std::io::Error::other("decompression bomb"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_drain<D: InnerVec>(d: &mut D, step: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    let r = d.write(step);
    drain(d.vec(), out);
    r
}

fn flush_drain<D: InnerVec>(d: &mut D, out: &mut Vec<u8>) -> std::io::Result<()> {
    let r = d.flush();
    drain(d.vec(), out);
    r
}

fn drain(inner: &mut Vec<u8>, out: &mut Vec<u8>) {
    out.append(inner);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::Compression;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    /// zstd flushed after every piece, as a server streaming events does.
    pub(crate) fn zstd_flushed(pieces: &[&[u8]]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for p in pieces {
            e.write_all(p).unwrap();
            e.flush().unwrap();
        }
        e.finish().unwrap()
    }

    fn plain() -> Vec<u8> {
        (0..20_000u32)
            .map(|i| format!("line {i} of text\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn decode_in_pieces(
        enc: ContentEncoding,
        data: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut d = Decoder::new(enc);
        let mut out = Vec::new();
        for c in data.chunks(piece) {
            d.feed(c, &mut out)?;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decode_all_encodings_streaming() {
        let p = plain();
        for (enc, data) in [
            (ContentEncoding::Identity, p.clone()),
            (ContentEncoding::Gzip, gzip(&p)),
            (ContentEncoding::Deflate, zlib(&p)),
            (ContentEncoding::Deflate, raw_deflate(&p)),
            (ContentEncoding::Brotli, brotli(&p)),
            (ContentEncoding::Zstd, zstd(&p)),
        ] {
            for piece in [1, 7, 1000, usize::MAX] {
                let piece = piece.min(data.len());
                assert_eq!(decode_in_pieces(enc, &data, piece).unwrap(), p, "{enc:?}");
            }
        }
    }

    /// A server flushing its compressor after each event (nginx `gzip on` over a stream): each
    /// event's plain bytes come out of the very feed that carried it, not with the next one.
    #[test]
    fn decode_each_flushed_event_comes_out_of_its_own_feed() {
        use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
        fn events<W: Write>(mut e: W, take: impl Fn(&mut W) -> Vec<u8>) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            for ev in [&b"data: {\"a\":1}\n\n"[..], b"data: [DONE]\n\n"] {
                e.write_all(ev).unwrap();
                e.flush().unwrap();
                out.push(take(&mut e));
            }
            out
        }
        let cases = [
            (
                ContentEncoding::Gzip,
                events(GzEncoder::new(Vec::new(), Compression::default()), |e| {
                    std::mem::take(e.get_mut())
                }),
            ),
            (
                ContentEncoding::Deflate,
                events(ZlibEncoder::new(Vec::new(), Compression::default()), |e| {
                    std::mem::take(e.get_mut())
                }),
            ),
            (
                ContentEncoding::Deflate,
                events(
                    DeflateEncoder::new(Vec::new(), Compression::default()),
                    |e| std::mem::take(e.get_mut()),
                ),
            ),
        ];
        for (enc, pieces) in cases {
            let mut d = Decoder::new(enc);
            let mut out = Vec::new();
            d.feed(&pieces[0], &mut out).unwrap();
            assert_eq!(out, b"data: {\"a\":1}\n\n", "{enc:?}");
            out.clear();
            d.feed(&pieces[1], &mut out).unwrap();
            assert_eq!(out, b"data: [DONE]\n\n", "{enc:?}");
        }
    }

    /// A large-window brotli stream (first byte 0x11) would make the decoder allocate its
    /// window (256 MiB for this one, from the fuzzer): refused at its first byte, whatever the
    /// cutting; ordinary brotli still decodes.
    #[test]
    fn decode_refuses_large_window_brotli() {
        let input = [
            0x11u8, 0x1c, 0x78, 0x02, 0xe4, 0x19, 0x87, 0x04, 0x83, 0x5f, 0xa3, 0xd0,
        ];
        for piece in [1, 3, input.len()] {
            let r = decode_in_pieces(ContentEncoding::Brotli, &input, piece);
            assert!(
                matches!(r, Err(DecodeError::Corrupt { encoding: "br", .. })),
                "{r:?}"
            );
        }
        let p = plain();
        assert_eq!(
            decode_in_pieces(ContentEncoding::Brotli, &brotli(&p), 7).unwrap(),
            p
        );
    }

    #[test]
    fn decode_output_arrives_before_the_end() {
        let p = plain();
        let gz = gzip(&p);
        let mut d = Decoder::new(ContentEncoding::Gzip);
        let mut out = Vec::new();
        d.feed(&gz[..gz.len() / 2], &mut out).unwrap();
        assert!(!out.is_empty());
    }

    #[test]
    fn decode_errors_are_reported() {
        let p = plain();
        let gz = gzip(&p);
        assert_eq!(
            decode_in_pieces(ContentEncoding::Gzip, &gz[..gz.len() / 2], 100),
            Err(DecodeError::Truncated { encoding: "gzip" })
        );
        assert!(matches!(
            decode_in_pieces(ContentEncoding::Gzip, b"not gzip at all, sorry", 5),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(decode_in_pieces(ContentEncoding::Brotli, b"\xff\xff\xff\xffjunk", 3).is_err());
        let br = brotli(&p);
        assert!(decode_in_pieces(ContentEncoding::Brotli, &br[..br.len() / 2], 50).is_err());
        // Empty bodies are fine.
        assert_eq!(decode_in_pieces(ContentEncoding::Gzip, b"", 1), Ok(vec![]));
    }

    #[test]
    fn decode_header_values() {
        use ContentEncoding::*;
        assert_eq!(ContentEncoding::from_header(None), Ok(Identity));
        assert_eq!(ContentEncoding::from_header(Some("GZIP")), Ok(Gzip));
        assert_eq!(ContentEncoding::from_header(Some("br")), Ok(Brotli));
        assert_eq!(
            ContentEncoding::from_header(Some("identity, deflate")),
            Ok(Deflate)
        );
        assert!(ContentEncoding::from_header(Some("gzip, br")).is_err());
        assert_eq!(ContentEncoding::from_header(Some("zstd")), Ok(Zstd));
        assert!(ContentEncoding::from_header(Some("zstd, gzip")).is_err());
        assert!(ContentEncoding::from_header(Some("compress")).is_err());
    }

    #[test]
    fn decode_zstd_streaming_frames_and_errors() {
        // Each flushed event is decodable as soon as its bytes arrive.
        let events: [&[u8]; 3] = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"];
        let z = zstd_flushed(&events);
        let mut d = Decoder::new(ContentEncoding::Zstd);
        let mut out = Vec::new();
        let first_flush = zstd_flushed(&events[..1]);
        // The bytes of the first flushed block (without the final frame end) give event one.
        d.feed(&z[..first_flush.len() - 3], &mut out).unwrap();
        assert!(out.starts_with(b"data: one\n\n"), "{out:?}");
        // Concatenated frames, any split.
        let two = [zstd(b"hello "), zstd(b"world")].concat();
        for piece in [1, 5, 1000] {
            assert_eq!(
                decode_in_pieces(ContentEncoding::Zstd, &two, piece).unwrap(),
                b"hello world"
            );
        }
        // Truncated and corrupt.
        let p = plain();
        let zp = zstd(&p);
        assert_eq!(
            decode_in_pieces(ContentEncoding::Zstd, &zp[..zp.len() / 2], 100),
            Err(DecodeError::Truncated { encoding: "zstd" })
        );
        assert!(matches!(
            decode_in_pieces(ContentEncoding::Zstd, b"definitely not zstd", 4),
            Err(DecodeError::Corrupt { .. })
        ));
        assert_eq!(decode_in_pieces(ContentEncoding::Zstd, b"", 1), Ok(vec![]));
        // A frame asking for a 1 GiB window is refused.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30))
            .unwrap();
        e.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        e.write_all(&p).unwrap();
        let big_window = e.finish().unwrap();
        assert!(decode_in_pieces(ContentEncoding::Zstd, &big_window, 64).is_err());
    }
}
