//! The rows written to `calls.jsonl` and `ledger.jsonl` (the output contract).

use serde::{Deserialize, Serialize};

use crate::accounting::UsageSource;

/// One line of `calls.jsonl`: one finished LLM call. No prompt or completion text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub session_id: String,
    pub pid: u32,
    pub comm: String,
    /// Agent depth in its session (root = 0).
    pub depth: u32,
    pub provider: String,
    pub api: String,
    /// The request's model, falling back to the response's.
    pub model: Option<String>,
    pub streaming: bool,
    pub http_version: String,
    pub status: Option<u16>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    /// `null` when the model has no known price.
    pub cost_usd: Option<f64>,
    /// RFC 3339 UTC, nanoseconds: the request's first byte.
    pub started_at: String,
    /// RFC 3339 UTC, nanoseconds: the response's last byte (or when the call was given up).
    pub ended_at: String,
    // ---- extras ----
    pub total_tokens: u64,
    pub usage_source: UsageSource,
    pub complete: bool,
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    /// `Host` / `:authority` of the request.
    pub server_address: Option<String>,
    /// The machine (hostname) the daemon runs on.
    pub host: String,
    pub pid_start_ticks: u64,
    pub root_pid: u32,
    pub root_start_ticks: u64,
    /// Nearest agent ancestor (the agent one level up), if any.
    pub parent_pid: Option<u32>,
    pub parent_start_ticks: Option<u64>,
    /// 1-based position of this call in its session.
    pub call_seq: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Session header, present on `call_seq == 1` only (lets a restarted daemon close a session
    /// whose root is gone with a complete ledger row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cmdline: Option<String>,
    /// A call attempt stopped by a ceiling before its first byte left: no tokens, not a call.
    #[serde(default)]
    pub blocked: bool,
    /// `usage_source = "estimated"`: the bounds of the estimate and what it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::accounting::Estimate>,
    /// Boot-clock nanoseconds of the request's first byte as the kernel stamped it: names the
    /// call across a daemon restart (records read again are matched against rows written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ns: Option<u64>,
    /// The caller's pid in its own PID namespace (a container's), when that differs from `pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// The caller's container and pod (absent on the host).
    #[serde(flatten)]
    pub workload: crate::workloads::Workload,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Completed,
    Killed,
    Paused,
    Blocked,
}

/// One line of `ledger.jsonl`: one closed session. Totals equal the sums of its calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRow {
    pub session_id: String,
    pub host: String,
    pub root_pid: u32,
    pub root_exe: Option<String>,
    /// Arguments joined with spaces.
    pub root_cmdline: String,
    /// The root agent's first call start (RFC 3339 UTC, ns).
    pub started_at: String,
    /// When the session closed: its root (the last of its processes) left the tree.
    pub ended_at: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
    /// Sum of the priced calls' costs (see `unpriced_calls`).
    pub total_cost_usd: f64,
    pub call_count: u64,
    pub depth_max: u32,
    pub agent_count: u64,
    pub ceiling_hits: u64,
    pub outcome: Outcome,
    /// Sorted, distinct.
    pub providers: Vec<String>,
    /// Sorted, distinct.
    pub models: Vec<String>,
    // ---- extras ----
    /// Calls whose cost was unknown (not in `total_cost_usd`).
    pub unpriced_calls: u64,
    /// How the calls were measured: those estimated from socket bytes (no hook saw them; their
    /// tokens are in the totals, within each call's bounds) and those without usage.
    #[serde(default)]
    pub estimated_calls: u64,
    #[serde(default)]
    pub usage_missing_calls: u64,
    pub root_start_ticks: u64,
    pub root_comm: String,
    /// `/proc/sys/kernel/random/boot_id` of the boot the session ran in.
    pub boot_id: String,
    /// The container and pod of the session (those of its first call; absent on the host).
    #[serde(flatten)]
    pub workload: crate::workloads::Workload,
}

/// A session reached a ceiling (written by the policy stage; a span event in OTLP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingHit {
    pub session_id: String,
    pub host: String,
    /// The process whose call crossed (or was stopped by) the ceiling.
    pub pid: u32,
    pub pid_start_ticks: u64,
    /// `session_usd`, `session_tokens`, `session_calls`, `session_calls_per_minute`,
    /// `max_depth` or `host_usd_per_day`.
    pub ceiling: String,
    pub limit: f64,
    pub value: f64,
    /// `observe`, `pause`, `kill` or `block`.
    pub action: String,
    pub at: String,
}

impl CallRecord {
    /// The calling process's key.
    pub fn pid_key(&self) -> crate::procs::ProcKey {
        crate::procs::ProcKey {
            tgid: self.pid,
            start_ticks: self.pid_start_ticks,
        }
    }
}
