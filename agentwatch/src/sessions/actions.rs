//! What a session's processes did besides calling LLMs: the tools they ran.
//!
//! A tool run is a process of a session (a descendant of one of its agents) that ran a
//! program of its own (it exec'd) and made no LLM call. It becomes one `actions.jsonl` row
//! when it exits. Its arguments are never kept: they carry prompts (`claude -p "…"`) and
//! secrets in flags; the program's path, its `comm` and the first argument (the name it was
//! run by) are metadata.
use serde::{Deserialize, Serialize};

pub use super::rows::{ToolRun, ToolRunRow};

/// One row of `actions.jsonl`; `kind` says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionRow {
    ToolRun(ToolRun),
    Host(HostContact),
}

impl ActionRow {
    pub fn session_id(&self) -> &str {
        match self {
            ActionRow::ToolRun(t) => &t.session_id,
            ActionRow::Host(h) => &h.session_id,
        }
    }
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
    fn tool_names_are_file_names() {
        assert_eq!(tool_name(Some("/usr/bin/rm"), "rm"), "rm");
        assert_eq!(tool_name(None, "bash"), "bash");
        assert_eq!(tool_name(Some("/"), "x"), "x");
    }
}
