//! Streaming `Content-Encoding` decoding: identity, gzip, deflate (zlib, with a raw-deflate
//! fallback) and brotli.
//!
//! Shape: the write-side decoders of `flate2` and `brotli` are fed compressed bytes as they
//! arrive and write plain bytes into an inner `Vec` that [`Decoder::feed`] drains after every
//! step. That lets an SSE stream be decoded event by event instead of being buffered whole.
//! Input is fed in small steps so that a high-ratio ("bomb") block cannot inflate one TLS
//! record into more than a few MiB before the caller sees the output and applies its limits.

use std::io::Write;

use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

/// Compressed input is fed at most this many bytes at a time.
const STEP: usize = 1024;

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
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
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
            ContentEncoding::Brotli => {
                Inner::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
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

    /// Decodes `input`, appending plain bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
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
                drain(d.get_mut(), out);
                r
            }
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
impl InnerVec for brotli::DecompressorWriter<Vec<u8>> {
    fn vec(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

fn write_drain<D: InnerVec>(d: &mut D, step: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    let r = d.write(step);
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
        ] {
            for piece in [1, 7, 1000, usize::MAX] {
                let piece = piece.min(data.len());
                assert_eq!(decode_in_pieces(enc, &data, piece).unwrap(), p, "{enc:?}");
            }
        }
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
        assert!(ContentEncoding::from_header(Some("zstd")).is_err());
    }
}
