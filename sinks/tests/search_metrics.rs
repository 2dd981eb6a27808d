//! Metric names and labels of the search indexer, read back from a debugging recorder, against
//! the OpenSearch stand-in of `testkit::search_standin` (OpenSearch cannot be installed here). One test
//! in this binary: the recorder is global.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use sinks::search::{describe_metrics, SearchConfig, SearchIndexer};
use testkit::search_standin::{BulkReply, StandIn};

const NOON: u64 = 1_795_694_400_000;

fn record(n: usize) -> Bytes {
    Bytes::from(json!({"thingName": format!("thing-{n}"), "timestamp": NOON}).to_string())
}

// A paused clock (tokio's test-util) with the stand-ins on the test's runtime: the gauge tick
// and the queue age pass in virtual time.
#[tokio::test(start_paused = true)]
async fn indexing_outcomes_failures_drops_queue_age_and_depth_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder in this binary");
    describe_metrics();

    let os = StandIn::start_here();
    os.script_bulk([
        BulkReply::Status(429),
        BulkReply::Items(vec![201, 429, 400, 201]),
    ]);
    let config = SearchConfig {
        url: Some(os.url()),
        flush_interval_ms: 60_000,
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        ..SearchConfig::default()
    };
    let (handle, task) = SearchIndexer::start(&config, |_, _| async {}).expect("starts");
    for n in 0..4 {
        handle.try_send(record(n), NOON).expect("queued");
    }
    handle.close(Duration::from_secs(5));
    task.await.expect("task");

    // A second indexer whose template never goes in: records wait (their age grows) and overflow.
    let stuck = StandIn::start_here();
    stuck.template_fallback(503);
    let (handle, task) = SearchIndexer::start(
        &SearchConfig {
            url: Some(stuck.url()),
            queue_capacity: 2,
            bulk_max_actions: 1,
            ..config
        },
        |_, _| async {},
    )
    .expect("starts");
    let overflowed = (0..10)
        .filter(|&n| handle.try_send(record(n), NOON).is_err())
        .count() as u64;
    assert!(overflowed >= 6);
    // The gauges are refreshed every second.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // A snapshot resets what it reads: collect into one tally.
    let mut tally = Tally::default();
    tally.add(snapshotter.snapshot());
    let lag = tally
        .gauges
        .get("ccstream_search_queue_age_seconds")
        .copied();
    let depth = tally.gauges.get("ccstream_search_queue_depth").copied();
    assert!(lag.is_some_and(|lag| lag >= 1.0), "{lag:?}");
    assert!(depth.is_some_and(|depth| depth >= 1.0), "{depth:?}");
    handle.close(Duration::from_millis(50));
    let stats = task.await.expect("task");
    tally.add(snapshotter.snapshot());
    let Tally {
        counters,
        gauges,
        histograms,
    } = tally;

    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(count("ccstream_search_indexed_total"), 3);
    assert_eq!(
        count("ccstream_search_bulk_requests_total{outcome=throttled}"),
        1
    );
    assert_eq!(
        count("ccstream_search_bulk_requests_total{outcome=partial}"),
        1
    );
    assert_eq!(
        count("ccstream_search_bulk_requests_total{outcome=success}"),
        1
    );
    assert_eq!(count("ccstream_search_items_retried_total"), 1);
    assert_eq!(
        count("ccstream_search_item_failures_total{reason=mapping}"),
        1
    );
    assert_eq!(
        count("ccstream_search_item_failures_total{reason=rejected}"),
        0
    );
    assert_eq!(
        count("ccstream_search_item_failures_total{reason=other}"),
        0
    );
    assert_eq!(
        count("ccstream_search_dropped_total{reason=overflow}"),
        overflowed
    );
    assert_eq!(
        count("ccstream_search_dropped_total{reason=shutdown}"),
        10 - overflowed
    );
    assert_eq!(stats.dropped, 10);
    assert_eq!(
        histograms.get("ccstream_search_bulk_duration_seconds"),
        Some(&3)
    );
    // Back to zero once stopped.
    assert_eq!(gauges.get("ccstream_search_queue_age_seconds"), Some(&0.0));
    assert_eq!(gauges.get("ccstream_search_queue_depth"), Some(&0.0));
}

#[derive(Default)]
struct Tally {
    counters: HashMap<String, u64>,
    gauges: HashMap<String, f64>,
    histograms: HashMap<String, usize>,
}

impl Tally {
    fn add(&mut self, snapshot: metrics_util::debugging::Snapshot) {
        for (key, _, _, value) in snapshot.into_vec() {
            let key = key.key();
            let mut name = key.name().to_owned();
            for label in key.labels() {
                name.push_str(&format!("{{{}={}}}", label.key(), label.value()));
            }
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Gauge(v) => {
                    self.gauges.insert(name, v.into_inner());
                }
                DebugValue::Histogram(v) => *self.histograms.entry(name).or_default() += v.len(),
            }
        }
    }
}
