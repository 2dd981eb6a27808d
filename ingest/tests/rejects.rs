//! Bad input at the source: oversize payloads and topics without a thing name are counted,
//! acknowledged (so the broker does not deliver them again) and not forwarded.
//!
//! Its own test binary, because it installs a process-wide metrics recorder.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use ingest::telemetry;
use ingest::MqttSource;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use testkit::mosquitto::Mosquitto;

/// Counters and gauges by `name{label=value,...}`.
#[derive(Default)]
struct TestRecorder {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let mut values = self.values.lock().unwrap();
        values.entry(name).or_default().clone()
    }

    fn counter(&self, name: &str) -> u64 {
        let values = self.values.lock().unwrap();
        values.get(name).map_or(0, |v| v.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str) -> f64 {
        f64::from_bits(self.counter(name))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("one recorder per test binary");
        telemetry::describe_metrics();
        recorder
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payloads_and_bad_topics_are_counted_acked_and_not_forwarded() {
    init_tracing();
    let metrics = recorder();
    let broker = Mosquitto::start();
    let cfg = ingest::MqttConfig {
        max_payload_bytes: 1024,
        ..source_config(broker.port(), &unique_id("rejects"))
    };
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;
    assert_eq!(metrics.gauge("ccstream_mqtt_connected{}"), 1.0);
    assert_eq!(
        metrics.counter("ccstream_mqtt_connections_total{result=ok}"),
        1
    );

    publish(
        broker.port(),
        vec![
            ("$aws/things/big/shadow/update".into(), vec![b'x'; 1025]),
            ("$aws/things//shadow/update".into(), b"{}".to_vec()),
            ("thing-update//nodomain".into(), b"{}".to_vec()),
            ("$aws/things/limit/shadow/update".into(), vec![b'y'; 1024]),
            ("event/big".into(), vec![b'z'; 4096]),
            shadow("small", "{}"),
        ],
    )
    .await;

    // Only the two that fit and have a thing name arrive, in order.
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).0, "limit");
    assert_eq!(item.payload().len(), 1024);
    acker.ack(item.into_ack());
    let item = recv(&mut rx).await;
    assert_eq!(shadow_of(&item).0, "small");
    acker.ack(item.into_ack());
    // Nothing else was forwarded: a message published after them all comes next. Every
    // rejected one was counted before the sentinel was received.
    expect_sentinel_next(
        broker.port(),
        "$aws/things/sentinel/shadow/update",
        &mut rx,
        &acker,
    )
    .await;

    assert_eq!(
        metrics.counter("ccstream_ingest_rejected_total{reason=too_large}"),
        2
    );
    assert_eq!(
        metrics.counter("ccstream_ingest_rejected_total{reason=bad_topic}"),
        2
    );
    // big, limit, small, and the sentinel.
    assert_eq!(
        metrics.counter("ccstream_mqtt_messages_total{kind=shadow}"),
        4
    );
    assert_eq!(
        metrics.counter("ccstream_mqtt_messages_total{kind=event}"),
        1
    );
    assert_eq!(
        metrics.counter("ccstream_mqtt_messages_total{kind=other}"),
        2
    );
    assert_eq!(acker.pending(), 0);
    handle.shutdown(GRACE).await.unwrap();
    assert_eq!(metrics.gauge("ccstream_mqtt_connected{}"), 0.0);
    wait_for_disconnect_read(&broker, &cfg).await;

    // Everything was acked, the rejected ones included: nothing comes back.
    // A redelivery would be queued when the session resumed, before the sentinel.
    let (mut rx, acker, handle) = MqttSource::start(&cfg, "test", "host").unwrap();
    let status = handle.status();
    wait_until("subscribed", || status.is_subscribed()).await;
    expect_sentinel_next(
        broker.port(),
        "$aws/things/sentinel/shadow/update",
        &mut rx,
        &acker,
    )
    .await;
    handle.shutdown(GRACE).await.unwrap();
    assert_eq!(metrics.counter("ccstream_mqtt_unacked_dropped_total{}"), 0);
}

/// Shutdown normally takes milliseconds; the bound is only there to fail instead of hanging.
const GRACE: Duration = WAIT;
