//! Wire protocols between the TLS plaintext and the provider parsers.
//!
//! Every parser here is *incremental and push-driven*: the kernel hands us TLS records cut at
//! arbitrary byte boundaries, so nothing may assume that a message, a header block, a chunk-size
//! line, a compressed block or an SSE line arrives in one piece. Each parser keeps only the
//! smallest state it needs (a header block, one line, one SSE event) and hands body bytes on
//! as they arrive, so memory stays bounded and no prompt or completion text is kept longer
//! than needed to read the usage out of it.
//!
//! - [`http1`]: HTTP/1.1 message framing (heads via `httparse`, Content-Length, chunked).
//! - [`decode`]: streaming `Content-Encoding` decoding (gzip, deflate, br).
//! - [`http2`]: HTTP/2 framing (HPACK is decoded per connection in `capture`).
//! - [`sse`]: Server-Sent Events.
//! - [`tls_hello`]: the SNI of a TLS ClientHello.
//! - [`websocket`]: WebSocket frames and permessage-deflate.

pub mod decode;
pub mod http1;
pub mod http2;
pub mod sse;
pub mod tls_hello;
pub mod websocket;
