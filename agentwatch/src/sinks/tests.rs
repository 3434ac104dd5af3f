use std::io::Write;

use super::*;
use crate::procs::test_support::TempDir;
use crate::sessions::tests::{OFFSET, S, call, cfg, fake_host, k, req};
use crate::sessions::{LedgerRow, Sessions, session_id};

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn ledger(dir: &std::path::Path) -> Vec<LedgerRow> {
    lines(&dir.join("ledger.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn calls(dir: &std::path::Path) -> Vec<CallRecord> {
    lines(&dir.join("calls.jsonl"))
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn sinks_jsonl_appends_whole_lines_and_repairs_torn_tail() {
    let dir = TempDir::new("jsonl");
    let data = dir.path().join("data");
    let (_fake, tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let c1 = s.on_call(
        &tree,
        k(100, 100),
        &call(req("a", Some("m"), S), 3, 4, 2 * S),
        Some(0.5),
    );
    let c2 = s.on_call(
        &tree,
        k(100, 100),
        &call(req("a", Some("m"), 3 * S), 5, 6, 4 * S),
        None,
    );
    {
        let mut sink = JsonlSink::open(&data).unwrap();
        sink.write_call(&c1).unwrap();
        sink.write_call(&c2).unwrap();
        let h = sink.health();
        assert_eq!(
            (
                h.ok,
                h.calls_written,
                h.ledger_rows_written,
                h.torn_lines_repaired
            ),
            (true, 2, 0, 0)
        );
        assert_eq!(sink.calls_path(), data.join("calls.jsonl"));
    }
    assert_eq!(calls(&data), vec![c1.clone(), c2.clone()]);
    assert!(
        std::fs::read(data.join("calls.jsonl"))
            .unwrap()
            .ends_with(b"\n")
    );

    // A crash mid-write: half a row, no newline.
    let good_len = std::fs::metadata(data.join("calls.jsonl")).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("calls.jsonl"))
        .unwrap();
    f.write_all(br#"{"session_id":"abc","pid":1"#).unwrap();
    drop(f);
    // Recovery ignores the torn tail, whichever runs first.
    let rep = recover(&data, "boot-1").unwrap();
    assert_eq!(
        (
            rep.stats.calls_read,
            rep.stats.torn_lines,
            rep.stats.bad_call_lines
        ),
        (2, 1, 0)
    );
    let mut sink = JsonlSink::open(&data).unwrap();
    assert_eq!(sink.health().torn_lines_repaired, 1);
    assert_eq!(
        std::fs::metadata(data.join("calls.jsonl")).unwrap().len(),
        good_len
    );
    sink.write_call(&c1).unwrap();
    assert_eq!(calls(&data), vec![c1.clone(), c2, c1]);
    assert_eq!(lines(&data.join("calls.jsonl")).len(), 3);

    // A file that is one torn line only is emptied.
    std::fs::write(data.join("ledger.jsonl"), b"{\"sess").unwrap();
    let sink = JsonlSink::open(&data).unwrap();
    assert_eq!(sink.health().torn_lines_repaired, 1);
    assert_eq!(
        std::fs::metadata(data.join("ledger.jsonl")).unwrap().len(),
        0
    );
}

#[test]
fn sinks_open_error_names_the_path() {
    let dir = TempDir::new("openerr");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = JsonlSink::open(&blocker.join("data")).unwrap_err();
    assert!(matches!(err, SinkError::Open { .. }));
    assert!(err.to_string().contains("file/data"), "{err}");
}

/// One daemon run: recover, restore, write the returned ledger rows.
fn start(
    data: &std::path::Path,
    tree: &mut crate::procs::ProcTree,
) -> (Sessions, JsonlSink, Vec<LedgerRow>, RecoveryReport) {
    let mut sink = JsonlSink::open(data).unwrap();
    let rep = recover(data, "boot-1").unwrap();
    let mut s = Sessions::new(cfg());
    let rows = s.restore(rep.sessions.clone(), tree, 50 * S);
    for r in &rows {
        sink.write_ledger(r).unwrap();
    }
    (s, sink, rows, rep)
}

#[test]
fn sinks_recovery_continues_open_closes_dead_and_never_duplicates() {
    let dir = TempDir::new("recovery");
    let data = dir.path().to_path_buf();
    let (_fake, mut tree) = fake_host();
    let alive_id = session_id("boot-1", k(100, 100));
    let dead_id = session_id("boot-1", k(700, 700));
    let done_id = session_id("boot-1", k(600, 600));

    // Run 1: three sessions; 600's closes normally; the daemon stops with 100's and 700's open.
    {
        let (mut s, mut sink, rows, _) = start(&data, &mut tree);
        assert!(rows.is_empty());
        let calls = [
            (k(100, 100), 10, 1, Some(0.5)),
            (k(300, 300), 20, 2, None),
            (k(700, 700), 30, 3, Some(0.25)),
            (k(600, 600), 40, 4, Some(1.0)),
            (k(700, 700), 50, 5, Some(0.125)),
        ];
        for (i, (key, input, output, cost)) in calls.into_iter().enumerate() {
            let t = (i as u64 + 1) * 2 * S;
            let rec = s.on_call(
                &tree,
                key,
                &call(req("openai", Some("g"), t), input, output, t + S),
                cost,
            );
            sink.write_call(&rec).unwrap();
        }
        for row in s.on_removed(&tree.on_exit(600), 20 * S) {
            sink.write_ledger(&row).unwrap();
        }
        assert_eq!(ledger(&data).len(), 1);
    }
    // Garbage in calls.jsonl: skipped and counted.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("calls.jsonl"))
        .unwrap();
    f.write_all(b"not json\n{\"session_id\":1}\n\n").unwrap();
    drop(f);

    // Run 2: 700 is dead (never in the tree) → closed now, one row; 100 continues.
    {
        let (mut s, mut sink, rows, rep) = start(&data, &mut tree);
        assert_eq!(rep.stats.bad_call_lines, 2);
        assert_eq!(rep.stats.calls_read, 5);
        assert_eq!(rep.stats.closed_sessions, 1);
        assert_eq!(rep.stats.open_calls, 4);
        assert_eq!(rep.sessions.closed_this_boot, vec![done_id.clone()]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].session_id, dead_id);
        assert_eq!(
            (
                rows[0].call_count,
                rows[0].input_tokens,
                rows[0].output_tokens
            ),
            (2, 80, 8)
        );
        assert_eq!(rows[0].total_cost_usd, 0.375);
        assert_eq!(
            rows[0].ended_at,
            crate::sessions::clock::format_unix_ns(
                crate::sessions::tests::OFFSET + (11 * S) as i128
            )
        );
        let live = s.live_sessions();
        assert_eq!(live.len(), 1);
        assert_eq!(
            (live[0].session_id.as_str(), live[0].calls, live[0].agents),
            (alive_id.as_str(), 2, 2)
        );
        // It keeps charging: a grandchild agent joins at depth 2, seq 3.
        let rec = s.on_call(
            &tree,
            k(500, 500),
            &call(req("openai", Some("g"), 30 * S), 7, 7, 31 * S),
            Some(0.25),
        );
        assert_eq!(
            (rec.depth, rec.call_seq, rec.session_id.as_str()),
            (2, 3, alive_id.as_str())
        );
        sink.write_call(&rec).unwrap();
    }
    assert_eq!(ledger(&data).len(), 2);

    // Run 3: nothing to close, nothing reopened; then the alive session ends.
    {
        let (mut s, mut sink, rows, rep) = start(&data, &mut tree);
        assert!(rows.is_empty());
        assert_eq!(rep.sessions.open.len(), 1);
        assert_eq!(s.live_sessions()[0].calls, 3);
        let mut closed = Vec::new();
        for pid in [250, 200, 300, 400, 500, 100] {
            closed.extend(s.on_removed(&tree.on_exit(pid), 60 * S));
        }
        assert_eq!(closed.len(), 1);
        for row in &closed {
            sink.write_ledger(row).unwrap();
        }
    }
    // Run 4: everything closed; no row written twice.
    {
        let (s, _sink, rows, rep) = start(&data, &mut tree);
        assert!(rows.is_empty());
        assert!(rep.sessions.open.is_empty());
        assert_eq!(s.open_count(), 0);
    }
    let rows = ledger(&data);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.session_id.as_str()).collect();
    ids.sort();
    let mut expected = vec![alive_id.as_str(), dead_id.as_str(), done_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    // Every ledger row's totals equal the sums of its calls in calls.jsonl.
    let all = calls(&data);
    for row in &rows {
        let mine: Vec<&CallRecord> = all
            .iter()
            .filter(|c| c.session_id == row.session_id)
            .collect();
        assert_eq!(row.call_count, mine.len() as u64);
        assert_eq!(
            row.input_tokens,
            mine.iter().map(|c| c.input_tokens).sum::<u64>()
        );
        assert_eq!(
            row.output_tokens,
            mine.iter().map(|c| c.output_tokens).sum::<u64>()
        );
        assert_eq!(
            row.cache_read_tokens,
            mine.iter().map(|c| c.cache_read_tokens).sum::<u64>()
        );
        assert_eq!(
            row.total_tokens,
            mine.iter().map(|c| c.total_tokens).sum::<u64>()
        );
        assert_eq!(
            row.total_cost_usd,
            mine.iter().filter_map(|c| c.cost_usd).sum::<f64>()
        );
        assert_eq!(
            row.unpriced_calls,
            mine.iter().filter(|c| c.cost_usd.is_none()).count() as u64
        );
    }
    let alive_row = rows.iter().find(|r| r.session_id == alive_id).unwrap();
    assert_eq!(
        (
            alive_row.call_count,
            alive_row.depth_max,
            alive_row.agent_count
        ),
        (3, 2, 3)
    );
    assert_eq!(alive_row.total_cost_usd, 0.75);
    assert_eq!(alive_row.root_cmdline, "claude --resume");
}

/// Rotation by size, many times over, with a session open across every rotation and others
/// closing: the checkpoint stands for every rotated segment (gzipped, pruned to `keep_rotated`),
/// a restart reads only the current files, and what it finds is exactly what the whole
/// history says. A daemon killed between a rename and its checkpoint leaves an uncovered
/// segment, which the restart reads and the next rotation covers.
#[test]
fn sinks_rotation_checkpoint_restart_reads_only_current_files() {
    use super::rotation::{JsonlConfig, ROTATED_DIR, cover, load_checkpoint, segments};
    let dir = TempDir::new("rotation");
    let data = dir.path().to_path_buf();
    let (_fake, mut tree) = fake_host();
    let cfg_rot = JsonlConfig {
        rotate_bytes: 4_000,
        keep_rotated: 3,
        ..JsonlConfig::default()
    };
    let mut s = Sessions::new(cfg());
    let mut all_calls: Vec<CallRecord> = Vec::new();
    let mut all_rows: Vec<LedgerRow> = Vec::new();
    {
        let mut sink = JsonlSink::open_with(&data, &cfg_rot).unwrap();
        // Session of 100 stays open; 600's session gets a call now and then and closes.
        for i in 0..60u64 {
            let t = (i + 1) * 2 * S;
            let key = if i % 10 == 3 && i <= 33 {
                k(600, 600)
            } else {
                k(100, 100)
            };
            let rec = s.on_call(
                &tree,
                key,
                &call(req("openai", Some("g"), t), 10 + i, 1 + i, t + S),
                Some(0.01 * (i + 1) as f64),
            );
            sink.write_call(&rec).unwrap();
            all_calls.push(rec);
            if i == 33 {
                for row in s.on_removed(&tree.on_exit(600), t + S) {
                    sink.write_ledger(&row).unwrap();
                    all_rows.push(row);
                }
            }
        }
        assert!(sink.health().rotations >= 8, "{:?}", sink.health());
        // Dropping the sink waits for its worker.
    }
    let cp = load_checkpoint(&data).unwrap();
    let segs = segments(&data).unwrap();
    assert_eq!(segs.len(), 3, "pruned to keep_rotated: {segs:?}");
    assert_eq!(segs.last().unwrap().seq, cp.covered_seq);
    for seg in &segs {
        let calls = seg.calls.as_ref().unwrap();
        assert!(calls.extension().is_some_and(|e| e == "gz"), "{calls:?}");
    }
    let current = calls(&data);
    let current_calls = current.len() as u64;

    // The restart reads the checkpoint and the current files only, and finds the open
    // session whole: every call 100's session made, in order.
    let rep = recover(&data, "boot-1").unwrap();
    assert_eq!(rep.stats.segments_read, 0);
    assert_eq!(rep.stats.calls_read, current_calls);
    let open_id = session_id("boot-1", k(100, 100));
    let expected: Vec<&CallRecord> = all_calls
        .iter()
        .filter(|c| c.session_id == open_id)
        .collect();
    assert_eq!(rep.sessions.open.len(), 1);
    assert_eq!(rep.sessions.open[0].0, open_id);
    let got: Vec<&CallRecord> = rep.sessions.open[0].1.iter().collect();
    let seqs = |v: &[&CallRecord]| v.iter().map(|c| c.call_seq).collect::<Vec<_>>();
    assert_eq!(seqs(&got), seqs(&expected));
    assert!(got == expected, "calls read back differ from those written");
    assert_eq!(
        rep.sessions.closed_this_boot,
        vec![session_id("boot-1", k(600, 600))]
    );

    // A daemon killed after renaming a segment and before its checkpoint: the restart reads
    // that segment (nothing lost, nothing twice) and the next cover takes it in.
    let seq = cp.covered_seq + 1;
    let rot = data.join(ROTATED_DIR);
    std::fs::rename(
        data.join("calls.jsonl"),
        rot.join(format!("calls-{seq:08}.jsonl")),
    )
    .unwrap();
    std::fs::rename(
        data.join("ledger.jsonl"),
        rot.join(format!("ledger-{seq:08}.jsonl")),
    )
    .unwrap();
    let again = recover(&data, "boot-1").unwrap();
    assert_eq!(again.stats.segments_read, 1);
    assert_eq!(again.sessions.open, rep.sessions.open);
    let cp2 = cover(&data, OFFSET + (200 * S) as i128).unwrap();
    assert_eq!(cp2.covered_seq, seq);
    assert_eq!(cp2.open.len(), 1);
    assert_eq!(cp2.open[0].calls.len(), expected.len());
    // The rolling day by minute, as of 200 s after OFFSET: the segments covered before were
    // folded by the worker at the real time, years after these calls, so only the last one's
    // calls are within the day.
    let spent: f64 = cp2.host_day.values().sum();
    let want: f64 = current.iter().filter_map(|c| c.cost_usd).sum();
    assert!(want > 0.0);
    assert!((spent - want).abs() < 1e-9, "{spent} vs {want}");
    // A day later, none of it counts.
    let cp3 = super::rotation::Fold::new(cp2.clone())
        .finish(seq, OFFSET + (200 * S) as i128 + 86_400 * S as i128);
    assert!(cp3.host_day.is_empty(), "{:?}", cp3.host_day);

    // The sessions continue: once 100's tree has exited, its ledger row sums every call.
    let mut s2 = Sessions::new(cfg());
    let rows = s2.restore(again.sessions, &mut tree, 300 * S);
    assert!(rows.is_empty());
    let mut closed = Vec::new();
    for pid in [250, 200, 300, 400, 500, 100] {
        closed.extend(s2.on_removed(&tree.on_exit(pid), 400 * S));
    }
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].call_count, expected.len() as u64);
    let input: u64 = expected.iter().map(|c| c.input_tokens).sum();
    assert_eq!(closed[0].input_tokens, input);
    let _ = all_rows;
}

/// A tool run is a process of a session that exec'd and made no call; its `actions.jsonl`
/// row is counted again by a restart, so a session open across it keeps its count.
#[test]
fn sinks_tool_runs_are_counted_across_a_restart() {
    use crate::sessions::actions::ActionRow;
    let dir = TempDir::new("toolruns");
    let data = dir.path().to_path_buf();
    let (fake, mut tree) = fake_host();
    // A fork of the agent that runs no program of its own (same executable).
    fake.add(260, 100, "claude", 260, &["claude"]);
    assert_eq!(tree.on_fork(100, 260, 0), Some(k(260, 260)));
    let id = session_id("boot-1", k(100, 100));
    {
        let (mut s, mut sink, _, _) = start(&data, &mut tree);
        let rec = s.on_call(
            &tree,
            k(100, 100),
            &call(req("openai", Some("g"), 2 * S), 1, 1, 3 * S),
            Some(0.5),
        );
        sink.write_call(&rec).unwrap();
        // Not tool runs: the agent itself, a fork of it that ran no program of its own, a
        // process outside any session.
        assert!(s.on_tool_exit(&tree, k(100, 100), 4 * S, Some(0)).is_none());
        assert!(s.on_tool_exit(&tree, k(260, 260), 4 * S, Some(0)).is_none());
        tree.on_exec(600, "/usr/bin/other");
        assert!(s.on_tool_exit(&tree, k(600, 600), 4 * S, Some(0)).is_none());
        tree.on_exec(250, "/usr/bin/git");
        let run = s
            .on_tool_exit(&tree, k(250, 250), 4 * S, Some(1 << 8))
            .expect("git ran under agent 100");
        assert_eq!(
            (run.session_id.as_str(), run.tool.as_str()),
            (id.as_str(), "git")
        );
        assert_eq!(
            (run.agent_pid, run.agent_depth, run.exit_code),
            (100, 0, Some(1))
        );
        assert!(run.failed());
        sink.write_action(&ActionRow::ToolRun(run)).unwrap();
        assert_eq!(sink.health().action_rows_written, 1);
    }
    // The restart: the open session continues with its tool run, then runs one more
    // (a grandchild, through a shell and a sub-process that made no call).
    let (mut s, _sink, rows, rep) = start(&data, &mut tree);
    assert!(rows.is_empty());
    assert_eq!(rep.sessions.tool_runs.get(&id), Some(&1));
    tree.on_exec(500, "/usr/bin/grand");
    let run = s.on_tool_exit(&tree, k(500, 500), 5 * S, Some(9)).unwrap();
    assert_eq!((run.exit_code, run.signal), (None, Some(9)));
    let view = s.live_sessions();
    assert_eq!(view.len(), 1);
    assert_eq!(view[0].tool_runs, 2);
    // Rows of the session are found by the CLI's reader, by id prefix.
    let found = super::rotation::action_rows(&data, |sid| sid.starts_with(&id[..8])).unwrap();
    assert_eq!(found.len(), 1);
}

#[test]
fn sinks_shared_budgets_spend_comes_back_from_the_calls_files() {
    use super::rotation::{ROTATED_DIR, cover};
    let dir = TempDir::new("budget-day");
    let data = dir.path().to_path_buf();
    let (_fake, tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let mut want = 0.0;
    {
        let mut sink = JsonlSink::open(&data).unwrap();
        for i in 0..6u64 {
            let t = (i + 1) * 2 * S;
            let mut rec = s.on_call(
                &tree,
                k(100, 100),
                &call(req("openai", Some("g"), t), 10, 1, t + S),
                Some(0.25),
            );
            // Every other call drew from the team's budget.
            if i % 2 == 0 {
                rec.budget = Some("team".into());
                want += 0.25;
            }
            sink.write_call(&rec).unwrap();
        }
    }
    // The file as a rotated segment, folded as of 200 s after the calls began.
    std::fs::create_dir_all(data.join(ROTATED_DIR)).unwrap();
    std::fs::rename(
        data.join("calls.jsonl"),
        data.join(ROTATED_DIR).join("calls-00000001.jsonl"),
    )
    .unwrap();
    let cp = cover(&data, crate::sessions::tests::OFFSET + (200 * S) as i128).unwrap();
    let spent: f64 = cp.budget_day["team"].values().sum();
    assert!((spent - want).abs() < 1e-9, "{spent} vs {want}");
    assert_eq!(cp.budget_day.len(), 1);
    let total: f64 = cp.host_day.values().sum();
    assert!((total - 1.5).abs() < 1e-9, "{total}");
}
