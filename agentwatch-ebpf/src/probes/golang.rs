//! Go `crypto/tls` (statically linked Go binaries, register ABI). Go's amd64 ABIInternal:
//! receiver and arguments in RAX, RBX, RCX, RDI, …; results in RAX, RBX, …; the current
//! goroutine `g` in R14. No uretprobes (they corrupt goroutine stacks, which move): user
//! space attaches `*_return` at each RET instruction of the function.
use agentwatch_ebpf::*;
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use super::gate::{gate, rearm_after_read};
use super::tls::{emit_tls, mark_loss, new_connection};
use crate::maps::GO_ARGS;
use crate::output::{count, current, drop_count, is_self};

/// Entry of `crypto/tls.(*Conn).Write(b []byte)`: RAX = *Conn, RBX = b.ptr, RCX = b.len.
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    let _ = try_go_stash(&ctx, DIR_WRITE);
    0
}

/// Entry of `(*Conn).Read(b []byte)`.
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
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if !is_self(tgid) {
        let conn = unsafe { (*ctx.regs).rax };
        new_connection(pid_tgid, conn);
    }
    0
}

#[inline(always)]
fn try_go_stash(ctx: &ProbeContext, direction: u32) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if is_self(tgid) {
        return Ok(());
    }
    let (conn, buf, len, g) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.rcx, r.r14)
    };
    let mut emitted = 0;
    // A Write's bytes are emitted at its entry, before they leave: Go reads responses on
    // another goroutine (often another thread), whose Read can return before the writer
    // reaches its RET, and the request must precede its response in the ring buffer. A
    // write held by the gate is emitted at its RET instead (it may never be sent).
    if direction == DIR_WRITE && !gate(pid_tgid, conn, buf, len, 0) {
        if len > 0 {
            emit_tls(pid_tgid, DIR_WRITE, conn, buf, len, 0)?;
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
        drop_count(DROP_ARGS_MAP_FULL, 1);
        if emitted == 1 {
            // Its RET cannot check what was sent: the stream must resynchronise.
            mark_loss(tgid, direction, conn);
        }
    }
    Ok(())
}

#[inline(always)]
fn try_go_return(ctx: &ProbeContext, direction: u32) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    let (n, g) = unsafe {
        let r = &*ctx.regs;
        (r.rax as i64, r.r14)
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
            mark_loss(tgid, direction, args.conn);
        }
        return Ok(());
    }
    if n <= 0 {
        return Ok(());
    }
    if direction == DIR_READ {
        rearm_after_read(tgid);
    }
    emit_tls(pid_tgid, direction, args.conn, args.buf, n as u64, 0)
}
