//! Loading the eBPF object, attaching its kernel-side programs, and the maps user space
//! writes (settings, ports, LLM hosts, first-contact decisions).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentwatch_ebpf as abi;
use aya::maps::{Array, MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint, UProbe};
use aya::{Btf, Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

use super::{ProbeError, tracefs};
use crate::sessions::actions::FileHooksKind;

/// The eBPF object, built by `cargo xtask build` and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTWATCH_EBPF_OBJECT"));

/// Which processes the TLS probes are attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only processes that contact an LLM endpoint, decided at that first contact (before
    /// their first request byte) and probed alone. Other processes get no uprobe.
    #[default]
    Agents,
    /// Every process that maps a TLS library: calls are recognised by request shape on any
    /// host, at the cost of a uprobe hit on every TLS read and write of every process.
    All,
}

/// Probe settings (the `[probes]` table of the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// `"agents"` (default): TLS probes per process, for processes that contact an LLM
    /// endpoint; `"all"`: on every process (request-shape detection on any host).
    pub scope: Scope,
    /// More LLM endpoints for first contact, by the name their TLS ClientHello carries
    /// (SNI): `"llm.internal.example"`, or `"*.gateway.example"` for every name under it.
    /// The provider table (api.openai.com, api.anthropic.com, …) is always included. Default none.
    pub llm_hosts: Vec<String>,
    /// How long a process stopped at its first contact waits for its probes at most; then it
    /// continues unprobed (counted in status `first_contact.timeouts`). Default 10,000 ms.
    pub first_contact_timeout_ms: u64,
    /// Expedite the kernel's RCU grace periods (`/sys/kernel/rcu_expedited`) while a process
    /// held at its first contact is probed, and put the knob back right after: a uprobe
    /// registered after a quiet moment otherwise waits a full grace period (10–15 ms here) while the
    /// process is stopped. An expedited grace period costs each CPU one IPI. Default true.
    pub expedite_first_contact: bool,
    /// Ring buffer size in bytes (a power of two, at least one page). Default 8 MiB: all of it
    /// is resident (kernel pages, mapped into the daemon) from the start, so it is most of the
    /// daemon's idle memory; `kernel_drops.ringbuf_full_bytes` in status says when it is too small
    /// (many agents moving large bodies at once). A daemon that adopts a pinned kernel side
    /// keeps that ring's size.
    pub ring_buffer_bytes: u32,
    /// Keep the kernel side (maps, ring buffer, links) pinned in bpffs across daemon restarts,
    /// so a restarted or upgraded daemon adopts it and misses nothing. Default true.
    pub pin: bool,
    /// Where pin sets go. Default `/sys/fs/bpf/agentwatch`.
    pub pin_root: PathBuf,
    /// `scope = "all"`: seconds between rescans of /proc/*/maps for TLS libraries loaded
    /// from unusual paths. Default 2.
    pub rescan_interval_secs: u64,
    /// `scope = "all"`: extra TLS libraries (or executables exporting `SSL_write`) to
    /// attach at start. Default none.
    pub extra_libraries: Vec<PathBuf>,
    /// TCP ports of local model servers whose plain-HTTP traffic is captured from the socket
    /// calls of the connecting process (write/sendto/sendmsg/writev, read/recvfrom/recvmsg/readv).
    /// Default Ollama 11434, LM Studio 1234, vLLM 8000, llama.cpp 8080, LiteLLM 4000; `[]` turns plain capture off.
    pub plaintext_ports: Vec<u16>,
    /// TCP ports whose TLS connections to known LLM hosts (by SNI) are estimated from their
    /// byte counts when no hook sees their plaintext. Default 443; `[]` turns estimates off.
    pub estimate_ports: Vec<u16>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            scope: Scope::Agents,
            llm_hosts: Vec::new(),
            first_contact_timeout_ms: 10_000,
            expedite_first_contact: true,
            ring_buffer_bytes: 8 << 20,
            pin: true,
            pin_root: PathBuf::from(super::pins::DEFAULT_PIN_ROOT),
            rescan_interval_secs: 2,
            extra_libraries: Vec::new(),
            plaintext_ports: vec![11434, 1234, 8000, 8080, 4000],
            estimate_ports: vec![443],
        }
    }
}

/// Drop counters of the kernel side, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DropCounters {
    pub ringbuf_full_events: u64,
    pub ringbuf_full_bytes: u64,
    pub truncated_bytes: u64,
    pub args_map_full: u64,
    pub proc_events: u64,
    pub read_failed_bytes: u64,
    /// Plain vectored calls: bytes in iovecs beyond the copied `MAX_IOVECS`.
    #[serde(default)]
    pub iov_bytes_not_copied: u64,
    /// Not loss: packets of held sockets (a gated write on a metered socket) kept inside the
    /// host by the egress program until a decision (TCP sends them again once released).
    #[serde(default)]
    pub held_packets_kept: u64,
    /// TCP connections not tracked because the socket table was full (their first
    /// contact was not seen).
    #[serde(default)]
    pub socket_table_full: u64,
    /// First contacts not held because the process table was full.
    #[serde(default)]
    pub process_table_full: u64,
    /// Processes of sessions not marked (their connects not reported): the session process
    /// table was full.
    #[serde(default)]
    pub session_table_full: u64,
    /// File changes of sessions' processes not reported (`[actions] files`): the table of
    /// calls in progress or the ring buffer was full.
    #[serde(default)]
    pub file_ops_dropped: u64,
}

/// What the kernel side did, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelCounters {
    pub tcp_connects: u64,
    /// First writes of new connections looked at …
    pub first_writes: u64,
    /// … that named a host that is not an LLM endpoint (let go, never probed),
    pub other_hosts: u64,
    /// … that were not TLS (let go),
    pub not_tls: u64,
    /// … and that stopped their process to be probed.
    pub holds: u64,
    /// Runs of the TLS uprobe programs (every hit of a probed process's TLS calls).
    pub uprobe_hits: u64,
    /// First contacts let go unprobed because no daemon had run for 30 s (a pinned kernel
    /// side left behind).
    #[serde(default)]
    pub no_daemon: u64,
    /// Processes stopped until the read hook was attached (a plain-HTTP or metered socket
    /// of theirs needed its reads seen while it was off).
    #[serde(default)]
    pub read_holds: u64,
    /// Programs of sessions stopped at their exec until the file uprobes covered them
    /// (`[actions] file_hooks = "libc"`).
    #[serde(default)]
    pub file_holds: u64,
}

/// Programs attached to kernel hooks, for status: names, and the hooks that could not be
/// had on this kernel (with what that costs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelPrograms {
    pub tracepoints: Vec<String>,
    /// Hooks this kernel lacks, and what is done instead.
    pub missing: BTreeMap<String, String>,
    /// `[actions] files`: its `syscalls` tracepoints, attached only while a session may be
    /// open (none when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_hooks: Option<FileHooks>,
    /// The read hook (`sock:sock_recv_length`): with `scope = "agents"` attached only while
    /// some socket needs its reads seen.
    #[serde(default)]
    pub read_hook: super::read_hook::ReadHook,
}

/// The hooks of `[actions] files`: with `kind = "libc"` uprobes planted only in the
/// processes of sessions (`libc`: what they cover); with `"syscalls"` tracepoints attached
/// only while sessions may change files (while any is attached, every system call of every
/// process takes the kernel's traced path).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FileHooks {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<super::libc_files::LibcFileStats>,
    pub attached: bool,
    /// Times they were attached (at a first contact, or a session opened) and taken off
    /// (no session open for a while), by this daemon.
    pub attaches: u64,
    pub detaches: u64,
}

pub struct Probes {
    pub(super) ebpf: Ebpf,
    /// Keeps the kernel's per-task perf scheduling enabled (see `keep_task_events_warm`).
    _warm: Option<std::os::fd::OwnedFd>,
    drops: PerCpuArray<MapData, u64>,
    counts: PerCpuArray<MapData, u64>,
    procs: aya::maps::HashMap<MapData, u32, u32>,
    /// A handle of its own on `CONFIG`: the ceiling gate takes the object's out of it, and
    /// the heartbeat and the pre-send switch are written after that.
    pub(super) config: Array<MapData, u32>,
    pub programs: KernelPrograms,
    pub scope: Scope,
    /// The TLS uprobes attached (per process or per file) and what was found on the way.
    pub attachments: super::attach::Attachments,
    /// The uprobe programs loaded again for `uprobe_multi` links (per-process probes), when
    /// the kernel has them; else per-process probes are perf-event uprobes.
    pub(super) multi: Option<super::multi::MultiPrograms>,
    /// The pin set (none when pinning is off).
    pub(super) pins: Option<super::pins::PinSet>,
    /// How the kernel side came to be (adopted, created, replaced), for status.
    pub kernel_side: super::pins::KernelSide,
    /// Links of the global programs (pinned ones: dropping closes only the descriptor).
    _links: Vec<aya::programs::links::FdLink>,
    /// Links of the file tracepoints this daemon attached (`[actions] files`).
    file_links: Vec<aya::programs::links::FdLink>,
    /// `[actions] file_hooks = "libc"`: the C library's file uprobes and what they cover.
    libc_files: Option<std::sync::Arc<std::sync::Mutex<super::libc_files::LibcFiles>>>,
    /// The read hook's link, when this daemon attached it.
    pub(super) read_link: Option<aya::programs::links::FdLink>,
    /// The kernel programs' diagnostics, written to the log at each heartbeat.
    kernel_logs: super::kernel_log::KernelLogs,
}

/// The object's program `name` as its concrete type (tracepoint, uprobe, cgroup program).
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram { name: name.into() })?
        .try_into()
        .map_err(load_error(name))
}

pub(super) fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProbeError> {
    program(ebpf, name)
}

pub(super) fn load_error(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    let name = name.to_string();
    move |source| ProbeError::ProgramLoad { name, source }
}

fn map_error(name: &str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    let name = name.to_string();
    move |source| ProbeError::Map { name, source }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name)
        .ok_or_else(|| ProbeError::MissingMap { name: name.into() })
}

impl Probes {
    /// Loads the object, configures it for this kernel, and attaches the process and socket
    /// tracepoints. Returns the probes and the ring buffer to read events from.
    pub fn load(
        config: &ProbesConfig,
        data_dir: &Path,
    ) -> Result<(Probes, super::ring::Ring), ProbeError> {
        super::require_root()?;
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        super::expedite::configure(
            config.expedite_first_contact && config.scope == Scope::Agents,
            data_dir,
        );
        let root = tracefs::ensure_mounted()?;
        let started = boot_secs();
        let mut kernel_side = super::pins::KernelSide::default();
        let pins = if config.pin {
            match super::pins::PinSet::prepare(&config.pin_root, OBJECT, data_dir) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("{e}; the kernel side is not pinned");
                    kernel_side.not_pinned = Some(e.to_string());
                    None
                }
            }
        } else {
            kernel_side.not_pinned = Some("probes.pin = false".into());
            if let Err(e) = super::pins::ensure_bpffs(&config.pin_root) {
                tracing::warn!("{e}");
            }
            None
        };
        // Other sets first: two attached at once, theirs would stop processes at their first
        // contact that nobody continues.
        for stale in pins.iter().flat_map(|p| p.stale.iter()) {
            let beat = pinned_heartbeat(stale);
            kernel_side.continued_from_replaced += continue_held_of(stale);
            super::pins::remove_tree(stale);
            let why = format!(
                "{} (another build's eBPF object or another data directory)",
                stale.display()
            );
            tracing::warn!("replaced the pinned kernel side at {why}");
            kernel_side.replaced.push(why);
            if let Some(beat) = beat {
                kernel_side.previous_daemon_gone_secs = Some(started.saturating_sub(beat));
            }
        }
        let adopt = pins.as_ref().is_some_and(|p| p.adopt);
        // Without pinning the maps still need a bpffs directory to be created in (they are
        // declared pinned): a private one, removed once they are loaded.
        let scratch = (pins.is_none() && config.pin_root.parent().is_some()).then(|| {
            config
                .pin_root
                .with_file_name(format!("agentwatch-unpinned-{}", std::process::id()))
        });
        let maps_dir = match (&pins, &scratch) {
            (Some(p), _) => p.maps(),
            (None, Some(d)) => {
                let _ = std::fs::create_dir_all(d);
                d.clone()
            }
            (None, None) => PathBuf::from("/sys/fs/bpf"),
        };
        let loaded = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT);
        if let Some(d) = &scratch {
            super::pins::remove_tree(d);
        }
        let mut ebpf = loaded?;
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf {
            detail: e.to_string(),
        })?;

        // Before any map is taken out: the uprobe_multi programs are relocated against them.
        let multi = if config.scope == Scope::Agents {
            match super::multi::MultiPrograms::load(OBJECT, &ebpf, &super::plans::UPROBE_PROGRAMS) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("{e}; per-process probes are perf-event uprobes");
                    None
                }
            }
        } else {
            None
        };
        // Before EVENTS is taken out: earlier daemons' programs are found by it.
        let events_id = ebpf.map("EVENTS").and_then(super::kernel_log::map_id);
        let kernel_logs = super::kernel_log::KernelLogs::open(&mut ebpf, events_id);
        kernel_side.kernel_log_readers = kernel_logs.readers();
        let events = match take_map(&mut ebpf, "EVENTS")? {
            aya::maps::Map::RingBuf(data) => data,
            _ => {
                return Err(ProbeError::MissingMap {
                    name: "EVENTS".into(),
                });
            }
        };
        let cursor = ebpf
            .take_map("CURSOR")
            .and_then(|m| Array::<MapData, u64>::try_from(m).ok());
        let ring = super::ring::Ring::new(events, cursor)?;
        let drops =
            PerCpuArray::try_from(take_map(&mut ebpf, "DROPS")?).map_err(map_error("DROPS"))?;
        let counts =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTS")?).map_err(map_error("COUNTS"))?;
        let procs = aya::maps::HashMap::try_from(take_map(&mut ebpf, "PROCS")?)
            .map_err(map_error("PROCS"))?;
        if adopt {
            if let Some(beat) = get_config(&mut ebpf, abi::CFG_HEARTBEAT) {
                kernel_side.previous_daemon_gone_secs = Some(started.saturating_sub(beat));
            }
            kernel_side.ring_drops_before_start = Some((
                Self::per_cpu_sum(&drops, abi::DROP_RINGBUF_EVENTS),
                Self::per_cpu_sum(&drops, abi::DROP_RINGBUF_BYTES),
            ));
        }
        fill_ports(&mut ebpf, config)?;
        fill_llm_hosts(&mut ebpf, &config.llm_hosts)?;
        // Settings first: the programs read them from their first run.
        write_config(&mut ebpf, &root, config.scope)?;
        set_config(&mut ebpf, abi::CFG_HEARTBEAT, started as u32)?;

        let mut programs = KernelPrograms::default();
        let mut links = Vec::new();
        let tracepoints = [
            ("task", "task_newtask"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exec"),
            ("sched", "sched_process_exit"),
        ];
        if adopt {
            // The previous daemon's programs are still attached: they are kept, not doubled.
            let pins = pins.as_ref().expect("adopting a pin set");
            for name in super::pins::GLOBAL_LINKS {
                let path = pins.link(name);
                let link = aya::programs::links::PinnedLink::from_pin(&path).map_err(|e| {
                    ProbeError::Pin {
                        what: format!("cannot open the pinned link {}", path.display()),
                        detail: e.to_string(),
                    }
                })?;
                links.push(link.into());
            }
            for (category, name) in tracepoints {
                programs.tracepoints.push(format!("{category}:{name}"));
            }
            programs.tracepoints.extend([
                "sock:inet_sock_set_state".to_string(),
                "sock:sock_send_length".into(),
            ]);
            if pins.link("tcp_sendmsg_locked").exists() {
                programs.tracepoints.push("tcp:tcp_sendmsg_locked".into());
                set_config(&mut ebpf, abi::CFG_PRE_SEND, 1)?;
            }
            kernel_side.origin = "adopted".into();
            kernel_side.gap_secs = Some(0.0);
        } else {
            for (category, name) in tracepoints {
                let program: &mut TracePoint = program(&mut ebpf, name)?;
                program.load().map_err(load_error(name))?;
                let id = program.attach(category, name).map_err(|source| {
                    ProbeError::TracepointAttach {
                        category: category.into(),
                        name: name.into(),
                        source,
                    }
                })?;
                let link = program.take_link(id).map_err(load_error(name))?;
                let link =
                    aya::programs::links::FdLink::try_from(link).map_err(|e| ProbeError::Pin {
                        what: format!("tracepoint {category}:{name} is not a bpf link"),
                        detail: e.to_string(),
                    })?;
                links.push(pin_link(link, pins.as_ref(), name)?);
                programs.tracepoints.push(format!("{category}:{name}"));
            }
            attach_socket_programs(&mut ebpf, &btf, &mut programs, pins.as_ref(), &mut links)?;
            kernel_side.origin = if pins.is_some() {
                "created".into()
            } else {
                "not pinned".into()
            };
            if let Some(gone) = kernel_side.previous_daemon_gone_secs {
                kernel_side.gap_secs = Some(gone as f64 + (boot_secs() - started) as f64);
            }
        }
        kernel_side.pinned_at = pins.as_ref().map(|p| p.dir.clone());
        for name in super::plans::UPROBE_PROGRAMS {
            uprobe(&mut ebpf, name)?.load().map_err(load_error(name))?;
        }
        let config_map = own_config_handle(&ebpf)?;
        Ok((
            Probes {
                ebpf,
                drops,
                counts,
                procs,
                config: config_map,
                programs,
                scope: config.scope,
                attachments: Default::default(),
                multi,
                _warm: (config.scope == Scope::Agents)
                    .then(keep_task_events_warm)
                    .flatten(),
                pins,
                kernel_side,
                _links: links,
                file_links: Vec::new(),
                libc_files: None,
                read_link: None,
                kernel_logs,
            },
            ring,
        ))
    }

    /// Writes a process's first-contact state (`PROC_*`), or removes it (`None`).
    /// The processes `PROCS` shows stopped at a first contact (decision pending).
    pub fn held_processes(&self) -> Vec<u32> {
        self.procs
            .iter()
            .flatten()
            .filter(|(_, state)| *state == abi::PROC_HELD)
            .map(|(tgid, _)| tgid)
            .collect()
    }

    pub fn set_process_state(&mut self, tgid: u32, state: Option<u32>) -> bool {
        match state {
            Some(s) => self.procs.insert(tgid, s, 0).is_ok(),
            None => self.procs.remove(&tgid).is_ok(),
        }
    }

    /// Takes the map of sockets (metering decisions) out of the object (once).
    pub fn take_meter(&mut self) -> Result<super::meter::Meter, ProbeError> {
        let socks = aya::maps::HashMap::try_from(take_map(&mut self.ebpf, "SOCKS")?)
            .map_err(map_error("SOCKS"))?;
        Ok(super::meter::Meter::new(socks))
    }

    /// With `on`, the kernel reports the arguments of every process of a session at its exec
    /// (`[actions] argv`); false when it cannot (the kernel's layout is not known).
    pub fn set_exec_args(&mut self, on: bool) -> bool {
        let offsets = if on {
            super::btf_offsets::process_args()
        } else {
            None
        };
        let values = match offsets {
            Some((mm, start, end)) => [
                (abi::CFG_TASK_MM_OFF, mm),
                (abi::CFG_MM_ARG_START_OFF, start),
                (abi::CFG_MM_ARG_END_OFF, end),
                (abi::CFG_EXEC_ARGS, 1),
            ],
            None => [
                (abi::CFG_TASK_MM_OFF, abi::CFG_ABSENT),
                (abi::CFG_MM_ARG_START_OFF, abi::CFG_ABSENT),
                (abi::CFG_MM_ARG_END_OFF, abi::CFG_ABSENT),
                (abi::CFG_EXEC_ARGS, 0),
            ],
        };
        let written = values
            .iter()
            .all(|(i, v)| self.config.set(*i, *v, 0).is_ok());
        if on && !(written && offsets.is_some()) {
            tracing::warn!(
                "[actions] argv: cannot read processes' arguments in the kernel (task_struct.mm or mm_struct.arg_start not found in /sys/kernel/btf/vmlinux); tool runs keep the arguments /proc still shows when their exec is read"
            );
            return false;
        }
        true
    }

    /// Takes the map of sessions' processes out of the object (once).
    pub fn take_session_procs(&mut self) -> Result<super::session_procs::SessionProcs, ProbeError> {
        let map = aya::maps::HashMap::try_from(take_map(&mut self.ebpf, "SESSION_PROCS")?)
            .map_err(map_error("SESSION_PROCS"))?;
        Ok(super::session_procs::SessionProcs::new(map))
    }

    /// Takes the ceiling gate's maps out of the object (once).
    pub fn take_gate(&mut self) -> Result<super::gate_maps::GateMaps, ProbeError> {
        super::gate_maps::take(&mut self.ebpf)
    }

    /// Attaches the `block` connect programs and the egress program that holds metered
    /// sockets' bytes at the cgroup v2 root; returns where.
    pub fn attach_block_programs(&mut self) -> Result<PathBuf, ProbeError> {
        use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr};
        self.attach_pre_send();
        let root = cgroup2_root().ok_or_else(|| ProbeError::Cgroup {
            detail: "no cgroup2 mount in /proc/self/mounts".into(),
        })?;
        let dir = std::fs::File::open(&root).map_err(|e| ProbeError::Cgroup {
            detail: format!("{}: {e}", root.display()),
        })?;
        if let Some(pins) = &self.pins
            && BLOCK_LINKS.iter().all(|l| pins.link(l).exists())
        {
            // A previous daemon's, still attached (its maps are ours now).
            return Ok(root);
        }
        self.drop_block_links();
        let pins = self.pins.clone();
        let pin_err = |name: &str| {
            let name = name.to_string();
            move |e: aya::programs::links::LinkError| ProbeError::Pin {
                what: format!("the link of {name} is not a bpf link"),
                detail: e.to_string(),
            }
        };
        for name in ["block_connect4", "block_connect6"] {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            program.load().map_err(load_error(name))?;
            let id = program
                // A bpf link is always multi-attach; the kernel rejects attach flags on it.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(load_error(name))?;
            let link = program.take_link(id).map_err(load_error(name))?;
            let link = aya::programs::links::FdLink::try_from(link).map_err(pin_err(name))?;
            let link = pin_link(link, pins.as_ref(), name)?;
            self._links.push(link);
        }
        let name = "hold_egress";
        let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
        program.load().map_err(load_error(name))?;
        let id = program
            .attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(load_error(name))?;
        let link = program.take_link(id).map_err(load_error(name))?;
        let link = aya::programs::links::FdLink::try_from(link).map_err(pin_err(name))?;
        let link = pin_link(link, pins.as_ref(), name)?;
        self._links.push(link);
        Ok(root)
    }

    /// With ceilings: the pre-send hook (`tcp:tcp_sendmsg_locked`, Linux 6.13+), so a gated
    /// write on a metered socket is held before its bytes are queued. Without ceilings it
    /// has nothing to do, and every TCP send of every process would run it: it stays off, and
    /// first contacts are decided when the ClientHello write ends (no request byte has left).
    pub fn attach_pre_send(&mut self) {
        const NAME: &str = "tcp_sendmsg_locked";
        const TRACEPOINT: &str = "tcp:tcp_sendmsg_locked";
        let adopted = self.pins.as_ref().is_some_and(|p| p.link(NAME).exists());
        let attached = if adopted {
            Ok(())
        } else {
            self.attach_btf_tracepoint(NAME)
        };
        // Switched only once attached: with the switch on, the kernel leaves first writes to
        // the pre-send hook.
        let switched = attached.and_then(|()| {
            self.config
                .set(abi::CFG_PRE_SEND, 1, 0)
                .map_err(map_error("CONFIG"))
        });
        match switched {
            Ok(()) => {
                if !self.programs.tracepoints.iter().any(|t| t == TRACEPOINT) {
                    self.programs.tracepoints.push(TRACEPOINT.into());
                }
            }
            Err(e) => {
                tracing::warn!("{e}; holds of metered sockets happen after their write");
                self.programs.missing.insert(
                    TRACEPOINT.into(),
                    format!("{e}: a gated write on a metered socket is held after its bytes were queued (Linux 6.13+ has the hook)"),
                );
            }
        }
    }

    /// `[actions] files`: the `syscalls` tracepoints of the calls that open for writing,
    /// delete and rename report the files the processes of sessions change. While any of them
    /// is attached every system call of every process takes the kernel's traced path
    /// (BENCHMARKS.md), so they are attached only while a session may be open
    /// ([`Probes::attach_file_probes`], [`Probes::detach_file_probes`]); a previous daemon's
    /// pinned ones are adopted as they are. Off, a previous daemon's are taken off.
    pub fn set_file_probes(&mut self, on: bool, kind: FileHooksKind) {
        self.libc_files = None;
        let _ = self.config.set(abi::CFG_FILE_HOLD_AT_EXEC, 0, 0);
        if !on {
            self.detach_file_probes();
            self.programs.file_hooks = None;
            return;
        }
        self.programs.file_hooks = Some(FileHooks {
            kind: match kind {
                FileHooksKind::Libc => "libc",
                FileHooksKind::Syscalls => "syscalls",
            }
            .into(),
            ..FileHooks::default()
        });
        // Relative paths: their directories are read in the kernel when it knows where.
        match super::btf_offsets::path_walk() {
            Some(offsets) => {
                let set = self
                    .ebpf
                    .map_mut("PATH_OFFSETS")
                    .ok_or_else(|| "no such map".to_string())
                    .and_then(|m| {
                        aya::maps::Array::<_, abi::PathOffsets>::try_from(m)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|mut a| a.set(0, offsets, 0).map_err(|e| e.to_string()));
                if let Err(e) = set {
                    tracing::warn!(
                        "failed to write the PATH_OFFSETS map: {e}; [actions] files: relative paths are resolved through /proc (`?/` once their process is gone)"
                    );
                }
            }
            None => tracing::warn!(
                "[actions] files: a field of task_struct, fs_struct, dentry, mount or fdtable was not found in /sys/kernel/btf/vmlinux; relative paths are resolved through /proc (`?/` once their process is gone)"
            ),
        }
        if kind == FileHooksKind::Libc {
            // A previous daemon's tracepoints (it had `syscalls`) off.
            self.detach_file_probes();
            self.set_libc_file_probes();
            return;
        }
        // Loaded now (the verifier's time), so attaching them within a first contact's hold
        // costs only the attaching.
        for name in FILE_TRACEPOINTS.iter().flat_map(|(e, x)| [*e, *x]) {
            let loaded = program::<TracePoint>(&mut self.ebpf, name).and_then(|p| {
                if p.fd().is_err() {
                    p.load().map_err(load_error(name))?;
                }
                Ok(())
            });
            if let Err(e) = loaded {
                self.file_probes_failed(name, &e);
                return;
            }
        }
        let adopted = self.pins.as_ref().is_some_and(|p| {
            FILE_TRACEPOINTS
                .iter()
                .flat_map(|(e, x)| [e, x])
                .all(|name| p.link(name).exists())
        });
        if adopted {
            self.files_attached_now();
        } else {
            // None, or some of another set: off until a session may be open.
            self.detach_file_probes();
        }
    }

    /// `file_hooks = "libc"`: loads the uprobe programs; the uprobes themselves are made per
    /// C library as the processes of sessions are covered.
    fn set_libc_file_probes(&mut self) {
        let tracefs = match super::tracefs::ensure_mounted() {
            Ok(t) => t,
            Err(e) => {
                self.file_probes_failed("uprobes", &e);
                return;
            }
        };
        let mut fds = std::collections::HashMap::new();
        let names = super::libc_files::LIBC_FILE_FUNCTIONS
            .iter()
            .map(|(_, p)| *p)
            .chain([super::libc_files::RETURN_PROGRAM]);
        for name in names {
            if fds.contains_key(name) {
                continue;
            }
            let loaded = uprobe(&mut self.ebpf, name).and_then(|p| {
                if p.fd().is_err() {
                    p.load().map_err(load_error(name))?;
                }
                let fd = p.fd().map_err(load_error(name))?;
                Ok(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
                    fd,
                )))
            });
            match loaded {
                Ok(fd) => {
                    fds.insert(name, fd);
                }
                Err(e) => {
                    self.file_probes_failed(name, &e);
                    return;
                }
            }
        }
        self.libc_files = Some(std::sync::Arc::new(std::sync::Mutex::new(
            super::libc_files::LibcFiles::new(tracefs, fds),
        )));
        // Programs run by sessions' processes are covered before they start (see there).
        if let Err(e) = self.config.set(abi::CFG_FILE_HOLD_AT_EXEC, 1, 0) {
            tracing::warn!(
                "failed to write the CONFIG map: {e}; [actions] files: a program a session runs is covered only through its parent (what it does after a child of it ends may be missed)"
            );
        }
        if let Some(f) = self.programs.file_hooks.as_mut() {
            f.attached = true;
        }
    }

    /// `file_hooks = "libc"`: the file uprobes' coverage, shared with the event loop (it
    /// covers and continues the processes the kernel stops at their exec).
    pub fn libc_files(
        &self,
    ) -> Option<std::sync::Arc<std::sync::Mutex<super::libc_files::LibcFiles>>> {
        self.libc_files.clone()
    }

    /// `file_hooks = "libc"`: covers the processes of sessions `tgids` not covered yet (and
    /// lets go of the others). Nothing with `"syscalls"`.
    pub fn cover_file_processes(&mut self, tgids: &[u32]) {
        if let Some(l) = self.libc_files.as_ref() {
            l.lock().expect("libc files lock").sync(tgids);
        }
    }

    /// Processes covered by the `libc` file hooks now.
    pub fn file_processes_covered(&self) -> usize {
        self.libc_files
            .as_ref()
            .map_or(0, |l| l.lock().expect("libc files lock").covered_count())
    }

    /// Whether the file hooks are uprobes covered per process (`file_hooks = "libc"`).
    pub fn file_probes_per_process(&self) -> bool {
        self.libc_files.is_some()
    }

    /// Before a process that may open a session goes on (its first contact): `"syscalls"`:
    /// the tracepoints on; `"libc"`: the process covered (its children inherit that).
    pub fn files_before_continue(&mut self, tgid: u32) {
        match self.libc_files.as_ref() {
            Some(l) => {
                let mut l = l.lock().expect("libc files lock");
                if !l.is_covered(tgid) {
                    l.cover(tgid);
                }
            }
            None => {
                self.attach_file_probes();
            }
        }
    }

    /// Status of the file hooks (with what the `libc` ones cover now).
    pub fn file_hooks_status(&self) -> Option<FileHooks> {
        let mut f = self.programs.file_hooks.clone()?;
        f.libc = self
            .libc_files
            .as_ref()
            .map(|l| l.lock().expect("libc files lock").stats());
        Some(f)
    }

    /// Whether the file tracepoints are attached.
    pub fn file_probes_attached(&self) -> bool {
        self.programs
            .file_hooks
            .as_ref()
            .is_some_and(|f| f.attached)
    }

    /// Attaches the file tracepoints (with `[actions] files`, when they are not): before a
    /// process that may open a session goes on. Returns whether they are attached.
    pub fn attach_file_probes(&mut self) -> bool {
        if self.libc_files.is_some() {
            return true;
        }
        match &self.programs.file_hooks {
            None => return false,
            Some(f) if f.attached => return true,
            Some(_) => {}
        }
        let started = std::time::Instant::now();
        for name in FILE_TRACEPOINTS.iter().flat_map(|(e, x)| [*e, *x]) {
            if let Err(e) = self.attach_file_tracepoint(name) {
                self.file_probes_failed(name, &e);
                return false;
            }
        }
        self.files_attached_now();
        if let Some(f) = self.programs.file_hooks.as_mut() {
            f.attaches += 1;
        }
        tracing::info!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "[actions] files: attached the file tracepoints (a session may open)"
        );
        true
    }

    /// `[actions] files` off for good: the tracepoint `name` could not be loaded or attached.
    fn file_probes_failed(&mut self, name: &str, e: &ProbeError) {
        tracing::warn!("{e}; [actions] files: the files sessions change are not reported");
        let hook = if self
            .programs
            .file_hooks
            .as_ref()
            .is_some_and(|f| f.kind == "libc")
        {
            format!("uprobe:{name}")
        } else {
            format!("syscalls:{name}")
        };
        self.programs.missing.insert(hook, e.to_string());
        self.libc_files = None;
        self.detach_file_probes();
        self.programs.file_hooks = None;
    }

    fn files_attached_now(&mut self) {
        for name in FILE_TRACEPOINTS.iter().flat_map(|(e, x)| [*e, *x]) {
            let tracepoint = format!("syscalls:{name}");
            if !self.programs.tracepoints.contains(&tracepoint) {
                self.programs.tracepoints.push(tracepoint);
            }
        }
        if let Some(f) = self.programs.file_hooks.as_mut() {
            f.attached = true;
        }
    }

    /// Takes the file tracepoints off (this daemon's and a previous daemon's pinned ones).
    pub fn detach_file_probes(&mut self) {
        if self.libc_files.is_some() {
            return;
        }
        if let Some(pins) = &self.pins {
            for name in FILE_TRACEPOINTS.iter().flat_map(|(e, x)| [e, x]) {
                let _ = std::fs::remove_file(pins.link(name));
            }
        }
        self.file_links.clear();
        self.programs
            .tracepoints
            .retain(|t| !t.starts_with("syscalls:"));
        if let Some(f) = self.programs.file_hooks.as_mut() {
            if f.attached {
                f.detaches += 1;
            }
            f.attached = false;
        }
    }

    /// Attaches the `syscalls` tracepoint `name` (the program of that name, loaded once).
    fn attach_file_tracepoint(&mut self, name: &str) -> Result<(), ProbeError> {
        let category = "syscalls";
        let program: &mut TracePoint = program(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            program.load().map_err(load_error(name))?;
        }
        let id = program
            .attach(category, name)
            .map_err(|source| ProbeError::TracepointAttach {
                category: category.into(),
                name: name.into(),
                source,
            })?;
        let link = program.take_link(id).map_err(load_error(name))?;
        let link = aya::programs::links::FdLink::try_from(link).map_err(|e| ProbeError::Pin {
            what: format!("tracepoint {category}:{name} is not a bpf link"),
            detail: e.to_string(),
        })?;
        let link = pin_link(link, self.pins.as_ref(), name)?;
        self.file_links.push(link);
        Ok(())
    }

    fn attach_btf_tracepoint(&mut self, name: &str) -> Result<(), ProbeError> {
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf {
            detail: e.to_string(),
        })?;
        let link = attach_btf(&mut self.ebpf, &btf, name, self.pins.as_ref())?;
        self._links.push(link);
        Ok(())
    }

    /// Takes pinned `block` programs and the pre-send hook of a previous daemon off (this one
    /// has no ceilings).
    pub fn drop_block_programs(&mut self) {
        // First contacts are looked at after the write from now on.
        let _ = self.config.set(abi::CFG_PRE_SEND, 0, 0);
        self.programs
            .tracepoints
            .retain(|t| t != "tcp:tcp_sendmsg_locked");
        if let Some(pins) = &self.pins {
            let _ = std::fs::remove_file(pins.link("tcp_sendmsg_locked"));
        }
        self.drop_block_links();
    }

    /// Takes a previous daemon's pinned `block` and egress links off.
    fn drop_block_links(&mut self) {
        if let Some(pins) = &self.pins {
            for name in BLOCK_LINKS {
                let _ = std::fs::remove_file(pins.link(name));
            }
        }
    }

    /// Tells the kernel side a daemon is alive (every second): without one for 30 s, it
    /// stops holding first contacts (nobody would continue them).
    /// Writes what the kernel programs logged (rare diagnostics) to the daemon's log.
    pub fn flush_kernel_logs(&mut self) {
        self.kernel_logs.flush();
        self.kernel_side.kernel_log_read_errors = self.kernel_logs.read_errors;
        self.kernel_side.kernel_log_readers = self.kernel_logs.readers();
    }

    pub fn heartbeat(&mut self) {
        let written = self
            .config
            .set(abi::CFG_HEARTBEAT, boot_secs() as u32, 0)
            .and_then(|()| self.config.set(abi::CFG_DAEMON_LEFT, 0, 0));
        if let Err(e) = written {
            tracing::warn!(
                "failed to write the heartbeat in the kernel's CONFIG map: {e}; without one for 30 s, first contacts are not held"
            );
        }
    }

    /// This daemon stops and leaves its kernel side pinned (SIGTERM): the kernel holds no
    /// first contact from now on (no daemon may come to continue it: `systemctl stop`, a
    /// node drained) until a next daemon beats, and the processes it holds now are continued,
    /// unprobed (their next connection is decided by the next daemon). Returns how many.
    pub fn leave(&mut self) -> usize {
        if let Err(e) = self.config.set(abi::CFG_DAEMON_LEFT, 1, 0) {
            tracing::warn!(
                "failed to tell the kernel side that the daemon stops: {e}; first contacts made in the next 30 s stay stopped until a daemon starts"
            );
        }
        let mut continued = 0;
        // Twice: a hold that had passed the check before the flag was written is in the
        // map a moment later.
        for round in 0..2 {
            if round == 1 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            for tgid in self.held_processes() {
                // SAFETY: kill(2) has no memory preconditions.
                unsafe { libc::kill(tgid as i32, libc::SIGCONT) };
                self.set_process_state(tgid, None);
                continued += 1;
            }
        }
        continued
    }

    /// `Some(dir)` when the kernel side is pinned (it outlives this daemon).
    pub fn pin_set(&self) -> Option<&super::pins::PinSet> {
        self.pins.as_ref()
    }

    /// Removes this daemon's pin set: its kernel side goes when the daemon exits.
    pub fn unpin(&mut self) {
        if let Some(pins) = self.pins.take() {
            super::pins::remove_tree(&pins.dir);
        }
    }

    fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        map.get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    pub fn drop_counters(&self) -> DropCounters {
        let sum = |index: u32| Self::per_cpu_sum(&self.drops, index);
        DropCounters {
            ringbuf_full_events: sum(abi::DROP_RINGBUF_EVENTS),
            ringbuf_full_bytes: sum(abi::DROP_RINGBUF_BYTES),
            truncated_bytes: sum(abi::DROP_TRUNCATED_BYTES),
            args_map_full: sum(abi::DROP_ARGS_MAP_FULL),
            proc_events: sum(abi::DROP_PROC_EVENTS),
            read_failed_bytes: sum(abi::DROP_READ_FAILED_BYTES),
            iov_bytes_not_copied: sum(abi::DROP_IOV_BYTES),
            held_packets_kept: sum(abi::DROP_HELD_PACKETS),
            socket_table_full: sum(abi::DROP_SOCKS_FULL),
            process_table_full: sum(abi::DROP_PROCS_FULL),
            session_table_full: sum(abi::DROP_SESSION_PROCS_FULL),
            file_ops_dropped: sum(abi::DROP_FILE_OPS),
        }
    }

    /// How per-process probes are attached: `uprobe_multi` links, or perf-event uprobes.
    pub fn per_process_links(&self) -> &'static str {
        if self.multi.is_some() {
            "uprobe_multi"
        } else {
            "perf_event"
        }
    }

    pub fn kernel_counters(&self) -> KernelCounters {
        let sum = |index: u32| Self::per_cpu_sum(&self.counts, index);
        KernelCounters {
            tcp_connects: sum(abi::COUNT_CONNECTS),
            first_writes: sum(abi::COUNT_FIRST_WRITES),
            other_hosts: sum(abi::COUNT_OTHER_HOSTS),
            not_tls: sum(abi::COUNT_NOT_TLS),
            holds: sum(abi::COUNT_HOLDS),
            uprobe_hits: sum(abi::COUNT_UPROBE_HITS),
            no_daemon: sum(abi::COUNT_NO_DAEMON),
            read_holds: sum(abi::COUNT_READ_HOLDS),
            file_holds: sum(abi::COUNT_FILE_HOLDS),
        }
    }
}

/// Loads and attaches the BTF tracepoint program `name` (pinned with the kernel side).
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &str,
    pins: Option<&super::pins::PinSet>,
) -> Result<aya::programs::links::FdLink, ProbeError> {
    let program: &mut BtfTracePoint = program(ebpf, name)?;
    program.load(name, btf).map_err(load_error(name))?;
    let id = program
        .attach()
        .map_err(|source| ProbeError::TracepointAttach {
            category: "tp_btf".into(),
            name: name.into(),
            source,
        })?;
    let link = program.take_link(id).map_err(load_error(name))?;
    pin_link(link.into(), pins, name)
}

/// The socket side: connect/close and the ends of socket writes. (The pre-send hook goes on
/// with ceilings only: `attach_pre_send`; the read hook when reads are wanted:
/// `read_hook.rs`.)
fn attach_socket_programs(
    ebpf: &mut Ebpf,
    btf: &Btf,
    programs: &mut KernelPrograms,
    pins: Option<&super::pins::PinSet>,
    links: &mut Vec<aya::programs::links::FdLink>,
) -> Result<(), ProbeError> {
    links.push(attach_btf(ebpf, btf, "inet_sock_set_state", pins)?);
    programs.tracepoints.push("sock:inet_sock_set_state".into());
    let name = "sock_send_length";
    links.push(attach_raw_tracepoint(ebpf, name, pins)?);
    programs.tracepoints.push(format!("sock:{name}"));
    Ok(())
}

/// Loads (once) and attaches the raw tracepoint program `name` to the tracepoint of that
/// name, its link pinned with the kernel side.
pub(super) fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &str,
    pins: Option<&super::pins::PinSet>,
) -> Result<aya::programs::links::FdLink, ProbeError> {
    let program: &mut RawTracePoint = program(ebpf, name)?;
    if program.fd().is_err() {
        program.load().map_err(load_error(name))?;
    }
    let id = program
        .attach(name)
        .map_err(|source| ProbeError::TracepointAttach {
            category: "raw_tp".into(),
            name: name.into(),
            source,
        })?;
    let link = program.take_link(id).map_err(load_error(name))?;
    pin_link(link.into(), pins, name)
}

/// The plain-HTTP ports and the estimate ports.
fn fill_ports(ebpf: &mut Ebpf, config: &ProbesConfig) -> Result<(), ProbeError> {
    for (name, ports) in [
        ("PLAIN_PORTS", &config.plaintext_ports),
        ("ESTIMATE_PORTS", &config.estimate_ports),
    ] {
        let mut map: aya::maps::HashMap<_, u16, u32> = aya::maps::HashMap::try_from(
            ebpf.map_mut(name)
                .ok_or_else(|| ProbeError::MissingMap { name: name.into() })?,
        )
        .map_err(map_error(name))?;
        clear_map(&mut map);
        for port in ports {
            map.insert(port, 1, 0).map_err(map_error(name))?;
        }
    }
    Ok(())
}

/// The LLM hosts first contact matches (the provider table and `llm_hosts`), as the hashes
/// the kernel computes: whole names, and suffixes that start at `.` or `-`.
fn fill_llm_hosts(ebpf: &mut Ebpf, extra: &[String]) -> Result<(), ProbeError> {
    let (names, suffixes) = crate::providers::first_contact_hosts(extra);
    for (map_name, list) in [("LLM_HOSTS", names), ("LLM_SUFFIXES", suffixes)] {
        let mut map: aya::maps::HashMap<_, u64, u32> =
            aya::maps::HashMap::try_from(ebpf.map_mut(map_name).ok_or_else(|| {
                ProbeError::MissingMap {
                    name: map_name.into(),
                }
            })?)
            .map_err(map_error(map_name))?;
        clear_map(&mut map);
        for name in list {
            map.insert(abi::host_hash(name.as_bytes()), 1, 0)
                .map_err(map_error(map_name))?;
        }
    }
    Ok(())
}

/// A per-process uprobe is a perf event bound to a task. The kernel turns its per-task perf
/// scheduling hooks on when the first such event appears on the host, and waits for an RCU
/// grace period to do it (tens of ms, paid by the process held at its first contact), then
/// off again a second after the last one goes. One dummy software event on the daemon's own
/// thread keeps them on, so attaching a process costs microseconds per probe.
fn keep_task_events_warm() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // struct perf_event_attr, as far as the fields set here (the kernel takes `size`).
    #[repr(C)]
    struct Attr {
        kind: u32,
        size: u32,
        config: u64,
        rest: [u64; 14],
    }
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_DUMMY: u64 = 9;
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    let attr = Attr {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<Attr>() as u32,
        config: PERF_COUNT_SW_DUMMY,
        // `disabled` (bit 0 of the flags word after sample_period, sample_type, read_format):
        // it never counts anything.
        rest: {
            let mut r = [0u64; 14];
            r[3] = 1;
            r
        },
    };
    // SAFETY: perf_event_open with a valid attr of the size it states; the fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const Attr,
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        tracing::debug!(
            "no dummy perf event: {}; the first process probed after a quiet second waits a grace period",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: a new descriptor this process owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: rlim is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

fn write_config(ebpf: &mut Ebpf, root: &Path, scope: Scope) -> Result<(), ProbeError> {
    let field = |category: &str, name: &str, field: &str, required: bool| {
        let offsets = tracefs::field_offsets(root, category, name)?;
        match offsets.get(field) {
            Some(o) => Ok(*o),
            None if !required => Ok(abi::CFG_ABSENT),
            None => Err(ProbeError::MissingField {
                tracepoint: format!("{category}:{name}"),
                field: field.into(),
            }),
        }
    };
    let values = [
        (
            abi::CFG_FORK_PARENT_PID_OFF,
            field("sched", "sched_process_fork", "parent_pid", true)?,
        ),
        (
            abi::CFG_FORK_CHILD_PID_OFF,
            field("sched", "sched_process_fork", "child_pid", true)?,
        ),
        (
            abi::CFG_EXEC_FILENAME_OFF,
            field("sched", "sched_process_exec", "filename", true)?,
        ),
        (
            abi::CFG_EXIT_GROUP_DEAD_OFF,
            field("sched", "sched_process_exit", "group_dead", false)?,
        ),
        (
            abi::CFG_NEWTASK_PID_OFF,
            field("task", "task_newtask", "pid", true)?,
        ),
        (
            abi::CFG_NEWTASK_CLONE_FLAGS_OFF,
            field("task", "task_newtask", "clone_flags", true)?,
        ),
        (abi::CFG_SELF_TGID, std::process::id()),
        (
            abi::CFG_TASK_EXIT_CODE_OFF,
            super::btf_offsets::task_exit_code().unwrap_or(abi::CFG_ABSENT),
        ),
        (abi::CFG_PER_PROCESS, (scope == Scope::Agents) as u32),
        (abi::CFG_PRE_SEND, 0),
    ];
    let facts = super::btf_offsets::task_leader_facts();
    let facts = [
        abi::CFG_TASK_GROUP_LEADER_OFF,
        abi::CFG_TASK_START_BOOTTIME_OFF,
        abi::CFG_TASK_SELF_EXEC_ID_OFF,
        abi::CFG_TASK_PARENT_EXEC_ID_OFF,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, index)| (index, facts.map_or(abi::CFG_ABSENT, |f| f[i])));
    let values = values.into_iter().chain(facts);
    for (index, value) in values {
        set_config(ebpf, index, value)?;
    }
    Ok(())
}

/// A second descriptor of the object's `CONFIG` map (the object's own goes to the gate).
fn own_config_handle(ebpf: &Ebpf) -> Result<Array<MapData, u32>, ProbeError> {
    use std::os::fd::AsFd;
    let missing = || ProbeError::MissingMap {
        name: "CONFIG".into(),
    };
    let aya::maps::Map::Array(data) = ebpf.map("CONFIG").ok_or_else(missing)? else {
        return Err(missing());
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| ProbeError::Pin {
            what: "cannot duplicate the descriptor of the CONFIG map".into(),
            detail: e.to_string(),
        })?;
    let data = MapData::from_fd(fd).map_err(map_error("CONFIG"))?;
    Array::try_from(aya::maps::Map::Array(data)).map_err(map_error("CONFIG"))
}

fn set_config(ebpf: &mut Ebpf, index: u32, value: u32) -> Result<(), ProbeError> {
    let mut config: Array<_, u32> =
        Array::try_from(
            ebpf.map_mut("CONFIG")
                .ok_or_else(|| ProbeError::MissingMap {
                    name: "CONFIG".into(),
                })?,
        )
        .map_err(map_error("CONFIG"))?;
    config.set(index, value, 0).map_err(map_error("CONFIG"))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified`
/// in the hybrid layout).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let (_, mount_point, fstype) = (cols.next()?, cols.next()?, cols.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The cgroup programs of ceilings (`block`, held sockets).
const BLOCK_LINKS: [&str; 3] = ["block_connect4", "block_connect6", "hold_egress"];

/// The `syscalls` tracepoints of `[actions] files` (entry, return), each a program of the
/// same name.
const FILE_TRACEPOINTS: [(&str, &str); 8] = [
    ("sys_enter_openat", "sys_exit_openat"),
    ("sys_enter_open", "sys_exit_open"),
    ("sys_enter_rmdir", "sys_exit_rmdir"),
    ("sys_enter_unlinkat", "sys_exit_unlinkat"),
    ("sys_enter_unlink", "sys_exit_unlink"),
    ("sys_enter_renameat2", "sys_exit_renameat2"),
    ("sys_enter_renameat", "sys_exit_renameat"),
    ("sys_enter_rename", "sys_exit_rename"),
];

/// Pins a global program's link in the pin set (when there is one).
fn pin_link(
    link: aya::programs::links::FdLink,
    pins: Option<&super::pins::PinSet>,
    name: &str,
) -> Result<aya::programs::links::FdLink, ProbeError> {
    let Some(pins) = pins else {
        return Ok(link);
    };
    let path = pins.link(name);
    link.pin(&path)
        .map(Into::into)
        .map_err(|e| ProbeError::Pin {
            what: format!("cannot pin the link of {name} at {}", path.display()),
            detail: e.to_string(),
        })
}

/// Seconds of boot time (CLOCK_BOOTTIME, as the programs read it).
pub(super) fn boot_secs() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64
}

fn get_config(ebpf: &mut Ebpf, index: u32) -> Option<u64> {
    let config: Array<_, u32> = Array::try_from(ebpf.map_mut("CONFIG")?).ok()?;
    match config.get(&index, 0) {
        Ok(v) if v != 0 && v != abi::CFG_ABSENT => Some(v as u64),
        _ => None,
    }
}

/// The heartbeat in a pin set's `CONFIG` map (seconds of boot time), if it reads as ours.
fn pinned_heartbeat(set: &Path) -> Option<u64> {
    let data = MapData::from_pin(set.join("maps").join("CONFIG")).ok()?;
    let config: Array<_, u32> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    match config.get(&abi::CFG_HEARTBEAT, 0) {
        Ok(v) if v != 0 && v != abi::CFG_ABSENT => Some(v as u64),
        _ => None,
    }
}

/// Continues the processes a pin set's `PROCS` map shows stopped at their first contact
/// (its daemon is gone and its records are not ours to read). Returns how many.
pub(super) fn continue_held_of(set: &Path) -> u64 {
    let Ok(data) = MapData::from_pin(set.join("maps").join("PROCS")) else {
        return 0;
    };
    let Ok(procs) = aya::maps::HashMap::<_, u32, u32>::try_from(aya::maps::Map::HashMap(data))
    else {
        return 0;
    };
    let held: Vec<u32> = procs
        .iter()
        .flatten()
        .filter(|(_, state)| *state == abi::PROC_HELD)
        .map(|(tgid, _)| tgid)
        .collect();
    for tgid in &held {
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(*tgid as i32, libc::SIGCONT) };
    }
    held.len() as u64
}

/// Empties a user-filled hash map (settings of a previous daemon, when adopted).
fn clear_map<K: aya::Pod>(map: &mut aya::maps::HashMap<&mut MapData, K, u32>) {
    let keys: Vec<K> = map.keys().flatten().collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}
