//! Observation batches (spec 5.2, DESIGN.md "Batches"): records appended to a crash-safe
//! spool with group commit, acked after the `fsync`, rolled at a size or an age, and stored by a
//! [`writer::Writer`] under the Firehose key layout.
//!
//! ```text
//! append(record, kind, id, token) ─▶ batcher thread ─▶ spool/<id>.spool ─fsync─▶ on_commit(tokens)
//!                                  │ roll by size/age
//!                                  ▼
//!                                uploader task ─▶ Writer::store (≤ upload_concurrency, retries)
//!                                  └─▶ stored-ids journal, then delete the spool file
//! ```
//!
//! - [`config`]: the `[objects]` section ([`ObjectsConfig`]), defaults and validation.
//! - [`record`]: the stored record of an observation, and the error record (pure).
//! - [`record_batch`]: records framed by their producer, handed over many at a time.
//! - [`key`]: object keys (pure).
//! - [`spool`]: the framed spool file format, reading back, crash recovery (records and ids).
//! - [`stored_ids`]: the ids of recently stored batches, kept across restarts.
//! - [`batcher`]: the thread that appends, group-commits, acks and rolls.
//! - [`uploader`]: stores sealed batches with bounded concurrency and retries.
//! - [`sink`]: [`ObjectSink::start`] and the [`ObjectSinkHandle`].
//! - [`writer`]: where batches go (local directory, S3, Firehose, none).
//! - [`telemetry`]: metric names.
//! - [`readback`]: stored objects read back into records (`ccstream reindex`).
//!
//! No tokio in the hot loop: the batcher is a std thread doing blocking I/O.

pub mod batcher;
pub mod config;
pub mod error;
pub mod index_log;
pub mod key;
pub mod readback;
pub mod record;
pub mod record_batch;
pub mod sink;
pub mod spool;
mod state;
pub mod stored_ids;
pub mod telemetry;
pub mod uploader;
pub mod writer;

pub use batcher::{OnCommit, RollPolicy};
pub use config::{Compression, Delimiter, ObjectsConfig, SinkKind};
pub use error::{AppendError, ObjectsError};
pub use index_log::{Behind, Chunk, Gap, IndexLog};
pub use key::{object_key, random_suffix};
pub use record::{
    build_error_record, build_record, build_record_from_json, NotAnObject, PayloadKeys, RecordKind,
};
pub use record_batch::RecordBatch;
pub use sink::{IndexFollow, ObjectSink, ObjectSinkHandle};
pub use spool::{recover, Recovered, SealedSpool, SpoolHeader};
pub use state::ObjectStats;
pub use telemetry::describe_metrics;
pub use uploader::{BatchStore, ShutdownReport};
pub use writer::{Batch, LocalWriter, WriteError, Writer};
