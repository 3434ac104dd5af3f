//! What the long-running measurements (`bench`, `soak`) share: paths, children stopped on
//! drop, and the mock server started on a free loopback port.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `$var`, else `default` under the repository's root.
pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default))
}

/// A child stopped with SIGINT on drop: a daemon then stops for good and takes its pinned
/// kernel side along (SIGTERM would leave it attached for a next daemon, and measurements
/// made without a daemon would pay for it).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) with integer arguments.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// The mock LLM server (`$MOCK_LLM_BIN`) on a free loopback port, its CA and log in
/// `scratch`, exiting by itself after `exit_after_secs`. Returns it and its port.
pub fn start_mock(scratch: &Path, exit_after_secs: u64) -> (Proc, u16) {
    let mut mock = Command::new(env_path("MOCK_LLM_BIN", "target/release/mock-llm"))
        .args(["--listen", "127.0.0.1:0", "--exit-after-secs"])
        .arg(exit_after_secs.to_string())
        .arg("--state-dir")
        .arg(scratch)
        .arg("--log")
        .arg(scratch.join("mock.jsonl"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start mock-llm (`cargo xtask build` builds it)");
    let port = first_line_port(&mut mock);
    (Proc(mock), port)
}

/// The port in the first line a server child prints on its piped stdout (`…:PORT`).
pub fn first_line_port(child: &mut Child) -> u16 {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("piped stdout")),
        &mut line,
    )
    .expect("the server's first line");
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the server's first line names no port: {line:?}"))
}
