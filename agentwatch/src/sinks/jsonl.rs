//! `<data-dir>/calls.jsonl` and `<data-dir>/ledger.jsonl`: one JSON object per line, appended
//! durably. Each row is serialized to one buffer ending in `\n`, written with a single
//! `write_all` on an `O_APPEND` file, then `sync_data`'d before the write returns. A failed
//! write is rolled back to the previous length (best effort), so a reader never sees half a
//! row followed by more rows. On open, a torn last line (a crash mid-write left no trailing
//! `\n`) is truncated away, counted and logged.
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
use crate::sessions::{CallRecord, LedgerRow};

pub const CALLS_FILE: &str = "calls.jsonl";
pub const LEDGER_FILE: &str = "ledger.jsonl";

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
    health: SinkHealth,
    data_dir: PathBuf,
    cfg: JsonlConfig,
    /// When the current files were started (their birth time, or the open).
    started: std::time::SystemTime,
    next_seq: u64,
    worker: Worker,
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
        let started = calls
            .file
            .metadata()
            .and_then(|m| m.created())
            .unwrap_or_else(|_| std::time::SystemTime::now());
        Ok(Self {
            calls,
            ledger,
            health: SinkHealth {
                name: "jsonl".to_string(),
                ok: true,
                torn_lines_repaired: u64::from(calls_repaired) + u64::from(ledger_repaired),
                ..SinkHealth::default()
            },
            data_dir: data_dir.to_path_buf(),
            cfg: cfg.clone(),
            started,
            next_seq: next_seq(data_dir)?,
            worker: Worker::spawn(data_dir.to_path_buf(), cfg.clone()),
        })
    }

    fn due(&self) -> bool {
        let by_size = self.cfg.rotate_bytes > 0
            && (self.calls.len >= self.cfg.rotate_bytes
                || self.ledger.len >= self.cfg.rotate_bytes);
        let by_age = self.cfg.rotate_age_secs > 0
            && self.calls.len + self.ledger.len > 0
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
            .and_then(|()| File::open(&dir)?.sync_all())
            .and_then(|()| File::open(&self.data_dir)?.sync_all());
        // Whatever was renamed, new rows go to files at the usual paths.
        let calls_moved = !self.calls.path.exists();
        let ledger_moved = !self.ledger.path.exists();
        if calls_moved || ledger_moved {
            self.next_seq += 1;
            if calls_moved {
                self.calls = AppendFile::open(self.calls.path.clone())?.0;
            }
            if ledger_moved {
                self.ledger = AppendFile::open(self.ledger.path.clone())?.0;
            }
            self.started = std::time::SystemTime::now();
            self.worker.kick();
        }
        match renamed {
            Ok(()) => {
                self.health.rotations += 1;
                tracing::info!(segment = seq, "rotated calls.jsonl and ledger.jsonl");
                Ok(())
            }
            Err(source) => {
                self.health.rotation_errors += 1;
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

impl Sink for JsonlSink {
    fn write_call(&mut self, call: &CallRecord) -> Result<(), SinkError> {
        let r = self
            .rotate_if_due()
            .and_then(|()| line(call, "call"))
            .and_then(|l| self.calls.append(&l));
        if r.is_ok() {
            self.health.calls_written += 1;
        }
        self.record(r)
    }

    fn write_ledger(&mut self, row: &LedgerRow) -> Result<(), SinkError> {
        let r = self
            .rotate_if_due()
            .and_then(|()| line(row, "ledger"))
            .and_then(|l| self.ledger.append(&l));
        if r.is_ok() {
            self.health.ledger_rows_written += 1;
        }
        self.record(r)
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
