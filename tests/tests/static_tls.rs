//! Privileged end-to-end tests of stripped executables with OpenSSL linked in statically:
//! no TLS symbol is left for uprobes, so the daemon locates OpenSSL's `ssl_write_internal` and
//! `ssl_read_internal` (what `SSL_write`, `SSL_write_ex` and the reads all go through) by the
//! function names OpenSSL's errors carry, and must record exactly the usage the mock served.
//! Two OpenSSL layouts: 3.0 (Debian's libssl.a, `(s, buf, num, *written)`) and 3.6 (built
//! from source, `(s, buf, num, flags, *written)` since 3.3).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;

/// The Rust client with OpenSSL 3.6 from source, built by `cargo xtask setup --tests`.
fn vendored_client() -> PathBuf {
    let bin = repo().join("target/static-openssl/release/static-openssl-client");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup --tests` (it builds tests/clients/static_openssl/vendored)",
        bin.display()
    );
    bin
}

/// Runs `bin` (3 chat completions on one connection) under a daemon that has never seen it:
/// it is analysed and probed at its first contact, and every call, the first one too, is exact.
fn check_static_client(bin: &Path, kind: &str, version: &str) {
    let mock = Mock::start(&[]);
    let daemon = Daemon::start();
    let tag = format!("static-{kind}");
    let mut cmd = Command::new(bin);
    cmd.arg(mock.port.to_string())
        .arg(&mock.ca)
        .arg(&tag)
        .arg("3");
    let (pid, out) = run_client(cmd);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("HTTP/1.1 200")
            .count(),
        3
    );
    let expect = json!({
        "provider": "openai", "api": "chat.completions", "streaming": false, "http_version": "1.1",
    });
    check_exact(&daemon, &mock, pid, &tag, 3, &expect);
    let status = daemon.cli_json(&["status"]);
    let entry = located(&status, bin)
        .unwrap_or_else(|| panic!("{} probed: {status:#}", bin.display()))
        .clone();
    assert_eq!(entry["kind"], kind, "{entry}");
    assert_eq!(
        entry["symbols"],
        json!([
            "ssl_write_internal",
            "ssl_read_internal",
            "SSL_do_handshake"
        ]),
        "{entry}"
    );
    let coverage = entry["coverage"].as_str().unwrap_or_default();
    assert!(
        coverage.starts_with(&format!(
            "exact: OpenSSL{version} ssl_write_internal/ssl_read_internal located by analysis"
        )),
        "{entry}"
    );
    assert_eq!(
        located(&status, bin).unwrap()["confirmed"],
        true,
        "{status:#}"
    );
    assert_eq!(u(&status["capture"]["decode_errors"]), 0, "{status:#}");
}

/// OpenSSL 3.0 (Debian's static libssl.a, no version string linked in), `SSL_write`/`SSL_read`.
#[test]
fn static_openssl_3_0_client_exact_usage() {
    let dir = Scratch::new("static-openssl-c");
    let bin = build_static_openssl_client(&dir.0);
    check_static_client(&bin, "openssl", "");
}

/// OpenSSL 3.6 (built from source by openssl-src), `SSL_write_ex`/`SSL_read_ex`: the write
/// takes `flags` before `*written`, which the analysis reads from the code.
#[test]
fn static_openssl_3_6_client_exact_usage() {
    check_static_client(&vendored_client(), "openssl-3.3", " 3.6");
}
