//! Which container and pod a process runs in: its cgroup path (container id, runtime, pod
//! UID) and, when `[kubernetes]` is configured, the pod's name, namespace and labels.
pub mod cgroup;
pub mod pods;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use cgroup::CgroupIdentity;
pub use pods::{KubernetesConfig, PodIndex, PodMeta};

/// The labels a call or ledger row carries (absent fields are not written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
}

impl Workload {
    /// Labels for a process in cgroup `path`, named from the pod index when it knows the pod.
    pub fn resolve(path: Option<&str>, pods: &PodIndex) -> Workload {
        let Some(path) = path else {
            return Workload::default();
        };
        let id = cgroup::parse_path(path);
        let meta = id.pod_uid.as_deref().and_then(|uid| pods.get(uid));
        Workload {
            container_id: id.container_id,
            container_runtime: id.runtime,
            pod_uid: id.pod_uid,
            pod_name: meta.as_ref().map(|m| m.name.clone()),
            pod_namespace: meta.map(|m| m.namespace),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Workload::default()
    }
}

/// The labels of the pod that cgroup `path` belongs to (for `match_pod_label`).
/// The pod (name, namespace, labels) of the process in cgroup `path`, when known.
pub fn pod_meta(path: &str, pods: &PodIndex) -> Option<pods::PodMeta> {
    let uid = cgroup::parse_path(path).pod_uid?;
    pods.get(&uid)
}

pub fn pod_labels(path: &str, pods: &PodIndex) -> Option<BTreeMap<String, String>> {
    let uid = cgroup::parse_path(path).pod_uid?;
    pods.get(&uid).map(|m| m.labels)
}
