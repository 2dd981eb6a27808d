//! Differential: ccstream's parse (the hand-written scanner first, the serde visitors when it
//! gives up) against the serde path alone and against `serde_json::Value`. They must agree on
//! accept and reject, and every resource either reads must have the value serde_json reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rule_engine::observation::{ResourceValue, UNTYPED};
use rule_engine::{ParseLimits, ParsedObservation, Reject};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits::default();
    let ours = ParsedObservation::parse(data, &limits);
    let serde_path = ParsedObservation::parse_without_fast_path(data, &limits);
    assert_eq!(
        ours, serde_path,
        "the fast path and the serde path disagree"
    );

    let reference: Result<Value, _> = serde_json::from_slice(data);
    match (&ours, &reference) {
        (Err(Reject::TooDeep), _) => {}
        (Err(Reject::NotJson), Ok(_)) => panic!("valid JSON refused as not JSON"),
        (Err(Reject::NotJson), Err(_)) => {}
        (Ok(_) | Err(Reject::NotObject | Reject::NoReported), Err(e)) => {
            // serde_json refuses deep input with its own recursion limit (128) only.
            assert!(
                e.to_string().contains("recursion limit"),
                "accepted what serde_json refuses: {e}"
            )
        }
        (Err(Reject::NotObject), Ok(v)) => assert!(!v.is_object()),
        (Err(Reject::NoReported), Ok(v)) => {
            assert!(v.is_object());
            assert!(!v["state"]["reported"].is_object());
        }
        (Ok(obs), Ok(v)) => agree(obs, v),
        (Err(Reject::TooLarge), _) => unreachable!("the fuzzer's inputs are smaller"),
    }
});

/// Every resource read equals serde_json's value of the same key. JSON leaves duplicate keys
/// undefined; serde_json keeps the last, so only the last occurrence of a name is compared (and
/// none of a name that is both a resource and a sub thing: the two lists lose their order).
fn agree(obs: &ParsedObservation<'_>, v: &Value) {
    let reported = v["state"]["reported"]
        .as_object()
        .expect("parsed, so state.reported is an object");
    let resources = obs.resources();
    let subs = obs.sub_things();
    let both =
        |name: &str| resources.iter().any(|r| r.name == name) && subs.iter().any(|s| s.id == name);
    for (i, res) in resources.iter().enumerate() {
        if both(&res.name) || resources[i + 1..].iter().any(|r| r.name == res.name) {
            continue;
        }
        let Some(expected) = reported.get(res.name.as_ref()) else {
            panic!("resource {:?} is not in state.reported", res.name)
        };
        same(&res.value, expected);
    }
    for (i, sub) in subs.iter().enumerate() {
        if both(&sub.id) || subs[i + 1..].iter().any(|s| s.id == sub.id) {
            continue;
        }
        let Some(Value::Object(expected)) = reported.get(sub.id.as_ref()) else {
            panic!("sub thing {:?} is not an object in state.reported", sub.id)
        };
        let kind = match expected.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => UNTYPED,
        };
        assert_eq!(sub.kind, kind, "sub thing type");
        let members = obs.sub_resources(sub);
        for (j, res) in members.iter().enumerate() {
            if members[j + 1..].iter().any(|r| r.name == res.name) {
                continue;
            }
            same(&res.value, &expected[res.name.as_ref()]);
        }
    }
    assert!(
        resources.len() + subs.len() >= reported.len(),
        "a member of state.reported was not read"
    );
    if obs.timestamp().is_some() {
        assert!(v.get("timestamp").is_some_and(Value::is_number));
    }
}

fn same(ours: &ResourceValue<'_>, theirs: &Value) {
    let ok = match (ours, theirs) {
        (ResourceValue::Null, Value::Null) => true,
        (ResourceValue::Bool(a), Value::Bool(b)) => a == b,
        (ResourceValue::UInt(a), Value::Number(b)) => b.as_u64() == Some(*a),
        (ResourceValue::Int(a), Value::Number(b)) => b.as_i64() == Some(*a),
        (ResourceValue::Float(a), Value::Number(b)) => {
            b.as_f64().map(f64::to_bits) == Some(a.to_bits())
        }
        (ResourceValue::Str(a), Value::String(b)) => a == b,
        (ResourceValue::Json(a), b) => **a == *b,
        _ => false,
    };
    assert!(ok, "resource value {ours:?}, serde_json reads {theirs:?}");
}
