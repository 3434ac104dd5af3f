//! The whole JSONL history of a data directory: the rotated segments, then the current file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// `<data_dir>/rotated/<kind>-N.jsonl[.gz]` by N, then `<data_dir>/<kind>.jsonl`. A file that
/// vanishes while it is read (a rotation or its gzip meanwhile) makes the read start over.
pub fn read_history(data_dir: &Path, kind: &str) -> Vec<Value> {
    use std::io::Read;
    for _ in 0..20 {
        let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(data_dir.join("rotated"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name
                    .strip_suffix(".jsonl.gz")
                    .or_else(|| name.strip_suffix(".jsonl"))?;
                let n = stem.strip_prefix(&format!("{kind}-"))?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        // A segment both plain and gzipped is being compressed: the plain file is whole.
        segs.sort_by_key(|(n, p)| (*n, p.extension().is_some_and(|x| x == "gz")));
        segs.dedup_by_key(|(n, _)| *n);
        let mut text = String::new();
        let mut vanished = false;
        for (_, path) in &segs {
            let read = std::fs::File::open(path).and_then(|f| {
                if path.extension().is_some_and(|x| x == "gz") {
                    flate2::read::MultiGzDecoder::new(f).read_to_string(&mut text)
                } else {
                    std::io::BufReader::new(f).read_to_string(&mut text)
                }
            });
            if read.is_err() {
                vanished = true;
                break;
            }
        }
        if vanished {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        text.push_str(
            &std::fs::read_to_string(data_dir.join(format!("{kind}.jsonl"))).unwrap_or_default(),
        );
        return complete_lines(&text)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSONL line {l:?}: {e}"))
            })
            .collect();
    }
    panic!(
        "the JSONL history of {} kept changing while read",
        data_dir.display()
    );
}

/// The lines of a JSONL file's text that are whole: a last line without its `\n` is a row the
/// daemon is appending right now (a write that crosses a page is seen in parts), left out.
pub fn complete_lines(text: &str) -> std::str::Lines<'_> {
    text[..text.rfind('\n').map_or(0, |i| i + 1)].lines()
}
