//! The bodies ccstream sends to OpenSearch, checked against OpenSearch's own published API
//! description (no OpenSearch server can be installed here): the spec's FIND example, the
//! README's, and the constructs the dialect translation rewrites, each translated and restricted
//! to a caller's domain exactly as ObservationLambda does, and the indexer's `_bulk` bodies,
//! validated strictly by tests/opensearch_schema.py. The untranslated spec example and a
//! misspelt bulk action must fail, which shows that the validator notices what OpenSearch 2.x
//! refuses.
//!
//! The description is read from `$OPENSEARCH_API_SPEC`, else `../shared/opensearch-api` beside
//! the checkout, else this workplace's `/work/shared/opensearch-api`; it is not copied here.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use serde_json::{json, Map, Value};
use sinks::search::{check_find_query, dialect, restrict_to_domain, FindError};

fn spec_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("OPENSEARCH_API_SPEC").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/opensearch-api")),
        Some(PathBuf::from("/work/shared/opensearch-api")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("spec/namespaces/_core.yaml").is_file())
        .expect(
            "OpenSearch's API description: set OPENSEARCH_API_SPEC to the opensearch-api folder \
             (../shared/opensearch-api)",
        )
}

/// What ObservationLambda sends for `query` from a caller whose domain path is `path`.
fn sent(query: Value, path: &str) -> Value {
    let lookup = |id: &str| -> Result<String, FindError> { Ok(format!("root/{id}")) };
    let translated = dialect::translate(query, &lookup).unwrap();
    check_find_query(&json!({"action": "FIND", "query": translated})).unwrap();
    restrict_to_domain(translated, path)
}

fn range() -> Value {
    json!({"range": {"timestamp": {"gte": 1_460_661_813_164_u64, "lte": 1_460_705_013_163_u64}}})
}

/// Spec 5.1's example request (its spaced-out keys written as Elasticsearch spells them).
fn spec_example() -> Value {
    json!({
        "size": 0,
        "trackScores": false,
        "query": {"bool": {"must": [range(), {"term": {"thingName": "thing-101"}}]}},
        "aggs": {"hist": {"date_histogram": {
            "field": "timestamp", "interval": "30m", "pre_zone": "+01:00",
            "pre_zone_adjust_large_interval": true, "min_doc_count": 1
        }}}
    })
}

/// Runs the validator on search `bodies`: its exit status and output.
fn validate(bodies: &Map<String, Value>) -> (bool, String) {
    validate_as(bodies, "search")
}

/// The same for `bodies` of `kind` (`search`, or `bulk` with NDJSON text values).
fn validate_as(bodies: &Map<String, Value>, kind: &str) -> (bool, String) {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("bodies.json");
    std::fs::write(&file, serde_json::to_vec(bodies).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/opensearch_schema.py"
        ))
        .arg(spec_dir())
        .arg(&file)
        .arg(kind)
        .output()
        .expect("run python3 (scripts/setup-test-deps.sh installs pyyaml)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn what_find_sends_is_valid_for_opensearch() {
    let mut bodies = Map::new();
    for (name, query) in [
        ("spec 5.1 example", spec_example()),
        (
            "README example",
            json!({"size": 0, "query": {"bool": {"must": [
                {"range": {"timestamp": {"gte": 1_764_100_000_000_u64}}},
                {"term": {"thingName": "thing-001"}}]}},
                "aggs": {"temp": {"avg": {"field": "state.reported.temp"}}}}),
        ),
        (
            "filtered, and, or, not, missing",
            json!({"query": {"filtered": {
                "query": range(),
                "filter": {"and": [
                    {"or": {"filters": [{"term": {"thingName": "a"}}, {"term": {"thingName": "b"}}]}},
                    {"not": {"filter": {"missing": {"field": "state.reported.temp"}}}}
                ]}
            }}}),
        ),
        (
            "domains lookup",
            json!({"query": {"bool": {"must": [range(), {"terms": {"thingName": {
                "index": "domains", "type": "thing_mapping", "id": "sub1", "path": "thingNames"
            }}}]}}}),
        ),
        (
            "calendar histogram with offset and sub-aggregation",
            json!({"query": range(), "aggs": {"per_day": {
                "date_histogram": {"field": "timestamp", "interval": "1d", "pre_offset": "2h"},
                "aggs": {"max_temp": {"max": {"field": "state.reported.temp"}}}
            }}}),
        ),
    ] {
        bodies.insert(format!("{name} (root caller)"), sent(query.clone(), "root"));
        bodies.insert(format!("{name} (sub1 caller)"), sent(query, "root/sub1"));
    }
    let (ok, report) = validate(&bodies);
    assert!(ok, "{report}");
    assert_eq!(
        report.lines().filter(|l| l.ends_with(": ok")).count(),
        10,
        "{report}"
    );
}

#[test]
fn the_untranslated_dialect_is_refused_by_the_description() {
    let mut bodies = Map::new();
    bodies.insert("spec example as written".into(), spec_example());
    bodies.insert(
        "filtered".into(),
        json!({"query": {"filtered": {"query": range()}}}),
    );
    let (ok, report) = validate(&bodies);
    assert!(!ok, "{report}");
    for construct in ["'trackScores'", "'pre_zone'", "'filtered'"] {
        assert!(
            report.contains(construct),
            "{construct} not reported:\n{report}"
        );
    }
}

#[test]
fn what_the_indexer_sends_to_bulk_is_valid() {
    use axum::body::Bytes;
    use sinks::search::bulk::{encode, index_name, Item};

    let item = |record: &'static str| Item {
        record: Bytes::from_static(record.as_bytes()),
        index: index_name("observations", 1_764_720_000_000).into(),
        received: tokio::time::Instant::now(),
        replayable: true,
    };
    let body = encode(&[
        item(
            r#"{"thingName":"thing-001","timestamp":1764720000000,"domain":"root/sub1","state":{"reported":{"temp":61}}}"#,
        ),
        // A raw line break between tokens: the encoder keeps the document on one line.
        item("{\"thingName\":\"thing-002\",\n\"timestamp\":1764720000001}"),
    ]);
    let mut bodies = Map::new();
    bodies.insert(
        "indexer".into(),
        Value::String(String::from_utf8(body.to_vec()).unwrap()),
    );
    let (ok, report) = validate_as(&bodies, "bulk");
    assert!(ok, "{report}");

    let mut wrong = Map::new();
    wrong.insert(
        "misspelt action".into(),
        Value::String("{\"index\":{\"_idx\":\"observations\"}}\n{}\n".into()),
    );
    let (ok, report) = validate_as(&wrong, "bulk");
    assert!(!ok && report.contains("'_idx'"), "{report}");
}
