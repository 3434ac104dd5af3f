//! The user-space half of estimates: which sockets the kernel meters (`TLS_SOCKS`).
use aya::maps::{HashMap, MapData};

use agentwatch_ebpf::SOCK_METERED;

pub struct Meter {
    socks: Option<HashMap<MapData, u64, u32>>,
    /// Map updates that failed (the socket stays unmetered or metered; counted).
    pub errors: u64,
}

impl Meter {
    pub fn new(socks: HashMap<MapData, u64, u32>) -> Self {
        Self {
            socks: Some(socks),
            errors: 0,
        }
    }

    /// No kernel behind it (unit tests, a daemon without probes).
    pub fn disabled() -> Self {
        Self {
            socks: None,
            errors: 0,
        }
    }

    /// Starts metering socket `fd` of `tgid`, or stops looking at it.
    pub fn set(&mut self, tgid: u32, fd: u64, metered: bool) {
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let key = ((tgid as u64) << 32) | (fd & 0xffff_ffff);
        let result = if metered {
            socks.insert(key, SOCK_METERED, 0)
        } else {
            socks.remove(&key)
        };
        if result.is_err() {
            self.errors += 1;
        }
    }
}
