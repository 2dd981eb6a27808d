//! A real Redis per test (Debian package `redis-server`) on a free port of 127.0.0.1, never the
//! machine's own instance on 6379 (TESTING.md). It keeps nothing on disk (`--save ""
//! --appendonly no`) unless [`Redis::start_persistent`] asks for an append-only file, so that a
//! restart keeps the data.
//!
//! [`Redis::stop`] and [`Redis::start_again`] make an outage on the same port. The process is
//! killed by pid when dropped, and its log printed when a test panics. `redis-cli` (same
//! package) reads keys for the assertions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{free_port, retry_start, tail, wait_listening};

const WAIT: Duration = Duration::from_secs(15);

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.is_file(),
        "`{name}` is not installed (Debian package `redis-server`); these tests need a real Redis"
    );
    path
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis process of our own.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    persistent: bool,
}

impl Redis {
    /// Starts Redis in memory only.
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// Starts Redis with an append-only file fsynced at every write: a [`Redis::stop`] (even a
    /// SIGKILL) and [`Redis::start_again`] keep everything it acknowledged.
    pub fn start_persistent() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(persistent: bool) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: TempDir::new().unwrap(),
            persistent,
        };
        r.spawn().unwrap_or_else(|e| panic!("{e}"));
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is not running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_str().unwrap().to_owned();
        let mut cmd = Command::new(binary("redis-server"));
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
            .args(["--save", ""])
            .args(["--logfile", "redis.log"]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let dir = self.dir.path().to_owned();
        let log = move || std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        let port = self.port;
        let answers = move || redis_cli(port, &["PING"]).trim() == "PONG";
        wait_listening("redis-server", &mut self.child, addr, WAIT, answers, log)
    }

    /// Kills Redis (SIGKILL) and waits for it: an outage, or a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port after [`Redis::stop`] (with its data when
    /// persistent), retrying while the port is still held.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop redis before starting it again");
        retry_start(WAIT, || self.spawn());
    }

    /// `redis-cli -p <port> ARGS...`: what it printed (raw mode, one value per line).
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The keys matching `pattern` (`SCAN`, never `KEYS` habits in tests either).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .cli(&["--scan", "--pattern", pattern])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- redis log (port {}) ---\n{}",
                self.port,
                tail(&self.log(), 50)
            );
        }
    }
}
