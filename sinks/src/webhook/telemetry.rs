//! Metric names and the few places that update them; few, bounded labels.

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    SharedString, Unit,
};

/// Requests (attempts) by `outcome`: `2xx`, `3xx`, `4xx`, `5xx`, `error`, `refused`.
pub const REQUESTS_TOTAL: &str = "ccstream_webhook_requests_total";
/// Firings by final `result` (`delivered`, `failed`, `expired`, `refused`) and `destination`.
pub const DELIVERIES_TOTAL: &str = "ccstream_webhook_deliveries_total";
/// Firings waiting, by `destination`.
pub const DESTINATION_QUEUED: &str = "ccstream_webhook_destination_queued";
/// Firings in flight, by `destination`.
pub const DESTINATION_IN_FLIGHT: &str = "ccstream_webhook_destination_in_flight";
/// 1 while a destination's circuit is open (its firings wait; one probe per interval).
pub const DESTINATION_CIRCUIT_OPEN: &str = "ccstream_webhook_destination_circuit_open";
/// Times a destination's circuit opened.
pub const CIRCUIT_OPENED_TOTAL: &str = "ccstream_webhook_circuit_opened_total";
/// Duration of one attempt, seconds.
pub const DURATION_SECONDS: &str = "ccstream_webhook_duration_seconds";
/// Firings waiting in the dispatcher's queue (in memory or, past `queue_capacity`, on disk).
pub const QUEUE_DEPTH: &str = "ccstream_webhook_queue_depth";
/// Bytes of the outbox's files.
pub const OUTBOX_BYTES: &str = "ccstream_webhook_outbox_bytes";
/// Firings in the outbox neither delivered nor dead-lettered.
pub const OUTBOX_UNFINISHED: &str = "ccstream_webhook_outbox_unfinished";
/// 1 while the outbox is at `webhook.outbox_max_bytes` (acks stop).
pub const OUTBOX_FULL: &str = "ccstream_webhook_outbox_full";
/// Group commits of the outbox (firings written over commits: the group size).
pub const OUTBOX_COMMITS_TOTAL: &str = "ccstream_webhook_outbox_commits_total";
/// Failed writes of the outbox (retried; the firings' messages stay unacked meanwhile).
pub const OUTBOX_WRITE_ERRORS_TOTAL: &str = "ccstream_webhook_outbox_write_errors_total";
/// Firings the dispatcher could not read back from the outbox (damaged files; left there).
pub const OUTBOX_READ_ERRORS_TOTAL: &str = "ccstream_webhook_outbox_read_errors_total";
/// Dead letters written.
pub const DEAD_LETTERS_TOTAL: &str = "ccstream_webhook_dead_letters_total";
/// Dead letters that could not be written (disk errors).
pub const DEAD_LETTER_ERRORS_TOTAL: &str = "ccstream_webhook_dead_letter_errors_total";

/// Registers descriptions with the installed recorder (call once after installing it).
pub fn describe_metrics() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Webhook requests (attempts) by outcome class."
    );
    describe_counter!(
        DELIVERIES_TOTAL,
        "Webhook firings by final result and destination."
    );
    describe_gauge!(
        DESTINATION_QUEUED,
        "Webhook firings waiting, by destination (scheme://host:port; `other` past 200)."
    );
    describe_gauge!(
        DESTINATION_IN_FLIGHT,
        "Webhook firings in flight, by destination."
    );
    describe_gauge!(
        DESTINATION_CIRCUIT_OPEN,
        "1 while a destination's circuit is open: its firings wait, one probe per interval."
    );
    describe_counter!(
        CIRCUIT_OPENED_TOTAL,
        "Times a webhook destination's circuit opened."
    );
    describe_histogram!(
        DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one webhook attempt."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Webhook firings waiting for the dispatcher (in memory or on disk)."
    );
    describe_gauge!(
        OUTBOX_BYTES,
        Unit::Bytes,
        "Bytes of the webhook outbox's files."
    );
    describe_gauge!(
        OUTBOX_UNFINISHED,
        "Webhook firings in the outbox neither delivered nor dead-lettered."
    );
    describe_gauge!(
        OUTBOX_FULL,
        "1 while the webhook outbox is at webhook.outbox_max_bytes (acks stop)."
    );
    describe_counter!(
        OUTBOX_COMMITS_TOTAL,
        "Group commits of the webhook outbox (one fsync each)."
    );
    describe_counter!(
        OUTBOX_WRITE_ERRORS_TOTAL,
        "Failed writes of the webhook outbox (retried)."
    );
    describe_counter!(
        OUTBOX_READ_ERRORS_TOTAL,
        "Webhook firings that could not be read back from the outbox (left there)."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Undeliverable webhook firings written as dead letters."
    );
    describe_counter!(
        DEAD_LETTER_ERRORS_TOTAL,
        "Webhook dead letters that could not be written."
    );
}

/// The attempt metrics, registered once: a registry lookup per attempt costs more than the
/// count itself.
#[derive(Debug)]
pub(crate) struct AttemptMetrics {
    by_outcome: Vec<(&'static str, Counter)>,
    duration: metrics::Histogram,
}

impl AttemptMetrics {
    pub(crate) fn register() -> Self {
        let by_outcome = ["2xx", "3xx", "4xx", "5xx", "error", "refused"]
            .into_iter()
            .map(|o| (o, counter!(REQUESTS_TOTAL, "outcome" => o)))
            .collect();
        Self {
            by_outcome,
            duration: histogram!(DURATION_SECONDS),
        }
    }

    /// Counts an attempt by its `outcome` label; `took` when it reached a server.
    pub(crate) fn attempt(&self, outcome: &'static str, took: Option<Duration>) {
        match self.by_outcome.iter().find(|(o, _)| *o == outcome) {
            Some((_, counter)) => counter.increment(1),
            None => counter!(REQUESTS_TOTAL, "outcome" => outcome).increment(1),
        }
        if let Some(took) = took {
            self.duration.record(took.as_secs_f64());
        }
    }
}

/// The deliveries counter of one result and destination (registered once per destination).
pub(crate) fn deliveries(result: &'static str, destination: &Arc<str>) -> Counter {
    counter!(DELIVERIES_TOTAL, "result" => result, "destination" => SharedString::from(Arc::clone(destination)))
}

/// The circuit-opened counter of one destination.
pub(crate) fn circuit_opened(destination: &Arc<str>) -> Counter {
    counter!(CIRCUIT_OPENED_TOTAL, "destination" => SharedString::from(Arc::clone(destination)))
}

/// Sets the per-destination gauges from (label, queued, in flight, open); destinations sharing
/// the `other` label are summed.
pub(crate) fn destinations<'a>(report: impl Iterator<Item = (&'a Arc<str>, usize, usize, bool)>) {
    let mut by_label: std::collections::BTreeMap<&Arc<str>, (usize, usize, usize)> =
        std::collections::BTreeMap::new();
    for (label, queued, in_flight, open) in report {
        let entry = by_label.entry(label).or_default();
        entry.0 += queued;
        entry.1 += in_flight;
        entry.2 += usize::from(open);
    }
    for (label, (queued, in_flight, open)) in by_label {
        let label = SharedString::from(Arc::clone(label));
        gauge!(DESTINATION_QUEUED, "destination" => label.clone()).set(queued as f64);
        gauge!(DESTINATION_IN_FLIGHT, "destination" => label.clone()).set(in_flight as f64);
        gauge!(DESTINATION_CIRCUIT_OPEN, "destination" => label).set(open as f64);
    }
}

pub(crate) fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub(crate) fn outbox(bytes: u64, unfinished: u64, full: bool) {
    gauge!(OUTBOX_BYTES).set(bytes as f64);
    gauge!(OUTBOX_UNFINISHED).set(unfinished as f64);
    gauge!(OUTBOX_FULL).set(if full { 1.0 } else { 0.0 });
}

pub(crate) fn outbox_committed() {
    counter!(OUTBOX_COMMITS_TOTAL).increment(1);
}

pub(crate) fn outbox_commit_failed() {
    counter!(OUTBOX_WRITE_ERRORS_TOTAL).increment(1);
}

pub(crate) fn outbox_read_failed() {
    counter!(OUTBOX_READ_ERRORS_TOTAL).increment(1);
}

pub(crate) fn dead_letters_written(count: u64) {
    counter!(DEAD_LETTERS_TOTAL).increment(count);
}

pub(crate) fn dead_letter_write_failed(count: u64) {
    counter!(DEAD_LETTER_ERRORS_TOTAL).increment(count);
}
