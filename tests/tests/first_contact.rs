//! Privileged end-to-end tests of first contact: probes go only on processes that contact an
//! LLM endpoint, decided in the kernel at their first connection's ClientHello, before any
//! request byte; every other process gets no uprobe and no per-byte work.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn kernel(status: &Value) -> &Value {
    &status["first_contact"]["kernel"]
}

/// A TLS server and TLS clients to it under a name that is no LLM endpoint (`--resolve`:
/// SNI `files.example.test`), a new connection per request and keep-alive, while the daemon is
/// up. The kernel looks at each connection's ClientHello and lets it go: no process is
/// stopped, no probe is attached, and no uprobe fires (the kernel's own counter of uprobe
/// runs stands still). A sentinel call to an LLM endpoint made afterwards is captured, so
/// the daemon was watching all along.
#[test]
fn tls_that_is_not_an_agent_gets_no_uprobe() {
    let daemon = Daemon::start();
    // The mock is the "other" TLS server here: any TLS server does, and it serves any path.
    let mock = Mock::start(&[]);
    let before = daemon.cli_json(&["status"]);
    let other = format!("files.example.test:{}:127.0.0.1", mock.port);
    let url = format!("https://files.example.test:{}/v1/models", mock.port);
    // Three processes, each one connection; then one process with three keep-alive requests.
    for _ in 0..3 {
        // `-k`: the mock's certificate does not name this host.
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-k", "--resolve", &other, &url]);
        run_client(cmd);
    }
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-k", "--resolve", &other])
        .args([&url, &url, &url]);
    run_client(cmd);
    let after = daemon.cli_json(&["status"]);
    let (k0, k1) = (kernel(&before), kernel(&after));
    assert!(
        u(&k1["other_hosts"]) >= u(&k0["other_hosts"]) + 4,
        "each connection's ClientHello was looked at and let go: {k0} → {k1}"
    );
    assert_eq!(k1["uprobe_hits"], k0["uprobe_hits"], "{k0} → {k1}");
    assert_eq!(k1["holds"], k0["holds"], "{k0} → {k1}");
    assert_eq!(
        u(&after["probed_processes"]["attached_total"]),
        u(&before["probed_processes"]["attached_total"]),
        "{after:#}"
    );
    // Their socket reads ran nothing: the read hook was never attached (no link in the
    // kernel side's pin set), and nobody was stopped for it.
    let read_link = |s: &Value| {
        Path::new(s["kernel_side"]["pinned_at"].as_str().expect("pinned"))
            .join("links/sock_recv_length")
            .exists()
    };
    assert_eq!(after["read_hook"]["attached"], false, "{after:#}");
    assert_eq!(u(&after["read_hook"]["attaches"]), 0, "{after:#}");
    assert!(!read_link(&after), "{after:#}");
    assert_eq!(k1["read_holds"], k0["read_holds"], "{k0} → {k1}");
    // The sentinel: an LLM call afterwards is held, probed and recorded.
    let (pid, _) = run_client(curl_chat(&mock, "fc-sentinel", false));
    check_exact(
        &daemon,
        &mock,
        pid,
        "fc-sentinel",
        1,
        &json!({"provider": "openai"}),
    );
    let last = daemon.cli_json(&["status"]);
    assert!(
        u(&kernel(&last)["uprobe_hits"]) > u(&k1["uprobe_hits"]),
        "{last:#}"
    );
    assert!(u(&kernel(&last)["holds"]) > u(&k1["holds"]), "{last:#}");
    // Its decision put the read hook on (an agent's sockets may need their reads seen).
    assert!(u(&last["read_hook"]["attaches"]) >= 1, "{last:#}");
    assert_eq!(
        read_link(&last),
        last["read_hook"]["attached"] == true,
        "{last:#}"
    );
}

/// An endpoint without a name (`https://127.0.0.1:PORT`: no SNI) is held like a known LLM
/// host: a Python SDK client that has never run is exact from its first call, streamed or
/// not; and so is a node client run from a path of its own (a copy of node, never seen), and a
/// Python client in a mount namespace of its own.
#[test]
fn ip_literal_endpoints_are_exact_from_the_first_call_of_new_processes() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let expect = json!({"provider": "openai", "model": "gpt-4o-mini"});
    let (pid, _) = run_client(py_client(
        "openai_chat.py",
        &mock,
        &["--calls", "1", "--tag", "fc-py"],
    ));
    check_exact(&daemon, &mock, pid, "fc-py", 1, &expect);

    let dir = Scratch::new("fc-node");
    let node = dir.0.join("node-copy");
    let system_node = which("node");
    std::fs::copy(&system_node, &node).unwrap();
    let cmd = node_client_with(
        &node,
        &mock,
        &["--model", "gpt-4o-mini", "--calls", "1", "--tag", "fc-node"],
    );
    let (pid, _) = run_client(cmd);
    check_exact(&daemon, &mock, pid, "fc-node", 1, &expect);

    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"])
        .arg(python())
        .arg(clients().join("openai_chat.py"))
        .args(["--base-url", &mock.base_url(), "--ca"])
        .arg(&mock.ca)
        .args(["--calls", "1", "--tag", "fc-ns"]);
    let (unshare_pid, _) = run_client(cmd);
    // `unshare` execs the client in place: the same pid.
    check_exact(&daemon, &mock, unshare_pid, "fc-ns", 1, &expect);
    let status = daemon.cli_json(&["status"]);
    assert!(
        status["tls_libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"].as_str() == node.to_str()),
        "{status:#}"
    );
    let stats = &status["first_contact"]["stats"];
    assert!(u(&stats["no_sni"]) >= 3, "{stats}");
    assert_eq!(u(&stats["timeouts"]), 0, "{stats}");
}

/// A process probed on probation (no SNI) that opens connections without an LLM request is
/// not an agent: when it opens a fourth with none on the first three, its probes come off.
#[test]
fn probation_ends_for_a_process_that_makes_no_llm_call() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let url = format!("{}/v1/models", mock.base_url());
    // One process, four connections (each closed: `Connection: close`), no LLM request.
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-H",
        "connection: close",
        "--cacert",
    ])
    .arg(&mock.ca);
    for _ in 0..4 {
        cmd.arg(&url);
    }
    run_client(cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = daemon.cli_json(&["status"]);
        let stats = &status["first_contact"]["stats"];
        if u(&stats["not_agents"]) >= 1 {
            assert_eq!(u(&stats["on_probation"]), 0, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A held process is never left stopped: with a deadline shorter than any attach, the
/// process continues at the deadline (counted), and its calls go through. The client is a
/// stripped static OpenSSL build the daemon has never seen: its attach waits for its
/// analysis (tens of ms and more), which no 1 ms deadline can lose to (an ordinary attach,
/// 3 ms, sometimes beat the deadline's timer on a busy runtime).
#[test]
fn a_held_process_continues_at_the_deadline() {
    let dir = Scratch::new("fc-deadline");
    let bin = build_static_openssl_client(&dir.0);
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        "[probes]\nfirst_contact_timeout_ms = 1\nexpedite_first_contact = false\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let mock = Mock::start(&[]);
    let started = Instant::now();
    let mut cmd = Command::new(&bin);
    cmd.arg(mock.port.to_string())
        .arg(&mock.ca)
        .arg("fc-deadline")
        .arg("1");
    let (_, out) = run_client(cmd);
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1 200"));
    assert_eq!(mock.served_with_tag("fc-deadline").len(), 1);
    let stats = daemon.cli_json(&["status"])["first_contact"]["stats"].clone();
    assert!(
        u(&stats["timeouts"]) >= 1,
        "{stats} after {:?}",
        started.elapsed()
    );
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_else(|| Path::new("/usr/bin").join(name))
}

/// `scope = "all"` keeps the earlier design for who wants request-shape detection on any
/// host: the TLS libraries are probed for every process from the start, nothing is held, and
/// calls are exact.
#[test]
fn scope_all_probes_every_tls_process_without_holds() {
    let dir = Scratch::new("fc-scope-all");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(&config, "[probes]\nscope = \"all\"\n").unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["scope"], "all", "{status:#}");
    assert!(
        status["tls_libraries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["path"].as_str().is_some_and(|p| p.contains("libssl.so"))),
        "libssl attached at start: {status:#}"
    );
    let mock = Mock::start(&[]);
    let (pid, _) = run_client(curl_chat(&mock, "fc-all", true));
    check_exact(
        &daemon,
        &mock,
        pid,
        "fc-all",
        1,
        &json!({"streaming": true}),
    );
    let stats = &daemon.cli_json(&["status"])["first_contact"]["stats"];
    assert_eq!(u(&stats["holds"]), 0, "{stats}");
}

/// Many processes started at once, each exec'd and at its first contact within the same few
/// milliseconds (one drain of the ring buffer): every one stays probed. (An exec's record
/// used to take off the probes of the first contact that followed it when the attach won the
/// race, and a third to a half of them were left unprobed.)
#[test]
fn processes_started_together_are_all_probed() {
    const N: usize = 60;
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    struct Client(std::process::Child);
    impl Drop for Client {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let clients: Vec<Client> = (0..N)
        .map(|_| {
            Client(
                Command::new("openssl")
                    .args(["s_client", "-quiet", "-connect"])
                    .arg(format!("127.0.0.1:{}", mock.port))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("openssl s_client"),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = daemon.cli_json(&["status"]);
        let now = s["probed_processes"]["now"].as_u64().unwrap_or(0);
        if now >= N as u64 {
            assert_eq!(s["first_contact"]["stats"]["timeouts"], 0, "{s:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} of {N} probed: {:#}",
            s["probed_processes"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // They stay probed (no late detach).
    std::thread::sleep(Duration::from_millis(500));
    let s = daemon.cli_json(&["status"]);
    assert_eq!(
        s["probed_processes"]["now"], N as u64,
        "{:#}",
        s["probed_processes"]
    );
    drop(clients);
}

/// The kernel holds first contacts only while a daemon's heartbeat is fresh (a kernel side
/// left pinned without a daemon must not stop processes nobody will continue). A daemon that
/// has been up longer than that window still has every new agent held and probed: its
/// heartbeat reaches the kernel (it once did not, once the ceiling gate had taken the
/// object's `CONFIG` map, and agents started 30 s after the daemon were missed).
#[test]
fn first_contacts_are_held_after_the_no_daemon_window() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    // HOLD_WITHOUT_DAEMON_SECS (30) and a margin.
    std::thread::sleep(Duration::from_secs(33));
    let (pid, _) = run_client(curl_chat(&mock, "fc-late", false));
    check_exact(
        &daemon,
        &mock,
        pid,
        "fc-late",
        1,
        &json!({"provider": "openai"}),
    );
    let status = daemon.cli_json(&["status"]);
    assert_eq!(u(&kernel(&status)["no_daemon"]), 0, "{status:#}");
    assert!(u(&kernel(&status)["holds"]) >= 1, "{status:#}");
}

/// A process the kernel stopped at its first contact whose record was lost (a full ring
/// buffer drops it after the stop) is found by the daemon's watchdog, probed and continued:
/// its call is exact, and the lost record is counted. The test plays the kernel's part: a
/// client stops itself right before its first connection (its TLS library loaded, as at a
/// ClientHello), and the test marks it held in the pinned `PROCS` map, with no record.
#[test]
fn a_hold_whose_record_was_lost_is_found_and_decided() {
    let daemon = Daemon::start();
    let mock = Mock::start(&[]);
    let url = mock.base_url();
    let (host, port) = url.trim_start_matches("https://").split_once(':').unwrap();
    let script = format!(
        r#"
import http.client, json, os, signal, ssl
ctx = ssl.create_default_context(cafile={ca:?})
os.kill(os.getpid(), signal.SIGSTOP)
conn = http.client.HTTPSConnection({host:?}, {port}, context=ctx, timeout=60)
body = json.dumps({{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}})
conn.request("POST", "/v1/chat/completions", body,
             {{"content-type": "application/json", "x-test-tag": "unannounced"}})
r = conn.getresponse()
r.read()
assert r.status == 200, r.status
"#,
        ca = mock.ca.display().to_string(),
    );
    let mut child = Command::new(python())
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agentwatch::policy::enforce::is_stopped(pid) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the client exited before stopping"
        );
        assert!(Instant::now() < deadline, "the client never stopped itself");
        std::thread::sleep(Duration::from_millis(10));
    }
    let set = daemon.cli_json(&["status"])["kernel_side"]["pinned_at"]
        .as_str()
        .expect("a pinned kernel side")
        .to_string();
    let data = aya::maps::MapData::from_pin(Path::new(&set).join("maps/PROCS")).unwrap();
    let mut procs: aya::maps::HashMap<_, u32, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
    procs.insert(pid, agentwatch_ebpf::PROC_HELD, 0).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the held client was never continued: {:#}",
            daemon.cli_json(&["status"])["first_contact"]
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    check_exact(
        &daemon,
        &mock,
        pid,
        "unannounced",
        1,
        &json!({"provider": "openai"}),
    );
    let stats = daemon.cli_json(&["status"])["first_contact"]["stats"].clone();
    assert_eq!(u(&stats["unannounced"]), 1, "{stats}");
}
