//! The kernel/user ABI of agentwatch: every type that crosses the ring buffer or a map.
//!
//! Layouts are `#[repr(C)]` with explicit padding so the BPF object and the daemon agree
//! byte for byte (each size is asserted below). Flags are `u32`, never `bool`; record kinds
//! are `u32` decoded in user space (an unknown value is counted, never transmuted). Every
//! ring-buffer record starts with its kind and has a struct of its own.
#![no_std]

use core::mem::size_of;

/// Payload bytes carried by one TLS data record. Larger SSL buffers are split into
/// ordered chunks of at most this size.
pub const DATA_CHUNK: usize = 16384;
/// Chunks emitted for one SSL call at most (1 MiB). Bytes beyond are counted as truncated.
pub const MAX_CHUNKS: u32 = 64;

// ---- ring-buffer record kinds (the first `u32` of every record) ---------------------------

/// [`ProcEvent`]: a process was forked, exec'd or exited.
pub const EVENT_FORK: u32 = 1;
pub const EVENT_EXEC: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
/// [`TlsData`] + payload: plaintext a TLS hook (or a plain-HTTP socket) moved.
pub const EVENT_TLS_DATA: u32 = 4;
/// [`Handshake`]: a TLS handshake started on an SSL object (or a plain socket connected):
/// whatever the daemon knew of a connection with the same id is over.
pub const EVENT_TLS_HANDSHAKE: u32 = 5;
/// [`GateHold`] + preview: a process in the gate was stopped (SIGSTOP from the probe) at the
/// entry of a TLS write, before any byte left; up to `GATE_PREVIEW` bytes of the buffer
/// follow so user space can tell an LLM request from other TLS traffic.
pub const EVENT_GATE_HOLD: u32 = 6;
/// [`AeadLink`]: an AEAD context (one direction of a rustls connection in an opaque binary)
/// was used next to a socket syscall of the same thread: links its records to a socket.
pub const EVENT_AEAD_LINK: u32 = 7;
/// [`Contact`] + ClientHello bytes: the first write of a new TCP connection was a TLS
/// ClientHello naming an LLM host, or naming none (an IP-literal endpoint).
pub const EVENT_CONTACT: u32 = 8;
/// [`SocketBytes`]: bytes a metered socket moved.
pub const EVENT_SOCKET_BYTES: u32 = 9;
/// [`SocketClose`]: a metered socket was closed.
pub const EVENT_SOCKET_CLOSE: u32 = 10;
/// [`SocketHold`]: a gated process's write on a metered socket is held (SIGSTOP; the
/// socket's packets are kept in the host by the egress program until user space decides).
pub const EVENT_SOCKET_HOLD: u32 = 11;
/// A process of a session (`SESSION_PROCS`) connected a TCP socket: [`Connect`].
pub const EVENT_CONNECT: u32 = 12;
/// A process of a session exec'd, with `[actions] argv` on: its arguments ([`ExecArgs`]),
/// read in the kernel at the exec (a tool that exits at once is gone before `/proc` is read).
pub const EVENT_EXEC_ARGS: u32 = 13;
/// A process of a session changed a file, and the system call succeeded ([`FileRecord`];
/// `[actions] files`).
pub const EVENT_FILE_OP: u32 = 14;
/// [`ReadHold`]: a process was stopped (SIGSTOP, delivered when its system call returns)
/// because a socket of it needs its reads seen and the read hook is off: user space
/// attaches it and continues the process.
pub const EVENT_READ_HOLD: u32 = 15;
/// A process of a session stopped at its exec until user space covers it with the file
/// uprobes (a [`ReadHold`] record, `port` 0): user space continues it.
pub const EVENT_FILE_HOLD: u32 = 16;
/// Bytes of a process's arguments an [`ExecArgs`] carries at most.
pub const ARGS_LEN: usize = 1024;

pub const GATE_PREVIEW: usize = 256;
/// ClientHello bytes a [`Contact`] carries at most.
pub const HELLO_BYTES: usize = 2048;

/// `GateHold::flags`: the held write is one TLS record (an AEAD seal), not a write call;
/// one that is not an LLM request (handshake, a record between requests) keeps the process
/// armed, since the request may follow without a read in between.
pub const HOLD_TLS_RECORD: u32 = 1;

// ---- sockets -------------------------------------------------------------------------------

/// `SockState::state`: connected, first write not seen yet (its first bytes decide).
pub const SOCK_NEW: u32 = 1;
/// Its ClientHello was sent to user space (a [`Contact`]); user space may meter it.
pub const SOCK_HELLO_SENT: u32 = 2;
/// Metered: an LLM host (by SNI) whose plaintext no hook sees; byte counts go up.
pub const SOCK_METERED: u32 = 3;
/// Connected to a plain-HTTP model server port: its bytes are captured.
pub const SOCK_PLAIN: u32 = 4;
/// Looked at and not metered (user space decided): nothing more is done until it closes.
pub const SOCK_IGNORED: u32 = 5;

/// Slots of the `TRACKED` counters: sockets in `SOCKS` per tgid (hashed: tgids `TRACKED_SLOTS`
/// apart share a slot, which only costs them a lookup). A socket call of a process whose
/// slot is 0 is of no interest and skips the `SOCKS` lookup.
pub const TRACKED_SLOTS: u32 = 1 << 18;

/// Value of the `SOCKS` map (key: the kernel's `struct sock` address, which the socket
/// tracepoints pass): a TCP socket a process connected, while it is of interest.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// `SOCK_*`.
    pub state: u32,
    /// The process that connected it, and the descriptor it connected on.
    pub tgid: u32,
    pub fd: u32,
    /// Destination port (host order).
    pub port: u32,
    /// The socket's cookie (names it in the egress program).
    pub cookie: u64,
}

/// `Contact::verdict`: the ClientHello names a known LLM host (or one in `llm_hosts`).
pub const CONTACT_LLM_HOST: u32 = 1;
/// The ClientHello names no host (an IP-literal endpoint such as `https://127.0.0.1:8443`).
pub const CONTACT_NO_SNI: u32 = 2;
/// The ClientHello names another host; reported only for a process of a session
/// (`CONTACT_SESSION`), for its host row's SNI.
pub const CONTACT_OTHER_HOST: u32 = 3;

/// `Contact::flags`: the process was stopped at this write (SIGSTOP), to be probed before it
/// sends its first request; user space continues it.
pub const CONTACT_HELD: u32 = 1;
/// `Contact::flags`: an LLM host on an estimate port: user space decides whether to meter
/// the socket (`SOCKS` holds it as `SOCK_HELLO_SENT`).
pub const CONTACT_ESTIMATE: u32 = 2;
/// `Contact::flags`: the process is in a session (`SESSION_PROCS`): every first ClientHello
/// of its connections is reported, for the SNI of the hosts it contacted.
pub const CONTACT_SESSION: u32 = 4;

// ---- per-process first-contact state (`PROCS`: tgid → one of these) -------------------------

/// Stopped at a first contact; user space is deciding (attaching its probes).
pub const PROC_HELD: u32 = 1;
/// Decided: probes attached (or its TLS cannot be probed and is estimated). Its later
/// connections are not held.
pub const PROC_DECIDED: u32 = 2;
/// Probed on probation (no SNI) and found not to be an agent: its no-SNI connections pass;
/// a connection to a known LLM host is held again.
pub const PROC_NOT_AGENT: u32 = 3;

// ---- the ceiling gate ----------------------------------------------------------------------

/// Values of the `GATE` map (tgid → state), the in-kernel half of ceilings.
/// The next SSL write of the process is held for a decision.
pub const GATE_ARMED: u32 = 1;
/// Held (stopped) at an SSL write; user space decides.
pub const GATE_HELD: u32 = 2;
/// Writes pass until the process reads TLS data again (then back to ARMED): the rest of a
/// granted request goes out, the next request after a response is held again.
pub const GATE_GRANTED: u32 = 3;
/// Every SSL write is answered with SIGKILL before it runs.
pub const GATE_KILL: u32 = 4;
/// Every SSL write is held; user space cuts the connection and lets the write fail.
pub const GATE_BLOCKED: u32 = 5;
/// Every SSL write is held until the session is approved.
pub const GATE_PAUSED: u32 = 6;

/// Direction of plaintext relative to the observed process.
pub const DIR_WRITE: u32 = 0;
pub const DIR_READ: u32 = 1;

/// `TlsData::flags`: bytes of this connection and direction were lost (ring buffer full)
/// before this chunk; user space must resynchronise the stream.
pub const TLS_FLAG_LOSS_BEFORE: u32 = 1;
/// `TlsData::flags`: the SSL call moved more than `MAX_CHUNKS * DATA_CHUNK` bytes; the
/// rest was not copied (counted in `DROP_TRUNCATED_BYTES`).
pub const TLS_FLAG_TRUNCATED: u32 = 2;
/// `TlsData::flags`: one TLS record's plaintext from an AEAD seal/open (aws-lc under
/// rustls), `conn` = the AEAD context; TLS 1.3's inner content type is its last non-zero byte.
pub const TLS_FLAG_AEAD: u32 = 4;

/// Indexes of the per-CPU drop counter array `DROPS` (summed over CPUs by user space).
pub const DROP_RINGBUF_EVENTS: u32 = 0;
pub const DROP_RINGBUF_BYTES: u32 = 1;
pub const DROP_TRUNCATED_BYTES: u32 = 2;
pub const DROP_ARGS_MAP_FULL: u32 = 3;
pub const DROP_PROC_EVENTS: u32 = 4;
pub const DROP_READ_FAILED_BYTES: u32 = 5;
/// Bytes of a plain `sendmsg`/`recvmsg`/`writev`/`readv` in iovecs beyond `MAX_IOVECS`.
pub const DROP_IOV_BYTES: u32 = 6;
/// Packets of held sockets kept from leaving the host (the egress gate of estimates).
pub const DROP_HELD_PACKETS: u32 = 7;
/// TCP sockets not tracked because `SOCKS` was full (their first contact is not seen).
pub const DROP_SOCKS_FULL: u32 = 8;
/// First contacts not held because `PROCS` was full.
pub const DROP_PROCS_FULL: u32 = 9;
/// Processes of sessions not marked (or their children not inherited): `SESSION_PROCS` full.
pub const DROP_SESSION_PROCS_FULL: u32 = 10;
/// File changes of sessions' processes not reported: `FILE_OPS` full, or the ring buffer.
pub const DROP_FILE_OPS: u32 = 11;
pub const DROP_COUNTERS: u32 = 12;

/// Indexes of the per-CPU counter array `COUNTS` (not loss: what the kernel side did).
/// TCP connects seen by the socket programs.
pub const COUNT_CONNECTS: u32 = 0;
/// First writes of new connections looked at.
pub const COUNT_FIRST_WRITES: u32 = 1;
/// … that were TLS ClientHellos naming a host that is not an LLM endpoint (let go).
pub const COUNT_OTHER_HOSTS: u32 = 2;
/// … that were not TLS (let go, or a proxy CONNECT whose next write decides).
pub const COUNT_NOT_TLS: u32 = 3;
/// First contacts that stopped their process for a decision.
pub const COUNT_HOLDS: u32 = 4;
/// Uprobe program runs (every TLS hook hit, whatever it did).
pub const COUNT_UPROBE_HITS: u32 = 5;
/// First contacts not held because no daemon has been alive for `HOLD_WITHOUT_DAEMON_SECS`.
pub const COUNT_NO_DAEMON: u32 = 6;
/// Processes stopped until the read hook was attached ([`ReadHold`]).
pub const COUNT_READ_HOLDS: u32 = 7;
/// Programs of sessions stopped at their exec until the file uprobes cover them.
pub const COUNT_FILE_HOLDS: u32 = 8;
pub const COUNTERS: u32 = 9;

/// Indexes of the `CONFIG` array, written by user space before any program is attached.
/// Tracepoint field offsets come from the running kernel's tracefs `format` files, because
/// they moved between kernel versions (e.g. `sched_process_fork`'s comm became `__data_loc`).
pub const CFG_FORK_PARENT_PID_OFF: u32 = 0;
pub const CFG_FORK_CHILD_PID_OFF: u32 = 1;
pub const CFG_EXEC_FILENAME_OFF: u32 = 2;
pub const CFG_EXIT_GROUP_DEAD_OFF: u32 = 3;
pub const CFG_NEWTASK_PID_OFF: u32 = 4;
pub const CFG_NEWTASK_CLONE_FLAGS_OFF: u32 = 5;
/// tgid of the daemon itself: its own traffic is never captured.
pub const CFG_SELF_TGID: u32 = 6;
/// 1 when the host is over a host-wide ceiling: every process without a gate entry is
/// treated as ARMED, so a new session's first LLM call is held too.
pub const CFG_HOST_GATE: u32 = 7;
/// 1 when probes are per process (`scope = "agents"`): first contacts of undecided
/// processes are held; 0 when the TLS probes are global (`scope = "all"`).
pub const CFG_PER_PROCESS: u32 = 8;
/// 1 when the pre-send hook (`tcp:tcp_sendmsg_locked`) is attached: holds happen before a
/// write's bytes are queued; else at the end of the write.
pub const CFG_PRE_SEND: u32 = 9;
/// 1 when ceilings are configured: every data record wakes the daemon as it is written (a
/// session's gate is armed when its first request is seen, and a fast agent's next call must
/// not go out before that); 0: data waits for the daemon's next drain (a few ms).
pub const CFG_WAKE_DATA: u32 = 10;
/// Seconds of boot time at the daemon's last heartbeat (every second). The kernel side
/// outlives the daemon (pinned); without a daemon for `HOLD_WITHOUT_DAEMON_SECS` nobody
/// would continue a process stopped at its first contact, so none is stopped.
pub const CFG_HEARTBEAT: u32 = 11;
/// Offset of `exit_code` in the kernel's `struct task_struct` (from its BTF), read at a
/// process's exit: the wait status its parent gets (`code << 8`, or the killing signal).
pub const CFG_TASK_EXIT_CODE_OFF: u32 = 12;
/// Offsets of `task_struct.mm` and of `mm_struct.arg_start`/`arg_end` (BTF), where a
/// process's arguments are, and 1 when user space wants them ([`ExecArgs`]).
pub const CFG_TASK_MM_OFF: u32 = 13;
pub const CFG_MM_ARG_START_OFF: u32 = 14;
pub const CFG_MM_ARG_END_OFF: u32 = 15;
pub const CFG_EXEC_ARGS: u32 = 16;
/// 1 once a daemon stopped by choice (SIGTERM) left the kernel side pinned: first contacts are
/// not held until a daemon beats again (none may come to continue them); 0 while one runs.
pub const CFG_DAEMON_LEFT: u32 = 17;
/// 1 while the read hook (`sock:sock_recv_length`) is attached: user space attaches it only
/// while some socket needs its reads seen (a plain-HTTP socket, a metered one, an agent's);
/// 0: such a socket's process is stopped until it is ([`ReadHold`]).
pub const CFG_READ_HOOK: u32 = 18;
/// `task_struct.group_leader`, `.start_boottime`, `.self_exec_id` and `.parent_exec_id`: at
/// the exit of a process of a session, when it started and whether it ran a program of its
/// own (a daemon that did not see it start still knows it was a tool run).
pub const CFG_TASK_GROUP_LEADER_OFF: u32 = 19;
pub const CFG_TASK_START_BOOTTIME_OFF: u32 = 20;
pub const CFG_TASK_SELF_EXEC_ID_OFF: u32 = 21;
pub const CFG_TASK_PARENT_EXEC_ID_OFF: u32 = 22;
/// 1 with `[actions] file_hooks = "libc"`: a process of a session that runs a program is
/// stopped at its exec until user space has covered it with the file uprobes (its own perf
/// events: inherited ones can be lost when a child exits, see `libc_files.rs`).
pub const CFG_FILE_HOLD_AT_EXEC: u32 = 23;
pub const CFG_ENTRIES: u32 = 24;
/// Longer than a restart takes (a DaemonSet pod's is a few seconds), shorter than anyone waits.
pub const HOLD_WITHOUT_DAEMON_SECS: u32 = 30;
/// Value of an offset that the running kernel's tracepoint does not have.
pub const CFG_ABSENT: u32 = u32::MAX;

/// Words of the AEAD process bitmap: one bit per tgid below `PID_MAX_LIMIT` (2^22).
pub const AEAD_TGID_WORDS: u32 = (1 << 22) / 64;

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;

/// Connection ids of plain-HTTP sockets have this bit set, with the fd below it (SSL object
/// addresses never have it: they are user-space pointers).
pub const PLAIN_CONN: u64 = 1 << 63;

/// Field offsets of the syscall tracepoints (`syscalls/sys_enter_*`), kept for the format
/// parser's tests.
pub const SYSCALL_ARG0_OFF: usize = 16;

/// iovecs of one vectored plain-socket call copied at most; bytes in the rest are counted
/// (`DROP_IOV_BYTES`) and the stream is marked lost.
pub const MAX_IOVECS: u32 = 8;

// ---- LLM hosts (in-kernel SNI match) ------------------------------------------------------

/// Host names longer than this are not matched (no known LLM endpoint comes close).
pub const MAX_HOST_LEN: usize = 128;

/// The hash the kernel computes over a host name, from its last byte to its first
/// (lowercased), so every suffix is hashed on the way: FNV-1a, 64 bits. The `LLM_HOSTS`
/// map holds the hashes of whole names (exact matches) and, in `LLM_SUFFIXES`, of
/// suffixes that start at a `.` or `-` (`.openai.azure.com`, `-aiplatform.googleapis.com`).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of [`host_hash`] (shared so the kernel and user space cannot disagree).
#[inline(always)]
pub fn host_hash_step(hash: u64, byte: u8) -> u64 {
    (hash ^ byte.to_ascii_lowercase() as u64).wrapping_mul(FNV_PRIME)
}

/// The hash of `name` as the kernel computes it (back to front).
pub fn host_hash(name: &[u8]) -> u64 {
    name.iter()
        .rev()
        .fold(FNV_OFFSET, |hash, byte| host_hash_step(hash, *byte))
}

// ---- records -------------------------------------------------------------------------------

/// `ProcEvent::execed`: the process ran no program of its own (it is a copy of its parent).
pub const EXECED_NO: u32 = 0;
/// It exec'd since its fork.
pub const EXECED_YES: u32 = 1;
/// Not known (not a session's process, or the kernel's offsets are not known).
pub const EXECED_UNKNOWN: u32 = 2;

/// `ProcEvent::exit_code` when the kernel's `task_struct` offset is not known.
pub const EXIT_CODE_UNKNOWN: u32 = u32::MAX;

/// A process lifecycle event (fork, exec, exit). Threads are filtered in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcEvent {
    pub kind: u32,
    /// fork: the child's pid; exec/exit: the process's tgid.
    pub tgid: u32,
    /// fork: the parent's tgid; otherwise 0.
    pub ppid: u32,
    /// exit: the task's `exit_code` (a wait status), or `EXIT_CODE_UNKNOWN`; otherwise 0.
    pub exit_code: u32,
    /// fork, exit: the tgid of the root of the session the process is in (`SESSION_PROCS`),
    /// 0 when it is in none; exec: 0. Lets a daemon that did not see the process (it came
    /// and went while no daemon ran) charge it all the same.
    pub session: u32,
    /// exit of a process of a session: `EXECED_*`; otherwise `EXECED_UNKNOWN`.
    pub execed: u32,
    /// `bpf_ktime_get_boot_ns` when the event fired.
    pub ts_ns: u64,
    /// exit of a process of a session: when it started (boot-clock ns, the kernel's
    /// `start_boottime`); otherwise 0.
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// exec: the path passed to execve (NUL-terminated); otherwise empty.
    pub filename: [u8; FILENAME_LEN],
}

/// Header of a plaintext chunk; `len` payload bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsData {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `DIR_WRITE` or `DIR_READ`.
    pub direction: u32,
    /// `TLS_FLAG_*`.
    pub flags: u32,
    /// Payload bytes in this record.
    pub len: u32,
    /// The connection: an SSL object's address in the process, an AEAD context, or
    /// `PLAIN_CONN | fd`. With the tgid, it names the connection.
    pub conn: u64,
    pub ts_ns: u64,
    /// Bytes the call transferred in all.
    pub call_len: u64,
    /// Offset of this chunk within the call.
    pub offset: u64,
}

pub const TLS_HEADER_LEN: usize = size_of::<TlsData>();

/// A new connection on `conn` (a TLS handshake, or a plain socket's connect).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Handshake {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _pad: u32,
    pub conn: u64,
    pub ts_ns: u64,
}

/// A gated process stopped at a TLS write; `len` preview bytes of its buffer follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GateHold {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// The `GATE_*` state the write found.
    pub state: u32,
    /// `HOLD_TLS_RECORD` or 0.
    pub flags: u32,
    /// Preview bytes that follow.
    pub len: u32,
    pub conn: u64,
    pub ts_ns: u64,
    /// Bytes the held call asked to write.
    pub call_len: u64,
}

/// A write syscall on a metered socket held for a decision: the syscall itself runs on;
/// what it queued stays in the host because the socket is in `HELD_SOCKS` (dropped at
/// egress) until user space releases it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketHold {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// The `GATE_*` state the write found.
    pub state: u32,
    pub fd: u64,
    pub ts_ns: u64,
    /// Bytes the write asked to send (the first iovec's for vectored calls).
    pub len: u64,
    /// The socket's cookie in `HELD_SOCKS` (0: unknown, its bytes could not be held back).
    pub cookie: u64,
}

/// An AEAD context used next to a socket syscall on `fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AeadLink {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `DIR_WRITE` (a seal before a write) or `DIR_READ` (an open after a read).
    pub direction: u32,
    pub aead: u64,
    pub fd: u64,
    pub ts_ns: u64,
}

/// The first write of a new TCP connection, a ClientHello for an LLM host or for none;
/// `len` of its bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Contact {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `CONTACT_LLM_HOST`, `CONTACT_NO_SNI` or `CONTACT_OTHER_HOST`.
    pub verdict: u32,
    /// `CONTACT_HELD`, `CONTACT_ESTIMATE`, `CONTACT_SESSION`.
    pub flags: u32,
    /// Destination port (host order).
    pub port: u32,
    pub fd: u64,
    /// The `SOCKS` key (kernel socket address) user space writes a decision to.
    pub sock: u64,
    pub ts_ns: u64,
    /// Bytes the write sent in all, and how many follow this header.
    pub call_len: u32,
    pub len: u32,
}

/// Bytes a metered socket moved.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketBytes {
    pub kind: u32,
    pub tgid: u32,
    pub direction: u32,
    pub len: u32,
    pub fd: u64,
    pub ts_ns: u64,
}

/// A TCP connect of a process of a session: the destination as the process passed it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Connect {
    pub kind: u32,
    pub tgid: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    /// Host order.
    pub port: u32,
    /// The tgid of the root of the process's session (`SESSION_PROCS`).
    pub session: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    /// IPv4: the first 4 bytes; IPv6: all 16 (network order).
    pub addr: [u8; 16],
    /// The kernel's socket (as in `Contact::sock`): its ClientHello, if one follows, names it.
    pub sock: u64,
}

/// The arguments of a process of a session, at its exec: `len` bytes of `args` (NUL-separated
/// as the kernel keeps them); `total` is their whole length (more than `len`: cut).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs {
    pub kind: u32,
    pub tgid: u32,
    pub len: u32,
    pub total: u32,
    pub ts_ns: u64,
    pub args: [u8; ARGS_LEN],
}

/// Bytes kept of each path of a [`FileOp`] (with its NUL).
pub const FILE_PATH_LEN: usize = 256;
/// `FileOp::op`: an `openat` for writing (`O_WRONLY`, `O_RDWR`, `O_CREAT` or `O_TRUNC`;
/// `flags` are the open flags).
pub const FILE_OPEN_WRITE: u32 = 1;
/// `unlink`/`unlinkat` (`flags`: `AT_REMOVEDIR` for a directory).
pub const FILE_UNLINK: u32 = 2;
/// `rename`/`renameat`/`renameat2`: `path` became `new_path`.
pub const FILE_RENAME: u32 = 3;
/// `dfd` of a path relative to the working directory.
pub const AT_FDCWD: i32 = -100;

/// A file a process of a session opened for writing, deleted or renamed: the paths as the
/// process passed them (`len`, `new_len`: bytes read, NUL included; 0: unreadable),
/// relative ones to `dfd` / `new_dfd`. Staged per thread at the call's entry, sent at its
/// successful return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileOp {
    pub kind: u32,
    pub tgid: u32,
    pub op: u32,
    pub flags: u32,
    pub dfd: i32,
    pub new_dfd: i32,
    pub len: u32,
    pub new_len: u32,
    /// The tgid of the root of the process's session (`SESSION_PROCS`).
    pub session: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub path: [u8; FILE_PATH_LEN],
    pub new_path: [u8; FILE_PATH_LEN],
}

/// Bytes of a [`FileRecord`]'s directory names (the buffers are twice that: a name is read
/// at an offset below this, up to this long).
pub const FILE_DIR_LEN: usize = 256;
/// `FileRecord::dir_state`: the path is absolute, or the directory was not read.
pub const DIR_NONE: u32 = 0;
/// The directory's names, up to the process's root (or the root of its mounts).
pub const DIR_WHOLE: u32 = 1;
/// Cut: deeper or longer than the record holds.
pub const DIR_CUT: u32 = 2;

/// A [`FileOp`] as sent, with the directories its relative paths are relative to (the
/// working directory, or the directory `dfd` is open on), read in the kernel when the call
/// returns, so a process that is gone by the time the daemon reads the record still has
/// them: each directory's names from the innermost out, each ended by a NUL (`dir_len`
/// bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileRecord {
    pub op: FileOp,
    pub dir_state: u32,
    pub dir_len: u32,
    pub new_dir_state: u32,
    pub new_dir_len: u32,
    pub dir: [u8; 2 * FILE_DIR_LEN],
    pub new_dir: [u8; 2 * FILE_DIR_LEN],
}

/// Offsets of the kernel struct fields the directory walk of a [`FileRecord`] reads (from
/// the running kernel's BTF, filled by user space; `ok == 0`: not found, no walk).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PathOffsets {
    pub ok: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    /// `dentry.d_name` + `qstr.name`.
    pub dentry_name: u32,
    pub vfsmount_root: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_path: u32,
    pub _pad: u32,
}

/// A metered socket was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketClose {
    pub kind: u32,
    pub tgid: u32,
    pub fd: u64,
    pub ts_ns: u64,
}

/// A process stopped until the read hook is attached (`EVENT_READ_HOLD`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReadHold {
    pub kind: u32,
    pub tgid: u32,
    /// Destination port (host order) of the socket that needs its reads seen.
    pub port: u32,
    pub _pad: u32,
    pub ts_ns: u64,
}

/// A record staged in the per-CPU scratch buffer before output: its header at the start,
/// then up to one chunk of bytes right after the header (whose size depends on the kind).
#[repr(C)]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_HEADER + DATA_CHUNK],
}

/// Room for the largest header that precedes bytes in a record.
pub const SCRATCH_HEADER: usize = 64;

// ---- map values ----------------------------------------------------------------------------

/// Arguments of an SSL read/write call, kept per thread from entry to return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslArgs {
    pub ssl: u64,
    pub buf: u64,
    /// `SSL_*_ex`: address of the `size_t` that receives the byte count; 0 for the plain calls.
    pub out_len: u64,
}

/// Key of the Go `crypto/tls` argument map: a goroutine (its `g` pointer, R14 in Go's amd64
/// register ABI) rather than a thread, because a goroutine blocked in `Read` may resume on
/// another OS thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoKey {
    pub tgid: u32,
    pub direction: u32,
    pub g: u64,
}

/// Arguments of a Go `crypto/tls` Write or Read, kept per goroutine from entry to a RET.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoArgs {
    /// The `*Conn`: the connection id (`conn` of the records).
    pub conn: u64,
    pub buf: u64,
    /// `len(b)`.
    pub len: u64,
    /// 1 when a Write's bytes were already emitted at its entry.
    pub emitted: u32,
    pub _pad: u32,
}

/// Key of the per-connection loss marker map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnKey {
    pub tgid: u32,
    pub direction: u32,
    pub ssl: u64,
}

/// An IPv4 destination refused to blocked processes (address and port in network order,
/// as in `bpf_sock_addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest4 {
    pub ip: u32,
    pub port: u32,
}

/// An IPv6 destination refused to blocked processes (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest6 {
    pub ip: [u32; 4],
    pub port: u32,
}

// The layouts both sides rely on.
const _: () = {
    assert!(size_of::<ProcEvent>() == 40 + COMM_LEN + FILENAME_LEN);
    assert!(size_of::<ExecArgs>() == 24 + ARGS_LEN);
    assert!(size_of::<TlsData>() == 56);
    assert!(size_of::<Handshake>() == 32);
    assert!(size_of::<GateHold>() == 48);
    assert!(size_of::<SocketHold>() == 48);
    assert!(size_of::<AeadLink>() == 40);
    assert!(size_of::<Contact>() == 56);
    assert!(size_of::<SocketBytes>() == 32);
    assert!(size_of::<SocketClose>() == 24);
    assert!(size_of::<ReadHold>() == 24);
    assert!(size_of::<Connect>() == 56);
    assert!(size_of::<SockState>() == 24);
    assert!(size_of::<SslArgs>() == 24);
    assert!(size_of::<GoKey>() == 16);
    assert!(size_of::<GoArgs>() == 32);
    assert!(size_of::<ConnKey>() == 16);
    assert!(size_of::<Dest4>() == 8);
    assert!(size_of::<Dest6>() == 20);
    assert!(size_of::<FileOp>() == 48 + 2 * FILE_PATH_LEN);
    assert!(size_of::<FileRecord>() == size_of::<FileOp>() + 16 + 4 * FILE_DIR_LEN);
    assert!(size_of::<PathOffsets>() == 72);
    // Every header that precedes bytes fits in the scratch buffer's header room.
    assert!(size_of::<TlsData>() <= SCRATCH_HEADER);
    assert!(size_of::<GateHold>() <= SCRATCH_HEADER);
    assert!(size_of::<Contact>() <= SCRATCH_HEADER);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for ProcEvent {}
    unsafe impl aya::Pod for TlsData {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for SslArgs {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for GoKey {}
    unsafe impl aya::Pod for GoArgs {}
    unsafe impl aya::Pod for Dest4 {}
    unsafe impl aya::Pod for Dest6 {}
    unsafe impl aya::Pod for PathOffsets {}
}
