//! What to probe in one file: the (symbol, program, file offset) points of its TLS library,
//! found by exported symbols (OpenSSL, GnuTLS, node's static OpenSSL), by the Go symbol
//! table, or by analysis (stripped static binaries). A plan is made once per file identity
//! and reused for every process that maps the file.
use std::fs::File;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

use super::golang::{self, GoScan};
use super::opaque::{self, Located, OpaqueScan};

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

/// Every uprobe program of the object (loaded once at start).
pub const UPROBE_PROGRAMS: [&str; 16] = [
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
    "go_tls_write_enter",
    "go_tls_read_enter",
    "go_tls_write_return",
    "go_tls_read_return",
    "go_tls_handshake_enter",
];

/// One probe point: (symbol it stands for, program, file offset).
pub type Point = (&'static str, &'static str, u64);

/// The probes of one file.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `openssl`, `gnutls`, `go`, or a located stack (`boringssl`, `aws-lc-aead`, …).
    pub kind: String,
    pub points: Vec<Point>,
    /// Symbols probed, and the ones the library lacks.
    pub symbols: Vec<String>,
    pub missing: Vec<String>,
    /// How its traffic is measured: `exact: …` and what the probes rest on.
    pub coverage: String,
    /// Go: uprobes on the RET instructions of Write and Read.
    pub return_probes: usize,
    /// Functions located by analysis are confirmed by their first plaintext (Some(false)
    /// until then); probes found by symbol need no confirmation (None).
    pub located: bool,
}

/// What a file is, for the probes.
#[derive(Debug, Clone)]
pub enum FilePlan {
    Probe(Plan),
    /// It uses TLS, but the probes cannot see it: why.
    NotCovered(String),
    /// No TLS library inside that the probes know.
    NoTls,
}

/// Offsets of exported functions for uprobes: the symbol's address turned into the file
/// offset of the section that holds it.
pub(crate) fn exported_offsets(path: &Path, wanted: &[&str]) -> Vec<(String, u64)> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for sym in obj.dynamic_symbols().filter(|s| s.is_definition()) {
        let Ok(name) = sym.name() else { continue };
        if !wanted.contains(&name) || out.iter().any(|(n, _)| n == name) {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = obj.section_by_index(index) else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        if let Some(offset) = sym
            .address()
            .checked_sub(section.address())
            .map(|o| o + file_offset)
        {
            out.push((name.to_string(), offset));
        }
    }
    out
}

/// The plan of the file at `via` (a path that reaches it now: its own, or through
/// /proc/PID/root or /proc/PID/map_files). `analyse` runs the analysis of stripped
/// binaries (cached by the caller).
pub fn plan(via: &Path, analyse: &mut dyn FnMut(&Path) -> OpaqueScan) -> FilePlan {
    let names: Vec<&str> = TLS_SYMBOLS.iter().map(|(s, _, _)| *s).collect();
    let exported = exported_offsets(via, &names);
    if exported
        .iter()
        .any(|(s, _)| s.starts_with("SSL_write") || s == "gnutls_record_send")
    {
        return FilePlan::Probe(exported_plan(&exported));
    }
    match golang::scan(via) {
        GoScan::Probes(p) => return FilePlan::Probe(go_plan(&p)),
        GoScan::NotCovered(why) => return FilePlan::NotCovered(why),
        GoScan::NoTls => return FilePlan::NoTls,
        GoScan::NotGo => {}
    }
    match analyse(via) {
        OpaqueScan::NotTls => FilePlan::NoTls,
        OpaqueScan::NotLocated(why) => FilePlan::NotCovered(why),
        OpaqueScan::Located(l) => FilePlan::Probe(located_plan(&l)),
    }
}

fn exported_plan(exported: &[(String, u64)]) -> Plan {
    // A file is one library family; the other family's symbols are not "missing".
    let gnutls = !exported.iter().any(|(s, _)| s.starts_with("SSL_"));
    let mut points = Vec::new();
    let mut symbols = Vec::new();
    let mut missing = Vec::new();
    for (symbol, enter, exit) in TLS_SYMBOLS {
        if symbol.starts_with("gnutls_") != gnutls {
            continue;
        }
        let Some((_, offset)) = exported.iter().find(|(s, _)| s == symbol) else {
            missing.push(symbol.to_string());
            continue;
        };
        points.push((symbol, enter, *offset));
        if let Some(exit) = exit {
            points.push((symbol, exit, *offset));
        }
        symbols.push(symbol.to_string());
    }
    Plan {
        kind: if gnutls { "gnutls" } else { "openssl" }.to_string(),
        points,
        symbols,
        missing,
        coverage: format!(
            "exact: {} exported symbols",
            if gnutls { "GnuTLS" } else { "OpenSSL" }
        ),
        return_probes: 0,
        located: false,
    }
}

fn go_plan(p: &golang::GoTlsProbes) -> Plan {
    let mut points: Vec<Point> = vec![
        (golang::WRITE, "go_tls_write_enter", p.write),
        (golang::READ, "go_tls_read_enter", p.read),
    ];
    for offset in &p.write_returns {
        points.push((golang::WRITE, "go_tls_write_return", *offset));
    }
    for offset in &p.read_returns {
        points.push((golang::READ, "go_tls_read_return", *offset));
    }
    for (symbol, offset) in &p.handshakes {
        points.push((symbol, "go_tls_handshake_enter", *offset));
    }
    let mut symbols = vec![golang::WRITE.to_string(), golang::READ.to_string()];
    symbols.extend(p.handshakes.iter().map(|(s, _)| s.to_string()));
    // Without a handshake probe a reused *Conn address is not told apart (rare: one of the
    // two exists in every binary that makes or accepts TLS connections).
    let missing = if p.handshakes.is_empty() {
        vec![golang::HANDSHAKES[0].to_string()]
    } else {
        Vec::new()
    };
    Plan {
        kind: "go".into(),
        points,
        symbols,
        missing,
        coverage: "exact: Go crypto/tls symbols".into(),
        return_probes: p.write_returns.len() + p.read_returns.len(),
        located: false,
    }
}

/// (symbol, program, file offset) of the probes at one located library's functions.
fn located_points(l: &Located) -> Vec<Point> {
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

fn located_plan(located: &Located) -> Plan {
    let points: Vec<Point> = located.stacks().flat_map(located_points).collect();
    let mut symbols: Vec<String> = Vec::new();
    for (symbol, _, _) in &points {
        if !symbols.iter().any(|s| s == symbol) {
            symbols.push(symbol.to_string());
        }
    }
    Plan {
        kind: located.stack.clone(),
        points,
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
        coverage: format!("exact: {}", located.describe(false)),
        return_probes: 0,
        located: true,
    }
}

/// The analysis of a stripped binary, uncached (`agentwatch inspect`, tests).
pub fn analyse_uncached(path: &Path) -> OpaqueScan {
    opaque::scan(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_symbols_of_the_system_libssl_have_file_offsets() {
        let Some(lib) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .iter()
        .map(Path::new)
        .find(|p| p.exists()) else {
            return;
        };
        let FilePlan::Probe(plan) = plan(lib, &mut analyse_uncached) else {
            panic!("libssl has a plan");
        };
        assert_eq!(plan.kind, "openssl");
        assert!(plan.symbols.iter().any(|s| s == "SSL_write_ex"), "{plan:?}");
        // Every offset lies inside the file.
        let size = std::fs::metadata(lib).unwrap().len();
        assert!(
            plan.points.iter().all(|(_, _, o)| *o > 0 && *o < size),
            "{plan:?}"
        );
    }

    #[test]
    fn a_file_without_tls_has_no_plan() {
        assert!(matches!(
            plan(Path::new("/bin/sh"), &mut analyse_uncached),
            FilePlan::NoTls
        ));
    }
}
