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
use rule_engine::{
    Directory, DirectorySnapshot, Engine, ParseLimits, ParsedObservation, Rule, RuleIndex,
    ThresholdState,
};
use serde_json::json;

const THING_TYPES: usize = 1_000;
const RULES: usize = 10_000;
const THINGS: usize = 100_000;
/// Distinct pre-generated observations cycled through by the throughput bench.
const OBSERVATIONS: usize = 8_192;
/// Observations per measured iteration (the throughput unit).
const BATCH: usize = 1_024;

const RESOURCES: [&str; 5] = ["temp", "pressure", "rpm", "humidity", "level"];

/// Knuth's MMIX LCG; the high bits are good enough for picking test data.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn thing_type(i: usize) -> String {
    format!("type-{i:04}")
}

fn thing_name(i: usize) -> String {
    format!("thing-{i:06}")
}

/// Domains: root → d0..d9 → d0-0..d9-9.
fn directory(rng: &mut Lcg) -> Directory {
    let mut domains = Vec::new();
    for a in 0..10 {
        domains.push(json!({"id": format!("d{a}"), "parent": "root"}));
        for b in 0..10 {
            domains.push(json!({"id": format!("d{a}-{b}"), "parent": format!("d{a}")}));
        }
    }
    let things: Vec<_> = (0..THINGS)
        .map(|i| {
            json!({
                "thingName": thing_name(i),
                "thingType": thing_type(i % THING_TYPES),
                "domain": format!("d{}-{}", rng.below(10), rng.below(10)),
            })
        })
        .collect();
    let snapshot: DirectorySnapshot =
        serde_json::from_value(json!({"domains": domains, "things": things}))
            .expect("generated directory is valid");
    Directory::from_snapshot(snapshot).expect("generated directory imports")
}

/// Ten rules per thing type, over the five resources and the `pump.temp` sub thing resource,
/// every operator but `ne` (it matches nearly always), some with thresholds; none matches the generated values (all in 0..1000).
fn rules(rng: &mut Lcg) -> Vec<Rule> {
    (0..RULES)
        .map(|i| {
            let resource = if i % 10 == 9 {
                "pump.temp".to_owned()
            } else {
                RESOURCES[rng.below(RESOURCES.len())].to_owned()
            };
            let (operator, value) = match rng.below(6) {
                0 => ("gt", json!(1_000_000)),
                1 => ("gte", json!("1e7")),
                2 => ("lt", json!(-5)),
                3 => ("lte", json!(-1.5)),
                4 => ("eq", json!(-42)),
                // `ne` would match almost every value, so the sixth kind is a string equality.
                _ => ("eq", json!("offline")),
            };
            let domain = match rng.below(3) {
                0 => "root".to_owned(),
                1 => format!("d{}", rng.below(10)),
                _ => format!("d{}-{}", rng.below(10), rng.below(10)),
            };
            let threshold = if i % 4 == 0 {
                json!({"count": 3, "interval": 60_000})
            } else {
                json!(null)
            };
            serde_json::from_value(json!({
                "id": format!("rule-{i:05}"),
                "name": format!("rule {i}"),
                "enabled": true,
                "filter": {"domain": domain, "thingType": thing_type(i % THING_TYPES)},
                "expression": {"operator": operator, "resource": resource, "value": value},
                "actions": [{"type": "WEBHOOK", "config": {"url": "https://example.com/${thing.thingName}"}}],
                "threshold": threshold,
            }))
            .expect("generated rule is valid")
        })
        .collect()
}

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

/// Shadow updates as devices send them: three to five resources, a string number now and then,
/// a `pump` sub thing in a quarter of them, a timestamp in half.
fn observations(rng: &mut Lcg) -> Vec<(String, Vec<u8>)> {
    (0..OBSERVATIONS)
        .map(|_| {
            let thing = thing_name(rng.below(THINGS));
            let mut reported = serde_json::Map::new();
            let n = 3 + rng.below(3);
            for name in &RESOURCES[..n] {
                let v = rng.below(1000);
                let value = if rng.below(5) == 0 {
                    json!(v.to_string())
                } else if rng.below(2) == 0 {
                    json!(v)
                } else {
                    json!(v as f64 + 0.25)
                };
                reported.insert((*name).to_owned(), value);
            }
            if rng.below(4) == 0 {
                reported.insert(
                    "pump1".into(),
                    json!({"type": "pump", "temp": rng.below(1000), "on": true}),
                );
            }
            let mut payload = json!({"state": {"reported": reported}});
            if rng.below(2) == 0 {
                payload["timestamp"] = json!(1_700_000_000_000u64 + rng.below(1_000_000) as u64);
            }
            let raw = serde_json::to_vec(&payload).expect("serializes");
            (thing, raw)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = Lcg(0x5eed);
    let directory = directory(&mut rng);
    let rules = rules(&mut rng);
    let index = RuleIndex::from_rules(rules.clone());
    let observations = Stream::new(observations(&mut rng));
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
