//! Parsing a shadow update (`$aws/things/<thingName>/shadow/update`, spec 9.1) into the resources
//! rules look at.
//!
//! The payload is a JSON object; rules read `state.reported` (DESIGN.md, Semantics): a non-object
//! value under `reported` is a thing resource, an object is a sub thing whose id is its key and
//! whose type is its `type` field when that is a string, else `untyped`.
//!
//! Two paths produce the same result. The fast path (module `scan`) is a hand-written scanner
//! for the common shape (no escapes, no arrays or objects inside resources); it gives up on
//! anything else, and on anything invalid, and then the serde path parses the payload and
//! decides how to reject it. Property tests (`observation/tests.rs`) check that the two agree on
//! every payload the fast path accepts.
//!
//! Why the serde path uses hand-written serde visitors and not `serde_json::Value`: the whole
//! document is read in one pass and nothing is allocated per key or per value. Keys and strings
//! borrow from the raw bytes (unless they contain escapes), numbers land in plain
//! `u64`/`i64`/`f64`, and fields rules never look at (`desired`, `metadata`, …) are skipped.
//! Building a `Value` tree costs a map node per key and a `String` per string; this parse costs
//! two `Vec`s. A firing, which is rare, rebuilds the `Value`s the template payload needs from the
//! parsed resources.
//!
//! Nesting depth is limited by the visitors themselves (each knows how deep it is), so the
//! common, shallow payload pays no separate scan for it.
//!
//! Bad input is a value ([`Reject`]), never a panic.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use smallvec::SmallVec;

mod scan;

/// The sub thing type of a sub thing without a string `type` field (spec 6.1).
pub const UNTYPED: &str = "untyped";

/// Why a payload gives no resources to evaluate. [`Reject::as_str`] is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// Larger than [`ParseLimits::max_bytes`]; not parsed at all.
    #[error("payload larger than the limit")]
    TooLarge,
    /// Not valid JSON (including invalid UTF-8 and trailing garbage).
    #[error("payload is not JSON")]
    NotJson,
    /// Valid JSON, but not an object.
    #[error("payload is not a JSON object")]
    NotObject,
    /// An object without an object at `state.reported` (e.g. a `desired`-only update).
    #[error("payload has no state.reported object")]
    NoReported,
    /// Objects and arrays nested deeper than [`ParseLimits::max_depth`].
    #[error("payload nested too deeply")]
    TooDeep,
}

impl Reject {
    pub const ALL: [Reject; 5] = [
        Reject::TooLarge,
        Reject::NotJson,
        Reject::NotObject,
        Reject::NoReported,
        Reject::TooDeep,
    ];

    /// A stable, lower-case label for metrics (`reason="not_json"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::NotJson => "not_json",
            Reject::NotObject => "not_object",
            Reject::NoReported => "no_reported",
            Reject::TooDeep => "too_deep",
        }
    }
}

/// Limits applied while parsing; the caller owns the size limit (`mqtt.max_payload_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest payload parsed, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of objects and arrays; the top-level object is depth 1, `state` 2,
    /// `reported` 3, a sub thing 4. Values below 4 are raised to 4, values above
    /// [`ParseLimits::MAX_DEPTH`] lowered to it.
    pub max_depth: u32,
}

impl ParseLimits {
    /// 128 KiB, the AWS IoT message size limit.
    pub const DEFAULT_MAX_BYTES: usize = 128 * 1024;
    pub const DEFAULT_MAX_DEPTH: u32 = 32;
    /// Kept below serde_json's own recursion limit (128) so that deep input always reports as
    /// [`Reject::TooDeep`], never as a syntax error.
    pub const MAX_DEPTH: u32 = 100;

    pub fn new(max_bytes: usize) -> Self {
        ParseLimits {
            max_bytes,
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }

    fn depth(&self) -> u32 {
        self.max_depth.clamp(4, Self::MAX_DEPTH)
    }
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits::new(Self::DEFAULT_MAX_BYTES)
    }
}

/// A resource value as the device sent it. Strings borrow from the payload when they can.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceValue<'a> {
    Null,
    Bool(bool),
    /// A non-negative JSON integer.
    UInt(u64),
    /// A negative JSON integer.
    Int(i64),
    /// A JSON number with a fraction or an exponent.
    Float(f64),
    Str(Cow<'a, str>),
    /// An array (thing or sub thing resource) or an object (sub thing resource).
    Json(Box<Value>),
}

impl ResourceValue<'_> {
    /// The value as JSON, for template payloads.
    pub fn to_value(&self) -> Value {
        match self {
            ResourceValue::Null => Value::Null,
            ResourceValue::Bool(b) => Value::Bool(*b),
            ResourceValue::UInt(n) => Value::from(*n),
            ResourceValue::Int(n) => Value::from(*n),
            ResourceValue::Float(f) => Value::from(*f),
            ResourceValue::Str(s) => Value::String(s.as_ref().to_owned()),
            ResourceValue::Json(v) => (**v).clone(),
        }
    }
}

/// One resource of the thing or of a sub thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource<'a> {
    pub name: Cow<'a, str>,
    pub value: ResourceValue<'a>,
}

/// A sub thing: an object under `state.reported`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubThing<'a> {
    /// Its key under `reported`.
    pub id: Cow<'a, str>,
    /// Its `type` field when that is a string, else [`UNTYPED`].
    pub kind: Cow<'a, str>,
    resources: Range<usize>,
}

/// Which of the keys an observation record sets (`thingName`, `timestamp`, `domain`) are at the
/// payload's top level, whatever their values. The ingest path needs to know, and the parser
/// reads every top-level key anyway: telling it saves the record builder a second scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopLevelKeys {
    pub thing_name: bool,
    pub timestamp: bool,
    pub domain: bool,
}

impl TopLevelKeys {
    /// Notes `key` if it is one of the three.
    pub(crate) fn see(&mut self, key: &str) {
        match key {
            "thingName" => self.thing_name = true,
            "timestamp" => self.timestamp = true,
            "domain" => self.domain = true,
            _ => {}
        }
    }
}

/// A parsed shadow update; borrows the raw payload, which stays available through [`Self::raw`]
/// for the ingest path that stores it unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedObservation<'a> {
    /// The whole payload; valid JSON with an object at the top once parsed.
    text: &'a str,
    timestamp: Option<u64>,
    top_keys: TopLevelKeys,
    resources: Resources<'a>,
    sub_things: SmallVec<[SubThing<'a>; 2]>,
    sub_resources: Resources<'a>,
}

/// Resources kept in place up to a typical update's count, so that parsing a typical update
/// allocates nothing for its three vectors.
type Resources<'a> = SmallVec<[Resource<'a>; 8]>;

impl<'a> ParsedObservation<'a> {
    /// Parses `raw`. Resources keep the payload's order; a key repeated in one object yields one
    /// resource per occurrence (JSON leaves duplicates undefined; rebuilt states keep the last).
    pub fn parse(raw: &'a [u8], limits: &ParseLimits) -> Result<Self, Reject> {
        if raw.len() > limits.max_bytes {
            return Err(Reject::TooLarge);
        }
        // One UTF-8 check of the whole payload is much cheaper than serde_json's check of every
        // string it borrows from a byte slice.
        let text = std::str::from_utf8(raw).map_err(|_| Reject::NotJson)?;
        let mut obs = ParsedObservation::empty(text);
        if let Some(reported) = scan::scan(text, limits.depth(), &mut obs) {
            return if reported {
                Ok(obs)
            } else {
                Err(Reject::NoReported)
            };
        }
        obs.clear_reported();
        obs.timestamp = None;
        obs.top_keys = TopLevelKeys::default();
        obs.parse_serde(text, limits)
    }

    /// [`Self::parse`] without the fast path: the serde path alone, the reference the scanner is
    /// checked against (property tests here, the differential target in `fuzz/`).
    #[doc(hidden)]
    pub fn parse_without_fast_path(raw: &'a [u8], limits: &ParseLimits) -> Result<Self, Reject> {
        if raw.len() > limits.max_bytes {
            return Err(Reject::TooLarge);
        }
        let text = std::str::from_utf8(raw).map_err(|_| Reject::NotJson)?;
        ParsedObservation::empty(text).parse_serde(text, limits)
    }

    /// Whether the fast path handles `text` (accepts it, or finds no `state.reported`) instead of
    /// giving up: for the tests and the fuzz target that check it is taken where expected.
    #[doc(hidden)]
    pub fn fast_path_takes(text: &'a str, limits: &ParseLimits) -> bool {
        scan::scan(text, limits.depth(), &mut ParsedObservation::empty(text)).is_some()
    }

    fn empty(text: &'a str) -> Self {
        ParsedObservation {
            text,
            timestamp: None,
            top_keys: TopLevelKeys::default(),
            resources: SmallVec::new(),
            sub_things: SmallVec::new(),
            sub_resources: SmallVec::new(),
        }
    }

    /// The general path: serde_json with the visitors below. Handles every payload, decides
    /// every rejection.
    fn parse_serde(mut self, text: &'a str, limits: &ParseLimits) -> Result<Self, Reject> {
        let mut de = serde_json::Deserializer::from_str(text);
        let shape = TopSeed {
            out: &mut self,
            max: limits.depth(),
        }
        .deserialize(&mut de)
        .map_err(classify)?;
        de.end().map_err(classify)?;
        match shape {
            Shape::NotObject => Err(Reject::NotObject),
            Shape::Object { reported: false } => Err(Reject::NoReported),
            Shape::Object { reported: true } => Ok(self),
        }
    }

    /// The payload exactly as received.
    pub fn raw(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The payload as text. Both parse paths read the whole payload, so it is known to be valid
    /// JSON with an object at the top: the ingest path builds its record from it without
    /// validating the payload a second time.
    pub fn json_object(&self) -> &'a str {
        self.text
    }

    /// Which of `thingName`, `timestamp` and `domain` the payload's top level has.
    pub fn top_level_keys(&self) -> TopLevelKeys {
        self.top_keys
    }

    /// The payload's own top-level `timestamp` (ms since epoch), when it is a non-negative number.
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }

    /// Thing resources: the non-object values under `state.reported`.
    pub fn resources(&self) -> &[Resource<'a>] {
        &self.resources
    }

    /// Sub things: the object values under `state.reported`.
    pub fn sub_things(&self) -> &[SubThing<'a>] {
        &self.sub_things
    }

    /// Every member of a sub thing (its `type` field included: it is part of its state).
    pub fn sub_resources(&self, sub: &SubThing<'a>) -> &[Resource<'a>] {
        self.sub_resources
            .get(sub.resources.clone())
            .unwrap_or_default()
    }

    /// A sub thing's object, rebuilt as JSON (`resource.parent.state` of a template payload).
    pub fn sub_state(&self, sub: &SubThing<'a>) -> Value {
        to_object(self.sub_resources(sub))
    }

    /// `state.reported` rebuilt as JSON (`thing.state` of a template payload).
    pub fn reported_state(&self) -> Value {
        let mut map = match to_object(&self.resources) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        for sub in &self.sub_things {
            map.insert(sub.id.as_ref().to_owned(), self.sub_state(sub));
        }
        Value::Object(map)
    }
}

fn to_object(resources: &[Resource<'_>]) -> Value {
    let map: Map<String, Value> = resources
        .iter()
        .map(|r| (r.name.as_ref().to_owned(), r.value.to_value()))
        .collect();
    Value::Object(map)
}

/// Message of the one error our visitors raise themselves.
const TOO_DEEP: &str = "nesting deeper than the limit";

/// Our visitors accept every JSON shape, so the only data error is the one they raise for depth;
/// everything else serde_json reports is syntax (bad JSON, bad UTF-8, trailing bytes, EOF).
fn classify(err: serde_json::Error) -> Reject {
    match err.classify() {
        serde_json::error::Category::Data => Reject::TooDeep,
        _ => Reject::NotJson,
    }
}

fn too_deep<E: de::Error>() -> E {
    E::custom(TOO_DEEP)
}

enum Shape {
    NotObject,
    Object { reported: bool },
}

/// Visitor methods for JSON scalars: `$out` maps a [`ResourceValue`] to the visitor's value.
macro_rules! scalar_visits {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Bool(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::UInt(v)))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            // serde_json only calls this for negative integers; be exact anyway.
            Ok(($out)(match u64::try_from(v) {
                Ok(u) => ResourceValue::UInt(u),
                Err(_) => ResourceValue::Int(v),
            }))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Float(v)))
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Str(Cow::Borrowed(v))))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Str(Cow::Owned(v.to_owned()))))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Str(Cow::Owned(v))))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(($out)(ResourceValue::Null))
        }
    };
}

/// Visitor methods that skip a value that is not the expected object and answer `$none`.
macro_rules! skip_non_object {
    ($none:expr) => {
        scalar_visits!(|_| $none);
        fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq, self.depth, self.max)?;
            Ok($none)
        }
    };
}

fn skip_seq<'a, A: SeqAccess<'a>>(mut seq: A, depth: u32, max: u32) -> Result<(), A::Error> {
    if depth > max {
        return Err(too_deep());
    }
    while seq
        .next_element_seed(Skip {
            depth: depth + 1,
            max,
        })?
        .is_some()
    {}
    Ok(())
}

fn skip_map<'a, A: MapAccess<'a>>(mut map: A, depth: u32, max: u32) -> Result<(), A::Error> {
    if depth > max {
        return Err(too_deep());
    }
    // Keys are read, not ignored: serde_json skips an ignored string without checking its
    // escapes, and a lone surrogate (`"\ud800"`) in a skipped key made this parser accept what
    // serde_json (and so the record builder and the index) refuses. Found by fuzzing.
    while map.next_key::<Key<'a>>()?.is_some() {
        map.next_value_seed(Skip {
            depth: depth + 1,
            max,
        })?;
    }
    Ok(())
}

/// A map key, borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'a> de::Deserialize<'a> for Key<'a> {
    fn deserialize<D: Deserializer<'a>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'a> Visitor<'a> for KeyVisitor {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Skips any value, failing if a container would sit deeper than `max` (`depth` is the depth
/// a container at this position has).
#[derive(Clone, Copy)]
struct Skip {
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    skip_non_object!(());
    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<(), A::Error> {
        skip_map(map, self.depth, self.max)
    }
}

/// Builds a `serde_json::Value`, with the same depth rule as [`Skip`].
#[derive(Clone, Copy)]
struct BoundedValue {
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for BoundedValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for BoundedValue {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalar_visits!(|v: ResourceValue<'_>| v.to_value());
    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth > self.max {
            return Err(too_deep());
        }
        let inner = BoundedValue {
            depth: self.depth + 1,
            max: self.max,
        };
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth > self.max {
            return Err(too_deep());
        }
        let inner = BoundedValue {
            depth: self.depth + 1,
            max: self.max,
        };
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A resource value: scalars as they are, containers as bounded JSON.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for ValueSeed {
    type Value = ResourceValue<'a>;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ValueSeed {
    type Value = ResourceValue<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalar_visits!(std::convert::identity);
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let bounded = BoundedValue {
            depth: self.depth,
            max: self.max,
        };
        Ok(ResourceValue::Json(Box::new(bounded.visit_seq(seq)?)))
    }
    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<Self::Value, A::Error> {
        let bounded = BoundedValue {
            depth: self.depth,
            max: self.max,
        };
        Ok(ResourceValue::Json(Box::new(bounded.visit_map(map)?)))
    }
}

struct TopSeed<'b, 'a> {
    out: &'b mut ParsedObservation<'a>,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for TopSeed<'_, 'a> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for TopSeed<'_, 'a> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a shadow update object")
    }
    scalar_visits!(|_| Shape::NotObject);
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Shape, A::Error> {
        skip_seq(seq, 1, self.max)?;
        Ok(Shape::NotObject)
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut reported = false;
        while let Some(Key(key)) = map.next_key()? {
            self.out.top_keys.see(&key);
            match key.as_ref() {
                "state" => {
                    reported = map.next_value_seed(StateSeed {
                        out: &mut *self.out,
                        depth: 2,
                        max: self.max,
                    })?;
                }
                "timestamp" => {
                    self.out.timestamp = map.next_value_seed(TimestampSeed {
                        depth: 2,
                        max: self.max,
                    })?;
                }
                _ => map.next_value_seed(Skip {
                    depth: 2,
                    max: self.max,
                })?,
            }
        }
        Ok(Shape::Object { reported })
    }
}

/// The top-level `timestamp`: kept when it is a non-negative number of milliseconds.
struct TimestampSeed {
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for TimestampSeed {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for TimestampSeed {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a timestamp")
    }
    scalar_visits!(|v: ResourceValue<'_>| match v {
        ResourceValue::UInt(n) => Some(n),
        // `as` saturates; the range check keeps it exact enough for milliseconds.
        ResourceValue::Float(f) if (0.0..1.8e19).contains(&f) => Some(f as u64),
        _ => None,
    });
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq, self.depth, self.max)?;
        Ok(None)
    }
    fn visit_map<A: MapAccess<'a>>(self, map: A) -> Result<Self::Value, A::Error> {
        skip_map(map, self.depth, self.max)?;
        Ok(None)
    }
}

/// `state`: answers whether it held a `reported` object.
struct StateSeed<'b, 'a> {
    out: &'b mut ParsedObservation<'a>,
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for StateSeed<'_, 'a> {
    type Value = bool;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for StateSeed<'_, 'a> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a state object")
    }
    skip_non_object!(false);
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<bool, A::Error> {
        if self.depth > self.max {
            return Err(too_deep());
        }
        // A repeated `state` or `reported` replaces the earlier one, as serde_json's Value does.
        self.out.clear_reported();
        let mut reported = false;
        while let Some(Key(key)) = map.next_key()? {
            if key == "reported" {
                self.out.clear_reported();
                reported = map.next_value_seed(ReportedSeed {
                    out: &mut *self.out,
                    depth: self.depth + 1,
                    max: self.max,
                })?;
            } else {
                map.next_value_seed(Skip {
                    depth: self.depth + 1,
                    max: self.max,
                })?;
            }
        }
        Ok(reported)
    }
}

impl ParsedObservation<'_> {
    fn clear_reported(&mut self) {
        self.resources.clear();
        self.sub_things.clear();
        self.sub_resources.clear();
    }
}

/// `state.reported`: fills the resources and sub things; answers whether it was an object.
struct ReportedSeed<'b, 'a> {
    out: &'b mut ParsedObservation<'a>,
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for ReportedSeed<'_, 'a> {
    type Value = bool;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for ReportedSeed<'_, 'a> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reported object")
    }
    skip_non_object!(false);
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<bool, A::Error> {
        if self.depth > self.max {
            return Err(too_deep());
        }
        while let Some(Key(name)) = map.next_key()? {
            let entry = map.next_value_seed(EntrySeed {
                sub_resources: &mut self.out.sub_resources,
                depth: self.depth + 1,
                max: self.max,
            })?;
            match entry {
                Entry::Value(value) => self.out.resources.push(Resource { name, value }),
                Entry::Sub { kind, resources } => self.out.sub_things.push(SubThing {
                    id: name,
                    kind,
                    resources,
                }),
            }
        }
        Ok(true)
    }
}

enum Entry<'a> {
    Value(ResourceValue<'a>),
    Sub {
        kind: Cow<'a, str>,
        resources: Range<usize>,
    },
}

/// A member of `reported`: a thing resource, or a sub thing whose members go to `sub_resources`.
struct EntrySeed<'b, 'a> {
    sub_resources: &'b mut Resources<'a>,
    depth: u32,
    max: u32,
}

impl<'a> DeserializeSeed<'a> for EntrySeed<'_, 'a> {
    type Value = Entry<'a>;
    fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<Entry<'a>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for EntrySeed<'_, 'a> {
    type Value = Entry<'a>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a resource value or a sub thing")
    }
    scalar_visits!(Entry::Value);
    fn visit_seq<A: SeqAccess<'a>>(self, seq: A) -> Result<Entry<'a>, A::Error> {
        let bounded = BoundedValue {
            depth: self.depth,
            max: self.max,
        };
        Ok(Entry::Value(ResourceValue::Json(Box::new(
            bounded.visit_seq(seq)?,
        ))))
    }
    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<Entry<'a>, A::Error> {
        if self.depth > self.max {
            return Err(too_deep());
        }
        let start = self.sub_resources.len();
        let mut kind = None;
        let inner = ValueSeed {
            depth: self.depth + 1,
            max: self.max,
        };
        while let Some(Key(name)) = map.next_key()? {
            let value = map.next_value_seed(inner)?;
            if name == "type" {
                kind = match &value {
                    ResourceValue::Str(s) => Some(s.clone()),
                    _ => None,
                };
            }
            self.sub_resources.push(Resource { name, value });
        }
        Ok(Entry::Sub {
            kind: kind.unwrap_or(Cow::Borrowed(UNTYPED)),
            resources: start..self.sub_resources.len(),
        })
    }
}

#[cfg(test)]
mod tests;
