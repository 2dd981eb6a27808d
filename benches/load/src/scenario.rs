//! The directory snapshot and the rules the scenario script posts to ccstream. Pure.
//!
//! Thing `i` has thing type `LoadType-<i mod types>` in domain `root`. Rule `i` filters thing type
//! `i mod types`; the first rule of each type (`i < types`) fires a webhook when `temp >= 100`,
//! which [`crate::payload::update`] makes true for a share `fire_ratio` (1 % by default) of
//! updates. The other rules check resources that the generator never moves into range
//! (pressure, the sub thing's rpm, a cold temp), so they cost evaluation but never fire. With
//! fewer rules than thing types, things of types without a firing rule fire nothing.

use serde_json::{json, Value};

use crate::payload::{thing_name, HOT_TEMP};

pub fn thing_type(index: u32, types: u32) -> String {
    format!("LoadType-{:04}", index % types.max(1))
}

/// `{"domains":[],"things":[{"thingName","thingType","domain"}]}`.
pub fn directory(things: u32, types: u32) -> Value {
    let things: Vec<Value> = (0..things)
        .map(|i| {
            json!({"thingName": thing_name(i), "thingType": thing_type(i, types), "domain": "root"})
        })
        .collect();
    json!({"domains": [], "things": things})
}

/// A list of RuleLambda CREATE `attributes`. `counting`: the `temp < -100` rules get
/// `threshold.count = 2` (they never match, so firings are unchanged, but every update of their
/// types has a threshold step).
pub fn rules(count: u32, types: u32, webhook_url: &str, counting: bool) -> Value {
    let types = types.max(1);
    let rules: Vec<Value> = (0..count)
        .map(|i| {
            let t = thing_type(i, types);
            let (name, resource, operator, value) = match (i / types, i % 3) {
                (0, _) => (format!("load-hot-{i}"), "temp", "gte", json!(HOT_TEMP)),
                (_, 0) => (format!("load-pressure-{i}"), "pressure", "gt", json!(5000)),
                (_, 1) => (format!("load-rpm-{i}"), "pump.rpm", "gt", json!(10000)),
                _ => (format!("load-cold-{i}"), "temp", "lt", json!(-100)),
            };
            let mut rule = json!({
                "name": name,
                "enabled": true,
                "filter": {"domain": "root", "thingType": t},
                "expression": {"operator": operator, "resource": resource, "value": value},
                "actions": [{"type": "WEBHOOK", "config": {"url": webhook_url}}]
            });
            if counting && operator == "lt" {
                rule["threshold"] = json!({"count": 2});
            }
            rule
        })
        .collect();
    Value::Array(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_spreads_things_over_types() {
        let d = directory(10, 4);
        assert_eq!(d["domains"], json!([]));
        let things = d["things"].as_array().expect("things");
        assert_eq!(things.len(), 10);
        assert_eq!(
            things[0],
            json!({"thingName": "thing-000001", "thingType": "LoadType-0000", "domain": "root"})
        );
        assert_eq!(things[5]["thingType"], "LoadType-0001");
    }

    #[test]
    fn one_firing_rule_per_type() {
        let r = rules(12, 4, "http://127.0.0.1:9/hook", false);
        let r = r.as_array().expect("rules");
        assert_eq!(r.len(), 12);
        let hot: Vec<&Value> = r
            .iter()
            .filter(|r| {
                r["expression"]["resource"] == "temp" && r["expression"]["operator"] == "gte"
            })
            .collect();
        assert_eq!(hot.len(), 4);
        let types: std::collections::BTreeSet<&str> = hot
            .iter()
            .filter_map(|r| r["filter"]["thingType"].as_str())
            .collect();
        assert_eq!(types.len(), 4);
        assert_eq!(
            r[0]["actions"][0]["config"]["url"],
            "http://127.0.0.1:9/hook"
        );
        assert_eq!(r[0]["expression"]["value"], json!(100.0));
    }

    #[test]
    fn counting_rules_are_the_ones_that_never_match() {
        let r = rules(12, 4, "http://127.0.0.1:9/hook", true);
        let counting: Vec<&Value> = r
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| r.get("threshold").is_some())
            .collect();
        assert!(!counting.is_empty());
        for rule in counting {
            assert_eq!(rule["expression"]["operator"], "lt", "{rule}");
            assert_eq!(rule["threshold"], json!({"count": 2}));
        }
        let plain = rules(12, 4, "http://127.0.0.1:9/hook", false);
        assert!(plain
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r.get("threshold").is_none()));
    }
}
