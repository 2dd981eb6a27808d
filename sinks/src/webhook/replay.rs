//! Dead letters read back: summarised (`ccstream dead-letter list`) and sent again
//! (`ccstream dead-letter replay`) through the dispatcher's own path — an outbox of its own,
//! the same SSRF guard, retries, breakers and `Idempotency-Key` — then marked replayed.
//!
//! A letter is identified by its `time` and `idempotency_key`; `replayed.jsonl` in the
//! dead-letter folder lists the letters replayed, so a second replay skips them. A firing that
//! fails again during a replay is dead-lettered again, as a new letter (new time, new reason),
//! which a later replay takes.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::config::WebhookConfig;
use super::dead_letter::rfc3339_utc;
use super::destination::destination_of;
use super::dispatcher::WebhookDispatcher;
use super::error::WebhookError;
use super::outbox::{log, OutboxLog};
use super::request::{WebhookBody, WebhookRequest};

/// The file listing the letters replayed, in the dead-letter folder.
pub const REPLAYED_FILE: &str = "replayed.jsonl";

/// One dead letter as written by the dispatcher.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Letter {
    /// When it was given up (RFC 3339, UTC).
    pub time: String,
    /// The rule that fired.
    pub rule_id: String,
    /// The destination url.
    pub url: String,
    /// The HTTP method.
    pub method: String,
    /// The request's headers (absent in letters written before they were kept).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The `Idempotency-Key` every attempt carried.
    pub idempotency_key: String,
    /// Why it was given up.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// Status of the last response.
    pub last_status: Option<u16>,
    /// `json`, `text` or `empty`.
    pub body_type: String,
    /// The body.
    pub body: Value,
}

impl Letter {
    /// When it was given up, ms since the epoch (`None`: not an RFC 3339 time).
    pub fn time_ms(&self) -> Option<u64> {
        parse_time(&self.time)
    }

    /// The request to send again, with its original `Idempotency-Key`.
    pub fn request(&self) -> WebhookRequest {
        let body = match (self.body_type.as_str(), &self.body) {
            ("text", Value::String(text)) => WebhookBody::Text(text.clone()),
            // A JSON value always serializes; the fallback is never taken.
            ("json", value) => WebhookBody::json(value).unwrap_or(WebhookBody::Empty),
            _ => WebhookBody::Empty,
        };
        WebhookRequest {
            rule_id: self.rule_id.clone(),
            url: self.url.clone(),
            method: self.method.clone(),
            headers: self.headers.clone(),
            body,
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// The reason, in a few classes (for the summary).
    pub fn reason_class(&self) -> &'static str {
        let r = self.reason.as_str();
        if r.starts_with("older than") {
            "too old"
        } else if r.contains("retries exhausted") || r.contains("gave up after") {
            "retries exhausted"
        } else if r.starts_with("refused") || r.contains("not allowed") {
            "refused by the SSRF guard"
        } else if r.contains("redirects are not followed") {
            "redirect"
        } else if r.contains("not retried") {
            "refused by the receiver"
        } else if r.starts_with("invalid request") {
            "invalid request"
        } else {
            "other"
        }
    }

    fn id(&self) -> (String, String) {
        (self.time.clone(), self.idempotency_key.clone())
    }
}

/// Parses an RFC 3339 time (`2026-12-03T10:00:00Z`) or a date (`2026-12-03`, midnight UTC).
pub fn parse_time(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339))
        .ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Which letters to take.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Given up at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Given up before this time.
    pub until_ms: Option<u64>,
    /// Of this rule only.
    pub rule: Option<String>,
    /// To urls starting with this only.
    pub url_prefix: Option<String>,
}

impl Filter {
    /// Whether `letter` passes.
    pub fn matches(&self, letter: &Letter) -> bool {
        let time = letter.time_ms().unwrap_or(0);
        self.since_ms.is_none_or(|since| time >= since)
            && self.until_ms.is_none_or(|until| time < until)
            && self.rule.as_ref().is_none_or(|r| &letter.rule_id == r)
            && self
                .url_prefix
                .as_ref()
                .is_none_or(|p| letter.url.starts_with(p.as_str()))
    }
}

/// The dead letters of a folder.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// Every readable letter, oldest file first, in file order.
    pub letters: Vec<Letter>,
    /// Lines that are not letters (a torn last line after a crash, a hand edit).
    pub unreadable: usize,
    /// `(time, idempotency_key)` of the letters replayed already.
    pub replayed: HashSet<(String, String)>,
}

impl DeadLetters {
    /// Reads `webhooks-*.jsonl` and `replayed.jsonl` in `dir` (an absent folder holds none).
    pub fn read(dir: &Path) -> io::Result<Self> {
        let mut found = DeadLetters::default();
        let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("webhooks-") && n.ends_with(".jsonl"))
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e),
        };
        files.sort();
        for file in files {
            for line in io::BufReader::new(fs::File::open(&file)?).lines() {
                match serde_json::from_str::<Letter>(&line?) {
                    Ok(letter) => found.letters.push(letter),
                    Err(_) => found.unreadable += 1,
                }
            }
        }
        match fs::File::open(dir.join(REPLAYED_FILE)) {
            Ok(file) => {
                for line in io::BufReader::new(file).lines() {
                    if let Ok(mark) = serde_json::from_str::<Replayed>(&line?) {
                        found.replayed.insert((mark.time, mark.idempotency_key));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(found)
    }

    /// The letters `filter` takes that were not replayed yet, in file order.
    pub fn pending(&self, filter: &Filter) -> Vec<&Letter> {
        self.letters
            .iter()
            .filter(|l| !self.replayed.contains(&l.id()) && filter.matches(l))
            .collect()
    }

    /// Counts by (rule, destination, reason class): letters, of them replayed, oldest and
    /// newest time.
    pub fn summary(&self, filter: &Filter) -> Vec<SummaryRow> {
        let mut rows: BTreeMap<(String, String, &'static str), SummaryRow> = BTreeMap::new();
        for letter in self.letters.iter().filter(|l| filter.matches(l)) {
            let key = (
                letter.rule_id.clone(),
                destination_of(&letter.url),
                letter.reason_class(),
            );
            let row = rows.entry(key.clone()).or_insert_with(|| SummaryRow {
                rule_id: key.0,
                destination: key.1,
                reason: key.2,
                letters: 0,
                replayed: 0,
                oldest: letter.time.clone(),
                newest: letter.time.clone(),
            });
            row.letters += 1;
            if self.replayed.contains(&letter.id()) {
                row.replayed += 1;
            }
            if letter.time < row.oldest {
                row.oldest = letter.time.clone();
            }
            if letter.time > row.newest {
                row.newest = letter.time.clone();
            }
        }
        rows.into_values().collect()
    }
}

/// One line of `dead-letter list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    /// The rule.
    pub rule_id: String,
    /// `scheme://host:port`.
    pub destination: String,
    /// The reason class.
    pub reason: &'static str,
    /// Letters.
    pub letters: usize,
    /// Of them, replayed already.
    pub replayed: usize,
    /// Time of the oldest.
    pub oldest: String,
    /// Time of the newest.
    pub newest: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Replayed {
    time: String,
    idempotency_key: String,
    replayed_at: String,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Letters sent again.
    pub sent: u64,
    /// Delivered this time.
    pub delivered: u64,
    /// Given up again: new dead letters, with the new reason.
    pub dead_lettered_again: u64,
    /// Not finished within the wait: not marked, replayed again next time.
    pub unfinished: u64,
}

/// Sends `letters` again through a dispatcher with `config` (its own outbox beside
/// `config.outbox_dir`, removed afterwards), waits up to `wait` for them to be delivered or
/// given up, and marks those replayed in `config.dead_letter_dir`.
pub async fn replay(
    config: &WebhookConfig,
    letters: &[&Letter],
    wait: Duration,
) -> Result<ReplayReport, WebhookError> {
    let outbox_dir = replay_outbox(&config.outbox_dir);
    let outbox = |source| WebhookError::Outbox {
        dir: outbox_dir.clone(),
        source,
    };
    let _ = fs::remove_dir_all(&outbox_dir);
    let config = WebhookConfig {
        outbox_dir: outbox_dir.clone(),
        ..config.clone()
    };
    let (handle, task) = WebhookDispatcher::start(&config, Box::new(|_: Vec<()>| {}))?;
    for letter in letters {
        handle.enqueue(vec![letter.request()], None, ()).await?;
    }
    handle.close(wait);
    let stats = task
        .await
        .map_err(|e| outbox(io::Error::other(e.to_string())))?;
    // What the wait cut off is still in the replay's outbox: not replayed.
    let (_, left) = OutboxLog::open(&outbox_dir, 1 << 20).map_err(outbox)?;
    let mut unfinished = HashSet::new();
    for firing in &left.unfinished {
        if let Ok(stored) = log::read(&outbox_dir, firing.at) {
            unfinished.insert(stored.request.idempotency_key);
        }
    }
    let done: Vec<&Letter> = letters
        .iter()
        .copied()
        .filter(|l| !unfinished.contains(&l.idempotency_key))
        .collect();
    mark_replayed(&config.dead_letter_dir, &done).map_err(outbox)?;
    fs::remove_dir_all(&outbox_dir).map_err(outbox)?;
    Ok(ReplayReport {
        sent: letters.len() as u64,
        delivered: stats.delivered,
        dead_lettered_again: stats.failed + stats.refused,
        unfinished: letters.len().saturating_sub(done.len()) as u64,
    })
}

/// The replay's own outbox: beside the service's, never inside it (the service owns that one).
fn replay_outbox(service_outbox: &Path) -> PathBuf {
    let name = service_outbox
        .file_name()
        .map_or_else(|| "outbox".into(), |n| n.to_string_lossy().into_owned());
    service_outbox.with_file_name(format!("{name}-replay-{}", std::process::id()))
}

/// Appends the letters to `replayed.jsonl`, durably.
fn mark_replayed(dir: &Path, letters: &[&Letter]) -> io::Result<()> {
    if letters.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    let now = rfc3339_utc(std::time::SystemTime::now());
    let mut lines = Vec::new();
    for letter in letters {
        let mark = Replayed {
            time: letter.time.clone(),
            idempotency_key: letter.idempotency_key.clone(),
            replayed_at: now.clone(),
        };
        serde_json::to_writer(&mut lines, &mark).map_err(io::Error::other)?;
        lines.push(b'\n');
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(REPLAYED_FILE))?;
    file.write_all(&lines)?;
    file.sync_data()
}

#[cfg(test)]
mod tests;
