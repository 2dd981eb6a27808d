//! FIND queries as the spec's clients write them (Elasticsearch 1.x/2.x, spec 5.1) translated to
//! what OpenSearch 2.x accepts, before the checks and the domain restriction of [`super::find`].
//! Queries already in the current dialect come out unchanged.
//!
//! | Elasticsearch 1.x/2.x | OpenSearch 2.x |
//! |---|---|
//! | `filtered: {query: Q, filter: F}` | `bool: {must: [Q], filter: [F]}` |
//! | `and: [A, B]` / `and: {filters: [...]}` | `bool: {filter: [A, B]}` |
//! | `or: [A, B]` / `or: {filters: [...]}` | `bool: {should: [A, B], minimum_should_match: 1}` |
//! | `not: A` / `not: {filter: A}` | `bool: {must_not: [A]}` |
//! | `missing: {field: f}` | `bool: {must_not: [{exists: {field: f}}]}` |
//! | `date_histogram.interval` one calendar unit (`1d`, `month`, ...) | `calendar_interval` |
//! | `date_histogram.interval` otherwise (`30m`, `2h`) | `fixed_interval` |
//! | `date_histogram.pre_zone` | `time_zone` |
//! | `date_histogram.pre_offset` | `offset` |
//! | `date_histogram.pre_zone_adjust_large_interval` | dropped (OpenSearch always adjusts) |
//! | `trackScores` (top level) | `track_scores` |
//! | `terms: {F: {index: "domains", id: D, ...}}` | the records' `domain` is D's path or below it |
//!
//! `post_zone` and `post_offset` have no equivalent and are refused (INVALID_ARGUMENTS).

use serde_json::{json, Map, Value};

use super::find::FindError;

/// Deepest JSON nesting translated; deeper queries are refused by the checks anyway.
const MAX_DEPTH: usize = 100;

/// The index the spec's domain lookups read.
pub const DOMAINS_INDEX: &str = "domains";

/// `interval` values that are one calendar unit: OpenSearch's `calendar_interval`.
const CALENDAR_UNITS: &[&str] = &[
    "minute", "1m", "hour", "1h", "day", "1d", "week", "1w", "month", "1M", "quarter", "1q",
    "year", "1y",
];

/// Translates a FIND search body. `domain_path` answers a `domains` lookup's id with that
/// domain's path (`root/sub1`), or refuses it (unknown, or outside the caller's subtree).
pub fn translate(
    body: Value,
    domain_path: &dyn Fn(&str) -> Result<String, FindError>,
) -> Result<Value, FindError> {
    let Value::Object(mut top) = body else {
        return Ok(body);
    };
    if let Some(track) = top.remove("trackScores") {
        top.entry("track_scores").or_insert(track);
    }
    let translated = top
        .into_iter()
        .map(|(key, value)| {
            let value = match key.as_str() {
                "query" | "post_filter" | "filter" => clause(value, domain_path, 0)?,
                "aggs" | "aggregations" => aggregations(value, domain_path, 0)?,
                _ => value,
            };
            Ok((key, value))
        })
        .collect::<Result<Map<String, Value>, FindError>>()?;
    Ok(Value::Object(translated))
}

type Resolve<'a> = &'a dyn Fn(&str) -> Result<String, FindError>;

fn too_deep(depth: usize) -> Result<(), FindError> {
    if depth > MAX_DEPTH {
        Err(FindError::invalid("the query is nested too deeply"))
    } else {
        Ok(())
    }
}

/// One query clause (`{"<type>": {...}}`), and the clauses inside it.
fn clause(value: Value, resolve: Resolve<'_>, depth: usize) -> Result<Value, FindError> {
    too_deep(depth)?;
    match value {
        Value::Array(items) => Ok(Value::Array(
            items
                .into_iter()
                .map(|v| clause(v, resolve, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, inner) in map {
                let (key, inner) = clause_entry(key, inner, resolve, depth)?;
                out.insert(key, inner);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other),
    }
}

/// A clause's type and body, translated.
fn clause_entry(
    key: String,
    inner: Value,
    resolve: Resolve<'_>,
    depth: usize,
) -> Result<(String, Value), FindError> {
    let sub = |v: Value| clause(v, resolve, depth + 1);
    Ok(match key.as_str() {
        "filtered" => {
            let mut parts = into_map(inner);
            let mut bool_ = Map::new();
            if let Some(q) = parts.remove("query") {
                bool_.insert("must".into(), Value::Array(vec![sub(q)?]));
            }
            if let Some(f) = parts.remove("filter") {
                bool_.insert("filter".into(), Value::Array(vec![sub(f)?]));
            }
            ("bool".into(), Value::Object(bool_))
        }
        "and" | "or" => {
            let filters = match inner {
                Value::Object(mut m) => m.remove("filters").unwrap_or(Value::Array(Vec::new())),
                other => other,
            };
            let filters = sub(filters)?;
            let bool_ = if key == "and" {
                json!({"filter": filters})
            } else {
                json!({"should": filters, "minimum_should_match": 1})
            };
            ("bool".into(), bool_)
        }
        "not" => {
            let negated = match inner {
                Value::Object(mut m) if m.contains_key("filter") => {
                    m.remove("filter").unwrap_or(Value::Null)
                }
                other => other,
            };
            ("bool".into(), json!({"must_not": [sub(negated)?]}))
        }
        "missing" => {
            let field = into_map(inner).remove("field").unwrap_or(Value::Null);
            (
                "bool".into(),
                json!({"must_not": [{"exists": {"field": field}}]}),
            )
        }
        "terms" => match domains_lookup(&inner) {
            Some(id) => {
                let path = resolve(&id)?;
                ("bool".into(), under_path(&path))
            }
            None => (key, inner),
        },
        // Compound clauses whose parts are clauses.
        "bool" | "constant_score" | "boosting" | "dis_max" | "function_score" | "nested"
        | "has_child" | "has_parent" => (key, sub(inner)?),
        "must" | "filter" | "should" | "must_not" | "positive" | "negative" | "queries"
        | "query" => (key, sub(inner)?),
        _ => (key, inner),
    })
}

/// The domain id of the spec's lookup `terms: {<field>: {index: "domains", id: D, ...}}`.
fn domains_lookup(terms: &Value) -> Option<String> {
    terms.as_object()?.values().find_map(|v| {
        let lookup = v.as_object()?;
        (lookup.get("index")?.as_str()? == DOMAINS_INDEX)
            .then(|| lookup.get("id")?.as_str().map(str::to_owned))
            .flatten()
    })
}

/// Records whose `domain` is `path` or under it (`root/sub1` matches `root/sub1/a`, not
/// `root/sub10`), as the body of a `bool` clause.
pub fn under_path(path: &str) -> Value {
    let path = path.trim_end_matches('/');
    json!({
        "should": [
            {"term": {"domain": path}},
            {"prefix": {"domain": format!("{path}/")}}
        ],
        "minimum_should_match": 1
    })
}

/// `aggs`: each aggregation's body translated, and its sub-aggregations.
fn aggregations(value: Value, resolve: Resolve<'_>, depth: usize) -> Result<Value, FindError> {
    too_deep(depth)?;
    let Value::Object(aggs) = value else {
        return Ok(value);
    };
    let mut out = Map::new();
    for (name, agg) in aggs {
        let Value::Object(agg) = agg else {
            out.insert(name, agg);
            continue;
        };
        let mut translated = Map::new();
        for (kind, body) in agg {
            let body = match kind.as_str() {
                "aggs" | "aggregations" => aggregations(body, resolve, depth + 1)?,
                "date_histogram" => date_histogram(body)?,
                "filter" => clause(body, resolve, depth + 1)?,
                "filters" => clause(body, resolve, depth + 1)?,
                _ => body,
            };
            translated.insert(kind, body);
        }
        out.insert(name, Value::Object(translated));
    }
    Ok(Value::Object(out))
}

fn date_histogram(body: Value) -> Result<Value, FindError> {
    let Value::Object(mut h) = body else {
        return Ok(body);
    };
    if let Some(interval) = h.remove("interval") {
        let calendar = interval
            .as_str()
            .is_some_and(|i| CALENDAR_UNITS.contains(&i));
        let key = if calendar {
            "calendar_interval"
        } else {
            "fixed_interval"
        };
        h.entry(key).or_insert(interval);
    }
    if let Some(zone) = h.remove("pre_zone") {
        h.entry("time_zone").or_insert(zone);
    }
    if let Some(offset) = h.remove("pre_offset") {
        h.entry("offset").or_insert(offset);
    }
    h.remove("pre_zone_adjust_large_interval");
    for gone in ["post_zone", "post_offset"] {
        if h.contains_key(gone) {
            return Err(FindError::invalid(format!(
                "date_histogram.{gone} has no equivalent in OpenSearch; shift the bucket keys \
                 on the client"
            )));
        }
    }
    Ok(Value::Object(h))
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
