//! The policy stage's interface: the [`Policy`] (limits, per-session state, counters) and the
//! in-kernel [`Gate`] it drives, acting on the sessions and process tree the pipeline keeps.
//! The pipeline tells it what happened (a request written, a call accounted, a write held,
//! an exec, an exit) and writes the rows it hands back; deciding, stopping, approving and
//! restoring after a restart happen here. The design and why it has no race are in
//! `crate::policy`.
use std::collections::HashMap;

use agentwatch_ebpf::{GATE_ARMED, GATE_BLOCKED, GATE_GRANTED, GATE_HELD, GATE_KILL, GATE_PAUSED};

use super::gate::Gate;
use super::{
    Action, CeilingsConfig, Hit, OnRestart, Policy, PolicyError, PolicyStats, SessionRootRule,
    endpoints, enforce,
};
use crate::accounting::pricing::Pricing;
use crate::procs::{ProcKey, ProcTree};
use crate::providers::LlmRequest;
use crate::sessions::ceilings::Prospect;
use crate::sessions::{CallRecord, CeilingHit, Notice, Outcome, Sessions, num, short};

/// How long a killed or blocked process's held sockets stay held after it exited.
const HELD_SOCKET_GRACE_NS: u64 = 60_000_000_000;

/// Where the enforcer's rows go (the pipeline's sink).
pub trait Rows {
    /// A call attempt stopped before its first byte left (`blocked: true`).
    fn call(&mut self, row: &CallRecord);
    fn ceiling_hit(&mut self, row: &CeilingHit);
    /// A notification that is not a ceiling hit (a warning, a re-notice, a pause timeout).
    fn notice(&mut self, _row: &crate::sessions::Notice) {}
}

/// What the enforcer acts on: the process tree and the sessions (the pipeline's), and where
/// its rows go.
pub struct World<'a, R: Rows> {
    pub tree: &'a ProcTree,
    /// Prices: with `[ceilings] unpriced = "block"`, a request of an unpriced model is stopped.
    pub pricing: &'a Pricing,
    pub sessions: &'a mut Sessions,
    pub rows: R,
}

/// A process the kernel stopped at a write, in gate state `state`, at `ts_ns`.
#[derive(Debug, Clone, Copy)]
pub struct Hold {
    pub tgid: u32,
    pub key: ProcKey,
    pub state: u32,
    pub ts_ns: u64,
}

/// A metered socket whose queued bytes the kernel holds (`HELD_SOCKS`).
#[derive(Debug, Clone, Copy)]
pub struct HeldSocket {
    fd: u64,
    cookie: u64,
    /// Its `SO_LINGER` before the hold made it abort on close, to restore on a grant.
    linger: Option<libc::linger>,
}

impl HeldSocket {
    pub fn new(fd: u64, cookie: u64) -> HeldSocket {
        HeldSocket {
            fd,
            cookie,
            linger: None,
        }
    }

    /// Should the process die now, its socket aborts rather than send what it queued
    /// (undone on a grant).
    pub fn abort_on_close(&mut self, tgid: u32) {
        self.linger = enforce::abort_on_close(tgid, self.fd);
    }
}

fn outcome_of(action: Action) -> Option<Outcome> {
    match action {
        Action::Observe => None,
        Action::Pause => Some(Outcome::Paused),
        Action::Kill => Some(Outcome::Killed),
        Action::Block => Some(Outcome::Blocked),
    }
}

fn cont(tgid: u32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
}

pub struct Enforcer {
    policy: Policy,
    gate: Box<dyn Gate>,
    /// Metered sockets kept held for a stopped session, by process (paused: released on
    /// approval; killed or blocked: released a while after the process is gone).
    held_sockets: HashMap<u32, Vec<HeldSocket>>,
    /// (boot ns after which to release, cookie) of exited processes' held sockets.
    held_sockets_expiring: Vec<(u64, u64)>,
}

impl Enforcer {
    pub fn new(policy: Policy, mut gate: Box<dyn Gate>) -> Enforcer {
        gate.set_wake_data(policy.enabled());
        Enforcer {
            policy,
            gate,
            held_sockets: HashMap::new(),
            held_sockets_expiring: Vec::new(),
        }
    }

    /// Any ceiling configured at all (otherwise nothing is gated: zero cost).
    pub fn enabled(&self) -> bool {
        self.policy.enabled()
    }

    /// The name of the rule a session's root matched (its job for drift).
    pub fn rule_of(&self, session_id: &str) -> Option<String> {
        self.policy.rule_of(session_id)
    }

    /// See [`super::Policy::ceiling_share`].
    pub fn ceiling_share(
        &self,
        totals: &crate::sessions::ceilings::SessionTotals,
    ) -> Option<(&'static str, f64)> {
        self.policy.ceiling_share(totals)
    }

    /// The shared budget a session's calls draw from.
    pub fn budget_of(&self, session_id: &str) -> Option<String> {
        self.policy.budget_of(session_id)
    }

    /// `status.ceilings.budgets`.
    pub fn budgets_status(&mut self, now_ns: u64) -> Vec<super::BudgetStatus> {
        self.policy.budgets_status(now_ns)
    }

    /// Where the ClickHouse reader writes the other nodes' spend of cluster budgets, and
    /// which budgets those are.
    pub fn cluster(&self) -> (std::sync::Arc<super::ClusterSpend>, Vec<String>) {
        (self.policy.cluster.clone(), self.policy.cluster_budgets())
    }

    /// `[ceilings] host_usd_per_day`.
    pub fn host_limit(&self) -> Option<f64> {
        self.policy.host_limit()
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.policy.stats
    }

    /// Gate writes that failed.
    pub fn gate_errors(&self) -> u64 {
        self.gate.errors()
    }

    /// Metered sockets whose queued bytes are kept in the host now.
    pub fn sockets_held(&self) -> usize {
        self.gate.held_sockets()
    }

    /// New limits (SIGHUP / `agentwatch reload`).
    pub fn reload(
        &mut self,
        ceilings: CeilingsConfig,
        rules: &[SessionRootRule],
        drift: Action,
    ) -> Result<(), PolicyError> {
        self.policy.reload(ceilings, rules)?;
        self.policy.set_drift(drift);
        self.gate.set_wake_data(self.policy.enabled());
        Ok(())
    }

    /// The process's gate state, if it is in the gate.
    pub fn gate_state(&self, tgid: u32) -> Option<u32> {
        self.gate.get(tgid)
    }

    /// Let a held process run on unjudged (it vanished, or its hold cannot be decided).
    pub fn grant(&mut self, tgid: u32) {
        self.gate.set(tgid, GATE_GRANTED);
        cont(tgid);
    }

    /// Every live process of the session is in the gate (new children inherit in-kernel).
    fn arm_session(&mut self, tree: &ProcTree, sessions: &Sessions, session_id: &str) {
        let Some(root) = sessions.root_of(session_id) else {
            return;
        };
        for k in tree.live_subtree(root) {
            self.arm(k.tgid);
        }
    }

    /// Gates `tgid` from its next LLM write (armed) unless it has a gate state already.
    pub fn arm(&mut self, tgid: u32) {
        if self.gate.get(tgid).is_none() {
            self.gate.set(tgid, GATE_ARMED);
        }
    }

    /// A request of the session was written: count it, and make sure the session is gated.
    pub fn request_started(
        &mut self,
        tree: &ProcTree,
        sessions: &Sessions,
        session_id: &str,
        ts_ns: u64,
    ) {
        let root_info = sessions
            .root_of(session_id)
            .and_then(|r| tree.get(r))
            .cloned();
        self.policy.session(session_id, root_info.as_ref());
        self.policy.note_started(session_id, ts_ns);
        self.arm_session(tree, sessions, session_id);
    }

    /// A call was accounted: host spend, endpoints for `block`, and the fast path that
    /// stops a session as soon as it has reached a ceiling.
    pub fn call_accounted(&mut self, w: &mut World<impl Rows>, record: &CallRecord, ts_ns: u64) {
        // An estimated call counts at the most it could have cost, an unpriced one at its
        // unpriced charge.
        self.policy.note_cost(ts_ns, record.charged_usd());
        if let Some(b) = &record.budget {
            self.policy.note_budget_cost(b, ts_ns, record.charged_usd());
        }
        let session = self.policy.session(&record.session_id, None);
        if let Some(addr) = &record.server_address {
            session.endpoints.insert(addr.clone());
        }
        let stopped = session.outcome != Outcome::Completed;
        let host_over = self.policy.host_over(ts_ns);
        self.gate.set_host_gate(host_over);
        if stopped {
            return;
        }
        if record.cost_usd.is_none()
            && record.estimate.is_none()
            && let Some(hit) = self.unpriced_hit(record.model.as_deref())
        {
            self.enforce(w, &record.session_id, &hit, ts_ns, None, record.pid_key());
            return;
        }
        let Some(totals) = w.sessions.totals(&record.session_id) else {
            return;
        };
        if let Some(hit) = self.policy.check_crossed(&totals, ts_ns)
            && hit.action != Action::Observe
        {
            self.enforce(w, &record.session_id, &hit, ts_ns, None, record.pid_key());
            return;
        }
        // `warn_at`: a warning per ceiling neared, before the stop.
        for (ceiling, limit, value) in self.policy.warnings(&totals, ts_ns) {
            let at = w.sessions.clock_rfc3339(ts_ns);
            let host = w.sessions.host().to_string();
            let scope = if ceiling == "host_usd_per_day" {
                format!(
                    "the host's spend over 24 h (last call: session {})",
                    short(&record.session_id)
                )
            } else {
                format!("session {}", short(&record.session_id))
            };
            w.rows.notice(&Notice {
                event: "warn".into(),
                session_id: record.session_id.clone(),
                host: host.clone(),
                ceiling: ceiling.into(),
                limit,
                value,
                action: "none".into(),
                at,
                message: format!(
                    "agentwatch on {host}: {scope} is at {} of {ceiling} {} ({}%): it will be stopped at the ceiling",
                    num(value),
                    num(limit),
                    (value / limit * 100.0).floor()
                ),
            });
        }
    }

    /// Paused sessions: killed once `pause_timeout_secs` ran out, notified again every
    /// `renotify_secs` until then (each tick).
    pub fn tick_paused(&mut self, w: &mut World<impl Rows>, now_ns: u64) {
        let (expired, again) = self.policy.paused_due(now_ns);
        let host = w.sessions.host().to_string();
        for id in expired {
            let keys = w
                .sessions
                .root_of(&id)
                .map(|r| w.tree.live_subtree(r))
                .unwrap_or_default();
            self.kill(&id, &keys);
            let n = enforce::signal(w.tree, &keys, libc::SIGKILL);
            self.policy.stats.processes_killed += n as u64;
            let secs = self.policy.pause_timeout_secs().unwrap_or(0);
            let reason =
                format!("paused for {secs} s without approve: killed (pause_timeout_secs)");
            w.sessions
                .set_outcome(&id, Outcome::Killed, Some(reason.clone()));
            w.rows.notice(&Notice {
                event: "pause_timeout".into(),
                session_id: id.clone(),
                host: host.clone(),
                ceiling: "pause_timeout_secs".into(),
                limit: secs as f64,
                value: secs as f64,
                action: "kill".into(),
                at: w.sessions.clock_rfc3339(now_ns),
                message: format!("agentwatch on {host}: session {} {reason}", short(&id)),
            });
        }
        for id in again {
            let s = self.policy.session(&id, None);
            let since = s
                .paused_at_ns
                .map_or(0, |t| now_ns.saturating_sub(t) / 1_000_000_000);
            let why = s.reason.clone().unwrap_or_default();
            w.rows.notice(&Notice {
                event: "paused".into(),
                session_id: id.clone(),
                host: host.clone(),
                ceiling: "paused".into(),
                limit: 0.0,
                value: since as f64,
                action: "pause".into(),
                at: w.sessions.clock_rfc3339(now_ns),
                message: format!(
                    "agentwatch on {host}: session {} is still paused after {since} s ({why}); `agentwatch approve {}` or `agentwatch kill {}`",
                    short(&id),
                    short(&id),
                    short(&id)
                ),
            });
        }
    }

    /// With `[ceilings] unpriced = "block"`: the hit a call of `model`, which no price lists,
    /// is (caller's check).
    fn unpriced_hit(&self, model: Option<&str>) -> Option<Hit> {
        self.policy.unpriced_blocks().then(|| Hit {
            ceiling: "unpriced",
            limit: 0.0,
            value: 0.0,
            action: Action::Block,
            detail: Some(format!(
                "no price for model {}",
                model.unwrap_or("(none named)")
            )),
        })
    }

    /// A gated process is stopped at an SSL write (counted). `req`: the LLM request its
    /// first bytes start, if they do; `rearm`: a write that is not one leaves the process
    /// armed (its next write may be the request).
    pub fn ssl_hold(
        &mut self,
        w: &mut World<impl Rows>,
        hold: Hold,
        req: Option<LlmRequest>,
        rearm: bool,
    ) {
        self.policy.stats.holds += 1;
        if hold.state == GATE_PAUSED {
            // Continued by someone else while paused: it stays stopped until approved.
            return;
        }
        match req {
            Some(req) => {
                self.decide_hold(w, hold, &req, None);
            }
            // Not the start of an LLM request (a body continuation, other TLS traffic).
            None => self.not_a_request(hold.tgid, hold.state, rearm),
        }
    }

    /// A write syscall on a metered socket is held (counted); `cookie` 0: its connect was not
    /// seen by the hooks, so its bytes could not be held back.
    pub fn count_socket_hold(&mut self, cookie: u64) {
        let stats = &mut self.policy.stats;
        stats.holds += 1;
        stats.socket_holds += 1;
        if cookie == 0 {
            stats.socket_holds_unprotected += 1;
        }
    }

    /// A held write that starts no LLM request: the process runs on (armed again when its
    /// next write may be the request).
    pub fn not_a_request(&mut self, tgid: u32, state: u32, rearm: bool) {
        self.policy.stats.holds_not_llm += 1;
        if state != GATE_BLOCKED {
            self.gate
                .set(tgid, if rearm { GATE_ARMED } else { GATE_GRANTED });
        }
        cont(tgid);
    }

    /// The decision on a held write that starts LLM request `req`. `socket`: the hold is a
    /// metered socket's, whose bytes are released on a grant and kept on a denial; returns
    /// the action it was denied with, if it was.
    pub fn decide_hold(
        &mut self,
        w: &mut World<impl Rows>,
        hold: Hold,
        req: &LlmRequest,
        socket: Option<HeldSocket>,
    ) -> Option<Action> {
        let Hold {
            tgid,
            key,
            state,
            ts_ns,
        } = hold;
        if state == GATE_BLOCKED {
            // A blocked session tries again: cut, record, let the write fail.
            let row = w.sessions.blocked_attempt(w.tree, key, req, ts_ns);
            w.rows.call(&row);
            let hit = Hit {
                ceiling: "blocked",
                limit: 0.0,
                value: 0.0,
                action: Action::Block,
                detail: None,
            };
            let denied = socket.map(|held| self.deny_socket(tgid, held, Action::Block));
            self.enforce(w, &row.session_id, &hit, ts_ns, Some(key), key);
            return denied;
        }
        let unpriced = req
            .model
            .as_deref()
            .is_none_or(|m| w.pricing.is_unpriced(m));
        let verdict = match w.sessions.prospect(w.tree, key) {
            Prospect::Session(aref) if unpriced && self.policy.unpriced_blocks() => self
                .unpriced_hit(req.model.as_deref())
                .map(|hit| (aref.session_id, hit)),
            Prospect::Session(aref) => w.sessions.totals(&aref.session_id).and_then(|t| {
                self.policy
                    .check_start(&t, aref.depth, ts_ns)
                    .map(|hit| (aref.session_id, hit))
            }),
            Prospect::NewRoot if self.policy.host_over(ts_ns) => {
                // Its first call would start a session; record it there.
                let aref = w.sessions.on_llm_request(w.tree, key, req);
                w.sessions.totals(&aref.session_id).and_then(|t| {
                    self.policy
                        .check_start(&t, 0, ts_ns)
                        .map(|hit| (aref.session_id, hit))
                })
            }
            Prospect::NewRoot => None,
        };
        let Some((session_id, hit)) = verdict else {
            self.policy.stats.holds_granted += 1;
            if let Some(held) = socket {
                self.release_held(tgid, held);
            }
            self.grant(tgid);
            return None;
        };
        let mut denied = None;
        if hit.action == Action::Observe {
            self.policy.stats.holds_granted += 1;
            if let Some(held) = socket {
                self.release_held(tgid, held);
            }
        } else {
            self.policy.stats.holds_denied += 1;
            let row = w.sessions.blocked_attempt(w.tree, key, req, ts_ns);
            w.rows.call(&row);
            denied = socket.map(|held| self.deny_socket(tgid, held, hit.action));
        }
        self.enforce(w, &session_id, &hit, ts_ns, Some(key), key);
        denied
    }

    /// A held socket's bytes may leave (no decision kept them).
    pub fn release_socket(&mut self, cookie: u64) {
        self.gate.release_socket(cookie);
    }

    /// A held socket's bytes may leave; its close behaves as before the hold.
    pub fn release_held(&mut self, tgid: u32, held: HeldSocket) {
        self.gate.release_socket(held.cookie);
        if let Some(linger) = held.linger {
            enforce::restore_linger(tgid, held.fd, linger);
        }
    }

    /// The held socket's bytes stay in the host until approval, or the process is gone.
    pub fn keep_held(&mut self, tgid: u32, held: HeldSocket) {
        if held.cookie != 0 {
            let list = self.held_sockets.entry(tgid).or_default();
            if !list.iter().any(|h| h.cookie == held.cookie) {
                list.push(held);
            }
        }
    }

    /// A held socket write was denied: its bytes stay held; a killed or blocked process's
    /// socket aborts when closed (its queue is discarded, never sent) and, blocked, is cut
    /// now. Returns `action` (the caller stops estimating that connection's calls).
    pub fn deny_socket(&mut self, tgid: u32, held: HeldSocket, action: Action) -> Action {
        self.keep_held(tgid, held);
        if action == Action::Block && enforce::cut_socket(tgid, held.fd) {
            self.policy.stats.connections_cut += 1;
        }
        action
    }

    /// Records a hit and applies its action to the whole session tree.
    pub fn enforce(
        &mut self,
        w: &mut World<impl Rows>,
        session_id: &str,
        hit: &Hit,
        ts_ns: u64,
        held: Option<ProcKey>,
        by: ProcKey,
    ) {
        let reason = hit.reason();
        let outcome = outcome_of(hit.action);
        w.sessions
            .record_ceiling_hit(session_id, outcome, reason.clone());
        let row = CeilingHit {
            session_id: session_id.to_string(),
            host: w.sessions.host().to_string(),
            pid: by.tgid,
            pid_start_ticks: by.start_ticks,
            ceiling: hit.ceiling.to_string(),
            limit: hit.limit,
            value: hit.value,
            action: hit.action.name().to_string(),
            at: w.sessions.clock_rfc3339(ts_ns),
        };
        w.rows.ceiling_hit(&row);
        tracing::warn!(session = session_id, pid = by.tgid, "{reason}");
        let mut keys = w
            .sessions
            .root_of(session_id)
            .map(|r| w.tree.live_subtree(r))
            .unwrap_or_default();
        if let Some(h) = held
            && !keys.contains(&h)
        {
            keys.push(h);
        }
        self.policy.stats.ceiling_hits += 1;
        let session = self.policy.session(session_id, None);
        let dests = endpoints(session);
        session.hits += 1;
        session.reason = Some(reason);
        if let Some(o) = outcome {
            session.outcome = o;
        }
        match hit.action {
            Action::Observe => {
                if let Some(h) = held {
                    self.grant(h.tgid);
                }
            }
            Action::Kill => {
                for k in &keys {
                    self.gate.set(k.tgid, GATE_KILL);
                }
                let n = enforce::signal(w.tree, &keys, libc::SIGKILL);
                self.policy.stats.processes_killed += n as u64;
            }
            Action::Pause => {
                for k in &keys {
                    self.gate.set(k.tgid, GATE_PAUSED);
                }
                let n = enforce::signal(w.tree, &keys, libc::SIGSTOP);
                self.policy.stats.processes_paused += n as u64;
                self.policy
                    .session(session_id, None)
                    .paused
                    .extend(keys.iter().copied());
            }
            Action::Block => {
                let mut cut = 0;
                for k in &keys {
                    self.gate.set(k.tgid, GATE_BLOCKED);
                    self.gate.refuse(k.tgid, &dests);
                    cut += enforce::cut_connections(k.tgid, &dests).len();
                }
                self.policy.stats.connections_cut += cut as u64;
                // The held write now runs on a cut connection and fails.
                if let Some(h) = held {
                    cont(h.tgid);
                }
            }
        }
        self.policy.save();
    }

    /// Watchdog (every tick): a gated process that is stopped while its gate says it may
    /// run was stopped by nothing we decided; continue it and count it. `waiting`: stopped
    /// at its first contact for its probes, which is not the gate's stop.
    pub fn continue_stuck(&mut self, waiting: impl Fn(u32) -> bool) {
        let stuck: Vec<u32> = self
            .gate
            .entries()
            .into_iter()
            .filter(|(_, state)| *state == GATE_GRANTED || *state == GATE_ARMED)
            .map(|(tgid, _)| tgid)
            .filter(|tgid| !waiting(*tgid))
            .filter(|tgid| enforce::is_stopped(*tgid))
            .collect();
        for tgid in stuck {
            tracing::warn!(
                pid = tgid,
                "a gated process was stopped though granted; continuing it"
            );
            cont(tgid);
            self.policy.stats.stuck_continued += 1;
        }
    }

    /// Gated processes the gate shows held (a write stopped for a decision) that are
    /// stopped now. After a drain, a decision has changed the state of every hold whose
    /// record was read.
    pub fn held_and_stopped(&self) -> Vec<u32> {
        self.gate
            .entries()
            .into_iter()
            .filter(|(_, state)| *state == GATE_HELD)
            .map(|(tgid, _)| tgid)
            .filter(|tgid| enforce::is_stopped(*tgid))
            .collect()
    }

    pub fn count_unannounced_hold(&mut self) {
        self.policy.stats.holds_unannounced += 1;
    }

    /// Every tick: the held sockets of processes gone long enough are let go.
    pub fn expire_held_sockets(&mut self, now_ns: u64) {
        let gate = &mut self.gate;
        self.held_sockets_expiring.retain(|(at, cookie)| {
            let keep = *at > now_ns;
            if !keep {
                gate.release_socket(*cookie);
            }
            keep
        });
    }

    /// The process exited: its sockets close now (aborted: `enforce::abort_on_close`); what
    /// they queued is kept from leaving a while longer, in case a socket outlives it.
    pub fn process_exited(&mut self, tgid: u32, ts_ns: u64) {
        for held in self.held_sockets.remove(&tgid).unwrap_or_default() {
            self.held_sockets_expiring
                .push((ts_ns + HELD_SOCKET_GRACE_NS, held.cookie));
        }
    }

    /// The session closed (its ledger row is written): nothing is kept for it.
    pub fn session_closed(&mut self, session_id: &str) {
        if self.policy.sessions.contains_key(session_id) {
            self.policy.forget(session_id);
            self.policy.save();
        }
    }

    /// `agentwatch approve`: raise the session's limits, and run its processes `keys` again
    /// (their held socket writes go out). Returns how many were continued.
    pub fn approve(
        &mut self,
        tree: &ProcTree,
        session_id: &str,
        keys: &[ProcKey],
        usd: f64,
        tokens: u64,
        calls: u64,
    ) -> usize {
        self.policy.approve(session_id, usd, tokens, calls);
        self.policy.save();
        for k in keys {
            self.gate.set(k.tgid, GATE_ARMED);
            // Held socket writes go out now (TCP sends what it queued).
            for held in self.held_sockets.remove(&k.tgid).unwrap_or_default() {
                self.release_held(k.tgid, held);
            }
        }
        enforce::signal(tree, keys, libc::SIGCONT)
    }

    /// `agentwatch kill`: the session is killed, and its processes `keys` are in the gate
    /// as such (the caller signals them).
    pub fn kill(&mut self, session_id: &str, keys: &[ProcKey]) {
        self.policy.session(session_id, None).outcome = Outcome::Killed;
        self.policy.save();
        for k in keys {
            self.gate.set(k.tgid, GATE_KILL);
        }
    }

    /// `[[session_roots]]`: a process that matches a rule at exec starts its session now.
    pub fn on_exec(&mut self, tree: &ProcTree, sessions: &mut Sessions, tgid: u32, ts_ns: u64) {
        let Some(key) = tree.key_of(tgid) else {
            return;
        };
        let Some(info) = tree.get(key) else {
            return;
        };
        if let Prospect::Session(aref) = sessions.prospect(tree, key) {
            // Inside a gated session: a child forked before the daemon armed its parent did
            // not inherit the gate in the kernel; arm it now, before it calls.
            if self.policy.sessions.contains_key(&aref.session_id) && self.gate.get(tgid).is_none()
            {
                self.gate.set(tgid, GATE_ARMED);
            }
            return;
        }
        let Some(m) = self.policy.root_rule(info) else {
            return;
        };
        let aref = sessions.start_root(tree, key, ts_ns);
        if let Some(name) = &m.name {
            sessions.set_job(&aref.session_id, format!("rule:{name}"));
        }
        self.policy.set_rule(&aref.session_id, m);
        self.policy.save();
        self.gate.set(tgid, GATE_ARMED);
    }

    /// After a restart: put open sessions back in the gate, and release or keep what the
    /// previous daemon paused (`on_restart`); decide holds it left undecided.
    pub fn restore(&mut self, w: &mut World<impl Rows>, now_ns: u64) {
        let on_restart = self.policy.on_restart();
        let ids: Vec<String> = self.policy.sessions.keys().cloned().collect();
        for id in ids {
            let Some(totals) = w.sessions.totals(&id) else {
                self.policy.forget(&id);
                continue;
            };
            let s = self.policy.session(&id, None);
            s.calls_started = s.calls_started.max(totals.calls);
            let (hits, outcome, reason) = (s.hits, s.outcome, s.reason.clone());
            let paused: Vec<ProcKey> = s.paused.iter().copied().collect();
            let dests = endpoints(s);
            w.sessions.restore_ceiling_state(&id, hits, outcome, reason);
            let keys = w.tree.live_subtree(totals.root);
            match outcome {
                Outcome::Paused if on_restart == OnRestart::Keep => {
                    for k in &keys {
                        self.gate.set(k.tgid, GATE_PAUSED);
                    }
                }
                Outcome::Paused => {
                    // Released: it runs again, and its next LLM call meets the ceiling again.
                    // A process paused at a hold is stopped inside the write the uprobe already
                    // passed: its LLM connections are cut first, so that write fails instead
                    // of leaving the host over the ceiling.
                    for k in &keys {
                        self.gate.set(k.tgid, GATE_ARMED);
                    }
                    let mut cut = 0;
                    for k in &paused {
                        cut += enforce::cut_connections(k.tgid, &dests).len();
                    }
                    self.policy.stats.connections_cut += cut as u64;
                    enforce::signal(w.tree, &paused, libc::SIGCONT);
                }
                Outcome::Killed => {
                    for k in &keys {
                        self.gate.set(k.tgid, GATE_KILL);
                    }
                    enforce::signal(w.tree, &keys, libc::SIGKILL);
                }
                Outcome::Blocked => {
                    for k in &keys {
                        self.gate.set(k.tgid, GATE_BLOCKED);
                        self.gate.refuse(k.tgid, &dests);
                    }
                }
                Outcome::Completed => self.arm_session(w.tree, w.sessions, &id),
            }
        }
        // Open sessions the policy had no entry for (e.g. ceilings added since) are gated too.
        for id in w.sessions.open_ids() {
            let root_info = w.sessions.root_of(&id).and_then(|r| w.tree.get(r));
            self.policy.session(&id, root_info);
            self.arm_session(w.tree, w.sessions, &id);
        }
        // Holds the previous daemon never decided (their records died with its ring buffer):
        // session processes stopped though not paused by us. Decide as for a new call.
        let mut held = Vec::new();
        for id in w.sessions.open_ids() {
            let Some(root) = w.sessions.root_of(&id) else {
                continue;
            };
            let paused = &self.policy.session(&id, None).paused;
            held.extend(
                w.tree
                    .live_subtree(root)
                    .into_iter()
                    .filter(|k| !paused.contains(k) && enforce::is_stopped(k.tgid)),
            );
        }
        for key in held {
            if !w.tree.is_live(key) {
                continue;
            }
            let verdict = match w.sessions.prospect(w.tree, key) {
                Prospect::Session(aref) => w.sessions.totals(&aref.session_id).and_then(|t| {
                    self.policy
                        .check_start(&t, aref.depth, now_ns)
                        .map(|h| (aref.session_id, h))
                }),
                Prospect::NewRoot => None,
            };
            match verdict {
                Some((id, hit)) => self.enforce(w, &id, &hit, now_ns, Some(key), key),
                None => self.grant(key.tgid),
            }
        }
        let host_over = self.policy.host_over(now_ns);
        self.gate.set_host_gate(host_over);
        self.policy.save();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::procs::test_support::{FakeProc, TempDir};
    use crate::procs::{ProcConfig, ProcTree};
    use crate::sessions::tests::{cfg, req};

    /// Pids no process can have (above the kernel's `pid_max` limit): the signals the
    /// enforcer sends reach nobody.
    const ROOT: u32 = 5_000_100;
    const CHILD: u32 = 5_000_200;

    /// The gate's maps, shared with the test.
    #[derive(Default)]
    struct FakeMaps {
        states: HashMap<u32, u32>,
        refused: HashSet<u32>,
        released: Vec<u64>,
        host_gate: bool,
        wake_data: bool,
    }

    #[derive(Clone, Default)]
    struct FakeGate(Arc<Mutex<FakeMaps>>);

    impl FakeGate {
        fn state(&self, tgid: u32) -> Option<u32> {
            self.0.lock().unwrap().states.get(&tgid).copied()
        }
    }

    impl Gate for FakeGate {
        fn set(&mut self, tgid: u32, state: u32) {
            self.0.lock().unwrap().states.insert(tgid, state);
        }
        fn get(&self, tgid: u32) -> Option<u32> {
            self.state(tgid)
        }
        fn entries(&self) -> Vec<(u32, u32)> {
            let maps = self.0.lock().unwrap();
            maps.states.iter().map(|(k, v)| (*k, *v)).collect()
        }
        fn refuse(&mut self, tgid: u32, _dests: &HashSet<SocketAddr>) {
            self.0.lock().unwrap().refused.insert(tgid);
        }
        fn release_socket(&mut self, cookie: u64) {
            self.0.lock().unwrap().released.push(cookie);
        }
        fn held_sockets(&self) -> usize {
            0
        }
        fn set_wake_data(&mut self, on: bool) {
            self.0.lock().unwrap().wake_data = on;
        }
        fn set_host_gate(&mut self, on: bool) {
            self.0.lock().unwrap().host_gate = on;
        }
        fn errors(&self) -> u64 {
            0
        }
    }

    #[derive(Default)]
    struct Written {
        calls: Vec<CallRecord>,
        hits: Vec<CeilingHit>,
    }

    impl Rows for &mut Written {
        fn call(&mut self, row: &CallRecord) {
            self.calls.push(row.clone());
        }
        fn ceiling_hit(&mut self, row: &CeilingHit) {
            self.hits.push(row.clone());
        }
    }

    struct Setup {
        enforcer: Enforcer,
        gate: FakeGate,
        tree: ProcTree,
        sessions: Sessions,
        _proc: FakeProc,
        _data: TempDir,
    }

    /// An agent (ROOT) with a child, under the ceilings of `toml_text`.
    fn setup(toml_text: &str) -> Setup {
        let fake = FakeProc::new();
        fake.add(ROOT, 1, "agent", 10, &["agent"]);
        let mut tree = ProcTree::seed_with(fake.root(), ProcConfig::default()).unwrap();
        fake.add(CHILD, ROOT, "sub", 20, &["sub"]);
        tree.on_fork(ROOT, CHILD, 0).unwrap();
        let data = TempDir::new("enforcer");
        let ceilings: CeilingsConfig = toml::from_str(toml_text).unwrap();
        let policy = Policy::new(ceilings, &[], data.path()).unwrap();
        let gate = FakeGate::default();
        Setup {
            enforcer: Enforcer::new(policy, Box::new(gate.clone())),
            gate,
            tree,
            sessions: Sessions::new(cfg()),
            _proc: fake,
            _data: data,
        }
    }

    impl Setup {
        fn key(&self, tgid: u32) -> ProcKey {
            self.tree.key_of(tgid).unwrap()
        }

        /// ROOT's request is written: its session starts and is gated.
        fn request(&mut self, ts_ns: u64) -> String {
            let key = self.key(ROOT);
            let aref = self
                .sessions
                .on_llm_request(&self.tree, key, &req("openai", None, ts_ns));
            self.enforcer
                .request_started(&self.tree, &self.sessions, &aref.session_id, ts_ns);
            aref.session_id
        }

        /// A write of `tgid` held in state `state`, starting a request.
        fn hold(&mut self, tgid: u32, state: u32, ts_ns: u64, rows: &mut Written) {
            let hold = Hold {
                tgid,
                key: self.key(tgid),
                state,
                ts_ns,
            };
            let pricing = Pricing::default();
            let mut w = World {
                tree: &self.tree,
                pricing: &pricing,
                sessions: &mut self.sessions,
                rows,
            };
            let req = req("openai", None, ts_ns);
            self.enforcer.ssl_hold(&mut w, hold, Some(req), false);
        }
    }

    #[test]
    fn a_session_is_gated_from_its_first_request_and_granted_below_its_ceilings() {
        let mut s = setup("session_calls = 2\naction = 'pause'");
        assert!(
            s.gate.0.lock().unwrap().wake_data,
            "ceilings wake the daemon"
        );
        s.request(1);
        assert_eq!(s.gate.state(ROOT), Some(GATE_ARMED));
        assert_eq!(s.gate.state(CHILD), Some(GATE_ARMED), "the whole tree");
        let mut rows = Written::default();
        s.hold(CHILD, GATE_ARMED, 2, &mut rows);
        assert_eq!(s.gate.state(CHILD), Some(GATE_GRANTED));
        let stats = s.enforcer.stats();
        assert_eq!(
            (stats.holds, stats.holds_granted, stats.holds_denied),
            (1, 1, 0)
        );
        assert!(rows.calls.is_empty() && rows.hits.is_empty());
    }

    #[test]
    fn the_call_over_a_ceiling_is_held_and_its_session_paused() {
        let mut s = setup("session_calls = 1\naction = 'pause'");
        let id = s.request(1);
        let mut rows = Written::default();
        s.hold(CHILD, GATE_ARMED, 2, &mut rows);
        let stats = s.enforcer.stats();
        assert_eq!((stats.holds_denied, stats.ceiling_hits), (1, 1));
        assert_eq!(rows.calls.len(), 1, "the attempt is on record");
        assert_eq!(rows.hits[0].ceiling, "session_calls");
        assert_eq!(rows.hits[0].action, "pause");
        for tgid in [ROOT, CHILD] {
            assert_eq!(s.gate.state(tgid), Some(GATE_PAUSED));
        }
        let view = &s.sessions.live_sessions()[0];
        assert_eq!((view.outcome, view.ceiling_hits), (Outcome::Paused, 1));
        // Approved with one more call: armed again, and the next hold goes through.
        let keys = s.tree.live_subtree(s.key(ROOT));
        s.enforcer.approve(&s.tree, &id, &keys, 0.0, 0, 1);
        assert_eq!(s.gate.state(ROOT), Some(GATE_ARMED));
        s.hold(ROOT, GATE_ARMED, 3, &mut rows);
        assert_eq!(s.gate.state(ROOT), Some(GATE_GRANTED));
        assert_eq!(s.enforcer.stats().holds_granted, 1);
    }

    #[test]
    fn a_blocked_session_stays_blocked() {
        let mut s = setup("session_calls = 1\naction = 'block'");
        s.request(1);
        let mut rows = Written::default();
        s.hold(ROOT, GATE_ARMED, 2, &mut rows);
        assert_eq!(s.gate.state(ROOT), Some(GATE_BLOCKED));
        assert!(s.gate.0.lock().unwrap().refused.contains(&ROOT));
        // Its next write is no request: it is not let through the gate.
        s.enforcer.not_a_request(ROOT, GATE_BLOCKED, false);
        assert_eq!(s.gate.state(ROOT), Some(GATE_BLOCKED));
        // Its next request is an attempt, recorded, and a hit of `blocked`.
        s.hold(ROOT, GATE_BLOCKED, 3, &mut rows);
        assert_eq!(rows.calls.len(), 2);
        assert_eq!(rows.hits[1].ceiling, "blocked");
    }

    #[test]
    fn without_ceilings_nothing_wakes_the_daemon() {
        let s = setup("");
        assert!(!s.enforcer.enabled());
        assert!(!s.gate.0.lock().unwrap().wake_data);
    }
}
