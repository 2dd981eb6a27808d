//! The OpenSearch indexer and the FIND search call, against a stand-in for OpenSearch
//! (`testkit::search_standin`): OpenSearch cannot be installed on this machine, so a local axum server
//! answers `_index_template`, `_bulk` and `_search` with OpenSearch's documented response
//! shapes, scripted to fail the ways OpenSearch does (a whole-request 429, per-item 429
//! `es_rejected_execution_exception`, per-item 400 `mapper_parsing_exception`), and records
//! every request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sinks::search::{
    IndexerHandle, IndexerStats, SearchClient, SearchConfig, SearchError, SearchIndexer,
};
use testkit::search_standin::{self as support_search, BulkReply, StandIn};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// 2026-11-26T12:00:00Z.
const DAY1_NOON: u64 = 1_795_694_400_000;
/// 2026-11-26T23:59:59.999Z.
const DAY1_LAST: u64 = 1_795_737_599_999;
/// 2026-11-27T00:00:00Z.
const DAY2_FIRST: u64 = 1_795_737_600_000;

/// Fast retries, a long flush interval unless a test sets one.
fn config(standin: &StandIn) -> SearchConfig {
    SearchConfig {
        url: Some(standin.url()),
        flush_interval_ms: 60_000,
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        timeout_secs: 5,
        ..SearchConfig::default()
    }
}

fn record(n: usize, timestamp: u64) -> Bytes {
    Bytes::from(
        json!({
            "state": {"reported": {"temp": n}},
            "thingName": format!("thing-{n}"),
            "timestamp": timestamp,
            "domain": "root/sub1"
        })
        .to_string(),
    )
}

type Failures = Arc<Mutex<Vec<(Bytes, String)>>>;

fn start(config: &SearchConfig) -> (IndexerHandle, JoinHandle<IndexerStats>, Failures) {
    let failures: Failures = Arc::default();
    let sink = Arc::clone(&failures);
    let (handle, task) = SearchIndexer::start(config, move |record, reason| {
        sink.lock().expect("lock").push((record, reason));
        async {}
    })
    .expect("starts");
    (handle, task, failures)
}

fn send(handle: &IndexerHandle, n: usize, timestamp: u64) {
    handle
        .try_send(record(n, timestamp), timestamp)
        .expect("queued");
}

async fn stop(handle: IndexerHandle, task: JoinHandle<IndexerStats>) -> IndexerStats {
    handle.close(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within the deadline")
        .expect("task")
}

fn things(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["thingName"].as_str().expect("thingName").to_owned())
        .collect()
}

#[tokio::test]
async fn the_index_template_is_put_at_start() {
    let os = StandIn::start();
    let (handle, task, _) = start(&config(&os));
    let seen = os
        .wait_until("the template", |seen| {
            seen.iter()
                .any(|s| s.path == "/_index_template/observations")
        })
        .await;
    let put = &seen[0];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path, "/_index_template/observations");
    assert!(put
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let body = put.json();
    assert_eq!(body["index_patterns"], json!(["observations-*"]));
    let props = &body["template"]["mappings"]["properties"];
    assert_eq!(props["thingName"], json!({"type": "keyword"}));
    assert_eq!(props["domain"], json!({"type": "keyword"}));
    assert_eq!(props["timestamp"]["type"], "date");
    assert!(props["timestamp"]["format"]
        .as_str()
        .is_some_and(|f| f.split("||").any(|f| f == "epoch_millis")));
    assert_eq!(body["template"]["mappings"]["dynamic"], true);
    assert_eq!(body["template"]["aliases"], json!({"observations": {}}));
    let stats = stop(handle, task).await;
    assert_eq!(stats.bulk_requests, 0);
}

#[tokio::test]
async fn template_failures_are_retried_in_the_background_and_bulks_wait_for_it() {
    let os = StandIn::start();
    os.script_template([503, 503, 429]);
    let (handle, task, _) = start(&SearchConfig {
        flush_interval_ms: 10,
        ..config(&os)
    });
    // Ingest goes on while the template is not in place.
    for n in 0..3 {
        send(&handle, n, DAY1_NOON);
    }
    let seen = os
        .wait_until("a bulk", |seen| seen.iter().any(|s| s.is_bulk()))
        .await;
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths[..5],
        [
            "/_index_template/observations",
            "/_index_template/observations",
            "/_index_template/observations",
            "/_index_template/observations",
            "/_bulk"
        ]
    );
    let stats = stop(handle, task).await;
    assert_eq!(stats.indexed, 3);
}

// Tests with a paused clock (tokio's test-util) run the stand-in on their own runtime: the
// flush interval, backoffs and drain deadlines then pass in virtual time, exactly and at once.

#[tokio::test(start_paused = true)]
async fn records_are_flushed_by_count() {
    let os = StandIn::start_here();
    let (handle, task, _) = start(&SearchConfig {
        bulk_max_actions: 3,
        ..config(&os)
    });
    for n in 0..7 {
        send(&handle, n, DAY1_NOON);
    }
    let bulks = os.wait_bulks(2).await;
    assert_eq!(
        things(&bulks[0].records()),
        ["thing-0", "thing-1", "thing-2"]
    );
    assert_eq!(
        things(&bulks[1].records()),
        ["thing-3", "thing-4", "thing-5"]
    );
    // The seventh waits for the (one minute) flush interval.
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(os.bulks().len(), 2);
    assert_eq!(handle.stats().indexed, 6);
    let bulks = os.wait_bulks(3).await;
    assert_eq!(things(&bulks[2].records()), ["thing-6"]);
    assert!(
        sent.elapsed() <= Duration::from_secs(60),
        "{:?}",
        sent.elapsed()
    );
    let stats = stop(handle, task).await;
    assert_eq!(stats.indexed, 7);
    assert_eq!(stats.bulk_requests, 3);
}

/// The first 128 bits of the SHA-256 of `data`, in hex.
fn sha256_128(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn records_are_flushed_by_size() {
    let os = StandIn::start();
    let action = format!(
        r#"{{"index":{{"_index":"observations-2026.11.26","_id":"{}"}}}}"#,
        sha256_128(&record(0, DAY1_NOON))
    );
    let one = record(0, DAY1_NOON).len() + action.len() + 2;
    let (handle, task, _) = start(&SearchConfig {
        bulk_max_bytes: 2 * one,
        ..config(&os)
    });
    for n in 0..5 {
        send(&handle, n, DAY1_NOON);
    }
    let bulks = os.wait_bulks(2).await;
    for bulk in &bulks {
        assert_eq!(bulk.body.len(), 2 * one);
        assert_eq!(bulk.records().len(), 2);
    }
    let stats = stop(handle, task).await;
    assert_eq!(stats.indexed, 5);
    assert_eq!(os.bulks()[2].records().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn records_are_flushed_by_time() {
    let os = StandIn::start_here();
    let (handle, task, _) = start(&SearchConfig {
        flush_interval_ms: 150,
        ..config(&os)
    });
    os.wait_until("the template", |seen| !seen.is_empty()).await;
    let sent = Instant::now();
    send(&handle, 0, DAY1_NOON);
    send(&handle, 1, DAY1_NOON);
    let bulks = os.wait_bulks(1).await;
    let waited = sent.elapsed();
    assert!(
        (Duration::from_millis(150)..Duration::from_millis(160)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(things(&bulks[0].records()), ["thing-0", "thing-1"]);
    assert!(!handle.is_closed());
    stop(handle, task).await;
}

#[tokio::test]
async fn bulk_bodies_are_ndjson_with_daily_indices_from_record_timestamps() {
    let os = StandIn::start();
    let (handle, task, _) = start(&config(&os));
    let records = [
        record(0, DAY1_LAST),
        record(1, DAY2_FIRST),
        record(2, DAY1_NOON),
    ];
    for (record, ts) in records.iter().zip([DAY1_LAST, DAY2_FIRST, DAY1_NOON]) {
        handle.try_send(record.clone(), ts).expect("queued");
    }
    stop(handle, task).await;
    let bulks = os.bulks();
    assert_eq!(bulks.len(), 1);
    let bulk = &bulks[0];
    let mut expected = Vec::new();
    for (record, day) in records
        .iter()
        .zip(["2026.11.26", "2026.11.27", "2026.11.26"])
    {
        // The document id: the record's SHA-256, first 128 bits in hex.
        expected.extend_from_slice(
            format!(
                "{{\"index\":{{\"_index\":\"observations-{day}\",\"_id\":\"{}\"}}}}\n",
                sha256_128(record)
            )
            .as_bytes(),
        );
        expected.extend_from_slice(record);
        expected.push(b'\n');
    }
    assert_eq!(
        String::from_utf8(bulk.body.clone()).expect("utf-8"),
        String::from_utf8(expected).expect("utf-8")
    );
    assert_eq!(bulk.header("content-type"), Some("application/x-ndjson"));
    assert!(bulk.query.contains("filter_path="), "{}", bulk.query);
}

#[tokio::test]
async fn a_whole_request_429_is_retried() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Status(429), BulkReply::Status(503)]);
    let (handle, task, failures) = start(&config(&os));
    for n in 0..3 {
        send(&handle, n, DAY1_NOON);
    }
    let stats = stop(handle, task).await;
    let bulks = os.bulks();
    assert_eq!(bulks.len(), 3);
    assert_eq!(bulks[0].body, bulks[1].body);
    assert_eq!(bulks[1].body, bulks[2].body);
    assert_eq!(stats.indexed, 3);
    assert_eq!(stats.bulk_requests, 3);
    assert_eq!(stats.dropped, 0);
    assert!(failures.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn per_item_429s_are_retried_alone() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Items(vec![201, 429, 201, 429, 503])]);
    let (handle, task, failures) = start(&config(&os));
    for n in 0..5 {
        send(&handle, n, DAY1_NOON);
    }
    let stats = stop(handle, task).await;
    let bulks = os.bulks();
    assert_eq!(bulks.len(), 2);
    assert_eq!(
        things(&bulks[1].records()),
        ["thing-1", "thing-3", "thing-4"]
    );
    // The same action lines as the first time.
    let first = bulks[0].bulk_pairs();
    let second = bulks[1].bulk_pairs();
    assert_eq!(second[0], first[1]);
    assert_eq!(stats.indexed, 5);
    assert_eq!(stats.items_retried, 3);
    assert_eq!(stats.item_failures, 0);
    assert!(failures.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn per_item_rejections_past_max_retries_go_to_the_callback() {
    let os = StandIn::start();
    os.bulk_fallback(BulkReply::Items(vec![429]));
    let (handle, task, failures) = start(&SearchConfig {
        max_retries: 2,
        ..config(&os)
    });
    send(&handle, 0, DAY1_NOON);
    send(&handle, 1, DAY1_NOON);
    let stats = stop(handle, task).await;
    let bulks = os.bulks();
    // First attempt (2 items), then the rejected one twice.
    assert_eq!(bulks.len(), 3);
    assert_eq!(things(&bulks[2].records()), ["thing-0"]);
    let failures = failures.lock().expect("lock");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, record(0, DAY1_NOON));
    assert!(
        failures[0].1.contains("es_rejected_execution_exception"),
        "{}",
        failures[0].1
    );
    assert_eq!(stats.indexed, 1);
    assert_eq!(stats.item_failures, 1);
}

#[tokio::test]
async fn mapping_errors_are_counted_and_handed_on_not_retried() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Items(vec![201, 400, 201])]);
    let (handle, task, failures) = start(&config(&os));
    for n in 0..3 {
        send(&handle, n, DAY1_NOON);
    }
    let stats = stop(handle, task).await;
    assert_eq!(os.bulks().len(), 1);
    let failures = failures.lock().expect("lock");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, record(1, DAY1_NOON));
    assert!(
        failures[0]
            .1
            .starts_with("HTTP 400 mapper_parsing_exception: failed to parse field"),
        "{}",
        failures[0].1
    );
    assert_eq!(stats.indexed, 2);
    assert_eq!(stats.item_failures, 1);
    assert_eq!(stats.items_retried, 0);
}

#[tokio::test]
async fn a_refused_whole_request_hands_every_record_on() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Status(413)]);
    let (handle, task, failures) = start(&config(&os));
    send(&handle, 0, DAY1_NOON);
    send(&handle, 1, DAY1_NOON);
    let stats = stop(handle, task).await;
    assert_eq!(os.bulks().len(), 1);
    let failures = failures.lock().expect("lock");
    assert_eq!(failures.len(), 2);
    assert!(failures[0].1.contains("HTTP 413"), "{}", failures[0].1);
    assert_eq!(stats.item_failures, 2);
}

#[tokio::test]
async fn whole_request_failures_past_max_retries_are_dropped_and_counted() {
    let os = StandIn::start();
    os.bulk_fallback(BulkReply::Status(503));
    let (handle, task, failures) = start(&SearchConfig {
        max_retries: 2,
        ..config(&os)
    });
    send(&handle, 0, DAY1_NOON);
    let stats = stop(handle, task).await;
    assert_eq!(os.bulks().len(), 3);
    assert_eq!(stats.dropped, 1);
    assert_eq!(stats.indexed, 0);
    assert!(failures.lock().expect("lock").is_empty());
}

/// A checkpoint that sends `n` on `tx` when it runs.
fn checkpoint(tx: &tokio::sync::mpsc::UnboundedSender<u32>, n: u32) -> sinks::search::Checkpoint {
    let tx = tx.clone();
    Box::new(move || {
        let _ = tx.send(n);
    })
}

#[tokio::test]
async fn records_from_the_spool_are_retried_past_max_retries_and_checkpoints_wait_for_them() {
    let os = StandIn::start();
    // Ten failures, more than max_retries, then OpenSearch answers again.
    os.script_bulk(
        [BulkReply::Status(503), BulkReply::Status(429)]
            .into_iter()
            .cycle()
            .take(10),
    );
    let (handle, task, failures) = start(&SearchConfig {
        max_retries: 2,
        bulk_max_actions: 2,
        flush_interval_ms: 10,
        ..config(&os)
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    handle
        .send_replayable(record(0, DAY1_NOON), DAY1_NOON)
        .await
        .expect("queued");
    handle.checkpoint(checkpoint(&tx, 1)).await.expect("queued");
    for n in 1..4 {
        handle
            .send_replayable(record(n, DAY1_NOON), DAY1_NOON)
            .await
            .expect("queued");
    }
    handle.checkpoint(checkpoint(&tx, 2)).await.expect("queued");
    assert_eq!(rx.recv().await, Some(1));
    // Checkpoint 1 ran only once record 0 was indexed.
    let indexed = |os: &StandIn| os.writes().len();
    assert!(
        indexed(&os) >= 1,
        "checkpoint 1 before its record was indexed"
    );
    assert_eq!(rx.recv().await, Some(2));
    assert_eq!(indexed(&os), 4);
    let stats = stop(handle, task).await;
    assert_eq!((stats.indexed, stats.dropped), (4, 0));
    assert!(failures.lock().expect("lock").is_empty());
    assert!(
        os.bulks().len() >= 12,
        "every failure retried, none given up"
    );
}

#[tokio::test]
async fn a_checkpoint_with_nothing_before_it_runs_at_once() {
    let os = StandIn::start();
    let (handle, task, _) = start(&config(&os));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    handle.checkpoint(checkpoint(&tx, 7)).await.expect("queued");
    assert_eq!(rx.recv().await, Some(7));
    stop(handle, task).await;
    assert!(os.bulks().is_empty());
}

#[tokio::test]
async fn a_refused_request_of_spool_records_is_retried_but_a_400_goes_to_errors() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Status(401), BulkReply::Status(403)]);
    let (handle, task, failures) = start(&SearchConfig {
        max_retries: 0,
        flush_interval_ms: 10,
        ..config(&os)
    });
    handle
        .send_replayable(record(0, DAY1_NOON), DAY1_NOON)
        .await
        .expect("queued");
    os.wait_bulks(3).await;
    os.script_bulk([BulkReply::Status(400)]);
    handle
        .send_replayable(record(1, DAY1_NOON), DAY1_NOON)
        .await
        .expect("queued");
    let stats = stop(handle, task).await;
    assert_eq!(
        stats.indexed, 1,
        "credentials fixed: indexed after two refusals"
    );
    let failures = failures.lock().expect("lock");
    assert_eq!(failures.len(), 1, "the 400 went to the callback");
    assert!(failures[0].1.contains("HTTP 400"), "{}", failures[0].1);
}

#[tokio::test(start_paused = true)]
async fn spool_records_left_at_the_drain_deadline_are_not_dropped() {
    let os = StandIn::start_here();
    os.bulk_fallback(BulkReply::Status(503));
    let (handle, task, _) = start(&SearchConfig {
        backoff_initial_ms: 10_000,
        backoff_max_ms: 10_000,
        ..config(&os)
    });
    for n in 0..3 {
        handle
            .send_replayable(record(n, DAY1_NOON), DAY1_NOON)
            .await
            .expect("queued");
    }
    send(&handle, 3, DAY1_NOON);
    handle.close(Duration::from_millis(300));
    assert!(handle
        .send_replayable(record(9, DAY1_NOON), DAY1_NOON)
        .await
        .is_err());
    let stats = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops at the deadline")
        .expect("task");
    assert_eq!((stats.left_in_spool, stats.dropped), (3, 1));
}

#[tokio::test]
async fn an_unreadable_2xx_is_retried_whole() {
    let os = StandIn::start();
    os.script_bulk([BulkReply::Garbage]);
    let (handle, task, _) = start(&config(&os));
    send(&handle, 0, DAY1_NOON);
    let stats = stop(handle, task).await;
    assert_eq!(os.bulks().len(), 2);
    assert_eq!(stats.indexed, 1);
}

#[tokio::test(start_paused = true)]
async fn queue_overflow_is_counted_and_try_send_never_waits() {
    let os = StandIn::start_here();
    // The template never goes in: nothing is sent, everything queues.
    os.template_fallback(503);
    let (handle, task, _) = start(&SearchConfig {
        queue_capacity: 4,
        bulk_max_actions: 1,
        ..config(&os)
    });
    let mut refused = 0;
    for n in 0..200 {
        // try_send is not async: it cannot wait for the queue to drain.
        if handle.try_send(record(n, DAY1_NOON), DAY1_NOON).is_err() {
            refused += 1;
        }
    }
    // 4 in the queue, at most 2 taken out by the indexer (one batch, one full batch waiting).
    assert!(refused >= 200 - 6, "{refused}");
    let stats = handle.stats();
    assert_eq!(stats.overflowed, refused);
    assert_eq!(stats.queued, 200 - refused);
    let closed = Instant::now();
    handle.close(Duration::from_millis(100));
    let stats = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops at the deadline")
        .expect("task");
    assert!(
        closed.elapsed() <= Duration::from_millis(110),
        "{:?}",
        closed.elapsed()
    );
    // Every record is accounted for: dropped on overflow or at the deadline.
    assert_eq!(stats.dropped, 200);
    assert_eq!(stats.indexed, 0);
    assert_eq!(os.bulks().len(), 0);
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued() {
    let os = StandIn::start();
    let (handle, task, _) = start(&config(&os));
    for n in 0..5 {
        send(&handle, n, DAY1_NOON);
    }
    let other = handle.clone();
    let stats = stop(handle, task).await;
    assert_eq!(stats.indexed, 5);
    let bulks = os.bulks();
    assert_eq!(bulks.len(), 1);
    assert_eq!(bulks[0].records().len(), 5);
    // Intake stopped on every clone.
    assert!(other.is_closed());
    assert!(other.try_send(record(9, DAY1_NOON), DAY1_NOON).is_err());
}

#[tokio::test]
async fn dropping_every_handle_also_flushes() {
    let os = StandIn::start();
    let (handle, task, _) = start(&config(&os));
    send(&handle, 0, DAY1_NOON);
    drop(handle);
    let stats = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("task");
    assert_eq!(stats.indexed, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_opensearch_down_ends_at_the_deadline() {
    let os = StandIn::start_here();
    os.bulk_fallback(BulkReply::Status(503));
    let (handle, task, _) = start(&SearchConfig {
        backoff_initial_ms: 10_000,
        backoff_max_ms: 10_000,
        max_retries: 100,
        ..config(&os)
    });
    for n in 0..3 {
        send(&handle, n, DAY1_NOON);
    }
    let started = Instant::now();
    handle.close(Duration::from_millis(300));
    let stats = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops at the deadline")
        .expect("task");
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(310)).contains(&took),
        "{took:?}"
    );
    assert_eq!(stats.dropped, 3);
}

#[tokio::test]
async fn basic_auth_is_sent_when_configured() {
    let os = StandIn::start();
    let (handle, task, _) = start(&SearchConfig {
        username: Some("ccstream".into()),
        password: Some("s3cret".into()),
        ..config(&os)
    });
    send(&handle, 0, DAY1_NOON);
    stop(handle, task).await;
    let seen = os.seen();
    assert!(seen.len() >= 2);
    for s in seen {
        // base64("ccstream:s3cret")
        assert_eq!(
            s.header("authorization"),
            Some("Basic Y2NzdHJlYW06czNjcmV0")
        );
    }
}

#[tokio::test]
async fn search_returns_the_output_as_is_and_sends_the_body() {
    let os = StandIn::start();
    let client = SearchClient::new(&config(&os)).expect("client");
    let body = json!({"size": 0, "query": {"range": {"timestamp": {"gte": 1}}}});
    let out = client.search(body.clone()).await.expect("searches");
    assert_eq!(out, support_search::canned_search());
    let seen = os.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/observations/_search");
    assert!(seen[0].query.contains("rest_total_hits_as_int=true"));
    assert!(seen[0].query.contains("ignore_unavailable=true"));
    assert_eq!(seen[0].json(), body);
}

#[tokio::test]
async fn search_errors_are_classified() {
    let os = StandIn::start();
    let client = SearchClient::new(&config(&os)).expect("client");
    os.script_search(
        400,
        json!({"error": {"root_cause": [{"type": "parsing_exception", "reason": "unknown query [nope]"}],
                "type": "parsing_exception", "reason": "unknown query [nope]"}, "status": 400}),
    );
    match client.search(json!({})).await {
        Err(SearchError::BadQuery(reason)) => {
            assert_eq!(reason, "parsing_exception: unknown query [nope]")
        }
        other => panic!("{other:?}"),
    }
    os.script_search(503, json!({"error": "unavailable"}));
    assert!(matches!(
        client.search(json!({})).await,
        Err(SearchError::Unavailable(_))
    ));
    os.script_search(403, json!({"error": "forbidden"}));
    assert!(matches!(
        client.search(json!({})).await,
        Err(SearchError::Unavailable(_))
    ));
    // Nothing listens on the port of a stand-in that was dropped.
    let gone = StandIn::start();
    let url = gone.url();
    // Dropping joins its thread: the port is closed now.
    drop(gone);
    let client = SearchClient::new(&SearchConfig {
        url: Some(url),
        ..SearchConfig::default()
    })
    .expect("client");
    assert!(matches!(
        client.search(json!({})).await,
        Err(SearchError::Unavailable(_))
    ));
}

#[test]
fn starting_without_a_url_is_refused() {
    let err = SearchIndexer::start(&SearchConfig::default(), |_, _| async {}).expect_err("no url");
    assert!(matches!(err, SearchError::NotConfigured));
}
