//! Privileged end-to-end tests of opaque agents: the real, stripped, statically linked coding
//! agents from the npm registry (pinned in tests/agents/package.json) run headless against the
//! mock. They export no TLS symbols; the daemon locates their TLS library's read and write
//! functions by analysis and must record exactly the usage the mock served.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::agents::*;
use common::*;
use serde_json::{Value, json};

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

/// A daemon that has never seen the agents (they are not on its PATH, nor in its data
/// directory's analysis cache): each is analysed and probed at its first contact, with a
/// config file in `dir` if given.
fn daemon_for_agents(config: Option<(Scratch, &Path)>) -> Daemon {
    match config {
        Some((dir, file)) => {
            let file = file.display().to_string();
            Daemon::start_in(dir, &["--config", &file])
        }
        None => Daemon::start(),
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

/// Two Claude Code builds (Bun with BoringSSL inside, stripped of TLS symbols), neither seen
/// by the daemon before: each is analysed and probed at its first contact, and its first
/// call is recorded exactly as the mock served it, as an Anthropic streaming Messages call.
#[test]
fn claude_code_two_versions_exact_usage() {
    let newer = agent("claude-code-2.1.328", "claude");
    let older = agent("claude-code-2.1.110", "claude");
    let home = Scratch::new("claude-home");
    let daemon = daemon_for_agents(None);
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
    let (pid, out) = run_client(claude(&newer, &mock, &home.0, "cc-newer"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
        "{out:?}"
    );
    check_exact(&daemon, &mock, pid, "cc-newer", 1, &expect);
    check_boringssl_entry(&wait_located(&daemon, &newer));

    let (pid, _) = run_client(claude(&older, &mock, &home.0, "cc-older"));
    check_exact(&daemon, &mock, pid, "cc-older", 1, &expect);
    check_boringssl_entry(&wait_located(&daemon, &older));

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

/// Both pinned Codex builds, newest first: the analysis must not depend on one build's bytes.
fn codex_bins() -> [PathBuf; 2] {
    [codex_bin(), agent("codex-0.160.0", CODEX_EXE)]
}

/// `codex exec "say hi"` headless against the mock, through a custom provider (HTTPS only,
/// Responses API); `websockets` picks its WebSocket transport over `POST /v1/responses`.
fn codex(bin: &Path, mock: &Mock, home: &Path, tag: &str, websockets: bool) -> Command {
    let mut cmd = codex_at(bin, &mock.base_url(), home, tag, websockets);
    cmd.env("CODEX_CA_CERTIFICATE", &mock.ca);
    cmd
}

/// Runs `cmd` in a mount namespace of its own where the system's CA bundle also trusts the
/// mock's CA and `api.openai.com` resolves to loopback: Codex as users run it, with no CA
/// override (which would switch its HTTPS to rustls over aws-lc).
fn with_system_roots_trusting(cmd: &mut Command, mock: &Mock, dir: &Path) {
    use std::os::unix::process::CommandExt;
    const BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
    let mut bundle = std::fs::read(BUNDLE).unwrap_or_default();
    bundle.extend(std::fs::read(&mock.ca).unwrap());
    let (bundle_file, hosts_file) = (dir.join("ca-bundle.pem"), dir.join("hosts"));
    std::fs::write(&bundle_file, bundle).unwrap();
    std::fs::write(
        &hosts_file,
        "127.0.0.1 localhost\n127.0.0.1 api.openai.com\n",
    )
    .unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mounts = [
        (c(&bundle_file), c(Path::new(BUNDLE))),
        (c(&hosts_file), c(Path::new("/etc/hosts"))),
    ];
    let root = c(Path::new("/"));
    // Either names a custom CA to Codex (this machine sets SSL_CERT_FILE for everyone).
    cmd.env_remove("SSL_CERT_FILE")
        .env_remove("CODEX_CA_CERTIFICATE");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            for (from, to) in &mounts {
                if libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
            }
            Ok(())
        });
    }
}

/// Codex as users run it, trusting the system's roots (no CA override), calling
/// `api.openai.com` (the mock, by a private /etc/hosts), on a port the daemon also estimates
/// (it stands for 443). Its WebSocket transport is rustls over aws-lc; its HTTPS transport is
/// then the static OpenSSL 3.6 beside it (native-tls), located by the names its errors carry.
/// Both are recorded exactly, and the SNI estimate does not count them a second time.
#[test]
fn codex_with_system_roots_exact_over_aws_lc_websocket_and_openssl_https() {
    let bin = codex_bin();
    let home = Scratch::new("codex-roots-home");
    let mock = Mock::start(&[]);
    let dir = Scratch::new("codex-roots-daemon");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        format!("[probes]\nestimate_ports = [{}]\n", mock.port),
    )
    .unwrap();
    let daemon = daemon_for_agents(Some((dir, &config)));
    let base_url = format!("https://api.openai.com:{}", mock.port);
    let run = |tag: &str, websockets: bool| {
        let mut cmd = codex_at(&bin, &base_url, &home.0, tag, websockets);
        with_system_roots_trusting(&mut cmd, &mock, &home.0);
        let (pid, out) = run_client(cmd);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Mock reply"),
            "{tag}: {out:?}"
        );
        pid
    };
    let aead_records = |daemon: &Daemon| u(&daemon.cli_json(&["status"])["aead"]["aead_records"]);
    let expect = json!({"provider": "openai", "api": "responses", "streaming": true});
    for (tag, websockets, protocol) in [
        ("codex-roots-ws", true, "websocket"),
        ("codex-roots-https", false, "http/1.1"),
    ] {
        let before = aead_records(&daemon);
        let pid = run(tag, websockets);
        let served = mock.served_with_tag(tag);
        assert_eq!(served[0]["protocol"], protocol, "{}", served[0]);
        let calls = check_exact(&daemon, &mock, pid, tag, 1, &expect);
        // From the Host header, which carries the port.
        assert_eq!(
            calls[0]["server_address"],
            format!("api.openai.com:{}", mock.port),
            "{}",
            calls[0]
        );
        // Which stack carried it: records through aws-lc's AEAD for the WebSocket, none for
        // HTTPS (OpenSSL's own ciphers).
        let after = aead_records(&daemon);
        assert_eq!(
            after > before,
            websockets,
            "{tag}: AEAD records {before} -> {after}"
        );
    }
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        located(&status, &bin).unwrap()["confirmed"],
        true,
        "{status:#}"
    );
    assert_eq!(
        u(&status["estimates"]["stats"]["estimated_calls"]),
        0,
        "{status:#}"
    );
    assert!(
        u(&status["estimates"]["stats"]["superseded_turns"]) >= 1,
        "{status:#}"
    );
}

/// Codex's default transport, the Responses API over a WebSocket (`GET /v1/responses`,
/// upgraded), with and without permessage-deflate: a warm-up `response.create` (not billed)
/// and the real one, whose usage comes in `response.completed`. Recorded exactly, for both
/// pinned Codex builds.
#[test]
fn codex_over_websocket_exact_usage_with_and_without_deflate() {
    let bins = codex_bins();
    let home = Scratch::new("codex-ws-home");
    let daemon = daemon_for_agents(None);
    let expect = json!({
        "provider": "openai", "api": "responses", "streaming": true, "http_version": "1.1",
    });
    for (version, bin) in bins.iter().enumerate() {
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
    let daemon = daemon_for_agents(None);
    let mock = Mock::start(&[]);
    let expect = json!({
        "provider": "openai", "api": "responses", "streaming": true, "http_version": "1.1",
    });
    for (version, bin) in bins.iter().enumerate() {
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
        let entry = wait_located(&daemon, bin);
        assert_eq!(entry["kind"], "aws-lc-aead", "{entry}");
        // rustls over aws-lc, and the static OpenSSL beside it.
        assert_eq!(
            entry["symbols"],
            json!([
                "EVP_AEAD_CTX_seal",
                "EVP_AEAD_CTX_open",
                "ssl_write_internal",
                "ssl_read_internal",
                "SSL_do_handshake"
            ]),
            "{entry}"
        );
        let coverage = entry["coverage"].as_str().unwrap_or_default();
        assert!(
            coverage.starts_with("exact: aws-lc EVP_AEAD_CTX_seal/open located by analysis")
                && coverage.contains(
                    "; OpenSSL 3.6 ssl_write_internal/ssl_read_internal located by analysis"
                ),
            "{entry}"
        );
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
    // Every sealed application record met the socket write that links it.
    assert_eq!(
        u(&status["aead"]["aead_unlinked_dropped"]),
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
    let daemon = daemon_for_agents(Some((dir, &config)));
    let mock = Mock::start(&[]);

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

/// A copy of the agent at `bin` in `dir`, its identity changed so that no cache of any
/// analysis can know it: the GNU build id's last byte flipped where it has one, else a byte
/// appended (a musl static binary does not read past its segments).
fn fresh_copy(bin: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(bin.file_name().unwrap());
    let mut bytes = std::fs::read(bin).unwrap();
    let marker = b"GNU\0";
    // The note: namesz 4, descsz 20, type 3 (NT_GNU_BUILD_ID), "GNU\0", 20 bytes of id.
    let note = bytes
        .windows(16)
        .position(|w| w[0..4] == [4, 0, 0, 0] && w[8..12] == [3, 0, 0, 0] && &w[12..16] == marker);
    match note {
        Some(at) => {
            let descsz = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            bytes[at + 16 + descsz - 1] ^= 0xff;
        }
        None => bytes.push(0),
    }
    std::fs::write(&out, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// The first run of a build nobody has seen: Claude Code and Codex copied to a directory of
/// their own (not on anyone's PATH), their identity changed (no cache helps), each run once
/// with one call while the daemon is already running. The process is stopped at its first
/// contact while the daemon analyses the binary, probed, and continued: its one call is exact.
#[test]
fn never_seen_agent_builds_are_exact_from_their_first_run() {
    let dir = Scratch::new("fresh-agents");
    let home = Scratch::new("fresh-home");
    let daemon = daemon_for_agents(None);
    let mock = Mock::start(&[]);
    let claude_copy = fresh_copy(&agent("claude-code-2.1.328", "claude"), &dir.0);
    let (pid, _) = run_client(claude(&claude_copy, &mock, &home.0, "fresh-claude"));
    check_exact(
        &daemon,
        &mock,
        pid,
        "fresh-claude",
        1,
        &json!({"provider": "anthropic", "api": "messages", "streaming": true}),
    );
    let codex_dir = Scratch::new("fresh-codex");
    let codex_copy = fresh_copy(&codex_bin(), &codex_dir.0);
    let expect = json!({"provider": "openai", "api": "responses", "streaming": true});
    for (tag, websockets) in [("fresh-codex-https", false), ("fresh-codex-ws", true)] {
        let (pid, _) = run_client(codex(&codex_copy, &mock, &home.0, tag, websockets));
        check_exact(&daemon, &mock, pid, tag, 1, &expect);
    }
    let status = daemon.cli_json(&["status"]);
    for bin in [&claude_copy, &codex_copy] {
        let entry = located(&status, bin).unwrap_or_else(|| panic!("{status:#}"));
        assert_eq!(entry["confirmed"], true, "{entry}");
    }
    let contact = &status["first_contact"]["stats"];
    assert_eq!(u(&contact["timeouts"]), 0, "{contact}");
    assert!(u(&contact["probed"]) >= 3, "{contact}");
}
