//! Faults tried on purpose, on the real daemon: the disk under `data_dir` fills up.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A small tmpfs mounted on a directory of the test's; unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }

    /// Writes zeros into `filler` until the disk refuses more.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn jsonl_status(daemon: &Daemon) -> Value {
    daemon.cli_json(&["status"])["jsonl"].clone()
}

fn wait_jsonl(daemon: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = jsonl_status(daemon);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every line of the file is a whole JSON row (nothing half-written).
fn assert_whole_lines(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    for line in text.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("half-written line {line:?}: {e}"));
    }
}

/// The data directory's disk fills while agents keep calling: the write failure is reported
/// (status `jsonl.ok = false`, `errors`, `last_error` naming the file), the rows are kept in
/// order (`rows_pending`), nothing half-written reaches the files; once space returns they are
/// written within a tick, each call exact, and the session's ledger row sums them.
#[test]
fn disk_full_under_data_dir_rows_wait_and_resume_in_order() {
    let dir = Scratch::new("diskfull");
    let data = dir.0.join("data");
    let disk = SmallDisk::mount(&data, "1m");
    let daemon = Daemon::start_in(dir, &[]);
    let mock = Mock::start(&[]);

    let (pid, _) = run_client(curl_chat(&mock, "full-before", false));
    check_exact(
        &daemon,
        &mock,
        pid,
        "full-before",
        1,
        &serde_json::json!({"provider": "openai"}),
    );

    let filler = disk.fill();
    let tag = "full-during";
    let mut cmd = Command::new(python());
    cmd.arg(clients().join("openai_chat.py"))
        .args(["--base-url", &mock.base_url()])
        .arg("--ca")
        .arg(&mock.ca)
        .args(["--calls", "4", "--alternate", "--tag", tag]);
    let (pid, _) = run_client(cmd);
    // 7 call and ledger rows in all: the first call and its ledger row, 4 calls and a ledger
    // row now; besides, each session's host row (actions.jsonl) when the daemon saw its
    // connection open. The files' last pages may still hold a row or two (tmpfs allocates by
    // page): the rest wait.
    let s = wait_jsonl(&daemon, "every row written or kept", |s| {
        u(&s["calls_written"])
            + u(&s["ledger_rows_written"])
            + u(&s["action_rows_written"])
            + u(&s["rows_pending"])
            >= 7
            && u(&s["rows_pending"]) >= 1
            && calls_of(&daemon.calls(), pid).len() + u(&s["rows_pending"]) as usize >= 4
    });
    assert_eq!(s["ok"], false, "{s:#}");
    assert!(u(&s["errors"]) >= 1, "{s:#}");
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(".jsonl") && e.contains("space")),
        "{s:#}"
    );
    assert_eq!(u(&s["rows_dropped"]), 0, "{s:#}");
    assert!(calls_of(&daemon.calls(), pid).len() < 4);
    assert_whole_lines(&daemon.data_dir.join("calls.jsonl"));
    assert_whole_lines(&daemon.data_dir.join("ledger.jsonl"));

    std::fs::remove_file(&filler).unwrap();
    let s = wait_jsonl(&daemon, "the kept rows written", |s| {
        s["rows_pending"].as_u64() == Some(0) && s["ok"] == true
    });
    assert_eq!(u(&s["rows_dropped"]), 0, "{s:#}");
    let expect = serde_json::json!({"provider": "openai", "api": "chat.completions"});
    let calls = check_exact(&daemon, &mock, pid, tag, 4, &expect);
    let seqs: Vec<u64> = calls.iter().map(|c| u(&c["call_seq"])).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "in order");
    assert_eq!(
        u(&s["calls_written"]) + u(&s["ledger_rows_written"]),
        7,
        "{s:#}"
    );
    let actions = daemon.data_dir.join("actions.jsonl");
    assert_eq!(
        u(&s["action_rows_written"]) as usize,
        read_jsonl(&actions).len(),
        "{s:#}"
    );
    assert_whole_lines(&daemon.data_dir.join("calls.jsonl"));
    assert_whole_lines(&actions);
    // Unmounted before the scratch directory holding the mount point is removed.
    let scratch = daemon.stop_keeping_data();
    drop(disk);
    drop(scratch);
}

/// Sets the soft limit of open files of process `pid`; returns the limits it had.
fn set_nofile_soft(pid: u32, soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on a process of ours, with valid pointers.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit get");
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit set");
    old
}

/// A TLS attach fails for real (the daemon is out of file descriptors while it probes an
/// agent: EMFILE creating the uprobe links), and is shown (`attach_failures`, `ok = false`).
/// Once descriptors are back, the next agent's attach of the same library succeeds: the
/// failure is cleared and the daemon is ready again, instead of staying not-ready forever.
#[test]
fn a_failed_attach_is_retried_and_cleared_once_it_succeeds() {
    // A kernel side of its own (not one an earlier test's daemon left pinned).
    let _ = Command::new(agentwatch_bin())
        .arg("unpin")
        .stdout(Stdio::null())
        .status();
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let pid = daemon.pid();
    assert_eq!(daemon.cli_json(&["status"])["ok"], true);
    // Once the status request's connection is closed: one descriptor to spare, for the
    // files read one at a time (the process's maps, the library); the links then fail.
    std::thread::sleep(Duration::from_millis(300));
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let old = set_nofile_soft(pid, open + 1);
    let mut cmd = curl_chat(&mock, "fd-starved", false);
    cmd.arg("-o").arg("/dev/null");
    run_client(cmd);
    std::thread::sleep(Duration::from_millis(500));
    set_nofile_soft(pid, old.rlim_cur);
    let status = daemon.cli_json(&["status"]);
    let failures = status["attach_failures"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(!failures.is_empty(), "the attach failed: {status:#}");
    assert!(
        failures
            .values()
            .any(|e| e.as_str().is_some_and(|e| e.contains("open files")
                || e.contains("EMFILE")
                || e.contains("os error 24"))),
        "{failures:#?}"
    );
    assert_eq!(status["ok"], false, "{status:#}");

    let (pid2, _) = run_client(curl_chat(&mock, "fd-back", false));
    check_exact(
        &daemon,
        &mock,
        pid2,
        "fd-back",
        1,
        &serde_json::json!({"provider": "openai"}),
    );
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        status["attach_failures"],
        serde_json::json!({}),
        "{status:#}"
    );
    assert!(u(&status["attach_failures_cleared"]) >= 1, "{status:#}");
    assert_eq!(status["ok"], true, "{status:#}");
}

/// The ring buffer made tiny by config (64 KiB) under a burst: a 300 KB request cannot be
/// captured, and its loss is counted; the same keep-alive connection resynchronises at the
/// next request, whose calls are exact. Then four clients at once, each a large request among
/// small ones: whatever the ring drops, no row carries numbers the mock did not serve (a call
/// that lost bytes is marked incomplete or without usage, never wrong), and a call after the
/// burst is exact.
#[test]
fn a_tiny_ring_under_a_burst_counts_loss_resyncs_and_is_never_wrong() {
    let dir = Scratch::new("ringburst");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(&config, "[probes]\nring_buffer_bytes = 65536\n").unwrap();
    let config = config.display().to_string();
    // A pinned kernel side of an earlier daemon would be adopted with its own (large) ring.
    let _ = Command::new(agentwatch_bin())
        .arg("unpin")
        .stdout(Stdio::null())
        .status();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let mock = Mock::start(&[]);
    let big = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "lorem ipsum ".repeat(25_000)
    );
    let body_file = daemon.data_dir.parent().unwrap().join("big.json");
    std::fs::write(&body_file, &big).unwrap();
    let small = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let curl = |tag: &str| {
        let mut cmd = Command::new("curl");
        for (i, (t, data)) in [
            (format!("{tag}-big"), format!("@{}", body_file.display())),
            (format!("{tag}-small"), small.to_string()),
            (format!("{tag}-small"), small.to_string()),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                cmd.arg("--next");
            }
            cmd.args(["-sS", "--fail", "--http1.1", "-o", "/dev/null", "--cacert"])
                .arg(&mock.ca)
                .args(["-H", "content-type: application/json"])
                .args(["-H", &format!("x-test-tag: {t}")])
                .args(["-d", data, &url]);
        }
        cmd
    };

    // One connection: loss, then resynchronised.
    let (pid, _) = run_client(curl("resync"));
    let served = mock.served_with_tag("resync-small");
    assert_eq!(served.len(), 2);
    daemon.wait_for("the small calls' rows", |calls, _| {
        calls_of(calls, pid)
            .iter()
            .filter(|c| c["complete"] == true)
            .count()
            >= 2
    });
    let mut rows = calls_of(&daemon.calls(), pid);
    rows.sort_by_key(|c| u(&c["call_seq"]));
    let exact: Vec<&Value> = rows.iter().filter(|c| c["complete"] == true).collect();
    assert_eq!(exact.len(), 2, "the two calls after the loss: {rows:#?}");
    for (call, s) in exact.iter().zip(&served) {
        assert_usage_matches(call, s);
        assert_eq!(call["usage_source"], "reported", "{call}");
    }
    let status = daemon.cli_json(&["status"]);
    assert!(
        u(&status["kernel_drops"]["ringbuf_full_events"]) > 0,
        "{status:#}"
    );
    assert!(u(&status["capture"]["losses"]) > 0, "{status:#}");

    // A burst: four connections at once.
    let children: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = curl(&format!("burst{i}"));
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    let mut pids = Vec::new();
    for mut c in children {
        let pid = c.id();
        assert!(c.wait().unwrap().success());
        pids.push(pid);
    }
    let (after, _) = run_client(curl_chat(&mock, "after-burst", false));
    check_exact(
        &daemon,
        &mock,
        after,
        "after-burst",
        1,
        &serde_json::json!({"provider": "openai"}),
    );
    let served = mock.served();
    let calls = daemon.calls();
    for pid in pids {
        for call in calls_of(&calls, pid) {
            if call["complete"] == true && call["usage_source"] == "reported" {
                assert!(
                    served.iter().any(|s| {
                        ["input_tokens", "output_tokens", "cache_read_tokens"]
                            .iter()
                            .all(|f| call[*f] == s["usage"][*f])
                    }),
                    "a complete row matches no served call: {call}"
                );
            }
        }
    }
}
