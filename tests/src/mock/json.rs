//! A tiny ordered JSON object writer.
//!
//! Provider responses are written field by field in the order the providers
//! send them (serde_json's `Value` would sort keys), so byte-level parsers in
//! the daemon see realistic documents.

use serde_json::Value;

/// An ordered JSON object under construction.
#[derive(Default)]
pub struct Obj {
    buf: String,
}

impl Obj {
    pub fn new() -> Self {
        Obj {
            buf: String::from("{"),
        }
    }

    fn key(&mut self, k: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        self.buf.push_str(&quote(k));
        self.buf.push(':');
    }

    /// A string field.
    pub fn s(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        self.buf.push_str(&quote(v));
        self
    }

    /// A string-or-null field.
    pub fn opt_s(mut self, k: &str, v: Option<&str>) -> Self {
        self.key(k);
        match v {
            Some(v) => self.buf.push_str(&quote(v)),
            None => self.buf.push_str("null"),
        }
        self
    }

    /// An unsigned number field.
    pub fn n(mut self, k: &str, v: u64) -> Self {
        self.key(k);
        self.buf.push_str(&v.to_string());
        self
    }

    /// A boolean field.
    pub fn b(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.buf.push_str(if v { "true" } else { "false" });
        self
    }

    /// A `null` field.
    pub fn null(mut self, k: &str) -> Self {
        self.key(k);
        self.buf.push_str("null");
        self
    }

    /// A nested object field.
    pub fn o(mut self, k: &str, v: Obj) -> Self {
        self.key(k);
        self.buf.push_str(&v.finish());
        self
    }

    /// A field holding already-serialised JSON.
    pub fn raw(mut self, k: &str, json: &str) -> Self {
        self.key(k);
        self.buf.push_str(json);
        self
    }

    /// A field holding a `serde_json::Value`.
    pub fn v(self, k: &str, v: &Value) -> Self {
        let s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
        self.raw(k, &s)
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

/// A JSON array of already-serialised elements.
pub fn arr<I: IntoIterator<Item = String>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().collect();
    format!("[{}]", v.join(","))
}

/// A JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
