//! The pipeline's side of ceilings: deciding holds, stopping sessions, approvals and
//! restarts. The design and why it has no race are in `crate::policy`.
use agentwatch_ebpf::{GATE_ARMED, GATE_BLOCKED, GATE_GRANTED, GATE_KILL, GATE_PAUSED};

use super::Pipeline;
use crate::capture::{Connection, Http2Hold};
use crate::control::replies::{Approved, Killed};
use crate::policy::{Action, Hit, OnRestart, enforce};
use crate::procs::ProcKey;
use crate::providers::{Api, LlmRequest, provider_name};
use crate::sessions::ceilings::Prospect;
use crate::sessions::{CallRecord, CeilingHit, Outcome};

use super::estimates::HeldWrite;

/// A metered socket whose queued bytes the kernel holds (`HELD_SOCKS`).
#[derive(Debug, Clone, Copy)]
pub(super) struct HeldSocket {
    fd: u64,
    cookie: u64,
    /// Its `SO_LINGER` before the hold made it abort on close, to restore on a grant.
    linger: Option<libc::linger>,
}

/// The LLM request a held write starts, if its first bytes are an HTTP request line of a
/// known LLM API. The bytes are read here and dropped; nothing of them is kept but the
/// method/path shape and the Host header.
fn classify(preview: &[u8], ts_ns: u64) -> Option<LlmRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    // Partial is fine: the request line (and usually the headers) fit the preview.
    let _ = req.parse(preview);
    let api = Api::for_request(req.method?, req.path?)?;
    let host = req
        .headers
        .iter()
        .take_while(|h| !h.name.is_empty())
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_string);
    Some(held_request(api, host, "1.1", ts_ns))
}

/// The request a held write starts, as far as its first bytes tell (no model yet).
fn held_request(api: Api, host: Option<String>, http_version: &str, ts_ns: u64) -> LlmRequest {
    LlmRequest {
        provider: provider_name(api, host.as_deref()),
        api: api.name().to_string(),
        server_address: host,
        model: None,
        streaming: false,
        http_version: http_version.into(),
        started_at_ns: ts_ns,
        request_bytes: 0,
    }
}

impl HeldSocket {
    pub(super) fn cookie(&self) -> u64 {
        self.cookie
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

impl Pipeline {
    fn gating(&self) -> bool {
        self.gate.is_some() && self.policy.as_ref().is_some_and(|p| p.enabled())
    }

    fn gate_set(&mut self, tgid: u32, state: u32) {
        if let Some(g) = self.gate.as_mut() {
            g.set(tgid, state);
        }
    }

    /// Every live process of the session is in the gate (new children inherit in-kernel).
    fn arm_session(&mut self, session_id: &str) {
        let Some(root) = self.sessions.root_of(session_id) else {
            return;
        };
        let keys = self.tree.live_subtree(root);
        if let Some(g) = self.gate.as_mut() {
            for k in keys {
                if g.get(k.tgid).is_none() {
                    g.set(k.tgid, GATE_ARMED);
                }
            }
        }
    }

    /// A request was written: count it, and make sure its session is gated.
    pub(super) fn after_request(&mut self, session_id: &str, ts_ns: u64) {
        if !self.gating() {
            return;
        }
        let root_info = self
            .sessions
            .root_of(session_id)
            .and_then(|r| self.tree.get(r))
            .cloned();
        let policy = self.policy.as_mut().expect("gating");
        policy.session(session_id, root_info.as_ref());
        policy.note_started(session_id, ts_ns);
        self.arm_session(session_id);
    }

    /// A call was accounted: host spend, endpoints for `block`, and the fast path that
    /// stops a session as soon as it has reached a ceiling.
    pub(super) fn after_call(&mut self, record: &CallRecord, ts_ns: u64) {
        if !self.gating() {
            return;
        }
        let policy = self.policy.as_mut().expect("gating");
        // An estimated call counts at the most it could have cost.
        let cost = record
            .cost_usd
            .or(record.estimate.as_ref().and_then(|e| e.cost_usd_high));
        policy.note_cost(ts_ns, cost.unwrap_or(0.0));
        let session = policy.session(&record.session_id, None);
        if let Some(addr) = &record.server_address {
            session.endpoints.insert(addr.clone());
        }
        let stopped = session.outcome != Outcome::Completed;
        let host_over = policy.host_over(ts_ns);
        if let Some(g) = self.gate.as_mut() {
            g.set_host_gate(host_over);
        }
        if stopped {
            return;
        }
        let Some(totals) = self.sessions.totals(&record.session_id) else {
            return;
        };
        let policy = self.policy.as_mut().expect("gating");
        if let Some(hit) = policy.check_crossed(&totals, ts_ns)
            && hit.action != Action::Observe
        {
            self.enforce(&record.session_id, &hit, ts_ns, None, record.pid_key());
        }
    }

    /// A gated process is stopped at an SSL write: decide.
    /// `record`: the held write is one TLS record (AEAD probes), whose next record may be the
    /// request without a read in between, so a non-request keeps the process armed.
    pub(super) fn on_hold(
        &mut self,
        tgid: u32,
        ssl: u64,
        state: u32,
        ts_ns: u64,
        preview: &[u8],
        record: bool,
    ) {
        let Some(key) = self.tree.ensure(tgid) else {
            self.gate_set(tgid, GATE_GRANTED);
            cont(tgid);
            return;
        };
        // HTTP/2 first: its frames are binary, and a request on a connection the process
        // already uses may only be recognisable with that connection's state.
        let conn = self.conns.get(&(tgid, ssl)).map(|c| &c.conn);
        let (req, rearm) = match Connection::http2_hold(conn, preview) {
            Http2Hold::NotHttp2 => (classify(preview, ts_ns), record),
            // Only set-up frames: the request itself comes in a later write; hold that too.
            Http2Hold::NoRequest => (None, true),
            Http2Hold::OpenStreams | Http2Hold::NewStream(None) => (None, false),
            Http2Hold::NewStream(Some((api, host))) => {
                (Some(held_request(api, host, "2", ts_ns)), false)
            }
        };
        let Some(policy) = self.policy.as_mut() else {
            self.gate_set(tgid, GATE_GRANTED);
            cont(tgid);
            return;
        };
        policy.stats.holds += 1;
        if state == GATE_PAUSED {
            // Continued by someone else while paused: it stays stopped until approved.
            return;
        }
        let Some(req) = req else {
            // Not the start of an LLM request (a body continuation, other TLS traffic).
            policy.stats.holds_not_llm += 1;
            if state != GATE_BLOCKED {
                self.gate_set(tgid, if rearm { GATE_ARMED } else { GATE_GRANTED });
            }
            cont(tgid);
            return;
        };
        self.decide_hold(tgid, key, state, &req, ts_ns, None);
    }

    /// A gated process is stopped after a write syscall on a metered socket (TLS no hook
    /// covers), whose queued bytes the egress program keeps in the host: decide as for an
    /// SSL write, from what the connection's bytes tell (see `Estimates::held_write`).
    pub(super) fn on_socket_hold(
        &mut self,
        tgid: u32,
        fd: u64,
        state: u32,
        ts_ns: u64,
        len: u64,
        cookie: u64,
    ) {
        let mut held = HeldSocket {
            fd,
            cookie,
            linger: None,
        };
        let key = self.tree.ensure(tgid);
        let (Some(key), Some(policy)) = (key, self.policy.as_mut()) else {
            self.release_socket(cookie);
            self.gate_set(tgid, GATE_GRANTED);
            cont(tgid);
            return;
        };
        policy.stats.holds += 1;
        policy.stats.socket_holds += 1;
        if cookie == 0 {
            // Connected before the daemon (or its connect hooks) ran: the write was not held.
            policy.stats.socket_holds_unprotected += 1;
        }
        if state == GATE_PAUSED {
            // Continued by someone else while paused: it stays stopped until approved.
            self.keep_held(tgid, held);
            return;
        }
        if state == GATE_KILL {
            // A session being killed wrote again: what it queued is discarded, then it dies.
            held.linger = enforce::abort_on_close(tgid, fd);
            self.keep_held(tgid, held);
            self.estimates.deny(tgid, fd);
            // SAFETY: kill(2) with integer arguments.
            unsafe { libc::kill(tgid as i32, libc::SIGKILL) };
            return;
        }
        let kind = self.estimates.held_write(tgid, fd, len);
        if kind != HeldWrite::Request {
            policy.stats.holds_not_llm += 1;
            self.release_socket(cookie);
            if state != GATE_BLOCKED {
                let rearm = kind == HeldWrite::Handshake;
                self.gate_set(tgid, if rearm { GATE_ARMED } else { GATE_GRANTED });
            }
            cont(tgid);
            return;
        }
        // Should the process die now, its socket aborts rather than send what it queued
        // (undone on a grant).
        held.linger = enforce::abort_on_close(tgid, fd);
        // The answered turn before this write is charged first, so the decision sees it;
        // charging it may stop the session by itself (the fast path of `after_call`).
        let before = self.gate.as_ref().and_then(|g| g.get(tgid));
        let mut out = Vec::new();
        self.estimates.end_answered_turn(tgid, fd, &mut out);
        self.charge_estimates(out);
        let Some(req) = self.estimates.held_request(tgid, fd, ts_ns) else {
            self.release_held(tgid, held);
            cont(tgid);
            return;
        };
        let now = self.gate.as_ref().and_then(|g| g.get(tgid));
        if now != before
            && let Some(stopped @ (GATE_KILL | GATE_PAUSED | GATE_BLOCKED)) = now
        {
            // Stopped just now: the held request is an attempt that never left.
            let row = self.sessions.blocked_attempt(&self.tree, key, &req, ts_ns);
            self.write_call_row(&row);
            let action = match stopped {
                GATE_KILL => Action::Kill,
                GATE_PAUSED => Action::Pause,
                _ => Action::Block,
            };
            self.deny_socket(tgid, held, action);
            if stopped == GATE_BLOCKED {
                cont(tgid);
            }
            return;
        }
        self.decide_hold(tgid, key, state, &req, ts_ns, Some(held));
    }

    /// The decision on a held write that starts LLM request `req`. `socket`: the hold is a
    /// metered socket's, whose bytes are released on a grant and kept on a denial.
    fn decide_hold(
        &mut self,
        tgid: u32,
        key: ProcKey,
        state: u32,
        req: &LlmRequest,
        ts_ns: u64,
        socket: Option<HeldSocket>,
    ) {
        if state == GATE_BLOCKED {
            // A blocked session tries again: cut, record, let the write fail.
            let row = self.sessions.blocked_attempt(&self.tree, key, req, ts_ns);
            self.write_call_row(&row);
            let hit = Hit {
                ceiling: "blocked",
                limit: 0.0,
                value: 0.0,
                action: Action::Block,
            };
            if let Some(held) = socket {
                self.deny_socket(tgid, held, Action::Block);
            }
            self.enforce(&row.session_id, &hit, ts_ns, Some(key), key);
            return;
        }
        let verdict = match self.sessions.prospect(&self.tree, key) {
            Prospect::Session(aref) => self.sessions.totals(&aref.session_id).and_then(|t| {
                self.policy
                    .as_mut()
                    .expect("checked")
                    .check_start(&t, aref.depth, ts_ns)
                    .map(|hit| (aref.session_id, hit))
            }),
            Prospect::NewRoot => {
                let policy = self.policy.as_mut().expect("checked");
                if policy.host_over(ts_ns) {
                    // Its first call would start a session; record it there.
                    let aref = self.sessions.on_llm_request(&self.tree, key, req);
                    let totals = self.sessions.totals(&aref.session_id);
                    totals.and_then(|t| {
                        self.policy
                            .as_mut()
                            .expect("checked")
                            .check_start(&t, 0, ts_ns)
                            .map(|hit| (aref.session_id, hit))
                    })
                } else {
                    None
                }
            }
        };
        let policy = self.policy.as_mut().expect("checked");
        match verdict {
            None => {
                policy.stats.holds_granted += 1;
                if let Some(held) = socket {
                    self.release_held(tgid, held);
                }
                self.gate_set(tgid, GATE_GRANTED);
                cont(tgid);
            }
            Some((session_id, hit)) => {
                if hit.action == Action::Observe {
                    policy.stats.holds_granted += 1;
                    if let Some(held) = socket {
                        self.release_held(tgid, held);
                    }
                } else {
                    policy.stats.holds_denied += 1;
                    let row = self.sessions.blocked_attempt(&self.tree, key, req, ts_ns);
                    self.write_call_row(&row);
                    if let Some(held) = socket {
                        self.deny_socket(tgid, held, hit.action);
                    }
                }
                self.enforce(&session_id, &hit, ts_ns, Some(key), key);
            }
        }
    }

    fn release_socket(&mut self, cookie: u64) {
        if let Some(g) = self.gate.as_mut() {
            g.release_socket(cookie);
        }
    }

    /// A held socket's bytes may leave; its close behaves as before the hold.
    fn release_held(&mut self, tgid: u32, held: HeldSocket) {
        self.release_socket(held.cookie);
        if let Some(linger) = held.linger {
            enforce::restore_linger(tgid, held.fd, linger);
        }
    }

    /// The held socket's bytes stay in the host until approval, or the process is gone.
    fn keep_held(&mut self, tgid: u32, held: HeldSocket) {
        if held.cookie != 0 {
            let list = self.held_sockets.entry(tgid).or_default();
            if !list.iter().any(|h| h.cookie == held.cookie) {
                list.push(held);
            }
        }
    }

    /// A held socket write was denied: its bytes stay held; a killed or blocked process's
    /// socket aborts when closed (its queue is discarded, never sent) and, blocked, is cut
    /// now; nothing more of that connection is an estimated call.
    fn deny_socket(&mut self, tgid: u32, held: HeldSocket, action: Action) {
        self.keep_held(tgid, held);
        if matches!(action, Action::Kill | Action::Block) {
            self.estimates.deny(tgid, held.fd);
        }
        if action == Action::Block && enforce::cut_socket(tgid, held.fd) {
            self.policy.as_mut().expect("policy").stats.connections_cut += 1;
        }
    }

    /// Records a hit and applies its action to the whole session tree.
    fn enforce(
        &mut self,
        session_id: &str,
        hit: &Hit,
        ts_ns: u64,
        held: Option<ProcKey>,
        by: ProcKey,
    ) {
        let reason = hit.reason();
        let outcome = outcome_of(hit.action);
        self.sessions
            .record_ceiling_hit(session_id, outcome, reason.clone());
        let at = self.sessions.clock_rfc3339(ts_ns);
        let host = self.sessions.host().to_string();
        let row = CeilingHit {
            session_id: session_id.to_string(),
            host,
            pid: by.tgid,
            pid_start_ticks: by.start_ticks,
            ceiling: hit.ceiling.to_string(),
            limit: hit.limit,
            value: hit.value,
            action: hit.action.name().to_string(),
            at,
        };
        if let Err(e) = self.sink.write_ceiling_hit(&row) {
            self.stats.sink_errors += 1;
            tracing::error!("{e}");
        }
        tracing::warn!(session = session_id, pid = by.tgid, "{reason}");
        let mut keys = self
            .sessions
            .root_of(session_id)
            .map(|r| self.tree.live_subtree(r))
            .unwrap_or_default();
        if let Some(h) = held
            && !keys.contains(&h)
        {
            keys.push(h);
        }
        let policy = self.policy.as_mut().expect("enforce runs with a policy");
        policy.stats.ceiling_hits += 1;
        let dests = crate::policy::endpoints(policy.session(session_id, None));
        let session = policy.session(session_id, None);
        session.hits += 1;
        session.reason = Some(reason);
        if let Some(o) = outcome {
            session.outcome = o;
        }
        match hit.action {
            Action::Observe => {
                if let Some(h) = held {
                    self.gate_set(h.tgid, GATE_GRANTED);
                    cont(h.tgid);
                }
            }
            Action::Kill => {
                for k in &keys {
                    self.gate_set(k.tgid, GATE_KILL);
                }
                let n = enforce::signal(&self.tree, &keys, libc::SIGKILL);
                self.policy.as_mut().expect("policy").stats.processes_killed += n as u64;
            }
            Action::Pause => {
                for k in &keys {
                    self.gate_set(k.tgid, GATE_PAUSED);
                }
                let n = enforce::signal(&self.tree, &keys, libc::SIGSTOP);
                let policy = self.policy.as_mut().expect("policy");
                policy.stats.processes_paused += n as u64;
                policy
                    .session(session_id, None)
                    .paused
                    .extend(keys.iter().copied());
            }
            Action::Block => {
                let mut cut = 0;
                for k in &keys {
                    if let Some(g) = self.gate.as_mut() {
                        g.set(k.tgid, GATE_BLOCKED);
                        g.refuse(k.tgid, dests.iter().copied());
                    }
                    cut += enforce::cut_connections(k.tgid, &dests).len();
                }
                self.policy.as_mut().expect("policy").stats.connections_cut += cut as u64;
                // The held write now runs on a cut connection and fails.
                if let Some(h) = held {
                    cont(h.tgid);
                }
            }
        }
        self.policy.as_mut().expect("policy").save();
    }

    /// Watchdog (every tick): a gated process that is stopped while its gate says it may
    /// run was stopped by nothing we decided; continue it and count it.
    pub(super) fn continue_stuck(&mut self) {
        let Some(gate) = self.gate.as_ref() else {
            return;
        };
        let stuck: Vec<u32> = gate
            .entries()
            .into_iter()
            .filter(|(_, state)| *state == GATE_GRANTED || *state == GATE_ARMED)
            .map(|(tgid, _)| tgid)
            // Stopped at its first contact, waiting for its probes: not the gate's stop.
            .filter(|tgid| !self.pending_contacts.contains(*tgid))
            .filter(|tgid| enforce::is_stopped(*tgid))
            .collect();
        for tgid in stuck {
            tracing::warn!(
                pid = tgid,
                "a gated process was stopped though granted; continuing it"
            );
            cont(tgid);
            if let Some(p) = self.policy.as_mut() {
                p.stats.stuck_continued += 1;
            }
        }
    }

    /// `agentwatch approve SESSION [--raise-usd X] [--raise-tokens N] [--raise-calls N]`.
    pub fn approve(
        &mut self,
        session_id: &str,
        usd: f64,
        tokens: u64,
        calls: u64,
    ) -> Result<Approved, String> {
        let Some(root) = self.sessions.root_of(session_id) else {
            return Err(format!("no open session {session_id}"));
        };
        let Some(policy) = self.policy.as_mut() else {
            return Err("no ceilings are configured".into());
        };
        policy.approve(session_id, usd, tokens, calls);
        policy.save();
        self.sessions
            .set_outcome(session_id, Outcome::Completed, Some("approved".into()));
        let keys = self.tree.live_subtree(root);
        for k in &keys {
            self.gate_set(k.tgid, GATE_ARMED);
            // Held socket writes go out now (TCP sends what it queued).
            for held in self.held_sockets.remove(&k.tgid).unwrap_or_default() {
                self.release_held(k.tgid, held);
            }
            self.estimates.allow(k.tgid);
        }
        let n = enforce::signal(&self.tree, &keys, libc::SIGCONT);
        Ok(Approved {
            approved: session_id.to_string(),
            continued: n,
        })
    }

    /// `agentwatch kill SESSION`: SIGKILL the whole session tree.
    pub fn kill_session(&mut self, session_id: &str) -> Result<Killed, String> {
        let Some(root) = self.sessions.root_of(session_id) else {
            return Err(format!("no open session {session_id}"));
        };
        self.sessions.set_outcome(
            session_id,
            Outcome::Killed,
            Some("killed by agentwatch kill".into()),
        );
        if let Some(policy) = self.policy.as_mut() {
            let s = policy.session(session_id, None);
            s.outcome = Outcome::Killed;
            policy.save();
        }
        let keys = self.tree.live_subtree(root);
        for k in &keys {
            self.gate_set(k.tgid, GATE_KILL);
        }
        // A stopped process dies on SIGKILL too.
        let n = enforce::signal(&self.tree, &keys, libc::SIGKILL);
        Ok(Killed {
            killed: session_id.to_string(),
            processes: n,
        })
    }

    /// `[[session_roots]]`: a process that matches a rule at exec starts its session now.
    pub(super) fn on_exec_policy(&mut self, tgid: u32, ts_ns: u64) {
        if !self.gating() {
            return;
        }
        let Some(key) = self.tree.key_of(tgid) else {
            return;
        };
        let Some(info) = self.tree.get(key).cloned() else {
            return;
        };
        if let Prospect::Session(aref) = self.sessions.prospect(&self.tree, key) {
            // Inside a gated session: a child forked before the daemon armed its parent did
            // not inherit the gate in the kernel; arm it now, before it calls.
            let gated = self
                .policy
                .as_ref()
                .is_some_and(|p| p.sessions.contains_key(&aref.session_id));
            if gated
                && let Some(g) = self.gate.as_mut()
                && g.get(tgid).is_none()
            {
                g.set(tgid, GATE_ARMED);
            }
            return;
        }
        let policy = self.policy.as_mut().expect("gating");
        let Some(limits) = policy.root_rule(&info) else {
            return;
        };
        let aref = self.sessions.start_root(&self.tree, key, ts_ns);
        let policy = self.policy.as_mut().expect("gating");
        policy.set_limits(&aref.session_id, limits);
        policy.save();
        self.gate_set(tgid, GATE_ARMED);
    }

    /// After a restart: put open sessions back in the gate, and release or keep what the
    /// previous daemon paused (`on_restart`); decide holds it left undecided.
    pub fn restore_policy(&mut self, now_ns: u64) {
        if !self.gating() {
            return;
        }
        let policy = self.policy.as_mut().expect("gating");
        let on_restart = policy.on_restart();
        let ids: Vec<String> = policy.sessions.keys().cloned().collect();
        for id in ids {
            let Some(totals) = self.sessions.totals(&id) else {
                self.policy.as_mut().expect("gating").forget(&id);
                continue;
            };
            let policy = self.policy.as_mut().expect("gating");
            let s = policy.session(&id, None);
            s.calls_started = s.calls_started.max(totals.calls);
            let (hits, outcome, reason) = (s.hits, s.outcome, s.reason.clone());
            let paused: Vec<ProcKey> = s.paused.iter().copied().collect();
            let dests = crate::policy::endpoints(s);
            self.sessions
                .restore_ceiling_state(&id, hits, outcome, reason);
            let keys = self.tree.live_subtree(totals.root);
            match outcome {
                Outcome::Paused if on_restart == OnRestart::Keep => {
                    for k in &keys {
                        self.gate_set(k.tgid, GATE_PAUSED);
                    }
                }
                Outcome::Paused => {
                    // Released: it runs again, and its next LLM call meets the ceiling again.
                    // A process paused at a hold is stopped inside the write the uprobe already
                    // passed: its LLM connections are cut first, so that write fails instead
                    // of leaving the host over the ceiling.
                    for k in &keys {
                        self.gate_set(k.tgid, GATE_ARMED);
                    }
                    let mut cut = 0;
                    for k in &paused {
                        cut += enforce::cut_connections(k.tgid, &dests).len();
                    }
                    self.policy.as_mut().expect("gating").stats.connections_cut += cut as u64;
                    enforce::signal(&self.tree, &paused, libc::SIGCONT);
                }
                Outcome::Killed => {
                    for k in &keys {
                        self.gate_set(k.tgid, GATE_KILL);
                    }
                    enforce::signal(&self.tree, &keys, libc::SIGKILL);
                }
                Outcome::Blocked => {
                    for k in &keys {
                        if let Some(g) = self.gate.as_mut() {
                            g.set(k.tgid, GATE_BLOCKED);
                            g.refuse(k.tgid, dests.iter().copied());
                        }
                    }
                }
                Outcome::Completed => self.arm_session(&id),
            }
        }
        // Open sessions the policy had no entry for (e.g. ceilings added since) are gated too.
        for id in self.sessions.open_ids() {
            let root_info = self
                .sessions
                .root_of(&id)
                .and_then(|r| self.tree.get(r))
                .cloned();
            self.policy
                .as_mut()
                .expect("gating")
                .session(&id, root_info.as_ref());
            self.arm_session(&id);
        }
        // Holds the previous daemon never decided (their records died with its ring buffer):
        // session processes stopped though not paused by us. Decide as for a new call.
        let mut held = Vec::new();
        for id in self.sessions.open_ids() {
            let Some(root) = self.sessions.root_of(&id) else {
                continue;
            };
            let paused = self
                .policy
                .as_mut()
                .expect("gating")
                .session(&id, None)
                .paused
                .clone();
            held.extend(
                self.tree
                    .live_subtree(root)
                    .into_iter()
                    .filter(|k| !paused.contains(k) && enforce::is_stopped(k.tgid)),
            );
        }
        for key in held {
            if !self.tree.is_live(key) {
                continue;
            }
            let verdict = match self.sessions.prospect(&self.tree, key) {
                Prospect::Session(aref) => self.sessions.totals(&aref.session_id).and_then(|t| {
                    self.policy
                        .as_mut()
                        .expect("gating")
                        .check_start(&t, aref.depth, now_ns)
                        .map(|h| (aref.session_id, h))
                }),
                Prospect::NewRoot => None,
            };
            match verdict {
                Some((id, hit)) => self.enforce(&id, &hit, now_ns, Some(key), key),
                None => {
                    self.gate_set(key.tgid, GATE_GRANTED);
                    cont(key.tgid);
                }
            }
        }
        let host_over = self.policy.as_mut().expect("gating").host_over(now_ns);
        if let Some(g) = self.gate.as_mut() {
            g.set_host_gate(host_over);
        }
        self.policy.as_mut().expect("gating").save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines_without_keeping_text() {
        let req = classify(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 9",
            7,
        )
        .unwrap();
        assert_eq!(
            (req.provider.as_str(), req.api.as_str()),
            ("openai", "chat.completions")
        );
        assert_eq!(req.server_address.as_deref(), Some("api.openai.com"));
        assert!(classify(b"POST /v1/messages?beta=true HTTP/1.1\r\n", 0).is_some());
        assert!(classify(b"GET /index.html HTTP/1.1\r\n", 0).is_none());
        assert!(classify(b"{\"model\":\"gpt-4o\",\"messages\":[", 0).is_none());
        assert!(classify(b"", 0).is_none());
    }
}
