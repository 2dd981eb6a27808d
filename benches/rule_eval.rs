//! Rule evaluation throughput: parse + match + threshold of observations,
//! from the raw payload bytes, against 10,000 rules over 1,000 thing types and 100,000 things.
//! The rules' expressions never match for the generated values ("actions not fired"), so the
//! figure is the cost of the hot path every observation pays.
//!
//! Run: `cargo bench --bench rule_eval`. Data is generated deterministically (a small LCG), so
//! runs compare.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rule_engine::{Engine, ParseLimits, ParsedObservation, RuleIndex, ThresholdState};

mod data;

use data::{directory, observations, rules, Lcg};

/// Distinct pre-generated observations cycled through by the throughput bench.
const OBSERVATIONS: usize = 8_192;
/// Observations per measured iteration (the throughput unit).
const BATCH: usize = 1_024;

/// The observations back to back in one buffer, as they come off a connection's read buffer
/// (rather than scattered over the heap, which would make the benchmark measure cache misses on
/// its own input).
struct Stream {
    bytes: Vec<u8>,
    /// Thing name and payload ranges into `bytes`.
    items: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Stream {
    fn new(observations: Vec<(String, Vec<u8>)>) -> Self {
        let mut bytes = Vec::new();
        let mut items = Vec::new();
        for (thing, raw) in observations {
            let name = bytes.len()..bytes.len() + thing.len();
            bytes.extend_from_slice(thing.as_bytes());
            let payload = bytes.len()..bytes.len() + raw.len();
            bytes.extend_from_slice(&raw);
            items.push((name, payload));
        }
        Stream { bytes, items }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// The thing name (from the topic) and the payload of observation `i`.
    fn get(&self, i: usize) -> (&str, &[u8]) {
        let (name, payload) = &self.items[i];
        let name = std::str::from_utf8(&self.bytes[name.clone()]).expect("names are ASCII");
        (name, &self.bytes[payload.clone()])
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = Lcg(0x5eed);
    let directory = directory(&mut rng);
    let rules = rules(&mut rng);
    let index = RuleIndex::from_rules(rules.clone());
    let observations = Stream::new(observations(&mut rng, OBSERVATIONS));
    let limits = ParseLimits::default();
    let engine = Engine::new(&index, &directory);
    let mean_len = (0..observations.len())
        .map(|i| observations.get(i).1.len())
        .sum::<usize>()
        / observations.len();
    eprintln!(
        "rule_eval: {} rules, {} thing types, {} things, {} distinct observations of {} bytes on average",
        index.len(),
        index.thing_types(),
        directory.len(),
        observations.len(),
        mean_len
    );

    // Sanity check outside the measurement: the rules are evaluated but never fire.
    let mut thresholds = ThresholdState::new();
    let (mut evaluated, mut fired) = (0u64, 0usize);
    for i in 0..observations.len() {
        let (thing, raw) = observations.get(i);
        let obs = ParsedObservation::parse(raw, &limits).expect("generated payload parses");
        let out = engine.evaluate(thing, &obs, 0, &mut thresholds);
        assert!(!out.unknown_thing);
        evaluated += u64::from(out.evaluated);
        fired += out.firings.len();
    }
    assert_eq!(fired, 0);
    eprintln!(
        "rule_eval: {:.2} expressions evaluated per observation",
        evaluated as f64 / observations.len() as f64
    );

    // Criterion measures wall time, which on a shared machine includes the time other
    // processes hold the core. On Linux, also report throughput per second actually spent on a
    // CPU (the thread's run time from the scheduler), which is what "per core" means.
    if let Some(before) = on_cpu_ns() {
        let passes = 20;
        let mut thresholds = ThresholdState::new();
        for pass in 0..passes {
            for i in 0..observations.len() {
                let (thing, raw) = observations.get(i);
                if let Ok(obs) = ParsedObservation::parse(black_box(raw), &limits) {
                    let now = 1_700_000_000_000 + (pass * observations.len() + i) as u64;
                    black_box(engine.evaluate(black_box(thing), &obs, now, &mut thresholds));
                }
            }
        }
        if let Some(after) = on_cpu_ns() {
            let n = (passes * observations.len()) as f64;
            eprintln!(
                "rule_eval: parse_match_threshold: {:.0} observations per on-CPU second ({:.0} ns each)",
                n / ((after - before) as f64 / 1e9),
                (after - before) as f64 / n
            );
        }
    }

    let mut group = c.benchmark_group("rule_eval");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("parse_match_threshold", |b| {
        let mut thresholds = ThresholdState::new();
        let mut next = 0usize;
        let mut now = 1_700_000_000_000u64;
        b.iter(|| {
            for _ in 0..BATCH {
                let (thing, raw) = observations.get(next);
                next = (next + 1) % observations.len();
                now += 1;
                if let Ok(obs) = ParsedObservation::parse(black_box(raw), &limits) {
                    black_box(engine.evaluate(black_box(thing), &obs, now, &mut thresholds));
                }
            }
        });
    });

    group.bench_function("parse_only", |b| {
        let mut next = 0usize;
        b.iter(|| {
            for _ in 0..BATCH {
                let (_, raw) = observations.get(next);
                next = (next + 1) % observations.len();
                let _ = black_box(ParsedObservation::parse(black_box(raw), &limits));
            }
        });
    });

    group.bench_function("serde_json_value_parse_for_comparison", |b| {
        let mut next = 0usize;
        b.iter(|| {
            for _ in 0..BATCH {
                let (_, raw) = observations.get(next);
                next = (next + 1) % observations.len();
                let _ = black_box(serde_json::from_slice::<serde_json::Value>(black_box(raw)));
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("rule_index");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("rebuild_10k_rules", |b| {
        b.iter_batched(
            || rules.clone(),
            |rules| black_box(RuleIndex::from_rules(rules)),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("clone_and_upsert_one", |b| {
        let rule = rules[1234].clone();
        b.iter_batched(
            || rule.clone(),
            |rule| {
                let mut copy = index.clone();
                copy.upsert(rule);
                black_box(copy)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`).
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

criterion_group!(benches, bench);
criterion_main!(benches);
