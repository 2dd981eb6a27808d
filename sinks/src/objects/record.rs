//! The stored form of one observation (DESIGN.md, "Observation record"). Pure and fast: no I/O,
//! and no `serde_json::Value` — the device's bytes are validated, their top-level keys scanned,
//! and the added keys spliced in after the opening `{`.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Which batch stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Observation records, under `<prefix>`.
    Observations,
    /// Error records (payloads that were not JSON objects), under `<prefix>errors/`.
    Errors,
}

impl RecordKind {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Observations => "observations",
            RecordKind::Errors => "errors",
        }
    }
}

/// The payload is not a JSON object; it becomes an error record
/// ([`build_error_record`]) with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload is not a JSON object: {reason}")]
pub struct NotAnObject {
    /// Why, for the error record's `reason`.
    pub reason: String,
}

impl NotAnObject {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

const THING_NAME: &str = "thingName";
const TIMESTAMP: &str = "timestamp";
const DOMAIN: &str = "domain";

/// The record stored for one observation: the device's JSON object with `thingName` (from the
/// topic; a payload `thingName` is replaced), `timestamp` (`received_at_ms`, unless the payload
/// carries a top-level `timestamp`, which is kept) and `domain` (when the directory knows the
/// thing; it replaces a payload `domain`) added at the front. The device's bytes are kept as they
/// are, whitespace included, except that whitespace around the object is trimmed (and, when a
/// payload key is replaced, the whitespace between members).
pub fn build_record(
    payload: &[u8],
    thing_name: &str,
    received_at_ms: u64,
    domain_path: Option<&str>,
) -> Result<Vec<u8>, NotAnObject> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| NotAnObject::new(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    // Validation first, so that the scanner below only ever sees well-formed JSON. Borrowed and
    // allocation-free.
    serde_json::from_str::<ValidJson>(text)
        .map_err(|e| NotAnObject::new(format!("invalid JSON: {e}")))?;
    build_record_from_json(text, thing_name, received_at_ms, domain_path, None)
}

/// Any JSON that `serde_json::Value` (and so the rule engine's parser, the Rule API and the
/// search index) reads, kept as nothing. Unlike `IgnoredAny`, whose numbers serde_json skips
/// without reading, every number is read: one beyond `f64` (`1e999`) is refused here as it is
/// everywhere else, so such a payload goes to `errors/` instead of being stored as an
/// observation the parser called not JSON (found by the `observation_bytes` fuzz target).
struct ValidJson;

impl<'de> Deserialize<'de> for ValidJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidJsonVisitor)
    }
}

struct ValidJsonVisitor;

impl<'de> serde::de::Visitor<'de> for ValidJsonVisitor {
    type Value = ValidJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_unit<E>(self) -> Result<ValidJson, E> {
        Ok(ValidJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ValidJson, A::Error> {
        while seq.next_element::<ValidJson>()?.is_some() {}
        Ok(ValidJson)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ValidJson, A::Error> {
        // Keys too: an ignored key's escapes go unchecked (a lone surrogate, `"\ud800"`).
        while map.next_key::<ValidJson>()?.is_some() {
            map.next_value::<ValidJson>()?;
        }
        Ok(ValidJson)
    }
}

/// Which of the keys a record sets are at the payload's top level (whatever their values), when
/// the caller knows it from its own parse: the record builder then skips its scan for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadKeys {
    pub thing_name: bool,
    pub timestamp: bool,
    pub domain: bool,
}

/// [`build_record`] for a payload the caller has already parsed as JSON (the rule engine's
/// parser reads every observation whole): the same record, without validating the payload a
/// second time (a full pass over the bytes, a good part of the cost of building a record);
/// with `keys`, also without scanning its top-level keys. Only the top-level value is checked
/// to be an object. Given text that is not valid JSON, or wrong `keys`, the record may be
/// wrong; it never panics.
pub fn build_record_from_json(
    text: &str,
    thing_name: &str,
    received_at_ms: u64,
    domain_path: Option<&str>,
    keys: Option<PayloadKeys>,
) -> Result<Vec<u8>, NotAnObject> {
    let bytes = text.as_bytes();
    let open = skip_ws(bytes, 0);
    match bytes.get(open) {
        Some(b'{') => {}
        Some(b'[') => return Err(NotAnObject::new("a JSON array, not an object")),
        Some(b'"') => return Err(NotAnObject::new("a JSON string, not an object")),
        Some(b't' | b'f') => return Err(NotAnObject::new("a JSON boolean, not an object")),
        Some(b'n') => return Err(NotAnObject::new("JSON null, not an object")),
        Some(_) => return Err(NotAnObject::new("a JSON number, not an object")),
        None => return Err(NotAnObject::new("empty payload")),
    }
    let close = trim_end(bytes);

    let keys = keys.unwrap_or_else(|| {
        let mut keys = PayloadKeys::default();
        for member in Members::new(bytes, open) {
            match member.key(text).as_deref() {
                Some(THING_NAME) => keys.thing_name = true,
                Some(DOMAIN) => keys.domain = true,
                Some(TIMESTAMP) => keys.timestamp = true,
                _ => {}
            }
        }
        keys
    });
    let has_timestamp = keys.timestamp;
    let remove = keys.thing_name || (keys.domain && domain_path.is_some());

    let extra = thing_name.len() + domain_path.map_or(0, str::len) + 64;
    let mut out = Vec::with_capacity(close - open + extra);
    out.push(b'{');
    out.extend_from_slice(b"\"thingName\":");
    push_json(&mut out, thing_name);
    if !has_timestamp {
        out.extend_from_slice(b",\"timestamp\":");
        push_json(&mut out, &received_at_ms);
    }
    if let Some(domain) = domain_path {
        out.extend_from_slice(b",\"domain\":");
        push_json(&mut out, domain);
    }
    if !remove {
        // The common path: the device's bytes after `{`, verbatim.
        let body = &bytes[open + 1..close];
        if bytes.get(skip_ws(bytes, open + 1)) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(body);
    } else {
        // Rare: the payload carries a key we replace. Rebuild from the kept members' bytes.
        for member in Members::new(bytes, open) {
            let replaced = match member.key(text).as_deref() {
                Some(THING_NAME) => true,
                Some(DOMAIN) => domain_path.is_some(),
                _ => false,
            };
            if !replaced {
                out.push(b',');
                out.extend_from_slice(&bytes[member.start..member.end]);
            }
        }
        out.push(b'}');
    }
    Ok(out)
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    #[serde(rename = "thingName")]
    thing_name: &'a str,
    timestamp: u64,
    reason: &'a str,
    #[serde(rename = "rawData")]
    raw_data: String,
}

/// The record stored under `<prefix>errors/` for a payload that is not a JSON object:
/// `{"thingName","timestamp","reason","rawData"}`, `rawData` being the payload in base64.
pub fn build_error_record(
    payload: &[u8],
    thing_name: &str,
    received_at_ms: u64,
    reason: &str,
) -> Vec<u8> {
    let record = ErrorRecord {
        thing_name,
        timestamp: received_at_ms,
        reason,
        raw_data: base64::engine::general_purpose::STANDARD.encode(payload),
    };
    // A struct of strings and an integer always serializes.
    serde_json::to_vec(&record).expect("an error record serializes")
}

/// Appends `value` as JSON. Writing strings and integers to a `Vec` cannot fail.
fn push_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("JSON into a Vec cannot fail");
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && is_ws(bytes[at]) {
        at += 1;
    }
    at
}

/// One past the last non-whitespace byte.
fn trim_end(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end > 0 && is_ws(bytes[end - 1]) {
        end -= 1;
    }
    end
}

/// End of the string whose opening quote is at `at` (one past the closing quote).
fn skip_string(bytes: &[u8], mut at: usize) -> usize {
    at += 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            b'"' => return at + 1,
            _ => at += 1,
        }
    }
    // Unterminated (only in text that is not JSON): never past the end.
    bytes.len()
}

/// End of the value starting at `at` (no leading whitespace).
fn skip_value(bytes: &[u8], mut at: usize) -> usize {
    match bytes.get(at) {
        Some(b'"') => skip_string(bytes, at),
        Some(b'{' | b'[') => {
            // Iterative, so nesting depth costs no stack.
            let mut depth = 0usize;
            while at < bytes.len() {
                match bytes[at] {
                    b'"' => {
                        at = skip_string(bytes, at);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return at + 1;
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            bytes.len()
        }
        _ => {
            while at < bytes.len() && !matches!(bytes[at], b',' | b'}' | b']') && !is_ws(bytes[at])
            {
                at += 1;
            }
            at
        }
    }
}

/// A top-level member: `bytes[start..end]` is `"key": value`.
struct Member {
    start: usize,
    key_end: usize,
    end: usize,
}

impl Member {
    /// The key, unescaped. `None` never happens on validated input.
    fn key<'a>(&self, text: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        let quoted = text.get(self.start..self.key_end)?;
        let raw = quoted.get(1..quoted.len().checked_sub(1)?)?;
        if raw.contains('\\') {
            serde_json::from_str::<String>(quoted)
                .ok()
                .map(std::borrow::Cow::Owned)
        } else {
            Some(std::borrow::Cow::Borrowed(raw))
        }
    }
}

/// The members of the object whose `{` is at `open`, in order. Meant for validated JSON; on
/// any other text it yields members that may make no sense, with in-bounds offsets.
struct Members<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Members<'a> {
    fn new(bytes: &'a [u8], open: usize) -> Self {
        Self {
            bytes,
            at: open + 1,
        }
    }
}

impl Iterator for Members<'_> {
    type Item = Member;

    fn next(&mut self) -> Option<Member> {
        let bytes = self.bytes;
        let mut at = skip_ws(bytes, self.at);
        if bytes.get(at) == Some(&b',') {
            at = skip_ws(bytes, at + 1);
        }
        if bytes.get(at) != Some(&b'"') {
            self.at = bytes.len();
            return None;
        }
        let start = at;
        let key_end = skip_string(bytes, at);
        at = skip_ws(bytes, key_end);
        // The `:`.
        at = skip_ws(bytes, at + 1).min(bytes.len());
        let end = skip_value(bytes, at);
        self.at = end;
        Some(Member {
            start,
            key_end,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    proptest! {
        // The caller of `build_record_from_json` vouches for the text; if it is wrong, the
        // record is wrong, but nothing panics.
        #[test]
        fn any_text_after_a_brace_never_panics(body in r#"[{}\[\]",: a\\0-9]{0,40}"#) {
            let text = format!("{{{body}");
            let _ = build_record_from_json(&text, "t", 1, Some("root/a"), None);
            let _ = build_record_from_json(&format!("{{\"thingName\":{body}"), "t", 1, None, None);
            let all = PayloadKeys { thing_name: true, timestamp: true, domain: true };
            let _ = build_record_from_json(&text, "t", 1, Some("root/a"), Some(all));
        }

        // On valid JSON every entry point gives the same record, with or without the keys
        // known in advance.
        #[test]
        fn parsed_and_unparsed_payloads_give_the_same_record(
            names in proptest::collection::vec("[a-zA-Z]{1,8}", 0..6),
            with_name in any::<bool>(),
            with_domain in any::<bool>(),
            with_timestamp in any::<bool>(),
            domain in proptest::option::of("[a-z/]{1,8}"),
        ) {
            let mut object = serde_json::Map::new();
            for (i, k) in names.iter().enumerate() {
                object.insert(k.clone(), json!(i));
            }
            for (on, key) in [(with_name, "thingName"), (with_domain, "domain"), (with_timestamp, "timestamp")] {
                if on {
                    object.insert(key.into(), json!("x"));
                }
            }
            let keys = PayloadKeys {
                thing_name: object.contains_key("thingName"),
                timestamp: object.contains_key("timestamp"),
                domain: object.contains_key("domain"),
            };
            let text = Value::Object(object).to_string();
            let domain = domain.as_deref();
            let expected = build_record(text.as_bytes(), "thing-1", 5, domain);
            prop_assert_eq!(&expected, &build_record_from_json(&text, "thing-1", 5, domain, None));
            prop_assert_eq!(&expected, &build_record_from_json(&text, "thing-1", 5, domain, Some(keys)));
        }
    }

    fn rec(payload: &str, domain: Option<&str>) -> String {
        let out = build_record(payload.as_bytes(), "thing-1", 1_700_000_000_123, domain)
            .expect("an object");
        String::from_utf8(out).expect("UTF-8")
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("valid JSON")
    }

    #[test]
    fn splices_keys_and_keeps_the_device_bytes() {
        let payload = r#"{"state":{"reported":{"temp":20.5}}}"#;
        assert_eq!(
            rec(payload, None),
            r#"{"thingName":"thing-1","timestamp":1700000000123,"state":{"reported":{"temp":20.5}}}"#
        );
        assert_eq!(
            rec(payload, Some("root/sub1")),
            r#"{"thingName":"thing-1","timestamp":1700000000123,"domain":"root/sub1","state":{"reported":{"temp":20.5}}}"#
        );
        // Whitespace inside is kept, around is trimmed; number formatting untouched.
        assert_eq!(
            rec(" \n{ \"a\" : 1.50e3 ,\"b\":[1, 2] }\n", None),
            r#"{"thingName":"thing-1","timestamp":1700000000123, "a" : 1.50e3 ,"b":[1, 2] }"#
        );
    }

    #[test]
    fn empty_objects() {
        assert_eq!(
            rec("{}", None),
            r#"{"thingName":"thing-1","timestamp":1700000000123}"#
        );
        assert_eq!(
            rec("  { \t }  ", Some("root")),
            "{\"thingName\":\"thing-1\",\"timestamp\":1700000000123,\"domain\":\"root\" \t }"
        );
    }

    #[test]
    fn payload_timestamp_is_kept() {
        let out = rec(r#"{"timestamp":42,"state":{}}"#, None);
        assert_eq!(out, r#"{"thingName":"thing-1","timestamp":42,"state":{}}"#);
        // A nested `timestamp` is not top-level: the receive time is added.
        let v = parse(&rec(r#"{"state":{"timestamp":1}}"#, None));
        assert_eq!(v["timestamp"], json!(1_700_000_000_123u64));
    }

    #[test]
    fn payload_thing_name_and_domain_are_replaced_never_duplicated() {
        let out = rec(
            r#"{"a":1, "thingName":"spoofed","domain":"x","z":{"thingName":"inner"}}"#,
            Some("root/a"),
        );
        assert_eq!(
            out,
            r#"{"thingName":"thing-1","timestamp":1700000000123,"domain":"root/a","a":1,"z":{"thingName":"inner"}}"#
        );
        // Only member, and an escaped spelling of the key.
        let out = rec(r#"{"thing\u004eame":"spoofed"}"#, None);
        assert_eq!(out, r#"{"thingName":"thing-1","timestamp":1700000000123}"#);
        // Unknown domain: the device's `domain` stays.
        let out = rec(r#"{"domain":"dev","thingName":"x"}"#, None);
        assert_eq!(
            out,
            r#"{"thingName":"thing-1","timestamp":1700000000123,"domain":"dev"}"#
        );
    }

    #[test]
    fn added_values_are_escaped() {
        let out = build_record(b"{}", "a\"b\\c\n", 1, Some("r/\u{1}")).expect("object");
        let v = parse(std::str::from_utf8(&out).expect("UTF-8"));
        assert_eq!(v["thingName"], json!("a\"b\\c\n"));
        assert_eq!(v["domain"], json!("r/\u{1}"));
    }

    #[test]
    fn strings_with_braces_and_escapes_do_not_confuse_the_scanner() {
        let payload = r#"{"s":"}{\"thingName\":1,","t":{"u":"]\\"},"thingName":null}"#;
        let v = parse(&rec(payload, None));
        assert_eq!(v["thingName"], json!("thing-1"));
        assert_eq!(v["s"], json!("}{\"thingName\":1,"));
        assert_eq!(v["t"], json!({"u": "]\\"}));
    }

    /// Fuzzing found `1.79769313486448643849e308` (beyond f64), and a review of the fuzz
    /// targets a lone surrogate in a key, stored as observations that the rule engine's parser
    /// had refused as not JSON.
    #[test]
    fn what_serde_json_refuses_is_refused() {
        for payload in [
            r#"{"state":{"reported":{"f":1.79769313486448643849e308}}}"#,
            r#"{"a":[1,{"b":-1e999}]}"#,
        ] {
            let refused = build_record(payload.as_bytes(), "t", 1, None).expect_err(payload);
            assert!(
                refused.reason.contains("number out of range"),
                "{}",
                refused.reason
            );
        }
        // And lone surrogates, in keys as in values (found by fuzzing too).
        for payload in [
            r#"{"\ud800":1}"#,
            r#"{"a":{"b\udc00":1}}"#,
            r#"{"a":"\ud800"}"#,
        ] {
            assert!(serde_json::from_str::<Value>(payload).is_err());
            build_record(payload.as_bytes(), "t", 1, None).expect_err(payload);
        }
        // The largest f64, big integers and tiny numbers are fine.
        for payload in [
            r#"{"f":1.7976931348623157e308,"u":18446744073709551616,"t":1e-400}"#,
            r#"{"i":-9223372036854775809}"#,
        ] {
            assert!(serde_json::from_str::<Value>(payload).is_ok());
            build_record(payload.as_bytes(), "t", 1, None).expect(payload);
        }
    }

    #[test]
    fn non_objects_are_refused_with_a_reason() {
        let reason = |p: &[u8]| {
            build_record(p, "t", 1, None)
                .expect_err("not an object")
                .reason
        };
        assert!(reason(b"[1,2]").contains("array"));
        assert!(reason(b"42").contains("number"));
        assert!(reason(b"\"s\"").contains("string"));
        assert!(reason(b"true").contains("boolean"));
        assert!(reason(b"null").contains("null"));
        assert!(reason(b"").contains("invalid JSON"));
        assert!(reason(b"{\"a\":").contains("invalid JSON"));
        assert!(reason(b"{} {}").contains("invalid JSON"));
        assert!(reason(b"{\"a\":\xff}").contains("UTF-8"));
    }

    #[test]
    fn error_record_has_base64_raw_data() {
        let out = build_error_record(b"\xff[1", "thing-\"1", 7, "invalid UTF-8 at byte 0");
        let v = parse(std::str::from_utf8(&out).expect("UTF-8"));
        assert_eq!(
            v,
            json!({"thingName":"thing-\"1","timestamp":7,"reason":"invalid UTF-8 at byte 0","rawData":"/1sx"})
        );
    }
}
