//! The files open sessions changed so far (`[actions] files`), kept on disk as they change:
//! file rows are written only when a session closes, so without this a restarted daemon would
//! start a session's counts again.
//!
//! `files-open.jsonl` in `data_dir`: lines of a session's path as it stands now (a
//! [`FileChange`]), each batch ended by the ring buffer position read so far (`{"pos":N}`).
//! The last line of a path wins. A batch without its end (a daemon killed while writing it)
//! is not used: its records come again from the pinned ring buffer, since the daemon hands the
//! ring's space back only after the batch was written. Records before the last end were
//! counted here, and a next daemon that reads them again (killed before it recorded how far
//! it had read) does not count them twice. Rewritten with the open sessions' paths only at
//! start and when it grows over [`COMPACT_BYTES`].
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::actions::FileChange;

pub const FILE_JOURNAL: &str = "files-open.jsonl";
/// Size past which the journal is rewritten with the open sessions' paths only.
const COMPACT_BYTES: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    End { pos: u64 },
    File(FileChange),
}

/// What a previous daemon's journal held.
#[derive(Debug, Default)]
pub struct Journaled {
    /// Per session id, its paths as last written.
    pub files: HashMap<String, Vec<FileChange>>,
    /// Ring position up to which its records were counted (0: none).
    pub pos: u64,
    /// Lines not used: unreadable, or of a batch never ended.
    pub lines_dropped: u64,
}

/// Reads `data_dir`'s journal (none: nothing).
pub fn load(data_dir: &Path) -> Journaled {
    let mut out = Journaled::default();
    let Ok(text) = std::fs::read_to_string(data_dir.join(FILE_JOURNAL)) else {
        return out;
    };
    let mut files: HashMap<(String, String), FileChange> = HashMap::new();
    let mut batch: Vec<FileChange> = Vec::new();
    for line in text.lines() {
        match serde_json::from_str::<Line>(line) {
            Ok(Line::End { pos }) => {
                for f in batch.drain(..) {
                    files.insert((f.session_id.clone(), f.path.clone()), f);
                }
                out.pos = out.pos.max(pos);
            }
            Ok(Line::File(f)) => batch.push(f),
            Err(_) => out.lines_dropped += 1,
        }
    }
    out.lines_dropped += batch.len() as u64;
    for ((sid, _), f) in files {
        out.files.entry(sid).or_default().push(f);
    }
    for v in out.files.values_mut() {
        v.sort_by(|a, b| a.path.cmp(&b.path));
    }
    out
}

/// The journal this daemon writes.
pub struct FileJournal {
    path: PathBuf,
    out: Option<std::fs::File>,
    /// Lines of the batch under way.
    buf: Vec<u8>,
    size: u64,
    /// Write failures (the counts then live in memory only until the session closes).
    pub errors: u64,
    /// Lines of the previous daemon's journal not used (see [`Journaled::lines_dropped`]).
    pub lines_dropped_at_start: u64,
}

impl FileJournal {
    /// Starts `data_dir`'s journal over with `open` (the open sessions' paths, after a
    /// restart), ended at ring position `pos`.
    pub fn start(data_dir: &Path, open: &[FileChange], pos: u64) -> FileJournal {
        let mut j = FileJournal {
            path: data_dir.join(FILE_JOURNAL),
            out: None,
            buf: Vec::new(),
            size: 0,
            errors: 0,
            lines_dropped_at_start: 0,
        };
        j.rewrite(open, pos);
        j
    }

    /// A path as it stands now, for the batch under way.
    pub fn push(&mut self, f: &FileChange) {
        if serde_json::to_writer(&mut self.buf, &Line::File(f.clone())).is_ok() {
            self.buf.push(b'\n');
        }
    }

    /// Ends the batch under way (if any) at ring position `pos`: written before the ring's
    /// space is handed back. `open` gives the open sessions' paths when the journal is to be
    /// rewritten.
    pub fn end_batch(&mut self, pos: u64, open: impl FnOnce() -> Vec<FileChange>) {
        if self.buf.is_empty() {
            return;
        }
        if self.size > COMPACT_BYTES {
            self.buf.clear();
            self.rewrite(&open(), pos);
            return;
        }
        let mut batch = std::mem::take(&mut self.buf);
        let _ = writeln!(batch, "{{\"pos\":{pos}}}");
        if self.out.is_none() {
            self.out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.failed(&e))
                .ok();
        }
        if let Some(out) = self.out.as_mut() {
            match out.write_all(&batch) {
                Ok(()) => self.size += batch.len() as u64,
                Err(e) => {
                    self.failed(&e);
                    self.out = None;
                }
            }
        }
    }

    /// Replaces the journal with `open`'s paths (none: no journal).
    fn rewrite(&mut self, open: &[FileChange], pos: u64) {
        self.out = None;
        self.size = 0;
        if open.is_empty() {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let mut text = Vec::new();
        for f in open {
            if serde_json::to_writer(&mut text, &Line::File(f.clone())).is_ok() {
                text.push(b'\n');
            }
        }
        let _ = writeln!(text, "{{\"pos\":{pos}}}");
        let tmp = self.path.with_extension("jsonl.tmp");
        match std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            Ok(()) => self.size = text.len() as u64,
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        self.errors += 1;
        if self.errors == 1 {
            tracing::warn!(
                "failed to write {}: {e}; the file counts of open sessions start again if the daemon restarts (check data_dir's disk)",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(sid: &str, path: &str, opened: u64) -> FileChange {
        FileChange {
            session_id: sid.into(),
            path: path.into(),
            opened_for_write: opened,
            ..Default::default()
        }
    }

    #[test]
    fn the_last_line_of_a_path_wins_and_an_unended_batch_is_not_used() {
        let dir = std::env::temp_dir().join(format!("aw-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut j = FileJournal::start(&dir, &[change("s1", "/a", 1)], 100);
        j.push(&change("s1", "/a", 2));
        j.push(&change("s2", "/b", 1));
        j.end_batch(200, Vec::new);
        // A batch cut short: no end line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(FILE_JOURNAL))
            .unwrap();
        writeln!(
            f,
            "{}",
            serde_json::to_string(&change("s1", "/a", 9)).unwrap()
        )
        .unwrap();
        writeln!(f, "{{\"session_id\":").unwrap();
        let got = load(&dir);
        assert_eq!(got.pos, 200);
        assert_eq!(got.files["s1"], vec![change("s1", "/a", 2)]);
        assert_eq!(got.files["s2"], vec![change("s2", "/b", 1)]);
        assert_eq!(got.lines_dropped, 2);
        // Started again with nothing open: no journal.
        let _ = FileJournal::start(&dir, &[], 300);
        assert!(!dir.join(FILE_JOURNAL).exists());
        assert_eq!(load(&dir).pos, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
