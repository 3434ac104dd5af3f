//! Rotation of the JSONL files, and the checkpoint a restart reads instead of their history.
//!
//! `calls.jsonl` and `ledger.jsonl` rotate together, when either reaches `rotate_bytes` or the
//! pair is older than `rotate_age_secs`: both are renamed into `rotated/` as segment N
//! (`calls-N.jsonl`, `ledger-N.jsonl`, N counting up) and new empty files take their place.
//! A worker thread then folds every segment the checkpoint does not cover yet into it (the open
//! sessions' calls, the ids of sessions closed lately, the rolling day's spend by minute),
//! writes it atomically (`checkpoint.json`, `covered_seq = N`), and only then gzips the
//! segments it covers and applies retention (`keep_rotated`, `retention_days`): a segment is
//! never compressed or deleted before the checkpoint holds what a restart needs of it.
//!
//! A restart ([`super::recover`]) reads the checkpoint, the segments it does not cover (a
//! daemon killed between the rename and the checkpoint), and the two current files: what it
//! reads is bounded by the rotation size, whatever the history. Any crash leaves either
//! uncovered segments (folded at the next start or rotation) or covered ones (never read
//! again): nothing accounted is lost, nothing is counted twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::SinkError;
use super::recovery::RecoveryStats;
use crate::sessions::CallRecord;

pub const ROTATED_DIR: &str = "rotated";
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Closed session ids the checkpoint keeps (most recent), as the sessions keep in memory: a
/// restart in the same boot must not reuse one.
const CLOSED_KEPT: usize = 100_000;
const DAY_NS: i128 = 86_400 * 1_000_000_000;
const MINUTE_NS: i128 = 60 * 1_000_000_000;

/// `[sinks.jsonl]`: rotation and retention of `calls.jsonl` and `ledger.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonlConfig {
    /// Rotate when `calls.jsonl` or `ledger.jsonl` reaches this many bytes. Default 64 MiB
    /// (about 60,000 call rows); 0: never by size.
    pub rotate_bytes: u64,
    /// Rotate once the current files are this old and not empty. Default 86,400 (a day);
    /// 0: never by age.
    pub rotate_age_secs: u64,
    /// Rotated segments kept (each a calls and a ledger file); older ones are deleted.
    /// Default 30.
    pub keep_rotated: usize,
    /// Rotated segments older than this many days are deleted. Default 30; 0: no age limit.
    pub retention_days: u64,
    /// gzip rotated segments (`calls-N.jsonl.gz`). Default true.
    pub compress: bool,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        Self {
            rotate_bytes: 64 << 20,
            rotate_age_secs: 86_400,
            keep_rotated: 30,
            retention_days: 30,
            compress: true,
        }
    }
}

/// What a restart needs of the segments rotated so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Segments 1..=covered_seq are folded in.
    pub covered_seq: u64,
    /// Sessions with calls and no ledger row yet, their calls in file order.
    pub open: Vec<OpenSession>,
    /// (boot id, session id) of the sessions closed lately, oldest first.
    pub closed: VecDeque<(Option<String>, String)>,
    /// Spend of the last day by Unix minute (for the host's daily ceiling).
    pub host_day: BTreeMap<i64, f64>,
    /// The same, per shared budget (calls rows' `budget`).
    #[serde(default)]
    pub budget_day: BTreeMap<String, BTreeMap<i64, f64>>,
    /// Tool runs (`actions.jsonl`) of the open sessions.
    #[serde(default)]
    pub tool_runs: BTreeMap<String, u64>,
    /// Destinations (`actions.jsonl` host rows) of the open sessions.
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<(std::net::IpAddr, u16)>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSession {
    pub session_id: String,
    pub calls: Vec<CallRecord>,
}

#[derive(Deserialize)]
struct LedgerHead {
    session_id: String,
    #[serde(default)]
    boot_id: Option<String>,
}

/// The checkpoint being extended with more files: ledger files first (which sessions closed),
/// then calls files in order.
#[derive(Debug, Default)]
pub(crate) struct Fold {
    open: Vec<(String, Vec<CallRecord>)>,
    index: HashMap<String, usize>,
    closed: VecDeque<(Option<String>, String)>,
    closed_set: HashSet<String>,
    host_day: BTreeMap<i64, f64>,
    budget_day: BTreeMap<String, BTreeMap<i64, f64>>,
    tool_runs: BTreeMap<String, u64>,
    hosts: BTreeMap<String, Vec<(std::net::IpAddr, u16)>>,
    pub stats: RecoveryStats,
}

impl Fold {
    pub fn new(cp: Checkpoint) -> Fold {
        let mut f = Fold {
            closed_set: cp.closed.iter().map(|(_, id)| id.clone()).collect(),
            closed: cp.closed,
            host_day: cp.host_day,
            budget_day: cp.budget_day,
            tool_runs: cp.tool_runs,
            hosts: cp.hosts,
            ..Fold::default()
        };
        for s in cp.open {
            f.index.insert(s.session_id.clone(), f.open.len());
            f.open.push((s.session_id, s.calls));
        }
        f
    }

    pub fn ledger_file(&mut self, path: &Path) -> Result<(), SinkError> {
        let stats = &mut self.stats;
        let closed = &mut self.closed;
        let closed_set = &mut self.closed_set;
        for_each_line(
            path,
            &mut stats.torn_lines,
            |bytes| match serde_json::from_slice::<LedgerHead>(bytes) {
                Ok(head) => {
                    stats.closed_sessions += 1;
                    if closed_set.insert(head.session_id.clone()) {
                        closed.push_back((head.boot_id, head.session_id));
                    }
                }
                Err(_) => stats.bad_ledger_lines += 1,
            },
        )
    }

    pub fn calls_file(&mut self, path: &Path) -> Result<(), SinkError> {
        let Fold {
            open,
            index,
            closed_set,
            host_day,
            budget_day,
            stats,
            ..
        } = self;
        for_each_line(path, &mut stats.torn_lines, |bytes| {
            let rec = match serde_json::from_slice::<CallRecord>(bytes) {
                Ok(rec) => rec,
                Err(_) => {
                    stats.bad_call_lines += 1;
                    return;
                }
            };
            stats.calls_read += 1;
            if let Some(ended) = crate::sessions::clock::parse_rfc3339(&rec.ended_at) {
                let minute = (ended.div_euclid(MINUTE_NS)) as i64;
                *host_day.entry(minute).or_default() += host_cost(&rec);
                if let Some(b) = &rec.budget {
                    *budget_day
                        .entry(b.clone())
                        .or_default()
                        .entry(minute)
                        .or_default() += host_cost(&rec);
                }
            }
            if closed_set.contains(&rec.session_id) {
                return;
            }
            match index.get(&rec.session_id) {
                Some(&i) => open[i].1.push(rec),
                None => {
                    index.insert(rec.session_id.clone(), open.len());
                    open.push((rec.session_id.clone(), vec![rec]));
                }
            }
        })
    }

    /// The sessions still open, the closed ids (bounded) and the last day's spend as of
    /// `now_unix_ns`.
    /// `actions.jsonl` rows: the tool runs of sessions not closed are counted.
    pub fn actions_file(&mut self, path: &Path) -> Result<(), SinkError> {
        #[derive(Deserialize)]
        struct Head {
            kind: String,
            session_id: String,
            #[serde(default)]
            address: Option<std::net::IpAddr>,
            #[serde(default)]
            port: Option<u16>,
        }
        let Fold {
            closed_set,
            tool_runs,
            hosts,
            stats,
            ..
        } = self;
        for_each_line(
            path,
            &mut stats.torn_lines,
            |bytes| match serde_json::from_slice::<Head>(bytes) {
                Ok(h) if closed_set.contains(&h.session_id) => {}
                Ok(h) if h.kind == "tool_run" => {
                    *tool_runs.entry(h.session_id).or_default() += 1;
                }
                Ok(Head {
                    kind,
                    session_id,
                    address: Some(a),
                    port: Some(p),
                }) if kind == "host" => {
                    let list = hosts.entry(session_id).or_default();
                    if !list.contains(&(a, p)) {
                        list.push((a, p));
                    }
                }
                Ok(_) => {}
                Err(_) => stats.bad_action_lines += 1,
            },
        )
    }

    pub fn finish(mut self, covered_seq: u64, now_unix_ns: i128) -> Checkpoint {
        let closed_set = &self.closed_set;
        self.open.retain(|(id, _)| !closed_set.contains(id));
        self.tool_runs.retain(|id, _| !closed_set.contains(id));
        self.hosts.retain(|id, _| !closed_set.contains(id));
        while self.closed.len() > CLOSED_KEPT {
            self.closed.pop_front();
        }
        let oldest = ((now_unix_ns - DAY_NS).div_euclid(MINUTE_NS)) as i64;
        self.host_day = self.host_day.split_off(&oldest);
        for day in self.budget_day.values_mut() {
            *day = day.split_off(&oldest);
        }
        self.budget_day.retain(|_, d| !d.is_empty());
        self.stats.open_calls = self.open.iter().map(|(_, c)| c.len() as u64).sum();
        Checkpoint {
            covered_seq,
            open: self
                .open
                .into_iter()
                .map(|(session_id, calls)| OpenSession { session_id, calls })
                .collect(),
            closed: self.closed,
            host_day: self.host_day,
            budget_day: self.budget_day,
            tool_runs: self.tool_runs,
            hosts: self.hosts,
        }
    }
}

/// What a call adds to the host's rolling day ([`CallRecord::charged_usd`]).
pub fn host_cost(rec: &CallRecord) -> f64 {
    rec.charged_usd()
}

// ------------------------------------------------------------------ segments on disk

/// A rotated segment's files (plain or gzipped, whichever exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub calls: Option<PathBuf>,
    pub ledger: Option<PathBuf>,
    pub actions: Option<PathBuf>,
}

/// `calls-N.jsonl[.gz]` / `ledger-N.jsonl[.gz]` → (kind, N).
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let stem = name
        .strip_suffix(".jsonl.gz")
        .or_else(|| name.strip_suffix(".jsonl"))?;
    let (kind, n) = stem.split_once('-')?;
    matches!(kind, "calls" | "ledger" | "actions")
        .then_some(())
        .and(n.parse().ok().map(|n| (kind, n)))
}

/// The segments in `rotated/`, by sequence number (a missing directory is none).
pub fn segments(data_dir: &Path) -> Result<Vec<Segment>, SinkError> {
    let dir = data_dir.join(ROTATED_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(SinkError::Read { path: dir, source }),
    };
    let mut by_seq: BTreeMap<u64, Segment> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((kind, seq)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        let seg = by_seq.entry(seq).or_insert(Segment {
            seq,
            calls: None,
            ledger: None,
            actions: None,
        });
        let slot = match kind {
            "calls" => &mut seg.calls,
            "ledger" => &mut seg.ledger,
            _ => &mut seg.actions,
        };
        // Both forms exist only if gzip was cut short: the plain file is the whole one.
        if slot
            .as_ref()
            .is_none_or(|p| p.extension().is_some_and(|e| e == "gz"))
        {
            *slot = Some(entry.path());
        }
    }
    Ok(by_seq.into_values().collect())
}

/// Every `actions.jsonl` row of the sessions `keep` accepts (by id), oldest first: the rotated
/// segments still on disk (plain or gzipped), then the current file. A line that does not
/// parse (a torn last line, a row kind this build does not know) is skipped.
pub fn action_rows(
    data_dir: &Path,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<crate::sessions::actions::ActionRow>, SinkError> {
    #[derive(Deserialize)]
    struct Head<'a> {
        session_id: &'a str,
    }
    let mut files: Vec<PathBuf> = segments(data_dir)?
        .into_iter()
        .filter_map(|s| s.actions)
        .collect();
    files.push(data_dir.join(super::jsonl::ACTIONS_FILE));
    let mut rows = Vec::new();
    let mut torn = 0;
    for f in files {
        for_each_line(&f, &mut torn, |bytes| {
            if serde_json::from_slice::<Head>(bytes).is_ok_and(|h| keep(h.session_id))
                && let Ok(row) = serde_json::from_slice(bytes)
            {
                rows.push(row);
            }
        })?;
    }
    Ok(rows)
}

pub fn load_checkpoint(data_dir: &Path) -> Result<Checkpoint, SinkError> {
    let path = data_dir.join(CHECKPOINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SinkError::Read {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(source) => Err(SinkError::Read { path, source }),
    }
}

/// Writes `checkpoint.json` durably: a temporary file, fsync, rename, fsync of the directory.
fn save_checkpoint(data_dir: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let path = data_dir.join(CHECKPOINT_FILE);
    let tmp = data_dir.join(".checkpoint.json.tmp");
    let bytes = serde_json::to_vec(cp).map_err(std::io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(data_dir)?.sync_all()
}

/// Folds the segments above the checkpoint's `covered_seq` into it (all of them: a daemon
/// killed before its checkpoint leaves several), and saves it if anything was added.
pub fn cover(data_dir: &Path, now_unix_ns: i128) -> Result<Checkpoint, SinkError> {
    let cp = load_checkpoint(data_dir)?;
    let pending: Vec<Segment> = segments(data_dir)?
        .into_iter()
        .filter(|s| s.seq > cp.covered_seq)
        .collect();
    let Some(last) = pending.last().map(|s| s.seq) else {
        return Ok(cp);
    };
    let mut fold = Fold::new(cp);
    for p in pending.iter().filter_map(|s| s.ledger.as_ref()) {
        fold.ledger_file(p)?;
    }
    for p in pending.iter().filter_map(|s| s.calls.as_ref()) {
        fold.calls_file(p)?;
    }
    for p in pending.iter().filter_map(|s| s.actions.as_ref()) {
        fold.actions_file(p)?;
    }
    let cp = fold.finish(last, now_unix_ns);
    save_checkpoint(data_dir, &cp).map_err(|source| SinkError::Write {
        path: data_dir.join(CHECKPOINT_FILE),
        source,
    })?;
    Ok(cp)
}

/// gzips the covered segments still plain, then deletes those past `keep_rotated` or
/// `retention_days`. Never touches a segment the checkpoint does not cover.
fn compress_and_prune(data_dir: &Path, cfg: &JsonlConfig, covered: u64) -> std::io::Result<()> {
    let Ok(all) = segments(data_dir) else {
        return Ok(());
    };
    let covered_segs: Vec<&Segment> = all.iter().filter(|s| s.seq <= covered).collect();
    let excess = covered_segs.len().saturating_sub(cfg.keep_rotated);
    let max_age = (cfg.retention_days > 0)
        .then(|| std::time::Duration::from_secs(cfg.retention_days * 86_400));
    for (i, seg) in covered_segs.iter().enumerate() {
        let files = [&seg.calls, &seg.ledger, &seg.actions];
        let too_old = max_age.is_some_and(|max| {
            files.iter().filter_map(|p| p.as_ref()).all(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max)
            })
        });
        if i < excess || too_old {
            for p in files.into_iter().flatten() {
                std::fs::remove_file(p)?;
            }
            continue;
        }
        if cfg.compress {
            for p in files.into_iter().flatten() {
                if p.extension().is_some_and(|e| e == "jsonl") {
                    gzip_file(p)?;
                }
            }
        }
    }
    Ok(())
}

/// `x.jsonl` → `x.jsonl.gz` (temporary file, fsync, rename), then the plain file removed.
fn gzip_file(path: &Path) -> std::io::Result<()> {
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let gz = PathBuf::from(gz_name);
    let mut tmp_name = gz.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut input = BufReader::new(File::open(path)?);
        let out = File::create(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc)?;
        enc.finish()?.sync_all()?;
    }
    std::fs::rename(&tmp, &gz)?;
    std::fs::remove_file(path)
}

/// Calls `f` with every complete, non-blank line (without its `\n`) of a plain or gzipped
/// file; a missing file has none. A last line without `\n` (torn write) is counted, not read.
pub(crate) fn for_each_line(
    path: &Path,
    torn: &mut u64,
    mut f: impl FnMut(&[u8]),
) -> Result<(), SinkError> {
    let read_err = |source| SinkError::Read {
        path: PathBuf::from(path),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_err(e)),
    };
    let input: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::with_capacity(256 * 1024, input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        let Some(line) = buf.strip_suffix(b"\n") else {
            *torn += 1;
            return Ok(());
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(line);
    }
}

/// The next segment number: one above every segment on disk and the checkpoint's.
pub fn next_seq(data_dir: &Path) -> Result<u64, SinkError> {
    let on_disk = segments(data_dir)?.last().map_or(0, |s| s.seq);
    let covered = load_checkpoint(data_dir)?.covered_seq;
    Ok(on_disk.max(covered) + 1)
}

// ------------------------------------------------------------------ the worker

/// Covers, compresses and prunes rotated segments off the pipeline's thread, one job at a
/// time. Its errors are logged and counted; the next rotation (or the next start) retries.
#[derive(Debug)]
pub struct Worker {
    jobs: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Worker {
    pub fn spawn(data_dir: PathBuf, cfg: JsonlConfig) -> Worker {
        let (tx, rx) = mpsc::channel::<()>();
        let errors = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let errs = errors.clone();
        let thread = std::thread::Builder::new()
            .name("jsonl-rotation".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Jobs queued meanwhile are covered by this one.
                    while rx.try_recv().is_ok() {}
                    let now = crate::sessions::WallClock::from_system()
                        .unix_ns(crate::sessions::clock::boot_now_ns());
                    let r = cover(&data_dir, now).and_then(|cp| {
                        compress_and_prune(&data_dir, &cfg, cp.covered_seq).map_err(|source| {
                            SinkError::Write {
                                path: data_dir.join(ROTATED_DIR),
                                source,
                            }
                        })
                    });
                    if let Err(e) = r {
                        errs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("rotation of the JSONL files: {e}; retried at the next rotation or start");
                    }
                }
            })
            .ok();
        Worker {
            jobs: thread.is_some().then_some(tx),
            thread,
            errors,
        }
    }

    pub fn kick(&self) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send(());
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Finish the job in hand (a checkpoint half-written is harmless, but a finished one
        // spares the next start the work).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
