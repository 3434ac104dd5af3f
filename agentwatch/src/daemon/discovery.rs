//! Finding TLS libraries to probe: in each process's maps and root, and (`scope = "all"`)
//! on a rescan of every process.
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use crate::probes::{Probes, Scope, libraries};

/// Finds and attaches TLS libraries; remembers the mount namespaces already searched.
pub(super) struct Discovery {
    pub(super) probes: Probes,
    /// Detached uprobe links not closed yet (the closer thread's backlog).
    pub(super) links_closing: Arc<std::sync::atomic::AtomicUsize>,
    roots_seen: HashSet<(u64, u64)>,
    /// (root, directory) pairs of `LD_LIBRARY_PATH` already searched.
    dirs_seen: HashSet<((u64, u64), String)>,
}

/// What a rescan saw: files mapped by live processes, and a live process per root.
#[derive(Default)]
pub(super) struct Seen {
    mapped: HashSet<(u64, u64)>,
    roots: HashMap<(u64, u64), u32>,
}

impl Discovery {
    pub(super) fn new(probes: Probes, links_closing: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        Discovery {
            probes,
            links_closing,
            roots_seen: HashSet::new(),
            dirs_seen: HashSet::new(),
        }
    }

    /// `scope = "all"`: the TLS libraries of the daemon's own root (which covers processes
    /// that load libssl after it starts), the runtimes' executables, the configured extra
    /// libraries, then every process.
    pub(super) fn attach_everywhere(&mut self, extra_libraries: &[std::path::PathBuf]) {
        // Our own root first: it covers processes that load libssl after we start.
        if let Ok(meta) = std::fs::metadata("/") {
            self.roots_seen.insert((meta.dev(), meta.ino()));
        }
        for (path, via) in libraries::system_tls_libraries(Path::new("/"))
            .into_iter()
            .chain(libraries::runtime_executables())
        {
            self.probes.attach_tls_library(&path, &via);
        }
        for extra in extra_libraries {
            self.probes
                .attach_tls_library(&extra.display().to_string(), extra);
        }
        self.rescan();
    }

    /// Libraries in the process's maps, its executable, and (for a process in another
    /// mount namespace, or with an `LD_LIBRARY_PATH`) the library directories of its root.
    pub(super) fn process(&mut self, pid: u32, seen: Option<&mut Seen>) {
        let maps = libraries::mappings(pid);
        for (path, via) in libraries::mapped_tls_libraries(pid, &maps) {
            self.probes.attach_tls_library(&path, &via);
        }
        if let Some((exe, via)) = libraries::executable(pid) {
            self.probes.attach_tls_library(&exe, &via);
        }
        let root = format!("/proc/{pid}/root");
        let Ok(meta) = std::fs::metadata(&root) else {
            return;
        };
        let root_id = (meta.dev(), meta.ino());
        if let Some(seen) = seen {
            seen.mapped.extend(maps.iter().map(|m| m.identity));
            seen.roots.entry(root_id).or_insert(pid);
        }
        if self.roots_seen.insert(root_id) {
            for (path, via) in libraries::system_tls_libraries(Path::new(&root)) {
                self.probes.attach_tls_library(&path, &via);
            }
        }
        // Once per (root, directory): a container's own OpenSSL outside the usual places.
        for dir in libraries::ld_library_path(pid) {
            if self.dirs_seen.insert((root_id, dir.clone())) {
                for (path, via) in libraries::tls_libraries_in(Path::new(&root), &dir) {
                    self.probes.attach_tls_library(&path, &via);
                }
            }
        }
    }

    pub(super) fn rescan(&mut self) {
        if self.probes.scope == Scope::Agents {
            // Probes are attached per process at first contact; nothing to look for.
            self.probes.sweep_go_args();
            return;
        }
        let mut seen = Seen::default();
        for pid in libraries::all_pids() {
            self.process(pid, Some(&mut seen));
        }
        self.detach_unreachable(&seen);
        self.probes.sweep_go_args();
    }

    /// A container's library stays attached while a live process maps it or shares its
    /// root; after that it is detached, and its root may be searched again if it returns.
    fn detach_unreachable(&mut self, seen: &Seen) {
        let mut gone = Vec::new();
        for lib in &mut self.probes.attachments.libraries {
            let Some(root) = lib.root else { continue };
            if seen.mapped.contains(&lib.identity) {
                continue;
            }
            if let Some(pid) = seen.roots.get(&root) {
                let via = libraries::via_root(*pid, &lib.path);
                if std::fs::metadata(&via).is_ok_and(|m| (m.dev(), m.ino()) == lib.identity) {
                    lib.attached_via = via.display().to_string();
                    continue;
                }
            }
            gone.push((lib.identity, root));
        }
        for (identity, root) in gone {
            self.probes.detach_library(identity);
            if !seen.roots.contains_key(&root) {
                self.roots_seen.remove(&root);
                self.dirs_seen.retain(|(r, _)| *r != root);
            }
        }
    }
}
