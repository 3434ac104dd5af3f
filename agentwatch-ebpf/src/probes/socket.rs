//! TCP sockets, from socket-layer tracepoints only: connect and close
//! (`sock:inet_sock_set_state`), the pre-send hook (`tcp:tcp_sendmsg_locked`, before a
//! write's bytes are queued) and the ends of socket writes and reads (`sock:sock_send_length`,
//! `sock:sock_recv_length`). Pipes and files never run these; a socket that is not of
//! interest costs one hash lookup. Buffers and descriptors come from the system call's own
//! arguments (`syscall.rs`), as the process passed them.
use agentwatch_ebpf::*;
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_user, generated},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use super::aead;
use super::contact;
use super::gate::{rearm_after_read, socket_gate, stop_until_continued};
use super::syscall::{NR_CONNECT, Syscall, iovec};
use super::tls::{emit_tls, mark_loss, new_connection};
use crate::maps::{ESTIMATE_PORTS, PLAIN_PORTS, PROCS, SEND_GATED, SESSION_PROCS, SOCKS, TRACKED};
use crate::output::{config, count, current, drop_count, is_self, now, record};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_PEEK: u64 = 2;

/// `inet_sock_set_state(sk, oldstate, newstate)`: CLOSE → SYN_SENT inside `connect()` is a
/// new connection; CLOSE is the end of one.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_SYN_SENT {
        let _ = on_connect(sk);
    } else if newstate == TCP_CLOSE {
        on_close(sk);
    }
    0
}

fn on_connect(sk: u64) -> Result<(), i64> {
    let (pid_tgid, tgid, _) = current();
    if is_self(tgid) {
        return Ok(());
    }
    // A connect() from user space (not TCP Fast Open's sendto, not io_uring).
    let call = Syscall::current().ok_or(1)?;
    if call.nr != NR_CONNECT {
        return Ok(());
    }
    let addr = call.args[1];
    // sockaddr_in / sockaddr_in6: family, then the port in network order.
    let family: u16 = unsafe { bpf_probe_read_user(addr as *const u16) }.map_err(|e| e as i64)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let port: u16 =
        unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.map_err(|e| e as i64)?;
    let port = u16::from_be(port);
    count(COUNT_CONNECTS);
    let session = match unsafe { SESSION_PROCS.get(&tgid) } {
        Some(root) => {
            report_connect(tgid, *root, family, port, addr, sk);
            true
        }
        None => false,
    };
    let fd = call.fd();
    let state = if unsafe { PLAIN_PORTS.get(&port) }.is_some() {
        SOCK_PLAIN
    } else if unsafe { ESTIMATE_PORTS.get(&port) }.is_some() || undecided(tgid) || session {
        // Its first write decides: an LLM host by SNI, an IP-literal endpoint, or neither
        // (and names the host a session's process contacted).
        SOCK_NEW
    } else {
        return Ok(());
    };
    let cookie = unsafe { generated::bpf_get_socket_cookie(sk as *mut _) };
    let value = SockState {
        state,
        tgid,
        fd: fd as u32,
        port: port as u32,
        cookie,
    };
    if !track(sk, &value) {
        drop_count(DROP_SOCKS_FULL, 1);
        return Ok(());
    }
    if state == SOCK_PLAIN {
        new_connection(pid_tgid, PLAIN_CONN | fd);
        reads_needed(tgid, port as u32);
    }
    Ok(())
}

/// A socket of `tgid` needs its reads seen (a plain-HTTP one, a metered one). With the read
/// hook off, the process is stopped (when this system call returns: no byte of the reply
/// has been read) until user space has attached it and continues it. Without a daemon
/// nobody would continue it: it goes on, its reads unseen.
#[inline(always)]
pub fn reads_needed(tgid: u32, port: u32) {
    if config(CFG_READ_HOOK) == Some(1) {
        return;
    }
    stop_until_continued(EVENT_READ_HOLD, tgid, port, COUNT_READ_HOLDS);
}

/// A session's process connects: where to (the `sockaddr` it passed).
#[inline(always)]
fn report_connect(tgid: u32, session: u32, family: u16, port: u16, sockaddr: u64, sk: u64) {
    let mut addr = [0u8; 16];
    let read = if family == AF_INET {
        unsafe { bpf_probe_read_user((sockaddr + 4) as *const [u8; 4]) }.map(|a| {
            addr[..4].copy_from_slice(&a);
        })
    } else {
        unsafe { bpf_probe_read_user((sockaddr + 8) as *const [u8; 16]) }.map(|a| addr = a)
    };
    if read.is_err() {
        return;
    }
    record(&Connect {
        kind: EVENT_CONNECT,
        tgid,
        family: family as u32,
        port: port as u32,
        session,
        _pad: 0,
        ts_ns: now(),
        addr,
        sock: sk,
    });
}

/// Whether `tgid`'s connections still need a first-contact look (probes per process, and
/// the process is not decided).
#[inline(always)]
fn undecided(tgid: u32) -> bool {
    if config(CFG_PER_PROCESS) != Some(1) {
        return false;
    }
    match unsafe { PROCS.get(&tgid) } {
        Some(s) => *s != PROC_DECIDED,
        None => true,
    }
}

/// Adds `delta` to the `TRACKED` counter of `tgid`'s slot (an atomic add: connects and
/// closes of processes sharing a slot may run on two CPUs at once).
#[inline(always)]
fn add_tracked(tgid: u32, delta: u64) {
    if let Some(p) = TRACKED.get_ptr_mut(tgid % TRACKED_SLOTS) {
        // SAFETY: an aligned 8-byte map value that lives as long as the program.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, delta,
            );
        }
    }
}

/// Whether a socket call of `tgid` may be on a socket in `SOCKS` (the process, or one that
/// shares its slot, has one there). Every socket call of every process asks this first.
#[inline(always)]
fn may_track(tgid: u32) -> bool {
    TRACKED.get(tgid % TRACKED_SLOTS).is_some_and(|c| *c != 0)
}

/// Puts a new socket of `state.tgid` in `SOCKS`.
#[inline(always)]
fn track(sk: u64, state: &SockState) -> bool {
    if SOCKS.insert(&sk, state, BPF_NOEXIST).is_err() {
        // Already there (a connect on the same socket again): replaced, same count.
        return SOCKS.insert(&sk, state, 0).is_ok();
    }
    add_tracked(state.tgid, 1);
    true
}

/// Takes a socket out of `SOCKS`.
#[inline(always)]
pub fn untrack(sk: u64, tgid: u32) {
    if SOCKS.remove(&sk).is_ok() {
        add_tracked(tgid, u64::MAX); // −1, wrapping
    }
}

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn on_close(sk: u64) {
    let Some(st) = (unsafe { SOCKS.get(&sk) }) else {
        return;
    };
    let st = *st;
    untrack(sk, st.tgid);
    if st.state == SOCK_METERED {
        record(&SocketClose {
            kind: EVENT_SOCKET_CLOSE,
            tgid: st.tgid,
            fd: st.fd as u64,
            ts_ns: now(),
        });
    }
}

/// `tcp_sendmsg_locked(sk, msg, skb, size_goal)`, before the bytes of a write are queued
/// (once per segment of a large write).
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let (_, tgid, _) = current();
    if !may_track(tgid) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let Some(st) = (unsafe { SOCKS.get(&sk) }) else {
        return 0;
    };
    let st = *st;
    match st.state {
        SOCK_NEW => contact::first_write(&ctx, sk, &st),
        SOCK_METERED => gate_metered(&st),
        _ => {}
    }
    0
}

/// A gated process writing on a metered socket: held before the bytes are queued, once per
/// write.
#[inline(always)]
fn gate_metered(st: &SockState) {
    let (pid_tgid, _, _) = current();
    if unsafe { SEND_GATED.get(&pid_tgid) }.is_some() {
        return;
    }
    let Some(call) = Syscall::current() else {
        return;
    };
    if !call.is_write() {
        return;
    }
    let len = call.first_buffer().map_or(0, |(_, len)| len);
    if socket_gate(pid_tgid, st.fd as u64, st.cookie, len) {
        let _ = SEND_GATED.insert(&pid_tgid, &1, 0);
    }
}

/// `sock_send_length(sk, ret, flags)`: the end of a write on any socket.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    let args = unsafe { &*(ctx.as_ptr() as *const [u64; 3]) };
    on_io(&ctx, args[0], args[1] as i32 as i64, 0, true);
    0
}

/// `sock_recv_length(sk, ret, flags)`: the end of a read on any socket.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let args = unsafe { &*(ctx.as_ptr() as *const [u64; 3]) };
    on_io(&ctx, args[0], args[1] as i32 as i64, args[2], false);
    0
}

#[inline(always)]
fn on_io<C: EbpfContext>(ctx: &C, sk: u64, ret: i64, flags: u64, write: bool) {
    let (pid_tgid, tgid, _) = current();
    let st = if may_track(tgid) {
        unsafe { SOCKS.get(&sk) }.copied()
    } else {
        None
    };
    let aead = aead::is_aead_process(tgid);
    if st.is_none() && !aead {
        return;
    }
    if !write && flags & MSG_PEEK != 0 {
        return;
    }
    let Some(call) = Syscall::current() else {
        return;
    };
    if (write && !call.is_write()) || (!write && !call.is_read()) {
        return;
    }
    let fd = call.fd();
    if aead {
        aead::on_socket_io(pid_tgid, fd, write);
    }
    let Some(st) = st else {
        return;
    };
    let direction = if write { DIR_WRITE } else { DIR_READ };
    match st.state {
        // No pre-send hook on this kernel: the first write is looked at once it is done.
        SOCK_NEW if write && config(CFG_PRE_SEND) != Some(1) => contact::first_write(ctx, sk, &st),
        SOCK_PLAIN if ret > 0 && !is_self(tgid) => {
            let _ = emit_plain(pid_tgid, direction, &call, fd, ret as u64);
        }
        SOCK_METERED => {
            if write {
                let _ = SEND_GATED.remove(&pid_tgid);
                if config(CFG_PRE_SEND) != Some(1) {
                    gate_metered(&st);
                }
            } else if ret > 0 {
                rearm_after_read(tgid);
            }
            if ret > 0 {
                let len = if ret > u32::MAX as i64 {
                    u32::MAX
                } else {
                    ret as u32
                };
                record(&SocketBytes {
                    kind: EVENT_SOCKET_BYTES,
                    tgid,
                    direction,
                    len,
                    fd: st.fd as u64,
                    ts_ns: now(),
                });
            }
        }
        _ => {}
    }
}

/// The `len` bytes a plain-HTTP socket call moved, from its buffer or iovec by iovec in
/// order (from at most `MAX_IOVECS`).
#[inline(always)]
fn emit_plain(pid_tgid: u64, direction: u32, call: &Syscall, fd: u64, len: u64) -> Result<(), i64> {
    let conn = PLAIN_CONN | fd;
    let Some((iov, cnt)) = call.iovecs() else {
        return emit_tls(pid_tgid, direction, conn, call.args[1], len, 0);
    };
    let mut left = len;
    for i in 0..MAX_IOVECS as u64 {
        if i >= cnt || left == 0 {
            break;
        }
        let (base, n) = iovec(iov, i).ok_or(1)?;
        let n = if n < left { n } else { left };
        if n > 0 {
            emit_tls(pid_tgid, direction, conn, base, n, 0)?;
        }
        left -= n;
    }
    if left > 0 {
        drop_count(DROP_IOV_BYTES, left);
        mark_loss((pid_tgid >> 32) as u32, direction, conn);
    }
    Ok(())
}
