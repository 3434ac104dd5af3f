//! Attaching the TLS uprobes. With `scope = "agents"` a process decided at its first contact
//! is probed alone (`UProbeScope::OneProcess`: the breakpoints go into that process's memory
//! only, so no other process ever hits them); with `scope = "all"` each TLS library file is
//! probed once for every process. Either way a file's plan is made once per identity.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agentwatch_ebpf as abi;
use aya::maps::MapData;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope};
use serde::{Deserialize, Serialize};

use super::analysis_cache::AnalysisCache;
use super::loader::{Probes, uprobe};
use super::multi::MultiLink;
use super::opaque::OpaqueScan;
use super::plans::{self, FilePlan, Plan, Point};
use super::{ProbeError, libraries};

/// A TLS library (or executable) the uprobes are attached to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachedLibrary {
    /// Path as the process that uses it sees it.
    pub path: String,
    /// Path the daemon attached through (may go through /proc/PID/root).
    pub attached_via: String,
    /// `openssl` (also node's static copy), `gnutls`, `go` (a Go binary's crypto/tls), or a
    /// located stack (`boringssl`, `aws-lc-aead`, `openssl-3.3`, …).
    pub kind: String,
    /// Go: uprobes on the RET instructions of Write and Read (no uretprobes on Go code).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub return_probes: usize,
    pub symbols: Vec<String>,
    pub missing: Vec<String>,
    /// (device, inode) of the file.
    #[serde(skip)]
    pub identity: (u64, u64),
    /// The root directory (mount namespace) it was found through; None for the daemon's own.
    #[serde(skip)]
    pub root: Option<(u64, u64)>,
    /// How its traffic is measured: `exact: …` and what the probes rest on.
    #[serde(default)]
    pub coverage: String,
    /// Functions located by analysis: whether a new connection's first plaintext looked like
    /// HTTP (confirmed), and how many did not before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub doubts: u32,
    /// `scope = "agents"`: live processes probed through this file now.
    #[serde(default)]
    pub processes: usize,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// New connections whose first plaintext is not HTTP, with none that is, before probes at
/// located functions are taken for wrong and detached.
const LOCATED_DOUBTS: u32 = 3;

/// One first-write verdict on probes at located functions; true when they must go. One
/// HTTP start confirms them for good (a wrong function does not write request lines).
fn judge(confirmed: &mut Option<bool>, doubts: &mut u32, http: bool) -> bool {
    match (http, *confirmed) {
        (true, Some(_)) => *confirmed = Some(true),
        (false, Some(false)) => *doubts += 1,
        _ => {}
    }
    *confirmed == Some(false) && *doubts >= LOCATED_DOUBTS
}

/// Analysis results kept (in memory, and on disk under `<data_dir>/analysis`).
const ANALYSES_CAP: usize = 256;
/// File plans kept by identity; cleared when full.
const PLAN_CACHE_CAP: usize = 4096;
/// Files listed in status at most (the rest are counted).
const LIBRARIES_CAP: usize = 512;

/// Executables with TLS traffic the probes cannot see (stripped Go binaries), kept for
/// `agentwatch status` up to this many; the rest are counted.
const NOT_COVERED_CAP: usize = 256;

/// An error and its causes, `: `-separated.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// The probes of a process on one file.
enum ProcessLink {
    /// A `uprobe_multi` link: one program, every offset of it in the file.
    Multi(MultiLink, (u64, u64)),
    /// A perf-event uprobe (kernels without uprobe_multi): one offset.
    Perf(&'static str, UProbeLinkId, (u64, u64)),
}

impl ProcessLink {
    fn identity(&self) -> (u64, u64) {
        match self {
            ProcessLink::Multi(_, id) | ProcessLink::Perf(_, _, id) => *id,
        }
    }
}

/// What attaching one process found.
#[derive(Debug, Default, Clone)]
pub struct ProcessCoverage {
    /// Files whose probes are now attached for it.
    pub attached: Vec<String>,
    /// Files that use TLS the probes cannot see (why).
    pub not_covered: Vec<(String, String)>,
    /// The process was gone before it could be probed.
    pub gone: bool,
}

/// A probe taken off, to be closed on another thread (the kernel takes a while to let go of
/// a uprobe; nothing should wait for that).
pub enum Detached {
    Multi(MultiLink),
    Perf(UProbeLink),
}

/// Links of one process's probes, handed to a thread that closes them.
pub type DetachedLinks = Vec<Detached>;

pub struct Attachments {
    pub libraries: Vec<AttachedLibrary>,
    /// Files beyond `LIBRARIES_CAP` not listed.
    pub libraries_over_cap: u64,
    /// Attach failures, by path, for `agentwatch status` (and its `ok`). A later attach of the
    /// same path that succeeds removes its entry: a failure is not kept forever.
    pub failures: BTreeMap<String, String>,
    /// Failures cleared by a later attach that succeeded.
    pub failures_cleared: u64,
    /// `scope = "all"`: files whose attach failed, and when they may be tried again (a later
    /// discovery of the file retries it; before then it is skipped, so a file that keeps
    /// failing is not tried at every exec).
    retry_at: HashMap<(u64, u64), std::time::Instant>,
    /// `scope = "all"`: (device, inode) of every file already handled, attached or not.
    seen_files: HashSet<(u64, u64)>,
    /// `scope = "all"`: the uprobe links of each attached file.
    file_links: HashMap<(u64, u64), Vec<(&'static str, UProbeLinkId)>>,
    /// `scope = "agents"`: the links of each probed process, with the file they are on.
    process_links: HashMap<u32, Vec<ProcessLink>>,
    /// Boot ns of the first contact each process was probed for (see `probed_since`).
    probed_since: HashMap<u32, u64>,
    /// Files detached because no process could reach them any more.
    pub detached: u64,
    /// Executables using TLS that cannot be probed, by path: why (bounded).
    pub not_covered: BTreeMap<String, String>,
    /// Not-covered executables beyond `NOT_COVERED_CAP`.
    pub not_covered_over_cap: u64,
    /// Entries of exited processes removed from the Go argument map.
    pub go_args_swept: u64,
    /// Plans by file identity.
    plans: HashMap<(u64, u64), FilePlan>,
    /// Analyses of stripped static binaries, by build id or content hash.
    pub analyses: AnalysisCache,
    /// Processes probed now, and since start.
    pub processes_attached_total: u64,
    pub processes_detached_total: u64,
}

impl Default for Attachments {
    fn default() -> Self {
        Attachments {
            libraries: Vec::new(),
            libraries_over_cap: 0,
            failures: BTreeMap::new(),
            failures_cleared: 0,
            retry_at: HashMap::new(),
            seen_files: HashSet::new(),
            file_links: HashMap::new(),
            process_links: HashMap::new(),
            probed_since: HashMap::new(),
            detached: 0,
            not_covered: BTreeMap::new(),
            not_covered_over_cap: 0,
            go_args_swept: 0,
            plans: HashMap::new(),
            analyses: AnalysisCache::new(None, ANALYSES_CAP),
            processes_attached_total: 0,
            processes_detached_total: 0,
        }
    }
}

/// How long a file whose attach failed is left alone before a discovery of it tries again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Attachments {
    /// `path` was attached: a failure kept for it is over.
    fn cleared(&mut self, path: &str) {
        if self.failures.remove(path).is_some() {
            self.failures_cleared += 1;
            tracing::info!(library = path, "attached after an earlier failure");
        }
    }

    /// Keeps analyses on disk in `dir` too (the daemon: `<data_dir>/analysis`), so a restart
    /// or another node sharing it does not analyse a build again.
    pub fn keep_analyses_in(&mut self, dir: PathBuf) {
        self.analyses = AnalysisCache::new(Some(dir), ANALYSES_CAP);
    }

    pub fn processes_probed(&self) -> usize {
        self.process_links.len()
    }

    pub fn is_probed(&self, tgid: u32) -> bool {
        self.process_links.contains_key(&tgid)
    }

    fn not_covered(&mut self, path: &str, reason: String) {
        if !self.not_covered.contains_key(path) {
            tracing::warn!(binary = path, "TLS not covered: {reason}");
        }
        if self.not_covered.len() < NOT_COVERED_CAP || self.not_covered.contains_key(path) {
            self.not_covered.insert(path.to_string(), reason);
        } else {
            self.not_covered_over_cap += 1;
        }
    }

    /// The analysis of a stripped binary, cached by build id (agents are installed in
    /// several places and auto-update to new files).
    fn analyse(&mut self, path: &str, via: &Path) -> OpaqueScan {
        // The daemon carries the strings it searches for: it is not an agent.
        let own = std::fs::metadata("/proc/self/exe").ok();
        let this = std::fs::metadata(via).ok();
        if let (Some(own), Some(this)) = (own, this)
            && (own.dev(), own.ino()) == (this.dev(), this.ino())
        {
            return OpaqueScan::NotTls;
        }
        let cached = self.analyses.scan(via);
        if !matches!(cached.scan, OpaqueScan::NotTls) {
            tracing::info!(binary = path, took = ?cached.took, source = ?cached.source, result = ?cached.scan, "analysis of a static TLS library");
        }
        cached.scan
    }

    /// The plan of a file, made once per identity.
    fn plan(&mut self, identity: (u64, u64), path: &str, via: &Path) -> FilePlan {
        if let Some(p) = self.plans.get(&identity) {
            return p.clone();
        }
        let plan = plans::plan(via, &mut |v| self.analyse(path, v));
        if self.plans.len() >= PLAN_CACHE_CAP {
            self.plans.clear();
        }
        self.plans.insert(identity, plan.clone());
        plan
    }

    /// The status entry of a file (created on its first attach).
    fn library_entry(
        &mut self,
        identity: (u64, u64),
        path: &str,
        via: &Path,
        plan: &Plan,
    ) -> Option<&mut AttachedLibrary> {
        if let Some(at) = self.libraries.iter().position(|l| l.identity == identity) {
            return self.libraries.get_mut(at);
        }
        if self.libraries.len() >= LIBRARIES_CAP {
            // Make room with a file no process uses any more.
            match self.libraries.iter().position(|l| l.processes == 0) {
                Some(at) => {
                    self.libraries.remove(at);
                }
                None => {
                    self.libraries_over_cap += 1;
                    return None;
                }
            }
        }
        self.libraries.push(AttachedLibrary {
            path: path.to_string(),
            attached_via: via.display().to_string(),
            kind: plan.kind.clone(),
            return_probes: plan.return_probes,
            symbols: plan.symbols.clone(),
            missing: plan.missing.clone(),
            identity,
            root: libraries::foreign_root(via),
            coverage: plan.coverage.clone(),
            confirmed: plan.located.then_some(false),
            doubts: 0,
            processes: 0,
        });
        self.libraries.last_mut()
    }
}

impl Probes {
    /// Attaches `points` to `via` for `scope`, all or none: on a failure the ones attached
    /// are detached, and the failure is kept for status, unless the file vanished (the
    /// process it was found through exited).
    fn attach_points(
        &mut self,
        path: &str,
        via: &Path,
        points: &[Point],
        scope: UProbeScope,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>, bool> {
        let mut links = Vec::new();
        for &(symbol, program, offset) in points {
            let attached = uprobe(&mut self.ebpf, program).and_then(|p| {
                p.attach(UProbeAttachLocation::AbsoluteOffset(offset), via, scope)
                    .map_err(|source| ProbeError::UprobeAttach {
                        symbol: symbol.into(),
                        offset,
                        path: via.into(),
                        detail: error_chain(&source),
                    })
            });
            match attached {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    for (program, link) in links {
                        if let Ok(p) = uprobe(&mut self.ebpf, program) {
                            let _ = p.detach(link);
                        }
                    }
                    if !via.exists() {
                        tracing::debug!("{e}");
                        return Err(true);
                    }
                    tracing::warn!("{e}");
                    self.attachments
                        .failures
                        .insert(path.to_string(), e.to_string());
                    return Err(false);
                }
            }
        }
        Ok(links)
    }

    // ---- scope = "agents": one process at a time ------------------------------------------

    /// Probes process `tgid` alone: every TLS library it maps and its executable (node's
    /// OpenSSL, a Go binary's crypto/tls, a located static library). Returns what was found.
    pub fn attach_process(&mut self, tgid: u32) -> ProcessCoverage {
        let mut coverage = ProcessCoverage::default();
        let Some(pid) = NonZeroU32::new(tgid) else {
            coverage.gone = true;
            return coverage;
        };
        let maps = libraries::mappings(tgid);
        if maps.is_empty() {
            coverage.gone = !Path::new(&format!("/proc/{tgid}")).exists();
        }
        let mut files = libraries::mapped_tls_libraries(tgid, &maps);
        if let Some(exe) = libraries::executable(tgid) {
            files.push(exe);
        }
        let mut seen = HashSet::new();
        let mut vias = Vec::new();
        for (path, via) in files {
            let Ok(meta) = std::fs::metadata(&via) else {
                continue;
            };
            let identity = (meta.dev(), meta.ino());
            if !seen.insert(identity) {
                continue;
            }
            let plan = match self.attachments.plan(identity, &path, &via) {
                FilePlan::Probe(plan) => plan,
                FilePlan::NotCovered(why) => {
                    self.attachments.not_covered(&path, why.clone());
                    coverage.not_covered.push((path, why));
                    continue;
                }
                FilePlan::NoTls => continue,
            };
            match self.attach_process_points(&path, &via, &plan.points, pid, identity) {
                Ok(links) => {
                    let list = self.attachments.process_links.entry(tgid).or_default();
                    list.extend(links);
                    if let Some(entry) =
                        self.attachments.library_entry(identity, &path, &via, &plan)
                    {
                        entry.processes += 1;
                    }
                    vias.push(via.display().to_string());
                    self.attachments.cleared(&path);
                    coverage.attached.push(path);
                }
                Err(gone) => coverage.gone |= gone,
            }
        }
        if !coverage.attached.is_empty() {
            self.attachments.processes_attached_total += 1;
            tracing::info!(pid = tgid, files = ?coverage.attached, via = ?vias, "probed a process at its first contact");
        }
        coverage
    }

    /// Records that `tgid`'s probes are for its program as of boot time `ts_ns` (its first
    /// contact), so an exec or exit recorded before that does not take them off.
    pub fn probed_since(&mut self, tgid: u32, ts_ns: u64) {
        if self.attachments.process_links.contains_key(&tgid) {
            self.attachments.probed_since.insert(tgid, ts_ns);
        }
    }

    /// `detach_process` for an exec or exit at boot time `at`, unless the probes are newer.
    pub fn detach_process_before(&mut self, tgid: u32, at: u64) -> DetachedLinks {
        if self
            .attachments
            .probed_since
            .get(&tgid)
            .is_some_and(|since| *since > at)
        {
            return Vec::new();
        }
        self.detach_process(tgid)
    }

    /// Takes a process's probes off (it exited, exec'd, or is not an agent after all). The
    /// links come back to be closed off this thread.
    pub fn detach_process(&mut self, tgid: u32) -> DetachedLinks {
        self.attachments.probed_since.remove(&tgid);
        let Some(links) = self.attachments.process_links.remove(&tgid) else {
            return Vec::new();
        };
        self.attachments.processes_detached_total += 1;
        let mut files = HashSet::new();
        let mut out = Vec::new();
        for link in links {
            files.insert(link.identity());
            if let Some(d) = self.take_process_link(link) {
                out.push(d);
            }
        }
        for lib in &mut self.attachments.libraries {
            if files.contains(&lib.identity) {
                lib.processes = lib.processes.saturating_sub(1);
            }
        }
        out
    }

    /// Attaches a plan's points for process `pid` alone: one uprobe_multi link per program
    /// (every offset of it in the file), or perf-event uprobes where the kernel lacks
    /// uprobe_multi. All or none.
    fn attach_process_points(
        &mut self,
        path: &str,
        via: &Path,
        points: &[Point],
        pid: NonZeroU32,
        identity: (u64, u64),
    ) -> Result<Vec<ProcessLink>, bool> {
        let Some(multi) = self.multi.as_ref() else {
            return self
                .attach_points(path, via, points, UProbeScope::OneProcess(pid))
                .map(|links| {
                    links
                        .into_iter()
                        .map(|(p, l)| ProcessLink::Perf(p, l, identity))
                        .collect()
                });
        };
        let mut by_program: Vec<(&'static str, Vec<u64>)> = Vec::new();
        for &(_, program, offset) in points {
            match by_program.iter_mut().find(|(p, _)| *p == program) {
                Some((_, offsets)) => offsets.push(offset),
                None => by_program.push((program, vec![offset])),
            }
        }
        // Pinned beside the kernel side, so a restarted daemon adopts them.
        let pin_dir = self.pins.as_ref().and_then(|pins| {
            let start = crate::procs::start_ticks_of(pid.get())?;
            let dir = pins.process_dir(pid.get(), start);
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        });
        let mut links = Vec::new();
        // The process waits for these registrations (see `expedite`); not for its analysis.
        let _expedited = super::expedite::Expedited::begin();
        for (program, offsets) in by_program {
            match multi.attach(program, via, &offsets, pid.get()) {
                Ok(mut link) => {
                    if let Some(dir) = &pin_dir {
                        let path = dir.join(format!("{program}-{}-{}", identity.0, identity.1));
                        if let Err(e) = link.pin(&path) {
                            tracing::debug!("cannot pin {}: {e}", path.display());
                        }
                    }
                    links.push(ProcessLink::Multi(link, identity))
                }
                Err(e) => {
                    // Dropping the links made so far detaches them.
                    if !via.exists() {
                        tracing::debug!("{e}");
                        return Err(true);
                    }
                    tracing::warn!("{e}");
                    self.attachments
                        .failures
                        .insert(path.to_string(), e.to_string());
                    return Err(false);
                }
            }
        }
        Ok(links)
    }

    fn take_process_link(&mut self, link: ProcessLink) -> Option<Detached> {
        match link {
            ProcessLink::Multi(mut l, _) => {
                l.unpin();
                Some(Detached::Multi(l))
            }
            ProcessLink::Perf(program, id, _) => uprobe(&mut self.ebpf, program)
                .ok()?
                .take_link(id)
                .ok()
                .map(Detached::Perf),
        }
    }

    /// Takes every process's probes off (the daemon is stopping): closing them together is
    /// faster than the kernel closing them one by one at exit.
    pub fn detach_all_processes(&mut self) -> DetachedLinks {
        let tgids: Vec<u32> = self.attachments.process_links.keys().copied().collect();
        tgids
            .into_iter()
            .flat_map(|tgid| self.detach_process(tgid))
            .collect()
    }

    /// Takes over the per-process links a previous daemon pinned, for the processes still
    /// running (same pid and start time); removes those of processes gone. Returns the
    /// tgids adopted and how many link sets were removed.
    pub fn adopt_processes(&mut self) -> (Vec<u32>, u64) {
        let Some(pins) = self.pins.clone() else {
            return (Vec::new(), 0);
        };
        let mut adopted = Vec::new();
        let mut removed = 0;
        for (tgid, start, dir) in pins.processes() {
            if crate::procs::start_ticks_of(tgid) != Some(start) {
                super::pins::remove_tree(&dir);
                removed += 1;
                continue;
            }
            let mut links = Vec::new();
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut parts = name.rsplitn(3, '-');
                let (Some(ino), Some(dev)) = (
                    parts.next().and_then(|v| v.parse::<u64>().ok()),
                    parts.next().and_then(|v| v.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                match MultiLink::adopt(&entry.path()) {
                    Ok(link) => links.push(ProcessLink::Multi(link, (dev, ino))),
                    Err(e) => tracing::warn!("cannot adopt {}: {e}", entry.path().display()),
                }
            }
            if links.is_empty() {
                super::pins::remove_tree(&dir);
                removed += 1;
                continue;
            }
            self.attachments.process_links.insert(tgid, links);
            self.attachments.processes_attached_total += 1;
            adopted.push(tgid);
        }
        self.kernel_side.adopted_processes = adopted.len() as u64;
        self.kernel_side.removed_process_links = removed;
        (adopted, removed)
    }

    /// The probed processes (for sweeps of those that vanished unseen).
    pub fn probed_processes(&self) -> Vec<u32> {
        self.attachments.process_links.keys().copied().collect()
    }

    // ---- scope = "all": one file for every process -----------------------------------------

    /// Attaches the TLS uprobes to `path` (reached through `via`, e.g. /proc/PID/root/…),
    /// once per file identity, for every process. Returns true when the file was newly attached.
    pub fn attach_tls_library(&mut self, path: &str, via: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(via) else {
            return false;
        };
        let identity = (meta.dev(), meta.ino());
        if let Some(at) = self.attachments.retry_at.get(&identity) {
            if std::time::Instant::now() < *at {
                return false;
            }
            self.attachments.retry_at.remove(&identity);
        }
        if !self.attachments.seen_files.insert(identity) {
            return false;
        }
        // In the daemon's own mount namespace the file's own path outlives the process it
        // was found through (/proc/PID/root/… vanishes when that process exits).
        let own_path = Path::new(path);
        let via: PathBuf = if libraries::foreign_root(via).is_none()
            && std::fs::metadata(own_path).is_ok_and(|m| (m.dev(), m.ino()) == identity)
        {
            own_path.to_path_buf()
        } else {
            via.to_path_buf()
        };
        let plan = match self.attachments.plan(identity, path, &via) {
            FilePlan::Probe(plan) => plan,
            FilePlan::NotCovered(why) => {
                self.attachments.not_covered(path, why);
                return false;
            }
            FilePlan::NoTls => return false,
        };
        match self.attach_points(path, &via, &plan.points, UProbeScope::AllProcesses) {
            Ok(links) => {
                tracing::info!(library = path, via = %via.display(), kind = plan.kind, "attached TLS uprobes");
                self.attachments.cleared(path);
                self.attachments.file_links.insert(identity, links);
                let _ = self.attachments.library_entry(identity, path, &via, &plan);
                true
            }
            Err(gone) => {
                // The process it was found through exited: the next one tries again. A real
                // failure: the next discovery of the file after RETRY_AFTER tries again.
                self.attachments.seen_files.remove(&identity);
                if !gone {
                    self.attachments
                        .retry_at
                        .insert(identity, std::time::Instant::now() + RETRY_AFTER);
                }
                false
            }
        }
    }

    /// Detaches the uprobes of a file no process can reach any more (its container is gone),
    /// so the kernel lets go of it; it is attached again if it comes back.
    pub fn detach_library(&mut self, identity: (u64, u64)) {
        for (program, link) in self
            .attachments
            .file_links
            .remove(&identity)
            .unwrap_or_default()
        {
            if let Ok(p) = uprobe(&mut self.ebpf, program)
                && let Err(e) = p.detach(link)
            {
                tracing::warn!("failed to detach {program}: {e}");
            }
        }
        if let Some(at) = self
            .attachments
            .libraries
            .iter()
            .position(|l| l.identity == identity)
        {
            let lib = self.attachments.libraries.remove(at);
            tracing::info!(
                library = lib.path,
                via = lib.attached_via,
                "detached TLS uprobes: no process can reach the file any more"
            );
            self.attachments.detached += 1;
        }
        self.attachments.seen_files.remove(&identity);
    }

    // ---- both ------------------------------------------------------------------------------

    /// The first plaintext written on a new connection by executable `identity` (device,
    /// inode): for probes at located functions, HTTP confirms the location; non-HTTP on
    /// `LOCATED_DOUBTS` new connections with none confirmed means the analysis was wrong for
    /// this build: the probes are detached and the binary is listed as not covered, with
    /// why. Returns the links of processes to close.
    pub fn judge_first_write(&mut self, identity: (u64, u64), http: bool) -> DetachedLinks {
        let Some(lib) = self
            .attachments
            .libraries
            .iter_mut()
            .find(|l| l.identity == identity && l.confirmed.is_some())
        else {
            return Vec::new();
        };
        if !judge(&mut lib.confirmed, &mut lib.doubts, http) {
            return Vec::new();
        }
        let path = lib.path.clone();
        let why = format!(
            "the functions located by analysis wrote non-HTTP plaintext on {LOCATED_DOUBTS} new connections and none was HTTP; probes detached (this build is not analysed correctly)"
        );
        for (program, link) in self
            .attachments
            .file_links
            .remove(&identity)
            .unwrap_or_default()
        {
            if let Ok(p) = uprobe(&mut self.ebpf, program) {
                let _ = p.detach(link);
            }
        }
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for links in self.attachments.process_links.values_mut() {
            let (off, kept): (Vec<_>, Vec<_>) =
                links.drain(..).partition(|l| l.identity() == identity);
            *links = kept;
            gone.extend(off);
        }
        for link in gone {
            if let Some(d) = self.take_process_link(link) {
                out.push(d);
            }
        }
        self.attachments
            .libraries
            .retain(|l| l.identity != identity);
        // The plan stays, as not covered: the same file is not attached again.
        self.attachments
            .plans
            .insert(identity, FilePlan::NotCovered(why.clone()));
        self.attachments.not_covered(&path, why);
        out
    }

    /// Removes the Go argument entries of processes that are gone: a goroutine blocked in
    /// `Read` when its process exits never reaches a RET, and would hold its entry forever.
    pub fn sweep_go_args(&mut self) {
        let Some(map) = self.ebpf.map_mut("GO_ARGS") else {
            return;
        };
        let Ok(mut go_args) =
            aya::maps::HashMap::<&mut MapData, abi::GoKey, abi::GoArgs>::try_from(map)
        else {
            return;
        };
        let dead: Vec<abi::GoKey> = go_args
            .keys()
            .flatten()
            .filter(|k| !Path::new(&format!("/proc/{}", k.tgid)).exists())
            .collect();
        for key in dead {
            if go_args.remove(&key).is_ok() {
                self.attachments.go_args_swept += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_probes_are_confirmed_by_http_or_rejected_after_doubts() {
        let (mut confirmed, mut doubts) = (Some(false), 0);
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(!judge(&mut confirmed, &mut doubts, true));
        assert_eq!(confirmed, Some(true));
        for _ in 0..10 {
            assert!(
                !judge(&mut confirmed, &mut doubts, false),
                "confirmed stays"
            );
        }
        let (mut confirmed, mut doubts) = (Some(false), 0);
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(judge(&mut confirmed, &mut doubts, false));
        // Probes found by symbol are never judged.
        let (mut confirmed, mut doubts) = (None, 0);
        for _ in 0..10 {
            assert!(!judge(&mut confirmed, &mut doubts, false));
        }
        assert_eq!((confirmed, doubts), (None, 0));
    }
}
