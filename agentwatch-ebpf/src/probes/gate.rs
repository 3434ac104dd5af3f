//! The pre-commit gate of ceilings: a gated process's write is stopped before its bytes
//! leave, and user space decides (grant, pause, kill, block).
use agentwatch_ebpf::*;
use aya_ebpf::helpers::generated;

use crate::maps::{EVENTS, GATE, HELD_SOCKS};
use crate::output::{WAKE, config, count, drop_count, now, record_flagged, record_with_user_bytes};

const SIGKILL: u32 = 9;
pub const SIGSTOP: u32 = 19;
pub const SIGCONT: u32 = 18;

/// The gate state of `tgid`, with the host-wide gate standing in for processes without one.
#[inline(always)]
fn state_of(tgid: u32) -> Option<u32> {
    match unsafe { GATE.get(&tgid) } {
        Some(s) => Some(*s),
        None if config(CFG_HOST_GATE) == Some(1) => Some(GATE_ARMED),
        None => None,
    }
}

/// A TLS write (entry of SSL_write, a seal, a Go Write): a gated process is stopped here,
/// before the library writes a byte (the signal is delivered on the return to user mode).
/// Returns true when the write was stopped or killed.
#[inline(always)]
pub fn gate(pid_tgid: u64, conn: u64, buf: u64, num: u64, hold_flags: u32) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(state) = state_of(tgid) else {
        return false;
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
            record_with_user_bytes(buf, num, GATE_PREVIEW, |len| GateHold {
                kind: EVENT_GATE_HOLD,
                tgid,
                tid: pid_tgid as u32,
                state,
                flags: hold_flags,
                len,
                conn,
                ts_ns: now(),
                call_len: num,
            });
            true
        }
    }
}

/// A granted process that reads (a response) may write a new request next: armed again.
#[inline(always)]
pub fn rearm_after_read(tgid: u32) {
    if let Some(state) = unsafe { GATE.get(&tgid) }
        && *state == GATE_GRANTED
    {
        let _ = GATE.insert(&tgid, &GATE_ARMED, 0);
    }
}

/// The gate for sockets no hook covers (metered): the write cannot be stopped before it
/// runs, so the socket goes into `HELD_SOCKS` first and the egress program keeps whatever
/// the write queues inside the host until user space decides. Returns true when held.
#[inline(always)]
pub fn socket_gate(pid_tgid: u64, fd: u64, cookie: u64, len: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    let Some(state) = state_of(tgid) else {
        return false;
    };
    if state == GATE_GRANTED {
        return false;
    }
    let mut cookie = cookie;
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
    record_flagged(
        &SocketHold {
            kind: EVENT_SOCKET_HOLD,
            tgid,
            tid: pid_tgid as u32,
            state,
            fd,
            ts_ns: now(),
            len,
            cookie,
        },
        WAKE,
    );
    true
}

/// Stops the current process until user space continues it, and tells user space (a
/// [`ReadHold`] record of `kind`): the read hook's holds, the file uprobes' holds at an exec.
/// Only with a daemon's heartbeat; a record that cannot be sent takes the stop back (nobody
/// would know to continue it). `counter`: the `COUNT_*` of such holds.
#[inline(always)]
pub fn stop_until_continued(kind: u32, tgid: u32, port: u32, counter: u32) {
    if !super::contact::daemon_alive() {
        return;
    }
    // Stopped first, then told: user space's SIGCONT must come after the stop.
    unsafe { generated::bpf_send_signal(SIGSTOP) };
    let hold = ReadHold {
        kind,
        tgid,
        port,
        _pad: 0,
        ts_ns: now(),
    };
    if EVENTS.output::<ReadHold>(&hold, WAKE).is_err() {
        drop_count(DROP_RINGBUF_EVENTS, 1);
        unsafe { generated::bpf_send_signal(SIGCONT) };
        return;
    }
    count(counter);
}
