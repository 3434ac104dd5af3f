//! First contact, user-space half: a process the kernel stopped at its first connection to
//! an LLM endpoint (or to an endpoint without a name) is probed alone and continued. The
//! wait is bounded: past `first_contact_timeout_ms` the process continues unprobed and the
//! miss is counted; its probes still go on when the attach finishes.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentwatch_ebpf::PROC_DECIDED;

use super::Discovery;
use super::pipeline::{HeldContact, Pipeline};
use crate::probes::DetachedLinks;

/// Closes detached uprobe links on a thread of its own. The kernel takes ~0.1 s to let go
/// of each per-process uprobe (it waits for grace periods under a lock that attaching takes
/// too), so closing waits while a held process is being probed: holds come first.
#[derive(Clone)]
pub struct Closer {
    tx: std::sync::mpsc::Sender<DetachedLinks>,
    /// Held processes being probed now.
    attaching: Arc<AtomicUsize>,
    /// Links handed over and not closed yet (status `probed_processes.links_closing`).
    pub closing: Arc<AtomicUsize>,
}

/// How long closing waits for attaches to finish at most.
const CLOSE_YIELD: Duration = Duration::from_secs(5);
/// Threads closing links at once.
const CLOSE_THREADS: usize = 32;

impl Closer {
    pub fn spawn() -> Closer {
        let (tx, rx) = std::sync::mpsc::channel::<DetachedLinks>();
        let attaching = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicUsize::new(0));
        let busy = attaching.clone();
        let left = closing.clone();
        std::thread::Builder::new()
            .name("uprobe-closer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Everything handed over by now, closed together: uprobe_multi links let
                    // go of in parallel share their grace periods (perf-event ones serialise
                    // in the kernel whatever is done here).
                    let mut links = first;
                    while let Ok(more) = rx.try_recv() {
                        links.extend(more);
                    }
                    let deadline = Instant::now() + CLOSE_YIELD;
                    while busy.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let n = links.len();
                    let per_thread = n.div_ceil(CLOSE_THREADS).max(1);
                    let mut chunks: Vec<DetachedLinks> = Vec::new();
                    let mut links = links.into_iter().peekable();
                    while links.peek().is_some() {
                        chunks.push(links.by_ref().take(per_thread).collect());
                    }
                    std::thread::scope(|s| {
                        for chunk in chunks {
                            s.spawn(move || drop(chunk));
                        }
                    });
                    left.fetch_sub(n, Ordering::AcqRel);
                }
            })
            .expect("spawn the uprobe closer thread");
        Closer {
            tx,
            attaching,
            closing,
        }
    }

    /// Waits (bounded) until every link handed over is closed.
    pub fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.closing.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn close(&self, links: DetachedLinks) {
        if !links.is_empty() {
            self.closing.fetch_add(links.len(), Ordering::AcqRel);
            let _ = self.tx.send(links);
        }
    }
}

/// Continues a stopped process (its first contact is decided or timed out).
pub fn cont(tgid: u32) {
    // SAFETY: kill(2) with a pid and a signal number; no memory involved.
    unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
}

/// Probes and continues each held process, each on a blocking thread, with a watchdog that
/// continues it at the deadline whatever the attach is doing.
pub fn decide_all(
    held: Vec<HeldContact>,
    discovery: &Arc<Mutex<Discovery>>,
    pipeline: &Arc<Mutex<Pipeline>>,
    timeout: Duration,
    closer: &Closer,
    held_file: &HeldFile,
) {
    for contact in held {
        {
            let pipeline = pipeline.clone();
            let held_file = held_file.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let mut p = pipeline.lock().expect("pipeline lock");
                let late = p.first_contact_timed_out(contact.tgid);
                if late {
                    held_file.save(&p.pending_contacts());
                }
                drop(p);
                if late {
                    tracing::warn!(
                        pid = contact.tgid,
                        "first contact not decided in {timeout:?}: continuing the process unprobed"
                    );
                    cont(contact.tgid);
                }
            });
        }
        let (discovery, pipeline) = (discovery.clone(), pipeline.clone());
        let attaching = closer.attaching.clone();
        let held_file = held_file.clone();
        let closer = closer.clone();
        attaching.fetch_add(1, Ordering::AcqRel);
        tokio::task::spawn_blocking(move || {
            decide(contact, &discovery, &pipeline, &held_file, &closer);
            attaching.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Processes the kernel stopped until the read hook is on (a socket of theirs needs its reads
/// seen): it is attached on a blocking thread (discovery may be busy probing another
/// process), then they are continued; a watchdog continues them at the deadline whatever
/// the attach is doing.
pub fn attach_reads(
    held: Vec<u32>,
    discovery: &Arc<Mutex<Discovery>>,
    pipeline: &Arc<Mutex<Pipeline>>,
    timeout: Duration,
    held_file: &HeldFile,
) {
    {
        let (pipeline, held, held_file) = (pipeline.clone(), held.clone(), held_file.clone());
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let mut p = pipeline.lock().expect("pipeline lock");
            let late: Vec<u32> = held
                .into_iter()
                .filter(|&t| p.read_hold_timed_out(t))
                .collect();
            if !late.is_empty() {
                held_file.save(&p.pending_read_holds());
            }
            drop(p);
            for tgid in late {
                tracing::warn!(
                    pid = tgid,
                    "read hook not attached in {timeout:?}: continuing the process (its socket's replies may be missed)"
                );
                cont(tgid);
            }
        });
    }
    let (discovery, pipeline, held_file) = (discovery.clone(), pipeline.clone(), held_file.clone());
    tokio::task::spawn_blocking(move || {
        if let Ok(mut d) = discovery.lock() {
            d.probes.attach_read_hook();
        }
        let mut p = pipeline.lock().expect("pipeline lock");
        let now = crate::sessions::clock::boot_now_ns();
        let go: Vec<u32> = held
            .into_iter()
            .filter(|&t| p.read_hold_done(t, now))
            .collect();
        held_file.save(&p.pending_read_holds());
        drop(p);
        for tgid in go {
            cont(tgid);
        }
    });
}

fn decide(
    contact: HeldContact,
    discovery: &Mutex<Discovery>,
    pipeline: &Mutex<Pipeline>,
    held_file: &HeldFile,
    closer: &Closer,
) {
    let started = Instant::now();
    let coverage = {
        let Ok(mut d) = discovery.lock() else {
            return;
        };
        // Probes of its program before an exec whose record is not handled yet: off first.
        if d.probes.attachments.is_probed(contact.tgid) {
            closer.close(d.probes.detach_process(contact.tgid));
        }
        let coverage = d.probes.attach_process(contact.tgid);
        d.probes.probed_since(contact.tgid, contact.ts_ns);
        // Decided, whatever was found: its later connections are not held.
        d.probes.set_process_state(contact.tgid, Some(PROC_DECIDED));
        // `[actions] files`: on (or this process covered) before it goes on: its session's
        // tools may follow soon.
        d.probes.files_before_continue(contact.tgid);
        // An agent's sockets may need their reads seen (metered, AEAD records, its gate).
        d.probes.attach_read_hook();
        coverage
    };
    let mut p = pipeline.lock().expect("pipeline lock");
    if p.first_contact_decided(contact, &coverage, started.elapsed()) {
        cont(contact.tgid);
        // At once: a process the file still named could be continued by the next daemon
        // when a ceiling stops it later.
        held_file.save(&p.pending_contacts());
    }
}

/// The processes held now, written to `<data_dir>/held-first-contacts` whenever the set
/// changes: a daemon killed while it holds a process continues it when it starts again
/// (matched by start time, so a reused pid is left alone).
#[derive(Clone)]
pub struct HeldFile(std::path::PathBuf);

impl HeldFile {
    pub fn new(data_dir: &std::path::Path) -> HeldFile {
        HeldFile(data_dir.join("held-first-contacts"))
    }

    /// The same for the processes stopped until the read hook is on (`held-for-reads`).
    pub fn for_reads(&self) -> HeldFile {
        HeldFile(self.0.with_file_name("held-for-reads"))
    }

    /// Records `tgids` (the processes held now); an empty set removes the file.
    pub fn save(&self, tgids: &[u32]) {
        if tgids.is_empty() {
            let _ = std::fs::remove_file(&self.0);
            return;
        }
        let lines: String = tgids
            .iter()
            .filter_map(|t| Some(format!("{t} {}\n", start_ticks(*t)?)))
            .collect();
        let tmp = self.0.with_extension("tmp");
        if std::fs::write(&tmp, lines).is_ok() {
            let _ = std::fs::rename(&tmp, &self.0);
        }
    }

    /// Continues every process a previous daemon left held; returns how many.
    /// The processes a killed daemon left held that still run (same pid and start time);
    /// the file is gone after. The caller probes them (they are undecided agents) and
    /// continues them.
    pub fn left_over(&self) -> Vec<u32> {
        let Ok(text) = std::fs::read_to_string(&self.0) else {
            return Vec::new();
        };
        let mut live = Vec::new();
        for line in text.lines() {
            let mut cols = line.split_whitespace();
            let (Some(Ok(tgid)), Some(Ok(start))) = (
                cols.next().map(str::parse::<u32>),
                cols.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if start_ticks(tgid) == Some(start) {
                live.push(tgid);
            }
        }
        let _ = std::fs::remove_file(&self.0);
        live
    }
}

fn start_ticks(tgid: u32) -> Option<u64> {
    crate::procs::start_ticks_of(tgid)
}
