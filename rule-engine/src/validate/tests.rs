use super::*;
use proptest::prelude::*;
use MessageKey::{InvalidArguments, PropertyNotANumber, PropertyNotInRange, PropertyRequired};

/// Spec 6.2.1's example request, with the elided webhook `config` filled in.
fn spec_example() -> Value {
    json!({
        "name": "Thing Overheating",
        "description": "Triggered if the temperature is too high",
        "enabled": true,
        "filter": {
            "domain": "root",
            "thingType": "Pump",
            "thingNames": ["thing-001", "thing-002"]
        },
        "expression": { "operator": "gte", "resource": "temp", "value": 50 },
        "actions": [{
            "config": {
                "url": "https://example.com/hooks/overheat",
                "method": "POST",
                "body": "Rule triggered for thing: ${thing.thingName}"
            },
            "type": "WEBHOOK"
        }],
        "threshold": { "count": 0, "interval": 0 }
    })
}

/// The spec example with the property at JSON pointer `pointer` set (or added).
fn set(pointer: &str, value: Value) -> Value {
    let mut base = spec_example();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    match base.pointer_mut(parent).expect("parent exists") {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => {
            items[key.parse::<usize>().expect("array index")] = value;
        }
        _ => panic!("{parent} is not a container"),
    }
    base
}

/// The spec example without the property at JSON pointer `pointer`.
fn unset(pointer: &str) -> Value {
    let mut base = spec_example();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a slash");
    base.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent is an object")
        .remove(key);
    base
}

fn create(input: &Value) -> Result<Rule, Invalid> {
    validate_rule(input, ValidateMode::Create)
}

fn ok(input: &Value) -> Rule {
    match create(input) {
        Ok(rule) => rule,
        Err(e) => panic!("expected {input} to be valid, got {e:?}"),
    }
}

fn err(input: &Value, mode: ValidateMode) -> Invalid {
    match validate_rule(input, mode) {
        Ok(rule) => panic!("expected {input} to be invalid, got {rule:?}"),
        Err(e) => e,
    }
}

fn params(value: Value) -> Option<Map<String, Value>> {
    value.as_object().cloned()
}

type Case = (&'static str, Value, MessageKey, &'static str);

/// Runs every case and reports all mismatches at once.
fn check(mode: ValidateMode, cases: Vec<Case>) {
    let mut wrong = Vec::new();
    for (what, input, key, property) in cases {
        match validate_rule(&input, mode) {
            Err(e) if e.key == key && e.property == property => {
                assert!(!e.message.is_empty(), "{what}: empty message");
            }
            other => wrong.push(format!(
                "{what}: expected {} at {property}, got {other:?}",
                key.as_str()
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn long(n: usize) -> Value {
    Value::String("a".repeat(n))
}

// ---- happy paths -------------------------------------------------------------------------

#[test]
fn spec_example_is_valid() {
    let rule = ok(&spec_example());
    let expected = Rule {
        id: String::new(),
        name: "Thing Overheating".into(),
        description: Some("Triggered if the temperature is too high".into()),
        enabled: true,
        filter: Filter {
            domain: "root".into(),
            thing_type: "Pump".into(),
            thing_names: Some(vec!["thing-001".into(), "thing-002".into()]),
        },
        expression: Expression {
            operator: Operator::Gte,
            resource: "temp".into(),
            value: json!(50),
        },
        actions: vec![Action {
            kind: ActionType::Webhook,
            config: params(json!({
                "url": "https://example.com/hooks/overheat",
                "method": "POST",
                "body": "Rule triggered for thing: ${thing.thingName}"
            }))
            .expect("object"),
        }],
        threshold: Some(Threshold {
            count: Some(0),
            interval: Some(0),
        }),
    };
    assert_eq!(rule, expected);
}

#[test]
fn update_keeps_the_id() {
    let input = set("/id", json!("dev-00000001"));
    let rule = validate_rule(&input, ValidateMode::Update).expect("valid");
    assert_eq!(rule.id, "dev-00000001");
    assert_eq!(ok(&input).id, "dev-00000001");
}

#[test]
fn minimal_rule_is_valid() {
    let input = json!({
        "name": "n",
        "enabled": false,
        "filter": { "domain": "sub1", "thingType": 1 },
        "expression": { "operator": "eq", "resource": "on", "value": true },
        "actions": [{ "type": "WEBHOOK", "config": { "url": "http://h" } }]
    });
    let rule = ok(&input);
    assert_eq!(rule.description, None);
    assert!(!rule.enabled);
    assert_eq!(rule.filter.thing_type, "1");
    assert_eq!(rule.filter.thing_names, None);
    assert_eq!(rule.threshold, None);
}

#[test]
fn sub_thing_resource_is_valid() {
    let rule = ok(&set("/expression/resource", json!("pump.temp")));
    assert_eq!(rule.expression.resource, "pump.temp");
    let rule = ok(&set("/expression/resource", json!("untyped.temp")));
    assert_eq!(rule.expression.resource, "untyped.temp");
}

#[test]
fn template_urls_with_literal_scheme_and_host_are_valid() {
    for url in [
        "https://example.com/hooks/${rule.id}?thing=${thing.thingName}",
        "https://example.com?thing=${thing.thingName}",
        "https://example.com#${rule.id}",
        "http://example.com:8080/${thing.domain}/${resource.path}",
        "https://example.com/${a b}",
        "https://example.com/${unterminated",
    ] {
        let rule = ok(&set("/actions/0/config/url", json!(url)));
        assert_eq!(rule.actions[0].config["url"], json!(url), "kept as given");
    }
}

#[test]
fn plain_urls_that_are_valid() {
    for url in [
        "http://example.com",
        "https://example.com:8443/x?y=1#z",
        "http://10.0.0.1/x",
        "https://[::1]:8080/",
        "HTTPS://EXAMPLE.COM/",
    ] {
        ok(&set("/actions/0/config/url", json!(url)));
    }
}

#[test]
fn thing_type_numbers_match_as_decimal_text_and_stay_numbers() {
    let cases = [
        (json!(1), "1"),
        (json!(-3), "-3"),
        (json!(u64::MAX), "18446744073709551615"),
        (json!("1"), "1"),
        (json!("Pump"), "Pump"),
    ];
    for (value, expected) in cases {
        let rule = ok(&set("/filter/thingType", value.clone()));
        assert_eq!(rule.filter.thing_type, expected);
        assert_eq!(rule.filter.thing_type.is_integer(), value.is_number());
        // Answered (and stored) in the JSON type it was given in.
        let answered = serde_json::to_value(&rule).expect("serializes");
        assert_eq!(answered["filter"]["thingType"], value);
        let read_back: Rule = serde_json::from_value(answered).expect("deserializes");
        assert_eq!(read_back, rule);
    }
}

#[test]
fn optional_properties_are_answered_as_given() {
    let without = ok(&unset("/filter/thingNames"));
    let answered = serde_json::to_value(&without).expect("serializes");
    assert_eq!(answered["filter"].get("thingNames"), None);
    let empty = ok(&set("/filter/thingNames", json!([])));
    let answered = serde_json::to_value(&empty).expect("serializes");
    assert_eq!(answered["filter"]["thingNames"], json!([]));
    let minimal = serde_json::to_value(ok(&unset("/threshold"))).expect("serializes");
    assert_eq!(minimal.get("threshold"), None);
    let no_description = serde_json::to_value(ok(&unset("/description"))).expect("serializes");
    assert_eq!(no_description.get("description"), None);
}

#[test]
fn null_optional_properties_are_absent() {
    let rule = ok(&set("/description", Value::Null));
    assert_eq!(rule.description, None);
    assert_eq!(
        ok(&set("/filter/thingNames", Value::Null))
            .filter
            .thing_names,
        None
    );
    assert_eq!(ok(&set("/threshold", Value::Null)).threshold, None);
    assert_eq!(ok(&unset("/threshold")).threshold, None);
    assert_eq!(
        ok(&set("/threshold/count", Value::Null)).threshold,
        Some(Threshold {
            count: None,
            interval: Some(0)
        })
    );
    assert_eq!(
        ok(&set("/threshold", json!({}))).threshold,
        Some(Threshold::default())
    );
    ok(&set("/actions/0/config/method", Value::Null));
    ok(&set("/actions/0/config/headers", Value::Null));
    assert_eq!(ok(&set("/id", Value::Null)).id, "");
}

#[test]
fn unknown_top_level_keys_and_readonly_are_ignored() {
    let plain = ok(&spec_example());
    for (key, value) in [
        ("readonly", json!(true)),
        ("readonly", json!("not even a boolean")),
        ("createdBy", json!({ "user": "demo" })),
        ("action", json!("CREATE")),
    ] {
        assert_eq!(ok(&set(&format!("/{key}"), value)), plain);
    }
}

#[test]
fn webhook_config_is_kept_as_given() {
    let config = json!({
        "url": "https://example.com/x",
        "method": "patch",
        "headers": { "X-Thing": "${thing.thingName}", "Content-Type": "application/json" },
        "body": { "temp": "${resource.value}", "list": [1, 2] },
        "timeoutMs": 500
    });
    let rule = ok(&set("/actions/0/config", config.clone()));
    assert_eq!(Value::Object(rule.actions[0].config.clone()), config);
    for method in ["GET", "post", "Put", "PATCH", "delete"] {
        ok(&set("/actions/0/config/method", json!(method)));
    }
    for body in [json!("text"), json!(5), json!([1]), json!(false)] {
        ok(&set("/actions/0/config/body", body));
    }
}

/// A config nested deeper than a stored rule can be read back with was accepted once and then
/// never loaded again (found by the `rule_attributes` fuzz target, which builds attributes
/// without the API's parser in between). At the limit, the stored rule reads back.
#[test]
fn action_configs_nest_at_most_max_config_depth_levels() {
    // `levels` containers in all: the config and `levels - 1` arrays around a number.
    let config_of = |levels: usize| {
        let mut body = json!(1);
        for _ in 1..levels {
            body = json!([body]);
        }
        json!({"url": "https://example.com/x", "body": body})
    };
    let rule = ok(&set("/actions/0/config", config_of(MAX_CONFIG_DEPTH)));
    let stored = serde_json::to_string(&rule).expect("serializes");
    let read: Rule = serde_json::from_str(&stored).expect("the stored rule reads back");
    assert_eq!(read, rule);

    let e = err(
        &set("/actions/0/config", config_of(MAX_CONFIG_DEPTH + 1)),
        ValidateMode::Create,
    );
    assert_eq!(e.key, PropertyNotInRange);
    assert_eq!(e.property, "actions[0].config");
    assert_eq!(e.params, params(json!({ "max": MAX_CONFIG_DEPTH })));
    // Objects count as arrays do, wherever they are in the config.
    let mut deep = json!({"v": 1});
    for _ in 0..MAX_CONFIG_DEPTH {
        deep = json!({"k": [deep]});
    }
    let e = err(
        &set("/actions/0/config/headers2", deep),
        ValidateMode::Create,
    );
    assert_eq!(e.property, "actions[0].config");
}

#[test]
fn every_operator_is_accepted() {
    for op in Operator::ALL {
        let rule = ok(&set("/expression/operator", json!(op.as_str())));
        assert_eq!(rule.expression.operator, op);
    }
}

#[test]
fn expression_values_that_are_valid() {
    let cases = [
        ("gt", json!("50")),
        ("gte", json!(" 50.5 ")),
        ("lt", json!(-1.5)),
        ("lte", json!("1e3")),
        ("eq", json!("hot")),
        ("eq", json!(0)),
        ("ne", json!(true)),
        ("eq", json!("")),
    ];
    for (op, value) in cases {
        let mut input = set("/expression/operator", json!(op));
        input["expression"]["value"] = value.clone();
        let rule = ok(&input);
        assert_eq!(rule.expression.value, value, "kept as given");
    }
}

#[test]
fn boundaries_that_are_valid() {
    ok(&set("/id", long(MAX_ID_LEN)));
    ok(&set("/id", json!("a.b_c:d-E9")));
    ok(&set("/name", long(MAX_NAME_LEN)));
    // Lengths count characters, not bytes.
    ok(&set("/name", json!("é".repeat(MAX_NAME_LEN))));
    ok(&set("/description", long(MAX_DESCRIPTION_LEN)));
    ok(&set("/description", json!("")));
    ok(&set("/filter/domain", long(MAX_FILTER_ID_LEN)));
    ok(&set("/filter/thingType", long(MAX_FILTER_ID_LEN)));
    ok(&set("/filter/thingNames", json!([])));
    ok(&set(
        "/filter/thingNames",
        json!(vec!["t"; MAX_THING_NAMES]),
    ));
    ok(&set("/expression/resource", long(MAX_RESOURCE_LEN)));
    let action = spec_example()["actions"][0].clone();
    ok(&set("/actions", json!(vec![action; MAX_ACTIONS])));
    let url = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
    assert_eq!(url.len(), MAX_URL_LEN);
    ok(&set("/actions/0/config/url", json!(url)));
    let rule = ok(&set(
        "/threshold",
        json!({ "count": MAX_THRESHOLD_COUNT, "interval": MAX_THRESHOLD_INTERVAL }),
    ));
    assert_eq!(
        rule.threshold,
        Some(Threshold {
            count: Some(MAX_THRESHOLD_COUNT),
            interval: Some(MAX_THRESHOLD_INTERVAL)
        })
    );
    let rule = ok(&set(
        "/threshold",
        json!({ "count": 5.0, "interval": -0.0 }),
    ));
    assert_eq!(
        rule.threshold,
        Some(Threshold {
            count: Some(5),
            interval: Some(0)
        })
    );
}

// ---- failures, one table per part of the rule --------------------------------------------

#[test]
fn attributes_must_be_an_object() {
    let cases: Vec<Case> = [json!(null), json!([]), json!("x"), json!(1), json!(true)]
        .into_iter()
        .map(|v| ("not an object", v, InvalidArguments, "attributes"))
        .collect();
    check(ValidateMode::Create, cases.clone());
    check(ValidateMode::Update, cases);
}

#[test]
fn id_failures() {
    check(
        ValidateMode::Update,
        vec![
            ("update without id", spec_example(), PropertyRequired, "id"),
            (
                "update with null id",
                set("/id", Value::Null),
                PropertyRequired,
                "id",
            ),
            (
                "update with empty id",
                set("/id", json!("")),
                PropertyNotInRange,
                "id",
            ),
        ],
    );
    check(
        ValidateMode::Create,
        vec![
            ("number", set("/id", json!(5)), InvalidArguments, "id"),
            ("boolean", set("/id", json!(true)), InvalidArguments, "id"),
            ("object", set("/id", json!({})), InvalidArguments, "id"),
            ("empty", set("/id", json!("")), PropertyNotInRange, "id"),
            (
                "too long",
                set("/id", long(MAX_ID_LEN + 1)),
                PropertyNotInRange,
                "id",
            ),
            ("space", set("/id", json!("a b")), InvalidArguments, "id"),
            ("slash", set("/id", json!("a/b")), InvalidArguments, "id"),
            (
                "non-ascii",
                set("/id", json!("régle")),
                InvalidArguments,
                "id",
            ),
            (
                "template",
                set("/id", json!("${x}")),
                InvalidArguments,
                "id",
            ),
        ],
    );
    let e = err(&set("/id", json!("")), ValidateMode::Create);
    assert_eq!(
        e.params,
        params(json!({ "minLength": 1, "maxLength": 128 }))
    );
    let e = err(&spec_example(), ValidateMode::Update);
    assert_eq!(e.message, "id is required");
}

#[test]
fn name_description_enabled_failures() {
    check(
        ValidateMode::Create,
        vec![
            ("no name", unset("/name"), PropertyRequired, "name"),
            (
                "null name",
                set("/name", Value::Null),
                PropertyRequired,
                "name",
            ),
            (
                "numeric name",
                set("/name", json!(5)),
                InvalidArguments,
                "name",
            ),
            (
                "array name",
                set("/name", json!(["n"])),
                InvalidArguments,
                "name",
            ),
            (
                "empty name",
                set("/name", json!("")),
                PropertyNotInRange,
                "name",
            ),
            (
                "blank name",
                set("/name", json!(" \t\n")),
                PropertyNotInRange,
                "name",
            ),
            (
                "long name",
                set("/name", long(MAX_NAME_LEN + 1)),
                PropertyNotInRange,
                "name",
            ),
            (
                "numeric description",
                set("/description", json!(5)),
                InvalidArguments,
                "description",
            ),
            (
                "object description",
                set("/description", json!({})),
                InvalidArguments,
                "description",
            ),
            (
                "long description",
                set("/description", long(MAX_DESCRIPTION_LEN + 1)),
                PropertyNotInRange,
                "description",
            ),
            ("no enabled", unset("/enabled"), PropertyRequired, "enabled"),
            (
                "null enabled",
                set("/enabled", Value::Null),
                PropertyRequired,
                "enabled",
            ),
            (
                "string enabled",
                set("/enabled", json!("true")),
                InvalidArguments,
                "enabled",
            ),
            (
                "numeric enabled",
                set("/enabled", json!(1)),
                InvalidArguments,
                "enabled",
            ),
        ],
    );
    let e = err(&unset("/name"), ValidateMode::Create);
    assert_eq!(e.message, "name is required");
    let e = err(&set("/description", long(4097)), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "maxLength": 4096 })));
    let e = err(&set("/name", long(257)), ValidateMode::Create);
    assert_eq!(
        e.params,
        params(json!({ "minLength": 1, "maxLength": 256 }))
    );
}

#[test]
fn filter_failures() {
    let too_many = json!(vec!["t"; MAX_THING_NAMES + 1]);
    check(
        ValidateMode::Create,
        vec![
            ("no filter", unset("/filter"), PropertyRequired, "filter"),
            (
                "null filter",
                set("/filter", Value::Null),
                PropertyRequired,
                "filter",
            ),
            (
                "string filter",
                set("/filter", json!("root")),
                InvalidArguments,
                "filter",
            ),
            (
                "array filter",
                set("/filter", json!([])),
                InvalidArguments,
                "filter",
            ),
            (
                "no domain",
                unset("/filter/domain"),
                PropertyRequired,
                "filter.domain",
            ),
            (
                "null domain",
                set("/filter/domain", Value::Null),
                PropertyRequired,
                "filter.domain",
            ),
            (
                "numeric domain",
                set("/filter/domain", json!(7)),
                InvalidArguments,
                "filter.domain",
            ),
            (
                "empty domain",
                set("/filter/domain", json!("")),
                PropertyNotInRange,
                "filter.domain",
            ),
            (
                "long domain",
                set("/filter/domain", long(129)),
                PropertyNotInRange,
                "filter.domain",
            ),
            (
                "no thingType",
                unset("/filter/thingType"),
                PropertyRequired,
                "filter.thingType",
            ),
            (
                "null thingType",
                set("/filter/thingType", Value::Null),
                PropertyRequired,
                "filter.thingType",
            ),
            (
                "empty thingType",
                set("/filter/thingType", json!("")),
                PropertyNotInRange,
                "filter.thingType",
            ),
            (
                "long thingType",
                set("/filter/thingType", long(129)),
                PropertyNotInRange,
                "filter.thingType",
            ),
            (
                "fractional thingType",
                set("/filter/thingType", json!(1.5)),
                InvalidArguments,
                "filter.thingType",
            ),
            (
                "float thingType",
                set("/filter/thingType", json!(1.0)),
                InvalidArguments,
                "filter.thingType",
            ),
            (
                "boolean thingType",
                set("/filter/thingType", json!(true)),
                InvalidArguments,
                "filter.thingType",
            ),
            (
                "array thingType",
                set("/filter/thingType", json!(["Pump"])),
                InvalidArguments,
                "filter.thingType",
            ),
            (
                "object thingType",
                set("/filter/thingType", json!({})),
                InvalidArguments,
                "filter.thingType",
            ),
            (
                "string thingNames",
                set("/filter/thingNames", json!("thing-001")),
                InvalidArguments,
                "filter.thingNames",
            ),
            (
                "object thingNames",
                set("/filter/thingNames", json!({})),
                InvalidArguments,
                "filter.thingNames",
            ),
            (
                "numeric thing name",
                set("/filter/thingNames", json!([1])),
                InvalidArguments,
                "filter.thingNames[0]",
            ),
            (
                "null thing name",
                set("/filter/thingNames", json!(["a", null])),
                InvalidArguments,
                "filter.thingNames[1]",
            ),
            (
                "empty thing name",
                set("/filter/thingNames", json!(["a", "b", "c", ""])),
                PropertyNotInRange,
                "filter.thingNames[3]",
            ),
            (
                "long thing name",
                set("/filter/thingNames", json!([long(129)])),
                PropertyNotInRange,
                "filter.thingNames[0]",
            ),
            (
                "too many thing names",
                set("/filter/thingNames", too_many.clone()),
                PropertyNotInRange,
                "filter.thingNames",
            ),
        ],
    );
    let e = err(&unset("/filter/thingType"), ValidateMode::Create);
    assert_eq!(e.message, "filter.thingType is required");
    let e = err(&set("/filter/thingNames", too_many), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 0, "max": 10000 })));
    let e = err(&set("/filter/domain", json!("")), ValidateMode::Create);
    assert_eq!(
        e.params,
        params(json!({ "minLength": 1, "maxLength": 128 }))
    );
}

#[test]
fn expression_failures() {
    let with_value = |op: &str, value: Value| {
        let mut input = set("/expression/operator", json!(op));
        input["expression"]["value"] = value;
        input
    };
    check(
        ValidateMode::Create,
        vec![
            (
                "no expression",
                unset("/expression"),
                PropertyRequired,
                "expression",
            ),
            (
                "null expression",
                set("/expression", Value::Null),
                PropertyRequired,
                "expression",
            ),
            (
                "numeric expression",
                set("/expression", json!(5)),
                InvalidArguments,
                "expression",
            ),
            (
                "no operator",
                unset("/expression/operator"),
                PropertyRequired,
                "expression.operator",
            ),
            (
                "null operator",
                set("/expression/operator", Value::Null),
                PropertyRequired,
                "expression.operator",
            ),
            (
                "upper-case operator",
                set("/expression/operator", json!("GT")),
                InvalidArguments,
                "expression.operator",
            ),
            (
                "symbol operator",
                set("/expression/operator", json!(">")),
                InvalidArguments,
                "expression.operator",
            ),
            (
                "numeric operator",
                set("/expression/operator", json!(1)),
                InvalidArguments,
                "expression.operator",
            ),
            (
                "no resource",
                unset("/expression/resource"),
                PropertyRequired,
                "expression.resource",
            ),
            (
                "null resource",
                set("/expression/resource", Value::Null),
                PropertyRequired,
                "expression.resource",
            ),
            (
                "numeric resource",
                set("/expression/resource", json!(5)),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "empty resource",
                set("/expression/resource", json!("")),
                PropertyNotInRange,
                "expression.resource",
            ),
            (
                "long resource",
                set("/expression/resource", long(257)),
                PropertyNotInRange,
                "expression.resource",
            ),
            (
                "double dot",
                set("/expression/resource", json!("a..b")),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "leading dot",
                set("/expression/resource", json!(".a")),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "trailing dot",
                set("/expression/resource", json!("a.")),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "only a dot",
                set("/expression/resource", json!(".")),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "two dots",
                set("/expression/resource", json!("a.b.c")),
                InvalidArguments,
                "expression.resource",
            ),
            (
                "no value",
                unset("/expression/value"),
                PropertyRequired,
                "expression.value",
            ),
            (
                "null value",
                set("/expression/value", Value::Null),
                PropertyRequired,
                "expression.value",
            ),
            (
                "object value",
                set("/expression/value", json!({ "a": 1 })),
                InvalidArguments,
                "expression.value",
            ),
            (
                "array value",
                set("/expression/value", json!([50])),
                InvalidArguments,
                "expression.value",
            ),
            (
                "eq object value",
                with_value("eq", json!({})),
                InvalidArguments,
                "expression.value",
            ),
            (
                "gt word",
                with_value("gt", json!("hot")),
                InvalidArguments,
                "expression.value",
            ),
            (
                "gte boolean",
                with_value("gte", json!(true)),
                InvalidArguments,
                "expression.value",
            ),
            (
                "lt NaN",
                with_value("lt", json!("NaN")),
                InvalidArguments,
                "expression.value",
            ),
            (
                "lte inf",
                with_value("lte", json!("inf")),
                InvalidArguments,
                "expression.value",
            ),
            (
                "gt overflow",
                with_value("gt", json!("1e999")),
                InvalidArguments,
                "expression.value",
            ),
            (
                "gt empty",
                with_value("gt", json!("")),
                InvalidArguments,
                "expression.value",
            ),
            (
                "gt blank",
                with_value("gt", json!("  ")),
                InvalidArguments,
                "expression.value",
            ),
        ],
    );
    let e = err(
        &set("/expression/operator", json!("GT")),
        ValidateMode::Create,
    );
    assert_eq!(
        e.params,
        params(json!({ "allowed": ["gt", "gte", "lt", "lte", "eq", "ne"] }))
    );
    let e = err(&with_value("gt", json!("hot")), ValidateMode::Create);
    assert!(
        e.message.starts_with("operator gt compares numbers"),
        "{}",
        e.message
    );
    assert_eq!(e.params, params(json!({ "operator": "gt" })));
}

#[test]
fn action_failures() {
    let action = spec_example()["actions"][0].clone();
    let eleven = json!(vec![action.clone(); MAX_ACTIONS + 1]);
    let url = |u: &str| set("/actions/0/config/url", json!(u));
    let second_bad = json!([action.clone(), { "type": "WEBHOOK", "config": { "url": "nope" } }]);
    check(
        ValidateMode::Create,
        vec![
            ("no actions", unset("/actions"), PropertyRequired, "actions"),
            (
                "null actions",
                set("/actions", Value::Null),
                PropertyRequired,
                "actions",
            ),
            (
                "object actions",
                set("/actions", json!({})),
                InvalidArguments,
                "actions",
            ),
            (
                "empty actions",
                set("/actions", json!([])),
                PropertyNotInRange,
                "actions",
            ),
            (
                "eleven actions",
                set("/actions", eleven.clone()),
                PropertyNotInRange,
                "actions",
            ),
            (
                "numeric action",
                set("/actions", json!([5])),
                InvalidArguments,
                "actions[0]",
            ),
            (
                "null action",
                set("/actions", json!([null])),
                InvalidArguments,
                "actions[0]",
            ),
            (
                "no type",
                unset("/actions/0/type"),
                PropertyRequired,
                "actions[0].type",
            ),
            (
                "null type",
                set("/actions/0/type", Value::Null),
                PropertyRequired,
                "actions[0].type",
            ),
            (
                "lower-case type",
                set("/actions/0/type", json!("webhook")),
                InvalidArguments,
                "actions[0].type",
            ),
            (
                "unknown type",
                set("/actions/0/type", json!("EMAIL")),
                InvalidArguments,
                "actions[0].type",
            ),
            (
                "numeric type",
                set("/actions/0/type", json!(1)),
                InvalidArguments,
                "actions[0].type",
            ),
            (
                "no config",
                unset("/actions/0/config"),
                PropertyRequired,
                "actions[0].config",
            ),
            (
                "null config",
                set("/actions/0/config", Value::Null),
                PropertyRequired,
                "actions[0].config",
            ),
            (
                "string config",
                set("/actions/0/config", json!("x")),
                InvalidArguments,
                "actions[0].config",
            ),
            (
                "array config",
                set("/actions/0/config", json!([])),
                InvalidArguments,
                "actions[0].config",
            ),
            (
                "no url",
                unset("/actions/0/config/url"),
                PropertyRequired,
                "actions[0].config.url",
            ),
            (
                "null url",
                set("/actions/0/config/url", Value::Null),
                PropertyRequired,
                "actions[0].config.url",
            ),
            (
                "numeric url",
                set("/actions/0/config/url", json!(5)),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "empty url",
                url(""),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "no scheme",
                url("example.com/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "relative url",
                url("/hooks"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "ftp url",
                url("ftp://example.com/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "mailto url",
                url("mailto:a@example.com"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "file url",
                url("file:///etc/passwd"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "no host",
                url("https://"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "too long",
                url(&format!("https://example.com/{}", "a".repeat(2048))),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template host",
                url("https://${host}/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template url",
                url("${url}"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template scheme",
                url("${scheme}://example.com/"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template after host",
                url("https://example.com${path}"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template port",
                url("https://example.com:${port}/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template in host",
                url("https://api.${d}.com/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template user",
                url("https://${u}@example.com/x"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template ftp",
                url("ftp://example.com/${x}"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "template no host",
                url("https:///${x}"),
                InvalidArguments,
                "actions[0].config.url",
            ),
            (
                "bad second url",
                set("/actions", second_bad),
                InvalidArguments,
                "actions[1].config.url",
            ),
            (
                "unknown method",
                set("/actions/0/config/method", json!("FETCH")),
                InvalidArguments,
                "actions[0].config.method",
            ),
            (
                "numeric method",
                set("/actions/0/config/method", json!(1)),
                InvalidArguments,
                "actions[0].config.method",
            ),
            (
                "array headers",
                set("/actions/0/config/headers", json!([])),
                InvalidArguments,
                "actions[0].config.headers",
            ),
            (
                "string headers",
                set("/actions/0/config/headers", json!("x")),
                InvalidArguments,
                "actions[0].config.headers",
            ),
            (
                "numeric header",
                set("/actions/0/config/headers", json!({ "X-Count": 5 })),
                InvalidArguments,
                "actions[0].config.headers.X-Count",
            ),
            (
                "null header",
                set("/actions/0/config/headers", json!({ "X-A": null })),
                InvalidArguments,
                "actions[0].config.headers.X-A",
            ),
            (
                "bad header name",
                set("/actions/0/config/headers", json!({ "bad name": "x" })),
                InvalidArguments,
                "actions[0].config.headers.bad name",
            ),
            (
                "empty header name",
                set("/actions/0/config/headers", json!({ "": "x" })),
                InvalidArguments,
                "actions[0].config.headers.",
            ),
            (
                "header injection",
                set("/actions/0/config/headers", json!({ "X-A": "a\r\nX-B: b" })),
                InvalidArguments,
                "actions[0].config.headers.X-A",
            ),
        ],
    );
    let e = err(&set("/actions", json!([])), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 1, "max": 10 })));
    let e = err(&set("/actions", eleven), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 1, "max": 10 })));
    let e = err(
        &set("/actions/0/type", json!("EMAIL")),
        ValidateMode::Create,
    );
    assert_eq!(e.params, params(json!({ "allowed": ["WEBHOOK"] })));
    let e = err(
        &set("/actions/0/config/method", json!("FETCH")),
        ValidateMode::Create,
    );
    assert_eq!(
        e.params,
        params(json!({ "allowed": ["GET", "POST", "PUT", "PATCH", "DELETE"] }))
    );
    let e = err(&url("https://${host}/x"), ValidateMode::Create);
    assert!(
        e.message.starts_with("actions[0].config.url "),
        "{}",
        e.message
    );
}

#[test]
fn threshold_failures() {
    let t = |count: Value, interval: Value| {
        set(
            "/threshold",
            json!({ "count": count, "interval": interval }),
        )
    };
    check(
        ValidateMode::Create,
        vec![
            (
                "numeric threshold",
                set("/threshold", json!(5)),
                InvalidArguments,
                "threshold",
            ),
            (
                "array threshold",
                set("/threshold", json!([])),
                InvalidArguments,
                "threshold",
            ),
            (
                "string threshold",
                set("/threshold", json!("x")),
                InvalidArguments,
                "threshold",
            ),
            (
                "string count",
                t(json!("5"), json!(0)),
                PropertyNotANumber,
                "threshold.count",
            ),
            (
                "boolean count",
                t(json!(true), json!(0)),
                PropertyNotANumber,
                "threshold.count",
            ),
            (
                "object count",
                t(json!({}), json!(0)),
                PropertyNotANumber,
                "threshold.count",
            ),
            (
                "negative count",
                t(json!(-1), json!(0)),
                PropertyNotInRange,
                "threshold.count",
            ),
            (
                "fractional count",
                t(json!(1.5), json!(0)),
                PropertyNotInRange,
                "threshold.count",
            ),
            (
                "negative float count",
                t(json!(-2.0), json!(0)),
                PropertyNotInRange,
                "threshold.count",
            ),
            (
                "count too large",
                t(json!(1_000_001), json!(0)),
                PropertyNotInRange,
                "threshold.count",
            ),
            (
                "huge float count",
                t(json!(1e300), json!(0)),
                PropertyNotInRange,
                "threshold.count",
            ),
            (
                "string interval",
                t(json!(0), json!("1000")),
                PropertyNotANumber,
                "threshold.interval",
            ),
            (
                "array interval",
                t(json!(0), json!([1])),
                PropertyNotANumber,
                "threshold.interval",
            ),
            (
                "negative interval",
                t(json!(0), json!(-1)),
                PropertyNotInRange,
                "threshold.interval",
            ),
            (
                "fractional interval",
                t(json!(0), json!(-0.5)),
                PropertyNotInRange,
                "threshold.interval",
            ),
            (
                "interval too large",
                t(json!(0), json!(31_536_000_001_u64)),
                PropertyNotInRange,
                "threshold.interval",
            ),
            (
                "interval u64::MAX",
                t(json!(0), json!(u64::MAX)),
                PropertyNotInRange,
                "threshold.interval",
            ),
        ],
    );
    let e = err(&t(json!(-1), json!(0)), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 0 })));
    let e = err(&t(json!(1.5), json!(0)), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 0 })));
    let e = err(&t(json!(1_000_001), json!(0)), ValidateMode::Create);
    assert_eq!(e.params, params(json!({ "min": 0, "max": 1_000_000 })));
    let e = err(
        &t(json!(0), json!(31_536_000_001_u64)),
        ValidateMode::Create,
    );
    assert_eq!(
        e.params,
        params(json!({ "min": 0, "max": 31_536_000_000_u64 }))
    );
    let e = err(&t(json!("5"), json!(0)), ValidateMode::Create);
    assert_eq!(e.message, "threshold.count must be a number");
    assert_eq!(e.params, None);
}

#[test]
fn first_failure_in_documented_order_wins() {
    let everything_wrong = json!({
        "id": 5, "name": 5, "description": 5, "enabled": "yes",
        "filter": { "domain": 5, "thingType": true, "thingNames": 5 },
        "expression": { "operator": "~", "resource": "", "value": [] },
        "actions": [{ "type": "EMAIL" }, { "config": {} }],
        "threshold": { "count": "x" }
    });
    let mut input = everything_wrong;
    let order = [
        ("/id", "id"),
        ("/name", "name"),
        ("/description", "description"),
        ("/enabled", "enabled"),
        ("/filter/domain", "filter.domain"),
        ("/filter/thingType", "filter.thingType"),
        ("/filter/thingNames", "filter.thingNames"),
        ("/expression/operator", "expression.operator"),
        ("/expression/resource", "expression.resource"),
        ("/expression/value", "expression.value"),
        ("/actions/0/type", "actions[0].type"),
        ("/actions/0/config", "actions[0].config"),
        ("/actions/1/type", "actions[1].type"),
        ("/actions/1/config/url", "actions[1].config.url"),
        ("/threshold/count", "threshold.count"),
    ];
    let example = spec_example();
    let good = |pointer: &str| -> Value {
        match pointer {
            "/id" => json!("rule-1"),
            "/actions/0/type" | "/actions/1/type" => json!("WEBHOOK"),
            "/actions/0/config" => example["actions"][0]["config"].clone(),
            "/actions/1/config/url" => json!("https://example.com/"),
            other => example.pointer(other).cloned().expect("in example"),
        }
    };
    for (pointer, property) in order {
        let e = err(&input, ValidateMode::Update);
        assert_eq!(e.property, property, "{e:?}");
        // Fix this property, so the next one in order is reported.
        let (parent, key) = pointer.rsplit_once('/').expect("slash");
        input
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("object")
            .insert(key.to_owned(), good(pointer));
    }
    validate_rule(&input, ValidateMode::Update).expect("all fixed");
}

#[test]
fn missing_required_properties_in_spec_order() {
    let mut input = json!({});
    let order = ["name", "enabled", "filter", "expression", "actions"];
    let example = spec_example();
    for key in order {
        let e = err(&input, ValidateMode::Create);
        assert_eq!((e.key, e.property.as_str()), (PropertyRequired, key));
        input[key] = example[key].clone();
    }
    ok(&input);
}

#[test]
fn invalid_serializes_as_the_spec_error_object() {
    let e = err(&set("/actions", json!([])), ValidateMode::Create);
    assert_eq!(
        e.to_json(),
        json!({
            "message": "actions must have 1 to 10 entries",
            "messageKey": "PROPERTY_NOT_IN_RANGE",
            "messageParams": { "min": 1, "max": 10 },
            "property": "actions"
        })
    );
    assert_eq!(e.to_string(), "actions must have 1 to 10 entries");
    let e = err(&unset("/name"), ValidateMode::Create);
    assert_eq!(
        e.to_json(),
        json!({
            "message": "name is required",
            "messageKey": "PROPERTY_REQUIRED",
            "property": "name"
        })
    );
}

#[test]
fn numeric_value_reads_numbers_and_numeric_strings() {
    assert_eq!(numeric_value(&json!(50)), Some(50.0));
    assert_eq!(numeric_value(&json!(-1.5)), Some(-1.5));
    assert_eq!(numeric_value(&json!("50")), Some(50.0));
    assert_eq!(numeric_value(&json!(" 2.5e1 ")), Some(25.0));
    for not_a_number in [
        json!("hot"),
        json!(""),
        json!("NaN"),
        json!("inf"),
        json!("-Infinity"),
        json!("1e999"),
        json!("0x10"),
        json!(true),
        json!(null),
        json!([1]),
        json!({}),
    ] {
        assert_eq!(numeric_value(&not_a_number), None, "{not_a_number}");
    }
}

// ---- properties --------------------------------------------------------------------------

/// Keys the validator looks at, so that random objects sometimes hit them.
const KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "enabled",
    "filter",
    "domain",
    "thingType",
    "thingNames",
    "expression",
    "operator",
    "resource",
    "value",
    "actions",
    "type",
    "config",
    "url",
    "method",
    "headers",
    "body",
    "threshold",
    "count",
    "interval",
    "readonly",
];

/// Strings the validator treats specially.
const STRINGS: &[&str] = &[
    "",
    " ",
    "gt",
    "eq",
    "WEBHOOK",
    "root",
    "temp",
    "pump.temp",
    "a..b",
    "50",
    "NaN",
    "https://example.com/${x}",
    "https://${x}/",
    "${",
    "http://",
    "POST",
    "é",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        ".{0,24}".prop_map(Value::String),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            prop::sample::select(KEYS).prop_map(str::to_owned),
            "[a-zA-Z]{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// JSON pointers into the spec example, for replacing one property at a time.
const POINTERS: &[&str] = &[
    "/id",
    "/name",
    "/description",
    "/enabled",
    "/filter",
    "/filter/domain",
    "/filter/thingType",
    "/filter/thingNames",
    "/expression",
    "/expression/operator",
    "/expression/resource",
    "/expression/value",
    "/actions",
    "/actions/0",
    "/actions/0/type",
    "/actions/0/config",
    "/actions/0/config/url",
    "/actions/0/config/method",
    "/actions/0/config/headers",
    "/threshold",
    "/threshold/count",
    "/threshold/interval",
];

/// A rule's number comes back from the store as the same `f64`, for any `f64` (serde_json's
/// `float_roundtrip`: without it, about one value in ten came back one ulp off).
#[test]
fn expression_values_survive_the_store_bit_for_bit() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let value = f64::from_bits(x >> 2);
        if !value.is_finite() {
            continue;
        }
        let rule = ok(&set("/expression/value", json!(value)));
        let stored = serde_json::to_string(&rule).expect("serializes");
        let read: Rule = serde_json::from_str(&stored).expect("reads back");
        assert_eq!(read, rule, "{value:e} stored as {stored}");
    }
}

/// A valid rule, serialized and validated again, is the same rule.
fn assert_round_trips(rule: &Rule) {
    let mut json = serde_json::to_value(rule).expect("serializes");
    let mode = if rule.id.is_empty() {
        json.as_object_mut().expect("object").remove("id");
        ValidateMode::Create
    } else {
        ValidateMode::Update
    };
    assert_eq!(validate_rule(&json, mode).as_ref(), Ok(rule));
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_json(value in arb_json()) {
        for mode in [ValidateMode::Create, ValidateMode::Update] {
            match validate_rule(&value, mode) {
                Ok(rule) => assert_round_trips(&rule),
                Err(e) => prop_assert!(!e.message.is_empty() && !e.property.is_empty()),
            }
        }
    }

    #[test]
    fn never_panics_with_one_property_replaced(
        pointer in prop::sample::select(POINTERS),
        value in arb_json(),
    ) {
        let input = set(pointer, value);
        for mode in [ValidateMode::Create, ValidateMode::Update] {
            match validate_rule(&input, mode) {
                Ok(rule) => assert_round_trips(&rule),
                Err(e) => prop_assert!(!e.message.is_empty() && !e.property.is_empty()),
            }
        }
    }
}
