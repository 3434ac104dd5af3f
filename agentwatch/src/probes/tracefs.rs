//! tracefs: mounted on demand, and the source of tracepoint field offsets (they differ
//! between kernel versions, so they are read here rather than compiled into the object).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ProbeError;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing when it is missing.
pub fn ensure_mounted() -> Result<PathBuf, ProbeError> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    super::mount_fs(c"nodev", c"/sys/kernel/tracing", c"tracefs")
        .map_err(|source| ProbeError::Tracefs { source })?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// Field name → byte offset for one tracepoint, parsed from its `format` file.
pub fn field_offsets(
    root: &Path,
    category: &str,
    name: &str,
) -> Result<HashMap<String, u32>, ProbeError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| ProbeError::TracepointFormat { path, source })?;
    Ok(parse_format(&text))
}

pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset)) = (decl, offset) else {
            continue;
        };
        // "unsigned long clone_flags", "char comm[16]", "__data_loc char[] filename"
        let name = decl.rsplit(' ').next().unwrap_or(decl);
        let name = name.split('[').next().unwrap_or(name);
        out.insert(name.to_string(), offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_including_data_loc_and_arrays() {
        let text = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n\
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n";
        let f = parse_format(text);
        assert_eq!(f["parent_comm"], 8);
        assert_eq!(f["child_pid"], 20);
        assert_eq!(f["comm"], 8);
        assert_eq!(f["common_type"], 0);
    }
}
