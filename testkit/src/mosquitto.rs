//! A real Mosquitto per test (Debian package `mosquitto`) on a free port of 127.0.0.1, with its
//! own config file and log in a temp dir (TESTING.md), and publishing through the
//! `mosquitto_pub` CLI (package `mosquitto-clients`) with QoS 1.
//!
//! Every broker gets the test defaults: `allow_anonymous true`, `max_queued_messages 1000000`
//! (the default 1000 drops what a persistent session misses while its client is away) and
//! `persistence false`, so a broker started again ([`Mosquitto::kill`], then
//! [`Mosquitto::start_again`] on the same port) knows no sessions and a client must subscribe
//! again on its own. `max_inflight_messages` keeps Mosquitto's default of 20: tests rely on that
//! window. A [`Builder`] adds config lines (a TLS listener) or turns the per-packet log off.
//!
//! The process is killed by pid, never by name, when the [`Mosquitto`] is dropped, and its log
//! is printed when a test panics while it is alive. A missing `mosquitto` is a test failure
//! with the package to install, never a skip (`scripts/setup-test-deps.sh` installs it).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{free_port, tail};

/// How long Mosquitto gets to listen, and one `mosquitto_pub` to finish. Generous: CI machines
/// have 2 cores shared with other builds.
const WAIT: Duration = Duration::from_secs(15);

/// `name` on `PATH`, else `fallback` (`/usr/sbin` is not on every user's `PATH`).
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

/// How to start a [`Mosquitto`]; [`Mosquitto::start`] is `Mosquitto::builder().start()`.
#[derive(Debug, Clone)]
pub struct Builder {
    log_packets: bool,
    extra: String,
}

impl Builder {
    /// Whether Mosquitto logs every packet (`log_type all`; on by default, for the log printed
    /// when a test fails). Off, it logs connections and errors only: a test that measures the
    /// broker's CPU does not want a log line per message in it.
    pub fn log_packets(mut self, on: bool) -> Builder {
        self.log_packets = on;
        self
    }

    /// Config lines appended after the defaults, for example a second listener with TLS:
    /// `listener <port> 127.0.0.1`, `cafile ...`, `require_certificate true`. The first
    /// listener stays the plain one on [`Mosquitto::port`].
    pub fn config(mut self, lines: &str) -> Builder {
        self.extra.push_str(lines);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// Starts Mosquitto on a free port and waits until the port accepts connections.
    pub fn start(self) -> Mosquitto {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n\
             persistence false\nlog_dest stderr\n"
        );
        if self.log_packets {
            conf.push_str("log_type all\n");
        }
        conf.push_str(&self.extra);
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
        };
        if let Err(e) = m.try_spawn() {
            panic!("{e}");
        }
        m
    }
}

/// A Mosquitto process of our own, killed (SIGKILL, by pid) when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto with the test defaults on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::builder().start()
    }

    /// Options for [`Builder::start`]: the packet log, extra config lines.
    pub fn builder() -> Builder {
        Builder {
            log_packets: true,
            extra: String::new(),
        }
    }

    /// The plain listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's pid (for measuring its CPU); panics after [`Mosquitto::kill`].
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mosquitto is not running").id()
    }

    /// The temp dir with `mosquitto.conf` and `mosquitto.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts the process and waits for its port; an error when it exits first (for example
    /// because the port is still held) or does not listen in time.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(find("mosquitto", "/usr/sbin/mosquitto"))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let dir = self.dir.path().to_owned();
        let log = move || std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        crate::wait_listening("mosquitto", &mut self.child, addr, WAIT, || true, log)
    }

    /// Kills the broker (SIGKILL, by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new broker on the same port and config after [`Mosquitto::kill`]; it knows no
    /// sessions. Tries again while the port is still held, up to the start timeout.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "kill the broker before starting it again"
        );
        crate::retry_start(WAIT, || self.try_spawn());
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

/// Runs `mosquitto_pub -q 1` against 127.0.0.1:`port` (any broker, the embedded one too) with
/// `input` on stdin (`-s`: one message, `-l`: one per line); it exits once the broker
/// acknowledged every message.
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
    let status = crate::wait_or_kill(&mut child, WAIT).unwrap_or_else(|| {
        panic!("mosquitto_pub -p {port} -t {topic} did not finish within {WAIT:?}")
    });
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

/// Publishes every `(topic, payload)` with QoS 1, in order, over one clean-session connection
/// to the broker at `port` (Mosquitto or the embedded rumqttd), and returns once every PUBACK
/// arrived (the broker has them all). For many topics at once, which one `mosquitto_pub` per
/// topic would make slow.
///
/// The connection is then closed without a DISCONNECT: rumqttd 0.20 counts a DISCONNECT and the
/// socket's close as two disconnections, and the second one, when late, drops whichever client
/// got the same connection slot meanwhile (the next publisher, or the source).
pub async fn publish_all(port: u16, messages: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "testkit-pub-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let count = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    let deadline = WAIT + Duration::from_millis(count as u64);
    tokio::time::timeout(deadline, async {
        while acked < count {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher to port {port}: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("publisher to port {port}: {acked} of {count} PUBACKs"));
    let _ = sender.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// Starts, publishes, restarts on the same port, publishes again; the pid changes.
    #[test]
    fn starts_publishes_and_starts_again_on_the_same_port() {
        let mut broker = Mosquitto::start();
        assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{}", broker.port()));
        let first = broker.pid();
        broker.publish("t/one", b"1");
        broker.publish_lines("t/lines", &["a", "b"]);
        broker.kill();
        let addr = SocketAddr::from(([127, 0, 0, 1], broker.port()));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
        broker.start_again();
        assert_ne!(broker.pid(), first);
        broker.publish("t/two", b"2");
        assert!(
            broker.log().contains("Received PUBLISH"),
            "log_type all: {}",
            broker.log()
        );
    }

    /// A missing binary fails the test and names the package; it is never a skip.
    #[test]
    #[should_panic(expected = "is not installed (Debian packages `mosquitto`")]
    fn a_missing_binary_is_a_failure_with_the_package_to_install() {
        find("mosquitto-not-here", "/nonexistent/mosquitto");
    }

    #[test]
    fn extra_config_lines_and_a_quiet_log() {
        let second = free_port();
        let broker = Mosquitto::builder()
            .log_packets(false)
            .config(&format!("listener {second} 127.0.0.1"))
            .start();
        mosquitto_pub(second, "t/second", &["-s"], b"x");
        broker.publish("t/first", b"y");
        assert!(
            !broker.log().contains("Received PUBLISH"),
            "{}",
            broker.log()
        );
        let conf = std::fs::read_to_string(broker.dir().join("mosquitto.conf")).unwrap();
        assert!(
            conf.ends_with(&format!("listener {second} 127.0.0.1\n")),
            "{conf}"
        );
    }
}
