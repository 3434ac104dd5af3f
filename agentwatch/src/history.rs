//! `agentwatch ledger`: what agents cost over a time range, read from the files the daemon
//! wrote (`calls.jsonl`, `ledger.jsonl` and their rotated segments, gzipped or not). Needs no
//! daemon: it answers for a stopped one, or for a data directory copied from another host.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sessions::clock::{format_unix_ns, parse_rfc3339};
use crate::sinks::rotation::{for_each_line, segments};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "--{flag} {value:?}: expected a duration back from now (30m, 12h, 7d, 2w), a date (2026-12-01, UTC) or an RFC 3339 time"
    )]
    Time { flag: &'static str, value: String },
    #[error("cannot read {path}: {source}; is it the daemon's data directory (--data-dir)?")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How `agentwatch ledger --by` groups calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Model,
    Provider,
    /// The session's root program (its ledger row's `root_comm`).
    Root,
    /// The caller's Kubernetes namespace (`-` on the host).
    Namespace,
    /// The UTC day the call started.
    Day,
}

/// `[since, until)` in Unix nanoseconds; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub since: Option<i128>,
    pub until: Option<i128>,
}

impl Range {
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        now_ns: i128,
    ) -> Result<Range, HistoryError> {
        Ok(Range {
            since: since.map(|s| parse_time("since", s, now_ns)).transpose()?,
            until: until.map(|s| parse_time("until", s, now_ns)).transpose()?,
        })
    }

    fn contains(&self, at: &str) -> bool {
        let Some(t) = parse_rfc3339(at) else {
            return false;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// `30m`, `12h`, `7d`, `2w`, `90s` back from `now_ns`; `2026-12-01` (UTC midnight); or RFC 3339.
pub fn parse_time(flag: &'static str, value: &str, now_ns: i128) -> Result<i128, HistoryError> {
    let err = || HistoryError::Time {
        flag,
        value: value.to_string(),
    };
    let v = value.trim();
    if let Some(unit) = v.chars().last().filter(|c| c.is_ascii_alphabetic())
        && let Ok(n) = v[..v.len() - 1].parse::<u64>()
    {
        let secs: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(err()),
        };
        return Ok(now_ns - i128::from(n.saturating_mul(secs)) * 1_000_000_000);
    }
    if v.len() == 10
        && let Some(t) = parse_rfc3339(&format!("{v}T00:00:00Z"))
    {
        return Ok(t);
    }
    parse_rfc3339(v).ok_or_else(err)
}

/// What a group of calls cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    pub sessions: u64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// Of the priced calls (an estimated call at its upper bound).
    pub cost_usd: f64,
    /// Calls of models with no known price (their tokens count, their cost does not).
    pub unpriced_calls: u64,
}

/// One closed session, as `agentwatch ledger` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionLine {
    pub session_id: String,
    pub started_at: String,
    pub ended_at: String,
    pub root_comm: String,
    pub root_pid: u32,
    pub call_count: u64,
    pub total_tokens: u64,
    pub total_cost_usd: f64,
    pub outcome: String,
    pub pod_namespace: Option<String>,
}

/// What a call row holds that the history needs (a row of an older or newer build reads).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CallLine {
    session_id: String,
    provider: String,
    model: Option<String>,
    started_at: String,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    cost_usd: Option<f64>,
    estimate: Option<EstimateLine>,
    blocked: bool,
    root_pid: u32,
    pod_namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EstimateLine {
    cost_usd_high: Option<f64>,
}

/// Every line of `kind`'s files, oldest first: rotated segments, then the current file.
fn lines(data_dir: &Path, kind: &str, mut f: impl FnMut(&[u8])) -> Result<u64, HistoryError> {
    let read = |path: PathBuf, source| HistoryError::Read { path, source };
    let mut files: Vec<PathBuf> = segments(data_dir)
        .map_err(|e| {
            read(
                data_dir.join("rotated"),
                std::io::Error::other(e.to_string()),
            )
        })?
        .into_iter()
        .filter_map(|s| if kind == "calls" { s.calls } else { s.ledger })
        .collect();
    let current = data_dir.join(format!("{kind}.jsonl"));
    if !current.exists() && files.is_empty() && !data_dir.is_dir() {
        return Err(read(
            data_dir.to_path_buf(),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    files.push(current);
    let mut torn = 0;
    for path in files {
        if !path.exists() {
            continue;
        }
        for_each_line(&path, &mut torn, &mut f)
            .map_err(|e| read(path.clone(), std::io::Error::other(e.to_string())))?;
    }
    Ok(torn)
}

/// Closed sessions that ended in `range`, oldest first.
pub fn sessions(data_dir: &Path, range: Range) -> Result<Vec<SessionLine>, HistoryError> {
    let mut out = Vec::new();
    lines(data_dir, "ledger", |bytes| {
        if let Ok(s) = serde_json::from_slice::<SessionLine>(bytes)
            && range.contains(&s.ended_at)
        {
            out.push(s);
        }
    })?;
    // A row written twice (never, by design; a copied directory might) counts once.
    let mut seen = BTreeSet::new();
    out.retain(|s| seen.insert(s.session_id.clone()));
    Ok(out)
}

/// The calls that started in `range` (stopped attempts left out), grouped `by`, costliest
/// first.
pub fn groups(data_dir: &Path, range: Range, by: By) -> Result<Vec<Group>, HistoryError> {
    // Roots come from the ledger (a session still open has none yet: its root pid names it).
    let mut roots: BTreeMap<String, String> = BTreeMap::new();
    if by == By::Root {
        lines(data_dir, "ledger", |bytes| {
            if let Ok(s) = serde_json::from_slice::<SessionLine>(bytes) {
                roots.insert(s.session_id, s.root_comm);
            }
        })?;
    }
    let mut acc: BTreeMap<String, (Group, BTreeSet<String>)> = BTreeMap::new();
    lines(data_dir, "calls", |bytes| {
        let Ok(c) = serde_json::from_slice::<CallLine>(bytes) else {
            return;
        };
        if c.blocked || !range.contains(&c.started_at) {
            return;
        }
        let key = match by {
            By::Model => c.model.clone().unwrap_or_else(|| "(unknown)".into()),
            By::Provider => c.provider.clone(),
            By::Root => roots
                .get(&c.session_id)
                .cloned()
                .unwrap_or_else(|| format!("(open) pid {}", c.root_pid)),
            By::Namespace => c.pod_namespace.clone().unwrap_or_else(|| "-".into()),
            By::Day => c.started_at.get(..10).unwrap_or_default().to_string(),
        };
        let (g, sessions) = acc.entry(key.clone()).or_default();
        g.key = key;
        g.calls += 1;
        g.input_tokens += c.input_tokens;
        g.output_tokens += c.output_tokens;
        g.total_tokens += c.total_tokens;
        match c
            .cost_usd
            .or(c.estimate.as_ref().and_then(|e| e.cost_usd_high))
        {
            Some(cost) => g.cost_usd += cost,
            None => g.unpriced_calls += 1,
        }
        sessions.insert(c.session_id);
    })?;
    let mut out: Vec<Group> = acc
        .into_values()
        .map(|(mut g, s)| {
            g.sessions = s.len() as u64;
            g
        })
        .collect();
    if by == By::Day {
        out.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        out.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then(a.key.cmp(&b.key)));
    }
    Ok(out)
}

/// One call, as `agentwatch calls` lists it (the file's row, all of it, in `--json`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct CallSummary {
    session_id: String,
    started_at: String,
    pid: u32,
    depth: u32,
    model: Option<String>,
    status: Option<u16>,
    total_tokens: u64,
    cost_usd: Option<f64>,
    blocked: bool,
}

/// The calls of the session whose id is `prefix` or starts with it (one session: an unknown
/// or ambiguous prefix is an error), oldest first, as the files hold them.
pub fn calls_of(data_dir: &Path, prefix: &str) -> Result<(String, Vec<serde_json::Value>), String> {
    let mut by_session: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    lines(data_dir, "calls", |bytes| {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
            && let Some(id) = v["session_id"].as_str()
            && id.starts_with(prefix)
        {
            by_session.entry(id.to_string()).or_default().push(v);
        }
    })
    .map_err(|e| e.to_string())?;
    match by_session.len() {
        0 => Err(format!(
            "no calls of a session {prefix}… in {}; `agentwatch ledger` and `agentwatch sessions` list sessions",
            data_dir.display()
        )),
        1 => Ok(by_session.into_iter().next().expect("one")),
        _ => Err(format!(
            "{prefix} names {} sessions ({}); give more of the id",
            by_session.len(),
            by_session.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

pub fn render_calls(session_id: &str, calls: &[serde_json::Value]) -> String {
    let mut out = format!(
        "session {session_id}: {} calls
",
        calls.len()
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>5} {:<28} {:>6} {:>10} {:>12}",
        "STARTED", "PID", "DEPTH", "MODEL", "STATUS", "TOKENS", "COST"
    );
    for v in calls {
        let c: CallSummary = serde_json::from_value(v.clone()).unwrap_or_default();
        let cost = match (c.blocked, c.cost_usd) {
            (true, _) => "stopped".to_string(),
            (false, Some(x)) => format!("${x:.6}"),
            (false, None) => "unpriced".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:>8} {:>5} {:<28} {:>6} {:>10} {:>12}",
            c.started_at.get(..19).unwrap_or(&c.started_at),
            c.pid,
            c.depth,
            c.model.unwrap_or_default(),
            c.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            c.total_tokens,
            cost
        );
    }
    out
}

/// The range as the header of a table says it.
pub fn describe(range: Range) -> String {
    let at = |t: i128| format_unix_ns(t).get(..19).unwrap_or_default().to_string() + "Z";
    match (range.since, range.until) {
        (None, None) => "all of the data directory".into(),
        (Some(s), None) => format!("since {}", at(s)),
        (None, Some(u)) => format!("until {}", at(u)),
        (Some(s), Some(u)) => format!("{} to {}", at(s), at(u)),
    }
}

pub fn render_groups(by: By, range: Range, groups: &[Group]) -> String {
    let mut out = format!("calls by {by:?} ({})\n", describe(range)).to_lowercase();
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "KEY", "SESSIONS", "CALLS", "INPUT", "OUTPUT", "COST"
    );
    let mut total = Group::default();
    for g in groups {
        let unpriced = if g.unpriced_calls > 0 {
            format!("  ({} unpriced)", g.unpriced_calls)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>8} {:>12} {:>12} {:>12}{unpriced}",
            g.key,
            g.sessions,
            g.calls,
            g.input_tokens,
            g.output_tokens,
            format!("${:.6}", g.cost_usd)
        );
        total.calls += g.calls;
        total.input_tokens += g.input_tokens;
        total.output_tokens += g.output_tokens;
        total.cost_usd += g.cost_usd;
    }
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "TOTAL",
        "",
        total.calls,
        total.input_tokens,
        total.output_tokens,
        format!("${:.6}", total.cost_usd)
    );
    out
}

pub fn render_sessions(range: Range, sessions: &[SessionLine]) -> String {
    let mut out = format!("closed sessions ({})\n", describe(range));
    let _ = writeln!(
        out,
        "{:<20} {:<34} {:<16} {:>6} {:>10} {:>12} OUTCOME",
        "ENDED", "SESSION", "ROOT", "CALLS", "TOKENS", "COST"
    );
    let mut cost = 0.0;
    for s in sessions {
        let _ = writeln!(
            out,
            "{:<20} {:<34} {:<16} {:>6} {:>10} {:>12} {}",
            s.ended_at.get(..19).unwrap_or(&s.ended_at),
            s.session_id,
            s.root_comm,
            s.call_count,
            s.total_tokens,
            format!("${:.6}", s.total_cost_usd),
            s.outcome
        );
        cost += s.total_cost_usd;
    }
    let _ = writeln!(out, "{} sessions, ${cost:.6}", sessions.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i128 = 1_796_000_000_000_000_000; // 2026-11-30T…

    #[test]
    fn times_parse_as_durations_dates_and_rfc3339() {
        assert_eq!(
            parse_time("since", "1h", NOW).unwrap(),
            NOW - 3_600_000_000_000
        );
        assert_eq!(
            parse_time("since", "2d", NOW).unwrap(),
            NOW - 2 * 86_400_000_000_000
        );
        assert_eq!(
            parse_time("since", "2026-12-01", NOW).unwrap(),
            parse_rfc3339("2026-12-01T00:00:00Z").unwrap()
        );
        assert_eq!(
            parse_time("until", "2026-12-01T10:00:00+01:00", NOW).unwrap(),
            parse_rfc3339("2026-12-01T09:00:00Z").unwrap()
        );
        for bad in ["yesterday", "1y", "", "2026-13-01"] {
            let e = parse_time("since", bad, NOW).unwrap_err().to_string();
            assert!(e.contains("--since") && e.contains("30m"), "{e}");
        }
    }

    #[test]
    fn calls_group_by_model_day_and_root_across_rotated_segments() {
        let dir = crate::procs::test_support::TempDir::new("history");
        let d = dir.path();
        let call = |sid: &str, model: &str, at: &str, cost: Option<f64>, blocked: bool| {
            serde_json::json!({"session_id": sid, "provider": "openai", "model": model,
                "started_at": at, "input_tokens": 100, "output_tokens": 10, "total_tokens": 110,
                "cost_usd": cost, "blocked": blocked, "root_pid": 7})
            .to_string()
                + "\n"
        };
        std::fs::create_dir_all(d.join("rotated")).unwrap();
        std::fs::write(
            d.join("rotated/calls-1.jsonl"),
            call("s1", "gpt-4o", "2026-12-01T10:00:00.0Z", Some(0.5), false),
        )
        .unwrap();
        std::fs::write(
            d.join("calls.jsonl"),
            call("s1", "gpt-4o", "2026-12-02T10:00:00.0Z", Some(0.25), false)
                + &call("s2", "new-model", "2026-12-02T11:00:00.0Z", None, false)
                + &call("s2", "gpt-4o", "2026-12-02T11:00:01.0Z", Some(0.0), true)
                + "{torn",
        )
        .unwrap();
        std::fs::write(
            d.join("ledger.jsonl"),
            serde_json::json!({"session_id": "s1", "root_comm": "claude",
                "ended_at": "2026-12-02T10:00:05.0Z", "total_cost_usd": 0.75, "call_count": 2})
            .to_string()
                + "\n",
        )
        .unwrap();
        let all = Range::default();
        let by_model = groups(d, all, By::Model).unwrap();
        assert_eq!(by_model[0].key, "gpt-4o");
        assert_eq!((by_model[0].calls, by_model[0].sessions), (2, 1));
        assert!((by_model[0].cost_usd - 0.75).abs() < 1e-9);
        assert_eq!(by_model[1].key, "new-model");
        assert_eq!(
            by_model[1].unpriced_calls, 1,
            "a stopped attempt is no call"
        );
        let by_day = groups(d, all, By::Day).unwrap();
        let days: Vec<_> = by_day.iter().map(|g| (g.key.as_str(), g.calls)).collect();
        assert_eq!(days, [("2026-12-01", 1), ("2026-12-02", 2)]);
        let by_root = groups(d, all, By::Root).unwrap();
        let roots: Vec<_> = by_root.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(roots, ["claude", "(open) pid 7"]);
        let dec2 = Range::parse(Some("2026-12-02"), None, NOW).unwrap();
        let g = groups(d, dec2, By::Provider).unwrap();
        assert_eq!((g[0].calls, g[0].sessions), (2, 2));
        assert_eq!(sessions(d, dec2).unwrap().len(), 1);
        let before = Range::parse(None, Some("2026-12-02"), NOW).unwrap();
        assert!(sessions(d, before).unwrap().is_empty());
        assert!(render_groups(By::Model, all, &by_model).contains("TOTAL"));
        // Not a data directory: an error that says what to pass.
        let e = groups(&d.join("nope"), all, By::Model).unwrap_err();
        assert!(e.to_string().contains("--data-dir"), "{e}");
    }
}
