//! `[sinks.*]` and `[metrics]` of the daemon's TOML configuration. JSONL is always on; a
//! table present enables its sink; every other key has a documented default.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::destination::DestinationConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinksConfig {
    /// `[sinks.clickhouse]`: off unless present.
    pub clickhouse: Option<ClickHouseConfig>,
    /// `[sinks.otlp]`: off unless present.
    pub otlp: Option<OtlpConfig>,
    /// `[sinks.jsonl]`: rotation and retention of the JSONL files (always written).
    pub jsonl: super::rotation::JsonlConfig,
    /// `[sinks.webhook]`: notifications as JSON. Off unless present.
    pub webhook: Option<super::notify::WebhookConfig>,
    /// `[sinks.slack]`: notifications as Slack incoming-webhook payloads. Off unless present.
    pub slack: Option<super::notify::SlackConfig>,
    /// `[sinks.alertmanager]`: notifications as Alertmanager v2 alerts. Off unless present.
    pub alertmanager: Option<super::notify::AlertmanagerConfig>,
}

impl SinksConfig {
    /// The network destinations configured, in the order they are built (and shown). A new
    /// destination: its `[sinks.*]` table above, and its place here.
    pub fn destinations(&self) -> Vec<&dyn DestinationConfig> {
        fn on<T: DestinationConfig>(table: &Option<T>) -> Option<&dyn DestinationConfig> {
            table.as_ref().map(|t| t as &dyn DestinationConfig)
        }
        [
            on(&self.clickhouse),
            on(&self.otlp),
            on(&self.webhook),
            on(&self.slack),
            on(&self.alertmanager),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) interface. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// Created if absent. Default `agentwatch`.
    pub database: String,
    /// Default `default`.
    pub user: String,
    /// Default none.
    pub password: Option<String>,
    /// Schema validation of the `clickhouse` crate (RowBinaryWithNamesAndTypes). Default
    /// true; set false for servers older than 24.x (Debian's 18.16).
    pub validation: bool,
    /// Table of calls (one row per call). Default `calls`.
    pub calls_table: String,
    /// Table of closed sessions (one row per session). Default `sessions`.
    pub sessions_table: String,
    /// Table of what sessions did (one row per tool run, `kind` = `tool_run`). Default
    /// `actions`.
    pub actions_table: String,
    /// Rows per insert at most. Default 10,000.
    pub batch_rows: usize,
    /// Unacknowledged bytes kept in `<data_dir>/spool/clickhouse`; rows past it are dropped
    /// and counted. Default 1 GiB.
    pub spool_max_bytes: u64,
    /// Per request. Default 30 s.
    pub timeout_secs: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "agentwatch".into(),
            user: "default".into(),
            password: None,
            validation: true,
            calls_table: "calls".into(),
            sessions_table: "sessions".into(),
            actions_table: "actions".into(),
            batch_rows: 10_000,
            spool_max_bytes: 1 << 30,
            timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// gRPC: the collector's address; HTTP: a base URL (requests go to `<endpoint>/v1/traces`
    /// and `<endpoint>/v1/metrics`). `https://` uses TLS (rustls, web PKI roots). Default
    /// `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// Extra request headers (e.g. authorization). Default none.
    pub headers: BTreeMap<String, String>,
    /// Export spans. Default true.
    pub traces: bool,
    /// Export metrics every `metrics_interval_secs`. Default true.
    pub metrics: bool,
    /// Default 10 s.
    pub metrics_interval_secs: u64,
    /// Spool records (a call, or a closed session) per export request at most. Default 512.
    pub batch_records: usize,
    /// Unacknowledged bytes kept in `<data_dir>/spool/otlp`; records past it are dropped and
    /// counted. Default 256 MiB.
    pub spool_max_bytes: u64,
    /// Per request. Default 10 s.
    pub timeout_secs: u64,
    /// Ceiling hits and agents remembered per open session for its agent spans; more are
    /// dropped and counted. Default 256.
    pub max_events_per_session: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
            headers: BTreeMap::new(),
            traces: true,
            metrics: true,
            metrics_interval_secs: 10,
            batch_records: 512,
            spool_max_bytes: 256 << 20,
            timeout_secs: 10,
            max_events_per_session: 256,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint (off by default; on loopback unless `listen` says
/// otherwise).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text format). Default false.
    pub prometheus: bool,
    /// Where it listens. Default `127.0.0.1:9464`; a pod or node address (`0.0.0.0:9464` in a
    /// DaemonSet's pod) only when set so, for a cluster's Prometheus to scrape.
    pub listen: SocketAddr,
    /// Label sets per instrument at most; more are dropped and counted. Default 2,000.
    pub max_series: usize,
    /// Also label spend (`agentwatch.cost`, `agentwatch.session.cost`) with `k8s.pod.name`.
    /// Default false: every pod a node ever ran is a series until the daemon restarts, and
    /// once `max_series` is reached new ones are dropped (counted); the namespace label is
    /// always there.
    pub pod_label: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            prometheus: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_series: 2_000,
            pod_label: false,
        }
    }
}
