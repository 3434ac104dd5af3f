//! The OTLP sink: spans (see [`super::spans`]) and metrics (see [`super::metrics`]) sent as
//! protobuf over gRPC (`TraceService/Export`, `MetricsService/Export`) or HTTP
//! (`POST <endpoint>/v1/traces`, `/v1/metrics`, `application/x-protobuf`); `https://` uses TLS
//! (rustls, web PKI roots). Spans are spooled (durable, see [`super::spool`]); metrics are
//! cumulative and re-sent every interval, so a failed export loses no count.
//!
//! OTLP/HTTP spans go through `opentelemetry-otlp`'s exporter ([`super::otlp_http`], which
//! also says why gRPC spans and metrics are still sent by hand here).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_client::MetricsServiceClient,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::config::{OtlpConfig, OtlpProtocol};
use super::destination::{
    BuildContext, BuildError, Built, Counters, DeliveryError, Destination, DestinationConfig,
    ExportItem,
};
use super::metrics::Metrics;
use super::otlp_http::HttpTraces;
use super::spans::{SCHEMA_URL, call_span, kv_str, session_spans};

#[derive(Debug, thiserror::Error)]
pub enum OtlpConfigError {
    #[error(
        "[sinks.otlp] endpoint = {endpoint:?}: {reason}; expected e.g. http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http/protobuf)"
    )]
    BadEndpoint { endpoint: String, reason: String },
    #[error("[sinks.otlp] headers: {0:?} is not a valid header name or value")]
    BadHeader(String),
}

enum Transport {
    Grpc {
        channel: Channel,
        headers: tonic::metadata::MetadataMap,
    },
    Http {
        /// Spans, through opentelemetry-otlp.
        traces: Box<HttpTraces>,
        /// Metrics, by hand.
        client: Box<super::http::Client>,
        base: String,
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    },
}

/// The resource: `service.name = agentwatch`, `service.version`, `host.name`.
pub fn resource(host: &str) -> Resource {
    Resource {
        attributes: vec![
            kv_str("service.name", "agentwatch"),
            kv_str("service.version", env!("CARGO_PKG_VERSION")),
            kv_str("host.name", host.to_string()),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "agentwatch".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The request for a batch of spans.
pub fn trace_request(host: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(host)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                schema_url: SCHEMA_URL.into(),
            }],
            schema_url: SCHEMA_URL.into(),
        }],
    }
}

pub fn spans_of(items: &[ExportItem]) -> Vec<Span> {
    let mut spans = Vec::new();
    for i in items {
        match i {
            ExportItem::Call(c) => spans.push(call_span(c)),
            ExportItem::Session(s) => spans.extend(session_spans(s)),
            ExportItem::ToolRun(t) => spans.push(super::spans::tool_span(t)),
            // Hosts and files are rows (JSONL, ClickHouse), not spans.
            ExportItem::Host(_) | ExportItem::File(_) | ExportItem::Notice(_) => {}
        }
    }
    spans
}

/// What only OTLP counts (shown in its status).
#[derive(Debug, Default)]
pub struct OtlpCounters {
    /// Spans sent; rejected by the receiver (partial success).
    pub spans_sent: AtomicU64,
    pub spans_rejected: AtomicU64,
    /// Metrics exports done / failed (metrics are cumulative: the next export repeats what a
    /// failed one carried, so a failure loses no count).
    pub metric_exports: AtomicU64,
    pub metric_export_failures: AtomicU64,
}

impl Counters for OtlpCounters {
    fn fields(&self) -> Vec<(&'static str, u64)> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("spans_sent", n(&self.spans_sent)),
            ("spans_rejected", n(&self.spans_rejected)),
            ("metric_exports", n(&self.metric_exports)),
            ("metric_export_failures", n(&self.metric_export_failures)),
        ]
    }
}

impl DestinationConfig for OtlpConfig {
    fn name(&self) -> &'static str {
        "otlp"
    }

    fn wants_metrics(&self) -> bool {
        self.metrics
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError> {
        let dest = OtlpDest::new(self, ctx.host.clone())?;
        let mut side_tasks: Vec<super::destination::SideTask> = Vec::new();
        if let (true, Some(m)) = (self.metrics, &ctx.metrics) {
            side_tasks.push(Box::pin(run_metrics(
                dest.clone(),
                m.clone(),
                Duration::from_secs(self.metrics_interval_secs.max(1)),
            )));
        }
        let protocol = match self.protocol {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        };
        Ok(Built {
            destination: Box::new(dest),
            target: format!("{} ({protocol})", self.endpoint),
            spool_max_bytes: self.spool_max_bytes,
            batch_records: self.batch_records,
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            deliver: self.traces,
            track_agents: Some(self.max_events_per_session),
            notices: false,
            side_tasks,
        })
    }
}

#[derive(Clone)]
pub struct OtlpDest {
    transport: Arc<Transport>,
    host: String,
    timeout: Duration,
    counters: Arc<OtlpCounters>,
}

impl OtlpDest {
    pub fn new(cfg: &OtlpConfig, host: String) -> Result<Self, OtlpConfigError> {
        let bad = |reason: String| OtlpConfigError::BadEndpoint {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        if !(cfg.endpoint.starts_with("http://") || cfg.endpoint.starts_with("https://")) {
            return Err(bad("the scheme must be http:// or https://".into()));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        let transport = match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut ep = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .tcp_nodelay(true);
                if cfg.endpoint.starts_with("https://") {
                    ep = ep
                        .tls_config(ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| bad(e.to_string()))?;
                }
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key =
                        tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|_| OtlpConfigError::BadHeader(k.clone()))?;
                    let val = v
                        .parse()
                        .map_err(|_| OtlpConfigError::BadHeader(k.clone()))?;
                    headers.insert(key, val);
                }
                Transport::Grpc {
                    channel: ep.connect_lazy(),
                    headers,
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let conn = super::http::connector(timeout).map_err(bad)?;
                let client = HyperClient::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(conn);
                let mut headers = Vec::new();
                for (k, v) in &cfg.headers {
                    let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| OtlpConfigError::BadHeader(k.clone()))?;
                    let val = hyper::header::HeaderValue::from_str(v)
                        .map_err(|_| OtlpConfigError::BadHeader(k.clone()))?;
                    headers.push((name, val));
                }
                let base = cfg.endpoint.trim_end_matches('/').to_string();
                let traces = HttpTraces::new(
                    client.clone(),
                    &base,
                    &cfg.headers,
                    timeout,
                    &resource(&host),
                    &scope(),
                )
                .map_err(bad)?;
                Transport::Http {
                    traces: Box::new(traces),
                    client: Box::new(client),
                    base,
                    headers,
                }
            }
        };
        Ok(Self {
            transport: Arc::new(transport),
            host,
            timeout,
            counters: Arc::default(),
        })
    }

    /// Sends `spans` (none: a health check); on success, the spans the receiver rejected.
    async fn send_traces(&self, spans: Vec<Span>) -> Result<i64, DeliveryError> {
        match &*self.transport {
            Transport::Grpc { channel, headers } => {
                let req = if spans.is_empty() {
                    ExportTraceServiceRequest::default()
                } else {
                    trace_request(&self.host, spans)
                };
                let mut client = TraceServiceClient::new(channel.clone());
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = headers.clone();
                let resp = client.export(r).await.map_err(|s| {
                    DeliveryError::from_grpc_code(
                        s.code() as i32,
                        format!("gRPC TraceService/Export: {} ({:?})", s.message(), s.code()),
                    )
                })?;
                Ok(resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans))
            }
            Transport::Http { traces, .. } if !spans.is_empty() => traces.export(spans).await,
            // A health check is an empty export, sent as such: the exporter would wrap even no
            // span in a `ResourceSpans` carrying the resource.
            Transport::Http { .. } => self
                .post(
                    "/v1/traces",
                    ExportTraceServiceRequest::default().encode_to_vec(),
                )
                .await
                .map(|_| 0),
        }
    }

    async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), String> {
        match &*self.transport {
            Transport::Grpc { channel, headers } => {
                let mut client = MetricsServiceClient::new(channel.clone());
                let mut r = tonic::Request::new(req);
                *r.metadata_mut() = headers.clone();
                client.export(r).await.map(|_| ()).map_err(|s| {
                    format!(
                        "gRPC MetricsService/Export: {} ({:?})",
                        s.message(),
                        s.code()
                    )
                })
            }
            Transport::Http { .. } => {
                let body = self
                    .post("/v1/metrics", req.encode_to_vec())
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = ExportMetricsServiceResponse::decode(body.as_ref());
                Ok(())
            }
        }
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Bytes, DeliveryError> {
        let Transport::Http {
            client,
            base,
            headers,
            ..
        } = &*self.transport
        else {
            return Err(DeliveryError::Permanent("not an HTTP transport".into()));
        };
        let url = format!("{base}{path}");
        let mut req = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DeliveryError::Permanent(format!("POST {url}: {e}")))?;
        Ok(super::http::post(client, self.timeout, req).await?.1)
    }

    pub async fn export_metrics(&self, metrics: &Metrics) -> Result<(), String> {
        let m = metrics.otlp();
        self.send_metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource(&self.host)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics: m,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: SCHEMA_URL.into(),
            }],
        })
        .await
    }
}

#[async_trait::async_trait]
impl Destination for OtlpDest {
    async fn send(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        let spans = spans_of(items);
        let n = spans.len() as u64;
        let rejected = self.send_traces(spans).await?;
        self.counters.spans_sent.fetch_add(n, Ordering::Relaxed);
        if rejected > 0 {
            self.counters
                .spans_rejected
                .fetch_add(rejected as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// An empty export: valid, and tells whether the receiver answers.
    async fn check(&mut self) -> Result<(), String> {
        self.send_traces(Vec::new())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn counters(&self) -> Arc<dyn Counters> {
        self.counters.clone()
    }
}

/// Exports metrics every `interval` (spawn it).
pub async fn run_metrics(dest: OtlpDest, metrics: Arc<Metrics>, interval: Duration) {
    let counters = dest.counters.clone();
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(dest.timeout * 2, dest.export_metrics(&metrics)).await {
            Ok(Ok(())) => {
                counters.metric_exports.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters
                    .metric_export_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sink = "otlp", "metrics export failed: {e}");
            }
            Err(_) => {
                counters
                    .metric_export_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// For tests and docs: the attributes of a span as a map of debug strings.
pub fn attribute_map(span: &Span) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
        .collect()
}
