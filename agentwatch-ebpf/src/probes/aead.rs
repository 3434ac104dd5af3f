//! aws-lc's AEAD seal/open under rustls (Codex): located by analysis; each call is one TLS
//! record. Records are linked to their socket by the thread's next socket write (a seal)
//! or its last socket read (an open), in `socket.rs`.
use agentwatch_ebpf::*;
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use super::gate::{gate, rearm_after_read};
use super::tls::emit_tls;
use crate::maps::{AEAD_LAST_READ, AEAD_SEALED, AEAD_TGIDS, SSL_ARGS};
use crate::output::{count, current, drop_count, is_self, now, record};

/// Entry of aws-lc's `EVP_AEAD_CTX_seal(ctx, out, *out_len, max_out, nonce, nonce_len, in,
/// in_len, ad, ad_len)`: `in`/`in_len` are the first two stack arguments.
#[uprobe]
pub fn aead_seal_enter(ctx: ProbeContext) -> u32 {
    let _ = try_aead_seal(&ctx);
    0
}

fn try_aead_seal(ctx: &ProbeContext) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if is_self(tgid) {
        return Ok(());
    }
    let aead: u64 = ctx.arg(0).ok_or(1)?;
    // At entry the stack pointer holds the return address; stack arguments follow it.
    let sp = unsafe { (*ctx.regs).rsp };
    let buf: u64 = unsafe { bpf_probe_read_user((sp + 8) as *const u64) }.map_err(|e| e as i64)?;
    let len: u64 = unsafe { bpf_probe_read_user((sp + 16) as *const u64) }.map_err(|e| e as i64)?;
    mark_aead_process(tgid);
    let _ = gate(pid_tgid, aead, buf, len, HOLD_TLS_RECORD);
    let _ = AEAD_SEALED.insert(&pid_tgid, &aead, 0);
    emit_tls(pid_tgid, DIR_WRITE, aead, buf, len, TLS_FLAG_AEAD)
}

/// Entry of `EVP_AEAD_CTX_open(ctx, out, *out_len, …)`: the plaintext is in `out` on return.
#[uprobe]
pub fn aead_open_enter(ctx: ProbeContext) -> u32 {
    let _ = try_aead_open(&ctx);
    0
}

fn try_aead_open(ctx: &ProbeContext) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if is_self(tgid) {
        return Ok(());
    }
    mark_aead_process(tgid);
    let args = SslArgs {
        ssl: ctx.arg(0).ok_or(1)?,
        buf: ctx.arg(1).ok_or(1)?,
        out_len: ctx.arg(2).ok_or(1)?,
    };
    if SSL_ARGS.insert(&pid_tgid, &args, 0).is_err() {
        drop_count(DROP_ARGS_MAP_FULL, 1);
    }
    Ok(())
}

#[uretprobe]
pub fn aead_open_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_aead_open_exit(&ctx);
    0
}

fn try_aead_open_exit(ctx: &RetProbeContext) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
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
        link(pid_tgid, DIR_READ, args.ssl, *fd);
    }
    // As after an SSL read: a granted process that reads may write a new request next.
    rearm_after_read(tgid);
    emit_tls(pid_tgid, DIR_READ, args.ssl, args.buf, len, TLS_FLAG_AEAD)
}

/// Socket I/O of a thread of an AEAD process: a write after a seal links the sealing
/// context to the fd; a read is remembered for the next open. Other processes pay one
/// lookup (`AEAD_TGIDS`).
#[inline(always)]
pub fn on_socket_io(pid_tgid: u64, fd: u64, write: bool) {
    if write {
        if let Some(aead) = unsafe { AEAD_SEALED.get(&pid_tgid) } {
            let aead = *aead;
            let _ = AEAD_SEALED.remove(&pid_tgid);
            link(pid_tgid, DIR_WRITE, aead, fd);
        }
    } else {
        let _ = AEAD_LAST_READ.insert(&pid_tgid, &fd, 0);
    }
}

/// Whether the thread's process uses AEAD probes (its socket I/O links records).
#[inline(always)]
pub fn is_aead_process(tgid: u32) -> bool {
    match AEAD_TGIDS.get(tgid / 64) {
        Some(word) => *word & (1u64 << (tgid % 64)) != 0,
        None => false,
    }
}

#[inline(always)]
fn mark_aead_process(tgid: u32) {
    if let Some(word) = AEAD_TGIDS.get_ptr_mut(tgid / 64) {
        let bit = 1u64 << (tgid % 64);
        // A plain read-modify-write: two CPUs marking neighbours at once may lose one mark,
        // which the process's next AEAD call sets again.
        unsafe {
            if *word & bit == 0 {
                *word |= bit;
            }
        }
    }
}

/// Forgets a process (it exited; its pid may be reused by a process that is no AEAD user).
#[inline(always)]
pub fn forget_aead_process(tgid: u32) {
    if let Some(word) = AEAD_TGIDS.get_ptr_mut(tgid / 64) {
        let bit = 1u64 << (tgid % 64);
        unsafe {
            if *word & bit != 0 {
                *word &= !bit;
            }
        }
    }
}

#[inline(always)]
fn link(pid_tgid: u64, direction: u32, aead: u64, fd: u64) {
    record(&AeadLink {
        kind: EVENT_AEAD_LINK,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        direction,
        aead,
        fd,
        ts_ns: now(),
    });
}
