//! `[actions] file_hooks = "libc"`: the files sessions change, from uprobes on the C
//! library's functions that open for writing, delete and rename, whose breakpoints the kernel
//! plants only in the memory of the processes of sessions.
//!
//! How: each function of each C library seen is a tracefs uprobe event (group
//! `agentwatch_files`, entry and return). Its program is attached once, through a per-task
//! perf event on a kernel thread (`kthreadd`: it has no user memory, so that event plants no
//! breakpoint anywhere). A process of a session is *covered* by per-task perf events of the
//! same uprobes on each of its threads, opened with `inherit`: the kernel's uprobe filter
//! then plants the breakpoints in its memory and, through inheritance, in the memory of
//! every thread and child it starts afterwards, across `exec`. The program runs wherever a
//! breakpoint is hit. A process outside every session runs its C library untouched: no
//! breakpoint, no program, no map lookup.
//!
//! What it cannot see: programs that make these system calls without the C library (Go
//! binaries, static ones) and C libraries first seen after a process was covered (another
//! mount namespace's); `file_hooks = "syscalls"` sees those, at the cost of every process's
//! system calls while a session is open.
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::libraries::{Mapping, mappings, via_root};

/// Levels above a process stopped at its exec that are covered with events of their own.
const MAX_ANCESTORS: usize = 8;

/// The tracefs group of the uprobes.
const GROUP: &str = "agentwatch_files";

/// Symbol → program (`agentwatch-ebpf/src/probes/files.rs`) for the entry; every one has
/// `libc_file_return` at its return. Symbols at one address are probed once. Wrappers that
/// only jump to one of these (`__open_2`, `__openat64_2`) are left out: the jump lands on a
/// probed entry.
pub const LIBC_FILE_FUNCTIONS: [(&str, &str); 14] = [
    ("open", "libc_open"),
    ("open64", "libc_open"),
    ("__open_nocancel", "libc_open"),
    ("__open64_nocancel", "libc_open"),
    ("openat", "libc_openat"),
    ("openat64", "libc_openat"),
    ("creat", "libc_creat"),
    ("creat64", "libc_creat"),
    ("unlink", "libc_unlink"),
    ("rmdir", "libc_unlink"),
    ("unlinkat", "libc_unlinkat"),
    ("rename", "libc_rename"),
    ("renameat", "libc_renameat"),
    ("renameat2", "libc_renameat2"),
];

/// The program at every probed function's return.
pub const RETURN_PROGRAM: &str = "libc_file_return";

/// Where C libraries usually are inside a process's root (a static agent maps none, its
/// tools do).
const USUAL_LIBCS: [&str; 6] = [
    "lib/x86_64-linux-gnu/libc.so.6",
    "usr/lib/x86_64-linux-gnu/libc.so.6",
    "lib64/libc.so.6",
    "usr/lib64/libc.so.6",
    "lib/aarch64-linux-gnu/libc.so.6",
    "lib/ld-musl-x86_64.so.1",
];

/// For status: what the `libc` file hooks hold and did.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct LibcFileStats {
    /// C libraries probed (each its own uprobes).
    pub libraries: Vec<String>,
    /// Processes covered now: by this daemon's perf events (`explicit`), or inherited from a
    /// covered parent.
    pub covered_explicit: usize,
    pub covered_inherited: usize,
    /// Processes covered since the start, each way.
    pub covers: u64,
    pub inherits: u64,
    /// Programs of sessions stopped at their exec until covered (and continued), and how
    /// long they were stopped (from the kernel's stop to the daemon's SIGCONT): the longest
    /// and the mean, in µs.
    pub exec_holds: u64,
    pub exec_hold_max_us: u64,
    pub exec_hold_mean_us: u64,
    #[serde(skip)]
    exec_hold_total_us: u64,
    /// Perf events open (one per probe per covered thread, plus the anchors).
    pub perf_events: usize,
    /// A process that could not be covered (gone, or the kernel refused an event; the
    /// last reason is in `last_failure`).
    pub cover_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// One probe of a library: the tracefs event and the perf event that carries its program.
struct Probe {
    name: String,
    id: u64,
    _anchor: OwnedFd,
}

struct Library {
    probes: Vec<Probe>,
}

/// The perf events of a process covered with its own: per C library probed for it.
#[derive(Default)]
struct Explicit {
    start_ticks: u64,
    libs: HashSet<(u64, u64)>,
    fds: Vec<OwnedFd>,
}

/// A covered process: its start and since when it is covered (clock ticks since boot, as
/// /proc/PID/stat counts), and the process whose perf events it has (itself, or the covered
/// ancestor it inherited them from).
struct Covered {
    start_ticks: u64,
    since_ticks: u64,
    origin: u32,
}

pub struct LibcFiles {
    tracefs: PathBuf,
    /// Program name → its descriptor (owned by the loaded object, which outlives this).
    programs: HashMap<&'static str, RawFd>,
    anchor_pid: i32,
    libs: HashMap<(u64, u64), Library>,
    covered: HashMap<u32, Covered>,
    /// The perf events this daemon opened, per process covered with its own. They stay
    /// open while any process that inherited them lives: closing a perf event takes its
    /// inherited copies with it.
    events: HashMap<u32, Explicit>,
    stats: LibcFileStats,
}

impl LibcFiles {
    /// Takes the uprobes of a previous daemon off (they are this group's by name) and finds
    /// the kernel thread that carries the programs.
    pub fn new(tracefs: PathBuf, programs: HashMap<&'static str, RawFd>) -> LibcFiles {
        remove_stale_events(&tracefs);
        raise_open_files_limit();
        LibcFiles {
            tracefs,
            programs,
            anchor_pid: anchor_pid(),
            libs: HashMap::new(),
            covered: HashMap::new(),
            events: HashMap::new(),
            stats: LibcFileStats::default(),
        }
    }

    pub fn stats(&self) -> LibcFileStats {
        let mut s = self.stats.clone();
        s.covered_explicit = self.covered.iter().filter(|(t, c)| c.origin == **t).count();
        s.covered_inherited = self.covered.len() - s.covered_explicit;
        s.perf_events = self.events.values().map(|e| e.fds.len()).sum::<usize>()
            + self.libs.values().map(|l| l.probes.len()).sum::<usize>();
        s
    }

    pub fn covered_count(&self) -> usize {
        self.covered.len()
    }

    pub fn is_covered(&self, tgid: u32) -> bool {
        self.covered.contains_key(&tgid)
    }

    /// Covers the processes of sessions `tgids` (the kernel's `SESSION_PROCS`) not covered
    /// yet, parents first: one started after its parent was covered inherited its events;
    /// the others get their own. Covered processes that ended are let go, and the perf
    /// events no live process has any more are closed.
    pub fn sync(&mut self, tgids: &[u32]) {
        let listed: HashSet<u32> = tgids.iter().copied().collect();
        // Not listed: ended (or missed by a map walk racing with deletes: then still there).
        self.covered.retain(|t, c| {
            listed.contains(t) || stat(*t).is_some_and(|(_, start)| start == c.start_ticks)
        });
        let mut new: Vec<(u64, u32, u32)> = tgids
            .iter()
            .filter(|t| !self.covered.contains_key(t))
            .filter_map(|&t| stat(t).map(|(ppid, start)| (start, t, ppid)))
            .collect();
        new.sort_unstable();
        for (start, tgid, ppid) in new {
            let parent = self
                .covered
                .get(&ppid)
                .filter(|p| start > p.since_ticks)
                .map(|p| p.origin);
            match parent {
                Some(origin) => {
                    self.covered.insert(
                        tgid,
                        Covered {
                            start_ticks: start,
                            since_ticks: start,
                            origin,
                        },
                    );
                    self.stats.inherits += 1;
                }
                None => {
                    self.cover(tgid);
                }
            }
        }
        let origins: HashSet<u32> = self.covered.values().map(|c| c.origin).collect();
        self.events.retain(|o, _| origins.contains(o));
    }

    /// A process the kernel stopped at its exec (the caller continues it): covered with
    /// events of its own, and so are the processes above it in its session that only
    /// inherited theirs (a fork that did not exec, a subshell): an inherited perf event is
    /// closed when a child that holds the parent's context at a switch ends (perf swaps the
    /// contexts of a parent and child that inherited the same events), and the breakpoints
    /// with it; a process's own events stay.
    pub fn cover_held(&mut self, tgid: u32, session_tgids: &[u32]) {
        self.sync(session_tgids);
        self.stats.exec_holds += 1;
        let mut next = Some(tgid);
        for _ in 0..MAX_ANCESTORS {
            let Some(t) = next else { break };
            match self.covered.get(&t) {
                Some(c) if c.origin == t && t != tgid => break,
                // Its events are its own (they survived its exec: same task); the program
                // it runs now may load a C library it has none of.
                Some(c) if c.origin == t => {
                    self.cover(t);
                }
                Some(_) => {
                    self.cover(t);
                }
                // Not a session's process (yet): itself only.
                None if t == tgid => {
                    self.cover(t);
                }
                None => break,
            }
            next = stat(t).map(|(ppid, _)| ppid).filter(|&p| p > 1);
        }
    }

    /// A process stopped at its exec was continued `ns` after the kernel stopped it.
    pub fn held_for(&mut self, ns: u64) {
        let us = ns / 1000;
        let s = &mut self.stats;
        s.exec_hold_max_us = s.exec_hold_max_us.max(us);
        s.exec_hold_total_us += us;
        s.exec_hold_mean_us = s.exec_hold_total_us / s.exec_holds.max(1);
    }

    /// Covers `tgid` with perf events of its own (each of its threads, every library's
    /// probes), after probing the C libraries it maps or has at the usual places. Returns
    /// whether it is covered.
    pub fn cover(&mut self, tgid: u32) -> bool {
        let since_ticks = now_ticks();
        let Some((_, start_ticks)) = stat(tgid) else {
            self.failed(format!("process {tgid} is gone"));
            return false;
        };
        self.add_libraries_of(tgid);
        // Events of a process that had this pid before are closed.
        let mut own = self
            .events
            .remove(&tgid)
            .filter(|e| e.start_ticks == start_ticks)
            .unwrap_or_default();
        own.start_ticks = start_ticks;
        // Only the libraries it has no events of yet (a program it exec'd may load
        // another: a chroot's).
        let new: Vec<((u64, u64), Vec<u64>)> = self
            .libs
            .iter()
            .filter(|(identity, _)| !own.libs.contains(*identity))
            .map(|(identity, l)| (*identity, l.probes.iter().map(|p| p.id).collect()))
            .collect();
        let threads = threads(tgid);
        if threads.is_empty() {
            self.failed(format!("process {tgid} is gone"));
            return false;
        }
        let mut ok = true;
        'libs: for (identity, ids) in new {
            for &tid in &threads {
                for &id in &ids {
                    match perf_event_open(id, tid as i32, true) {
                        Ok(fd) => own.fds.push(fd),
                        // A thread that ended meanwhile; the others still cover the process.
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => break,
                        Err(e) => {
                            self.failed(format!(
                                "failed to open a perf event of uprobe {id} on thread {tid} of process {tgid}: {e}"
                            ));
                            ok = false;
                            break 'libs;
                        }
                    }
                }
            }
            own.libs.insert(identity);
        }
        self.covered.insert(
            tgid,
            Covered {
                start_ticks,
                since_ticks,
                origin: tgid,
            },
        );
        self.events.insert(tgid, own);
        self.stats.covers += 1;
        ok
    }

    fn failed(&mut self, why: String) {
        tracing::debug!("[actions] files: {why}");
        self.stats.cover_failures += 1;
        self.stats.last_failure = Some(why);
    }

    /// Probes the C libraries `tgid` maps, and those at the usual places of its root.
    fn add_libraries_of(&mut self, tgid: u32) {
        let mut candidates: Vec<(u64, u64, PathBuf, String)> = mappings(tgid)
            .into_iter()
            .filter(|m| is_libc(&m.path))
            .map(|Mapping { identity, path, .. }| {
                (identity.0, identity.1, via_root(tgid, &path), path)
            })
            .collect();
        for usual in USUAL_LIBCS {
            let via = via_root(tgid, usual);
            if let Ok(meta) = std::fs::metadata(&via) {
                use std::os::unix::fs::MetadataExt;
                candidates.push((meta.dev(), meta.ino(), via, format!("/{usual}")));
            }
        }
        for (dev, ino, via, shown) in candidates {
            if self.libs.contains_key(&(dev, ino)) {
                continue;
            }
            match self.probe_library(&via, (dev, ino)) {
                Ok(lib) => {
                    tracing::info!(
                        library = %shown,
                        probes = lib.probes.len(),
                        "[actions] files: probed the C library's file functions"
                    );
                    self.stats.libraries.push(shown);
                    self.libs.insert((dev, ino), lib);
                }
                Err(e) => {
                    tracing::warn!("[actions] files: {e}");
                    self.failed(e);
                    // Not tried again for every process.
                    self.libs.insert((dev, ino), Library { probes: Vec::new() });
                }
            }
        }
    }

    /// The uprobes (entry and return) of each file function `via` exports, with their
    /// programs attached through the anchor thread.
    fn probe_library(&self, via: &Path, identity: (u64, u64)) -> Result<Library, String> {
        let names: Vec<&str> = LIBC_FILE_FUNCTIONS.iter().map(|(s, _)| *s).collect();
        let mut offsets = super::plans::exported_offsets(via, &names);
        if offsets.is_empty() {
            return Err(format!(
                "{} exports none of the C library's file functions; files its users change are not reported",
                via.display()
            ));
        }
        offsets.sort_by_key(|(_, o)| *o);
        offsets.dedup_by_key(|(_, o)| *o);
        let mut probes = Vec::new();
        for (symbol, offset) in offsets {
            let Some(program) = LIBC_FILE_FUNCTIONS
                .iter()
                .find(|(s, _)| *s == symbol)
                .map(|(_, p)| *p)
            else {
                continue;
            };
            for (kind, program) in [('p', program), ('r', RETURN_PROGRAM)] {
                let name = format!("{kind}_{:x}_{:x}_{offset:x}", identity.0, identity.1);
                let probe = self.create_probe(&name, kind, via, offset, program).map_err(|e| {
                    format!(
                        "failed to attach uprobe {symbol} ({program}) at file offset {offset:#x} of {}: {e}; files its users change are not reported (check `dmesg` and {}/uprobe_events)",
                        via.display(),
                        self.tracefs.display()
                    )
                })?;
                probes.push(probe);
            }
        }
        Ok(Library { probes })
    }

    fn create_probe(
        &self,
        name: &str,
        kind: char,
        via: &Path,
        offset: u64,
        program: &str,
    ) -> std::io::Result<Probe> {
        use std::io::Write;
        let line = format!("{kind}:{GROUP}/{name} {}:{offset:#x}\n", via.display());
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.tracefs.join("uprobe_events"))?
            .write_all(line.as_bytes())?;
        let id: u64 = std::fs::read_to_string(
            self.tracefs
                .join("events")
                .join(GROUP)
                .join(name)
                .join("id"),
        )?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad event id: {e}")))?;
        let prog = *self
            .programs
            .get(program)
            .ok_or_else(|| std::io::Error::other(format!("program {program} not loaded")))?;
        let anchor = perf_event_open(id, self.anchor_pid, false)?;
        // SAFETY: PERF_EVENT_IOC_SET_BPF on a perf event we own, with a loaded program's fd.
        if unsafe { libc::ioctl(anchor.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Probe {
            name: name.to_string(),
            id,
            _anchor: anchor,
        })
    }
}

impl Drop for LibcFiles {
    /// Closes every perf event, then takes the uprobes out of tracefs.
    fn drop(&mut self) {
        self.covered.clear();
        self.events.clear();
        let names: Vec<String> = self
            .libs
            .drain()
            .flat_map(|(_, l)| l.probes.into_iter().map(|p| p.name))
            .collect();
        for name in names {
            remove_event(&self.tracefs, &name);
        }
    }
}

/// `libc.so.6`, `libc-2.31.so`, musl's `ld-musl-x86_64.so.1` (musl's C library is its loader).
fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so")
        || (name.starts_with("libc-") && name.ends_with(".so"))
        || name.starts_with("ld-musl-")
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `_IOW('$', 8, __u32)`
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// A per-task perf event of tracefs event `id` on thread `tid`: with `inherit`, disabled (it
/// only has to exist for the uprobe filter to plant breakpoints in the thread's memory).
fn perf_event_open(id: u64, tid: i32, inherit: bool) -> std::io::Result<OwnedFd> {
    // struct perf_event_attr up to `config3` (PERF_ATTR_SIZE_VER8).
    #[repr(C)]
    struct Attr {
        kind: u32,
        size: u32,
        config: u64,
        sample_period: u64,
        sample_type: u64,
        read_format: u64,
        flags: u64,
        rest: [u64; 11],
    }
    const DISABLED: u64 = 1;
    const INHERIT: u64 = 1 << 1;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let attr = Attr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<Attr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: 0,
        read_format: 0,
        flags: if inherit { DISABLED | INHERIT } else { 0 },
        rest: [0; 11],
    };
    // SAFETY: perf_event_open with a valid attr of the size it states; the fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const Attr,
            tid,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The task that carries the programs: `kthreadd` (pid 2) when it is a kernel thread in our
/// pid namespace, else the daemon itself (its own calls then hit the breakpoints; they are
/// not a session's, so nothing is recorded).
fn anchor_pid() -> i32 {
    let kthread = std::fs::read_to_string("/proc/2/stat").ok().and_then(|s| {
        let rest = &s[s.rfind(')')? + 2..];
        // Field 9 (flags) is the 7th after the comm; PF_KTHREAD = 0x00200000.
        let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
        Some(flags & 0x0020_0000 != 0)
    });
    if kthread == Some(true) {
        2
    } else {
        tracing::info!(
            "[actions] files: pid 2 is not kthreadd here; the daemon's own C library carries the file probes' programs"
        );
        0
    }
}

/// Each covered thread holds a perf event per probe (about 20 per C library): the soft limit
/// of open descriptors (often 1024) is raised to the hard one.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!(
                    "could not raise RLIMIT_NOFILE: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// (ppid, start in clock ticks since boot) of `tgid`.
fn stat(tgid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(0) ppid(1) … starttime(19).
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn now_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    crate::sessions::clock::boot_now_ns() / (1_000_000_000 / hz)
}

fn threads(tgid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{tgid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_event(tracefs: &Path, name: &str) {
    use std::io::Write;
    let removed = std::fs::OpenOptions::new()
        .append(true)
        .open(tracefs.join("uprobe_events"))
        .and_then(|mut f| f.write_all(format!("-:{GROUP}/{name}\n").as_bytes()));
    if let Err(e) = removed {
        tracing::debug!("could not remove uprobe {GROUP}/{name}: {e}");
    }
}

/// Removes this group's uprobes left by a daemon that did not stop cleanly.
fn remove_stale_events(tracefs: &Path) {
    let Ok(text) = std::fs::read_to_string(tracefs.join("uprobe_events")) else {
        return;
    };
    for line in text.lines() {
        let Some(def) = line.split_whitespace().next() else {
            continue;
        };
        if let Some(name) = def
            .split_once(':')
            .and_then(|(_, n)| n.strip_prefix(GROUP))
            .and_then(|n| n.strip_prefix('/'))
        {
            remove_event(tracefs, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_libraries_are_told_by_name() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(is_libc("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_libc("/usr/lib/x86_64-linux-gnu/libcrypto.so.3"));
        assert!(!is_libc("/usr/lib/libcap.so.2"));
    }

    #[test]
    fn the_system_c_library_exports_the_file_functions_at_distinct_offsets() {
        let Some(libc) = USUAL_LIBCS
            .iter()
            .map(|p| PathBuf::from("/").join(p))
            .find(|p| p.exists())
        else {
            panic!("no C library at the usual places");
        };
        let names: Vec<&str> = LIBC_FILE_FUNCTIONS.iter().map(|(s, _)| *s).collect();
        let found = crate::probes::plans::exported_offsets(&libc, &names);
        for wanted in [
            "open64",
            "openat",
            "unlink",
            "unlinkat",
            "rename",
            "renameat2",
        ] {
            assert!(
                found.iter().any(|(s, o)| s == wanted && *o > 0),
                "{wanted} not found in {}: {found:?}",
                libc.display()
            );
        }
        let open = found.iter().find(|(s, _)| s == "open64").unwrap().1;
        let unlink = found.iter().find(|(s, _)| s == "unlink").unwrap().1;
        assert_ne!(open, unlink);
    }
}
