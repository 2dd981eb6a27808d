//! A structure-aware shadow update (resources, sub things, `desired`, a timestamp, other keys,
//! escapes and whitespace) through the ingest path. Well-formed JSON with `state.reported` must
//! always parse, with one resource per scalar member and one sub thing per object member.
#![no_main]

use ccstream_fuzz::{Reported, ResourceValue, Shadow};
use libfuzzer_sys::fuzz_target;
use rule_engine::{ParseLimits, ParsedObservation, Reject};

fuzz_target!(|input: (Shadow, u8)| {
    let (shadow, thing) = input;
    let text = shadow.to_text();
    let parsed = ParsedObservation::parse(text.as_bytes(), &ParseLimits::default());
    // Another top-level `state` replaces ours (the last one counts): nothing to expect then.
    let ours = !shadow.extra.iter().any(|(k, _)| k.0 == "state");
    match (&shadow.reported, &parsed) {
        _ if !ours => {}
        (Some(members), Ok(obs)) => {
            let subs = members
                .iter()
                .filter(|m| {
                    matches!(
                        m,
                        Reported::Sub(_)
                            | Reported::Resource(
                                _,
                                ResourceValue::Other(ccstream_fuzz::Json::Object(_))
                            )
                    )
                })
                .count();
            assert_eq!(obs.sub_things().len(), subs, "{text}");
            assert_eq!(obs.resources().len() + subs, members.len(), "{text}");
        }
        // Too deep is one refusal well-formed input may get; a number beyond f64 (`1e999`),
        // which serde_json refuses too, the other.
        (Some(_), Err(Reject::TooDeep)) => {}
        (Some(_), Err(Reject::NotJson))
            if serde_json::from_str::<serde_json::Value>(&text).is_err() => {}
        (Some(_), Err(reject)) => panic!("{reject:?} for {text}"),
        (None, Ok(_)) => panic!("no state.reported, yet parsed: {text}"),
        (None, Err(_)) => {}
    }
    ccstream_fuzz::observe(text.as_bytes(), thing);
});
