//! The pipeline's side of ceilings: what it tells the enforcer (`policy::Enforcer`), which
//! decides and acts, and the held writes it reads first (an SSL write's first bytes, a
//! metered socket's turns). The design and why it has no race are in `crate::policy`.
use agentwatch_ebpf::{GATE_ARMED, GATE_BLOCKED, GATE_KILL, GATE_PAUSED};

use super::Pipeline;
use super::estimates::HeldWrite;
use crate::capture::{Connection, Http2Hold};
use crate::control::replies::{Approved, Killed, Paused};
use crate::policy::{Action, Enforcer, HeldSocket, Hold, Rows, World, enforce};
use crate::providers::{Api, LlmRequest, provider_name};
use crate::sessions::{CallRecord, CeilingHit, Outcome};
use crate::sinks::Sink;

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

/// The pipeline's sink, where the enforcer's rows go (a write that fails is counted).
pub(super) struct Out<'a> {
    pub(super) sink: &'a mut (dyn Sink + Send),
    pub(super) sink_errors: &'a mut u64,
}

impl Rows for Out<'_> {
    fn call(&mut self, row: &CallRecord) {
        if let Err(e) = self.sink.write_call(row) {
            *self.sink_errors += 1;
            tracing::error!("{e}");
        }
    }

    fn ceiling_hit(&mut self, row: &CeilingHit) {
        if let Err(e) = self.sink.write_ceiling_hit(row) {
            *self.sink_errors += 1;
            tracing::error!("{e}");
        }
    }

    fn notice(&mut self, row: &crate::sessions::Notice) {
        tracing::warn!(
            session = row.session_id,
            event = row.event,
            "{}",
            row.message
        );
        if let Err(e) = self.sink.write_notice(row) {
            *self.sink_errors += 1;
            tracing::error!("{e}");
        }
    }
}

fn cont(tgid: u32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
}

impl Pipeline {
    /// The enforcer, and the world it acts on: the pipeline's tree, sessions and sink.
    fn enforcing(&mut self) -> Option<(&mut Enforcer, World<'_, Out<'_>>)> {
        let enforcer = self.enforcer.as_mut()?;
        let world = World {
            tree: &self.tree,
            pricing: &self.pricing,
            sessions: &mut self.sessions,
            rows: Out {
                sink: &mut *self.sink,
                sink_errors: &mut self.stats.sink_errors,
            },
        };
        Some((enforcer, world))
    }

    /// … when a ceiling is configured at all (otherwise nothing is gated).
    fn gated(&mut self) -> Option<(&mut Enforcer, World<'_, Out<'_>>)> {
        self.enforcing().filter(|(e, _)| e.enabled())
    }

    /// A held process that cannot be judged runs on.
    fn let_go(&mut self, tgid: u32) {
        match self.enforcer.as_mut() {
            Some(e) => e.grant(tgid),
            None => cont(tgid),
        }
    }

    /// A request was written: count it, and make sure its session is gated.
    pub(super) fn after_request(&mut self, session_id: &str, ts_ns: u64) {
        if let Some(e) = self.enforcer.as_mut().filter(|e| e.enabled()) {
            e.request_started(&self.tree, &self.sessions, session_id, ts_ns);
        }
    }

    /// A call was accounted: the enforcer counts its spend, and stops its session at once if
    /// it reached a ceiling.
    pub(super) fn after_call(&mut self, record: &CallRecord, ts_ns: u64) {
        if let Some((e, mut w)) = self.gated() {
            e.call_accounted(&mut w, record, ts_ns);
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
        // Its record came: not a hold the watchdog should decide.
        self.unannounced_gate.remove(&tgid);
        let Some(key) = self.tree.ensure(tgid) else {
            self.let_go(tgid);
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
        let Some((e, mut w)) = self.enforcing() else {
            cont(tgid);
            return;
        };
        let hold = Hold {
            tgid,
            key,
            state,
            ts_ns,
        };
        e.ssl_hold(&mut w, hold, req, rearm);
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
        self.unannounced_gate.remove(&tgid);
        let mut held = HeldSocket::new(fd, cookie);
        let key = self.tree.ensure(tgid);
        let (Some(key), Some(e)) = (key, self.enforcer.as_mut()) else {
            if let Some(e) = self.enforcer.as_mut() {
                e.release_socket(cookie);
            }
            self.let_go(tgid);
            return;
        };
        e.count_socket_hold(cookie);
        if state == GATE_PAUSED {
            // Continued by someone else while paused: it stays stopped until approved.
            e.keep_held(tgid, held);
            return;
        }
        if state == GATE_KILL {
            // A session being killed wrote again: what it queued is discarded, then it dies.
            held.abort_on_close(tgid);
            e.keep_held(tgid, held);
            self.estimates.deny(tgid, fd);
            // SAFETY: kill(2) with integer arguments.
            unsafe { libc::kill(tgid as i32, libc::SIGKILL) };
            return;
        }
        let kind = self.estimates.held_write(tgid, fd, len);
        if kind != HeldWrite::Request {
            e.release_socket(cookie);
            e.not_a_request(tgid, state, kind == HeldWrite::Handshake);
            return;
        }
        // Should the process die now, its socket aborts rather than send what it queued
        // (undone on a grant).
        held.abort_on_close(tgid);
        // The answered turn before this write is charged first, so the decision sees it;
        // charging it may stop the session by itself (the fast path of `after_call`).
        let before = e.gate_state(tgid);
        let mut out = Vec::new();
        self.estimates.end_answered_turn(tgid, fd, &mut out);
        self.charge_estimates(out);
        let req = self.estimates.held_request(tgid, fd, ts_ns);
        let Some((e, mut w)) = self.enforcing() else {
            cont(tgid);
            return;
        };
        let Some(req) = req else {
            e.release_held(tgid, held);
            cont(tgid);
            return;
        };
        let now = e.gate_state(tgid);
        let denied = if now != before
            && let Some(stopped @ (GATE_KILL | GATE_PAUSED | GATE_BLOCKED)) = now
        {
            // Stopped just now: the held request is an attempt that never left.
            let row = w.sessions.blocked_attempt(w.tree, key, &req, ts_ns);
            w.rows.call(&row);
            let action = match stopped {
                GATE_KILL => Action::Kill,
                GATE_PAUSED => Action::Pause,
                _ => Action::Block,
            };
            e.deny_socket(tgid, held, action);
            if stopped == GATE_BLOCKED {
                cont(tgid);
            }
            Some(action)
        } else {
            let hold = Hold {
                tgid,
                key,
                state,
                ts_ns,
            };
            e.decide_hold(&mut w, hold, &req, Some(held))
        };
        // Nothing more of a killed or blocked connection is an estimated call.
        if matches!(denied, Some(Action::Kill | Action::Block)) {
            self.estimates.deny(tgid, fd);
        }
    }

    /// Watchdogs and upkeep (every tick): see `Enforcer::continue_stuck`, and holds whose
    /// record never came, decided once seen on two ticks in a row (a record written since
    /// the last drain is read first).
    pub(super) fn tick_policy(&mut self, now_ns: u64) {
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        let pending = &self.pending_contacts;
        e.continue_stuck(|tgid| pending.contains(tgid));
        e.expire_held_sockets(now_ns);
        if let Some((e, mut w)) = self.gated() {
            e.tick_paused(&mut w, now_ns);
        }
        let Some(e) = self.enforcer.as_mut() else {
            return;
        };
        let held = e.held_and_stopped();
        let seen_before = std::mem::take(&mut self.unannounced_gate);
        for tgid in held {
            if seen_before.contains(&tgid) {
                self.unannounced_gate_hold(tgid, now_ns);
            } else {
                self.unannounced_gate.insert(tgid);
            }
        }
    }

    /// A gated process stopped at a write (the gate says held) whose hold record a full
    /// ring buffer dropped: decided as a request of an unknown API, so it is granted within
    /// its ceilings and denied over them; neither left stopped nor let through unchecked.
    fn unannounced_gate_hold(&mut self, tgid: u32, ts_ns: u64) {
        tracing::warn!(
            pid = tgid,
            "a gated process was stopped at a write whose record was lost (ring buffer full); deciding it now"
        );
        let Some(key) = self.tree.ensure(tgid) else {
            self.let_go(tgid);
            return;
        };
        let Some((e, mut w)) = self.enforcing() else {
            cont(tgid);
            return;
        };
        e.count_unannounced_hold();
        let req = LlmRequest::unidentified("unknown", ts_ns);
        let hold = Hold {
            tgid,
            key,
            state: GATE_ARMED,
            ts_ns,
        };
        e.ssl_hold(&mut w, hold, Some(req), false);
    }

    /// `agentwatch approve SESSION [--raise-usd X] [--raise-tokens N] [--raise-calls N]`.
    pub fn approve(
        &mut self,
        session_id: &str,
        usd: f64,
        tokens: u64,
        calls: u64,
    ) -> Result<Approved, String> {
        let id = self.sessions.resolve_open(session_id)?;
        let session_id = id.as_str();
        let Some(root) = self.sessions.root_of(session_id) else {
            return Err(format!("no open session {session_id}"));
        };
        let Some(e) = self.enforcer.as_mut() else {
            return Err("no ceilings are configured".into());
        };
        self.sessions
            .set_outcome(session_id, Outcome::Completed, Some("approved".into()));
        let keys = self.tree.live_subtree(root);
        for k in &keys {
            self.estimates.allow(k.tgid);
        }
        let n = e.approve(&self.tree, session_id, &keys, usd, tokens, calls);
        Ok(Approved {
            approved: session_id.to_string(),
            continued: n,
        })
    }

    /// `agentwatch kill SESSION`: SIGKILL the whole session tree.
    pub fn kill_session(&mut self, session_id: &str) -> Result<Killed, String> {
        let id = self.sessions.resolve_open(session_id)?;
        let session_id = id.as_str();
        let Some(root) = self.sessions.root_of(session_id) else {
            return Err(format!("no open session {session_id}"));
        };
        self.sessions.set_outcome(
            session_id,
            Outcome::Killed,
            Some("killed by agentwatch kill".into()),
        );
        let keys = self.tree.live_subtree(root);
        if let Some(e) = self.enforcer.as_mut() {
            e.kill(session_id, &keys);
        }
        // A stopped process dies on SIGKILL too.
        let n = enforce::signal(&self.tree, &keys, libc::SIGKILL);
        Ok(Killed {
            killed: session_id.to_string(),
            processes: n,
        })
    }

    /// `agentwatch pause`: the session is stopped as a `pause` ceiling would stop it (its
    /// tree SIGSTOPped, held at the gate, recorded as a `manual` hit, notified), so
    /// `approve` and `kill` work on it the same way.
    pub fn pause_session(&mut self, session_id: &str) -> Result<Paused, String> {
        let id = self.sessions.resolve_open(session_id)?;
        let Some(root) = self.sessions.root_of(&id) else {
            return Err(format!("no open session {id}"));
        };
        let ts_ns = crate::sessions::clock::boot_now_ns();
        let Some((e, mut w)) = self.enforcing() else {
            return Err("the policy stage is not running".into());
        };
        let hit = crate::policy::Hit {
            ceiling: "manual",
            limit: 0.0,
            value: 0.0,
            action: Action::Pause,
            detail: Some("paused by agentwatch pause".into()),
        };
        let before = e.stats().processes_paused;
        e.enforce(&mut w, &id, &hit, ts_ns, None, root);
        let processes = (e.stats().processes_paused - before) as usize;
        Ok(Paused {
            paused: id,
            processes,
        })
    }

    /// `[[session_roots]]`: a process that matches a rule at exec starts its session now.
    pub(super) fn on_exec_policy(&mut self, tgid: u32, ts_ns: u64) {
        if let Some(e) = self.enforcer.as_mut().filter(|e| e.enabled()) {
            e.on_exec(&self.tree, &mut self.sessions, tgid, ts_ns);
        }
    }

    /// After a restart: see `Enforcer::restore`.
    pub fn restore_policy(&mut self, now_ns: u64) {
        if let Some((e, mut w)) = self.gated() {
            e.restore(&mut w, now_ns);
        }
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
