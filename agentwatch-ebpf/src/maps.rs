//! Every map of the kernel side, in one place: sizes here are the bounds whose overflow is
//! counted (`DROPS`) and shown in `agentwatch status`.
//!
//! Every map is pinned by name (in the directory user space gives at load), so the kernel
//! side outlives a daemon: the next one adopts the maps, the ring buffer with the records
//! written meanwhile, and the links that keep the programs attached.
use agentwatch_ebpf::*;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Every record goes through one ring buffer (size set by user space at load).
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(16 << 20, 0);

/// How far the daemon has read `EVENTS` (its stream position; written by user space only):
/// a next daemon knows which records were seen already.
#[map]
pub static CURSOR: Array<u64> = Array::pinned(1, 0);

/// Loss counters (`DROP_*`), summed over CPUs by user space.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::pinned(DROP_COUNTERS, 0);

/// What the kernel side did (`COUNT_*`): hook hits, first contacts, holds.
#[map]
pub static COUNTS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS, 0);

#[map]
pub static CONFIG: Array<u32> = Array::pinned(CFG_ENTRIES, 0);

/// Staging area for one record with bytes (too large for the BPF stack).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::pinned(1, 0);

// ---- processes ----------------------------------------------------------------------------

/// Child pids created with CLONE_THREAD (seen in task_newtask), so that
/// sched_process_fork reports processes only.
#[map]
pub static THREAD_CHILDREN: LruHashMap<u32, u32> = LruHashMap::pinned(8192, 0);

/// File changes of sessions' processes between a system call's entry and its return, per
/// thread (tid).
#[map]
pub static FILE_OPS: HashMap<u32, FileOp> = HashMap::pinned(1024, 0);

/// The user pointers of a staged [`FileOp`]'s paths that could not be read at the call's
/// entry (a page not touched yet, like a string of a program just started): read again at
/// its return, once the kernel has read them itself.
#[map]
pub static FILE_PATH_PTRS: HashMap<u32, [u64; 2]> = HashMap::pinned(1024, 0);

/// Where a [`FileOp`] is built (too large for the BPF stack).
#[map]
pub static FILE_SCRATCH: PerCpuArray<FileOp> = PerCpuArray::pinned(1, 0);

/// Where the directory walk of a [`FileRecord`] finds the fields it reads (user space).
#[map]
pub static PATH_OFFSETS: Array<PathOffsets> = Array::pinned(1, 0);

/// First-contact state of processes (tgid → `PROC_*`); absent: undecided. Cleared at exec
/// and exit, so a new program is decided anew.
#[map]
pub static PROCS: HashMap<u32, u32> = HashMap::pinned(65536, 0);

// ---- TLS hooks ----------------------------------------------------------------------------

/// SSL call arguments from entry to return, per thread (`pid_tgid`).
#[map]
pub static SSL_ARGS: HashMap<u64, SslArgs> = HashMap::pinned(16384, 0);

/// Go `crypto/tls` call arguments from entry to a RET probe, per goroutine. Entries of
/// goroutines that never return (the process exited while blocked in `Read`) are swept by
/// user space.
#[map]
pub static GO_ARGS: HashMap<GoKey, GoArgs> = HashMap::pinned(16384, 0);

/// Connections whose bytes were lost; the next chunk carries `TLS_FLAG_LOSS_BEFORE`.
#[map]
pub static LOSS: LruHashMap<ConnKey, u32> = LruHashMap::pinned(16384, 0);

/// Threads that sealed a record (AEAD context), until their next socket write links it.
#[map]
pub static AEAD_SEALED: LruHashMap<u64, u64> = LruHashMap::pinned(16384, 0);

/// Per thread of a process using AEAD probes: the fd of its last socket read, which is the
/// socket the next opened record came from.
#[map]
pub static AEAD_LAST_READ: LruHashMap<u64, u64> = LruHashMap::pinned(16384, 0);

/// Processes whose AEAD functions were called (their socket reads are remembered), one bit
/// per tgid (pids stay below 2^22): a test every socket read and write of every process
/// makes, so an array (an inlined index) rather than a hash.
#[map]
pub static AEAD_TGIDS: Array<u64> = Array::pinned(AEAD_TGID_WORDS, 0);

// ---- sockets ------------------------------------------------------------------------------

/// TCP sockets of interest, by kernel `struct sock` address: connected and not decided yet,
/// plain-HTTP, or metered. A socket whose first write is of no interest leaves at once.
#[map]
pub static SOCKS: HashMap<u64, SockState> = HashMap::pinned(65536, 0);

/// Sockets in `SOCKS` per tgid slot (`tgid % TRACKED_SLOTS`), kept with atomic adds.
#[map]
pub static TRACKED: Array<u64> = Array::pinned(TRACKED_SLOTS, 0);

/// Plain-HTTP capture: TCP ports of local model servers (host order → 1), set by user space.
#[map]
pub static PLAIN_PORTS: HashMap<u16, u32> = HashMap::pinned(64, 0);

/// TCP ports whose TLS connections are estimated when no hook covers them (443).
#[map]
pub static ESTIMATE_PORTS: HashMap<u16, u32> = HashMap::pinned(64, 0);

/// Hashes (`host_hash`) of LLM host names: whole names, and suffixes starting at `.`/`-`.
#[map]
pub static LLM_HOSTS: HashMap<u64, u32> = HashMap::pinned(4096, 0);
#[map]
pub static LLM_SUFFIXES: HashMap<u64, u32> = HashMap::pinned(1024, 0);

/// Threads whose current write was already held on a metered socket (the pre-send hook
/// runs once per segment of a large write), until the write ends.
#[map]
pub static SEND_GATED: LruHashMap<u64, u32> = LruHashMap::pinned(4096, 0);

// ---- ceilings -----------------------------------------------------------------------------

/// tgid → the tgid of its session's root: processes of an open session (user space marks a
/// session's processes when it opens; a child inherits at fork). Their TCP connects are reported (`Connect`); any other
/// process pays one lookup per connect.
#[map]
pub static SESSION_PROCS: HashMap<u32, u32> = HashMap::pinned(65536, 0);

/// Ceiling gate, tgid → `GATE_*` state; written by user space, advanced by the probes.
#[map]
pub static GATE: HashMap<u32, u32> = HashMap::pinned(65536, 0);

/// Processes of blocked sessions (tgid → 1), and the LLM endpoints refused to them.
#[map]
pub static BLOCKED_TGIDS: HashMap<u32, u32> = HashMap::pinned(8192, 0);
#[map]
pub static BLOCKED_DEST4: HashMap<Dest4, u32> = HashMap::pinned(1024, 0);
#[map]
pub static BLOCKED_DEST6: HashMap<Dest6, u32> = HashMap::pinned(1024, 0);

/// Cookies of sockets whose queued bytes must not leave the host (a held, killed or
/// blocked write on a metered socket) → 1. Written here, released by user space.
#[map]
pub static HELD_SOCKS: HashMap<u64, u32> = HashMap::pinned(16384, 0);
