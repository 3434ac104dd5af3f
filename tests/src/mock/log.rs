//! The request log: one JSON line per request served, written and flushed
//! when the response is finished. It never contains prompt or completion text.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::usage::Usage;

/// One log line. Field meanings are documented in `tests/clients/README.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogRecord {
    /// Per-server request counter, 1-based, in arrival order.
    pub seq: u64,
    /// Per-server connection counter, 1-based.
    pub conn: u64,
    /// Wire protocol of the connection (`http/1.1`).
    pub protocol: String,
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// `chat.completions`, `messages`, `responses`, `completions`, `embeddings`,
    /// `generate_content`, `ollama.chat`, `ollama.generate`, or null for unknown paths.
    pub api: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    /// OpenAI: `stream_options.include_usage`. Anthropic: true (its streams
    /// always carry usage).
    pub include_usage: bool,
    pub status: u16,
    /// The request's `x-test-tag` header.
    pub tag: Option<String>,
    /// Bytes of the (de-chunked) request body.
    pub request_bytes: u64,
    /// Total bytes of the request received on the wire: head, body, chunk framing.
    pub request_wire_bytes: u64,
    /// Bytes of the response written on the wire (head and body, as encoded).
    pub response_wire_bytes: u64,
    /// The response body was gzip-encoded.
    pub gzip: bool,
    /// The response body was zstd-encoded.
    #[serde(default)]
    pub zstd: bool,
    /// The response was cut short and the connection closed.
    pub truncated: bool,
    /// OTel-normalised usage of the call, as the provider's fields carry it
    /// (null for errors).
    pub usage: Option<Usage>,
    /// Whether the response carried `usage` to the client.
    pub usage_sent: bool,
    /// Anthropic truncated streams: what `message_start` carried before the cut.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage_partial: Option<Usage>,
    /// WebSocket calls: whether permessage-deflate was negotiated on the socket.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub websocket_deflate: Option<bool>,
    /// Unix time in milliseconds when the response finished.
    pub ts_ms: u64,
    /// Only a request's head (and part of its body) arrived before the connection ended or
    /// timed out: no request was served. `request_wire_bytes` says how much came.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub incomplete: bool,
}

/// Where log lines go (nowhere without `--log`).
pub struct LogSink {
    file: Option<Mutex<File>>,
}

impl LogSink {
    pub fn none() -> Self {
        LogSink { file: None }
    }

    pub fn open(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogSink {
            file: Some(Mutex::new(f)),
        })
    }

    pub fn write(&self, rec: &LogRecord) {
        let Some(f) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let mut guard = match f.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = guard.write_all(&line).and_then(|_| guard.flush()) {
            eprintln!("mock-llm: writing the log failed: {e}");
        }
    }
}

/// Reads a log file into records (for tests).
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec = serde_json::from_str(line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        out.push(rec);
    }
    Ok(out)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
