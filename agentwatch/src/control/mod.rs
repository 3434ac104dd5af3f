//! The control socket: a root-only Unix socket speaking one JSON request and one JSON
//! response per connection. The CLI is its only client; nothing listens on the network.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

pub mod render;
pub mod replies;
pub mod top;

pub use replies::Reply;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Sessions,
    Tree {
        session: Option<String>,
    },
    /// Continue a paused session, optionally raising its limits.
    Approve {
        session: String,
        raise_usd: Option<f64>,
        raise_tokens: Option<u64>,
        raise_calls: Option<u64>,
    },
    /// SIGKILL a session's whole process tree.
    Kill {
        session: String,
    },
    /// SIGSTOP a session's whole process tree, as a ceiling with action `pause` would
    /// (`approve` continues it).
    Pause {
        session: String,
    },
    /// Re-read the config file's ceilings.
    Reload,
    /// What a session's processes did: the tools they ran (from `actions.jsonl`).
    Actions {
        /// The session id, or a unique prefix of it.
        session: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("failed to create the control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the agentwatch daemon at {path}: {source} (is `agentwatch run` running, and are you root?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon sent an invalid answer: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Binds the socket, root-only: the directory is 0700 and the socket 0600.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: dir.into(),
            source,
        })?;
    }
    // A socket left by a daemon that died is stale; a live daemon answers.
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::Bind {
                path: path.into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another agentwatch daemon is running",
                ),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Bind {
            path: path.into(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves requests until the listener is dropped; `answer` builds each response.
pub async fn serve<F>(listener: tokio::net::UnixListener, answer: F)
where
    F: Fn(Request) -> Reply + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Root-only: refuse peers that are not uid 0 even if permissions were changed.
        if stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX) != 0 {
            continue;
        }
        let answer = answer.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take_limit());
            let reply = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => answer(req),
                    Err(e) => Reply::refused(format!("bad request: {e}")),
                },
                Err(e) => Reply::refused(format!("read failed: {e}")),
            };
            let mut bytes = serde_json::to_vec(&reply.to_json()).unwrap_or_default();
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

trait TakeLimit {
    fn take_limit(self) -> tokio::io::Take<Self>
    where
        Self: Sized;
}

impl<T: tokio::io::AsyncRead> TakeLimit for T {
    /// Requests are tiny; a client cannot make the daemon buffer more than 64 KiB.
    fn take_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 64 * 1024)
    }
}

/// Client side, used by the CLI: the daemon's answer as sent (read it with `Reply::read`).
pub fn request(path: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let io = |source| ControlError::Io {
        path: path.into(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.into(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    Ok(serde_json::from_str(&answer)?)
}
