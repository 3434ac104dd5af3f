//! Privileged end-to-end tests of the foundation: the real daemon with real probes, the
//! mock LLM server, and unmodified real clients (Python SDKs, node, curl). Each test starts
//! its own daemon and mock, and selects the rows of the processes it started.
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// The rows of a one-process session: `n` calls and one ledger row, matching the mock.
fn check_single_agent_session(
    daemon: &Daemon,
    mock: &Mock,
    pid: u32,
    tag: &str,
    n: usize,
    expect: &Value,
) -> (Vec<Value>, Value) {
    daemon.wait_for(
        &format!("{n} calls and a ledger row of pid {pid}"),
        |c, l| calls_of(c, pid).len() >= n && !ledger_of(l, pid).is_empty(),
    );
    let calls = calls_of(&daemon.calls(), pid);
    let served = mock.served_with_tag(tag);
    assert_eq!(calls.len(), n, "calls of pid {pid}: {calls:#?}");
    assert_eq!(served.len(), n, "mock served for tag {tag}: {served:#?}");
    let ledger = ledger_of(&daemon.ledger(), pid);
    assert_eq!(ledger.len(), 1, "exactly one ledger row: {ledger:#?}");
    let row = ledger[0].clone();

    // Pair rows with served calls by usage, not file order: each mock call's usage differs,
    // and a row's position in calls.jsonl is when its exchange ended. Every token field is
    // still compared exactly below.
    let by_usage = |v: &Value| (u(&v["input_tokens"]), u(&v["output_tokens"]));
    let mut calls = calls;
    calls.sort_by_key(|c| by_usage(c));
    let mut served = served;
    served.sort_by_key(|s| by_usage(&s["usage"]));
    for (call, served) in calls.iter().zip(&served) {
        assert_usage_matches(call, served);
        assert_eq!(call["session_id"], row["session_id"]);
        assert_eq!(u(&call["depth"]), 0);
        assert_eq!(u(&call["status"]), 200);
        assert_eq!(call["http_version"], "1.1");
        assert_eq!(call["usage_source"], "reported");
        assert_eq!(
            u(&call["total_tokens"]),
            u(&call["input_tokens"]) + u(&call["output_tokens"])
        );
        for (key, want) in expect.as_object().unwrap() {
            assert_eq!(&call[key], want, "{key} of {call}");
        }
        assert!(call["started_at"].as_str().unwrap() <= call["ended_at"].as_str().unwrap());
    }
    // The ledger row's totals are the sums of its calls.
    for field in TOKEN_FIELDS {
        let sum: u64 = calls.iter().map(|c| u(&c[field])).sum();
        assert_eq!(u(&row[field]), sum, "ledger {field}");
    }
    let cost: f64 = calls.iter().map(|c| c["cost_usd"].as_f64().unwrap()).sum();
    assert!(
        approx(row["total_cost_usd"].as_f64().unwrap(), cost),
        "{row}"
    );
    assert_eq!(u(&row["call_count"]), n as u64);
    assert_eq!(u(&row["agent_count"]), 1);
    assert_eq!(u(&row["depth_max"]), 0);
    assert_eq!(u(&row["ceiling_hits"]), 0);
    assert_eq!(row["outcome"], "completed");
    (calls, row)
}

#[test]
fn status_lists_probes_and_libssl() {
    let daemon = Daemon::start();
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["ok"], true, "{status:#}");
    assert_eq!(status["scope"], "agents", "{status:#}");
    // The four process tracepoints and the socket-layer ones (first contact, plain HTTP,
    // metered sockets); no syscall tracepoint, which every process on the host would pay,
    // and no pre-send hook without ceilings (every TCP send would run it for nothing).
    let tracepoints: Vec<&str> = status["tracepoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "task:task_newtask",
        "sched:sched_process_fork",
        "sched:sched_process_exec",
        "sched:sched_process_exit",
        "sock:inet_sock_set_state",
        "sock:sock_send_length",
    ] {
        assert!(tracepoints.contains(&t), "{t} in {tracepoints:?}");
    }
    // The read hook (the end of every socket read) is off while no socket needs its reads.
    assert!(
        !tracepoints.contains(&"sock:sock_recv_length"),
        "{tracepoints:?}"
    );
    assert_eq!(status["read_hook"]["attached"], false, "{status:#}");
    assert!(
        !tracepoints.contains(&"tcp:tcp_sendmsg_locked"),
        "{tracepoints:?}"
    );
    assert!(
        !tracepoints.iter().any(|t| t.starts_with("syscalls:")),
        "{tracepoints:?}"
    );
    // Probes are per process: nothing is attached before a process contacts an LLM endpoint.
    assert_eq!(u(&status["probed_processes"]["now"]), 0, "{status:#}");
    // A curl call to the mock (an IP-literal endpoint) is held, probed and continued: its
    // libssl is then listed, with the process counted.
    let mock = Mock::start(&[]);
    let (pid, _) = run_client(curl_chat(&mock, "status-curl", false));
    check_exact(
        &daemon,
        &mock,
        pid,
        "status-curl",
        1,
        &serde_json::json!({"provider": "openai"}),
    );
    let status = daemon.cli_json(&["status"]);
    let libs = status["tls_libraries"].as_array().unwrap();
    assert!(
        libs.iter()
            .any(|l| l["path"].as_str().unwrap().contains("libssl.so")),
        "{libs:#?}"
    );
    let contact = &status["first_contact"];
    assert!(u(&contact["stats"]["holds"]) >= 1, "{contact}");
    assert!(u(&contact["stats"]["probed"]) >= 1, "{contact}");
    assert_eq!(u(&contact["stats"]["timeouts"]), 0, "{contact}");
    // Deciding it put the read hook on (an agent's sockets may need their reads seen).
    assert!(u(&status["read_hook"]["attaches"]) >= 1, "{status:#}");
    for counter in ["ringbuf_full_events", "truncated_bytes", "proc_events"] {
        assert!(status["kernel_drops"][counter].is_u64(), "{counter}");
    }
    // The human form names the same things.
    let text = String::from_utf8(daemon.cli(&["status"]).stdout).unwrap();
    assert!(
        text.contains("all probes attached") && text.contains("libssl.so"),
        "{text}"
    );
    // Every section of the JSON is in it, by its name.
    for (section, _) in status.as_object().unwrap() {
        if ["ok", "version", "uptime_secs", "data_dir", "live_sessions"].contains(&section.as_str())
        {
            continue;
        }
        let named = match section.as_str() {
            "kernel_side" => "kernel side:",
            "tracepoints" => "tracepoints:",
            "tls_libraries" => "TLS libraries:",
            "processes" => "processes:",
            "tls_not_covered" | "attach_failures" => continue, // listed when not empty
            other => other,
        };
        assert!(text.contains(named), "no {section} ({named}) in:\n{text}");
    }
    assert!(
        text.contains("sinks:") && text.contains("ceilings:"),
        "{text}"
    );
    // The control socket is root-only.
    let mode = std::fs::metadata(&daemon.socket).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[test]
fn python_openai_chat_completions_exact_usage_and_cost() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, stream) in [("py-openai-plain", false), ("py-openai-stream", true)] {
        let mut args = vec!["--model", "gpt-4o-mini", "--calls", "3", "--tag", tag];
        if stream {
            args.push("--stream");
        }
        let (pid, _) = run_client(py_client("openai_chat.py", &mock, &args));
        let expect = serde_json::json!({
            "provider": "openai", "api": "chat.completions", "model": "gpt-4o-mini", "streaming": stream,
        });
        let (calls, _) = check_single_agent_session(&daemon, &mock, pid, tag, 3, &expect);
        for call in &calls {
            let want = gpt_4o_mini_cost(call);
            assert!(approx(call["cost_usd"].as_f64().unwrap(), want), "{call}");
            assert!(
                u(&call["cache_read_tokens"]) > 0,
                "the mock sends cached tokens"
            );
        }
    }
}

#[test]
fn python_openai_stream_without_include_usage_is_recorded_as_missing() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let tag = "py-openai-no-usage";
    let (pid, _) = run_client(py_client(
        "openai_chat.py",
        &mock,
        &["--stream", "--no-include-usage", "--tag", tag],
    ));
    daemon.wait_for("the call row", |c, _| !calls_of(c, pid).is_empty());
    let call = &calls_of(&daemon.calls(), pid)[0];
    assert_eq!(call["usage_source"], "missing", "{call}");
    assert_eq!(u(&call["input_tokens"]), 0);
    assert_eq!(mock.served_with_tag(tag)[0]["usage_sent"], false);
}

#[test]
fn python_anthropic_messages_cache_tokens_included() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, stream) in [("py-anthropic-plain", false), ("py-anthropic-stream", true)] {
        let mut args = vec![
            "--model",
            "claude-sonnet-4-5",
            "--calls",
            "2",
            "--tag",
            tag,
            "--usage",
            r#"{"input_tokens":5000,"output_tokens":700,"cache_read_tokens":3000,"cache_write_tokens":1500,"reasoning_tokens":0}"#,
        ];
        if stream {
            args.push("--stream");
        }
        let (pid, _) = run_client(py_client("anthropic_messages.py", &mock, &args));
        let expect = serde_json::json!({
            "provider": "anthropic", "api": "messages", "model": "claude-sonnet-4-5", "streaming": stream,
            "input_tokens": 5000, "cache_read_tokens": 3000, "cache_write_tokens": 1500, "output_tokens": 700,
        });
        let (calls, _) = check_single_agent_session(&daemon, &mock, pid, tag, 2, &expect);
        // claude-sonnet-4-5: 3 in, 15 out, 0.30 cache read, 3.75 cache write per Mtok.
        let want = (500.0 * 3.0 + 3000.0 * 0.30 + 1500.0 * 3.75 + 700.0 * 15.0) / 1e6;
        for call in &calls {
            assert!(approx(call["cost_usd"].as_f64().unwrap(), want), "{call}");
        }
    }
}

#[test]
fn node_openai_package_through_node_static_openssl() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    for (tag, stream) in [("node-plain", false), ("node-stream", true)] {
        let mut args = vec!["--model", "gpt-4o-mini", "--calls", "2", "--tag", tag];
        if stream {
            args.push("--stream");
        }
        let (pid, _) = run_client(node_client(&mock, &args));
        let expect =
            serde_json::json!({"provider": "openai", "model": "gpt-4o-mini", "streaming": stream});
        check_single_agent_session(&daemon, &mock, pid, tag, 2, &expect);
    }
    let status = daemon.cli_json(&["status"]);
    assert!(
        status["tls_libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"].as_str().unwrap().ends_with("/node")),
        "node's own OpenSSL is attached: {status:#}"
    );
}

#[test]
fn curl_http11_gzip_response() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let tag = "curl-gzip";
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http1.1", "--compressed", "--cacert"])
        .arg(&mock.ca)
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("x-test-tag: {tag}"))
        .args(["-d", body])
        .arg(format!("{}/v1/chat/completions", mock.base_url()));
    let (pid, out) = run_client(cmd);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reply["usage"]["prompt_tokens"].is_u64());
    assert_eq!(
        mock.served_with_tag(tag)[0]["gzip"],
        true,
        "the mock gzipped it"
    );
    let expect = serde_json::json!({"provider": "openai", "streaming": false});
    check_single_agent_session(&daemon, &mock, pid, tag, 1, &expect);
}

#[test]
fn large_request_split_across_many_writes() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let tag = "big-prompt";
    // ~120 KiB body (one argv string may not exceed 128 KiB): written by the SDK in large
    // SSL writes, each split by the probe into 16 KiB ring-buffer chunks.
    let prompt = "lorem ipsum dolor sit amet ".repeat(4500);
    let (pid, _) = run_client(py_client(
        "openai_chat.py",
        &mock,
        &["--calls", "2", "--tag", tag, "--prompt", &prompt],
    ));
    let expect = serde_json::json!({"provider": "openai"});
    let (calls, _) = check_single_agent_session(&daemon, &mock, pid, tag, 2, &expect);
    assert!(u(&calls[0]["request_bytes"]) > 120_000, "{}", calls[0]);
}

#[test]
fn agent_tree_one_session_with_depths() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let py = python();
    let script = clients().join("tree_agent.py");
    let agent = |tag: &str, children: &[String]| -> String {
        let mut s = format!(
            "{} {} --base-url {} --ca {} --calls 1 --tag {tag}",
            py.display(),
            script.display(),
            mock.base_url(),
            mock.ca.display()
        );
        for c in children {
            s.push_str(&format!(" --child \"{}\"", c.replace('"', "\\\"")));
        }
        s
    };
    // root → bash → a → bash → a1, and root → bash → b (bash is a tool process).
    let a1 = agent("tree-a1", &[]);
    let a = agent("tree-a", &[a1]);
    let b = agent("tree-b", &[]);
    let root_cmd = agent("tree-root", &[a, b]);
    let (root_pid, _) = run_client({
        let mut c = Command::new("bash");
        c.args(["-c", &format!("exec {root_cmd}")]);
        c
    });
    daemon.wait_for("the tree's ledger row", |_, l| {
        !ledger_of(l, root_pid).is_empty()
    });
    let row = &ledger_of(&daemon.ledger(), root_pid)[0];
    let sid = row["session_id"].clone();
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["session_id"] == sid)
        .collect();
    let depth_of = |tag: &str| -> u64 {
        let served = mock.served_with_tag(tag);
        assert_eq!(served.len(), 1, "{tag}");
        // Match the call by its exact usage (each mock call differs).
        let c = calls
            .iter()
            .find(|c| {
                c["input_tokens"] == served[0]["usage"]["input_tokens"]
                    && c["output_tokens"] == served[0]["usage"]["output_tokens"]
            })
            .unwrap_or_else(|| panic!("no call of {tag} in the session: {calls:#?}"));
        u(&c["depth"])
    };
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(depth_of("tree-root"), 0);
    assert_eq!(depth_of("tree-a"), 1);
    assert_eq!(depth_of("tree-b"), 1);
    assert_eq!(depth_of("tree-a1"), 2);
    assert_eq!(
        u(&row["agent_count"]),
        4,
        "bash processes are not agents: {row}"
    );
    assert_eq!(u(&row["depth_max"]), 2);
    assert_eq!(u(&row["call_count"]), 4);
    let sum: u64 = calls.iter().map(|c| u(&c["total_tokens"])).sum();
    assert_eq!(u(&row["total_tokens"]), sum);
    // No process of the tree opened a session of its own.
    let pids: Vec<u64> = calls.iter().map(|c| u(&c["pid"])).collect();
    for r in daemon.ledger() {
        if r["session_id"] != sid {
            assert!(
                !pids.contains(&u(&r["root_pid"])),
                "a sub-agent became a root: {r}"
            );
        }
    }
}

#[test]
fn no_prompt_or_completion_text_is_stored() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let canary = "zq9-canary-7f3e1b";
    let prompt = format!("please repeat the secret word {canary} back to me");
    let (pid, out) = run_client(py_client(
        "openai_chat.py",
        &mock,
        &["--tag", "canary", "--prompt", &prompt],
    ));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(canary));
    daemon.wait_for("the canary session's ledger row", |_, l| {
        !ledger_of(l, pid).is_empty()
    });
    assert_eq!(
        calls_of(&daemon.calls(), pid).len(),
        1,
        "the call itself was accounted"
    );
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(&daemon.data_dir).unwrap().flatten() {
        let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
        haystacks.push((entry.path().display().to_string(), text));
    }
    assert!(haystacks.len() >= 2, "calls.jsonl and ledger.jsonl exist");
    for args in [&["sessions"][..], &["status", "--json"], &["tree"]] {
        let out = daemon.cli(args);
        haystacks.push((
            format!("agentwatch {args:?}"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    haystacks.push(("daemon log".into(), daemon.stop()));
    for (name, text) in &haystacks {
        assert!(!text.contains(canary), "{name} contains the prompt text");
    }
}

#[test]
fn restart_continues_a_live_session_and_writes_one_ledger_row() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let sub = format!(
        "{} {} --base-url {} --ca {} --calls 1 --tag restart-sub",
        python().display(),
        clients().join("tree_agent.py").display(),
        mock.base_url(),
        mock.ca.display()
    );
    // The root calls once, waits (bounded) for the test to say go (the daemon is killed and
    // restarted meanwhile: a SIGKILLed daemon's uprobes take seconds to go), then a
    // sub-agent calls once.
    let go = Scratch::new("restart-go");
    let go_file = go.0.join("go");
    let wait_go = format!(
        "for i in $(seq 600); do [ -e '{}' ] && exit 0; sleep 0.1; done; exit 1",
        go_file.display()
    );
    let mut root = py_client(
        "tree_agent.py",
        &mock,
        &[
            "--calls",
            "1",
            "--tag",
            "restart-root",
            "--child",
            &wait_go,
            "--child",
            &sub,
        ],
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let root_pid = root.id();
    daemon.wait_for("the root's first call", |c, _| {
        !calls_of(c, root_pid).is_empty()
    });
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, &[]);
    // While the root waits, the restarted daemon shows the continued session live.
    let sessions = daemon.cli_json(&["sessions"]);
    let live = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| u(&s["root_pid"]) == root_pid as u64)
        .unwrap_or_else(|| panic!("session of {root_pid} not live after restart: {sessions:#}"))
        .clone();
    assert_eq!(u(&live["calls"]), 1, "{live}");
    let tree = daemon.cli_json(&["tree", live["session_id"].as_str().unwrap()]);
    assert_eq!(
        u(&tree["trees"][0]["agents"][0]["pid"]),
        root_pid as u64,
        "{tree:#}"
    );
    let text = String::from_utf8(daemon.cli(&["sessions"]).stdout).unwrap();
    assert!(
        text.contains(live["session_id"].as_str().unwrap()),
        "{text}"
    );
    std::fs::write(&go_file, "").unwrap();
    assert!(root.wait().unwrap().success());
    daemon.wait_for("the session's ledger row", |_, l| {
        !ledger_of(l, root_pid).is_empty()
    });
    let rows = ledger_of(&daemon.ledger(), root_pid);
    assert_eq!(rows.len(), 1, "one ledger row: {rows:#?}");
    let row = &rows[0];
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["session_id"] == row["session_id"])
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "both calls, before and after the restart: {calls:#?}"
    );
    assert_eq!(u(&row["call_count"]), 2);
    assert_eq!(
        u(&row["depth_max"]),
        1,
        "the sub-agent joined at depth 1: {row}"
    );
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "total_tokens",
    ] {
        let sum: u64 = calls.iter().map(|c| u(&c[field])).sum();
        assert_eq!(u(&row[field]), sum, "{field}");
    }
    for (call, tag) in calls.iter().zip(["restart-root", "restart-sub"]) {
        assert_usage_matches(call, &mock.served_with_tag(tag)[0]);
    }
    // A second restart does not write the row again (a restarted daemon closes sessions
    // before it answers on its socket, which `start_in` waits for).
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, &[]);
    assert_eq!(ledger_of(&daemon.ledger(), root_pid).len(), 1);
}

#[test]
fn without_root_the_daemon_says_what_it_needs() {
    let dir = Scratch::new("nonroot");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agentwatch_bin())
        .arg("run")
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .arg("--socket")
        .arg(dir.0.join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
}

#[test]
fn a_full_ring_buffer_is_counted_and_the_daemon_keeps_going() {
    let dir = Scratch::new("tinyring");
    let config = dir.0.join("agentwatch.toml");
    // One page: a 16 KiB chunk can never fit, so large writes are dropped for certain.
    std::fs::write(&config, "[probes]\nring_buffer_bytes = 4096\n").unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let mock = Mock::start(&[]);
    let prompt = "lorem ipsum dolor sit amet ".repeat(2000);
    run_client(py_client(
        "openai_chat.py",
        &mock,
        &["--calls", "2", "--tag", "tiny-ring", "--prompt", &prompt],
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = daemon.cli_json(&["status"]);
        let drops = &status["kernel_drops"];
        if u(&drops["ringbuf_full_events"]) > 0 && u(&drops["ringbuf_full_bytes"]) > 0 {
            assert_eq!(status["ok"], true, "probes stay attached: {status:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ring buffer drops not counted: {status:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Still accounting after the loss: a small call goes through whole.
    let (pid, _) = run_client(py_client("openai_chat.py", &mock, &["--tag", "after-loss"]));
    let expect = serde_json::json!({"provider": "openai"});
    check_single_agent_session(&daemon, &mock, pid, "after-loss", 1, &expect);
}

/// The CLI without a daemon: exit 3 and one message that says what to do (its cause said
/// once); `AGENTWATCH_SOCKET` stands for `--socket`; a usage error exits 2.
#[test]
fn cli_without_a_daemon_exits_3_with_one_message() {
    let scratch = Scratch::new("no-daemon");
    let socket = scratch.0.join("absent.sock");
    let out = Command::new(agentwatch_bin())
        .args(["sessions", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is `agentwatch run` running"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(err.contains(&socket.display().to_string()), "{err}");
    let out = Command::new(agentwatch_bin())
        .arg("kill")
        .arg("abc")
        .env("AGENTWATCH_SOCKET", &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&socket.display().to_string()),
        "AGENTWATCH_SOCKET is used: {out:?}"
    );
    let out = Command::new(agentwatch_bin())
        .args(["sessions", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `agentwatch validate` finds what `run` would refuse (a rule's regex, a price, a sink's
/// URL), without root or probes; `run` refuses the same file before it loads anything.
#[test]
fn validate_finds_what_run_would_refuse() {
    let scratch = Scratch::new("validate");
    let good = scratch.0.join("good.toml");
    std::fs::write(
        &good,
        "[ceilings]\nsession_usd = 1.0\n[[session_roots]]\nmatch_comm = \"^claude$\"\n",
    )
    .unwrap();
    let out = Command::new(agentwatch_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    let bad = scratch.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[[session_roots]]\nmatch_comm = \"(unclosed\"\n\
         [[pricing]]\nmodel = \"m\"\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n\
         [sinks.clickhouse]\nurl = \"ftp://example\"\n",
    )
    .unwrap();
    let out = Command::new(agentwatch_bin())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for what in ["(unclosed", "input_per_mtok", "ftp://example"] {
        assert!(err.contains(what), "{what} in {err}");
    }
    let typo = scratch.0.join("typo.toml");
    std::fs::write(&typo, "[ceilings]\nsesion_usd = 1.0\n").unwrap();
    let out = Command::new(agentwatch_bin())
        .args(["validate", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sesion_usd"));
    // `run` says the same before it touches the kernel (no probe loaded, no pin made).
    let out = Command::new(agentwatch_bin())
        .args(["run", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(scratch.0.join("data"))
        .arg("--socket")
        .arg(scratch.0.join("s.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration") && err.contains("(unclosed"),
        "{err}"
    );
    assert!(!scratch.0.join("data").exists(), "nothing was set up");
}
