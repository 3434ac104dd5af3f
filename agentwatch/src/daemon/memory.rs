//! The daemon's own memory. Start-up (configuration, BTF, loading and attaching the kernel
//! side, the /proc walk) runs code and reads constant data that the running daemon never
//! touches again; their pages stay mapped, counted in its RSS, until the kernel reclaims them.
//! Once started it unmaps them: they stay in the page cache, shared and reclaimable, and a
//! page it uses again comes back at first touch (a minor fault).

/// One mapping of `/proc/self/smaps`.
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    path: String,
    rss_kib: u64,
    anonymous_kib: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut cols = line.split_whitespace();
        let Some(first) = cols.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = cols.next().unwrap_or("");
            // offset, device, inode, then the path (which may hold spaces).
            let path = cols.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                writable: perms.contains('w'),
                path,
                rss_kib: 0,
                anonymous_kib: 0,
            });
            continue;
        }
        let value = || cols.clone().next().and_then(|v| v.parse::<u64>().ok());
        if let Some(m) = out.last_mut() {
            match first {
                "Rss:" => m.rss_kib = value().unwrap_or(0),
                "Anonymous:" => m.anonymous_kib = value().unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// Unmaps the resident pages of the daemon's read-only mappings of its own executable; returns
/// the KiB let go. A mapping with private (copied) pages is left alone: those are relocated
/// data, or code a debugger or uprobe patched, which the file does not hold.
pub fn release_executable_pages() -> u64 {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let exe = exe.display().to_string();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for m in mappings(&smaps) {
        if m.path != exe || m.writable || m.anonymous_kib != 0 || m.rss_kib == 0 {
            continue;
        }
        // SAFETY: a read-only, private file mapping with no private pages: dropping its
        // pages changes no content (each comes back from the file when next touched).
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            released += m.rss_kib;
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_mappings_are_read_with_their_resident_and_private_sizes() {
        let smaps = "\
55f9c2d58000-55f9c31e9000 r--p 00000000 fe:00 123 /opt/agent watch/bin/agentwatch
Size:               4676 kB
Rss:                1752 kB
Anonymous:             0 kB
55f9c3d20000-55f9c3db5000 r--p 00a8f000 fe:00 123 /opt/agent watch/bin/agentwatch
Rss:                 596 kB
Anonymous:           596 kB
7ffd1000-7ffd2000 rw-p 00000000 00:00 0 
Rss:                   4 kB
";
        let m = mappings(smaps);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "/opt/agent watch/bin/agentwatch");
        assert_eq!((m[0].rss_kib, m[0].anonymous_kib), (1752, 0));
        assert_eq!((m[1].rss_kib, m[1].anonymous_kib), (596, 596));
        assert!(!m[1].writable && m[2].writable);
        assert_eq!(m[2].path, "");
        assert_eq!(m[0].end - m[0].start, 0x491000);
    }

    /// The test binary is an executable of its own: its read-only pages go, and those it runs
    /// next come back.
    #[test]
    fn releasing_lets_go_of_resident_pages_and_the_program_runs_on() {
        let resident = || {
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            mappings(&smaps)
                .iter()
                .filter(|m| std::path::Path::new(&m.path) == exe && !m.writable)
                .map(|m| m.rss_kib)
                .sum::<u64>()
        };
        let before = resident();
        let released = release_executable_pages();
        assert!(released > 0 && released <= before, "{released} of {before}");
        let after = resident();
        assert!(
            after < before,
            "{after} KiB resident after, {before} before"
        );
        let again: u64 = (1..=1000u64).sum();
        assert_eq!(again, 500500);
    }
}
