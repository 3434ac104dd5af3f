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
