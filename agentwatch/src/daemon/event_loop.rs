//! The daemon's loop: drain the ring buffer into the pipeline, decide first contacts, take
//! probes off, tick, reload on SIGHUP; then the stop.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use super::pipeline::Pipeline;
use super::{Daemon, DaemonError, first_contact};
use crate::probes::Scope;
use crate::probes::ring::Ring;
use crate::sessions::clock::boot_now_ns;

/// How often the ring buffer is drained when no record asked for a wakeup, while records
/// come; after `IDLE_DRAINS` drains in a row that found nothing, `RING_DRAIN_IDLE` (each
/// wakeup of an idle daemon costs the host a little CPU), until a record comes again.
const RING_DRAIN: Duration = Duration::from_millis(10);
const RING_DRAIN_IDLE: Duration = Duration::from_millis(50);
const IDLE_DRAINS: u32 = 100;
/// Seconds after start (ticks of the 1 s timer) when start-up is over and its executable pages
/// are let go of (`memory.rs`).
const RELEASE_AFTER_TICKS: u32 = 5;
/// `[actions] files`: how long its tracepoints stay on after the last session closed (a next
/// session of a recurring job, an agent's next sub-agent, keep them on).
const FILE_HOOKS_LINGER: Duration = Duration::from_secs(5);
/// `[actions] file_hooks = "libc"`: how often the kernel's set of session processes is read
/// for the ones to cover (those a first contact opens are covered at once).
const FILE_COVER_EVERY: Duration = Duration::from_millis(50);
/// The read hook: how long it stays on once nothing needs it (an agent's next call, a job's
/// next run keep it on), and how long after its switch went off the sockets are looked at
/// again before it comes off (a program that read the switch before then is done by then).
const READ_HOOK_LINGER: Duration = Duration::from_secs(5);
const READ_HOOK_SETTLE: Duration = Duration::from_millis(100);

/// Where taking the read hook off stands.
#[derive(Default)]
struct ReadHookIdle {
    /// Since when nothing needed it.
    since: Option<Instant>,
    /// Since when its switch is off (the kernel holds new sockets that need it).
    closing: Option<Instant>,
}

/// What only the loop uses.
pub(super) struct EventLoop {
    pub(super) ring: Ring,
    pub(super) closer: first_contact::Closer,
    pub(super) held_file: first_contact::HeldFile,
    /// How long a process stays stopped at its first contact at most.
    pub(super) hold_timeout: Duration,
    pub(super) scope: Scope,
}

/// Processes whose probes change after a drain, kept while discovery is busy.
#[derive(Default)]
struct Pending {
    execs: Vec<u32>,
    ended: Vec<(u32, u64)>,
    not_agents: Vec<u32>,
}

/// Handles every record ready (pushing the processes that exec'd to `execs`), then hands the
/// ring back to the kernel only up to the oldest exchange in flight, which a next daemon
/// reads again, at most a quarter of the ring behind.
fn drain_ring(p: &mut Pipeline, ring: &mut Ring, execs: &mut Vec<u32>) {
    let seen_until = ring.replay_end();
    while let Some((pos, item)) = ring.next() {
        if let Some(tgid) = p.handle_record_at(pos, item, pos < seen_until) {
            execs.push(tgid);
        }
    }
    // Every record written before this daemon started is read now.
    p.settle_gone(crate::sessions::clock::boot_now_ns());
    // The file changes counted go to disk before the ring says how far it was read.
    p.end_file_batch(ring.read_pos());
    let low = p.replay_low_water(ring.read_pos(), ring.size() / 4);
    ring.commit(low);
}

impl EventLoop {
    /// Until SIGTERM or SIGINT, then the stop.
    pub(super) async fn run(self, d: &Daemon) -> Result<(), DaemonError> {
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
        let EventLoop {
            ring,
            closer,
            held_file,
            hold_timeout,
            scope,
        } = self;
        // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd that wraps it.
        let mut ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| DaemonError::Ring(std::io::Error::other(e.to_string())))?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Most records wake nobody (a wakeup costs the writing CPU an interrupt): the ring is
        // drained this often, and at once when a record asks (a process stopped for a decision).
        let drain = tokio::time::sleep(RING_DRAIN);
        tokio::pin!(drain);
        let mut empty_drains = 0u32;
        let mut pending = Pending::default();
        // SIGINT (Ctrl-C at a terminal) stops for good: the kernel side goes too. SIGTERM (a
        // service manager's stop, a DaemonSet's upgrade) leaves it pinned for the next daemon.
        let mut interrupted = false;
        // Processes found stopped at a first contact nobody announced (see `unannounced_holds`).
        let mut unannounced = HashSet::new();
        let mut ticks = 0u32;
        let mut files_idle_since = None;
        let mut reads_idle = ReadHookIdle::default();
        let reads_file = held_file.for_reads();
        loop {
            let mut ticked = false;
            let read = tokio::select! {
                guard = ring.readable_mut() => {
                    guard.map_err(DaemonError::Ring)?.clear_ready();
                    true
                }
                _ = &mut drain => true,
                _ = tick.tick() => {
                    d.tick();
                    ticked = true;
                    ticks = ticks.saturating_add(1);
                    if ticks == RELEASE_AFTER_TICKS {
                        let kib = super::memory::release_executable_pages();
                        tracing::debug!(kib, "let go of the executable's start-up pages");
                    }
                    true
                }
                _ = hup.recv() => {
                    if let Err(e) = d.reload() {
                        tracing::error!("reload failed: {e}");
                    }
                    false
                }
                _ = term.recv() => break,
                _ = int.recv() => {
                    interrupted = true;
                    break;
                }
            };
            if !read {
                continue;
            }
            let before = ring.get_ref().read_pos();
            drain_ring(
                &mut d.pipeline.lock().expect("pipeline lock"),
                ring.get_mut(),
                &mut pending.execs,
            );
            if ticked || ring.get_ref().read_pos() != before {
                d.file_hooks(&mut files_idle_since);
            }
            d.file_holds();
            let (reads, pending_reads) = {
                let mut p = d.pipeline.lock().expect("pipeline lock");
                let reads = p.take_read_holds();
                let pending = if reads.is_empty() {
                    Vec::new()
                } else {
                    p.pending_read_holds()
                };
                (reads, pending)
            };
            if !reads.is_empty() {
                reads_file.save(&pending_reads);
                first_contact::attach_reads(
                    reads,
                    &d.discovery,
                    &d.pipeline,
                    hold_timeout,
                    &reads_file,
                );
            }
            if ticked || ring.get_ref().read_pos() != before {
                d.read_hook(&mut reads_idle);
            }
            empty_drains = if ring.get_ref().read_pos() == before {
                empty_drains.saturating_add(1)
            } else {
                0
            };
            let every = if empty_drains >= IDLE_DRAINS {
                RING_DRAIN_IDLE
            } else {
                RING_DRAIN
            };
            drain.as_mut().reset(tokio::time::Instant::now() + every);
            if ticked && scope == Scope::Agents {
                unannounced = d.unannounced_holds(unannounced);
            }
            let held = d
                .pipeline
                .lock()
                .expect("pipeline lock")
                .take_held_contacts();
            if !held.is_empty() {
                held_file.save(&d.pipeline.lock().expect("pipeline lock").pending_contacts());
                first_contact::decide_all(
                    held,
                    &d.discovery,
                    &d.pipeline,
                    hold_timeout,
                    &closer,
                    &held_file,
                );
            }
            d.probes_off(&mut pending, &closer);
            if scope == Scope::Agents {
                pending.execs.clear();
            }
            if !pending.execs.is_empty() {
                d.look_at_execs(std::mem::take(&mut pending.execs));
            }
        }
        // Decide what is already in the ring buffer (holds above all) before leaving.
        drain_ring(
            &mut d.pipeline.lock().expect("pipeline lock"),
            ring.get_mut(),
            &mut Vec::new(),
        );
        d.stop(interrupted, &closer);
        // `stop` continued every process still held.
        reads_file.save(&[]);
        Ok(())
    }
}

impl Daemon {
    /// `[actions] files`: its tracepoints on while sessions are open (attached too at each
    /// first contact, before the process goes on: `first_contact`), off once none was open
    /// and no first contact was being decided for `FILE_HOOKS_LINGER`. With `libc` uprobes
    /// (per process): the processes of sessions covered (`idle_since` is then when that was
    /// last done).
    fn file_hooks(&self, idle_since: &mut Option<Instant>) {
        let busy = self
            .pipeline
            .lock()
            .expect("pipeline lock")
            .sessions_may_change_files();
        // A first contact being decided holds discovery: it attaches them itself.
        let Ok(mut d) = self.discovery.try_lock() else {
            return;
        };
        if d.probes.programs.file_hooks.is_none() {
            return;
        }
        if d.probes.file_probes_per_process() {
            // `libc`: the processes of sessions covered, those that inherited it too (the
            // kernel's set, read at most every `FILE_COVER_EVERY`).
            let due = idle_since.is_none_or(|t| t.elapsed() >= FILE_COVER_EVERY);
            if due && (busy || d.probes.file_processes_covered() > 0) {
                drop(d);
                let tgids: Vec<u32> = {
                    let p = self.pipeline.lock().expect("pipeline lock");
                    p.session_proc_tgids()
                };
                let Ok(mut d) = self.discovery.try_lock() else {
                    return;
                };
                d.probes.cover_file_processes(&tgids);
                *idle_since = Some(Instant::now());
            }
            return;
        }
        if busy {
            *idle_since = None;
            if !d.probes.file_probes_attached() {
                d.probes.attach_file_probes();
            }
        } else if d.probes.file_probes_attached()
            && idle_since.get_or_insert_with(Instant::now).elapsed() >= FILE_HOOKS_LINGER
        {
            d.probes.detach_file_probes();
            *idle_since = None;
        }
    }

    /// `[actions] file_hooks = "libc"`: the programs of sessions the kernel stopped at their
    /// exec, covered with the file uprobes and continued (within a millisecond: a few perf
    /// events per thread).
    fn file_holds(&self) {
        let (held, tgids) = self
            .pipeline
            .lock()
            .expect("pipeline lock")
            .take_file_holds();
        if held.is_empty() {
            return;
        }
        match &self.libc_files {
            Some(l) => {
                let mut l = l.lock().expect("libc files lock");
                for &(tgid, stopped_ns) in &held {
                    l.cover_held(tgid, &tgids);
                    first_contact::cont(tgid);
                    l.held_for(boot_now_ns().saturating_sub(stopped_ns));
                }
            }
            None => held.into_iter().for_each(|(t, _)| first_contact::cont(t)),
        }
    }

    /// The read hook (`scope = "agents"`): on while a first contact is being decided, a
    /// session is open, a process is probed or held for it, or a socket needs its reads seen
    /// (plain HTTP, metered); off `READ_HOOK_LINGER` after none did, in two steps (the
    /// kernel's switch first, the link `READ_HOOK_SETTLE` later, the sockets looked at
    /// each time).
    fn read_hook(&self, idle: &mut ReadHookIdle) {
        let now = Instant::now();
        // Only when about to take it off are the kernel's sockets looked at.
        let due = match idle.closing {
            Some(t) => now - t >= READ_HOOK_SETTLE,
            None => idle.since.is_some_and(|t| now - t >= READ_HOOK_LINGER),
        };
        let (mut busy, sockets) = {
            let p = self.pipeline.lock().expect("pipeline lock");
            (
                p.sessions_may_change_files() || p.read_holds_pending(),
                due && p.sockets_want_reads(),
            )
        };
        let Ok(mut d) = self.discovery.try_lock() else {
            return;
        };
        let hook = &d.probes.programs.read_hook;
        if hook.always || (!hook.attached && !busy) {
            *idle = ReadHookIdle::default();
            return;
        }
        busy |= d.probes.attachments.processes_probed() > 0;
        if busy || sockets {
            // Needed (again): kept, or put back.
            if !d.probes.read_hook_attached() || idle.closing.is_some() {
                d.probes.attach_read_hook();
            }
            *idle = ReadHookIdle::default();
            if sockets {
                // Sockets that still need it: looked at again a linger from now.
                idle.since = Some(now);
            }
            return;
        }
        let since = *idle.since.get_or_insert(now);
        match idle.closing {
            None if now - since >= READ_HOOK_LINGER => {
                d.probes.read_hook_closing();
                idle.closing = Some(now);
            }
            Some(t) if now - t >= READ_HOOK_SETTLE => {
                d.probes.detach_read_hook();
                *idle = ReadHookIdle::default();
            }
            _ => {}
        }
    }

    /// Every second: the pipeline's upkeep, and the heartbeat that tells the kernel a daemon
    /// is there to decide first contacts.
    fn tick(&self) {
        self.pipeline
            .lock()
            .expect("pipeline lock")
            .tick(boot_now_ns());
        // Off the loop: attaches can hold discovery for a while, and a heartbeat
        // missed for 30 s would stop the kernel from holding first contacts.
        let discovery = self.discovery.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(mut d) = discovery.lock() {
                d.probes.heartbeat();
                d.probes.flush_kernel_logs();
            }
        });
    }

    /// Every second, after a drain: a process `PROCS` shows stopped at its first contact
    /// that the pipeline never heard of (the kernel stops it before writing the record, and
    /// a full ring buffer drops the record) is decided as a contact without a name. Only
    /// when seen so on two ticks in a row: a record written since the drain is read first,
    /// and a decision under way sets the state before it continues the process. Returns
    /// what this tick saw, for the next.
    fn unannounced_holds(&self, seen_before: HashSet<u32>) -> HashSet<u32> {
        let Ok(d) = self.discovery.try_lock() else {
            return seen_before;
        };
        let held = d.probes.held_processes();
        drop(d);
        let mut p = self.pipeline.lock().expect("pipeline lock");
        let pending: HashSet<u32> = p.pending_contacts().into_iter().collect();
        let mut seen = HashSet::new();
        for tgid in held {
            if pending.contains(&tgid) || !crate::policy::enforce::is_stopped(tgid) {
                continue;
            }
            if seen_before.contains(&tgid) {
                tracing::warn!(
                    pid = tgid,
                    "a process stopped at its first contact left no record (ring buffer full); deciding it now"
                );
                p.unannounced_contact(tgid, boot_now_ns());
            } else {
                seen.insert(tgid);
            }
        }
        seen
    }

    /// Confirm or reject probes at located functions by what they captured, and take the
    /// probes of exited and exec'd processes off (both wait while an attach holds discovery).
    fn probes_off(&self, pending: &mut Pending, closer: &first_contact::Closer) {
        let mut p = self.pipeline.lock().expect("pipeline lock");
        pending.ended.extend(p.take_probe_ends());
        pending.not_agents.extend(p.take_not_agents());
        if let Ok(mut d) = self.discovery.try_lock() {
            for tgid in pending.not_agents.drain(..) {
                closer.close(d.probes.detach_process(tgid));
                d.probes
                    .set_process_state(tgid, Some(agentwatch_ebpf::PROC_NOT_AGENT));
            }
            for (identity, http) in p.first_writes.drain(..) {
                closer.close(d.probes.judge_first_write(identity, http));
            }
            for (tgid, at) in pending.ended.drain(..) {
                // Not the probes of a first contact made after that exec (both can be
                // in one drain, and the attach can win the race to the lock).
                closer.close(d.probes.detach_process_before(tgid, at));
            }
        }
    }

    /// `scope = "all"`: the TLS libraries of processes that exec'd. Off the ring's task:
    /// analysing a large static binary takes a moment, and the ring must keep draining.
    fn look_at_execs(&self, tgids: Vec<u32>) {
        let discovery = self.discovery.clone();
        tokio::task::spawn_blocking(move || {
            if let Ok(mut d) = discovery.lock() {
                for tgid in tgids {
                    d.process(tgid, None);
                }
            }
        });
    }

    /// After the last drain: nobody is left stopped at a first contact, and the kernel side
    /// stays pinned for the next daemon (SIGTERM) or goes (SIGINT, or not pinned).
    fn stop(&self, interrupted: bool, closer: &first_contact::Closer) {
        // Nobody is left stopped at a first contact by a daemon that goes away.
        let pending = {
            let mut p = self.pipeline.lock().expect("pipeline lock");
            // Host rows still waiting for a ClientHello are written without its name.
            p.write_all_pending_hosts();
            p.take_pending_contacts()
        };
        for tgid in pending {
            first_contact::cont(tgid);
        }
        if let Ok(mut d) = self.discovery.lock() {
            if d.probes.pin_set().is_some() && !interrupted {
                // Pinned: the probes stay attached, and what happens until the next daemon
                // waits in the ring buffer; no process is stopped at its first contact
                // meanwhile.
                let continued = d.probes.leave();
                tracing::info!(
                    continued,
                    "first contacts are not held until a daemon runs again"
                );
                tracing::info!(
                    pinned_at = %d.probes.pin_set().map(|p| p.dir.display().to_string()).unwrap_or_default(),
                    "the kernel side stays attached for the next daemon (`agentwatch unpin` removes it)"
                );
            } else {
                d.probes.unpin();
                // Per-process probes closed together (the kernel would close them one by one
                // at exit).
                closer.close(d.probes.detach_all_processes());
            }
        }
        closer.drain(Duration::from_secs(20));
        tracing::info!("agentwatch stopping");
        let _ = std::fs::remove_file(&self.socket);
    }
}
