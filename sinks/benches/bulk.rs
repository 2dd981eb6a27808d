//! Bulk body building for the OpenSearch indexer: 1,000 records of 200 bytes (the spool
//! benchmark's size) encoded into one `_bulk` NDJSON body, action lines with daily index and
//! document `_id` included. CPU per record; the figures are in BENCHMARKS.md.
//!
//! Run: `cargo bench -p sinks --bench bulk`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sinks::search::bulk::{encode, Item};
use tokio::time::Instant;

const RECORDS: usize = 1_000;

/// A record of 200 bytes, as the spool stores it.
fn record(i: usize) -> Bytes {
    let head = format!(
        "{{\"thingName\":\"thing-{i:06}\",\"timestamp\":{},\"domain\":\"root/sub1\",\
         \"state\":{{\"reported\":{{\"temp\":{}.5,\"pad\":\"",
        1_700_000_000_000u64 + i as u64,
        20 + i % 10
    );
    let tail = "\"}}}";
    let pad = 200usize.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

fn bench_encode(c: &mut Criterion) {
    let index: Arc<str> = "observations-2023.11.14".into();
    let now = Instant::now();
    let items: Vec<Item> = (0..RECORDS)
        .map(|i| Item {
            record: record(i),
            index: Arc::clone(&index),
            received: now,
            replayable: true,
        })
        .collect();
    let mut group = c.benchmark_group("bulk");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("encode 1000 records of 200 bytes", |b| {
        b.iter(|| black_box(encode(black_box(&items))))
    });
    group.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
