//! `${...}` templates (spec 6.1) filled from a firing's payload: in a webhook url, headers and
//! body. Device data (thing names, resource values) must never change a url's scheme, host or
//! port, and must reach the url percent-encoded as `encodeURIComponent` does; a string that is
//! one `${path}` takes the value with its JSON type.
#![no_main]

use arbitrary::Arbitrary;
use ccstream_fuzz::{Json, Name};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rule_engine::template::{fill_config, fill_url, lookup};
use serde_json::{json, Value};

/// A template string: literal text and `${path}` references, sometimes broken (`${` without
/// `}`, `}` alone).
#[derive(Debug, Arbitrary)]
enum Piece {
    Text(String),
    Var(Path),
    Open,
    Close,
}

#[derive(Debug, Arbitrary)]
enum Path {
    Known(u8),
    Any(Name),
}

const PATHS: &[&str] = &[
    "thing.thingName",
    "thing.domain",
    "thing.state",
    "thing.state.temp",
    "thing.state.list.0",
    "resource.value",
    "resource.path",
    "resource.parent.state",
    "rule.name",
    "timestamp",
    "nothing.here",
    "",
];

impl Piece {
    fn render(&self, out: &mut String) {
        match self {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(Path::Known(i)) => {
                out.push_str("${");
                out.push_str(PATHS[usize::from(*i) % PATHS.len()]);
                out.push('}');
            }
            Piece::Var(Path::Any(name)) => {
                out.push_str("${");
                out.push_str(&name.0);
                out.push('}');
            }
            Piece::Open => out.push_str("${"),
            Piece::Close => out.push('}'),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    thing_name: String,
    value: Json,
    state: Vec<(Name, Json)>,
    /// The url after `https://hooks.example.com:8443/`.
    url: Vec<Piece>,
    headers: Vec<(Name, Vec<Piece>)>,
    body: Json,
    body_text: Vec<Piece>,
}

/// What `encodeURIComponent` leaves as it is (ECMA-262, `uriUnreserved`): written here again
/// from the standard, not taken from the service, so that the two are checked against each
/// other.
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

fn text(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for p in pieces {
        p.render(&mut out);
    }
    out
}

fuzz_target!(|input: Input| {
    let payload = json!({
        "resource": {"name": "temp", "path": "temp", "value": input.value.to_value()},
        "timestamp": 1_700_000_000_000_u64,
        "rule": {"id": "rule-1", "name": "a rule"},
        "thing": {
            "thingName": input.thing_name,
            "thingType": "Pump",
            "domain": "root/sub1",
            "state": Value::Object(ccstream_fuzz::object(&input.state)),
        },
    });

    // A url whose template names one variable, in the path: the value comes back decoded.
    let mut unknown = 0;
    let one = fill_url(
        "https://hooks.example.com/t/${thing.thingName}",
        &payload,
        &mut unknown,
    );
    assert_eq!(unknown, 0);
    if input.thing_name == "." || input.thing_name == ".." {
        assert_eq!(one, "", "a dot segment would change the path");
    } else {
        let encoded = one
            .strip_prefix("https://hooks.example.com/t/")
            .expect("the literal prefix is kept");
        assert_eq!(
            encoded,
            utf8_percent_encode(&input.thing_name, URI_COMPONENT).to_string()
        );
        assert_eq!(
            percent_decode_str(encoded).decode_utf8().as_deref(),
            Ok(input.thing_name.as_str())
        );
    }

    // Any template after a fixed authority. When all that follows the port is device data
    // (where an unencoded `@`, `:` or `/` would move the host), the authority stays.
    let url = format!("https://hooks.example.com:8443{}", text(&input.url));
    // A name holding `}` ends its reference early: the rest of it is the tenant's text.
    let data_only = input.url.iter().all(|p| match p {
        Piece::Var(Path::Known(_)) => true,
        Piece::Var(Path::Any(name)) => !name.0.contains('}'),
        _ => false,
    });
    let mut config = serde_json::Map::new();
    config.insert("url".into(), Value::from(url.clone()));
    config.insert(
        "headers".into(),
        Value::Object(
            input
                .headers
                .iter()
                .map(|(k, v)| (k.0.clone(), Value::from(text(v))))
                .collect(),
        ),
    );
    config.insert("body".into(), input.body.to_value());
    config.insert("text".into(), Value::from(text(&input.body_text)));
    let (filled, _) = fill_config(&config, &payload);
    let Some(Value::String(filled_url)) = filled.get("url") else {
        panic!("url is no longer a string: {filled:?}");
    };
    if !filled_url.is_empty() {
        assert!(filled_url.starts_with("https://hooks.example.com:8443"));
        if data_only {
            if let Ok(parsed) = url::Url::parse(filled_url) {
                assert_eq!(parsed.scheme(), "https");
                assert_eq!(parsed.host_str(), Some("hooks.example.com"), "{filled_url}");
                assert_eq!(parsed.port(), Some(8443), "{filled_url}");
            }
        }
    }
    // A string that is exactly one known `${path}` becomes the value itself, typed.
    for path in PATHS {
        let mut unknown = 0;
        let filled =
            rule_engine::template::fill_str(&format!("${{{path}}}"), &payload, &mut unknown);
        match lookup(&payload, path) {
            Some(v) => assert_eq!(&filled, v),
            None => assert_eq!((filled, unknown), (Value::from(""), 1)),
        }
    }
});
