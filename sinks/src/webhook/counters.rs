//! The webhook sink's counters: the atomics the dispatcher and the dead-letter writer bump,
//! and [`WebhookStats`], the snapshot of them that callers see.
//!
//! Kept apart from both so that neither of those modules has to import the other for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts since start, for tests, health checks and the summary returned at shutdown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WebhookStats {
    /// Firings handed to the outbox.
    pub enqueued: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    /// Firings delivered (a 2xx).
    pub delivered: u64,
    /// Firings given up and dead-lettered (final status, attempts exhausted, invalid).
    pub failed: u64,
    /// Firings refused by the SSRF guard.
    pub refused: u64,
    /// Of the failed: older than `webhook.max_age_secs` before they could be delivered.
    pub expired: u64,
    /// Still undelivered when the drain deadline passed: left in the outbox for the next start.
    pub abandoned: u64,
    /// Dead letters written to disk.
    pub dead_letters: u64,
}

/// The atomics behind [`WebhookStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(super) enqueued: AtomicU64,
    pub(super) attempts: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) expired: AtomicU64,
    pub(super) abandoned: AtomicU64,
    dead_letters: AtomicU64,
}

impl Counters {
    /// Adds one to `counter` (one of this struct's fields).
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_dead_letters(&self, count: u64) {
        self.dead_letters.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WebhookStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookStats {
            enqueued: get(&self.enqueued),
            attempts: get(&self.attempts),
            delivered: get(&self.delivered),
            failed: get(&self.failed),
            refused: get(&self.refused),
            expired: get(&self.expired),
            abandoned: get(&self.abandoned),
            dead_letters: get(&self.dead_letters),
        }
    }
}
