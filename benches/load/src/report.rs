//! Latency percentiles and the run report (table and JSON). Pure.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in milliseconds, up to an hour, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts; `new_with_bounds` only fails on
        // invalid bounds.
        #[allow(clippy::unwrap_used)]
        let h = Histogram::new_with_bounds(1, 3_600_000, 3).unwrap();
        Latencies(h)
    }

    /// Records `arrived - sent`; clock steps backwards count as 0 ms, values over an hour are
    /// clamped to an hour.
    pub fn record(&mut self, sent_ms: u64, arrived_ms: u64) {
        self.0.saturating_record(arrived_ms.saturating_sub(sent_ms));
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: self.0.len(),
            p50_ms: self.0.value_at_quantile(0.50),
            p99_ms: self.0.value_at_quantile(0.99),
            max_ms: self.0.max(),
        })
    }
}

/// Percentiles of one latency measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// What one run measured. Fields that do not apply to the mode are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `publish` or `bare-subscriber`.
    pub mode: String,
    pub qos: u8,
    pub connections: usize,
    pub things: u32,
    /// Messages/s asked for; absent when publishing as fast as the broker takes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// Publish mode: acknowledged by the broker (QoS 1) or written to the socket (QoS 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_published: Option<u64>,
    /// Bare-subscriber mode: messages delivered to the subscriber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_received: Option<u64>,
    /// From the first to the last message.
    pub duration_s: f64,
    /// Messages (published or received) per second over `duration_s`.
    pub rate_per_s: f64,
    /// Hot updates published: with the scenario's rules, each fires one webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks_expected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks_received: Option<u64>,
    /// Documents in the `_bulk` requests the receiver answered (ccstream with `search.url` at
    /// the receiver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_documents: Option<u64>,
    /// Publish → webhook arrival (publish mode with `--receiver`) or publish → subscriber
    /// (bare-subscriber mode), from the payload's `sentAt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    /// `--ccstream-metrics`: growth of ccstream's `ccstream_objects_records_total` (observations
    /// spooled for the object store) from the publish start to the end of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observations_stored: Option<u64>,
    /// From the publish start to the first poll that saw `observations_stored` reach
    /// `messages_published`; absent when it never did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_s: Option<f64>,
    /// `messages_published / end_to_end_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_rate_per_s: Option<f64>,
    /// `--ccstream-pid`: ccstream's CPU (user + system) over the run, including the drain;
    /// summed over the replicas when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ccstream_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ccstream_cpu_us_per_message: Option<f64>,
    /// ccstream's VmHWM at the end of the run: its peak since it started, not only this run's;
    /// the largest replica's when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ccstream_peak_rss_mib: Option<f64>,
    /// Several replicas (`--ccstream-pid` or `--ccstream-metrics` given more than once): each
    /// one's figures, in the order given. Absent with one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaFigures>,
    /// `--cpu-pid NAME=PID` and the generator itself (`generator`): CPU over the run (in
    /// bare-subscriber mode: the generator's own, from the subscription on, per message
    /// received).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu: BTreeMap<String, ProcessCpu>,
}

/// One ccstream replica's share of a run with several.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its growth of `ccstream_objects_records_total`: the observations it took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observations_stored: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    /// Its CPU over every message published (the replicas' figures add up to the total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_message: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// It ended before the run did; its figures stop at its last reading.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

impl ReplicaFigures {
    fn cell(&self) -> String {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(cpu) = self.cpu_s {
            parts.push(cpu_cell(cpu, self.cpu_us_per_message));
        }
        if let Some(rss) = self.peak_rss_mib {
            parts.push(format!("peak RSS {rss:.1} MiB"));
        }
        if let Some(n) = self.observations_stored {
            parts.push(format!("{n} observations stored"));
        }
        if self.exited {
            parts.push("exited before the end".to_owned());
        }
        parts.join(", ")
    }
}

/// CPU one process used during a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProcessCpu {
    /// User + system seconds, 10 ms resolution.
    pub cpu_s: f64,
    /// Per message published; absent when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_message: Option<f64>,
    /// The process ended before the run did; the figures stop at its last reading (100 ms poll).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
}

impl ProcessCpu {
    pub fn new(cpu_s: f64, messages: u64, exited: bool) -> ProcessCpu {
        ProcessCpu {
            cpu_s,
            cpu_us_per_message: per_message_us(cpu_s, messages),
            exited,
        }
    }
}

/// CPU microseconds per message; `None` without messages.
pub fn per_message_us(cpu_s: f64, messages: u64) -> Option<f64> {
    (messages > 0).then(|| cpu_s * 1e6 / messages as f64)
}

fn cpu_cell(cpu_s: f64, per_message_us: Option<f64>) -> String {
    match per_message_us {
        Some(us) => format!("{cpu_s:.2} s, {us:.2} µs/msg"),
        None => format!("{cpu_s:.2} s"),
    }
}

impl Report {
    /// A two-column text table, one measure a line.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("mode", self.mode.clone()),
            ("qos", self.qos.to_string()),
            ("connections", self.connections.to_string()),
            ("things", self.things.to_string()),
        ];
        let opt = |v: Option<u64>| v.map(|v| v.to_string());
        let target = self.target_rate.map(|r| format!("{r:.0}/s"));
        for (name, value) in [
            ("target rate", target),
            ("messages published", opt(self.messages_published)),
            ("messages received", opt(self.messages_received)),
        ] {
            if let Some(v) = value {
                rows.push((name, v));
            }
        }
        rows.push(("duration", format!("{:.3} s", self.duration_s)));
        rows.push(("rate", format!("{:.0} msg/s", self.rate_per_s)));
        if let Some(v) = self.webhooks_expected {
            rows.push(("webhooks expected", v.to_string()));
        }
        if let Some(v) = self.webhooks_received {
            rows.push(("webhooks received", v.to_string()));
        }
        if let Some(v) = self.search_documents {
            rows.push(("documents indexed", v.to_string()));
        }
        if let Some(l) = self.latency {
            rows.push(("latency p50", format!("{} ms", l.p50_ms)));
            rows.push(("latency p99", format!("{} ms", l.p99_ms)));
            rows.push(("latency max", format!("{} ms", l.max_ms)));
        }
        if let Some(v) = self.observations_stored {
            rows.push(("observations stored", v.to_string()));
        }
        if let Some(v) = self.end_to_end_s {
            rows.push(("end-to-end", format!("{v:.3} s")));
        }
        if let Some(v) = self.end_to_end_rate_per_s {
            rows.push(("end-to-end rate", format!("{v:.0} msg/s")));
        }
        if let Some(v) = self.ccstream_cpu_s {
            rows.push((
                "ccstream CPU",
                cpu_cell(v, self.ccstream_cpu_us_per_message),
            ));
        }
        if let Some(v) = self.ccstream_peak_rss_mib {
            rows.push(("ccstream peak RSS", format!("{v:.1} MiB")));
        }
        // Owned before the loops: `rows` borrows its names.
        let replica_names: Vec<String> = (1..=self.replicas.len())
            .map(|i| format!("ccstream replica {i}"))
            .collect();
        for (name, r) in replica_names.iter().zip(&self.replicas) {
            rows.push((name.as_str(), r.cell()));
        }
        let cpu_names: Vec<String> = self.cpu.keys().map(|k| format!("CPU {k}")).collect();
        for (name, c) in cpu_names.iter().zip(self.cpu.values()) {
            let mut cell = cpu_cell(c.cpu_s, c.cpu_us_per_message);
            if c.exited {
                cell.push_str(" (exited before the end)");
            }
            rows.push((name.as_str(), cell));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_latencies() {
        let mut l = Latencies::new();
        assert_eq!(l.summary(), None);
        // 1..=1000 ms: p50 = 500, p99 = 990, max = 1000 (within 3 significant digits).
        for ms in 1..=1000 {
            l.record(10_000, 10_000 + ms);
        }
        let s = l.summary().expect("summary");
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_ms, 500);
        assert_eq!(s.p99_ms, 990);
        assert_eq!(s.max_ms, 1000);
    }

    #[test]
    fn clock_skew_and_huge_values_do_not_panic() {
        let mut l = Latencies::new();
        l.record(2_000, 1_000);
        l.record(0, u64::MAX);
        let s = l.summary().expect("summary");
        assert_eq!(s.count, 2);
        assert_eq!(s.p50_ms, 0);
        assert!(s.max_ms >= 3_600_000);
    }

    #[test]
    fn report_table_and_json() {
        let r = Report {
            mode: "publish".into(),
            qos: 1,
            connections: 2,
            things: 10,
            messages_published: Some(1000),
            duration_s: 0.5,
            rate_per_s: 2000.0,
            webhooks_expected: Some(10),
            webhooks_received: Some(9),
            latency: Some(LatencySummary {
                count: 9,
                p50_ms: 3,
                p99_ms: 7,
                max_ms: 8,
            }),
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("messages published  1000\n"), "{t}");
        assert!(t.contains("latency p99         7 ms\n"), "{t}");
        assert!(!t.contains("messages received"), "{t}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["messages_published"], 1000);
        assert_eq!(v["latency"]["p99_ms"], 7);
        assert!(v.get("messages_received").is_none());
        assert!(v.get("target_rate").is_none());
        assert!(v.get("cpu").is_none());
        assert!(v.get("ccstream_cpu_s").is_none());
        assert!(v.get("end_to_end_rate_per_s").is_none());
        assert!(v.get("replicas").is_none());
    }

    #[test]
    fn replicas_in_table_and_json() {
        let replica = |pid, stored, cpu_s: f64, rss| ReplicaFigures {
            pid: Some(pid),
            observations_stored: Some(stored),
            cpu_s: Some(cpu_s),
            cpu_us_per_message: per_message_us(cpu_s, 30_000),
            peak_rss_mib: Some(rss),
            exited: false,
        };
        let r = Report {
            mode: "publish".into(),
            messages_published: Some(30_000),
            observations_stored: Some(30_000),
            ccstream_cpu_s: Some(0.6),
            ccstream_cpu_us_per_message: per_message_us(0.6, 30_000),
            ccstream_peak_rss_mib: Some(70.0),
            replicas: vec![
                replica(11, 10_001, 0.3, 70.0),
                ReplicaFigures {
                    exited: true,
                    ..replica(12, 9_999, 0.15, 60.0)
                },
                replica(13, 10_000, 0.15, 65.5),
            ],
            ..Report::default()
        };
        let t = r.table();
        assert!(
            t.contains(
                "ccstream replica 1   pid 11, 0.30 s, 10.00 µs/msg, peak RSS 70.0 MiB, \
                 10001 observations stored\n"
            ),
            "{t}"
        );
        assert!(t.contains("ccstream replica 2   pid 12, "), "{t}");
        assert!(
            t.contains("9999 observations stored, exited before the end\n"),
            "{t}"
        );
        assert!(t.contains("ccstream replica 3   "), "{t}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["replicas"][0]["pid"], 11);
        assert_eq!(v["replicas"][0]["observations_stored"], 10_001);
        assert_eq!(v["replicas"][0]["cpu_us_per_message"], 10.0);
        assert_eq!(v["replicas"][2]["peak_rss_mib"], 65.5);
        assert!(v["replicas"][0].get("exited").is_none());
        assert_eq!(v["replicas"][1]["exited"], true);
        assert_eq!(v["ccstream_cpu_us_per_message"], 20.0);
    }

    #[test]
    fn process_figures_in_table_and_json() {
        let mut cpu = BTreeMap::new();
        cpu.insert("mosquitto".to_owned(), ProcessCpu::new(1.5, 300_000, false));
        cpu.insert("subscriber".to_owned(), ProcessCpu::new(0.9, 300_000, true));
        let r = Report {
            mode: "publish".into(),
            messages_published: Some(300_000),
            observations_stored: Some(300_000),
            end_to_end_s: Some(10.0),
            end_to_end_rate_per_s: Some(30_000.0),
            ccstream_cpu_s: Some(3.0),
            ccstream_cpu_us_per_message: per_message_us(3.0, 300_000),
            ccstream_peak_rss_mib: Some(61.25),
            cpu,
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("end-to-end rate      30000 msg/s\n"), "{t}");
        assert!(
            t.contains("ccstream CPU         3.00 s, 10.00 µs/msg\n"),
            "{t}"
        );
        assert!(t.contains("ccstream peak RSS    61.2 MiB\n"), "{t}");
        assert!(
            t.contains("CPU mosquitto        1.50 s, 5.00 µs/msg\n"),
            "{t}"
        );
        assert!(t.contains("(exited before the end)"), "{t}");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["observations_stored"], 300_000);
        assert_eq!(v["ccstream_cpu_us_per_message"], 10.0);
        assert_eq!(v["cpu"]["mosquitto"]["cpu_us_per_message"], 5.0);
        assert!(v["cpu"]["mosquitto"].get("exited").is_none());
        assert_eq!(v["cpu"]["subscriber"]["exited"], true);
        assert_eq!(per_message_us(1.0, 0), None);
    }
}
