//! The fan-out sink and the delivery loop shared by the network destinations.
//!
//! [`Fanout`] is what the event pipeline holds: it writes JSONL (the embedded default, durable)
//! and appends each row to the spool of every enabled network sink (local disk only: the
//! pipeline never waits on the network). One delivery task per sink ([`run_delivery`]) reads
//! batches from its spool, hands them to its [`Destination`] (never a concrete type: see
//! [`super::destination`]), and commits the spool cursor only once the destination acknowledged
//! them; a retryable failure backs off (0.5 s doubling to 30 s) and is retried, a permanent one
//! parks the batch. While idle, the task checks its destination every 10 s (the health shown in
//! `agentwatch status`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::destination::{Counters, DeliveryError, Destination, ExportItem, NoCounters};
use super::metrics::Metrics;
use super::spans::{AgentSummary, SessionClose};
use super::spool::Spool;
use super::{JsonlSink, Sink, SinkError, SinkHealth};
use crate::sessions::{CallRecord, CeilingHit, LedgerRow, RecoveredSessions};

/// Live state of one network sink (shared by the pipeline side, its task and `status`): what
/// the delivery loop counts for every destination, plus the destination's own [`Counters`].
#[derive(Debug)]
pub struct DestStatus {
    pub name: &'static str,
    pub target: String,
    pub spool: Arc<Spool>,
    pub notify: Notify,
    /// The last request (delivery or health check) succeeded.
    pub ok: AtomicBool,
    /// Schema created (ClickHouse) / first contact made.
    pub ready: AtomicBool,
    pub delivered_records: AtomicU64,
    pub delivered_batches: AtomicU64,
    pub failed_requests: AtomicU64,
    /// Spool records that could not be decoded (skipped).
    pub bad_records: AtomicU64,
    /// Agents or ceiling hits not remembered for agent spans (over the per-session bound).
    pub tracker_dropped: AtomicU64,
    /// Records of batches the destination refused for good (a permanent error: not retried),
    /// kept in `parked.jsonl` beside the spool; beyond its bound, counted only.
    pub parked_records: AtomicU64,
    pub parked_over_cap: AtomicU64,
    pub last_permanent_error: Mutex<Option<String>>,
    pub last_success_unix: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// The destination's own (e.g. OTLP's spans sent).
    pub counters: Arc<dyn Counters>,
}

impl DestStatus {
    pub fn new(name: &'static str, target: String, spool: Arc<Spool>) -> Self {
        Self {
            name,
            target,
            spool,
            notify: Notify::new(),
            ok: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            delivered_records: AtomicU64::new(0),
            delivered_batches: AtomicU64::new(0),
            failed_requests: AtomicU64::new(0),
            bad_records: AtomicU64::new(0),
            tracker_dropped: AtomicU64::new(0),
            parked_records: AtomicU64::new(0),
            parked_over_cap: AtomicU64::new(0),
            last_permanent_error: Mutex::new(None),
            last_success_unix: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters: Arc::new(NoCounters),
        }
    }

    pub fn with_counters(mut self, counters: Arc<dyn Counters>) -> Self {
        self.counters = counters;
        self
    }

    pub fn success(&self) {
        self.ok.store(true, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_success_unix.store(now, Ordering::Relaxed);
    }

    pub fn failure(&self, what: &str, err: &str) {
        let was_ok = self.ok.swap(false, Ordering::Relaxed);
        self.failed_requests.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{what}: {err}");
        let changed = {
            let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
            let changed = last.as_deref() != Some(msg.as_str());
            *last = Some(msg.clone());
            changed
        };
        if was_ok || changed {
            tracing::warn!(sink = self.name, target = %self.target, "{msg}; rows stay spooled and are retried");
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| serde_json::Value::from(a.load(Ordering::Relaxed));
        let text = |m: &Mutex<Option<String>>| {
            serde_json::Value::from(m.lock().unwrap_or_else(|e| e.into_inner()).clone())
        };
        let mut out = serde_json::Map::new();
        for (k, v) in [
            ("name", self.name.into()),
            ("target", self.target.clone().into()),
            ("ok", self.ok.load(Ordering::Relaxed).into()),
            ("ready", self.ready.load(Ordering::Relaxed).into()),
            ("delivered_records", n(&self.delivered_records)),
            ("delivered_batches", n(&self.delivered_batches)),
            ("failed_requests", n(&self.failed_requests)),
            ("bad_records", n(&self.bad_records)),
            ("tracker_dropped", n(&self.tracker_dropped)),
            ("parked_records", n(&self.parked_records)),
            ("parked_over_cap", n(&self.parked_over_cap)),
            ("last_permanent_error", text(&self.last_permanent_error)),
            ("last_success_unix", n(&self.last_success_unix)),
            ("last_error", text(&self.last_error)),
            (
                "spool",
                serde_json::to_value(self.spool.stats()).unwrap_or_default(),
            ),
        ] {
            out.insert(k.to_string(), v);
        }
        for (k, v) in self.counters.fields() {
            out.insert(k.to_string(), v.into());
        }
        serde_json::Value::Object(out)
    }
}

/// Handle kept by the daemon for `status` and metrics.
#[derive(Debug, Clone, Default)]
pub struct ExportHandle {
    pub dests: Vec<Arc<DestStatus>>,
    pub metrics: Option<Arc<Metrics>>,
}

impl ExportHandle {
    /// `status.sinks`: JSONL is reported by the pipeline; this lists the network sinks.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.dests.iter().map(|d| d.to_json()).collect())
    }
}

/// Per open session: its agents and ceiling hits, for the agent spans at close.
#[derive(Debug, Default)]
pub struct AgentTracker {
    sessions: HashMap<String, Tracked>,
    max_per_session: usize,
    max_sessions: usize,
}

#[derive(Debug, Default)]
struct Tracked {
    agents: Vec<AgentSummary>,
    hits: Vec<CeilingHit>,
    dropped: u64,
}

impl AgentTracker {
    pub fn new(max_per_session: usize) -> Self {
        Self {
            sessions: HashMap::new(),
            max_per_session: max_per_session.max(1),
            max_sessions: 100_000,
        }
    }

    /// Returns how many entries were dropped for the bounds (0 or 1).
    pub fn observe(&mut self, c: &CallRecord) -> u64 {
        if !self.sessions.contains_key(&c.session_id) && self.sessions.len() >= self.max_sessions {
            return 1;
        }
        let t = self.sessions.entry(c.session_id.clone()).or_default();
        if let Some(a) = t
            .agents
            .iter_mut()
            .find(|a| a.pid == c.pid && a.pid_start_ticks == c.pid_start_ticks)
        {
            a.add(c);
            return 0;
        }
        if t.agents.len() >= self.max_per_session {
            t.dropped += 1;
            return 1;
        }
        t.agents.push(AgentSummary::from_call(c));
        0
    }

    pub fn hit(&mut self, h: &CeilingHit) -> u64 {
        if !self.sessions.contains_key(&h.session_id) && self.sessions.len() >= self.max_sessions {
            return 1;
        }
        let t = self.sessions.entry(h.session_id.clone()).or_default();
        if t.hits.len() >= self.max_per_session {
            t.dropped += 1;
            return 1;
        }
        t.hits.push(h.clone());
        0
    }

    pub fn close(&mut self, row: &LedgerRow) -> SessionClose {
        let t = self.sessions.remove(&row.session_id).unwrap_or_default();
        SessionClose {
            ledger: row.clone(),
            agents: t.agents,
            ceiling_hits: t.hits,
            dropped: t.dropped,
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// The pipeline-side half of a network sink.
#[derive(Debug)]
pub struct SpoolWriter {
    pub status: Arc<DestStatus>,
    /// Agent spans need the session's agents (OTLP); ClickHouse only needs the ledger row.
    pub tracker: Option<AgentTracker>,
    /// A notification sink: it takes notices, not rows.
    notices: bool,
    /// Append failures are logged once per this many.
    logged_failures: u64,
}

impl SpoolWriter {
    pub fn new(status: Arc<DestStatus>, tracker: Option<AgentTracker>) -> Self {
        Self {
            status,
            tracker,
            notices: false,
            logged_failures: 0,
        }
    }

    /// A notification sink's writer: notices only.
    pub fn for_notices(status: Arc<DestStatus>) -> Self {
        Self {
            notices: true,
            ..Self::new(status, None)
        }
    }

    pub fn notice(&mut self, n: &crate::sessions::Notice) {
        if self.notices {
            self.push(&ExportItem::Notice(Box::new(n.clone())));
        }
    }

    fn push(&mut self, item: &ExportItem) {
        let bytes = match serde_json::to_vec(item) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    sink = self.status.name,
                    "cannot serialize a spool record: {e}; this is a bug, please report it"
                );
                return;
            }
        };
        match self.status.spool.append(&bytes) {
            Ok(()) => self.status.notify.notify_one(),
            Err(e) => {
                // Counted by the spool (overflow_rows / write_errors); log the first and then
                // every 1,000th.
                if self.logged_failures.is_multiple_of(1000) {
                    tracing::warn!(sink = self.status.name, "{e}");
                }
                self.logged_failures += 1;
            }
        }
    }

    pub fn call(&mut self, c: &CallRecord) {
        if self.notices {
            return;
        }
        if let Some(t) = &mut self.tracker {
            let d = t.observe(c);
            self.status.tracker_dropped.fetch_add(d, Ordering::Relaxed);
        }
        self.push(&ExportItem::Call(Box::new(c.clone())));
    }

    pub fn ledger(&mut self, row: &LedgerRow) {
        if self.notices {
            return;
        }
        let close = match &mut self.tracker {
            Some(t) => t.close(row),
            None => SessionClose {
                ledger: row.clone(),
                agents: Vec::new(),
                ceiling_hits: Vec::new(),
                dropped: 0,
            },
        };
        self.push(&ExportItem::Session(Box::new(close)));
    }

    pub fn action(&mut self, row: &crate::sessions::actions::ActionRow) {
        if self.notices {
            return;
        }
        match row {
            crate::sessions::actions::ActionRow::ToolRun(t) => {
                self.push(&ExportItem::ToolRun(Box::new(t.clone())))
            }
            // Rows only: a span sink (it tracks sessions' agents) has no span for a host.
            crate::sessions::actions::ActionRow::Host(h) => {
                if self.tracker.is_none() {
                    self.push(&ExportItem::Host(Box::new(h.clone())))
                }
            }
            crate::sessions::actions::ActionRow::File(f) => {
                if self.tracker.is_none() {
                    self.push(&ExportItem::File(Box::new(f.clone())))
                }
            }
        }
    }

    pub fn ceiling_hit(&mut self, h: &CeilingHit) {
        if let Some(t) = &mut self.tracker {
            let d = t.hit(h);
            self.status.tracker_dropped.fetch_add(d, Ordering::Relaxed);
        }
    }
}

/// JSONL plus every enabled network sink.
#[derive(Debug)]
pub struct Fanout {
    pub jsonl: JsonlSink,
    pub writers: Vec<SpoolWriter>,
    pub metrics: Option<Arc<Metrics>>,
}

impl Fanout {
    /// Teaches the agent trackers the sessions that were open when the daemon last stopped
    /// (their calls were spooled by the previous run), so their agent spans are complete.
    /// Call before writing the ledger rows `Sessions::restore` returns.
    pub fn seed(&mut self, recovered: &RecoveredSessions) {
        for w in &mut self.writers {
            if let Some(t) = &mut w.tracker {
                for (_, calls) in &recovered.open {
                    for c in calls {
                        t.observe(c);
                    }
                }
            }
        }
    }
}

impl Sink for Fanout {
    fn write_call(&mut self, call: &CallRecord) -> Result<(), SinkError> {
        let r = self.jsonl.write_call(call);
        for w in &mut self.writers {
            w.call(call);
        }
        if let Some(m) = &self.metrics {
            m.record_call(call);
        }
        r
    }

    fn write_ledger(&mut self, row: &LedgerRow) -> Result<(), SinkError> {
        let r = self.jsonl.write_ledger(row);
        for w in &mut self.writers {
            w.ledger(row);
        }
        if let Some(m) = &self.metrics {
            m.record_session(row);
        }
        r
    }

    fn write_ceiling_hit(&mut self, hit: &CeilingHit) -> Result<(), SinkError> {
        let r = self.jsonl.write_ceiling_hit(hit);
        for w in &mut self.writers {
            w.ceiling_hit(hit);
        }
        if let Some(m) = &self.metrics {
            m.record_ceiling_hit(hit);
        }
        // Every hit is also a notification.
        let _ = self.write_notice(&crate::sessions::Notice::of_hit(hit));
        r
    }

    fn write_notice(&mut self, n: &crate::sessions::Notice) -> Result<(), SinkError> {
        for w in &mut self.writers {
            w.notice(n);
        }
        if let Some(m) = &self.metrics {
            m.record_notice(n);
        }
        Ok(())
    }

    fn write_action(&mut self, row: &crate::sessions::actions::ActionRow) -> Result<(), SinkError> {
        let r = self.jsonl.write_action(row);
        for w in &mut self.writers {
            w.action(row);
        }
        r
    }

    fn health(&self) -> SinkHealth {
        self.jsonl.health()
    }

    fn retry(&mut self) {
        self.jsonl.retry();
    }
}

const HEALTH_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Delivers `status.spool` to `dest` forever (spawn it).
pub async fn run_delivery(
    mut dest: Box<dyn Destination>,
    status: Arc<DestStatus>,
    batch_records: usize,
    timeout: Duration,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_check = tokio::time::Instant::now();
    let fail_wait = |backoff: &mut Duration| {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        tokio::time::sleep(wait)
    };
    loop {
        if !status.ready.load(Ordering::Relaxed) {
            match tokio::time::timeout(timeout, dest.prepare()).await {
                Ok(Ok(())) => {
                    status.ready.store(true, Ordering::Relaxed);
                    status.success();
                    backoff = BACKOFF_MIN;
                }
                Ok(Err(e)) => {
                    status.failure("preparing the destination", &e);
                    fail_wait(&mut backoff).await;
                    continue;
                }
                Err(_) => {
                    status.failure("preparing the destination", "timed out");
                    fail_wait(&mut backoff).await;
                    continue;
                }
            }
        }
        let spool = status.spool.clone();
        let batch = match tokio::task::spawn_blocking(move || {
            spool.read_batch(batch_records.max(1), 32 << 20)
        })
        .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                status.failure("reading the spool", &e.to_string());
                fail_wait(&mut backoff).await;
                continue;
            }
            Err(e) => {
                status.failure("reading the spool", &e.to_string());
                fail_wait(&mut backoff).await;
                continue;
            }
        };
        if batch.records.is_empty() {
            // The cursor may have moved past an exhausted segment: persist that.
            let _ = status.spool.commit(&batch);
            let since = last_check.elapsed();
            if since >= HEALTH_EVERY {
                last_check = tokio::time::Instant::now();
                match tokio::time::timeout(timeout, dest.check()).await {
                    Ok(Ok(())) => status.success(),
                    Ok(Err(e)) => status.failure("health check", &e),
                    Err(_) => status.failure("health check", "timed out"),
                }
                continue;
            }
            tokio::select! {
                _ = status.notify.notified() => {}
                _ = tokio::time::sleep(HEALTH_EVERY - since) => {}
            }
            continue;
        }
        let mut items = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            match serde_json::from_slice::<ExportItem>(r) {
                Ok(i) => items.push(i),
                Err(_) => {
                    status.bad_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let sent = if items.is_empty() {
            Ok(Ok(()))
        } else {
            tokio::time::timeout(timeout, dest.send(&items)).await
        };
        match sent {
            Ok(Ok(())) => {
                let spool = status.spool.clone();
                let b = batch.clone();
                match tokio::task::spawn_blocking(move || spool.commit(&b)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => status.failure("committing the spool cursor", &e.to_string()),
                    Err(e) => status.failure("committing the spool cursor", &e.to_string()),
                }
                status
                    .delivered_records
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                status.delivered_batches.fetch_add(1, Ordering::Relaxed);
                status.success();
                last_check = tokio::time::Instant::now();
                backoff = BACKOFF_MIN;
            }
            Ok(Err(DeliveryError::Permanent(e))) => {
                // Sending these bytes again cannot succeed: park them and go on.
                let spool = status.spool.clone();
                let b = batch.clone();
                let parked = tokio::task::spawn_blocking(move || {
                    let kept = park(spool.dir(), &b.records);
                    (kept, spool.commit(&b))
                })
                .await;
                let n = batch.records.len() as u64;
                match parked {
                    Ok((kept, Ok(()))) => {
                        status.parked_records.fetch_add(n, Ordering::Relaxed);
                        if !kept {
                            status.parked_over_cap.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    Ok((_, Err(e))) => {
                        status.failure("committing the spool cursor", &e.to_string())
                    }
                    Err(e) => status.failure("parking a batch", &e.to_string()),
                }
                tracing::error!(
                    sink = status.name,
                    target = %status.target,
                    records = n,
                    "{e}; the destination refused this batch for good: parked in parked.jsonl beside the spool, not retried"
                );
                *status
                    .last_permanent_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e);
                status.failed_requests.fetch_add(1, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
            }
            Ok(Err(DeliveryError::Retryable(e))) => {
                status.failure("delivering a batch", &e);
                // A table or database gone is made again by the schema step.
                status.ready.store(false, Ordering::Relaxed);
                fail_wait(&mut backoff).await;
            }
            Err(_) => {
                status.failure(
                    "delivering a batch",
                    &format!("timed out after {timeout:?}"),
                );
                fail_wait(&mut backoff).await;
            }
        }
    }
}

/// Appends refused records to `parked.jsonl` in `dir` (one per line), while it is under
/// `PARKED_MAX_BYTES`. Returns whether they were kept.
fn park(dir: &std::path::Path, records: &[Vec<u8>]) -> bool {
    use std::io::Write;
    let path = dir.join("parked.jsonl");
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let bytes: u64 = records.iter().map(|r| r.len() as u64 + 1).sum();
    if size + bytes > super::destination::PARKED_MAX_BYTES {
        return false;
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    else {
        return false;
    };
    let mut buf = Vec::with_capacity(bytes as usize);
    for r in records {
        buf.extend_from_slice(r);
        buf.push(b'\n');
    }
    f.write_all(&buf).is_ok()
}
