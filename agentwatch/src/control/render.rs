//! Human-readable output of the CLI (the same answers are available with `--json`).
use std::fmt::Write;

use serde_json::Value;

use super::Request;

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn usd(v: &Value) -> String {
    v.as_f64()
        .map(|c| format!("${c:.6}"))
        .unwrap_or_else(|| "-".into())
}

pub fn render(req: &Request, answer: &Value) -> String {
    let mut out = String::new();
    match req {
        Request::Status => {
            let ok = answer["ok"].as_bool() == Some(true);
            let _ = writeln!(
                out,
                "agentwatch {}: {} (up {}s), data in {}",
                answer["version"].as_str().unwrap_or("?"),
                if ok {
                    "all probes attached"
                } else {
                    "NOT all probes attached"
                },
                num(&answer["uptime_secs"]),
                answer["data_dir"].as_str().unwrap_or("?")
            );
            let tps: Vec<&str> = answer["tracepoints"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(out, "tracepoints: {}", tps.join(", "));
            let ks = &answer["kernel_side"];
            let mut line = format!("kernel side: {}", ks["origin"].as_str().unwrap_or("?"));
            if let Some(at) = ks["pinned_at"].as_str() {
                let _ = write!(line, ", pinned at {at}");
            }
            if let Some(gone) = ks["previous_daemon_gone_secs"].as_u64() {
                let _ = write!(line, "; previous daemon gone {gone}s before this start");
            }
            if let Some(gap) = ks["gap_secs"].as_f64() {
                let _ = write!(line, "; capture gap {gap:.1}s");
            }
            if let Some(n) = ks["adopted_processes"].as_u64().filter(|n| *n > 0) {
                let _ = write!(line, "; {n} probed processes adopted");
            }
            let _ = writeln!(out, "{line}");
            for why in ks["replaced"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  replaced {}", why.as_str().unwrap_or("?"));
            }
            if let Some(why) = ks["not_pinned"].as_str() {
                let _ = writeln!(
                    out,
                    "  not pinned: {why} (a restart misses what happens meanwhile)"
                );
            }
            let _ = writeln!(out, "TLS libraries:");
            for lib in answer["tls_libraries"].as_array().into_iter().flatten() {
                let syms: Vec<&str> = lib["symbols"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {} [{}] ({})",
                    lib["path"].as_str().unwrap_or("?"),
                    lib["kind"].as_str().unwrap_or("?"),
                    syms.join(" ")
                );
                if let Some(coverage) = lib["coverage"].as_str().filter(|c| !c.is_empty()) {
                    let checked = match lib["confirmed"].as_bool() {
                        Some(true) => " (confirmed: its first plaintext was HTTP)",
                        Some(false) => " (not confirmed by traffic yet)",
                        None => "",
                    };
                    let _ = writeln!(out, "    {coverage}{checked}");
                }
            }
            let not_covered = &answer["tls_not_covered"];
            if let Some(exes) = not_covered["executables"].as_object()
                && !exes.is_empty()
            {
                let _ = writeln!(out, "TLS not covered (not captured):");
                for (path, why) in exes {
                    let _ = writeln!(out, "  {path}: {}", why.as_str().unwrap_or("?"));
                }
                let over = num(&not_covered["over_cap"]);
                if over > 0 {
                    let _ = writeln!(out, "  … and {over} more");
                }
            }
            if let Some(bins) = answer["estimates"]["binaries"].as_object()
                && !bins.is_empty()
            {
                let _ = writeln!(out, "TLS estimated (no hook; bytes on the socket, SNI):");
                for (exe, how) in bins {
                    let _ = writeln!(out, "  {exe}: {}", how.as_str().unwrap_or("?"));
                }
            }
            if let Some(f) = answer["attach_failures"].as_object()
                && !f.is_empty()
            {
                let _ = writeln!(out, "attach failures:");
                for (path, err) in f {
                    let _ = writeln!(out, "  {path}: {}", err.as_str().unwrap_or("?"));
                }
            }
            let _ = writeln!(
                out,
                "processes: {} live, {} exited but kept; live sessions: {}",
                num(&answer["processes"]["live"]),
                num(&answer["processes"]["exited_kept"]),
                num(&answer["live_sessions"])
            );
            for section in ["kernel_drops", "pipeline", "capture"] {
                let _ = writeln!(out, "{section}:");
                for (k, v) in answer[section].as_object().into_iter().flatten() {
                    let _ = writeln!(out, "  {k}: {v}");
                }
            }
        }
        Request::Sessions => {
            let _ = writeln!(
                out,
                "{:<34} {:>8} {:>6} {:>5} {:>6} {:>10} {:>12} {:<10} ROOT",
                "SESSION", "ROOT_PID", "AGENTS", "DEPTH", "CALLS", "TOKENS", "COST", "STATUS"
            );
            for s in answer["sessions"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<34} {:>8} {:>6} {:>5} {:>6} {:>10} {:>12} {:<10} {}",
                    s["session_id"].as_str().unwrap_or("?"),
                    num(&s["root_pid"]),
                    num(&s["agents"]),
                    num(&s["depth_max"]),
                    num(&s["calls"]),
                    num(&s["total_tokens"]),
                    usd(&s["cost_usd"]),
                    match s["outcome"].as_str() {
                        Some("completed") | None => "running",
                        Some(other) => other,
                    },
                    s["root_cmdline"].as_str().unwrap_or("")
                );
                if let Some(reason) = s["reason"].as_str() {
                    let _ = writeln!(
                        out,
                        "    ({reason}; {} ceiling hits)",
                        num(&s["ceiling_hits"])
                    );
                }
            }
        }
        Request::Approve { .. } | Request::Kill { .. } | Request::Reload => {
            let _ = writeln!(out, "{answer}");
        }
        Request::Tree { .. } => {
            for tree in answer["trees"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "session {}",
                    tree["session_id"].as_str().unwrap_or("?")
                );
                for agent in tree["agents"].as_array().into_iter().flatten() {
                    let depth = num(&agent["depth"]) as usize;
                    let _ = writeln!(
                        out,
                        "{}- pid {} {} (depth {}): {} calls, {} tokens, {}",
                        "  ".repeat(depth + 1),
                        num(&agent["pid"]),
                        agent["comm"].as_str().unwrap_or("?"),
                        depth,
                        num(&agent["calls"]),
                        num(&agent["total_tokens"]),
                        usd(&agent["cost_usd"])
                    );
                }
            }
        }
    }
    out
}
