//! Test helpers shared by procs, sessions and sinks tests: temporary directories and a fake
//! `/proc` tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("agentwatch-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake `/proc`: processes are directories with `stat`, `cmdline` and an `exe` symlink.
pub(crate) struct FakeProc {
    dir: TempDir,
}

impl FakeProc {
    pub(crate) fn new() -> Self {
        Self {
            dir: TempDir::new("proc"),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn add(&self, pid: u32, ppid: u32, comm: &str, start_ticks: u64, cmdline: &[&str]) {
        let d = self.dir.path().join(pid.to_string());
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let stat = format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 10 0 0 0 1 1 0 0 20 0 1 0 {start_ticks} 1000 10 18446744073709551615\n"
        );
        std::fs::write(d.join("stat"), stat).unwrap();
        let mut cl = Vec::new();
        for a in cmdline {
            cl.extend_from_slice(a.as_bytes());
            cl.push(0);
        }
        std::fs::write(d.join("cmdline"), cl).unwrap();
        let exe = format!("/usr/bin/{comm}");
        std::os::unix::fs::symlink(exe, d.join("exe")).unwrap();
    }

    pub(crate) fn remove(&self, pid: u32) {
        let _ = std::fs::remove_dir_all(self.dir.path().join(pid.to_string()));
    }
}
