//! Files changed by the processes of sessions (`[actions] files`), from one of two kinds of
//! hooks (`[actions] file_hooks`):
//!
//! - `libc` (the default): uprobes on the C library's functions that open for writing,
//!   delete and rename. User space creates them with a per-process filter, so the kernel
//!   plants their breakpoints only in the memory of the processes of sessions (and of the
//!   children they fork after); every other process runs its C library untouched.
//! - `syscalls`: the `syscalls` tracepoints of those calls. A process outside every session
//!   costs one map lookup at a call's entry and one at its return, but while any of them is
//!   attached every system call of every process takes the kernel's traced path (user space
//!   attaches them only while a session may be open).
//!
//! Either way a session's call is staged per thread at entry and sent only when it returned
//! successfully, with the directories its relative paths are relative to, read then.
use agentwatch_ebpf::*;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

use crate::maps::{EVENTS, FILE_OPS, FILE_PATH_PTRS, FILE_SCRATCH, PATH_OFFSETS, SESSION_PROCS};
use crate::output::{QUIET, drop_count, now};

const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_WRONLY: u64 = 0o1;
/// A staged call of the same thread younger than this is the caller of a nested one (a
/// wrapper that jumps to another probed function, `renameat2` to `renameat`): the nested
/// one is not staged again. An older one was left by a return never seen.
const NESTED_NS: u64 = 1_000_000_000;

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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !unsafe { SESSION_PROCS.get(&tgid) }.is_some() {
        return Ok(());
    }
    let flags: u64 = match a.flags {
        Some(off) => unsafe { ctx.read_at(off) }?,
        None => 0,
    };
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
    stage(
        &Call {
            op: a.op,
            flags,
            dfd,
            path,
            new_dfd,
            new_path,
        },
        false,
    )
}

/// A call's arguments, as read at its entry.
struct Call {
    op: u32,
    flags: u64,
    dfd: u64,
    path: u64,
    new_dfd: u64,
    new_path: u64,
}

/// Stages `c` for the current thread when it is a session's process and `c` changes a file.
/// `nested`: a staged call of this thread younger than `NESTED_NS` is kept (see there).
#[inline(always)]
fn stage(c: &Call, nested: bool) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(&session) = (unsafe { SESSION_PROCS.get(&tgid) }) else {
        return Ok(());
    };
    if c.op == FILE_OPEN_WRITE && c.flags & (O_ACCMODE | O_CREAT | O_TRUNC) == 0 {
        return Ok(()); // read-only
    }
    let ts = now();
    if nested {
        if let Some(staged) = unsafe { FILE_OPS.get(&(pid_tgid as u32)) } {
            if ts.saturating_sub(staged.ts_ns) < NESTED_NS {
                return Ok(());
            }
        }
    }
    let f = FILE_SCRATCH.get_ptr_mut(0).ok_or(1)?;
    unsafe {
        (*f).kind = EVENT_FILE_OP;
        (*f).tgid = tgid;
        (*f).op = c.op;
        (*f).session = session;
        (*f).flags = c.flags as u32;
        (*f).dfd = c.dfd as i32;
        (*f).new_dfd = c.new_dfd as i32;
        (*f).ts_ns = ts;
        (*f).len = read_path(c.path, &mut (*f).path);
        (*f).new_len = if c.new_path != 0 {
            read_path(c.new_path, &mut (*f).new_path)
        } else {
            0
        };
        if FILE_OPS.insert(&(pid_tgid as u32), &*f, 0).is_err() {
            drop_count(DROP_FILE_OPS, 1);
        } else if (*f).len == 0 || (c.new_path != 0 && (*f).new_len == 0) {
            let _ = FILE_PATH_PTRS.insert(&(pid_tgid as u32), &[c.path, c.new_path], 0);
        }
    }
    Ok(())
}

/// The C library's functions, by their arguments (user space picks the program of each
/// symbol: `LIBC_FILE_FUNCTIONS`). A function that only jumps to another (`__open_2`) is
/// not probed.
macro_rules! libc_entry {
    ($name:ident, $op:expr, |$ctx:ident| $call:expr) => {
        #[uprobe]
        pub fn $name($ctx: ProbeContext) -> u32 {
            let _ = (|| -> Result<(), i64> {
                let (flags, dfd, path, new_dfd, new_path): (u64, u64, u64, u64, u64) = $call;
                stage(
                    &Call {
                        op: $op,
                        flags,
                        dfd,
                        path,
                        new_dfd,
                        new_path,
                    },
                    true,
                )
            })();
            0
        }
    };
}

const CWD: u64 = AT_FDCWD as u64;

/// `arg(n)` of a uprobe's context, 0 when it cannot be read.
#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// open(path, flags, mode), open64, __open_nocancel
libc_entry!(libc_open, FILE_OPEN_WRITE, |ctx| (
    arg(&ctx, 1),
    CWD,
    arg(&ctx, 0),
    CWD,
    0
));
// openat(dfd, path, flags, mode), openat64
libc_entry!(libc_openat, FILE_OPEN_WRITE, |ctx| (
    arg(&ctx, 2),
    arg(&ctx, 0),
    arg(&ctx, 1),
    CWD,
    0
));
// creat(path, mode): open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)
libc_entry!(libc_creat, FILE_OPEN_WRITE, |ctx| (
    O_CREAT | O_WRONLY | O_TRUNC,
    CWD,
    arg(&ctx, 0),
    CWD,
    0
));
// unlink(path), rmdir(path)
libc_entry!(libc_unlink, FILE_UNLINK, |ctx| (
    0,
    CWD,
    arg(&ctx, 0),
    CWD,
    0
));
// unlinkat(dfd, path, flags)
libc_entry!(libc_unlinkat, FILE_UNLINK, |ctx| (
    arg(&ctx, 2),
    arg(&ctx, 0),
    arg(&ctx, 1),
    CWD,
    0
));
// rename(old, new)
libc_entry!(libc_rename, FILE_RENAME, |ctx| (
    0,
    CWD,
    arg(&ctx, 0),
    CWD,
    arg(&ctx, 1)
));
// renameat(old_dfd, old, new_dfd, new)
libc_entry!(libc_renameat, FILE_RENAME, |ctx| (
    0,
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2),
    arg(&ctx, 3)
));
// renameat2(old_dfd, old, new_dfd, new, flags)
libc_entry!(libc_renameat2, FILE_RENAME, |ctx| (
    arg(&ctx, 4),
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2),
    arg(&ctx, 3)
));

/// Return of every probed C library function: its value is the system call's (a negative
/// one is -1 with `errno` set).
#[uretprobe]
pub fn libc_file_return(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret::<i64>();
    let _ = finish(ret);
    0
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
    if FILE_OPS
        .get_ptr(&(bpf_get_current_pid_tgid() as u32))
        .is_none()
    {
        return Ok(());
    }
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(-1);
    finish(ret)
}

/// Sends the current thread's staged call when `ret` says it succeeded; unstages it.
#[inline(always)]
fn finish(ret: i64) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(staged) = FILE_OPS.get_ptr(&tid) else {
        return Ok(());
    };
    if ret >= 0 {
        match EVENTS.reserve::<FileRecord>(0) {
            Some(mut entry) => {
                let rec = entry.as_mut_ptr();
                let copied = unsafe {
                    generated::bpf_probe_read_kernel(
                        &mut (*rec).op as *mut FileOp as *mut core::ffi::c_void,
                        core::mem::size_of::<FileOp>() as u32,
                        staged as *const core::ffi::c_void,
                    )
                };
                if copied == 0 {
                    unsafe { reread_paths(tid, &mut *rec) };
                    unsafe { directories(&mut *rec) };
                    entry.submit(QUIET);
                } else {
                    entry.discard(0);
                    drop_count(DROP_FILE_OPS, 1);
                }
            }
            None => drop_count(DROP_FILE_OPS, 1),
        }
    } else if unsafe { (*staged).len == 0 || (*staged).new_len == 0 } {
        let _ = FILE_PATH_PTRS.remove(&tid);
    }
    let _ = FILE_OPS.remove(&tid);
    Ok(())
}

/// The paths of `rec` that could not be read at the call's entry, read now (`FILE_PATH_PTRS`).
#[inline(always)]
unsafe fn reread_paths(tid: u32, rec: &mut FileRecord) {
    if rec.op.len != 0 && rec.op.new_len != 0 {
        return;
    }
    let Some(ptrs) = (unsafe { FILE_PATH_PTRS.get(&tid) }) else {
        return;
    };
    let (path, new_path) = (ptrs[0], ptrs[1]);
    let _ = FILE_PATH_PTRS.remove(&tid);
    if rec.op.len == 0 && path != 0 {
        rec.op.len = read_path(path, &mut rec.op.path);
    }
    if rec.op.new_len == 0 && new_path != 0 {
        rec.op.new_len = read_path(new_path, &mut rec.op.new_path);
    }
}

/// Steps at most in a directory walk (a name or a mount crossed each).
const MAX_DIR_STEPS: u32 = 32;

/// The directories of `rec`'s relative paths, read now (the call returned: they are still
/// the ones it used).
#[inline(always)]
unsafe fn directories(rec: &mut FileRecord) {
    rec.dir_state = DIR_NONE;
    rec.dir_len = 0;
    rec.new_dir_state = DIR_NONE;
    rec.new_dir_len = 0;
    let Some(o) = PATH_OFFSETS.get(0) else {
        return;
    };
    if o.ok == 0 {
        return;
    }
    if relative(&rec.op.path, rec.op.len) {
        let (state, len) = unsafe { walk_dir(o, rec.op.dfd, &mut rec.dir) };
        rec.dir_state = state;
        rec.dir_len = len;
    }
    if relative(&rec.op.new_path, rec.op.new_len) {
        let (state, len) = unsafe { walk_dir(o, rec.op.new_dfd, &mut rec.new_dir) };
        rec.new_dir_state = state;
        rec.new_dir_len = len;
    }
}

#[inline(always)]
fn relative(path: &[u8; FILE_PATH_LEN], len: u32) -> bool {
    len > 1 && path[0] != b'/'
}

#[inline(always)]
unsafe fn at<T>(base: u64, off: u32) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

/// The names of the directory `dfd` names for the current task (`AT_FDCWD`: its working
/// directory), up to its root: (`DIR_*`, bytes written to `buf`).
#[inline(always)]
unsafe fn walk_dir(o: &PathOffsets, dfd: i32, buf: &mut [u8; 2 * FILE_DIR_LEN]) -> (u32, u32) {
    match unsafe { try_walk_dir(o, dfd, buf) } {
        Ok(r) => r,
        Err(_) => (DIR_NONE, 0),
    }
}

#[inline(always)]
unsafe fn try_walk_dir(
    o: &PathOffsets,
    dfd: i32,
    buf: &mut [u8; 2 * FILE_DIR_LEN],
) -> Result<(u32, u32), i64> {
    let task = unsafe { generated::bpf_get_current_task() };
    let fs: u64 = unsafe { at(task, o.task_fs) }?;
    let root_mnt: u64 = unsafe { at(fs, o.fs_root + o.path_mnt) }?;
    let root_dentry: u64 = unsafe { at(fs, o.fs_root + o.path_dentry) }?;
    // The `struct path` to start from.
    let start = if dfd == AT_FDCWD {
        fs + o.fs_pwd as u64
    } else {
        if dfd < 0 {
            return Err(1);
        }
        let files: u64 = unsafe { at(task, o.task_files) }?;
        let fdt: u64 = unsafe { at(files, o.files_fdt) }?;
        let max: u32 = unsafe { at(fdt, o.fdt_max_fds) }?;
        if dfd as u32 >= max {
            return Err(1);
        }
        let fds: u64 = unsafe { at(fdt, o.fdt_fd) }?;
        let file: u64 = unsafe { at(fds, dfd as u32 * 8) }?;
        if file == 0 {
            return Err(1);
        }
        file + o.file_path as u64
    };
    let mut mnt: u64 = unsafe { at(start, o.path_mnt) }?;
    let mut dentry: u64 = unsafe { at(start, o.path_dentry) }?;
    let mut mount = mnt - o.mount_mnt as u64;
    let mut len: u32 = 0;
    for _ in 0..MAX_DIR_STEPS {
        if dentry == root_dentry && mnt == root_mnt {
            return Ok((DIR_WHOLE, len));
        }
        let mnt_root: u64 = unsafe { at(mnt, o.vfsmount_root) }?;
        if dentry == mnt_root {
            // The root of a mount: on to where it is mounted.
            let parent: u64 = unsafe { at(mount, o.mount_parent) }?;
            if parent == mount {
                return Ok((DIR_WHOLE, len));
            }
            dentry = unsafe { at(mount, o.mount_mountpoint) }?;
            mount = parent;
            mnt = parent + o.mount_mnt as u64;
            continue;
        }
        let name: u64 = unsafe { at(dentry, o.dentry_name) }?;
        // Read through a volatile load so the compiler keeps the mask: the verifier needs
        // it to bound the offset (it does not follow the `len` checks below).
        let off = (unsafe { core::ptr::read_volatile(&len) } as usize) & (FILE_DIR_LEN - 1);
        let n = unsafe {
            generated::bpf_probe_read_kernel_str(
                buf.as_mut_ptr().add(off) as *mut core::ffi::c_void,
                FILE_DIR_LEN as u32,
                name as *const core::ffi::c_void,
            )
        };
        if n <= 0 {
            return Ok((DIR_CUT, len));
        }
        len += n as u32;
        if len >= FILE_DIR_LEN as u32 {
            return Ok((DIR_CUT, len.min(2 * FILE_DIR_LEN as u32)));
        }
        let parent: u64 = unsafe { at(dentry, o.dentry_parent) }?;
        if parent == dentry {
            return Ok((DIR_WHOLE, len));
        }
        dentry = parent;
    }
    Ok((DIR_CUT, len))
}
