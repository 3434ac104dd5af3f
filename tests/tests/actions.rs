//! What the agent did: the tools a session's agents ran, from the kernel's exec and exit
//! events, with their exit status, and the hosts its processes connected to (real probes, a
//! real Python SDK agent, real programs).
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn action_rows(daemon: &Daemon) -> Vec<Value> {
    read_jsonl(&daemon.data_dir.join("actions.jsonl"))
}

/// An agent (the openai SDK against the mock) runs tools through `bash -c`: file commands in
/// a scratch directory, a program that exits 3, one killed by SIGKILL. Each is one tool run
/// of its session with its exit status; the ledger counts them; `agentwatch actions` shows
/// them under the agent that ran them, by a prefix of the session id. The same file work
/// done by a process outside any session leaves no row.
#[test]
fn an_agents_tool_runs_are_recorded_with_their_exit_status() {
    let daemon = Daemon::start_in(Scratch::new("actions"), &[]);
    let mock = Mock::start(&[]);
    let work = Scratch::new("actions-work");
    let dir = work.0.display().to_string();
    // A server that is not an LLM endpoint: it takes a connection, reads what comes first
    // (a client that finds it closed at once may send nothing), and closes it.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in other.incoming().take(4).flatten() {
            use std::io::Read;
            let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = c.read(&mut [0u8; 4096]);
        }
    });
    let children = [
        // First, right after the call (forked before the daemon has read that call: marked
        // as the session's when its fork is read). A name the ClientHello carries (SNI),
        // resolved to the local server.
        format!(
            "curl -sk --max-time 5 --resolve tools.example.test:{other_port}:127.0.0.1 https://tools.example.test:{other_port}/ || true"
        ),
        format!("cd {dir} && touch a && mv a b && rm b"),
        "bash -c 'exit 3'; true".to_string(),
        "sleep 30 & sleep 0.3; kill -KILL $!; wait; true".to_string(),
    ];
    let mut agent = py_client(
        "tree_agent.py",
        &mock,
        &["--calls", "1", "--tag", "actions"],
    );
    for c in &children {
        agent.arg("--child").arg(c);
    }
    let (root, _) = run_client(agent);
    // Outside any session: the same kind of work, never recorded.
    let outside = Command::new("bash")
        .arg("-c")
        .arg(format!("cd {dir} && touch c && mv c d && rm d"))
        .status()
        .unwrap();
    assert!(outside.success());
    // A call after it: once its row is written, the outside exits were read before it.
    sentinel_call(&daemon, &mock, false);

    let (_calls, row) = rows_of(&daemon, root, 1);
    let session = row["session_id"].as_str().unwrap().to_string();
    let all_rows: Vec<Value> = action_rows(&daemon)
        .into_iter()
        .filter(|r| r["session_id"] == session.as_str())
        .collect();
    let (rows, hosts): (Vec<Value>, Vec<Value>) = all_rows
        .iter()
        .cloned()
        .partition(|r| r["kind"] == "tool_run");
    assert!(hosts.iter().all(|r| r["kind"] == "host"), "{hosts:#?}");
    // Hosts: the mock, by the agent itself; the other server, by curl under the agent.
    assert_eq!(
        u(&row["hosts_contacted"]),
        hosts.len() as u64,
        "{row:#?} / {hosts:#?}"
    );
    let host = |port: u16| hosts.iter().find(|h| u(&h["port"]) == port as u64);
    let llm = host(mock.port).unwrap_or_else(|| panic!("the mock not in {hosts:#?}"));
    assert_eq!(
        (u(&llm["pid"]), llm["address"].as_str()),
        (root as u64, Some("127.0.0.1"))
    );
    let curl = host(other_port).unwrap_or_else(|| panic!("port {other_port} not in {hosts:#?}"));
    assert_eq!(curl["tool"], "curl", "{curl:#?}");
    assert_eq!(curl["sni"], "tools.example.test", "{curl:#?}");
    assert!(
        llm.get("sni").is_none(),
        "an IP-literal endpoint sends no name: {llm:#?}"
    );
    assert_eq!(u(&curl["agent_pid"]), root as u64);
    assert_eq!(hosts.len(), 2, "one row per destination: {hosts:#?}");
    assert_eq!(
        u(&row["tool_runs"]),
        rows.len() as u64,
        "the ledger counts the session's tool runs: {row:#?} / {rows:#?}"
    );
    let tools: BTreeSet<&str> = rows.iter().filter_map(|r| r["tool"].as_str()).collect();
    for t in ["bash", "touch", "mv", "rm", "sleep", "curl"] {
        assert!(tools.contains(t), "{t} missing from {tools:?}");
    }
    for r in &rows {
        assert_eq!(
            u(&r["agent_pid"]),
            root as u64,
            "ran under the root agent: {r:#?}"
        );
        assert_eq!(u(&r["agent_depth"]), 0);
        assert_ne!(u(&r["pid"]), root as u64);
        assert!(
            r["exe"].as_str().is_some_and(|e| e.starts_with('/')),
            "{r:#?}"
        );
        assert!(r.get("argv").is_none(), "arguments are not kept: {r:#?}");
        assert!(r["started_at"].as_str() <= r["ended_at"].as_str());
    }
    let with = |tool: &str, pred: &dyn Fn(&Value) -> bool| {
        rows.iter().any(|r| r["tool"] == tool && pred(r))
    };
    for t in ["touch", "mv", "rm"] {
        assert!(
            with(t, &|r| r["exit_code"] == 0 && r["signal"].is_null()),
            "{t}: {rows:#?}"
        );
    }
    assert!(
        with("bash", &|r| r["exit_code"] == 3),
        "bash exit 3: {rows:#?}"
    );
    assert!(
        with("sleep", &|r| r["signal"] == 9 && r["exit_code"].is_null()),
        "sleep killed by SIGKILL: {rows:#?}"
    );
    // Nothing of the work outside the session.
    let all = action_rows(&daemon);
    // (The sentinel is a session of its own: its one row is its connection to the mock.)
    let others: Vec<&Value> = all
        .iter()
        .filter(|r| r["session_id"] != session.as_str())
        .collect();
    assert!(
        others
            .iter()
            .all(|r| r["kind"] == "host" && u(&r["port"]) == mock.port as u64),
        "rows of other sessions: {others:#?}"
    );

    // The CLI, by a prefix of the id, grouped per agent.
    let list = daemon.cli_json(&["actions", &session[..10]]);
    assert_eq!(list["session_id"], session.as_str());
    let agents = list["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{list:#}");
    assert_eq!(u(&agents[0]["agent_pid"]), root as u64);
    assert_eq!(agents[0]["tool_runs"].as_array().unwrap().len(), rows.len());
    assert_eq!(agents[0]["hosts"].as_array().unwrap().len(), 2);
    let text = daemon.cli(&["actions", &session[..10]]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("killed by signal 9") && text.contains("exit 3"),
        "{text}"
    );
    assert!(
        text.contains(&format!("connect 127.0.0.1:{other_port} (curl")),
        "{text}"
    );
    eprintln!("{text}");
    // An unknown id is an error that says what to do.
    let unknown = daemon.cli(&["actions", "zzzz"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("agentwatch sessions"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    drop(work);
}

/// A recurring job run 5 times with the same tool, then a 6th time that also runs another
/// program and contacts another host: only the 6th ledger row has `drift`, naming the new
/// tool and the new host. The runs are one job by the `[[session_roots]]` rule they match
/// (`rule:<name>`), though each runs in a directory of its own.
#[test]
fn a_recurring_job_that_runs_a_new_tool_drifts() {
    let daemon = Daemon::with_config(
        "drift",
        "[[session_roots]]\nname = \"nightly-report\"\nmatch_cmdline = \"tree_agent.py.*--tag drift\"\n",
    );
    let mock = Mock::start(&[]);
    let work = Scratch::new("drift-work");
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in other.incoming().take(2) {
            drop(conn);
        }
    });
    let runs = std::cell::Cell::new(0);
    let run = |children: &[String]| -> Value {
        let mut agent = py_client("tree_agent.py", &mock, &["--calls", "1", "--tag", "drift"]);
        // A directory of its own per run: without the rule, six jobs of one run each.
        runs.set(runs.get() + 1);
        let cwd = work.0.join(format!("run-{}", runs.get()));
        std::fs::create_dir_all(&cwd).unwrap();
        agent.current_dir(&cwd);
        for c in children {
            agent.arg("--child").arg(c);
        }
        let (root, _) = run_client(agent);
        rows_of(&daemon, root, 1).1
    };
    let usual = vec!["/bin/true".to_string()];
    for i in 0..5 {
        let row = run(&usual);
        assert_eq!(row["drift"], serde_json::json!([]), "run {i}: {row:#}");
    }
    let mut unusual = usual.clone();
    unusual.push("/usr/bin/env date".to_string());
    unusual.push(format!(
        "curl -s --max-time 5 http://127.0.0.1:{other_port}/ || true"
    ));
    let row = run(&unusual);
    let drift: Vec<&str> = row["drift"]
        .as_array()
        .unwrap_or_else(|| panic!("{row:#}"))
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    // `env` execs `date` in the same process: the program that ran is `date`.
    assert!(drift.contains(&"new tool: date"), "{drift:?}");
    assert!(drift.contains(&"new tool: curl"), "{drift:?}");
    assert!(
        drift.contains(&format!("new host: 127.0.0.1:{other_port}").as_str()),
        "{drift:?}"
    );
    assert!(!drift.iter().any(|d| d.contains("true")), "{drift:?}");
    // The baselines are on disk for the next daemon.
    let jobs: Value =
        serde_json::from_slice(&std::fs::read(daemon.data_dir.join("jobs.json")).unwrap()).unwrap();
    let job = &jobs["rule:nightly-report"];
    assert_eq!(u(&job["runs"]), 6, "{jobs:#}");
    assert_eq!(jobs.as_object().unwrap().len(), 1, "{jobs:#}");
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        u(&status["sessions"]["drifted_sessions"]),
        1,
        "{:#}",
        status["sessions"]
    );
    assert_eq!(
        u(&status["sessions"]["job_baselines"]),
        1,
        "{:#}",
        status["sessions"]
    );

    // History, from the files alone (no daemon asked): the six runs' calls by model and the
    // closed sessions of the last hour; nothing before 2000.
    let ledger = |args: &[&str]| -> Value {
        let out = Command::new(agentwatch_bin())
            .arg("ledger")
            .args(args)
            .arg("--data-dir")
            .arg(&daemon.data_dir)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["blocked"] != true)
        .collect();
    let by_model = ledger(&["--by", "model", "--since", "1h"]);
    let groups = by_model.as_array().unwrap();
    let calls_in_groups: u64 = groups.iter().map(|g| u(&g["calls"])).sum();
    assert_eq!(calls_in_groups, calls.len() as u64, "{by_model:#}");
    for g in groups {
        let of_model: Vec<&Value> = calls.iter().filter(|c| c["model"] == g["key"]).collect();
        let tokens: u64 = of_model.iter().map(|c| u(&c["total_tokens"])).sum();
        let cost: f64 = of_model.iter().filter_map(|c| c["cost_usd"].as_f64()).sum();
        assert_eq!(u(&g["total_tokens"]), tokens, "{g:#}");
        assert!(approx(g["cost_usd"].as_f64().unwrap(), cost), "{g:#}");
    }
    let closed = ledger(&["--since", "1h"]);
    let ids: BTreeSet<&str> = closed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    let ledger_rows = daemon.ledger();
    let want: BTreeSet<&str> = ledger_rows
        .iter()
        .filter_map(|r| r["session_id"].as_str())
        .collect();
    assert_eq!(ids, want);
    assert_eq!(ledger(&["--until", "2000-01-01"]), serde_json::json!([]));
    // One session's calls by a prefix of its id; an unknown prefix is an error.
    let sid = ledger_rows[0]["session_id"].as_str().unwrap();
    let out = Command::new(agentwatch_bin())
        .args(["calls", &sid[..8], "--json", "--data-dir"])
        .arg(&daemon.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = calls_of_session(&daemon.calls(), sid);
    assert_eq!(listed.as_array().unwrap().len(), want, "{listed:#}");
    let out = Command::new(agentwatch_bin())
        .args(["calls", "zzzz", "--data-dir"])
        .arg(&daemon.data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agentwatch ledger"));
    // `sessions --all`: the closed sessions of the day besides the live ones, as
    // `-o json` (the same as --json) and as the wide table.
    let out = daemon.cli(&[
        "sessions",
        "--all",
        "-o",
        "json",
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all["live"].is_array(), "the daemon answered: {all:#}");
    let closed_ids: BTreeSet<&str> = all["closed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    assert_eq!(closed_ids, want_ids(&ledger_rows), "{all:#}");
    let wide = daemon.cli(&["sessions", "-o", "wide"]);
    assert!(wide.status.success(), "{wide:?}");
    let head = String::from_utf8_lossy(&wide.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    for col in ["SESSION", "STARTED", "INPUT", "OUTPUT", "HITS", "UNPRICED"] {
        assert!(head.contains(col), "{head}");
    }
    drop(work);
}

fn want_ids(rows: &[Value]) -> BTreeSet<&str> {
    rows.iter()
        .filter_map(|r| r["session_id"].as_str())
        .collect()
}

/// `[drift] action = "kill"`: a run of a recurring job that runs a program its runs never ran
/// is killed before its next LLM call (a sub-agent's), like at a ceiling: that call never
/// leaves the host, and the hit is on record as `drift`. With `[actions] argv = true` tool
/// runs keep their arguments, with what looks like a secret redacted.
#[test]
fn a_drifting_run_is_stopped_before_its_next_call_and_argv_is_redacted() {
    let daemon = Daemon::with_config(
        "drift-kill",
        "[actions]\nargv = true\n[drift]\naction = \"kill\"\nmin_runs = 2\n",
    );
    let mock = Mock::start(&[]);
    let work = Scratch::new("drift-kill-work");
    let sub = format!(
        "{} {} --base-url {} --ca {} --calls 1 --tag drift-kill-sub",
        python().display(),
        clients().join("tree_agent.py").display(),
        mock.base_url(),
        mock.ca.display()
    );
    let echo = "/bin/echo --api-key hunter2 sk-ant-api03-abcdefghijkl > /dev/null".to_string();
    // (Its root pid and how it ended: the drifting run is killed, so no `run_client`.)
    let run = |children: &[String]| -> (u32, std::process::Output) {
        let mut agent = py_client(
            "tree_agent.py",
            &mock,
            &["--calls", "1", "--tag", "drift-kill"],
        );
        agent
            .current_dir(&work.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for c in children {
            agent.arg("--child").arg(c);
        }
        let child = agent.spawn().unwrap();
        let pid = child.id();
        (pid, child.wait_with_output().unwrap())
    };
    for i in 0..2 {
        let (root, out) = run(&[echo.clone(), sub.clone()]);
        assert!(out.status.success(), "run {i}: {out:?}");
        let row = ledger_of(&wait_ledger(&daemon, root), root)[0].clone();
        assert_eq!(row["drift"], serde_json::json!([]), "run {i}: {row:#}");
        assert_eq!(row["outcome"], "completed", "{row:#}");
    }
    assert_eq!(mock.served_with_tag("drift-kill-sub").len(), 2);
    // The third run runs `date` first: its sub-agent's call is stopped, the tree killed.
    let (root, out) = run(&[echo.clone(), "/usr/bin/env date".to_string(), sub.clone()]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let row = ledger_of(&wait_ledger(&daemon, root), root)[0].clone();
    assert_eq!(row["outcome"], "killed", "{row:#}");
    assert!(
        row["drift"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d == "new tool: date")),
        "{row:#}"
    );
    assert_eq!(
        mock.served_with_tag("drift-kill-sub").len(),
        2,
        "the drifting run's sub-agent call never left the host"
    );
    assert_eq!(u(&row["ceiling_hits"]), 1, "{row:#}");
    // The stopped attempt is on record, charged to the session, with no tokens.
    let session = row["session_id"].as_str().unwrap();
    assert!(
        daemon
            .calls()
            .iter()
            .any(|c| c["session_id"] == session && c["blocked"] == true && u(&c["depth"]) == 1),
        "a blocked call of the sub-agent"
    );
    // Arguments, redacted.
    let echo_row = action_rows(&daemon)
        .into_iter()
        .find(|r| r["tool"] == "echo")
        .expect("an echo tool run");
    assert_eq!(
        echo_row["argv"],
        serde_json::json!(["/bin/echo", "--api-key", "[redacted]", "[redacted]"]),
        "{echo_row:#}"
    );
    drop(work);
}

/// Every ledger row so far, once one of `pid` is there (bounded wait).
fn wait_ledger(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon.wait_for(&format!("a ledger row of pid {pid}"), |_, l| {
        !ledger_of(l, pid).is_empty()
    });
    daemon.ledger()
}

fn calls_of_session(calls: &[Value], sid: &str) -> usize {
    calls.iter().filter(|c| c["session_id"] == sid).count()
}

/// `[actions] files = true`: the files an agent's tools create, write, rename and delete (real
/// bash, coreutils and their system calls) are one `actions.jsonl` row per path when the
/// session closes, with what was done to each; the ledger counts them; `agentwatch actions`
/// shows them under the agent. The same work outside any session leaves no row.
///
/// With the default `file_hooks = "libc"`: uprobes planted only in the session's processes,
/// no `syscalls` tracepoint ever attached.
#[test]
fn files_a_session_changes_are_recorded_per_path() {
    files_recorded_per_path("libc");
}

/// The same with `file_hooks = "syscalls"`: the tracepoints, attached at the first contact and
/// taken off after the session.
#[test]
fn files_a_session_changes_are_recorded_per_path_by_the_syscalls_hooks() {
    files_recorded_per_path("syscalls");
}

fn files_recorded_per_path(kind: &str) {
    let daemon = Daemon::with_config(
        &format!("files-{kind}"),
        &format!("[actions]\nfiles = true\nfile_hooks = \"{kind}\"\n"),
    );
    let libc = kind == "libc";
    // No session open: with `syscalls`, its tracepoints (which every system call of every
    // process would pay for) are off; the agent's first contact puts them on before it goes
    // on. With `libc`, no C library is probed yet and no process covered.
    let hooks = |d: &Daemon| {
        let status = d.cli_json(&["status"]);
        let syscalls = status["tracepoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t.as_str().unwrap().starts_with("syscalls:"))
            .count();
        (status["file_hooks"].clone(), syscalls)
    };
    let (before, syscalls) = hooks(&daemon);
    assert_eq!(before["kind"], kind, "{before:#}");
    assert_eq!(before["attached"], libc, "{before:#}");
    if libc {
        assert_eq!(u(&before["libc"]["perf_events"]), 0, "{before:#}");
        assert_eq!(u(&before["libc"]["covers"]), 0, "{before:#}");
    }
    assert_eq!(syscalls, 0);
    let mock = Mock::start(&[]);
    let work = Scratch::new("files-work");
    let inside = work.0.join("inside");
    let outside = work.0.join("outside");
    for d in [&inside, &outside] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
    }
    let script = |d: &std::path::Path| {
        let d = d.display();
        format!(
            "echo hello > {d}/notes.txt && echo more >> {d}/notes.txt && mv {d}/notes.txt {d}/final.txt && touch {d}/gone && rm {d}/gone && mkdir {d}/tmpdir && rmdir {d}/tmpdir && echo x > {d}/sub/x.txt && (cd {d}/sub && echo r > short.txt) && (touch {d}/sub/t1 && echo s > {d}/sub/after.txt) && cat {d}/final.txt > /dev/null"
        )
    };
    let mut agent = py_client("tree_agent.py", &mock, &["--calls", "1", "--tag", "files"]);
    agent.arg("--child").arg(script(&inside));
    // Relative paths: to the working directory or a directory descriptor (`renameat`), as
    // they were when the call returned (the kernel reads them then): `moved.txt` was opened
    // in `sub`, though the process has left it by the time the daemon reads the record. (The
    // subshell's `short.txt` above is gone before that too.)
    agent.arg("--child").arg(format!(
        "cd {} && exec {} -c \"import os, time; open('rel.txt', 'w').write('x'); d = os.open('.', os.O_RDONLY); os.rename('rel.txt', 'rel2.txt', src_dir_fd=d, dst_dir_fd=d); os.chdir('sub'); open('moved.txt', 'w').write('x'); os.chdir('..'); time.sleep(1)\"",
        inside.display(),
        python().display()
    ));
    let (root, _) = run_client(agent);
    let out = Command::new("bash")
        .arg("-c")
        .arg(script(&outside))
        .status()
        .unwrap();
    assert!(out.success());
    let row = daemon.ledger_row_of(root);
    let sid = row["session_id"].as_str().unwrap().to_string();
    let files: Vec<Value> = action_rows(&daemon)
        .into_iter()
        .filter(|r| r["kind"] == "file")
        .collect();
    let path = |name: &str| format!("{}/{name}", inside.display());
    let of = |p: &str| -> &Value {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("no row for {p}: {files:#?}"))
    };
    let counts = |f: &Value| -> [u64; 6] { FILE_COUNTS.map(|k| u(&f[k])) };
    // `>` opens with O_CREAT|O_TRUNC, `>>` with O_CREAT|O_APPEND; then mv renames it away.
    assert_eq!(counts(of(&path("notes.txt"))), [2, 2, 1, 0, 1, 0]);
    assert_eq!(counts(of(&path("final.txt"))), [0, 0, 0, 0, 0, 1]);
    assert_eq!(counts(of(&path("gone"))), [1, 1, 0, 1, 0, 0]);
    assert_eq!(counts(of(&path("sub/x.txt"))), [1, 1, 1, 0, 0, 0]);
    assert_eq!(counts(of(&path("rel.txt"))), [1, 1, 1, 0, 1, 0]);
    assert_eq!(counts(of(&path("rel2.txt"))), [0, 0, 0, 0, 0, 1]);
    assert_eq!(counts(of(&path("sub/moved.txt"))), [1, 1, 1, 0, 0, 0]);
    assert_eq!(counts(of(&path("sub/short.txt"))), [1, 1, 1, 0, 0, 0]);
    // A subshell (a fork that runs no program of its own) writes after a child of it ended.
    assert_eq!(counts(of(&path("sub/t1"))), [1, 1, 0, 0, 0, 0]);
    assert_eq!(counts(of(&path("sub/after.txt"))), [1, 1, 1, 0, 0, 0]);
    assert!(
        files
            .iter()
            .all(|f| f["path"].as_str().is_some_and(|p| p.starts_with('/'))),
        "every path absolute: {files:#?}"
    );
    // `rmdir`: a directory deleted.
    assert_eq!(counts(of(&path("tmpdir"))), [0, 0, 0, 1, 0, 0]);
    for f in &files {
        assert_eq!(f["session_id"], sid.as_str(), "{f}");
        assert_eq!(u(&f["agent_pid"]), root as u64, "{f}");
        let p = f["path"].as_str().unwrap();
        assert!(
            !p.starts_with(&outside.display().to_string()),
            "outside: {f}"
        );
        assert!(!p.starts_with("/dev/"), "pseudo file: {f}");
    }
    // bash wrote the files: the tool is its program.
    assert_eq!(of(&path("notes.txt"))["tool"], "bash");
    // The ledger counts the session's rows exactly.
    let written = files
        .iter()
        .filter(|f| u(&f["opened_for_write"]) > 0 || u(&f["renamed_to"]) > 0)
        .count() as u64;
    let deleted = files.iter().filter(|f| u(&f["deleted"]) > 0).count() as u64;
    assert!(written >= 5, "{files:#?}");
    assert_eq!(
        (u(&row["files_written"]), u(&row["files_deleted"])),
        (written, deleted),
        "{row:#}"
    );
    // `agentwatch actions`: under the agent that ran the tools.
    let list = daemon.cli_json(&["actions", &sid[..10]]);
    let agent = &list["agents"][0];
    assert_eq!(u(&agent["agent_pid"]), root as u64, "{list:#}");
    assert!(
        agent["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == path("final.txt").as_str()),
        "{list:#}"
    );
    let text = daemon.cli(&["actions", &sid[..10]]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "file {} (written 2x, truncated 1x, renamed away 1x; bash pid ",
            path("notes.txt")
        )),
        "{text}"
    );
    // The drops of the kernel side stay zero.
    let drops = &daemon.cli_json(&["status"])["kernel_drops"];
    assert_eq!(u(&drops["file_ops_dropped"]), 0, "{drops:#}");
    if libc {
        // The agent was covered at its first contact, its tools inherited that; the system
        // C library was probed; never a `syscalls` tracepoint.
        let (h, syscalls) = hooks(&daemon);
        assert_eq!(syscalls, 0, "{h:#}");
        let l = &h["libc"];
        assert!(u(&l["covers"]) >= 1, "{h:#}");
        assert!(u(&l["inherits"]) >= 1, "{h:#}");
        // Each program the session ran (mv, touch, rm, …) was stopped at its exec until
        // covered, and continued.
        assert!(u(&l["exec_holds"]) >= 6, "{h:#}");
        let kernel = &daemon.cli_json(&["status"])["first_contact"]["kernel"];
        assert!(u(&kernel["file_holds"]) >= 6, "{kernel:#}");
        assert!(!l["libraries"].as_array().unwrap().is_empty(), "{h:#}");
        assert_eq!(u(&l["cover_failures"]), 0, "{h:#}");
        // The session closed: its processes are let go (their perf events closed).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (h, _) = hooks(&daemon);
            let l = &h["libc"];
            if u(&l["covered_explicit"]) + u(&l["covered_inherited"]) == 0 {
                // Only the anchors of the probes are left.
                assert!(u(&l["perf_events"]) > 0, "{h:#}");
                break;
            }
            assert!(Instant::now() < deadline, "still covered: {h:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
        return;
    }
    // No session open any more: off again a few seconds later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (h, syscalls) = hooks(&daemon);
        if h["attached"] == false {
            assert_eq!(syscalls, 0, "{h:#}");
            assert!(u(&h["attaches"]) >= 1 && u(&h["detaches"]) >= 1, "{h:#}");
            break;
        }
        assert_eq!(syscalls, 16, "{h:#}");
        assert!(Instant::now() < deadline, "still attached: {h:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `[actions] files = true` with `[drift] action = "pause"`: a recurring job whose 5 runs
/// write their log in `job/out`, then a 6th run that also writes in another directory. Only
/// the 6th has `drift`, naming that directory (not `job/out`, nor a directory under it),
/// and its next LLM call (a sub-agent's) is held until `agentwatch approve`.
#[test]
fn a_recurring_job_that_writes_in_a_new_directory_drifts_and_is_paused() {
    let daemon = Daemon::with_config(
        "drift-dirs",
        "[actions]\nfiles = true\n[drift]\naction = \"pause\"\nmin_runs = 5\n",
    );
    let mock = Mock::start(&[]);
    let work = Scratch::new("drift-dirs-work");
    let job = work.0.join("job");
    let out = job.join("out");
    let elsewhere = work.0.join("elsewhere");
    for d in [&out.join("2026"), &elsewhere] {
        std::fs::create_dir_all(d).unwrap();
    }
    let sub = format!(
        "{} {} --base-url {} --ca {} --calls 1 --tag drift-dirs-sub",
        python().display(),
        clients().join("tree_agent.py").display(),
        mock.base_url(),
        mock.ca.display()
    );
    let log = format!("echo run >> {}/log.txt", out.display());
    let spawn = |children: &[String]| -> std::process::Child {
        let mut agent = py_client(
            "tree_agent.py",
            &mock,
            &["--calls", "1", "--tag", "drift-dirs"],
        );
        agent
            .current_dir(&job)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for c in children {
            agent.arg("--child").arg(c);
        }
        agent.spawn().unwrap()
    };
    for i in 0..5 {
        // A directory under `out` in one run: under a directory the job writes in.
        let mut children = vec![log.clone()];
        if i == 3 {
            children.push(format!("touch {}/2026/day.txt", out.display()));
        }
        children.push(sub.clone());
        let child = spawn(&children);
        let root = child.id();
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "run {i}: {done:?}");
        let row = ledger_of(&wait_ledger(&daemon, root), root)[0].clone();
        assert_eq!(row["drift"], serde_json::json!([]), "run {i}: {row:#}");
        assert!(u(&row["files_written"]) >= 1, "run {i}: {row:#}");
    }
    assert_eq!(mock.served_with_tag("drift-dirs-sub").len(), 5);
    let jobs: Value =
        serde_json::from_slice(&std::fs::read(daemon.data_dir.join("jobs.json")).unwrap()).unwrap();
    let baseline = jobs.as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(u(&baseline["file_runs"]), 5, "{jobs:#}");
    assert!(
        baseline["dirs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == out.display().to_string().as_str()),
        "{jobs:#}"
    );

    // The 6th run also writes in `elsewhere`: paused before its sub-agent's call.
    let stray = format!("echo oops > {}/stray.txt", elsewhere.display());
    let mut child = spawn(&[
        log.clone(),
        format!("touch {}/2026/day.txt", out.display()),
        stray,
        sub.clone(),
    ]);
    let root = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let session = loop {
        let s = daemon.cli_json(&["sessions"]);
        if let Some(found) = s["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| u(&s["root_pid"]) == root as u64 && s["outcome"] == "paused")
        {
            break found.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the 6th run was not paused: {s:#}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let new_dir = format!("new directory: {}", elsewhere.display());
    assert!(
        session["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&new_dir)),
        "{session:#}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        mock.served_with_tag("drift-dirs-sub").len(),
        5,
        "the drifting run's sub-agent call is held"
    );
    let id = session["session_id"].as_str().unwrap();
    let approved = daemon.cli(&["approve", id]);
    assert!(approved.status.success(), "{approved:?}");
    let status = wait_exit(&mut child, std::time::Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    assert_eq!(mock.served_with_tag("drift-dirs-sub").len(), 6);
    let row = ledger_of(&wait_ledger(&daemon, root), root)[0].clone();
    assert_eq!(row["drift"], serde_json::json!([new_dir]), "{row:#}");
    drop(work);
}

/// A tool chrooted into a root filesystem of its own (as a container's processes see theirs):
/// its paths are as it saw them, a relative one too (the kernel's walk of its working
/// directory stops at its root; `/proc` read from the host would name the host's path).
#[test]
fn a_chrooted_tools_files_are_paths_as_it_saw_them() {
    let daemon = Daemon::with_config("files-chroot", "[actions]\nfiles = true\n");
    let mock = Mock::start(&[]);
    let work = Scratch::new("files-chroot-root");
    let root = work.0.join("rootfs");
    // /bin/sh and what it loads.
    let ldd = Command::new("ldd").arg("/bin/sh").output().unwrap();
    let mut files = vec![std::path::PathBuf::from("/bin/sh")];
    files.extend(
        String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(std::path::PathBuf::from),
    );
    for f in &files {
        let to = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
    }
    std::fs::create_dir_all(root.join("work")).unwrap();
    let mut agent = py_client(
        "tree_agent.py",
        &mock,
        &["--calls", "1", "--tag", "files-chroot"],
    );
    agent.arg("--child").arg(format!(
        "exec chroot {} /bin/sh -c 'cd /work && echo x > rel.txt && echo y > /work/abs.txt'",
        root.display()
    ));
    let (pid, _) = run_client(agent);
    let row = daemon.ledger_row_of(pid);
    assert!(root.join("work/rel.txt").exists());
    let sid = row["session_id"].as_str().unwrap();
    let mut paths: Vec<String> = action_rows(&daemon)
        .into_iter()
        .filter(|r| r["kind"] == "file" && r["session_id"] == sid)
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/work/abs.txt", "/work/rel.txt"], "{row:#}");
    assert_eq!(u(&row["files_written"]), 2, "{row:#}");
}
