//! Metric names and the few places that update them; few, bounded labels.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

/// Requests (attempts) by `outcome`: `2xx`, `3xx`, `4xx`, `5xx`, `error`, `refused`.
pub const REQUESTS_TOTAL: &str = "ccstream_webhook_requests_total";
/// Firings by final `result`: `delivered`, `failed`, `refused`.
pub const DELIVERIES_TOTAL: &str = "ccstream_webhook_deliveries_total";
/// Duration of one attempt, seconds.
pub const DURATION_SECONDS: &str = "ccstream_webhook_duration_seconds";
/// Firings waiting in the queue.
pub const QUEUE_DEPTH: &str = "ccstream_webhook_queue_depth";
/// Firings dropped because the queue was full.
pub const QUEUE_OVERFLOW_TOTAL: &str = "ccstream_webhook_queue_overflow_total";
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
    describe_counter!(DELIVERIES_TOTAL, "Webhook firings by final result.");
    describe_histogram!(
        DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one webhook attempt."
    );
    describe_gauge!(QUEUE_DEPTH, "Webhook firings waiting in the queue.");
    describe_counter!(
        QUEUE_OVERFLOW_TOTAL,
        "Webhook firings dropped because the queue was full."
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

pub(crate) fn attempt(outcome: &'static str, took: Option<Duration>) {
    counter!(REQUESTS_TOTAL, "outcome" => outcome).increment(1);
    if let Some(took) = took {
        histogram!(DURATION_SECONDS).record(took.as_secs_f64());
    }
}

pub(crate) fn delivery(result: &'static str) {
    counter!(DELIVERIES_TOTAL, "result" => result).increment(1);
}

pub(crate) fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub(crate) fn overflow() {
    counter!(QUEUE_OVERFLOW_TOTAL).increment(1);
}

pub(crate) fn dead_letters_written(count: u64) {
    counter!(DEAD_LETTERS_TOTAL).increment(count);
}

pub(crate) fn dead_letter_write_failed(count: u64) {
    counter!(DEAD_LETTER_ERRORS_TOTAL).increment(count);
}
