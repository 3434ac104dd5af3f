//! Loading the eBPF object and attaching its programs.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agentwatch_ebpf as abi;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::UProbeAttachLocation;
use aya::programs::{TracePoint, UProbe, uprobe::UProbeLinkId, uprobe::UProbeScope};
use aya::{Ebpf, EbpfLoader};
use serde::{Deserialize, Serialize};

use super::{ProbeError, tracefs};

/// The eBPF object, built by `cargo xtask build` and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AGENTWATCH_EBPF_OBJECT"));

/// Probe settings (the `[probes]` table of the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// Ring buffer size in bytes (a power of two, at least one page). Default 16 MiB.
    pub ring_buffer_bytes: u32,
    /// Seconds between rescans of /proc/*/maps for TLS libraries loaded from unusual paths. Default 2.
    pub rescan_interval_secs: u64,
    /// Extra TLS libraries (or executables exporting `SSL_write`) to attach at start. Default none.
    pub extra_libraries: Vec<PathBuf>,
    /// TCP ports of local model servers whose plain-HTTP traffic is captured from the syscalls
    /// of the connecting process (write/sendto/sendmsg/writev, read/recvfrom/recvmsg/readv). Default Ollama 11434, LM Studio
    /// 1234, vLLM 8000, llama.cpp 8080, LiteLLM 4000; `[]` turns plain capture off.
    pub plaintext_ports: Vec<u16>,
    /// TCP ports whose TLS connections to known LLM hosts (by SNI) are estimated from their
    /// byte counts when no hook sees their plaintext. Default 443; `[]` turns estimates off.
    pub estimate_ports: Vec<u16>,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 16 << 20,
            rescan_interval_secs: 2,
            extra_libraries: Vec::new(),
            plaintext_ports: vec![11434, 1234, 8000, 8080, 4000],
            estimate_ports: vec![443],
        }
    }
}

/// A TLS library (or executable) the uprobes are attached to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachedLibrary {
    /// Path as the process that uses it sees it.
    pub path: String,
    /// Path the daemon attached through (may go through /proc/PID/root).
    pub attached_via: String,
    /// `openssl` (also node's static copy), `gnutls`, or `go` (a Go binary's crypto/tls).
    pub kind: String,
    /// Go: uprobes on the RET instructions of Write and Read (no uretprobes on Go code).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub return_probes: usize,
    pub symbols: Vec<String>,
    pub missing: Vec<String>,
    /// (device, inode) of the file.
    #[serde(skip)]
    pub identity: (u64, u64),
    /// The root directory (mount namespace) it was found through; None for the daemon's own.
    #[serde(skip)]
    pub root: Option<(u64, u64)>,
    /// How its traffic is measured: `exact: …` and what the probes rest on.
    #[serde(default)]
    pub coverage: String,
    /// Functions located by analysis: whether a new connection's first plaintext looked like
    /// HTTP (confirmed), and how many did not before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<bool>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub doubts: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// New connections whose first plaintext is not HTTP, with none that is, before probes at
/// located functions are taken for wrong and detached.
const LOCATED_DOUBTS: u32 = 3;

/// One first-write verdict on probes at located functions; true when they must go. One
/// HTTP start confirms them for good (a wrong function does not write request lines).
fn judge(confirmed: &mut Option<bool>, doubts: &mut u32, http: bool) -> bool {
    match (http, *confirmed) {
        (true, Some(_)) => *confirmed = Some(true),
        (false, Some(false)) => *doubts += 1,
        _ => {}
    }
    *confirmed == Some(false) && *doubts >= LOCATED_DOUBTS
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Analysis results kept by build id; cleared when full.
const LOCATED_CACHE_CAP: usize = 64;

/// Executables with TLS traffic the probes cannot see (stripped Go binaries), kept for
/// `agentwatch status` up to this many; the rest are counted.
const NOT_COVERED_CAP: usize = 256;

/// Drop counters of the kernel side, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DropCounters {
    pub ringbuf_full_events: u64,
    pub ringbuf_full_bytes: u64,
    pub truncated_bytes: u64,
    pub args_map_full: u64,
    pub proc_events: u64,
    pub read_failed_bytes: u64,
    /// Plain vectored calls: bytes in iovecs beyond the copied `MAX_IOVECS`.
    #[serde(default)]
    pub iov_bytes_not_copied: u64,
    /// Not loss: packets of held sockets (a gated write on a metered socket) kept inside the
    /// host by the egress program until a decision (TCP sends them again once released).
    #[serde(default)]
    pub held_packets_kept: u64,
}

/// (symbol, entry program, return program): the data-moving calls of OpenSSL's and GnuTLS's
/// APIs. `gnutls_record_send/recv(session, data, size)` return the byte count like
/// `SSL_write/SSL_read(ssl, buf, num)`, so the same programs serve both.
const TLS_SYMBOLS: [(&str, &str, Option<&str>); 8] = [
    ("SSL_write", "ssl_write_enter", Some("ssl_write_exit")),
    ("SSL_write_ex", "ssl_write_ex_enter", Some("ssl_write_exit")),
    ("SSL_read", "ssl_read_enter", Some("ssl_read_exit")),
    ("SSL_read_ex", "ssl_read_ex_enter", Some("ssl_read_exit")),
    // A new connection on a (possibly reused) SSL pointer; entry only.
    ("SSL_do_handshake", "ssl_handshake_enter", None),
    // gnutls_record_send is a wrapper of gnutls_record_send2: probing both would see each
    // write twice, so only the public wrapper is probed.
    (
        "gnutls_record_send",
        "ssl_write_enter",
        Some("ssl_write_exit"),
    ),
    (
        "gnutls_record_recv",
        "ssl_read_enter",
        Some("ssl_read_exit"),
    ),
    ("gnutls_handshake", "ssl_handshake_enter", None),
];

/// (symbol, program, file offset) of the probes at one located library's functions.
fn located_points(l: &super::opaque::Located) -> Vec<(&'static str, &'static str, u64)> {
    let mut points = match l.stack.as_str() {
        "aws-lc-aead" => vec![
            ("EVP_AEAD_CTX_seal", "aead_seal_enter", l.write),
            ("EVP_AEAD_CTX_open", "aead_open_enter", l.read),
            ("EVP_AEAD_CTX_open", "aead_open_exit", l.read),
        ],
        // ssl_write_internal(s, buf, num, [flags,] *written), ssl_read_internal(s, buf, num,
        // *readbytes): the `_ex` layouts, returning 1.
        "openssl" | "openssl-3.3" => vec![
            (
                "ssl_write_internal",
                if l.stack == "openssl" {
                    "ssl_write_ex_enter"
                } else {
                    "ssl_write_flags_enter"
                },
                l.write,
            ),
            ("ssl_write_internal", "ssl_write_exit", l.write),
            ("ssl_read_internal", "ssl_read_ex_enter", l.read),
            ("ssl_read_internal", "ssl_read_exit", l.read),
        ],
        _ => vec![
            ("SSL_write", "ssl_write_enter", l.write),
            ("SSL_write", "ssl_write_exit", l.write),
            ("SSL_read", "ssl_read_enter", l.read),
            ("SSL_read", "ssl_read_exit", l.read),
        ],
    };
    if let Some(h) = l.handshake {
        points.push(("SSL_do_handshake", "ssl_handshake_enter", h));
    }
    points
}

pub struct Probes {
    ebpf: Ebpf,
    drops: PerCpuArray<MapData, u64>,
    pub tracepoints: Vec<String>,
    pub libraries: Vec<AttachedLibrary>,
    /// Attach failures, by path, for `agentwatch status`.
    pub failures: BTreeMap<String, String>,
    /// (device, inode) of every file already handled, attached or not.
    seen_files: HashSet<(u64, u64)>,
    /// The uprobe links of each attached file, to detach them when its container is gone.
    links: HashMap<(u64, u64), Vec<(&'static str, UProbeLinkId)>>,
    /// Files detached because no process could reach them any more.
    pub detached: u64,
    /// Executables using TLS that cannot be probed, by path: why (bounded).
    pub not_covered: BTreeMap<String, String>,
    /// Not-covered executables beyond `NOT_COVERED_CAP`.
    pub not_covered_over_cap: u64,
    /// Go goroutine → call arguments (swept of exited processes).
    go_args: aya::maps::HashMap<MapData, abi::GoKey, abi::GoArgs>,
    /// Entries of exited processes removed from the Go argument map.
    pub go_args_swept: u64,
    /// Static TLS libraries analysed, by build id.
    located: HashMap<Vec<u8>, super::opaque::OpaqueScan>,
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// Go programs: entry programs at function starts, return programs at RET instructions.
const GO_PROGRAMS: [&str; 5] = [
    "go_tls_write_enter",
    "go_tls_read_enter",
    "go_tls_write_return",
    "go_tls_read_return",
    "go_tls_handshake_enter",
];

/// The object's program `name` as its concrete type (tracepoint, uprobe, cgroup program).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::MissingProgram { name: name.into() })?
        .try_into()
        .map_err(load_error(name))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProbeError> {
    program(ebpf, name)
}

fn load_error(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError {
    let name = name.to_string();
    move |source| ProbeError::ProgramLoad { name, source }
}

impl Probes {
    /// Loads the object, configures it for this kernel, and attaches the process tracepoints.
    /// Returns the probes and the ring buffer to read events from.
    pub fn load(config: &ProbesConfig) -> Result<(Probes, RingBuf<MapData>), ProbeError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ProbeError::NotRoot);
        }
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        raise_memlock_limit();
        let root = tracefs::ensure_mounted()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(OBJECT)?;
        write_config(&mut ebpf, &root)?;

        let ring =
            RingBuf::try_from(
                ebpf.take_map("EVENTS")
                    .ok_or_else(|| ProbeError::MissingMap {
                        name: "EVENTS".into(),
                    })?,
            )
            .map_err(|source| ProbeError::Map {
                name: "EVENTS".into(),
                source,
            })?;
        let drops = PerCpuArray::try_from(ebpf.take_map("DROPS").ok_or_else(|| {
            ProbeError::MissingMap {
                name: "DROPS".into(),
            }
        })?)
        .map_err(|source| ProbeError::Map {
            name: "DROPS".into(),
            source,
        })?;
        let go_args = aya::maps::HashMap::try_from(ebpf.take_map("GO_ARGS").ok_or_else(|| {
            ProbeError::MissingMap {
                name: "GO_ARGS".into(),
            }
        })?)
        .map_err(|source| ProbeError::Map {
            name: "GO_ARGS".into(),
            source,
        })?;

        let mut tracepoints = Vec::new();
        for (category, name) in [
            ("task", "task_newtask"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exec"),
            ("sched", "sched_process_exit"),
        ] {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program.load().map_err(load_error(name))?;
            program
                .attach(category, name)
                .map_err(|source| ProbeError::TracepointAttach {
                    category: category.into(),
                    name: name.into(),
                    source,
                })?;
            tracepoints.push(format!("{category}:{name}"));
        }
        let mut failures = BTreeMap::new();
        // Also the socket side of AEAD capture and of estimates: attached in any case.
        if let Err(e) = attach_plaintext(
            &mut ebpf,
            &config.plaintext_ports,
            &config.estimate_ports,
            &mut tracepoints,
        ) {
            tracing::warn!("{e}; plain-HTTP capture is off");
            failures.insert(
                "plain HTTP (syscall tracepoints)".to_string(),
                e.to_string(),
            );
        }
        for name in [
            "ssl_write_enter",
            "ssl_write_ex_enter",
            "ssl_write_flags_enter",
            "ssl_read_enter",
            "ssl_read_ex_enter",
            "ssl_handshake_enter",
            "ssl_write_exit",
            "ssl_read_exit",
            "aead_seal_enter",
            "aead_open_enter",
            "aead_open_exit",
        ]
        .into_iter()
        .chain(GO_PROGRAMS)
        {
            uprobe(&mut ebpf, name)?.load().map_err(load_error(name))?;
        }
        Ok((
            Probes {
                ebpf,
                drops,
                tracepoints,
                libraries: Vec::new(),
                failures,
                seen_files: HashSet::new(),
                links: HashMap::new(),
                detached: 0,
                not_covered: BTreeMap::new(),
                not_covered_over_cap: 0,
                go_args,
                go_args_swept: 0,
                located: HashMap::new(),
            },
            ring,
        ))
    }

    /// Attaches the TLS uprobes to `path` (reached through `via`, e.g. /proc/PID/root/…),
    /// once per file identity. Returns true when the file was newly attached.
    pub fn attach_tls_library(&mut self, path: &str, via: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(via) else {
            return false;
        };
        let identity = (meta.dev(), meta.ino());
        if !self.seen_files.insert(identity) {
            return false;
        }
        let exported = super::libraries::exported_tls_symbols(via);
        if !exported
            .iter()
            .any(|s| s.starts_with("SSL_write") || s == "gnutls_record_send")
        {
            // No exported TLS API: perhaps a Go binary with its own crypto/tls.
            return self.attach_go(path, via, identity);
        }
        let mut symbols = Vec::new();
        let mut missing = Vec::new();
        let mut links = Vec::new();
        // A file is one library family; the other family's symbols are not "missing".
        let gnutls = !exported.iter().any(|s| s.starts_with("SSL_"));
        for (symbol, enter, exit) in TLS_SYMBOLS {
            if symbol.starts_with("gnutls_") != gnutls {
                continue;
            }
            if !exported.iter().any(|s| s == symbol) {
                missing.push(symbol.to_string());
                continue;
            }
            let result = (|| {
                for program in std::iter::once(enter).chain(exit) {
                    let link = uprobe(&mut self.ebpf, program)?
                        .attach(symbol, via, UProbeScope::AllProcesses)
                        .map_err(|source| ProbeError::UprobeAttach {
                            symbol: symbol.into(),
                            path: via.into(),
                            source,
                        })?;
                    links.push((program, link));
                }
                Ok::<(), ProbeError>(())
            })();
            match result {
                Ok(()) => symbols.push(symbol.to_string()),
                Err(e) => {
                    tracing::warn!("{e}");
                    self.failures.insert(path.to_string(), e.to_string());
                    missing.push(symbol.to_string());
                }
            }
        }
        if symbols.is_empty() {
            return false;
        }
        tracing::info!(library = path, via = %via.display(), ?symbols, "attached TLS uprobes");
        self.links.insert(identity, links);
        self.libraries.push(AttachedLibrary {
            path: path.to_string(),
            attached_via: via.display().to_string(),
            kind: if gnutls { "gnutls" } else { "openssl" }.to_string(),
            return_probes: 0,
            coverage: format!(
                "exact: {} exported symbols",
                if gnutls { "GnuTLS" } else { "OpenSSL" }
            ),
            confirmed: None,
            doubts: 0,
            symbols,
            missing,
            identity,
            root: super::libraries::foreign_root(via),
        });
        true
    }

    /// Attaches the Go programs to a Go binary's crypto/tls: entry probes on Write, Read and the
    /// handshakes, and a return probe on every RET of Write and Read. All or nothing: a binary
    /// with Write probed but not its returns would stash arguments that are never used.
    fn attach_go(&mut self, path: &str, via: &Path, identity: (u64, u64)) -> bool {
        use super::golang::{self, GoScan};
        // In the daemon's own mount namespace the file's own path outlives the process it
        // was found through (/proc/PID/root/… vanishes when that process exits).
        let own_path = Path::new(path);
        let via = if super::libraries::foreign_root(via).is_none()
            && std::fs::metadata(own_path).is_ok_and(|m| (m.dev(), m.ino()) == identity)
        {
            own_path
        } else {
            via
        };
        let probes = match golang::scan(via) {
            GoScan::NotGo => return self.attach_opaque(path, via, identity),
            GoScan::NoTls => return false,
            GoScan::NotCovered(reason) => {
                self.not_covered(path, reason);
                return false;
            }
            GoScan::Probes(p) => p,
        };
        let mut points: Vec<(&'static str, &'static str, u64)> = vec![
            (golang::WRITE, "go_tls_write_enter", probes.write),
            (golang::READ, "go_tls_read_enter", probes.read),
        ];
        for offset in &probes.write_returns {
            points.push((golang::WRITE, "go_tls_write_return", *offset));
        }
        for offset in &probes.read_returns {
            points.push((golang::READ, "go_tls_read_return", *offset));
        }
        for (symbol, offset) in &probes.handshakes {
            points.push((symbol, "go_tls_handshake_enter", *offset));
        }
        let Some(links) =
            self.attach_at_offsets(path, via, identity, &points, |symbol, _, source| {
                ProbeError::GoUprobeAttach {
                    symbol: symbol.into(),
                    path: via.into(),
                    detail: error_chain(&source),
                }
            })
        else {
            return false;
        };
        let mut symbols = vec![golang::WRITE.to_string(), golang::READ.to_string()];
        symbols.extend(probes.handshakes.iter().map(|(s, _)| s.to_string()));
        // Without a handshake probe a reused *Conn address is not told apart (rare: one
        // of the two exists in every binary that makes or accepts TLS connections).
        let missing = if probes.handshakes.is_empty() {
            vec![golang::HANDSHAKES[0].to_string()]
        } else {
            Vec::new()
        };
        let return_probes = probes.write_returns.len() + probes.read_returns.len();
        tracing::info!(binary = path, via = %via.display(), return_probes, "attached Go crypto/tls uprobes");
        self.links.insert(identity, links);
        self.libraries.push(AttachedLibrary {
            path: path.to_string(),
            attached_via: via.display().to_string(),
            kind: "go".to_string(),
            return_probes,
            symbols,
            missing,
            identity,
            root: super::libraries::foreign_root(via),
            coverage: "exact: Go crypto/tls symbols".into(),
            confirmed: None,
            doubts: 0,
        });
        true
    }

    fn not_covered(&mut self, path: &str, reason: String) {
        tracing::warn!(binary = path, "TLS not covered: {reason}");
        if self.not_covered.len() < NOT_COVERED_CAP || self.not_covered.contains_key(path) {
            self.not_covered.insert(path.to_string(), reason);
        } else {
            self.not_covered_over_cap += 1;
        }
    }

    /// Attaches the TLS programs to a stripped executable with a TLS library linked in, at the
    /// functions the analysis located (cached by build id: agents are installed in several
    /// places and auto-update to new files).
    fn attach_opaque(&mut self, path: &str, via: &Path, identity: (u64, u64)) -> bool {
        use super::opaque::{self, OpaqueScan};
        // The daemon carries the strings it searches for: it is not an agent.
        if std::fs::metadata("/proc/self/exe").is_ok_and(|m| (m.dev(), m.ino()) == identity) {
            return false;
        }
        let build_id = opaque::build_id(via);
        let scan = match build_id.as_ref().and_then(|id| self.located.get(id)) {
            Some(cached) => cached.clone(),
            None => {
                let started = std::time::Instant::now();
                let scan = opaque::scan(via);
                if !matches!(scan, OpaqueScan::NotTls) {
                    tracing::info!(binary = path, took = ?started.elapsed(), result = ?scan, "analysed a static TLS library");
                }
                if let Some(id) = build_id {
                    if self.located.len() >= LOCATED_CACHE_CAP {
                        self.located.clear();
                    }
                    self.located.insert(id, scan.clone());
                }
                scan
            }
        };
        let located = match scan {
            OpaqueScan::NotTls => return false,
            OpaqueScan::NotLocated(reason) => {
                self.not_covered(path, reason);
                return false;
            }
            OpaqueScan::Located(l) => l,
        };
        let points: Vec<_> = located.stacks().flat_map(located_points).collect();
        let symbols: Vec<String> =
            points
                .iter()
                .map(|p| p.0.to_string())
                .fold(Vec::new(), |mut v, s| {
                    if !v.contains(&s) {
                        v.push(s);
                    }
                    v
                });
        let Some(links) =
            self.attach_at_offsets(path, via, identity, &points, |symbol, offset, source| {
                ProbeError::LocatedUprobeAttach {
                    symbol: symbol.into(),
                    offset,
                    path: via.into(),
                    detail: error_chain(&source),
                }
            })
        else {
            return false;
        };
        tracing::info!(binary = path, via = %via.display(), how = located.describe(true), "attached TLS uprobes at located functions");
        self.links.insert(identity, links);
        self.libraries.push(AttachedLibrary {
            path: path.to_string(),
            attached_via: via.display().to_string(),
            kind: located.stack.clone(),
            return_probes: 0,
            symbols,
            // Without a handshake probe a reused SSL pointer is told apart by its first write.
            missing: if located
                .stacks()
                .any(|l| l.stack != "aws-lc-aead" && l.handshake.is_none())
            {
                vec!["SSL_do_handshake".into()]
            } else {
                Vec::new()
            },
            identity,
            root: super::libraries::foreign_root(via),
            coverage: format!("exact: {}", located.describe(false)),
            confirmed: Some(false),
            doubts: 0,
        });
        true
    }

    /// The first plaintext written on a new connection by executable `identity` (device,
    /// inode): for probes at located functions, HTTP confirms the location; non-HTTP on
    /// `LOCATED_DOUBTS` new connections with none confirmed means the analysis was wrong for
    /// this build: the probes are detached and the binary is listed as not covered, with why.
    pub fn judge_first_write(&mut self, identity: (u64, u64), http: bool) {
        let Some(lib) = self
            .libraries
            .iter_mut()
            .find(|l| l.identity == identity && l.confirmed.is_some())
        else {
            return;
        };
        if !judge(&mut lib.confirmed, &mut lib.doubts, http) {
            return;
        }
        let path = lib.path.clone();
        for (program, link) in self.links.remove(&identity).unwrap_or_default() {
            if let Ok(p) = uprobe(&mut self.ebpf, program) {
                let _ = p.detach(link);
            }
        }
        self.libraries.retain(|l| l.identity != identity);
        // Stays in `seen_files`: the same file is not attached again.
        self.not_covered(
            &path,
            format!(
                "the functions located by analysis wrote non-HTTP plaintext on {LOCATED_DOUBTS} new connections and none was HTTP; probes detached (this build is not analysed correctly)"
            ),
        );
    }

    /// Attaches `(symbol, program, file offset)` probes to `via`, all or none: on a failure
    /// the ones attached are detached, and the failure is kept for status, unless the file
    /// vanished (the process it was found through exited; the next one tries again).
    fn attach_at_offsets(
        &mut self,
        path: &str,
        via: &Path,
        identity: (u64, u64),
        points: &[(&'static str, &'static str, u64)],
        error: impl Fn(&str, u64, aya::programs::ProgramError) -> ProbeError,
    ) -> Option<Vec<(&'static str, UProbeLinkId)>> {
        let mut links = Vec::new();
        for &(symbol, program, offset) in points {
            let attached = uprobe(&mut self.ebpf, program).and_then(|p| {
                p.attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    via,
                    UProbeScope::AllProcesses,
                )
                .map_err(|source| error(symbol, offset, source))
            });
            match attached {
                Ok(link) => links.push((program, link)),
                Err(e) => {
                    self.unlink(links);
                    if !via.exists() {
                        tracing::debug!("{e}");
                        self.seen_files.remove(&identity);
                    } else {
                        tracing::warn!("{e}");
                        self.failures.insert(path.to_string(), e.to_string());
                    }
                    return None;
                }
            }
        }
        Some(links)
    }

    fn unlink(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (program, link) in links {
            if let Ok(p) = uprobe(&mut self.ebpf, program) {
                let _ = p.detach(link);
            }
        }
    }

    /// Removes the Go argument entries of processes that are gone: a goroutine blocked in
    /// `Read` when its process exits never reaches a RET, and would hold its entry forever.
    pub fn sweep_go_args(&mut self) {
        let dead: Vec<abi::GoKey> = self
            .go_args
            .keys()
            .flatten()
            .filter(|k| !Path::new(&format!("/proc/{}", k.tgid)).exists())
            .collect();
        for key in dead {
            if self.go_args.remove(&key).is_ok() {
                self.go_args_swept += 1;
            }
        }
    }

    /// Detaches the uprobes of a file no process can reach any more (its container is gone),
    /// so the kernel lets go of it; it is attached again if it comes back.
    pub fn detach_library(&mut self, identity: (u64, u64)) {
        for (program, link) in self.links.remove(&identity).unwrap_or_default() {
            if let Ok(p) = uprobe(&mut self.ebpf, program)
                && let Err(e) = p.detach(link)
            {
                tracing::warn!("failed to detach {program}: {e}");
            }
        }
        if let Some(at) = self.libraries.iter().position(|l| l.identity == identity) {
            let lib = self.libraries.remove(at);
            tracing::info!(
                library = lib.path,
                via = lib.attached_via,
                "detached TLS uprobes: no process can reach the file any more"
            );
            self.detached += 1;
        }
        self.seen_files.remove(&identity);
    }

    /// Takes the map of sockets to meter out of the object (once), for the pipeline.
    pub fn take_meter(&mut self) -> Result<super::meter::Meter, ProbeError> {
        let map = self
            .ebpf
            .take_map("TLS_SOCKS")
            .ok_or_else(|| ProbeError::MissingMap {
                name: "TLS_SOCKS".into(),
            })?;
        let socks = aya::maps::HashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: "TLS_SOCKS".into(),
            source,
        })?;
        Ok(super::meter::Meter::new(socks))
    }

    /// Takes the ceiling gate's maps out of the object (once).
    pub fn take_gate(&mut self) -> Result<crate::policy::gate::Gate, ProbeError> {
        crate::policy::gate::take(&mut self.ebpf)
    }

    /// Attaches the `block` connect programs and the egress program that holds metered
    /// sockets' bytes at the cgroup v2 root; returns where.
    pub fn attach_block_programs(&mut self) -> Result<PathBuf, ProbeError> {
        use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr};
        let root = cgroup2_root().ok_or_else(|| ProbeError::Cgroup {
            detail: "no cgroup2 mount in /proc/self/mounts".into(),
        })?;
        let dir = std::fs::File::open(&root).map_err(|e| ProbeError::Cgroup {
            detail: format!("{}: {e}", root.display()),
        })?;
        for name in ["block_connect4", "block_connect6"] {
            let program: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            program.load().map_err(load_error(name))?;
            program
                // A bpf link is always multi-attach; the kernel rejects attach flags on it.
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(load_error(name))?;
        }
        let name = "hold_egress";
        let program: &mut CgroupSkb = program(&mut self.ebpf, name)?;
        program.load().map_err(load_error(name))?;
        program
            .attach(&dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(load_error(name))?;
        Ok(root)
    }

    pub fn drop_counters(&self) -> DropCounters {
        let sum = |index: u32| -> u64 {
            self.drops
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        DropCounters {
            ringbuf_full_events: sum(abi::DROP_RINGBUF_EVENTS),
            ringbuf_full_bytes: sum(abi::DROP_RINGBUF_BYTES),
            truncated_bytes: sum(abi::DROP_TRUNCATED_BYTES),
            args_map_full: sum(abi::DROP_ARGS_MAP_FULL),
            proc_events: sum(abi::DROP_PROC_EVENTS),
            read_failed_bytes: sum(abi::DROP_READ_FAILED_BYTES),
            iov_bytes_not_copied: sum(abi::DROP_IOV_BYTES),
            held_packets_kept: sum(abi::DROP_HELD_PACKETS),
        }
    }
}

/// Plain HTTP to local model servers: the watched ports, and the syscall tracepoints that
/// mark their sockets at connect and copy their bytes.
fn attach_plaintext(
    ebpf: &mut Ebpf,
    ports: &[u16],
    estimate_ports: &[u16],
    tracepoints: &mut Vec<String>,
) -> Result<(), ProbeError> {
    for (name, ports) in [("PLAIN_PORTS", ports), ("ESTIMATE_PORTS", estimate_ports)] {
        let mut map: aya::maps::HashMap<_, u16, u32> = aya::maps::HashMap::try_from(
            ebpf.map_mut(name)
                .ok_or_else(|| ProbeError::MissingMap { name: name.into() })?,
        )
        .map_err(|source| ProbeError::Map {
            name: name.into(),
            source,
        })?;
        for port in ports {
            map.insert(port, 1, 0).map_err(|source| ProbeError::Map {
                name: name.into(),
                source,
            })?;
        }
    }
    for (program_name, events) in [
        ("sys_enter_connect", &["sys_enter_connect"][..]),
        ("sys_enter_close", &["sys_enter_close"][..]),
        (
            "sys_enter_plain_io",
            &[
                "sys_enter_write",
                "sys_enter_sendto",
                "sys_enter_read",
                "sys_enter_recvfrom",
            ][..],
        ),
        (
            "sys_exit_plain_write",
            &["sys_exit_write", "sys_exit_sendto"][..],
        ),
        (
            "sys_exit_plain_read",
            &["sys_exit_read", "sys_exit_recvfrom"][..],
        ),
        (
            "sys_enter_plain_msg",
            &["sys_enter_sendmsg", "sys_enter_recvmsg"][..],
        ),
        (
            "sys_enter_plain_vec",
            &["sys_enter_writev", "sys_enter_readv"][..],
        ),
        (
            "sys_exit_plain_vec_write",
            &["sys_exit_sendmsg", "sys_exit_writev"][..],
        ),
        (
            "sys_exit_plain_vec_read",
            &["sys_exit_recvmsg", "sys_exit_readv"][..],
        ),
    ] {
        let program: &mut TracePoint = program(ebpf, program_name)?;
        program.load().map_err(load_error(program_name))?;
        for event in events {
            program
                .attach("syscalls", event)
                .map_err(|source| ProbeError::TracepointAttach {
                    category: "syscalls".into(),
                    name: (*event).into(),
                    source,
                })?;
            tracepoints.push(format!("syscalls:{event}"));
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: rlim is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

fn write_config(ebpf: &mut Ebpf, root: &Path) -> Result<(), ProbeError> {
    let field = |category: &str, name: &str, field: &str, required: bool| {
        let offsets = tracefs::field_offsets(root, category, name)?;
        match offsets.get(field) {
            Some(o) => Ok(*o),
            None if !required => Ok(abi::CFG_ABSENT),
            None => Err(ProbeError::MissingField {
                tracepoint: format!("{category}:{name}"),
                field: field.into(),
            }),
        }
    };
    let values = [
        (
            abi::CFG_FORK_PARENT_PID_OFF,
            field("sched", "sched_process_fork", "parent_pid", true)?,
        ),
        (
            abi::CFG_FORK_CHILD_PID_OFF,
            field("sched", "sched_process_fork", "child_pid", true)?,
        ),
        (
            abi::CFG_EXEC_FILENAME_OFF,
            field("sched", "sched_process_exec", "filename", true)?,
        ),
        (
            abi::CFG_EXIT_GROUP_DEAD_OFF,
            field("sched", "sched_process_exit", "group_dead", false)?,
        ),
        (
            abi::CFG_NEWTASK_PID_OFF,
            field("task", "task_newtask", "pid", true)?,
        ),
        (
            abi::CFG_NEWTASK_CLONE_FLAGS_OFF,
            field("task", "task_newtask", "clone_flags", true)?,
        ),
        (abi::CFG_SELF_TGID, std::process::id()),
    ];
    let mut config: Array<_, u32> =
        Array::try_from(
            ebpf.map_mut("CONFIG")
                .ok_or_else(|| ProbeError::MissingMap {
                    name: "CONFIG".into(),
                })?,
        )
        .map_err(|source| ProbeError::Map {
            name: "CONFIG".into(),
            source,
        })?;
    for (index, value) in values {
        config
            .set(index, value, 0)
            .map_err(|source| ProbeError::Map {
                name: "CONFIG".into(),
                source,
            })?;
    }
    Ok(())
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified`
/// in the hybrid layout).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let (_, mount_point, fstype) = (cols.next()?, cols.next()?, cols.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_probes_are_confirmed_by_http_or_rejected_after_doubts() {
        let (mut confirmed, mut doubts) = (Some(false), 0);
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(!judge(&mut confirmed, &mut doubts, true));
        assert_eq!(confirmed, Some(true));
        for _ in 0..10 {
            assert!(
                !judge(&mut confirmed, &mut doubts, false),
                "confirmed stays"
            );
        }
        let (mut confirmed, mut doubts) = (Some(false), 0);
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(!judge(&mut confirmed, &mut doubts, false));
        assert!(judge(&mut confirmed, &mut doubts, false));
        // Probes found by symbol are never judged.
        let (mut confirmed, mut doubts) = (None, 0);
        for _ in 0..10 {
            assert!(!judge(&mut confirmed, &mut doubts, false));
        }
        assert_eq!((confirmed, doubts), (None, 0));
    }
}
