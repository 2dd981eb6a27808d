//! The rule payload of spec 6.1 and the `${...}` substitution into action configs.
//!
//! Payload, thing resource:
//! `{"resource":{"name","path","value"},"timestamp","rule":{"id","name"},
//!   "thing":{"thingName","thingType","domain","state"}}` with `path` = `name` and `state` the
//! thing's `state.reported`.
//! Payload, sub thing resource: the same, with `resource.path` = `<subId>.<name>` and
//! `resource.parent` = `{"id": <subId>, "state": <the sub thing's object>}`.
//!
//! Filling (DESIGN.md Semantics: Templates): every string value in a config, through nested
//! objects and arrays, has each `${a.b.c}` replaced by the payload value at that path (array
//! elements by index: `${thing.state.list.0}`). A string that is exactly one `${...}` becomes
//! the value itself, with its JSON type (a number stays a number, an object an object). Inside
//! a longer string a value is rendered as text: strings as they are, other values as compact
//! JSON. Unknown paths become `""` and are counted. An unterminated `${` is kept as text. Object
//! keys are not templates. Values are inserted as `Value`s, never by pasting text into JSON.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::rule::ThingType;

/// `resource.parent` of a sub thing payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParentPayload {
    pub id: String,
    pub state: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourcePayload {
    pub name: String,
    pub path: String,
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentPayload>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RulePayload {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingPayload {
    pub thing_name: String,
    /// The rule's `filter.thingType`, which the thing's type equals, in the JSON type the
    /// rule gave it (a platform id stays a number).
    pub thing_type: ThingType,
    pub domain: String,
    pub state: Value,
}

/// The payload of spec 6.1: what `${...}` paths read and what a webhook sends by default.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payload {
    pub resource: ResourcePayload,
    /// The observation's own `timestamp`, else its receive time (ms since epoch).
    pub timestamp: u64,
    pub rule: RulePayload,
    pub thing: ThingPayload,
}

impl Payload {
    pub fn to_value(&self) -> Value {
        // The payload holds only strings, numbers and `Value`s, which always serialize.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Fills every string of `config` from `payload`; returns the filled config and how many
/// `${...}` paths were unknown. The top-level `url` is filled with [`fill_url`].
pub fn fill_config(config: &Map<String, Value>, payload: &Value) -> (Map<String, Value>, u32) {
    let mut unknown = 0;
    let filled = config
        .iter()
        .map(|(k, v)| {
            let filled = match (k.as_str(), v) {
                ("url", Value::String(s)) => Value::String(fill_url(s, payload, &mut unknown)),
                _ => fill(v, payload, &mut unknown),
            };
            (k.clone(), filled)
        })
        .collect();
    (filled, unknown)
}

/// Fills a URL template. Each filled value is percent-encoded as JavaScript's
/// `encodeURIComponent` does (what the README promises), so a thing named `a?x=1` or `a/b`
/// stays one path segment instead of rewriting the path or the query. A value that is `.` or
/// `..` would still be read as a dot segment (URL parsers treat `%2e` as `.`) and could climb
/// out of the literal path: such a URL is filled as `""`, which the dispatcher refuses as a
/// missing url (counted, logged).
pub fn fill_url(s: &str, payload: &Value, unknown: &mut u32) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = &rest[start + 2..start + 2 + len];
        let text = match lookup(payload, path) {
            Some(Value::String(v)) => v.clone(),
            Some(v) => v.to_string(),
            None => {
                *unknown += 1;
                String::new()
            }
        };
        if text == "." || text == ".." {
            return String::new();
        }
        percent_encode_into(&text, &mut out);
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    out
}

/// What JavaScript's `encodeURIComponent` leaves as it is: letters, digits and `-_.!~*'()`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn percent_encode_into(text: &str, out: &mut String) {
    out.extend(utf8_percent_encode(text, URI_COMPONENT));
}

/// Fills every string in `template` (recursively) from `payload`; counts unknown paths.
pub fn fill(template: &Value, payload: &Value, unknown: &mut u32) -> Value {
    match template {
        Value::String(s) => fill_str(s, payload, unknown),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| fill(v, payload, unknown)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, payload, unknown)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Fills one string. Exactly one `${path}` keeps the value's type; anything else is text.
pub fn fill_str(s: &str, payload: &Value, unknown: &mut u32) -> Value {
    if !s.contains("${") {
        return Value::String(s.to_owned());
    }
    if let Some(path) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !path.contains('}') {
            return match lookup(payload, path) {
                Some(v) => v.clone(),
                None => {
                    *unknown += 1;
                    Value::String(String::new())
                }
            };
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = &rest[start + 2..start + 2 + len];
        match lookup(payload, path) {
            Some(Value::String(v)) => out.push_str(v),
            Some(v) => out.push_str(&v.to_string()),
            None => *unknown += 1,
        }
        rest = &rest[start + 2 + len + 1..];
    }
    out.push_str(rest);
    Value::String(out)
}

/// The value at a dotted path (`thing.state.temp`; array elements by index). Surrounding
/// whitespace in the path is ignored; an empty path or segment is unknown.
pub fn lookup<'p>(payload: &'p Value, path: &str) -> Option<&'p Value> {
    let path = path.trim();
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(payload, |v, seg| match v {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn payload() -> Value {
        json!({
            "resource": {"name": "temp", "path": "sub1.temp", "value": 50,
                         "parent": {"id": "sub1", "state": {"temp": 50, "type": "pump"}}},
            "timestamp": 1464081794634u64,
            "rule": {"id": "rule-001", "name": "Test rule"},
            "thing": {"thingName": "thing-001", "thingType": "Pump", "domain": "root",
                      "state": {"temp": 50, "list": [1, "two"], "sub1": {"temp": 50, "type": "pump"}}}
        })
    }

    fn f(s: &str) -> (Value, u32) {
        let mut unknown = 0;
        let v = fill_str(s, &payload(), &mut unknown);
        (v, unknown)
    }

    #[test]
    fn spec_example() {
        assert_eq!(
            f("Rule triggered for thing: ${thing.thingName}"),
            (json!("Rule triggered for thing: thing-001"), 0)
        );
    }

    #[test]
    fn a_lone_variable_keeps_its_type() {
        assert_eq!(f("${resource.value}"), (json!(50), 0));
        assert_eq!(f("${timestamp}"), (json!(1464081794634u64), 0));
        assert_eq!(
            f("${resource.parent.state}"),
            (json!({"temp": 50, "type": "pump"}), 0)
        );
        assert_eq!(f("${ rule.id }"), (json!("rule-001"), 0));
        assert_eq!(f("${thing.state.list.1}"), (json!("two"), 0));
    }

    #[test]
    fn inside_text_values_render_as_text() {
        assert_eq!(
            f("${thing.thingName}: ${resource.path}=${resource.value} ${thing.state.list}"),
            (json!("thing-001: sub1.temp=50 [1,\"two\"]"), 0)
        );
    }

    #[test]
    fn unknown_paths_become_empty_and_are_counted() {
        assert_eq!(f("${nope}"), (json!(""), 1));
        assert_eq!(f("${}"), (json!(""), 1));
        assert_eq!(f("a${x.y}b${thing.nope}c"), (json!("abc"), 2));
        assert_eq!(f("${thing.state.list.9}"), (json!(""), 1));
        assert_eq!(f("${timestamp.x}"), (json!(""), 1));
    }

    #[test]
    fn odd_braces_stay_text() {
        assert_eq!(f("${thing.thingName"), (json!("${thing.thingName"), 0));
        assert_eq!(f("a ${rule.id} ${open"), (json!("a rule-001 ${open"), 0));
        assert_eq!(f("${rule.id}}"), (json!("rule-001}"), 0));
        assert_eq!(f("$${rule.id}"), (json!("$rule-001"), 0));
        assert_eq!(f("${a}${rule.id}"), (json!("rule-001"), 1));
    }

    #[test]
    fn configs_fill_recursively_and_keep_non_strings() {
        let config = json!({
            "url": "https://example.com/${thing.thingName}",
            "method": "POST",
            "headers": {"X-Rule": "${rule.id}"},
            "body": {"value": "${resource.value}", "list": ["${thing.domain}", 3, true, null]},
            "${rule.id}": "keys are not templates"
        });
        let (filled, unknown) = fill_config(config.as_object().unwrap(), &payload());
        assert_eq!(unknown, 0);
        assert_eq!(
            Value::Object(filled),
            json!({
                "url": "https://example.com/thing-001",
                "method": "POST",
                "headers": {"X-Rule": "rule-001"},
                "body": {"value": 50, "list": ["root", 3, true, null]},
                "${rule.id}": "keys are not templates"
            })
        );
    }

    #[test]
    fn payloads_match_the_spec_shape() {
        let thing = Payload {
            resource: ResourcePayload {
                name: "temp".into(),
                path: "temp".into(),
                value: json!(50),
                parent: None,
            },
            timestamp: 1464081794634,
            rule: RulePayload {
                id: "rule-001".into(),
                name: "Test rule".into(),
            },
            thing: ThingPayload {
                thing_name: "thing-001".into(),
                thing_type: "Pump".into(),
                domain: "root".into(),
                state: json!({"temp": 50}),
            },
        };
        let expected: Value = serde_json::from_str(include_str!(
            "../../fixtures/webhook/expected-payload-thing.json"
        ))
        .unwrap();
        assert_eq!(thing.to_value(), expected);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".*".prop_map(Value::String),
            "[a-z$.{} ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn url_values_are_encoded_as_encode_uri_component() {
        // Every printable ASCII character and two multi-byte ones; the expected text is what
        // `encodeURIComponent` returns in node.
        let name = " !\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~é€";
        let payload = serde_json::json!({"thing": {"thingName": name}});
        let mut unknown = 0;
        assert_eq!(
            fill_url("http://h/${thing.thingName}", &payload, &mut unknown),
            "http://h/%20!%22%23%24%25%26'()*%2B%2C-.%2F09%3A%3B%3C%3D%3E%3F%40AZ%5B%5C%5D%5E_%60az%7B%7C%7D~%C3%A9%E2%82%AC"
        );
        assert_eq!(unknown, 0);
    }

    proptest! {
        #[test]
        fn url_filling_keeps_values_inside_one_segment(name in ".*") {
            let payload = serde_json::json!({"thing": {"thingName": name.clone()}});
            let mut unknown = 0;
            let url = fill_url("http://h/hook/${thing.thingName}/end", &payload, &mut unknown);
            if name == "." || name == ".." {
                prop_assert_eq!(url, "");
            } else {
                let tail = url.strip_prefix("http://h/hook/").unwrap_or_default();
                let segment = tail.strip_suffix("/end").unwrap_or_default();
                prop_assert!(!segment.contains(['/', '?', '#']), "{}", url);
            }
        }

        #[test]
        fn filling_never_panics(template in json_value(), s in ".*", t in "[$]?[{]?[a-z.$}{ ]{0,20}") {
            let mut unknown = 0;
            let _ = fill(&template, &payload(), &mut unknown);
            let _ = fill_str(&s, &payload(), &mut unknown);
            let _ = fill_str(&t, &payload(), &mut unknown);
        }

        #[test]
        fn strings_without_a_variable_are_unchanged(template in json_value()) {
            let text = template.to_string();
            prop_assume!(!text.contains("${"));
            let mut unknown = 0;
            prop_assert_eq!(fill(&template, &payload(), &mut unknown), template);
            prop_assert_eq!(unknown, 0);
        }

        #[test]
        fn plain_strings_are_unchanged(s in ".*") {
            prop_assume!(!s.contains("${"));
            let mut unknown = 0;
            prop_assert_eq!(fill_str(&s, &payload(), &mut unknown), Value::String(s));
            prop_assert_eq!(unknown, 0);
        }
    }
}
