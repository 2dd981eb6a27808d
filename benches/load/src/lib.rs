//! `ccstream-load`: the load generator of ccstream's end-to-end benchmark (`benches/e2e.sh`).
//!
//! - [`payload`]: shadow-update payloads (thing resources, a sub thing, `seq` and `sentAt`) and
//!   topic names; pure, no I/O.
//! - [`report`]: latency histograms, the run report, its table and JSON forms; pure.
//! - [`scenario`]: the directory snapshot and the rule list the scenario posts to ccstream; pure.
//! - [`publish`]: N MQTT connections publishing at a fixed rate or as fast as the broker acks.
//! - [`subscriber`]: `--mode bare-subscriber`, counts messages to measure the broker's ceiling.
//! - [`receiver`]: the webhook receiver that timestamps arrivals and reads `sentAt` back.
//! - [`procstat`]: CPU time and peak RSS of processes (ccstream, the broker, the generator) from
//!   Linux `/proc`; parsers pure.
//! - [`scrape`]: a counter from ccstream's Prometheus `/metrics` (summed over the replicas when
//!   there are several), polled to tell when ccstream has stored what was published; the
//!   text-format parser pure.
//! - [`rule_writes`]: `--mode rule-writes`, rule writes per second through the RuleLambda API and
//!   the time until every replica applied them.
//!
//! The binary (`src/main.rs`) only parses the command line and wires these together.

pub mod payload;
pub mod procstat;
pub mod publish;
pub mod receiver;
pub mod report;
pub mod rule_writes;
pub mod scenario;
pub mod scrape;
pub mod subscriber;

/// Wall-clock milliseconds since the epoch: what `sentAt` carries and what arrivals compare to.
/// Wall clock, not `Instant`, because the other end of the measurement is in another process.
pub use ccstream_common::time::now_ms;
