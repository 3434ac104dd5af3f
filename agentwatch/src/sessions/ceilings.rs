//! What the policy stage asks of sessions: where a call would be charged before it is made,
//! a session's totals, and the record of ceiling hits and stopped attempts.
use super::{AgentRef, CallRecord, Outcome, Sessions};
use crate::accounting::{Usage, UsageSource};
use crate::procs::{ProcKey, ProcTree};
use crate::providers::LlmRequest;

/// Where a call by a process would be charged, computed without charging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prospect {
    /// An agent already, or a sub-agent-to-be of an open session (at `depth`).
    Session(AgentRef),
    /// No agent above it: its first call would start a new session.
    NewRoot,
}

/// A session's spend so far (completed calls).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTotals {
    pub session_id: String,
    pub root: ProcKey,
    pub usage: Usage,
    pub cost_usd: f64,
    pub calls: u64,
    /// Tokens and spend with estimated calls at their upper bounds (what ceilings compare).
    pub tokens_bound: u64,
    pub spend_bound_usd: f64,
    /// How the run has departed from its recurring job's baseline so far (`[drift]`).
    pub drift: Vec<String>,
}

impl Sessions {
    pub fn prospect(&self, tree: &ProcTree, key: ProcKey) -> Prospect {
        if let Some(a) = self.agents.get(&key).or_else(|| self.departed.get(&key))
            && self.sessions.contains_key(&a.session_id)
        {
            return Prospect::Session(a.clone());
        }
        tree.ancestors(key)
            .find_map(|p| {
                let a = self.agents.get(&p.key)?;
                self.sessions.contains_key(&a.session_id).then(|| AgentRef {
                    session_id: a.session_id.clone(),
                    depth: a.depth + 1,
                })
            })
            .map_or(Prospect::NewRoot, Prospect::Session)
    }

    pub fn totals(&self, session_id: &str) -> Option<SessionTotals> {
        let s = self.sessions.get(session_id)?;
        Some(SessionTotals {
            session_id: s.id.clone(),
            root: s.root,
            usage: s.usage,
            cost_usd: s.cost_usd,
            calls: s.call_count,
            tokens_bound: s
                .usage
                .total_tokens()
                .saturating_add(s.estimate_margin_tokens),
            spend_bound_usd: s.cost_usd + s.estimate_margin_usd + s.unpriced_charge_usd,
            drift: s.drift.clone(),
        })
    }

    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    pub fn clock_rfc3339(&self, boot_ns: u64) -> String {
        self.cfg.clock.rfc3339(boot_ns)
    }

    /// A `[[session_roots]]` match: the process is a session root from its exec, before any
    /// call (an agent by rule).
    pub fn start_root(&mut self, tree: &ProcTree, key: ProcKey, ts_ns: u64) -> AgentRef {
        let marker = LlmRequest::unidentified("", ts_ns);
        self.agent_for(tree, key, &marker)
    }

    pub fn root_of(&self, session_id: &str) -> Option<ProcKey> {
        self.sessions.get(session_id).map(|s| s.root)
    }

    /// The open session whose id is `prefix` or starts with it (as git and docker take ids):
    /// an unknown or ambiguous prefix is an error that says what to do.
    pub fn resolve_open(&self, prefix: &str) -> Result<String, String> {
        if self.sessions.contains_key(prefix) {
            return Ok(prefix.to_string());
        }
        let matching: Vec<&String> = if prefix.is_empty() {
            Vec::new()
        } else {
            self.sessions
                .keys()
                .filter(|id| id.starts_with(prefix))
                .collect()
        };
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!(
                "no open session {prefix:?}: `agentwatch sessions` lists the open ones, `agentwatch ledger` the closed"
            )),
            many => Err(format!(
                "{prefix:?} is the prefix of {} open sessions: give more of the id",
                many.len()
            )),
        }
    }

    pub fn open_ids(&self) -> Vec<String> {
        self.sessions.keys().cloned().collect()
    }

    /// Counts a ceiling hit; `outcome` (paused, killed, blocked) marks the session stopped.
    pub fn record_ceiling_hit(
        &mut self,
        session_id: &str,
        outcome: Option<Outcome>,
        reason: String,
    ) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.ceiling_hits += 1;
            if let Some(o) = outcome {
                s.outcome = o;
            }
            s.reason = Some(reason);
        }
    }

    /// Sets the outcome without a hit (an approved session is running again; a kill by hand).
    pub fn set_outcome(&mut self, session_id: &str, outcome: Outcome, reason: Option<String>) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.outcome = outcome;
            if reason.is_some() {
                s.reason = reason;
            }
        }
    }

    /// Restores hits and outcome persisted by the policy across a restart.
    pub fn restore_ceiling_state(
        &mut self,
        session_id: &str,
        hits: u64,
        outcome: Outcome,
        reason: Option<String>,
    ) {
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.ceiling_hits = hits;
            s.outcome = outcome;
            s.reason = reason;
        }
    }

    /// The `calls.jsonl` row of a call attempt stopped before its first byte left: charged
    /// to the session it would have belonged to (starting one if it would have started one),
    /// with no tokens, and not counted as a call.
    pub fn blocked_attempt(
        &mut self,
        tree: &ProcTree,
        key: ProcKey,
        req: &LlmRequest,
        ts_ns: u64,
    ) -> CallRecord {
        let aref = match self.prospect(tree, key) {
            Prospect::Session(a) => a,
            Prospect::NewRoot => self.agent_for(tree, key, req),
        };
        let clock = self.cfg.clock;
        let host = self.cfg.host.clone();
        let comm = tree.get(key).map(|p| p.comm.clone()).unwrap_or_default();
        let session = self.sessions.get(&aref.session_id);
        let root = session.map(|s| s.root).unwrap_or(key);
        let parent = session
            .and_then(|s| s.agents.get(&key))
            .and_then(|a| a.parent);
        let at = clock.rfc3339(ts_ns);
        let usage = Usage::default();
        CallRecord {
            session_id: aref.session_id,
            pid: key.tgid,
            comm,
            depth: aref.depth,
            provider: req.provider.clone(),
            api: req.api.clone(),
            model: req.model.clone(),
            streaming: req.streaming,
            http_version: req.http_version.clone(),
            status: None,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            cost_usd: Some(0.0),
            cache_write_1h_tokens: 0,
            priced_as: None,
            unpriced_charge_usd: None,
            budget: None,
            started_at: at.clone(),
            ended_at: at,
            total_tokens: usage.total_tokens(),
            usage_source: UsageSource::Missing,
            complete: false,
            response_model: None,
            response_id: None,
            server_address: req.server_address.clone(),
            host,
            pid_start_ticks: key.start_ticks,
            root_pid: root.tgid,
            root_start_ticks: root.start_ticks,
            parent_pid: parent.map(|p| p.tgid),
            parent_start_ticks: parent.map(|p| p.start_ticks),
            call_seq: 0,
            request_bytes: 0,
            response_bytes: 0,
            session_started_at: None,
            root_comm: None,
            root_exe: None,
            root_cmdline: None,
            blocked: true,
            estimate: None,
            started_ns: None,
            ns_pid: None,
            workload: Default::default(),
        }
    }
}
