//! `<data-dir>/calls.jsonl` and `<data-dir>/ledger.jsonl`: one JSON object per line, appended
//! durably. Each row is serialized to one buffer ending in `\n`, written with a single
//! `write_all` on an `O_APPEND` file, then `sync_data`'d before the write returns. A failed
//! write is rolled back to the previous length (best effort), so a reader never sees half a
//! row followed by more rows. On open, a torn last line (a crash mid-write left no trailing
//! `\n`) is truncated away, counted and logged.
//!
//! A row that cannot be written (the disk is full, an I/O error) is kept, in order with the
//! rows after it, in a bounded backlog (`BACKLOG_MAX_BYTES`) that is written out first at the
//! next write and at every tick (once a second) — so rows resume, in their order, as soon as
//! space returns. Only a row beyond the backlog's bound is lost, and counted (`rows_dropped`).
//!
//! Both files rotate together by size and age into `rotated/` (gzipped, with retention), and a
//! checkpoint keeps what a restart needs of the rotated ones: see [`super::rotation`].
//!
//! Throughput: one `fdatasync` per row. On an SSD that is well above the ~1,000 calls/s the
//! daemon targets; group commit (batching rows per sync) is the next step if it is not.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::rotation::{JsonlConfig, ROTATED_DIR, Worker, next_seq};
use super::{Sink, SinkError, SinkHealth};
use crate::sessions::actions::ActionRow;
use crate::sessions::{CallRecord, LedgerRow};

pub const CALLS_FILE: &str = "calls.jsonl";
pub const LEDGER_FILE: &str = "ledger.jsonl";
pub const ACTIONS_FILE: &str = "actions.jsonl";

/// Bytes of rows kept while they cannot be written; more are dropped and counted.
pub const BACKLOG_MAX_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Ledger,
    Action,
}

/// One append-only JSONL file.
#[derive(Debug)]
struct AppendFile {
    path: PathBuf,
    file: File,
    /// Length after the last complete row.
    len: u64,
}

impl AppendFile {
    /// Opens (creating) `path` for appending; returns whether a torn last line was repaired.
    fn open(path: PathBuf) -> Result<(Self, bool), SinkError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|source| SinkError::Open {
                path: path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| SinkError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let good = complete_prefix_len(&file, len).map_err(|source| SinkError::Read {
            path: path.clone(),
            source,
        })?;
        let repaired = good != len;
        if repaired {
            let repair = |source| SinkError::Repair {
                path: path.clone(),
                source,
            };
            file.set_len(good).map_err(repair)?;
            file.sync_data().map_err(repair)?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - good,
                "repaired a torn last line (the daemon stopped mid-write)"
            );
        }
        Ok((
            Self {
                path,
                file,
                len: good,
            },
            repaired,
        ))
    }

    fn append(&mut self, line: &[u8]) -> Result<(), SinkError> {
        if let Err(source) = self.file.write_all(line) {
            // Roll back a partial row so the next one starts on a fresh line.
            let _ = self.file.set_len(self.len);
            return Err(SinkError::Write {
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.file.sync_data().map_err(|source| SinkError::Sync {
            path: self.path.clone(),
            source,
        })
    }
}

/// Length of the file up to and including its last `\n` (0 when it has none).
pub(crate) fn complete_prefix_len(file: &File, len: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The default sink: two JSONL files in the data directory.
#[derive(Debug)]
pub struct JsonlSink {
    calls: AppendFile,
    ledger: AppendFile,
    actions: AppendFile,
    health: SinkHealth,
    data_dir: PathBuf,
    cfg: JsonlConfig,
    /// When the current files were started (their birth time, or the open).
    started: std::time::SystemTime,
    next_seq: u64,
    worker: Worker,
    /// After a failed rotation, none is tried again before this (one error a minute, not one
    /// per row).
    rotate_retry_at: Option<std::time::Instant>,
    /// Rows not written yet, oldest first, and their bytes.
    backlog: std::collections::VecDeque<(Kind, Vec<u8>)>,
    backlog_bytes: usize,
}

impl JsonlSink {
    /// [`JsonlSink::open_with`] the default rotation.
    pub fn open(data_dir: &Path) -> Result<Self, SinkError> {
        Self::open_with(data_dir, &JsonlConfig::default())
    }

    /// Opens (creating) `<data_dir>/calls.jsonl` and `<data_dir>/ledger.jsonl`, repairing a
    /// torn last line in either.
    pub fn open_with(data_dir: &Path, cfg: &JsonlConfig) -> Result<Self, SinkError> {
        std::fs::create_dir_all(data_dir).map_err(|source| SinkError::Open {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let (calls, calls_repaired) = AppendFile::open(data_dir.join(CALLS_FILE))?;
        let (ledger, ledger_repaired) = AppendFile::open(data_dir.join(LEDGER_FILE))?;
        let (actions, actions_repaired) = AppendFile::open(data_dir.join(ACTIONS_FILE))?;
        let started = calls
            .file
            .metadata()
            .and_then(|m| m.created())
            .unwrap_or_else(|_| std::time::SystemTime::now());
        Ok(Self {
            calls,
            ledger,
            actions,
            health: SinkHealth {
                name: "jsonl".to_string(),
                ok: true,
                torn_lines_repaired: u64::from(calls_repaired)
                    + u64::from(ledger_repaired)
                    + u64::from(actions_repaired),
                ..SinkHealth::default()
            },
            data_dir: data_dir.to_path_buf(),
            cfg: cfg.clone(),
            started,
            next_seq: next_seq(data_dir)?,
            worker: Worker::spawn(data_dir.to_path_buf(), cfg.clone()),
            rotate_retry_at: None,
            backlog: std::collections::VecDeque::new(),
            backlog_bytes: 0,
        })
    }

    fn due(&self) -> bool {
        if self
            .rotate_retry_at
            .is_some_and(|at| std::time::Instant::now() < at)
        {
            return false;
        }
        let by_size = self.cfg.rotate_bytes > 0
            && (self.calls.len >= self.cfg.rotate_bytes
                || self.ledger.len >= self.cfg.rotate_bytes
                || self.actions.len >= self.cfg.rotate_bytes);
        let by_age = self.cfg.rotate_age_secs > 0
            && self.calls.len + self.ledger.len + self.actions.len > 0
            && self
                .started
                .elapsed()
                .is_ok_and(|age| age >= std::time::Duration::from_secs(self.cfg.rotate_age_secs));
        by_size || by_age
    }

    /// Renames both files into `rotated/` as the next segment and starts new ones; the worker
    /// then covers the segment in the checkpoint, compresses and prunes. A failed rename is
    /// counted and the current files are kept (retried at the next row).
    fn rotate(&mut self) -> Result<(), SinkError> {
        let dir = self.data_dir.join(ROTATED_DIR);
        let seq = self.next_seq;
        let renamed = std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::rename(&self.calls.path, dir.join(format!("calls-{seq:08}.jsonl")))
            })
            .and_then(|()| {
                std::fs::rename(
                    &self.ledger.path,
                    dir.join(format!("ledger-{seq:08}.jsonl")),
                )
            })
            .and_then(|()| {
                std::fs::rename(
                    &self.actions.path,
                    dir.join(format!("actions-{seq:08}.jsonl")),
                )
            })
            .and_then(|()| File::open(&dir)?.sync_all())
            .and_then(|()| File::open(&self.data_dir)?.sync_all());
        // Whatever was renamed, new rows go to files at the usual paths.
        let calls_moved = !self.calls.path.exists();
        let ledger_moved = !self.ledger.path.exists();
        let actions_moved = !self.actions.path.exists();
        if calls_moved || ledger_moved || actions_moved {
            self.next_seq += 1;
            if calls_moved {
                self.calls = AppendFile::open(self.calls.path.clone())?.0;
            }
            if ledger_moved {
                self.ledger = AppendFile::open(self.ledger.path.clone())?.0;
            }
            if actions_moved {
                self.actions = AppendFile::open(self.actions.path.clone())?.0;
            }
            self.started = std::time::SystemTime::now();
            self.worker.kick();
        }
        match renamed {
            Ok(()) => {
                self.health.rotations += 1;
                self.rotate_retry_at = None;
                tracing::info!(
                    segment = seq,
                    "rotated calls.jsonl, ledger.jsonl and actions.jsonl"
                );
                Ok(())
            }
            Err(source) => {
                self.health.rotation_errors += 1;
                self.rotate_retry_at =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(60));
                tracing::error!(
                    "cannot rotate the JSONL files into {}: {source}; check free space and permissions (rows keep going to the current files)",
                    dir.display()
                );
                Ok(())
            }
        }
    }

    fn rotate_if_due(&mut self) -> Result<(), SinkError> {
        if self.due() { self.rotate() } else { Ok(()) }
    }

    pub fn calls_path(&self) -> &Path {
        &self.calls.path
    }

    pub fn ledger_path(&self) -> &Path {
        &self.ledger.path
    }

    pub fn actions_path(&self) -> &Path {
        &self.actions.path
    }

    fn record<T>(&mut self, r: Result<T, SinkError>) -> Result<T, SinkError> {
        match &r {
            Ok(_) => self.health.ok = true,
            Err(e) => {
                self.health.ok = false;
                self.health.errors += 1;
                self.health.last_error = Some(e.to_string());
            }
        }
        r
    }
}

fn line<T: Serialize>(row: &T, what: &'static str) -> Result<Vec<u8>, SinkError> {
    let mut buf =
        serde_json::to_vec(row).map_err(|source| SinkError::Serialize { what, source })?;
    buf.push(b'\n');
    Ok(buf)
}

impl JsonlSink {
    /// Writes the backlog out, oldest first, until it is empty or a write fails.
    fn drain_backlog(&mut self) -> Result<(), SinkError> {
        let before = self.backlog.len();
        while let Some((kind, line)) = self.backlog.pop_front() {
            let r = self.rotate_if_due().and_then(|()| match kind {
                Kind::Call => self.calls.append(&line),
                Kind::Ledger => self.ledger.append(&line),
                Kind::Action => self.actions.append(&line),
            });
            match r {
                // Written, if not surely durable: never written twice.
                Ok(()) | Err(SinkError::Sync { .. }) => {}
                Err(e) => {
                    self.backlog.push_front((kind, line));
                    return Err(e);
                }
            }
            match kind {
                Kind::Call => self.health.calls_written += 1,
                Kind::Ledger => self.health.ledger_rows_written += 1,
                Kind::Action => self.health.action_rows_written += 1,
            }
            self.backlog_bytes -= line.len();
        }
        if before > 0 {
            tracing::info!(
                rows = before,
                "JSONL writes resumed: the rows kept meanwhile are written, in order"
            );
        }
        Ok(())
    }

    /// One row: after the backlog, else into it. The error returned is the one that made the
    /// sink start keeping rows (logged once), or a row dropped because the backlog is full;
    /// a row kept while the cause lasts returns Ok (it is counted in `rows_pending`).
    fn write_row(&mut self, kind: Kind, line: Vec<u8>) -> Result<(), SinkError> {
        let was_failing = !self.backlog.is_empty();
        let r = self.drain_backlog().and_then(|()| {
            self.rotate_if_due()?;
            let file = match kind {
                Kind::Call => &mut self.calls,
                Kind::Ledger => &mut self.ledger,
                Kind::Action => &mut self.actions,
            };
            file.append(&line)
        });
        match r {
            Ok(()) | Err(SinkError::Sync { .. }) => {
                match kind {
                    Kind::Call => self.health.calls_written += 1,
                    Kind::Ledger => self.health.ledger_rows_written += 1,
                    Kind::Action => self.health.action_rows_written += 1,
                }
                self.health.rows_pending = 0;
                self.record(r)
            }
            Err(e) => {
                if self.backlog_bytes + line.len() > BACKLOG_MAX_BYTES {
                    self.health.rows_dropped += 1;
                    self.health.rows_pending = self.backlog.len() as u64;
                    return self.record(Err(e));
                }
                self.backlog_bytes += line.len();
                self.backlog.push_back((kind, line));
                self.health.rows_pending = self.backlog.len() as u64;
                let r = self.record(Err(e));
                if was_failing { Ok(()) } else { r }
            }
        }
    }
}

impl Sink for JsonlSink {
    fn write_call(&mut self, call: &CallRecord) -> Result<(), SinkError> {
        let l = line(call, "call")?;
        self.write_row(Kind::Call, l)
    }

    fn write_ledger(&mut self, row: &LedgerRow) -> Result<(), SinkError> {
        let l = line(row, "ledger")?;
        self.write_row(Kind::Ledger, l)
    }

    fn write_action(&mut self, row: &ActionRow) -> Result<(), SinkError> {
        let l = line(row, "action")?;
        self.write_row(Kind::Action, l)
    }

    fn retry(&mut self) {
        if !self.backlog.is_empty() {
            let r = self.drain_backlog();
            self.health.rows_pending = self.backlog.len() as u64;
            if r.is_ok() {
                self.health.ok = true;
            }
        }
    }

    fn health(&self) -> SinkHealth {
        let mut h = self.health.clone();
        h.rotation_errors += self
            .worker
            .errors
            .load(std::sync::atomic::Ordering::Relaxed);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::test_support::TempDir;
    use crate::sessions::Sessions;
    use crate::sessions::tests::{S, call, cfg, fake_host, k, req};

    /// The disk fills (writes to /dev/full fail with ENOSPC): the first failure is reported,
    /// the rows after it are kept in order (ledger rows too, behind the calls), nothing half
    /// written reaches the file; once space returns, the next tick writes them all, in order.
    #[test]
    fn jsonl_rows_kept_while_the_disk_is_full_are_written_in_order_after() {
        let dir = TempDir::new("jsonl-full");
        let (_fake, mut tree) = fake_host();
        let mut s = Sessions::new(cfg());
        let mut sink = JsonlSink::open(dir.path()).unwrap();
        let mut rec = |i: u64, key| {
            s.on_call(
                &tree,
                key,
                &call(req("openai", Some("g"), i * S), i, i, i * S + 1),
                Some(0.25),
            )
        };
        let a = rec(1, k(600, 600));
        let b = rec(2, k(600, 600));
        let c = rec(3, k(600, 600));
        sink.write_call(&a).unwrap();
        let full = AppendFile::open(PathBuf::from("/dev/full")).unwrap().0;
        let real = std::mem::replace(&mut sink.calls, full);
        assert!(matches!(sink.write_call(&b), Err(SinkError::Write { .. })));
        sink.write_call(&c).unwrap();
        let rows = s.on_removed(&tree.on_exit(600), 10 * S);
        assert_eq!(rows.len(), 1);
        sink.write_ledger(&rows[0]).unwrap();
        sink.retry();
        let h = sink.health();
        assert_eq!(
            (h.ok, h.rows_pending, h.rows_dropped),
            (false, 3, 0),
            "{h:?}"
        );
        assert!(
            h.last_error.as_deref().unwrap().contains("/dev/full"),
            "{h:?}"
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read(CALLS_FILE).lines().count(), 1);
        assert_eq!(
            read(LEDGER_FILE),
            "",
            "the ledger row waits behind its calls"
        );

        sink.calls = real;
        sink.retry();
        let h = sink.health();
        assert_eq!(
            (h.ok, h.rows_pending, h.calls_written, h.ledger_rows_written),
            (true, 0, 3, 1),
            "{h:?}"
        );
        let calls: Vec<CallRecord> = read(CALLS_FILE)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(calls, vec![a, b, c]);
        assert_eq!(read(LEDGER_FILE).lines().count(), 1);
    }
}
