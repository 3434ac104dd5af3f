//! Metrics: GenAI client instruments aggregated in memory from the rows the pipeline writes,
//! plus the daemon's own counters (drops, queue and spool depths, read from the status JSON),
//! exported over OTLP and, when enabled, served as Prometheus text on a loopback `/metrics`.
//!
//! Instruments (cumulative since the daemon started):
//! - `gen_ai.client.token.usage` histogram `{token}`, by `gen_ai.token.type` (input|output),
//!   `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.operation.name`;
//! - `gen_ai.client.operation.duration` histogram `s` (same attributes, plus `error.type`);
//! - `agentwatch.cost` sum `USD` by provider and model;
//! - `agentwatch.ceiling.hits` sum by `agentwatch.ceiling` and `agentwatch.ceiling.action`;
//! - `agentwatch.sessions.closed` sum by `agentwatch.outcome`;
//! - `agentwatch.sessions.drifted` sum by `agentwatch.drift.kind` (new tool, new host,
//!   tokens): closed runs of a recurring job that departed from its baseline;
//! - `agentwatch.daemon.*`: every number of `agentwatch status` (pipeline, capture, kernel
//!   drops, sinks' spools), e.g. `agentwatch.daemon.kernel_drops.ringbuf_full_events`; counts
//!   since the daemon started are monotonic sums (`…_total` in Prometheus form), states
//!   (depths, live counts, flags, times) are gauges.
//!
//! Label sets per instrument are bounded (`max_series`); more are dropped and counted in
//! `agentwatch.metrics.series_dropped`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
    metric, number_data_point,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spans::{kv_str, operation_name, provider_name, unix_nanos};
use crate::sessions::{CallRecord, CeilingHit, LedgerRow};

const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn record(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Debug, Default)]
struct State {
    tokens: BTreeMap<Labels, Hist>,
    duration: BTreeMap<Labels, Hist>,
    cost: BTreeMap<Labels, f64>,
    ceiling_hits: BTreeMap<Labels, u64>,
    sessions: BTreeMap<Labels, u64>,
    drifted: BTreeMap<Labels, u64>,
    root_cost: BTreeMap<Labels, f64>,
    notices: BTreeMap<Labels, u64>,
}

type DaemonSource = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

pub struct Metrics {
    state: Mutex<State>,
    max_series: usize,
    /// `k8s.pod.name` on spend (opt-in: pods churn, each one a new series).
    pod_label: bool,
    series_dropped: AtomicU64,
    start_unix_nanos: u64,
    daemon: Mutex<Option<DaemonSource>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn bump<'a, V>(
    map: &'a mut BTreeMap<Labels, V>,
    key: Labels,
    max: usize,
    dropped: &AtomicU64,
    init: impl FnOnce() -> V,
) -> Option<&'a mut V> {
    if !map.contains_key(&key) && map.len() >= max {
        dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(map.entry(key).or_insert_with(init))
}

impl Metrics {
    pub fn new(max_series: usize) -> Self {
        // Counters of rare events start at 0 for every label set they can have, so that the
        // first event is an increase a scraper sees (a series born at 1 is not one).
        let mut st = State::default();
        let actions = ["observe", "pause", "kill", "block"];
        let ceilings = [
            "session_usd",
            "session_tokens",
            "session_calls",
            "session_calls_per_minute",
            "max_depth",
            "host_usd_per_day",
            "budget_usd_per_day",
        ];
        let hits = ceilings
            .iter()
            .flat_map(|c| actions.iter().map(move |a| (*c, *a)))
            .chain([
                ("blocked", "block"),
                ("drift", "pause"),
                ("drift", "kill"),
                ("unpriced", "block"),
            ]);
        for (c, a) in hits {
            st.ceiling_hits.insert(
                vec![
                    ("agentwatch.ceiling", c.to_string()),
                    ("agentwatch.ceiling.action", a.to_string()),
                ],
                0,
            );
        }
        for o in ["completed", "killed", "paused", "blocked"] {
            st.sessions
                .insert(vec![("agentwatch.outcome", o.to_string())], 0);
        }
        for e in super::notify::EVENTS {
            st.notices
                .insert(vec![("agentwatch.notice.event", e.to_string())], 0);
        }
        for k in ["new tool", "new host", "tokens"] {
            st.drifted
                .insert(vec![("agentwatch.drift.kind", k.to_string())], 0);
        }
        Self {
            state: Mutex::new(st),
            max_series: max_series.max(1),
            pod_label: false,
            series_dropped: AtomicU64::new(0),
            start_unix_nanos: now_nanos(),
            daemon: Mutex::new(None),
        }
    }

    /// Spend also by pod (`[metrics] pod_label`).
    pub fn with_pod_label(mut self, on: bool) -> Self {
        self.pod_label = on;
        self
    }

    /// Where the daemon's own counters come from (the status JSON).
    pub fn set_daemon_source(&self, f: impl Fn() -> serde_json::Value + Send + Sync + 'static) {
        *self.daemon.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub fn series_dropped(&self) -> u64 {
        self.series_dropped.load(Ordering::Relaxed)
    }

    pub fn record_call(&self, c: &CallRecord) {
        let op = operation_name(&c.provider, &c.api);
        let mut base: Labels = vec![
            ("gen_ai.provider.name", provider_name(&c.provider)),
            ("gen_ai.request.model", c.model.clone().unwrap_or_default()),
            ("gen_ai.operation.name", op.to_string()),
        ];
        // The caller's Kubernetes namespace (none on the host): spend per team.
        if let Some(ns) = &c.workload.pod_namespace {
            base.push(("k8s.namespace.name", ns.clone()));
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let max = self.max_series;
        for (ty, n) in [("input", c.input_tokens), ("output", c.output_tokens)] {
            let mut l = base.clone();
            l.push(("gen_ai.token.type", ty.to_string()));
            if let Some(h) = bump(&mut st.tokens, l, max, &self.series_dropped, || {
                Hist::new(&TOKEN_BOUNDS)
            }) {
                h.record(&TOKEN_BOUNDS, n as f64);
            }
        }
        let mut l = base.clone();
        let error = match c.status {
            Some(s) if s >= 400 => s.to_string(),
            _ if !c.complete => "incomplete".to_string(),
            _ => String::new(),
        };
        if !error.is_empty() {
            l.push(("error.type", error));
        }
        let secs = unix_nanos(&c.ended_at).saturating_sub(unix_nanos(&c.started_at)) as f64 / 1e9;
        if let Some(h) = bump(&mut st.duration, l, max, &self.series_dropped, || {
            Hist::new(&DURATION_BOUNDS)
        }) {
            h.record(&DURATION_BOUNDS, secs);
        }
        if let Some(cost) = c.cost_usd {
            let mut l: Labels = base
                .iter()
                .filter(|(k, _)| *k != "gen_ai.operation.name")
                .cloned()
                .collect();
            if let Some(pod) = c.workload.pod_name.as_ref().filter(|_| self.pod_label) {
                l.push(("k8s.pod.name", pod.clone()));
            }
            if let Some(v) = bump(&mut st.cost, l, max, &self.series_dropped, || 0.0) {
                *v += cost;
            }
        }
    }

    pub fn record_notice(&self, n: &crate::sessions::Notice) {
        let l = vec![("agentwatch.notice.event", n.event.clone())];
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = bump(
            &mut st.notices,
            l,
            self.max_series,
            &self.series_dropped,
            || 0,
        ) {
            *v += 1;
        }
    }

    pub fn record_ceiling_hit(&self, h: &CeilingHit) {
        let l = vec![
            ("agentwatch.ceiling", h.ceiling.clone()),
            ("agentwatch.ceiling.action", h.action.clone()),
        ];
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = bump(
            &mut st.ceiling_hits,
            l,
            self.max_series,
            &self.series_dropped,
            || 0,
        ) {
            *v += 1;
        }
    }

    pub fn record_session(&self, r: &LedgerRow) {
        let outcome = serde_json::to_value(r.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l = vec![("agentwatch.outcome", outcome)];
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = bump(
            &mut st.sessions,
            l,
            self.max_series,
            &self.series_dropped,
            || 0,
        ) {
            *v += 1;
        }
        // Spend by the program that started the session (counted when it closes).
        let mut l = vec![("agentwatch.root", r.root_comm.clone())];
        if let Some(ns) = &r.workload.pod_namespace {
            l.push(("k8s.namespace.name", ns.clone()));
        }
        if let Some(pod) = r.workload.pod_name.as_ref().filter(|_| self.pod_label) {
            l.push(("k8s.pod.name", pod.clone()));
        }
        if let Some(v) = bump(
            &mut st.root_cost,
            l,
            self.max_series,
            &self.series_dropped,
            || 0.0,
        ) {
            *v += r.total_cost_usd;
        }
        let kinds: std::collections::BTreeSet<&str> = r
            .drift
            .iter()
            .map(|d| crate::sessions::drift::kind(d))
            .collect();
        for kind in kinds {
            let l = vec![("agentwatch.drift.kind", kind.to_string())];
            if let Some(v) = bump(
                &mut st.drifted,
                l,
                self.max_series,
                &self.series_dropped,
                || 0,
            ) {
                *v += 1;
            }
        }
    }

    /// The daemon's numbers as (dotted name, labels, value).
    fn daemon_gauges(&self) -> Vec<(String, Labels, f64)> {
        let v = match &*self.daemon.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(f) => f(),
            None => serde_json::Value::Null,
        };
        let mut out = Vec::new();
        flatten("agentwatch.daemon", &v, &Vec::new(), &mut out);
        out.push((
            "agentwatch.metrics.series_dropped".into(),
            Vec::new(),
            self.series_dropped() as f64,
        ));
        out
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP agentwatch_build_info The running agentwatch build (always 1)\n# TYPE agentwatch_build_info gauge\nagentwatch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        prom_hist(
            &mut out,
            "gen_ai_client_token_usage",
            "Tokens per call",
            &TOKEN_BOUNDS,
            &st.tokens,
        );
        prom_hist(
            &mut out,
            "gen_ai_client_operation_duration_seconds",
            "Call duration",
            &DURATION_BOUNDS,
            &st.duration,
        );
        prom_counter(
            &mut out,
            "agentwatch_cost_usd_total",
            "Cost of priced calls",
            &st.cost,
        );
        let hits: BTreeMap<Labels, f64> = st
            .ceiling_hits
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        prom_counter(
            &mut out,
            "agentwatch_ceiling_hits_total",
            "Ceiling hits",
            &hits,
        );
        let sess: BTreeMap<Labels, f64> = st
            .sessions
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        prom_counter(
            &mut out,
            "agentwatch_sessions_closed_total",
            "Sessions closed",
            &sess,
        );
        let drifted: BTreeMap<Labels, f64> = st
            .drifted
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        prom_counter(
            &mut out,
            "agentwatch_session_cost_usd_total",
            "Cost of closed sessions by the program that started them (counted at close)",
            &st.root_cost,
        );
        let notices: BTreeMap<Labels, f64> = st
            .notices
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        prom_counter(
            &mut out,
            "agentwatch_notices_total",
            "Notifications raised (warnings, stops, re-notices of paused sessions), by event",
            &notices,
        );
        prom_counter(
            &mut out,
            "agentwatch_sessions_drifted_total",
            "Closed runs of a recurring job that departed from its baseline, by what departed",
            &drifted,
        );
        drop(st);
        let gauges = self.daemon_gauges();
        // Every kernel bound's drops as one counter family, by bound (rates and alerts over
        // all of them in one expression).
        let _ = writeln!(
            out,
            "# HELP agentwatch_kernel_drops_total Events or bytes a kernel-side bound dropped (ring buffer, maps), by bound\n# TYPE agentwatch_kernel_drops_total counter"
        );
        for (name, _, v) in &gauges {
            if let Some(bound) = name.strip_prefix("agentwatch.daemon.kernel_drops.") {
                let _ = writeln!(
                    out,
                    "agentwatch_kernel_drops_total{} {}",
                    prom_labels(&vec![("bound", bound.to_string())], None),
                    prom_num(*v)
                );
            }
        }
        // Each status number under its own name: a counter (`_total`) unless it is a state.
        let mut by_name: BTreeMap<(String, bool), Vec<(Labels, f64)>> = BTreeMap::new();
        for (name, labels, v) in gauges {
            if name.starts_with("agentwatch.daemon.kernel_drops.") {
                continue;
            }
            let counter = is_counter(&name);
            let mut prom = prom_name(&name);
            if counter && !prom.ends_with("_total") {
                prom.push_str("_total");
            }
            by_name
                .entry((prom, counter))
                .or_default()
                .push((labels, v));
        }
        for ((name, counter), points) in by_name {
            let field = name
                .strip_prefix("agentwatch_daemon_")
                .unwrap_or(&name)
                .trim_end_matches("_total")
                .replace('_', " ");
            let (what, kind) = if counter {
                ("count since the daemon started", "counter")
            } else {
                ("state", "gauge")
            };
            let _ = writeln!(
                out,
                "# HELP {name} The daemon's own {what}: `agentwatch status` {field}\n# TYPE {name} {kind}"
            );
            for (labels, v) in points {
                let _ = writeln!(out, "{name}{} {}", prom_labels(&labels, None), prom_num(v));
            }
        }
        out
    }

    /// OTLP metrics (cumulative temporality).
    pub fn otlp(&self) -> Vec<Metric> {
        let now = now_nanos();
        let start = self.start_unix_nanos;
        let cum = AggregationTemporality::Cumulative as i32;
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let hist =
            |name: &str, unit: &str, desc: &str, bounds: &[f64], m: &BTreeMap<Labels, Hist>| {
                Metric {
                    name: name.into(),
                    unit: unit.into(),
                    description: desc.into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        aggregation_temporality: cum,
                        data_points: m
                            .iter()
                            .map(|(l, h)| HistogramDataPoint {
                                attributes: l.iter().map(|(k, v)| kv_str(k, v.clone())).collect(),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: h.count,
                                sum: Some(h.sum),
                                bucket_counts: h.counts.clone(),
                                explicit_bounds: bounds.to_vec(),
                                min: (h.count > 0).then_some(h.min),
                                max: (h.count > 0).then_some(h.max),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }
            };
        let sum = |name: &str,
                   unit: &str,
                   desc: &str,
                   pts: Vec<(Labels, number_data_point::Value)>| Metric {
            name: name.into(),
            unit: unit.into(),
            description: desc.into(),
            data: Some(metric::Data::Sum(Sum {
                aggregation_temporality: cum,
                is_monotonic: true,
                data_points: pts
                    .into_iter()
                    .map(|(l, v)| NumberDataPoint {
                        attributes: l.iter().map(|(k, v)| kv_str(k, v.clone())).collect(),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        value: Some(v),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        };
        let mut out = vec![
            hist(
                "gen_ai.client.token.usage",
                "{token}",
                "Number of input and output tokens used",
                &TOKEN_BOUNDS,
                &st.tokens,
            ),
            hist(
                "gen_ai.client.operation.duration",
                "s",
                "GenAI operation duration",
                &DURATION_BOUNDS,
                &st.duration,
            ),
            sum(
                "agentwatch.cost",
                "USD",
                "Cost of priced LLM calls",
                st.cost
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsDouble(*v)))
                    .collect(),
            ),
            sum(
                "agentwatch.ceiling.hits",
                "{hit}",
                "Ceiling hits",
                st.ceiling_hits
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsInt(*v as i64)))
                    .collect(),
            ),
            sum(
                "agentwatch.sessions.closed",
                "{session}",
                "Sessions closed",
                st.sessions
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsInt(*v as i64)))
                    .collect(),
            ),
            sum(
                "agentwatch.session.cost",
                "USD",
                "Cost of closed sessions by the program that started them",
                st.root_cost
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsDouble(*v)))
                    .collect(),
            ),
            sum(
                "agentwatch.notices",
                "{notice}",
                "Notifications raised, by event",
                st.notices
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsInt(*v as i64)))
                    .collect(),
            ),
            sum(
                "agentwatch.sessions.drifted",
                "{session}",
                "Closed runs of a recurring job that departed from its baseline",
                st.drifted
                    .iter()
                    .map(|(l, v)| (l.clone(), number_data_point::Value::AsInt(*v as i64)))
                    .collect(),
            ),
        ];
        drop(st);
        let mut by_name: BTreeMap<String, Vec<NumberDataPoint>> = BTreeMap::new();
        for (name, labels, v) in self.daemon_gauges() {
            let counter = is_counter(&name);
            by_name.entry(name).or_default().push(NumberDataPoint {
                attributes: labels.iter().map(|(k, v)| kv_str(k, v.clone())).collect(),
                start_time_unix_nano: if counter { start } else { 0 },
                time_unix_nano: now,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            });
        }
        for (name, pts) in by_name {
            // Counts since the daemon started are cumulative monotonic sums; states are gauges.
            let data = if is_counter(&name) {
                metric::Data::Sum(Sum {
                    aggregation_temporality: cum,
                    is_monotonic: true,
                    data_points: pts,
                })
            } else {
                metric::Data::Gauge(Gauge { data_points: pts })
            };
            out.push(Metric {
                name,
                data: Some(data),
                ..Default::default()
            });
        }
        out
    }
}

/// Status numbers that are a state (depths, sizes, live counts, flags, times, maxima) rather
/// than a count since the daemon started. Everything else in `agentwatch status` counts events,
/// so a new status counter is exported as a counter without being listed here.
const STATE_FIELDS: &[&str] = &[
    "ok",
    "ready",
    "now",
    "live",
    "live_sessions",
    "open_sessions",
    "connections_open",
    "pods",
    "held_sockets",
    "paused_sessions",
    "host_usd_last_24h",
    "last_hold_seconds",
    "max_hold_seconds",
    "depth_max_live",
    "indexed_agents",
    "job_baselines",
    "links_closing",
    "exited_kept",
    "on_probation",
    "kernel_log_readers",
    "ring_uncommitted_bytes",
    "rows_pending",
    "pending_rows",
    "pending_bytes",
    "max_bytes",
    "builtin_models",
    "file_models",
    "override_models",
    "file_entries_skipped",
    "highest_input_per_mtok",
    "highest_output_per_mtok",
];

/// Whether a dotted status number is a counter (exported as `…_total`, a monotonic sum).
fn is_counter(dotted: &str) -> bool {
    let leaf = dotted.rsplit('.').next().unwrap_or(dotted);
    !(STATE_FIELDS.contains(&leaf) || leaf.ends_with("_timestamp_seconds"))
}

/// Numbers of a JSON value as gauges; arrays of objects with a `name` become a `name` label.
fn flatten(
    prefix: &str,
    v: &serde_json::Value,
    labels: &Labels,
    out: &mut Vec<(String, Labels, f64)>,
) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((prefix.to_string(), labels.clone(), f));
            }
        }
        serde_json::Value::Bool(b) if prefix.ends_with(".ok") => {
            out.push((prefix.to_string(), labels.clone(), f64::from(u8::from(*b))));
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "uptime_secs" {
                    continue;
                }
                // A time (Unix seconds): exported as a timestamp when there is one.
                if let Some(stem) = k.strip_suffix("_unix") {
                    if let Some(t) = v.as_f64().filter(|t| *t > 0.0) {
                        out.push((
                            format!("{prefix}.{stem}_timestamp_seconds"),
                            labels.clone(),
                            t,
                        ));
                    }
                    continue;
                }
                // Durations in base units (seconds), as Prometheus names them.
                if let (Some(stem), Some(ms)) = (k.strip_suffix("_ms"), v.as_f64()) {
                    out.push((
                        format!("{prefix}.{stem}_seconds"),
                        labels.clone(),
                        ms / 1000.0,
                    ));
                    continue;
                }
                flatten(&format!("{prefix}.{k}"), v, labels, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                if let Some(name) = item.get("name").and_then(|n| n.as_str()) {
                    let mut l = labels.clone();
                    l.push(("name", name.to_string()));
                    flatten(prefix, item, &l, out);
                }
            }
        }
        _ => {}
    }
}

fn prom_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn prom_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{}=\"{v}\"", prom_name(k))
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn prom_num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn prom_hist(out: &mut String, name: &str, help: &str, bounds: &[f64], m: &BTreeMap<Labels, Hist>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (l, h) in m {
        let mut acc = 0;
        for (i, c) in h.counts.iter().enumerate() {
            acc += c;
            let le = bounds.get(i).map_or("+Inf".to_string(), |b| prom_num(*b));
            let _ = writeln!(out, "{name}_bucket{} {acc}", prom_labels(l, Some(&le)));
        }
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            prom_labels(l, None),
            prom_num(h.sum)
        );
        let _ = writeln!(out, "{name}_count{} {}", prom_labels(l, None), h.count);
    }
}

fn prom_counter(out: &mut String, name: &str, help: &str, m: &BTreeMap<Labels, f64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (l, v) in m {
        let _ = writeln!(out, "{name}{} {}", prom_labels(l, None), prom_num(*v));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on {addr} for /metrics: {source}; pick a free port in [metrics] listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the Prometheus endpoint and serves it on a task: loopback by default; a pod or node
/// address only when `[metrics] listen` says so (it serves counters, never prompts).
pub async fn serve_prometheus(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<SocketAddr, MetricsError> {
    if !addr.ip().is_loopback() {
        tracing::info!(
            "serving /metrics on {addr} (not loopback, as [metrics] listen says): anyone who can reach it reads the counters"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // One request per connection; the head must arrive within 5 s and 8 KiB.
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while n < buf.len() {
                        let m = conn.read(&mut buf[n..]).await?;
                        if m == 0 {
                            break;
                        }
                        n += m;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if head.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    let m = metrics.clone();
                    let body = tokio::task::spawn_blocking(move || m.prometheus())
                        .await
                        .unwrap_or_default();
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "only GET /metrics is served\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(local)
}
