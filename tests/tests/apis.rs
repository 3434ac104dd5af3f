//! Privileged end-to-end tests of the API breadth: the OpenAI Responses API, Gemini
//! generateContent (SSE and the default JSON-array stream), Ollama's native NDJSON API, legacy
//! Completions and Embeddings, Azure deployment paths, and zstd-encoded responses — each
//! through its official client (or curl), the real daemon and the mock. Every call row must
//! carry exactly the usage the mock served, every ledger row the sums of its calls, and every
//! truncated stream must be recorded with `usage_source = "missing"`.
mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// One call of a stream (or body) the mock cut short: recorded, incomplete, usage missing
/// (zero tokens, never passed off as reported), and its session closed with it.
fn check_truncated(daemon: &Daemon, mock: &Mock, pid: u32, tag: &str, expect: &Value) {
    let (calls, row) = rows_of(daemon, pid, 1);
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), 1, "{served:#?}");
    assert_eq!(served[0]["truncated"], true, "{}", served[0]);
    assert_eq!(served[0]["usage_sent"], false);
    let call = &calls[0];
    assert_eq!(call["usage_source"], "missing", "{call}");
    assert_eq!(call["complete"], false, "{call}");
    for field in TOKEN_FIELDS {
        assert_eq!(u(&call[field]), 0, "{field} of {call}");
    }
    for (key, want) in expect.as_object().unwrap() {
        assert_eq!(&call[key], want, "{key} of {call}");
    }
    assert_ledger_sums(&calls, &row);
}

/// Runs a driver with `--tag tag` and the given arguments; returns its pid.
fn run_py(mock: &Mock, script: &str, tag: &str, args: &[&str]) -> u32 {
    let mut all = vec!["--tag", tag];
    all.extend_from_slice(args);
    run_client(py_client(script, mock, &all)).0
}

/// A truncated call: the mock cuts the response, the client must fail.
fn run_py_truncated(mock: &Mock, script: &str, tag: &str, args: &[&str]) -> u32 {
    let mut all = vec!["--header", "x-mock-truncate=1", "--expect-error"];
    all.extend_from_slice(args);
    run_py(mock, script, tag, &all)
}

fn per_mtok(tokens: &Value) -> f64 {
    u(tokens) as f64 / 1e6
}

#[test]
fn responses_api_exact_usage_stream_and_not_and_truncated() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, stream) in [("resp-plain", false), ("resp-stream", true)] {
        let mut args = vec!["--model", "gpt-5-mini", "--calls", "2"];
        if stream {
            args.push("--stream");
        }
        let pid = run_py(&mock, "openai_responses.py", tag, &args);
        let expect = json!({"provider": "openai", "api": "responses", "streaming": stream});
        let calls = check_exact(&daemon, &mock, pid, tag, 2, &expect);
        for call in &calls {
            assert!(u(&call["cache_read_tokens"]) > 0 && u(&call["reasoning_tokens"]) > 0);
            // gpt-5-mini: 0.25 in, 0.025 cache read, 2.00 out per Mtok.
            let want = (per_mtok(&call["input_tokens"]) - per_mtok(&call["cache_read_tokens"]))
                * 0.25
                + per_mtok(&call["cache_read_tokens"]) * 0.025
                + per_mtok(&call["output_tokens"]) * 2.00;
            assert!(approx(call["cost_usd"].as_f64().unwrap(), want), "{call}");
        }
    }
    let tag = "resp-truncated";
    let pid = run_py_truncated(&mock, "openai_responses.py", tag, &["--stream"]);
    check_truncated(
        &daemon,
        &mock,
        pid,
        tag,
        &json!({"api": "responses", "streaming": true}),
    );
}

#[test]
fn gemini_generate_content_sdk_sse_json_array_and_truncated() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, mode) in [
        ("gemini-plain", None),
        ("gemini-sse", Some("--stream")),
        ("gemini-array", Some("--json-array")),
    ] {
        let mut args = vec!["--model", "gemini-2.5-flash", "--calls", "2"];
        args.extend(mode);
        let pid = run_py(&mock, "gemini_generate.py", tag, &args);
        // The host is the mock's address: the provider falls back to the API family.
        let expect = json!({
            "provider": "gemini", "api": "generate_content", "model": "gemini-2.5-flash",
            "streaming": mode.is_some(),
        });
        let calls = check_exact(&daemon, &mock, pid, tag, 2, &expect);
        for call in &calls {
            // Thoughts are outside candidates: output includes them.
            assert!(u(&call["reasoning_tokens"]) > 0);
            assert!(u(&call["output_tokens"]) > u(&call["reasoning_tokens"]));
            // gemini-2.5-flash: 0.30 in, 0.03 cache read, 2.50 out per Mtok.
            let want = (per_mtok(&call["input_tokens"]) - per_mtok(&call["cache_read_tokens"]))
                * 0.30
                + per_mtok(&call["cache_read_tokens"]) * 0.03
                + per_mtok(&call["output_tokens"]) * 2.50;
            assert!(approx(call["cost_usd"].as_f64().unwrap(), want), "{call}");
        }
    }
    for (tag, mode) in [
        ("gemini-sse-cut", "--stream"),
        ("gemini-array-cut", "--json-array"),
    ] {
        let pid = run_py_truncated(&mock, "gemini_generate.py", tag, &[mode]);
        let expect =
            json!({"api": "generate_content", "model": "gemini-2.5-flash", "streaming": true});
        check_truncated(&daemon, &mock, pid, tag, &expect);
    }
}

#[test]
fn ollama_native_chat_and_generate_ndjson_and_truncated() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, api, stream) in [
        ("ollama-chat", "chat", false),
        ("ollama-chat-stream", "chat", true),
        ("ollama-gen", "generate", false),
        ("ollama-gen-stream", "generate", true),
    ] {
        let mut args = vec!["--api", api, "--model", "llama3.2", "--calls", "2"];
        if stream {
            args.push("--stream");
        }
        let pid = run_py(&mock, "ollama_api.py", tag, &args);
        let expect = json!({
            "provider": "ollama", "api": format!("ollama.{api}"), "model": "llama3.2",
            "streaming": stream,
        });
        let calls = check_exact(&daemon, &mock, pid, tag, 2, &expect);
        for call in &calls {
            assert!(u(&call["input_tokens"]) > 0 && u(&call["output_tokens"]) > 0);
            // A local model has no price: tokens count, cost is null.
            assert!(call["cost_usd"].is_null(), "{call}");
        }
    }
    let tag = "ollama-cut";
    let pid = run_py_truncated(&mock, "ollama_api.py", tag, &["--stream"]);
    check_truncated(
        &daemon,
        &mock,
        pid,
        tag,
        &json!({"api": "ollama.chat", "streaming": true}),
    );
}

#[test]
fn legacy_completions_and_embeddings_and_truncated() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, api, stream) in [
        ("legacy-comp", "completions", false),
        ("legacy-comp-stream", "completions", true),
        ("legacy-emb", "embeddings", false),
    ] {
        let mut args = vec!["--api", api, "--calls", "2"];
        if stream {
            args.push("--stream");
        }
        let pid = run_py(&mock, "openai_legacy.py", tag, &args);
        let expect = json!({"provider": "openai", "api": api, "streaming": stream});
        let calls = check_exact(&daemon, &mock, pid, tag, 2, &expect);
        for call in &calls {
            let input = per_mtok(&call["input_tokens"]);
            let want = if api == "embeddings" {
                assert_eq!(u(&call["output_tokens"]), 0, "{call}");
                input * 0.02 // text-embedding-3-small
            } else {
                input * 1.50 + per_mtok(&call["output_tokens"]) * 2.00 // gpt-3.5-turbo-instruct
            };
            assert!(approx(call["cost_usd"].as_f64().unwrap(), want), "{call}");
        }
    }
    for (tag, args) in [
        ("legacy-comp-cut", &["--api", "completions", "--stream"][..]),
        ("legacy-emb-cut", &["--api", "embeddings"][..]),
    ] {
        let pid = run_py_truncated(&mock, "openai_legacy.py", tag, args);
        check_truncated(&daemon, &mock, pid, tag, &json!({"api": args[1]}));
    }
}

/// curl against the mock with a `Host` header, so the daemon sees the vendor's host name.
fn curl(mock: &Mock, path: &str, host: &str, headers: &[&str], body: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http1.1", "-o", "/dev/null", "--cacert"])
        .arg(&mock.ca)
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("Host: {host}"));
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(["-d", body])
        .arg(format!("{}{path}", mock.base_url()));
    cmd
}

#[test]
fn azure_deployment_path_without_model_and_provider_by_host() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let tag = "azure";
    // Azure bodies may leave `model` out: the deployment names it.
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, _) = run_client(curl(
        &mock,
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        "my-resource.openai.azure.com",
        &["api-key: mock", &format!("x-test-tag: {tag}")],
        body,
    ));
    let expect = json!({
        "provider": "azure_openai", "api": "chat.completions", "model": "gpt-4o-mini",
        "streaming": false, "server_address": "my-resource.openai.azure.com",
    });
    let calls = check_exact(&daemon, &mock, pid, tag, 1, &expect);
    assert!(approx(
        calls[0]["cost_usd"].as_f64().unwrap(),
        gpt_4o_mini_cost(&calls[0])
    ));
    // An OpenAI-compatible gateway host is named too (same parser).
    let tag = "groq";
    let body = r#"{"model":"llama-3.3-70b-versatile","messages":[{"role":"user","content":"hi"}]}"#;
    let (pid, _) = run_client(curl(
        &mock,
        "/v1/chat/completions",
        "api.groq.com",
        &[&format!("x-test-tag: {tag}")],
        body,
    ));
    let expect = json!({"provider": "groq", "api": "chat.completions"});
    check_exact(&daemon, &mock, pid, tag, 1, &expect);
}

#[test]
fn zstd_encoded_responses_json_and_stream() {
    let daemon = Daemon::start();
    let mock = Mock::start(&["--zstd", "always"]);
    for (tag, stream) in [("zstd-plain", false), ("zstd-stream", true)] {
        let body = if stream {
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        };
        let (pid, _) = run_client(curl(
            &mock,
            "/v1/chat/completions",
            &format!("127.0.0.1:{}", mock.port),
            &["Accept-Encoding: zstd", &format!("x-test-tag: {tag}")],
            body,
        ));
        assert_eq!(
            mock.served_with_tag(tag)[0]["zstd"],
            true,
            "the mock used zstd"
        );
        let expect = json!({"provider": "openai", "model": "gpt-4o-mini", "streaming": stream});
        check_exact(&daemon, &mock, pid, tag, 1, &expect);
    }
}

/// `gnutls-cli` (GnuTLS's own client) sends one raw HTTP/1.1 request from stdin and prints
/// the response: the GnuTLS probes (`gnutls_record_send` / `gnutls_record_recv`).
fn gnutls_cli(mock: &Mock, tag: &str, body: &str) -> (u32, std::process::Output) {
    use std::io::Write;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nx-test-tag: {tag}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        mock.port,
        body.len()
    );
    let mut child = Command::new("gnutls-cli")
        .arg("--x509cafile")
        .arg(&mock.ca)
        .args(["-p", &mock.port.to_string(), "127.0.0.1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gnutls-cli (Debian gnutls-bin; `cargo xtask test` installs it)");
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "gnutls-cli hung");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gnutls-cli: {out:?}");
    (pid, out)
}

#[test]
fn gnutls_client_exact_usage_stream_and_not() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, stream) in [("gnutls-plain", false), ("gnutls-stream", true)] {
        let body = if stream {
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
        };
        let (pid, out) = gnutls_cli(&mock, tag, body);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1 200"),
            "{out:?}"
        );
        let expect = json!({"provider": "openai", "model": "gpt-4o-mini", "streaming": stream, "comm": "gnutls-cli"});
        let calls = check_exact(&daemon, &mock, pid, tag, 1, &expect);
        assert!(approx(
            calls[0]["cost_usd"].as_f64().unwrap(),
            gpt_4o_mini_cost(&calls[0])
        ));
    }
    // Probed at its first contact through libgnutls.
    let status = daemon.cli_json(&["status"]);
    let gnutls = status["tls_libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.contains("libgnutls.so"))
        })
        .unwrap_or_else(|| panic!("libgnutls probed: {}", status["tls_libraries"]))
        .clone();
    assert_eq!(
        gnutls["symbols"],
        json!([
            "gnutls_record_send",
            "gnutls_record_recv",
            "gnutls_handshake"
        ]),
        "{gnutls}"
    );
}

/// A local model server over plain HTTP (the mock without TLS, as Ollama serves): captured from
/// the client's syscalls (connect marks the socket, write/sendto and read/recvfrom carry the
/// bytes), no TLS library involved.
#[test]
fn plain_http_local_server_ollama_and_openai_compatible() {
    let mock = Mock::start(&["--plain"]);
    let daemon = Daemon::watching_plain_port("plain", mock.port);
    // The read hook is off while no socket needs its reads: the first client's connect to
    // the plain port stops it until the hook is on (each reply below is exact).
    let read_hook = |daemon: &Daemon| {
        let status = daemon.cli_json(&["status"]);
        let listed = status["tracepoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "sock:sock_recv_length");
        assert_eq!(status["read_hook"]["attached"], listed, "{status:#}");
        status
    };
    let status = read_hook(&daemon);
    assert_eq!(status["read_hook"]["attached"], false, "{status:#}");
    let plain_url = format!("http://127.0.0.1:{}", mock.port);
    let driver = |script: &str, tag: &str, args: &[&str]| -> u32 {
        let mut cmd = Command::new(python());
        cmd.arg(clients().join(script))
            .args(["--base-url", &plain_url, "--ca"])
            .arg(&mock.ca)
            .args(["--tag", tag])
            .args(args);
        run_client(cmd).0
    };
    for (tag, stream) in [("plain-ollama", false), ("plain-ollama-stream", true)] {
        let mut args = vec!["--api", "chat", "--model", "llama3.2", "--calls", "2"];
        if stream {
            args.push("--stream");
        }
        let pid = driver("ollama_api.py", tag, &args);
        let expect = json!({
            "provider": "ollama", "api": "ollama.chat", "model": "llama3.2", "streaming": stream,
        });
        check_exact(&daemon, &mock, pid, tag, 2, &expect);
    }
    // vLLM / llama.cpp speak the OpenAI API over plain HTTP.
    let tag = "plain-openai";
    let pid = driver("openai_chat.py", tag, &["--calls", "2", "--stream"]);
    let expect = json!({"provider": "openai", "api": "chat.completions", "streaming": true});
    check_exact(&daemon, &mock, pid, tag, 2, &expect);
    let status = read_hook(&daemon);
    let contact = &status["first_contact"];
    assert!(u(&contact["kernel"]["read_holds"]) >= 1, "{contact:#}");
    assert!(u(&contact["stats"]["read_holds"]) >= 1, "{contact:#}");
    assert_eq!(u(&contact["stats"]["read_hold_timeouts"]), 0, "{contact:#}");
    // Off again once the clients are gone (their sockets closed, their sessions over).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = read_hook(&daemon);
        let hook = &status["read_hook"];
        if hook["attached"] == false {
            assert!(
                u(&hook["attaches"]) >= 1 && u(&hook["detaches"]) >= 1,
                "{hook:#}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still attached: {status:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// HTTP/2 (ALPN h2): curl makes two calls as two streams of one connection; the official
/// `openai` SDK over httpx with h2 makes three streamed calls *at once* from threads sharing one
/// client, so their streams interleave on one connection. Each call carries exactly what the
/// mock served, decoded from frames with the connection's HPACK state.
#[test]
fn http2_curl_and_python_httpx_concurrent_streams_exact_usage() {
    let daemon = Daemon::start();
    let mock = Mock::start(&["--h2"]);
    let tag = "h2-curl";
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--http2",
        "--compressed",
        "-o",
        "/dev/null",
    ])
    .arg("--cacert")
    .arg(&mock.ca)
    .args(["-H", "content-type: application/json"])
    .args(["-H", &format!("x-test-tag: {tag}")])
    .args(["-d", body, &url, &url]);
    let (pid, _) = run_client(cmd);
    let served = mock.served_with_tag(tag);
    assert!(
        served
            .iter()
            .all(|s| s["protocol"] == "h2" && s["gzip"] == true),
        "{served:#?}"
    );
    assert_eq!(served[0]["conn"], served[1]["conn"], "one connection");
    let expect = json!({"provider": "openai", "model": "gpt-4o-mini", "streaming": false, "http_version": "2"});
    let calls = check_exact(&daemon, &mock, pid, tag, 2, &expect);
    for call in &calls {
        assert!(approx(
            call["cost_usd"].as_f64().unwrap(),
            gpt_4o_mini_cost(call)
        ));
    }

    let tag = "h2-httpx";
    let pid = run_py(
        &mock,
        "openai_chat.py",
        tag,
        &["--http2", "--concurrent", "--calls", "3", "--stream"],
    );
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), 3, "{served:#?}");
    assert!(
        served
            .iter()
            .all(|s| s["protocol"] == "h2" && s["conn"] == served[0]["conn"]),
        "three streams of one HTTP/2 connection: {served:#?}"
    );
    let (calls, _) = rows_of(&daemon, pid, 3);
    // Concurrent streams finish in any order: pair calls with served requests by usage.
    for s in &served {
        let call = calls
            .iter()
            .find(|c| u(&c["input_tokens"]) == u(&s["usage"]["input_tokens"]))
            .unwrap_or_else(|| panic!("a call with the usage of {s}: {calls:#?}"));
        assert_usage_matches(call, s);
        assert_eq!(call["usage_source"], "reported", "{call}");
        assert_eq!(call["complete"], true, "{call}");
        assert_eq!(call["http_version"], "2", "{call}");
        assert_eq!(call["streaming"], true, "{call}");
    }
    let status = daemon.cli_json(&["status"]);
    let capture = &status["capture"];
    assert!(u(&capture["http2_connections"]) >= 2, "{capture}");
    assert!(u(&capture["http2_streams"]) >= 5, "{capture}");
    assert_eq!(u(&capture["hpack_errors"]), 0, "{capture}");
}

/// One OpenSSL `SSL*` carries two connections (`SSL_clear` between them, through libssl
/// itself): the first response is abandoned after its head, the second is read whole. The
/// handshake probe ends the first connection's state before the second's bytes arrive, so
/// the first call is recorded incomplete (usage missing) and the second exact; the second
/// response is never parsed as the rest of the first.
#[test]
fn ssl_pointer_reused_by_a_new_connection_is_not_mixed_up() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let reused = |d: &Daemon| u(&d.cli_json(&["status"])["pipeline"]["ssl_pointers_reused"]);
    let before = reused(&daemon);
    let tag = "ssl-reuse";
    let (pid, out) = run_client(py_client("ssl_reuse.py", &mock, &["--tag", tag]));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), 2, "{served:#?}");
    assert_ne!(served[0]["conn"], served[1]["conn"], "two connections");
    let (calls, _) = rows_of(&daemon, pid, 2);
    let first = calls.iter().find(|c| c["streaming"] == true).unwrap();
    assert_eq!(first["complete"], false, "{first}");
    assert_eq!(first["usage_source"], "missing", "{first}");
    let second = calls.iter().find(|c| c["streaming"] == false).unwrap();
    assert_eq!(second["complete"], true, "{second}");
    assert_eq!(second["usage_source"], "reported", "{second}");
    assert_usage_matches(second, &served[1]);
    assert!(
        reused(&daemon) > before,
        "the SSL pointer's reuse was seen: {}",
        daemon.cli_json(&["status"])["pipeline"]
    );
}
