//! What a process's cgroup path says about its container and pod.
//!
//! Path forms handled (cgroup v2 `0::` line, or the v1 line that names a container):
//! - containerd, systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`
//! - CRI-O: `…/kubepods-pod<uid>.slice/crio-<id>.scope` (`crio-conmon-<id>` is the monitor,
//!   not the container)
//! - cgroupfs driver (any runtime): `/kubepods/burstable/pod<uid>/<id>`
//! - Docker: `/system.slice/docker-<id>.scope` or `/docker/<id>`; Podman: `libpod-<id>.scope`
use serde::{Deserialize, Serialize};

/// Container and pod identity read from a cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupIdentity {
    /// The full 64-hex container id.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`, or none when the path does not say.
    pub runtime: Option<String>,
    /// The pod UID (dashes), from a `kubepods` path.
    pub pod_uid: Option<String>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` inside a path component (`pod0f…`, `kubepods-besteffort-pod0f_…`), dashes restored.
fn pod_uid(component: &str) -> Option<String> {
    let component = component.strip_suffix(".slice").unwrap_or(component);
    let at = component.rfind("pod")?;
    let uid = &component[at + 3..];
    let ok = uid.len() == 36
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| uid.replace('_', "-"))
}

/// The container a path component names, with its runtime when the form says it.
fn container(component: &str) -> Option<(String, Option<&'static str>)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(name) {
        return Some((name.to_string(), None));
    }
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = name.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id.to_string(), Some(runtime)));
        }
    }
    None
}

/// Parses one cgroup path. The innermost container component wins (a container may make
/// cgroups of its own below its scope).
pub fn parse_path(path: &str) -> CgroupIdentity {
    let mut id = CgroupIdentity::default();
    let mut in_kubepods = false;
    let mut parent: Option<&str> = None;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        // `..`: a path seen from inside a private cgroup namespace (a pod's), relative to it.
        if component.starts_with("kubepods") || component == ".." {
            in_kubepods = true;
        }
        if in_kubepods && let Some(uid) = pod_uid(component) {
            id.pod_uid = Some(uid);
        }
        if let Some((cid, runtime)) = container(component) {
            id.container_id = Some(cid);
            id.runtime = runtime
                .or(match parent {
                    Some("docker") => Some("docker"),
                    _ => None,
                })
                .map(str::to_string);
        }
        parent = Some(component);
    }
    id
}

/// The cgroup path of a `/proc/PID/cgroup` text: the first line (v2 `0::` first) whose
/// path names a container or pod, else the v2 path. On hybrid hosts containers may be
/// placed in the v1 hierarchies only, with `0::/` in the unified one.
pub fn path_of(proc_cgroup: &str) -> Option<&str> {
    let mut paths: Vec<(bool, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(|p| (l.starts_with("0::"), p)))
        .collect();
    paths.sort_by_key(|(v2, _)| !v2);
    let names_workload = |p: &str| {
        let id = parse_path(p);
        id.container_id.is_some() || id.pod_uid.is_some()
    };
    paths
        .iter()
        .find(|(_, p)| names_workload(p))
        .or_else(|| paths.iter().find(|(v2, _)| *v2))
        .map(|(_, p)| *p)
}

/// The cgroup path of process `tgid` (None when it is gone).
pub fn read(tgid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    path_of(&text).map(str::to_string)
}

/// The process's pid in its own (innermost) PID namespace, when that is not the host's.
pub fn read_ns_pid(tgid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    ns_pid(&status)
}

/// `NSpid:` of a `/proc/PID/status` text: the last value, when there is more than one.
pub fn ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() > 1).then(|| *pids.last().expect("len > 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "8f2b6e3a-1c4d-4e5f-9a0b-1c2d3e4f5a6b";

    #[test]
    fn containerd_systemd_driver() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let id = parse_path(&p);
        assert_eq!(id.container_id.as_deref(), Some(ID));
        assert_eq!(id.runtime.as_deref(), Some("containerd"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn crio_and_guaranteed_qos() {
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            UID.replace('-', "_")
        );
        let id = parse_path(&p);
        assert_eq!(id.runtime.as_deref(), Some("cri-o"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        // conmon is not the container
        let conmon = parse_path(&format!("/kubepods.slice/crio-conmon-{ID}.scope"));
        assert_eq!(conmon.container_id, None);
    }

    #[test]
    fn cgroupfs_driver_and_docker() {
        let id = parse_path(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(id.container_id.as_deref(), Some(ID));
        assert_eq!(id.runtime, None);
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        let d = parse_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(d.runtime.as_deref(), Some("docker"));
        assert_eq!(d.pod_uid, None);
        let d = parse_path(&format!("/docker/{ID}"));
        assert_eq!(d.runtime.as_deref(), Some("docker"));
        // A pod-looking name outside kubepods is not a pod.
        assert_eq!(parse_path(&format!("/user.slice/pod{UID}")).pod_uid, None);
        assert_eq!(
            parse_path("/user.slice/user-0.slice/session-1.scope"),
            CgroupIdentity::default()
        );
    }

    #[test]
    fn proc_files() {
        assert_eq!(path_of("0::/a/b\n"), Some("/a/b"));
        let v1 = format!("12:cpu:/x\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(path_of(&v1), Some(format!("/docker/{ID}").as_str()));
        assert_eq!(path_of("garbage"), None);
        // Hybrid host: the container is in the v1 hierarchies, the unified one says `/`.
        let hybrid = format!("4:memory:/kubepods/pod{UID}/{ID}\n0::/\n");
        assert_eq!(
            parse_path(path_of(&hybrid).unwrap()).pod_uid.as_deref(),
            Some(UID)
        );
        assert_eq!(path_of("1:cpu:/\n0::/user.slice\n"), Some("/user.slice"));
        // Seen from a pod's own cgroup namespace.
        let relative = parse_path(&format!("/../../pod{UID}/{ID}"));
        assert_eq!(relative.pod_uid.as_deref(), Some(UID));
        assert_eq!(ns_pid("Name:\tx\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(ns_pid("NSpid:\t4242\n"), None);
        assert_eq!(ns_pid("NSpid:\tx\n"), None);
    }
}
