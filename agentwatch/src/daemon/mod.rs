//! Wiring: probes → pipeline → sinks, the control socket, discovery and shutdown.
//!
//! `run` is three steps: [`Daemon::build`] (config → kernel side, sessions and sinks,
//! ceilings, pipeline, in the order start-up needs), [`Daemon::spawn`] (the control socket,
//! the metrics' daemon counters and rescans, on tasks of their own), and [`EventLoop::run`]
//! (the ring buffer, ticks and signals until a stop, then the stop itself).

// The probes' errors (aya's) are large; they occur at start-up, never per event.
#![allow(clippy::result_large_err)]
mod answers;
mod discovery;
mod event_loop;
mod first_contact;
mod memory;
pub mod pipeline;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{self, Request};
use crate::policy::{Enforcer, Policy};
use crate::probes::{Probes, Scope};
use crate::procs::ProcTree;
use crate::sessions::clock::boot_now_ns;
use crate::sessions::{Sessions, SessionsConfig, WallClock};
use crate::sinks::{ExportHandle, Sink};
use crate::workloads::PodIndex;
use discovery::Discovery;
use event_loop::EventLoop;
use pipeline::Pipeline;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Probe(#[from] crate::probes::ProbeError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Proc(#[from] crate::procs::ProcError),
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Session(#[from] crate::sessions::SessionError),
    #[error(transparent)]
    Pricing(#[from] crate::accounting::pricing::PricingError),
    #[error("failed to create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0} (`agentwatch validate --config FILE` checks a file)")]
    Config(String),
    #[error("ring buffer: {0}")]
    Ring(std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// What the daemon's tasks share: the pipeline and discovery behind their locks (always
/// discovery first when both are needed, one at a time), and what status reports.
pub struct Daemon {
    pipeline: Arc<Mutex<Pipeline>>,
    discovery: Arc<Mutex<Discovery>>,
    /// The config file the daemon was started with (re-read on SIGHUP / `agentwatch reload`).
    config_path: Option<PathBuf>,
    /// Where the `block` connect programs are attached, or why not.
    block_status: String,
    data_dir: PathBuf,
    socket: PathBuf,
    rescan_period: Duration,
    started: Instant,
    exports: ExportHandle,
    pods: Arc<PodIndex>,
    /// `[actions] file_hooks = "libc"`: the file uprobes' coverage (the event loop covers
    /// and continues the programs the kernel stops at their exec, without discovery's lock).
    libc_files: Option<Arc<Mutex<crate::probes::libc_files::LibcFiles>>>,
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    // What the config gets wrong is said before the kernel is touched.
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(DaemonError::Config(problems.join("; ")));
    }
    let (daemon, event_loop) = Daemon::build(config, config_path).await?;
    let daemon = Arc::new(daemon);
    daemon.spawn()?;
    event_loop.run(&daemon).await
}

/// The kernel side as built: probes (in discovery), the ring buffer, the maps user space
/// writes, and what first contact needs.
struct KernelSide {
    discovery: Discovery,
    ring: crate::probes::ring::Ring,
    gate: crate::probes::gate_maps::GateMaps,
    meter: crate::probes::meter::Meter,
    session_procs: crate::probes::session_procs::SessionProcs,
    closer: first_contact::Closer,
    held_file: first_contact::HeldFile,
}

/// What a previous daemon left, taken back: the process tree, the sessions open when it
/// stopped, the sinks that write them, and the calls it wrote already.
struct Restored {
    tree: ProcTree,
    sessions: Sessions,
    sink: Box<dyn Sink + Send>,
    exports: ExportHandle,
    written: Vec<(u32, u64)>,
    /// The open sessions' file changes on disk, and the ring position up to which the
    /// previous daemon counted them (0 when its ring was not adopted).
    file_journal: crate::sessions::file_journal::FileJournal,
    files_counted_until: u64,
    /// Spend of the last day by Unix minute, from recovery (seeds the host ceiling).
    host_day: std::collections::BTreeMap<i64, f64>,
    /// The same per shared budget.
    budget_day: std::collections::BTreeMap<String, std::collections::BTreeMap<i64, f64>>,
}

impl Daemon {
    /// Config → kernel side, sessions and sinks, ceilings, pipeline. Nothing runs yet but
    /// the sinks' delivery and the pod list's refresher.
    async fn build(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<(Daemon, EventLoop), DaemonError> {
        let started = Instant::now();
        let mut kernel = kernel_side(&config)?;
        let restored = restore(&config, &mut kernel).await?;
        let pricing = config.prices()?;
        let pods = Arc::new(PodIndex::new(config.kubernetes.clone()));
        if pods.configured() {
            // First list before the first call, so early calls carry pod names.
            pods.refresh().await;
            pods.spawn_refresher();
        }
        let (policy, block_status) = ceilings(&config, &mut kernel.discovery, &pods, &restored)?;
        let KernelSide {
            discovery,
            ring,
            gate,
            meter,
            session_procs,
            closer,
            held_file,
        } = kernel;
        // With ceilings, every data record wakes the daemon from now on (see `Gate`).
        let enforcer = Enforcer::new(policy, Box::new(gate));
        // Cluster budgets: the other nodes' spend, read from ClickHouse every few seconds.
        let (spend, cluster) = enforcer.cluster();
        if let (false, Some(ch)) = (cluster.is_empty(), &config.sinks.clickhouse) {
            tokio::spawn(crate::sinks::clickhouse::read_cluster_budgets(
                ch.clone(),
                config.host_name(),
                cluster,
                spend,
                std::time::Duration::from_secs(config.ceilings.cluster_refresh_secs()),
            ));
        }
        let mut pipeline = Pipeline::new(
            restored.tree,
            restored.sessions,
            pricing,
            restored.sink,
            config.capture,
            config.limits.max_connections,
        )
        .with_enforcer(enforcer)
        .with_meter(meter)
        .with_session_procs(session_procs)
        .with_pods(pods.clone())
        .with_written_calls(restored.written)
        .with_file_journal(restored.file_journal, restored.files_counted_until);
        // Continue or release what a previous daemon held, per `on_restart`.
        pipeline.restore_policy(boot_now_ns());
        let libc_files = discovery.probes.libc_files();
        let daemon = Daemon {
            libc_files,
            pipeline: Arc::new(Mutex::new(pipeline)),
            discovery: Arc::new(Mutex::new(discovery)),
            config_path,
            block_status,
            data_dir: config.data_dir.clone(),
            socket: config.socket.clone(),
            rescan_period: Duration::from_secs(config.probes.rescan_interval_secs.max(1)),
            started,
            exports: restored.exports,
            pods,
        };
        let event_loop = EventLoop {
            ring,
            closer,
            held_file,
            hold_timeout: Duration::from_millis(config.probes.first_contact_timeout_ms.max(1)),
            scope: config.probes.scope,
        };
        Ok((daemon, event_loop))
    }

    /// The tasks beside the event loop: the control socket, the metrics' daemon counters,
    /// and the periodic rescan.
    fn spawn(self: &Arc<Self>) -> Result<(), DaemonError> {
        let listener = control::bind(&self.socket)?;
        let daemon = self.clone();
        tokio::spawn(control::serve(listener, move |req| daemon.answer(req)));
        if let Some(metrics) = self.exports.metrics.clone() {
            // The daemon's own counters (drops, queue and spool depths) as metrics.
            let daemon = self.clone();
            metrics.set_daemon_source(move || daemon.answer(Request::Status).to_json());
        }
        let discovery = self.discovery.clone();
        let period = self.rescan_period;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                let discovery = discovery.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Ok(mut d) = discovery.lock() {
                        d.rescan();
                    }
                })
                .await;
            }
        });
        // Start-up parsed the kernel's BTF and the probes' object (tens of MB, all freed);
        // glibc keeps freed heap at the top unless asked, so give it back now.
        // SAFETY: malloc_trim only releases free memory of the allocator's own.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::info!(
            data_dir = %self.data_dir.display(),
            socket = %self.socket.display(),
            "agentwatch running"
        );
        Ok(())
    }
}

/// Root first (before the data directory, the probes and their pins are touched), then the
/// probes, what a previous daemon left in the kernel, and the libraries to attach now.
fn kernel_side(config: &Config) -> Result<KernelSide, DaemonError> {
    crate::probes::require_root()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let (mut probes, ring) = Probes::load(&config.probes, &config.data_dir)?;
    let gate = probes.take_gate()?;
    let meter = probes.take_meter()?;
    let session_procs = probes.take_session_procs()?;
    probes.set_exec_args(config.actions.argv);
    probes.set_file_probes(config.actions.files, config.actions.file_hooks);
    probes.set_read_hook(config.probes.scope == Scope::All);
    let closer = first_contact::Closer::spawn();
    let held_file = first_contact::HeldFile::new(&config.data_dir);
    // The probes a previous daemon left pinned for processes still running are ours now.
    let (adopted, removed) = probes.adopt_processes();
    tracing::info!(
        kernel_side = %probes.kernel_side.origin,
        adopted_processes = adopted.len(),
        removed_process_links = removed,
        "kernel side ready"
    );
    // Processes a killed daemon held at their first contact: probed now, then continued.
    let left_over = held_file.left_over();
    for &tgid in &left_over {
        if config.probes.scope == Scope::Agents && !probes.attachments.is_probed(tgid) {
            probes.attach_process(tgid);
            probes.set_process_state(tgid, Some(agentwatch_ebpf::PROC_DECIDED));
        }
        first_contact::cont(tgid);
    }
    if !left_over.is_empty() {
        tracing::warn!(
            processes = left_over.len(),
            "probed and continued processes a killed daemon held at their first contact"
        );
    }
    // Those it held until the read hook was on: on now, then continued.
    let left_over = held_file.for_reads().left_over();
    if !left_over.is_empty() {
        probes.attach_read_hook();
        for &tgid in &left_over {
            first_contact::cont(tgid);
        }
        tracing::warn!(
            processes = left_over.len(),
            "continued processes a killed daemon held until its read hook was on"
        );
    }
    let mut discovery = Discovery::new(probes, closer.closing.clone());
    if config.probes.scope == Scope::All {
        discovery.attach_everywhere(&config.probes.extra_libraries);
    }
    discovery
        .probes
        .attachments
        .keep_analyses_in(config.data_dir.join("analysis"));
    Ok(KernelSide {
        discovery,
        ring,
        gate,
        meter,
        session_procs,
        closer,
        held_file,
    })
}

/// The process tree from /proc, the sinks, and the sessions a previous daemon left open
/// (continued while their root lives, closed now otherwise).
async fn restore(config: &Config, kernel: &mut KernelSide) -> Result<Restored, DaemonError> {
    let mut tree = ProcTree::seed(Path::new("/proc"))?;
    // JSONL plus the configured network sinks (spooled; delivered on their own tasks).
    let (mut sink, exports) = crate::sinks::build(
        &config.data_dir,
        &config.sinks,
        &config.metrics,
        config.host_name(),
    )
    .await?;
    let boot_id = crate::sessions::read_boot_id(Path::new("/proc"))?;
    let mut sessions = Sessions::new(SessionsConfig::new(
        boot_id.clone(),
        config.host_name(),
        WallClock::from_system(),
    ))
    .with_jobs(crate::sessions::drift::Jobs::load(
        &config.data_dir,
        &config.drift,
    ))
    .with_actions(config.actions.clone());
    // Sessions open when the daemon last stopped continue (root alive) or close now.
    let mut recovered = crate::sinks::recover(&config.data_dir, &boot_id)?;
    tracing::info!(stats = ?recovered.stats, "recovered state from {}", config.data_dir.display());
    sink.seed(&recovered.sessions);
    // The files the open sessions changed so far (rows are written when a session closes).
    let journaled = crate::sessions::file_journal::load(&config.data_dir);
    if journaled.lines_dropped > 0 {
        tracing::info!(
            lines = journaled.lines_dropped,
            "file journal: lines of a batch never ended not used (their records are read again)"
        );
    }
    recovered.sessions.files = journaled.files;
    let probes = &mut kernel.discovery.probes;
    // Records the previous daemon read are read again (its half-seen exchanges are rebuilt):
    // the calls among them it wrote already are known by (pid, first byte's boot time).
    // Also when nothing is marked seen: a daemon killed between writing rows and marking
    // their records seen leaves them in the ring.
    let written: Vec<(u32, u64)> = if probes.kernel_side.adopted() {
        recovered
            .sessions
            .open
            .iter()
            .flat_map(|(_, calls)| calls.iter())
            .filter_map(|c| Some((c.pid, c.started_ns?)))
            .collect()
    } else {
        Vec::new()
    };
    let ring = &kernel.ring;
    if ring.replay_end() > ring.read_pos() {
        tracing::info!(
            bytes = ring.replay_end() - ring.read_pos(),
            calls_written = written.len(),
            "reading again what the previous daemon read of exchanges still in flight"
        );
    }
    sessions = sessions.with_gap_records(probes.kernel_side.adopted());
    let rows = sessions.restore(recovered.sessions, &mut tree, boot_now_ns());
    if probes.kernel_side.adopted() {
        sessions.adopt_orphans(&mut tree, &kernel.session_procs.entries());
    }
    // Sessions closed now: their file rows, then their ledger rows.
    for f in sessions.take_file_rows() {
        sink.write_action(&crate::sessions::actions::ActionRow::File(f))?;
    }
    for row in rows {
        sink.write_ledger(&row)?;
    }
    let files_counted_until = if probes.kernel_side.adopted() {
        journaled.pos
    } else {
        0
    };
    let mut file_journal = crate::sessions::file_journal::FileJournal::start(
        &config.data_dir,
        &sessions.open_file_changes(),
        files_counted_until,
    );
    file_journal.lines_dropped_at_start = journaled.lines_dropped;
    if config.probes.scope == Scope::Agents {
        // The agents of the sessions a previous daemon left open are running now, mid-way
        // through connections made before this daemon: they make no new first contact, so
        // they are probed now.
        let mut probed = 0;
        for key in sessions.agent_processes() {
            if tree.is_live(key)
                && !probes.attachments.is_probed(key.tgid)
                && !probes.attach_process(key.tgid).attached.is_empty()
            {
                probes.set_process_state(key.tgid, Some(agentwatch_ebpf::PROC_DECIDED));
                probed += 1;
            }
        }
        if probed > 0 {
            tracing::info!(
                processes = probed,
                "probed the agents of sessions still running"
            );
        }
    }
    Ok(Restored {
        tree,
        sessions,
        sink: Box::new(sink),
        exports,
        written,
        file_journal,
        files_counted_until,
        host_day: recovered.host_day,
        budget_day: recovered.budget_day,
    })
}

/// The ceilings of the config (with the host's spend of the last day read back from
/// `calls.jsonl`), and the `block` programs they need: attached, or why not.
fn ceilings(
    config: &Config,
    discovery: &mut Discovery,
    pods: &Arc<PodIndex>,
    restored: &Restored,
) -> Result<(Policy, String), DaemonError> {
    for (index, rule) in config.session_roots.iter().enumerate() {
        if rule.cluster && rule.budget_usd_per_day.is_some() && config.sinks.clickhouse.is_none() {
            return Err(crate::policy::PolicyError::ClusterWithoutClickHouse {
                index,
                name: rule.name.clone().unwrap_or_default(),
            }
            .into());
        }
    }
    let mut policy = Policy::new(
        config.ceilings.clone(),
        &config.session_roots,
        &config.data_dir,
    )?
    .with_pods(pods.clone())
    .with_drift(config.drift.action.action());
    let block = if !policy.enabled() {
        discovery.probes.drop_block_programs();
        "not attached (no ceilings configured)".to_string()
    } else {
        match discovery.probes.attach_block_programs() {
            Ok(root) => format!("attached at {}", root.display()),
            Err(e) => {
                tracing::warn!("{e}; the `block` action cannot refuse new connections");
                format!("unavailable: {e}")
            }
        }
    };
    policy.seed_host_window(&restored.host_day, &WallClock::from_system());
    policy.seed_budgets(&restored.budget_day, &WallClock::from_system());
    Ok((policy, block))
}
