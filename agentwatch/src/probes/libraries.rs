//! Finding the TLS libraries processes use. Paths are resolved through /proc/PID/root so
//! processes in other mount namespaces (containers) are covered; the loader attaches once
//! per file identity (device, inode).
use std::fs::File;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};

/// The plain and `_ex` read/write calls of OpenSSL's API (also exported by node's static
/// OpenSSL), and the handshake that marks a new connection on an SSL object.
pub const TLS_SYMBOLS: [&str; 5] = [
    "SSL_write",
    "SSL_write_ex",
    "SSL_read",
    "SSL_read_ex",
    "SSL_do_handshake",
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

fn is_libssl(name: &str) -> bool {
    name.starts_with("libssl.so")
}

/// `/proc/PID/root` joined with an absolute path seen inside that process.
pub fn via_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
}

/// libssl files mapped by process `pid`: (path inside the process, path to attach through).
pub fn mapped_tls_libraries(pid: u32) -> Vec<(String, PathBuf)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if path.starts_with('/') && is_libssl(name) && !out.iter().any(|(p, _)| p == path) {
            out.push((path.to_string(), via_root(pid, path)));
        }
    }
    out
}

/// The executable of `pid` (node exports OpenSSL's symbols from its own binary).
pub fn executable(pid: u32) -> Option<(String, PathBuf)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_str()?.trim_end_matches(" (deleted)").to_string();
    let via = via_root(pid, &exe);
    Some((exe, via))
}

/// libssl files in the standard library directories under `root` ("/" or /proc/PID/root).
pub fn system_tls_libraries(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for dir in LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_libssl(name) {
                out.push((format!("/{dir}/{name}"), entry.path()));
            }
        }
    }
    out
}

/// Runtimes that carry their own OpenSSL and export its symbols (node). Attaching them at
/// start means a runtime started later is covered from its first call: attaching on exec
/// races with the runtime's first request (a ~100 MB binary takes a moment to attach).
pub fn runtime_executables() -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/bin", "/usr/local/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    let mut out = Vec::new();
    for dir in dirs {
        for name in ["node", "nodejs"] {
            let path = dir.join(name);
            if path.is_file() {
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
    fn finds_the_system_libssl_exports() {
        let libs = system_tls_libraries(Path::new("/"));
        let Some((_, via)) = libs
            .iter()
            .find(|(_, via)| !exported_tls_symbols(via).is_empty())
        else {
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
