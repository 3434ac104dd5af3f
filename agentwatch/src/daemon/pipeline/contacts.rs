//! The pipeline's side of first contact: which processes are stopped waiting for their
//! probes, and what the decisions took.
use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::{HeldContact, Pipeline};
use crate::probes::ProcessCoverage;

/// What first contact did (status `first_contact`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FirstContactStats {
    /// Processes stopped at a first contact, …
    pub holds: u64,
    /// … decided and continued with probes attached,
    pub probed: u64,
    /// … decided with nothing to probe (no TLS library the probes know: estimated, or not
    /// an agent's TLS),
    pub nothing_to_probe: u64,
    /// … gone before they could be probed,
    pub gone: u64,
    /// … continued at the deadline before their probes were on (their first calls may be
    /// missed; the probes still go on).
    pub timeouts: u64,
    /// Time from the hold to the process continuing: the last, and the longest (ms).
    pub last_hold_ms: f64,
    pub max_hold_ms: f64,
    /// Holds whose record was lost (a full ring buffer): found stopped by the watchdog
    /// and decided as a contact without a name (probation).
    pub unannounced: u64,
    /// Holds for an endpoint without a name (no SNI: probation).
    pub no_sni: u64,
    /// Processes on probation now, and those it found not to be agents (probes detached).
    pub on_probation: u64,
    pub not_agents: u64,
    /// Processes stopped until the read hook was on (a plain-HTTP or metered socket of
    /// theirs needed its reads seen while it was off), those continued at the deadline
    /// before it was, and the time from the stop to the process continuing: the last, and
    /// the longest (ms).
    pub read_holds: u64,
    pub read_hold_timeouts: u64,
    pub last_read_hold_ms: f64,
    pub max_read_hold_ms: f64,
}

/// A process probed because its first contact named no host (`https://127.0.0.1:8443`) is
/// on probation: an LLM request makes it an agent for good; opening one more connection
/// after this many without one makes it not an agent (its probes come off, and the kernel
/// lets its later no-SNI connections pass; a known LLM host still stops it).
pub const PROBATION_CONNECTIONS: u32 = 3;

#[derive(Debug, Default)]
pub struct Probation {
    /// tgid → connections it opened, none with an LLM request so far.
    on: HashMap<u32, u32>,
    /// Found not to be agents, for the daemon to detach.
    failed: Vec<u32>,
}

impl Probation {
    pub fn forget(&mut self, tgid: u32) {
        self.on.remove(&tgid);
    }
}

/// Processes stopped now (tgid → boot ns of the hold).
#[derive(Debug, Default)]
pub struct Pending(HashMap<u32, u64>);

impl Pending {
    pub fn contains(&self, tgid: u32) -> bool {
        self.0.contains_key(&tgid)
    }
}

impl Pipeline {
    /// The processes held now.
    pub fn pending_contacts(&self) -> Vec<u32> {
        self.pending_contacts.0.keys().copied().collect()
    }

    /// Whether a first contact is being decided, or sessions are open: processes that may
    /// change files for a session soon (`[actions] files`).
    pub fn sessions_may_change_files(&self) -> bool {
        !self.pending_contacts.0.is_empty() || self.sessions.open_count() > 0
    }

    /// The processes the kernel holds as sessions' (`SESSION_PROCS`).
    pub fn session_proc_tgids(&self) -> Vec<u32> {
        self.session_procs
            .entries()
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    /// Whether a socket in the kernel's table needs its reads seen (plain HTTP, metered, or
    /// a ClientHello to an LLM host waiting for its metering decision).
    pub fn sockets_want_reads(&self) -> bool {
        self.meter.wants_reads()
    }
}

impl Pipeline {
    /// The held contacts recorded since the last call, now pending.
    pub fn take_held_contacts(&mut self) -> Vec<HeldContact> {
        let held = std::mem::take(&mut self.contacts);
        for c in &held {
            self.first_contact.holds += 1;
            if !c.llm_host {
                self.first_contact.no_sni += 1;
            }
            self.pending_contacts.0.insert(c.tgid, c.ts_ns);
        }
        held
    }

    /// A process the kernel stopped at a first contact whose record never came (the ring
    /// buffer was full): decided like one without a name. Taken with the next held contacts.
    pub fn unannounced_contact(&mut self, tgid: u32, ts_ns: u64) {
        self.first_contact.unannounced += 1;
        self.contacts.push(HeldContact {
            tgid,
            llm_host: false,
            ts_ns,
        });
    }

    /// The attach of a held process is done; true when it is still stopped and the caller
    /// must continue it (false: the deadline continued it already).
    pub fn first_contact_decided(
        &mut self,
        contact: HeldContact,
        coverage: &ProcessCoverage,
        took: Duration,
    ) -> bool {
        if coverage.gone {
            self.first_contact.gone += 1;
        } else if coverage.attached.is_empty() {
            self.first_contact.nothing_to_probe += 1;
        } else {
            self.first_contact.probed += 1;
            if !contact.llm_host {
                self.probation.on.entry(contact.tgid).or_insert(0);
                self.first_contact.on_probation = self.probation.on.len() as u64;
            }
        }
        // Its container labels, read while it is surely alive (stopped here): its calls are
        // charged a little later, when the process may be gone.
        if !coverage.gone
            && let Some(key) = self.tree.ensure(contact.tgid)
            && !self.origins.contains_key(&key)
        {
            let origin = self.origin(key);
            self.origins.insert(key, origin);
        }
        // A process under an agent of an open session is a sub-agent to be: with ceilings
        // on, it is gated before it is continued. The gate its parents would have passed on
        // at fork is missing when they forked before user space armed their session (a
        // daemon behind under load), and its first call could then leave unchecked.
        if !coverage.gone
            && let Some(key) = self.tree.key_of(contact.tgid)
            && (self.sessions.agent(key).is_some()
                || self
                    .tree
                    .ancestors(key)
                    .any(|p| self.sessions.agent(p.key).is_some()))
            && let Some(e) = self.enforcer.as_mut()
            && e.enabled()
        {
            e.arm(contact.tgid);
        }
        if !coverage.attached.is_empty()
            && let Some(id) = super::exe_identity(contact.tgid)
        {
            self.exe_ids.insert(contact.tgid, id);
        }
        let pending = self.pending_contacts.0.remove(&contact.tgid).is_some();
        if pending {
            let ms = took.as_secs_f64() * 1e3;
            self.first_contact.last_hold_ms = ms;
            self.first_contact.max_hold_ms = self.first_contact.max_hold_ms.max(ms);
        }
        pending
    }

    /// The deadline of a hold passed: true when the process was still waiting (the caller
    /// continues it, and the miss is counted).
    pub fn first_contact_timed_out(&mut self, tgid: u32) -> bool {
        let late = self.pending_contacts.0.remove(&tgid).is_some();
        if late {
            self.first_contact.timeouts += 1;
        }
        late
    }

    /// Processes that exec'd or exited since the last call: their probes come off.
    pub fn take_probe_ends(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.probe_ends)
    }

    /// Processes found not to be agents since the last call: their probes come off and the
    /// kernel lets their no-SNI connections pass.
    pub fn take_not_agents(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.probation.failed)
    }

    /// An LLM request from `tgid`: an agent, off probation for good.
    pub(super) fn probation_passed(&mut self, tgid: u32) {
        if self.probation.on.remove(&tgid).is_some() {
            self.first_contact.on_probation = self.probation.on.len() as u64;
        }
    }

    /// `tgid` started a new TLS connection (its first plaintext).
    pub(super) fn probation_new_connection(&mut self, tgid: u32) {
        let Some(opened) = self.probation.on.get_mut(&tgid) else {
            return;
        };
        *opened += 1;
        if *opened > PROBATION_CONNECTIONS {
            self.probation.on.remove(&tgid);
            self.probation.failed.push(tgid);
            self.first_contact.not_agents += 1;
            self.first_contact.on_probation = self.probation.on.len() as u64;
        }
    }
}

impl Pipeline {
    /// Every process still stopped at a first contact or for the read hook (the daemon is
    /// stopping: they go on).
    pub fn take_pending_contacts(&mut self) -> Vec<u32> {
        let mut tgids: Vec<u32> = self.pending_contacts.0.drain().map(|(t, _)| t).collect();
        tgids.extend(self.contacts.drain(..).map(|c| c.tgid));
        tgids.extend(self.pending_reads.drain().map(|(t, _)| t));
        self.read_holds.clear();
        tgids.extend(self.file_holds.drain(..).map(|(t, _)| t));
        tgids.sort_unstable();
        tgids.dedup();
        tgids
    }

    /// The kernel stopped `tgid` until the read hook is on. (Two threads of one process
    /// can both be stopped before the stop takes: one entry.)
    pub(super) fn on_read_hold(&mut self, tgid: u32, ts_ns: u64) {
        if self.pending_reads.insert(tgid, ts_ns).is_none() {
            self.read_holds.push(tgid);
            self.first_contact.read_holds += 1;
        }
    }

    /// The processes stopped at their exec for the file uprobes since the last call (with
    /// when the kernel stopped them), with
    /// the kernel's set of session processes (to cover them with): the caller continues them.
    pub fn take_file_holds(&mut self) -> (Vec<(u32, u64)>, Vec<u32>) {
        if self.file_holds.is_empty() {
            return (Vec::new(), Vec::new());
        }
        (
            std::mem::take(&mut self.file_holds),
            self.session_proc_tgids(),
        )
    }

    /// The processes stopped for the read hook since the last call, now pending.
    pub fn take_read_holds(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.read_holds)
    }

    /// Processes stopped for the read hook and not continued yet.
    pub fn pending_read_holds(&self) -> Vec<u32> {
        self.pending_reads.keys().copied().collect()
    }

    /// Whether a process is stopped for the read hook now.
    pub fn read_holds_pending(&self) -> bool {
        !self.pending_reads.is_empty()
    }

    /// The read hook is on: whether to continue `tgid` now (it was still waiting, and no
    /// first contact of it is being decided, which continues it once probed).
    pub fn read_hold_done(&mut self, tgid: u32, now_ns: u64) -> bool {
        let Some(ts) = self.pending_reads.remove(&tgid) else {
            return false;
        };
        let ms = now_ns.saturating_sub(ts) as f64 / 1e6;
        self.first_contact.last_read_hold_ms = ms;
        self.first_contact.max_read_hold_ms = self.first_contact.max_read_hold_ms.max(ms);
        !self.pending_contacts.contains(tgid)
    }

    /// The deadline of a read hold passed with `tgid` still waiting: continued (counted).
    pub fn read_hold_timed_out(&mut self, tgid: u32) -> bool {
        let late = self.pending_reads.remove(&tgid).is_some();
        if late {
            self.first_contact.read_hold_timeouts += 1;
        }
        late && !self.pending_contacts.contains(tgid)
    }
}
