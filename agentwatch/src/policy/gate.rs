//! The in-kernel gate as the policy drives it. The maps behind it are the probes'
//! (`probes::gate_maps`); tests drive a fake.
use std::collections::HashSet;
use std::net::SocketAddr;

/// The kernel's side of ceilings: `GATE` (per process: armed, granted, paused, killed,
/// blocked), the refused destinations of `block`, the held sockets of metered writes, and
/// the flags in `CONFIG`. Writes that fail are counted (`errors`), never fatal.
pub trait Gate: Send {
    /// Sets a process's gate state (`agentwatch_ebpf::GATE_*`).
    fn set(&mut self, tgid: u32, state: u32);
    fn get(&self, tgid: u32) -> Option<u32>;
    /// Every (tgid, state) in the gate.
    fn entries(&self) -> Vec<(u32, u32)>;
    /// New connections of `tgid` to any of `dests` are refused (EPERM) from now on.
    fn refuse(&mut self, tgid: u32, dests: &HashSet<SocketAddr>);
    /// A held socket's bytes may leave again (TCP sends what it queued).
    fn release_socket(&mut self, cookie: u64);
    /// Sockets held now.
    fn held_sockets(&self) -> usize;
    /// With ceilings, every data record wakes the daemon (a session's gate must be armed
    /// before a fast agent's next call); without, data waits for the next drain.
    fn set_wake_data(&mut self, on: bool);
    /// The host is over its daily ceiling: every new session's first call is held.
    fn set_host_gate(&mut self, on: bool);
    /// Writes that failed (map full, process gone).
    fn errors(&self) -> u64;
}
