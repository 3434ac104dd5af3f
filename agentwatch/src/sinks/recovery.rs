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
//! What is read is bounded: the rotation checkpoint ([`super::rotation`]) stands for every
//! segment it covers; only the segments it does not cover yet and the two current files are
//! read (streamed line by line; only the open sessions' calls are kept in memory).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::SinkError;
use super::jsonl::{ACTIONS_FILE, CALLS_FILE, LEDGER_FILE};
use super::rotation::{Fold, load_checkpoint, segments};
use crate::sessions::RecoveredSessions;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    pub sessions: RecoveredSessions,
    pub stats: RecoveryStats,
    /// Spend of the last day by Unix minute, for the host's daily ceiling.
    pub host_day: BTreeMap<i64, f64>,
    /// The same per shared budget.
    pub budget_day: BTreeMap<String, BTreeMap<i64, f64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryStats {
    /// Ledger rows read (closed sessions, any boot), besides the checkpoint's.
    pub closed_sessions: u64,
    pub calls_read: u64,
    /// Calls of sessions still open (handed to `Sessions::restore`).
    pub open_calls: u64,
    pub bad_ledger_lines: u64,
    pub bad_call_lines: u64,
    pub bad_action_lines: u64,
    /// A last line without `\n` (torn write), in either file.
    pub torn_lines: u64,
    /// Rotated segments the checkpoint covers (not read) and those read.
    pub segments_covered: u64,
    pub segments_read: u64,
}

/// Reads the rotation checkpoint, the rotated segments it does not cover, then
/// `<data_dir>/ledger.jsonl` and `<data_dir>/calls.jsonl` (missing files are empty).
/// `boot_id` is the current boot's: closed sessions of this boot are reported so their ids are
/// never reused.
pub fn recover(data_dir: &Path, boot_id: &str) -> Result<RecoveryReport, SinkError> {
    let cp = load_checkpoint(data_dir)?;
    let covered = cp.covered_seq;
    let pending: Vec<_> = segments(data_dir)?
        .into_iter()
        .filter(|s| s.seq > covered)
        .collect();
    let mut fold = Fold::new(cp);
    for p in pending.iter().filter_map(|s| s.ledger.as_ref()) {
        fold.ledger_file(p)?;
    }
    fold.ledger_file(&data_dir.join(LEDGER_FILE))?;
    for p in pending.iter().filter_map(|s| s.calls.as_ref()) {
        fold.calls_file(p)?;
    }
    fold.calls_file(&data_dir.join(CALLS_FILE))?;
    for p in pending.iter().filter_map(|s| s.actions.as_ref()) {
        fold.actions_file(p)?;
    }
    fold.actions_file(&data_dir.join(ACTIONS_FILE))?;
    let mut stats = std::mem::take(&mut fold.stats);
    stats.segments_covered = covered;
    stats.segments_read = pending.len() as u64;
    let now =
        crate::sessions::WallClock::from_system().unix_ns(crate::sessions::clock::boot_now_ns());
    let cp = fold.finish(covered, now);
    stats.open_calls = cp.open.iter().map(|s| s.calls.len() as u64).sum();
    if stats.bad_call_lines + stats.bad_ledger_lines + stats.torn_lines > 0 {
        tracing::warn!(
            bad_call_lines = stats.bad_call_lines,
            bad_ledger_lines = stats.bad_ledger_lines,
            torn_lines = stats.torn_lines,
            "recovery skipped unreadable lines"
        );
    }
    let closed_this_boot = cp
        .closed
        .into_iter()
        .filter(|(boot, _)| boot.as_deref() == Some(boot_id))
        .map(|(_, id)| id)
        .collect();
    Ok(RecoveryReport {
        sessions: RecoveredSessions {
            open: cp
                .open
                .into_iter()
                .map(|s| (s.session_id, s.calls))
                .collect(),
            closed_this_boot,
            tool_runs: cp.tool_runs.into_iter().collect(),
            hosts: cp.hosts.into_iter().collect(),
            // From the file journal (`sessions::file_journal`), not the sinks' files.
            files: Default::default(),
        },
        stats,
        host_day: cp.host_day,
        budget_day: cp.budget_day,
    })
}
