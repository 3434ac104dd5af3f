//! Reading one process from a `/proc`-like directory. Every read may fail (the process
//! vanished, permissions): callers treat `None` as "unknown", never as an error.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Bytes of `/proc/PID/cmdline` kept per process (bounded memory).
pub(crate) const CMDLINE_MAX_BYTES: u64 = 4096;
/// Kernel `TASK_COMM_LEN - 1`.
pub(crate) const COMM_MAX: usize = 15;

/// The fields of `/proc/PID/stat` the tree needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatFields {
    pub comm: String,
    pub ppid: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Everything read about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub stat: StatFields,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
}

/// Parses `/proc/PID/stat`. `comm` may hold spaces and parentheses, so the numeric
/// fields are read after the LAST `)`.
pub(crate) fn parse_stat(text: &str) -> Option<StatFields> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let _state = rest.next()?; // field 3
    let ppid = rest.next()?.parse().ok()?; // field 4
    // Fields 5..=21 are skipped; field 22 is the 18th after field 4.
    let start_ticks = rest.nth(17)?.parse().ok()?;
    Some(StatFields {
        comm,
        ppid,
        start_ticks,
    })
}

pub(crate) fn read_stat(proc_root: &Path, tgid: u32) -> Option<StatFields> {
    let bytes = std::fs::read(proc_root.join(tgid.to_string()).join("stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

pub(crate) fn read_exe(proc_root: &Path, tgid: u32) -> Option<String> {
    let target = std::fs::read_link(proc_root.join(tgid.to_string()).join("exe")).ok()?;
    Some(target.to_string_lossy().into_owned())
}

/// NUL-separated arguments, at most [`CMDLINE_MAX_BYTES`] read.
pub(crate) fn read_cmdline(proc_root: &Path, tgid: u32) -> Vec<String> {
    let Ok(file) = File::open(proc_root.join(tgid.to_string()).join("cmdline")) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if file.take(CMDLINE_MAX_BYTES).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    split_cmdline(&buf)
}

pub(crate) fn split_cmdline(buf: &[u8]) -> Vec<String> {
    let buf = buf.strip_suffix(&[0]).unwrap_or(buf);
    if buf.is_empty() {
        return Vec::new();
    }
    buf.split(|b| *b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// `None` when the process has vanished (its stat cannot be read).
pub(crate) fn read_snapshot(proc_root: &Path, tgid: u32) -> Option<Snapshot> {
    let stat = read_stat(proc_root, tgid)?;
    Some(Snapshot {
        stat,
        exe: read_exe(proc_root, tgid),
        cmdline: read_cmdline(proc_root, tgid),
    })
}

/// What the kernel sets `comm` to on exec: the file name's last component, truncated.
pub(crate) fn comm_from_filename(filename: &str) -> String {
    let base = filename.rsplit('/').next().unwrap_or(filename);
    let mut end = base.len().min(COMM_MAX);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_string()
}

/// `sysconf(_SC_CLK_TCK)`, 100 when unavailable.
pub(crate) fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// Boot-clock nanoseconds → clock ticks, as `/proc/PID/stat` field 22 counts them.
pub(crate) fn ns_to_ticks(ns: u64, clk_tck: u64) -> u64 {
    let ns_per_tick = (1_000_000_000 / clk_tck.max(1)).max(1);
    ns / ns_per_tick
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procs_parse_stat_with_parens_and_spaces_in_comm() {
        let line = "4242 (my (weird) comm) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "my (weird) comm");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn procs_parse_stat_rejects_garbage() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S"), None);
        assert_eq!(parse_stat("12 (x) S notanumber"), None);
        assert_eq!(parse_stat(") 12 (x"), None);
    }

    #[test]
    fn procs_cmdline_split_and_comm_from_filename() {
        assert_eq!(
            split_cmdline(b"bash\0-c\0echo hi\0"),
            vec!["bash", "-c", "echo hi"]
        );
        assert_eq!(split_cmdline(b""), Vec::<String>::new());
        assert_eq!(comm_from_filename("/usr/bin/python3"), "python3");
        assert_eq!(
            comm_from_filename("/x/averyveryverylongname"),
            "averyveryverylo"
        );
        assert_eq!(ns_to_ticks(1_500_000_000, 100), 150);
        assert_eq!(ns_to_ticks(1_500_000_000, 1000), 1500);
    }
}
