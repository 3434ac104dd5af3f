//! Incremental Server-Sent Events parser (the WHATWG `text/event-stream` format).
//!
//! Shape: bytes go in at any boundary (a line, even a `\r\n` pair, may be split across TLS
//! records); complete events come out through a callback that borrows the parser's buffers,
//! so one event's data is the only thing held in memory, and it is bounded: an event larger
//! than `max_event_bytes` is dropped and counted rather than buffered.
//!
//! Lines end at `\n`, `\r\n` or `\r`. `event:` sets the type, `data:` lines are joined with
//! `\n`, `:` lines are comments, `id:`/`retry:` are ignored. A stream cut before the final
//! blank line still dispatches its last event in [`SseParser::finish`]: losing a usage-bearing
//! final event to a missing newline would cost more than it protects.

/// One dispatched event. `data` is raw bytes (usually JSON, or `[DONE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub event: Option<&'a str>,
    pub data: &'a [u8],
}

#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    line_overflow: bool,
    after_cr: bool,
    at_start: bool,
    event: String,
    has_event: bool,
    data: Vec<u8>,
    has_data: bool,
    event_overflow: bool,
    max_event_bytes: usize,
    /// Events dropped because they exceeded `max_event_bytes`.
    pub oversized_events: u64,
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            at_start: true,
            event: String::new(),
            has_event: false,
            data: Vec::new(),
            has_data: false,
            event_overflow: false,
            max_event_bytes,
            oversized_events: 0,
        }
    }

    /// Feeds bytes; calls `on_event` for every event completed by them.
    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        let mut i = 0;
        while i < input.len() {
            if self.after_cr {
                self.after_cr = false;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let rest = &input[i..];
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.push_line_bytes(rest);
                    break;
                }
                Some(j) => {
                    self.after_cr = rest[j] == b'\r';
                    i += j + 1;
                    if self.line.is_empty() && !self.line_overflow {
                        // The whole line is in this input: no copy into the line buffer.
                        if j > self.max_event_bytes {
                            self.line_overflow = true;
                            self.end_line(on_event);
                        } else {
                            self.handle_line(&rest[..j], on_event);
                        }
                    } else {
                        self.push_line_bytes(&rest[..j]);
                        self.end_line(on_event);
                    }
                }
            }
        }
    }

    /// The stream ended: dispatch a pending event even without its closing blank line.
    pub fn finish(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() || self.line_overflow {
            self.end_line(on_event);
        }
        self.end_line(on_event);
        self.after_cr = false;
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.max_event_bytes {
            self.line_overflow = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        let line = std::mem::take(&mut self.line);
        if std::mem::replace(&mut self.line_overflow, false) {
            self.at_start = false;
            self.event_overflow = true;
        } else {
            self.handle_line(&line, on_event);
        }
        let mut line = line;
        line.clear();
        self.line = line;
    }

    fn handle_line(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        let mut line = line;
        if self.at_start
            && let Some(rest) = line.strip_prefix("\u{feff}".as_bytes())
        {
            line = rest;
        }
        self.at_start = false;
        if line.is_empty() {
            self.dispatch(on_event);
        } else if line[0] != b':' {
            let (field, value) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => {
                    self.event.clear();
                    self.event.push_str(&String::from_utf8_lossy(value));
                    self.has_event = true;
                }
                b"data" => {
                    if self.data.len() + value.len() + 1 > self.max_event_bytes {
                        self.event_overflow = true;
                        self.data = Vec::new();
                    } else if !self.event_overflow {
                        self.data.extend_from_slice(value);
                        self.data.push(b'\n');
                    }
                    self.has_data = true;
                }
                _ => {}
            }
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.event_overflow {
            self.oversized_events += 1;
        } else if self.has_data {
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            on_event(SseEvent {
                event: self.has_event.then_some(self.event.as_str()),
                data,
            });
        }
        self.data.clear();
        self.has_data = false;
        self.event.clear();
        self.has_event = false;
        self.event_overflow = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        let mut cb = |e: SseEvent<'_>| {
            out.push((
                e.event.map(str::to_string),
                String::from_utf8(e.data.to_vec()).unwrap(),
            ))
        };
        for c in chunks {
            parser.feed(c, &mut cb);
        }
        parser.finish(&mut cb);
        out
    }

    #[test]
    fn sse_line_endings_and_fields_at_every_split() {
        let stream = b"\xef\xbb\xbf: comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n\
            data: x\rdata: y\r\rid: 7\nretry: 10\ndata\n\nevent: empty\n\ndata: [DONE]\n\n";
        let expected = vec![
            (Some("a".to_string()), "one\ntwo".to_string()),
            (None, "x\ny".to_string()),
            (None, "".to_string()),
            (None, "[DONE]".to_string()),
        ];
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let mut p = SseParser::new(1024);
                let got = collect(&mut p, &[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(got, expected, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn sse_unterminated_final_event_and_oversize() {
        let mut p = SseParser::new(1024);
        assert_eq!(
            collect(&mut p, &[b"data: last"]),
            vec![(None, "last".to_string())]
        );
        let mut p = SseParser::new(16);
        let big = format!("data: {}\n\ndata: ok\n\n", "z".repeat(40));
        assert_eq!(
            collect(&mut p, &[big.as_bytes()]),
            vec![(None, "ok".to_string())]
        );
        assert_eq!(p.oversized_events, 1);
    }
}
