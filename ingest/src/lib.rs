//! MQTT source of ccstream: subscribes to shadow updates and life cycle events with QoS 1 on a
//! persistent session, hands them to the pipeline as [`Inbound`] items and sends each PUBACK
//! only when the pipeline acks the item (after the spool, DESIGN.md "The in-flight window").
//!
//! Modules:
//! - [`config`]: the `[mqtt]` configuration section, its defaults and validation.
//! - [`source`]: [`MqttSource::start`], the task that owns rumqttc's event loop, reconnects with
//!   backoff and never waits on the pipeline (how backpressure works is explained there).
//! - [`ack`]: [`Acker`] and [`AckToken`]: manual acknowledgements, always sent in arrival order.
//! - [`topic`]: pure topic parsing (`$aws/things/<name>/shadow/update`,
//!   `thing-update/<domainPath>/<name>`) and MQTT filter matching.
//! - [`broker`]: the optional embedded broker (rumqttd) and what it does not do.
//! - [`telemetry`]: metric names; the source counts messages, connections and rejects.
//!
//! This crate must not evaluate rules, parse payloads or write objects: it delivers bytes
//! with a thing name, the delivery's DUP flag and packet id, and an ack token, and counts what it refuses (oversize payloads, topics
//! without a thing name).
//!
//! ```no_run
//! # async fn run() -> Result<(), ingest::Error> {
//! let cfg = ingest::MqttConfig::default();
//! let _broker = if cfg.embedded {
//!     Some(ingest::EmbeddedBroker::start(cfg.embedded_listen)?)
//! } else {
//!     None
//! };
//! let host = ingest::config::local_hostname().unwrap_or_else(|| "localhost".into());
//! let (mut inbound, acker, handle) = ingest::MqttSource::start(&cfg, "dev", &host)?;
//! while let Some(item) = inbound.recv().await {
//!     // ... make the item durable, then:
//!     acker.ack(item.into_ack());
//! }
//! handle.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod ack;
pub mod broker;
pub mod config;
mod error;
pub mod source;
pub mod telemetry;
mod tls;
pub mod topic;

pub use ack::{AckOutcome, AckToken, Acker};
pub use broker::EmbeddedBroker;
pub use config::MqttConfig;
pub use error::Error;
pub use source::{Inbound, MqttSource, ShadowUpdate, SourceHandle, SourceStatus};
pub use telemetry::describe_metrics;
