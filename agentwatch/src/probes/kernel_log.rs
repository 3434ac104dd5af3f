//! The kernel programs' rare diagnostics (`aya-log`): a refused connect, a hold whose record
//! the full ring buffer dropped. They are written to the daemon's log under the target
//! `agentwatch::kernel`; the hot paths never log.
//!
//! Each load of the object has its own `AYA_LOGS` ring (aya-log declares it unpinned). A daemon
//! that adopts a pinned kernel side keeps the previous daemons' programs attached, and they
//! write to their own rings: so the logs of every generation of programs that use this pin
//! set's `EVENTS` map are read, found through the kernel's list of loaded programs.
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use aya::Ebpf;
use aya::maps::{Map, MapInfo};
use aya_log::EbpfLogger;

const LOGS_MAP: &str = "AYA_LOGS";

/// Forwards aya-log's records (`log` crate) to the daemon's `tracing` log.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "agentwatch::kernel", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "agentwatch::kernel", "{msg}"),
            log::Level::Info => tracing::info!(target: "agentwatch::kernel", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "agentwatch::kernel", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "agentwatch::kernel", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The readers of every attached generation's diagnostics.
pub struct KernelLogs {
    readers: Vec<EbpfLogger<KernelLog>>,
    /// Records that could not be read (a reader that failed is dropped).
    pub read_errors: u64,
}

/// The kernel's id of a map aya created.
pub(super) fn map_id(map: &Map) -> Option<u32> {
    let data = match map {
        Map::RingBuf(d) | Map::Array(d) | Map::HashMap(d) | Map::PerCpuArray(d) => d,
        _ => return None,
    };
    data.info().ok().map(|i| i.id())
}

impl KernelLogs {
    /// The readers of `ebpf`'s own programs, and of earlier daemons' programs still attached
    /// that share the map `events` (this pin set's ring buffer). A reader that cannot be opened
    /// is said in the log and left out: diagnostics are never needed to run.
    pub fn open(ebpf: &mut Ebpf, events: Option<u32>) -> KernelLogs {
        let mut readers = Vec::new();
        let mut seen = HashSet::new();
        if let Some(id) = ebpf.map(LOGS_MAP).and_then(map_id) {
            seen.insert(id);
        }
        match EbpfLogger::init_with_logger(ebpf, KernelLog) {
            Ok(r) => readers.push(r),
            Err(e) => tracing::warn!("the kernel programs' diagnostics are not read: {e}"),
        }
        if let Some(events) = events {
            for prog in aya::programs::loaded_programs().flatten() {
                let Ok(Some(ids)) = prog.map_ids() else {
                    continue;
                };
                if !ids.contains(&events) {
                    continue;
                }
                let logs = ids.iter().copied().find(|id| {
                    MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(LOGS_MAP))
                });
                if let Some(logs) = logs
                    && seen.insert(logs)
                {
                    match EbpfLogger::init_from_id_with_logger(prog.id(), KernelLog) {
                        Ok(r) => readers.push(r),
                        Err(e) => tracing::warn!(
                            "the diagnostics of an earlier daemon's programs are not read: {e}"
                        ),
                    }
                }
            }
        }
        KernelLogs {
            readers,
            read_errors: 0,
        }
    }

    /// How many rings are read (this daemon's programs, and each earlier generation's).
    pub fn readers(&self) -> usize {
        self.readers.len()
    }

    /// Writes what the programs logged since the last call. aya-log panics on a record it
    /// cannot decode: that reader is dropped and counted, and the daemon goes on.
    pub fn flush(&mut self) {
        let mut failed = 0;
        self.readers.retain_mut(|r| {
            let ok = std::panic::catch_unwind(AssertUnwindSafe(|| r.flush())).is_ok();
            if !ok {
                failed += 1;
            }
            ok
        });
        self.read_errors += failed;
    }
}
