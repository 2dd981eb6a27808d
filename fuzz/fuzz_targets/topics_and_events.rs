//! MQTT topics (`$aws/things/<name>/shadow/update`, `thing-update/<domain path>/<name>`,
//! `event/<domain path>`), topic filters, and life cycle events (spec 1.3) applied to the
//! directory. A shadow topic's parts must rebuild the topic; a filter without wildcards matches
//! exactly its own topic; an applied event leaves a directory that exports and imports again.
#![no_main]

use arbitrary::Arbitrary;
use ccstream_fuzz::Json;
use ingest::topic::{
    check_filter, effective_filter, filter_matches, parse_shadow_topic, Route, Routes,
};
use libfuzzer_sys::fuzz_target;
use rule_engine::Directory;

#[derive(Debug, Arbitrary)]
struct Input {
    topic: Topic,
    filters: Vec<String>,
    event: Option<Event>,
}

#[derive(Debug, Arbitrary)]
enum Topic {
    Aws(String),
    ThingUpdate(Vec<String>, String),
    Event(Vec<String>),
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Event {
    Shaped {
        kind: u8,
        name: Option<Json>,
        thing_type: Option<Json>,
        domain: Option<Json>,
        extra: Vec<(ccstream_fuzz::Name, Json)>,
    },
    Raw(Vec<u8>),
}

const EVENT_TYPES: &[&str] = &[
    "THING.CREATE",
    "THING.UPDATE",
    "THING.REMOVE",
    "THING_TYPE.CREATE",
    "DOMAIN.CREATE",
    "thing.create",
];

fuzz_target!(|input: Input| {
    let topic = match &input.topic {
        Topic::Aws(name) => format!("$aws/things/{name}/shadow/update"),
        Topic::ThingUpdate(levels, name) => {
            let mut t = String::from("thing-update/");
            for l in levels {
                t.push_str(l);
                t.push('/');
            }
            t.push_str(name);
            t
        }
        Topic::Event(levels) => format!("event/{}", levels.join("/")),
        Topic::Any(t) => t.clone(),
    };

    if let Ok(parsed) = parse_shadow_topic(&topic) {
        let name = parsed.thing_name;
        assert!(
            !name.is_empty() && !name.contains(['/', '+', '#', '\0']),
            "{topic:?}"
        );
        let rebuilt = match parsed.domain_path {
            None => format!("$aws/things/{name}/shadow/update"),
            Some("") => format!("thing-update/{name}"),
            Some(path) => {
                assert!(path.split('/').all(|l| !l.is_empty()), "{topic:?}");
                assert!(path.split('/').count() <= ingest::topic::MAX_DOMAIN_LEVELS);
                format!("thing-update/{path}/{name}")
            }
        };
        assert_eq!(rebuilt, topic);
    }

    for filter in &input.filters {
        if check_filter(filter).is_err() {
            continue;
        }
        let inner = effective_filter(filter);
        let matched = filter_matches(filter, &topic);
        if !inner.contains(['+', '#']) {
            assert_eq!(matched, inner == topic, "{filter:?} against {topic:?}");
        }
        if inner == "#" {
            assert_eq!(
                matched,
                !topic.starts_with('$'),
                "{filter:?} against {topic:?}"
            );
        }
    }
    let routes = Routes::new(
        vec![
            "$aws/things/+/shadow/update".into(),
            "thing-update/#".into(),
        ],
        vec!["event/#".into()],
    );
    match routes.classify(&topic) {
        Route::Shadow(parsed) => assert_eq!(Ok(parsed), parse_shadow_topic(&topic)),
        Route::Event => assert!(topic.starts_with("event/") || topic == "event"),
        Route::Unroutable(_) => {}
    }

    if let Some(event) = input.event {
        let payload = match event {
            Event::Raw(bytes) => bytes,
            Event::Shaped {
                kind,
                name,
                thing_type,
                domain,
                extra,
            } => {
                let mut source = serde_json::Map::new();
                for (key, v) in [
                    ("thingName", name),
                    ("thingType", thing_type),
                    ("domain", domain),
                ] {
                    if let Some(v) = v {
                        source.insert(key.into(), v.to_value());
                    }
                }
                let mut event = ccstream_fuzz::object(&extra);
                event.insert(
                    "type".into(),
                    EVENT_TYPES[usize::from(kind) % EVENT_TYPES.len()].into(),
                );
                event.insert("source".into(), serde_json::Value::Object(source));
                serde_json::to_vec(&event).expect("JSON")
            }
        };
        let mut directory = ccstream_fuzz::directory();
        if directory.apply_event(&topic, &payload).is_ok() {
            let exported = directory.export();
            let json = serde_json::to_vec(&exported).expect("a snapshot serializes");
            let back = serde_json::from_slice(&json).expect("a snapshot reads back");
            let reloaded = Directory::from_snapshot(back).unwrap_or_else(|e| {
                panic!(
                    "the directory after {topic:?} {} does not reload: {e}",
                    String::from_utf8_lossy(&payload)
                )
            });
            assert_eq!(reloaded.export(), exported);
        }
    }
});
