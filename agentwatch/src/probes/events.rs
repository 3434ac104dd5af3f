//! Decoding of ring-buffer records. A record's kind is checked before its layout is
//! trusted; an unknown kind or a short record is an error the caller counts.
use agentwatch_ebpf::{
    AeadLink, CONTACT_ESTIMATE, CONTACT_HELD, CONTACT_LLM_HOST, CONTACT_SESSION, Connect, Contact,
    DIR_WHOLE, EVENT_AEAD_LINK, EVENT_CONNECT, EVENT_CONTACT, EVENT_EXEC, EVENT_EXEC_ARGS,
    EVENT_EXIT, EVENT_FILE_HOLD, EVENT_FILE_OP, EVENT_FORK, EVENT_GATE_HOLD, EVENT_READ_HOLD,
    EVENT_SOCKET_BYTES, EVENT_SOCKET_CLOSE, EVENT_SOCKET_HOLD, EVENT_TLS_DATA, EVENT_TLS_HANDSHAKE,
    EXECED_NO, EXECED_YES, EXIT_CODE_UNKNOWN, ExecArgs, FileRecord, GateHold, HOLD_TLS_RECORD,
    Handshake, ProcEvent, ReadHold, SocketBytes, SocketClose, SocketHold, TlsData,
};

#[derive(Debug)]
pub enum KernelEvent<'a> {
    Fork {
        child: u32,
        parent: u32,
        ts_ns: u64,
        /// The tgid of the root of the session the child is in (0: none).
        session: u32,
    },
    Exec {
        tgid: u32,
        ts_ns: u64,
        filename: String,
    },
    Exit {
        tgid: u32,
        ts_ns: u64,
        /// The wait status the parent gets (`code << 8`, or the signal in the low 7 bits);
        /// `None` when the kernel's `task_struct` layout is not known.
        status: Option<u32>,
        /// The tgid of the root of the session the process was in (0: none).
        session: u32,
        /// A session's process: when it started (boot-clock ns), whether it ran a program
        /// of its own, its name (read at its exit).
        start_ns: Option<u64>,
        execed: Option<bool>,
        comm: String,
    },
    Tls {
        header: TlsData,
        data: &'a [u8],
    },
    /// A gated process was stopped at a TLS write; `preview` is the start of the buffer.
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
    /// A gated process was stopped at a write on a metered socket, whose queued bytes are
    /// held in the host under `cookie` (0: they could not be).
    SocketHold {
        tgid: u32,
        fd: u64,
        state: u32,
        ts_ns: u64,
        /// Bytes the write asked to send (the first iovec's for vectored calls).
        len: u64,
        cookie: u64,
    },
    /// The arguments of a process of a session, read at its exec (`[actions] argv`).
    ExecArgs {
        tgid: u32,
        args: Vec<String>,
        /// They were longer than the record holds: the last one may be cut.
        cut: bool,
    },
    /// A process of a session opened `path` for writing, deleted it, or renamed it to
    /// `new_path` (`FILE_*`), and the call succeeded. Paths as the process passed them
    /// (relative ones to `dfd`, `new_dfd`; `AT_FDCWD`: its working directory).
    FileOp {
        tgid: u32,
        op: u32,
        flags: u32,
        dfd: i32,
        path: String,
        new_dfd: i32,
        new_path: Option<String>,
        /// The directories the relative `path` and `new_path` are in, read by the kernel at
        /// the call's return (absolute, as the process saw them); `None`: not read, or cut.
        dir: Option<String>,
        new_dir: Option<String>,
        ts_ns: u64,
        /// The tgid of the root of the process's session.
        session: u32,
    },
    /// A process of a session connected a TCP socket to `addr`:`port`.
    Connect {
        tgid: u32,
        addr: std::net::IpAddr,
        port: u16,
        ts_ns: u64,
        /// The kernel's socket: a `Contact` of the same socket names its host.
        sock: u64,
        /// The tgid of the root of the process's session.
        session: u32,
    },
    /// A new TLS connection starts on `ssl` (the pointer may be a reused one).
    TlsHandshake {
        tgid: u32,
        ssl: u64,
        ts_ns: u64,
    },
    /// The first write of a new TCP connection was a ClientHello for an LLM host (`llm`)
    /// or for no host; `held`: the process is stopped until it is decided.
    Contact {
        tgid: u32,
        fd: u64,
        /// The kernel's key of the socket (to meter it).
        sock: u64,
        port: u16,
        llm: bool,
        held: bool,
        /// An LLM host on an estimate port: meter it unless a hook covers it.
        estimate: bool,
        /// The process is in a session: reported for its host row's SNI (and only for it when
        /// neither `held` nor `estimate`).
        session: bool,
        ts_ns: u64,
        hello: &'a [u8],
    },
    /// A metered socket moved `len` bytes.
    SocketBytes {
        tgid: u32,
        fd: u64,
        direction: u32,
        len: u32,
        ts_ns: u64,
    },
    /// A process stopped until the read hook is attached (a socket of it needs its reads
    /// seen): user space attaches it and continues the process.
    ReadHold {
        tgid: u32,
        port: u32,
        ts_ns: u64,
    },
    /// A process of a session stopped at its exec until the file uprobes cover it
    /// (`[actions] file_hooks = "libc"`): user space covers it and continues it.
    FileHold {
        tgid: u32,
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

/// The `len` bytes that follow a header `H`.
fn tail<H>(bytes: &[u8], len: u32) -> Option<&[u8]> {
    let start = std::mem::size_of::<H>();
    bytes.get(start..start + len as usize)
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
                    session: ev.session,
                },
                EVENT_EXEC => KernelEvent::Exec {
                    tgid: ev.tgid,
                    ts_ns: ev.ts_ns,
                    filename: cstr(&ev.filename),
                },
                _ => KernelEvent::Exit {
                    tgid: ev.tgid,
                    ts_ns: ev.ts_ns,
                    status: (ev.exit_code != EXIT_CODE_UNKNOWN).then_some(ev.exit_code),
                    session: ev.session,
                    start_ns: (ev.start_ns != 0).then_some(ev.start_ns),
                    execed: match ev.execed {
                        EXECED_YES => Some(true),
                        EXECED_NO => Some(false),
                        _ => None,
                    },
                    comm: cstr(&ev.comm),
                },
            })
        }
        EVENT_TLS_DATA => {
            let header = read::<TlsData>(bytes).ok_or_else(short)?;
            let data = tail::<TlsData>(bytes, header.len).ok_or_else(short)?;
            Ok(KernelEvent::Tls { header, data })
        }
        EVENT_GATE_HOLD => {
            let hold = read::<GateHold>(bytes).ok_or_else(short)?;
            let preview = tail::<GateHold>(bytes, hold.len).ok_or_else(short)?;
            Ok(KernelEvent::GateHold {
                tgid: hold.tgid,
                ssl: hold.conn,
                state: hold.state,
                ts_ns: hold.ts_ns,
                preview,
                record: hold.flags & HOLD_TLS_RECORD != 0,
            })
        }
        EVENT_SOCKET_HOLD => {
            let hold = read::<SocketHold>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::SocketHold {
                tgid: hold.tgid,
                fd: hold.fd,
                state: hold.state,
                ts_ns: hold.ts_ns,
                len: hold.len,
                cookie: hold.cookie,
            })
        }
        EVENT_TLS_HANDSHAKE => {
            let h = read::<Handshake>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::TlsHandshake {
                tgid: h.tgid,
                ssl: h.conn,
                ts_ns: h.ts_ns,
            })
        }
        EVENT_AEAD_LINK => {
            let link = read::<AeadLink>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::AeadLink {
                tgid: link.tgid,
                direction: link.direction,
                aead: link.aead,
                fd: link.fd,
                ts_ns: link.ts_ns,
            })
        }
        EVENT_CONTACT => {
            let c = read::<Contact>(bytes).ok_or_else(short)?;
            let hello = tail::<Contact>(bytes, c.len).ok_or_else(short)?;
            Ok(KernelEvent::Contact {
                tgid: c.tgid,
                fd: c.fd,
                sock: c.sock,
                port: c.port as u16,
                llm: c.verdict == CONTACT_LLM_HOST,
                held: c.flags & CONTACT_HELD != 0,
                estimate: c.flags & CONTACT_ESTIMATE != 0,
                session: c.flags & CONTACT_SESSION != 0,
                ts_ns: c.ts_ns,
                hello,
            })
        }
        EVENT_SOCKET_BYTES => {
            let b = read::<SocketBytes>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::SocketBytes {
                tgid: b.tgid,
                fd: b.fd,
                direction: b.direction,
                len: b.len,
                ts_ns: b.ts_ns,
            })
        }
        EVENT_CONNECT => {
            let c = read::<Connect>(bytes).ok_or_else(short)?;
            let addr = if c.family == 2 {
                let [a, b, c, d, ..] = c.addr;
                std::net::IpAddr::from([a, b, c, d])
            } else {
                std::net::IpAddr::from(c.addr)
            };
            Ok(KernelEvent::Connect {
                tgid: c.tgid,
                addr,
                port: c.port as u16,
                ts_ns: c.ts_ns,
                sock: c.sock,
                session: c.session,
            })
        }
        EVENT_EXEC_ARGS => {
            let a = read::<ExecArgs>(bytes).ok_or_else(short)?;
            let len = (a.len as usize).min(a.args.len());
            let args = a.args[..len]
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>();
            // The kernel keeps a NUL after each argument: the last piece is empty.
            let mut args = args;
            if args.last().is_some_and(String::is_empty) {
                args.pop();
            }
            Ok(KernelEvent::ExecArgs {
                tgid: a.tgid,
                args,
                cut: a.total > a.len,
            })
        }
        EVENT_FILE_OP => {
            let r = read::<FileRecord>(bytes).ok_or_else(short)?;
            let f = r.op;
            let text = |buf: &[u8], len: u32| -> Option<String> {
                let b = &buf[..(len as usize).min(buf.len())];
                let b = b.strip_suffix(&[0]).unwrap_or(b);
                (len > 0).then(|| String::from_utf8_lossy(b).into_owned())
            };
            Ok(KernelEvent::FileOp {
                tgid: f.tgid,
                op: f.op,
                flags: f.flags,
                dfd: f.dfd,
                path: text(&f.path, f.len).unwrap_or_default(),
                new_dfd: f.new_dfd,
                new_path: text(&f.new_path, f.new_len),
                dir: walked_dir(r.dir_state, &r.dir, r.dir_len),
                new_dir: walked_dir(r.new_dir_state, &r.new_dir, r.new_dir_len),
                ts_ns: f.ts_ns,
                session: f.session,
            })
        }
        EVENT_SOCKET_CLOSE => {
            let c = read::<SocketClose>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::SocketClose {
                tgid: c.tgid,
                fd: c.fd,
                ts_ns: c.ts_ns,
            })
        }
        EVENT_READ_HOLD => {
            let h = read::<ReadHold>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::ReadHold {
                tgid: h.tgid,
                port: h.port,
                ts_ns: h.ts_ns,
            })
        }
        EVENT_FILE_HOLD => {
            let h = read::<ReadHold>(bytes).ok_or_else(short)?;
            Ok(KernelEvent::FileHold {
                tgid: h.tgid,
                ts_ns: h.ts_ns,
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The bytes of a record (tests and the fuzz harness build records with it).
pub fn encode<T: Copy>(value: &T, tail: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; std::mem::size_of::<T>()];
    // SAFETY: `out` is exactly one `T` long; the ABI types are plain old data.
    unsafe { std::ptr::write_unaligned(out.as_mut_ptr().cast(), *value) };
    out.extend_from_slice(tail);
    out
}

/// A directory walked by the kernel (names from the innermost out, each NUL-ended) as an
/// absolute path; `None` unless the walk reached the root.
fn walked_dir(state: u32, buf: &[u8], len: u32) -> Option<String> {
    if state != DIR_WHOLE {
        return None;
    }
    let bytes = buf.get(..len as usize)?;
    let mut names: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.reverse();
    Some(format!("/{}", names.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwatch_ebpf::TLS_HEADER_LEN;

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
        let header = TlsData {
            kind: EVENT_TLS_DATA,
            tgid: 42,
            tid: 43,
            direction: 0,
            flags: 0,
            len: 3,
            conn: 0xdead,
            ts_ns: 7,
            call_len: 3,
            offset: 0,
        };
        match decode(&encode(&header, b"abc")).unwrap() {
            KernelEvent::Tls { header, data } => {
                assert_eq!((header.tgid, header.conn, data), (42, 0xdead, &b"abc"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_socket_hold_and_refuses_it_short() {
        let hold = SocketHold {
            kind: EVENT_SOCKET_HOLD,
            tgid: 7,
            tid: 8,
            state: 3,
            fd: 5,
            ts_ns: 99,
            len: 1200,
            cookie: 0xc00c1e,
        };
        let rec = encode(&hold, &[]);
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
        // Cut short (the cookie missing), it is a short record, not a hold without one.
        assert!(matches!(
            decode(&rec[..rec.len() - 8]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn decodes_a_held_contact_with_its_hello() {
        let contact = Contact {
            kind: EVENT_CONTACT,
            tgid: 9,
            tid: 10,
            verdict: agentwatch_ebpf::CONTACT_NO_SNI,
            flags: CONTACT_HELD,
            port: 8443,
            fd: 4,
            sock: 0xffff_8880_0000_1000,
            ts_ns: 5,
            call_len: 600,
            len: 2,
        };
        let rec = encode(&contact, &[0x16, 0x03]);
        match decode(&rec).unwrap() {
            KernelEvent::Contact {
                tgid: 9,
                fd: 4,
                port: 8443,
                llm: false,
                held: true,
                hello,
                ..
            } => assert_eq!(hello, &[0x16, 0x03]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode(&rec[..rec.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }
}
