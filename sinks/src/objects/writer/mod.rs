//! Where sealed batches go: a local directory, S3, Kinesis Firehose, or nowhere.
//!
//! An enum rather than a trait object: the set is closed, and each variant's `store` is an
//! ordinary async fn.

pub mod firehose;
pub mod local;
pub mod s3;

use bytes::Bytes;

pub use firehose::FirehoseWriter;
pub use local::LocalWriter;
pub use s3::S3Writer;

/// A sealed batch, ready to store.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The object key (`<prefix>YYYY/MM/DD/HH/<stack>-firehose-1-...`), `.gz` included when
    /// compressed. Storing the same batch twice writes the same key: a retry overwrites.
    pub key: String,
    /// The object body: the records concatenated (with the delimiter), gzip-compressed when
    /// configured.
    pub body: Bytes,
    /// The records one by one, uncompressed and without delimiter, for sinks that take records
    /// (Firehose).
    pub records: Vec<Bytes>,
}

/// Why a store failed. Retryable errors are retried with backoff (the batch stays in the
/// spool meanwhile); permanent ones are reported and the batch is kept in the spool's
/// `failed/` folder for an operator.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl WriteError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, WriteError::Retryable(_))
    }
}

/// The configured destination.
#[derive(Debug, Clone)]
pub enum Writer {
    Local(LocalWriter),
    S3(S3Writer),
    Firehose(FirehoseWriter),
    /// `objects.sink = "none"`: batches are dropped once sealed (records are still spooled and
    /// acked, so the pipeline behaves the same).
    None,
}

impl Writer {
    pub async fn store(&self, batch: &Batch) -> Result<(), WriteError> {
        match self {
            Writer::Local(w) => w.store(batch).await,
            Writer::S3(w) => w.store(batch).await,
            Writer::Firehose(w) => w.store(batch).await,
            Writer::None => Ok(()),
        }
    }

    /// A label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Writer::Local(_) => "local",
            Writer::S3(_) => "s3",
            Writer::Firehose(_) => "firehose",
            Writer::None => "none",
        }
    }
}
