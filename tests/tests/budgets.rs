//! Privileged end-to-end tests of budgets: prices that are right and ceilings that never fail
//! open. Real SDK clients, real probes; the mock's log is the witness of what left the host,
//! and LiteLLM's published price file (fetched by `cargo xtask test`) is the reference the
//! daemon's prices are checked against.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        "{what}: {a} != {b}"
    );
}

/// A model no price lists, on the default `unpriced = "highest"`: each call counts toward
/// `session_usd` at the highest input and output rates listed, so the dollar ceiling stops
/// the loop before the call after the crossing one, as it would a priced model.
#[test]
fn an_unpriced_model_is_stopped_by_a_dollar_ceiling() {
    let daemon = Daemon::with_config(
        "budgets",
        "[ceilings]\nsession_usd = 1.0\naction = \"kill\"\n",
    );
    let pricing = daemon.cli_json(&["status"])["pricing"].clone();
    assert_eq!(pricing["unpriced"], "highest", "{pricing:#}");
    let (hi_in, hi_out) = (
        f(&pricing["highest_input_per_mtok"]),
        f(&pricing["highest_output_per_mtok"]),
    );
    // 1,000 tokens in and out per call.
    let charge = (1000.0 * hi_in + 1000.0 * hi_out) / 1e6;
    assert!(charge > 0.0 && charge < 1.0, "{pricing:#}");
    let crossing = (1.0 / charge).ceil() as usize;
    let mock = Mock::start(&[]);
    let usage = r#"{"input_tokens":1000,"output_tokens":1000}"#;
    let model = "frontier-x-2027-preview";
    let mut child = spawn_quiet(&mut py_client(
        "openai_chat.py",
        &mock,
        &[
            "--calls", "30", "--tag", "unpriced", "--usage", usage, "--model", model,
        ],
    ));
    let pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    daemon.wait_for("the ledger row", |_, l| {
        l.iter().any(|r| u(&r["root_pid"]) == pid as u64)
    });
    assert_eq!(
        mock.served_with_tag("unpriced").len(),
        crossing,
        "calls that left the host (each counted ${charge})"
    );
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| u(&c["root_pid"]) == pid as u64 && c["blocked"] != true)
        .collect();
    assert_eq!(calls.len(), crossing);
    for c in &calls {
        assert!(c["cost_usd"].is_null(), "{c}");
        assert!(c.get("priced_as").is_none(), "{c}");
        close(f(&c["unpriced_charge_usd"]), charge, "unpriced_charge_usd");
    }
    let row = daemon
        .ledger()
        .into_iter()
        .find(|r| u(&r["root_pid"]) == pid as u64)
        .unwrap();
    assert_eq!(row["outcome"], "killed", "{row}");
    assert_eq!(u(&row["unpriced_calls"]), crossing as u64, "{row}");
    assert_eq!(f(&row["total_cost_usd"]), 0.0, "{row}");
    close(
        f(&row["unpriced_charge_usd"]),
        charge * crossing as f64,
        "ledger unpriced_charge_usd",
    );
    // `status` names the model, with its calls.
    let pricing = daemon.cli_json(&["status"])["pricing"].clone();
    let seen = pricing["unpriced_models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == model)
        .unwrap_or_else(|| panic!("{pricing:#}"))
        .clone();
    assert_eq!(u(&seen["calls"]), crossing as u64, "{pricing:#}");
}

/// `unpriced = "block"`: the first call of an unpriced model stops its session like a ceiling
/// with action `block`; the agent lives on, and its next call fails before leaving the host.
#[test]
fn unpriced_block_stops_the_session_at_its_first_unpriced_call() {
    let daemon = Daemon::with_config("budgets", "[ceilings]\nunpriced = \"block\"\n");
    let mock = Mock::start(&[]);
    let mut child = spawn_quiet(&mut py_client(
        "openai_chat.py",
        &mock,
        &[
            "--calls",
            "5",
            "--tag",
            "unpriced-block",
            "--model",
            "house-llm-7b",
            "--timeout",
            "10",
        ],
    ));
    let pid = child.id();
    let status = wait_exit(&mut child, Duration::from_secs(90));
    assert!(!status.success(), "its second call failed: {status:?}");
    assert_eq!(status.signal(), None, "not killed: {status:?}");
    assert_eq!(mock.served_with_tag("unpriced-block").len(), 1);
    let row = daemon.ledger_row_of(pid);
    assert_eq!(row["outcome"], "blocked", "{row}");
    assert_eq!(u(&row["call_count"]), 1, "{row}");
    assert!(u(&row["ceiling_hits"]) >= 1, "{row}");
    // The hit names the ceiling and the model.
    let log = daemon.stop();
    assert!(
        log.contains("unpriced: no price for model house-llm-7b (block)"),
        "{log}"
    );
}

/// `pricing_file` loads LiteLLM's published file: a call of a model named as Bedrock names it,
/// with more than 200k input tokens and 1-hour cache writes, costs exactly what that file's
/// rates say (the tier's rates for every token), and the row names the file's entry.
#[test]
fn a_litellm_price_file_prices_a_call_exactly_above_its_200k_tier() {
    let file = std::env::var("LITELLM_PRICES")
        .expect("LITELLM_PRICES: LiteLLM's price file (cargo xtask test fetches it)");
    let prices: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let model = "anthropic.claude-sonnet-4-5-20250929-v1:0";
    let e = &prices[model];
    let rate = |k: &str| f(&e[k]);
    // 250,000 input tokens = 125,000 uncached + 100,000 cache reads + 25,000 cache writes
    // (10,000 of them with the 1-hour TTL); 1,000 output tokens.
    let expected = 125_000.0 * rate("input_cost_per_token_above_200k_tokens")
        + 100_000.0 * rate("cache_read_input_token_cost_above_200k_tokens")
        + 15_000.0 * rate("cache_creation_input_token_cost_above_200k_tokens")
        + 10_000.0 * rate("cache_creation_input_token_cost_above_1hr_above_200k_tokens")
        + 1_000.0 * rate("output_cost_per_token_above_200k_tokens");
    let daemon = Daemon::with_config("budgets", &format!("pricing_file = \"{file}\"\n"));
    let info = daemon.cli_json(&["status"])["pricing"].clone();
    assert!(u(&info["file_models"]) > 1000, "{info:#}");
    let mock = Mock::start(&[]);
    let usage = r#"{"input_tokens":250000,"output_tokens":1000,"cache_read_tokens":100000,"cache_write_tokens":25000,"cache_write_1h_tokens":10000}"#;
    let (pid, _) = run_client(py_client(
        "anthropic_messages.py",
        &mock,
        &[
            "--tag", "litellm", "--usage", usage, "--model", model, "--stream",
        ],
    ));
    daemon.wait_for("the call's row", |c, _| {
        c.iter().any(|c| u(&c["pid"]) == pid as u64)
    });
    let row = daemon
        .calls()
        .into_iter()
        .find(|c| u(&c["pid"]) == pid as u64)
        .unwrap();
    assert_eq!(u(&row["input_tokens"]), 250_000, "{row}");
    assert_eq!(u(&row["cache_write_tokens"]), 25_000, "{row}");
    assert_eq!(u(&row["cache_write_1h_tokens"]), 10_000, "{row}");
    assert_eq!(row["priced_as"], model, "the file's entry, as sent: {row}");
    close(f(&row["cost_usd"]), expected, "cost_usd");
}

/// A local HTTP receiver (webhook, Slack): records each request's body, answers 200.
struct Receiver {
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start_on(port: u16) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let b = b.clone();
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let mut out = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    // Keep-alive: requests one after another on the connection.
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            b.lock().unwrap().push(v);
                        }
                        let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        Receiver { bodies, stop }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Alertmanager {
    fn start() -> Alertmanager {
        let bin = std::path::Path::new("/usr/bin/prometheus-alertmanager");
        assert!(
            bin.exists(),
            "Alertmanager is not installed: run `cargo xtask setup --tests` (apt-get install -y prometheus-alertmanager)"
        );
        let dir = Scratch::new("alertmanager");
        let cfg = dir.0.join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: none\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("alertmanager.log")).unwrap())
            .spawn()
            .unwrap();
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while am.alerts().is_none() {
            assert!(Instant::now() < deadline, "Alertmanager did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        am
    }

    fn alerts(&self) -> Option<Vec<Value>> {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/api/v2/alerts", self.port),
            ])
            .output()
            .ok()?;
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()
            .cloned()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, secs: u64, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `warn_at`, the stop, the reminder of a paused session and its timeout each reach the
/// notification sinks: a webhook receiver that is down while they happen gets every one from
/// the spool once it is up; a Slack-shaped receiver gets their text; a real Alertmanager holds
/// them as alerts.
#[test]
fn warnings_and_stops_are_notified_even_through_a_receiver_that_was_down() {
    let (webhook_port, slack_port) = (free_port(), free_port());
    let slack = Receiver::start_on(slack_port);
    let am = Alertmanager::start();
    let daemon = Daemon::with_config(
        "budgets",
        &format!(
            "[ceilings]\nsession_usd = 0.5\naction = \"pause\"\nwarn_at = 0.5\n\
         pause_timeout_secs = 6\nrenotify_secs = 2\n\
         [sinks.webhook]\nurl = \"http://127.0.0.1:{webhook_port}/hook\"\n\
         [sinks.slack]\nurl = \"http://127.0.0.1:{slack_port}/services/T0/B0/x\"\n\
         [sinks.alertmanager]\nurl = \"http://127.0.0.1:{}\"\n",
            am.port
        ),
    );
    let mock = Mock::start(&[]);
    // $0.15 a call (1M input tokens of gpt-4o-mini): the 2nd call passes half the ceiling,
    // the 4th crosses it and the loop is paused; 6 s later it is killed.
    let usage = r#"{"input_tokens":1000000,"output_tokens":0}"#;
    let mut child = spawn_quiet(&mut py_client(
        "openai_chat.py",
        &mock,
        &[
            "--calls",
            "30",
            "--tag",
            "notify",
            "--usage",
            usage,
            "--model",
            "gpt-4o-mini",
        ],
    ));
    let status = wait_exit(&mut child, Duration::from_secs(60));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(mock.served_with_tag("notify").len(), 4);
    let events = |bodies: &[Value], key: &str| -> Vec<String> {
        bodies
            .iter()
            .filter_map(|b| b[key].as_str().map(str::to_string))
            .collect()
    };
    // The webhook receiver comes up now: the spooled notices arrive, in order.
    let webhook = Receiver::start_on(webhook_port);
    wait_until("the webhook's notices", 60, || {
        events(&webhook.bodies(), "event").contains(&"pause_timeout".to_string())
    });
    let got = events(&webhook.bodies(), "event");
    let first = |e: &str| got.iter().position(|g| g == e);
    assert!(
        first("warn") < first("pause")
            && first("pause") < first("paused")
            && first("paused") < first("pause_timeout"),
        "{got:?}"
    );
    let warn = webhook
        .bodies()
        .into_iter()
        .find(|b| b["event"] == "warn")
        .unwrap();
    assert_eq!(warn["ceiling"], "session_usd", "{warn}");
    close(f(&warn["value"]), 0.3, "warned at the 2nd call's spend");
    close(f(&warn["limit"]), 0.5, "limit");
    let sink = daemon.cli_json(&["status"])["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "webhook")
        .cloned()
        .unwrap();
    assert!(u(&sink["failed_requests"]) > 0, "it was down: {sink:#}");
    // Slack: the same notices as text.
    wait_until("the Slack texts", 20, || slack.bodies().len() >= got.len());
    let texts = events(&slack.bodies(), "text");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("reached session_usd") && t.contains("paused")),
        "{texts:?}"
    );
    // Alertmanager: alerts labelled by event and session.
    wait_until("the alerts", 20, || {
        am.alerts()
            .unwrap_or_default()
            .iter()
            .any(|a| a["labels"]["event"] == "pause_timeout")
    });
    let alerts = am.alerts().unwrap();
    for e in ["warn", "pause", "pause_timeout"] {
        assert!(
            alerts
                .iter()
                .any(|a| a["labels"]["event"] == e
                    && a["labels"]["alertname"] == "AgentwatchSession"),
            "{e}: {alerts:#?}"
        );
    }
    let row = daemon.ledger();
    assert!(row.iter().any(|r| r["outcome"] == "killed"), "{row:?}");
}
