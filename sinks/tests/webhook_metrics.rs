//! Metric names and labels of the webhook sink, read back from a debugging recorder. One test in
//! this binary: the recorder is global.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use sinks::webhook::{describe_metrics, WebhookConfig, WebhookDispatcher};
use support::{config, firing, Receiver, Reply};

// A paused clock: the slow server's delays and the retry's backoff cost no real time.
#[tokio::test(start_paused = true)]
async fn outcomes_deliveries_queue_and_dead_letters_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder in this binary");
    describe_metrics();

    let server = Receiver::start_here().await;
    server
        .reply_once("/missing", Reply::status(404))
        .reply_once("/flaky", Reply::status(503));
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, task) =
        WebhookDispatcher::start(&config(dir.path()), Box::new(|_: Vec<()>| {})).expect("starts");
    for (path, key) in [("/ok", "a"), ("/missing", "b"), ("/flaky", "c")] {
        handle
            .enqueue(
                vec![firing(json!({"url": server.url(path)}), key)],
                None,
                (),
            )
            .await
            .expect("queued");
    }
    // 127.0.0.2 is loopback but outside the allowed 127.0.0.1/32: refused before connecting.
    handle
        .enqueue(
            vec![firing(
                json!({"url": format!("http://127.0.0.2:{}/", server.port())}),
                "d",
            )],
            None,
            (),
        )
        .await
        .expect("queued");
    handle.close(Duration::from_secs(10));
    task.await.expect("task");

    // A second dispatcher whose bodies wait on disk past a queue of one.
    let slow = Receiver::start_here().await;
    slow.fallback(Reply::status(200).after(Duration::from_millis(200)));
    let tiny = WebhookConfig {
        queue_capacity: 1,
        concurrency: 1,
        ..config(dir.path())
    };
    let (handle, task) =
        WebhookDispatcher::start(&tiny, Box::new(|_: Vec<()>| {})).expect("starts");
    for i in 0..5 {
        handle
            .enqueue(
                vec![firing(json!({"url": slow.url("/")}), &format!("o{i}"))],
                None,
                (),
            )
            .await
            .expect("queued");
    }
    handle.close(Duration::from_secs(10));
    task.await.expect("task");

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    let mut gauges: Vec<String> = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut name = key.name().to_owned();
        for label in key.labels() {
            name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
        }
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(samples) => {
                histograms.insert(name, samples.len());
            }
            DebugValue::Gauge(_) => gauges.push(name),
        }
    }
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    // Summed over the `destination` label.
    let deliveries = |result: &str| {
        let prefix = format!("ccstream_webhook_deliveries_total{{result={result}}}{{destination=");
        counters
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert_eq!(
        count("ccstream_webhook_requests_total{outcome=4xx}"),
        1,
        "{counters:?}"
    );
    assert_eq!(count("ccstream_webhook_requests_total{outcome=5xx}"), 1);
    assert_eq!(count("ccstream_webhook_requests_total{outcome=refused}"), 1);
    // /ok, /flaky's retry and the tiny dispatcher's deliveries.
    let delivered_tiny = 5;
    assert_eq!(
        count("ccstream_webhook_requests_total{outcome=2xx}"),
        2 + delivered_tiny
    );
    assert_eq!(deliveries("delivered"), 2 + delivered_tiny);
    assert_eq!(deliveries("failed"), 1);
    assert_eq!(deliveries("refused"), 1);
    assert_eq!(count("ccstream_webhook_dead_letters_total"), 2);
    let slow = format!("http://127.0.0.1:{}", slow.port());
    assert_eq!(
        count(&format!(
            "ccstream_webhook_deliveries_total{{result=delivered}}{{destination={slow}}}"
        )),
        5,
        "{counters:?}"
    );
    for gauge in [
        format!("ccstream_webhook_destination_queued{{destination={slow}}}"),
        format!("ccstream_webhook_destination_in_flight{{destination={slow}}}"),
        format!("ccstream_webhook_destination_circuit_open{{destination={slow}}}"),
    ] {
        assert!(gauges.contains(&gauge), "{gauge}: {gauges:?}");
    }
    for gauge in [
        "ccstream_webhook_queue_depth",
        "ccstream_webhook_outbox_bytes",
        "ccstream_webhook_outbox_unfinished",
        "ccstream_webhook_outbox_full",
    ] {
        assert!(gauges.contains(&gauge.to_owned()), "{gauge}: {gauges:?}");
    }
    let samples = histograms
        .get("ccstream_webhook_duration_seconds")
        .copied()
        .unwrap_or(0) as u64;
    assert_eq!(
        samples,
        4 + delivered_tiny,
        "one sample per attempt that reached a server"
    );
}
