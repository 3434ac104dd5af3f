//! Acting on processes: signals to a session tree, and cutting a process's connections to
//! LLM endpoints (for `block`). Processes that vanished are normal, never errors.
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::procs::{ProcKey, ProcTree};

/// Sends `sig` to every key still live in the tree (a pid reused by another process has a
/// different key, so it is never signalled). Returns how many were signalled.
pub fn signal(tree: &ProcTree, keys: &[ProcKey], sig: i32) -> usize {
    keys.iter()
        .filter(|k| tree.is_live(**k))
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        .filter(|k| unsafe { libc::kill(k.tgid as i32, sig) } == 0)
        .count()
}

/// Whether the process is stopped (state `T`), e.g. held at a gate by a daemon that died.
pub fn is_stopped(tgid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Endpoints (`host[:port]`, as in a call's `server_address`) resolved to socket addresses;
/// port 443 when none is given. Names that do not resolve are skipped.
pub fn resolve(server_addresses: &HashSet<String>) -> HashSet<SocketAddr> {
    let mut out = HashSet::new();
    for addr in server_addresses {
        let with_port = if addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !addr.ends_with(']')
        {
            addr.clone()
        } else {
            format!("{addr}:443")
        };
        if let Ok(resolved) = with_port.to_socket_addrs() {
            out.extend(resolved);
        }
    }
    out
}

/// The remote end of each established TCP socket of `pid`: (fd number, remote address).
fn established_sockets(pid: u32) -> Vec<(i32, SocketAddr)> {
    let mut inodes = std::collections::HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                && let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok())
            {
                inodes.insert(inode, fd);
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() < 10 || cols[3] != "01" {
                continue;
            }
            let (Some(fd), Some(remote)) = (
                cols[9].parse::<u64>().ok().and_then(|i| inodes.get(&i)),
                parse_proc_addr(cols[2], v6),
            ) else {
                continue;
            };
            out.push((*fd, remote));
        }
    }
    out
}

/// `0100007F:1F90` (IPv4, little-endian words) or the 32-hex-digit IPv6 form.
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        if ip.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, word) in (0..4).map(|w| &ip[w * 8..w * 8 + 8]).enumerate() {
            let w = u32::from_str_radix(word, 16).ok()?.to_le_bytes();
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w);
        }
        let v6 = Ipv6Addr::from(bytes);
        v6.to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6))
    } else {
        IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        ))
    };
    Some(SocketAddr::new(ip, port))
}

/// Shuts down (both directions) the established TCP connections of `pid` to any of `dests`,
/// through a duplicate of its socket taken with pidfd_getfd: its pending TLS write then
/// fails instead of sending. Returns the remote addresses cut.
pub fn cut_connections(pid: u32, dests: &HashSet<SocketAddr>) -> Vec<SocketAddr> {
    established_sockets(pid)
        .into_iter()
        .filter(|(fd, remote)| dests.contains(remote) && cut_socket(pid, *fd as u64))
        .map(|(_, remote)| remote)
        .collect()
}

/// Runs `f` on a duplicate of process `pid`'s descriptor `fd` (the same open socket).
fn with_fd(pid: u32, fd: u64, f: impl FnOnce(i32) -> bool) -> bool {
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    // SAFETY: raw syscalls with integer arguments; every fd we get is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) } as i32;
    if pidfd < 0 {
        return false;
    }
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) } as i32;
    let done = dup >= 0 && f(dup);
    if dup >= 0 {
        unsafe { libc::close(dup) };
    }
    unsafe { libc::close(pidfd) };
    done
}

/// The socket `fd` of `pid` aborts when its process closes it (`SO_LINGER` 0): what it
/// still has queued is discarded, never sent. Returns the setting it had, to restore.
pub fn abort_on_close(pid: u32, fd: u64) -> Option<libc::linger> {
    let mut before = None;
    with_fd(pid, fd, |dup| {
        let mut old = libc::linger {
            l_onoff: 0,
            l_linger: 0,
        };
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        // SAFETY: getsockopt into a linger of the given size.
        let got = unsafe {
            libc::getsockopt(
                dup,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&mut old as *mut libc::linger).cast(),
                &mut len,
            )
        } == 0;
        let set = set_linger(
            dup,
            libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
        if got && set {
            before = Some(old);
        }
        set
    });
    before
}

/// Puts back what `abort_on_close` changed (the write was granted after all).
pub fn restore_linger(pid: u32, fd: u64, linger: libc::linger) -> bool {
    with_fd(pid, fd, |dup| set_linger(dup, linger))
}

fn set_linger(fd: i32, linger: libc::linger) -> bool {
    // SAFETY: setsockopt with a valid pointer and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        ) == 0
    }
}

/// Cuts the socket `fd` of `pid` (both directions): its reads end, its writes fail.
pub fn cut_socket(pid: u32, fd: u64) -> bool {
    // SAFETY: shutdown on a descriptor we own.
    with_fd(
        pid,
        fd,
        |dup| unsafe { libc::shutdown(dup, libc::SHUT_RDWR) } == 0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90", false),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:01BB", true),
            Some("127.0.0.1:443".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }

    #[test]
    fn resolves_literal_endpoints_with_default_port() {
        let set: HashSet<String> = ["127.0.0.1:8443".to_string(), "127.0.0.1".to_string()]
            .into_iter()
            .collect();
        let r = resolve(&set);
        assert!(r.contains(&"127.0.0.1:8443".parse().unwrap()));
        assert!(r.contains(&"127.0.0.1:443".parse().unwrap()));
    }

    #[test]
    fn cuts_an_established_connection_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let cut = cut_connections(std::process::id(), &[addr].into_iter().collect());
        assert_eq!(cut, vec![addr]);
        use std::io::Write;
        assert!(
            (&client).write_all(b"x").is_err(),
            "the write fails on a cut connection"
        );
    }
}
