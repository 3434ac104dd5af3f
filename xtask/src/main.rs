//! Project tasks: `cargo xtask setup | build | run | test | bench | fuzz`.
//!
//! Everything a fresh machine needs is installed here, idempotently, so the README's two
//! commands (`cargo xtask run`, `cargo xtask test`) work from a clean clone.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "agentwatch project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the build toolchain (nightly rust-src, bpf-linker on nightly's LLVM). Idempotent.
    Setup {
        /// Also install what the tests need (Python venv with the SDKs, node packages).
        #[arg(long)]
        tests: bool,
    },
    /// Build the eBPF object and target/release/agentwatch with the object embedded.
    Build,
    /// Build, then run the daemon in the foreground (as root) with embedded defaults.
    Run {
        /// Arguments passed to `agentwatch run` (e.g. --data-dir /tmp/aw).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then install the binary on PATH (`<prefix>/bin/agentwatch`), the systemd unit,
    /// a default config (kept if one exists) and the README; as a normal user the copies run
    /// under sudo. The unit is installed, not enabled: `systemctl enable --now agentwatch`.
    Install {
        /// Where the binary and docs go. Default /usr/local (the unit's ExecStart).
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install under this directory instead of / (packaging, tests); no systemctl.
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Install what `cargo xtask build` last built, without building (tests).
        #[arg(long)]
        no_build: bool,
    },
    /// A first session without an API key: the daemon on a scratch data dir, the mock LLM
    /// server, a small agent tree (official SDK clients, a sub-agent under a bash tool, one run
    /// that hits a ceiling) and `agentwatch top` on it. `q` quits; nothing is left running.
    Demo {
        /// Non-interactive: no `top`; run until a sub-agent's session has closed and the
        /// runaway is paused (at most this many seconds), print the sessions, stop everything,
        /// and fail if either was not seen.
        #[arg(long, value_name = "SECS")]
        check: Option<u64>,
        /// Use what `cargo xtask build` last built, without building (tests).
        #[arg(long)]
        no_build: bool,
    },
    /// Run every test: unit tests, then the privileged integration tests (as root).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the benchmarks and write BENCHMARKS.md.
    Bench,
    /// Soak: 1,000 agent sessions and 10,000 tool processes for N minutes; writes SOAK.md,
    /// soak.csv and soak.png (the daemon's RSS and CPU over time).
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long, default_value_t = 1000)]
        sessions: u64,
        #[arg(long, default_value_t = 10_000)]
        tools: u64,
    },
    /// Fuzz the parsers (cargo-fuzz, nightly): each target for a bounded time; fails on a crash.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Stop each target after this many executions instead (libFuzzer `-runs`); `--secs`
        /// still bounds it.
        #[arg(long)]
        runs: Option<u64>,
        /// One target (default: every target in fuzz/Cargo.toml).
        target: Option<String>,
        /// cargo-fuzz's `--sanitizer`: `address` (default) or `none`, which runs the
        /// safe-Rust parsers 2-5x faster for long runs (libzstd, the one C decoder, is in
        /// `decode`: keep `address` there).
        #[arg(long, default_value = "address")]
        sanitizer: String,
        /// Build without comparison tracing (cargo-fuzz `--no-trace-compares`): about 3x the
        /// executions per second on `decode`, at the cost of compare-guided mutation; for long
        /// runs over a corpus that comparison tracing has already grown.
        #[arg(long)]
        no_trace_compares: bool,
        /// Write the seed corpus (`fuzz/corpus/<target>/`) from its generators, then stop.
        #[arg(long)]
        write_seeds: bool,
    },
}

/// `cargo run` of a binary of the tests crate (bench, soak) with the paths it needs; its own
/// arguments go after.
fn tests_bin(name: &str) -> Command {
    let root = root();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args([
            "run",
            "--release",
            "--package",
            "agentwatch-tests",
            "--bin",
            name,
            "--",
        ])
        .env("AGENTWATCH_BIN", root.join("target/release/agentwatch"))
        .env("MOCK_LLM_BIN", root.join("target/release/mock-llm"))
        .env("AGENTWATCH_VENV", root.join(".venv"));
    cmd
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cargo_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
        .join(name)
}

/// Nightly rust-src and a bpf-linker built against nightly's own LLVM (TOOLCHAIN.md).
fn setup_toolchain() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed to build eBPF: `rustup toolchain install nightly`")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("nightly ships no libLLVM.so.* in its sysroot; bpf-linker cannot be built")?;
    let prefix = home().join(".cache/agentwatch/llvm");
    // `libLLVM.so` for building bpf-linker, and the versioned soname it loads at run time
    // (through its rpath), so it also runs outside a nightly cargo invocation.
    let versioned = libllvm.file_name().expect("a file name").to_owned();
    for name in [std::ffi::OsString::from("libLLVM.so"), versioned] {
        let link = prefix.join("lib").join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            std::fs::create_dir_all(prefix.join("lib"))?;
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&libllvm, &link)?;
        }
    }
    let linker = cargo_bin("bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !works {
        let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
        let major = version
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next())
            .context("cannot read nightly's LLVM version")?
            .to_string();
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13", "--locked"])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix))?;
    }
    Ok(())
}

/// The Python venv with the official SDKs and the node packages the integration tests drive,
/// and the programs they start (ClickHouse, kubectl).
/// The Python venv of the test clients (the official SDKs).
fn setup_venv() -> Result<()> {
    let root = root();
    let clients = root.join("tests/clients");
    let venv = root.join(".venv");
    let requirements = clients.join("requirements.txt");
    let stamp = venv.join(".requirements.installed");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        if !venv.join("bin/python").exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted)?;
    }
    Ok(())
}

/// `cargo xtask demo`: everything it starts is stopped when `top` returns (or fails), or
/// when `check` saw what the demo shows (or ran out of time).
fn demo(root: &Path, check: Option<u64>) -> Result<()> {
    use std::io::BufRead;
    use std::process::Stdio;
    let scratch = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let sudo = |program: &Path| -> Command {
        if is_root() {
            Command::new(program)
        } else {
            let mut c = Command::new("sudo");
            c.arg("--").arg(program);
            c
        }
    };
    let agentwatch = root.join("target/release/agentwatch");
    let socket = scratch.join("agentwatch.sock");
    let config = scratch.join("agentwatch.toml");
    // One ceiling the runaway reaches: it is paused, for `a`/`k` in top.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[ceilings]\nsession_calls = 6\naction = \"pause\"\nhost_usd_per_day = 5.0\n",
            scratch.join("data").display()
        ),
    )?;
    let mut mock = Command::new(root.join("target/release/mock-llm"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--exit-after-secs",
            "1800",
            "--chunk-delay-ms",
            "20",
        ])
        .arg("--state-dir")
        .arg(scratch.join("mock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the mock LLM server")?;
    let mut first = String::new();
    std::io::BufReader::new(mock.stdout.take().expect("piped")).read_line(&mut first)?;
    let port = first
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut daemon = sudo(&agentwatch)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("daemon.log"))?)
        .spawn()
        .context("starting the daemon")?;
    // Ready when it answers.
    let ready = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        sudo(&agentwatch)
            .args(["status", "--ping", "--socket"])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    // The agents: a tree (a sub-agent under a bash tool) every few seconds, bounded, and a
    // runaway loop that the ceiling pauses.
    let python = root.join(".venv/bin/python");
    let clients = root.join("tests/clients");
    let base = format!("https://127.0.0.1:{port}");
    let ca = scratch.join("mock/ca.pem");
    let common = format!("--base-url {base} --ca {}", ca.display());
    let script = format!(
        "for i in $(seq 1 120); do\n  {py} {c}/tree_agent.py {common} --calls 2 --stream --tag demo-tree \\\n    --child \"bash -c '{py} {c}/tree_agent.py {common} --calls 1 --stream --tag demo-sub'\" >/dev/null 2>&1\n  sleep 3\ndone\n",
        py = python.display(),
        c = clients.display(),
    );
    std::fs::write(scratch.join("agents.sh"), script)?;
    let mut agents = Command::new("setsid")
        .arg("bash")
        .arg(scratch.join("agents.sh"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut runaway = Command::new(&python)
        .arg(clients.join("openai_chat.py"))
        .args(common.split(' '))
        .args([
            "--calls",
            "100",
            "--tag",
            "demo-runaway",
            "--model",
            "gpt-4o",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let shown = if ready && let Some(secs) = check {
        demo_check(
            |args: &[&str]| {
                let mut c = sudo(&agentwatch);
                c.args(args).arg("--socket").arg(&socket);
                c
            },
            &scratch.join("data/ledger.jsonl"),
            secs,
        )
    } else if ready {
        sudo(&agentwatch)
            .arg("top")
            .arg("--socket")
            .arg(&socket)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    } else {
        eprintln!(
            "the daemon did not start: see {}",
            scratch.join("daemon.log").display()
        );
        false
    };
    // Everything goes: the agents' group, the runaway (stopped or not), the mock, and the
    // daemon with SIGINT (its kernel side goes with it).
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", agents.id())])
        .status();
    let _ = agents.wait();
    let _ = runaway.kill();
    let _ = runaway.wait();
    let _ = mock.kill();
    let _ = mock.wait();
    // The daemon closes the sessions whose processes just went (their ledger rows) before it
    // is stopped: a few seconds at most.
    if ready {
        for _ in 0..50 {
            let open = output(
                sudo(&agentwatch)
                    .args(["sessions", "-o", "json", "--socket"])
                    .arg(&socket),
            )
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["sessions"].as_array().map(Vec::len));
            if open.unwrap_or(0) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let mut int = if is_root() {
        Command::new("kill")
    } else {
        let mut c = Command::new("sudo");
        c.args(["--", "kill"]);
        c
    };
    let _ = int.args(["-INT", &daemon.id().to_string()]).status();
    let _ = daemon.wait();
    eprintln!(
        "demo stopped; its calls and ledger are in {} (`agentwatch ledger --data-dir {}`)",
        scratch.join("data").display(),
        scratch.join("data").display()
    );
    if !shown {
        match check {
            Some(_) => bail!("the demo did not show what it should (see above)"),
            None => bail!("agentwatch top did not run"),
        }
    }
    Ok(())
}

/// `demo --check`: waits (at most `secs`) until a tree's session with a sub-agent has closed
/// into the ledger and a session is paused by its ceiling, then prints `agentwatch sessions`.
/// `cli` is an agentwatch command (its arguments) to the demo's socket.
fn demo_check(cli: impl Fn(&[&str]) -> Command, ledger: &Path, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (mut tree_closed, mut paused) = (false, false);
    while std::time::Instant::now() < deadline {
        tree_closed = std::fs::read_to_string(ledger).is_ok_and(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|row| row["depth_max"].as_u64().unwrap_or(0) >= 1)
        });
        paused = output(&mut cli(&["sessions", "-o", "json"])).is_ok_and(|text| {
            serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| {
                v["sessions"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["outcome"] == "paused"))
            })
        });
        if tree_closed && paused {
            let _ = cli(&["sessions"]).status();
            eprintln!("demo: a sub-agent's session closed into the ledger; the runaway is paused");
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!(
        "demo: after {secs} s, a closed session with a sub-agent: {tree_closed}; a paused session: {paused}"
    );
    false
}

fn setup_test_deps() -> Result<()> {
    let root = root();
    let clients = root.join("tests/clients");
    setup_venv()?;
    npm_ci(&clients)?;
    // The real agents the opaque-binary tests run (pinned Claude Code and Codex builds).
    npm_ci(&root.join("tests/agents"))?;
    for tool in ["curl", "bash"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is needed by the integration tests: apt-get install -y {tool}");
        }
    }
    setup_clickhouse()?;
    setup_prometheus()?;
    setup_alertmanager()?;
    setup_kubectl()?;
    // A real GnuTLS client for the GnuTLS probes.
    setup_apt_tool("gnutls-cli", "gnutls-bin")?;
    // A real terminal for `agentwatch top` (tests/tests/top.rs), and the font its screenshot
    // is drawn in (tests/clients/screenshot.py).
    setup_apt_tool("tmux", "tmux")?;
    if !Path::new(SCREENSHOT_FONT).exists() {
        apt_install(&["fonts-dejavu-core"])?;
    }
    // nginx as a TLS-terminating HTTP/2 proxy in front of the mock (independent_servers.rs
    // starts its own, in the foreground, with a configuration of its own).
    // (In /usr/sbin, which a CI PATH may lack: looked for there.)
    if !Path::new("/usr/sbin/nginx").exists() {
        apt_install(&["nginx"])?;
    }
    // `go build` of the Go client (tests/clients/go) for the Go crypto/tls probes.
    setup_go()?;
    setup_static_openssl_clients()?;
    setup_litellm_prices()?;
    Ok(())
}

/// LiteLLM's published price file, pinned: the built-in table is checked against it and the
/// `pricing_file` tests load it (a file the project did not write).
const LITELLM_VERSION: &str = "1.110.2";

fn litellm_prices() -> PathBuf {
    root()
        .join("target/litellm")
        .join(LITELLM_VERSION)
        .join("model_prices_and_context_window.json")
}

/// Fetched once from PyPI (the wheel, without its dependencies) and kept in target/.
fn setup_litellm_prices() -> Result<()> {
    let file = litellm_prices();
    if file.exists() {
        return Ok(());
    }
    let dir = file.parent().expect("a directory");
    std::fs::create_dir_all(dir)?;
    let venv = root().join(".venv");
    run(Command::new(venv.join("bin/pip"))
        .args([
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .arg(format!("litellm=={LITELLM_VERSION}"))
        .arg("-d")
        .arg(dir))?;
    // The wheel is a zip; the file is `litellm/model_prices_and_context_window_backup.json`.
    let script = "import glob, sys, zipfile\n\
w = glob.glob(sys.argv[1] + '/litellm-*.whl')[0]\n\
data = zipfile.ZipFile(w).read('litellm/model_prices_and_context_window_backup.json')\n\
open(sys.argv[2] + '.tmp', 'wb').write(data)\n";
    run(Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(dir)
        .arg(&file))?;
    std::fs::rename(file.with_extension("json.tmp"), &file)?;
    for wheel in std::fs::read_dir(dir)?.flatten() {
        if wheel.path().extension().is_some_and(|e| e == "whl") {
            std::fs::remove_file(wheel.path())?;
        }
    }
    Ok(())
}

/// The stripped static OpenSSL clients of the static-TLS tests: Debian's libssl.a for the C
/// client (the test links it), and the Rust client with OpenSSL 3.6 from source (openssl-src),
/// built here into target/static-openssl (cargo makes it idempotent).
fn setup_static_openssl_clients() -> Result<()> {
    if !Path::new("/usr/lib/x86_64-linux-gnu/libssl.a").exists() {
        apt_install(&["libssl-dev"])?;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        apt_install(&["gcc", "libc6-dev"])?;
    }
    let root = root();
    run(Command::new("cargo")
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(root.join("target/static-openssl"))
        .current_dir(root.join("tests/clients/static_openssl/vendored")))
}

/// `npm ci` in `dir` unless its lock file is what was installed last (idempotent).
fn npm_ci(dir: &Path) -> Result<()> {
    let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap_or_default();
    let stamp = dir.join("node_modules/.lock-installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir))?;
        std::fs::write(&stamp, &lock)?;
    }
    Ok(())
}

/// `apt-get install -y PACKAGES`, with an `apt-get update` and one retry when the package lists
/// are stale (a fresh machine's are).
fn apt_install(packages: &[&str]) -> Result<()> {
    apt_install_with(&[], packages)
}

/// `apt_install` with `options` for apt-get (e.g. `--no-install-recommends`).
fn apt_install_with(options: &[&str], packages: &[&str]) -> Result<()> {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(options)
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        run(Command::new("apt-get").arg("update"))?;
        if !install() {
            let list = packages.join(" ");
            bail!(
                "installing {list} failed: run `apt-get install -y {list}` (Debian packages) and retry"
            );
        }
    }
    Ok(())
}

/// Debian's Prometheus (and promtool) for the dashboard and alert-rule tests, which start
/// their own on loopback: the packaged service is stopped and disabled where systemd runs it.
fn setup_prometheus() -> Result<()> {
    if Path::new("/usr/bin/prometheus").exists() && Path::new("/usr/bin/promtool").exists() {
        return Ok(());
    }
    apt_install_with(&["--no-install-recommends"], &["prometheus"])?;
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "prometheus"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    Ok(())
}

/// Debian's Alertmanager: the notification tests deliver alerts to a real one (started by
/// the test on loopback; the packaged service is not left running).
fn setup_alertmanager() -> Result<()> {
    if Path::new("/usr/bin/prometheus-alertmanager").exists() {
        return Ok(());
    }
    apt_install_with(&["--no-install-recommends"], &["prometheus-alertmanager"])?;
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "prometheus-alertmanager"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    Ok(())
}

/// Installs Debian package `package` when `tool` is not on PATH (idempotent).
/// tests/clients/screenshot.py's font (Debian's fonts-dejavu-core).
const SCREENSHOT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf";

fn setup_apt_tool(tool: &str, package: &str) -> Result<()> {
    let present = || Command::new(tool).arg("--version").output().is_ok();
    if present() {
        return Ok(());
    }
    apt_install(&[package])?;
    if !present() {
        bail!("`{tool}` is still missing after installing {package}");
    }
    Ok(())
}

/// Debian's Go toolchain when no `go` is on PATH (`go version`, not `--version`).
fn setup_go() -> Result<()> {
    let works = || {
        Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return Ok(());
    }
    apt_install(&["golang-go"])?;
    if !works() {
        bail!("golang-go is installed but `go version` fails");
    }
    Ok(())
}

/// kubectl (its built-in kustomize) for the deploy tests, which render deploy/kubernetes. One on
/// PATH is used as it is; else Debian's kubernetes-client (1.20, kustomize v2.0.3, which the
/// manifests are written for as well as for v5).
fn setup_kubectl() -> Result<()> {
    let works = || {
        Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works() {
        return Ok(());
    }
    apt_install(&["kubernetes-client"])?;
    if !works() {
        bail!("kubernetes-client is installed but `kubectl version --client` fails");
    }
    Ok(())
}

/// Debian's ClickHouse (18.16) for the export tests, installed once; the tests start their own
/// server on loopback (nothing is started or enabled here).
fn setup_clickhouse() -> Result<()> {
    let installed = ["/usr/bin/clickhouse-server", "/usr/sbin/clickhouse-server"]
        .iter()
        .any(|p| Path::new(p).exists());
    if installed {
        return Ok(());
    }
    apt_install(&["clickhouse-server", "clickhouse-client"])
}

fn build_ebpf() -> Result<()> {
    let root = root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args([
            "+nightly",
            "build",
            "--package",
            "agentwatch-ebpf",
            "--bin",
            "agentwatch",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        // Nightly must find bpf-linker even when ~/.cargo/bin is not on PATH.
        .env("PATH", path_with_cargo_bin())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn path_with_cargo_bin() -> String {
    let bin = cargo_bin("");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn build() -> Result<()> {
    setup_toolchain()?;
    build_ebpf()?;
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "agentwatch",
        "--package",
        "agentwatch-tests",
    ]))
}

/// cargo-fuzz, installed once (it drives nightly's libFuzzer integration).
fn setup_fuzz() -> Result<()> {
    output(Command::new("rustc").args(["+nightly", "-V"]))
        .context("fuzzing needs the nightly toolchain: `rustup toolchain install nightly`")?;
    let works = Command::new(cargo_bin("cargo-fuzz"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// `cargo +nightly fuzz …` from the workspace root, whatever toolchain runs xtask. The
/// variables `cargo run` set for xtask itself are removed: build scripts that watch them
/// (ring's) would otherwise rebuild the whole fuzz tree on every run.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["+nightly", "fuzz"])
        .env("PATH", path_with_cargo_bin())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let set_by_cargo_run = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_PRIMARY_PACKAGE";
        if set_by_cargo_run {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs each fuzz target (or one) for `secs` seconds over its committed seeds
/// (fuzz/corpus/<t>, read only) and a working corpus it grows (fuzz/work/<t>, ignored by git).
/// A crash, a timeout (one input over 10 s) or memory use (one allocation over 128 MiB, 2 GiB
/// in all) fails the task; libFuzzer leaves the input in fuzz/artifacts/<t>/.
/// The seed corpus, written by the unit test that checks it (its generators use the parsers'
/// test fixtures, which only the test build has).
fn write_seeds() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["test", "--release", "-p", "agentwatch", "--lib"])
        .args([
            "--",
            "--exact",
            "fuzzing::tests::fuzzing_seed_corpus_is_current",
        ])
        .env("AGENTWATCH_WRITE_SEEDS", "1"))
}

fn fuzz(
    secs: u64,
    runs: Option<u64>,
    only: Option<String>,
    sanitizer: &str,
    no_trace_compares: bool,
) -> Result<()> {
    use std::io::BufRead;

    setup_fuzz()?;
    let root = root();
    let listed = output(cargo_fuzz().arg("list"))?;
    let all: Vec<String> = listed.split_whitespace().map(str::to_string).collect();
    let targets = match only {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", all.join(", ")),
        None => all,
    };
    let compares = no_trace_compares.then_some("--no-trace-compares");
    run(cargo_fuzz()
        .args(["build", "--sanitizer", sanitizer])
        .args(compares))?;
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for t in &targets {
        let work = root.join("fuzz/work").join(t);
        std::fs::create_dir_all(&work)?;
        let mut cmd = cargo_fuzz();
        cmd.args(["run", "--sanitizer", sanitizer])
            .args(compares)
            .arg(t.as_str())
            .arg(&work)
            .arg(root.join("fuzz/corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .args(runs.map(|n| format!("-runs={n}")))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-malloc_limit_mb=128"])
            .arg("-print_final_stats=1")
            .stderr(std::process::Stdio::piped());
        eprintln!("+ {cmd:?}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("failed to start {cmd:?}"))?;
        // libFuzzer reports on stderr: pass it through, keep its closing lines.
        let mut done = String::new();
        let mut runs = String::new();
        if let Some(stderr) = child.stderr.take() {
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line?;
                eprintln!("{line}");
                if line.starts_with('#') && line.contains("DONE") {
                    done = line.trim().to_string();
                } else if line.starts_with("Done ") {
                    runs = line.trim().to_string();
                }
            }
        }
        let status = child.wait()?;
        summary.push(format!("{t:<12} {done}  ({runs})"));
        if !status.success() {
            failed.push(t.clone());
        }
    }
    eprintln!(
        "\nfuzzing summary ({secs} s per target, sanitizer {sanitizer}{}):",
        if no_trace_compares {
            ", no trace-compares"
        } else {
            ""
        }
    );
    for line in &summary {
        eprintln!("  {line}");
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {}; the crashing inputs are in fuzz/artifacts/<target>/ \
             (reproduce with `cargo +nightly fuzz run <target> <file>`; once fixed, add the \
             file to fuzz/corpus/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `cargo xtask install`: each file copied with `install(1)`, under sudo unless root (or a
/// `destdir` is given, which is the caller's).
fn install(root: &Path, prefix: &Path, destdir: Option<&Path>) -> Result<()> {
    let under = |p: &Path| -> PathBuf {
        match destdir {
            Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    };
    let sudo = destdir.is_none() && !is_root();
    let install_file = |mode: &str, from: &Path, to: &Path| -> Result<()> {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.args(["--", "install"]);
            c
        } else {
            Command::new("install")
        };
        run(cmd.args(["-D", "-m", mode]).arg(from).arg(to))
    };
    let bin = under(&prefix.join("bin/agentwatch"));
    install_file("0755", &root.join("target/release/agentwatch"), &bin)?;
    install_file(
        "0644",
        &root.join("README.md"),
        &under(&prefix.join("share/doc/agentwatch/README.md")),
    )?;
    // The unit runs `<prefix>/bin/agentwatch`.
    let unit = std::fs::read_to_string(root.join("deploy/systemd/agentwatch.service"))?.replace(
        "/usr/local/bin/agentwatch",
        &prefix.join("bin/agentwatch").display().to_string(),
    );
    let staged = root.join("target/agentwatch.service");
    std::fs::write(&staged, unit)?;
    install_file(
        "0644",
        &staged,
        &under(Path::new("/etc/systemd/system/agentwatch.service")),
    )?;
    let config = under(Path::new("/etc/agentwatch/config.toml"));
    if config.exists() {
        eprintln!("kept the existing {}", config.display());
    } else {
        install_file("0600", &root.join("deploy/systemd/config.toml"), &config)?;
    }
    if destdir.is_none() && Command::new("systemctl").arg("--version").output().is_ok() {
        let mut reload = if sudo {
            let mut c = Command::new("sudo");
            c.args(["--", "systemctl"]);
            c
        } else {
            Command::new("systemctl")
        };
        // No systemd running (a container): the unit is in place for when there is.
        let _ = run(reload.arg("daemon-reload"));
    }
    eprintln!(
        "installed {}; start it with `systemctl enable --now agentwatch`",
        bin.display()
    );
    Ok(())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = root();
    match cli.task {
        Task::Setup { tests } => {
            setup_toolchain()?;
            if tests {
                setup_test_deps()?;
            }
        }
        Task::Build => build()?,
        Task::Run { args } => {
            // Built as the user who asked; only the daemon itself runs as root.
            build()?;
            let daemon = root.join("target/release/agentwatch");
            let mut cmd = if is_root() {
                Command::new(&daemon)
            } else {
                if Command::new("sudo").arg("--version").output().is_err() {
                    bail!(
                        "the daemon loads eBPF programs and needs root, and sudo is not installed: run `{} run` as root",
                        daemon.display()
                    );
                }
                eprintln!("the daemon loads eBPF programs: asking sudo for root to run it");
                let mut c = Command::new("sudo");
                c.arg("--").arg(&daemon);
                c
            };
            cmd.arg("run").args(args);
            run(&mut cmd)?;
        }
        Task::Install {
            prefix,
            destdir,
            no_build,
        } => {
            if !no_build {
                build()?;
            }
            install(&root, &prefix, destdir.as_deref())?;
        }
        Task::Test { filter } => {
            build()?;
            setup_test_deps()?;
            let mut unit = Command::new("cargo");
            unit.current_dir(&root)
                .args([
                    "test",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "agentwatch-ebpf",
                ])
                .args(["--lib", "--bins"])
                .env("LITELLM_PRICES", litellm_prices());
            if let Some(f) = &filter {
                unit.args(["--", f.as_str()]);
            }
            run(&mut unit)?;
            if !is_root() {
                bail!("the integration tests load eBPF programs: run them as root");
            }
            let mut integration = Command::new("cargo");
            integration
                .current_dir(&root)
                .args([
                    "test",
                    "--release",
                    "--package",
                    "agentwatch-tests",
                    "--test",
                    "*",
                ])
                .env("AGENTWATCH_BIN", root.join("target/release/agentwatch"))
                .env("MOCK_LLM_BIN", root.join("target/release/mock-llm"))
                .env("AGENTWATCH_VENV", root.join(".venv"))
                .env("LITELLM_PRICES", litellm_prices())
                .env("XTASK_BIN", std::env::current_exe()?)
                .args(["--", "--test-threads=1"]);
            if let Some(f) = &filter {
                integration.arg(f);
            }
            let result = run(&mut integration);
            // Test daemons stop with SIGTERM, which leaves their kernel side pinned for a
            // next daemon: none comes after the last test.
            let _ = Command::new(root.join("target/release/agentwatch"))
                .arg("unpin")
                .status();
            result?;
        }
        Task::Demo { check, no_build } => {
            if !no_build {
                build()?;
                setup_venv()?;
            }
            demo(&root, check)?;
        }
        Task::Bench => {
            build()?;
            setup_test_deps()?;
            run(&mut tests_bin("bench"))?;
        }
        Task::Soak {
            minutes,
            sessions,
            tools,
        } => {
            build()?;
            setup_test_deps()?;
            run(tests_bin("soak")
                .args(["--minutes", &minutes.to_string()])
                .args(["--sessions", &sessions.to_string()])
                .args(["--tools", &tools.to_string()]))?;
        }
        Task::Fuzz {
            write_seeds: true, ..
        } => write_seeds()?,
        Task::Fuzz {
            secs,
            runs,
            target,
            sanitizer,
            no_trace_compares,
            ..
        } => fuzz(secs, runs, target, &sanitizer, no_trace_compares)?,
    }
    Ok(())
}
