//! The `ccstream` service: configuration, wiring, the management API, the rule store and
//! shutdown. Logic lives in the workspace crates (`rule-engine`, `ingest`, `sinks`); this crate
//! connects them to the outside world.
//!
//! Modules:
//! - [`config`]: the TOML file and `CCSTREAM_*` environment overrides, defaults, validation.
//! - [`server`]: builds every part and runs until a shutdown signal.
//! - [`engine`]: MQTT source → rule evaluation → webhooks, rules kept current from the store.
//! - [`api`]: the Lambda-compatible invoke endpoint and `/healthz`, `/readyz`, `/metrics`.
//! - [`auth`]: who is calling (none, JWT or SigV4) and with which role and domain.
//! - [`credentials`], [`dead_letters`]: the operator's commands for access keys and dead letters.
//! - [`store`]: rules in SQLite or PostgreSQL.
//! - [`telemetry`], [`shutdown`]: logs, metrics, signals.
//! - [`healthcheck`]: `ccstream healthcheck`, the probe for images without curl.
//! - [`resolver`]: who is asked about a thing the directory does not know.
//! - [`reindex`]: `ccstream reindex`, the stored objects indexed again.

pub mod api;
pub mod auth;
pub mod config;
pub mod credentials;
pub mod dead_letters;
pub mod directory_file;
pub mod engine;
pub mod healthcheck;
pub mod reindex;
pub mod resolver;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
