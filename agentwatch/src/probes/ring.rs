//! The ring buffer, read with positions, and released only up to what a next daemon would not
//! need.
//!
//! A record's position (its byte offset in the ring's stream, which the kernel keeps in the
//! pinned map's pages across daemons) names it. The daemon reads records as they come but
//! *commits* (hands the space back to the kernel) only up to the first record of the oldest
//! exchange still in flight: if it dies, the next daemon reads those records again and rebuilds
//! the exchanges the dead one had half seen. How far it had read is kept in the pinned
//! `CURSOR` map, so records before that are known to be seen already (their process events are
//! not applied twice; their calls are matched against the rows already written).
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (read-write), page 1 the
//! producer position, then the data pages. The kernel offers them twice in a row so a record
//! that wraps around the end reads as one slice; the daemon maps them once (every page of the
//! mapping is resident from the start, so a second copy would double the ring's share of its
//! RSS) and copies the rare record that wraps. Each record has an 8-byte header (never split by
//! the end: records are 8-aligned): its length with a busy bit and a discard bit, and is padded
//! to 8 bytes.
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::{Array, MapData};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("cannot read the ring buffer's size: {0}")]
    Info(String),
    #[error("cannot map the ring buffer ({what}): {source}")]
    Map {
        what: &'static str,
        source: std::io::Error,
    },
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(
        fd: RawFd,
        len: usize,
        prot: i32,
        offset: usize,
        what: &'static str,
    ) -> Result<Self, RingError> {
        // SAFETY: a shared mapping of the ring buffer's fd at the offsets the kernel defines.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(RingError::Map {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

pub struct Ring {
    map: MapData,
    consumer: Mapping,
    producer: Mapping,
    page: usize,
    size: u64,
    /// Next record to read.
    read: u64,
    /// Where the consumer position stands (space before it is the kernel's again).
    committed: u64,
    /// Records before this position were read by an earlier daemon.
    replay_end: u64,
    cursor: Option<Array<MapData, u64>>,
    /// The read position last written to `cursor`.
    cursor_written: u64,
    /// The last record that wrapped around the end, in one piece.
    wrapped: Vec<u8>,
}

// SAFETY: the mappings are owned by this value and only touched through `&mut self` (or
// atomics); the kernel is the other party.
unsafe impl Send for Ring {}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

impl Ring {
    /// Maps the ring; `cursor` is the pinned map holding how far the last daemon read.
    pub fn new(map: MapData, cursor: Option<Array<MapData, u64>>) -> Result<Ring, RingError> {
        let info = map.info().map_err(|e| RingError::Info(e.to_string()))?;
        let size = info.max_entries() as u64;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(
            fd,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            0,
            "consumer page",
        )?;
        let producer = Mapping::new(
            fd,
            page + size as usize,
            libc::PROT_READ,
            page,
            "data pages",
        )?;
        let mut ring = Ring {
            map,
            consumer,
            producer,
            page,
            size,
            read: 0,
            committed: 0,
            replay_end: 0,
            cursor,
            cursor_written: u64::MAX,
            wrapped: Vec::new(),
        };
        ring.committed = ring.consumer_pos().load(Ordering::Acquire);
        ring.read = ring.committed;
        let seen = ring
            .cursor
            .as_ref()
            .and_then(|c| c.get(&0, 0).ok())
            .unwrap_or(0);
        // A cursor behind the consumer (or from another ring) means nothing to replay.
        ring.replay_end = if seen > ring.committed && seen - ring.committed <= size {
            seen
        } else {
            ring.committed
        };
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: page 0 of the mapping is the kernel's consumer position, 8-aligned.
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> u64 {
        // SAFETY: page 1 (the start of the second mapping) is the producer position.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }.load(Ordering::Acquire)
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data pages follow the producer page.
        unsafe { (self.producer.ptr as *const u8).add(self.page) }
    }

    /// The next record and its position; `None` when none is ready. Not an `Iterator`: the
    /// record borrows the ring.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(u64, &[u8])> {
        loop {
            if self.read >= self.producer_pos() {
                return None;
            }
            let offset = (self.read & (self.size - 1)) as usize;
            // SAFETY: the header lies inside the first copy of the data pages; the kernel
            // publishes it with a full barrier, read with acquire.
            let header =
                unsafe { &*(self.data().add(offset) as *const AtomicU32) }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                return None;
            }
            let len = (header & !(BUSY | DISCARD)) as u64;
            if len + HEADER > self.size {
                // Not a record the kernel could have written: stop rather than read past the
                // mapping (the next drain sees the same; nothing is handed back past it).
                return None;
            }
            let pos = self.read;
            self.read += (len + HEADER).next_multiple_of(8);
            if header & DISCARD != 0 {
                continue;
            }
            let (size, len) = (self.size as usize, len as usize);
            let start = (offset + HEADER as usize) % size;
            if start + len <= size {
                // SAFETY: `start..start + len` lies inside the data pages.
                let bytes = unsafe { std::slice::from_raw_parts(self.data().add(start), len) };
                return Some((pos, bytes));
            }
            // It wraps: its end is at the start of the data pages.
            let first = size - start;
            self.wrapped.clear();
            // SAFETY: `start..size` and `0..len - first` lie inside the data pages (len < size).
            unsafe {
                self.wrapped
                    .extend_from_slice(std::slice::from_raw_parts(self.data().add(start), first));
                self.wrapped
                    .extend_from_slice(std::slice::from_raw_parts(self.data(), len - first));
            }
            return Some((pos, &self.wrapped));
        }
    }

    /// Position of the next record to read.
    pub fn read_pos(&self) -> u64 {
        self.read
    }

    /// Records before this were read by an earlier daemon (seen, but its state was lost).
    pub fn replay_end(&self) -> u64 {
        self.replay_end
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Hands the space before `pos` (a record's position, or the read position) back to the
    /// kernel, and records how far this daemon has read.
    pub fn commit(&mut self, pos: u64) {
        let pos = pos.clamp(self.committed, self.read);
        if self.cursor_written != self.read
            && let Some(c) = self.cursor.as_mut()
            && c.set(0, self.read, 0).is_ok()
        {
            self.cursor_written = self.read;
        }
        if pos != self.committed {
            self.committed = pos;
            self.consumer_pos().store(pos, Ordering::Release);
        }
    }
}
