//! Outputs of ccstream: object batches with a crash-safe spool (S3, Firehose, local directory),
//! the OpenSearch bulk indexer and the WEBHOOK dispatcher, one folder per sink.
//!
//! Not built yet: the rule engine and ingest issues bring them here.
