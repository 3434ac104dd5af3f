//! Privileged end-to-end tests against servers the project did not write. Each front speaks
//! HTTP/2 (ALPN h2) to real clients with its own framing, and forwards to the plain-HTTP mock,
//! whose request log stays the record of what was served:
//! - hypercorn (PyPI, on the `h2` library), an ASGI app passing the mock's answers on, with its
//!   `content-length` and gzip (END_STREAM comes in an empty DATA frame of its own);
//! - nginx (Debian) terminating TLS, `gzip on`: it compresses the mock's bodies and streams on
//!   the fly, chunk by chunk, with no `content-length`;
//! - Go's `net/http` server with an `httputil.ReverseProxy` (built offline here).
//!
//! Through each, curl (`--http2 --compressed`, two calls per connection so the second leans on
//! the HPACK dynamic table) makes every API and stream kind of the coverage table, the
//! official Python SDKs over httpx with h2 make concurrent streamed calls, and Codex makes its
//! Responses call over a WebSocket (HTTP/1.1 upgrade, through each front): each call exact.
mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// A server in front of the mock, stopped on drop.
struct Front {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Front {
    /// Starts `cmd`, which prints `listening on ADDR:PORT` once it accepts connections.
    fn printing_its_port(mut cmd: Command, dir: Scratch) -> Front {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{cmd:?} printed {line:?}"));
        Front {
            child,
            port,
            _dir: dir,
        }
    }

    fn hypercorn(mock: &Mock) -> Front {
        let state = mock_state_dir(mock);
        let mut cmd = Command::new(python());
        cmd.arg(repo().join("tests/servers/hypercorn_front.py"))
            .arg("--backend")
            .arg(format!("http://127.0.0.1:{}", mock.port))
            .arg("--cert")
            .arg(state.join("server.pem"))
            .arg("--key")
            .arg(state.join("server-key.pem"));
        Front::printing_its_port(cmd, Scratch::new("hypercorn"))
    }

    fn go(mock: &Mock) -> Front {
        let dir = Scratch::new("goserver");
        let bin = dir.0.join("goserver");
        go_build(&repo().join("tests/servers/go"), &bin, "");
        let state = mock_state_dir(mock);
        let mut cmd = Command::new(&bin);
        cmd.arg("-backend")
            .arg(format!("http://127.0.0.1:{}", mock.port))
            .arg("-cert")
            .arg(state.join("server.pem"))
            .arg("-key")
            .arg(state.join("server-key.pem"));
        Front::printing_its_port(cmd, dir)
    }

    /// nginx in the foreground with a configuration of its own (one worker, temp paths and
    /// logs in its scratch directory).
    fn nginx(mock: &Mock) -> Front {
        let dir = Scratch::new("nginx");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let state = mock_state_dir(mock);
        let d = dir.0.display();
        let conf = format!(
            r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  gzip on;
  gzip_proxied any;
  gzip_min_length 0;
  gzip_types application/json text/event-stream application/x-ndjson;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    # Debian's nginx 1.22 offers TLS 1.2 only by default (1.23.4 added 1.3 to the default).
    # Codex's aws-lc records are followed under TLS 1.3 only (README, coverage).
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://127.0.0.1:{backend};
      proxy_http_version 1.1;
      proxy_buffering off;
      # WebSocket (the Responses API's, Codex's default): the upgrade passed on.
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}
}}
"#,
            cert = state.join("server.pem").display(),
            key = state.join("server-key.pem").display(),
            backend = mock.port,
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx (Debian; `cargo xtask setup --tests` installs it)");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let front = Front {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx not listening in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        front
    }

    fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM: nginx's master stops its worker too (a SIGKILL would leave it running).
        // SAFETY: plain kill(2) on a child we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mock's state directory (its certificates: `ca.pem`, `server.pem`, `server-key.pem`).
fn mock_state_dir(mock: &Mock) -> PathBuf {
    mock.ca.parent().unwrap().to_path_buf()
}

/// One kind of call: its path, body, and what its call rows must say.
struct Case {
    tag: &'static str,
    path: &'static str,
    body: &'static str,
    provider: &'static str,
    api: &'static str,
    model: &'static str,
    streaming: bool,
}

const fn case(
    tag: &'static str,
    path: &'static str,
    body: &'static str,
    provider: &'static str,
    api: &'static str,
    model: &'static str,
    streaming: bool,
) -> Case {
    Case {
        tag,
        path,
        body,
        provider,
        api,
        model,
        streaming,
    }
}

/// Every API and stream kind of the README's coverage table (its WebSocket row: below, Codex).
const CASES: &[Case] = &[
    case(
        "chat",
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        "openai",
        "chat.completions",
        "gpt-4o-mini",
        false,
    ),
    case(
        "chat-sse",
        "/v1/chat/completions",
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
        "openai",
        "chat.completions",
        "gpt-4o-mini",
        true,
    ),
    case(
        "responses",
        "/v1/responses",
        r#"{"model":"gpt-4o-mini","input":"hi"}"#,
        "openai",
        "responses",
        "gpt-4o-mini",
        false,
    ),
    case(
        "responses-sse",
        "/v1/responses",
        r#"{"model":"gpt-4o-mini","input":"hi","stream":true}"#,
        "openai",
        "responses",
        "gpt-4o-mini",
        true,
    ),
    case(
        "messages",
        "/v1/messages",
        r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
        "anthropic",
        "messages",
        "claude-haiku-4-5",
        false,
    ),
    case(
        "messages-sse",
        "/v1/messages",
        r#"{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        "anthropic",
        "messages",
        "claude-haiku-4-5",
        true,
    ),
    case(
        "completions",
        "/v1/completions",
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi"}"#,
        "openai",
        "completions",
        "gpt-3.5-turbo-instruct",
        false,
    ),
    case(
        "completions-sse",
        "/v1/completions",
        r#"{"model":"gpt-3.5-turbo-instruct","prompt":"hi","stream":true,"stream_options":{"include_usage":true}}"#,
        "openai",
        "completions",
        "gpt-3.5-turbo-instruct",
        true,
    ),
    case(
        "embeddings",
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        "openai",
        "embeddings",
        "text-embedding-3-small",
        false,
    ),
    case(
        "gemini",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        "gemini",
        "generate_content",
        "gemini-2.5-flash",
        false,
    ),
    case(
        "gemini-sse",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        "gemini",
        "generate_content",
        "gemini-2.5-flash",
        true,
    ),
    case(
        "gemini-array",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        "gemini",
        "generate_content",
        "gemini-2.5-flash",
        true,
    ),
    case(
        "ollama-chat",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
        "ollama",
        "ollama.chat",
        "llama3.2",
        false,
    ),
    case(
        "ollama-chat-ndjson",
        "/api/chat",
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        "ollama",
        "ollama.chat",
        "llama3.2",
        true,
    ),
    case(
        "ollama-generate",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
        "ollama",
        "ollama.generate",
        "llama3.2",
        false,
    ),
    case(
        "ollama-generate-ndjson",
        "/api/generate",
        r#"{"model":"llama3.2","prompt":"hi","stream":true}"#,
        "ollama",
        "ollama.generate",
        "llama3.2",
        true,
    ),
];

/// curl making the case's call twice on one connection (`--next`), HTTP/2 or HTTP/1.1.
fn curl_twice(front: &Front, mock: &Mock, tag: &str, c: &Case, http2: bool) -> Command {
    let url = format!("{}{}", front.base_url(), c.path);
    let version = if http2 { "--http2" } else { "--http1.1" };
    let mut cmd = Command::new("curl");
    for i in 0..2 {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--fail", version, "--compressed", "-o", "/dev/null"])
            .arg("--cacert")
            .arg(&mock.ca)
            .args(["-H", "content-type: application/json"])
            .args(["-H", &format!("x-test-tag: {tag}")])
            .args(["-d", c.body, &url]);
    }
    cmd
}

/// Every case through `front` with curl over HTTP/2, then chat over HTTP/1.1, then the official
/// SDKs (httpx with h2): concurrent streamed Chat Completions and streamed Messages.
fn every_api_exact_through(name: &str, front: &Front, mock: &Mock, daemon: &Daemon) {
    for c in CASES {
        let tag = format!("{name}-{}", c.tag);
        let (pid, _) = run_client(curl_twice(front, mock, &tag, c, true));
        let expect = json!({
            "provider": c.provider, "api": c.api, "model": c.model,
            "streaming": c.streaming, "http_version": "2",
        });
        check_exact(daemon, mock, pid, &tag, 2, &expect);
    }
    let tag = format!("{name}-chat-http1");
    let (pid, _) = run_client(curl_twice(front, mock, &tag, &CASES[0], false));
    check_exact(
        daemon,
        mock,
        pid,
        &tag,
        2,
        &json!({"api": "chat.completions", "http_version": "1.1"}),
    );

    // The SDKs: three concurrent streamed chats on one connection, then two streamed Messages.
    let tag = format!("{name}-sdk-openai");
    let mut cmd = sdk(front, mock, "openai_chat.py");
    cmd.args([
        "--http2",
        "--concurrent",
        "--calls",
        "3",
        "--stream",
        "--tag",
        &tag,
    ]);
    let (pid, _) = run_client(cmd);
    let (calls, _) = rows_of(daemon, pid, 3);
    let served = mock.served_with_tag(&tag);
    assert_eq!(served.len(), 3, "{served:#?}");
    for s in &served {
        // Concurrent streams finish in any order: pair them by usage.
        let call = calls
            .iter()
            .find(|c| u(&c["input_tokens"]) == u(&s["usage"]["input_tokens"]))
            .unwrap_or_else(|| panic!("a call with the usage of {s}: {calls:#?}"));
        assert_usage_matches(call, s);
        assert_eq!(call["complete"], true, "{call}");
        assert_eq!(call["usage_source"], "reported", "{call}");
        assert_eq!(call["http_version"], "2", "{call}");
    }
    let tag = format!("{name}-sdk-anthropic");
    let mut cmd = sdk(front, mock, "anthropic_messages.py");
    cmd.args(["--http2", "--calls", "2", "--stream", "--tag", &tag]);
    let (pid, _) = run_client(cmd);
    let expect =
        json!({"provider": "anthropic", "api": "messages", "streaming": true, "http_version": "2"});
    check_exact(daemon, mock, pid, &tag, 2, &expect);

    let status = daemon.cli_json(&["status"]);
    let capture = &status["capture"];
    assert_eq!(u(&capture["hpack_errors"]), 0, "{capture}");
    assert_eq!(u(&capture["http2_desynced"]), 0, "{capture}");
}

/// A Python SDK driver from tests/clients, pointed at the front.
fn sdk(front: &Front, mock: &Mock, script: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(clients().join(script))
        .arg("--base-url")
        .arg(front.base_url())
        .arg("--ca")
        .arg(&mock.ca);
    cmd
}

/// The response head the front gives curl for `case` (HTTP/2, gzip accepted), lower-cased.
fn response_head(front: &Front, mock: &Mock, name: &str, c: &Case) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--http2",
        "--compressed",
        "-D",
        "-",
        "-o",
        "/dev/null",
    ])
    .arg("--cacert")
    .arg(&mock.ca)
    .args(["-H", "content-type: application/json"])
    .args(["-H", &format!("x-test-tag: {name}-head")])
    .args(["-d", c.body])
    .arg(format!("{}{}", front.base_url(), c.path));
    let (_, out) = run_client(cmd);
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// The mock's own log says each request reached it over HTTP/1.1 from the front, compressed
/// (or not) as `gzip` says.
fn assert_served_via_front(mock: &Mock, name: &str, gzip_non_stream: bool) {
    let served: Vec<Value> = mock
        .served()
        .into_iter()
        .filter(|s| s["tag"].as_str().is_some_and(|t| t.starts_with(name)))
        .collect();
    assert!(served.len() >= 2 * CASES.len(), "{}", served.len());
    for s in &served {
        assert_eq!(s["protocol"], "http/1.1", "{s}");
        if s["stream"] == false && s["api"] != "embeddings" {
            assert_eq!(s["gzip"], gzip_non_stream, "{s}");
        }
    }
}

#[test]
fn hypercorn_h2_every_api_exact_with_content_length_and_gzip() {
    let daemon = Daemon::start();
    // The mock gzips non-stream bodies (it is asked to: curl --compressed, the SDKs); hypercorn
    // passes them on with their content-length.
    let mock = Mock::start(&["--plain"]);
    let front = Front::hypercorn(&mock);
    let head = response_head(&front, &mock, "hypercorn", &CASES[0]);
    assert!(
        head.contains("content-encoding: gzip") && head.contains("content-length:"),
        "{head}"
    );
    every_api_exact_through("hypercorn", &front, &mock, &daemon);
    assert_served_via_front(&mock, "hypercorn", true);
}

#[test]
fn nginx_tls_proxy_h2_gzip_on_every_api_exact() {
    let daemon = Daemon::start();
    // nginx does the compression: of chunked bodies and of streams, on the fly.
    let mock = Mock::start(&["--plain", "--gzip", "never"]);
    let front = Front::nginx(&mock);
    // nginx compressed both, with no content-length: the mock sent neither compressed.
    for c in [&CASES[0], &CASES[1]] {
        let head = response_head(&front, &mock, "nginx", c);
        assert!(
            head.contains("content-encoding: gzip") && !head.contains("content-length:"),
            "{head}"
        );
    }
    every_api_exact_through("nginx", &front, &mock, &daemon);
    assert_served_via_front(&mock, "nginx", false);
}

#[test]
fn go_net_http_h2_reverse_proxy_every_api_exact() {
    let daemon = Daemon::start();
    let mock = Mock::start(&["--plain"]);
    let front = Front::go(&mock);
    every_api_exact_through("go", &front, &mock, &daemon);
    assert_served_via_front(&mock, "go", true);
}

/// The coverage table's WebSocket row through each front: Codex (stripped, rustls over aws-lc,
/// located by analysis) makes its Responses call over a WebSocket upgraded by hypercorn
/// (wsproto; the front opens its own WebSocket to the mock), nginx and Go's ReverseProxy (both
/// pass the upgraded connection through), each exact.
#[test]
fn codex_websocket_exact_through_every_front() {
    let daemon = Daemon::start();
    let mock = Mock::start(&["--plain"]);
    let home = Scratch::new("codex-fronts-home");
    let expect = json!({
        "provider": "openai", "api": "responses", "streaming": true, "http_version": "1.1",
    });
    let fronts = [
        ("hypercorn", Front::hypercorn(&mock)),
        ("nginx", Front::nginx(&mock)),
        ("go", Front::go(&mock)),
    ];
    for (name, front) in &fronts {
        let tag = format!("{name}-codex-ws");
        let mut cmd = common::agents::codex_at(
            &common::agents::codex_bin(),
            &front.base_url(),
            &home.0,
            &tag,
            true,
        );
        cmd.env("CODEX_CA_CERTIFICATE", &mock.ca);
        let (pid, out) = run_client(cmd);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
            "{name}: {out:?}"
        );
        let served = mock.served_with_tag(&tag);
        assert_eq!(served.len(), 1, "{name}: {served:#?}");
        assert_eq!(served[0]["protocol"], "websocket", "{name}: {}", served[0]);
        check_exact(&daemon, &mock, pid, &tag, 1, &expect);
    }
    let capture = &daemon.cli_json(&["status"])["capture"];
    assert!(u(&capture["websocket_connections"]) >= 3, "{capture}");
    assert_eq!(u(&capture["websocket_desynced"]), 0, "{capture}");
}
