//! Pinned agents (installed by `cargo xtask setup --tests` under tests/agents) and how the
//! tests run them.
use std::path::{Path, PathBuf};
use std::process::Command;

use super::repo;

/// The executable of an installed agent package, resolved the way the daemon sees it.
pub fn agent(package: &str, file: &str) -> PathBuf {
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

pub const CODEX_EXE: &str = "vendor/x86_64-unknown-linux-musl/bin/codex";

/// The newest pinned Codex (the one `@openai/codex` depends on).
pub fn codex_bin() -> PathBuf {
    agent("@openai/codex-linux-x64", CODEX_EXE)
}

/// `codex exec` against the provider at `base_url`, trusting the system's roots.
pub fn codex_at(bin: &Path, base_url: &str, home: &Path, tag: &str, websockets: bool) -> Command {
    let provider = format!(
        "model_providers.mock={{name=\"mock\",base_url=\"{base_url}/v1\",env_key=\"MOCK_KEY\",wire_api=\"responses\",supports_websockets={websockets},http_headers={{\"x-test-tag\"=\"{tag}\"}}}}"
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
    .env("OPENAI_API_KEY", "test");
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    cmd
}
