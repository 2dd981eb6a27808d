//! The directory of things alone at scale (issue 18): memory per thing and lookups per second.
//!
//! Run: `cargo bench -p rule-engine --bench directory_lookup [-- --things 1000000,10000000]`.
//!
//! For each size, a fresh process state is not possible, so sizes run in increasing order and
//! each directory is dropped before the next is built. Things are named as `benches/directory.sh`
//! names them (`device-XXXXXXXX-NNNN`, 20 bytes) over 1,000 types and 1,000 domains, and added
//! one at a time (`Directory::import_thing`, as the store's rows and a streamed import file
//! arrive). Printed per size:
//! - the build time, and resident memory after it minus before (VmRSS), per thing; the peak
//!   (VmHWM) rise over the same, per thing: what growing the table cost on top;
//! - lookups per second of known names in a random order, and of unknown names (a miss also
//!   hashes and probes), median of five rounds of one million lookups each;
//! - the cost of a life cycle event (`THING.UPDATE` of a known thing to another type, applied
//!   with `Directory::apply_event`, JSON parse included), the mean of 100,000.
//!
//! The names looked up are generated into one buffer first, so the figure is the directory's
//! cost, not the benchmark's allocations.

use std::hint::black_box;
use std::time::Instant;

use rule_engine::directory::ThingEntry;
use rule_engine::Directory;

const LOOKUPS: usize = 1_000_000;
const EVENTS: usize = 100_000;
const ROUNDS: usize = 5;

fn name(i: usize) -> String {
    format!("device-{i:08x}-{:04}", i % 10_000)
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Knuth's MMIX LCG.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// `count` names, back to back in one string, with their ranges.
fn names(count: usize, mut pick: impl FnMut() -> String) -> (String, Vec<std::ops::Range<usize>>) {
    let mut text = String::new();
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let start = text.len();
        text.push_str(&pick());
        ranges.push(start..text.len());
    }
    (text, ranges)
}

fn lookups_per_sec(directory: &Directory, text: &str, ranges: &[std::ops::Range<usize>]) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            let mut found = 0usize;
            for r in ranges {
                if let Some(t) = directory.thing(black_box(&text[r.clone()])) {
                    found += t.thing_type().len();
                }
            }
            black_box(found);
            ranges.len() as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

/// `Directory::import_thing`, whose arguments changed with the arena (the benchmark also builds
/// against the directory before it, for the "before" figures).
fn import(directory: &mut Directory, i: usize, t: &ThingEntry) {
    directory
        .import_thing(i, &t.thing_name, &t.thing_type, &t.domain)
        .expect("generated things import");
}

fn run(things: usize) {
    let rss_before = status_kib("VmRSS");
    let peak_before = status_kib("VmHWM");
    let started = Instant::now();
    let mut directory = Directory::new();
    for i in 0..things {
        let entry = ThingEntry {
            thing_name: name(i),
            thing_type: format!("type-{:04}", (i * 7) % 1000),
            domain: format!("dom-{:04}", (i * 13) % 1000),
        };
        import(&mut directory, i, &entry);
    }
    let built = started.elapsed();
    let rss = status_kib("VmRSS").saturating_sub(rss_before);
    let peak = status_kib("VmHWM").saturating_sub(peak_before.max(rss_before));
    let per_thing = |kib: u64| kib as f64 * 1024.0 / things as f64;

    let mut rng = Lcg(0x5eed);
    let (known, known_ranges) = names(LOOKUPS, || name(rng.below(things)));
    let (unknown, unknown_ranges) = names(LOOKUPS, || name(things + rng.below(things)));
    let hits = lookups_per_sec(&directory, &known, &known_ranges);
    let misses = lookups_per_sec(&directory, &unknown, &unknown_ranges);
    let events: Vec<Vec<u8>> = (0..EVENTS)
        .map(|e| {
            let i = rng.below(things);
            format!(
                r#"{{"type":"THING.UPDATE","source":{{"thingName":"{}","thingType":"type-{:04}","domain":"dom-{:04}"}}}}"#,
                name(i),
                (i * 7 + e + 1) % 1000,
                (i * 13) % 1000
            )
            .into_bytes()
        })
        .collect();
    let started = Instant::now();
    for event in &events {
        directory
            .apply_event("event/root", black_box(event))
            .expect("generated events apply");
    }
    let per_event = started.elapsed().as_secs_f64() / EVENTS as f64;
    println!(
        "| {things} | {:.1} s | {:.0} MiB | {:.1} | {:.1} | {:.2} M/s | {:.2} M/s | {:.1} µs |",
        built.as_secs_f64(),
        rss as f64 / 1024.0,
        per_thing(rss),
        per_thing(peak),
        hits / 1e6,
        misses / 1e6,
        per_event * 1e6,
    );
    drop(directory);
}

fn main() {
    let mut sizes = vec![1_000_000];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--things" {
            sizes = args
                .next()
                .unwrap_or_default()
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect();
        }
    }
    println!(
        "| things | build | RSS added | bytes per thing | peak rise per thing | hits | misses | event |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for things in sizes {
        run(things);
    }
}
