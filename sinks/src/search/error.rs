//! Errors of the search sink. Expected outcomes of indexing (a 429, a mapping conflict) are not
//! errors of the API: the indexer retries, counts and hands them on.

use ccstream_common::ConfigError;

/// Everything the search sink's API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The `[search]` configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `search.url` is not set: indexing and FIND are off.
    #[error("search is not configured (search.url is not set)")]
    NotConfigured,
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the OpenSearch HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// OpenSearch refused the query (a 4xx other than 401, 403 and 429); the text is
    /// OpenSearch's reason. The API answers INVALID_ARGUMENTS with it.
    #[error("OpenSearch refused the query: {0}")]
    BadQuery(String),
    /// OpenSearch could not be asked or did not answer (connection error, timeout, 5xx, 429,
    /// or our credentials refused). The text is for logs, not for API callers.
    #[error("OpenSearch is unavailable: {0}")]
    Unavailable(String),
}

/// [`IndexerHandle::try_send`](super::IndexerHandle::try_send) did not queue the record: the queue
/// is full, or the indexer has stopped. The record is counted in `ccstream_search_dropped_total`
/// (the object store still has it); the caller goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("search indexing queue is full or closed; record not indexed")]
pub struct Full;
