//! Dead letters: firings that could not be delivered, appended as JSON lines to
//! `<dead_letter_dir>/webhooks-YYYY-MM-DD.jsonl` (UTC date of the failure).
//!
//! One small task owns the files and is fed through a bounded channel, so the send loop never
//! waits on the disk for long. The request's headers are written too, so that a replay
//! ([`super::replay`]) sends exactly what failed: they may carry credentials, as the outbox's
//! files do, so the folder is the operator's to protect.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ccstream_common::Backoff;
use serde_json::{json, Value};
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::counters::Counters;
use super::outbox::Locator;
use super::request::WebhookBody;
use super::telemetry;
use crate::utc;

/// Dead letters waiting for the writer.
const CHANNEL_CAPACITY: usize = 1_024;
/// Most dead letters written in one go.
const BATCH: usize = 256;

/// One firing that could not be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// When it was given up.
    pub time: SystemTime,
    /// The rule that fired.
    pub rule_id: String,
    /// The destination.
    pub url: String,
    /// The HTTP method.
    pub method: String,
    /// The request's headers, in order.
    pub headers: Vec<(String, String)>,
    /// The `Idempotency-Key` every attempt carried.
    pub idempotency_key: String,
    /// Why it was given up (last status or error, refusal, shutdown).
    pub reason: String,
    /// Attempts made (0: never sent).
    pub attempts: u32,
    /// Status of the last response, if there was one.
    pub last_status: Option<u16>,
    /// The body that was (or would have been) sent.
    pub body: WebhookBody,
}

impl DeadLetter {
    /// The JSON line: `time` (RFC 3339, UTC, ms), `rule_id`, `url`, `method`, `headers` (pairs),
    /// `idempotency_key`,
    /// `reason`, `attempts`, `last_status` (or null), `body_type` (`json`, `text` or `empty`) and
    /// `body` (the JSON value, the text, or null).
    pub fn to_json(&self) -> Value {
        let (body_type, body) = match &self.body {
            WebhookBody::Empty => ("empty", Value::Null),
            WebhookBody::Text(text) => ("text", Value::String(text.clone())),
            WebhookBody::Json(json) => ("json", json.to_value()),
        };
        json!({
            "time": rfc3339_utc(self.time),
            "rule_id": self.rule_id,
            "url": self.url,
            "method": self.method,
            "headers": self.headers,
            "idempotency_key": self.idempotency_key,
            "reason": self.reason,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "body_type": body_type,
            "body": body,
        })
    }
}

/// The file a dead letter written at `time` goes to.
pub fn dead_letter_path(dir: &Path, time: SystemTime) -> PathBuf {
    dir.join(format!("webhooks-{}.jsonl", utc_date(time)))
}

/// A dead letter and where its firing is in the outbox: finished there once the letter is on
/// disk.
pub(crate) type Letter = (DeadLetter, Option<Locator>);

/// Starts the writer task; it ends when every sender is dropped and what they sent is written.
pub(crate) fn spawn_writer(
    dir: PathBuf,
    counters: Arc<Counters>,
    finished: mpsc::UnboundedSender<Locator>,
) -> (mpsc::Sender<Letter>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let task = tokio::spawn(
        Writer {
            dir,
            file: None,
            counters,
            finished,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
        .run(rx),
    );
    (tx, task)
}

struct Writer {
    dir: PathBuf,
    /// The open file and its date; reopened when the UTC date changes.
    file: Option<(String, File)>,
    counters: Arc<Counters>,
    finished: mpsc::UnboundedSender<Locator>,
    backoff: Backoff,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Letter>) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let mut lines = Vec::new();
            let mut written = Vec::new();
            let mut date = String::new();
            for (letter, at) in batch.drain(..) {
                let letter_date = utc_date(letter.time);
                if letter_date != date && !written.is_empty() {
                    self.write(&date, &lines, &mut written, &rx).await;
                    lines.clear();
                }
                date = letter_date;
                if serde_json::to_writer(&mut lines, &letter.to_json()).is_ok() {
                    lines.push(b'\n');
                    written.push(at);
                }
            }
            if !written.is_empty() {
                self.write(&date, &lines, &mut written, &rx).await;
            }
        }
        if let Some((_, file)) = self.file.take() {
            let _ = file.sync_all().await;
        }
    }

    /// Appends `lines` (one per firing in `firings`, which it empties) and finishes those
    /// firings in the outbox once they are on disk. A failed write is retried with backoff
    /// (the senders wait meanwhile, through the bounded channel) until the disk takes it, or
    /// until every sender is gone (shutdown): the firings then stay in the outbox and are sent
    /// again at the next start.
    async fn write(
        &mut self,
        date: &str,
        lines: &[u8],
        firings: &mut Vec<Option<Locator>>,
        rx: &mpsc::Receiver<Letter>,
    ) {
        let count = firings.len() as u64;
        let mut failures = 0;
        loop {
            match self.append(date, lines).await {
                Ok(()) => {
                    self.counters.add_dead_letters(count);
                    telemetry::dead_letters_written(count);
                    for at in firings.drain(..).flatten() {
                        let _ = self.finished.send(at);
                    }
                    return;
                }
                Err(error) => {
                    // Reopen next time: the directory may have been fixed meanwhile.
                    self.file = None;
                    telemetry::dead_letter_write_failed(count);
                    failures += 1;
                    if rx.is_closed() {
                        firings.clear();
                        tracing::error!(
                            dir = %self.dir.display(),
                            %error,
                            firings = count,
                            "cannot write webhook dead letters at shutdown; the firings stay in the outbox and are sent again at the next start"
                        );
                        return;
                    }
                    let wait = self.backoff.delay(failures);
                    tracing::error!(
                        dir = %self.dir.display(),
                        %error,
                        firings = count,
                        retry_in = ?wait,
                        "cannot write webhook dead letters; the firings stay in the outbox until they are written"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn append(&mut self, date: &str, lines: &[u8]) -> std::io::Result<()> {
        if !matches!(&self.file, Some((open_date, _)) if open_date == date) {
            self.file = None;
            tokio::fs::create_dir_all(&self.dir).await?;
            let path = self.dir.join(format!("webhooks-{date}.jsonl"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            self.file = Some((date.to_owned(), file));
        }
        let Some((_, file)) = self.file.as_mut() else {
            return Ok(());
        };
        let before = file.metadata().await?.len();
        let written = async {
            file.write_all(lines).await?;
            file.flush().await?;
            file.sync_data().await
        }
        .await;
        if written.is_err() {
            // A torn last line would hide the lines the retry writes after it from a reader
            // that stops at the first bad line; cut it off (best effort: the disk is failing).
            let _ = file.set_len(before).await;
        }
        written
    }
}

/// `YYYY-MM-DD` of `time` in UTC.
fn utc_date(time: SystemTime) -> String {
    let t = utc_time(time);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn rfc3339_utc(time: SystemTime) -> String {
    utc::rfc3339(epoch_ms(time))
}

fn utc_time(time: SystemTime) -> time::OffsetDateTime {
    utc::from_ms(epoch_ms(time))
}

fn epoch_ms(time: SystemTime) -> u64 {
    // A clock before 1970 is a broken clock; write it as the epoch rather than fail.
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(at(0, 0)), "1970-01-01");
        assert_eq!(utc_date(at(1_704_067_200, 0)), "2024-01-01");
        assert_eq!(utc_date(at(951_782_400, 0)), "2000-02-29");
        assert_eq!(
            utc_date(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01",
            "a clock before 1970 is written as the epoch"
        );
        assert_eq!(
            rfc3339_utc(at(1_464_081_794, 634)),
            "2016-05-24T09:23:14.634Z"
        );
        assert_eq!(utc_date(at(1_709_251_199, 999)), "2024-02-29");
        assert_eq!(utc_date(at(1_709_251_200, 0)), "2024-03-01");
        assert_eq!(
            dead_letter_path(Path::new("dl"), at(0, 0)),
            PathBuf::from("dl/webhooks-1970-01-01.jsonl")
        );
    }

    fn letter(time: SystemTime, body: WebhookBody) -> DeadLetter {
        DeadLetter {
            time,
            rule_id: "r1".into(),
            url: "http://example.com/".into(),
            method: "POST".into(),
            headers: vec![("x-token".into(), "t".into())],
            idempotency_key: "k1".into(),
            reason: "HTTP 404 (not retried)".into(),
            attempts: 1,
            last_status: Some(404),
            body,
        }
    }

    #[test]
    fn json_line_shape() {
        let line = letter(
            at(0, 5),
            WebhookBody::json(&json!({"a": 1})).expect("a JSON value serializes"),
        )
        .to_json();
        assert_eq!(
            line,
            json!({
                "time": "1970-01-01T00:00:00.005Z", "rule_id": "r1", "url": "http://example.com/",
                "method": "POST", "headers": [["x-token", "t"]], "idempotency_key": "k1",
                "reason": "HTTP 404 (not retried)",
                "attempts": 1, "last_status": 404, "body_type": "json", "body": {"a": 1}
            })
        );
        let text = letter(at(0, 0), WebhookBody::Text("hi".into())).to_json();
        assert_eq!(
            (&text["body_type"], &text["body"]),
            (&json!("text"), &json!("hi"))
        );
    }

    #[tokio::test]
    async fn writer_appends_lines_per_utc_day() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("nested/dl");
        let counters = Arc::new(Counters::default());
        let (finished_tx, mut finished) = mpsc::unbounded_channel();
        let (tx, task) = spawn_writer(target.clone(), Arc::clone(&counters), finished_tx);
        let day1 = at(1_709_251_199, 0);
        let day2 = at(1_709_251_200, 0);
        for (i, time) in [day1, day1, day2].into_iter().enumerate() {
            let place = (i != 1).then_some(Locator {
                segment: 1,
                index: i as u32,
                offset: 0,
                len: 0,
            });
            tx.send((letter(time, WebhookBody::Empty), place))
                .await
                .expect("writer alive");
        }
        drop(tx);
        task.await.expect("writer ends");
        let mut done = Vec::new();
        while let Ok(at) = finished.try_recv() {
            done.push(at.index);
        }
        assert_eq!(done, [0, 2], "finished in the outbox once on disk");
        let read =
            |time| std::fs::read_to_string(dead_letter_path(&target, time)).expect("file written");
        let first = read(day1);
        assert_eq!(first.lines().count(), 2);
        for line in first.lines() {
            let value: Value = serde_json::from_str(line).expect("one JSON object per line");
            assert_eq!(value["rule_id"], "r1");
        }
        assert_eq!(read(day2).lines().count(), 1);
        assert_eq!(counters.snapshot().dead_letters, 3);
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_until_the_disk_takes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the directory should be: every write fails until it is removed.
        let target = dir.path().join("dl");
        std::fs::write(&target, b"in the way").expect("blocker");
        let counters = Arc::new(Counters::default());
        let (finished_tx, mut finished) = mpsc::unbounded_channel();
        let (tx, task) = spawn_writer(target.clone(), Arc::clone(&counters), finished_tx);
        let place = Locator {
            segment: 1,
            index: 7,
            offset: 0,
            len: 0,
        };
        tx.send((letter(at(0, 0), WebhookBody::Empty), Some(place)))
            .await
            .expect("writer alive");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            finished.try_recv().is_err(),
            "finished before it was written"
        );
        assert_eq!(counters.snapshot().dead_letters, 0);

        std::fs::remove_file(&target).expect("unblock");
        let done = tokio::time::timeout(Duration::from_secs(5), finished.recv())
            .await
            .expect("written after the disk recovered")
            .expect("writer alive");
        assert_eq!(done.index, 7);
        let text = std::fs::read_to_string(dead_letter_path(&target, at(0, 0))).expect("file");
        assert_eq!(text.lines().count(), 1, "written once: {text}");
        drop(tx);
        task.await.expect("writer ends");
        assert_eq!(counters.snapshot().dead_letters, 1);
    }
}
