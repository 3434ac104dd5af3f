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

/// How long one close waits for attaches to finish at most.
const CLOSE_YIELD: Duration = Duration::from_secs(5);

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
                for links in rx {
                    let deadline = Instant::now() + CLOSE_YIELD;
                    while busy.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // One process's links together: uprobe_multi links let go in parallel
                    // share their grace periods (perf-event ones serialise in the kernel).
                    let n = links.len();
                    std::thread::scope(|s| {
                        for link in links {
                            s.spawn(move || drop(link));
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
) {
    for contact in held {
        {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let late = pipeline
                    .lock()
                    .expect("pipeline lock")
                    .first_contact_timed_out(contact.tgid);
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
        attaching.fetch_add(1, Ordering::AcqRel);
        tokio::task::spawn_blocking(move || {
            decide(contact, &discovery, &pipeline);
            attaching.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

fn decide(contact: HeldContact, discovery: &Mutex<Discovery>, pipeline: &Mutex<Pipeline>) {
    let started = Instant::now();
    let coverage = {
        let Ok(mut d) = discovery.lock() else {
            return;
        };
        let coverage = d.probes.attach_process(contact.tgid);
        // Decided, whatever was found: its later connections are not held.
        d.probes.set_process_state(contact.tgid, Some(PROC_DECIDED));
        coverage
    };
    let pending = pipeline
        .lock()
        .expect("pipeline lock")
        .first_contact_decided(contact, &coverage, started.elapsed());
    if pending {
        cont(contact.tgid);
    }
}
