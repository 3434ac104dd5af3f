//! The Grafana dashboard and the alert rules (deploy/grafana, deploy/prometheus) checked by a
//! real Prometheus (Debian's `prometheus`) scraping a real daemon while real agents call the
//! mock: every expression evaluates, the totals panels hold what the ledger holds, and the
//! ceiling and sink alerts fire when provoked.
mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn prometheus_bin() -> PathBuf {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("prometheus is not installed: run `cargo xtask setup` (apt-get install -y prometheus)")
        })
}

/// A Prometheus of its own: scrapes the daemon every second and evaluates the rules every
/// second, on loopback, with its data in a scratch directory.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: Scratch,
}

impl Prometheus {
    fn start(target_port: u16, rules: &Path) -> Prometheus {
        let dir = Scratch::new("prometheus");
        let port = free_port();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: agentwatch\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        p.wait("ready", 30, |p| {
            curl(&[&format!("http://127.0.0.1:{}/-/ready", p.port)]).is_some()
        });
        p
    }

    fn wait(&self, what: &str, secs: u64, pred: impl Fn(&Prometheus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !pred(self) {
            assert!(
                Instant::now() < deadline,
                "prometheus: {what} not within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An instant query; panics with Prometheus's error when it does not evaluate.
    fn query(&self, expr: &str) -> Vec<Value> {
        let out = curl(&[
            "--get",
            "--data-urlencode",
            &format!("query={expr}"),
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
        ])
        .unwrap_or_else(|| panic!("no answer to {expr}"));
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["status"], "success", "{expr}: {v:#}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query whose result is one sample.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    fn firing(&self) -> Vec<Value> {
        let out =
            curl(&[&format!("http://127.0.0.1:{}/api/v1/alerts", self.port)]).expect("alerts");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -sf ARGS`: the body, or None on any failure.
fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every `expr` in a Grafana dashboard's JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The rules file as JSON (the test venv's PyYAML).
fn rules_json(path: &Path) -> Value {
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn dashboard_and_alert_rules_hold_against_a_real_prometheus() {
    let rules = repo().join("deploy/prometheus/alerts.yaml");
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(repo().join("deploy/grafana/agentwatch.json")).unwrap(),
    )
    .unwrap();
    // promtool (shipped with Prometheus) accepts the rules file.
    let promtool = prometheus_bin().with_file_name("promtool");
    let checked = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(checked.status.success(), "{checked:?}");

    // A daemon with the scrape endpoint, a ceiling that kills at 2 calls, and an OTLP sink
    // whose receiver is down (its rows wait in the spool).
    let metrics_port = free_port();
    let dead_port = free_port();
    let dir = Scratch::new("dashboards");
    let config = dir.0.join("agentwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nprometheus = true\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [ceilings]\nsession_calls = 2\naction = \"kill\"\n\
             [sinks.otlp]\nendpoint = \"http://127.0.0.1:{dead_port}/\"\nprotocol = \"http/protobuf\"\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = Daemon::start_in(dir, &["--config", &config]);
    let prom = Prometheus::start(metrics_port, &rules);
    prom.wait("the daemon scraped", 30, |p| {
        p.scalar("up{job=\"agentwatch\"}") == Some(1.0)
    });
    let mock = Mock::start(&[]);
    // One session within its ceiling, one killed at it.
    let (ok_pid, _) = run_client(py_client(
        "tree_agent.py",
        &mock,
        &["--calls", "1", "--tag", "dash-ok"],
    ));
    let mut runaway = py_client(
        "tree_agent.py",
        &mock,
        &["--calls", "5", "--tag", "dash-runaway"],
    );
    let status = runaway
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "killed at its ceiling");
    daemon.wait_for("both ledger rows", |_, l| {
        !ledger_of(l, ok_pid).is_empty() && l.len() >= 2
    });
    let ledger = daemon.ledger();
    let calls: Vec<Value> = daemon
        .calls()
        .into_iter()
        .filter(|c| c["blocked"] != true)
        .collect();
    let cost: f64 = calls.iter().filter_map(|c| c["cost_usd"].as_f64()).sum();
    let tokens: u64 = calls
        .iter()
        .map(|c| u(&c["input_tokens"]) + u(&c["output_tokens"]))
        .sum();
    // Scraped once more after the last row: the totals panels hold the ledger's values.
    prom.wait("the last rows scraped", 30, |p| {
        p.scalar("sum(agentwatch_sessions_closed_total)") == Some(ledger.len() as f64)
    });
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    for e in &exprs {
        prom.query(e);
    }
    let panel = |title: &str| -> String {
        dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let spend = prom
        .scalar(&panel("Spend since each daemon started"))
        .unwrap();
    assert!(approx(spend, cost), "spend {spend} vs calls.jsonl {cost}");
    let tok = prom
        .scalar(&panel("Tokens since each daemon started"))
        .unwrap();
    assert_eq!(tok, tokens as f64, "tokens");
    assert_eq!(
        prom.scalar(&panel("Sessions closed since each daemon started")),
        Some(ledger.len() as f64)
    );
    assert_eq!(prom.scalar(&panel("Live sessions")), Some(0.0));
    // The rules' expressions evaluate too, and the provoked alerts fire: the ceiling hit
    // at once, the stalled sink after its `for: 1m`.
    let rules_v = rules_json(&rules);
    let rules_list = rules_v["groups"][0]["rules"].as_array().unwrap();
    assert!(rules_list.len() >= 6);
    for r in rules_list {
        prom.query(r["expr"].as_str().unwrap());
    }
    fn fired(name: &'static str) -> impl Fn(&Prometheus) -> bool {
        move |p| p.firing().iter().any(|a| a["labels"]["alertname"] == name)
    }
    prom.wait(
        "AgentwatchCeilingHit firing",
        30,
        fired("AgentwatchCeilingHit"),
    );
    let hit = prom
        .firing()
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "AgentwatchCeilingHit")
        .unwrap();
    assert_eq!(
        hit["labels"]["agentwatch_ceiling"], "session_calls",
        "{hit:#}"
    );
    assert_eq!(
        hit["labels"]["agentwatch_ceiling_action"], "kill",
        "{hit:#}"
    );
    prom.wait(
        "AgentwatchSinkStalled firing",
        120,
        fired("AgentwatchSinkStalled"),
    );
    let stalled = prom
        .firing()
        .into_iter()
        .find(|a| a["labels"]["alertname"] == "AgentwatchSinkStalled")
        .unwrap();
    assert_eq!(stalled["labels"]["name"], "otlp", "{stalled:#}");
    // Nothing that was not provoked.
    for a in prom.firing() {
        let name = a["labels"]["alertname"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            ["AgentwatchCeilingHit", "AgentwatchSinkStalled"].contains(&name.as_str()),
            "{a:#}"
        );
    }
    // The scrape endpoint's own conventions: HELP on every metric, a build-info metric.
    let text = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]).unwrap();
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(types, helps, "{text}");
    assert!(text.contains("agentwatch_build_info{version="), "{text}");
    // promtool's linter: counters end in `_total`, base units, no abbreviations.
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {lint:?}"
    );
    // The daemon's own counts are counters, its states gauges: the calls it read equal the
    // calls in the JSONL file (blocked attempts aside), and no session is live now.
    let family = |name: &str| -> (String, Option<f64>) {
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
            .unwrap_or_else(|| panic!("no {name}: {text}"))
            .to_string();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok());
        (kind, value)
    };
    let (kind, llm_calls) = family("agentwatch_daemon_pipeline_llm_calls_total");
    assert_eq!(kind, "counter");
    assert_eq!(llm_calls, Some(calls.len() as f64), "{text}");
    assert_eq!(family("agentwatch_daemon_live_sessions").0, "gauge");
    assert_eq!(
        family("agentwatch_kernel_drops_total").0,
        "counter",
        "{text}"
    );
}
