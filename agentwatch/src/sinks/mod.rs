//! Where call and ledger rows go. Every sink implements [`Sink`] (one interface, as in Vector):
//! JSONL files by default ([`JsonlSink`]); ClickHouse and OTLP later.
//!
//! Restart recovery ([`recovery::recover`]) reads the JSONL files back so that nothing
//! accounted is lost across a restart and no ledger row is written twice.

pub mod jsonl;
pub mod recovery;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::Serialize;

use crate::sessions::{CallRecord, LedgerRow};

pub use jsonl::JsonlSink;
pub use recovery::{RecoveryReport, recover};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "cannot open {path}: {source}; check that the data directory exists, is writable by the daemon and is on a local file system"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}; check its permissions (recovery needs to read it)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot repair the torn last line of {path}: {source}; fix or move the file by hand, then restart"
    )]
    Repair {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot append a row to {path}: {source}; check free disk space and permissions (the row is not written)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot sync {path} to disk: {source}; the last row may not be durable, check the disk"
    )]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialize a {what} row: {source}; this is a bug, please report it")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A sink's state, for `agentwatch status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SinkHealth {
    pub name: String,
    /// No error since the last successful write.
    pub ok: bool,
    pub calls_written: u64,
    pub ledger_rows_written: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Torn last lines truncated when the files were opened.
    pub torn_lines_repaired: u64,
}

/// One destination for call and ledger rows. A write returns once the row is durable (for
/// sinks that can tell); a failed write wrote nothing the reader could see as a row.
pub trait Sink: Send {
    fn write_call(&mut self, call: &CallRecord) -> Result<(), SinkError>;
    fn write_ledger(&mut self, row: &LedgerRow) -> Result<(), SinkError>;
    /// A ceiling hit; sinks that have no place for it ignore it.
    fn write_ceiling_hit(&mut self, _hit: &crate::sessions::CeilingHit) -> Result<(), SinkError> {
        Ok(())
    }
    fn health(&self) -> SinkHealth;
}
