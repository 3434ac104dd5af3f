//! Containers without Kubernetes: clients run in new mount and PID namespaces over a root
//! filesystem made by the test (its own copy of libssl, at a path no host process uses), in
//! a cgroup laid out as a kubelet with containerd's systemd driver would lay it out. Pod
//! names come from a PodList served over HTTP, as kubelet's read-only `/pods` serves it.
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

/// A root filesystem with curl, sh and sleep and their libraries; libssl and libcrypto go to
/// /opt/tls/lib (found through the container's LD_LIBRARY_PATH), not the standard dirs.
fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    for bin in ["/usr/bin/curl", "/bin/sh", "/usr/bin/sleep"] {
        files.push((bin.into(), bin.into()));
        let ldd = Command::new("ldd").arg(bin).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)" or "/lib64/ld-linux… (0x…)"
            let Some(path) = line
                .split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
            else {
                continue;
            };
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let inside = if name.starts_with("libssl.so") || name.starts_with("libcrypto.so") {
                PathBuf::from("/opt/tls/lib").join(&name)
            } else {
                path.clone()
            };
            files.push((path, inside));
        }
    }
    for (from, inside) in files {
        let to = root.join(inside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // A copy, not a link: the container's libssl is a different file from the host's.
        std::fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    }
    std::fs::write(
        root.join("run.sh"),
        "#!/bin/sh\n# give the daemon a moment to attach the container's libssl\nsleep 1\nexec /usr/bin/curl \"$@\"\n",
    )
    .unwrap();
    root
}

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(cols[1]))
        })
        .expect("a cgroup2 mount")
}

/// A kubepods cgroup (systemd driver, containerd) for one container of one pod; removed on drop.
struct PodCgroup {
    dirs: Vec<PathBuf>,
    pod_uid: String,
    container_id: String,
}

impl PodCgroup {
    fn new() -> PodCgroup {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let pid = std::process::id();
        let pod_uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            pid,
            (nanos >> 16) & 0xffff,
            nanos & 0xfff,
            (nanos >> 12) & 0xfff,
            nanos & 0xffff_ffff_ffff
        );
        let container_id = format!("{:032x}{:032x}", nanos, u128::from(pid) << 64 | 0xc0ffee);
        let base = cgroup2_root();
        let slice = base.join("kubepods.slice");
        let qos = slice.join("kubepods-besteffort.slice");
        let pod = qos.join(format!(
            "kubepods-besteffort-pod{}.slice",
            pod_uid.replace('-', "_")
        ));
        let scope = pod.join(format!("cri-containerd-{container_id}.scope"));
        std::fs::create_dir_all(&scope)
            .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", scope.display()));
        PodCgroup {
            dirs: vec![scope, pod, qos, slice],
            pod_uid,
            container_id,
        }
    }

    fn scope(&self) -> &Path {
        &self.dirs[0]
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Innermost first; a dir still used by another test's pod stays (rmdir fails).
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `python -m http.server` serving a PodList at `/pods`.
struct PodListServer {
    child: Child,
    port: u16,
}

impl PodListServer {
    fn start(dir: &Path, pods: &Value) -> PodListServer {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(www.join("pods"), serde_json::to_vec(pods).unwrap()).unwrap();
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&www)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server printed {line:?}"));
        PodListServer { child, port }
    }
}

impl Drop for PodListServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod_list(cg: &PodCgroup, name: &str, namespace: &str) -> Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [
            {"metadata": {"name": "unrelated", "namespace": "kube-system",
                          "uid": "00000000-0000-4000-8000-000000000000"}},
            {"metadata": {"name": name, "namespace": namespace, "uid": cg.pod_uid,
                          "labels": {"app": "summarizer", "team": "a"}},
             "spec": {"nodeName": "node-1"}}
        ]
    })
}

/// Runs curl in the "container": enters the pod cgroup, then new mount + PID namespaces
/// chrooted to `rootfs`, with the container's LD_LIBRARY_PATH. Returns the exit status.
fn run_in_container(
    rootfs: &Path,
    cg: &PodCgroup,
    mock: &Mock,
    tag: &str,
    calls: usize,
) -> std::process::ExitStatus {
    run_in_container_with(rootfs, cg, mock, tag, calls, None)
}

/// [`run_in_container`] with the mock's `x-mock-usage` header (each call's usage).
fn run_in_container_with(
    rootfs: &Path,
    cg: &PodCgroup,
    mock: &Mock,
    tag: &str,
    calls: usize,
    usage: Option<&str>,
) -> std::process::ExitStatus {
    std::fs::copy(&mock.ca, rootfs.join("ca.pem")).unwrap();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut curl_args: Vec<String> = [
        "-sS",
        "--fail",
        "--http1.1",
        "--cacert",
        "/ca.pem",
        "-H",
        "content-type: application/json",
        "-H",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    curl_args.push(format!("x-test-tag: {tag}"));
    if let Some(u) = usage {
        curl_args.push("-H".into());
        curl_args.push(format!("x-mock-usage: {u}"));
    }
    curl_args.push("-d".into());
    curl_args.push(body.into());
    for _ in 0..calls {
        curl_args.push(format!("{}/v1/chat/completions", mock.base_url()));
    }
    let enter = r#"echo $$ > "$1/cgroup.procs" || exit 97; shift; exec unshare --mount --pid --fork --root="$ROOTFS" "$@""#;
    let mut child = Command::new("sh")
        .args(["-c", enter, "enter"])
        .arg(cg.scope())
        .args(["/bin/sh", "/run.sh"])
        .args(&curl_args)
        .env("ROOTFS", rootfs)
        .env("LD_LIBRARY_PATH", "/opt/tls/lib")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the container did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn container_tls_library(status: &Value) -> Option<Value> {
    status["tls_libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"].as_str() == Some("/opt/tls/lib/libssl.so.3"))
        .cloned()
}

#[test]
fn container_calls_carry_container_pod_and_namespace_pid() {
    let dir = Scratch::new("containers");
    let rootfs = build_rootfs(&dir.0);
    let cg = PodCgroup::new();
    let pods = PodListServer::start(&dir.0, &pod_list(&cg, "summarizer-7f9c", "team-a"));
    let config = format!(
        "[kubernetes]\npod_list_url = \"http://127.0.0.1:{}/pods\"\n",
        pods.port
    );
    let daemon = Daemon::with_config_in(dir, &config);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        status["kubernetes"]["state"], "ok",
        "{}",
        status["kubernetes"]
    );
    assert_eq!(status["kubernetes"]["pods"], 2);
    assert!(
        container_tls_library(&status).is_none(),
        "not attached before the container"
    );

    let mock = Mock::start(&[]);
    let tag = "container-labels";
    let exit = run_in_container(&rootfs, &cg, &mock, tag, 2);
    assert!(exit.success(), "curl in the container: {exit:?}");
    assert_eq!(mock.served_with_tag(tag).len(), 2);

    let of_pod = |calls: &[Value]| -> Vec<Value> {
        calls
            .iter()
            .filter(|c| c["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
            .cloned()
            .collect()
    };
    daemon.wait_for("the container's session row", |calls, ledger| {
        of_pod(calls).len() == 2
            && ledger
                .iter()
                .any(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
    });
    let calls = of_pod(&daemon.calls());
    for (call, served) in calls.iter().zip(mock.served_with_tag(tag)) {
        assert_eq!(call["container_id"], cg.container_id.as_str(), "{call}");
        assert_eq!(call["container_runtime"], "containerd", "{call}");
        assert_eq!(call["pod_name"], "summarizer-7f9c", "{call}");
        assert_eq!(call["pod_namespace"], "team-a", "{call}");
        assert_eq!(call["comm"], "curl", "{call}");
        // curl replaced the container's first process: pid 1 inside, a host pid outside.
        assert_eq!(call["ns_pid"], 1, "{call}");
        assert_ne!(call["pid"], 1, "{call}");
        assert_usage_matches(call, &served);
    }
    let ledger = daemon.ledger();
    let row = ledger
        .iter()
        .find(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
        .unwrap();
    assert_eq!(row["pod_name"], "summarizer-7f9c", "{row}");
    assert_eq!(row["pod_namespace"], "team-a", "{row}");
    assert_eq!(row["container_id"], cg.container_id.as_str(), "{row}");
    assert_eq!(row["call_count"], 2, "{row}");

    // Once the container is gone, no process is probed through its libssl any more.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = daemon.cli_json(&["status"]);
        let entry = container_tls_library(&status).unwrap_or_else(|| panic!("{status:#}"));
        if entry["processes"] == 0 && status["probed_processes"]["now"] == 0 {
            assert!(
                status["probed_processes"]["detached_total"]
                    .as_u64()
                    .unwrap()
                    >= 1,
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container's process is still probed: {}",
            status["tls_libraries"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.stop();
    assert!(
        log.contains("/proc/") && log.contains("opt/tls/lib/libssl.so.3"),
        "attached through the container's root: {log}"
    );
}

#[test]
fn pod_label_rule_gives_a_pods_sessions_their_own_ceiling() {
    let dir = Scratch::new("containers-rule");
    let rootfs = build_rootfs(&dir.0);
    let cg = PodCgroup::new();
    let pods = PodListServer::start(&dir.0, &pod_list(&cg, "summarizer-0", "team-a"));
    let config = format!(
        "[kubernetes]\npod_list_url = \"http://127.0.0.1:{}/pods\"\n\n\
         [[session_roots]]\nmatch_pod_label = \"app=summarizer\"\nsession_calls = 1\naction = \"kill\"\n",
        pods.port
    );
    let daemon = Daemon::with_config_in(dir, &config);
    let mock = Mock::start(&[]);

    // A host process is not in the pod: no ceiling, both calls go out.
    let host_tag = "host-no-rule";
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http1.1", "--cacert"])
        .arg(&mock.ca)
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("x-test-tag: {host_tag}"))
        .args(["-d", body, &url, &url]);
    run_client(cmd);
    assert_eq!(mock.served_with_tag(host_tag).len(), 2);

    // In the pod the rule applies: the second call is stopped before it leaves.
    let tag = "pod-rule";
    let exit = run_in_container(&rootfs, &cg, &mock, tag, 3);
    assert!(!exit.success(), "the pod's curl was killed: {exit:?}");
    assert_eq!(mock.served_with_tag(tag).len(), 1, "one call left the host");
    daemon.wait_for("the pod's ledger row", |_, ledger| {
        ledger
            .iter()
            .any(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
    });
    let ledger = daemon.ledger();
    let row = ledger
        .iter()
        .find(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
        .unwrap();
    assert_eq!(row["outcome"], "killed", "{row}");
    assert_eq!(row["call_count"], 1, "{row}");
    assert!(u(&row["ceiling_hits"]) >= 1, "{row}");
}

/// A namespace rule with a shared budget: every session of the namespace's pods draws from
/// one pot, so the second session is stopped where the pot runs out, though it spent less
/// than the budget itself; a host process is in no pot.
#[test]
fn a_namespace_rules_shared_budget_stops_the_second_session_at_the_shared_limit() {
    let dir = Scratch::new("containers-budget");
    let rootfs = build_rootfs(&dir.0);
    let cg = PodCgroup::new();
    let pods = PodListServer::start(&dir.0, &pod_list(&cg, "worker-0", "team-a"));
    let config = format!(
        "[kubernetes]\npod_list_url = \"http://127.0.0.1:{}/pods\"\n\n\
         [[session_roots]]\nname = \"team-a\"\nmatch_pod_namespace = \"^team-a$\"\n\
         budget_usd_per_day = 0.5\naction = \"kill\"\n",
        pods.port
    );
    let daemon = Daemon::with_config_in(dir, &config);
    let mock = Mock::start(&[]);
    // $0.15 a call (1M input tokens of gpt-4o-mini).
    let usage = r#"{"input_tokens":1000000,"output_tokens":0}"#;

    // The host's process matches no rule: both calls go out, nothing is drawn from the pot.
    let host_tag = "budget-host";
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http1.1", "--cacert"])
        .arg(&mock.ca)
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("x-test-tag: {host_tag}"))
        .args(["-H", &format!("x-mock-usage: {usage}")])
        .args([
            "-d",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            &url,
            &url,
        ]);
    run_client(cmd);
    assert_eq!(mock.served_with_tag(host_tag).len(), 2);

    // First session of the namespace: $0.30 of the $0.50 pot.
    let exit = run_in_container_with(&rootfs, &cg, &mock, "budget-one", 2, Some(usage));
    assert!(exit.success(), "{exit:?}");
    assert_eq!(mock.served_with_tag("budget-one").len(), 2);
    // Second session: its first call brings the pot to $0.45, its second crosses $0.50 and
    // completes, its third never leaves.
    let exit = run_in_container_with(&rootfs, &cg, &mock, "budget-two", 3, Some(usage));
    assert!(!exit.success(), "the second session was killed: {exit:?}");
    assert_eq!(mock.served_with_tag("budget-two").len(), 2);
    daemon.wait_for("both pod sessions' ledger rows", |_, ledger| {
        ledger
            .iter()
            .filter(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
            .count()
            == 2
    });
    let ledger = daemon.ledger();
    let rows: Vec<&Value> = ledger
        .iter()
        .filter(|l| l["pod_uid"].as_str() == Some(cg.pod_uid.as_str()))
        .collect();
    assert_eq!(rows[0]["outcome"], "completed", "{:?}", rows[0]);
    assert_eq!(rows[1]["outcome"], "killed", "{:?}", rows[1]);
    assert!((rows[1]["total_cost_usd"].as_f64().unwrap() - 0.30).abs() < 1e-9);
    // Each pod call names the budget it drew from; the host's do not.
    for c in daemon.calls() {
        let in_pod = c["pod_uid"].as_str() == Some(cg.pod_uid.as_str());
        if c["blocked"] == true {
            continue;
        }
        assert_eq!(c["budget"].as_str(), in_pod.then_some("team-a"), "{c}");
    }
    let status = daemon.cli_json(&["status"]);
    let budget = &status["ceilings"]["budgets"][0];
    assert_eq!(budget["name"], "team-a", "{status:#}");
    assert!(
        (budget["usd_last_24h"].as_f64().unwrap() - 0.60).abs() < 1e-9,
        "{budget}"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=kubernetes",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}

/// The API-server form of `[kubernetes]`: HTTPS with the cluster CA and a bearer token (as a
/// pod's service account has them); a wrong token is a clear status, not a crash.
#[test]
fn pod_list_from_an_api_server_over_https_with_a_token() {
    let dir = Scratch::new("containers-apiserver");
    let (ca, cert, key) = make_pki(&dir.0);
    let cg = PodCgroup::new();
    let pods = dir.0.join("pods.json");
    std::fs::write(
        &pods,
        serde_json::to_vec(&pod_list(&cg, "p", "ns")).unwrap(),
    )
    .unwrap();
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let mut server = Command::new(python())
        .arg(clients().join("pod_list_server.py"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--token-file")
        .arg(&token)
        .arg("--pods")
        .arg(&pods)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let config = |token_file: &Path| {
        format!(
            "[kubernetes]\npod_list_url = \"https://127.0.0.1:{port}/api/v1/pods?fieldSelector=spec.nodeName=${{AW_TEST_NODE}}\"\n\
             token_file = \"{}\"\nca_file = \"{}\"\n",
            token_file.display(),
            ca.display()
        )
    };
    let wrong = dir.0.join("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let (ok_cfg, bad_cfg) = (config(&token), config(&wrong));
    let daemon = Daemon::with_config_in(Scratch::new("apiserver-ok"), &ok_cfg);
    let k = &daemon.cli_json(&["status"])["kubernetes"];
    assert_eq!(k["state"], "ok", "{k}");
    assert_eq!(k["pods"], 2, "{k}");
    drop(daemon);
    let daemon = Daemon::with_config_in(Scratch::new("apiserver-bad"), &bad_cfg);
    let k = &daemon.cli_json(&["status"])["kubernetes"];
    let state = k["state"].as_str().unwrap();
    assert!(
        state.starts_with("unavailable") && state.contains("HTTP 401"),
        "{k}"
    );
    assert_eq!(k["pods"], 0, "{k}");
    drop(daemon);
    let _ = server.kill();
    let _ = server.wait();
}
