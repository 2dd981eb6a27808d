//! Objects spool throughput: 200-byte observation records appended through the object sink's
//! handle, group-committed (`fsync`) on the disk of `$TMPDIR`, acked, rolled at 5 MiB and
//! handed to the uploader (sink `none`: read back and deleted). Also `build_record` alone, and
//! the whole path (build + append + commit). The goal and the figures are in BENCHMARKS.md.
//!
//! Run: `cargo bench -p sinks --bench spool`. The spool lives in a temporary directory on the
//! disk of `$TMPDIR` (default `/tmp`); set `TMPDIR` to measure another disk.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sinks::objects::{build_record, ObjectSink, ObjectsConfig, RecordKind, SinkKind, Writer};

/// Records per measured iteration.
const RECORDS: u64 = 100_000;

/// A shadow update that becomes a record of 200 bytes.
fn payload(i: u64) -> Vec<u8> {
    let base = format!(
        "{{\"state\":{{\"reported\":{{\"temp\":{}.5,\"pressure\":{},\"pump\":{{\"type\":\"pump\",\"rpm\":{}}}}}}},\"pad\":\"",
        20 + i % 10,
        1000 + i % 7,
        1500 + i % 13
    );
    let unpadded = format!("{base}\"}}");
    let record_len = build_record(unpadded.as_bytes(), "thing-000001", 1_700_000_000_000, None)
        .map(|r| r.len())
        .unwrap_or(0);
    let pad = 200usize.saturating_sub(record_len);
    format!("{base}{}\"}}", "x".repeat(pad)).into_bytes()
}

fn bench_build_record(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = (0..1024).map(payload).collect();
    let len = build_record(&payloads[0], "thing-000001", 1_700_000_000_000, None)
        .map(|r| r.len())
        .unwrap_or(0);
    assert_eq!(len, 200, "records are 200 bytes");
    let mut group = c.benchmark_group("build_record");
    group.throughput(Throughput::Elements(payloads.len() as u64));
    group.bench_function("200B", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(build_record(black_box(p), "thing-000001", 1_700_000_000_000, None).ok());
            }
        })
    });
    group.finish();
}

/// Counts acked tokens; the bench waits on it.
#[derive(Default)]
struct Acks {
    count: Mutex<u64>,
    cond: Condvar,
}

impl Acks {
    fn wait_for(&self, n: u64) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count < n {
            count = self.cond.wait(count).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn bench_spool(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ObjectsConfig {
        sink: SinkKind::None,
        spool_dir: dir.path().join("spool"),
        ..ObjectsConfig::default()
    };
    let acks = Arc::new(Acks::default());
    let commits = Arc::new(AtomicU64::new(0));
    let on_commit = {
        let acks = acks.clone();
        let commits = commits.clone();
        Box::new(move |tokens: Vec<u64>| {
            commits.fetch_add(1, Ordering::Relaxed);
            *acks.count.lock().unwrap_or_else(|e| e.into_inner()) += tokens.len() as u64;
            acks.cond.notify_all();
        })
    };
    let (handle, task) = {
        let _guard = runtime.enter();
        ObjectSink::start(&cfg, "bench", Writer::None, on_commit).expect("start")
    };
    let payloads: Vec<Vec<u8>> = (0..1024).map(payload).collect();
    let records: Vec<Vec<u8>> = payloads
        .iter()
        .map(|p| build_record(p, "thing-000001", 1_700_000_000_000, None).expect("record"))
        .collect();
    let mut sent = 0u64;

    let mut group = c.benchmark_group("spool");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(RECORDS));
    // `iters` rounds of RECORDS records from `make` (given the record's index), each round
    // waited for until committed.
    let mut run = |iters: u64, make: &dyn Fn(u64) -> Vec<u8>| {
        let start = Instant::now();
        for _ in 0..iters {
            for i in 0..RECORDS {
                handle
                    .append_blocking(make(i), RecordKind::Observations, sent)
                    .expect("append");
                sent += 1;
            }
            acks.wait_for(sent);
        }
        start.elapsed()
    };
    let prebuilt = |i: u64| records[(i % 1024) as usize].clone();
    let built = |i: u64| {
        build_record(
            &payloads[(i % 1024) as usize],
            "thing-000001",
            1_700_000_000_000 + i,
            None,
        )
        .expect("record")
    };
    group.bench_function("append_commit_roll_200B", |b| {
        b.iter_custom(|iters| run(iters, &prebuilt))
    });
    group.bench_function("build_append_commit_roll_200B", |b| {
        b.iter_custom(|iters| run(iters, &built))
    });
    group.throughput(Throughput::Bytes(RECORDS * 200));
    group.bench_function("append_commit_roll_200B_bytes", |b| {
        b.iter_custom(|iters| run(iters, &prebuilt))
    });
    group.finish();

    // One record in flight at a time: the commit latency (about one fsync), which with a
    // broker's in-flight window W caps one connection at W / latency (DESIGN.md).
    let mut group = c.benchmark_group("spool_latency");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_record_append_to_ack", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                handle
                    .append_blocking(records[0].clone(), RecordKind::Observations, sent)
                    .expect("append");
                sent += 1;
                acks.wait_for(sent);
            }
            start.elapsed()
        })
    });
    group.finish();

    let stats = handle.stats();
    eprintln!(
        "spool: {} records in {} group commits ({:.0} records per fsync), {} batches sealed, {} stored",
        stats.records,
        stats.commits,
        stats.records as f64 / stats.commits.max(1) as f64,
        stats.batches_sealed,
        stats.batches_stored
    );
    let report = runtime.block_on(async {
        let report = handle.shutdown(Duration::from_secs(30)).await;
        let _ = task.await;
        report
    });
    eprintln!("shutdown: {report:?}");
}

criterion_group!(benches, bench_build_record, bench_spool);
criterion_main!(benches);
