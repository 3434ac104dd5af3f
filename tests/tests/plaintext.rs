//! Privileged end-to-end tests of plain-HTTP capture through the vectored socket calls: a real
//! client (Python, standard library) sends each request with one `sendmsg` (or `writev`) of two
//! iovecs and reads the response with `recvmsg` (or `readv` into two buffers) from the mock
//! served without TLS on a watched port. Every call row must carry exactly the served usage.
mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// `n` calls of `pid`, exact and priced.
fn check_plain(daemon: &Daemon, mock: &Mock, pid: u32, tag: &str, n: usize, stream: bool) {
    let expect = json!({"api": "chat.completions", "model": "gpt-4o-mini", "streaming": stream});
    for call in check_exact(daemon, mock, pid, tag, n, &expect) {
        let cost = call["cost_usd"].as_f64().expect("priced");
        assert!(approx(cost, gpt_4o_mini_cost(&call)), "{call}");
    }
}

#[test]
fn plain_http_sendmsg_recvmsg_and_writev_readv() {
    let mock = Mock::start(&["--plain"]);
    let daemon = Daemon::watching_plain_port("plain-vectored", mock.port);
    let status = daemon.cli_json(&["status"]);
    // Socket-layer tracepoints: the calls' own arguments give the buffers. (The read hook
    // goes on when the first client connects to the plain port.)
    for tp in ["sock:sock_send_length"] {
        assert!(
            status["tracepoints"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == tp),
            "{tp}: {}",
            status["tracepoints"]
        );
    }
    for mode in ["msg", "vec"] {
        for stream in [false, true] {
            let tag = format!("plain-{mode}-{}", if stream { "stream" } else { "json" });
            let mut cmd = Command::new(python());
            cmd.arg(clients().join("plain_vectored.py"))
                .args(["--port", &mock.port.to_string(), "--mode", mode])
                .args(["--tag", &tag, "--calls", "2"]);
            if stream {
                cmd.arg("--stream");
            }
            let (pid, _) = run_client(cmd);
            check_plain(&daemon, &mock, pid, &tag, 2, stream);
        }
    }
    let drops: Value = daemon.cli_json(&["status"])["kernel_drops"].clone();
    assert_eq!(u(&drops["iov_bytes_not_copied"]), 0, "{drops}");

    // A request in 12 iovecs (head + 11 body pieces): the bytes of iovecs 9.. are not copied,
    // counted to the byte, and the call is never passed off as complete.
    let mut cmd = Command::new(python());
    cmd.arg(clients().join("plain_vectored.py"))
        .args(["--port", &mock.port.to_string(), "--mode", "msg"])
        .args(["--tag", "plain-split", "--split", "11"]);
    let (pid, out) = run_client(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let beyond: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bytes beyond 8 iovecs: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(beyond > 0, "{stdout}");
    assert_eq!(mock.served_with_tag("plain-split").len(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let drops = daemon.cli_json(&["status"])["kernel_drops"].clone();
        if u(&drops["iov_bytes_not_copied"]) == beyond {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{drops} vs {beyond}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Everything of that call is handled once a later call's row is in.
    sentinel_call(&daemon, &mock, true);
    for call in calls_of(&daemon.calls(), pid) {
        assert_ne!(call["complete"], true, "{call}");
    }
}

/// The read hook stays on while a plain-HTTP socket is open, with no call on it and no
/// session (the kernel's socket table says so), is adopted as it is by a daemon started after
/// a crash, and comes off once the socket is closed.
#[test]
fn the_read_hook_stays_while_a_plain_socket_is_open_and_across_a_crash() {
    let mock = Mock::start(&["--plain"]);
    let dir = Scratch::new("read-hook");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        format!("[probes]\nplaintext_ports = [{}]\n", mock.port),
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["read_hook"]["attached"], false, "{status:#}");
    let link = |s: &Value| {
        std::path::Path::new(s["kernel_side"]["pinned_at"].as_str().expect("pinned"))
            .join("links/sock_recv_length")
            .exists()
    };
    assert!(!link(&status), "{status:#}");
    // A process that connects to the plain port and sends nothing: stopped at its connect
    // until the hook was on, then on its way.
    let mut client = Command::new(python())
        .args([
            "-c",
            &format!(
                "import socket, sys; s = socket.create_connection(('127.0.0.1', {})); print('connected', flush=True); sys.stdin.readline(); s.close()",
                mock.port
            ),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "connected");
    let status = daemon.cli_json(&["status"]);
    let contact = &status["first_contact"];
    assert_eq!(u(&contact["kernel"]["read_holds"]), 1, "{contact:#}");
    assert_eq!(u(&contact["stats"]["read_holds"]), 1, "{contact:#}");
    assert_eq!(u(&contact["stats"]["read_hold_timeouts"]), 0, "{contact:#}");
    assert_eq!(status["read_hook"]["attached"], true, "{status:#}");
    assert!(link(&status), "{status:#}");
    // Past the linger: still on, the socket needs it.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["read_hook"]["attached"], true, "{status:#}");
    assert_eq!(u(&status["read_hook"]["detaches"]), 0, "{status:#}");
    // A crash: the next daemon adopts the hook as it is (it attaches nothing itself).
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["kernel_side"]["origin"], "adopted", "{status:#}");
    assert_eq!(status["read_hook"]["attached"], true, "{status:#}");
    assert_eq!(u(&status["read_hook"]["attaches"]), 0, "{status:#}");
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(
        daemon.cli_json(&["status"])["read_hook"]["attached"],
        true,
        "kept while the socket is open"
    );
    // The socket closed: off within the linger and a look at the sockets.
    use std::io::Write;
    writeln!(client.stdin.take().unwrap()).unwrap();
    wait_exit(&mut client, std::time::Duration::from_secs(10));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = daemon.cli_json(&["status"]);
        if status["read_hook"]["attached"] == false {
            assert_eq!(u(&status["read_hook"]["detaches"]), 1, "{status:#}");
            assert!(!link(&status), "{status:#}");
            assert!(
                !status["tracepoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == "sock:sock_recv_length"),
                "{status:#}"
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
