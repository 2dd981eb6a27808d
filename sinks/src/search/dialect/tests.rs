use super::*;
use crate::search::find::{check_find_query, NOT_AUTHORIZED_DOMAIN};

/// Domain paths of a small tree; a caller of `sub1` may search `sub1` and `sub2`.
fn resolve(id: &str) -> Result<String, FindError> {
    match id {
        "sub1" => Ok("root/sub1".into()),
        "sub2" => Ok("root/sub1/sub2".into()),
        other => Err(FindError::not_authorized_domain(other)),
    }
}

fn tr(body: Value) -> Value {
    translate(body, &resolve).unwrap()
}

/// Spec 5.1's example request, with the keys its text spaces out (`date histogram`,
/// `pre zone`, `min doc count`) written as Elasticsearch spells them.
fn spec_example() -> Value {
    json!({
        "size": 0,
        "trackScores": false,
        "query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1_460_661_813_164_u64, "lte": 1_460_705_013_163_u64}}},
            {"term": {"thingName": "thing-101"}}
        ]}},
        "aggs": {"hist": {"date_histogram": {
            "field": "timestamp",
            "interval": "30m",
            "pre_zone": "+01:00",
            "pre_zone_adjust_large_interval": true,
            "min_doc_count": 1
        }}}
    })
}

#[test]
fn the_spec_example_becomes_opensearch_2() {
    let out = tr(spec_example());
    assert_eq!(
        out,
        json!({
            "size": 0,
            "track_scores": false,
            "query": spec_example()["query"],
            "aggs": {"hist": {"date_histogram": {
                "field": "timestamp",
                "fixed_interval": "30m",
                "time_zone": "+01:00",
                "min_doc_count": 1
            }}}
        })
    );
    check_find_query(&json!({"action": "FIND", "query": out})).unwrap();
}

#[test]
fn the_current_dialect_passes_unchanged() {
    let current = json!({
        "size": 10,
        "track_scores": true,
        "query": {"bool": {
            "must": [{"range": {"timestamp": {"gte": 1}}}],
            "filter": [{"terms": {"thingName": ["a", "b"]}}],
            "must_not": [{"exists": {"field": "x"}}]
        }},
        "aggs": {"per_day": {
            "date_histogram": {"field": "timestamp", "calendar_interval": "1d", "time_zone": "UTC"},
            "aggs": {"t": {"avg": {"field": "temp"}}}
        }},
        "sort": [{"timestamp": "desc"}]
    });
    assert_eq!(tr(current.clone()), current);
}

#[test]
fn filtered_and_or_not_missing_become_bool() {
    let out = tr(json!({"query": {"filtered": {
        "query": {"range": {"timestamp": {"gte": 1}}},
        "filter": {"and": [
            {"or": {"filters": [{"term": {"a": 1}}, {"term": {"a": 2}}]}},
            {"not": {"filter": {"missing": {"field": "temp"}}}}
        ]}
    }}}));
    assert_eq!(
        out,
        json!({"query": {"bool": {
            "must": [{"range": {"timestamp": {"gte": 1}}}],
            "filter": [{"bool": {"filter": [
                {"bool": {"should": [{"term": {"a": 1}}, {"term": {"a": 2}}],
                          "minimum_should_match": 1}},
                {"bool": {"must_not": [{"bool": {"must_not": [{"exists": {"field": "temp"}}]}}]}}
            ]}}]
        }}})
    );
    check_find_query(&json!({"action": "FIND", "query": out})).unwrap();
}

#[test]
fn intervals_are_calendar_for_one_unit_and_fixed_otherwise() {
    for (interval, key) in [
        ("1d", "calendar_interval"),
        ("month", "calendar_interval"),
        ("1M", "calendar_interval"),
        ("1h", "calendar_interval"),
        ("30m", "fixed_interval"),
        ("2h", "fixed_interval"),
        ("90s", "fixed_interval"),
    ] {
        let out = tr(
            json!({"aggs": {"h": {"date_histogram": {"field": "timestamp",
                                                              "interval": interval,
                                                              "pre_offset": "1h"}}}}),
        );
        assert_eq!(
            out["aggs"]["h"]["date_histogram"],
            json!({"field": "timestamp", key: interval, "offset": "1h"}),
            "{interval}"
        );
    }
    let nested = tr(json!({"aggs": {"a": {"terms": {"field": "thingName"},
        "aggs": {"h": {"date_histogram": {"field": "timestamp", "interval": "week"}}}}}}));
    assert_eq!(
        nested["aggs"]["a"]["aggs"]["h"]["date_histogram"]["calendar_interval"],
        "week"
    );
}

#[test]
fn post_zone_and_post_offset_are_refused_by_name() {
    for gone in ["post_zone", "post_offset"] {
        let e = translate(
            json!({"aggs": {"h": {"date_histogram": {"interval": "1d", gone: "+01:00"}}}}),
            &resolve,
        )
        .unwrap_err();
        assert!(e.message.contains(gone), "{e}");
    }
}

#[test]
fn the_domains_lookup_becomes_a_filter_on_the_domain_path_within_the_callers_subtree() {
    let lookup = |id: &str| {
        json!({"query": {"bool": {"must": [
            {"range": {"timestamp": {"gte": 1}}},
            {"terms": {"thingName": {"index": "domains", "type": "thing_mapping",
                                     "id": id, "path": "thingNames"}}}
        ]}}})
    };
    let out = tr(lookup("sub2"));
    assert_eq!(
        out["query"]["bool"]["must"][1],
        json!({"bool": {"should": [
            {"term": {"domain": "root/sub1/sub2"}},
            {"prefix": {"domain": "root/sub1/sub2/"}}
        ], "minimum_should_match": 1}})
    );
    check_find_query(&json!({"action": "FIND", "query": out})).unwrap();
    let e = translate(lookup("other"), &resolve).unwrap_err();
    assert_eq!(e.key, NOT_AUTHORIZED_DOMAIN);
    // A lookup into any other index is left for the checks to refuse.
    let foreign = json!({"query": {"terms": {"thingName": {"index": "secrets", "id": "x",
                                                           "path": "p"}}}});
    assert_eq!(tr(foreign.clone()), foreign);
}
