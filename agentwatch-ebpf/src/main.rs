//! agentwatch kernel programs: process lifecycle tracepoints, socket-layer tracepoints
//! (first contact, plain HTTP, metered sockets), TLS-library uprobes attached per process,
//! and the ceiling gate. Every event that cannot be delivered is counted in `DROPS`.
//!
//! Layout: `maps.rs` (every map), `output.rs` (records, counters, settings), and
//! `probes/` (one file per hook family). The ABI shared with user space is the library
//! (`lib.rs`).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Atomic adds on map values (the BPF target's core has no atomic read-modify-write types).
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host only so the workspace builds; the real object is bpfel-unknown-none.
}

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod output;
#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
