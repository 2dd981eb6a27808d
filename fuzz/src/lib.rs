//! What the fuzz targets share: structure-aware inputs (`arbitrary`) that come out as JSON
//! close to what devices and tenants send, and a small rule set and directory to evaluate
//! against. Raw-byte targets reach the same parsers from the committed corpus (`corpus/`).

use std::fmt::Write as _;

use arbitrary::{Arbitrary, Unstructured};
use rule_engine::{validate_rule, Directory, Rule, RuleIndex, ValidateMode};
use serde_json::{json, Map, Value};

/// Keys and strings drawn from the names rules and payloads use, so that generated input hits
/// the rules below; anything else comes from the fuzzer's bytes.
const WORDS: &[&str] = &[
    "temp",
    "pressure",
    "status",
    "type",
    "pump",
    "valve",
    "state",
    "reported",
    "desired",
    "timestamp",
    "thingName",
    "domain",
    "sub1",
    "sub2",
    "",
    "a\"b",
    "é",
    "\\u0000",
];

/// A name: one of [`WORDS`] or arbitrary text.
#[derive(Debug, Clone)]
pub struct Name(pub String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        if u.ratio(3, 4)? {
            Ok(Name((*u.choose(WORDS)?).to_owned()))
        } else {
            Ok(Name(String::arbitrary(u)?))
        }
    }
}

/// A JSON number as text, including the forms parsers get wrong (exponents, `-0`, huge
/// integers, long fractions).
#[derive(Debug, Clone, Arbitrary)]
pub enum Number {
    UInt(u64),
    Int(i64),
    Float(f64),
    Text {
        negative: bool,
        int: u64,
        frac: Option<u32>,
        exp: Option<(bool, i16)>,
    },
}

impl Number {
    pub fn render(&self, out: &mut String) {
        match self {
            Number::UInt(n) => {
                let _ = write!(out, "{n}");
            }
            Number::Int(n) => {
                let _ = write!(out, "{n}");
            }
            // Non-finite floats have no JSON form: serde_json writes null.
            Number::Float(f) => out.push_str(&Value::from(*f).to_string()),
            Number::Text {
                negative,
                int,
                frac,
                exp,
            } => {
                if *negative {
                    out.push('-');
                }
                let _ = write!(out, "{int}");
                if let Some(frac) = frac {
                    let _ = write!(out, ".{frac}");
                }
                if let Some((upper, e)) = exp {
                    out.push(if *upper { 'E' } else { 'e' });
                    let _ = write!(out, "{e}");
                }
            }
        }
    }
}

/// A JSON value, depth-limited by the fuzzer's input running out.
#[derive(Debug, Clone, Arbitrary)]
pub enum Json {
    Null,
    Bool(bool),
    Number(Number),
    Str(Name),
    Array(Vec<Json>),
    Object(Vec<(Name, Json)>),
}

impl Json {
    /// As text, with whitespace chosen by `ws` (cycled) between tokens.
    pub fn render(&self, out: &mut String, ws: &mut Ws) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => n.render(out),
            Json::Str(s) => push_string(out, &s.0),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws.push(out);
                    item.render(out, ws);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws.push(out);
                    push_string(out, &key.0);
                    ws.push(out);
                    out.push(':');
                    ws.push(out);
                    value.render(out, ws);
                }
                out.push('}');
            }
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.render(&mut out, &mut Ws::none());
        out
    }

    /// As a `serde_json::Value` (through its text: the same number parsing as a request's).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.to_text()).unwrap_or(Value::Null)
    }
}

/// A JSON string literal for `s`: escapes where JSON needs them, and sometimes where it does
/// not (`\/`, `\u00e9`), so that both the borrowed and the unescaping paths are taken.
pub fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whitespace to put between tokens: a cycle over the fuzzer's choices.
#[derive(Debug, Clone, Arbitrary)]
pub struct Ws(Vec<u8>, usize);

impl Ws {
    pub fn none() -> Self {
        Ws(Vec::new(), 0)
    }

    pub fn push(&mut self, out: &mut String) {
        let Some(&b) = self.0.get(self.1 % self.0.len().max(1)) else {
            return;
        };
        self.1 = self.1.wrapping_add(1);
        out.push_str(match b % 8 {
            0 => " ",
            1 => "\n",
            2 => "\t",
            3 => "\r\n  ",
            _ => "",
        });
    }
}

/// A resource value: mostly scalars (the fast path), sometimes arrays or objects.
#[derive(Debug, Clone, Arbitrary)]
pub enum ResourceValue {
    Number(Number),
    Str(Name),
    Bool(bool),
    Null,
    Other(Json),
}

impl ResourceValue {
    fn render(&self, out: &mut String, ws: &mut Ws) {
        match self {
            ResourceValue::Number(n) => n.render(out),
            ResourceValue::Str(s) => push_string(out, &s.0),
            ResourceValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            ResourceValue::Null => out.push_str("null"),
            ResourceValue::Other(json) => json.render(out, ws),
        }
    }
}

/// A sub thing: an object under `reported`, with an optional `type`.
#[derive(Debug, Clone, Arbitrary)]
pub struct SubThing {
    pub id: Name,
    pub kind: Option<ResourceValue>,
    pub resources: Vec<(Name, ResourceValue)>,
}

/// A member of `state.reported`.
#[derive(Debug, Clone, Arbitrary)]
pub enum Reported {
    Resource(Name, ResourceValue),
    Sub(SubThing),
}

/// A shadow update (spec 9.1) as a device might send it: `state.reported` with resources and
/// sub things, maybe `desired`, a `timestamp`, other top-level keys, in any order.
#[derive(Debug, Clone, Arbitrary)]
pub struct Shadow {
    pub timestamp: Option<Number>,
    pub reported: Option<Vec<Reported>>,
    pub desired: Option<Json>,
    pub extra: Vec<(Name, Json)>,
    /// Where `timestamp` and `state` go among `extra`.
    pub positions: (u8, u8),
    pub ws: Ws,
}

impl Shadow {
    pub fn to_text(&self) -> String {
        let mut ws = self.ws.clone();
        let mut members: Vec<String> = Vec::new();
        for (key, value) in &self.extra {
            let mut m = String::new();
            push_string(&mut m, &key.0);
            m.push(':');
            value.render(&mut m, &mut ws);
            members.push(m);
        }
        let mut state = String::from("{");
        let mut state_members = Vec::new();
        if let Some(reported) = &self.reported {
            let mut r = String::from("\"reported\":{");
            for (i, member) in reported.iter().enumerate() {
                if i > 0 {
                    r.push(',');
                }
                ws.push(&mut r);
                match member {
                    Reported::Resource(name, value) => {
                        push_string(&mut r, &name.0);
                        r.push(':');
                        ws.push(&mut r);
                        value.render(&mut r, &mut ws);
                    }
                    Reported::Sub(sub) => {
                        push_string(&mut r, &sub.id.0);
                        r.push_str(":{");
                        let mut first = true;
                        if let Some(kind) = &sub.kind {
                            r.push_str("\"type\":");
                            kind.render(&mut r, &mut ws);
                            first = false;
                        }
                        for (name, value) in &sub.resources {
                            if !first {
                                r.push(',');
                            }
                            first = false;
                            ws.push(&mut r);
                            push_string(&mut r, &name.0);
                            r.push(':');
                            value.render(&mut r, &mut ws);
                        }
                        r.push('}');
                    }
                }
            }
            r.push('}');
            state_members.push(r);
        }
        if let Some(desired) = &self.desired {
            let mut d = String::from("\"desired\":");
            desired.render(&mut d, &mut ws);
            state_members.push(d);
        }
        state.push_str(&state_members.join(","));
        state.push('}');
        let at = |p: u8, len: usize| usize::from(p) % (len + 1);
        let at_state = at(self.positions.0, members.len());
        members.insert(at_state, format!("\"state\":{state}"));
        if let Some(ts) = &self.timestamp {
            let mut t = String::from("\"timestamp\":");
            ts.render(&mut t);
            let at_ts = at(self.positions.1, members.len());
            members.insert(at_ts, t);
        }
        let mut out = String::from("{");
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            ws.push(&mut out);
            out.push_str(m);
        }
        ws.push(&mut out);
        out.push('}');
        out
    }
}

/// Thing types, sub thing types and resources the fixture rules read.
pub const THING_TYPES: &[&str] = &["Pump", "Sensor"];

/// Things in the fixture directory: (name, type, domain).
pub const THINGS: &[(&str, &str, &str)] = &[
    ("thing-001", "Pump", "sub1"),
    ("thing-002", "Sensor", "root"),
    ("thing-003", "Pump", "sub2"),
];

/// The directory the fixture rules are evaluated against.
pub fn directory() -> Directory {
    let mut directory = Directory::new();
    directory
        .insert_domain("sub1", "root")
        .expect("fixture domain");
    directory
        .insert_domain("sub2", "sub1")
        .expect("fixture domain");
    for (name, kind, domain) in THINGS {
        directory
            .upsert_thing(name, kind, domain)
            .expect("fixture thing");
    }
    directory
}

/// Rules over every operator, on thing resources and sub thing resources, with thresholds and
/// templates in url, headers and body.
pub fn rules() -> RuleIndex {
    let mut rules = Vec::new();
    let ops = ["gt", "gte", "lt", "lte", "eq", "ne"];
    let values = [
        json!(50),
        json!("49.5"),
        json!("ok"),
        json!(true),
        json!(-1.5e3),
    ];
    let mut n = 0;
    for kind in THING_TYPES {
        for resource in ["temp", "status", "pump.temp", "sub1.temp", "valve.state"] {
            for (i, op) in ops.iter().enumerate() {
                n += 1;
                // Ordering operators compare numbers; eq and ne any value.
                let value = if i < 4 {
                    &values[(n + i) % 2 * 4 % 5]
                } else {
                    &values[(n + i) % values.len()]
                };
                rules.push(rule(json!({
                    "id": format!("rule-{n:03}"),
                    "name": format!("rule {n}"),
                    "enabled": true,
                    "filter": {
                        "domain": if n % 3 == 0 { "sub1" } else { "root" },
                        "thingType": kind,
                        "thingNames": if n % 5 == 0 { json!(["thing-001"]) } else { json!([]) },
                    },
                    "expression": {"operator": op, "resource": resource, "value": value},
                    "threshold": {"count": n % 3, "interval": (n % 2) * 1000},
                    "actions": [{
                        "type": "WEBHOOK",
                        "config": {
                            "url": "https://hooks.example.com/t/${thing.thingName}/${resource.path}?v=${resource.value}",
                            "method": "POST",
                            "headers": {"x-thing": "${thing.thingName}", "x-domain": "${thing.domain}"},
                            "body": if n % 2 == 0 {
                                json!("${resource.parent.state}")
                            } else {
                                json!({"t": "${thing.state}", "at": "${timestamp} ${rule.name}"})
                            },
                        },
                    }],
                })));
            }
        }
    }
    RuleIndex::from_rules(rules)
}

fn rule(attributes: Value) -> Rule {
    validate_rule(&attributes, ValidateMode::Update).expect("fixture rule is valid")
}

/// `members` as a JSON object.
pub fn object(members: &[(Name, Json)]) -> Map<String, Value> {
    members
        .iter()
        .map(|(k, v)| (k.0.clone(), v.to_value()))
        .collect()
}

/// Receive time the targets use: fixed, so that every run of an input does the same.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// What the ingest path does with one shadow update of `thing` (`THINGS[thing % 3]`): parse,
/// evaluate against the fixture rules (twice, so thresholds run), build the record. Panics,
/// which libFuzzer reports, when a property fails:
///
/// - every firing's url keeps the rule's host (device data never moves a webhook), and its
///   payload names the thing;
/// - the record is a JSON object with `thingName`, `domain` and `timestamp` as ccstream sets
///   them, and the fast builder (keys from the parse) writes the same bytes as the validating one;
/// - a payload refused as not JSON is never stored as a record.
pub fn observe(raw: &[u8], thing: u8) -> Option<rule_engine::Outcome> {
    use rule_engine::{Engine, ParseLimits, ParsedObservation, Reject, ThresholdState};
    use sinks::objects::{build_record, build_record_from_json, PayloadKeys};
    use std::sync::OnceLock;

    static FIXTURE: OnceLock<(RuleIndex, Directory)> = OnceLock::new();
    let (rules, directory) = FIXTURE.get_or_init(|| (rules(), directory()));
    let (name, _, _) = THINGS[usize::from(thing) % THINGS.len()];
    let found = directory.thing(name).expect("fixture thing");
    let domain_path = directory.domains().path(found.domain()).join("/");

    let limits = ParseLimits::default();
    let validating = build_record(raw, name, NOW_MS, Some(&domain_path));
    match ParsedObservation::parse(raw, &limits) {
        Ok(obs) => {
            let mut thresholds = ThresholdState::new();
            let engine = Engine::new(rules, directory);
            let mut last = None;
            for at in [NOW_MS, NOW_MS + 1_500] {
                let outcome = engine.evaluate(name, &obs, at, &mut thresholds);
                for firing in &outcome.firings {
                    check_firing(firing, name);
                }
                last = Some(outcome);
            }
            let keys = obs.top_level_keys();
            let fast = build_record_from_json(
                obs.json_object(),
                name,
                NOW_MS,
                Some(&domain_path),
                Some(PayloadKeys {
                    thing_name: keys.thing_name,
                    timestamp: keys.timestamp,
                    domain: keys.domain,
                }),
            )
            .expect("a parsed observation is an object");
            let validating = validating.expect("a parsed observation is a valid object");
            assert_eq!(
                fast,
                validating,
                "the record builders disagree on {:?}",
                String::from_utf8_lossy(raw)
            );
            check_record(&fast, name, &domain_path, obs.timestamp());
            last
        }
        Err(Reject::NotJson | Reject::TooLarge) => {
            assert!(
                validating.is_err(),
                "a payload that is not JSON became a record: {:?}",
                String::from_utf8_lossy(raw)
            );
            None
        }
        Err(_) => {
            if let Ok(record) = validating {
                check_record(&record, name, &domain_path, None);
            }
            None
        }
    }
}

fn check_firing(firing: &rule_engine::Firing, thing: &str) {
    assert_eq!(
        firing.payload["thing"]["thingName"], thing,
        "firing payload names another thing"
    );
    for action in &firing.actions {
        let Some(Value::String(filled)) = action.config.get("url") else {
            panic!("a filled webhook has no url: {:?}", action.config);
        };
        // An empty url (a `.` or `..` value) is refused when the action runs.
        if filled.is_empty() {
            continue;
        }
        let url = url::Url::parse(filled).expect("a filled url parses");
        assert_eq!(
            url.host_str(),
            Some("hooks.example.com"),
            "device data moved the webhook: {filled}"
        );
        assert_eq!(url.path_segments().map(|s| s.count()), Some(3), "{filled}");
    }
}

/// A stored record: a JSON object whose `thingName`, `domain` and `timestamp` are ccstream's.
pub fn check_record(record: &[u8], thing: &str, domain_path: &str, timestamp: Option<u64>) {
    let value: Value = serde_json::from_slice(record).unwrap_or_else(|e| {
        panic!(
            "record is not JSON ({e}): {:?}",
            String::from_utf8_lossy(record)
        )
    });
    let Value::Object(map) = value else {
        panic!("record is not an object")
    };
    assert_eq!(map.get("thingName"), Some(&Value::from(thing)));
    assert_eq!(map.get("domain"), Some(&Value::from(domain_path)));
    if let Some(ts) = timestamp {
        // The record keeps the device's own text (`1e3` stays `1e3`, `1700.5` too); rules see
        // whole milliseconds.
        assert_eq!(
            map.get("timestamp")
                .and_then(|t| t.as_u64().or_else(|| t.as_f64().map(|f| f as u64))),
            Some(ts),
            "record timestamp"
        );
    } else {
        assert!(map.contains_key("timestamp"));
    }
}

/// What a crash or a bad disk does to a file, for the targets that read files back.
#[derive(Debug, Arbitrary)]
pub enum Damage {
    /// The file ends here (a crash before the write reached the disk).
    Truncate(u32),
    /// One byte changed.
    Flip(u32, u8),
    /// A range of zeros, as a file extended but not written leaves (`len` bytes at `at`).
    Zeros(u32, u16),
    /// Bytes after the last write that no write produced.
    Garbage(Vec<u8>),
}

/// A file after damage (see [`damaged`]).
pub struct Damaged {
    pub bytes: Vec<u8>,
    /// Where the appended garbage still in the file starts; `None` when none is left.
    pub foreign_from: Option<usize>,
}

impl Damaged {
    /// Whether `range` reaches into appended garbage. A frame that does may be completed by
    /// it: a CRC guards against random damage, not against bytes made to match (and the
    /// fuzzer makes them match: it writes into the garbage the CRC it sees compared), so a
    /// reader cannot tell such a frame from a write.
    pub fn reaches_garbage(&self, range: std::ops::Range<usize>) -> bool {
        self.foreign_from.is_some_and(|from| range.end > from)
    }
}

/// `written` with every `damage` applied in turn.
pub fn damaged(written: &[u8], damage: &[Damage]) -> Damaged {
    let mut file = written.to_vec();
    let mut foreign_from = None;
    for d in damage {
        match d {
            Damage::Truncate(at) => {
                file.truncate(*at as usize % (file.len() + 1));
                foreign_from = foreign_from.filter(|&from| from < file.len());
            }
            Damage::Flip(at, xor) => {
                if !file.is_empty() {
                    let at = *at as usize % file.len();
                    file[at] ^= xor;
                }
            }
            Damage::Zeros(at, len) => {
                let at = *at as usize % (file.len() + 1);
                let end = (at + usize::from(*len)).min(file.len());
                file[at..end].fill(0);
            }
            Damage::Garbage(bytes) => {
                if !bytes.is_empty() {
                    foreign_from = foreign_from.or(Some(file.len()));
                }
                file.extend_from_slice(bytes);
            }
        }
    }
    Damaged {
        bytes: file,
        foreign_from,
    }
}
