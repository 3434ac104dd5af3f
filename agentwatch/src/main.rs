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
    /// Output format of the commands that print: `json` (as `--json`) or `wide` (more
    /// columns where there are more to show).
    #[arg(short = 'o', long = "output", value_enum, global = true)]
    output: Option<Output>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Json,
    Wide,
}

/// Where the commands that read the daemon's files (`ledger`, `calls`) find them.
#[derive(clap::Args)]
struct DataDirArgs {
    /// The daemon's data directory [default: the config's, else /var/lib/agentwatch].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The config whose `data_dir` is read.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl DataDirArgs {
    /// `--data-dir`, else the `--config` file's `data_dir`, else the default one.
    fn resolve(self) -> anyhow::Result<PathBuf> {
        Ok(match (self.data_dir, self.config) {
            (Some(d), _) => d,
            (None, Some(path)) => Config::load(&path)?.data_dir,
            (None, None) => Config::default().data_dir,
        })
    }
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
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
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
    /// Check a config as `run` would (keys, rule patterns, prices, sinks' settings and URLs)
    /// without root, probes or network; exits 0 when `run` would accept it.
    Validate {
        /// The config file [default: none, the embedded defaults].
        #[arg(long)]
        config: Option<PathBuf>,
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
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// Closed sessions too (from the ledger files; the live ones when the daemon answers).
        #[arg(long, conflicts_with = "watch")]
        all: bool,
        /// With `--all`: closed sessions that ended since (30m, 12h, 7d, a date, RFC 3339)
        /// [default: 1d].
        #[arg(long, requires = "all")]
        since: Option<String>,
        #[command(flatten)]
        files: DataDirArgs,
    },
    /// A live view: sessions by spend rate, the host's day against its ceiling, the selected
    /// session's agent tree; keys approve (a) and kill (k) a session after a confirmation.
    Top {
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
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
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// SIGKILL a session's whole process tree, tool processes included.
    Kill {
        session: String,
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// SIGSTOP a session's whole process tree, as a `pause` ceiling would; `approve`
    /// continues it.
    Pause {
        session: String,
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Re-read the ceilings of the daemon's config file (same as SIGHUP).
    Reload {
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What a session's agents did besides calling LLMs: the tools (programs) they ran,
    /// with exit status, grouped per agent. Open and closed sessions (from actions.jsonl).
    Actions {
        /// Session id, or a unique prefix of it.
        session: String,
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// What agents cost over a time range, from the data directory's files (rotated ones
    /// too): closed sessions, or calls grouped `--by` model, provider, root, namespace or day.
    /// Needs no daemon.
    Ledger {
        /// From: a duration back from now (30m, 12h, 7d, 2w), a date (2026-12-01, UTC) or an
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Until (excluded), same forms.
        #[arg(long)]
        until: Option<String>,
        /// Group the calls that started in the range.
        #[arg(long, value_enum)]
        by: Option<agentwatch::history::By>,
        #[command(flatten)]
        files: DataDirArgs,
        #[arg(long)]
        json: bool,
    },
    /// Every call of one session (open or closed), from the data directory's files.
    Calls {
        /// Session id, or a unique prefix of it.
        session: String,
        #[command(flatten)]
        files: DataDirArgs,
        #[arg(long)]
        json: bool,
    },
    /// The agent tree of one session (or of every live session), with tokens and cost.
    Tree {
        /// Session id, or a unique prefix of it; every open session when absent.
        session: Option<String>,
        #[arg(long, env = "AGENTWATCH_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
        /// Redraw every second until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
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
            eprintln!("agentwatch: {}", message(&e));
            // 3: the daemon is not reachable (a script can tell "not running" from a refusal).
            let unreachable = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<control::ControlError>(),
                    Some(control::ControlError::Connect { .. })
                )
            });
            ExitCode::from(if unreachable { 3 } else { 1 })
        }
    }
}

/// The error and its causes, each said once (most errors name their cause already).
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out_json = cli.output == Some(Output::Json);
    let wide = cli.output == Some(Output::Wide);
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
            if json || out_json {
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
        Command::Validate { config } => {
            let cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            // Some sinks' clients want a runtime to exist when they are built.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let problems = rt.block_on(async { cfg.problems() });
            let name = config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the default configuration".into());
            if problems.is_empty() {
                println!("{name}: valid");
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                eprintln!("{name}: {p}");
            }
            return Ok(ExitCode::FAILURE);
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
        Command::Ledger {
            since,
            until,
            by,
            files,
            json,
        } => {
            use agentwatch::history;
            let data_dir = files.resolve()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as i128;
            let range = history::Range::parse(since.as_deref(), until.as_deref(), now)?;
            match by {
                Some(by) => {
                    let groups = history::groups(&data_dir, range, by)?;
                    if json || out_json {
                        println!("{}", serde_json::to_string_pretty(&groups)?);
                    } else {
                        print!("{}", history::render_groups(by, range, &groups));
                    }
                }
                None => {
                    let sessions = history::sessions(&data_dir, range)?;
                    if json || out_json {
                        println!("{}", serde_json::to_string_pretty(&sessions)?);
                    } else {
                        print!("{}", history::render_sessions(range, &sessions));
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Calls {
            session,
            files,
            json,
        } => {
            let data_dir = files.resolve()?;
            let (id, calls) =
                agentwatch::history::calls_of(&data_dir, &session).map_err(anyhow::Error::msg)?;
            if json || out_json {
                println!("{}", serde_json::to_string_pretty(&calls)?);
            } else {
                print!("{}", agentwatch::history::render_calls(&id, &calls));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Top { socket } => {
            control::top::run(&socket)?;
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
        Command::Sessions {
            socket,
            watch: true,
            ..
        } => return watch(&socket, &Request::Sessions),
        Command::Tree {
            session,
            socket,
            watch: true,
            ..
        } => return watch(&socket, &Request::Tree { session }),
        Command::Sessions {
            socket,
            json,
            all: true,
            since,
            files,
            ..
        } => {
            use agentwatch::history;
            let data_dir = files.resolve()?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as i128;
            let range = history::Range::parse(Some(since.as_deref().unwrap_or("1d")), None, now)?;
            let closed = history::sessions(&data_dir, range)?;
            // The live ones when the daemon answers; the files alone otherwise.
            let live = control::request(&socket, &Request::Sessions)
                .ok()
                .and_then(|a| Reply::read(&Request::Sessions, a).ok());
            if json || out_json {
                let live = match &live {
                    Some(Reply::Sessions(l)) => serde_json::to_value(&l.sessions)?,
                    _ => serde_json::Value::Null,
                };
                let all = serde_json::json!({ "live": live, "closed": closed });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                match &live {
                    Some(reply) => {
                        println!("live sessions");
                        print!("{}", control::render::render_with(reply, wide));
                    }
                    None => println!(
                        "live sessions: the daemon is not reachable at {} (closed ones below)",
                        socket.display()
                    ),
                }
                print!("\n{}", history::render_sessions(range, &closed));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Sessions { socket, json, .. } => (Request::Sessions, socket, json),
        Command::Tree {
            session,
            socket,
            json,
            ..
        } => (Request::Tree { session }, socket, json),
        Command::Approve {
            session,
            raise_usd,
            raise_tokens,
            raise_calls,
            socket,
            json,
        } => (
            Request::Approve {
                session,
                raise_usd,
                raise_tokens,
                raise_calls,
            },
            socket,
            json,
        ),
        Command::Kill {
            session,
            socket,
            json,
        } => (Request::Kill { session }, socket, json),
        Command::Pause {
            session,
            socket,
            json,
        } => (Request::Pause { session }, socket, json),
        Command::Actions {
            session,
            socket,
            json,
        } => (Request::Actions { session }, socket, json),
        Command::Reload { socket, json } => (Request::Reload, socket, json),
    };
    let answer = control::request(&socket, &req)?;
    let reply = Reply::read(&req, answer.clone()).map_err(control::ControlError::Answer)?;
    if let Reply::Refused(refused) = &reply {
        let err = serde_json::Value::from(refused.error.as_str());
        anyhow::bail!("the daemon refused the request: {err}");
    }
    if json || out_json {
        // As the daemon sent it, fields this CLI does not know included.
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", control::render::render_with(&reply, wide));
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

/// `--watch`: the answer to `req`, redrawn every second (the screen cleared first) until
/// interrupted, or an error (the daemon went away: exit 3).
fn watch(socket: &std::path::Path, req: &Request) -> anyhow::Result<ExitCode> {
    loop {
        let answer = control::request(socket, req)?;
        let reply = Reply::read(req, answer).map_err(control::ControlError::Answer)?;
        if let Reply::Refused(refused) = &reply {
            anyhow::bail!("the daemon refused the request: {}", refused.error);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or_default();
        let at = agentwatch::sessions::clock::format_unix_ns(now);
        print!(
            "\x1b[H\x1b[2J{} (every 1 s; Ctrl-C to stop)\n{}",
            at.get(..19).unwrap_or_default(),
            control::render::render(&reply)
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
