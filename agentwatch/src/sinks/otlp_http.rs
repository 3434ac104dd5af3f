//! OTLP/HTTP trace exports through `opentelemetry-otlp` (the design card's exporter). Its
//! `SpanExporter` encodes the request (protobuf, headers, the configured timeout) and posts it
//! through [`Sender`], our hyper client (TCP_NODELAY, rustls, see [`super::http`]), which also
//! keeps what the exporter does not report: the HTTP status (a retryable failure or a permanent
//! one) and the receiver's partial success (rejected spans). The builder uses the endpoint it
//! is given verbatim (it adds `/v1/traces` only to `OTEL_EXPORTER_OTLP_ENDPOINT`), so the path
//! is added here: the configured endpoint stays a base URL.
//!
//! What stays hand-built in `otlp.rs`, and why (opentelemetry-otlp 0.31):
//! - gRPC traces: the tonic exporter drops the answer (`Ok(_) => Ok(())`) and only takes a
//!   concrete tonic `Channel`, so a partial success (`spans_rejected` in status) cannot be read.
//! - metrics, both protocols: `MetricExporter::export` takes the SDK's `ResourceMetrics`,
//!   whose fields are crate-private: only the SDK's own meter pipeline can fill one, not the
//!   daemon's aggregates (bounded series, the status gauges, the Prometheus text of the same
//!   state).
//!
//! - the idle health check: an empty export, which the exporter cannot send (it wraps even no
//!   span in a `ResourceSpans` carrying the resource).
//!
//! The exporter also reads the standard `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` and
//! `…_COMPRESSION` environment variables (headers are added; a compression is refused at start,
//! no compression feature is built in).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{self as proto_common, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{self as proto_trace, span, status};
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _};
use prost::Message;

use super::destination::DeliveryError;
use super::http::{Client, post};

/// What the last request said: the rejected spans of a success, or why it failed.
type Verdict = Arc<Mutex<Option<Result<i64, DeliveryError>>>>;

/// Our HTTP client, as the exporter's.
#[derive(Clone)]
struct Sender {
    client: Client,
    timeout: Duration,
    last: Verdict,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agentwatch OTLP/HTTP sender")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Sender {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Result<opentelemetry_http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (verdict, answer) = match post(&self.client, self.timeout, request.map(Full::new)).await
        {
            Ok((code, body)) => {
                let rejected = ExportTraceServiceResponse::decode(body.as_ref())
                    .ok()
                    .and_then(|r| r.partial_success)
                    .map_or(0, |p| p.rejected_spans);
                let response = opentelemetry_http::Response::builder()
                    .status(code)
                    .body(body)
                    .map_err(|e| e.to_string().into());
                (Ok(rejected), response)
            }
            Err(e) => {
                let message = e.to_string().into();
                (Err(e), Err(message))
            }
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
        answer
    }
}

/// The trace exporter of an OTLP/HTTP destination.
pub struct HttpTraces {
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    last: Verdict,
}

impl HttpTraces {
    /// `base`: the configured endpoint without a trailing `/`.
    pub fn new(
        client: Client,
        base: &str,
        headers: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
        resource: &ProtoResource,
        scope: &proto_common::InstrumentationScope,
    ) -> Result<Self, String> {
        let last = Verdict::default();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(timeout)
            .with_headers(headers.clone().into_iter().collect())
            .with_http_client(Sender {
                client,
                timeout,
                last: last.clone(),
            })
            .build()
            .map_err(|e| e.to_string())?;
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder_empty()
                .with_schema_url(
                    resource.attributes.iter().map(key_value),
                    super::spans::SCHEMA_URL,
                )
                .build(),
        );
        let scope = InstrumentationScope::builder(scope.name.clone())
            .with_version(scope.version.clone())
            .with_schema_url(super::spans::SCHEMA_URL)
            .build();
        Ok(Self {
            exporter,
            scope,
            last,
        })
    }

    /// Sends `spans`; on success, the spans the receiver rejected.
    pub async fn export(&self, spans: Vec<proto_trace::Span>) -> Result<i64, DeliveryError> {
        let batch = spans
            .into_iter()
            .map(|s| span_data(s, &self.scope))
            .collect();
        let last = || self.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        last();
        let result = self.exporter.export(batch).await;
        match (result, last()) {
            (Ok(()), Some(Ok(rejected))) => Ok(rejected),
            (Ok(()), _) => Ok(0),
            (Err(_), Some(Err(e))) => Err(e),
            (Err(OTelSdkError::InternalFailure(e)), _) => Err(DeliveryError::Permanent(format!(
                "OTLP/HTTP trace export (no request made): {e}"
            ))),
            (Err(e), _) => Err(DeliveryError::Retryable(format!(
                "OTLP/HTTP trace export: {e}"
            ))),
        }
    }
}

fn key_value(kv: &proto_common::KeyValue) -> KeyValue {
    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Value::from(s.clone()),
        Some(any_value::Value::IntValue(i)) => Value::I64(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::F64(*d),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        // The spans carry scalars only.
        Some(other) => Value::from(format!("{other:?}")),
        None => Value::from(""),
    };
    KeyValue::new(kv.key.clone(), value)
}

fn at(unix_nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

fn span_id(bytes: &[u8]) -> SpanId {
    <[u8; 8]>::try_from(bytes).map_or(SpanId::INVALID, SpanId::from_bytes)
}

/// A span built by [`super::spans`] (deterministic ids) as the exporter takes it.
pub fn span_data(s: proto_trace::Span, scope: &InstrumentationScope) -> SpanData {
    let trace_id =
        <[u8; 16]>::try_from(s.trace_id.as_slice()).map_or(TraceId::INVALID, TraceId::from_bytes);
    let mut events = SpanEvents::default();
    events.dropped_count = s.dropped_events_count;
    events.events = s
        .events
        .iter()
        .map(|e| {
            Event::new(
                e.name.clone(),
                at(e.time_unix_nano),
                e.attributes.iter().map(key_value).collect(),
                e.dropped_attributes_count,
            )
        })
        .collect();
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id(&s.span_id),
            TraceFlags::default(),
            false,
            TraceState::default(),
        ),
        parent_span_id: span_id(&s.parent_span_id),
        parent_span_is_remote: false,
        span_kind: match span::SpanKind::try_from(s.kind) {
            Ok(span::SpanKind::Client) => SpanKind::Client,
            Ok(span::SpanKind::Server) => SpanKind::Server,
            Ok(span::SpanKind::Producer) => SpanKind::Producer,
            Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
            _ => SpanKind::Internal,
        },
        name: s.name.into(),
        start_time: at(s.start_time_unix_nano),
        end_time: at(s.end_time_unix_nano),
        attributes: s.attributes.iter().map(key_value).collect(),
        dropped_attributes_count: s.dropped_attributes_count,
        events,
        links: Default::default(),
        status: match s.status {
            Some(st) if st.code == status::StatusCode::Error as i32 => Status::error(st.message),
            Some(st) if st.code == status::StatusCode::Ok as i32 => Status::Ok,
            _ => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::sessions::tests::{S, call, cfg, fake_host, k, req};

    #[test]
    fn spans_reach_the_exporter_as_built() {
        let (_fake, tree) = fake_host();
        let mut s = crate::sessions::Sessions::new(cfg());
        let c = s.on_call(
            &tree,
            k(300, 300),
            &call(req("openai", Some("gpt-4o-mini"), S), 10, 5, 2 * S),
            Some(0.25),
        );
        let built = super::super::spans::call_span(&c);
        let scope = InstrumentationScope::builder("agentwatch").build();
        let sent = proto_trace::Span::from(span_data(built.clone(), &scope));
        assert_eq!(sent.trace_id, built.trace_id);
        assert_eq!(sent.span_id, built.span_id);
        assert_eq!(sent.parent_span_id, built.parent_span_id);
        assert_eq!(
            (sent.name.as_str(), sent.kind),
            (built.name.as_str(), built.kind)
        );
        assert_eq!(
            (sent.start_time_unix_nano, sent.end_time_unix_nano),
            (built.start_time_unix_nano, built.end_time_unix_nano)
        );
        assert_eq!(
            sent.attributes, built.attributes,
            "same keys, order and types"
        );
        // A root span: no parent (not eight zero bytes), its events and drops kept.
        let mut root = built;
        root.parent_span_id.clear();
        root.dropped_events_count = 3;
        root.events.push(span::Event {
            time_unix_nano: 5,
            name: "agentwatch.ceiling_hit".into(),
            attributes: root.attributes[..2].to_vec(),
            dropped_attributes_count: 0,
        });
        let sent = proto_trace::Span::from(span_data(root.clone(), &scope));
        assert!(sent.parent_span_id.is_empty());
        assert_eq!(sent.events, root.events);
        assert_eq!(sent.dropped_events_count, 3);
    }

    /// A receiver answering one request with `status` and `body`; returns what it was sent.
    async fn answer_once(
        listener: tokio::net::TcpListener,
        status: &'static str,
        body: Vec<u8>,
    ) -> String {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
        }
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        String::from_utf8_lossy(&got).to_string()
    }

    #[tokio::test]
    async fn http_answers_map_to_partial_success_and_delivery_errors() {
        let timeout = Duration::from_secs(5);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(super::super::http::connector(timeout).unwrap());
        let headers = BTreeMap::from([("authorization".to_string(), "Bearer t".to_string())]);
        let scope = proto_common::InstrumentationScope::default();
        let exporter = |port: u16| {
            HttpTraces::new(
                client.clone(),
                &format!("http://127.0.0.1:{port}"),
                &headers,
                timeout,
                &ProtoResource::default(),
                &scope,
            )
            .unwrap()
        };
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "two too old".into(),
            }),
        };
        for (status, body, want) in [
            ("200 OK", partial.encode_to_vec(), Ok(2)),
            ("400 Bad Request", b"bad".to_vec(), Err(true)),
            ("503 Service Unavailable", Vec::new(), Err(false)),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(answer_once(listener, status, body));
            let got = exporter(port).export(Vec::new()).await;
            let request = server.await.unwrap();
            // The configured endpoint is a base URL: the exporter posts to <base>/v1/traces.
            assert!(
                request.starts_with("POST /v1/traces HTTP/1.1\r\n"),
                "{request}"
            );
            let lower = request.to_ascii_lowercase();
            assert!(
                lower.contains("content-type: application/x-protobuf"),
                "{request}"
            );
            assert!(lower.contains("authorization: bearer t"), "{request}");
            match (got, want) {
                (Ok(n), Ok(m)) => assert_eq!(n, m),
                (Err(e), Err(permanent)) => {
                    assert_eq!(e.is_permanent(), permanent, "{status}: {e}");
                    assert!(e.to_string().contains(&status[..3]), "{e}");
                    assert!(e.to_string().contains("/v1/traces"), "{e}");
                }
                (got, want) => panic!("{status}: {got:?}, expected {want:?}"),
            }
        }
        // Nobody listening: retried later, the URL named.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = exporter(port).export(Vec::new()).await.unwrap_err();
        assert!(
            !e.is_permanent() && e.to_string().contains("/v1/traces"),
            "{e}"
        );
    }
}
