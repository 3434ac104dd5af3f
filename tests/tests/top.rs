//! `agentwatch top` driven in a real terminal (tmux, 80×24) against a real daemon and a real
//! agent: the screen shows the session, the share of its ceiling, its tree, its call in
//! flight and its running tool; `p`, `a` and `k`, each confirmed with `y`, pause, continue
//! and kill it. The paused screen is drawn into a PNG for the README.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A tmux server of the test's own (`-L`), so no other session is touched.
struct Tmux {
    server: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.server]);
        c
    }

    fn screen(&self) -> String {
        self.capture(false)
    }

    /// The pane's text; with `escapes`, its colours and attributes as ANSI escapes.
    fn capture(&self, escapes: bool) -> String {
        let mut c = self.cmd();
        c.args(["capture-pane", "-p", "-t", "top"]);
        if escapes {
            c.arg("-e");
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(
            self.cmd()
                .args(["send-keys", "-t", "top", keys])
                .status()
                .unwrap()
                .success()
        );
    }

    fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn wait_state(pid: u32, stopped: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while (proc_state(pid) == Some('T')) != stopped {
        assert!(
            Instant::now() < deadline,
            "pid {pid} state {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An agent (one slow streamed call, then a tool that sleeps) is live in top with its call in
/// flight, then its running tool; `p y` pauses its tree, `a y` continues it, `k n` does
/// nothing, `k y` kills it, `q` quits.
#[test]
fn top_pauses_approves_and_kills_a_session_after_confirmation() {
    let dir = Scratch::new("top");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        "[ceilings]\nhost_usd_per_day = 100.0\nsession_calls = 50\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    // A second between streamed events: the call is in flight for about 8 s.
    let mock = Mock::start(&["--chunk-delay-ms", "1000"]);
    let mut agent = spawn_quiet(&mut py_client(
        "tree_agent.py",
        &mock,
        &[
            "--calls",
            "1",
            "--stream",
            "--tag",
            "top-agent",
            "--child",
            "sleep 60",
        ],
    ));
    let pid = agent.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let list = daemon.cli_json(&["sessions"]);
        if let Some(s) = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| u(&s["root_pid"]) == pid as u64)
        {
            break s["session_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no session: {list:#}");
        std::thread::sleep(Duration::from_millis(100));
    };

    let tmux = Tmux {
        server: format!("agentwatch-test-{}", std::process::id()),
    };
    let top = format!(
        "env AGENTWATCH_SOCKET={} {} top",
        daemon.socket.display(),
        agentwatch_bin().display()
    );
    assert!(
        tmux.cmd()
            .args([
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "80",
                "-y",
                "24",
                &top
            ])
            .status()
            .unwrap()
            .success()
    );
    // The call in flight under its agent, with its model and how long it has been running.
    let screen = tmux.wait_screen("the call in flight", |s| {
        s.contains(&session[..8])
            && s.contains("running")
            && s.contains("> in flight: gpt-4o-mini for ")
    });
    assert!(screen.contains(&format!("pid {pid} ")), "{screen}");
    // Then the call ended (1 call of its 50: 2% of its ceiling) and its tool runs.
    let screen = tmux.wait_screen("the running tool", |s| {
        s.contains("tool sleep pid ") && s.contains(&format!("under pid {pid}, running "))
    });
    assert!(!screen.contains("in flight"), "{screen}");
    assert!(
        screen.contains("CEIL") && screen.contains(" 2% "),
        "{screen}"
    );
    // The host's day against its ceiling, the session's row and its agent tree.
    assert!(
        screen.contains("host 24h $") && screen.contains("of $100.00"),
        "{screen}"
    );
    assert!(screen.contains("python tree_agent"), "{screen}");
    assert!(
        screen.contains(&format!("agent tree of {session}"))
            && screen.contains(&format!("pid {pid} ")),
        "{screen}"
    );
    for line in screen.lines() {
        assert!(
            line.chars().count() <= 80,
            "wider than 80 columns: {line:?}"
        );
    }

    // `p` asks first; `y` stops the whole tree.
    tmux.keys("p");
    tmux.wait_screen("the pause confirmation", |s| {
        s.contains(&format!("pause session {}? y/n", &session[..8]))
    });
    tmux.keys("y");
    wait_state(pid, true);
    tmux.wait_screen("the paused session", |s| {
        s.contains("PAUSED") && s.contains("paused by agentwatch pause")
    });
    // A screenshot of the screen (colours and all), for the README.
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let text = target.join("top-screen.txt");
    let png = target.join("top.png");
    std::fs::write(&text, tmux.capture(true)).unwrap();
    let _ = std::fs::remove_file(&png);
    let out = Command::new(python())
        .arg(repo().join("tests/clients/screenshot.py"))
        .args([&text, &png])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
    // `a y` continues it.
    tmux.keys("a");
    tmux.wait_screen("the approve confirmation", |s| {
        s.contains("approve session")
    });
    tmux.keys("y");
    wait_state(pid, false);
    tmux.wait_screen("the running session again", |s| s.contains("running"));

    // `k` asks first; `n` cancels, and the agent is still there.
    tmux.keys("k");
    tmux.wait_screen("the confirmation", |s| {
        s.contains(&format!(
            "kill session {} and its whole process tree? y/n",
            &session[..8]
        ))
    });
    tmux.keys("n");
    tmux.wait_screen("the cancellation", |s| s.contains("cancelled"));
    assert!(agent.try_wait().unwrap().is_none(), "still running");
    tmux.keys("k");
    tmux.wait_screen("the confirmation", |s| s.contains("y/n"));
    tmux.keys("y");
    let status = wait_exit(&mut agent, Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(mock.served_with_tag("top-agent").len(), 1);
    tmux.wait_screen("the kill's message", |s| {
        s.contains(&format!("killed {}", &session[..8]))
    });
    // `q` quits and the terminal is given back.
    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "top did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command lines of live processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && proc_state(pid) != Some('Z') {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}

/// `cargo xtask demo --check` (the demo without `top`): the daemon, the mock and the agents
/// run until a sub-agent's session has closed into the ledger and the runaway is paused by
/// its ceiling; then everything it started is gone, and its rows stay.
#[test]
fn demo_runs_to_completion_and_leaves_nothing_running() {
    let scratch = repo().join("target/demo");
    let out = Command::new(xtask_bin())
        .args(["demo", "--no-build", "--check", "120"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", xtask_bin().display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the runaway is paused") && stdout.contains("paused"),
        "{stdout}\n{stderr}"
    );
    // Nothing it started is left: daemon, mock, agent loop, agents.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(&scratch.display().to_string());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {left:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The daemon went with SIGINT (its kernel side with it) and its rows stayed.
    assert!(!scratch.join("agentwatch.sock").exists());
    let ledger = std::fs::read_to_string(scratch.join("data/ledger.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.iter().any(|r| u(&r["depth_max"]) >= 1), "{ledger}");
    assert!(
        rows.iter().any(|r| r["outcome"] == "paused"),
        "the runaway's session closed paused when it was stopped: {ledger}"
    );
}
