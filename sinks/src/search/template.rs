//! The index template, built as data: every new daily index `<index_prefix>*` gets the
//! observation mappings and the alias FIND searches.

use serde_json::{json, Value};

use super::config::SearchConfig;

/// Priority of our template. OpenSearch refuses a second composable template with the same
/// priority and overlapping patterns; a high, fixed value keeps ours ahead of broad ones
/// (`*`) without guessing at other deployments' numbers.
pub const TEMPLATE_PRIORITY: u64 = 200;

/// The template's name: the alias (`PUT _index_template/observations`).
pub fn template_name(config: &SearchConfig) -> &str {
    &config.alias
}

/// The body of `PUT _index_template/<alias>`.
///
/// - `thingName` and `domain` (the domain path, `root/sub1`) are `keyword`: exact terms, and
///   FIND's domain restriction is a `term` and `prefix` on `domain`.
/// - `timestamp` is a `date` read as epoch milliseconds, which is what ccstream writes and what
///   the spec's FIND range uses (5.1); an ISO 8601 string from a device that sends its own
///   timestamp is accepted as a second format rather than refused as a mapping conflict.
/// - Everything else is mapped dynamically, as device payloads differ by thing type.
pub fn index_template(config: &SearchConfig) -> Value {
    json!({
        "index_patterns": [format!("{}*", config.index_prefix)],
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "mappings": {
                "dynamic": true,
                "properties": {
                    "thingName": {"type": "keyword"},
                    "timestamp": {"type": "date", "format": "epoch_millis||strict_date_optional_time"},
                    "domain": {"type": "keyword"}
                }
            },
            "aliases": {
                config.alias.clone(): {}
            }
        },
        "_meta": {
            "managed_by": "ccstream",
            "description": "Observation records: daily indices, alias for Observation FIND (spec 5.1)"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_covers_the_prefix_and_adds_the_alias() {
        let t = index_template(&SearchConfig::default());
        assert_eq!(t["index_patterns"], json!(["observations-*"]));
        let props = &t["template"]["mappings"]["properties"];
        assert_eq!(props["thingName"]["type"], "keyword");
        assert_eq!(props["domain"]["type"], "keyword");
        assert_eq!(props["timestamp"]["type"], "date");
        assert!(props["timestamp"]["format"]
            .as_str()
            .is_some_and(|f| f.starts_with("epoch_millis")));
        assert_eq!(t["template"]["mappings"]["dynamic"], true);
        assert_eq!(t["template"]["aliases"], json!({"observations": {}}));
        assert_eq!(template_name(&SearchConfig::default()), "observations");
    }
}
