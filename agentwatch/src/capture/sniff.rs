//! What the first bytes of a direction look like: a role at a connection's start, a message
//! start for an HTTP/1 direction resynchronising after loss.

/// What the first bytes of a direction look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sniff {
    NeedMore,
    RequestLine,
    StatusLine,
    Http2Preface,
    Other,
}

pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

pub(super) fn sniff(data: &[u8]) -> Sniff {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http2Preface
        } else {
            Sniff::NeedMore
        };
    }
    const STATUS: &[u8] = b"HTTP/1.";
    let n = data.len().min(STATUS.len());
    if data[..n] == STATUS[..n] {
        return if n == STATUS.len() {
            Sniff::StatusLine
        } else {
            Sniff::NeedMore
        };
    }
    // A request line: an upper-case method token (≤ 16 bytes) then a space.
    for (i, &b) in data.iter().enumerate().take(17) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => {}
            b' ' if i > 0 => return Sniff::RequestLine,
            _ => return Sniff::Other,
        }
    }
    if data.len() <= 16 {
        Sniff::NeedMore
    } else {
        Sniff::Other
    }
}

/// Whether the first plaintext written on a new connection is the start of an HTTP/1 request
/// or the HTTP/2 preface (None: too short to tell). Probes at located functions are checked
/// with it: a wrong location would not yield request lines.
pub fn starts_http_request(data: &[u8]) -> Option<bool> {
    match sniff(data) {
        Sniff::RequestLine | Sniff::Http2Preface => Some(true),
        Sniff::NeedMore => None,
        Sniff::StatusLine | Sniff::Other => Some(false),
    }
}
