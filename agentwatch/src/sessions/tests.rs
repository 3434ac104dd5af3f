use super::*;
use crate::accounting::UsageSource;
use crate::procs::test_support::FakeProc;
use crate::procs::{ProcConfig, ProcTree};

pub(crate) const OFFSET: i128 = 1_700_000_000_000_000_000;
pub(crate) const S: u64 = 1_000_000_000;

pub(crate) fn k(tgid: u32, start_ticks: u64) -> ProcKey {
    ProcKey { tgid, start_ticks }
}

pub(crate) fn cfg() -> SessionsConfig {
    SessionsConfig::new("boot-1", "host-a", WallClock::with_offset(OFFSET))
}

pub(crate) fn req(provider: &str, model: Option<&str>, started_at_ns: u64) -> LlmRequest {
    LlmRequest {
        provider: provider.to_string(),
        api: "messages".to_string(),
        server_address: Some(format!("api.{provider}.com")),
        model: model.map(str::to_string),
        streaming: true,
        http_version: "1.1".to_string(),
        started_at_ns,
        request_bytes: 1000,
    }
}

pub(crate) fn call(req: LlmRequest, input: u64, output: u64, ended_at_ns: u64) -> LlmCall {
    LlmCall {
        request: req,
        status: Some(200),
        response_model: Some("resp-model".to_string()),
        response_id: Some("msg_1".to_string()),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: input / 2,
            cache_write_tokens: input / 10,
            reasoning_tokens: output / 4,
            cache_write_1h_tokens: 0,
        },
        usage_source: UsageSource::Reported,
        complete: true,
        ended_at_ns,
        response_bytes: 500,
        estimate: None,
    }
}

/// init(1) → sshd bash(10) → claude(100) → bash(200) → sub(300) → python(400) → grand(500);
/// claude(100) → git(250); bash(10) → other(600).
pub(crate) fn fake_host() -> (FakeProc, ProcTree) {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &["/sbin/init"]);
    fake.add(10, 1, "bash", 10, &["-bash"]);
    fake.add(100, 10, "claude", 100, &["claude", "--resume"]);
    let mut tree = ProcTree::seed_with(fake.root(), ProcConfig::default()).unwrap();
    for (pid, ppid, comm, t) in [
        (200, 100, "bash", 200),
        (250, 100, "git", 250),
        (300, 200, "sub", 300),
        (400, 300, "python3", 400),
        (500, 400, "grand", 500),
        (600, 10, "other", 600),
    ] {
        fake.add(pid, ppid, comm, t, &[comm]);
        assert_eq!(tree.on_fork(ppid, pid, 0), Some(k(pid, t)));
    }
    (fake, tree)
}

fn wall(ns: u64) -> String {
    clock::format_unix_ns(OFFSET + ns as i128)
}

#[test]
fn sessions_session_id_is_deterministic() {
    assert_eq!(
        session_id("boot-1", k(100, 100)),
        "5800fc8ba5faba2fb27bd1d46290cbfa"
    );
    assert_eq!(
        session_id_gen("boot-1", k(100, 100), 1),
        "c9510557592c5b68087387c906ca07be"
    );
    assert_eq!(
        session_id("boot-2", k(100, 100)),
        "6651e22c43ecdb6fe17f76c7b51621a7"
    );
    let (_fake, tree) = fake_host();
    let mut a = Sessions::new(cfg());
    let mut b = Sessions::new(cfg());
    let r = req("anthropic", Some("claude-x"), S);
    assert_eq!(
        a.on_llm_request(&tree, k(100, 100), &r),
        b.on_llm_request(&tree, k(100, 100), &r)
    );
    assert_eq!(
        a.on_llm_request(&tree, k(100, 100), &r).session_id,
        "5800fc8ba5faba2fb27bd1d46290cbfa"
    );
}

#[test]
fn sessions_agent_tree_depths_through_tool_processes() {
    let (_fake, tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let sid = session_id("boot-1", k(100, 100));
    let root = s.on_llm_request(&tree, k(100, 100), &req("anthropic", Some("m1"), S));
    assert_eq!(
        root,
        AgentRef {
            session_id: sid.clone(),
            depth: 0
        }
    );
    // Idempotent.
    assert_eq!(
        s.on_llm_request(&tree, k(100, 100), &req("anthropic", Some("m1"), 9 * S)),
        root
    );
    // sub agent below a bash tool process: depth 1.
    let sub = s.on_llm_request(&tree, k(300, 300), &req("openai", Some("m2"), 2 * S));
    assert_eq!(
        sub,
        AgentRef {
            session_id: sid.clone(),
            depth: 1
        }
    );
    // grandchild below a python tool process: depth 2.
    let grand = s.on_llm_request(&tree, k(500, 500), &req("openai", Some("m2"), 3 * S));
    assert_eq!(
        grand,
        AgentRef {
            session_id: sid.clone(),
            depth: 2
        }
    );
    // Tools are not agents.
    for tool in [k(200, 200), k(250, 250), k(400, 400), k(10, 10)] {
        assert_eq!(s.agent(tool), None);
    }
    // An independent agent (sibling of claude under the login shell): a second session.
    let other = s.on_llm_request(&tree, k(600, 600), &req("gemini", None, 4 * S));
    assert_eq!(
        other,
        AgentRef {
            session_id: session_id("boot-1", k(600, 600)),
            depth: 0
        }
    );

    let live = s.live_sessions();
    assert_eq!(live.len(), 2);
    assert_eq!(live[0].session_id, sid);
    assert_eq!(live[0].root_pid, 100);
    assert_eq!(live[0].root_comm, "claude");
    assert_eq!(live[0].root_cmdline, "claude --resume");
    assert_eq!(live[0].agents, 3);
    assert_eq!(live[0].depth_max, 2);
    assert_eq!(live[0].calls, 0);
    assert_eq!(live[0].started_at, wall(S));
    assert_eq!(live[1].root_pid, 600);
    assert_eq!(live[1].agents, 1);
    assert_eq!(live[1].depth_max, 0);

    let t = s.tree(&sid).unwrap();
    let shape: Vec<(u32, u32, Option<u32>, &str)> = t
        .agents
        .iter()
        .map(|a| (a.pid, a.depth, a.parent_pid, a.comm.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (100, 0, None, "claude"),
            (300, 1, Some(100), "sub"),
            (500, 2, Some(300), "grand")
        ]
    );
    assert_eq!(s.tree("nope"), None);
}

#[test]
fn sessions_calls_rows_and_ledger_totals_equal_sums() {
    let (_fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let sid = session_id("boot-1", k(100, 100));
    // The request event of the first call was missed: on_call makes the agent.
    let recs = [
        s.on_call(
            &tree,
            k(100, 100),
            &call(req("anthropic", Some("claude-x"), S), 1000, 200, 2 * S),
            Some(0.25),
        ),
        s.on_call(
            &tree,
            k(300, 300),
            &call(req("openai", None, 3 * S), 100, 40, 4 * S),
            None,
        ),
        s.on_call(
            &tree,
            k(500, 500),
            &call(req("openai", Some("gpt-y"), 5 * S), 10, 8, 6 * S),
            Some(0.125),
        ),
        s.on_call(
            &tree,
            k(100, 100),
            &call(req("anthropic", Some("claude-x"), 7 * S), 2000, 400, 8 * S),
            Some(f64::NAN),
        ),
    ];

    let r0 = &recs[0];
    assert_eq!(r0.session_id, sid);
    assert_eq!((r0.pid, r0.comm.as_str(), r0.depth), (100, "claude", 0));
    assert_eq!(r0.model.as_deref(), Some("claude-x"));
    assert_eq!(
        (
            r0.input_tokens,
            r0.output_tokens,
            r0.cache_read_tokens,
            r0.cache_write_tokens
        ),
        (1000, 200, 500, 100)
    );
    assert_eq!((r0.reasoning_tokens, r0.total_tokens), (50, 1200));
    assert_eq!(r0.cost_usd, Some(0.25));
    assert_eq!(r0.started_at, "2023-11-14T22:13:21.000000000Z");
    assert_eq!(r0.ended_at, "2023-11-14T22:13:22.000000000Z");
    assert_eq!(
        (r0.root_pid, r0.root_start_ticks, r0.pid_start_ticks),
        (100, 100, 100)
    );
    assert_eq!((r0.parent_pid, r0.call_seq), (None, 1));
    assert_eq!(r0.host, "host-a");
    assert_eq!(r0.server_address.as_deref(), Some("api.anthropic.com"));
    assert_eq!(
        r0.session_started_at.as_deref(),
        Some("2023-11-14T22:13:21.000000000Z")
    );
    assert_eq!(r0.root_cmdline.as_deref(), Some("claude --resume"));
    assert_eq!(r0.root_exe.as_deref(), Some("/usr/bin/claude"));
    let r1 = &recs[1];
    assert_eq!(
        (r1.depth, r1.parent_pid, r1.parent_start_ticks),
        (1, Some(100), Some(100))
    );
    assert_eq!(r1.model.as_deref(), Some("resp-model")); // fell back to the response's
    assert_eq!(r1.cost_usd, None);
    assert_eq!((r1.call_seq, r1.session_started_at.clone()), (2, None));
    assert_eq!(recs[2].depth, 2);
    assert_eq!(recs[2].parent_pid, Some(300));
    assert_eq!(recs[3].cost_usd, None); // NaN is not a price
    assert_eq!(recs[3].call_seq, 4);
    let json = serde_json::to_value(&recs[1]).unwrap();
    assert_eq!(json["cost_usd"], serde_json::Value::Null);
    assert_eq!(json["usage_source"], "reported");
    assert!(json.get("root_cmdline").is_none());

    // The root exits first: kept, session open.
    let removed = tree.on_exit(100);
    assert_eq!(removed, vec![]);
    assert!(s.on_removed(&removed, 9 * S).is_empty());
    assert_eq!(s.open_count(), 1);
    // Tools and agents exit in order; the session closes only with the last descendant.
    let mut rows = Vec::new();
    for (i, pid) in [250u32, 200, 300, 400].into_iter().enumerate() {
        let removed = tree.on_exit(pid);
        rows.extend(s.on_removed(&removed, (10 + i as u64) * S));
        assert!(rows.is_empty(), "closed early at pid {pid}");
    }
    let removed = tree.on_exit(500);
    assert_eq!(
        removed,
        vec![
            k(500, 500),
            k(400, 400),
            k(300, 300),
            k(200, 200),
            k(100, 100)
        ]
    );
    rows.extend(s.on_removed(&removed, 20 * S));
    assert_eq!(rows.len(), 1);
    assert_eq!(s.open_count(), 0);
    assert_eq!(s.agent(k(300, 300)), None);

    let row = &rows[0];
    assert_eq!(row.session_id, sid);
    assert_eq!((row.root_pid, row.root_start_ticks), (100, 100));
    assert_eq!(row.root_exe.as_deref(), Some("/usr/bin/claude"));
    assert_eq!(row.root_cmdline, "claude --resume");
    assert_eq!(row.started_at, wall(S));
    assert_eq!(row.ended_at, wall(20 * S));
    assert_eq!(row.input_tokens, 3110);
    assert_eq!(row.output_tokens, 648);
    assert_eq!(row.cache_read_tokens, 500 + 50 + 5 + 1000);
    assert_eq!(row.cache_write_tokens, 100 + 10 + 1 + 200);
    assert_eq!(row.reasoning_tokens, 50 + 10 + 2 + 100);
    assert_eq!(row.total_tokens, 3758);
    assert_eq!(row.total_cost_usd, 0.375);
    assert_eq!(row.unpriced_calls, 2);
    assert_eq!(row.call_count, 4);
    assert_eq!(
        (row.depth_max, row.agent_count, row.ceiling_hits),
        (2, 3, 0)
    );
    assert_eq!(row.outcome, Outcome::Completed);
    assert_eq!(row.providers, vec!["anthropic", "openai"]);
    assert_eq!(row.models, vec!["claude-x", "gpt-y", "resp-model"]);
    assert_eq!(row.host, "host-a");
    assert_eq!(row.boot_id, "boot-1");
    // Totals = sums of the calls.
    assert_eq!(
        row.input_tokens,
        recs.iter().map(|r| r.input_tokens).sum::<u64>()
    );
    assert_eq!(
        row.output_tokens,
        recs.iter().map(|r| r.output_tokens).sum::<u64>()
    );
    assert_eq!(
        row.total_tokens,
        recs.iter().map(|r| r.total_tokens).sum::<u64>()
    );
    assert_eq!(
        row.total_cost_usd,
        recs.iter().filter_map(|r| r.cost_usd).sum::<f64>()
    );
    let json = serde_json::to_value(row).unwrap();
    assert_eq!(json["outcome"], "completed");

    // The other session (600) is untouched and closes on its own.
    let rows = s.on_removed(&tree.on_exit(600), 30 * S);
    assert_eq!(rows, vec![]); // 600 never called an LLM: no session
}

#[test]
fn sessions_second_root_and_late_ancestor_agent_are_separate() {
    let (_fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let c1 = s.on_call(
        &tree,
        k(300, 300),
        &call(req("openai", Some("a"), S), 1, 1, 2 * S),
        Some(1.0),
    );
    assert_eq!(c1.depth, 0);
    assert_eq!(c1.session_id, session_id("boot-1", k(300, 300)));
    // claude (an ancestor) calls later: its own session; 300 stays where it was.
    let c2 = s.on_call(
        &tree,
        k(100, 100),
        &call(req("openai", Some("a"), 3 * S), 1, 1, 4 * S),
        Some(1.0),
    );
    assert_eq!(c2.depth, 0);
    assert_eq!(c2.session_id, session_id("boot-1", k(100, 100)));
    let c3 = s.on_call(
        &tree,
        k(300, 300),
        &call(req("openai", Some("a"), 5 * S), 1, 1, 6 * S),
        Some(1.0),
    );
    assert_eq!(
        (c3.session_id.as_str(), c3.depth, c3.call_seq),
        (c1.session_id.as_str(), 0, 2)
    );
    // A new agent below 300 joins 300's session (nearest agent ancestor).
    let c4 = s.on_call(
        &tree,
        k(500, 500),
        &call(req("openai", Some("a"), 7 * S), 1, 1, 8 * S),
        None,
    );
    assert_eq!(
        (c4.session_id.as_str(), c4.depth),
        (c1.session_id.as_str(), 1)
    );
    assert_eq!(s.open_count(), 2);
    // 300's subtree ends: its session closes; claude's stays open.
    let mut rows = s.on_removed(&tree.on_exit(500), 9 * S);
    rows.extend(s.on_removed(&tree.on_exit(400), 9 * S));
    assert!(rows.is_empty());
    // A call of 500 that finished after its exit event: still charged to its session.
    let late = s.on_call(
        &tree,
        k(500, 500),
        &call(req("openai", Some("a"), 7 * S), 1, 1, 9 * S),
        Some(0.5),
    );
    assert_eq!(
        (late.session_id.as_str(), late.depth),
        (c1.session_id.as_str(), 1)
    );
    assert_eq!(late.parent_pid, Some(300));
    rows.extend(s.on_removed(&tree.on_exit(300), 10 * S));
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].call_count,
            rows[0].agent_count,
            rows[0].total_cost_usd
        ),
        (4, 2, 2.5)
    );
    assert_eq!(rows[0].unpriced_calls, 1);
    assert_eq!(s.open_count(), 1);
}

#[test]
fn sessions_reused_id_in_same_boot_gets_new_generation_and_orphans_are_reaped() {
    let (_fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let c = s.on_call(
        &tree,
        k(600, 600),
        &call(req("x", None, S), 1, 1, 2 * S),
        None,
    );
    let rows = s.on_removed(&tree.on_exit(600), 3 * S);
    assert_eq!(rows.len(), 1);
    // A call for the same key again (a missed-exit confusion): never the same id twice.
    let c2 = s.on_call(
        &tree,
        k(600, 600),
        &call(req("x", None, 4 * S), 1, 1, 5 * S),
        None,
    );
    assert_ne!(c2.session_id, c.session_id);
    assert_eq!(c2.session_id, session_id_gen("boot-1", k(600, 600), 1));
    // Its root is not in the tree: reaped.
    let rows = s.reap_orphans(&tree, 6 * S);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].session_id, c2.session_id);
    assert_eq!(rows[0].ended_at, wall(6 * S));
    assert_eq!(s.open_count(), 0);
    assert_eq!(s.stats().closed_sessions, 2);
}

#[test]
fn sessions_restore_continues_live_root_and_closes_dead_one() {
    let (_fake, mut tree) = fake_host();
    // A previous daemon run in the same boot.
    let mut before = Sessions::new(cfg());
    let alive_calls = vec![
        before.on_call(
            &tree,
            k(100, 100),
            &call(req("anthropic", Some("m"), S), 10, 5, 2 * S),
            Some(0.5),
        ),
        before.on_call(
            &tree,
            k(300, 300),
            &call(req("anthropic", Some("m"), 3 * S), 20, 6, 4 * S),
            None,
        ),
    ];
    // A session whose root (pid 700) is gone now.
    let dead = k(700, 700);
    let dead_calls = vec![
        before.on_call(
            &tree,
            dead,
            &call(req("openai", Some("g"), 5 * S), 7, 3, 6 * S),
            Some(0.25),
        ),
        before.on_call(
            &tree,
            dead,
            &call(req("openai", Some("g"), 7 * S), 7, 3, 8 * S),
            Some(0.25),
        ),
    ];

    let mut after = Sessions::new(cfg());
    let rows = after.restore(
        RecoveredSessions {
            open: vec![
                (alive_calls[0].session_id.clone(), alive_calls.clone()),
                (dead_calls[0].session_id.clone(), dead_calls.clone()),
            ],
            closed_this_boot: vec![],
            ..Default::default()
        },
        &mut tree,
        100 * S,
    );
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.session_id, session_id("boot-1", dead));
    assert_eq!(row.started_at, wall(5 * S));
    assert_eq!(row.ended_at, wall(8 * S)); // its last call's end
    assert_eq!(
        (row.call_count, row.input_tokens, row.total_cost_usd),
        (2, 14, 0.5)
    );
    assert_eq!(row.root_cmdline, ""); // pid 700 never was in the tree
    assert_eq!(after.stats().restored_continued, 1);
    assert_eq!(after.stats().restored_closed, 1);

    // The live one continues: totals, agents with their depth, call count.
    let live = after.live_sessions();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].calls, live[0].input_tokens, live[0].agents),
        (2, 30, 2)
    );
    assert_eq!(live[0].started_at, wall(S));
    assert_eq!(after.agent(k(300, 300)).map(|a| a.depth), Some(1));
    let next = after.on_call(
        &tree,
        k(500, 500),
        &call(req("anthropic", Some("m"), 9 * S), 1, 1, 10 * S),
        Some(0.25),
    );
    assert_eq!(
        (next.depth, next.call_seq, next.parent_pid),
        (2, 3, Some(300))
    );
    assert_eq!(next.session_id, alive_calls[0].session_id);
    assert_eq!(after.live_sessions()[0].cost_usd, 0.75);
    assert_eq!(after.live_sessions()[0].unpriced_calls, 1);
}

#[test]
fn sessions_restore_other_boot_closes_and_closed_ids_are_not_reopened() {
    let (_fake, mut tree) = fake_host();
    let mut old_boot = Sessions::new(SessionsConfig::new(
        "boot-0",
        "host-a",
        WallClock::with_offset(OFFSET),
    ));
    let c = old_boot.on_call(
        &tree,
        k(100, 100),
        &call(req("a", Some("m"), S), 1, 1, 2 * S),
        None,
    );
    let mut s = Sessions::new(cfg());
    // Same pid and start ticks in the new boot, but another boot's session: closes.
    let rows = s.restore(
        RecoveredSessions {
            open: vec![(c.session_id.clone(), vec![c.clone()])],
            closed_this_boot: vec![],
            ..Default::default()
        },
        &mut tree,
        S,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].unpriced_calls, 1);
    assert_eq!(rows[0].total_cost_usd, 0.0);
    assert_eq!(s.open_count(), 0);

    // A closed id of this boot passed in is not reused.
    let mut s = Sessions::new(cfg());
    let closed = session_id("boot-1", k(100, 100));
    assert!(
        s.restore(
            RecoveredSessions {
                open: vec![],
                closed_this_boot: vec![closed.clone()],
                ..Default::default()
            },
            &mut tree,
            S
        )
        .is_empty()
    );
    let r = s.on_llm_request(&tree, k(100, 100), &req("a", None, S));
    assert_eq!(r.session_id, session_id_gen("boot-1", k(100, 100), 1));
}

/// A request is in flight under its agent until its call ends; the session's tools running
/// are its live non-agent processes that ran a program of their own, each under its agent.
#[test]
fn sessions_calls_in_flight_and_running_tools() {
    let (fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let id = session_id("boot-1", k(100, 100));
    let first = req("openai", Some("gpt-4o"), 2 * S);
    s.on_llm_request(&tree, k(100, 100), &first);
    s.on_llm_request(&tree, k(100, 100), &req("openai", None, 3 * S));
    let t = s.tree(&id).unwrap();
    let flying: Vec<_> = t.agents[0]
        .in_flight
        .iter()
        .map(|c| (c.model.clone(), c.started_at.clone()))
        .collect();
    assert_eq!(
        flying,
        vec![(Some("gpt-4o".into()), wall(2 * S)), (None, wall(3 * S))]
    );
    s.on_call(&tree, k(100, 100), &call(first, 1, 1, 4 * S), Some(0.1));
    let t = s.tree(&id).unwrap();
    assert_eq!(t.agents[0].in_flight.len(), 1);
    assert_eq!(t.agents[0].in_flight[0].model, None);
    // Bounded: the oldest requests are forgotten past the cap.
    for i in 0..40 {
        s.on_llm_request(&tree, k(100, 100), &req("openai", Some("m"), (10 + i) * S));
    }
    assert_eq!(
        s.tree(&id).unwrap().agents[0].in_flight.len(),
        MAX_IN_FLIGHT_PER_AGENT
    );

    // git (250) and bash (200) exec'd under the root agent; sub (300) is an agent of its
    // own and python3 (400) under it ran a program, as grand (500, another executable
    // than its parent's) did: tools of the sub-agent. other (600) is outside the session; a
    // fork that ran nothing of its own (260) is no tool.
    s.on_llm_request(&tree, k(300, 300), &req("openai", Some("m"), 5 * S));
    for (pid, exe) in [
        (250, "/usr/bin/git"),
        (200, "/bin/bash"),
        (400, "/usr/bin/python3"),
        (600, "/usr/bin/other"),
    ] {
        tree.on_exec(pid, exe);
    }
    fake.add(260, 100, "claude", 260, &["claude"]);
    tree.on_fork(100, 260, 0);
    let tools: Vec<(u32, String, u32)> = s
        .running_tools(&tree, &id)
        .into_iter()
        .map(|t| (t.pid, t.tool, t.agent_pid))
        .collect();
    assert_eq!(
        tools,
        vec![
            (200, "bash".into(), 100),
            (250, "git".into(), 100),
            (400, "python3".into(), 300),
            (500, "grand".into(), 300)
        ]
    );
    // An exited tool is no longer running.
    tree.on_exit(250);
    assert!(s.running_tools(&tree, &id).iter().all(|t| t.pid != 250));
    assert!(s.running_tools(&tree, "no-such-session").is_empty());
}

/// File changes are counted per path on the session of the agent they run under (a rename on
/// both paths); pseudo files and processes outside sessions leave nothing; the ledger counts
/// the paths written and deleted, and the rows are handed over once, at the close.
#[test]
fn sessions_file_changes_per_path() {
    use agentwatch_ebpf::{FILE_OPEN_WRITE, FILE_RENAME, FILE_UNLINK};
    let (_fake, tree) = fake_host();
    let mut s = Sessions::new(cfg());
    let id = session_id("boot-1", k(100, 100));
    s.on_llm_request(&tree, k(100, 100), &req("openai", Some("m"), S));
    let o_creat_trunc = 0o100 | 0o1000 | 1;
    for (key, op, flags, path, new_path) in [
        (k(200, 200), FILE_OPEN_WRITE, o_creat_trunc, "/w/a", None),
        (k(250, 250), FILE_OPEN_WRITE, 1, "/w/a", None),
        (k(200, 200), FILE_RENAME, 0, "/w/a", Some("/w/b")),
        (k(200, 200), FILE_UNLINK, 0, "/w/c", None),
        (k(200, 200), FILE_OPEN_WRITE, 1, "/dev/null", None),
        (k(600, 600), FILE_OPEN_WRITE, 1, "/w/outside", None),
    ] {
        s.on_file_op(
            &tree,
            key,
            op,
            flags,
            path.into(),
            new_path.map(Into::into),
            2 * S,
        );
    }
    let files = s.file_changes(&id);
    let by = |p: &str| files.iter().find(|f| f.path == p).unwrap();
    let a = by("/w/a");
    assert_eq!(
        (
            a.opened_for_write,
            a.created,
            a.truncated,
            a.renamed_from,
            a.pid,
            a.agent_pid
        ),
        (2, 1, 1, 1, 200, 100)
    );
    assert_eq!(by("/w/b").renamed_to, 1);
    assert_eq!(by("/w/c").deleted, 1);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(s.take_file_rows().is_empty(), "rows only at the close");
    let rows = s.on_removed(&[k(100, 100)], 3 * S);
    assert_eq!(
        (rows[0].files_written, rows[0].files_deleted),
        (2, 1),
        "a and b written, c deleted"
    );
    assert_eq!(s.take_file_rows().len(), 3);
    assert!(s.take_file_rows().is_empty());
}

#[test]
fn sessions_file_paths_are_made_absolute_through_the_process() {
    use crate::sessions::actions::absolute_path;
    let fake = FakeProc::new();
    fake.add(7, 1, "bash", 7, &["bash"]);
    let root = fake.root();
    std::fs::create_dir_all(root.join("7/fd")).unwrap();
    std::os::unix::fs::symlink("/home/u/work", root.join("7/cwd")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("7/fd/5")).unwrap();
    let at_cwd = agentwatch_ebpf::AT_FDCWD;
    assert_eq!(
        absolute_path(root, 7, at_cwd, "a/./b/../c.txt", None),
        "/home/u/work/a/c.txt"
    );
    assert_eq!(absolute_path(root, 7, 5, "hosts", None), "/etc/hosts");
    assert_eq!(absolute_path(root, 7, 5, "/tmp//x", None), "/tmp/x");
    assert_eq!(
        absolute_path(root, 8, at_cwd, "gone.txt", None),
        "?/gone.txt"
    );
    // The directory the kernel read wins over /proc (which may have changed since).
    assert_eq!(
        absolute_path(root, 7, at_cwd, "../x", Some("/srv/job/out")),
        "/srv/job/x"
    );
    assert_eq!(
        absolute_path(root, 8, at_cwd, "gone.txt", Some("/srv")),
        "/srv/gone.txt"
    );
}

/// A session whose root (and a sub-agent) ended while no daemon ran, with the kernel's
/// records of that time still to read: it goes on, its root standing in for itself, so the
/// tools forked meanwhile (by it, or by a process no daemon saw) and their files are charged
/// to it; its root's exit record closes it. Without those records it closes at once.
#[test]
fn sessions_restore_keeps_a_session_that_ended_in_the_gap_until_its_records_are_read() {
    use agentwatch_ebpf::FILE_OPEN_WRITE;
    let (fake, tree) = fake_host();
    let mut before = Sessions::new(cfg());
    let calls = vec![
        before.on_call(
            &tree,
            k(100, 100),
            &call(req("anthropic", Some("m"), S), 10, 5, 2 * S),
            None,
        ),
        before.on_call(
            &tree,
            k(300, 300),
            &call(req("anthropic", Some("m"), 3 * S), 20, 6, 4 * S),
            None,
        ),
    ];
    let id = calls[0].session_id.clone();
    let recovered = || RecoveredSessions {
        open: vec![(id.clone(), calls.clone())],
        closed_this_boot: vec![],
        ..Default::default()
    };
    // The whole session is gone from /proc when the next daemon starts.
    for pid in [100, 200, 250, 300, 400, 500] {
        fake.remove(pid);
    }
    let fresh = || ProcTree::seed_with(fake.root(), ProcConfig::default()).unwrap();

    // No records of the gap (another build's kernel side): it closes now.
    let mut tree = fresh();
    let mut s = Sessions::new(cfg());
    assert_eq!(s.restore(recovered(), &mut tree, 9 * S).len(), 1);
    assert!(tree.gone().is_empty());

    let mut tree = fresh();
    let mut s = Sessions::new(cfg()).with_gap_records(true);
    assert!(s.restore(recovered(), &mut tree, 9 * S).is_empty());
    assert_eq!(s.stats().restored_root_gone, 1);
    assert_eq!(tree.gone(), vec![100, 300], "the root and the sub-agent");
    assert!(!tree.is_live(k(100, 100)));
    assert!(
        tree.live_subtree(k(100, 100)).is_empty(),
        "nothing signalled"
    );
    // A process that reused the sub-agent's pid, in no session (its records say so): its
    // child is nobody's.
    assert!(tree.stands_in_for_another(300, 0) && !tree.stands_in_for_another(300, 100));
    let stranger = tree.on_fork_in(300, 710, 5 * S, 0).unwrap();
    assert!(tree.parent(stranger).is_none());
    assert!(s.session_root_of(&tree, stranger).is_none());
    tree.on_exit(710);
    // A tool its root forked while no daemon ran (gone by now).
    let touch = tree.on_fork_in(100, 700, 5 * S, 100).unwrap();
    tree.on_exec(700, "/usr/bin/touch");
    s.on_file_op(
        &tree,
        touch,
        FILE_OPEN_WRITE,
        0o101,
        "/w/t".into(),
        None,
        5 * S,
    );
    let run = s.on_tool_exit(&tree, touch, 6 * S, Some(0)).unwrap();
    assert_eq!(
        (run.tool.as_str(), run.agent_pid, run.agent_depth),
        ("touch", 100, 0)
    );
    tree.on_exit(700);
    // One forked by a process no daemon saw (it started before the stop, ended in the
    // gap): the kernel says whose session it is in.
    let rm = tree.on_fork_in(650, 800, 6 * S, 100).unwrap();
    assert_eq!(tree.parent(rm).map(|p| p.key), Some(k(100, 100)));
    tree.on_exec(800, "/usr/bin/rm");
    assert!(s.on_tool_exit(&tree, rm, 7 * S, Some(0)).is_some());
    tree.on_exit(800);
    // Processes known from their exit record alone (started before the stop, ended in the
    // gap): a tool run when it exec'd, with its real start; a copy of its parent is none.
    let bash = tree
        .insert_ended(640, 4 * S, "bash".into(), true, k(100, 100))
        .unwrap();
    let run = s.on_tool_exit(&tree, bash, 7 * S, Some(0)).unwrap();
    assert_eq!(
        (run.tool.as_str(), run.agent_pid, run.duration_ms),
        ("bash", 100, 3000.0)
    );
    tree.on_exit(640);
    let copy = tree
        .insert_ended(641, 4 * S, "python3".into(), false, k(100, 100))
        .unwrap();
    assert!(s.on_tool_exit(&tree, copy, 7 * S, Some(0)).is_none());
    tree.on_exit(641);
    // The sub-agent's exit, then the root's: the session closes then.
    tree.on_exit(300);
    let removed = tree.on_exit(100);
    let rows = s.on_removed(&removed, 8 * S);
    assert_eq!(rows.len(), 1, "{removed:?}");
    let row = &rows[0];
    assert_eq!((row.session_id.as_str(), row.call_count), (id.as_str(), 2));
    assert_eq!((row.tool_runs, row.files_written), (3, 1));
    assert_eq!(row.ended_at, wall(8 * S));
    assert!(tree.gone().is_empty());
}

/// A process whose parent ended while no daemon ran was reparented (to init): the kernel's
/// `SESSION_PROCS` still names its session's root, and it is put back under it.
#[test]
fn sessions_orphans_the_kernel_holds_as_a_sessions_are_adopted() {
    let (fake, mut tree) = fake_host();
    let mut s = Sessions::new(cfg());
    s.on_llm_request(&tree, k(100, 100), &req("openai", Some("m"), S));
    let id = session_id("boot-1", k(100, 100));
    fake.add(900, 1, "sleep", 900, &["sleep", "60"]);
    fake.add(901, 1, "cron", 901, &["cron"]);
    fake.add(902, 900, "sleep", 902, &["sleep", "1"]);
    let orphan = tree.ensure(900).unwrap();
    tree.ensure(901).unwrap();
    let below = tree.ensure(902).unwrap();
    assert!(s.session_root_of(&tree, orphan).is_none());
    // 901 names a root that is no open session's; 250 is the session's already.
    // 902 is below 900: it comes along, it keeps its parent.
    let marked = [(902, 100), (900, 100), (901, 600), (250, 100), (100, 100)];
    assert_eq!(s.adopt_orphans(&mut tree, &marked), 1);
    assert_eq!(tree.parent(below).map(|p| p.key), Some(orphan));
    assert_eq!(s.session_root_of(&tree, below), Some(k(100, 100)));
    assert_eq!(s.session_root_of(&tree, orphan), Some(k(100, 100)));
    assert!(s.session_root_of(&tree, k(901, 901)).is_none());
    assert_eq!(s.stats().restored_orphans_adopted, 1);
    // Its files and its run are the session's now.
    s.on_file_op(
        &tree,
        orphan,
        agentwatch_ebpf::FILE_UNLINK,
        0,
        "/w/x".into(),
        None,
        2 * S,
    );
    assert_eq!(s.file_changes(&id).len(), 1);
}
