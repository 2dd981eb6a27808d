//! Outputs of ccstream: object batches with a crash-safe spool (S3, Firehose, local directory),
//! the OpenSearch bulk indexer and the WEBHOOK dispatcher, one folder per sink.
//!
//! - [`objects`]: observation records appended to a crash-safe spool (group commit, acks after
//!   the fsync), rolled at 5 MiB / 5 minutes and stored under the Firehose key layout in a local
//!   directory, S3 or Firehose.
//! - [`search`]: observation records bulk-indexed into OpenSearch (daily indices, an alias, an
//!   index template) through a bounded queue, with per-item retries; FIND's query checks and
//!   domain restriction.
//! - [`webhook`]: rule WEBHOOK firings over HTTP through a bounded queue, with classified
//!   retries, dead letters and an SSRF guard that checks the addresses actually connected to.
//!
//! A sink never makes its producer wait without a bound: queues are bounded, overflow is counted.

mod error_text;
pub mod frames;
mod intake;
pub mod objects;
pub mod search;
pub mod utc;
pub mod webhook;
