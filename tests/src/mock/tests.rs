//! Raw-wire tests of the mock: a tokio-rustls client speaks HTTP/1.1 bytes to
//! an in-process server and checks responses and the log.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::log::{LogRecord, read_log};
use super::{Config, GzipMode, Server, tls};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mock-llm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Fixture {
    server: Server,
    dir: PathBuf,
    connector: TlsConnector,
}

impl Fixture {
    async fn new(name: &str, gzip: GzipMode) -> Fixture {
        let dir = temp_dir(name);
        let mut cfg = Config::new(&dir);
        cfg.log = Some(dir.join("log.jsonl"));
        cfg.gzip = gzip;
        cfg.exit_after = Duration::from_secs(120);
        let server = Server::start(cfg).await.unwrap();
        // The CA on disk is the one the server chains to.
        let pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        assert_eq!(pem, server.ca_pem);
        let cc = tls::client_config(&server.ca_der, &[b"http/1.1"]).unwrap();
        Fixture {
            server,
            dir,
            connector: TlsConnector::from(cc),
        }
    }

    async fn connect(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self.connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls
    }

    async fn log(&self, n: usize) -> Vec<LogRecord> {
        let path = self.dir.join("log.jsonl");
        for _ in 0..200 {
            if let Ok(recs) = read_log(&path)
                && recs.len() >= n
            {
                return recs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("log has fewer than {n} lines");
    }

    async fn stop(self) {
        self.server.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    /// De-chunked, still encoded.
    body: Vec<u8>,
    /// Each chunk as received (chunked responses).
    chunks: Vec<Vec<u8>>,
    complete: bool,
}

impl Resp {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
    fn decoded(&self) -> Vec<u8> {
        if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            self.body.clone()
        }
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.decoded()).unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8(self.decoded()).unwrap()
    }
}

/// Minimal HTTP/1.1 response reader over a buffered stream.
struct Reader {
    io: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Reader {
    async fn more(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            _ => false,
        }
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(l);
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn response(&mut self) -> Resp {
        let (status, headers) = loop {
            let head_end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                assert!(
                    self.more().await,
                    "connection closed before a response head"
                );
            };
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            r.parse(&self.buf[..head_end]).unwrap();
            let status = r.code.unwrap();
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into(),
                    )
                })
                .collect();
            self.buf.drain(..head_end);
            if status != 100 {
                break (status, headers);
            }
        };
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            complete: false,
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(line) = self.line().await else {
                    return resp;
                };
                let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap(), 16).unwrap();
                if size == 0 {
                    self.line().await;
                    resp.complete = true;
                    return resp;
                }
                let Some(data) = self.take(size).await else {
                    return resp;
                };
                self.line().await;
                resp.body.extend_from_slice(&data);
                resp.chunks.push(data);
            }
        }
        let len: usize = resp.header("content-length").unwrap().parse().unwrap();
        match self.take(len).await {
            Some(b) => {
                resp.body = b;
                resp.complete = true;
            }
            None => {
                resp.body = std::mem::take(&mut self.buf);
            }
        }
        resp
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// True when the peer closed the connection.
    async fn closed(&mut self) -> bool {
        !self.buf.is_empty() || !self.more().await
    }
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("event without data: {e:?}"))
                .to_string()
        })
        .collect()
}

fn sse_names(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("event: "))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn openai_non_stream_and_stream_on_one_connection() {
    let fx = Fixture::new("openai", GzipMode::Never).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };

    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"secret prompt"}]}"#;
    c.send(&post("/v1/chat/completions", "x-test-tag: one\r\n", body))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["model"], "gpt-4o-mini");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant");
    assert!(j["choices"][0]["message"]["refusal"].is_null());
    assert_eq!(j["choices"][0]["finish_reason"], "stop");
    let u = &j["usage"];
    let (p, c_, t) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    );
    assert_eq!(p + c_, t);
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached > 0 && cached < p);
    assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 0);

    // Streamed, reasoning model, request body sent chunked.
    let body = r#"{"model":"o3-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let (a, b) = body.split_at(20);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    c.send(req.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = r.text();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    // One event per chunk.
    assert_eq!(r.chunks.len(), data.len());
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], serde_json::json!([]));
    assert!(
        last["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    let stream_usage = last["usage"].clone();

    // Without include_usage: no usage chunk.
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    c.send(&post("/v1/chat/completions", "", body)).await;
    let r = c.response().await;
    let data = sse_data(&r.text());
    assert!(data[..data.len() - 1].iter().all(|d| {
        let v: Value = serde_json::from_str(d).unwrap();
        v["usage"].is_null() && !v["choices"].as_array().unwrap().is_empty()
    }));

    let log = fx.log(3).await;
    assert_eq!(log[0].seq, 1);
    assert_eq!(log[0].tag.as_deref(), Some("one"));
    assert_eq!(log[0].api.as_deref(), Some("chat.completions"));
    let lu = log[0].usage.unwrap();
    assert_eq!(
        (lu.input_tokens, lu.output_tokens, lu.cache_read_tokens),
        (p, c_, cached)
    );
    assert!(log[0].usage_sent);
    assert_eq!(log[1].request_bytes, body_len_of_chunked());
    assert!(log[1].request_wire_bytes > log[1].request_bytes);
    assert!(log[1].stream && log[1].include_usage && log[1].usage_sent);
    let lu = log[1].usage.unwrap();
    assert_eq!(
        lu.input_tokens,
        stream_usage["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        lu.reasoning_tokens,
        stream_usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
    );
    assert!(!log[2].usage_sent);
    assert_eq!(log[0].conn, log[2].conn);
    // No prompt text in the log.
    let raw = std::fs::read_to_string(fx.dir.join("log.jsonl")).unwrap();
    assert!(!raw.contains("secret prompt"));
    fx.stop().await;
}

fn body_len_of_chunked() -> u64 {
    r#"{"model":"o3-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#
        .len() as u64
}

#[tokio::test]
async fn anthropic_stream_events_and_forced_usage() {
    let fx = Fixture::new("anthropic", GzipMode::Never).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    let forced = r#"{"input_tokens":1000,"output_tokens":200,"cache_read_tokens":300,"cache_write_tokens":50}"#;
    let body = r#"{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    c.send(&post(
        "/v1/messages?beta=true",
        &format!("anthropic-version: 2023-06-01\r\nx-mock-usage: {forced}\r\n"),
        body,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.header("request-id").unwrap().starts_with("req_"));
    let text = r.text();
    let names = sse_names(&text);
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| n == "content_block_delta")
    );
    assert!(names.len() - 6 >= 3);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let data: Vec<Value> = sse_data(&text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for (n, d) in names.iter().zip(&data) {
        assert_eq!(&d["type"], n);
    }
    let start = &data[0]["message"]["usage"];
    assert_eq!(start["input_tokens"], 650);
    assert_eq!(start["cache_read_input_tokens"], 300);
    assert_eq!(start["cache_creation_input_tokens"], 50);
    assert_eq!(data[3]["delta"]["type"], "text_delta");
    let delta = &data[data.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 200);

    // Non-streaming message with deterministic usage: all parts nonzero.
    let body = r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[]}"#;
    c.send(&post("/v1/messages", "", body)).await;
    let j = c.response().await.json();
    assert_eq!(j["type"], "message");
    assert_eq!(j["content"][0]["type"], "text");
    assert_eq!(j["stop_reason"], "end_turn");
    assert!(j["stop_sequence"].is_null());
    for k in [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "output_tokens",
    ] {
        assert!(j["usage"][k].as_u64().unwrap() > 0, "{k}");
    }

    let log = fx.log(2).await;
    let u = log[0].usage.unwrap();
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens
        ),
        (1000, 200, 300, 50)
    );
    assert_eq!(log[0].path, "/v1/messages");
    let u1 = log[1].usage.unwrap();
    assert_eq!(
        u1.input_tokens,
        j["usage"]["input_tokens"].as_u64().unwrap()
            + j["usage"]["cache_creation_input_tokens"].as_u64().unwrap()
            + j["usage"]["cache_read_input_tokens"].as_u64().unwrap()
    );
    fx.stop().await;
}

#[tokio::test]
async fn errors_in_provider_shapes() {
    let fx = Fixture::new("errors", GzipMode::Never).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    c.send(&post("/v1/nope", "", "{}")).await;
    let r = c.response().await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    c.send(&post("/v1/messages", "", "{not json")).await;
    let r = c.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    c.send(&post(
        "/v1/messages",
        "x-mock-status: 429\r\n",
        r#"{"model":"m","max_tokens":1,"messages":[]}"#,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");

    c.send(&post(
        "/v1/chat/completions",
        "x-mock-status: 429\r\n",
        r#"{"model":"m","stream":true}"#,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");

    // A malformed head gets a 400 and a closed connection; the server lives on.
    c.send(b"NOT HTTP AT ALL\x01\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 400);
    assert!(c.closed().await);
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    c.send(&post("/v1/chat/completions", "", r#"{"model":"gpt-4o"}"#))
        .await;
    assert_eq!(c.response().await.status, 200);

    let log = fx.log(5).await;
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [404, 400, 429, 429, 200]);
    assert!(log[..4].iter().all(|r| r.usage.is_none() && !r.usage_sent));
    fx.stop().await;
}

#[tokio::test]
async fn truncated_stream_closes_without_usage() {
    let fx = Fixture::new("truncate", GzipMode::Never).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    let body = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
    c.send(&post(
        "/v1/chat/completions",
        "x-mock-truncate: 1\r\n",
        body,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert!(!r.text().contains("[DONE]"));
    assert!(!r.text().contains("prompt_tokens"));
    assert_eq!(r.chunks.len(), super::app::TRUNCATE_AFTER_EVENTS);

    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    let body = r#"{"model":"claude-opus-4-7","max_tokens":5,"stream":true,"messages":[]}"#;
    c.send(&post("/v1/messages", "x-mock-truncate: 1\r\n", body))
        .await;
    let r = c.response().await;
    assert!(!r.complete);
    assert!(!r.text().contains("message_delta"));

    let log = fx.log(2).await;
    assert!(log.iter().all(|r| r.truncated && !r.usage_sent));
    assert!(log[0].usage_partial.is_none());
    let p = log[1].usage_partial.unwrap();
    assert_eq!(p.input_tokens, log[1].usage.unwrap().input_tokens);
    assert_eq!(p.output_tokens, 1);
    fx.stop().await;
}

#[tokio::test]
async fn gzip_auto_and_always() {
    let fx = Fixture::new("gzip-auto", GzipMode::Auto).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    c.send(&post(
        "/v1/chat/completions",
        "accept-encoding: gzip, deflate\r\n",
        r#"{"model":"gpt-4o"}"#,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.json()["object"], "chat.completion");
    // Streams are not gzipped in auto mode.
    c.send(&post(
        "/v1/chat/completions",
        "accept-encoding: gzip\r\n",
        r#"{"model":"gpt-4o","stream":true}"#,
    ))
    .await;
    let r = c.response().await;
    assert!(r.header("content-encoding").is_none());
    // No Accept-Encoding: plain.
    c.send(&post(
        "/v1/messages",
        "",
        r#"{"model":"claude-haiku-4-5","max_tokens":5}"#,
    ))
    .await;
    let r = c.response().await;
    assert!(r.header("content-encoding").is_none());
    assert_eq!(r.json()["type"], "message");
    let log = fx.log(3).await;
    assert_eq!(
        log.iter().map(|r| r.gzip).collect::<Vec<_>>(),
        [true, false, false]
    );
    fx.stop().await;

    let fx = Fixture::new("gzip-always", GzipMode::Always).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    let body = r#"{"model":"claude-haiku-4-5","max_tokens":5,"stream":true}"#;
    c.send(&post("/v1/messages", "accept-encoding: gzip\r\n", body))
        .await;
    let r = c.response().await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.complete);
    // Flushed per event: a chunk per event plus the gzip trailer.
    assert!(r.chunks.len() >= 10);
    let names = sse_names(&r.text());
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    fx.stop().await;
}

#[tokio::test]
async fn large_bodies_expect_continue_and_keep_alive() {
    let fx = Fixture::new("large", GzipMode::Never).await;
    let mut c = Reader {
        io: fx.connect().await,
        buf: Vec::new(),
    };
    let filler = "x".repeat(3 * 1024 * 1024);
    let body =
        format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{filler}"}}]}}"#);
    // Content-Length with Expect: 100-continue.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes()).await;
    let l = c.line().await.unwrap();
    assert_eq!(l, b"HTTP/1.1 100 Continue");
    assert_eq!(c.line().await.unwrap(), b"");
    c.send(body.as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let big_input = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(big_input > 700_000);

    // The same body chunked in 64 KiB pieces, on the same connection.
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(64 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    c.send(&req).await;
    assert_eq!(c.response().await.status, 200);

    // Pipelined: two requests in one write.
    let mut two = post(
        "/v1/chat/completions",
        "x-test-tag: p1\r\n",
        r#"{"model":"gpt-4o"}"#,
    );
    two.extend(post(
        "/v1/chat/completions",
        "x-test-tag: p2\r\nconnection: close\r\n",
        r#"{"model":"gpt-4o"}"#,
    ));
    c.send(&two).await;
    assert_eq!(c.response().await.status, 200);
    let last = c.response().await;
    assert_eq!(last.header("connection"), Some("close"));
    assert!(c.closed().await);

    let log = fx.log(4).await;
    assert_eq!(log[0].request_bytes, body.len() as u64);
    assert_eq!(log[1].request_bytes, body.len() as u64);
    assert!(log[1].request_wire_bytes > log[0].request_wire_bytes);
    assert!(log.iter().all(|r| r.conn == log[0].conn));
    assert_eq!(log[3].tag.as_deref(), Some("p2"));
    fx.stop().await;
}

#[tokio::test]
async fn usage_is_deterministic_and_different_per_call() {
    use super::usage::{Provider, deterministic};
    let a = deterministic(Provider::OpenAi, "gpt-5", 1, 100);
    let b = deterministic(Provider::OpenAi, "gpt-5", 2, 100);
    assert_ne!(a, b);
    assert_eq!(a, deterministic(Provider::OpenAi, "gpt-5", 1, 100));
    assert!(a.reasoning_tokens > 0 && a.cache_read_tokens > 0);
    assert_eq!(
        deterministic(Provider::OpenAi, "gpt-4o", 1, 100).reasoning_tokens,
        0
    );
    let c = deterministic(Provider::Anthropic, "claude-opus-4-7", 1, 100);
    assert!(c.cache_write_tokens > 0 && c.cache_read_tokens > 0);
    assert!(c.input_tokens > c.cache_read_tokens + c.cache_write_tokens);
}

#[test]
fn http_date_formats() {
    assert_eq!(super::http1::http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        super::http1::http_date(1_700_000_000),
        "Tue, 14 Nov 2023 22:13:20 GMT"
    );
}

/// The binary end to end through `MockProcess` (skipped when cargo did not
/// build `target/<profile>/mock-llm` for this run).
#[tokio::test]
async fn binary_prints_listening_writes_ca_and_stops_on_sigterm() {
    use super::process::MockProcess;
    let bin = MockProcess::default_bin();
    if !bin.exists() {
        eprintln!("skipping: {} not built", bin.display());
        return;
    }
    let dir = temp_dir("binary");
    let mut mock =
        MockProcess::spawn(&bin, &dir, &["--gzip", "never", "--exit-after-secs", "60"]).unwrap();
    assert!(mock.base_url().starts_with("https://127.0.0.1:"));
    let pem = std::fs::read(mock.ca_path()).unwrap();
    let ca =
        rustls::pki_types::CertificateDer::from(pem_to_der(std::str::from_utf8(&pem).unwrap()));
    let connector = TlsConnector::from(tls::client_config(&ca, &[b"http/1.1"]).unwrap());
    let tcp = TcpStream::connect(mock.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut c = Reader {
        io: connector.connect(name, tcp).await.unwrap(),
        buf: Vec::new(),
    };
    c.send(&post(
        "/v1/chat/completions",
        "x-test-tag: bin\r\n",
        r#"{"model":"gpt-5"}"#,
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    let log = mock.wait_log(1, Duration::from_secs(5)).unwrap();
    assert_eq!(log[0].tag.as_deref(), Some("bin"));
    assert!(log[0].usage.unwrap().reasoning_tokens > 0);
    mock.stop();
    assert!(mock.child.try_wait().unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in b64.bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ------------------------------------------------- API breadth, through agentwatch's parser

/// Sends one request with `connection: close` and returns every byte received.
async fn raw_exchange(fx: &Fixture, req: &[u8]) -> Vec<u8> {
    let mut io = fx.connect().await;
    io.write_all(req).await.unwrap();
    io.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
    out
}

fn post_close(path: &str, extra: &str, body: &str) -> Vec<u8> {
    post(path, &format!("connection: close\r\n{extra}"), body)
}

/// Feeds a request and the raw response into agentwatch's capture, as the daemon would.
fn capture(req: &[u8], resp: &[u8]) -> agentwatch::providers::LlmCall {
    use agentwatch::capture::{CaptureEvent, CaptureLimits, CaptureStats, Connection};
    let mut conn = Connection::new(CaptureLimits::default());
    let (mut stats, mut out) = (CaptureStats::default(), Vec::new());
    conn.on_write(req, 1, &mut stats, &mut out);
    for piece in resp.chunks(7) {
        conn.on_read(piece, 2, &mut stats, &mut out);
    }
    conn.close(3, &mut stats, &mut out);
    let calls: Vec<_> = out
        .into_iter()
        .filter_map(|e| match e {
            CaptureEvent::Call(c) => Some(c),
            CaptureEvent::Request(_) => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{calls:#?} {stats:#?}");
    assert_eq!(stats.json_errors, 0, "{stats:#?}");
    calls.into_iter().next().unwrap()
}

fn otel(u: &agentwatch::accounting::Usage) -> super::usage::Usage {
    super::usage::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_tokens: u.cache_read_tokens,
        cache_write_tokens: u.cache_write_tokens,
        reasoning_tokens: u.reasoning_tokens,
        cache_write_1h_tokens: u.cache_write_1h_tokens,
    }
}

fn body_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn new_apis_speak_their_shapes_and_agentwatch_reads_the_exact_usage() {
    let fx = Fixture::new("breadth", GzipMode::Never).await;
    let usage =
        r#"{"input_tokens":900,"output_tokens":120,"cache_read_tokens":512,"reasoning_tokens":40}"#;
    let cases: Vec<(&str, &str, &str, &str, bool)> = vec![
        // (path, extra headers, body, api, streaming)
        (
            "/v1/responses",
            "",
            r#"{"model":"gpt-5-mini","input":"hi"}"#,
            "responses",
            false,
        ),
        (
            "/v1/responses",
            "",
            r#"{"model":"gpt-5-mini","input":"hi","stream":true}"#,
            "responses",
            true,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "x-goog-api-key: k\r\n",
            r#"{"contents":[]}"#,
            "generate_content",
            false,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "",
            r#"{"contents":[]}"#,
            "generate_content",
            true,
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "",
            r#"{"contents":[]}"#,
            "generate_content",
            true,
        ),
        (
            "/api/chat",
            "",
            r#"{"model":"llama3.2","messages":[]}"#,
            "ollama.chat",
            true,
        ),
        (
            "/api/chat",
            "",
            r#"{"model":"llama3.2","messages":[],"stream":false}"#,
            "ollama.chat",
            false,
        ),
        (
            "/api/generate",
            "",
            r#"{"model":"llama3.2","prompt":"hi"}"#,
            "ollama.generate",
            true,
        ),
        (
            "/api/generate",
            "",
            r#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
            "ollama.generate",
            false,
        ),
        (
            "/v1/completions",
            "",
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}"#,
            "completions",
            false,
        ),
        (
            "/v1/completions",
            "",
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","stream":true,"stream_options":{"include_usage":true}}"#,
            "completions",
            true,
        ),
        (
            "/v1/embeddings",
            "",
            r#"{"model":"text-embedding-3-small","input":["a","b"],"encoding_format":"base64"}"#,
            "embeddings",
            false,
        ),
        (
            "/openai/deployments/dep-4o/chat/completions?api-version=2024-10-21",
            "api-key: k\r\n",
            r#"{"messages":[]}"#,
            "chat.completions",
            false,
        ),
    ];
    for (i, (path, extra, body, api, streaming)) in cases.iter().enumerate() {
        let extra = format!("{extra}x-mock-usage: {usage}\r\n");
        let req = post_close(path, &extra, body);
        let raw = raw_exchange(&fx, &req).await;
        let rec = fx.log(i + 1).await.pop().unwrap();
        assert_eq!(rec.api.as_deref(), Some(*api), "{path}");
        assert_eq!(rec.stream, *streaming, "{path}");
        assert!(rec.usage_sent && !rec.truncated, "{path}");
        let call = capture(&req, &raw);
        assert_eq!(call.request.api, *api, "{path}");
        assert_eq!(call.request.streaming, *streaming, "{path}");
        assert_eq!(call.request.model, rec.model, "{path}");
        assert!(call.complete, "{path}");
        assert_eq!(
            Some(otel(&call.usage)),
            rec.usage,
            "{path}: {}",
            body_of(&raw)
        );
    }
    // What each API carries of the same planned usage.
    let log = fx.log(cases.len()).await;
    let u = |i: usize| log[i].usage.unwrap();
    assert_eq!((u(0).cache_read_tokens, u(0).reasoning_tokens), (512, 40));
    assert_eq!(
        (u(2).output_tokens, u(2).reasoning_tokens),
        (120, 40),
        "thoughts outside candidates"
    );
    assert_eq!(
        (u(5).cache_read_tokens, u(5).reasoning_tokens),
        (0, 0),
        "Ollama: counts only"
    );
    assert_eq!(
        (u(11).input_tokens, u(11).output_tokens),
        (900, 0),
        "embeddings: input only"
    );
    assert_eq!(
        log[12].model.as_deref(),
        Some("dep-4o"),
        "Azure deployment names the model"
    );
    fx.stop().await;
}

#[tokio::test]
async fn new_apis_wire_details() {
    let fx = Fixture::new("breadth-wire", GzipMode::Never).await;
    // Gemini's default stream is one JSON array; alt=sse is SSE with CRLF.
    let raw = raw_exchange(
        &fx,
        &post_close(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            "",
            "{}",
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.contains("content-type: application/json"), "{text}");
    let raw = raw_exchange(
        &fx,
        &post_close(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "",
            "{}",
        ),
    )
    .await;
    assert!(String::from_utf8_lossy(&raw).contains("data: {\"candidates\""));
    let raw = raw_exchange(
        &fx,
        &post_close("/v1beta/models/gemini-2.5-pro:generateContent", "", "{}"),
    )
    .await;
    let v: Value = serde_json::from_str(&body_of(&raw)).unwrap();
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-pro");
    let um = &v["usageMetadata"];
    assert_eq!(
        um["totalTokenCount"].as_u64().unwrap(),
        um["promptTokenCount"].as_u64().unwrap()
            + um["candidatesTokenCount"].as_u64().unwrap()
            + um["thoughtsTokenCount"].as_u64().unwrap()
    );
    // Responses: typed events, usage only in response.completed, no [DONE].
    let raw = raw_exchange(
        &fx,
        &post_close(
            "/v1/responses",
            "",
            r#"{"model":"gpt-4o","input":"x","stream":true}"#,
        ),
    )
    .await;
    let names = sse_names(&String::from_utf8_lossy(&raw));
    assert_eq!(names.first().map(String::as_str), Some("response.created"));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    assert!(names.iter().any(|n| n == "response.output_text.delta"));
    assert!(!String::from_utf8_lossy(&raw).contains("[DONE]"));
    // Ollama: NDJSON, last line done with counts.
    let raw = raw_exchange(&fx, &post_close("/api/chat", "", r#"{"model":"qwen3"}"#)).await;
    assert!(String::from_utf8_lossy(&raw).contains("content-type: application/x-ndjson"));
    // Errors in each API's shape.
    let raw = raw_exchange(
        &fx,
        &post_close(
            "/v1beta/models/g:generateContent",
            "x-mock-status: 429\r\n",
            "{}",
        ),
    )
    .await;
    let v: Value = serde_json::from_str(&body_of(&raw)).unwrap();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    let raw = raw_exchange(&fx, &post_close("/api/generate", "", r#"{"prompt":"x"}"#)).await;
    let v: Value = serde_json::from_str(&body_of(&raw)).unwrap();
    assert!(v["error"].is_string());
    // Embeddings as floats.
    let raw = raw_exchange(
        &fx,
        &post_close(
            "/v1/embeddings",
            "",
            r#"{"model":"text-embedding-3-small","input":"x"}"#,
        ),
    )
    .await;
    let v: Value = serde_json::from_str(&body_of(&raw)).unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    fx.stop().await;
}

#[tokio::test]
async fn new_apis_truncated_streams_are_missing_in_agentwatch() {
    let fx = Fixture::new("breadth-trunc", GzipMode::Never).await;
    let cases = [
        (
            "/v1/responses",
            r#"{"model":"gpt-4o","input":"x","stream":true}"#,
        ),
        ("/v1/responses", r#"{"model":"gpt-4o","input":"x"}"#),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "{}",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "{}",
        ),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "{}"),
        ("/api/chat", r#"{"model":"llama3.2"}"#),
        ("/api/generate", r#"{"model":"llama3.2","stream":false}"#),
        (
            "/v1/completions",
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "/v1/embeddings",
            r#"{"model":"text-embedding-3-small","input":"x"}"#,
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let req = post_close(path, "x-mock-truncate: 1\r\n", body);
        let raw = raw_exchange(&fx, &req).await;
        let rec = fx.log(i + 1).await.pop().unwrap();
        assert!(rec.truncated && !rec.usage_sent, "{path}");
        let call = {
            use agentwatch::capture::{CaptureEvent, CaptureLimits, CaptureStats, Connection};
            let mut conn = Connection::new(CaptureLimits::default());
            let (mut stats, mut out) = (CaptureStats::default(), Vec::new());
            conn.on_write(&req, 1, &mut stats, &mut out);
            conn.on_read(&raw, 2, &mut stats, &mut out);
            conn.close(3, &mut stats, &mut out);
            out.into_iter()
                .find_map(|e| match e {
                    CaptureEvent::Call(c) => Some(c),
                    CaptureEvent::Request(_) => None,
                })
                .expect("the call is recorded")
        };
        assert!(!call.complete, "{path}");
        assert_eq!(
            call.usage_source,
            agentwatch::accounting::UsageSource::Missing,
            "{path}: {}",
            body_of(&raw)
        );
    }
    fx.stop().await;
}

#[tokio::test]
async fn zstd_auto_and_always() {
    let dir = temp_dir("zstd");
    let mut cfg = Config::new(&dir);
    cfg.log = Some(dir.join("log.jsonl"));
    cfg.zstd = GzipMode::Always;
    let server = Server::start(cfg).await.unwrap();
    let cc = tls::client_config(&server.ca_der, &[b"http/1.1"]).unwrap();
    let fx = Fixture {
        server,
        dir,
        connector: TlsConnector::from(cc),
    };
    for (path, body) in [
        ("/v1/chat/completions", r#"{"model":"gpt-4o"}"#),
        (
            "/v1/responses",
            r#"{"model":"gpt-4o","input":"x","stream":true}"#,
        ),
        ("/api/chat", r#"{"model":"llama3.2"}"#),
    ] {
        let req = post_close(path, "accept-encoding: gzip, zstd\r\n", body);
        let raw = raw_exchange(&fx, &req).await;
        assert!(
            String::from_utf8_lossy(&raw).contains("content-encoding: zstd"),
            "{path}"
        );
        let call = capture(&req, &raw);
        assert!(call.complete, "{path}");
        assert_eq!(
            call.usage_source,
            agentwatch::accounting::UsageSource::Reported
        );
    }
    // Not accepted: gzip (auto, non-stream) or nothing.
    let req = post_close(
        "/v1/chat/completions",
        "accept-encoding: gzip\r\n",
        r#"{"model":"gpt-4o"}"#,
    );
    let raw = raw_exchange(&fx, &req).await;
    assert!(String::from_utf8_lossy(&raw).contains("content-encoding: gzip"));
    let log = fx.log(4).await;
    assert_eq!(
        log.iter().map(|r| r.zstd).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    fx.stop().await;
}

/// HTTP/2 (with `Config::h2`): an `h2` client opens two concurrent streams on one
/// connection, a gzip-accepting non-streamed call and a stream, and a client offering only
/// http/1.1 still gets HTTP/1.1.
#[tokio::test]
async fn http2_concurrent_streams_on_one_connection() {
    let dir = temp_dir("h2");
    let mut cfg = Config::new(&dir);
    cfg.log = Some(dir.join("log.jsonl"));
    cfg.h2 = true;
    cfg.exit_after = Duration::from_secs(120);
    let server = Server::start(cfg).await.unwrap();
    let cc = tls::client_config(&server.ca_der, &[b"h2"]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(cc).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    for (body, gzip) in [
        (
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            true,
        ),
        (
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            false,
        ),
    ] {
        let mut req = http::Request::post("https://localhost/v1/chat/completions")
            .header("content-type", "application/json");
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        let (resp, mut send) = client.send_request(req.body(()).unwrap(), false).unwrap();
        send.send_data(bytes::Bytes::from(body), true).unwrap();
        responses.push(resp);
        client = client.ready().await.unwrap();
    }
    let mut bodies = Vec::new();
    for resp in responses {
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let gz = resp.headers().get("content-encoding").is_some();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let mut recv = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        if gz {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut plain)
                .unwrap();
            data = plain;
        }
        bodies.push((ct, gz, String::from_utf8(data).unwrap()));
    }
    let (ct, gz, json) = &bodies[0];
    assert!(ct.starts_with("application/json") && *gz, "{ct}");
    let v: Value = serde_json::from_str(json).unwrap();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    let (ct, gz, sse) = &bodies[1];
    assert!(ct.starts_with("text/event-stream") && !*gz, "{ct}");
    let data = sse_data(sse);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    drop(client);
    driver.abort();
    let recs = {
        let path = dir.join("log.jsonl");
        let mut recs = Vec::new();
        for _ in 0..200 {
            recs = read_log(&path).unwrap_or_default();
            if recs.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recs
    };
    assert_eq!(recs.len(), 2);
    assert!(
        recs.iter()
            .all(|r| r.protocol == "h2" && r.conn == recs[0].conn)
    );
    // Offering only http/1.1 still works on an h2-enabled server.
    let cc = tls::client_config(&server.ca_der, &[b"http/1.1"]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(cc).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    server.stop().await;
}
