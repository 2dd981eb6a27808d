//! Outputs of ccstream: object batches with a crash-safe spool (S3, Firehose, local directory),
//! the OpenSearch bulk indexer and the WEBHOOK dispatcher, one folder per sink.
//!
//! - [`webhook`]: rule WEBHOOK firings over HTTP through a bounded queue, with classified
//!   retries, dead letters and an SSRF guard that checks the addresses actually connected to.
//!
//! A sink never makes its producer wait without a bound: queues are bounded, overflow is counted.
//! Still to come here: the object batcher and the OpenSearch indexer.

pub mod webhook;
