//! TLS records seen at the AEAD layer (aws-lc's `EVP_AEAD_CTX_seal/open` under rustls, in
//! opaque binaries such as Codex) turned back into per-connection byte streams.
//!
//! Each connection direction has its own AEAD context, so a context names half a connection.
//! The kernel links a context to its socket: a sealed record goes out on the thread's next
//! socket write, an opened one came from its last socket read. Sealed records wait (bounded)
//! for the link that follows them; opened ones for their context's first link. TLS 1.3 puts the record's real content type as the last non-zero
//! byte of the plaintext: only application data (0x17) is kept; handshake messages, alerts
//! and session tickets under the same keys are dropped.
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use agentwatch_ebpf::DIR_WRITE;

/// Connection ids of AEAD-captured connections have this bit set (plain-socket ids use bit
/// 63; SSL pointers have neither). Below it: a generation (fd reuse) and the fd.
pub const AEAD_CONN: u64 = 1 << 62;

/// TLS 1.3 inner content type of application data.
const APPLICATION_DATA: u8 = 0x17;
/// Records waiting for their context's link, per context.
const MAX_PENDING_RECORDS: usize = 256;
/// Contexts tracked at most; past it the least recently used is forgotten.
const MAX_CONTEXTS: usize = 4096;
/// A record's plaintext is at most 2^14 bytes plus type and padding (RFC 8446 §5.4).
const MAX_RECORD: usize = (1 << 14) + 256;

#[derive(Debug, Clone, Default, Serialize)]
pub struct AeadStats {
    /// Whole records reassembled from AEAD chunks.
    pub aead_records: u64,
    /// Application-data records passed on to their connection.
    pub aead_app_records: u64,
    /// Records of other content types (handshake, alerts, tickets): dropped by design.
    pub aead_other_records: u64,
    /// Records dropped because their context never got linked to a socket in time, or the
    /// wait queue was full.
    pub aead_unlinked_dropped: u64,
    /// Records that did not parse as TLS 1.3 inner plaintext (all zero, or over size).
    pub aead_malformed: u64,
    /// Contexts forgotten at `MAX_CONTEXTS`.
    pub aead_contexts_evicted: u64,
    /// Connections found (a socket whose write context changed after application data).
    pub aead_connections: u64,
}

/// What the AEAD layer hands to the connection layer.
#[derive(Debug, PartialEq, Eq)]
pub enum AeadOut {
    Data {
        tgid: u32,
        conn: u64,
        direction: u32,
        data: Vec<u8>,
        loss: bool,
        ts_ns: u64,
    },
    /// The connection is over (its socket carries a new one).
    Closed { tgid: u32, conn: u64, ts_ns: u64 },
}

#[derive(Default)]
struct Context {
    fd: Option<u64>,
    direction: u32,
    /// The record being reassembled from chunks, and whether bytes were lost in it.
    partial: Vec<u8>,
    partial_loss: bool,
    pending: VecDeque<(Vec<u8>, bool, u64)>,
    last_used: u64,
}

#[derive(Default)]
struct Socket {
    write_ctx: Option<u64>,
    generation: u64,
    app_data: bool,
}

#[derive(Default)]
pub struct AeadStreams {
    contexts: HashMap<(u32, u64), Context>,
    sockets: HashMap<(u32, u64), Socket>,
    pub stats: AeadStats,
    clock: u64,
}

impl AeadStreams {
    /// One chunk of a sealed (write) or opened (read) record of context `aead`: `offset` of
    /// `call_len` bytes in the record.
    #[allow(clippy::too_many_arguments)]
    pub fn on_chunk(
        &mut self,
        tgid: u32,
        aead: u64,
        direction: u32,
        offset: u64,
        call_len: u64,
        loss: bool,
        data: &[u8],
        ts_ns: u64,
        out: &mut Vec<AeadOut>,
    ) {
        let ctx = self.context(tgid, aead, direction);
        if offset == 0 {
            ctx.partial.clear();
            ctx.partial_loss = false;
        }
        ctx.partial_loss |= loss || offset != ctx.partial.len() as u64;
        if ctx.partial.len() + data.len() <= MAX_RECORD {
            ctx.partial.extend_from_slice(data);
        } else {
            ctx.partial_loss = true;
        }
        if offset + data.len() as u64 != call_len {
            return;
        }
        let record = std::mem::take(&mut ctx.partial);
        let loss = std::mem::take(&mut ctx.partial_loss);
        self.stats.aead_records += 1;
        let Some(content) = app_data(&record, &mut self.stats) else {
            return;
        };
        let ctx = self
            .contexts
            .get_mut(&(tgid, aead))
            .expect("context just used");
        // A sealed record goes out on the socket the link that follows it names: a context
        // whose memory was reused by a new connection still carries the old socket's fd
        // until then. (An opened record's link comes before it.)
        match ctx.fd {
            Some(fd) if direction != DIR_WRITE => {
                let item = (content.to_vec(), loss, ts_ns);
                self.deliver(tgid, fd, direction, item, out);
            }
            _ => {
                if ctx.pending.len() >= MAX_PENDING_RECORDS {
                    ctx.pending.pop_front();
                    self.stats.aead_unlinked_dropped += 1;
                }
                ctx.pending.push_back((content.to_vec(), loss, ts_ns));
            }
        }
    }

    /// Context `aead` was used next to a socket syscall on `fd`.
    pub fn on_link(
        &mut self,
        tgid: u32,
        direction: u32,
        aead: u64,
        fd: u64,
        ts_ns: u64,
        out: &mut Vec<AeadOut>,
    ) {
        let ctx = self.context(tgid, aead, direction);
        let relinked = ctx.fd != Some(fd);
        ctx.fd = Some(fd);
        let pending: Vec<_> = ctx.pending.drain(..).collect();
        if direction == DIR_WRITE && relinked {
            // A new write context on a socket that already carried application data: the
            // fd now holds a new connection (TLS 1.3 handshake keys → application keys is
            // a change before any application data, so it does not count).
            let socket = self.sockets.entry((tgid, fd)).or_default();
            if socket.write_ctx.is_some_and(|c| c != aead) && socket.app_data {
                let conn = conn_id(fd, socket.generation);
                socket.generation += 1;
                socket.app_data = false;
                self.stats.aead_connections += 1;
                out.push(AeadOut::Closed { tgid, conn, ts_ns });
            }
            socket.write_ctx = Some(aead);
        }
        for item in pending {
            self.deliver(tgid, fd, direction, item, out);
        }
    }

    /// The state of context `aead` of `tgid` (made, evicting the least recently used if
    /// full), marked as just used.
    fn context(&mut self, tgid: u32, aead: u64, direction: u32) -> &mut Context {
        self.clock += 1;
        if !self.contexts.contains_key(&(tgid, aead)) && self.contexts.len() >= MAX_CONTEXTS {
            self.evict();
        }
        let clock = self.clock;
        let ctx = self.contexts.entry((tgid, aead)).or_default();
        ctx.direction = direction;
        ctx.last_used = clock;
        ctx
    }

    fn deliver(
        &mut self,
        tgid: u32,
        fd: u64,
        direction: u32,
        (data, loss, ts_ns): (Vec<u8>, bool, u64),
        out: &mut Vec<AeadOut>,
    ) {
        let socket = self.sockets.entry((tgid, fd)).or_default();
        if !socket.app_data && socket.generation == 0 {
            self.stats.aead_connections += 1;
        }
        socket.app_data = true;
        self.stats.aead_app_records += 1;
        out.push(AeadOut::Data {
            tgid,
            conn: conn_id(fd, socket.generation),
            direction,
            data,
            loss,
            ts_ns,
        });
    }

    /// Forgets an exited process.
    pub fn forget(&mut self, tgid: u32) {
        self.contexts.retain(|(t, _), ctx| {
            if *t == tgid {
                self.stats.aead_unlinked_dropped += ctx.pending.len() as u64;
            }
            *t != tgid
        });
        self.sockets.retain(|(t, _), _| *t != tgid);
    }

    fn evict(&mut self) {
        if let Some(key) = self
            .contexts
            .iter()
            .min_by_key(|(_, c)| c.last_used)
            .map(|(k, _)| *k)
            && let Some(ctx) = self.contexts.remove(&key)
        {
            self.stats.aead_contexts_evicted += 1;
            self.stats.aead_unlinked_dropped += ctx.pending.len() as u64;
        }
    }
}

fn conn_id(fd: u64, generation: u64) -> u64 {
    AEAD_CONN | ((generation & 0x3fff_ffff) << 32) | (fd & 0xffff_ffff)
}

/// The application data of a TLS 1.3 inner plaintext (content, type, zero padding), or None
/// for other content types.
fn app_data<'a>(record: &'a [u8], stats: &mut AeadStats) -> Option<&'a [u8]> {
    let Some(type_at) = record.iter().rposition(|b| *b != 0) else {
        stats.aead_malformed += 1;
        return None;
    };
    if record[type_at] != APPLICATION_DATA {
        stats.aead_other_records += 1;
        return None;
    }
    Some(&record[..type_at])
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentwatch_ebpf::DIR_READ;

    fn record(content: &[u8], kind: u8, padding: usize) -> Vec<u8> {
        let mut r = content.to_vec();
        r.push(kind);
        r.extend(std::iter::repeat_n(0, padding));
        r
    }

    fn seal(s: &mut AeadStreams, ctx: u64, rec: &[u8], out: &mut Vec<AeadOut>) {
        s.on_chunk(7, ctx, DIR_WRITE, 0, rec.len() as u64, false, rec, 1, out);
    }

    fn data(out: &[AeadOut]) -> Vec<(u64, u32, Vec<u8>)> {
        out.iter()
            .filter_map(|o| match o {
                AeadOut::Data {
                    conn,
                    direction,
                    data,
                    ..
                } => Some((*conn, *direction, data.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sealed_records_wait_for_their_socket_then_flow_in_order() {
        let mut s = AeadStreams::default();
        let mut out = Vec::new();
        // Handshake under handshake keys: dropped, but links the socket.
        seal(&mut s, 0xa, &record(b"finished", 0x16, 0), &mut out);
        s.on_link(7, DIR_WRITE, 0xa, 5, 1, &mut out);
        seal(
            &mut s,
            0xb,
            &record(b"POST /v1/responses", 0x17, 3),
            &mut out,
        );
        seal(&mut s, 0xb, &record(b" HTTP/1.1\r\n", 0x17, 0), &mut out);
        assert!(out.is_empty(), "nothing before the link: {out:?}");
        s.on_link(7, DIR_WRITE, 0xb, 5, 2, &mut out);
        // The response: the read link comes before the opened record.
        s.on_link(7, DIR_READ, 0xc, 5, 3, &mut out);
        let resp = record(b"HTTP/1.1 200 OK\r\n", 0x17, 0);
        s.on_chunk(
            7,
            0xc,
            DIR_READ,
            0,
            resp.len() as u64,
            false,
            &resp,
            3,
            &mut out,
        );
        // A session ticket under the application keys: dropped.
        let ticket = record(b"ticket", 0x16, 0);
        s.on_chunk(7, 0xc, DIR_READ, 0, 7, false, &ticket, 3, &mut out);
        let conn = conn_id(5, 0);
        assert_eq!(
            data(&out),
            vec![
                (conn, DIR_WRITE, b"POST /v1/responses".to_vec()),
                (conn, DIR_WRITE, b" HTTP/1.1\r\n".to_vec()),
                (conn, DIR_READ, b"HTTP/1.1 200 OK\r\n".to_vec()),
            ]
        );
        assert_eq!(s.stats.aead_other_records, 2);
        assert_eq!(s.stats.aead_connections, 1);
    }

    #[test]
    fn records_in_chunks_are_reassembled_and_gaps_flagged() {
        let mut s = AeadStreams::default();
        let mut out = Vec::new();
        let rec = record(&[b'x'; 40], 0x17, 0);
        s.on_chunk(7, 0xb, DIR_WRITE, 0, 41, false, &rec[..20], 1, &mut out);
        assert!(out.is_empty());
        s.on_chunk(7, 0xb, DIR_WRITE, 20, 41, false, &rec[20..], 1, &mut out);
        s.on_link(7, DIR_WRITE, 0xb, 5, 1, &mut out);
        assert_eq!(data(&out)[0].2, vec![b'x'; 40]);
        out.clear();
        // The first chunk of the next record is missing: what arrives is flagged lost.
        s.on_chunk(7, 0xb, DIR_WRITE, 20, 41, false, &rec[20..], 1, &mut out);
        s.on_link(7, DIR_WRITE, 0xb, 5, 1, &mut out);
        assert!(
            matches!(out[0], AeadOut::Data { loss: true, .. }),
            "{out:?}"
        );
    }

    #[test]
    fn a_new_connection_on_a_reused_fd_closes_the_old_one() {
        let mut s = AeadStreams::default();
        let mut out = Vec::new();
        seal(
            &mut s,
            0xb,
            &record(b"GET / HTTP/1.1\r\n\r\n", 0x17, 0),
            &mut out,
        );
        s.on_link(7, DIR_WRITE, 0xb, 5, 1, &mut out);
        // The fd is closed and reused: a new handshake context, then new application keys.
        s.on_link(7, DIR_WRITE, 0xd, 5, 2, &mut out);
        seal(
            &mut s,
            0xe,
            &record(b"GET /2 HTTP/1.1\r\n\r\n", 0x17, 0),
            &mut out,
        );
        s.on_link(7, DIR_WRITE, 0xe, 5, 3, &mut out);
        assert_eq!(
            out[1],
            AeadOut::Closed {
                tgid: 7,
                conn: conn_id(5, 0),
                ts_ns: 2
            }
        );
        assert_eq!(data(&out)[1].0, conn_id(5, 1));
        assert_eq!(s.stats.aead_connections, 2);
    }

    #[test]
    fn a_context_address_reused_by_a_new_connection_follows_its_new_socket() {
        let mut s = AeadStreams::default();
        let mut out = Vec::new();
        seal(&mut s, 0xb, &record(b"GET /v1/models", 0x17, 0), &mut out);
        s.on_link(7, DIR_WRITE, 0xb, 5, 1, &mut out);
        // That connection closes; the next one (fd 6) gets its write context at the same
        // address. Its first record is sealed before the write that links it to fd 6.
        seal(
            &mut s,
            0xb,
            &record(b"GET /v1/responses", 0x17, 0),
            &mut out,
        );
        assert_eq!(data(&out).len(), 1, "waits for its link: {out:?}");
        s.on_link(7, DIR_WRITE, 0xb, 6, 2, &mut out);
        assert_eq!(
            data(&out),
            vec![
                (conn_id(5, 0), DIR_WRITE, b"GET /v1/models".to_vec()),
                (conn_id(6, 0), DIR_WRITE, b"GET /v1/responses".to_vec()),
            ]
        );
    }

    #[test]
    fn bad_records_and_unlinked_floods_are_counted_not_kept() {
        let mut s = AeadStreams::default();
        let mut out = Vec::new();
        seal(&mut s, 0xb, &[0, 0, 0], &mut out);
        assert_eq!(s.stats.aead_malformed, 1);
        for _ in 0..MAX_PENDING_RECORDS + 3 {
            seal(&mut s, 0xf, &record(b"x", 0x17, 0), &mut out);
        }
        assert_eq!(s.stats.aead_unlinked_dropped, 3);
        s.forget(7);
        assert_eq!(
            s.stats.aead_unlinked_dropped,
            3 + MAX_PENDING_RECORDS as u64
        );
        assert!(out.is_empty());
    }
}
