//! Kernel side of the daemon: load the eBPF object, attach tracepoints and TLS uprobes,
//! find TLS libraries per process, and decode ring-buffer records.

// aya's errors are large; they occur at start-up and attach time, never per event.
#![allow(clippy::result_large_err)]
use std::path::PathBuf;

pub mod analysis_cache;
pub mod attach;
pub mod btf_offsets;
pub mod events;
pub mod expedite;
pub mod gate_maps;
pub mod golang;
pub mod kernel_log;
pub mod libc_files;
pub mod libraries;
pub mod loader;
pub mod meter;
pub mod multi;
pub mod opaque;
pub mod pins;
pub mod plans;
pub mod read_hook;
pub mod ring;
pub mod session_procs;
pub mod tracefs;

pub use attach::{AttachedLibrary, Detached, DetachedLinks, ProcessCoverage};
pub use events::{KernelEvent, decode};
pub use loader::{DropCounters, KernelCounters, Probes, ProbesConfig, Scope};

/// mount(2) of a kernel filesystem (tracefs, bpffs) with no options.
pub(crate) fn mount_fs(
    source: &std::ffi::CStr,
    target: &std::ffi::CStr,
    fstype: &std::ffi::CStr,
) -> std::io::Result<()> {
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The daemon's first check: it loads eBPF programs, so it must be root.
pub fn require_root() -> Result<(), ProbeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::NotRoot);
    }
    Ok(())
}

/// How the probes would cover the executable or library at `path` (`agentwatch inspect`):
/// (covered exactly, what was found). Runs the same analysis the daemon runs at first contact.
pub fn inspect(path: &std::path::Path) -> (bool, String) {
    match plans::plan(path, &mut plans::analyse_uncached) {
        plans::FilePlan::Probe(plan) => {
            let points: Vec<String> = plan
                .points
                .iter()
                .map(|(symbol, program, offset)| format!("{symbol} ({program}) at {offset:#x}"))
                .collect();
            (
                true,
                format!("{}; probes: {}", plan.coverage, points.join(", ")),
            )
        }
        plans::FilePlan::NotCovered(why) => (false, format!("not covered: {why}")),
        plans::FilePlan::NoTls => (
            false,
            "no TLS library inside that the probes know (shared libraries it loads, such as libssl, are probed on their own)"
                .into(),
        ),
    }
}

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
    #[error(
        "failed to attach uprobe {symbol} at file offset {offset:#x} of {path}: {detail}; this file's TLS traffic is not captured (check `dmesg`, and that the file is not being rewritten)"
    )]
    UprobeAttach {
        symbol: String,
        offset: u64,
        path: PathBuf,
        /// The error with its causes (aya's top-level message alone omits the errno).
        detail: String,
    },
    #[error(
        "cannot read the kernel's BTF at /sys/kernel/btf/vmlinux: {detail}; the socket probes need a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Btf { detail: String },
    #[error("cannot attach the block programs to the cgroup v2 root: {detail}")]
    Cgroup { detail: String },
    #[error(
        "{what}: {detail}; remove the pinned kernel side with `agentwatch unpin` and start again"
    )]
    Pin { what: String, detail: String },
    #[error(transparent)]
    Ring(#[from] ring::RingError),
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
}
