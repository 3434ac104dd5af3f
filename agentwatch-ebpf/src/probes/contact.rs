//! First contact: the first write of a new TCP connection decides whether its process
//! talks to an LLM endpoint. A TLS ClientHello's SNI is matched here against the LLM host
//! table (`LLM_HOSTS`, `LLM_SUFFIXES`); a ClientHello with no SNI (an IP-literal endpoint)
//! counts as a possible LLM endpoint too. An undecided process that makes such a contact
//! is stopped (SIGSTOP, delivered when this write returns: the ClientHello is not a request
//! byte) so user space can attach its probes before its first request; every other
//! connection is let go at once and costs nothing more.
use agentwatch_ebpf::*;
use aya_ebpf::EbpfContext;
use aya_ebpf::helpers::generated;
use aya_log_ebpf::{info, warn};

use super::gate::SIGSTOP;
use super::socket::untrack;
use super::syscall::Syscall;
use crate::maps::{
    ESTIMATE_PORTS, EVENTS, LLM_HOSTS, LLM_SUFFIXES, PROCS, SCRATCH, SESSION_PROCS, SOCKS,
};
use crate::output::{WAKE, config, count, current, data_flags, drop_count, now};

/// Offset of the copied bytes in the scratch buffer (right after a `Contact` header).
const HDR: usize = core::mem::size_of::<Contact>();
/// Bytes looked at, a power of two (masks keep every read inside the scratch buffer).
const LOOK: usize = HELLO_BYTES;
const MASK: usize = LOOK - 1;
/// Extensions walked at most before the SNI.
const MAX_EXTENSIONS: u32 = 32;

/// What the first bytes of a connection are.
enum Hello {
    /// Not a TLS ClientHello; `connect` when it is a proxy's `CONNECT` (the next write decides).
    NotTls {
        connect: bool,
    },
    /// A ClientHello naming a host that is not an LLM endpoint.
    Other,
    Llm,
    NoSni,
}

#[inline(always)]
pub fn first_write<C: EbpfContext>(ctx: &C, sk: u64, st: &SockState) {
    let _ = try_first_write(ctx, sk, st);
}

fn try_first_write<C: EbpfContext>(ctx: &C, sk: u64, st: &SockState) -> Result<(), i64> {
    let (_, tgid, tid) = current();
    let call = Syscall::current().ok_or(1)?;
    if !call.is_write() {
        return Ok(());
    }
    let (buf, len) = call.first_buffer().ok_or(1)?;
    count(COUNT_FIRST_WRITES);
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(1)?;
    let base = unsafe { (*scratch).bytes.as_mut_ptr() };
    let mut n = if len > LOOK as u64 {
        LOOK as u32
    } else {
        len as u32
    };
    n &= (2 * LOOK as u32) - 1;
    if n == 0 {
        return Ok(());
    }
    let copied = unsafe {
        generated::bpf_probe_read_user(
            base.add(HDR) as *mut core::ffi::c_void,
            n,
            buf as *const core::ffi::c_void,
        )
    };
    if copied != 0 {
        return Ok(());
    }
    // A session's process: its ClientHello names the host for its host row, whatever it is.
    let session = unsafe { SESSION_PROCS.get(&tgid) }.is_some();
    let verdict = match classify(base, n as usize) {
        Hello::NotTls { connect } => {
            count(COUNT_NOT_TLS);
            if !connect {
                untrack(sk, st.tgid);
            }
            return Ok(());
        }
        Hello::Other => {
            count(COUNT_OTHER_HOSTS);
            untrack(sk, st.tgid);
            if !session {
                return Ok(());
            }
            CONTACT_OTHER_HOST
        }
        Hello::Llm => CONTACT_LLM_HOST,
        Hello::NoSni => CONTACT_NO_SNI,
    };
    let per_process = config(CFG_PER_PROCESS) == Some(1);
    let mut hold = per_process
        && verdict != CONTACT_OTHER_HOST
        && match unsafe { PROCS.get(&tgid) } {
            None => true,
            // A process found not to be an agent is held again only for a known LLM host.
            Some(s) => *s == PROC_NOT_AGENT && verdict == CONTACT_LLM_HOST,
        };
    if hold && !daemon_alive() {
        count(COUNT_NO_DAEMON);
        // Rare (no daemon for a while): the next daemon reads it from this program's log.
        info!(
            ctx,
            "first contact: pid {} not held, no daemon heartbeat (its first calls go unprobed)",
            tgid
        );
        hold = false;
    }
    let estimate =
        verdict == CONTACT_LLM_HOST && unsafe { ESTIMATE_PORTS.get(&(st.port as u16)) }.is_some();
    if estimate {
        let mut next = *st;
        next.state = SOCK_HELLO_SENT;
        let _ = SOCKS.insert(&sk, &next, 0);
    } else if verdict != CONTACT_OTHER_HOST {
        untrack(sk, st.tgid);
    }
    // A process contacting an LLM endpoint is an agent to be: its children are a session's
    // from now on (user space marks it only once it has read the call, which a child forked
    // right after the call can beat).
    // (A process already in a session keeps its root.)
    if !session && (verdict == CONTACT_LLM_HOST || (verdict == CONTACT_NO_SNI && hold)) {
        let _ = SESSION_PROCS.insert(&tgid, &tgid, 0);
    }
    if !hold && !estimate && !session {
        return Ok(());
    }
    let mut flags = if estimate { CONTACT_ESTIMATE } else { 0 };
    if session {
        flags |= CONTACT_SESSION;
    }
    if hold {
        if PROCS.insert(&tgid, &PROC_HELD, 0).is_ok() {
            // Stop first, then tell user space (its SIGCONT must come after the stop).
            unsafe {
                generated::bpf_send_signal(SIGSTOP);
            }
            count(COUNT_HOLDS);
            flags |= CONTACT_HELD;
        } else {
            drop_count(DROP_PROCS_FULL, 1);
        }
    }
    // Not held here, yet its reply's size is wanted: the read hook must be on first.
    if estimate && flags & CONTACT_HELD == 0 {
        super::socket::reads_needed(tgid, st.port);
    }
    unsafe {
        core::ptr::write(
            base as *mut Contact,
            Contact {
                kind: EVENT_CONTACT,
                tgid,
                tid,
                verdict,
                flags,
                port: st.port,
                fd: call.fd(),
                sock: sk,
                ts_ns: now(),
                call_len: if len > u32::MAX as u64 {
                    u32::MAX
                } else {
                    len as u32
                },
                len: n,
            },
        );
        let total = HDR + (n as usize & (2 * LOOK - 1));
        let record = core::slice::from_raw_parts(base as *const u8, total);
        let wake = if flags & CONTACT_HELD != 0 {
            WAKE
        } else {
            data_flags()
        };
        if EVENTS.output::<[u8]>(record, wake).is_err() {
            drop_count(DROP_RINGBUF_EVENTS, 1);
            if flags & CONTACT_HELD != 0 {
                warn!(
                    ctx,
                    "first contact: pid {} stopped and its record dropped (ring buffer full); the daemon's watchdog decides it",
                    tgid
                );
            }
        }
    }
    Ok(())
}

/// A daemon beat within `HOLD_WITHOUT_DAEMON_SECS` (a crashed one is restarted in a few
/// seconds): it, or the one that follows, continues what is stopped here. A daemon that
/// stopped by choice may have no successor: nothing is held after it (`CFG_DAEMON_LEFT`).
#[inline(always)]
pub fn daemon_alive() -> bool {
    if config(CFG_DAEMON_LEFT) == Some(1) {
        return false;
    }
    let Some(beat) = config(CFG_HEARTBEAT) else {
        return false;
    };
    let now_secs = (now() / 1_000_000_000) as u32;
    now_secs.wrapping_sub(beat) <= HOLD_WITHOUT_DAEMON_SECS
}

/// The byte at `i` of the copied bytes (`i` is masked into the buffer; callers check it
/// against the copied length).
#[inline(always)]
fn at(base: *const u8, i: usize) -> u8 {
    unsafe { *base.add(HDR + (i & MASK)) }
}

#[inline(always)]
fn be16(base: *const u8, i: usize) -> usize {
    ((at(base, i) as usize) << 8) | at(base, i + 1) as usize
}

/// Reads a ClientHello: record header (5), handshake header (4), version (2), random (32),
/// session id, cipher suites, compression methods, then the extensions up to `server_name`.
#[inline(always)]
fn classify(base: *const u8, n: usize) -> Hello {
    if n < 44 || at(base, 0) != 0x16 || at(base, 1) != 0x03 || at(base, 5) != 0x01 {
        let connect = n >= 8
            && at(base, 0) == b'C'
            && at(base, 1) == b'O'
            && at(base, 2) == b'N'
            && at(base, 3) == b'N'
            && at(base, 4) == b'E'
            && at(base, 5) == b'C'
            && at(base, 6) == b'T'
            && at(base, 7) == b' ';
        return Hello::NotTls { connect };
    }
    let mut pos = 44 + at(base, 43) as usize;
    if pos + 2 > n {
        return Hello::NoSni;
    }
    pos += 2 + be16(base, pos);
    if pos + 1 > n {
        return Hello::NoSni;
    }
    pos += 1 + at(base, pos) as usize;
    // The extensions' total length, then each one: type (2), length (2), body.
    pos += 2;
    for _ in 0..MAX_EXTENSIONS {
        if pos + 4 > n {
            break;
        }
        let kind = be16(base, pos);
        let len = be16(base, pos + 2);
        pos += 4;
        if kind == 0 {
            // server_name: list length (2), name type (1), name length (2), name.
            if pos + 5 > n {
                return Hello::NoSni;
            }
            let name_len = be16(base, pos + 3);
            let start = pos + 5;
            if name_len == 0 || name_len > MAX_HOST_LEN || start + name_len > n {
                return Hello::Other;
            }
            return if is_llm_host(base, start, name_len) {
                Hello::Llm
            } else {
                Hello::Other
            };
        }
        pos += len;
    }
    Hello::NoSni
}

/// Hashes the name back to front (lowercased); every suffix that starts at `.` or `-` is
/// looked up in `LLM_SUFFIXES` on the way, the whole name in `LLM_HOSTS`.
#[inline(always)]
fn is_llm_host(base: *const u8, start: usize, len: usize) -> bool {
    let mut hash = FNV_OFFSET;
    for j in 0..MAX_HOST_LEN {
        if j >= len {
            break;
        }
        let c = at(base, start + len - 1 - j);
        hash = host_hash_step(hash, c);
        if (c == b'.' || c == b'-') && unsafe { LLM_SUFFIXES.get(&hash) }.is_some() {
            return true;
        }
    }
    unsafe { LLM_HOSTS.get(&hash) }.is_some()
}
