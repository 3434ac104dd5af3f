//! Opaque binaries: TLS stacks linked statically into stripped executables (Bun's BoringSSL in
//! Claude Code, rustls over aws-lc in Codex). They export no TLS symbols, so the functions are
//! located by analysis that does not depend on one version's bytes: the library reports errors
//! with its source file name and line, so the code that loads that string sits inside the
//! function we want, whose bounds come from `.eh_frame_hdr` (or, where that has no entry, from
//! the linker's padding, checked by decoding).
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSegment, SectionKind};

/// BoringSSL's library code for SSL errors (`ERR_LIB_SSL`).
const ERR_LIB_SSL: u64 = 16;
/// `SSL_write` is the one function of BoringSSL's ssl_lib.cc raising `SSL_R_BAD_LENGTH` (a
/// negative length); `SSL_read` raises only `ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED` (the QUIC
/// check of SSL_peek, inlined), and sits just above SSL_write in the file.
const SSL_R_BAD_LENGTH: u64 = 111;
const ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED: u64 = 66;
/// aws-lc's `ERR_LIB_CIPHER` and the reasons of its AEAD entry points.
const ERR_LIB_CIPHER: u64 = 30;
const CIPHER_R_BAD_DECRYPT: u64 = 101;
const CIPHER_R_OUTPUT_ALIASES_INPUT: u64 = 115;
/// OpenSSL's `ERR_LIB_SSL` (`ERR_set_error(lib, reason, fmt, …)` after `ERR_set_debug`), and
/// the reason only 3.3+'s `ssl_write_internal(s, buf, num, flags, *written)` raises.
const OPENSSL_ERR_LIB_SSL: u64 = 20;
const SSL_R_UNSUPPORTED_WRITE_FLAG: u64 = 412;

/// The System V integer argument registers, in order.
const ARGUMENTS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

/// Function `[start, end)` → the (reason, line) of each error it raises.
type ErrorSites = BTreeMap<(u64, u64), BTreeSet<(u64, u64)>>;

/// A function's `[start, end)` and where those bounds came from.
type Function = (u64, u64, Bounds);

/// Where a function's bounds came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bounds {
    /// An `.eh_frame` entry.
    Unwind,
    /// Linker padding, checked by decoding and a direct branch to the start.
    Padding,
}

/// Where a located TLS library's write and read functions are, as file offsets: SSL_write
/// and SSL_read (`boringssl`), the AEAD seal and open every record passes (`aws-lc-aead`),
/// or OpenSSL's `ssl_write_internal`/`ssl_read_internal` (`openssl`, `openssl-3.3` when the
/// write takes a flags argument before `*written`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Located {
    /// `boringssl`, `aws-lc-aead`, `openssl` or `openssl-3.3`.
    pub stack: String,
    pub write: u64,
    pub read: u64,
    /// Where a new connection starts (`SSL_do_handshake`), when located.
    #[serde(default)]
    pub handshake: Option<u64>,
    /// How they were found, for `agentwatch status`.
    pub how: String,
    /// Further TLS libraries in the same executable (Codex carries rustls over aws-lc and a
    /// static OpenSSL, used for HTTPS with the system's roots).
    #[serde(default)]
    pub also: Vec<Located>,
    /// TLS libraries inside that could not be located, and why: their traffic is not seen.
    #[serde(default)]
    pub not_located: Vec<String>,
}

impl Located {
    /// This library and the ones `also` names.
    pub fn stacks(&self) -> impl Iterator<Item = &Located> {
        std::iter::once(self).chain(self.also.iter())
    }

    /// Each library's `how`, joined, for status.
    pub fn describe(&self, offsets: bool) -> String {
        let mut parts: Vec<String> = self
            .stacks()
            .map(|l| {
                if offsets {
                    let handshake = l
                        .handshake
                        .map(|h| format!(", handshake at {h:#x}"))
                        .unwrap_or_default();
                    format!(
                        "{} (write side at file offset {:#x}, read side at {:#x}{handshake})",
                        l.how, l.write, l.read
                    )
                } else {
                    l.how.clone()
                }
            })
            .collect();
        parts.extend(
            self.not_located
                .iter()
                .map(|why| format!("not covered: {why}")),
        );
        parts.join("; ")
    }
}

/// What a look at an executable found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OpaqueScan {
    /// No statically linked TLS library this analysis knows.
    NotTls,
    /// A TLS library is inside but its functions could not be located; the reason says why.
    NotLocated(String),
    Located(Located),
}

/// A whole file mapped read-only: the analysis reads its sections in place, so a 300 MB
/// executable costs page cache (shared with the process running it, and reclaimable), not
/// the daemon's own memory.
///
/// A mapped file that shrinks faults on access (`SIGBUS`, which would kill the daemon), and
/// one written to changes under the analysis. Neither happens to what the daemon analyses:
/// the kernel refuses to write a running executable (`ETXTBSY`), updaters replace the file by
/// a rename (this mapping stays on the old one), and while mapped the file holds a read
/// lease, so that even after its processes are gone, opening it for writing or truncating it
/// waits until the mapping is dropped. A lease needs the file's owner or `CAP_LEASE` (root
/// has it) and a filesystem that grants leases; without one the file is mapped all the same.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
    /// Kept open for the lease (released when it closes, after the unmapping).
    file: File,
    leased: bool,
}

// The mapping is read-only and owned: reading it from several threads is safe.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    pub fn open(path: &Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let file = File::open(path)?;
        let fd = file.as_raw_fd();
        /// Linux's `F_SETSIG` (fcntl.h), which the libc crate does not export.
        const F_SETSIG: libc::c_int = 10;
        // SAFETY: fcntl on a descriptor we own. A lease break is announced by a signal:
        // SIGURG, which is ignored unless handled (the default, SIGIO, would end the daemon).
        let leased = unsafe {
            libc::fcntl(fd, F_SETSIG, libc::SIGURG) == 0
                && libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0
        };
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
                file,
                leased,
            });
        }
        // SAFETY: a fresh private read-only mapping of an open file; no memory of ours is
        // touched, and the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        MAPPINGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ptr as usize, len));
        Ok(Mapped {
            ptr,
            len,
            file,
            leased,
        })
    }

    /// The open file (its metadata as mapped).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file holds a read lease while mapped (see above).
    pub fn leased(&self) -> bool {
        self.leased
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// Hints that `range` is about to be read through once (read-ahead).
    pub fn will_read(&self, range: &[u8]) {
        let page = 4096usize;
        let start = (range.as_ptr() as usize) & !(page - 1);
        let end = range.as_ptr() as usize + range.len();
        let base = self.ptr as usize;
        if self.len == 0 || start < base || end > base + self.len || end <= start {
            return;
        }
        // SAFETY: advice on pages of our own mapping; it changes no content.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_WILLNEED) };
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            let mut live = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
            live.retain(|m| *m != (self.ptr as usize, self.len));
            drop(live);
            // SAFETY: unmaps the mapping made in `open`, whose borrows have ended; the file
            // (and its lease) closes after this.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// The live mappings (start, length): the only memory `read_through` lets go of.
static MAPPINGS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// How much of a file a pass holds in the daemon's memory at once.
const WINDOW: usize = 8 << 20;

/// Reads `bytes` front to back in windows of `WINDOW` bytes: `f(offset, window, own)` gets
/// each window with `overlap` more bytes after it (so a match of up to `overlap + 1` bytes
/// that starts in the window is whole; the caller counts those starting before `own`), and
/// stops when `f` says so. Every page of a mapped file that is read stays in the process's
/// RSS until it is unmapped (a pass over a 300 MB agent binary would add 300 MB), so where
/// `bytes` lie in a `Mapped` file, each window's pages are let go of once it is read: they
/// stay in the page cache, and a later read maps them again (the mapping is private and
/// read-only, so nothing of its content can be lost).
fn read_through(bytes: &[u8], overlap: usize, f: impl FnMut(usize, &[u8], usize) -> bool) {
    windows_of(WINDOW, bytes, overlap, f)
}

fn windows_of(
    size: usize,
    bytes: &[u8],
    overlap: usize,
    mut f: impl FnMut(usize, &[u8], usize) -> bool,
) {
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + size).min(bytes.len());
        let more = f(
            start,
            &bytes[start..(end + overlap).min(bytes.len())],
            end - start,
        );
        release(&bytes[start..end]);
        if !more {
            return;
        }
        start = end;
    }
}

/// Lets go of the pages of `range` where it lies in a live mapping (see `read_through`).
fn release(range: &[u8]) {
    const PAGE: usize = 4096;
    let (from, to) = (
        range.as_ptr() as usize,
        range.as_ptr() as usize + range.len(),
    );
    let live = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(&(base, len)) = live.iter().find(|(b, l)| from >= *b && to <= b + l) else {
        return;
    };
    // Whole pages, inside the mapping.
    let start = (from & !(PAGE - 1)).max(base);
    let end = ((to + PAGE - 1) & !(PAGE - 1)).min(base + len);
    if end > start {
        // SAFETY: pages of a private read-only file mapping we own and hold the lock for
        // (it is not unmapped meanwhile); they read the same when faulted in again.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Whether `needle` occurs in `bytes` (read as `read_through` does).
fn contains(bytes: &[u8], needle: &[u8]) -> bool {
    let mut found = false;
    let finder = memchr::memmem::Finder::new(needle);
    read_through(bytes, needle.len().saturating_sub(1), |_, window, _| {
        found = finder.find(window).is_some();
        !found
    });
    found
}

/// Where `needle` starts in `bytes`, in order (read as `read_through` does).
fn find_all(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let finder = memchr::memmem::Finder::new(needle);
    read_through(
        bytes,
        needle.len().saturating_sub(1),
        |offset, window, own| {
            out.extend(
                finder
                    .find_iter(window)
                    .filter(|at| *at < own)
                    .map(|at| offset + at),
            );
            true
        },
    );
    out
}

/// Bytes of a section: borrowed from the mapped file, or owned (unit tests build images).
type Bytes<'a> = Cow<'a, [u8]>;

/// The parts of an ELF executable the analysis reads, borrowed from the mapped file, and what
/// was worked out from them so far (each pass over the code is made once).
#[derive(Default)]
struct Image<'a> {
    /// (virtual address, bytes) of the read-only, non-executable data sections.
    data: Vec<(u64, Bytes<'a>)>,
    /// (virtual address, bytes) of the executable sections.
    code: Vec<(u64, Bytes<'a>)>,
    /// (address, file offset, size) of the loadable segments, to turn addresses into the file
    /// offsets uprobes attach at.
    segments: Vec<(u64, u64, u64)>,
    eh_frame_hdr: Option<(u64, Bytes<'a>)>,
    eh_frame: Option<(u64, Bytes<'a>)>,
    /// `[start, end)` of every FDE, sorted, read from `.eh_frame` itself when there is no
    /// `.eh_frame_hdr` (static glibc links have none).
    fdes: std::cell::OnceCell<Vec<(u64, u64)>>,
    pie: bool,
    /// Target address → the instructions loading it (see `references`).
    referenced: RefCell<HashMap<u64, Vec<u64>>>,
    /// Address → the function containing it (see `function_at`).
    functions: RefCell<HashMap<u64, Option<Function>>>,
}

impl<'a> Image<'a> {
    /// The image of the ELF file `file` if it is x86-64 and one of `wanted` is in its
    /// read-only data; `None` otherwise (most executables stop here).
    fn parse(file: &'a [u8], wanted: &[&[u8]]) -> Option<Image<'a>> {
        let obj = object::File::parse(file).ok()?;
        if obj.architecture() != object::Architecture::X86_64 {
            return None;
        }
        let mut data = Vec::new();
        let mut found = false;
        for section in obj.sections() {
            if section.kind() == SectionKind::ReadOnlyString
                || section.kind() == SectionKind::ReadOnlyData
            {
                let Ok(bytes) = section.data() else { continue };
                found = found || wanted.iter().any(|w| contains(bytes, w));
                data.push((section.address(), Cow::Borrowed(bytes)));
            }
        }
        if !found {
            return None;
        }
        let mut code = Vec::new();
        for section in obj.sections() {
            if section.kind() == SectionKind::Text
                && let Ok(bytes) = section.data()
            {
                code.push((section.address(), Cow::Borrowed(bytes)));
            }
        }
        let named = |name: &str| {
            let s = obj.section_by_name(name)?;
            Some((s.address(), Cow::Borrowed(s.data().ok()?)))
        };
        let segments = obj
            .segments()
            .map(|s| (s.address(), s.file_range().0, s.file_range().1))
            .collect();
        Some(Image {
            data,
            code,
            segments,
            eh_frame_hdr: named(".eh_frame_hdr"),
            eh_frame: named(".eh_frame"),
            pie: obj.kind() == object::ObjectKind::Dynamic,
            ..Image::default()
        })
    }

    /// Addresses of the NUL-terminated strings that end with `tail` (a source path is stored
    /// whole, `../../vendor/boringssl/ssl/ssl_lib.cc`, and referenced from its start).
    fn strings_ending_with(&self, tail: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        for (address, bytes) in &self.data {
            for at in find_all(bytes, tail) {
                if bytes.get(at + tail.len()) != Some(&0) {
                    continue;
                }
                let start = bytes[..at]
                    .iter()
                    .rposition(|b| *b == 0)
                    .map_or(0, |p| p + 1);
                out.push(address + start as u64);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Addresses of the NUL-terminated strings equal to `text` (a `__func__` name).
    fn strings_equal_to(&self, text: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        for (address, bytes) in &self.data {
            for at in find_all(bytes, text) {
                if bytes.get(at + text.len()) == Some(&0) && (at == 0 || bytes[at - 1] == 0) {
                    out.push(address + at as u64);
                }
            }
        }
        out
    }

    /// Addresses of the instructions that load one of `targets` into a register: `lea r,
    /// [rip+disp32]` (position-independent code) or `mov r32, imm32` (fixed addresses).
    /// Targets not looked up before are found in one pass over the code (`find_references`).
    fn references(&self, targets: &[u64]) -> Vec<u64> {
        let missing: Vec<u64> = {
            let known = self.referenced.borrow();
            targets
                .iter()
                .copied()
                .filter(|t| !known.contains_key(t))
                .collect()
        };
        if !missing.is_empty() {
            let found = self.find_references(&missing);
            self.referenced.borrow_mut().extend(found);
        }
        let known = self.referenced.borrow();
        let mut out: Vec<u64> = targets
            .iter()
            .flat_map(|t| known.get(t).into_iter().flatten().copied())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// One pass over the code for the loads of every target at once: each instruction loads
    /// at most one address, so this is the union of a pass per target.
    fn find_references(&self, targets: &[u64]) -> HashMap<u64, Vec<u64>> {
        let mut sorted = targets.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut found: HashMap<u64, Vec<u64>> = sorted.iter().map(|t| (*t, Vec::new())).collect();
        for (base, bytes) in &self.code {
            let bytes: &[u8] = bytes;
            read_through(bytes, 0, |offset, window, _| {
                self.references_in(
                    *base,
                    bytes,
                    offset..offset + window.len(),
                    &sorted,
                    &mut found,
                );
                true
            });
        }
        found
    }

    /// `find_references` over the instructions of `bytes` (the code section at `base`) whose
    /// opcode or immediate starts `within` (one window of `read_through`).
    fn references_in(
        &self,
        base: u64,
        bytes: &[u8],
        within: std::ops::Range<usize>,
        sorted: &[u64],
        found: &mut HashMap<u64, Vec<u64>>,
    ) {
        let (Some(&low), Some(&high)) = (sorted.first(), sorted.last()) else {
            return;
        };
        let (from, len) = (within.start, within.len());
        let window = &bytes[within];
        // lea: REX.W (48/4C) 8D, ModRM mod=00 rm=101, disp32; found by its opcode byte
        // (`i` is the REX prefix, at `j - 1`), whole when `i + 7 <= len`.
        for j in memchr::memchr_iter(0x8D, window).map(|j| from + j) {
            if j == 0 || j + 6 > bytes.len() {
                continue;
            }
            let i = j - 1;
            if (bytes[i] == 0x48 || bytes[i] == 0x4C) && bytes[j + 1] & 0xC7 == 0x05 {
                let disp = i32::from_le_bytes(bytes[i + 3..i + 7].try_into().unwrap());
                let next = base + i as u64 + 7;
                let target = next.wrapping_add_signed(disp as i64);
                if (low..=high).contains(&target)
                    && let Some(at) = found.get_mut(&target)
                {
                    at.push(base + i as u64);
                }
            }
        }
        if self.pie {
            return;
        }
        // mov r32, imm32: (41) B8+r imm32; the immediate found whole when it starts in
        // the window.
        let window = &bytes[from..(from + len + 3).min(bytes.len())];
        for target in sorted {
            let Ok(imm) = u32::try_from(*target) else {
                continue;
            };
            let refs = found.get_mut(target).expect("every target has an entry");
            for at in memchr::memmem::find_iter(window, &imm.to_le_bytes())
                .filter(|at| *at < len)
                .map(|at| from + at)
            {
                if at >= 1 && (0xB8..=0xBF).contains(&bytes[at - 1]) {
                    let start = if at >= 2 && bytes[at - 2] == 0x41 {
                        at - 2
                    } else {
                        at - 1
                    };
                    refs.push(base + start as u64);
                }
            }
        }
    }

    /// The bounds `[start, end)` of the function containing `address`: from the unwind table
    /// when it covers the address, otherwise from the linker's padding (see `padded_function`).
    fn function_at(&self, address: u64) -> Option<Function> {
        if let Some(known) = self.functions.borrow().get(&address) {
            return *known;
        }
        self.prefetch_functions(&[address]);
        self.functions.borrow().get(&address).copied().flatten()
    }

    /// Works out `function_at` for all of `addresses` at once: the call-target check of the
    /// functions bounded by padding is then one pass over the code for all of them.
    fn prefetch_functions(&self, addresses: &[u64]) {
        let mut padded = Vec::new();
        {
            let mut known = self.functions.borrow_mut();
            for &address in addresses {
                if known.contains_key(&address) {
                    continue;
                }
                if let Some((start, end)) = self.unwind_entry(address) {
                    known.insert(address, Some((start, end, Bounds::Unwind)));
                } else if let Some((start, end)) = self.padded_candidate(address) {
                    padded.push((address, start, end));
                } else {
                    known.insert(address, None);
                }
            }
        }
        let starts: Vec<u64> = padded.iter().map(|(_, start, _)| *start).collect();
        let targets = self.branch_targets(&starts);
        let mut known = self.functions.borrow_mut();
        for (address, start, end) in padded {
            let bounds = targets
                .contains(&start)
                .then_some(end)
                .flatten()
                .map(|end| (start, end, Bounds::Padding));
            known.insert(address, bounds);
        }
    }

    /// The FDE covering `address` in `.eh_frame_hdr`/`.eh_frame`.
    fn unwind_entry(&self, address: u64) -> Option<(u64, u64)> {
        let (frame_address, frame) = self.eh_frame.as_ref()?;
        let Some((hdr_address, hdr)) = self.eh_frame_hdr.as_ref() else {
            let fdes = self.fdes.get_or_init(|| self.all_fdes());
            let at = fdes.partition_point(|(start, _)| *start <= address);
            let (start, end) = *fdes.get(at.checked_sub(1)?)?;
            return (address < end).then_some((start, end));
        };
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(*hdr_address)
            .set_eh_frame(*frame_address)
            .set_text(self.code.first().map_or(0, |c| c.0));
        let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).ok()?;
        let table = parsed.table()?;
        let eh_frame = EhFrame::new(frame, LittleEndian);
        let fde = table
            .fde_for_address(&eh_frame, &bases, address, EhFrame::cie_from_offset)
            .ok()?;
        let start = fde.initial_address();
        (address >= start && address < start + fde.len()).then_some((start, start + fde.len()))
    }

    /// Every FDE's `[start, end)` in `.eh_frame`, sorted by start.
    fn all_fdes(&self) -> Vec<(u64, u64)> {
        let Some((frame_address, frame)) = self.eh_frame.as_ref() else {
            return Vec::new();
        };
        let bases = BaseAddresses::default()
            .set_eh_frame(*frame_address)
            .set_text(self.code.first().map_or(0, |c| c.0));
        let eh_frame = EhFrame::new(frame, LittleEndian);
        let mut out = Vec::new();
        let mut entries = eh_frame.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let gimli::CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(EhFrame::cie_from_offset)
                && fde.len() > 0
            {
                out.push((fde.initial_address(), fde.initial_address() + fde.len()));
            }
        }
        out.sort_unstable();
        out
    }

    /// Bun's BoringSSL has no unwind entries; there the function is found from the linker's
    /// layout instead: functions start 16-byte aligned after `int3` padding. A candidate start
    /// counts only if decoding from it reaches `address` on an instruction boundary without
    /// meeting padding, and it is the target of a direct call or jump elsewhere in the code.
    /// (`function_at` checks the call targets of many candidates at once.)
    #[cfg(test)]
    fn padded_function(&self, address: u64) -> Option<(u64, u64)> {
        let (start, end) = self.padded_candidate(address)?;
        if !self.is_branch_target(start) {
            return None;
        }
        Some((start, end?))
    }

    /// `padded_function` short of the call-target check: the start, and the end if padding
    /// follows.
    fn padded_candidate(&self, address: u64) -> Option<(u64, Option<u64>)> {
        let (base, bytes) = self
            .code
            .iter()
            .find(|(b, c)| address >= *b && address < b + c.len() as u64)?;
        let at = (address - base) as usize;
        let mut candidate = at & !15;
        // Functions longer than this are not where a TLS library's read or write lives.
        let floor = at.saturating_sub(64 * 1024);
        loop {
            let after_padding = candidate == 0 || bytes[candidate - 1] == 0xCC;
            if after_padding && self.reaches(*base, bytes, candidate, at) {
                let start = base + candidate as u64;
                return Some((start, self.padding_after(*base, bytes, at)));
            }
            if candidate <= floor {
                return None;
            }
            candidate -= 16;
        }
    }

    /// Whether linear decoding from `from` lands on `to` without meeting `int3` padding.
    fn reaches(&self, base: u64, bytes: &[u8], from: usize, to: usize) -> bool {
        let mut decoder =
            Decoder::with_ip(64, &bytes[from..], base + from as u64, DecoderOptions::NONE);
        let target = base + to as u64;
        for ins in &mut decoder {
            if ins.is_invalid() || ins.mnemonic() == Mnemonic::Int3 || ins.ip() > target {
                return false;
            }
            if ins.ip() == target {
                return true;
            }
        }
        false
    }

    /// The address of the first `int3` decoded from `from` on: the end of the function.
    fn padding_after(&self, base: u64, bytes: &[u8], from: usize) -> Option<u64> {
        let mut decoder =
            Decoder::with_ip(64, &bytes[from..], base + from as u64, DecoderOptions::NONE);
        decoder
            .iter()
            .take(64 * 1024)
            .find(|ins| ins.is_invalid() || ins.mnemonic() == Mnemonic::Int3)
            .map(|ins| ins.ip())
    }

    /// Whether a `call rel32` or `jmp rel32` somewhere in the code goes to `target`.
    #[cfg(test)]
    fn is_branch_target(&self, target: u64) -> bool {
        self.branch_targets(&[target]).contains(&target)
    }

    /// Those of `candidates` that a `call rel32` or `jmp rel32` somewhere in the code goes
    /// to, in one pass over the code.
    fn branch_targets(&self, candidates: &[u64]) -> HashSet<u64> {
        let mut wanted = candidates.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = HashSet::new();
        let (Some(&low), Some(&high)) = (wanted.first(), wanted.last()) else {
            return out;
        };
        for (base, bytes) in &self.code {
            let bytes: &[u8] = bytes;
            read_through(bytes, 0, |from, window, _| {
                for i in memchr::memchr2_iter(0xE8, 0xE9, window).map(|i| from + i) {
                    let Some(rel) = bytes.get(i + 1..i + 5) else {
                        continue;
                    };
                    let rel = i32::from_le_bytes(rel.try_into().unwrap());
                    let target = (base + i as u64 + 5).wrapping_add_signed(rel as i64);
                    if (low..=high).contains(&target) && wanted.binary_search(&target).is_ok() {
                        out.insert(target);
                        if out.len() == wanted.len() {
                            return false;
                        }
                    }
                }
                true
            });
            if out.len() == wanted.len() {
                break;
            }
        }
        out
    }

    fn code_of(&self, start: u64, end: u64) -> Option<&[u8]> {
        self.code.iter().find_map(|(base, bytes)| {
            let from = start.checked_sub(*base)? as usize;
            let to = end.checked_sub(*base)? as usize;
            bytes.get(from..to)
        })
    }

    /// The file offset of function `f`'s entry, where a uprobe attaches.
    fn entry_offset(&self, f: (u64, u64)) -> Result<u64, String> {
        self.file_offset(f.0)
            .ok_or_else(|| format!("function at {:#x} is outside the loadable segments", f.0))
    }

    fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments.iter().find_map(|(va, off, size)| {
            (address >= *va && address < va + size).then(|| address - va + off)
        })
    }

    /// Every function raising errors of library `lib` from the source file whose path ends with
    /// `file`: its (reason, line) pairs, and where its bounds came from.
    fn error_sites(&self, file: &[u8], lib: u64) -> (ErrorSites, BTreeMap<(u64, u64), Bounds>) {
        let files = self.strings_ending_with(file);
        let file_set: BTreeSet<u64> = files.iter().copied().collect();
        let mut raised = ErrorSites::new();
        let mut bounds = BTreeMap::new();
        let references = self.references(&files);
        self.prefetch_functions(&references);
        for reference in references {
            if raised
                .keys()
                .any(|(start, end)| (*start..*end).contains(&reference))
            {
                continue;
            }
            let Some((start, end, how)) = self.function_at(reference) else {
                continue;
            };
            bounds.insert((start, end), how);
            let errors = raised.entry((start, end)).or_default();
            for [l, reason, line] in self.error_calls((start, end), &file_set) {
                if l == lib {
                    errors.insert((reason, line));
                }
            }
        }
        (raised, bounds)
    }

    /// The reasons of OpenSSL 3's `ERR_set_error(ERR_LIB_SSL, reason, …)` calls in function
    /// `[start, end)`.
    fn ssl_reasons(&self, (start, end): (u64, u64)) -> BTreeSet<u64> {
        let Some(bytes) = self.code_of(start, end) else {
            return BTreeSet::new();
        };
        let mut held: BTreeMap<Register, u64> = BTreeMap::new();
        let mut out = BTreeSet::new();
        for ins in &mut Decoder::with_ip(64, bytes, start, DecoderOptions::NONE) {
            if ins.is_invalid() {
                break;
            }
            match ins.mnemonic() {
                Mnemonic::Call | Mnemonic::Jmp => {
                    if held.get(&Register::RDI) == Some(&OPENSSL_ERR_LIB_SSL)
                        && let Some(reason) = held.get(&Register::RSI)
                    {
                        out.insert(*reason);
                    }
                    if ins.mnemonic() == Mnemonic::Call {
                        held.clear();
                    }
                }
                _ => track_constant(&mut held, &ins),
            }
        }
        out
    }

    /// The error calls of function `[start, end)`, as (library, reason, line): calls that pass
    /// a `file` string address as an argument, with the reason in the argument before it and
    /// the line in the one after (BoringSSL's `ERR_put_error(lib, 0, reason, file, line)`,
    /// older builds' `(lib, reason, file, line)`).
    fn error_calls(&self, (start, end): (u64, u64), file: &BTreeSet<u64>) -> Vec<[u64; 3]> {
        let Some(bytes) = self.code_of(start, end) else {
            return Vec::new();
        };
        let mut decoder = Decoder::with_ip(64, bytes, start, DecoderOptions::NONE);
        // Integer constants held by the argument registers since the last call or jump.
        let mut held: BTreeMap<Register, u64> = BTreeMap::new();
        let mut out = Vec::new();
        for ins in &mut decoder {
            if ins.is_invalid() {
                break;
            }
            match ins.mnemonic() {
                // A jump with the arguments set is a shared or tail call of the error function.
                Mnemonic::Call | Mnemonic::Jmp => {
                    let at = ARGUMENTS
                        .iter()
                        .position(|r| held.get(r).is_some_and(|a| file.contains(a)));
                    if let Some(at) = at.filter(|at| (2..ARGUMENTS.len() - 1).contains(at)) {
                        let arg = |r: Register| held.get(&r).copied();
                        if let (Some(lib), Some(reason), Some(line)) = (
                            arg(ARGUMENTS[0]),
                            arg(ARGUMENTS[at - 1]),
                            arg(ARGUMENTS[at + 1]),
                        ) {
                            out.push([lib, reason, line]);
                        }
                    }
                    if ins.mnemonic() == Mnemonic::Call || at.is_some() {
                        held.clear();
                    }
                }
                _ => track_constant(&mut held, &ins),
            }
        }
        out
    }
}

/// Follows the integer constants and addresses registers hold between calls: `mov r, imm`,
/// `lea r, [rip+disp]`, `xor r32, r32`; any other write to a register forgets it.
fn track_constant(held: &mut BTreeMap<Register, u64>, ins: &iced_x86::Instruction) {
    match ins.mnemonic() {
        Mnemonic::Mov
            if ins.op0_kind() == OpKind::Register
                && matches!(
                    ins.op1_kind(),
                    OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64
                ) =>
        {
            held.insert(ins.op0_register().full_register(), ins.immediate(1));
        }
        Mnemonic::Lea if ins.is_ip_rel_memory_operand() => {
            held.insert(
                ins.op0_register().full_register(),
                ins.ip_rel_memory_address(),
            );
        }
        Mnemonic::Xor
            if ins.code() == Code::Xor_r32_rm32
                && ins.op1_kind() == OpKind::Register
                && ins.op0_register() == ins.op1_register() =>
        {
            held.insert(ins.op0_register().full_register(), 0);
        }
        Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Push => {}
        _ => {
            if ins.op_count() > 0 && ins.op0_kind() == OpKind::Register {
                held.remove(&ins.op0_register().full_register());
            }
        }
    }
}

/// BoringSSL (Bun, and so Claude Code): `SSL_write` and `SSL_read` from the errors ssl_lib.cc
/// raises through `ERR_put_error(ERR_LIB_SSL, 0, reason, __FILE__, __LINE__)`.
fn locate_boringssl(image: &Image) -> Result<Located, String> {
    let (raised, bounds) = image.error_sites(BORINGSSL_FILE, ERR_LIB_SSL);
    if raised.is_empty() {
        return Err("no ssl_lib.cc error sites".into());
    }
    let writes: Vec<_> = raised
        .iter()
        .filter(|(_, errors)| errors.iter().any(|(r, _)| *r == SSL_R_BAD_LENGTH))
        .collect();
    let [(write, write_errors)] = writes[..] else {
        return Err(format!(
            "{} functions of ssl_lib.cc raise reason {SSL_R_BAD_LENGTH} (SSL_write is the only one)",
            writes.len()
        ));
    };
    let write_line = write_errors.iter().map(|(_, l)| *l).min().unwrap_or(0);
    // SSL_read sits just above SSL_write in ssl_lib.cc and raises only reason 66.
    let read = raised
        .iter()
        .filter(|(_, errors)| {
            errors
                .iter()
                .all(|(r, _)| *r == ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED)
        })
        .filter_map(|(f, errors)| {
            let line = errors.iter().map(|(_, l)| *l).max()?;
            (line < write_line).then_some((write_line - line, *f))
        })
        .min();
    let Some((_, read)) = read else {
        return Err(format!(
            "no function raising only reason {ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED} above SSL_write (line {write_line}) in ssl_lib.cc"
        ));
    };
    Ok(Located {
        stack: "boringssl".into(),
        write: image.entry_offset(*write)?,
        read: image.entry_offset(read)?,
        handshake: None,
        also: Vec::new(),
        not_located: Vec::new(),
        how: format!(
            "BoringSSL SSL_write/SSL_read located by analysis (ssl_lib.cc error sites, bounds from {})",
            if [*write, read]
                .iter()
                .all(|f| bounds.get(f) == Some(&Bounds::Unwind))
            {
                ".eh_frame"
            } else {
                "linker padding and call targets"
            }
        ),
    })
}

/// aws-lc (rustls's crypto provider in Codex): every TLS record passes
/// `EVP_AEAD_CTX_seal` and `EVP_AEAD_CTX_open`, both in cipher/aead.c, whose errors go through
/// `ERR_put_error(ERR_LIB_CIPHER, 0, reason, __FILE__, __LINE__)`. Every seal/open variant
/// checks that output does not alias input (`CIPHER_R_OUTPUT_ALIASES_INPUT`); in file order
/// they are seal, seal_scatter, open, open_gather. `EVP_AEAD_CTX_seal` is the first of them
/// (smallest line), and `EVP_AEAD_CTX_open` the first that also raises `CIPHER_R_BAD_DECRYPT`.
fn locate_aws_lc_aead(image: &Image) -> Result<Located, String> {
    let (raised, bounds) = image.error_sites(AWS_LC_FILE, ERR_LIB_CIPHER);
    let first_line = |errors: &BTreeSet<(u64, u64)>| errors.iter().map(|(_, l)| *l).min();
    let checking: Vec<(u64, (u64, u64), bool)> = raised
        .iter()
        .filter(|(_, e)| e.iter().any(|(r, _)| *r == CIPHER_R_OUTPUT_ALIASES_INPUT))
        .filter_map(|(f, e)| {
            let decrypts = e.iter().any(|(r, _)| *r == CIPHER_R_BAD_DECRYPT);
            Some((first_line(e)?, *f, decrypts))
        })
        .collect();
    let seal = checking.iter().filter(|c| !c.2).min().map(|c| c.1);
    let open = checking.iter().filter(|c| c.2).min().map(|c| c.1);
    let (Some(seal), Some(open)) = (seal, open) else {
        return Err(format!(
            "{} aead.c functions check aliasing; seal and open not both found",
            checking.len()
        ));
    };
    if seal.0 == open.0 {
        return Err("seal and open resolve to one function".into());
    }
    Ok(Located {
        stack: "aws-lc-aead".into(),
        write: image.entry_offset(seal)?,
        read: image.entry_offset(open)?,
        handshake: None,
        also: Vec::new(),
        not_located: Vec::new(),
        how: format!(
            "aws-lc EVP_AEAD_CTX_seal/open located by analysis (aead.c error sites, bounds from {})",
            if [seal, open]
                .iter()
                .all(|f| bounds.get(f) == Some(&Bounds::Unwind))
            {
                ".eh_frame"
            } else {
                "linker padding and call targets"
            }
        ),
    })
}

/// OpenSSL 3 records the function name with each error (`ERR_raise` passes `__func__`,
/// `__FILE__` and `__LINE__` to `ERR_set_debug`), so the one function whose code loads both a
/// name and the `ssl/ssl_lib.c` string is that function. `ssl_write_internal` and
/// `ssl_read_internal` are what `SSL_write`, `SSL_write_ex` and the read calls all go through;
/// from OpenSSL 3.3 on the write takes `flags` before `*written`, so the version string
/// decides where the byte count is.
fn locate_openssl(image: &Image) -> Result<Located, String> {
    let files = image.strings_ending_with(OPENSSL_FILE);
    if files.is_empty() {
        return Err("no ssl/ssl_lib.c string".into());
    }
    let file_refs = image.references(&files);
    let mut all_unwind = true;
    let mut named = |name: &str| -> Result<Option<(u64, u64)>, String> {
        let names = image.strings_equal_to(name.as_bytes());
        let mut functions = BTreeSet::new();
        let references = image.references(&names);
        image.prefetch_functions(&references);
        for reference in references {
            let Some((start, end, how)) = image.function_at(reference) else {
                return Err(format!(
                    "the code naming {name} at {reference:#x} is in no function with known bounds"
                ));
            };
            // An error site names the file too; a bare use of the name is something else.
            if file_refs.iter().any(|r| (start..end).contains(r)) {
                all_unwind &= how == Bounds::Unwind;
                functions.insert((start, end));
            }
        }
        match functions.len() {
            0 => Ok(None),
            1 => Ok(functions.first().copied()),
            n => Err(format!(
                "{n} functions raise errors as {name} (inlined copies; 1 expected)"
            )),
        }
    };
    let write = named(OPENSSL_WRITE)?.ok_or("no error site of ssl_write_internal")?;
    let read = named(OPENSSL_READ)?.ok_or("no error site of ssl_read_internal")?;
    let handshake = named(OPENSSL_HANDSHAKE).ok().flatten();
    if write == read {
        return Err("ssl_write_internal and ssl_read_internal resolve to one function".into());
    }
    // OpenSSL 3.3 added `flags` before `*written`, and refuses unknown flags with
    // SSL_R_UNSUPPORTED_WRITE_FLAG: the code says which layout it has, whatever the version.
    let stack = if image
        .ssl_reasons(write)
        .contains(&SSL_R_UNSUPPORTED_WRITE_FLAG)
    {
        "openssl-3.3"
    } else {
        "openssl"
    };
    let version = openssl_version(image)
        .map(|(major, minor)| format!(" {major}.{minor}"))
        .unwrap_or_default();
    Ok(Located {
        stack: stack.into(),
        write: image.entry_offset(write)?,
        read: image.entry_offset(read)?,
        handshake: handshake.map(|h| image.entry_offset(h)).transpose()?,
        how: format!(
            "OpenSSL{version} ssl_write_internal/ssl_read_internal located by analysis (error sites naming them, bounds from {})",
            if all_unwind {
                ".eh_frame"
            } else {
                "linker padding and call targets"
            }
        ),
        also: Vec::new(),
        not_located: Vec::new(),
    })
}

/// (major, minor) of the first `OpenSSL x.y.z` string (`OPENSSL_VERSION_TEXT`).
fn openssl_version(image: &Image) -> Option<(u32, u32)> {
    for (_, bytes) in &image.data {
        for at in memchr::memmem::find_iter(bytes, b"OpenSSL ") {
            let rest = &bytes[at + 8..bytes.len().min(at + 24)];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))
                .unwrap_or(rest.len());
            let mut parts = std::str::from_utf8(&rest[..end]).ok()?.split('.');
            let (Some(major), Some(minor), Some(patch)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let (Ok(major), Ok(minor), Ok(_)) =
                (major.parse(), minor.parse(), patch.parse::<u32>())
            {
                return Some((major, minor));
            }
        }
    }
    None
}

/// The GNU build id of the executable at `path`, if it has one.
pub fn build_id(path: &Path) -> Option<Vec<u8>> {
    build_id_of(Mapped::open(path).ok()?.bytes())
}

/// The GNU build id of the ELF file `file`, if it has one (its notes are all that is read).
pub fn build_id_of(file: &[u8]) -> Option<Vec<u8>> {
    let obj = object::File::parse(file).ok()?;
    obj.build_id().ok().flatten().map(<[u8]>::to_vec)
}

/// Whether every file offset `scan` names (where uprobes would attach) lies in an executable
/// segment of the ELF file `file`: what a result read back from elsewhere must at least meet.
pub fn offsets_in_code(file: &[u8], scan: &OpaqueScan) -> bool {
    let OpaqueScan::Located(located) = scan else {
        return true;
    };
    let Ok(obj) = object::File::parse(file) else {
        return false;
    };
    let code: Vec<(u64, u64)> = obj
        .segments()
        .filter(|s| {
            matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .map(|s| s.file_range())
        .collect();
    let in_code = |offset: u64| {
        code.iter()
            .any(|(start, size)| offset >= *start && offset - start < *size)
    };
    located
        .stacks()
        .all(|l| in_code(l.write) && in_code(l.read) && l.handshake.is_none_or(in_code))
}

/// The strings whose presence in read-only data says which TLS library is inside.
const BORINGSSL: &[u8] = b"/ssl/ssl_lib.cc\0";
const AWS_LC: &[u8] = b"/cipher/aead.c\0";
const OPENSSL: &[u8] = b"\0ssl_write_internal\0";
/// The source files whose error sites the analysis reads, and OpenSSL's function names.
const BORINGSSL_FILE: &[u8] = b"/ssl/ssl_lib.cc";
const AWS_LC_FILE: &[u8] = b"/cipher/aead.c";
const OPENSSL_FILE: &[u8] = b"ssl/ssl_lib.c";
const OPENSSL_WRITE: &str = "ssl_write_internal";
const OPENSSL_READ: &str = "ssl_read_internal";
const OPENSSL_HANDSHAKE: &str = "SSL_do_handshake";

/// The SHA-256 of `bytes`, read as `read_through` does (a whole agent binary, mapped).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    read_through(bytes, 0, |_, window, _| {
        hash.update(window);
        true
    });
    hash.finalize().into()
}

/// Whether the ELF file `file` may have a TLS library inside that `scan` knows: false is
/// what `scan` would say `NotTls` for, found by the same first look (a search of its
/// read-only data), without the analysis.
pub fn may_have_tls(file: &[u8]) -> bool {
    Image::parse(file, &[BORINGSSL, AWS_LC, OPENSSL]).is_some()
}

/// Looks at `path`: a stripped executable with a TLS library inside, and where its read and
/// write functions are.
pub fn scan(path: &Path) -> OpaqueScan {
    match Mapped::open(path) {
        Ok(file) => scan_file(&file),
        Err(_) => OpaqueScan::NotTls,
    }
}

/// `scan` of a mapped file.
pub fn scan_file(file: &Mapped) -> OpaqueScan {
    let Some(image) = Image::parse(file.bytes(), &[BORINGSSL, AWS_LC, OPENSSL]) else {
        return OpaqueScan::NotTls;
    };
    for (_, code) in &image.code {
        file.will_read(code);
    }
    let has = |s: &[u8]| image.data.iter().any(|(_, d)| contains(d, s));
    let (boringssl, aws_lc, openssl) = (has(BORINGSSL), has(AWS_LC), has(OPENSSL));
    // Every string whose loads the libraries inside look for, so the code is read once.
    let mut targets = Vec::new();
    if boringssl {
        targets.extend(image.strings_ending_with(BORINGSSL_FILE));
    } else if aws_lc {
        targets.extend(image.strings_ending_with(AWS_LC_FILE));
    }
    if openssl {
        targets.extend(image.strings_ending_with(OPENSSL_FILE));
        for name in [OPENSSL_WRITE, OPENSSL_READ, OPENSSL_HANDSHAKE] {
            targets.extend(image.strings_equal_to(name.as_bytes()));
        }
    }
    image.references(&targets);
    let mut results = Vec::new();
    if boringssl {
        results.push(
            locate_boringssl(&image).map_err(|why| format!("BoringSSL inside, not located: {why}")),
        );
    } else if aws_lc {
        results.push(
            locate_aws_lc_aead(&image).map_err(|why| format!("aws-lc inside, not located: {why}")),
        );
    }
    if openssl {
        results.push(
            locate_openssl(&image).map_err(|why| format!("OpenSSL inside, not located: {why}")),
        );
    }
    combine(results)
}

/// One scan result from each TLS library found inside: the first located one carries the
/// others (`also`) and the reasons the rest were not located.
fn combine(results: Vec<Result<Located, String>>) -> OpaqueScan {
    let (located, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let mut located = located.into_iter().filter_map(Result::ok);
    let failed: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
    match located.next() {
        Some(mut first) => {
            first.also = located.collect();
            first.not_located = failed;
            OpaqueScan::Located(first)
        }
        None if failed.is_empty() => OpaqueScan::NotTls,
        None => OpaqueScan::NotLocated(failed.join("; ")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const FILE: u64 = 0x40_0010;
    const ERR_FN: u64 = 0x1800;

    /// A tiny x86-64 assembler for the instructions the analysis reads.
    #[derive(Default)]
    struct Asm(Vec<u8>);

    impl Asm {
        /// `mov r32, imm32` for register number `reg` (0 = eax … 8 = r8d).
        fn mov(&mut self, reg: u8, imm: u32) -> &mut Self {
            if reg >= 8 {
                self.0.push(0x41);
            }
            self.0.push(0xB8 + (reg & 7));
            self.0.extend(imm.to_le_bytes());
            self
        }
        fn xor_esi(&mut self) -> &mut Self {
            self.0.extend([0x31, 0xF6]);
            self
        }
        /// `call`/`jmp rel32` (opcode E8/E9) to `target`, at `base` + current length.
        fn branch(&mut self, opcode: u8, base: u64, target: u64) -> &mut Self {
            let next = base + self.0.len() as u64 + 5;
            self.0.push(opcode);
            self.0
                .extend(((target as i64 - next as i64) as i32).to_le_bytes());
            self
        }
        /// BoringSSL's `ERR_put_error(16, 0, reason, file, line)`.
        fn put_error(&mut self, base: u64, reason: u32, line: u32) -> &mut Self {
            self.mov(1, FILE as u32)
                .mov(7, 16)
                .xor_esi()
                .mov(2, reason)
                .mov(8, line);
            self.branch(0xE8, base, ERR_FN)
        }
        /// An older build's four-argument `(lib, reason, file, line)`.
        fn put_error_old(&mut self, base: u64, reason: u32, line: u32) -> &mut Self {
            self.mov(2, FILE as u32)
                .mov(7, 16)
                .mov(6, reason)
                .mov(1, line);
            self.branch(0xE8, base, ERR_FN)
        }
        /// `ret`, then `int3` padding to the next 16-byte boundary.
        fn end(&mut self) -> Vec<u8> {
            self.0.push(0xC3);
            while !self.0.len().is_multiple_of(16) {
                self.0.push(0xCC);
            }
            std::mem::take(&mut self.0)
        }
    }

    /// A code image of: SSL_read at 0x1000, SSL_write at 0x1040, another ssl_lib.cc function
    /// raising reason 66 further up (at 0x1100), and a caller of all three at 0x1200.
    fn image(old: bool) -> (Image<'static>, u64, u64) {
        let (read, write, other, caller) = (0x1000u64, 0x1040u64, 0x1100u64, 0x1200u64);
        let put = |a: &mut Asm, base, reason, line| {
            if old {
                a.put_error_old(base, reason, line);
            } else {
                a.put_error(base, reason, line);
            }
        };
        let mut code = Vec::new();
        let mut a = Asm::default();
        a.0.push(0x55);
        put(&mut a, read, 66, 933);
        code.extend(a.end());
        code.resize((write - read) as usize, 0xCC);
        a.0.push(0x55);
        put(&mut a, write, 66, 955);
        put(&mut a, write, 226, 960);
        // The shared error call: arguments set, then a jump back to an earlier call.
        let shared = write + a.0.len() as u64;
        put(&mut a, write, 111, 981);
        a.mov(1, FILE as u32)
            .mov(7, 16)
            .xor_esi()
            .mov(2, 215)
            .mov(8, 975);
        a.branch(0xE9, write, shared);
        code.extend(a.end());
        code.resize((other - read) as usize, 0xCC);
        a.0.push(0x55);
        put(&mut a, other, 66, 300);
        code.extend(a.end());
        code.resize((caller - read) as usize, 0xCC);
        for target in [read, write, other] {
            a.branch(0xE8, caller, target);
        }
        code.extend(a.end());
        let mut data = vec![0u8; 0x10];
        data.extend(b"../../vendor/boringssl/ssl/ssl_lib.cc\0");
        let image = Image {
            data: vec![(FILE - 0x10, data.into())],
            code: vec![(read, code.clone().into())],
            segments: vec![(read, 0x5000, code.len() as u64)],
            pie: false,
            ..Image::default()
        };
        (image, 0x5000 + write - read, 0x5000)
    }

    /// The BoringSSL fixture as the parts of an executable (`analysis_cache`'s tests write it
    /// out): (address, bytes) of its code, then of its read-only data. SSL_read is at the
    /// code's start, SSL_write 0x40 further.
    pub(crate) fn boringssl_executable() -> ((u64, Vec<u8>), (u64, Vec<u8>)) {
        let (image, _, _) = image(false);
        let code = (image.code[0].0, image.code[0].1.to_vec());
        (code, (image.data[0].0, image.data[0].1.to_vec()))
    }

    #[test]
    fn boringssl_write_and_read_located_from_error_sites() {
        for old in [false, true] {
            let (image, write, read) = image(old);
            assert_eq!(image.strings_ending_with(b"/ssl/ssl_lib.cc"), vec![FILE]);
            let located = locate_boringssl(&image).unwrap_or_else(|e| panic!("old={old}: {e}"));
            assert_eq!((located.write, located.read), (write, read), "old={old}");
            assert!(located.how.contains("linker padding"), "{}", located.how);
        }
    }

    #[test]
    fn error_calls_read_both_argument_layouts_and_shared_calls() {
        let (image, _, _) = image(false);
        let files = BTreeSet::from([FILE]);
        let (start, end) = image.padded_function(0x1041).unwrap();
        assert_eq!(start, 0x1040);
        let mut calls = image.error_calls((start, end), &files);
        calls.sort_unstable();
        assert_eq!(
            calls,
            vec![
                [16, 66, 955],
                [16, 111, 981],
                [16, 215, 975],
                [16, 226, 960]
            ]
        );
        let (image, _, _) = self::image(true);
        let (start, end) = image.padded_function(0x1001).unwrap();
        assert_eq!(image.error_calls((start, end), &files), vec![[16, 66, 933]]);
    }

    #[test]
    fn a_function_nobody_calls_is_not_trusted() {
        let (mut image, _, _) = image(false);
        // Drop the caller: no direct branch reaches the candidate starts any more.
        image.code[0].1.to_mut().truncate(0x200);
        assert_eq!(image.padded_function(0x1041), None);
        assert!(locate_boringssl(&image).is_err());
    }

    #[test]
    fn ambiguity_is_refused() {
        let (mut image, _, _) = image(false);
        // A second function raising reason 111: SSL_write is no longer unique.
        let mut a = Asm::default();
        a.0.push(0x55);
        a.put_error(0x1300, 111, 990);
        let code = image.code[0].1.to_mut();
        code.resize(0x300, 0xCC);
        code.extend(a.end());
        let mut caller = Asm::default();
        caller.branch(0xE8, 0x1000 + code.len() as u64, 0x1300);
        code.extend(caller.end());
        image.segments[0].2 = code.len() as u64;
        let err = locate_boringssl(&image).unwrap_err();
        assert!(err.contains("2 functions"), "{err}");
    }

    /// OpenSSL 3's `ERR_raise(ERR_LIB_SSL, reason)` in function `name_at`:
    /// `ERR_set_debug(file, line, func)` then `ERR_set_error(20, reason, NULL)`.
    fn err_raise(a: &mut Asm, base: u64, file: u32, func: u32, line: u32, reason: u32) {
        a.branch(0xE8, base, ERR_FN + 0x10);
        a.mov(2, func).mov(6, line).mov(7, file);
        a.branch(0xE8, base, ERR_FN + 0x20);
        a.0.extend([0x31, 0xD2]); // xor edx, edx
        a.mov(6, reason).mov(7, 20);
        a.branch(0xE8, base, ERR_FN + 0x30);
    }

    /// ssl_write_internal at 0x1000 (raising 412 when `flags`), ssl_read_internal at 0x1080,
    /// a third function naming ssl_write_internal at 0x1100 when `inlined`, a caller at 0x1200.
    fn openssl_image(flags: bool, inlined: bool) -> Image<'static> {
        let d = 0x40_0000u64;
        let mut data = b"ssl/ssl_lib.c\0".to_vec();
        let write_name = d + data.len() as u64;
        data.extend(b"ssl_write_internal\0");
        let read_name = d + data.len() as u64;
        data.extend(b"ssl_read_internal\0");
        let (file, w, r) = (d as u32, write_name as u32, read_name as u32);
        let mut code = Vec::new();
        let mut a = Asm::default();
        a.0.push(0x55);
        err_raise(&mut a, 0x1000, file, w, 2045, 276);
        if flags {
            err_raise(&mut a, 0x1000, file, w, 2058, 412);
        }
        code.extend(a.end());
        code.resize(0x80, 0xCC);
        a.0.push(0x55);
        err_raise(&mut a, 0x1080, file, r, 1830, 276);
        code.extend(a.end());
        code.resize(0x100, 0xCC);
        if inlined {
            a.0.push(0x55);
            err_raise(&mut a, 0x1100, file, w, 2045, 276);
            code.extend(a.end());
        }
        code.resize(0x200, 0xCC);
        for target in [0x1000, 0x1080, 0x1100] {
            a.branch(0xE8, 0x1200, target);
        }
        code.extend(a.end());
        Image {
            data: vec![(d, data.into())],
            code: vec![(0x1000, code.clone().into())],
            segments: vec![(0x1000, 0x5000, code.len() as u64)],
            pie: false,
            ..Image::default()
        }
    }

    #[test]
    fn openssl_internals_located_by_the_names_their_errors_carry() {
        for (flags, stack) in [(false, "openssl"), (true, "openssl-3.3")] {
            let located = locate_openssl(&openssl_image(flags, false)).unwrap();
            assert_eq!(located.stack, stack);
            assert_eq!((located.write, located.read), (0x5000, 0x5080));
            assert_eq!(located.handshake, None);
            assert!(
                located.how.starts_with("OpenSSL ssl_write_internal"),
                "{}",
                located.how
            );
        }
        let err = locate_openssl(&openssl_image(false, true)).unwrap_err();
        assert!(
            err.contains("2 functions raise errors as ssl_write_internal"),
            "{err}"
        );
    }

    #[test]
    fn a_second_library_rides_along_and_a_failed_one_is_said() {
        let (boring, _, _) = image(false);
        let first = locate_boringssl(&boring).unwrap();
        let second = locate_openssl(&openssl_image(true, false)).unwrap();
        let OpaqueScan::Located(l) = combine(vec![
            Ok(first.clone()),
            Ok(second.clone()),
            Err("aws-lc inside, not located: x".into()),
        ]) else {
            panic!("not located");
        };
        assert_eq!(l.stacks().count(), 2);
        assert_eq!(l.also, vec![second]);
        let text = l.describe(false);
        assert!(text.starts_with(&first.how), "{text}");
        assert!(
            text.ends_with("; not covered: aws-lc inside, not located: x"),
            "{text}"
        );
        assert_eq!(
            combine(vec![Err("a".into()), Err("b".into())]),
            OpaqueScan::NotLocated("a; b".into())
        );
        assert_eq!(combine(Vec::new()), OpaqueScan::NotTls);
    }

    #[test]
    fn references_to_many_targets_are_each_ones_together() {
        // BoringSSL's fixture: references by `mov r32, imm32` to FILE; add `lea` (rip-relative)
        // loads of FILE and of a second string, and look the targets up together and alone.
        let (mut image, _, _) = image(false);
        let other = FILE + 0x20;
        let code = image.code[0].1.to_mut();
        let base = 0x1000u64;
        let mut leas = Vec::new();
        for (rex, target) in [(0x48u8, FILE), (0x4C, other), (0x48, FILE)] {
            let at = code.len() as u64;
            let disp = (target as i64 - (base + at + 7) as i64) as i32;
            code.extend([rex, 0x8D, 0x05 | (3 << 3)]);
            code.extend(disp.to_le_bytes());
            leas.push((base + at, target));
        }
        let each = |targets: &[u64]| {
            let (mut fresh, _, _) = self::image(false);
            fresh.code = image.code.clone();
            fresh.references(targets)
        };
        let (file, second) = (each(&[FILE]), each(&[other]));
        assert_eq!(second, vec![leas[1].0]);
        assert!(
            file.contains(&leas[0].0) && file.contains(&leas[2].0),
            "{file:x?}"
        );
        let mut both = [file.clone(), second.clone()].concat();
        both.sort_unstable();
        assert_eq!(image.references(&[FILE, other]), both);
        // Now known: answered without another pass, the same.
        assert_eq!(image.references(&[other]), second);
        assert_eq!(image.references(&[FILE]), file);
    }

    /// A file under the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> TempFile {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "agentwatch-opaque-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn windows_find_every_match_once_across_their_edges() {
        let bytes = b"abcabcXYZabcXYabcXYZ".repeat(7);
        let needle = b"XYZ";
        let expect: Vec<usize> = memchr::memmem::find_iter(&bytes, needle).collect();
        for size in 1..=bytes.len() + 1 {
            let mut got = Vec::new();
            windows_of(size, &bytes, needle.len() - 1, |offset, window, own| {
                got.extend(
                    memchr::memmem::find_iter(window, needle)
                        .filter(|at| *at < own)
                        .map(|at| offset + at),
                );
                true
            });
            assert_eq!(got, expect, "window {size}");
        }
        assert_eq!(find_all(&bytes, needle), expect);
        assert!(contains(&bytes, b"cXYa") && !contains(&bytes, b"ZZ"));
    }

    /// The Rss of the mapping that starts at `start`, from /proc/self/smaps, in KiB.
    fn mapping_rss_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_pass_over_a_mapped_file_holds_one_window_of_it() {
        use sha2::Digest;
        let contents: Vec<u8> = (0..3 * WINDOW + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let file = TempFile::new(&contents);
        let mapped = Mapped::open(&file.0).unwrap();
        let start = mapped.bytes().as_ptr() as usize;
        let mut largest = 0;
        read_through(mapped.bytes(), 0, |_, window, _| {
            // Touch every page of the window, as a search does.
            let sum: u64 = window.iter().step_by(4096).map(|b| *b as u64).sum();
            std::hint::black_box(sum);
            largest = largest.max(mapping_rss_kib(start));
            true
        });
        // One window at a time (read-ahead may map a little more), never the whole file.
        assert!(largest >= (WINDOW / 1024) as u64, "{largest} KiB");
        assert!(largest < (2 * WINDOW / 1024) as u64, "{largest} KiB");
        assert!(
            mapping_rss_kib(start) < 1024,
            "{} KiB",
            mapping_rss_kib(start)
        );
        // Let go of, not lost: the bytes read the same afterwards.
        assert_eq!(
            sha256(mapped.bytes()),
            <[u8; 32]>::from(sha2::Sha256::digest(&contents))
        );
        assert_eq!(mapped.bytes(), &contents[..]);
    }

    #[test]
    fn a_mapped_file_reads_as_its_bytes_and_is_not_written_while_mapped() {
        let file = TempFile::new(b"not an ELF file\0");
        let mapped = Mapped::open(&file.0).unwrap();
        assert_eq!(mapped.bytes(), b"not an ELF file\0");
        assert_eq!(scan_file(&mapped), OpaqueScan::NotTls);
        if mapped.leased() {
            // A writer waits for the lease; without waiting, it is told so.
            use std::os::unix::fs::OpenOptionsExt;
            let writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&file.0);
            assert_eq!(
                writer.map(|_| ()).unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock
            );
        }
        drop(mapped);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file.0)
            .unwrap();
        let empty = TempFile::new(b"");
        assert_eq!(Mapped::open(&empty.0).unwrap().bytes(), b"");
        assert_eq!(scan(&empty.0), OpaqueScan::NotTls);
        assert_eq!(build_id(&empty.0), None);
    }

    #[test]
    fn files_without_the_strings_are_not_tls() {
        assert_eq!(scan(Path::new("/bin/true")), OpaqueScan::NotTls);
        assert_eq!(scan(Path::new("/nonexistent")), OpaqueScan::NotTls);
    }
}
