//! The kernel/user ABI of agentwatch: every type that crosses the ring buffer or a map.
//!
//! Layouts are `#[repr(C)]` with explicit padding so the BPF object and the daemon agree
//! byte for byte. Flags are `u32`, never `bool`; event kinds are `u32` decoded with
//! `TryFrom` in user space (an unknown value is counted, never transmuted).
#![no_std]

/// Payload bytes carried by one TLS data event. Larger SSL buffers are split into
/// ordered chunks of at most this size.
pub const DATA_CHUNK: usize = 16384;
/// Chunks emitted for one SSL call at most (1 MiB). Bytes beyond are counted as truncated.
pub const MAX_CHUNKS: u32 = 64;

/// Ring buffer record kinds (first `u32` of every record).
pub const EVENT_FORK: u32 = 1;
pub const EVENT_EXEC: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
pub const EVENT_TLS_DATA: u32 = 4;
/// A TLS handshake started on an SSL object: whatever the daemon knew of a connection
/// with the same SSL pointer is over (the pointer was freed and reused). Header only.
pub const EVENT_TLS_HANDSHAKE: u32 = 5;
/// A process in the gate was stopped (SIGSTOP from the probe) at the entry of an SSL write,
/// before any byte left; `GATE_PREVIEW` bytes of the buffer follow the header so user space
/// can tell an LLM request from other TLS traffic. Preview bytes stay in memory.
pub const EVENT_GATE_HOLD: u32 = 6;
pub const GATE_PREVIEW: usize = 256;
/// `offset` of a hold record: the held write is one TLS record (an AEAD seal), not a write
/// call; one that is not an LLM request (handshake, a record between requests) keeps the
/// process armed, since the request may follow without a read in between.
pub const HOLD_TLS_RECORD: u64 = 1;
/// `offset` of a hold record: the held call is a write syscall on a metered socket (an LLM
/// host no hook covers), `ssl` = the fd. The syscall itself runs on; what it queued stays in
/// the host because the socket is in `HELD_SOCKS` (dropped at egress) until user space
/// releases it. The record is a [`SocketHold`].
pub const HOLD_SOCKET: u64 = 2;
/// An AEAD context (one direction of a rustls connection in an opaque binary) was used next
/// to a socket syscall of the same thread: header only, `ssl` = context, `offset` = the fd,
/// `direction` = which way. Links the context's records to their connection.
pub const EVENT_AEAD_LINK: u32 = 7;
/// The first bytes written on a TCP socket connected to an estimate port (443): a TLS
/// ClientHello whose SNI user space reads. `ssl` = the fd; up to `HELLO_BYTES` follow.
pub const EVENT_TLS_HELLO: u32 = 8;
pub const HELLO_BYTES: usize = 512;
/// Bytes a metered socket moved (`len`, `direction`; `ssl` = the fd); header only.
pub const EVENT_SOCKET_BYTES: u32 = 9;
/// A metered socket was closed (`ssl` = the fd); header only.
pub const EVENT_SOCKET_CLOSE: u32 = 10;

/// `TLS_SOCKS` states: connected to an estimate port, first write not seen yet; its
/// ClientHello was sent to user space (undecided); metered (an LLM host no hook covers).
pub const SOCK_CONNECTED: u32 = 1;
pub const SOCK_HELLO_SENT: u32 = 2;
pub const SOCK_METERED: u32 = 3;

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

/// Direction of TLS plaintext relative to the observed process.
pub const DIR_WRITE: u32 = 0;
pub const DIR_READ: u32 = 1;

/// `TlsDataHeader::flags`: bytes of this connection and direction were lost (ring buffer
/// full) before this chunk; user space must resynchronise the stream.
pub const TLS_FLAG_LOSS_BEFORE: u32 = 1;
/// `TlsDataHeader::flags`: the SSL call moved more than `MAX_CHUNKS * DATA_CHUNK` bytes;
/// the rest was not copied (counted in `DROP_TRUNCATED_BYTES`).
pub const TLS_FLAG_TRUNCATED: u32 = 2;
/// `TlsDataHeader::flags`: one TLS record's plaintext from an AEAD seal/open (aws-lc under
/// rustls), `ssl` = the AEAD context; TLS 1.3's inner content type is its last non-zero byte.
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
pub const DROP_COUNTERS: u32 = 8;

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
pub const CFG_ENTRIES: u32 = 8;
/// Value of an offset that the running kernel's tracepoint does not have.
pub const CFG_ABSENT: u32 = u32::MAX;

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;

/// A process lifecycle event (fork, exec, exit). Threads are filtered in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcEvent {
    pub kind: u32,
    /// fork: the child's pid; exec/exit: the process's tgid.
    pub tgid: u32,
    /// fork: the parent's tgid; otherwise 0.
    pub ppid: u32,
    pub _pad0: u32,
    /// `bpf_ktime_get_boot_ns` when the event fired.
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
    /// exec: the path passed to execve (NUL-terminated); otherwise empty.
    pub filename: [u8; FILENAME_LEN],
}

/// Connection ids of plain-HTTP sockets have this bit set, with the fd below it (SSL object
/// addresses never have it: they are user-space pointers).
pub const PLAIN_CONN: u64 = 1 << 63;

/// Field offsets of the syscall tracepoints (`syscalls/sys_enter_*`: the arguments as 8-byte
/// slots after `__syscall_nr`; `sys_exit_*`: `ret`). Fixed by the syscall trace event layout.
pub const SYSCALL_ARG0_OFF: usize = 16;
pub const SYSCALL_ARG1_OFF: usize = 24;
pub const SYSCALL_RET_OFF: usize = 16;
pub const SYSCALL_ARG2_OFF: usize = 32;
/// `__syscall_nr` of a `sys_enter_*` tracepoint.
pub const SYSCALL_NR_OFF: usize = 8;

/// iovecs of one vectored plain-socket call copied at most; bytes in the rest are counted
/// (`DROP_IOV_BYTES`) and the stream is marked lost.
pub const MAX_IOVECS: u32 = 8;

/// Header of a TLS plaintext chunk; `len` payload bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsDataHeader {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// `DIR_WRITE` or `DIR_READ`.
    pub direction: u32,
    /// `TLS_FLAG_*`.
    pub flags: u32,
    /// Payload bytes in this record.
    pub len: u32,
    /// The SSL object's address in the process: with the tgid, it names the connection.
    pub ssl: u64,
    pub ts_ns: u64,
    /// Bytes the SSL call transferred in all.
    pub call_len: u64,
    /// Offset of this chunk within the SSL call.
    pub offset: u64,
}

pub const TLS_HEADER_LEN: usize = core::mem::size_of::<TlsDataHeader>();

/// A write syscall on a metered socket held for a decision (`EVENT_GATE_HOLD` with
/// `HOLD_SOCKET`): `header.ssl` = the fd, `header.call_len` = the bytes asked to be written
/// (the first iovec's for vectored calls), `header.flags` = the gate state it found.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketHold {
    pub header: TlsDataHeader,
    /// The socket's cookie in `HELD_SOCKS` (0: unknown, its bytes could not be held back).
    pub cookie: u64,
}

/// A TLS data record as staged in the per-CPU scratch buffer before output.
#[repr(C)]
pub struct TlsDataEvent {
    pub header: TlsDataHeader,
    pub data: [u8; DATA_CHUNK],
}

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
    /// The `*Conn`: the connection id (`ssl` of the records).
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

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for ProcEvent {}
    unsafe impl aya::Pod for TlsDataHeader {}
    unsafe impl aya::Pod for SocketHold {}
    unsafe impl aya::Pod for SslArgs {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for GoKey {}
    unsafe impl aya::Pod for GoArgs {}
    unsafe impl aya::Pod for Dest4 {}
    unsafe impl aya::Pod for Dest6 {}
}
