//! Runs the `mock-llm` binary as a child process, for integration tests.
//!
//! ```no_run
//! # use agentwatch_tests::mock::process::MockProcess;
//! let dir = std::env::temp_dir().join("mock-example");
//! let mock = MockProcess::spawn(&MockProcess::default_bin(), &dir, &[]).unwrap();
//! println!("{} trusts {}", mock.base_url(), mock.ca_path().display());
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::log::{LogRecord, read_log};

/// A running `mock-llm` child; killed on drop.
pub struct MockProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
    /// `STATE_DIR/requests.jsonl` unless `--log` was in `extra_args`.
    pub log_path: PathBuf,
}

impl MockProcess {
    /// The `mock-llm` binary next to the running test executable's directory
    /// (`target/<profile>/mock-llm`); integration tests can pass
    /// `env!("CARGO_BIN_EXE_mock-llm")` instead.
    pub fn default_bin() -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_default();
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.ends_with("deps") {
            dir.pop();
        }
        dir.join("mock-llm")
    }

    /// Starts `bin --listen 127.0.0.1:0 --state-dir DIR --log DIR/requests.jsonl
    /// EXTRA…` and waits (20 s at most) for its `LISTENING` line.
    pub fn spawn(bin: &Path, state_dir: &Path, extra_args: &[&str]) -> Result<MockProcess> {
        std::fs::create_dir_all(state_dir)?;
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        let mut log_path = state_dir.join("requests.jsonl");
        if let Some(i) = extra_args.iter().position(|a| *a == "--log") {
            if let Some(p) = extra_args.get(i + 1) {
                log_path = PathBuf::from(p);
            }
        } else {
            args.push("--log".into());
            args.push(log_path.display().to_string());
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut child = Command::new(bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mock-llm printed no LISTENING line within 20 s");
            }
        };
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("unexpected first line from mock-llm: {line:?}");
        };
        Ok(MockProcess {
            child,
            addr,
            state_dir: state_dir.to_path_buf(),
            log_path,
        })
    }

    /// `https://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }

    /// The log lines written so far.
    pub fn log(&self) -> Result<Vec<LogRecord>> {
        if !self.log_path.exists() {
            return Ok(Vec::new());
        }
        Ok(read_log(&self.log_path)?)
    }

    /// Waits until the log has at least `n` lines.
    pub fn wait_log(&self, n: usize, within: Duration) -> Result<Vec<LogRecord>> {
        let start = Instant::now();
        loop {
            let recs = self.log()?;
            if recs.len() >= n {
                return Ok(recs);
            }
            if start.elapsed() > within {
                bail!("mock-llm log has {} lines, wanted {n}", recs.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (5 s at most) for the exit, then kills.
    pub fn stop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
