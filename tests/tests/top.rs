//! `agentwatch top` driven in a real terminal (tmux, 80×24) against a real daemon and a real
//! agent: the screen shows the session and its tree; `p`, `a` and `k`, each confirmed with
//! `y`, pause, continue and kill it.
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
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
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

/// An agent (one call, then a tool that sleeps) is live in top; `p y` pauses its tree, `a y`
/// continues it, `k n` does nothing, `k y` kills it, `q` quits.
#[test]
fn top_pauses_approves_and_kills_a_session_after_confirmation() {
    let dir = Scratch::new("top");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(&config, "[ceilings]\nhost_usd_per_day = 100.0\n").unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let mock = Mock::start(&[]);
    let mut agent = py_client(
        "tree_agent.py",
        &mock,
        &["--calls", "1", "--tag", "top-agent", "--child", "sleep 60"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let pid = agent.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let list = daemon.cli_json(&["sessions"]);
        if let Some(s) = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| u(&s["root_pid"]) == pid as u64 && u(&s["calls"]) == 1)
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
    let screen = tmux.wait_screen("the running session", |s| {
        s.contains(&session[..8]) && s.contains("running")
    });
    // The host's day against its ceiling, the session's row and its agent tree.
    assert!(
        screen.contains("host 24h $") && screen.contains("of $100.00"),
        "{screen}"
    );
    assert!(screen.contains("python tree_agent.py"), "{screen}");
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
    let screen = tmux.wait_screen("the paused session", |s| {
        s.contains("PAUSED") && s.contains("paused by agentwatch pause")
    });
    // A screenshot of the screen, for the README.
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/top-screen.txt"),
        &screen,
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
