//! The ClickHouse sink: two tables, created if absent, with the columns of `calls.jsonl` and
//! `ledger.jsonl` (same names), filled by batched RowBinary inserts over HTTP.
//!
//! - `<database>.<calls_table>` (default `agentwatch.calls`): one row per call,
//!   `ReplacingMergeTree ORDER BY (session_id, call_seq)`; `call_id` (`<session_id>:<call_seq>`)
//!   is the stable call id.
//! - `<database>.<sessions_table>` (default `agentwatch.sessions`): one row per closed session,
//!   `ReplacingMergeTree ORDER BY session_id`.
//!
//! A batch re-sent after a lost acknowledgement (or a daemon crash before the spool cursor
//! moved) inserts identical rows with the same key: read with `FINAL` (or after `OPTIMIZE ...
//! FINAL`) to see each exactly once. The DDL uses only what ClickHouse 18.16 and current
//! servers both accept (no DateTime64, Bool, LowCardinality, TTL, CODEC): timestamps are the
//! RFC 3339 strings of the JSONL files, booleans UInt8, cost Float64.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use super::config::ClickHouseConfig;
use super::destination::{
    BuildContext, BuildError, Built, DeliveryError, Destination, DestinationConfig, ExportItem,
};
use crate::sessions::{CallRecord, LedgerRow};

pub const CALL_COLUMNS: &[(&str, &str)] = &[
    ("call_id", "String"),
    ("session_id", "String"),
    ("pid", "UInt32"),
    ("comm", "String"),
    ("depth", "UInt32"),
    ("provider", "String"),
    ("api", "String"),
    ("model", "Nullable(String)"),
    ("streaming", "UInt8"),
    ("http_version", "String"),
    ("status", "Nullable(UInt16)"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cache_read_tokens", "UInt64"),
    ("cache_write_tokens", "UInt64"),
    ("reasoning_tokens", "UInt64"),
    ("cost_usd", "Nullable(Float64)"),
    ("started_at", "String"),
    ("ended_at", "String"),
    ("total_tokens", "UInt64"),
    ("usage_source", "String"),
    ("complete", "UInt8"),
    ("response_model", "Nullable(String)"),
    ("response_id", "Nullable(String)"),
    ("server_address", "Nullable(String)"),
    ("host", "String"),
    ("pid_start_ticks", "UInt64"),
    ("root_pid", "UInt32"),
    ("root_start_ticks", "UInt64"),
    ("parent_pid", "Nullable(UInt32)"),
    ("parent_start_ticks", "Nullable(UInt64)"),
    ("call_seq", "UInt64"),
    ("request_bytes", "UInt64"),
    ("response_bytes", "UInt64"),
    ("blocked", "UInt8"),
    ("started_ns", "Nullable(UInt64)"),
    ("ns_pid", "Nullable(UInt32)"),
    ("container_id", "Nullable(String)"),
    ("container_runtime", "Nullable(String)"),
    ("pod_uid", "Nullable(String)"),
    ("pod_name", "Nullable(String)"),
    ("pod_namespace", "Nullable(String)"),
];

pub const SESSION_COLUMNS: &[(&str, &str)] = &[
    ("session_id", "String"),
    ("host", "String"),
    ("root_pid", "UInt32"),
    ("root_exe", "Nullable(String)"),
    ("root_cmdline", "String"),
    ("started_at", "String"),
    ("ended_at", "String"),
    ("input_tokens", "UInt64"),
    ("output_tokens", "UInt64"),
    ("cache_read_tokens", "UInt64"),
    ("cache_write_tokens", "UInt64"),
    ("reasoning_tokens", "UInt64"),
    ("total_tokens", "UInt64"),
    ("total_cost_usd", "Float64"),
    ("call_count", "UInt64"),
    ("depth_max", "UInt32"),
    ("agent_count", "UInt64"),
    ("ceiling_hits", "UInt64"),
    ("outcome", "String"),
    ("providers", "Array(String)"),
    ("models", "Array(String)"),
    ("unpriced_calls", "UInt64"),
    ("root_start_ticks", "UInt64"),
    ("root_comm", "String"),
    ("boot_id", "String"),
    ("container_id", "Nullable(String)"),
    ("container_runtime", "Nullable(String)"),
    ("pod_uid", "Nullable(String)"),
    ("pod_name", "Nullable(String)"),
    ("pod_namespace", "Nullable(String)"),
];

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct CallRow {
    pub call_id: String,
    pub session_id: String,
    pub pid: u32,
    pub comm: String,
    pub depth: u32,
    pub provider: String,
    pub api: String,
    pub model: Option<String>,
    pub streaming: u8,
    pub http_version: String,
    pub status: Option<u16>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: Option<f64>,
    pub started_at: String,
    pub ended_at: String,
    pub total_tokens: u64,
    pub usage_source: String,
    pub complete: u8,
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    pub server_address: Option<String>,
    pub host: String,
    pub pid_start_ticks: u64,
    pub root_pid: u32,
    pub root_start_ticks: u64,
    pub parent_pid: Option<u32>,
    pub parent_start_ticks: Option<u64>,
    pub call_seq: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub blocked: u8,
    pub started_ns: Option<u64>,
    pub ns_pid: Option<u32>,
    pub container_id: Option<String>,
    pub container_runtime: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct SessionRow {
    pub session_id: String,
    pub host: String,
    pub root_pid: u32,
    pub root_exe: Option<String>,
    pub root_cmdline: String,
    pub started_at: String,
    pub ended_at: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub total_tokens: u64,
    pub total_cost_usd: f64,
    pub call_count: u64,
    pub depth_max: u32,
    pub agent_count: u64,
    pub ceiling_hits: u64,
    pub outcome: String,
    pub providers: Vec<String>,
    pub models: Vec<String>,
    pub unpriced_calls: u64,
    pub root_start_ticks: u64,
    pub root_comm: String,
    pub boot_id: String,
    pub container_id: Option<String>,
    pub container_runtime: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

fn json_str<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn call_id(session_id: &str, call_seq: u64) -> String {
    format!("{session_id}:{call_seq}")
}

impl From<&CallRecord> for CallRow {
    fn from(c: &CallRecord) -> Self {
        CallRow {
            call_id: call_id(&c.session_id, c.call_seq),
            session_id: c.session_id.clone(),
            pid: c.pid,
            comm: c.comm.clone(),
            depth: c.depth,
            provider: c.provider.clone(),
            api: c.api.clone(),
            model: c.model.clone(),
            streaming: u8::from(c.streaming),
            http_version: c.http_version.clone(),
            status: c.status,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cache_read_tokens: c.cache_read_tokens,
            cache_write_tokens: c.cache_write_tokens,
            reasoning_tokens: c.reasoning_tokens,
            cost_usd: c.cost_usd,
            started_at: c.started_at.clone(),
            ended_at: c.ended_at.clone(),
            total_tokens: c.total_tokens,
            usage_source: json_str(&c.usage_source),
            complete: u8::from(c.complete),
            response_model: c.response_model.clone(),
            response_id: c.response_id.clone(),
            server_address: c.server_address.clone(),
            host: c.host.clone(),
            pid_start_ticks: c.pid_start_ticks,
            root_pid: c.root_pid,
            root_start_ticks: c.root_start_ticks,
            parent_pid: c.parent_pid,
            parent_start_ticks: c.parent_start_ticks,
            call_seq: c.call_seq,
            request_bytes: c.request_bytes,
            response_bytes: c.response_bytes,
            blocked: u8::from(c.blocked),
            started_ns: c.started_ns,
            ns_pid: c.ns_pid,
            container_id: c.workload.container_id.clone(),
            container_runtime: c.workload.container_runtime.clone(),
            pod_uid: c.workload.pod_uid.clone(),
            pod_name: c.workload.pod_name.clone(),
            pod_namespace: c.workload.pod_namespace.clone(),
        }
    }
}

impl From<&LedgerRow> for SessionRow {
    fn from(l: &LedgerRow) -> Self {
        SessionRow {
            session_id: l.session_id.clone(),
            host: l.host.clone(),
            root_pid: l.root_pid,
            root_exe: l.root_exe.clone(),
            root_cmdline: l.root_cmdline.clone(),
            started_at: l.started_at.clone(),
            ended_at: l.ended_at.clone(),
            input_tokens: l.input_tokens,
            output_tokens: l.output_tokens,
            cache_read_tokens: l.cache_read_tokens,
            cache_write_tokens: l.cache_write_tokens,
            reasoning_tokens: l.reasoning_tokens,
            total_tokens: l.total_tokens,
            total_cost_usd: l.total_cost_usd,
            call_count: l.call_count,
            depth_max: l.depth_max,
            agent_count: l.agent_count,
            ceiling_hits: l.ceiling_hits,
            outcome: json_str(&l.outcome),
            providers: l.providers.clone(),
            models: l.models.clone(),
            unpriced_calls: l.unpriced_calls,
            root_start_ticks: l.root_start_ticks,
            root_comm: l.root_comm.clone(),
            boot_id: l.boot_id.clone(),
            container_id: l.workload.container_id.clone(),
            container_runtime: l.workload.container_runtime.clone(),
            pod_uid: l.workload.pod_uid.clone(),
            pod_name: l.workload.pod_name.clone(),
            pod_namespace: l.workload.pod_namespace.clone(),
        }
    }
}

/// `CREATE DATABASE` and the two `CREATE TABLE` statements.
pub fn ddl(database: &str, calls_table: &str, sessions_table: &str) -> Vec<String> {
    let cols = |c: &[(&str, &str)]| {
        c.iter()
            .map(|(n, t)| format!("    `{n}` {t}"))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    vec![
        format!("CREATE DATABASE IF NOT EXISTS `{database}`"),
        format!(
            "CREATE TABLE IF NOT EXISTS `{database}`.`{calls_table}` (\n{}\n) ENGINE = ReplacingMergeTree() ORDER BY (session_id, call_seq)",
            cols(CALL_COLUMNS)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{database}`.`{sessions_table}` (\n{}\n) ENGINE = ReplacingMergeTree() ORDER BY session_id",
            cols(SESSION_COLUMNS)
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseConfigError {
    #[error(
        "[sinks.clickhouse] {key} = {value:?}: use letters, digits and `_` only (it is used as a SQL identifier)"
    )]
    BadIdentifier { key: &'static str, value: String },
    #[error("[sinks.clickhouse] url = {0:?}: expected an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot set up TLS for ClickHouse: {0}")]
    Tls(String),
}

fn identifier(key: &'static str, value: &str) -> Result<(), ClickHouseConfigError> {
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ClickHouseConfigError::BadIdentifier {
            key,
            value: value.to_string(),
        });
    }
    Ok(())
}

pub struct ClickHouseDest {
    cfg: ClickHouseConfig,
    /// Without a database (DDL), and with it (inserts).
    admin: clickhouse::Client,
    client: clickhouse::Client,
}

impl ClickHouseDest {
    pub fn new(cfg: &ClickHouseConfig) -> Result<Self, ClickHouseConfigError> {
        identifier("database", &cfg.database)?;
        identifier("calls_table", &cfg.calls_table)?;
        identifier("sessions_table", &cfg.sessions_table)?;
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(ClickHouseConfigError::BadUrl(cfg.url.clone()));
        }
        let conn = super::http::connector(Duration::from_secs(cfg.timeout_secs.max(1)))
            .map_err(ClickHouseConfigError::Tls)?;
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        let mut admin = clickhouse::Client::with_http_client(http)
            .with_url(cfg.url.clone())
            .with_user(cfg.user.clone())
            .with_validation(cfg.validation);
        if let Some(p) = &cfg.password {
            admin = admin.with_password(p.clone());
        }
        let client = admin.clone().with_database(cfg.database.clone());
        Ok(Self {
            cfg: cfg.clone(),
            admin,
            client,
        })
    }
}

impl DestinationConfig for ClickHouseConfig {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built {
            destination: Box::new(ClickHouseDest::new(self)?),
            target: format!("{} database {}", self.url, self.database),
            spool_max_bytes: self.spool_max_bytes,
            batch_records: self.batch_rows,
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            deliver: true,
            track_agents: None,
            side_tasks: Vec::new(),
        })
    }
}

#[async_trait::async_trait]
impl Destination for ClickHouseDest {
    /// Creates the database and tables if absent, then adds the columns a table created by an
    /// older agentwatch lacks (plain `ADD COLUMN`: 18.16 has no `IF NOT EXISTS` there).
    async fn prepare(&mut self) -> Result<(), String> {
        for stmt in ddl(
            &self.cfg.database,
            &self.cfg.calls_table,
            &self.cfg.sessions_table,
        ) {
            self.admin
                .query(&stmt)
                .execute()
                .await
                .map_err(|e| format!("creating the schema ({}): {e}", first_line(&stmt)))?;
        }
        for (table, columns) in [
            (&self.cfg.calls_table, CALL_COLUMNS),
            (&self.cfg.sessions_table, SESSION_COLUMNS),
        ] {
            let have: Vec<String> = self
                .admin
                .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                .bind(self.cfg.database.as_str())
                .bind(table.as_str())
                .fetch_all::<String>()
                .await
                .map_err(|e| format!("reading the columns of {table}: {e}"))?;
            for stmt in missing_columns(&self.cfg.database, table, columns, &have) {
                self.admin
                    .query(&stmt)
                    .execute()
                    .await
                    .map_err(|e| format!("migrating the schema ({stmt}): {e}"))?;
            }
        }
        Ok(())
    }

    async fn check(&mut self) -> Result<(), String> {
        self.admin
            .query("SELECT 1")
            .fetch_all::<u8>()
            .await
            .map(|_| ())
            .map_err(|e| format!("SELECT 1 on {}: {e}", self.cfg.url))
    }

    async fn send(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        let calls: Vec<CallRow> = items
            .iter()
            .filter_map(|i| match i {
                ExportItem::Call(c) => Some(CallRow::from(&**c)),
                ExportItem::Session(_) => None,
            })
            .collect();
        let sessions: Vec<SessionRow> = items
            .iter()
            .filter_map(|i| match i {
                ExportItem::Session(s) => Some(SessionRow::from(&s.ledger)),
                ExportItem::Call(_) => None,
            })
            .collect();
        if !calls.is_empty() {
            insert(&self.client, &self.cfg.calls_table, &calls).await?;
        }
        if !sessions.is_empty() {
            insert(&self.client, &self.cfg.sessions_table, &sessions).await?;
        }
        Ok(())
    }
}

/// `ALTER TABLE ... ADD COLUMN` for each of `columns` not in `have`.
pub fn missing_columns(
    database: &str,
    table: &str,
    columns: &[(&str, &str)],
    have: &[String],
) -> Vec<String> {
    columns
        .iter()
        .filter(|(n, _)| !have.iter().any(|h| h == n))
        .map(|(n, t)| format!("ALTER TABLE `{database}`.`{table}` ADD COLUMN `{n}` {t}"))
        .collect()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

async fn insert<T>(
    client: &clickhouse::Client,
    table: &str,
    rows: &[T],
) -> Result<(), DeliveryError>
where
    T: clickhouse::Row + clickhouse::RowWrite + for<'a> clickhouse::Row<Value<'a> = T>,
{
    let what = |e: clickhouse::error::Error| {
        DeliveryError::from_clickhouse(format!("inserting {} rows into {table}: {e}", rows.len()))
    };
    let mut ins = client.insert::<T>(table).await.map_err(what)?;
    for r in rows {
        ins.write(r).await.map_err(what)?;
    }
    ins.end().await.map_err(what)
}
