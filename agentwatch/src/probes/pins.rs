//! The kernel side pinned in bpffs, so it outlives the daemon process.
//!
//! A daemon's maps (the ring buffer among them), the links of its global programs and the
//! per-process uprobe links are pinned under `<pin_root>/<object>-<data dir>/`. A daemon
//! that stops (SIGTERM, a crash, SIGKILL) leaves them attached: records keep arriving in the
//! pinned ring buffer, gates stay armed. The next daemon with the same eBPF object and the
//! same data directory adopts them (no gap); any other set found there (another build's
//! object, another data directory) is replaced: its held processes are continued, its pins
//! removed, and the gap since its last heartbeat is reported.
//!
//! Layout: `maps/<NAME>` (aya pins by name), `links/<program>`, and
//! `procs/<tgid>-<start ticks>/<program>-<dev>-<ino>` for a probed process's links.
use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where pin sets go by default (the DaemonSet mounts bpffs at /sys/fs/bpf).
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/agentwatch";

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The global programs whose links a complete pin set holds. (The read hook's, the pre-send
/// hook's and the file tracepoints' are there while they are attached.)
pub const GLOBAL_LINKS: [&str; 6] = [
    "task_newtask",
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
    "inet_sock_set_state",
    "sock_send_length",
];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{path} is not on a bpf filesystem and mounting one at /sys/fs/bpf failed: {source}; mount it with `mount -t bpf bpf /sys/fs/bpf` (the DaemonSet mounts the host's), or set `probes.pin = false` (a restart then loses what happens while no daemon runs)"
    )]
    NoBpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PinError {
    let path = path.to_path_buf();
    move |source| PinError::Io { what, path, source }
}

/// How this daemon's kernel side came to be, for `agentwatch status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelSide {
    /// `"adopted"` (a previous daemon's, still attached: nothing was missed while no daemon
    /// ran), `"created"` (new), or `"not pinned"` (`probes.pin = false`, or no bpffs).
    pub origin: String,
    /// The pin set's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_at: Option<PathBuf>,
    /// Seconds between the previous daemon's last heartbeat and this daemon's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_daemon_gone_secs: Option<u64>,
    /// Seconds in which nothing was captured: 0 when adopted; when a previous set was
    /// replaced, from its last heartbeat until this one's programs were attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap_secs: Option<f64>,
    /// Pin sets of other builds or data directories removed at start, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// Processes a replaced set had stopped at their first contact, continued unprobed.
    #[serde(skip_serializing_if = "is_zero")]
    pub continued_from_replaced: u64,
    /// Probed processes whose links were adopted, and links of exited ones removed.
    pub adopted_processes: u64,
    pub removed_process_links: u64,
    /// Ring buffer drops (records, bytes) counted before this daemon started: lost while
    /// the ring was full and no daemon read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_drops_before_start: Option<(u64, u64)>,
    /// Why pinning is off, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_pinned: Option<String>,
    /// The kernel programs' diagnostics (aya-log rings) read: this daemon's programs', and
    /// those of each earlier daemon whose programs are still attached; readers dropped on a
    /// record they could not decode.
    pub kernel_log_readers: usize,
    pub kernel_log_read_errors: u64,
}

impl KernelSide {
    /// A previous daemon's kernel side, taken over.
    pub fn adopted(&self) -> bool {
        self.origin == "adopted"
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The pin set of this daemon.
#[derive(Debug, Clone)]
pub struct PinSet {
    pub dir: PathBuf,
    /// Every global link is pinned there: adopt instead of attaching.
    pub adopt: bool,
    /// Other sets under the root (another object or data dir), to replace.
    pub stale: Vec<PathBuf>,
}

/// FNV-1a, for short stable names.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Makes sure `root` is on bpffs (mounting /sys/fs/bpf when nothing is mounted there).
/// The maps are declared pinned, so loading needs bpffs even with `probes.pin = false`.
pub fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) || is_bpffs(root) {
        return Ok(());
    }
    let _ = std::fs::create_dir_all("/sys/fs/bpf");
    let mounted = super::mount_fs(c"bpf", c"/sys/fs/bpf", c"bpf");
    if is_bpffs(parent) || is_bpffs(root) {
        return Ok(());
    }
    Err(PinError::NoBpffs {
        path: root.to_path_buf(),
        source: mounted.err().unwrap_or_else(|| {
            std::io::Error::other("mounted bpffs at /sys/fs/bpf, which is not where pin_root is")
        }),
    })
}

impl PinSet {
    /// The set for `object` and `data_dir` under `root`: adopted when complete, else made
    /// anew (an incomplete one is removed first).
    pub fn prepare(root: &Path, object: &[u8], data_dir: &Path) -> Result<PinSet, PinError> {
        ensure_bpffs(root)?;
        std::fs::create_dir_all(root).map_err(io("cannot create", root))?;
        let data = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let name = format!(
            "{:016x}-{:016x}",
            fnv(object),
            fnv(data.as_os_str().as_encoded_bytes())
        );
        let dir = root.join(&name);
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(root)
            .map_err(io("cannot list", root))?
            .flatten()
        {
            if entry.file_name() != name.as_str() {
                stale.push(entry.path());
            }
        }
        let adopt = GLOBAL_LINKS
            .iter()
            .all(|l| dir.join("links").join(l).exists());
        if !adopt && dir.exists() {
            remove_tree(&dir);
        }
        for sub in ["maps", "links", "procs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io("cannot create", &d))?;
        }
        Ok(PinSet { dir, adopt, stale })
    }

    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    pub fn process_dir(&self, tgid: u32, start_ticks: u64) -> PathBuf {
        self.dir.join("procs").join(format!("{tgid}-{start_ticks}"))
    }

    /// The probed processes pinned here: (tgid, start ticks, directory).
    pub fn processes(&self) -> Vec<(u32, u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("procs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (tgid, start) = name.split_once('-')?;
                Some((tgid.parse().ok()?, start.parse().ok()?, e.path()))
            })
            .collect()
    }
}

/// Removes a pin set (or any bpffs tree): unpinning a link detaches it once no descriptor
/// holds it.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        let _ = std::fs::remove_file(dir);
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Pins the BPF object `fd` (a link) at `path`.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    let c = c_path(path)?;
    // union bpf_attr, obj_pin: pathname, bpf_fd, file_flags.
    let mut attr = [0u8; 24];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: bpf(2) with an attr of the size given; the path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the BPF object pinned at `path`.
pub fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = [0u8; 24];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) with an attr of the size given; the path outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `agentwatch unpin`: removes every pin set under `root` (the kernel side of a daemon
/// stopped for good). Returns the sets removed.
pub fn unpin_all(root: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io("cannot list", root)(e)),
    };
    for e in entries.flatten() {
        let path = e.path();
        super::loader::continue_held_of(&path);
        remove_tree(&path);
        removed.push(path);
    }
    Ok(removed)
}
