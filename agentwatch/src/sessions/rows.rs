//! The rows written to `calls.jsonl` and `ledger.jsonl` (the output contract), each declared
//! once with [`row_schema!`]: the JSONL struct, and from the fields marked `=> "<type>"` the
//! ClickHouse table's columns (`COLUMNS`, for the DDL and the `ALTER`s of older tables) and its
//! insert row (`CallRow`, `SessionRow`), in table order.

use serde::{Deserialize, Serialize};

use crate::accounting::UsageSource;

/// Declares a row once. Writes the struct as given (fields, docs and serde attributes: the JSONL
/// row), and from its fields marked `=> "<ClickHouse type>"`, plus the extra columns of the
/// `clickhouse` block (listed before and after `..`, each with the expression that computes it
/// from the row, named by the block's argument):
/// - `$name::COLUMNS`: `(name, ClickHouse type)` in table order;
/// - `$row`: the insert row (`clickhouse::Row`), each field the [`Column`] value of its own;
/// - `From<&$name> for $row`.
///
/// Fields without a type are in the JSONL row only.
macro_rules! row_schema {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $(
                $(#[$fattr:meta])*
                pub $field:ident : $ty:ty $(=> $ch:literal)?
            ),* $(,)?
        }
        $(#[$row_attr:meta])*
        clickhouse $row:ident($r:ident) {
            $( $pre:ident : $pty:ty => $pch:literal = $pexpr:expr; )*
            ..
            $( $post:ident : $qty:ty => $qch:literal = $qexpr:expr; )*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $( $(#[$fattr])* pub $field: $ty, )*
        }

        $(#[$row_attr])*
        #[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
        pub struct $row {
            $( #[doc = $pch] pub $pre: $pty, )*
            $( $( #[doc = $ch] pub $field: <$ty as Column>::Value, )? )*
            $( #[doc = $qch] pub $post: $qty, )*
        }

        impl $name {
            /// The ClickHouse table's columns: (name, type), in table order.
            pub const COLUMNS: &'static [(&'static str, &'static str)] = &[
                $( (stringify!($pre), $pch), )*
                $( $( (stringify!($field), $ch), )? )*
                $( (stringify!($post), $qch), )*
            ];

            /// The types the Rust fields store as, for the declared ones (checked by a test).
            #[cfg(test)]
            pub fn column_types_of_fields() -> Vec<(&'static str, &'static str, String)> {
                vec![$( $( (stringify!($field), $ch, <$ty as Column>::ch_type()), )? )*]
            }
        }

        impl From<&$name> for $row {
            fn from($r: &$name) -> Self {
                $row {
                    $( $pre: $pexpr, )*
                    $( $( $field: { let _: &str = $ch; Column::value(&$r.$field) }, )? )*
                    $( $post: $qexpr, )*
                }
            }
        }
    };
}

/// How a field is stored in a ClickHouse column. Only what both 18.16 and current servers
/// have: booleans are `UInt8`, enums their JSONL name (`String`), no `DateTime64` (timestamps
/// are the RFC 3339 strings of the files).
pub trait Column {
    type Value;
    fn value(&self) -> Self::Value;
    /// The ClickHouse type of the column (the declared one must be this).
    fn ch_type() -> String;
}

macro_rules! plain_column {
    ($($t:ty => $ch:literal),*) => {$(
        impl Column for $t {
            type Value = $t;
            fn value(&self) -> $t {
                self.clone()
            }
            fn ch_type() -> String {
                $ch.into()
            }
        }
    )*};
}
plain_column!(String => "String", u16 => "UInt16", u32 => "UInt32", u64 => "UInt64",
    i32 => "Int32", f64 => "Float64", Vec<String> => "Array(String)");

impl Column for bool {
    type Value = u8;
    fn value(&self) -> u8 {
        u8::from(*self)
    }
    fn ch_type() -> String {
        "UInt8".into()
    }
}

impl<T: Column> Column for Option<T> {
    type Value = Option<T::Value>;
    fn value(&self) -> Self::Value {
        self.as_ref().map(T::value)
    }
    fn ch_type() -> String {
        format!("Nullable({})", T::ch_type())
    }
}

/// An enum by its name in the JSONL row.
fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Column for UsageSource {
    type Value = String;
    fn value(&self) -> String {
        serde_name(self)
    }
    fn ch_type() -> String {
        "String".into()
    }
}

impl Column for Outcome {
    type Value = String;
    fn value(&self) -> String {
        serde_name(self)
    }
    fn ch_type() -> String {
        "String".into()
    }
}

row_schema! {
    /// One line of `calls.jsonl`: one finished LLM call. No prompt or completion text.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct CallRecord {
        pub session_id: String => "String",
        pub pid: u32 => "UInt32",
        pub comm: String => "String",
        /// Agent depth in its session (root = 0).
        pub depth: u32 => "UInt32",
        pub provider: String => "String",
        pub api: String => "String",
        /// The request's model, falling back to the response's.
        pub model: Option<String> => "Nullable(String)",
        pub streaming: bool => "UInt8",
        pub http_version: String => "String",
        pub status: Option<u16> => "Nullable(UInt16)",
        pub input_tokens: u64 => "UInt64",
        pub output_tokens: u64 => "UInt64",
        pub cache_read_tokens: u64 => "UInt64",
        pub cache_write_tokens: u64 => "UInt64",
        pub reasoning_tokens: u64 => "UInt64",
        /// `null` when the model has no known price.
        pub cost_usd: Option<f64> => "Nullable(Float64)",
        /// RFC 3339 UTC, nanoseconds: the request's first byte.
        pub started_at: String => "String",
        /// RFC 3339 UTC, nanoseconds: the response's last byte (or when the call was given up).
        pub ended_at: String => "String",
        // ---- extras ----
        pub total_tokens: u64 => "UInt64",
        pub usage_source: UsageSource => "String",
        pub complete: bool => "UInt8",
        pub response_model: Option<String> => "Nullable(String)",
        pub response_id: Option<String> => "Nullable(String)",
        /// `Host` / `:authority` of the request.
        pub server_address: Option<String> => "Nullable(String)",
        /// The machine (hostname) the daemon runs on.
        pub host: String => "String",
        pub pid_start_ticks: u64 => "UInt64",
        pub root_pid: u32 => "UInt32",
        pub root_start_ticks: u64 => "UInt64",
        /// Nearest agent ancestor (the agent one level up), if any.
        pub parent_pid: Option<u32> => "Nullable(UInt32)",
        pub parent_start_ticks: Option<u64> => "Nullable(UInt64)",
        /// 1-based position of this call in its session.
        pub call_seq: u64 => "UInt64",
        pub request_bytes: u64 => "UInt64",
        pub response_bytes: u64 => "UInt64",
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
        pub blocked: bool => "UInt8",
        /// `usage_source = "estimated"`: the bounds of the estimate and what it rests on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub estimate: Option<crate::accounting::Estimate>,
        /// Boot-clock nanoseconds of the request's first byte as the kernel stamped it: names the
        /// call across a daemon restart (records read again are matched against rows written).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub started_ns: Option<u64> => "Nullable(UInt64)",
        /// The caller's pid in its own PID namespace (a container's), when that differs from `pid`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ns_pid: Option<u32> => "Nullable(UInt32)",
        /// Of `cache_write_tokens`, those written with a 1-hour TTL (Anthropic; priced higher).
        #[serde(default)]
        pub cache_write_1h_tokens: u64 => "UInt64",
        /// The price entry that priced the call (`claude-opus-4-5` for OpenRouter's
        /// `anthropic/claude-opus-4.5`); absent when no entry prices its model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub priced_as: Option<String> => "Nullable(String)",
        /// No price for its model (`cost_usd` null): what it counts toward USD ceilings, at the
        /// highest input and output rates listed (`[ceilings] unpriced`; absent with `zero`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub unpriced_charge_usd: Option<f64> => "Nullable(Float64)",
        /// The shared budget (`[[session_roots]]` `name`) the call drew from, if any: every
        /// node's rows of a cluster budget are summed from here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub budget: Option<String> => "Nullable(String)",
        /// The caller's container and pod (absent on the host).
        #[serde(flatten)]
        pub workload: crate::workloads::Workload,
    }

    /// A row of the ClickHouse calls table: `call_id` (`<session_id>:<call_seq>`, the stable
    /// id a re-sent batch repeats), the columns above, the workload's labels.
    clickhouse CallRow(c) {
        call_id: String => "String" = c.call_id();
        ..
        container_id: Option<String> => "Nullable(String)" = c.workload.container_id.clone();
        container_runtime: Option<String> => "Nullable(String)" = c.workload.container_runtime.clone();
        pod_uid: Option<String> => "Nullable(String)" = c.workload.pod_uid.clone();
        pod_name: Option<String> => "Nullable(String)" = c.workload.pod_name.clone();
        pod_namespace: Option<String> => "Nullable(String)" = c.workload.pod_namespace.clone();
    }
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

impl Outcome {
    /// The state of an open session with this outcome so far, in a word.
    pub fn live_word(self) -> &'static str {
        match self {
            Outcome::Completed => "running",
            Outcome::Killed => "killed",
            Outcome::Paused => "paused",
            Outcome::Blocked => "blocked",
        }
    }
}

row_schema! {
    /// One line of `ledger.jsonl`: one closed session. Totals equal the sums of its calls.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct LedgerRow {
        pub session_id: String => "String",
        pub host: String => "String",
        pub root_pid: u32 => "UInt32",
        pub root_exe: Option<String> => "Nullable(String)",
        /// Arguments joined with spaces.
        pub root_cmdline: String => "String",
        /// The root agent's first call start (RFC 3339 UTC, ns).
        pub started_at: String => "String",
        /// When the session closed: its root (the last of its processes) left the tree.
        pub ended_at: String => "String",
        pub input_tokens: u64 => "UInt64",
        pub output_tokens: u64 => "UInt64",
        pub cache_read_tokens: u64 => "UInt64",
        pub cache_write_tokens: u64 => "UInt64",
        pub reasoning_tokens: u64 => "UInt64",
        pub total_tokens: u64 => "UInt64",
        /// Sum of the priced calls' costs (see `unpriced_calls`).
        pub total_cost_usd: f64 => "Float64",
        pub call_count: u64 => "UInt64",
        pub depth_max: u32 => "UInt32",
        pub agent_count: u64 => "UInt64",
        pub ceiling_hits: u64 => "UInt64",
        /// Programs the session's agents ran (`actions.jsonl` rows of kind `tool_run`).
        #[serde(default)]
        pub tool_runs: u64 => "UInt64",
        /// Distinct TCP destinations (address, port) its processes connected to.
        #[serde(default)]
        pub hosts_contacted: u64 => "UInt64",
        /// Paths its processes opened for writing or renamed onto, and paths they deleted
        /// (`[actions] files`; 0 without it).
        #[serde(default)]
        pub files_written: u64 => "UInt64",
        #[serde(default)]
        pub files_deleted: u64 => "UInt64",
        /// How the run departed from its recurring job's baseline (`new tool: curl`, `new host:
        /// 10.0.0.5:443`, tokens far outside the range); empty when it did not, or when its job
        /// has fewer than 3 runs.
        #[serde(default)]
        pub drift: Vec<String> => "Array(String)",
        pub outcome: Outcome => "String",
        /// Sorted, distinct.
        pub providers: Vec<String> => "Array(String)",
        /// Sorted, distinct.
        pub models: Vec<String> => "Array(String)",
        // ---- extras ----
        /// Calls whose cost was unknown (not in `total_cost_usd`).
        pub unpriced_calls: u64 => "UInt64",
        /// What those calls counted toward USD ceilings (the sum of their `unpriced_charge_usd`).
        #[serde(default)]
        pub unpriced_charge_usd: f64 => "Float64",
        /// How the calls were measured: those estimated from socket bytes (no hook saw them; their
        /// tokens are in the totals, within each call's bounds) and those without usage.
        #[serde(default)]
        pub estimated_calls: u64,
        #[serde(default)]
        pub usage_missing_calls: u64,
        pub root_start_ticks: u64 => "UInt64",
        pub root_comm: String => "String",
        /// `/proc/sys/kernel/random/boot_id` of the boot the session ran in.
        pub boot_id: String => "String",
        /// The container and pod of the session (those of its first call; absent on the host).
        #[serde(flatten)]
        pub workload: crate::workloads::Workload,
    }

    /// A row of the ClickHouse sessions table: the columns above, the workload's labels.
    clickhouse SessionRow(l) {
        ..
        container_id: Option<String> => "Nullable(String)" = l.workload.container_id.clone();
        container_runtime: Option<String> => "Nullable(String)" = l.workload.container_runtime.clone();
        pod_uid: Option<String> => "Nullable(String)" = l.workload.pod_uid.clone();
        pod_name: Option<String> => "Nullable(String)" = l.workload.pod_name.clone();
        pod_namespace: Option<String> => "Nullable(String)" = l.workload.pod_namespace.clone();
    }
}

row_schema! {
    /// A program a session's agent ran (directly or through a shell), from exec to exit: an
    /// `actions.jsonl` row of kind `tool_run` (see `sessions::actions`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ToolRun {
        pub session_id: String => "String",
        pub host: String => "String",
        pub pid: u32 => "UInt32",
        pub pid_start_ticks: u64 => "UInt64",
        /// The executable's path (`/proc/PID/exe`, or the path given to exec).
        pub exe: Option<String> => "Nullable(String)",
        /// The tool's name: the executable's file name (`gen_ai.tool.name`).
        pub tool: String => "String",
        pub comm: String => "String",
        /// The name it was run by (`argv[0]`).
        pub argv0: Option<String> => "Nullable(String)",
        /// Its whole argv, redacted (`redact_argv`), only with `[actions] argv = true`;
        /// empty otherwise.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub argv: Vec<String> => "Array(String)",
        /// The agent it ran under (its nearest ancestor that made LLM calls) and its depth.
        pub agent_pid: u32 => "UInt32",
        pub agent_start_ticks: u64 => "UInt64",
        pub agent_depth: u32 => "UInt32",
        /// The process that started it (the agent itself, or a shell between them).
        pub parent_pid: Option<u32> => "Nullable(UInt32)",
        /// Process start and exit (RFC 3339 UTC).
        pub started_at: String => "String",
        pub ended_at: String => "String",
        pub duration_ms: f64 => "Float64",
        /// `exit(code)`: the code; killed by a signal: the signal's number in `signal`.
        pub exit_code: Option<i32> => "Nullable(Int32)",
        pub signal: Option<u32> => "Nullable(UInt32)",
    }

    /// A row of the ClickHouse actions table: a tool run, a host (`From<&HostContact>`) or a
    /// file (`From<&FileChange>`).
    clickhouse ToolRunRow(_t) {
        kind: String => "String" = "tool_run".to_string();
        ..
        address: String => "String" = String::new();
        port: u16 => "UInt16" = 0;
        sni: String => "String" = String::new();
        path: String => "String" = String::new();
        opened_for_write: u64 => "UInt64" = 0;
        created: u64 => "UInt64" = 0;
        truncated: u64 => "UInt64" = 0;
        deleted: u64 => "UInt64" = 0;
        renamed_from: u64 => "UInt64" = 0;
        renamed_to: u64 => "UInt64" = 0;
    }
}

/// A host row in the actions table: its destination in `address`/`port`, the process that
/// connected in `pid`/`tool`, its first connect in `started_at` (= `ended_at`); the tool-run
/// columns it has no value for are empty.
impl From<&super::actions::HostContact> for ToolRunRow {
    fn from(h: &super::actions::HostContact) -> Self {
        ToolRunRow {
            kind: "host".to_string(),
            session_id: h.session_id.clone(),
            host: h.host.clone(),
            pid: h.pid,
            pid_start_ticks: 0,
            exe: None,
            tool: h.tool.clone(),
            comm: String::new(),
            argv0: None,
            argv: Vec::new(),
            agent_pid: h.agent_pid,
            agent_start_ticks: h.agent_start_ticks,
            agent_depth: h.agent_depth,
            parent_pid: None,
            started_at: h.first_at.clone(),
            ended_at: h.first_at.clone(),
            duration_ms: 0.0,
            exit_code: None,
            signal: None,
            address: h.address.clone(),
            port: h.port,
            sni: h.sni.clone().unwrap_or_default(),
            path: String::new(),
            opened_for_write: 0,
            created: 0,
            truncated: 0,
            deleted: 0,
            renamed_from: 0,
            renamed_to: 0,
        }
    }
}

/// A file row in the actions table: its path in `path` and in `address` (the table's key holds
/// `address`: one row per path), what was done to it in the counts, the process that changed
/// it first in `pid`/`tool`, first and last change in `started_at`/`ended_at`.
impl From<&super::actions::FileChange> for ToolRunRow {
    fn from(f: &super::actions::FileChange) -> Self {
        ToolRunRow {
            kind: "file".to_string(),
            session_id: f.session_id.clone(),
            host: f.host.clone(),
            pid: f.pid,
            pid_start_ticks: 0,
            exe: None,
            tool: f.tool.clone(),
            comm: String::new(),
            argv0: None,
            argv: Vec::new(),
            agent_pid: f.agent_pid,
            agent_start_ticks: f.agent_start_ticks,
            agent_depth: f.agent_depth,
            parent_pid: None,
            started_at: f.first_at.clone(),
            ended_at: f.last_at.clone(),
            duration_ms: 0.0,
            exit_code: None,
            signal: None,
            address: f.path.clone(),
            port: 0,
            sni: String::new(),
            path: f.path.clone(),
            opened_for_write: f.opened_for_write,
            created: f.created,
            truncated: f.truncated,
            deleted: f.deleted,
            renamed_from: f.renamed_from,
            renamed_to: f.renamed_to,
        }
    }
}

/// What a notification says (`[sinks.webhook]`, `[sinks.slack]`, `[sinks.alertmanager]`):
/// a session neared a ceiling (`warn`), was stopped or flagged at one (`observe`, `pause`,
/// `kill`, `block`, `drift`), is still paused (`paused`), or was killed after waiting paused
/// too long (`pause_timeout`). Never any prompt or completion text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub event: String,
    pub session_id: String,
    pub host: String,
    /// `session_usd`, `session_tokens`, …, `host_usd_per_day`, `drift`, `unpriced`.
    pub ceiling: String,
    pub limit: f64,
    pub value: f64,
    /// What the daemon did: `observe`, `pause`, `kill`, `block`, or `none` (a warning).
    pub action: String,
    /// RFC 3339 UTC.
    pub at: String,
    /// One line for people: what happened and what to do.
    pub message: String,
}

impl Notice {
    /// The notice of a ceiling hit.
    pub fn of_hit(h: &CeilingHit) -> Notice {
        let event = if h.ceiling == "drift" {
            "drift".to_string()
        } else {
            h.action.clone()
        };
        let what = match h.action.as_str() {
            "pause" => format!(
                "paused; `agentwatch approve {}` to let it go on, `agentwatch kill {}` to stop it",
                short(&h.session_id),
                short(&h.session_id)
            ),
            "kill" => "killed".to_string(),
            "block" => "blocked: its LLM calls fail from now on".to_string(),
            _ => "observed (not stopped)".to_string(),
        };
        Notice {
            event,
            session_id: h.session_id.clone(),
            host: h.host.clone(),
            ceiling: h.ceiling.clone(),
            limit: h.limit,
            value: h.value,
            action: h.action.clone(),
            at: h.at.clone(),
            message: format!(
                "agentwatch on {}: session {} reached {} ({} of {}): {what}",
                h.host,
                short(&h.session_id),
                h.ceiling,
                num(h.value),
                num(h.limit)
            ),
        }
    }
}

/// A session id as notifications and logs show it (its first 12 characters).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// A number as people read it: up to 4 decimals, no trailing zeros.
pub fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
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
    /// What the call counts toward USD ceilings: its cost, else the high bound of its
    /// estimate, else its unpriced charge (0 when none applies).
    pub fn charged_usd(&self) -> f64 {
        self.cost_usd
            .or(self.estimate.as_ref().and_then(|e| e.cost_usd_high))
            .or(self.unpriced_charge_usd)
            .unwrap_or(0.0)
    }

    /// The stable id of a call: `<session_id>:<call_seq>`.
    pub fn call_id(&self) -> String {
        format!("{}:{}", self.session_id, self.call_seq)
    }

    /// The calling process's key.
    pub fn pid_key(&self) -> crate::procs::ProcKey {
        crate::procs::ProcKey {
            tgid: self.pid,
            start_ticks: self.pid_start_ticks,
        }
    }
}
