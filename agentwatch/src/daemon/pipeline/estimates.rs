//! Honest estimates for TLS no hook covers: a socket connected to an estimate port whose
//! ClientHello names a known LLM host (SNI) is metered by length only. Each request/response
//! turn becomes a call with `usage_source = "estimated"`: input tokens from the bytes sent,
//! output tokens unknown, bounds stated. A turn during which the same process's TLS was seen
//! exactly (any hook) is dropped: the exact call stands for it.
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use agentwatch_ebpf::DIR_WRITE;

use crate::accounting::{Estimate, Usage, UsageSource};
use crate::providers::{LlmCall, LlmRequest};

/// Plaintext bytes per input token, measured on Claude Code and Codex requests (±20%).
const BYTES_PER_TOKEN: f64 = 4.7;
const ERROR: f64 = 0.2;
/// TLS 1.3 record overhead: 5-byte header, content type byte, 16-byte tag; records hold at
/// most 16 KiB of plaintext.
const RECORD_OVERHEAD: u64 = 22;
const RECORD_PLAINTEXT: u64 = 16 * 1024;
/// The client's Finished (and change_cipher_spec) at the start of the first turn.
const FINISHED: u64 = 80;
/// HTTP request line and headers, taken off the body's bytes.
const HEADERS: u64 = 400;
/// A write after at least this many bytes read (since the last write) starts a new turn:
/// session tickets and pings are smaller than a response.
const MIN_RESPONSE: u64 = 200;
/// A turn smaller than this (sent) is no request yet (the Finished): it goes on.
const MIN_REQUEST: u64 = 300;
/// Metered connections at most; the oldest is dropped past it.
const MAX_CONNECTIONS: usize = 4096;
/// Binaries listed in status at most.
const MAX_BINARIES: usize = 256;

#[derive(Debug, Clone, Default, Serialize)]
pub struct EstimateStats {
    /// First writes of sockets connected to an estimate port seen (ClientHellos or not).
    pub hellos: u64,
    /// … of which named a known LLM host: metered.
    pub metered_connections: u64,
    pub estimated_calls: u64,
    /// Turns dropped because the process's TLS was captured exactly meanwhile.
    pub superseded_turns: u64,
    /// Metered connections dropped at `MAX_CONNECTIONS`.
    pub connections_dropped: u64,
    /// Socket byte counts for a connection not (or no longer) tracked.
    pub unknown_socket_events: u64,
}

struct Conn {
    host: String,
    provider: String,
    exe: String,
    /// The server's first flight was read: the handshake is over for the client's next write.
    server_spoke: bool,
    turn: Option<Turn>,
    first_turn: bool,
    /// A ceiling stopped a request on this connection: what follows is no call (the held
    /// bytes never leave the host); the attempt is on record as blocked instead.
    denied: bool,
    last_ns: u64,
}

struct Turn {
    started_ns: u64,
    sent: u64,
    received: u64,
    received_since_write: u64,
    ended_ns: u64,
    /// Its request was reported (it reached `MIN_REQUEST` bytes sent).
    announced: bool,
}

/// What the metered bytes became, for process `tgid`: a request started (as soon as a turn
/// has sent `MIN_REQUEST` bytes, so its session is gated from its first call), then the
/// call to charge when the turn ends.
pub enum Estimated {
    Request { tgid: u32, request: LlmRequest },
    Call { tgid: u32, call: LlmCall },
}

/// What a held write on a metered socket is, for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldWrite {
    /// The start of a request (a new turn, or the first request after the handshake).
    Request,
    /// Handshake bytes (the Finished): the request may follow without a read; keep holding.
    Handshake,
    /// More of the request under way, or a connection not metered.
    Other,
}

#[derive(Default)]
pub struct Estimates {
    conns: HashMap<(u32, u64), Conn>,
    /// Boot ns of the last plaintext any hook captured, per process.
    exact_seen: HashMap<u32, u64>,
    pub stats: EstimateStats,
    /// Executable → (host, calls) of estimated traffic, for status.
    pub binaries: BTreeMap<String, (String, u64)>,
}

impl Estimates {
    /// The ClientHello of a new socket: whether to meter it (an LLM host by SNI).
    pub fn on_hello(
        &mut self,
        tgid: u32,
        fd: u64,
        hello: &[u8],
        ts_ns: u64,
        exe: impl FnOnce() -> String,
    ) -> bool {
        self.stats.hellos += 1;
        let Some(host) = crate::protocol::tls_hello::server_name(hello) else {
            return false;
        };
        let Some(provider) = crate::providers::provider_for_host(&host) else {
            return false;
        };
        if self.conns.len() >= MAX_CONNECTIONS
            && let Some(oldest) = self
                .conns
                .iter()
                .min_by_key(|(_, c)| c.last_ns)
                .map(|(k, _)| *k)
        {
            self.conns.remove(&oldest);
            self.stats.connections_dropped += 1;
        }
        self.stats.metered_connections += 1;
        self.conns.insert(
            (tgid, fd),
            Conn {
                host,
                provider: provider.to_string(),
                exe: exe(),
                server_spoke: false,
                turn: None,
                first_turn: true,
                denied: false,
                last_ns: ts_ns,
            },
        );
        true
    }

    /// Plaintext a hook captured for `tgid` (any connection). Called per captured chunk:
    /// nothing to keep while no socket is metered (only turns after now would ask).
    pub fn on_exact(&mut self, tgid: u32, ts_ns: u64) {
        if !self.conns.is_empty() {
            self.exact_seen.insert(tgid, ts_ns);
        }
    }

    pub fn on_bytes(
        &mut self,
        tgid: u32,
        fd: u64,
        direction: u32,
        len: u32,
        ts_ns: u64,
        out: &mut Vec<Estimated>,
    ) {
        let Some(conn) = self.conns.get_mut(&(tgid, fd)) else {
            self.stats.unknown_socket_events += 1;
            return;
        };
        conn.last_ns = ts_ns;
        let len = u64::from(len);
        if direction != DIR_WRITE {
            match conn.turn.as_mut() {
                Some(t) => {
                    t.received += len;
                    t.received_since_write += len;
                    t.ended_ns = ts_ns;
                }
                None => conn.server_spoke = true,
            }
            return;
        }
        if !conn.server_spoke || conn.denied {
            // ClientHello retries, early data: before the handshake ends, nothing counts;
            // after a denial, nothing of it left the host.
            return;
        }
        if conn.turn.as_ref().is_some_and(Turn::answered) {
            let turn = conn.turn.take().expect("checked");
            self.finish(tgid, fd, turn, out);
        }
        let conn = self.conns.get_mut(&(tgid, fd)).expect("present");
        let turn = conn.turn.get_or_insert(Turn {
            started_ns: ts_ns,
            sent: 0,
            received: 0,
            received_since_write: 0,
            ended_ns: ts_ns,
            announced: false,
        });
        turn.sent += len;
        turn.received_since_write = 0;
        turn.ended_ns = ts_ns;
        if !turn.announced && turn.sent >= MIN_REQUEST {
            turn.announced = true;
            let request = request_of(conn, conn.turn.as_ref().expect("present"));
            out.push(Estimated::Request { tgid, request });
        }
    }

    /// What a gated process's held write on `fd` would be, from what the connection did so
    /// far (the write itself has not been counted yet).
    pub fn held_write(&self, tgid: u32, fd: u64, len: u64) -> HeldWrite {
        let Some(conn) = self.conns.get(&(tgid, fd)) else {
            return HeldWrite::Other;
        };
        if conn.denied {
            return HeldWrite::Request;
        }
        if !conn.server_spoke {
            return HeldWrite::Handshake;
        }
        match &conn.turn {
            Some(t) if t.answered() => HeldWrite::Request,
            Some(t) if t.announced => HeldWrite::Other,
            // Nothing requested yet: a short write finishes the handshake, a long one asks.
            Some(t) if t.sent + len < MIN_REQUEST => HeldWrite::Handshake,
            None if len < MIN_REQUEST => HeldWrite::Handshake,
            _ => HeldWrite::Request,
        }
    }

    /// A held write starts a new turn: the answered one before it ends now, so that the
    /// decision sees it charged.
    pub fn end_answered_turn(&mut self, tgid: u32, fd: u64, out: &mut Vec<Estimated>) {
        let Some(conn) = self.conns.get_mut(&(tgid, fd)) else {
            return;
        };
        if conn.turn.as_ref().is_some_and(Turn::answered) {
            let turn = conn.turn.take().expect("checked");
            self.finish(tgid, fd, turn, out);
        }
    }

    /// The request a held write starts, as far as the connection tells (no model).
    pub fn held_request(&self, tgid: u32, fd: u64, ts_ns: u64) -> Option<LlmRequest> {
        let conn = self.conns.get(&(tgid, fd))?;
        let turn = Turn {
            started_ns: ts_ns,
            sent: 0,
            received: 0,
            received_since_write: 0,
            ended_ns: ts_ns,
            announced: false,
        };
        Some(request_of(conn, &turn))
    }

    /// A ceiling stopped the held write on `fd`: nothing more of this connection is a call.
    pub fn deny(&mut self, tgid: u32, fd: u64) {
        if let Some(conn) = self.conns.get_mut(&(tgid, fd)) {
            conn.denied = true;
            if conn.turn.as_ref().is_some_and(|t| !t.announced) {
                conn.turn = None;
            }
        }
    }

    /// The session was approved: its denied connections carry calls again.
    pub fn allow(&mut self, tgid: u32) {
        for ((t, _), conn) in self.conns.iter_mut() {
            if *t == tgid {
                conn.denied = false;
            }
        }
    }

    pub fn on_close(&mut self, tgid: u32, fd: u64, out: &mut Vec<Estimated>) {
        if let Some(mut conn) = self.conns.remove(&(tgid, fd))
            && let Some(turn) = conn.turn.take()
        {
            self.conns.insert((tgid, fd), conn);
            self.finish(tgid, fd, turn, out);
            self.conns.remove(&(tgid, fd));
        }
    }

    /// The process exited: its connections end.
    pub fn on_exit(&mut self, tgid: u32, out: &mut Vec<Estimated>) {
        let fds: Vec<u64> = self
            .conns
            .keys()
            .filter(|k| k.0 == tgid)
            .map(|k| k.1)
            .collect();
        for fd in fds {
            self.on_close(tgid, fd, out);
        }
        self.exact_seen.remove(&tgid);
    }

    fn finish(&mut self, tgid: u32, fd: u64, turn: Turn, out: &mut Vec<Estimated>) {
        let Some(conn) = self.conns.get_mut(&(tgid, fd)) else {
            return;
        };
        let first = std::mem::replace(&mut conn.first_turn, false);
        if turn.received == 0 || !turn.announced || conn.denied {
            // Never answered, never a request (a handshake that ended), or stopped by a
            // ceiling: nothing to say it was a call.
            return;
        }
        if self
            .exact_seen
            .get(&tgid)
            .is_some_and(|t| *t >= turn.started_ns)
        {
            self.stats.superseded_turns += 1;
            return;
        }
        let records = turn.sent.div_ceil(RECORD_PLAINTEXT + RECORD_OVERHEAD);
        let plain = turn
            .sent
            .saturating_sub(records * RECORD_OVERHEAD)
            .saturating_sub(if first { FINISHED } else { 0 })
            .saturating_sub(HEADERS);
        let tokens = plain as f64 / BYTES_PER_TOKEN;
        let input = tokens.round() as u64;
        let estimate = Estimate {
            input_tokens_low: (tokens * (1.0 - ERROR)).floor() as u64,
            input_tokens_high: (tokens * (1.0 + ERROR)).ceil() as u64,
            output_unknown: true,
            basis: format!(
                "SNI {}: {} bytes sent, {} received; input ≈ (sent − TLS records, handshake and headers) ÷ {BYTES_PER_TOKEN} ± {:.0}%",
                conn.host,
                turn.sent,
                turn.received,
                ERROR * 100.0
            ),
            cost_usd_high: None,
        };
        self.stats.estimated_calls += 1;
        if self.binaries.len() < MAX_BINARIES || self.binaries.contains_key(&conn.exe) {
            let entry = self
                .binaries
                .entry(conn.exe.clone())
                .or_insert_with(|| (conn.host.clone(), 0));
            entry.0 = conn.host.clone();
            entry.1 += 1;
        }
        let mut request = request_of(conn, &turn);
        request.request_bytes = turn.sent;
        out.push(Estimated::Call {
            tgid,
            call: LlmCall {
                request,
                status: None,
                response_model: None,
                response_id: None,
                usage: Usage {
                    input_tokens: input,
                    ..Usage::default()
                },
                usage_source: UsageSource::Estimated,
                complete: true,
                ended_at_ns: turn.ended_ns,
                response_bytes: turn.received,
                estimate: Some(estimate),
            },
        });
    }
}

impl Turn {
    /// A request went out and a response came back since the last write: the next write
    /// starts a new turn. Session tickets and pings are smaller than `MIN_RESPONSE`.
    fn answered(&self) -> bool {
        self.received_since_write >= MIN_RESPONSE && self.sent >= MIN_REQUEST
    }
}

fn request_of(conn: &Conn, turn: &Turn) -> LlmRequest {
    LlmRequest {
        provider: conn.provider.clone(),
        api: "unknown".into(),
        server_address: Some(conn.host.clone()),
        model: None,
        streaming: false,
        http_version: "unknown".into(),
        started_at_ns: turn.started_ns,
        request_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwatch_ebpf::DIR_READ;

    fn calls(out: &[Estimated]) -> Vec<&LlmCall> {
        out.iter()
            .filter_map(|e| match e {
                Estimated::Call { call, .. } => Some(call),
                Estimated::Request { .. } => None,
            })
            .collect()
    }

    fn requests(out: &[Estimated]) -> usize {
        out.iter()
            .filter(|e| matches!(e, Estimated::Request { .. }))
            .count()
    }

    fn hello(name: &str) -> Vec<u8> {
        crate::protocol::tls_hello::tests::client_hello(name)
    }

    /// Handshake, then `calls` request/response turns of `body` bytes each, with session
    /// tickets read between the Finished and the first request.
    fn run(e: &mut Estimates, body: u64, calls: usize) -> Vec<Estimated> {
        let mut out = Vec::new();
        assert!(e.on_hello(7, 3, &hello("api.anthropic.com"), 1, || "/opt/agent".into()));
        e.on_bytes(7, 3, DIR_READ, 4000, 2, &mut out); // server flight
        e.on_bytes(7, 3, DIR_WRITE, 80, 3, &mut out); // Finished
        e.on_bytes(7, 3, DIR_READ, 500, 4, &mut out); // tickets
        let mut ts = 10;
        for _ in 0..calls {
            e.on_bytes(7, 3, DIR_WRITE, 16406 + 22, ts, &mut out);
            e.on_bytes(
                7,
                3,
                DIR_WRITE,
                (body - 16406 + 22) as u32,
                ts + 1,
                &mut out,
            );
            e.on_bytes(7, 3, DIR_READ, 3000, ts + 5, &mut out);
            ts += 100;
        }
        e.on_close(7, 3, &mut out);
        out
    }

    #[test]
    fn turns_become_estimated_calls_with_bounds() {
        let mut e = Estimates::default();
        let out = run(&mut e, 40_000 + HEADERS, 3);
        assert_eq!(requests(&out), 3);
        assert_eq!(calls(&out).len(), 3);
        // Each request is reported as it starts, its call when the next one starts.
        assert!(matches!(out[0], Estimated::Request { .. }));
        assert!(matches!(out[1], Estimated::Call { .. }));
        assert!(matches!(out[2], Estimated::Request { .. }));
        for (i, call) in calls(&out).into_iter().enumerate() {
            assert_eq!(call.usage_source, UsageSource::Estimated);
            assert_eq!(call.request.provider, "anthropic");
            let bounds = call.estimate.as_ref().unwrap();
            let truth = 40_000.0 / BYTES_PER_TOKEN;
            assert!(
                (bounds.input_tokens_low as f64) <= truth
                    && truth <= bounds.input_tokens_high as f64,
                "call {i}: {bounds:?} vs {truth}"
            );
            assert!(call.usage.input_tokens >= bounds.input_tokens_low);
            assert!(call.usage.input_tokens <= bounds.input_tokens_high);
            assert_eq!(call.usage.output_tokens, 0);
            assert!(bounds.output_unknown);
        }
        assert_eq!(e.binaries["/opt/agent"], ("api.anthropic.com".into(), 3));
    }

    #[test]
    fn exact_capture_supersedes_and_other_hosts_are_not_metered() {
        let mut e = Estimates::default();
        // Exact plaintext while the socket is metered, after its turn began.
        let mut out = Vec::new();
        assert!(e.on_hello(7, 3, &hello("api.anthropic.com"), 1, || "x".into()));
        e.on_bytes(7, 3, DIR_READ, 4000, 2, &mut out);
        e.on_bytes(7, 3, DIR_WRITE, 40_000, 3, &mut out);
        e.on_exact(7, 4);
        e.on_bytes(7, 3, DIR_READ, 3000, 5, &mut out);
        e.on_close(7, 3, &mut out);
        assert!(calls(&out).is_empty());
        assert_eq!(e.stats.superseded_turns, 1);
        assert!(!e.on_hello(7, 4, &hello("example.com"), 1, || "x".into()));
        assert!(!e.on_hello(7, 5, b"GET / HTTP/1.1\r\n\r\n", 1, || "x".into()));
        let mut out = Vec::new();
        e.on_bytes(7, 4, DIR_WRITE, 100, 2, &mut out);
        assert_eq!(e.stats.unknown_socket_events, 1);
    }

    /// What the gate is told of held writes: the Finished keeps holding, the first request
    /// and each request after an answer are requests, the rest of a request is not; a
    /// denied connection's bytes are no call.
    #[test]
    fn held_writes_are_classified_and_denied_turns_are_no_calls() {
        let mut e = Estimates::default();
        let mut out = Vec::new();
        assert_eq!(e.held_write(7, 3, 100), HeldWrite::Other, "not metered");
        assert!(e.on_hello(7, 3, &hello("api.openai.com"), 1, || "x".into()));
        assert_eq!(e.held_write(7, 3, 80), HeldWrite::Handshake);
        e.on_bytes(7, 3, DIR_READ, 4000, 2, &mut out);
        assert_eq!(e.held_write(7, 3, 80), HeldWrite::Handshake);
        e.on_bytes(7, 3, DIR_WRITE, 80, 3, &mut out);
        assert_eq!(e.held_write(7, 3, 5000), HeldWrite::Request);
        e.on_bytes(7, 3, DIR_WRITE, 5000, 4, &mut out);
        assert_eq!(requests(&out), 1);
        assert_eq!(e.held_write(7, 3, 5000), HeldWrite::Other, "same request");
        e.on_bytes(7, 3, DIR_READ, 3000, 5, &mut out);
        assert_eq!(
            e.held_write(7, 3, 5000),
            HeldWrite::Request,
            "after the answer"
        );
        e.end_answered_turn(7, 3, &mut out);
        assert_eq!(
            calls(&out).len(),
            1,
            "the answered turn is charged before deciding"
        );
        e.deny(7, 3);
        e.on_bytes(7, 3, DIR_WRITE, 5000, 6, &mut out);
        e.on_bytes(7, 3, DIR_READ, 3000, 7, &mut out);
        e.on_close(7, 3, &mut out);
        assert_eq!(
            (requests(&out), calls(&out).len()),
            (1, 1),
            "nothing after the denial"
        );
        // A connection that only shook hands is no call.
        let mut out = Vec::new();
        assert!(e.on_hello(7, 4, &hello("api.openai.com"), 1, || "x".into()));
        e.on_bytes(7, 4, DIR_READ, 4000, 2, &mut out);
        e.on_bytes(7, 4, DIR_WRITE, 80, 3, &mut out);
        e.on_bytes(7, 4, DIR_READ, 500, 4, &mut out);
        e.on_close(7, 4, &mut out);
        assert!(out.is_empty());
    }
}
