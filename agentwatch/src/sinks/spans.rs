//! OTLP spans from calls and closed sessions (OpenTelemetry GenAI semantic conventions).
//!
//! One trace per session: the trace id is the 16 bytes of the 32-hex session id. Span ids are
//! deterministic (a re-sent batch carries the same ids):
//! - agent span: `sha256("agent:{session}:{pid}:{start_ticks}")[..8]`; the root agent's uses
//!   `root_pid`/`root_start_ticks`, so it is the same whichever row names it;
//! - call span: `sha256("call:{session}:{call_seq}")[..8]`.
//!
//! Call spans (`{gen_ai.operation.name} {gen_ai.request.model}`, kind CLIENT) are emitted as the
//! calls finish, each a child of its agent's span. Agent spans (`invoke_agent {comm}`) are
//! emitted when the session closes (from its ledger row and the agents seen in its calls): the
//! root's spans the session (first call start → close), a sub-agent's spans its own calls (first
//! start → last end) and is a child of its parent agent's span. Ceiling hits are events on the
//! span of the agent whose call hit them. A tool run (`execute_tool {tool}`, kind INTERNAL) is
//! emitted as it exits, a child of the span of the agent it ran under; its id is
//! `sha256("tool:{session}:{pid}:{start_ticks}")[..8]`. No prompt, completion or command line
//! is exported.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sessions::actions::ToolRun;
use crate::sessions::{CallRecord, CeilingHit, LedgerRow};

pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.42.0";

/// An agent of a session, summarized from its calls (for its `invoke_agent` span).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSummary {
    pub pid: u32,
    pub pid_start_ticks: u64,
    pub parent_pid: Option<u32>,
    pub parent_start_ticks: Option<u64>,
    pub depth: u32,
    pub comm: String,
    pub started_at: String,
    pub ended_at: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl AgentSummary {
    pub fn from_call(c: &CallRecord) -> Self {
        let mut a = AgentSummary {
            pid: c.pid,
            pid_start_ticks: c.pid_start_ticks,
            parent_pid: c.parent_pid,
            parent_start_ticks: c.parent_start_ticks,
            depth: c.depth,
            comm: c.comm.clone(),
            started_at: c.started_at.clone(),
            ended_at: c.ended_at.clone(),
            calls: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
        };
        a.add(c);
        a
    }

    pub fn add(&mut self, c: &CallRecord) {
        if self.calls > 0 {
            if unix_nanos(&c.started_at) < unix_nanos(&self.started_at) {
                self.started_at = c.started_at.clone();
            }
            if unix_nanos(&c.ended_at) > unix_nanos(&self.ended_at) {
                self.ended_at = c.ended_at.clone();
            }
        }
        self.calls += 1;
        self.input_tokens += c.input_tokens;
        self.output_tokens += c.output_tokens;
        self.cost_usd += c.cost_usd.unwrap_or(0.0);
    }
}

/// A closed session as the OTLP sink spools it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionClose {
    pub ledger: LedgerRow,
    #[serde(default)]
    pub agents: Vec<AgentSummary>,
    #[serde(default)]
    pub ceiling_hits: Vec<CeilingHit>,
    /// Agents or ceiling hits not remembered (over `max_events_per_session`).
    #[serde(default)]
    pub dropped: u64,
}

/// RFC 3339 → Unix ns (0 when unparsable: the row is still exported).
pub fn unix_nanos(s: &str) -> u64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp_nanos().clamp(0, u64::MAX as i128) as u64)
        .unwrap_or(0)
}

pub fn trace_id(session_id: &str) -> Vec<u8> {
    let hex = session_id.as_bytes();
    if hex.len() == 32 && hex.iter().all(u8::is_ascii_hexdigit) {
        let id: Vec<u8> = hex
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("00"), 16).unwrap_or(0))
            .collect();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
    nonzero(&Sha256::digest(format!("trace:{session_id}").as_bytes())[..16])
}

fn nonzero(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.iter().all(|x| *x == 0) {
        v[0] = 1;
    }
    v
}

pub fn agent_span_id(session_id: &str, pid: u32, start_ticks: u64) -> Vec<u8> {
    nonzero(&Sha256::digest(format!("agent:{session_id}:{pid}:{start_ticks}").as_bytes())[..8])
}

pub fn tool_span_id(session_id: &str, pid: u32, start_ticks: u64) -> Vec<u8> {
    nonzero(&Sha256::digest(format!("tool:{session_id}:{pid}:{start_ticks}").as_bytes())[..8])
}

pub fn call_span_id(session_id: &str, call_seq: u64) -> Vec<u8> {
    nonzero(&Sha256::digest(format!("call:{session_id}:{call_seq}").as_bytes())[..8])
}

/// `gen_ai.operation.name` of a call, from its API.
pub fn operation_name(provider: &str, api: &str) -> &'static str {
    let api = api.to_ascii_lowercase();
    if api.contains("generatecontent") || api.contains("generate_content") {
        "generate_content"
    } else if api.contains("embed") {
        "embeddings"
    } else if api == "completions" || api.ends_with(".completions") && !api.contains("chat") {
        "text_completion"
    } else if provider == "gemini" && api.is_empty() {
        "generate_content"
    } else {
        "chat"
    }
}

/// `gen_ai.provider.name` (the conventions' well-known values where one applies).
pub fn provider_name(provider: &str) -> String {
    match provider {
        "gemini" => "gcp.gemini".into(),
        "vertex_ai" => "gcp.vertex_ai".into(),
        "bedrock" => "aws.bedrock".into(),
        "azure" | "azure_openai" => "azure.ai.openai".into(),
        "mistral" => "mistral_ai".into(),
        "xai" => "x_ai".into(),
        "watsonx" => "ibm.watsonx.ai".into(),
        other => other.to_string(),
    }
}

pub fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

pub fn kv_int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn kv_u64(key: &str, v: u64) -> KeyValue {
    kv_int(key, v.min(i64::MAX as u64) as i64)
}

fn kv_f64(key: &str, v: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(v))
}

fn kv_bool(key: &str, v: bool) -> KeyValue {
    kv(key, any_value::Value::BoolValue(v))
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

/// A call attempt stopped by a ceiling before its first byte left (the `blocked` field of
/// `calls.jsonl`; read by name, so rows written before the field existed read as false).
/// OpenTelemetry's k8s and container resource attributes, as span attributes (one resource
/// holds every pod's spans of a host).
pub fn workload_attrs(w: &crate::workloads::Workload) -> Vec<KeyValue> {
    [
        ("container.id", &w.container_id),
        ("container.runtime", &w.container_runtime),
        ("k8s.pod.uid", &w.pod_uid),
        ("k8s.pod.name", &w.pod_name),
        ("k8s.namespace.name", &w.pod_namespace),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| kv_str(k, v.clone())))
    .collect()
}

/// The span of one call.
pub fn call_span(c: &CallRecord) -> Span {
    let op = operation_name(&c.provider, &c.api);
    let name = match &c.model {
        Some(m) => format!("{op} {m}"),
        None => op.to_string(),
    };
    let mut attrs = vec![
        kv_str("gen_ai.operation.name", op),
        kv_str("gen_ai.provider.name", provider_name(&c.provider)),
        kv_bool("gen_ai.request.stream", c.streaming),
        kv_u64("gen_ai.usage.input_tokens", c.input_tokens),
        kv_u64("gen_ai.usage.output_tokens", c.output_tokens),
        kv_u64("gen_ai.usage.cache_read.input_tokens", c.cache_read_tokens),
        kv_u64(
            "gen_ai.usage.cache_creation.input_tokens",
            c.cache_write_tokens,
        ),
        kv_u64("gen_ai.usage.reasoning.output_tokens", c.reasoning_tokens),
        kv_int("process.pid", i64::from(c.pid)),
        kv_str("process.executable.name", c.comm.clone()),
        kv_str("session.id", c.session_id.clone()),
        kv_int("agent.depth", i64::from(c.depth)),
        kv_u64("agentwatch.call_seq", c.call_seq),
        kv_str("agentwatch.api", c.api.clone()),
        kv_str("agentwatch.usage_source", usage_source(c)),
        kv_bool("agentwatch.complete", c.complete),
    ];
    if let Some(m) = &c.model {
        attrs.push(kv_str("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &c.response_model {
        attrs.push(kv_str("gen_ai.response.model", m.clone()));
    }
    if let Some(id) = &c.response_id {
        attrs.push(kv_str("gen_ai.response.id", id.clone()));
    }
    if let Some(e) = &c.estimate {
        // An estimate is never a bill: its bounds go with it.
        attrs.push(kv_u64(
            "agentwatch.estimate.input_tokens_low",
            e.input_tokens_low,
        ));
        attrs.push(kv_u64(
            "agentwatch.estimate.input_tokens_high",
            e.input_tokens_high,
        ));
        attrs.push(kv_bool(
            "agentwatch.estimate.output_unknown",
            e.output_unknown,
        ));
    }
    if let Some(a) = &c.server_address {
        let host =
            a.rsplit_once(':').map_or(
                a.as_str(),
                |(h, p)| {
                    if p.parse::<u16>().is_ok() { h } else { a }
                },
            );
        attrs.push(kv_str("server.address", host.to_string()));
    }
    if let Some(cost) = c.cost_usd {
        attrs.push(kv_f64("agentwatch.cost.usd", cost));
    }
    if let Some(s) = c.status {
        attrs.push(kv_int("http.response.status_code", i64::from(s)));
    }
    if c.depth > 0 {
        attrs.push(kv_str("agent.parent_session", c.session_id.clone()));
        if let Some(p) = c.parent_pid {
            attrs.push(kv_int("agent.parent_pid", i64::from(p)));
        }
    }
    attrs.extend(workload_attrs(&c.workload));
    let blocked = c.blocked;
    if blocked {
        attrs.push(kv_bool("agentwatch.blocked", true));
    }
    let error = match c.status {
        _ if blocked => Some("blocked".to_string()),
        Some(s) if s >= 400 => Some(s.to_string()),
        _ if !c.complete => Some("incomplete".to_string()),
        _ => None,
    };
    let status = match &error {
        Some(e) => {
            attrs.push(kv_str("error.type", e.clone()));
            Some(Status {
                message: String::new(),
                code: status::StatusCode::Error as i32,
            })
        }
        None => None,
    };
    Span {
        trace_id: trace_id(&c.session_id),
        span_id: call_span_id(&c.session_id, c.call_seq),
        parent_span_id: agent_span_id(&c.session_id, c.pid, c.pid_start_ticks),
        name,
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: unix_nanos(&c.started_at),
        end_time_unix_nano: unix_nanos(&c.ended_at).max(unix_nanos(&c.started_at)),
        attributes: attrs,
        status,
        ..Default::default()
    }
}

/// The `execute_tool {tool}` span of a tool run (kind INTERNAL), a child of the span of the
/// agent it ran under; `error.type` is the exit code or the signal when it failed. No
/// argument is exported.
pub fn tool_span(t: &ToolRun) -> Span {
    let mut attrs = vec![
        kv_str("gen_ai.operation.name", "execute_tool"),
        kv_str("gen_ai.tool.name", t.tool.clone()),
        kv_str("gen_ai.tool.type", "extension"),
        kv_str("session.id", t.session_id.clone()),
        kv_int("agent.depth", i64::from(t.agent_depth)),
        kv_int("process.pid", i64::from(t.pid)),
        kv_int("process.parent_pid", i64::from(t.agent_pid)),
        kv_str("host.name", t.host.clone()),
    ];
    if let Some(exe) = &t.exe {
        attrs.push(kv_str("process.executable.path", exe.clone()));
    }
    if let Some(code) = t.exit_code {
        attrs.push(kv_int("process.exit.code", i64::from(code)));
    }
    let error = match (t.exit_code, t.signal) {
        (_, Some(sig)) => Some(format!("signal {sig}")),
        (Some(code), None) if code != 0 => Some(format!("exit {code}")),
        _ => None,
    };
    let status = error.map(|e| {
        attrs.push(kv_str("error.type", e));
        Status {
            message: String::new(),
            code: status::StatusCode::Error as i32,
        }
    });
    Span {
        trace_id: trace_id(&t.session_id),
        span_id: tool_span_id(&t.session_id, t.pid, t.pid_start_ticks),
        parent_span_id: agent_span_id(&t.session_id, t.agent_pid, t.agent_start_ticks),
        name: format!("execute_tool {}", t.tool),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: unix_nanos(&t.started_at),
        end_time_unix_nano: unix_nanos(&t.ended_at).max(unix_nanos(&t.started_at)),
        attributes: attrs,
        status,
        ..Default::default()
    }
}

fn usage_source(c: &CallRecord) -> String {
    serde_json::to_value(c.usage_source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn ceiling_event(h: &CeilingHit) -> span::Event {
    span::Event {
        time_unix_nano: unix_nanos(&h.at),
        name: "agentwatch.ceiling_hit".into(),
        attributes: vec![
            kv_str("agentwatch.ceiling", h.ceiling.clone()),
            kv_f64("agentwatch.ceiling.limit", h.limit),
            kv_f64("agentwatch.ceiling.value", h.value),
            kv_str("agentwatch.ceiling.action", h.action.clone()),
            kv_int("process.pid", i64::from(h.pid)),
        ],
        dropped_attributes_count: 0,
    }
}

/// The `invoke_agent` spans of a closed session: the root's first, then one per sub-agent.
pub fn session_spans(s: &SessionClose) -> Vec<Span> {
    let l = &s.ledger;
    let sid = &l.session_id;
    let trace = trace_id(sid);
    let root_id = agent_span_id(sid, l.root_pid, l.root_start_ticks);
    let is_root = |a: &AgentSummary| a.pid == l.root_pid && a.pid_start_ticks == l.root_start_ticks;
    let known: std::collections::HashSet<(u32, u64)> = s
        .agents
        .iter()
        .map(|a| (a.pid, a.pid_start_ticks))
        .collect();
    let events_for = |pid: u32, ticks: u64, root: bool| -> Vec<span::Event> {
        s.ceiling_hits
            .iter()
            .filter(|h| {
                (h.pid == pid && h.pid_start_ticks == ticks)
                    || (root && !known.contains(&(h.pid, h.pid_start_ticks)))
            })
            .map(ceiling_event)
            .collect()
    };
    let mut start = unix_nanos(&l.started_at);
    for a in &s.agents {
        let t = unix_nanos(&a.started_at);
        if t > 0 && (start == 0 || t < start) {
            start = t;
        }
    }
    let end = unix_nanos(&l.ended_at).max(start);
    let mut root_attrs = vec![
        kv_str("gen_ai.operation.name", "invoke_agent"),
        kv_str("gen_ai.agent.name", l.root_comm.clone()),
        kv_str("session.id", sid.clone()),
        kv_int("agent.depth", 0),
        kv_int("process.pid", i64::from(l.root_pid)),
        kv_str("process.executable.name", l.root_comm.clone()),
        kv_u64("gen_ai.usage.input_tokens", l.input_tokens),
        kv_u64("gen_ai.usage.output_tokens", l.output_tokens),
        kv_u64("gen_ai.usage.cache_read.input_tokens", l.cache_read_tokens),
        kv_u64(
            "gen_ai.usage.cache_creation.input_tokens",
            l.cache_write_tokens,
        ),
        kv_u64("gen_ai.usage.reasoning.output_tokens", l.reasoning_tokens),
        kv_f64("agentwatch.cost.usd", l.total_cost_usd),
        kv_u64("agentwatch.call_count", l.call_count),
        kv_u64("agentwatch.agent_count", l.agent_count),
        kv_int("agentwatch.depth_max", i64::from(l.depth_max)),
        kv_u64("agentwatch.ceiling_hits", l.ceiling_hits),
        kv_str(
            "agentwatch.outcome",
            serde_json::to_value(l.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
    ];
    if let Some(exe) = &l.root_exe {
        root_attrs.push(kv_str("process.executable.path", exe.clone()));
    }
    root_attrs.extend(workload_attrs(&l.workload));
    // How the run departed from its job's baseline (known by its close at the latest).
    let mut root_events = events_for(l.root_pid, l.root_start_ticks, true);
    root_events.extend(l.drift.iter().map(|d| span::Event {
        time_unix_nano: end,
        name: "agentwatch.drift".into(),
        attributes: vec![
            kv_str(
                "agentwatch.drift.kind",
                crate::sessions::drift::kind(d).to_string(),
            ),
            kv_str("agentwatch.drift", d.clone()),
        ],
        dropped_attributes_count: 0,
    }));
    let mut spans = vec![Span {
        trace_id: trace.clone(),
        span_id: root_id.clone(),
        name: format!("invoke_agent {}", l.root_comm),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: root_attrs,
        events: root_events,
        dropped_events_count: s.dropped.min(u64::from(u32::MAX)) as u32,
        ..Default::default()
    }];
    for a in s.agents.iter().filter(|a| !is_root(a)) {
        let parent = match (a.parent_pid, a.parent_start_ticks) {
            (Some(p), Some(t))
                if known.contains(&(p, t)) || (p, t) == (l.root_pid, l.root_start_ticks) =>
            {
                agent_span_id(sid, p, t)
            }
            _ => root_id.clone(),
        };
        let mut attrs = vec![
            kv_str("gen_ai.operation.name", "invoke_agent"),
            kv_str("gen_ai.agent.name", a.comm.clone()),
            kv_str("session.id", sid.clone()),
            kv_int("agent.depth", i64::from(a.depth)),
            kv_str("agent.parent_session", sid.clone()),
            kv_int("process.pid", i64::from(a.pid)),
            kv_str("process.executable.name", a.comm.clone()),
            kv_u64("gen_ai.usage.input_tokens", a.input_tokens),
            kv_u64("gen_ai.usage.output_tokens", a.output_tokens),
            kv_f64("agentwatch.cost.usd", a.cost_usd),
            kv_u64("agentwatch.call_count", a.calls),
        ];
        if let Some(p) = a.parent_pid {
            attrs.push(kv_int("agent.parent_pid", i64::from(p)));
        }
        let s0 = unix_nanos(&a.started_at);
        spans.push(Span {
            trace_id: trace.clone(),
            span_id: agent_span_id(sid, a.pid, a.pid_start_ticks),
            parent_span_id: parent,
            name: format!("invoke_agent {}", a.comm),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: s0,
            end_time_unix_nano: unix_nanos(&a.ended_at).max(s0),
            attributes: attrs,
            events: events_for(a.pid, a.pid_start_ticks, false),
            ..Default::default()
        });
    }
    spans
}
