//! Rule CREATE/UPDATE attributes (spec 6.1) as a tenant sends them: validated, indexed,
//! evaluated and their templates filled. A valid rule must come back the same when it is
//! answered and stored (serialized) and read or validated again, and evaluating it must never
//! panic, whatever its filter, expression, threshold and action configs hold.
#![no_main]

use arbitrary::Arbitrary;
use ccstream_fuzz::{Json, Name, Shadow};
use libfuzzer_sys::fuzz_target;
use rule_engine::{
    validate_rule, Directory, Engine, ParseLimits, ParsedObservation, Rule, RuleIndex,
    ThresholdState, ValidateMode,
};
use serde_json::{json, Map, Value};

/// Actions: a type (WEBHOOK when absent), config members, and a url.
type Actions = Vec<(Option<Name>, Vec<(Name, Json)>, Option<Json>)>;

/// Attributes close to valid ones (each property may be anything), or raw JSON.
#[derive(Debug)]
enum Input {
    Shaped(Box<Shaped>),
    Raw(Vec<u8>, bool),
}

#[derive(Debug, Arbitrary)]
struct Shaped {
    id: Option<Json>,
    name: Option<Json>,
    enabled: Option<Json>,
    domain: Option<Json>,
    thing_type: Option<Json>,
    thing_names: Option<Json>,
    operator: Option<Name>,
    resource: Option<Json>,
    value: Option<Json>,
    threshold: Option<(Option<Json>, Option<Json>)>,
    actions: Option<Actions>,
    extra: Vec<(Name, Json)>,
    update: bool,
    observation: Shadow,
}

const OPERATORS: &[&str] = &["gt", "gte", "lt", "lte", "eq", "ne", "GT", "between"];

// The first byte chooses: even, the rest is raw JSON (the corpus's real rules); odd, the
// rest drives the structure-aware generator.
fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let input = if choice % 2 == 0 {
        Input::Raw(rest.to_vec(), choice % 4 == 0)
    } else {
        match Shaped::arbitrary_take_rest(arbitrary::Unstructured::new(rest)) {
            Ok(shaped) => Input::Shaped(Box::new(shaped)),
            Err(_) => return,
        }
    };
    let (attributes, mode, observation) = match input {
        Input::Raw(bytes, update) => {
            let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
                return;
            };
            (value, update, None)
        }
        Input::Shaped(shaped) => {
            let Shaped {
                id,
                name,
                enabled,
                domain,
                thing_type,
                thing_names,
                operator,
                resource,
                value,
                threshold,
                actions,
                extra,
                update,
                observation,
            } = *shaped;
            let mut a = Map::new();
            let put = |map: &mut Map<String, Value>, key: &str, v: Option<Value>| {
                if let Some(v) = v {
                    map.insert(key.to_owned(), v);
                }
            };
            put(&mut a, "id", id.map(|j| j.to_value()));
            put(&mut a, "name", name.map(|j| j.to_value()));
            put(&mut a, "enabled", enabled.map(|j| j.to_value()));
            let mut filter = Map::new();
            put(&mut filter, "domain", domain.map(|j| j.to_value()));
            put(&mut filter, "thingType", thing_type.map(|j| j.to_value()));
            put(&mut filter, "thingNames", thing_names.map(|j| j.to_value()));
            a.insert("filter".into(), Value::Object(filter));
            let mut expression = Map::new();
            let operator = operator.map(|n| {
                let i = n.0.len() % OPERATORS.len();
                Value::from(if n.0.len() < 8 {
                    OPERATORS[i]
                } else {
                    n.0.as_str()
                })
            });
            put(&mut expression, "operator", operator);
            put(&mut expression, "resource", resource.map(|j| j.to_value()));
            put(&mut expression, "value", value.map(|j| j.to_value()));
            a.insert("expression".into(), Value::Object(expression));
            if let Some((count, interval)) = threshold {
                let mut t = Map::new();
                put(&mut t, "count", count.map(|j| j.to_value()));
                put(&mut t, "interval", interval.map(|j| j.to_value()));
                a.insert("threshold".into(), Value::Object(t));
            }
            if let Some(actions) = actions {
                let list = actions
                    .into_iter()
                    .map(|(kind, config, url)| {
                        let mut config = ccstream_fuzz::object(&config);
                        // A valid webhook url unless the input gives one.
                        let url = url.map_or_else(
                            || Value::from("https://hooks.example.com/t/${thing.thingName}"),
                            |u| u.to_value(),
                        );
                        config.insert("url".into(), url);
                        let kind = kind.map_or(Value::from("WEBHOOK"), |k| Value::from(k.0));
                        json!({"type": kind, "config": config})
                    })
                    .collect();
                a.insert("actions".into(), Value::Array(list));
            }
            for (k, v) in extra {
                a.insert(k.0, v.to_value());
            }
            (Value::Object(a), update, Some(observation))
        }
    };
    let mode = if mode {
        ValidateMode::Update
    } else {
        ValidateMode::Create
    };
    let Ok(rule) = validate_rule(&attributes, mode) else {
        return;
    };
    round_trips(&rule);
    if let Some(observation) = observation {
        evaluate(rule, &observation.to_text());
    }
});

/// Answered and stored as JSON, read back as stored, validated again: the same rule.
fn round_trips(rule: &Rule) {
    let stored = serde_json::to_string(rule).expect("a rule serializes");
    let read: Rule = serde_json::from_str(&stored).expect("a stored rule reads back");
    assert_eq!(&read, rule, "stored {stored}");
    let mut answered: Value = serde_json::from_str(&stored).expect("JSON");
    let mode = if rule.id.is_empty() {
        if let Some(map) = answered.as_object_mut() {
            map.remove("id");
        }
        ValidateMode::Create
    } else {
        ValidateMode::Update
    };
    assert_eq!(
        validate_rule(&answered, mode).as_ref(),
        Ok(rule),
        "answered {answered}"
    );
}

/// The rule, indexed alone, against an observation of a thing its filter names.
fn evaluate(rule: Rule, observation: &str) {
    let Ok(obs) = ParsedObservation::parse(observation.as_bytes(), &ParseLimits::default()) else {
        return;
    };
    let mut directory = Directory::new();
    let domain = rule.filter.domain.clone();
    if domain != rule_engine::ROOT && directory.insert_domain(&domain, "root").is_err() {
        return;
    }
    let name = rule
        .filter
        .thing_names
        .as_ref()
        .and_then(|names| names.first().cloned())
        .unwrap_or_else(|| "thing-001".to_owned());
    directory
        .upsert_thing(&name, rule.filter.thing_type.as_str(), &domain)
        .expect("one thing fits");
    let index = RuleIndex::from_rules([rule]);
    let mut thresholds = ThresholdState::new();
    for at in [ccstream_fuzz::NOW_MS, ccstream_fuzz::NOW_MS + 60_000] {
        let outcome = Engine::new(&index, &directory).evaluate(&name, &obs, at, &mut thresholds);
        for firing in outcome.firings {
            assert_eq!(firing.payload["thing"]["thingName"], name.as_str());
        }
    }
}
