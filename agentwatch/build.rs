//! Embeds the eBPF object built by `cargo xtask build` (or names an empty file, so the
//! library and its unit tests build without it; the daemon then says how to build it).
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/agentwatch");
    let object = std::env::var_os("AGENTWATCH_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-env-changed=AGENTWATCH_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let path = if object.is_file() {
        object
    } else {
        let empty = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("no-ebpf-object");
        std::fs::write(&empty, b"").unwrap();
        empty
    };
    println!("cargo:rustc-env=AGENTWATCH_EBPF_OBJECT={}", path.display());
}
