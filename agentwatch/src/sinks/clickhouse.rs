//! The ClickHouse sink: three tables, created if absent, with the columns of `calls.jsonl` and
//! `ledger.jsonl` (same names), filled by batched RowBinary inserts over HTTP.
//!
//! The columns of both are declared once, with the JSONL rows, in `sessions/rows.rs`
//! ([`CallRecord::COLUMNS`], [`CallRow`]; [`LedgerRow::COLUMNS`], [`SessionRow`]).
//!
//! - `<database>.<calls_table>` (default `agentwatch.calls`): one row per call,
//!   `ReplacingMergeTree ORDER BY (session_id, call_seq)`; `call_id` (`<session_id>:<call_seq>`)
//!   is the stable call id.
//! - `<database>.<sessions_table>` (default `agentwatch.sessions`): one row per closed session,
//!   `ReplacingMergeTree ORDER BY session_id`.
//! - `<database>.<actions_table>` (default `agentwatch.actions`): one row per tool run, per
//!   host and per file path (`actions.jsonl`; `kind` says which, `address`/`port` are a
//!   host's, `path` and the counts a file's, whose path is its `address` too: the key),
//!   `ReplacingMergeTree ORDER BY (session_id, kind, pid, pid_start_ticks, address, port)`.
//!
//! A batch re-sent after a lost acknowledgement (or a daemon crash before the spool cursor
//! moved) inserts identical rows with the same key: read with `FINAL` (or after `OPTIMIZE ...
//! FINAL`) to see each exactly once. The DDL uses only what ClickHouse 18.16 and current
//! servers both accept (no DateTime64, Bool, LowCardinality, TTL, CODEC): timestamps are the
//! RFC 3339 strings of the JSONL files, booleans UInt8, cost Float64.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use super::config::ClickHouseConfig;
use super::destination::{
    BuildContext, BuildError, Built, DeliveryError, Destination, DestinationConfig, ExportItem,
};
use crate::sessions::actions::{ToolRun, ToolRunRow};
use crate::sessions::{CallRecord, LedgerRow};
pub use crate::sessions::{CallRow, SessionRow};

/// The tables' columns, declared once with their rows in `sessions/rows.rs`.
pub const CALL_COLUMNS: &[(&str, &str)] = CallRecord::COLUMNS;
pub const SESSION_COLUMNS: &[(&str, &str)] = LedgerRow::COLUMNS;
pub const ACTION_COLUMNS: &[(&str, &str)] = ToolRun::COLUMNS;

/// `CREATE DATABASE` and the three `CREATE TABLE` statements.
pub fn ddl(
    database: &str,
    calls_table: &str,
    sessions_table: &str,
    actions_table: &str,
) -> Vec<String> {
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
        format!(
            "CREATE TABLE IF NOT EXISTS `{database}`.`{actions_table}` (\n{}\n) ENGINE = ReplacingMergeTree() ORDER BY (session_id, kind, pid, pid_start_ticks, address, port)",
            cols(ACTION_COLUMNS)
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
        identifier("actions_table", &cfg.actions_table)?;
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

/// The other nodes' spend of cluster budgets, read from the calls table every `every` and
/// handed to the gate (`policy::ClusterSpend`). Runs until the daemon stops. The lag bound is
/// `every` plus the other nodes' delivery delay (their spools flush within seconds when
/// ClickHouse is up); while ClickHouse is unreachable the last read stays, and this node's own
/// spend since is counted locally.
pub async fn read_cluster_budgets(
    cfg: ClickHouseConfig,
    host: String,
    budgets: Vec<String>,
    spend: std::sync::Arc<crate::policy::ClusterSpend>,
    every: Duration,
) {
    let dest = match ClickHouseDest::new(&cfg) {
        Ok(d) => d,
        Err(e) => {
            for b in &budgets {
                spend.record(b, Err(e.to_string()), 0);
            }
            return;
        }
    };
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let since =
            crate::sessions::clock::format_unix_ns(now.as_nanos() as i128 - 86_400 * 1_000_000_000);
        for b in &budgets {
            // Rows of a re-sent batch are replaced at merge time: FINAL counts each call once.
            let stmt = format!(
                "SELECT toFloat64(sum(ifNull(cost_usd, ifNull(unpriced_charge_usd, 0)))) FROM `{}`.`{}` FINAL \
                 WHERE budget = ? AND host != ? AND ended_at >= ? AND blocked = 0",
                cfg.database, cfg.calls_table
            );
            let q = dest
                .admin
                .query(&stmt)
                .bind(b.as_str())
                .bind(host.as_str())
                .bind(since.as_str())
                .fetch_one::<f64>();
            let result = match tokio::time::timeout(timeout, q).await {
                Ok(Ok(usd)) => Ok(usd),
                Ok(Err(e)) => Err(format!("reading budget {b} from {}: {e}", cfg.url)),
                Err(_) => Err(format!("reading budget {b} from {}: timed out", cfg.url)),
            };
            if let Err(e) = &result {
                tracing::warn!("{e}; the last read stays in force");
            }
            spend.record(b, result, now.as_secs());
        }
        tokio::time::sleep(every).await;
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
            notices: false,
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
            &self.cfg.actions_table,
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
            (&self.cfg.actions_table, ACTION_COLUMNS),
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
                _ => None,
            })
            .collect();
        let sessions: Vec<SessionRow> = items
            .iter()
            .filter_map(|i| match i {
                ExportItem::Session(s) => Some(SessionRow::from(&s.ledger)),
                _ => None,
            })
            .collect();
        let actions: Vec<ToolRunRow> = items
            .iter()
            .filter_map(|i| match i {
                ExportItem::ToolRun(t) => Some(ToolRunRow::from(&**t)),
                ExportItem::Host(h) => Some(ToolRunRow::from(&**h)),
                ExportItem::File(f) => Some(ToolRunRow::from(&**f)),
                _ => None,
            })
            .collect();
        if !calls.is_empty() {
            insert(&self.client, &self.cfg.calls_table, &calls).await?;
        }
        if !sessions.is_empty() {
            insert(&self.client, &self.cfg.sessions_table, &sessions).await?;
        }
        if !actions.is_empty() {
            insert(&self.client, &self.cfg.actions_table, &actions).await?;
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
