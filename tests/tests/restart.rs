//! Restarts under traffic: the kernel side is pinned, so a daemon killed (SIGKILL) or stopped
//! for an upgrade (SIGTERM) mid-way through agents' keep-alive connections comes back seeing
//! them, with no gap: every served call has exactly one row, the calls in flight at the stop
//! too (their records are read again from the ring), and none is written twice.
mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CLIENTS: usize = 8;
const CALLS: usize = 30;

/// Eight Python SDK clients, keep-alive, alternating streaming and non-streaming calls.
fn start_clients(mock: &Mock, tag: &str) -> Vec<(String, Child)> {
    (0..CLIENTS)
        .map(|i| {
            let tag = format!("{tag}-{i}");
            let child = Command::new(python())
                .arg(clients().join("openai_chat.py"))
                .args(["--base-url", &mock.base_url()])
                .arg("--ca")
                .arg(&mock.ca)
                .args(["--calls", &CALLS.to_string(), "--alternate", "--tag", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start openai_chat.py");
            (tag, child)
        })
        .collect()
}

/// Waits (bounded) for every client; returns tag → pid. Panics if one failed.
fn wait_clients(clients: Vec<(String, Child)>) -> BTreeMap<String, u32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pids = BTreeMap::new();
    for (tag, mut child) in clients {
        let pid = child.id();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "client {tag} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("client {tag} did not finish in 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pids.insert(tag, pid);
    }
    pids
}

/// Every served call has exactly one row (by client pid), none duplicated, the calls in
/// flight at the stop too (the next daemon reads their records again from the pinned ring);
/// each session has one ledger row whose totals are its rows'.
fn assert_each_call_once(daemon: &Daemon, mock: &Mock, pids: &BTreeMap<String, u32>) {
    for tag in pids.keys() {
        assert_eq!(
            mock.served_with_tag(tag).len(),
            CALLS,
            "{tag}: served calls"
        );
    }
    let want: HashSet<u64> = pids.values().map(|p| *p as u64).collect();
    daemon.wait_for("every client's ledger row", |_, ledger| {
        want.iter()
            .all(|&p| ledger.iter().any(|l| u(&l["root_pid"]) == p))
    });
    let calls = daemon.calls();
    let ledger = daemon.ledger();
    let rows = |pid: u64| calls.iter().filter(|c| u(&c["pid"]) == pid).count();
    let mut report = String::new();
    for (tag, &pid) in pids {
        report.push_str(&format!("{tag} pid {pid}: {} rows\n", rows(pid as u64)));
    }
    for &pid in &want {
        let mine: Vec<&Value> = calls.iter().filter(|c| u(&c["pid"]) == pid).collect();
        let starts: HashSet<&str> = mine
            .iter()
            .filter_map(|c| c["started_at"].as_str())
            .collect();
        if mine.len() < CALLS {
            // Where one is missing: every second call streams, so the pattern breaks there.
            let mut sorted: Vec<&&Value> = mine.iter().collect();
            sorted.sort_by_key(|c| c["started_at"].as_str().unwrap_or("").to_string());
            let at = sorted
                .iter()
                .enumerate()
                .find(|(i, c)| (c["streaming"] == true) != (i % 2 == 1))
                .map(|(i, c)| (i, c["started_at"].clone()));
            eprintln!("pid {pid}: a call is missing before row {at:?}");
        }
        assert_eq!(
            mine.len(),
            CALLS,
            "pid {pid}: one row per served call\n{report}status: {}\nlog: {}",
            String::from_utf8_lossy(&daemon.cli(&["status"]).stdout),
            std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
        );
        assert_eq!(
            starts.len(),
            mine.len(),
            "pid {pid}: a row duplicated\n{report}"
        );
        let streamed = mine.iter().filter(|c| c["streaming"] == true).count();
        assert_eq!(streamed, CALLS / 2, "pid {pid}: every second call streams");
        for c in &mine {
            assert_eq!(c["status"], 200, "{c:#}");
            assert!(
                u(&c["input_tokens"]) > 0 && u(&c["output_tokens"]) > 0,
                "{c:#}"
            );
        }
        let rows_of_session: Vec<&Value> =
            ledger.iter().filter(|l| u(&l["root_pid"]) == pid).collect();
        assert_eq!(rows_of_session.len(), 1, "pid {pid}: one ledger row");
        let l = rows_of_session[0];
        assert_eq!(u(&l["call_count"]), CALLS as u64, "pid {pid}: ledger {l:#}");
        let tokens: u64 = mine.iter().map(|c| u(&c["total_tokens"])).sum();
        assert_eq!(
            u(&l["total_tokens"]),
            tokens,
            "pid {pid}: ledger tokens {l:#}"
        );
    }
    let replay = &daemon.cli_json(&["status"])["replay"];
    eprintln!("{report}replay: {replay}");
}

/// A daemon started with `config` from a file in its data directory, and the arguments that
/// start the next one with it.
fn config_daemon(config: &str, name: &str) -> (Daemon, Vec<String>) {
    let dir = Scratch::new(name);
    let config_path = dir.0.join("agentwatch.toml");
    std::fs::write(&config_path, config).unwrap();
    let extra = vec!["--config".to_string(), config_path.display().to_string()];
    let daemon = Daemon::start_in(dir, &args(&extra));
    (daemon, extra)
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const FILES: &str = "[actions]\nfiles = true\n";
/// `[actions] files` through the `syscalls` tracepoints: pinned, they report what sessions
/// do while no daemon runs (the default `libc` uprobes are the daemon's and end with it).
const FILES_SYSCALLS: &str = "[actions]\nfiles = true\nfile_hooks = \"syscalls\"\n";

/// The `actions.jsonl` rows of session `sid`.
fn session_actions(daemon: &Daemon, sid: &str) -> Vec<Value> {
    read_jsonl(&daemon.data_dir.join("actions.jsonl"))
        .into_iter()
        .filter(|r| r["session_id"] == sid)
        .collect()
}

/// The counts (`FILE_COUNTS`) of each file row of `path` among `rows`.
fn file_counts(rows: &[Value], path: &str) -> Vec<[u64; 6]> {
    rows.iter()
        .filter(|f| f["kind"] == "file" && f["path"] == path)
        .map(|f| FILE_COUNTS.map(|k| u(&f[k])))
        .collect()
}

/// A shell loop that waits (at most a minute) for `path` to exist.
fn wait_for_file(path: &str) -> String {
    format!("for i in $(seq 1200); do [ -e {path} ] && break; sleep 0.05; done")
}

/// A Python SDK agent that makes one call, then runs each of `children` with `bash -c`.
fn agent_running(mock: &Mock, tag: &str, children: &[String]) -> Child {
    let mut agent = py_client("tree_agent.py", mock, &["--calls", "1", "--tag", tag]);
    for c in children {
        agent.arg("--child").arg(c);
    }
    agent
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kernel_side(daemon: &Daemon) -> Value {
    daemon.cli_json(&["status"])["kernel_side"].clone()
}

/// The workload of the restart tests: the daemon is stopped by `stop` 4 s in and started
/// again on the same data; returns the new daemon, the mock and the clients' pids.
fn restart_under_traffic(
    name: &str,
    stop: impl FnOnce(Daemon) -> Scratch,
) -> (Daemon, Mock, BTreeMap<String, u32>, Duration) {
    restart_under_traffic_with(name, "", stop)
}

/// `restart_under_traffic` with a daemon configuration (TOML; both daemons use it).
fn restart_under_traffic_with(
    name: &str,
    config: &str,
    stop: impl FnOnce(Daemon) -> Scratch,
) -> (Daemon, Mock, BTreeMap<String, u32>, Duration) {
    let mock = Mock::start(&["--chunk-delay-ms", "40"]);
    let (daemon, extra) = config_daemon(config, name);
    let side = kernel_side(&daemon);
    assert_eq!(side["origin"], "created");
    assert_eq!(side["kernel_log_readers"], 1, "{side}");
    let clients = start_clients(&mock, name);
    std::thread::sleep(Duration::from_secs(4));
    let served_before = mock.served().len();
    let t = Instant::now();
    eprintln!(
        "{name}: stopping the daemon at {}",
        String::from_utf8_lossy(
            &Command::new("date")
                .arg("+%H:%M:%S.%N")
                .output()
                .unwrap()
                .stdout
        )
        .trim()
    );
    let dir = stop(daemon);
    let daemon = Daemon::start_in(dir, &args(&extra));
    let restart = t.elapsed();
    // An adopted kernel side: the previous daemon's programs stay attached and log to
    // their own ring, read too.
    let side = kernel_side(&daemon);
    if side["origin"] == "adopted" {
        assert_eq!(side["kernel_log_readers"], 2, "{side}");
    }
    let pids = wait_clients(clients);
    let served = mock.served().len();
    eprintln!(
        "{name}: {served_before} calls served before the stop, {served} in all; stop and start took {restart:?}"
    );
    assert!(
        served_before > 0 && served > served_before + CLIENTS,
        "the stop must fall mid-run: {served_before} of {served} served before it"
    );
    (daemon, mock, pids, restart)
}

#[test]
fn sigkill_under_traffic_each_call_has_exactly_one_row() {
    let (daemon, mock, pids, _) = restart_under_traffic("restart-kill", |d| d.crash());
    let ks = kernel_side(&daemon);
    assert_eq!(ks["origin"], "adopted", "{ks:#}");
    assert_eq!(ks["gap_secs"], 0.0, "{ks:#}");
    assert_each_call_once(&daemon, &mock, &pids);
}

#[test]
fn sigterm_upgrade_under_traffic_each_call_has_exactly_one_row() {
    let (daemon, mock, pids, _) = restart_under_traffic("restart-term", |d| d.stop_keeping_data());
    let ks = kernel_side(&daemon);
    assert_eq!(ks["origin"], "adopted", "{ks:#}");
    assert_each_call_once(&daemon, &mock, &pids);
}

/// Another build's kernel side (another eBPF object) is not adopted: it is replaced, what
/// it held is let go, and the gap is reported; the agents already running are probed again
/// and their later calls are recorded.
#[test]
fn another_builds_kernel_side_is_replaced_and_the_gap_reported() {
    let (daemon, mock, pids, _) = restart_under_traffic("restart-abi", |d| {
        let dir = d.crash();
        // What an upgrade to a build with another kernel ABI finds: a pin set by another name.
        let root = std::path::Path::new("/sys/fs/bpf/agentwatch");
        for entry in std::fs::read_dir(root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (_, data) = name.split_once('-').unwrap();
            std::fs::rename(entry.path(), root.join(format!("00000000deadbeef-{data}"))).unwrap();
        }
        dir
    });
    let ks = kernel_side(&daemon);
    assert_eq!(ks["origin"], "created", "{ks:#}");
    assert!(
        ks["replaced"].as_array().is_some_and(|r| r.len() == 1),
        "{ks:#}"
    );
    assert!(
        ks["gap_secs"].as_f64().is_some(),
        "the gap is reported: {ks:#}"
    );
    let names: Vec<String> = std::fs::read_dir("/sys/fs/bpf/agentwatch")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 1 && !names[0].starts_with("00000000deadbeef"),
        "the old set is gone: {names:?}"
    );
    // Calls after the restart are recorded once each; none is duplicated.
    let served_total: usize = pids.keys().map(|t| mock.served_with_tag(t).len()).sum();
    assert_eq!(served_total, CLIENTS * CALLS);
    daemon.wait_for("every client's session closed", |_, l| {
        pids.values()
            .all(|&p| l.iter().any(|r| u(&r["root_pid"]) == p as u64))
    });
    for &pid in pids.values() {
        let mine: Vec<Value> = daemon
            .calls()
            .into_iter()
            .filter(|c| u(&c["pid"]) == pid as u64)
            .collect();
        let starts: HashSet<String> = mine
            .iter()
            .filter_map(|c| c["started_at"].as_str().map(String::from))
            .collect();
        assert_eq!(starts.len(), mine.len(), "pid {pid}: duplicated rows");
        assert!(mine.len() <= CALLS, "pid {pid}: {} rows", mine.len());
        let last = mine.iter().filter_map(|c| c["call_seq"].as_u64()).max();
        assert!(
            mine.len() > CALLS / 3,
            "pid {pid}: its calls after the restart are recorded ({} rows, last seq {last:?})",
            mine.len()
        );
    }
}

/// The JSONL files rotate every ~20 KB (a dozen times during the run) while the daemon is
/// killed mid-way: every served call still has exactly one row across the rotated segments
/// (gzipped once the checkpoint covers them) and the current file, and each session's ledger
/// row sums its calls, those of the segments before the kill too. The restarted daemon read
/// only the checkpoint, the segments it did not cover yet and the current files.
#[test]
fn sigkill_while_the_files_rotate_loses_nothing() {
    let config = "[sinks.jsonl]\nrotate_bytes = 20000\nkeep_rotated = 1000\n";
    let (daemon, mock, pids, _) =
        restart_under_traffic_with("restart-rotate", config, |d| d.crash());
    assert_each_call_once(&daemon, &mock, &pids);
    let rotated = daemon.data_dir.join("rotated");
    let names: Vec<String> = std::fs::read_dir(&rotated)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let segments = names.iter().filter(|n| n.starts_with("calls-")).count();
    assert!(segments >= 5, "rotated: {names:?}");
    assert!(
        names.iter().any(|n| n.ends_with(".jsonl.gz")),
        "covered segments are gzipped: {names:?}"
    );
    let jsonl = daemon.cli_json(&["status"])["jsonl"].clone();
    assert!(u(&jsonl["rotations"]) >= 1, "{jsonl:#}");
    assert_eq!(u(&jsonl["rotation_errors"]), 0, "{jsonl:#}");
    let log = std::fs::read_to_string(&daemon.stderr).unwrap_or_default();
    assert!(
        log.contains("segments_covered"),
        "the restart reports what it read: {log}"
    );
}

/// The kernel programs' diagnostics (aya-log) written while no daemon runs are read by the
/// next daemon from the previous daemon's ring: a first contact made with no daemon heartbeat
/// is not held, and says so. The test ages the heartbeat in the pinned `CONFIG` map (the
/// kernel holds first contacts only within 30 s of one) rather than wait 30 s.
#[test]
fn kernel_diagnostics_written_while_no_daemon_runs_reach_the_next_daemon() {
    let mock = Mock::start(&[]);
    let daemon = Daemon::start_in(Scratch::new("kernel-log"), &[]);
    let set = kernel_side(&daemon)["pinned_at"]
        .as_str()
        .expect("a pinned kernel side")
        .to_string();
    let dir = daemon.stop_keeping_data();
    let data =
        aya::maps::MapData::from_pin(std::path::Path::new(&set).join("maps/CONFIG")).unwrap();
    let mut config: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    config.set(agentwatch_ebpf::CFG_HEARTBEAT, 1, 0).unwrap();
    let (pid, _) = run_client(curl_chat(&mock, "no-daemon", false));
    assert_eq!(mock.served_with_tag("no-daemon").len(), 1);

    let daemon = Daemon::start_in(dir, &[]);
    assert_eq!(kernel_side(&daemon)["origin"], "adopted");
    let said = format!("first contact: pid {pid} not held, no daemon heartbeat");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&daemon.stderr).unwrap_or_default();
        if log.contains(&said) {
            break;
        }
        assert!(Instant::now() < deadline, "no `{said}` in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(u(&kernel_side(&daemon)["kernel_log_read_errors"]), 0);
}

/// A daemon stopped with SIGTERM keeps its kernel side pinned for a next daemon that may
/// never come (`systemctl stop`, a drained node): a process's first contact after it is not
/// stopped (nobody would continue it), and once a next daemon runs, first contacts are held
/// and probed again, their calls exact.
#[test]
fn first_contacts_after_a_sigterm_stop_are_not_held_until_a_daemon_runs_again() {
    let mock = Mock::start(&[]);
    let daemon = Daemon::start_in(Scratch::new("left"), &[]);
    let dir = daemon.stop_keeping_data();
    let mut client = spawn_quiet(&mut curl_chat(&mock, "after-stop", false));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let state =
                std::fs::read_to_string(format!("/proc/{}/stat", client.id())).unwrap_or_default();
            let _ = client.kill();
            let _ = client.wait();
            panic!("the client did not finish with no daemon running: {state}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(mock.served_with_tag("after-stop").len(), 1);

    let daemon = Daemon::start_in(dir, &[]);
    assert_eq!(kernel_side(&daemon)["origin"], "adopted");
    let (pid, _) = run_client(curl_chat(&mock, "after-restart", false));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let calls: Vec<Value> = daemon
            .calls()
            .into_iter()
            .filter(|c| u(&c["pid"]) == pid as u64)
            .collect();
        if let Some(c) = calls.first() {
            assert_eq!(c["model"], "gpt-4o-mini", "{c}");
            assert!(u(&c["total_tokens"]) > 0, "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "no call row for pid {pid}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fc = &daemon.cli_json(&["status"])["first_contact"];
    assert!(u(&fc["stats"]["probed"]) >= 1, "{fc:#}");
}

/// `[actions] files`: a session's file rows are written when it closes, so its counts so far
/// are kept on disk (`files-open.jsonl`). A session open across a SIGKILL keeps them: a
/// file changed before the stop, again while no daemon ran (read from the pinned ring buffer
/// by the next daemon) and after, is counted once per change, and the ledger counts agree.
#[test]
fn file_counts_of_a_session_open_across_a_sigkill_go_on() {
    let mock = Mock::start(&[]);
    let (daemon, extra) = config_daemon(FILES_SYSCALLS, "restart-files");
    let work = Scratch::new("restart-files-work");
    let [a_s, b_s, m1, m2] =
        ["a.log", "b.tmp", "m1", "m2"].map(|n| work.0.join(n).display().to_string());
    let script = format!(
        "echo 1 > {a_s} && echo 2 >> {a_s} && {} && echo 3 >> {a_s} && echo x > {b_s} && {} && rm {b_s}",
        wait_for_file(&m1),
        wait_for_file(&m2)
    );
    let child = agent_running(&mock, "restart-files", &[script]);
    let root = child.id();
    // The first daemon counted the first two opens (its journal says so).
    let journal = daemon.data_dir.join("files-open.jsonl");
    let counted = format!("\"path\":\"{a_s}\",\"opened_for_write\":2,");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&journal).is_ok_and(|t| t.contains(&counted)) {
        assert!(
            Instant::now() < deadline,
            "no journal line {counted} in {}: {}",
            journal.display(),
            std::fs::read_to_string(&journal).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = daemon.crash();
    // While no daemon runs: a third open of a, and b created.
    std::fs::write(&m1, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new(&b_s).exists() {
        assert!(Instant::now() < deadline, "the agent did not go on");
        std::thread::sleep(Duration::from_millis(50));
    }
    let daemon = Daemon::start_in(dir, &args(&extra));
    assert_eq!(kernel_side(&daemon)["origin"], "adopted");
    // After: b deleted, and the session ends.
    std::fs::write(&m2, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let row = daemon.ledger_row_of(root);
    let sid = row["session_id"].as_str().unwrap();
    let files = session_actions(&daemon, sid);
    // One row per path, each change counted once: `>`, `>>`, `>>` (before, during the gap).
    assert_eq!(
        file_counts(&files, &a_s),
        vec![[3, 3, 1, 0, 0, 0]],
        "{files:#?}"
    );
    assert_eq!(
        file_counts(&files, &b_s),
        vec![[1, 1, 1, 1, 0, 0]],
        "{files:#?}"
    );
    assert_eq!(
        (u(&row["files_written"]), u(&row["files_deleted"])),
        (2, 1),
        "{row:#}"
    );
    let replay = &daemon.cli_json(&["status"])["replay"];
    assert_eq!(u(&replay["file_journal_errors"]), 0, "{replay:#}");
    assert!(replay["file_journal_lines_dropped"].is_u64(), "{replay:#}");
}

/// A session that ends while no daemon runs: what it did meanwhile is in the pinned ring
/// buffer, and the next daemon charges it before closing the session. The agent's `bash`
/// child (started before the SIGKILL) writes and deletes a file and runs `touch`, `mv` and
/// `rm` (forked by that `bash`, which the next daemon never saw) after the daemon is gone;
/// `bash` and the agent exit before the next daemon starts. The next daemon keeps the
/// session open until it has read those records (its root's exit among them): the three
/// tool runs are under the agent, the file rows and the ledger counts are exact, the row
/// ends when the agent did, not when the daemon came back; `bash`'s own run (started before
/// the stop, ended in the gap) is known from its exit record.
#[test]
fn a_session_that_ends_while_no_daemon_runs_keeps_what_it_did_meanwhile() {
    let mock = Mock::start(&[]);
    let (daemon, extra) = config_daemon(FILES_SYSCALLS, "restart-gap-end");
    let work = Scratch::new("restart-gap-end-work");
    let [a, t, v, go] = ["a.log", "t", "v", "go"].map(|n| work.0.join(n).display().to_string());
    let script = format!(
        "{}; echo x > {a} && touch {t} && mv {t} {v} && rm {a}",
        wait_for_file(&go)
    );
    let mut child = agent_running(&mock, "gap-end", &[script]);
    let root = child.id();
    // The first daemon has the session open (its call is written).
    daemon.wait_for("the agent's call", |calls, _| {
        calls.iter().any(|c| u(&c["pid"]) == root as u64)
    });
    let dir = daemon.crash();
    std::fs::write(&go, "").unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    // Two seconds apart: the ledger row's end (seconds) can tell the agent's exit from this.
    std::thread::sleep(Duration::from_secs(2));
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    let restarted_at = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let daemon = Daemon::start_in(dir, &args(&extra));
    assert_eq!(kernel_side(&daemon)["origin"], "adopted");
    let row = daemon.ledger_row_of(root);
    let sid = row["session_id"].as_str().unwrap();
    assert_eq!(u(&row["call_count"]), 1, "{row:#}");
    let actions = session_actions(&daemon, sid);
    let mut tools: Vec<(&str, u64, u64)> = actions
        .iter()
        .filter(|r| r["kind"] == "tool_run")
        .map(|r| {
            (
                r["tool"].as_str().unwrap(),
                u(&r["agent_pid"]),
                u(&r["exit_code"]),
            )
        })
        .collect();
    tools.sort();
    // `seq` and `sleep`: the wait for the go file, before and after the stop.
    let runs = tools.len() as u64;
    tools.retain(|(t, _, _)| !["seq", "sleep"].contains(t));
    let r = root as u64;
    assert_eq!(
        tools,
        vec![("bash", r, 0), ("mv", r, 0), ("rm", r, 0), ("touch", r, 0)],
        "{actions:#?}"
    );
    // `bash` started before the stop; unless its fork record was still in the ring (read
    // again for the agent's connection then in flight), the next daemon knows it from its
    // exit record alone: its start is still the real one.
    let bash = actions
        .iter()
        .find(|r| r["kind"] == "tool_run" && r["tool"] == "bash")
        .unwrap();
    assert!(
        bash["started_at"].as_str() < bash["ended_at"].as_str()
            && bash["duration_ms"].as_f64() > Some(0.0),
        "{bash:#}"
    );
    assert_eq!(
        file_counts(&actions, &a),
        vec![[1, 1, 1, 1, 0, 0]],
        "{actions:#?}"
    );
    assert_eq!(
        file_counts(&actions, &t),
        vec![[1, 1, 0, 0, 1, 0]],
        "{actions:#?}"
    );
    assert_eq!(
        file_counts(&actions, &v),
        vec![[0, 0, 0, 0, 0, 1]],
        "{actions:#?}"
    );
    assert_eq!(
        (
            u(&row["tool_runs"]),
            u(&row["files_written"]),
            u(&row["files_deleted"])
        ),
        (runs, 3, 1),
        "{row:#}"
    );
    // It ended when the agent did (before this daemon started), not at the restart.
    let ended = |r: &Value| r["ended_at"].as_str().unwrap().to_string();
    let last_tool = actions
        .iter()
        .filter(|r| r["kind"] == "tool_run")
        .map(ended)
        .max()
        .unwrap();
    assert!(ended(&row) >= last_tool, "{row:#}");
    assert!(
        ended(&row)[..19] < *restarted_at,
        "{row:#} (restarted at {restarted_at})"
    );
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        u(&status["sessions"]["restored_root_gone"]),
        1,
        "{:#}",
        status["sessions"]
    );
    let p = &status["pipeline"];
    assert_eq!(u(&p["session_exits_unseen"]), 0, "{p:#}");
    if u(&p["session_exits_learnt"]) > 0 {
        // Its own write of a (`echo x >`) was charged to the agent.
        assert!(u(&p["charged_to_root"]) >= 1, "{p:#}");
    }
    assert_eq!(
        status["sessions"]["open_sessions"], 0,
        "{:#}",
        status["sessions"]
    );
}

/// A process of a session whose parent ended is reparented (to init, or a subreaper): a
/// daemon that starts after that finds it outside every session in /proc. The kernel still
/// holds it as the session's (`SESSION_PROCS` names the root), so the next daemon puts it back
/// under its root: what it does after the restart is the session's.
#[test]
fn a_session_process_orphaned_before_a_restart_stays_in_its_session() {
    let mock = Mock::start(&[]);
    let (daemon, extra) = config_daemon(FILES, "restart-orphan");
    let work = Scratch::new("restart-orphan-work");
    let [z, go, go2] = ["z.out", "go", "go2"].map(|n| work.0.join(n).display().to_string());
    // The first child's bash exits at once: the subshell is an orphan from then on.
    let orphan = format!("( {}; echo y > {z} ) &", wait_for_file(&go));
    let mut child = agent_running(&mock, "orphan", &[orphan, wait_for_file(&go2)]);
    let root = child.id();
    daemon.wait_for("the agent's call", |calls, _| {
        calls.iter().any(|c| u(&c["pid"]) == root as u64)
    });
    let dir = daemon.crash();
    let daemon = Daemon::start_in(dir, &args(&extra));
    assert_eq!(kernel_side(&daemon)["origin"], "adopted");
    let sessions = &daemon.cli_json(&["status"])["sessions"];
    assert_eq!(u(&sessions["restored_orphans_adopted"]), 1, "{sessions:#}");
    std::fs::write(&go, "").unwrap();
    std::fs::write(&go2, "").unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let row = daemon.ledger_row_of(root);
    let sid = row["session_id"].as_str().unwrap();
    let files = session_actions(&daemon, sid);
    assert_eq!(
        file_counts(&files, &z),
        vec![[1, 1, 1, 0, 0, 0]],
        "{files:#?}"
    );
    assert_eq!(u(&row["files_written"]), 1, "{row:#}");
}
