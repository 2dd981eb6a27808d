//! Metric names and labels of the object sink, read back from a debugging recorder. One test in
//! this binary: the recorder is global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sinks::objects::{
    build_error_record, describe_metrics, Batch, BatchStore, ObjectSink, ObjectsConfig, RecordKind,
    WriteError,
};

/// Fails its first call (retryably), refuses error batches (permanently), stores the rest.
#[derive(Default)]
struct Scripted {
    calls: AtomicU64,
}

impl BatchStore for Scripted {
    async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(WriteError::Retryable("503".into()));
        }
        if batch.key.starts_with("errors/") {
            return Err(WriteError::Permanent("403".into()));
        }
        Ok(())
    }

    fn label(&self) -> &'static str {
        "scripted"
    }
}

#[tokio::test]
async fn records_commits_stores_retries_failures_and_spool_gauges() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder in this binary");
    describe_metrics();

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ObjectsConfig {
        spool_dir: dir.path().join("spool"),
        retry_initial_ms: 2,
        retry_max_ms: 5,
        ..ObjectsConfig::default()
    };
    let acked = Arc::new(AtomicU64::new(0));
    let on_commit = {
        let acked = acked.clone();
        Box::new(move |tokens: Vec<u32>| {
            acked.fetch_add(tokens.len() as u64, Ordering::SeqCst);
        })
    };
    let (handle, task) =
        ObjectSink::start_with_store(&cfg, "dev", Scripted::default(), on_commit).expect("start");
    let observations: [&[u8]; 3] = [b"{\"a\":1}", b"{\"b\":2}", b"{}"];
    for (i, r) in observations.iter().enumerate() {
        handle
            .append(r.to_vec(), RecordKind::Observations, i as u32)
            .await
            .expect("append");
    }
    let error = build_error_record(b"42", "t", 1, "a JSON number, not an object");
    handle
        .append(error.clone(), RecordKind::Errors, 3)
        .await
        .expect("append");
    let report = handle.shutdown(Duration::from_secs(10)).await;
    task.await.expect("uploader");
    assert_eq!((report.stored, report.failed), (1, 1), "{report:?}");
    assert_eq!(acked.load(Ordering::SeqCst), 4);
    assert!(
        dir.path()
            .join("spool/failed")
            .read_dir()
            .expect("failed dir")
            .count()
            == 1
    );

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
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
            DebugValue::Gauge(v) => {
                gauges.insert(name, v.into_inner());
            }
        }
    }
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(
        count("ccstream_objects_records_total{kind=observations}"),
        3,
        "{counters:?}"
    );
    assert_eq!(count("ccstream_objects_records_total{kind=errors}"), 1);
    let obs_bytes: usize = observations.iter().map(|r| r.len()).sum();
    assert_eq!(
        count("ccstream_objects_bytes_total{kind=observations}"),
        obs_bytes as u64
    );
    assert_eq!(
        count("ccstream_objects_bytes_total{kind=errors}"),
        error.len() as u64
    );
    assert_eq!(
        count("ccstream_objects_batches_stored_total{sink=scripted}"),
        1
    );
    assert_eq!(count("ccstream_objects_store_retries_total"), 1);
    assert_eq!(count("ccstream_objects_store_failures_total"), 1);
    let commits = count("ccstream_spool_commits_total");
    assert!(commits >= 1);
    assert_eq!(
        histograms.get("ccstream_spool_commit_records").copied(),
        Some(commits as usize)
    );
    assert_eq!(
        histograms
            .get("ccstream_objects_store_duration_seconds")
            .copied(),
        Some(1),
        "one sample per successful store"
    );
    assert_eq!(gauges.get("ccstream_spool_bytes"), Some(&0.0), "{gauges:?}");
    assert_eq!(gauges.get("ccstream_spool_files"), Some(&0.0));
    assert_eq!(gauges.get("ccstream_spool_backpressure"), Some(&0.0));
}
