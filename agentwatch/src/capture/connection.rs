//! One observed TLS connection: the process's role, told by the first bytes of either
//! direction, then the framing that turns the connection's bytes into exchanges.

use super::http1::{Http1, Upgrade};
use super::http2::{Http2, Http2Hold};
use super::sniff::{H2_PREFACE, Sniff, sniff};
use super::transport::{Direction, PerDirection, Transport};
use super::websocket::WebSocket;
use super::{CaptureEvent, CaptureLimits, CaptureStats};

/// What the first bytes of a direction make of the observed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// It writes requests: its calls are ours to account.
    Client,
    /// It writes responses (a local gateway, a mock server): ignored.
    ServerSide,
    /// It wrote the HTTP/2 preface: its calls are ours, framed by [`Http2`].
    Http2Client,
}

/// A direction's first bytes, kept until they tell the role.
#[derive(Debug, Default)]
struct Sniffed {
    bytes: Vec<u8>,
    /// When the first of them came.
    first_at_ns: u64,
    /// Bytes of it were lost: wait for a chunk that starts a message.
    resync: bool,
}

/// Where a connection is.
///
/// An enum rather than a `Box<dyn Transport>`: the switches between framings (the preface to
/// HTTP/2 here, a 101 to WebSocket in [`Http1`]) and [`Connection::http2_hold`] need to know
/// which framing is current. Bytes, loss and close reach it through [`State::transport`].
#[derive(Debug)]
enum State {
    /// No role known yet.
    Sniffing(PerDirection<Sniffed>),
    Http1(Box<Http1>),
    /// The process wrote the preface.
    Http2(Box<Http2>),
    /// A request of the process was upgraded to a WebSocket.
    WebSocket(Box<WebSocket>),
    /// The process is the server, or speaks something else (an upgrade other than WebSocket
    /// among them): nothing more is read.
    Ignored,
}

impl State {
    /// The framing, once the role is known.
    fn transport(&mut self) -> Option<&mut dyn Transport> {
        match self {
            State::Http1(t) => Some(t.as_mut()),
            State::Http2(t) => Some(t.as_mut()),
            State::WebSocket(t) => Some(t.as_mut()),
            State::Sniffing(_) | State::Ignored => None,
        }
    }
}

/// One observed TLS connection (one `(tgid, SSL*)`). See the module docs.
#[derive(Debug)]
pub struct Connection {
    limits: CaptureLimits,
    state: State,
}

impl Connection {
    pub fn new(limits: CaptureLimits) -> Self {
        Self {
            limits,
            state: State::Sniffing(PerDirection::default()),
        }
    }

    /// Bytes the observed process sent (`SSL_write`).
    pub fn on_write(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.bytes_written += data.len() as u64;
        self.on_bytes(Direction::Write, data, ts_ns, stats, out);
    }

    /// Bytes the observed process received (`SSL_read`).
    pub fn on_read(
        &mut self,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.bytes_read += data.len() as u64;
        self.on_bytes(Direction::Read, data, ts_ns, stats, out);
    }

    fn on_bytes(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        if data.is_empty() {
            return;
        }
        if let State::Sniffing(_) = self.state {
            self.sniff(dir, data, ts_ns, stats, out);
        } else if let Some(t) = self.state.transport() {
            t.on_bytes(dir, data, ts_ns, stats, out);
        }
        self.follow_upgrade(stats);
    }

    /// Bytes before the role is known: buffered until they tell it, then handed to the
    /// framing it starts. The other direction's buffered bytes are dropped.
    fn sniff(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        let State::Sniffing(sniffed) = &mut self.state else {
            return;
        };
        let side = &mut sniffed[dir];
        if side.bytes.is_empty() {
            side.first_at_ns = ts_ns;
        }
        side.bytes.extend_from_slice(data);
        let role = match (sniff(&side.bytes), dir) {
            (Sniff::NeedMore, _) => return,
            (Sniff::RequestLine, Direction::Write) | (Sniff::StatusLine, Direction::Read) => {
                Role::Client
            }
            // Writing a response, or receiving a request or the preface: it is the server.
            (Sniff::StatusLine, Direction::Write)
            | (Sniff::RequestLine | Sniff::Http2Preface, Direction::Read) => Role::ServerSide,
            (Sniff::Http2Preface, Direction::Write) => Role::Http2Client,
            (Sniff::Other, _) => {
                // After loss, or capture began mid-connection (a daemon started, or adopted a
                // kernel side, while the connection carried a message), or it is not HTTP/1:
                // wait for a message start. A keep-alive connection's next request starts a
                // write, and its first chunk tells the role; ignoring the connection for good
                // lost that request. Bytes that never start a message (HTTP/2 without its
                // preface, another protocol) are discarded, counted once as unsupported.
                if !side.resync {
                    side.resync = true;
                    stats.unsupported_connections += 1;
                }
                stats.bytes_discarded += side.bytes.len() as u64;
                side.bytes = Vec::new();
                return;
            }
        };
        if side.resync {
            side.resync = false;
            stats.resyncs += 1;
        }
        let bytes = std::mem::take(&mut side.bytes);
        let first_byte_ns = side.first_at_ns;
        let resync = PerDirection {
            write: sniffed.write.resync,
            read: sniffed.read.resync,
        };
        self.state = match role {
            Role::Client => {
                let mut h1 = Box::new(Http1::new(self.limits, resync));
                h1.feed(dir, &bytes, ts_ns, first_byte_ns, stats, out);
                State::Http1(h1)
            }
            Role::Http2Client => {
                stats.http2_connections += 1;
                let mut h2 = Box::new(Http2::new(self.limits));
                h2.on_bytes(dir, &bytes, ts_ns, stats, out);
                State::Http2(h2)
            }
            Role::ServerSide => {
                stats.server_side_connections += 1;
                State::Ignored
            }
        };
    }

    /// After a 101, the connection is a WebSocket (followed) or another protocol (ignored).
    fn follow_upgrade(&mut self, stats: &mut CaptureStats) {
        let State::Http1(h1) = &mut self.state else {
            return;
        };
        let Some(upgrade) = h1.take_upgrade() else {
            return;
        };
        self.state = match upgrade {
            Upgrade::WebSocket(ws) => {
                stats.websocket_connections += 1;
                State::WebSocket(ws)
            }
            Upgrade::Other => {
                stats.unsupported_connections += 1;
                State::Ignored
            }
        };
    }

    /// The kernel dropped bytes of one direction before the next chunk.
    pub fn on_loss(
        &mut self,
        direction_is_write: bool,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    ) {
        stats.losses += 1;
        let dir = if direction_is_write {
            Direction::Write
        } else {
            Direction::Read
        };
        if let State::Sniffing(sniffed) = &mut self.state {
            sniffed[dir].bytes.clear();
            sniffed[dir].resync = true;
        } else if let Some(t) = self.state.transport() {
            t.on_loss(dir, ts_ns, stats, out);
        }
    }

    /// The connection is gone (or its process exited): a close-delimited response completes,
    /// every other exchange in flight is given up, and the connection starts afresh (an SSL
    /// pointer can be reused by a new connection).
    pub fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>) {
        if let Some(t) = self.state.transport() {
            t.close(ts_ns, stats, out);
        }
        *self = Connection::new(self.limits);
    }

    /// What a write held by the ceilings gate starts, if this is (or the write opens) an
    /// HTTP/2 client connection. `conn` is the connection's state, if it has one yet.
    pub fn http2_hold(conn: Option<&Connection>, preview: &[u8]) -> Http2Hold {
        let preface = crate::protocol::http2::PREFACE;
        let n = preview.len().min(preface.len());
        if n >= H2_PREFACE.len() && preview[..n] == preface[..n] {
            // A new connection: its first write.
            return Http2::hold(None, &preview[n..]);
        }
        match conn.map(|c| &c.state) {
            Some(State::Http2(h2)) => Http2::hold(Some(h2), preview),
            _ => Http2Hold::NotHttp2,
        }
    }

    /// HTTP/2 or WebSocket: state that spans exchanges (HPACK tables, a deflate context), so
    /// reading it again must start where it was first seen.
    pub fn keeps_stream_state(&self) -> bool {
        matches!(self.state, State::Http2(_) | State::WebSocket(_))
    }

    /// Nothing buffered or in flight: the daemon may drop this connection. Connections that
    /// are ignored (server side, unsupported) are idle too.
    pub fn is_idle(&self) -> bool {
        match &self.state {
            State::Sniffing(s) => s.write.bytes.is_empty() && s.read.bytes.is_empty(),
            State::Http1(t) => t.is_idle(),
            State::Http2(t) => t.is_idle(),
            State::WebSocket(t) => t.is_idle(),
            State::Ignored => true,
        }
    }
}
