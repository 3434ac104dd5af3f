//! The interface of a network destination (ClickHouse, OTLP, …), and how its refusals are read.
//!
//! A destination is built from its typed config ([`DestinationConfig`], one per `[sinks.*]`
//! table) and then only takes batches of spooled records ([`Destination::send`]), answers a
//! health check and keeps its own counters; the spool, the delivery loop, backoff, parking and
//! the shared status are the export side's (`sinks/export.rs`), which never names a concrete
//! destination. Adding one is a new file implementing both traits (and its `mod` line), plus
//! its `[sinks.*]` table in `SinksConfig` and its place in `SinksConfig::destinations`
//! (`sinks/config.rs`).
//!
//! An outage is waited out, a refusal of the batch itself is not (sending the same bytes again
//! cannot succeed): a permanent error parks the batch (its spooled records go to `parked.jsonl`
//! beside the spool, bounded, counted in status `parked_records`) and delivery moves on; a
//! retryable one keeps the batch in the spool and backs off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use super::spans::SessionClose;
use crate::sessions::CallRecord;

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "row", rename_all = "snake_case")]
pub enum ExportItem {
    Call(Box<CallRecord>),
    Session(Box<SessionClose>),
    /// A program a session's agent ran (`actions.jsonl`).
    ToolRun(Box<crate::sessions::actions::ToolRun>),
    /// A destination a session's processes connected to (`actions.jsonl`, kind `host`).
    Host(Box<crate::sessions::actions::HostContact>),
    /// A path a session's processes changed (`actions.jsonl`, kind `file`).
    File(Box<crate::sessions::actions::FileChange>),
    /// A notification (to the notification sinks only).
    Notice(Box<crate::sessions::Notice>),
}

/// Where a delivery task sends its batches. Calls come one at a time from the delivery loop,
/// each under its timeout.
#[async_trait::async_trait]
pub trait Destination: Send {
    /// Makes the destination ready for batches (ClickHouse: creates or migrates the schema).
    /// Called before the first batch and again after a retryable failure.
    async fn prepare(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Sends one batch; `Ok` once the destination acknowledged all of it.
    async fn send(&mut self, batch: &[ExportItem]) -> Result<(), DeliveryError>;

    /// A cheap request that tells whether the destination answers (every 10 s when idle).
    async fn check(&mut self) -> Result<(), String>;

    /// Its own counters, shown in status beside the delivery loop's and as metrics.
    fn counters(&self) -> Arc<dyn Counters> {
        Arc::new(NoCounters)
    }
}

/// A destination's own counters, read by `agentwatch status` while its task runs.
pub trait Counters: Send + Sync + std::fmt::Debug {
    /// `(name, value)` as `agentwatch status --json` shows them under the sink.
    fn fields(&self) -> Vec<(&'static str, u64)>;
}

#[derive(Debug)]
pub struct NoCounters;

impl Counters for NoCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// What a destination's config builds from, besides itself.
pub struct BuildContext {
    /// The machine's name (OTLP `host.name`).
    pub host: String,
    /// The metrics aggregated from the rows, when any exporter of them is on.
    pub metrics: Option<Arc<Metrics>>,
}

/// A task that runs beside the delivery loop (e.g. a periodic metrics export).
pub type SideTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A configured destination, ready to be spooled to and delivered.
pub struct Built {
    pub destination: Box<dyn Destination>,
    /// Where it sends, for status (`<url> database <db>`, `<endpoint> (grpc)`).
    pub target: String,
    /// Bound of its spool (`<data_dir>/spool/<name>`).
    pub spool_max_bytes: u64,
    /// Spooled records per batch at most.
    pub batch_records: usize,
    /// Per request.
    pub timeout: Duration,
    /// Rows are spooled and delivered (false: the destination only runs its side tasks).
    pub deliver: bool,
    /// Remember each open session's agents and ceiling hits (at most this many) so that its
    /// closing record carries them (OTLP's agent spans); `None`: the ledger row is enough.
    pub track_agents: Option<usize>,
    /// It takes notifications instead of rows (`[sinks.webhook]`, …).
    pub notices: bool,
    pub side_tasks: Vec<SideTask>,
}

/// A `[sinks.*]` table: names its destination and builds it (Vector's sink config).
pub trait DestinationConfig {
    /// The sink's name in status and its spool directory.
    fn name(&self) -> &'static str;

    /// Whether it exports the aggregated metrics (they are then kept).
    fn wants_metrics(&self) -> bool {
        false
    }

    /// Checks the config and builds the destination; no network yet (a destination that is
    /// down at start is waited for by its delivery task).
    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError>;
}

/// A config the destination refused (its message names the key).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The destination is down, slow, overloaded or refusing us for now: send it again later.
    #[error("{0}")]
    Retryable(String),
    /// The destination refused this batch as it is (a malformed request, a schema mismatch):
    /// sending it again cannot succeed.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent(_))
    }

    /// An HTTP answer, as OTLP/HTTP defines retries: 429, 502, 503 and 504 are retryable, and
    /// so is anything else that is not a client error (5xx: the server's trouble, not the
    /// batch's); other 4xx (400 Bad Request above all) are permanent, except 401/403/404/407/
    /// 408 (credentials, a wrong endpoint path and timeouts are fixed outside the batch: its
    /// records wait in the spool meanwhile).
    pub fn from_http_status(code: u16, message: String) -> DeliveryError {
        match code {
            401 | 403 | 404 | 407 | 408 | 429 => DeliveryError::Retryable(message),
            400..=499 => DeliveryError::Permanent(message),
            _ => DeliveryError::Retryable(message),
        }
    }

    /// A gRPC status: only the codes that blame the request itself are permanent
    /// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNIMPLEMENTED).
    /// Everything else is retried: OTLP's retryable codes, and also UNKNOWN and INTERNAL
    /// (a transport failure or a collector's own trouble can come as either) and
    /// UNAUTHENTICATED / PERMISSION_DENIED (fixed outside the batch).
    pub fn from_grpc_code(code: i32, message: String) -> DeliveryError {
        match code {
            3 | 5 | 6 | 9 | 12 => DeliveryError::Permanent(message),
            _ => DeliveryError::Retryable(message),
        }
    }

    /// A ClickHouse error: an exception whose code says the rows or the statement are wrong
    /// (types, columns, parsing) is permanent; anything else (connection, timeout, missing
    /// table or database, which the schema step creates again, authentication) is retryable.
    pub fn from_clickhouse(text: String) -> DeliveryError {
        // "Code: 16. DB::Exception: …"
        let code = text
            .split("Code: ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse::<u32>().ok());
        const PERMANENT: [u32; 16] = [
            6,   // CANNOT_PARSE_TEXT
            8,   // THERE_IS_NO_COLUMN
            10,  // NOT_FOUND_COLUMN_IN_BLOCK
            16,  // NO_SUCH_COLUMN_IN_TABLE
            26,  // CANNOT_PARSE_QUOTED_STRING
            27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
            33,  // CANNOT_READ_ALL_DATA
            36,  // BAD_ARGUMENTS
            38,  // CANNOT_PARSE_DATE
            41,  // CANNOT_PARSE_DATETIME
            47,  // UNKNOWN_IDENTIFIER
            53,  // TYPE_MISMATCH
            62,  // SYNTAX_ERROR
            70,  // CANNOT_CONVERT_TYPE
            117, // INCORRECT_DATA
            131, // TOO_LARGE_STRING_SIZE
        ];
        match code {
            Some(c) if PERMANENT.contains(&c) => DeliveryError::Permanent(text),
            _ => DeliveryError::Retryable(text),
        }
    }
}

/// At most this much of parked records is kept beside a spool; beyond, they are counted only.
pub const PARKED_MAX_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_follow_otlp() {
        for (code, permanent) in [
            (400, true),
            (404, false),
            (413, true),
            (401, false),
            (408, false),
            (429, false),
            (500, false),
            (502, false),
            (503, false),
            (504, false),
        ] {
            assert_eq!(
                DeliveryError::from_http_status(code, String::new()).is_permanent(),
                permanent,
                "HTTP {code}"
            );
        }
    }

    #[test]
    fn grpc_codes_follow_otlp() {
        // INVALID_ARGUMENT, UNIMPLEMENTED permanent; UNAVAILABLE, DEADLINE_EXCEEDED,
        // RESOURCE_EXHAUSTED, UNKNOWN, INTERNAL retried.
        for (code, permanent) in [
            (3, true),
            (12, true),
            (14, false),
            (4, false),
            (8, false),
            (2, false),
            (13, false),
        ] {
            assert_eq!(
                DeliveryError::from_grpc_code(code, String::new()).is_permanent(),
                permanent,
                "gRPC code {code}"
            );
        }
    }

    #[test]
    fn clickhouse_exceptions_by_code() {
        let e = |t: &str| DeliveryError::from_clickhouse(t.to_string()).is_permanent();
        assert!(e(
            "bad response: Code: 16. DB::Exception: No such column started_ns in table agentwatch.calls"
        ));
        assert!(e("Code: 53. DB::Exception: Type mismatch"));
        assert!(!e(
            "Code: 60. DB::Exception: Table agentwatch.calls does not exist"
        ));
        assert!(!e("Code: 516. DB::Exception: Authentication failed"));
        assert!(!e("network error: connection refused"));
        assert!(!e("timed out"));
    }
}
