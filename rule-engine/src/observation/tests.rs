#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

fn parse(s: &str) -> Result<ParsedObservation<'_>, Reject> {
    ParsedObservation::parse(s.as_bytes(), &ParseLimits::default())
}

#[test]
fn thing_and_sub_thing_resources() {
    let raw = include_str!("../../../fixtures/shadow/subthings.json");
    let obs = parse(raw).unwrap();
    assert_eq!(obs.raw(), raw.as_bytes());
    assert_eq!(obs.timestamp(), Some(1464081794634));
    let names: Vec<&str> = obs.resources().iter().map(|r| r.name.as_ref()).collect();
    assert_eq!(names, ["temp", "status"]);
    assert_eq!(obs.resources()[0].value, ResourceValue::UInt(50));
    let subs: Vec<(&str, &str)> = obs
        .sub_things()
        .iter()
        .map(|s| (s.id.as_ref(), s.kind.as_ref()))
        .collect();
    assert_eq!(subs, [("sub1", "pump"), ("sub2", UNTYPED)]);
    let sub1 = &obs.sub_things()[0];
    assert_eq!(obs.sub_state(sub1), json!({"temp": 50, "type": "pump"}));
    assert_eq!(
        obs.reported_state(),
        serde_json::from_str::<Value>(raw).unwrap()["state"]["reported"]
    );
}

#[test]
fn value_kinds() {
    let obs = parse(
        r#"{"state":{"reported":{"a":-3,"b":1.5,"c":"x\"y","d":null,"e":true,"f":[1,{"g":2}]}}}"#,
    )
    .unwrap();
    let values: Vec<&ResourceValue> = obs.resources().iter().map(|r| &r.value).collect();
    assert_eq!(
        values,
        [
            &ResourceValue::Int(-3),
            &ResourceValue::Float(1.5),
            &ResourceValue::Str(Cow::Borrowed("x\"y")),
            &ResourceValue::Null,
            &ResourceValue::Bool(true),
            &ResourceValue::Json(Box::new(json!([1, {"g": 2}]))),
        ]
    );
    assert_eq!(obs.timestamp(), None);
}

#[test]
fn strings_borrow_when_they_can() {
    let obs = parse(r#"{"state":{"reported":{"s":"plain"}}}"#).unwrap();
    assert!(matches!(
        obs.resources()[0].value,
        ResourceValue::Str(Cow::Borrowed("plain"))
    ));
    assert!(matches!(obs.resources()[0].name, Cow::Borrowed("s")));
}

#[test]
fn rejects_by_reason() {
    assert_eq!(parse("nope").unwrap_err(), Reject::NotJson);
    assert_eq!(parse("").unwrap_err(), Reject::NotJson);
    assert_eq!(parse(r#"{"state":{}} x"#).unwrap_err(), Reject::NotJson);
    assert_eq!(parse(r#"{"state":"#).unwrap_err(), Reject::NotJson);
    assert_eq!(parse("[1,2]").unwrap_err(), Reject::NotObject);
    assert_eq!(parse("\"s\"").unwrap_err(), Reject::NotObject);
    assert_eq!(parse("{}").unwrap_err(), Reject::NoReported);
    assert_eq!(
        parse(r#"{"state":{"desired":{"a":1}}}"#).unwrap_err(),
        Reject::NoReported
    );
    assert_eq!(
        parse(r#"{"state":{"reported":[1]}}"#).unwrap_err(),
        Reject::NoReported
    );
    assert_eq!(parse(r#"{"state":3}"#).unwrap_err(), Reject::NoReported);
    // A lone surrogate escape is not JSON (serde_json refuses it), in a key the parser skips
    // as anywhere else: the skip path used to accept it (found reviewing the fuzz targets).
    for lone in [
        r#"{"state":{"reported":{}},"x":{"\ud800":1}}"#,
        r#"{"state":{"reported":{"a":1},"desired":{"\udc00x":1}}}"#,
        r#"{"state":{"reported":{"a":"\ud800"}}}"#,
    ] {
        assert!(serde_json::from_str::<serde_json::Value>(lone).is_err());
        assert_eq!(parse(lone).unwrap_err(), Reject::NotJson, "{lone}");
    }
    let bad_utf8 = b"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}";
    assert_eq!(
        ParsedObservation::parse(bad_utf8, &ParseLimits::default()).unwrap_err(),
        Reject::NotJson
    );
    let limits = ParseLimits::new(10);
    assert_eq!(
        ParsedObservation::parse(br#"{"state":{"reported":{}}}"#, &limits).unwrap_err(),
        Reject::TooLarge
    );
}

fn nested(depth: usize, open: char, close: char) -> String {
    let mut s = String::new();
    s.extend(std::iter::repeat_n(open, depth));
    s.extend(std::iter::repeat_n(close, depth));
    s
}

#[test]
fn depth_is_limited_everywhere() {
    let limits = ParseLimits::default(); // 32
    let p = |s: String| ParsedObservation::parse(s.as_bytes(), &limits).map(|_| ());
    // A resource array nested so that the deepest array is at depth 32: fine; 33: too deep.
    let ok = format!(
        r#"{{"state":{{"reported":{{"a":{}}}}}}}"#,
        nested(29, '[', ']')
    );
    assert_eq!(p(ok), Ok(()));
    let deep = format!(
        r#"{{"state":{{"reported":{{"a":{}}}}}}}"#,
        nested(30, '[', ']')
    );
    assert_eq!(p(deep), Err(Reject::TooDeep));
    // In skipped fields, in sub things, in the timestamp, at the top level.
    let skipped = format!(
        r#"{{"state":{{"reported":{{}}}},"x":{}}}"#,
        nested(40, '[', ']')
    );
    assert_eq!(p(skipped), Err(Reject::TooDeep));
    let desired = format!(
        r#"{{"state":{{"desired":{},"reported":{{}}}}}}"#,
        nested(40, '[', ']')
    );
    assert_eq!(p(desired), Err(Reject::TooDeep));
    let sub = format!(
        r#"{{"state":{{"reported":{{"s":{{"a":{}}}}}}}}}"#,
        nested(40, '[', ']')
    );
    assert_eq!(p(sub), Err(Reject::TooDeep));
    let ts = format!(
        r#"{{"timestamp":{},"state":{{"reported":{{}}}}}}"#,
        nested(40, '[', ']')
    );
    assert_eq!(p(ts), Err(Reject::TooDeep));
    assert_eq!(p(nested(40, '[', ']')), Err(Reject::TooDeep));
    // Deeper than serde_json's own limit (128) is still reported as too deep.
    assert_eq!(p(nested(500, '[', ']')), Err(Reject::TooDeep));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    assert_eq!(p(objects), Err(Reject::TooDeep));
}

#[test]
fn repeated_state_or_reported_keeps_the_last() {
    let obs = parse(r#"{"state":{"reported":{"a":1},"reported":{"b":2}}}"#).unwrap();
    let names: Vec<&str> = obs.resources().iter().map(|r| r.name.as_ref()).collect();
    assert_eq!(names, ["b"]);
    let obs = parse(r#"{"state":{"reported":{"a":1}},"state":{"reported":{"c":2}}}"#).unwrap();
    assert_eq!(obs.resources()[0].name, "c");
}

#[test]
fn top_level_keys_are_noted_on_both_paths() {
    let keys = |raw: &str| parse(raw).map(|o| o.top_level_keys());
    assert_eq!(
        keys(r#"{"state":{"reported":{"thingName":1,"domain":2}}}"#),
        Ok(TopLevelKeys::default()),
        "only the top level counts"
    );
    let all = TopLevelKeys {
        thing_name: true,
        timestamp: true,
        domain: true,
    };
    // Fast path (plain strings and numbers), then a payload only the serde path takes (an
    // escaped key), with values of any type.
    assert_eq!(
        keys(r#"{"thingName":"x","timestamp":"soon","domain":7,"state":{"reported":{}}}"#),
        Ok(all)
    );
    assert_eq!(
        keys(r#"{"thing\u004eame":[1],"timestamp":{},"domain":null,"state":{"reported":{}}}"#),
        Ok(all)
    );
    assert_eq!(
        keys(r#"{"timestamp":5,"state":{"reported":{}}}"#),
        Ok(TopLevelKeys {
            timestamp: true,
            ..TopLevelKeys::default()
        })
    );
}

#[test]
fn timestamp_forms() {
    let ts = |s: &str| parse(s).unwrap().timestamp();
    assert_eq!(ts(r#"{"timestamp":12,"state":{"reported":{}}}"#), Some(12));
    assert_eq!(
        ts(r#"{"timestamp":12.0,"state":{"reported":{}}}"#),
        Some(12)
    );
    assert_eq!(ts(r#"{"timestamp":-1,"state":{"reported":{}}}"#), None);
    assert_eq!(ts(r#"{"timestamp":"12","state":{"reported":{}}}"#), None);
}

/// The serde path alone, as the fast path is checked against it.
fn serde_only<'a>(raw: &'a str, limits: &ParseLimits) -> Result<ParsedObservation<'a>, Reject> {
    ParsedObservation::parse_without_fast_path(raw.as_bytes(), limits)
}

fn fast_path_takes(raw: &str) -> bool {
    ParsedObservation::fast_path_takes(raw, &ParseLimits::default())
}

#[test]
fn typical_payloads_take_the_fast_path() {
    for raw in [
        include_str!("../../../fixtures/shadow/thing.json"),
        include_str!("../../../fixtures/shadow/subthings.json"),
        r#"{"state":{"reported":{"t":-0,"u":-12,"v":1e3,"w":null,"x":false}},"clientToken":"x"}"#,
        r#"{"state":{"desired":{"a":[1,{"b":2}]},"reported":{"a":1}},"version":3}"#,
        r#"{"state":{"desired":{"a":1}}}"#,
    ] {
        assert!(fast_path_takes(raw), "{raw}");
        assert_eq!(
            ParsedObservation::parse(raw.as_bytes(), &ParseLimits::default()),
            serde_only(raw, &ParseLimits::default())
        );
    }
    // What it leaves to the serde path.
    for raw in [
        r#"{"state":{"reported":{"a":"\u00e9"}}}"#,
        r#"{"state":{"reported":{"a":[1]}}}"#,
        r#"{"state":{"reported":{"s":{"a":{"b":1}}}}}"#,
        r#"{"state":{"reported":{"a":18446744073709551616}}}"#,
        r#"[1]"#,
        r#"{"state":{"reported":{}}} x"#,
        r#"{"state":{"reported":{"a":01}}}"#,
    ] {
        assert!(!fast_path_takes(raw), "{raw}");
    }
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n  "])
}

fn scalar_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "true",
            "false",
            "null",
            "0",
            "-0",
            "1",
            "-1",
            "12.5",
            "-0.0",
            "1e3",
            "1E+2",
            "2.5e-3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1e400",
            "01",
            "1.",
            "-",
            ".5",
            "+1",
            "0x1",
            "1.5e",
            "tru",
            "nul",
            "\"pump\"",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
            "\"raw\ttab\"",
            "\"unterminated",
            "\"ok\"",
            "\"é🦀\""
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        "[a-zA-Z0-9 _.é-]{0,6}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn key_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "state",
        "reported",
        "desired",
        "timestamp",
        "type",
        "temp",
        "pump",
        "a",
        "st\\u0061te",
    ])
    .prop_map(|k| format!("\"{k}\""))
}

fn value_text() -> impl Strategy<Value = String> {
    scalar_text().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec((key_text(), ws(), inner.clone(), ws()), 0..5).prop_map(
                |members| {
                    let body: Vec<String> = members
                        .into_iter()
                        .map(|(k, w1, v, w2)| format!("{w1}{k}{w1}:{w2}{v}{w2}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }
            ),
            prop::collection::vec((ws(), inner), 0..4).prop_map(|items| {
                let body: Vec<String> = items
                    .into_iter()
                    .map(|(w, v)| format!("{w}{v}{w}"))
                    .collect();
                format!("[{}]", body.join(","))
            }),
        ]
    })
}

/// Shadow updates, mostly well formed, with odd corners mixed in.
fn shadow_text() -> impl Strategy<Value = String> {
    let members = prop::collection::vec((key_text(), value_text()), 0..5);
    prop_oneof![
        (members, value_text(), ws()).prop_map(|(m, extra, w)| {
            let body: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!(
                "{w}{{\"state\":{w}{{\"reported\":{{{}}}}},\"timestamp\":{extra}}}{w}",
                body.join(",")
            )
        }),
        value_text(),
    ]
}

fn agree(raw: &str, limits: &ParseLimits) -> Result<(), TestCaseError> {
    let both = ParsedObservation::parse(raw.as_bytes(), limits);
    let serde = serde_only(raw, limits);
    prop_assert_eq!(both, serde, "payload {:?}", raw);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn fast_and_serde_paths_agree(raw in shadow_text(), depth in 4u32..8) {
        agree(&raw, &ParseLimits::default())?;
        agree(&raw, &ParseLimits { max_bytes: usize::MAX, max_depth: depth })?;
    }

    #[test]
    fn fast_and_serde_paths_agree_on_numbers(
        negative in any::<bool>(),
        int in "0|[1-9][0-9]{0,19}",
        frac in prop::option::of("[0-9]{1,20}"),
        exp in prop::option::of((prop::sample::select(vec!["e", "E", "e+", "e-", "E-"]), 0u32..400)),
    ) {
        let mut text = format!("{}{int}", if negative { "-" } else { "" });
        if let Some(frac) = frac {
            text.push('.');
            text.push_str(&frac);
        }
        if let Some((e, n)) = exp {
            text.push_str(&format!("{e}{n}"));
        }
        let raw = format!(r#"{{"timestamp":{text},"state":{{"reported":{{"x":{text}}}}}}}"#);
        agree(&raw, &ParseLimits::default())?;
    }

    #[test]
    fn fast_and_serde_paths_agree_on_mangled_payloads(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec![
            b'{', b'}', b'[', b']', b'"', b':', b',', b'\\', b' ', b'1', b'-', b'.', b'e', b'a', 0x01, 0xff,
        ])), 1..4),
        which in 0usize..3,
    ) {
        let base = [
            include_str!("../../../fixtures/shadow/thing.json"),
            include_str!("../../../fixtures/shadow/subthings.json"),
            r#"{"state":{"reported":{"a":-12,"b":[1,2],"c":{"type":"t","d":1.5e2}}},"timestamp":12}"#,
        ][which];
        let mut bytes = base.as_bytes().to_vec();
        for (at, op, b) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, b),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = b,
                _ => {}
            }
        }
        let both = ParsedObservation::parse(&bytes, &ParseLimits::default());
        match std::str::from_utf8(&bytes) {
            Ok(text) => prop_assert_eq!(both, serde_only(text, &ParseLimits::default())),
            Err(_) => prop_assert_eq!(both.map(|_| ()), Err(Reject::NotJson)),
        }
    }
}

#[test]
fn labels_are_distinct() {
    let labels: std::collections::HashSet<&str> = Reject::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), Reject::ALL.len());
}
