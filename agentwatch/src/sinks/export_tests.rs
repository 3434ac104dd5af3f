//! Unit tests of the export side: spool durability, span building, DDL and row mapping,
//! metrics rendering, config.

use std::collections::HashMap;

use ::clickhouse::Row as _;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_proto::tonic::trace::v1::{Span, span};

use super::clickhouse::{ACTION_COLUMNS, CALL_COLUMNS, CallRow, SESSION_COLUMNS, SessionRow, ddl};
use super::destination::ExportItem;
use super::export::{AgentTracker, Fanout, SpoolWriter};
use super::spans::{agent_span_id, call_span, session_spans, trace_id};
use super::spool::Spool;
use super::*;
use crate::procs::test_support::TempDir;
use crate::sessions::tests::{S, call, cfg, fake_host, k, req};
use crate::sessions::{CeilingHit, Sessions};

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Av> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[test]
fn sinks_spool_commit_reopen_torn_tail_and_overflow() {
    let dir = TempDir::new("spool");
    let p = dir.path().join("spool");
    {
        let s = Spool::open(&p, 1 << 20).unwrap();
        for i in 0..5 {
            s.append(format!("rec-{i}").as_bytes()).unwrap();
        }
        let b = s.read_batch(2, u64::MAX).unwrap();
        assert_eq!(b.records, vec![b"rec-0".to_vec(), b"rec-1".to_vec()]);
        // Not committed: read again from the same place.
        assert_eq!(s.read_batch(2, u64::MAX).unwrap(), b);
        s.commit(&b).unwrap();
        assert_eq!(s.stats().pending_rows, 3);
        assert_eq!(s.stats().acknowledged_rows, 2);
    }
    // A crash mid-append leaves a torn line: repaired on open, never delivered.
    let seg = std::fs::read_dir(&p)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, b"half-a-rec").unwrap();
    drop(f);
    {
        let s = Spool::open(&p, 1 << 20).unwrap();
        let st = s.stats();
        assert_eq!((st.pending_rows, st.torn_lines_repaired), (3, 1));
        let b = s.read_batch(100, u64::MAX).unwrap();
        assert_eq!(
            b.records,
            vec![b"rec-2".to_vec(), b"rec-3".to_vec(), b"rec-4".to_vec()]
        );
        s.commit(&b).unwrap();
        assert!(s.read_batch(100, u64::MAX).unwrap().records.is_empty());
        s.append(b"rec-5").unwrap();
    }
    {
        let s = Spool::open(&p, 20).unwrap();
        assert_eq!(s.stats().pending_rows, 1);
        // Full: refused and counted, nothing else lost.
        s.append(b"0123456789").unwrap();
        assert!(matches!(
            s.append(b"0123456789"),
            Err(spool::SpoolError::Full { .. })
        ));
        assert_eq!(s.stats().overflow_rows, 1);
        let b = s.read_batch(100, u64::MAX).unwrap();
        assert_eq!(b.records, vec![b"rec-5".to_vec(), b"0123456789".to_vec()]);
        s.commit(&b).unwrap();
        assert_eq!(s.stats().pending_bytes, 0);
    }
}

#[test]
fn sinks_spool_rotates_segments_and_deletes_acknowledged_ones() {
    let dir = TempDir::new("spoolrot");
    let p = dir.path().join("spool");
    let s = Spool::open(&p, 1 << 30).unwrap();
    let rec = vec![b'x'; 1 << 20];
    for _ in 0..20 {
        s.append(&rec).unwrap();
    }
    let segs = || {
        std::fs::read_dir(&p)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    assert!(segs() >= 2);
    let mut got = 0;
    for _ in 0..100 {
        let b = s.read_batch(3, u64::MAX).unwrap();
        if b.records.is_empty() {
            break;
        }
        got += b.records.len();
        s.commit(&b).unwrap();
    }
    assert_eq!(got, 20);
    assert_eq!(segs(), 1);
    drop(s);
    let s = Spool::open(&p, 1 << 30).unwrap();
    assert_eq!(s.stats().pending_rows, 0);
    assert!(s.read_batch(10, u64::MAX).unwrap().records.is_empty());
}

/// A session of three agents (100 root, 300 child, 500 grandchild) and its ledger row.
fn tree_session() -> (Vec<crate::sessions::CallRecord>, crate::sessions::LedgerRow) {
    let (_fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let mut calls = Vec::new();
    for (i, key) in [k(100, 100), k(300, 300), k(500, 500), k(100, 100)]
        .into_iter()
        .enumerate()
    {
        let t = (i as u64 + 1) * 2 * S;
        calls.push(s.on_call(
            &tree,
            key,
            &call(
                req("openai", Some("gpt-4o-mini"), t),
                10 + i as u64,
                5,
                t + S,
            ),
            Some(0.25),
        ));
    }
    let mut rows = Vec::new();
    for pid in [250, 200, 300, 400, 500, 100] {
        rows.extend(s.on_removed(&tree.on_exit(pid), 60 * S));
    }
    assert_eq!(rows.len(), 1);
    (calls, rows.remove(0))
}

#[test]
fn sinks_spans_form_the_agent_tree_with_typed_attributes() {
    let (calls, row) = tree_session();
    let sid = row.session_id.clone();
    let mut tracker = AgentTracker::new(16);
    for c in &calls {
        tracker.observe(c);
    }
    tracker.hit(&CeilingHit {
        session_id: sid.clone(),
        host: "h".into(),
        pid: 500,
        pid_start_ticks: 500,
        ceiling: "session_usd".into(),
        limit: 0.5,
        value: 0.75,
        action: "observe".into(),
        at: calls[2].ended_at.clone(),
    });
    let close = tracker.close(&row);
    assert_eq!(tracker.open_sessions(), 0);
    let agents = session_spans(&close);
    assert_eq!(agents.len(), 3);
    let root = &agents[0];
    assert_eq!(root.trace_id, trace_id(&sid));
    assert_eq!(hex(&root.trace_id), sid);
    assert!(root.parent_span_id.is_empty());
    assert!(root.name.starts_with("invoke_agent "), "{}", root.name);
    assert_eq!(root.span_id, agent_span_id(&sid, 100, 100));
    let by_pid: HashMap<i64, &Span> = agents
        .iter()
        .map(|s| match attr(s, "process.pid") {
            Some(Av::IntValue(p)) => (*p, s),
            other => panic!("process.pid not an int: {other:?}"),
        })
        .collect();
    assert_eq!(by_pid[&300].parent_span_id, root.span_id);
    assert_eq!(by_pid[&500].parent_span_id, by_pid[&300].span_id);
    assert_eq!(attr(by_pid[&500], "agent.depth"), Some(&Av::IntValue(2)));
    assert_eq!(by_pid[&500].events.len(), 1);
    assert_eq!(by_pid[&500].events[0].name, "agentwatch.ceiling_hit");
    assert!(root.start_time_unix_nano > 0 && root.end_time_unix_nano >= root.start_time_unix_nano);

    for c in &calls {
        let s = call_span(c);
        assert_eq!(s.name, "chat gpt-4o-mini");
        assert_eq!(s.kind, span::SpanKind::Client as i32);
        assert_eq!(s.trace_id, root.trace_id);
        assert_eq!(s.parent_span_id, by_pid[&i64::from(c.pid)].span_id);
        assert_eq!(
            attr(&s, "gen_ai.usage.input_tokens"),
            Some(&Av::IntValue(c.input_tokens as i64))
        );
        assert_eq!(
            attr(&s, "gen_ai.operation.name"),
            Some(&Av::StringValue("chat".into()))
        );
        assert_eq!(
            attr(&s, "gen_ai.provider.name"),
            Some(&Av::StringValue("openai".into()))
        );
        assert_eq!(attr(&s, "session.id"), Some(&Av::StringValue(sid.clone())));
        assert_eq!(
            attr(&s, "agentwatch.cost.usd"),
            Some(&Av::DoubleValue(0.25))
        );
        assert_eq!(
            attr(&s, "gen_ai.request.stream"),
            Some(&Av::BoolValue(c.streaming))
        );
        assert!(attr(&s, "gen_ai.agent.id").is_none());
        // Deterministic: the same row gives the same ids.
        assert_eq!(call_span(c).span_id, s.span_id);
    }
    let ids: std::collections::HashSet<Vec<u8>> =
        calls.iter().map(|c| call_span(c).span_id).collect();
    assert_eq!(ids.len(), calls.len());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn sinks_clickhouse_ddl_matches_rows_and_old_servers() {
    fn names(c: &[(&'static str, &'static str)]) -> Vec<&'static str> {
        c.iter().map(|(n, _)| *n).collect()
    }
    assert_eq!(CallRow::COLUMN_NAMES, names(CALL_COLUMNS).as_slice());
    assert_eq!(SessionRow::COLUMN_NAMES, names(SESSION_COLUMNS).as_slice());
    assert_eq!(
        crate::sessions::actions::ToolRunRow::COLUMN_NAMES,
        names(ACTION_COLUMNS).as_slice()
    );
    let stmts = ddl("agentwatch", "calls", "sessions", "actions");
    assert_eq!(stmts.len(), 4);
    for s in &stmts {
        for banned in [
            "DateTime64",
            "Bool",
            "LowCardinality",
            "TTL",
            "CODEC",
            "JSON",
            "Map(",
        ] {
            assert!(!s.contains(banned), "{banned} is unknown to 18.16: {s}");
        }
    }
    assert!(stmts[1].contains("ReplacingMergeTree() ORDER BY (session_id, call_seq)"));
    assert!(stmts[2].contains("ReplacingMergeTree() ORDER BY session_id"));
    assert!(stmts[3].contains("ORDER BY (session_id, kind, pid, pid_start_ticks, address, port)"));
    // A table from an older version gets the columns it lacks.
    let have = vec!["call_id".to_string(), "session_id".to_string()];
    let alter = super::clickhouse::missing_columns("agentwatch", "calls", CALL_COLUMNS, &have);
    assert_eq!(alter.len(), CALL_COLUMNS.len() - 2);
    assert_eq!(
        alter[0],
        "ALTER TABLE `agentwatch`.`calls` ADD COLUMN `pid` UInt32"
    );
    let all: Vec<String> = CALL_COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
    assert!(
        super::clickhouse::missing_columns("agentwatch", "calls", CALL_COLUMNS, &all).is_empty()
    );

    // Every JSONL column of a call / ledger row is a ClickHouse column with the same value.
    let (calls, row) = tree_session();
    let c = &calls[1];
    let jsonl = serde_json::to_value(c).unwrap();
    let ch = serde_json::to_value(CallRow::from(c)).unwrap();
    for (name, ty) in CALL_COLUMNS {
        if *name == "call_id" {
            assert_eq!(ch[name], format!("{}:{}", c.session_id, c.call_seq));
            continue;
        }
        let want = match jsonl.get(*name) {
            Some(serde_json::Value::Bool(b)) => serde_json::json!(u8::from(*b)),
            Some(v) => v.clone(),
            // `blocked` is absent from rows written before it existed: false.
            None if *name == "blocked" => serde_json::json!(0),
            // Optional labels (container, pod, namespace pid) are left out when absent.
            None if ty.starts_with("Nullable") => serde_json::Value::Null,
            None => panic!("calls.jsonl has no field {name}"),
        };
        assert_eq!(ch[name], want, "column {name}");
    }
    let jsonl = serde_json::to_value(&row).unwrap();
    let ch = serde_json::to_value(SessionRow::from(&row)).unwrap();
    for (name, _) in SESSION_COLUMNS {
        let want = jsonl.get(*name).cloned().unwrap_or(serde_json::Value::Null);
        assert_eq!(ch[name], want, "column {name}");
    }
}

#[test]
fn sinks_fanout_spools_calls_and_closed_sessions() {
    let dir = TempDir::new("fanout");
    let data = dir.path().join("data");
    let spool = std::sync::Arc::new(Spool::open(&data.join("spool/otlp"), 1 << 20).unwrap());
    let status = std::sync::Arc::new(export::DestStatus::new("otlp", "t".into(), spool.clone()));
    let metrics = std::sync::Arc::new(metrics::Metrics::new(100));
    let mut f = Fanout {
        jsonl: JsonlSink::open(&data).unwrap(),
        writers: vec![SpoolWriter::new(status.clone(), Some(AgentTracker::new(8)))],
        metrics: Some(metrics.clone()),
    };
    let (calls, row) = tree_session();
    // The first call was spooled by a previous run: the tracker learns it from recovery.
    f.seed(&crate::sessions::RecoveredSessions {
        open: vec![(row.session_id.clone(), vec![calls[0].clone()])],
        closed_this_boot: Vec::new(),
        ..Default::default()
    });
    for c in &calls[1..] {
        f.write_call(c).unwrap();
    }
    f.write_ledger(&row).unwrap();
    let b = spool.read_batch(100, u64::MAX).unwrap();
    let items: Vec<ExportItem> = b
        .records
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    assert_eq!(items.len(), 4);
    match &items[3] {
        ExportItem::Session(s) => {
            assert_eq!(s.ledger, row);
            assert_eq!(s.agents.len(), 3);
            let root = s.agents.iter().find(|a| a.pid == 100).unwrap();
            assert_eq!(root.calls, 2);
        }
        other => panic!("{other:?}"),
    }
    let text = metrics.prometheus();
    assert!(
        text.contains("gen_ai_client_token_usage_count{gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o-mini\",gen_ai_operation_name=\"chat\",gen_ai_token_type=\"input\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("agentwatch_sessions_closed_total{agentwatch_outcome=\"completed\"} 1"),
        "{text}"
    );
    let otlp = metrics.otlp();
    assert!(
        otlp.iter()
            .any(|m| m.name == "gen_ai.client.operation.duration")
    );
}

#[test]
fn sinks_config_keys_and_defaults() {
    let c: crate::config::Config = toml::from_str(
        r#"
[sinks.clickhouse]
url = "http://127.0.0.1:8123"
database = "agentwatch"
validation = false
[sinks.otlp]
endpoint = "http://127.0.0.1:4318"
protocol = "http/protobuf"
[metrics]
prometheus = true
"#,
    )
    .unwrap();
    let ch = c.sinks.clickhouse.unwrap();
    assert!(!ch.validation);
    assert_eq!(
        (ch.calls_table.as_str(), ch.sessions_table.as_str()),
        ("calls", "sessions")
    );
    let o = c.sinks.otlp.unwrap();
    assert_eq!(o.protocol, config::OtlpProtocol::HttpProtobuf);
    assert!(c.metrics.prometheus);
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9464");
    let d: crate::config::Config = toml::from_str("").unwrap();
    assert!(d.sinks.clickhouse.is_none() && d.sinks.otlp.is_none() && !d.metrics.prometheus);
    assert!(
        toml::from_str::<crate::config::Config>("[sinks.otlp]\nprotocol = \"json\"\n").is_err()
    );
    assert!(toml::from_str::<crate::config::Config>("[sinks.clickhouse]\nurll = \"x\"\n").is_err());
}

#[test]
fn sinks_spans_carry_container_and_pod_labels() {
    let (calls, row) = tree_session();
    let mut c = calls[0].clone();
    assert!(
        attr(&call_span(&c), "k8s.pod.name").is_none(),
        "none on the host"
    );
    c.workload = crate::workloads::Workload {
        container_id: Some("c0".into()),
        container_runtime: Some("containerd".into()),
        pod_uid: Some("u1".into()),
        pod_name: Some("summarizer-0".into()),
        pod_namespace: Some("team-a".into()),
    };
    let s = call_span(&c);
    let text = |k| match attr(&s, k) {
        Some(Av::StringValue(v)) => v.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("k8s.pod.name"), "summarizer-0");
    assert_eq!(text("k8s.namespace.name"), "team-a");
    assert_eq!(text("k8s.pod.uid"), "u1");
    assert_eq!(text("container.id"), "c0");
    // The session's root span carries the ledger row's labels.
    let mut row = row;
    row.workload = c.workload.clone();
    let close = super::spans::SessionClose {
        ledger: row,
        agents: Vec::new(),
        ceiling_hits: Vec::new(),
        dropped: 0,
    };
    let spans = session_spans(&close);
    assert!(
        matches!(attr(&spans[0], "k8s.pod.name"), Some(Av::StringValue(v)) if v == "summarizer-0")
    );
}

#[test]
fn sinks_metrics_label_spend_by_namespace_and_opt_in_pod_within_the_series_bound() {
    let (calls, _) = tree_session();
    let in_pod = |pod: &str| {
        let mut c = calls[0].clone();
        c.cost_usd = Some(0.5);
        c.workload.pod_name = Some(pod.into());
        c.workload.pod_namespace = Some("team-a".into());
        c
    };
    // Default: the namespace, no pod.
    let m = metrics::Metrics::new(100);
    m.record_call(&in_pod("summarizer-0"));
    let text = m.prometheus();
    let line = text
        .lines()
        .find(|l| l.starts_with("agentwatch_cost_usd_total{"))
        .unwrap();
    assert!(line.contains("k8s_namespace_name=\"team-a\""), "{line}");
    assert!(!line.contains("k8s_pod_name"), "{line}");
    // Opted in: by pod, and the series beyond the bound are dropped and counted.
    let m = metrics::Metrics::new(3).with_pod_label(true);
    for pod in ["a-0", "a-1", "a-2", "a-3", "a-0"] {
        m.record_call(&in_pod(pod));
    }
    let text = m.prometheus();
    let pods: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("agentwatch_cost_usd_total{"))
        .collect();
    assert_eq!(pods.len(), 3, "{text}");
    assert!(
        pods.iter()
            .any(|l| l.contains("k8s_pod_name=\"a-0\"") && l.ends_with(" 1")),
        "{pods:?}"
    );
    assert!(m.series_dropped() >= 1);
    assert!(text.contains("\n# TYPE agentwatch_metrics_series_dropped_total counter\n"));
}

#[test]
fn sinks_status_shows_the_loop_counters_and_the_destination_own() {
    let dir = TempDir::new("status");
    let spool = std::sync::Arc::new(Spool::open(&dir.path().join("spool"), 1 << 20).unwrap());
    let counters = std::sync::Arc::new(otlp::OtlpCounters::default());
    counters
        .spans_sent
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    let status = export::DestStatus::new("otlp", "t".into(), spool.clone()).with_counters(counters);
    let v = status.to_json();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "name",
        "target",
        "ok",
        "ready",
        "delivered_records",
        "delivered_batches",
        "failed_requests",
        "bad_records",
        "spans_sent",
        "spans_rejected",
        "metric_exports",
        "metric_export_failures",
        "tracker_dropped",
        "parked_records",
        "parked_over_cap",
        "last_permanent_error",
        "last_success_unix",
        "last_error",
        "spool",
    ] {
        assert!(keys.contains(&k), "{k} not in {keys:?}");
    }
    assert_eq!(v["spans_sent"], 7);
    assert_eq!(v["spool"]["pending_rows"], 0);
    assert!(v["last_error"].is_null());
    // ClickHouse has none of OTLP's.
    let ch = export::DestStatus::new("clickhouse", "t".into(), spool).to_json();
    assert!(ch.get("spans_sent").is_none(), "{ch:#}");
}

#[test]
fn sinks_clickhouse_column_types_are_those_of_the_fields() {
    use crate::sessions::{CallRecord, LedgerRow};
    for (name, declared, derived) in CallRecord::column_types_of_fields()
        .into_iter()
        .chain(LedgerRow::column_types_of_fields())
    {
        assert_eq!(declared, derived, "column {name}");
    }
}
