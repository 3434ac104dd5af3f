//! Privileged end-to-end tests of ceilings: real clients in tight loops, real probes, and
//! the mock server's log as the witness of what left the host.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Exactly 1,000 tokens per call (800 in, 200 out).
const USAGE_1K: &str = r#"{"input_tokens":800,"output_tokens":200,"cache_read_tokens":0,"cache_write_tokens":0,"reasoning_tokens":0}"#;
/// 1,000,000 input tokens of gpt-4o-mini: exactly $0.15 per call.
const USAGE_15C: &str = r#"{"input_tokens":1000000,"output_tokens":0,"cache_read_tokens":0,"cache_write_tokens":0,"reasoning_tokens":0}"#;

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"))
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_state(pid: u32, want: char) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proc_state(pid) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} not in state {want}: {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn live_session(daemon: &Daemon, root_pid: u32) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = daemon.cli_json(&["sessions"]);
        if let Some(found) = s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| u(&s["root_pid"]) == root_pid as u64)
        {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no live session of {root_pid}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the session of `root_pid` is paused by a ceiling and its process is
/// stopped. A stopped process alone is not enough: its first contact and each gated call stop
/// it briefly too.
fn wait_paused(daemon: &Daemon, root_pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_session(daemon, root_pid)["outcome"] != "paused" {
        assert!(
            Instant::now() < deadline,
            "session of {root_pid} not paused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_state(root_pid, 'T');
}

/// `agentwatch kill` on the session of `root_pid`, whose process `child` then dies of SIGKILL.
fn kill_session_of(daemon: &Daemon, root_pid: u32, child: &mut Child) {
    let id = live_session(daemon, root_pid)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(daemon.cli(&["kill", &id]).status.success());
    let status = wait_exit(child, Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

fn tight_loop(mock: &Mock, tag: &str, usage: &str, calls: &str) -> Command {
    py_client(
        "openai_chat.py",
        mock,
        &[
            "--calls",
            calls,
            "--tag",
            tag,
            "--usage",
            usage,
            "--model",
            "gpt-4o-mini",
        ],
    )
}

/// The runaway loop is killed; the mock received exactly the calls up to and including
/// the one that reached the ceiling, and none after.
fn runaway_is_killed(ceiling: &str, usage: &str, tag: &str, served_expected: usize) {
    let daemon = Daemon::with_config(
        "ceilings",
        &format!("[ceilings]\n{ceiling}\naction = \"kill\"\n"),
    );
    let mock = Mock::start(&[]);
    let mut child = spawn(tight_loop(&mock, tag, usage, "30"));
    let pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed by the ceiling: {status:?}"
    );
    let row = daemon.ledger_row_of(pid);
    assert_eq!(
        mock.served_with_tag(tag).len(),
        served_expected,
        "calls that left the host; ledger {row}"
    );
    assert_eq!(row["outcome"], "killed", "{row}");
    assert!(u(&row["ceiling_hits"]) >= 1, "{row}");
    assert_eq!(u(&row["call_count"]), served_expected as u64, "{row}");
    // Every later attempt that reached the gate is on record as blocked, with no tokens.
    for c in daemon.calls().iter().filter(|c| c["blocked"] == true) {
        assert_eq!(u(&c["total_tokens"]), 0);
    }
}

#[test]
fn session_tokens_kill_stops_the_loop_after_the_crossing_call() {
    // 1,000 tokens a call, ceiling 3,500: calls 1–4 go out (4 crosses), 5 never does.
    runaway_is_killed("session_tokens = 3500", USAGE_1K, "tokens-kill", 4);
}

#[test]
fn session_usd_kill() {
    // $0.15 a call, ceiling $0.50: calls 1–4 ($0.60 after the 4th), none after.
    runaway_is_killed("session_usd = 0.5", USAGE_15C, "usd-kill", 4);
}

#[test]
fn session_calls_kill() {
    runaway_is_killed("session_calls = 3", USAGE_1K, "calls-kill", 3);
}

#[test]
fn max_depth_stops_a_too_deep_sub_agent() {
    let daemon = Daemon::with_config("ceilings", "[ceilings]\nmax_depth = 1\naction = \"kill\"\n");
    let mock = Mock::start(&[]);
    let agent = |tag: &str, children: &[String]| -> String {
        let mut s = format!(
            "{} {} --base-url {} --ca {} --calls 1 --tag {tag}",
            python().display(),
            clients().join("tree_agent.py").display(),
            mock.base_url(),
            mock.ca.display()
        );
        for c in children {
            s.push_str(&format!(" --child \"{}\"", c.replace('"', "\\\"")));
        }
        s
    };
    // root (depth 0) → a (depth 1) → a1 (depth 2: over max_depth).
    let root_cmd = agent("depth-root", &[agent("depth-a", &[agent("depth-a1", &[])])]);
    let mut c = Command::new("bash");
    c.args(["-c", &format!("exec {root_cmd}")]);
    let mut child = spawn(c);
    let pid = child.id();
    wait_exit(&mut child, Duration::from_secs(60));
    let row = daemon.ledger_row_of(pid);
    assert_eq!(mock.served_with_tag("depth-root").len(), 1);
    assert_eq!(mock.served_with_tag("depth-a").len(), 1);
    assert_eq!(
        mock.served_with_tag("depth-a1").len(),
        0,
        "the depth-2 call never left"
    );
    assert_eq!(row["outcome"], "killed", "{row}");
    assert!(u(&row["ceiling_hits"]) >= 1);
    let blocked: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["session_id"] == row["session_id"] && c["blocked"] == true)
        .collect();
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(u(&blocked[0]["depth"]), 2);
}

#[test]
fn host_usd_per_day_across_two_sessions() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nhost_usd_per_day = 0.25\naction = \"kill\"\n",
    );
    let mock = Mock::start(&[]);
    // Session 1: two calls of $0.15 take the host to $0.30.
    let mut first = spawn(tight_loop(&mock, "host-1", USAGE_15C, "2"));
    let first_pid = first.id();
    wait_exit(&mut first, Duration::from_secs(60));
    daemon.ledger_row_of(first_pid);
    assert_eq!(mock.served_with_tag("host-1").len(), 2);
    // Session 2, a new process: its very first call is stopped.
    let mut second = spawn(tight_loop(&mock, "host-2", USAGE_15C, "3"));
    let second_pid = second.id();
    let status = wait_exit(&mut second, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(
        mock.served_with_tag("host-2").len(),
        0,
        "nothing left the host"
    );
    let row = daemon.ledger_row_of(second_pid);
    assert_eq!(row["outcome"], "killed", "{row}");
    assert_eq!(u(&row["call_count"]), 0);
    let host_spend = |daemon: &Daemon| {
        daemon.cli_json(&["status"])["ceilings"]["stats"]["host_usd_last_24h"]
            .as_f64()
            .unwrap()
    };
    assert!(host_spend(&daemon) >= 0.3);

    // A restarted daemon rebuilds the host's day from calls.jsonl: still over.
    let config = daemon.data_dir.parent().unwrap().join("agentwatch.toml");
    let config = config.display().to_string();
    let daemon = Daemon::start_in(daemon.crash(), &["--config", &config]);
    assert!(host_spend(&daemon) >= 0.3);
    let mut third = spawn(tight_loop(&mock, "host-3", USAGE_15C, "1"));
    let status = wait_exit(&mut third, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(mock.served_with_tag("host-3").len(), 0);
}

#[test]
fn reload_applies_new_ceilings() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nsession_calls = 100\naction = \"kill\"\n",
    );
    let config = daemon.data_dir.parent().unwrap().join("agentwatch.toml");
    std::fs::write(
        &config,
        "[ceilings]\nsession_calls = 2\naction = \"kill\"\n",
    )
    .unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mock = Mock::start(&[]);
    let mut child = spawn(tight_loop(&mock, "reload", USAGE_1K, "5"));
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(mock.served_with_tag("reload").len(), 2);
    // A config that does not parse is refused, and the running ceilings stay.
    std::fs::write(&config, "[ceilings]\nsesion_calls = 1\n").unwrap();
    let out = daemon.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sesion_calls"));
}

#[test]
fn pause_then_approve_then_kill() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nsession_tokens = 2500\naction = \"pause\"\n",
    );
    let mock = Mock::start(&[]);
    let mut child = spawn(tight_loop(&mock, "pause", USAGE_1K, "6"));
    let pid = child.id();
    // Calls 1–3 go out (3 crosses 2,500), then the whole tree stops.
    wait_paused(&daemon, pid);
    let session = live_session(&daemon, pid);
    let id = session["session_id"].as_str().unwrap().to_string();
    assert_eq!(session["outcome"], "paused", "{session}");
    assert!(
        session["reason"]
            .as_str()
            .unwrap()
            .contains("session_tokens"),
        "{session}"
    );
    let text = String::from_utf8(daemon.cli(&["sessions"]).stdout).unwrap();
    assert!(
        text.contains("paused") && text.contains("session_tokens reached"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mock.served_with_tag("pause").len(),
        3,
        "nothing after the crossing call"
    );
    // The CLI takes a unique prefix of the id; an unknown one is an error, not an empty answer.
    let tree = daemon.cli_json(&["tree", &id[..8]]);
    assert_eq!(tree["trees"][0]["session_id"], id.as_str(), "{tree:#}");
    let unknown = daemon.cli(&["tree", "zzzz"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("agentwatch sessions"));
    // `--watch` redraws until stopped (here by `timeout`).
    let watched = Command::new("timeout")
        .arg("2.5")
        .arg(agentwatch_bin())
        .args(["sessions", "--watch", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let frames = String::from_utf8_lossy(&watched.stdout);
    assert!(
        frames.matches("Ctrl-C to stop").count() >= 2 && frames.contains(&id[..8]),
        "{frames}"
    );
    // Approve (by a prefix) with more tokens: the held call and the rest go out and are
    // accounted.
    let out = daemon.cli(&["approve", &id[..12], "--raise-tokens", "10000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("approved session {id}")),
        "{said}"
    );
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert_eq!(mock.served_with_tag("pause").len(), 6);
    let row = daemon.ledger_row_of(pid);
    assert_eq!(u(&row["call_count"]), 6);
    assert_eq!(u(&row["total_tokens"]), 6000);
    assert!(u(&row["ceiling_hits"]) >= 1);
    assert_eq!(row["outcome"], "completed", "approved and finished: {row}");

    // A second paused session is ended by `agentwatch kill`.
    let mut child = spawn(tight_loop(&mock, "pause-kill", USAGE_1K, "6"));
    let pid = child.id();
    wait_paused(&daemon, pid);
    kill_session_of(&daemon, pid, &mut child);
    assert_eq!(daemon.ledger_row_of(pid)["outcome"], "killed");
    assert_eq!(mock.served_with_tag("pause-kill").len(), 3);
}

/// Calls the API in a loop, never giving up on errors; prints what happened as JSON.
const KEEP_TRYING: &str = r#"
import json, sys, openai
base, ca, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = openai.OpenAI(base_url=base + "/v1", api_key="test", max_retries=0,
                       http_client=openai.DefaultHttpxClient(verify=ca))
ok, errors = 0, []
for i in range(n):
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-test-tag": tag})
        ok += 1
    except Exception as e:
        cause = e.__cause__ or e.__context__
        errors.append(f"{type(e).__name__}: {e}; cause: {type(cause).__name__}: {cause}")
print(json.dumps({"ok": ok, "errors": errors}))
"#;

#[test]
fn block_fails_the_calls_and_keeps_the_process_alive() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nsession_calls = 2\naction = \"block\"\n",
    );
    let status = daemon.cli_json(&["status"]);
    assert!(
        status["ceilings"]["block"]
            .as_str()
            .unwrap()
            .starts_with("attached"),
        "{status:#}"
    );
    // With ceilings the pre-send hook is on (metered sockets are held before their bytes
    // are queued); without them it is off (foundation.rs).
    assert!(
        status["tracepoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "tcp:tcp_sendmsg_locked"),
        "{status:#}"
    );
    let mock = Mock::start(&[]);
    let script = daemon.data_dir.parent().unwrap().join("keep_trying.py");
    std::fs::write(&script, KEEP_TRYING).unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .arg(mock.base_url())
        .arg(&mock.ca)
        .arg("5")
        .arg("block");
    let (pid, out) = run_client(cmd);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 2, "{report:#}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{report:#}");
    // New connections to the endpoint are refused by the kernel.
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("Operation not permitted")),
        "{report:#}"
    );
    assert_eq!(
        mock.served_with_tag("block").len(),
        2,
        "nothing after the ceiling"
    );
    let row = daemon.ledger_row_of(pid);
    assert_eq!(row["outcome"], "blocked", "{row}");
    assert_eq!(u(&row["call_count"]), 2);
    // Each refusal is a kernel diagnostic (aya-log) in the daemon's log, written at its
    // next heartbeat.
    let said = format!(
        "block: refused pid {pid}'s connect to 127.0.0.1:{}",
        mock.port
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&daemon.stderr).unwrap_or_default();
        if log.contains(&said) {
            assert!(log.contains("agentwatch::kernel"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no `{said}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Over HTTP/2 every call is a stream of one connection, and a request starts with binary
/// HEADERS, not a request line: the gate recognises the new stream (from the preview's header
/// block, or the connection's earlier LLM streams), so the third call never leaves.
#[test]
fn block_on_http2_stops_the_next_stream_of_the_connection() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nsession_calls = 2\naction = \"block\"\n",
    );
    let mock = Mock::start(&["--h2"]);
    let tag = "block-h2";
    let mut child = spawn(py_client(
        "openai_chat.py",
        &mock,
        &["--http2", "--calls", "4", "--tag", tag],
    ));
    let pid = child.id();
    // Calls 3 and 4 fail (the connection is cut, then new connections are refused).
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(!status.success(), "the blocked calls failed: {status:?}");
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), 2, "nothing after the ceiling: {served:#?}");
    assert!(served.iter().all(|s| s["protocol"] == "h2"), "{served:#?}");
    let row = daemon.ledger_row_of(pid);
    assert_eq!(row["outcome"], "blocked", "{row}");
    assert_eq!(u(&row["call_count"]), 2, "{row}");
    let blocked: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["blocked"] == true && u(&c["pid"]) == pid as u64)
        .collect();
    assert!(!blocked.is_empty(), "the held HEADERS write is on record");
    assert!(
        blocked.iter().all(|c| u(&c["total_tokens"]) == 0),
        "{blocked:#?}"
    );
}

#[test]
fn restart_keeps_or_releases_a_paused_session_with_its_spend_and_a_kept_one_can_be_approved() {
    for (on_restart, expect_stopped) in [("keep", true), ("release", false)] {
        let daemon = Daemon::with_config(
            "ceilings",
            &format!(
                "[ceilings]\nsession_tokens = 2500\naction = \"pause\"\non_restart = \"{on_restart}\"\n"
            ),
        );
        let mock = Mock::start(&[]);
        let tag = format!("restart-{on_restart}");
        let mut child = spawn(tight_loop(&mock, &tag, USAGE_1K, "6"));
        let pid = child.id();
        wait_state(pid, 'T');
        // The stop comes before the daemon has read the hold from the ring buffer: crash only
        // once it has decided (and so written every call before the hold), or a loaded
        // machine loses the last response's records with the crash.
        let deadline = Instant::now() + Duration::from_secs(20);
        while live_session(&daemon, pid)["outcome"] != "paused" {
            assert!(Instant::now() < deadline, "the hold was not decided");
            std::thread::sleep(Duration::from_millis(50));
        }
        let config = daemon.data_dir.parent().unwrap().join("agentwatch.toml");
        let config = config.display().to_string();
        let dir = daemon.crash();
        let daemon = Daemon::start_in(dir, &["--config", &config]);
        let session = live_session(&daemon, pid);
        assert_eq!(u(&session["total_tokens"]), 3000, "spend intact: {session}");
        assert_eq!(u(&session["calls"]), 3);
        std::thread::sleep(Duration::from_millis(500));
        if expect_stopped {
            assert_eq!(proc_state(pid), Some('T'), "kept paused");
            assert_eq!(session["outcome"], "paused");
        } else {
            // Released: it runs, and its next call meets the ceiling again before leaving.
            wait_state(pid, 'T');
        }
        assert_eq!(
            mock.served_with_tag(&tag).len(),
            3,
            "nothing left after the ceiling"
        );
        let id = session["session_id"].as_str().unwrap().to_string();
        if expect_stopped {
            // Kept paused across the crash (the gate lives in the pinned kernel side), and
            // approved by the new daemon: the held call goes out, and the rest.
            let out = daemon.cli(&["approve", &id, "--raise-tokens", "10000"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let status = wait_exit(&mut child, Duration::from_secs(30));
            assert!(
                status.success(),
                "the approved session ran to its end: {status:?}"
            );
            assert_eq!(
                mock.served_with_tag(&tag).len(),
                6,
                "the held call and the rest"
            );
            let row = daemon.ledger_row_of(pid);
            assert_eq!(u(&row["call_count"]), 6, "{row}");
            assert_eq!(u(&row["total_tokens"]), 6000, "{row}");
            continue;
        }
        assert!(daemon.cli(&["kill", &id]).status.success());
        let status = wait_exit(&mut child, Duration::from_secs(20));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let row = daemon.ledger_row_of(pid);
        assert_eq!(u(&row["total_tokens"]), 3000, "{row}");
        assert_eq!(row["outcome"], "killed");
    }
}

/// Two chat calls with a wait between: the script reads a line from stdin before the second.
const CALL_WAIT_CALL: &str = r#"
import http.client, json, ssl, sys
host, port, ca, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca), timeout=60)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
for i in range(2):
    if i:
        print("ready", flush=True)
        sys.stdin.readline()
    conn.request("POST", "/v1/chat/completions", body,
                 {"content-type": "application/json", "x-test-tag": tag})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
"#;

/// The kernel's `GATE` map, pinned by the daemon.
fn gate_map(daemon: &Daemon) -> aya::maps::HashMap<aya::maps::MapData, u32, u32> {
    let set = daemon.cli_json(&["status"])["kernel_side"]["pinned_at"]
        .as_str()
        .expect("a pinned kernel side")
        .to_string();
    let data = aya::maps::MapData::from_pin(std::path::Path::new(&set).join("maps/GATE")).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap()
}

fn policy_stats(daemon: &Daemon) -> Value {
    daemon.cli_json(&["status"])["ceilings"]["stats"].clone()
}

/// A gated process stopped at a write whose hold record a full ring buffer dropped is
/// decided by the daemon's watchdog as a request of an unknown API: granted within its
/// ceilings (it goes on), denied over them (its session is paused, nothing leaves). The test
/// plays the kernel's part: with the client waiting between two calls, it marks the client
/// held in the pinned `GATE` map and stops it, with no record.
#[test]
fn a_gate_hold_whose_record_was_lost_is_decided_not_left_stopped() {
    let daemon = Daemon::with_config(
        "ceilings",
        "[ceilings]\nsession_calls = 100\naction = \"pause\"\n",
    );
    let mock = Mock::start(&[]);
    let script = daemon.data_dir.parent().unwrap().join("call_wait_call.py");
    std::fs::write(&script, CALL_WAIT_CALL).unwrap();
    let mut gate = gate_map(&daemon);
    let ready = |child: &mut Child| {
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    };
    let lose_a_hold = |gate: &mut aya::maps::HashMap<_, u32, u32>, child: &mut Child| {
        let pid = child.id();
        // The daemon arms a session's processes once it has read its first request.
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.get(&pid, 0).is_err() {
            assert!(
                Instant::now() < deadline,
                "no gate entry for the session's process {pid}: {:?}",
                gate.iter().collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        gate.insert(pid, agentwatch_ebpf::GATE_HELD, 0).unwrap();
        // SAFETY: kill(2) with integer arguments.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    };
    let url = mock.base_url();
    let (host, port) = url.trim_start_matches("https://").split_once(':').unwrap();
    let start = |tag: &str| {
        Command::new(python())
            .arg(&script)
            .args([host, port])
            .arg(&mock.ca)
            .arg(tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Within the ceilings: granted, the second call goes out.
    let mut child = start("lost-hold");
    let pid = child.id();
    ready(&mut child);
    lose_a_hold(&mut gate, &mut child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert_eq!(mock.served_with_tag("lost-hold").len(), 2);
    let row = daemon.ledger_row_of(pid);
    assert_eq!(u(&row["call_count"]), 2, "{row}");
    assert_eq!(u(&policy_stats(&daemon)["holds_unannounced"]), 1);

    // Over them (one call made, then the ceiling lowered to one): paused, nothing more
    // leaves.
    let mut child = start("lost-hold-over");
    let pid = child.id();
    ready(&mut child);
    let config = daemon.data_dir.parent().unwrap().join("agentwatch.toml");
    std::fs::write(
        &config,
        "[ceilings]\nsession_calls = 1\naction = \"pause\"\n",
    )
    .unwrap();
    assert!(daemon.cli(&["reload"]).status.success());
    lose_a_hold(&mut gate, &mut child);
    wait_paused(&daemon, pid);
    assert_eq!(u(&policy_stats(&daemon)["holds_unannounced"]), 2);
    assert_eq!(mock.served_with_tag("lost-hold-over").len(), 1);
    kill_session_of(&daemon, pid, &mut child);
    assert_eq!(mock.served_with_tag("lost-hold-over").len(), 1);
}
