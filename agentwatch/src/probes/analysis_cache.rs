//! Analysis results of opaque executables (`opaque::scan`), kept in memory and on disk so that
//! a restarted daemon, or another node sharing the directory, does not analyse a build again.
//!
//! An executable is known by its GNU build id when it has one, else by the SHA-256 of the
//! whole file (Codex's musl builds have no build id). Each result is one small JSON file,
//! `v<ANALYSIS_FORMAT>-<key>.json`, written atomically (a temporary file renamed into place).
//! A daemon whose analysis changed bumps `ANALYSIS_FORMAT` and so never reads older results;
//! those age out of the bounded directory. Nothing read back is trusted blindly: a file that is
//! unreadable, not the expected JSON, of another format or key, or naming an offset outside the
//! executable's code or at bytes other than those analysed is counted, analysed again and
//! overwritten.
//!
//! Hashing a 300 MB file costs about as much as analysing it, so a file without a build id is
//! also recorded by its identity on this node in this boot (boot id, device, inode, size,
//! modification and change times: any write changes the change time), `v<N>-file-<hash>.json`
//! naming its key: a restarted daemon reads the result without hashing the file again.
//!
//! Executables without a TLS library inside (most of what runs) are answered by the analysis's
//! first look, a search of read-only data: they are never hashed or written to disk.
//!
//! A build id is a claim any file can make. A located result is given to another file with the
//! same key only if the bytes around its offsets are those analysed (a uprobe elsewhere would
//! break the program); a failed analysis ("not located"), which no bytes can confirm, is kept
//! by build id for the file analysed only (in memory), by content hash for every copy.
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::opaque::{self, Mapped, OpaqueScan};

/// The version of the analysis and of the stored results: bump it whenever `opaque::scan` may
/// answer differently for the same file, or the stored JSON changes shape.
pub const ANALYSIS_FORMAT: u32 = 1;

/// A stored result is a few hundred bytes; anything much larger is not one.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// Executables without a TLS library (keyed by build id) remembered in memory, beyond the
/// `max_entries` results; forgotten all at once when full.
const NOT_TLS_CAP: usize = 4096;

/// A temporary file older than this was left by a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSource {
    Memory,
    Disk,
    /// Analysed by this call (then stored, if it found a TLS library inside).
    Analysed,
}

/// The analysis of one executable.
#[derive(Debug, Clone)]
pub struct Cached {
    pub scan: OpaqueScan,
    pub source: CacheSource,
    /// How long this call took (looking up, hashing, reading or analysing).
    pub took: Duration,
    /// `build-id-<hex>` or `sha256-<hex>`; `None` for a file without a build id and without
    /// a TLS library inside (never hashed), or one that could not be read.
    pub key: Option<String>,
}

/// Counters, for `agentwatch status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AnalysisCacheStats {
    pub memory_hits: u64,
    pub disk_hits: u64,
    /// Files analysed (including those found to have no TLS library inside).
    pub analysed: u64,
    /// Whole-file SHA-256 hashes computed (executables without a build id).
    pub content_hashes: u64,
    /// Executables without a build id whose key came from the identity recorded on disk by an
    /// earlier run (no hash).
    pub identity_hits: u64,
    /// Results that could not be stored (the directory or the file could not be written).
    pub disk_write_errors: u64,
    /// Stored results (or file identities) that were unreadable, malformed, of another format
    /// or key, or naming offsets outside the executable's code or at other bytes than those
    /// analysed: analysed (or hashed) again and overwritten.
    pub disk_read_errors: u64,
    /// Stored results removed to keep the directory within `max_entries` (oldest first).
    pub evicted: u64,
    /// Results dropped from memory by key (oldest first); still on disk, and still known for
    /// the files seen (by identity, a bounded map of its own).
    pub memory_evicted: u64,
    /// Results held for a key whose located functions' bytes differ in the file at hand (a
    /// file claiming another's build id): that file analysed on its own.
    pub mismatched: u64,
}

/// One stored result.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    format: u32,
    key: String,
    /// The daemon that wrote it and how long the analysis took: for people reading the files.
    #[serde(default)]
    agentwatch: String,
    #[serde(default)]
    analysed_ms: u64,
    scan: OpaqueScan,
    /// For a located library, the SHA-256 of the bytes at the offsets where the uprobes go
    /// (see `witness`): a result is used only where the file has the bytes analysed.
    #[serde(default)]
    witness: Option<String>,
}

/// One recorded file identity and its key.
#[derive(serde::Serialize, serde::Deserialize)]
struct KnownFile {
    format: u32,
    boot: String,
    identity: Identity,
    key: String,
}

/// What identifies a file's contents without reading them: a file replaced or written to
/// gets another inode, size, modification or change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Analysis results by executable: memory, then the directory, then the analysis.
pub struct AnalysisCache {
    dir: Option<PathBuf>,
    max_entries: usize,
    /// Key → result (and its `witness`) of the executables with a TLS library inside, and
    /// their insertion order.
    memory: HashMap<String, (OpaqueScan, Option<String>)>,
    order: VecDeque<String>,
    /// Keys of executables (with a build id) found to have no TLS library inside.
    not_tls: HashSet<String>,
    /// File identity → key and result, so a known file is neither parsed nor hashed again.
    identities: HashMap<Identity, (String, OpaqueScan)>,
    /// This boot's id (identities on disk are valid for it only), if readable.
    boot: Option<String>,
    stats: AnalysisCacheStats,
}

impl AnalysisCache {
    /// dir: `Some(<data_dir>/analysis)` in the daemon (created when first written, mode 0700),
    /// `None` in `inspect` and unit tests. `max_entries` bounds both the results held in
    /// memory by key and the files in `dir` (a build without a build id takes two: its result
    /// and its file identity).
    pub fn new(dir: Option<PathBuf>, max_entries: usize) -> Self {
        AnalysisCache {
            dir,
            max_entries: max_entries.max(1),
            memory: HashMap::new(),
            order: VecDeque::new(),
            not_tls: HashSet::new(),
            identities: HashMap::new(),
            boot: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            stats: AnalysisCacheStats::default(),
        }
    }

    pub fn stats(&self) -> &AnalysisCacheStats {
        &self.stats
    }

    /// The analysis of the executable at `path`: from memory, from disk, or analysed now
    /// (then stored).
    pub fn scan(&mut self, path: &Path) -> Cached {
        let started = Instant::now();
        let done = |scan, source, key| Cached {
            scan,
            source,
            took: started.elapsed(),
            key,
        };
        // A file seen before, unchanged: its result without reading it.
        if let Some((key, scan)) = std::fs::metadata(path)
            .ok()
            .and_then(|m| self.identities.get(&Identity::of(&m)))
            .cloned()
        {
            self.stats.memory_hits += 1;
            return done(scan, CacheSource::Memory, Some(key));
        }
        let Ok(file) = Mapped::open(path) else {
            // What `opaque::scan` says of a file it cannot read.
            self.stats.analysed += 1;
            return done(OpaqueScan::NotTls, CacheSource::Analysed, None);
        };
        let bytes = file.bytes();
        let identity = file.file().metadata().ok().map(|m| Identity::of(&m));
        // Whether the identity → key record on disk is to be written (a key that was hashed).
        let mut hashed = false;
        let key = match opaque::build_id_of(bytes) {
            Some(id) => build_id_key(&id),
            None => match identity.and_then(|i| self.read_known_file(&i)) {
                Some(key) => {
                    self.stats.identity_hits += 1;
                    key
                }
                None => {
                    if !opaque::may_have_tls(bytes) {
                        self.stats.analysed += 1;
                        return done(OpaqueScan::NotTls, CacheSource::Analysed, None);
                    }
                    self.stats.content_hashes += 1;
                    hashed = true;
                    file.will_read(bytes);
                    format!("sha256-{}", hex(&opaque::sha256(bytes)))
                }
            },
        };
        let (scan, source) = self.by_key(&key, &file);
        if let Some(identity) = identity {
            if self.identities.len() >= 4 * self.max_entries + NOT_TLS_CAP {
                self.identities.clear();
            }
            self.identities
                .insert(identity, (key.clone(), scan.clone()));
            if hashed {
                self.store_known_file(&identity, &key);
            }
        }
        done(scan, source, Some(key))
    }

    /// The result for `key` (the key of `file`): from memory, from disk, or analysed now.
    fn by_key(&mut self, key: &str, file: &Mapped) -> (OpaqueScan, CacheSource) {
        let bytes = file.bytes();
        // Another file with this key (a copy elsewhere, or one claiming its build id): the
        // result holds for this one only if its bytes are those analysed (where located), or
        // if, like that one, it has no TLS library's strings.
        match self.remembered(key) {
            Some((scan, _)) if !holds_for_other_files(key, &scan) => {}
            Some((scan, seen))
                if seen == witness(bytes, &scan)
                    && (scan != OpaqueScan::NotTls || !opaque::may_have_tls(bytes)) =>
            {
                self.stats.memory_hits += 1;
                return (scan, CacheSource::Memory);
            }
            Some(_) => self.stats.mismatched += 1,
            None => {
                if let Some(scan) = self.read_stored(key, bytes) {
                    self.stats.disk_hits += 1;
                    let seen = witness(bytes, &scan);
                    self.remember(key, &scan, seen);
                    return (scan, CacheSource::Disk);
                }
            }
        }
        let analysing = Instant::now();
        let scan = opaque::scan_file(file);
        let analysed_in = analysing.elapsed();
        self.stats.analysed += 1;
        let seen = witness(bytes, &scan);
        self.remember(key, &scan, seen.clone());
        if !matches!(scan, OpaqueScan::NotTls) && holds_for_other_files(key, &scan) {
            self.store(key, &scan, seen, analysed_in);
        }
        (scan, CacheSource::Analysed)
    }

    fn remembered(&self, key: &str) -> Option<(OpaqueScan, Option<String>)> {
        if self.not_tls.contains(key) {
            return Some((OpaqueScan::NotTls, None));
        }
        self.memory.get(key).cloned()
    }

    fn remember(&mut self, key: &str, scan: &OpaqueScan, witness: Option<String>) {
        if matches!(scan, OpaqueScan::NotTls) {
            if self.memory.remove(key).is_some() {
                self.order.retain(|k| k != key);
            }
            if self.not_tls.len() >= NOT_TLS_CAP {
                self.not_tls.clear();
            }
            self.not_tls.insert(key.to_string());
            return;
        }
        self.not_tls.remove(key);
        if self
            .memory
            .insert(key.to_string(), (scan.clone(), witness))
            .is_none()
        {
            self.order.push_back(key.to_string());
        }
        while self.memory.len() > self.max_entries {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.memory.remove(&oldest);
            self.stats.memory_evicted += 1;
        }
    }

    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("v{ANALYSIS_FORMAT}-{key}.json")))
    }

    /// The stored result for `key`, if there is one that holds up; a bad one is counted.
    fn read_stored(&mut self, key: &str, file: &[u8]) -> Option<OpaqueScan> {
        let path = self.entry_path(key)?;
        let entry = match read_entry(&path) {
            Ok(None) => return None,
            Ok(Some(entry)) => entry,
            Err(why) => {
                self.stats.disk_read_errors += 1;
                tracing::warn!(path = %path.display(), "stored analysis ignored, analysing again: {why}");
                return None;
            }
        };
        let why = if entry.format != ANALYSIS_FORMAT {
            Some(format!(
                "format {} (this daemon's is {ANALYSIS_FORMAT})",
                entry.format
            ))
        } else if entry.key != key {
            Some(format!("it is for {}", entry.key))
        } else if matches!(entry.scan, OpaqueScan::NotTls) {
            // Never stored: an entry saying so would hide a TLS library.
            Some("it says no TLS library inside".to_string())
        } else if !holds_for_other_files(key, &entry.scan) {
            Some("a failed analysis is not kept by build id".to_string())
        } else if !opaque::offsets_in_code(file, &entry.scan) {
            Some("it names offsets outside the executable's code".to_string())
        } else if entry.witness != witness(file, &entry.scan) {
            Some("the bytes at its offsets are not those analysed".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            self.stats.disk_read_errors += 1;
            tracing::warn!(path = %path.display(), "stored analysis ignored, analysing again: {why}");
            return None;
        }
        // Recently used: the directory evicts by modification time.
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(entry.scan)
    }

    /// Writes the result for `key` (temporary file, then renamed into place), then keeps the
    /// directory within bounds.
    fn store(&mut self, key: &str, scan: &OpaqueScan, witness: Option<String>, took: Duration) {
        let (Some(dir), Some(path)) = (self.dir.clone(), self.entry_path(key)) else {
            return;
        };
        let entry = Entry {
            format: ANALYSIS_FORMAT,
            key: key.to_string(),
            agentwatch: env!("CARGO_PKG_VERSION").to_string(),
            analysed_ms: took.as_millis() as u64,
            scan: scan.clone(),
            witness,
        };
        if let Err(e) = write_entry(&dir, &path, &entry) {
            self.stats.disk_write_errors += 1;
            tracing::warn!(path = %path.display(), "analysis not stored: {e}");
            return;
        }
        self.evict(&dir);
    }

    /// Removes the least recently used entries beyond `max_entries`, and temporary files
    /// left by writers that died.
    fn evict(&mut self, dir: &Path) {
        let Ok(listing) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = item.metadata() else { continue };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with(".tmp-") {
                if modified.elapsed().is_ok_and(|age| age > STALE_TEMP) {
                    let _ = std::fs::remove_file(item.path());
                }
            } else if is_entry_name(&name) {
                entries.push((modified, item.path()));
            }
        }
        if entries.len() <= self.max_entries {
            return;
        }
        entries.sort();
        let excess = entries.len() - self.max_entries;
        for (_, path) in entries.into_iter().take(excess) {
            match std::fs::remove_file(&path) {
                Ok(()) => self.stats.evicted += 1,
                // Another daemon sharing the directory evicted it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.stats.disk_write_errors += 1;
                    tracing::warn!(path = %path.display(), "stored analysis not evicted: {e}");
                }
            }
        }
    }
}

impl AnalysisCache {
    fn known_file_path(&self, identity: &Identity) -> Option<PathBuf> {
        let (dir, boot) = (self.dir.as_ref()?, self.boot.as_ref()?);
        let name = serde_json::to_string(&(boot, identity)).ok()?;
        let digest = hex(&Sha256::digest(name.as_bytes())[..16]);
        Some(dir.join(format!("v{ANALYSIS_FORMAT}-file-{digest}.json")))
    }

    /// The key recorded for the file with `identity` by an earlier run in this boot.
    fn read_known_file(&mut self, identity: &Identity) -> Option<String> {
        let path = self.known_file_path(identity)?;
        let known: KnownFile = match read_json(&path) {
            Ok(None) => return None,
            Ok(Some(known)) => known,
            Err(why) => {
                self.stats.disk_read_errors += 1;
                tracing::warn!(path = %path.display(), "file identity ignored: {why}");
                return None;
            }
        };
        let valid_key = known.key.strip_prefix("sha256-").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if known.format != ANALYSIS_FORMAT
            || Some(&known.boot) != self.boot.as_ref()
            || known.identity != *identity
            || !valid_key
        {
            self.stats.disk_read_errors += 1;
            tracing::warn!(path = %path.display(), "file identity ignored: not this file's");
            return None;
        }
        Some(known.key)
    }

    fn store_known_file(&mut self, identity: &Identity, key: &str) {
        let (Some(dir), Some(path), Some(boot)) = (
            self.dir.clone(),
            self.known_file_path(identity),
            self.boot.clone(),
        ) else {
            return;
        };
        let known = KnownFile {
            format: ANALYSIS_FORMAT,
            boot,
            identity: *identity,
            key: key.to_string(),
        };
        if let Err(e) = write_json(&dir, &path, &known) {
            self.stats.disk_write_errors += 1;
            tracing::warn!(path = %path.display(), "file identity not stored: {e}");
        }
    }
}

/// The SHA-256 of the bytes around each offset of a located result (from 256 before to 1 KiB
/// after, within the file), in order; `None` for other results.
fn witness(file: &[u8], scan: &OpaqueScan) -> Option<String> {
    let OpaqueScan::Located(located) = scan else {
        return None;
    };
    let mut hash = Sha256::new();
    for l in located.stacks() {
        for offset in [Some(l.write), Some(l.read), l.handshake]
            .into_iter()
            .flatten()
        {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(file.len());
            let (from, to) = (
                at.saturating_sub(256),
                file.len().min(at.saturating_add(1024)),
            );
            hash.update(offset.to_le_bytes());
            hash.update(&file[from..to]);
        }
    }
    Some(hex(&hash.finalize()))
}

/// Whether the result for `key` may be given to a file other than the one analysed. A build
/// id is only a claim (any file can carry any note): a located result is checked against the
/// file's bytes (`witness`), one without TLS by the first look again, but a failed analysis
/// cannot be checked, and is kept for the file analysed only; under a content hash, it holds.
fn holds_for_other_files(key: &str, scan: &OpaqueScan) -> bool {
    !(key.starts_with("build-id-") && matches!(scan, OpaqueScan::NotLocated(_)))
}

/// `build-id-<hex>`; an id too long for a file name is hashed.
fn build_id_key(id: &[u8]) -> String {
    if id.len() <= 64 {
        format!("build-id-{}", hex(id))
    } else {
        format!("build-id-sha256-{}", hex(&Sha256::digest(id)))
    }
}

/// Whether `name` is a stored result of any format (`v<N>-<key>.json`).
fn is_entry_name(name: &str) -> bool {
    name.strip_prefix('v')
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(version, rest)| {
            !version.is_empty()
                && version.bytes().all(|b| b.is_ascii_digit())
                && rest.ends_with(".json")
        })
}

/// The entry at `path`: `None` if there is none, an error if it is unreadable or malformed.
fn read_entry(path: &Path) -> Result<Option<Entry>, String> {
    read_json(path)
}

/// The JSON file at `path`: `None` if there is none, an error if it is unreadable or malformed.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // No entry, or no directory (whose creation will fail, counted, when storing).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.to_string()),
    };
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size > MAX_ENTRY_BYTES {
        return Err(format!("{size} bytes"));
    }
    let mut text = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_ENTRY_BYTES + 1),
        &mut text,
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("malformed: {e}"))
}

fn write_entry(dir: &Path, path: &Path, entry: &Entry) -> std::io::Result<()> {
    write_json(dir, path, entry)
}

/// Writes `value` to `path` in `dir` (created, mode 0700, if missing) through a temporary
/// file renamed into place: a reader sees the old file or the new one, never part of one.
fn write_json<T: serde::Serialize>(dir: &Path, path: &Path, value: &T) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let temp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry")
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&serde_json::to_vec_pretty(value)?)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory under the temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "agentwatch-analysis-cache-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Where `elf` puts the read-only data and the code in the file.
    const DATA_OFFSET: u64 = 0x1000;
    const TEXT_OFFSET: u64 = 0x2000;

    /// A minimal x86-64 executable (ET_EXEC): `.rodata` with `data` (at file offset 0x1000) in
    /// a read-only segment, then `.text` with `code` (at 0x2000) and the rest (with
    /// `build_id`, a `.note.gnu.build-id`) in a read+execute one.
    fn elf(data: (u64, &[u8]), code: (u64, &[u8]), build_id: Option<&[u8]>) -> Vec<u8> {
        assert!(data.1.len() as u64 <= TEXT_OFFSET - DATA_OFFSET);
        let mut out = vec![0u8; DATA_OFFSET as usize];
        out.extend(data.1);
        out.resize(TEXT_OFFSET as usize, 0);
        out.extend(code.1);
        let note = build_id.map(|id| {
            let at = out.len() as u64;
            out.extend(4u32.to_le_bytes());
            out.extend((id.len() as u32).to_le_bytes());
            out.extend(3u32.to_le_bytes()); // NT_GNU_BUILD_ID
            out.extend(b"GNU\0");
            out.extend(id);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
            (at, out.len() as u64 - at)
        });
        let shstrtab_at = out.len() as u64;
        let names = b"\0.rodata\0.text\0.shstrtab\0.note.gnu.build-id\0";
        out.extend(names);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let end = out.len() as u64;
        let in_code = |offset: u64| code.0 + offset - TEXT_OFFSET;
        // name offset, type, flags, address, offset, size, alignment
        let mut sections = vec![
            (0u32, 0u32, 0u64, 0u64, 0u64, 0u64, 0u64),
            (1, 1, 2, data.0, DATA_OFFSET, data.1.len() as u64, 1), // PROGBITS, ALLOC
            (9, 1, 6, code.0, TEXT_OFFSET, code.1.len() as u64, 16), // PROGBITS, ALLOC|EXEC
            (15, 3, 0, 0, shstrtab_at, names.len() as u64, 1),      // STRTAB
        ];
        if let Some((at, size)) = note {
            sections.push((25, 7, 2, in_code(at), at, size, 4)); // NOTE, ALLOC
        }
        for (name, kind, flags, address, offset, size, align) in &sections {
            out.extend(name.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(flags.to_le_bytes());
            out.extend(address.to_le_bytes());
            out.extend(offset.to_le_bytes());
            out.extend(size.to_le_bytes());
            out.extend([0u8; 8]); // link, info
            out.extend(align.to_le_bytes());
            out.extend(0u64.to_le_bytes()); // entry size
        }
        let mut header = Vec::new();
        header.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        header.extend(2u16.to_le_bytes()); // ET_EXEC
        header.extend(62u16.to_le_bytes()); // EM_X86_64
        header.extend(1u32.to_le_bytes());
        header.extend(code.0.to_le_bytes()); // entry
        header.extend(64u64.to_le_bytes()); // program headers
        header.extend(end.to_le_bytes()); // section headers
        header.extend(0u32.to_le_bytes());
        header.extend(64u16.to_le_bytes());
        header.extend(56u16.to_le_bytes());
        header.extend(2u16.to_le_bytes());
        header.extend(64u16.to_le_bytes());
        header.extend((sections.len() as u16).to_le_bytes());
        header.extend(3u16.to_le_bytes()); // .shstrtab
        // PT_LOAD R with the data, PT_LOAD R+X from the code on.
        for (flags, offset, address, size) in [
            (4u32, DATA_OFFSET, data.0, data.1.len() as u64),
            (5, TEXT_OFFSET, code.0, end - TEXT_OFFSET),
        ] {
            header.extend(1u32.to_le_bytes());
            header.extend(flags.to_le_bytes());
            header.extend(offset.to_le_bytes());
            header.extend(address.to_le_bytes());
            header.extend(address.to_le_bytes());
            header.extend(size.to_le_bytes());
            header.extend(size.to_le_bytes());
            header.extend(0x1000u64.to_le_bytes());
        }
        out[..header.len()].copy_from_slice(&header);
        out
    }

    /// opaque's BoringSSL fixture as an executable: SSL_read at file offset 0x2000, SSL_write
    /// at 0x2040. `tag` varies the contents (a byte after the data).
    fn agent(build_id: Option<&[u8]>, tag: u8) -> Vec<u8> {
        let ((code_at, code), (data_at, mut data)) = opaque::tests::boringssl_executable();
        data.push(tag);
        elf((data_at, &data), (code_at, &code), build_id)
    }

    /// BoringSSL's source path in the data, no code raising errors: "not located".
    fn broken(build_id: Option<&[u8]>, tag: u8) -> Vec<u8> {
        let mut data = b"../../vendor/boringssl/ssl/ssl_lib.cc\0".to_vec();
        data.push(tag);
        elf((0x40_0000, &data), (0x1000, &[0xCC; 0x100]), build_id)
    }

    /// No TLS library's strings at all.
    fn plain(build_id: Option<&[u8]>) -> Vec<u8> {
        elf((0x40_0000, b"hello\0"), (0x1000, &[0xC3]), build_id)
    }

    fn write(dir: &TempDir, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn stored(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn located(scan: &OpaqueScan) -> (u64, u64) {
        match scan {
            OpaqueScan::Located(l) => (l.write, l.read),
            other => panic!("{other:?}"),
        }
    }

    fn age(path: &Path, by: Duration) {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(SystemTime::now() - by)
            .unwrap();
    }

    #[test]
    fn the_executables_written_are_what_the_analysis_reads() {
        let files = TempDir::new();
        let id = [0xAB; 20];
        let path = write(&files, "agent", &agent(Some(&id), 0));
        assert_eq!(opaque::build_id(&path), Some(id.to_vec()));
        let scan = opaque::scan(&path);
        assert_eq!(located(&scan), (TEXT_OFFSET + 0x40, TEXT_OFFSET));
        assert!(opaque::offsets_in_code(
            &std::fs::read(&path).unwrap(),
            &scan
        ));
        let path = write(&files, "broken", &broken(None, 0));
        let OpaqueScan::NotLocated(why) = opaque::scan(&path) else {
            panic!("{:?}", opaque::scan(&path));
        };
        assert!(why.starts_with("BoringSSL inside, not located"), "{why}");
        assert!(!opaque::may_have_tls(&plain(None)));
    }

    #[test]
    fn analysed_once_then_from_memory_then_from_disk_after_a_restart() {
        let (files, cache_dir) = (TempDir::new(), TempDir::new());
        let dir = cache_dir.0.join("analysis");
        let path = write(&files, "agent", &agent(Some(&[1, 2, 3, 4]), 0));
        let mut cache = AnalysisCache::new(Some(dir.clone()), 8);
        let first = cache.scan(&path);
        assert_eq!(first.source, CacheSource::Analysed);
        assert_eq!(first.scan, opaque::scan(&path));
        assert_eq!(first.key.as_deref(), Some("build-id-01020304"));
        assert_eq!(
            stored(&dir),
            vec![format!("v{ANALYSIS_FORMAT}-build-id-01020304.json")]
        );
        let again = cache.scan(&path);
        assert_eq!(
            (again.source, &again.scan),
            (CacheSource::Memory, &first.scan)
        );
        // The same build at another path (another container's copy) is known by its build id.
        let copy = write(&files, "copy", &agent(Some(&[1, 2, 3, 4]), 0));
        assert_eq!(cache.scan(&copy).source, CacheSource::Memory);
        let mut restarted = AnalysisCache::new(Some(dir.clone()), 8);
        let read = restarted.scan(&path);
        assert_eq!((read.source, &read.scan), (CacheSource::Disk, &first.scan));
        assert_eq!(restarted.scan(&path).source, CacheSource::Memory);
        assert_eq!(
            restarted.stats(),
            &AnalysisCacheStats {
                disk_hits: 1,
                memory_hits: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            cache.stats(),
            &AnalysisCacheStats {
                analysed: 1,
                memory_hits: 2,
                ..Default::default()
            }
        );
        // No directory: memory only.
        let mut memory = AnalysisCache::new(None, 8);
        assert_eq!(memory.scan(&path).source, CacheSource::Analysed);
        assert_eq!(memory.scan(&path).source, CacheSource::Memory);
    }

    #[test]
    fn without_a_build_id_the_key_is_the_contents() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let contents = agent(None, 0);
        let path = write(&files, "agent", &contents);
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 8);
        let first = cache.scan(&path);
        let key = format!("sha256-{}", hex(&Sha256::digest(&contents)));
        assert_eq!(first.key.as_deref(), Some(key.as_str()));
        assert_eq!(first.source, CacheSource::Analysed);
        // Unchanged: known by its identity, not hashed again.
        assert_eq!(cache.scan(&path).source, CacheSource::Memory);
        assert_eq!(cache.stats().content_hashes, 1);
        // A restarted daemon: the result from disk, the key from the file's recorded
        // identity, not from hashing it again.
        let mut restarted = AnalysisCache::new(Some(dir.0.clone()), 8);
        let read = restarted.scan(&path);
        assert_eq!((read.source, &read.key), (CacheSource::Disk, &first.key));
        assert_eq!(read.scan, first.scan);
        assert_eq!(restarted.stats().content_hashes, 0);
        assert_eq!(restarted.stats().identity_hits, 1);
        // Rewritten with other contents of the same size: another key, analysed again.
        std::fs::write(&path, agent(None, 1)).unwrap();
        let changed = cache.scan(&path);
        assert_eq!(changed.source, CacheSource::Analysed);
        assert_ne!(changed.key, first.key);
        assert_eq!(cache.stats().content_hashes, 2);
        let names = stored(&dir.0);
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(names.iter().filter(|n| n.contains("-file-")).count(), 2);
        // A damaged identity record is counted, and the file hashed instead.
        for name in names.iter().filter(|n| n.contains("-file-")) {
            std::fs::write(dir.0.join(name), r#"{"format":1}"#).unwrap();
        }
        let mut damaged = AnalysisCache::new(Some(dir.0.clone()), 8);
        let read = damaged.scan(&path);
        assert_eq!((read.source, &read.key), (CacheSource::Disk, &changed.key));
        assert_eq!(damaged.stats().disk_read_errors, 1);
        assert_eq!(damaged.stats().content_hashes, 1);
    }

    #[test]
    fn a_failed_analysis_is_kept_by_contents_not_by_build_id() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let id = [6; 20];
        let path = write(&files, "broken", &broken(Some(&id), 0));
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 8);
        let first = cache.scan(&path);
        assert!(matches!(first.scan, OpaqueScan::NotLocated(_)));
        assert_eq!(cache.scan(&path).source, CacheSource::Memory);
        assert!(stored(&dir.0).is_empty());
        // Another file with that build id is not told "not located" on the first one's word.
        let copy = write(&files, "copy", &broken(Some(&id), 0));
        assert_eq!(cache.scan(&copy).source, CacheSource::Analysed);
        // Without a build id the key is the contents: stored, and read back.
        let path = write(&files, "broken-no-id", &broken(None, 0));
        assert_eq!(cache.scan(&path).source, CacheSource::Analysed);
        let read = AnalysisCache::new(Some(dir.0.clone()), 8).scan(&path);
        assert_eq!((read.source, read.scan), (CacheSource::Disk, first.scan));
    }

    #[test]
    fn executables_without_tls_are_neither_hashed_nor_stored() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let without_id = write(&files, "plain", &plain(None));
        let with_id = write(&files, "with-id", &plain(Some(&[9; 8])));
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 8);
        for path in [&without_id, &with_id, &with_id] {
            assert_eq!(cache.scan(path).scan, OpaqueScan::NotTls);
        }
        assert_eq!(cache.scan(&without_id).key, None);
        assert_eq!(
            cache.stats(),
            &AnalysisCacheStats {
                analysed: 3,
                memory_hits: 1,
                ..Default::default()
            }
        );
        assert!(stored(&dir.0).is_empty());
        let missing = cache.scan(&files.0.join("missing"));
        assert_eq!((missing.scan, missing.key), (OpaqueScan::NotTls, None));
    }

    #[test]
    fn bad_entries_are_counted_analysed_again_and_overwritten() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let contents = agent(Some(&[7; 20]), 0);
        let path = write(&files, "agent", &contents);
        let analysed = AnalysisCache::new(Some(dir.0.clone()), 8).scan(&path);
        let key = analysed.key.clone().unwrap();
        let entry = dir.0.join(format!("v{ANALYSIS_FORMAT}-{key}.json"));
        let good = std::fs::read_to_string(&entry).unwrap();
        let planted = |write: u64| {
            let OpaqueScan::Located(mut l) = analysed.scan.clone() else {
                unreachable!()
            };
            l.write = write;
            l.how = "planted".into();
            OpaqueScan::Located(l)
        };
        let witnessed = |format: u32, key: &str, scan: &OpaqueScan, witness: Option<String>| {
            serde_json::json!({ "format": format, "key": key, "scan": scan, "witness": witness })
                .to_string()
        };
        let json = |format: u32, key: &str, scan: &OpaqueScan| {
            witnessed(format, key, scan, super::witness(&contents, scan))
        };
        let not_located = OpaqueScan::NotLocated("planted".into());
        let bad = [
            "{ not json".to_string(),
            String::new(),
            "x".repeat(MAX_ENTRY_BYTES as usize + 1),
            json(ANALYSIS_FORMAT + 1, &key, &analysed.scan),
            json(ANALYSIS_FORMAT, "build-id-00", &analysed.scan),
            json(ANALYSIS_FORMAT, &key, &OpaqueScan::NotTls),
            json(ANALYSIS_FORMAT, &key, &not_located),
            // An offset in the data, not the code: a uprobe there would break the program.
            json(ANALYSIS_FORMAT, &key, &planted(DATA_OFFSET)),
            json(ANALYSIS_FORMAT, &key, &planted(1 << 40)),
            // In the code, but without the bytes analysed there, or with others.
            witnessed(ANALYSIS_FORMAT, &key, &analysed.scan, None),
            witnessed(
                ANALYSIS_FORMAT,
                &key,
                &analysed.scan,
                super::witness(&agent(None, 1), &analysed.scan),
            ),
        ];
        for (n, contents) in bad.iter().enumerate() {
            std::fs::write(&entry, contents).unwrap();
            let mut cache = AnalysisCache::new(Some(dir.0.clone()), 8);
            let again = cache.scan(&path);
            assert_eq!(again.source, CacheSource::Analysed, "case {n}");
            assert_eq!(again.scan, analysed.scan, "case {n}");
            assert_eq!(cache.stats().disk_read_errors, 1, "case {n}");
            // The same entry, whatever the analysis took this time.
            let timeless = |text: &str| {
                let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
                v.as_object_mut().unwrap().remove("analysed_ms");
                v
            };
            assert_eq!(
                timeless(&std::fs::read_to_string(&entry).unwrap()),
                timeless(&good),
                "case {n}"
            );
        }
        // A result in the code, with the bytes it was found at, holds up.
        let elsewhere = planted(TEXT_OFFSET + 0x80);
        std::fs::write(&entry, json(ANALYSIS_FORMAT, &key, &elsewhere)).unwrap();
        let read = AnalysisCache::new(Some(dir.0.clone()), 8).scan(&path);
        assert_eq!((read.source, read.scan), (CacheSource::Disk, elsewhere));
    }

    #[test]
    fn a_file_claiming_anothers_build_id_gets_its_own_analysis() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let id = [0x42; 20];
        let real = write(&files, "real", &agent(Some(&id), 0));
        let forged = write(&files, "forged", &broken(Some(&id), 0));
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 8);
        let genuine = cache.scan(&real).scan;
        // Other bytes where the uprobes would go: not given those offsets.
        let own = cache.scan(&forged);
        assert_eq!(own.source, CacheSource::Analysed);
        assert!(
            matches!(own.scan, OpaqueScan::NotLocated(_)),
            "{:?}",
            own.scan
        );
        assert_eq!(cache.stats().mismatched, 1);
        // Nor by a restarted daemon reading the stored result.
        let mut restarted = AnalysisCache::new(Some(dir.0.clone()), 8);
        assert_eq!(restarted.scan(&forged).source, CacheSource::Analysed);
        assert_eq!(restarted.stats().disk_read_errors, 1);
        // The other way round, the forged one first: the real one is not blinded.
        for first in [&forged, &write(&files, "plain", &plain(Some(&id)))] {
            let mut cache = AnalysisCache::new(None, 8);
            assert_ne!(cache.scan(first).scan, genuine);
            let read = cache.scan(&real);
            assert_eq!((read.source, &read.scan), (CacheSource::Analysed, &genuine));
            // Each seen again (by its unchanged identity): its own result.
            assert_ne!(cache.scan(first).scan, genuine);
            assert_eq!(cache.scan(&real).scan, genuine);
        }
    }

    #[test]
    fn another_formats_entries_are_not_read_and_age_out() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let path = write(&files, "agent", &agent(Some(&[5; 20]), 0));
        let key = AnalysisCache::new(Some(dir.0.clone()), 8)
            .scan(&path)
            .key
            .unwrap();
        let current = format!("v{ANALYSIS_FORMAT}-{key}.json");
        let old = dir
            .0
            .join(format!("v{}-{key}.json", ANALYSIS_FORMAT + 1000));
        std::fs::rename(dir.0.join(&current), &old).unwrap();
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 1);
        assert_eq!(cache.scan(&path).source, CacheSource::Analysed);
        assert_eq!(cache.stats().disk_read_errors, 0);
        // Two entries for one place: the older (the other format's) goes.
        assert_eq!(stored(&dir.0), vec![current]);
        assert_eq!(cache.stats().evicted, 1);
    }

    #[test]
    fn the_directory_keeps_the_most_recently_used_entries() {
        let (files, dir) = (TempDir::new(), TempDir::new());
        let paths: Vec<PathBuf> = (0..4u8)
            .map(|n| write(&files, &format!("agent{n}"), &agent(Some(&[n; 20]), n)))
            .collect();
        let mut cache = AnalysisCache::new(Some(dir.0.clone()), 2);
        let name = |n: u8| format!("v{ANALYSIS_FORMAT}-build-id-{}.json", hex(&[n; 20]));
        cache.scan(&paths[0]);
        cache.scan(&paths[1]);
        age(&dir.0.join(name(0)), Duration::from_secs(200));
        age(&dir.0.join(name(1)), Duration::from_secs(100));
        // Entry 0 read back by a restarted daemon is used again: now the most recent.
        let read = AnalysisCache::new(Some(dir.0.clone()), 2).scan(&paths[0]);
        assert_eq!(read.source, CacheSource::Disk);
        cache.scan(&paths[2]);
        assert_eq!(stored(&dir.0), vec![name(0), name(2)]);
        assert_eq!(cache.stats().evicted, 1);
        // Memory holds two results by key as well: the oldest goes (a copy of that build, at
        // another path, is read from disk; the file itself is still known by its identity).
        assert_eq!(cache.stats().memory_evicted, 1);
        let copy = write(&files, "copy0", &agent(Some(&[0; 20]), 0));
        assert_eq!(cache.scan(&copy).source, CacheSource::Disk);
        assert_eq!(cache.scan(&paths[0]).source, CacheSource::Memory);
        // A temporary file left by a writer that died is removed once stale.
        let temp = dir.0.join(".tmp-1-1-x.json");
        std::fs::write(&temp, "{").unwrap();
        age(&temp, STALE_TEMP * 2);
        cache.scan(&paths[3]);
        assert!(!temp.exists());
        assert_eq!(stored(&dir.0).len(), 2);
    }

    #[test]
    fn an_unwritable_directory_is_counted_and_the_result_still_given() {
        let files = TempDir::new();
        let path = write(&files, "agent", &agent(Some(&[3; 20]), 0));
        // A directory below a regular file cannot be created.
        let mut cache = AnalysisCache::new(Some(path.join("analysis")), 8);
        let result = cache.scan(&path);
        assert_eq!(result.source, CacheSource::Analysed);
        assert_eq!(result.scan, opaque::scan(&path));
        assert_eq!(cache.stats().disk_write_errors, 1);
        assert_eq!(cache.stats().disk_read_errors, 0);
    }

    #[test]
    fn entry_names() {
        assert!(is_entry_name("v1-build-id-00.json"));
        assert!(is_entry_name("v12-sha256-ab.json"));
        assert!(is_entry_name("v1-file-ab.json"));
        assert!(!is_entry_name(".tmp-1-2-v1-x.json"));
        assert!(!is_entry_name("v-x.json"));
        assert!(!is_entry_name("v1-x.json.bak"));
        assert!(!is_entry_name("notes.txt"));
        assert_eq!(build_id_key(&[0xAB, 0x01]), "build-id-ab01");
        assert!(build_id_key(&[0; 65]).starts_with("build-id-sha256-"));
    }
}
