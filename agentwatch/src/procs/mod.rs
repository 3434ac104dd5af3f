//! The process tree: every process on the host, keyed by (tgid, start time).
//!
//! * Keys: [`ProcKey`] = tgid + start time in clock ticks since boot (`/proc/PID/stat` field 22),
//!   so a reused pid is a different process.
//! * Seeded from a `/proc`-like directory ([`ProcTree::seed`]), then kept current by kernel
//!   events: [`ProcTree::on_fork`], [`ProcTree::on_exec`], [`ProcTree::on_exit`]. A TLS event
//!   from an unknown tgid (missed fork) is handled with [`ProcTree::ensure`].
//! * The ORIGINAL tree is kept: a child's parent link always points at the process that forked
//!   it, even after the kernel reparents it. An exited process stays (as "exited") while it has
//!   descendants in the tree; when its last descendant goes, it and every exited ancestor that
//!   became childless are removed together. Removals are reported as keys so that sessions can
//!   close.
//! * Bounded: at most [`ProcConfig::max_procs`] entries; processes over the cap are counted
//!   ([`ProcTree::dropped_over_cap`]) and not inserted.
//!
//! Nothing here panics on a vanished process: every `/proc` read may fail, and that is normal.

pub mod sockets;
mod stat;
#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod cmdline_tests {
    use super::*;

    #[test]
    fn free_text_arguments_are_redacted() {
        let info = ProcInfo {
            key: ProcKey {
                tgid: 1,
                start_ticks: 1,
            },
            ppid: 0,
            parent: None,
            comm: "claude".into(),
            exe: None,
            cmdline: vec![
                "claude".into(),
                "-p".into(),
                "fix the bug in main.rs".into(),
                "--model=x".into(),
            ],
            exited: false,
            execed: false,
            children: 0,
        };
        assert_eq!(
            info.cmdline_display(),
            "claude -p <redacted 22 bytes> --model=x"
        );
    }
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use stat::Snapshot;

/// A process: thread-group id and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcKey {
    pub tgid: u32,
    pub start_ticks: u64,
}

/// What the tree knows about one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcInfo {
    pub key: ProcKey,
    /// The parent pid as last read (or the forking tgid); may name a process not in the tree.
    pub ppid: u32,
    /// The process that forked this one, when it is in the tree. Never rewritten on reparenting.
    pub parent: Option<ProcKey>,
    pub comm: String,
    pub exe: Option<String>,
    /// Arguments, at most 4 KiB of `/proc/PID/cmdline`.
    pub cmdline: Vec<String>,
    /// Exited, kept because it still has descendants in the tree.
    pub exited: bool,
    /// It ran a program of its own: an exec was seen, or it was learnt from /proc running
    /// another executable than its parent.
    pub execed: bool,
    /// Direct children in the tree (live or kept).
    pub children: u32,
}

impl ProcInfo {
    /// Arguments joined with spaces (for display; arguments with spaces are ambiguous).
    /// The command line with free-text arguments redacted: agents are often started with
    /// their prompt as an argument (`claude -p "…"`), and prompt text is never stored.
    /// Arguments of at most 64 bytes without whitespace (flags, paths, names) are kept.
    pub fn cmdline_display(&self) -> String {
        self.cmdline
            .iter()
            .map(|arg| {
                if arg.len() <= 64 && !arg.chars().any(char::is_whitespace) {
                    arg.clone()
                } else {
                    format!("<redacted {} bytes>", arg.len())
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcConfig {
    /// Maximum number of processes in the tree (live + exited-but-kept).
    pub max_procs: usize,
}

impl Default for ProcConfig {
    fn default() -> Self {
        Self { max_procs: 65_536 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error(
        "cannot list processes in {path}: {source}; check that procfs is mounted there and readable"
    )]
    ReadProcRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Longest parent chain walked (guards against corrupt links).
const MAX_CHAIN: usize = 4096;

#[derive(Debug)]
pub struct ProcTree {
    proc_root: PathBuf,
    config: ProcConfig,
    clk_tck: u64,
    /// Every process in the tree, live or exited-but-kept.
    by_key: HashMap<ProcKey, ProcInfo>,
    /// Live processes only: tgid → key. An exited tgid is free for reuse.
    live: HashMap<u32, ProcKey>,
    /// Removed keys not yet handed out (stale entries evicted by fork/exec/ensure).
    pending_removed: Vec<ProcKey>,
    dropped_over_cap: u64,
    /// Processes a previous daemon knew that were gone when this one started, kept under
    /// their pid until their exit record is read (see [`Self::insert_gone`]), with the pid
    /// of their session's root.
    gone: HashMap<ProcKey, u32>,
}

impl ProcTree {
    /// An empty tree reading processes from `proc_root` (normally `/proc`).
    pub fn new(proc_root: &Path, config: ProcConfig) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            config,
            clk_tck: stat::clk_tck(),
            by_key: HashMap::new(),
            live: HashMap::new(),
            pending_removed: Vec::new(),
            dropped_over_cap: 0,
            gone: HashMap::new(),
        }
    }

    /// A tree seeded from every process in `proc_root`, default config.
    pub fn seed(proc_root: &Path) -> Result<Self, ProcError> {
        Self::seed_with(proc_root, ProcConfig::default())
    }

    /// A tree seeded from every process in `proc_root`. Processes that vanish during the scan
    /// are skipped; parent links are set when the parent is in the tree and started no later
    /// than the child.
    pub fn seed_with(proc_root: &Path, config: ProcConfig) -> Result<Self, ProcError> {
        let mut tree = Self::new(proc_root, config);
        let entries = std::fs::read_dir(proc_root).map_err(|source| ProcError::ReadProcRoot {
            path: proc_root.to_path_buf(),
            source,
        })?;
        let mut snaps: Vec<(u32, Snapshot)> = Vec::new();
        for entry in entries.flatten() {
            let Some(tgid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(snap) = stat::read_snapshot(proc_root, tgid) {
                snaps.push((tgid, snap));
            }
        }
        // Parents first (start time order), so links can be made on insertion.
        snaps.sort_by_key(|(tgid, s)| (s.stat.start_ticks, *tgid));
        for (tgid, snap) in snaps {
            let ppid = snap.stat.ppid;
            tree.insert_snapshot(tgid, snap, ppid);
        }
        Ok(tree)
    }

    /// Boot-clock nanoseconds at which `key` started (clock-tick precision).
    pub fn start_ns(&self, key: ProcKey) -> u64 {
        key.start_ticks
            .saturating_mul(1_000_000_000 / self.clk_tck.max(1))
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The live process with this tgid.
    pub fn get_by_tgid(&self, tgid: u32) -> Option<&ProcInfo> {
        self.live.get(&tgid).and_then(|k| self.by_key.get(k))
    }

    /// The key of the live process with this tgid.
    pub fn key_of(&self, tgid: u32) -> Option<ProcKey> {
        self.live.get(&tgid).copied()
    }

    /// Any process in the tree, live or exited-but-kept.
    pub fn get(&self, key: ProcKey) -> Option<&ProcInfo> {
        self.by_key.get(&key)
    }

    pub fn contains(&self, key: ProcKey) -> bool {
        self.by_key.contains_key(&key)
    }

    /// Whether this exact process is alive (in the tree and not exited).
    pub fn is_live(&self, key: ProcKey) -> bool {
        self.live.get(&key.tgid) == Some(&key) && !self.gone.contains_key(&key)
    }

    /// A process a previous daemon knew (a session's root or agent) that was gone when this
    /// one started: kept under its pid, as if alive, so that the records it and its children
    /// left in the ring buffer while no daemon ran are charged to it, until its exit record
    /// is read (or [`Self::gone`] says it never will be). Not inserted when another process
    /// has its pid now. Never live for [`Self::is_live`] or [`Self::live_subtree`]: nothing
    /// is signalled or marked through it. `session`: the pid of its session's root, which the
    /// kernel's records of it carry (a record with another is of a process that reused the
    /// pid: see [`Self::stands_in_for_another`]).
    pub fn insert_gone(
        &mut self,
        key: ProcKey,
        session: u32,
        comm: String,
        exe: Option<String>,
        parent: Option<ProcKey>,
    ) -> bool {
        if self.live.contains_key(&key.tgid) || self.by_key.contains_key(&key) {
            return false;
        }
        let snap = Snapshot {
            stat: stat::StatFields {
                comm,
                ppid: parent.map_or(0, |p| p.tgid),
                start_ticks: key.start_ticks,
            },
            cmdline: exe.iter().cloned().collect(),
            exe,
        };
        let ppid = snap.stat.ppid;
        if self.insert_with_parent(key.tgid, snap, ppid, parent) != Some(key) {
            return false;
        }
        self.gone.insert(key, session);
        true
    }

    /// `key` is `parent`'s child from now on (the kernel says so: its parent ended while no
    /// daemon ran, and it was reparented). False when either is not in the tree, or `parent`
    /// is `key` or below it.
    pub fn reparent(&mut self, key: ProcKey, parent: ProcKey) -> bool {
        if key == parent
            || !self.by_key.contains_key(&key)
            || !self.by_key.contains_key(&parent)
            || self.ancestors(parent).any(|a| a.key == key)
        {
            return false;
        }
        let old = self.by_key.get(&key).and_then(|i| i.parent);
        if old == Some(parent) {
            return true;
        }
        if let Some(p) = self.by_key.get_mut(&parent) {
            p.children += 1;
        }
        if let Some(info) = self.by_key.get_mut(&key) {
            info.parent = Some(parent);
        }
        if let Some(old_key) = old
            && let Some(o) = self.by_key.get_mut(&old_key)
        {
            o.children = o.children.saturating_sub(1);
            if o.exited && o.children == 0 {
                self.mark_exited(old_key); // kept for its children only: gone now
            }
        }
        true
    }

    /// A process of a session whose exit record is the first the tree hears of it (it started
    /// before this daemon, and ended before /proc could be read): inserted, already gone,
    /// under `parent` (its session's root) with what the record says, so that its exit is
    /// handled like any other's.
    pub fn insert_ended(
        &mut self,
        tgid: u32,
        start_ns: u64,
        comm: String,
        execed: bool,
        parent: ProcKey,
    ) -> Option<ProcKey> {
        let snap = Snapshot {
            stat: stat::StatFields {
                comm,
                ppid: parent.tgid,
                start_ticks: stat::ns_to_ticks(start_ns, self.clk_tck),
            },
            exe: None,
            cmdline: Vec::new(),
        };
        let key = self.insert_with_parent(tgid, snap, parent.tgid, Some(parent))?;
        if let Some(info) = self.by_key.get_mut(&key) {
            info.execed = execed;
        }
        Some(key)
    }

    /// `tgid` names a stand-in of [`Self::insert_gone`], and a record of it that says it is in
    /// the session of root `session` (0: none) is of another process (one that reused the pid
    /// and was not seen starting): not the stand-in's.
    pub fn stands_in_for_another(&self, tgid: u32, session: u32) -> bool {
        self.live
            .get(&tgid)
            .and_then(|k| self.gone.get(k))
            .is_some_and(|root| *root != session)
    }

    /// The pids of the processes of [`Self::insert_gone`] whose exit was not read yet.
    pub fn gone(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.gone.keys().map(|k| k.tgid).collect();
        v.sort_unstable();
        v
    }

    pub fn parent(&self, key: ProcKey) -> Option<&ProcInfo> {
        self.by_key
            .get(&key)
            .and_then(|p| p.parent)
            .and_then(|k| self.by_key.get(&k))
    }

    /// The ancestors of `key`, nearest first (not including `key` itself).
    pub fn ancestors(&self, key: ProcKey) -> Ancestors<'_> {
        Ancestors {
            tree: self,
            next: self.by_key.get(&key).and_then(|p| p.parent),
            steps: 0,
        }
    }

    pub fn live_count(&self) -> usize {
        self.live.len().saturating_sub(self.gone.len())
    }

    /// Live processes of the subtree rooted at `root` (itself included when live), e.g. to
    /// signal a whole session, tool processes included. Linear in the live processes; used
    /// for enforcement actions, not per event.
    pub fn live_subtree(&self, root: ProcKey) -> Vec<ProcKey> {
        self.live
            .values()
            .copied()
            .filter(|k| !self.gone.contains_key(k))
            .filter(|k| *k == root || self.ancestors(*k).any(|a| a.key == root))
            .collect()
    }

    pub fn exited_kept_count(&self) -> usize {
        self.by_key.len() - self.live_count()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Processes not inserted because the tree was full.
    pub fn dropped_over_cap(&self) -> u64 {
        self.dropped_over_cap
    }

    /// Keys removed as a side effect of `on_fork`, `on_exec` or `ensure` (a stale entry for a
    /// reused pid whose exit was missed). `on_exit` returns these too.
    pub fn take_removed(&mut self) -> Vec<ProcKey> {
        std::mem::take(&mut self.pending_removed)
    }

    /// `child_tgid` was forked by `parent_tgid` at boot-clock `ts_ns`. The child's start time
    /// comes from /proc; if the child already vanished, from `ts_ns` (may differ from the
    /// kernel's value by one tick at a tick boundary). Returns the child's key, `None` when the
    /// tree is full.
    pub fn on_fork(&mut self, parent_tgid: u32, child_tgid: u32, ts_ns: u64) -> Option<ProcKey> {
        self.on_fork_in(parent_tgid, child_tgid, ts_ns, 0)
    }

    /// [`Self::on_fork`], with `session`: the pid of the root of the session the kernel says
    /// the child is in (0: none), taken as its parent when the forking process is not known
    /// (it came and went while no daemon ran).
    pub fn on_fork_in(
        &mut self,
        parent_tgid: u32,
        child_tgid: u32,
        ts_ns: u64,
        session: u32,
    ) -> Option<ProcKey> {
        let parent_key = if self.stands_in_for_another(parent_tgid, session) {
            None
        } else {
            self.ensure(parent_tgid)
        };
        let parent_key = parent_key.or_else(|| {
            (session != 0 && !self.stands_in_for_another(session, session))
                .then(|| self.key_of(session))
                .flatten()
        });
        let snap = match stat::read_snapshot(&self.proc_root, child_tgid) {
            Some(snap) => snap,
            None => {
                // Vanished already: it was a copy of its parent.
                let parent = parent_key.and_then(|k| self.by_key.get(&k));
                Snapshot {
                    stat: stat::StatFields {
                        comm: parent.map(|p| p.comm.clone()).unwrap_or_default(),
                        ppid: parent_tgid,
                        start_ticks: stat::ns_to_ticks(ts_ns, self.clk_tck),
                    },
                    exe: parent.and_then(|p| p.exe.clone()),
                    cmdline: parent.map(|p| p.cmdline.clone()).unwrap_or_default(),
                }
            }
        };
        let key = ProcKey {
            tgid: child_tgid,
            start_ticks: snap.stat.start_ticks,
        };
        if let Some(existing) = self.live.get(&child_tgid).copied() {
            if existing == key {
                return Some(key); // already learnt (ensure raced ahead of the fork event)
            }
            self.mark_exited(existing); // pid reused, exit missed
        }
        // The forking process is the parent, whatever /proc says now (reparenting).
        self.insert_with_parent(child_tgid, snap, parent_tgid, parent_key)
    }

    /// `tgid` exec'd `filename`: refresh comm, exe and cmdline from /proc, or keep `filename`
    /// when /proc is gone. An unknown tgid is learnt first.
    pub fn on_exec(&mut self, tgid: u32, filename: &str) -> Option<ProcKey> {
        let snap = stat::read_snapshot(&self.proc_root, tgid);
        if let Some(snap) = &snap
            && let Some(existing) = self.live.get(&tgid).copied()
            && existing.start_ticks != snap.stat.start_ticks
        {
            self.mark_exited(existing); // stale entry for a reused pid
        }
        let key = match self.live.get(&tgid).copied() {
            Some(k) => k,
            None => match snap {
                Some(snap) => {
                    let ppid = snap.stat.ppid;
                    self.ensure(ppid);
                    return self.insert_snapshot(tgid, snap, ppid);
                }
                None => return None, // unknown and gone: nothing to attach it to
            },
        };
        let info = self.by_key.get_mut(&key)?;
        info.execed = true;
        match snap {
            Some(snap) => {
                info.comm = snap.stat.comm;
                info.exe = snap.exe.or_else(|| Some(filename.to_string()));
                info.cmdline = snap.cmdline;
            }
            None => {
                info.comm = stat::comm_from_filename(filename);
                info.exe = Some(filename.to_string());
                info.cmdline = vec![filename.to_string()];
            }
        }
        Some(key)
    }

    /// The arguments the kernel read at `tgid`'s exec (after its exec record): they win over
    /// `/proc`, which a short-lived process has left by the time it is read. `cut`: the last
    /// one was cut short (marked with `…`).
    pub fn set_cmdline(&mut self, tgid: u32, mut args: Vec<String>, cut: bool) {
        let Some(key) = self.live.get(&tgid).copied() else {
            return;
        };
        if let Some(info) = self.by_key.get_mut(&key)
            && !args.is_empty()
        {
            if cut && let Some(last) = args.last_mut() {
                last.push('…');
            }
            info.cmdline = args;
        }
    }

    /// `tgid` exited. Returns every key REMOVED from the tree (it, if childless, and the exited
    /// ancestors that became childless), plus any pending removals (see [`Self::take_removed`]).
    pub fn on_exit(&mut self, tgid: u32) -> Vec<ProcKey> {
        if let Some(key) = self.live.get(&tgid).copied() {
            self.mark_exited(key);
        }
        self.take_removed()
    }

    /// The key of live `tgid`, learning it (and its missing ancestors) from /proc when the
    /// tree does not know it. `None` when it vanished or the tree is full.
    pub fn ensure(&mut self, tgid: u32) -> Option<ProcKey> {
        if let Some(k) = self.live.get(&tgid) {
            return Some(*k);
        }
        // Walk up until a known ancestor (or the top), then insert top-down.
        let mut chain: Vec<(u32, Snapshot)> = Vec::new();
        let mut cur = tgid;
        while chain.len() < MAX_CHAIN {
            let Some(snap) = stat::read_snapshot(&self.proc_root, cur) else {
                break;
            };
            let ppid = snap.stat.ppid;
            chain.push((cur, snap));
            if ppid == 0 || self.live.contains_key(&ppid) || chain.iter().any(|(t, _)| *t == ppid) {
                break;
            }
            cur = ppid;
        }
        if chain.first().map(|(t, _)| *t) != Some(tgid) {
            return None;
        }
        let mut result = None;
        for (t, snap) in chain.into_iter().rev() {
            let ppid = snap.stat.ppid;
            result = self.insert_snapshot(t, snap, ppid);
        }
        result
    }

    /// Inserts with the parent taken from the live tgid `ppid` (when it started no later).
    fn insert_snapshot(&mut self, tgid: u32, snap: Snapshot, ppid: u32) -> Option<ProcKey> {
        let parent = self
            .live
            .get(&ppid)
            .copied()
            .filter(|p| p.start_ticks <= snap.stat.start_ticks && p.tgid != tgid);
        self.insert_with_parent(tgid, snap, ppid, parent)
    }

    fn insert_with_parent(
        &mut self,
        tgid: u32,
        snap: Snapshot,
        ppid: u32,
        parent: Option<ProcKey>,
    ) -> Option<ProcKey> {
        let key = ProcKey {
            tgid,
            start_ticks: snap.stat.start_ticks,
        };
        if self.by_key.contains_key(&key) {
            return Some(key);
        }
        if self.by_key.len() >= self.config.max_procs {
            self.dropped_over_cap += 1;
            return None;
        }
        if let Some(old) = self.live.get(&tgid).copied() {
            self.mark_exited(old);
        }
        let parent = parent.filter(|p| self.by_key.contains_key(p));
        let mut execed = false;
        if let Some(p) = parent.and_then(|p| self.by_key.get_mut(&p)) {
            p.children += 1;
            execed = snap.exe.is_some() && p.exe != snap.exe;
        }
        self.by_key.insert(
            key,
            ProcInfo {
                key,
                ppid,
                parent,
                comm: snap.stat.comm,
                exe: snap.exe,
                cmdline: snap.cmdline,
                exited: false,
                execed,
                children: 0,
            },
        );
        self.live.insert(tgid, key);
        Some(key)
    }

    /// Marks `key` exited; removes it (with cascade) if it has no children. Removed keys go to
    /// `pending_removed`.
    fn mark_exited(&mut self, key: ProcKey) {
        if self.live.get(&key.tgid) == Some(&key) {
            self.live.remove(&key.tgid);
        }
        self.gone.remove(&key);
        let Some(info) = self.by_key.get_mut(&key) else {
            return;
        };
        info.exited = true;
        if info.children > 0 {
            return;
        }
        let mut cur = key;
        while let Some(node) = self.by_key.remove(&cur) {
            self.pending_removed.push(cur);
            let Some(parent_key) = node.parent else {
                break;
            };
            let Some(parent) = self.by_key.get_mut(&parent_key) else {
                break;
            };
            parent.children = parent.children.saturating_sub(1);
            if parent.exited && parent.children == 0 {
                cur = parent_key;
            } else {
                break;
            }
        }
    }
}

/// Ancestors of a process, nearest first.
pub struct Ancestors<'a> {
    tree: &'a ProcTree,
    next: Option<ProcKey>,
    steps: usize,
}

impl<'a> Iterator for Ancestors<'a> {
    type Item = &'a ProcInfo;

    fn next(&mut self) -> Option<&'a ProcInfo> {
        if self.steps >= MAX_CHAIN {
            return None;
        }
        self.steps += 1;
        let info = self.tree.by_key.get(&self.next?)?;
        self.next = info.parent;
        Some(info)
    }
}

/// The start time (clock ticks since boot) of live process `tgid`, from /proc.
pub fn start_ticks_of(tgid: u32) -> Option<u64> {
    stat::read_stat(std::path::Path::new("/proc"), tgid).map(|s| s.start_ticks)
}
