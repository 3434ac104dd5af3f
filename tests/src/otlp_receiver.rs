//! A real OTLP receiver for the export tests: gRPC (`TraceService`, `MetricsService`) and
//! HTTP/protobuf (`POST /v1/traces`, `/v1/metrics`) servers built from the `opentelemetry-proto`
//! definitions, recording every request they accept. Runs on its own tokio runtime, so a
//! synchronous test can start, query and stop it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// What the receiver got.
#[derive(Debug, Default)]
pub struct Received {
    pub traces: Vec<ExportTraceServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    pub grpc_requests: u64,
    pub http_requests: u64,
    /// HTTP requests refused (wrong path or content type, undecodable body).
    pub http_rejected: u64,
    /// Answer every HTTP trace export that carries spans with 400 Bad Request (a receiver
    /// that refuses the batch itself); empty ones (health checks) still succeed.
    pub refuse_spans: bool,
    /// HTTP trace exports refused that way.
    pub refused: u64,
}

#[derive(Clone, Default)]
struct Svc(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut r = self.0.lock().unwrap();
        r.grpc_requests += 1;
        r.traces.push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut r = self.0.lock().unwrap();
        r.grpc_requests += 1;
        r.metrics.push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A span as the tests look at it.
#[derive(Debug, Clone)]
pub struct RecordedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub start: u64,
    pub end: u64,
    pub attributes: BTreeMap<String, Av>,
    pub events: Vec<String>,
    /// Resource attributes (string values).
    pub resource: BTreeMap<String, String>,
}

impl RecordedSpan {
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Av::IntValue(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Av::StringValue(v)) => Some(v),
            _ => None,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn record_span(span: &Span, resource: &BTreeMap<String, String>) -> RecordedSpan {
    RecordedSpan {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        parent_span_id: hex(&span.parent_span_id),
        name: span.name.clone(),
        kind: span.kind,
        start: span.start_time_unix_nano,
        end: span.end_time_unix_nano,
        attributes: span
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.as_ref()?.clone())))
            .collect(),
        events: span.events.iter().map(|e| e.name.clone()).collect(),
        resource: resource.clone(),
    }
}

pub struct OtlpReceiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpReceiver {
    /// Starts both servers on free loopback ports.
    pub fn start() -> OtlpReceiver {
        Self::start_on(0, 0)
    }

    /// Starts both servers on the given loopback ports (0: any free port).
    pub fn start_on(grpc_port: u16, http_port: u16) -> OtlpReceiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let (grpc_addr, http_addr) = runtime
            .block_on(async {
                let grpc = tokio::net::TcpListener::bind(("127.0.0.1", grpc_port))
                    .await
                    .unwrap_or_else(|e| panic!("OTLP receiver: bind gRPC port {grpc_port}: {e}"));
                let http = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
                    .await
                    .unwrap_or_else(|e| panic!("OTLP receiver: bind HTTP port {http_port}: {e}"));
                (
                    grpc.local_addr().unwrap(),
                    http.local_addr().unwrap(),
                    grpc,
                    http,
                )
            })
            .pipe(|(g, h, grpc, http)| {
                let svc = Svc(received.clone());
                runtime.spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(svc.clone()))
                        .add_service(MetricsServiceServer::new(svc))
                        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc))
                        .await;
                });
                let state = received.clone();
                runtime.spawn(serve_http(http, state));
                (g, h)
            });
        OtlpReceiver {
            grpc_addr,
            http_addr,
            received,
            runtime: Some(runtime),
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&Received) -> T) -> T {
        f(&self.received.lock().unwrap())
    }

    /// See `Received::refuse_spans`.
    pub fn refuse_spans(&self, on: bool) {
        self.received.lock().unwrap().refuse_spans = on;
    }

    /// Every span received so far (a re-sent span appears once per delivery).
    pub fn spans(&self) -> Vec<RecordedSpan> {
        self.with(|r| {
            let mut out = Vec::new();
            for req in &r.traces {
                for rs in &req.resource_spans {
                    let resource: BTreeMap<String, String> = rs
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Av::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    for ss in &rs.scope_spans {
                        for s in &ss.spans {
                            out.push(record_span(s, &resource));
                        }
                    }
                }
            }
            out
        })
    }

    /// Metrics of every export received so far.
    pub fn metrics(&self) -> Vec<Metric> {
        self.with(|r| {
            r.metrics
                .iter()
                .flat_map(|m| m.resource_metrics.iter())
                .flat_map(|rm| rm.scope_metrics.iter())
                .flat_map(|sm| sm.metrics.iter().cloned())
                .collect()
        })
    }

    /// Stops both servers (connections are dropped).
    pub fn stop(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

async fn serve_http(listener: tokio::net::TcpListener, state: Arc<Mutex<Received>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ctype = req
                            .headers()
                            .get(hyper::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let reply = |status: u16, body: Vec<u8>| {
                            hyper::Response::builder()
                                .status(status)
                                .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                                .body(Full::new(Bytes::from(body)))
                        };
                        let Ok(body) = body else {
                            return reply(400, Vec::new());
                        };
                        let mut r = state.lock().unwrap();
                        if ctype != "application/x-protobuf" {
                            r.http_rejected += 1;
                            return reply(415, Vec::new());
                        }
                        match path.as_str() {
                            "/v1/traces" => {
                                match ExportTraceServiceRequest::decode(body.as_ref()) {
                                    Ok(m) if r.refuse_spans && !m.resource_spans.is_empty() => {
                                        r.refused += 1;
                                        reply(400, b"refused by the test".to_vec())
                                    }
                                    Ok(m) => {
                                        r.http_requests += 1;
                                        r.traces.push(m);
                                        reply(
                                            200,
                                            ExportTraceServiceResponse::default().encode_to_vec(),
                                        )
                                    }
                                    Err(_) => {
                                        r.http_rejected += 1;
                                        reply(400, Vec::new())
                                    }
                                }
                            }
                            "/v1/metrics" => {
                                match ExportMetricsServiceRequest::decode(body.as_ref()) {
                                    Ok(m) => {
                                        r.http_requests += 1;
                                        r.metrics.push(m);
                                        reply(
                                            200,
                                            ExportMetricsServiceResponse::default().encode_to_vec(),
                                        )
                                    }
                                    Err(_) => {
                                        r.http_rejected += 1;
                                        reply(400, Vec::new())
                                    }
                                }
                            }
                            _ => {
                                r.http_rejected += 1;
                                reply(404, Vec::new())
                            }
                        }
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                .await;
        });
    }
}
