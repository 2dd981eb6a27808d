//! Test support shared by the suites of several workspace crates (`tests/` of the binary,
//! `sinks/tests/`, `ingest/tests/`, `benches/load/tests/`), which cannot import each other's
//! test files. Only ever a dev-dependency.
//!
//! - [`mosquitto`]: a real Mosquitto per test on a free port, and `mosquitto_pub`.
//! - [`proxy`]: a TCP forwarder whose connections a test can cut (a client's connection drops,
//!   the broker's session stays).
//! - [`redis`]: a real Redis per test on a free port, stopped and started for outages.
//! - [`receiver`]: a scripted webhook receiver that records requests, on its own thread or on
//!   the test's runtime (for tests under a paused clock).
//! - [`search_standin`]: an OpenSearch stand-in (OpenSearch cannot be installed here).
//! - [`weed`]: a real SeaweedFS (S3) per test on free ports.
//! - [`free_port`]: a port on 127.0.0.1 no other test of this process is given.
//! - [`wait_or_kill`]: a child process's exit, or a kill when it overstays.
//!
//! Test support panics on setup failures (that is a failed test), hence `unwrap` here.
#![allow(clippy::unwrap_used)]

pub mod mosquitto;
pub mod moto;
pub mod proxy;
pub mod receiver;
pub mod redis;
pub mod search_standin;
pub mod weed;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Waits up to `timeout` for `child` to exit. `None` when it did not: it is then killed and
/// reaped, and the caller reports the failure with what it knows (logs, arguments).
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Ports handed out in this process are
/// remembered so that tests running in parallel never get the same one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port on 127.0.0.1")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// The last `lines` lines of a server's log, for a failed test's output.
/// Waits until the server `child` (just spawned) accepts connections on `addr` and `ready`
/// holds, for up to `wait`. An error, with `log()`, when it exits first or does not listen in
/// time (then it is killed): a port still held by a predecessor, say.
pub(crate) fn wait_listening(
    what: &str,
    child: &mut Option<Child>,
    addr: std::net::SocketAddr,
    wait: Duration,
    ready: impl Fn() -> bool,
    log: impl Fn() -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
            *child = None;
            return Err(format!("{what} exited with {status}:\n{}", log()));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            && ready()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(format!(
                "{what} did not listen on {addr} within {wait:?}:\n{}",
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `start` until it succeeds or `wait` has passed (then panics with its last error): a
/// server started again on the port its predecessor held a moment ago.
pub(crate) fn retry_start(wait: Duration, mut start: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + wait;
    loop {
        match start() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
