//! Short holds at first contact: RCU grace periods expedited while a held process is probed.
//!
//! Registering a uprobe takes the kernel's `dup_mmap_sem` (a per-CPU rw-semaphore) for
//! writing, and after a quiet moment that waits for a full RCU grace period (`rcu_sync_enter`
//! → `synchronize_rcu`): 10–15 ms on this VM (`BENCHMARKS.md`), during which the process stays stopped. With
//! `/sys/kernel/rcu_expedited` set, that wait is an expedited grace period (an IPI to each CPU,
//! tens of µs). The daemon sets the knob only while it attaches a held process's probes and
//! puts back the value it found as soon as the last such attach is done; a file beside the
//! kernel side remembers that it did, so a daemon killed in that window is undone by the next.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

const KNOB: &str = "/sys/kernel/rcu_expedited";

struct State {
    /// Attaches under way.
    active: usize,
    /// The value found before this daemon set the knob (None: it was set already, or unset).
    saved: Option<String>,
    /// Where the saved value is kept while the knob is ours.
    marker: Option<PathBuf>,
}

static STATE: Mutex<State> = Mutex::new(State {
    active: 0,
    saved: None,
    marker: None,
});
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns expedited attaches on or off; `state_dir` keeps the marker. A marker a killed
/// daemon left (the knob still set by it) is undone first.
pub fn configure(enabled: bool, state_dir: &Path) {
    let marker = state_dir.join("rcu_expedited.saved");
    restore_left_over(&marker);
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    s.marker = Some(marker);
    ENABLED.store(enabled && Path::new(KNOB).exists(), Ordering::Release);
}

fn restore_left_over(marker: &Path) {
    if let Ok(value) = std::fs::read_to_string(marker) {
        if std::fs::write(KNOB, value.trim()).is_ok() {
            tracing::info!(
                "put back /sys/kernel/rcu_expedited = {} (left set by a daemon that was stopped while it attached)",
                value.trim()
            );
        }
        let _ = std::fs::remove_file(marker);
    }
}

/// Grace periods are expedited while a guard lives (when enabled).
pub struct Expedited(bool);

impl Expedited {
    pub fn begin() -> Expedited {
        if !ENABLED.load(Ordering::Acquire) {
            return Expedited(false);
        }
        let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
        if s.active == 0 {
            match std::fs::read_to_string(KNOB) {
                Ok(value) if value.trim() == "0" => {
                    // The marker first: if the daemon dies after the write, the next one
                    // knows to put the value back.
                    let marked = s
                        .marker
                        .as_ref()
                        .is_none_or(|m| std::fs::write(m, value.trim()).is_ok());
                    if marked && std::fs::write(KNOB, "1").is_ok() {
                        s.saved = Some(value.trim().to_string());
                    } else if let Some(m) = &s.marker {
                        let _ = std::fs::remove_file(m);
                    }
                }
                // Set by someone else already (or unreadable): left as it is.
                _ => {}
            }
        }
        s.active += 1;
        Expedited(true)
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
        s.active -= 1;
        if s.active == 0
            && let Some(value) = s.saved.take()
        {
            if let Err(e) = std::fs::write(KNOB, &value) {
                tracing::warn!("failed to put back /sys/kernel/rcu_expedited = {value}: {e}");
            }
            if let Some(m) = &s.marker {
                let _ = std::fs::remove_file(m);
            }
        }
    }
}
