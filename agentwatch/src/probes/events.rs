//! Decoding of ring-buffer records. A record's kind is checked before its layout is
//! trusted; an unknown kind or a short record is an error the caller counts.
use agentwatch_ebpf::{
    EVENT_AEAD_LINK, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_GATE_HOLD, EVENT_SOCKET_BYTES,
    EVENT_SOCKET_CLOSE, EVENT_TLS_DATA, EVENT_TLS_HANDSHAKE, EVENT_TLS_HELLO, ProcEvent,
    TLS_HEADER_LEN, TlsDataHeader,
};

#[derive(Debug)]
pub enum KernelEvent<'a> {
    Fork {
        child: u32,
        parent: u32,
        ts_ns: u64,
    },
    Exec {
        tgid: u32,
        ts_ns: u64,
        filename: String,
    },
    Exit {
        tgid: u32,
        ts_ns: u64,
    },
    Tls {
        header: TlsDataHeader,
        data: &'a [u8],
    },
    /// A gated process was stopped at an SSL write; `preview` is the start of the buffer.
    GateHold {
        tgid: u32,
        ssl: u64,
        /// The `GATE_*` state the write found.
        state: u32,
        ts_ns: u64,
        preview: &'a [u8],
        /// The held write is one TLS record (`HOLD_TLS_RECORD`).
        record: bool,
    },
    /// A gated process was stopped after a write syscall on a metered socket (`HOLD_SOCKET`),
    /// whose queued bytes are held in the host under `cookie` (0: they could not be).
    SocketHold {
        tgid: u32,
        fd: u64,
        state: u32,
        ts_ns: u64,
        /// Bytes the write asked to send (the first iovec's for vectored calls).
        len: u64,
        cookie: u64,
    },
    /// A new TLS connection starts on `ssl` (the pointer may be a reused one).
    TlsHandshake {
        tgid: u32,
        ssl: u64,
        ts_ns: u64,
    },
    /// The first bytes written on a socket connected to an estimate port (a ClientHello).
    TlsHello {
        tgid: u32,
        fd: u64,
        ts_ns: u64,
        bytes: &'a [u8],
    },
    /// A metered socket moved `len` bytes.
    SocketBytes {
        tgid: u32,
        fd: u64,
        direction: u32,
        len: u32,
        ts_ns: u64,
    },
    /// A metered socket was closed.
    SocketClose {
        tgid: u32,
        fd: u64,
        ts_ns: u64,
    },
    /// An AEAD context was used next to a socket syscall on `fd` (see `EVENT_AEAD_LINK`).
    AeadLink {
        tgid: u32,
        direction: u32,
        aead: u64,
        fd: u64,
        ts_ns: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("ring buffer record of unknown kind {0}")]
    UnknownKind(u32),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the types are plain old data and read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let kind = read::<u32>(bytes).ok_or(DecodeError::Short {
        kind: 0,
        len: bytes.len(),
    })?;
    let short = || DecodeError::Short {
        kind,
        len: bytes.len(),
    };
    match kind {
        EVENT_FORK | EVENT_EXEC | EVENT_EXIT => {
            let ev = read::<ProcEvent>(bytes).ok_or_else(short)?;
            Ok(match kind {
                EVENT_FORK => KernelEvent::Fork {
                    child: ev.tgid,
                    parent: ev.ppid,
                    ts_ns: ev.ts_ns,
                },
                EVENT_EXEC => KernelEvent::Exec {
                    tgid: ev.tgid,
                    ts_ns: ev.ts_ns,
                    filename: cstr(&ev.filename),
                },
                _ => KernelEvent::Exit {
                    tgid: ev.tgid,
                    ts_ns: ev.ts_ns,
                },
            })
        }
        EVENT_TLS_DATA => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            let data = bytes
                .get(TLS_HEADER_LEN..TLS_HEADER_LEN + header.len as usize)
                .ok_or_else(short)?;
            Ok(KernelEvent::Tls { header, data })
        }
        EVENT_GATE_HOLD => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            if header.offset & agentwatch_ebpf::HOLD_SOCKET != 0 {
                let hold = read::<agentwatch_ebpf::SocketHold>(bytes).ok_or_else(short)?;
                return Ok(KernelEvent::SocketHold {
                    tgid: header.tgid,
                    fd: header.ssl,
                    state: header.flags,
                    ts_ns: header.ts_ns,
                    len: header.call_len,
                    cookie: hold.cookie,
                });
            }
            let preview = bytes
                .get(TLS_HEADER_LEN..TLS_HEADER_LEN + header.len as usize)
                .ok_or_else(short)?;
            Ok(KernelEvent::GateHold {
                tgid: header.tgid,
                ssl: header.ssl,
                state: header.flags,
                ts_ns: header.ts_ns,
                preview,
                record: header.offset & agentwatch_ebpf::HOLD_TLS_RECORD != 0,
            })
        }
        EVENT_TLS_HANDSHAKE => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::TlsHandshake {
                tgid: header.tgid,
                ssl: header.ssl,
                ts_ns: header.ts_ns,
            })
        }
        EVENT_AEAD_LINK => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::AeadLink {
                tgid: header.tgid,
                direction: header.direction,
                aead: header.ssl,
                fd: header.offset,
                ts_ns: header.ts_ns,
            })
        }
        EVENT_TLS_HELLO => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            let data = bytes
                .get(TLS_HEADER_LEN..TLS_HEADER_LEN + header.len as usize)
                .ok_or_else(short)?;
            Ok(KernelEvent::TlsHello {
                tgid: header.tgid,
                fd: header.ssl,
                ts_ns: header.ts_ns,
                bytes: data,
            })
        }
        EVENT_SOCKET_BYTES => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::SocketBytes {
                tgid: header.tgid,
                fd: header.ssl,
                direction: header.direction,
                len: header.len,
                ts_ns: header.ts_ns,
            })
        }
        EVENT_SOCKET_CLOSE => {
            let header = read::<TlsDataHeader>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::SocketClose {
                tgid: header.tgid,
                fd: header.ssl,
                ts_ns: header.ts_ns,
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(matches!(decode(&[1, 0]), Err(DecodeError::Short { .. })));
        assert_eq!(
            decode(&[99, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        let mut tls = vec![0u8; TLS_HEADER_LEN + 3];
        tls[0] = EVENT_TLS_DATA as u8;
        tls[20] = 10; // len = 10 > 3 payload bytes present
        assert!(matches!(decode(&tls), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn decodes_tls_payload() {
        let header = TlsDataHeader {
            kind: EVENT_TLS_DATA,
            tgid: 42,
            tid: 43,
            direction: 0,
            flags: 0,
            len: 3,
            ssl: 0xdead,
            ts_ns: 7,
            call_len: 3,
            offset: 0,
        };
        let mut rec = vec![0u8; TLS_HEADER_LEN];
        // SAFETY: rec is exactly TLS_HEADER_LEN bytes.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast(), header) };
        rec.extend_from_slice(b"abc");
        match decode(&rec).unwrap() {
            KernelEvent::Tls { header, data } => {
                assert_eq!((header.tgid, header.ssl, data), (42, 0xdead, &b"abc"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_socket_hold_and_refuses_it_short() {
        let hold = agentwatch_ebpf::SocketHold {
            header: TlsDataHeader {
                kind: EVENT_GATE_HOLD,
                tgid: 7,
                tid: 8,
                direction: 1,
                flags: 3,
                len: 0,
                ssl: 5,
                ts_ns: 99,
                call_len: 1200,
                offset: agentwatch_ebpf::HOLD_SOCKET,
            },
            cookie: 0xc00c1e,
        };
        let mut rec = vec![0u8; std::mem::size_of::<agentwatch_ebpf::SocketHold>()];
        // SAFETY: rec is exactly one SocketHold long.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast(), hold) };
        let event = decode(&rec).unwrap();
        assert!(
            matches!(
                event,
                KernelEvent::SocketHold {
                    tgid: 7,
                    fd: 5,
                    state: 3,
                    ts_ns: 99,
                    len: 1200,
                    cookie: 0xc00c1e,
                }
            ),
            "{event:?}"
        );
        // The header alone (the cookie cut off) is a short record, not a hold without one.
        assert!(matches!(
            decode(&rec[..TLS_HEADER_LEN]),
            Err(DecodeError::Short { .. })
        ));
    }
}
