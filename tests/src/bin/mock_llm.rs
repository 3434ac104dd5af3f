//! `mock-llm`: the mock OpenAI / Anthropic / Gemini / Ollama API server for agentwatch's
//! integration tests. See `tests/clients/README.md`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agentwatch_tests::mock::{Config, GzipMode, Server};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "mock-llm",
    about = "Mock OpenAI/Anthropic/Gemini/Ollama API server over TLS for tests"
)]
struct Args {
    /// Address to listen on (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Directory for ca.pem (created if missing).
    #[arg(long)]
    state_dir: PathBuf,
    /// Request log, one JSON line per request served.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Stop by itself after this many seconds.
    #[arg(long, default_value_t = 900)]
    exit_after_secs: u64,
    /// auto: gzip non-streaming bodies when accepted; always: streams too; never.
    #[arg(long, default_value = "auto")]
    gzip: GzipMode,
    /// auto: zstd non-streaming bodies when accepted; always: streams too; never (default).
    /// Wins over gzip when both apply.
    #[arg(long, default_value = "never")]
    zstd: GzipMode,
    /// Delay between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Serve plain HTTP (a local model server: Ollama, vLLM, llama.cpp) instead of TLS.
    #[arg(long)]
    plain: bool,
    /// Offer HTTP/2 (ALPN h2, then http/1.1) on TLS connections.
    #[arg(long)]
    h2: bool,
    /// Refuse permessage-deflate on the Responses WebSocket (`GET /v1/responses`).
    #[arg(long)]
    no_ws_deflate: bool,
}

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mock-llm: runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(async move {
        let config = Config {
            listen: args.listen,
            state_dir: args.state_dir,
            log: args.log,
            exit_after: Duration::from_secs(args.exit_after_secs),
            gzip: args.gzip,
            zstd: args.zstd,
            chunk_delay_ms: args.chunk_delay_ms,
            plain: args.plain,
            h2: args.h2,
            ws_deflate: !args.no_ws_deflate,
        };
        let server = match Server::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mock-llm: {e:#}");
                return 1;
            }
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "LISTENING {}", server.addr);
            let _ = out.flush();
        }
        server.run_until(shutdown_signal()).await;
        0
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
