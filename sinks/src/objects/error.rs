//! Errors of the object sink. Expected outcomes (a store that fails and is retried, a payload
//! that is not a JSON object) are not errors of the API: they are counted and logged.

use ccstream_common::ConfigError;

use super::spool::MAX_RECORD_BYTES;
use std::path::PathBuf;

/// Everything starting the object sink can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The `[objects]` configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The spool directory cannot be created, listed or read.
    #[error("objects spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The batcher thread could not be started.
    #[error("cannot start the objects batcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why [`ObjectSinkHandle::append`](super::ObjectSinkHandle::append) did not take a record.
/// The token is dropped unacked, so the broker redelivers the observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The record is larger than a spool frame may be.
    #[error("record of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The sink is shutting down or gone.
    #[error("the object sink is shut down")]
    Closed,
}

/// [`AppendError::TooLarge`] for a record a spool frame cannot hold.
pub(crate) fn check_size(record: &[u8]) -> Result<(), AppendError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(AppendError::TooLarge {
            len: record.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}
