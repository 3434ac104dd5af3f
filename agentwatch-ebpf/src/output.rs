//! Records out (the ring buffer), counters, and the settings user space wrote.
//!
//! A record that cannot be delivered is counted in `DROPS`, never lost silently.
use agentwatch_ebpf::*;
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, generated};

use crate::maps::{CONFIG, COUNTS, DROPS, EVENTS, SCRATCH};

#[inline(always)]
pub fn drop_count(index: u32, n: u64) {
    if let Some(p) = DROPS.get_ptr_mut(index) {
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = COUNTS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn config(index: u32) -> Option<u32> {
    match CONFIG.get(index) {
        Some(v) if *v != CFG_ABSENT => Some(*v),
        _ => None,
    }
}

/// The daemon's own threads: their traffic is never captured.
#[inline(always)]
pub fn is_self(tgid: u32) -> bool {
    config(CFG_SELF_TGID) == Some(tgid)
}

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_boot_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current() -> (u64, u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid, (pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// Ring-buffer flags: most records wake nobody (waking the daemon costs an interrupt of
/// the CPU that wrote the record, ~15 µs in a VM, which every fork and exit of every process
/// would pay); the daemon drains the buffer every few milliseconds. A record the daemon must
/// act on at once (a process stopped for a decision) wakes it.
pub const QUIET: u64 = 1; // BPF_RB_NO_WAKEUP
pub const WAKE: u64 = 2; // BPF_RB_FORCE_WAKEUP

/// The flags of a data record: a wakeup when ceilings need the daemon to see requests at
/// once, else quiet. (Not the kernel's own wakeup, which comes only when the consumer
/// position has caught up: the daemon keeps it at the oldest exchange in flight.)
#[inline(always)]
pub fn data_flags() -> u64 {
    if config(CFG_WAKE_DATA) == Some(1) {
        WAKE
    } else {
        QUIET
    }
}

/// A header-only data record.
#[inline(always)]
pub fn record<T>(value: &T) {
    record_flagged(value, data_flags())
}

/// A header-only record, `flags` `QUIET` or `WAKE`.
#[inline(always)]
pub fn record_flagged<T>(value: &T, flags: u64) {
    if EVENTS.output::<T>(value, flags).is_err() {
        drop_count(DROP_RINGBUF_EVENTS, 1);
    }
}

/// A record of header `H` followed by `n` bytes copied from user memory at `src`
/// (`n` ≤ `max`, a power of two ≤ `DATA_CHUNK / 2`, so the masked length stays in bounds). `fill` writes the header once the number
/// of bytes actually copied is known (0 when the copy failed). Returns false when the
/// record was not delivered (counted).
#[inline(always)]
pub fn record_with_user_bytes<H>(
    src: u64,
    n: u64,
    max: usize,
    fill: impl FnOnce(u32) -> H,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let hdr = core::mem::size_of::<H>();
    let mut n = if n > max as u64 { max as u32 } else { n as u32 };
    n &= (2 * max as u32) - 1;
    unsafe {
        let base = (*scratch).bytes.as_mut_ptr();
        if n > 0 {
            let dst = base.add(hdr) as *mut core::ffi::c_void;
            if generated::bpf_probe_read_user(dst, n, src as *const core::ffi::c_void) != 0 {
                n = 0;
            }
        }
        core::ptr::write(base as *mut H, fill(n));
        let total = hdr + (n as usize & (2 * max - 1));
        let record = core::slice::from_raw_parts(base as *const u8, total);
        // Only holds carry bytes this way: the daemon decides at once.
        if EVENTS.output::<[u8]>(record, WAKE).is_err() {
            drop_count(DROP_RINGBUF_EVENTS, 1);
            return false;
        }
    }
    true
}
