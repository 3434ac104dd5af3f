//! Wiring: probes → pipeline → sinks, the control socket, discovery and shutdown.
mod first_contact;
pub mod pipeline;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::accounting::pricing::Pricing;
use crate::config::Config;
use crate::control::replies::{
    Ceilings, Counters, Estimates, FirstContact, NotCovered, ProbedProcesses, Processes, Reloaded,
    SessionList, Status, TreeList, reshape,
};
use crate::control::{self, Reply, Request};
use crate::policy::Policy;
use crate::probes::{Probes, Scope, libraries};
use crate::procs::ProcTree;
use crate::sessions::clock::boot_now_ns;
use crate::sessions::{Sessions, SessionsConfig, WallClock};
use crate::sinks::Sink;
use crate::workloads::PodIndex;
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
    #[error("ring buffer: {0}")]
    Ring(std::io::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Finds and attaches TLS libraries; remembers the mount namespaces already searched.
struct Discovery {
    probes: Probes,
    /// Detached uprobe links not closed yet (the closer thread's backlog).
    links_closing: Arc<std::sync::atomic::AtomicUsize>,
    roots_seen: HashSet<(u64, u64)>,
    /// (root, directory) pairs of `LD_LIBRARY_PATH` already searched.
    dirs_seen: HashSet<((u64, u64), String)>,
}

/// What a rescan saw: files mapped by live processes, and a live process per root.
#[derive(Default)]
struct Seen {
    mapped: HashSet<(u64, u64)>,
    roots: HashMap<(u64, u64), u32>,
}

impl Discovery {
    /// Libraries in the process's maps, its executable, and (for a process in another
    /// mount namespace, or with an `LD_LIBRARY_PATH`) the library directories of its root.
    fn process(&mut self, pid: u32, seen: Option<&mut Seen>) {
        let maps = libraries::mappings(pid);
        for (path, via) in libraries::mapped_tls_libraries(pid, &maps) {
            self.probes.attach_tls_library(&path, &via);
        }
        if let Some((exe, via)) = libraries::executable(pid) {
            self.probes.attach_tls_library(&exe, &via);
        }
        let root = format!("/proc/{pid}/root");
        let Ok(meta) = std::fs::metadata(&root) else {
            return;
        };
        let root_id = (meta.dev(), meta.ino());
        if let Some(seen) = seen {
            seen.mapped.extend(maps.iter().map(|m| m.identity));
            seen.roots.entry(root_id).or_insert(pid);
        }
        if self.roots_seen.insert(root_id) {
            for (path, via) in libraries::system_tls_libraries(Path::new(&root)) {
                self.probes.attach_tls_library(&path, &via);
            }
        }
        // Once per (root, directory): a container's own OpenSSL outside the usual places.
        for dir in libraries::ld_library_path(pid) {
            if self.dirs_seen.insert((root_id, dir.clone())) {
                for (path, via) in libraries::tls_libraries_in(Path::new(&root), &dir) {
                    self.probes.attach_tls_library(&path, &via);
                }
            }
        }
    }

    fn rescan(&mut self) {
        if self.probes.scope == Scope::Agents {
            // Probes are attached per process at first contact; nothing to look for.
            self.probes.sweep_go_args();
            return;
        }
        let mut seen = Seen::default();
        for pid in libraries::all_pids() {
            self.process(pid, Some(&mut seen));
        }
        self.detach_unreachable(&seen);
        self.probes.sweep_go_args();
    }

    /// A container's library stays attached while a live process maps it or shares its
    /// root; after that it is detached, and its root may be searched again if it returns.
    fn detach_unreachable(&mut self, seen: &Seen) {
        let mut gone = Vec::new();
        for lib in &mut self.probes.attachments.libraries {
            let Some(root) = lib.root else { continue };
            if seen.mapped.contains(&lib.identity) {
                continue;
            }
            if let Some(pid) = seen.roots.get(&root) {
                let via = libraries::via_root(*pid, &lib.path);
                if std::fs::metadata(&via).is_ok_and(|m| (m.dev(), m.ino()) == lib.identity) {
                    lib.attached_via = via.display().to_string();
                    continue;
                }
            }
            gone.push((lib.identity, root));
        }
        for (identity, root) in gone {
            self.probes.detach_library(identity);
            if !seen.roots.contains_key(&root) {
                self.roots_seen.remove(&root);
                self.dirs_seen.retain(|(r, _)| *r != root);
            }
        }
    }
}

/// How often the ring buffer is drained when no record asked for a wakeup.
const RING_DRAIN: Duration = Duration::from_millis(10);

/// The config file the daemon was started with (re-read on SIGHUP / `agentwatch reload`).
static CONFIG_PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Where the `block` connect programs are attached, or why not.
static BLOCK_STATUS: OnceLock<String> = OnceLock::new();

/// Handles every record ready (pushing the processes that exec'd to `execs`), then hands the
/// ring back to the kernel only up to the oldest exchange in flight, which a next daemon
/// reads again, at most a quarter of the ring behind.
fn drain_ring(p: &mut Pipeline, ring: &mut crate::probes::ring::Ring, execs: &mut Vec<u32>) {
    let seen_until = ring.replay_end();
    while let Some((pos, item)) = ring.next() {
        if let Some(tgid) = p.handle_record_at(pos, item, pos < seen_until) {
            execs.push(tgid);
        }
    }
    let low = p.replay_low_water(ring.read_pos(), ring.size() / 4);
    ring.commit(low);
}

/// Re-reads the ceilings of the config file (SIGHUP, `agentwatch reload`).
fn reload(pipeline: &Mutex<Pipeline>) -> Result<Reloaded, String> {
    let Some(Some(path)) = CONFIG_PATH.get() else {
        return Err("the daemon was started without --config: nothing to reload".into());
    };
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let mut p = pipeline.lock().expect("pipeline lock");
    let Some(policy) = p.policy.as_mut() else {
        return Err("ceilings are not available".into());
    };
    policy
        .reload(config.ceilings, &config.session_roots)
        .map_err(|e| e.to_string())?;
    let enabled = policy.enabled();
    if let Some(g) = p.gate.as_mut() {
        g.set_wake_data(enabled);
    }
    tracing::info!("reloaded ceilings from {}", path.display());
    Ok(Reloaded {
        reloaded: path.clone(),
    })
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let started = Instant::now();
    crate::probes::require_root()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| DaemonError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let (mut probes, ring) = Probes::load(&config.probes, &config.data_dir)?;
    let mut gate = probes.take_gate()?;
    let meter = probes.take_meter()?;
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
    let mut discovery = Discovery {
        probes,
        links_closing: closer.closing.clone(),
        roots_seen: HashSet::new(),
        dirs_seen: HashSet::new(),
    };
    if config.probes.scope == Scope::All {
        // Our own root first: it covers processes that load libssl after we start.
        if let Ok(meta) = std::fs::metadata("/") {
            discovery.roots_seen.insert((meta.dev(), meta.ino()));
        }
        for (path, via) in libraries::system_tls_libraries(Path::new("/"))
            .into_iter()
            .chain(libraries::runtime_executables())
        {
            discovery.probes.attach_tls_library(&path, &via);
        }
        for extra in &config.probes.extra_libraries {
            discovery
                .probes
                .attach_tls_library(&extra.display().to_string(), extra);
        }
        discovery.rescan();
    }
    discovery
        .probes
        .attachments
        .keep_analyses_in(config.data_dir.join("analysis"));
    let scope = config.probes.scope;
    let hold_timeout = Duration::from_millis(config.probes.first_contact_timeout_ms.max(1));

    let tree = ProcTree::seed(Path::new("/proc"))?;
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
    ));
    // Sessions open when the daemon last stopped continue (root alive) or close now.
    let recovered = crate::sinks::recover(&config.data_dir, &boot_id)?;
    tracing::info!(stats = ?recovered.stats, "recovered state from {}", config.data_dir.display());
    sink.seed(&recovered.sessions);
    // Records the previous daemon read are read again (its half-seen exchanges are rebuilt):
    // the calls among them it wrote already are known by (pid, first byte's boot time).
    // Also when nothing is marked seen: a daemon killed between writing rows and marking
    // their records seen leaves them in the ring.
    let written: Vec<(u32, u64)> = if discovery.probes.kernel_side.adopted() {
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
    if ring.replay_end() > ring.read_pos() {
        tracing::info!(
            bytes = ring.replay_end() - ring.read_pos(),
            calls_written = written.len(),
            "reading again what the previous daemon read of exchanges still in flight"
        );
    }
    for row in sessions.restore(recovered.sessions, &tree, boot_now_ns()) {
        sink.write_ledger(&row)?;
    }
    if scope == Scope::Agents {
        // The agents of the sessions a previous daemon left open are running now, mid-way
        // through connections made before this daemon: they make no new first contact, so
        // they are probed now.
        let mut probed = 0;
        for key in sessions.agent_processes() {
            if tree.is_live(key)
                && !discovery.probes.attachments.is_probed(key.tgid)
                && !discovery
                    .probes
                    .attach_process(key.tgid)
                    .attached
                    .is_empty()
            {
                discovery
                    .probes
                    .set_process_state(key.tgid, Some(agentwatch_ebpf::PROC_DECIDED));
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
    let pricing = Pricing::builtin()?.with_overrides(config.pricing.clone())?;
    let pods = Arc::new(PodIndex::new(config.kubernetes.clone()));
    if pods.configured() {
        // First list before the first call, so early calls carry pod names.
        pods.refresh().await;
        pods.spawn_refresher();
    }
    let policy = Policy::new(
        config.ceilings.clone(),
        &config.session_roots,
        &config.data_dir,
    )?
    .with_pods(pods.clone());
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
    let _ = BLOCK_STATUS.set(block);
    let mut policy = policy;
    policy.seed_host_window(
        &config.data_dir.join("calls.jsonl"),
        &WallClock::from_system(),
    );
    let _ = CONFIG_PATH.set(config_path);
    gate.set_wake_data(policy.enabled());
    let mut pipeline = Pipeline::new(
        tree,
        sessions,
        pricing,
        Box::new(sink),
        config.capture,
        config.limits.max_connections,
    )
    .with_policy(policy, gate)
    .with_meter(meter)
    .with_pods(pods.clone())
    .with_written_calls(written);
    // Continue or release what a previous daemon held, per `on_restart`.
    pipeline.restore_policy(boot_now_ns());
    let pipeline = Arc::new(Mutex::new(pipeline));
    let discovery = Arc::new(Mutex::new(discovery));

    let listener = control::bind(&config.socket)?;
    {
        let pipeline = pipeline.clone();
        let discovery = discovery.clone();
        let data_dir = config.data_dir.clone();
        let exports = exports.clone();
        let pods = pods.clone();
        tokio::spawn(control::serve(listener, move |req| {
            answer(
                req, &pipeline, &discovery, &data_dir, started, &exports, &pods,
            )
        }));
    }
    if let Some(metrics) = exports.metrics.clone() {
        // The daemon's own counters (drops, queue and spool depths) as metrics.
        let (pipeline, discovery) = (pipeline.clone(), discovery.clone());
        let (data_dir, exports, pods) = (config.data_dir.clone(), exports.clone(), pods.clone());
        metrics.set_daemon_source(move || {
            answer(
                Request::Status,
                &pipeline,
                &discovery,
                &data_dir,
                started,
                &exports,
                &pods,
            )
            .to_json()
        });
    }
    {
        let discovery = discovery.clone();
        let period = Duration::from_secs(config.probes.rescan_interval_secs.max(1));
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
    }
    tracing::info!(
        data_dir = %config.data_dir.display(),
        socket = %config.socket.display(),
        "agentwatch running"
    );

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd that wraps it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| DaemonError::Ring(std::io::Error::other(e.to_string())))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Most records wake nobody (a wakeup costs the writing CPU an interrupt): the ring is
    // drained this often, and at once when a record asks (a process stopped for a decision).
    let mut drain = tokio::time::interval(RING_DRAIN);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut execs = Vec::new();
    let mut ended: Vec<(u32, u64)> = Vec::new();
    let mut not_agents: Vec<u32> = Vec::new();
    // SIGINT (Ctrl-C at a terminal) stops for good: the kernel side goes too. SIGTERM (a
    // service manager's stop, a DaemonSet's upgrade) leaves it pinned for the next daemon.
    let mut interrupted = false;
    loop {
        let read = tokio::select! {
            guard = ring.readable_mut() => {
                guard.map_err(DaemonError::Ring)?.clear_ready();
                true
            }
            _ = drain.tick() => true,
            _ = tick.tick() => {
                pipeline.lock().expect("pipeline lock").tick(boot_now_ns());
                // Off the loop: attaches can hold discovery for a while, and a heartbeat
                // missed for 30 s would stop the kernel from holding first contacts.
                let discovery = discovery.clone();
                tokio::task::spawn_blocking(move || {
                    if let Ok(mut d) = discovery.lock() {
                        d.probes.heartbeat();
                    }
                });
                false
            }
            _ = hup.recv() => {
                if let Err(e) = reload(&pipeline) {
                    tracing::error!("reload failed: {e}");
                }
                false
            }
            _ = term.recv() => break,
            _ = int.recv() => {
                interrupted = true;
                break;
            }
        };
        if !read {
            continue;
        }
        drain_ring(
            &mut pipeline.lock().expect("pipeline lock"),
            ring.get_mut(),
            &mut execs,
        );
        let held = pipeline.lock().expect("pipeline lock").take_held_contacts();
        if !held.is_empty() {
            held_file.save(&pipeline.lock().expect("pipeline lock").pending_contacts());
            first_contact::decide_all(
                held,
                &discovery,
                &pipeline,
                hold_timeout,
                &closer,
                &held_file,
            );
        }
        {
            // Confirm or reject probes at located functions by what they captured, and take
            // the probes of exited and exec'd processes off (both wait while an attach holds
            // discovery).
            let mut p = pipeline.lock().expect("pipeline lock");
            ended.extend(p.take_probe_ends());
            not_agents.extend(p.take_not_agents());
            if let Ok(mut d) = discovery.try_lock() {
                for tgid in not_agents.drain(..) {
                    closer.close(d.probes.detach_process(tgid));
                    d.probes
                        .set_process_state(tgid, Some(agentwatch_ebpf::PROC_NOT_AGENT));
                }
                for (identity, http) in p.first_writes.drain(..) {
                    closer.close(d.probes.judge_first_write(identity, http));
                }
                for (tgid, at) in ended.drain(..) {
                    // Not the probes of a first contact made after that exec (both can be
                    // in one drain, and the attach can win the race to the lock).
                    closer.close(d.probes.detach_process_before(tgid, at));
                }
            }
        }
        if scope == Scope::Agents {
            execs.clear();
        }
        if !execs.is_empty() {
            // Off the ring's task: analysing a large static binary takes a moment, and the
            // ring must keep draining meanwhile.
            let discovery = discovery.clone();
            let tgids = std::mem::take(&mut execs);
            tokio::task::spawn_blocking(move || {
                if let Ok(mut d) = discovery.lock() {
                    for tgid in tgids {
                        d.process(tgid, None);
                    }
                }
            });
        }
    }
    // Decide what is already in the ring buffer (holds above all) before leaving.
    drain_ring(
        &mut pipeline.lock().expect("pipeline lock"),
        ring.get_mut(),
        &mut Vec::new(),
    );
    // Nobody is left stopped at a first contact by a daemon that goes away.
    for tgid in pipeline
        .lock()
        .expect("pipeline lock")
        .take_pending_contacts()
    {
        first_contact::cont(tgid);
    }
    if let Ok(mut d) = discovery.lock() {
        if d.probes.pin_set().is_some() && !interrupted {
            // Pinned: the probes stay attached, and what happens until the next daemon waits
            // in the ring buffer.
            tracing::info!(
                pinned_at = %d.probes.pin_set().map(|p| p.dir.display().to_string()).unwrap_or_default(),
                "the kernel side stays attached for the next daemon (`agentwatch unpin` removes it)"
            );
        } else {
            d.probes.unpin();
            // Per-process probes closed together (the kernel would close them one by one at exit).
            closer.close(d.probes.detach_all_processes());
        }
    }
    closer.drain(Duration::from_secs(20));
    tracing::info!("agentwatch stopping");
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

fn answer(
    req: Request,
    pipeline: &Mutex<Pipeline>,
    discovery: &Mutex<Discovery>,
    data_dir: &Path,
    started: Instant,
    exports: &crate::sinks::ExportHandle,
    pods: &PodIndex,
) -> Reply {
    match req {
        Request::Status => status(pipeline, discovery, data_dir, started, exports, pods).into(),
        Request::Approve {
            session,
            raise_usd,
            raise_tokens,
            raise_calls,
        } => pipeline
            .lock()
            .expect("pipeline lock")
            .approve(
                &session,
                raise_usd.unwrap_or(0.0),
                raise_tokens.unwrap_or(0),
                raise_calls.unwrap_or(0),
            )
            .into(),
        Request::Kill { session } => pipeline
            .lock()
            .expect("pipeline lock")
            .kill_session(&session)
            .into(),
        Request::Reload => reload(pipeline).into(),
        Request::Sessions => {
            let p = pipeline.lock().expect("pipeline lock");
            let sessions: Result<Vec<_>, _> =
                p.sessions.live_sessions().iter().map(reshape).collect();
            sessions.map(|sessions| SessionList { sessions }).into()
        }
        Request::Tree { session } => {
            let p = pipeline.lock().expect("pipeline lock");
            let ids: Vec<String> = match session {
                Some(id) => vec![id],
                None => p
                    .sessions
                    .live_sessions()
                    .iter()
                    .map(|s| s.session_id.clone())
                    .collect(),
            };
            let trees: Result<Vec<_>, _> = ids
                .iter()
                .filter_map(|id| p.sessions.tree(id))
                .map(|t| reshape(&t))
                .collect();
            trees.map(|trees| TreeList { trees }).into()
        }
    }
}

fn status(
    pipeline: &Mutex<Pipeline>,
    discovery: &Mutex<Discovery>,
    data_dir: &Path,
    started: Instant,
    exports: &crate::sinks::ExportHandle,
    pods: &PodIndex,
) -> Result<Status, serde_json::Error> {
    let d = discovery.lock().expect("discovery lock");
    let a = &d.probes.attachments;
    let programs = d.probes.programs.clone();
    let scope = d.probes.scope;
    let tls_libraries = a.libraries.clone();
    let attach_failures = a.failures.clone();
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
    let p = pipeline.lock().expect("pipeline lock");
    let ok = programs.tracepoints.len() >= 7
        && attach_failures.is_empty()
        && (scope == Scope::Agents || !tls_libraries.is_empty());
    Ok(Status {
        ok,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: started.elapsed().as_secs(),
        data_dir: data_dir.to_path_buf(),
        scope,
        kernel_side,
        tracepoints: programs.tracepoints,
        hooks_missing: programs.missing,
        tls_libraries,
        probed_processes,
        first_contact: FirstContact {
            stats: Counters::of(&p.first_contact),
            kernel,
        },
        tls_libraries_detached,
        attach_failures,
        tls_not_covered,
        processes: Processes {
            live: p.tree.live_count(),
            exited_kept: p.tree.exited_kept_count(),
            dropped_over_cap: p.tree.dropped_over_cap(),
        },
        live_sessions: p.sessions.live_sessions().len(),
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
            enabled: p.policy.as_ref().is_some_and(|pol| pol.enabled()),
            block: BLOCK_STATUS.get().cloned(),
            stats: p.policy.as_ref().map(|pol| pol.stats.clone()),
            gate_errors: p.gate.as_ref().map(|g| g.errors),
            held_sockets: p.gate.as_ref().map(|g| g.held_sockets()),
        },
        sinks: serde_json::from_value(exports.status_json())?,
        kubernetes: Counters::of(&pods.status()),
    })
}
