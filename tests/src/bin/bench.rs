//! `cargo xtask bench`: throughput of the user-space pipeline on recorded traffic, and the
//! cost of the probes on real TLS clients, measured as on/off ratios within one run (the
//! machine is noisy; ratios of interleaved runs are what can be compared).
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentwatch::capture::{CaptureLimits, CaptureStats, Connection};
use agentwatch::protocol::http2::frame;
use agentwatch_tests::harness::{Proc, env_path, start_mock};

/// One OpenAI streamed exchange: request bytes and response bytes (chunked SSE with usage).
fn openai_stream_exchange(events: usize) -> (Vec<u8>, Vec<u8>) {
    let body = br#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}"#;
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut push = |event: &str| {
        resp.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    };
    for i in 0..events {
        push(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    push(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":200,\"total_tokens\":300,\"prompt_tokens_details\":{\"cached_tokens\":50},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    );
    push("data: [DONE]\n\n");
    resp.extend_from_slice(b"0\r\n\r\n");
    (req, resp)
}

/// One Anthropic streamed exchange (message_start, text deltas, message_delta, message_stop).
fn anthropic_stream_exchange(deltas: usize) -> (Vec<u8>, Vec<u8>) {
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let mut req = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let mut resp =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut push = |event: &str| {
        resp.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
    };
    push(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":20,\"output_tokens\":1}}}\n\n",
    );
    push(
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..deltas {
        push(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token{i} and some more words \"}}}}\n\n"
        ));
    }
    push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n");
    push(
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":400}}\n\n",
    );
    push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    resp.extend_from_slice(b"0\r\n\r\n");
    (req, resp)
}

/// An HPACK block of literal fields without indexing (no Huffman), as some encoders send.
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in fields {
        block.push(0x00);
        for s in [k, v] {
            assert!(s.len() < 127, "short strings only");
            block.push(s.len() as u8);
            block.extend_from_slice(s.as_bytes());
        }
    }
    block
}

/// The OpenAI stream of [`openai_stream_exchange`] as a new HTTP/2 connection: preface,
/// SETTINGS, HEADERS + DATA; the response as HEADERS and one DATA frame per SSE event.
fn openai_stream_exchange_h2(events: usize) -> (Vec<u8>, Vec<u8>) {
    let (req1, resp1) = openai_stream_exchange(events);
    let body_at = req1.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut req = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    req.extend(frame(0x4, 0, 0, &[]));
    let head = hpack_literals(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.openai.com"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
    ]);
    req.extend(frame(0x1, 0x4, 1, &head));
    req.extend(frame(0x0, 0x1, 1, &req1[body_at..]));
    let mut resp = Vec::new();
    resp.extend(frame(0x4, 0, 0, &[]));
    let head = hpack_literals(&[(":status", "200"), ("content-type", "text/event-stream")]);
    resp.extend(frame(0x1, 0x4, 1, &head));
    // Undo the chunked framing: each chunk is one SSE event, sent as one DATA frame.
    let mut rest = &resp1[resp1.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        resp.extend(frame(0x0, 0, 1, &rest[line_end + 2..line_end + 2 + size]));
        rest = &rest[line_end + 2 + size + 2..];
    }
    resp.extend(frame(0x0, 0x1, 1, &[]));
    (req, resp)
}

fn bench_pipeline(out: &mut String) {
    for (name, (req, resp)) in [
        (
            "OpenAI Chat Completions stream, 400 chunks",
            openai_stream_exchange(400),
        ),
        (
            "Anthropic Messages stream, 400 deltas",
            anthropic_stream_exchange(400),
        ),
    ] {
        bench_exchange(out, "HTTP/1.1 chunked SSE", name, &req, &resp, false);
    }
    let (req, resp) = openai_stream_exchange_h2(400);
    bench_exchange(
        out,
        "HTTP/2, a new connection per call (preface, HPACK), one DATA frame per event",
        "OpenAI Chat Completions stream, 400 chunks",
        &req,
        &resp,
        true,
    );
}

fn bench_exchange(
    out: &mut String,
    transport: &str,
    name: &str,
    req: &[u8],
    resp: &[u8],
    new_connection: bool,
) {
    let rounds = 2000;
    let mut conn = Connection::new(CaptureLimits::default());
    let mut stats = CaptureStats::default();
    let mut events = Vec::new();
    let start = Instant::now();
    let mut calls = 0usize;
    for _ in 0..rounds {
        if new_connection {
            conn.close(1, &mut stats, &mut events);
        }
        conn.on_write(req, 1, &mut stats, &mut events);
        // Reads arrive in pieces, as SSL_read returns them.
        for piece in resp.chunks(4096) {
            conn.on_read(piece, 2, &mut stats, &mut events);
        }
        calls += events
            .drain(..)
            .filter(|e| matches!(e, agentwatch::capture::CaptureEvent::Call(_)))
            .count();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(calls, rounds, "every exchange must yield one call");
    let mb = (resp.len() * rounds) as f64 / 1e6;
    let _ = writeln!(
        out,
        "| {transport}: {name} ({} KiB/response, read in 4 KiB pieces) | {:.0} MB/s | {:.0} calls/s |",
        resp.len() / 1024,
        mb / secs,
        rounds as f64 / secs
    );
}

/// Removes a pinned kernel side a stopped daemon left.
fn unpin() {
    let bin = env_path("AGENTWATCH_BIN", "target/release/agentwatch");
    let _ = Command::new(bin)
        .arg("unpin")
        .stdout(Stdio::null())
        .status();
}

fn start_daemon(dir: &Path) -> Proc {
    start_daemon_with(dir, None)
}

/// Starts the daemon (optionally with a config file's text) and waits until it is ready.
fn start_daemon_with(dir: &Path, config: Option<&str>) -> Proc {
    let bin = env_path("AGENTWATCH_BIN", "target/release/agentwatch");
    let sock = dir.join("aw.sock");
    let config_path = dir.join("bench.toml");
    std::fs::write(&config_path, config.unwrap_or("")).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("data"));
    let daemon = Proc(
        Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&sock)
            .env("AGENTWATCH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .expect("start agentwatch"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ok = Command::new(&bin)
            .args(["status", "--socket"])
            .arg(&sock)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return daemon;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("agentwatch did not become ready");
}

fn time_cmd(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd.status().expect("run client");
    assert!(status.success(), "{cmd:?} failed");
    start.elapsed().as_secs_f64()
}

/// Runs `cmd` to its end; the seconds its loop took as it printed them (its last line), so
/// the interpreter's start-up does not blur a per-operation cost; the wall time otherwise.
fn time_loop(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = cmd.stdout(Stdio::piped()).output().expect("run client");
    assert!(out.status.success(), "{cmd:?} failed");
    let wall = start.elapsed().as_secs_f64();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(wall)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `cmd` alternately without and with the daemon; returns (median off, median on).
fn off_on(dir: &Path, reps: usize, mut cmd: impl FnMut() -> Command) -> (f64, f64) {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        off.push(time_cmd(&mut cmd()));
        let daemon = start_daemon(dir);
        on.push(time_cmd(&mut cmd()));
        drop(daemon);
    }
    (median(off), median(on))
}

/// Runs `cmd` alternately under the daemon with config `a` and with config `b`.
fn a_b(dir: &Path, reps: usize, a: &str, b: &str, mut cmd: impl FnMut() -> Command) -> (f64, f64) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (config, out) in [(a, &mut ta), (b, &mut tb)] {
            let daemon = start_daemon_with(dir, Some(config));
            out.push(time_loop(&mut cmd()));
            drop(daemon);
        }
    }
    (median(ta), median(tb))
}

/// Run count and run time (ns) of the eBPF programs the daemon `pid` holds, so far (from the
/// fdinfo of its program descriptors; counted only while `kernel.bpf_stats_enabled` is 1).
fn prog_stats(pid: u32) -> (u64, u64) {
    let mut seen = std::collections::HashSet::new();
    let (mut runs, mut ns) = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    for entry in dir.flatten() {
        let is_prog = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if seen.insert(field("prog_id:")) {
            runs += field("run_cnt:");
            ns += field("run_time_ns:");
        }
    }
    (runs, ns)
}

/// Runs of each workload in each mode of the non-agent section.
const NON_AGENT_REPS: usize = 9;

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

const HTTPS_CLIENT: &str = r#"
import http.client, json, ssl, sys
url_port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", url_port, context=ctx)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200
"#;

/// An agent that makes one HTTPS call to the mock (its session opens) and sleeps `argv[3]`
/// seconds (its session stays open).
const OPEN_SESSION: &str = r#"
import http.client, json, signal, ssl, sys, time
# SIGINT ends it even when started with it ignored (a bench run in the background).
signal.signal(signal.SIGINT, signal.default_int_handler)
port, ca, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
r = c.getresponse(); r.read()
assert r.status == 200
time.sleep(secs)
"#;

/// An agent that makes one call to the mock, then becomes the workload (argv[3:], exec'd):
/// the workload runs in its session.
const IN_SESSION: &str = r#"
import http.client, json, os, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
r = c.getresponse(); r.read()
assert r.status == 200
c.close()
os.execv(sys.argv[3], sys.argv[3:])
"#;

const TLS_TAX: &str = r#"
import ssl, sys, time
n = int(sys.argv[1])
cert, key = sys.argv[2], sys.argv[3]
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
c = cctx.wrap_bio(ci, co, server_side=False); s = sctx.wrap_bio(si, so, server_side=True)
def pump():
    si.write(co.read()); ci.write(so.read())
for _ in range(10):
    try: c.do_handshake()
    except ssl.SSLWantReadError: pass
    pump()
    try: s.do_handshake()
    except ssl.SSLWantReadError: pass
    pump()
msg = b"x" * 64
t0 = time.perf_counter()
for _ in range(n):
    c.write(msg); si.write(co.read()); s.read(64)
print(time.perf_counter() - t0)
"#;

const SOCKET_TAX: &str = r#"
import os, socket, sys, time
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname()); s, _ = srv.accept()
msg = b"x" * 64
t0 = time.perf_counter()
for _ in range(n):
    os.write(c.fileno(), msg); os.read(s.fileno(), 64)
    c.send(msg); s.recv(64)
print(time.perf_counter() - t0)
"#;

/// A TLS server (echoes every record back) and a TLS client to it under a name that is no
/// LLM endpoint (SNI `files.example.test`): two ordinary processes on loopback. `client N 1`:
/// N 64-byte round trips on one connection; `client N 0`: a new connection per round trip.
const TLS_PAIR: &str = r#"
import signal, socket, ssl, sys, time
# SIGINT ends it even when started with it ignored (a bench run in the background).
signal.signal(signal.SIGINT, signal.default_int_handler)
mode = sys.argv[1]
if mode == "server":
    cert, key, portfile = sys.argv[2], sys.argv[3], sys.argv[4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0)); srv.listen(64)
    open(portfile, "w").write(str(srv.getsockname()[1]))
    while True:
        conn, _ = srv.accept()
        try:
            s = ctx.wrap_socket(conn, server_side=True)
            while True:
                data = s.recv(64)
                if not data: break
                s.sendall(data)
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()
else:
    port, n, keep = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    def connect():
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="files.example.test")
    msg = b"x" * 64
    t0 = time.perf_counter()
    s = connect()
    for i in range(n):
        if not keep and i > 0:
            s.close(); s = connect()
        s.sendall(msg)
        got = 0
        while got < 64:
            got += len(s.recv(64))
    s.close()
    print(time.perf_counter() - t0)
"#;

/// Pipes and a file, the syscalls every process makes: `pipe N`: N 64-byte write+read pairs
/// through a pipe; `file N PATH`: N 4 KiB writes, then N reads back.
const SYSCALL_TAX: &str = r#"
import os, sys, time
mode, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
if mode == "pipe":
    r, w = os.pipe()
    msg = b"x" * 64
    for _ in range(n):
        os.write(w, msg); os.read(r, 64)
elif mode == "open":
    # Files opened for writing, created, renamed and deleted (what "files written" is about).
    d = sys.argv[3]
    os.makedirs(d, exist_ok=True)
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    for _ in range(n):
        fd = os.open(a, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.rename(a, b)
        os.unlink(b)
elif mode == "spawn":
    # Processes started and reaped (fork, exec, exit: what tool runs are made of).
    for _ in range(n):
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)
else:
    path = sys.argv[3]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"y" * 4096
    for _ in range(n):
        os.write(fd, block)
    os.lseek(fd, 0, 0)
    for _ in range(n):
        os.read(fd, 4096)
    os.close(fd); os.unlink(path)
print(time.perf_counter() - t0)
"#;

/// Status of the daemon on socket `sock`, as JSON.
fn status(sock: &Path) -> serde_json::Value {
    let bin = env_path("AGENTWATCH_BIN", "target/release/agentwatch");
    let out = Command::new(&bin)
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .expect("agentwatch status");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// (VmRSS, RssAnon) of process `pid`, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Of a process's RSS, in MiB: what its mappings of BPF maps hold (the ring buffer: kernel
/// pages, its data area mapped twice), and the rest of its file-backed pages (executable,
/// libraries), from /proc/PID/smaps.
/// User and system CPU time of `pid` so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime
    // and stime the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn rss_parts_mib(pid: u32) -> (f64, f64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut bpf, mut file) = (0.0, 0.0);
    let mut name = String::new();
    for line in smaps.lines() {
        let mut cols = line.split_whitespace();
        let Some(first) = cols.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            name = cols.nth(4).unwrap_or("").to_string();
        } else if first == "Rss:" {
            let kib: f64 = cols.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            if name.contains("bpf") {
                bpf += kib;
            } else if name.starts_with('/') {
                file += kib;
            }
        }
    }
    (bpf / 1024.0, file / 1024.0)
}

fn main() {
    let scratch = std::env::temp_dir().join(format!("agentwatch-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // A kernel side left pinned by an earlier daemon would make the runs without one pay.
    unpin();
    let mut report = String::from(
        "# Benchmarks\n\nProduced by `cargo xtask bench` (as root) on the project's CI-class VM: 2 cores, Linux 6.18.\n\
Probe costs are medians of interleaved runs without and with the daemon, in one run, so only the ratios compare.\n\n\
## User-space pipeline (one core, recorded traffic)\n\n| input | throughput | calls |\n|---|---|---|\n",
    );
    bench_pipeline(&mut report);
    if std::env::args().any(|a| a == "--pipeline-only") {
        print!("{report}");
        return;
    }

    let python = env_path("AGENTWATCH_VENV", ".venv").join("bin/python");
    let (_mock, port) = start_mock(&scratch, 1800);
    let ca = scratch.join("ca.pem");
    std::fs::write(scratch.join("client.py"), HTTPS_CLIENT).unwrap();
    std::fs::write(scratch.join("tax.py"), TLS_TAX).unwrap();
    std::fs::write(scratch.join("socket_tax.py"), SOCKET_TAX).unwrap();

    // `--only SECTION,…` (agent, non-agent, files, first-contact): those sections alone, printed and
    // not written to BENCHMARKS.md (for working on one figure).
    let only: Vec<String> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let want = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let n = 1000;
    let (off, on) = if want("agent") {
        off_on(&scratch, 5, || {
            let mut c = Command::new(&python);
            c.arg(scratch.join("client.py"))
                .arg(port.to_string())
                .arg(&ca)
                .arg(n.to_string());
            c
        })
    } else {
        (f64::NAN, f64::NAN)
    };
    let _ = write!(
        report,
        "\n## Probe cost on an agent-like client\n\n{n} sequential HTTPS LLM calls (Python `http.client`, keep-alive, system OpenSSL) to the mock server.\n\n\
| daemon off | daemon on | ratio (on/off) | added per call |\n|---|---|---|---|\n| {:.3} s | {:.3} s | {:.3} | {:.0} µs |\n\n\
The mock answers a call in about a millisecond, so this ratio is far above what an agent sees: a real\n\
provider takes hundreds of milliseconds to seconds per call, where the added time per call is the figure\n\
that matters.\n",
        off,
        on,
        on / off,
        (on - off) / n as f64 * 1e6
    );

    // What the daemon costs processes that are not agents: TLS and syscall-heavy workloads.
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(scratch.join("cert.pem"), key.cert.pem()).unwrap();
    std::fs::write(scratch.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
    std::fs::write(scratch.join("tls_pair.py"), TLS_PAIR).unwrap();
    std::fs::write(scratch.join("syscall_tax.py"), SYSCALL_TAX).unwrap();
    let portfile = scratch.join("tls_pair.port");
    let _ = std::fs::remove_file(&portfile);
    let _tls_server = Proc(
        Command::new(&python)
            .arg(scratch.join("tls_pair.py"))
            .arg("server")
            .arg(scratch.join("cert.pem"))
            .arg(scratch.join("key.pem"))
            .arg(&portfile)
            .stderr(Stdio::null())
            .spawn()
            .expect("start the TLS server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let tls_port = loop {
        if let Some(p) = std::fs::read_to_string(&portfile)
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "TLS server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let writes = 50_000;
    let rounds = 20_000;
    let handshakes = 300;
    let pairs = 100_000;
    let pipe_pairs = 1_000_000;
    let file_blocks = 100_000;
    let file_ops = 50_000;
    let spawns = 2_000;
    let py = |args: Vec<String>| {
        let python = python.clone();
        move || {
            let mut c = Command::new(&python);
            c.args(&args);
            c
        }
    };
    let s = |p: &str| scratch.join(p).display().to_string();
    // The `openat` loop's directory: on tmpfs, so the disk's own timing does not swamp what
    // the system calls cost (on this VM's disk the loop's time moved by 5-15% between runs).
    let shm_dir =
        std::path::Path::new("/dev/shm").join(format!("agentwatch-bench-{}", std::process::id()));
    let tax_dir = if std::fs::create_dir_all(&shm_dir).is_ok() {
        shm_dir.join("tax.dir").display().to_string()
    } else {
        s("tax.dir")
    };
    type Workload = (String, String, usize, Box<dyn FnMut() -> Command>);
    let workloads: Vec<Workload> = vec![
        (
            format!(
                "{writes} × 64-byte `SSL_write_ex` + `SSL_read_ex` in one Python process (in-memory BIOs)"
            ),
            "write+read".into(),
            writes,
            Box::new(py(vec![
                s("tax.py"),
                writes.to_string(),
                s("cert.pem"),
                s("key.pem"),
            ])),
        ),
        (
            format!(
                "TLS client → TLS server on loopback (two processes, SNI `files.example.test`), {rounds} 64-byte round trips on one connection"
            ),
            "round trip".into(),
            rounds,
            Box::new(py(vec![
                s("tls_pair.py"),
                "client".into(),
                tls_port.to_string(),
                rounds.to_string(),
                "1".into(),
            ])),
        ),
        (
            format!("the same, a new connection per round trip ({handshakes} handshakes)"),
            "connection".into(),
            handshakes,
            Box::new(py(vec![
                s("tls_pair.py"),
                "client".into(),
                tls_port.to_string(),
                handshakes.to_string(),
                "0".into(),
            ])),
        ),
        (
            format!(
                "{pairs} × (64-byte `write` + `read`, `sendto` + `recvfrom`) over loopback TCP, one process"
            ),
            "round (4 syscalls)".into(),
            pairs,
            Box::new(py(vec![s("socket_tax.py"), pairs.to_string()])),
        ),
        (
            format!("{pipe_pairs} × 64-byte `write` + `read` through a pipe"),
            "write+read".into(),
            pipe_pairs,
            Box::new(py(vec![
                s("syscall_tax.py"),
                "pipe".into(),
                pipe_pairs.to_string(),
            ])),
        ),
        (
            format!("{file_blocks} × 4 KiB file `write`, then {file_blocks} `read`s"),
            "write+read".into(),
            file_blocks,
            Box::new(py(vec![
                s("syscall_tax.py"),
                "file".into(),
                file_blocks.to_string(),
                s("tax.file"),
            ])),
        ),
        (
            format!(
                "{file_ops} × (`openat` O_CREAT|O_TRUNC for writing, `close`, `rename`, `unlink`) on tmpfs"
            ),
            "open+close+rename+unlink".into(),
            file_ops,
            Box::new(py(vec![
                s("syscall_tax.py"),
                "open".into(),
                file_ops.to_string(),
                tax_dir.clone(),
            ])),
        ),
        (
            format!("{spawns} × `posix_spawn` of `/bin/true` and `waitpid` (fork, exec, exit)"),
            "process".into(),
            spawns,
            Box::new(py(vec![
                s("syscall_tax.py"),
                "spawn".into(),
                spawns.to_string(),
            ])),
        ),
    ];
    let _ = write!(
        report,
        "\n## What the daemon costs processes that are not agents\n\n\
Each workload alternately without the daemon, with the daemon as shipped (`scope = \"agents\"`: TLS probes only on\n\
processes that contact an LLM endpoint), and with `scope = \"all\"` (TLS probes on every process, the earlier design),\n\
{NON_AGENT_REPS} runs each, timed inside the process (the interpreter's start-up is left out): medians of the times; each\n\
ratio is the median of each run's ratio to the run without the daemon just before it (the added time per unit is\n\
from that ratio). None of these processes is an agent: none is held or probed. The last column is exact where the\n\
ratios are not: in one more run with the daemon as shipped and `kernel.bpf_stats_enabled = 1`, how many times its\n\
kernel programs ran and for how long (all programs, for every process on the host, during the whole run: the\n\
workload's start-up too), per unit and as a share of the loop's time. The kernel's dispatch of a tracepoint to a\n\
program adds some tens of ns per run that this does not count.\n\n\
| workload | off | agents | ratio | all | ratio | added per unit (agents / all) | the daemon's kernel programs (agents) |\n|---|---|---|---|---|---|---|---|\n"
    );
    // `--workload TEXT`: only the workloads whose description has TEXT.
    let workload: Option<String> = std::env::args().skip_while(|a| a != "--workload").nth(1);
    let workloads = workloads.into_iter().filter(|(what, ..)| {
        want("non-agent") && workload.as_ref().is_none_or(|w| what.contains(w.as_str()))
    });
    for (what, unit, count, mut cmd) in workloads {
        let (mut off, mut agents, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..NON_AGENT_REPS {
            off.push(time_loop(&mut cmd()));
            for (config, out) in [("", &mut agents), ("[probes]\nscope = \"all\"\n", &mut all)] {
                let daemon = start_daemon_with(&scratch, Some(config));
                // Past its start-up work (the /proc walk, the first drains, and for
                // `scope = "all"` the uprobes on every library).
                std::thread::sleep(Duration::from_millis(2000));
                out.push(time_loop(&mut cmd()));
                drop(daemon);
                // Past its teardown (links and programs freed after grace periods).
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
        // Each run against the run without the daemon just before it, so the machine's
        // drift over the minutes of a workload cancels out; the median of those ratios.
        let paired = |on: &[f64]| median(on.iter().zip(&off).map(|(a, b)| a / b).collect());
        let (r_agents, r_all) = (paired(&agents), paired(&all));
        let (off, agents, all) = (median(off), median(agents), median(all));
        let per = |r: f64| (r - 1.0) * off / count as f64 * 1e6;
        // One more run with the daemon as shipped, counting what its kernel programs ran
        // (exact, where the timed ratios above are within this VM's noise).
        let (runs, ns, loop_secs) = {
            let daemon = start_daemon_with(&scratch, Some(""));
            std::thread::sleep(Duration::from_millis(2000));
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
            let before = prog_stats(daemon.0.id());
            let t = time_loop(&mut cmd());
            let after = prog_stats(daemon.0.id());
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
            drop(daemon);
            std::thread::sleep(Duration::from_millis(1000));
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
                t,
            )
        };
        let _ = writeln!(
            report,
            "| {what} | {off:.3} s | {agents:.3} s | {r_agents:.3} | {all:.3} s | {r_all:.3} | {:.2} µs / {:.2} µs per {unit} | {:.1} runs, {:.0} ns per {unit}: {:.2}% of the loop |",
            per(r_agents),
            per(r_all),
            runs as f64 / count as f64,
            ns as f64 / count as f64,
            ns as f64 / (loop_secs * 1e9) * 100.0
        );
    }
    report.push_str(
        "\nThe socket-layer tracepoints (`sock:inet_sock_set_state`, `sock:sock_send_length`; `sock:sock_recv_length`, the\n\
read hook, only while a socket needs its reads seen: none does here; `tcp:tcp_sendmsg_locked` with ceilings only)\n\
replace the syscall tracepoints of earlier versions, which every syscall of every process paid for: pipes, files and\n\
process starts never run them (the last column), and a socket that is not of interest runs one short program per\n\
write (two array lookups) and none per read: 45–50 ns a run by the kernel's accounting (with that accounting's own\n\
cost), plus the dispatch. With `scope = \"all\"` the read hook is always on. The timed ratios of workloads that run\n\
no program at all (pipes, files, `openat`) show this VM's noise: a few per cent either way between runs.\n",
    );

    // The file workload of both `[actions] files` sections.
    let open_loop = || -> (String, &'static str, usize, Vec<String>) {
        (
            format!(
                "{file_ops} × (`openat` O_CREAT|O_TRUNC for writing, `close`, `rename`, `unlink`) on tmpfs"
            ),
            "open+close+rename+unlink",
            file_ops,
            vec![
                s("syscall_tax.py"),
                "open".into(),
                file_ops.to_string(),
                tax_dir.clone(),
            ],
        )
    };
    // `[actions] files`, while a session is open elsewhere, paid by processes outside
    // sessions: with `file_hooks = "libc"` nothing (its uprobes are planted only in the
    // session's processes); with `"syscalls"` a lookup at each such call's entry and return,
    // and every system call takes the kernel's traced path while they are on.
    if want("files") {
        std::fs::write(scratch.join("open_session.py"), OPEN_SESSION).unwrap();
        let _ = write!(
            report,
            "\n## `[actions] files = true`: its cost for processes that are not agents\n\n\
The daemon as shipped, and with `[actions] files = true` while a session is open elsewhere on the host (an agent\n\
that made one call to the mock and sleeps), with each kind of hook (`file_hooks`), alternately, 11 runs each,\n\
medians (timed inside the process); each ratio is the median of each run's ratio to the run as shipped just before\n\
it; \"default again\" is the daemon as shipped run a second time (the same against itself: this VM's noise).\n\
The measured process is in no session. `libc` (the default): uprobes on the C library's file functions, planted\n\
only in the memory of the session's processes: the measured process runs its C library untouched. `syscalls`: the\n\
`syscalls` tracepoints, attached only while a session is open (or a first contact is being decided, and 5 s after):\n\
then every system call of every process takes the kernel's traced path, and each `openat`/`rename`/`unlink` runs a\n\
program at its entry and return (one map lookup each). The last columns: in one more run of each with\n\
`kernel.bpf_stats_enabled = 1`, the daemon's kernel programs' runs per unit (the tracepoints' dispatch and the\n\
traced path not counted).\n\n\
| workload | default | default again: ratio | libc, a session open | ratio | syscalls, a session open | ratio | added per unit (syscalls) | the daemon's kernel programs per unit: libc / syscalls |\n|---|---|---|---|---|---|---|---|---|\n"
        );
        let cases: [(String, &str, usize, Vec<String>); 2] = [
            open_loop(),
            (
                format!("{pipe_pairs} × 64-byte `write` + `read` through a pipe"),
                "write+read",
                pipe_pairs,
                vec![s("syscall_tax.py"), "pipe".into(), pipe_pairs.to_string()],
            ),
        ];
        const LIBC: &str = "[actions]\nfiles = true\nfile_hooks = \"libc\"\n";
        const SYSCALLS: &str = "[actions]\nfiles = true\nfile_hooks = \"syscalls\"\n";
        // An agent whose session stays open while a workload runs.
        let open_session = || {
            let agent = Proc(
                Command::new(&python)
                    .arg(scratch.join("open_session.py"))
                    .arg(port.to_string())
                    .arg(&ca)
                    .arg("120")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start the session's agent"),
            );
            // Its first contact decided and its call answered: the session is open.
            std::thread::sleep(Duration::from_millis(2000));
            agent
        };
        for (what, unit, count, args) in cases {
            let cmd = py(args);
            let (mut plain, mut again, mut libc, mut syscalls) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..11 {
                for (config, session, out) in [
                    ("", false, &mut plain),
                    ("", false, &mut again),
                    (LIBC, true, &mut libc),
                    (SYSCALLS, true, &mut syscalls),
                ] {
                    let daemon = start_daemon_with(&scratch, Some(config));
                    std::thread::sleep(Duration::from_millis(2000));
                    let agent = session.then(open_session);
                    out.push(time_loop(&mut cmd()));
                    drop(agent);
                    drop(daemon);
                    std::thread::sleep(Duration::from_millis(1000));
                }
            }
            let paired = |on: &[f64]| median(on.iter().zip(&plain).map(|(a, b)| a / b).collect());
            let (r_again, r_libc, r_sys) = (paired(&again), paired(&libc), paired(&syscalls));
            let (plain, libc, syscalls) = (median(plain), median(libc), median(syscalls));
            let runs = |config: &str| {
                let daemon = start_daemon_with(&scratch, Some(config));
                std::thread::sleep(Duration::from_millis(2000));
                let agent = open_session();
                let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
                let before = prog_stats(daemon.0.id());
                time_loop(&mut cmd());
                let after = prog_stats(daemon.0.id());
                let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
                drop(agent);
                drop(daemon);
                std::thread::sleep(Duration::from_millis(1000));
                after.0.saturating_sub(before.0) as f64 / count as f64
            };
            let (runs_libc, runs_sys) = (runs(LIBC), runs(SYSCALLS));
            let _ = writeln!(
                report,
                "| {what} | {plain:.3} s | {r_again:.3} | {libc:.3} s | {r_libc:.3} | {syscalls:.3} s | {r_sys:.3} | {:.2} µs per {unit} | {runs_libc:.1} / {runs_sys:.1} runs |",
                (r_sys - 1.0) * plain / count as f64 * 1e6,
            );
        }
    }

    // `[actions] files`: what the processes of sessions pay (the workload is the agent itself,
    // after its call, and its children).
    if want("files-session") {
        std::fs::write(scratch.join("in_session.py"), IN_SESSION).unwrap();
        let spawns = 2000;
        let _ = write!(
            report,
            "\n## `[actions] files = true`: its cost for the processes of sessions\n\n\
The same workloads run by an agent, in its session: it makes one call to the mock, then `exec`s the workload\n\
(its children are the session's too). The daemon with `[actions] files = false`, then `true` with each kind of\n\
hook, alternately, 5 runs each, medians (timed inside the process), ratios as above. With `libc` each C library\n\
call that changes a file hits a breakpoint (entry and return), and each program a session's process runs is\n\
stopped at its `exec` until the daemon has covered it with its own perf events.\n\n\
| workload | files off | libc | ratio | syscalls | ratio | added per unit: libc / syscalls |\n|---|---|---|---|---|---|---|\n"
        );
        const LIBC: &str = "[actions]\nfiles = true\nfile_hooks = \"libc\"\n";
        const SYSCALLS: &str = "[actions]\nfiles = true\nfile_hooks = \"syscalls\"\n";
        let cases: [(String, &str, usize, Vec<String>); 2] = [
            open_loop(),
            (
                format!("{spawns} × `posix_spawn` of `/bin/true` and `waitpid`"),
                "process",
                spawns,
                vec![s("syscall_tax.py"), "spawn".into(), spawns.to_string()],
            ),
        ];
        for (what, unit, count, args) in cases {
            let cmd = || {
                let mut c = Command::new(&python);
                c.arg(scratch.join("in_session.py"))
                    .arg(port.to_string())
                    .arg(&ca)
                    .arg(&python)
                    .args(&args);
                c
            };
            let (mut off, mut libc, mut syscalls) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..5 {
                for (config, out) in [("", &mut off), (LIBC, &mut libc), (SYSCALLS, &mut syscalls)]
                {
                    let daemon = start_daemon_with(&scratch, Some(config));
                    std::thread::sleep(Duration::from_millis(2000));
                    out.push(time_loop(&mut cmd()));
                    drop(daemon);
                    std::thread::sleep(Duration::from_millis(1000));
                }
            }
            let paired = |on: &[f64]| median(on.iter().zip(&off).map(|(a, b)| a / b).collect());
            let (r_libc, r_sys) = (paired(&libc), paired(&syscalls));
            let (off, libc, syscalls) = (median(off), median(libc), median(syscalls));
            let per = |r: f64| (r - 1.0) * off / count as f64 * 1e6;
            let _ = writeln!(
                report,
                "| {what} | {off:.3} s | {libc:.3} s | {r_libc:.3} | {syscalls:.3} s | {r_sys:.3} | {:.2} / {:.2} µs per {unit} |",
                per(r_libc),
                per(r_sys),
            );
        }
    }

    if want("first-contact") {
        first_contact_section(&mut report, &scratch, &python, port, &ca);
    }
    if !only.is_empty() {
        print!("{report}");
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_dir_all(&shm_dir);
        return;
    }

    // Ceilings: the gate holds every call of a gated session for a decision.
    let (plain, gated) = a_b(
        &scratch,
        5,
        "",
        "[ceilings]\nsession_tokens = 1000000000000000\naction = \"kill\"\n",
        || {
            let mut c = Command::new(&python);
            c.arg(scratch.join("client.py"))
                .arg(port.to_string())
                .arg(&ca)
                .arg(n.to_string());
            c
        },
    );
    let _ = write!(
        report,
        "\n## Ceilings: cost of the in-kernel gate on allowed calls\n\n{n} sequential HTTPS calls as above, daemon without ceilings vs. with a ceiling that is never reached\n\
(every call of the session is stopped at `SSL_write`, decided by the daemon, and continued).\n\n\
| no ceilings | gated | ratio (gated/plain) | added per call |\n|---|---|---|---|\n| {:.3} s | {:.3} s | {:.3} | {:.0} µs |\n",
        plain,
        gated,
        gated / plain,
        (gated - plain) / n as f64 * 1e6
    );

    // With ceilings, a cgroup_skb egress program sees every packet the host sends (to keep a
    // held socket's bytes inside); traffic that is not held pays one map lookup per packet.
    let (plain, egress) = a_b(
        &scratch,
        5,
        "",
        "[ceilings]\nsession_tokens = 1000000000000000\naction = \"kill\"\n",
        || {
            let mut c = Command::new(&python);
            c.arg(scratch.join("socket_tax.py")).arg(pairs.to_string());
            c
        },
    );
    let _ = write!(
        report,
        "\n## Ceilings: cost of the egress hold program and the pre-send hook on traffic that is not held\n\n\
The plain-socket workload above ({pairs} rounds of two 64-byte sends and two reads on loopback, so at least {} egress\n\
packets), daemon without ceilings vs. with a ceiling (the `cgroup_skb/egress` program that keeps held sockets'\n\
bytes in the host, and the pre-send hook `tcp:tcp_sendmsg_locked`, are attached only then: every packet the\n\
host sends passes the first, every TCP write the second; each of the two sends of a round pays both).\n\n\
| no ceilings | ceilings | ratio (ceilings/none) | added per round (2 sends) |\n|---|---|---|---|\n| {:.3} s | {:.3} s | {:.3} | {:.2} µs |\n",
        pairs * 2,
        plain,
        egress,
        egress / plain,
        (egress - plain) / pairs as f64 * 1e6
    );

    // Time from the crossing response to the session being stopped (the client reaped).
    let mut stops = Vec::new();
    for rep in 0..5 {
        let daemon = start_daemon_with(
            &scratch,
            Some("[ceilings]\nsession_calls = 10\naction = \"kill\"\n"),
        );
        let tag = format!("stop-{rep}");
        let mut child = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/openai_chat.py"))
            .args(["--base-url", &format!("https://127.0.0.1:{port}"), "--ca"])
            .arg(&ca)
            .args(["--calls", "50", "--tag", &tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited_ms = loop {
            if child.try_wait().unwrap().is_some() {
                break unix_ms();
            }
            assert!(Instant::now() < deadline, "the loop was not stopped");
            std::thread::sleep(Duration::from_micros(200));
        };
        drop(daemon);
        let log = std::fs::read_to_string(scratch.join("mock.jsonl")).unwrap_or_default();
        let served: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["tag"] == tag.as_str())
            .collect();
        assert_eq!(served.len(), 10, "exactly the allowed calls left the host");
        let last_ms = served
            .iter()
            .filter_map(|v| v["ts_ms"].as_f64())
            .fold(f64::MIN, f64::max);
        stops.push(exited_ms - last_ms);
    }
    let _ = write!(
        report,
        "\n## Ceilings: from the crossing response to the session stopped\n\n\
Python `openai` SDK in a tight loop, `session_calls = 10`, `action = \"kill\"`: time from the mock server logging the\n\
10th (crossing) response to the client process being reaped (ms clocks; includes the client reading the response).\n\
In each of 5 runs exactly 10 calls reached the server.\n\n\
| median | min | max |\n|---|---|---|\n| {:.1} ms | {:.1} ms | {:.1} ms |\n",
        median(stops.clone()),
        stops.iter().cloned().fold(f64::MAX, f64::min),
        stops.iter().cloned().fold(f64::MIN, f64::max)
    );

    report.push_str(
        "\n## Note on earlier figures\n\n\
An earlier version of this file reported 35 µs per call and an 18 µs tax. Those runs had a stray agentwatch\n\
daemon from debugging attached the whole time, so the \"daemon off\" side also paid for probes and the cost was\n\
understated. Figures here come from a clean run (one daemon at a time).\n",
    );
    print!("{report}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    std::fs::write(&path, report).unwrap();
    eprintln!("wrote {}", path.display());
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&shm_dir);
}

/// Runs `cmd` to its end; (wall seconds, its own peak RSS in MiB) from wait4.
fn time_and_rss(cmd: &mut Command) -> (f64, f64) {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    // SAFETY: wait4 on our own child, with valid out-pointers; the Child is forgotten so it is
    // not waited twice.
    let rss = unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        std::mem::forget(child);
        usage.ru_maxrss as f64 / 1024.0
    };
    (started.elapsed().as_secs_f64(), rss)
}

/// Waits (bounded) until `pred` holds over the daemon's status; returns it.
fn wait_status(sock: &Path, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(sock);
        if pred(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stats_line(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "{:.1} ms | {:.1} ms | {:.1} ms",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

/// First contact: how long a new process is held at its first call, the analysis of agent
/// binaries nobody has seen, the daemon's memory idle and with probed processes, and how
/// long it takes to stop.
fn first_contact_section(report: &mut String, scratch: &Path, python: &Path, port: u16, ca: &Path) {
    let sock = scratch.join("aw.sock");
    let curl = || {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(ca)
            .args(["-H", "content-type: application/json", "-d"])
            .arg(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
            .arg(format!("https://127.0.0.1:{port}/v1/chat/completions"));
        c
    };
    let hold_of = |s: &serde_json::Value| s["first_contact"]["stats"]["last_hold_ms"].as_f64();
    let holds_of =
        |s: &serde_json::Value| s["first_contact"]["stats"]["holds"].as_u64().unwrap_or(0);
    let mut rows = String::new();
    for (label, gap, config) in [
        (
            "one `curl` call every 1.5 s (each the only one in the kernel's grace-period window)",
            1500u64,
            "",
        ),
        (
            "the same, with `expedite_first_contact = false` (the kernel's ordinary grace periods)",
            1500,
            "[probes]\nexpedite_first_contact = false\n",
        ),
        ("`curl` calls back to back", 0, ""),
    ] {
        let daemon = start_daemon_with(scratch, Some(config));
        let mut ms = Vec::new();
        for i in 0..15u64 {
            std::thread::sleep(Duration::from_millis(gap));
            time_cmd(&mut curl());
            let s = wait_status(&sock, |s| holds_of(s) > i);
            if let Some(h) = hold_of(&s) {
                ms.push(h);
            }
        }
        drop(daemon);
        let _ = writeln!(rows, "| {label} | {} |", stats_line(&mut ms));
    }
    // A binary nobody has seen: the hold includes its analysis.
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/static-openssl/release/static-openssl-client");
    if vendored.exists() {
        let daemon = start_daemon(scratch);
        let mut ms = Vec::new();
        for i in 0..5u8 {
            let copy = scratch.join(format!("static-client-{i}"));
            let mut bytes = std::fs::read(&vendored).unwrap();
            // A build id of its own (its last byte changed), so no cached analysis applies.
            let note = bytes.windows(16).position(|w| {
                w[0..4] == [4, 0, 0, 0] && w[8..12] == [3, 0, 0, 0] && &w[12..16] == b"GNU\0"
            });
            match note {
                Some(at) => {
                    let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
                    bytes[at + 16 + size as usize - 1] ^= i + 1;
                }
                None => bytes.push(i),
            }
            std::fs::write(&copy, bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut c = Command::new(&copy);
            c.arg(port.to_string())
                .arg(ca)
                .arg(format!("bench-new-{i}"))
                .arg("1");
            time_cmd(c.stdout(Stdio::null()));
            let s = wait_status(&sock, |s| holds_of(s) > i as u64);
            if let Some(h) = hold_of(&s) {
                ms.push(h);
            }
        }
        drop(daemon);
        let _ = writeln!(
            rows,
            "| a static OpenSSL 3.6 client never seen before (stripped, 6 MB; analysed while it waits) | {} |",
            stats_line(&mut ms)
        );
    }
    // A plain-HTTP call while the read hook is off: its connect to the plain port stops the
    // process until the hook is attached (`read_holds`), each sample after it came off again.
    {
        let plain_dir = scratch.join("plain-mock");
        std::fs::create_dir_all(&plain_dir).unwrap();
        let mut mock = Command::new(env_path("MOCK_LLM_BIN", "target/release/mock-llm"))
            .args([
                "--plain",
                "--listen",
                "127.0.0.1:0",
                "--exit-after-secs",
                "600",
            ])
            .arg("--state-dir")
            .arg(&plain_dir)
            .arg("--log")
            .arg(plain_dir.join("mock.jsonl"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start mock-llm --plain");
        let plain_port = agentwatch_tests::harness::first_line_port(&mut mock);
        let _mock = Proc(mock);
        let daemon = start_daemon_with(
            scratch,
            Some(&format!("[probes]\nplaintext_ports = [{plain_port}]\n")),
        );
        let read_holds = |s: &serde_json::Value| {
            s["first_contact"]["stats"]["read_holds"]
                .as_u64()
                .unwrap_or(0)
        };
        let mut ms = Vec::new();
        for i in 0..8u64 {
            wait_status(&sock, |s| s["read_hook"]["attached"] == false);
            let mut c = Command::new("curl");
            c.args([
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                "content-type: application/json",
                "-d",
            ])
            .arg(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
            .arg(format!("http://127.0.0.1:{plain_port}/v1/chat/completions"));
            time_cmd(&mut c);
            let s = wait_status(&sock, |s| read_holds(s) > i);
            if read_holds(&s) > i
                && let Some(h) = s["first_contact"]["stats"]["last_read_hold_ms"].as_f64()
            {
                ms.push(h);
            }
        }
        drop(daemon);
        if !ms.is_empty() {
            let _ = writeln!(
                rows,
                "| a plain-HTTP `curl` call to a `plaintext_ports` port while the read hook is off (stopped at its connect until the hook is attached; not a first contact) | {} |",
                stats_line(&mut ms)
            );
        }
    }
    let _ = write!(
        report,
        "\n## First contact: the hold on a new process's first call\n\n\
From the kernel stopping the process at its first ClientHello (an IP-literal endpoint: no SNI) to the daemon\n\
continuing it with its probes attached (`first_contact.stats.last_hold_ms`), 15 processes each (5 for the new binary).\n\
A process is held once, at its first contact; its later connections, and processes that contact no LLM endpoint, are not.\n\
The hold includes attaching the read hook when it is off. The last row: a plain-HTTP call while the read hook is\n\
off (`first_contact.stats.last_read_hold_ms`, 8 calls, each after the hook came off again).\n\n\
| case | median | min | max |\n|---|---|---|---|\n{rows}\n\
A uprobe registered after a quiet moment waits for one RCU grace period (`register_for_each_vma` takes\n\
`dup_mmap_sem`, a per-CPU rw-semaphore, for writing); attaches that follow within that window take tens of µs. The\n\
daemon sets `/sys/kernel/rcu_expedited` while it attaches a held process's probes (and puts it back right after), so\n\
that wait is an expedited grace period; the second row is the hold without it.\n"
    );
    if std::env::args().any(|a| a == "--hold-only") {
        return;
    }

    // Analysis of the pinned agents, as `agentwatch inspect` runs it (no cache).
    let bin = env_path("AGENTWATCH_BIN", "target/release/agentwatch");
    let agents = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/node_modules");
    let mut rows = String::new();
    for (name, rel) in [
        ("Claude Code 2.1.328", "claude-code-2.1.328/claude"),
        ("Claude Code 2.1.110", "claude-code-2.1.110/claude"),
        (
            "Codex 0.169.0",
            "@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
        ),
        (
            "Codex 0.160.0",
            "codex-0.160.0/vendor/x86_64-unknown-linux-musl/bin/codex",
        ),
    ] {
        let path = agents.join(rel);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (t, r) = time_and_rss(Command::new(&bin).arg("inspect").arg(&path));
            times.push(t);
            rss.push(r);
        }
        let (_, idle) = time_and_rss(Command::new(&bin).arg("inspect").arg("/bin/true"));
        let _ = writeln!(
            rows,
            "| {name} | {:.0} MB | {:.2} s | {:.0} MB | {:.0} MB |",
            meta.len() as f64 / 1e6,
            median(times),
            median(rss.clone()),
            median(rss) - idle
        );
    }
    let _ = write!(
        report,
        "\n## Analysis of agent binaries nobody has seen\n\n\
`agentwatch inspect BIN` (the daemon's analysis, without its cache), 3 runs, medians; peak RSS from `wait4`. The file\n\
is memory-mapped and read 8 MiB at a time, each window's pages let go of once read (they stay in the page cache),\n\
so a pass over a 300 MB binary holds one window of it, not all of it. The daemon keeps each result in\n\
`<data_dir>/analysis` by build id (or content hash), so a restart or another node sharing it does not analyse again.\n\n\
| binary | size | time | peak RSS | above `inspect /bin/true` |\n|---|---|---|---|---|\n{rows}"
    );

    // The daemon's memory, idle and with probed processes; how long it takes to stop.
    let daemon = start_daemon(scratch);
    // Past start-up (its executable's start-up pages are let go of 5 s in), idling; its CPU
    // time over the last 10 s of it.
    std::thread::sleep(Duration::from_secs(5));
    let cpu_before = cpu_ticks(daemon.0.id());
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_ticks(daemon.0.id()) - cpu_before) as f64 / clock_ticks() / 10.0 * 100.0;
    let (idle_rss, idle_anon) = rss_mib(daemon.0.id());
    let (idle_ring, idle_file) = rss_parts_mib(daemon.0.id());
    // Agents started 100 at a time, each batch probed before the next, up to 1,000 or 5 min.
    let n = 1000;
    let mut clients = Vec::new();
    let mut batches = String::new();
    let all_started = Instant::now();
    let mut probed = 0;
    while clients.len() < n && all_started.elapsed() < Duration::from_secs(300) {
        let batch_started = Instant::now();
        for _ in 0..100 {
            clients.push(Proc(
                Command::new("openssl")
                    .args(["s_client", "-quiet", "-connect"])
                    .arg(format!("127.0.0.1:{port}"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("openssl s_client"),
            ));
        }
        let want = clients.len() as u64;
        let s = wait_status(&sock, |s| {
            s["probed_processes"]["now"].as_u64().unwrap_or(0) >= want
        });
        probed = s["probed_processes"]["now"].as_u64().unwrap_or(0);
        let (rss, anon) = rss_mib(daemon.0.id());
        let _ = writeln!(
            batches,
            "| {probed} | {:.1} s | {rss:.1} MiB | {anon:.1} MiB |",
            batch_started.elapsed().as_secs_f64()
        );
        if probed < want {
            break;
        }
    }
    let (busy_rss, busy_anon) = rss_mib(daemon.0.id());
    let started = Instant::now();
    drop(clients);
    let s = wait_status(&sock, |s| {
        s["probed_processes"]["now"].as_u64() == Some(0)
            && s["probed_processes"]["links_closing"].as_u64() == Some(0)
    });
    let released = started.elapsed().as_secs_f64();
    let released_ok = s["probed_processes"]["links_closing"].as_u64() == Some(0);
    let links_kind = s["probed_processes"]["links"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    drop(daemon);
    let mut exits = String::new();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        for busy in [0usize, 20] {
            let daemon = start_daemon(scratch);
            let mut clients = Vec::new();
            for _ in 0..busy {
                clients.push(Proc(
                    Command::new("openssl")
                        .args(["s_client", "-quiet", "-connect"])
                        .arg(format!("127.0.0.1:{port}"))
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                ));
            }
            wait_status(&sock, |s| {
                s["probed_processes"]["now"].as_u64().unwrap_or(0) >= busy as u64
            });
            let mut child = daemon;
            let started = Instant::now();
            unsafe { libc::kill(child.0.id() as i32, signal) };
            let _ = child.0.wait();
            let took = started.elapsed().as_secs_f64();
            std::mem::forget(child);
            // Both leave the kernel side pinned: the next daemon adopts it, the clients
            // still connected (and probed).
            let started = Instant::now();
            let next = start_daemon(scratch);
            let ready = started.elapsed().as_secs_f64();
            let s = status(&sock);
            let ks = &s["kernel_side"];
            let _ = writeln!(
                exits,
                "| {name} | {busy} | {took:.2} s | {ready:.2} s | {}, {} probed processes adopted, gap {} s |",
                ks["origin"].as_str().unwrap_or("?"),
                ks["adopted_processes"],
                ks["gap_secs"]
            );
            drop(clients);
            drop(next);
        }
    }
    let _ = python;
    let _ = write!(
        report,
        "\n## The daemon's memory and exit\n\n\
Idle (15 s after start, no agent): VmRSS {idle_rss:.1} MiB. Of it, RssAnon {idle_anon:.1} MiB is the daemon's own\n\
memory; {idle_ring:.1} MiB is its mapping of the ring buffer (the kernel's pages, `ring_buffer_bytes` = 8 MiB by default,\n\
mapped once, all resident from the start: memory the kernel holds for the map whether it is mapped or not);\n\
{idle_file:.1} MiB are pages of its executable and libraries (shared, reclaimable; the executable's start-up pages are\n\
let go of once it runs). Its CPU time while idle, over 10 s: {idle_cpu:.2}% of one CPU.\n\n\
Agents (`openssl s_client` connected to the mock, 100 started at a time: each held and probed on libssl, 7\n\
links) added until {n} or 5 minutes; each batch's time is from starting its 100 processes to all of them probed\n\
(the kernel visits every process that maps the file at each uprobe registration):\n\n\
| processes probed | this batch took | VmRSS | RssAnon |\n|---|---|---|---|\n{batches}\n\
With {probed} probed: VmRSS {busy_rss:.1} MiB, RssAnon {busy_anon:.1} MiB.\n\n\
Once those {probed} processes exit, their probes are closed off the event loop ({} links, closed together on up to 32\n\
threads so their grace periods overlap): {released:.1} s until every link was closed{}.\n\n\
A daemon stopped by SIGTERM (a service manager, an upgrade) or killed leaves its kernel side pinned: nothing is\n\
torn down, and the next daemon started on the same data adopts it (its programs, maps, ring buffer and the probed\n\
processes' links), so nothing is missed in between (`tests/tests/restart.rs`: each served call exactly one row).\n\
\n\
| signal | probed processes | daemon exit | next daemon ready | next daemon's kernel side |\n|---|---|---|---|---|\n{exits}",
        links_kind,
        if released_ok {
            ""
        } else {
            " (not done within the 120 s wait)"
        }
    );
}
