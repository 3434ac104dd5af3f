//! The maps of the in-kernel gate (`GATE`, the `block` tables, `HELD_SOCKS` and the flags
//! in `CONFIG`), as `policy::gate::Gate`: the policy decides, these write the decisions.
// aya's errors are large; the gate maps are taken once, at start-up.
#![allow(clippy::result_large_err)]
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use agentwatch_ebpf::{self as abi, Dest4, Dest6};
use aya::maps::{Array, HashMap, MapData};

use super::ProbeError;

pub struct GateMaps {
    gate: HashMap<MapData, u32, u32>,
    config: Array<MapData, u32>,
    blocked_tgids: HashMap<MapData, u32, u32>,
    dest4: HashMap<MapData, Dest4, u32>,
    dest6: HashMap<MapData, Dest6, u32>,
    /// Sockets whose queued bytes the egress program keeps in the host (cookie → 1).
    held_socks: HashMap<MapData, u64, u32>,
    /// Writes that failed (map full, process gone): counted, shown in status.
    errors: u64,
}

impl crate::policy::gate::Gate for GateMaps {
    fn set(&mut self, tgid: u32, state: u32) {
        if self.gate.insert(tgid, state, 0).is_err() {
            self.errors += 1;
        }
    }

    fn get(&self, tgid: u32) -> Option<u32> {
        self.gate.get(&tgid, 0).ok()
    }

    fn entries(&self) -> Vec<(u32, u32)> {
        self.gate.iter().filter_map(Result::ok).collect()
    }

    fn refuse(&mut self, tgid: u32, dests: &HashSet<SocketAddr>) {
        let mut ok = self.blocked_tgids.insert(tgid, 1, 0).is_ok();
        for d in dests {
            let port = (d.port().to_be()) as u32;
            ok &= match d.ip() {
                IpAddr::V4(ip) => {
                    let key = Dest4 {
                        ip: u32::from_ne_bytes(ip.octets()),
                        port,
                    };
                    // An IPv4 peer may be reached through an IPv4-mapped IPv6 socket too.
                    let mapped = ip.to_ipv6_mapped().octets();
                    self.dest4.insert(key, 1, 0).is_ok()
                        && self.dest6.insert(dest6(mapped, port), 1, 0).is_ok()
                }
                IpAddr::V6(ip) => self.dest6.insert(dest6(ip.octets(), port), 1, 0).is_ok(),
            };
        }
        if !ok {
            self.errors += 1;
        }
    }

    fn release_socket(&mut self, cookie: u64) {
        if cookie != 0 {
            let _ = self.held_socks.remove(&cookie);
        }
    }

    fn held_sockets(&self) -> usize {
        self.held_socks.keys().count()
    }

    fn set_wake_data(&mut self, on: bool) {
        if self.config.set(abi::CFG_WAKE_DATA, on as u32, 0).is_err() {
            self.errors += 1;
        }
    }

    fn set_host_gate(&mut self, on: bool) {
        if self.config.set(abi::CFG_HOST_GATE, on as u32, 0).is_err() {
            self.errors += 1;
        }
    }

    fn errors(&self) -> u64 {
        self.errors
    }
}

impl std::fmt::Debug for GateMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateMaps")
            .field("errors", &self.errors)
            .finish()
    }
}

fn dest6(octets: [u8; 16], port: u32) -> Dest6 {
    let mut ip = [0u32; 4];
    for (i, w) in ip.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([
            octets[i * 4],
            octets[i * 4 + 1],
            octets[i * 4 + 2],
            octets[i * 4 + 3],
        ]);
    }
    Dest6 { ip, port }
}

/// Takes the gate maps out of the loaded object.
pub fn take(ebpf: &mut aya::Ebpf) -> Result<GateMaps, ProbeError> {
    let map_err = |name: &str| {
        let name = name.to_string();
        move |source| ProbeError::Map { name, source }
    };
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| ProbeError::MissingMap { name: name.into() })
    };
    let gate = HashMap::try_from(take("GATE")?).map_err(map_err("GATE"))?;
    let blocked_tgids =
        HashMap::try_from(take("BLOCKED_TGIDS")?).map_err(map_err("BLOCKED_TGIDS"))?;
    let dest4 = HashMap::try_from(take("BLOCKED_DEST4")?).map_err(map_err("BLOCKED_DEST4"))?;
    let dest6 = HashMap::try_from(take("BLOCKED_DEST6")?).map_err(map_err("BLOCKED_DEST6"))?;
    let config = Array::try_from(take("CONFIG")?).map_err(map_err("CONFIG"))?;
    let held_socks = HashMap::try_from(take("HELD_SOCKS")?).map_err(map_err("HELD_SOCKS"))?;
    Ok(GateMaps {
        gate,
        config,
        blocked_tgids,
        dest4,
        dest6,
        held_socks,
        errors: 0,
    })
}
