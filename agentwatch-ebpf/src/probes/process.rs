//! Process lifecycle: fork (processes only, not threads), exec and exit.
use agentwatch_ebpf::*;
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use super::gate::stop_until_continued;
use crate::maps::{BLOCKED_TGIDS, EVENTS, GATE, PROCS, SESSION_PROCS, THREAD_CHILDREN};
use crate::output::{QUIET, config, drop_count, now};

const CLONE_THREAD: u64 = 0x0001_0000;

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
    // A child of a session's process is the session's too.
    let session = match unsafe { SESSION_PROCS.get(&parent_tgid) } {
        Some(&root) => {
            if SESSION_PROCS.insert(&child, &root, 0).is_err() {
                drop_count(DROP_SESSION_PROCS_FULL, 1);
            }
            root
        }
        None => {
            let _ = SESSION_PROCS.remove(&child);
            0
        }
    };
    // A pid is decided at its own first contact (a stale entry of a reused pid is dropped).
    let _ = PROCS.remove(&child);
    emit(EVENT_FORK, child, parent_tgid, None, 0, session, None)
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exec(&ctx);
    0
}

fn try_sched_process_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // A new program: decided anew at its first contact (user space drops its probes).
    let _ = PROCS.remove(&tgid);
    let filename_off = config(CFG_EXEC_FILENAME_OFF).ok_or(1)?;
    emit(EVENT_EXEC, tgid, 0, Some((ctx, filename_off)), 0, 0, None)?;
    let session = unsafe { SESSION_PROCS.get(&tgid) }.is_some();
    if session && config(CFG_EXEC_ARGS) == Some(1) {
        emit_args(tgid)?;
    }
    // Stopped (before the new program's first instruction) until user space has covered it
    // with the file uprobes.
    if session && config(CFG_FILE_HOLD_AT_EXEC) == Some(1) {
        stop_until_continued(EVENT_FILE_HOLD, tgid, 0, COUNT_FILE_HOLDS);
    }
    Ok(())
}

/// The new program's arguments (`mm->arg_start..arg_end`, in its own memory now), right
/// after its exec record.
#[inline(always)]
fn emit_args(tgid: u32) -> Result<(), i64> {
    let mm_off = config(CFG_TASK_MM_OFF).ok_or(1)?;
    let start_off = config(CFG_MM_ARG_START_OFF).ok_or(1)?;
    let end_off = config(CFG_MM_ARG_END_OFF).ok_or(1)?;
    let (start, end) = unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 = bpf_probe_read_kernel(task.add(mm_off as usize) as *const *const u8)?;
        (
            bpf_probe_read_kernel(mm.add(start_off as usize) as *const u64)?,
            bpf_probe_read_kernel(mm.add(end_off as usize) as *const u64)?,
        )
    };
    let total = end.saturating_sub(start);
    let Some(mut entry) = EVENTS.reserve::<ExecArgs>(0) else {
        drop_count(DROP_PROC_EVENTS, 1);
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    let mut n = if total > ARGS_LEN as u64 {
        ARGS_LEN as u32
    } else {
        total as u32
    };
    unsafe {
        (*ev).kind = EVENT_EXEC_ARGS;
        (*ev).tgid = tgid;
        (*ev).total = total.min(u32::MAX as u64) as u32;
        (*ev).ts_ns = now();
        if n > ARGS_LEN as u32 {
            n = ARGS_LEN as u32;
        }
        let r = generated::bpf_probe_read_user(
            (*ev).args.as_mut_ptr() as *mut core::ffi::c_void,
            n,
            start as *const core::ffi::c_void,
        );
        (*ev).len = if r == 0 { n } else { 0 };
    }
    entry.submit(QUIET);
    Ok(())
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
    let _ = PROCS.remove(&tgid);
    let session = unsafe { SESSION_PROCS.get(&tgid) }.copied().unwrap_or(0);
    let _ = SESSION_PROCS.remove(&tgid);
    super::aead::forget_aead_process(tgid);
    emit_exit(tgid, session)
}

/// The exit record, with the wait status the parent will get.
#[inline(always)]
fn emit_exit(tgid: u32, session: u32) -> Result<(), i64> {
    let code = match config(CFG_TASK_EXIT_CODE_OFF) {
        Some(off) => {
            let task = unsafe { bpf_get_current_task() } as *const u8;
            unsafe { bpf_probe_read_kernel(task.add(off as usize) as *const i32) }
                .map_or(EXIT_CODE_UNKNOWN, |c| c as u32)
        }
        None => EXIT_CODE_UNKNOWN,
    };
    // Only a session's process: its run is a tool run, also for a daemon that did not see it
    // start.
    let facts = if session != 0 { leader_facts() } else { None };
    emit(EVENT_EXIT, tgid, 0, None, code, session, facts)
}

/// (start, `EXECED_*`) of the current process (its thread group leader's).
#[inline(always)]
fn leader_facts() -> Option<(u64, u32)> {
    let leader_off = config(CFG_TASK_GROUP_LEADER_OFF)?;
    let start_off = config(CFG_TASK_START_BOOTTIME_OFF)?;
    let self_off = config(CFG_TASK_SELF_EXEC_ID_OFF)?;
    let parent_off = config(CFG_TASK_PARENT_EXEC_ID_OFF)?;
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let leader: *const u8 =
            bpf_probe_read_kernel(task.add(leader_off as usize) as *const *const u8).ok()?;
        let start: u64 =
            bpf_probe_read_kernel(leader.add(start_off as usize) as *const u64).ok()?;
        // A fork copies its parent's `self_exec_id` and keeps it as `parent_exec_id`; every
        // exec increments `self_exec_id`.
        let own: u64 = bpf_probe_read_kernel(leader.add(self_off as usize) as *const u64).ok()?;
        let parent: u64 =
            bpf_probe_read_kernel(leader.add(parent_off as usize) as *const u64).ok()?;
        Some((start, if own != parent { EXECED_YES } else { EXECED_NO }))
    }
}

#[inline(always)]
fn emit(
    kind: u32,
    tgid: u32,
    ppid: u32,
    exec: Option<(&TracePointContext, u32)>,
    exit_code: u32,
    session: u32,
    facts: Option<(u64, u32)>,
) -> Result<(), i64> {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        drop_count(DROP_PROC_EVENTS, 1);
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).kind = kind;
        (*ev).tgid = tgid;
        (*ev).ppid = ppid;
        (*ev).exit_code = exit_code;
        (*ev).session = session;
        let (start_ns, execed) = facts.unwrap_or((0, EXECED_UNKNOWN));
        (*ev).execed = execed;
        (*ev).start_ns = start_ns;
        (*ev).ts_ns = now();
        (*ev).comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
        (*ev).filename[0] = 0;
        if let Some((ctx, off)) = exec {
            // __data_loc: low 16 bits offset from the record start, high 16 bits length.
            if let Ok(loc) = ctx.read_at::<u32>(off as usize) {
                let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
            }
        }
    }
    entry.submit(QUIET);
    Ok(())
}
