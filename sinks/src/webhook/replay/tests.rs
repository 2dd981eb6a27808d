use super::*;
use crate::webhook::dead_letter::{dead_letter_path, DeadLetter};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn letter(ms: u64, rule: &str, url: &str, reason: &str, key: &str) -> DeadLetter {
    DeadLetter {
        time: at(ms),
        rule_id: rule.into(),
        url: url.into(),
        method: "PUT".into(),
        headers: vec![("x-token".into(), "s3cret".into())],
        idempotency_key: key.into(),
        reason: reason.into(),
        attempts: 3,
        last_status: Some(503),
        body: WebhookBody::json(&json!({"v": 1})).expect("a JSON value serializes"),
    }
}

/// Writes the letters as the dead-letter writer does (one file per UTC day).
fn write(dir: &Path, letters: &[DeadLetter]) {
    for l in letters {
        let path = dead_letter_path(dir, l.time);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        writeln!(f, "{}", l.to_json()).expect("write");
    }
}

const DAY: u64 = 86_400_000;

#[test]
fn letters_read_back_as_the_requests_that_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = letter(
        5,
        "r1",
        "http://a.example/x",
        "HTTP 503 (retries exhausted: gave up after 3 attempts)",
        "k1",
    );
    write(dir.path(), std::slice::from_ref(&written));
    let found = DeadLetters::read(dir.path()).expect("read");
    assert_eq!(found.letters.len(), 1);
    let l = &found.letters[0];
    assert_eq!(l.time_ms(), Some(5));
    assert_eq!(l.reason_class(), "retries exhausted");
    let request = l.request();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.url, "http://a.example/x");
    assert_eq!(
        request.headers,
        [("x-token".to_owned(), "s3cret".to_owned())]
    );
    assert_eq!(request.idempotency_key, "k1");
    assert_eq!(
        request.body,
        WebhookBody::json(&json!({"v": 1})).expect("a JSON value serializes")
    );
    // A torn line is counted, not fatal; an absent folder holds nothing.
    let path = dead_letter_path(dir.path(), at(5));
    let mut f = OpenOptions::new().append(true).open(path).expect("open");
    f.write_all(b"{\"time\":").expect("write");
    assert_eq!(DeadLetters::read(dir.path()).expect("read").unreadable, 1);
    assert!(DeadLetters::read(&dir.path().join("none"))
        .expect("read")
        .letters
        .is_empty());
}

#[test]
fn filters_summary_and_replayed_marks() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        &[
            letter(
                DAY,
                "r1",
                "http://a.example/1",
                "older than webhook.max_age_secs (60 s): x",
                "k1",
            ),
            letter(
                DAY + 1,
                "r1",
                "http://a.example/2",
                "HTTP 404 (not retried)",
                "k2",
            ),
            letter(
                2 * DAY,
                "r2",
                "https://b.example/",
                "refused: 10.0.0.1 is not allowed",
                "k3",
            ),
        ],
    );
    let found = DeadLetters::read(dir.path()).expect("read");
    let keys = |filter: &Filter| -> Vec<String> {
        found
            .pending(filter)
            .iter()
            .map(|l| l.idempotency_key.clone())
            .collect()
    };
    assert_eq!(keys(&Filter::default()), ["k1", "k2", "k3"]);
    let since = Filter {
        since_ms: Some(DAY + 1),
        ..Filter::default()
    };
    assert_eq!(keys(&since), ["k2", "k3"]);
    let until = Filter {
        until_ms: Some(2 * DAY),
        ..Filter::default()
    };
    assert_eq!(keys(&until), ["k1", "k2"]);
    let rule = Filter {
        rule: Some("r2".into()),
        ..Filter::default()
    };
    assert_eq!(keys(&rule), ["k3"]);
    let prefix = Filter {
        url_prefix: Some("http://a.example/2".into()),
        ..Filter::default()
    };
    assert_eq!(keys(&prefix), ["k2"]);

    let summary = found.summary(&Filter::default());
    let rows: Vec<_> = summary
        .iter()
        .map(|r| {
            (
                r.rule_id.as_str(),
                r.destination.as_str(),
                r.reason,
                r.letters,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("r1", "http://a.example:80", "refused by the receiver", 1),
            ("r1", "http://a.example:80", "too old", 1),
            (
                "r2",
                "https://b.example:443",
                "refused by the SSRF guard",
                1
            ),
        ]
    );

    let taken: Vec<&Letter> = found.pending(&rule);
    mark_replayed(dir.path(), &taken).expect("mark");
    let again = DeadLetters::read(dir.path()).expect("read");
    let left: Vec<_> = again
        .pending(&Filter::default())
        .iter()
        .map(|l| l.idempotency_key.clone())
        .collect();
    assert_eq!(left, ["k1", "k2"], "a replayed letter is not taken again");
    assert_eq!(again.summary(&rule)[0].replayed, 1);
}

#[test]
fn times_are_rfc_3339_or_dates() {
    assert_eq!(parse_time("1970-01-02"), Some(DAY));
    assert_eq!(parse_time("1970-01-01T00:00:01.500Z"), Some(1500));
    assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
    assert_eq!(parse_time("yesterday"), None);
}
