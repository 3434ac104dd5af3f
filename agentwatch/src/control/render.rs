//! Human-readable output of the CLI (the same answers are available with `--json`).
use std::fmt::Write;

use super::replies::{ActionList, Counters, Reply, SessionList, Status, TreeList};

/// Time since an RFC 3339 instant: `42s`, `3m07s`, `2h05m`.
pub(super) fn since(at: &str, now_unix_ns: i128) -> String {
    let Some(t) = crate::sessions::clock::parse_rfc3339(at) else {
        return "?".into();
    };
    let secs = ((now_unix_ns - t).max(0) / 1_000_000_000) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// Now, in Unix nanoseconds (0 if the clock is before 1970).
pub(super) fn now_unix_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// A share of a ceiling used, in percent (`-` without a ceiling).
pub(super) fn share(v: Option<f64>) -> String {
    v.map_or("-".into(), |f| format!("{:.0}%", f * 100.0))
}

fn usd(v: Option<f64>) -> String {
    v.map(|c| format!("${c:.6}")).unwrap_or_else(|| "-".into())
}

pub fn render(reply: &Reply) -> String {
    render_with(reply, false)
}

/// [`render`], `wide`: more columns where there are more to show (`-o wide`).
pub fn render_with(reply: &Reply, wide: bool) -> String {
    let mut out = String::new();
    match reply {
        Reply::Status(status) => render_status(&mut out, status),
        Reply::Sessions(list) if wide => render_sessions_wide(&mut out, list),
        Reply::Sessions(list) => render_sessions(&mut out, list),
        Reply::Trees(list) => render_trees(&mut out, list),
        Reply::Actions(list) => render_actions(&mut out, list),
        Reply::Approved(a) => {
            let _ = writeln!(
                out,
                "approved session {}: {} process{} continued",
                a.approved,
                a.continued,
                if a.continued == 1 { "" } else { "es" }
            );
        }
        Reply::Killed(k) => {
            let _ = writeln!(
                out,
                "killed session {}: {} process{} signalled (SIGKILL)",
                k.killed,
                k.processes,
                if k.processes == 1 { "" } else { "es" }
            );
        }
        Reply::Paused(p) => {
            let _ = writeln!(
                out,
                "paused session {}: {} process{} stopped (SIGSTOP); `agentwatch approve` continues it",
                p.paused,
                p.processes,
                if p.processes == 1 { "" } else { "es" }
            );
        }
        Reply::Reloaded(r) => {
            let _ = writeln!(out, "reloaded ceilings from {}", r.reloaded.display());
        }
        Reply::Refused(_) => {
            let _ = writeln!(out, "{}", reply.to_json());
        }
    }
    out
}

fn render_status(out: &mut String, s: &Status) {
    let _ = writeln!(
        out,
        "agentwatch {}: {} (up {}s), data in {}",
        s.version,
        if s.ok {
            "all probes attached"
        } else {
            "NOT all probes attached"
        },
        s.uptime_secs,
        s.data_dir.display()
    );
    let _ = writeln!(out, "tracepoints: {}", s.tracepoints.join(", "));
    let ks = &s.kernel_side;
    let mut line = format!("kernel side: {}", ks.origin);
    if let Some(at) = &ks.pinned_at {
        let _ = write!(line, ", pinned at {}", at.display());
    }
    if let Some(gone) = ks.previous_daemon_gone_secs {
        let _ = write!(line, "; previous daemon gone {gone}s before this start");
    }
    if let Some(gap) = ks.gap_secs {
        let _ = write!(line, "; capture gap {gap:.1}s");
    }
    if ks.adopted_processes > 0 {
        let _ = write!(line, "; {} probed processes adopted", ks.adopted_processes);
    }
    let _ = writeln!(out, "{line}");
    for why in &ks.replaced {
        let _ = writeln!(out, "  replaced {why}");
    }
    if let Some(why) = &ks.not_pinned {
        let _ = writeln!(
            out,
            "  not pinned: {why} (a restart misses what happens meanwhile)"
        );
    }
    let _ = writeln!(out, "TLS libraries:");
    for lib in &s.tls_libraries {
        let _ = writeln!(
            out,
            "  {} [{}] ({})",
            lib.path,
            lib.kind,
            lib.symbols.join(" ")
        );
        if !lib.coverage.is_empty() {
            let checked = match lib.confirmed {
                Some(true) => " (confirmed: its first plaintext was HTTP)",
                Some(false) => " (not confirmed by traffic yet)",
                None => "",
            };
            let _ = writeln!(out, "    {}{checked}", lib.coverage);
        }
    }
    let not_covered = &s.tls_not_covered;
    if !not_covered.executables.is_empty() {
        let _ = writeln!(out, "TLS not covered (not captured):");
        for (path, why) in &not_covered.executables {
            let _ = writeln!(out, "  {path}: {why}");
        }
        if not_covered.over_cap > 0 {
            let _ = writeln!(out, "  … and {} more", not_covered.over_cap);
        }
    }
    if !s.estimates.binaries.is_empty() {
        let _ = writeln!(out, "TLS estimated (no hook; bytes on the socket, SNI):");
        for (exe, how) in &s.estimates.binaries {
            let _ = writeln!(out, "  {exe}: {how}");
        }
    }
    if !s.attach_failures.is_empty() {
        let _ = writeln!(out, "attach failures:");
        for (path, err) in &s.attach_failures {
            let _ = writeln!(out, "  {path}: {err}");
        }
    }
    let _ = writeln!(
        out,
        "processes: {} live, {} exited but kept; live sessions: {}",
        s.processes.live, s.processes.exited_kept, s.live_sessions
    );
    let sections = [
        ("kernel_drops", Counters::of(&s.kernel_drops)),
        ("pipeline", s.pipeline.clone()),
        ("capture", s.capture.clone()),
    ];
    for (section, counters) in sections {
        let _ = writeln!(out, "{section}:");
        for (k, v) in &counters.0 {
            let _ = writeln!(out, "  {k}: {v}");
        }
    }
    // Every other section `--json` has (sinks, ceilings, first contact, Kubernetes, …), in
    // the same nesting.
    const SHOWN: &[&str] = &[
        "ok",
        "version",
        "uptime_secs",
        "data_dir",
        "kernel_side",
        "tracepoints",
        "tls_libraries",
        "tls_not_covered",
        "attach_failures",
        "processes",
        "live_sessions",
        "kernel_drops",
        "pipeline",
        "capture",
    ];
    if let Ok(serde_json::Value::Object(all)) = serde_json::to_value(s) {
        for (k, v) in all.iter().filter(|(k, _)| !SHOWN.contains(&k.as_str())) {
            render_value(out, 0, k, v);
        }
    }
}

/// `key: value` for a scalar, else `key:` and its fields indented below it.
fn render_value(out: &mut String, indent: usize, key: &str, v: &serde_json::Value) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if m.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: none");
        }
        Value::Object(m) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (k, v) in m {
                render_value(out, indent + 2, k, v);
            }
        }
        Value::Array(a) if a.is_empty() => {
            let _ = writeln!(out, "{pad}{key}: none");
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let items: Vec<String> = a.iter().map(scalar).collect();
            let _ = writeln!(out, "{pad}{key}: {}", items.join(", "));
        }
        Value::Array(a) => {
            let _ = writeln!(out, "{pad}{key}:");
            for (i, x) in a.iter().enumerate() {
                // A list of named things (sinks) is keyed by their names.
                let name = x
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{i}"));
                render_value(out, indent + 2, &name, x);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{key}: {}", scalar(other));
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn render_sessions(out: &mut String, list: &SessionList) {
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>6} {:>5} {:>6} {:>10} {:>12} {:>6} {:<10} ROOT",
        "SESSION", "ROOT_PID", "AGENTS", "DEPTH", "CALLS", "TOKENS", "COST", "TOOLS", "STATUS"
    );
    for s in &list.sessions {
        let status = s.outcome.live_word();
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>6} {:>5} {:>6} {:>10} {:>12} {:>6} {:<10} {}",
            s.session_id,
            s.root_pid,
            s.agents,
            s.depth_max,
            s.calls,
            s.total_tokens,
            usd(s.cost_usd),
            s.tool_runs,
            status,
            s.root_cmdline
        );
        if let Some(reason) = &s.reason {
            let _ = writeln!(out, "    ({reason}; {} ceiling hits)", s.ceiling_hits);
        }
    }
}

/// `sessions -o wide`: when each started, input and output tokens, ceiling hits and unpriced
/// calls besides the usual columns.
fn render_sessions_wide(out: &mut String, list: &SessionList) {
    let _ = writeln!(
        out,
        "{:<34} {:<20} {:>8} {:>6} {:>5} {:>6} {:>10} {:>10} {:>12} {:>5} {:>8} {:>6} {:>7} {:<10} ROOT",
        "SESSION",
        "STARTED",
        "ROOT_PID",
        "AGENTS",
        "DEPTH",
        "CALLS",
        "INPUT",
        "OUTPUT",
        "COST",
        "HITS",
        "UNPRICED",
        "TOOLS",
        "CEILING",
        "STATUS"
    );
    for s in &list.sessions {
        let field = |k: &str| s.rest.0.get(k).map(scalar).unwrap_or_else(|| "-".into());
        let status = s.outcome.live_word();
        let started = field("started_at");
        let _ = writeln!(
            out,
            "{:<34} {:<20} {:>8} {:>6} {:>5} {:>6} {:>10} {:>10} {:>12} {:>5} {:>8} {:>6} {:>7} {:<10} {}",
            s.session_id,
            started.get(..19).unwrap_or(&started),
            s.root_pid,
            s.agents,
            s.depth_max,
            s.calls,
            field("input_tokens"),
            field("output_tokens"),
            usd(s.cost_usd),
            s.ceiling_hits,
            field("unpriced_calls"),
            s.tool_runs,
            share(s.ceiling_share),
            status,
            s.root_cmdline
        );
        if let Some(reason) = &s.reason {
            let _ = writeln!(out, "    ({reason})");
        }
    }
}

fn render_actions(out: &mut String, list: &ActionList) {
    let _ = writeln!(out, "session {}", list.session_id);
    if list.agents.is_empty() {
        let _ = writeln!(out, "  no tool runs, no hosts and no files");
    }
    for agent in &list.agents {
        let _ = writeln!(
            out,
            "  agent pid {} (depth {}): {} tool runs, {} hosts, {} files",
            agent.agent_pid,
            agent.depth,
            agent.tool_runs.len(),
            agent.hosts.len(),
            agent.files.len()
        );
        for f in &agent.files {
            let mut did = Vec::new();
            for (n, what) in [
                (f.opened_for_write, "written"),
                (f.truncated, "truncated"),
                (f.renamed_to, "renamed here"),
                (f.renamed_from, "renamed away"),
                (f.deleted, "deleted"),
            ] {
                if n > 0 {
                    did.push(format!("{what} {n}x"));
                }
            }
            let _ = writeln!(
                out,
                "    {} file {} ({}; {} pid {})",
                f.first_at,
                f.path,
                did.join(", "),
                f.tool,
                f.pid
            );
        }
        for h in &agent.hosts {
            let addr = match h.address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, h.port).to_string(),
                Err(_) => format!("{}:{}", h.address, h.port),
            };
            let _ = writeln!(
                out,
                "    {} connect {} ({} pid {})",
                h.first_at, addr, h.tool, h.pid
            );
        }
        for t in &agent.tool_runs {
            let end = match (t.exit_code, t.signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), None) => format!("exit {code}"),
                (None, None) => "exit ?".into(),
            };
            let _ = writeln!(
                out,
                "    {} {} pid {} ({}, {:.1} ms) {}",
                t.started_at,
                t.tool,
                t.pid,
                end,
                t.duration_ms,
                t.exe.as_deref().unwrap_or("-")
            );
        }
    }
}

fn render_trees(out: &mut String, list: &TreeList) {
    let now = now_unix_ns();
    for tree in &list.trees {
        let _ = writeln!(out, "session {}", tree.session_id);
        for agent in &tree.agents {
            let depth = agent.depth as usize;
            let _ = writeln!(
                out,
                "{}- pid {} {} (depth {}): {} calls, {} tokens, {}",
                "  ".repeat(depth + 1),
                agent.pid,
                agent.comm,
                depth,
                agent.calls,
                agent.total_tokens,
                usd(agent.cost_usd)
            );
            for c in &agent.in_flight {
                let _ = writeln!(
                    out,
                    "{}  > in flight: {} for {}",
                    "  ".repeat(depth + 1),
                    c.model.as_deref().unwrap_or("(model unknown)"),
                    since(&c.started_at, now)
                );
            }
        }
        for t in &tree.tools_running {
            let _ = writeln!(
                out,
                "  tool {} pid {} under pid {}, running {}",
                t.tool,
                t.pid,
                t.agent_pid,
                since(&t.started_at, now)
            );
        }
    }
}
