//! Observation FIND (spec 5.1) as a tenant sends it: dialect translation, the checks of spec
//! 5.1.1.1 and the restriction to the caller's domain subtree, exactly as the service prepares
//! the search body (`sinks::search::prepare_find`). Whatever the query, the body sent must
//! carry the caller's domain filter around the whole query, pass the checks again, and hold no
//! script, global aggregation, suggester, wrapper or lookup in another index.
#![no_main]

use arbitrary::Arbitrary;
use ccstream_fuzz::Json;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use sinks::search::{check_find_query, prepare_find, FindError};

/// A body built around a time range, so that the checks pass often.
#[derive(Debug, Arbitrary)]
struct Shaped {
    clauses: Vec<Json>,
    range_in: u8,
    gte: Json,
    aggs: Option<Json>,
    rest: Vec<(ccstream_fuzz::Name, Json)>,
}

impl Shaped {
    fn payload(self) -> Map<String, Value> {
        let range = json!({"range": {"timestamp": {"gte": self.gte.to_value()}}});
        let mut clauses: Vec<Value> = self.clauses.iter().map(Json::to_value).collect();
        let at = usize::from(self.range_in) % (clauses.len() + 1);
        clauses.insert(at, range);
        let section = ["must", "filter", "should", "must_not"][usize::from(self.range_in) % 4];
        let mut body = Map::new();
        body.insert("query".into(), json!({"bool": {section: clauses}}));
        if let Some(aggs) = self.aggs {
            body.insert("aggs".into(), aggs.to_value());
        }
        for (k, v) in self.rest {
            body.insert(k.0, v.to_value());
        }
        let mut payload = Map::new();
        payload.insert("action".into(), Value::from("FIND"));
        payload.insert("query".into(), Value::Object(body));
        payload
    }
}

const CALLERS: &[&str] = &["root", "root/sub1", "root/sub1/sub2", "root/sub10"];

// The first byte picks the caller and the input's kind: even, the rest is a raw FIND payload
// (the corpus's real queries); odd, it drives the structure-aware generator.
fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let caller = choice / 2;
    let payload = if choice % 2 == 0 {
        match serde_json::from_slice::<Value>(rest) {
            Ok(Value::Object(map)) => map,
            _ => return,
        }
    } else {
        let Ok(shaped) = Shaped::arbitrary_take_rest(arbitrary::Unstructured::new(rest)) else {
            return;
        };
        shaped.payload()
    };
    let caller_path = CALLERS[usize::from(caller) % CALLERS.len()];
    // `domains` lookups: a domain inside the caller's subtree answers with its path.
    let lookup = |id: &str| -> Result<String, FindError> {
        let path = format!("root/{id}");
        if caller_path == "root"
            || path.starts_with(&format!("{caller_path}/"))
            || path == caller_path
        {
            Ok(path)
        } else {
            Err(FindError::not_authorized_domain(id))
        }
    };
    let Ok(body) = prepare_find(&payload, caller_path, &lookup) else {
        return;
    };
    let Value::Object(map) = &body else {
        panic!("the search body is not an object: {body}");
    };
    if caller_path != "root" {
        let filter = &map["query"]["bool"]["filter"];
        let expected = json!([{
            "bool": {
                "should": [
                    {"term": {"domain": caller_path}},
                    {"prefix": {"domain": format!("{caller_path}/")}}
                ],
                "minimum_should_match": 1
            }
        }]);
        assert_eq!(filter, &expected, "domain filter missing: {body}");
        let query = map["query"].as_object().expect("query");
        assert_eq!(
            query.len(),
            1,
            "the query holds more than the restriction: {body}"
        );
        let inner = map["query"]["bool"].as_object().expect("bool");
        assert_eq!(
            inner.len(),
            2,
            "the restriction holds more than must and filter: {body}"
        );
    }
    // The restriction wraps the query three levels deeper: a query near the depth limit may
    // fail the depth check the second time, nothing else may.
    if let Err(e) = check_find_query(&json!({"query": body.clone()})) {
        assert!(
            e.message.contains("deep"),
            "the body sent fails the checks ({e}): {body}"
        );
    }
    assert!(
        !map.contains_key("suggest"),
        "suggest sent to the search engine: {body}"
    );
    forbidden(&body, &body);
    for section in ["aggs", "aggregations"] {
        if let Some(aggs) = map.get(section) {
            no_global(aggs, &body);
        }
    }
});

/// No key that runs code or reads outside the query: checked independently of the service's
/// own walk.
fn forbidden(value: &Value, root: &Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let k = key.as_str();
                assert!(
                    !(k.starts_with("script")
                        || k.ends_with("_script")
                        || k == "wrapper"
                        || k == "runtime_mappings"),
                    "{k} sent to the search engine: {value}\nin {root}"
                );
                if LOOKUP_QUERIES.contains(&k) {
                    no_foreign_document(v, root);
                }
                forbidden(v, root);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| forbidden(v, root)),
        _ => {}
    }
}

/// No `global` aggregation at any level of `aggs` (it would aggregate outside the query).
fn no_global(aggs: &Value, root: &Value) {
    let Value::Object(named) = aggs else { return };
    for agg in named.values() {
        let Value::Object(agg) = agg else { continue };
        assert!(
            !agg.contains_key("global"),
            "a global aggregation sent: {root}"
        );
        for sub in ["aggs", "aggregations"] {
            if let Some(sub) = agg.get(sub) {
                no_global(sub, root);
            }
        }
    }
}

/// Queries that read a document by index and id (OpenSearch 2.x): terms lookups,
/// more_like_this items (`mlt` is its old alias), indexed shapes, percolated documents.
const LOOKUP_QUERIES: &[&str] = &["terms", "more_like_this", "mlt", "geo_shape", "percolate"];

/// Inside a lookup query, every document named by index and id is in the observations alias.
fn no_foreign_document(value: &Value, root: &Value) {
    match value {
        Value::Object(map) => {
            let names_document = map.contains_key("id") || map.contains_key("_id");
            for key in ["index", "_index"] {
                if let (Some(index), true) = (map.get(key), names_document) {
                    assert!(
                        matches!(index, Value::String(s) if s == "observations"),
                        "a lookup in index {index} sent to the search engine: {root}"
                    );
                }
            }
            map.values().for_each(|v| no_foreign_document(v, root));
        }
        Value::Array(items) => items.iter().for_each(|v| no_foreign_document(v, root)),
        _ => {}
    }
}
