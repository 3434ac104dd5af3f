//! What a session's processes did besides calling LLMs: the tools they ran.
//!
//! A tool run is a process of a session (a descendant of one of its agents) that ran a
//! program of its own (it exec'd) and made no LLM call. It becomes one `actions.jsonl` row
//! when it exits. Its arguments are never kept: they carry prompts (`claude -p "…"`) and
//! secrets in flags; the program's path, its `comm` and the first argument (the name it was
//! run by) are metadata.
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use super::rows::{ToolRun, ToolRunRow};

/// `[actions]`: what is kept of a session's tool runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    /// Keep each tool run's whole argv (`argv` in its row), with values that look like keys,
    /// tokens or passwords replaced by `[redacted]` (`redact_argv`). Default false: arguments
    /// carry prompts (`claude -p "…"`) and secrets in flags, so only `argv[0]` is kept.
    pub argv: bool,
    /// Report the files the processes of sessions open for writing, delete and rename (one
    /// `actions.jsonl` row per path per session, written when it closes). Default false.
    pub files: bool,
    /// The kernel hooks `files` uses (BENCHMARKS.md has what each costs):
    /// - `"libc"` (default): uprobes on the C library's file functions, planted only in the
    ///   memory of the processes of sessions; other processes pay nothing. Blind to programs
    ///   that make these system calls without the C library (Go, static binaries), and to
    ///   what sessions do while no daemon runs.
    /// - `"syscalls"`: the `syscalls` tracepoints of those calls: every program, and while no
    ///   daemon runs; but while they are attached (while a session is open, from the first
    ///   contact of the process that opens it, and 5 s after) every system call of every
    ///   process takes the kernel's traced path, a cost paid by processes that are not
    ///   agents too.
    pub file_hooks: FileHooksKind,
}

/// `[actions] file_hooks`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileHooksKind {
    #[default]
    Libc,
    Syscalls,
}

const REDACTED: &str = "[redacted]";

/// `name=value` where the name says it holds a secret (`--api-key=…`, `TOKEN=…`, `?token=…`).
static SECRET_ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)([A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|apikey|auth|credential|access[_-]?key|private[_-]?key|session[_-]?key)[A-Za-z0-9_.-]*)=([^&\s]+)",
    )
    .expect("valid regex")
});
/// A flag whose next argument is the secret (`--token VALUE`, `-p PASSWORD` is not guessed).
static SECRET_FLAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^--?[A-Za-z0-9_-]*(?:token|secret|passw(?:or)?d|api[_-]?key|apikey|auth|credential|access[_-]?key|private[_-]?key)[A-Za-z0-9_-]*$",
    )
    .expect("valid regex")
});
/// Credentials inside a value: a header (`Authorization: Bearer …`, `x-api-key: …`), a URL's
/// user info, and tokens by their well-known shapes (OpenAI/Anthropic `sk-…`, GitHub, Slack,
/// AWS, Google, JWTs) or by length (32+ letters and digits, both, unbroken by `_`, `-` or
/// `/`, so file names and paths stay).
static SECRET_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)(?:authorization|x-api-key|api-key|cookie)\s*:\s*.+",
        r"|(?i:bearer|basic)\s+\S+",
        r"|://[^/@\s]+@",
        r"|\b(?:sk-[A-Za-z0-9_-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}",
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}",
        r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)",
        r"|[A-Za-z0-9+=]{32,}",
    ))
    .expect("valid regex")
});

/// `argv` with what looks like a secret replaced by `[redacted]`: values of secret-named
/// assignments and flags, credentials in headers and URLs, and key-shaped tokens.
pub fn redact_argv(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut next_is_secret = false;
    for arg in argv {
        if next_is_secret {
            next_is_secret = false;
            out.push(REDACTED.to_string());
            continue;
        }
        if SECRET_FLAG.is_match(arg) {
            next_is_secret = true;
            out.push(arg.clone());
            continue;
        }
        let a = SECRET_ASSIGNMENT
            .replace_all(arg, |c: &regex::Captures| format!("{}={REDACTED}", &c[1]));
        let a = SECRET_VALUE.replace_all(&a, |c: &regex::Captures| {
            let m = &c[0];
            if let Some(i) = m.find(':').filter(|_| !m.starts_with("://")) {
                // Keep the header's name.
                format!("{}: {REDACTED}", m[..i].trim_end())
            } else if m.starts_with("://") {
                format!("://{REDACTED}@")
            } else if let Some((scheme, _)) = m.split_once(char::is_whitespace) {
                format!("{scheme} {REDACTED}")
            } else if m.chars().any(|c| c.is_ascii_digit())
                && m.chars().any(|c| c.is_ascii_alphabetic())
                || m.len() < 32
            {
                REDACTED.to_string()
            } else {
                // Long but all letters or all digits (a path piece, a number): not a key.
                m.to_string()
            }
        });
        out.push(a.into_owned());
    }
    out
}

/// One row of `actions.jsonl`; `kind` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionRow {
    ToolRun(ToolRun),
    Host(HostContact),
    File(FileChange),
}

impl ActionRow {
    pub fn session_id(&self) -> &str {
        match self {
            ActionRow::ToolRun(t) => &t.session_id,
            ActionRow::Host(h) => &h.session_id,
            ActionRow::File(f) => &f.session_id,
        }
    }

    /// The agent the row is charged to: (pid, start ticks, depth).
    pub fn agent(&self) -> (u32, u64, u32) {
        match self {
            ActionRow::ToolRun(t) => (t.agent_pid, t.agent_start_ticks, t.agent_depth),
            ActionRow::Host(h) => (h.agent_pid, h.agent_start_ticks, h.agent_depth),
            ActionRow::File(f) => (f.agent_pid, f.agent_start_ticks, f.agent_depth),
        }
    }
}

/// A path the session's processes changed (`[actions] files`): one row per path per
/// session, written when the session closes, with what was done to it. Never any content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileChange {
    pub session_id: String,
    pub host: String,
    /// Absolute, as the process saw it (through its root; its working directory or the
    /// directory descriptor resolved when the daemon read the record; `?/` when it could not).
    pub path: String,
    /// Successful opens for writing (`O_WRONLY`, `O_RDWR`, `O_CREAT` or `O_TRUNC`); of them,
    /// those with `O_CREAT` (the file may have existed) and with `O_TRUNC`.
    pub opened_for_write: u64,
    pub created: u64,
    pub truncated: u64,
    /// Deleted (`unlink`, `unlinkat`, a directory too), renamed away, renamed onto.
    pub deleted: u64,
    pub renamed_from: u64,
    pub renamed_to: u64,
    /// The process that changed it first, its executable's file name, and the agent it ran
    /// under (itself, when it is one).
    pub pid: u32,
    pub tool: String,
    pub agent_pid: u32,
    pub agent_start_ticks: u64,
    pub agent_depth: u32,
    pub first_at: String,
    pub last_at: String,
}

impl FileChange {
    /// Written or created here (opened for writing, or another file renamed onto it).
    pub fn written(&self) -> bool {
        self.opened_for_write > 0 || self.renamed_to > 0
    }
}

/// Pseudo file systems whose "files" are not what an audit of writes is about
/// (`2>/dev/null`, `/proc/self/…`).
pub fn is_pseudo_path(path: &str) -> bool {
    ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| path.starts_with(p))
        || path == "/dev/null"
}

/// `path` as an absolute, lexically normalised path: relative ones joined to `dir` (the
/// directory the kernel read when the call returned), else to the directory `dfd` names
/// (`AT_FDCWD`: the process's working directory) read from `/proc` now; `?/` and the path
/// when neither is known (the process is gone).
pub fn absolute_path(
    proc_root: &std::path::Path,
    tgid: u32,
    dfd: i32,
    path: &str,
    dir: Option<&str>,
) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else if let Some(dir) = dir {
        format!("{dir}/{path}")
    } else {
        let dir = if dfd == agentwatch_ebpf::AT_FDCWD {
            proc_root.join(tgid.to_string()).join("cwd")
        } else {
            proc_root
                .join(tgid.to_string())
                .join("fd")
                .join(dfd.to_string())
        };
        match std::fs::read_link(dir) {
            Ok(base) => format!("{}/{path}", base.display()),
            Err(_) => return format!("?/{path}"),
        }
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A destination a session's processes connected to (TCP), written the first time the
/// session connects to it: one row per (address, port) per session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostContact {
    pub session_id: String,
    pub host: String,
    /// The destination as the process passed it to `connect` (an IPv4 or IPv6 address).
    pub address: String,
    pub port: u16,
    /// The host name its TLS ClientHello asked for (SNI), when the connection that made the
    /// row started with one that named a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The process that connected first, its executable's file name, and the agent it ran
    /// under (itself, when it is one).
    pub pid: u32,
    pub tool: String,
    pub agent_pid: u32,
    pub agent_start_ticks: u64,
    pub agent_depth: u32,
    /// When it first connected there (RFC 3339 UTC).
    pub first_at: String,
}

/// Distinct destinations kept per session; connects to more are counted, not listed.
pub const MAX_HOSTS_PER_SESSION: usize = 4096;

impl ToolRun {
    /// Exited with a code other than 0, or killed.
    pub fn failed(&self) -> bool {
        self.signal.is_some() || self.exit_code.is_some_and(|c| c != 0)
    }
}

/// (exit code, signal) from a wait status as the kernel keeps it in `task_struct.exit_code`.
pub fn split_status(status: Option<u32>) -> (Option<i32>, Option<u32>) {
    match status {
        None => (None, None),
        Some(s) if s & 0x7f == 0 => (Some(((s >> 8) & 0xff) as i32), None),
        Some(s) => (None, Some(s & 0x7f)),
    }
}

/// The file name of an executable path (the whole string when it has no `/`).
pub fn tool_name(exe: Option<&str>, comm: &str) -> String {
    exe.and_then(|e| e.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or(comm)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_split_into_code_and_signal() {
        assert_eq!(split_status(Some(0)), (Some(0), None));
        assert_eq!(split_status(Some(3 << 8)), (Some(3), None));
        assert_eq!(split_status(Some(9)), (None, Some(9)));
        // A core dump sets bit 7: the signal is still the low 7 bits.
        assert_eq!(split_status(Some(0x80 | 11)), (None, Some(11)));
        assert_eq!(split_status(None), (None, None));
    }

    #[test]
    fn argv_keeps_arguments_and_redacts_what_looks_like_secrets() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            redact_argv(&v(&["git", "commit", "-m", "fix parser", "--no-verify"])),
            v(&["git", "commit", "-m", "fix parser", "--no-verify"])
        );
        assert_eq!(
            redact_argv(&v(&[
                "tool",
                "--api-key",
                "abc",
                "--token=xyz",
                "API_KEY=k1"
            ])),
            v(&[
                "tool",
                "--api-key",
                "[redacted]",
                "--token=[redacted]",
                "API_KEY=[redacted]"
            ])
        );
        assert_eq!(
            redact_argv(&v(&[
                "curl",
                "-H",
                "Authorization: Bearer sk-proj-abcdefghijkl",
                "https://user:pw@example.com/v1?key=1&api_key=zzz",
            ])),
            v(&[
                "curl",
                "-H",
                "Authorization: [redacted]",
                "https://[redacted]@example.com/v1?key=1&api_key=[redacted]",
            ])
        );
        assert_eq!(
            redact_argv(&v(&[
                "x",
                "sk-ant-api03-AAAAbbbbCCCC",
                "AKIAABCDEFGHIJKLMNOP",
                "0123456789abcdef0123456789abcdef01",
                "/usr/share/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ])),
            v(&[
                "x",
                "[redacted]",
                "[redacted]",
                "[redacted]",
                "/usr/share/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ])
        );
    }

    #[test]
    fn tool_names_are_file_names() {
        assert_eq!(tool_name(Some("/usr/bin/rm"), "rm"), "rm");
        assert_eq!(tool_name(None, "bash"), "bash");
        assert_eq!(tool_name(Some("/"), "x"), "x");
    }
}
