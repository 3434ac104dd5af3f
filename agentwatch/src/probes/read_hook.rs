//! The read hook (`sock:sock_recv_length`): the end of every socket read of every process.
//! Only some sockets need their reads seen (a plain-HTTP socket's replies, a metered socket's
//! sizes, an agent's AEAD records and gate), so with `scope = "agents"` it is attached only
//! while such a socket or an agent may exist, and a process that opens such a socket while
//! it is off is stopped by the kernel until it is on (`socket.rs`, `reads_needed`). The
//! kernel reads `CFG_READ_HOOK` to know: 1 once attached; 0 from the moment user space
//! starts taking it off, so a socket opened in between is held, not missed.
use aya::programs::RawTracePoint;
use serde::Serialize;

use super::ProbeError;
use super::loader::{Probes, attach_raw_tracepoint, load_error, program};
use super::pins::PinSet;
use agentwatch_ebpf as abi;

const NAME: &str = "sock_recv_length";
const TRACEPOINT: &str = "sock:sock_recv_length";

/// The read hook, for status.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ReadHook {
    pub attached: bool,
    /// `scope = "all"`: attached for good.
    pub always: bool,
    /// Times this daemon attached it (a socket needed its reads seen, a first contact was
    /// decided) and took it off (nothing needed it for a while).
    pub attaches: u64,
    pub detaches: u64,
}

impl Probes {
    /// Loads the read hook's program (so attaching it while a process waits costs only the
    /// attach) and takes a previous daemon's pinned link as it is. `always`
    /// (`scope = "all"`): attached now and never taken off.
    pub fn set_read_hook(&mut self, always: bool) {
        self.programs.read_hook.always = always;
        let loaded = program::<RawTracePoint>(&mut self.ebpf, NAME).and_then(|p| {
            if p.fd().is_err() {
                p.load().map_err(load_error(NAME))?;
            }
            Ok(())
        });
        if let Err(e) = loaded {
            self.read_hook_failed(&e);
            return;
        }
        let adopted = self
            .pins
            .as_ref()
            .is_some_and(|p: &PinSet| p.link(NAME).exists());
        if adopted {
            self.read_hook_on();
        } else {
            self.set_read_flag(0);
        }
        if always {
            self.attach_read_hook();
        }
    }

    pub fn read_hook_attached(&self) -> bool {
        self.programs.read_hook.attached
    }

    /// Attaches the read hook (or keeps it, when it was being taken off). Returns whether it
    /// is attached.
    pub fn attach_read_hook(&mut self) -> bool {
        if self.programs.read_hook.attached {
            self.set_read_flag(1);
            return true;
        }
        let started = std::time::Instant::now();
        let link = attach_raw_tracepoint(&mut self.ebpf, NAME, self.pins.as_ref());
        match link {
            Ok(link) => {
                self.read_link = Some(link);
                self.read_hook_on();
                self.programs.read_hook.attaches += 1;
                tracing::debug!(
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "attached the read hook (a socket needs its reads seen)"
                );
                true
            }
            Err(e) => {
                self.read_hook_failed(&e);
                false
            }
        }
    }

    /// First step of taking it off: from now on the kernel holds a process that opens a
    /// socket whose reads are wanted (the caller looks again for such sockets a while later,
    /// then calls `detach_read_hook`, or `attach_read_hook` to keep it).
    pub fn read_hook_closing(&mut self) {
        self.set_read_flag(0);
    }

    /// Takes the read hook off (this daemon's link and a previous daemon's pinned one).
    pub fn detach_read_hook(&mut self) {
        if self.programs.read_hook.always {
            return;
        }
        self.set_read_flag(0);
        if let Some(pins) = &self.pins {
            let _ = std::fs::remove_file(pins.link(NAME));
        }
        self.read_link = None;
        self.programs.tracepoints.retain(|t| t != TRACEPOINT);
        if self.programs.read_hook.attached {
            self.programs.read_hook.detaches += 1;
            tracing::debug!("took the read hook off (no socket needs its reads seen)");
        }
        self.programs.read_hook.attached = false;
    }

    fn read_hook_on(&mut self) {
        self.programs.read_hook.attached = true;
        if !self.programs.tracepoints.iter().any(|t| t == TRACEPOINT) {
            self.programs.tracepoints.push(TRACEPOINT.into());
        }
        self.set_read_flag(1);
    }

    fn set_read_flag(&mut self, value: u32) {
        if let Err(e) = self.config.set(abi::CFG_READ_HOOK, value, 0) {
            tracing::warn!("failed to write the read hook's switch to the CONFIG map: {e}");
        }
    }

    /// It cannot be had: the kernel side then holds a process whose socket needs its reads
    /// seen until its hold times out, each time; nothing of it is seen.
    fn read_hook_failed(&mut self, e: &ProbeError) {
        tracing::warn!(
            "{e}; the replies of plain-HTTP sockets and the sizes of metered ones are not seen"
        );
        self.programs.missing.insert(
            TRACEPOINT.into(),
            format!("{e}: replies of plain-HTTP sockets and sizes of metered ones are not seen"),
        );
    }
}
