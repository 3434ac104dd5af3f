//! A durable, bounded, single-consumer queue on local disk: what an export sink has accepted
//! but its server has not yet acknowledged.
//!
//! Layout of a spool directory: segment files `NNNNNNNNNNNNNNNNNNNN.seg` (one record per line,
//! appended with one `write_all` and `sync_data`, like the JSONL files) and `cursor` (`<segment>
//! <offset>`: everything before it is acknowledged; replaced atomically with rename + fsync).
//! The producer (the event pipeline) appends; the delivery task reads a batch from the cursor,
//! sends it, and only after the server acknowledged it calls [`Spool::commit`], which moves the
//! cursor and deletes fully acknowledged segments. A crash between the acknowledgement and the
//! commit re-sends that batch: the receivers are idempotent (ClickHouse ReplacingMergeTree keyed
//! by a stable id; OTLP spans have deterministic ids), so a re-send never shows as a duplicate.
//!
//! Bounded: an append that would take the unacknowledged bytes past `max_bytes` is refused and
//! counted (`overflow_rows`); nothing else is ever dropped. A torn last line (a crash mid-append)
//! is truncated on open and counted.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A segment is closed (a new one started) once it is this large.
const SEGMENT_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}; check that the data directory is writable and has free space")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool {path} is full ({bytes} unacknowledged bytes, limit {limit}): the row is dropped and counted; the export destination is down or too slow (see `agentwatch status`), or raise the sink's spool_max_bytes"
    )]
    Full {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
}

/// Position in the spool: (segment number, byte offset in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// A batch read from the cursor; commit `end` once it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<Vec<u8>>,
    pub end: Position,
    pub bytes: u64,
}

/// Counters for `agentwatch status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Records appended and not yet acknowledged.
    pub pending_rows: u64,
    pub pending_bytes: u64,
    pub max_bytes: u64,
    pub appended_rows: u64,
    pub acknowledged_rows: u64,
    /// Rows refused because the spool was full (lost for this destination).
    pub overflow_rows: u64,
    pub write_errors: u64,
    /// Torn last lines truncated on open.
    pub torn_lines_repaired: u64,
}

struct Writer {
    segment: u64,
    file: File,
    len: u64,
}

struct State {
    writer: Writer,
    cursor: Position,
    pending_bytes: u64,
    pending_rows: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    appended: AtomicU64,
    acknowledged: AtomicU64,
    overflow: AtomicU64,
    write_errors: AtomicU64,
    torn: AtomicU64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

fn seg_name(n: u64) -> String {
    format!("{n:020}.seg")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, repairing a torn last line.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut segments = list_segments(dir)?;
        let cursor = read_cursor(dir)?;
        // Segments wholly before the cursor are acknowledged leftovers (a crash after the
        // cursor moved, before the delete).
        segments.retain(|&n| {
            if n < cursor.segment {
                let _ = std::fs::remove_file(dir.join(seg_name(n)));
                false
            } else {
                true
            }
        });
        let last = segments.last().copied().unwrap_or(cursor.segment.max(1));
        let path = dir.join(seg_name(last));
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let good = super::jsonl::complete_prefix_len(&file, len).map_err(io(&path))?;
        let mut torn = 0;
        if good != len {
            file.set_len(good).map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
            torn = 1;
            tracing::warn!(spool = %dir.display(), "repaired a torn last spool record");
        }
        if !segments.contains(&last) {
            segments.push(last);
        }
        // Count what is pending (bytes and records after the cursor).
        let mut pending_bytes = 0;
        let mut pending_rows = 0;
        for &n in &segments {
            let p = dir.join(seg_name(n));
            let from = if n == cursor.segment {
                cursor.offset
            } else {
                0
            };
            let (rows, bytes) = count_lines(&p, from)?;
            pending_rows += rows;
            pending_bytes += bytes;
        }
        let cursor = if segments.first().is_some_and(|&f| f > cursor.segment) {
            Position {
                segment: segments[0],
                offset: 0,
            }
        } else {
            cursor
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State {
                writer: Writer {
                    segment: last,
                    file,
                    len: good,
                },
                cursor,
                pending_bytes,
                pending_rows,
            }),
            appended: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            torn: AtomicU64::new(torn),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record (must not contain `\n`) durably, or refuses it when full.
    pub fn append(&self, record: &[u8]) -> Result<(), SpoolError> {
        debug_assert!(!record.contains(&b'\n'));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let size = record.len() as u64 + 1;
        if st.pending_bytes + size > self.max_bytes {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return Err(SpoolError::Full {
                path: self.dir.clone(),
                bytes: st.pending_bytes,
                limit: self.max_bytes,
            });
        }
        if st.writer.len >= SEGMENT_BYTES {
            let next = st.writer.segment + 1;
            let path = self.dir.join(seg_name(next));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| {
                    self.write_errors.fetch_add(1, Ordering::Relaxed);
                    io(&path)(e)
                })?;
            st.writer = Writer {
                segment: next,
                file,
                len: 0,
            };
        }
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record);
        line.push(b'\n');
        let path = self.dir.join(seg_name(st.writer.segment));
        let res = st
            .writer
            .file
            .write_all(&line)
            .and_then(|()| st.writer.file.sync_data());
        if let Err(e) = res {
            let _ = st.writer.file.set_len(st.writer.len);
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(io(&path)(e));
        }
        st.writer.len += size;
        st.pending_bytes += size;
        st.pending_rows += 1;
        self.appended.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reads up to `max_records` records (and about `max_bytes`) from the cursor. Never returns
    /// a partial record.
    pub fn read_batch(&self, max_records: usize, max_bytes: u64) -> Result<Batch, SpoolError> {
        let (mut pos, end) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                st.cursor,
                Position {
                    segment: st.writer.segment,
                    offset: st.writer.len,
                },
            )
        };
        let mut batch = Batch {
            records: Vec::new(),
            end: pos,
            bytes: 0,
        };
        while pos < end && batch.records.len() < max_records && batch.bytes < max_bytes {
            let path = self.dir.join(seg_name(pos.segment));
            let limit = if pos.segment == end.segment {
                end.offset
            } else {
                u64::MAX
            };
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    pos = Position {
                        segment: pos.segment + 1,
                        offset: 0,
                    };
                    batch.end = pos;
                    continue;
                }
                Err(e) => return Err(io(&path)(e)),
            };
            let mut reader = BufReader::new(file);
            reader
                .seek(SeekFrom::Start(pos.offset))
                .map_err(io(&path))?;
            let mut reader = reader.take(limit.saturating_sub(pos.offset));
            let mut line = Vec::new();
            let mut exhausted = true;
            while batch.records.len() < max_records && batch.bytes < max_bytes {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(io(&path))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                pos.offset += n as u64;
                batch.bytes += n as u64;
                line.pop();
                batch.records.push(std::mem::take(&mut line));
                batch.end = pos;
            }
            if batch.records.len() >= max_records || batch.bytes >= max_bytes {
                exhausted = false;
            }
            if exhausted && pos.segment < end.segment {
                pos = Position {
                    segment: pos.segment + 1,
                    offset: 0,
                };
                batch.end = pos;
            } else if exhausted {
                break;
            }
        }
        Ok(batch)
    }

    /// Marks everything before `batch.end` acknowledged: persists the cursor, then deletes the
    /// segments wholly before it.
    pub fn commit(&self, batch: &Batch) -> Result<(), SpoolError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if batch.end <= st.cursor {
            return Ok(());
        }
        write_cursor(&self.dir, batch.end)?;
        let old = st.cursor;
        st.cursor = batch.end;
        st.pending_bytes = st.pending_bytes.saturating_sub(batch.bytes);
        st.pending_rows = st.pending_rows.saturating_sub(batch.records.len() as u64);
        self.acknowledged
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        for n in old.segment..batch.end.segment {
            if n != st.writer.segment {
                let _ = std::fs::remove_file(self.dir.join(seg_name(n)));
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        SpoolStats {
            pending_rows: st.pending_rows,
            pending_bytes: st.pending_bytes,
            max_bytes: self.max_bytes,
            appended_rows: self.appended.load(Ordering::Relaxed),
            acknowledged_rows: self.acknowledged.load(Ordering::Relaxed),
            overflow_rows: self.overflow.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            torn_lines_repaired: self.torn.load(Ordering::Relaxed),
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u64>() {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn read_cursor(dir: &Path) -> Result<Position, SpoolError> {
    let path = dir.join("cursor");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Position::default()),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Position { segment, offset }),
        _ => {
            tracing::warn!(path = %path.display(), "unreadable spool cursor; re-sending the whole spool (receivers deduplicate)");
            Ok(Position::default())
        }
    }
}

fn write_cursor(dir: &Path, pos: Position) -> Result<(), SpoolError> {
    let tmp = dir.join("cursor.tmp");
    let path = dir.join("cursor");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(format!("{} {}\n", pos.segment, pos.offset).as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// (complete lines, their bytes) from `from` to the end of `path`.
fn count_lines(path: &Path, from: u64) -> Result<(u64, u64), SpoolError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(from)).map_err(io(path))?;
    let (mut rows, mut bytes) = (0, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((rows, bytes));
        }
        rows += 1;
        bytes += n as u64;
    }
}
