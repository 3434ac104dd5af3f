//! Kernel side of the daemon: load the eBPF object, attach tracepoints and TLS uprobes,
//! find TLS libraries per process, and decode ring-buffer records.

// aya's errors are large; they occur at start-up and attach time, never per event.
#![allow(clippy::result_large_err)]
pub mod analysis_cache;
pub mod events;
pub mod golang;
pub mod libraries;
pub mod loader;
pub mod meter;
pub mod opaque;
pub mod tracefs;

use std::path::PathBuf;

pub use events::{KernelEvent, decode};

/// How the probes would cover the executable or library at `path` (`agentwatch inspect`):
/// (covered exactly, what was found). Runs the same analysis the daemon runs at exec.
pub fn inspect(path: &std::path::Path) -> (bool, String) {
    let exported = libraries::exported_tls_symbols(path);
    if !exported.is_empty() {
        return (
            true,
            format!("exact: exported symbols {}", exported.join(" ")),
        );
    }
    match golang::scan(path) {
        golang::GoScan::Probes(p) => {
            return (
                true,
                format!(
                    "exact: Go crypto/tls symbols (Write at {:#x}, Read at {:#x})",
                    p.write, p.read
                ),
            );
        }
        golang::GoScan::NotCovered(why) => return (false, format!("not covered: {why}")),
        golang::GoScan::NoTls => return (false, "a Go binary without crypto/tls".into()),
        golang::GoScan::NotGo => {}
    }
    match opaque::scan(path) {
        opaque::OpaqueScan::Located(l) => (true, format!("exact: {}", l.describe(true))),
        opaque::OpaqueScan::NotLocated(why) => (false, format!("not covered: {why}")),
        opaque::OpaqueScan::NotTls => (
            false,
            "no TLS library inside that the probes know (shared libraries it loads, such as libssl, are probed on their own)"
                .into(),
        ),
    }
}
pub use loader::{DropCounters, Probes, ProbesConfig};

/// Everything that can go wrong between the daemon and the kernel, named so the user knows
/// what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "agentwatch must run as root (it loads eBPF programs and needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN): run it with sudo"
    )]
    NotRoot,
    #[error(
        "tracefs is not available at /sys/kernel/tracing and mounting it failed: {source}; mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Tracefs { source: std::io::Error },
    #[error("failed to read tracepoint format {path}: {source}")]
    TracepointFormat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field `{field}` on this kernel")]
    MissingField { tracepoint: String, field: String },
    #[error(
        "this agentwatch binary has no eBPF object embedded: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("failed to load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program `{name}` is missing from the object")]
    MissingProgram { name: String },
    #[error("eBPF map `{name}` is missing from the object")]
    MissingMap { name: String },
    #[error("failed to load eBPF program `{name}` (check the kernel log and `dmesg`): {source}")]
    ProgramLoad {
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach tracepoint {category}:{name}: {source}")]
    TracepointAttach {
        category: String,
        name: String,
        source: aya::programs::ProgramError,
    },
    #[error("failed to attach uprobe {symbol} to {path}: {source}")]
    UprobeAttach {
        symbol: String,
        path: PathBuf,
        source: aya::programs::ProgramError,
    },
    #[error(
        "failed to attach uprobe {symbol} to {path}: {detail}; the Go TLS traffic of this binary is not captured (check `dmesg`, and that the file is an amd64 Go binary that is not being rewritten)"
    )]
    GoUprobeAttach {
        symbol: String,
        path: PathBuf,
        /// The error with its causes (aya's top-level message alone omits the errno).
        detail: String,
    },
    #[error(
        "failed to attach uprobe {symbol} at file offset {offset:#x} of {path} (located by analysis): {detail}; this binary's TLS traffic is not captured exactly (check `dmesg`)"
    )]
    LocatedUprobeAttach {
        symbol: String,
        offset: u64,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot attach the block programs to the cgroup v2 root: {detail}")]
    Cgroup { detail: String },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
}
