//! Where call and ledger rows go. Every sink implements [`Sink`] (one interface, as in Vector):
//! JSONL files by default ([`JsonlSink`]), always on; ClickHouse ([`clickhouse`]) and OTLP
//! ([`otlp`]) when configured, fed through durable spools ([`spool`]) by the [`Fanout`] the
//! pipeline holds and delivered on their own tasks ([`export::run_delivery`]); metrics
//! ([`metrics`]) over OTLP and an optional loopback Prometheus endpoint. [`build`] wires it all.
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
pub mod otlp;
pub mod recovery;
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
    #[error(transparent)]
    ClickHouseConfig(#[from] clickhouse::ClickHouseConfigError),
    #[error(transparent)]
    OtlpConfig(#[from] otlp::OtlpConfigError),
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

/// Opens JSONL, the spools of the configured network sinks, and spawns their delivery tasks
/// (and the metrics exporters). Call from within the daemon's tokio runtime.
pub async fn build(
    data_dir: &std::path::Path,
    sinks: &SinksConfig,
    metrics_cfg: &MetricsConfig,
    host: String,
) -> Result<(Fanout, ExportHandle), SinkError> {
    use std::sync::Arc;
    use std::time::Duration;

    let jsonl = JsonlSink::open(data_dir)?;
    let want_metrics = metrics_cfg.prometheus || sinks.otlp.as_ref().is_some_and(|o| o.metrics);
    let metrics = want_metrics.then(|| Arc::new(metrics::Metrics::new(metrics_cfg.max_series)));
    let mut writers = Vec::new();
    let mut dests = Vec::new();
    if let Some(cfg) = &sinks.clickhouse {
        let dest = clickhouse::ClickHouseDest::new(cfg)?;
        let spool = Arc::new(spool::Spool::open(
            &data_dir.join("spool/clickhouse"),
            cfg.spool_max_bytes,
        )?);
        let status = Arc::new(export::DestStatus::new(
            "clickhouse",
            format!("{} database {}", cfg.url, cfg.database),
            spool,
        ));
        writers.push(export::SpoolWriter::new(status.clone(), None));
        dests.push(status.clone());
        tokio::spawn(export::run_delivery(
            export::Destination::ClickHouse(Box::new(dest)),
            status,
            cfg.batch_rows,
            Duration::from_secs(cfg.timeout_secs.max(1)),
        ));
    }
    if let Some(cfg) = &sinks.otlp {
        let dest = otlp::OtlpDest::new(cfg, host.clone())?;
        let spool = Arc::new(spool::Spool::open(
            &data_dir.join("spool/otlp"),
            cfg.spool_max_bytes,
        )?);
        let status = Arc::new(export::DestStatus::new(
            "otlp",
            format!(
                "{} ({})",
                cfg.endpoint,
                match cfg.protocol {
                    config::OtlpProtocol::Grpc => "grpc",
                    config::OtlpProtocol::HttpProtobuf => "http/protobuf",
                }
            ),
            spool,
        ));
        dests.push(status.clone());
        if cfg.traces {
            writers.push(export::SpoolWriter::new(
                status.clone(),
                Some(export::AgentTracker::new(cfg.max_events_per_session)),
            ));
            tokio::spawn(export::run_delivery(
                export::Destination::Otlp(Box::new(dest.clone())),
                status.clone(),
                cfg.batch_records,
                Duration::from_secs(cfg.timeout_secs.max(1)),
            ));
        }
        if let (true, Some(m)) = (cfg.metrics, &metrics) {
            tokio::spawn(otlp::run_metrics(
                dest,
                m.clone(),
                status,
                Duration::from_secs(cfg.metrics_interval_secs.max(1)),
            ));
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
