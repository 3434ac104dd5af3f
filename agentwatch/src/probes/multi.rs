//! Per-process uprobes as `uprobe_multi` links (Linux 6.6+): one BPF link per (program, file,
//! process) carrying every offset of that program in the file, with the kernel's pid filter,
//! so the breakpoints go into that process's memory only.
//!
//! Why not aya's per-process perf-event uprobes: the kernel tears each of those down under
//! the global `event_mutex` and waits for a grace period inside it (~0.1 s here), one probe at
//! a time, so every agent process that exits held the host's tracing for about a second, and
//! a new agent's hold waited behind it. A `uprobe_multi` link is let go of without that lock,
//! and links closed together share their grace periods.
//!
//! aya 0.14 cannot load a program for this attach type (it needs `expected_attach_type =
//! BPF_TRACE_UPROBE_MULTI` at load), so the uprobe programs are loaded a second time here from
//! the same object, relocated against the maps aya created, and attached with `BPF_LINK_CREATE`.
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use aya::Ebpf;
use aya::maps::Map;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// Programs that run at a function's return (uretprobes).
const RETURN_PROGRAMS: [&str; 3] = ["ssl_write_exit", "ssl_read_exit", "aead_open_exit"];

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the eBPF object for uprobe_multi programs: {0}")]
    Parse(String),
    #[error("relocating the eBPF object for uprobe_multi programs: {0}")]
    Relocate(String),
    #[error("map `{0}` of the object was not created by the loader")]
    MissingMap(String),
    #[error("program `{0}` is missing from the object")]
    MissingProgram(String),
    #[error(
        "loading `{name}` for uprobe_multi failed: {source} (Linux 6.6+ has uprobe_multi); per-process probes fall back to perf-event uprobes, which the kernel lets go of one at a time"
    )]
    Load {
        name: String,
        source: std::io::Error,
    },
    #[error("attaching `{name}` to {path} for pid {pid} ({offsets} offsets) failed: {source}")]
    Attach {
        name: String,
        path: String,
        pid: u32,
        offsets: usize,
        source: std::io::Error,
    },
}

/// The uprobe programs loaded for `uprobe_multi` attachment.
pub struct MultiPrograms {
    programs: HashMap<&'static str, OwnedFd>,
}

/// One attachment: closing it (dropping) detaches the probes, unless it is pinned.
pub struct MultiLink {
    fd: OwnedFd,
    /// Where it is pinned (it outlives the daemon until unpinned).
    pin: Option<std::path::PathBuf>,
}

impl MultiLink {
    /// A link a previous daemon pinned at `path`.
    pub fn adopt(path: &Path) -> std::io::Result<MultiLink> {
        Ok(MultiLink {
            fd: super::pins::open_pinned(path)?,
            pin: Some(path.to_path_buf()),
        })
    }

    /// Pins the link at `path` (a failure leaves it unpinned: it goes with this daemon).
    pub fn pin(&mut self, path: &Path) -> std::io::Result<()> {
        super::pins::pin_fd(self.fd.as_fd(), path)?;
        self.pin = Some(path.to_path_buf());
        Ok(())
    }

    /// Removes the pin: the probes go when the descriptor is closed.
    pub fn unpin(&mut self) {
        if let Some(path) = self.pin.take() {
            let _ = std::fs::remove_file(&path);
            if let Some(dir) = path.parent() {
                // Empty once the process's last link is unpinned.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

impl MultiPrograms {
    /// Loads `names` from `object` for uprobe_multi, with the maps of `ebpf` (the same object
    /// as loaded by aya, before any map was taken out of it).
    pub fn load(object: &[u8], ebpf: &Ebpf, names: &[&'static str]) -> Result<Self, MultiError> {
        let mut obj =
            aya_obj::Object::parse(object).map_err(|e| MultiError::Parse(e.to_string()))?;
        let defs = obj.maps.clone();
        let fds: HashMap<&str, RawFd> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?)))
            .collect();
        let mut maps = Vec::new();
        for (name, def) in &defs {
            let fd = *fds
                .get(name.as_str())
                .ok_or_else(|| MultiError::MissingMap(name.clone()))?;
            maps.push((name.as_str(), fd, def));
        }
        let text_sections = obj
            .functions
            .keys()
            .map(|(section_index, _)| *section_index)
            .collect();
        obj.relocate_maps(maps.into_iter(), &text_sections)
            .map_err(|e| MultiError::Relocate(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| MultiError::Relocate(e.to_string()))?;
        let mut programs = HashMap::new();
        for name in names {
            let program = obj
                .programs
                .get(*name)
                .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
            let fd = load_program(name, &function.instructions, &program.license)?;
            programs.insert(*name, fd);
        }
        Ok(MultiPrograms { programs })
    }

    /// Attaches program `name` at `offsets` of the file at `path`, for process `pid` only.
    pub fn attach(
        &self,
        name: &'static str,
        path: &Path,
        offsets: &[u64],
        pid: u32,
    ) -> Result<MultiLink, MultiError> {
        let prog = self
            .programs
            .get(name)
            .ok_or_else(|| MultiError::MissingProgram(name.to_string()))?;
        let c_path =
            CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| MultiError::Attach {
                name: name.into(),
                path: path.display().to_string(),
                pid,
                offsets: offsets.len(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            })?;
        // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags, then
        // uprobe_multi { path, offsets, ref_ctr_offsets, cookies, cnt, flags, pid }.
        let mut attr = [0u8; 128];
        put32(&mut attr, 0, prog.as_raw_fd() as u32);
        put32(&mut attr, 8, BPF_TRACE_UPROBE_MULTI);
        put64(&mut attr, 16, c_path.as_ptr() as u64);
        put64(&mut attr, 24, offsets.as_ptr() as u64);
        put32(&mut attr, 48, offsets.len() as u32);
        let ret = if RETURN_PROGRAMS.contains(&name) {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        };
        put32(&mut attr, 52, ret);
        put32(&mut attr, 56, pid);
        // SAFETY: bpf(2) with an attr of the size given; the pointers it holds (path,
        // offsets) outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_CREATE,
                attr.as_ptr(),
                attr.len() as u32,
            )
        };
        if fd < 0 {
            return Err(MultiError::Attach {
                name: name.into(),
                path: path.display().to_string(),
                pid,
                offsets: offsets.len(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a new descriptor this process owns.
        Ok(MultiLink {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            pin: None,
        })
    }
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn load_program(
    name: &str,
    insns: &[aya_obj::generated::bpf_insn],
    license: &std::ffi::CStr,
) -> Result<OwnedFd, MultiError> {
    // union bpf_attr, prog load: prog_type, insn_cnt, insns, license, log_level, log_size,
    // log_buf, kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type.
    let mut attr = [0u8; 160];
    put32(&mut attr, 0, BPF_PROG_TYPE_KPROBE);
    put32(&mut attr, 4, insns.len() as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    let short: Vec<u8> = name.bytes().take(15).collect();
    attr[48..48 + short.len()].copy_from_slice(&short);
    put32(&mut attr, 68, BPF_TRACE_UPROBE_MULTI);
    // SAFETY: bpf(2) with an attr of the size given; the instructions and the license
    // outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        return Err(MultiError::Load {
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
