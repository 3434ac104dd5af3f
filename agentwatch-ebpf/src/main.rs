//! agentwatch kernel programs: process lifecycle tracepoints and TLS-library uprobes.
//!
//! Each program is a thin entry that calls a fallible `try_…` function; every event that
//! cannot be delivered is counted in `DROPS`, never lost silently.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only so the workspace builds; the real object is bpfel-unknown-none.
}

#[cfg(target_arch = "bpf")]
mod bpf {
    use agentwatch_ebpf::*;
    use aya_ebpf::{
        EbpfContext,
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
            bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, generated,
        },
        macros::{cgroup_skb, cgroup_sock_addr, map, tracepoint, uprobe, uretprobe},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::{
            ProbeContext, RetProbeContext, SkBuffContext, SockAddrContext, TracePointContext,
        },
    };

    const CLONE_THREAD: u64 = 0x0001_0000;
    const SIGKILL: u32 = 9;
    const SIGSTOP: u32 = 19;

    /// Every record goes through one ring buffer (size set by user space at load).
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

    #[map]
    static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_COUNTERS, 0);

    #[map]
    static CONFIG: Array<u32> = Array::with_max_entries(CFG_ENTRIES, 0);

    /// SSL call arguments from entry to return, per thread (`pid_tgid`).
    #[map]
    static SSL_ARGS: HashMap<u64, SslArgs> = HashMap::with_max_entries(16384, 0);

    /// Go `crypto/tls` call arguments from entry to a RET probe, per goroutine. Entries of
    /// goroutines that never return (the process exited while blocked in `Read`) are swept by
    /// user space.
    #[map]
    static GO_ARGS: HashMap<GoKey, GoArgs> = HashMap::with_max_entries(16384, 0);

    /// Connections whose bytes were lost; the next chunk carries `TLS_FLAG_LOSS_BEFORE`.
    #[map]
    static LOSS: LruHashMap<ConnKey, u32> = LruHashMap::with_max_entries(16384, 0);

    /// Child pids created with CLONE_THREAD (seen in task_newtask), so that
    /// sched_process_fork reports processes only.
    #[map]
    static THREAD_CHILDREN: LruHashMap<u32, u32> = LruHashMap::with_max_entries(8192, 0);

    /// Ceiling gate, tgid → `GATE_*` state; written by user space, advanced by the probes.
    #[map]
    static GATE: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

    /// Processes of blocked sessions (tgid → 1), and the LLM endpoints refused to them.
    #[map]
    static BLOCKED_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);
    #[map]
    static BLOCKED_DEST4: HashMap<Dest4, u32> = HashMap::with_max_entries(1024, 0);
    #[map]
    static BLOCKED_DEST6: HashMap<Dest6, u32> = HashMap::with_max_entries(1024, 0);

    /// Plain-HTTP capture: TCP ports of local model servers (host order → 1), set by user space.
    #[map]
    static PLAIN_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(64, 0);

    /// Sockets connected to a watched port: `tgid << 32 | fd` → 1.
    #[map]
    static PLAIN_FDS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

    /// Syscall arguments of a watched socket from enter to exit, per thread.
    #[map]
    static PLAIN_ARGS: HashMap<u64, SslArgs> = HashMap::with_max_entries(16384, 0);

    /// Vectored syscalls of a watched socket from enter to exit, per thread: `buf` is the
    /// iovec array, `out_len` its length.
    #[map]
    static PLAIN_IOV_ARGS: HashMap<u64, SslArgs> = HashMap::with_max_entries(16384, 0);

    /// Staging area for one TLS record (too large for the BPF stack).
    /// TCP ports whose TLS connections are estimated when no hook covers them (443).
    #[map]
    static ESTIMATE_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(64, 0);

    /// (tgid << 32 | fd) of sockets connected to an estimate port → `SOCK_*` state.
    #[map]
    static TLS_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);

    /// Per thread: (fd, direction) of a metered socket's syscall, from entry to exit.
    #[map]
    static METER_ARGS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

    /// Threads that sealed a record (AEAD context), until their next socket write links it.
    #[map]
    static AEAD_SEALED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

    /// Per thread of a process using AEAD probes: the fd of its last read-type syscall,
    /// which is the socket the next opened record came from.
    #[map]
    static AEAD_LAST_READ: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

    /// Processes whose AEAD functions were called (their read syscalls are remembered).
    #[map]
    static AEAD_TGIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

    /// Per thread: the fd of a connect to an estimate port, from the syscall's entry to the
    /// cgroup connect hook inside it, which knows the socket's cookie.
    #[map]
    static CONNECT_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

    /// (tgid << 32 | fd) of sockets connected to an estimate port → socket cookie (filled by
    /// the connect hooks, which are attached when ceilings are configured).
    #[map]
    static SOCK_COOKIES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

    /// Cookies of sockets whose queued bytes must not leave the host (a held, killed or
    /// blocked write on a metered socket) → 1. Written here, released by user space.
    #[map]
    static HELD_SOCKS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

    #[map]
    static SCRATCH: PerCpuArray<TlsDataEvent> = PerCpuArray::with_max_entries(1, 0);

    #[inline(always)]
    fn count(index: u32, n: u64) {
        if let Some(p) = DROPS.get_ptr_mut(index) {
            unsafe { *p += n };
        }
    }

    #[inline(always)]
    fn config(index: u32) -> Option<u32> {
        match CONFIG.get(index) {
            Some(v) if *v != CFG_ABSENT => Some(*v),
            _ => None,
        }
    }

    fn comm() -> [u8; COMM_LEN] {
        bpf_get_current_comm().unwrap_or([0u8; COMM_LEN])
    }

    // ---- process lifecycle -------------------------------------------------------------

    #[tracepoint]
    pub fn task_newtask(ctx: TracePointContext) -> u32 {
        let _ = try_task_newtask(&ctx);
        0
    }

    fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i64> {
        let flags_off = config(CFG_NEWTASK_CLONE_FLAGS_OFF).ok_or(1)?;
        let pid_off = config(CFG_NEWTASK_PID_OFF).ok_or(1)?;
        let flags: u64 = unsafe { ctx.read_at(flags_off as usize) }.map_err(|e| e as i64)?;
        if flags & CLONE_THREAD == 0 {
            return Ok(());
        }
        let pid: i32 = unsafe { ctx.read_at(pid_off as usize) }.map_err(|e| e as i64)?;
        THREAD_CHILDREN.insert(&(pid as u32), &1, 0)?;
        Ok(())
    }

    #[tracepoint]
    pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
        let _ = try_sched_process_fork(&ctx);
        0
    }

    fn try_sched_process_fork(ctx: &TracePointContext) -> Result<(), i64> {
        let child_off = config(CFG_FORK_CHILD_PID_OFF).ok_or(1)?;
        let child: i32 = unsafe { ctx.read_at(child_off as usize) }.map_err(|e| e as i64)?;
        let child = child as u32;
        if unsafe { THREAD_CHILDREN.get(&child) }.is_some() {
            let _ = THREAD_CHILDREN.remove(&child);
            return Ok(());
        }
        // The tracepoint runs in the parent: its tgid is the parent process.
        let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // A child of a gated process is gated from its first instruction: a sub-agent
        // cannot make a call before user space has seen it.
        if let Some(state) = unsafe { GATE.get(&parent_tgid) } {
            let inherited = match *state {
                GATE_KILL | GATE_BLOCKED => *state,
                _ => GATE_ARMED,
            };
            let _ = GATE.insert(&child, &inherited, 0);
            if unsafe { BLOCKED_TGIDS.get(&parent_tgid) }.is_some() {
                let _ = BLOCKED_TGIDS.insert(&child, &1, 0);
            }
        }
        emit_proc(EVENT_FORK, child, parent_tgid, None)
    }

    #[tracepoint]
    pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
        let _ = try_sched_process_exec(&ctx);
        0
    }

    fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let filename_off = config(CFG_EXEC_FILENAME_OFF).ok_or(1)?;
        emit_proc(EVENT_EXEC, tgid, 0, Some((ctx, filename_off)))
    }

    #[tracepoint]
    pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
        let _ = try_sched_process_exit(&ctx);
        0
    }

    fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        match config(CFG_EXIT_GROUP_DEAD_OFF) {
            // The whole thread group is gone only when group_dead is set.
            Some(off) => {
                let dead: u8 = unsafe { ctx.read_at(off as usize) }.map_err(|e| e as i64)?;
                if dead == 0 {
                    return Ok(());
                }
            }
            // Older kernels: the leader's exit stands for the process.
            None => {
                if pid_tgid as u32 != tgid {
                    return Ok(());
                }
            }
        }
        let _ = GATE.remove(&tgid);
        let _ = BLOCKED_TGIDS.remove(&tgid);
        emit_proc(EVENT_EXIT, tgid, 0, None)
    }

    #[inline(always)]
    fn emit_proc(
        kind: u32,
        tgid: u32,
        ppid: u32,
        exec: Option<(&TracePointContext, u32)>,
    ) -> Result<(), i64> {
        let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
            count(DROP_PROC_EVENTS, 1);
            return Err(1);
        };
        let ev = entry.as_mut_ptr();
        unsafe {
            (*ev).kind = kind;
            (*ev).tgid = tgid;
            (*ev).ppid = ppid;
            (*ev)._pad0 = 0;
            (*ev).ts_ns = bpf_ktime_get_boot_ns();
            (*ev).comm = comm();
            (*ev).filename[0] = 0;
            if let Some((ctx, off)) = exec {
                // __data_loc: low 16 bits offset from the record start, high 16 bits length.
                if let Ok(loc) = ctx.read_at::<u32>(off as usize) {
                    let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                    let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
                }
            }
        }
        entry.submit(0);
        Ok(())
    }

    // ---- TLS plaintext -----------------------------------------------------------------

    /// Entry of `SSL_write(ssl, buf, num)`.
    #[uprobe]
    pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
        let _ = try_stash(&ctx, None, true);
        0
    }

    /// Entry of `SSL_write_ex(ssl, buf, num, *written)`.
    #[uprobe]
    pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
        let _ = try_stash(&ctx, Some(3), true);
        0
    }

    /// Entry of OpenSSL 3.3+'s internal `ssl_write_internal(ssl, buf, num, flags, *written)`
    /// (located by analysis in static builds, where `SSL_write_ex` has no symbol).
    #[uprobe]
    pub fn ssl_write_flags_enter(ctx: ProbeContext) -> u32 {
        let _ = try_stash(&ctx, Some(4), true);
        0
    }

    /// Entry of `SSL_read(ssl, buf, num)`.
    #[uprobe]
    pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
        let _ = try_stash(&ctx, None, false);
        0
    }

    /// Entry of `SSL_read_ex(ssl, buf, num, *readbytes)`.
    #[uprobe]
    pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
        let _ = try_stash(&ctx, Some(3), false);
        0
    }

    /// Entry of aws-lc's `EVP_AEAD_CTX_seal(ctx, out, *out_len, max_out, nonce, nonce_len, in,
    /// in_len, ad, ad_len)`: `in`/`in_len` are the first two stack arguments.
    #[uprobe]
    pub fn aead_seal_enter(ctx: ProbeContext) -> u32 {
        let _ = try_aead_seal(&ctx);
        0
    }

    fn try_aead_seal(ctx: &ProbeContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let aead: u64 = ctx.arg(0).ok_or(1)?;
        // At entry the stack pointer holds the return address; stack arguments follow it.
        let sp = unsafe { (*ctx.regs).rsp };
        let buf: u64 =
            unsafe { bpf_probe_read_user((sp + 8) as *const u64) }.map_err(|e| e as i64)?;
        let len: u64 =
            unsafe { bpf_probe_read_user((sp + 16) as *const u64) }.map_err(|e| e as i64)?;
        let _ = AEAD_TGIDS.insert(&tgid, &1, 0);
        let _ = gate(pid_tgid, aead, buf, len, HOLD_TLS_RECORD);
        let _ = AEAD_SEALED.insert(&pid_tgid, &aead, 0);
        let args = SslArgs {
            ssl: aead,
            buf,
            out_len: 0,
        };
        emit_tls_flagged(pid_tgid, DIR_WRITE, &args, len, TLS_FLAG_AEAD)
    }

    /// Entry of `EVP_AEAD_CTX_open(ctx, out, *out_len, …)`: the plaintext is in `out` on return.
    #[uprobe]
    pub fn aead_open_enter(ctx: ProbeContext) -> u32 {
        let _ = try_aead_open(&ctx);
        0
    }

    fn try_aead_open(ctx: &ProbeContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let _ = AEAD_TGIDS.insert(&tgid, &1, 0);
        let args = SslArgs {
            ssl: ctx.arg(0).ok_or(1)?,
            buf: ctx.arg(1).ok_or(1)?,
            out_len: ctx.arg(2).ok_or(1)?,
        };
        if SSL_ARGS.insert(&pid_tgid, &args, 0).is_err() {
            count(DROP_ARGS_MAP_FULL, 1);
        }
        Ok(())
    }

    #[uretprobe]
    pub fn aead_open_exit(ctx: RetProbeContext) -> u32 {
        let _ = try_aead_open_exit(&ctx);
        0
    }

    fn try_aead_open_exit(ctx: &RetProbeContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let args = match unsafe { SSL_ARGS.get(&pid_tgid) } {
            Some(a) => *a,
            None => return Ok(()),
        };
        let _ = SSL_ARGS.remove(&pid_tgid);
        if ctx.ret::<i64>() as i32 != 1 {
            return Ok(());
        }
        let len: u64 =
            unsafe { bpf_probe_read_user(args.out_len as *const u64) }.map_err(|e| e as i64)?;
        if let Some(fd) = unsafe { AEAD_LAST_READ.get(&pid_tgid) } {
            emit_aead_link(pid_tgid, DIR_READ, args.ssl, *fd);
        }
        // As after an SSL read: a granted process that reads may write a new request next.
        let tgid = (pid_tgid >> 32) as u32;
        if let Some(state) = unsafe { GATE.get(&tgid) }
            && *state == GATE_GRANTED
        {
            let _ = GATE.insert(&tgid, &GATE_ARMED, 0);
        }
        emit_tls_flagged(pid_tgid, DIR_READ, &args, len, TLS_FLAG_AEAD)
    }

    /// Socket syscalls of AEAD processes: a write after a seal links the sealing context to
    /// the fd; a read is remembered for the next open. Other processes pay one lookup.
    #[inline(always)]
    fn aead_syscall(ctx: &TracePointContext, pid_tgid: u64, fd: u64) {
        if unsafe { AEAD_TGIDS.get(&((pid_tgid >> 32) as u32)) }.is_none() {
            return;
        }
        let Ok(nr) = (unsafe { ctx.read_at::<u32>(SYSCALL_NR_OFF) }) else {
            return;
        };
        // x86-64: read 0, readv 19, recvfrom 45, recvmsg 47; the rest here are writes.
        if matches!(nr, 0 | 19 | 45 | 47) {
            let _ = AEAD_LAST_READ.insert(&pid_tgid, &fd, 0);
        } else if let Some(aead) = unsafe { AEAD_SEALED.get(&pid_tgid) } {
            let aead = *aead;
            let _ = AEAD_SEALED.remove(&pid_tgid);
            emit_aead_link(pid_tgid, DIR_WRITE, aead, fd);
        }
    }

    #[inline(always)]
    fn emit_aead_link(pid_tgid: u64, direction: u32, aead: u64, fd: u64) {
        let header = TlsDataHeader {
            kind: EVENT_AEAD_LINK,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            direction,
            flags: 0,
            len: 0,
            ssl: aead,
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
            call_len: 0,
            offset: fd,
        };
        if EVENTS.output::<TlsDataHeader>(&header, 0).is_err() {
            count(DROP_RINGBUF_EVENTS, 1);
        }
    }

    /// Entry of `SSL_do_handshake(ssl)` (also reached from `SSL_connect`/`SSL_accept`).
    #[uprobe]
    pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
        let _ = try_handshake(&ctx);
        0
    }

    fn try_handshake(ctx: &ProbeContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let ssl: u64 = ctx.arg(0).ok_or(1)?;
        new_connection(pid_tgid, ssl);
        Ok(())
    }

    /// A new connection on `ssl` (a handshake, or a connect on a reused fd): its state restarts.
    #[inline(always)]
    fn new_connection(pid_tgid: u64, ssl: u64) {
        let tgid = (pid_tgid >> 32) as u32;
        for direction in [DIR_WRITE, DIR_READ] {
            let _ = LOSS.remove(&ConnKey {
                tgid,
                direction,
                ssl,
            });
        }
        let header = TlsDataHeader {
            kind: EVENT_TLS_HANDSHAKE,
            tgid,
            tid: pid_tgid as u32,
            direction: 0,
            flags: 0,
            len: 0,
            ssl,
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
            call_len: 0,
            offset: 0,
        };
        if EVENTS.output::<TlsDataHeader>(&header, 0).is_err() {
            count(DROP_RINGBUF_EVENTS, 1);
        }
    }

    // ---- plain HTTP to local model servers (syscall tracepoints) -------------------------

    #[tracepoint]
    pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
        let _ = try_connect(&ctx);
        0
    }

    /// A TCP connect to a watched port marks the socket; everything else costs one read.
    fn try_connect(ctx: &TracePointContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let fd: u64 = unsafe { ctx.read_at(SYSCALL_ARG0_OFF) }.map_err(|e| e as i64)?;
        let addr: u64 = unsafe { ctx.read_at(SYSCALL_ARG1_OFF) }.map_err(|e| e as i64)?;
        // sockaddr_in / sockaddr_in6: family, then the port in network order.
        let family: u16 =
            unsafe { bpf_probe_read_user(addr as *const u16) }.map_err(|e| e as i64)?;
        if family != 2 && family != 10 {
            return Ok(());
        }
        let port: u16 =
            unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.map_err(|e| e as i64)?;
        let port = u16::from_be(port);
        let fd = fd & 0xffff_ffff;
        if unsafe { PLAIN_PORTS.get(&port) }.is_none() {
            if unsafe { ESTIMATE_PORTS.get(&port) }.is_some() {
                let _ = TLS_SOCKS.insert(&(((tgid as u64) << 32) | fd), &SOCK_CONNECTED, 0);
                let _ = CONNECT_FDS.insert(&pid_tgid, &fd, 0);
            }
            return Ok(());
        }
        PLAIN_FDS.insert(&(((tgid as u64) << 32) | fd), &1, 0)?;
        new_connection(pid_tgid, PLAIN_CONN | fd);
        Ok(())
    }

    #[tracepoint]
    pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
        if let Ok(fd) = unsafe { ctx.read_at::<u64>(SYSCALL_ARG0_OFF) } {
            let pid_tgid = bpf_get_current_pid_tgid();
            let key = (pid_tgid & 0xffff_ffff_0000_0000) | (fd & 0xffff_ffff);
            let _ = PLAIN_FDS.remove(&key);
            if let Some(state) = unsafe { TLS_SOCKS.get(&key) } {
                if *state == SOCK_METERED {
                    emit_socket(pid_tgid, EVENT_SOCKET_CLOSE, 0, fd & 0xffff_ffff, 0);
                }
                let _ = TLS_SOCKS.remove(&key);
                let _ = SOCK_COOKIES.remove(&key);
            }
        }
        0
    }

    /// A header-only record about a metered socket.
    #[inline(always)]
    fn emit_socket(pid_tgid: u64, kind: u32, direction: u32, fd: u64, len: u32) {
        let header = TlsDataHeader {
            kind,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            direction,
            flags: 0,
            len,
            ssl: fd,
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
            call_len: 0,
            offset: 0,
        };
        if EVENTS.output::<TlsDataHeader>(&header, 0).is_err() {
            count(DROP_RINGBUF_EVENTS, 1);
        }
    }

    /// Read/write syscalls on sockets connected to an estimate port: the first write's bytes
    /// (a ClientHello) go to user space once; a metered socket's calls are measured at exit.
    /// `data` is where the written bytes are (the buffer, or the first iovec's).
    #[inline(always)]
    fn meter_enter(ctx: &TracePointContext, pid_tgid: u64, fd: u64, data: Option<(u64, u64)>) {
        let key = (pid_tgid & 0xffff_ffff_0000_0000) | fd;
        let Some(state) = (unsafe { TLS_SOCKS.get(&key) }) else {
            return;
        };
        let state = *state;
        let Ok(nr) = (unsafe { ctx.read_at::<u32>(SYSCALL_NR_OFF) }) else {
            return;
        };
        // x86-64: write 1, writev 20, sendto 44, sendmsg 46.
        let write = matches!(nr, 1 | 20 | 44 | 46);
        if state == SOCK_METERED {
            let direction = if write { DIR_WRITE } else { DIR_READ };
            if write {
                socket_gate(pid_tgid, key, fd, data.map_or(0, |(_, len)| len));
            }
            if METER_ARGS
                .insert(&pid_tgid, &(fd | ((direction as u64) << 32)), 0)
                .is_err()
            {
                count(DROP_ARGS_MAP_FULL, 1);
            }
        } else if state == SOCK_CONNECTED
            && write
            && let Some((buf, len)) = data
        {
            let _ = TLS_SOCKS.insert(&key, &SOCK_HELLO_SENT, 0);
            emit_hello(pid_tgid, fd, buf, len);
        }
    }

    #[inline(always)]
    fn emit_hello(pid_tgid: u64, fd: u64, buf: u64, len: u64) {
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let n = if len > HELLO_BYTES as u64 {
            HELLO_BYTES as u32
        } else {
            len as u32
        };
        let n = n & (2 * HELLO_BYTES as u32 - 1);
        unsafe {
            let h = &mut (*scratch).header;
            h.kind = EVENT_TLS_HELLO;
            h.tgid = (pid_tgid >> 32) as u32;
            h.tid = pid_tgid as u32;
            h.direction = DIR_WRITE;
            h.flags = 0;
            h.ssl = fd;
            h.ts_ns = bpf_ktime_get_boot_ns();
            h.call_len = len;
            h.offset = 0;
            h.len = 0;
            if n > 0 {
                let dst = (*scratch).data.as_mut_ptr() as *mut core::ffi::c_void;
                if generated::bpf_probe_read_user(dst, n, buf as *const core::ffi::c_void) == 0 {
                    h.len = n;
                }
            }
            let total = TLS_HEADER_LEN + (h.len as usize & (2 * HELLO_BYTES - 1));
            let record = core::slice::from_raw_parts(scratch as *const u8, total);
            if EVENTS.output::<[u8]>(record, 0).is_err() {
                count(DROP_RINGBUF_EVENTS, 1);
            }
        }
    }

    /// The pre-commit gate for sockets no hook covers: a gated process's write on a metered
    /// socket cannot be stopped before it runs (the signal comes on the syscall's return), so
    /// the socket goes into `HELD_SOCKS` first and the egress program keeps whatever the
    /// write queues inside the host until user space decides.
    #[inline(always)]
    fn socket_gate(pid_tgid: u64, key: u64, fd: u64, len: u64) {
        let tgid = (pid_tgid >> 32) as u32;
        let state = match unsafe { GATE.get(&tgid) } {
            Some(s) => *s,
            None if config(CFG_HOST_GATE) == Some(1) => GATE_ARMED,
            None => return,
        };
        if state == GATE_GRANTED {
            return;
        }
        let mut cookie = match unsafe { SOCK_COOKIES.get(&key) } {
            Some(c) => *c,
            None => 0,
        };
        if cookie != 0 && HELD_SOCKS.insert(&cookie, &1, 0).is_err() {
            cookie = 0;
        }
        // A session being killed is stopped too, not killed here: its death would close the
        // socket and TCP would send what the write queued once the hold ends. User space
        // aborts the socket (an RST discards the queue) and then kills it.
        if state == GATE_ARMED {
            let _ = GATE.insert(&tgid, &GATE_HELD, 0);
        }
        unsafe {
            generated::bpf_send_signal(SIGSTOP);
        }
        let hold = SocketHold {
            header: TlsDataHeader {
                kind: EVENT_GATE_HOLD,
                tgid,
                tid: pid_tgid as u32,
                direction: DIR_WRITE,
                flags: state,
                len: 0,
                ssl: fd,
                ts_ns: unsafe { bpf_ktime_get_boot_ns() },
                call_len: len,
                offset: HOLD_SOCKET,
            },
            cookie,
        };
        if EVENTS.output::<SocketHold>(&hold, 0).is_err() {
            count(DROP_RINGBUF_EVENTS, 1);
        }
    }

    /// Exit of a read/write syscall of a metered socket: its byte count.
    #[inline(always)]
    fn meter_exit(ctx: &TracePointContext, pid_tgid: u64) {
        let Some(args) = (unsafe { METER_ARGS.get(&pid_tgid) }) else {
            return;
        };
        let args = *args;
        let _ = METER_ARGS.remove(&pid_tgid);
        let Ok(ret) = (unsafe { ctx.read_at::<i64>(SYSCALL_RET_OFF) }) else {
            return;
        };
        if ret > 0 {
            let len = if ret > u32::MAX as i64 {
                u32::MAX
            } else {
                ret as u32
            };
            if (args >> 32) as u32 == DIR_READ {
                // As after an SSL read: a granted process that reads may write a new request.
                let tgid = (pid_tgid >> 32) as u32;
                if let Some(state) = unsafe { GATE.get(&tgid) }
                    && *state == GATE_GRANTED
                {
                    let _ = GATE.insert(&tgid, &GATE_ARMED, 0);
                }
            }
            emit_socket(
                pid_tgid,
                EVENT_SOCKET_BYTES,
                (args >> 32) as u32,
                args & 0xffff_ffff,
                len,
            );
        }
    }

    /// Entry of write/sendto/read/recvfrom (fd, buf, …): keeps the arguments of watched sockets.
    #[tracepoint]
    pub fn sys_enter_plain_io(ctx: TracePointContext) -> u32 {
        let _ = try_plain_stash(&ctx);
        0
    }

    fn try_plain_stash(ctx: &TracePointContext) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let fd: u64 = unsafe { ctx.read_at(SYSCALL_ARG0_OFF) }.map_err(|e| e as i64)?;
        let fd = fd & 0xffff_ffff;
        aead_syscall(ctx, pid_tgid, fd);
        let key = (pid_tgid & 0xffff_ffff_0000_0000) | fd;
        if unsafe { PLAIN_FDS.get(&key) }.is_none() {
            if let Ok(buf) = unsafe { ctx.read_at::<u64>(SYSCALL_ARG1_OFF) }
                && let Ok(len) = unsafe { ctx.read_at::<u64>(SYSCALL_ARG2_OFF) }
            {
                meter_enter(ctx, pid_tgid, fd, Some((buf, len)));
            }
            return Ok(());
        }
        let buf: u64 = unsafe { ctx.read_at(SYSCALL_ARG1_OFF) }.map_err(|e| e as i64)?;
        let args = SslArgs {
            ssl: PLAIN_CONN | fd,
            buf,
            out_len: 0,
        };
        if PLAIN_ARGS.insert(&pid_tgid, &args, 0).is_err() {
            count(DROP_ARGS_MAP_FULL, 1);
        }
        Ok(())
    }

    #[tracepoint]
    pub fn sys_exit_plain_write(ctx: TracePointContext) -> u32 {
        let _ = try_plain_exit(&ctx, DIR_WRITE);
        0
    }

    #[tracepoint]
    pub fn sys_exit_plain_read(ctx: TracePointContext) -> u32 {
        let _ = try_plain_exit(&ctx, DIR_READ);
        0
    }

    fn try_plain_exit(ctx: &TracePointContext, direction: u32) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        meter_exit(ctx, pid_tgid);
        let args = match unsafe { PLAIN_ARGS.get(&pid_tgid) } {
            Some(a) => *a,
            None => return Ok(()),
        };
        let _ = PLAIN_ARGS.remove(&pid_tgid);
        let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET_OFF) }.map_err(|e| e as i64)?;
        if ret <= 0 {
            return Ok(());
        }
        emit_tls(pid_tgid, direction, &args, ret as u64)
    }

    /// Entry of sendmsg/recvmsg (fd, struct user_msghdr *, flags).
    #[tracepoint]
    pub fn sys_enter_plain_msg(ctx: TracePointContext) -> u32 {
        let _ = try_plain_iov_stash(&ctx, true);
        0
    }

    /// Entry of writev/readv (fd, const struct iovec *, iovcnt).
    #[tracepoint]
    pub fn sys_enter_plain_vec(ctx: TracePointContext) -> u32 {
        let _ = try_plain_iov_stash(&ctx, false);
        0
    }

    /// (base, len) of the first iovec of a writev/sendmsg-shaped call.
    #[inline(always)]
    fn first_iovec(ctx: &TracePointContext, msghdr: bool) -> Option<(u64, u64)> {
        let arg1: u64 = unsafe { ctx.read_at(SYSCALL_ARG1_OFF) }.ok()?;
        let iov = if msghdr {
            unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) }.ok()?
        } else {
            arg1
        };
        let base: u64 = unsafe { bpf_probe_read_user(iov as *const u64) }.ok()?;
        let len: u64 = unsafe { bpf_probe_read_user((iov + 8) as *const u64) }.ok()?;
        Some((base, len))
    }

    fn try_plain_iov_stash(ctx: &TracePointContext, msghdr: bool) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let fd: u64 = unsafe { ctx.read_at(SYSCALL_ARG0_OFF) }.map_err(|e| e as i64)?;
        let fd = fd & 0xffff_ffff;
        aead_syscall(ctx, pid_tgid, fd);
        // The socket filter first: other processes pay one lookup.
        if unsafe { PLAIN_FDS.get(&((pid_tgid & 0xffff_ffff_0000_0000) | fd)) }.is_none() {
            meter_enter(ctx, pid_tgid, fd, first_iovec(ctx, msghdr));
            return Ok(());
        }
        let arg1: u64 = unsafe { ctx.read_at(SYSCALL_ARG1_OFF) }.map_err(|e| e as i64)?;
        let (iov, iovcnt) = if msghdr {
            // struct user_msghdr: msg_name, msg_namelen (+pad), msg_iov at 16, msg_iovlen at 24.
            let iov: u64 =
                unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) }.map_err(|e| e as i64)?;
            let iovcnt: u64 =
                unsafe { bpf_probe_read_user((arg1 + 24) as *const u64) }.map_err(|e| e as i64)?;
            (iov, iovcnt)
        } else {
            let iovcnt: u64 = unsafe { ctx.read_at(SYSCALL_ARG2_OFF) }.map_err(|e| e as i64)?;
            (arg1, iovcnt & 0xffff_ffff)
        };
        let args = SslArgs {
            ssl: PLAIN_CONN | fd,
            buf: iov,
            out_len: iovcnt,
        };
        if PLAIN_IOV_ARGS.insert(&pid_tgid, &args, 0).is_err() {
            count(DROP_ARGS_MAP_FULL, 1);
        }
        Ok(())
    }

    #[tracepoint]
    pub fn sys_exit_plain_vec_write(ctx: TracePointContext) -> u32 {
        let _ = try_plain_iov_exit(&ctx, DIR_WRITE);
        0
    }

    #[tracepoint]
    pub fn sys_exit_plain_vec_read(ctx: TracePointContext) -> u32 {
        let _ = try_plain_iov_exit(&ctx, DIR_READ);
        0
    }

    /// Emits the bytes the call moved, iovec by iovec in order, from at most `MAX_IOVECS`.
    fn try_plain_iov_exit(ctx: &TracePointContext, direction: u32) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        meter_exit(ctx, pid_tgid);
        let args = match unsafe { PLAIN_IOV_ARGS.get(&pid_tgid) } {
            Some(a) => *a,
            None => return Ok(()),
        };
        let _ = PLAIN_IOV_ARGS.remove(&pid_tgid);
        let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET_OFF) }.map_err(|e| e as i64)?;
        if ret <= 0 {
            return Ok(());
        }
        let mut left = ret as u64;
        for i in 0..MAX_IOVECS as u64 {
            if i >= args.out_len || left == 0 {
                break;
            }
            // struct iovec { void *iov_base; size_t iov_len; }
            let at = args.buf + i * 16;
            let base: u64 =
                unsafe { bpf_probe_read_user(at as *const u64) }.map_err(|e| e as i64)?;
            let len: u64 =
                unsafe { bpf_probe_read_user((at + 8) as *const u64) }.map_err(|e| e as i64)?;
            let n = if len < left { len } else { left };
            if n > 0 {
                let part = SslArgs {
                    ssl: args.ssl,
                    buf: base,
                    out_len: 0,
                };
                emit_tls(pid_tgid, direction, &part, n)?;
            }
            left -= n;
        }
        if left > 0 {
            count(DROP_IOV_BYTES, left);
            let _ = LOSS.insert(
                &ConnKey {
                    tgid: (pid_tgid >> 32) as u32,
                    direction,
                    ssl: args.ssl,
                },
                &1,
                0,
            );
        }
        Ok(())
    }

    #[uretprobe]
    pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
        let _ = try_ssl_exit(&ctx, DIR_WRITE);
        0
    }

    #[uretprobe]
    pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
        let _ = try_ssl_exit(&ctx, DIR_READ);
        0
    }

    // ---- Go crypto/tls (statically linked Go binaries, register ABI) ---------------------
    // Go's amd64 ABIInternal: receiver and arguments in RAX, RBX, RCX, RDI, …; results in RAX,
    // RBX, …; the current goroutine `g` in R14. No uretprobes (they corrupt goroutine stacks,
    // which move): user space attaches `*_return` at each RET instruction of the function.

    /// Entry of `crypto/tls.(*Conn).Write(b []byte)`: RAX = *Conn, RBX = b.ptr, RCX = b.len.
    #[uprobe]
    pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
        let _ = try_go_stash(&ctx, DIR_WRITE);
        0
    }

    /// Entry of `crypto/tls.(*Conn).Read(b []byte)`.
    #[uprobe]
    pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
        let _ = try_go_stash(&ctx, DIR_READ);
        0
    }

    /// A RET of `(*Conn).Write`: RAX = n.
    #[uprobe]
    pub fn go_tls_write_return(ctx: ProbeContext) -> u32 {
        let _ = try_go_return(&ctx, DIR_WRITE);
        0
    }

    /// A RET of `(*Conn).Read`: RAX = n.
    #[uprobe]
    pub fn go_tls_read_return(ctx: ProbeContext) -> u32 {
        let _ = try_go_return(&ctx, DIR_READ);
        0
    }

    /// Entry of `(*Conn).clientHandshake` / `serverHandshake` (once per connection, unlike
    /// `Handshake`, which every Write and Read calls): the *Conn address starts fresh.
    #[uprobe]
    pub fn go_tls_handshake_enter(ctx: ProbeContext) -> u32 {
        let pid_tgid = bpf_get_current_pid_tgid();
        if config(CFG_SELF_TGID) != Some((pid_tgid >> 32) as u32) {
            let conn = unsafe { (*ctx.regs).rax };
            new_connection(pid_tgid, conn as u64);
        }
        0
    }

    #[inline(always)]
    fn try_go_stash(ctx: &ProbeContext, direction: u32) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let (conn, buf, len, g) = unsafe {
            let r = &*ctx.regs;
            (r.rax as u64, r.rbx as u64, r.rcx as u64, r.r14 as u64)
        };
        let mut emitted = 0;
        // A Write's bytes are emitted at its entry, before they leave: Go reads responses on
        // another goroutine (often another thread), whose Read can return before the writer
        // reaches its RET, and the request must precede its response in the ring buffer. A
        // write held by the gate is emitted at its RET instead (it may never be sent).
        if direction == DIR_WRITE && !gate(pid_tgid, conn, buf, len, 0) {
            let args = SslArgs {
                ssl: conn,
                buf,
                out_len: 0,
            };
            if len > 0 {
                emit_tls(pid_tgid, DIR_WRITE, &args, len)?;
            }
            emitted = 1;
        }
        let key = GoKey { tgid, direction, g };
        let args = GoArgs {
            conn,
            buf,
            len,
            emitted,
            _pad: 0,
        };
        if GO_ARGS.insert(&key, &args, 0).is_err() {
            count(DROP_ARGS_MAP_FULL, 1);
            if emitted == 1 {
                // Its RET cannot check what was sent: the stream must resynchronise.
                let _ = LOSS.insert(
                    &ConnKey {
                        tgid,
                        direction,
                        ssl: conn,
                    },
                    &1,
                    0,
                );
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn try_go_return(ctx: &ProbeContext, direction: u32) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        let (n, g) = unsafe {
            let r = &*ctx.regs;
            (r.rax as i64, r.r14 as u64)
        };
        let key = GoKey { tgid, direction, g };
        let args = match unsafe { GO_ARGS.get(&key) } {
            Some(a) => *a,
            None => return Ok(()),
        };
        let _ = GO_ARGS.remove(&key);
        if args.emitted == 1 {
            // Fewer bytes sent than emitted at entry (a write error: the connection is
            // broken): what follows must not be joined to them.
            if (n as u64) < args.len {
                let _ = LOSS.insert(
                    &ConnKey {
                        tgid,
                        direction,
                        ssl: args.conn,
                    },
                    &1,
                    0,
                );
            }
            return Ok(());
        }
        if n <= 0 {
            return Ok(());
        }
        if direction == DIR_READ
            && let Some(state) = unsafe { GATE.get(&tgid) }
            && *state == GATE_GRANTED
        {
            let _ = GATE.insert(&tgid, &GATE_ARMED, 0);
        }
        let args = SslArgs {
            ssl: args.conn,
            buf: args.buf,
            out_len: 0,
        };
        emit_tls(pid_tgid, direction, &args, n as u64)
    }

    /// `out_len_arg`: the argument holding `size_t *written` / `*readbytes` (the `_ex`
    /// calls, which return 1), or none (the count is the return value).
    #[inline(always)]
    fn try_stash(ctx: &ProbeContext, out_len_arg: Option<usize>, write: bool) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        if config(CFG_SELF_TGID) == Some(tgid) {
            return Ok(());
        }
        let ssl: u64 = ctx.arg(0).ok_or(1)?;
        let buf: u64 = ctx.arg(1).ok_or(1)?;
        let out_len: u64 = match out_len_arg {
            Some(n) => ctx.arg(n).ok_or(1)?,
            None => 0,
        };
        if write {
            let num: u64 = ctx.arg(2).ok_or(1)?;
            let _ = gate(pid_tgid, ssl, buf, num, 0);
        }
        let args = SslArgs { ssl, buf, out_len };
        if SSL_ARGS.insert(&pid_tgid, &args, 0).is_err() {
            count(DROP_ARGS_MAP_FULL, 1);
        }
        Ok(())
    }

    /// The pre-commit gate: a gated process's write is stopped here, before the library
    /// writes a byte (the signal is delivered on the return to user mode). Returns true when
    /// the write was stopped or killed.
    #[inline(always)]
    fn gate(pid_tgid: u64, ssl: u64, buf: u64, num: u64, hold_flags: u64) -> bool {
        let tgid = (pid_tgid >> 32) as u32;
        let state = match unsafe { GATE.get(&tgid) } {
            Some(s) => *s,
            None if config(CFG_HOST_GATE) == Some(1) => GATE_ARMED,
            None => return false,
        };
        match state {
            GATE_GRANTED => false,
            GATE_KILL => {
                unsafe {
                    generated::bpf_send_signal(SIGKILL);
                }
                true
            }
            _ => {
                if state == GATE_ARMED {
                    let _ = GATE.insert(&tgid, &GATE_HELD, 0);
                }
                // The stop is generated before the record can be read: a SIGCONT sent after
                // the decision then either cancels the pending stop or continues the stopped
                // process. (Emitting first let a fast decision's SIGCONT precede the SIGSTOP
                // and leave the process stopped for good.)
                unsafe {
                    generated::bpf_send_signal(SIGSTOP);
                }
                emit_hold(pid_tgid, state, ssl, buf, num, hold_flags);
                true
            }
        }
    }

    #[inline(always)]
    fn emit_hold(pid_tgid: u64, state: u32, ssl: u64, buf: u64, num: u64, hold_flags: u64) {
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            return;
        };
        let mut n = num;
        if n > GATE_PREVIEW as u64 {
            n = GATE_PREVIEW as u64;
        }
        let n = (n as u32) & (2 * GATE_PREVIEW as u32 - 1);
        unsafe {
            let h = &mut (*scratch).header;
            h.kind = EVENT_GATE_HOLD;
            h.tgid = (pid_tgid >> 32) as u32;
            h.tid = pid_tgid as u32;
            h.direction = DIR_WRITE;
            // The gate state the write found.
            h.flags = state;
            h.ssl = ssl;
            h.ts_ns = bpf_ktime_get_boot_ns();
            h.call_len = num;
            h.offset = hold_flags;
            h.len = 0;
            if n > 0 {
                let dst = (*scratch).data.as_mut_ptr() as *mut core::ffi::c_void;
                if generated::bpf_probe_read_user(dst, n, buf as *const core::ffi::c_void) == 0 {
                    h.len = n;
                }
            }
            let total = TLS_HEADER_LEN + (h.len as usize & (2 * GATE_PREVIEW - 1));
            let record = core::slice::from_raw_parts(scratch as *const u8, total);
            if EVENTS.output::<[u8]>(record, 0).is_err() {
                count(DROP_RINGBUF_EVENTS, 1);
            }
        }
    }

    #[inline(always)]
    fn try_ssl_exit(ctx: &RetProbeContext, direction: u32) -> Result<(), i64> {
        let pid_tgid = bpf_get_current_pid_tgid();
        let args = match unsafe { SSL_ARGS.get(&pid_tgid) } {
            Some(a) => *a,
            None => return Ok(()),
        };
        let _ = SSL_ARGS.remove(&pid_tgid);
        let ret: i64 = ctx.ret::<i64>();
        let ret = ret as i32;
        // Only bytes of successful calls count: a call that fails (e.g. before the
        // handshake) is retried by the library with the same buffer.
        let len: u64 = if args.out_len != 0 {
            if ret != 1 {
                return Ok(());
            }
            unsafe { bpf_probe_read_user(args.out_len as *const u64) }.map_err(|e| e as i64)?
        } else {
            if ret <= 0 {
                return Ok(());
            }
            ret as u64
        };
        if direction == DIR_READ {
            // A granted process that reads (a response) may write a new request next.
            let tgid = (pid_tgid >> 32) as u32;
            if let Some(state) = unsafe { GATE.get(&tgid) }
                && *state == GATE_GRANTED
            {
                let _ = GATE.insert(&tgid, &GATE_ARMED, 0);
            }
        }
        emit_tls(pid_tgid, direction, &args, len)
    }

    #[inline(always)]
    fn emit_tls(pid_tgid: u64, direction: u32, args: &SslArgs, len: u64) -> Result<(), i64> {
        emit_tls_flagged(pid_tgid, direction, args, len, 0)
    }

    /// `emit_tls` with `extra` flags on every chunk (`TLS_FLAG_AEAD`).
    #[inline(always)]
    fn emit_tls_flagged(
        pid_tgid: u64,
        direction: u32,
        args: &SslArgs,
        len: u64,
        extra: u32,
    ) -> Result<(), i64> {
        let tgid = (pid_tgid >> 32) as u32;
        let key = ConnKey {
            tgid,
            direction,
            ssl: args.ssl,
        };
        let mut flags = 0u32;
        if unsafe { LOSS.get(&key) }.is_some() {
            flags |= TLS_FLAG_LOSS_BEFORE;
            let _ = LOSS.remove(&key);
        }
        let scratch = SCRATCH.get_ptr_mut(0).ok_or(1)?;
        let chunk = Chunk {
            scratch,
            key: &key,
            pid_tgid,
            buf: args.buf,
            call_len: len,
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        };
        // Full chunks have a constant size and the remainder is masked, so the verifier
        // sees a loop whose iterations do not branch into each other (linear, not 2^n).
        let full = len / DATA_CHUNK as u64;
        for i in 0..MAX_CHUNKS as u64 {
            if i >= full {
                break;
            }
            chunk.emit(i * DATA_CHUNK as u64, DATA_CHUNK as u32, flags | extra)?;
            flags = 0;
        }
        if full < MAX_CHUNKS as u64 {
            let rem = (len & (DATA_CHUNK as u64 - 1)) as u32;
            if rem > 0 {
                chunk.emit(full * DATA_CHUNK as u64, rem, flags | extra)?;
            }
        } else {
            let copied = MAX_CHUNKS as u64 * DATA_CHUNK as u64;
            if len > copied {
                // Over MAX_CHUNKS: the rest is not copied; the stream must resynchronise.
                count(DROP_TRUNCATED_BYTES, len - copied);
                let _ = LOSS.insert(&key, &1, 0);
            }
        }
        Ok(())
    }

    struct Chunk<'a> {
        scratch: *mut TlsDataEvent,
        key: &'a ConnKey,
        pid_tgid: u64,
        buf: u64,
        call_len: u64,
        ts_ns: u64,
    }

    impl Chunk<'_> {
        /// Copies `n` (1..=DATA_CHUNK) bytes at `offset` of the SSL buffer into one record.
        #[inline(always)]
        fn emit(&self, offset: u64, n: u32, flags: u32) -> Result<(), i64> {
            if n == 0 || n as usize > DATA_CHUNK {
                return Err(1);
            }
            unsafe {
                let h = &mut (*self.scratch).header;
                h.kind = EVENT_TLS_DATA;
                h.tgid = self.key.tgid;
                h.tid = self.pid_tgid as u32;
                h.direction = self.key.direction;
                h.flags = flags;
                h.len = n;
                h.ssl = self.key.ssl;
                h.ts_ns = self.ts_ns;
                h.call_len = self.call_len;
                h.offset = offset;
                let dst = (*self.scratch).data.as_mut_ptr() as *mut core::ffi::c_void;
                let src = (self.buf + offset) as *const core::ffi::c_void;
                if generated::bpf_probe_read_user(dst, n, src) != 0 {
                    count(DROP_READ_FAILED_BYTES, self.call_len - offset);
                    let _ = LOSS.insert(self.key, &1, 0);
                    return Err(1);
                }
                let total = TLS_HEADER_LEN + n as usize;
                let record = core::slice::from_raw_parts(self.scratch as *const u8, total);
                if EVENTS.output::<[u8]>(record, 0).is_err() {
                    count(DROP_RINGBUF_EVENTS, 1);
                    count(DROP_RINGBUF_BYTES, self.call_len - offset);
                    let _ = LOSS.insert(self.key, &1, 0);
                    return Err(1);
                }
            }
            Ok(())
        }
    }

    // ---- block: refuse new connections to LLM endpoints ---------------------------------
    // Attached at the cgroup v2 root (every process runs them on connect; one hash lookup
    // for processes that are not blocked). Returning 0 makes connect() fail with EPERM.

    /// Inside a connect that `sys_enter_connect` saw to an estimate port: the socket's cookie,
    /// which names it in the egress program.
    #[inline(always)]
    fn link_cookie(ctx: &SockAddrContext) {
        let pid_tgid = bpf_get_current_pid_tgid();
        let Some(fd) = (unsafe { CONNECT_FDS.get(&pid_tgid) }) else {
            return;
        };
        let fd = *fd;
        let _ = CONNECT_FDS.remove(&pid_tgid);
        let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
        let key = (pid_tgid & 0xffff_ffff_0000_0000) | fd;
        let _ = SOCK_COOKIES.insert(&key, &cookie, 0);
    }

    #[cgroup_sock_addr(connect4)]
    pub fn block_connect4(ctx: SockAddrContext) -> i32 {
        link_cookie(&ctx);
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if unsafe { BLOCKED_TGIDS.get(&tgid) }.is_none() {
            return 1;
        }
        let dest = unsafe {
            let sa = ctx.sock_addr;
            Dest4 {
                ip: core::ptr::read_volatile(&(*sa).user_ip4),
                port: core::ptr::read_volatile(&(*sa).user_port),
            }
        };
        if unsafe { BLOCKED_DEST4.get(&dest) }.is_some() {
            0
        } else {
            1
        }
    }

    #[cgroup_sock_addr(connect6)]
    pub fn block_connect6(ctx: SockAddrContext) -> i32 {
        link_cookie(&ctx);
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if unsafe { BLOCKED_TGIDS.get(&tgid) }.is_none() {
            return 1;
        }
        // The context allows only 4-byte loads of user_ip6: read word by word.
        let dest = unsafe {
            let sa = ctx.sock_addr;
            Dest6 {
                ip: [
                    core::ptr::read_volatile(&(*sa).user_ip6[0]),
                    core::ptr::read_volatile(&(*sa).user_ip6[1]),
                    core::ptr::read_volatile(&(*sa).user_ip6[2]),
                    core::ptr::read_volatile(&(*sa).user_ip6[3]),
                ],
                port: core::ptr::read_volatile(&(*sa).user_port),
            }
        };
        if unsafe { BLOCKED_DEST6.get(&dest) }.is_some() {
            0
        } else {
            1
        }
    }

    /// Egress of every socket (attached at the cgroup v2 root with the connect hooks): packets
    /// of a held socket are dropped, so TCP keeps them queued (and retries them once the
    /// socket is released); everything else costs one hash lookup.
    #[cgroup_skb(egress)]
    pub fn hold_egress(ctx: SkBuffContext) -> i32 {
        let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
        if cookie != 0 && unsafe { HELD_SOCKS.get(&cookie) }.is_some() {
            count(DROP_HELD_PACKETS, 1);
            return 0;
        }
        1
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}
