//! Incremental splitters for the two non-SSE stream framings LLM APIs use: NDJSON (Ollama)
//! and a JSON array sent element by element (Gemini `streamGenerateContent` without
//! `alt=sse`). Like the SSE parser, they take bytes cut at any boundary, hold at most one
//! element (bounded: a larger one is dropped and counted) and hand each complete element to a
//! callback as a data-only [`SseEvent`], so the provider accumulators read every framing alike.

use crate::protocol::sse::SseEvent;

/// Newline-delimited JSON: one element per line (`\n` or `\r\n`); blank lines are skipped.
#[derive(Debug)]
pub struct NdjsonSplitter {
    line: Vec<u8>,
    overflow: bool,
    max_bytes: usize,
    /// Lines dropped because they exceeded `max_bytes`.
    pub oversized_events: u64,
}

impl NdjsonSplitter {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            overflow: false,
            max_bytes,
            oversized_events: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        let mut rest = input;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                None => {
                    self.push(rest);
                    return;
                }
                Some(j) => {
                    if self.line.is_empty() && !self.overflow && j <= self.max_bytes {
                        // The whole line is in this input: no copy.
                        emit(&rest[..j], on_event);
                    } else {
                        self.push(&rest[..j]);
                        self.end_line(on_event);
                    }
                    rest = &rest[j + 1..];
                }
            }
        }
    }

    /// The body ended: a last line without its newline is still an element.
    pub fn finish(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() || self.overflow {
            self.end_line(on_event);
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.max_bytes {
            self.overflow = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if std::mem::take(&mut self.overflow) {
            self.oversized_events += 1;
        } else {
            emit(&self.line, on_event);
        }
        self.line.clear();
    }
}

fn emit(line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        on_event(SseEvent {
            event: None,
            data: line,
        });
    }
}

/// The elements of a streamed JSON array (`[{…},{…}]`, any whitespace and separators), or a
/// lone top-level value (an error object sent instead of an array). Strings and escapes are
/// tracked so brackets inside text do not count. Anything that is not JSON structure at the
/// top level is delivered as one element too, so the reader counts it as malformed.
#[derive(Debug)]
pub struct JsonArraySplitter {
    elem: Vec<u8>,
    overflow: bool,
    /// Nesting depth inside the current element (0: between elements).
    depth: u32,
    in_string: bool,
    escape: bool,
    /// A top-level scalar (or garbage) is being collected.
    scalar: bool,
    /// Inside the outer `[`.
    in_array: bool,
    max_bytes: usize,
    /// Elements dropped because they exceeded `max_bytes`.
    pub oversized_events: u64,
}

impl JsonArraySplitter {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            elem: Vec::new(),
            overflow: false,
            depth: 0,
            in_string: false,
            escape: false,
            scalar: false,
            in_array: false,
            max_bytes,
            oversized_events: 0,
        }
    }

    pub fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        // Start of the element bytes not yet copied into `elem`.
        let mut from = 0;
        for (i, &b) in input.iter().enumerate() {
            if self.depth == 0 && !self.scalar {
                match b {
                    b'{' | b'[' if self.in_array || b == b'{' => {
                        self.depth = 1;
                        from = i;
                    }
                    b'[' => self.in_array = true,
                    b']' => self.in_array = false,
                    b',' | b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'"' => {
                        self.scalar = true;
                        self.in_string = true;
                        from = i;
                    }
                    _ => {
                        self.scalar = true;
                        from = i;
                    }
                }
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if self.scalar {
                if matches!(b, b',' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                    self.push(&input[from..i]);
                    self.dispatch(on_event);
                    if b == b']' {
                        self.in_array = false;
                    }
                } else if b == b'"' {
                    self.in_string = true;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.push(&input[from..=i]);
                        self.dispatch(on_event);
                    }
                }
                _ => {}
            }
        }
        if self.depth > 0 || self.scalar {
            self.push(&input[from..]);
        }
    }

    /// The body ended: an element cut short is still delivered (and will not parse).
    pub fn finish(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if self.depth > 0 || self.scalar {
            self.dispatch(on_event);
        }
        self.in_array = false;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.elem.len() + bytes.len() > self.max_bytes {
            self.overflow = true;
            self.elem = Vec::new();
        } else {
            self.elem.extend_from_slice(bytes);
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) {
        if std::mem::take(&mut self.overflow) {
            self.oversized_events += 1;
        } else if !self.elem.is_empty() {
            on_event(SseEvent {
                event: None,
                data: &self.elem,
            });
        }
        self.elem.clear();
        self.depth = 0;
        self.scalar = false;
        self.in_string = false;
        self.escape = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ndjson(chunks: &[&[u8]], max: usize) -> (Vec<String>, u64) {
        let mut p = NdjsonSplitter::new(max);
        let mut out = Vec::new();
        let mut cb = |e: SseEvent<'_>| out.push(String::from_utf8_lossy(e.data).into_owned());
        for c in chunks {
            p.feed(c, &mut cb);
        }
        p.finish(&mut cb);
        (out, p.oversized_events)
    }

    fn array(chunks: &[&[u8]], max: usize) -> (Vec<String>, u64) {
        let mut p = JsonArraySplitter::new(max);
        let mut out = Vec::new();
        let mut cb = |e: SseEvent<'_>| out.push(String::from_utf8_lossy(e.data).into_owned());
        for c in chunks {
            p.feed(c, &mut cb);
        }
        p.finish(&mut cb);
        (out, p.oversized_events)
    }

    #[test]
    fn streams_ndjson_lines_at_every_split() {
        let s = b"{\"a\":1}\r\n\n{\"b\":\"x\\ny\"}\n  \n{\"c\":3}";
        let want = [r#"{"a":1}"#, r#"{"b":"x\ny"}"#, r#"{"c":3}"#];
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let (got, over) = ndjson(&[&s[..i], &s[i..j], &s[j..]], 1024);
                assert_eq!(
                    (got, over),
                    (want.iter().map(|s| s.to_string()).collect(), 0)
                );
            }
        }
        let (got, over) = ndjson(&[b"{\"big\":\"", &[b'z'; 50], b"\"}\n{\"ok\":1}\n"], 20);
        assert_eq!((got, over), (vec![r#"{"ok":1}"#.to_string()], 1));
    }

    #[test]
    fn streams_json_array_elements_at_every_split() {
        let s = br#"[{"a":"[{]}\"","n":[1,{"x":2}]}
,
{"b":{}} , {"c":"\\"}]"#;
        let want = [
            r#"{"a":"[{]}\"","n":[1,{"x":2}]}"#,
            r#"{"b":{}}"#,
            r#"{"c":"\\"}"#,
        ];
        for i in 0..=s.len() {
            for j in i..=s.len() {
                let (got, over) = array(&[&s[..i], &s[i..j], &s[j..]], 1024);
                assert_eq!(
                    (got, over),
                    (want.iter().map(|s| s.to_string()).collect(), 0),
                    "split {i},{j}"
                );
            }
        }
    }

    #[test]
    fn streams_json_array_odd_inputs() {
        // A lone object (an error body instead of an array).
        assert_eq!(
            array(&[br#"{"error":{"code":400}}"#], 1024).0,
            vec![r#"{"error":{"code":400}}"#.to_string()]
        );
        // Garbage and scalars come out as elements that will not parse.
        assert_eq!(
            array(&[b"<html>bad</html>"], 1024).0,
            vec!["<html>bad</html>".to_string()]
        );
        assert_eq!(
            array(&[b"[1, \"s,]\", {}]"], 1024).0,
            vec!["1".to_string(), "\"s,]\"".to_string(), "{}".to_string()]
        );
        // Cut short: the partial element is delivered at finish.
        assert_eq!(
            array(&[br#"[{"a":1},{"b":"#], 1024).0,
            vec![r#"{"a":1}"#.to_string(), r#"{"b":"#.to_string()]
        );
        // Oversized elements are dropped and counted.
        let big = format!("[{{\"t\":\"{}\"}},{{\"ok\":1}}]", "z".repeat(100));
        assert_eq!(
            array(&[big.as_bytes()], 32),
            (vec![r#"{"ok":1}"#.to_string()], 1)
        );
    }
}
