//! The control socket's replies: one type per answer, written by the daemon and read by the
//! CLI (`render`). On the wire each is one JSON object, `{"error": "…"}` when refused.
//!
//! A stage's type that can be read back (`Serialize` and `Deserialize`) is used as it is. A
//! part whose type cannot (another stage's counters, a sink's status) is [`Counters`]: names
//! to values, listed as they come. Where the CLI reads a few fields of such a part (kernel
//! side, sessions, agent trees), a view names those fields and keeps the others in `rest`,
//! so the JSON a user sees is the producer's, field for field.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Request;
use crate::policy::PolicyStats;
use crate::probes::{AttachedLibrary, DropCounters, KernelCounters, Scope};
use crate::sessions::Outcome;

/// An open-ended section: names to values, in name order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counters(pub Map<String, Value>);

impl Counters {
    /// The fields of `stats` (a type serialised as a JSON object; anything else is empty).
    pub fn of(stats: &impl Serialize) -> Counters {
        reshape(stats).unwrap_or_default()
    }
}

/// `value` (a stage's type) read as `T`, a reply type that describes the same JSON.
pub fn reshape<T: DeserializeOwned>(value: &impl Serialize) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(value)?)
}

/// Every answer of the daemon.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Box<Status>),
    Sessions(SessionList),
    Trees(TreeList),
    Approved(Approved),
    Killed(Killed),
    Paused(Paused),
    Reloaded(Reloaded),
    Actions(ActionList),
    Refused(Refused),
}

impl Reply {
    pub fn refused(error: impl std::fmt::Display) -> Reply {
        Reply::Refused(Refused {
            error: error.to_string(),
        })
    }

    /// The daemon's answer to `req`, as sent.
    pub fn read(req: &Request, answer: Value) -> Result<Reply, serde_json::Error> {
        use serde_json::from_value;
        if answer.get("error").is_some() {
            return from_value(answer).map(Reply::Refused);
        }
        Ok(match req {
            Request::Status => Reply::Status(Box::new(from_value(answer)?)),
            Request::Sessions => Reply::Sessions(from_value(answer)?),
            Request::Tree { .. } => Reply::Trees(from_value(answer)?),
            Request::Approve { .. } => Reply::Approved(from_value(answer)?),
            Request::Kill { .. } => Reply::Killed(from_value(answer)?),
            Request::Pause { .. } => Reply::Paused(from_value(answer)?),
            Request::Reload => Reply::Reloaded(from_value(answer)?),
            Request::Actions { .. } => Reply::Actions(from_value(answer)?),
        })
    }

    /// The JSON on the wire. Through a `Value`, whose objects keep their keys in name order,
    /// as every reply always had them.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| {
            serde_json::to_value(Reply::refused(format!("reply not serialisable: {e}")))
                .unwrap_or_default()
        })
    }
}

impl<T: Into<Reply>, E: std::fmt::Display> From<Result<T, E>> for Reply {
    fn from(r: Result<T, E>) -> Reply {
        r.map_or_else(Reply::refused, Into::into)
    }
}

macro_rules! into_reply {
    ($($t:ident => $v:ident),*) => {$(
        impl From<$t> for Reply {
            fn from(r: $t) -> Reply {
                Reply::$v(r)
            }
        }
    )*};
}
into_reply!(SessionList => Sessions, TreeList => Trees, Approved => Approved,
    Killed => Killed, Paused => Paused, Reloaded => Reloaded, Refused => Refused, ActionList => Actions);

impl From<Status> for Reply {
    fn from(s: Status) -> Reply {
        Reply::Status(Box::new(s))
    }
}

/// A request the daemon could not carry out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub error: String,
}

/// `agentwatch approve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approved {
    pub approved: String,
    /// Processes continued.
    pub continued: usize,
}

/// `agentwatch kill`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Killed {
    pub killed: String,
    /// Processes signalled.
    pub processes: usize,
}

/// `agentwatch pause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub paused: String,
    /// Processes stopped.
    pub processes: usize,
}

/// `agentwatch reload` (or SIGHUP): the config file read again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: PathBuf,
}

/// `agentwatch status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Every probe attached: the process and socket tracepoints, no attach failure, and
    /// (probing every process) at least one TLS library.
    pub ok: bool,
    pub version: String,
    pub uptime_secs: u64,
    pub data_dir: PathBuf,
    pub scope: Scope,
    pub kernel_side: KernelSide,
    pub tracepoints: Vec<String>,
    /// Hooks this kernel lacks, and what is done instead.
    pub hooks_missing: BTreeMap<String, String>,
    /// `[actions] files`: its tracepoints, on only while sessions may change files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_hooks: Option<crate::probes::loader::FileHooks>,
    /// The read hook (`sock:sock_recv_length`): on only while some socket needs its reads
    /// seen (`scope = "agents"`), or always (`"all"`).
    #[serde(default)]
    pub read_hook: crate::probes::read_hook::ReadHook,
    pub tls_libraries: Vec<AttachedLibrary>,
    pub probed_processes: ProbedProcesses,
    pub first_contact: FirstContact,
    pub tls_libraries_detached: u64,
    /// By path; an entry leaves once the same path attaches (counted below).
    pub attach_failures: BTreeMap<String, String>,
    #[serde(default)]
    pub attach_failures_cleared: u64,
    /// Programs whose TLS the probes cannot see (stripped Go binaries): known gaps, not
    /// failures.
    pub tls_not_covered: NotCovered,
    pub processes: Processes,
    pub live_sessions: usize,
    /// Sessions (open, closed, restored, drifted) and what their actions cost to track.
    #[serde(default)]
    pub sessions: Counters,
    pub kernel_drops: DropCounters,
    pub pipeline: Counters,
    pub replay: Counters,
    pub capture: Counters,
    pub aead: Counters,
    pub estimates: Estimates,
    pub ceilings: Ceilings,
    /// The JSONL files (always written): rows written, write errors, rotations.
    #[serde(default)]
    pub jsonl: Counters,
    /// One entry per network sink.
    pub sinks: Vec<Counters>,
    pub kubernetes: Counters,
    /// The price layers, what unpriced calls count, and the unpriced models seen (with calls).
    #[serde(default)]
    pub pricing: Counters,
}

/// How this daemon's kernel side came to be (`probes::pins::KernelSide`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelSide {
    /// `adopted`, `created` or `not pinned`.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_at: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_daemon_gone_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    #[serde(default)]
    pub adopted_processes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_pinned: Option<String>,
    #[serde(flatten)]
    pub rest: Counters,
}

/// Processes probed alone (`scope = "agents"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbedProcesses {
    /// `uprobe_multi` or `perf_event`.
    pub links: String,
    /// Analyses of stripped static binaries.
    pub analysis: Counters,
    /// Probed now.
    pub now: usize,
    /// Detached links not closed yet.
    pub links_closing: usize,
    pub attached_total: u64,
    pub detached_total: u64,
    pub libraries_over_cap: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirstContact {
    /// What the daemon did with the processes held.
    pub stats: Counters,
    /// What the kernel side did.
    pub kernel: KernelCounters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotCovered {
    /// Path: why.
    pub executables: BTreeMap<String, String>,
    pub over_cap: u64,
    pub go_args_swept: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Processes {
    pub live: usize,
    pub exited_kept: usize,
    pub dropped_over_cap: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    pub stats: Counters,
    /// Binaries whose LLM traffic no hook sees, and how it is measured.
    pub binaries: BTreeMap<String, String>,
}

/// Ceilings; the optional parts are null when the daemon runs without its kernel gate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ceilings {
    pub enabled: bool,
    /// Where the `block` connect programs are attached, or why not.
    pub block: Option<String>,
    pub stats: Option<PolicyStats>,
    pub gate_errors: Option<u64>,
    /// Metered sockets whose queued bytes are kept in the host now.
    pub held_sockets: Option<usize>,
    /// Open sessions stopped now (paused, waiting for `approve` or `kill`).
    #[serde(default)]
    pub paused_sessions: usize,
    /// `[ceilings] host_usd_per_day`, when set (the rolling day's spend is in `stats`).
    #[serde(default)]
    pub host_usd_per_day: Option<f64>,
    /// Shared budgets (`[[session_roots]]` `budget_usd_per_day`): each one's spend over the
    /// last day and limit; a cluster budget's other nodes' spend as last read, and when.
    #[serde(default)]
    pub budgets: Value,
}

/// `agentwatch sessions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// One open session (`sessions::SessionView`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    pub root_pid: u32,
    pub root_cmdline: String,
    pub agents: u64,
    pub depth_max: u32,
    pub calls: u64,
    pub total_tokens: u64,
    pub cost_usd: Option<f64>,
    pub ceiling_hits: u64,
    /// Programs its agents ran (`agentwatch actions`).
    #[serde(default)]
    pub tool_runs: u64,
    /// `completed` while running normally.
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// Its nearest own ceiling (`session_usd`, `session_tokens` or `session_calls`) and the
    /// share of it used (1.0 = reached); absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling_share: Option<f64>,
    #[serde(flatten)]
    pub rest: Counters,
}

/// `agentwatch actions`: a session's tool runs, grouped by the agent that ran them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionList {
    pub session_id: String,
    pub agents: Vec<AgentActions>,
}

/// The tools one agent of the session ran, in the order they ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentActions {
    pub agent_pid: u32,
    pub agent_start_ticks: u64,
    pub depth: u32,
    pub tool_runs: Vec<crate::sessions::actions::ToolRun>,
    /// Destinations it (or a tool under it) connected to first for the session.
    #[serde(default)]
    pub hosts: Vec<crate::sessions::actions::HostContact>,
    /// Paths it (or a tool under it) changed first for the session (`[actions] files`).
    #[serde(default)]
    pub files: Vec<crate::sessions::actions::FileChange>,
}

/// `agentwatch tree`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeList {
    pub trees: Vec<Tree>,
}

/// A session's agent tree (`sessions::TreeView`), root first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub session_id: String,
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub tools_running: Vec<crate::sessions::RunningTool>,
    #[serde(flatten)]
    pub rest: Counters,
}

/// One agent of a tree (`sessions::AgentView`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub pid: u32,
    pub comm: String,
    pub depth: u32,
    pub calls: u64,
    pub total_tokens: u64,
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub in_flight: Vec<crate::sessions::InFlightCall>,
    #[serde(flatten)]
    pub rest: Counters,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{AgentView, SessionView, TreeView};

    /// A view read from a stage's type writes the same JSON, field for field.
    fn same_json<V: Serialize + DeserializeOwned>(of: &impl Serialize) -> V {
        let view: V = reshape(of).unwrap();
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::to_value(of).unwrap()
        );
        view
    }

    fn session(outcome: Outcome, reason: Option<&str>) -> SessionView {
        SessionView {
            session_id: "s-1".into(),
            root_pid: 42,
            root_start_ticks: 7,
            root_comm: "agent".into(),
            root_cmdline: "agent --go".into(),
            agents: 2,
            depth_max: 1,
            calls: 3,
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
            cost_usd: 0.25,
            unpriced_calls: 0,
            started_at: "2025-01-01T00:00:00Z".into(),
            ceiling_hits: 1,
            tool_runs: 2,
            outcome,
            reason: reason.map(str::to_string),
        }
    }

    fn agent(pid: u32, depth: u32, parent: Option<u32>) -> AgentView {
        AgentView {
            pid,
            start_ticks: 1,
            comm: "agent".into(),
            depth,
            parent_pid: parent,
            parent_start_ticks: parent.map(|_| 1),
            calls: 1,
            input_tokens: 1,
            output_tokens: 1,
            total_tokens: 2,
            cost_usd: 0.5,
            unpriced_calls: 0,
            in_flight: vec![crate::sessions::InFlightCall {
                model: Some("gpt-4o".into()),
                started_at: "2025-01-01T00:00:01Z".into(),
            }],
        }
    }

    #[test]
    fn views_keep_every_field_of_the_stage_types() {
        let s: Session = same_json(&session(Outcome::Paused, Some("session_usd reached")));
        assert_eq!(
            (s.root_pid, s.outcome, s.cost_usd),
            (42, Outcome::Paused, Some(0.25))
        );
        assert!(s.rest.0.contains_key("root_comm"));
        same_json::<Session>(&session(Outcome::Completed, None));
        let tree = TreeView {
            session_id: "s-1".into(),
            root_pid: 42,
            agents: vec![agent(42, 0, None), agent(43, 1, Some(42))],
            tools_running: vec![crate::sessions::RunningTool {
                pid: 44,
                tool: "bash".into(),
                agent_pid: 43,
                started_at: "2025-01-01T00:00:02Z".into(),
            }],
        };
        let t: Tree = same_json(&tree);
        assert_eq!(t.agents[1].depth, 1);
        assert_eq!(t.agents[1].in_flight[0].model.as_deref(), Some("gpt-4o"));
        assert_eq!(t.tools_running[0].tool, "bash");
        let mut ks = crate::probes::pins::KernelSide {
            origin: "adopted".into(),
            adopted_processes: 3,
            ..Default::default()
        };
        same_json::<KernelSide>(&ks);
        ks.pinned_at = Some("/sys/fs/bpf/agentwatch/x".into());
        ks.gap_secs = Some(0.5);
        ks.replaced = vec!["other build".into()];
        ks.not_pinned = Some("no bpffs".into());
        ks.ring_drops_before_start = Some((1, 2));
        same_json::<KernelSide>(&ks);
    }

    #[test]
    fn answers_are_read_by_request() {
        let refused = Reply::refused("no open session x");
        assert_eq!(
            refused.to_json(),
            serde_json::json!({"error": "no open session x"})
        );
        let read = Reply::read(&Request::Reload, refused.to_json()).unwrap();
        assert_eq!(read.to_json(), refused.to_json());
        let killed = serde_json::json!({"killed": "s-1", "processes": 2});
        let read = Reply::read(
            &Request::Kill {
                session: "s-1".into(),
            },
            killed.clone(),
        )
        .unwrap();
        assert_eq!(read.to_json(), killed);
        let list = serde_json::json!({"sessions": [session(Outcome::Killed, None)]});
        let Reply::Sessions(read) = Reply::read(&Request::Sessions, list.clone()).unwrap() else {
            panic!("a session list");
        };
        assert_eq!(read.sessions[0].outcome, Outcome::Killed);
        assert_eq!(serde_json::to_value(&read).unwrap(), list);
    }
}
