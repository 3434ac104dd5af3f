//! The agentwatch command line: the daemon (`run`) and its clients.
use std::path::PathBuf;
use std::process::ExitCode;

use agentwatch::config::Config;
use agentwatch::control::{self, Reply, Request};
use clap::{Parser, Subcommand};

const DEFAULT_SOCKET: &str = "/run/agentwatch/agentwatch.sock";

#[derive(Parser)]
#[command(version, about = "LLM agents, accounted from the kernel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (root).
    Run {
        /// TOML config; every field has a default, so this is optional.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where calls.jsonl and ledger.jsonl go [default: /var/lib/agentwatch].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Control socket [default: /run/agentwatch/agentwatch.sock].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Probes, libraries, counters and drops; exits 0 only when every probe is attached.
    Status {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
        /// Exit 0 as soon as the daemon answers (a liveness probe), whatever its probes' state.
        #[arg(long)]
        ping: bool,
    },
    /// What the daemon needs from its host (capabilities, host PID namespace, paths) and
    /// whether this process has it; exits 0 only when everything is present.
    CheckPrivileges {
        /// The config whose data directory and socket are checked.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove the kernel side a stopped daemon left pinned (its programs, probes and maps);
    /// a daemon stopped with SIGTERM leaves it for the next one, Ctrl-C takes it along.
    Unpin {
        /// The config whose `probes.pin_root` is cleared [default: /sys/fs/bpf/agentwatch].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// How the probes would cover an executable or library (the analysis the daemon runs when
    /// it is exec'd); exits 0 when its TLS is captured exactly. Needs no daemon.
    Inspect { binary: PathBuf },
    /// Live sessions: id, root, agents, depth, calls, tokens, cost.
    Sessions {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Continue a paused session (its held call goes out), optionally raising its limits.
    Approve {
        session: String,
        /// Add this many USD to the session's ceiling.
        #[arg(long)]
        raise_usd: Option<f64>,
        /// Add this many tokens to the session's ceiling.
        #[arg(long)]
        raise_tokens: Option<u64>,
        /// Add this many calls to the session's ceiling.
        #[arg(long)]
        raise_calls: Option<u64>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// SIGKILL a session's whole process tree, tool processes included.
    Kill {
        session: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Re-read the ceilings of the daemon's config file (same as SIGHUP).
    Reload {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// What a session's agents did besides calling LLMs: the tools (programs) they ran,
    /// with exit status, grouped per agent. Open and closed sessions (from actions.jsonl).
    Actions {
        /// Session id, or a unique prefix of it.
        session: String,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The agent tree of one session (or of every live session), with tokens and cost.
    Tree {
        session: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENTWATCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (req, socket, json) = match cli.command {
        Command::Run {
            config,
            data_dir,
            socket,
        } => {
            let mut cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(s) = socket {
                cfg.socket = s;
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agentwatch::daemon::run(cfg, config))?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status {
            socket,
            json: _,
            ping: true,
        } => {
            control::request(&socket, &Request::Status)?;
            println!("agentwatch is running");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Status { socket, json, .. } => (Request::Status, socket, json),
        Command::CheckPrivileges { config, json } => {
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let report = agentwatch::privileges::check(&cfg);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            return Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Unpin { config } => {
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let removed = agentwatch::probes::pins::unpin_all(&cfg.probes.pin_root)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", cfg.probes.pin_root.display());
            }
            for dir in removed {
                println!("removed {}", dir.display());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Inspect { binary } => {
            let (exact, what) = agentwatch::probes::inspect(&binary);
            println!("{}: {what}", binary.display());
            return Ok(if exact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Sessions { socket, json } => (Request::Sessions, socket, json),
        Command::Tree {
            session,
            socket,
            json,
        } => (Request::Tree { session }, socket, json),
        Command::Approve {
            session,
            raise_usd,
            raise_tokens,
            raise_calls,
            socket,
        } => (
            Request::Approve {
                session,
                raise_usd,
                raise_tokens,
                raise_calls,
            },
            socket,
            true,
        ),
        Command::Kill { session, socket } => (Request::Kill { session }, socket, true),
        Command::Actions {
            session,
            socket,
            json,
        } => (Request::Actions { session }, socket, json),
        Command::Reload { socket } => (Request::Reload, socket, true),
    };
    let answer = control::request(&socket, &req)?;
    let reply = Reply::read(&req, answer.clone()).map_err(control::ControlError::Answer)?;
    if let Reply::Refused(refused) = &reply {
        let err = serde_json::Value::from(refused.error.as_str());
        anyhow::bail!("the daemon refused the request: {err}");
    }
    if json {
        // As the daemon sent it, fields this CLI does not know included.
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", control::render::render(&reply));
    }
    let ok = match &reply {
        Reply::Status(status) => status.ok,
        _ => true,
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
