//! `agentwatch check-privileges`: what the daemon needs from its host (capabilities, host
//! paths, the host PID namespace), and whether this process has it. The deploy manifests
//! are tested against this list.
use std::path::Path;

use serde::Serialize;

use crate::config::Config;

/// (capability, bit, why).
const CAPABILITIES: [(&str, u32, &str); 7] = [
    (
        "CAP_BPF",
        39,
        "load the eBPF programs and create their maps",
    ),
    (
        "CAP_PERFMON",
        38,
        "attach tracepoints and uprobes, and read process memory from eBPF",
    ),
    (
        "CAP_SYS_ADMIN",
        21,
        "read /proc/PID/map_files and mount tracefs when it is missing",
    ),
    (
        "CAP_SYS_PTRACE",
        19,
        "read other processes' /proc/PID/maps, root and environ to find their TLS libraries",
    ),
    (
        "CAP_NET_ADMIN",
        12,
        "attach the cgroup connect programs of the `block` ceiling action",
    ),
    (
        "CAP_KILL",
        5,
        "pause (SIGSTOP/SIGCONT) and kill agents of any user when a ceiling is reached",
    ),
    (
        "CAP_SYS_RESOURCE",
        24,
        "raise RLIMIT_MEMLOCK for eBPF maps on kernels that charge it",
    ),
];

/// The initial PID namespace's inode (PROC_PID_INIT_INO).
const INIT_PID_NS: &str = "pid:[4026531836]";

#[derive(Debug, Serialize)]
pub struct CapabilityCheck {
    pub name: &'static str,
    pub why: &'static str,
    /// Needed on this kernel (CAP_SYS_RESOURCE only before 5.11, when eBPF memory was
    /// charged to RLIMIT_MEMLOCK instead of the memory cgroup).
    pub required: bool,
    pub present: bool,
}

#[derive(Debug, Serialize)]
pub struct PathCheck {
    pub path: String,
    pub why: &'static str,
    pub writable: bool,
    pub present: bool,
}

#[derive(Debug, Serialize)]
pub struct HostPid {
    pub needed: bool,
    pub present: bool,
}

#[derive(Debug, Serialize)]
pub struct PrivilegeReport {
    pub ok: bool,
    pub host_pid: HostPid,
    pub capabilities: Vec<CapabilityCheck>,
    pub paths: Vec<PathCheck>,
}

/// The effective capability set of this process (CapEff of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Whether the running kernel is older than `major.minor`.
fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version < (major, minor)
}

fn accessible(path: &Path, writable: bool) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mode = if writable {
        libc::R_OK | libc::W_OK
    } else {
        libc::R_OK
    };
    // SAFETY: c is a valid NUL-terminated string.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// The nearest existing ancestor of `path` (a directory the daemon will create is fine
/// when its parent is writable).
fn nearest_existing(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

pub fn check(config: &Config) -> PrivilegeReport {
    let caps = effective_caps();
    let capabilities: Vec<CapabilityCheck> = CAPABILITIES
        .iter()
        .map(|&(name, bit, why)| CapabilityCheck {
            name,
            why,
            required: name != "CAP_SYS_RESOURCE" || kernel_before(5, 11),
            present: caps & (1 << bit) != 0,
        })
        .collect();
    let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|p| Path::new(p).join("events").is_dir())
        .unwrap_or("/sys/kernel/tracing");
    let socket_dir = config
        .socket
        .parent()
        .unwrap_or(Path::new("/run"))
        .to_path_buf();
    let wanted: Vec<(String, &'static str, bool)> = vec![
        (
            "/proc".into(),
            "the host's processes: tree seeding, maps, cgroups (with the host PID namespace)",
            false,
        ),
        (
            "/sys/kernel/btf".into(),
            "kernel BTF, read by the eBPF loader",
            false,
        ),
        (
            tracefs.into(),
            "tracepoint ids and event formats (tracefs)",
            false,
        ),
        (
            "/sys/fs/cgroup".into(),
            "the cgroup v2 root the connect programs attach to",
            true,
        ),
        (
            config.data_dir.display().to_string(),
            "calls.jsonl, ledger.jsonl, spool and policy state (must survive restarts)",
            true,
        ),
        (socket_dir.display().to_string(), "the control socket", true),
    ];
    let paths: Vec<PathCheck> = wanted
        .into_iter()
        .map(|(path, why, writable)| {
            let p = Path::new(&path);
            let present = if writable {
                accessible(nearest_existing(p), true)
            } else {
                p.exists() && accessible(p, false)
            };
            PathCheck {
                path,
                why,
                writable,
                present,
            }
        })
        .collect();
    let host_pid = HostPid {
        needed: true,
        present: std::fs::read_link("/proc/self/ns/pid")
            .map(|l| l.to_string_lossy() == INIT_PID_NS)
            .unwrap_or(false),
    };
    let ok = host_pid.present
        && capabilities.iter().all(|c| c.present || !c.required)
        && paths.iter().all(|p| p.present);
    PrivilegeReport {
        ok,
        host_pid,
        capabilities,
        paths,
    }
}

impl PrivilegeReport {
    pub fn render(&self) -> String {
        let mark = |ok: bool| if ok { "ok     " } else { "MISSING" };
        let mut out = String::new();
        out.push_str(&format!(
            "{} host PID namespace (hostPID: true): see every process on the host\n",
            mark(self.host_pid.present)
        ));
        for c in &self.capabilities {
            let mark = if !c.present && !c.required {
                "absent "
            } else {
                mark(c.present)
            };
            let optional = if c.required {
                ""
            } else {
                " (not needed on this kernel)"
            };
            out.push_str(&format!("{mark} {:<17} {}{optional}\n", c.name, c.why));
        }
        for p in &self.paths {
            let rw = if p.writable { "rw" } else { "ro" };
            out.push_str(&format!(
                "{} {} ({rw}): {}\n",
                mark(p.present),
                p.path,
                p.why
            ));
        }
        out.push_str(if self.ok {
            "everything agentwatch needs is present\n"
        } else {
            "some privileges are missing: run as root on the host, or see deploy/README.md\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_capability_once_with_a_reason() {
        let r = check(&Config::default());
        let mut names: Vec<_> = r.capabilities.iter().map(|c| c.name).collect();
        names.dedup();
        assert_eq!(names.len(), CAPABILITIES.len());
        assert!(r.capabilities.iter().all(|c| !c.why.is_empty()));
        assert!(
            r.paths
                .iter()
                .any(|p| p.path == "/sys/fs/cgroup" && p.writable)
        );
        assert!(r.render().contains("CAP_BPF"));
    }
}
