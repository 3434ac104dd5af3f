//! Notification sinks: `[sinks.webhook]` (the notice as JSON), `[sinks.slack]` (a
//! Slack-compatible incoming-webhook payload) and `[sinks.alertmanager]` (Alertmanager's v2
//! API). Each is a destination like ClickHouse and OTLP: notices go through its own durable
//! spool (`<data_dir>/spool/<name>`) and are retried with backoff while the receiver is down,
//! across daemon restarts; one notice per request, so a retry never repeats another.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use super::destination::{
    BuildContext, BuildError, Built, DeliveryError, Destination, DestinationConfig, ExportItem,
};
use super::http::{Client, post};
use crate::sessions::Notice;

/// Every event a notification sink sends unless `events` says otherwise.
pub const EVENTS: [&str; 8] = [
    "warn",
    "observe",
    "pause",
    "kill",
    "block",
    "drift",
    "paused",
    "pause_timeout",
];

/// One notification sink's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where notices are POSTed. Required. Alertmanager: its base URL
    /// (`http://alertmanager:9093`; `/api/v2/alerts` is added).
    pub url: String,
    /// Extra request headers (e.g. authorization). Default none.
    pub headers: BTreeMap<String, String>,
    /// Which events are sent (`warn`, `observe`, `pause`, `kill`, `block`, `drift`, `paused`,
    /// `pause_timeout`). Default all.
    pub events: Vec<String>,
    /// Unsent notices kept in `<data_dir>/spool/<sink>`; past it they are dropped and
    /// counted. Default 16 MiB.
    pub spool_max_bytes: u64,
    /// Per request. Default 10 s.
    pub timeout_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            headers: BTreeMap::new(),
            events: EVENTS.iter().map(|e| e.to_string()).collect(),
            spool_max_bytes: 16 << 20,
            timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Webhook,
    Slack,
    Alertmanager,
}

macro_rules! notify_table {
    ($(#[$doc:meta])* $name:ident, $sink:literal, $format:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub NotifyConfig);

        impl DestinationConfig for $name {
            fn name(&self) -> &'static str {
                $sink
            }

            fn build(&self, _ctx: &BuildContext) -> Result<Built, BuildError> {
                build(&self.0, $sink, $format)
            }
        }
    };
}

notify_table!(
    /// `[sinks.webhook]`: each notice POSTed as JSON (the `Notice` fields).
    WebhookConfig,
    "webhook",
    Format::Webhook
);
notify_table!(
    /// `[sinks.slack]`: each notice POSTed as `{"text": …}` (Slack incoming webhooks and
    /// the chat tools that accept their payload).
    SlackConfig,
    "slack",
    Format::Slack
);
notify_table!(
    /// `[sinks.alertmanager]`: each notice POSTed to `<url>/api/v2/alerts` as one alert.
    AlertmanagerConfig,
    "alertmanager",
    Format::Alertmanager
);

fn build(cfg: &NotifyConfig, sink: &str, format: Format) -> Result<Built, BuildError> {
    let uri: hyper::Uri = cfg
        .url
        .parse()
        .map_err(|e| format!("[sinks.{sink}] url {:?}: {e}", cfg.url))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "[sinks.{sink}] url {:?}: must be http:// or https://",
            cfg.url
        )
        .into());
    }
    for e in &cfg.events {
        if !EVENTS.contains(&e.as_str()) {
            return Err(format!(
                "[sinks.{sink}] events: unknown event {e:?} (known: {})",
                EVENTS.join(", ")
            )
            .into());
        }
    }
    let url = match format {
        Format::Alertmanager if !cfg.url.trim_end_matches('/').ends_with("/api/v2/alerts") => {
            format!("{}/api/v2/alerts", cfg.url.trim_end_matches('/'))
        }
        _ => cfg.url.clone(),
    };
    let mut headers = Vec::new();
    for (k, v) in &cfg.headers {
        let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("[sinks.{sink}] headers: bad header name {k:?}"))?;
        let val = hyper::header::HeaderValue::from_str(v)
            .map_err(|_| format!("[sinks.{sink}] headers: bad value of {k:?}"))?;
        headers.push((name, val));
    }
    let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
    let client = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(super::http::connector(timeout)?);
    Ok(Built {
        destination: Box::new(NotifyDest {
            client,
            url: url.clone(),
            headers,
            events: cfg.events.clone(),
            format,
            timeout,
        }),
        target: url,
        spool_max_bytes: cfg.spool_max_bytes,
        batch_records: 1,
        timeout,
        deliver: true,
        track_agents: None,
        notices: true,
        side_tasks: Vec::new(),
    })
}

struct NotifyDest {
    client: Client,
    url: String,
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    events: Vec<String>,
    format: Format,
    timeout: Duration,
}

/// The request body of `n` in `format`.
pub fn body(format: Format, n: &Notice) -> serde_json::Value {
    match format {
        Format::Webhook => serde_json::to_value(n).unwrap_or_default(),
        Format::Slack => serde_json::json!({ "text": n.message }),
        Format::Alertmanager => {
            let severity = if n.event == "warn" || n.action == "observe" {
                "warning"
            } else {
                "critical"
            };
            serde_json::json!([{
                "labels": {
                    "alertname": "AgentwatchSession",
                    "event": n.event,
                    "ceiling": n.ceiling,
                    "action": n.action,
                    "session_id": n.session_id,
                    "host": n.host,
                    "severity": severity,
                },
                "annotations": {
                    "summary": n.message,
                    "limit": crate::sessions::num(n.limit),
                    "value": crate::sessions::num(n.value),
                },
                "startsAt": n.at,
            }])
        }
    }
}

#[async_trait::async_trait]
impl Destination for NotifyDest {
    async fn send(&mut self, batch: &[ExportItem]) -> Result<(), DeliveryError> {
        for item in batch {
            let ExportItem::Notice(n) = item else {
                continue;
            };
            if !self.events.iter().any(|e| *e == n.event) {
                continue;
            }
            let bytes = serde_json::to_vec(&body(self.format, n))
                .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
            let mut req = hyper::Request::post(&self.url)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| DeliveryError::Permanent(format!("POST {}: {e}", self.url)))?;
            for (k, v) in &self.headers {
                req.headers_mut().insert(k.clone(), v.clone());
            }
            post(&self.client, self.timeout, req).await?;
        }
        Ok(())
    }

    /// Receivers have no harmless request in common: a failed delivery is the health signal.
    async fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notice {
        Notice::of_hit(&crate::sessions::CeilingHit {
            session_id: "0123456789abcdef0123456789abcdef".into(),
            host: "node-1".into(),
            pid: 42,
            pid_start_ticks: 7,
            ceiling: "session_usd".into(),
            limit: 5.0,
            value: 5.25,
            action: "pause".into(),
            at: "2026-12-06T19:00:00.000000000Z".into(),
        })
    }

    #[test]
    fn notify_bodies_of_each_format() {
        let n = notice();
        assert_eq!(n.event, "pause");
        assert!(
            n.message.contains("session 0123456789ab reached session_usd (5.25 of 5): paused; `agentwatch approve 0123456789ab`"),
            "{}",
            n.message
        );
        let w = body(Format::Webhook, &n);
        assert_eq!(w["session_id"], n.session_id);
        assert_eq!(w["value"], 5.25);
        assert_eq!(body(Format::Slack, &n)["text"], n.message);
        let a = body(Format::Alertmanager, &n);
        assert_eq!(a[0]["labels"]["alertname"], "AgentwatchSession");
        assert_eq!(a[0]["labels"]["severity"], "critical");
        assert_eq!(a[0]["startsAt"], n.at);
    }

    #[test]
    fn notify_config_is_checked() {
        let cfg = NotifyConfig {
            url: "ftp://x".into(),
            ..NotifyConfig::default()
        };
        assert!(build(&cfg, "webhook", Format::Webhook).is_err());
        let cfg = NotifyConfig {
            url: "http://127.0.0.1:9093".into(),
            events: vec!["pause".into(), "nope".into()],
            ..NotifyConfig::default()
        };
        let err = build(&cfg, "alertmanager", Format::Alertmanager)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown event \"nope\""), "{err}");
    }
}
