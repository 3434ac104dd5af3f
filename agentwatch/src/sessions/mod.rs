//! Agent tree and sessions (see ARCHITECTURE.md, "Domain model").
//!
//! * An **agent** is a process that made at least one LLM call ([`Sessions::on_llm_request`]).
//! * A new agent with no agent ancestor starts a **session** as its root (depth 0); an agent
//!   whose nearest agent ancestor has depth `d` joins that ancestor's session at depth `d + 1`.
//!   Tool processes (never called an LLM) add no depth. An agent's session and depth are fixed
//!   at its first request: if an ancestor becomes an agent later, it starts its own session and
//!   the earlier agent stays where it was (each call is charged once, to one session).
//! * A session closes when its last process exits, which is when its root is removed from the
//!   process tree ([`Sessions::on_removed`]); the tree keeps an exited root while any
//!   descendant lives.
//! * Session ids: hex of the first 16 bytes of SHA-256 over `"{boot_id}:{tgid}:{start_ticks}"`
//!   ([`session_id`]), so a restarted daemon re-derives them. Should that id already belong to
//!   a session closed in this boot (a missed exit), a generation suffix `":{n}"` is hashed in,
//!   so a ledger row is never written twice for one id.
//! * Session `started_at` = the start of the request that made the root an agent (the root
//!   agent's first call start); `ended_at` = when it closed.
//! * Totals are accumulated from the very [`CallRecord`]s that are written, in write order,
//!   so the ledger totals equal the sums of the session's calls exactly (the cost sum adds the
//!   same `f64`s in the same order a reader of `calls.jsonl` would).
//!
//! Daemon wiring: `tree.ensure(tgid)` on a TLS event → `on_llm_request` when a request is
//! recognised → `on_call` when it finishes (write the row, then) ; `on_removed` with the keys
//! returned by `ProcTree::on_exit` / `take_removed` (write the ledger rows). A call finished
//! after its agent's exit event is still charged to the agent's session while that session is
//! open; finish (flush) a process's calls before handing its ROOT's removal to `on_removed`.
//! Call `reap_orphans` now and then.
//!
//! Known limits: after a restart the tree is seeded from /proc, so an exited root that was
//! kept only for its live descendants is not there: its session is closed by `restore`, and a
//! surviving sub-agent's later calls start a new session. An agent that made a request but
//! whose call never finished is counted in `agent_count` live, but not after a restart (only
//! calls are persisted).

pub mod actions;
pub mod ceilings;
pub mod clock;
pub mod drift;
pub mod file_journal;
mod rows;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use clock::WallClock;
pub use rows::{
    CallRecord, CallRow, CeilingHit, Column, LedgerRow, Notice, Outcome, SessionRow, num, short,
};

use crate::accounting::Usage;
use crate::accounting::pricing::Priced;
use crate::procs::{ProcKey, ProcTree};
use crate::providers::{LlmCall, LlmRequest};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read {what} from {path}: {source}; check that procfs is mounted and readable")]
    ReadHostInfo {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `/proc/sys/kernel/random/boot_id`, trimmed.
pub fn read_boot_id(proc_root: &Path) -> Result<String, SessionError> {
    read_trimmed(proc_root, "sys/kernel/random/boot_id", "the boot id")
}

/// `/proc/sys/kernel/hostname`, trimmed.
pub fn read_hostname(proc_root: &Path) -> Result<String, SessionError> {
    read_trimmed(proc_root, "sys/kernel/hostname", "the host name")
}

fn read_trimmed(proc_root: &Path, rel: &str, what: &'static str) -> Result<String, SessionError> {
    let path = proc_root.join(rel);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SessionError::ReadHostInfo { what, path, source })
}

/// The deterministic id of the session rooted at `root` in boot `boot_id`.
pub fn session_id(boot_id: &str, root: ProcKey) -> String {
    session_id_gen(boot_id, root, 0)
}

fn session_id_gen(boot_id: &str, root: ProcKey, generation: u32) -> String {
    let input = if generation == 0 {
        format!("{boot_id}:{}:{}", root.tgid, root.start_ticks)
    } else {
        format!("{boot_id}:{}:{}:{generation}", root.tgid, root.start_ticks)
    };
    let digest = Sha256::digest(input.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Generations tried before giving up on a fresh id (never reached in practice).
const MAX_GENERATION: u32 = 64;

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub boot_id: String,
    /// Host name written in every row.
    pub host: String,
    pub clock: WallClock,
    /// Ids of sessions closed in this boot remembered to avoid reusing one (FIFO bound).
    pub closed_ids_max: usize,
}

impl SessionsConfig {
    pub fn new(boot_id: impl Into<String>, host: impl Into<String>, clock: WallClock) -> Self {
        Self {
            boot_id: boot_id.into(),
            host: host.into(),
            clock,
            closed_ids_max: 100_000,
        }
    }
}

/// Where an agent's calls are charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRef {
    pub session_id: String,
    pub depth: u32,
}

/// Open sessions found in `calls.jsonl` at start (produced by `sinks::recovery`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveredSessions {
    /// Sessions with calls but no ledger row, each with its calls in file order.
    pub open: Vec<(String, Vec<CallRecord>)>,
    /// Ids of sessions already closed (ledger rows) in the current boot.
    pub closed_this_boot: Vec<String>,
    /// Tool runs already written (`actions.jsonl`) of the open sessions.
    pub tool_runs: HashMap<String, u64>,
    /// Destinations already written (`actions.jsonl`) of the open sessions.
    pub hosts: HashMap<String, Vec<(std::net::IpAddr, u16)>>,
    /// The files the open sessions changed so far (`files-open.jsonl`, [`file_journal`]).
    pub files: HashMap<String, Vec<actions::FileChange>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionsStats {
    pub open_sessions: usize,
    pub indexed_agents: usize,
    pub closed_sessions: u64,
    pub restored_continued: u64,
    pub restored_closed: u64,
    /// Of `restored_continued`: sessions whose root had ended while no daemon ran, kept open
    /// until the records they left in the ring buffer meanwhile (to their root's exit) are read.
    pub restored_root_gone: u64,
    /// Processes of restored sessions put back under their root (their parent ended while no
    /// daemon ran; the kernel said which session they are in).
    pub restored_orphans_adopted: u64,
    /// Sessions closed with `drift` (departing from their job's baseline).
    pub drifted_sessions: u64,
    /// File changes not kept: their session had `MAX_FILES_PER_SESSION` paths already
    /// (`[actions] files`).
    pub file_changes_over_cap: u64,
}

/// One open session, for `agentwatch sessions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    pub session_id: String,
    pub root_pid: u32,
    pub root_start_ticks: u64,
    pub root_comm: String,
    pub root_cmdline: String,
    pub agents: u64,
    pub depth_max: u32,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub unpriced_calls: u64,
    pub started_at: String,
    pub ceiling_hits: u64,
    pub tool_runs: u64,
    /// `completed` while running normally; `paused`, `killed` or `blocked` once stopped.
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// One agent of a session's agent tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentView {
    pub pid: u32,
    pub start_ticks: u64,
    pub comm: String,
    pub depth: u32,
    /// The nearest agent ancestor (`None` for the root).
    pub parent_pid: Option<u32>,
    pub parent_start_ticks: Option<u64>,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cost_usd: f64,
    pub unpriced_calls: u64,
    /// Its requests written whose calls have not ended yet, oldest first.
    pub in_flight: Vec<InFlightCall>,
}

/// A request an agent wrote whose response has not ended.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct InFlightCall {
    pub model: Option<String>,
    pub started_at: String,
}

/// A process of a session running now that is not an agent: a tool (`bash`, `git`, a test
/// runner), charged to the agent it runs under.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RunningTool {
    pub pid: u32,
    /// The executable's file name (as in `actions.jsonl`), else its `comm`.
    pub tool: String,
    pub agent_pid: u32,
    pub started_at: String,
}

/// A session's agent tree, agents in depth-first order (root first; children by start).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeView {
    pub session_id: String,
    pub root_pid: u32,
    pub agents: Vec<AgentView>,
    /// Its tools running now ([`Sessions::running_tools`]; empty from [`Sessions::tree`]).
    pub tools_running: Vec<RunningTool>,
}

/// Requests kept in flight per agent; an older one is forgotten (its call still ends and is
/// charged when its response does).
const MAX_IN_FLIGHT_PER_AGENT: usize = 16;

/// Paths kept per session (`[actions] files`); changes to others are counted only.
const MAX_FILES_PER_SESSION: usize = 4096;

#[derive(Debug, Clone)]
struct AgentStats {
    comm: String,
    depth: u32,
    parent: Option<ProcKey>,
    usage: Usage,
    cost_usd: f64,
    unpriced: u64,
    calls: u64,
    /// Requests written and not ended, by start (boot-clock ns), with their model.
    in_flight: BTreeMap<u64, Option<String>>,
}

/// Where a call came from, beyond its process key: read by the pipeline from /proc.
#[derive(Debug, Clone, Default)]
pub struct CallOrigin {
    pub ns_pid: Option<u32>,
    pub workload: crate::workloads::Workload,
}

#[derive(Debug, Clone)]
struct Session {
    id: String,
    root: ProcKey,
    root_comm: String,
    root_exe: Option<String>,
    root_cmdline: String,
    started_at: String,
    usage: Usage,
    cost_usd: f64,
    unpriced: u64,
    /// What unpriced calls counted toward USD ceilings (`[ceilings] unpriced`).
    unpriced_charge_usd: f64,
    /// Calls by how they were measured (`usage_source`).
    estimated: u64,
    /// How far estimated calls could be above their point estimates (input tokens, and the
    /// input's cost at the highest rate): ceilings charge the upper bounds.
    estimate_margin_tokens: u64,
    estimate_margin_usd: f64,
    usage_missing: u64,
    call_count: u64,
    depth_max: u32,
    /// Every agent the session ever had (exited ones too), for counts and the tree view.
    agents: BTreeMap<ProcKey, AgentStats>,
    providers: BTreeSet<String>,
    models: BTreeSet<String>,
    last_ended_at: Option<String>,
    /// Ceiling hits so far, and the outcome the policy set (completed unless stopped).
    ceiling_hits: u64,
    /// Tool runs (`actions`) charged to the session.
    tool_runs: u64,
    /// Distinct TCP destinations its processes connected to (at most
    /// `MAX_HOSTS_PER_SESSION`; `hosts_over_cap` counts the others).
    hosts: BTreeSet<(std::net::IpAddr, u16)>,
    hosts_over_cap: u64,
    /// Paths its processes changed (`[actions] files`), at most `MAX_FILES_PER_SESSION`
    /// (`SessionsStats::file_changes_over_cap` counts the changes to other paths).
    files: BTreeMap<String, actions::FileChange>,
    /// The recurring job it is a run of (`drift::job_key`), what it ran, and how it departed
    /// from the job's baseline so far.
    job: Option<String>,
    tools_seen: BTreeSet<String>,
    /// Directories its processes changed files in (`[actions] files`).
    dirs_seen: BTreeSet<String>,
    drift: Vec<String>,
    outcome: Outcome,
    /// Why the session was stopped or flagged, for `agentwatch sessions`.
    reason: Option<String>,
    /// Container and pod labels, from the session's first call.
    workload: crate::workloads::Workload,
}

impl Session {
    /// Adds one written call to the totals (live and on restore: one code path).
    fn apply(&mut self, rec: &CallRecord) {
        if rec.blocked {
            // A stopped attempt: a row in calls.jsonl, not a call (nothing left the host).
            return;
        }
        let usage = Usage {
            input_tokens: rec.input_tokens,
            output_tokens: rec.output_tokens,
            cache_read_tokens: rec.cache_read_tokens,
            cache_write_tokens: rec.cache_write_tokens,
            reasoning_tokens: rec.reasoning_tokens,
            cache_write_1h_tokens: rec.cache_write_1h_tokens,
        };
        self.usage.add(&usage);
        match rec.cost_usd {
            Some(c) => self.cost_usd += c,
            None => self.unpriced += 1,
        }
        self.unpriced_charge_usd += rec.unpriced_charge_usd.unwrap_or(0.0);
        if let Some(e) = &rec.estimate {
            self.estimate_margin_tokens = self
                .estimate_margin_tokens
                .saturating_add(e.input_tokens_high.saturating_sub(rec.input_tokens));
            self.estimate_margin_usd += e.cost_usd_high.unwrap_or(0.0);
        }
        match rec.usage_source {
            crate::accounting::UsageSource::Estimated => self.estimated += 1,
            crate::accounting::UsageSource::Missing => self.usage_missing += 1,
            crate::accounting::UsageSource::Reported => {}
        }
        if self.call_count == 0 {
            self.workload = rec.workload.clone();
        }
        self.call_count += 1;
        self.depth_max = self.depth_max.max(rec.depth);
        if !self.providers.contains(&rec.provider) {
            self.providers.insert(rec.provider.clone());
        }
        if let Some(m) = &rec.model
            && !self.models.contains(m)
        {
            self.models.insert(m.clone());
        }
        let key = ProcKey {
            tgid: rec.pid,
            start_ticks: rec.pid_start_ticks,
        };
        let agent = self.agents.entry(key).or_insert_with(|| {
            AgentStats::new(
                rec.comm.clone(),
                rec.depth,
                rec.parent_pid
                    .zip(rec.parent_start_ticks)
                    .map(|(tgid, start_ticks)| ProcKey { tgid, start_ticks }),
            )
        });
        if agent.comm != rec.comm {
            agent.comm = rec.comm.clone();
        }
        agent.usage.add(&usage);
        match rec.cost_usd {
            Some(c) => agent.cost_usd += c,
            None => agent.unpriced += 1,
        }
        agent.calls += 1;
        if self.last_ended_at.as_deref() < Some(rec.ended_at.as_str()) {
            self.last_ended_at = Some(rec.ended_at.clone());
        }
    }

    fn ledger_row(
        &self,
        host: &str,
        boot_id: &str,
        ended_at: String,
        outcome: Outcome,
    ) -> LedgerRow {
        LedgerRow {
            session_id: self.id.clone(),
            host: host.to_string(),
            root_pid: self.root.tgid,
            root_exe: self.root_exe.clone(),
            root_cmdline: self.root_cmdline.clone(),
            started_at: self.started_at.clone(),
            ended_at,
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            cache_read_tokens: self.usage.cache_read_tokens,
            cache_write_tokens: self.usage.cache_write_tokens,
            reasoning_tokens: self.usage.reasoning_tokens,
            total_tokens: self.usage.total_tokens(),
            total_cost_usd: self.cost_usd,
            call_count: self.call_count,
            depth_max: self.depth_max,
            agent_count: self.agents.len() as u64,
            ceiling_hits: self.ceiling_hits,
            tool_runs: self.tool_runs,
            hosts_contacted: self.hosts.len() as u64 + self.hosts_over_cap,
            files_written: self.files.values().filter(|f| f.written()).count() as u64,
            files_deleted: self.files.values().filter(|f| f.deleted > 0).count() as u64,
            drift: self.drift.clone(),
            // A stop decided by the policy wins over the plain end of the session.
            outcome: if self.outcome == Outcome::Completed {
                outcome
            } else {
                self.outcome
            },
            providers: self.providers.iter().cloned().collect(),
            models: self.models.iter().cloned().collect(),
            unpriced_calls: self.unpriced,
            unpriced_charge_usd: self.unpriced_charge_usd,
            estimated_calls: self.estimated,
            usage_missing_calls: self.usage_missing,
            root_start_ticks: self.root.start_ticks,
            root_comm: self.root_comm.clone(),
            boot_id: boot_id.to_string(),
            workload: self.workload.clone(),
        }
    }

    fn view(&self) -> SessionView {
        SessionView {
            session_id: self.id.clone(),
            root_pid: self.root.tgid,
            root_start_ticks: self.root.start_ticks,
            root_comm: self.root_comm.clone(),
            root_cmdline: self.root_cmdline.clone(),
            agents: self.agents.len() as u64,
            depth_max: self.depth_max,
            calls: self.call_count,
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            total_tokens: self.usage.total_tokens(),
            cost_usd: self.cost_usd,
            unpriced_calls: self.unpriced,
            started_at: self.started_at.clone(),
            ceiling_hits: self.ceiling_hits,
            tool_runs: self.tool_runs,
            outcome: self.outcome,
            reason: self.reason.clone(),
        }
    }
}

/// All open sessions and the index of agents still in the process tree.
#[derive(Debug)]
pub struct Sessions {
    cfg: SessionsConfig,
    sessions: HashMap<String, Session>,
    by_root: HashMap<ProcKey, String>,
    /// Agents whose process is still in the tree (live or exited-but-kept).
    agents: HashMap<ProcKey, AgentRef>,
    /// Agents that left the tree while their session is still open: a call finished after
    /// its process's exit event is still charged to its session.
    departed: HashMap<ProcKey, AgentRef>,
    closed_ids: HashSet<String>,
    closed_order: VecDeque<String>,
    stats: SessionsStats,
    /// See [`Sessions::take_opened`].
    opened: Vec<ProcKey>,
    /// Baselines of recurring jobs (`drift`).
    jobs: drift::Jobs,
    /// What is kept of tool runs (`[actions]`).
    actions: actions::ActionsConfig,
    /// File rows of sessions closed since [`Sessions::take_file_rows`].
    closed_files: Vec<actions::FileChange>,
    /// (session, path) of the file changes counted since [`Sessions::take_changed_files`].
    changed_files: BTreeSet<(String, String)>,
    /// See [`Sessions::with_gap_records`].
    gap_recorded: bool,
}

impl Sessions {
    pub fn new(cfg: SessionsConfig) -> Self {
        Self {
            cfg,
            sessions: HashMap::new(),
            by_root: HashMap::new(),
            agents: HashMap::new(),
            departed: HashMap::new(),
            closed_ids: HashSet::new(),
            closed_order: VecDeque::new(),
            stats: SessionsStats::default(),
            opened: Vec::new(),
            jobs: drift::Jobs::default(),
            actions: Default::default(),
            closed_files: Vec::new(),
            changed_files: BTreeSet::new(),
            gap_recorded: false,
        }
    }

    pub fn jobs(&self) -> &drift::Jobs {
        &self.jobs
    }

    /// What is kept of tool runs (`[actions]`).
    pub fn with_actions(mut self, actions: actions::ActionsConfig) -> Self {
        self.actions = actions;
        self
    }

    /// The ring buffer holds what the kernel recorded while no daemon ran (the kernel side
    /// was adopted): [`Self::restore`] keeps the sessions whose processes ended meanwhile
    /// until those records are read.
    pub fn with_gap_records(mut self, recorded: bool) -> Self {
        self.gap_recorded = recorded;
        self
    }

    /// Recurring jobs' baselines (loaded from the data directory).
    pub fn with_jobs(mut self, jobs: drift::Jobs) -> Self {
        self.jobs = jobs;
        self
    }

    pub fn config(&self) -> &SessionsConfig {
        &self.cfg
    }

    /// Follow an NTP step: re-read the boot → wall clock offset.
    pub fn set_clock(&mut self, clock: WallClock) {
        self.cfg.clock = clock;
    }

    /// The session and depth of an agent of an open session.
    pub fn agent(&self, key: ProcKey) -> Option<&AgentRef> {
        self.agents.get(&key).or_else(|| self.departed.get(&key))
    }

    /// Processes the kernel holds as a session's (`(pid, root pid)`, from `SESSION_PROCS`)
    /// whose parent ended while no daemon ran: reparented to their init or subreaper, the
    /// tree has lost their session. Each is put back under its session's root (when that is
    /// an open session's). Returns how many were.
    pub fn adopt_orphans(&mut self, tree: &mut ProcTree, marked: &[(u32, u32)]) -> u64 {
        let mut adopted = 0;
        let pids: HashSet<u32> = marked.iter().map(|(pid, _)| *pid).collect();
        for &(tgid, root) in marked {
            let (Some(key), Some(root)) = (tree.key_of(tgid), tree.key_of(root)) else {
                continue;
            };
            // Only the top of each orphaned subtree: its children come along.
            if key == root
                || !self.by_root.contains_key(&root)
                || self.charged_agent(tree, key).is_some()
                || tree.parent(key).is_some_and(|p| pids.contains(&p.key.tgid))
            {
                continue;
            }
            if tree.reparent(key, root) {
                adopted += 1;
            }
        }
        self.stats.restored_orphans_adopted += adopted;
        adopted
    }

    /// The root of the open session `key` is charged to.
    pub fn session_root_of(&self, tree: &ProcTree, key: ProcKey) -> Option<ProcKey> {
        let (_, aref) = self.charged_agent(tree, key)?;
        self.sessions.get(&aref.session_id).map(|s| s.root)
    }

    pub fn open_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn stats(&self) -> SessionsStats {
        SessionsStats {
            open_sessions: self.sessions.len(),
            indexed_agents: self.agents.len(),
            ..self.stats.clone()
        }
    }

    /// `key` wrote an LLM request: make it an agent (idempotent), note the request in flight
    /// until its call ends, and say where it is charged.
    pub fn on_llm_request(&mut self, tree: &ProcTree, key: ProcKey, req: &LlmRequest) -> AgentRef {
        let aref = self.agent_for(tree, key, req);
        if let Some(a) = self
            .sessions
            .get_mut(&aref.session_id)
            .and_then(|s| s.agents.get_mut(&key))
        {
            a.in_flight.insert(req.started_at_ns, req.model.clone());
            while a.in_flight.len() > MAX_IN_FLIGHT_PER_AGENT {
                a.in_flight.pop_first();
            }
        }
        aref
    }

    /// The agent `key` is, made one (at its depth in its session, or as a new session's root)
    /// when it is new.
    fn agent_for(&mut self, tree: &ProcTree, key: ProcKey, req: &LlmRequest) -> AgentRef {
        if let Some(a) = self.agents.get(&key).or_else(|| self.departed.get(&key))
            && self.sessions.contains_key(&a.session_id)
        {
            return a.clone();
        }
        let parent = tree.ancestors(key).find_map(|p| {
            let a = self.agents.get(&p.key)?;
            let session = self.sessions.contains_key(&a.session_id);
            session.then(|| (p.key, a.clone()))
        });
        let proc_info = tree.get(key);
        let comm = proc_info.map(|p| p.comm.clone()).unwrap_or_default();
        let parent_session = parent.and_then(|(parent_key, pref)| {
            let session = self.sessions.get_mut(&pref.session_id)?;
            Some((parent_key, pref, session))
        });
        let aref = match parent_session {
            Some((parent_key, pref, session)) => {
                let depth = pref.depth + 1;
                session.depth_max = session.depth_max.max(depth);
                session
                    .agents
                    .insert(key, AgentStats::new(comm, depth, Some(parent_key)));
                AgentRef {
                    session_id: pref.session_id,
                    depth,
                }
            }
            None => {
                let id = self.fresh_id(key);
                let mut agents = BTreeMap::new();
                agents.insert(key, AgentStats::new(comm.clone(), 0, None));
                let session = Session {
                    id: id.clone(),
                    root: key,
                    root_comm: comm,
                    root_exe: proc_info.and_then(|p| p.exe.clone()),
                    root_cmdline: proc_info.map(|p| p.cmdline_display()).unwrap_or_default(),
                    started_at: self.cfg.clock.rfc3339(req.started_at_ns),
                    usage: Usage::default(),
                    cost_usd: 0.0,
                    unpriced: 0,
                    estimated: 0,
                    estimate_margin_tokens: 0,
                    estimate_margin_usd: 0.0,
                    unpriced_charge_usd: 0.0,
                    usage_missing: 0,
                    call_count: 0,
                    depth_max: 0,
                    agents,
                    providers: BTreeSet::new(),
                    models: BTreeSet::new(),
                    last_ended_at: None,
                    ceiling_hits: 0,
                    tool_runs: 0,
                    hosts: BTreeSet::new(),
                    hosts_over_cap: 0,
                    files: BTreeMap::new(),
                    job: proc_info.map(|p| {
                        let cwd = std::fs::read_link(
                            tree.proc_root().join(key.tgid.to_string()).join("cwd"),
                        )
                        .ok();
                        drift::job_key(
                            p.exe.as_deref(),
                            p.cmdline.first().map(String::as_str),
                            cwd.as_deref().and_then(|c| c.to_str()),
                        )
                    }),
                    tools_seen: BTreeSet::new(),
                    dirs_seen: BTreeSet::new(),
                    drift: Vec::new(),
                    outcome: Outcome::Completed,
                    reason: None,
                    workload: Default::default(),
                };
                self.sessions.insert(id.clone(), session);
                self.by_root.insert(key, id.clone());
                self.opened.push(key);
                AgentRef {
                    session_id: id,
                    depth: 0,
                }
            }
        };
        self.agents.insert(key, aref.clone());
        aref
    }

    /// The session is a run of `job` (a named `[[session_roots]]` rule's, `rule:<name>`),
    /// instead of its root's executable, `argv[0]` and directory.
    pub fn set_job(&mut self, session_id: &str, job: String) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.job = Some(job);
        }
    }

    /// A call finished: charge it to its session (once) and return its `calls.jsonl` row.
    /// A non-finite cost is treated as unknown.
    pub fn on_call(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        call: &LlmCall,
        priced: impl Into<Priced>,
    ) -> CallRecord {
        self.on_call_from(tree, key, call, priced, CallOrigin::default())
    }

    /// [`Sessions::on_call`] with the caller's namespace pid and container labels.
    pub fn on_call_from(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        call: &LlmCall,
        priced: impl Into<Priced>,
        origin: CallOrigin,
    ) -> CallRecord {
        let priced: Priced = priced.into();
        let aref = self.agent_for(tree, key, &call.request);
        let clock = self.cfg.clock;
        let comm = tree.get(key).map(|p| p.comm.clone());
        let session = self
            .sessions
            .get_mut(&aref.session_id)
            .expect("on_llm_request returns an open session");
        if let Some(a) = session.agents.get_mut(&key) {
            a.in_flight.remove(&call.request.started_at_ns);
        }
        let agent = session.agents.get(&key);
        let parent = agent.and_then(|a| a.parent);
        let comm = comm
            .or_else(|| agent.map(|a| a.comm.clone()))
            .unwrap_or_default();
        let first = session.call_count == 0;
        let u = &call.usage;
        let rec = CallRecord {
            session_id: aref.session_id.clone(),
            pid: key.tgid,
            comm,
            depth: aref.depth,
            provider: call.request.provider.clone(),
            api: call.request.api.clone(),
            model: call
                .request
                .model
                .clone()
                .or_else(|| call.response_model.clone()),
            streaming: call.request.streaming,
            http_version: call.request.http_version.clone(),
            status: call.status,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
            cost_usd: priced.cost_usd.filter(|c| c.is_finite()),
            cache_write_1h_tokens: u.cache_write_1h_tokens,
            priced_as: priced.priced_as,
            unpriced_charge_usd: priced.unpriced_charge_usd.filter(|c| c.is_finite()),
            budget: None,
            started_at: clock.rfc3339(call.request.started_at_ns),
            ended_at: clock.rfc3339(call.ended_at_ns),
            total_tokens: u.total_tokens(),
            usage_source: call.usage_source,
            complete: call.complete,
            response_model: call.response_model.clone(),
            response_id: call.response_id.clone(),
            server_address: call.request.server_address.clone(),
            host: self.cfg.host.clone(),
            pid_start_ticks: key.start_ticks,
            root_pid: session.root.tgid,
            root_start_ticks: session.root.start_ticks,
            parent_pid: parent.map(|p| p.tgid),
            parent_start_ticks: parent.map(|p| p.start_ticks),
            call_seq: session.call_count + 1,
            request_bytes: call.request.request_bytes,
            response_bytes: call.response_bytes,
            session_started_at: first.then(|| session.started_at.clone()),
            root_comm: first.then(|| session.root_comm.clone()),
            root_exe: if first {
                session.root_exe.clone()
            } else {
                None
            },
            root_cmdline: first.then(|| session.root_cmdline.clone()),
            blocked: false,
            estimate: call.estimate.clone(),
            started_ns: Some(call.request.started_at_ns),
            ns_pid: origin.ns_pid,
            workload: origin.workload,
        };
        session.apply(&rec);
        rec
    }

    /// The agent what `key` does is charged to: itself when it is an agent, else its nearest
    /// ancestor that is.
    fn charged_agent(&self, tree: &ProcTree, key: ProcKey) -> Option<(ProcKey, AgentRef)> {
        if let Some(a) = self.agent(key) {
            return Some((key, a.clone()));
        }
        tree.ancestors(key)
            .find_map(|p| Some((p.key, self.agent(p.key)?.clone())))
    }

    /// `key` exited (it is still in the tree): when it ran a program of its own under an
    /// agent of an open session and made no LLM call, it was a tool run of that session:
    /// counted, and its `actions.jsonl` row returned.
    pub fn on_tool_exit(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        ended_ns: u64,
        status: Option<u32>,
    ) -> Option<actions::ToolRun> {
        let info = tree.get(key)?;
        if !info.execed {
            return None;
        }
        let (agent, aref) = self.charged_agent(tree, key)?;
        if agent == key {
            return None;
        }
        let session = self.sessions.get_mut(&aref.session_id)?;
        session.tool_runs += 1;
        let tool = actions::tool_name(info.exe.as_deref(), &info.comm);
        if session.tools_seen.len() < drift::MAX_TOOLS_PER_RUN
            && session.tools_seen.insert(tool.clone())
            && let Some(b) = session.job.as_deref().and_then(|j| self.jobs.get(j))
            && !b.tools.contains(&tool)
        {
            session.drift.push(format!("new tool: {tool}"));
        }
        let started_ns = tree.start_ns(key);
        let (exit_code, signal) = actions::split_status(status);
        Some(actions::ToolRun {
            session_id: aref.session_id,
            host: self.cfg.host.clone(),
            pid: key.tgid,
            pid_start_ticks: key.start_ticks,
            exe: info.exe.clone(),
            tool,
            comm: info.comm.clone(),
            argv0: info.cmdline.first().cloned(),
            argv: if self.actions.argv {
                actions::redact_argv(&info.cmdline)
            } else {
                Vec::new()
            },
            agent_pid: agent.tgid,
            agent_start_ticks: agent.start_ticks,
            agent_depth: aref.depth,
            parent_pid: info.parent.map(|p| p.tgid),
            started_at: self.cfg.clock.rfc3339(started_ns),
            ended_at: self.cfg.clock.rfc3339(ended_ns),
            duration_ms: ended_ns.saturating_sub(started_ns) as f64 / 1e6,
            exit_code,
            signal,
        })
    }

    /// `key` changed a file (`FILE_*` of the kernel's record; `path` and `new_path` absolute):
    /// counted on its session's row for that path (a rename on both paths). Processes
    /// outside sessions, and pseudo file systems, are ignored.
    pub fn on_file_op(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        op: u32,
        flags: u32,
        path: String,
        new_path: Option<String>,
        ts_ns: u64,
    ) {
        use agentwatch_ebpf::{FILE_OPEN_WRITE, FILE_RENAME, FILE_UNLINK};
        const O_CREAT: u32 = 0o100;
        const O_TRUNC: u32 = 0o1000;
        let Some((agent, aref)) = self.charged_agent(tree, key) else {
            return;
        };
        let tool = tree
            .get(key)
            .map(|i| actions::tool_name(i.exe.as_deref(), &i.comm))
            .unwrap_or_default();
        let at = self.cfg.clock.rfc3339(ts_ns);
        let host = self.cfg.host.clone();
        let Some(session) = self.sessions.get_mut(&aref.session_id) else {
            return;
        };
        let over_cap = &mut self.stats.file_changes_over_cap;
        let changed = &mut self.changed_files;
        let mut touch = |path: String, count: &dyn Fn(&mut actions::FileChange)| {
            if actions::is_pseudo_path(&path) {
                return;
            }
            if !session.files.contains_key(&path) {
                if session.files.len() >= MAX_FILES_PER_SESSION {
                    *over_cap += 1;
                    return;
                }
                session.files.insert(
                    path.clone(),
                    actions::FileChange {
                        session_id: aref.session_id.clone(),
                        host: host.clone(),
                        path: path.clone(),
                        pid: key.tgid,
                        tool: tool.clone(),
                        agent_pid: agent.tgid,
                        agent_start_ticks: agent.start_ticks,
                        agent_depth: aref.depth,
                        first_at: at.clone(),
                        ..Default::default()
                    },
                );
            }
            if let Some(f) = session.files.get_mut(&path) {
                count(f);
                f.last_at = at.clone();
                changed.insert((aref.session_id.clone(), path));
            }
        };
        // The directories changed, for drift (a relative path of a process that is gone
        // has no known directory).
        let dirs: Vec<String> = [Some(&path), new_path.as_ref()]
            .into_iter()
            .flatten()
            .filter(|p| p.starts_with('/') && !actions::is_pseudo_path(p))
            .filter_map(|p| std::path::Path::new(p).parent())
            .map(|d| d.display().to_string())
            .collect();
        match op {
            FILE_OPEN_WRITE => touch(path, &|f| {
                f.opened_for_write += 1;
                f.created += u64::from(flags & O_CREAT != 0);
                f.truncated += u64::from(flags & O_TRUNC != 0);
            }),
            FILE_UNLINK => touch(path, &|f| f.deleted += 1),
            FILE_RENAME => {
                touch(path, &|f| f.renamed_from += 1);
                if let Some(new_path) = new_path {
                    touch(new_path, &|f| f.renamed_to += 1);
                }
            }
            _ => return,
        }
        for dir in dirs {
            if session.dirs_seen.len() < drift::MAX_DIRS_PER_RUN
                && session.dirs_seen.insert(dir.clone())
                && session
                    .job
                    .as_deref()
                    .is_some_and(|j| self.jobs.is_new_dir(j, &dir))
            {
                session.drift.push(format!("new directory: {dir}"));
            }
        }
    }

    /// The files an open session changed so far (`[actions] files`), by path.
    pub fn file_changes(&self, session_id: &str) -> Vec<actions::FileChange> {
        self.sessions
            .get(session_id)
            .map(|s| s.files.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The paths of open sessions changed since the last call, as they stand now (for the
    /// journal that carries them across a restart).
    pub fn take_changed_files(&mut self) -> Vec<actions::FileChange> {
        std::mem::take(&mut self.changed_files)
            .into_iter()
            .filter_map(|(sid, path)| self.sessions.get(&sid)?.files.get(&path).cloned())
            .collect()
    }

    /// Every path the open sessions changed so far.
    pub fn open_file_changes(&self) -> Vec<actions::FileChange> {
        self.sessions
            .values()
            .flat_map(|s| s.files.values().cloned())
            .collect()
    }

    /// The file rows of the sessions closed since the last call: written before their
    /// ledger rows.
    pub fn take_file_rows(&mut self) -> Vec<actions::FileChange> {
        std::mem::take(&mut self.closed_files)
    }

    /// `key` connected to `addr`:`port`: the first time its session (of the agent it is, or
    /// runs under) connects there, its `actions.jsonl` row.
    pub fn on_connect(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        addr: std::net::IpAddr,
        port: u16,
        ts_ns: u64,
    ) -> Option<actions::HostContact> {
        let (agent, aref) = self.charged_agent(tree, key)?;
        let session = self.sessions.get_mut(&aref.session_id)?;
        if session.hosts.contains(&(addr, port)) {
            return None;
        }
        if session.hosts.len() >= actions::MAX_HOSTS_PER_SESSION {
            session.hosts_over_cap += 1;
            return None;
        }
        session.hosts.insert((addr, port));
        let name = std::net::SocketAddr::new(addr, port).to_string();
        if let Some(b) = session.job.as_deref().and_then(|j| self.jobs.get(j))
            && !b.hosts.contains(&name)
        {
            session.drift.push(format!("new host: {name}"));
        }
        let info = tree.get(key);
        Some(actions::HostContact {
            session_id: aref.session_id,
            host: self.cfg.host.clone(),
            address: addr.to_string(),
            port,
            sni: None,
            pid: key.tgid,
            tool: info
                .map(|p| actions::tool_name(p.exe.as_deref(), &p.comm))
                .unwrap_or_default(),
            agent_pid: agent.tgid,
            agent_start_ticks: agent.start_ticks,
            agent_depth: aref.depth,
            first_at: self.cfg.clock.rfc3339(ts_ns),
        })
    }

    /// Roots of sessions opened (or restored) since the last call: their processes are to be
    /// marked in the kernel's `SESSION_PROCS`.
    pub fn take_opened(&mut self) -> Vec<ProcKey> {
        std::mem::take(&mut self.opened)
    }

    /// Processes left the tree (`ProcTree::on_exit` / `take_removed`). Sessions whose root is
    /// among them close now; their ledger rows are returned (to be written once).
    pub fn on_removed(&mut self, removed: &[ProcKey], now_ns: u64) -> Vec<LedgerRow> {
        let mut rows = Vec::new();
        for key in removed {
            if let Some(a) = self.agents.remove(key) {
                self.departed.insert(*key, a);
            }
            if let Some(id) = self.by_root.get(key).cloned() {
                let ended_at = self.cfg.clock.rfc3339(now_ns);
                rows.extend(self.close(&id, ended_at, Outcome::Completed));
            }
        }
        rows
    }

    /// Closes sessions whose root is no longer in the tree (a root that vanished before it was
    /// ever inserted, or a tree over its cap). Call now and then.
    pub fn reap_orphans(&mut self, tree: &ProcTree, now_ns: u64) -> Vec<LedgerRow> {
        let mut orphans: Vec<String> = self
            .by_root
            .iter()
            .filter(|(root, _)| !tree.contains(**root))
            .map(|(_, id)| id.clone())
            .collect();
        orphans.sort();
        let ended_at = self.cfg.clock.rfc3339(now_ns);
        orphans
            .iter()
            .filter_map(|id| self.close(id, ended_at.clone(), Outcome::Completed))
            .collect()
    }

    /// Restart recovery. Each open session found in `calls.jsonl` continues (totals, call
    /// count, agents still in the tree keep their depth and session) when its root is still in
    /// the tree with the same id, or ended while no daemon ran and the ring buffer kept what
    /// it did meanwhile (`with_gap_records`: its root and agents that ended stand in for
    /// themselves in `tree` until their exit records are read); otherwise it closes now and
    /// its ledger row is returned for writing, `ended_at` = its last call's `ended_at`
    /// (`now_ns` if it has none).
    pub fn restore(
        &mut self,
        mut recovered: RecoveredSessions,
        tree: &mut ProcTree,
        now_ns: u64,
    ) -> Vec<LedgerRow> {
        for id in recovered.closed_this_boot {
            self.remember_closed(id);
        }
        let mut rows = Vec::new();
        for (id, calls) in recovered.open {
            let Some(first) = calls.first() else {
                continue;
            };
            if self.sessions.contains_key(&id) || self.closed_ids.contains(&id) {
                continue;
            }
            let root = ProcKey {
                tgid: first.root_pid,
                start_ticks: first.root_start_ticks,
            };
            let header = calls.iter().find(|c| c.session_started_at.is_some());
            let root_info = tree.get(root);
            let mut session = Session {
                id: id.clone(),
                root,
                root_comm: header
                    .and_then(|h| h.root_comm.clone())
                    .or_else(|| root_info.map(|p| p.comm.clone()))
                    .unwrap_or_default(),
                root_exe: header
                    .and_then(|h| h.root_exe.clone())
                    .or_else(|| root_info.and_then(|p| p.exe.clone())),
                root_cmdline: header
                    .and_then(|h| h.root_cmdline.clone())
                    .or_else(|| root_info.map(|p| p.cmdline_display()))
                    .unwrap_or_default(),
                started_at: header
                    .and_then(|h| h.session_started_at.clone())
                    .or_else(|| calls.iter().map(|c| c.started_at.clone()).min())
                    .unwrap_or_default(),
                usage: Usage::default(),
                cost_usd: 0.0,
                unpriced: 0,
                estimated: 0,
                estimate_margin_tokens: 0,
                estimate_margin_usd: 0.0,
                unpriced_charge_usd: 0.0,
                usage_missing: 0,
                call_count: 0,
                depth_max: 0,
                agents: BTreeMap::new(),
                providers: BTreeSet::new(),
                models: BTreeSet::new(),
                last_ended_at: None,
                ceiling_hits: 0,
                tool_runs: recovered.tool_runs.get(&id).copied().unwrap_or(0),
                hosts: recovered
                    .hosts
                    .get(&id)
                    .map(|h| h.iter().copied().collect())
                    .unwrap_or_default(),
                hosts_over_cap: 0,
                // Counted by the previous daemon(s) so far; this one adds to them.
                files: recovered
                    .files
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|f| (f.path.clone(), f))
                    .collect(),
                job: None,
                tools_seen: BTreeSet::new(),
                dirs_seen: BTreeSet::new(),
                drift: Vec::new(),
                outcome: Outcome::Completed,
                reason: None,
                workload: Default::default(),
            };
            for rec in &calls {
                session.apply(rec);
            }
            let this_boot = !self.by_root.contains_key(&root)
                && (0..MAX_GENERATION).any(|g| session_id_gen(&self.cfg.boot_id, root, g) == id);
            // A root that ended while no daemon ran stands in for itself until its exit
            // record is read: what the session did meanwhile is in the ring buffer.
            let gone_root = this_boot
                && self.gap_recorded
                && !tree.contains(root)
                && tree.insert_gone(
                    root,
                    root.tgid,
                    session.root_comm.clone(),
                    session.root_exe.clone(),
                    None,
                );
            if this_boot && tree.contains(root) {
                if self.gap_recorded {
                    // So do its agents that ended meanwhile (parents first).
                    let mut gone: Vec<(&ProcKey, &AgentStats)> = session
                        .agents
                        .iter()
                        .filter(|(k, _)| !tree.contains(**k))
                        .collect();
                    gone.sort_by_key(|(_, a)| a.depth);
                    for (key, a) in gone {
                        let parent = a.parent.filter(|p| tree.contains(*p));
                        tree.insert_gone(*key, root.tgid, a.comm.clone(), None, parent);
                    }
                }
                if gone_root {
                    self.stats.restored_root_gone += 1;
                }
                for (key, agent) in &session.agents {
                    if tree.contains(*key) && !self.agents.contains_key(key) {
                        self.agents.insert(
                            *key,
                            AgentRef {
                                session_id: id.clone(),
                                depth: agent.depth,
                            },
                        );
                    }
                }
                self.by_root.insert(root, id.clone());
                self.sessions.insert(id, session);
                self.opened.push(root);
                self.stats.restored_continued += 1;
            } else {
                let ended_at = session
                    .last_ended_at
                    .clone()
                    .unwrap_or_else(|| self.cfg.clock.rfc3339(now_ns));
                rows.push(session.ledger_row(
                    &self.cfg.host,
                    &self.cfg.boot_id,
                    ended_at,
                    Outcome::Completed,
                ));
                // Its file rows go out before that ledger row (`take_file_rows`).
                self.closed_files
                    .extend(std::mem::take(&mut session.files).into_values());
                self.remember_closed(id);
                self.stats.restored_closed += 1;
                self.stats.closed_sessions += 1;
            }
        }
        rows
    }

    /// The processes known as agents of open sessions (after a restart: those restored).
    pub fn agent_processes(&self) -> Vec<ProcKey> {
        self.agents.keys().copied().collect()
    }

    /// Open sessions, oldest first.
    pub fn live_sessions(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self.sessions.values().map(Session::view).collect();
        v.sort_by(|a, b| (&a.started_at, &a.session_id).cmp(&(&b.started_at, &b.session_id)));
        v
    }

    /// The agent tree of an open session.
    pub fn tree(&self, session_id: &str) -> Option<TreeView> {
        let s = self.sessions.get(session_id)?;
        let mut children: BTreeMap<Option<ProcKey>, Vec<ProcKey>> = BTreeMap::new();
        for (key, a) in &s.agents {
            // A parent outside the session's agents (cannot happen; be safe) counts as top.
            let parent = a.parent.filter(|p| s.agents.contains_key(p));
            children.entry(parent).or_default().push(*key);
        }
        let mut out = Vec::with_capacity(s.agents.len());
        let mut stack: Vec<ProcKey> = children.get(&None).cloned().unwrap_or_default();
        stack.reverse();
        while let Some(key) = stack.pop() {
            let Some(a) = s.agents.get(&key) else {
                continue;
            };
            out.push(AgentView {
                pid: key.tgid,
                start_ticks: key.start_ticks,
                comm: a.comm.clone(),
                depth: a.depth,
                parent_pid: a.parent.map(|p| p.tgid),
                parent_start_ticks: a.parent.map(|p| p.start_ticks),
                calls: a.calls,
                input_tokens: a.usage.input_tokens,
                output_tokens: a.usage.output_tokens,
                total_tokens: a.usage.total_tokens(),
                cost_usd: a.cost_usd,
                unpriced_calls: a.unpriced,
                in_flight: a
                    .in_flight
                    .iter()
                    .map(|(ns, model)| InFlightCall {
                        model: model.clone(),
                        started_at: self.cfg.clock.rfc3339(*ns),
                    })
                    .collect(),
            });
            if let Some(kids) = children.get(&Some(key)) {
                stack.extend(kids.iter().rev());
            }
        }
        Some(TreeView {
            session_id: s.id.clone(),
            root_pid: s.root.tgid,
            agents: out,
            tools_running: Vec::new(),
        })
    }

    /// The live processes of an open session that are not agents and ran a program of their
    /// own (tools), oldest first. Linear in the session root's live subtree; for answers, not
    /// per event.
    pub fn running_tools(&self, tree: &ProcTree, session_id: &str) -> Vec<RunningTool> {
        let Some(s) = self.sessions.get(session_id) else {
            return Vec::new();
        };
        let mut out: Vec<(u64, RunningTool)> = tree
            .live_subtree(s.root)
            .into_iter()
            .filter(|k| !s.agents.contains_key(k))
            .filter_map(|k| {
                let info = tree.get(k).filter(|i| i.execed)?;
                let (agent, aref) = self.charged_agent(tree, k)?;
                (aref.session_id == session_id).then(|| {
                    let started = tree.start_ns(k);
                    (
                        started,
                        RunningTool {
                            pid: k.tgid,
                            tool: actions::tool_name(info.exe.as_deref(), &info.comm),
                            agent_pid: agent.tgid,
                            started_at: self.cfg.clock.rfc3339(started),
                        },
                    )
                })
            })
            .collect();
        out.sort_by_key(|(started, t)| (*started, t.pid));
        out.into_iter().map(|(_, t)| t).collect()
    }

    fn close(&mut self, id: &str, ended_at: String, outcome: Outcome) -> Option<LedgerRow> {
        let session = self.sessions.remove(id)?;
        self.by_root.remove(&session.root);
        for key in session.agents.keys() {
            if self.agents.get(key).is_some_and(|a| a.session_id == id) {
                self.agents.remove(key);
            }
            if self.departed.get(key).is_some_and(|a| a.session_id == id) {
                self.departed.remove(key);
            }
        }
        self.stats.closed_sessions += 1;
        let mut session = session;
        if let Some(job) = session.job.clone() {
            let hosts = session
                .hosts
                .iter()
                .map(|(a, p)| std::net::SocketAddr::new(*a, *p).to_string())
                .collect();
            let d = self.jobs.close_run(
                &job,
                &session.tools_seen,
                &hosts,
                self.actions.files.then_some(&session.dirs_seen),
                session.usage.total_tokens(),
                &ended_at,
            );
            session.drift.extend(d);
        }
        if !session.drift.is_empty() {
            self.stats.drifted_sessions += 1;
        }

        let row = session.ledger_row(&self.cfg.host, &self.cfg.boot_id, ended_at, outcome);
        self.closed_files
            .extend(std::mem::take(&mut session.files).into_values());
        self.remember_closed(session.id);
        Some(row)
    }

    fn remember_closed(&mut self, id: String) {
        if self.cfg.closed_ids_max == 0 || !self.closed_ids.insert(id.clone()) {
            return;
        }
        self.closed_order.push_back(id);
        while self.closed_order.len() > self.cfg.closed_ids_max {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed_ids.remove(&old);
            }
        }
    }

    fn fresh_id(&self, root: ProcKey) -> String {
        for g in 0..MAX_GENERATION {
            let id = session_id_gen(&self.cfg.boot_id, root, g);
            if !self.closed_ids.contains(&id) && !self.sessions.contains_key(&id) {
                if g > 0 {
                    tracing::warn!(
                        root_pid = root.tgid,
                        generation = g,
                        "session id already used in this boot; using a new generation"
                    );
                }
                return id;
            }
        }
        session_id_gen(&self.cfg.boot_id, root, MAX_GENERATION)
    }
}

impl AgentStats {
    fn new(comm: String, depth: u32, parent: Option<ProcKey>) -> Self {
        Self {
            comm,
            depth,
            parent,
            usage: Usage::default(),
            cost_usd: 0.0,
            unpriced: 0,
            calls: 0,
            in_flight: BTreeMap::new(),
        }
    }
}
