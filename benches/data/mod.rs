//! The generated data the engine benchmarks share: 100,000 things over 1,000 thing types and
//! 110 domains, 10,000 rules (ten per type) and shadow updates, from a small LCG, so that runs
//! and benchmarks compare.

use rule_engine::{Directory, DirectorySnapshot, Rule};
use serde_json::json;

pub const THING_TYPES: usize = 1_000;
pub const RULES: usize = 10_000;
pub const THINGS: usize = 100_000;

const RESOURCES: [&str; 5] = ["temp", "pressure", "rpm", "humidity", "level"];

/// Knuth's MMIX LCG; the high bits are good enough for picking test data.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    pub fn below(&mut self, n: usize) -> usize {
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
pub fn directory(rng: &mut Lcg) -> Directory {
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
pub fn rules(rng: &mut Lcg) -> Vec<Rule> {
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

/// Shadow updates as devices send them: three to five resources, a string number now and then,
/// a `pump` sub thing in a quarter of them, a timestamp in half.
pub fn observations(rng: &mut Lcg, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
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
