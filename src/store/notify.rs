//! Changes reach every replica at once on PostgreSQL: rule writes and directory imports
//! `NOTIFY` (delivered when their transaction commits), and each replica `LISTEN`s.
//!
//! - `ccstream_rules`: a rule was written; the listener wakes the rule reloader, which reads the
//!   generation and rebuilds when it moved (the same path as a write through this replica).
//! - `ccstream_directory`: things and domains were imported through some replica's API; the
//!   notice carries the snapshot when it fits in a notification (PostgreSQL's limit is 8,000
//!   bytes), else says "reload", and the listener merges it into this replica's directory.
//!   Life cycle events need no notice: every replica receives every event itself.
//!
//! A notification can be lost (the listener's connection drops). So the reloader keeps polling
//! (`engine.rules_poll_ms`) as the fallback, and after every reconnect the listener wakes the
//! reloader and merges the stored directory once.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ccstream_common::Backoff;
use rule_engine::directory::DirectorySnapshot;
use rule_engine::Directory;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::RuleStore;

pub const RULES_CHANNEL: &str = "ccstream_rules";
pub const DIRECTORY_CHANNEL: &str = "ccstream_directory";

/// Notifications are refused beyond 8,000 bytes; leave room for the envelope.
const MAX_INLINE_PAYLOAD: usize = 7_800;

/// The payload of a `ccstream_directory` notification.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct DirectoryNotice {
    /// The store instance that wrote it (a replica skips its own).
    pub from: String,
    /// The imported snapshot, or `None`: read the whole directory from the store.
    pub snapshot: Option<DirectorySnapshot>,
}

impl DirectoryNotice {
    pub fn of(from: &str, snapshot: &DirectorySnapshot) -> Self {
        DirectoryNotice {
            from: from.to_owned(),
            snapshot: Some(snapshot.clone()),
        }
    }

    /// "Read the whole directory from the store": an import too large to carry.
    pub fn reload(from: &str) -> Self {
        DirectoryNotice {
            from: from.to_owned(),
            snapshot: None,
        }
    }

    /// JSON, with the snapshot left out when the notice would not fit.
    pub fn encode(mut self) -> String {
        let text = serde_json::to_string(&self).unwrap_or_default();
        if text.len() <= MAX_INLINE_PAYLOAD {
            return text;
        }
        self.snapshot = None;
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// Listens until the process ends, reconnecting with backoff. `rules_changed` wakes the rule
/// reloader; `directory` receives imports made through other replicas.
pub async fn listen(
    store: RuleStore,
    rules_changed: Arc<Notify>,
    directory: Arc<RwLock<Directory>>,
) {
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut failures = 0;
    loop {
        let e = listen_until_error(&store, &rules_changed, &directory).await;
        failures += 1;
        metrics::counter!("ccstream_store_listener_errors_total").increment(1);
        let delay = backoff.delay(failures);
        tracing::warn!(error = %e, retry_in = ?delay, "store change listener lost; polling covers the gap");
        tokio::time::sleep(delay).await;
    }
}

/// One listening connection; returns the error that ended it.
async fn listen_until_error(
    store: &RuleStore,
    rules_changed: &Notify,
    directory: &RwLock<Directory>,
) -> sqlx::Error {
    let mut listener = match PgListener::connect(&store.url).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if let Err(e) = listener
        .listen_all([RULES_CHANNEL, DIRECTORY_CHANNEL])
        .await
    {
        return e;
    }
    tracing::info!("listening for rule and directory changes");
    // Whatever was announced while no listener ran.
    rules_changed.notify_one();
    merge_stored_directory(store, directory).await;
    loop {
        let note = match listener.recv().await {
            Ok(n) => n,
            Err(e) => return e,
        };
        match note.channel() {
            RULES_CHANNEL if note.payload() != store.instance => {
                metrics::counter!("ccstream_store_notifications_total", "channel" => "rules")
                    .increment(1);
                rules_changed.notify_one();
            }
            DIRECTORY_CHANNEL => {
                let notice: DirectoryNotice = match serde_json::from_str(note.payload()) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable directory notice; merging the stored directory");
                        merge_stored_directory(store, directory).await;
                        continue;
                    }
                };
                if notice.from == store.instance {
                    continue;
                }
                metrics::counter!("ccstream_store_notifications_total", "channel" => "directory")
                    .increment(1);
                match notice.snapshot {
                    Some(snapshot) => merge(directory, snapshot),
                    None => merge_stored_directory(store, directory).await,
                }
            }
            _ => {}
        }
    }
}

/// Merges the stored directory into this replica's a piece at a time: the lock is held for
/// one piece, so observations keep being evaluated while ten million things are read.
async fn merge_stored_directory(store: &RuleStore, directory: &RwLock<Directory>) {
    let merged = store
        .read_directory(|part| {
            let mut directory = match directory.write() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            part.import_into(&mut directory)
        })
        .await;
    match merged {
        Ok(()) => tracing::debug!("stored directory merged"),
        Err(e) => tracing::warn!(error = %e, "stored directory not wholly merged"),
    }
}

fn merge(directory: &RwLock<Directory>, snapshot: DirectorySnapshot) {
    let things = snapshot.things.len();
    let mut directory = match directory.write() {
        Ok(d) => d,
        Err(poisoned) => poisoned.into_inner(),
    };
    match directory.import(&snapshot) {
        Ok(()) => tracing::debug!(things, "directory merged from the store"),
        Err(e) => tracing::warn!(error = %e, "directory change from another replica not applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rule_engine::directory::ThingEntry;

    fn snapshot(things: usize) -> DirectorySnapshot {
        DirectorySnapshot {
            domains: Vec::new(),
            things: (0..things)
                .map(|i| ThingEntry {
                    thing_name: format!("thing-{i:06}"),
                    thing_type: "Pump".into(),
                    domain: "root".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_small_import_travels_in_the_notice_a_large_one_is_read_from_the_store() {
        let small = DirectoryNotice::of("a", &snapshot(3)).encode();
        let back: DirectoryNotice = serde_json::from_str(&small).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, DirectoryNotice::of("a", &snapshot(3)));

        let large = DirectoryNotice::of("a", &snapshot(1000)).encode();
        assert!(large.len() <= MAX_INLINE_PAYLOAD, "{}", large.len());
        let back: DirectoryNotice = serde_json::from_str(&large).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.snapshot, None);
        assert_eq!(back.from, "a");
    }
}
