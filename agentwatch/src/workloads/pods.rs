//! Pod names, namespaces and labels of this node's pods, from a Kubernetes `PodList`: the API
//! server (`/api/v1/pods?fieldSelector=spec.nodeName=…`, with the pod's service account token),
//! kubelet's read-only `/pods`, or a file. Optional: without it, calls still carry the pod UID
//! and container id read from cgroup paths.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// `[kubernetes]`: where pod metadata comes from. Every field is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// URL of a PodList of this node's pods; `${VAR}` is replaced from the environment. E.g.
    /// `https://kubernetes.default.svc/api/v1/pods?fieldSelector=spec.nodeName=${NODE_NAME}`
    /// or kubelet's read-only `http://127.0.0.1:10255/pods`. Default none.
    pub pod_list_url: Option<String>,
    /// A file holding a PodList (JSON), re-read at each refresh. Default none.
    pub pod_list_file: Option<PathBuf>,
    /// Bearer token sent with `pod_list_url`, re-read at each refresh (tokens rotate). Default none.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for an `https` `pod_list_url`. Default: the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Seconds between refreshes; a pod UID not yet known also triggers one (at most every
    /// 2 s). Default 30.
    pub refresh_secs: u64,
    /// Pods kept; more are counted in `dropped_over_cap`. Default 10,000.
    pub max_pods: usize,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            pod_list_url: None,
            pod_list_file: None,
            token_file: None,
            ca_file: None,
            refresh_secs: 30,
            max_pods: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodSourceError {
    #[error("failed to read the pod list file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to load the CA bundle {path}: {detail}")]
    Ca { path: PathBuf, detail: String },
    #[error("GET {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("GET {url} answered HTTP {status}; check the token's RBAC (pods: list) or the URL")]
    Status { url: String, status: u16 },
    #[error("the pod list from {from} is not a PodList: {source}")]
    Parse {
        from: String,
        source: serde_json::Error,
    },
}

/// What is known of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: PodMetadata,
}

#[derive(Deserialize)]
struct PodMetadata {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Parses a PodList into uid → metadata, keeping at most `max` pods (returns how many were not kept).
pub fn parse_pod_list(
    body: &[u8],
    max: usize,
) -> Result<(HashMap<String, PodMeta>, u64), serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut pods = HashMap::new();
    let mut dropped = 0;
    for pod in list.items {
        let m = pod.metadata;
        if m.uid.is_empty() {
            continue;
        }
        if pods.len() >= max {
            dropped += 1;
            continue;
        }
        pods.insert(
            m.uid,
            PodMeta {
                name: m.name,
                namespace: m.namespace,
                labels: m.labels,
            },
        );
    }
    Ok((pods, dropped))
}

/// `${VAR}` replaced from the environment (unset: empty).
fn expand_env(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let name = &rest[at + 2..at + end];
        out.push_str(&std::env::var(name).unwrap_or_default());
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PodSourceStatus {
    /// `not configured`, `ok` or `unavailable: <why>`.
    pub state: String,
    pub source: Option<String>,
    pub pods: usize,
    pub refreshes: u64,
    pub errors: u64,
    pub dropped_over_cap: u64,
    /// Lookups of a pod UID the list did not have (yet).
    pub unknown_pod_lookups: u64,
    pub last_refresh_secs_ago: Option<u64>,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodMeta>,
    status: PodSourceStatus,
    last_refresh: Option<Instant>,
}

/// The pods of this node, refreshed in the background.
pub struct PodIndex {
    config: KubernetesConfig,
    state: Mutex<State>,
    wake: tokio::sync::Notify,
}

/// The index used when `[kubernetes]` is not configured.
impl Default for PodIndex {
    fn default() -> Self {
        PodIndex::new(KubernetesConfig::default())
    }
}

impl PodIndex {
    pub fn new(config: KubernetesConfig) -> PodIndex {
        let state = State {
            status: PodSourceStatus {
                state: "not configured".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        PodIndex {
            config,
            state: Mutex::new(state),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn configured(&self) -> bool {
        self.config.pod_list_url.is_some() || self.config.pod_list_file.is_some()
    }

    /// The pod with this UID; an unknown UID asks the refresher for a new list.
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        let mut state = self.state.lock().expect("pod index lock");
        let found = state.pods.get(uid).cloned();
        if found.is_none() && self.configured() {
            state.status.unknown_pod_lookups += 1;
            self.wake.notify_one();
        }
        found
    }

    pub fn status(&self) -> PodSourceStatus {
        let state = self.state.lock().expect("pod index lock");
        let mut status = state.status.clone();
        status.last_refresh_secs_ago = state.last_refresh.map(|t| t.elapsed().as_secs());
        status
    }

    /// Fetches the list once and installs it (or records why not).
    pub async fn refresh(&self) {
        let (from, result) = match (&self.config.pod_list_url, &self.config.pod_list_file) {
            (Some(url), _) => {
                let url = expand_env(url);
                (url.clone(), self.fetch_url(&url).await)
            }
            (None, Some(path)) => (
                path.display().to_string(),
                std::fs::read(path).map_err(|source| PodSourceError::File {
                    path: path.clone(),
                    source,
                }),
            ),
            (None, None) => return,
        };
        let parsed = result.and_then(|body| {
            parse_pod_list(&body, self.config.max_pods.max(1)).map_err(|source| {
                PodSourceError::Parse {
                    from: from.clone(),
                    source,
                }
            })
        });
        let mut state = self.state.lock().expect("pod index lock");
        state.status.source = Some(from);
        state.status.refreshes += 1;
        match parsed {
            Ok((pods, dropped)) => {
                state.status.state = "ok".into();
                state.status.pods = pods.len();
                state.status.dropped_over_cap = dropped;
                state.pods = pods;
                state.last_refresh = Some(Instant::now());
            }
            Err(e) => {
                if state.status.errors == 0 || state.status.state == "ok" {
                    tracing::warn!("pod metadata unavailable: {e}");
                }
                state.status.errors += 1;
                // The last good list stays in use.
                state.status.state = format!("unavailable: {e}");
            }
        }
    }

    async fn fetch_url(&self, url: &str) -> Result<Vec<u8>, PodSourceError> {
        let http_err = |detail: String| PodSourceError::Http {
            url: url.to_string(),
            detail,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &self.config.ca_file {
            Some(path) => builder.with_tls_config(client_config_with_ca(path)?),
            None => builder
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| http_err(e.to_string()))?,
        };
        let conn = builder.https_or_http().enable_http1().wrap_connector(http);
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(conn);
        let mut req = hyper::Request::get(url).header("accept", "application/json");
        if let Some(path) = &self.config.token_file {
            let token = std::fs::read_to_string(path).map_err(|source| PodSourceError::Token {
                path: path.clone(),
                source,
            })?;
            req = req.header("authorization", format!("Bearer {}", token.trim()));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        let fetch = async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| http_err(format!("{e:?}")))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(PodSourceError::Status {
                    url: url.to_string(),
                    status,
                });
            }
            let body = Limited::new(resp.into_body(), 64 << 20)
                .collect()
                .await
                .map_err(|e| http_err(e.to_string()))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(Duration::from_secs(15), fetch)
            .await
            .map_err(|_| http_err("timed out after 15 s".into()))?
    }

    /// Refreshes every `refresh_secs`, and soon after a lookup missed (at most every 2 s).
    pub fn spawn_refresher(self: &Arc<Self>) {
        if !self.configured() {
            return;
        }
        let index = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(index.config.refresh_secs.max(2));
            loop {
                index.refresh().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::select! {
                    _ = tokio::time::sleep(period.saturating_sub(Duration::from_secs(2))) => {}
                    _ = index.wake.notified() => {}
                }
            }
        });
    }
}

fn client_config_with_ca(path: &PathBuf) -> Result<rustls::ClientConfig, PodSourceError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca_err = |detail: String| PodSourceError::Ca {
        path: path.clone(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate in the file".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_list_parses_and_is_bounded() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
            {"metadata":{"name":"a","namespace":"ns","uid":"u1","labels":{"app":"agent"}},"spec":{}},
            {"metadata":{"name":"b","namespace":"ns","uid":"u2"}},
            {"metadata":{"name":"c","namespace":"ns","uid":"u3"}}]}"#;
        let (pods, dropped) = parse_pod_list(body, 2).unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(dropped, 1);
        assert_eq!(pods["u1"].labels["app"], "agent");
        assert_eq!(pods["u1"].namespace, "ns");
        assert!(parse_pod_list(b"{\"items\": 3}", 2).is_err());
        assert!(parse_pod_list(b"not json", 2).is_err());
    }

    #[test]
    fn env_expansion() {
        // SAFETY: single-threaded test setting a variable only it reads.
        unsafe { std::env::set_var("AW_TEST_NODE", "node-7") };
        assert_eq!(
            expand_env("https://x/api/v1/pods?fieldSelector=spec.nodeName=${AW_TEST_NODE}"),
            "https://x/api/v1/pods?fieldSelector=spec.nodeName=node-7"
        );
        assert_eq!(expand_env("a${AW_UNSET_VAR_X}b${"), "ab${");
    }

    #[tokio::test]
    async fn a_missing_file_is_a_status_not_a_crash() {
        let index = PodIndex::new(KubernetesConfig {
            pod_list_file: Some("/nonexistent/pods.json".into()),
            ..Default::default()
        });
        index.refresh().await;
        let s = index.status();
        assert!(
            s.state
                .starts_with("unavailable: failed to read the pod list file"),
            "{}",
            s.state
        );
        assert_eq!(s.errors, 1);
        assert!(index.get("u1").is_none());
        assert_eq!(index.status().unknown_pod_lookups, 1);
    }
}
