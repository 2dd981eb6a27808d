//! The few helpers that more than one ccstream crate needs, written once.
//!
//! - [`backoff`]: capped exponential backoff with jitter, for every retry loop (MQTT reconnects,
//!   webhook and OpenSearch retries, object uploads, Firehose resends, spool disk errors).
//! - [`config`]: the error a configuration check returns, named by its full key
//!   (`webhook.timeout_secs`), and the range check most keys use.
//! - [`time`]: wall-clock milliseconds since the Unix epoch.
//! - [`redact`]: URLs with their password hidden, for logs.
//! - [`panic`]: the message of a caught panic.
//!
//! No I/O and no async runtime: the callers sleep, this crate only computes.

pub mod backoff;
pub mod config;
pub mod panic;
pub mod redact;
pub mod time;

pub use backoff::Backoff;
pub use config::ConfigError;
