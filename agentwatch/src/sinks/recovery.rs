//! Restart recovery from the JSONL files.
//!
//! `ledger.jsonl` names the closed sessions; `calls.jsonl` rows of any other session belong to
//! a session that was open when the daemon stopped. [`recover`] returns those (calls in file
//! order) for [`crate::sessions::Sessions::restore`], which continues each one whose root is
//! still alive and closes the others, returning their ledger rows to write. Once written, a
//! ledger row marks its session closed for every later restart, so none is written twice.
//!
//! Bad lines (not JSON, not a row) are skipped and counted. A last line without `\n` is a torn
//! write and ignored, exactly as [`super::JsonlSink::open`] truncates it, so the order of the
//! two calls at start does not matter.
//!
//! Known limit: both files are read whole (streamed line by line; only the open sessions'
//! calls are kept in memory) at every start, so start time grows with `calls.jsonl`. Rotation
//! and compaction (drop the calls of closed sessions) come later.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SinkError;
use super::jsonl::{CALLS_FILE, LEDGER_FILE};
use crate::sessions::{CallRecord, RecoveredSessions};

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    pub sessions: RecoveredSessions,
    pub stats: RecoveryStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryStats {
    /// Ledger rows read (closed sessions, any boot).
    pub closed_sessions: u64,
    pub calls_read: u64,
    /// Calls of sessions still open (handed to `Sessions::restore`).
    pub open_calls: u64,
    pub bad_ledger_lines: u64,
    pub bad_call_lines: u64,
    /// A last line without `\n` (torn write), in either file.
    pub torn_lines: u64,
}

#[derive(Deserialize)]
struct LedgerHead {
    session_id: String,
    #[serde(default)]
    boot_id: Option<String>,
}

/// Reads `<data_dir>/ledger.jsonl` and `<data_dir>/calls.jsonl` (missing files are empty).
/// `boot_id` is the current boot's: closed sessions of this boot are reported so their ids are
/// never reused.
pub fn recover(data_dir: &Path, boot_id: &str) -> Result<RecoveryReport, SinkError> {
    let mut stats = RecoveryStats::default();
    let mut closed: HashSet<String> = HashSet::new();
    let mut closed_this_boot = Vec::new();
    for_each_line(
        &data_dir.join(LEDGER_FILE),
        &mut stats.torn_lines,
        |bytes| match serde_json::from_slice::<LedgerHead>(bytes) {
            Ok(head) => {
                stats.closed_sessions += 1;
                if head.boot_id.as_deref() == Some(boot_id) {
                    closed_this_boot.push(head.session_id.clone());
                }
                closed.insert(head.session_id);
            }
            Err(_) => stats.bad_ledger_lines += 1,
        },
    )?;

    let mut open: Vec<(String, Vec<CallRecord>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for_each_line(&data_dir.join(CALLS_FILE), &mut stats.torn_lines, |bytes| {
        let rec = match serde_json::from_slice::<CallRecord>(bytes) {
            Ok(rec) => rec,
            Err(_) => {
                stats.bad_call_lines += 1;
                return;
            }
        };
        stats.calls_read += 1;
        if closed.contains(&rec.session_id) {
            return;
        }
        stats.open_calls += 1;
        match index.get(&rec.session_id) {
            Some(&i) => open[i].1.push(rec),
            None => {
                index.insert(rec.session_id.clone(), open.len());
                open.push((rec.session_id.clone(), vec![rec]));
            }
        }
    })?;
    if stats.bad_call_lines + stats.bad_ledger_lines + stats.torn_lines > 0 {
        tracing::warn!(
            bad_call_lines = stats.bad_call_lines,
            bad_ledger_lines = stats.bad_ledger_lines,
            torn_lines = stats.torn_lines,
            "recovery skipped unreadable lines"
        );
    }
    Ok(RecoveryReport {
        sessions: RecoveredSessions {
            open,
            closed_this_boot,
        },
        stats,
    })
}

/// Calls `f` with every complete, non-blank line (without its `\n`).
fn for_each_line(path: &Path, torn: &mut u64, mut f: impl FnMut(&[u8])) -> Result<(), SinkError> {
    let read_err = |source| SinkError::Read {
        path: PathBuf::from(path),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(read_err(e)),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
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
