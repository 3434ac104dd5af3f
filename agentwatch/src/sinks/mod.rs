//! Where call and ledger rows go. Every sink implements [`Sink`] (one interface, as in Vector):
//! JSONL files by default ([`JsonlSink`]), always on; the network destinations configured
//! (ClickHouse [`clickhouse`], OTLP [`otlp`]: each a [`destination::Destination`] built by its
//! `[sinks.*]` table, a [`destination::DestinationConfig`]) fed through durable spools
//! ([`spool`]) by the [`Fanout`] the pipeline holds and delivered on their own tasks
//! ([`export::run_delivery`]); metrics ([`metrics`]) over OTLP and an optional loopback
//! Prometheus endpoint. [`build`] wires it all without naming a destination.
//!
//! Restart recovery ([`recovery::recover`]) reads the JSONL files back so that nothing
//! accounted is lost across a restart and no ledger row is written twice.

pub mod clickhouse;
pub mod config;
pub mod destination;
pub mod export;
#[cfg(test)]
mod export_tests;
pub mod http;
pub mod jsonl;
pub mod metrics;
pub mod notify;
pub mod otlp;
pub mod otlp_http;
pub mod recovery;
pub mod rotation;
pub mod spans;
pub mod spool;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::Serialize;

use crate::sessions::{CallRecord, LedgerRow};

pub use config::{MetricsConfig, SinksConfig};
pub use export::{ExportHandle, Fanout};
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
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// A destination's `[sinks.*]` table it cannot work with (the message names the key).
    #[error(transparent)]
    Destination(destination::BuildError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
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
    /// JSONL only: `actions.jsonl` rows (tool runs) written.
    pub action_rows_written: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Torn last lines truncated when the files were opened.
    pub torn_lines_repaired: u64,
    /// JSONL only: rotations done, and rotations (or their checkpoint, compression, pruning)
    /// that failed and wait for a retry.
    pub rotations: u64,
    pub rotation_errors: u64,
    /// JSONL only: rows kept because they could not be written yet (written first once the
    /// cause is gone), and rows lost because that backlog was full.
    pub rows_pending: u64,
    pub rows_dropped: u64,
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
    /// A notification (a warning, a stop); sinks that send none ignore it.
    fn write_notice(&mut self, _notice: &crate::sessions::Notice) -> Result<(), SinkError> {
        Ok(())
    }
    /// What a session's processes did (a tool run); sinks without a place for it ignore it.
    fn write_action(
        &mut self,
        _row: &crate::sessions::actions::ActionRow,
    ) -> Result<(), SinkError> {
        Ok(())
    }
    fn health(&self) -> SinkHealth;
    /// Called once a second: write out what could not be written before (if the sink keeps
    /// such rows).
    fn retry(&mut self) {}
}

/// Opens JSONL, the spools of the configured network sinks, and spawns their delivery tasks
/// (and the metrics exporters). Call from within the daemon's tokio runtime.
pub async fn build(
    data_dir: &std::path::Path,
    sinks: &SinksConfig,
    metrics_cfg: &MetricsConfig,
    host: String,
) -> Result<(Fanout, ExportHandle), SinkError> {
    use std::sync::Arc;

    let jsonl = JsonlSink::open_with(data_dir, &sinks.jsonl)?;
    let configured = sinks.destinations();
    let want_metrics = metrics_cfg.prometheus || configured.iter().any(|d| d.wants_metrics());
    let metrics = want_metrics.then(|| {
        Arc::new(
            metrics::Metrics::new(metrics_cfg.max_series).with_pod_label(metrics_cfg.pod_label),
        )
    });
    let ctx = destination::BuildContext {
        host,
        metrics: metrics.clone(),
    };
    let mut writers = Vec::new();
    let mut dests = Vec::new();
    for cfg in configured {
        let name = cfg.name();
        let built = cfg.build(&ctx).map_err(SinkError::Destination)?;
        let spool = Arc::new(spool::Spool::open(
            &data_dir.join("spool").join(name),
            built.spool_max_bytes,
        )?);
        let status = Arc::new(
            export::DestStatus::new(name, built.target, spool)
                .with_counters(built.destination.counters()),
        );
        dests.push(status.clone());
        if built.deliver {
            let tracker = built.track_agents.map(export::AgentTracker::new);
            writers.push(if built.notices {
                export::SpoolWriter::for_notices(status.clone())
            } else {
                export::SpoolWriter::new(status.clone(), tracker)
            });
            tokio::spawn(export::run_delivery(
                built.destination,
                status,
                built.batch_records,
                built.timeout,
            ));
        }
        for task in built.side_tasks {
            tokio::spawn(task);
        }
    }
    if let (true, Some(m)) = (metrics_cfg.prometheus, &metrics) {
        let addr = metrics::serve_prometheus(metrics_cfg.listen, m.clone()).await?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    Ok((
        Fanout {
            jsonl,
            writers,
            metrics: metrics.clone(),
        },
        ExportHandle { dests, metrics },
    ))
}
