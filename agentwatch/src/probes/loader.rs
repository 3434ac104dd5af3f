//! Loading the eBPF object, attaching its kernel-side programs, and the maps user space
//! writes (settings, ports, LLM hosts, first-contact decisions).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agentwatch_ebpf as abi;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint, UProbe};
use aya::{Btf, Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

use super::{ProbeError, tracefs};

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
    /// Ring buffer size in bytes (a power of two, at least one page). Default 16 MiB.
    pub ring_buffer_bytes: u32,
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
            ring_buffer_bytes: 16 << 20,
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
}

/// Programs attached to kernel hooks, for status: names, and the hooks that could not be
/// had on this kernel (with what that costs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelPrograms {
    pub tracepoints: Vec<String>,
    /// Hooks this kernel lacks, and what is done instead.
    pub missing: BTreeMap<String, String>,
}

pub struct Probes {
    pub(super) ebpf: Ebpf,
    /// Keeps the kernel's per-task perf scheduling enabled (see `keep_task_events_warm`).
    _warm: Option<std::os::fd::OwnedFd>,
    drops: PerCpuArray<MapData, u64>,
    counts: PerCpuArray<MapData, u64>,
    procs: aya::maps::HashMap<MapData, u32, u32>,
    pub programs: KernelPrograms,
    pub scope: Scope,
    /// The TLS uprobes attached (per process or per file) and what was found on the way.
    pub attachments: super::attach::Attachments,
    /// The uprobe programs loaded again for `uprobe_multi` links (per-process probes), when
    /// the kernel has them; else per-process probes are perf-event uprobes.
    pub(super) multi: Option<super::multi::MultiPrograms>,
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
    pub fn load(config: &ProbesConfig) -> Result<(Probes, RingBuf<MapData>), ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        let root = tracefs::ensure_mounted()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(OBJECT)?;
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
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(map_error("EVENTS"))?;
        let drops =
            PerCpuArray::try_from(take_map(&mut ebpf, "DROPS")?).map_err(map_error("DROPS"))?;
        let counts =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTS")?).map_err(map_error("COUNTS"))?;
        let procs = aya::maps::HashMap::try_from(take_map(&mut ebpf, "PROCS")?)
            .map_err(map_error("PROCS"))?;
        fill_ports(&mut ebpf, config)?;
        fill_llm_hosts(&mut ebpf, &config.llm_hosts)?;
        // Settings first: the programs read them from their first run.
        write_config(&mut ebpf, &root, config.scope)?;

        let mut programs = KernelPrograms::default();
        for (category, name) in [
            ("task", "task_newtask"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exec"),
            ("sched", "sched_process_exit"),
        ] {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(load_error(name))?;
            program
                .attach(category, name)
                .map_err(|source| ProbeError::TracepointAttach {
                    category: category.into(),
                    name: name.into(),
                    source,
                })?;
            programs.tracepoints.push(format!("{category}:{name}"));
        }
        if attach_socket_programs(&mut ebpf, &btf, &mut programs)? {
            set_config(&mut ebpf, abi::CFG_PRE_SEND, 1)?;
        }
        for name in super::plans::UPROBE_PROGRAMS {
            uprobe(&mut ebpf, name)?.load().map_err(load_error(name))?;
        }
        Ok((
            Probes {
                ebpf,
                drops,
                counts,
                procs,
                programs,
                scope: config.scope,
                attachments: Default::default(),
                multi,
                _warm: (config.scope == Scope::Agents)
                    .then(keep_task_events_warm)
                    .flatten(),
            },
            ring,
        ))
    }

    /// Writes a process's first-contact state (`PROC_*`), or removes it (`None`).
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

    /// Takes the ceiling gate's maps out of the object (once).
    pub fn take_gate(&mut self) -> Result<crate::policy::gate::Gate, ProbeError> {
        crate::policy::gate::take(&mut self.ebpf)
    }

    /// Attaches the `block` connect programs and the egress program that holds metered
    /// sockets' bytes at the cgroup v2 root; returns where.
    pub fn attach_block_programs(&mut self) -> Result<PathBuf, ProbeError> {
        use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr};
        let root = cgroup2_root().ok_or_else(|| ProbeError::Cgroup {
            detail: "no cgroup2 mount in /proc/self/mounts".into(),
        })?;
        let dir = std::fs::File::open(&root).map_err(|e| ProbeError::Cgroup {
            detail: format!("{}: {e}", root.display()),
        })?;
        for name in ["block_connect4", "block_connect6"] {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            program.load().map_err(load_error(name))?;
            program
                // A bpf link is always multi-attach; the kernel rejects attach flags on it.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(load_error(name))?;
        }
        let name = "hold_egress";
        let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
        program.load().map_err(load_error(name))?;
        program
            .attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(load_error(name))?;
        Ok(root)
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
        }
    }
}

/// The socket side: connect/close, the ends of socket writes and reads, and (where the
/// kernel has it) the pre-send hook. Returns whether the pre-send hook is attached.
fn attach_socket_programs(
    ebpf: &mut Ebpf,
    btf: &Btf,
    programs: &mut KernelPrograms,
) -> Result<bool, ProbeError> {
    let attach_btf = |ebpf: &mut Ebpf, name: &str| -> Result<(), ProbeError> {
        let program: &mut BtfTracePoint = program(ebpf, name)?;
        program.load(name, btf).map_err(load_error(name))?;
        program
            .attach()
            .map_err(|source| ProbeError::TracepointAttach {
                category: "tp_btf".into(),
                name: name.into(),
                source,
            })?;
        Ok(())
    };
    attach_btf(ebpf, "inet_sock_set_state")?;
    programs.tracepoints.push("sock:inet_sock_set_state".into());
    for name in ["sock_send_length", "sock_recv_length"] {
        let program: &mut RawTracePoint = program(ebpf, name)?;
        program.load().map_err(load_error(name))?;
        program
            .attach(name)
            .map_err(|source| ProbeError::TracepointAttach {
                category: "raw_tp".into(),
                name: name.into(),
                source,
            })?;
        programs.tracepoints.push(format!("sock:{name}"));
    }
    // Linux 6.13+: before a write's bytes are queued. Without it, first contacts are decided
    // when the ClientHello write ends (the same for TLS: no request byte has left), and a
    // gated write on a metered socket is held only after its bytes were queued.
    match attach_btf(ebpf, "tcp_sendmsg_locked") {
        Ok(()) => {
            programs.tracepoints.push("tcp:tcp_sendmsg_locked".into());
            Ok(true)
        }
        Err(e) => {
            tracing::warn!("{e}; holds of metered sockets happen after their write");
            programs.missing.insert(
                "tcp:tcp_sendmsg_locked".into(),
                format!("{e}: a gated write on a metered socket is held after its bytes were queued (Linux 6.13+ has the hook)"),
            );
            Ok(false)
        }
    }
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
        (abi::CFG_PER_PROCESS, (scope == Scope::Agents) as u32),
        (abi::CFG_PRE_SEND, 0),
    ];
    for (index, value) in values {
        set_config(ebpf, index, value)?;
    }
    Ok(())
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
