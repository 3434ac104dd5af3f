//! What every framing of a connection (HTTP/1.1, HTTP/2, WebSocket) offers the connection.

use std::ops::{Index, IndexMut};

use super::{CaptureEvent, CaptureStats};

/// Which way bytes went, seen from the observed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// It sent them (`SSL_write`): requests, as the process is the client.
    Write,
    /// It received them (`SSL_read`): responses.
    Read,
}

/// One `T` for each direction, indexed by [`Direction`].
#[derive(Debug, Default)]
pub(super) struct PerDirection<T> {
    pub(super) write: T,
    pub(super) read: T,
}

impl<T> Index<Direction> for PerDirection<T> {
    type Output = T;

    fn index(&self, dir: Direction) -> &T {
        match dir {
            Direction::Write => &self.write,
            Direction::Read => &self.read,
        }
    }
}

impl<T> IndexMut<Direction> for PerDirection<T> {
    fn index_mut(&mut self, dir: Direction) -> &mut T {
        match dir {
            Direction::Write => &mut self.write,
            Direction::Read => &mut self.read,
        }
    }
}

/// A connection's bytes after its role is known, turned into exchanges. Each call pushes the
/// events it causes into `out` and counts what it saw in `stats`.
pub(super) trait Transport {
    /// Plaintext of one direction, in the order it was captured (never empty).
    fn on_bytes(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    );

    /// The kernel dropped bytes of `dir` before the next chunk.
    fn on_loss(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        stats: &mut CaptureStats,
        out: &mut Vec<CaptureEvent>,
    );

    /// The connection is gone: every exchange in flight ends. The framing is dropped after.
    fn close(&mut self, ts_ns: u64, stats: &mut CaptureStats, out: &mut Vec<CaptureEvent>);

    /// Nothing buffered or in flight.
    fn is_idle(&self) -> bool;
}
