//! `agentwatch top`: a live terminal view of the daemon (ratatui), refreshed every second from
//! the control socket. Sessions sorted by spend rate with the share of their own ceiling, the
//! host's rolling day against its ceiling, and the selected session's agent tree with its
//! calls in flight and running tools; keys pause, approve and kill a session, each after a
//! confirmation. Fits an 80×24 terminal (over ssh too): columns narrow before they wrap.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};

use super::render::now_unix_ns;
use super::replies::{Session, Status, Tree};
use super::{ControlError, Reply, Request};

/// What one refresh read.
#[derive(Default)]
struct Snapshot {
    status: Option<Status>,
    sessions: Vec<Session>,
    tree: Option<Tree>,
    error: Option<String>,
}

/// A key that waits for `y`.
enum Pending {
    Approve(String),
    Pause(String),
    Kill(String),
}

fn ask(socket: &Path, req: &Request) -> Result<Reply, String> {
    let answer = super::request(socket, req).map_err(|e| e.to_string())?;
    match Reply::read(req, answer).map_err(|e| e.to_string())? {
        Reply::Refused(r) => Err(r.error),
        reply => Ok(reply),
    }
}

fn started_secs_ago(s: &Session, now_unix_ns: i128) -> Option<f64> {
    let started = s.rest.0.get("started_at")?.as_str()?;
    let at = crate::sessions::clock::parse_rfc3339(started)?;
    Some(((now_unix_ns - at) as f64 / 1e9).max(1.0))
}

/// USD per minute since the session started.
fn rate(s: &Session, now_unix_ns: i128) -> f64 {
    match (s.cost_usd, started_secs_ago(s, now_unix_ns)) {
        (Some(c), Some(secs)) => c / secs * 60.0,
        _ => 0.0,
    }
}

fn refresh(socket: &Path, selected: Option<&str>) -> Snapshot {
    let mut snap = Snapshot::default();
    match ask(socket, &Request::Status) {
        Ok(Reply::Status(s)) => snap.status = Some(*s),
        Ok(_) => {}
        Err(e) => {
            snap.error = Some(e);
            return snap;
        }
    }
    if let Ok(Reply::Sessions(list)) = ask(socket, &Request::Sessions) {
        let now = now_unix_ns();
        let mut sessions = list.sessions;
        sessions.sort_by(|a, b| rate(b, now).total_cmp(&rate(a, now)));
        snap.sessions = sessions;
    }
    let id = selected
        .filter(|id| snap.sessions.iter().any(|s| s.session_id == *id))
        .or(snap.sessions.first().map(|s| s.session_id.as_str()))
        .map(str::to_string);
    if let Some(id) = id
        && let Ok(Reply::Trees(mut t)) = ask(socket, &Request::Tree { session: Some(id) })
        && !t.trees.is_empty()
    {
        snap.tree = Some(t.trees.remove(0));
    }
    snap
}

fn usd(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("${v:.4}"))
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The root's command line, paths by their file names (`python openai_chat.py --calls 3`):
/// what tells two sessions apart in a narrow column.
fn root_of(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .map(|w| match w.rsplit_once('/') {
            Some((_, name)) if !name.is_empty() && !w.contains("://") => name,
            _ => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_word(s: &Session) -> &'static str {
    match s.outcome {
        crate::sessions::Outcome::Paused => "PAUSED",
        o => o.live_word(),
    }
}

/// The selected session's lines: each agent (indented by depth) with its calls in flight
/// under it, then the tools running and the ceiling's reason.
fn tree_lines(tree: &Tree, session: Option<&Session>, now: i128) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for a in &tree.agents {
        let pad = "  ".repeat(a.depth as usize);
        lines.push(Line::from(format!(
            "{pad}pid {} {} (depth {}): {} calls, {} tokens, {}",
            a.pid,
            a.comm,
            a.depth,
            a.calls,
            a.total_tokens,
            usd(a.cost_usd)
        )));
        for c in &a.in_flight {
            lines.push(Line::from(format!(
                "{pad}  > in flight: {} for {}",
                c.model.as_deref().unwrap_or("(model unknown)"),
                super::render::since(&c.started_at, now)
            )));
        }
    }
    for t in &tree.tools_running {
        lines.push(Line::from(format!(
            "tool {} pid {} under pid {}, running {}",
            t.tool,
            t.pid,
            t.agent_pid,
            super::render::since(&t.started_at, now)
        )));
    }
    if let Some(s) = session
        && let Some(reason) = &s.reason
    {
        lines.push(Line::from(format!(
            "ceiling hits: {} ({reason})",
            s.ceiling_hits
        )));
    }
    lines
}

/// The host line: its rolling day against `host_usd_per_day`.
fn host_line(status: Option<&Status>, sessions: usize) -> String {
    let Some(st) = status else {
        return "agentwatch top".into();
    };
    let spent = st
        .ceilings
        .stats
        .as_ref()
        .map(|s| s.host_usd_last_24h)
        .unwrap_or(0.0);
    let day = match st.ceilings.host_usd_per_day {
        Some(limit) if limit > 0.0 => format!(
            "host 24h ${spent:.4} of ${limit:.2} ({:.0}%)",
            spent / limit * 100.0
        ),
        _ => format!("host 24h ${spent:.4} (no ceiling)"),
    };
    format!(
        "agentwatch {}  {day}  {sessions} live, {} paused",
        st.version, st.ceilings.paused_sessions
    )
}

/// Runs the view until `q` (or Ctrl-C). The terminal is restored on every exit path.
pub fn run(socket: &Path) -> Result<(), ControlError> {
    // Fail before taking over the terminal when the daemon is not there.
    if let Err(e) = super::request(socket, &Request::Status) {
        return Err(e);
    }
    let mut terminal = ratatui::init();
    let result = view(&mut terminal, socket);
    ratatui::restore();
    result.map_err(|source| ControlError::Io {
        path: socket.into(),
        source,
    })
}

fn view(terminal: &mut ratatui::DefaultTerminal, socket: &Path) -> std::io::Result<()> {
    let mut table = TableState::default().with_selected(Some(0));
    let mut selected: Option<String> = None;
    let mut pending: Option<Pending> = None;
    let mut message = String::from("↑↓ select  p pause  a approve  k kill  q quit");
    let mut snap = refresh(socket, None);
    let mut last = Instant::now();
    loop {
        if let Some(id) = &selected
            && let Some(i) = snap.sessions.iter().position(|s| &s.session_id == id)
        {
            table.select(Some(i));
        }
        let now = now_unix_ns();
        terminal.draw(|f| {
            let [head, list, tree, foot] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Min(5),
                Constraint::Length(10),
                Constraint::Length(1),
            ])
            .areas(f.area());
            f.render_widget(
                Paragraph::new(host_line(snap.status.as_ref(), snap.sessions.len()))
                    .style(Style::new().add_modifier(Modifier::BOLD)),
                head,
            );
            let rows = snap.sessions.iter().map(|s| {
                let tokens = s.total_tokens;
                Row::new(vec![
                    short(&s.session_id).to_string(),
                    root_of(&s.root_cmdline),
                    s.agents.to_string(),
                    s.depth_max.to_string(),
                    s.calls.to_string(),
                    tokens.to_string(),
                    usd(s.cost_usd),
                    format!("{:.4}", rate(s, now)),
                    super::render::share(s.ceiling_share),
                    status_word(s).to_string(),
                ])
            });
            let widths = [
                Constraint::Length(8),
                Constraint::Min(10),
                Constraint::Length(3),
                Constraint::Length(3),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(4),
                Constraint::Length(7),
            ];
            let t = Table::new(rows, widths)
                .header(
                    Row::new(vec![
                        "SESSION", "ROOT", "AG", "DEP", "CALLS", "TOKENS", "COST", "$/MIN", "CEIL",
                        "STATUS",
                    ])
                    .style(Style::new().add_modifier(Modifier::BOLD)),
                )
                .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
                .block(
                    Block::new()
                        .borders(Borders::TOP)
                        .title(" sessions by spend rate "),
                );
            f.render_stateful_widget(t, list, &mut table);
            let (lines, title) = match &snap.tree {
                Some(tree) => {
                    let session = snap
                        .sessions
                        .iter()
                        .find(|s| s.session_id == tree.session_id);
                    (
                        tree_lines(tree, session, now),
                        format!(" agent tree of {} ", tree.session_id),
                    )
                }
                None => (Vec::new(), " agent tree ".into()),
            };
            f.render_widget(
                Paragraph::new(lines).block(Block::new().borders(Borders::TOP).title(title)),
                tree,
            );
            let foot_text = match (&snap.error, &pending) {
                (_, Some(Pending::Approve(id))) => format!("approve session {}? y/n", short(id)),
                (_, Some(Pending::Pause(id))) => format!("pause session {}? y/n", short(id)),
                (_, Some(Pending::Kill(id))) => {
                    format!("kill session {} and its whole process tree? y/n", short(id))
                }
                (Some(e), None) => format!("daemon: {e}"),
                (None, None) => message.clone(),
            };
            f.render_widget(Paragraph::new(foot_text), foot);
        })?;
        let wait = Duration::from_secs(1).saturating_sub(last.elapsed());
        if event::poll(wait)?
            && let Event::Key(key) = event::read()?
            && key.kind == KeyEventKind::Press
        {
            let current = table
                .selected()
                .and_then(|i| snap.sessions.get(i))
                .map(|s| s.session_id.clone());
            if let Some(p) = pending.take() {
                if key.code == KeyCode::Char('y') {
                    let (req, what) = match p {
                        Pending::Approve(id) => (
                            Request::Approve {
                                session: id.clone(),
                                raise_usd: None,
                                raise_tokens: None,
                                raise_calls: None,
                            },
                            format!("approved {}", short(&id)),
                        ),
                        Pending::Pause(id) => (
                            Request::Pause {
                                session: id.clone(),
                            },
                            format!("paused {}", short(&id)),
                        ),
                        Pending::Kill(id) => (
                            Request::Kill {
                                session: id.clone(),
                            },
                            format!("killed {}", short(&id)),
                        ),
                    };
                    message = match ask(socket, &req) {
                        Ok(_) => what,
                        Err(e) => format!("refused: {e}"),
                    };
                } else {
                    message = "cancelled".into();
                }
            } else {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        table.select_next();
                        if let Some(i) = table.selected() {
                            let i = i.min(snap.sessions.len().saturating_sub(1));
                            table.select(Some(i));
                            selected = snap.sessions.get(i).map(|s| s.session_id.clone());
                        }
                    }
                    KeyCode::Up => {
                        table.select_previous();
                        selected = table
                            .selected()
                            .and_then(|i| snap.sessions.get(i))
                            .map(|s| s.session_id.clone());
                    }
                    KeyCode::Char('a') => pending = current.map(Pending::Approve),
                    KeyCode::Char('k') => pending = current.map(Pending::Kill),
                    KeyCode::Char('p') => pending = current.map(Pending::Pause),
                    _ => {}
                }
            }
        }
        if last.elapsed() >= Duration::from_secs(1) || pending.is_none() {
            snap = refresh(socket, selected.as_deref());
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{InFlightCall, RunningTool};

    const NOW: &str = "2026-01-01T00:10:00Z";

    fn now() -> i128 {
        crate::sessions::clock::parse_rfc3339(NOW).unwrap()
    }

    use crate::control::render::since;

    #[test]
    fn since_reads_seconds_minutes_and_hours() {
        assert_eq!(since("2026-01-01T00:09:58Z", now()), "2s");
        assert_eq!(since("2026-01-01T00:06:53Z", now()), "3m07s");
        assert_eq!(since("2025-12-31T22:05:00Z", now()), "2h05m");
        assert_eq!(since("not a time", now()), "?");
    }

    /// Calls in flight sit under their agent; tools running and the ceiling's reason follow.
    #[test]
    fn tree_lines_show_calls_in_flight_and_tools_running() {
        let agent = |pid, depth, in_flight| crate::control::replies::Agent {
            pid,
            comm: "python".into(),
            depth,
            calls: 1,
            total_tokens: 30,
            cost_usd: Some(0.25),
            in_flight,
            rest: Default::default(),
        };
        let tree = Tree {
            session_id: "s-1".into(),
            agents: vec![
                agent(
                    10,
                    0,
                    vec![InFlightCall {
                        model: Some("gpt-4o".into()),
                        started_at: "2026-01-01T00:09:55Z".into(),
                    }],
                ),
                agent(12, 1, Vec::new()),
            ],
            tools_running: vec![RunningTool {
                pid: 11,
                tool: "bash".into(),
                agent_pid: 10,
                started_at: "2026-01-01T00:08:00Z".into(),
            }],
            rest: Default::default(),
        };
        // `agentwatch tree` prints the same, started times as of the real clock.
        let printed =
            crate::control::render::render(&Reply::Trees(crate::control::replies::TreeList {
                trees: vec![tree.clone()],
            }));
        assert!(
            printed.contains("    > in flight: gpt-4o for ")
                && printed.contains("  tool bash pid 11 under pid 10, running "),
            "{printed}"
        );
        let session = Session {
            reason: Some("session_calls reached".into()),
            ceiling_hits: 1,
            ..Default::default()
        };
        let text: Vec<String> = tree_lines(&tree, Some(&session), now())
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "pid 10 python (depth 0): 1 calls, 30 tokens, $0.2500",
                "  > in flight: gpt-4o for 5s",
                "  pid 12 python (depth 1): 1 calls, 30 tokens, $0.2500",
                "tool bash pid 11 under pid 10, running 2m00s",
                "ceiling hits: 1 (session_calls reached)",
            ]
        );
    }
}
