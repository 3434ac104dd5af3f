//! Privileged end-to-end tests of export: the real daemon delivering into a real ClickHouse
//! (Debian's clickhouse-server 18.16, started here on loopback with its own data) and into a
//! real OTLP receiver (gRPC and HTTP/protobuf servers from the opentelemetry-proto
//! definitions), through outages and daemon restarts. Every wait is bounded.
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use agentwatch_tests::clickhouse::ClickHouse;
use agentwatch_tests::otlp_receiver::{OtlpReceiver, RecordedSpan};
use common::*;
use serde_json::Value;

/// Waits (bounded) until `pred` holds; `what` and `state` explain a timeout.
fn wait_until(what: &str, secs: u64, mut pred: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        if Instant::now() > deadline {
            panic!("timed out ({secs} s) waiting for {what}\n{}", state());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restart(daemon: Daemon) -> Daemon {
    let dir = daemon.crash();
    let path = dir.0.join("agentwatch.toml").display().to_string();
    Daemon::start_in(dir, &["--config", &path])
}

fn sink_status(daemon: &Daemon, name: &str) -> Value {
    let status = daemon.cli_json(&["status"]);
    status["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no sink {name} in status: {status:#}"))
}

fn clickhouse_config(ch: &ClickHouse) -> String {
    format!(
        "[sinks.clickhouse]\nurl = \"{}\"\ndatabase = \"agentwatch\"\nvalidation = false\n",
        ch.url()
    )
}

/// Runs one openai_chat.py client making `calls` calls; returns its pid.
fn chat(mock: &Mock, tag: &str, calls: u32) -> u32 {
    run_client(py_client(
        "openai_chat.py",
        mock,
        &["--calls", &calls.to_string(), "--tag", tag],
    ))
    .0
}

fn call_ids(calls: &[Value]) -> BTreeSet<String> {
    calls
        .iter()
        .map(|c| {
            format!(
                "{}:{}",
                c["session_id"].as_str().unwrap(),
                u(&c["call_seq"])
            )
        })
        .collect()
}

fn ch_call_ids(ch: &ClickHouse) -> Vec<String> {
    ch.rows("SELECT call_id FROM agentwatch.calls FINAL")
        .iter()
        .map(|r| r["call_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every JSONL call and ledger row is in ClickHouse exactly once (reading with FINAL).
fn assert_all_rows_once(daemon: &Daemon, ch: &ClickHouse) {
    let want_calls = call_ids(&daemon.calls());
    let want_sessions: BTreeSet<String> = daemon
        .ledger()
        .iter()
        .map(|r| r["session_id"].as_str().unwrap().to_string())
        .collect();
    wait_until(
        "every JSONL row in ClickHouse",
        60,
        || {
            let got: BTreeSet<String> = ch_call_ids(ch).into_iter().collect();
            let sessions: BTreeSet<String> = ch
                .rows("SELECT session_id FROM agentwatch.sessions FINAL")
                .iter()
                .map(|r| r["session_id"].as_str().unwrap().to_string())
                .collect();
            want_calls.is_subset(&got) && want_sessions.is_subset(&sessions)
        },
        || {
            format!(
                "jsonl calls {}, clickhouse {:?}\nstatus: {:#}",
                want_calls.len(),
                ch.query("SELECT count() FROM agentwatch.calls"),
                sink_status(daemon, "clickhouse")
            )
        },
    );
    // No duplicates, and nothing ClickHouse has that JSONL does not.
    let ids = ch_call_ids(ch);
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "duplicate call rows");
    let all_calls = call_ids(&daemon.calls());
    assert!(distinct.is_subset(&all_calls), "rows not in calls.jsonl");
    let sessions = ch.rows("SELECT session_id FROM agentwatch.sessions FINAL");
    let distinct: BTreeSet<&str> = sessions
        .iter()
        .map(|r| r["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), distinct.len(), "duplicate session rows");
    let ledger: BTreeSet<String> = daemon
        .ledger()
        .iter()
        .map(|r| r["session_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        distinct.iter().all(|s| ledger.contains(*s)),
        "sessions not in ledger.jsonl"
    );
}

#[test]
fn clickhouse_rows_match_the_jsonl_rows() {
    let scratch = Scratch::new("clickhouse");
    let ch = ClickHouse::start_in(&scratch.0.join("ch"));
    // A calls table left by an older version (its last column missing): the daemon adds it.
    let cols = agentwatch::sinks::clickhouse::CALL_COLUMNS;
    let old: Vec<String> = cols[..cols.len() - 1]
        .iter()
        .map(|(n, t)| format!("`{n}` {t}"))
        .collect();
    ch.query("CREATE DATABASE agentwatch").unwrap();
    ch.query(&format!(
        "CREATE TABLE agentwatch.calls ({}) ENGINE = ReplacingMergeTree() ORDER BY (session_id, call_seq)",
        old.join(", ")
    ))
    .unwrap();
    let daemon = Daemon::with_config(
        "export",
        &format!("{}[actions]\nfiles = true\n", clickhouse_config(&ch)),
    );
    let mock = Mock::start(&[]);
    let pid = chat(&mock, "ch-match", 3);
    daemon.wait_for("3 calls and the ledger row", |c, l| {
        c.iter().filter(|c| u(&c["pid"]) == pid as u64).count() == 3
            && l.iter().any(|r| u(&r["root_pid"]) == pid as u64)
    });
    assert_all_rows_once(&daemon, &ch);

    let row = daemon
        .ledger()
        .into_iter()
        .find(|r| u(&r["root_pid"]) == pid as u64)
        .unwrap();
    let sid = row["session_id"].as_str().unwrap().to_string();
    // Call rows: same columns, same values as calls.jsonl.
    let ch_calls = ch.rows(&format!(
        "SELECT * FROM agentwatch.calls FINAL WHERE session_id = '{sid}' ORDER BY call_seq"
    ));
    let jsonl: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["session_id"] == sid.as_str())
        .collect();
    assert_eq!(ch_calls.len(), 3);
    for (c, j) in ch_calls.iter().zip(&jsonl) {
        for (key, want) in j.as_object().unwrap() {
            let Some(got) = c.get(key) else {
                // Session header fields live in the sessions table.
                assert!(
                    key.starts_with("root_") || key == "session_started_at",
                    "calls.jsonl has a field `{key}` the ClickHouse calls table lacks: declare it with its ClickHouse type in the `row_schema!` of agentwatch/src/sessions/rows.rs"
                );
                continue;
            };
            // 18.16's JSONEachRow quotes 64-bit integers; compare as text.
            let norm = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => u8::from(*b).to_string(),
                Value::Null => "null".into(),
                other => other.to_string(),
            };
            if key == "cost_usd" {
                let g: f64 = norm(got).parse().unwrap();
                assert!(approx(g, want.as_f64().unwrap()), "cost {got} vs {want}");
            } else {
                assert_eq!(norm(got), norm(want), "column {key}");
            }
        }
        assert_eq!(
            c["call_id"].as_str().unwrap(),
            format!("{sid}:{}", u(&j["call_seq"]))
        );
    }
    let s = &ch.rows(&format!(
        "SELECT * FROM agentwatch.sessions FINAL WHERE session_id = '{sid}'"
    ))[0];
    for key in [
        "total_tokens",
        "call_count",
        "input_tokens",
        "output_tokens",
    ] {
        assert_eq!(
            s[key].to_string().trim_matches('"'),
            row[key].to_string(),
            "{key}"
        );
    }
    assert_eq!(s["outcome"], row["outcome"]);
    assert_eq!(s["models"], row["models"]);

    // Tool runs: the actions table holds the rows of actions.jsonl, column for column.
    let written = scratch.0.join("ch-written.txt");
    let (agent, _) = run_client({
        let mut c = py_client(
            "tree_agent.py",
            &mock,
            &["--calls", "1", "--tag", "ch-tools"],
        );
        c.arg("--child").arg(format!(
            "bash -c 'exit 4'; echo x > {0}; echo y >> {0}; true",
            written.display()
        ));
        c
    });
    daemon.wait_for("the tool agent's ledger row", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == agent as u64)
    });
    let tsid = daemon
        .ledger()
        .into_iter()
        .find(|r| u(&r["root_pid"]) == agent as u64)
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut want: Vec<Value> = read_jsonl(&daemon.data_dir.join("actions.jsonl"))
        .into_iter()
        .filter(|r| r["session_id"] == tsid.as_str() && r["kind"] == "tool_run")
        .collect();
    want.sort_by_key(|r| u(&r["pid"]));
    assert_eq!(want.len(), 2, "the shell and the program it ran: {want:#?}");
    let query = format!(
        "SELECT * FROM agentwatch.actions FINAL WHERE session_id = '{tsid}' AND kind = 'tool_run' ORDER BY pid"
    );
    wait_until(
        "the tool runs in ClickHouse",
        30,
        || ch.rows(&query).len() == 2,
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let got = ch.rows(&query);
    let norm = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    };
    for (g, w) in got.iter().zip(&want) {
        for (key, value) in w.as_object().unwrap() {
            let column = g
                .get(key)
                .unwrap_or_else(|| panic!("no column {key} in {g:#}"));
            if key == "duration_ms" {
                let d: f64 = norm(column).parse().unwrap();
                assert!(
                    approx(d, value.as_f64().unwrap()),
                    "{key}: {column} / {value}"
                );
            } else {
                assert_eq!(norm(column), norm(value), "column {key}");
            }
        }
    }
    assert!(got.iter().any(|g| norm(&g["exit_code"]) == "4"), "{got:#?}");
    // Hosts: the same table, `kind = 'host'`, one row per destination of actions.jsonl.
    let host_key = |r: &Value| {
        (
            norm(&r["address"]),
            norm(&r["port"]),
            norm(&r["pid"]),
            norm(&r["tool"]),
            norm(&r["agent_pid"]),
        )
    };
    let mut want_hosts: Vec<_> = read_jsonl(&daemon.data_dir.join("actions.jsonl"))
        .iter()
        .filter(|r| r["session_id"] == tsid.as_str() && r["kind"] == "host")
        .map(host_key)
        .collect();
    want_hosts.sort();
    assert!(
        want_hosts
            .iter()
            .any(|h| h.1 == mock.port.to_string() && h.2 == agent.to_string()),
        "the agent's connection to the mock: {want_hosts:#?}"
    );
    let host_query = format!(
        "SELECT * FROM agentwatch.actions FINAL WHERE session_id = '{tsid}' AND kind = 'host'"
    );
    wait_until(
        "the host rows in ClickHouse",
        30,
        || ch.rows(&host_query).len() == want_hosts.len(),
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let mut got_hosts: Vec<_> = ch.rows(&host_query).iter().map(host_key).collect();
    got_hosts.sort();
    assert_eq!(got_hosts, want_hosts);
    // Files: `kind = 'file'`, one row per path with its counts, as in actions.jsonl.
    let file_key = |r: &Value| -> Vec<String> {
        std::iter::once("path")
            .chain(FILE_COUNTS)
            .chain(["pid", "tool", "agent_pid"])
            .map(|k| norm(&r[k]))
            .collect()
    };
    let mut want_files: Vec<_> = read_jsonl(&daemon.data_dir.join("actions.jsonl"))
        .iter()
        .filter(|r| r["session_id"] == tsid.as_str() && r["kind"] == "file")
        .map(file_key)
        .collect();
    want_files.sort();
    let written_row = want_files
        .iter()
        .find(|f| f[0] == written.display().to_string())
        .unwrap_or_else(|| panic!("{} in actions.jsonl: {want_files:#?}", written.display()));
    // `>` then `>>`: opened for writing twice, created twice (O_CREAT), truncated once.
    assert_eq!(written_row[1..4], ["2", "2", "1"], "{written_row:?}");
    let file_query = format!(
        "SELECT * FROM agentwatch.actions FINAL WHERE session_id = '{tsid}' AND kind = 'file'"
    );
    wait_until(
        "the file rows in ClickHouse",
        30,
        || ch.rows(&file_query).len() == want_files.len(),
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let mut got_files: Vec<_> = ch.rows(&file_query).iter().map(file_key).collect();
    got_files.sort();
    assert_eq!(got_files, want_files);
    // The tool agent's own rows follow its tool runs: everything is delivered in the end.
    wait_until(
        "the spool delivered",
        30,
        || u(&sink_status(&daemon, "clickhouse")["spool"]["pending_rows"]) == 0,
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let status = sink_status(&daemon, "clickhouse");
    assert_eq!(status["ok"], true, "{status:#}");
}

#[test]
fn clickhouse_outage_and_daemon_restart_lose_and_duplicate_nothing() {
    let scratch = Scratch::new("clickhouse-outage");
    let mut ch = ClickHouse::start_in(&scratch.0.join("ch"));
    let daemon = Daemon::with_config("export", &clickhouse_config(&ch));
    let mock = Mock::start(&[]);
    let first = chat(&mock, "ch-before", 2);
    daemon.wait_for("the first session", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == first as u64)
    });
    assert_all_rows_once(&daemon, &ch);

    // ClickHouse goes down; the daemon keeps accounting and spools.
    ch.stop();
    let during = chat(&mock, "ch-during", 3);
    daemon.wait_for("the session during the outage", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == during as u64)
    });
    wait_until(
        "the outage in status",
        30,
        || {
            let s = sink_status(&daemon, "clickhouse");
            s["ok"] == false && u(&s["spool"]["pending_rows"]) >= 4
        },
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let st = daemon.cli_json(&["status"]);
    assert_eq!(st["pipeline"]["sink_errors"], 0, "{st:#}");

    // The daemon dies with a non-empty spool and comes back.
    let daemon = restart(daemon);
    let s = sink_status(&daemon, "clickhouse");
    assert!(u(&s["spool"]["pending_rows"]) >= 4, "{s:#}");
    let after = chat(&mock, "ch-after-restart", 1);
    daemon.wait_for("the session after the restart", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == after as u64)
    });

    // ClickHouse comes back: everything arrives, once.
    ch.start();
    assert_all_rows_once(&daemon, &ch);
    wait_until(
        "an empty spool",
        30,
        || u(&sink_status(&daemon, "clickhouse")["spool"]["pending_rows"]) == 0,
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let s = sink_status(&daemon, "clickhouse");
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(u(&s["spool"]["overflow_rows"]), 0, "{s:#}");
    let raw: u64 = ch
        .query("SELECT count() FROM agentwatch.calls")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "calls.jsonl {} rows; ClickHouse {} rows before merges, {} with FINAL",
        daemon.calls().len(),
        raw,
        ch_call_ids(&ch).len()
    );
}

/// The root's command line for tree_agent.py with `children`.
fn tree_agent(mock: &Mock, tag: &str, children: &[String]) -> String {
    let mut s = format!(
        "{} {} --base-url {} --ca {} --calls 1 --tag {tag}",
        python().display(),
        clients().join("tree_agent.py").display(),
        mock.base_url(),
        mock.ca.display()
    );
    for c in children {
        s.push_str(&format!(" --child \"{}\"", c.replace('"', "\\\"")));
    }
    s
}

#[test]
fn otlp_grpc_span_tree_of_an_agent_tree() {
    let receiver = OtlpReceiver::start();
    let daemon = Daemon::with_config(
        "export",
        &format!(
            "[sinks.otlp]\nendpoint = \"{}\"\nprotocol = \"grpc\"\nmetrics_interval_secs = 1\n",
            receiver.grpc_endpoint()
        ),
    );
    let mock = Mock::start(&[]);
    // root → bash → a → bash → a1, and root → bash → b.
    let a1 = tree_agent(&mock, "otlp-a1", &[]);
    let a = tree_agent(&mock, "otlp-a", &[a1]);
    // b runs a tool: a shell that runs a program exiting 2.
    let b = tree_agent(&mock, "otlp-b", &["bash -c 'exit 2'; true".to_string()]);
    let root_cmd = tree_agent(&mock, "otlp-root", &[a, b]);
    let (root_pid, _) = run_client({
        let mut c = Command::new("bash");
        c.args(["-c", &format!("exec {root_cmd}")]);
        c
    });
    let row = daemon.ledger_row_of(root_pid);
    let sid = row["session_id"].as_str().unwrap().to_string();
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["session_id"] == sid.as_str())
        .collect();
    assert_eq!(calls.len(), 4);
    let spans_of = |r: &OtlpReceiver| -> Vec<RecordedSpan> {
        let mut seen = BTreeSet::new();
        r.spans()
            .into_iter()
            .filter(|s| s.trace_id == sid && seen.insert(s.span_id.clone()))
            .collect()
    };
    // Tool spans besides b's shells: the SDK runs `uname` while a sub-agent starts.
    let count = |spans: &[RecordedSpan]| {
        let n = |p: &dyn Fn(&RecordedSpan) -> bool| spans.iter().filter(|s| p(s)).count();
        (
            n(&|s| s.name.starts_with("invoke_agent ")),
            n(&|s| s.str("gen_ai.operation.name") == Some("chat")),
            n(&|s| s.name == "execute_tool bash"),
        )
    };
    wait_until(
        "the session's spans (4 agents, 4 calls, 2 shells)",
        30,
        || count(&spans_of(&receiver)) == (4, 4, 2),
        || {
            format!(
                "{:#?}\n{:#}",
                spans_of(&receiver),
                sink_status(&daemon, "otlp")
            )
        },
    );
    let spans = spans_of(&receiver);
    assert_eq!(count(&spans), (4, 4, 2), "{spans:#?}");
    // Every tool span is a child of an agent span of the session.
    let tool_spans: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| s.str("gen_ai.operation.name") == Some("execute_tool"))
        .collect();
    assert_eq!(
        spans.len(),
        8 + tool_spans.len(),
        "nothing but agents, calls and tools: {spans:#?}"
    );
    let by_id: HashMap<&str, &RecordedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let agents: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| s.name.starts_with("invoke_agent "))
        .collect();
    let call_spans: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| s.str("gen_ai.operation.name") == Some("chat"))
        .collect();
    assert_eq!((agents.len(), call_spans.len()), (4, 4), "{spans:#?}");
    let agent_of_pid: BTreeMap<i64, &RecordedSpan> = agents
        .iter()
        .map(|s| (s.int("process.pid").expect("process.pid is an int"), *s))
        .collect();
    let root = agent_of_pid[&(root_pid as i64)];
    assert!(
        root.parent_span_id.is_empty(),
        "the root span has no parent"
    );
    assert_eq!(root.int("agent.depth"), Some(0));
    // Every sub-agent's parent is its parent agent's span; depth grows by one.
    for a in &agents {
        if a.span_id == root.span_id {
            continue;
        }
        let parent = by_id
            .get(a.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("parent of {a:#?} not received"));
        assert!(parent.name.starts_with("invoke_agent "));
        assert_eq!(
            a.int("agent.depth").unwrap(),
            parent.int("agent.depth").unwrap() + 1,
            "{a:#?} under {parent:#?}"
        );
        assert_eq!(a.str("agent.parent_session"), Some(sid.as_str()));
    }
    let depths: Vec<i64> = agents
        .iter()
        .map(|a| a.int("agent.depth").unwrap())
        .collect();
    assert_eq!(depths.iter().filter(|d| **d == 1).count(), 2, "{depths:?}");
    assert_eq!(depths.iter().filter(|d| **d == 2).count(), 1, "{depths:?}");
    // The tool runs: `execute_tool bash` under b's agent span (depth 1), the inner shell's
    // exit 2 as its error.
    for t in &tool_spans {
        let agent = by_id
            .get(t.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("agent of {t:#?} not received"));
        assert!(agent.name.starts_with("invoke_agent "), "{agent:#?}");
    }
    let tools: Vec<&&RecordedSpan> = tool_spans
        .iter()
        .filter(|s| s.name == "execute_tool bash")
        .collect();
    for t in &tools {
        assert_eq!(t.name, "execute_tool bash");
        assert_eq!(t.str("gen_ai.tool.name"), Some("bash"));
        assert_eq!(t.str("session.id"), Some(sid.as_str()));
        let agent = by_id
            .get(t.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("agent of {t:#?} not received"));
        assert!(agent.name.starts_with("invoke_agent "), "{agent:#?}");
        assert_eq!(agent.int("agent.depth"), Some(1));
        assert_eq!(t.int("agent.depth"), Some(1));
        assert_eq!(t.int("process.parent_pid"), agent.int("process.pid"));
        assert!(t.start > 0 && t.end >= t.start);
    }
    let failed: Vec<_> = tools.iter().filter_map(|t| t.str("error.type")).collect();
    assert_eq!(failed, vec!["exit 2"], "{tools:#?}");
    // Every call span: child of its process's agent span, GenAI attributes, integers as integers.
    for s in &call_spans {
        let pid = s.int("process.pid").expect("process.pid");
        assert_eq!(s.parent_span_id, agent_of_pid[&pid].span_id, "{s:#?}");
        assert_eq!(s.kind, 3, "CLIENT");
        assert_eq!(s.name, "chat gpt-4o-mini");
        let c = calls
            .iter()
            .find(|c| u(&c["pid"]) as i64 == pid)
            .unwrap_or_else(|| panic!("no call of pid {pid}"));
        for (attr, field) in [
            ("gen_ai.usage.input_tokens", "input_tokens"),
            ("gen_ai.usage.output_tokens", "output_tokens"),
            ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
            (
                "gen_ai.usage.cache_creation.input_tokens",
                "cache_write_tokens",
            ),
            ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"),
            ("agent.depth", "depth"),
        ] {
            assert_eq!(s.int(attr), Some(u(&c[field]) as i64), "{attr} of {s:#?}");
        }
        assert_eq!(s.str("gen_ai.provider.name"), Some("openai"));
        assert_eq!(s.str("gen_ai.request.model"), Some("gpt-4o-mini"));
        assert!(s.str("gen_ai.response.id").is_some(), "{s:#?}");
        assert!(s.str("gen_ai.response.model").is_some(), "{s:#?}");
        assert_eq!(s.str("server.address"), Some("127.0.0.1"));
        assert_eq!(s.str("session.id"), Some(sid.as_str()));
        assert!(s.str("process.executable.name").is_some());
        assert!(s.attributes.contains_key("gen_ai.request.stream"));
        assert!(s.attributes.contains_key("agentwatch.cost.usd"));
        assert!(!s.attributes.contains_key("gen_ai.agent.id"));
        assert!(s.start > 0 && s.end >= s.start);
        assert_eq!(
            s.resource.get("service.name").map(String::as_str),
            Some("agentwatch")
        );
        assert!(s.resource.contains_key("host.name"));
    }
    // Metrics arrive too.
    wait_until(
        "token usage metrics",
        30,
        || {
            receiver
                .metrics()
                .iter()
                .any(|m| m.name == "gen_ai.client.token.usage")
        },
        || format!("{:#}", sink_status(&daemon, "otlp")),
    );
    let names: BTreeSet<String> = receiver.metrics().iter().map(|m| m.name.clone()).collect();
    for want in ["gen_ai.client.operation.duration", "agentwatch.cost"] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }
    // The daemon's own counters: kernel drops, pipeline and the sink's spool.
    for prefix in [
        "agentwatch.daemon.kernel_drops.",
        "agentwatch.daemon.pipeline.",
        "agentwatch.daemon.sinks.spool.pending_rows",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* in {names:?}"
        );
    }
    let st = sink_status(&daemon, "otlp");
    assert_eq!(st["ok"], true, "{st:#}");
}

#[test]
fn otlp_http_receiver_down_counts_drops_then_delivers_the_spool() {
    let (grpc_port, http_port, prom_port) = (free_port(), free_port(), free_port());
    // Nothing listens yet; a small spool overflows.
    let daemon = Daemon::with_config(
        "export",
        &format!(
            "[sinks.otlp]\nendpoint = \"http://127.0.0.1:{http_port}/\"\nprotocol = \"http/protobuf\"\nmetrics_interval_secs = 1\nspool_max_bytes = 6000\n[metrics]\nprometheus = true\nlisten = \"127.0.0.1:{prom_port}\"\n"
        ),
    );
    let mock = Mock::start(&[]);
    let pid = chat(&mock, "otlp-down", 8);
    daemon.wait_for("8 calls and the ledger row", |c, l| {
        c.iter().filter(|c| u(&c["pid"]) == pid as u64).count() == 8
            && l.iter().any(|r| u(&r["root_pid"]) == pid as u64)
    });
    // The daemon is unaffected: JSONL complete, no sink error; the drops are counted.
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["pipeline"]["sink_errors"], 0, "{status:#}");
    wait_until(
        "the failing receiver in status",
        30,
        || {
            let s = sink_status(&daemon, "otlp");
            s["ok"] == false && u(&s["failed_requests"]) > 0 && u(&s["metric_export_failures"]) > 0
        },
        || format!("{:#}", sink_status(&daemon, "otlp")),
    );
    let s = sink_status(&daemon, "otlp");
    let overflow = u(&s["spool"]["overflow_rows"]);
    let pending = u(&s["spool"]["pending_rows"]);
    assert!(overflow > 0, "the 6,000-byte spool overflowed: {s:#}");
    assert!(pending > 0, "{s:#}");
    assert!(
        s["last_error"].as_str().unwrap().contains("/v1/traces"),
        "{s:#}"
    );
    // The Prometheus endpoint shows the drops.
    let metrics = http_get(prom_port, "/metrics");
    assert!(
        metrics.contains("gen_ai_client_token_usage_bucket"),
        "{metrics}"
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with("agentwatch_daemon_sinks_spool_overflow_rows_total{name=\"otlp\"}"))
        .unwrap_or_else(|| panic!("no overflow gauge: {metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");

    // The receiver comes up: the spooled records are delivered.
    let receiver = OtlpReceiver::start_on(grpc_port, http_port);
    wait_until(
        "the spool delivered",
        60,
        || u(&sink_status(&daemon, "otlp")["spool"]["pending_rows"]) == 0,
        || format!("{:#}", sink_status(&daemon, "otlp")),
    );
    let spans = receiver.spans();
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert!(
        ids.len() as u64 >= pending,
        "{} distinct spans for {pending} spooled records",
        ids.len()
    );
    assert!(receiver.with(|r| r.http_requests) > 0 && receiver.with(|r| r.http_rejected) == 0);
    let s = sink_status(&daemon, "otlp");
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(u(&s["spool"]["overflow_rows"]), overflow, "{s:#}");
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// A receiver that refuses the batch itself (HTTP 400) is not retried forever: the batch is
/// parked beside the spool, counted, its error shown, and delivery goes on with what follows.
#[test]
fn a_batch_refused_for_good_is_parked_and_delivery_goes_on() {
    let receiver = OtlpReceiver::start();
    receiver.refuse_spans(true);
    let daemon = Daemon::with_config(
        "export",
        &format!(
            "[sinks.otlp]\nendpoint = \"{}\"\nprotocol = \"http/protobuf\"\n",
            receiver.http_endpoint()
        ),
    );
    let mock = Mock::start(&[]);
    let refused = chat(&mock, "otlp-refused", 2);
    daemon.wait_for("the refused session's ledger row", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == refused as u64)
    });
    wait_until(
        "the refused batches parked",
        30,
        || {
            let s = sink_status(&daemon, "otlp");
            u(&s["parked_records"]) >= 3 && u(&s["spool"]["pending_rows"]) == 0
        },
        || format!("{:#}", sink_status(&daemon, "otlp")),
    );
    let s = sink_status(&daemon, "otlp");
    assert!(
        s["last_permanent_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{s:#}"
    );
    let parked = daemon.data_dir.join("spool/otlp/parked.jsonl");
    let lines = std::fs::read_to_string(&parked)
        .unwrap_or_else(|e| panic!("{}: {e}", parked.display()))
        .lines()
        .count() as u64;
    assert_eq!(lines, u(&s["parked_records"]), "{s:#}");
    assert!(receiver.with(|r| r.refused) >= 1);
    // The receiver takes batches again: the next session's spans arrive (nothing is stuck
    // behind the refused batch).
    receiver.refuse_spans(false);
    let next = chat(&mock, "otlp-after-refusal", 1);
    daemon.wait_for("the next session's ledger row", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == next as u64)
    });
    wait_until(
        "the next session's spans",
        30,
        || {
            receiver
                .spans()
                .iter()
                .any(|sp| sp.int("process.pid") == Some(next as i64))
        },
        || format!("{:#}", sink_status(&daemon, "otlp")),
    );
}

/// A cluster budget: another node's calls of the budget, in ClickHouse as that node's daemon
/// writes them, count toward this node's pot (read every second), so this node's session is
/// stopped after the call that brings the cluster over the budget.
#[test]
fn a_cluster_budget_counts_other_nodes_calls_from_clickhouse() {
    let scratch = Scratch::new("cluster-budget");
    let ch = ClickHouse::start_in(&scratch.0.join("ch"));
    let daemon = Daemon::with_config(
        "export",
        &format!(
            "{}[ceilings]\ncluster_refresh_secs = 1\n\
         [[session_roots]]\nname = \"team-x\"\nmatch_cmdline = \"cluster-budget-run\"\n\
         budget_usd_per_day = 0.5\ncluster = true\naction = \"kill\"\n",
            clickhouse_config(&ch)
        ),
    );
    let mock = Mock::start(&[]);
    // A call outside the budget, to copy its ClickHouse row's shape.
    let pid = chat(&mock, "cluster-warmup", 1);
    wait_until(
        "the warm-up row in ClickHouse",
        60,
        || {
            !ch.rows(&format!("SELECT * FROM agentwatch.calls WHERE pid = {pid}"))
                .is_empty()
        },
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
    let mut row = ch
        .rows(&format!("SELECT * FROM agentwatch.calls WHERE pid = {pid}"))
        .remove(0);
    assert!(row["budget"].is_null(), "{row}");
    // Node 2's call of the budget: $0.40.
    row["host"] = "node-2".into();
    row["session_id"] = "node-2-session".into();
    row["call_id"] = "node-2-session:1".into();
    row["budget"] = "team-x".into();
    row["cost_usd"] = 0.40.into();
    ch.query(&format!(
        "INSERT INTO agentwatch.calls FORMAT JSONEachRow {row}"
    ))
    .unwrap();
    wait_until(
        "node 2's spend read",
        30,
        || {
            let b = &daemon.cli_json(&["status"])["ceilings"]["budgets"][0];
            b["others"]["others_usd"].as_f64() == Some(0.40)
        },
        || format!("{:#}", daemon.cli_json(&["status"])["ceilings"]),
    );
    // $0.15 a call: the first brings the cluster to $0.55, the second never leaves.
    let usage = r#"{"input_tokens":1000000,"output_tokens":0}"#;
    let mut child = py_client(
        "openai_chat.py",
        &mock,
        &[
            "--calls",
            "5",
            "--tag",
            "cluster-budget-run",
            "--usage",
            usage,
            "--model",
            "gpt-4o-mini",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let run_pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(mock.served_with_tag("cluster-budget-run").len(), 1);
    daemon.wait_for("the run's ledger row", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == run_pid as u64)
    });
    let ledger = daemon.ledger();
    let led = ledger
        .iter()
        .find(|r| u(&r["root_pid"]) == run_pid as u64)
        .unwrap();
    assert_eq!(led["outcome"], "killed", "{led}");
    let budget = &daemon.cli_json(&["status"])["ceilings"]["budgets"][0];
    assert_eq!(budget["cluster"], true, "{budget}");
    assert!(
        (budget["usd_last_24h"].as_f64().unwrap() - 0.55).abs() < 1e-9,
        "{budget}"
    );
    // This node's call went to ClickHouse with its budget, for the other nodes to read.
    wait_until(
        "this node's budget row in ClickHouse",
        60,
        || {
            !ch.rows(&format!(
                "SELECT * FROM agentwatch.calls WHERE pid = {run_pid} AND budget = 'team-x' AND blocked = 0"
            ))
            .is_empty()
        },
        || format!("{:#}", sink_status(&daemon, "clickhouse")),
    );
}
