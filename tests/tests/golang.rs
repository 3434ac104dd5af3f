//! Privileged end-to-end tests of Go `crypto/tls` capture: a real Go client (standard library
//! net/http, built with `go build` at test time) calls the mock's OpenAI chat completions
//! endpoint; the daemon finds the binary's crypto/tls functions in its symbol table and probes
//! them (entry probes, and probes on each RET instead of uretprobes). Every call row must carry
//! exactly the usage the mock served. A stripped Go binary is reported as not covered.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// `go build` of the Go client (tests/clients/go).
fn go_build(out: &Path, ldflags: &str) {
    common::go_build(&clients().join("go"), out, ldflags);
}

fn go_client(bin: &Path, mock: &Mock, tag: &str, calls: usize, stream: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("-base-url")
        .arg(mock.base_url())
        .arg("-ca")
        .arg(&mock.ca)
        .args(["-tag", tag, "-calls", &calls.to_string()]);
    if stream {
        cmd.arg("-stream");
    }
    cmd
}

/// Waits (bounded) until `pred` holds over the daemon's status.
fn wait_status(daemon: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = daemon.cli_json(&["status"]);
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `n` calls of `pid`, exact and priced, from the Go client over HTTP/1.1.
fn check_go(daemon: &Daemon, mock: &Mock, pid: u32, tag: &str, n: usize, stream: bool) {
    let expect = json!({
        "provider": "openai", "api": "chat.completions", "model": "gpt-4o-mini",
        "streaming": stream, "http_version": "1.1", "comm": "goclient",
    });
    for call in check_exact(daemon, mock, pid, tag, n, &expect) {
        let cost = call["cost_usd"].as_f64().expect("priced");
        assert!(approx(cost, gpt_4o_mini_cost(&call)), "{call}");
    }
}

fn go_entry<'a>(status: &'a Value, path: &Path) -> Option<&'a Value> {
    status["tls_libraries"]
        .as_array()?
        .iter()
        .find(|l| l["kind"] == "go" && l["path"].as_str() == path.to_str())
}

#[test]
fn go_crypto_tls_client_exact_usage_stream_and_not() {
    let dir = Scratch::new("go");
    let bin: PathBuf = dir.0.join("goclient");
    go_build(&bin, "");
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);

    // A binary the daemon never saw: probed at its first contact, exact from its first call.
    let (pid, _) = run_client(go_client(&bin, &mock, "go-plain", 3, false));
    check_go(&daemon, &mock, pid, "go-plain", 3, false);

    let status = daemon.cli_json(&["status"]);
    let entry = go_entry(&status, &bin).unwrap();
    assert_eq!(
        entry["symbols"],
        json!([
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).Read",
            "crypto/tls.(*Conn).clientHandshake"
        ]),
        "{entry}"
    );
    assert_eq!(entry["missing"], json!([]), "{entry}");
    assert!(u(&entry["return_probes"]) >= 2, "{entry}");
    assert_eq!(status["ok"], true, "{status:#}");

    // The same file again: planned once, covered from the process's first call.
    let (pid, _) = run_client(go_client(&bin, &mock, "go-stream", 3, true));
    check_go(&daemon, &mock, pid, "go-stream", 3, true);
    let status = daemon.cli_json(&["status"]);
    let go_entries = status["tls_libraries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["path"].as_str() == bin.to_str())
        .count();
    assert_eq!(go_entries, 1, "{}", status["tls_libraries"]);
    assert_eq!(u(&status["kernel_drops"]["args_map_full"]), 0);
}

/// A stripped Go binary (`-ldflags=-s -w`) has no symbol table: its crypto/tls cannot be
/// located. The daemon says so in `tls_not_covered` (not an attach failure), and its calls,
/// which succeed, are not passed off as seen.
#[test]
fn stripped_go_binary_is_reported_not_covered() {
    let dir = Scratch::new("go-stripped");
    let bin: PathBuf = dir.0.join("goclient");
    go_build(&bin, "-s -w");
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let (pid, _) = run_client(go_client(&bin, &mock, "go-stripped", 2, false));
    wait_status(&daemon, "the stripped Go binary reported", |s| {
        s["tls_not_covered"]["executables"]
            .get(bin.to_str().unwrap())
            .is_some()
    });
    assert_eq!(mock.served_with_tag("go-stripped").len(), 2);
    let status = daemon.cli_json(&["status"]);
    let why = status["tls_not_covered"]["executables"][bin.to_str().unwrap()]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        why.contains("stripped") && why.contains("-ldflags=-s"),
        "{why}"
    );
    assert!(go_entry(&status, &bin).is_none(), "{status:#}");
    assert_eq!(status["ok"], true, "a known gap is no failure: {status:#}");
    assert!(daemon.cli(&["status"]).status.success());
    // Everything the ring buffer could still hold arrives before a later call's row:
    // nothing of this pid may.
    sentinel_call(&daemon, &mock, false);
    assert!(calls_of(&daemon.calls(), pid).is_empty());
}

/// The same stripped binary calling an LLM host by name (`api.openai.com`, pointed at the mock):
/// no hook sees its plaintext, so the daemon reads the SNI of its ClientHello and meters the
/// connection's bytes. Each call is on record as estimated, with the mock's true input tokens
/// inside the stated bounds, output unknown, and the binary listed as `estimated: SNI`.
#[test]
fn stripped_go_binary_to_an_llm_host_is_estimated_within_bounds() {
    let dir = Scratch::new("go-estimate");
    let bin: PathBuf = dir.0.join("goclient");
    go_build(&bin, "-s -w");
    let mock = Mock::start(&[]);
    // The mock's port stands for 443 here.
    let daemon_dir = Scratch::new("go-estimate-daemon");
    let config = daemon_dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        format!("[probes]\nestimate_ports = [{}]\n", mock.port),
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(daemon_dir, &["--config", &config]);
    let tag = "go-estimate";
    let mut cmd = Command::new(&bin);
    cmd.arg("-base-url")
        .arg(format!("https://api.openai.com:{}", mock.port))
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", mock.port))
        .arg("-ca")
        .arg(&mock.ca)
        .args(["-tag", tag, "-calls", "3", "-pad", "40000"]);
    let (pid, _) = run_client(cmd);
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), 3);
    let (calls, row) = rows_of(&daemon, pid, 3);
    for (call, served) in calls.iter().zip(&served) {
        assert_eq!(call["usage_source"], "estimated", "{call}");
        assert_eq!(call["provider"], "openai", "{call}");
        assert_eq!(call["server_address"], "api.openai.com", "{call}");
        let truth = u(&served["usage"]["input_tokens"]);
        let (low, high) = (
            u(&call["estimate"]["input_tokens_low"]),
            u(&call["estimate"]["input_tokens_high"]),
        );
        assert!(
            low <= truth && truth <= high,
            "{truth} not in [{low}, {high}]: {call}"
        );
        assert!(low <= u(&call["input_tokens"]) && u(&call["input_tokens"]) <= high);
        assert_eq!(u(&call["output_tokens"]), 0, "{call}");
        assert_eq!(call["estimate"]["output_unknown"], true, "{call}");
    }
    assert_ledger_sums(&calls, &row);
    assert_eq!(u(&row["estimated_calls"]), 3, "{row}");
    let status = daemon.cli_json(&["status"]);
    let how = status["estimates"]["binaries"][bin.to_str().unwrap()]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        how.starts_with("estimated: SNI api.openai.com"),
        "{status:#}"
    );
    assert_eq!(u(&status["estimates"]["stats"]["estimated_calls"]), 3);
}

/// A daemon that estimates the mock's port (it stands for 443) under `ceilings` (TOML).
fn estimating_daemon(mock: &Mock, ceilings: &str) -> Daemon {
    let dir = Scratch::new("go-estimate-ceiling");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        format!("[probes]\nestimate_ports = [{}]\n\n{ceilings}", mock.port),
    )
    .unwrap();
    let config = config.display().to_string();
    Daemon::start_in(dir, &["--config", &config])
}

/// The stripped Go client in a loop of `calls` calls to `api.openai.com` (the mock), each
/// request ~40 KB like an agent's, on one kept-alive connection.
fn estimated_loop(bin: &Path, mock: &Mock, tag: &str, calls: usize) -> std::process::Child {
    Command::new(bin)
        .arg("-base-url")
        .arg(format!("https://api.openai.com:{}", mock.port))
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", mock.port))
        .arg("-ca")
        .arg(&mock.ca)
        .args(["-tag", tag, "-calls", &calls.to_string(), "-pad", "40000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Go client")
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Go client did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the ledger row of `pid`'s session and returns (its calls, blocked attempts, row).
fn estimated_rows(daemon: &Daemon, pid: u32) -> (Vec<Value>, Vec<Value>, Value) {
    daemon.wait_for(&format!("the ledger row of {pid}"), |_, l| {
        !ledger_of(l, pid).is_empty()
    });
    let row = ledger_of(&daemon.ledger(), pid).remove(0);
    let (blocked, calls): (Vec<Value>, Vec<Value>) = calls_of(&daemon.calls(), pid)
        .into_iter()
        .partition(|c| c["blocked"] == true);
    (calls, blocked, row)
}

/// Ceilings hold sessions no hook covers at the socket write: a stripped Go binary looping
/// on an LLM host is estimated, and `session_calls = 2` with `kill` lets exactly two
/// requests reach the server. The third request's write ran, but the socket was held, so
/// its bytes never left before the process was killed.
#[test]
fn estimated_session_is_killed_before_its_next_call_leaves() {
    let dir = Scratch::new("go-estimate-kill");
    let bin: PathBuf = dir.0.join("goclient");
    go_build(&bin, "-s -w");
    let mock = Mock::start(&[]);
    let daemon = estimating_daemon(&mock, "[ceilings]\nsession_calls = 2\naction = \"kill\"\n");
    let tag = "go-estimate-kill";
    let mut child = estimated_loop(&bin, &mock, tag, 6);
    let pid = child.id();
    let status = wait_child(&mut child);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed: {status:?}");
    let (calls, blocked, row) = estimated_rows(&daemon, pid);
    // Let a late retransmission show itself, if any byte of the third request had left.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mock.served_with_tag(tag).len(),
        2,
        "requests that left the host"
    );
    assert_eq!(
        mock.incomplete_with_tag(tag),
        Vec::<Value>::new(),
        "no byte of the third"
    );
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for call in &calls {
        assert_eq!(call["usage_source"], "estimated", "{call}");
    }
    assert_eq!(blocked.len(), 1, "the held third request: {blocked:#?}");
    assert_eq!(u(&blocked[0]["total_tokens"]), 0);
    assert_eq!(row["outcome"], "killed", "{row}");
    assert_eq!(u(&row["call_count"]), 2, "{row}");
    assert_eq!(u(&row["estimated_calls"]), 2, "{row}");
    assert_ledger_totals(&calls, &row);
    let status = daemon.cli_json(&["status"]);
    let stats = &status["ceilings"]["stats"];
    assert!(u(&stats["socket_holds"]) >= 2, "{stats}");
    assert_eq!(u(&stats["socket_holds_unprotected"]), 0, "{stats}");
    assert!(
        u(&status["kernel_drops"]["held_packets_kept"]) >= 1,
        "{status:#}"
    );
}

/// Spend ceilings charge an estimate at its upper bound: the model is unknown, so an
/// estimated call's input counts at `input_tokens_high` times the price table's highest
/// input rate (pinned here by a `[[pricing]]` entry at $1,000 per million). With
/// `session_usd = 15` and ~$10 a call, the second call crosses and the third is blocked at
/// the socket: the process stays alive and its call fails; the server saw two requests.
#[test]
fn estimated_spend_counts_its_upper_bound_and_block_fails_the_next_call() {
    let dir = Scratch::new("go-estimate-block");
    let bin: PathBuf = dir.0.join("goclient");
    go_build(&bin, "-s -w");
    let mock = Mock::start(&[]);
    let daemon = estimating_daemon(
        &mock,
        "[ceilings]\nsession_usd = 15.0\naction = \"block\"\n\n[[pricing]]\nmodel = \"test-priciest\"\ninput_per_mtok = 1000.0\noutput_per_mtok = 0.0\n",
    );
    let tag = "go-estimate-block";
    let mut child = estimated_loop(&bin, &mock, tag, 6);
    let pid = child.id();
    let status = wait_child(&mut child);
    assert_eq!(
        status.code(),
        Some(1),
        "alive until its call failed: {status:?}"
    );
    let (calls, blocked, row) = estimated_rows(&daemon, pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mock.served_with_tag(tag).len(),
        2,
        "requests that left the host"
    );
    assert_eq!(
        mock.incomplete_with_tag(tag),
        Vec::<Value>::new(),
        "no byte of the third"
    );
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let mut bound = 0.0;
    for call in &calls {
        let high = u(&call["estimate"]["input_tokens_high"]) as f64;
        let cost_high = call["estimate"]["cost_usd_high"].as_f64().unwrap();
        assert!(approx(cost_high, high * 1000.0 / 1e6), "{call}");
        assert!(call["cost_usd"].is_null(), "an estimate is no bill: {call}");
        bound += cost_high;
    }
    assert!(
        bound >= 15.0 && bound - calls[1]["estimate"]["cost_usd_high"].as_f64().unwrap() < 15.0
    );
    assert!(!blocked.is_empty(), "{blocked:#?}");
    assert_eq!(row["outcome"], "blocked", "{row}");
    assert_ledger_totals(&calls, &row);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        u(&status["ceilings"]["stats"]["socket_holds_unprotected"]),
        0
    );
}
