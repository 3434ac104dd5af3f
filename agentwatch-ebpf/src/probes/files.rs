//! Files changed by the processes of sessions (`[actions] files`): the `syscalls` tracepoints
//! of the calls that open for writing, delete and rename. A process outside every session
//! costs one map lookup at a call's entry and one at its return; a session's call is staged
//! per thread at entry and sent only when it returned successfully.
use agentwatch_ebpf::*;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{EVENTS, FILE_OPS, FILE_SCRATCH, SESSION_PROCS};
use crate::output::{QUIET, drop_count, now};

const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;

/// Where a call's arguments are in its tracepoint record (`syscalls/sys_enter_*/format`).
struct Args {
    op: u32,
    /// Offsets of the (first) directory descriptor, path, second descriptor, second path
    /// and flags; `None`: the call has no such argument.
    dfd: Option<usize>,
    path: usize,
    new_dfd: Option<usize>,
    new_path: Option<usize>,
    flags: Option<usize>,
}

macro_rules! enter {
    ($name:ident, $args:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = try_enter(&ctx, &$args);
            0
        }
    };
}

macro_rules! exit {
    ($name:ident) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = try_exit(&ctx);
            0
        }
    };
}

enter!(
    sys_enter_openat,
    Args {
        op: FILE_OPEN_WRITE,
        dfd: Some(16),
        path: 24,
        new_dfd: None,
        new_path: None,
        flags: Some(32),
    }
);
enter!(
    sys_enter_open,
    Args {
        op: FILE_OPEN_WRITE,
        dfd: None,
        path: 16,
        new_dfd: None,
        new_path: None,
        flags: Some(24),
    }
);
enter!(
    sys_enter_rmdir,
    Args {
        op: FILE_UNLINK,
        dfd: None,
        path: 16,
        new_dfd: None,
        new_path: None,
        flags: None,
    }
);
enter!(
    sys_enter_unlinkat,
    Args {
        op: FILE_UNLINK,
        dfd: Some(16),
        path: 24,
        new_dfd: None,
        new_path: None,
        flags: Some(32),
    }
);
enter!(
    sys_enter_unlink,
    Args {
        op: FILE_UNLINK,
        dfd: None,
        path: 16,
        new_dfd: None,
        new_path: None,
        flags: None,
    }
);
enter!(
    sys_enter_renameat2,
    Args {
        op: FILE_RENAME,
        dfd: Some(16),
        path: 24,
        new_dfd: Some(32),
        new_path: Some(40),
        flags: Some(48),
    }
);
enter!(
    sys_enter_renameat,
    Args {
        op: FILE_RENAME,
        dfd: Some(16),
        path: 24,
        new_dfd: Some(32),
        new_path: Some(40),
        flags: None,
    }
);
enter!(
    sys_enter_rename,
    Args {
        op: FILE_RENAME,
        dfd: None,
        path: 16,
        new_dfd: None,
        new_path: Some(24),
        flags: None,
    }
);
exit!(sys_exit_openat);
exit!(sys_exit_open);
exit!(sys_exit_rmdir);
exit!(sys_exit_unlinkat);
exit!(sys_exit_unlink);
exit!(sys_exit_renameat2);
exit!(sys_exit_renameat);
exit!(sys_exit_rename);

#[inline(always)]
fn try_enter(ctx: &TracePointContext, a: &Args) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if unsafe { SESSION_PROCS.get(&tgid) }.is_none() {
        return Ok(());
    }
    let flags: u64 = match a.flags {
        Some(off) => unsafe { ctx.read_at(off) }?,
        None => 0,
    };
    if a.op == FILE_OPEN_WRITE && flags & (O_ACCMODE | O_CREAT | O_TRUNC) == 0 {
        return Ok(()); // read-only
    }
    let dfd: u64 = match a.dfd {
        Some(off) => unsafe { ctx.read_at(off) }?,
        None => AT_FDCWD as u64,
    };
    let new_dfd: u64 = match a.new_dfd {
        Some(off) => unsafe { ctx.read_at(off) }?,
        None => AT_FDCWD as u64,
    };
    let path: u64 = unsafe { ctx.read_at(a.path) }?;
    let new_path: u64 = match a.new_path {
        Some(off) => unsafe { ctx.read_at(off) }?,
        None => 0,
    };
    let f = FILE_SCRATCH.get_ptr_mut(0).ok_or(1)?;
    unsafe {
        (*f).kind = EVENT_FILE_OP;
        (*f).tgid = tgid;
        (*f).op = a.op;
        (*f).flags = flags as u32;
        (*f).dfd = dfd as i32;
        (*f).new_dfd = new_dfd as i32;
        (*f).ts_ns = now();
        (*f).len = read_path(path, &mut (*f).path);
        (*f).new_len = if new_path != 0 {
            read_path(new_path, &mut (*f).new_path)
        } else {
            0
        };
        if FILE_OPS.insert(&(pid_tgid as u32), &*f, 0).is_err() {
            drop_count(DROP_FILE_OPS, 1);
        }
    }
    Ok(())
}

/// Reads a NUL-terminated user path into `buf`: bytes read, NUL included (0 on failure).
#[inline(always)]
fn read_path(src: u64, buf: &mut [u8; FILE_PATH_LEN]) -> u32 {
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            buf.as_mut_ptr() as *mut core::ffi::c_void,
            FILE_PATH_LEN as u32,
            src as *const core::ffi::c_void,
        )
    };
    if n > 0 { n as u32 } else { 0 }
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(staged) = FILE_OPS.get_ptr(&tid) else {
        return Ok(());
    };
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    if ret >= 0 {
        match EVENTS.reserve::<FileOp>(0) {
            Some(mut entry) => {
                let copied = unsafe {
                    generated::bpf_probe_read_kernel(
                        entry.as_mut_ptr() as *mut core::ffi::c_void,
                        core::mem::size_of::<FileOp>() as u32,
                        staged as *const core::ffi::c_void,
                    )
                };
                if copied == 0 {
                    entry.submit(QUIET);
                } else {
                    entry.discard(0);
                    drop_count(DROP_FILE_OPS, 1);
                }
            }
            None => drop_count(DROP_FILE_OPS, 1),
        }
    }
    let _ = FILE_OPS.remove(&tid);
    Ok(())
}
