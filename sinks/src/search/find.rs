//! Observation FIND (spec 5.1), the pure part: the checks of spec 5.1.1.1 and the restriction
//! of a query to the caller's domain subtree. No I/O; the search itself is
//! [`SearchClient::search`](super::SearchClient::search).
//!
//! The binary runs, for `{"action": "FIND", "query": {...}}`:
//! [`check_find_query`] on the payload (a [`FindError`] becomes the spec's `errorMessage`),
//! then [`restrict_to_domain`] on `payload.query` with the caller's domain, then the search.

use serde_json::{json, Map, Value};

use super::config::defaults;
use super::dialect;

/// `messageKey` of a missing property (spec 1.2).
pub const PROPERTY_REQUIRED: &str = "PROPERTY_REQUIRED";
/// `messageKey` of a query that is invalid or breaks the rules of spec 5.1.1.1.
pub const INVALID_ARGUMENTS: &str = "INVALID_ARGUMENTS";

/// `messageKey` of a domain lookup outside the caller's subtree (spec 1.2.1).
pub const NOT_AUTHORIZED_DOMAIN: &str = "NOT_AUTHORIZED_DOMAIN";

/// The domain whose callers see every observation.
pub const ROOT_DOMAIN: &str = "root";

/// Deepest JSON nesting walked; a deeper query is refused rather than walked without bound.
const MAX_DEPTH: usize = 100;

/// Why a FIND payload is refused: the spec's `messageKey`, `property` and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} ({property}): {message}")]
pub struct FindError {
    /// [`PROPERTY_REQUIRED`], [`INVALID_ARGUMENTS`] or [`NOT_AUTHORIZED_DOMAIN`].
    pub key: &'static str,
    /// Always `query` (spec 5.1.1.3).
    pub property: &'static str,
    /// What is wrong, for the caller.
    pub message: String,
}

impl FindError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            key: INVALID_ARGUMENTS,
            property: "query",
            message: message.into(),
        }
    }

    /// A `domains` lookup of a domain the caller may not search.
    pub fn not_authorized_domain(domain: &str) -> Self {
        Self {
            key: NOT_AUTHORIZED_DOMAIN,
            property: "query",
            message: format!("not authorized for domain {domain}"),
        }
    }
}

/// FIND's pure part as the binary runs it on `{"action": "FIND", "query": {...}}`: the query
/// translated from the spec's dialect ([`dialect::translate`], with `domain_path` answering its
/// `domains` lookups), checked ([`check_find_query`]) and restricted to the caller's domain
/// subtree at `caller_path` ([`restrict_to_domain`]). The result is the search body to send.
/// One function so that the fuzz target (`fuzz/`) checks exactly what the service sends.
pub fn prepare_find(
    payload: &Map<String, Value>,
    caller_path: &str,
    domain_path: &dyn Fn(&str) -> Result<String, FindError>,
) -> Result<Value, FindError> {
    let query = payload
        .get("query")
        .cloned()
        .map(|q| dialect::translate(q, domain_path))
        .transpose()?;
    // The checks read nothing but `query`.
    let checked = json!({ "query": query });
    check_find_query(&checked)?;
    let query = match checked {
        Value::Object(mut map) => map.remove("query").unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok(restrict_to_domain(query, caller_path))
}

/// Checks a FIND payload against spec 5.1.1.1, for searches on the default alias
/// (`observations`). See [`check_find_query_for`].
pub fn check_find_query(payload: &Value) -> Result<(), FindError> {
    check_find_query_for(payload, defaults::ALIAS)
}

/// Checks a FIND payload (`{"action": "FIND", "query": {...}}`) against spec 5.1.1.1:
///
/// - `query` is required ([`PROPERTY_REQUIRED`]) and is an object (the search body);
/// - its `query` section contains a `range` clause on `timestamp` with a `gte` key, in a place
///   where it restricts the results: the query itself, or (recursively) `bool.must`,
///   `bool.filter`, `constant_score.filter`, `filtered.query`/`filtered.filter` (Elasticsearch
///   2.x) or `boosting.positive`. A range under `should` or `must_not` bounds nothing, and the
///   rule exists so that every search is bounded in time;
/// - no `global` aggregation at any level: it would aggregate over every document of the
///   index, outside the query and so outside the caller's domain.
///
/// ccstream also refuses, as INVALID_ARGUMENTS:
///
/// - scripts anywhere (any key `script*` or `*_script`: `script`, `_script` sorts,
///   `script_score`, `script_fields`, `scripted_metric`, `bucket_script`, terms_set's
///   `minimum_should_match_script`; also `bucket_selector`, `moving_fn`, `runtime_mappings`, a
///   `lang` naming a script language) and `search_pipeline`: a script runs code on the cluster
///   that every tenant shares;
/// - the `wrapper` query: its base64 body would hide all of the above from these checks;
/// - `suggest`: suggesters read the whole index and ignore the query, so the domain
///   restriction would not apply to them;
/// - lookups that read another index than `alias`: `terms` lookups, `more_like_this` items,
///   `geo_shape` indexed shapes and `percolate` documents naming an `index`/`_index`. The
///   spec's example looks up the caller's things in a `domains` index (`type:
///   'thing_mapping'`); that index belonged to the earlier platform. Here every record carries
///   its `domain` and FIND restricts results to the caller's subtree itself
///   ([`restrict_to_domain`]); a lookup in an arbitrary index would read data (another
///   tenant's, or the cluster's own) that the restriction does not cover. A `term` on `domain`
///   narrows a search to a subdomain instead.
pub fn check_find_query_for(payload: &Value, alias: &str) -> Result<(), FindError> {
    let body = match payload.get("query") {
        None | Some(Value::Null) => {
            return Err(FindError {
                key: PROPERTY_REQUIRED,
                property: "query",
                message: "query is required".to_owned(),
            })
        }
        Some(Value::Object(body)) => body,
        Some(_) => {
            return Err(FindError::invalid(
                "query must be an object: the body of a search (Query DSL)",
            ))
        }
    };
    if body.contains_key("suggest") {
        return Err(FindError::invalid(
            "suggest is not allowed: suggesters ignore the query and the domain restriction",
        ));
    }
    for (key, value) in body {
        walk(key, value, 1, alias)?;
    }
    match body.get("query") {
        Some(query @ Value::Object(_)) if bounds_time(query, 0) => Ok(()),
        Some(Value::Object(_)) => Err(FindError::invalid(
            "the query section must contain a range clause on timestamp with a gte key, in the \
             query itself or under bool.must or bool.filter (spec 5.1.1.1)",
        )),
        Some(_) => Err(FindError::invalid("query.query must be an object")),
        None => Err(FindError::invalid(
            "query.query is required: it must contain a range clause on timestamp with a gte \
             key (spec 5.1.1.1)",
        )),
    }
}

/// Keys that carry a script without saying so in their name (see [`is_script_key`]).
const SCRIPT_KEYS: &[&str] = &[
    "bucket_selector",
    "moving_fn",
    "runtime_mappings",
    "search_pipeline",
];

/// `script`, `script_score`, `script_fields`, `scripted_metric`, `_script` (sort),
/// `bucket_script`, `minimum_should_match_script` (terms_set), `map_script`, ... and
/// [`SCRIPT_KEYS`]. A document field with such a name cannot be queried through FIND; that is
/// the price of not missing a script.
fn is_script_key(key: &str) -> bool {
    key.starts_with("script") || key.ends_with("_script") || SCRIPT_KEYS.contains(&key)
}

/// Values of `lang` that name a script language.
const SCRIPT_LANGS: &[&str] = &[
    "painless",
    "expression",
    "mustache",
    "groovy",
    "javascript",
    "python",
    "java",
];

/// Clauses that can read documents of another index.
const LOOKUP_CLAUSES: &[&str] = &[
    "terms",
    "more_like_this",
    "geo_shape",
    "shape",
    "percolate",
    "indexed_shape",
];

/// Walks every member of the search body: scripts, `wrapper`, global aggregations and lookups.
fn walk(key: &str, value: &Value, depth: usize, alias: &str) -> Result<(), FindError> {
    if depth > MAX_DEPTH {
        return Err(FindError::invalid(format!(
            "query is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    if is_script_key(key) {
        return Err(FindError::invalid(format!(
            "scripts are not allowed in a query (found {key:?})"
        )));
    }
    if key == "lang"
        && value
            .as_str()
            .is_some_and(|lang| SCRIPT_LANGS.contains(&lang.to_ascii_lowercase().as_str()))
    {
        return Err(FindError::invalid(format!(
            "scripts are not allowed in a query (found lang {value})"
        )));
    }
    if key == "wrapper" {
        return Err(FindError::invalid(
            "the wrapper query is not allowed: write the query itself",
        ));
    }
    if key == "aggs" || key == "aggregations" {
        if let Value::Object(aggs) = value {
            for (name, agg) in aggs {
                if agg.get("global").is_some() {
                    return Err(FindError::invalid(format!(
                        "global aggregations are not allowed (spec 5.1.1.1): aggregation {name:?}"
                    )));
                }
            }
        }
    }
    if LOOKUP_CLAUSES.contains(&key) {
        let found = if key == "terms" {
            // A lookup is `{"terms": {<field>: {"index": ..., "id": ..., "path": ...}}}`; a field
            // named `index` with a list of values is a plain terms query.
            value.as_object().and_then(|fields| {
                fields
                    .values()
                    .filter_map(|lookup| lookup.get("index"))
                    .find_map(|index| not_alias(index, alias))
            })
        } else {
            foreign_index(value, alias, depth)
        };
        if let Some(index) = found {
            return Err(FindError::invalid(format!(
                "{key} may not read index {index:?}: only {alias:?} can be looked up; FIND \
                 restricts results to the caller's domain itself (use a term on domain to \
                 narrow it)"
            )));
        }
    }
    match value {
        Value::Object(members) => {
            for (key, value) in members {
                walk(key, value, depth + 1, alias)?;
            }
        }
        Value::Array(values) => {
            for value in values {
                // Array elements carry no key: walk their members.
                if let Value::Object(members) = value {
                    for (key, value) in members {
                        walk(key, value, depth + 2, alias)?;
                    }
                } else if let Value::Array(_) = value {
                    walk("", value, depth + 1, alias)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The first `index`/`_index` named below `value` that is not `alias`.
fn foreign_index(value: &Value, alias: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::Object(members) => members.iter().find_map(|(key, value)| {
            if key == "index" || key == "_index" {
                if let Some(name) = not_alias(value, alias) {
                    return Some(name);
                }
            }
            foreign_index(value, alias, depth + 1)
        }),
        Value::Array(values) => values
            .iter()
            .find_map(|value| foreign_index(value, alias, depth + 1)),
        _ => None,
    }
}

/// The index named by `value` (a name or a list of names) that is not `alias`.
fn not_alias(value: &Value, alias: &str) -> Option<String> {
    let names: Vec<&Value> = match value {
        Value::Array(names) => names.iter().collect(),
        other => vec![other],
    };
    names
        .into_iter()
        .find(|name| name.as_str() != Some(alias))
        .map(|name| {
            name.as_str()
                .map_or_else(|| name.to_string(), str::to_owned)
        })
}

/// Whether `clause` (a query clause) restricts results to a `timestamp` range with `gte`.
fn bounds_time(clause: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let Value::Object(members) = clause else {
        return false;
    };
    let any = |parts: &[&str], of: &Value| {
        parts.iter().any(|part| match of.get(part) {
            Some(Value::Array(clauses)) => clauses.iter().any(|c| bounds_time(c, depth + 1)),
            Some(c) => bounds_time(c, depth + 1),
            None => false,
        })
    };
    members.iter().any(|(key, value)| match key.as_str() {
        "range" => value
            .get("timestamp")
            .and_then(|range| range.get("gte"))
            .is_some_and(|gte| !gte.is_null()),
        "bool" => any(&["must", "filter"], value),
        "constant_score" => any(&["filter"], value),
        "filtered" => any(&["query", "filter"], value),
        "boosting" => any(&["positive"], value),
        _ => false,
    })
}

/// Prepares a checked search body for OpenSearch and the caller's domain:
///
/// - the spec's camelCase `trackScores` becomes `track_scores` (an explicit `track_scores`
///   wins);
/// - for a caller below `root`, the query becomes
///   `{"bool": {"must": [<query>], "filter": [<domain is the path or below it>]}}`: a `term` on
///   `domain` or a `prefix` on `domain` with `<path>/`, so `root/sub1` sees `root/sub1` and
///   `root/sub1/a` but not `root/sub10`. Callers in `root` see everything: no filter.
///
/// Everything else (`size`, `from`, `aggs`, `sort`, `_source`, ...) is kept. Aggregations run
/// over the restricted hits (global ones were refused by [`check_find_query`]).
pub fn restrict_to_domain(search_body: Value, domain_path: &str) -> Value {
    let mut body = match search_body {
        Value::Object(body) => body,
        _ => Map::new(),
    };
    if let Some(track) = body.remove("trackScores") {
        body.entry("track_scores").or_insert(track);
    }
    let path = domain_path.trim_end_matches('/');
    if path == ROOT_DOMAIN {
        return Value::Object(body);
    }
    let query = body
        .remove("query")
        .unwrap_or_else(|| json!({"match_all": {}}));
    body.insert(
        "query".to_owned(),
        json!({
            "bool": {
                "must": [query],
                "filter": [{
                    "bool": {
                        "should": [
                            {"term": {"domain": path}},
                            {"prefix": {"domain": format!("{path}/")}}
                        ],
                        "minimum_should_match": 1
                    }
                }]
            }
        }),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's 5.1 example, made into valid JSON (its copy has OCR gaps and spaces for
    /// underscores).
    fn spec_example() -> Value {
        json!({
            "action": "FIND",
            "query": {
                "size": 0,
                "trackScores": false,
                "query": {
                    "bool": {
                        "must": [
                            {"range": {"timestamp": {"gte": 1460661813164_u64, "lte": 1460705013163_u64}}},
                            {"term": {"thingName": "thingName"}}
                        ]
                    }
                },
                "aggs": {
                    "hist": {
                        "date_histogram": {
                            "field": "timestamp",
                            "interval": "30m",
                            "pre_zone": "+01:00",
                            "pre_zone_adjust_large_interval": true,
                            "min_doc_count": 1
                        }
                    }
                }
            }
        })
    }

    fn find(query: Value) -> Value {
        json!({"action": "FIND", "query": query})
    }

    fn with_range(extra: Value) -> Value {
        let mut body = json!({
            "query": {"range": {"timestamp": {"gte": 1}}}
        });
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        find(body)
    }

    fn invalid(payload: &Value) -> FindError {
        let err = check_find_query(payload).expect_err("refused");
        assert_eq!(err.key, INVALID_ARGUMENTS, "{err}");
        assert_eq!(err.property, "query");
        err
    }

    #[test]
    fn the_spec_example_passes() {
        check_find_query(&spec_example()).expect("valid");
    }

    #[test]
    fn missing_query_is_property_required() {
        for payload in [
            json!({"action": "FIND"}),
            json!({"action": "FIND", "query": null}),
        ] {
            let err = check_find_query(&payload).expect_err("refused");
            assert_eq!(err.key, PROPERTY_REQUIRED);
            assert_eq!(err.property, "query");
        }
        let err = invalid(&json!({"query": "timestamp:[1 TO *]"}));
        assert!(err.message.contains("object"), "{err}");
    }

    #[test]
    fn a_timestamp_range_with_gte_is_required() {
        // No query section at all.
        let err = invalid(&find(json!({"size": 10})));
        assert!(err.message.contains("gte"), "{err}");
        // A query without a range.
        let err = invalid(&find(json!({"query": {"term": {"thingName": "t"}}})));
        assert!(err.message.contains("range clause on timestamp"), "{err}");
        // A range on another field.
        invalid(&find(json!({"query": {"range": {"temp": {"gte": 1}}}})));
        // A range on timestamp without gte.
        let err = invalid(&find(
            json!({"query": {"range": {"timestamp": {"gt": 1, "lte": 2}}}}),
        ));
        assert!(err.message.contains("gte"), "{err}");
        invalid(&find(
            json!({"query": {"range": {"timestamp": {"gte": null}}}}),
        ));
        // A range where it bounds nothing.
        invalid(&find(json!({"query": {"bool": {
            "should": [{"range": {"timestamp": {"gte": 1}}}],
            "must_not": [{"range": {"timestamp": {"gte": 1}}}]
        }}})));
        // Ranges that bound.
        for query in [
            json!({"range": {"timestamp": {"gte": "now-1d"}}}),
            json!({"bool": {"filter": {"range": {"timestamp": {"gte": 1}}}}}),
            json!({"constant_score": {"filter": {"range": {"timestamp": {"gte": 1}}}}}),
            json!({"filtered": {"filter": {"range": {"timestamp": {"gte": 1}}}}}),
            // Deep in bool.must.
            json!({"bool": {"must": [
                {"term": {"thingName": "t"}},
                {"bool": {"must": [
                    {"bool": {"filter": [{"match_all": {}}, {"range": {"timestamp": {"gte": 1, "lt": 9}}}]}}
                ]}}
            ]}}),
        ] {
            check_find_query(&find(json!({"query": query.clone()})))
                .unwrap_or_else(|e| panic!("{query}: {e}"));
        }
    }

    #[test]
    fn global_aggregations_are_refused_at_any_level() {
        let err = invalid(&with_range(json!({"aggs": {"all": {"global": {}}}})));
        assert!(
            err.message.contains("global") && err.message.contains("\"all\""),
            "{err}"
        );
        invalid(&with_range(json!({"aggregations": {
            "by_thing": {
                "terms": {"field": "thingName"},
                "aggs": {"inner": {"date_histogram": {"field": "timestamp"},
                    "aggregations": {"everything": {"global": {}, "aggs": {}}}}}
            }
        }})));
        // A field or aggregation merely named global is fine.
        check_find_query(&with_range(
            json!({"aggs": {"global": {"terms": {"field": "global"}}}}),
        ))
        .expect("valid");
    }

    #[test]
    fn scripts_are_refused_wherever_they_are() {
        let cases = [
            json!({"script_fields": {"x": {"script": {"source": "1"}}}}),
            json!({"sort": [{"_script": {"type": "number", "script": "1"}}]}),
            json!({"aggs": {"s": {"scripted_metric": {"map_script": "x"}}}}),
            json!({"aggs": {"h": {"terms": {"field": "thingName"},
                "aggs": {"b": {"bucket_script": {"buckets_path": {}, "script": "1"}}}}}}),
            json!({"aggs": {"t": {"terms": {"script": {"source": "doc['a']", "lang": "painless"}}}}}),
            json!({"runtime_mappings": {"f": {"type": "long"}}}),
            json!({"post_filter": {"bool": {"filter": [{"script": {"script": "true"}}]}}}),
            json!({"search_pipeline": {"request_processors": []}}),
            json!({"post_filter": {"terms_set": {"thingName": {"terms": ["a"],
                "minimum_should_match_script": {"source": "1"}}}}}),
            json!({"aggs": {"x": {"terms": {"field": "a", "lang": "Painless"}}}}),
        ];
        for extra in cases {
            let err = invalid(&with_range(extra.clone()));
            assert!(err.message.contains("script"), "{extra}: {err}");
        }
        // In the query section too.
        let err = invalid(&find(json!({"query": {"bool": {
            "must": [{"range": {"timestamp": {"gte": 1}}}],
            "should": [{"function_score": {"query": {"match_all": {}},
                "functions": [{"script_score": {"script": {"source": "1"}}}]}}]
        }}})));
        assert!(err.message.contains("script"), "{err}");
        invalid(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"wrapper": {"query": "eyJtYXRjaF9hbGwiOnt9fQ=="}}
        ]}}})));
        invalid(&with_range(
            json!({"suggest": {"s": {"text": "x", "term": {"field": "thingName"}}}}),
        ));
        // A `lang` field in a document is not a script.
        check_find_query(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"term": {"lang": "en"}}
        ]}}})))
        .expect("valid");
    }

    #[test]
    fn lookups_may_read_only_the_alias() {
        // The spec's example: a terms lookup in the earlier platform's `domains` index.
        let err = invalid(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"terms": {"thingName": {"index": "domains", "type": "thing_mapping", "id": "root", "path": "thingNames"}}}
        ]}}})));
        assert!(err.message.contains("\"domains\""), "{err}");
        invalid(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"more_like_this": {"fields": ["a"], "like": [{"_index": ".opendistro_security", "_id": "1"}]}}
        ]}}})));
        invalid(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"geo_shape": {"loc": {"indexed_shape": {"index": "shapes", "id": "x", "path": "s"}}}}
        ]}}})));
        // The alias itself, and plain terms, are fine.
        check_find_query(&find(json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"terms": {"thingName": {"index": "observations", "id": "abc", "path": "thingName"}}},
            {"terms": {"thingName": ["a", "b"]}}
        ]}}})))
        .expect("valid");
        check_find_query_for(
            &find(json!({"query": {"bool": {"must": [
                {"range": {"timestamp": {"gte": 1}}},
                {"terms": {"thingName": {"index": "obs", "id": "abc", "path": "thingName"}}}
            ]}}})),
            "obs",
        )
        .expect("valid for alias obs");
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut query = json!({"range": {"timestamp": {"gte": 1}}});
        for _ in 0..200 {
            query = json!({"bool": {"must": [query]}});
        }
        let err = invalid(&find(json!({"query": query})));
        assert!(err.message.contains("nested"), "{err}");
    }

    #[test]
    fn root_callers_get_no_filter() {
        let body = spec_example()["query"].clone();
        let out = restrict_to_domain(body.clone(), "root");
        let mut expected = body;
        let map = expected.as_object_mut().expect("object");
        let track = map.remove("trackScores").expect("present");
        map.insert("track_scores".into(), track);
        assert_eq!(out, expected);
        assert!(out.get("trackScores").is_none());
    }

    #[test]
    fn sub_domain_callers_get_their_subtree() {
        let body = json!({
            "size": 5,
            "from": 10,
            "sort": [{"timestamp": "desc"}],
            "_source": ["thingName"],
            "trackScores": true,
            "query": {"range": {"timestamp": {"gte": 1}}},
            "aggs": {"n": {"value_count": {"field": "thingName"}}}
        });
        let out = restrict_to_domain(body, "root/sub1");
        assert_eq!(
            out,
            json!({
                "size": 5,
                "from": 10,
                "sort": [{"timestamp": "desc"}],
                "_source": ["thingName"],
                "track_scores": true,
                "aggs": {"n": {"value_count": {"field": "thingName"}}},
                "query": {"bool": {
                    "must": [{"range": {"timestamp": {"gte": 1}}}],
                    "filter": [{"bool": {
                        "should": [
                            {"term": {"domain": "root/sub1"}},
                            {"prefix": {"domain": "root/sub1/"}}
                        ],
                        "minimum_should_match": 1
                    }}]
                }}
            })
        );
        // A trailing slash changes nothing; an explicit track_scores wins.
        let out = restrict_to_domain(
            json!({"track_scores": false, "trackScores": true, "query": {"match_all": {}}}),
            "root/sub1/",
        );
        assert_eq!(out["track_scores"], false);
        assert_eq!(
            out["query"]["bool"]["filter"][0]["bool"]["should"][1]["prefix"]["domain"],
            "root/sub1/"
        );
    }
}
