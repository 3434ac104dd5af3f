//! The mock LLM server: OpenAI Chat Completions, Responses, legacy
//! Completions and Embeddings (also on Azure deployment paths), Anthropic
//! Messages, Gemini generateContent and Ollama's native API over TLS
//! (rustls), HTTP/1.1, with deterministic token usage and test controls by
//! request header. See `tests/clients/README.md` for the CLI and the log.
//!
//! Layout: `app` maps a parsed [`app::Request`] to an [`app::Response`]
//! (provider bodies in `openai` / `anthropic`, numbers in `usage`); `http1`
//! and `http2` are the wire fronts, chosen by ALPN in [`serve`] (`h2` is
//! offered only with `Config::h2`).

pub mod anthropic;
pub mod app;
pub mod gemini;
pub mod http1;
pub mod http2;
pub mod json;
pub mod log;
pub mod ollama;
pub mod openai;
pub mod process;
pub mod responses;
pub mod tls;
pub mod usage;
pub mod websocket;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// When responses are gzip- (or zstd-) encoded (only ever if the request accepts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GzipMode {
    /// Non-streaming bodies, as API servers do.
    #[default]
    Auto,
    /// Nothing.
    Never,
    /// Non-streaming bodies and streams (flushed per event).
    Always,
}

impl std::str::FromStr for GzipMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(GzipMode::Auto),
            "never" => Ok(GzipMode::Never),
            "always" => Ok(GzipMode::Always),
            _ => Err(format!("expected auto, never or always, not {s:?}")),
        }
    }
}

/// Server settings (the CLI flags of `mock-llm`).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `ca.pem` is written here.
    pub state_dir: PathBuf,
    pub log: Option<PathBuf>,
    pub exit_after: Duration,
    pub gzip: GzipMode,
    /// Same modes for zstd (default never); zstd wins over gzip when both apply.
    pub zstd: GzipMode,
    pub chunk_delay_ms: u64,
    /// Plain HTTP/1.1, no TLS (a local model server).
    pub plain: bool,
    /// Offer `h2` in ALPN (before `http/1.1`), so clients that speak HTTP/2 use it.
    pub h2: bool,
    /// Accept permessage-deflate on the Responses WebSocket when the client offers it.
    pub ws_deflate: bool,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            state_dir: state_dir.into(),
            log: None,
            exit_after: Duration::from_secs(900),
            gzip: GzipMode::Auto,
            zstd: GzipMode::Never,
            chunk_delay_ms: 0,
            plain: false,
            h2: false,
            ws_deflate: true,
        }
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 1024;

/// A running server (in this process).
pub struct Server {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Makes the certificates, writes `STATE_DIR/ca.pem`, binds, and serves
    /// in the background until [`Server::stop`] or `exit_after`.
    pub async fn start(config: Config) -> Result<Server> {
        let certs = tls::generate()?;
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating {}", config.state_dir.display()))?;
        // ca.pem last: a reader waiting for it finds the others written.
        for (name, pem) in [
            ("server.pem", &certs.server_chain_pem),
            ("server-key.pem", &certs.server_key_pem),
            ("ca.pem", &certs.ca_pem),
        ] {
            let path = config.state_dir.join(name);
            let tmp = config.state_dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, pem).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        let sink = match &config.log {
            Some(p) => log::LogSink::open(p).with_context(|| format!("opening {}", p.display()))?,
            None => log::LogSink::none(),
        };
        let alpn: &[&[u8]] = if config.h2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let tls_cfg = tls::server_config(&certs, alpn)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let exit_after = config.exit_after;
        let state = app::AppState::new(config, sink);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, tls_cfg, state, stop_rx, exit_after));
        Ok(Server {
            addr,
            ca_pem: certs.ca_pem,
            ca_der: certs.ca_der,
            stop,
            task,
        })
    }

    /// Stops accepting and ends every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (exit-after) or `signal` resolves.
    pub async fn run_until<F: std::future::Future<Output = ()>>(self, signal: F) {
        let Server { stop, mut task, .. } = self;
        tokio::select! {
            _ = &mut task => {}
            _ = signal => {
                let _ = stop.send(true);
                let _ = task.await;
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls_cfg: Arc<rustls::ServerConfig>,
    state: Arc<app::AppState>,
    mut stop: watch::Receiver<bool>,
    exit_after: Duration,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
    let deadline = tokio::time::sleep(exit_after);
    tokio::pin!(deadline);
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = state.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    let conn_id = state.conns.fetch_add(1, Ordering::SeqCst) + 1;
                    if state.config.plain {
                        http1::serve(tcp, &state, conn_id).await;
                    } else {
                        serve(acceptor, tcp, state, conn_id).await;
                    }
                });
            }
        }
    }
    conns.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Handshakes, then hands the connection to the front ALPN chose.
async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    state: Arc<app::AppState>,
    conn_id: u64,
) {
    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    // A client without ALPN gets HTTP/1.1.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        http2::serve(tls, state, conn_id).await;
    } else {
        http1::serve(tls, &state, conn_id).await;
    }
}
