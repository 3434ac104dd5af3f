//! The TCP peers a live process has connections to, from /proc: for the connections a
//! process opened before the daemon had a reason to watch it (an agent connects to its LLM
//! endpoint before its first request makes it an agent).
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

/// TCP states that mean "connected or connecting" (`include/net/tcp_states.h`):
/// ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT.
const CONNECTED: [u8; 5] = [0x01, 0x02, 0x04, 0x05, 0x08];

/// (address, port) of the remote ends of `tgid`'s TCP sockets that are connected (listening
/// sockets and closed ones are left out). Empty when the process is gone.
pub fn tcp_peers(proc_root: &Path, tgid: u32) -> Vec<(IpAddr, u16)> {
    let dir = proc_root.join(tgid.to_string());
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut peers = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(dir.join("net").join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some((peer, inode)) = parse_line(line, v6)
                && inodes.contains(&inode)
                && !peers.contains(&peer)
            {
                peers.push(peer);
            }
        }
    }
    peers
}

/// One line of /proc/net/tcp{,6}: the remote end and the socket's inode, if connected.
fn parse_line(line: &str, v6: bool) -> Option<((IpAddr, u16), u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (rem, st, inode) = (f.get(2)?, f.get(3)?, f.get(9)?);
    if !CONNECTED.contains(&u8::from_str_radix(st, 16).ok()?) {
        return None;
    }
    let (addr, port) = rem.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The address is printed as 32-bit words in the kernel's (little-endian) byte order.
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let ip = match (v6, words.as_slice()) {
        (false, [w]) => IpAddr::from(w.to_le_bytes()),
        (true, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let ip = std::net::Ipv6Addr::from(bytes);
            // An IPv4 peer of a dual-stack socket is reported as itself.
            ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
        }
        _ => return None,
    };
    Some(((ip, port), inode.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse_to_peers() {
        let v4 = "   1: 0100007F:A3B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_line(v4, false),
            Some((("127.0.0.1".parse().unwrap(), 8080), 12345))
        );
        // Listening (0A): no peer.
        let listen = v4.replace(" 01 ", " 0A ");
        assert_eq!(parse_line(&listen, false), None);
        let v6 = "   0: 00000000000000000000000001000000:C350 0000000000000000FFFF00000100007F:01BB 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse_line(v6, true),
            Some((("127.0.0.1".parse().unwrap(), 443), 777))
        );
        assert_eq!(parse_line("garbage", false), None);
        assert_eq!(parse_line("", true), None);
    }

    #[test]
    fn a_live_connection_of_this_process_is_found() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let peers = tcp_peers(Path::new("/proc"), std::process::id());
        assert!(
            peers.contains(&("127.0.0.1".parse().unwrap(), port)),
            "{peers:?}"
        );
        assert!(tcp_peers(Path::new("/proc"), u32::MAX).is_empty());
    }
}
