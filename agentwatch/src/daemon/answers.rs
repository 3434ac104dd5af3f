//! The daemon's answers on the control socket (and the status the metrics read).
use crate::config::Config;
use crate::control::replies::{
    ActionList, AgentActions, Ceilings, Counters, Estimates, FirstContact, NotCovered,
    ProbedProcesses, Processes, Reloaded, Session, SessionList, Status, TreeList, reshape,
};
use crate::control::{Reply, Request};
use crate::probes::Scope;

use super::Daemon;

impl Daemon {
    pub(super) fn answer(&self, req: Request) -> Reply {
        match req {
            Request::Status => self.status().into(),
            Request::Approve {
                session,
                raise_usd,
                raise_tokens,
                raise_calls,
            } => self
                .pipeline
                .lock()
                .expect("pipeline lock")
                .approve(
                    &session,
                    raise_usd.unwrap_or(0.0),
                    raise_tokens.unwrap_or(0),
                    raise_calls.unwrap_or(0),
                )
                .into(),
            Request::Kill { session } => self
                .pipeline
                .lock()
                .expect("pipeline lock")
                .kill_session(&session)
                .into(),
            Request::Pause { session } => self
                .pipeline
                .lock()
                .expect("pipeline lock")
                .pause_session(&session)
                .into(),
            Request::Reload => self.reload().into(),
            Request::Actions { session } => self.actions(&session).into(),
            Request::Sessions => {
                let p = self.pipeline.lock().expect("pipeline lock");
                let sessions: Result<Vec<Session>, _> = p
                    .sessions
                    .live_sessions()
                    .iter()
                    .map(|v| {
                        let mut s: Session = reshape(v)?;
                        if let Some(e) = &p.enforcer
                            && let Some(totals) = p.sessions.totals(&v.session_id)
                            && let Some((name, share)) = e.ceiling_share(&totals)
                        {
                            s.ceiling = Some(name.to_string());
                            s.ceiling_share = Some(share);
                        }
                        Ok::<_, serde_json::Error>(s)
                    })
                    .collect();
                sessions.map(|sessions| SessionList { sessions }).into()
            }
            Request::Tree { session } => {
                let p = self.pipeline.lock().expect("pipeline lock");
                let ids: Vec<String> = match session {
                    Some(prefix) => match p.sessions.resolve_open(&prefix) {
                        Ok(id) => vec![id],
                        Err(e) => return Reply::refused(e),
                    },
                    None => p
                        .sessions
                        .live_sessions()
                        .iter()
                        .map(|s| s.session_id.clone())
                        .collect(),
                };
                let trees: Result<Vec<_>, _> = ids
                    .iter()
                    .filter_map(|id| {
                        let mut t = p.sessions.tree(id)?;
                        t.tools_running = p.sessions.running_tools(&p.tree, id);
                        Some(t)
                    })
                    .map(|t| reshape(&t))
                    .collect();
                trees.map(|trees| TreeList { trees }).into()
            }
        }
    }

    /// A session's tool runs from `actions.jsonl` (its rotated segments too), grouped by
    /// agent. `prefix` may be a unique prefix of the id.
    fn actions(&self, prefix: &str) -> Result<ActionList, String> {
        use crate::sessions::actions::ActionRow;
        if prefix.is_empty() {
            return Err("give a session id (or a unique prefix): see `agentwatch sessions`".into());
        }
        let rows = crate::sinks::rotation::action_rows(&self.data_dir, |id| id.starts_with(prefix))
            .map_err(|e| e.to_string())?;
        let mut ids: std::collections::BTreeSet<String> =
            rows.iter().map(|r| r.session_id().to_string()).collect();
        // An open session without tool runs yet is a valid answer (none).
        {
            let p = self.pipeline.lock().expect("pipeline lock");
            for s in p.sessions.live_sessions() {
                if s.session_id.starts_with(prefix) {
                    ids.insert(s.session_id.clone());
                }
            }
        }
        let session_id = match ids.len() {
            1 => ids.into_iter().next().expect("one id"),
            0 => {
                return Err(format!(
                    "no session {prefix:?} with tool runs (open sessions and actions.jsonl were searched): check the id with `agentwatch sessions`"
                ));
            }
            n => {
                return Err(format!(
                    "{prefix:?} is the prefix of {n} sessions: give more of the id"
                ));
            }
        };
        // An open session's files so far (its rows are written when it closes).
        let live_files: Vec<ActionRow> = {
            let p = self.pipeline.lock().expect("pipeline lock");
            p.sessions
                .file_changes(&session_id)
                .into_iter()
                .map(ActionRow::File)
                .collect()
        };
        let mut agents: Vec<AgentActions> = Vec::new();
        for row in rows.into_iter().chain(live_files) {
            if row.session_id() != session_id {
                continue;
            }
            let (pid, start_ticks, depth) = row.agent();
            let i = match agents
                .iter()
                .position(|a| (a.agent_pid, a.agent_start_ticks) == (pid, start_ticks))
            {
                Some(i) => i,
                None => {
                    agents.push(AgentActions {
                        agent_pid: pid,
                        agent_start_ticks: start_ticks,
                        depth,
                        tool_runs: Vec::new(),
                        hosts: Vec::new(),
                        files: Vec::new(),
                    });
                    agents.len() - 1
                }
            };
            match row {
                ActionRow::ToolRun(t) => agents[i].tool_runs.push(t),
                ActionRow::Host(h) => agents[i].hosts.push(h),
                ActionRow::File(f) => agents[i].files.push(f),
            }
        }
        agents.sort_by_key(|a| (a.depth, a.agent_start_ticks, a.agent_pid));
        Ok(ActionList { session_id, agents })
    }

    /// Re-reads the ceilings of the config file (SIGHUP, `agentwatch reload`).
    pub(super) fn reload(&self) -> Result<Reloaded, String> {
        let Some(path) = &self.config_path else {
            return Err("the daemon was started without --config: nothing to reload".into());
        };
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let mut p = self.pipeline.lock().expect("pipeline lock");
        let Some(enforcer) = p.enforcer.as_mut() else {
            return Err("ceilings are not available".into());
        };
        enforcer
            .reload(
                config.ceilings,
                &config.session_roots,
                config.drift.action.action(),
            )
            .map_err(|e| e.to_string())?;
        tracing::info!("reloaded ceilings from {}", path.display());
        Ok(Reloaded {
            reloaded: path.clone(),
        })
    }

    fn status(&self) -> Result<Status, serde_json::Error> {
        // Discovery first, and let go of before the pipeline is taken.
        let d = self.discovery.lock().expect("discovery lock");
        let a = &d.probes.attachments;
        let programs = d.probes.programs.clone();
        let file_hooks = d.probes.file_hooks_status();
        let scope = d.probes.scope;
        let tls_libraries = a.libraries.clone();
        let attach_failures = a.failures.clone();
        let attach_failures_cleared = a.failures_cleared;
        let kernel_drops = d.probes.drop_counters();
        let kernel = d.probes.kernel_counters();
        let tls_libraries_detached = a.detached;
        let tls_not_covered = NotCovered {
            executables: a.not_covered.clone(),
            over_cap: a.not_covered_over_cap,
            go_args_swept: a.go_args_swept,
        };
        let probed_processes = ProbedProcesses {
            links: d.probes.per_process_links().to_string(),
            analysis: Counters::of(a.analyses.stats()),
            now: a.processes_probed(),
            links_closing: d.links_closing.load(std::sync::atomic::Ordering::Acquire),
            attached_total: a.processes_attached_total,
            detached_total: a.processes_detached_total,
            libraries_over_cap: a.libraries_over_cap,
        };
        let kernel_side = reshape(&d.probes.kernel_side)?;
        drop(d);
        let mut p = self.pipeline.lock().expect("pipeline lock");
        let now_ns = crate::sessions::clock::boot_now_ns();
        let budgets = p
            .enforcer
            .as_mut()
            .map(|e| e.budgets_status(now_ns))
            .unwrap_or_default();
        // The process tracepoints, connect/close and the ends of writes (the read hook
        // comes and goes).
        let ok = programs.tracepoints.len() >= 6
            && attach_failures.is_empty()
            && (scope == Scope::Agents || !tls_libraries.is_empty());
        Ok(Status {
            ok,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            data_dir: self.data_dir.clone(),
            scope,
            kernel_side,
            tracepoints: programs.tracepoints,
            hooks_missing: programs.missing,
            file_hooks,
            read_hook: programs.read_hook,
            tls_libraries,
            probed_processes,
            first_contact: FirstContact {
                stats: Counters::of(&p.first_contact),
                kernel,
            },
            tls_libraries_detached,
            attach_failures,
            attach_failures_cleared,
            tls_not_covered,
            processes: Processes {
                live: p.tree.live_count(),
                exited_kept: p.tree.exited_kept_count(),
                dropped_over_cap: p.tree.dropped_over_cap(),
            },
            live_sessions: p.sessions.live_sessions().len(),
            sessions: Counters::of(&p.session_counters()),
            kernel_drops,
            pipeline: Counters::of(&p.stats),
            replay: Counters::of(&p.replay),
            capture: Counters::of(&p.capture_stats),
            aead: Counters::of(&p.aead.stats),
            estimates: Estimates {
                stats: Counters::of(&p.estimates.stats),
                binaries: p
                    .estimates
                    .binaries
                    .iter()
                    .map(|(exe, (host, calls))| {
                        (
                            exe.clone(),
                            format!("estimated: SNI {host} ({calls} calls)"),
                        )
                    })
                    .collect(),
            },
            ceilings: Ceilings {
                enabled: p.enforcer.as_ref().is_some_and(|e| e.enabled()),
                block: Some(self.block_status.clone()),
                stats: p.enforcer.as_ref().map(|e| e.stats().clone()),
                gate_errors: p.enforcer.as_ref().map(|e| e.gate_errors()),
                held_sockets: p.enforcer.as_ref().map(|e| e.sockets_held()),
                paused_sessions: p
                    .sessions
                    .live_sessions()
                    .iter()
                    .filter(|s| s.outcome == crate::sessions::Outcome::Paused)
                    .count(),
                host_usd_per_day: p.enforcer.as_ref().and_then(|e| e.host_limit()),
                budgets: serde_json::to_value(&budgets)?,
            },
            jsonl: Counters::of(&p.sink_health()),
            sinks: serde_json::from_value(self.exports.status_json())?,
            kubernetes: Counters::of(&self.pods.status()),
            pricing: Counters::of(&p.pricing_status()),
        })
    }
}
