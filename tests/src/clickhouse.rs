//! A real ClickHouse server for the export tests: Debian's `clickhouse-server` (18.16, installed
//! by `cargo xtask setup`) started on loopback with its own config, ports and data directory,
//! stopped with TERM. `stop` + `start` keep the data, so a test can take it down mid-run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClickHouse {
    pub dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn server_binary() -> Option<PathBuf> {
    [
        "/usr/bin/clickhouse-server",
        "/usr/sbin/clickhouse-server",
        "/usr/bin/clickhouse",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl ClickHouse {
    /// Writes the config into `dir` and starts the server; panics with what to do if it is
    /// not installed or not ready in 30 s.
    pub fn start_in(dir: &Path) -> ClickHouse {
        std::fs::create_dir_all(dir).unwrap();
        let mut ch = ClickHouse {
            dir: dir.to_path_buf(),
            http_port: free_port(),
            tcp_port: free_port(),
            child: None,
        };
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<yandex>
  <logger><level>warning</level><log>{d}/log/server.log</log><errorlog>{d}/log/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{}</http_port>
  <tcp_port>{}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"#,
                ch.http_port, ch.tcp_port
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            r#"<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        ch.start();
        ch
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "ClickHouse already running");
        let bin = server_binary().unwrap_or_else(|| {
            panic!("clickhouse-server is not installed: run `cargo xtask setup` (apt-get install -y clickhouse-server clickhouse-client)")
        });
        let mut cmd = Command::new(&bin);
        if bin.ends_with("clickhouse") {
            cmd.arg("server");
        }
        let child = cmd
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .http("GET", "/ping", "")
                .map(|b| b == "Ok.\n")
                .unwrap_or(false)
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "clickhouse-server exited with {status}: {}{}",
                    std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default(),
                    std::fs::read_to_string(self.dir.join("log/error.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// TERM, then wait (bounded) for the exit; the data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: plain kill(2) on a child we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Runs `sql` over HTTP and returns the body, or the server's error.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        self.http("POST", "/", sql)
    }

    /// `SELECT ... FORMAT JSONEachRow` as JSON values.
    pub fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        let body = self
            .query(&format!("{sql} FORMAT JSONEachRow"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    fn http(&self, method: &str, path: &str, body: &str) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&resp).to_string();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
        if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
            Ok(body.to_string())
        } else {
            Err(format!("{}: {body}", head.lines().next().unwrap_or("")))
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
