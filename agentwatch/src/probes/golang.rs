//! Go `crypto/tls`: statically linked Go binaries carry their own TLS stack, found through the
//! ELF symbol table. Go code gets no uretprobes (the kernel's return trampoline breaks when a
//! goroutine stack moves), so the "return" probes go on every RET instruction of the function,
//! found by decoding its machine code.
use std::fs::File;
use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSymbol};

pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";
/// Called once per connection (`Handshake`, which every Write and Read calls, is not).
pub const HANDSHAKES: [&str; 2] = [
    "crypto/tls.(*Conn).clientHandshake",
    "crypto/tls.(*Conn).serverHandshake",
];

/// File offsets of the probe points of one Go binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTlsProbes {
    pub write: u64,
    pub write_returns: Vec<u64>,
    pub read: u64,
    pub read_returns: Vec<u64>,
    /// (symbol, entry offset) of the handshake functions the binary has.
    pub handshakes: Vec<(&'static str, u64)>,
}

/// What a look at an executable found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoScan {
    /// Not a Go binary (or not readable as ELF).
    NotGo,
    /// A Go binary without `crypto/tls` (the linker dropped it): nothing to capture.
    NoTls,
    /// A Go binary that uses `crypto/tls` but cannot be probed; the reason says why.
    NotCovered(String),
    Probes(GoTlsProbes),
}

/// Looks at `path`: a Go binary, and where its `crypto/tls` calls can be probed.
pub fn scan(path: &Path) -> GoScan {
    let Ok(file) = File::open(path) else {
        return GoScan::NotGo;
    };
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return GoScan::NotGo;
    };
    // Even a stripped Go binary keeps its function table (.gopclntab) and build info.
    let pclntab = obj
        .section_by_name(".gopclntab")
        .or_else(|| obj.section_by_name(".data.rel.ro.gopclntab"));
    let is_go = pclntab.is_some() || obj.section_by_name(".go.buildinfo").is_some();
    if !is_go {
        return GoScan::NotGo;
    }
    let mut found: Vec<(&str, u64, u64, usize)> = Vec::new();
    for sym in obj.symbols() {
        let Ok(name) = sym.name() else { continue };
        if (name == WRITE || name == READ || HANDSHAKES.contains(&name))
            && let Some(index) = sym.section_index()
        {
            found.push((
                if name == WRITE {
                    WRITE
                } else if name == READ {
                    READ
                } else if name == HANDSHAKES[0] {
                    HANDSHAKES[0]
                } else {
                    HANDSHAKES[1]
                },
                sym.address(),
                sym.size(),
                index.0,
            ));
        }
    }
    if !found.iter().any(|f| f.0 == WRITE) {
        // The function names are in .gopclntab as plain strings, symbol table or not.
        let uses_tls = pclntab
            .and_then(|s| s.data().ok())
            .is_some_and(|d| memchr::memmem::find(d, b"crypto/tls.(*Conn).Write\0").is_some());
        return if uses_tls {
            GoScan::NotCovered(format!(
                "a Go binary without a symbol table (stripped): {WRITE} cannot be located, \
                 its TLS traffic is not captured; build it without `-ldflags=-s` to cover it"
            ))
        } else {
            GoScan::NoTls
        };
    }
    if obj.architecture() != object::Architecture::X86_64 {
        return GoScan::NotCovered(format!(
            "a Go binary for {:?}: the Go probes read amd64 registers only",
            obj.architecture()
        ));
    }
    let entry_and_returns = |want: &str| -> Result<(u64, Vec<u64>), String> {
        let (_, address, size, index) = found
            .iter()
            .find(|f| f.0 == want)
            .ok_or_else(|| format!("{want} is not in the symbol table"))?;
        let section = obj
            .section_by_index(object::SectionIndex(*index))
            .map_err(|e| format!("{want}: {e}"))?;
        let (file_start, _) = section
            .file_range()
            .ok_or_else(|| format!("{want}: its section has no file data"))?;
        let data = section.data().map_err(|e| format!("{want}: {e}"))?;
        let start = address
            .checked_sub(section.address())
            .ok_or_else(|| format!("{want}: address outside its section"))?;
        let code = usize::try_from(start)
            .ok()
            .zip(usize::try_from(*size).ok())
            .and_then(|(s, n)| data.get(s..s.checked_add(n)?))
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{want}: size {size} outside its section"))?;
        let returns = ret_offsets(code, *address).map_err(|e| format!("{want}: {e}"))?;
        let entry = file_start + start;
        Ok((entry, returns.iter().map(|r| entry + r).collect()))
    };
    let probes = (|| {
        let (write, write_returns) = entry_and_returns(WRITE)?;
        let (read, read_returns) = entry_and_returns(READ)?;
        let mut handshakes = Vec::new();
        for name in HANDSHAKES {
            if let Ok((entry, _)) = entry_and_returns(name) {
                handshakes.push((name, entry));
            }
        }
        Ok::<_, String>(GoTlsProbes {
            write,
            write_returns,
            read,
            read_returns,
            handshakes,
        })
    })();
    match probes {
        Ok(p) => GoScan::Probes(p),
        Err(e) => GoScan::NotCovered(format!("its crypto/tls functions cannot be probed: {e}")),
    }
}

/// Offsets (from the function start) of every return instruction in `code`, the machine code
/// of one function at address `ip`, decoded instruction by instruction (a 0xC3 byte inside an
/// immediate or displacement is not a RET). Undecodable bytes are an error: probing a guessed
/// offset would corrupt the program.
pub fn ret_offsets(code: &[u8], ip: u64) -> Result<Vec<u64>, String> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            return Err(format!(
                "undecodable instruction at offset {:#x}",
                instruction.ip() - ip
            ));
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            out.push(instruction.ip() - ip);
        }
    }
    if out.is_empty() {
        return Err("no RET instruction found".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rets_are_found_by_decoding_not_by_byte() {
        let code = [
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3   (a C3 byte that is no RET)
            0x48, 0x8b, 0x5c, 0x24, 0xc3, // mov rbx, [rsp-0x3d]
            0x74, 0x01, // je +1
            0xc3, // ret               (offset 12)
            0x48, 0x83, 0xc4, 0x18, // add rsp, 0x18
            0xc2, 0x08, 0x00, // ret 8            (offset 17)
        ];
        assert_eq!(ret_offsets(&code, 0x401000).unwrap(), vec![12, 17]);
        let naive: Vec<usize> = code
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == 0xc3)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(naive, vec![1, 9, 12], "the byte scan the decoder replaces");
    }

    #[test]
    fn undecodable_or_retless_code_is_refused() {
        // A truncated instruction (mov eax, imm32 with two bytes of immediate).
        assert!(ret_offsets(&[0xc3, 0xb8, 0x01], 0).is_err());
        // No return at all.
        assert!(ret_offsets(&[0x90, 0x90], 0).is_err());
    }

    #[test]
    fn non_go_files_are_not_go() {
        // This test binary is Rust, a text file is no ELF, a missing file is nothing.
        assert_eq!(scan(Path::new("/proc/self/exe")), GoScan::NotGo);
        assert_eq!(scan(Path::new("/proc/self/status")), GoScan::NotGo);
        assert_eq!(scan(Path::new("/nonexistent/go-binary")), GoScan::NotGo);
    }
}
