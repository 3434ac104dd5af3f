//! The deployment files under deploy/ against what the daemon says it needs.
//!
//! - Every kustomization renders with `kubectl kustomize`, and every rendered object validates
//!   strictly against the Kubernetes OpenAPI schemas (`kubernetes-validate`, offline).
//! - The rendered DaemonSet grants what `agentwatch check-privileges --json` lists: the host's
//!   PID namespace, each capability, and each path (mounted from the host at the same path,
//!   writable where the daemon writes). The same command is run unprivileged to show that it
//!   really checks.
//! - The systemd unit's capability bounding set and writable paths cover the same list.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{Value, json};

/// Every kustomization under deploy/kubernetes.
const KUSTOMIZATIONS: &[&str] = &["base", "overlays/observe-only", "overlays/enforcing"];
/// Kubernetes versions whose schemas `kubernetes-validate` ships and the manifests must pass:
/// the oldest with `securityContext.appArmorProfile` and the newest of the pinned release.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl kustomize` of one kustomization: the rendered multi-document YAML.
fn render(kustomization: &str) -> String {
    let dir = kubernetes_dir().join(kustomization);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is on PATH (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        show(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Rendered YAML as JSON values, through the venv's PyYAML (a dependency of kubernetes-validate).
fn documents(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test venv's python");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML to JSON failed: {}", show(&out));
    let docs: Value = serde_json::from_slice(&out.stdout).unwrap();
    docs.as_array().unwrap().clone()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn the_daemonset(docs: &[Value]) -> &Value {
    let sets = of_kind(docs, "DaemonSet");
    assert_eq!(sets.len(), 1, "exactly one DaemonSet: {sets:#?}");
    sets[0]
}

fn the_container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    containers
        .iter()
        .find(|c| c["name"] == "agentwatch")
        .expect("a container named agentwatch")
}

fn config_toml(docs: &[Value]) -> String {
    let maps = of_kind(docs, "ConfigMap");
    assert_eq!(maps.len(), 1, "exactly one ConfigMap: {maps:#?}");
    maps[0]["data"]["config.toml"]
        .as_str()
        .expect("config.toml in the ConfigMap")
        .to_string()
}

/// Runs `agentwatch check-privileges --json`, optionally through a wrapper (e.g. setpriv).
fn check_privileges(wrapper: &[&str], bin: &Path) -> (Output, Value) {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(["check-privileges", "--json"])
        .output()
        .expect("agentwatch check-privileges runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check-privileges --json printed no JSON ({e}): {}",
            show(&out)
        )
    });
    for key in ["ok", "host_pid", "capabilities", "paths"] {
        assert!(
            report.get(key).is_some(),
            "`{key}` missing from check-privileges --json: {report:#}"
        );
    }
    (out, report)
}

/// What the daemon needs, from `check-privileges --json` (run as root, where it is all present).
fn requirements() -> Value {
    let (out, report) = check_privileges(&[], &agentwatch_bin());
    assert_eq!(
        report["ok"], true,
        "check-privileges as root (the integration tests run as root) reports something \
         missing: {report:#}"
    );
    assert_eq!(out.status.code(), Some(0), "exit status: {}", show(&out));
    let caps = report["capabilities"].as_array().unwrap();
    assert!(!caps.is_empty(), "no capability listed: {report:#}");
    assert!(
        caps.iter().any(|c| c["name"] == "CAP_BPF"),
        "CAP_BPF is listed: {report:#}"
    );
    assert!(
        !report["paths"].as_array().unwrap().is_empty(),
        "no path listed: {report:#}"
    );
    report
}

fn required_capabilities(report: &Value) -> Vec<String> {
    report["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().expect("capability name").to_string())
        .collect()
}

/// The capability names a container's securityContext adds, without the `CAP_` prefix.
fn added_capabilities(container: &Value) -> Vec<String> {
    container["securityContext"]["capabilities"]["add"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str())
                .map(|c| c.trim_start_matches("CAP_").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything the DaemonSet does not grant of what `report` lists (empty: it grants it all).
fn manifest_gaps(ds: &Value, report: &Value) -> Vec<String> {
    let mut gaps = Vec::new();
    let pod = &ds["spec"]["template"]["spec"];
    let container = the_container(ds);

    if report["host_pid"]["needed"] == true && pod["hostPID"] != true {
        gaps.push("hostPID is not true".to_string());
    }

    let privileged = container["securityContext"]["privileged"] == true;
    let added = added_capabilities(container);
    for cap in required_capabilities(report) {
        let bare = cap.trim_start_matches("CAP_");
        if !privileged && !added.iter().any(|a| a == bare) {
            gaps.push(format!(
                "{cap} is not in securityContext.capabilities.add {added:?}"
            ));
        }
    }

    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for entry in report["paths"].as_array().unwrap() {
        let path = Path::new(entry["path"].as_str().expect("path"));
        let writable = entry["writable"] == true;
        // With hostPID the container's own /proc is the host's.
        if path.starts_with("/proc") {
            if pod["hostPID"] != true {
                gaps.push(format!("{} needs hostPID", path.display()));
            }
            continue;
        }
        // The deepest mount at or above the path is what the container sees there.
        let Some(mount) = mounts
            .iter()
            .filter(|m| {
                m["mountPath"]
                    .as_str()
                    .is_some_and(|mp| path.starts_with(mp))
            })
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        else {
            gaps.push(format!(
                "{} is not covered by any volumeMount",
                path.display()
            ));
            continue;
        };
        let mount_path = mount["mountPath"].as_str().unwrap();
        if writable && mount["readOnly"] == true {
            gaps.push(format!(
                "{} must be writable but its mount {mount_path} is readOnly",
                path.display()
            ));
        }
        let Some(volume) = volumes.iter().find(|v| v["name"] == mount["name"]) else {
            gaps.push(format!(
                "volumeMount {mount_path} names no volume ({})",
                mount["name"]
            ));
            continue;
        };
        // Daemon-owned directories (control socket, state) may be any volume; everything
        // else is the host's own file system, mounted at the same path.
        let own = path.starts_with("/run") || path.starts_with("/var/lib/agentwatch");
        if own {
            continue;
        }
        match volume["hostPath"]["path"].as_str() {
            Some(host) if Path::new(host) == Path::new(mount_path) => {}
            Some(host) => gaps.push(format!(
                "{} is mounted at {mount_path} from the host's {host}, not the same path",
                path.display()
            )),
            None => gaps.push(format!(
                "{} is mounted at {mount_path} from volume {} which is not a hostPath",
                path.display(),
                volume["name"]
            )),
        }
    }
    gaps
}

/// `file` (rendered from kustomization `name`) validates strictly against every Kubernetes
/// version's OpenAPI schemas (`kubernetes-validate`, offline).
fn validate_builtin(name: &str, file: &Path, yaml: &str) {
    let validate = python().parent().unwrap().join("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", version])
            .arg(file)
            .output()
            .expect("kubernetes-validate from the test venv");
        assert!(
            out.status.success(),
            "{name} does not validate against Kubernetes {version}: {}\nrendered:\n{yaml}",
            show(&out)
        );
    }
}

#[test]
fn kustomizations_render_and_validate() {
    let scratch = Scratch::new("deploy-render");
    for name in KUSTOMIZATIONS {
        let yaml = render(name);
        let file = scratch.0.join(format!("{}.yaml", name.replace('/', "-")));
        std::fs::write(&file, &yaml).unwrap();
        validate_builtin(name, &file, &yaml);

        let docs = documents(&yaml);
        let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "Namespace",
                "ServiceAccount"
            ],
            "{name}"
        );
        // Namespaced objects land in the agentwatch namespace (kustomize v2 drops the
        // namespace of a replaced ConfigMap unless the overlay sets it again).
        for d in &docs {
            if !["Namespace", "ClusterRole", "ClusterRoleBinding"]
                .contains(&d["kind"].as_str().unwrap())
            {
                assert_eq!(d["metadata"]["namespace"], "agentwatch", "{name}: {d:#}");
            }
        }
        let ds = the_daemonset(&docs);
        let pod = &ds["spec"]["template"]["spec"];
        let container = the_container(ds);

        // The DaemonSet mounts the generated ConfigMap (its hashed name) at /etc/agentwatch
        // and runs the daemon on the config.toml in it.
        let map_name = of_kind(&docs, "ConfigMap")[0]["metadata"]["name"].clone();
        let config_volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"] == map_name)
            .unwrap_or_else(|| panic!("{name}: no volume mounts ConfigMap {map_name}"));
        assert!(
            container["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == config_volume["name"] && m["mountPath"] == "/etc/agentwatch"),
            "{name}: the ConfigMap is mounted at /etc/agentwatch"
        );
        assert_eq!(
            container["args"],
            json!(["run", "--config", "/etc/agentwatch/config.toml"]),
            "{name}"
        );

        // State survives pod restarts: a hostPath on the node, at the config's data_dir.
        let config = config_toml(&docs);
        assert!(
            config.contains(r#"data_dir = "/var/lib/agentwatch""#),
            "{name}: {config}"
        );
        assert!(
            config.contains(r#"socket = "/run/agentwatch/agentwatch.sock""#),
            "{name}: {config}"
        );
        assert!(config.contains("${NODE_NAME}"), "{name}: {config}");
        let state = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "state")
            .expect("a state volume");
        assert_eq!(state["hostPath"]["path"], "/var/lib/agentwatch", "{name}");

        // The service account can list pods, which the [kubernetes] table's URL reads.
        assert_eq!(pod["serviceAccountName"], "agentwatch", "{name}");
        let role = of_kind(&docs, "ClusterRole")[0];
        assert!(
            role["rules"].as_array().unwrap().iter().any(|r| {
                r["resources"].as_array().unwrap().contains(&json!("pods"))
                    && r["verbs"].as_array().unwrap().contains(&json!("list"))
            }),
            "{name}: {role:#}"
        );
        let env: Vec<&Value> = container["env"].as_array().unwrap().iter().collect();
        for var in ["NODE_NAME", "AGENTWATCH_HOST_NAME"] {
            assert!(
                env.iter().any(|e| e["name"] == var
                    && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
                "{name}: {var} from spec.nodeName"
            );
        }

        let enforcing = *name == "overlays/enforcing";
        assert_eq!(
            pod["priorityClassName"] == "system-node-critical",
            enforcing,
            "{name}: priorityClassName {}",
            pod["priorityClassName"]
        );
        assert_eq!(config.contains("[ceilings]"), enforcing, "{name}: {config}");
    }
}

/// The agentwatch binary copied where any user can run it (the repository may be private to root).
fn world_executable_copy(scratch: &Scratch) -> PathBuf {
    let bin = scratch.0.join("agentwatch");
    std::fs::copy(agentwatch_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn check_privileges_reports_missing_privileges() {
    let scratch = Scratch::new("deploy-unprivileged");
    let bin = world_executable_copy(&scratch);
    let (out, report) = check_privileges(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ],
        &bin,
    );
    assert_eq!(report["ok"], false, "as nobody: {report:#}");
    assert_eq!(out.status.code(), Some(1), "as nobody: {}", show(&out));
    let bpf = report["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "CAP_BPF")
        .unwrap_or_else(|| panic!("CAP_BPF listed: {report:#}"));
    assert_eq!(bpf["present"], false, "as nobody: {report:#}");
}

#[test]
fn daemonset_grants_what_the_daemon_needs() {
    let report = requirements();
    for name in KUSTOMIZATIONS {
        let docs = documents(&render(name));
        let gaps = manifest_gaps(the_daemonset(&docs), &report);
        assert!(
            gaps.is_empty(),
            "{name}: the DaemonSet lacks what `agentwatch check-privileges` lists:\n  {}\nrequirements: {report:#}",
            gaps.join("\n  ")
        );
        let container = the_container(the_daemonset(&docs));
        assert_eq!(
            container["securityContext"]["privileged"], false,
            "{name}: capabilities, not privileged"
        );
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            json!(["ALL"]),
            "{name}"
        );
    }
}

/// The manifest check finds each kind of gap: without this, a check that accepts everything
/// would pass the test above.
#[test]
fn manifest_check_finds_gaps() {
    let report = requirements();
    let docs = documents(&render("base"));
    let good = the_daemonset(&docs).clone();
    assert!(manifest_gaps(&good, &report).is_empty());

    let container_index = good["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["name"] == "agentwatch")
        .unwrap();
    let container = format!("/spec/template/spec/containers/{container_index}");
    let mutate = |pointer: &str, f: &dyn Fn(&mut Value)| {
        let mut ds = good.clone();
        f(ds.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("{pointer} in the DaemonSet")));
        manifest_gaps(&ds, &report)
    };
    let expect_gap = |what: &str, gaps: Vec<String>, needle: &str| {
        assert!(
            gaps.iter().any(|g| g.contains(needle)),
            "{what}: expected a gap mentioning {needle:?}, got {gaps:?}"
        );
    };

    expect_gap(
        "hostPID false",
        mutate("/spec/template/spec/hostPID", &|v| *v = json!(false)),
        "hostPID",
    );
    for cap in required_capabilities(&report) {
        let bare = cap.trim_start_matches("CAP_").to_string();
        expect_gap(
            &format!("without {cap}"),
            mutate(
                &format!("{container}/securityContext/capabilities/add"),
                &|v| {
                    v.as_array_mut()
                        .unwrap()
                        .retain(|c| c.as_str().unwrap().trim_start_matches("CAP_") != bare)
                },
            ),
            &cap,
        );
    }
    // privileged: true grants every capability.
    let privileged = {
        let mut ds = good.clone();
        let sc = ds
            .pointer_mut(&format!("{container}/securityContext"))
            .unwrap();
        sc["privileged"] = json!(true);
        sc["capabilities"]["add"] = json!([]);
        manifest_gaps(&ds, &report)
    };
    assert!(privileged.is_empty(), "privileged: {privileged:?}");

    for entry in report["paths"].as_array().unwrap() {
        let path = entry["path"].as_str().unwrap();
        if path.starts_with("/proc") {
            continue;
        }
        let covering = |m: &Value| Path::new(path).starts_with(m["mountPath"].as_str().unwrap());
        // No mount at all.
        expect_gap(
            &format!("{path} unmounted"),
            mutate(&format!("{container}/volumeMounts"), &|v| {
                v.as_array_mut().unwrap().retain(|m| !covering(m))
            }),
            path,
        );
        if entry["writable"] == true {
            expect_gap(
                &format!("{path} read-only"),
                mutate(&format!("{container}/volumeMounts"), &|v| {
                    for m in v.as_array_mut().unwrap() {
                        if covering(m) {
                            m["readOnly"] = json!(true);
                        }
                    }
                }),
                "readOnly",
            );
        }
        if !(path.starts_with("/run") || path.starts_with("/var/lib/agentwatch")) {
            // From another host path, or not from the host.
            let mounts = good
                .pointer(&format!("{container}/volumeMounts"))
                .unwrap()
                .as_array()
                .unwrap();
            let volume_names: Vec<Value> = mounts
                .iter()
                .filter(|m| covering(m))
                .map(|m| m["name"].clone())
                .collect();
            expect_gap(
                &format!("{path} from elsewhere"),
                mutate("/spec/template/spec/volumes", &|v| {
                    for vol in v.as_array_mut().unwrap() {
                        if volume_names.contains(&vol["name"]) {
                            vol["hostPath"]["path"] = json!("/elsewhere");
                        }
                    }
                }),
                "not the same path",
            );
            expect_gap(
                &format!("{path} from an emptyDir"),
                mutate("/spec/template/spec/volumes", &|v| {
                    for vol in v.as_array_mut().unwrap() {
                        if volume_names.contains(&vol["name"]) {
                            *vol = json!({"name": vol["name"], "emptyDir": {}});
                        }
                    }
                }),
                "not a hostPath",
            );
        }
    }
}

/// `Key=value` lines of a systemd unit (comments and sections dropped; no line continuations).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_grants_what_the_daemon_needs() {
    let report = requirements();
    let path = repo().join("deploy/systemd/agentwatch.service");
    let settings = unit_settings(&std::fs::read_to_string(&path).unwrap());
    let values = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };

    // CapabilityBoundingSet= lines add up; an empty one resets; `~` would invert the list.
    let mut bounding: Vec<String> = Vec::new();
    for v in values("CapabilityBoundingSet") {
        assert!(!v.starts_with('~'), "a positive CapabilityBoundingSet: {v}");
        if v.is_empty() {
            bounding.clear();
        }
        bounding.extend(v.split_whitespace().map(str::to_uppercase));
    }
    assert!(
        !bounding.is_empty(),
        "{} sets CapabilityBoundingSet",
        path.display()
    );
    for cap in required_capabilities(&report) {
        assert!(
            bounding.contains(&cap),
            "{cap} is not in CapabilityBoundingSet {bounding:?}"
        );
    }

    // With ProtectSystem=strict only the API file systems and the unit's own directories
    // stay writable.
    assert_eq!(values("ProtectSystem"), ["strict"]);
    assert_eq!(values("StateDirectory"), ["agentwatch"]);
    assert_eq!(values("RuntimeDirectory"), ["agentwatch"]);
    let mut writable: Vec<PathBuf> = [
        "/sys",
        "/proc",
        "/dev",
        "/var/lib/agentwatch",
        "/run/agentwatch",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for v in values("ReadWritePaths") {
        writable.extend(v.split_whitespace().map(PathBuf::from));
    }
    for entry in report["paths"].as_array().unwrap() {
        let p = Path::new(entry["path"].as_str().unwrap());
        if entry["writable"] == true {
            assert!(
                writable.iter().any(|w| p.starts_with(w)),
                "{} must be writable under ProtectSystem=strict (add ReadWritePaths=)",
                p.display()
            );
        }
    }
    if report["host_pid"]["needed"] == true {
        for isolating in ["PrivatePIDs", "ProtectProc", "PrivateUsers"] {
            assert!(
                values(isolating).is_empty(),
                "{isolating}= would hide the host's processes"
            );
        }
    }

    assert_eq!(
        values("ExecStart"),
        ["/usr/local/bin/agentwatch run --config /etc/agentwatch/config.toml"]
    );
    assert_eq!(values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(values("LimitMEMLOCK"), ["infinity"]);
}

/// The metrics overlay: the built-in kinds validate against the Kubernetes schemas, the
/// ServiceMonitor against its CRD's schema (`@kubernetes-models/prometheus-operator`, the
/// operator's CRDs as a validator); the Service selects the DaemonSet's pods and names the
/// container's port, the ServiceMonitor selects the Service, and the config it ships serves
/// /metrics on the pod's address and passes `agentwatch validate`.
#[test]
fn metrics_overlay_renders_and_validates() {
    let name = "overlays/metrics";
    let yaml = render(name);
    let docs = documents(&yaml);
    let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    let scratch = Scratch::new("deploy-metrics");
    let builtin: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] != "ServiceMonitor")
        .collect();
    let file = scratch.0.join("builtin.json");
    // (A JSON list of objects is YAML, one document per object.)
    let text: Vec<String> = builtin
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    let text = text.join("\n---\n");
    std::fs::write(&file, &text).unwrap();
    validate_builtin(name, &file, &text);
    let monitor = of_kind(&docs, "ServiceMonitor")[0];
    assert_eq!(monitor["metadata"]["namespace"], "agentwatch");
    let check = |obj: &Value| -> Output {
        let script = "import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';\n\
                      const obj = JSON.parse(process.argv[1]);\n\
                      try { new ServiceMonitor(obj).validate(); console.log('valid'); }\n\
                      catch (e) { console.error(String(e && e.message || e)); process.exit(1); }";
        Command::new("node")
            .args(["--input-type=module", "-e", script])
            .arg(serde_json::to_string(obj).unwrap())
            .current_dir(clients())
            .output()
            .expect("node")
    };
    let out = check(monitor);
    assert!(out.status.success(), "ServiceMonitor: {}", show(&out));
    // The validator refuses what the CRD does not allow (it is not a no-op).
    let mut broken = monitor.clone();
    broken["spec"]["endpoints"][0]["interval"] = json!(30);
    assert!(!check(&broken).status.success(), "a number as interval");

    let ds = the_daemonset(&docs);
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let service = of_kind(&docs, "Service")[0];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "the Service selects the DaemonSet's pods"
        );
    }
    let ports = the_container(ds)["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 9464),
        "{ports:?}"
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let config = config_toml(&docs);
    assert!(
        config.contains("prometheus = true") && config.contains("listen = \"0.0.0.0:9464\""),
        "{config}"
    );
    let toml = scratch.0.join("config.toml");
    std::fs::write(&toml, &config).unwrap();
    let out = Command::new(agentwatch_bin())
        .args(["validate", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

/// `cargo xtask install --destdir`: the binary on the prefix's PATH, the unit running it, a
/// default config that `validate` accepts and that a second install keeps, the README.
#[test]
fn xtask_install_stages_binary_unit_config_and_docs() {
    let scratch = Scratch::new("install");
    let dest = scratch.0.join("root");
    let install = || {
        let out = Command::new(xtask_bin())
            .args(["install", "--no-build", "--prefix", "/opt/aw", "--destdir"])
            .arg(&dest)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", xtask_bin().display()));
        assert!(out.status.success(), "{}", show(&out));
        out
    };
    let out = install();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("installed "),
        "{}",
        show(&out)
    );
    let bin = dest.join("opt/aw/bin/agentwatch");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(agentwatch_bin()).unwrap(),
        "the built binary"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&bin), 0o755);
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success(), "{}", show(&version));
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/agentwatch.service")).unwrap();
    let exec: Vec<String> = unit_settings(&unit)
        .into_iter()
        .filter(|(k, _)| k == "ExecStart")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(exec.len(), 1, "{unit}");
    assert!(
        exec[0].starts_with("/opt/aw/bin/agentwatch run"),
        "{exec:?}"
    );
    let config = dest.join("etc/agentwatch/config.toml");
    assert_eq!(mode(&config), 0o600, "the config may hold sink credentials");
    let valid = Command::new(&bin)
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(valid.status.success(), "{}", show(&valid));
    assert!(dest.join("opt/aw/share/doc/agentwatch/README.md").is_file());
    // A second install keeps the operator's config.
    std::fs::write(&config, "# edited\n").unwrap();
    let out = install();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kept the existing"),
        "{}",
        show(&out)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
}
