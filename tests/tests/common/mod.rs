//! Harness for the privileged integration tests: the real daemon, the mock LLM server and
//! real clients, each started in its own scratch directory and stopped on drop.
//! Every wait is bounded; a test selects its own rows by the pids it started.
#![allow(dead_code)]

pub mod agents;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default))
}

pub fn agentwatch_bin() -> PathBuf {
    from_env("AGENTWATCH_BIN", "target/release/agentwatch")
}

pub fn mock_bin() -> PathBuf {
    from_env("MOCK_LLM_BIN", "target/release/mock-llm")
}

/// The xtask binary `cargo xtask test` runs as (its tasks run without building again).
pub fn xtask_bin() -> PathBuf {
    from_env("XTASK_BIN", "target/debug/xtask")
}

pub fn python() -> PathBuf {
    from_env("AGENTWATCH_VENV", ".venv").join("bin/python")
}

pub fn clients() -> PathBuf {
    repo().join("tests/clients")
}

/// `go build` of the Go package in `src` into `out` with `ldflags`, offline, with its caches
/// under target/.
pub fn go_build(src: &Path, out: &Path, ldflags: &str) {
    let cache = repo().join("target/go");
    let status = Command::new("go")
        .args(["build", "-ldflags", ldflags, "-o"])
        .arg(out)
        .arg(".")
        .current_dir(src)
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .status()
        .expect("`go` (Debian golang-go; `cargo xtask setup --tests` installs it)");
    assert!(
        status.success(),
        "go build of {} failed: {status}",
        src.display()
    );
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        // Unique within this test binary (a counter) and across runs (the wall clock).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "agentwatch-test-{name}-{}-{n}-{now}",
            std::process::id(),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn terminate(child: &mut Child) {
    // SAFETY: plain kill(2) on a child we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub struct Mock {
    child: Child,
    pub port: u16,
    pub ca: PathBuf,
    pub log: PathBuf,
    _dir: Scratch,
}

impl Mock {
    pub fn start(extra: &[&str]) -> Mock {
        let dir = Scratch::new("mock");
        let log = dir.0.join("mock.jsonl");
        let mut child = Command::new(mock_bin())
            .args(["--listen", "127.0.0.1:0", "--exit-after-secs", "300"])
            .arg("--state-dir")
            .arg(&dir.0)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", mock_bin().display()));
        let port = agentwatch_tests::harness::first_line_port(&mut child);
        Mock {
            child,
            port,
            ca: dir.0.join("ca.pem"),
            log,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The mock's log lines (one per served request).
    pub fn served(&self) -> Vec<Value> {
        read_jsonl(&self.log)
            .into_iter()
            .filter(|v| v["incomplete"] != true)
            .collect()
    }

    /// Requests of which only a part arrived (their head, some of the body).
    pub fn incomplete_with_tag(&self, tag: &str) -> Vec<Value> {
        read_jsonl(&self.log)
            .into_iter()
            .filter(|v| v["incomplete"] == true && v["tag"].as_str() == Some(tag))
            .collect()
    }

    pub fn served_with_tag(&self, tag: &str) -> Vec<Value> {
        self.served()
            .into_iter()
            .filter(|v| v["tag"].as_str() == Some(tag))
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

pub struct Daemon {
    child: Child,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub stderr: PathBuf,
    /// Owns the scratch directory (data, socket, log) unless taken by `crash`.
    dir: Option<Scratch>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_in(Scratch::new("daemon"), &[])
    }

    /// Starts the daemon with `config` (TOML) as its `agentwatch.toml`, in a fresh scratch
    /// directory named after `name`.
    pub fn with_config(name: &str, config: &str) -> Daemon {
        Self::with_config_in(Scratch::new(name), config)
    }

    /// `with_config` with its data in `dir`.
    pub fn with_config_in(dir: Scratch, config: &str) -> Daemon {
        let path = dir.0.join("agentwatch.toml");
        std::fs::write(&path, config).unwrap();
        let path = path.display().to_string();
        Self::start_in(dir, &["--config", &path])
    }

    /// Starts the daemon with its data in `dir` and waits until every probe is attached.
    pub fn start_in(dir: Scratch, extra: &[&str]) -> Daemon {
        Self::start_with_env(dir, extra, &[])
    }

    /// `start_in` with extra environment variables for the daemon (e.g. its PATH).
    pub fn start_with_env(dir: Scratch, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let data_dir = dir.0.join("data");
        let socket = dir.0.join("agentwatch.sock");
        let stderr = dir.0.join("daemon.log");
        let child = Command::new(agentwatch_bin())
            .arg("run")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .envs(env.iter().copied())
            .env("AGENTWATCH_LOG", "info")
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", agentwatch_bin().display()));
        let mut daemon = Daemon {
            child,
            data_dir,
            socket,
            stderr,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "daemon exited early with {status}: {}",
                    std::fs::read_to_string(&daemon.stderr).unwrap_or_default()
                );
            }
            if daemon.cli(&["status"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in 60 s: {}",
                String::from_utf8_lossy(&daemon.cli(&["status"]).stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// A daemon whose plain-HTTP capture watches `port` (a `--plain` mock).
    pub fn watching_plain_port(name: &str, port: u16) -> Daemon {
        let dir = Scratch::new(name);
        let config = dir.0.join("agentwatch.toml");
        std::fs::write(&config, format!("[probes]\nplaintext_ports = [{port}]\n")).unwrap();
        let config = config.display().to_string();
        Daemon::start_in(dir, &["--config", &config])
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agentwatch_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "agentwatch {args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Every call row written: the rotated segments in order, then `calls.jsonl`.
    pub fn calls(&self) -> Vec<Value> {
        read_history(&self.data_dir, "calls")
    }

    /// Every ledger row written: the rotated segments in order, then `ledger.jsonl`.
    pub fn ledger(&self) -> Vec<Value> {
        read_history(&self.data_dir, "ledger")
    }

    /// The ledger row of the session whose root is `root_pid`, once written (bounded wait).
    pub fn ledger_row_of(&self, root_pid: u32) -> Value {
        self.wait_for(&format!("the ledger row of {root_pid}"), |_, l| {
            l.iter().any(|r| u(&r["root_pid"]) == root_pid as u64)
        });
        self.ledger()
            .into_iter()
            .find(|r| u(&r["root_pid"]) == root_pid as u64)
            .unwrap()
    }

    /// Waits (bounded) until `pred` holds over (calls, ledger).
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Value], &[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (calls, ledger) = (self.calls(), self.ledger());
            if pred(&calls, &ledger) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\ncalls: {calls:#?}\nledger: {ledger:#?}\nstatus: {}\nlog: {}",
                    String::from_utf8_lossy(&self.cli(&["status"]).stdout),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) -> String {
        terminate(&mut self.child);
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, as a service manager's stop or an upgrade; returns the directory so a new
    /// daemon can use its data.
    pub fn stop_keeping_data(mut self) -> Scratch {
        terminate(&mut self.child);
        self.dir.take().expect("directory owned by the daemon")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would; returns the directory so a new daemon can use its data.
    pub fn crash(mut self) -> Scratch {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take().expect("directory owned by the daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

pub use agentwatch_tests::history::read_history;

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    agentwatch_tests::history::complete_lines(&text)
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l:?}: {e}")))
        .collect()
}

/// For negative checks ("nothing of that process was recorded"): one call after it, by a
/// client that is captured, and a wait for its row. Records come through one ordered ring
/// buffer, so once the sentinel's row is in, everything written before it was handled.
/// `plain`: the mock serves plain HTTP (a watched port).
pub fn sentinel_call(daemon: &Daemon, mock: &Mock, plain: bool) {
    let mut cmd = Command::new(python());
    if plain {
        cmd.arg(clients().join("plain_vectored.py")).args([
            "--port",
            &mock.port.to_string(),
            "--mode",
            "msg",
        ]);
    } else {
        cmd.arg(clients().join("openai_chat.py"))
            .args(["--base-url", &mock.base_url()])
            .arg("--ca")
            .arg(&mock.ca);
    }
    cmd.args(["--tag", "sentinel", "--calls", "1"]);
    let (pid, _) = run_client(cmd);
    daemon.wait_for("the sentinel call's row", |calls, _| {
        calls.iter().any(|c| u(&c["pid"]) == pid as u64)
    });
}

/// Waits (bounded) for `child` to exit, whatever its status.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "client still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client to completion (bounded) and returns its pid and output.
/// `cmd` started with its output discarded.
pub fn spawn_quiet(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"))
}

pub fn run_client(mut cmd: Command) -> (u32, Output) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    let pid = child.id();
    let out = wait_bounded(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "client {cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (pid, out)
}

fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "client did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `curl` making one Chat Completions call to the mock (streamed with usage, or not).
pub fn curl_chat(mock: &Mock, tag: &str, stream: bool) -> Command {
    let body = if stream {
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#
    } else {
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#
    };
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http1.1", "--cacert"])
        .arg(&mock.ca)
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("x-test-tag: {tag}"))
        .args(["-d", body])
        .arg(format!("{}/v1/chat/completions", mock.base_url()));
    cmd
}

/// A Python SDK driver from tests/clients.
pub fn py_client(script: &str, mock: &Mock, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(clients().join(script))
        .arg("--base-url")
        .arg(mock.base_url())
        .arg("--ca")
        .arg(&mock.ca)
        .args(args);
    cmd
}

/// The node driver (official `openai` npm package); node trusts the CA through NODE_EXTRA_CA_CERTS.
pub fn node_client(mock: &Mock, args: &[&str]) -> Command {
    node_client_with(Path::new("node"), mock, args)
}

/// `node_client` run by the node executable at `node`.
pub fn node_client_with(node: &Path, mock: &Mock, args: &[&str]) -> Command {
    let mut cmd = Command::new(node);
    cmd.arg(clients().join("openai_chat.mjs"))
        .arg("--base-url")
        .arg(mock.base_url())
        .arg("--ca")
        .arg(&mock.ca)
        .env("NODE_EXTRA_CA_CERTS", &mock.ca)
        .current_dir(clients())
        .args(args);
    cmd
}

pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned integer, got {v}"))
}

/// Checks that a call row carries exactly the usage the mock served.
pub fn assert_usage_matches(call: &Value, served: &Value) {
    let usage = &served["usage"];
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ] {
        assert_eq!(
            u(&call[field]),
            u(&usage[field]),
            "{field}: call row {call} vs served {served}"
        );
    }
}

/// USD for gpt-4o-mini at the built-in rates (0.15 in, 0.075 cache read, 0.60 out per Mtok).
pub fn gpt_4o_mini_cost(call: &Value) -> f64 {
    let input = u(&call["input_tokens"]) as f64;
    let cache_read = u(&call["cache_read_tokens"]) as f64;
    let cache_write = u(&call["cache_write_tokens"]) as f64;
    let output = u(&call["output_tokens"]) as f64;
    ((input - cache_read - cache_write) * 0.15
        + cache_read * 0.075
        + cache_write * 0.15
        + output * 0.60)
        / 1e6
}

pub fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12_f64.max(b.abs() * 1e-9)
}

/// The call rows of one process.
pub fn calls_of(calls: &[Value], pid: u32) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| u(&c["pid"]) == pid as u64)
        .cloned()
        .collect()
}

/// The ledger rows of sessions rooted at one process.
pub fn ledger_of(ledger: &[Value], root_pid: u32) -> Vec<Value> {
    ledger
        .iter()
        .filter(|r| u(&r["root_pid"]) == root_pid as u64)
        .cloned()
        .collect()
}

// ------------------------------------------------------------ exact-usage checks

pub const TOKEN_FIELDS: [&str; 6] = [
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
];

/// Waits for the `n` calls and the ledger row of a one-process session.
pub fn rows_of(daemon: &Daemon, pid: u32, n: usize) -> (Vec<Value>, Value) {
    daemon.wait_for(
        &format!("{n} calls and a ledger row of pid {pid}"),
        |c, l| calls_of(c, pid).len() >= n && !ledger_of(l, pid).is_empty(),
    );
    let calls = calls_of(&daemon.calls(), pid);
    assert_eq!(calls.len(), n, "calls of pid {pid}: {calls:#?}");
    let ledger = ledger_of(&daemon.ledger(), pid);
    assert_eq!(ledger.len(), 1, "exactly one ledger row: {ledger:#?}");
    (calls, ledger[0].clone())
}

/// The ledger row's totals are the sums of its calls (whatever its outcome).
pub fn assert_ledger_totals(calls: &[Value], row: &Value) {
    for field in TOKEN_FIELDS {
        let sum: u64 = calls.iter().map(|c| u(&c[field])).sum();
        assert_eq!(u(&row[field]), sum, "ledger {field}: {row}");
    }
    let priced: Vec<f64> = calls
        .iter()
        .filter_map(|c| c["cost_usd"].as_f64())
        .collect();
    let cost: f64 = priced.iter().sum();
    assert!(
        approx(row["total_cost_usd"].as_f64().unwrap_or(0.0), cost),
        "{row}"
    );
    assert_eq!(u(&row["call_count"]), calls.len() as u64);
}

/// The ledger row's totals are the sums of its calls, and the session ran to its end.
pub fn assert_ledger_sums(calls: &[Value], row: &Value) {
    assert_ledger_totals(calls, row);
    assert_eq!(row["outcome"], "completed");
}

/// `n` complete calls of one process, each carrying exactly what the mock served.
pub fn check_exact(
    daemon: &Daemon,
    mock: &Mock,
    pid: u32,
    tag: &str,
    n: usize,
    expect: &Value,
) -> Vec<Value> {
    let (calls, row) = rows_of(daemon, pid, n);
    let served = mock.served_with_tag(tag);
    assert_eq!(served.len(), n, "mock served for tag {tag}: {served:#?}");
    for (call, served) in calls.iter().zip(&served) {
        assert_eq!(served["usage_sent"], true, "{served}");
        assert_usage_matches(call, served);
        assert_eq!(call["usage_source"], "reported", "{call}");
        assert_eq!(call["complete"], true, "{call}");
        assert_eq!(u(&call["status"]), 200);
        assert_eq!(call["session_id"], row["session_id"]);
        assert_eq!(
            u(&call["total_tokens"]),
            u(&call["input_tokens"]) + u(&call["output_tokens"])
        );
        assert_eq!(call["model"], served["model"], "{call}");
        for (key, want) in expect.as_object().unwrap() {
            assert_eq!(&call[key], want, "{key} of {call}");
        }
    }
    assert_ledger_sums(&calls, &row);
    assert_eq!(u(&row["estimated_calls"]), 0, "{row}");
    assert_eq!(u(&row["usage_missing_calls"]), 0, "{row}");
    calls
}

/// The `tls_libraries` entry of status for executable `bin`.
pub fn located<'a>(status: &'a Value, bin: &Path) -> Option<&'a Value> {
    status["tls_libraries"]
        .as_array()?
        .iter()
        .find(|l| l["path"].as_str() == bin.to_str())
}

/// Waits (bounded) until the daemon has attached to executable `bin`; returns its entry.
pub fn wait_located(daemon: &Daemon, bin: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = daemon.cli_json(&["status"]);
        if let Some(entry) = located(&status, bin) {
            return entry.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{} not attached in 30 s: {status:#}",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The C client built with `gcc -static -s` against Debian's libssl.a into `dir`.
pub fn build_static_openssl_client(dir: &Path) -> PathBuf {
    let out = dir.join("static-openssl-client");
    // Its output is the linker's warnings about static glibc's resolver, unless it fails.
    let built = Command::new("gcc")
        .args(["-static", "-O2", "-s", "-o"])
        .arg(&out)
        .arg(clients().join("static_openssl/client.c"))
        .args(["-lssl", "-lcrypto", "-lpthread", "-ldl"])
        .output()
        .expect("`gcc` (Debian build-essential)");
    assert!(
        built.status.success(),
        "gcc -static … -lssl -lcrypto failed: {}; `cargo xtask setup --tests` installs libssl-dev",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// A TCP port free on loopback now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The counts of a file row of `actions.jsonl` (and of the ClickHouse actions table).
pub const FILE_COUNTS: [&str; 6] = [
    "opened_for_write",
    "created",
    "truncated",
    "deleted",
    "renamed_from",
    "renamed_to",
];
