//! TLS libraries with an SSL-style API: OpenSSL and BoringSSL (exported or located by
//! analysis), GnuTLS (`gnutls_record_send/recv` have the same shape). Arguments are kept
//! from entry to return; the bytes a call moved go out in ordered chunks.
use agentwatch_ebpf::*;
use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use super::gate::{gate, rearm_after_read};
use crate::maps::{EVENTS, LOSS, SCRATCH, SSL_ARGS};
use crate::output::{count, current, data_flags, drop_count, is_self, now, record};

/// Entry of `SSL_write(ssl, buf, num)`.
#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    let _ = try_stash(&ctx, None, true);
    0
}

/// Entry of `SSL_write_ex(ssl, buf, num, *written)`.
#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = try_stash(&ctx, Some(3), true);
    0
}

/// Entry of OpenSSL 3.3+'s internal `ssl_write_internal(ssl, buf, num, flags, *written)`
/// (located by analysis in static builds, where `SSL_write_ex` has no symbol).
#[uprobe]
pub fn ssl_write_flags_enter(ctx: ProbeContext) -> u32 {
    let _ = try_stash(&ctx, Some(4), true);
    0
}

/// Entry of `SSL_read(ssl, buf, num)`.
#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let _ = try_stash(&ctx, None, false);
    0
}

/// Entry of `SSL_read_ex(ssl, buf, num, *readbytes)`.
#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = try_stash(&ctx, Some(3), false);
    0
}

#[uretprobe]
pub fn ssl_write_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_ssl_exit(&ctx, DIR_WRITE);
    0
}

#[uretprobe]
pub fn ssl_read_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_ssl_exit(&ctx, DIR_READ);
    0
}

/// Entry of `SSL_do_handshake(ssl)` (also reached from `SSL_connect`/`SSL_accept`).
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if !is_self(tgid)
        && let Some(ssl) = ctx.arg::<u64>(0)
    {
        new_connection(pid_tgid, ssl);
    }
    0
}

/// `out_len_arg`: the argument holding `size_t *written` / `*readbytes` (the `_ex`
/// calls, which return 1), or none (the count is the return value).
#[inline(always)]
fn try_stash(ctx: &ProbeContext, out_len_arg: Option<usize>, write: bool) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    if is_self(tgid) {
        return Ok(());
    }
    let ssl: u64 = ctx.arg(0).ok_or(1)?;
    let buf: u64 = ctx.arg(1).ok_or(1)?;
    let out_len: u64 = match out_len_arg {
        Some(n) => ctx.arg(n).ok_or(1)?,
        None => 0,
    };
    if write {
        let num: u64 = ctx.arg(2).ok_or(1)?;
        let _ = gate(pid_tgid, ssl, buf, num, 0);
    }
    let args = SslArgs { ssl, buf, out_len };
    if SSL_ARGS.insert(&pid_tgid, &args, 0).is_err() {
        drop_count(DROP_ARGS_MAP_FULL, 1);
    }
    Ok(())
}

#[inline(always)]
fn try_ssl_exit(ctx: &RetProbeContext, direction: u32) -> Result<(), i64> {
    count(COUNT_UPROBE_HITS);
    let (pid_tgid, tgid, _) = current();
    let args = match unsafe { SSL_ARGS.get(&pid_tgid) } {
        Some(a) => *a,
        None => return Ok(()),
    };
    let _ = SSL_ARGS.remove(&pid_tgid);
    let ret = ctx.ret::<i64>() as i32;
    // Only bytes of successful calls count: a call that fails (e.g. before the
    // handshake) is retried by the library with the same buffer.
    let len: u64 = if args.out_len != 0 {
        if ret != 1 {
            return Ok(());
        }
        unsafe { bpf_probe_read_user(args.out_len as *const u64) }.map_err(|e| e as i64)?
    } else {
        if ret <= 0 {
            return Ok(());
        }
        ret as u64
    };
    if direction == DIR_READ {
        rearm_after_read(tgid);
    }
    emit_tls(pid_tgid, direction, args.ssl, args.buf, len, 0)
}

/// A new connection on `conn` (a handshake, or a connect on a reused fd): its state restarts.
#[inline(always)]
pub fn new_connection(pid_tgid: u64, conn: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    for direction in [DIR_WRITE, DIR_READ] {
        let _ = LOSS.remove(&ConnKey {
            tgid,
            direction,
            ssl: conn,
        });
    }
    record(&Handshake {
        kind: EVENT_TLS_HANDSHAKE,
        tgid,
        tid: pid_tgid as u32,
        _pad: 0,
        conn,
        ts_ns: now(),
    });
}

/// Marks `conn` as having lost bytes in `direction`: its next chunk says so.
#[inline(always)]
pub fn mark_loss(tgid: u32, direction: u32, conn: u64) {
    let _ = LOSS.insert(
        &ConnKey {
            tgid,
            direction,
            ssl: conn,
        },
        &1,
        0,
    );
}

/// The `len` bytes at `buf` that a call moved on `conn`, as ordered chunks, with `extra`
/// flags on every chunk (`TLS_FLAG_AEAD`).
#[inline(always)]
pub fn emit_tls(
    pid_tgid: u64,
    direction: u32,
    conn: u64,
    buf: u64,
    len: u64,
    extra: u32,
) -> Result<(), i64> {
    let tgid = (pid_tgid >> 32) as u32;
    let key = ConnKey {
        tgid,
        direction,
        ssl: conn,
    };
    let mut flags = 0u32;
    if unsafe { LOSS.get(&key) }.is_some() {
        flags |= TLS_FLAG_LOSS_BEFORE;
        let _ = LOSS.remove(&key);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(1)?;
    let chunk = Chunk {
        scratch,
        key: &key,
        pid_tgid,
        buf,
        call_len: len,
        ts_ns: now(),
    };
    // Full chunks have a constant size and the remainder is masked, so the verifier
    // sees a loop whose iterations do not branch into each other (linear, not 2^n).
    let full = len / DATA_CHUNK as u64;
    for i in 0..MAX_CHUNKS as u64 {
        if i >= full {
            break;
        }
        chunk.emit(i * DATA_CHUNK as u64, DATA_CHUNK as u32, flags | extra)?;
        flags = 0;
    }
    if full < MAX_CHUNKS as u64 {
        let rem = (len & (DATA_CHUNK as u64 - 1)) as u32;
        if rem > 0 {
            chunk.emit(full * DATA_CHUNK as u64, rem, flags | extra)?;
        }
    } else {
        let copied = MAX_CHUNKS as u64 * DATA_CHUNK as u64;
        if len > copied {
            // Over MAX_CHUNKS: the rest is not copied; the stream must resynchronise.
            drop_count(DROP_TRUNCATED_BYTES, len - copied);
            let _ = LOSS.insert(&key, &1, 0);
        }
    }
    Ok(())
}

struct Chunk<'a> {
    scratch: *mut Scratch,
    key: &'a ConnKey,
    pid_tgid: u64,
    buf: u64,
    call_len: u64,
    ts_ns: u64,
}

impl Chunk<'_> {
    /// Copies `n` (1..=DATA_CHUNK) bytes at `offset` of the call's buffer into one record.
    #[inline(always)]
    fn emit(&self, offset: u64, n: u32, flags: u32) -> Result<(), i64> {
        if n == 0 || n as usize > DATA_CHUNK {
            return Err(1);
        }
        unsafe {
            let base = (*self.scratch).bytes.as_mut_ptr();
            let dst = base.add(TLS_HEADER_LEN) as *mut core::ffi::c_void;
            let src = (self.buf + offset) as *const core::ffi::c_void;
            if generated::bpf_probe_read_user(dst, n, src) != 0 {
                drop_count(DROP_READ_FAILED_BYTES, self.call_len - offset);
                let _ = LOSS.insert(self.key, &1, 0);
                return Err(1);
            }
            core::ptr::write(
                base as *mut TlsData,
                TlsData {
                    kind: EVENT_TLS_DATA,
                    tgid: self.key.tgid,
                    tid: self.pid_tgid as u32,
                    direction: self.key.direction,
                    flags,
                    len: n,
                    conn: self.key.ssl,
                    ts_ns: self.ts_ns,
                    call_len: self.call_len,
                    offset,
                },
            );
            let total = TLS_HEADER_LEN + n as usize;
            let record = core::slice::from_raw_parts(base as *const u8, total);
            if EVENTS.output::<[u8]>(record, data_flags()).is_err() {
                drop_count(DROP_RINGBUF_EVENTS, 1);
                drop_count(DROP_RINGBUF_BYTES, self.call_len - offset);
                let _ = LOSS.insert(self.key, &1, 0);
                return Err(1);
            }
        }
        Ok(())
    }
}
