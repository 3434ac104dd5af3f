//! `cargo xtask soak [--minutes N]`: the daemon under a long, wide load, measured.
//!
//! 1,000 concurrent agent sessions (tests/clients/soak/soak_agent.c on the system's libssl,
//! one keep-alive TLS connection each, a call every ~10 s) and 10,000 short-lived tool
//! processes (each agent runs /bin/true now and then) against the mock, for N minutes (default
//! 10). The daemon's RSS and CPU are sampled every second. At the end: every call the mock
//! served has its row (by agent), the drop counters, and the figures are written to SOAK.md,
//! soak.csv and soak.png (RSS and CPU over time) beside BENCHMARKS.md.
//!
//! Options: `--minutes N`, `--sessions N` (default 1000), `--tools N` (default 10000).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentwatch_tests::harness::{Proc, env_path, repo, start_mock};
use agentwatch_tests::history::read_history;
use serde_json::Value;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn status(bin: &Path, sock: &Path) -> Value {
    let out = Command::new(bin)
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("agentwatch status");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// (VmRSS, RssAnon) in MiB, and utime and stime in clock ticks, of `pid`.
fn sample(pid: u32) -> (f64, f64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (field("VmRSS:"), field("RssAnon:"), ticks(11), ticks(12))
}

struct Sample {
    t: f64,
    rss: f64,
    anon: f64,
    cpu_pct: f64,
    /// Of `cpu_pct`, in the kernel (system time).
    sys_pct: f64,
    live_agents: usize,
}

fn main() {
    let minutes = arg("--minutes", 10);
    let sessions = arg("--sessions", 1000) as usize;
    let tools = arg("--tools", 10_000);
    let scratch = std::env::temp_dir().join(format!("agentwatch-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let bin = env_path("AGENTWATCH_BIN", "target/release/agentwatch");
    let _ = Command::new(&bin)
        .arg("unpin")
        .stdout(Stdio::null())
        .status();

    // The agent, built against the system's libssl.
    let agent = scratch.join("soak_agent");
    let ok = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&agent)
        .arg(repo().join("tests/clients/soak/soak_agent.c"))
        .args(["-lssl", "-lcrypto"])
        .status()
        .expect("gcc (cargo xtask setup --tests installs it, with libssl-dev)")
        .success();
    assert!(ok, "building soak_agent failed");

    // So many agents need file descriptors: the mock holds one connection per agent.
    let limit = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };

    let (_mock, port) = start_mock(&scratch, minutes * 60 + 600);

    let sock = scratch.join("aw.sock");
    let data = scratch.join("data");
    let daemon = Proc(
        Command::new(&bin)
            .arg("run")
            .arg("--data-dir")
            .arg(&data)
            .arg("--socket")
            .arg(&sock)
            .env("AGENTWATCH_LOG", "warn")
            .stderr(std::fs::File::create(scratch.join("daemon.log")).unwrap())
            .spawn()
            .expect("start agentwatch"),
    );
    let daemon_pid = daemon.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&bin, &sock).is_null() {
        assert!(Instant::now() < deadline, "agentwatch did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each agent: a call every ~10 s for the run (minus the start ramp), a tool every few.
    let interval_ms = 10_000u64;
    let ramp = Duration::from_secs(60.min(minutes * 60 / 4));
    let calls = ((minutes * 60).saturating_sub(ramp.as_secs()) * 1000 / interval_ms).max(2);
    let tool_every = (calls * sessions as u64 / tools.max(1)).max(1);
    eprintln!(
        "soak: {sessions} agents x {calls} calls (one per ~{interval_ms} ms), a tool every {tool_every} calls, over {minutes} min"
    );
    let start = Instant::now();
    let (mut rows, mut agents): (Vec<Sample>, BTreeMap<String, (u32, Child)>) =
        (Vec::new(), BTreeMap::new());
    let mut last = sample(daemon_pid);
    let mut next_sample = start;
    let tick = libc_ticks();
    let mut done = std::collections::BTreeSet::new();
    let mut launched = 0usize;
    let mut failed = 0usize;
    let mut finished = 0usize;
    loop {
        // Start agents evenly over the ramp.
        let due = ((start.elapsed().as_secs_f64() / ramp.as_secs_f64()) * sessions as f64)
            .ceil()
            .min(sessions as f64) as usize;
        while launched < due {
            let tag = format!("soak-{launched}");
            let child = Command::new(&agent)
                .arg(port.to_string())
                .arg(scratch.join("ca.pem"))
                .arg(calls.to_string())
                .arg(interval_ms.to_string())
                .arg(tool_every.to_string())
                .arg(&tag)
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start soak_agent");
            agents.insert(tag, (child.id(), child));
            launched += 1;
        }
        for (tag, (_, child)) in agents.iter_mut() {
            if done.contains(tag) {
                continue;
            }
            if let Ok(Some(st)) = child.try_wait() {
                done.insert(tag.clone());
                finished += 1;
                if !st.success() {
                    failed += 1;
                }
            }
        }
        let live = launched - finished;
        if Instant::now() >= next_sample {
            let now = sample(daemon_pid);
            let user = now.2.saturating_sub(last.2) as f64 / tick * 100.0;
            let sys = now.3.saturating_sub(last.3) as f64 / tick * 100.0;
            rows.push(Sample {
                t: start.elapsed().as_secs_f64(),
                rss: now.0,
                anon: now.1,
                cpu_pct: user + sys,
                sys_pct: sys,
                live_agents: live,
            });
            last = now;
            next_sample += Duration::from_secs(1);
        }
        if launched == sessions && finished == sessions {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(minutes * 60 * 2 + 300),
            "the agents did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ran = start.elapsed();

    // Every served call has its row: by tag (mock) and by agent pid (daemon).
    let served = read_lines(&scratch.join("mock.jsonl"));
    let mut by_tag: BTreeMap<String, usize> = BTreeMap::new();
    for s in &served {
        if let Some(t) = s["tag"].as_str() {
            *by_tag.entry(t.to_string()).or_default() += 1;
        }
    }
    let pid_of: BTreeMap<u32, &str> = agents
        .iter()
        .map(|(tag, (pid, _))| (*pid, tag.as_str()))
        .collect();
    let want: usize = by_tag.values().sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut rows_by_tag, mut ledger_rows);
    loop {
        rows_by_tag = BTreeMap::<String, usize>::new();
        for c in read_history(&data, "calls") {
            if let Some(tag) = c["pid"].as_u64().and_then(|p| pid_of.get(&(p as u32))) {
                *rows_by_tag.entry(tag.to_string()).or_default() += 1;
            }
        }
        ledger_rows = read_history(&data, "ledger")
            .iter()
            .filter(|l| {
                l["root_pid"]
                    .as_u64()
                    .is_some_and(|p| pid_of.contains_key(&(p as u32)))
            })
            .count();
        if rows_by_tag.values().sum::<usize>() >= want && ledger_rows >= sessions
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let unaccounted: usize = by_tag
        .iter()
        .map(|(t, n)| n.saturating_sub(*rows_by_tag.get(t).unwrap_or(&0)))
        .sum();
    let extra: usize = rows_by_tag
        .iter()
        .map(|(t, n)| n.saturating_sub(*by_tag.get(t).unwrap_or(&0)))
        .sum();
    let final_status = status(&bin, &sock);
    drop(daemon);

    write_report(
        &rows,
        &Report {
            minutes,
            sessions,
            calls_per_agent: calls,
            tools: sessions as u64 * (calls / tool_every),
            ran,
            failed,
            served: want,
            unaccounted,
            extra,
            ledger_rows,
            status: final_status,
        },
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

fn libc_ticks() -> f64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

struct Report {
    minutes: u64,
    sessions: usize,
    calls_per_agent: u64,
    tools: u64,
    ran: Duration,
    failed: usize,
    served: usize,
    unaccounted: usize,
    extra: usize,
    ledger_rows: usize,
    status: Value,
}

/// Every non-zero counter whose name says something was dropped, lost, or refused.
fn drop_counters(v: &Value, path: &str, out: &mut Vec<(String, u64)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                drop_counters(
                    x,
                    &format!("{path}{}{k}", if path.is_empty() { "" } else { "." }),
                    out,
                );
            }
        }
        Value::Number(n) => {
            let bad = [
                "drop", "lost", "loss", "over_cap", "overflow", "full", "error", "desync",
            ];
            if bad.iter().any(|b| path.contains(b)) && n.as_u64().unwrap_or(0) > 0 {
                out.push((path.to_string(), n.as_u64().unwrap_or(0)));
            }
        }
        _ => {}
    }
}

fn write_report(samples: &[Sample], r: &Report) {
    let root = repo();
    let mut csv = String::from("t_secs,vmrss_mib,rss_anon_mib,cpu_pct,live_agents\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{:.2},{:.2},{:.1},{}",
            s.t, s.rss, s.anon, s.cpu_pct, s.live_agents
        );
    }
    std::fs::write(root.join("soak.csv"), csv).unwrap();
    plot::write_png(
        &root.join("soak.png"),
        samples.iter().map(|s| (s.t, s.rss, s.cpu_pct)).collect(),
    );

    let at = |secs: f64| {
        samples
            .iter()
            .filter(|s| s.t >= secs - 30.0 && s.t < secs + 30.0)
            .map(|s| s.rss)
            .fold(0.0_f64, f64::max)
    };
    let end = samples
        .iter()
        .filter(|s| s.live_agents > 0)
        .map(|s| s.t)
        .fold(0.0, f64::max);
    let (m2, mend) = (at(120.0), at(end - 30.0));
    let growth = if m2 > 0.0 {
        (mend - m2) / m2 * 100.0
    } else {
        0.0
    };
    let max_rss = samples.iter().map(|s| s.rss).fold(0.0, f64::max);
    let max_live = samples.iter().map(|s| s.live_agents).max().unwrap_or(0);
    let rss_full = samples
        .iter()
        .filter(|s| s.live_agents + 5 >= r.sessions)
        .map(|s| s.rss)
        .fold(0.0, f64::max);
    let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_pct).collect();
    let mean_cpu = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
    let mut drops = Vec::new();
    drop_counters(&r.status, "", &mut drops);

    let mut md = format!(
        "# Soak\n\nProduced by `cargo xtask soak --minutes {m}` (as root) on the project's CI-class VM \
(2 cores, Linux 6.18), against the mock: {n} concurrent agent sessions (tests/clients/soak/soak_agent.c \
on the system's libssl, one keep-alive TLS connection each, a Chat Completions call every ~10 s) and \
{tools} short-lived tool processes (`/bin/true`, children of the agents). The daemon's RSS and CPU \
were sampled every second: `soak.csv`, plotted in `soak.png`.\n\n\
| figure | value | goal |\n|---|---|---|\n",
        m = r.minutes,
        n = r.sessions,
        tools = r.tools,
    );
    let _ = writeln!(
        md,
        "| run | {:.0} s, {} agents x {} calls, {} agents failed | |",
        r.ran.as_secs_f64(),
        r.sessions,
        r.calls_per_agent,
        r.failed
    );
    let _ = writeln!(md, "| live agents at most | {max_live} | 1,000 |");
    let _ = writeln!(md, "| VmRSS at most | {max_rss:.1} MiB | |");
    let _ = writeln!(
        md,
        "| VmRSS with all sessions live | {rss_full:.1} MiB | <= 64 MB |"
    );
    let _ = writeln!(
        md,
        "| VmRSS minute 2 -> last minute of traffic | {m2:.1} -> {mend:.1} MiB ({growth:+.1}%) | growth < 5% |"
    );
    let _ = writeln!(
        md,
        "| daemon CPU, mean of 1 s samples | {mean_cpu:.1}% of one core | |"
    );
    let _ = writeln!(md, "| calls served by the mock | {} | |", r.served);
    let _ = writeln!(md, "| served calls without a row | {} | 0 |", r.unaccounted);
    let _ = writeln!(md, "| rows beyond what was served | {} | 0 |", r.extra);
    let _ = writeln!(
        md,
        "| ledger rows (one per agent session) | {} | {} |",
        r.ledger_rows, r.sessions
    );
    md.push_str("\nDrop and error counters of `agentwatch status` at the end (non-zero only):\n\n");
    if drops.is_empty() {
        md.push_str("none: every bound's drop counter is 0.\n");
    } else {
        for (k, v) in &drops {
            let _ = writeln!(md, "- `{k}`: {v}");
        }
    }
    md.push_str("\n`soak.png`: top, VmRSS in MiB (blue); bottom, the daemon's CPU in % of one core (red); the left numbers are the top of each panel's scale, the grid has a line per minute and per quarter of the scale.\n\nBy minute (RSS: max of the minute's samples; CPU: mean, and of it the kernel's part):\n\n| minute | VmRSS MiB | RssAnon MiB | CPU % | of it system % | live agents |\n|---|---|---|---|---|---|\n");
    let last_minute = samples.last().map(|s| (s.t / 60.0) as usize).unwrap_or(0);
    for m in 0..=last_minute {
        let in_m: Vec<&Sample> = samples
            .iter()
            .filter(|s| (s.t / 60.0) as usize == m)
            .collect();
        if in_m.is_empty() {
            continue;
        }
        let rss = in_m.iter().map(|s| s.rss).fold(0.0, f64::max);
        let anon = in_m.iter().map(|s| s.anon).fold(0.0, f64::max);
        let cpu = in_m.iter().map(|s| s.cpu_pct).sum::<f64>() / in_m.len() as f64;
        let sys = in_m.iter().map(|s| s.sys_pct).sum::<f64>() / in_m.len() as f64;
        let live = in_m.iter().map(|s| s.live_agents).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {m} | {rss:.1} | {anon:.1} | {cpu:.1} | {sys:.1} | {live} |"
        );
    }
    std::fs::write(root.join("SOAK.md"), &md).unwrap();
    print!("{md}");
}

/// A PNG of two panels (RSS, CPU) over time, drawn into an RGB buffer and encoded by hand
/// (zlib from flate2, CRC-32 from flate2): no plotting dependency for one picture.
mod plot {
    use std::io::Write;
    use std::path::Path;

    const W: usize = 900;
    const H: usize = 520;

    /// 3x5 digits (and '.'), one row of 3 bits per line, for the scale labels.
    const DIGITS: [[u8; 5]; 11] = [
        [7, 5, 5, 5, 7],
        [2, 6, 2, 2, 7],
        [7, 1, 7, 4, 7],
        [7, 1, 7, 1, 7],
        [5, 5, 7, 1, 1],
        [7, 4, 7, 1, 7],
        [7, 4, 7, 5, 7],
        [7, 1, 1, 1, 1],
        [7, 5, 7, 5, 7],
        [7, 5, 7, 1, 7],
        [0, 0, 0, 0, 2],
    ];

    struct Canvas(Vec<u8>);
    impl Canvas {
        /// `text` (digits and '.') at (x, y), each pixel of the font a 2x2 square.
        fn text(&mut self, x: i64, y: i64, text: &str) {
            for (i, ch) in text.chars().enumerate() {
                let glyph = match ch {
                    '0'..='9' => DIGITS[ch as usize - '0' as usize],
                    '.' => DIGITS[10],
                    _ => continue,
                };
                for (row, bits) in glyph.iter().enumerate() {
                    for col in 0..3 {
                        if bits & (4 >> col) != 0 {
                            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                                let px = x + i as i64 * 8 + col * 2 + dx;
                                self.set(px, y + row as i64 * 2 + dy, [0, 0, 0]);
                            }
                        }
                    }
                }
            }
        }
        fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
            if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
                let i = (y as usize * W + x as usize) * 3;
                self.0[i..i + 3].copy_from_slice(&rgb);
            }
        }
        fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3]) {
            let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
            for i in 0..=n {
                self.set(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n, rgb);
                self.set(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n + 1, rgb);
            }
        }
    }

    /// `points`: (t, rss MiB, cpu %). Top panel RSS (0..max, blue), bottom CPU (0..max, red);
    /// grey grid lines every minute and at quarter heights.
    pub fn write_png(path: &Path, points: Vec<(f64, f64, f64)>) {
        let mut c = Canvas(vec![255; W * H * 3]);
        let t_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
        let panels = [
            (10i64, 250i64, 1usize, [30, 80, 200]),
            (270, 510, 2, [200, 40, 40]),
        ];
        for (top, bottom, which, rgb) in panels {
            let val = |p: &(f64, f64, f64)| if which == 1 { p.1 } else { p.2 };
            let v_max = points.iter().map(val).fold(1.0, f64::max) * 1.1;
            let (left, right) = (40i64, W as i64 - 10);
            let x = |t: f64| left + ((t / t_max) * (right - left) as f64) as i64;
            let y = |v: f64| bottom - ((v / v_max) * (bottom - top) as f64) as i64;
            for q in 0..=4 {
                let yy = top + (bottom - top) * q / 4;
                c.line((left, yy), (right, yy), [225, 225, 225]);
            }
            let mut m = 0.0;
            while m <= t_max {
                c.line((x(m), top), (x(m), bottom), [225, 225, 225]);
                m += 60.0;
            }
            c.line((left, bottom), (right, bottom), [0, 0, 0]);
            c.line((left, top), (left, bottom), [0, 0, 0]);
            c.text(2, top, &format!("{v_max:.0}"));
            c.text(2, bottom - 10, "0");
            for w in points.windows(2) {
                c.line((x(w[0].0), y(val(&w[0]))), (x(w[1].0), y(val(&w[1]))), rgb);
            }
        }
        let mut raw = Vec::with_capacity((W * 3 + 1) * H);
        for row in c.0.chunks(W * 3) {
            raw.push(0);
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).unwrap();
        let idat = z.finish().unwrap();
        let mut ihdr = Vec::new();
        ihdr.extend((W as u32).to_be_bytes());
        ihdr.extend((H as u32).to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", Vec::new())] {
            png.extend((data.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(&data);
            png.extend_from_slice(kind);
            png.extend_from_slice(&data);
            png.extend(crc.sum().to_be_bytes());
        }
        std::fs::write(path, png).unwrap();
    }
}
