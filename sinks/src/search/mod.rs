//! The search sink: observation records indexed into OpenSearch, and the pure checks of
//! Observation FIND (spec 5.1).
//!
//! - [`config`]: the `[search]` section ([`SearchConfig`]), defaults and validation.
//! - [`bulk`]: daily index names, the batcher (size, count, time), the NDJSON body, the shape
//!   of a `_bulk` response (pure).
//! - [`retry`]: which request outcomes and which bulk items are retried, backoff (pure).
//! - [`template`]: the index template: mappings and the alias (pure).
//! - [`client`]: [`SearchClient`], the three REST calls over reqwest (and why not the
//!   `opensearch` crate).
//! - [`indexer`]: the bounded queue and the task that batches, sends, retries and drains.
//! - [`follower`]: indexes what the spool committed, from its cursor
//!   ([`crate::objects::index_log`]).
//! - [`find`]: FIND's checks of spec 5.1.1.1 and the domain restriction (pure).
//! - [`telemetry`]: metric names.
//!
//! Indexing never makes ingest wait: the service's index follows the spool (the records wait on
//! disk while OpenSearch is away, and past the spool's limit the gap is written down for
//! `ccstream reindex`); `try_send` never blocks either, and counts what overflows.

pub mod bulk;
pub mod client;
pub mod config;
pub mod dialect;
pub mod error;
pub mod find;
pub mod follower;
pub mod indexer;
pub mod retry;
pub mod telemetry;
pub mod template;

pub use client::SearchClient;
pub use config::SearchConfig;
pub use error::{Full, SearchError};
pub use find::{
    check_find_query, check_find_query_for, prepare_find, restrict_to_domain, FindError,
    INVALID_ARGUMENTS, PROPERTY_REQUIRED,
};
pub use follower::{Follower, FollowerStats};
pub use indexer::{
    Checkpoint, IndexerHandle, IndexerStats, ItemFailureFn, SearchIndexer, DEFAULT_DRAIN_DEADLINE,
};
pub use retry::FailureReason;
pub use telemetry::describe_metrics;
