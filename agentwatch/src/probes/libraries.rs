//! Finding the TLS libraries processes use. Paths are resolved through /proc/PID/root so
//! processes in other mount namespaces (containers) are covered; the loader attaches once
//! per file identity (device, inode).
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};

/// The plain and `_ex` read/write calls of OpenSSL's API (also exported by node's static
/// OpenSSL), GnuTLS's record send/receive, and the handshakes that mark a new connection on a
/// (possibly reused) session object.
pub const TLS_SYMBOLS: [&str; 8] = [
    "SSL_write",
    "SSL_write_ex",
    "SSL_read",
    "SSL_read_ex",
    "SSL_do_handshake",
    "gnutls_record_send",
    "gnutls_record_recv",
    "gnutls_handshake",
];

/// Library directories searched at start, so processes that load libssl later
/// (Python imports `ssl` lazily) are covered from their first call.
const LIBRARY_DIRS: [&str; 8] = [
    "lib",
    "lib64",
    "usr/lib",
    "usr/lib64",
    "usr/local/lib",
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
];

/// The TLS symbols `path` defines in its dynamic symbol table (empty if none or not ELF).
pub fn exported_tls_symbols(path: &Path) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return Vec::new();
    };
    obj.dynamic_symbols()
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter(|name| TLS_SYMBOLS.contains(&name.as_str()))
        .collect()
}

/// OpenSSL's and GnuTLS's shared libraries.
fn is_libssl(name: &str) -> bool {
    name.starts_with("libssl.so") || name.starts_with("libgnutls.so")
}

/// `/proc/PID/root` joined with an absolute path seen inside that process.
pub fn via_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// One file-backed mapping of a process (a line of /proc/PID/maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `start-end` (the name of its /proc/PID/map_files entry).
    pub range: String,
    /// (st_dev, inode) of the mapped file.
    pub identity: (u64, u64),
    pub path: String,
}

/// Parses one maps line: `start-end perms offset major:minor inode path`.
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut cols = line.split_whitespace();
    let range = cols.next()?;
    let (_perms, _offset, dev, inode) = (cols.next()?, cols.next()?, cols.next()?, cols.next()?);
    let path = cols.next()?;
    if !path.starts_with('/') {
        return None;
    }
    let inode: u64 = inode.parse().ok()?;
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    (inode != 0).then(|| Mapping {
        range: range.to_string(),
        identity: (libc::makedev(major, minor), inode),
        path: path.to_string(),
    })
}

/// Every file mapped by process `pid`, once per file.
pub fn mappings(pid: u32) -> Vec<Mapping> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<Mapping> = Vec::new();
    for m in maps.lines().filter_map(parse_maps_line) {
        if !out.iter().any(|o| o.identity == m.identity) {
            out.push(m);
        }
    }
    out
}

/// The libssl files among `maps` of process `pid`: (path inside the process, path to attach
/// through). The path goes through /proc/PID/root; when that no longer names the mapped file
/// (deleted, replaced, or hidden by a mount), through /proc/PID/map_files.
pub fn mapped_tls_libraries(pid: u32, maps: &[Mapping]) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for m in maps {
        let name = m.path.rsplit('/').next().unwrap_or(&m.path);
        if !is_libssl(name) {
            continue;
        }
        let path = inside_root(pid, &m.path);
        let via = via_root(pid, &path);
        let same = std::fs::metadata(&via).is_ok_and(|meta| (meta.dev(), meta.ino()) == m.identity);
        let via = if same {
            via
        } else {
            PathBuf::from(format!("/proc/{pid}/map_files/{}", m.range))
        };
        out.push((path.trim_end_matches(" (deleted)").to_string(), via));
    }
    out
}

/// A path as /proc shows it to the daemon (from the daemon's root), as process `pid` sees it:
/// a process under another root (a container's `chroot`/`pivot_root`) has that root's path
/// in front.
fn inside_root(pid: u32, path: &str) -> String {
    let Ok(root) = std::fs::read_link(format!("/proc/{pid}/root")) else {
        return path.to_string();
    };
    let root = root.to_string_lossy();
    match path.strip_prefix(root.trim_end_matches('/')) {
        Some(rest) if root != "/" && rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

/// Directories of the process's `LD_LIBRARY_PATH` (containers often carry their own OpenSSL
/// outside the standard directories), from /proc/PID/environ as it was at exec.
pub fn ld_library_path(pid: u32) -> Vec<String> {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Vec::new();
    };
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"LD_LIBRARY_PATH="))
        .map(|v| {
            String::from_utf8_lossy(v)
                .split(':')
                .filter(|d| d.starts_with('/'))
                .take(16)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The root directory `via` goes through (`/proc/PID/root/…` or `/proc/PID/map_files/…`),
/// when that is not the daemon's own root: the file belongs to another mount namespace.
pub fn foreign_root(via: &Path) -> Option<(u64, u64)> {
    let rest = via.to_str()?.strip_prefix("/proc/")?;
    let pid = rest.split('/').next()?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/root")).ok()?;
    let ours = std::fs::metadata("/").ok()?;
    let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
    (id(&theirs) != id(&ours)).then(|| id(&theirs))
}

/// libssl files in directory `dir` (as the process sees it) under `root`.
pub fn tls_libraries_in(root: &Path, dir: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_libssl(name) {
            out.push((
                format!("{}/{name}", dir.trim_end_matches('/')),
                entry.path(),
            ));
        }
    }
    out
}

/// The executable of `pid` (node exports OpenSSL's symbols from its own binary).
pub fn executable(pid: u32) -> Option<(String, PathBuf)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = inside_root(pid, exe.to_str()?.trim_end_matches(" (deleted)"));
    let via = via_root(pid, &exe);
    Some((exe, via))
}

/// libssl files in the standard library directories under `root` ("/" or /proc/PID/root).
pub fn system_tls_libraries(root: &Path) -> Vec<(String, PathBuf)> {
    LIBRARY_DIRS
        .iter()
        .flat_map(|dir| tls_libraries_in(root, &format!("/{dir}")))
        .collect()
}

/// Runtimes that carry their own OpenSSL and export its symbols (node), and agents that are
/// one static binary (claude, codex, bun). Attaching them at start means one started later is
/// covered from its first call: attaching on exec races with the first request (a binary of
/// a few hundred MB takes a moment to attach, and longer to analyse).
pub fn runtime_executables() -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/bin", "/usr/local/bin", "/bin", "/root/.local/bin"] {
        dirs.push(PathBuf::from(d));
    }
    // The agents' own installers put them in ~/.local/bin.
    if let Ok(homes) = std::fs::read_dir("/home") {
        dirs.extend(homes.flatten().map(|h| h.path().join(".local/bin")));
    }
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for dir in dirs {
        for name in ["node", "nodejs", "claude", "codex", "bun"] {
            // Installers link the name to the current version: attach the file itself.
            let Ok(path) = dir.join(name).canonicalize() else {
                continue;
            };
            if path.is_file() && !out.iter().any(|(_, p)| *p == path) {
                out.push((path.display().to_string(), path));
            }
        }
    }
    out
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            "7f1c2a000000-7f1c2a0a0000 r--p 00000000 fd:01 1234567 /opt/tls/lib/libssl.so.3",
        )
        .unwrap();
        assert_eq!(m.range, "7f1c2a000000-7f1c2a0a0000");
        assert_eq!(m.identity, (libc::makedev(0xfd, 1), 1234567));
        assert_eq!(m.path, "/opt/tls/lib/libssl.so.3");
        assert!(parse_maps_line("7f-80 rw-p 00000000 00:00 0 [heap]").is_none());
        assert!(parse_maps_line("garbage").is_none());
        // Our own maps: the identity of a mapped file equals its stat.
        let own = mappings(std::process::id());
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let meta = std::fs::metadata(&exe).unwrap();
        assert!(
            own.iter().any(|m| m.identity == (meta.dev(), meta.ino())),
            "{own:?}"
        );
    }

    #[test]
    fn finds_the_system_libssl_exports() {
        let libs = system_tls_libraries(Path::new("/"));
        let Some((_, via)) = libs.iter().find(|(path, via)| {
            path.contains("libssl.so") && !exported_tls_symbols(via).is_empty()
        }) else {
            panic!("no libssl exporting SSL_write found under / (is libssl3 installed?)");
        };
        let syms = exported_tls_symbols(via);
        assert!(syms.contains(&"SSL_write".to_string()), "{syms:?}");
        assert!(syms.contains(&"SSL_read_ex".to_string()), "{syms:?}");
    }

    #[test]
    fn non_elf_and_missing_files_export_nothing() {
        assert!(exported_tls_symbols(Path::new("/proc/self/status")).is_empty());
        assert!(exported_tls_symbols(Path::new("/nonexistent/libssl.so.3")).is_empty());
    }

    #[test]
    fn via_root_joins_under_proc() {
        assert_eq!(
            via_root(12, "/usr/lib/libssl.so.3"),
            PathBuf::from("/proc/12/root/usr/lib/libssl.so.3")
        );
    }
}
