//! Helpers shared by the webhook tests; the receiver is testkit's (on the test's own runtime:
//! [`Receiver::start_here`], so a paused clock applies to its reply delays).
#![allow(dead_code)]

use std::path::Path;

use serde_json::{json, Value};
use sinks::webhook::{WebhookConfig, WebhookRequest};
pub use testkit::receiver::{Receiver, Reply};

/// Fast retries, loopback allowed by CIDR (the guard refuses it by default).
/// A dispatcher's config with its dead letters in `dead_letter_dir` and its outbox in
/// `<dead_letter_dir>/outbox`.
pub fn config(dead_letter_dir: &Path) -> WebhookConfig {
    WebhookConfig {
        outbox_dir: dead_letter_dir.join(OUTBOX),
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        timeout_secs: 5,
        allow_cidrs: vec!["127.0.0.1/32".into()],
        dead_letter_dir: dead_letter_dir.to_path_buf(),
        ..WebhookConfig::default()
    }
}

pub fn payload() -> Value {
    json!({
        "resource": {"name": "temp", "path": "temp", "value": 51},
        "timestamp": 1464081794634_u64,
        "rule": {"id": "r-1", "name": "Overheating"},
        "thing": {"thingName": "thing-001", "thingType": "Pump", "domain": "root"}
    })
}

/// A firing built the way the rule engine builds one.
pub fn firing(config: Value, key: &str) -> WebhookRequest {
    let Value::Object(config) = config else {
        panic!("action config must be an object")
    };
    WebhookRequest::from_action_config("r-1", &config, &payload(), key)
        .expect("valid action config")
}

/// Every dead-letter line in `dir`.
/// The outbox's folder below the dead-letter folder of [`config`].
pub const OUTBOX: &str = "outbox";

/// Every dead letter in `dir` (the outbox folder aside).
pub fn dead_letters(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.ends_with(OUTBOX) || path.ends_with(sinks::webhook::replay::REPLAYED_FILE) {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            name.starts_with("webhooks-") && name.ends_with(".jsonl"),
            "{name}"
        );
        for line in std::fs::read_to_string(&path).expect("read").lines() {
            lines.push(serde_json::from_str(line).expect("one JSON object per line"));
        }
    }
    lines
}
