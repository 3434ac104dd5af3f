//! Privileged end-to-end tests of opaque agents: the real, stripped, statically linked coding
//! agents from the npm registry (pinned in tests/agents/package.json) run headless against the
//! mock. They export no TLS symbols; the daemon locates their TLS library's read and write
//! functions by analysis and must record exactly the usage the mock served.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The executable of an installed agent package, resolved the way the daemon sees it.
fn agent(package: &str, file: &str) -> PathBuf {
    let path = repo()
        .join("tests/agents/node_modules")
        .join(package)
        .join(file);
    path.canonicalize().unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo xtask setup --tests` (it installs the pinned agents)",
            path.display()
        )
    })
}

/// `claude -p "say hi"` headless against the mock: one streamed `POST /v1/messages`.
fn claude(bin: &Path, mock: &Mock, home: &Path, tag: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-p", "say hi"])
        .current_dir(home)
        .env("HOME", home)
        .env("CLAUDE_CONFIG_DIR", home.join(".claude"))
        .env("ANTHROPIC_BASE_URL", mock.base_url())
        .env("ANTHROPIC_API_KEY", "test")
        .env("NODE_EXTRA_CA_CERTS", &mock.ca)
        .env("ANTHROPIC_CUSTOM_HEADERS", format!("x-test-tag: {tag}"))
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_ERROR_REPORTING", "1");
    cmd
}

/// A daemon with the agents' directories first on its PATH, so it analyses and attaches
/// them at start (an agent's first run is covered), with a config file in `dir` if given.
fn daemon_with_agents(bins: &[&Path], config: Option<(Scratch, &Path)>) -> Daemon {
    let mut dirs: Vec<String> = bins
        .iter()
        .map(|b| b.parent().unwrap().display().to_string())
        .collect();
    dirs.push(std::env::var("PATH").unwrap_or_default());
    let path = dirs.join(":");
    match config {
        Some((dir, file)) => {
            let file = file.display().to_string();
            Daemon::start_with_env(dir, &["--config", &file], &[("PATH", &path)])
        }
        None => Daemon::start_with_env(Scratch::new("daemon"), &[], &[("PATH", &path)]),
    }
}

fn located<'a>(status: &'a Value, bin: &Path) -> Option<&'a Value> {
    status["tls_libraries"]
        .as_array()?
        .iter()
        .find(|l| l["path"].as_str() == bin.to_str())
}

fn wait_located(daemon: &Daemon, bin: &Path) -> Value {
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

fn check_boringssl_entry(entry: &Value) {
    assert_eq!(entry["kind"], "boringssl", "{entry}");
    assert_eq!(
        entry["symbols"],
        json!(["SSL_write", "SSL_read"]),
        "{entry}"
    );
    let coverage = entry["coverage"].as_str().unwrap_or_default();
    assert!(
        coverage.starts_with("exact: BoringSSL SSL_write/SSL_read located by analysis"),
        "{entry}"
    );
}

/// Two Claude Code builds (Bun with BoringSSL inside, stripped of TLS symbols). The first is
/// on the daemon's PATH and attached at start; the second is found when it is exec'd (its
/// first process only announces it: `claude --version` makes no call). Each call is recorded
/// exactly as the mock served it, as an Anthropic streaming Messages call.
#[test]
fn claude_code_two_versions_exact_usage() {
    let newer = agent("claude-code-2.1.328", "claude");
    let older = agent("claude-code-2.1.110", "claude");
    let home = Scratch::new("claude-home");
    let daemon = daemon_with_agents(&[&newer], None);
    let mock = Mock::start(&[]);
    let expect = json!({
        "provider": "anthropic", "api": "messages", "streaming": true, "http_version": "1.1",
    });

    // The same analysis, offline: `agentwatch inspect`.
    for bin in [&newer, &older] {
        let out = Command::new(agentwatch_bin())
            .arg("inspect")
            .arg(bin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("exact: BoringSSL SSL_write/SSL_read located"),
            "{text}"
        );
    }
    check_boringssl_entry(&wait_located(&daemon, &newer));
    let (pid, out) = run_client(claude(&newer, &mock, &home.0, "cc-newer"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
        "{out:?}"
    );
    check_exact(&daemon, &mock, pid, "cc-newer", 1, &expect);

    run_client({
        let mut c = Command::new(&older);
        c.arg("--version").env("HOME", &home.0);
        c
    });
    check_boringssl_entry(&wait_located(&daemon, &older));
    let (pid, _) = run_client(claude(&older, &mock, &home.0, "cc-older"));
    check_exact(&daemon, &mock, pid, "cc-older", 1, &expect);

    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["ok"], true, "{status:#}");
    assert_eq!(u(&status["kernel_drops"]["args_map_full"]), 0);
    for bin in [&newer, &older] {
        let entry = located(&status, bin).unwrap();
        assert_eq!(
            entry["confirmed"], true,
            "first plaintext was HTTP: {entry}"
        );
    }
}

const CODEX_EXE: &str = "vendor/x86_64-unknown-linux-musl/bin/codex";

/// The newest pinned Codex (the one `@openai/codex` depends on).
fn codex_bin() -> PathBuf {
    agent("@openai/codex-linux-x64", CODEX_EXE)
}

/// Both pinned Codex builds, newest first: the analysis must not depend on one build's bytes.
fn codex_bins() -> [PathBuf; 2] {
    [codex_bin(), agent("codex-0.160.0", CODEX_EXE)]
}

/// `codex exec "say hi"` headless against the mock, through a custom provider (HTTPS only,
/// Responses API); `websockets` picks its WebSocket transport over `POST /v1/responses`.
fn codex(bin: &Path, mock: &Mock, home: &Path, tag: &str, websockets: bool) -> Command {
    let provider = format!(
        "model_providers.mock={{name=\"mock\",base_url=\"{}/v1\",env_key=\"MOCK_KEY\",wire_api=\"responses\",supports_websockets={websockets},http_headers={{\"x-test-tag\"=\"{tag}\"}}}}",
        mock.base_url()
    );
    let mut cmd = Command::new(bin);
    cmd.args([
        "exec",
        "--skip-git-repo-check",
        "-c",
        "model_provider=\"mock\"",
        "-c",
    ])
    .arg(provider)
    .arg("say hi")
    .current_dir(home)
    .env("HOME", home)
    .env("CODEX_HOME", home.join(".codex"))
    .env("MOCK_KEY", "test")
    .env("OPENAI_API_KEY", "test")
    .env("CODEX_CA_CERTIFICATE", &mock.ca);
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    cmd
}

/// Codex's default transport, the Responses API over a WebSocket (`GET /v1/responses`,
/// upgraded), with and without permessage-deflate: a warm-up `response.create` (not billed)
/// and the real one, whose usage comes in `response.completed`. Recorded exactly, for both
/// pinned Codex builds.
#[test]
fn codex_over_websocket_exact_usage_with_and_without_deflate() {
    let bins = codex_bins();
    let home = Scratch::new("codex-ws-home");
    let daemon = daemon_with_agents(&[&bins[0], &bins[1]], None);
    let expect = json!({
        "provider": "openai", "api": "responses", "streaming": true, "http_version": "1.1",
    });
    for (version, bin) in bins.iter().enumerate() {
        wait_located(&daemon, bin);
        for (deflate, extra) in [(true, &[][..]), (false, &["--no-ws-deflate"][..])] {
            let mock = Mock::start(extra);
            let tag = format!(
                "codex{version}-ws-{}",
                if deflate { "deflate" } else { "plain" }
            );
            let (pid, out) = run_client(codex(bin, &mock, &home.0, &tag, true));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
                "{}: {out:?}",
                bin.display()
            );
            let served = mock.served_with_tag(&tag);
            assert_eq!(served.len(), 1, "{served:#?}");
            assert_eq!(served[0]["protocol"], "websocket", "{}", served[0]);
            assert_eq!(served[0]["websocket_deflate"], deflate, "{}", served[0]);
            check_exact(&daemon, &mock, pid, &tag, 1, &expect);
        }
    }
    let status = daemon.cli_json(&["status"]);
    let capture = &status["capture"];
    assert!(u(&capture["websocket_connections"]) >= 4, "{capture}");
    assert!(u(&capture["websocket_warmups"]) >= 4, "{capture}");
    assert_eq!(u(&capture["websocket_desynced"]), 0, "{capture}");
    assert_eq!(u(&capture["websocket_inflate_errors"]), 0, "{capture}");
}

/// Codex (a static musl Rust binary, stripped; rustls over aws-lc) over HTTPS: the AEAD
/// functions every TLS record passes are located by analysis, records are linked to their
/// socket, and the Responses call is recorded exactly as the mock served it, for two Codex
/// builds (0.169.0 and 0.160.0; their aws-lc code sits at different offsets).
#[test]
fn codex_over_https_exact_usage() {
    let bins = codex_bins();
    let home = Scratch::new("codex-home");
    let daemon = daemon_with_agents(&[&bins[0], &bins[1]], None);
    let mock = Mock::start(&[]);
    let expect = json!({
        "provider": "openai", "api": "responses", "streaming": true, "http_version": "1.1",
    });
    for (version, bin) in bins.iter().enumerate() {
        let entry = wait_located(&daemon, bin);
        assert_eq!(entry["kind"], "aws-lc-aead", "{entry}");
        assert_eq!(
            entry["symbols"],
            json!(["EVP_AEAD_CTX_seal", "EVP_AEAD_CTX_open"]),
            "{entry}"
        );
        assert!(
            entry["coverage"]
                .as_str()
                .unwrap_or_default()
                .starts_with("exact: aws-lc EVP_AEAD_CTX_seal/open located by analysis"),
            "{entry}"
        );
        for round in 0..2 {
            let tag = format!("codex{version}-{round}");
            let (pid, out) = run_client(codex(bin, &mock, &home.0, &tag, false));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
                "{} round {round}: {out:?}",
                bin.display()
            );
            check_exact(&daemon, &mock, pid, &tag, 1, &expect);
        }
    }
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["ok"], true, "{status:#}");
    assert!(
        u(&status["aead"]["aead_app_records"]) >= 8,
        "{}",
        status["aead"]
    );
    assert_eq!(
        u(&status["aead"]["aead_malformed"]),
        0,
        "{}",
        status["aead"]
    );
    for bin in &bins {
        assert_eq!(
            located(&status, bin).unwrap()["confirmed"],
            true,
            "{}",
            bin.display()
        );
    }
}

fn wait_end(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not end in 120 s", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ceilings hold opaque agents at their located probes like any other client. The host's
/// day is capped at $0.01: Claude Code's call (priced by a `[[pricing]]` entry) takes the host
/// over, and then a Codex run, a new session, is killed at its first request record (held at
/// `EVP_AEAD_CTX_seal`) before any byte of it leaves the host.
#[test]
fn host_ceiling_stops_an_opaque_agent_before_its_call_leaves() {
    let claude_bin = agent("claude-code-2.1.328", "claude");
    let codex_bin = codex_bin();
    let home = Scratch::new("ceiling-home");
    let dir = Scratch::new("ceiling-daemon");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        "[ceilings]\nhost_usd_per_day = 0.01\naction = \"kill\"\n\n\
         [[pricing]]\nmodel = \"claude-*\"\ninput_per_mtok = 10.0\noutput_per_mtok = 10.0\n",
    )
    .unwrap();
    let daemon = daemon_with_agents(&[&claude_bin, &codex_bin], Some((dir, &config)));
    let mock = Mock::start(&[]);
    wait_located(&daemon, &claude_bin);
    wait_located(&daemon, &codex_bin);

    // The call that takes the host over completes; its session is then killed.
    let mut first = claude(&claude_bin, &mock, &home.0, "ceiling-claude")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_end(&mut first);
    assert_eq!(mock.served_with_tag("ceiling-claude").len(), 1);
    daemon.wait_for("Claude's priced call", |calls, _| {
        calls
            .iter()
            .any(|c| c["cost_usd"].as_f64().is_some_and(|x| x > 0.01))
    });

    let mut codex = codex(&codex_bin, &mock, &home.0, "ceiling-codex", false)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = codex.id();
    let status = wait_end(&mut codex);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(
        mock.served_with_tag("ceiling-codex").len(),
        0,
        "nothing of Codex's call left the host"
    );
    // Its attempt is on record as blocked, charged to its own session.
    daemon.wait_for("Codex's blocked attempt", |calls, _| {
        calls
            .iter()
            .any(|c| u(&c["pid"]) == pid as u64 && c["blocked"] == true)
    });
}
