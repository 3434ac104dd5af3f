//! The user-space half of estimates: which sockets the kernel meters (`SOCKS`).
use aya::maps::{HashMap, MapData};

use agentwatch_ebpf::{SOCK_HELLO_SENT, SOCK_IGNORED, SOCK_METERED, SOCK_PLAIN, SockState};

pub struct Meter {
    socks: Option<HashMap<MapData, u64, SockState>>,
    /// Map updates that failed (the socket stays unmetered or metered; counted).
    pub errors: u64,
}

impl Meter {
    pub fn new(socks: HashMap<MapData, u64, SockState>) -> Self {
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

    /// Whether a socket in the table needs its reads seen (plain HTTP, metered, or waiting
    /// for its metering decision). Without a kernel behind it: no.
    pub fn wants_reads(&self) -> bool {
        self.socks.as_ref().is_some_and(|socks| {
            socks
                .iter()
                .flatten()
                .any(|(_, s)| matches!(s.state, SOCK_PLAIN | SOCK_METERED | SOCK_HELLO_SENT))
        })
    }

    /// Starts metering the socket the kernel knows as `sock`, or stops looking at it (the
    /// kernel takes it out of its table when it closes, which keeps its counts right).
    pub fn set(&mut self, sock: u64, metered: bool) {
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let result = match socks.get(&sock, 0) {
            Ok(mut state) => {
                state.state = if metered { SOCK_METERED } else { SOCK_IGNORED };
                socks.insert(sock, state, 0)
            }
            // Closed meanwhile: nothing left to do.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.errors += 1;
        }
    }
}
