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
fn setup_test_deps() -> Result<()> {
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
    setup_kubectl()?;
    // A real GnuTLS client for the GnuTLS probes.
    setup_apt_tool("gnutls-cli", "gnutls-bin")?;
    // nginx as a TLS-terminating HTTP/2 proxy in front of the mock (independent_servers.rs
    // starts its own, in the foreground, with a configuration of its own).
    // (In /usr/sbin, which a CI PATH may lack: looked for there.)
    if !Path::new("/usr/sbin/nginx").exists() {
        apt_install(&["nginx"])?;
    }
    // `go build` of the Go client (tests/clients/go) for the Go crypto/tls probes.
    setup_go()?;
    setup_static_openssl_clients()?;
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

/// Installs Debian package `package` when `tool` is not on PATH (idempotent).
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
            build()?;
            if !is_root() {
                bail!("the daemon loads eBPF programs: run `sudo -E cargo xtask run`");
            }
            let mut cmd = Command::new(root.join("target/release/agentwatch"));
            cmd.arg("run").args(args);
            run(&mut cmd)?;
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
                .args(["--lib", "--bins"]);
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
