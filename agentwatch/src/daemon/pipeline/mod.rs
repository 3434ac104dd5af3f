//! The user-space pipeline: kernel events in, call and ledger rows out.
//!
//! One owner, driven by one task: process events update the tree, TLS chunks feed the
//! connection that owns them, recognised calls are priced and charged to their session,
//! and closed sessions become ledger rows. Nothing here blocks on the network.
mod ceilings;
mod contacts;
pub mod estimates;

pub use contacts::FirstContactStats;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use agentwatch_ebpf::{DIR_WRITE, EVENT_TLS_DATA, TLS_FLAG_AEAD, TLS_FLAG_LOSS_BEFORE, TlsData};
use serde::Serialize;

use crate::accounting::pricing::{Priced, Pricing};
use crate::capture::aead::{AeadOut, AeadStreams};
use crate::capture::{CaptureEvent, CaptureLimits, CaptureStats, Connection};
use crate::policy::Enforcer;
use crate::probes::KernelEvent;
use crate::procs::{ProcKey, ProcTree};
use crate::sessions::actions::ActionRow;
use crate::sessions::{CallOrigin, Sessions};
use crate::sinks::Sink;
use crate::workloads::{PodIndex, Workload, cgroup};

/// Counters of the pipeline itself (the capture layer has its own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineStats {
    pub records: u64,
    pub decode_errors: u64,
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    pub tls_chunks: u64,
    pub tls_handshakes: u64,
    /// Handshakes on an SSL pointer that still had a connection (freed and reused by the
    /// library): the old connection was closed first, so the two are never mixed.
    pub ssl_pointers_reused: u64,
    pub tls_bytes: u64,
    /// TLS chunks from a process that vanished before /proc could be read (charged to nobody).
    pub tls_chunks_unknown_process: u64,
    pub llm_requests: u64,
    pub llm_calls: u64,
    pub ledger_rows: u64,
    /// Processes of sessions that ran a program and made no LLM call (`actions.jsonl`).
    pub tool_runs: u64,
    /// File changes and connects of processes no daemon saw (they came and went while none
    /// ran), charged to the root of the session the kernel said they were in.
    pub charged_to_root: u64,
    /// File changes whose path the kernel could not read (at the call's entry nor its
    /// return): not recorded (an empty path would name the working directory).
    pub file_paths_unread: u64,
    /// Exits of processes of sessions no daemon saw start (they started before a restart and
    /// ended while no daemon ran), known from their exit record (start, name, whether they
    /// exec'd): tool runs all the same.
    pub session_exits_learnt: u64,
    /// The same without the kernel's offsets to read those: not tool runs.
    pub session_exits_unseen: u64,
    pub connections_open: u64,
    /// Connections evicted because `limits.max_connections` was reached.
    pub connections_evicted: u64,
    pub sink_errors: u64,
    /// First-write verdicts not handed to the daemon (queue full, or the process gone before
    /// its executable could be read).
    pub first_writes_dropped: u64,
    /// First contacts (a new connection's ClientHello for an LLM host, or for none) seen.
    pub first_contacts: u64,
    /// Held first contacts not queued for the daemon (queue full; continued at the deadline).
    pub contacts_dropped: u64,
}

/// A process stopped at its first contact, for the daemon to probe and continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldContact {
    pub tgid: u32,
    /// The ClientHello named a known LLM host (else none: probation).
    pub llm_host: bool,
    pub ts_ns: u64,
}

/// Held first contacts kept until the daemon takes them.
const MAX_CONTACTS: usize = 4096;

/// (device, inode) of the executable of live process `tgid`.
fn exe_identity(tgid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{tgid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// First-write verdicts kept until the daemon takes them.
const MAX_FIRST_WRITES: usize = 1024;

struct Conn {
    conn: Connection,
    key: ProcKey,
    last_seen_ns: u64,
    /// Ring position of the first record of the exchange in flight (none when idle): a next
    /// daemon must read the ring again from there to rebuild it.
    replay_from: Option<u64>,
}

/// What a daemon read again of the records its predecessor had read (see `probes::ring`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayStats {
    /// Records read again (only connection data is handled again).
    pub records: u64,
    /// Calls found again whose row the previous daemon had written (not written twice).
    pub calls_already_written: u64,
    /// Calls whose start the previous daemon had seen and that only this one saw end.
    pub calls_completed: u64,
    /// Exchanges in flight longer than the replay window allows (a quarter of the ring):
    /// the ring was handed back past them, so a restart then would lose them.
    pub window_exceeded: u64,
    /// Ring bytes read but not handed back now (what a next daemon would read again).
    pub ring_uncommitted_bytes: u64,
    /// File changes in records read again that the previous daemon's journal had counted.
    pub file_changes_already_counted: u64,
    /// Failed writes of the open sessions' file journal (`files-open.jsonl`).
    pub file_journal_errors: u64,
    /// Lines of the previous daemon's file journal not used at start (unreadable, or of a
    /// batch cut short: its records are read again from the ring).
    pub file_journal_lines_dropped: u64,
}

/// A host row waiting for the ClientHello of the connection that made it.
#[derive(Debug)]
struct PendingHost {
    tgid: u32,
    sock: u64,
    deadline_ns: u64,
    row: crate::sessions::actions::HostContact,
}

/// How long a host row waits for its connection's ClientHello (a TLS client sends it right
/// after the connect; anything else is written without a name at the next tick after this).
const HOST_SNI_WAIT_NS: u64 = 1_000_000_000;
/// Host rows waiting at most; more are written at once, without a name.
const MAX_PENDING_HOSTS: usize = 4096;
/// Processes whose marking time is remembered (their children forked before it are marked
/// late); beyond, such a child is not (its connects go unreported).
const MAX_MARKED: usize = 65_536;

pub struct Pipeline {
    pub tree: ProcTree,
    pub sessions: Sessions,
    pricing: Pricing,
    sink: Box<dyn Sink + Send>,
    limits: CaptureLimits,
    max_connections: usize,
    conns: HashMap<(u32, u64), Conn>,
    /// tgid → SSL pointers of its open connections, to close them when the process exits.
    conns_by_tgid: HashMap<u32, Vec<u64>>,
    pub stats: PipelineStats,
    pub capture_stats: CaptureStats,
    scratch: Vec<CaptureEvent>,
    /// TLS records from AEAD probes (rustls in opaque binaries), back into byte streams.
    pub aead: AeadStreams,
    /// Estimates for LLM-host sockets no hook covers, and the kernel's list of them.
    pub estimates: estimates::Estimates,
    meter: crate::probes::meter::Meter,
    /// The kernel's map of sessions' processes (their connects are reported).
    session_procs: crate::probes::session_procs::SessionProcs,
    /// (executable's device and inode, whether it looked like HTTP) of the first plaintext
    /// written on each new TLS connection, for the daemon to confirm or reject probes at
    /// located functions. The executable is read at once: the verdict may wait for an
    /// analysis, and the process may be gone by then.
    pub first_writes: Vec<((u64, u64), bool)>,
    /// Processes stopped at their first contact, for the daemon to probe and continue.
    contacts: Vec<HeldContact>,
    /// Host rows waiting for their connection's ClientHello (its SNI), written at it, at
    /// their deadline, or before their session's ledger row.
    pending_hosts: Vec<PendingHost>,
    /// Processes user space marked in `SESSION_PROCS` (a session's processes when it
    /// opened, and children forked before their parent was marked), with when: a child forked
    /// before that moment was not marked by the kernel, so it is marked when its fork is read.
    marked_at: HashMap<u32, u64>,
    /// (device, inode) of the executable of each process probed at its first contact, read
    /// then (it is alive for sure), for first-write verdicts that come after it exited.
    exe_ids: HashMap<u32, (u64, u64)>,
    /// … taken by the daemon and not continued yet.
    pending_contacts: contacts::Pending,
    /// Processes the kernel stopped until the read hook is on (tgid → boot ns of the stop):
    /// new ones, and those taken by the daemon and not continued yet.
    read_holds: Vec<u32>,
    /// Processes stopped at their exec for the file uprobes, not continued yet.
    file_holds: Vec<(u32, u64)>,
    pending_reads: HashMap<u32, u64>,
    /// Gated processes seen held and stopped at the last tick with no hold record read
    /// (`tick_policy`).
    unannounced_gate: HashSet<u32>,
    pub first_contact: FirstContactStats,
    /// Processes that exec'd or exited, whose per-process probes come off.
    /// (tgid, boot ns of the exec or exit): probes attached for a first contact after that
    /// moment belong to the new program and stay.
    probe_ends: Vec<(u32, u64)>,
    /// Processes probed on probation (their first contact named no host), and those found
    /// not to be agents, whose probes come off.
    probation: contacts::Probation,
    /// Ceilings (None when the daemon runs without its kernel gate, e.g. in unit tests).
    pub enforcer: Option<Enforcer>,
    /// Pod names for the container labels of calls.
    pods: Arc<PodIndex>,
    /// Labels of processes with an LLM request, read while they were alive (a call may
    /// complete as its process exits).
    origins: HashMap<ProcKey, CallOrigin>,
    /// Ring position of the record being handled.
    record_pos: u64,
    /// The record was read by the previous daemon too.
    replaying: bool,
    /// (pid, boot ns of the request's first byte) of calls already written by a previous
    /// daemon whose records may be read again.
    written: HashSet<(u32, u64)>,
    pub replay: ReplayStats,
    /// The open sessions' file changes on disk (`[actions] files`), and the ring position
    /// up to which a previous daemon's journal counted them.
    file_journal: Option<crate::sessions::file_journal::FileJournal>,
    files_counted_until: u64,
}

impl Pipeline {
    /// The JSONL sink's state (writes, errors, rotations), for `agentwatch status`.
    /// `status.pricing`.
    pub fn pricing_status(&self) -> crate::accounting::pricing::PricingStatus {
        self.pricing.status()
    }

    pub fn sink_health(&self) -> crate::sinks::SinkHealth {
        self.sink.health()
    }

    pub fn new(
        tree: ProcTree,
        sessions: Sessions,
        pricing: Pricing,
        sink: Box<dyn Sink + Send>,
        limits: CaptureLimits,
        max_connections: usize,
    ) -> Self {
        Self {
            tree,
            sessions,
            pricing,
            sink,
            limits,
            max_connections: max_connections.max(1),
            conns: HashMap::new(),
            conns_by_tgid: HashMap::new(),
            stats: PipelineStats::default(),
            capture_stats: CaptureStats::default(),
            scratch: Vec::new(),
            aead: AeadStreams::default(),
            estimates: estimates::Estimates::default(),
            meter: crate::probes::meter::Meter::disabled(),
            session_procs: crate::probes::session_procs::SessionProcs::disabled(),
            first_writes: Vec::new(),
            contacts: Vec::new(),
            pending_hosts: Vec::new(),
            marked_at: HashMap::new(),
            exe_ids: HashMap::new(),
            pending_contacts: Default::default(),
            read_holds: Vec::new(),
            file_holds: Vec::new(),
            pending_reads: HashMap::new(),
            unannounced_gate: HashSet::new(),
            first_contact: Default::default(),
            probe_ends: Vec::new(),
            probation: Default::default(),
            enforcer: None,
            pods: Arc::new(PodIndex::default()),
            origins: HashMap::new(),
            record_pos: 0,
            replaying: false,
            written: HashSet::new(),
            replay: ReplayStats::default(),
            file_journal: None,
            files_counted_until: 0,
        }
    }

    /// Keeps the open sessions' file changes in `journal`; records before ring position
    /// `counted_until` were counted by a previous daemon (not counted again).
    pub fn with_file_journal(
        mut self,
        journal: crate::sessions::file_journal::FileJournal,
        counted_until: u64,
    ) -> Self {
        self.replay.file_journal_lines_dropped = journal.lines_dropped_at_start;
        self.file_journal = Some(journal);
        self.files_counted_until = counted_until;
        self
    }

    /// Writes the file changes counted since the last call to the journal, up to ring
    /// position `pos` (before the ring's space before `pos` is handed back).
    pub fn end_file_batch(&mut self, pos: u64) {
        let Some(journal) = self.file_journal.as_mut() else {
            return;
        };
        for f in self.sessions.take_changed_files() {
            journal.push(&f);
        }
        let sessions = &self.sessions;
        journal.end_batch(pos, || sessions.open_file_changes());
        self.replay.file_journal_errors = journal.errors;
    }

    /// Calls already written (from `calls.jsonl`): found again in records read again, they
    /// are not written twice.
    pub fn with_written_calls(mut self, calls: impl IntoIterator<Item = (u32, u64)>) -> Self {
        self.written.extend(calls);
        self
    }

    /// Handles the record at ring position `pos`; `seen_before`: a previous daemon read it
    /// (only connection data is handled again, to rebuild exchanges it had half seen).
    pub fn handle_record_at(&mut self, pos: u64, record: &[u8], seen_before: bool) -> Option<u32> {
        self.record_pos = pos;
        self.replaying = seen_before;
        if !seen_before
            && pos < self.files_counted_until
            && matches!(
                crate::probes::decode(record),
                Ok(KernelEvent::FileOp { .. })
            )
        {
            self.replay.file_changes_already_counted += 1;
            return None;
        }
        if seen_before {
            self.replay.records += 1;
            let data = matches!(
                crate::probes::decode(record),
                Ok(KernelEvent::Tls { .. } | KernelEvent::TlsHandshake { .. })
            );
            if !data {
                return None;
            }
        }
        self.handle_record(record)
    }

    /// Where the ring may be handed back to: the first record of the oldest exchange in
    /// flight, but no more than `window` bytes behind `read` (older exchanges are given up
    /// for a restart, counted).
    pub fn replay_low_water(&mut self, read: u64, window: u64) -> u64 {
        let floor = read.saturating_sub(window);
        let mut low = read;
        for c in self.conns.values_mut() {
            if let Some(p) = c.replay_from {
                if p < floor {
                    c.replay_from = None;
                    self.replay.window_exceeded += 1;
                } else {
                    low = low.min(p);
                }
            }
        }
        self.replay.ring_uncommitted_bytes = read - low;
        low
    }

    /// The kernel map of metered sockets (estimates).
    pub fn with_meter(mut self, meter: crate::probes::meter::Meter) -> Self {
        self.meter = meter;
        self
    }

    /// The kernel map of sessions' processes.
    pub fn with_session_procs(
        mut self,
        session_procs: crate::probes::session_procs::SessionProcs,
    ) -> Self {
        self.session_procs = session_procs;
        self
    }

    /// Ceilings, enforced.
    pub fn with_enforcer(mut self, enforcer: Enforcer) -> Self {
        self.enforcer = Some(enforcer);
        self
    }

    /// Handles one ring-buffer record. Returns the tgid of a process that just exec'd, so
    /// the caller can look for TLS libraries in it.
    pub fn handle_record(&mut self, record: &[u8]) -> Option<u32> {
        self.stats.records += 1;
        let event = match crate::probes::decode(record) {
            Ok(e) => e,
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::debug!("{e}");
                return None;
            }
        };
        let exec = self.handle_event(event);
        self.mark_opened_sessions();
        exec
    }

    fn handle_event(&mut self, event: KernelEvent<'_>) -> Option<u32> {
        match event {
            KernelEvent::Fork {
                child,
                parent,
                ts_ns,
                session,
            } => {
                self.stats.forks += 1;
                let key = self.tree.on_fork_in(parent, child, ts_ns, session);
                if self.marked_at.get(&parent).is_some_and(|at| *at > ts_ns)
                    && let Some(root) =
                        key.and_then(|k| self.sessions.session_root_of(&self.tree, k))
                {
                    // Forked before its parent was marked: the kernel did not mark it.
                    self.mark_session_procs(root.tgid, &[child]);
                }
            }
            KernelEvent::Exec {
                tgid,
                filename,
                ts_ns,
            } => {
                self.stats.execs += 1;
                self.probe_ends.push((tgid, ts_ns));
                self.exe_ids.remove(&tgid);
                self.probation.forget(tgid);
                self.tree.on_exec(tgid, &filename);
                self.on_exec_policy(tgid, ts_ns);
                return Some(tgid);
            }
            KernelEvent::Exit {
                tgid,
                ts_ns,
                status,
                session,
                start_ns,
                execed,
                comm,
            } => {
                if session != 0
                    && (self.tree.key_of(tgid).is_none()
                        || self.tree.stands_in_for_another(tgid, session))
                {
                    // Started before this daemon, ended before it saw it: known from its exit
                    // record alone (a tool run when it exec'd).
                    let learnt = match (start_ns, execed) {
                        (Some(start), Some(execed)) => self
                            .session_root(session)
                            .and_then(|root| {
                                self.tree.insert_ended(tgid, start, comm, execed, root)
                            })
                            .is_some(),
                        _ => false,
                    };
                    if learnt {
                        self.stats.session_exits_learnt += 1;
                    } else {
                        self.stats.session_exits_unseen += 1;
                    }
                }
                self.stats.exits += 1;
                self.probe_ends.push((tgid, ts_ns));
                self.exe_ids.remove(&tgid);
                self.probation.forget(tgid);
                self.on_exit(tgid, ts_ns, status);
            }
            KernelEvent::Tls { header, data } if header.flags & TLS_FLAG_AEAD != 0 => {
                let mut out = Vec::new();
                self.aead.on_chunk(
                    header.tgid,
                    header.conn,
                    header.direction,
                    header.offset,
                    header.call_len,
                    header.flags & TLS_FLAG_LOSS_BEFORE != 0,
                    data,
                    header.ts_ns,
                    &mut out,
                );
                self.on_aead(out);
            }
            KernelEvent::Tls { header, data } => self.on_tls(&header, data),
            KernelEvent::ExecArgs { tgid, args, cut } => {
                self.tree.set_cmdline(tgid, args, cut);
            }
            KernelEvent::FileOp {
                tgid,
                op,
                flags,
                dfd,
                path,
                new_dfd,
                new_path,
                dir,
                new_dir,
                ts_ns,
                session,
            } => {
                use crate::sessions::actions::absolute_path;
                let unread = path.is_empty()
                    || (op == agentwatch_ebpf::FILE_RENAME
                        && new_path.as_deref().is_none_or(str::is_empty));
                if unread {
                    self.stats.file_paths_unread += 1;
                } else if let Some(key) = self.charged_key(tgid, session) {
                    let root = self.tree.proc_root().to_path_buf();
                    let path = absolute_path(&root, tgid, dfd, &path, dir.as_deref());
                    let new_path = new_path
                        .map(|p| absolute_path(&root, tgid, new_dfd, &p, new_dir.as_deref()));
                    self.sessions
                        .on_file_op(&self.tree, key, op, flags, path, new_path, ts_ns);
                }
            }
            KernelEvent::Connect {
                tgid,
                addr,
                port,
                ts_ns,
                sock,
                session,
            } => {
                if let Some(key) = self.charged_key(tgid, session)
                    && let Some(host) = self.sessions.on_connect(&self.tree, key, addr, port, ts_ns)
                {
                    self.wait_for_name(tgid, sock, ts_ns, host);
                }
            }
            KernelEvent::Contact {
                tgid,
                fd,
                sock,
                llm,
                held,
                estimate,
                ts_ns,
                hello,
                session,
                port,
            } => {
                if session {
                    self.host_named(tgid, sock, port, hello);
                }
                if !held && !estimate {
                    // Reported for the session's host row only.
                    return None;
                }
                self.stats.first_contacts += 1;
                if estimate {
                    let metered = self.estimates.on_hello(tgid, fd, hello, ts_ns, || {
                        std::fs::read_link(format!("/proc/{tgid}/exe"))
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|_| format!("pid {tgid}"))
                    });
                    self.meter.set(sock, metered);
                }
                if held {
                    if self.contacts.len() < MAX_CONTACTS {
                        self.contacts.push(HeldContact {
                            tgid,
                            llm_host: llm,
                            ts_ns,
                        });
                    } else {
                        // The daemon continues it when the hold's time is up.
                        self.stats.contacts_dropped += 1;
                    }
                }
            }
            KernelEvent::ReadHold { tgid, ts_ns, .. } => self.on_read_hold(tgid, ts_ns),
            KernelEvent::FileHold { tgid, ts_ns } => {
                if !self.file_holds.iter().any(|(t, _)| *t == tgid) {
                    self.file_holds.push((tgid, ts_ns));
                }
            }
            KernelEvent::SocketBytes {
                tgid,
                fd,
                direction,
                len,
                ts_ns,
            } => {
                let mut out = Vec::new();
                self.estimates
                    .on_bytes(tgid, fd, direction, len, ts_ns, &mut out);
                self.charge_estimates(out);
            }
            KernelEvent::SocketClose { tgid, fd, .. } => {
                let mut out = Vec::new();
                self.estimates.on_close(tgid, fd, &mut out);
                self.charge_estimates(out);
            }
            KernelEvent::AeadLink {
                tgid,
                direction,
                aead,
                fd,
                ts_ns,
            } => {
                let mut out = Vec::new();
                self.aead
                    .on_link(tgid, direction, aead, fd, ts_ns, &mut out);
                self.on_aead(out);
            }
            KernelEvent::GateHold {
                tgid,
                ssl,
                state,
                ts_ns,
                preview,
                record,
            } => self.on_hold(tgid, ssl, state, ts_ns, preview, record),
            KernelEvent::SocketHold {
                tgid,
                fd,
                state,
                ts_ns,
                len,
                cookie,
            } => self.on_socket_hold(tgid, fd, state, ts_ns, len, cookie),
            KernelEvent::TlsHandshake { tgid, ssl, ts_ns } => {
                // The SSL pointer starts a new connection: the old one (if any) is over.
                self.stats.tls_handshakes += 1;
                if self.conns.contains_key(&(tgid, ssl)) {
                    self.stats.ssl_pointers_reused += 1;
                    if let Some(list) = self.conns_by_tgid.get_mut(&tgid) {
                        list.retain(|s| *s != ssl);
                    }
                    self.close_connection((tgid, ssl), ts_ns);
                }
            }
        }
        None
    }

    /// Estimated requests and calls, charged like captured ones.
    fn charge_estimates(&mut self, out: Vec<estimates::Estimated>) {
        for est in out {
            let (tgid, event) = match est {
                estimates::Estimated::Request { tgid, request } => {
                    (tgid, CaptureEvent::Request(request))
                }
                estimates::Estimated::Call { tgid, call } => (tgid, CaptureEvent::Call(call)),
            };
            let Some(key) = self.tree.ensure(tgid) else {
                self.stats.tls_chunks_unknown_process += 1;
                continue;
            };
            self.apply(key, &mut vec![event]);
        }
    }

    /// Application data of AEAD-captured connections, as if an SSL probe had seen it.
    fn on_aead(&mut self, out: Vec<AeadOut>) {
        for item in out {
            match item {
                AeadOut::Data {
                    tgid,
                    conn,
                    direction,
                    data,
                    loss,
                    ts_ns,
                } => {
                    let header = TlsData {
                        kind: EVENT_TLS_DATA,
                        tgid,
                        tid: 0,
                        direction,
                        flags: if loss { TLS_FLAG_LOSS_BEFORE } else { 0 },
                        len: data.len() as u32,
                        conn,
                        ts_ns,
                        call_len: data.len() as u64,
                        offset: 0,
                    };
                    self.on_tls(&header, &data);
                }
                AeadOut::Closed { tgid, conn, ts_ns } => {
                    if let Some(list) = self.conns_by_tgid.get_mut(&tgid) {
                        list.retain(|s| *s != conn);
                    }
                    self.close_connection((tgid, conn), ts_ns);
                }
            }
        }
    }

    fn on_tls(&mut self, h: &TlsData, data: &[u8]) {
        self.stats.tls_chunks += 1;
        if h.conn & agentwatch_ebpf::PLAIN_CONN == 0 {
            self.estimates.on_exact(h.tgid, h.ts_ns);
        }
        self.stats.tls_bytes += data.len() as u64;
        let id = (h.tgid, h.conn);
        if !self.conns.contains_key(&id) {
            let Some(key) = self.tree.ensure(h.tgid) else {
                self.stats.tls_chunks_unknown_process += 1;
                return;
            };
            if self.conns.len() >= self.max_connections {
                self.evict_oldest(h.ts_ns);
            }
            self.conns.insert(
                id,
                Conn {
                    conn: Connection::new(self.limits),
                    key,
                    last_seen_ns: h.ts_ns,
                    replay_from: None,
                },
            );
            self.conns_by_tgid.entry(h.tgid).or_default().push(h.conn);
            self.stats.connections_open = self.conns.len() as u64;
            self.probation_new_connection(h.tgid);
            if h.conn & agentwatch_ebpf::PLAIN_CONN == 0
                && h.direction == DIR_WRITE
                && let Some(http) = crate::capture::starts_http_request(data)
            {
                // Read at its first contact if the process is gone by now (its records are
                // read a few ms after they were written).
                let exe = exe_identity(h.tgid).or_else(|| self.exe_ids.get(&h.tgid).copied());
                match exe {
                    Some(id) if self.first_writes.len() < MAX_FIRST_WRITES => {
                        self.first_writes.push((id, http));
                    }
                    _ => self.stats.first_writes_dropped += 1,
                }
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.last_seen_ns = h.ts_ns;
        let is_write = h.direction == DIR_WRITE;
        if h.flags & TLS_FLAG_LOSS_BEFORE != 0 {
            c.conn
                .on_loss(is_write, h.ts_ns, &mut self.capture_stats, &mut out);
        }
        if is_write {
            c.conn
                .on_write(data, h.ts_ns, &mut self.capture_stats, &mut out);
        } else {
            c.conn
                .on_read(data, h.ts_ns, &mut self.capture_stats, &mut out);
        }
        // HTTP/2 (HPACK tables) and WebSocket (deflate context) keep state across
        // exchanges: a replay must start at the connection's first record seen.
        if c.conn.is_idle() && !c.conn.keeps_stream_state() {
            c.replay_from = None;
        } else if c.replay_from.is_none() {
            c.replay_from = Some(self.record_pos);
        }
        let key = c.key;
        self.apply(key, &mut out);
        self.scratch = out;
    }

    /// Charges capture events to the process's session and writes call rows.
    fn apply(&mut self, key: ProcKey, events: &mut Vec<CaptureEvent>) {
        for event in events.drain(..) {
            match event {
                CaptureEvent::Request(req)
                    if self.written.contains(&(key.tgid, req.started_at_ns)) => {}
                CaptureEvent::Call(call)
                    if self.written.remove(&(key.tgid, call.request.started_at_ns)) =>
                {
                    self.replay.calls_already_written += 1;
                }
                CaptureEvent::Request(req) => {
                    self.stats.llm_requests += 1;
                    self.probation_passed(key.tgid);
                    if !self.origins.contains_key(&key) {
                        let origin = self.origin(key);
                        self.origins.insert(key, origin);
                    }
                    let aref = self.sessions.on_llm_request(&self.tree, key, &req);
                    self.after_request(&aref.session_id, req.started_at_ns);
                    // A session of a named rule is a run of that rule's job (drift).
                    if let Some(rule) = self
                        .enforcer
                        .as_ref()
                        .and_then(|e| e.rule_of(&aref.session_id))
                    {
                        self.sessions
                            .set_job(&aref.session_id, format!("rule:{rule}"));
                    }
                }
                CaptureEvent::Call(call) => {
                    self.stats.llm_calls += 1;
                    if self.replaying {
                        self.replay.calls_completed += 1;
                    }
                    // The response's model first: it names what served the call (an Azure
                    // deployment's request names only the deployment).
                    // An estimated call (no model seen) is charged its estimate's bound below.
                    let priced = if call.estimate.is_some() {
                        Priced::default()
                    } else {
                        self.pricing.price_call(
                            &[
                                call.response_model.as_deref(),
                                call.request.model.as_deref(),
                            ],
                            &call.usage,
                        )
                    };
                    let mut call = call;
                    if let Some(e) = call.estimate.as_mut() {
                        // No model is known: the most the input could have cost, for ceilings.
                        e.cost_usd_high = Some(
                            e.input_tokens_high as f64 * self.pricing.highest_input_per_mtok()
                                / 1e6,
                        );
                    }
                    let origin = match self.origins.get(&key) {
                        Some(o) => o.clone(),
                        None => self.origin(key),
                    };
                    let mut record = self
                        .sessions
                        .on_call_from(&self.tree, key, &call, priced, origin);
                    record.budget = self
                        .enforcer
                        .as_ref()
                        .and_then(|e| e.budget_of(&record.session_id));
                    self.write_call_row(&record);
                    self.after_call(&record, call.ended_at_ns);
                }
            }
        }
    }

    /// The caller's namespace pid and container labels, read now (a process keeps its
    /// container; a vanished one gets none).
    fn origin(&self, key: ProcKey) -> CallOrigin {
        if !self.tree.is_live(key) {
            return CallOrigin::default();
        }
        let path = cgroup::read(key.tgid);
        CallOrigin {
            ns_pid: cgroup::read_ns_pid(key.tgid),
            workload: Workload::resolve(path.as_deref(), &self.pods),
        }
    }

    /// Pod metadata for container labels (none: labels from cgroup paths only).
    pub fn with_pods(mut self, pods: Arc<PodIndex>) -> Self {
        self.pods = pods;
        self
    }

    fn write_call_row(&mut self, record: &crate::sessions::CallRecord) {
        use crate::policy::Rows;
        ceilings::Out {
            sink: &mut *self.sink,
            sink_errors: &mut self.stats.sink_errors,
        }
        .call(record);
    }

    fn close_connection(&mut self, id: (u32, u64), ts_ns: u64) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        c.conn.close(ts_ns, &mut self.capture_stats, &mut out);
        self.apply(c.key, &mut out);
        self.scratch = out;
        self.stats.connections_open = self.conns.len() as u64;
    }

    fn evict_oldest(&mut self, ts_ns: u64) {
        // Linear scan: runs only when the table is full, which is itself counted.
        if let Some(id) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_seen_ns)
            .map(|(id, _)| *id)
        {
            self.stats.connections_evicted += 1;
            if let Some(list) = self.conns_by_tgid.get_mut(&id.0) {
                list.retain(|ssl| *ssl != id.1);
            }
            self.close_connection(id, ts_ns);
        }
    }

    /// After the records a previous daemon left unread: the processes that stood in for
    /// themselves (`ProcTree::insert_gone`) whose exit was not among them (it was read by
    /// that daemon, or lost) end now, and their sessions close.
    pub fn settle_gone(&mut self, now_ns: u64) {
        for tgid in self.tree.gone() {
            self.on_exit(tgid, now_ns, None);
        }
    }

    fn on_exit(&mut self, tgid: u32, ts_ns: u64, status: Option<u32>) {
        self.aead.forget(tgid);
        self.marked_at.remove(&tgid);
        if let Some(e) = self.enforcer.as_mut() {
            e.process_exited(tgid, ts_ns);
        }
        let mut out = Vec::new();
        self.estimates.on_exit(tgid, &mut out);
        self.charge_estimates(out);
        // Flush the process's connections first: their calls belong to its session.
        for ssl in self.conns_by_tgid.remove(&tgid).unwrap_or_default() {
            self.close_connection((tgid, ssl), ts_ns);
        }
        // A process of a session that made no call: a tool the agent ran.
        if let Some(key) = self.tree.key_of(tgid)
            && let Some(run) = self.sessions.on_tool_exit(&self.tree, key, ts_ns, status)
        {
            self.stats.tool_runs += 1;
            self.write_action(ActionRow::ToolRun(run));
        }
        let removed = self.tree.on_exit(tgid);
        self.close_sessions(&removed, ts_ns);
    }

    /// A session's process sent the first ClientHello of socket `sock`: the host row waiting
    /// for it gets the name it asked for, and is written.
    /// (A row found in /proc has no socket: it is matched by the destination port.)
    fn host_named(&mut self, tgid: u32, sock: u64, port: u16, hello: &[u8]) {
        let Some(i) = self.pending_hosts.iter().position(|p| {
            p.tgid == tgid && (p.sock == sock || (p.sock == 0 && p.row.port == port))
        }) else {
            return;
        };
        let mut p = self.pending_hosts.swap_remove(i);
        p.row.sni = crate::protocol::tls_hello::server_name(hello);
        self.write_action(ActionRow::Host(p.row));
    }

    /// A new host row waits for its connection's ClientHello (written without a name at the
    /// deadline, or at once when too many wait).
    fn wait_for_name(
        &mut self,
        tgid: u32,
        sock: u64,
        ts_ns: u64,
        row: crate::sessions::actions::HostContact,
    ) {
        if self.pending_hosts.len() < MAX_PENDING_HOSTS {
            self.pending_hosts.push(PendingHost {
                tgid,
                sock,
                deadline_ns: ts_ns + HOST_SNI_WAIT_NS,
                row,
            });
        } else {
            self.write_action(ActionRow::Host(row));
        }
    }

    /// Host rows written now: those past their deadline (`now_ns`), or of `session` (its
    /// ledger row follows), or all (`None, u64::MAX`: the daemon stops).
    fn write_pending_hosts(&mut self, now_ns: u64, session: Option<&str>) {
        let (due, keep): (Vec<PendingHost>, Vec<PendingHost>) =
            std::mem::take(&mut self.pending_hosts)
                .into_iter()
                .partition(|p| {
                    p.deadline_ns <= now_ns || session.is_some_and(|s| p.row.session_id == s)
                });
        self.pending_hosts = keep;
        for p in due {
            self.write_action(ActionRow::Host(p.row));
        }
    }

    /// Every host row still waiting for its ClientHello (the daemon stops).
    pub fn write_all_pending_hosts(&mut self) {
        self.write_pending_hosts(u64::MAX, None);
    }

    fn close_sessions(&mut self, removed: &[ProcKey], ts_ns: u64) {
        if removed.is_empty() {
            return;
        }
        for key in removed {
            self.origins.remove(key);
        }
        for row in self.sessions.on_removed(removed, ts_ns) {
            self.write_ledger(&row);
        }
    }

    /// Periodic upkeep: processes that vanished without an exit event we saw (ring buffer
    /// loss) are found by the tree's liveness check and closed like exits.
    pub fn tick(&mut self, now_ns: u64) {
        self.sink.retry();
        self.write_pending_hosts(now_ns, None);
        self.tick_policy(now_ns);
        let removed = self.tree.take_removed();
        self.close_sessions(&removed, now_ns);
        for row in self.sessions.reap_orphans(&self.tree, now_ns) {
            self.write_ledger(&row);
        }
    }

    /// The sessions' counters, with the failed marks of their processes in the kernel and
    /// the failed writes of the job baselines.
    pub fn session_counters(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.sessions.stats()).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "session_procs_mark_errors".into(),
                self.session_procs.errors.into(),
            );
            o.insert("job_baselines".into(), self.sessions.jobs().len().into());
            // The deepest agent of the open sessions (dashboards: runaway recursion).
            let depth = self
                .sessions
                .live_sessions()
                .iter()
                .map(|s| s.depth_max)
                .max()
                .unwrap_or(0);
            o.insert("depth_max_live".into(), depth.into());
            o.insert(
                "job_baseline_save_errors".into(),
                self.sessions.jobs().save_errors.into(),
            );
        }
        v
    }

    fn write_action(&mut self, row: ActionRow) {
        if let Err(e) = self.sink.write_action(&row) {
            self.stats.sink_errors += 1;
            tracing::error!("{e}");
        }
    }

    /// The process a record of `tgid` is charged to: itself, or when no daemon saw it (it
    /// came and went while none ran), the root of the session the kernel says it was in.
    fn charged_key(&mut self, tgid: u32, session: u32) -> Option<ProcKey> {
        if !self.tree.stands_in_for_another(tgid, session)
            && let Some(key) = self.tree.key_of(tgid).or_else(|| self.tree.ensure(tgid))
        {
            return Some(key);
        }
        let root = self.session_root(session)?;
        self.stats.charged_to_root += 1;
        Some(root)
    }

    /// The root the kernel's records name (`session`, a pid; 0: none), as the tree knows it.
    fn session_root(&self, session: u32) -> Option<ProcKey> {
        if session == 0 || self.tree.stands_in_for_another(session, session) {
            return None;
        }
        self.tree.key_of(session)
    }

    /// Marks the processes of sessions opened since the last record in the kernel, so their
    /// connects are reported (their children are marked by the kernel at fork).
    fn mark_opened_sessions(&mut self) {
        let opened = self.sessions.take_opened();
        if opened.is_empty() {
            return;
        }
        for root in opened {
            let tgids: Vec<u32> = self
                .tree
                .live_subtree(root)
                .iter()
                .map(|k| k.tgid)
                .collect();
            self.mark_session_procs(root.tgid, &tgids);
        }
    }

    /// Marks processes as a session's in the kernel (from now on their connects are reported
    /// and their children marked at fork); their connections made before it are read from
    /// /proc (the agent's own, to its LLM endpoint, came before its first request).
    fn mark_session_procs(&mut self, root: u32, tgids: &[u32]) {
        let now = crate::sessions::clock::boot_now_ns();
        self.session_procs.mark(root, tgids.iter().copied());
        for &tgid in tgids {
            if self.marked_at.len() < MAX_MARKED {
                self.marked_at.insert(tgid, now);
            }
            let Some(key) = self.tree.key_of(tgid) else {
                continue;
            };
            for (addr, port) in crate::procs::sockets::tcp_peers(self.tree.proc_root(), tgid) {
                if let Some(h) = self.sessions.on_connect(&self.tree, key, addr, port, now) {
                    // Its ClientHello may still be on its way (a process marked late).
                    self.wait_for_name(tgid, 0, now, h);
                }
            }
        }
    }

    fn write_ledger(&mut self, row: &crate::sessions::LedgerRow) {
        // Its host and file rows first: a reader of the ledger row finds them all.
        if !self.pending_hosts.is_empty() {
            self.write_pending_hosts(0, Some(&row.session_id));
        }
        for f in self.sessions.take_file_rows() {
            self.write_action(ActionRow::File(f));
        }
        self.stats.ledger_rows += 1;
        if let Some(e) = self.enforcer.as_mut() {
            e.session_closed(&row.session_id);
        }
        if let Err(e) = self.sink.write_ledger(row) {
            self.stats.sink_errors += 1;
            tracing::error!("{e}");
        }
    }
}
