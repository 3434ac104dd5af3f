//! Ceilings: stop a runaway agent tree before its next call leaves the host.
//!
//! # Design (why there is no race)
//!
//! The rule is pre-commit: a call may start only if its session (and the host) is below every
//! ceiling when it starts; the call that crosses completes; no byte of a later call leaves.
//!
//! * Every process of a session with ceilings is in the kernel's `GATE` map (children inherit
//!   the entry at fork, in the kernel, so a sub-agent is gated from its first instruction).
//! * An `ARMED` process that enters `SSL_write` is stopped right there by the probe
//!   (`bpf_send_signal(SIGSTOP)`, delivered before the library runs) and a `HOLD` record
//!   with the first bytes of the buffer goes into the ring buffer.
//! * The ring buffer is totally ordered, and the hold is emitted after the process's earlier
//!   `SSL_read` records. So when the pipeline reaches the hold, it has already accounted
//!   every response that process read — including the one that may have just crossed a
//!   ceiling, however few microseconds ago it arrived. The decision is made on complete data.
//! * Granted: the state becomes `GRANTED` (the rest of the request is written freely) and the
//!   process is continued; its next `SSL_read` re-arms it in the kernel, so the next request
//!   is held again. Denied: the session's action runs (kill, pause, block) and a
//!   `blocked: true` attempt is written.
//! * After any call completes, a session that reached a ceiling is stopped at once, without
//!   waiting for its next write (the hold above is the guarantee; this is the fast path).
//!
//! Residual window, stated honestly: a root agent enters the gate when the pipeline has seen
//! its first request; its second call escapes only if the daemon lags by more than the first
//! call's whole round trip. Calls a process makes in parallel on several connections are
//! each checked when they start, against what had completed by then (that is the rule).
pub mod config;
pub mod enforce;
pub mod enforcer;
pub mod gate;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use config::{Action, CeilingsConfig, Limits, OnRestart, SessionRootRule};
pub use enforcer::{Enforcer, HeldSocket, Hold, Rows, World};
pub use gate::Gate;

use crate::procs::{ProcInfo, ProcKey};
use crate::sessions::Outcome;
use crate::sessions::ceilings::SessionTotals;
use crate::workloads::PodIndex;

const MINUTE_NS: u64 = 60_000_000_000;
const DAY_NS: u64 = 24 * 3600 * 1_000_000_000;
const STATE_FILE: &str = "policy-state.json";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid regex in [[session_roots]] #{index} ({field} = {pattern:?}): {source}")]
    Regex {
        index: usize,
        field: &'static str,
        pattern: String,
        source: regex::Error,
    },
    #[error(
        "[[session_roots]] #{index}: budget_usd_per_day needs a `name` (the shared budget's name in rows and status)"
    )]
    BudgetWithoutName { index: usize },
    #[error(
        "[[session_roots]] #{index} ({name}): cluster = true needs [sinks.clickhouse] (the cluster's spend is read there)"
    )]
    ClusterWithoutClickHouse { index: usize, name: String },
    #[error("failed to write the policy state {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A ceiling a call ran into.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub ceiling: &'static str,
    pub limit: f64,
    pub value: f64,
    pub action: Action,
    /// What the ceiling's name and numbers do not say (a drift: what departed).
    pub detail: Option<String>,
}

impl Hit {
    pub fn reason(&self) -> String {
        if let Some(d) = &self.detail {
            return format!("{}: {d} ({})", self.ceiling, self.action.name());
        }
        format!(
            "{} reached: {} of {} ({})",
            self.ceiling,
            trim(self.value),
            trim(self.limit),
            self.action.name()
        )
    }
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.6}")
    }
}

/// What the policy keeps per open session (persisted across restarts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionPolicy {
    pub limits: Limits,
    pub raise_usd: f64,
    pub raise_tokens: u64,
    pub raise_calls: u64,
    pub hits: u64,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// LLM calls started (requests written), for `session_calls`.
    pub calls_started: u64,
    /// Processes this daemon stopped for `pause`.
    pub paused: BTreeSet<ProcKey>,
    /// `server_address` of its calls: where `block` cuts and refuses connections.
    pub endpoints: BTreeSet<String>,
    /// Drift entries of the session already acted on (`[drift] action`): only later ones
    /// stop it again, so an approved session goes on until it departs anew.
    #[serde(default)]
    pub drift_acted: usize,
    /// Ceilings whose `warn_at` was notified.
    #[serde(default)]
    pub warned: BTreeSet<String>,
    /// The shared budget (`[[session_roots]]` `name` with `budget_usd_per_day`) its calls
    /// draw from.
    #[serde(default)]
    pub budget: Option<String>,
    /// The name of the `[[session_roots]]` rule its root matched, when it has one: the
    /// session's job for drift (runs of one rule are runs of one job).
    #[serde(default)]
    pub rule: Option<String>,
    /// When it was paused (boot-clock ns), and last notified so, for `pause_timeout_secs`
    /// and `renotify_secs`.
    #[serde(default)]
    pub paused_at_ns: Option<u64>,
    #[serde(default)]
    pub paused_notified_ns: Option<u64>,
    #[serde(skip)]
    recent_starts: VecDeque<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyStats {
    pub holds: u64,
    pub holds_granted: u64,
    pub holds_not_llm: u64,
    pub holds_denied: u64,
    /// Holds of write syscalls on metered sockets (TLS no hook covers), and those whose
    /// bytes could not be held back (the socket's connect was not seen by the hooks).
    pub socket_holds: u64,
    pub socket_holds_unprotected: u64,
    pub ceiling_hits: u64,
    pub processes_killed: u64,
    pub processes_paused: u64,
    pub connections_cut: u64,
    pub state_save_errors: u64,
    /// Gated processes found stopped though granted (continued by the watchdog).
    pub stuck_continued: u64,
    /// Holds whose record was lost (a full ring buffer): found by the watchdog and decided
    /// as a request of an unknown API.
    pub holds_unannounced: u64,
    pub host_usd_last_24h: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PersistedState {
    sessions: HashMap<String, SessionPolicy>,
}

struct CompiledRule {
    exe: Option<String>,
    comm: Option<Regex>,
    cmdline: Option<Regex>,
    cgroup: Option<Regex>,
    /// (key, value): value None means "has the label".
    pod_label: Option<(String, Option<String>)>,
    pod_namespace: Option<Regex>,
    limits: Limits,
    /// (name, USD per rolling day, cluster-wide): the pot all its sessions share.
    budget: Option<(String, f64, bool)>,
    name: Option<String>,
}

/// What a session takes from the rule its root matched.
#[derive(Debug, Clone)]
pub struct RuleMatch {
    pub limits: Limits,
    pub budget: Option<String>,
    pub name: Option<String>,
}

/// A shared budget's rolling day on this node (`budget_usd_per_day`), plus, for a cluster
/// budget, the other nodes' spend as last read from ClickHouse.
#[derive(Debug, Default)]
struct Pot {
    window: VecDeque<(u64, f64)>,
    sum: f64,
    limit: f64,
    warned: bool,
}

pub struct Policy {
    ceilings: CeilingsConfig,
    rules: Vec<CompiledRule>,
    pub sessions: HashMap<String, SessionPolicy>,
    host_window: VecDeque<(u64, f64)>,
    host_sum: f64,
    /// The host's day reached `warn_at` of its ceiling (notified once until it drops below).
    host_warned: bool,
    /// Shared budgets by name.
    pots: HashMap<String, Pot>,
    /// Other nodes' spend of cluster budgets, as the ClickHouse reader last saw it.
    pub cluster: Arc<ClusterSpend>,
    pub stats: PolicyStats,
    state_path: PathBuf,
    /// Pod labels for `match_pod_label`.
    pods: Arc<PodIndex>,
    /// `[drift] action`: what a run that departs from its job's baseline gets.
    drift: Action,
}

/// The `[[session_roots]]` rules' patterns compile (what `run` would refuse).
pub fn check_rules(rules: &[SessionRootRule]) -> Result<(), PolicyError> {
    compile(rules).map(|_| ())
}

fn compile(rules: &[SessionRootRule]) -> Result<Vec<CompiledRule>, PolicyError> {
    let re = |index, field, pattern: &Option<String>| {
        pattern
            .as_ref()
            .map(|p| {
                Regex::new(p).map_err(|source| PolicyError::Regex {
                    index,
                    field,
                    pattern: p.clone(),
                    source,
                })
            })
            .transpose()
    };
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(CompiledRule {
                exe: r.match_exe.clone(),
                comm: re(i, "match_comm", &r.match_comm)?,
                cmdline: re(i, "match_cmdline", &r.match_cmdline)?,
                cgroup: re(i, "match_cgroup", &r.match_cgroup)?,
                pod_label: r.match_pod_label.as_ref().map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                    None => (l.trim().to_string(), None),
                }),
                pod_namespace: re(i, "match_pod_namespace", &r.match_pod_namespace)?,
                name: r.name.clone(),
                limits: r.limits(),
                budget: match (r.budget_usd_per_day, &r.name) {
                    (Some(usd), Some(name)) => Some((name.clone(), usd, r.cluster)),
                    (Some(_), None) => return Err(PolicyError::BudgetWithoutName { index: i }),
                    (None, _) => None,
                },
            })
        })
        .collect()
}

fn read_cgroup(tgid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).unwrap_or_default()
}

impl CompiledRule {
    fn matches(&self, info: &ProcInfo, pods: &PodIndex) -> bool {
        if let Some(exe) = &self.exe {
            let path = info.exe.as_deref().unwrap_or_default();
            let ok = if exe.contains('/') {
                path == exe
            } else {
                path.rsplit('/').next() == Some(exe.as_str()) || info.comm == *exe
            };
            if !ok {
                return false;
            }
        }
        if let Some(re) = &self.comm
            && !re.is_match(&info.comm)
        {
            return false;
        }
        if let Some(re) = &self.cmdline
            && !re.is_match(&info.cmdline.join(" "))
        {
            return false;
        }
        if let Some(re) = &self.cgroup
            && !re.is_match(&read_cgroup(info.key.tgid))
        {
            return false;
        }
        if let Some(re) = &self.pod_namespace {
            let ns = crate::workloads::cgroup::read(info.key.tgid)
                .and_then(|path| crate::workloads::pod_meta(&path, pods))
                .map(|m| m.namespace);
            if !ns.is_some_and(|ns| re.is_match(&ns)) {
                return false;
            }
        }
        if let Some((key, value)) = &self.pod_label {
            let labels = crate::workloads::cgroup::read(info.key.tgid)
                .and_then(|path| crate::workloads::pod_labels(&path, pods));
            let ok = labels
                .as_ref()
                .and_then(|l| l.get(key))
                .is_some_and(|v| value.as_ref().is_none_or(|want| want == v));
            if !ok {
                return false;
            }
        }
        self.exe.is_some()
            || self.comm.is_some()
            || self.cmdline.is_some()
            || self.cgroup.is_some()
            || self.pod_label.is_some()
            || self.pod_namespace.is_some()
    }
}

impl Policy {
    /// Builds the policy and loads what a previous daemon persisted in `data_dir`.
    pub fn new(
        ceilings: CeilingsConfig,
        rules: &[SessionRootRule],
        data_dir: &Path,
    ) -> Result<Policy, PolicyError> {
        let state_path = data_dir.join(STATE_FILE);
        let persisted: PersistedState = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Policy {
            ceilings,
            rules: compile(rules)?,
            sessions: persisted.sessions,
            host_window: VecDeque::new(),
            host_sum: 0.0,
            host_warned: false,
            pots: HashMap::new(),
            cluster: Arc::new(ClusterSpend::default()),
            stats: PolicyStats::default(),
            state_path,
            pods: Arc::new(PodIndex::default()),
            drift: Action::Observe,
        }
        .with_pots())
    }

    fn with_pots(mut self) -> Self {
        self.sync_pots();
        self
    }

    /// New limits (SIGHUP / `agentwatch reload`): open sessions take the new defaults; what
    /// `approve` raised stays raised.
    pub fn reload(
        &mut self,
        ceilings: CeilingsConfig,
        rules: &[SessionRootRule],
    ) -> Result<(), PolicyError> {
        let compiled = compile(rules)?;
        self.ceilings = ceilings;
        self.rules = compiled;
        self.sync_pots();
        let defaults = self.ceilings.session();
        for s in self.sessions.values_mut() {
            s.limits = defaults.clone();
        }
        Ok(())
    }

    /// Pod metadata for `match_pod_label`.
    pub fn with_pods(mut self, pods: Arc<PodIndex>) -> Self {
        self.pods = pods;
        self
    }

    /// What a drifting run gets (`[drift] action`; `observe` stops nothing).
    pub fn with_drift(mut self, action: Action) -> Self {
        self.set_drift(action);
        self
    }

    pub fn set_drift(&mut self, action: Action) {
        // Drift pauses or kills; `block` is not one of its actions.
        self.drift = match action {
            Action::Block => Action::Pause,
            a => a,
        };
    }

    /// Any ceiling configured at all (otherwise nothing is gated: zero cost).
    pub fn enabled(&self) -> bool {
        self.unpriced_blocks()
            || self.drift != Action::Observe
            || self.ceilings.session().any()
            || self.ceilings.host_usd_per_day.is_some()
            || !self.rules.is_empty()
    }

    /// `warn_at` crossings of this call: (ceiling, limit, value) of each ceiling the session,
    /// or the host's day, reached `warn_at` of (below the ceiling itself), once each.
    pub fn warnings(
        &mut self,
        totals: &SessionTotals,
        now_ns: u64,
    ) -> Vec<(&'static str, f64, f64)> {
        let Some(frac) = self.ceilings.warn_at.filter(|f| *f > 0.0 && *f < 1.0) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let _ = self.host_hit(now_ns);
        if let Some(limit) = self.ceilings.host_usd_per_day {
            let spent = self.host_sum;
            if spent >= frac * limit && spent < limit && !self.host_warned {
                self.host_warned = true;
                out.push(("host_usd_per_day", limit, spent));
            } else if spent < frac * limit {
                self.host_warned = false;
            }
        }
        if let Some(name) = self.budget_of(&totals.session_id)
            && let Some((spent, limit)) = self.pot_spend(&name, now_ns)
            && let Some(p) = self.pots.get_mut(&name)
        {
            if spent >= frac * limit && spent < limit && !p.warned {
                p.warned = true;
                out.push(("budget_usd_per_day", limit, spent));
            } else if spent < frac * limit {
                p.warned = false;
            }
        }
        let s = self.session(&totals.session_id, None);
        let l = &s.limits;
        let candidates = [
            (
                "session_usd",
                l.session_usd.map(|m| m + s.raise_usd),
                totals.spend_bound_usd,
            ),
            (
                "session_tokens",
                l.session_tokens.map(|m| (m + s.raise_tokens) as f64),
                totals.tokens_bound as f64,
            ),
            (
                "session_calls",
                l.session_calls.map(|m| (m + s.raise_calls) as f64),
                totals.calls as f64,
            ),
        ];
        for (name, limit, value) in candidates {
            if let Some(limit) = limit
                && value >= frac * limit
                && value < limit
                && s.warned.insert(name.to_string())
            {
                out.push((name, limit, value));
            }
        }
        out
    }

    /// How near a session is to its own ceilings: the largest share of its `session_usd`,
    /// `session_tokens` and `session_calls` (with what `approve` raised) it has used, and
    /// that ceiling's name; `None` when it has none of the three.
    pub fn ceiling_share(&self, totals: &SessionTotals) -> Option<(&'static str, f64)> {
        let defaults;
        let (limits, raised, started) = match self.sessions.get(&totals.session_id) {
            Some(s) => (
                &s.limits,
                (s.raise_usd, s.raise_tokens, s.raise_calls),
                s.calls_started,
            ),
            None => {
                defaults = self.ceilings.session();
                (&defaults, (0.0, 0, 0), 0)
            }
        };
        let candidates = [
            (
                "session_usd",
                limits.session_usd.map(|m| m + raised.0),
                totals.spend_bound_usd,
            ),
            (
                "session_tokens",
                limits.session_tokens.map(|m| (m + raised.1) as f64),
                totals.tokens_bound as f64,
            ),
            (
                "session_calls",
                limits.session_calls.map(|m| (m + raised.2) as f64),
                totals.calls.max(started) as f64,
            ),
        ];
        candidates
            .into_iter()
            .filter_map(|(name, limit, used)| {
                let limit = limit?;
                Some((name, if limit > 0.0 { used / limit } else { 1.0 }))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// `pause_timeout_secs` and `renotify_secs`: the paused sessions whose wait ran out (to
    /// kill), and those to notify again, as of `now_ns`.
    pub fn paused_due(&mut self, now_ns: u64) -> (Vec<String>, Vec<String>) {
        let timeout = self
            .ceilings
            .pause_timeout_secs
            .map(|s| s.saturating_mul(1_000_000_000));
        let renotify = match self.ceilings.renotify_secs() {
            0 => None,
            s => Some(s.saturating_mul(1_000_000_000)),
        };
        let (mut expired, mut again) = (Vec::new(), Vec::new());
        for (id, s) in &mut self.sessions {
            if s.outcome != Outcome::Paused {
                s.paused_at_ns = None;
                s.paused_notified_ns = None;
                continue;
            }
            let at = *s.paused_at_ns.get_or_insert(now_ns);
            if timeout.is_some_and(|t| now_ns.saturating_sub(at) >= t) {
                expired.push(id.clone());
                continue;
            }
            let last = *s.paused_notified_ns.get_or_insert(at);
            if renotify.is_some_and(|r| now_ns.saturating_sub(last) >= r) {
                s.paused_notified_ns = Some(now_ns);
                again.push(id.clone());
            }
        }
        (expired, again)
    }

    /// `pause_timeout_secs`, for the notice of a session killed after waiting paused.
    pub fn pause_timeout_secs(&self) -> Option<u64> {
        self.ceilings.pause_timeout_secs
    }

    /// `[ceilings] unpriced = "block"`.
    pub fn unpriced_blocks(&self) -> bool {
        self.ceilings.unpriced == crate::accounting::pricing::Unpriced::Block
    }

    pub fn host_limit(&self) -> Option<f64> {
        self.ceilings.host_usd_per_day
    }

    pub fn on_restart(&self) -> OnRestart {
        self.ceilings.on_restart
    }

    /// The `[[session_roots]]` rule that makes `info` a session root at exec, if any.
    /// The first rule `info` matches: its limits, shared budget and name.
    pub fn root_rule(&self, info: &ProcInfo) -> Option<RuleMatch> {
        self.rules
            .iter()
            .find(|r| r.matches(info, &self.pods))
            .map(|r| RuleMatch {
                limits: self.ceilings.session().overlaid(&r.limits),
                budget: r.budget.as_ref().map(|(name, _, _)| name.clone()),
                name: r.name.clone(),
            })
    }

    /// The name of the rule a session's root matched, if it has one.
    pub fn rule_of(&self, session_id: &str) -> Option<String> {
        self.sessions.get(session_id).and_then(|s| s.rule.clone())
    }

    /// One pot per rule with a shared budget (kept across reloads: its spend stays).
    fn sync_pots(&mut self) {
        let budgets: Vec<(String, f64)> = self
            .rules
            .iter()
            .filter_map(|r| r.budget.as_ref().map(|(n, usd, _)| (n.clone(), *usd)))
            .collect();
        self.pots.retain(|n, _| budgets.iter().any(|(b, _)| b == n));
        for (name, usd) in budgets {
            self.pots.entry(name).or_default().limit = usd;
        }
    }

    /// Names of the cluster-wide budgets (read from ClickHouse).
    pub fn cluster_budgets(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter_map(|r| r.budget.as_ref().filter(|b| b.2).map(|b| b.0.clone()))
            .collect()
    }

    /// The shared budget a session's calls draw from.
    pub fn budget_of(&self, session_id: &str) -> Option<String> {
        self.sessions.get(session_id).and_then(|s| s.budget.clone())
    }

    /// A call of shared budget `name` cost `cost` (ended at `at_ns`).
    pub fn note_budget_cost(&mut self, name: &str, at_ns: u64, cost: f64) {
        if let Some(p) = self.pots.get_mut(name)
            && cost > 0.0
        {
            p.window.push_back((at_ns, cost));
            p.sum += cost;
        }
    }

    /// The shared budget's spend over the last day: this node's, plus the other nodes' for a
    /// cluster budget. `None` when `name` is no budget.
    fn pot_spend(&mut self, name: &str, now_ns: u64) -> Option<(f64, f64)> {
        let cluster = self.cluster_budgets().iter().any(|b| b == name);
        let p = self.pots.get_mut(name)?;
        while let Some((t, c)) = p.window.front().copied() {
            if now_ns.saturating_sub(t) < DAY_NS {
                break;
            }
            p.window.pop_front();
            p.sum -= c;
        }
        let others = if cluster {
            self.cluster.others_usd(name)
        } else {
            0.0
        };
        Some((p.sum.max(0.0) + others, p.limit))
    }

    /// The session's shared budget is spent.
    fn budget_hit(&mut self, session_id: &str, action: Action, now_ns: u64) -> Option<Hit> {
        let name = self.budget_of(session_id)?;
        let (spent, limit) = self.pot_spend(&name, now_ns)?;
        (spent >= limit).then(|| Hit {
            ceiling: "budget_usd_per_day",
            limit,
            value: spent,
            action,
            detail: Some(format!("shared budget {name}")),
        })
    }

    /// Rebuilds the shared budgets' days after a restart (by Unix minute, from the calls
    /// files: each call row names its budget), like [`Policy::seed_host_window`].
    pub fn seed_budgets(
        &mut self,
        days: &std::collections::BTreeMap<String, std::collections::BTreeMap<i64, f64>>,
        clock: &crate::sessions::WallClock,
    ) {
        let now_boot = crate::sessions::clock::boot_now_ns();
        let now_unix = clock.unix_ns(now_boot);
        for (name, day) in days {
            for (&minute, &cost) in day {
                let at = i128::from(minute) * 60_000_000_000;
                let Ok(age) = u64::try_from(now_unix - at) else {
                    continue;
                };
                if age < DAY_NS {
                    self.note_budget_cost(name, now_boot.saturating_sub(age), cost);
                }
            }
        }
    }

    /// `status.ceilings.budgets`: each shared budget's spend and limit.
    pub fn budgets_status(&mut self, now_ns: u64) -> Vec<BudgetStatus> {
        let mut names: Vec<String> = self.pots.keys().cloned().collect();
        names.sort();
        let cluster = self.cluster_budgets();
        names
            .into_iter()
            .filter_map(|name| {
                let (spent, limit) = self.pot_spend(&name, now_ns)?;
                let is_cluster = cluster.contains(&name);
                let read = is_cluster.then(|| self.cluster.read_of(&name)).flatten();
                Some(BudgetStatus {
                    local_usd_last_24h: spent - read.as_ref().map_or(0.0, |r| r.others_usd),
                    usd_last_24h: spent,
                    usd_per_day: limit,
                    cluster: is_cluster,
                    others: read,
                    name,
                })
            })
            .collect()
    }

    /// The policy entry of a session, created with its limits on first use.
    pub fn session(&mut self, id: &str, root: Option<&ProcInfo>) -> &mut SessionPolicy {
        if !self.sessions.contains_key(id) {
            let m = root
                .and_then(|info| self.root_rule(info))
                .unwrap_or_else(|| RuleMatch {
                    limits: self.ceilings.session(),
                    budget: None,
                    name: None,
                });
            self.sessions.insert(
                id.to_string(),
                SessionPolicy {
                    limits: m.limits,
                    budget: m.budget,
                    rule: m.name,
                    ..Default::default()
                },
            );
        }
        self.sessions.get_mut(id).expect("inserted above")
    }

    pub fn set_rule(&mut self, id: &str, m: RuleMatch) {
        let s = self.session(id, None);
        s.limits = m.limits;
        s.budget = m.budget;
        s.rule = m.name;
    }

    /// May a new call of this session, by an agent at `depth`, start now?
    pub fn check_start(&mut self, totals: &SessionTotals, depth: u32, now_ns: u64) -> Option<Hit> {
        let host = self.host_hit(now_ns);
        let drift_action = self.drift;
        let s = self.session(&totals.session_id, None);
        let action = s.limits.action.unwrap_or_default();
        while s
            .recent_starts
            .front()
            .is_some_and(|t| now_ns.saturating_sub(*t) >= MINUTE_NS)
        {
            s.recent_starts.pop_front();
        }
        let hit = |ceiling, limit: f64, value: f64| Hit {
            ceiling,
            limit,
            value,
            action,
            detail: None,
        };
        if let Some(h) = spend_hit(s, totals, action) {
            return Some(h);
        }
        if s.budget.is_some() {
            let id = totals.session_id.clone();
            if let Some(h) = self.budget_hit(&id, action, now_ns) {
                return Some(h);
            }
        }
        let s = self.session(&totals.session_id, None);
        if let Some(max) = s.limits.session_calls
            && s.calls_started >= max + s.raise_calls
        {
            return Some(hit(
                "session_calls",
                (max + s.raise_calls) as f64,
                s.calls_started as f64,
            ));
        }
        if let Some(max) = s.limits.session_calls_per_minute
            && s.recent_starts.len() as u64 >= max
        {
            return Some(hit(
                "session_calls_per_minute",
                max as f64,
                s.recent_starts.len() as f64,
            ));
        }
        if let Some(max) = s.limits.max_depth
            && depth > max
        {
            return Some(hit("max_depth", max as f64, depth as f64));
        }
        if drift_action != Action::Observe && totals.drift.len() > s.drift_acted {
            let new = totals.drift[s.drift_acted..].join(", ");
            s.drift_acted = totals.drift.len();
            return Some(Hit {
                ceiling: "drift",
                limit: 0.0,
                value: totals.drift.len() as f64,
                action: drift_action,
                detail: Some(new),
            });
        }
        host.map(|mut h| {
            h.action = action;
            h
        })
    }

    /// After a call completed: has the session now reached a spend or call ceiling?
    pub fn check_crossed(&mut self, totals: &SessionTotals, now_ns: u64) -> Option<Hit> {
        let host = self.host_hit(now_ns);
        let s = self.session(&totals.session_id, None);
        let action = s.limits.action.unwrap_or_default();
        if let Some(h) = spend_hit(s, totals, action) {
            return Some(h);
        }
        if s.budget.is_some() {
            let id = totals.session_id.clone();
            if let Some(h) = self.budget_hit(&id, action, now_ns) {
                return Some(h);
            }
        }
        let s = self.session(&totals.session_id, None);
        if let Some(max) = s.limits.session_calls
            && totals.calls >= max + s.raise_calls
        {
            return Some(Hit {
                ceiling: "session_calls",
                limit: (max + s.raise_calls) as f64,
                value: totals.calls as f64,
                action,
                detail: None,
            });
        }
        host.map(|mut h| {
            h.action = action;
            h
        })
    }

    /// A call of the session started (its request was written).
    pub fn note_started(&mut self, session_id: &str, now_ns: u64) {
        let s = self.session(session_id, None);
        s.calls_started += 1;
        s.recent_starts.push_back(now_ns);
    }

    /// Spend of a finished call, for the host's rolling day.
    pub fn note_cost(&mut self, at_ns: u64, cost: f64) {
        if cost > 0.0 && cost.is_finite() {
            self.host_window.push_back((at_ns, cost));
            self.host_sum += cost;
        }
    }

    fn host_hit(&mut self, now_ns: u64) -> Option<Hit> {
        while let Some((t, c)) = self.host_window.front().copied() {
            if now_ns.saturating_sub(t) < DAY_NS {
                break;
            }
            self.host_window.pop_front();
            self.host_sum -= c;
        }
        self.stats.host_usd_last_24h = self.host_sum.max(0.0);
        let limit = self.ceilings.host_usd_per_day?;
        (self.host_sum >= limit).then(|| Hit {
            ceiling: "host_usd_per_day",
            limit,
            value: self.host_sum,
            action: self.ceilings.action.unwrap_or_default(),
            detail: None,
        })
    }

    /// Rebuilds the host's rolling day after a restart from the spend recovery found, by Unix
    /// minute (the checkpoint's and the files' since), so a restarted daemon does not forget
    /// spend it accounted. Each minute's spend leaves the window a day after that minute began.
    pub fn seed_host_window(
        &mut self,
        host_day: &std::collections::BTreeMap<i64, f64>,
        clock: &crate::sessions::WallClock,
    ) {
        if self.ceilings.host_usd_per_day.is_none() {
            return;
        }
        let now_boot = crate::sessions::clock::boot_now_ns();
        let now_unix = clock.unix_ns(now_boot);
        for (&minute, &cost) in host_day {
            let at = i128::from(minute) * 60_000_000_000;
            let Ok(age) = u64::try_from(now_unix - at) else {
                continue;
            };
            if age < DAY_NS && cost > 0.0 {
                self.note_cost(now_boot.saturating_sub(age), cost);
            }
        }
    }

    /// Is the host over its daily ceiling (every new session's first call is then held)?
    pub fn host_over(&mut self, now_ns: u64) -> bool {
        self.host_hit(now_ns).is_some()
    }

    /// `agentwatch approve`: raise the session's limits and let it run again.
    pub fn approve(&mut self, id: &str, usd: f64, tokens: u64, calls: u64) {
        let s = self.session(id, None);
        s.raise_usd += usd;
        s.raise_tokens += tokens;
        s.raise_calls += calls;
        s.outcome = Outcome::Completed;
        s.reason = Some("approved".into());
        s.paused.clear();
    }

    pub fn forget(&mut self, id: &str) {
        self.sessions.remove(id);
    }

    /// Writes the state a restarted daemon needs (atomic rename; no fsync: it only matters
    /// while the processes it names live, and they do not survive a machine crash).
    pub fn save(&mut self) {
        let state = PersistedState {
            sessions: self.sessions.clone(),
        };
        let tmp = self.state_path.with_extension("json.tmp");
        let result = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.state_path));
        if let Err(source) = result {
            self.stats.state_save_errors += 1;
            tracing::error!(
                "{}",
                PolicyError::Save {
                    path: self.state_path.clone(),
                    source
                }
            );
        }
    }
}

/// `status.ceilings.budgets[]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    pub name: String,
    pub usd_per_day: f64,
    /// This node's spend plus, for a cluster budget, the other nodes' as last read.
    pub usd_last_24h: f64,
    pub local_usd_last_24h: f64,
    pub cluster: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others: Option<ClusterRead>,
}

/// The other nodes' spend of one cluster budget, as last read from ClickHouse.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterRead {
    pub others_usd: f64,
    /// Unix seconds of the last successful read (0: none yet).
    pub read_at_unix: u64,
    pub reads: u64,
    pub read_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Other nodes' spend of the cluster budgets, written by the ClickHouse reader task and read
/// by the gate: when ClickHouse is unreachable the last read stays (plus this node's own
/// spend since, which the node counts itself).
#[derive(Debug, Default)]
pub struct ClusterSpend {
    reads: std::sync::Mutex<HashMap<String, ClusterRead>>,
}

impl ClusterSpend {
    pub fn others_usd(&self, name: &str) -> f64 {
        self.read_of(name).map_or(0.0, |r| r.others_usd)
    }

    pub fn read_of(&self, name: &str) -> Option<ClusterRead> {
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// A read of `name`: the other nodes' spend over the last day, or why it failed.
    pub fn record(&self, name: &str, result: Result<f64, String>, now_unix: u64) {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        let r = reads.entry(name.to_string()).or_default();
        match result {
            Ok(usd) => {
                r.others_usd = usd;
                r.read_at_unix = now_unix;
                r.reads += 1;
                r.last_error = None;
            }
            Err(e) => {
                r.read_errors += 1;
                r.last_error = Some(e);
            }
        }
    }
}

fn spend_hit(s: &SessionPolicy, totals: &SessionTotals, action: Action) -> Option<Hit> {
    if let Some(max) = s.limits.session_usd {
        let limit = max + s.raise_usd;
        if totals.spend_bound_usd >= limit {
            return Some(Hit {
                ceiling: "session_usd",
                limit,
                value: totals.spend_bound_usd,
                action,
                detail: None,
            });
        }
    }
    if let Some(max) = s.limits.session_tokens {
        let limit = max + s.raise_tokens;
        let used = totals.tokens_bound;
        if used >= limit {
            return Some(Hit {
                ceiling: "session_tokens",
                limit: limit as f64,
                value: used as f64,
                action,
                detail: None,
            });
        }
    }
    None
}

/// Resolves `server_address`es to the socket addresses `block` cuts.
pub fn endpoints(s: &SessionPolicy) -> HashSet<std::net::SocketAddr> {
    enforce::resolve(&s.endpoints.iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Usage;

    fn totals(id: &str, tokens: u64, cost: f64, calls: u64) -> SessionTotals {
        SessionTotals {
            session_id: id.into(),
            root: ProcKey {
                tgid: 1,
                start_ticks: 1,
            },
            usage: Usage {
                input_tokens: tokens,
                ..Default::default()
            },
            cost_usd: cost,
            calls,
            tokens_bound: tokens,
            spend_bound_usd: cost,
            drift: Vec::new(),
        }
    }

    #[test]
    fn drift_stops_a_session_once_per_departure() {
        let mut p = policy("");
        assert!(!p.enabled(), "observe (the default) gates nothing");
        let mut t = totals("s", 10, 0.0, 1);
        t.drift = vec!["new tool: curl".into()];
        assert_eq!(p.check_start(&t, 0, 1), None, "observed only");
        p.set_drift(Action::Pause);
        assert!(p.enabled());
        let hit = p.check_start(&t, 0, 2).expect("a drifted run is stopped");
        assert_eq!((hit.ceiling, hit.action), ("drift", Action::Pause));
        assert_eq!(hit.reason(), "drift: new tool: curl (pause)");
        // Approved: it goes on until it departs anew.
        assert_eq!(p.check_start(&t, 0, 3), None);
        t.drift.push("new host: 10.0.0.5:443".into());
        let hit = p
            .check_start(&t, 0, 4)
            .expect("a new departure stops it again");
        assert_eq!(hit.detail.as_deref(), Some("new host: 10.0.0.5:443"));
    }

    fn policy(toml_text: &str) -> Policy {
        let c: CeilingsConfig = toml::from_str(toml_text).unwrap();
        let dir = std::env::temp_dir().join(format!("aw-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Policy::new(c, &[], &dir).unwrap()
    }

    #[test]
    fn pre_commit_allows_below_and_stops_at_each_ceiling() {
        let mut p =
            policy("session_tokens = 1000\nsession_calls = 3\nmax_depth = 1\naction = 'kill'");
        assert_eq!(p.check_start(&totals("s", 999, 0.0, 0), 0, 0), None);
        let h = p.check_start(&totals("s", 1000, 0.0, 0), 0, 0).unwrap();
        assert_eq!((h.ceiling, h.action), ("session_tokens", Action::Kill));
        for _ in 0..3 {
            p.note_started("s", 0);
        }
        assert_eq!(
            p.check_start(&totals("s", 0, 0.0, 3), 0, 0)
                .unwrap()
                .ceiling,
            "session_calls"
        );
        let mut p = policy("max_depth = 1");
        assert_eq!(p.check_start(&totals("s", 0, 0.0, 0), 1, 0), None);
        let h = p.check_start(&totals("s", 0, 0.0, 0), 2, 0).unwrap();
        assert_eq!((h.ceiling, h.action), ("max_depth", Action::Pause));
    }

    #[test]
    fn rate_window_slides_and_approve_raises() {
        let mut p = policy("session_calls_per_minute = 2\nsession_usd = 1.0");
        p.note_started("s", 0);
        p.note_started("s", 1);
        let h = p.check_start(&totals("s", 0, 0.0, 2), 0, 2).unwrap();
        assert_eq!(h.ceiling, "session_calls_per_minute");
        assert_eq!(
            p.check_start(&totals("s", 0, 0.0, 2), 0, MINUTE_NS + 2),
            None
        );
        assert!(p.check_crossed(&totals("s", 0, 1.5, 2), 0).is_some());
        p.approve("s", 1.0, 0, 0);
        assert_eq!(p.check_crossed(&totals("s", 0, 1.5, 2), 0), None);
    }

    /// The share of its nearest own ceiling, with what `approve` raised; none without any.
    #[test]
    fn ceiling_share_is_the_nearest_ceiling() {
        assert_eq!(policy("").ceiling_share(&totals("s", 500, 0.5, 1)), None);
        let mut p = policy("session_usd = 2.0\nsession_tokens = 1000\nsession_calls = 10");
        assert_eq!(
            p.ceiling_share(&totals("s", 500, 0.5, 1)),
            Some(("session_tokens", 0.5))
        );
        assert_eq!(
            p.ceiling_share(&totals("s", 100, 1.5, 1)),
            Some(("session_usd", 0.75))
        );
        // Calls started count before they end.
        for _ in 0..8 {
            p.note_started("s", 0);
        }
        assert_eq!(
            p.ceiling_share(&totals("s", 100, 0.5, 2)),
            Some(("session_calls", 0.8))
        );
        p.approve("s", 2.0, 0, 30);
        assert_eq!(
            p.ceiling_share(&totals("s", 100, 1.5, 2)),
            Some(("session_usd", 0.375))
        );
    }

    #[test]
    fn host_day_is_rolling() {
        let mut p = policy("host_usd_per_day = 1.0");
        p.note_cost(0, 0.6);
        assert!(!p.host_over(1));
        p.note_cost(10, 0.5);
        assert!(p.host_over(11));
        assert_eq!(
            p.check_start(&totals("s", 0, 0.0, 0), 0, 11)
                .unwrap()
                .ceiling,
            "host_usd_per_day"
        );
        assert!(!p.host_over(DAY_NS + 5), "the first spend left the window");
    }
}
