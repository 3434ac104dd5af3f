//! The system call the current task is in, read from its saved user registers: the socket
//! tracepoints pass the socket, and the buffer and descriptor come from the call's
//! arguments. x86-64 only (the `struct pt_regs` layout and syscall numbers below).
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_user, generated};

pub const NR_READ: u64 = 0;
pub const NR_WRITE: u64 = 1;
pub const NR_READV: u64 = 19;
pub const NR_WRITEV: u64 = 20;
pub const NR_CONNECT: u64 = 42;
pub const NR_SENDTO: u64 = 44;
pub const NR_RECVFROM: u64 = 45;
pub const NR_SENDMSG: u64 = 46;
pub const NR_RECVMSG: u64 = 47;

/// `struct pt_regs` slots (8 bytes each): r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si
/// di orig_ax ip cs flags sp ss.
const DX: usize = 12;
const SI: usize = 13;
const DI: usize = 14;
const ORIG_AX: usize = 15;

/// A system call and its first three arguments.
#[derive(Clone, Copy)]
pub struct Syscall {
    pub nr: u64,
    pub args: [u64; 3],
}

impl Syscall {
    /// The call the current task entered from user mode (its number is `orig_ax`).
    #[inline(always)]
    pub fn current() -> Option<Syscall> {
        unsafe {
            let task = generated::bpf_get_current_task_btf();
            let regs = generated::bpf_task_pt_regs(task) as *const u64;
            if regs.is_null() {
                return None;
            }
            Some(Syscall {
                nr: bpf_probe_read_kernel(regs.add(ORIG_AX)).ok()?,
                args: [
                    bpf_probe_read_kernel(regs.add(DI)).ok()?,
                    bpf_probe_read_kernel(regs.add(SI)).ok()?,
                    bpf_probe_read_kernel(regs.add(DX)).ok()?,
                ],
            })
        }
    }

    /// The descriptor of a read/write-type call on a socket.
    #[inline(always)]
    pub fn fd(&self) -> u64 {
        self.args[0] & 0xffff_ffff
    }

    /// Whether this is a call that writes to a socket.
    #[inline(always)]
    pub fn is_write(&self) -> bool {
        matches!(self.nr, NR_WRITE | NR_WRITEV | NR_SENDTO | NR_SENDMSG)
    }

    /// Whether this is a call that reads from a socket.
    #[inline(always)]
    pub fn is_read(&self) -> bool {
        matches!(self.nr, NR_READ | NR_READV | NR_RECVFROM | NR_RECVMSG)
    }

    /// (iovec array, count) of a vectored call (`writev`/`readv`, `sendmsg`/`recvmsg`), or
    /// none for the single-buffer calls.
    #[inline(always)]
    pub fn iovecs(&self) -> Option<(u64, u64)> {
        match self.nr {
            NR_WRITEV | NR_READV => Some((self.args[1], self.args[2] & 0xffff_ffff)),
            NR_SENDMSG | NR_RECVMSG => {
                // struct user_msghdr: msg_name, msg_namelen (+pad), msg_iov at 16, msg_iovlen at 24.
                let msg = self.args[1];
                let iov: u64 = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.ok()?;
                let cnt: u64 = unsafe { bpf_probe_read_user((msg + 24) as *const u64) }.ok()?;
                Some((iov, cnt))
            }
            _ => None,
        }
    }

    /// (address, length) of the call's first buffer.
    #[inline(always)]
    pub fn first_buffer(&self) -> Option<(u64, u64)> {
        match self.iovecs() {
            Some((iov, cnt)) => {
                if cnt == 0 {
                    return None;
                }
                iovec(iov, 0)
            }
            None => Some((self.args[1], self.args[2])),
        }
    }
}

/// (base, len) of `iov[i]`.
#[inline(always)]
pub fn iovec(iov: u64, i: u64) -> Option<(u64, u64)> {
    // struct iovec { void *iov_base; size_t iov_len; }
    let at = iov + i * 16;
    let base: u64 = unsafe { bpf_probe_read_user(at as *const u64) }.ok()?;
    let len: u64 = unsafe { bpf_probe_read_user((at + 8) as *const u64) }.ok()?;
    Some((base, len))
}
