//! Metric names, and the handles the indexer updates; few, bounded labels.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

use super::retry::FailureReason;

/// Records indexed.
pub const INDEXED_TOTAL: &str = "ccstream_search_indexed_total";
/// Bulk requests (attempts) by `outcome`: `success`, `partial` (2xx with item errors),
/// `throttled` (429), `server_error` (5xx), `client_error` (other statuses), `error` (no
/// response: connection, timeout, unreadable body).
pub const BULK_REQUESTS_TOTAL: &str = "ccstream_search_bulk_requests_total";
/// Duration of one bulk request, seconds.
pub const BULK_DURATION_SECONDS: &str = "ccstream_search_bulk_duration_seconds";
/// Records given up by `reason`: `mapping`, `rejected`, `other`; each went to the failure
/// callback (the `errors/` prefix).
pub const ITEM_FAILURES_TOTAL: &str = "ccstream_search_item_failures_total";
/// Items sent again after OpenSearch rejected them (429 or 5xx) in a `"errors": true` response.
pub const ITEMS_RETRIED_TOTAL: &str = "ccstream_search_items_retried_total";
/// Records never indexed by `reason`: `overflow` (queue full), `closed` (sent after shutdown),
/// `unavailable` (retries of whole requests ran out), `shutdown` (drain deadline passed).
pub const DROPPED_TOTAL: &str = "ccstream_search_dropped_total";
/// Now minus the commit time of the oldest observation in the spool not yet indexed; 0 when
/// the index has everything (from the spool's cursor, [`super::follower`]).
pub const LAG_SECONDS: &str = "ccstream_search_lag_seconds";
/// Observation records in the spool not yet indexed.
pub const RECORDS_BEHIND: &str = "ccstream_search_records_behind";
/// Age of the oldest record in the indexer's queue; 0 when it is empty.
pub const QUEUE_AGE_SECONDS: &str = "ccstream_search_queue_age_seconds";
/// Records waiting in the queue.
pub const QUEUE_DEPTH: &str = "ccstream_search_queue_depth";

/// Registers descriptions with the installed recorder (call once after installing it).
pub fn describe_metrics() {
    describe_counter!(
        INDEXED_TOTAL,
        "Observation records indexed into OpenSearch."
    );
    describe_counter!(
        BULK_REQUESTS_TOTAL,
        "OpenSearch bulk requests (attempts) by outcome."
    );
    describe_histogram!(
        BULK_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one OpenSearch bulk request."
    );
    describe_counter!(
        ITEM_FAILURES_TOTAL,
        "Records OpenSearch refused for good, by reason; written to the errors/ prefix."
    );
    describe_counter!(
        ITEMS_RETRIED_TOTAL,
        "Bulk items sent again after a 429 or 5xx item result."
    );
    describe_counter!(
        DROPPED_TOTAL,
        "Records never indexed (queue full, shutdown, OpenSearch unavailable), by reason."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest observation in the spool not yet indexed (0: caught up)."
    );
    describe_gauge!(
        RECORDS_BEHIND,
        "Observation records in the spool not yet indexed."
    );
    describe_gauge!(
        QUEUE_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest record in the search indexing queue."
    );
    describe_gauge!(QUEUE_DEPTH, "Records waiting in the search indexing queue.");
}

/// Why records were dropped unindexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Overflow,
    Closed,
    Unavailable,
    Shutdown,
}

/// Handles registered once at start, so the hot path does no registry look-ups.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub indexed: Counter,
    pub items_retried: Counter,
    pub queue_age: Gauge,
    pub queue_depth: Gauge,
    pub bulk_duration: Histogram,
    dropped: [Counter; 4],
    failures: [Counter; 3],
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            indexed: counter!(INDEXED_TOTAL),
            items_retried: counter!(ITEMS_RETRIED_TOTAL),
            queue_age: gauge!(QUEUE_AGE_SECONDS),
            queue_depth: gauge!(QUEUE_DEPTH),
            bulk_duration: histogram!(BULK_DURATION_SECONDS),
            dropped: [
                counter!(DROPPED_TOTAL, "reason" => "overflow"),
                counter!(DROPPED_TOTAL, "reason" => "closed"),
                counter!(DROPPED_TOTAL, "reason" => "unavailable"),
                counter!(DROPPED_TOTAL, "reason" => "shutdown"),
            ],
            failures: [
                counter!(ITEM_FAILURES_TOTAL, "reason" => "mapping"),
                counter!(ITEM_FAILURES_TOTAL, "reason" => "rejected"),
                counter!(ITEM_FAILURES_TOTAL, "reason" => "other"),
            ],
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, count: u64) {
        let i = match reason {
            DropReason::Overflow => 0,
            DropReason::Closed => 1,
            DropReason::Unavailable => 2,
            DropReason::Shutdown => 3,
        };
        self.dropped[i].increment(count);
    }

    pub(crate) fn item_failed(&self, reason: FailureReason) {
        let i = match reason {
            FailureReason::Mapping => 0,
            FailureReason::Rejected => 1,
            FailureReason::Other => 2,
        };
        self.failures[i].increment(1);
    }

    pub(crate) fn bulk_request(&self, outcome: &'static str) {
        // Few attempts per second at most: the registry look-up is fine here.
        counter!(BULK_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
    }
}
