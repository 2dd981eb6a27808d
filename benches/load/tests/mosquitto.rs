//! The built binary against a real Mosquitto on a free port (TESTING.md): 1,000 QoS 1 messages
//! published while `--mode bare-subscriber` counts them; both JSON reports are checked. Then the
//! broker's CPU as `--cpu-pid` reports it, and as several replicas' `--ccstream-pid` do.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::mosquitto::Mosquitto;

const BIN: &str = env!("CARGO_BIN_EXE_ccstream-load");

/// A Mosquitto of our own without the per-packet log: the tests read the broker's CPU.
fn broker() -> Mosquitto {
    Mosquitto::builder().log_packets(false).start()
}

/// Kills a child still running when the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait(child: &mut Child, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn publishes_1000_qos1_messages_that_a_bare_subscriber_counts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let url = broker.url();
    let (sub_json, pub_json) = (dir.path().join("sub.json"), dir.path().join("pub.json"));

    let mut sub = Guard(
        Command::new(BIN)
            .args(["--mode", "bare-subscriber", "--broker", &url, "--qos", "1"])
            .args(["--count", "1000", "--duration", "30", "--drain-secs", "5"])
            .arg("--json")
            .arg(&sub_json)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Publish only once the subscription is acknowledged: earlier messages would be lost.
    let mut lines = BufReader::new(sub.0.stderr.take().unwrap()).lines();
    let line = lines.next().expect("subscriber output").unwrap();
    assert!(
        line.starts_with("subscribed to $aws/things/+/shadow/update"),
        "{line}"
    );

    let mut publisher = Guard(
        Command::new(BIN)
            .args(["--broker", &url, "--qos", "1", "--count", "1000"])
            .args(["--things", "100", "--connections", "3", "--no-progress"])
            .arg("--cpu-pid")
            .arg(format!("mosquitto={}", broker.pid()))
            .arg("--json")
            .arg(&pub_json)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait(&mut publisher.0, "publisher", Duration::from_secs(30));
    wait(&mut sub.0, "subscriber", Duration::from_secs(30));

    let p = read_json(&pub_json);
    assert_eq!(p["mode"], "publish");
    assert_eq!(p["messages_published"], 1000, "{p}");
    assert_eq!(p["qos"], 1);
    assert!(p["rate_per_s"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p.get("webhooks_received").is_none(), "{p}");
    // 1,000 messages take the broker about one 10 ms clock tick: present, maybe 0. The test
    // below publishes enough for a positive figure.
    assert!(
        p["cpu"]["mosquitto"]["cpu_s"].as_f64().unwrap() >= 0.0,
        "{p}"
    );
    assert!(
        p["cpu"]["generator"]["cpu_s"].as_f64().unwrap() >= 0.0,
        "{p}"
    );

    let s = read_json(&sub_json);
    assert_eq!(s["mode"], "bare-subscriber");
    assert_eq!(s["messages_received"], 1000, "{s}");
    assert!(s["rate_per_s"].as_f64().unwrap() > 0.0, "{s}");
    let lat = &s["latency"];
    assert_eq!(lat["count"], 1000, "{s}");
    assert!(lat["p50_ms"].as_u64().unwrap() <= lat["p99_ms"].as_u64().unwrap());
    assert!(lat["p99_ms"].as_u64().unwrap() <= lat["max_ms"].as_u64().unwrap());
    assert!(
        s["cpu"]["generator"]["cpu_s"].as_f64().unwrap() >= 0.0,
        "{s}"
    );
}

#[test]
fn reports_the_cpu_the_broker_used() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let url = broker.url();
    let json = dir.path().join("pub.json");
    let mut publisher = Guard(
        Command::new(BIN)
            .args(["--broker", &url, "--qos", "1", "--count", "30000"])
            .args(["--things", "100", "--connections", "2", "--no-progress"])
            .arg("--cpu-pid")
            .arg(format!("mosquitto={}", broker.pid()))
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait(&mut publisher.0, "publisher", Duration::from_secs(60));
    let p = read_json(&json);
    assert_eq!(p["messages_published"], 30000, "{p}");
    // Tens of thousands of QoS 1 publishes and acks cost the broker well over one 10 ms tick.
    let m = &p["cpu"]["mosquitto"];
    assert!(m["cpu_s"].as_f64().unwrap() > 0.0, "{p}");
    assert!(m["cpu_us_per_message"].as_f64().unwrap() > 0.0, "{p}");
    assert!(m.get("exited").is_none(), "{p}");
    assert!(
        p["cpu"]["generator"]["cpu_s"].as_f64().unwrap() > 0.0,
        "{p}"
    );
    assert!(p.get("ccstream_cpu_s").is_none(), "{p}");
}

/// `--ccstream-pid` once per replica: the CPU summed, each replica's figures under `replicas`
/// (here the broker and an idle process stand in for two replicas); a count of
/// `--ccstream-metrics` that does not match is refused before anything is published.
#[test]
fn several_replicas_are_summed_and_reported_each() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker();
    let url = broker.url();
    let idle = Guard(Command::new("sleep").arg("60").spawn().unwrap());
    let json = dir.path().join("pub.json");
    let pids = [broker.pid().to_string(), idle.0.id().to_string()];
    let mut publisher = Guard(
        Command::new(BIN)
            .args(["--broker", &url, "--qos", "1", "--count", "20000"])
            .args(["--things", "100", "--connections", "2", "--no-progress"])
            .args(["--ccstream-pid", &pids[0], "--ccstream-pid", &pids[1]])
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait(&mut publisher.0, "publisher", Duration::from_secs(60));
    let p = read_json(&json);
    let replicas = p["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{p}");
    assert_eq!(replicas[0]["pid"].to_string(), pids[0], "{p}");
    assert_eq!(replicas[1]["pid"].to_string(), pids[1], "{p}");
    let cpu = |r: &Value| r["cpu_s"].as_f64().unwrap();
    assert!(cpu(&replicas[0]) > 0.0, "{p}");
    let sum = cpu(&replicas[0]) + cpu(&replicas[1]);
    assert!(
        (p["ccstream_cpu_s"].as_f64().unwrap() - sum).abs() < 1e-9,
        "{p}"
    );
    let rss = |r: &Value| r["peak_rss_mib"].as_f64().unwrap();
    assert_eq!(
        p["ccstream_peak_rss_mib"].as_f64().unwrap(),
        rss(&replicas[0]).max(rss(&replicas[1])),
        "{p}"
    );
    assert!(replicas[0].get("observations_stored").is_none(), "{p}");

    let out = Command::new(BIN)
        .args(["--broker", &url, "--count", "10", "--no-progress"])
        .args(["--ccstream-pid", &pids[0], "--ccstream-pid", &pids[1]])
        .args(["--ccstream-metrics", "http://127.0.0.1:9/metrics"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("once per replica"), "{err}");
}
