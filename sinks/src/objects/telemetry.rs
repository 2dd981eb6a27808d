//! Metric names of the object sink, and their descriptions; few, bounded labels.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Records committed to the spool, by `kind` (`observations`, `errors`).
pub const RECORDS_TOTAL: &str = "ccstream_objects_records_total";
/// Record bytes committed to the spool, by `kind`.
pub const BYTES_TOTAL: &str = "ccstream_objects_bytes_total";
/// Batches stored, by `sink` (`local`, `s3`, `firehose`, `none`).
pub const BATCHES_STORED_TOTAL: &str = "ccstream_objects_batches_stored_total";
/// Duration of one successful store, seconds.
pub const STORE_DURATION_SECONDS: &str = "ccstream_objects_store_duration_seconds";
/// Store attempts that failed and are retried.
pub const STORE_RETRIES_TOTAL: &str = "ccstream_objects_store_retries_total";
/// Batches whose store failed permanently (moved to the spool's `failed/` folder).
pub const STORE_FAILURES_TOTAL: &str = "ccstream_objects_store_failures_total";
/// Bytes in the spool (open batches and sealed ones not yet stored).
pub const SPOOL_BYTES: &str = "ccstream_spool_bytes";
/// Files in the spool.
pub const SPOOL_FILES: &str = "ccstream_spool_files";
/// Group commits (one `fsync` round each).
pub const SPOOL_COMMITS_TOTAL: &str = "ccstream_spool_commits_total";
/// Records per group commit.
pub const SPOOL_COMMIT_RECORDS: &str = "ccstream_spool_commit_records";
/// Spool write or `fsync` failures (retried; nothing is acked meanwhile).
pub const SPOOL_WRITE_ERRORS_TOTAL: &str = "ccstream_spool_write_errors_total";
/// 1 while the spool is over `objects.spool_max_bytes` and intake is stopped.
pub const SPOOL_BACKPRESSURE: &str = "ccstream_spool_backpressure";
/// 1 once the batcher thread has died: nothing is stored or acked until a restart.
pub const BATCHER_FAILED: &str = "ccstream_objects_batcher_failed";
/// Observation records deleted from the spool before the search index took them (the spool
/// was full); each file is a line of `index-gaps.jsonl`, for `ccstream reindex`.
pub const INDEX_GAP_RECORDS_TOTAL: &str = "ccstream_search_gap_records_total";
/// Spool files deleted before the search index took all of them, by `reason` (`spool_full`,
/// `index_off`).
pub const INDEX_GAP_FILES_TOTAL: &str = "ccstream_search_gap_files_total";

/// Registers descriptions with the installed recorder (call once after installing it).
pub fn describe_metrics() {
    describe_counter!(
        RECORDS_TOTAL,
        "Records committed to the objects spool, by kind."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Record bytes committed to the objects spool, by kind."
    );
    describe_counter!(BATCHES_STORED_TOTAL, "Object batches stored, by sink.");
    describe_histogram!(
        STORE_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one successful object store."
    );
    describe_counter!(
        STORE_RETRIES_TOTAL,
        "Failed object stores that are retried."
    );
    describe_counter!(
        STORE_FAILURES_TOTAL,
        "Object batches whose store failed permanently (kept in spool/failed)."
    );
    describe_gauge!(SPOOL_BYTES, Unit::Bytes, "Bytes in the objects spool.");
    describe_gauge!(SPOOL_FILES, "Files in the objects spool.");
    describe_counter!(
        SPOOL_COMMITS_TOTAL,
        "Spool group commits (one fsync round each)."
    );
    describe_histogram!(SPOOL_COMMIT_RECORDS, "Records per spool group commit.");
    describe_counter!(
        SPOOL_WRITE_ERRORS_TOTAL,
        "Spool write or fsync failures (retried; nothing is acked meanwhile)."
    );
    describe_gauge!(
        SPOOL_BACKPRESSURE,
        "1 while the spool is full and ccstream stops taking observations."
    );
    describe_gauge!(
        BATCHER_FAILED,
        "1 once the objects batcher thread has died; restart ccstream (nothing is lost: \
         what was not committed was not acked)."
    );
    describe_counter!(
        INDEX_GAP_RECORDS_TOTAL,
        "Observation records deleted from the full spool before the search index took them \
         (written down in index-gaps.jsonl; fill with ccstream reindex)."
    );
    describe_counter!(
        INDEX_GAP_FILES_TOTAL,
        "Spool files deleted before the search index took all of them, by reason."
    );
}
