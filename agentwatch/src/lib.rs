//! agentwatch: LLM calls seen at the TLS library, charged to agent sessions.
//!
//! Data flows one way: `probes` (kernel events) → `procs` (process tree) and `capture`
//! (TLS byte streams → `protocol` → `providers`) → `accounting` (usage, cost) →
//! `sessions` (agent tree, ledger) → `sinks`. `control` serves the CLI; `daemon` wires it up.

pub mod accounting;
pub mod capture;
pub mod config;
pub mod control;
pub mod daemon;
/// Harness helpers for the fuzz targets (`fuzz/`), which turn the `fuzzing` feature on; not
/// part of the daemon.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod history;
pub mod policy;
pub mod privileges;
pub mod probes;
pub mod procs;
pub mod protocol;
pub mod providers;
pub mod sessions;
pub mod sinks;
pub mod workloads;
