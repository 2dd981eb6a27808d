//! A real Mosquitto per test, on a free port with its own config file (TESTING.md), and
//! publishing through the `mosquitto_pub` CLI with QoS 1.
//!
//! Mosquitto missing is a test failure, not a skip: `scripts/setup-test-deps.sh` installs it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

/// How long Mosquitto gets to listen, and one `mosquitto_pub` to finish.
const WAIT: Duration = Duration::from_secs(10);

fn find(name: &str, fallback: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from(fallback)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (Debian packages `mosquitto` and `mosquitto-clients`); \
                 these tests need a real broker"
            )
        })
}

/// A Mosquitto process of our own, killed by pid when dropped. Its log is printed when a test
/// panics while it is alive.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts on a free port.
    pub fn start() -> Mosquitto {
        let dir = TempDir::new().unwrap();
        let mut m = Mosquitto {
            child: None,
            port: free_port(),
            dir,
        };
        m.spawn();
        m
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the process and waits for its port; an error when it exits first (for example
    /// because the port is still held).
    fn try_spawn(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        // No persistence: a broker started again knows no sessions, so a client must
        // resubscribe on its own.
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
                 persistence false\nlog_dest stderr\nlog_type all\n",
                self.port
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(find("mosquitto", "/usr/sbin/mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                return Err(format!("mosquitto exited with {status}:\n{}", self.log()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "mosquitto did not listen on {addr} within {WAIT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL, by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new broker on the same port after [`Mosquitto::kill`]; it knows no sessions.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "kill the broker before starting it again"
        );
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Publishes `payload` to `topic` with QoS 1 and returns once the broker acknowledged it.
    pub fn publish(&self, topic: &str, payload: &[u8]) {
        mosquitto_pub(self.port, topic, &["-s"], payload);
    }

    /// Publishes every line as one message, in order, over one connection, with QoS 1.
    pub fn publish_lines<S: AsRef<str>>(&self, topic: &str, lines: &[S]) {
        let mut input = String::new();
        for line in lines {
            let line = line.as_ref();
            assert!(!line.contains('\n'), "one message per line: {line:?}");
            input.push_str(line);
            input.push('\n');
        }
        mosquitto_pub(self.port, topic, &["-l"], input.as_bytes());
    }
}

/// Runs `mosquitto_pub -q 1` against 127.0.0.1:`port` with `input` on stdin (`-s`: one message,
/// `-l`: one per line); it exits once the broker acknowledged every message.
pub fn mosquitto_pub(port: u16, topic: &str, mode: &[&str], input: &[u8]) {
    let port_arg = port.to_string();
    let mut child = Command::new(find("mosquitto_pub", "/usr/bin/mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port_arg, "-q", "1", "-t", topic])
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    // A large payload does not fit in the pipe: write it from another thread.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_pub -p {port} -t {topic} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "mosquitto_pub -p {port} -t {topic} exited with {status}: {stderr}"
    );
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto log (port {}) ---\n{}",
                self.port,
                tail(&self.log(), 100)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
